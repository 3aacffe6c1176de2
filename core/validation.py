"""Checks every activity of a request before anything is queued.

One bad activity never sinks its batch: each activity is checked on its own and a failure becomes a
`Rejection` naming its index, the field at fault and the reason. The checks run once per activity on
the hot path, so they read each field once, compare lengths, and leave canonical forms to the memoised
normalisers; anything costlier only runs for values that fail the cheap test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from core.limits import Limits
from core.normalize import (
    normalize_action,
    normalize_currency,
    normalize_device_type,
    normalize_locale,
    normalize_source_type,
)
from core.proto.activity.v1 import activity_pb2 as pb

MISSING_FIELD = pb.REJECTION_REASON_MISSING_FIELD
INVALID_VALUE = pb.REJECTION_REASON_INVALID_VALUE
OUT_OF_RANGE = pb.REJECTION_REASON_OUT_OF_RANGE
TOO_LARGE = pb.REJECTION_REASON_TOO_LARGE
DUPLICATE_ID = pb.REJECTION_REASON_DUPLICATE_ID

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one activity of a request was not accepted."""

    index: int
    activity_id: str
    reason: int
    field: str
    message: str

    def to_proto(self) -> pb.Rejection:
        return pb.Rejection(
            index=self.index,
            activity_id=self.activity_id,
            reason=self.reason,  # type: ignore[arg-type]
            field=self.field,
            message=self.message,
        )


