"""Per-tenant quotas behind a real gRPC door: a noisy tenant is refused with RESOURCE_EXHAUSTED and a
retry delay while a quiet one goes on as before; counted per tenant in /metrics; a tenant's own quota
replaces the default without restart."""

from __future__ import annotations

import asyncio
import time
import urllib.request
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
    server: CollectorServer = await start_server(
        auth=True, quota_rate=20.0, quota_burst=40.0, plan_refresh_s=0.1
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
        assert refused >= 30
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
