"""The analytics layer on the real engine: the aggregates agree with the raw table and with answers
computed in Python, also after a client resends activities; late activities land in their buckets;
the migration backfills; the parameterized views return the generated shop's sessions, funnels and
attribution."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import shop
from helpers import make_activity

from core.proto.activity.v1 import activity_pb2 as pb
from workers.rows import encode_rows, envelope
from workers.storage.analytics_schema import (
    AGGREGATES,
    AGGREGATES_V2,
    ATTRIBUTED_ACTIVITIES,
    FUNNEL,
    HAS_AMOUNT,
    ITEMS,
    MEASURES,
    REVENUE,
    SESSION_ACTIVITIES,
    SESSIONS,
    USER_KEY,
    VIEWS,
    Aggregate,
    aggregate_read_view_ddl,
    analytics_statements,
    rollup_table_ddl,
    source_views_statements,
)
from workers.storage.clickhouse import ClickHouseStore
from workers.storage.migrations import MIGRATIONS, apply_migrations
from workers.storage.refresher import refresh_aggregates
from workers.storage.schema import SINGLE_NODE

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
NS = 1_000_000_000
WHOLE_RANGE = {
    "tenant_id": "",
    "since": "2026-09-01 00:00:00",
    "until": "2026-12-01 00:00:00",
    "include_bots": 0,
}


def rows(store: ClickHouseStore, sql: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in store.query(sql, "JSONEachRow").splitlines()]


# -- definitions -----------------------------------------------------------------------------------


def test_every_aggregate_keys_its_bucket_and_dimensions_and_orders_by_them() -> None:
    for a in AGGREGATES:
        names = [d.name for d in a.keys]
        assert len(names) == len(set(names)), a.name
        assert sorted(a.order_by) == sorted(names), a.name
        ddl = rollup_table_ddl("db", a)
        assert ddl.startswith(f"CREATE TABLE IF NOT EXISTS `db`.`{a.rollup}` (")
        assert "ENGINE = ReplacingMergeTree(refreshed_at)" in ddl
        for m in MEASURES:
            assert f"`{m.name}` {m.type}" in ddl
        view = aggregate_read_view_ddl("db", a)
        assert view.startswith(f"CREATE VIEW IF NOT EXISTS `db`.`{a.name}` AS")
        assert f"FROM `db`.`{a.rollup}` FINAL" in view and "FROM `db`.activities FINAL" in view


def test_views_use_every_declared_parameter_and_nothing_else() -> None:
    for v in VIEWS:
        used = set(re.findall(r"\{(\w+):", v.ddl("db")))
        assert used == {p for p, _, _ in v.parameters}, v.name


def test_a_view_call_names_every_parameter_and_quotes_values() -> None:
    call = FUNNEL.call(
        {**WHOLE_RANGE, "tenant_id": "o'hara", "steps": ["view", "purchase"], "window_s": 60, "by": ""}
    )
    assert call.startswith("funnel(tenant_id = 'o\\'hara', since = '2026-09-01 00:00:00'")
    assert "steps = ['view', 'purchase'], window_s = 60, by = ''" in call
    with pytest.raises(ValueError, match="missing parameters"):
        FUNNEL.call(WHOLE_RANGE)


def test_the_migration_creates_tables_before_their_views_and_views_last() -> None:
    statements = analytics_statements("db")
    assert len(statements) == 3 * len(AGGREGATES_V2) + len(VIEWS)
    for i, a in enumerate(AGGREGATES_V2):
        assert f"`{a.name}` (" in statements[3 * i]
        assert f"`{a.view}` TO" in statements[3 * i + 1]
        assert statements[3 * i + 2].startswith("INSERT INTO")
    # session_activities comes before the views that read it
    names = [v.name for v in VIEWS]
    assert names.index("session_activities") < names.index("sessions")
    assert names.index("session_activities") < names.index("attributed_activities")


# -- the documentation names what the schema has ---------------------------------------------------


def test_docs_describe_every_aggregate_column_and_view() -> None:
    text = (ROOT / "docs" / "analytics.md").read_text()
    for a in AGGREGATES:
        assert f"`{a.name}`" in text, a.name
        for d in a.keys:
            assert f"| `{d.name}` | {d.type} |" in text, f"{a.name}.{d.name}"
    for m in MEASURES:
        assert f"| `{m.name}` | {m.type} |" in text, m.name
    for v in VIEWS:
        assert f"### `{v.name}`" in text, v.name
        for p, _, _ in v.parameters:
            assert f"`{p}`" in text, f"{v.name}({p})"
        for column, _ in v.columns:
            assert f"`{column}`" in text, f"{v.name}.{column}"


def test_views_return_the_documented_columns(seeded: ClickHouseStore) -> None:
    arguments: dict[str, dict[str, Any]] = {
        "funnel": {"steps": ["view", "purchase"], "window_s": 3600, "by": ""},
        "attributed_activities": {"window_s": 3600},
        "credited_activities": {"window_s": 3600},
        "source_activities": {"window_s": 3600},
        "search_responses": {"window_s": 3600},
    }
    for v in VIEWS:
        described = seeded.query(
            f"DESCRIBE (SELECT * FROM {v.call({**WHOLE_RANGE, **arguments.get(v.name, {})})})", "TabSeparated"
        )
        names = [line.split("\t")[0] for line in described.decode().splitlines()]
        assert names == [c for c, _ in v.columns], v.name


def test_aggregate_tables_carry_the_comments(seeded: ClickHouseStore) -> None:
    for a in AGGREGATES:
        got = rows(
            seeded,
            f"SELECT name, type, comment FROM system.columns WHERE database = currentDatabase() "
            f"AND table = '{a.rollup}' ORDER BY position",
        )
        assert [(r["name"], r["type"]) for r in got] == [(d.name, d.type) for d in a.keys] + [
            (m.name, m.type) for m in MEASURES
        ] + [("refreshed_at", "DateTime64(3, 'UTC')")]
        assert all(r["comment"] for r in got)


# -- aggregates agree with the raw table and with Python -------------------------------------------


def _bucket(name: str, ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:00:00") if name == "hour" else moment.date().isoformat()


_PYTHON_DIMENSIONS: dict[str, Callable[[shop.Event], object]] = {
    "tenant_id": lambda e: e.tenant,
    "action": lambda e: e.action,
    "device_type": lambda e: e.device_type,
    "currency": lambda e: e.currency,
    "sourced": lambda e: bool(e.source_id),
    "target_type": lambda e: e.target_type,
    "target_id": lambda e: e.target_id,
    "source_id": lambda e: e.source_id,
    "is_bot": lambda e: bool(getattr(e, "is_bot", False)),
}


def python_answer(a: Aggregate, events: Iterable[shop.Event]) -> dict[tuple[object, ...], tuple[int, ...]]:
    groups: dict[tuple[object, ...], list[shop.Event]] = defaultdict(list)
    for e in shop.distinct(events):
        if a.name == "source_stats_daily" and not e.source_id:
            continue
        key = tuple(
            _bucket(d.name, e.occurred_ms) if d is a.bucket else _PYTHON_DIMENSIONS[d.name](e) for d in a.keys
        )
        groups[key].append(e)
    return {
        key: (
            len(evs),
            len({e.user_key for e in evs}),
            sum(e.items for e in evs if e.has_amount),
            sum(e.revenue for e in evs if e.has_amount),
        )
        for key, evs in groups.items()
    }


def _answers(store: ClickHouseStore, sql: str, a: Aggregate) -> dict[tuple[object, ...], tuple[int, ...]]:
    out = {}
    for r in rows(store, sql):
        key = tuple(r[d.name] for d in a.keys)
        out[key] = (int(r["n"]), int(r["users"]), int(r["items"]), int(r["revenue"]))
    return out


def aggregate_answer(store: ClickHouseStore, a: Aggregate) -> dict[tuple[object, ...], tuple[int, ...]]:
    keys = ", ".join(d.name for d in a.keys)
    activities, users, items, revenue = MEASURES
    sql = (
        f"SELECT {keys}, {activities.merged()} AS n, {users.merged()} AS users_n, "
        f"{items.merged()} AS items_n, {revenue.merged()} AS revenue_n "
        f"FROM {a.name} GROUP BY {keys}"
    )
    sql = f"SELECT *, users_n AS users, items_n AS items, revenue_n AS revenue FROM ({sql})"
    return _answers(store, sql, a)


def raw_answer(store: ClickHouseStore, a: Aggregate) -> dict[tuple[object, ...], tuple[int, ...]]:
    """The same question asked of `activities FINAL`, the merged raw table."""
    keys = ", ".join(f"{d.expression} AS {d.name}" for d in a.keys)
    where = f"WHERE {a.where}" if a.where else ""
    sql = (
        f"SELECT {keys}, count() AS n, uniqExact({USER_KEY}) AS users, "
        f"sumIf({ITEMS}, {HAS_AMOUNT}) AS items, sumIf({REVENUE}, {HAS_AMOUNT}) AS revenue "
        f"FROM activities FINAL {where} GROUP BY {', '.join(d.name for d in a.keys)}"
    )
    return _answers(store, sql, a)


def refresh(store: ClickHouseStore) -> int:
    """What the collector's refresher does; the inserts have returned, so no margin is needed."""
    return refresh_aggregates(store.command, store.database, margin_s=0).days


