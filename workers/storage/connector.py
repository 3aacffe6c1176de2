"""Connecting the store: creating its database, applying its migrations, opening its connections.

With the spool on, an acknowledgement needs only the local disk, so the collector need not wait for
ClickHouse to start: `StoreConnector.start()` returns at once and connects in the background, retrying
with exponential backoff and full jitter for as long as the collector runs. The drainer waits for
`ready` before its first insert; meanwhile activities are spooled and acknowledged. Without the spool,
the server calls `connect()` once at start and fails there (see docs/delivery.md).

Each attempt runs on a daemon thread of its own: an attempt blocked on a host that does not answer
(up to the driver's connect timeout) then neither occupies an insert thread nor holds the process
open at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from core.backoff import backoff_delay
from workers.storage.clickhouse import ClickHouseStore, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreConnector:
    """Connects a `ClickHouseStore` now (`connect()`) or in the background (`start()`).

    Lifecycle: `start()` returns at once; `shutdown()` is idempotent and safe without start, and
    abandons an attempt in progress (the store, closed after it, keeps nothing that attempt opens).
    `ready` is set once the store is connected; `attempts` counts every attempt, `last_error` holds
    the last failure.
    """

    def __init__(
        self, store: ClickHouseStore, *, first_delay_s: float = 0.1, max_delay_s: float = 5.0
    ) -> None:
        self.store = store
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.ready = asyncio.Event()
        self.attempts = 0
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def connect(self) -> None:
        """One attempt, now; raises StoreError naming the DSN (password masked)."""
        self.attempts += 1
        try:
            await _in_daemon_thread(self.store.connect)
        except StoreError as error:
            self.last_error = str(error)
            raise
        self.last_error = ""
        self.ready.set()

    async def start(self) -> None:
        if self._task is not None or self._stopped or self.ready.is_set():
            return
        self._task = asyncio.create_task(self._run(), name="store-connector")

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.connect()
            except StoreError as error:
                failures += 1
                # Full jitter: collectors that lost the same ClickHouse do not come back in step.
                delay = backoff_delay(failures, first_s=self.first_delay_s, max_s=self.max_delay_s)
                log.log(
                    logging.WARNING if error.transient else logging.ERROR,
                    "store not reachable, connecting again",
                    extra={"attempt": self.attempts, "retry_in_s": round(delay, 3), "error": str(error)},
                )
                await asyncio.sleep(delay)
                continue
            log.info("store connected", extra={"attempt": self.attempts, "dsn": self.store.masked_dsn})
            return

    async def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _in_daemon_thread(function: Callable[[], T]) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def succeed(result: T) -> None:
        if not future.done():
            future.set_result(result)

    def fail(error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)

    def run() -> None:
        try:
            result = function()
        except BaseException as error:
            settle: Callable[[], None] = functools.partial(fail, error)
        else:
            settle = functools.partial(succeed, result)
        # The loop may be gone when an abandoned attempt ends: nobody waits for it then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=run, name="store-connect", daemon=True).start()
    return await future
