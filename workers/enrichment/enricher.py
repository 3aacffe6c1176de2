"""Enrichment of a batch: user agent, catalogue and identity, per distinct value.

For each activity, enrichment adds a few row fields after the batch's (see `workers.storage.schema`): what its
user agent says (device type, OS, browser, bot), what the tenant's catalogue says about its target,
and the user id it resolves to. The work is done once per distinct value of a batch, never per
activity: the user agents, targets and anonymous / session ids of the batch are collected, each is
looked up in a cache, the misses in PostgreSQL (one query per kind for the batch, both at once), and
each distinct value's row fields are encoded once; an activity then costs a few dictionary reads and
one concatenation. The pipeline hands over every request waiting as one batch, so that many small
requests share their lookups.

Identity stitching walks the batch in order: an activity with a user id links its anonymous and
session ids to that user (recorded in PostgreSQL when new or changed); an activity without one
resolves to the user its anonymous id, else its session id, is linked to — by this batch's earlier
activities, by the cache, or by PostgreSQL.

PostgreSQL is on the path only for cache misses, and never stops ingestion: when it fails or takes
longer than `enrichment_timeout_ms`, the batch is stored without what was missing (each such activity
counted as a gap), and PostgreSQL is left alone for a growing while (up to 30 s) before it is tried
again. Links that could not be recorded are kept (up to a bound, counted past it) and written with a
later batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.backoff import backoff_delay
from core.cache import ExpiringCache
from core.fastpath import EnrichmentKeys
from core.proto.activity.v1 import activity_pb2 as pb
from core.wire import bytes_field, field_key, varint
from workers.enrichment import lookups
from workers.enrichment.identity import ANONYMOUS, SESSION, IdentityStore, LinkKey
from workers.enrichment.useragent import UserAgentInfo, parse_user_agent
from workers.storage.postgres import POSTGRES_ERRORS
from workers.storage.schema import (
    BROWSER_FIELD,
    BROWSER_VERSION_FIELD,
    IS_BOT_FIELD,
    OS_FIELD,
    OS_VERSION_FIELD,
    RESOLVED_USER_ID_FIELD,
    TARGET_BRAND_FIELD,
    TARGET_CATALOG_ATTRIBUTES_FIELD,
    TARGET_CATEGORY_PATH_FIELD,
    TARGET_LIST_CURRENCY_FIELD,
    TARGET_LIST_PRICE_FIELD,
    TARGET_NAME_FIELD,
    UA_DEVICE_TYPE_FIELD,
)

log = logging.getLogger(__name__)

USER_AGENT = "user_agent"
CATALOG = "catalog"
IDENTITY = "identity"

MAX_PENDING_LINKS = 10_000
"""Links kept for a later write while PostgreSQL cannot take them; past it, the oldest are dropped
(counted)."""
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0
_LOOKUP_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, OSError, *POSTGRES_ERRORS)
_MISSING = object()


class TargetDetails(Protocol):
    """What the catalogue says about one target (`workers.enrichment.catalog.TargetInfo`)."""

    @property
    def name(self) -> str: ...
    @property
    def category_path(self) -> Sequence[str]: ...
    @property
    def brand(self) -> str: ...
    @property
    def list_price(self) -> int | None: ...
    @property
    def currency(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, str]: ...


class Catalog(Protocol):
    async def lookup(
        self, tenant: str, keys: Sequence[tuple[str, str]]
    ) -> Mapping[tuple[str, str], TargetDetails]: ...

    async def has_entries(self, tenant: str) -> bool: ...


@dataclass
class EnrichmentStats:
    """Counters since start. `activities[(kind, outcome)]`: per activity concerned, outcome `enriched`,
    `unknown` (no catalogue entry, no link) or `gap` (PostgreSQL could not be asked or did not answer
    in time). `lookups[(kind, outcome)]`: PostgreSQL queries, `ok`, `error` or `skipped` (backing off)."""

    activities: Counter[tuple[str, str]] = field(default_factory=Counter)
    lookups: Counter[tuple[str, str]] = field(default_factory=Counter)
    user_agents_parsed: int = 0
    links_recorded: int = 0
    link_write_failures: int = 0
    links_dropped: int = 0


def _text(number: int, value: str) -> bytes:
    """A string field, left out when empty (as protobuf writes it)."""
    return bytes_field(number, value.encode()) if value else b""


def user_agent_fields(info: UserAgentInfo) -> bytes:
    return b"".join(
        (
            _text(UA_DEVICE_TYPE_FIELD, info.device_type),
            _text(OS_FIELD, info.os),
            _text(OS_VERSION_FIELD, info.os_version),
            _text(BROWSER_FIELD, info.browser),
            _text(BROWSER_VERSION_FIELD, info.browser_version),
            field_key(IS_BOT_FIELD, 0) + b"\x01" if info.is_bot else b"",
        )
    )


def catalog_fields(target: TargetDetails) -> bytes:
    parts = [_text(TARGET_NAME_FIELD, target.name)]
    parts += [_text(TARGET_CATEGORY_PATH_FIELD, c) for c in target.category_path if c]
    parts.append(_text(TARGET_BRAND_FIELD, target.brand))
    if target.list_price is not None:
        parts.append(field_key(TARGET_LIST_PRICE_FIELD, 0) + varint(target.list_price))
    parts.append(_text(TARGET_LIST_CURRENCY_FIELD, target.currency))
    for name, value in target.attributes.items():
        entry = _text(1, name) + _text(2, value)
        parts.append(bytes_field(TARGET_CATALOG_ATTRIBUTES_FIELD, entry))
    return b"".join(parts)


class Enricher:
    """Per-batch enrichment with bounded caches. `catalog` and `identity` None: only user agents."""

    def __init__(
        self,
        catalog: Catalog | None,
        identity: IdentityStore | None,
        *,
        cache_size: int = 100_000,
        ttl_s: float = 60.0,
        timeout_s: float = 0.25,
        clock: Any = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.identity = identity
        self.timeout_s = timeout_s
        self.stats = EnrichmentStats()
        self._clock = clock
        # Parsed user agents do not go stale: they leave only when the cache is full.
        self._user_agents: ExpiringCache[str, bytes] = ExpiringCache(cache_size, math.inf)
        self._targets: ExpiringCache[tuple[str, str, str], bytes | None] = ExpiringCache(cache_size, ttl_s)
        """(tenant, type, id) -> row fields; None when the catalogue has no such target."""
        self._links: ExpiringCache[tuple[str, str, str], str] = ExpiringCache(cache_size, ttl_s)
        """(tenant, kind, key) -> user id; '' when no link is known."""
        self._pending_links: dict[tuple[str, str, str], str] = {}
        self._catalogued: ExpiringCache[str, bool] = ExpiringCache(cache_size, ttl_s)
        """tenant -> whether its catalogue holds any entry."""
        self._failures = 0
        self._resume_at = 0.0

    def forget_catalog(self, tenant: str | None = None) -> int:
        """Drop what the caches know of `tenant`'s catalogue (every tenant's when None): whether it has
        one, and its targets, found or not. The next batch asks PostgreSQL again, so that an import is
        seen at once rather than after `enrichment_cache_ttl_s`. Returns how many entries were dropped."""
        if tenant is None:
            dropped = len(self._catalogued) + len(self._targets)
            self._catalogued.entries.clear()
            self._targets.entries.clear()
            return dropped
        dropped = int(self._catalogued.entries.pop(tenant, None) is not None)
        targets = self._targets.entries
        stale = [key for key in targets if key[0] == tenant]
        for key in stale:
            del targets[key]
        return dropped + len(stale)

    @property
    def pending_links(self) -> int:
        """Identity links seen and not yet written to PostgreSQL."""
        return len(self._pending_links)

    # -- PostgreSQL, guarded ------------------------------------------------------------------------

    def _postgres_open(self) -> bool:
        return bool(self._clock() >= self._resume_at)

    def _postgres_failed(self, what: str, error: BaseException) -> None:
        self._failures += 1
        # At least half the ceiling (equal jitter): the pause is there to leave PostgreSQL alone for a
        # while, which a draw near 0 would not do; the other half keeps collectors out of step.
        pause = backoff_delay(self._failures, first_s=_FIRST_BACKOFF_S, max_s=_MAX_BACKOFF_S, jitter=0.5)
        self._resume_at = self._clock() + pause
        log.warning(
            "enrichment lookup failed; storing without it",
            extra={"lookup": what, "pause_s": pause, "error": str(error) or type(error).__name__},
        )

    def _postgres_ok(self) -> None:
        self._failures = 0

    # -- the batch ------------------------------------------------------------------------------------

    async def enrich(self, tenant: str, keys: list[EnrichmentKeys]) -> list[bytes]:
        """Row fields for each activity of `keys` (in batch order), to append after the batch's."""
        user_agents = self._user_agent_fields({k[5] for k in keys})
        ua_values, _ = lookups.lookup(user_agents, keys, (5,), None, None, b"")
        if self.catalog is None and self.identity is None:
            return lookups.join((ua_values,), (None,))
        now = self._clock()
        # Per activity: the target's row fields, None (not in the catalogue) or _MISSING (not cached:
        # asked of PostgreSQL below, by distinct target). A tenant known to have no catalogue
        # (_catalog_lookup) has nothing to look up.
        target_values: list[Any] = [None] * len(keys)
        target_misses: dict[Any, list[int]] = {}
        if self.catalog is not None and self._catalogued.get(tenant, now, None) is not False:
            target_values, target_misses = lookups.lookup(
                self._targets.entries, keys, (0, 1), tenant, now, _MISSING
            )
        anonymous, sessions, link_misses = self._cached_links(tenant, keys, now)
        if target_misses or link_misses:
            await self._lookups(
                tenant, keys, now, target_values, target_misses, anonymous, sessions, link_misses
            )
        if self.catalog is not None:
            self._count_targets(target_values)
        resolved = self._stitch(tenant, keys, anonymous, sessions, now)
        if self.identity is not None and self._pending_links:
            await self._record_links()
        user_fields = {user: _text(RESOLVED_USER_ID_FIELD, user) for user in set(resolved)}
        return lookups.join((ua_values, target_values, resolved), (None, None, user_fields))

    def _count_targets(self, values: list[Any]) -> None:
        """Activities per outcome: found (row fields), not in the catalogue (None), not looked up."""
        unknown = values.count(None)
        gap = values.count(_MISSING)
        stats = self.stats.activities
        stats[(CATALOG, "enriched")] += len(values) - unknown - gap
        stats[(CATALOG, "unknown")] += unknown
        stats[(CATALOG, "gap")] += gap

    def _user_agent_fields(self, distinct: set[str]) -> dict[str, bytes]:
        cache = self._user_agents
        out: dict[str, bytes] = {}
        for ua in distinct:
            fields = cache.get(ua, 0.0, None)
            if fields is None:
                try:
                    fields = user_agent_fields(parse_user_agent(ua))
                except Exception as error:  # a parser bug must not cost the batch
                    log.warning("user agent not parsed", extra={"error": repr(error)})
                    fields = b""
                self.stats.user_agents_parsed += 1
                cache.set(ua, fields, 0.0)
            out[ua] = fields
        return out

    def _cached_links(
        self, tenant: str, keys: list[EnrichmentKeys], now: float
    ) -> tuple[dict[str, str], dict[str, str], list[LinkKey]]:
        """The cached links of the ids of the activities without a user id (those that may resolve
        through one), by anonymous id and by session id, and the ids not cached."""
        anonymous: dict[str, str] = {}
        sessions: dict[str, str] = {}
        misses: list[LinkKey] = []
        if self.identity is None:
            return anonymous, sessions, misses
        for kind, known, wanted in (
            (ANONYMOUS, anonymous, {k[3] for k in keys if k[3] and not k[2]}),
            (SESSION, sessions, {k[4] for k in keys if k[4] and not k[2]}),
        ):
            ids = [(kind, key) for key in wanted]
            users, absent = lookups.lookup(self._links.entries, ids, (0, 1), tenant, now, None)
            known.update((link[1], user) for link, user in zip(ids, users, strict=True) if user)
            misses.extend((kind, key) for _, kind, key in absent)
        return anonymous, sessions, misses

    async def _lookups(
        self,
        tenant: str,
        keys: list[EnrichmentKeys],
        now: float,
        target_values: list[Any],
        target_misses: dict[Any, list[int]],
        anonymous: dict[str, str],
        sessions: dict[str, str],
        link_misses: list[LinkKey],
    ) -> None:
        """Ask PostgreSQL for what the caches did not hold: fill in the targets' row fields (by
        position) and the links, and cache the answers."""
        wanted_targets = [(key[1], key[2]) for key in target_misses]
        found_targets, found_links = await self._ask_postgres(tenant, wanted_targets, link_misses)
        if found_targets is not None:
            for key, positions in target_misses.items():
                info = found_targets.get((key[1], key[2]))
                fields = catalog_fields(info) if info is not None else None
                self._targets.set(key, fields, now)
                for position in positions:
                    target_values[position] = fields
        if found_links is not None:
            for link in link_misses:
                user = found_links.get(link, "")
                self._links.set((tenant, *link), user, now)
                if user:
                    (anonymous if link[0] == ANONYMOUS else sessions)[link[1]] = user
        elif link_misses:
            missed = set(link_misses)
            self.stats.activities[(IDENTITY, "gap")] += sum(
                1 for k in keys if any(link in missed for link in _unresolved_keys(k))
            )

    async def _ask_postgres(
        self, tenant: str, target_misses: list[tuple[str, str]], link_misses: list[LinkKey]
    ) -> tuple[Mapping[tuple[str, str], TargetDetails] | None, dict[LinkKey, str] | None]:
        """Both lookups at once, within the timeout; None for a lookup that failed or was skipped."""
        if not self._postgres_open():
            if target_misses:
                self.stats.lookups[(CATALOG, "skipped")] += 1
            if link_misses:
                self.stats.lookups[(IDENTITY, "skipped")] += 1
            return None, None
        jobs: dict[str, Any] = {}
        if target_misses and self.catalog is not None:
            jobs[CATALOG] = self._catalog_lookup(self.catalog, tenant, target_misses)
        if link_misses and self.identity is not None:
            jobs[IDENTITY] = self.identity.lookup(tenant, link_misses)
        results: dict[str, Any] = {}
        try:
            async with asyncio.timeout(self.timeout_s):
                answers = await asyncio.gather(*jobs.values(), return_exceptions=True)
        except TimeoutError as timeout:
            for kind in jobs:
                self.stats.lookups[(kind, "error")] += 1
            self._postgres_failed("+".join(jobs), timeout)
            return None, None
        failure: BaseException | None = None
        for kind, answer in zip(jobs, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, (*POSTGRES_ERRORS, OSError)):
                    raise answer
                self.stats.lookups[(kind, "error")] += 1
                failure = answer
            else:
                self.stats.lookups[(kind, "ok")] += 1
                results[kind] = answer
        if failure is not None:
            self._postgres_failed("+".join(jobs), failure)
        else:
            self._postgres_ok()
        return results.get(CATALOG), results.get(IDENTITY)

    async def _catalog_lookup(
        self, catalog: Catalog, tenant: str, keys: list[tuple[str, str]]
    ) -> Mapping[tuple[str, str], TargetDetails]:
        """The catalogue's entries for `keys`, first asking whether the tenant has a catalogue at all
        when that is not cached.

        A tenant that never imported one would otherwise pay a round trip to PostgreSQL for every
        group of requests (its targets are new to the cache nearly every time), for no answer; once
        known to have none, `enrich` does not even look its targets up in the cache. Whether it has one
        is asked again after `enrichment_cache_ttl_s`, as cached targets are: an import shows within
        that time either way."""
        catalogued = self._catalogued.get(tenant, self._clock(), None)
        if catalogued is None:
            catalogued = await catalog.has_entries(tenant)
            self._catalogued.set(tenant, catalogued, self._clock())
        if not catalogued:
            return {}
        return await catalog.lookup(tenant, keys)

    def _stitch(
        self,
        tenant: str,
        keys: list[EnrichmentKeys],
        anonymous: dict[str, str],
        sessions: dict[str, str],
        now: float,
    ) -> list[str]:
        """The resolved user of each activity, in order; records the links the batch shows."""
        resolved, changes, enriched, unknown = lookups.stitch(keys, anonymous, sessions, ANONYMOUS, SESSION)
        if self.identity is None:
            return resolved
        cache = self._links
        cached, _ = lookups.lookup(cache.entries, changes, (0, 1), tenant, now, None)
        for (kind, key, user), known in zip(changes, cached, strict=True):
            if known != user:
                cache.set((tenant, kind, key), user, now)
                self._pending_links[(tenant, kind, key)] = user
        stats = self.stats.activities
        if enriched:
            stats[(IDENTITY, "enriched")] += enriched
        if unknown:
            stats[(IDENTITY, "unknown")] += unknown
        return resolved

    async def _record_links(self) -> None:
        assert self.identity is not None
        if not self._postgres_open():
            self._bound_pending()
            return
        pending, self._pending_links = self._pending_links, {}
        by_tenant: dict[str, list[tuple[str, str, str]]] = {}
        for (tenant, kind, key), user in pending.items():
            by_tenant.setdefault(tenant, []).append((kind, key, user))
        try:
            async with asyncio.timeout(self.timeout_s):
                for tenant, links in by_tenant.items():
                    self.stats.links_recorded += await self.identity.record(tenant, links)
        except _LOOKUP_ERRORS as error:
            self.stats.link_write_failures += 1
            self._postgres_failed("identity links", error)
            # Links seen meanwhile are newer than the ones that failed.
            self._pending_links = {**pending, **self._pending_links}
            self._bound_pending()
            return
        self._postgres_ok()

    def _bound_pending(self) -> None:
        excess = len(self._pending_links) - MAX_PENDING_LINKS
        if excess > 0:
            for stale in list(self._pending_links)[:excess]:
                del self._pending_links[stale]
            self.stats.links_dropped += excess
            log.error("identity links dropped: PostgreSQL has not taken them", extra={"links": excess})


def activity_keys(a: pb.Activity) -> EnrichmentKeys:
    """What enrichment looks up, from a parsed activity (the fast path reads the same from bytes)."""
    target, user = a.target, a.user
    return (target.type, target.id, user.user_id, user.anonymous_id, user.session_id, a.metadata.user_agent)


def _unresolved_keys(k: EnrichmentKeys) -> list[LinkKey]:
    if k[2]:
        return []
    return [link for link in ((ANONYMOUS, k[3]), (SESSION, k[4])) if link[1]]
