"""The worker pipeline between the gRPC handlers and ClickHouse: intake, enrichment, group commit, insert.

    submit() ──► intake queue ──► enrich workers ──► commit queue ──► batcher ──► insert workers ──► store
      │                                                                                  │
      └──────────────── future resolved when the insert that holds the batch commits ◄───┘

Admission is bounded by activities, not requests: `queue_capacity` activities may be between submit()
and their commit. A submit that would pass it is refused at once with `Overloaded` (the caller answers
RESOURCE_EXHAUSTED with a retry delay), so memory stays bounded whatever the offered load.

Group commit: the batcher waits for an insert worker to be free, then takes every waiting batch (up to
`insert_max_rows` rows), lingering up to `flush_interval_ms` for more while the insert is small. Under
light load a request waits at most the linger; under heavy load batches pile up while inserts run and
the next insert takes them all, so inserts grow with the load and their count does not.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from collector.config import PipelineSettings
from collector.proto.activity.v1 import activity_pb2 as pb
from workers.enrich import EncodedRows, FastSpans, encode_rows, envelope
from workers.storage import ActivityStore, StoreError, classify

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The pipeline holds `queue_capacity` activities already; retry after `retry_delay_s`."""

    def __init__(self, message: str, retry_delay_s: float) -> None:
        super().__init__(message)
        self.retry_delay_s = retry_delay_s


class Unavailable(Exception):
    """The batch was not stored (the store failed, or the pipeline is shutting down)."""

    def __init__(self, message: str, retry_delay_s: float) -> None:
        super().__init__(message)
        self.retry_delay_s = retry_delay_s


@dataclass
class Submission:
    """One request's valid activities, on their way to the store.

    They come in two forms: `items`, parsed activities (index, message) that enrichment serializes,
    and `fast`, activities the compiled validator vouched for, kept as byte spans of `raw` that
    enrichment frames without parsing (see `collector.fastpath`).
    """

    items: Sequence[tuple[int, pb.Activity]]
    tenant: str
    received_ns: int
    sent_ns: int | None
    skew_ns: int
    """Correction applied to occurred_at: receive time minus sent_at, or 0 within the tolerance."""
    future: asyncio.Future[dict[int, str]]
    fast: FastSpans | None = None

    @property
    def count(self) -> int:
        return len(self.items) + (self.fast.count if self.fast is not None else 0)


@dataclass
class _Encoded:
    rows: EncodedRows
    future: asyncio.Future[dict[int, str]]


@dataclass
class PipelineStats:
    """Counters since start. `inserts` counts committed inserts; rows are activities."""

    submitted: int = 0
    refused: int = 0
    committed: int = 0
    failed: int = 0
    inserts: int = 0
    insert_failures: int = 0
    insert_retries: int = 0
    insert_sizes: list[int] = field(default_factory=list)

    def record_insert(self, rows: int) -> None:
        self.inserts += 1
        self.committed += rows
        # Keep the recent sizes only: enough to report, bounded in memory.
        if len(self.insert_sizes) >= 1024:
            del self.insert_sizes[:512]
        self.insert_sizes.append(rows)


