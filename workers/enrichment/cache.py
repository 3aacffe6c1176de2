"""A bounded map whose entries expire, cheap enough to read once per distinct value of every batch.

Enrichment reads its caches for each distinct target and identity of a batch: hundreds of reads per
batch of 500 activities. `cachetools.TTLCache` costs about 1 to 4 microseconds per read (a Python-level
`__getitem__`, a timer context and an expiry sweep); this costs one `OrderedDict` lookup and a
comparison, with the time read once per batch by the caller. Entries are dropped in the order they were
set (not read): expiry bounds their age anyway.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Generic, TypeVar

from workers.enrichment import lookups

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class ExpiringCache(Generic[K, V]):
    def __init__(self, max_entries: int, ttl_s: float) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be greater than zero, got {max_entries}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float, default: D) -> V | D:
        """The value of an entry set less than ttl_s before `now`, else `default`."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return default
        return entry[1]

    def lookup(
        self, keys: list[Any], columns: tuple[int, ...], prefix: str | None, now: float, missing: object
    ) -> tuple[list[Any], dict[Any, list[int]]]:
        """`workers.enrichment.lookups.lookup` over this cache: the value per item of `keys` (`missing` where
        absent or expired), and the absent keys with their items' positions."""
        return lookups.lookup(self._entries, keys, columns, prefix, now, missing)

    def set(self, key: K, value: V, now: float) -> None:
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)
        entries[key] = (now + self.ttl_s, value)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
