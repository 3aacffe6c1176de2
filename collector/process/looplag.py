"""How late the event loop runs what is due: the wait of every request the loop has to pick up.

Every call and every stream batch is picked up by the event loop's thread, one callback at a time; a
request that arrives while the loop is busy waits until it comes round, and that wait is in no
handler's duration. A probe task asks to be woken every `interval_s` and observes how late it was
woken into a histogram: the lag a request arriving at that moment would have met. A caller's latency
far above the handlers' durations and this lag is spent outside the process (the network, the
caller's own machine).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class _Observing(Protocol):
    def observe(self, amount: float) -> None: ...


class LoopLag:
    """Lifecycle: `start()` on the loop starts the probe (once); `shutdown()` stops it (idempotent,
    safe without start)."""

    def __init__(self, histogram: _Observing, interval_s: float = 0.1) -> None:
        self.histogram = histogram
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._probe(), name="event loop lag")

    async def shutdown(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.histogram.observe(max(0.0, loop.time() - due))
