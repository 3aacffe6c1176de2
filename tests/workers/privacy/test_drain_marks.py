"""Erasures with several collectors sharing one PostgreSQL and one ClickHouse (two server instances in
one process, each with its own data directory and spool, on the one embedded engine, as in
tests/e2e/test_scale_out.py): a person's activities another collector acknowledged before the erasure,
still in its spool, never reach ClickHouse after it; a collector that stopped with such a spool drops
them when it starts again; an erasure waits for a live collector's drain mark, not for a stopped one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from helpers import items, make_activity, receipt_until, wait_for

from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.commit.deadletters import split_rows
from workers.commit.spool import Spool
from workers.privacy.erasure import RESOLVED, SPOOLS, ErasureStore
from workers.privacy.marks import ErasedJob, ErasedRows
from workers.processors.suppression import ANONYMOUS, id_digest
from workers.rows import encode_rows

pytestmark = pytest.mark.timeout(240)

TENANT = "default"
ALICE_IDS = ("alice", "anon-alice", "sess-alice")


def alice(first: int, count: int) -> list[pb.Activity]:
    user = pb.User(user_id="alice", anonymous_id="anon-alice", session_id="sess-alice")
    return [make_activity(n, user=user) for n in range(first, first + count)]


def bob(first: int, count: int) -> list[pb.Activity]:
    user = pb.User(user_id="bob", anonymous_id="anon-bob", session_id="sess-bob")
    return [make_activity(n, user=user) for n in range(first, first + count)]


async def send(server: CollectorServer, activities: list[pb.Activity]) -> int:
    async with grpc.aio.insecure_channel(server.address) as channel:
        answer = await pb_grpc.ActivityServiceStub(channel).TrackActivities(
            pb.TrackActivitiesRequest(activities=activities)
        )
    assert not answer.rejections
    return int(answer.accepted_count)


def stored_ids(server: CollectorServer, who: str) -> set[str]:
    assert server.store is not None
    out = server.store.query(
        f"SELECT toString(id) FROM activities FINAL WHERE user_id = '{who}' OR anonymous_id = 'anon-{who}'",
        "TabSeparated",
    )
    return set(bytes(out).decode().split())


def mentions(server: CollectorServer) -> int:
    assert server.store is not None
    where = " OR ".join(
        f"{column} IN ({', '.join(repr(i) for i in ALICE_IDS)})"
        for column in ("user_id", "resolved_user_id", "anonymous_id", "session_id")
    )
    return int(server.store.query(f"SELECT count() FROM activities WHERE {where}", "TabSeparated"))


def spool_pending(server: CollectorServer) -> int:
    assert server.pipeline is not None and server.pipeline.spool is not None
    return server.pipeline.spool.pending_rows


def framed(activities: list[pb.Activity], received_ns: int, tenant: str = TENANT) -> bytes:
    return b"".join(encode_rows(items(activities), tenant, received_ns, None).pieces)


def screen_at(screen: ErasedRows, rows: bytes) -> tuple[bytes, int, Any] | None:
    """Screen `rows` as spool record 1, which the jobs' bounds (none settled) cover."""
    assert screen.applies(1)
    return screen.screen(rows, 1)


def test_the_screen_drops_rows_received_before_the_erasure_ended_and_keeps_later_ones() -> None:
    screen = ErasedRows()
    ended = 2_000_000_000
    screen.install([ErasedJob(7, TENANT, frozenset({id_digest(TENANT, ANONYMOUS, "anon-alice")}), ended)])
    kept_bob = bob(1, 1)
    screened = screen_at(screen, framed(alice(0, 1) + kept_bob, ended - 1))
    assert screened is not None
    rows, count, dropped = screened
    assert count == 1 and dropped == {7: 1}
    assert [pb.Activity.FromString(r).id for r in split_rows(rows)] == [kept_bob[0].id]
    # Received after the erasure ended (the suppression lifted since), or of another tenant: kept.
    assert screen_at(screen, framed(alice(2, 1), ended + 1)) is None
    assert screen_at(screen, framed(alice(3, 1), ended - 1, "shop-b")) is None
    # While the job runs, whenever received.
    screen.install([ErasedJob(7, TENANT, frozenset({id_digest(TENANT, ANONYMOUS, "anon-alice")}), None)])
    assert screen_at(screen, framed(alice(4, 1), ended + 1)) is not None
    # Bytes that are not rows are kept: the store refuses them, and they become dead letters.
    assert screen_at(screen, b"\xff\xff") is None
    # Once settled at record 10 (the ids in force at intake, what was judged before spooled), the
    # records from 10 on are not judged against the job.
    screen.settle(10)
    assert screen.applies(9) and not screen.applies(10)
    assert screen.screen(framed(alice(5, 1), ended + 1), 9) is not None
    assert screen.screen(framed(alice(6, 1), ended + 1), 10) is None
    # A running job's ids, as they are known: records without their bytes are kept unread.
    digests = frozenset({id_digest(TENANT, ANONYMOUS, "anon-alice")})
    screen.install([ErasedJob(8, TENANT, digests, None, frozenset({b"anon-alice"}))])
    assert screen.screen(framed(bob(7, 2), ended), 12) is None
    assert screen.screen(framed(alice(8, 1) + bob(9, 1), ended), 12) is not None


