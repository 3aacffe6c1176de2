"""`activity-collector report`: every report against the generated shop, whose right answers are
computed in Python; the output formats and charts; a month of data read from the aggregates; and the
reports through a running server, after activities came in through the real pipeline with a retry."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import io
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
import shop
from helpers import store_flags

from collector.cli.main import main
from collector.cli.report import (
    REPORTS,
    Request,
    overview_aggregates_sql,
    overview_sql,
    sessions_sql,
    top_targets_sql,
)
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.storage.clickhouse import ClickHouseStore
from workers.storage.refresher import refresh_aggregates

pytestmark = pytest.mark.timeout(60)

FIRST = shop.FIRST_DAY
LAST = FIRST + dt.timedelta(days=shop.DAYS - 1)
MONTH = ["--from", FIRST.isoformat(), "--to", LAST.isoformat()]


@pytest.fixture(scope="module")
def generated() -> shop.Shop:
    return shop.generate()


@pytest.fixture(scope="module", params=["unrefreshed", "refreshed", "refreshed, then resent"])
def seeded(
    request: pytest.FixtureRequest, engine_dir: Path, generated: shop.Shop
) -> Iterator[tuple[ClickHouseStore, list[str]]]:
    """The shop stored once for the module, with some activities resent; and the store flags that
    point a report at it. Every test runs three times: before the aggregates' refresh (their views
    compute every day from `activities`), after it (the rollups hold every day), and after it with a
    resent copy of some activities inserted later (the days it can change are computed again)."""
    database = f"report_{int(time.time() * 1000) % 10**9}"
    store = ClickHouseStore(f"chdb://{engine_dir}", database, connections=1)
    shop.insert(store, generated.events)
    shop.insert(store, generated.events[100:160], received_ns=time.time_ns() + 3_000_000_000)
    if request.param != "unrefreshed":
        assert refresh_aggregates(store.command, database, margin_s=0).days > 0
    if request.param == "refreshed, then resent":
        shop.insert(store, generated.events[7::50], received_ns=time.time_ns() + 6_000_000_000)
    yield store, store_flags(engine_dir, database)
    store.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    store.close()


def report(
    capsys: pytest.CaptureFixture[str], flags: list[str], *args: str, fmt: str = "json"
) -> list[dict[str, Any]] | str:
    code = main(["report", *args, "--format", fmt, *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    if fmt != "json":
        return out
    return [json.loads(line) for line in out.splitlines()]


def shop_events(generated: shop.Shop) -> list[shop.Event]:
    return shop.in_range(generated.events, shop.TENANT, FIRST, LAST)


def numbers(row: dict[str, Any]) -> dict[str, Any]:
    """JSON values as Python values: 64-bit integers may arrive quoted, map values too."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out[k] = {mk: int(mv) for mk, mv in v.items()}
        elif isinstance(v, str) and re.fullmatch(r"-?\d+", v):
            out[k] = int(v)
        else:
            out[k] = v
    return out


# -- each report holds the right answers -----------------------------------------------------------


def test_overview(capsys: pytest.CaptureFixture[str], seeded: Any, generated: shop.Shop) -> None:
    _, flags = seeded
    got = [numbers(r) for r in report(capsys, flags, "overview", "--tenant", shop.TENANT, *MONTH)]
    events = shop_events(generated)
    by_day: dict[str, list[shop.Event]] = defaultdict(list)
    for e in events:
        by_day[shop.day_of(e.occurred_ms).isoformat()].append(e)
    sessions_by_day: dict[str, list[shop.Session]] = defaultdict(list)
    for s in shop.sessions(events):
        sessions_by_day[shop.day_of(s.start).isoformat()].append(s)
    expected = []
    for n in range(shop.DAYS):
        day = (FIRST + dt.timedelta(days=n)).isoformat()
        evs, sess = by_day[day], sessions_by_day[day]
        converted = sum(s.purchases > 0 for s in sess)
        expected.append(
            {
                "day": day,
                "activities": len(evs),
                "users": len({e.user_key for e in evs}),
                "sessions": len(sess),
                "converted_sessions": converted,
                "conversion": pytest.approx(shop.ratio(converted, len(sess)), abs=1e-4),
                "purchases": sum(e.action == "purchase" for e in evs),
                "revenue": shop.revenue_by_currency(evs),
            }
        )
    assert got == expected
    assert sum(r["purchases"] for r in got) > 5
    assert {c for r in got for c in r["revenue"]} == {"EUR", "USD"}


