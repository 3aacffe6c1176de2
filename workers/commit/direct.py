"""The commit path without the spool: group commit straight into the store, answers once committed.

    commit queue ──► batcher ──► insert workers ──► store
                                        │
       future resolved when the insert ◄┘ that holds the request commits (or fails for good)

Group commit: the batcher waits for an insert worker to be free, then takes every waiting request (up
to `insert_max_rows` rows), lingering up to `flush_interval_ms` for more while the insert is small. Under
light load a request waits at most the linger; under heavy load requests pile up while inserts run and
the next insert takes them all, so inserts grow with the load and their count does not.

Errors that may pass are retried with exponential backoff and jitter, up to `insert_attempts`, under one
deduplication token; then, or at once for any other error, every request of the insert is answered
`Unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from core.backoff import backoff_delay
from workers.commit.base import Encoded, PipelineStats, Settle, Unavailable
from workers.commit.settings import PipelineSettings
from workers.rows import Envelope
from workers.storage.clickhouse import StoreError, classify
from workers.storage.contract import RowSink

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.05
"""Ceiling of the wait before an insert's first retry; it doubles with each retry, up to the delay
offered to callers (`retry_delay_ms`)."""


class DirectCommit:
    """`workers.commit.base.Commit` without a spool: batcher and insert workers."""

    def __init__(
        self,
        settings: PipelineSettings,
        store: RowSink,
        requests: asyncio.Queue[Encoded],
        stats: PipelineStats,
        settle: Settle,
    ) -> None:
        self.settings = settings
        self.store = store
        self.stats = stats
        self.on_insert: Callable[[int, float], None] | None = None
        self.store_ready: asyncio.Event | None = None
        """Not waited for: without the spool the store is connected before the pipeline starts."""
        self.retry_delay_s = settings.retry_delay_ms / 1000
        self._commit = requests
        self._settle = settle
        self._tasks: list[asyncio.Task[None]] = []
        self._inserts: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.insert_workers)
        self._executor: ThreadPoolExecutor | None = None
        self._accepting = False

    async def start(self) -> None:
        self._accepting = True
        self._executor = ThreadPoolExecutor(self.settings.insert_workers, thread_name_prefix="insert")
        self._tasks.append(asyncio.create_task(self._batcher(), name="batcher"))

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, deadline: float) -> None:
        """Nothing to do: a request leaves the queue in an insert, and is answered when it ends."""

    def cancel(self) -> list[asyncio.Task[None]]:
        tasks = [*self._tasks, *self._inserts]
        for task in tasks:
            task.cancel()
        return tasks

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

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

    async def _insert(self, chunks: list[Encoded], rows: int) -> None:
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
                    await asyncio.sleep(
                        backoff_delay(attempt + 1, first_s=FIRST_RETRY_S, max_s=self.retry_delay_s)
                    )
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
