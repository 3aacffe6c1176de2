"""The processor seam behind a real gRPC door: rejections answered per activity, drops acknowledged and
not stored, both counted; activities the compiled path vouched for go through it too."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import grpc.aio
import pytest
from conftest import StartServer
from helpers import make_activity
from prometheus_client.parser import text_string_to_metric_families

from collector.process.server import CollectorServer
from core import fastpath
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)


def metric(server: CollectorServer, name: str, **labels: str) -> float:
    """One sample of the server's /metrics, 0 when absent."""
    assert server.metrics_server is not None
    with urllib.request.urlopen(server.metrics_server.url, timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "activity_collector_" + name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def rows(server: CollectorServer, sql: str) -> list[str]:
    assert server.store is not None
    return server.store.query(sql, "TabSeparated").decode().splitlines()


@pytest.mark.parametrize("with_ids", [True, False], ids=["ids sent", "ids assigned"])
async def test_rejected_and_dropped_activities_are_answered_counted_and_not_stored(
    start_server: StartServer, with_ids: bool
) -> None:
    server = await start_server(reject_actions="test_*", drop_actions="debug")
    actions = ["view", "test_checkout", "click", "debug", "purchase", "debug"]
    ids = {} if with_ids else {"id": ""}
    activities = [make_activity(i, action=a, **ids) for i, a in enumerate(actions)]
    request = pb.TrackActivitiesRequest(activities=activities)
    # The compiled path vouches for every one of them: the seam must parse its spans to judge them.
    limits = fastpath.limits_tuple(server.settings.limits)
    spans, slow, _, _, _ = fastpath.check(request.SerializeToString(), 1, limits, time.time_ns(), 0)
    assert len(spans) // 12 == len(actions) and not slow

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        response = await stub.TrackActivities(request)
        single = await stub.TrackActivity(pb.TrackActivityRequest(activity=make_activity(9, action="debug")))

    # Dropped activities are acknowledged; the rejected one is answered with the processor's reason.
    assert response.accepted_count == 5
    assert [(r.index, r.reason, r.field) for r in response.rejections] == [
        (1, pb.REJECTION_REASON_REFUSED_BY_PROCESSOR, "action")
    ]
    assert "action_filter" in response.rejections[0].message
    assert single.accepted_count == 1 and not single.rejections
    stored = rows(server, "SELECT action FROM activities ORDER BY action")
    assert stored == ["click", "purchase", "view"]
    if not with_ids:
        assert len(response.assigned_ids) == 3
    assert server.processors is not None
    assert server.processors.stats.dropped == {("action_filter", "debug"): 3}
    assert server.processors.stats.rejected == {("action_filter", "test_*"): 1}
    dropped = {"processor": "action_filter", "reason": "debug", "outcome": "dropped"}
    rejected = {"processor": "action_filter", "reason": "test_*", "outcome": "rejected"}
    assert await asyncio.to_thread(metric, server, "processor_activities_total", **dropped) == 3
    assert await asyncio.to_thread(metric, server, "processor_activities_total", **rejected) == 1
    by_reason = {"tenant": "default", "reason": "refused_by_processor"}
    assert await asyncio.to_thread(metric, server, "activities_rejected_total", **by_reason) == 1


async def test_without_processors_the_seam_is_off(server: CollectorServer, stub: Any) -> None:
    assert server.processors is not None and not server.processors.active
    response = await stub.TrackActivities(
        pb.TrackActivitiesRequest(activities=[make_activity(i, action="debug") for i in range(3)])
    )
    assert response.accepted_count == 3
    assert rows(server, "SELECT count() FROM activities") == ["3"]
