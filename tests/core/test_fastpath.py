"""core._fastpath: the C filter never accepts what the Python path rejects or would change.

The reference is the Python path: upb parses the request (salvage_batch when it does not parse as a
whole), core.validation judges every activity, workers.rows normalises and frames the valid
ones. Duplicate ids follow the rule decided for the collector: only syntactically valid UUIDs take part,
compared as 128-bit values; the first occurrence wins whatever its validity; every later occurrence is
a duplicate. An activity that upb cannot parse has no id for the Python path (salvage_batch leaves it
empty), so its id takes no part either.
"""

from __future__ import annotations

import os
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from helpers import make_activity
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_compiled import compiled_module

from core.fastpath import CURRENCY_CODES, limits_tuple
from core.limits import Limits
from core.normalize import (
    normalize_action,
    normalize_currency,
    normalize_device_type,
    normalize_locale,
    normalize_source_type,
)
from core.proto.activity.v1 import activity_pb2 as pb
from core.validation import validate_activities
from core.wire import salvage_batch, varint
from workers.enrichment.enricher import activity_keys
from workers.rows import batch_suffix, encode_rows

# Not built: the module fails (a broken build), or is skipped where ACTIVITY_NO_COMPILER=1
# (tests/test_compiled.py).
fastpath: Any = compiled_module("core._fastpath")

NS = 1_000_000_000
NOW_S = 1_750_000_000
NOW_NS = NOW_S * NS
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
SIMPLE_LOCALE_RE = re.compile(r"[a-z]{2,3}(?:-[A-Z]{2})?")
DEFAULT = Limits()
# Small limits, so that generated values cross them cheaply.
SMALL = Limits(
    max_activity_bytes=700,
    max_id_chars=12,
    max_name_chars=10,
    max_text_chars=24,
    max_map_entries=3,
    max_segments=3,
    max_future_skew_s=10.0,
)
TINY = Limits(
    max_activity_bytes=160,
    max_id_chars=4,
    max_name_chars=4,
    max_text_chars=6,
    max_map_entries=1,
    max_segments=1,
    max_future_skew_s=0.5,
)
SUFFIX = batch_suffix("tenant-a", NOW_NS, NOW_NS - 2 * NS, 2 * NS)


def check(
    raw: bytes, field: int = 1, limits: Limits = DEFAULT, received_ns: int = NOW_NS, skew_ns: int = 0
) -> tuple[bytes, list[tuple[int, int, int]], list[int], int, int]:
    result: tuple[bytes, list[tuple[int, int, int]], list[int], int, int] = fastpath.check(
        raw, field, limits_tuple(limits), CURRENCY_CODES, received_ns, skew_ns
    )
    return result


def triples(fast: bytes) -> list[tuple[int, int, int]]:
    return list(struct.iter_unpack("<III", fast))


def fast_indexes(fast: bytes) -> list[int]:
    return [index for index, _, _ in triples(fast)]


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def ld(field: int, body: bytes) -> bytes:
    return key(field, 2) + varint(len(body)) + body


def request_bytes(payloads: list[bytes], field: int = 1) -> bytes:
    return b"".join(ld(field, p) for p in payloads)


