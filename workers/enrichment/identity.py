"""Identity links in PostgreSQL: which user id an anonymous or session id belongs to.

A link is recorded when an activity carries a user id together with an anonymous id or a session id;
the latest user id seen wins. Enrichment reads the links of the anonymous and session ids of activities
that carry no user id, one query per batch (see `workers.enrichment.enricher`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import asyncpg

ANONYMOUS = "anonymous"
SESSION = "session"

LinkKey = tuple[str, str]
"""(kind, key): kind is ANONYMOUS or SESSION, key the client's anonymous or session id."""


class IdentityStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def lookup(self, tenant: str, keys: Sequence[LinkKey]) -> dict[LinkKey, str]:
        """The user ids linked to `keys` in one query; keys without a link are absent."""
        if not keys:
            return {}
        rows = await self.pool.fetch(
            "SELECT l.kind, l.key, l.user_id FROM identity_links l"
            " JOIN unnest($2::text[], $3::text[]) AS k(kind, key) ON l.kind = k.kind AND l.key = k.key"
            " WHERE l.tenant_id = $1",
            tenant,
            [kind for kind, _ in keys],
            [key for _, key in keys],
        )
        return {(r["kind"], r["key"]): r["user_id"] for r in rows}

    async def record(self, tenant: str, links: Iterable[tuple[str, str, str]]) -> int:
        """Upsert (kind, key, user_id) links in one statement; the last of a key wins. Returns how many."""
        latest: dict[LinkKey, str] = {(kind, key): user for kind, key, user in links}
        if not latest:
            return 0
        await self.pool.execute(
            "INSERT INTO identity_links (tenant_id, kind, key, user_id)"
            " SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[])"
            " ON CONFLICT (tenant_id, kind, key) DO UPDATE"
            " SET user_id = EXCLUDED.user_id, last_seen = now()",
            tenant,
            [kind for kind, _ in latest],
            [key for _, key in latest],
            list(latest.values()),
        )
        return len(latest)
