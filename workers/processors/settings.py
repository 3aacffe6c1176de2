"""Settings of the processors, under `[processors]`: which run, and their rules."""

from __future__ import annotations

from dataclasses import dataclass

from workers.processors.action_filter import parse_patterns


@dataclass(frozen=True)
class ProcessorSettings:
    """The processors between validation and enrichment. With every rule empty, none runs and the
    seam costs nothing."""

    reject_actions: str = ""
    """`action_filter`: comma-separated action patterns (globs: `test_*`) whose activities are rejected
    (REJECTION_REASON_REFUSED_BY_PROCESSOR, field `action`). Empty: none."""
    drop_actions: str = ""
    """`action_filter`: comma-separated action patterns whose activities are acknowledged but not
    stored, counted per pattern (`activity_collector_processor_activities_total`). Empty: none."""

    def validate(self) -> None:
        parse_patterns("reject_actions", self.reject_actions)
        parse_patterns("drop_actions", self.drop_actions)
