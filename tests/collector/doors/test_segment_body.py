"""Segment bodies decode as `json.loads` decodes them, with each batch entry's size in bytes as sent: by
msgspec, and by the standard library's scanner that takes what msgspec refuses."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.doors.segment_body import BodyError, decode, decode_scanned

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
Decoder = Callable[[bytes], tuple[dict[str, Any], list[int]]]
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize("decoder", [decode, decode_scanned])
@given(
    calls=st.lists(st.dictionaries(st.text(), values, max_size=5), max_size=6),
    extra=st.dictionaries(st.text().filter(lambda k: k != "batch"), values, max_size=3),
    indent=st.sampled_from([None, 1]),
    ascii_only=st.booleans(),
)
def test_decoding_agrees_with_json_loads(
    decoder: Decoder, calls: list[dict[str, Any]], extra: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    body = json.dumps({**extra, "batch": calls}, indent=indent, ensure_ascii=ascii_only).encode()
    document, sizes = decoder(body)
    assert document == json.loads(body)
    # Each entry's size, measured independently: its own text in the body (compact when not indented).
    if indent is None:
        assert sizes == [len(json.dumps(c, ensure_ascii=ascii_only).encode()) for c in calls]
    assert len(sizes) == len(calls)


@pytest.mark.parametrize("decoder", [decode, decode_scanned])
def test_what_msgspec_refuses_and_json_loads_takes_is_decoded_too(decoder: Decoder) -> None:
    body = b'{"batch": [{"n": 1e400, "s": "\\ud800"}, {"n": NaN}], "sentAt": "x"}'
    document, sizes = decoder(body)
    assert repr(document) == repr(json.loads(body))  # repr: NaN is not equal to itself
    assert sizes == [len(b'{"n": 1e400, "s": "\\ud800"}'), len(b'{"n": NaN}')]


@pytest.mark.parametrize("decoder", [decode, decode_scanned])
def test_sizes_count_bytes_of_long_calls(decoder: Decoder) -> None:
    call = {"event": "é" * 9000}
    body = json.dumps({"batch": [call]}, ensure_ascii=False).encode()
    _, sizes = decoder(body)
    assert sizes == [len(json.dumps(call, ensure_ascii=False).encode())]
    assert sizes[0] > 18000


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"3",
        b"{",
        b'{"a" 1}',
        b'{"a": 1,}',
        b'{"batch": [1,]}',
        b'{"a": 1} x',
        b"\xff",
        b'{"batch": [1 2]}',
    ],
)
def test_what_is_not_a_json_object_is_refused(body: bytes) -> None:
    with pytest.raises(BodyError, match=r"^the body is not"):
        decode(body)


@pytest.mark.parametrize("decoder", [decode, decode_scanned])
def test_a_batch_that_is_not_a_list_is_kept_as_sent(decoder: Decoder) -> None:
    assert decoder(b'{"batch": 3, "writeKey": "k"}') == ({"batch": 3, "writeKey": "k"}, [])
    assert decoder(b" { } ") == ({}, [])
