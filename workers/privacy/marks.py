"""Drain marks: how an erasure knows that no collector will insert the person's activities after it.

Several collectors may share one PostgreSQL and one ClickHouse, each with its own spool. An activity
that another collector acknowledged before the erasure may still sit in its spool when the erasure
deletes the person's rows; inserted after, the person would be back. Two parts close that gap:

- `ErasedRows`, the spool's screen: every erasure job's id digests (open jobs, and done ones with
  their end time). A spooled row of an erased person, received before the erasure ended (or while it
  runs), is dropped as the drainer reads it, instead of being inserted (or dead-lettered), and
  counted in the job (`dropped_at_drain`). Rows received after the erasure ended are kept: their
  person was suppressed at intake, unless someone lifted the suppression since.
- `DrainMarks`, a collector's stage: every `interval_s` it writes a heartbeat to `collector_marks`
  and reads the jobs that changed; when they did, it puts them in force (intake suppression and the
  screen), waits until every request judged before has been spooled or committed and every insert
  begun before has ended, then writes `erasures_at`: the time of that read. From then on this
  collector cannot insert a row of those persons that it acknowledged before.

An erasure waits, before deleting anything (`collectors_behind`), until every live collector's
`erasures_at` has passed the moment its ids were recorded; a collector whose heartbeat is older than
`stale_s` is not live and is not waited for. Such a collector, when it comes back, reads every job
before its drainer starts, so that its spool's rows of erased persons are dropped as they drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg

from core.wire import WireError, bytes_field, iter_fields, payload, read_varint
from workers.commit.deadletters import split_rows
from workers.privacy.persons import PersonIds
from workers.processors.suppression import ANONYMOUS, SESSION, USER, Suppressions, id_digest
from workers.storage.postgres import POSTGRES_ERRORS
from workers.storage.schema import RECEIVED_AT_FIELD, RESOLVED_USER_ID_FIELD, TENANT_FIELD

log = logging.getLogger(__name__)

ID_FILE = "collector.id"
EVERY_RECORD = 1 << 62
"""A job's bound in `ErasedRows` until it is settled: every record is judged against it."""

_USER_FIELD = 4
_USER_SESSION, _USER_ANONYMOUS, _USER_ID = 1, 2, 3


def collector_id(data_dir: Path) -> str:
    """This collector's id in `collector_marks`, kept in its data directory: the same after a restart,
    so that a collector killed mid-erasure takes its own mark up again."""
    path = data_dir / ID_FILE
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if found:
        return found
    made = uuid.uuid4().hex
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(made + "\n")
    temporary.replace(path)
    return made


@dataclass(frozen=True)
class ErasedJob:
    id: int
    tenant: str
    digests: frozenset[bytes]
    finished_ns: int | None
    """When the job ended (ns since the epoch); None while it runs."""
    needles: frozenset[bytes] | None = None
    """The ids themselves while the job runs (None once it is done): records that hold none of their
    bytes are kept without being read row by row."""


def _row_facts(body: bytes) -> tuple[str, int, list[tuple[str, str]]]:
    """(tenant, received at in ns, [(kind, id)]) of one row: an activity.v1.Activity with the fields
    the collector appends. Raises WireError when it is not one."""
    tenant = ""
    received_ns = 0
    ids: list[tuple[str, str]] = []
    for number, wire_type, encoded in iter_fields(body):
        if wire_type != 2:
            continue
        if number == _USER_FIELD:
            for inner, inner_type, field in iter_fields(payload(encoded)):
                if inner_type != 2:
                    continue
                kind = {_USER_ID: USER, _USER_ANONYMOUS: ANONYMOUS, _USER_SESSION: SESSION}.get(inner)
                if kind is not None:
                    ids.append((kind, payload(field).decode("utf-8", "replace")))
        elif number == RESOLVED_USER_ID_FIELD:
            ids.append((USER, payload(encoded).decode("utf-8", "replace")))
        elif number == TENANT_FIELD:
            tenant = payload(encoded).decode("utf-8", "replace")
        elif number == RECEIVED_AT_FIELD:
            seconds = nanos = 0
            stamp = payload(encoded)
            for part, part_type, value in iter_fields(stamp):
                if part_type == 0 and part in (1, 2):
                    amount, _ = read_varint(value, 1)
                    seconds, nanos = (amount, nanos) if part == 1 else (seconds, amount)
            received_ns = seconds * 1_000_000_000 + nanos
    return tenant, received_ns, ids


