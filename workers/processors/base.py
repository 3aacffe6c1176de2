"""The processor seam: an ordered list of steps between validation and enrichment.

A processor looks at one valid activity of one tenant and keeps it (returns None), or returns a
`Verdict`: reject it (the caller gets a `Rejection` for it, with the processor's reason), drop it
(the caller sees it accepted, it is not stored; counted per processor and reason, for operators), or
flag it (stored as usual; counted per processor and reason). The first processor that rejects or
drops an activity decides; the others do not see it. Processors are synchronous and cheap: they run on
the event loop, inside the request, on parsed activities, in the order the configuration lists them.

Adding a processor touches neither the doors nor storage: implement `Processor`, build it in
`workers.processors.build_processors` from its settings.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from core.proto.activity.v1 import activity_pb2 as pb


class Action(enum.Enum):
    REJECT = "reject"
    DROP = "drop"
    FLAG = "flag"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a processor decided about one activity. `reason` is a short machine-readable name (a rule
    name, counted in metrics); `field` and `message` go into the caller's `Rejection` when rejected."""

    action: Action
    reason: str
    field: str = ""
    message: str = ""

    @classmethod
    def reject(cls, reason: str, field: str, message: str) -> Verdict:
        return cls(Action.REJECT, reason, field, message)

    @classmethod
    def drop(cls, reason: str) -> Verdict:
        return cls(Action.DROP, reason)

    @classmethod
    def flag(cls, reason: str) -> Verdict:
        return cls(Action.FLAG, reason)


class Processor(Protocol):
    """One step. `name` appears in rejections' messages and in the metrics' `processor` label."""

    name: str

    def process(self, tenant: str, activity: pb.Activity) -> Verdict | None:
        """Judge one valid activity of `tenant`; None keeps it unchanged. Must not raise for any
        valid activity: an exception here fails the request (UNAVAILABLE), not the activity."""
        ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """An activity a processor rejected: its index in the request, and the verdict."""

    index: int
    activity_id: str
    processor: str
    verdict: Verdict


@dataclass
class ProcessorStats:
    """Counters since start, by (processor, reason): activities rejected, dropped, flagged."""

    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    flagged: Counter[tuple[str, str]] = field(default_factory=Counter)


@dataclass(slots=True)
class ChainResult:
    kept: list[tuple[int, pb.Activity]]
    refused: list[Refusal]
    dropped: int


class ProcessorChain:
    """The configured processors, in order. With none, `active` is False and the doors skip the seam
    altogether (activities then keep the compiled path's byte spans, unparsed)."""

    def __init__(self, processors: Sequence[Processor] = ()) -> None:
        self.processors = tuple(processors)
        self.stats = ProcessorStats()
        self._stopped = False

    @property
    def active(self) -> bool:
        return bool(self.processors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.processors)

    async def start(self) -> None:
        """Processors hold no resources of their own yet; the chain has a lifecycle like every stage."""

    async def shutdown(self, timeout: float = 0.0) -> None:
        self._stopped = True

    def run(self, tenant: str, items: Iterable[tuple[int, pb.Activity]]) -> ChainResult:
        kept: list[tuple[int, pb.Activity]] = []
        refused: list[Refusal] = []
        dropped = 0
        stats = self.stats
        for index, activity in items:
            outcome = None
            for processor in self.processors:
                verdict = processor.process(tenant, activity)
                if verdict is None:
                    continue
                key = (processor.name, verdict.reason)
                if verdict.action is Action.FLAG:
                    stats.flagged[key] += 1
                    continue
                outcome = (processor.name, verdict)
                if verdict.action is Action.REJECT:
                    stats.rejected[key] += 1
                else:
                    stats.dropped[key] += 1
                break
            if outcome is None:
                kept.append((index, activity))
            elif outcome[1].action is Action.REJECT:
                refused.append(Refusal(index, activity.id, outcome[0], outcome[1]))
            else:
                dropped += 1
        return ChainResult(kept, refused, dropped)
