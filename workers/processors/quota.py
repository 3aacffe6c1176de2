"""Per-tenant quotas: activities per second, with a burst, as token buckets.

A request whose activities exceed what its tenant's bucket holds is refused as a whole with
RESOURCE_EXHAUSTED and a `RetryInfo` delay: the time until the bucket holds them. One noisy tenant then
waits for its own tokens, and the others' requests go on as before. A request larger than the burst
is let through when the bucket is full, and leaves it in debt, so that a burst smaller than a batch
slows a tenant down but never locks it out.

The default (`quota_rate`, `quota_burst`) applies to every tenant without one of its own; each
tenant's own is kept in PostgreSQL (`tenant_quotas`, `activity-collector quotas set`) and read with the
tracking plans (`workers.processors.plan_store`). A rate of 0 means no quota.

The doors ask twice: `check` as soon as a request's activities are counted, from its framing alone,
so that a tenant over its quota is refused before anything of its request is parsed or validated,
and `take` once the request is known to be valid, which takes the tokens. Both run on the event loop
with no await between them, so a request `check` let through is not refused by `take`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import asyncpg


@dataclass(frozen=True, slots=True)
class Quota:
    rate: float
    """Activities per second, sustained; 0: no quota."""
    burst: float
    """Most activities taken at once after a pause."""


class QuotaExceeded(Exception):
    def __init__(self, reason: str, retry_delay_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_delay_s = retry_delay_s
        """Seconds until the quota holds the request; a door that holds the refusal shortens it."""

    def __str__(self) -> str:
        return f"{self.reason}: retry in {self.retry_delay_s:.3f} s"


@dataclass
class QuotaStats:
    """Counters since start, by tenant: activities refused over quota, and requests refused."""

    refused: Counter[str] = field(default_factory=Counter)
    refused_requests: Counter[str] = field(default_factory=Counter)


class Quotas:
    def __init__(
        self, default: Quota, clock: Callable[[], float] = time.monotonic, max_tenants: int = 100_000
    ) -> None:
        self.default = default
        self._own: dict[str, Quota] = {}
        self._buckets: dict[str, list[float]] = {}  # tenant -> [tokens, last refill time]
        self._clock = clock
        self._max_tenants = max_tenants
        self.stats = QuotaStats()

    def replace(self, own: Mapping[str, Quota]) -> None:
        """Each tenant's own quota (the others get the default)."""
        self._own = dict(own)

    def quota(self, tenant: str) -> Quota:
        return self._own.get(tenant, self.default)

    def check(self, tenant: str, count: int) -> None:
        """Raise QuotaExceeded (counted) when `tenant`'s bucket cannot hold `count` activities now;
        take nothing otherwise."""
        self._admit(tenant, count, take=False)

    def take(self, tenant: str, count: int) -> None:
        """Take `count` activities from `tenant`'s bucket, or raise QuotaExceeded with the delay."""
        self._admit(tenant, count, take=True)

    def _admit(self, tenant: str, count: int, take: bool) -> None:
        quota = self._own.get(tenant, self.default)
        if quota.rate <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            if len(self._buckets) >= self._max_tenants:
                self._buckets.clear()
            bucket = self._buckets[tenant] = [quota.burst, now]
        tokens = min(quota.burst, bucket[0] + (now - bucket[1]) * quota.rate)
        bucket[1] = now
        bucket[0] = tokens
        need = min(float(count), quota.burst)
        if tokens < need:
            self.stats.refused[tenant] += count
            self.stats.refused_requests[tenant] += 1
            delay = (need - tokens) / quota.rate
            raise QuotaExceeded(
                f"tenant {tenant} is over its quota of {quota.rate:g} activities/s (burst {quota.burst:g})",
                delay,
            )
        if take:
            bucket[0] = tokens - count


def default_quota(rate: float, burst: float) -> Quota:
    """The quota of settings: a burst of 0 is one second of the rate (at least one activity)."""
    return Quota(rate, burst if burst > 0 else max(rate, 1.0))


class QuotaStore:
    """Tenants' own quotas in PostgreSQL (`tenant_quotas`)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def set(self, tenant: str, rate: float, burst: float) -> Quota:
        quota = default_quota(rate, burst)
        await self.pool.execute(
            "INSERT INTO tenant_quotas (tenant_id, rate, burst) VALUES ($1, $2, $3)"
            " ON CONFLICT (tenant_id) DO UPDATE SET rate = $2, burst = $3, updated_at = now()",
            tenant,
            quota.rate,
            quota.burst,
        )
        return quota

    async def clear(self, tenant: str) -> bool:
        result = await self.pool.execute("DELETE FROM tenant_quotas WHERE tenant_id = $1", tenant)
        return str(result).split()[-1] != "0"

    async def all(self) -> dict[str, Quota]:
        rows = await self.pool.fetch("SELECT tenant_id, rate, burst FROM tenant_quotas ORDER BY tenant_id")
        return {r["tenant_id"]: Quota(float(r["rate"]), float(r["burst"])) for r in rows}
