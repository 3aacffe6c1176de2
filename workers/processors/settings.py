"""Settings of the processors, under `[processors]`: which run, and their rules."""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.limits import ConfigError
from workers.processors.action_filter import parse_patterns


@dataclass(frozen=True)
class ProcessorSettings:
    """The processors between validation and enrichment. With every rule empty and no tracking plan,
    none runs and the seam costs nothing."""

    reject_actions: str = ""
    """`action_filter`: comma-separated action patterns (globs: `test_*`) whose activities are rejected
    (REJECTION_REASON_REFUSED_BY_PROCESSOR, field `action`). Empty: none."""
    drop_actions: str = ""
    """`action_filter`: comma-separated action patterns whose activities are acknowledged but not
    stored, counted per pattern (`activity_collector_processor_activities_total`). Empty: none."""
    plans: bool = True
    """`plan`: apply each tenant's tracking plan (`activity-collector plans apply`, kept in PostgreSQL).
    Tenants without a plan are not looked at."""
    plan_refresh_s: float = 2.0
    """`plan`: how often each collector polls PostgreSQL for changed plans; a plan applied takes effect
    on every collector within this time."""
    rejections_store: bool = True
    """Keep every rejected activity (its bytes, reason, field, tenant, time) in ClickHouse's
    `rejected_activities` for `rejections_ttl_days` (`activity-collector rejections`)."""
    rejections_per_tenant_minute: int = 1000
    """Most rejected activities kept per tenant and minute; beyond it only counts are kept
    (`activity_collector_rejections_kept_total{outcome="over_cap"}`)."""
    rejections_ttl_days: int = 7
    """How long rejected activities are kept (the TTL of `rejected_activities`, set at start)."""

    def validate(self) -> None:
        parse_patterns("reject_actions", self.reject_actions)
        parse_patterns("drop_actions", self.drop_actions)
        if not 0 < self.plan_refresh_s < math.inf:
            raise ConfigError(f"plan_refresh_s: must be a finite number above 0, got {self.plan_refresh_s}")
        if self.rejections_per_tenant_minute < 0:
            raise ConfigError(
                f"rejections_per_tenant_minute: must be zero or more, got {self.rejections_per_tenant_minute}"
            )
        if not 1 <= self.rejections_ttl_days <= 3650:
            raise ConfigError(f"rejections_ttl_days: must be from 1 to 3650, got {self.rejections_ttl_days}")