def split_rows(rows: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(rows):
        assert rows[pos] == 0x0A
        pos += 1
        length = shift = 0
        while True:
            byte = rows[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append(rows[pos : pos + length])
        pos += length
    assert pos == len(rows)
    return out


def is_uuid(value: str) -> bool:
    return len(value) == 36 and UUID_RE.fullmatch(value) is not None


def has_unknown_fields(message: Message) -> bool:
    if len(UnknownFieldSet(message)):
        return True
    for descriptor, value in message.ListFields():
        nested = descriptor.message_type
        is_message = nested is not None and not nested.GetOptions().map_entry and not descriptor.is_repeated
        if is_message and has_unknown_fields(value):
            return True
    return False


def is_canonical(a: pb.Activity) -> bool:
    """True when enrich's normalisers would change nothing."""
    if normalize_action(a.action) != a.action:
        return False
    if a.HasField("metadata"):
        m = a.metadata
        for value, normalise in (
            (m.locale, normalize_locale),
            (m.currency, normalize_currency),
            (m.device_type, normalize_device_type),
        ):
            if value and normalise(value) != value:
                return False
    source_type = a.source.type if a.HasField("source") else ""
    return not source_type or normalize_source_type(source_type) == source_type


@dataclass
class Reference:
    activities: list[pb.Activity]
    unparsed: dict[int, tuple[str, str]]
    accepted: set[int]
    dups: set[int]


def expected_duplicates(activities: list[pb.Activity], unparsed: dict[int, tuple[str, str]]) -> set[int]:
    seen: set[int] = set()
    dups: set[int] = set()
    for index, activity in enumerate(activities):
        if index in unparsed or not is_uuid(activity.id):
            continue
        value = uuid.UUID(activity.id).int
        if value in seen:
            dups.add(index)
        else:
            seen.add(value)
    return dups


def reference(
    raw: bytes, request_class: Any, field: int, limits: Limits, received_ns: int, skew_ns: int
) -> Reference:
    """What the Python path makes of `raw`. Works whether or not validate_activities already follows
    the new duplicate rule: its accepted set minus the rule's duplicates is the same either way."""
    try:
        request, unparsed = request_class.FromString(raw), {}
    except DecodeError:
        request, unparsed = salvage_batch(raw, request_class, field)
    activities = list(request.activities)
    dups = expected_duplicates(activities, unparsed)
    valid, _ = validate_activities(activities, limits, received_ns, skew_ns, unparsed)
    return Reference(activities, unparsed, set(valid) - dups, dups)


def assert_frame_matches(raw: bytes, fast: bytes, missing: int, ref: Reference) -> None:
    """frame()'s rows are the activities with their assigned ids, as enrich would write them."""
    random = os.urandom(16 * missing)
    rows, assigned = fastpath.frame(raw, fast, SUFFIX, random)
    indexes = fast_indexes(fast)
    bodies = split_rows(rows)
    assert len(bodies) == len(indexes)
    assert len(assigned) == missing
    assert set(assigned) <= set(indexes)
    assert len(set(assigned.values())) == missing
    # The Python path on copies of the same activities.
    copies = [pb.Activity() for _ in ref.activities]
    for i in indexes:
        copies[i].CopyFrom(ref.activities[i])
    encoded = encode_rows([(i, copies[i]) for i in indexes], "tenant-a", NOW_NS, NOW_NS - 2 * NS, 2 * NS)
    assert b"".join(encoded.pieces[2::3]) == SUFFIX * len(indexes)
    python_rows = [pb.Activity.FromString(piece) for piece in encoded.pieces[1::3]]
    for index, body, python_row in zip(indexes, bodies, python_rows, strict=True):
        assert body.endswith(SUFFIX)
        row = pb.Activity.FromString(body[: len(body) - len(SUFFIX)])
        expected = pb.Activity()
        expected.CopyFrom(ref.activities[index])
        if index in assigned:
            assert not expected.id
            new_id = assigned[index]
            assert uuid.UUID(new_id).version == 4 and str(uuid.UUID(new_id)) == new_id
            expected.id = new_id
            python_row.id = new_id
        assert row == expected
        assert row == python_row


# -- unit tests ------------------------------------------------------------------------------------


def test_frame_appends_each_activitys_extra_fields_after_the_suffix() -> None:
    activities = [make_activity(n) for n in range(5)]
    activities[3].ClearField("id")
    raw = pb.TrackActivitiesRequest(activities=activities).SerializeToString()
    fast, _, _, missing, _ = check(raw)
    extras = [b"", b"\xea\x3e\x02ab", b"", b"\xea\x3e\x01x" * 300, b"\xd0\x3e\x01"]
    rows, assigned = fastpath.frame(raw, fast, SUFFIX, os.urandom(16 * missing), extras)
    bodies = split_rows(rows)
    for n, (body, activity) in enumerate(zip(bodies, activities, strict=True)):
        if n == 3:
            activity.id = assigned[3]
        assert pb.Activity.FromString(body[: len(body) - len(SUFFIX) - len(extras[n])]) == activity
        assert body.endswith(SUFFIX + extras[n])
    with pytest.raises(ValueError, match="one per triple"):
        fastpath.frame(raw, fast, SUFFIX, os.urandom(16), extras[:2])
    with pytest.raises(ValueError, match="not bytes"):
        fastpath.frame(raw, fast, SUFFIX, os.urandom(16), ["text", b"", b"", b"", b""])


def test_keys_reads_what_enrichment_looks_up() -> None:
    activities = [
        make_activity(1, metadata=pb.Metadata(user_agent="Mozilla/5.0 (Ünïcode)")),
        make_activity(2, user=pb.User(anonymous_id="a-2")),
    ]
    raw = pb.TrackActivitiesRequest(activities=activities).SerializeToString()
    fast, slow, _, _, _ = check(raw)
    assert slow == []
    assert fastpath.keys(raw, fast) == [
        ("product", "sku-1", "u-1", "anon-1", "s-1", "Mozilla/5.0 (Ünïcode)"),
        ("product", "sku-2", "", "a-2", "", ""),
    ]


def test_a_realistic_batch_is_all_fast_and_frames_back_to_itself() -> None:
    activities = [make_activity(n) for n in range(500)]
    raw = pb.TrackActivitiesRequest(activities=activities).SerializeToString()
    fast, slow, dups, missing, count = check(raw)
    assert (slow, dups, missing, count) == ([], [], 0, 500)
    assert fast_indexes(fast) == list(range(500))
    for n, (index, start, end) in enumerate(triples(fast)):
        assert index == n
        assert raw[start:end] == activities[n].SerializeToString()
    rows, assigned = fastpath.frame(raw, fast, SUFFIX, b"")
    assert assigned == {}
    for body, activity in zip(split_rows(rows), activities, strict=True):
        assert body == activity.SerializeToString() + SUFFIX


def test_a_batch_with_every_field_filled_is_all_fast() -> None:
    activities = []
    for n in range(200):
        a = make_activity(
            n,
            source_id=f"resp-{n}",
            segments=["returning", "vip"],
            user=pb.User(session_id=f"s-{n}", identities={"crm": f"C-{n}", "erp": "E-1"}),
            metadata=pb.Metadata(
                locale="pt-BR",
                device_type="desktop",
                quantity=2,
                price=1999,
                currency="EUR",
                order_id=f"o-{n}",
                page_url=f"https://shop.example/p/{n}?ref=é",
                referrer="https://search.example/?q=shoes",
                user_agent="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
                query="running shoes ünïcödé 😀",
                custom={"ab": "b", "exp": "42"},
            ),
        )
        a.occurred_at.FromNanoseconds(NOW_NS - 3_600 * NS + n)
        activities.append(a)
    raw = pb.TrackActivitiesRequest(activities=activities).SerializeToString()
    fast, slow, dups, missing, count = check(raw)
    assert (slow, dups, missing, count) == ([], [], 0, 200)
    ref = reference(raw, pb.TrackActivitiesRequest, 1, DEFAULT, NOW_NS, 0)
    assert ref.accepted == set(range(200))
    assert_frame_matches(raw, fast, missing, ref)


def test_activities_without_id_get_uuid4_ids_from_the_random_bytes() -> None:
    activities = [make_activity(n, id="") for n in range(3)]
    activities.insert(1, make_activity(9))
    raw = pb.TrackActivitiesRequest(activities=activities).SerializeToString()
    fast, slow, dups, missing, count = check(raw)
    assert (slow, dups, missing, count) == ([], [], 3, 4)
    random = bytes(range(48))
    rows, assigned = fastpath.frame(raw, fast, SUFFIX, random)
    assert set(assigned) == {0, 2, 3}
    for position, index in enumerate((0, 2, 3)):
        expected = uuid.UUID(bytes=random[16 * position : 16 * position + 16], version=4)
        assert assigned[index] == str(expected)
    bodies = split_rows(rows)
    for index, body in enumerate(bodies):
        row = pb.Activity.FromString(body[: len(body) - len(SUFFIX)])
        if index in assigned:
            assert row.id == assigned[index]
        else:
            assert row.id == activities[index].id
    with pytest.raises(ValueError, match="random"):
        fastpath.frame(raw, fast, SUFFIX, random[:47])


def test_stream_and_singular_requests() -> None:
    activities = [make_activity(n) for n in range(3)]
    stream = pb.StreamActivitiesRequest(sequence=7, activities=activities)
    stream.sent_at.FromSeconds(NOW_S)
    fast, slow, dups, missing, count = check(stream.SerializeToString(), field=2)
    assert (fast_indexes(fast), slow, dups, missing, count) == ([0, 1, 2], [], [], 0, 3)
    single = pb.TrackActivityRequest(activity=make_activity(0))
    single.sent_at.FromSeconds(NOW_S)
    fast, slow, dups, missing, count = check(single.SerializeToString(), field=1)
    assert (fast_indexes(fast), count) == ([0], 1)
    # Unknown top-level fields of any wire type are skipped.
    raw = key(9, 0) + varint(1) + key(10, 1) + bytes(8) + key(11, 5) + bytes(4) + ld(12, b"\xff")
    fast, *_, count = check(raw + request_bytes([activities[0].SerializeToString()]))
    assert (fast_indexes(fast), count) == ([0], 1)
    assert check(b"") == (b"", [], [], 0, 0)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x0a\x85", id="truncated length"),
        pytest.param(b"\x0a\x05ab", id="length beyond the end"),
        pytest.param(b"\x80", id="truncated tag"),
        pytest.param(b"\x10\xff", id="truncated varint"),
        pytest.param(b"\x10" + b"\xff" * 10 + b"\x01", id="varint of 11 bytes"),
        pytest.param(b"\x11\x00\x00", id="truncated fixed64"),
        pytest.param(b"\x15\x00", id="truncated fixed32"),
        pytest.param(b"\x0b\x0c", id="wire type 3"),
        pytest.param(b"\x0c", id="wire type 4"),
        pytest.param(b"\x0e\x00", id="wire type 6"),
        pytest.param(b"\x0f\x00", id="wire type 7"),
        pytest.param(b"\x02\x00", id="field number 0"),
        pytest.param(b"\x08\x01", id="activities field as a varint"),
        pytest.param(b"\x8a\x80\x80\x80\x80\x00\x00", id="tag of 6 bytes"),
    ],
)
def test_broken_top_level_framing_raises(raw: bytes) -> None:
    good = request_bytes([make_activity(0).SerializeToString()])
    with pytest.raises(ValueError):
        check(good + raw)