def test_overview_of_every_tenant_adds_the_other_tenant(
    capsys: pytest.CaptureFixture[str], seeded: Any, generated: shop.Shop
) -> None:
    _, flags = seeded
    got = report(capsys, flags, "overview", *MONTH)
    assert sum(int(r["activities"]) for r in got) == len(shop.in_range(generated.events, "", FIRST, LAST))
    other = report(capsys, flags, "overview", "--tenant", shop.OTHER_TENANT, *MONTH)
    assert sum(int(r["activities"]) for r in other) == len(
        shop.in_range(generated.events, shop.OTHER_TENANT, FIRST, LAST)
    )


@pytest.mark.parametrize("by", ["", "device_type", "segment"])
def test_funnel(capsys: pytest.CaptureFixture[str], seeded: Any, generated: shop.Shop, by: str) -> None:
    _, flags = seeded
    steps = ["view", "add_to_cart", "purchase"]
    extra = ["--by", by] if by else []
    got = [numbers(r) for r in report(capsys, flags, "funnel", "--tenant", shop.TENANT, *MONTH, *extra)]
    expected_counts = shop.funnel(shop_events(generated), steps, 86400, by)
    expected = []
    for dim in sorted(expected_counts):
        counts = expected_counts[dim]
        for i, users in enumerate(counts):
            row: dict[str, Any] = {by: dim} if by else {}
            row.update(
                {
                    "step": i + 1,
                    "action": steps[i],
                    "users": users,
                    "of_first": pytest.approx(shop.ratio(users, counts[0]), abs=1e-4),
                    "of_previous": pytest.approx(shop.ratio(users, counts[i - 1] if i else users), abs=1e-4),
                }
            )
            expected.append(row)
    assert got == expected


def test_funnel_steps_and_window(
    capsys: pytest.CaptureFixture[str], seeded: Any, generated: shop.Shop
) -> None:
    _, flags = seeded
    args = ["--steps", "Click,add-to-cart,purchase", "--window", "15m"]
    got = [int(r["users"]) for r in report(capsys, flags, "funnel", "--tenant", shop.TENANT, *MONTH, *args)]
    expected = shop.funnel(shop_events(generated), ["click", "add_to_cart", "purchase"], 900)[""]
    assert got == expected
    assert expected != shop.funnel(shop_events(generated), ["click", "add_to_cart", "purchase"], 86400)[""]


@pytest.mark.parametrize("action", ["purchase", "view"])
def test_top_targets(
    capsys: pytest.CaptureFixture[str], seeded: Any, generated: shop.Shop, action: str
) -> None:
    _, flags = seeded
    args = ["--action", action, "--limit", "5", "--tenant", shop.TENANT, *MONTH]
    got = [numbers(r) for r in report(capsys, flags, "top-targets", *args)]
    groups: dict[tuple[str, str], list[shop.Event]] = defaultdict(list)
    for e in shop_events(generated):
        if e.action == action:
            groups[e.target].append(e)
    expected = []
    for (target_type, target_id), evs in groups.items():
        revenue: Counter[str] = Counter()
        for e in evs:
            if e.has_amount and e.revenue:
                revenue[e.currency] += e.revenue
        expected.append(
            {
                "target_type": target_type,
                "target_id": target_id,
                "activities": len(evs),
                "users": len({e.user_key for e in evs}),
                "items": sum(e.items for e in evs if e.has_amount),
                "revenue": dict(revenue),
            }
        )
    expected.sort(key=lambda r: (-r["activities"], r["target_type"], r["target_id"]))
    assert got == expected[:5]