def rolled_up_days(store: ClickHouseStore) -> int:
    """Tenant-days the aggregates read from their rollups (the others are read from `activities`)."""
    sql = (
        "SELECT count() FROM (SELECT DISTINCT tenant_id, day FROM aggregate_touches) "
        "WHERE (tenant_id, day) NOT IN (SELECT tenant_id, day FROM aggregate_touches "
        "WHERE inserted_at > (SELECT max(refreshed_to) FROM aggregate_refreshes))"
    )
    return int(store.query(sql, "TabSeparated"))


def assert_agreement(store: ClickHouseStore, events: list[shop.Event]) -> None:
    """The aggregates equal Python both as they are (days not refreshed read from `activities`) and
    after a refresh (every day read from the rollups)."""
    for refreshed in (False, True):
        if refreshed:
            refresh(store)
            assert rolled_up_days(store) > 0
        for a in AGGREGATES:
            expected = python_answer(a, events)
            assert expected, a.name
            assert raw_answer(store, a) == expected, a.name
            assert aggregate_answer(store, a) == expected, (a.name, refreshed)


def test_aggregates_equal_the_raw_table_and_python(store: ClickHouseStore) -> None:
    generated = shop.generate(seed=11, visitors=20)
    shop.insert(store, generated.events)
    assert_agreement(store, generated.events)


