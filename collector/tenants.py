"""Tenants and their API keys, in PostgreSQL.

A tenant is one customer platform; its name is what every ClickHouse row of its activities carries in
`tenant_id`. An API key is `ak_<key id>_<secret>`: the key id (12 hexadecimal digits) is public and
names the key in lists and revocations; the secret (48 hexadecimal digits, 192 random bits) is shown
once, at creation, and only its SHA-256 digest (of the whole key) is stored. A slow hash (bcrypt,
argon2) protects guessable passwords; these keys are random, so a fast hash loses nothing and keeps the
check cheap.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from collector.config import TENANT_NAME, TENANT_NAME_RULE

KEY_PREFIX = "ak_"
_KEY = re.compile(r"^ak_([0-9a-f]{12})_([0-9a-f]{48})$")


class TenantError(Exception):
    """A tenant or key operation that cannot be done as asked; the message says why, without secrets."""


@dataclass(frozen=True)
class Tenant:
    name: str
    created_at: datetime.datetime
    disabled_at: datetime.datetime | None
    active_keys: int

    @property
    def state(self) -> str:
        return "disabled" if self.disabled_at is not None else "active"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None
    scope: str = "write"
    allowed_origins: tuple[str, ...] = ()
    """The page origins that may send with the key through the Segment door; empty: any."""

    @property
    def state(self) -> str:
        return "revoked" if self.revoked_at is not None else "active"


@dataclass(frozen=True)
class KeyCheck:
    """What a key is worth: `outcome` is "ok", "unknown", "revoked" or "disabled" (its tenant is);
    `scope` what it may do (`SCOPES`)."""

    outcome: str
    tenant: str | None = None
    scope: str = "write"


SCOPES = ("write", "read", "admin")
"""What a key may do: write (send activities), read (the read side), admin (everything, and
`activity.v1.PrivacyService`)."""


def scope_allows(held: str, needed: str) -> bool:
    """Whether a key holding the scopes `held` (comma-separated) may make a call that needs `needed`."""
    scopes = held.split(",")
    return needed in scopes or "admin" in scopes


def scope_of(scopes: Sequence[str]) -> str:
    """The stored form of a key's scopes: each once, in the order of `SCOPES`, comma-separated."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise TenantError(f"scope: one or more of {', '.join(SCOPES)}, got {', '.join(scopes) or 'none'}")
    return ",".join(s for s in SCOPES if s in scopes)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "replace")).digest()


def new_key() -> tuple[str, str]:
    """A new key and its key id."""
    key_id = secrets.token_hex(6)
    return f"{KEY_PREFIX}{key_id}_{secrets.token_hex(24)}", key_id


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key, None for anything else."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def check_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise TenantError(f"tenant name {name!r}: {TENANT_NAME_RULE}")
    return name


