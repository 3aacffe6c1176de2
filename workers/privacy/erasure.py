"""Erasure of a person: a job in PostgreSQL (`erasure_jobs`), run by a collector, carried on after a crash.

A request records the job and, in the same transaction, suppresses the id it names (its later
activities are dropped at intake from then on). A collector's `ErasureWorker` claims open jobs (a
lease, renewed while it works: a collector killed mid-way leaves the job to the next one, or to itself
after a restart) and runs their steps in order, recording each one done; a job taken up again redoes
the step it was in, and every step can run twice with the same end:

1. `resolved`: every id of the person (`workers.privacy.persons`), all suppressed;
2. `drained`: every live collector's drain mark (`workers.privacy.marks`) has passed the moment the
   ids were recorded: none of them will insert a row of the person it acknowledged before (its
   spool drops them as it drains), and none inserts the ones it takes after (suppressed at intake);
3. `buckets`: the aggregates' buckets that hold the person's activities, kept in the job;
4. `clickhouse`: the person's rows deleted from `activities` (a mutation, waited for on every replica),
   from the read side's `activities_by_person` and `person_links`, and from `rejected_activities`;
5. `aggregates`: the buckets of every aggregate rebuilt from what `activities` holds now;
6. `postgres`: the person's rows cut out of the dead letters (a letter left empty is deleted), their
   identity links deleted;
7. `verified`: no row of `activities` names them any more (a straggler found: steps 3 to 6 again).

When done, the job keeps digests of the ids (to be found again by any of them), how many there were
of each kind, and the rows removed per store; the ids themselves are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from core.proto.activity.v1 import activity_pb2 as pb
from core.wire import WireError, bytes_field, iter_fields, payload
from workers.commit.deadletters import split_rows
from workers.priority import niced
from workers.privacy.marks import collectors_behind
from workers.privacy.persons import PersonIds, SqlEngine, resolve_person
from workers.processors.suppression import Suppressions, SuppressionStore, id_digest
from workers.storage.analytics_schema import aggregate_rebuild_statements, quote
from workers.storage.contract import json_rows
from workers.storage.person_schema import PERSON_ACTIVITIES, PERSON_LINKS
from workers.storage.postgres import POSTGRES_ERRORS
from workers.storage.schema import REJECTIONS_TABLE, RESOLVED_USER_ID_FIELD, SINGLE_NODE, Cluster
from workers.storage.session_rollups import EVERY_ROLLUP

log = logging.getLogger(__name__)

RESOLVED = "resolved"
DRAINED = "drained"
BUCKETS = "buckets"
CLICKHOUSE = "clickhouse"
AGGREGATES_REBUILT = "aggregates"
POSTGRES = "postgres"
VERIFIED = "verified"
STEPS = (RESOLVED, DRAINED, BUCKETS, CLICKHOUSE, AGGREGATES_REBUILT, POSTGRES, VERIFIED)

MAX_ATTEMPTS = 20
"""Attempts at a job before it is marked failed (each attempt resumes where the last one stopped)."""
SPOOLS = "spools"
"""The receipt's count of the person's rows dropped from collectors' spools as they drained."""
STALE_S = 30.0
"""A collector whose drain mark's heartbeat is older than this is not live: no erasure waits for it
(the `erasure_stale_s` setting)."""
MAX_PASSES = 3
"""Passes of steps 3 to 6 when stragglers keep arriving; then the job fails, naming the rows left."""


class ErasureError(Exception):
    """An erasure that cannot go on; the message says why."""


@dataclass(frozen=True)
class Receipt:
    """What a job did (or does): the answer to `users erasure-status` and `GetErasure`."""

    id: int
    tenant: str
    state: str
    step: str
    ids: dict[str, int]
    removed: dict[str, int]
    requested_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    attempts: int
    error: str
    steps: dict[str, datetime.datetime] = field(default_factory=dict)
    """When each step was (last) done."""

    def step_seconds(self) -> list[tuple[str, float]]:
        """How long each step done took, in order (from the start, then from the step before)."""
        out = []
        last = self.started_at
        for step in STEPS:
            at = self.steps.get(step)
            if at is None or last is None:
                continue
            out.append((step, max((at - last).total_seconds(), 0.0)))
            last = at
        return out

    def to_dict(self) -> dict[str, Any]:
        def when(value: datetime.datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "id": self.id,
            "tenant": self.tenant,
            "state": self.state,
            "step": self.step,
            "ids": self.ids,
            "removed": self.removed,
            "requested_at": when(self.requested_at),
            "started_at": when(self.started_at),
            "finished_at": when(self.finished_at),
            "attempts": self.attempts,
            "error": self.error,
            "steps": {step: when(at) for step, at in self.steps.items()},
        }


