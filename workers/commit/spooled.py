"""The commit path with the spool: acknowledge once durable, drain into the store behind.

    commit queue ──► spool writer ──► answer
                          │ (append + one fsync per group)
                          ▼
                     spool segments ──► drainer ──► insert workers ──► store
                                                          │ ✗ (data refused)
                                                          ▼
                                     one insert per record ──► refused records ──► dead letters

The spool writer takes every encoded request waiting, appends a record for each and fsyncs once, then
answers them. The drainer takes records in sequence order, once `drain_rows` rows wait or
`drain_interval_ms` after the first, plans each insert in the spool's checkpoint (range and
deduplication token) before sending it, and commits the range after. A restart first redoes the
planned inserts with their tokens. An insert that the store refuses for its data is split: its records
are inserted one by one, and those refused alone are written to the dead-letter store before the range
is committed. See docs/delivery.md. A `screen` (set by the erasures, `workers.privacy.marks`) leaves
an erased person's rows out of the inserts, reading whole the records it must judge.

A failure of the spool's own disk is told apart from the store's: a spool refusing for its disk's
reserve answers RESOURCE_EXHAUSTED (as a full spool does), a write that fails for a full disk too, and
the drainer retries a failed checkpoint write or read quickly (at most `SPOOL_RETRY_MAX_S` apart),
without counting it as a failed insert, so that draining resumes within a second of space coming back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from core.backoff import backoff_delay
from workers import priority
from workers.commit.base import Encoded, Overloaded, PipelineStats, Settle, Unavailable
from workers.commit.deadletters import DeadLetter, DeadLetterSink, rows_tenant
from workers.commit.settings import PipelineSettings
from workers.commit.spool import DISK_FULL_ERRNOS, Planned, Record, Spool, SpoolError, SpoolFull
from workers.rows import Envelope, envelope_bytes
from workers.storage.clickhouse import StoreError, classify
from workers.storage.contract import RowSink

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.1
"""Ceiling of the wait before a spooled insert's first retry; it doubles with each retry, up to
`MAX_RETRY_S`. The records are safe on disk: they are retried for as long as the collector runs."""
MAX_RETRY_S = 5.0
SPOOL_RETRY_MAX_S = 1.0
"""Ceiling of the wait between retries of a drain step that failed on the spool's own disk (the
checkpoint, a read): short, so that draining resumes within a second of the disk coming back."""

NOT_ENOUGH_SPACE = 243
"""ClickHouse's error code for a full disk."""


def spool_failure(error: BaseException | None) -> SpoolError | None:
    """The spool's disk failure behind `error` (itself, or what it was raised from), if there is one:
    a record read back while an insert is written out fails inside the store's call."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, SpoolError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def disk_full(error: BaseException) -> bool:
    """Whether `error` says that a disk is full (the store's, or the spool's): it passes once space is
    freed."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    if getattr(error, "code", None) == NOT_ENOUGH_SPACE:
        return True
    text = str(error)
    return "No space left on device" in text or "NOT_ENOUGH_SPACE" in text or "Disk quota exceeded" in text


class SpoolScreen(Protocol):
    """Rows to leave out of the spool's inserts (the rows of erased persons: `workers.privacy.marks`)."""

    def applies(self, first_sequence: int) -> bool:
        """Whether records from `first_sequence` on may hold rows to leave out."""
        ...

    def screen(self, rows: bytes, sequence: int) -> tuple[bytes, int, Counter[int]] | None:
        """The framed rows of record `sequence` kept, their count and the rows left out by cause;
        None: all kept."""
        ...

    def count(self, dropped: Counter[int]) -> None:
        """Rows left out of a range whose other rows are now in the store."""
        ...


@dataclass
class _Isolated:
    """Outcome of inserting a refused range record by one record: the rows ClickHouse took, and the
    records it refused on their own, still to be stored as dead letters."""

    stored: int
    letters: list[DeadLetter]


