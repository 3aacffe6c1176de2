"""Health checking and reflection, asked by real gRPC clients on the service's own port."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import make_activity

from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def reflect(channel: grpc.aio.Channel, **request: Any) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(**request))
    await call.done_writing()
    response: reflection_pb2.ServerReflectionResponse = await call.read()
    return response


async def test_reflection_lists_the_services_and_describes_the_api(channel: grpc.aio.Channel) -> None:
    listed = await reflect(channel, list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert names == {
        "activity.v1.ActivityService",
        "activity.v1.PrivacyService",
        "activity.v1.ProfileService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }

    found = await reflect(channel, file_containing_symbol="activity.v1.ActivityService")
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in found.file_descriptor_response.file_descriptor_proto
    ]
    api = next(f for f in files if f.name == "activity/v1/activity.proto")
    assert [m.name for m in api.service[0].method] == ["TrackActivity", "TrackActivities", "StreamActivities"]


async def test_check_is_serving_for_the_server_and_the_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "activity.v1.ActivityService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == SERVING, service
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def next_status(stream: Any, timeout: float = 10.0) -> int:
    async with asyncio.timeout(timeout):
        answer = await stream.read()
    assert answer is not grpc.aio.EOF
    status: int = answer.status
    return status


async def test_watch_follows_the_store_going_away_and_coming_back(start_server: Any) -> None:
    server: CollectorServer = await start_server(health_interval_s=0.1)
    assert server.store is not None
    async with grpc.aio.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert await next_status(watch) == SERVING

        server.store.command("RENAME TABLE activities TO activities_away")
        try:
            stub = pb_grpc.ActivityServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.TrackActivity(pb.TrackActivityRequest(activity=make_activity(1)))
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert await next_status(watch) == NOT_SERVING
            assert server.health is not None and not server.health.store_up
        finally:
            server.store.command("RENAME TABLE activities_away TO activities")

        assert await next_status(watch) == SERVING
        watch.cancel()


async def test_an_idle_collector_notices_the_store_through_its_probe(start_server: Any) -> None:
    server: CollectorServer = await start_server(health_interval_s=0.1)
    assert server.store is not None and server.pipeline is not None
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        server.store.command("RENAME TABLE activities TO activities_away")
        try:
            deadline = time.monotonic() + 10
            while (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING:
                assert time.monotonic() < deadline, "health never turned NOT_SERVING"
                await asyncio.sleep(0.05)
            # No request was sent: the probe found it.
            assert server.pipeline.stats.insert_failures == 0
            assert server.health is not None and "activities" in server.health.last_error
        finally:
            server.store.command("RENAME TABLE activities_away TO activities")
        deadline = time.monotonic() + 10
        while (await health.Check(health_pb2.HealthCheckRequest())).status != SERVING:
            assert time.monotonic() < deadline, "health never came back to SERVING"
            await asyncio.sleep(0.05)


async def test_shutdown_turns_not_serving_and_ends_watch_streams_quickly(start_server: Any) -> None:
    server: CollectorServer = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="activity.v1.ActivityService")
        )
        assert await next_status(watch) == SERVING
        started = time.monotonic()
        stopping = asyncio.create_task(server.shutdown(grace=60.0))
        assert await next_status(watch) == NOT_SERVING
        await stopping
        # An open Watch does not hold the port open for the whole grace period: the shutdown ends
        # well before it (it takes well under a second on an idle machine).
        assert time.monotonic() - started < 30.0
        async with asyncio.timeout(5):
            assert await watch.read() is grpc.aio.EOF
        assert await watch.code() == grpc.StatusCode.OK


async def wait_for_status(health: health_pb2_grpc.HealthStub, wanted: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (await health.Check(health_pb2.HealthCheckRequest())).status != wanted:
        assert time.monotonic() < deadline, f"health never turned {wanted}"
        await asyncio.sleep(0.05)


async def test_with_the_spool_it_serves_while_the_store_is_away_until_the_spool_is_full(
    start_server: Any,
) -> None:
    server: CollectorServer = await start_server(
        spool=True,
        health_interval_s=0.1,
        max_request_bytes=20_000,
        max_activity_bytes=5_000,
        spool_capacity_bytes=45_000,
    )
    assert server.store is not None and server.health is not None
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.ActivityServiceStub(channel)
        server.store.command("RENAME TABLE activities TO activities_away")
        try:
            # Acknowledged from the spool although the store is away.
            answer = await stub.TrackActivities(
                pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(10)])
            )
            assert answer.accepted_count == 10
            deadline = time.monotonic() + 10
            while server.health.store_up:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING

            # Fill the spool until it has no room for one more full request.
            n = 100
            while not server.health.spool_full:
                batch = [make_activity(n + i) for i in range(40)]
                n += 40
                try:
                    await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    break
            await wait_for_status(health, NOT_SERVING)
        finally:
            server.store.command("RENAME TABLE activities_away TO activities")
        # The store is back: the spool drains into it, and the collector serves again.
        await wait_for_status(health, SERVING, timeout=20)


async def test_a_full_spool_disk_is_named_as_such_not_as_the_store(start_server: Any) -> None:
    server: CollectorServer = await start_server(
        spool=True, health_interval_s=0.1, spool_min_free_bytes=10**6
    )
    assert server.health is not None and server.pipeline is not None
    spool = server.pipeline.spool
    assert spool is not None
    free = [10**9]
    # A stand-in for the filesystem's free space (statvfs), named as such; a real full disk is
    # tests/e2e/test_full_disk.py.
    spool.free_bytes = lambda: free[0]  # type: ignore[method-assign]
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.ActivityServiceStub(channel)
        request = pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(10)])
        assert (await stub.TrackActivities(request)).accepted_count == 10

        free[0] = 900_000  # under the reserve
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.TrackActivities(pb.TrackActivitiesRequest(activities=[make_activity(20)]))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "spool_min_free_bytes" in (refused.value.details() or "")
        await wait_for_status(health, NOT_SERVING)
        assert server.health.spool_error.startswith("the spool's disk is full: 900000 bytes free at ")
        assert str(spool.directory) in server.health.spool_error
        # The store is fine, and said to be.
        assert server.health.store_up and server.health.last_error == ""

        free[0] = 10**9
        await wait_for_status(health, SERVING)
        assert server.health.spool_error == ""
        assert (await stub.TrackActivities(request)).accepted_count == 10
