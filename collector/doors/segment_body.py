"""Segment request bodies: JSON decoded once, with the size of each call of a batch as sent.

Segment limits each call to 32 KB of JSON. Serializing every call again to measure it would cost as
much as decoding the body; instead the top-level object is walked here with the standard library's
own scanner (the one `json.loads` uses), which says where each entry of `batch` ends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

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
    """The body as a dict, and the size of each entry of its `batch` list (empty when it has none):
    its length in bytes when over 8192 characters (only such an entry can be over 32 KB), in
    characters otherwise. Raises BodyError."""
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
                value, sizes, at = _batch(text, at)
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


def _batch(text: str, at: int) -> tuple[list[Any], list[int], int]:
    calls: list[Any] = []
    sizes: list[int] = []
    at = _skip_to(text, at + 1)
    if text[at : at + 1] == "]":
        return calls, sizes, at + 1
    while True:
        call, end = _value(text, at)
        calls.append(call)
        # At most 8192 characters are at most 32 KB of UTF-8: only longer calls have their bytes counted.
        sizes.append(end - at if end - at <= 8192 else len(text[at:end].encode("utf-8")))
        at = _skip_to(text, end)
        separator = text[at : at + 1]
        if separator == "]":
            return calls, sizes, at + 1
        if separator != ",":
            raise BodyError(f"the body is not JSON: expected ',' or ']' at character {at}")
        at = _skip_to(text, at + 1)