_RECEIPT = (
    "id, tenant_id, state, step, ids, id_counts, removed, requested_at, started_at, finished_at,"
    " attempts, error, dropped_at_drain, step_times"
)


def _receipt(row: asyncpg.Record) -> Receipt:
    counts = json.loads(row["id_counts"]) if row["id_counts"] else {}
    if not counts and row["ids"]:
        counts = PersonIds.from_json(json.loads(row["ids"])).counts()
    return Receipt(
        id=row["id"],
        tenant=row["tenant_id"],
        state=row["state"],
        step=row["step"],
        ids=counts,
        removed=_removed(row),
        requested_at=row["requested_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempts=row["attempts"],
        error=row["error"] or "",
        steps={
            step: datetime.datetime.fromisoformat(at)
            for step, at in (json.loads(row["step_times"]) if row["step_times"] else {}).items()
        },
    )


def _removed(row: asyncpg.Record) -> dict[str, int]:
    removed: dict[str, int] = json.loads(row["removed"]) if row["removed"] else {}
    if row["dropped_at_drain"]:
        # Rows collectors left out of their spools' inserts (workers.privacy.marks).
        removed[SPOOLS] = int(row["dropped_at_drain"])
    return removed


@dataclass(frozen=True)
class Job:
    id: int
    tenant: str
    requested: bytes
    step: str
    ids: PersonIds | None
    buckets: dict[str, list[str]] | None
    removed: dict[str, int]
    attempts: int


class ErasureStore:
    """The `erasure_jobs` table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def request(self, tenant: str, kind: str, value: str) -> int:
        """Record an erasure of the person `kind` `value` names, and suppress that id at once; return the
        job's id. Asked again while that job is open, the same job."""
        seed = PersonIds.of(kind, value)
        requested = id_digest(tenant, kind, value)
        async with self.pool.acquire() as conn, conn.transaction():
            # One request at a time per person: two asking together get the same job.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('erasure:' || $1), hashtext($2))",
                tenant,
                requested.hex(),
            )
            job = await conn.fetchval(
                "SELECT id FROM erasure_jobs WHERE tenant_id = $1 AND requested = $2 AND finished_at IS NULL",
                tenant,
                requested,
            )
            if job is None:
                job = await conn.fetchval(
                    "INSERT INTO erasure_jobs (tenant_id, requested, ids) VALUES ($1, $2, $3::jsonb)"
                    " RETURNING id",
                    tenant,
                    requested,
                    seed.to_json(),
                )
            await SuppressionStore(self.pool).suppress(tenant, requested, {requested: kind}, job, conn)
        return int(job)

    async def receipt(self, job_id: int) -> Receipt | None:
        row = await self.pool.fetchrow(f"SELECT {_RECEIPT} FROM erasure_jobs WHERE id = $1", job_id)
        return None if row is None else _receipt(row)

    async def find(self, tenant: str, kind: str, value: str) -> Receipt | None:
        """The latest erasure that covers (or was asked for) this id."""
        digest = id_digest(tenant, kind, value)
        row = await self.pool.fetchrow(
            f"SELECT {_RECEIPT} FROM erasure_jobs WHERE tenant_id = $1"
            " AND (requested = $2 OR id_digests @> ARRAY[$2::bytea]) ORDER BY id DESC LIMIT 1",
            tenant,
            digest,
        )
        return None if row is None else _receipt(row)

    async def claim(self, lease_s: float) -> Job | None:
        """Take the oldest open job whose lease has run out (or that never had one)."""
        row = await self.pool.fetchrow(
            "UPDATE erasure_jobs SET state = 'running', attempts = attempts + 1,"
            " started_at = coalesce(started_at, now()), lease_until = now() + make_interval(secs => $1)"
            " WHERE id = (SELECT id FROM erasure_jobs WHERE finished_at IS NULL"
            " AND (lease_until IS NULL OR lease_until < now()) ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " RETURNING id, tenant_id, requested, step, ids, buckets, removed, attempts",
            lease_s,
        )
        if row is None:
            return None
        return Job(
            id=row["id"],
            tenant=row["tenant_id"],
            requested=bytes(row["requested"]),
            step=row["step"],
            ids=None if row["ids"] is None else PersonIds.from_json(json.loads(row["ids"])),
            buckets=None if row["buckets"] is None else json.loads(row["buckets"]),
            removed=json.loads(row["removed"]) if row["removed"] else {},
            attempts=row["attempts"],
        )

    async def renew(self, job_id: int, lease_s: float) -> None:
        await self.pool.execute(
            "UPDATE erasure_jobs SET lease_until = now() + make_interval(secs => $2) WHERE id = $1",
            job_id,
            lease_s,
        )

    async def advance(self, job: Job, step: str, **columns: Any) -> None:
        """Record `step` done, with the job's removed counts and any other column given (jsonb as text)."""
        sets = [
            "step = $2",
            "removed = $3::jsonb",
            "error = NULL",
            "step_times = step_times || jsonb_build_object($2::text, clock_timestamp())",
        ]
        values: list[Any] = [job.id, step, json.dumps(job.removed, sort_keys=True)]
        for name, value in columns.items():
            values.append(value)
            cast = "::jsonb" if name in ("ids", "buckets", "id_counts") else ""
            sets.append(f"{name} = ${len(values)}{cast}")
        await self.pool.execute(f"UPDATE erasure_jobs SET {', '.join(sets)} WHERE id = $1", *values)

    async def release(self, job_id: int, error: str, attempts: int) -> None:
        """The attempt failed: note why, let the lease go (a later attempt resumes), or fail the job."""
        failed = attempts >= MAX_ATTEMPTS
        await self.pool.execute(
            "UPDATE erasure_jobs SET error = $2, lease_until = now() + interval '1 second',"
            " state = CASE WHEN $3 THEN 'failed' ELSE state END,"
            " finished_at = CASE WHEN $3 THEN now() END WHERE id = $1",
            job_id,
            error,
            failed,
        )


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


