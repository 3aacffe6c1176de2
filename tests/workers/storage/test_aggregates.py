"""The aggregates since schema version 11: rollups of the deduplicated rows, refreshed per touched day, with
the days not refreshed read from `activities` when read. Every figure is held to a computation in plain
Python over the generated shop: with bots among the visitors (a key of every aggregate, left out by the
reports unless asked), with activities resent before and after a refresh, and after an erasure's rebuild.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import time
from collections import defaultdict
from typing import Any

import pytest
import shop
from helpers import wait_for

from collector.cli.report import Request, coverage_sql, overview_aggregates_sql, top_targets_sql
from workers.storage.analytics_schema import (
    AGGREGATE,
    AGGREGATES,
    aggregate_rebuild_statements,
    quote,
    refresh_statements,
)
from workers.storage.clickhouse import ClickHouseStore
from workers.storage.refresher import AggregateRefresher, refresh_aggregates
from workers.storage.schema import SINGLE_NODE
from workers.storage.session_rollups import SESSION_FIGURES

pytestmark = pytest.mark.timeout(120)

NS = 1_000_000_000
FIRST, LAST = shop.FIRST_DAY, shop.FIRST_DAY + dt.timedelta(days=shop.DAYS - 1)


def rows(store: ClickHouseStore, sql: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in store.query(sql, "JSONEachRow").splitlines()]


def with_bots(events: list[shop.Event]) -> list[shop.Event]:
    """Every fifth visitor's activities flagged as a crawler's."""
    visitors = sorted({e.anonymous_id for e in events})
    bots = set(visitors[::5])
    return [dataclasses.replace(e, is_bot=e.anonymous_id in bots) for e in events]


def refresh(store: ClickHouseStore) -> int:
    return refresh_aggregates(store.command, store.database, margin_s=0).days


def dirty_days(store: ClickHouseStore) -> int:
    sql = (
        "SELECT count() FROM (SELECT DISTINCT tenant_id, day FROM aggregate_touches "
        "WHERE inserted_at > (SELECT max(refreshed_to) FROM aggregate_refreshes))"
    )
    return int(store.query(sql, "TabSeparated"))


# -- the plain-Python answers ----------------------------------------------------------------------


def hourly_python(events: list[shop.Event]) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    """(tenant, hour, action, is_bot) -> (activities, items, revenue), copies counted once."""
    out: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
    for e in shop.distinct(events):
        hour = dt.datetime.fromtimestamp(e.occurred_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:00:00")
        figures = out[(e.tenant, hour, e.action, e.is_bot)]
        figures[0] += 1
        if e.has_amount:
            figures[1] += e.items
            figures[2] += e.revenue
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def hourly_stored(store: ClickHouseStore) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    sql = (
        "SELECT tenant_id, toString(hour) AS h, action, is_bot, sum(activities) AS n, sum(items) AS i, "
        "sum(revenue) AS r FROM activity_stats_hourly GROUP BY tenant_id, h, action, is_bot"
    )
    return {
        (r["tenant_id"], r["h"], r["action"], bool(r["is_bot"])): (int(r["n"]), int(r["i"]), int(r["r"]))
        for r in rows(store, sql)
    }


def overview_python(
    events: list[shop.Event], include_bots: bool
) -> dict[str, tuple[int, int, int, dict[str, int]]]:
    """Per day of tenant `shop`: (activities, users, purchases, revenue per currency)."""
    out: dict[str, tuple[int, int, dict[str, int]]] = {}
    users: dict[str, set[str]] = defaultdict(set)
    for e in shop.distinct(events):
        if e.tenant != shop.TENANT or (e.is_bot and not include_bots):
            continue
        day = shop.day_of(e.occurred_ms).isoformat()
        users[day].add(e.user_key)
        n, purchases, revenue = out.get(day, (0, 0, {}))
        if e.action == "purchase":
            purchases += 1
            if e.has_amount and e.revenue:
                revenue = {**revenue, e.currency: revenue.get(e.currency, 0) + e.revenue}
        out[day] = (n + 1, purchases, revenue)
    # Distinct users come from a sketch, exact for sets this small.
    return {day: (n, len(users[day]), p, rev) for day, (n, p, rev) in out.items()}


def overview_stored(
    store: ClickHouseStore, include_bots: bool
) -> dict[str, tuple[int, int, int, dict[str, int]]]:
    r = Request("overview", FIRST, LAST, tenant=shop.TENANT, include_bots=include_bots)
    sql = overview_aggregates_sql(r)
    return {
        row["day"]: (
            int(row["activities"]),
            int(row["users"]),
            int(row["purchases"]),
            {k: int(v) for k, v in row["revenue"].items()},
        )
        for row in rows(store, sql)
        if int(row["activities"])
    }


def top_python(
    events: list[shop.Event], action: str, include_bots: bool
) -> dict[tuple[str, str], tuple[int, int]]:
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for e in shop.distinct(events):
        if e.tenant != shop.TENANT or e.action != action or (e.is_bot and not include_bots):
            continue
        n, items = out.get(e.target, (0, 0))
        out[e.target] = (n + 1, items + (e.items if e.has_amount else 0))
    return out


def top_stored(
    store: ClickHouseStore, action: str, include_bots: bool, current: bool = False, limit: int = 10_000
) -> dict[tuple[str, str], tuple[int, int]]:
    """`current`: as the report asks once the rollups hold every day (two passes over the rollup)."""
    r = Request(
        "top-targets",
        FIRST,
        LAST,
        tenant=shop.TENANT,
        action=action,
        limit=limit,
        include_bots=include_bots,
        rollups_current=current,
    )
    return {
        (row["target_type"], row["target_id"]): (int(row["activities"]), int(row["items"]))
        for row in rows(store, top_targets_sql(r))
    }


def sessions_python(events: list[shop.Event]) -> dict[str, tuple[int, int, int, int, int, dict[str, int]]]:
    """Per day of tenant `shop` (of the session's first activity, the session whole): sessions, users,
    activities, bounces, converted sessions, revenue; humans only."""
    humans = [e for e in shop.distinct(events) if e.tenant == shop.TENANT and not e.is_bot]
    by_day: dict[str, list[shop.Session]] = defaultdict(list)
    for s in shop.sessions(humans):
        by_day[shop.day_of(s.start).isoformat()].append(s)
    out = {}
    for day, sessions in by_day.items():
        revenue: dict[str, int] = defaultdict(int)
        for s in sessions:
            for currency, amount in s.revenue.items():
                revenue[currency] += amount
        out[day] = (
            len(sessions),
            len({s.events[-1].user_key for s in sessions}),
            sum(len(s.events) for s in sessions),
            sum(len(s.events) == 1 for s in sessions),
            sum(s.purchases > 0 for s in sessions),
            {c: a for c, a in revenue.items() if a},
        )
    return out


def sessions_stored(
    store: ClickHouseStore, table: str = "session_figures_daily"
) -> dict[str, tuple[int, int, int, int, int, dict[str, int]]]:
    sql = (
        f"SELECT toString(day) AS day, sessions, users, activities, bounces, converted, revenue FROM {table} "
        f"WHERE tenant_id = {quote(shop.TENANT)} AND sessions > 0"
    )
    return {
        row["day"]: (
            int(row["sessions"]),
            int(row["users"]),
            int(row["activities"]),
            int(row["bounces"]),
            int(row["converted"]),
            {k: int(v) for k, v in row["revenue"].items() if int(v)},
        )
        for row in rows(store, sql)
    }


def assert_reports(store: ClickHouseStore, events: list[shop.Event]) -> None:
    assert hourly_stored(store) == hourly_python(events)
    assert sessions_stored(store) == sessions_python(events)
    for include_bots in (False, True):
        assert overview_stored(store, include_bots) == overview_python(events, include_bots)
        for action in ("purchase", "click"):
            expected = top_python(events, action, include_bots)
            assert top_stored(store, action, include_bots) == expected
            if dirty_days(store) == 0:
                assert top_stored(store, action, include_bots, current=True) == expected
                # The top five: the first pass ranks, the second takes their figures.
                ranked = sorted(expected.items(), key=lambda t: (-t[1][0], t[0]))[:5]
                assert top_stored(store, action, include_bots, current=True, limit=5) == dict(ranked)


# -- tests -----------------------------------------------------------------------------------------


def test_bots_are_a_key_and_the_aggregate_reports_leave_them_out_unless_asked(store: ClickHouseStore) -> None:
    events = with_bots(shop.generate(seed=31, visitors=25).events)
    assert any(e.is_bot for e in events) and not all(e.is_bot for e in events)
    shop.insert(store, events)
    assert_reports(store, events)  # every day read from `activities`, not refreshed yet
    assert refresh(store) > 0 and dirty_days(store) == 0
    assert_reports(store, events)  # every day read from the rollups
    # The bots make a difference, so leaving them out is seen.
    assert overview_python(events, False) != overview_python(events, True)


def test_a_range_of_bots_only_is_an_empty_range_unless_bots_are_asked_for(store: ClickHouseStore) -> None:
    events = [dataclasses.replace(e, is_bot=True) for e in shop.generate(seed=32, visitors=3).events]
    shop.insert(store, events)
    for include_bots, expected in ((False, 0), (True, 1)):
        r = Request("overview", FIRST, LAST, tenant=shop.TENANT, include_bots=include_bots)
        in_range = int(store.query(coverage_sql(r), "TabSeparated").split(b"\t")[0])
        assert (in_range > 0) == bool(expected)


def test_resends_before_and_after_a_refresh_are_counted_once(store: ClickHouseStore) -> None:
    # Merges stopped: the raw table keeps every copy, as it does until a background merge.
    store.command("SYSTEM STOP MERGES activities")
    events = with_bots(shop.generate(seed=33, visitors=25).events)
    received = time.time_ns()
    shop.insert(store, events, batch=100, received_ns=received)
    shop.insert(store, events[50:250], batch=70, received_ns=received + 10 * NS)  # resent before
    assert_reports(store, events)
    refresh(store)
    # Resent after the refresh, mixed with new activities: their days are read from `activities`
    # again until the next refresh, and counted once both before and after it.
    later = with_bots(shop.generate(seed=34, visitors=5).events)
    mixed = [x for pair in zip(events[150:230], later, strict=False) for x in pair] + later[80:]
    assert len(mixed) > 100
    shop.insert(store, mixed, batch=77, received_ns=received + 60 * NS)
    everything = events + later
    assert dirty_days(store) > 0
    assert_reports(store, everything)
    refresh(store)
    assert dirty_days(store) == 0
    assert_reports(store, everything)
    stored = int(store.query("SELECT count() FROM activities", "TabSeparated"))
    assert stored > len(shop.distinct(everything))  # the copies are still there, uncollapsed
    store.command("SYSTEM START MERGES activities")


def test_a_refresh_that_ran_twice_or_at_once_with_another_changes_nothing(store: ClickHouseStore) -> None:
    events = with_bots(shop.generate(seed=35, visitors=15).events)
    shop.insert(store, events)
    # Two refreshes computed from the same watermark (two collectors at once), then a later one.
    since = "1970-01-01 00:00:00.000"
    for refreshed_to in ("2026-12-01 00:00:00.000", "2026-12-01 00:00:00.000"):
        for statement in refresh_statements(store.database, since, refreshed_to):
            store.command(statement)
    assert_reports(store, events)
    refresh(store)
    assert_reports(store, events)


def test_the_rebuild_makes_the_buckets_equal_the_rows_left_after_an_erasure(store: ClickHouseStore) -> None:
    events = with_bots(shop.generate(seed=36, visitors=20).events)
    shop.insert(store, events)
    refresh(store)
    erased = next(e.anonymous_id for e in events if e.tenant == shop.TENANT and e.action == "purchase")
    gone = [e for e in events if e.anonymous_id == erased]
    store.command(f"DELETE FROM activities WHERE anonymous_id = {quote(erased)}")
    left = [e for e in events if e.anonymous_id != erased]
    # The rollups still hold the erased person's activities (nothing touched their days) ...
    assert hourly_stored(store) != hourly_python(left)
    for aggregate in AGGREGATES:
        buckets = sorted(
            {
                dt.datetime.fromtimestamp(e.occurred_ms / 1000, dt.UTC).strftime(
                    "%Y-%m-%d %H:00:00" if aggregate.bucket.name == "hour" else "%Y-%m-%d"
                )
                for e in gone
            }
        )
        condition = f"{aggregate.bucket.name} IN ({', '.join(quote(b) for b in buckets)})"
        for statement in aggregate_rebuild_statements(store.database, aggregate, shop.TENANT, condition):
            store.command(statement)
    days = sorted({shop.day_of(e.occurred_ms).isoformat() for e in gone})
    assert sessions_stored(store, "session_figures_daily_rollup FINAL") != sessions_python(left)
    condition = f"day IN ({', '.join(quote(d) for d in days)})"
    for statement in aggregate_rebuild_statements(store.database, SESSION_FIGURES, shop.TENANT, condition):
        store.command(statement)
    # ... and after the rebuild of their buckets, none; the sessions' rollup read alone, since nothing
    # sends those days to the view's computation from `activities`.
    assert dirty_days(store) == 0
    assert sessions_stored(store, "session_figures_daily_rollup FINAL") == sessions_python(left)
    assert_reports(store, left)
    erased_targets = {e.target_id for e in gone} - {e.target_id for e in left}
    if erased_targets:
        held = rows(store, "SELECT DISTINCT target_id FROM target_stats_daily")
        assert not erased_targets & {r["target_id"] for r in held}


def test_a_day_touched_within_the_margin_is_left_for_a_later_refresh(store: ClickHouseStore) -> None:
    events = with_bots(shop.generate(seed=38, visitors=10).events)
    shop.insert(store, events)
    # Inserts an hour within the margin: none of their days is computed, all are read from
    # `activities`, and the figures are exact all the same.
    assert refresh_aggregates(store.command, store.database, margin_s=3600).days == 0
    assert dirty_days(store) > 0
    assert_reports(store, events)
    assert refresh(store) > 0 and dirty_days(store) == 0
    assert_reports(store, events)


def test_the_rebuild_takes_an_aggregate_by_name_and_quotes_the_tenant() -> None:
    by_name = aggregate_rebuild_statements(
        "db", "target_stats_daily", "o'hara", "day = '2026-10-01'", SINGLE_NODE
    )
    assert by_name == aggregate_rebuild_statements(
        "db", AGGREGATE["target_stats_daily"], "o'hara", "day = '2026-10-01'"
    )
    assert by_name[0].startswith("DELETE FROM `db`.`target_stats_daily_rollup` WHERE tenant_id = 'o\\'hara'")
    assert by_name[1].startswith("INSERT INTO `db`.`target_stats_daily_rollup`")


def test_the_refresher_stage_takes_in_what_was_inserted(store: ClickHouseStore) -> None:
    events = shop.generate(seed=37, visitors=10).events
    shop.insert(store, events)

    async def run() -> None:
        # A margin for inserts in flight of 0.2 s: a refresh that starts that long after the test's
        # inserts (which have returned) takes their days in.
        refresher = AggregateRefresher(store.command, store.database, SINGLE_NODE, 0.05, margin_s=0.2)
        await refresher.start()
        try:
            await wait_for(
                lambda: refresher.refreshes > 0 and refresher.last is not None and refresher.last.days > 0,
                "a refresh that took in the inserted days",
            )
        finally:
            await refresher.shutdown()
            await refresher.shutdown()  # idempotent

    asyncio.run(run())
    assert_reports(store, events)


def test_a_stopped_refresher_is_safe_and_interval_zero_never_starts() -> None:
    async def run() -> None:
        refresher = AggregateRefresher(lambda sql: None, "db", SINGLE_NODE, interval_s=0)
        await refresher.start()
        assert refresher._task is None
        await refresher.shutdown()

    asyncio.run(run())
