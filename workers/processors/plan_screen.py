"""A tenant's tracking plan, run on the raw bytes of the activities the compiled path vouched for.

Without this, a tenant with a plan loses the compiled path: every activity is parsed, judged in Python
and framed again from the parsed message. `compile_program` turns a `Plan` into a program of
`core._fastpath` (`plan_compile`); `plan_screen` then sorts a request's fast spans into those that
certainly break no rule (they stay byte spans, unparsed) and those the Python plan must judge, which
decides every rejection and flag as before. The program only says "conforms" where the Python plan
would find nothing:

- every path is resolved here, from the descriptors, to field numbers and to how its value reads as
  absent (an empty string, a zero without presence, an unset optional, a map key not there);
- `required`, `forbidden`, `target_types`, and `enum`, `pattern`, `max_length` on strings and `min`,
  `max` and `enum` on integers run in C; a pattern that is a sequence of ASCII characters and character
  classes with counts (`[0-9a-f]{16}`, `ord-[0-9]+`, `[A-Z]{3}`: `ascii_pattern`) is matched in C, any
  other by calling the compiled pattern's `fullmatch` from C;
- a value rule the program cannot run the same way (`min` on a string, which Python reads as a number,
  a pattern on an integer, any rule on a repeated field or a whole map) sends each activity that
  carries a value at that path to Python; a path the program cannot follow sends every activity of
  the action there.
"""

from __future__ import annotations

import re
import string
import struct
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor import FieldDescriptor

from core import fastpath
from core.proto.activity.v1 import activity_pb2 as pb

if TYPE_CHECKING:
    from workers.processors.plan import ActionRules, Plan

_V = fastpath.plan_vocabulary() if fastpath.available else {}

_INTEGERS = {
    FieldDescriptor.TYPE_INT64: "PT_INT64",
    FieldDescriptor.TYPE_INT32: "PT_INT64",
    FieldDescriptor.TYPE_UINT32: "PT_UINT",
    FieldDescriptor.TYPE_UINT64: "PT_UINT",
}

WirePath = tuple[tuple[int, ...], int, bytes | None]
"""(field numbers from Activity down, the terminal kind PT_*, the map key when the path ends in one)."""


def wire_path(path: str) -> WirePath | None:
    """Where `path` (as the plan's getters read it) lies on the wire; None when the program cannot
    follow it."""
    descriptor: Any = pb.Activity.DESCRIPTOR
    numbers: list[int] = []
    parts = path.split(".")
    for n, name in enumerate(parts):
        if descriptor is None:
            return None
        f = descriptor.fields_by_name.get(name)
        if f is None:
            return None
        numbers.append(f.number)
        last = n == len(parts) - 1
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            if last:
                return tuple(numbers), _V["PT_PRESENT"], None
            return tuple(numbers), _V["PT_MAP_KEY"], ".".join(parts[n + 1 :]).encode()
        if f.is_repeated:
            return (tuple(numbers), _V["PT_PRESENT"], None) if last else None
        if f.message_type is not None:
            if last:
                return tuple(numbers), _V["PT_PRESENT"], None
            descriptor = None if f.message_type.full_name == "google.protobuf.Timestamp" else f.message_type
            continue
        if not last:
            return None
        if f.type == FieldDescriptor.TYPE_STRING and not f.has_presence:
            return tuple(numbers), _V["PT_STRING"], None
        kind = _INTEGERS.get(f.type)
        if kind is None:
            return None
        if not f.has_presence:
            # Without presence a zero reads as absent; only unsigned ones are in the model.
            return (tuple(numbers), _V["PT_UINT_PLAIN"], None) if kind == "PT_UINT" else None
        return tuple(numbers), _V[kind], None
    return None


_PATTERN_ITEM = struct.Struct("<16sHH")
_PATTERN_ITEMS_MAX = 32
_UNBOUNDED = 0xFFFF
_LITERAL = frozenset(string.ascii_letters + string.digits + " !\"#%&',-/:;<=>@_`~")
_ESCAPABLE = frozenset(string.punctuation)
# Marks that Python's re reserves for set operations inside classes (it warns about them today).
_SET_OPERATIONS = ("--", "&&", "~~", "||")


def _class_char(source: str, i: int) -> tuple[int, int] | None:
    """The character of a class at `i` (a literal or an escaped punctuation mark), and where the next
    one starts."""
    if i >= len(source):
        return None
    c = source[i]
    if c == "\\":
        if i + 1 < len(source) and source[i + 1] in _ESCAPABLE:
            return ord(source[i + 1]), i + 2
        return None
    if c in "[]" or not c.isascii():
        return None
    return ord(c), i + 1


def _char_class(source: str, i: int) -> tuple[set[int], int] | None:
    """The members of the class whose first character is at `i` (after its `[`), and where the class
    ends; None for a negated class, a class with set-operation markers, or anything not plain ASCII."""
    if source[i : i + 1] in ("^", "]"):
        return None
    members: set[int] = set()
    while i < len(source) and source[i] != "]":
        if source[i : i + 2] in _SET_OPERATIONS:
            return None
        first = _class_char(source, i)
        if first is None:
            return None
        low, i = first
        if source[i : i + 1] == "-" and source[i + 1 : i + 2] not in ("]", ""):
            last = _class_char(source, i + 1)
            if last is None or last[0] < low:
                return None
            members.update(range(low, last[0] + 1))
            i = last[1]
        else:
            members.add(low)
    if i >= len(source):
        return None
    return members, i + 1


_QUANTIFIER = re.compile(r"\{([0-9]*)(?:(,)([0-9]*))?\}|[*+?]")


