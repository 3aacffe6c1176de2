"""Enrichment's per-activity loops: reading a table for every activity, the identity walk, and joining
each activity's fields.

Enrichment decides once per distinct value of a batch (`workers.enrichment.enricher`); these three functions
apply the decisions to each activity. They are the reference implementations: the optional C module
`workers.enrichment._lookups` (built with the package when a C compiler is present) does the same about ten
times faster, and `tests/workers/enrichment/test_lookups.py` checks both agree on random batches. `lookup`,
`stitch` and `join` below are the compiled ones when available, unless `ACTIVITY_PURE_PYTHON=1`
(`core.fastpath.pure_python`, read once at import) says to run as if the module were not built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from core.fastpath import pure_python

_lookups: Any = None
if not pure_python:
    try:
        from workers.enrichment import _lookups  # type: ignore[attr-defined,no-redef]
    except ImportError:  # built without a C compiler
        _lookups = None

compiled = _lookups is not None


def _key(item: Sequence[str], columns: tuple[int, ...], prefix: str | None) -> Any:
    if len(columns) == 1 and prefix is None:
        return item[columns[0]]
    values = tuple(item[c] for c in columns)
    return values if prefix is None else (prefix, *values)


def lookup_py(
    table: Mapping[Any, Any],
    keys: list[Any],
    columns: tuple[int, ...],
    prefix: str | None,
    now: float | None,
    missing: object,
) -> tuple[list[Any], dict[Any, list[int]]]:
    """Read `table` for each item of `keys` (tuples of strings).

    An item's key is its column for a single column without `prefix`, else the tuple of `prefix` (when
    given) and its columns. With `now`, the table's values are (expires, value) pairs and an entry that
    expired (expires <= now) counts as absent. Returns the value per item (`missing` where absent) and
    the absent keys, each with the positions of the items that carry it, in order."""
    values: list[Any] = []
    misses: dict[Any, list[int]] = {}
    for position, item in enumerate(keys):
        key = _key(item, columns, prefix)
        entry = table.get(key, missing)
        if entry is not missing and now is not None:
            expires, value = entry
            entry = value if expires > now else missing
        if entry is missing:
            misses.setdefault(key, []).append(position)
        values.append(entry)
    return values, misses


def stitch_py(
    keys: list[Any],
    anonymous: dict[str, str],
    sessions: dict[str, str],
    anonymous_kind: str,
    session_kind: str,
) -> tuple[list[str], list[tuple[str, str, str]], int, int]:
    """Walk enrichment keys (core.fastpath.EnrichmentKeys) in order and resolve each activity's
    user: its own user id; else the user its anonymous id, then its session id, is linked to in
    `anonymous` / `sessions` (the links known before the batch), as updated by the activities before
    it: an activity with a user id links its anonymous and session ids to that user.

    Returns the resolved user per activity ('' when none), the links the walk set or changed as
    (kind, id, user) in order, and how many activities without a user id but with an anonymous or
    session id resolved (enriched) or did not (unknown). The two dicts are updated in place."""
    resolved: list[str] = []
    changes: list[tuple[str, str, str]] = []
    enriched = unknown = 0
    for k in keys:
        user, anon, session = k[2], k[3], k[4]
        if user:
            resolved.append(user)
            if anon and anonymous.get(anon) != user:
                anonymous[anon] = user
                changes.append((anonymous_kind, anon, user))
            if session and sessions.get(session) != user:
                sessions[session] = user
                changes.append((session_kind, session, user))
            continue
        linked = anonymous.get(anon, "") if anon else ""
        if not linked and session:
            linked = sessions.get(session, "")
        if anon or session:
            if linked:
                enriched += 1
            else:
                unknown += 1
        resolved.append(linked)
    return resolved, changes, enriched, unknown


def join_py(columns: tuple[list[Any], ...], tables: tuple[Mapping[Any, bytes] | None, ...]) -> list[bytes]:
    """Per position, the concatenation of the columns' values in order; a column with a table gives
    `table[value]`. Anything that is not bytes (None, a missing marker, an absent table entry) adds
    nothing."""
    if len(columns) != len(tables) or not columns:
        raise ValueError("join: 1 to 8 columns, and one table (or None) per column")
    if len({len(c) for c in columns}) > 1:
        raise ValueError("join: the columns differ in length")
    out: list[bytes] = []
    for row in zip(*columns, strict=True):
        parts = []
        for value, table in zip(row, tables, strict=True):
            if table is not None:
                value = table.get(value)
            if isinstance(value, bytes):
                parts.append(value)
        out.append(b"".join(parts))
    return out


lookup: Callable[
    [Mapping[Any, Any], list[Any], tuple[int, ...], str | None, float | None, object],
    tuple[list[Any], dict[Any, list[int]]],
] = lookup_py if _lookups is None else _lookups.lookup
stitch: Callable[
    [list[Any], dict[str, str], dict[str, str], str, str],
    tuple[list[str], list[tuple[str, str, str]], int, int],
] = stitch_py if _lookups is None else _lookups.stitch
join: Callable[[tuple[list[Any], ...], tuple[Mapping[Any, bytes] | None, ...]], list[bytes]] = (
    join_py if _lookups is None else _lookups.join
)
