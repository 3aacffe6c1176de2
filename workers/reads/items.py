"""Tenant-wide lists of the recommendation strategies, kept in memory a while: what the people who
viewed (bought) a target viewed (bought), what trends, and how popular each target is (for `for_you`).

These lists are the same for every person of a tenant, change slowly (90 days of co-occurrence, a
trend over hours) and cost a scan of the tenant's activities to compute, so each is computed once and
served until it is `ttl_s` old (`trending_ttl_s` for trending); after that, the next call is answered
from the old list while one new computation runs behind (one at a time for the whole collector, on
one of the engine's threads at niceness `REFRESH_NICENESS`: refreshing takes the CPU the calls and
the ingest leave). The stale co-occurrence lists of a tenant are computed again together, up to
REFRESH_BATCH per query. A list is computed for
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
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from workers.priority import niced
from workers.reads.people import rows
from workers.reads.profiles import Affinity
from workers.reads.recommendations import (
    MAX_LIMIT,
    Item,
    popularity_sql,
    query_items,
    query_together,
    together_many_sql,
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
REFRESH_BATCH = 100
"""Stale co-occurrence lists of one tenant and action computed again in one query: at 10M activities,
on one thread, one list took 0.4 s to compute alone, 50 of them 1.0 s together (the tenant's
activities of that action are scanned twice per query, whatever the number of targets)."""
REFRESH_NICENESS = 19
"""A list computed again behind an answer runs on one of the engine's threads at this niceness: the
answers do not wait for it, so it takes the CPU that the calls and the ingest leave."""


@dataclass
class ItemStats:
    hits: int = 0
    computed: int = 0
    refreshed: int = 0
    refresh_errors: int = 0
    refresh_queries: int = 0
    """Queries the refreshes ran: the stale also_viewed and also_bought lists of a tenant are computed
    again together, up to REFRESH_BATCH in one query."""
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


def popularity(
    engine: QueryEngine, tenant: str, max_targets: int, tune: Callable[[str], str] = str
) -> Popularity:
    found = rows(engine, tune(popularity_sql(tenant, max_targets + 1)))
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
        self._stale_seeds: dict[tuple[str, str], set[tuple[str, str]]] = {}
        """Per (tenant, action): the targets whose co-occurrence list waits to be computed again."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def shutdown(self, _left: float = 0.0) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def together(
        self, tenant: str, action: str, target: tuple[str, str], run: Callable[[Callable[[], Any]], Any]
    ) -> list[Item]:
        def compute(tune: Callable[[str], str]) -> list[Item]:
            return query_items(self.engine, tune(together_sql(tenant, action, target, "1", FETCHED)))

        return await self._get(
            ("together", tenant, action, *target),
            self.ttl_s,
            compute,
            run,
            lambda: self._queue_seed(tenant, action, target),
        )

    async def trending(self, tenant: str, run: Callable[[Callable[[], Any]], Any]) -> list[Item]:
        def compute(tune: Callable[[str], str]) -> list[Item]:
            return query_items(self.engine, tune(trending_sql(tenant, "1", FETCHED)))

        return await self._get(("trending", tenant), self.trending_ttl_s, compute, run)

    async def popularity(self, tenant: str, run: Callable[[Callable[[], Any]], Any]) -> Popularity:
        def compute(tune: Callable[[str], str]) -> Popularity:
            return popularity(self.engine, tenant, self.max_targets, tune)

        return await self._get(("popularity", tenant), self.ttl_s, compute, run)

    async def _get(
        self,
        key: tuple[str, ...],
        ttl_s: float,
        compute: Callable[[Callable[[str], str]], T],
        run: Callable[[Callable[[], Any]], Any],
        queue: Callable[[], None] | None = None,
    ) -> T:
        """The list of `key`: computed by `run` at the first ask (the caller waits, at the request
        path's priority), then from memory; once `ttl_s` old, computed again behind the answer (by
        `queue`, when given, with others of its kind)."""
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            if now - entry[0] > ttl_s and key not in self._refreshing:
                self._refreshing.add(key)
                if queue is not None:
                    queue()
                else:
                    self._spawn(self._refresh(key, compute))
            return entry[1]  # type: ignore[no-any-return]
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await run(lambda: compute(str))
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

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _queue_seed(self, tenant: str, action: str, target: tuple[str, str]) -> None:
        group = (tenant, action)
        waiting = self._stale_seeds.get(group)
        if waiting is None:
            waiting = self._stale_seeds[group] = set()
            self._spawn(self._refresh_together(tenant, action))
        waiting.add(target)

    async def _refresh_together(self, tenant: str, action: str) -> None:
        """The queued co-occurrence lists of (tenant, action) computed again, REFRESH_BATCH per query;
        the targets queued while a query waits for the slot go with it."""
        group = (tenant, action)
        waiting = self._stale_seeds[group]
        try:
            while waiting:
                async with self._refresh_slot:
                    seeds = sorted(waiting)[:REFRESH_BATCH]
                    waiting.difference_update(seeds)
                    sql = self._background(together_many_sql(tenant, action, seeds, FETCHED))
                    try:
                        found = await asyncio.to_thread(query_together, self.engine, sql, seeds)
                        for seed, items in found.items():
                            self._set(("together", tenant, action, *seed), items)
                            self.stats.refreshed += 1
                    except Exception as error:
                        self.stats.refresh_errors += 1
                        log.warning(
                            "read model: refreshing recommendation lists failed",
                            extra={"error": str(error), "lists": len(seeds)},
                        )
                    finally:
                        self.stats.refresh_queries += 1
                        for seed in seeds:
                            self._refreshing.discard(("together", tenant, action, *seed))
        finally:
            for seed in waiting:
                self._refreshing.discard(("together", tenant, action, *seed))
            del self._stale_seeds[group]

    async def _refresh(self, key: tuple[str, ...], compute: Callable[[Callable[[str], str]], Any]) -> None:
        try:
            async with self._refresh_slot:
                try:
                    value = await asyncio.to_thread(compute, self._background)
                finally:
                    self.stats.refresh_queries += 1
            self._set(key, value)
            self.stats.refreshed += 1
        except Exception as error:
            self.stats.refresh_errors += 1
            log.warning("read model: refreshing a recommendation list failed", extra={"error": str(error)})
        finally:
            self._refreshing.discard(key)

    @staticmethod
    def _background(sql: str) -> str:
        return niced(sql, REFRESH_NICENESS, max_threads=1)

    def _set(self, key: tuple[str, ...], value: Any) -> None:
        self._entries[key] = (time.monotonic(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        self.stats.entries = len(self._entries)
