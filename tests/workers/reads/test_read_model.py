"""The read model (`workers.reads.model`) in a collector on the real engines: what it answers from memory
equals what ClickHouse answers for the same person, it follows new activities within 2 s (the only way
rows reach it is the tail of `activities_by_person`, whoever inserted them), it forgets an erased
person, and it holds no more than its bound."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc.aio
import pytest
from conftest import StartServer
from helpers import wait_for

from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from core.proto.activity.v1 import privacy_pb2 as privacy_pb
from core.proto.activity.v1 import privacy_pb2_grpc as privacy_grpc
from core.proto.activity.v1 import profile_pb2 as ppb
from core.proto.activity.v1 import profile_pb2_grpc as ppb_grpc
from workers.enrichment.catalog import CatalogEntry, CatalogStore, TargetInfo
from workers.reads.model import ReadModel
from workers.reads.people import find_person
from workers.reads.profiles import read_profile
from workers.reads.recommendations import recommend
from workers.reads.segments import SegmentStore, parse_rule

NOW_S = int(time.time())
HOUR = 3600
DAY = 86400


def act(action: str, target: str, ago_s: int, **user: str) -> pb.Activity:
    a = pb.Activity(id=str(uuid.uuid4()), action=action, target=pb.Target(type="product", id=target))
    a.user.user_id = user.get("user_id", "")
    a.user.anonymous_id = user.get("anonymous_id", "")
    a.occurred_at.FromSeconds(NOW_S - ago_s)
    if action == "purchase":
        a.metadata.price, a.metadata.currency, a.metadata.quantity = 1250, "EUR", 2
    return a


async def send(stub: pb_grpc.ActivityServiceStub, activities: list[pb.Activity]) -> None:
    answer = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=activities))
    assert answer.accepted_count == len(activities), answer.rejections


def model_of(server: CollectorServer) -> ReadModel:
    assert server.read_model is not None
    return server.read_model


async def profile(profiles: ppb_grpc.ProfileServiceStub, **user: str) -> ppb.Profile:
    answer = await profiles.GetProfile(ppb.GetProfileRequest(user=pb.User(**user), recent_limit=200))
    return answer.profile


async def test_a_person_answered_from_memory_equals_the_same_person_read_from_clickhouse(
    start_server: StartServer,
) -> None:
    server = await start_server()
    assert server.postgres is not None and server.store is not None
    await CatalogStore(server.postgres.pool).upsert(
        "default",
        [
            CatalogEntry("product", "shoe", TargetInfo("Shoe", ("Shoes", "Running"), "Acme")),
            CatalogEntry("product", "sock", TargetInfo("Sock", ("Clothing", "Socks"), "Bolt")),
        ],
    )
    rule = parse_rule(
        {"all": [{"action": "view", "within": "1d", "min": 2}, {"not": {"action": "purchase"}}]}
    )
    await SegmentStore(server.postgres.pool).create("default", "browsers", rule)
    model = model_of(server)
    await wait_for(lambda: model.ready, "the read model's first look at the table")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub, profiles = pb_grpc.ActivityServiceStub(channel), ppb_grpc.ProfileServiceStub(channel)
        await send(
            stub,
            [
                act("view", "sock", 3 * DAY, anonymous_id="anon-1"),
                act("view", "shoe", 2 * HOUR, anonymous_id="anon-1"),
                act("view", "shoe", HOUR, user_id="u-1", anonymous_id="anon-1"),
                act("purchase", "shoe", 1800, user_id="u-1"),
                act("view", "sock", 600, user_id="u-2"),
                act("view", "shoe", 300, user_id="u-2"),
            ],
        )
        # Read once (loaded into memory), then more activities reach memory through the tail only.
        for user in ({"user_id": "u-1"}, {"user_id": "u-2"}, {"anonymous_id": "anon-1"}):
            await profile(profiles, **user)
        loads = model.stats.loads
        await send(stub, [act("click", "sock", 60, user_id="u-1"), act("view", "shoe", 30, user_id="u-2")])
        hits = model.stats.hits
        held = {}
        for user in ({"user_id": "u-1"}, {"user_id": "u-2"}, {"anonymous_id": "anon-1"}):
            held[tuple(user.items())] = await profile(profiles, **user)
        recent_views = await profiles.GetRecommendations(
            ppb.GetRecommendationsRequest(strategy="recently_viewed", user=pb.User(user_id="u-2"))
        )
    assert model.stats.hits >= hits + 3 and model.stats.loads == loads, model.stats
    store = server.store
    for user, from_memory in held.items():
        ids = dict(user)
        person = find_person(store, "default", ids.get("user_id", ""), ids.get("anonymous_id", ""))
        stored = read_profile(store, person, 200, {"browsers": rule})
        assert from_memory.person_id == stored.person_id
        assert [a.id for a in from_memory.recent] == [a.id for a in stored.recent]
        assert dict(from_memory.counts) == stored.counts
        assert dict(from_memory.revenue) == stored.revenue
        assert list(from_memory.segments) == stored.segments
        assert from_memory.first_seen.ToDatetime(tzinfo=stored.first_seen.tzinfo) == stored.first_seen
        assert [(a.kind, a.value) for a in from_memory.affinities] == [
            (a.kind, a.value) for a in stored.affinities
        ]
        for mine, theirs in zip(from_memory.affinities, stored.affinities, strict=True):
            assert mine.score == pytest.approx(theirs.score, rel=1e-4)
    assert dict(held[(("user_id", "u-1"),)].counts) == {"view": 3, "purchase": 1, "click": 1}
    assert dict(held[(("user_id", "u-1"),)].revenue) == {"EUR": 2500}
    assert list(held[(("user_id", "u-2"),)].segments) == ["browsers"]
    u2 = find_person(store, "default", "u-2")
    assert [(i.target.id, i.score) for i in recent_views.items] == [
        (i.target_id, pytest.approx(i.score))
        for i in recommend(store, "default", "recently_viewed", u2, None)
    ]


@pytest.mark.parametrize("spool", [False, True])
async def test_an_acknowledged_activity_shows_in_the_profile_and_its_segments_within_two_seconds(
    start_server: StartServer, spool: bool
) -> None:
    server = await start_server(spool=spool)
    assert server.postgres is not None
    buyers = parse_rule({"action": "purchase", "within": "1h"})
    await SegmentStore(server.postgres.pool).create("default", "buyers", buyers)
    model = model_of(server)
    await wait_for(lambda: model.ready, "the read model's first look at the table")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub, profiles = pb_grpc.ActivityServiceStub(channel), ppb_grpc.ProfileServiceStub(channel)
        assert not (await profile(profiles, user_id="fresh")).recent  # held, empty
        bought = act("purchase", "sku-1", 0, user_id="fresh")
        await send(stub, [bought])
        seen: list[ppb.Profile] = []

        async def shown() -> bool:
            seen.append(await profile(profiles, user_id="fresh"))
            return [a.id for a in seen[-1].recent] == [bought.id] and list(seen[-1].segments) == ["buyers"]

        # The bound under test: shown within 2 s of the acknowledgement.
        await wait_for(shown, lambda: f"the purchase shown within 2 s: {seen[-1]}", timeout=2.0)
    assert model.stats.loads == 1 and model.stats.tail_rows >= 1


async def test_an_erased_person_is_dropped_from_memory(start_server: StartServer) -> None:
    server = await start_server()
    model = model_of(server)
    await wait_for(lambda: model.ready, "the read model's first look at the table")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub, profiles = pb_grpc.ActivityServiceStub(channel), ppb_grpc.ProfileServiceStub(channel)
        privacy = privacy_grpc.PrivacyServiceStub(channel)
        await send(
            stub,
            [
                act("view", "sku-1", HOUR, user_id="gone", anonymous_id="gone-a"),
                act("view", "x", 60, user_id="kept"),
            ],
        )
        assert len((await profile(profiles, user_id="gone")).recent) == 1
        assert len((await profile(profiles, anonymous_id="gone-a")).recent) == 1
        assert len((await profile(profiles, user_id="kept")).recent) == 1
        assert model.lookup("default", "gone") is not None

        await privacy.ErasePerson(privacy_pb.ErasePersonRequest(person=privacy_pb.PersonRef(user_id="gone")))
        await wait_for(
            lambda: model.lookup("default", "gone") is None, "the erased person dropped from memory"
        )
        assert model.lookup("default", "", "gone-a") is None
        assert model.lookup("default", "kept") is not None
        assert model.stats.forgotten >= 1
        # Nothing of theirs is held under any id, and asking again does not hold them again.
        assert not [k for k in model._by_key if k[1] in ("gone", "gone-a")]
        await profile(profiles, user_id="gone")
        assert model.lookup("default", "gone") is None


async def test_a_suppressed_person_is_dropped_and_held_again_once_lifted(start_server: StartServer) -> None:
    server = await start_server()
    model = model_of(server)
    await wait_for(lambda: model.ready, "the read model's first look at the table")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub, profiles = pb_grpc.ActivityServiceStub(channel), ppb_grpc.ProfileServiceStub(channel)
        privacy = privacy_grpc.PrivacyServiceStub(channel)
        await send(stub, [act("view", "sku-1", HOUR, user_id="quiet")])
        await profile(profiles, user_id="quiet")
        assert model.lookup("default", "quiet") is not None
        ref = privacy_pb.PersonRef(user_id="quiet")
        await privacy.SuppressPerson(privacy_pb.SuppressPersonRequest(person=ref))
        await wait_for(lambda: model.lookup("default", "quiet") is None, "the suppressed person dropped")
        # Read from ClickHouse while suppressed (an opt-out keeps the stored rows), not held again.
        assert len((await profile(profiles, user_id="quiet")).recent) == 1
        assert model.lookup("default", "quiet") is None
        await privacy.SuppressPerson(privacy_pb.SuppressPersonRequest(person=ref, lift=True))
        await profile(profiles, user_id="quiet")
        assert model.lookup("default", "quiet") is not None


async def test_the_model_holds_no_more_than_its_bound_and_still_answers_right(
    start_server: StartServer,
) -> None:
    server = await start_server(read_model_max_activities=10)
    model = model_of(server)
    await wait_for(lambda: model.ready, "the read model's first look at the table")
    people = [f"p-{n}" for n in range(8)]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub, profiles = pb_grpc.ActivityServiceStub(channel), ppb_grpc.ProfileServiceStub(channel)
        await send(stub, [act("view", f"sku-{k}", 60 * k + 60, user_id=p) for p in people for k in range(3)])
        for _ in range(2):
            for p in people:
                assert dict((await profile(profiles, user_id=p)).counts) == {"view": 3}
                assert model.stats.activities <= 10
    assert model.stats.evicted > 0 and model.stats.persons <= 3
    assert model.stats.activities == sum(max(1, len(h.records)) for h in model._people.values())


async def test_read_model_settings_are_checked(make_settings: Any) -> None:
    from collector.config import ConfigError

    with pytest.raises(ConfigError, match="read_model_max_activities"):
        make_settings(read_model_max_activities=0)
    with pytest.raises(ConfigError, match="read_model_trending_ttl_s"):
        make_settings(read_model_trending_ttl_s=0)