def test_aggregates_count_a_resent_activity_once(store: ClickHouseStore) -> None:
    # Merges stopped: the raw table keeps every copy, as it does until a background merge.
    store.command("SYSTEM STOP MERGES activities")
    generated = shop.generate(seed=12, visitors=20)
    events = generated.events
    received = time.time_ns()
    shop.insert(store, events, batch=100, received_ns=received)
    # The same rows again (a retry of an acknowledged insert): the table's deduplication window drops
    # the first insert, identical to one before it; the second (rows 100-149) is a new block: copies ...
    shop.insert(store, events[:150], batch=100, received_ns=received)
    # ... and the same ids resent later in other batches, mixed with new activities.
    later = shop.generate(seed=13, visitors=5).events
    mixed = [x for pair in zip(events[100:300], later, strict=False) for x in pair] + later[200:]
    shop.insert(store, mixed, batch=77, received_ns=received + 60 * NS)

    everything = events + later
    copies = len(events) + 50 + len(mixed)
    assert int(store.query("SELECT count() FROM activities", "TabSeparated")) == copies
    assert_agreement(store, everything)
    store.command("SYSTEM START MERGES activities")
    store.command("OPTIMIZE TABLE activities FINAL")
    assert int(store.query("SELECT count() FROM activities", "TabSeparated")) == len(everything)
    assert_agreement(store, everything)


