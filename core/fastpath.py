"""The compiled fast path for validation and row framing, with its pure-Python fallback.

`core/_fastpath.c` walks a request's raw bytes and sorts its activities: those it can vouch for
(certainly valid under every rule of `core.validation`, and already in canonical form, so that
enrichment would change nothing but the id) stay as byte spans of the request and are framed as rows
by a memory copy; every other activity goes to the Python path, which stays the reference and writes
every rejection. The compiled module is optional: without a C compiler at install time the package
installs without it and `available` is False; the Python path then handles every activity. The
environment variable `ACTIVITY_PURE_PYTHON=1`, read once at import, makes a process behave as if the
module were absent (it is then not even loaded), here and in `workers.enrichment.lookups`.
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from core.limits import Limits
from core.normalize import CURRENCIES

PURE_PYTHON_ENV = "ACTIVITY_PURE_PYTHON"
pure_python = os.environ.get(PURE_PYTHON_ENV, "").strip() not in ("", "0")
"""Set (to anything but empty or 0): the compiled modules are not used, as if they were not built."""

_fastpath: Any = None
if not pure_python:
    try:
        from core import _fastpath  # type: ignore[attr-defined,no-redef]
    except ImportError:  # built without a C compiler
        _fastpath = None

available = _fastpath is not None

CURRENCY_CODES = b"".join(sorted(code.encode() for code in CURRENCIES if len(code) == 3))


def limits_tuple(limits: Limits) -> tuple[int, ...]:
    return (
        limits.max_activity_bytes,
        limits.max_id_chars,
        limits.max_name_chars,
        limits.max_text_chars,
        limits.max_map_entries,
        limits.max_segments,
        int(limits.max_future_skew_s * 1_000_000_000),
    )


def check(
    raw: bytes, activities_field: int, limits: tuple[int, ...], received_ns: int, skew_ns: int
) -> tuple[bytes, list[tuple[int, int, int]], list[int], int, int]:
    """(fast spans, slow (index, start, end), duplicate indexes, fast activities without id, count).
    Raises ValueError when the request's own framing is broken."""
    assert _fastpath is not None
    result: Any = _fastpath.check(raw, activities_field, limits, CURRENCY_CODES, received_ns, skew_ns)
    return result  # type: ignore[no-any-return]


def frame(
    raw: bytes, spans: bytes, suffix: bytes, random: bytes, extras: list[bytes] | None = None
) -> tuple[bytes, dict[int, str]]:
    """Rows of ProtobufList for the fast spans, and the ids assigned by index. `extras`, one item per
    span, are each activity's own enrichment fields, written after `suffix`."""
    assert _fastpath is not None
    result: Any = _fastpath.frame(raw, spans, suffix, random, extras)
    return result  # type: ignore[no-any-return]


EnrichmentKeys = tuple[str, str, str, str, str, str]
"""(target_type, target_id, user_id, anonymous_id, session_id, user_agent) of one activity; '' where
the activity carries none."""


def keys(raw: bytes, spans: bytes) -> list[EnrichmentKeys]:
    """The strings enrichment looks up, per fast span, in the spans' order."""
    assert _fastpath is not None
    result: Any = _fastpath.keys(raw, spans)
    return result  # type: ignore[no-any-return]


def plan_compile(unknown_allow: bool, actions: list[tuple[bytes, list[tuple[Any, ...]]]]) -> Any:
    """A tracking plan as a program for `plan_screen` (see `workers.processors.plan_screen`)."""
    assert _fastpath is not None
    return _fastpath.plan_compile(unknown_allow, actions)


def plan_screen(raw: bytes, spans: bytes, program: Any) -> tuple[bytes, bytes]:
    """(spans of the activities that certainly conform to the plan, spans of those Python must judge),
    both packed as `spans` is, in its order."""
    assert _fastpath is not None
    result: Any = _fastpath.plan_screen(raw, spans, program)
    return result  # type: ignore[no-any-return]


def plan_check(program: Any, action: bytes, activity: bytes) -> bool:
    """Whether the serialized `activity` certainly breaks no rule `program` has for the plan's action
    named `action` (the activity may spell it otherwise); False: the Python plan must judge it."""
    assert _fastpath is not None
    return bool(_fastpath.plan_check(program, action, activity))


def count_field(raw: bytes, field: int) -> int:
    """How many times the top-level field `field` occurs in the serialized message `raw`, read from
    its framing only. Raises ValueError when the framing is broken."""
    assert _fastpath is not None
    result: Any = _fastpath.count_field(raw, field)
    return result  # type: ignore[no-any-return]


def plan_vocabulary() -> dict[str, int]:
    """The check kinds (PC_*) and path terminals (PT_*) of a plan program, by name."""
    assert _fastpath is not None
    return {name: int(getattr(_fastpath, name)) for name in dir(_fastpath) if name[:3] in ("PC_", "PT_")}


def _header_classes() -> dict[str, Any]:
    """Messages that read only a request's own fields (sequence, sent_at) and leave its activities as
    unread bytes: parsing them costs microseconds per request, not per activity."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="activity_collector/request_headers.proto",
        package="activity_collector.internal",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for name, sent_at_number, with_sequence in (("BatchHeader", 2, False), ("StreamHeader", 3, True)):
        m = file.message_type.add(name=name)
        if with_sequence:
            m.field.add(
                name="sequence",
                number=1,
                type=descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
                label=optional,
            )
        m.field.add(
            name="sent_at",
            number=sent_at_number,
            type=message,
            type_name=".google.protobuf.Timestamp",
            label=optional,
        )
    # TrackActivityRequest: sent_at (2), and of its activity (1) the id (1) alone.
    activity_id = file.message_type.add(name="ActivityId")
    activity_id.field.add(
        name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=optional
    )
    one = file.message_type.add(name="OneHeader")
    one.field.add(
        name="activity",
        number=1,
        type=message,
        type_name=".activity_collector.internal.ActivityId",
        label=optional,
    )
    one.field.add(
        name="sent_at", number=2, type=message, type_name=".google.protobuf.Timestamp", label=optional
    )
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"activity_collector.internal.{name}")
        )
        for name in ("BatchHeader", "StreamHeader", "OneHeader")
    }


HEADERS = _header_classes()
BatchHeader = HEADERS["BatchHeader"]
"""sent_at (2) of TrackActivitiesRequest."""
StreamHeader = HEADERS["StreamHeader"]
"""sequence (1) and sent_at (3) of StreamActivitiesRequest."""
OneHeader = HEADERS["OneHeader"]
"""sent_at (2) of TrackActivityRequest and the id of its activity, as sent."""
