"""Retention: how long each tenant's data is kept, enforced by ClickHouse TTLs.

Each tenant may have `retention_days` (its raw activities) and `aggregate_retention_days` (its rows of
the aggregates, at least as long), kept in PostgreSQL's `tenants` (`activity-collector tenants set`);
none means kept. ClickHouse cannot read a per-tenant value inside a TTL expression (a dictionary
lookup there is refused as not deterministic), so the TTL of each table is written out with one rule
per tenant that has a retention, `toDateTime(occurred_at) + toIntervalDay(30) WHERE tenant_id = 'a', ...`,
and written again whenever a retention changes (and at every collector's start). The other tenants'
rows match no rule and stay. Rows past their TTL go at the table's next merge (`OPTIMIZE ... FINAL`
forces one); changing the TTL rewrites no part (`materialize_ttl_after_modify = 0`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from workers.privacy.persons import SqlEngine
from workers.storage.analytics_schema import quote
from workers.storage.contract import json_rows
from workers.storage.schema import SINGLE_NODE, Cluster
from workers.storage.session_rollups import EVERY_ROLLUP

MAX_DAYS = 36_500


class RetentionError(ValueError):
    """A retention that cannot be set; the message names the setting."""


@dataclass(frozen=True)
class Retention:
    tenant: str
    days: int | None
    """Days raw activities are kept; None: kept."""
    aggregate_days: int | None
    """Days aggregate rows are kept; None: kept."""


def check(days: int | None, aggregate_days: int | None) -> None:
    for name, value in (("retention_days", days), ("aggregate_retention_days", aggregate_days)):
        if value is not None and not 1 <= value <= MAX_DAYS:
            raise RetentionError(f"{name}: must be from 1 to {MAX_DAYS} days, or keep; got {value}")
    if days is not None and aggregate_days is not None and aggregate_days < days:
        raise RetentionError(
            f"aggregate_retention_days ({aggregate_days}) must be at least retention_days ({days}): the "
            "aggregates are the long-lived summary of the raw rows"
        )


class RetentionStore:
    """The retention columns of `tenants`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def all(self) -> dict[str, Retention]:
        rows = await self.pool.fetch("SELECT name, retention_days, aggregate_retention_days FROM tenants")
        return {
            r["name"]: Retention(r["name"], r["retention_days"], r["aggregate_retention_days"]) for r in rows
        }

    async def set(self, tenant: str, days: int | None, aggregate_days: int | None) -> Retention:
        """Set both (None: keep). Raises RetentionError for bad values or an unknown tenant."""
        check(days, aggregate_days)
        row = await self.pool.fetchrow(
            "UPDATE tenants SET retention_days = $2, aggregate_retention_days = $3 WHERE name = $1"
            " RETURNING name",
            tenant,
            days,
            aggregate_days,
        )
        if row is None:
            raise RetentionError(f"no tenant {tenant} (activity-collector tenants create {tenant})")
        return Retention(tenant, days, aggregate_days)


def ttl_rules(time: str, days: Mapping[str, int]) -> str:
    """The rules of a TTL: one per tenant with a retention."""
    return ", ".join(
        f"{time} + toIntervalDay({int(n)}) WHERE tenant_id = {quote(tenant)}"
        for tenant, n in sorted(days.items())
    )


def retention_statements(
    database: str,
    retentions: Mapping[str, Retention],
    cluster: Cluster = SINGLE_NODE,
    with_ttl: frozenset[str] = frozenset(),
) -> list[str]:
    """The statements that set the TTL of `activities` and of every aggregate to `retentions`. A table
    in `with_ttl` (its local name) has one now: it is removed when no tenant has a retention any more."""
    raw: dict[str, int] = {}
    aggregated: dict[str, int] = {}
    for tenant, retention in retentions.items():
        if retention.days is not None:
            raw[tenant] = retention.days
        if retention.aggregate_days is not None:
            aggregated[tenant] = retention.aggregate_days
    tables = [("activities", "toDateTime(occurred_at)", raw)]
    # Every rollup: the aggregates', the responses' and the sessions' (their `day` or `hour` column).
    tables += [(a.rollup, f"toDateTime({a.bucket.name})", aggregated) for a in EVERY_ROLLUP]
    statements = []
    for table, time, days in tables:
        local = cluster.local(table)
        alter = f"ALTER TABLE `{database}`.`{local}`{cluster.on_cluster}"
        if days:
            statements.append(
                f"{alter} MODIFY TTL {ttl_rules(time, days)} SETTINGS materialize_ttl_after_modify = 0"
            )
        elif local in with_ttl:
            statements.append(f"{alter} REMOVE TTL")
    return statements


def tables_with_ttl(clickhouse: SqlEngine, database: str) -> frozenset[str]:
    """The tables of `database` that have a table TTL now. Blocks."""
    rows = json_rows(
        clickhouse.query(
            f"SELECT name, engine_full FROM system.tables WHERE database = {quote(database)}", "JSONEachRow"
        )
    )
    return frozenset(r["name"] for r in rows if " TTL " in f" {r['engine_full']} ")


def apply_retention(
    clickhouse: SqlEngine, database: str, retentions: Mapping[str, Retention], cluster: Cluster = SINGLE_NODE
) -> list[str]:
    """Bring the TTLs of ClickHouse in line with `retentions`; return the statements run. Blocks."""
    statements = retention_statements(database, retentions, cluster, tables_with_ttl(clickhouse, database))
    for statement in statements:
        _run(clickhouse, statement)
    return statements


def _run(clickhouse: SqlEngine, statement: str) -> Any:
    return clickhouse.command(statement)


async def sync_retention(
    pool: asyncpg.Pool, clickhouse: SqlEngine, database: str, cluster: Cluster = SINGLE_NODE
) -> list[str]:
    """Write the TTLs the tenants' retentions in PostgreSQL call for (a collector's start)."""
    import asyncio

    retentions = await RetentionStore(pool).all()
    return await asyncio.to_thread(apply_retention, clickhouse, database, retentions, cluster)
