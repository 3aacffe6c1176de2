"""One stored activity as the read model holds it (`Record`), and the SQL that reads records.

A record keeps what the profile, the person-based strategies and the computed segments read, and
nothing else: the columns of `activities_by_person` less the ids of the person (the person's state
holds those once). Strings that repeat across activities (action, target type, currency, brand, the
category path) are interned, so that a million records hold one copy of each.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import NamedTuple


class Record(NamedTuple):
    occurred_ms: int
    received_ms: int
    id: str
    action: str
    target_type: str
    target_id: str
    source_id: str
    quantity: int | None
    price: int | None
    currency: str
    is_bot: bool
    category_path: tuple[str, ...]
    brand: str


COLUMNS = (
    "toUnixTimestamp64Milli(occurred_at) AS occurred_ms, toUnixTimestamp64Milli(received_at) AS received_ms, "
    "toString(id) AS id, toString(action) AS action, toString(target_type) AS target_type, target_id, "
    "source_id, quantity, price, toString(currency) AS currency, is_bot, "
    "arrayMap(c -> toString(c), target_category_path) AS category_path, toString(target_brand) AS brand"
)
"""SQL: the columns of `activities_by_person` a `Record` is read from."""

ROW_COLUMNS = f"tenant_id, person_key, user_id, anonymous_id, session_id, {COLUMNS}"
"""SQL: a record with the row's tenant and ids (the read model's tail reads those)."""

_PATHS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _path(values: object) -> tuple[str, ...]:
    path = tuple(sys.intern(str(v)) for v in values) if isinstance(values, list) else ()
    held = _PATHS.get(path)
    if held is None:
        if len(_PATHS) < 100_000:
            _PATHS[path] = path
        held = path
    return held


def _optional(value: object) -> int | None:
    return None if value is None else int(str(value))


def record(row: Mapping[str, object]) -> Record:
    """The record of one JSONEachRow row of `COLUMNS` (64-bit integers arrive as strings)."""
    return Record(
        int(str(row["occurred_ms"])),
        int(str(row["received_ms"])),
        str(row["id"]),
        sys.intern(str(row["action"])),
        sys.intern(str(row["target_type"])),
        str(row["target_id"]),
        str(row["source_id"]),
        _optional(row["quantity"]),
        _optional(row["price"]),
        sys.intern(str(row["currency"])),
        row["is_bot"] in (True, 1, "1", "true"),
        _path(row["category_path"]),
        sys.intern(str(row["brand"])),
    )


BYTES_PER_RECORD = 400
"""What one held record costs, about (measured with tracemalloc over 100,000 records of a generated
shop: the tuple, its id, target id and source id; the interned strings are shared)."""