class TenantStore:
    """The `tenants` and `api_keys` tables, through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create_tenant(self, name: str) -> Tenant:
        check_name(name)
        row = await self.pool.fetchrow(
            "INSERT INTO tenants (name) VALUES ($1) ON CONFLICT (name) DO NOTHING"
            " RETURNING name, created_at, disabled_at",
            name,
        )
        if row is None:
            raise TenantError(f"tenant {name} exists already")
        return Tenant(row["name"], row["created_at"], row["disabled_at"], 0)

    async def list_tenants(self) -> list[Tenant]:
        rows = await self.pool.fetch(
            "SELECT t.name, t.created_at, t.disabled_at,"
            " count(k.id) FILTER (WHERE k.revoked_at IS NULL) AS active_keys"
            " FROM tenants t LEFT JOIN api_keys k ON k.tenant_id = t.id"
            " GROUP BY t.id ORDER BY t.name"
        )
        return [Tenant(r["name"], r["created_at"], r["disabled_at"], r["active_keys"]) for r in rows]

    async def set_disabled(self, name: str, disabled: bool) -> None:
        result = await self.pool.execute(
            "UPDATE tenants SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) END"
            " WHERE name = $1",
            name,
            disabled,
        )
        if result.split()[-1] == "0":
            raise TenantError(f"no tenant {name}")

    async def create_key(
        self, tenant: str, scope: str = "write", allowed_origins: Sequence[str] = ()
    ) -> tuple[str, ApiKey]:
        """A new key of `tenant`, holding `scope` (one scope, or several comma-separated) and, when
        given, the page origins allowed to send with it (normalized by the caller): the key itself (to
        show once) and what is stored of it. One statement: the key never exists without its origins."""
        scope = scope_of(scope.split(","))
        origins = sorted(set(allowed_origins))
        key, key_id = new_key()
        row = await self.pool.fetchrow(
            "INSERT INTO api_keys (key_id, tenant_id, secret_sha256, scope, allowed_origins)"
            " SELECT $2, id, $3, $4, $5 FROM tenants WHERE name = $1 RETURNING created_at",
            tenant,
            key_id,
            key_digest(key),
            scope,
            origins,
        )
        if row is None:
            raise TenantError(f"no tenant {tenant}")
        return key, ApiKey(key_id, tenant, row["created_at"], None, scope, tuple(origins))

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        rows = await self.pool.fetch(
            "SELECT k.key_id, t.name, k.created_at, k.revoked_at, k.scope, k.allowed_origins FROM api_keys k"
            " JOIN tenants t ON t.id = k.tenant_id WHERE $1::text IS NULL OR t.name = $1"
            " ORDER BY t.name, k.created_at, k.key_id",
            tenant,
        )
        return [
            ApiKey(
                r["key_id"],
                r["name"],
                r["created_at"],
                r["revoked_at"],
                r["scope"],
                tuple(r["allowed_origins"]),
            )
            for r in rows
        ]

    async def revoke_key(self, key_or_id: str) -> ApiKey:
        """Revoke a key, named by its key id or given whole. Revoking a revoked key changes nothing."""
        key_id = key_id_of(key_or_id) or key_or_id
        row = await self.pool.fetchrow(
            "UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now()) FROM tenants t"
            " WHERE k.key_id = $1 AND t.id = k.tenant_id"
            " RETURNING k.key_id, t.name, k.created_at, k.revoked_at",
            key_id,
        )
        if row is None:
            raise TenantError("no such API key")
        return ApiKey(row["key_id"], row["name"], row["created_at"], row["revoked_at"])

    async def check_key(self, key: str) -> KeyCheck:
        """What `key` is worth now. Raises asyncpg and network errors when PostgreSQL cannot say."""
        key_id = key_id_of(key)
        if key_id is None:
            return KeyCheck("unknown")
        row = await self.pool.fetchrow(
            "SELECT k.secret_sha256, k.revoked_at, k.scope, t.name, t.disabled_at FROM api_keys k"
            " JOIN tenants t ON t.id = k.tenant_id WHERE k.key_id = $1",
            key_id,
        )
        if row is None or not hmac.compare_digest(bytes(row["secret_sha256"]), key_digest(key)):
            return KeyCheck("unknown")
        if row["revoked_at"] is not None:
            return KeyCheck("revoked", row["name"])
        if row["disabled_at"] is not None:
            return KeyCheck("disabled", row["name"])
        return KeyCheck("ok", row["name"], row["scope"])

    async def bootstrap(self, name: str) -> str | None:
        """When there is no tenant at all, create tenant `name` and a key of it, and return the key (to
        show once). Collectors starting together on an empty database create one tenant and one key."""
        check_name(name)
        async with self.pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                "INSERT INTO tenants (name) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM tenants)"
                " ON CONFLICT (name) DO NOTHING RETURNING id",
                name,
            )
            if created is None:
                return None
            key, key_id = new_key()
            await conn.execute(
                "INSERT INTO api_keys (key_id, tenant_id, secret_sha256) VALUES ($1, $2, $3)",
                key_id,
                created,
                key_digest(key),
            )
            return key