def test_count_field_counts_the_activities_from_the_framing_alone() -> None:
    activities = [make_activity(i).SerializeToString() for i in range(7)]
    raw = pb.TrackActivitiesRequest(
        activities=[pb.Activity.FromString(a) for a in activities], sent_at={"seconds": 1}
    ).SerializeToString()
    assert fastpath.count_field(raw, 1) == 7
    assert fastpath.count_field(raw, 2) == 1
    assert fastpath.count_field(b"", 1) == 0
    # An activity whose own bytes are broken still counts: its insides are not read.
    assert fastpath.count_field(raw + ld(1, b"\xff\xff"), 1) == 8
    with pytest.raises(ValueError, match="framing"):
        fastpath.count_field(raw + b"\x0a\x05ab", 1)


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param(key(9, 3) + key(9, 4), id="group"),
        pytest.param(key(9, 6) + b"\x00", id="wire type 6"),
        pytest.param(b"\x02\x00", id="field number 0"),
        pytest.param(ld(5, b"")[:1] + b"\x80\x80\x80\x80\x80\x00", id="length of 6 bytes"),
    ],
)
def test_wire_data_only_python_can_judge_raises(inner: bytes) -> None:
    payload = make_activity(0).SerializeToString() + inner
    with pytest.raises(ValueError, match="only the Python parser"):
        check(request_bytes([payload]))


def test_arguments_are_checked() -> None:
    raw = request_bytes([make_activity(0).SerializeToString()])
    with pytest.raises(ValueError, match="limits"):
        fastpath.check(raw, 1, (1, 2, 3), CURRENCY_CODES, NOW_NS, 0)
    with pytest.raises(ValueError, match="currencies"):
        fastpath.check(raw, 1, limits_tuple(DEFAULT), b"EURUS", NOW_NS, 0)
    with pytest.raises(ValueError, match="currencies"):
        fastpath.check(raw, 1, limits_tuple(DEFAULT), b"eur", NOW_NS, 0)
    with pytest.raises(ValueError, match="activities_field"):
        fastpath.check(raw, 0, limits_tuple(DEFAULT), CURRENCY_CODES, NOW_NS, 0)
    with pytest.raises(TypeError):
        fastpath.check(bytearray(raw), 1, limits_tuple(DEFAULT), CURRENCY_CODES, NOW_NS, 0)
    fast = check(raw)[0]
    with pytest.raises(ValueError, match="triples"):
        fastpath.frame(raw, fast[:-1], SUFFIX, b"")
    with pytest.raises(ValueError, match="outside"):
        fastpath.frame(raw[:-1], fast, SUFFIX, b"")
    start = triples(fast)[0][1]
    with pytest.raises(ValueError, match="not a protobuf"):
        fastpath.frame(raw[:start] + b"\x0a\x85" + raw[start + 2 :], fast, SUFFIX, b"")
    # Limits beyond int64 are clamped to the stricter side instead of failing.
    assert fast_indexes(fastpath.check(raw, 1, (2**70,) * 7, CURRENCY_CODES, NOW_NS, 0)[0]) == [0]
    assert fastpath.check(raw, 1, (-(2**70),) * 7, CURRENCY_CODES, NOW_NS, 0)[1] == [(0, start, len(raw))]


def _metadata(**fields: Any) -> pb.Metadata:
    m = make_activity(0).metadata
    for name, value in fields.items():
        if name == "custom":
            m.custom.update(value)
        else:
            setattr(m, name, value)
    return m


def _sourced(empty: bool = False, **fields: Any) -> Callable[[pb.Activity], None]:
    """Gives the activity a source_id and a Source (empty, or with `fields` over a full one)."""

    def apply(a: pb.Activity) -> None:
        a.source_id = "resp-1"
        a.source.SetInParent()
        if not empty:
            a.source.CopyFrom(pb.Source(type="search", name="Site Search", variant="B", position=3))
            for name, value in fields.items():
                setattr(a.source, name, value)

    return apply


def _occurred(seconds: int, nanos: int = 0) -> Callable[[pb.Activity], None]:
    def apply(a: pb.Activity) -> None:
        a.occurred_at.seconds = seconds
        a.occurred_at.nanos = nanos

    return apply


FAST = "fast"
SLOW = "slow"  # the Python path rejects it or would normalise it
UNRECOGNISED = "unrecognised"  # valid and canonical, but beyond the forms the filter recognises

