"""The limits on what one request and one activity may carry, and the error a bad setting raises.

Validation, the compiled fast path and enrichment all read these; the collector's configuration holds
them under `[limits]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


class ConfigError(ValueError):
    """A setting has a value the collector cannot run with; the message names the setting."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request and one activity may carry. Every rejection names the field at fault."""

    max_request_bytes: int = 4 * 1024 * 1024
    """Largest serialized request, in bytes. Larger requests fail with INVALID_ARGUMENT."""
    max_batch_activities: int = 1000
    """Most activities in one TrackActivities or StreamActivities request."""
    max_activity_bytes: int = 32 * 1024
    """Largest serialized activity, in bytes."""
    max_id_chars: int = 128
    """Longest identifier: target.id, user ids, source_id, order_id."""
    max_name_chars: int = 64
    """Longest short name: action, target.type, device_type, segment names, map keys."""
    max_text_chars: int = 2048
    """Longest free text: page_url, referrer, user_agent, query, map values."""
    max_map_entries: int = 64
    """Most entries in each map (target.attributes, user.identities, metadata.custom)."""
    max_segments: int = 64
    """Most entries in segments."""
    max_concurrent_streams: int = 256
    """Most calls open at once on one client connection (HTTP/2 streams); further calls wait in the
    client until one ends."""
    max_stream_in_flight: int = 64
    """Most batches of one StreamActivities stream being processed at once; past it, the server stops
    reading the stream until one is answered (HTTP/2 flow control then holds the client back)."""
    max_future_skew_s: float = 300.0
    """How far into the future (after clock-skew correction) occurred_at may be, in seconds."""

    def validate(self) -> None:
        check_positive(self)
        if self.max_activity_bytes > self.max_request_bytes:
            raise ConfigError(
                f"max_activity_bytes: must not exceed max_request_bytes ({self.max_request_bytes}), "
                f"got {self.max_activity_bytes}"
            )


def check_positive(settings: object) -> None:
    """Refuse a dataclass of settings any of whose fields is not a finite number greater than zero."""
    for f in fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, f.name)
        if not value > 0 or value == math.inf:
            raise ConfigError(f"{f.name}: must be greater than zero, got {value!r}")
