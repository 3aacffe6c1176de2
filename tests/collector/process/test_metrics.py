"""Metrics, scraped over HTTP from a live collector after real traffic."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import urllib.request
from importlib import metadata
from typing import Any

import grpc
import grpc.aio
import pytest
from helpers import bearer, hold_inserts, make_activity, wait_for
from prometheus_client.parser import text_string_to_metric_families

from collector.process.server import CollectorServer
from collector.tenants import TenantStore, new_key
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from core.proto.activity.v1 import profile_pb2 as ppb
from core.proto.activity.v1 import profile_pb2_grpc as ppb_grpc

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _fetch(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode(), answer.headers["Content-Type"]


async def scrape(server: CollectorServer) -> Samples:
    assert server.metrics_server is not None
    text, content_type = await asyncio.to_thread(_fetch, server.metrics_server.url)
    assert content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _lag_observed(server: CollectorServer) -> float:
    assert server.metrics is not None
    return server.metrics.registry.get_sample_value("activity_collector_event_loop_lag_seconds_count") or 0.0


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(("activity_collector_" + name, frozenset(labels.items())), 0.0)


async def test_metrics_move_as_traffic_flows(
    server: CollectorServer, stub: pb_grpc.ActivityServiceStub
) -> None:
    before = await scrape(server)
    assert value(before, "requests_total") == 0
    assert value(before, "store_up") == 1
    assert value(before, "queue_capacity_activities") == 200_000
    assert (
        value(
            before,
            "build_info",
            version=metadata.version("activity-collector"),
        )
        == 1
    )

    batch = [make_activity(n) for n in range(5)]
    batch[1].action = ""
    batch[3].metadata.currency = "XYZ"
    batch[3].metadata.price = 10
    batch[4].action = ""
    response = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
    assert response.accepted_count == 2
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.TrackActivities(pb.TrackActivitiesRequest())
    call = stub.StreamActivities()
    await call.write(pb.StreamActivitiesRequest(sequence=1, activities=[make_activity(n) for n in range(7)]))
    await call.write(pb.StreamActivitiesRequest(sequence=2))
    await call.done_writing()
    answers = [a async for a in call]
    assert len(answers) == 2

    after = await scrape(server)
    assert value(after, "requests_total") == 4
    assert value(after, "requests_failed_total", code="INVALID_ARGUMENT") == 2
    assert value(after, "activities_received_total", tenant="default") == 12
    assert value(after, "activities_accepted_total", tenant="default") == 9
    assert value(after, "activities_rejected_total", tenant="default", reason="missing_field") == 2
    assert value(after, "activities_rejected_total", tenant="default", reason="invalid_value") == 1
    assert value(after, "rows_committed_total") == 9
    inserts = value(after, "inserts_total")
    assert 1 <= inserts <= 2
    assert value(after, "insert_rows_count") == inserts
    assert value(after, "insert_rows_sum") == 9
    assert value(after, "insert_duration_seconds_count") == inserts
    assert value(after, "insert_duration_seconds_sum") > 0
    assert value(after, "insert_rows_bucket", le="10.0") == inserts
    assert value(after, "queue_activities") == 0
    assert value(after, "activities_failed_total", tenant="default") == 0
    # Every request answered OK is timed, by call: the failed ones (the empty request, the empty batch)
    # are counted as failures instead.
    for call, answered in (("TrackActivities", 1), ("StreamActivities", 1), ("TrackActivity", 0)):
        assert value(after, "request_duration_seconds_count", call=call) == answered
        assert value(after, "request_duration_seconds_bucket", call=call, le="+Inf") == answered
    assert 0 < value(after, "request_duration_seconds_sum", call="TrackActivities") < 60
    # The event loop's lag probe runs from start (every 100 ms).
    await wait_for(lambda: _lag_observed(server) >= 2, "two observations of the event loop's lag", timeout=10)
    # Process metrics come along for free.
    assert any(name == "process_resident_memory_bytes" for name, _ in after)


async def test_reads_answered_are_timed_by_call_and_refused_ones_counted_apart(
    server: CollectorServer, channel: grpc.aio.Channel
) -> None:
    profiles = ppb_grpc.ProfileServiceStub(channel)  # type: ignore[no-untyped-call]
    user = pb.User(user_id="someone")
    started = time.perf_counter()
    for _ in range(3):
        await profiles.GetProfile(ppb.GetProfileRequest(user=user))
    await profiles.GetRecommendations(ppb.GetRecommendationsRequest(user=user, strategy="trending"))
    with pytest.raises(grpc.aio.AioRpcError):
        await profiles.GetRecommendations(ppb.GetRecommendationsRequest(user=user, strategy="nope"))
    waited = time.perf_counter() - started

    samples = await scrape(server)
    assert value(samples, "reads_total", call="GetProfile", outcome="ok") == 3
    assert value(samples, "read_duration_seconds_count", call="GetProfile") == 3
    assert value(samples, "read_duration_seconds_count", call="GetRecommendations") == 1
    assert value(samples, "reads_total", call="GetRecommendations", outcome="invalid_argument") == 1
    timed = value(samples, "read_duration_seconds_sum", call="GetProfile") + value(
        samples, "read_duration_seconds_sum", call="GetRecommendations"
    )
    # Within the time the calls took at the caller, and each call's count in its cumulative buckets.
    assert 0 < timed <= waited
    buckets = sorted(
        (float(dict(labels)["le"]), n)
        for (name, labels), n in samples.items()
        if name == "activity_collector_read_duration_seconds_bucket" and ("call", "GetProfile") in labels
    )
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
    assert buckets[-1] == (float("inf"), 3)


async def test_full_queue_shows_in_queue_depth_and_refusals(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: CollectorServer = await start_server(
        queue_capacity=100, max_batch_activities=100, insert_workers=1
    )
    pipeline = server.pipeline
    assert pipeline is not None
    # The first batch fills the queue, and its insert is held until the scrape has seen it there.
    release = hold_inserts(server, monkeypatch)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        first = asyncio.ensure_future(
            stub.TrackActivities(pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(100)]))
        )
        try:
            await wait_for(lambda: pipeline.pending == 100, "the first batch to fill the queue")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.TrackActivities(
                    pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(3)])
                )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            during = await scrape(server)
        finally:
            release.set()
        assert value(during, "queue_activities") == 100
        assert value(during, "activities_refused_total", tenant="default") == 3
        assert value(during, "requests_failed_total", code="RESOURCE_EXHAUSTED") == 1
        await first
    after = await scrape(server)
    assert value(after, "queue_activities") == 0
    assert value(after, "activities_accepted_total", tenant="default") == 100


async def test_store_failure_shows_in_failures_and_store_up(start_server: Any) -> None:
    server: CollectorServer = await start_server(health_interval_s=0.1)
    assert server.store is not None
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        server.store.command("RENAME TABLE activities TO activities_away")
        try:
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.TrackActivities(pb.TrackActivitiesRequest(activities=[make_activity(1)]))
            deadline = time.monotonic() + 10
            while value(samples := await scrape(server), "store_up") != 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            server.store.command("RENAME TABLE activities_away TO activities")
    assert value(samples, "insert_failures_total") == 1
    assert value(samples, "activities_failed_total", tenant="default") == 1
    assert value(samples, "requests_failed_total", code="UNAVAILABLE") == 1
    assert value(samples, "activities_accepted_total", tenant="default") == 0


async def test_metrics_can_be_turned_off(start_server: Any) -> None:
    server: CollectorServer = await start_server(metrics_listen="")
    assert server.metrics_server is None


async def test_a_taken_metrics_port_stops_start_up_naming_the_setting(start_server: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="metrics_listen"):
            await start_server(metrics_listen=f"127.0.0.1:{port}")


async def test_spool_depth_grows_while_the_store_is_away_and_drains_after(start_server: Any) -> None:
    server: CollectorServer = await start_server(spool=True, health_interval_s=0.1)
    assert server.store is not None
    before = await scrape(server)
    assert value(before, "spool_activities") == 0
    assert value(before, "spool_capacity_bytes") == 1024**3
    assert value(before, "activities_dead_lettered_total", tenant="default") == 0
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        server.store.command("RENAME TABLE activities TO activities_away")
        try:
            answer = await stub.TrackActivities(
                pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(25)])
            )
            assert answer.accepted_count == 25
            deadline = time.monotonic() + 10
            # The spooled insert keeps failing and is retried; health notices the store is away.
            while True:
                samples = await scrape(server)
                if value(samples, "store_up") == 0 and value(samples, "insert_retries_total") >= 1:
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert value(samples, "spool_activities") == 25
            assert value(samples, "spool_bytes") > 0
            assert value(samples, "serving") == 1
            assert value(samples, "inserts_total") == 0
        finally:
            server.store.command("RENAME TABLE activities_away TO activities")
    deadline = time.monotonic() + 20
    while value(samples := await scrape(server), "spool_activities") != 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert value(samples, "rows_committed_total") == 25
    assert value(samples, "insert_rows_sum") == 25


async def test_activity_counts_are_per_tenant(start_server: Any) -> None:
    server: CollectorServer = await start_server(auth=True)
    assert server.postgres is not None and server.created_key is not None
    tenants = TenantStore(server.postgres.pool)
    await tenants.create_tenant("shop-b")
    key_b, _ = await tenants.create_key("shop-b")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        for key, count in ((server.created_key, 3), (key_b, 5)):
            batch = [make_activity(n) for n in range(count)]
            batch[0].action = ""
            answer = await stub.TrackActivities(
                pb.TrackActivitiesRequest(activities=batch), metadata=(("authorization", f"Bearer {key}"),)
            )
            assert answer.accepted_count == count - 1
    samples = await scrape(server)
    for tenant, count in (("default", 3), ("shop-b", 5)):
        assert value(samples, "activities_received_total", tenant=tenant) == count
        assert value(samples, "activities_accepted_total", tenant=tenant) == count - 1
        assert value(samples, "activities_rejected_total", tenant=tenant, reason="missing_field") == 1


def auth_checks(samples: Samples) -> dict[tuple[str, str], float]:
    """activity_collector_auth_checks_total by (outcome, tenant): every series there is."""
    found: dict[tuple[str, str], float] = {}
    for (name, labels), n in samples.items():
        if name == "activity_collector_auth_checks_total":
            by_name = dict(labels)
            assert set(by_name) == {"outcome", "tenant"}, by_name
            found[(by_name["outcome"], by_name["tenant"])] = n
    return found


async def test_auth_outcomes_are_counted_by_outcome_and_tenant(start_server: Any) -> None:
    server: CollectorServer = await start_server(auth=True)
    assert server.postgres is not None and server.created_key is not None
    assert server.authenticator is not None
    good = server.created_key
    tenants = TenantStore(server.postgres.pool)
    await tenants.create_tenant("shop-r")
    revoked, _ = await tenants.create_key("shop-r")
    await tenants.revoke_key(revoked)

    # The refusals without a tenant are exported from the start, at 0.
    assert auth_checks(await scrape(server)) == {("unauthenticated", ""): 0, ("unavailable", ""): 0}, (
        "the server's /metrics has no auth outcomes: CollectorServer must hand its Authenticator to "
        "Metrics (collector/process/server.py)"
    )

    one = pb.TrackActivityRequest(activity=make_activity(1))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)

        async def refused(metadata: Any) -> grpc.StatusCode:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.TrackActivity(one, metadata=metadata)
            return failed.value.code()

        assert await refused(None) == grpc.StatusCode.UNAUTHENTICATED  # no key
        assert auth_checks(await scrape(server)) == {("unauthenticated", ""): 1, ("unavailable", ""): 0}

        unknown = new_key()[0]  # well formed, but no tenant has it
        for _ in range(2):  # the second answer comes from the cache
            assert await refused(bearer(unknown)) == grpc.StatusCode.UNAUTHENTICATED
        assert await refused(bearer("nonsense")) == grpc.StatusCode.UNAUTHENTICATED
        assert auth_checks(await scrape(server)) == {("unauthenticated", ""): 4, ("unavailable", ""): 0}

        assert await refused(bearer(revoked)) == grpc.StatusCode.PERMISSION_DENIED
        for n in range(3):
            answer = await stub.TrackActivity(
                pb.TrackActivityRequest(activity=make_activity(10 + n)), metadata=bearer(good)
            )
            assert answer.accepted_count == 1
        # A stream's key is checked when it opens and again for each batch: three checks.
        call = stub.StreamActivities(metadata=bearer(good))
        for sequence in (1, 2):
            await call.write(
                pb.StreamActivitiesRequest(sequence=sequence, activities=[make_activity(20 + sequence)])
            )
        await call.done_writing()
        assert [a.accepted_count async for a in call] == [1, 1]

    assert auth_checks(await scrape(server)) == {
        ("accepted", "default"): 6,
        ("permission_denied", "shop-r"): 1,
        ("unauthenticated", ""): 4,
        ("unavailable", ""): 0,
    }
    stats = server.authenticator.stats
    assert stats.checks == 11 == sum(stats.outcomes.values())
    assert (stats.accepted, stats.unauthenticated, stats.permission_denied) == (6, 4, 1)


async def test_every_fsync_of_the_spool_is_timed(start_server: Any) -> None:
    server: CollectorServer = await start_server(spool=True)
    assert server.pipeline is not None and server.pipeline.spool is not None
    assert value(await scrape(server), "spool_sync_seconds_count") == 0
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        for n in range(3):
            await stub.TrackActivities(pb.TrackActivitiesRequest(activities=[make_activity(n)]))
    samples = await scrape(server)
    # Acknowledged one after the other: each waited for an fsync of its own.
    assert value(samples, "spool_sync_seconds_count") == server.pipeline.spool.stats.synced >= 3
    synced = value(samples, "spool_sync_seconds_count")
    assert value(samples, "spool_sync_seconds_bucket", le="+Inf") == synced
    assert value(samples, "spool_sync_seconds_sum") > 0


async def test_the_spool_disk_free_space_and_its_reserve_are_gauges(start_server: Any) -> None:
    server: CollectorServer = await start_server(
        spool=True, health_interval_s=0.1, spool_min_free_bytes=10**6
    )
    assert server.pipeline is not None and server.pipeline.spool is not None
    spool = server.pipeline.spool
    samples = await scrape(server)
    assert value(samples, "spool_disk_free_bytes") > 10**6
    assert value(samples, "spool_min_free_bytes") == 10**6
    assert value(samples, "spool_disk_ok") == 1
    assert value(samples, "spool_disk_failures_total") == 0

    # A stand-in for the filesystem's free space (statvfs), named as such: the store and PostgreSQL stay
    # real; a real full disk is tests/e2e/test_full_disk.py.
    spool.free_bytes = lambda: 123_456  # type: ignore[method-assign]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.TrackActivities(
                pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(4)])
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    deadline = time.monotonic() + 10
    while value(samples := await scrape(server), "spool_disk_ok") != 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert value(samples, "spool_disk_free_bytes") == 123_456
    assert value(samples, "spool_disk_refusals_total") == 1
    assert value(samples, "activities_refused_total", tenant="default") == 4
    assert value(samples, "serving") == 0
    assert value(samples, "store_up") == 1


async def test_every_garbage_collection_is_timed_by_generation_until_the_server_stops(
    start_server: Any,
) -> None:
    server: CollectorServer = await start_server()
    before = await scrape(server)
    full = value(before, "gc_pause_seconds_count", generation="2")
    gc.collect()
    gc.collect(0)
    after = await scrape(server)
    assert value(after, "gc_pause_seconds_count", generation="2") >= full + 1
    assert value(after, "gc_pause_seconds_count", generation="0") >= 1
    assert value(after, "gc_pause_seconds_sum", generation="2") > value(
        before, "gc_pause_seconds_sum", generation="2"
    )
    await server.shutdown()
    # Stopped, the server leaves the process's garbage collector as it found it.
    assert server.metrics is not None and server.metrics.gc_pauses._hook not in gc.callbacks
