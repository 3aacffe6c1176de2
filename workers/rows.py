"""Enrichment: turns a validated batch into rows ready for ClickHouse.

Per activity, the work is what cannot be shared: the id when the client sent none, the canonical forms
of action, locale, currency, device type and source type (memoised lookups, written back only when
they differ), and one serialization. Everything that is the same for the whole batch (tenant, receive
time, send time, clock skew) is encoded once and appended to every row; ClickHouse computes the
skew-corrected `occurred_at` from it (see `workers.storage.schema`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from core.normalize import (
    normalize_action,
    normalize_currency,
    normalize_device_type,
    normalize_locale,
    normalize_source_type,
)
from core.proto.activity.v1 import activity_pb2 as pb
from core.wire import bytes_field, field_key, timestamp_field, varint
from workers.storage.schema import (
    CLOCK_SKEW_FIELD,
    PLAN_VIOLATIONS_FIELD,
    RECEIVED_AT_FIELD,
    SENT_AT_FIELD,
    TENANT_FIELD,
)

# Key of the envelope's repeated row field in FORMAT ProtobufList: field 1, length-delimited.
_ROW_KEY = field_key(1, 2)
# Row frame prefixes for the common short rows, looked up instead of computed.
_SHORT_PREFIXES = [_ROW_KEY + varint(n) for n in range(16384)]


def batch_suffix(tenant: str, received_ns: int, sent_ns: int | None, skew_ns: int) -> bytes:
    """The fields the collector appends to every row of one batch."""
    suffix = bytes_field(TENANT_FIELD, tenant.encode()) + timestamp_field(RECEIVED_AT_FIELD, received_ns)
    if sent_ns is not None:
        suffix += timestamp_field(SENT_AT_FIELD, sent_ns)
    if skew_ns:
        suffix += field_key(CLOCK_SKEW_FIELD, 0) + varint(skew_ns // 1_000_000)
    return suffix


@dataclass(slots=True)
class EncodedRows:
    """Framed rows of one batch: `pieces` joined are the rows' part of a ProtobufList envelope."""

    pieces: list[bytes]
    count: int
    nbytes: int
    assigned_ids: dict[int, str]


def _normalize_metadata(m: pb.Metadata) -> None:
    locale = m.locale
    if locale:
        canonical = normalize_locale(locale)
        if canonical is not None and canonical != locale:
            m.locale = canonical
    currency = m.currency
    if currency:
        canonical = normalize_currency(currency)
        if canonical is not None and canonical != currency:
            m.currency = canonical
    device_type = m.device_type
    if device_type:
        canonical = normalize_device_type(device_type)
        if canonical is not None and canonical != device_type:
            m.device_type = canonical


@dataclass(slots=True)
class FastSpans:
    """Activities vouched for by the compiled validator: spans of `raw`, packed as `core.fastpath`
    returns them, framed here without parsing."""

    raw: bytes
    spans: bytes
    count: int
    missing_ids: int


