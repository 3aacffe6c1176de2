"""The commit path's interface: what the pipeline hands encoded requests to, and what they share.

`Pipeline` (workers.commit.pipeline) admits requests and enriches them; each encoded request then goes,
as an `Encoded`, into a queue that a `Commit` takes from. A commit answers every request it takes
through the pipeline's `Settle`, exactly once: with the ids assigned, `Overloaded` or `Unavailable`.
Two implementations, chosen by whether the collector has a spool:

- `workers.commit.direct.DirectCommit`: group commit straight into the store; a request is answered
  once the insert holding it has committed (or failed for good).
- `workers.commit.spooled.SpooledCommit`: a request is answered once its record is fsynced in the
  spool; a drainer inserts the spool into the store behind, and keeps what the store refuses for its
  data as dead letters.

Lifecycle, as the pipeline drives it: `start()`; at shutdown `stop_accepting()` (no request will come
but those queued: stop waiting for more), then, once every admitted request is answered or the deadline
passed, `drain(deadline)`, `cancel()` (the tasks to await), and `close()` after they ended.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from workers.rows import EncodedRows


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
class Encoded:
    """One request's rows, encoded, on their way to the store, and the future its handler awaits."""

    rows: EncodedRows
    tenant: str
    future: asyncio.Future[dict[int, str]]


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


class Settle(Protocol):
    """The pipeline's answer to one request (`Pipeline._settle`): releases its `count` activities from
    admission, counts a failure by tenant, and resolves `future` with `assigned` (the ids the server
    gave, by index) or fails it with `error`."""

    def __call__(
        self,
        count: int,
        tenant: str,
        future: asyncio.Future[dict[int, str]],
        error: Exception | None,
        assigned: dict[int, str] | None = None,
    ) -> None: ...


class Commit(Protocol):
    """Takes `Encoded` requests from the queue it was built with, stores them, answers each through
    `Settle`. Built with the pipeline's settings, store, queue, `PipelineStats` (which it updates:
    inserts, retries, failures, refusals of its own, dead letters) and `Settle`."""

    on_insert: Callable[[int, float], None] | None
    """Called after each committed insert with its rows and seconds (for metrics histograms)."""
    store_ready: asyncio.Event | None
    """Set once the store is connected (None: it is already); set before `start()`."""

    async def start(self) -> None:
        """Open what it needs and start the tasks that take from the queue; returns once they run."""

    def stop_accepting(self) -> None:
        """Shutdown has begun: nothing comes into the queue any more but what admission let in, so
        stop lingering for more requests."""

    async def drain(self, deadline: float) -> None:
        """Every admitted request is answered (or the loop time `deadline` passed): finish, until the
        deadline, what was accepted but is not in the store yet."""

    def cancel(self) -> list[asyncio.Task[None]]:
        """Cancel every task it runs; returns them, for the caller to await."""

    def close(self) -> None:
        """After its tasks ended: release its threads and files."""
