"""Tracking plans in PostgreSQL (`tracking_plans`: every version of each tenant's plan), and the
refresher that brings the plans in force into a running collector's `plan` processor (and the tenants'
own quotas, `tenant_quotas`, into its `Quotas`).

Every collector polls the table's change marker (`max(id)`, one index lookup) every `plan_refresh_s`,
off the request path, and reads the plans in force only when it moved: a plan applied anywhere takes
effect on every collector within that interval (plus a query), without restart. A PostgreSQL that
fails keeps the plans in force as they were; the next poll tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from workers.processors.plan import Plan, PlanError, TrackingPlans, parse_plan
from workers.processors.quota import Quotas, QuotaStore
from workers.storage.postgres import POSTGRES_ERRORS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanVersion:
    tenant: str
    version: int
    document: dict[str, Any] | None
    """None: the plan was removed in this version."""
    source: str
    created_at: datetime


class PlanStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def apply(self, tenant: str, document: dict[str, Any] | None, source: str = "") -> int:
        """Record a new version of `tenant`'s plan (checked first: PlanError) and return its number;
        None removes the plan (a version too)."""
        if document is not None:
            parse_plan(document)
        plan = None if document is None else json.dumps(document, sort_keys=True)
        async with self.pool.acquire() as conn, conn.transaction():
            # One writer per tenant at a time: the next version number is read and taken together.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tracking_plans:' || $1))", tenant)
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM tracking_plans WHERE tenant_id = $1", tenant
            )
            await conn.execute(
                "INSERT INTO tracking_plans (tenant_id, version, plan, source)"
                " VALUES ($1, $2, $3::jsonb, $4)",
                tenant,
                version,
                plan,
                source,
            )
        return int(version)

    async def marker(self) -> int:
        """Moves whenever any plan changes."""
        return int(await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM tracking_plans"))

    async def current(self) -> dict[str, PlanVersion]:
        """The version in force of each tenant that has a plan."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT ON (tenant_id) tenant_id, version, plan, source, created_at FROM tracking_plans"
            " ORDER BY tenant_id, version DESC"
        )
        versions = (_version(r) for r in rows)
        return {v.tenant: v for v in versions if v.document is not None}

    async def history(self, tenant: str) -> list[PlanVersion]:
        rows = await self.pool.fetch(
            "SELECT tenant_id, version, plan, source, created_at FROM tracking_plans WHERE tenant_id = $1"
            " ORDER BY version",
            tenant,
        )
        return [_version(r) for r in rows]

    async def get(self, tenant: str, version: int | None = None) -> PlanVersion | None:
        """A version of `tenant`'s plan (the latest when None)."""
        row = await self.pool.fetchrow(
            "SELECT tenant_id, version, plan, source, created_at FROM tracking_plans WHERE tenant_id = $1"
            " AND ($2::integer IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
            tenant,
            version,
        )
        return None if row is None else _version(row)


def _version(row: Any) -> PlanVersion:
    plan = row["plan"]
    document = None if plan is None else json.loads(plan)
    return PlanVersion(row["tenant_id"], row["version"], document, row["source"], row["created_at"])


class PlanRefresher:
    """Keeps `plans` (the processor) in line with the store, and `quotas` with the tenants' own quotas,
    every `interval_s`; either may be None."""

    def __init__(
        self,
        store: PlanStore,
        plans: TrackingPlans | None,
        interval_s: float,
        quotas: Quotas | None = None,
    ) -> None:
        self.store = store
        self.plans = plans
        self.quotas = quotas
        self.interval_s = interval_s
        self.refreshes = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        """Read the tenants' quotas, and the plans in force if they changed; True when those did."""
        if self.quotas is not None:
            self.quotas.replace(await QuotaStore(self.store.pool).all())
        if self.plans is None:
            return False
        marker = await self.store.marker()
        if marker == self.plans.version:
            return False
        compiled: dict[str, Plan] = {}
        for tenant, version in (await self.store.current()).items():
            try:
                compiled[tenant] = parse_plan(version.document)
            except PlanError as error:
                # Checked when applied; a release that reads plans more strictly keeps the others.
                log.error(
                    "tracking plan not usable; the tenant has none",
                    extra={"tenant": tenant, "version": version.version, "error": str(error)},
                )
        self.plans.replace(compiled, marker)
        self.refreshes += 1
        log.info("tracking plans loaded", extra={"tenants": len(compiled), "marker": marker})
        return True

    async def start(self) -> None:
        """Load the plans in force (a failure is logged; polling retries), then poll."""
        try:
            await self.refresh()
        except POSTGRES_ERRORS as error:
            self.failures += 1
            log.warning("tracking plans not loaded", extra={"error": repr(error)})
        self._task = asyncio.create_task(self._poll(), name="plan-refresher")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except POSTGRES_ERRORS as error:
                self.failures += 1
                log.warning("tracking plans not refreshed", extra={"error": repr(error)})

    async def shutdown(self, _left: float = 0.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
