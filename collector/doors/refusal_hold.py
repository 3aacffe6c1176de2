"""Pacing of quota refusals: a call refused over its tenant's quota is answered only after a delay.

A refusal costs the collector mostly gRPC's (or HTTP's) own per-call work, so what a tenant over its
quota takes from its neighbours is its call *rate*. Every client has a bounded number of calls in
flight; answering each refusal after the bucket's retry delay (capped by `quota_refusal_hold_ms`)
keeps each of those slots busy waiting, and a flooding client slows to one call per retry delay per
slot instead of spinning. The answer is RESOURCE_EXHAUSTED with what is left of its retry delay once
held, so that a client honouring the delay does not wait it twice.

The wait is a timer on the event loop, nothing else: the call holds no pipeline or spool resource
while it waits. At most `quota_refusal_hold_max` calls wait at once across tenants; a refusal past
that is answered at once (counted), so that holding never grows memory without bound. Shutdown
answers every held call at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass
class RefusalHoldStats:
    """Counters since start: refusals held, refusals answered at once because the hold was full, and
    the seconds refusals spent held."""

    held: int = 0
    overflowed: int = 0
    held_s: float = 0.0


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class RefusalHold:
    def __init__(self, hold_s: float, max_held: int) -> None:
        self.hold_s = hold_s
        """Longest hold of one refusal; 0: refusals are answered at once."""
        self.max_held = max_held
        """Most refusals held at once."""
        self.stats = RefusalHoldStats()
        self._waiters: set[asyncio.Future[None]] = set()
        self._released = False

    @property
    def holding(self) -> int:
        """Refusals held now."""
        return len(self._waiters)

    async def hold(self, retry_delay_s: float) -> float:
        """Wait the retry delay of a refusal (at most `hold_s`) before it is answered, and return the
        seconds waited; return 0 at once when holding is off or `max_held` refusals already wait."""
        delay = min(retry_delay_s, self.hold_s)
        if delay <= 0 or self._released:
            return 0.0
        if len(self._waiters) >= self.max_held:
            self.stats.overflowed += 1
            return 0.0
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay, _release, waiter)
        self._waiters.add(waiter)
        self.stats.held += 1
        started = time.monotonic()
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)
            held = time.monotonic() - started
            self.stats.held_s += held
        return held

    def release_all(self) -> None:
        """Answer every held refusal now, and every later one at once (shutdown)."""
        self._released = True
        for waiter in list(self._waiters):
            _release(waiter)
