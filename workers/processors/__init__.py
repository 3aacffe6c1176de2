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
from workers.processors.settings import ProcessorSettings

__all__ = [
    "Action",
    "ActionFilter",
    "ChainResult",
    "Processor",
    "ProcessorChain",
    "ProcessorSettings",
    "ProcessorStats",
    "Refusal",
    "Verdict",
    "build_processors",
]


def build_processors(settings: ProcessorSettings) -> ProcessorChain:
    """The chain the settings describe, in its fixed order."""
    processors: list[Processor] = []
    reject = parse_patterns("reject_actions", settings.reject_actions)
    drop = parse_patterns("drop_actions", settings.drop_actions)
    if reject or drop:
        processors.append(ActionFilter(reject, drop))
    return ProcessorChain(processors)
