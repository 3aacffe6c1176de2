"""Delivery with the spool on (the default): acknowledged means on disk; ClickHouse gets it behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from activity_client.trailers import retry_delay_from_trailer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import make_activity, reap, start_serve, stop_serve

from collector.process.control import query_via_control
from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.storage.clickhouse import StoreError

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]


def query(store: Any, sql: str) -> list[str]:
    return store.query(sql, "TabSeparated").decode().split()


async def wait_for_rows(store: Any, expected: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(query(store, "SELECT count() FROM activities")[0]) >= expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"ClickHouse did not reach {expected} rows: {query(store, 'SELECT count() FROM activities')}"
    )


async def send_batches(address: str, batches: list[list[pb.Activity]]) -> list[pb.TrackActivitiesResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        return [await stub.TrackActivities(pb.TrackActivitiesRequest(activities=b)) for b in batches]


async def test_a_clickhouse_outage_is_invisible_to_callers(start_server: Any) -> None:
    server: CollectorServer = await start_server(spool=True, flush_interval_ms=5)
    assert server.store is not None
    server.store.command("RENAME TABLE activities TO activities_away")
    batches = [[make_activity(n * 10 + i) for i in range(10)] for n in range(20)]
    try:
        responses = await send_batches(server.address, batches)
        assert [r.accepted_count for r in responses] == [10] * 20
        assert server.pipeline is not None
        deadline = time.monotonic() + 10
        while server.pipeline.stats.insert_retries == 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert server.pipeline.stats.insert_retries > 0
    finally:
        server.store.command("RENAME TABLE activities_away TO activities")
    await wait_for_rows(server.store, 200)
    await asyncio.sleep(0.2)
    assert query(server.store, "SELECT count(), uniqExact(id) FROM activities") == ["200", "200"]
    sent = {a.id for b in batches for a in b}
    assert set(query(server.store, "SELECT toString(id) FROM activities")) == sent


async def test_a_full_spool_answers_resource_exhausted(start_server: Any) -> None:
    server: CollectorServer = await start_server(spool=True, spool_capacity_bytes=20_000, retry_delay_ms=300)
    assert server.store is not None
    server.store.command("RENAME TABLE activities TO activities_away")
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ActivityServiceStub(channel)
            accepted = 0
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                for n in range(100):
                    batch = [make_activity(n * 10 + i) for i in range(10)]
                    accepted += (
                        await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
                    ).accepted_count
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "spool_capacity_bytes" in (refused.value.details() or "")
            assert retry_delay_from_trailer(refused.value.trailing_metadata()) == pytest.approx(0.3)
            assert 0 < accepted < 1000
    finally:
        server.store.command("RENAME TABLE activities_away TO activities")
    await wait_for_rows(server.store, accepted)


async def test_what_was_acknowledged_is_delivered_after_a_restart(
    start_server: Any, make_settings: Any
) -> None:
    first: CollectorServer = await start_server(spool=True)
    assert first.store is not None
    first.store.command("RENAME TABLE activities TO activities_away")
    batches = [[make_activity(n * 10 + i) for i in range(10)] for n in range(5)]
    responses = await send_batches(first.address, batches)
    assert sum(r.accepted_count for r in responses) == 50
    await first.shutdown(grace=0.5)

    second = CollectorServer(make_settings(spool=True))
    await second.start()
    try:
        assert second.store is not None
        second.store.command("RENAME TABLE activities_away TO activities")
        await wait_for_rows(second.store, 50)
        assert query(second.store, "SELECT count(), uniqExact(id) FROM activities") == ["50", "50"]
    finally:
        await second.shutdown(grace=1)


def _serve(data: Path) -> tuple[subprocess.Popen[str], str]:
    """`serve` on `data`: the process and its address. The key a first start creates is kept in `_keys`."""
    proc, address, key = start_serve(data)
    if key is not None:
        _keys[data] = key
    return proc, address


_keys: dict[Path, str] = {}


def _auth(data: Path) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {_keys[data]}"),)


async def test_kill_9_while_streaming_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, address = _serve(data)
    batches = {seq: [make_activity(seq * 1000 + i) for i in range(200)] for seq in range(1, 61)}
    acknowledged: set[int] = set()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ActivityServiceStub(channel)
            call = stub.StreamActivities(metadata=_auth(data))

            async def reader() -> None:
                async for answer in call:
                    if answer.status.code == 0 and answer.accepted_count == 200:
                        acknowledged.add(answer.sequence)

            reading = asyncio.create_task(reader())
            for seq, batch in batches.items():
                await call.write(pb.StreamActivitiesRequest(sequence=seq, activities=batch))
                if seq == 30:
                    await asyncio.sleep(0.2)
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            with pytest.raises(grpc.aio.AioRpcError):
                await reading
    finally:
        reap(proc)
    assert acknowledged, "nothing was acknowledged before the kill"

    # Restart on the same data directory; the client resends every batch it has no answer for.
    proc, address = _serve(data)
    try:
        unanswered = [seq for seq in batches if seq not in acknowledged]
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ActivityServiceStub(channel)
            for seq in unanswered:
                response = await stub.TrackActivities(
                    pb.TrackActivitiesRequest(activities=batches[seq]), metadata=_auth(data)
                )
                assert response.accepted_count == 200
        assert stop_serve(proc) == 0
    finally:
        reap(proc)
    # Read ClickHouse through a collector on the same data directory.
    settle, address = _serve(data)
    try:
        expected = len(batches) * 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sql(data, "SELECT count() FROM activities FINAL") == [str(expected)]:
                break
            await asyncio.sleep(0.2)
        got = sql(data, "SELECT toString(id) FROM activities FINAL")
    finally:
        settle.send_signal(signal.SIGTERM)
        try:
            settle.wait(timeout=30)
        finally:
            reap(settle)
    sent = {a.id for b in batches.values() for a in b}
    assert len(got) == len(sent) and set(got) == sent
    acked_ids = {a.id for seq in acknowledged for a in batches[seq]}
    assert acked_ids <= set(got)


def sql(data: Path, statement: str) -> list[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector.cli",
            "sql",
            "--data-dir",
            str(data),
            "--format",
            "tsv",
            statement,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1:]


def plant_records(settings: Any) -> tuple[pb.Activity, pb.Activity, bytes]:
    """Rows in the spool that slipped past validation (as if written by a collector with a different
    schema): one record ClickHouse refuses for its data, between two it takes."""
    from helpers import items

    from workers.commit.spool import Spool
    from workers.rows import encode_rows

    good_a, good_b = make_activity(1), make_activity(2)
    bad = make_activity(3, id="0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4d5e")
    bad_rows = b"".join(encode_rows(items([bad]), "default", time.time_ns(), None).pieces)
    bad_rows = bad_rows.replace(
        b"0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4d5e", b"0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4dZZ"
    )
    spool = Spool(settings.spool_dir, capacity_bytes=10_000_000)
    spool.open()
    spool.append(
        [
            (1, b"".join(encode_rows(items([good_a]), "default", time.time_ns(), None).pieces)),
            (1, bad_rows),
            (1, b"".join(encode_rows(items([good_b]), "default", time.time_ns(), None).pieces)),
        ]
    )
    spool.sync()
    spool.close()
    return good_a, good_b, bad_rows


async def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_rows_clickhouse_refuses_become_dead_letters_and_the_rest_is_delivered(
    make_settings: Any,
) -> None:
    from workers.commit.deadletters import DeadLetterStore

    settings = make_settings(spool=True)
    good_a, good_b, bad_rows = plant_records(settings)
    server = CollectorServer(settings)
    await server.start()
    try:
        assert server.store is not None and server.pipeline is not None and server.postgres is not None
        await wait_for_rows(server.store, 2)
        pipeline = server.pipeline
        await wait_for(lambda: pipeline.stats.dead_letters >= 1, "the dead letter")
        assert server.pipeline.stats.dead_letters == 1
        assert set(query(server.store, "SELECT toString(id) FROM activities")) == {good_a.id, good_b.id}
        letters = await DeadLetterStore(server.postgres.pool).list()
        assert len(letters) == 1
        assert letters[0].rows == bad_rows
        assert (letters[0].count, letters[0].tenant, letters[0].error_code) == (1, "default", 376)
        assert "uuid" in letters[0].error.lower()
    finally:
        await server.shutdown(grace=1)


async def test_dead_letters_wait_in_the_spool_while_postgresql_refuses_them(
    make_settings: Any, postgres_dsn: str
) -> None:
    import asyncpg

    from workers.commit.deadletters import DeadLetterStore

    settings = make_settings(spool=True)
    good_a, good_b, bad_rows = plant_records(settings)
    first = CollectorServer(settings)
    await first.start()
    assert first.postgres is not None and first.store is not None and first.pipeline is not None
    await first.postgres.pool.execute("ALTER TABLE dead_letters RENAME TO dead_letters_away")
    try:
        await wait_for_rows(first.store, 2)
        pipeline = first.pipeline
        await wait_for(lambda: pipeline.stats.dead_letter_failures >= 2, "failed dead-letter writes")
        assert pipeline.stats.dead_letters == 0
        await first.shutdown(grace=0.5)
    finally:
        conn = await asyncpg.connect(postgres_dsn)
        await conn.execute("ALTER TABLE dead_letters_away RENAME TO dead_letters")
        await conn.close()

    # The refused record stayed in the spool: the next start keeps it, once, and stores nothing twice.
    second = CollectorServer(settings)
    await second.start()
    try:
        assert second.postgres is not None and second.store is not None and second.pipeline is not None
        pipeline = second.pipeline
        await wait_for(lambda: pipeline.stats.dead_letters >= 1, "the dead letter")
        letters = await DeadLetterStore(second.postgres.pool).list()
        assert [(x.count, x.rows) for x in letters] == [(1, bad_rows)]
        assert sorted(query(second.store, "SELECT toString(id) FROM activities")) == sorted(
            [good_a.id, good_b.id]
        )
    finally:
        await second.shutdown(grace=1)


# -- starting while ClickHouse is unreachable ------------------------------------------------------
# No ClickHouse server runs on these machines (the embedded engine is in-process), so a store that is
# unreachable and then answers within one run of a server cannot be staged here: the outage is a closed
# port, and the store comes back as the embedded engine, at the next start on the same data directory.
# tests/workers/storage/test_connector.py covers a store that becomes usable within one run.


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, number = line.rpartition(" ")
            samples[name] = float(number)
    return samples


async def test_with_the_spool_on_the_collector_starts_and_acknowledges_without_clickhouse(
    start_server: Any,
) -> None:
    server: CollectorServer = await start_server(
        spool=True, clickhouse_dsn=f"http://collector:s3cret@127.0.0.1:{closed_port()}", health_interval_s=0.1
    )
    assert server.connector is not None and server.health is not None and server.metrics_server is not None
    responses = await send_batches(server.address, [[make_activity(n) for n in range(10)]])
    assert responses[0].accepted_count == 10
    await wait_for(lambda: server.connector is not None and server.connector.attempts >= 2, "a retry")
    samples = await asyncio.to_thread(scrape, server.metrics_server.url)
    assert samples["activity_collector_store_ready"] == 0
    assert samples["activity_collector_store_connect_attempts_total"] >= 2
    assert samples["activity_collector_store_up"] == 0
    assert samples["activity_collector_serving"] == 1
    assert samples["activity_collector_spool_activities"] == 10
    # Commands that need the store get a clear error from the server, which keeps running.
    with pytest.raises(
        StoreError, match=r"not connected to ClickHouse at http://collector:\*\*\*@127\.0\.0\.1"
    ):
        await asyncio.to_thread(query_via_control, server.settings.control_socket, "SELECT 1", "TSV")
    assert (await send_batches(server.address, [[make_activity(11)]]))[0].accepted_count == 1


async def test_with_the_spool_off_start_fails_naming_the_dsn_without_its_password(start_server: Any) -> None:
    with pytest.raises(StoreError) as failed:
        await start_server(spool=False, clickhouse_dsn=f"http://collector:s3cret@127.0.0.1:{closed_port()}")
    message = str(failed.value)
    assert "ClickHouse at http://collector:***@127.0.0.1" in message and "s3cret" not in message
    assert "spool" in message


def read_stderr(proc: subprocess.Popen[str]) -> list[str]:
    """Lines the process writes to standard error, collected by a thread, so that its log never fills
    the pipe and blocks it."""
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        lines.extend(proc.stderr)

    threading.Thread(target=read, daemon=True).start()
    return lines


def read_until(proc: subprocess.Popen[str], last: str) -> list[str]:
    """What `serve` prints after its address, up to the line starting with `last`."""
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith(last):
        line = proc.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
    return lines


async def wait_for_status(health: health_pb2_grpc.HealthStub, status: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (answer := await health.Check(health_pb2.HealthCheckRequest())).status != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"health stayed {answer.status}, expected {status}")
        await asyncio.sleep(0.05)


async def test_serve_without_clickhouse_acknowledges_until_the_spool_is_full_and_a_restart_delivers(
    tmp_path: Path, postgres_dsn: str
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "collector.toml"
    # A small spool; requests small enough that health can tell it full from almost full.
    config.write_text(
        "auth = false\nhealth_interval_s = 0.1\n"
        "[limits]\nmax_request_bytes = 65536\n"
        "[pipeline]\nspool_capacity_bytes = 262144\nretry_delay_ms = 300\n"
    )
    flags = ("--config", str(config), "--postgres-dsn", postgres_dsn)
    dsn = f"http://collector:s3cret@127.0.0.1:{closed_port()}"
    proc, address, _ = start_serve(data, *flags, "--clickhouse-dsn", dsn)
    log = read_stderr(proc)
    acknowledged: list[str] = []
    try:
        printed = "".join(read_until(proc, "data directory"))
        assert "ClickHouse is not reachable yet" in printed and "s3cret" not in printed
        metrics_url = printed.split("metrics at ", 1)[1].split()[0]
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ActivityServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            await wait_for_status(health, health_pb2.HealthCheckResponse.SERVING)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                for n in range(10_000):
                    batch = [make_activity(n * 20 + i) for i in range(20)]
                    response = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
                    assert response.accepted_count == 20
                    acknowledged.extend(a.id for a in batch)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "spool_capacity_bytes" in (refused.value.details() or "")
            assert retry_delay_from_trailer(refused.value.trailing_metadata()) == pytest.approx(0.3)
            assert len(acknowledged) >= 200
            await wait_for_status(health, health_pb2.HealthCheckResponse.NOT_SERVING)
        samples = await asyncio.to_thread(scrape, metrics_url)
        assert samples["activity_collector_store_ready"] == 0
        assert samples["activity_collector_store_connect_attempts_total"] >= 1
        assert samples["activity_collector_spool_activities"] == len(acknowledged)
        assert stop_serve(proc) == 0
    finally:
        reap(proc)
    assert any("store not reachable, connecting again" in line for line in log), "".join(log[-20:])

    # The same data directory, and a store that is there: the embedded engine.
    proc, address, _ = start_serve(data, *flags)
    read_stderr(proc)
    try:
        deadline = time.monotonic() + 30
        while sql(data, "SELECT count() FROM activities") != [str(len(acknowledged))]:
            assert time.monotonic() < deadline, sql(data, "SELECT count() FROM activities")
            await asyncio.sleep(0.2)
        # Counted without FINAL: each acknowledged activity was inserted once, and nothing else was.
        assert sorted(sql(data, "SELECT toString(id) FROM activities")) == sorted(acknowledged)
        assert stop_serve(proc) == 0
    finally:
        reap(proc)
