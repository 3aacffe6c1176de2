"""An erasure interrupted by `kill -9` is carried on by the next start of the collector, to the same end:
the person gone from every store, the others' figures untouched."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import grpc.aio
import pytest
from helpers import bearer, make_activity, reap, start_serve, stop_serve

from collector.process.control import query_via_control
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.privacy.erasure import ErasureStore
from workers.storage.analytics_schema import MEASURE

pytestmark = pytest.mark.timeout(300)

START = datetime.datetime(2026, 10, 1, tzinfo=datetime.UTC)
ALICE = ("alice", "anon-alice", "sess-alice")


def people(count: int) -> list[pb.Activity]:
    out = []
    for n in range(count):
        who = ("alice", "bob", "carol")[n % 3]
        user = pb.User(user_id=who, anonymous_id=f"anon-{who}", session_id=f"sess-{who}")
        if who == "alice" and n % 2:
            user.ClearField("user_id")  # before her login: linked by the activities that carry both
        a = make_activity(n, user=user, action=("view", "click", "purchase")[n % 3 - 1])
        a.occurred_at.FromDatetime(START + datetime.timedelta(hours=n % 200))
        out.append(a)
    return out


def ask(data: Path, sql: str) -> list[dict[str, Any]]:
    out = query_via_control(data / "control.sock", sql, "JSONEachRow")
    return [json.loads(line) for line in out.splitlines()]


async def wait_until(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_an_erasure_killed_mid_way_completes_after_a_restart(tmp_path: Path, postgres_dsn: str) -> None:
    data = tmp_path / "data"
    flags = ("--postgres-dsn", postgres_dsn)
    proc, address, key = start_serve(data, *flags)
    assert key is not None
    sent = people(6000)
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ActivityServiceStub(channel)
            for first in range(0, len(sent), 500):
                answer = await stub.TrackActivities(
                    pb.TrackActivitiesRequest(activities=sent[first : first + 500]), metadata=bearer(key)
                )
                assert answer.accepted_count == 500

        async def stored() -> bool:
            return int(ask(data, "SELECT count() AS n FROM activities")[0]["n"]) == len(sent)

        await wait_until(stored, "the activities stored")

        jobs = ErasureStore(pool)
        job = await jobs.request("default", "user", "alice")
        # Killed once the person is resolved and the spool drained, as the deletes begin.
        while True:
            receipt = await jobs.receipt(job)
            assert receipt is not None and receipt.state != "done", "the erasure ended before the kill"
            if receipt.step in ("buckets", "clickhouse", "aggregates", "postgres"):
                os.kill(proc.pid, signal.SIGKILL)
                break
            await asyncio.sleep(0.005)
        proc.wait(timeout=10)
        killed = await jobs.receipt(job)
        assert killed is not None and killed.state == "running", killed

        proc, address, _ = start_serve(data, *flags)
        try:

            async def done() -> bool:
                receipt = await jobs.receipt(job)
                assert receipt is not None and receipt.state != "failed", receipt
                return receipt.state == "done"

            await wait_until(done, "the erasure to be taken up again and finish")
            receipt = await jobs.receipt(job)
            assert receipt is not None and receipt.attempts == 2
            assert receipt.ids == {"user": 1, "anonymous": 1, "session": 1}

            names = ", ".join(f"'{n}'" for n in ALICE)
            left = ask(
                data,
                f"SELECT count() AS n FROM activities WHERE user_id IN ({names})"
                f" OR resolved_user_id IN ({names}) OR anonymous_id IN ({names}) OR session_id IN ({names})",
            )
            assert int(left[0]["n"]) == 0
            others = [a for a in sent if a.user.anonymous_id != "anon-alice"]
            expected = Counter(
                (a.occurred_at.ToDatetime().strftime("%Y-%m-%d %H:00:00"), a.action) for a in others
            )
            rows = ask(
                data,
                f"SELECT toString(hour) AS hour, action, {MEASURE['activities'].merged()} AS n"
                " FROM activity_stats_hourly WHERE tenant_id = 'default' GROUP BY hour, action",
            )
            assert {(r["hour"], r["action"]): int(r["n"]) for r in rows} == expected
            links = await pool.fetch("SELECT t::text AS row FROM identity_links t")
            assert not [r for r in links if any(n in r["row"] for n in ALICE)]
            assert stop_serve(proc) == 0
        finally:
            reap(proc)
    finally:
        reap(proc)
        await pool.close()
