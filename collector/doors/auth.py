"""Authentication: every RPC carries an API key (`authorization: Bearer <key>` metadata), and the key
decides the tenant.

The check runs before the handler: a missing or unknown key is answered UNAUTHENTICATED, a revoked key,
a disabled tenant or a key whose scope does not allow the method (`METHOD_SCOPES`) PERMISSION_DENIED,
and the messages never repeat the key. The tenant of an accepted call is put in `TENANT` (a context
variable), where the service reads it for the rows; the payload has no say in it.

Decisions are cached (`auth_cache_size` entries, least recently used out first) for
`auth_cache_ttl_s`, keyed by the key's digest, so a key costs one PostgreSQL lookup per TTL per
collector, and a revocation or a disabled tenant takes effect on every collector within the TTL.
Concurrent calls with a key not in the cache share one lookup. A stream's key is checked again for
each batch it sends, through the same cache, so that revocation also ends long-lived streams.

When PostgreSQL cannot answer (down, slow past `LOOKUP_TIMEOUT_S`), a key accepted before keeps being
accepted (counted as `stale`): ingestion of tenants already seen goes on. A key the collector has not
seen cannot be decided: UNAVAILABLE, with a retry delay.

Every check ends in one of `OUTCOMES`, counted in `AuthStats.outcomes` where it is decided (one dict
update per call); `/metrics` reads them at scrape time (`activity_collector_auth_checks_total`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from collector.doors.handlers import WrappingHandler
from collector.doors.trailers import status_trailer
from collector.tenants import KeyCheck, TenantStore, key_digest, scope_allows
from core.cache import ExpiringCache
from workers.storage.postgres import POSTGRES_ERRORS

log = logging.getLogger(__name__)

TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)
"""The tenant of the call being handled, set once its key is accepted; None when auth is off."""

LOOKUP_TIMEOUT_S = 2.0
# End-of-stream marker returned by ServicerContext.read(); missing from the type stubs.
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009


class AuthError(Exception):
    """The call is refused; `code` is the gRPC status, `retry_delay_s` set when it may pass."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_delay_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_delay_s = retry_delay_s


ACCEPTED = "accepted"
STALE = "stale"
UNAUTHENTICATED = "unauthenticated"
PERMISSION_DENIED = "permission_denied"
UNAVAILABLE = "unavailable"
OUTCOMES = (ACCEPTED, STALE, UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE)
"""What a check ends in, exactly one per check: accepted; stale (accepted on a past decision because
PostgreSQL could not be asked); unauthenticated (a missing or unknown key); permission_denied (a
revoked key, a disabled tenant); unavailable (PostgreSQL could not be asked, and the key was not
accepted before)."""


@dataclass
class AuthStats:
    """Counters since start, in calls (and stream batches)."""

    checks: int = 0
    cache_hits: int = 0
    lookups: int = 0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Checks by (outcome, tenant): the key's tenant where it has one (accepted, stale,
    permission_denied), '' where it has none (missing, unknown, not decided), so that made-up keys add
    no tenant."""

    def count(self, outcome: str) -> int:
        """Checks that ended in `outcome`, every tenant's."""
        return sum(n for (o, _), n in self.outcomes.items() if o == outcome)

    @property
    def accepted(self) -> int:
        return self.count(ACCEPTED)

    @property
    def unauthenticated(self) -> int:
        return self.count(UNAUTHENTICATED)

    @property
    def permission_denied(self) -> int:
        return self.count(PERMISSION_DENIED)

    @property
    def unavailable(self) -> int:
        return self.count(UNAVAILABLE)

    @property
    def stale(self) -> int:
        """Keys accepted on a past decision because PostgreSQL could not be asked."""
        return self.count(STALE)


def bearer_key(metadata: Iterable[Any] | None) -> str | None:
    """The key of an `authorization: Bearer <key>` entry, None when there is none."""
    for item in metadata or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if str(key).lower() != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        scheme, _, credentials = text.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