class SpooledCommit:
    """`workers.commit.base.Commit` with a spool: spool writer, drainer, inserts, dead letters."""

    def __init__(
        self,
        settings: PipelineSettings,
        store: RowSink,
        spool: Spool,
        dead_letters: DeadLetterSink | None,
        requests: asyncio.Queue[Encoded],
        stats: PipelineStats,
        settle: Settle,
    ) -> None:
        self.settings = settings
        self.store = store
        self.spool = spool
        self.dead_letters = dead_letters
        self.stats = stats
        self.on_insert: Callable[[int, float], None] | None = None
        self.store_ready: asyncio.Event | None = None
        """Set once the store is connected (None: it is already). The drainer waits for it; set it
        before `start()`."""
        self.screen: SpoolScreen | None = None
        """Rows left out as the spool drains; set it before `start()`."""
        self._screened: dict[str, Counter[int]] = {}
        self.retry_delay_s = settings.retry_delay_ms / 1000
        if spool.min_free_bytes is None:
            spool.min_free_bytes = settings.spool_min_free_bytes
        self.last_insert_error = ""
        """Why the last insert failed, while none has succeeded since: "" when inserts work."""
        self.store_disk_full = False
        """Whether the last insert failed because the store's disk is full."""
        self._commit = requests
        self._settle = settle
        # Records durable and not yet handed to an insert, in sequence order.
        self._ready: collections.deque[tuple[int, int]] = collections.deque()
        self._ready_event = asyncio.Event()
        self._ready_rows = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._inserts: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.insert_workers)
        self._executor: ThreadPoolExecutor | None = None
        self._spool_executor: ThreadPoolExecutor | None = None
        self._accepting = False

    async def start(self) -> None:
        self._accepting = True
        self._executor = ThreadPoolExecutor(self.settings.insert_workers, thread_name_prefix="insert")
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

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, deadline: float) -> None:
        # What is spooled is safe either way; draining it now spares the next start the replay
        # (not worth waiting for while the store is not even connected).
        loop = asyncio.get_running_loop()
        store_connected = self.store_ready is None or self.store_ready.is_set()
        while store_connected and (self._ready or self._inserts) and loop.time() < deadline:  # noqa: ASYNC110 (two sources, bounded)
            await asyncio.sleep(0.02)
        if self._ready or self._inserts:
            log.warning("stopping with spooled activities not yet in ClickHouse; the next start sends them")

    async def inserts_ended(self) -> None:
        """Wait until every insert begun so far has ended (its range committed)."""
        begun = set(self._inserts)
        if begun:
            await asyncio.wait(begun)

    def cancel(self) -> list[asyncio.Task[None]]:
        tasks = [*self._tasks, *self._inserts]
        for task in tasks:
            task.cancel()
        return tasks

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._spool_executor is not None:
            self._spool_executor.shutdown(wait=True, cancel_futures=True)
        self.spool.close()

    async def _spool_writer(self) -> None:
        """Append every encoded request waiting, fsync once for all of them, then acknowledge them."""
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
                failure: Exception
                if error.errno in DISK_FULL_ERRNOS:
                    # The reserve did not keep the disk from filling (another writer took the space):
                    # nothing was written, and the caller may try again later, as with a full spool.
                    for c in chunks:
                        self.stats.refused_by_tenant[c.tenant] += c.rows.count
                    failure = Overloaded(f"the spool's disk is full: {error.strerror}", self.retry_delay_s)
                else:
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
        sequences = self.spool.append(entries)
        try:
            self.spool.sync()
        except OSError:
            # Not durable, so not acknowledged: forget them, so that nothing waits for them.
            self.spool.abandon(sequences)
            raise
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
        to the dead-letter store; the range is committed once they are stored there. A failure of the
        spool's own disk (the checkpoint, a read) is retried at most `SPOOL_RETRY_MAX_S` apart, and not
        counted against the store; once the rows are in, only the checkpoint is written again."""
        loop = asyncio.get_running_loop()
        attempt = 0
        spool_attempt = 0
        isolate = False
        isolated: _Isolated | None = None
        # Counted once the rows are in ClickHouse and before the spool lets go of them, so that the
        # spool's gauge never drops ahead of the committed rows (a scrape in between saw neither).
        counted = False
        try:
            while True:
                started = time.perf_counter()
                try:
                    if counted:
                        # The rows are in and the range committed in memory: its checkpoint is owed.
                        await loop.run_in_executor(self._executor, self.spool.save)
                        return
                    if isolate:
                        if isolated is None:
                            isolated = await loop.run_in_executor(
                                self._executor, self._isolate_failure, planned
                            )
                        rows = await self._keep_dead_letters(planned, isolated)
                    else:
                        rows = await loop.run_in_executor(self._executor, self._insert_planned, planned)
                    counted = True
                    dropped = self._screened.pop(planned.token, None)
                    if dropped and self.screen is not None:
                        # Final once the rest is in (a crash before the range's commit counts them again).
                        self.screen.count(dropped)
                    self.stats.record_insert(rows)
                    if self.on_insert is not None:
                        self.on_insert(rows, time.perf_counter() - started)
                    self.last_insert_error, self.store_disk_full = "", False
                    await loop.run_in_executor(self._executor, self.spool.commit, planned)
                except Exception as raw:
                    failure = spool_failure(raw)
                    if failure is not None:
                        spool_attempt += 1
                        log.warning(
                            "spool disk failing: draining waits for it",
                            extra={
                                "first": planned.first,
                                "last": planned.last,
                                "attempt": spool_attempt,
                                "transient": failure.transient,
                                "error": str(failure),
                                "directory": str(self.spool.directory),
                            },
                        )
                        delay = backoff_delay(spool_attempt, first_s=FIRST_RETRY_S, max_s=SPOOL_RETRY_MAX_S)
                        await asyncio.sleep(delay)
                        continue
                    error = classify(raw)
                    full = disk_full(raw) or disk_full(error)
                    self.last_insert_error, self.store_disk_full = str(error), full
                    log.warning(
                        "spooled insert failed",
                        extra={
                            "first": planned.first,
                            "last": planned.last,
                            "attempt": attempt + 1,
                            "transient": error.transient or full,
                            "disk_full": full,
                            "error": str(error),
                        },
                    )
                    if error.data and not isolate:
                        self.stats.insert_failures += 1
                        isolate = True
                        continue
                    self.stats.insert_retries += 1
                    attempt += 1
                    await asyncio.sleep(backoff_delay(attempt, first_s=FIRST_RETRY_S, max_s=MAX_RETRY_S))
                    continue
                return
        finally:
            self._slots.release()

    def _insert_planned(self, planned: Planned) -> int:
        spool = self.spool
        spool.plan(planned)
        spooled = spool.spooled(planned.first, planned.last)
        screen = self.screen
        if spooled.sequences and screen is not None and screen.applies(spooled.sequences[0]):
            # Read whole to be screened: only the records spooled before an erasure began, once.
            rows, count, dropped = self._screen_records(list(spool.records(spooled.sequences)))
            self._screened[planned.token] = dropped
            if count:
                self.store.insert_rows(envelope_bytes(rows), count, token=planned.token)
            return count
        if spooled.sequences:
            # The records are read back while the insert is written out, one at a time.
            payload = Envelope(spooled.nbytes, lambda: (r.rows for r in spool.records(spooled.sequences)))
            self.store.insert_rows(payload, spooled.rows, token=planned.token)
        return spooled.rows

    def _screen_records(self, records: list[Record]) -> tuple[list[bytes], int, Counter[int]]:
        assert self.screen is not None
        rows: list[bytes] = []
        count = 0
        dropped: Counter[int] = Counter()
        for record in records:
            screened = self.screen.screen(record.rows, record.sequence)
            if screened is None:
                rows.append(record.rows)
                count += record.count
            else:
                rows.append(screened[0])
                count += screened[1]
                dropped.update(screened[2])
        return rows, count, dropped

    def _isolate_failure(self, planned: Planned) -> _Isolated:
        """Insert the records of a range ClickHouse refused one by one; return the rows stored and the
        records refused alone for their data. Each record's insert has a token of its own, derived from
        the range's: doing this again (after a crash, or a failed dead-letter write) stores nothing twice."""
        isolated = _Isolated(0, [])
        records = self.spool.read_range(planned.first, planned.last)
        screen = self.screen
        if records and screen is not None and screen.applies(records[0].sequence):
            dropped: Counter[int] = Counter()
            kept = []
            for record in records:
                screened = screen.screen(record.rows, record.sequence)
                if screened is None:
                    kept.append(record)
                    continue
                dropped.update(screened[2])
                if screened[1]:
                    kept.append(Record(record.sequence, screened[1], screened[0]))
            self._screened[planned.token] = dropped
            records = kept
        for record in records:
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
        """Store the refused records as dead letters; the caller then commits the range: until they are
        stored, they stay in the spool. Returns the rows ClickHouse took.

        The write runs here, on the event loop, rather than on the insert thread that found the
        records: the asyncpg pool belongs to the loop, and an insert thread blocked on
        run_coroutine_threadsafe would hold an insert slot and its ClickHouse connection while
        PostgreSQL is slow, and wait for ever if the loop stopped first (at shutdown)."""
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
        return isolated.stored
