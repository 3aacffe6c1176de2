"""Segment bodies decode as `json.loads` decodes them, with each batch entry's size in bytes as sent."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.doors.segment_body import BodyError, decode

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(
    calls=st.lists(st.dictionaries(st.text(), values, max_size=5), max_size=6),
    extra=st.dictionaries(st.text().filter(lambda k: k != "batch"), values, max_size=3),
    indent=st.sampled_from([None, 1]),
    ascii_only=st.booleans(),
)
def test_decoding_agrees_with_json_loads(
    calls: list[dict[str, Any]], extra: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    body = json.dumps({**extra, "batch": calls}, indent=indent, ensure_ascii=ascii_only).encode()
    document, sizes = decode(body)
    assert document == json.loads(body)
    # Each entry's size, measured independently: its own text in the body (compact when not indented),
    # in characters (bytes past 8192 characters: the other test).
    if indent is None:
        assert sizes == [len(json.dumps(c, ensure_ascii=ascii_only)) for c in calls]
    assert len(sizes) == len(calls)


def test_sizes_count_bytes_of_long_calls() -> None:
    call = {"event": "é" * 9000}
    body = json.dumps({"batch": [call]}, ensure_ascii=False).encode()
    _, sizes = decode(body)
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
    with pytest.raises(BodyError):
        decode(body)


def test_a_batch_that_is_not_a_list_is_kept_as_sent() -> None:
    assert decode(b'{"batch": 3, "writeKey": "k"}') == ({"batch": 3, "writeKey": "k"}, [])
    assert decode(b" { } ") == ({}, [])