_Index = dict[str, dict[bytes, list[tuple[int, int | None]]]]
"""tenant -> id digest -> [(job, when it ended or None)]."""


class ErasedRows:
    """The spool's screen (`workers.commit.spooled.SpoolScreen`): drops spooled rows of erased persons.

    Read by the insert threads, replaced whole by the event loop. Each job has a bound: the spool's
    next record once the job's ids were in force at intake and every request judged before was
    spooled (`settle`); the records from there on hold no row of its person (dropped at intake), so
    that a record is judged only against the jobs whose bound is above it, and a drain costs nothing
    more once it has passed the records that were waiting when an erasure began. Against running jobs
    a record is first searched for the ids' bytes; only against done ones (a spool left by a stop) is
    every row read."""

    def __init__(self) -> None:
        self._jobs: dict[int, ErasedJob] = {}
        self._below: dict[int, int] = {}
        self._highest = 0
        self._index: _Index = {}
        self._counted: Counter[int] = Counter()
        self.dropped_by_tenant: Counter[str] = Counter()
        """Rows dropped from the spool, by tenant (the metric)."""
        self.on_count: Callable[[], None] | None = None
        """Called (on the event loop) when rows dropped wait to be written to their jobs."""

    @property
    def jobs(self) -> dict[int, ErasedJob]:
        return self._jobs

    @property
    def unsettled(self) -> bool:
        """Whether some job's bound waits for `settle`."""
        return EVERY_RECORD in self._below.values()

    def install(self, jobs: Iterable[ErasedJob]) -> None:
        """Put these jobs (new, or changed) in force, beside those known. A job with ids not known
        before is judged against every record until `settle`; one that only ended keeps its bound."""
        merged = dict(self._jobs)
        below = dict(self._below)
        for job in jobs:
            known = merged.get(job.id)
            if known is not None and job.digests <= known.digests:
                if job.needles is None and known.needles is not None:
                    job = replace(job, needles=known.needles)
            else:
                below[job.id] = EVERY_RECORD
            merged[job.id] = job
        index: _Index = {}
        for job in merged.values():
            held = index.setdefault(job.tenant, {})
            for digest in job.digests:
                held.setdefault(digest, []).append((job.id, job.finished_ns))
        self._index = index
        self._jobs = merged
        self._below = below
        self._highest = max(below.values(), default=0)

    def settle(self, next_sequence: int) -> None:
        """The jobs put in force are so at intake, and every request judged before is spooled:
        records from `next_sequence` on hold none of their persons' rows."""
        self._below = {job: next_sequence if b == EVERY_RECORD else b for job, b in self._below.items()}
        self._highest = max(self._below.values(), default=0)

    def applies(self, first_sequence: int) -> bool:
        return first_sequence < self._highest

    def screen(self, rows: bytes, sequence: int) -> tuple[bytes, int, Counter[int]] | None:
        """The framed rows kept, their count and the rows dropped per job; None when all are kept.
        Rows that cannot be read are kept (the store refuses them, and they become dead letters)."""
        jobs = self._jobs
        active = {job for job, bound in self._below.items() if sequence < bound}
        if not active:
            return None
        needles = [jobs[job].needles for job in active]
        if all(group is not None for group in needles) and not any(
            needle in rows for group in needles if group is not None for needle in group
        ):
            return None
        index = self._index
        try:
            bodies = split_rows(rows)
        except WireError:
            return None
        kept: list[bytes] = []
        dropped: Counter[int] = Counter()
        for body in bodies:
            job = _erased_by(body, index, active)
            if job is None:
                kept.append(bytes_field(1, body))
            else:
                dropped[job] += 1
        if not dropped:
            return None
        return b"".join(kept), len(kept), dropped

    def count(self, dropped: Counter[int]) -> None:
        """Rows dropped by an insert whose other rows are in the store: written to the jobs by the marks."""
        self._counted.update(dropped)
        for job, rows in dropped.items():
            known = self._jobs.get(job)
            self.dropped_by_tenant[known.tenant if known is not None else ""] += rows
        if self.on_count is not None:
            self.on_count()

    def take_counts(self) -> Counter[int]:
        counted, self._counted = self._counted, Counter()
        return counted