def test_sources(capsys: pytest.CaptureFixture[str], seeded: Any, generated: shop.Shop) -> None:
    _, flags = seeded
    got = [
        numbers(r)
        for r in report(capsys, flags, "sources", "--tenant", shop.TENANT, "--limit", "500", *MONTH)
    ]
    events = shop_events(generated)
    attributed = shop.attribution(events, 86400)
    groups: dict[str, list[shop.Event]] = defaultdict(list)
    for e in events:
        groups[e.source_id if e.action in ("view", "click") else attributed[e.id]].append(e)
    expected = []
    for source, evs in groups.items():
        count = Counter(e.action for e in evs)
        expected.append(
            {
                "source_id": source or "(none)",
                "views": count["view"],
                "clicks": count["click"],
                "ctr": pytest.approx(shop.ratio(count["click"], count["view"]), abs=1e-4),
                "add_to_carts": count["add_to_cart"],
                "purchases": count["purchase"],
                "purchases_per_click": pytest.approx(shop.ratio(count["purchase"], count["click"]), abs=1e-4),
                "revenue": shop.revenue_by_currency(evs),
            }
        )
    expected.sort(key=lambda r: (r["source_id"] != "(none)", -r["purchases"], -r["clicks"], r["source_id"]))
    assert got == expected
    # Purchases led by a search or a recommendation are credited to it, the rest to (none).
    assert got[0]["source_id"] == "(none)"
    assert sum(r["purchases"] for r in got[1:]) > 0 and got[0]["purchases"] > 0


def test_sessions(capsys: pytest.CaptureFixture[str], seeded: Any, generated: shop.Shop) -> None:
    _, flags = seeded
    got = [numbers(r) for r in report(capsys, flags, "sessions", "--tenant", shop.TENANT, *MONTH)]
    by_day: dict[str, list[shop.Session]] = defaultdict(list)
    for s in shop.sessions(shop_events(generated)):
        by_day[shop.day_of(s.start).isoformat()].append(s)
    expected = []
    for n in range(shop.DAYS):
        day = (FIRST + dt.timedelta(days=n)).isoformat()
        sess = by_day[day]
        count = len(sess)
        converted = sum(s.purchases > 0 for s in sess)
        revenue: Counter[str] = Counter()
        for s in sess:
            revenue.update(s.revenue)
        expected.append(
            {
                "day": day,
                "sessions": count,
                "users": len({s.events[-1].user_key for s in sess}),
                "avg_duration_s": pytest.approx(
                    sum((s.end - s.start) / 1000 for s in sess) / count if count else 0, abs=0.051
                ),
                "avg_activities": pytest.approx(
                    sum(len(s.events) for s in sess) / count if count else 0, abs=0.0051
                ),
                "bounce_rate": pytest.approx(
                    shop.ratio(sum(len(s.events) == 1 for s in sess), count), abs=1e-4
                ),
                "converted": converted,
                "conversion": pytest.approx(shop.ratio(converted, count), abs=1e-4),
                "revenue": dict(revenue),
            }
        )
    assert got == expected


# -- formats, charts, arguments --------------------------------------------------------------------


def test_formats(capsys: pytest.CaptureFixture[str], seeded: Any) -> None:
    _, flags = seeded
    args = ["top-targets", "--action", "view", "--limit", "3", "--tenant", shop.TENANT, *MONTH]
    as_json = report(capsys, flags, *args)
    table = report(capsys, flags, *args, fmt="table")
    tsv = report(capsys, flags, *args, fmt="tsv")
    csv_text = report(capsys, flags, *args, fmt="csv")
    assert isinstance(table, str) and isinstance(tsv, str) and isinstance(csv_text, str)
    assert "┌─target_type─" in table and "target_id" in table
    assert tsv.splitlines()[0].split("\t") == [
        "target_type",
        "target_id",
        "activities",
        "users",
        "items",
        "revenue",
    ]
    parsed = list(csv.DictReader(io.StringIO(csv_text)))
    assert [(r["target_id"], int(r["activities"])) for r in parsed] == [
        (r["target_id"], int(r["activities"]))
        for r in as_json  # type: ignore[union-attr]
    ]


