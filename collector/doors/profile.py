"""`activity.v1.ProfileService`: profiles and recommendations, read from the stored activities.

Each call acts within its key's tenant (`TENANT`, set by authentication; the default tenant when
authentication is off) and needs a key of scope `read` (checked by `collector.doors.auth`). With the
read model (`workers.reads.model`, `workers.reads.items`), a call is answered from memory when the
person and the tenant's lists are held there, and reads ClickHouse otherwise (`workers.reads`), on a
worker thread: the store answers synchronously.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
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
from workers.reads import held as memory
from workers.reads.items import ItemLists, for_you, pick
from workers.reads.model import ReadModel
from workers.reads.people import Person, find_person
from workers.reads.profiles import MAX_RECENT, Profile, read_profile
from workers.reads.recommendations import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Item,
    StrategyError,
    check,
    recommend,
)
from workers.reads.records import Record
from workers.reads.segments import Rule, SegmentStore
from workers.storage.clickhouse import StoreError
from workers.storage.contract import QueryEngine
from workers.storage.postgres import POSTGRES_ERRORS

SERVICE_NAME = "activity.v1.ProfileService"

T = TypeVar("T")


def _has_id(user: pb.User) -> bool:
    return bool(user.user_id or user.anonymous_id or user.session_id)


def _timestamp(message: Any, value: dt.datetime | None) -> None:
    # Timestamp.FromDatetime costs about 25 µs (a time tuple, calendar.timegm): one per recent activity.
    if value is not None:
        seconds = math.floor(value.timestamp())
        message.seconds, message.nanos = seconds, value.microsecond * 1000


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


class _Refused(Exception):
    """`read_queue` calls wait already."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class ProfileService(ppb_grpc.ProfileServiceServicer):
    """The store's reads run on worker threads, `concurrency` at once; up to `queue` more wait, and a
    call past those is refused with RESOURCE_EXHAUSTED and a retry delay: reads queue among themselves
    and never take more than `concurrency` of the store's threads from ingest. Answers from the read
    model take no thread."""

    def __init__(
        self,
        engine: QueryEngine,
        default_tenant: str,
        segments: SegmentStore | None = None,
        concurrency: int = 2,
        queue: int = 32,
        model: ReadModel | None = None,
        items: ItemLists | None = None,
    ) -> None:
        self.engine = engine
        self.default_tenant = default_tenant
        self.segments = segments
        self.model = model
        self.items = items
        self.stats = ReadStats()
        self.on_answer: Callable[[str, float], None] | None = None
        """Called with the call's name and its seconds, from its handler's start to its answer, for
        every call answered OK (the metrics' latency histogram)."""
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

    async def _store(self, read: Callable[[], T]) -> T:
        """`read` on a worker thread, once a slot is free; _Refused when `queue` calls wait already."""
        if self._slots.locked() and self._waiting >= self._queue:
            raise _Refused()
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            return await asyncio.to_thread(read)
        finally:
            self._slots.release()

    async def _answer(
        self,
        call: str,
        context: grpc.aio.ServicerContext[Any, Any],
        read: Callable[[], Awaitable[T]],
        start: float,
    ) -> T:
        """The answer of `read`: a bad request is INVALID_ARGUMENT, a store that fails UNAVAILABLE, a
        full line RESOURCE_EXHAUSTED. `start`: the handler's `perf_counter()` on entry."""
        try:
            answer = await read()
        except _Refused:
            self.stats.calls[(call, "refused")] += 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._waiting} reads are waiting already (read_queue): retry in {REFUSED_RETRY_S:g} s",
                trailing_metadata=status_trailer(
                    code_pb2.RESOURCE_EXHAUSTED, "too many reads waiting", REFUSED_RETRY_S
                ),
            )
        except StrategyError as error:
            self.stats.calls[(call, "invalid_argument")] += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{error.field}: {error}")
        except StoreError as error:
            self.stats.calls[(call, "unavailable")] += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"ClickHouse did not answer: {error}")
        self.stats.calls[(call, "ok")] += 1
        if self.on_answer is not None:
            self.on_answer(call, time.perf_counter() - start)
        return answer

    async def _person(self, tenant: str, user: pb.User) -> tuple[Person | None, Iterable[Record] | None]:
        """The person the ids name and their records: from the read model, or loaded into it from the
        store; records None when the person is read from the store only (too large, no model)."""
        if self.model is None:
            person = await self._store(
                lambda: find_person(self.engine, tenant, user.user_id, user.anonymous_id, user.session_id)
            )
            return person, None
        await self.model.caught_up()
        held = self.model.lookup(tenant, user.user_id, user.anonymous_id, user.session_id)
        if held is not None:
            person = Person(tenant, held.person_id, held.person_id if held.is_user else "", held.keys)
            return person, held.records.values()
        return await self.model.load(tenant, user.user_id, user.anonymous_id, user.session_id, self._store)

    async def GetProfile(
        self, request: ppb.GetProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ppb.GetProfileResponse:
        start = time.perf_counter()
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

        async def read() -> ppb.GetProfileResponse:
            person, records = await self._person(tenant, request.user)
            assert person is not None
            if records is None:
                found = await self._store(
                    lambda: read_profile(self.engine, person, request.recent_limit, rules)
                )
            else:
                found = memory.profile(person.person_id, records, request.recent_limit, rules, _now_ms())
            return ppb.GetProfileResponse(profile=profile_message(found))

        return await self._answer("GetProfile", context, read, start)

    async def GetRecommendations(
        self, request: ppb.GetRecommendationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ppb.GetRecommendationsResponse:
        start = time.perf_counter()
        if request.limit > MAX_LIMIT:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"limit: at most {MAX_LIMIT}, got {request.limit}"
            )
        tenant = TENANT.get() or self.default_tenant
        user = request.user
        target = (request.target.type, request.target.id) if request.HasField("target") else None
        strategy = request.strategy
        excluded = list(request.exclude_target_ids)

        async def read() -> ppb.GetRecommendationsResponse:
            check(strategy, _has_id(user), target)
            person: Person | None = None
            records: Iterable[Record] | None = None
            needs_person = strategy in ("also_bought", "recently_viewed", "for_you")
            if _has_id(user) and needs_person:
                person, records = await self._person(tenant, user)
            items = None
            if (records is not None or not needs_person or not _has_id(user)) and self.items is not None:
                items = await self._from_memory(tenant, strategy, target, records, excluded, request.limit)
            if items is None:
                if self.items is not None:
                    self.items.stats.asked_store += 1
                chosen = person
                items = await self._store(
                    lambda: recommend(self.engine, tenant, strategy, chosen, target, request.limit, excluded)
                )
            return recommendations_message(strategy, items)

        return await self._answer("GetRecommendations", context, read, start)

    async def _from_memory(
        self,
        tenant: str,
        strategy: str,
        target: tuple[str, str] | None,
        records: Iterable[Record] | None,
        excluded: list[str],
        limit: int,
    ) -> list[Item] | None:
        """The strategy's items from the person's records and the tenant's lists; None: ask the store."""
        assert self.items is not None
        limit = max(1, min(limit or DEFAULT_LIMIT, MAX_LIMIT))
        held = list(records) if records is not None else []
        if strategy == "recently_viewed":
            return memory.recently_viewed(held, excluded, limit)
        if strategy in ("also_viewed", "also_bought"):
            assert target is not None
            action = "view" if strategy == "also_viewed" else "purchase"
            together = await self.items.together(tenant, action, target, self._store)
            return pick(
                together, memory.bought(held) if strategy == "also_bought" else set(), excluded, limit
            )
        if strategy == "trending":
            return pick(await self.items.trending(tenant, self._store), set(), excluded, limit)
        # for_you
        bought = memory.bought(held)
        affinities = [a for a in memory.affinities(held, _now_ms()) if a.kind in ("category", "brand")]
        if not affinities:
            return pick(await self.items.trending(tenant, self._store), bought, excluded, limit)
        return for_you(await self.items.popularity(tenant, self._store), affinities, bought, excluded, limit)
