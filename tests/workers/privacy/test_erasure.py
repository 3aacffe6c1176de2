"""Erasing a person on the real engines: a person known under three ids (an anonymous id and two
sessions, joined to a user id by a login), with activities in ClickHouse, in the aggregates, in the
rejected activities, in the dead letters and in the spool not yet drained. After the erasure no table
of ClickHouse or PostgreSQL mentions any of their ids, the other people's figures equal a computation
in plain Python over what they sent, and the person's later activities are dropped at intake."""

from __future__ import annotations

import datetime
import json
import time
from collections import defaultdict
from typing import Any

import grpc.aio
import pytest
from helpers import hold_inserts, items, make_activity, receipt_until, wait_for

from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.commit.deadletters import DeadLetter, DeadLetterStore
from workers.privacy.erasure import SPOOLS, STEPS, ErasureStore
from workers.rows import encode_rows
from workers.storage.analytics_schema import MEASURE

pytestmark = pytest.mark.timeout(240)

TENANT = "default"
ALICE_IDS = ("alice", "anon-alice", "sess-alice-1", "sess-alice-2")
# The aggregates' own read expressions (what the reports use); the figures they give are checked
# against a computation here.
ACTIVITIES = MEASURE["activities"].merged()
USERS = MEASURE["users"].merged()
DAY = datetime.datetime(2026, 11, 2, 9, 30, tzinfo=datetime.UTC)


def at(hours: float) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(DAY + datetime.timedelta(hours=hours))
    return stamp


def activity(n: int, user: pb.User, action: str = "view", hours: float = 0, **fields: Any) -> pb.Activity:
    a = make_activity(n, action=action, user=user, **fields)
    a.occurred_at.CopyFrom(at(hours))
    return a


def alice_before_login() -> list[pb.Activity]:
    anonymous = pb.User(anonymous_id="anon-alice", session_id="sess-alice-1")
    return [activity(n, anonymous, hours=n) for n in range(3)]


def alice_login() -> list[pb.Activity]:
    return [
        activity(
            3, pb.User(user_id="alice", anonymous_id="anon-alice", session_id="sess-alice-1"), "click", 3
        ),
        activity(
            4,
            pb.User(user_id="alice", session_id="sess-alice-2"),
            "purchase",
            26,
            metadata=pb.Metadata(price=1200, quantity=2, currency="EUR", device_type="mobile"),
        ),
    ]


def others(first: int, count: int) -> list[pb.Activity]:
    out = []
    for n in range(first, first + count):
        who = ("bob", "carol", "dave")[n % 3]
        user = pb.User(user_id=who, anonymous_id=f"anon-{who}", session_id=f"sess-{who}-{n % 2}")
        extra: dict[str, Any] = {}
        if n % 4 == 0:
            extra["metadata"] = pb.Metadata(price=100 * n, currency="EUR", device_type="desktop")
        out.append(activity(n, user, ("view", "click", "purchase")[n % 3], hours=n % 30, **extra))
    return out


def rows(activities: list[pb.Activity]) -> bytes:
    return b"".join(encode_rows(items(activities), TENANT, time.time_ns(), None).pieces)


def expected_figures(activities: list[pb.Activity]) -> dict[tuple[str, str], tuple[int, int]]:
    """Per (UTC hour, action): activities and distinct user keys, computed here from what was sent."""
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    users: dict[tuple[str, str], set[str]] = defaultdict(set)
    for a in activities:
        hour = a.occurred_at.ToDatetime().replace(minute=0, second=0, microsecond=0)
        key = (hour.strftime("%Y-%m-%d %H:%M:%S"), a.action)
        ids[key].add(a.id)
        users[key].add(a.user.user_id or a.user.anonymous_id or a.user.session_id)
    return {key: (len(ids[key]), len(users[key])) for key in ids}


def stored_figures(server: CollectorServer) -> dict[tuple[str, str], tuple[int, int]]:
    assert server.store is not None
    out = server.store.query(
        f"SELECT toString(hour) AS hour, action, {ACTIVITIES} AS n, {USERS} AS u FROM activity_stats_hourly"
        f" WHERE tenant_id = '{TENANT}' GROUP BY hour, action",
        "JSONEachRow",
    )
    figures = {}
    for line in out.splitlines():
        row = json.loads(line)
        figures[(row["hour"], row["action"])] = (int(row["n"]), int(row["u"]))
    return figures


def target_figures(server: CollectorServer) -> dict[tuple[str, str], int]:
    assert server.store is not None
    out = server.store.query(
        f"SELECT toString(day) AS day, target_id, {ACTIVITIES} AS n FROM target_stats_daily"
        f" WHERE tenant_id = '{TENANT}' GROUP BY day, target_id",
        "JSONEachRow",
    )
    return {(r["day"], r["target_id"]): int(r["n"]) for r in map(json.loads, out.splitlines())}


