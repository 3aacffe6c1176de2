"""`activity-collector users`: export, suppress, unsuppress, erase and erasure-status against a running
collector on the real engines."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import grpc.aio
import pytest
from helpers import make_activity, wait_for

from collector.cli.main import main
from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def send(server: CollectorServer, activities: list[pb.Activity]) -> int:
    async with grpc.aio.insecure_channel(server.address) as channel:
        answer = await pb_grpc.ActivityServiceStub(channel).TrackActivities(
            pb.TrackActivitiesRequest(activities=activities)
        )
        return int(answer.accepted_count)


def stored(server: CollectorServer, user: str) -> int:
    assert server.store is not None
    sql = f"SELECT count() FROM activities WHERE user_id = '{user}' OR anonymous_id = 'anon-{user}'"
    return int(server.store.query(sql, "TabSeparated"))


async def test_export_suppress_unsuppress_erase(
    start_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server: CollectorServer = await start_server(plan_refresh_s=0.1)
    assert server.suppressions is not None
    flags = (
        "--tenant",
        "default",
        "--data-dir",
        str(server.settings.data_dir),
        "--clickhouse-dsn",
        server.settings.effective_clickhouse_dsn,
        "--clickhouse-database",
        server.settings.clickhouse_database,
        "--postgres-dsn",
        server.settings.postgres_dsn,
    )
    alice = [
        make_activity(0, user=pb.User(anonymous_id="anon-alice")),
        make_activity(
            1,
            user=pb.User(
                user_id="alice", anonymous_id="anon-alice", session_id="s-a", identities={"crm": "C-1"}
            ),
        ),
    ]
    bob = [make_activity(2, user=pb.User(user_id="bob", anonymous_id="anon-bob"))]
    assert await send(server, alice + bob) == 3

    code, out, err = await run(capsys, "users", "export", "--anonymous-id", "anon-alice", *flags)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    kinds = [r["type"] for r in records]
    assert kinds[0] == "person" and records[0]["ids"] == {
        "user": ["alice"],
        "anonymous": ["anon-alice"],
        "session": ["s-a"],
    }
    assert sorted(r["id"] for r in records if r["type"] == "activity") == sorted(a.id for a in alice)
    assert {(r["kind"], r["key"]) for r in records if r["type"] == "identity_link"} == {
        ("anonymous", "anon-alice"),
        ("session", "s-a"),
    }
    assert records[-1] == {"type": "suppression", "suppressed": False}
    assert "bob" not in out

    # By an identity of a further repository: the user whose activities carry it.
    code, out, err = await run(capsys, "users", "export", "--identity", "crm=C-1", *flags)
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["ids"]["user"] == ["alice"]
    code, out, err = await run(capsys, "users", "export", "--identity", "crm=C-404", *flags)
    assert code == 1 and "no activity of tenant default carries the identity crm=C-404" in err

    # An opt-out: accepted, not stored, counted.
    code, out, err = await run(capsys, "users", "suppress", "--user-id", "alice", *flags)
    assert code == 0 and "suppressed 3 ids" in out, err
    await wait_for(
        lambda: server.suppressions is not None and server.suppressions.applies("default"), "refresh"
    )
    assert await send(server, [make_activity(3, user=pb.User(session_id="s-a"))]) == 1
    assert stored(server, "alice") == 2
    assert server.metrics_server is not None
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(server.metrics_server.url).read().decode())
    assert 'activity_collector_activities_suppressed_total{tenant="default"} 1.0' in text

    code, out, err = await run(capsys, "users", "unsuppress", "--anonymous-id", "anon-alice", *flags)
    assert code == 0 and "lifted the suppression of 3 ids" in out, err
    await wait_for(
        lambda: server.suppressions is not None and not server.suppressions.applies("default"), "lift"
    )
    assert await send(server, [make_activity(4, user=pb.User(user_id="alice"))]) == 1
    assert stored(server, "alice") == 3

    code, out, err = await run(capsys, "users", "erase", "--session-id", "s-a", "--format", "json", *flags)
    assert code == 0, err
    receipt = json.loads(out)
    assert receipt["state"] == "done" and receipt["removed"]["activities"] == 3
    assert receipt["ids"] == {"user": 1, "anonymous": 1, "session": 1}
    assert stored(server, "alice") == 0 and stored(server, "bob") == 1

    code, out, err = await run(capsys, "users", "erasure-status", "--user-id", "alice", *flags)
    assert code == 0 and "done" in out and "removed: activities" in out, err
    code, out, err = await run(capsys, "users", "erasure-status", "--user-id", "nobody", *flags)
    assert code == 4 and "no erasure" in err
    code, out, err = await run(capsys, "users", "export", "--user-id", "alice", *flags)
    assert code == 0, err
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert types == ["person", "suppression", "erasure"]


async def test_a_person_must_be_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        await asyncio.to_thread(main, ["users", "erase", "--tenant", "default"])
    assert exit_.value.code == 2
    assert "one of the arguments --user-id --anonymous-id --session-id --identity is required" in (
        capsys.readouterr().err
    )


async def test_an_erasure_waits_for_a_stopped_collectors_spool(
    tmp_path: Any, postgres_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from workers.commit.spool import Spool

    data = tmp_path / "data"
    spool = Spool(data / "spool", capacity_bytes=1 << 20)
    spool.open()
    spool.append([(2, b"two activities' rows, as acknowledged")])
    spool.close()
    argv = ["users", "erase", "--tenant", "default", "--user-id", "alice", "--data-dir", str(data)]
    code, out, err = await run(capsys, *argv, "--postgres-dsn", postgres_dsn, "--format", "json")
    assert code == 3, err
    assert "holds 2 activities not yet in ClickHouse" in err and "runs when `activity-collector serve`" in err
    assert json.loads(out)["state"] == "pending"
