"""Per-tenant quotas behind a real gRPC door: a noisy tenant is refused with RESOURCE_EXHAUSTED and a
retry delay while a quiet one goes on as before; counted per tenant in /metrics; a tenant's own quota
replaces the default without restart. The noisy-neighbour test floods from a process of its own and
prints the quiet tenant's latency without and with the flood (`pytest -s` shows it)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import statistics
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from activity_client.trailers import retry_delay_from_trailer
from helpers import bearer, make_activity
from prometheus_client.parser import text_string_to_metric_families

from collector.process.server import CollectorServer
from collector.tenants import TenantStore
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.processors.quota import QuotaStore

pytestmark = pytest.mark.timeout(90)


def metric(server: CollectorServer, name: str, **labels: str) -> float:
    assert server.metrics_server is not None
    with urllib.request.urlopen(server.metrics_server.url, timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "activity_collector_" + name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def test_a_noisy_tenant_is_refused_and_its_neighbour_is_not(start_server: Any) -> None:
    # Refusals answered at once: the noisy tenant's pace is the test's own, not the hold's
    # (test_refusal_hold.py).
    server: CollectorServer = await start_server(
        auth=True, quota_rate=20.0, quota_burst=40.0, plan_refresh_s=0.1, quota_refusal_hold_ms=0
    )
    assert server.postgres is not None and server.quotas is not None
    tenants = TenantStore(server.postgres.pool)
    keys = {}
    for tenant in ("noisy", "quiet"):
        await tenants.create_tenant(tenant)
        keys[tenant], _ = await tenants.create_key(tenant)

    def batch(n: int) -> pb.TrackActivitiesRequest:
        return pb.TrackActivitiesRequest(activities=[make_activity(i) for i in range(n)])

    refused = accepted_quiet = 0
    delays = []
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        started = time.monotonic()
        # The noisy tenant sends 10 activities every 20 ms (500/s, 25 times its quota) for a second;
        # the quiet one sends 2 every 200 ms (10/s, within its quota).
        for n in range(50):
            try:
                await stub.TrackActivities(batch(10), metadata=bearer(keys["noisy"]))
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "over its quota of 20 activities/s" in (error.details() or "")
                delays.append(retry_delay_from_trailer(error.trailing_metadata()))
                refused += 1
            if n % 10 == 0:
                quiet = await stub.TrackActivities(batch(2), metadata=bearer(keys["quiet"]))
                accepted_quiet += quiet.accepted_count
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started

        # The noisy tenant got its burst and its rate, no more; the quiet one everything.
        accepted_noisy = 10 * (50 - refused)
        assert accepted_noisy <= 40 + 20 * elapsed + 10
        # The bound above is the exact check; how many were refused depends on how long the loop took.
        assert refused > 0
        assert accepted_quiet == 10
        assert all(d is not None and 0 < d <= 0.5 for d in delays)
        assert server.quotas.stats.refused == {"noisy": 10 * refused}
        labels = {"tenant": "noisy"}
        assert (
            await asyncio.to_thread(metric, server, "quota_refused_activities_total", **labels)
            == 10 * refused
        )
        assert await asyncio.to_thread(metric, server, "quota_refused_requests_total", **labels) == refused

        # Its own quota, larger, replaces the default on the running collector.
        await QuotaStore(server.postgres.pool).set("noisy", 0, 0)
        deadline = time.monotonic() + 5
        while server.quotas.quota("noisy").rate != 0:
            assert time.monotonic() < deadline, "the tenant's own quota was not read"
            await asyncio.sleep(0.05)
        for _ in range(5):
            answer = await stub.TrackActivities(batch(50), metadata=bearer(keys["noisy"]))
            assert answer.accepted_count == 50


async def test_a_request_over_quota_is_refused_before_its_activities_are_validated(start_server: Any) -> None:
    """Once its bucket cannot hold a request, a tenant's request is refused as a whole from the count
    of its activities alone, with a retry delay, counted: an invalid activity in it is not rejected."""
    server: CollectorServer = await start_server(
        auth=True, quota_rate=10.0, quota_burst=10.0, plan_refresh_s=0.1
    )
    assert server.postgres is not None and server.quotas is not None
    tenants = TenantStore(server.postgres.pool)
    await tenants.create_tenant("shop")
    key, _ = await tenants.create_key("shop")
    service = server.service
    assert service is not None
    with_invalid = pb.TrackActivitiesRequest(
        activities=[make_activity(i) for i in range(9)] + [pb.Activity(action="view")]
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        answer = await stub.TrackActivities(with_invalid, metadata=bearer(key))
        assert answer.accepted_count == 9 and len(answer.rejections) == 1
        rejected_before = service.stats.rejected
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.TrackActivities(with_invalid, metadata=bearer(key))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay_from_trailer(refused.value.trailing_metadata())
    assert delay is not None and 0 < delay <= 1.0
    assert service.stats.rejected == rejected_before
    assert server.quotas.stats.refused == {"shop": 10}
    assert server.quotas.stats.refused_requests == {"shop": 1}
    assert service.stats.failed_by_code == {"RESOURCE_EXHAUSTED": 1}


# The noisy tenant: `callers` concurrent calls, each sending the same request of 100 activities again as
# soon as the last is answered, until SIGTERM; then the count of answers by status code, as JSON. Raw
# bytes on a generic channel: the flood's own CPU goes to gRPC, not to building messages.
FLOOD = r"""
import asyncio, json, signal, sys, time
import grpc, grpc.aio

