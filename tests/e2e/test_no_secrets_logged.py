"""What is never logged: a full `serve` run at debug level, with a PostgreSQL DSN holding a password,
activities sent with a good key, a revoked key, an unknown one and a key of the wrong scope, and an
erasure run; then every line it wrote is searched for the keys' secrets and the password."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import grpc
import grpc.aio
import pytest
from helpers import bearer, make_activity, reap, start_serve

from collector.tenants import TenantStore
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from core.proto.activity.v1 import privacy_pb2 as ppb
from core.proto.activity.v1 import privacy_pb2_grpc as ppb_grpc

pytestmark = pytest.mark.timeout(180)

PASSWORD = "pw-never-logged-5d1e"


async def test_no_key_or_password_reaches_the_logs(tmp_path: Path, postgres_dsn: str) -> None:
    # The test server trusts local connections: the password is sent and never checked.
    dsn = postgres_dsn.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)
    assert PASSWORD in dsn
    proc, address, key = start_serve(tmp_path / "data", "--postgres-dsn", dsn, "--log-level", "debug")
    assert key is not None
    try:
        pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1)
        try:
            tenants = TenantStore(pool)
            admin, _ = await tenants.create_key("default", "admin")
            revoked, stored = await tenants.create_key("default")
            await tenants.revoke_key(stored.key_id)
        finally:
            await pool.close()
        unknown = "ak_0123456789ab_" + "f" * 48
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ActivityServiceStub(channel)
            privacy = ppb_grpc.PrivacyServiceStub(channel)
            batch = pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(20)])
            assert (await stub.TrackActivities(batch, metadata=bearer(key))).accepted_count == 20
            for bad in (revoked, unknown, f"{key}x", "not a key"):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.TrackActivities(batch, metadata=bearer(bad))
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await privacy.ErasePerson(
                    ppb.ErasePersonRequest(person=ppb.PersonRef(user_id="u-1")), metadata=bearer(key)
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            erased = await privacy.ErasePerson(
                ppb.ErasePersonRequest(person=ppb.PersonRef(user_id="u-1")), metadata=bearer(admin)
            )
            for _ in range(600):
                got = await privacy.GetErasure(
                    ppb.GetErasureRequest(erasure_id=erased.erasure.id), metadata=bearer(admin)
                )
                if got.erasure.state == ppb.ERASURE_STATE_DONE:
                    break
                await asyncio.sleep(0.05)
            assert got.erasure.state == ppb.ERASURE_STATE_DONE
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    logs = out + err
    assert "erasure done" in logs  # the run logged at debug level, the erasure included
    for secret in (PASSWORD, key.split("_")[2], admin.split("_")[2], revoked.split("_")[2], "f" * 48):
        assert secret not in logs
