"""Field numbers written in C agree with the descriptors they come from.

`core/_fastpath.c` reads activities on the wire, so it knows the field numbers of `Activity`, `Target`,
`User`, `Metadata`, map entries and `Timestamp`; a number changed in `protos/` and not in C would make
the filter vouch for the wrong bytes. Every `*_FIELD` constant (a `#define` or an enum constant) of the
C sources is checked here: against the descriptor path the table below names, or, for the fields the
collector adds to a row (1001 and up), against `workers/storage/schema.py`. A constant that neither
names fails, and so does a bare number compared with a field number in C, so that a new one cannot
bypass the check. The request messages' own numbers reach C as an argument (`activities_field`) and
are checked where Python holds them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor

import workers.storage.schema as schema
from collector.doors import service
from core import fastpath
from core.proto.activity.v1 import activity_pb2 as pb
from workers import rows

ROOT = Path(__file__).resolve().parents[2]
C_SOURCES = (ROOT / "core" / "_fastpath.c", ROOT / "workers" / "enrichment" / "_lookups.c")

# C constant -> the fields it stands for, as paths from a message of activity.v1: "Message.field", then
# further fields through message-typed ones (map fields lead to their entry: `.key`, `.value`).
FIELDS: dict[str, tuple[str, ...]] = {
    "ACTIVITY_ID_FIELD": ("Activity.id",),
    "ACTIVITY_ACTION_FIELD": ("Activity.action",),
    "ACTIVITY_TARGET_FIELD": ("Activity.target",),
    "ACTIVITY_USER_FIELD": ("Activity.user",),
    "ACTIVITY_SOURCE_ID_FIELD": ("Activity.source_id",),
    "ACTIVITY_METADATA_FIELD": ("Activity.metadata",),
    "ACTIVITY_SEGMENTS_FIELD": ("Activity.segments",),
    "ACTIVITY_OCCURRED_AT_FIELD": ("Activity.occurred_at",),
    "ACTIVITY_SOURCE_FIELD": ("Activity.source",),
    "SOURCE_TYPE_FIELD": ("Source.type",),
    "SOURCE_NAME_FIELD": ("Source.name",),
    "SOURCE_VARIANT_FIELD": ("Source.variant",),
    "SOURCE_POSITION_FIELD": ("Source.position",),
    "SOURCE_RESULT_COUNT_FIELD": ("Source.result_count",),
    "TARGET_TYPE_FIELD": ("Target.type",),
    "TARGET_ID_FIELD": ("Target.id",),
    "TARGET_ATTRIBUTES_FIELD": ("Target.attributes",),
    "USER_SESSION_ID_FIELD": ("User.session_id",),
    "USER_ANONYMOUS_ID_FIELD": ("User.anonymous_id",),
    "USER_USER_ID_FIELD": ("User.user_id",),
    "USER_IDENTITIES_FIELD": ("User.identities",),
    "METADATA_LOCALE_FIELD": ("Metadata.locale",),
    "METADATA_DEVICE_TYPE_FIELD": ("Metadata.device_type",),
    "METADATA_QUANTITY_FIELD": ("Metadata.quantity",),
    "METADATA_PRICE_FIELD": ("Metadata.price",),
    "METADATA_CURRENCY_FIELD": ("Metadata.currency",),
    "METADATA_ORDER_ID_FIELD": ("Metadata.order_id",),
    "METADATA_PAGE_URL_FIELD": ("Metadata.page_url",),
    "METADATA_REFERRER_FIELD": ("Metadata.referrer",),
    "METADATA_USER_AGENT_FIELD": ("Metadata.user_agent",),
    "METADATA_QUERY_FIELD": ("Metadata.query",),
    "METADATA_CUSTOM_FIELD": ("Metadata.custom",),
    "MAP_KEY_FIELD": ("Target.attributes.key", "User.identities.key", "Metadata.custom.key"),
    "MAP_VALUE_FIELD": ("Target.attributes.value", "User.identities.value", "Metadata.custom.value"),
    "TIMESTAMP_SECONDS_FIELD": ("Activity.occurred_at.seconds",),
    "TIMESTAMP_NANOS_FIELD": ("Activity.occurred_at.nanos",),
}

# C constant -> the messages whose fields are exactly 1..that number (C treats anything past it as
# unknown, and tracks the fields in 32-bit masks).
MAX_FIELDS: dict[str, tuple[str, ...]] = {
    "ACTIVITY_MAX_FIELD": ("Activity",),
    "TARGET_MAX_FIELD": ("Target",),
    "USER_MAX_FIELD": ("User",),
    "METADATA_MAX_FIELD": ("Metadata",),
    "SOURCE_MAX_FIELD": ("Source",),
    "MAP_MAX_FIELD": ("Target.attributes", "User.identities", "Metadata.custom"),
    "TIMESTAMP_MAX_FIELD": ("Activity.occurred_at",),
}

# Numbers that do not come from activity.v1: the ProtobufList envelope's row field, which workers.rows
# frames too.
OTHER: dict[str, tuple[str, int]] = {
    "ROWS_ENVELOPE_FIELD": ("workers.rows._ROW_KEY", rows._ROW_KEY[0] >> 3),
}

_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Z][A-Z0-9_]*_FIELD)[ \t]+\(?(\d+)\)?[ \t]*$", re.M)
_ENUM = re.compile(r"\benum\b[^{;]*\{([^}]*)\}", re.S)
_ENUM_ITEM = re.compile(r"\b([A-Z][A-Z0-9_]*_FIELD)\s*=\s*(\d+)")
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
# Field number 0 is the wire format's own rule (no field has it), not a number of the schema.
_BARE_COMPARISON = re.compile(
    r"(?:\.|->)num\s*(?:==|!=|<=|>=|<|>)\s*[1-9]|\b[1-9]\d*\s*(?:==|!=|<=|>=|<|>)\s*\w+(?:\.|->)num\b"
)
_NUM_SWITCH = re.compile(r"\bswitch\s*\(\s*\w+(?:\.|->)num\s*\)\s*\{")
_BARE_CASE = re.compile(r"\bcase\s+\d+\s*:")


def constants(source: str) -> dict[str, int]:
    """Every `*_FIELD` constant of a C source, from `#define NAME 12` and `enum { NAME = 12 }`."""
    found: dict[str, int] = {}
    items = [(m.group(1), m.group(2)) for m in _DEFINE.finditer(source)]
    for enum in _ENUM.finditer(_COMMENT.sub(" ", source)):
        items += [(m.group(1), m.group(2)) for m in _ENUM_ITEM.finditer(enum.group(1))]
    for name, number in items:
        assert name not in found, f"{name} is defined twice"
        found[name] = int(number)
    return found


def _message(name: str) -> Descriptor:
    return pb.DESCRIPTOR.message_types_by_name[name]


def resolve(path: str) -> Any:
    """The descriptor at `path`: a message (`Activity`), a field (`Activity.id`), or the message of
    a message-typed field (`Activity.occurred_at` when more follows it, or when asked for as a message)."""
    first, *rest = path.split(".")
    current: Any = _message(first)
    for name in rest:
        message = current if isinstance(current, Descriptor) else current.message_type
        assert message is not None, f"{path}: {current.full_name} is not a message"
        current = message.fields_by_name[name]
    return current


def message_at(path: str) -> Descriptor:
    found = resolve(path)
    return found if isinstance(found, Descriptor) else found.message_type


def mismatches(found: dict[str, int]) -> Iterable[str]:
    """What is wrong with the constants of one C source: each number against where it comes from."""
    for name, number in sorted(found.items()):
        sources = [name in FIELDS, name in MAX_FIELDS, name in OTHER, hasattr(schema, name)]
        if sum(sources) != 1:
            yield (
                f"{name} = {number}: "
                + ("named twice" if sum(sources) else "no entry in the table of this test")
                + " (add it to FIELDS, MAX_FIELDS or OTHER, or name it as workers/storage/schema.py does)"
            )
            continue
        if name in FIELDS:
            for path in FIELDS[name]:
                expected = resolve(path).number
                if expected != number:
                    yield f"{name} = {number}, but {path} is field {expected}"
        elif name in MAX_FIELDS:
            for path in MAX_FIELDS[name]:
                message = message_at(path)
                numbers = sorted(f.number for f in message.fields)
                if numbers != list(range(1, number + 1)):
                    yield (
                        f"{name} = {number}, but {message.full_name} has fields {numbers}: the C filter "
                        "must know every field of it (fields past the maximum are unknown to it)"
                    )
        elif name in OTHER:
            where, expected = OTHER[name]
            if expected != number:
                yield f"{name} = {number}, but {where} says {expected}"
        elif getattr(schema, name) != number:
            yield f"{name} = {number}, but workers/storage/schema.py has {name} = {getattr(schema, name)}"


def bare_numbers(source: str) -> list[str]:
    """Field numbers written as bare literals: comparisons with a `.num`, and `case 3:` in a switch
    over one."""
    code = _COMMENT.sub(" ", source)
    found = [m.group(0) for m in _BARE_COMPARISON.finditer(code)]
    for switch in _NUM_SWITCH.finditer(code):
        depth, end = 1, switch.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(code[end], 0)
            end += 1
        found += [m.group(0) for m in _BARE_CASE.finditer(code, switch.end(), end)]
    return found


@pytest.mark.parametrize("path", C_SOURCES, ids=lambda p: p.name)
def test_every_field_number_in_c_matches_its_descriptor(path: Path) -> None:
    source = path.read_text()
    assert not list(mismatches(constants(source)))
    assert not bare_numbers(source), f"{path.name}: name these field numbers (#define ..._FIELD)"


def test_the_table_names_only_constants_the_c_sources_define() -> None:
    defined: dict[str, int] = {}
    for path in C_SOURCES:
        defined.update(constants(path.read_text()))
    stale = (set(FIELDS) | set(MAX_FIELDS) | set(OTHER)) - set(defined)
    assert not stale, f"in the table but in no C source: {sorted(stale)}"
    # The filter reads activities: it must name the fields of Activity it reads, at the least.
    assert defined["ACTIVITY_ID_FIELD"] == pb.Activity.DESCRIPTOR.fields_by_name["id"].number


def test_a_number_that_differs_fails() -> None:
    source = """
        #define ACTIVITY_ID_FIELD 1
        #define TARGET_ID_FIELD 3
        #define METADATA_MAX_FIELD 10
        #define TENANT_FIELD 1009
        #define SOMETHING_FIELD 4
        enum { USER_USER_ID_FIELD = 2, OTHER = 7 };
        static int f(field_t f) { if (f.num == 9) return 1; switch (f.num) { case 4: return 2; } return 0; }
    """
    found = constants(source)
    assert found == {
        "ACTIVITY_ID_FIELD": 1,
        "TARGET_ID_FIELD": 3,
        "METADATA_MAX_FIELD": 10,
        "TENANT_FIELD": 1009,
        "SOMETHING_FIELD": 4,
        "USER_USER_ID_FIELD": 2,
    }
    problems = list(mismatches(found))
    assert len(problems) == 5, problems
    assert any(p.startswith("TARGET_ID_FIELD = 3, but Target.id is field 2") for p in problems)
    assert any(p.startswith("METADATA_MAX_FIELD = 10") for p in problems)
    assert any("TENANT_FIELD = 1009" in p and "has TENANT_FIELD = 1001" in p for p in problems)
    assert any(p.startswith("SOMETHING_FIELD = 4: no entry") for p in problems)
    assert any(p.startswith("USER_USER_ID_FIELD = 2, but User.user_id is field 3") for p in problems)
    assert bare_numbers(source) == [".num == 9", "case 4:"]


def test_the_row_fields_of_the_schema_would_be_checked() -> None:
    # The collector's own row fields live in workers/storage/schema.py; C that names one is held to it.
    assert not list(mismatches({"TENANT_FIELD": schema.TENANT_FIELD}))
    assert not list(mismatches({"RESOLVED_USER_ID_FIELD": schema.RESOLVED_USER_ID_FIELD}))


def test_the_numbers_python_hands_to_c_and_reads_itself_match_the_requests() -> None:
    # The activities field of each request, given to core._fastpath.check.
    for kind, message, name in (
        (service.ONE, pb.TrackActivityRequest, "activity"),
        (service.BATCH, pb.TrackActivitiesRequest, "activities"),
        (service.STREAM, pb.StreamActivitiesRequest, "activities"),
    ):
        assert kind.activities_field == message.DESCRIPTOR.fields_by_name[name].number, message
    # The header messages of core.fastpath read a request's own fields without its activities.
    for header, message in (
        (fastpath.OneHeader, pb.TrackActivityRequest),
        (fastpath.BatchHeader, pb.TrackActivitiesRequest),
        (fastpath.StreamHeader, pb.StreamActivitiesRequest),
    ):
        for field in header.DESCRIPTOR.fields:
            real = message.DESCRIPTOR.fields_by_name[field.name]
            assert field.number == real.number, (header.DESCRIPTOR.name, field.name)
    one_activity = fastpath.OneHeader.DESCRIPTOR.fields_by_name["activity"].message_type
    assert one_activity.fields_by_name["id"].number == pb.Activity.DESCRIPTOR.fields_by_name["id"].number
