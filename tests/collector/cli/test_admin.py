"""`activity-collector dead-letters` and `migrate`, run in this process against real engines, on the
PostgreSQL server and on the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import grpc.aio
import pytest
from helpers import make_activity

from collector.cli.main import main
from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.commit.deadletters import DeadLetterStore

pytestmark = pytest.mark.timeout(90)

CONSTRAINT = "ALTER TABLE activities ADD CONSTRAINT no_forbidden CHECK action != 'forbidden'"


def count(server: CollectorServer, where: str) -> int:
    assert server.store is not None
    return int(server.store.query(f"SELECT count() FROM activities WHERE {where}", "TabSeparated"))


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The command line, in a thread of its own (it runs its own event loop)."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_replay_stores_a_dead_letter_once_even_when_run_twice(
    start_server: Any, pg_dsn: str, engine_dir: Path, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server: CollectorServer = await start_server(spool=True, postgres_dsn=pg_dsn, flush_interval_ms=5)
    assert server.store is not None and server.pipeline is not None and server.postgres is not None
    # An operator's schema change makes ClickHouse refuse some valid activities.
    server.store.command(CONSTRAINT)
    forbidden = [make_activity(n, action="forbidden") for n in range(2)]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        for activity in [make_activity(10), forbidden[0], make_activity(11), forbidden[1]]:
            answer = await stub.TrackActivity(pb.TrackActivityRequest(activity=activity))
            assert answer.accepted_count == 1
    pipeline = server.pipeline
    deadline = time.monotonic() + 20
    while pipeline.stats.dead_letters < 2 or count(server, "1") < 2:
        assert time.monotonic() < deadline, "the refused activities did not become dead letters"
        await asyncio.sleep(0.05)
    letters = await DeadLetterStore(server.postgres.pool).list()
    assert [x.count for x in letters] == [1, 1]
    assert {x.error_code for x in letters} == {469}
    # Two inserts may run at once: the letters' order need not be the activities'.
    letters.sort(key=lambda x: forbidden[1].id.encode() in x.rows)
    assert forbidden[0].id.encode() in letters[0].rows and forbidden[1].id.encode() in letters[1].rows
    first, second = (str(x.id) for x in letters)

    flags = [
        "--data-dir",
        str(server.settings.data_dir),
        "--clickhouse-dsn",
        f"chdb://{engine_dir}",
        "--clickhouse-database",
        database,
        "--postgres-dsn",
        pg_dsn,
    ]
    code, out, err = await run(capsys, "dead-letters", "replay", first, *flags)
    assert code == 1
    assert f"dead letter {first}: ClickHouse still refuses it" in err and "the letter is kept" in err
    code, out, _ = await run(capsys, "dead-letters", "list", *flags)
    assert code == 0 and "Code: 469" in out
    assert sorted(line.split()[0] for line in out.splitlines()[1:]) == sorted([first, second])

    # Fixed: the constraint goes. The replay goes through the running server's control socket.
    server.store.command("ALTER TABLE activities DROP CONSTRAINT no_forbidden")
    code, out, err = await run(capsys, "dead-letters", "replay", first, *flags)
    assert (code, out, err) == (0, f"dead letter {first}: 1 activities stored in ClickHouse\n", "")
    code, out, _ = await run(capsys, "dead-letters", "replay", first, *flags)
    assert code == 0 and "already replayed" in out
    assert count(server, f"id = '{forbidden[0].id}'") == 1

    # A replay interrupted after ClickHouse took the rows, before the letter was marked: the next one
    # sends the same deduplication token, and ClickHouse stores nothing twice (counted without FINAL).
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("UPDATE dead_letters SET replayed_at = NULL WHERE id = $1", int(first))
    finally:
        await conn.close()
    code, out, _ = await run(capsys, "dead-letters", "replay", first, *flags)
    assert code == 0 and "1 activities stored" in out
    assert count(server, f"id = '{forbidden[0].id}'") == 1

    # Without a server, the command opens the store itself.
    await server.shutdown(grace=1)
    code, out, _ = await run(capsys, "dead-letters", "replay", "--all", *flags)
    assert code == 0
    assert out.splitlines() == [
        f"dead letter {second}: 1 activities stored in ClickHouse",
        "replayed 1 dead letters (1 activities)",
    ]
    code, out, _ = await run(capsys, "dead-letters", "replay", "--all", *flags)
    assert (code, out) == (0, "no dead letters waiting\n")
    code, out, _ = await run(capsys, "dead-letters", "list", "--all", "--format", "json", *flags)
    assert code == 0 and len(out.splitlines()) == 2 and '"state": "replayed"' in out
    code, out, _ = await run(capsys, "dead-letters", "purge", "--replayed", *flags)
    assert (code, out) == (0, "purged 2 dead letters\n")
    code, out, err = await run(capsys, "dead-letters", "show", first, *flags)
    assert (code, err) == (1, f"activity-collector dead-letters: no dead letter {first}\n")


async def test_show_prints_the_error_and_the_activities(
    make_settings: Any, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import items

    from workers.commit.deadletters import DeadLetter
    from workers.rows import encode_rows
    from workers.storage.postgres import Postgres

    activity = make_activity(5, action="purchase")
    rows = b"".join(encode_rows(items([activity]), "shop-7", time.time_ns(), None).pieces)
    async with Postgres(pg_dsn, Path("unused")) as postgres:
        store = DeadLetterStore(postgres.pool)
        await store.add([DeadLetter("spool-1-1-x-1", 1, rows, "Code: 53. Type mismatch", 53, "shop-7")])
        (letter,) = await store.list()
    code, out, _ = await run(capsys, "dead-letters", "show", str(letter.id), "--postgres-dsn", pg_dsn)
    assert code == 0
    lines = out.splitlines()
    assert lines[:8] == [
        f"id: {letter.id}",
        f"created: {letter.created_at.isoformat()}",
        "tenant: shop-7",
        "rows: 1",
        "state: pending",
        "error code: 53",
        "error: Code: 53. Type mismatch",
        "replays: 0",
    ]
    assert lines[-2] == "activities:"
    assert activity.id in lines[-1] and '"action": "purchase"' in lines[-1]


async def test_commands_on_a_data_directory_without_data_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run(capsys, "dead-letters", "list", "--data-dir", str(tmp_path / "nothing"))
    assert code == 1
    assert "no data in" in err and "start `activity-collector serve` there first" in err
    assert not (tmp_path / "nothing").exists()


async def test_migrate_reports_what_it_applied(pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    from workers.storage.postgres import MIGRATIONS, latest_version

    versions = ", ".join(str(m.version) for m in MIGRATIONS)
    code, out, _ = await run(capsys, "migrate", "--postgres-dsn", pg_dsn)
    assert (code, out) == (
        0,
        f"applied PostgreSQL migrations {versions}; schema version {latest_version()}\n",
    )
    code, out, _ = await run(capsys, "migrate", "--postgres-dsn", pg_dsn)
    assert (code, out) == (0, f"PostgreSQL schema up to date (version {latest_version()})\n")


async def test_tenants_and_keys_commands(pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    pg = ["--postgres-dsn", pg_dsn]
    code, out, _ = await run(capsys, "tenants", "create", "shop-a", *pg)
    assert (code, out) == (
        0,
        "created tenant shop-a; give it a key: activity-collector keys create --tenant shop-a\n",
    )
    code, _, err = await run(capsys, "tenants", "create", "shop-a", *pg)
    assert (code, err) == (1, "activity-collector tenants: tenant shop-a exists already\n")
    code, _, err = await run(capsys, "tenants", "create", "Shop A", *pg)
    assert code == 1 and "tenant name 'Shop A': 1 to 63 characters" in err

    code, out, _ = await run(capsys, "keys", "create", "--tenant", "shop-a", *pg)
    assert code == 0
    *_, key = out.splitlines()
    assert re.fullmatch(r"ak_[0-9a-f]{12}_[0-9a-f]{48}", key), "the key, alone on the last line"
    key_id = key.split("_")[1]
    code, _, err = await run(capsys, "keys", "create", "--tenant", "nobody", *pg)
    assert (code, err) == (1, "activity-collector keys: no tenant nobody\n")
    code, out, _ = await run(
        capsys, "keys", "create", "--tenant", "shop-a", "--scope", "read", "--scope", "write", *pg
    )
    assert code == 0 and "scope write,read;" in out
    await run(capsys, "keys", "revoke", out.splitlines()[-1], *pg)

    code, out, _ = await run(capsys, "keys", "list", *pg)
    assert code == 0 and key_id in out and key not in out
    assert out.splitlines()[1].split()[:4] == [key_id, "shop-a", "active", "write"]
    code, out, _ = await run(capsys, "tenants", "list", *pg)
    assert out.splitlines()[1].split()[:3] == ["shop-a", "active", "1"]

    code, out, _ = await run(capsys, "keys", "revoke", key_id, *pg)
    assert code == 0 and out.startswith(f"revoked API key {key_id} of tenant shop-a: it is refused within")
    code, out, _ = await run(capsys, "keys", "revoke", key, *pg)  # the whole key names it too
    assert code == 0
    code, _, err = await run(capsys, "keys", "revoke", "0123456789ab", *pg)
    assert (code, err) == (1, "activity-collector keys: no such API key\n")
    code, out, _ = await run(capsys, "keys", "list", "--tenant", "shop-a", *pg)
    assert out.splitlines()[1].split()[2] == "revoked"

    code, out, _ = await run(capsys, "tenants", "disable", "shop-a", *pg)
    assert code == 0 and out.startswith("disabled tenant shop-a: its keys are refused within")
    code, out, _ = await run(capsys, "tenants", "list", *pg)
    assert out.splitlines()[1].split()[:3] == ["shop-a", "disabled", "0"]
    code, _, err = await run(capsys, "tenants", "disable", "nobody", *pg)
    assert (code, err) == (1, "activity-collector tenants: no tenant nobody\n")
    code, out, _ = await run(capsys, "tenants", "enable", "shop-a", *pg)
    assert code == 0 and out.startswith("enabled tenant shop-a")
