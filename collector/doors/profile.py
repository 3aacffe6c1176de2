"""`activity.v1.ProfileService`: profiles and recommendations, read from the stored activities.

Each call acts within its key's tenant (`TENANT`, set by authentication; the default tenant when
authentication is off) and needs a key of scope `read` (checked by `collector.doors.auth`). The reads
themselves are `workers.reads`, run on a worker thread: the store answers synchronously.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.rpc import code_pb2

from collector.doors.auth import TENANT
from collector.doors.handlers import generic_handler
from collector.doors.trailers import status_trailer
from core.cache import ExpiringCache
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import profile_pb2 as ppb
from core.proto.activity.v1 import profile_pb2_grpc as ppb_grpc
from workers.reads.people import find_person
from workers.reads.profiles import MAX_RECENT, Profile, read_profile
from workers.reads.recommendations import MAX_LIMIT, Item, StrategyError, recommend
from workers.reads.segments import Rule, SegmentStore
from workers.storage.clickhouse import StoreError
from workers.storage.contract import QueryEngine
from workers.storage.postgres import POSTGRES_ERRORS

SERVICE_NAME = "activity.v1.ProfileService"

T = TypeVar("T")


def _has_id(user: pb.User) -> bool:
    return bool(user.user_id or user.anonymous_id or user.session_id)


def _timestamp(message: Any, value: Any) -> None:
    if value is not None:
        message.FromDatetime(value)


def profile_message(profile: Profile) -> ppb.Profile:
    out = ppb.Profile(person_id=profile.person_id, counts=profile.counts, revenue=profile.revenue)
    if profile.first_seen is not None:
        _timestamp(out.first_seen, profile.first_seen)
        _timestamp(out.last_seen, profile.last_seen)
    for a in profile.recent:
        item = out.recent.add(
            id=a.id,
            action=a.action,
            target=pb.Target(type=a.target_type, id=a.target_id),
            source_id=a.source_id,
        )
        _timestamp(item.occurred_at, a.occurred_at)
    for affinity in profile.affinities:
        out.affinities.add(kind=affinity.kind, value=affinity.value, score=affinity.score)
    out.segments.extend(profile.segments)
    return out


def recommendations_message(strategy: str, items: list[Item]) -> ppb.GetRecommendationsResponse:
    out = ppb.GetRecommendationsResponse(source_id=str(uuid.uuid4()), strategy=strategy)
    for position, item in enumerate(items, start=1):
        out.items.add(
            target=pb.Target(type=item.target_type, id=item.target_id), score=item.score, position=position
        )
    return out


SEGMENT_RULES_TTL_S = 2.0
"""How long a tenant's segment rules are kept between reads of PostgreSQL."""
REFUSED_RETRY_S = 0.2
"""The retry delay of a call refused because `read_queue` calls wait already."""


@dataclass
class ReadStats:
    """Calls answered since start, by (call, outcome): ok, invalid_argument, unavailable, refused."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    """Time spent answering, by call (ok answers only)."""


class ProfileService(ppb_grpc.ProfileServiceServicer):
    """The reads run on worker threads, `concurrency` at once; up to `queue` more wait, and a call past
    those is refused with RESOURCE_EXHAUSTED and a retry delay: reads queue among themselves and never
    take more than `concurrency` of the store's threads from ingest."""

    def __init__(
        self,
        engine: QueryEngine,
        default_tenant: str,
        segments: SegmentStore | None = None,
        concurrency: int = 2,
        queue: int = 32,
    ) -> None:
        self.engine = engine
        self.default_tenant = default_tenant
        self.segments = segments
        self.stats = ReadStats()
        self._rules: ExpiringCache[str, dict[str, Rule]] = ExpiringCache(10_000, SEGMENT_RULES_TTL_S)
        self._slots = asyncio.Semaphore(concurrency)
        self._queue = queue
        self._waiting = 0

    async def _segment_rules(self, tenant: str) -> dict[str, Rule]:
        if self.segments is None:
            return {}
        now = time.monotonic()
        rules = self._rules.get(tenant, now, None)
        if rules is None:
            rules = await self.segments.all(tenant)
            self._rules.set(tenant, rules, now)
        return rules

    def rpc_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The generic handler of the service, for the doors to wrap (authentication, request ids)."""
        return generic_handler(ppb_grpc.add_ProfileServiceServicer_to_server, self)

    async def _answer(
        self, call: str, context: grpc.aio.ServicerContext[Any, Any], read: Callable[[], T]
    ) -> T:
        """`read` on a worker thread, once a slot is free; a bad request is INVALID_ARGUMENT, a store
        that fails UNAVAILABLE, a full line RESOURCE_EXHAUSTED."""
        if self._slots.locked() and self._waiting >= self._queue:
            self.stats.calls[(call, "refused")] += 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._waiting} reads are waiting already (read_queue): retry in {REFUSED_RETRY_S:g} s",
                trailing_metadata=status_trailer(
                    code_pb2.RESOURCE_EXHAUSTED, "too many reads waiting", REFUSED_RETRY_S
                ),
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        start = time.perf_counter()
        try:
            answer = await asyncio.to_thread(read)
        except StrategyError as error:
            self.stats.calls[(call, "invalid_argument")] += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{error.field}: {error}")
        except StoreError as error:
            self.stats.calls[(call, "unavailable")] += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"ClickHouse did not answer: {error}")
        finally:
            self._slots.release()
        self.stats.calls[(call, "ok")] += 1
        self.stats.seconds[call] = self.stats.seconds.get(call, 0.0) + time.perf_counter() - start
        return answer

    async def GetProfile(
        self, request: ppb.GetProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ppb.GetProfileResponse:
        if not _has_id(request.user):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "user: one of user_id, anonymous_id and session_id is required",
            )
        if request.recent_limit > MAX_RECENT:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"recent_limit: at most {MAX_RECENT}, got {request.recent_limit}",
            )
        tenant = TENANT.get() or self.default_tenant
        try:
            rules = await self._segment_rules(tenant)
        except POSTGRES_ERRORS as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"PostgreSQL did not answer: {error}")

        def read() -> ppb.GetProfileResponse:
            person = find_person(
                self.engine, tenant, request.user.user_id, request.user.anonymous_id, request.user.session_id
            )
            found = read_profile(self.engine, person, request.recent_limit, rules)
            return ppb.GetProfileResponse(profile=profile_message(found))

        return await self._answer("GetProfile", context, read)

    async def GetRecommendations(
        self, request: ppb.GetRecommendationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ppb.GetRecommendationsResponse:
        if request.limit > MAX_LIMIT:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"limit: at most {MAX_LIMIT}, got {request.limit}"
            )
        tenant = TENANT.get() or self.default_tenant
        user = request.user
        target = (request.target.type, request.target.id) if request.HasField("target") else None

        def read() -> ppb.GetRecommendationsResponse:
            person = (
                find_person(self.engine, tenant, user.user_id, user.anonymous_id, user.session_id)
                if _has_id(user)
                else None
            )
            items = recommend(
                self.engine,
                tenant,
                request.strategy,
                person,
                target,
                request.limit,
                list(request.exclude_target_ids),
            )
            return recommendations_message(request.strategy, items)

        return await self._answer("GetRecommendations", context, read)
