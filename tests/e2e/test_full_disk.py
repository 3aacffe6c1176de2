"""A full disk under the spool: refused early, named for what it is, drained at once when space is back.

A small tmpfs is mounted where the collector keeps its spool (root, or the right to mount, is needed;
without it the tests are skipped, saying so). Eight callers send batches of 100 while ClickHouse is
away, so the spool grows until its disk is short; then the disk fills for real (the reserve lowered to
nothing, as when another writer takes it, then a ballast file for the rest); then ClickHouse comes back
while the disk is still full; then space is freed. Every acknowledged activity must reach ClickHouse
once, within seconds of each step, every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from activity_client.trailers import retry_delay_from_trailer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import make_activity, reap, start_serve, stop_serve, wait_for

from collector.process.control import query_via_control
from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.commit.spool import Spool
from workers.storage.clickhouse import ClickHouseStore

pytestmark = pytest.mark.timeout(120)

DISK = 12 * 1024 * 1024
RESERVE = 3 * 1024 * 1024
CALLERS = 8
BATCH = 100
RUNS = 20


def mount(options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *options.split()], capture_output=True, text=True, check=False)


@pytest.fixture
def spool_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK bytes where the collector of `tmp_path / "data"` keeps its spool."""
    directory = tmp_path / "data" / "spool"
    directory.mkdir(parents=True)
    done = mount(f"-t tmpfs -o size={DISK} tmpfs {directory}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip()}): run as root")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def fill(directory: Path) -> Path:
    """A file taking every byte left on `directory`'s file system."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


class Callers:
    """CALLERS tasks sending batches of BATCH until stopped; every answer is kept, in order."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.acked: set[str] = set()
        self.answers: list[str] = []  # the status code of every call, in the order they came
        self.details: Counter[str] = Counter()
        self.refusal_delays: set[float] = set()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.address)
        stub = pb_grpc.ActivityServiceStub(self._channel)
        self._tasks = [asyncio.create_task(self._call(stub, n)) for n in range(CALLERS)]

    def count(self, code: str) -> int:
        return self.answers.count(code)

    async def _call(self, stub: pb_grpc.ActivityServiceStub, caller: int) -> None:
        n = 0
        while not self._stop.is_set():
            batch = [make_activity(caller * 1_000_000 + n + i) for i in range(BATCH)]
            n += BATCH
            try:
                answer = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
            except grpc.aio.AioRpcError as error:
                code = error.code().name
                self.answers.append(code)
                self.details[f"{code}: {(error.details() or '').split(':')[0]}"] += 1
                delay = retry_delay_from_trailer(error.trailing_metadata())
                if code == "RESOURCE_EXHAUSTED" and delay is not None:
                    self.refusal_delays.add(delay)
                await asyncio.sleep(delay or 0.05)
                continue
            assert answer.accepted_count == BATCH and not answer.rejections
            self.acked.update(a.id for a in batch)
            self.answers.append("OK")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._channel is not None:
            await self._channel.close()


def scrape(server: CollectorServer) -> dict[str, float]:
    assert server.metrics_server is not None
    with urllib.request.urlopen(server.metrics_server.url, timeout=10) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("activity_collector_") and "{" not in line:
            name, _, number = line.partition(" ")
            values[name.removeprefix("activity_collector_")] = float(number)
    return values


def in_clickhouse(store: ClickHouseStore) -> tuple[int, int, set[str]]:
    """(count() FINAL, distinct ids, the ids) of `activities`."""
    final = int(store.query("SELECT count() FROM activities FINAL", "TabSeparated"))
    ids = set(store.query("SELECT toString(id) FROM activities", "TabSeparated").decode().split())
    distinct = int(store.query("SELECT uniqExact(id) FROM activities", "TabSeparated"))
    return final, distinct, ids


SETTINGS: dict[str, Any] = {
    "spool": True,
    "spool_segment_bytes": 1024 * 1024,
    "spool_min_free_bytes": RESERVE,
    "health_interval_s": 0.2,
    "retry_delay_ms": 100,
    "drain_interval_ms": 100,
}


