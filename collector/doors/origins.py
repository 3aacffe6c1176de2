"""The origins whose pages may send with an API key through the Segment door (`api_keys.allowed_origins`).

A write key sits in every page of a shop, for anyone to copy; a key given allowed origins
(`keys create --allowed-origin https://shop.example`) is refused for browser calls from any other
origin. Calls without an `Origin` header (server SDKs) are not concerned. The lists are read once per
key per `auth_cache_ttl_s`, like the keys themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg

from collector.tenants import key_digest, key_id_of
from core.cache import ExpiringCache
from workers.storage.postgres import POSTGRES_ERRORS


def normalize_origin(value: str) -> str | None:
    """`https://shop.example` as browsers send it in `Origin` (no path, no trailing '/'), or None."""
    origin = value.strip().rstrip("/").lower()
    scheme, sep, host = origin.partition("://")
    if not sep or scheme not in ("http", "https") or not host or "/" in host:
        return None
    return origin


class KeyOrigins:
    """Reads the allowed origins of keys (written with the key: `TenantStore.create_key`), with a cache
    of what was read."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        ttl_s: float = 60.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self._clock = clock
        self._cache: ExpiringCache[bytes, frozenset[str]] = ExpiringCache(max_entries, ttl_s)

    async def of(self, key: str) -> frozenset[str]:
        """The allowed origins of an accepted `key` (empty: any). Raises asyncpg and network errors
        when PostgreSQL cannot say and the answer is not cached."""
        digest = key_digest(key)
        now = self._clock()
        cached = self._cache.get(digest, now, None)
        if cached is not None:
            return cached
        key_id = key_id_of(key)
        try:
            found = await self.pool.fetchval("SELECT allowed_origins FROM api_keys WHERE key_id = $1", key_id)
        except POSTGRES_ERRORS:
            past = self._cache.peek(digest)
            if past is not None:
                return past[1]
            raise
        origins = frozenset(found or ())
        self._cache.set(digest, origins, now)
        return origins
