"""Failed events kept: activities rejected by validation and by a tracking plan are written behind the
answers to `rejected_activities`, within a cap per tenant and minute, and read back with
`activity-collector rejections list|show`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc.aio
import pytest
from helpers import make_activity, wait_for

from collector.cli.main import main
from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.processors.plan_store import PlanStore

pytestmark = pytest.mark.timeout(90)


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def kept(server: CollectorServer) -> int:
    assert server.store is not None
    return int(server.store.query("SELECT count() FROM rejected_activities", "TabSeparated"))


async def test_rejected_activities_are_kept_capped_and_shown(
    start_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server: CollectorServer = await start_server(plan_refresh_s=0.1, rejections_per_tenant_minute=3)
    assert server.postgres is not None and server.plans is not None and server.rejections is not None
    await PlanStore(server.postgres.pool).apply(
        "default",
        {
            "actions": {
                "view": {},
                "purchase": {"required": ["metadata.order_id"]},
                "click": {"required": ["source_id"], "mode": "flag"},
            }
        },
    )
    await wait_for(lambda: "default" in server.plans.plans, "the plan to load", timeout=5)

    unplanned = make_activity(1, action="purchase", metadata=pb.Metadata(price=5, currency="EUR"))
    invalid = make_activity(2, id="not-a-uuid")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        answer = await stub.TrackActivities(
            pb.TrackActivitiesRequest(
                activities=[make_activity(0), unplanned, invalid, make_activity(3, action="click")]
            ),
            metadata=(("authorization", "Bearer ak_secret_never_stored"),),
        )
        assert answer.accepted_count == 2 and len(answer.rejections) == 2
        # Past the cap of 3 a minute: counted, not kept.
        more = [make_activity(n, id="nope") for n in range(3)]
        await stub.TrackActivities(pb.TrackActivitiesRequest(activities=more))

    recorder = server.rejections
    await wait_for(
        lambda: recorder.stats.kept.total() == 3 and kept(server) == 3,
        "the rejected activities to be written",
        timeout=10,
    )
    assert recorder.stats.kept == {"default": 3}
    assert server.rejections.stats.over_cap == {"default": 2}

    flags = (
        "--data-dir",
        str(server.settings.data_dir),
        "--clickhouse-dsn",
        server.settings.effective_clickhouse_dsn,
        "--clickhouse-database",
        server.settings.clickhouse_database,
    )
    code, out, err = await run(
        capsys, "rejections", "list", "--reason", "plan_violation", "--format", "json", *flags
    )
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(r["reason"], r["field"], r["rule"], r["activity_id"]) for r in listed] == [
        ("plan_violation", "metadata.order_id", "required:metadata.order_id", unplanned.id)
    ]
    code, out, _ = await run(capsys, "rejections", "list", "--since", "10m", "--tenant", "default", *flags)
    assert code == 0 and out.count("invalid_value") == 2 and "plan_violation" in out

    code, out, err = await run(capsys, "rejections", "show", listed[0]["id"], "--tenant", "default", *flags)
    assert code == 0, err
    head, _, body = out.partition("activity:\n")
    assert "reason: plan_violation" in head and "rule: required:metadata.order_id" in head
    shown = json.loads(body)
    assert shown["id"] == unplanned.id and shown["action"] == "purchase"
    # Nothing of the caller's key is kept.
    assert server.store is not None
    everything = server.store.query("SELECT * FROM rejected_activities", "TabSeparated")
    assert b"ak_secret" not in everything and b"Bearer" not in everything

    code, _, err = await run(capsys, "rejections", "show", listed[0]["id"], "--tenant", "other", *flags)
    assert code == 1 and "no rejected activity" in err

    code, out, err = await run(capsys, "rejections", "report", "--since", "1d", "--format", "json", *flags)
    assert code == 0, err
    report = sorted(
        (r["outcome"], r["reason"], r["rule"], r["field"], int(r["activities"]))
        for r in map(json.loads, out.splitlines())
    )
    assert report == [
        ("flagged", "plan_violation", "required:source_id", "source_id", 1),
        ("rejected", "invalid_value", "", "id", 2),
        ("rejected", "plan_violation", "required:metadata.order_id", "metadata.order_id", 1),
    ]
    # The same figures as a report over days.
    code, out, err = await run(capsys, "report", "quality", "--format", "json", *flags)
    assert code == 0, err
    assert report == sorted(
        (r["outcome"], r["reason"], r["rule"], r["field"], int(r["activities"]))
        for r in map(json.loads, out.splitlines())
    )
