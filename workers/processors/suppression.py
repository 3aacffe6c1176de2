"""Suppression: the `suppression` processor drops the activities of persons who were erased or opted out.

A suppressed person is kept in PostgreSQL (`suppressions`) as digests of their ids, never the ids
themselves: `id_digest(tenant, kind, id)`, a SHA-256 of the tenant, the kind of id (user, anonymous,
session) and the id. An activity whose user id, anonymous id or session id has a suppressed digest is
dropped: answered as accepted (an SDK would otherwise retry it for ever), not stored, counted per tenant
(`activity_collector_activities_suppressed_total`). Only the tenants with a suppression are looked at;
the others stay on the doors' compiled path.

The list is refreshed from PostgreSQL every `plan_refresh_s` by `SuppressionRefresher` (a change marker
first, the list only when it moved), and at once by an erasure on this collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from core.proto.activity.v1 import activity_pb2 as pb
from workers.processors.base import Verdict
from workers.storage.postgres import POSTGRES_ERRORS

log = logging.getLogger(__name__)

USER = "user"
ANONYMOUS = "anonymous"
SESSION = "session"
KINDS = (USER, ANONYMOUS, SESSION)
"""The kinds of id a person is known by: `User.user_id` (and `resolved_user_id`), `User.anonymous_id`,
`User.session_id`."""

PENDING_S = 60.0
"""How long a digest added by this collector is kept while no refresh of the list holds it."""

SUPPRESSED = "suppressed"
"""The reason of the drop verdict (the processor metrics' `reason` label)."""


def id_digest(tenant: str, kind: str, value: str) -> bytes:
    """The digest a suppression keeps for one id: the id itself is never stored."""
    return hashlib.sha256(f"{tenant}\0{kind}\0{value}".encode()).digest()


class Suppressions:
    """The `suppression` processor: each tenant's suppressed digests, replaced whole by `replace`."""

    name = "suppression"

    def __init__(self, digests: Mapping[str, Iterable[bytes]] | None = None) -> None:
        self._digests: dict[str, frozenset[bytes]] = {t: frozenset(d) for t, d in (digests or {}).items()}
        self.version = -1
        """The store's change marker these digests were read at (-1: never read)."""
        self.suppressed: Counter[str] = Counter()
        """Activities dropped, by tenant."""
        self._pending: dict[tuple[str, bytes], float] = {}
        self.changes = 0
        """How many times the digests changed: caches of persons (the read model) drop the newly
        suppressed when it moves."""

    @property
    def active(self) -> bool:
        return bool(self._digests)

    def replace(self, digests: Mapping[str, Iterable[bytes]], version: int) -> None:
        """The list as read from the store. Digests `add`ed here since are kept on top of it until a
        read holds them (a read begun before their commit does not), or for `PENDING_S` at most."""
        fresh = {t: frozenset(d) for t, d in digests.items() if d}
        now = time.monotonic()
        pending = {}
        for (tenant, digest), since in self._pending.items():
            if digest not in fresh.get(tenant, frozenset()) and now - since < PENDING_S:
                pending[(tenant, digest)] = since
                fresh[tenant] = fresh.get(tenant, frozenset()) | {digest}
        self._pending = pending
        # One assignment: a request sees the old list or the new one, never a mix.
        self._digests = fresh
        self.version = version
        self.changes += 1

    def add(self, tenant: str, digests: Iterable[bytes]) -> None:
        """Suppress more digests of `tenant` now (they are in the store already), before the next
        refresh reads them."""
        added = frozenset(digests)
        now = time.monotonic()
        self._pending.update({(tenant, digest): now for digest in added})
        merged = dict(self._digests)
        merged[tenant] = merged.get(tenant, frozenset()) | added
        self._digests = merged
        self.changes += 1

    def remove(self, tenant: str, digests: Iterable[bytes]) -> None:
        """Lift digests of `tenant` now (they are gone from the store already)."""
        lifted = frozenset(digests)
        for digest in lifted:
            self._pending.pop((tenant, digest), None)
        merged = dict(self._digests)
        left = merged.get(tenant, frozenset()) - lifted
        if left:
            merged[tenant] = left
        else:
            merged.pop(tenant, None)
        self._digests = merged
        self.changes += 1

    def covers(self, tenant: str, digests: Iterable[bytes]) -> bool:
        held = self._digests.get(tenant, frozenset())
        return all(d in held for d in digests)

    def applies(self, tenant: str) -> bool:
        return tenant in self._digests

    def holds_any(self, tenant: str, digests: Iterable[bytes]) -> bool:
        held = self._digests.get(tenant, frozenset())
        return any(d in held for d in digests)

    def process(self, tenant: str, activity: pb.Activity) -> Verdict | None:
        held = self._digests.get(tenant)
        if not held:
            return None
        user = activity.user
        for kind, value in ((USER, user.user_id), (ANONYMOUS, user.anonymous_id), (SESSION, user.session_id)):
            if value and id_digest(tenant, kind, value) in held:
                self.suppressed[tenant] += 1
                return Verdict.drop(SUPPRESSED)
        return None

    def screen(self, tenant: str, raw: bytes, spans: bytes) -> tuple[bytes, bytes] | None:
        # The ids are hashed with the tenant before the lookup: judged on parsed activities.
        return None


class SuppressionStore:
    """The `suppressions` table: one row per suppressed id digest, grouped by the person (`person`: the
    digest of the id the suppression was asked for)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def suppress(
        self,
        tenant: str,
        person: bytes,
        digests: Mapping[bytes, str],
        erasure_id: int | None = None,
        conn: Any = None,
    ) -> int:
        """Suppress `digests` (digest -> kind) as the person `person`; returns how many were new. A
        digest already suppressed keeps its first person."""
        if not digests:
            return 0
        sql = (
            "INSERT INTO suppressions (tenant_id, digest, kind, person, erasure_id)"
            " SELECT $1, d, k, $2, $3 FROM unnest($4::bytea[], $5::text[]) AS u(d, k)"
            " ON CONFLICT (tenant_id, digest) DO NOTHING"
        )
        args = (tenant, person, erasure_id, list(digests), list(digests.values()))
        result = await (conn or self.pool).execute(sql, *args)
        return int(result.split()[-1])

    async def person_of(self, tenant: str, digest: bytes) -> bytes | None:
        value = await self.pool.fetchval(
            "SELECT person FROM suppressions WHERE tenant_id = $1 AND digest = $2", tenant, digest
        )
        return None if value is None else bytes(value)

    async def state(self, tenant: str, digest: bytes) -> dict[str, object] | None:
        """Whether `digest` is suppressed: when, with how many ids, by which erasure; None when not."""
        row = await self.pool.fetchrow(
            "SELECT s.created_at, s.erasure_id, (SELECT count(*) FROM suppressions o"
            " WHERE o.tenant_id = s.tenant_id AND o.person = s.person) AS ids"
            " FROM suppressions s WHERE s.tenant_id = $1 AND s.digest = $2",
            tenant,
            digest,
        )
        if row is None:
            return None
        return {"since": row["created_at"], "erasure_id": row["erasure_id"], "ids": row["ids"]}

    async def unsuppress(self, tenant: str, digest: bytes) -> list[bytes]:
        """Lift the suppression of the person `digest` belongs to (every id of theirs); returns the
        digests lifted (none: the id was not suppressed)."""
        rows = await self.pool.fetch(
            "DELETE FROM suppressions WHERE tenant_id = $1 AND person ="
            " (SELECT person FROM suppressions WHERE tenant_id = $1 AND digest = $2) RETURNING digest",
            tenant,
            digest,
        )
        return [bytes(r["digest"]) for r in rows]

    async def marker(self) -> tuple[int, int]:
        """Moves whenever the list changes (a row added or removed)."""
        row = await self.pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(hashtext(tenant_id || encode(digest, 'hex'))), 0) AS x"
            " FROM suppressions"
        )
        assert row is not None
        return int(row["n"]), int(row["x"])

    async def all(self) -> dict[str, set[bytes]]:
        digests: dict[str, set[bytes]] = {}
        for row in await self.pool.fetch("SELECT tenant_id, digest FROM suppressions"):
            digests.setdefault(row["tenant_id"], set()).add(bytes(row["digest"]))
        return digests


class SuppressionRefresher:
    """Keeps `processor` in line with the store every `interval_s`. Lifecycle: `start()` loads the list
    (a failure is logged; polling retries) and polls; `shutdown()` is idempotent and safe without start."""

    def __init__(self, store: SuppressionStore, processor: Suppressions, interval_s: float) -> None:
        self.store = store
        self.processor = processor
        self.interval_s = interval_s
        self.failures = 0
        self._marker: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def refresh(self) -> bool:
        """Read the list if it changed; True when it did."""
        marker = await self.store.marker()
        if marker == self._marker:
            return False
        self.processor.replace(await self.store.all(), marker[0])
        self._marker = marker
        return True

    async def start(self) -> None:
        if self._task is not None or self._stopped:
            return
        try:
            await self.refresh()
        except POSTGRES_ERRORS as error:
            self.failures += 1
            log.warning("suppressions not loaded", extra={"error": repr(error)})
        self._task = asyncio.create_task(self._poll(), name="suppression-refresher")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except POSTGRES_ERRORS as error:
                self.failures += 1
                log.warning("suppressions not refreshed", extra={"error": repr(error)})

    async def shutdown(self, _left: float = 0.0) -> None:
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
