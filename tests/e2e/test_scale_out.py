"""Several collectors, each with its own spool, in front of one store: nothing lost, nothing counted twice.

The embedded engine admits one process per data directory, so the collectors here are two
`CollectorServer`s in this process, with data directories (spools) of their own, sharing the session's
engine, as collectors on several machines share a ClickHouse cluster. What a cluster adds (Distributed
inserts, replication) is covered on paper in docs/scaling.md."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from helpers import make_activity

from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(90)


def query(server: CollectorServer, sql: str) -> list[str]:
    assert server.store is not None
    return server.store.query(sql, "TabSeparated").decode().split()


async def wait_until_drained(servers: list[CollectorServer], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(
            s.pipeline is not None and s.pipeline.spool is not None and s.pipeline.spool.pending_rows == 0
            for s in servers
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the spools did not drain")


async def test_two_collectors_with_their_own_spools_store_every_activity_once(
    start_server: Any, tmp_path: Path
) -> None:
    first: CollectorServer = await start_server(spool=True, data_dir=tmp_path / "a", drain_interval_ms=20)
    second: CollectorServer = await start_server(spool=True, data_dir=tmp_path / "b", drain_interval_ms=20)
    assert first.settings.spool_dir != second.settings.spool_dir
    batches = [[make_activity(n * 10 + i) for i in range(10)] for n in range(40)]
    async with (
        grpc.aio.insecure_channel(first.address) as one,
        grpc.aio.insecure_channel(second.address) as two,
    ):
        stubs = [pb_grpc.ActivityServiceStub(one), pb_grpc.ActivityServiceStub(two)]

        async def send(n: int, batch: list[pb.Activity]) -> int:
            # A load balancer spreads the calls; a client that resends (it lost the answer) may
            # reach the other collector.
            answer = await stubs[n % 2].TrackActivities(pb.TrackActivitiesRequest(activities=batch))
            if n % 4 == 0:
                await stubs[(n + 1) % 2].TrackActivities(pb.TrackActivitiesRequest(activities=batch))
            return int(answer.accepted_count)

        accepted = await asyncio.gather(*(send(n, b) for n, b in enumerate(batches)))
    assert sum(accepted) == 400
    await wait_until_drained([first, second])

    sent = {a.id for b in batches for a in b}
    resent = sum(len(b) for n, b in enumerate(batches) if n % 4 == 0)
    # Each collector inserted what it took: the resent copies are rows of their own until a merge
    # collapses them (the test cannot tell when) ...
    rows, distinct = map(int, query(first, "SELECT count(), uniqExact(id) FROM activities"))
    assert 400 <= rows <= 400 + resent and distinct == 400
    # ... and one row each in the merged view, the counts and the aggregates.
    assert query(first, "SELECT count() FROM activities FINAL") == ["400"]
    assert set(query(second, "SELECT toString(id) FROM activities FINAL")) == sent
    assert query(second, "SELECT sum(activities) FROM activity_stats_hourly") == ["400"]
    assert first.pipeline is not None and second.pipeline is not None
    assert first.pipeline.stats.inserts > 0 and second.pipeline.stats.inserts > 0


async def test_the_same_spool_range_on_two_collectors_is_two_inserts(
    start_server: Any, tmp_path: Path
) -> None:
    # Both spools number their records from 1: the first insert of each is the range 1-1. Its
    # deduplication token must name the collector's spool too, or ClickHouse would drop the second
    # collector's insert as a copy of the first one's.
    servers: list[CollectorServer] = [
        await start_server(spool=True, data_dir=tmp_path / name, drain_interval_ms=5) for name in "ab"
    ]
    for n, server in enumerate(servers):
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ActivityServiceStub(channel)
            batch = [make_activity(n * 10 + i) for i in range(10)]
            assert (
                await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
            ).accepted_count == 10
        await wait_until_drained([server])
        assert server.pipeline is not None and server.pipeline.spool is not None
        assert server.pipeline.spool.committed == 1
    assert query(servers[0], "SELECT count(), uniqExact(id) FROM activities") == ["20", "20"]


async def test_what_a_stopped_collector_acknowledged_is_delivered_by_its_own_restart(
    start_server: Any, make_settings: Any, tmp_path: Path
) -> None:
    first: CollectorServer = await start_server(spool=True, data_dir=tmp_path / "a")
    second: CollectorServer = await start_server(spool=True, data_dir=tmp_path / "b", drain_interval_ms=20)
    assert first.store is not None and second.store is not None
    # ClickHouse is away while the first collector acknowledges, then stops.
    first.store.command("RENAME TABLE activities TO activities_away")
    batches = [[make_activity(n * 10 + i) for i in range(10)] for n in range(6)]
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        for batch in batches[:3]:
            answer = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
            assert answer.accepted_count == 10
    await first.shutdown(grace=0.2)
    second.store.command("RENAME TABLE activities_away TO activities")
    async with grpc.aio.insecure_channel(second.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        for batch in batches[3:]:
            answer = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
            assert answer.accepted_count == 10
    await wait_until_drained([second])
    # The other collector delivers its own; the first one's acknowledged activities wait in its spool ...
    assert query(second, "SELECT count() FROM activities") == ["30"]
    # ... until it starts again on the same data directory (the volume that must outlive a container).
    restarted = CollectorServer(make_settings(spool=True, data_dir=tmp_path / "a", drain_interval_ms=20))
    await restarted.start()
    try:
        await wait_until_drained([restarted])
        assert query(second, "SELECT count(), uniqExact(id) FROM activities") == ["60", "60"]
    finally:
        await restarted.shutdown(grace=1.0)


async def test_round_robin_on_the_client_spreads_calls_over_the_collectors(
    start_server: Any, tmp_path: Path
) -> None:
    # The client-side balancing of docs/scaling.md: one channel, every collector's address (here an
    # ipv4: list; a dns: name with several addresses resolves to the same), the round_robin policy.
    servers: list[CollectorServer] = [await start_server(data_dir=tmp_path / name) for name in "ab"]
    target = "ipv4:" + ",".join(s.address for s in servers)
    async with grpc.aio.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")]) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        for n in range(10):
            batch = [make_activity(n * 10 + i) for i in range(10)]
            assert (
                await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
            ).accepted_count == 10
    committed = [s.pipeline.stats.committed for s in servers if s.pipeline is not None]
    assert sum(committed) == 100 and min(committed) >= 30
    assert query(servers[0], "SELECT count(), uniqExact(id) FROM activities") == ["100", "100"]
