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
import collections
import logging
import random
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from core import fastpath
from core.fastpath import EnrichmentKeys
from core.proto.activity.v1 import activity_pb2 as pb
from workers import priority
from workers.commit.deadletters import DeadLetter, DeadLetterSink, rows_tenant
from workers.commit.settings import PipelineSettings
from workers.commit.spool import Planned, Spool, SpoolFull
from workers.enrichment.enricher import Enricher, activity_keys
from workers.rows import EncodedRows, Envelope, FastSpans, encode_rows, envelope_bytes
from workers.storage.clickhouse import StoreError, classify
from workers.storage.contract import RowSink

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

    @property
    def count(self) -> int:
        return len(self.items) + (self.fast.count if self.fast is not None else 0)


@dataclass
class _Encoded:
    rows: EncodedRows
    tenant: str
    future: asyncio.Future[dict[int, str]]


@dataclass
class _Isolated:
    """Outcome of inserting a refused range record by one record: the rows ClickHouse took, and the
    records it refused on their own, still to be stored as dead letters."""

    stored: int
    letters: list[DeadLetter]


@dataclass
class PipelineStats:
    """Counters since start. `inserts` counts committed inserts; rows are activities."""

    submitted: int = 0
    committed: int = 0
    inserts: int = 0
    insert_failures: int = 0
    insert_retries: int = 0
    insert_sizes: list[int] = field(default_factory=list)
    dead_letter_failures: int = 0
    """Attempts to write dead letters that failed (the records stay in the spool and are tried again)."""
    enrichment_failures: int = 0
    """Activities stored without any enrichment because enriching their batch failed unexpectedly."""

    refused_by_tenant: collections.Counter[str] = field(default_factory=collections.Counter)
    """Valid activities refused because the queue or the spool was full, by tenant."""
    failed_by_tenant: collections.Counter[str] = field(default_factory=collections.Counter)
    """Admitted activities that were not stored (store failure, shutdown), by tenant."""
    dead_letters_by_tenant: collections.Counter[str] = field(default_factory=collections.Counter)
    """Activities that ClickHouse refused for good, kept in the dead-letter store, by the tenant their
    rows carry ('' when the rows do not say)."""

    @property
    def refused(self) -> int:
        return self.refused_by_tenant.total()

    @property
    def failed(self) -> int:
        return self.failed_by_tenant.total()

    @property
    def dead_letters(self) -> int:
        return self.dead_letters_by_tenant.total()

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
        # Spool mode: records durable and not yet handed to an insert, in sequence order.
        self._ready: collections.deque[tuple[int, int]] = collections.deque()
        self._ready_event = asyncio.Event()
        self._ready_rows = 0
        self._spool_executor: ThreadPoolExecutor | None = None
        self.stats = PipelineStats()
        self.on_insert: Callable[[int, float], None] | None = None
        """Called after each committed insert with its rows and seconds (for metrics histograms)."""
        self.store_ready: asyncio.Event | None = None
        """Set once the store is connected (None: it is already). The drainer waits for it; set it
        before `start()`."""
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
        if self.spool is None:
            self._tasks.append(asyncio.create_task(self._batcher(), name="batcher"))
        else:
            # The spool writer acknowledges: it is on the request path (workers.priority).
            self._spool_executor = ThreadPoolExecutor(
                1, thread_name_prefix="spool", initializer=priority.keep_current_thread
            )
            await asyncio.get_running_loop().run_in_executor(self._spool_executor, self.spool.open)
            planned = self.spool.planned()
            covered = {s for p in planned for s in range(p.first, p.last + 1)}
            counts = self.spool.pending_counts()
            self._ready.extend((seq, counts[seq]) for seq in sorted(counts) if seq not in covered)
            self._ready_rows = sum(count for _, count in self._ready)
            self._tasks.append(asyncio.create_task(self._spool_writer(), name="spool-writer"))
            self._tasks.append(asyncio.create_task(self._drainer(planned), name="drainer"))

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
                    )
                except Exception as error:
                    log.exception("encoding failed", extra={"error": repr(error)})
                    self._settle(
                        sub.count, sub.tenant, sub.future, Unavailable(f"encoding failed: {error}", 0)
                    )
                    continue
                self._commit.put_nowait(_Encoded(rows, sub.tenant, sub.future))

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
            payload = Envelope.of([c.rows for c in chunks])
            # One token for every attempt: an attempt that failed after ClickHouse stored the rows (a
            # lost answer) is then not stored twice by the next one.
            token = uuid.uuid4().hex
            error: StoreError | None = None
            for attempt in range(self.settings.insert_attempts):
                started = time.perf_counter()
                try:
                    await loop.run_in_executor(self._executor, self.store.insert_rows, payload, rows, token)
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
                    self._settle(c.rows.count, c.tenant, c.future, None, c.rows.assigned_ids)
                return
            self.stats.insert_failures += 1
            failure = Unavailable(f"storing the activities failed: {error}", self.retry_delay_s)
            for c in chunks:
                self._settle(c.rows.count, c.tenant, c.future, failure)
        except asyncio.CancelledError:
            # Only at shutdown past its deadline: the insert may still commit, but nobody is told so.
            failure = Unavailable("the collector shut down before the insert finished", self.retry_delay_s)
            for c in chunks:
                if not c.future.done():
                    self._settle(c.rows.count, c.tenant, c.future, failure)
            raise
        finally:
            self._slots.release()

    # -- spool mode: acknowledge once durable, drain into ClickHouse behind ----------------------

    async def _spool_writer(self) -> None:
        """Append every encoded request waiting, fsync once for all of them, then acknowledge them."""
        assert self.spool is not None
        loop = asyncio.get_running_loop()
        while True:
            chunks = [await self._commit.get()]
            while not self._commit.empty():
                chunks.append(self._commit.get_nowait())
            entries = [(c.rows.count, b"".join(c.rows.pieces)) for c in chunks]
            try:
                sequences = await loop.run_in_executor(self._spool_executor, self._append_durably, entries)
            except SpoolFull as full:
                for c in chunks:
                    self.stats.refused_by_tenant[c.tenant] += c.rows.count
                refusal = Overloaded(str(full), self.retry_delay_s)
                for c in chunks:
                    self._settle(c.rows.count, c.tenant, c.future, refusal)
                continue
            except OSError as error:
                log.error("spool write failed", extra={"error": str(error)})
                failure = Unavailable(f"the spool cannot be written: {error}", self.retry_delay_s)
                for c in chunks:
                    self._settle(c.rows.count, c.tenant, c.future, failure)
                continue
            for c, sequence in zip(chunks, sequences, strict=True):
                self._ready.append((sequence, c.rows.count))
                self._ready_rows += c.rows.count
                self._settle(c.rows.count, c.tenant, c.future, None, c.rows.assigned_ids)
            self._ready_event.set()

    def _append_durably(self, entries: list[tuple[int, bytes]]) -> list[int]:
        assert self.spool is not None
        sequences = self.spool.append(entries)
        self.spool.sync()
        return sequences

    async def _drainer(self, redo: list[Planned]) -> None:
        """Insert spooled records in sequence order; first the inserts planned before the last stop."""
        if self.store_ready is not None and not self.store_ready.is_set():
            log.info("spooling until the store is connected")
            await self.store_ready.wait()
        for planned in redo:
            await self._slots.acquire()
            self._spawn(self._drain_insert(planned))
        loop = asyncio.get_running_loop()
        linger = self.settings.drain_interval_ms / 1000
        max_rows = self.settings.insert_max_rows
        enough = min(max_rows, self.settings.drain_rows)
        while True:
            await self._slots.acquire()
            try:
                while not self._ready:
                    self._ready_event.clear()
                    await self._ready_event.wait()
                deadline = loop.time() + linger
                while self._accepting and self._ready_rows < enough:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._ready_event.clear()
                    try:
                        async with asyncio.timeout(remaining):
                            await self._ready_event.wait()
                    except TimeoutError:
                        break
            except asyncio.CancelledError:
                self._slots.release()
                raise
            first, rows = self._ready.popleft()
            last = first
            while self._ready and rows < max_rows and self._ready[0][0] == last + 1:
                last, count = self._ready.popleft()
                rows += count
            self._ready_rows -= rows
            self._spawn(self._drain_insert(Planned(first, last, f"spool-{first}-{last}-{uuid.uuid4().hex}")))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._inserts.add(task)
        task.add_done_callback(self._inserts.discard)

    async def _drain_insert(self, planned: Planned) -> None:
        """Insert one planned range until it is in ClickHouse. The records are safe on disk, so any
        failure but bad data is retried, with capped backoff, for as long as the collector runs; when
        ClickHouse blames the data, the records are inserted one by one and those it refuses alone go
        to the dead-letter store; the range is committed once they are stored there."""
        loop = asyncio.get_running_loop()
        attempt = 0
        isolate = False
        isolated: _Isolated | None = None
        try:
            while True:
                started = time.perf_counter()
                try:
                    if isolate:
                        if isolated is None:
                            isolated = await loop.run_in_executor(
                                self._executor, self._isolate_failure, planned
                            )
                        rows = await self._keep_dead_letters(planned, isolated)
                    else:
                        rows = await loop.run_in_executor(self._executor, self._insert_planned, planned)
                except Exception as raw:
                    error = classify(raw)
                    log.warning(
                        "spooled insert failed",
                        extra={
                            "first": planned.first,
                            "last": planned.last,
                            "attempt": attempt + 1,
                            "transient": error.transient,
                            "error": str(error),
                        },
                    )
                    if error.data and not isolate:
                        self.stats.insert_failures += 1
                        isolate = True
                        continue
                    self.stats.insert_retries += 1
                    attempt += 1
                    await asyncio.sleep(random.uniform(0, min(5.0, 0.05 * 2**attempt)))
                    continue
                self.stats.record_insert(rows)
                if self.on_insert is not None:
                    self.on_insert(rows, time.perf_counter() - started)
                return
        finally:
            self._slots.release()

    def _insert_planned(self, planned: Planned) -> int:
        assert self.spool is not None
        spool = self.spool
        spool.plan(planned)
        spooled = spool.spooled(planned.first, planned.last)
        if spooled.sequences:
            # The records are read back while the insert is written out, one at a time.
            payload = Envelope(spooled.nbytes, lambda: (r.rows for r in spool.records(spooled.sequences)))
            self.store.insert_rows(payload, spooled.rows, token=planned.token)
        spool.commit(planned)
        return spooled.rows

    def _isolate_failure(self, planned: Planned) -> _Isolated:
        """Insert the records of a range ClickHouse refused one by one; return the rows stored and the
        records refused alone for their data. Each record's insert has a token of its own, derived from
        the range's: doing this again (after a crash, or a failed dead-letter write) stores nothing twice."""
        assert self.spool is not None
        isolated = _Isolated(0, [])
        for record in self.spool.read_range(planned.first, planned.last):
            token = f"{planned.token}-{record.sequence}"
            try:
                self.store.insert_rows(envelope_bytes([record.rows]), record.count, token=token)
            except Exception as raw:
                failure = classify(raw)
                if not failure.data:
                    raise
                letter = DeadLetter(
                    token, record.count, record.rows, str(failure), failure.code, rows_tenant(record.rows)
                )
                isolated.letters.append(letter)
            else:
                isolated.stored += record.count
        return isolated

    async def _keep_dead_letters(self, planned: Planned, isolated: _Isolated) -> int:
        """Store the refused records as dead letters, then commit the range: until they are stored,
        they stay in the spool. Returns the rows ClickHouse took.

        The write runs here, on the event loop, rather than on the insert thread that found the
        records: the asyncpg pool belongs to the loop, and an insert thread blocked on
        run_coroutine_threadsafe would hold an insert slot and its ClickHouse connection while
        PostgreSQL is slow, and wait for ever if the loop stopped first (at shutdown)."""
        assert self.spool is not None
        if isolated.letters:
            try:
                if self.dead_letters is None:
                    raise StoreError("no dead-letter store to keep refused records in", transient=False)
                added = await self.dead_letters.add(isolated.letters)
            except StoreError:
                self.stats.dead_letter_failures += 1
                raise
            if added:  # the letters are written in one transaction: all of them are new, or none
                for letter in isolated.letters:
                    self.stats.dead_letters_by_tenant[letter.tenant or ""] += letter.count
            for letter in isolated.letters:
                log.error(
                    "activities dead-lettered",
                    extra={
                        "source": letter.source,
                        "rows": letter.count,
                        "tenant": letter.tenant,
                        "error": letter.error,
                    },
                )
        await asyncio.get_running_loop().run_in_executor(self._executor, self.spool.commit, planned)
        return isolated.stored

    def _settle(
        self,
        count: int,
        tenant: str,
        future: asyncio.Future[dict[int, str]],
        error: Exception | None,
        assigned: dict[int, str] | None = None,
    ) -> None:
        self._pending -= count
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
        if self.spool is not None:
            # What is spooled is safe either way; draining it now spares the next start the replay
            # (not worth waiting for while the store is not even connected).
            store_connected = self.store_ready is None or self.store_ready.is_set()
            while store_connected and (self._ready or self._inserts) and loop.time() < deadline:  # noqa: ASYNC110 (two sources, bounded)
                await asyncio.sleep(0.02)
            if self._ready or self._inserts:
                log.warning(
                    "stopping with spooled activities not yet in ClickHouse; the next start sends them"
                )
        for task in [*self._tasks, *self._inserts]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._inserts, return_exceptions=True)
        failure = Unavailable("the collector shut down before the activities were stored", self.retry_delay_s)
        for queue in (self._intake, self._commit):
            while not queue.empty():
                item = queue.get_nowait()
                count = item.count if isinstance(item, Submission) else item.rows.count
                self._settle(count, item.tenant, item.future, failure)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._spool_executor is not None:
            self._spool_executor.shutdown(wait=True, cancel_futures=True)
        if self.spool is not None:
            self.spool.close()
