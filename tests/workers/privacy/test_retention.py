"""Retention on the real engines: a tenant's rows older than its retention_days go at the next merge
(OPTIMIZE ... FINAL here), another tenant's stay; aggregate rows follow their own, longer setting."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import items, make_activity

from collector.cli.main import main
from collector.tenants import TenantStore
from core.proto.activity.v1 import activity_pb2 as pb
from workers.privacy.retention import RetentionError, RetentionStore, apply_retention, retention_statements
from workers.rows import encode_rows, envelope
from workers.storage.analytics_schema import EPOCH, quote, refresh_statements
from workers.storage.clickhouse import ClickHouseStore
from workers.storage.postgres import apply_migrations
from workers.storage.session_rollups import EVERY_ROLLUP

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        yield pool


def aged(n: int, days: int) -> pb.Activity:
    activity = make_activity(n)
    activity.occurred_at.FromDatetime(datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days))
    return activity


def insert(store: ClickHouseStore, tenant: str, activities: list[pb.Activity]) -> None:
    rows = encode_rows(items(activities), tenant, time.time_ns(), None)
    store.insert_rows(envelope([rows]), len(activities))


def counts(store: ClickHouseStore, table: str, measure: str = "count()") -> dict[str, int]:
    out = store.query(
        f"SELECT tenant_id, {measure} FROM {table} GROUP BY tenant_id ORDER BY tenant_id", "TSV"
    )
    return {line.split("\t")[0]: int(line.split("\t")[1]) for line in out.decode().splitlines()}


async def test_rows_past_a_tenants_retention_go_at_the_next_merge(
    store: ClickHouseStore, pool: asyncpg.Pool
) -> None:
    tenants = TenantStore(pool)
    for name in ("shop-a", "shop-b"):
        await tenants.create_tenant(name)
    for tenant in ("shop-a", "shop-b"):
        insert(store, tenant, [aged(0, 5), aged(1, 40), aged(2, 90)])
    # The aggregates' rollups computed, as a collector's refresh does.
    for statement in refresh_statements(store.database, EPOCH, "2100-01-01 00:00:00.000"):
        store.command(statement)
    retentions = RetentionStore(pool)
    await retentions.set("shop-a", 30, 60)
    with pytest.raises(RetentionError, match="aggregate_retention_days"):
        await retentions.set("shop-b", 30, 10)
    with pytest.raises(RetentionError, match="no tenant"):
        await retentions.set("nobody", 30, None)

    await asyncio.to_thread(apply_retention, store, store.database, await retentions.all())
    store.command("OPTIMIZE TABLE activities FINAL")
    assert counts(store, "activities") == {"shop-a": 1, "shop-b": 3}
    store.command("OPTIMIZE TABLE target_stats_daily_rollup FINAL")
    assert counts(store, "target_stats_daily_rollup", "count()") == {"shop-a": 2, "shop-b": 3}
    # Every rollup has the aggregates' retention: the sessions' too.
    ttl = store.query(
        f"SELECT name FROM system.tables WHERE database = {quote(store.database)} "
        "AND name LIKE '%\\_rollup' AND position(engine_full, ' TTL ') > 0 ORDER BY name",
        "TabSeparated",
    ).decode()
    assert ttl.split() == sorted(a.rollup for a in EVERY_ROLLUP)
    store.command("OPTIMIZE TABLE session_figures_daily_rollup FINAL")
    sessions = counts(store, "session_figures_daily_rollup", "sum(sessions)")
    assert sessions == {"shop-a": 2, "shop-b": 3}

    # Back to keep: the TTL goes, and rows stay from then on.
    await retentions.set("shop-a", None, None)
    statements = await asyncio.to_thread(apply_retention, store, store.database, await retentions.all())
    assert all("REMOVE TTL" in s for s in statements)
    insert(store, "shop-a", [aged(3, 90)])
    store.command("OPTIMIZE TABLE activities FINAL")
    assert counts(store, "activities") == {"shop-a": 2, "shop-b": 3}


def test_the_ttl_has_one_rule_per_tenant() -> None:
    from workers.privacy.retention import Retention
    from workers.storage.schema import Cluster

    statements = retention_statements(
        "db", {"a": Retention("a", 30, None), "b": Retention("b", 7, 400)}, Cluster("c")
    )
    assert statements[0] == (
        "ALTER TABLE `db`.`activities_local` ON CLUSTER `c` MODIFY TTL"
        " toDateTime(occurred_at) + toIntervalDay(30) WHERE tenant_id = 'a',"
        " toDateTime(occurred_at) + toIntervalDay(7) WHERE tenant_id = 'b'"
        " SETTINGS materialize_ttl_after_modify = 0"
    )
    assert "toDateTime(hour) + toIntervalDay(400) WHERE tenant_id = 'b'" in statements[1]


async def test_tenants_set_and_list(
    store: ClickHouseStore,
    postgres_dsn: str,
    pool: asyncpg.Pool,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The data directory of the engine the tests share: no collector runs there, the command opens it.
    flags = [
        "--data-dir",
        str(Path(store.dsn.removeprefix("chdb://")).parent),
        "--postgres-dsn",
        postgres_dsn,
        "--clickhouse-dsn",
        store.dsn,
        "--clickhouse-database",
        store.database,
    ]
    await TenantStore(pool).create_tenant("shop-a")
    code = await asyncio.to_thread(main, ["tenants", "set", "shop-a", "--retention-days", "30", *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "raw activities kept 30 days, aggregate rows for ever" in out
    code = await asyncio.to_thread(main, ["tenants", "list", "--format", "csv", *flags[:4]])
    out, _ = capsys.readouterr()
    assert out.splitlines()[0].endswith("retention days,aggregate retention days")
    assert out.splitlines()[1].endswith(",30,keep")
    table = store.query(
        "SELECT engine_full FROM system.tables WHERE name = 'activities' AND database = currentDatabase()",
        "TSV",
    )
    assert b"WHERE tenant_id = \\'shop-a\\'" in table  # TabSeparated escapes quotes
    code = await asyncio.to_thread(
        main,
        ["tenants", "set", "shop-a", "--retention-days", "30", "--aggregate-retention-days", "7", *flags],
    )
    assert code == 1 and "must be at least retention_days" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tenants", "set", "shop-a", "--retention-days", "soon"])