@pytest.mark.parametrize(
    ("name", "extra"), [("overview", []), ("sessions", []), ("funnel", ["--by", "device_type"])]
)
def test_charts_are_png_pictures(
    capsys: pytest.CaptureFixture[str], seeded: Any, tmp_path: Path, name: str, extra: list[str]
) -> None:
    _, flags = seeded
    picture = tmp_path / f"{name}.png"
    printed = report(capsys, flags, name, *MONTH, *extra, "--chart", str(picture), fmt="table")
    assert "┌─" in printed
    data = picture.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["funnel", "--steps", "view"], "--steps: expected 2 to 8"),
        (["funnel", "--steps", "view,,purchase"], "--steps"),
        (["funnel", "--window", "soon"], "--window"),
        (["overview", "--from", "2026-10-31", "--to", "2026-10-01"], "is after --to"),
        (["overview", "--from", "yesterday"], "--from: expected a date"),
        (["top-targets", "--action", "!"], "--action"),
        (["top-targets", "--limit", "0"], "--limit"),
        (["sources", "--chart", "x.png"], "has no chart"),
    ],
)
def test_bad_arguments_are_named(
    capsys: pytest.CaptureFixture[str], seeded: Any, args: list[str], message: str
) -> None:
    _, flags = seeded
    assert main(["report", *args, *flags]) == 2
    assert message in capsys.readouterr().err


def test_report_without_data_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["report", "overview", "--data-dir", str(tmp_path / "nothing")]) == 1
    assert "no data" in capsys.readouterr().err


def test_every_report_is_documented() -> None:
    text = (Path(__file__).resolve().parents[3] / "docs" / "analytics.md").read_text()
    for name in REPORTS:
        assert f"activity-collector report {name}" in text, name


# -- a month of data is read from the aggregates ---------------------------------------------------


def _tables_read(store: ClickHouseStore, sql: str) -> set[str]:
    plan = store.query(f"EXPLAIN {sql}", "TabSeparatedRaw").decode()
    return {name.split(".")[-1] for name in re.findall(r"ReadFromMergeTree \(([^)]+)\)", plan)}


def test_a_month_of_activities_is_read_from_the_aggregates(seeded: Any) -> None:
    store, _ = seeded
    refresh_aggregates(store.command, store.database, margin_s=0)
    month = Request(name="top-targets", first_day=FIRST, last_day=LAST, tenant=shop.TENANT)
    # The aggregates' views read their rollups, and `activities` only for the days touched since the
    # last refresh: none here.
    bookkeeping = {"aggregate_touches", "aggregate_refreshes", "activities"}
    assert _tables_read(store, top_targets_sql(month)) - bookkeeping == {"target_stats_daily_rollup"}
    # The overview's activities, users, purchases and revenue come from the hourly and daily
    # aggregates, its sessions from their rollup.
    overview = overview_sql(dataclasses.replace(month, name="overview"))
    totals_sql = overview_aggregates_sql(dataclasses.replace(month, name="overview"))
    rollups = {"activity_stats_hourly_rollup", "activity_stats_daily_rollup"}
    assert _tables_read(store, totals_sql) - bookkeeping == rollups
    assert _tables_read(store, overview) - bookkeeping == rollups | {"session_figures_daily_rollup"}
    # Once the check said that the rollups hold every day of the month, the rollup tables alone.
    current = dataclasses.replace(month, name="overview", rollups_current=True)
    assert _tables_read(store, overview_sql(current)) - bookkeeping == rollups | {
        "session_figures_daily_rollup"
    }
    assert "activities" not in _tables_read(store, sessions_sql(current))
    # No day was touched since the refresh: the views' branch over `activities` reads nothing.
    dirty = (
        "SELECT count() FROM aggregate_touches "
        "WHERE inserted_at > (SELECT max(refreshed_to) FROM aggregate_refreshes)"
    )
    assert store.query(dirty, "TabSeparated") == b"0\n"
    # And reading it touches a few hundred aggregate rows, not the month's activities.
    rows = int(
        store.query(
            "SELECT count() FROM activity_stats_hourly WHERE tenant_id = 'shop' "
            "AND hour >= '2026-10-01 00:00:00' AND hour < '2026-11-01 00:00:00'",
            "TabSeparated",
        )
    )
    activities = int(
        store.query("SELECT count() FROM activities FINAL WHERE tenant_id = 'shop'", "TabSeparated")
    )
    assert 0 < rows < activities


