"""Refusals over quota are answered after their retry delay (at most quota_refusal_hold_ms), by every
door that enforces quotas; at most quota_refusal_hold_max wait at once, the rest are answered at once;
both counted in /metrics; shutdown answers the held ones at once."""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
import uuid
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from activity_client.trailers import retry_delay_from_trailer
from google.protobuf import json_format
from helpers import make_activity, wait_for
from prometheus_client.parser import text_string_to_metric_families

from collector.config import ConfigError, load_settings
from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(90)

# An activity every ten seconds, a burst of one: the first request of one activity is accepted, the next
# ones are refused with retry delays of several seconds, longer than the holds below.
QUOTA = {"quota_rate": 0.1, "quota_burst": 1.0}
HOLD_S = 0.4
# An answer can come a little before its timer's deadline: the loop's clock and this one differ.
MARGIN_S = 0.02
# The longest retry delay of the bucket above: one activity at 0.1 a second.
LONGEST_DELAY_S = 10.0


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


async def metric(server: CollectorServer, name: str) -> float:
    assert server.metrics_server is not None
    text = await asyncio.to_thread(_fetch, server.metrics_server.url)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "activity_collector_" + name:
                return float(sample.value)
    return 0.0


def one() -> pb.TrackActivitiesRequest:
    return pb.TrackActivitiesRequest(activities=[make_activity(0)])


async def refused_unary(stub: pb_grpc.ActivityServiceStub, hold_s: float) -> float:
    """Seconds until a refused TrackActivities was answered; its answer checked unchanged but for its
    retry delay, shortened by the hold."""
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.TrackActivities(one())
    elapsed = time.monotonic() - started
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over its quota of 0.1 activities/s" in (refused.value.details() or "")
    delay = retry_delay_from_trailer(refused.value.trailing_metadata())
    # The delay sent is what is left of the bucket's (at most 10 s) once the call was held.
    assert delay is not None and HOLD_S < delay <= LONGEST_DELAY_S - hold_s + MARGIN_S
    return elapsed


async def test_a_refused_call_is_answered_after_its_hold_by_every_door(start_server: Any) -> None:
    server: CollectorServer = await start_server(quota_refusal_hold_ms=HOLD_S * 1000, **QUOTA)
    service = server.service
    assert service is not None and server.quotas is not None and server.http is not None
    async with grpc.aio.insecure_channel(server.address) as channel, aiohttp.ClientSession() as http:
        stub = pb_grpc.ActivityServiceStub(channel)
        await stub.TrackActivities(one())

        assert await refused_unary(stub, HOLD_S) >= HOLD_S - MARGIN_S

        call = stub.StreamActivities()
        started = time.monotonic()
        await call.write(pb.StreamActivitiesRequest(sequence=7, activities=[make_activity(1)]))
        answer = await call.read()
        elapsed = time.monotonic() - started
        await call.done_writing()
        assert answer.sequence == 7 and answer.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert (
            HOLD_S * 1e9
            < answer.status.retry_delay.ToNanoseconds()
            <= (LONGEST_DELAY_S - HOLD_S + MARGIN_S) * 1e9
        )
        assert elapsed >= HOLD_S - MARGIN_S

        body = json_format.MessageToDict(one())
        started = time.monotonic()
        async with http.post(server.http.url, json=body) as refused:
            assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
        assert time.monotonic() - started >= HOLD_S - MARGIN_S

        segment = {
            "type": "track",
            "event": "Product Viewed",
            "properties": {"product_id": "p-1"},
            "anonymousId": "anon-1",
            "messageId": str(uuid.uuid4()),
        }
        started = time.monotonic()
        async with http.post(server.http.base_url + "/v1/track", json=segment) as refused:
            assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
        assert time.monotonic() - started >= HOLD_S - MARGIN_S

    default = server.settings.default_tenant
    assert server.quotas.stats.refused_requests == {default: 4}
    assert service.stats.failed_by_code == {"RESOURCE_EXHAUSTED": 4}
    assert service.refusal_hold.stats.held == 4 and service.refusal_hold.stats.overflowed == 0
    assert await metric(server, "quota_refusals_held_total") == 4
    assert await metric(server, "quota_refusal_hold_seconds_total") >= 4 * (HOLD_S - MARGIN_S)
    assert await metric(server, "quota_refusals_holding") == 0


async def test_a_hold_of_zero_answers_refusals_at_once(start_server: Any) -> None:
    server: CollectorServer = await start_server(quota_refusal_hold_ms=0, **QUOTA)
    service = server.service
    assert service is not None and server.quotas is not None
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        await stub.TrackActivities(one())
        for _ in range(3):
            await refused_unary(stub, 0.0)
    assert server.quotas.stats.refused_requests == {server.settings.default_tenant: 3}
    assert service.refusal_hold.stats.held == 0 and service.refusal_hold.stats.held_s == 0
    assert await metric(server, "quota_refusals_held_total") == 0


async def test_refusals_past_the_cap_are_answered_at_once_and_shutdown_answers_the_held(
    start_server: Any,
) -> None:
    """Ten refusals at once with room for three: seven answered without waiting, three held (for a
    minute: the test's own deadline ends first unless shutdown answers them), all counted."""
    server: CollectorServer = await start_server(
        quota_refusal_hold_ms=60_000, quota_refusal_hold_max=3, quota_rate=0.01, quota_burst=1.0
    )
    service = server.service
    assert service is not None and server.quotas is not None
    hold = service.refusal_hold
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        await stub.TrackActivities(one())
        calls = [asyncio.ensure_future(stub.TrackActivities(one())) for _ in range(10)]
        await wait_for(lambda: sum(c.done() for c in calls) >= 7, "7 of 10 refusals answered", timeout=30)
        assert hold.holding == 3 and hold.stats.held == 3 and hold.stats.overflowed == 7
        assert await metric(server, "quota_refusals_holding") == 3
        assert await metric(server, "quota_refusals_unheld_total") == 7
        assert sum(c.done() for c in calls) == 7
        await server.shutdown(grace=10.0)
        answers = await asyncio.gather(*calls, return_exceptions=True)
    assert all(
        isinstance(a, grpc.aio.AioRpcError) and a.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for a in answers
    )
    assert hold.holding == 0
    assert server.quotas.stats.refused_requests == {server.settings.default_tenant: 10}


@pytest.mark.parametrize(
    ("setting", "value"),
    [("quota_refusal_hold_ms", -1.0), ("quota_refusal_hold_ms", math.inf), ("quota_refusal_hold_max", -1)],
)
def test_a_negative_hold_is_refused_and_named(setting: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"^{setting}: must be"):
        load_settings({setting: value}, environ={})