def expected_targets(activities: list[pb.Activity]) -> dict[tuple[str, str], int]:
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for a in activities:
        ids[(a.occurred_at.ToDatetime().strftime("%Y-%m-%d"), a.target.id)].add(a.id)
    return {key: len(v) for key, v in ids.items()}


def clickhouse_mentions(server: CollectorServer, needles: tuple[str, ...]) -> list[str]:
    """Every ClickHouse table of the database read whole (aggregate states as their bytes): the tables
    whose text holds one of `needles`."""
    assert server.store is not None
    tables = server.store.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase()"
        " AND engine NOT IN ('View', 'MaterializedView')",
        "TabSeparated",
    ).split()
    found = []
    for table in tables:
        text = server.store.query(f"SELECT * FROM `{table.decode()}`", "TabSeparated")
        found += [f"{table.decode()}: {n}" for n in needles if n.encode() in text]
    return found


async def postgres_mentions(server: CollectorServer, needles: tuple[str, ...]) -> list[str]:
    """Every PostgreSQL table of the collector's schema read whole as text (bytea as hex too)."""
    assert server.postgres is not None
    pool = server.postgres.pool
    tables = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_type = 'BASE TABLE'"
    )
    found = []
    for t in tables:
        name = t["table_name"]
        for row in await pool.fetch(f'SELECT t::text AS text FROM "{name}" t'):
            text = row["text"]
            for n in needles:
                if n in text or n.encode().hex() in text:
                    found.append(f"{name}: {n}")
    return found


async def send(server: CollectorServer, activities: list[pb.Activity]) -> pb.TrackActivitiesResponse:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        answer: pb.TrackActivitiesResponse = await stub.TrackActivities(
            pb.TrackActivitiesRequest(activities=activities)
        )
        return answer


def count(server: CollectorServer, sql: str) -> int:
    assert server.store is not None
    return int(server.store.query(sql, "TabSeparated"))


