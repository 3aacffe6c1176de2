"""The Python client against a live collector on loopback.

The collector runs on the test's event loop, so blocking calls of the threaded `Client` (`close`,
`flush`, a `track` that blocks) go through `asyncio.to_thread`, as they would from another thread.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from activity_client.client import AsyncClient, BatchResult, BufferFull, Client, ClientClosed
from helpers import hold_inserts, make_activity, wait_for

from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def stored(server: CollectorServer, columns: str = "id", order: str = "id") -> list[list[str]]:
    assert server.store is not None
    text = server.store.query(f"SELECT {columns} FROM activities ORDER BY {order}", "TabSeparated").decode()
    return [line.split("\t") for line in text.splitlines()]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def view(n: int) -> dict[str, Any]:
    return {
        "action": "view",
        "target": {"type": "product", "id": f"sku-{n}"},
        "user": {"anonymous_id": f"a-{n}"},
    }


async def test_client_assigns_ids_batches_and_flushes_on_close(server: CollectorServer) -> None:
    client = Client(server.address, batch_size=10, flush_interval=30)
    ids = [client.track(**view(n)) for n in range(25)]
    given = make_activity(99)
    assert client.track(given) == given.id
    await asyncio.to_thread(client.close)

    assert all(uuid.UUID(i).version == 4 for i in ids) and len(set(ids)) == 25
    assert sorted(r[0] for r in stored(server)) == sorted([*ids, given.id])
    stats = client.stats
    assert (stats.tracked, stats.accepted, stats.rejected, stats.failed, stats.buffered) == (26, 26, 0, 0, 0)
    # 26 activities in batches of at most 10; the long flush_interval never fired: close sent the rest.
    assert stats.batches == 3
    with pytest.raises(ClientClosed):
        client.track(**view(1))
    await asyncio.to_thread(client.close)  # idempotent


async def test_client_stamps_occurred_at_when_tracked_not_when_sent(server: CollectorServer) -> None:
    client = Client(server.address, flush_interval=30)
    before = time.time()
    client.track(**view(1))
    after = time.time()
    # Sent (by close) at least 1.5 s after it was tracked, however busy the machine.
    await asyncio.sleep(1.5)
    await asyncio.to_thread(client.close)
    [[occurred, received]] = stored(
        server, "toUnixTimestamp64Milli(occurred_at), toUnixTimestamp64Milli(received_at)"
    )
    # Stamped inside track() (to the millisecond), not when sent.
    assert int(before * 1000) <= int(occurred) <= int(after * 1000) + 1
    assert int(received) - int(occurred) >= 1000


async def test_a_partial_batch_goes_after_flush_interval(server: CollectorServer) -> None:
    async with AsyncClient(server.address, batch_size=1000, flush_interval=0.2) as client:
        ids = [await client.track(**view(n)) for n in range(3)]
        deadline = time.monotonic() + 10
        while client.stats.accepted < 3:
            assert time.monotonic() < deadline, client.stats
            await asyncio.sleep(0.05)
        assert client.stats.batches == 1
    assert sorted(r[0] for r in stored(server)) == sorted(ids)


async def test_batches_are_stored_in_the_order_they_were_tracked(server: CollectorServer) -> None:
    async with AsyncClient(server.address, batch_size=5, flush_interval=0.01) as client:
        ids = []
        for n in range(60):
            ids.append(await client.track(**view(n)))
            if n % 7 == 0:
                await asyncio.sleep(0.01)
    assert client.stats.accepted == 60 and client.stats.batches >= 12
    received = {i: int(t) for i, t in stored(server, "id, toUnixTimestamp64Nano(received_at)")}
    times = [received[i] for i in ids]
    assert times == sorted(times)


async def test_rejections_are_counted_and_reported_with_their_activity(server: CollectorServer) -> None:
    seen: list[tuple[str, str, int]] = []
    async with AsyncClient(
        server.address, on_rejection=lambda a, r: seen.append((a.id, r.field, r.reason))
    ) as client:
        good = await client.track(**view(1))
        bad = await client.track(action="view", target={"type": "product"}, user={"anonymous_id": "a"})
        assert await client.flush(timeout=10)
        assert (client.stats.accepted, client.stats.rejected) == (1, 1)
    assert seen == [(bad, "target.id", pb.REJECTION_REASON_MISSING_FIELD)]
    assert stored(server) == [[good]]


async def test_on_batch_tells_what_became_of_every_batch_by_the_numbers_of_its_activities(
    server: CollectorServer,
) -> None:
    results: list[BatchResult] = []
    async with AsyncClient(
        server.address, batch_size=2, flush_interval=30, on_batch=results.append
    ) as client:
        for n in range(5):
            if n == 3:
                await client.track(action="view", target={"type": "product"}, user={"anonymous_id": "a"})
            else:
                await client.track(**view(n))
    assert [(r.first, r.size, r.accepted, r.failed) for r in results] == [
        (0, 2, 2, False),
        (2, 2, 1, False),
        (4, 1, 1, False),
    ]
    # A rejection's index counts from the batch's first activity: number 3 is the second of the second.
    [rejection] = results[1].rejections
    assert (rejection.index, rejection.field) == (1, "target.id")
    assert [list(r.positions) for r in results] == [[0, 1], [2, 3], [4]]


async def test_max_attempts_bounds_the_sends_of_a_batch() -> None:
    results: list[BatchResult] = []
    client = Client(
        f"127.0.0.1:{closed_port()}",
        flush_interval=0.01,
        max_attempts=3,
        retry_timeout=3600,
        on_batch=results.append,
    )
    client.track(**view(1))
    started = time.monotonic()
    assert await asyncio.to_thread(client.flush, 20)
    assert time.monotonic() - started < 10
    await asyncio.to_thread(client.close)
    assert (client.stats.failed, client.stats.resends) == (1, 2)
    [result] = results
    assert (result.first, result.size, result.accepted, result.failed) == (0, 1, 0, True)
    assert result.code == grpc.StatusCode.UNAVAILABLE and result.error


async def test_on_batch_hears_of_what_close_gave_up() -> None:
    results: list[BatchResult] = []
    client = stuck_client(on_batch=results.append)
    await asyncio.to_thread(client.close, 0.2)
    # The batch being resent when close gave up, then the three still in the buffer.
    assert [(r.first, r.size, r.code, r.error) for r in results] == [
        (0, 1, None, "the client was closed before the batch was stored"),
        (1, 3, None, "the client was closed before they were sent"),
    ]
    assert client.stats.failed == client.stats.tracked == 4


async def test_resends_after_resource_exhausted_and_stores_once(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first request fills the queue; its insert is held until the client's batch has been refused.
    server: CollectorServer = await start_server(
        queue_capacity=100,
        max_batch_activities=100,
        insert_workers=1,
        retry_delay_ms=200,
    )
    pipeline = server.pipeline
    assert pipeline is not None
    release = hold_inserts(server, monkeypatch)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        filler = [make_activity(n) for n in range(100)]
        first = asyncio.ensure_future(stub.TrackActivities(pb.TrackActivitiesRequest(activities=filler)))
        try:
            await wait_for(lambda: pipeline.pending == 100, "the first request to fill the queue")
            async with AsyncClient(server.address, flush_interval=0.01) as client:
                ids = [await client.track(**view(n)) for n in range(5)]
                await wait_for(lambda: pipeline.stats.refused >= 5, "the client's batch to be refused")
                release.set()
                assert await client.flush(timeout=20)
                stats = client.stats
        finally:
            release.set()
        await first
    assert server.pipeline.stats.refused >= 5
    assert stats.resends >= 1
    assert (stats.accepted, stats.failed) == (5, 0)
    assert sorted(r[0] for r in stored(server)) == sorted([*ids, *(a.id for a in filler)])


async def test_a_failing_store_is_resent_to_until_retry_timeout_then_counted(server: CollectorServer) -> None:
    assert server.store is not None
    server.store.command("RENAME TABLE activities TO activities_away")
    try:
        async with AsyncClient(server.address, retry_timeout=1.5, flush_interval=0.01) as client:
            for n in range(4):
                await client.track(**view(n))
            assert await client.flush(timeout=20)
            stats = client.stats
    finally:
        server.store.command("RENAME TABLE activities_away TO activities")
    assert (stats.accepted, stats.failed) == (0, 4)
    assert stats.resends >= 1


async def test_a_batch_refused_for_good_is_not_resent(start_server: Any) -> None:
    server: CollectorServer = await start_server(max_batch_activities=3, queue_capacity=1000)
    async with AsyncClient(server.address, batch_size=5, flush_interval=0.01) as client:
        for n in range(5):
            await client.track(**view(n))
        assert await client.flush(timeout=10)
        stats = client.stats
    assert (stats.accepted, stats.failed, stats.resends) == (0, 5, 0)


def stuck_client(**options: Any) -> Client:
    """A client whose sender keeps resending its first batch to a port where nobody listens, with its
    buffer (of 3) full."""
    client = Client(f"127.0.0.1:{closed_port()}", batch_size=1, flush_interval=0.01, buffer_size=3, **options)
    client.track(**view(0))
    deadline = time.monotonic() + 5
    while client.stats.buffered:  # the sender has taken it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for n in range(3):
        client.track(**view(n))
    assert client.stats.buffered == 3
    return client


async def test_full_buffer_drop_counts_what_it_drops() -> None:
    client = stuck_client(when_full="drop")
    for n in range(10):
        client.track(**view(n))
    stats = client.stats
    assert stats.dropped == stats.full >= 10
    assert stats.buffered == 3
    await asyncio.to_thread(client.close, 0.2)
    assert client.stats.failed == client.stats.tracked


async def test_full_buffer_raise_and_block_raise_buffer_full() -> None:
    raising = stuck_client(when_full="raise")
    blocking = stuck_client(when_full="block", block_timeout=0.3)
    try:
        with pytest.raises(BufferFull, match="buffer_size"):
            raising.track(**view(1))
        started = time.monotonic()
        with pytest.raises(BufferFull, match=r"0\.3s"):
            blocking.track(**view(1))
        # It waited its block_timeout, and then gave up: it did not wait for room that never comes
        # (nothing empties the buffer of a client stuck on a closed port).
        assert 0.25 <= time.monotonic() - started < 30
        assert raising.stats.full == 1 and blocking.stats.full == 1
        assert raising.stats.dropped == blocking.stats.dropped == 0
    finally:
        await asyncio.to_thread(raising.close, 0.2)
        await asyncio.to_thread(blocking.close, 0.2)


async def test_a_blocked_track_goes_on_once_there_is_room(server: CollectorServer) -> None:
    client = Client(server.address, batch_size=2, buffer_size=2, flush_interval=0.01, block_timeout=10)

    def produce() -> list[str]:
        return [client.track(**view(n)) for n in range(40)]

    ids = await asyncio.to_thread(produce)
    await asyncio.to_thread(client.close)
    assert client.stats.accepted == 40 and client.stats.full > 0
    assert sorted(r[0] for r in stored(server)) == sorted(ids)


async def test_async_client_blocks_without_blocking_the_loop(server: CollectorServer) -> None:
    async with AsyncClient(
        server.address, batch_size=2, buffer_size=2, flush_interval=0.01, block_timeout=10
    ) as client:
        ids = [await client.track(**view(n)) for n in range(40)]
    assert client.stats.accepted == 40 and client.stats.full > 0
    assert sorted(r[0] for r in stored(server)) == sorted(ids)

    stuck = AsyncClient(
        f"127.0.0.1:{closed_port()}", batch_size=1, buffer_size=1, flush_interval=0.01, block_timeout=0.3
    )
    try:
        with pytest.raises(BufferFull):
            for _ in range(10):
                await stuck.track(**view(0))
    finally:
        await stuck.close(timeout=0.2)


async def test_buffered_activities_are_sent_at_interpreter_exit(server: CollectorServer) -> None:
    script = textwrap.dedent(
        f"""
        from activity_client.client import Client
        client = Client({server.address!r}, flush_interval=60)
        for n in range(3):
            target = {{"type": "page", "id": "home"}}
            print(client.track(action="view", target=target, user={{"user_id": "u"}}))
        # No close(): the client is flushed at exit.
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert sorted(r[0] for r in stored(server)) == sorted(out.decode().split())


def test_bad_options_are_refused_naming_the_option() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        Client(batch_size=0)
    with pytest.raises(ValueError, match="max_attempts"):
        Client(max_attempts=0)
    with pytest.raises(ValueError, match="when_full"):
        Client(when_full="wait")  # type: ignore[arg-type]
    client = Client(f"127.0.0.1:{closed_port()}")
    with pytest.raises(TypeError, match="not both"):
        client.track(make_activity(1), action="view")
    client.close()
