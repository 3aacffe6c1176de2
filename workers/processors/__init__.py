"""Processors: the ordered steps between validation and enrichment that may reject, drop or flag."""

from __future__ import annotations

from workers.processors.action_filter import ActionFilter, parse_patterns
from workers.processors.base import (
    Action,
    ChainResult,
    Processor,
    ProcessorChain,
    ProcessorStats,
    Refusal,
    Verdict,
)
from workers.processors.plan import Plan, PlanError, TrackingPlans, load_document, parse_plan
from workers.processors.settings import ProcessorSettings
from workers.processors.suppression import Suppressions

__all__ = [
    "Action",
    "ActionFilter",
    "ChainResult",
    "Plan",
    "PlanError",
    "Processor",
    "ProcessorChain",
    "ProcessorSettings",
    "ProcessorStats",
    "Refusal",
    "Suppressions",
    "TrackingPlans",
    "Verdict",
    "build_processors",
    "load_document",
    "parse_plan",
]


def build_processors(
    settings: ProcessorSettings,
    plans: TrackingPlans | None = None,
    suppressions: Suppressions | None = None,
) -> ProcessorChain:
    """The chain the settings describe, in its fixed order: `suppression` (erased and opted-out
    persons, when given: kept current by `workers.processors.suppression.SuppressionRefresher`), then
    `action_filter`, then `plan` (the tenants' tracking plans, when given: kept current by
    `workers.processors.plan_store.PlanRefresher`)."""
    processors: list[Processor] = []
    if suppressions is not None:
        processors.append(suppressions)
    reject = parse_patterns("reject_actions", settings.reject_actions)
    drop = parse_patterns("drop_actions", settings.drop_actions)
    if reject or drop:
        processors.append(ActionFilter(reject, drop))
    if plans is not None:
        processors.append(plans)
    return ProcessorChain(processors)
