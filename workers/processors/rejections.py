"""Failed events kept: every activity rejected by validation or by a processor (a tracking plan), its
bytes as sent, reason, field, rule, tenant and time, in ClickHouse's `rejected_activities` for
`rejections_ttl_days` (a TTL), for `activity-collector rejections list|show`.

Bounded three ways: at most `rejections_per_tenant_minute` records per tenant and minute (beyond it
only counts are kept, per tenant), at most `MAX_QUEUED` records waiting (beyond it the oldest are
counted lost), payloads cut at `MAX_PAYLOAD_BYTES`. Nothing about the caller's key is stored. The
request path only appends to a queue (`record`, no I/O); a task writes the queue every
`FLUSH_INTERVAL_S` in one INSERT, on a thread, and never delays an answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.proto.activity.v1 import activity_pb2 as pb
from core.validation import Rejection
from workers.storage.schema import REJECTIONS_TABLE, SINGLE_NODE, Cluster, rejections_ttl

log = logging.getLogger(__name__)

MAX_QUEUED = 50_000
MAX_PAYLOAD_BYTES = 64 * 1024
FLUSH_INTERVAL_S = 1.0
FLUSH_ROWS = 2_000
_NS = 1_000_000_000


class Statements(Protocol):
    """What the recorder needs of the store (`workers.storage.clickhouse.ClickHouseStore`)."""

    @property
    def connected(self) -> bool: ...

    def command(self, sql: str) -> Any: ...

    def query(self, sql: str, fmt: str) -> bytes: ...


def reason_name(reason: int) -> str:
    try:
        return pb.RejectionReason.Name(reason).removeprefix("REJECTION_REASON_").lower()
    except ValueError:
        return str(reason)


@dataclass(slots=True)
class _Record:
    tenant: str
    rejected_ns: int
    rejection: Rejection
    rule: str
    payload: bytes


@dataclass
class RejectionStats:
    """Counters since start, by tenant: rejected activities kept (written), over the cap (counted
    only), lost (the queue was full, or the write failed)."""

    kept: Counter[str] = field(default_factory=Counter)
    over_cap: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    write_failures: int = 0


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class RejectionRecorder:
    def __init__(
        self, store: Statements, per_tenant_minute: int, ttl_days: int, cluster: Cluster = SINGLE_NODE
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.per_tenant_minute = per_tenant_minute
        self.ttl_days = ttl_days
        self.stats = RejectionStats()
        self._queue: collections.deque[_Record] = collections.deque()
        self._minute = 0
        self._this_minute: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._ttl_checked = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def record(
        self,
        tenant: str,
        received_ns: int,
        rejections: Sequence[Rejection],
        payloads: Mapping[int, bytes],
        rules: Mapping[int, str] | None = None,
    ) -> None:
        """Queue a request's rejections (no I/O): called on the request path."""
        minute = received_ns // (60 * _NS)
        if minute != self._minute:
            self._minute = minute
            self._this_minute.clear()
        room = self.per_tenant_minute - self._this_minute[tenant]
        if room < len(rejections):
            self.stats.over_cap[tenant] += len(rejections) - max(room, 0)
            rejections = rejections[: max(room, 0)]
        if not rejections:
            return
        self._this_minute[tenant] += len(rejections)
        queue = self._queue
        for r in rejections:
            if len(queue) >= MAX_QUEUED:
                self.stats.lost[queue.popleft().tenant] += 1
            rule = rules.get(r.index, "") if rules else ""
            queue.append(_Record(tenant, received_ns, r, rule, payloads.get(r.index, b"")))
        if len(queue) >= FLUSH_ROWS:
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rejections-writer")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_INTERVAL_S):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        """Write what is queued (in INSERTs of at most FLUSH_ROWS); the number of records written."""
        written = 0
        while self._queue and self.store.connected:
            batch = [self._queue.popleft() for _ in range(min(FLUSH_ROWS, len(self._queue)))]
            try:
                await asyncio.to_thread(self._write, batch)
            except Exception as error:  # never lose the collector over a record of failures
                self.stats.write_failures += 1
                for record in batch:
                    self.stats.lost[record.tenant] += 1
                log.warning("rejected activities not kept", extra={"error": repr(error), "rows": len(batch)})
                break
            for record in batch:
                self.stats.kept[record.tenant] += 1
            written += len(batch)
        return written

    def _write(self, batch: list[_Record]) -> None:
        if not self._ttl_checked:
            self._check_ttl()
        values = []
        for record in batch:
            r = record.rejection
            payload = record.payload
            seconds, nanos = divmod(record.rejected_ns, _NS)
            values.append(
                f"({_quote(str(uuid.uuid4()))}, {_quote(record.tenant)}, "
                f"fromUnixTimestamp64Milli({seconds * 1000 + nanos // 1_000_000}, 'UTC'), "
                f"{_quote(reason_name(r.reason))}, {_quote(r.field)}, {_quote(record.rule)}, "
                f"{_quote(r.message)}, {_quote(r.activity_id)}, "
                f"unhex('{payload[:MAX_PAYLOAD_BYTES].hex()}'), {len(payload)})"
            )
        self.store.command(
            f"INSERT INTO {REJECTIONS_TABLE} (id, tenant_id, rejected_at, reason, field, rule, message,"
            " activity_id, payload, payload_bytes) VALUES " + ", ".join(values)
        )

    def _check_ttl(self) -> None:
        """Set the table's TTL to `ttl_days` when it differs (once per start)."""
        table = self.cluster.local(REJECTIONS_TABLE)
        query = (
            "SELECT create_table_query FROM system.tables WHERE database = currentDatabase()"
            f" AND name = '{table}'"
        )
        text = self.store.query(query, "TabSeparatedRaw").decode()
        match = re.search(r"toIntervalDay\((\d+)\)", text)
        if match is not None and int(match.group(1)) != self.ttl_days:
            self.store.command(
                f"ALTER TABLE `{table}`{self.cluster.on_cluster} MODIFY TTL {rejections_ttl(self.ttl_days)}"
            )
            log.info("rejected activities' TTL changed", extra={"days": self.ttl_days})
        self._ttl_checked = True

    async def shutdown(self, timeout: float = 2.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # What is queued is written if the store answers in time; otherwise it is counted lost.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.flush()
        for record in self._queue:
            self.stats.lost[record.tenant] += 1
        self._queue.clear()