async def test_a_person_is_erased_everywhere_and_suppressed(start_server: Any, monkeypatch: Any) -> None:
    server: CollectorServer = await start_server(spool=True, plan_refresh_s=0.1)
    assert server.postgres is not None and server.suppressions is not None and server.erasures is not None
    pool = server.postgres.pool

    alice = alice_before_login() + alice_login()
    first_others = others(10, 30)
    await send(server, alice + first_others)
    await wait_for(lambda: count(server, "SELECT count() FROM activities") == 35, "the first batch stored")
    # The anonymous and session ids were linked to alice by the login.
    links = await pool.fetch("SELECT kind, key, user_id FROM identity_links ORDER BY kind, key")
    assert {(r["kind"], r["key"]) for r in links if r["user_id"] == "alice"} >= {("anonymous", "anon-alice")}

    # Rejected activities keep their bytes: one of alice's, one of bob's.
    await send(
        server,
        [
            make_activity(90, id="not-a-uuid", user=pb.User(user_id="alice")),
            make_activity(91, id="not-a-uuid-either", user=pb.User(user_id="bob")),
        ],
    )
    await wait_for(lambda: count(server, "SELECT count() FROM rejected_activities") == 2, "rejections kept")

    # Dead letters: one with alice's row beside bob's, one with alice's alone.
    bob_letter = others(60, 1)
    alice_letter = [activity(61, pb.User(session_id="sess-alice-2"), "view", 27)]
    letters = DeadLetterStore(pool)
    await letters.add(
        [
            DeadLetter("test-1", 2, rows(alice_letter[:1] + bob_letter), "refused", 376, TENANT),
            DeadLetter(
                "test-2", 1, rows([activity(62, pb.User(user_id="alice"), "view", 28)]), "x", 1, TENANT
            ),
        ]
    )

    # Acknowledged but held in the spool: two of alice's, one of bob's.
    release = hold_inserts(server, monkeypatch)
    spooled_alice = [
        activity(70 + n, pb.User(user_id="alice", session_id="sess-alice-2"), hours=29) for n in range(2)
    ]
    spooled_others = others(80, 3)
    try:
        answer = await send(server, spooled_alice + spooled_others)
        assert answer.accepted_count == 5

        jobs = ErasureStore(pool)
        job = await jobs.request(TENANT, "anonymous", "anon-alice")
        # Asked again while it runs: the same job.
        assert await jobs.request(TENANT, "anonymous", "anon-alice") == job
        server.erasures.wake()

        # Resolved, or further on already: the drain mark holds the job at `resolved` only when an
        # insert had begun before the job, which the held inserts leave to timing.
        await receipt_until(jobs, job, lambda r: r.step in STEPS, "the erasure to resolve the person")
        # Her spooled activities are dropped as the spool drains, or inserted (an insert begun before the
        # erasure) before the erasure deletes: it waits for the collector's drain mark.
        # Meanwhile an activity of alice arrives: accepted, dropped, counted.
        during = await send(server, [activity(75, pb.User(session_id="sess-alice-1"), hours=30)])
        assert during.accepted_count == 1 and not during.rejections
        assert server.suppressions.suppressed[TENANT] == 1
    finally:
        release.set()

    # The rows dropped from the spool are added to the receipt as they drain.
    every = len(alice) + len(spooled_alice)
    receipt = await receipt_until(
        jobs,
        job,
        lambda r: r.state == "done" and r.removed["activities"] + r.removed.get(SPOOLS, 0) == every,
        "the erasure to finish",
    )

    # The receipt: ids covered by kind, rows removed per store, times.
    assert receipt.ids == {"user": 1, "anonymous": 1, "session": 2}
    assert receipt.removed["activities"] >= len(alice)
    assert receipt.removed["rejected_activities"] == 1
    assert receipt.removed["dead_letters"] == 2
    assert receipt.removed["identity_links"] >= 2
    assert receipt.started_at is not None and receipt.finished_at is not None
    assert receipt.finished_at >= receipt.started_at

    # Nothing mentions any of alice's ids, in either store.
    assert clickhouse_mentions(server, ALICE_IDS) == []
    assert await postgres_mentions(server, ALICE_IDS) == []
    # The others' rows all stayed, their dead letter too.
    remaining = first_others + spooled_others
    assert count(server, "SELECT count() FROM activities") == len(remaining)
    assert count(server, "SELECT count() FROM rejected_activities") == 1
    kept = await letters.list()
    assert [(letter.source, letter.count) for letter in kept] == [("test-1", 1)]
    # The aggregates equal a computation over what the others sent.
    assert stored_figures(server) == expected_figures(remaining)
    assert target_figures(server) == expected_targets(remaining)

    # After the erasure: alice's activities under any of her ids are accepted and dropped.
    after = [
        activity(100, pb.User(user_id="alice")),
        activity(101, pb.User(anonymous_id="anon-alice")),
        activity(102, pb.User(session_id="sess-alice-2")),
    ]
    later = others(200, 1)
    answer = await send(server, after + later)
    assert answer.accepted_count == 4
    assert server.suppressions.suppressed[TENANT] == 4
    # The raw table's part and the aggregates' may become visible one after the other: wait for both.
    await wait_for(
        lambda: (
            count(server, "SELECT count() FROM activities") == len(remaining) + 1
            and stored_figures(server) == expected_figures(remaining + later)
        ),
        "the later activity stored",
    )
    assert clickhouse_mentions(server, ALICE_IDS) == []

    # Asked again once done: a new job that finds nothing, same end state.
    figures = stored_figures(server)
    again = await jobs.request(TENANT, "user", "alice")
    assert again != job
    server.erasures.wake()
    second = await receipt_until(jobs, again, lambda r: r.state == "done", "the second erasure to finish")
    assert second.removed.get("activities") == 0
    assert stored_figures(server) == figures
    assert clickhouse_mentions(server, ALICE_IDS) == []
    assert await postgres_mentions(server, ALICE_IDS) == []
    # A receipt is found again by any of the ids it covered: the second found alice's user id alone
    # (her links were gone), the first covered her session too.
    assert second.ids == {"user": 1, "anonymous": 0, "session": 0}
    found = await jobs.find(TENANT, "session", "sess-alice-2")
    assert found is not None and found.id == job
    latest = await jobs.find(TENANT, "user", "alice")
    assert latest is not None and latest.id == again


async def test_the_stages_lifecycle(postgres_dsn: str) -> None:
    """Shutdown is safe without start and idempotent; a stage shut down starts no more work."""
    import asyncpg

    from workers.privacy.erasure import ErasureRunner, ErasureWorker
    from workers.processors.suppression import SuppressionRefresher, Suppressions, SuppressionStore

    async with asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1) as pool:
        worker = ErasureWorker(ErasureRunner(pool, None, "db"))  # type: ignore[arg-type]  # no store: never run
        refresher = SuppressionRefresher(SuppressionStore(pool), Suppressions(), 0.1)
        for stage in (worker, refresher):
            await stage.shutdown()
            await stage.shutdown()
            await stage.start()
            assert stage._task is None