def test_late_and_skew_corrected_activities_land_in_their_buckets(store: ClickHouseStore) -> None:
    received_ns = 1_790_000_000 * NS  # 2026-09-21 ...
    late = make_activity(1, action="purchase", metadata=pb.Metadata(quantity=2, price=1500, currency="EUR"))
    late.occurred_at.FromNanoseconds(received_ns - 5 * 86400 * NS)  # five days before it was received
    rows_ = encode_rows([(0, late)], "shop", received_ns, received_ns)
    store.insert_rows(envelope([rows_]), 1)
    # A client whose clock is an hour behind: occurred_at is corrected by the skew before bucketing.
    skewed = make_activity(2, action="view")
    skewed.occurred_at.FromNanoseconds(received_ns - 3600 * NS - 10 * NS)
    rows_ = encode_rows([(0, skewed)], "shop", received_ns, received_ns - 3600 * NS, 3600 * NS)
    store.insert_rows(envelope([rows_]), 1)

    def bucket(ns: int, fmt: str) -> str:
        return dt.datetime.fromtimestamp(ns // NS, dt.UTC).strftime(fmt)

    hourly = rows(
        store,
        "SELECT hour, action, sum(activities) AS n, sum(revenue) AS revenue_n "
        "FROM activity_stats_hourly GROUP BY hour, action ORDER BY hour",
    )
    assert hourly == [
        {
            "hour": bucket(received_ns - 5 * 86400 * NS, "%Y-%m-%d %H:00:00"),
            "action": "purchase",
            "n": 1,
            "revenue_n": 3000,
        },
        {
            "hour": bucket(received_ns - 10 * NS, "%Y-%m-%d %H:00:00"),
            "action": "view",
            "n": 1,
            "revenue_n": 0,
        },
    ]
    daily = rows(store, "SELECT day, action FROM target_stats_daily ORDER BY day")
    assert daily == [
        {"day": bucket(received_ns - 5 * 86400 * NS, "%Y-%m-%d"), "action": "purchase"},
        {"day": bucket(received_ns - 10 * NS, "%Y-%m-%d"), "action": "view"},
    ]


def test_the_migration_backfills_existing_activities_once(engine_dir: Path, database: str) -> None:
    import clickhouse_connect

    generated = shop.generate(seed=14, visitors=10)
    client = clickhouse_connect.get_client(dsn=f"chdb://{engine_dir}")
    try:
        client.command(f"CREATE DATABASE `{database}`")
        client.command(MIGRATIONS[0].statements(database, SINGLE_NODE)[0])
        client.command(
            f"CREATE TABLE `{database}`.schema_migrations (version UInt32, name String, "
            "applied_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC')) "
            "ENGINE = ReplacingMergeTree ORDER BY version"
        )
        client.insert(
            f"`{database}`.schema_migrations", [[1, MIGRATIONS[0].name]], column_names=["version", "name"]
        )
        store = ClickHouseStore(f"chdb://{engine_dir}", database, connections=1, migrate=False)
        try:
            shop.insert(store, generated.events)  # stored before the analytics migration existed
            assert apply_migrations(client, database)[0] == 2
            assert_agreement(store, generated.events)
            # Refreshing again, the same days computed a second time, changes nothing.
            store.command(
                "INSERT INTO aggregate_touches SELECT tenant_id, day, now64(3) FROM aggregate_touches"
            )
            assert refresh(store) > 0
            assert_agreement(store, generated.events)
        finally:
            store.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
            store.close()
    finally:
        client.close()


# -- views -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_data() -> shop.Shop:
    return shop.generate()


@pytest.fixture(scope="module")
def seeded(engine_dir: Path, shop_data: shop.Shop) -> Iterator[ClickHouseStore]:
    """The shop stored once for the view tests, which only read it."""
    database = f"views_{uuid.uuid4().hex[:12]}"
    store = ClickHouseStore(f"chdb://{engine_dir}", database, connections=1)
    shop.insert(store, shop_data.events)
    # A resend of some activities: the views read the raw table with copies collapsed.
    shop.insert(store, shop_data.events[40:90], received_ns=time.time_ns() + 5 * NS)
    yield store
    store.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    store.close()


def _ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


def test_the_reference_sessions_are_the_generated_visits(shop_data: shop.Shop) -> None:
    # The plain-Python sessions cut the activities exactly into the visits the generator made.
    got = sorted(sorted(e.id for e in s.events) for s in shop.sessions(shop_data.events))
    meant = sorted(sorted(e.id for e in visit) for visit in shop_data.visits)
    assert got == meant


def test_sessions_view(seeded: ClickHouseStore, shop_data: shop.Shop) -> None:
    got = []
    for r in rows(seeded, f"SELECT * FROM {SESSIONS.call(WHOLE_RANGE)}"):
        got.append(
            {
                "tenant_id": r["tenant_id"],
                "client_session_id": r["client_session_id"],
                "user_key": r["user_key"],
                "start_ms": _ms(r["start"]),
                "end_ms": _ms(r["end"]),
                "duration_s": r["duration_s"],
                "activities": int(r["activities"]),
                "views": int(r["views"]),
                "clicks": int(r["clicks"]),
                "add_to_carts": int(r["add_to_carts"]),
                "purchases": int(r["purchases"]),
                "converted": bool(r["converted"]),
                "revenue": {k: int(v) for k, v in r["revenue"].items()},
                "entry": (r["entry_target_type"], r["entry_target_id"]),
                "exit": (r["exit_target_type"], r["exit_target_id"]),
                "device_type": r["device_type"],
                "sourced": bool(r["sourced"]),
            }
        )
    expected = [s.row() for s in shop.sessions(shop_data.events)]

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return row["tenant_id"], row["user_key"], row["start_ms"]

    assert sorted(got, key=key) == sorted(expected, key=key)
    # Both kinds of session are there, and sessions that took a 20- or 30-minute pause.
    assert any(r["client_session_id"] for r in got) and any(not r["client_session_id"] for r in got)
    assert any(r["duration_s"] >= 1800 and not r["client_session_id"] for r in got)


def test_session_activities_name_sessions_by_client_id_or_user_and_start(
    seeded: ClickHouseStore, shop_data: shop.Shop
) -> None:
    got = {
        r["id"]: r["session"]
        for r in rows(seeded, f"SELECT id, session FROM {SESSION_ACTIVITIES.call(WHOLE_RANGE)}")
    }
    assert len(got) == len(shop_data.events)
    for s in shop.sessions(shop_data.events):
        start = dt.datetime.fromtimestamp(s.start / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        name = s.client_session_id or f"{s.events[0].user_key}@{start}"
        assert {got[e.id] for e in s.events} == {name}


def test_sessions_are_cut_by_the_range_and_the_tenant(seeded: ClickHouseStore, shop_data: shop.Shop) -> None:
    first, last = dt.date(2026, 10, 10), dt.date(2026, 10, 16)
    arguments = {
        "tenant_id": shop.TENANT,
        "since": "2026-10-10 00:00:00",
        "until": "2026-10-17 00:00:00",
        "include_bots": 0,
    }
    got = int(seeded.query(f"SELECT count() FROM {SESSIONS.call(arguments)}", "TabSeparated"))
    assert got == len(shop.sessions(shop.in_range(shop_data.events, shop.TENANT, first, last)))


@pytest.mark.parametrize(
    ("steps", "window_s", "by"),
    [
        (["view", "add_to_cart", "purchase"], 86400, ""),
        (["view", "click", "add_to_cart", "purchase"], 600, ""),
        (["click", "purchase"], 3600, "device_type"),
        (["view", "add_to_cart"], 86400, "day"),
        (["view", "add_to_cart", "purchase"], 86400, "segment"),
    ],
)
def test_funnel_view(
    seeded: ClickHouseStore, shop_data: shop.Shop, steps: list[str], window_s: int, by: str
) -> None:
    call = FUNNEL.call({**WHOLE_RANGE, "steps": steps, "window_s": window_s, "by": by})
    got: dict[str, list[int]] = {}
    for r in rows(seeded, f"SELECT dimension, level FROM {call}"):
        counts = got.setdefault(r["dimension"], [0] * len(steps))
        for k in range(int(r["level"])):
            counts[k] += 1
    expected = shop.funnel(shop_data.events, steps, window_s, by)
    assert got == expected
    assert any(counts[1] > 0 for counts in expected.values())
    assert sum(counts[0] for counts in expected.values()) > sum(counts[-1] for counts in expected.values())


def test_the_funnel_counts_a_visitor_who_logged_in_as_one_person(store: ClickHouseStore) -> None:
    start = shop.ms_of(dt.date(2026, 11, 2), 10 * 3600)

    def event(action: str, n: int, anonymous: str, user: str = "", resolved: str = "") -> shop.Event:
        return shop.Event(
            shop.TENANT,
            action,
            "product",
            "sku-1",
            start + n * 60_000,
            anonymous,
            user,
            f"s-{anonymous}",
            "mobile",
            (),
            resolved_user_id=resolved,
        )

    events = [
        # Viewed and added to the cart before logging in; enrichment resolved the visitor to u-1.
        event("view", 0, "a-1", resolved="u-1"),
        event("add_to_cart", 1, "a-1", resolved="u-1"),
        event("purchase", 5, "a-1", user="u-1", resolved="u-1"),
        # Another visitor, never resolved, who only looked.
        event("view", 2, "b-1"),
    ]
    shop.insert(store, events)
    steps = ["view", "add_to_cart", "purchase"]
    call = FUNNEL.call({**WHOLE_RANGE, "steps": steps, "window_s": 86400, "by": ""})
    got = [0, 0, 0]
    for r in rows(store, f"SELECT level FROM {call}"):
        for k in range(int(r["level"])):
            got[k] += 1
    expected = shop.funnel(events, steps, 86400)[""]
    assert got == expected == [2, 1, 1]
    # Counted by user key, the purchase would belong to another "user" than the view and the cart.
    assert shop.funnel(events, steps, 86400, by_person=False)[""] != expected
    # Without enrichment's resolved_user_id the purchase, which carried both ids, links them all the same.
    unresolved = [dataclasses.replace(e, resolved_user_id="") for e in events]
    store.command("TRUNCATE TABLE activities")
    shop.insert(store, unresolved)
    assert (
        [sum(int(r["level"]) >= k for r in rows(store, f"SELECT level FROM {call}")) for k in (1, 2, 3)]
        == shop.funnel(unresolved, steps, 86400)[""]
        == expected
    )


@pytest.mark.parametrize("window_s", [86400, 300])
def test_attribution_view(seeded: ClickHouseStore, shop_data: shop.Shop, window_s: int) -> None:
    call = ATTRIBUTED_ACTIVITIES.call({**WHOLE_RANGE, "window_s": window_s})
    got = {
        r["id"]: r["attributed_source_id"]
        for r in rows(seeded, f"SELECT id, attributed_source_id FROM {call}")
    }
    expected = shop.attribution(shop_data.events, window_s)
    assert got == expected
    if window_s == 86400:
        # With a day's window every purchase and add-to-cart goes to the source the shopper came from.
        assert {i: got[i] for i in shop_data.meant_sources} == shop_data.meant_sources
        assert any(shop_data.meant_sources.values()) and not all(shop_data.meant_sources.values())
    else:
        assert {i: got[i] for i in shop_data.meant_sources} != shop_data.meant_sources


def test_schema_version_10_replaces_the_views_of_an_older_schema(
    store: ClickHouseStore, engine_dir: Path
) -> None:
    import clickhouse_connect

    # A view as an older version left it: no include_bots parameter, and so called without one.
    store.command(
        f"CREATE OR REPLACE VIEW `{store.database}`.sessions AS "
        "SELECT 'old' AS session FROM activities WHERE {tenant_id:String} = ''"
    )
    store.command(f"DELETE FROM `{store.database}`.schema_migrations WHERE version = 10")
    statements = source_views_statements(store.database)
    assert [s.split(" AS\n")[0] for s in statements] == [
        f"CREATE OR REPLACE VIEW `{store.database}`.`{v.name}`" for v in VIEWS
    ]
    client = clickhouse_connect.get_client(dsn=f"chdb://{engine_dir}")
    try:
        assert apply_migrations(client, store.database) == [10]
    finally:
        client.close()
    call = SESSIONS.call({**WHOLE_RANGE, "include_bots": 1})
    described = store.query(f"DESCRIBE (SELECT * FROM {call})", "TabSeparated").decode()
    assert [line.split("\t")[0] for line in described.splitlines()] == [c for c, _ in SESSIONS.columns]
    # Applied again (an interrupted migration), it changes nothing.
    for statement in statements:
        store.command(statement)