class Authenticator:
    """Decides API keys, with a bounded cache whose entries live `ttl_s` seconds."""

    def __init__(
        self,
        tenants: TenantStore,
        *,
        ttl_s: float,
        max_entries: int,
        retry_delay_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tenants = tenants
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.retry_delay_s = retry_delay_s
        self.stats = AuthStats()
        self._clock = clock
        self._cache: ExpiringCache[bytes, KeyCheck] = ExpiringCache(max_entries, ttl_s)
        self._lookups: dict[bytes, asyncio.Future[KeyCheck]] = {}

    async def tenant_for(self, key: str | None, scope: str) -> str:
        """The tenant of `key` when its scope allows a call that needs `scope`, or AuthError: a key of
        another scope is PERMISSION_DENIED, naming the scope the call needs."""
        tenant = await self.tenant_of(key)
        entry = self._cache.peek(key_digest(key or ""))
        held = entry[1].scope if entry is not None else "write"
        if not scope_allows(held, scope):
            # One outcome per check: this one is refused, not accepted.
            self.stats.outcomes[(ACCEPTED, tenant)] -= 1
            self.stats.outcomes[(PERMISSION_DENIED, tenant)] += 1
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this call needs an API key of scope {scope}; the key's scope is {held}",
            )
        return tenant

    async def tenant_of(self, key: str | None) -> str:
        """The tenant of `key`, or AuthError."""
        self.stats.checks += 1
        if key is None:
            self.stats.outcomes[(UNAUTHENTICATED, "")] += 1
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing API key: send the metadata `authorization: Bearer <key>`",
            )
        digest = key_digest(key)
        cached = self._cache.get(digest, self._clock(), None)
        if cached is not None:
            self.stats.cache_hits += 1
            return self._decide(cached)
        try:
            check = await self._lookup(digest, key)
        except POSTGRES_ERRORS as error:
            # PostgreSQL does not answer: a key accepted before keeps working on that decision.
            past = self._cache.peek(digest)
            if past is not None and past[1].outcome == "ok" and past[1].tenant is not None:
                self.stats.outcomes[(STALE, past[1].tenant)] += 1
                return past[1].tenant
            self.stats.outcomes[(UNAVAILABLE, "")] += 1
            log.warning("API key check failed", extra={"error": str(error) or type(error).__name__})
            raise AuthError(
                grpc.StatusCode.UNAVAILABLE,
                "the API key cannot be checked now (PostgreSQL does not answer)",
                self.retry_delay_s,
            ) from None
        self._remember(digest, check)
        return self._decide(check)

    async def _lookup(self, digest: bytes, key: str) -> KeyCheck:
        """One lookup per key at a time: concurrent callers wait for the same one."""
        pending = self._lookups.get(digest)
        if pending is None:
            self.stats.lookups += 1
            pending = asyncio.ensure_future(asyncio.wait_for(self.tenants.check_key(key), LOOKUP_TIMEOUT_S))
            self._lookups[digest] = pending

            def done(future: asyncio.Future[KeyCheck]) -> None:
                self._lookups.pop(digest, None)
                if not future.cancelled():
                    future.exception()  # retrieved here too, in case every caller went away

            pending.add_done_callback(done)
        # Shielded: a caller that goes away does not cancel the lookup the others wait for.
        return await asyncio.shield(pending)

    def _remember(self, digest: bytes, check: KeyCheck) -> None:
        self._cache.set(digest, check, self._clock())

    def _decide(self, check: KeyCheck) -> str:
        if check.outcome == "ok" and check.tenant is not None:
            self.stats.outcomes[(ACCEPTED, check.tenant)] += 1
            return check.tenant
        if check.outcome == "revoked":
            self.stats.outcomes[(PERMISSION_DENIED, check.tenant or "")] += 1
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, "the API key is revoked")
        if check.outcome == "disabled":
            self.stats.outcomes[(PERMISSION_DENIED, check.tenant or "")] += 1
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, f"tenant {check.tenant} is disabled")
        self.stats.outcomes[(UNAUTHENTICATED, "")] += 1
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: AuthError) -> None:
    message = str(error)
    trailer = status_trailer(error.code.value[0], message, error.retry_delay_s)
    await context.abort(error.code, message, trailing_metadata=trailer)


class _RecheckingContext:
    """A stream's context whose `read()` checks the stream's key again before handing over a batch."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], auth: Authenticator, key: str) -> None:
        self._context = context
        self._auth = auth
        self._key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not _EOF:
            try:
                await self._auth.tenant_of(self._key)
            except AuthError as error:
                await _abort(self._context, error)
        return message


Unary = Callable[[Any, Any], Awaitable[Any]]
Stream = Callable[[Any, Any], Awaitable[None]]


METHOD_SCOPES = {"/activity.v1.PrivacyService/": "admin", "/activity.v1.ProfileService/": "read"}
"""The scope a call needs, by method prefix; every other call needs `write`."""


def method_scope(method: str) -> str:
    return next((scope for prefix, scope in METHOD_SCOPES.items() if method.startswith(prefix)), "write")


class AuthenticatingHandler(WrappingHandler):
    """Wraps the service's handler: every call is authenticated before it reaches the service, and its
    key's scope checked against the scope the method needs (`METHOD_SCOPES`)."""

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], auth: Authenticator) -> None:
        super().__init__(inner)
        self._auth = auth
        self._scope = "write"

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        # `_unary` and `_stream` are called from here, at once, for this call's method.
        self._scope = method_scope(details.method)
        return super().service(details)

    async def _tenant(
        self, context: grpc.aio.ServicerContext[Any, Any], scope: str = "write"
    ) -> tuple[str, str]:
        key = bearer_key(context.invocation_metadata())
        try:
            return await self._auth.tenant_for(key, scope), key or ""
        except AuthError as error:
            await _abort(context, error)
            raise AssertionError("unreachable: abort raises") from None

    def _unary(self, behaviour: Unary) -> Unary:
        scope = self._scope

        async def authenticated(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            tenant, _ = await self._tenant(context, scope)
            token = TENANT.set(tenant)
            try:
                return await behaviour(request, context)
            finally:
                TENANT.reset(token)

        return authenticated

    def _stream(self, behaviour: Stream) -> Stream:
        scope = self._scope

        async def authenticated(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            tenant, key = await self._tenant(context, scope)
            token = TENANT.set(tenant)
            try:
                await behaviour(requests, _RecheckingContext(context, self._auth, key))
            finally:
                TENANT.reset(token)

        return authenticated