@pytest.mark.parametrize("run", range(RUNS))
async def test_a_full_disk_under_the_spool(spool_disk: Path, start_server: Any, run: int) -> None:
    # Every other run stops the collector while the backlog drains, and starts it again.
    stop_while_draining = run % 2 == 1
    server: CollectorServer = await start_server(**SETTINGS)
    store, pipeline, health = server.store, server.pipeline, server.health
    assert store is not None and pipeline is not None and health is not None
    spool = pipeline.spool
    assert spool is not None and spool.directory == spool_disk
    figures: dict[str, float] = {}

    # 1. ClickHouse away: the spool grows until its disk is short, then refuses, before any write fails.
    store.command("RENAME TABLE activities TO activities_away")
    callers = Callers(server.address)
    await callers.start()
    try:
        await wait_for(lambda: callers.count("RESOURCE_EXHAUSTED") > 0, "a refusal for the disk", 60)
        assert callers.count("UNAVAILABLE") == 0, callers.details
        assert callers.refusal_delays == {0.1}
        assert any("spool's disk is full" in d for d in callers.details), callers.details
        assert spool.stats.disk_failures == 0  # refused before any write could fail
        acked_before_full = len(callers.acked)
        assert acked_before_full > 0

        # Health and metrics name the disk, not the store.
        async with grpc.aio.insecure_channel(server.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            await wait_for(lambda: not health.serving, "health to turn NOT_SERVING")
            answer = await check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.spool_error.startswith("the spool's disk is full: "), health.spool_error
        assert str(spool_disk) in health.spool_error
        metrics = await asyncio.to_thread(scrape, server)
        assert metrics["spool_disk_free_bytes"] < RESERVE + 4 * 1024 * 1024
        assert metrics["spool_min_free_bytes"] == RESERVE
        assert metrics["spool_disk_ok"] == 0
        assert metrics["spool_disk_refusals_total"] > 0

        # 2. The disk fills for real: the reserve is gone (another writer took it), so appends run
        # into ENOSPC, in the middle of records; the callers are still refused, not failed.
        spool.min_free_bytes = 0
        await wait_for(lambda: spool.stats.disk_failures > 0, "a write to fail for lack of space", 30)
        ballast = await asyncio.to_thread(fill, spool_disk)
        assert free_bytes(spool_disk) < 64 * 1024
        refused = callers.count("RESOURCE_EXHAUSTED")
        await wait_for(lambda: callers.count("RESOURCE_EXHAUSTED") > refused + CALLERS, "refusals on ENOSPC")
        assert callers.count("UNAVAILABLE") == 0, callers.details
        assert health.spool_error, "health must say the spool's disk fails"

        # 3. ClickHouse is back while the disk is full: draining needs no new space.
        acked = len(callers.acked)
        committed = pipeline.stats.committed
        started = time.monotonic()
        store.command("RENAME TABLE activities_away TO activities")
        if not stop_while_draining:
            await wait_for(lambda: pipeline.stats.committed >= acked, "the drain on a full disk", 30)
            figures["drain on a full disk (s)"] = time.monotonic() - started
            assert pipeline.stats.committed > committed
            # The checkpoint never needed space: nothing but ClickHouse held the drain.
            assert "checkpoint" not in spool.stats.errors
            await wait_for(lambda: health.store_up, "health to see the store up again")

            # 4. Space is back: accepted again at once.
            ballast.unlink()
            spool.min_free_bytes = RESERVE
            oks = callers.count("OK")
            started = time.monotonic()
            await wait_for(lambda: callers.count("OK") > oks + CALLERS, "acknowledgements after freeing", 10)
            figures["accepting again (s)"] = time.monotonic() - started
    finally:
        await callers.stop()
        with contextlib.suppress(Exception):
            store.command("RENAME TABLE activities_away TO activities")
    acked_ids = callers.acked
    assert callers.count("UNAVAILABLE") == 0, callers.details

    if stop_while_draining:
        # A graceful stop while the backlog drains, the disk still full: the spool is left consistent,
        # and the next start, with space back, sends the rest.
        await server.shutdown(grace=0.3)
        left = Spool(spool_disk, capacity_bytes=10**9, min_free_bytes=0)
        left.open()
        pending, planned = sum(left.pending_counts().values()), len(left.planned())
        damaged = left.stats.corrupt_records
        left.close()
        assert damaged == 0
        figures["activities left in the spool at the stop"] = pending
        figures["inserts planned at the stop"] = planned
        ballast.unlink()
        started = time.monotonic()
        server = await start_server(**SETTINGS)
        assert server.store is not None and server.pipeline is not None and server.health is not None
        store, pipeline, health = server.store, server.pipeline, server.health
        await wait_for(lambda: in_clickhouse(store)[1] >= len(acked_ids), "every acknowledged activity", 30)
        figures["all delivered after the restart (s)"] = time.monotonic() - started
    else:
        started = time.monotonic()
        await wait_for(lambda: pipeline.stats.committed >= len(acked_ids), "every acknowledged activity", 30)
        figures["all delivered after the callers stopped (s)"] = time.monotonic() - started
    final, distinct, ids = in_clickhouse(store)
    assert (final, distinct) == (len(acked_ids), len(acked_ids))
    assert ids == acked_ids
    await wait_for(lambda: health.serving and not health.spool_error, "health to turn SERVING again")

    # A graceful stop leaves the spool consistent for the next start: nothing pending, nothing damaged.
    await server.shutdown(grace=5)
    again = Spool(spool_disk, capacity_bytes=10**9, min_free_bytes=0)
    again.open()
    try:
        assert (again.pending_counts(), again.planned(), again.stats.corrupt_records) == ({}, [], 0)
    finally:
        again.close()
    print(
        f"run {run}: {len(acked_ids)} acknowledged, {acked_before_full} before the disk was short; "
        f"answers {dict(Counter(callers.answers))}; spool disk failures {spool.stats.disk_failures}; "
        + ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
    )


@pytest.fixture
def data_disk(tmp_path: Path) -> Iterator[Path]:
    """A 128 MiB tmpfs holding a whole data directory: the spool, the embedded engine's data, beside
    each other as by default."""
    directory = tmp_path / "disk"
    directory.mkdir()
    done = mount(f"-t tmpfs -o size={128 * 1024 * 1024} tmpfs {directory}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip()}): run as root")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def control_query(data: Path, sql: str) -> str:
    return query_via_control(data / "control.sock", sql, "TabSeparated").decode()


async def test_a_full_disk_under_the_embedded_engine(data_disk: Path, postgres_dsn: str) -> None:
    """`serve` in its own process (the embedded engine takes one data directory per process), its data
    directory on the tmpfs. Twice: acknowledged activities spooled, then the disk filled before they
    are inserted: the engine's inserts fail (ClickHouse's NOT_ENOUGH_SPACE), the spool holds them and
    refuses more, health and the log say which disk; once space is freed they arrive, once each."""
    data = data_disk / "data"
    config = data_disk.parent / "collector.toml"
    config.write_text(
        "auth = false\nhealth_interval_s = 0.2\n[pipeline]\n"
        f"spool_min_free_bytes = {8 * 1024 * 1024}\ndrain_interval_ms = 1500\nretry_delay_ms = 100\n"
    )
    proc, address, _ = start_serve(data, "--config", str(config), "--postgres-dsn", postgres_dsn)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr or ()), daemon=True).start()
    acked: list[str] = []
    try:
        assert proc.stdout is not None
        printed = ""
        while "data directory" not in printed:
            printed += proc.stdout.readline()
        metrics_url = printed.split("metrics at ", 1)[1].split()[0]
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ActivityServiceStub(channel)
            check = health_pb2_grpc.HealthStub(channel).Check
            for cycle in range(2):
                for n in range(5):
                    batch = [make_activity(cycle * 10_000 + n * BATCH + i) for i in range(BATCH)]
                    answer = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
                    assert answer.accepted_count == BATCH
                    acked.extend(a.id for a in batch)
                # The disk fills before the drain (every drain_interval_ms) inserts them.
                ballast = await asyncio.to_thread(fill, data_disk)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.TrackActivities(pb.TrackActivitiesRequest(activities=[make_activity(0)]))
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "spool_min_free_bytes" in (refused.value.details() or "")

                def failed_for_space(after: int = len(log)) -> bool:
                    return sum('"disk_full": true' in line for line in log[after:]) >= 4

                await wait_for(failed_for_space, "inserts to fail for the engine's full disk", 15)
                assert control_query(data, "SELECT count() FROM activities").strip() == str(cycle * 5 * BATCH)
                answer = await check(health_pb2.HealthCheckRequest())
                assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
                metrics = await asyncio.to_thread(scrape_url, metrics_url)
                assert metrics["spool_disk_ok"] == 0 and metrics["spool_disk_free_bytes"] < 64 * 1024

                ballast.unlink()
                started = time.monotonic()
                await wait_for(
                    lambda: control_query(data, "SELECT count() FROM activities").strip() == str(len(acked)),
                    "the spooled activities to arrive once space is back",
                    10,
                )
                print(f"cycle {cycle}: delivered {time.monotonic() - started:.2f} s after space was freed")
            counts = control_query(data, "SELECT count(), uniqExact(id) FROM activities FINAL").split()
            assert counts == [str(len(acked))] * 2
            ids = set(control_query(data, "SELECT toString(id) FROM activities").split())
            assert ids == set(acked)
            # A probe slower than its interval (0.2 s here) is reported as such, as a busy machine may
            # make it; every other report names the full disk.
            health_errors = [
                line
                for line in log
                if "store unreachable" in line and "the probe query took longer than" not in line
            ]
            assert health_errors, "health never saw the inserts fail"
            assert all("ClickHouse's disk is full" in line for line in health_errors), health_errors
        assert stop_serve(proc) == 0
    finally:
        reap(proc)
    spooled = [line for line in log if "spooled insert failed" in line]
    assert spooled and all('"transient": true' in line for line in spooled), spooled[:3]


def scrape_url(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        line.partition(" ")[0].removeprefix("activity_collector_"): float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("activity_collector_") and "{" not in line
    }