ERASURE_NICENESS = 19
"""The default niceness of the engine's threads while they run an erasure's queries
(`os_thread_priority`, the `erasure_niceness` setting): an erasure rewrites parts and recomputes days
of every rollup, seconds of CPU that, with the embedded engine, would come out of the ingest's cores;
at 19 it takes what ingest leaves. On a ClickHouse server without the CAP_SYS_NICE capability the
setting does nothing."""


class ErasureRunner:
    """Runs the steps of one job (see the module's docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        clickhouse: SqlEngine,
        database: str,
        cluster: Cluster = SINGLE_NODE,
        *,
        suppressions: Suppressions | None = None,
        wake_marks: Callable[[], None] | None = None,
        lease_s: float = 10.0,
        stale_s: float = STALE_S,
        step_done: Callable[[int, str], Awaitable[None]] | None = None,
        niceness: int = ERASURE_NICENESS,
    ) -> None:
        self.pool = pool
        self.niceness = niceness
        """Of the engine's threads while they run this runner's queries (`niced`)."""
        self.clickhouse = clickhouse
        self.database = database
        self.cluster = cluster
        self.suppressions = suppressions
        self.wake_marks = wake_marks
        self.lease_s = lease_s
        self.stale_s = stale_s
        self.jobs = ErasureStore(pool)
        self.step_done = step_done
        """Called after each step recorded (job id, step): a seam for tests that stop a job mid-way."""

    async def run(self, job: Job) -> None:
        step = job.step
        ids = job.ids
        passes = 0
        while step != VERIFIED:
            if ids is None:
                raise ErasureError("the job lost its ids before it was done")
            await self.jobs.renew(job.id, self.lease_s)
            if step == "":
                ids = await resolve_person(job.tenant, ids, self.pool, self.clickhouse, self.database, _call)
                digests = ids.digests(job.tenant)
                await SuppressionStore(self.pool).suppress(job.tenant, job.requested, digests, job.id)
                if self.suppressions is not None:
                    self.suppressions.add(job.tenant, digests)
                step = RESOLVED
                await self.jobs.advance(
                    job, step, ids=ids.to_json(), id_counts=json.dumps(ids.counts()), id_digests=list(digests)
                )
            elif step == RESOLVED:
                await self._wait_drained(job, ids)
                step = DRAINED
                await self.jobs.advance(job, step)
            elif step == DRAINED:
                buckets = await self._buckets(job.tenant, ids, job.buckets or {})
                job = _with(job, buckets=buckets)
                step = BUCKETS
                await self.jobs.advance(job, step, buckets=json.dumps(buckets))
            elif step == BUCKETS:
                await self._delete_clickhouse(job, ids)
                step = CLICKHOUSE
                await self.jobs.advance(job, step)
            elif step == CLICKHOUSE:
                await self._rebuild_aggregates(job)
                step = AGGREGATES_REBUILT
                await self.jobs.advance(job, step)
            elif step == AGGREGATES_REBUILT:
                await self._delete_postgres(job, ids)
                step = POSTGRES
                await self.jobs.advance(job, step)
            elif step == POSTGRES:
                left = await self._count(job.tenant, ids)
                if left:
                    passes += 1
                    if passes >= MAX_PASSES:
                        raise ErasureError(f"{left} activities of the person keep arriving in ClickHouse")
                    # Stragglers (an activity acknowledged as the suppression began): once more.
                    step = RESOLVED
                    continue
                step = VERIFIED
                await self.pool.execute(
                    "UPDATE erasure_jobs SET step = $2, state = 'done', finished_at = now(), ids = NULL,"
                    " step_times = step_times || jsonb_build_object($2::text, clock_timestamp()),"
                    " buckets = NULL, lease_until = NULL, error = NULL, removed = $3::jsonb WHERE id = $1",
                    job.id,
                    step,
                    json.dumps(job.removed, sort_keys=True),
                )
            else:
                raise ErasureError(f"unknown step {step!r}")
            if self.step_done is not None:
                await self.step_done(job.id, step)

    async def _wait_drained(self, job: Job, ids: PersonIds) -> None:
        """Wait until every live collector's drain mark has passed now, a moment after the person's ids
        were recorded (a resumed job waits for a later one: the same end)."""
        if self.suppressions is not None:
            self.suppressions.add(job.tenant, ids.digests(job.tenant))
        since = await self.pool.fetchval("SELECT now()")
        if self.wake_marks is not None:
            self.wake_marks()
        loop = asyncio.get_running_loop()
        renewed = logged = loop.time()
        while behind := await collectors_behind(self.pool, since, self.stale_s):
            await asyncio.sleep(0.05)
            if loop.time() - renewed > self.lease_s / 3:
                await self.jobs.renew(job.id, self.lease_s)
                renewed = loop.time()
            if loop.time() - logged > 30:
                log.info(
                    "erasure waits for collectors' drain marks",
                    extra={"erasure": job.id, "collectors": behind},
                )
                logged = loop.time()

    def _table(self, name: str) -> str:
        return f"`{self.database}`.`{name}`"

    async def _query(self, sql: str) -> list[dict[str, Any]]:
        return json_rows(await _call(self.clickhouse.query, niced(sql, self.niceness), "JSONEachRow"))

    async def _count(self, tenant: str, ids: PersonIds) -> int:
        rows = await self._query(
            f"SELECT count() AS n FROM {self._table('activities')}"
            f" WHERE tenant_id = {quote(tenant)} AND {ids.condition()}"
        )
        return int(rows[0]["n"])

    async def _buckets(
        self, tenant: str, ids: PersonIds, known: dict[str, list[str]]
    ) -> dict[str, list[str]]:
        """The buckets of each aggregate that hold the person's activities, added to those known."""
        buckets: dict[str, list[str]] = {}
        for aggregate in EVERY_ROLLUP:
            where = " AND ".join(
                w for w in (f"tenant_id = {quote(tenant)}", ids.condition(), aggregate.where) if w
            )
            rows = await self._query(
                f"SELECT DISTINCT toString({aggregate.bucket.expression}) AS b"
                f" FROM {self._table('activities')} WHERE {where}"
            )
            buckets[aggregate.name] = sorted(set(known.get(aggregate.name, ())) | {r["b"] for r in rows})
        return buckets

    def _mutation(self, table: str, where: str) -> str:
        """A delete that rewrites the parts holding the rows (the data is gone from disk when it
        returns), on every replica of every shard on a cluster."""
        delete = (
            f"ALTER TABLE {self._table(self.cluster.local(table))}{self.cluster.on_cluster}"
            f" DELETE WHERE {where}\nSETTINGS mutations_sync = 2"
        )
        return niced(delete, self.niceness)

    async def _delete_clickhouse(self, job: Job, ids: PersonIds) -> None:
        tenant = quote(job.tenant)
        where = f"tenant_id = {tenant} AND {ids.condition()}"
        found = await self._count(job.tenant, ids)
        if found:
            await _call(self.clickhouse.command, self._mutation("activities", where))
        _add(job, "activities", found)
        # The read side's copies: each activity again by person, and the links between their ids.
        every = "(" + ", ".join(quote(v) for _, v in ids) + ")"
        for table, condition in (
            (PERSON_ACTIVITIES, where),
            (PERSON_LINKS, f"tenant_id = {tenant} AND (key IN {every} OR linked IN {every})"),
        ):
            rows = await self._query(f"SELECT count() AS n FROM {self._table(table)} WHERE {condition}")
            if int(rows[0]["n"]):
                await _call(self.clickhouse.command, self._mutation(table, condition))
            _add(job, table, int(rows[0]["n"]))
        # Rejected activities keep the bytes as sent: candidates by a byte search, confirmed parsed.
        needles = "[" + ", ".join(quote(v) for _, v in ids) + "]"
        rows = await self._query(
            f"SELECT toString(id) AS id, hex(payload) AS bytes FROM {self._table(REJECTIONS_TABLE)}"
            f" WHERE tenant_id = {tenant} AND arrayExists(n -> position(payload, n) > 0, {needles})"
        )
        rejected = [r["id"] for r in rows if _activity_matches(bytes.fromhex(r["bytes"]), ids, True)]
        if rejected:
            listed = ", ".join(quote(r) for r in rejected)
            await _call(
                self.clickhouse.command,
                self._mutation(REJECTIONS_TABLE, f"tenant_id = {tenant} AND id IN ({listed})"),
            )
        _add(job, REJECTIONS_TABLE, len(rejected))

    async def _rebuild_aggregates(self, job: Job) -> None:
        for aggregate in EVERY_ROLLUP:
            buckets = (job.buckets or {}).get(aggregate.name, [])
            if not buckets:
                continue
            condition = f"{aggregate.bucket.name} IN ({', '.join(quote(b) for b in buckets)})"
            for statement in aggregate_rebuild_statements(
                self.database, aggregate, job.tenant, condition, self.cluster
            ):
                await _call(self.clickhouse.command, niced(statement, self.niceness))
            _add(job, f"{aggregate.name} buckets rebuilt", len(buckets))

    async def _delete_postgres(self, job: Job, ids: PersonIds) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            letters = await conn.fetch(
                "SELECT id, payload FROM dead_letters WHERE tenant_id = $1 OR tenant_id IS NULL FOR UPDATE",
                job.tenant,
            )
            rows_removed = 0
            for letter in letters:
                kept, removed = cut_rows(bytes(letter["payload"]), ids)
                if not removed:
                    continue
                rows_removed += removed
                if kept:
                    await conn.execute(
                        "UPDATE dead_letters SET payload = $2, row_count = $3 WHERE id = $1",
                        letter["id"],
                        b"".join(kept),
                        len(kept),
                    )
                else:
                    await conn.execute("DELETE FROM dead_letters WHERE id = $1", letter["id"])
            result = await conn.execute(
                "DELETE FROM identity_links WHERE tenant_id = $1 AND (user_id = ANY($2)"
                " OR (kind = 'anonymous' AND key = ANY($3)) OR (kind = 'session' AND key = ANY($4)))",
                job.tenant,
                sorted(ids.user),
                sorted(ids.anonymous),
                sorted(ids.session),
            )
        _add(job, "dead_letters", rows_removed)
        _add(job, "identity_links", int(result.split()[-1]))


