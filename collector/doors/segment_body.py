"""Segment request bodies: JSON decoded once, with the size of each call of a batch as sent.

Segment limits each call to 32 KB of JSON, as sent. msgspec's decoder (compiled) decodes the body,
then walks it once more for the raw text of each entry of `batch`, whose length is the call's size
(skipped, not decoded again); serializing every call again to measure it would cost as much as
decoding the body. What msgspec refuses and `json.loads` takes (a number beyond a double's range,
NaN, a lone surrogate escaped) is decoded by the standard library's own scanner, which walks the
top-level object, says where each entry of `batch` ends and, for a body that is not JSON, where it
is not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import msgspec


class _Batch(msgspec.Struct):
    """A body's `batch` as the raw JSON text of each entry (every other member skipped)."""

    batch: list[msgspec.Raw] = []


_decode_any = msgspec.json.Decoder().decode
_decode_entries = msgspec.json.Decoder(_Batch).decode

# The scanner and string reader of `json.loads` (not in the type stubs), and JSON's whitespace.
_scan: Callable[[str, int], tuple[Any, int]] = getattr(json.JSONDecoder(), "scan_once")  # noqa: B009
_scanstring: Callable[[str, int], tuple[str, int]] = getattr(json.decoder, "scanstring")  # noqa: B009
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip_to(text: str, at: int) -> int:
    """The position of the first character at or after `at` that is not whitespace."""
    match = _WHITESPACE.match(text, at)
    return match.end() if match is not None else at


class BodyError(ValueError):
    """The body is not a JSON object (the message says where)."""


def _value(text: str, at: int) -> tuple[Any, int]:
    try:
        return _scan(text, at)
    except StopIteration as stop:
        raise BodyError(f"the body is not JSON: no value at character {stop.value}") from None


def _expect(text: str, at: int, what: str) -> int:
    at = _skip_to(text, at)
    if text[at : at + 1] != what:
        raise BodyError(f"the body is not JSON: expected {what!r} at character {at}")
    return _skip_to(text, at + 1)


def decode(body: bytes) -> tuple[dict[str, Any], list[int]]:
    """The body as a dict, as `json.loads` decodes it, and the size in bytes, as sent, of each entry of
    its `batch` list (empty when it has none). Raises BodyError."""
    try:
        document = _decode_any(body)
        if type(document) is not dict:
            raise BodyError("not an object")
        calls = document.get("batch")
        if type(calls) is not list:
            return document, []
        entries = _decode_entries(body).batch
    except (msgspec.MsgspecError, BodyError):
        return decode_scanned(body)
    if len(entries) != len(calls):
        return decode_scanned(body)
    return document, [len(entry) for entry in entries]


def decode_scanned(body: bytes) -> tuple[dict[str, Any], list[int]]:
    """`decode` by the standard library's scanner: slower, and says where a body is not JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError(f"the body is not UTF-8: {error}") from None
    document: dict[str, Any] = {}
    sizes: list[int] = []
    at = _expect(text, 0, "{")
    if text[at : at + 1] == "}":
        at += 1
    else:
        while True:
            if text[at : at + 1] != '"':
                raise BodyError(f"the body is not JSON: expected a name at character {at}")
            try:
                key, at = _scanstring(text, at + 1)
            except json.JSONDecodeError as error:
                raise BodyError(f"the body is not JSON: {error}") from None
            at = _expect(text, at, ":")
            if key == "batch" and text[at : at + 1] == "[":
                value, sizes, at = _batch(text, at, len(text) == len(body))
            else:
                value, at = _value(text, at)
            document[key] = value
            at = _skip_to(text, at)
            separator = text[at : at + 1]
            if separator == "}":
                at += 1
                break
            if separator != ",":
                raise BodyError(f"the body is not JSON: expected ',' or '}}' at character {at}")
            at = _skip_to(text, at + 1)
    if _skip_to(text, at) != len(text):
        raise BodyError(f"the body is not JSON: extra data at character {at}")
    return document, sizes


def _batch(text: str, at: int, ascii_only: bool) -> tuple[list[Any], list[int], int]:
    calls: list[Any] = []
    sizes: list[int] = []
    at = _skip_to(text, at + 1)
    if text[at : at + 1] == "]":
        return calls, sizes, at + 1
    while True:
        call, end = _value(text, at)
        calls.append(call)
        sizes.append(end - at if ascii_only else len(text[at:end].encode("utf-8")))
        at = _skip_to(text, end)
        separator = text[at : at + 1]
        if separator == "]":
            return calls, sizes, at + 1
        if separator != ",":
            raise BodyError(f"the body is not JSON: expected ',' or ']' at character {at}")
        at = _skip_to(text, at + 1)
