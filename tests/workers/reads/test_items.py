"""The tenant-wide recommendation lists (`workers.reads.items`) on the real embedded engine: the
co-occurrence lists of many targets computed in one query equal each computed alone and a count in
Python, and the lists gone stale are computed again together, behind the answers."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from helpers import items, make_activity, wait_for

from core.proto.activity.v1 import activity_pb2 as pb
from workers.reads.items import ItemLists
from workers.reads.recommendations import Item, query_items, query_together, together_many_sql, together_sql
from workers.rows import encode_rows, envelope
from workers.storage.clickhouse import ClickHouseStore

pytestmark = pytest.mark.timeout(60)

TENANT = "shop"


def viewed(person: str, target: str, ago_s: int = 3600) -> pb.Activity:
    activity = make_activity(0, action="view", target=pb.Target(type="product", id=target))
    activity.user.Clear()
    activity.user.user_id = person
    activity.occurred_at.FromSeconds(int(time.time()) - ago_s)
    return activity


def store_all(store: ClickHouseStore, activities: list[pb.Activity]) -> None:
    rows = encode_rows(items(activities), TENANT, time.time_ns(), None)
    store.insert_rows(envelope([rows]), len(activities))


def counted(views: list[tuple[str, str]], seed: str) -> list[Item]:
    """also_viewed of `seed` counted in Python: per other target, the people who viewed both."""
    people: dict[str, set[str]] = defaultdict(set)
    for person, target in views:
        people[target].add(person)
    seen = people.get(seed, set())
    scores = [
        Item("product", target, float(len(seen & who))) for target, who in people.items() if target != seed
    ]
    scores = [item for item in scores if item.score > 0]
    return sorted(scores, key=lambda i: (-i.score, i.target_type, i.target_id))


SHOP = [
    *[(f"p{n}", "a") for n in range(6)],
    *[(f"p{n}", "b") for n in range(4)],
    *[(f"p{n}", "c") for n in range(1, 3)],
    ("p5", "d"),
    ("p9", "d"),
    ("p9", "e"),
    ("p8", "f"),
]


def test_the_lists_of_many_targets_computed_together_equal_each_computed_alone(
    store: ClickHouseStore,
) -> None:
    store_all(store, [viewed(person, target) for person, target in SHOP])
    seeds = [("product", t) for t in ("a", "b", "c", "d", "f", "unknown")]
    together = query_together(store, together_many_sql(TENANT, "view", seeds, 200), seeds)
    assert set(together) == set(seeds)
    for seed in seeds:
        alone = query_items(store, together_sql(TENANT, "view", seed, "1", 200))
        assert together[seed] == alone == counted(SHOP, seed[1]), seed
    assert together[("product", "a")][:2] == [Item("product", "b", 4.0), Item("product", "c", 2.0)]
    assert together[("product", "f")] == [] and together[("product", "unknown")] == []


async def test_stale_lists_are_computed_again_together_behind_the_answers(store: ClickHouseStore) -> None:
    store_all(store, [viewed(person, target) for person, target in SHOP])
    # Every list is stale as soon as it is computed: the next ask answers it and queues it.
    lists = ItemLists(store, ttl_s=0.0)

    async def run(compute: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(compute)

    try:
        first = {t: await lists.together(TENANT, "view", ("product", t), run) for t in ("a", "b", "d")}
        assert lists.stats.computed == 3 and lists.stats.refresh_queries == 0
        assert first["a"] == counted(SHOP, "a")
        # New views: d is now seen with b by two people.
        more = [("p1", "d"), ("p2", "d")]
        store_all(store, [viewed(person, target) for person, target in more])
        answered = {t: await lists.together(TENANT, "view", ("product", t), run) for t in ("a", "b", "d")}
        assert answered == first  # the old lists, while the new ones are computed behind
        await wait_for(lambda: lists.stats.refreshed == 3, lambda: f"3 lists refreshed; {lists.stats}")
        assert lists.stats.refresh_queries == 1 and lists.stats.refresh_errors == 0
        now = SHOP + more
        lists.ttl_s = 3600.0  # fresh from now on: nothing more is computed behind the asks below
        for target in ("a", "b", "d"):
            # Answered from memory, as computed behind the earlier answers.
            assert await lists.together(TENANT, "view", ("product", target), run) == counted(now, target)
        assert lists.stats.computed == 3 and lists.stats.refresh_queries == 1
    finally:
        await lists.shutdown()
