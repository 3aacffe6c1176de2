"""Enrichment of a batch: user agent, catalogue and identity, per distinct value.

For each activity, enrichment adds a few row fields after the batch's (see `workers.schema`): what its
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
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cachetools import LRUCache

from collector.fastpath import EnrichmentKeys
from collector.postgres import POSTGRES_ERRORS
from collector.proto.activity.v1 import activity_pb2 as pb
from workers.cache import ExpiringCache
from workers.enrich import bytes_field, field_key, varint
from workers.identity import ANONYMOUS, SESSION, IdentityStore, LinkKey
from workers.schema import (
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
from workers.useragent import UserAgentInfo, parse_user_agent

log = logging.getLogger(__name__)

USER_AGENT = "user_agent"
CATALOG = "catalog"
IDENTITY = "identity"

MAX_PENDING_LINKS = 10_000
"""Links kept for a later write while PostgreSQL cannot take them; past it, the oldest are dropped
(counted)."""
_MAX_BACKOFF_S = 30.0
_LOOKUP_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, OSError, *POSTGRES_ERRORS)
_MISSING = object()


class TargetDetails(Protocol):
    """What the catalogue says about one target (`workers.catalog.TargetInfo`)."""

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
        self._user_agents: LRUCache[str, bytes] = LRUCache(cache_size)
        self._targets: ExpiringCache[tuple[str, str, str], bytes | None] = ExpiringCache(cache_size, ttl_s)
        """(tenant, type, id) -> row fields; None when the catalogue has no such target."""
        self._links: ExpiringCache[tuple[str, str, str], str] = ExpiringCache(cache_size, ttl_s)
        """(tenant, kind, key) -> user id; '' when no link is known."""
        self._pending_links: dict[tuple[str, str, str], str] = {}
        self._failures = 0
        self._resume_at = 0.0

    @property
    def pending_links(self) -> int:
        """Identity links seen and not yet written to PostgreSQL."""
        return len(self._pending_links)

    # -- PostgreSQL, guarded ------------------------------------------------------------------------

    def _postgres_open(self) -> bool:
        return bool(self._clock() >= self._resume_at)

    def _postgres_failed(self, what: str, error: BaseException) -> None:
        self._failures += 1
        pause = min(_MAX_BACKOFF_S, 0.5 * 2 ** (self._failures - 1))
        self._resume_at = self._clock() + pause
        log.warning(
            "enrichment lookup failed; storing without it",
            extra={"lookup": what, "pause_s": pause, "error": str(error) or type(error).__name__},
        )

    def _postgres_ok(self) -> None:
        self._failures = 0

    # -- the batch ------------------------------------------------------------------------------------

    async def enrich(self, tenant: str, keys: Sequence[EnrichmentKeys]) -> list[bytes]:
        """Row fields for each activity of `keys` (in batch order), to append after the batch's."""
        ua_fields = self._user_agent_fields({k[5] for k in keys})
        if self.catalog is None and self.identity is None:
            return [ua_fields[k[5]] for k in keys]
        now = self._clock()
        # Activities per target: the distinct targets to look up, and the counts of the outcomes.
        target_counts = Counter((k[0], k[1]) for k in keys) if self.catalog is not None else Counter()
        targets, links, gap_targets = await self._lookups(tenant, keys, target_counts, now)
        if self.catalog is not None:
            self._count_targets(target_counts, targets, gap_targets)
        resolved = self._stitch(tenant, keys, links, now)
        if self.identity is not None and self._pending_links:
            await self._record_links()
        encoded: dict[str, bytes] = {"": b""}
        out: list[bytes] = []
        append = out.append
        for k, user in zip(keys, resolved, strict=True):
            user_fields = encoded.get(user)
            if user_fields is None:
                user_fields = encoded[user] = _text(RESOLVED_USER_ID_FIELD, user)
            append(ua_fields[k[5]] + targets.get((k[0], k[1]), b"") + user_fields)
        return out

    def _count_targets(
        self,
        counts: Counter[tuple[str, str]],
        found: Mapping[tuple[str, str], bytes],
        gaps: set[tuple[str, str]],
    ) -> None:
        stats = self.stats.activities
        for target, n in counts.items():
            outcome = "enriched" if target in found else "gap" if target in gaps else "unknown"
            stats[(CATALOG, outcome)] += n

    def _user_agent_fields(self, distinct: set[str]) -> dict[str, bytes]:
        cache = self._user_agents
        out: dict[str, bytes] = {}
        for ua in distinct:
            fields = cache.get(ua)
            if fields is None:
                try:
                    fields = user_agent_fields(parse_user_agent(ua))
                except Exception as error:  # a parser bug must not cost the batch
                    log.warning("user agent not parsed", extra={"error": repr(error)})
                    fields = b""
                self.stats.user_agents_parsed += 1
                cache[ua] = fields
            out[ua] = fields
        return out

    async def _lookups(
        self,
        tenant: str,
        keys: Sequence[EnrichmentKeys],
        distinct_targets: Iterable[tuple[str, str]],
        now: float,
    ) -> tuple[dict[tuple[str, str], bytes], dict[LinkKey, str], set[tuple[str, str]]]:
        """Catalogue row fields by (type, id) of `distinct_targets`, the known links of the batch's
        unresolved ids, and the targets that could not be looked up."""
        targets: dict[tuple[str, str], bytes] = {}
        target_misses: list[tuple[str, str]] = []
        gap_targets: set[tuple[str, str]] = set()
        links: dict[LinkKey, str] = {}
        link_misses: list[LinkKey] = []
        if self.catalog is not None:
            cache = self._targets
            for target in distinct_targets:
                cached = cache.get((tenant, *target), now, _MISSING)
                if cached is _MISSING:
                    target_misses.append(target)
                elif isinstance(cached, bytes):
                    targets[target] = cached
        if self.identity is not None:
            # The ids of the activities without a user id: those that may resolve through a link.
            wanted = {(ANONYMOUS, k[3]) for k in keys if k[3] and not k[2]}
            wanted |= {(SESSION, k[4]) for k in keys if k[4] and not k[2]}
            cache_links = self._links
            for kind, key in wanted:
                user = cache_links.get((tenant, kind, key), now, None)
                if user is None:
                    link_misses.append((kind, key))
                elif user:
                    links[(kind, key)] = user
        if not target_misses and not link_misses:
            return targets, links, gap_targets
        found_targets, found_links = await self._ask_postgres(tenant, target_misses, link_misses)
        if found_targets is not None:
            for target in target_misses:
                info = found_targets.get(target)
                fields = catalog_fields(info) if info is not None else None
                self._targets.set((tenant, *target), fields, now)
                if fields is not None:
                    targets[target] = fields
        else:
            gap_targets = set(target_misses)
        if found_links is not None:
            for link in link_misses:
                user = found_links.get(link, "")
                self._links.set((tenant, *link), user, now)
                if user:
                    links[link] = user
        else:
            missed = set(link_misses)
            self.stats.activities[(IDENTITY, "gap")] += sum(
                1 for k in keys if any(link in missed for link in _unresolved_keys(k))
            )
        return targets, links, gap_targets

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
            jobs[CATALOG] = self.catalog.lookup(tenant, target_misses)
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

    def _stitch(
        self, tenant: str, keys: Sequence[EnrichmentKeys], links: dict[LinkKey, str], now: float
    ) -> list[str]:
        """The resolved user of each activity, in order; records the links the batch shows."""
        resolved: list[str] = []
        append = resolved.append
        cache = self._links
        identity = self.identity is not None
        stats = self.stats.activities
        enriched = unknown = 0
        for k in keys:
            user = k[2]
            if user:
                append(user)
                if identity:
                    for kind, key in ((ANONYMOUS, k[3]), (SESSION, k[4])):
                        if key and links.get((kind, key)) != user:
                            links[(kind, key)] = user
                            if cache.get((tenant, kind, key), now, None) != user:
                                cache.set((tenant, kind, key), user, now)
                                self._pending_links[(tenant, kind, key)] = user
                continue
            linked = ""
            if k[3]:
                linked = links.get((ANONYMOUS, k[3]), "")
            if not linked and k[4]:
                linked = links.get((SESSION, k[4]), "")
            if identity and (k[3] or k[4]):
                if linked:
                    enriched += 1
                else:
                    unknown += 1
            append(linked)
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
