"""The protobuf wire format by hand: the one place for writing and reading fields without a message
class, and the salvage of requests that do not parse as a whole.

Writing (`varint`, `field_key`, `bytes_field`, `timestamp_field`) is what row framing and enrichment
append to a client's `Activity` bytes. Reading (`read_varint`, `iter_fields`, `payload`) splits bytes
into fields. (The Python client, a distribution of its own, keeps its own two writers.)

Salvage: a request whose bytes fail to parse (typically: a string field holding malformed UTF-8, which proto3
forbids) would otherwise lose every activity in it. Here the request is split on the wire into its
fields; each activity is parsed on its own, and the ones that fail become rejections naming the field
at fault. Only used after a whole-request parse failed, so it favours clarity over speed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from google.protobuf.message import DecodeError, Message

from core.proto.activity.v1 import activity_pb2 as pb


class WireError(ValueError):
    """The bytes are not protobuf wire format at all."""


_NS = 1_000_000_000


# -- writing ----------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer (or a negative int64, as 10 bytes)."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.cache
def field_key(field: int, wire_type: int) -> bytes:
    """The key (tag) of a protobuf field (memoised: a schema has few)."""
    return varint(field << 3 | wire_type)


def bytes_field(field: int, data: bytes) -> bytes:
    """A length-delimited protobuf field."""
    size = len(data)
    return field_key(field, 2) + (bytes((size,)) if size < 0x80 else varint(size)) + data


def timestamp_field(field: int, ns: int) -> bytes:
    """A google.protobuf.Timestamp field of `ns` nanoseconds since the epoch (nanos omitted when 0)."""
    seconds, nanos = divmod(ns, _NS)
    body = field_key(1, 0) + varint(seconds) + (field_key(2, 0) + varint(nanos) if nanos else b"")
    return bytes_field(field, body)


# -- reading ----------------------------------------------------------------------------------------


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; WireError when truncated or overlong."""
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def iter_fields(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(field number, wire type, the field's whole encoding including its key) for each field."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == 0:
            _, pos = read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = read_varint(data, pos)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        if pos > len(data):
            raise WireError("truncated field")
        yield number, wire_type, data[start:pos]


def payload(encoded: bytes) -> bytes:
    """The payload of one length-delimited field, given its whole encoding (key, length, payload)."""
    _, pos = read_varint(encoded, 0)
    _, pos = read_varint(encoded, pos)
    return encoded[pos:]


def find_bad_field(descriptor: Any, message_class: type[Message], data: bytes, prefix: str = "") -> str:
    """The dotted path of the first field of `data` that does not parse, as deep as it can be named."""
    try:
        fields = list(iter_fields(data))
    except WireError:
        # The framing itself is broken inside this message: it is as deep as the path goes.
        return prefix.rstrip(".")
    for number, wire_type, encoded in fields:
        try:
            message_class.FromString(encoded)
            continue
        except DecodeError:
            pass
        field = descriptor.fields_by_number.get(number)
        if field is None:
            return f"{prefix}{number}"
        path = f"{prefix}{field.name}"
        nested = field.message_type
        if wire_type == 2 and nested is not None and not nested.GetOptions().map_entry:
            sub_class = _message_classes.get(nested.full_name)
            if sub_class is not None:
                return find_bad_field(nested, sub_class, payload(encoded), path + ".")
        return path
    return prefix.rstrip(".")


_message_classes: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls for cls in (pb.Activity, pb.Target, pb.User, pb.Metadata)
}


def describe_unparsable(payload: bytes) -> tuple[str, str]:
    """(field path, message) for an Activity's bytes that do not parse."""
    path = find_bad_field(pb.Activity.DESCRIPTOR, pb.Activity, payload)
    return path, (
        f"{path or 'the activity'} does not parse: malformed protobuf or a string that is not valid UTF-8"
    )


def salvage_batch(
    data: bytes, request_class: type[Message], activities_field: int
) -> tuple[Message, dict[int, tuple[str, str]]]:
    """Parse a request field by field.

    `activities_field` is the number of the request's activity field: repeated (a batch) or singular
    (TrackActivityRequest). Returns the request with every activity that parses (an empty Activity in
    place of each one that does not, so that indexes keep their meaning), and, by index, (field path,
    message) for each activity that does not parse. Raises WireError, or DecodeError naming the field,
    when something other than an activity is broken.
    """
    request = request_class()
    field = request_class.DESCRIPTOR.fields_by_number[activities_field]
    repeated = field.is_repeated
    broken: dict[int, tuple[str, str]] = {}
    index = 0
    for number, _, encoded in iter_fields(data):
        if number == activities_field:
            body = payload(encoded)
            activity = getattr(request, field.name).add() if repeated else getattr(request, field.name)
            try:
                activity.MergeFromString(body)
            except DecodeError:
                activity.Clear()
                if not repeated:
                    activity.SetInParent()
                broken[index] = describe_unparsable(body)
            if repeated:
                index += 1
        else:
            try:
                request.MergeFromString(encoded)
            except DecodeError:
                name = request_class.DESCRIPTOR.fields_by_number.get(number)
                raise DecodeError(f"{name.name if name else number} does not parse") from None
    return request, broken