# (change to a valid activity, what check() makes of it)
CASES: list[tuple[str, Callable[[pb.Activity], Any], str]] = [
    ("uppercase id", lambda a: setattr(a, "id", a.id.upper()), FAST),
    ("id not a uuid", lambda a: setattr(a, "id", "0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4d5g"), SLOW),
    ("id without dashes", lambda a: setattr(a, "id", a.id.replace("-", "")), SLOW),
    ("id with another separator", lambda a: setattr(a, "id", a.id[:23] + "+" + a.id[24:]), SLOW),
    ("action with dots", lambda a: setattr(a, "action", "cart.add:v2"), FAST),
    ("action uppercase", lambda a: setattr(a, "action", "View"), SLOW),
    ("action with dash", lambda a: setattr(a, "action", "add-to-cart"), SLOW),
    ("action with space", lambda a: setattr(a, "action", "add to cart"), SLOW),
    ("action empty", lambda a: setattr(a, "action", ""), SLOW),
    ("action at the limit", lambda a: setattr(a, "action", "a" * 64), FAST),
    ("action too long", lambda a: setattr(a, "action", "a" * 65), SLOW),
    ("no target", lambda a: a.ClearField("target"), SLOW),
    ("target type multi-byte at limit", lambda a: setattr(a.target, "type", "é" * 64), FAST),
    ("target type too long", lambda a: setattr(a.target, "type", "é" * 65), SLOW),
    ("target id at limit", lambda a: setattr(a.target, "id", "😀" * 128), FAST),
    ("target id too long", lambda a: setattr(a.target, "id", "😀" * 129), SLOW),
    ("target id empty", lambda a: setattr(a.target, "id", ""), SLOW),
    ("attributes at limit", lambda a: a.target.attributes.update({f"k{i}": "v" for i in range(63)}), FAST),
    ("attributes over", lambda a: a.target.attributes.update({f"k{i}": "v" for i in range(65)}), SLOW),
    ("attribute empty key", lambda a: a.target.attributes.update({"": "v"}), SLOW),
    ("attribute empty value", lambda a: a.target.attributes.update({"k": ""}), FAST),
    ("attribute value too long", lambda a: a.target.attributes.update({"k": "x" * 2049}), SLOW),
    ("no user", lambda a: a.ClearField("user"), SLOW),
    ("user without ids", lambda a: a.user.CopyFrom(pb.User(identities={"crm": "1"})), SLOW),
    ("user only session", lambda a: a.user.CopyFrom(pb.User(session_id="s")), FAST),
    ("user id too long", lambda a: setattr(a.user, "user_id", "u" * 129), SLOW),
    ("source id too long", lambda a: setattr(a, "source_id", "s" * 129), SLOW),
    ("source", _sourced(type="recommendation", result_count=0), FAST),
    ("source empty", _sourced(empty=True), FAST),
    ("source type with dots", _sourced(type="rec.v2:x"), FAST),
    ("source type uppercase", _sourced(type="Search"), SLOW),
    ("source type with dash", _sourced(type="site-search"), SLOW),
    ("source type invalid", _sourced(type="!"), SLOW),
    ("source name at limit", _sourced(name="é" * 64), FAST),
    ("source name too long", _sourced(name="é" * 65), SLOW),
    ("source variant too long", _sourced(variant="v" * 65), SLOW),
    ("source position max", _sourced(position=2**32 - 1), FAST),
    ("source without source id", lambda a: a.source.CopyFrom(pb.Source(type="search")), SLOW),
    ("empty metadata", lambda a: a.metadata.Clear(), FAST),
    ("no metadata", lambda a: a.ClearField("metadata"), FAST),
    ("locale language only", lambda a: a.metadata.CopyFrom(_metadata(locale="fil")), FAST),
    ("locale lower case", lambda a: a.metadata.CopyFrom(_metadata(locale="en-us")), SLOW),
    ("locale mixed case region", lambda a: a.metadata.CopyFrom(_metadata(locale="en-uS")), SLOW),
    ("locale underscore", lambda a: a.metadata.CopyFrom(_metadata(locale="en_US")), SLOW),
    ("locale with script and region", lambda a: a.metadata.CopyFrom(_metadata(locale="zh-Hant-TW")), FAST),
    ("locale with script", lambda a: a.metadata.CopyFrom(_metadata(locale="zh-Hant")), FAST),
    ("locale script not title case", lambda a: a.metadata.CopyFrom(_metadata(locale="zh-hant-TW")), SLOW),
    ("locale with variant", lambda a: a.metadata.CopyFrom(_metadata(locale="de-DE-1996")), UNRECOGNISED),
    ("locale invalid", lambda a: a.metadata.CopyFrom(_metadata(locale="english!")), SLOW),
    ("device uppercase", lambda a: a.metadata.CopyFrom(_metadata(device_type="Mobile")), SLOW),
    ("device with dash", lambda a: a.metadata.CopyFrom(_metadata(device_type="smart-tv")), SLOW),
    ("quantity", lambda a: a.metadata.CopyFrom(_metadata(quantity=1)), FAST),
    ("quantity zero", lambda a: a.metadata.CopyFrom(_metadata(quantity=0)), SLOW),
    ("quantity negative", lambda a: a.metadata.CopyFrom(_metadata(quantity=-3)), SLOW),
    ("price zero", lambda a: a.metadata.CopyFrom(_metadata(price=0, currency="JPY")), FAST),
    ("price negative", lambda a: a.metadata.CopyFrom(_metadata(price=-1, currency="JPY")), SLOW),
    ("price without currency", lambda a: a.metadata.CopyFrom(_metadata(price=5)), SLOW),
    ("currency lower case", lambda a: a.metadata.CopyFrom(_metadata(currency="eur")), SLOW),
    ("currency unknown", lambda a: a.metadata.CopyFrom(_metadata(currency="ABC")), SLOW),
    ("currency padded", lambda a: a.metadata.CopyFrom(_metadata(currency=" EUR")), SLOW),
    ("order id too long", lambda a: a.metadata.CopyFrom(_metadata(order_id="o" * 129)), SLOW),
    ("user agent at limit", lambda a: a.metadata.CopyFrom(_metadata(user_agent="€" * 2048)), FAST),
    ("user agent too long", lambda a: a.metadata.CopyFrom(_metadata(user_agent="€" * 2049)), SLOW),
    ("custom key too long", lambda a: a.metadata.CopyFrom(_metadata(custom={"k" * 65: "v"})), SLOW),
    ("segments", lambda a: a.segments.extend(["vip"] * 64), FAST),
    ("segments over", lambda a: a.segments.extend(["vip"] * 65), SLOW),
    ("segment empty", lambda a: a.segments.extend([""]), SLOW),
    ("occurred in the past", _occurred(NOW_S - 86_400, 5), FAST),
    ("occurred at the future limit", _occurred(NOW_S + 300), FAST),
    ("occurred past the future limit", _occurred(NOW_S + 300, 1), SLOW),
    ("occurred at zero", _occurred(0, 5), SLOW),
    ("occurred before 1970", _occurred(-5), SLOW),
    ("occurred with negative nanos", _occurred(NOW_S, -1), SLOW),
    ("occurred in year 292277026596", _occurred(2**63 - 1, 999_999_999), SLOW),
]


