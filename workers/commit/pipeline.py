"""The worker pipeline between the gRPC handlers and ClickHouse: admission, enrichment, then a commit path.

    submit() ──► intake queue ──► enrich workers ──► commit queue ──► commit path ──► store
      │                                                                   │
      └──────────────── future resolved when the commit path answers ◄────┘

Admission is bounded by activities, not requests: `queue_capacity` activities may be between submit()
and their answer. A submit that would pass it is refused at once with `Overloaded` (the caller answers
RESOURCE_EXHAUSTED with a retry delay), so memory stays bounded whatever the offered load.

The commit path (`workers.commit.base.Commit`) is one of two, chosen by whether a spool is given:
`workers.commit.direct.DirectCommit` (group commit into the store, answered once committed) or
`workers.commit.spooled.SpooledCommit` (answered once fsynced in the spool, drained into the store
behind).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from core import fastpath
from core.fastpath import EnrichmentKeys
from core.proto.activity.v1 import activity_pb2 as pb
from workers.commit.base import Commit, Encoded, Overloaded, PipelineStats, Unavailable
from workers.commit.deadletters import DeadLetterSink
from workers.commit.direct import DirectCommit
from workers.commit.settings import PipelineSettings
from workers.commit.spool import Spool
from workers.commit.spooled import SpooledCommit
from workers.enrichment.enricher import Enricher, activity_keys
from workers.rows import FastSpans, encode_rows
from workers.storage.contract import RowSink

__all__ = ["ENRICH_GROUP_ROWS", "Overloaded", "Pipeline", "PipelineStats", "Submission", "Unavailable"]

log = logging.getLogger(__name__)


ENRICH_GROUP_ROWS = 10_000
"""Most activities an enrichment worker takes from the intake queue at once (whole requests)."""


@dataclass
class _EnrichmentPlan:
    """A submission's activities as enrichment takes them, in request order (identity links apply to
    the activities after them), and how to hand the results back: in span order for the fast ones, by
    index for the parsed ones."""

    keys: list[EnrichmentKeys]
    order: list[tuple[int, bool, int]] | None
    """(index, fast, position) per key when the submission has both kinds; None when it has one."""
    fast_count: int
    item_indexes: list[int]

    @classmethod
    def of(cls, sub: Submission) -> _EnrichmentPlan:
        fast = sub.fast
        fast_keys = fastpath.keys(fast.raw, fast.spans) if fast is not None and fast.count else []
        item_keys = [activity_keys(a) for _, a in sub.items]
        item_indexes = [index for index, _ in sub.items]
        if not item_keys or not fast_keys:
            return cls(fast_keys or item_keys, None, len(fast_keys), item_indexes)
        assert fast is not None
        fast_indexes = struct.unpack(f"<{3 * len(fast_keys)}I", fast.spans)[0::3]
        order = sorted(
            [(index, True, n) for n, index in enumerate(fast_indexes)]
            + [(index, False, n) for n, index in enumerate(item_indexes)]
        )
        keys = [fast_keys[n] if is_fast else item_keys[n] for _, is_fast, n in order]
        return cls(keys, order, len(fast_keys), item_indexes)

    def split(self, extras: list[bytes]) -> tuple[dict[int, bytes] | None, list[bytes] | None]:
        if self.order is None:
            if self.fast_count:
                return None, extras
            return dict(zip(self.item_indexes, extras, strict=True)), None
        fast_extras = [b""] * self.fast_count
        item_extras: dict[int, bytes] = {}
        for (index, is_fast, n), extra in zip(self.order, extras, strict=True):
            if is_fast:
                fast_extras[n] = extra
            else:
                item_extras[index] = extra
        return item_extras, fast_extras


@dataclass
class Submission:
    """One request's valid activities, on their way to the store.

    They come in two forms: `items`, parsed activities (index, message) that enrichment serializes,
    and `fast`, activities the compiled validator vouched for, kept as byte spans of `raw` that
    enrichment frames without parsing (see `core.fastpath`).
    """

    items: Sequence[tuple[int, pb.Activity]]
    tenant: str
    received_ns: int
    sent_ns: int | None
    skew_ns: int
    """Correction applied to occurred_at: receive time minus sent_at, or 0 within the tolerance."""
    future: asyncio.Future[dict[int, str]]
    fast: FastSpans | None = None
    flags: Mapping[int, Sequence[str]] | None = None
    """Rules of the tenant's tracking plan each flagged parsed activity broke, by index."""

    @property
    def count(self) -> int:
        return len(self.items) + (self.fast.count if self.fast is not None else 0)


