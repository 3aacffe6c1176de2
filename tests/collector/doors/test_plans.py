"""Tracking plans behind a real gRPC door, per tenant: the same activity accepted for a tenant without a
plan, rejected with the rule for one whose plan rejects, stored with its violations for one whose plan
flags; a plan applied while the collector runs is in force within plan_refresh_s."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc.aio
import pytest
from helpers import bearer, make_activity, wait_for

from collector.process.server import CollectorServer
from collector.tenants import TenantStore
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.processors.plan_store import PlanStore

pytestmark = pytest.mark.timeout(90)

PLAN = {
    "unknown_actions": "reject",
    "actions": {
        "view": {},
        "purchase": {
            "required": ["metadata.order_id", "metadata.price", "metadata.currency"],
            "min": {"metadata.quantity": 1},
        },
    },
}


def rows(server: CollectorServer, sql: str) -> list[str]:
    assert server.store is not None
    return server.store.query(sql, "TabSeparated").decode().splitlines()


def purchase_without_order() -> pb.Activity:
    return make_activity(action="purchase", metadata=pb.Metadata(price=1999, currency="EUR", quantity=1))


async def keys_for(server: CollectorServer, *tenants: str) -> dict[str, str]:
    assert server.postgres is not None
    store = TenantStore(server.postgres.pool)
    keys = {}
    for tenant in tenants:
        await store.create_tenant(tenant)
        keys[tenant], _ = await store.create_key(tenant)
    return keys


async def test_the_same_activity_is_accepted_rejected_or_flagged_by_each_tenants_plan(
    start_server: Any,
) -> None:
    server: CollectorServer = await start_server(auth=True, plan_refresh_s=0.1)
    assert server.postgres is not None and server.plans is not None and server.processors is not None
    keys = await keys_for(server, "open", "strict", "lenient")
    plans = PlanStore(server.postgres.pool)
    await plans.apply("strict", PLAN)
    await plans.apply("lenient", PLAN | {"mode": "flag", "unknown_actions": "flag"})
    deadline = time.monotonic() + 5
    while set(server.plans.plans) != {"strict", "lenient"}:
        assert time.monotonic() < deadline, "the plans were not loaded"
        await asyncio.sleep(0.05)
    # Tenants without a plan keep the compiled path: the seam does not even parse their activities.
    assert not server.processors.applies("open")

    answers = {}
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        for tenant, key in keys.items():
            batch = [
                make_activity(1, action="view"),
                purchase_without_order(),
                make_activity(2, action="click"),
            ]
            answers[tenant] = await stub.TrackActivities(
                pb.TrackActivitiesRequest(activities=batch), metadata=bearer(key)
            )

    assert answers["open"].accepted_count == 3 and not answers["open"].rejections
    strict = answers["strict"]
    assert strict.accepted_count == 1
    assert [(r.index, r.reason, r.field) for r in strict.rejections] == [
        (1, pb.REJECTION_REASON_PLAN_VIOLATION, "metadata.order_id"),
        (2, pb.REJECTION_REASON_PLAN_VIOLATION, "action"),
    ]
    assert "required:metadata.order_id" in strict.rejections[0].message
    assert "unknown_action" in strict.rejections[1].message
    assert answers["lenient"].accepted_count == 3 and not answers["lenient"].rejections

    stored = rows(
        server,
        "SELECT tenant_id, action, plan_violations FROM activities ORDER BY tenant_id, action",
    )
    assert stored == [
        "lenient\tclick\t['unknown_action']",
        "lenient\tpurchase\t['required:metadata.order_id']",
        "lenient\tview\t[]",
        "open\tclick\t[]",
        "open\tpurchase\t[]",
        "open\tview\t[]",
        "strict\tview\t[]",
    ]
    stats = server.processors.stats
    assert stats.rejected == {("plan", "required:metadata.order_id"): 1, ("plan", "unknown_action"): 1}
    assert stats.flagged == {("plan", "required:metadata.order_id"): 1, ("plan", "unknown_action"): 1}


async def test_requests_whose_every_activity_conforms_are_stored_whole(start_server: Any) -> None:
    """A batch and a single call of a tenant with a plan, every activity conforming: all accepted and
    stored, with no violation, nothing counted against the plan."""
    server: CollectorServer = await start_server(auth=True, plan_refresh_s=0.1)
    assert server.postgres is not None and server.plans is not None and server.processors is not None
    keys = await keys_for(server, "strict")
    await PlanStore(server.postgres.pool).apply("strict", PLAN)
    plans = server.plans
    await wait_for(lambda: "strict" in plans.plans, "the plan to be loaded", timeout=5)

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        batch = await stub.TrackActivities(
            pb.TrackActivitiesRequest(activities=[make_activity(n, action="view") for n in range(1, 6)]),
            metadata=bearer(keys["strict"]),
        )
        single = await stub.TrackActivity(
            pb.TrackActivityRequest(activity=make_activity(9, action="view")), metadata=bearer(keys["strict"])
        )

    assert batch.accepted_count == 5 and not batch.rejections
    assert single.accepted_count == 1 and not single.rejections
    stored = rows(server, "SELECT action, plan_violations FROM activities WHERE tenant_id = 'strict'")
    assert stored == ["view\t[]"] * 6
    assert not server.processors.stats.rejected and not server.processors.stats.flagged