@pytest.mark.parametrize(("change", "outcome"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_rules(change: Callable[[pb.Activity], Any], outcome: str) -> None:
    activity = make_activity(1)
    change(activity)
    raw = request_bytes([activity.SerializeToString()])
    result = check(raw)
    ref = reference(raw, pb.TrackActivitiesRequest, 1, DEFAULT, NOW_NS, 0)
    if outcome == FAST:
        assert fast_indexes(result[0]) == [0]
        assert ref.accepted == {0}
        assert is_canonical(ref.activities[0])
    else:
        assert result[1] == [(0, len(raw) - activity.ByteSize(), len(raw))]
        python_keeps_it = ref.accepted == {0} and is_canonical(ref.activities[0])
        assert python_keeps_it == (outcome == UNRECOGNISED)


def test_activity_size_limit_counts_bytes() -> None:
    activity = make_activity(1)
    size = activity.ByteSize()
    raw = request_bytes([activity.SerializeToString()])
    assert fast_indexes(check(raw, limits=Limits(max_activity_bytes=size))[0]) == [0]
    assert check(raw, limits=Limits(max_activity_bytes=size - 1))[1] != []


def test_clock_skew_moves_the_future_limit() -> None:
    activity = make_activity(1)
    activity.occurred_at.seconds = NOW_S + 250
    raw = request_bytes([activity.SerializeToString()])
    assert fast_indexes(check(raw, skew_ns=50 * NS)[0]) == [0]
    assert check(raw, skew_ns=50 * NS + 1)[1] != []
    assert fast_indexes(check(raw, skew_ns=-(10**18))[0]) == [0]


U1 = "0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4d5e"
U2 = "9f0c2b7a-1d2e-4f3a-8b4c-5d6e7f8a9b0c"


def test_duplicates_first_occurrence_wins_whatever_its_validity() -> None:
    payloads = [
        make_activity(0, id=U1, action="").SerializeToString(),  # invalid, but first: claims U1
        make_activity(1, id=U1.upper()).SerializeToString(),  # same UUID: duplicate
        make_activity(2, id=U2).SerializeToString(),
        make_activity(3, id="not-a-uuid").SerializeToString(),
        make_activity(4, id="not-a-uuid").SerializeToString(),  # not a UUID: no part in the rule
        make_activity(5, id=U2.upper()).SerializeToString(),  # duplicate of a valid one
        make_activity(6, id="").SerializeToString(),
        make_activity(7, id="").SerializeToString(),
    ]
    raw = request_bytes(payloads)
    fast, slow, dups, missing, count = check(raw)
    assert dups == [1, 5]
    assert [s[0] for s in slow] == [0, 3, 4]
    assert fast_indexes(fast) == [2, 6, 7]
    assert (missing, count) == (2, 8)
    ref = reference(raw, pb.TrackActivitiesRequest, 1, DEFAULT, NOW_NS, 0)
    assert ref.dups == {1, 5}
    assert ref.accepted == {2, 6, 7}


def test_the_last_id_on_the_wire_is_the_one_that_counts() -> None:
    twice = make_activity(0, id=U1).SerializeToString() + ld(1, U2.encode())  # upb keeps the last
    raw = request_bytes(
        [twice, make_activity(1, id=U1).SerializeToString(), make_activity(2, id=U2).SerializeToString()]
    )
    fast, slow, dups, _, _ = check(raw)
    assert (fast_indexes(fast), [s[0] for s in slow], dups) == ([1], [0], [2])
    ref = reference(raw, pb.TrackActivitiesRequest, 1, DEFAULT, NOW_NS, 0)
    assert (ref.activities[0].id, ref.dups, ref.accepted) == (U2, {2}, {0, 1})


def test_an_activity_that_does_not_parse_claims_no_id() -> None:
    broken = make_activity(0, id=U1).SerializeToString() + ld(5, b"\xff")
    raw = request_bytes([broken, make_activity(1, id=U1).SerializeToString()])
    fast, slow, dups, _, _ = check(raw)
    assert (fast_indexes(fast), [s[0] for s in slow], dups) == ([1], [0], [])
    ref = reference(raw, pb.TrackActivitiesRequest, 1, DEFAULT, NOW_NS, 0)
    assert (ref.unparsed.keys(), ref.dups, ref.accepted) == ({0}, set(), {1})


@pytest.mark.parametrize(
    ("extra", "parses"),
    [
        pytest.param(key(15, 0) + b"\x01", True, id="unknown varint field"),
        pytest.param(ld(1001, b"tenant"), True, id="unknown field with a suffix number"),
        pytest.param(ld(99, b"\xff"), True, id="malformed UTF-8 in an unknown field"),
        pytest.param(key(3, 0) + b"\x01", True, id="target as a varint"),
        pytest.param(ld(2, b"view"), True, id="action twice"),
        pytest.param(ld(1, b""), True, id="explicit empty id after the id"),
        pytest.param(ld(6, b"\x18\x01" * 2), True, id="quantity twice"),
        pytest.param(ld(6, b"\x1a\x01\x01"), True, id="quantity as bytes"),
        pytest.param(ld(6, key(3, 0) + b"\x81\x00"), True, id="non-minimal varint"),
        pytest.param(ld(3, ld(3, ld(1, b"k"))), True, id="map entry without value"),
        pytest.param(ld(3, ld(3, ld(1, b"k") + ld(2, b"v") + ld(3, b"x"))), True, id="map entry extra"),
        pytest.param(ld(8, b"\x10\x05"), True, id="timestamp without seconds"),
        pytest.param(ld(8, ld(1, b"x")), True, id="timestamp seconds as bytes"),
        pytest.param(ld(5, b"\xc0\x80"), False, id="overlong UTF-8"),
        pytest.param(ld(7, b"\xed\xa0\x80"), False, id="surrogate"),
        pytest.param(ld(3, ld(1, b"\xf4\x90\x80\x80")), False, id="above U+10FFFF"),
        pytest.param(ld(4, ld(4, ld(1, b"\xe2\x82") + ld(2, b"v"))), False, id="truncated UTF-8 in a key"),
        pytest.param(key(5, 2) + b"\x05ab", False, id="length beyond the activity"),
        pytest.param(ld(6, b"\x18"), False, id="truncated varint in metadata"),
    ],
)
def test_raw_anomalies_go_slow(extra: bytes, parses: bool) -> None:
    payload = make_activity(0).SerializeToString() + extra
    raw = request_bytes([payload])
    fast, slow, dups, _, _ = check(raw)
    assert (fast, slow, dups) == (b"", [(0, len(raw) - len(payload), len(raw))], [])
    ref = reference(raw, pb.TrackActivitiesRequest, 1, DEFAULT, NOW_NS, 0)
    assert (0 not in ref.unparsed) == parses


def _manual(target: bytes) -> bytes:
    return ld(2, b"view") + ld(3, ld(1, b"product") + ld(2, b"sku") + target) + ld(4, ld(1, b"s"))


@pytest.mark.parametrize(
    ("target", "fast"),
    [
        pytest.param(ld(3, ld(1, b"k") + ld(2, b"")), True, id="entry with an empty value"),
        pytest.param(ld(3, ld(2, b"v") + ld(1, b"k")), True, id="value before key"),
        pytest.param(ld(3, ld(1, b"k")), False, id="entry without value"),
        pytest.param(ld(3, ld(1, b"k") + ld(2, b"v")) * 2, False, id="repeated key"),
        pytest.param(ld(3, ld(1, b"k") + ld(2, b"v") + ld(2, b"w")), False, id="value twice"),
        pytest.param(
            ld(3, ld(1, b"k") + ld(2, b"v")) + ld(3, ld(1, b"K") + ld(2, b"v")), True, id="keys differ"
        ),
    ],
)
def test_map_entries_on_the_wire(target: bytes, fast: bool) -> None:
    payload = _manual(target)
    raw = request_bytes([payload])
    ref = reference(raw, pb.TrackActivitiesRequest, 1, DEFAULT, NOW_NS, 0)
    assert ref.accepted == {0}
    assert fast_indexes(check(raw)[0]) == ([0] if fast else [])
    if fast:  # the limit on the activity's size holds for what upb would write back
        assert ref.activities[0].ByteSize() <= len(payload)


ACTION = ld(2, b"view")
TARGET = ld(3, ld(1, b"product") + ld(2, b"sku"))
USER = ld(4, ld(1, b"s"))
BASE = ACTION + TARGET + USER


@pytest.mark.parametrize(
    ("payload", "outcome"),
    [
        pytest.param(BASE, FAST, id="base"),
        pytest.param(ld(2, b"") + TARGET + USER, SLOW, id="empty action"),
        pytest.param(ACTION + ld(3, ld(1, b"") + ld(2, b"sku")) + USER, SLOW, id="empty target type"),
        pytest.param(ACTION + ld(3, ld(1, b"product") + ld(2, b"")) + USER, SLOW, id="empty target id"),
        pytest.param(BASE + ld(7, b""), SLOW, id="empty segment"),
        pytest.param(
            ACTION + TARGET + ld(4, ld(1, b"") + ld(2, b"") + ld(3, b"")), SLOW, id="empty user ids"
        ),
        pytest.param(BASE + ld(6, ld(11, ld(1, b"") + ld(2, b"v"))), SLOW, id="empty custom key"),
        pytest.param(ld(1, b"") + BASE, UNRECOGNISED, id="empty id: the row would carry two ids"),
        pytest.param(BASE + ld(5, b""), FAST, id="empty source id"),
        pytest.param(BASE + ld(6, ld(1, b"") + ld(2, b"") + ld(5, b"")), FAST, id="empty metadata strings"),
        pytest.param(BASE + ld(8, key(1, 0) + varint(NOW_S) + key(2, 0) + b"\x00"), FAST, id="zero nanos"),
        pytest.param(BASE + ld(6, key(3, 0) + b"\x81\x00"), UNRECOGNISED, id="non-minimal varint"),
        pytest.param(BASE + key(5, 2) + b"\x81\x00s", UNRECOGNISED, id="non-minimal length"),
        pytest.param(BASE + b"\xaa\x00\x01s", UNRECOGNISED, id="non-minimal tag"),
    ],
)
def test_values_python_serializers_never_write(payload: bytes, outcome: str) -> None:
    raw = request_bytes([payload])
    fast, _, _, missing, _ = check(raw)
    ref = reference(raw, pb.TrackActivitiesRequest, 1, DEFAULT, NOW_NS, 0)
    assert (fast_indexes(fast) == [0]) == (outcome == FAST)
    python_keeps_it = ref.accepted == {0} and is_canonical(ref.activities[0])
    assert python_keeps_it == (outcome != SLOW)
    assert_frame_matches(raw, fast, missing, ref)


# -- differential test -----------------------------------------------------------------------------

UUIDS = [U1, U1.upper(), U2, "0B6F3A1E-3c55-4A8E-9d8e-7A1F2B3C4D5E"]
# Per field: values valid under SMALL (and canonical), and further edge and invalid values. Every
# generated activity perturbs a few fields only, so that most of them are valid and the filter's
# fast answers are put to the test.
POOLS: dict[str, tuple[list[Any], list[Any]]] = {
    "id": (
        [*UUIDS, ""],
        [
            "not-a-uuid",
            U1.replace("-", ""),
            "{" + U1[1:-1] + "}",
            U1[:-1] + "g",
            " " + U1[1:],
            "é" * 36,
            U1.replace("-", "+", 1),
            U2.replace("-", "_"),
        ],
    ),
    "action": (
        ["view", "add_to_cart", "a.b:c", "x" * 10, "click"],
        [
            "x" * 11,
            "Add-To-Cart",
            "add to cart",
            "VIEW",
            "add-to-cart",
            " view",
            "view ",
            "9lives",
            "_x",
            "",
            "vïew",
            "é",
            "a!b",
        ],
    ),
    "name": (
        ["product", "p", "x" * 10, "é" * 10, "😀" * 10, "Mixed Case"],
        ["", "x" * 11, "é" * 11, "😀" * 11],
    ),
    "ident": (
        ["sku-1", "s", "x" * 12, "é" * 12, "😀" * 12],
        ["", "x" * 13, "é" * 13, "😀" * 13],
    ),
    "text": (
        ["", "https://x.example/p", "x" * 24, "é" * 24, "€" * 6],
        ["x" * 25, "é" * 25, "😀" * 25],
    ),
    "locale": (
        ["", "en", "eng", "en-US", "pt-BR", "abc-DE"],
        [
            "en_us",
            "EN-us",
            "en-us",
            "zh-Hant-TW",
            "e",
            "english",
            "en-USA",
            "en-U",
            "EN",
            "de-de",
            "en-419",
            "abcdefghijk",
            "sr-Latn",
            "en-US ",
            "en-uS",
            "en-Us",
        ],
    ),
    "device_type": (
        ["", "mobile", "tv", "smart_tv", "tv:4k"],
        ["Mobile", "smart-tv", "smart tv", "9tv", "!", "x" * 11],
    ),
    "currency": (["EUR", "USD", "JPY", "XXX"], ["", "eur", "Eur", " EUR", "ABC", "EURO", "XX", "€"]),
    "quantity": ([None, 1, 2, 2**63 - 1], [0, -1, -(2**63)]),
    "price": ([None, 0, 1999, 2**63 - 1], [-1, -(2**63)]),
    "occurred_at": (
        [None, (NOW_S - 3600, 0), (NOW_S, 999_999_999), (1, 0)],
        [
            (NOW_S + 10, 0),
            (NOW_S + 10, 1),
            (NOW_S + 11, 0),
            (0, 0),
            (0, 5),
            (-5, 0),
            (NOW_S, -1),
            (2**62, 0),
            (2**63 - 1, 0),
        ],
    ),
    "position": ([0, 1, 7, 2**32 - 1], []),
    "result_count": ([None, 0, 12, 2**32 - 1], []),
    "target": ([True], [False]),
    "user": ([True], [False]),
    "entries": ([0, 1, 2, 3], [4, 5]),
}
PERTURBABLE = [
    *POOLS,
    "target.type",
    "target.id",
    "target.attributes",
    "user.ids",
    "user.identities",
    "source_id",
    "source.type",
    "source.name",
    "order_id",
    "texts",
    "custom",
    "segments",
]
SKEWS = [0, 0, 5 * NS, -5 * NS, 20 * NS, -(2**62)]

# Raw additions to an activity. "ok": upb parses the result; "broken": it does not; "uncertain":
# check() may hand the whole request back with ValueError.
EXTRAS: list[tuple[bytes, str]] = [
    (key(15, 0) + b"\x01", "ok"),
    (ld(1001, b"x"), "ok"),
    (key(20, 5) + b"abcd", "ok"),
    (key(21, 1) + b"abcdefgh", "ok"),
    (key(3, 0) + b"\x01", "ok"),
    (ld(2, b"view"), "ok"),
    (ld(5, b"s"), "ok"),
    (ld(3, ld(1, b"p") + ld(2, b"i")), "ok"),
    (ld(1, U2.encode()), "ok"),
    (ld(1, b""), "ok"),
    (ld(99, b"\xff"), "ok"),
    (ld(6, key(3, 0) + b"\x81\x00"), "ok"),
    (key(6, 2) + b"\x80\x00", "ok"),
    (ld(4, ld(4, ld(1, b"k"))), "ok"),
    (ld(6, ld(11, ld(2, b"v") + ld(1, b"k"))), "ok"),
    (ld(8, b"\x08\x01\x08\x01"), "ok"),
    (ld(5, b"\xff"), "broken"),
    (ld(7, b"\xc0\x80"), "broken"),
    (ld(2, b"\xed\xa0\x80"), "broken"),
    (ld(3, ld(1, b"\xf4\x90\x80\x80")), "broken"),
    (ld(4, ld(4, ld(1, b"\xe2\x82") + ld(2, b"v"))), "broken"),
    (ld(1, b"\xff" * 36), "broken"),
    (key(5, 2) + b"\x05ab", "broken"),
    (ld(6, b"\x18"), "broken"),
    (ld(9, key(4, 0) + b"\x80\x80\x80\x80\x10"), "ok"),
    (ld(9, key(5, 0) + b"\x05" + key(5, 0) + b"\x06"), "ok"),
    (ld(9, ld(6, b"x")), "ok"),
    (ld(9, ld(1, b"\xff")), "broken"),
    (key(9, 3) + key(9, 4), "uncertain"),
    (key(9, 6), "uncertain"),
]
# Same-length replacements for a marker, valid UTF-8 or not.
SPLICES: dict[int, list[bytes]] = {
    1: [b"\xff", b"\x80", b"\xc3", b"z"],
    2: [b"\xc0\x80", b"\xc3\x28", b"\xe2\x82", b"\xc3\xa9"],
    3: [b"\xed\xa0\x80", b"\xe0\x80\x80", b"\xf0\x9f\x98", b"\xef\xbf\xbf"],
    4: [b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80", b"\xf0\x80\x80\x80", b"\xf4\x8f\xbf\xbf"],
}
SPLICE_TARGETS = ["action", "target.type", "target.attributes", "user.user_id", "segments"]
SPLICE_TARGETS += ["metadata.referrer", "metadata.custom", "source_id", "metadata.locale"]


def _set_marker(a: pb.Activity, where: str, marker: str) -> None:
    if where == "target.attributes":
        a.target.attributes[marker] = "v"
    elif where == "metadata.custom":
        a.metadata.custom["k"] = marker
    elif where == "segments":
        a.segments.append(marker)
    elif "." in where:
        parent, name = where.split(".")
        setattr(getattr(a, parent), name, marker)
    else:
        setattr(a, where, marker)


@dataclass
class Generated:
    payload: bytes
    mutated: bool
    uncertain: bool


@st.composite
def generated_activities(draw: st.DrawFn) -> Generated:
    perturbed = draw(st.sets(st.sampled_from(PERTURBABLE), max_size=3))

    def pick(pool: str, field: str | None = None) -> Any:
        good, other = POOLS[pool]
        return draw(st.sampled_from(good + other if (field or pool) in perturbed else good))

    def entries(field: str) -> dict[str, str]:
        count = pick("entries", field)
        return {pick("name", field): pick("text", field) for _ in range(count)}

    a = pb.Activity()
    a.id = draw(st.uuids().map(str)) if draw(st.booleans()) else pick("id")
    a.action = pick("action")
    if pick("target"):
        a.target.type = pick("name", "target.type")
        a.target.id = pick("ident", "target.id")
        a.target.attributes.update(entries("target.attributes"))
    if pick("user"):
        a.user.SetInParent()
        names = ["session_id", "anonymous_id", "user_id"]
        for name in draw(st.sets(st.sampled_from(names), min_size=0 if "user.ids" in perturbed else 1)):
            setattr(a.user, name, pick("ident", "user.ids"))
        a.user.identities.update(entries("user.identities"))
    if draw(st.booleans()):
        a.source_id = pick("ident", "source_id")
    if draw(st.booleans()):
        a.source.type = pick("action", "source.type") if draw(st.booleans()) else ""
        a.source.name = pick("name", "source.name")
        a.source.variant = pick("name", "source.name")
        a.source.position = pick("position")
        result_count = pick("result_count")
        if result_count is not None:
            a.source.result_count = result_count
    if draw(st.booleans()):
        m = a.metadata
        m.SetInParent()
        m.locale = pick("locale")
        m.device_type = pick("device_type")
        quantity = pick("quantity")
        if quantity is not None:
            m.quantity = quantity
        price = pick("price")
        if price is not None:
            m.price = price
        if price is not None or draw(st.booleans()):
            m.currency = pick("currency")
        m.order_id = pick("ident", "order_id")
        for name in draw(st.sets(st.sampled_from(["page_url", "referrer", "user_agent", "query"]))):
            setattr(m, name, pick("text", "texts"))
        m.custom.update(entries("custom"))
    a.segments.extend(pick("name", "segments") for _ in range(pick("entries", "segments")))
    occurred = pick("occurred_at")
    if occurred is not None:
        a.occurred_at.seconds, a.occurred_at.nanos = occurred
    mutation = draw(st.sampled_from(["none"] * 8 + ["extra", "splice"]))
    if mutation == "splice":
        size = draw(st.integers(1, 4))
        marker = "~" * size
        _set_marker(a, draw(st.sampled_from(SPLICE_TARGETS)), marker)
        payload = a.SerializeToString()
        if payload.count(marker.encode()) == 1:  # only in the string, not in some length or number
            return Generated(
                payload.replace(marker.encode(), draw(st.sampled_from(SPLICES[size]))), True, False
            )
        return Generated(payload, True, False)
    payload = a.SerializeToString()
    if mutation == "extra":
        extra, kind = draw(st.sampled_from(EXTRAS))
        at_end = draw(st.booleans())
        payload = payload + extra if at_end or kind == "broken" else extra + payload
        return Generated(payload, True, kind == "uncertain")
    return Generated(payload, False, False)


def assert_agrees(items: list[Generated], stream: bool, limits: Limits, skew_ns: int) -> None:
    """check() and frame() on a request of `items` against the Python path."""
    field = 2 if stream else 1
    parts = [ld(field, item.payload) for item in items]
    sent_at = pb.Activity(occurred_at={"seconds": NOW_S}).occurred_at.SerializeToString()
    if stream:
        parts.insert(0, key(1, 0) + varint(42))
        parts.insert(len(parts) // 2, ld(3, sent_at))
        request_class: Any = pb.StreamActivitiesRequest
    else:
        parts.append(ld(2, sent_at))
        request_class = pb.TrackActivitiesRequest
    raw = b"".join(parts)
    ref = reference(raw, request_class, field, limits, NOW_NS, skew_ns)
    assert len(ref.activities) == len(items)
    try:
        fast, slow, dups, missing, count = check(raw, field, limits, NOW_NS, skew_ns)
    except ValueError:
        assert any(item.uncertain for item in items)
        event("check() handed the request back")
        return

    everything = set(range(len(items)))
    fast_set = set(fast_indexes(fast))
    slow_set = {index for index, _, _ in slow}
    assert count == len(items)
    assert len(fast_set) + len(slow_set) + len(dups) == count
    assert fast_set | slow_set | set(dups) == everything
    assert set(dups) == ref.dups
    assert dups == sorted(dups)
    assert fast_set <= ref.accepted
    for index in fast_set:
        activity = ref.activities[index]
        assert is_canonical(activity)
        assert not has_unknown_fields(activity)
    assert missing == sum(1 for i in fast_set if not ref.activities[i].id)
    # Spans point at the activities' bytes.
    for index, start, end in [*triples(fast), *slow]:
        assert raw[start:end] == items[index].payload
    # An activity as upb writes it, valid and canonical, is never sent the long way round.
    for index, item in enumerate(items):
        a = ref.activities[index]
        if not item.mutated and index in ref.accepted and is_canonical(a):
            assert index in fast_set or not SIMPLE_LOCALE_RE.fullmatch(a.metadata.locale or "en")
    assert_frame_matches(raw, fast, missing, ref)
    # What enrichment looks up, read from the bytes, is what the parsed activities hold.
    indexes = fast_indexes(fast)
    assert fastpath.keys(raw, fast) == [activity_keys(ref.activities[i]) for i in indexes]
    event(f"fast activities: {'none' if not fast_set else 'all' if fast_set == everything else 'some'}")
    event(f"with duplicates: {bool(dups)}; with unparsable activities: {bool(ref.unparsed)}")


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(generated_activities(), min_size=1, max_size=30),
    stream=st.booleans(),
    limits=st.sampled_from([SMALL, SMALL, SMALL, TINY, DEFAULT]),
    skew_ns=st.sampled_from(SKEWS),
)
def test_differential_against_the_python_path(
    items: list[Generated], stream: bool, limits: Limits, skew_ns: int
) -> None:
    assert_agrees(items, stream, limits, skew_ns)


@st.composite
def corrupted(draw: st.DrawFn) -> Generated:
    """A valid activity's bytes with a few bytes overwritten, inserted or deleted: whatever that makes
    of the wire data, check() must agree with upb on it."""
    a = make_activity(draw(st.integers(0, 50)), id=draw(st.sampled_from([*UUIDS, ""])))
    a.segments.append("vip")
    if draw(st.booleans()):
        a.occurred_at.FromSeconds(NOW_S - 60)
        a.metadata.quantity = 1
        a.metadata.price = 300
        a.metadata.currency = "EUR"
    data = bytearray(a.SerializeToString())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["set", "insert", "delete"]))
        byte = draw(st.sampled_from([0x00, 0x01, 0x02, 0x0A, 0x12, 0x1A, 0x22, 0x7F, 0x80, 0xC0, 0xED, 0xFF]))
        if how == "set":
            data[at] = byte
        elif how == "insert":
            data.insert(at, byte)
        elif len(data) > 1:
            del data[at]
    return Generated(bytes(data), True, True)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.one_of(corrupted(), generated_activities()), min_size=1, max_size=8),
    stream=st.booleans(),
)
def test_corrupted_wire_data_against_the_python_path(items: list[Generated], stream: bool) -> None:
    assert_agrees(items, stream, DEFAULT, 0)