def _with(job: Job, **changes: Any) -> Job:
    return Job(**{**job.__dict__, **changes})


def _add(job: Job, store: str, rows: int) -> None:
    job.removed[store] = job.removed.get(store, 0) + rows


def row_ids(body: bytes) -> tuple[str, str, str, str]:
    """(user_id, resolved_user_id, anonymous_id, session_id) of one row (an activity.v1.Activity, with
    the fields the collector appends). Raises WireError or DecodeError when it is not one."""
    activity = pb.Activity.FromString(body)
    resolved = ""
    for number, wire_type, encoded in iter_fields(body):
        if number == RESOLVED_USER_ID_FIELD and wire_type == 2:
            resolved = payload(encoded).decode("utf-8", "replace")
    user = activity.user
    return user.user_id, resolved, user.anonymous_id, user.session_id


def _activity_matches(body: bytes, ids: PersonIds, unreadable: bool) -> bool:
    try:
        return ids.matches(*row_ids(body))
    except Exception:
        # Cut at its size limit, or never an activity: it holds one of the ids' bytes all the same.
        return unreadable


def cut_rows(rows: bytes, ids: PersonIds) -> tuple[list[bytes], int]:
    """Framed rows without the person's: (the framed rows kept, how many were cut). Rows that cannot
    be read are kept (a dead letter is often one that ClickHouse could not read either) unless they
    hold one of the ids' bytes."""
    try:
        bodies = split_rows(rows)
    except WireError:
        bodies = None
    if bodies is None:
        mentioned = any(value.encode() in rows for _, value in ids)
        return ([], 1) if mentioned else ([rows], 0)
    kept = []
    for body in bodies:
        mentioned = any(value.encode() in body for _, value in ids)
        if mentioned and _activity_matches(body, ids, True):
            continue
        kept.append(bytes_field(1, body))
    return kept, len(bodies) - len(kept)


