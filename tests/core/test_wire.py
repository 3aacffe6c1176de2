"""Wire-level salvage: splitting protobuf bytes into fields, and rescuing the activities that parse."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.internal.encoder import _VarintBytes
from google.protobuf.message import DecodeError
from helpers import make_activity

from core.proto.activity.v1 import activity_pb2 as pb
from core.wire import WireError, find_bad_field, iter_fields, salvage_batch

MARKER = b"MARKER-MARKER"
BROKEN = b"MARKER-\xff\xfe\xfdKER"
assert len(MARKER) == len(BROKEN)


def _break(data: bytes) -> bytes:
    """Replace the one marker string in `data` by malformed UTF-8 of the same length."""
    assert data.count(MARKER) == 1
    broken = data.replace(MARKER, BROKEN)
    assert len(broken) == len(data)
    return broken


def _request(*activities: pb.Activity) -> pb.TrackActivitiesRequest:
    request = pb.TrackActivitiesRequest(activities=activities)
    request.sent_at.FromSeconds(1_750_000_000)
    return request


# -- iter_fields -----------------------------------------------------------------------------------


def test_iter_fields_splits_a_serialized_request_into_its_fields() -> None:
    request = _request(make_activity(0), make_activity(1))
    data = request.SerializeToString()
    fields = list(iter_fields(data))
    assert [(number, wire_type) for number, wire_type, _ in fields] == [(1, 2), (1, 2), (2, 2)]
    assert b"".join(encoded for _, _, encoded in fields) == data
    first, second, sent_at = (pb.TrackActivitiesRequest.FromString(encoded) for _, _, encoded in fields)
    assert list(first.activities) == [request.activities[0]]
    assert list(second.activities) == [request.activities[1]]
    assert sent_at.sent_at == request.sent_at
    assert not sent_at.activities


def test_iter_fields_reads_every_supported_wire_type() -> None:
    varint = b"\x08" + b"\xac\x02"  # field 1, varint 300
    fixed64 = b"\x11" + bytes(range(8))  # field 2, 8 bytes
    delimited = b"\x1a\x03abc"  # field 3, 3 bytes
    fixed32 = b"\x25" + b"\x01\x02\x03\x04"  # field 4, 4 bytes
    high = _VarintBytes(1001 << 3 | 0) + b"\x05"  # field 1001: a two-byte key
    data = varint + fixed64 + delimited + fixed32 + high
    assert list(iter_fields(data)) == [
        (1, 0, varint),
        (2, 1, fixed64),
        (3, 2, delimited),
        (4, 5, fixed32),
        (1001, 0, high),
    ]


def test_iter_fields_of_nothing_is_empty() -> None:
    assert list(iter_fields(b"")) == []


def test_iter_fields_reads_a_ten_byte_varint() -> None:
    data = b"\x08" + b"\xff" * 9 + b"\x01"  # field 1, 2**64 - 1
    assert list(iter_fields(data)) == [(1, 0, data)]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x08\x80", id="truncated varint value"),
        pytest.param(b"\x80", id="truncated key"),
        pytest.param(b"\x08" + b"\x80" * 10 + b"\x01", id="overlong varint"),
        pytest.param(b"\x0a\x05ab", id="truncated length-delimited"),
        pytest.param(b"\x0a", id="missing length"),
        pytest.param(b"\x09" + bytes(7), id="truncated fixed64"),
        pytest.param(b"\x0d" + bytes(3), id="truncated fixed32"),
        pytest.param(b"\x00\x01", id="field number 0"),
        pytest.param(b"\x0b\x0c", id="group start"),
        pytest.param(b"\x0c", id="group end"),
        pytest.param(b"\x0e", id="wire type 6"),
        pytest.param(b"\x0f", id="wire type 7"),
    ],
)
def test_iter_fields_refuses_what_is_not_wire_format(data: bytes) -> None:
    with pytest.raises(WireError):
        list(iter_fields(data))


def test_iter_fields_yields_the_good_fields_before_the_bad_one() -> None:
    fields = iter_fields(b"\x08\x01" + b"\x0a\x05ab")
    assert next(fields) == (1, 0, b"\x08\x01")
    with pytest.raises(WireError):
        next(fields)


# -- salvage_batch ---------------------------------------------------------------------------------


def test_salvage_keeps_the_activities_that_parse_and_names_the_broken_field() -> None:
    request = _request(
        make_activity(0), make_activity(1, user=pb.User(user_id=MARKER.decode())), make_activity(2)
    )
    data = _break(request.SerializeToString())
    with pytest.raises(DecodeError):
        pb.TrackActivitiesRequest.FromString(data)

    salvaged, broken = salvage_batch(data, pb.TrackActivitiesRequest, 1)

    assert isinstance(salvaged, pb.TrackActivitiesRequest)
    assert len(salvaged.activities) == 3
    assert salvaged.activities[0] == request.activities[0]
    assert salvaged.activities[1] == pb.Activity()
    assert salvaged.activities[2] == request.activities[2]
    assert salvaged.sent_at == request.sent_at
    assert list(broken) == [1]
    path, message = broken[1]
    assert path == "user.user_id"
    assert "user.user_id" in message


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"id": MARKER.decode()}, "id"),
        ({"action": MARKER.decode()}, "action"),
        ({"source_id": MARKER.decode()}, "source_id"),
        ({"target": pb.Target(type=MARKER.decode(), id="x")}, "target.type"),
        ({"target": pb.Target(type="p", id=MARKER.decode())}, "target.id"),
        ({"target": pb.Target(type="p", id="x", attributes={"k": MARKER.decode()})}, "target.attributes"),
        ({"user": pb.User(session_id=MARKER.decode())}, "user.session_id"),
        ({"user": pb.User(user_id="u", identities={MARKER.decode(): "v"})}, "user.identities"),
        ({"metadata": pb.Metadata(locale=MARKER.decode())}, "metadata.locale"),
        ({"metadata": pb.Metadata(page_url="https://x/", query=MARKER.decode())}, "metadata.query"),
        ({"metadata": pb.Metadata(custom={"c": MARKER.decode()})}, "metadata.custom"),
        ({"segments": ["vip", MARKER.decode()]}, "segments"),
    ],
)
def test_salvage_names_the_broken_field_wherever_it_is(fields: dict[str, Any], path: str) -> None:
    request = _request(make_activity(0, **fields), make_activity(1))
    salvaged, broken = salvage_batch(_break(request.SerializeToString()), pb.TrackActivitiesRequest, 1)
    assert list(broken) == [0]
    assert broken[0][0] == path
    assert broken[0][1]
    assert list(salvaged.activities) == [pb.Activity(), request.activities[1]]


def test_salvage_reports_every_broken_activity() -> None:
    request = _request(
        make_activity(0, source_id="MARKER-MARKER"),
        make_activity(1),
        make_activity(2, user=pb.User(anonymous_id="MARKER-MARKER")),
    )
    data = request.SerializeToString().replace(MARKER, BROKEN)
    salvaged, broken = salvage_batch(data, pb.TrackActivitiesRequest, 1)
    assert {index: path for index, (path, _) in broken.items()} == {0: "source_id", 2: "user.anonymous_id"}
    assert list(salvaged.activities) == [pb.Activity(), request.activities[1], pb.Activity()]


def test_salvage_of_a_request_that_parses_gives_the_request() -> None:
    request = _request(make_activity(0), make_activity(1))
    salvaged, broken = salvage_batch(request.SerializeToString(), pb.TrackActivitiesRequest, 1)
    assert salvaged == request
    assert broken == {}


def test_salvage_of_a_stream_request_keeps_its_sequence() -> None:
    request = pb.StreamActivitiesRequest(
        sequence=42, activities=[make_activity(0, action="MARKER-MARKER"), make_activity(1)]
    )
    request.sent_at.FromSeconds(1_750_000_000)
    salvaged, broken = salvage_batch(_break(request.SerializeToString()), pb.StreamActivitiesRequest, 2)
    assert isinstance(salvaged, pb.StreamActivitiesRequest)
    assert salvaged.sequence == 42
    assert salvaged.sent_at == request.sent_at
    assert list(salvaged.activities) == [pb.Activity(), request.activities[1]]
    assert broken[0][0] == "action"


def _field_boundaries(data: bytes) -> set[int]:
    ends = {0}
    for _, _, encoded in iter_fields(data):
        ends.add(max(ends) + len(encoded))
    return ends


def test_truncated_request_raises_wire_error() -> None:
    data = _request(make_activity(0), make_activity(1)).SerializeToString()
    boundaries = _field_boundaries(data)
    cuts = [n for n in range(1, len(data)) if n not in boundaries]
    assert len(cuts) > 100
    for n in cuts:
        with pytest.raises(WireError):
            salvage_batch(data[:n], pb.TrackActivitiesRequest, 1)


def test_truncated_request_with_a_broken_activity_raises_wire_error() -> None:
    data = _break(_request(make_activity(0, source_id="MARKER-MARKER")).SerializeToString())
    with pytest.raises(WireError):
        salvage_batch(data[:-3], pb.TrackActivitiesRequest, 1)


def test_broken_sent_at_raises_decode_error_naming_it() -> None:
    good = pb.TrackActivitiesRequest(activities=[make_activity(0)]).SerializeToString()
    broken_sent_at = b"\x12\x02\x08\x80"  # sent_at (field 2) holding a truncated varint
    assert [n for n, _, _ in iter_fields(good + broken_sent_at)] == [1, 2]
    with pytest.raises(DecodeError, match="sent_at"):
        salvage_batch(good + broken_sent_at, pb.TrackActivitiesRequest, 1)


def test_broken_sent_at_of_a_stream_request_raises_decode_error_naming_it() -> None:
    data = pb.StreamActivitiesRequest(sequence=1).SerializeToString() + b"\x1a\x02\x08\x80"
    with pytest.raises(DecodeError, match="sent_at"):
        salvage_batch(data, pb.StreamActivitiesRequest, 2)


# -- find_bad_field --------------------------------------------------------------------------------


def test_find_bad_field_walks_into_nested_messages() -> None:
    activity = make_activity(0, metadata=pb.Metadata(order_id="MARKER-MARKER"))
    data = _break(activity.SerializeToString())
    assert find_bad_field(pb.Activity.DESCRIPTOR, pb.Activity, data) == "metadata.order_id"
    assert find_bad_field(pb.Activity.DESCRIPTOR, pb.Activity, data, "activities.") == (
        "activities.metadata.order_id"
    )


def test_find_bad_field_of_an_activity_that_parses_is_empty() -> None:
    data = make_activity(0).SerializeToString()
    assert find_bad_field(pb.Activity.DESCRIPTOR, pb.Activity, data) == ""