def encode_rows(
    items: Iterable[tuple[int, pb.Activity]],
    tenant: str,
    received_ns: int,
    sent_ns: int | None,
    skew_ns: int = 0,
    fast: FastSpans | None = None,
    item_extras: Mapping[int, bytes] | None = None,
    fast_extras: list[bytes] | None = None,
    flags: Mapping[int, Sequence[str]] | None = None,
) -> EncodedRows:
    """Enrich and frame validated activities as ProtobufList rows: parsed `items` (index, activity) and
    the `fast` spans, if any. `item_extras` (by index) and `fast_extras` (in the spans' order) are each
    activity's own fields from `workers.enrichment.enricher`, written after the batch's; `flags` (by
    index, parsed activities only) the tracking-plan rules each broke (`plan_violations`)."""
    suffix = batch_suffix(tenant, received_ns, sent_ns, skew_ns)
    suffix_len = len(suffix)
    prefixes = _SHORT_PREFIXES
    short = len(prefixes) - suffix_len
    pieces: list[bytes] = []
    append = pieces.append
    assigned: dict[int, str] = {}
    nbytes = 0
    count = 0
    if fast is not None and fast.count:
        framed, assigned = frame_fast(fast, suffix, fast_extras)
        append(framed)
        nbytes += len(framed)
        count += fast.count
    for index, a in items:
        # Unknown fields would be re-emitted by SerializeToString and could collide with the fields
        # the collector appends (tenant, receive time): a client must not be able to set those.
        a.DiscardUnknownFields()
        if not a.id:
            a.id = assigned[index] = str(uuid.uuid4())
        action = a.action
        canonical = normalize_action(action)
        if canonical != action and canonical is not None:
            a.action = canonical
        if a.HasField("metadata"):
            _normalize_metadata(a.metadata)
        if a.HasField("source"):
            source_type = a.source.type
            if source_type:
                canonical = normalize_source_type(source_type)
                if canonical is not None and canonical != source_type:
                    a.source.type = canonical
        body = a.SerializeToString()
        extra = item_extras.get(index, b"") if item_extras else b""
        if flags:
            rules = flags.get(index)
            if rules:
                extra += flag_fields(rules)
        size = len(body) + len(extra)
        prefix = prefixes[size + suffix_len] if size < short else _ROW_KEY + varint(size + suffix_len)
        append(prefix)
        append(body)
        append(suffix)
        if extra:
            append(extra)
        nbytes += len(prefix) + size + suffix_len
        count += 1
    return EncodedRows(pieces, count, nbytes, assigned)


def flag_fields(rules: Sequence[str]) -> bytes:
    """The `plan_violations` fields of one row."""
    return b"".join(bytes_field(PLAN_VIOLATIONS_FIELD, rule.encode()) for rule in rules)


def frame_fast(
    fast: FastSpans, suffix: bytes, extras: list[bytes] | None = None
) -> tuple[bytes, dict[int, str]]:
    from core import fastpath

    return fastpath.frame(fast.raw, fast.spans, suffix, os.urandom(16 * fast.missing_ids), extras)


def envelope(chunks: Sequence[EncodedRows]) -> bytes:
    """One ProtobufList message holding every row of `chunks`: its length, then the rows."""
    total = sum(c.nbytes for c in chunks)
    parts = [varint(total)]
    for c in chunks:
        parts += c.pieces
    return b"".join(parts)


def envelope_bytes(rows: Sequence[bytes]) -> bytes:
    """One ProtobufList message from already framed rows."""
    total = sum(len(r) for r in rows)
    return b"".join([varint(total), *rows])


class Envelope:
    """One ProtobufList message as the pieces it is made of: its length, then runs of framed rows,
    produced by `rows()` each time the envelope is iterated (again for a retried insert). An insert
    into the embedded engine writes the pieces out one by one, so that a 100,000-row insert does not
    hold its rows twice (the pieces and their join, about 60 MB each)."""

    def __init__(self, nbytes: int, rows: Callable[[], Iterable[bytes]]) -> None:
        self.nbytes = nbytes
        self._rows = rows

    @classmethod
    def of(cls, chunks: Sequence[EncodedRows]) -> Envelope:
        """The envelope of `chunks`, one piece per chunk (its pieces joined when it is produced)."""
        return cls(sum(c.nbytes for c in chunks), lambda: (b"".join(c.pieces) for c in chunks))

    def __iter__(self) -> Iterator[bytes]:
        yield varint(self.nbytes)
        size = 0
        for piece in self._rows():
            size += len(piece)
            yield piece
        if size != self.nbytes:
            # A message whose length prefix lies would be read by ClickHouse as other rows, or refused.
            raise ValueError(f"the envelope's rows hold {size} bytes, not the {self.nbytes} announced")

    def join(self) -> bytes:
        return b"".join(self)