class ErasureWorker:
    """A collector's stage that runs the open erasure jobs, one at a time.

    Lifecycle: `start()` returns at once (a task polls for jobs every `interval_s`, and at once after
    `wake()`); `shutdown()` is idempotent and safe without start: a job in progress stops where it is
    and is taken up again (by this collector's next start, or another) once its lease runs out.
    """

    def __init__(self, runner: ErasureRunner, interval_s: float = 1.0) -> None:
        self.runner = runner
        self.interval_s = interval_s
        self.done = 0
        self.failures = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.create_task(self._loop(), name="erasures")

    async def run_pending(self) -> int:
        """Run every job that can be claimed now; return how many were taken."""
        taken = 0
        while True:
            job = await self.runner.jobs.claim(self.runner.lease_s)
            if job is None:
                return taken
            taken += 1
            # A step may outlast the lease (a mutation on a large table): the lease is renewed
            # meanwhile, so that no other collector takes the job up while this one works on it.
            renewing = asyncio.create_task(self._renew(job.id), name=f"erasure-{job.id}-lease")
            try:
                await self.runner.run(job)
                self.done += 1
                log.info("erasure done", extra={"erasure": job.id, "tenant": job.tenant})
            except Exception as error:  # every failure is recorded, and the job retried
                self.failures += 1
                log.warning("erasure attempt failed", extra={"erasure": job.id, "error": str(error)})
                with contextlib.suppress(*POSTGRES_ERRORS):
                    await self.runner.jobs.release(job.id, str(error), job.attempts)
                return taken
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing

    async def _renew(self, job_id: int) -> None:
        lease_s = self.runner.lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await self.runner.jobs.renew(job_id, lease_s)
            except POSTGRES_ERRORS as error:
                log.warning("erasure lease not renewed", extra={"erasure": job_id, "error": str(error)})

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_pending()
            except POSTGRES_ERRORS as error:
                log.warning("erasure jobs not read", extra={"error": repr(error)})
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    async def shutdown(self, _left: float = 0.0) -> None:
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
