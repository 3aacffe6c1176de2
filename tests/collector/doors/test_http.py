"""The HTTP/JSON door against a live collector: the same answers as gRPC for the same activities."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc.aio
import pytest
from google.protobuf import json_format
from helpers import hold_inserts, make_activity, wait_for

from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def url(server: CollectorServer) -> str:
    assert server.http is not None
    return server.http.url


def mixed_batch() -> list[pb.Activity]:
    good = [make_activity(n) for n in range(3)]
    missing_action = make_activity(10, action="")
    bad_currency = make_activity(11, metadata=pb.Metadata(price=100, currency="XYZ"))
    no_id = make_activity(12)
    no_id.ClearField("id")
    duplicate = make_activity(13, id=good[0].id)
    return [good[0], missing_action, good[1], bad_currency, no_id, good[2], duplicate]


def as_json(activities: list[pb.Activity]) -> dict[str, Any]:
    return json_format.MessageToDict(pb.TrackActivitiesRequest(activities=activities))


def fresh_ids(activities: list[pb.Activity]) -> list[pb.Activity]:
    """The same activities under new ids (kept empty where empty, duplicates kept duplicate)."""
    renamed: dict[str, str] = {}
    copies = []
    for a in activities:
        c = pb.Activity()
        c.CopyFrom(a)
        if c.id:
            c.id = renamed.setdefault(c.id, str(uuid.uuid4()))
        copies.append(c)
    return copies


async def test_http_gives_the_same_answers_as_grpc(
    server: CollectorServer, stub: pb_grpc.ActivityServiceStub, http: aiohttp.ClientSession
) -> None:
    batch = mixed_batch()
    via_grpc = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
    again = fresh_ids(batch)
    async with http.post(url(server), json=as_json(again)) as answer:
        assert answer.status == 200
        assert answer.content_type == "application/json"
        body = await answer.json()
    via_http = json_format.ParseDict(body, pb.TrackActivitiesResponse())

    assert via_http.accepted_count == via_grpc.accepted_count == 4
    assert [(r.index, r.reason, r.field, r.message) for r in via_http.rejections] == [
        (r.index, r.reason, r.field, r.message) for r in via_grpc.rejections
    ]
    assert [r.activity_id for r in via_http.rejections] == [again[r.index].id for r in via_http.rejections]
    assert list(via_http.assigned_ids) == list(via_grpc.assigned_ids) == [4]
    # The canonical JSON mapping, every field present.
    assert body["acceptedCount"] == 4
    assert body["rejections"][0]["reason"] == "REJECTION_REASON_MISSING_FIELD"
    assert set(body["assignedIds"]) == {"4"}

    assert server.store is not None
    stored = server.store.query("SELECT id FROM activities", "TabSeparated").decode().split()
    expected = {a.id for a in batch + again if a.id} - {batch[1].id, batch[3].id, again[1].id, again[3].id}
    expected |= {via_grpc.assigned_ids[4], via_http.assigned_ids[4]}
    assert sorted(stored) == sorted(expected)
    assert server.service is not None and server.service.stats.requests == 2
    # Each door's answers timed under its own name.
    assert server.metrics is not None
    for call in ("http", "TrackActivities"):
        assert (
            server.metrics.registry.get_sample_value(
                "activity_collector_request_duration_seconds_count", {"call": call}
            )
            == 1
        )


async def test_whole_request_failures_carry_a_status_in_json(
    server: CollectorServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(url(server), json={"activities": []}) as empty:
        assert empty.status == 400
        status = await empty.json()
        assert status["code"] == 3 and "empty" in status["message"]

    async with http.post(url(server), data=b"{not json", headers={"Content-Type": "application/json"}) as bad:
        assert bad.status == 400
        assert "not a TrackActivitiesRequest" in (await bad.json())["message"]

    unknown = {"activities": [{"action": "view", "colour": "red"}]}
    async with http.post(url(server), json=unknown) as answer:
        assert answer.status == 400
        assert "colour" in (await answer.json())["message"]

    async with http.post(url(server), data="{}", headers={"Content-Type": "text/plain"}) as wrong_type:
        assert wrong_type.status == 415


async def test_full_queue_is_429_with_retry_after(
    start_server: Any, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: CollectorServer = await start_server(
        queue_capacity=100,
        max_batch_activities=100,
        insert_workers=1,
        retry_delay_ms=1500,
    )
    pipeline = server.pipeline
    assert pipeline is not None
    # The first batch fills the queue, and its insert is held until the second has been refused.
    release = hold_inserts(server, monkeypatch)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        first = asyncio.ensure_future(
            stub.TrackActivities(pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(100)]))
        )
        try:
            await wait_for(lambda: pipeline.pending == 100, "the first batch to fill the queue")
            async with http.post(url(server), json=as_json([make_activity(500)])) as refused:
                assert refused.status == 429
                assert refused.headers["Retry-After"] == "2"
                status = await refused.json()
        finally:
            release.set()
        await first
    assert status["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.500s"}
    ]


async def test_store_failure_is_503(server: CollectorServer, http: aiohttp.ClientSession) -> None:
    assert server.store is not None
    server.store.command("RENAME TABLE activities TO activities_away")
    try:
        async with http.post(url(server), json=as_json([make_activity(1)])) as failed:
            assert failed.status == 503
            assert "Retry-After" in failed.headers
            assert (await failed.json())["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    finally:
        server.store.command("RENAME TABLE activities_away TO activities")


async def test_cors_lets_listed_origins_in(start_server: Any, http: aiohttp.ClientSession) -> None:
    server: CollectorServer = await start_server(
        http_cors_origins="https://shop.example, https://m.shop.example"
    )
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with http.options(url(server), headers=preflight) as allowed:
        assert allowed.status == 204
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
        assert allowed.headers["Access-Control-Allow-Headers"] == "content-type"
    async with http.options(url(server), headers={**preflight, "Origin": "https://evil.example"}) as refused:
        assert refused.status == 403
        assert "Access-Control-Allow-Origin" not in refused.headers

    headers = {"Origin": "https://m.shop.example"}
    async with http.post(url(server), json=as_json([make_activity(1)]), headers=headers) as answer:
        assert answer.status == 200
        assert answer.headers["Access-Control-Allow-Origin"] == "https://m.shop.example"
    async with http.post(
        url(server), json=as_json([make_activity(2)]), headers={"Origin": "https://x.example"}
    ) as other:
        # Answered (CORS is the browser's check), but without the header a browser would need.
        assert other.status == 200
        assert "Access-Control-Allow-Origin" not in other.headers


async def test_no_cors_headers_unless_configured(
    server: CollectorServer, http: aiohttp.ClientSession
) -> None:
    headers = {"Origin": "https://shop.example"}
    async with http.post(url(server), json=as_json([make_activity(1)]), headers=headers) as answer:
        assert answer.status == 200
        assert "Access-Control-Allow-Origin" not in answer.headers
    async with http.options(url(server), headers=headers) as preflight:
        assert preflight.status == 403


async def test_http_door_can_be_turned_off(start_server: Any) -> None:
    server: CollectorServer = await start_server(http_listen="")
    assert server.http is None


def test_bad_cors_origin_is_refused_naming_the_setting(make_settings: Any) -> None:
    from collector.config import ConfigError

    with pytest.raises(ConfigError, match="http_cors_origins"):
        make_settings(http_cors_origins="shop.example")


async def test_draining_collector_answers_503(start_server: Any, http: aiohttp.ClientSession) -> None:
    server: CollectorServer = await start_server()
    assert server.service is not None
    server.service.begin_drain()
    async with http.post(url(server), json=as_json([make_activity(1)])) as answer:
        assert answer.status == 503
        assert json.loads(await answer.text())["message"] == "the collector is shutting down"
