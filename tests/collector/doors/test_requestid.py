"""Request ids: every call gets one, the client sees it (`x-request-id`), and the log events of the
call's handling carry it, so that a failure a client reports can be found in the log."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from helpers import make_activity

from collector.logs import REQUEST_ID, JsonFormatter
from collector.process.server import CollectorServer
from collector.tenants import new_key
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(90)

REQUEST_ID_FORM = re.compile(r"^[0-9a-f]{12}-[0-9a-f]+$")


def request_id_of(metadata: Any) -> str:
    ids = [value for key, value in (metadata or ()) if key == "x-request-id"]
    assert len(ids) == 1, metadata
    return str(ids[0])


def key_check_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "API key check failed"]


@pytest.fixture
async def keys_unreadable(start_server: Any) -> AsyncIterator[CollectorServer]:
    """A collector with auth on whose PostgreSQL refuses key lookups (the keys' table is gone), so that
    a key it has not seen fails with UNAVAILABLE, logged."""
    server: CollectorServer = await start_server(auth=True)
    assert server.postgres is not None
    await server.postgres.pool.execute("ALTER TABLE api_keys RENAME TO api_keys_away")
    yield server
    await server.postgres.pool.execute("ALTER TABLE api_keys_away RENAME TO api_keys")


async def test_unary_calls_return_a_request_id_of_their_own(server: CollectorServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        ids = []
        for n in range(2):
            call = stub.TrackActivities(pb.TrackActivitiesRequest(activities=[make_activity(n)]))
            assert (await call).accepted_count == 1
            ids.append(request_id_of(await call.trailing_metadata()))
    assert all(REQUEST_ID_FORM.match(i) for i in ids)
    assert ids[0] != ids[1]


async def test_a_logged_failure_carries_the_id_the_client_saw(
    keys_unreadable: CollectorServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with grpc.aio.insecure_channel(keys_unreadable.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.TrackActivity(
                pb.TrackActivityRequest(activity=make_activity(1)),
                metadata=(("authorization", f"Bearer {new_key()[0]}"),),
            )
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    # The failure's own trailers (its status details) are kept beside the id.
    keys = [key for key, _ in failed.value.trailing_metadata() or ()]
    assert "grpc-status-details-bin" in keys
    seen = request_id_of(failed.value.trailing_metadata())
    (record,) = key_check_failures(caplog)
    assert getattr(record, "request_id", None) == seen
    event = json.loads(JsonFormatter().format(record))
    assert event["request_id"] == seen
    assert event["event"] == "API key check failed"
    assert "api_keys" in event["error"]


async def test_a_stream_sends_its_request_id_first(
    keys_unreadable: CollectorServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with grpc.aio.insecure_channel(keys_unreadable.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        call = stub.StreamActivities(metadata=(("authorization", f"Bearer {new_key()[0]}"),))
        seen = request_id_of(await call.initial_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call.read()
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    (record,) = key_check_failures(caplog)
    assert getattr(record, "request_id", None) == seen


async def test_the_http_door_answers_with_the_id_of_its_logged_failure(
    keys_unreadable: CollectorServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert keys_unreadable.http is not None
    body = {
        "activities": [{"action": "view", "target": {"type": "page", "id": "home"}, "user": {"userId": "u"}}]
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            keys_unreadable.http.url, json=body, headers={"Authorization": f"Bearer {new_key()[0]}"}
        ) as response,
    ):
        assert response.status == 503
        seen = response.headers["X-Request-Id"]
    (record,) = key_check_failures(caplog)
    assert getattr(record, "request_id", None) == seen


def test_records_outside_requests_carry_no_request_id() -> None:
    record = logging.getLogger("collector.test").makeRecord(
        "collector.test", logging.INFO, "", 0, "x", (), None
    )
    assert not hasattr(record, "request_id")
    token = REQUEST_ID.set("abc-1")
    try:
        inside = logging.getLogger("collector.test").makeRecord(
            "collector.test", logging.INFO, "", 0, "x", (), None
        )
    finally:
        REQUEST_ID.reset(token)
    assert json.loads(JsonFormatter().format(inside))["request_id"] == "abc-1"
