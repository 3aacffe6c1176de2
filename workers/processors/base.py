"""The processor seam: an ordered list of steps between validation and enrichment.

A processor looks at one valid activity of one tenant and keeps it (returns None), or returns a
`Verdict`: reject it (the caller gets a `Rejection` for it, with the processor's reason), drop it
(the caller sees it accepted, it is not stored; counted per processor and reason, for operators), or
flag it (stored, with the rules it broke in its row's `plan_violations`; counted per processor and
rule). The first processor that rejects or
drops an activity decides; the others do not see it. Processors are synchronous and cheap: they run on
the event loop, inside the request, on parsed activities, in the order the configuration lists them.
A processor that can tell from an activity's raw bytes that it would keep it (`screen`; the tracking
plans do, in C) leaves such activities on the compiled path, unparsed.

Adding a processor touches neither the doors nor storage: implement `Processor`, build it in
`workers.processors.build_processors` from its settings. A processor says which tenants it judges
(`applies`; the tracking plans: tenants with a plan), so that the doors keep the other tenants'
requests on the compiled path, unparsed.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from core.proto.activity.v1 import activity_pb2 as pb

REFUSED_BY_PROCESSOR = pb.REJECTION_REASON_REFUSED_BY_PROCESSOR


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
    rejection: int = REFUSED_BY_PROCESSOR
    """The caller's `RejectionReason` when rejected."""
    rules: tuple[str, ...] = ()
    """Flagged: every rule the activity broke (stored in its row's `plan_violations`, each counted);
    empty means `reason` alone."""

    @classmethod
    def reject(cls, reason: str, field: str, message: str, rejection: int = REFUSED_BY_PROCESSOR) -> Verdict:
        return cls(Action.REJECT, reason, field, message, rejection)

    @classmethod
    def drop(cls, reason: str) -> Verdict:
        return cls(Action.DROP, reason)

    @classmethod
    def flag(cls, reason: str, rules: tuple[str, ...] = ()) -> Verdict:
        return cls(Action.FLAG, reason, rules=rules)

    @property
    def flags(self) -> tuple[str, ...]:
        return self.rules or (self.reason,)


class Processor(Protocol):
    """One step. `name` appears in rejections' messages and in the metrics' `processor` label."""

    name: str

    @property
    def active(self) -> bool:
        """Whether the processor may judge any activity at all now (the plans with no plan: no)."""
        ...

    def applies(self, tenant: str) -> bool:
        """Whether the processor judges `tenant`'s activities; when no processor does, the doors keep
        that tenant's requests on the compiled path, unparsed."""
        ...

    def process(self, tenant: str, activity: pb.Activity) -> Verdict | None:
        """Judge one valid activity of `tenant`; None keeps it unchanged. Must not raise for any
        valid activity: an exception here fails the request (UNAVAILABLE), not the activity."""
        ...

    def screen(self, tenant: str, raw: bytes, spans: bytes) -> tuple[bytes, bytes] | None:
        """Sort the compiled path's spans of `raw` (packed as `core.fastpath.check` returns them)
        into those `process` would certainly keep unchanged, which then stay unparsed, and those it
        must judge. None: the processor cannot tell from the bytes, and judges every activity."""
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
    flags: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """The rules each flagged kept activity broke, by its index in the request."""


class ProcessorChain:
    """The configured processors, in order. With none, `active` is False and the doors skip the seam
    altogether (activities then keep the compiled path's byte spans, unparsed)."""

    def __init__(self, processors: Sequence[Processor] = ()) -> None:
        self.processors = tuple(processors)
        self.stats = ProcessorStats()
        self._stopped = False

    @property
    def active(self) -> bool:
        """Some processor may judge some activity; False: the doors skip the seam."""
        # Loops rather than any() over a generator: both are asked on every request.
        for p in self.processors:  # noqa: SIM110
            if p.active:
                return True
        return False

    def applies(self, tenant: str) -> bool:
        """Some processor judges `tenant`'s activities (so that the doors must parse them)."""
        for p in self.processors:  # noqa: SIM110
            if p.applies(tenant):
                return True
        return False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.processors)

    async def start(self) -> None:
        """Processors hold no resources of their own yet; the chain has a lifecycle like every stage."""

    async def shutdown(self, timeout: float = 0.0) -> None:
        self._stopped = True

    def screen(self, tenant: str, raw: bytes, spans: bytes) -> tuple[bytes, bytes]:
        """The spans every processor judging `tenant` would keep unchanged (they stay unparsed), and
        the spans to parse and `run`. An activity one processor must judge goes through the whole
        chain, in order, as any parsed activity does."""
        keep = spans
        judge = b""
        for processor in self.processors:
            if not keep:
                break
            if not processor.applies(tenant):
                continue
            screened = processor.screen(tenant, raw, keep)
            if screened is None:
                return b"", spans
            keep, to_judge = screened
            if to_judge:
                judge += to_judge
        return keep, judge

    def run(self, tenant: str, items: Iterable[tuple[int, pb.Activity]]) -> ChainResult:
        kept: list[tuple[int, pb.Activity]] = []
        refused: list[Refusal] = []
        flags: dict[int, tuple[str, ...]] = {}
        dropped = 0
        stats = self.stats
        processors = [p for p in self.processors if p.applies(tenant)]
        for index, activity in items:
            outcome = None
            flagged: tuple[str, ...] = ()
            for processor in processors:
                verdict = processor.process(tenant, activity)
                if verdict is None:
                    continue
                key = (processor.name, verdict.reason)
                if verdict.action is Action.FLAG:
                    for rule in verdict.flags:
                        stats.flagged[(processor.name, rule)] += 1
                    flagged += verdict.flags
                    continue
                outcome = (processor.name, verdict)
                if verdict.action is Action.REJECT:
                    stats.rejected[key] += 1
                else:
                    stats.dropped[key] += 1
                break
            if outcome is None:
                kept.append((index, activity))
                if flagged:
                    flags[index] = flagged
            elif outcome[1].action is Action.REJECT:
                refused.append(Refusal(index, activity.id, outcome[0], outcome[1]))
            else:
                dropped += 1
        return ChainResult(kept, refused, dropped, flags)
