"""The aggregates' refresh: the days that received activities since the last refresh, computed again from
the deduplicated rows (`activities FINAL`) into the rollups, then the watermark moved.

Reads stay exact at any moment without it: the aggregates' views read the days touched after the
watermark from `activities` itself (`workers.storage.analytics_schema`, docs/analytics.md "Why the
counts are exact"). The refresh only makes those days cheap to read again. Any number of collectors
may refresh at once: each refresh writes complete days, versioned by its watermark, and the latest
version of a key wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.storage.analytics_schema import (
    REFRESH_MARGIN_S,
    REFRESHES,
    refresh_statements,
    refreshed_days_sql,
)
from workers.storage.clickhouse import StoreError
from workers.storage.schema import SINGLE_NODE, Cluster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refresh:
    days: int
    """Tenant-days computed again (0: none was touched since the last refresh, or each one touched
    was touched again within the margin and is left for a later refresh)."""
    refreshed_to: str
    seconds: float


def refresh_aggregates(
    command: Callable[[str], Any],
    database: str,
    cluster: Cluster = SINGLE_NODE,
    margin_s: float = REFRESH_MARGIN_S,
) -> Refresh:
    """One refresh through `command` (a ClickHouse client's or `ClickHouseStore.command`). `margin_s`:
    how long an insert may take to become visible after its touch; 0 only when every insert is known to
    have finished (a benchmark's own INSERT ... SELECT)."""
    start = time.perf_counter()
    now, since = command(
        f"SELECT toString(now64(3, 'UTC') - toIntervalMillisecond({int(margin_s * 1000)})), "
        f"toString(max(refreshed_to)) FROM `{database}`.`{REFRESHES}`"
    )
    touched = int(command(f"SELECT count() FROM ({refreshed_days_sql(database, str(since), str(now))})"))
    if touched:
        for statement in refresh_statements(database, str(since), str(now), cluster):
            command(statement)
    return Refresh(touched, str(now), time.perf_counter() - start)


class AggregateRefresher:
    """A collector's stage that refreshes the aggregates every `interval_s` seconds.

    Lifecycle: `start()` returns at once (a task refreshes on a thread, then waits `interval_s`);
    `shutdown()` is idempotent and safe without start, and abandons a refresh in progress (its
    statements are each safe to run again; the watermark moves only after the rollups). A store not
    connected yet, or failing, is logged and tried again at the next interval."""

    def __init__(
        self,
        command: Callable[[str], Any],
        database: str,
        cluster: Cluster,
        interval_s: float,
        margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        self.command = command
        self.margin_s = margin_s
        self.database = database
        self.cluster = cluster
        self.interval_s = interval_s
        self.refreshes = 0
        self.failures = 0
        self.last: Refresh | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None and self.interval_s > 0:
            self._task = asyncio.create_task(self._loop(), name="aggregates refresher")

    async def refresh(self) -> Refresh:
        result = await asyncio.to_thread(
            refresh_aggregates, self.command, self.database, self.cluster, self.margin_s
        )
        self.refreshes += 1
        self.last = result
        if result.days:
            log.info(
                "aggregates refreshed",
                extra={"days": result.days, "refreshed_to": result.refreshed_to, "seconds": result.seconds},
            )
        return result

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except StoreError as error:
                self.failures += 1
                log.log(
                    logging.INFO if error.transient else logging.WARNING,
                    "aggregates not refreshed",
                    extra={"error": str(error)},
                )
            except Exception as error:  # logged and tried again: the reads stay exact meanwhile
                self.failures += 1
                log.warning("aggregates not refreshed", extra={"error": repr(error)})
            await asyncio.sleep(self.interval_s)

    async def shutdown(self, _left: float = 0.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