def _erased_by(body: bytes, index: _Index, active: set[int]) -> int | None:
    """The job that drops this row, if any: one of `active` holding a digest of one of its ids, open
    or ended after the row was received."""
    try:
        tenant, received_ns, ids = _row_facts(body)
    except WireError:
        return None
    held = index.get(tenant)
    if not held:
        return None
    for kind, value in ids:
        if not value:
            continue
        for job, finished_ns in held.get(id_digest(tenant, kind, value), ()):
            if job in active and (finished_ns is None or received_ns <= finished_ns):
                return job
    return None


def _job(row: asyncpg.Record) -> ErasedJob:
    digests = {bytes(d) for d in row["id_digests"] or ()}
    digests.add(bytes(row["requested"]))
    finished: datetime.datetime | None = row["finished_at"]
    finished_ns = (
        None if finished is None else (finished - _EPOCH) // datetime.timedelta(microseconds=1) * 1000
    )
    needles = None
    if finished is None and row["ids"] is not None:
        needles = frozenset(
            value.encode() for _, value in PersonIds.from_json(json.loads(row["ids"])) if value
        )
    return ErasedJob(row["id"], row["tenant_id"], frozenset(digests), finished_ns, needles)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_JOB_COLUMNS = "id, tenant_id, requested, id_digests, finished_at, ids"


