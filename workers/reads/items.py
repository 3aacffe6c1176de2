"""Tenant-wide lists of the recommendation strategies, kept in memory a while: what the people who
viewed (bought) a target viewed (bought), what trends, and how popular each target is (for `for_you`).

These lists are the same for every person of a tenant, change slowly (90 days of co-occurrence, a
trend over hours) and cost a scan of the tenant's activities to compute, so each is computed once and
served until it is `ttl_s` old (`trending_ttl_s` for trending); after that, the next call is answered
from the old list while one new computation runs behind (one at a time for the whole collector, so
that refreshing never takes more than one of the store's threads). A list is computed for
FETCHED items, more than any call asks for, so that a person's purchases and the targets a call
excludes are left out in memory; when that leaves fewer than asked and there were more to take, the
call asks ClickHouse as before. At most `max_entries` lists are kept, the least recently used dropped
first; `for_you`'s popularity is kept for tenants with at most `max_targets` targets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from workers.reads.people import rows
from workers.reads.profiles import Affinity
from workers.reads.recommendations import (
    MAX_LIMIT,
    Item,
    popularity_sql,
    query_items,
    together_sql,
    trending_sql,
)
from workers.storage.contract import QueryEngine

log = logging.getLogger(__name__)

T = TypeVar("T")

FETCHED = 2 * MAX_LIMIT
DEFAULT_TTL_S = 60.0
DEFAULT_TRENDING_TTL_S = 5.0
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_TARGETS = 200_000


@dataclass
class ItemStats:
    hits: int = 0
    computed: int = 0
    refreshed: int = 0
    refresh_errors: int = 0
    asked_store: int = 0
    """Calls the lists could not answer (too much left out), asked of ClickHouse."""
    entries: int = 0


@dataclass(frozen=True)
class Popular:
    target_type: str
    target_id: str
    category: str
    brand: str
    people: int


@dataclass
class Popularity:
    """A tenant's targets over the last CO_DAYS days, by category and by brand; `complete` unless the
    tenant has more than max_targets of them; `mixed`: targets seen under several categories or brands
    (their score depends on the rows ClickHouse matches: asked of it)."""

    by_category: dict[str, list[Popular]] = field(default_factory=dict)
    by_brand: dict[str, list[Popular]] = field(default_factory=dict)
    mixed: set[tuple[str, str]] = field(default_factory=set)
    complete: bool = True


def popularity(engine: QueryEngine, tenant: str, max_targets: int) -> Popularity:
    found = rows(engine, popularity_sql(tenant, max_targets + 1))
    out = Popularity(complete=len(found) <= max_targets)
    seen: set[tuple[str, str]] = set()
    for r in found[:max_targets]:
        item = Popular(
            str(r["target_type"]),
            str(r["target_id"]),
            str(r["category"]),
            str(r["brand"]),
            int(str(r["people"])),
        )
        key = (item.target_type, item.target_id)
        if key in seen:
            out.mixed.add(key)
        seen.add(key)
        if item.category:
            out.by_category.setdefault(item.category, []).append(item)
        if item.brand:
            out.by_brand.setdefault(item.brand, []).append(item)
    return out


def pick(
    items: list[Item], leave_out: set[tuple[str, str]], excluded: Iterable[str], limit: int
) -> list[Item] | None:
    """The first `limit` of `items` not left out; None when that is fewer than `limit` and the list
    was cut at FETCHED (ClickHouse would have found more)."""
    dropped = set(excluded)
    kept = [i for i in items if i.target_id not in dropped and (i.target_type, i.target_id) not in leave_out]
    if len(kept) < limit and len(items) >= FETCHED:
        return None
    return kept[:limit]


def for_you(
    table: Popularity,
    affinities: list[Affinity],
    leave_out: set[tuple[str, str]],
    excluded: Iterable[str],
    limit: int,
) -> list[Item] | None:
    """`for_you` from the popularity table: people times the person's affinity to the target's category
    plus that to its brand; None when the table cannot tell (incomplete, or a target of several
    categories or brands among the candidates)."""
    if not table.complete:
        return None
    category = {a.value: a.score for a in affinities if a.kind == "category"}
    brand = {a.value: a.score for a in affinities if a.kind == "brand"}
    dropped = set(excluded)
    candidates: dict[tuple[str, str], Popular] = {}
    for index, chosen in ((table.by_category, category), (table.by_brand, brand)):
        for value in chosen:
            for item in index.get(value, ()):
                candidates[(item.target_type, item.target_id)] = item
    scored = []
    for key, item in candidates.items():
        if key in leave_out or item.target_id in dropped:
            continue
        if key in table.mixed:
            return None
        score = item.people * (category.get(item.category, 0.0) + brand.get(item.brand, 0.0))
        scored.append(Item(item.target_type, item.target_id, score))
    scored.sort(key=lambda i: (-i.score, i.target_type, i.target_id))
    return scored[:limit]


class ItemLists:
    def __init__(
        self,
        engine: QueryEngine,
        ttl_s: float = DEFAULT_TTL_S,
        trending_ttl_s: float = DEFAULT_TRENDING_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_targets: int = DEFAULT_MAX_TARGETS,
    ) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.trending_ttl_s = trending_ttl_s
        self.max_entries = max_entries
        self.max_targets = max_targets
        self.stats = ItemStats()
        self._entries: OrderedDict[tuple[str, ...], tuple[float, Any]] = OrderedDict()
        self._loading: dict[tuple[str, ...], asyncio.Future[Any]] = {}
        self._refreshing: set[tuple[str, ...]] = set()
        self._refresh_slot = asyncio.Semaphore(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def shutdown(self, _left: float = 0.0) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def together(
        self, tenant: str, action: str, target: tuple[str, str], run: Callable[[Callable[[], Any]], Any]
    ) -> list[Item]:
        def compute() -> list[Item]:
            return query_items(self.engine, together_sql(tenant, action, target, "1", FETCHED))

        return await self._get(("together", tenant, action, *target), self.ttl_s, compute, run)

    async def trending(self, tenant: str, run: Callable[[Callable[[], Any]], Any]) -> list[Item]:
        def compute() -> list[Item]:
            return query_items(self.engine, trending_sql(tenant, "1", FETCHED))

        return await self._get(("trending", tenant), self.trending_ttl_s, compute, run)

    async def popularity(self, tenant: str, run: Callable[[Callable[[], Any]], Any]) -> Popularity:
        def compute() -> Popularity:
            return popularity(self.engine, tenant, self.max_targets)

        return await self._get(("popularity", tenant), self.ttl_s, compute, run)

    async def _get(
        self,
        key: tuple[str, ...],
        ttl_s: float,
        compute: Callable[[], T],
        run: Callable[[Callable[[], Any]], Any],
    ) -> T:
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            if now - entry[0] > ttl_s and key not in self._refreshing:
                self._refreshing.add(key)
                task = asyncio.create_task(self._refresh(key, compute))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return entry[1]  # type: ignore[no-any-return]
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await run(compute)
            self.stats.computed += 1
            self._set(key, value)
            future.set_result(value)
            return value  # type: ignore[no-any-return]
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: the waiters, if any, get it too
            raise
        finally:
            del self._loading[key]

    async def _refresh(self, key: tuple[str, ...], compute: Callable[[], Any]) -> None:
        try:
            async with self._refresh_slot:
                value = await asyncio.to_thread(compute)
            self._set(key, value)
            self.stats.refreshed += 1
        except Exception as error:
            self.stats.refresh_errors += 1
            log.warning("read model: refreshing a recommendation list failed", extra={"error": str(error)})
        finally:
            self._refreshing.discard(key)

    def _set(self, key: tuple[str, ...], value: Any) -> None:
        self._entries[key] = (time.monotonic(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        self.stats.entries = len(self._entries)