def _quantifier(source: str, i: int) -> tuple[int, int, int] | None:
    """(min, max, where the next item starts) of the counts at `i` (none: once); None when they are
    not plain counts (a lazy or possessive one, a bound past 65534)."""
    m = _QUANTIFIER.match(source, i)
    if m is None:
        return 1, 1, i
    text = m.group(0)
    if text == "*":
        low, high = 0, _UNBOUNDED
    elif text == "+":
        low, high = 1, _UNBOUNDED
    elif text == "?":
        low, high = 0, 1
    else:
        low = int(m.group(1) or 0)
        if m.group(2) is None:
            if not m.group(1):
                return None
            high = low
        else:
            high = int(m.group(3)) if m.group(3) else _UNBOUNDED
    if low >= _UNBOUNDED or (high != _UNBOUNDED and (high >= _UNBOUNDED or high < low)):
        return None
    if source[m.end() : m.end() + 1] in ("*", "+", "?", "{"):
        return None
    return low, high, m.end()


def ascii_pattern(pattern: re.Pattern[str]) -> bytes | None:
    """`pattern` as items for the program's PC_PATTERN_ASCII when it is a sequence of ASCII characters,
    escaped punctuation and positive ASCII character classes, each counted once or by `?`, `*`, `+`,
    `{n}`, `{n,m}`, `{n,}`, `{,m}`, without flags: then the whole of a value matches it exactly when
    every character is ASCII and the C matcher finds the counts. None: anything else (`.`, `\\d`,
    groups, alternatives, anchors, negated classes, flags), which Python's re runs."""
    source = pattern.pattern
    if pattern.flags != re.UNICODE or not source:
        return None
    items: list[bytes] = []
    i = 0
    while i < len(source):
        c = source[i]
        if c == "[":
            found = _char_class(source, i + 1)
            if found is None:
                return None
            members, i = found
        elif c == "\\":
            if i + 1 >= len(source) or source[i + 1] not in _ESCAPABLE:
                return None
            members, i = {ord(source[i + 1])}, i + 2
        elif c in _LITERAL:
            members, i = {ord(c)}, i + 1
        else:
            return None
        counts = _quantifier(source, i)
        if counts is None:
            return None
        low, high, i = counts
        bits = bytearray(16)
        for member in members:
            bits[member >> 3] |= 1 << (member & 7)
        items.append(_PATTERN_ITEM.pack(bytes(bits), low, high))
    return b"".join(items) if len(items) <= _PATTERN_ITEMS_MAX else None


def _is_text(terminal: int) -> bool:
    return terminal in (_V["PT_STRING"], _V["PT_MAP_KEY"])


def _is_integer(terminal: int) -> bool:
    return terminal in (_V["PT_INT64"], _V["PT_UINT"], _V["PT_UINT_PLAIN"])


def _value_check(rule: str, where: WirePath, arg: Any) -> tuple[Any, ...]:
    numbers, terminal, key = where
    text, integer = _is_text(terminal), _is_integer(terminal)
    if rule == "enum" and text:
        return (_V["PC_ENUM_STR"], terminal, numbers, key, tuple(str(v).encode() for v in arg))
    if rule == "enum" and integer:
        # Strings never equal an integer value: only the numbers of the set can match.
        values = tuple(float(v) for v in arg if isinstance(v, int | float) and not isinstance(v, bool))
        return (_V["PC_ENUM_NUM"], terminal, numbers, key, values)
    if rule == "pattern" and text:
        items = ascii_pattern(arg)
        if items is not None:
            return (_V["PC_PATTERN_ASCII"], terminal, numbers, key, (items, arg.fullmatch))
        return (_V["PC_PATTERN"], terminal, numbers, key, arg.fullmatch)
    if rule in ("min", "max") and integer:
        return (_V["PC_MIN" if rule == "min" else "PC_MAX"], terminal, numbers, key, float(arg))
    if rule == "max_length" and text:
        return (_V["PC_MAX_LENGTH"], terminal, numbers, key, int(arg))
    return (_V["PC_DEFER"], terminal, numbers, key, None)


def _always_judge() -> tuple[Any, ...]:
    """A check that sends every activity of its action to Python: the action field is always there."""
    return (
        _V["PC_DEFER"],
        _V["PT_STRING"],
        (pb.Activity.DESCRIPTOR.fields_by_name["action"].number,),
        None,
        None,
    )


def _action_checks(rules: ActionRules) -> list[tuple[Any, ...]] | None:
    """The program's checks for one action; None when some path cannot be followed on the wire."""
    checks: list[tuple[Any, ...]] = []
    for kind, paths in (("PC_REQUIRED", rules.required), ("PC_FORBIDDEN", rules.forbidden)):
        for path, _ in paths:
            where = wire_path(path)
            if where is None:
                return None
            numbers, terminal, key = where
            checks.append((_V[kind], terminal, numbers, key, None))
    if rules.target_types is not None:
        where = wire_path("target.type")
        assert where is not None
        values = tuple(t.encode() for t in sorted(rules.target_types))
        checks.append((_V["PC_TARGET_TYPES"], where[1], where[0], None, values))
    for check in rules.checks:
        where = wire_path(check.path)
        if where is None:
            return None
        checks.append(_value_check(check.rule.split(":", 1)[0], where, check.arg))
    return checks


def compile_program(plan: Plan) -> Any | None:
    """The program of `plan` for `core.fastpath.plan_screen`; None without the compiled module."""
    if not fastpath.available:
        return None
    actions: list[tuple[bytes, list[tuple[Any, ...]]]] = []
    for name, rules in plan.actions.items():
        checks = _action_checks(rules)
        actions.append((name.encode(), checks if checks is not None else [_always_judge()]))
    return fastpath.plan_compile(plan.unknown_actions == "allow", actions)