async def test_another_collectors_backlog_does_not_bring_an_erased_person_back(
    start_server: Any, tmp_path: Path
) -> None:
    a: CollectorServer = await start_server(
        spool=True, data_dir=tmp_path / "a", drain_interval_ms=20, plan_refresh_s=0.1
    )
    # B's drainer waits for 5 rows (or 10 minutes): what it acknowledges stays in its spool, a backlog.
    b: CollectorServer = await start_server(
        spool=True, data_dir=tmp_path / "b", drain_interval_ms=600_000, drain_rows=5, plan_refresh_s=0.1
    )
    assert a.postgres is not None and a.erasures is not None and b.suppressions is not None
    stored_bob = bob(10, 3)
    stored = alice(0, 3) + stored_bob
    assert await send(a, stored) == 6
    await wait_for(lambda: len(stored_ids(a, "alice")) == 3, "A's activities stored")
    # Acknowledged by B before the erasure, not in ClickHouse yet.
    backlog_alice, backlog_bob = alice(20, 2), bob(30, 2)
    assert await send(b, backlog_alice + backlog_bob) == 4
    assert spool_pending(b) == 4

    jobs = ErasureStore(a.postgres.pool)
    job = await jobs.request(TENANT, "user", "alice")
    a.erasures.wake()
    # The erasure waits for B's drain mark, not for B's backlog to drain.
    done = await receipt_until(jobs, job, lambda r: r.state == "done", "the erasure to finish")
    assert done.removed["activities"] == 3
    assert spool_pending(b) == 4
    assert mentions(a) == 0

    # B drains once a fifth row comes: alice's rows are dropped, bob's stored; the receipt counts them.
    fifth = bob(35, 1)
    assert await send(b, fifth) == 1
    await wait_for(lambda: spool_pending(b) == 0, "B's spool drained")
    assert stored_ids(a, "bob") == {x.id for x in stored_bob + backlog_bob + fifth}
    assert mentions(a) == 0
    final = await receipt_until(jobs, job, lambda r: r.removed.get(SPOOLS) == 2, "the spool's rows counted")
    assert final.removed["activities"] == 3
    assert b.metrics is not None
    body, _ = b.metrics.exposition("")
    assert 'activity_collector_activities_erased_from_spool_total{tenant="default"} 2.0' in body.decode()

    # Later activities of alice, at either collector, are dropped at intake.
    assert await send(a, alice(40, 1)) == 1
    assert await send(b, alice(41, 1)) == 1
    assert a.suppressions is not None and a.suppressions.suppressed[TENANT] == 1
    assert b.suppressions.suppressed[TENANT] == 1
    await wait_for(lambda: spool_pending(a) == 0, "A's spool drained")
    assert mentions(a) == 0


async def test_a_stopped_collectors_spool_is_screened_when_it_starts_and_live_marks_are_waited_for(
    start_server: Any, make_settings: Any, tmp_path: Path
) -> None:
    a: CollectorServer = await start_server(
        spool=True, data_dir=tmp_path / "a", drain_interval_ms=20, plan_refresh_s=0.1, erasure_stale_s=5
    )
    assert a.postgres is not None and a.erasures is not None and a.drain_marks is not None
    pool = a.postgres.pool
    stored_bob = bob(10, 2)
    assert await send(a, alice(0, 2) + stored_bob) == 4
    await wait_for(lambda: len(stored_ids(a, "alice")) == 2, "A's activities stored")

    # B stopped (killed) with acknowledged activities in its spool: alice's and bob's.
    b_settings = make_settings(spool=True, data_dir=tmp_path / "b", drain_interval_ms=20)
    spool = Spool(b_settings.spool_dir, capacity_bytes=b_settings.pipeline.spool_capacity_bytes)
    spool.open()
    left_alice, left_bob = alice(20, 3), bob(30, 1)
    for batch in (left_alice[:1] + left_bob, left_alice[1:]):
        rows = encode_rows(items(batch), TENANT, time.time_ns(), None)
        spool.append([(rows.count, b"".join(rows.pieces))])
    spool.sync()
    spool.close()
    # A collector whose heartbeat is an hour old is not live: not waited for. One that beats (here, a
    # heartbeat ahead of the clock) and whose mark has not passed is.
    await pool.execute(
        "INSERT INTO collector_marks (collector_id, heartbeat_at) VALUES"
        " ('gone', now() - interval '1 hour'), ('stuck', now() + interval '1 hour')"
    )

    jobs = ErasureStore(pool)
    job = await jobs.request(TENANT, "anonymous", "anon-alice")
    a.erasures.wake()
    await receipt_until(jobs, job, lambda r: r.step == RESOLVED, "the person resolved")
    resolved_at = await pool.fetchval("SELECT now()")
    # A's own mark passes the moment the job waits from (twice, so that the job has looked at it)...
    for _ in range(2):
        await wait_for_mark(a, resolved_at)
        resolved_at = await pool.fetchval("SELECT now()")
    # ... and the job still waits for the live collector that is behind.
    receipt = await jobs.receipt(job)
    assert receipt is not None and receipt.step == RESOLVED, receipt
    assert mentions(a) == 2
    await pool.execute("DELETE FROM collector_marks WHERE collector_id = 'stuck'")
    await receipt_until(jobs, job, lambda r: r.state == "done", "the erasure to finish")
    assert mentions(a) == 0

    # B starts again: its spool drains, alice's rows dropped and counted, bob's stored.
    b: CollectorServer = await start_server(spool=True, data_dir=tmp_path / "b", drain_interval_ms=20)
    await wait_for(lambda: spool_pending(b) == 0, "B's spool drained")
    assert stored_ids(a, "bob") == {x.id for x in stored_bob + left_bob}
    assert mentions(a) == 0
    final = await receipt_until(jobs, job, lambda r: r.removed.get(SPOOLS) == 3, "the spool's rows counted")
    assert final.removed["activities"] == 2


async def wait_for_mark(server: CollectorServer, since: Any) -> None:
    assert server.drain_marks is not None
    marks = server.drain_marks

    def passed() -> bool:
        marks.wake()
        return marks.marked_at is not None and marks.marked_at > since

    await wait_for(passed, "the collector's drain mark to pass", timeout=30)