class InvalidActivity(Exception):
    """Raised inside the checks; carries the field at fault and the reason."""

    def __init__(self, field: str, reason: int, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason
        self.message = message


def _too_long(field: str, value: str, limit: int) -> InvalidActivity:
    return InvalidActivity(field, TOO_LARGE, f"{field} has {len(value)} characters; the limit is {limit}")


def _check_map(field: str, entries: Mapping[str, str], limits: Limits) -> None:
    if len(entries) > limits.max_map_entries:
        raise InvalidActivity(
            field, TOO_LARGE, f"{field} has {len(entries)} entries; the limit is {limits.max_map_entries}"
        )
    for key, value in entries.items():
        if not key:
            raise InvalidActivity(field, INVALID_VALUE, f"{field} has an entry with an empty key")
        if len(key) > limits.max_name_chars:
            raise InvalidActivity(
                field,
                TOO_LARGE,
                f"{field} has a key of {len(key)} characters; the limit is {limits.max_name_chars}",
            )
        if len(value) > limits.max_text_chars:
            raise InvalidActivity(
                f"{field}[{key}]",
                TOO_LARGE,
                f"{field}[{key}] has {len(value)} characters; the limit is {limits.max_text_chars}",
            )


def _check_metadata(m: pb.Metadata, limits: Limits) -> None:
    name_limit = limits.max_name_chars
    text_limit = limits.max_text_chars
    id_limit = limits.max_id_chars
    locale = m.locale
    if len(locale) > name_limit:
        raise _too_long("metadata.locale", locale, name_limit)
    if locale and normalize_locale(locale) is None:
        raise InvalidActivity(
            "metadata.locale",
            INVALID_VALUE,
            f"metadata.locale {locale[:40]!r} is not a BCP 47 tag like 'en-US'",
        )
    device_type = m.device_type
    if device_type:
        if len(device_type) > name_limit:
            raise _too_long("metadata.device_type", device_type, name_limit)
        if normalize_device_type(device_type) is None:
            raise InvalidActivity(
                "metadata.device_type",
                INVALID_VALUE,
                "metadata.device_type must be a name of letters, digits, '_', '-', ' ', '.' or ':'",
            )
    if m.HasField("quantity") and m.quantity <= 0:
        raise InvalidActivity(
            "metadata.quantity",
            OUT_OF_RANGE,
            f"metadata.quantity must be greater than zero, got {m.quantity}",
        )
    currency = m.currency
    if m.HasField("price"):
        if m.price < 0:
            raise InvalidActivity(
                "metadata.price", OUT_OF_RANGE, f"metadata.price must not be negative, got {m.price}"
            )
        if not currency:
            raise InvalidActivity(
                "metadata.currency", MISSING_FIELD, "metadata.currency is required when metadata.price is set"
            )
    if currency and normalize_currency(currency) is None:
        raise InvalidActivity(
            "metadata.currency", INVALID_VALUE, f"metadata.currency {currency[:10]!r} is not an ISO 4217 code"
        )
    for name, value, limit in (
        ("metadata.order_id", m.order_id, id_limit),
        ("metadata.page_url", m.page_url, text_limit),
        ("metadata.referrer", m.referrer, text_limit),
        ("metadata.user_agent", m.user_agent, text_limit),
        ("metadata.query", m.query, text_limit),
    ):
        if len(value) > limit:
            raise _too_long(name, value, limit)
    if m.custom:
        _check_map("metadata.custom", m.custom, limits)


def _check_source(s: pb.Source, source_id: str, limits: Limits) -> None:
    if not source_id:
        raise InvalidActivity(
            "source", INVALID_VALUE, "source describes a response and is only valid together with source_id"
        )
    name_limit = limits.max_name_chars
    source_type = s.type
    if source_type:
        if len(source_type) > name_limit:
            raise _too_long("source.type", source_type, name_limit)
        if normalize_source_type(source_type) is None:
            raise InvalidActivity(
                "source.type",
                INVALID_VALUE,
                "source.type must be a name of letters, digits, '_', '-', ' ', '.' or ':'",
            )
    if len(s.name) > name_limit:
        raise _too_long("source.name", s.name, name_limit)
    if len(s.variant) > name_limit:
        raise _too_long("source.variant", s.variant, name_limit)


def check_activity(a: pb.Activity, limits: Limits, received_ns: int, skew_ns: int) -> None:
    """Raise InvalidActivity for the first problem found in `a`."""
    size = a.ByteSize()
    if size > limits.max_activity_bytes:
        raise InvalidActivity(
            "", TOO_LARGE, f"the activity has {size} bytes; the limit is {limits.max_activity_bytes}"
        )
    name_limit = limits.max_name_chars
    id_limit = limits.max_id_chars

    activity_id = a.id
    if activity_id and not is_uuid(activity_id):
        raise InvalidActivity(
            "id", INVALID_VALUE, "id must be a UUID like 0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4d5e"
        )

    action = a.action
    if not action:
        raise InvalidActivity("action", MISSING_FIELD, "action is required")
    if len(action) > name_limit:
        raise _too_long("action", action, name_limit)
    if normalize_action(action) is None:
        raise InvalidActivity(
            "action", INVALID_VALUE, "action must be a name of letters, digits, '_', '-', ' ', '.' or ':'"
        )

    target = a.target
    target_type = target.type
    if not target_type:
        raise InvalidActivity("target.type", MISSING_FIELD, "target.type is required")
    if len(target_type) > name_limit:
        raise _too_long("target.type", target_type, name_limit)
    target_id = target.id
    if not target_id:
        raise InvalidActivity("target.id", MISSING_FIELD, "target.id is required")
    if len(target_id) > id_limit:
        raise _too_long("target.id", target_id, id_limit)
    if target.attributes:
        _check_map("target.attributes", target.attributes, limits)

    user = a.user
    session_id = user.session_id
    anonymous_id = user.anonymous_id
    user_id = user.user_id
    if not (session_id or anonymous_id or user_id):
        raise InvalidActivity(
            "user", MISSING_FIELD, "one of user.session_id, user.anonymous_id and user.user_id is required"
        )
    if len(session_id) > id_limit:
        raise _too_long("user.session_id", session_id, id_limit)
    if len(anonymous_id) > id_limit:
        raise _too_long("user.anonymous_id", anonymous_id, id_limit)
    if len(user_id) > id_limit:
        raise _too_long("user.user_id", user_id, id_limit)
    if user.identities:
        _check_map("user.identities", user.identities, limits)

    source_id = a.source_id
    if len(source_id) > id_limit:
        raise _too_long("source_id", source_id, id_limit)
    if a.HasField("source"):
        _check_source(a.source, source_id, limits)

    if a.HasField("metadata"):
        _check_metadata(a.metadata, limits)

    segments = a.segments
    if segments:
        if len(segments) > limits.max_segments:
            raise InvalidActivity(
                "segments",
                TOO_LARGE,
                f"segments has {len(segments)} entries; the limit is {limits.max_segments}",
            )
        for segment in segments:
            if not segment:
                raise InvalidActivity("segments", INVALID_VALUE, "segments must not hold an empty name")
            if len(segment) > name_limit:
                raise InvalidActivity(
                    "segments",
                    TOO_LARGE,
                    f"a segment has {len(segment)} characters; the limit is {name_limit}",
                )

    if a.HasField("occurred_at"):
        ts = a.occurred_at
        seconds = ts.seconds
        if seconds <= 0 or not 0 <= ts.nanos < _NS:
            raise InvalidActivity(
                "occurred_at", OUT_OF_RANGE, "occurred_at must be a valid time after 1970-01-01T00:00:00Z"
            )
        ahead_ns = seconds * _NS + ts.nanos + skew_ns - received_ns
        if ahead_ns > limits.max_future_skew_s * _NS:
            raise InvalidActivity(
                "occurred_at",
                OUT_OF_RANGE,
                f"occurred_at is {ahead_ns / _NS:.0f} s in the future (after clock-skew correction); "
                f"the limit is {limits.max_future_skew_s:g} s",
            )


def is_uuid(value: str) -> bool:
    return len(value) == 36 and _UUID_RE.fullmatch(value) is not None


def validate_activities(
    activities: Sequence[pb.Activity],
    limits: Limits,
    received_ns: int,
    skew_ns: int,
    unparsed: Mapping[int, tuple[str, str]] | None = None,
) -> tuple[list[int], list[Rejection]]:
    """Indexes of the valid activities, and one Rejection per invalid one.

    `unparsed` names, by index, the activities that did not parse (field path, message); they are
    rejected as INVALID_VALUE. An id (a UUID, compared case-insensitively) that an earlier activity of
    the request already carried is rejected as DUPLICATE_ID before any other check, whether or not the
    earlier one was valid: the request itself says the same activity twice, and the first copy counts.
    """
    valid: list[int] = []
    rejections: list[Rejection] = []
    seen_ids: set[str] = set()
    for index, activity in enumerate(activities):
        if unparsed and index in unparsed:
            field, message = unparsed[index]
            rejections.append(Rejection(index, "", INVALID_VALUE, field, message))
            continue
        activity_id = activity.id
        if activity_id and is_uuid(activity_id):
            key = activity_id.lower()
            if key in seen_ids:
                rejections.append(
                    Rejection(
                        index,
                        activity_id,
                        DUPLICATE_ID,
                        "id",
                        "an earlier activity of this request has the same id",
                    )
                )
                continue
            seen_ids.add(key)
        try:
            check_activity(activity, limits, received_ns, skew_ns)
        except InvalidActivity as error:
            rejections.append(Rejection(index, activity_id, error.reason, error.field, error.message))
            continue
        valid.append(index)
    return valid, rejections


def rejections_to_proto(rejections: Iterable[Rejection]) -> list[pb.Rejection]:
    return [r.to_proto() for r in rejections]