# -- through a running server, after the real pipeline ---------------------------------------------


async def test_reports_through_a_running_server_after_a_retried_batch(
    start_server: Any,
    make_settings: Any,
    engine_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = await start_server()
    generated = shop.generate(seed=5, visitors=12)
    events = [e for e in generated.events if e.tenant == shop.TENANT]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        batches = [events[i : i + 50] for i in range(0, len(events), 50)]
        for batch in batches:
            request = pb.TrackActivitiesRequest(activities=[e.activity() for e in batch])
            answer = await stub.TrackActivities(request)
            assert answer.accepted_count == len(batch)
        # The client did not hear the first answer and sends that batch again.
        again = pb.TrackActivitiesRequest(activities=[e.activity() for e in batches[0]])
        assert (await stub.TrackActivities(again)).accepted_count == len(batches[0])

    settings = make_settings()
    flags = ["--data-dir", str(settings.data_dir), "--clickhouse-database", settings.clickhouse_database]
    assert (settings.data_dir / "control.sock").exists()
    # The embedded engine is held by the server: the report goes through its control socket. It runs
    # on a thread, since the server answers on this event loop.
    code = await asyncio.to_thread(main, ["report", "overview", "--format", "json", *MONTH, *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert sum(int(r["activities"]) for r in got) == len(events)
    assert sum(int(r["purchases"]) for r in got) == sum(e.action == "purchase" for e in events)
    assert sum(int(r["sessions"]) for r in got) == len(shop.sessions(events))
    del engine_dir, tmp_path


def test_a_session_past_midnight_counts_whole_on_the_day_it_began(
    capsys: pytest.CaptureFixture[str], engine_dir: Path
) -> None:
    database = f"midnight_{int(time.time() * 1000) % 10**9}"
    store = ClickHouseStore(f"chdb://{engine_dir}", database, connections=1)
    midnight = int(dt.datetime(2026, 10, 11, tzinfo=dt.UTC).timestamp() * 1000)
    minute = 60_000

    def visit(offset_min: int, action: str = "view") -> shop.Event:
        return shop.Event(
            "night", action, "product", "p1", midnight + offset_min * minute, "anon-n", "", "", "", ()
        )

    # One run of views, 20 minutes apart, from 23:40 to 00:20: one session, begun on the 10th.
    shop.insert(store, [visit(-20), visit(0), visit(20, "purchase")])
    try:
        flags = store_flags(engine_dir, database)
        for refreshed in (False, True):
            if refreshed:
                assert refresh_aggregates(store.command, database, margin_s=0).days > 0
            tenth = report(
                capsys, flags, "sessions", "--tenant", "night", "--from", "2026-10-10", "--to", "2026-10-10"
            )
            assert [numbers(r) | {"avg_duration_s": float(r["avg_duration_s"])} for r in tenth] == [
                {
                    "day": "2026-10-10",
                    "sessions": 1,
                    "users": 1,
                    "avg_duration_s": 2400.0,
                    "avg_activities": 3,
                    "bounce_rate": 0,
                    "converted": 1,
                    "conversion": 1,
                    "revenue": {},
                }
            ]
            eleventh = report(
                capsys, flags, "overview", "--tenant", "night", "--from", "2026-10-11", "--to", "2026-10-11"
            )
            assert [(r["day"], int(r["activities"]), int(r["sessions"])) for r in eleventh] == [
                ("2026-10-11", 2, 0)
            ]
        # Asked to keep bots, the reports compute the sessions from the range's activities alone: the
        # 11th then holds the part of the session that falls in it.
        kept = report(
            capsys,
            flags,
            "sessions",
            "--tenant",
            "night",
            "--from",
            "2026-10-11",
            "--to",
            "2026-10-11",
            "--include-bots",
        )
        assert [(r["day"], int(r["sessions"])) for r in kept] == [("2026-10-11", 1)]
    finally:
        store.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
        store.close()