class Pipeline:
    """Lifecycle: `start()` returns at once; `shutdown()` is idempotent, safe without start, refuses new
    work, lets what was submitted reach the store until the deadline, then fails what is left."""

    def __init__(
        self,
        settings: PipelineSettings,
        store: RowSink,
        spool: Spool | None = None,
        dead_letters: DeadLetterSink | None = None,
        enricher: Enricher | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.spool = spool
        self.dead_letters = dead_letters
        self.enricher = enricher
        self.stats = PipelineStats()
        self._pending = 0
        # Requests not yet answered by the commit path (their futures may be cancelled before), and
        # who waits for some of them to be.
        self._unsettled: set[asyncio.Future[dict[int, str]]] = set()
        self._settle_waiters: list[tuple[set[asyncio.Future[dict[int, str]]], asyncio.Event]] = []
        self._intake: asyncio.Queue[Submission] = asyncio.Queue()
        self._commit_queue: asyncio.Queue[Encoded] = asyncio.Queue()
        self.commit: Commit
        """Where encoded requests go: without a spool, straight to the store; with one, through it."""
        if spool is None:
            self.commit = DirectCommit(settings, store, self._commit_queue, self.stats, self._settle)
        else:
            self.commit = SpooledCommit(
                settings, store, spool, dead_letters, self._commit_queue, self.stats, self._settle
            )
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = False
        self._started = False
        self._stopped = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def on_insert(self) -> Callable[[int, float], None] | None:
        """Called after each committed insert with its rows and seconds (for metrics histograms)."""
        return self.commit.on_insert

    @on_insert.setter
    def on_insert(self, hook: Callable[[int, float], None] | None) -> None:
        self.commit.on_insert = hook

    @property
    def store_ready(self) -> asyncio.Event | None:
        """Set once the store is connected (None: it is already). The drainer waits for it; set it
        before `start()`."""
        return self.commit.store_ready

    @store_ready.setter
    def store_ready(self, ready: asyncio.Event | None) -> None:
        self.commit.store_ready = ready

    @property
    def pending(self) -> int:
        """Activities submitted and not yet committed or failed."""
        return self._pending

    async def settled(self) -> None:
        """Wait until every request submitted so far has been answered (durable, or failed)."""
        waiter = (set(self._unsettled), asyncio.Event())
        if not waiter[0]:
            return
        self._settle_waiters.append(waiter)
        try:
            await waiter[1].wait()
        finally:
            self._settle_waiters.remove(waiter)

    @property
    def retry_delay_s(self) -> float:
        return self.settings.retry_delay_ms / 1000

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._accepting = True
        for n in range(self.settings.enrich_workers):
            self._tasks.append(asyncio.create_task(self._enrich_worker(), name=f"enrich-{n}"))
        await self.commit.start()

    def submit(self, submission: Submission) -> None:
        """Queue a request's valid activities; `submission.future` resolves when they are committed."""
        n = submission.count
        if not self._accepting:
            raise Unavailable("the collector is shutting down", self.retry_delay_s)
        if self._pending + n > self.settings.queue_capacity:
            self.stats.refused_by_tenant[submission.tenant] += n
            raise Overloaded(
                f"the collector holds {self._pending} uncommitted activities and its queue_capacity is "
                f"{self.settings.queue_capacity}",
                self.retry_delay_s,
            )
        self._pending += n
        self._unsettled.add(submission.future)
        self._idle.clear()
        self.stats.submitted += n
        self._intake.put_nowait(submission)

    async def _enrich_worker(self) -> None:
        while True:
            # Every submission waiting is enriched together: their lookups share one PostgreSQL query
            # per kind and tenant, so that many small requests cost what one large request does.
            subs = [await self._intake.get()]
            taken = subs[0].count
            while taken < ENRICH_GROUP_ROWS and not self._intake.empty():
                subs.append(self._intake.get_nowait())
                taken += subs[-1].count
            extras: list[tuple[dict[int, bytes] | None, list[bytes] | None]] = [(None, None)] * len(subs)
            if self.enricher is not None:
                extras = await self._enrichment(subs)
            for sub, (item_extras, fast_extras) in zip(subs, extras, strict=True):
                try:
                    rows = encode_rows(
                        sub.items,
                        sub.tenant,
                        sub.received_ns,
                        sub.sent_ns,
                        sub.skew_ns,
                        sub.fast,
                        item_extras,
                        fast_extras,
                        sub.flags,
                    )
                except Exception as error:
                    log.exception("encoding failed", extra={"error": repr(error)})
                    self._settle(
                        sub.count, sub.tenant, sub.future, Unavailable(f"encoding failed: {error}", 0)
                    )
                    continue
                self._commit_queue.put_nowait(Encoded(rows, sub.tenant, sub.future))

    async def _enrichment(
        self, subs: list[Submission]
    ) -> list[tuple[dict[int, bytes] | None, list[bytes] | None]]:
        """Each submission's enrichment fields: by index for its parsed activities, in span order for
        its fast ones. One enrich call per tenant, over its submissions' activities in arrival order."""
        assert self.enricher is not None
        plans = [_EnrichmentPlan.of(sub) for sub in subs]
        by_tenant: dict[str, list[int]] = {}
        for n, sub in enumerate(subs):
            by_tenant.setdefault(sub.tenant, []).append(n)
        out: list[tuple[dict[int, bytes] | None, list[bytes] | None]] = [(None, None)] * len(subs)
        for tenant, members in by_tenant.items():
            keys: list[EnrichmentKeys] = []
            for n in members:
                keys.extend(plans[n].keys)
            try:
                extras = await self.enricher.enrich(tenant, keys)
            except Exception as error:  # never lose activities over their enrichment
                self.stats.enrichment_failures += len(keys)
                log.exception("enrichment failed; storing without it", extra={"error": repr(error)})
                continue
            at = 0
            for n in members:
                size = len(plans[n].keys)
                out[n] = plans[n].split(extras[at : at + size])
                at += size
        return out

    def _settle(
        self,
        count: int,
        tenant: str,
        future: asyncio.Future[dict[int, str]],
        error: Exception | None,
        assigned: dict[int, str] | None = None,
    ) -> None:
        self._pending -= count
        self._unsettled.discard(future)
        for waiting, answered in self._settle_waiters:
            waiting.discard(future)
            if not waiting:
                answered.set()
        if error is not None:
            self.stats.failed_by_tenant[tenant] += count
        if not future.done():
            if error is None:
                future.set_result(assigned or {})
            else:
                future.set_exception(error)
        if self._pending == 0:
            self._idle.set()

    async def shutdown(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._accepting = False
        self.commit.stop_accepting()
        if not self._started:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.error(
                "shutdown deadline passed with activities uncommitted", extra={"pending": self._pending}
            )
        await self.commit.drain(deadline)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self.commit.cancel(), return_exceptions=True)
        failure = Unavailable("the collector shut down before the activities were stored", self.retry_delay_s)
        for queue in (self._intake, self._commit_queue):
            while not queue.empty():
                item = queue.get_nowait()
                count = item.count if isinstance(item, Submission) else item.rows.count
                self._settle(count, item.tenant, item.future, failure)
        self.commit.close()