class DrainMarks:
    """A collector's stage that keeps its drain mark in `collector_marks` (see the module's docstring).

    Lifecycle: `load()` reads every job (before the drainer starts, so that a spool left by a stop is
    screened); `start()` returns at once; `shutdown()` is idempotent and safe without start.

    `settled()` waits until every request judged at intake so far has been spooled or committed;
    `inserts_ended()` until every insert begun so far has ended; `next_sequence()` is the spool's
    next record (None: no spool)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        collector: str,
        rows: ErasedRows,
        *,
        suppressions: Suppressions | None = None,
        settled: Callable[[], Awaitable[None]] | None = None,
        inserts_ended: Callable[[], Awaitable[None]] | None = None,
        next_sequence: Callable[[], int] | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.pool = pool
        self.collector = collector
        self.rows = rows
        self.suppressions = suppressions
        self.settled = settled
        self.inserts_ended = inserts_ended
        self.next_sequence = next_sequence
        self.interval_s = interval_s
        self.marked_at: datetime.datetime | None = None
        self._max_id = 0
        self._loaded = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        rows.on_count = self.wake

    async def load(self) -> None:
        rows = await self.pool.fetch(f"SELECT {_JOB_COLUMNS} FROM erasure_jobs")
        self._take(rows)
        self._loaded = True

    def _take(self, rows: list[asyncpg.Record]) -> list[ErasedJob]:
        jobs = [_job(row) for row in rows]
        changed = [job for job in jobs if self.rows.jobs.get(job.id) != job]
        if changed:
            self.rows.install(changed)
            if self.suppressions is not None:
                for job in changed:
                    if job.finished_ns is None:
                        self.suppressions.add(job.tenant, job.digests)
        self._max_id = max([self._max_id, *(job.id for job in jobs)])
        return changed

    async def cycle(self) -> None:
        """Read the jobs that changed, put them in force, then write the mark."""
        if not self._loaded:
            await self.load()
        open_ids = [job.id for job in self.rows.jobs.values() if job.finished_ns is None]
        async with self.pool.acquire() as conn:
            at: datetime.datetime = await conn.fetchval("SELECT now()")
            rows = await conn.fetch(
                f"SELECT {_JOB_COLUMNS} FROM erasure_jobs"
                " WHERE id > $1 OR finished_at IS NULL OR id = ANY($2)",
                self._max_id,
                open_ids,
            )
        self._take(rows)
        if self.rows.unsettled:
            # New ids in force at intake: once what was judged before is spooled, the records from
            # the spool's next on cannot hold their rows; inserts begun before did not screen them.
            if self.settled is not None:
                await self.settled()
            self.rows.settle(self.next_sequence() if self.next_sequence is not None else 0)
            if self.inserts_ended is not None:
                await self.inserts_ended()
        await self._flush_counts()
        await self.pool.execute(
            "INSERT INTO collector_marks (collector_id, heartbeat_at, erasures_at) VALUES ($1, now(), $2)"
            " ON CONFLICT (collector_id) DO UPDATE SET heartbeat_at = now(), erasures_at = $2",
            self.collector,
            at,
        )
        self.marked_at = at

    async def heartbeat(self) -> None:
        await self.pool.execute(
            "INSERT INTO collector_marks (collector_id) VALUES ($1)"
            " ON CONFLICT (collector_id) DO UPDATE SET heartbeat_at = now()",
            self.collector,
        )

    async def _flush_counts(self) -> None:
        counts = self.rows.take_counts()
        try:
            for job, dropped in sorted(counts.items()):
                await self.pool.execute(
                    "UPDATE erasure_jobs SET dropped_at_drain = dropped_at_drain + $2 WHERE id = $1",
                    job,
                    dropped,
                )
                log.info(
                    "spooled activities of an erased person dropped", extra={"erasure": job, "rows": dropped}
                )
        except POSTGRES_ERRORS:
            self.rows.count(counts)
            raise

    async def retire(self) -> None:
        """Forget this collector's mark, once its pipeline has stopped: nothing it acknowledged is in
        flight any more, and what its spool still holds is screened when it starts again."""
        with contextlib.suppress(*POSTGRES_ERRORS):
            # Rows dropped by the last drain, as the pipeline stopped.
            await self._flush_counts()
            await self.pool.execute("DELETE FROM collector_marks WHERE collector_id = $1", self.collector)

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        if self._tasks or self._stopped:
            return
        self._tasks = [
            asyncio.create_task(self._loop(self.cycle, wakes=True), name="drain-marks"),
            asyncio.create_task(self._loop(self.heartbeat, wakes=False), name="drain-heartbeat"),
        ]

    async def _loop(self, step: Callable[[], Awaitable[None]], wakes: bool) -> None:
        # The heartbeat runs apart: a mark held back by an insert that ClickHouse does not take keeps
        # the collector live (erasures wait for it) rather than passing for stopped.
        while True:
            try:
                await step()
            except POSTGRES_ERRORS as error:
                log.warning("drain mark not written", extra={"error": repr(error)})
            if not wakes:
                await asyncio.sleep(self.interval_s)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    async def shutdown(self, _left: float = 0.0) -> None:
        self._stopped = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def collectors_behind(pool: asyncpg.Pool, since: datetime.datetime, stale_s: float) -> list[str]:
    """The live collectors (heartbeat within `stale_s`) whose mark has not passed `since`."""
    rows = await pool.fetch(
        "SELECT collector_id FROM collector_marks WHERE heartbeat_at > now() - make_interval(secs => $1)"
        " AND (erasures_at IS NULL OR erasures_at <= $2) ORDER BY collector_id",
        stale_s,
        since,
    )
    return [row["collector_id"] for row in rows]