async def main(address, key, body_path, callers):
    body = open(body_path, "rb").read()
    codes = {}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/activity.v1.ActivityService/TrackActivities")
        metadata = (("authorization", "Bearer " + key),)

        async def caller():
            while not stop.is_set():
                try:
                    await call(body, metadata=metadata, timeout=30)
                    code = "OK"
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                codes[code] = codes.get(code, 0) + 1

        started, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.monotonic() - started
    print(json.dumps({"codes": codes, "elapsed_s": elapsed, "cpu_s": time.process_time() - cpu}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""

QUOTA_RATE = 1_000.0
QUOTA_BURST = 2_000.0
QUIET_BATCH = 5
QUIET_INTERVAL_S = 0.02  # 250 activities/s: a quarter of the quota
QUIET_CALLS = 150
FLOOD_BATCH = 100
FLOOD_CALLERS = 4


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def _quiet_tenant(stub: pb_grpc.ActivityServiceStub, key: str, calls: int) -> dict[str, Any]:
    """`calls` requests of QUIET_BATCH activities, one due every QUIET_INTERVAL_S (a request waits for
    the one before): the latency of each, from the call to its answer, and what was accepted."""
    batches = [
        pb.TrackActivitiesRequest(activities=[make_activity(n * QUIET_BATCH + i) for i in range(QUIET_BATCH)])
        for n in range(calls)
    ]
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    accepted = 0
    start = time.monotonic()
    cpu = time.process_time()
    for n, request in enumerate(batches):
        delay = start + n * QUIET_INTERVAL_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        try:
            answer = await stub.TrackActivities(request, metadata=bearer(key), timeout=30)
        except grpc.aio.AioRpcError as error:
            codes[error.code().name] += 1
        else:
            codes["OK"] += 1
            accepted += answer.accepted_count
        latencies.append((time.perf_counter() - sent) * 1000)
    return {
        "codes": codes,
        "accepted": accepted,
        "p50": statistics.median(latencies),
        "p99": _percentile(latencies, 0.99),
        "max": max(latencies),
        "elapsed_s": time.monotonic() - start,
        # This process: the collector and the quiet tenant's client, every thread.
        "cores": (time.process_time() - cpu) / (time.monotonic() - start),
    }


async def test_a_flooding_tenant_over_its_quota_leaves_its_quiet_neighbour_accepted_and_answered(
    start_server: Any, tmp_path: Path
) -> None:
    # As shipped: the spool on, so that an answer waits for the spool's fsync, not for an insert.
    server: CollectorServer = await start_server(
        auth=True, spool=True, quota_rate=QUOTA_RATE, quota_burst=QUOTA_BURST
    )
    assert server.postgres is not None and server.quotas is not None
    tenants = TenantStore(server.postgres.pool)
    keys = {}
    for tenant in ("noisy", "quiet"):
        await tenants.create_tenant(tenant)
        keys[tenant], _ = await tenants.create_key(tenant)
    body = tmp_path / "flood.bin"
    flood_request = pb.TrackActivitiesRequest(
        activities=[make_activity(i, id="") for i in range(FLOOD_BATCH)]
    )
    body.write_bytes(flood_request.SerializeToString())

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        # Warm-up: the first calls, the caches, the engine's first insert.
        await _quiet_tenant(stub, keys["quiet"], 10)
        alone = await _quiet_tenant(stub, keys["quiet"], QUIET_CALLS)

        flood = await asyncio.create_subprocess_exec(
            *[sys.executable, "-c", FLOOD, server.address, keys["noisy"], str(body), str(FLOOD_CALLERS)],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            flood_started = time.monotonic()
            # The quiet tenant's second round starts once the flood is being refused.
            while not server.quotas.stats.refused_requests["noisy"]:
                if flood.returncode is not None:
                    _, err = await flood.communicate()
                    pytest.fail(f"the flood ended early: {err.decode(errors='replace')}")
                assert time.monotonic() - flood_started < 30, "the flood did not start"
                await asyncio.sleep(0.05)
            flooded = await _quiet_tenant(stub, keys["quiet"], QUIET_CALLS)
            assert flood.returncode is None, "the flood stopped before the quiet tenant's round ended"
            flood.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(flood.communicate(), 30)
            flood_elapsed = time.monotonic() - flood_started
        finally:
            if flood.returncode is None:
                flood.kill()
                await flood.wait()
    assert flood.returncode == 0, err.decode(errors="replace")
    noisy = json.loads(out.decode().strip().splitlines()[-1])
    noisy_codes = noisy["codes"]
    offered = (noisy_codes.get("OK", 0) + noisy_codes.get("RESOURCE_EXHAUSTED", 0)) * FLOOD_BATCH
    offered_rate = offered / noisy["elapsed_s"]
    accepted_noisy = noisy_codes.get("OK", 0) * FLOOD_BATCH

    print(
        f"\nnoisy neighbour: quotas of {QUOTA_RATE:g} activities/s (burst {QUOTA_BURST:g}) per tenant; "
        f"the quiet tenant sends {QUIET_CALLS} requests of {QUIET_BATCH} activities, one every "
        f"{QUIET_INTERVAL_S * 1000:g} ms ({QUIET_BATCH / QUIET_INTERVAL_S:g}/s)\n"
        f"  quiet alone:      p50 {alone['p50']:.1f} ms, p99 {alone['p99']:.1f} ms, "
        f"max {alone['max']:.1f} ms, {alone['accepted']} accepted, answers {dict(alone['codes'])}; "
        f"collector + quiet client {alone['cores']:.2f} cores\n"
        f"  quiet with flood: p50 {flooded['p50']:.1f} ms, p99 {flooded['p99']:.1f} ms, "
        f"max {flooded['max']:.1f} ms, {flooded['accepted']} accepted, answers {dict(flooded['codes'])}; "
        f"collector + quiet client {flooded['cores']:.2f} cores\n"
        f"  noisy tenant: {FLOOD_CALLERS} callers x {FLOOD_BATCH} activities, offered {offered_rate:,.0f} "
        f"activities/s ({offered_rate / QUOTA_RATE:.0f} x its quota) for {noisy['elapsed_s']:.1f} s; answers "
        f"{noisy_codes}; {accepted_noisy / noisy['elapsed_s']:,.0f} activities/s accepted; the flooding "
        f"process {noisy['cpu_s'] / noisy['elapsed_s']:.2f} cores (of {os.cpu_count()})"
    )

    # The quiet tenant: every request accepted, whole, in both rounds; never over its quota.
    for phase in (alone, flooded):
        assert phase["codes"] == {"OK": QUIET_CALLS}
        assert phase["accepted"] == QUIET_CALLS * QUIET_BATCH
    assert server.quotas.stats.refused["quiet"] == 0
    # The noisy tenant: well over its quota, refused beyond it, and nothing else went wrong for it.
    assert set(noisy_codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert offered_rate > 3 * QUOTA_RATE
    assert noisy_codes["RESOURCE_EXHAUSTED"] > noisy_codes.get("OK", 0)
    assert accepted_noisy <= QUOTA_BURST + QUOTA_RATE * flood_elapsed + FLOOD_BATCH
    assert server.quotas.stats.refused_requests["noisy"] == noisy_codes["RESOURCE_EXHAUSTED"]
