"""The collector's one cache kind: a bounded map whose entries expire, cheap enough to read once per
distinct value of every batch.

Enrichment reads its caches (targets, identity links, parsed user agents) for each distinct value of a
batch: hundreds of reads per batch of 500 activities; the doors read the API-key cache once per call.
`cachetools.TTLCache` costs about 1 to 4 microseconds per read (a Python-level `__getitem__`, a timer
context and an expiry sweep); this costs one `OrderedDict` lookup and a comparison, with the time read
once per batch by the caller. Entries are dropped in the order they were set (not read): expiry bounds
their age anyway; a cache whose entries never go stale has `ttl_s=math.inf`. The compiled
`workers.enrichment.lookups.lookup` reads `entries` directly, many keys at once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

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

    @property
    def entries(self) -> OrderedDict[K, tuple[float, V]]:
        """The entries, key -> (expiry, value), oldest set first: for readers of many keys at once."""
        return self._entries

    def peek(self, key: K) -> tuple[float, V] | None:
        """(expiry, value) of an entry whether or not it has expired; None when there is none. For a
        caller that may fall back on a stale value when its source does not answer."""
        return self._entries.get(key)

    def set(self, key: K, value: V, now: float) -> None:
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)
        entries[key] = (now + self.ttl_s, value)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
