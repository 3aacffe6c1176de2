"""PostgreSQL: migrations on the server and on the embedded PostgreSQL, and the embedded server's life."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import psutil
import pytest
from helpers import wait_for

from collector.config import ConfigError, load_settings
from workers.storage.postgres import (
    MIGRATION_LOCK,
    MIGRATIONS_TABLE,
    Migration,
    Postgres,
    PostgresError,
    apply_migrations,
    latest_version,
)

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[3]

# Neither is idempotent: applied twice, or by two collectors at once, they fail.
SLOW = (
    Migration(1, "first", "CREATE TABLE first_table (x integer); SELECT pg_sleep(0.3)"),
    Migration(2, "second", "CREATE TABLE second_table (y text)"),
)


async def versions(conn: asyncpg.Connection) -> list[int]:
    return [
        r["version"] for r in await conn.fetch(f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version")
    ]


async def test_migrations_are_applied_once(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await apply_migrations(conn, SLOW) == [1, 2]
        assert await apply_migrations(conn, SLOW) == []
        assert await versions(conn) == [1, 2]
        # A later release adds a migration: only that one runs.
        later = (*SLOW, Migration(3, "third", "ALTER TABLE second_table ADD COLUMN z integer"))
        assert await apply_migrations(conn, later) == [3]
    finally:
        await conn.close()


async def test_collectors_starting_together_apply_each_migration_once(pg_dsn: str) -> None:
    first, second = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
    try:
        results = await asyncio.gather(apply_migrations(first, SLOW), apply_migrations(second, SLOW))
        assert sorted(results) == [[], [1, 2]]
        assert await versions(first) == [1, 2]
    finally:
        await first.close()
        await second.close()


async def test_a_failing_migration_leaves_nothing_behind_and_releases_the_lock(pg_dsn: str) -> None:
    broken = (SLOW[0], Migration(2, "broken", "CREATE TABLE second_table (y text); SELECT 1 / 0"))
    conn = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await apply_migrations(conn, broken)
        assert await versions(conn) == [1]
        assert await conn.fetchval("SELECT to_regclass('second_table')") is None
        other = await asyncpg.connect(pg_dsn)
        try:
            async with asyncio.timeout(5):
                assert await apply_migrations(other, SLOW) == [2]
        finally:
            await other.close()
    finally:
        await conn.close()


async def test_lifecycle_start_migrates_shutdown_is_idempotent(pg_dsn: str, tmp_path: Path) -> None:
    never_started = Postgres(pg_dsn, tmp_path)
    await never_started.shutdown()
    await never_started.shutdown()

    postgres = Postgres(pg_dsn, tmp_path)
    await postgres.start()
    assert postgres.applied == [m.version for m in postgres_migrations()]
    async with postgres.pool.acquire() as conn:
        assert (
            await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {MIGRATIONS_TABLE}")
            == latest_version()
        )
    await postgres.shutdown()
    await postgres.shutdown()
    with pytest.raises(PostgresError):
        postgres.pool  # noqa: B018
    # A second start of the same database finds everything applied.
    async with Postgres(pg_dsn, tmp_path) as again:
        assert again.applied == []


async def test_started_the_migration_lock_is_free_and_pooled_connections_stay_usable(
    pg_dsn: str, tmp_path: Path
) -> None:
    async with Postgres(pg_dsn, tmp_path, pool_size=1) as postgres:
        other = await asyncpg.connect(pg_dsn)
        try:
            # Released by the start; on the shared server, another test process's collector may hold
            # it a moment while it migrates a schema of its own.
            await wait_for(
                lambda: other.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK),
                "the migration lock free after the start",
            )
            await other.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        finally:
            await other.close()
        # A transaction left open by a user of the pool is rolled back when its connection returns.
        async with postgres.pool.acquire() as conn:
            await conn.execute("BEGIN; CREATE TEMP TABLE left_open (x integer)")
            assert conn.is_in_transaction()
        async with postgres.pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
            # Released with no reset round trip: what a session sets outside a transaction stays.
            await conn.execute("SET application_name = 'kept'")
        async with postgres.pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "kept"
        assert await postgres.pool.fetchval("SELECT 1") == 1


def postgres_migrations() -> tuple[Migration, ...]:
    from workers.storage.postgres import MIGRATIONS

    return MIGRATIONS


async def test_an_unreachable_server_fails_start_without_echoing_the_password(tmp_path: Path) -> None:
    postgres = Postgres("postgresql://collector:s3cret@127.0.0.1:1/activity", tmp_path, connect_timeout_s=2)
    with pytest.raises(PostgresError) as failed:
        await postgres.start()
    assert "127.0.0.1:1" in str(failed.value)
    assert "s3cret" not in str(failed.value)
    await postgres.shutdown()


def test_a_dsn_of_another_kind_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="postgres_dsn") as refused:
        load_settings({"postgres_dsn": "mysql://root:hunter2@db/x"}, environ={})
    assert "hunter2" not in str(refused.value)


def _postmaster_pid(pgdata: Path) -> int | None:
    path = pgdata / "postmaster.pid"
    if not path.exists():
        return None
    pid = int(path.read_text().split()[0])
    return pid if psutil.pid_exists(pid) else None


async def test_the_embedded_server_is_shared_by_processes_and_stopped_by_the_last(tmp_path: Path) -> None:
    data = tmp_path / "data"
    pgdata = data / "postgres"
    users = pgdata / ".handle_pids.json"
    async with Postgres("", data) as postgres:
        assert postgres.embedded
        pid = _postmaster_pid(pgdata)
        assert pid is not None
        # A command beside the running collector joins its server instead of starting one.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVITY_")}
        migrate = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "collector.cli", "migrate", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=env,
        )
        assert migrate.returncode == 0, migrate.stderr
        assert "up to date" in migrate.stdout
        assert _postmaster_pid(pgdata) == pid
        assert json.loads(users.read_text()) == [os.getpid()]
        # A collector of this process that stops does not stop the server under another one.
        async with Postgres("", data):
            pass
        async with postgres.pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        # A user that died without leaving (kill -9) does not keep the server running.
        dead = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
        )
        users.write_text(json.dumps([int(dead.stdout), os.getpid()]))
    assert _postmaster_pid(pgdata) is None


def _hold_embedded(pgdata: Path) -> subprocess.Popen[str]:
    """A process that starts the embedded server of `pgdata` and keeps it until killed."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from workers.storage.postgres import acquire_embedded;"
            " acquire_embedded(pathlib.Path(sys.argv[1])); print('ready', flush=True); sys.stdin.read()",
            str(pgdata),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
    return holder


async def test_a_server_left_running_by_a_killed_collector_is_reused_then_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    pgdata = data / "postgres"
    holder = _hold_embedded(pgdata)
    pid = _postmaster_pid(pgdata)
    assert pid is not None
    holder.kill()
    holder.wait()
    assert _postmaster_pid(pgdata) == pid  # orphaned, still running
    async with Postgres("", data) as postgres:
        assert _postmaster_pid(pgdata) == pid
        async with postgres.pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
    assert _postmaster_pid(pgdata) is None


def test_a_password_given_as_a_query_parameter_is_not_shown(tmp_path: Path) -> None:
    postgres = Postgres("postgresql://collector@127.0.0.1:1/activity?password=s3cret", tmp_path)
    assert "s3cret" not in postgres.describe()
    assert "password=***" in postgres.describe()
