"""`activity.v1.ProfileService` against a collector on the real engines: profiles and recommendations
read back from activities sent through `ActivityService`, checked against what the test sent."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import grpc.aio
import pytest
from conftest import StartServer
from helpers import wait_for

from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from core.proto.activity.v1 import profile_pb2 as ppb
from core.proto.activity.v1 import profile_pb2_grpc as ppb_grpc
from workers.enrichment.catalog import CatalogEntry, CatalogStore, TargetInfo

NOW_S = int(time.time())
HOUR = 3600
DAY = 86400


def act(
    action: str,
    target: str,
    ago_s: int,
    *,
    user_id: str = "",
    anonymous_id: str = "",
    session_id: str = "",
    target_type: str = "product",
    price: int | None = None,
    currency: str = "",
    user_agent: str = "",
) -> pb.Activity:
    a = pb.Activity(id=str(uuid.uuid4()), action=action, target=pb.Target(type=target_type, id=target))
    a.user.user_id, a.user.anonymous_id, a.user.session_id = user_id, anonymous_id, session_id
    if price is not None:
        a.metadata.price = price
        a.metadata.currency = currency
    if user_agent:
        a.metadata.user_agent = user_agent
    a.occurred_at.FromSeconds(NOW_S - ago_s)
    return a


async def send(
    stub: pb_grpc.ActivityServiceStub, activities: list[pb.Activity], tenant_key: str = ""
) -> None:
    metadata = (("authorization", f"Bearer {tenant_key}"),) if tenant_key else None
    for start in range(0, len(activities), 500):
        batch = activities[start : start + 500]
        answer = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch), metadata=metadata)
        assert answer.accepted_count == len(batch), answer.rejections


@pytest.fixture
async def reads(server: CollectorServer) -> Any:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.ActivityServiceStub(channel), ppb_grpc.ProfileServiceStub(channel)


async def test_a_profile_holds_the_persons_activities_across_a_login(reads: Any) -> None:
    stub, profiles = reads
    # Anonymous browsing, then a login (an activity with both ids), then a purchase as the user.
    sent = [
        act("view", "sku-1", 3 * DAY, anonymous_id="a-1"),
        act("view", "sku-2", 2 * DAY, anonymous_id="a-1"),
        act("add_to_cart", "sku-2", 2 * DAY - 60, anonymous_id="a-1"),
        act("view", "sku-2", DAY, anonymous_id="a-1", user_id="u-1"),
        act("purchase", "sku-2", DAY - 60, user_id="u-1", price=1999, currency="EUR"),
        act("purchase", "sku-3", HOUR, user_id="u-1", price=500, currency="JPY"),
        # Someone else.
        act("view", "sku-9", HOUR, anonymous_id="a-2"),
    ]
    await send(stub, sent)
    # A client's resend of some of them: the same activities, counted once.
    await send(stub, sent[2:5])

    for user in (pb.User(user_id="u-1"), pb.User(anonymous_id="a-1")):
        profile = (await profiles.GetProfile(ppb.GetProfileRequest(user=user, recent_limit=3))).profile
        assert profile.person_id == "u-1"
        mine = sorted(sent[:6], key=lambda a: -a.occurred_at.seconds)
        assert [a.id for a in profile.recent] == [a.id for a in mine[:3]]
        assert profile.first_seen.seconds == NOW_S - 3 * DAY
        assert profile.last_seen.seconds == NOW_S - HOUR
        assert dict(profile.counts) == {"view": 3, "add_to_cart": 1, "purchase": 2}
        assert dict(profile.revenue) == {"EUR": 1999, "JPY": 500}
        assert [(f.kind, f.value) for f in profile.affinities] == [("target_type", "product")]

    stranger = (await profiles.GetProfile(ppb.GetProfileRequest(user=pb.User(user_id="nobody")))).profile
    assert stranger.person_id == "nobody"
    assert not stranger.recent and not stranger.counts and not stranger.HasField("first_seen")


async def test_affinities_rank_by_decayed_weight_of_the_catalogue(
    start_server: StartServer,
) -> None:
    server = await start_server()
    assert server.postgres is not None
    await CatalogStore(server.postgres.pool).upsert(
        "default",
        [
            CatalogEntry("product", "shoe", TargetInfo("Shoe", ("Shoes", "Running"), "Acme")),
            CatalogEntry("product", "sock", TargetInfo("Sock", ("Clothing", "Socks"), "Bolt")),
        ],
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub, profiles = pb_grpc.ActivityServiceStub(channel), ppb_grpc.ProfileServiceStub(channel)
        # Two recent views of socks (2 x ~1) against one purchase of shoes 14 days ago (5 x 1/4).
        await send(
            stub,
            [
                act("view", "sock", HOUR, user_id="u-7"),
                act("view", "sock", HOUR, user_id="u-7"),
                act("purchase", "shoe", 14 * DAY, user_id="u-7", price=100, currency="EUR"),
            ],
        )
        profile = (await profiles.GetProfile(ppb.GetProfileRequest(user=pb.User(user_id="u-7")))).profile
    scores = {(f.kind, f.value): f.score for f in profile.affinities}
    assert scores[("category", "Socks")] == pytest.approx(2.0, rel=0.01)
    assert scores[("category", "Running")] == pytest.approx(5 / 4, rel=0.01)
    assert scores[("brand", "Bolt")] > scores[("brand", "Acme")]
    assert [f.score for f in profile.affinities] == sorted(
        (f.score for f in profile.affinities), reverse=True
    )


async def test_also_bought_ranks_what_is_bought_with_the_target_most_often(reads: Any) -> None:
    stub, profiles = reads
    sent = []
    for n in range(10):
        sent += [act("purchase", "A", DAY, user_id=f"b-{n}"), act("purchase", "B", DAY, user_id=f"b-{n}")]
    for n in range(2):
        sent += [act("purchase", "A", DAY, user_id=f"c-{n}"), act("purchase", "C", DAY, user_id=f"c-{n}")]
    # Bots do not count, however many.
    bot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    for n in range(30):
        sent += [
            act("purchase", "A", DAY, user_id=f"bot-{n}", user_agent=bot),
            act("purchase", "D", DAY, user_id=f"bot-{n}", user_agent=bot),
        ]
    sent.append(act("purchase", "B", HOUR, user_id="buyer"))
    await send(stub, sent)

    request = ppb.GetRecommendationsRequest(strategy="also_bought", target=pb.Target(type="product", id="A"))
    first = await profiles.GetRecommendations(request)
    # Ten people bought A and B, two A and C; the buyer of B alone did not buy A.
    assert [(i.target.id, i.score, i.position) for i in first.items] == [("B", 10.0, 1), ("C", 2.0, 2)]
    assert first.strategy == "also_bought"
    second = await profiles.GetRecommendations(request)
    assert uuid.UUID(first.source_id) != uuid.UUID(second.source_id)
    # What the asking person already bought is left out.
    request.user.user_id = "buyer"
    mine = await profiles.GetRecommendations(request)
    assert [i.target.id for i in mine.items] == ["C"]
    request.user.user_id = ""
    request.exclude_target_ids.append("B")
    assert [i.target.id for i in (await profiles.GetRecommendations(request)).items] == ["C"]


async def test_trending_follows_a_burst_and_recently_viewed_lists_each_view_once(reads: Any) -> None:
    stub, profiles = reads
    # Steady interest in X a day ago; a burst on Y in the last hour.
    sent = [act("view", "X", DAY, anonymous_id=f"v-{n}") for n in range(40)]
    sent += [act("view", "Y", 600, anonymous_id=f"w-{n}") for n in range(15)]
    sent += [
        act("view", "P", 5 * HOUR, user_id="me"),
        act("view", "Q", 4 * HOUR, user_id="me"),
        act("view", "P", 3 * HOUR, user_id="me"),
        act("click", "R", 2 * HOUR, user_id="me"),
    ]
    await send(stub, sent)
    trending = await profiles.GetRecommendations(ppb.GetRecommendationsRequest(strategy="trending", limit=2))
    assert [i.target.id for i in trending.items] == ["Y", "X"]
    recent = await profiles.GetRecommendations(
        ppb.GetRecommendationsRequest(strategy="recently_viewed", user=pb.User(user_id="me"))
    )
    assert [(i.target.id, i.position) for i in recent.items] == [("P", 1), ("Q", 2)]


async def test_bad_requests_name_their_field(reads: Any) -> None:
    _, profiles = reads
    cases = [
        (profiles.GetProfile(ppb.GetProfileRequest()), "user"),
        (
            profiles.GetProfile(ppb.GetProfileRequest(user=pb.User(user_id="u"), recent_limit=201)),
            "recent_limit",
        ),
        (profiles.GetRecommendations(ppb.GetRecommendationsRequest(strategy="best")), "strategy"),
        (profiles.GetRecommendations(ppb.GetRecommendationsRequest(strategy="also_viewed")), "target"),
        (profiles.GetRecommendations(ppb.GetRecommendationsRequest(strategy="for_you")), "user"),
        (profiles.GetRecommendations(ppb.GetRecommendationsRequest(strategy="trending", limit=101)), "limit"),
    ]
    for call, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.value.details() or "").startswith(f"{field}:"), error.value.details()


async def test_for_you_recommends_from_the_persons_categories_and_leaves_out_what_they_bought(
    start_server: StartServer,
) -> None:
    server = await start_server()
    assert server.postgres is not None
    await CatalogStore(server.postgres.pool).upsert(
        "default",
        [CatalogEntry("product", f"run-{n}", TargetInfo(f"Shoe {n}", ("Shoes", "Running"))) for n in range(3)]
        + [CatalogEntry("product", "hat", TargetInfo("Hat", ("Hats",)))],
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub, profiles = pb_grpc.ActivityServiceStub(channel), ppb_grpc.ProfileServiceStub(channel)
        sent = [
            act("view", "run-0", HOUR, user_id="runner"),
            act("purchase", "run-1", HOUR, user_id="runner"),
        ]
        # run-2 is more popular than run-0; the hat is the most popular of all, in a category not theirs.
        sent += [act("view", "run-2", DAY, user_id=f"o-{n}") for n in range(5)]
        sent += [act("view", "run-0", DAY, user_id=f"p-{n}") for n in range(2)]
        sent += [act("view", "hat", DAY, user_id=f"q-{n}") for n in range(20)]
        await send(stub, sent)
        answer = await profiles.GetRecommendations(
            ppb.GetRecommendationsRequest(strategy="for_you", user=pb.User(user_id="runner"))
        )
    assert [i.target.id for i in answer.items] == ["run-2", "run-0"]


async def test_each_tenant_reads_its_own_people_and_a_write_key_cannot_read(
    start_server: StartServer,
) -> None:
    server = await start_server(auth=True, auth_cache_ttl_s=0.2)
    assert server.postgres is not None and server.created_key is not None
    from collector.tenants import TenantStore

    tenants = TenantStore(server.postgres.pool)
    await tenants.create_tenant("other")
    other_writer = (await tenants.create_key("other", scope="write"))[0]
    other_reader = (await tenants.create_key("other", scope="read"))[0]
    default_reader = (await tenants.create_key("default", scope="read"))[0]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub, profiles = pb_grpc.ActivityServiceStub(channel), ppb_grpc.ProfileServiceStub(channel)
        await send(stub, [act("view", "mine", HOUR, user_id="same-id")], server.created_key)
        await send(stub, [act("view", "theirs", HOUR, user_id="same-id")], other_writer)

        async def recent(key: str) -> list[str]:
            answer = await profiles.GetProfile(
                ppb.GetProfileRequest(user=pb.User(user_id="same-id")),
                metadata=(("authorization", f"Bearer {key}"),),
            )
            return [a.target.id for a in answer.profile.recent]

        assert await recent(default_reader) == ["mine"]
        assert await recent(other_reader) == ["theirs"]
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await recent(other_writer)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "read" in (error.value.details() or "")
        # A read key cannot write; a key holding both scopes does both.
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await send(stub, [act("view", "x", HOUR, user_id="u")], other_reader)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        both = (await tenants.create_key("other", scope="read,write"))[0]
        await send(stub, [act("view", "both", 60, user_id="same-id")], both)
        assert await recent(both) == ["both", "theirs"]

        # A revoked read key stops reading once its cached acceptance (0.2 s here) has expired.
        await tenants.revoke_key(other_reader)
        revoked_at = time.monotonic()

        async def refused() -> bool:
            try:
                await recent(other_reader)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "revoked" in (error.details() or "")
                return True
            return False

        await wait_for(refused, "the revoked read key refused", timeout=5)
        # Within the cache's TTL and the time a call takes on a busy machine.
        assert time.monotonic() - revoked_at < 2


async def test_the_python_clients_reader_asks_for_profiles_and_recommendations(
    reads: Any, server: CollectorServer
) -> None:
    import asyncio

    from activity_client import Reader

    stub, _ = reads
    await send(stub, [act("view", "sku-1", HOUR, user_id="u-1"), act("view", "sku-2", 60, user_id="u-1")])

    def read() -> tuple[Any, Any]:
        with Reader(server.address) as reader:
            return (
                reader.get_profile(user_id="u-1", recent_limit=1),
                reader.get_recommendations("recently_viewed", user_id="u-1"),
            )

    profile, answer = await asyncio.to_thread(read)
    assert [a.target.id for a in profile.recent] == ["sku-2"]
    assert [i.target.id for i in answer.items] == ["sku-2", "sku-1"]


async def test_a_purchase_after_a_recommendation_is_credited_to_its_strategy_in_the_reports(
    reads: Any, server: CollectorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio
    import json

    from collector.cli.main import main

    stub, profiles = reads
    await send(stub, [act("view", "X", 600, anonymous_id=f"v-{n}") for n in range(5)])
    answer = await profiles.GetRecommendations(ppb.GetRecommendationsRequest(strategy="trending", limit=1))
    assert [(i.target.id, i.position) for i in answer.items] == [("X", 1)]
    # What the page does with the response: shows it, the shopper clicks it and buys.
    source = pb.Source(type="recommendation", name=answer.strategy, position=answer.items[0].position)
    shown = act("impression", "X", 30, user_id="shopper")
    clicked = act("click", "X", 20, user_id="shopper")
    for a in (shown, clicked):
        a.source_id = answer.source_id
        a.source.CopyFrom(source)
    bought = act("purchase", "X", 10, user_id="shopper", price=1500, currency="EUR")
    await send(stub, [shown, clicked, bought])

    flags = [
        "--data-dir",
        str(server.settings.data_dir),
        "--clickhouse-dsn",
        server.settings.effective_clickhouse_dsn,
        "--clickhouse-database",
        server.settings.clickhouse_database,
    ]
    code = await asyncio.to_thread(main, ["report", "sources", "--by", "name", "--format", "json", *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    trending = rows["trending"]
    assert (int(trending["impressions"]), int(trending["clicks"]), int(trending["purchases"])) == (1, 1, 1)
    assert {k: int(v) for k, v in trending["revenue"].items()} == {"EUR": 1500}