class Pipeline:
    """Lifecycle: `start()` returns at once; `shutdown()` is idempotent, safe without start, refuses new
    work, lets what was submitted reach the store until the deadline, then fails what is left."""

    def __init__(self, settings: PipelineSettings, store: ActivityStore) -> None:
        self.settings = settings
        self.store = store
        self.stats = PipelineStats()
        self.on_insert: Callable[[int, float], None] | None = None
        """Called after each committed insert with its rows and seconds (for metrics histograms)."""
        self._pending = 0
        self._intake: asyncio.Queue[Submission] = asyncio.Queue()
        self._commit: asyncio.Queue[_Encoded] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._inserts: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.insert_workers)
        self._executor: ThreadPoolExecutor | None = None
        self._accepting = False
        self._started = False
        self._stopped = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Activities submitted and not yet committed or failed."""
        return self._pending

    @property
    def retry_delay_s(self) -> float:
        return self.settings.retry_delay_ms / 1000

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._accepting = True
        self._executor = ThreadPoolExecutor(self.settings.insert_workers, thread_name_prefix="insert")
        for n in range(self.settings.enrich_workers):
            self._tasks.append(asyncio.create_task(self._enrich_worker(), name=f"enrich-{n}"))
        self._tasks.append(asyncio.create_task(self._batcher(), name="batcher"))

    def submit(self, submission: Submission) -> None:
        """Queue a request's valid activities; `submission.future` resolves when they are committed."""
        n = submission.count
        if not self._accepting:
            raise Unavailable("the collector is shutting down", self.retry_delay_s)
        if self._pending + n > self.settings.queue_capacity:
            self.stats.refused += n
            raise Overloaded(
                f"the collector holds {self._pending} uncommitted activities and its queue_capacity is "
                f"{self.settings.queue_capacity}",
                self.retry_delay_s,
            )
        self._pending += n
        self._idle.clear()
        self.stats.submitted += n
        self._intake.put_nowait(submission)

    async def _enrich_worker(self) -> None:
        while True:
            sub = await self._intake.get()
            try:
                rows = encode_rows(sub.items, sub.tenant, sub.received_ns, sub.sent_ns, sub.skew_ns, sub.fast)
            except Exception as error:
                log.exception("enrichment failed", extra={"error": repr(error)})
                self._settle(sub.count, sub.future, Unavailable(f"enrichment failed: {error}", 0))
                continue
            self._commit.put_nowait(_Encoded(rows, sub.future))

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        linger = self.settings.flush_interval_ms / 1000
        max_rows = self.settings.insert_max_rows
        while True:
            await self._slots.acquire()
            try:
                first = await self._commit.get()
            except asyncio.CancelledError:
                self._slots.release()
                raise
            chunks = [first]
            rows = first.rows.count
            deadline = loop.time() + linger
            while rows < max_rows:
                if self._commit.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0 or not self._accepting:
                        break
                    try:
                        async with asyncio.timeout(remaining):
                            item = await self._commit.get()
                    except TimeoutError:
                        break
                else:
                    item = self._commit.get_nowait()
                chunks.append(item)
                rows += item.rows.count
            task = asyncio.create_task(self._insert(chunks, rows))
            self._inserts.add(task)
            task.add_done_callback(self._inserts.discard)

    async def _insert(self, chunks: list[_Encoded], rows: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            payload = envelope([c.rows for c in chunks])
            error: StoreError | None = None
            for attempt in range(self.settings.insert_attempts):
                started = time.perf_counter()
                try:
                    await loop.run_in_executor(self._executor, self.store.insert_rows, payload, rows)
                except Exception as raw:
                    error = classify(raw)
                    log.warning(
                        "insert failed",
                        extra={
                            "rows": rows,
                            "attempt": attempt + 1,
                            "transient": error.transient,
                            "error": str(error),
                        },
                    )
                    if not error.transient:
                        break
                    self.stats.insert_retries += 1
                    # Exponential backoff with full jitter, capped by the delay offered to callers.
                    await asyncio.sleep(random.uniform(0, min(self.retry_delay_s, 0.05 * 2**attempt)))
                    continue
                log.debug("insert committed", extra={"rows": rows, "seconds": time.perf_counter() - started})
                self.stats.record_insert(rows)
                if self.on_insert is not None:
                    self.on_insert(rows, time.perf_counter() - started)
                for c in chunks:
                    self._settle(c.rows.count, c.future, None, c.rows.assigned_ids)
                return
            self.stats.insert_failures += 1
            failure = Unavailable(f"storing the activities failed: {error}", self.retry_delay_s)
            for c in chunks:
                self._settle(c.rows.count, c.future, failure)
        except asyncio.CancelledError:
            # Only at shutdown past its deadline: the insert may still commit, but nobody is told so.
            failure = Unavailable("the collector shut down before the insert finished", self.retry_delay_s)
            for c in chunks:
                if not c.future.done():
                    self._settle(c.rows.count, c.future, failure)
            raise
        finally:
            self._slots.release()

    def _settle(
        self,
        count: int,
        future: asyncio.Future[dict[int, str]],
        error: Exception | None,
        assigned: dict[int, str] | None = None,
    ) -> None:
        self._pending -= count
        if error is not None:
            self.stats.failed += count
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
        if not self._started:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.error(
                "shutdown deadline passed with activities uncommitted", extra={"pending": self._pending}
            )
        for task in [*self._tasks, *self._inserts]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._inserts, return_exceptions=True)
        failure = Unavailable("the collector shut down before the activities were stored", self.retry_delay_s)
        for queue in (self._intake, self._commit):
            while not queue.empty():
                item = queue.get_nowait()
                count = item.count if isinstance(item, Submission) else item.rows.count
                self._settle(count, item.future, failure)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
