"""`activity.v1.PrivacyService` over gRPC on the real engines: reserved to admin-scoped keys, it
erases, reports, exports and suppresses a person of the key's tenant."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import grpc
import grpc.aio
import pytest
from helpers import bearer, make_activity, wait_for

from collector.process.server import CollectorServer
from collector.tenants import TenantStore
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from core.proto.activity.v1 import privacy_pb2 as ppb
from core.proto.activity.v1 import privacy_pb2_grpc as ppb_grpc

pytestmark = pytest.mark.timeout(120)


def stored(server: CollectorServer, user: str) -> int:
    assert server.store is not None
    return int(server.store.query(f"SELECT count() FROM activities WHERE user_id = '{user}'", "TabSeparated"))


async def test_privacy_calls_need_an_admin_key_and_act_in_its_tenant(start_server: Any) -> None:
    server: CollectorServer = await start_server(auth=True, plan_refresh_s=0.1)
    assert server.postgres is not None and server.created_key is not None
    tenants = TenantStore(server.postgres.pool)
    admin, _ = await tenants.create_key("default", "admin")
    await tenants.create_tenant("other")
    other_admin, _ = await tenants.create_key("other", "admin")
    reader, _ = await tenants.create_key("default", "read")
    writer = server.created_key
    person = ppb.PersonRef(user_id="alice")

    async with grpc.aio.insecure_channel(server.address) as channel:
        activities = pb_grpc.ActivityServiceStub(channel)
        privacy = ppb_grpc.PrivacyServiceStub(channel)
        sent = [make_activity(n, user=pb.User(user_id=u, session_id=f"s-{u}")) for n, u in enumerate("aab")]
        for a, user in zip(sent, ("alice", "alice", "bob"), strict=True):
            a.user.user_id = user
        answer = await activities.TrackActivities(
            pb.TrackActivitiesRequest(activities=sent), metadata=bearer(writer)
        )
        assert answer.accepted_count == 3

        # A write key (the default) and a read key may not; the message names the scope needed.
        for key, held in ((writer, "write"), (reader, "read")):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await privacy.ErasePerson(ppb.ErasePersonRequest(person=person), metadata=bearer(key))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "scope admin" in str(refused.value.details()) and held in str(refused.value.details())
        # A read key may not send activities either.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await activities.TrackActivities(
                pb.TrackActivitiesRequest(activities=sent), metadata=bearer(reader)
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "scope write" in str(refused.value.details())

        exported = await privacy.ExportPerson(ppb.ExportPersonRequest(person=person), metadata=bearer(admin))
        records = [json.loads(r) for r in exported.records]
        assert sorted(r["id"] for r in records if r["type"] == "activity") == sorted(a.id for a in sent[:2])
        # Another tenant's admin sees nothing of this tenant's alice.
        elsewhere = await privacy.ExportPerson(
            ppb.ExportPersonRequest(person=person), metadata=bearer(other_admin)
        )
        assert [json.loads(r)["type"] for r in elsewhere.records] == ["person", "suppression"]

        suppressed = await privacy.SuppressPerson(
            ppb.SuppressPersonRequest(person=person), metadata=bearer(admin)
        )
        assert suppressed.suppressed and suppressed.ids == 2  # alice and her session
        lifted = await privacy.SuppressPerson(
            ppb.SuppressPersonRequest(person=person, lift=True), metadata=bearer(admin)
        )
        assert lifted.ids == 2 and not lifted.suppressed

        erased = await privacy.ErasePerson(ppb.ErasePersonRequest(person=person), metadata=bearer(admin))
        assert erased.erasure.id > 0
        deadline = time.monotonic() + 60
        while True:
            got = await privacy.GetErasure(
                ppb.GetErasureRequest(erasure_id=erased.erasure.id), metadata=bearer(admin)
            )
            if got.erasure.state == ppb.ERASURE_STATE_DONE:
                break
            assert got.erasure.state != ppb.ERASURE_STATE_FAILED, got.erasure.error
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
        assert got.erasure.rows_removed["activities"] == 2
        assert dict(got.erasure.ids_covered) == {"user": 1, "anonymous": 0, "session": 1}
        assert got.erasure.finished_at.ToDatetime() >= got.erasure.started_at.ToDatetime()
        assert stored(server, "alice") == 0 and stored(server, "bob") == 1

        by_person = await privacy.GetErasure(
            ppb.GetErasureRequest(person=ppb.PersonRef(session_id="s-a")), metadata=bearer(admin)
        )
        assert by_person.erasure.id == erased.erasure.id
        # Another tenant cannot read it.
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await privacy.GetErasure(
                ppb.GetErasureRequest(erasure_id=erased.erasure.id), metadata=bearer(other_admin)
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await privacy.ErasePerson(ppb.ErasePersonRequest(), metadata=bearer(admin))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "person" in str(bad.value.details())

        # Suppressed since the erasure: accepted, not stored.
        later = await activities.TrackActivities(
            pb.TrackActivitiesRequest(activities=[make_activity(9, user=pb.User(user_id="alice"))]),
            metadata=bearer(admin),
        )
        assert later.accepted_count == 1
        assert server.suppressions is not None
        await wait_for(
            lambda: server.suppressions is not None and server.suppressions.suppressed["default"] >= 1,
            "count",
        )
        assert stored(server, "alice") == 0
