"""`activity-collector report sources --by`, `experiment` and `queries` against a generated shop of
search and recommendation responses, whose right answers are computed in plain Python
(tests/responses.py): with crawlers in the data (left out, or kept with --include-bots), resent
activities (counted once), visitors who click while anonymous and buy after logging in on a later
visit, and A/B experiments with and without a real difference."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
import shop
from helpers import store_flags

from collector.cli.main import main
from collector.cli.report import Request
from collector.cli.report_sources import queries_sql, sources_by_sql
from workers.storage.analytics_schema import (
    ATTRIBUTED_ACTIVITIES,
    PERSON_ACTIVITIES,
    SOURCE_ACTIVITIES,
    VIEWS,
    aggregate_rebuild_statements,
    quote,
)
from workers.storage.clickhouse import ClickHouseStore
from workers.storage.refresher import refresh_aggregates
from workers.storage.source_rollups import SOURCE_ROLLUPS

pytestmark = pytest.mark.timeout(120)

FIRST = shop.FIRST_DAY
LAST = FIRST + dt.timedelta(days=shop.DAYS - 1)
MONTH = ["--from", FIRST.isoformat(), "--to", LAST.isoformat()]
FIGURES = [
    "impressions",
    "clicks",
    "ctr",
    "add_to_carts",
    "purchases",
    "revenue",
    "conversion",
    "avg_click_position",
]


@pytest.fixture(scope="module")
def events() -> list[shop.Event]:
    return responses.generate()


@pytest.fixture(scope="module")
def experiments() -> list[shop.Event]:
    real = responses.experiment(11, "exp-real", {"A": 0.05, "B": 0.07})
    null = responses.experiment(12, "exp-null", {"A": 0.05, "B": 0.05})
    small = responses.experiment(13, "exp-small", {"A": 0.05, "B": 0.07}, impressions=40)
    return real + null + small


@pytest.fixture(scope="module", params=["unrefreshed", "refreshed"])
def seeded(
    request: pytest.FixtureRequest, engine_dir: Path, events: list[shop.Event], experiments: list[shop.Event]
) -> Iterator[tuple[ClickHouseStore, list[str]]]:
    """The shop stored once for the module, a fifth of its activities resent later; the experiments
    beside it; and the flags that point a report at them. Every test runs twice: before the aggregates'
    refresh (the rollups' views compute every day from `activities`) and after it (they read the
    rollups), with a resent copy of some activities inserted after the refresh: the day it touched
    and the days it can change are read from `activities` again."""
    database = f"sources_{int(time.time() * 1000) % 10**9}"
    store = ClickHouseStore(f"chdb://{engine_dir}", database, connections=1)
    shop.insert(store, events)
    shop.insert(store, events[::5], received_ns=time.time_ns() + 3_000_000_000)
    shop.insert(store, experiments, batch=5000)
    if request.param == "refreshed":
        assert refresh_aggregates(store.command, database, margin_s=0).days > 0
        shop.insert(store, events[7::50], received_ns=time.time_ns() + 6_000_000_000)
    yield store, store_flags(engine_dir, database)
    store.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    store.close()


def report(capsys: pytest.CaptureFixture[str], flags: list[str], *args: str, fmt: str = "json") -> Any:
    code = main(["report", *args, "--format", fmt, *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    if fmt != "json":
        return out
    return [numbers(json.loads(line)) for line in out.splitlines()]


def numbers(row: dict[str, Any]) -> dict[str, Any]:
    """JSON values as Python values: 64-bit integers arrive quoted, map values too."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out[k] = {mk: int(mv) for mk, mv in v.items()}
        elif isinstance(v, str) and re.fullmatch(r"-?\d+", v) and k not in responses.KEYS and k != "query":
            out[k] = int(v)
        else:
            out[k] = v
    return out


def approx_rows(expected: dict[tuple[object, ...], dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(expected, key=lambda k: tuple(str(x).zfill(6) if isinstance(x, int) else x for x in k)):
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        for name, value in expected[key].items():
            row[name] = pytest.approx(value, abs=1e-4) if isinstance(value, float) else value
        rows.append(row)
    return rows


# -- the data has what the figures must get right ----------------------------------------------------


def test_the_generated_shop_has_bots_resends_logins_and_every_kind_of_response(
    events: list[shop.Event],
) -> None:
    bots = [e for e in events if e.is_bot]
    assert any(e.action == "click" for e in bots) and any(e.action == "impression" for e in bots)
    assert {e.source_variant for e in events if e.source_name == "pdp-similar"} == {"A", "B"}
    assert {e.source_type for e in events if e.source_id} == {"search", "recommendation", "merchandising"}
    assert any(e.result_count == 0 for e in events if e.action == "search")
    # Purchases credited to a click made in another session, while the shopper was still anonymous.
    touches = shop.last_touches(events, 86400)
    across = [
        e
        for e in events
        if e.action == "purchase" and (t := touches.get(e.id)) is not None and t.session_id != e.session_id
    ]
    assert any(not touches[e.id].user_id and e.user_id for e in across)  # type: ignore[union-attr]


# -- sources --by ------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", [["type"], ["name"], ["variant"], ["position"], ["name", "variant"]])
def test_sources_by(
    capsys: pytest.CaptureFixture[str], seeded: Any, events: list[shop.Event], experiments: Any, by: list[str]
) -> None:
    _, flags = seeded
    args = [a for k in by for a in ("--by", k)]
    got = report(capsys, flags, "sources", *args, "--tenant", shop.TENANT, *MONTH)
    expected = approx_rows(responses.by_groups(events + experiments, by), by)
    assert got == expected
    assert all(list(r) == [*by, *FIGURES] for r in got)
    assert sum(r["purchases"] for r in got) > 0 and sum(r["impressions"] for r in got) > 0


def test_sources_by_position_leave_the_bots_out_unless_asked(
    capsys: pytest.CaptureFixture[str], seeded: Any, events: list[shop.Event], experiments: Any
) -> None:
    _, flags = seeded
    every = events + experiments
    humans = report(capsys, flags, "sources", "--by", "position", *MONTH)
    with_bots = report(capsys, flags, "sources", "--by", "position", "--include-bots", *MONTH)
    assert with_bots == approx_rows(responses.by_groups(every, ["position"], include_bots=True), ["position"])
    assert humans == approx_rows(responses.by_groups(every, ["position"]), ["position"])
    assert sum(r["clicks"] for r in with_bots) > sum(r["clicks"] for r in humans)


def test_sources_filters_by_type_and_name(
    capsys: pytest.CaptureFixture[str], seeded: Any, events: list[shop.Event]
) -> None:
    _, flags = seeded
    got = report(
        capsys,
        flags,
        "sources",
        "--by",
        "variant",
        "--type",
        "Recommendation",
        "--name",
        "pdp-similar",
        *MONTH,
    )
    expected = responses.by_groups(events, ["name", "variant"])
    assert got == approx_rows(
        {(v,): figures for (n, v), figures in expected.items() if n == "pdp-similar"}, ["variant"]
    )
    assert [r["variant"] for r in got] == ["A", "B"]


def test_sources_without_by_still_lists_source_ids(capsys: pytest.CaptureFixture[str], seeded: Any) -> None:
    _, flags = seeded
    got = report(capsys, flags, "sources", "--limit", "3", *MONTH)
    assert got[0]["source_id"] == "(none)" and len(got) == 4
    assert list(got[0]) == [
        "source_id",
        "views",
        "clicks",
        "ctr",
        "add_to_carts",
        "purchases",
        "purchases_per_click",
        "revenue",
    ]


# -- attribution by person, across sessions ------------------------------------------------------------


def test_a_click_while_anonymous_is_credited_with_the_purchase_after_the_login(
    store: ClickHouseStore,
) -> None:
    start = shop.ms_of(dt.date(2026, 11, 2), 9 * 3600)
    hour = 3_600_000

    def event(
        action: str, at: int, session: str, anonymous: str = "", user: str = "", **extra: Any
    ) -> shop.Event:
        return shop.Event(
            shop.TENANT,
            action,
            "product",
            "sku-7",
            start + at,
            anonymous,
            user,
            session,
            "mobile",
            (),
            **extra,
        )

    reco = {
        "source_id": "reco-1",
        "source_type": "recommendation",
        "source_name": "pdp-similar",
        "source_variant": "B",
    }
    bought = {"quantity": 2, "price": 1999, "currency": "EUR", "order_id": "o-1"}
    scenario = [
        event("impression", 0, "s-1", anonymous="a-1", source_position=3, **reco),
        event("click", 1000, "s-1", anonymous="a-1", source_position=3, **reco),
        # A later visit: the login carries both ids.
        dataclasses.replace(
            event("view", 2 * hour, "s-2", anonymous="a-1", user="u-1"), target_id="login", target_type="page"
        ),
        # On another device, the next morning: only the user id.
        event("add_to_cart", 20 * hour, "s-3", anonymous="a-9", user="u-1", **bought),
        event("purchase", 20 * hour + 60_000, "s-3", anonymous="a-9", user="u-1", **bought),
        # Bought again two days later: outside the day's window, credited to nothing.
        event("purchase", 70 * hour, "s-4", user="u-1", **{**bought, "order_id": "o-2"}),
    ]
    shop.insert(store, scenario)
    arguments = {
        "tenant_id": "",
        "since": "2026-11-01",
        "until": "2026-11-30",
        "include_bots": 0,
        "window_s": 86400,
    }
    call = ATTRIBUTED_ACTIVITIES.call(arguments)
    answer = store.query(
        f"SELECT toString(id), person, attributed_source_id, revenue FROM {call}", "TabSeparated"
    )
    got = {r[0]: r[1:] for r in (line.split("\t") for line in answer.decode().splitlines())}
    assert {got[e.id][0] for e in scenario} == {"u-1"}
    assert [got[e.id][1] for e in scenario] == ["", "reco-1", "", "reco-1", "reco-1", ""]
    assert got[scenario[4].id][2] == str(2 * 1999)
    # The same from the plain-Python model, and in the figures of the recommendation.
    assert shop.attribution(scenario, 86400) == {e.id: got[e.id][1] for e in scenario}
    credited = store.query(
        f"SELECT action, source_variant, source_position, revenue FROM {SOURCE_ACTIVITIES.call(arguments)} "
        "WHERE credited ORDER BY occurred_at",
        "TabSeparated",
    ).decode()
    assert credited.splitlines() == ["add_to_cart\tB\t3\t0", f"purchase\tB\t3\t{2 * 1999}"]


# -- queries -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zero_results", [False, True])
def test_queries(
    capsys: pytest.CaptureFixture[str], seeded: Any, events: list[shop.Event], zero_results: bool
) -> None:
    _, flags = seeded
    extra = ["--zero-results"] if zero_results else []
    got = report(capsys, flags, "queries", "--limit", "50", *extra, *MONTH)
    expected = responses.queries(events, zero_results=zero_results)
    rows = [
        {"query": q, **{k: pytest.approx(v, abs=1e-4) if isinstance(v, float) else v for k, v in f.items()}}
        for q, f in sorted(expected.items(), key=lambda kv: (-kv[1]["searches"], kv[0]))
    ]
    assert got == rows
    assert all(
        list(r) == ["query", "searches", "zero_results", "clicks", "ctr", "avg_click_position", "purchases"]
        for r in got
    )
    if zero_results:
        assert [r["query"] for r in got] == ["xyzzy"] and got[0]["clicks"] == 0
    else:
        # "Red Shoes" and "  red   SHOES " are one query; its searches led to purchases.
        assert "red shoes" in expected and expected["red shoes"]["purchases"] > 0
        assert len(got) == 4


def test_queries_sort_and_limit(
    capsys: pytest.CaptureFixture[str], seeded: Any, events: list[shop.Event]
) -> None:
    _, flags = seeded
    got = report(capsys, flags, "queries", "--sort", "clicks", "--limit", "2", *MONTH)
    expected = sorted(responses.queries(events).items(), key=lambda kv: (-kv[1]["clicks"], kv[0]))[:2]
    assert [(r["query"], r["clicks"]) for r in got] == [(q, f["clicks"]) for q, f in expected]


# -- experiment ------------------------------------------------------------------------------------------


def experiment_counts(experiments: list[shop.Event], name: str) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for variant in ("A", "B"):
        evs = [e for e in experiments if e.source_name == name and e.source_variant == variant]
        out[variant] = (sum(e.action == "click" for e in evs), sum(e.action == "impression" for e in evs))
    return out


def test_an_experiment_with_a_real_difference_is_significant(
    capsys: pytest.CaptureFixture[str], seeded: Any, experiments: list[shop.Event]
) -> None:
    _, flags = seeded
    got = report(capsys, flags, "experiment", "--name", "exp-real", *MONTH)
    (x0, n0), (x1, n1) = experiment_counts(experiments, "exp-real").values()
    assert n0 == n1 == 10_000
    assert [r["variant"] for r in got] == ["A", "B"]
    control, variant = got
    assert (control["impressions"], control["clicks"], variant["impressions"], variant["clicks"]) == (
        n0,
        x0,
        n1,
        x1,
    )
    assert control["note"] == "control" and control["p_value"] is None and control["lift"] is None
    assert [control["ctr_low"], control["ctr_high"]] == pytest.approx(responses.wilson(x0, n0), abs=1e-4)
    assert [variant["ctr_low"], variant["ctr_high"]] == pytest.approx(responses.wilson(x1, n1), abs=1e-4)
    assert variant["lift"] == pytest.approx((x1 / n1) / (x0 / n0) - 1, abs=1e-4)
    assert variant["p_value"] == pytest.approx(responses.z_test(x1, n1, x0, n0), rel=1e-6)
    # 5 % against 7 % over 10,000 impressions each: z is about 6.
    assert variant["p_value"] < 1e-5
    # No purchases in the experiment: the conversion cannot be tested, and the note says why.
    assert variant["conversion_p_value"] is None and "conversion: sample too small" in variant["note"]
    assert "ctr" not in variant["note"]


def test_an_experiment_without_a_difference_is_not(
    capsys: pytest.CaptureFixture[str], seeded: Any, experiments: list[shop.Event]
) -> None:
    _, flags = seeded
    got = report(capsys, flags, "experiment", "--name", "exp-null", *MONTH)
    (x0, n0), (x1, n1) = experiment_counts(experiments, "exp-null").values()
    expected = responses.z_test(x1, n1, x0, n0)
    assert got[1]["p_value"] == pytest.approx(expected, rel=1e-6)
    assert got[1]["p_value"] > 0.2
    # The control chosen: B against A turns the lift around, the p-value stays.
    swapped = report(capsys, flags, "experiment", "--name", "exp-null", "--control", "B", *MONTH)
    assert swapped[1]["note"] == "control" and swapped[0]["p_value"] == pytest.approx(expected, rel=1e-6)


def test_a_small_sample_is_said_to_be_too_small(
    capsys: pytest.CaptureFixture[str], seeded: Any, experiments: list[shop.Event]
) -> None:
    _, flags = seeded
    got = report(capsys, flags, "experiment", "--name", "exp-small", *MONTH)
    counts = experiment_counts(experiments, "exp-small")
    assert min(x for x, _ in counts.values()) < 5
    assert got[1]["p_value"] is None and "ctr: sample too small for the test" in got[1]["note"]
    missing = report(capsys, flags, "experiment", "--name", "exp-small", "--control", "Z", *MONTH)
    assert all(r["note"].startswith("no control: the variant Z has no activities") for r in missing)


# -- formats, charts, arguments ------------------------------------------------------------------------


def test_table_and_csv(capsys: pytest.CaptureFixture[str], seeded: Any) -> None:
    _, flags = seeded
    table = report(capsys, flags, "sources", "--by", "name", "--by", "variant", *MONTH, fmt="table")
    assert "┌─name─" in table and "variant" in table and "avg_click_position" in table
    text = report(capsys, flags, "experiment", "--name", "exp-real", *MONTH, fmt="csv")
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [r["variant"] for r in parsed] == ["A", "B"] and "p_value" in parsed[0]


@pytest.mark.parametrize(
    "args",
    [
        ["sources", "--by", "position"],
        ["sources", "--by", "name", "--by", "variant"],
        ["experiment", "--name", "exp-real"],
        ["queries"],
    ],
)
def test_charts_are_png_pictures(
    capsys: pytest.CaptureFixture[str], seeded: Any, tmp_path: Path, args: list[str]
) -> None:
    _, flags = seeded
    picture = tmp_path / "chart.png"
    report(capsys, flags, *args, *MONTH, "--chart", str(picture), fmt="table")
    data = picture.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sources", "--by", "day"], "--by: sources takes"),
        (["sources", "--by", "name", "--by", "name"], "--by: sources takes"),
        (["sources", "--name", "pdp-similar"], "give --by too"),
        (["sources", "--by", "type", "--type", "!"], "--type: not a source type"),
        (["funnel", "--by", "variant"], "--by: funnel takes one of"),
        (["overview", "--by", "name"], "overview takes none"),
        (["experiment"], "--name: experiment needs"),
        (["sources", "--chart", "x.png"], "has no chart without --by"),
    ],
)
def test_bad_arguments_are_named(
    capsys: pytest.CaptureFixture[str], seeded: Any, args: list[str], message: str
) -> None:
    _, flags = seeded
    assert main(["report", *args, *flags]) == 2
    assert message in capsys.readouterr().err


def test_every_view_leaves_the_bots_out_unless_asked(
    seeded: Any, events: list[shop.Event], experiments: list[shop.Event]
) -> None:
    store, _ = seeded
    given: dict[str, str | int | list[str]] = {
        "tenant_id": shop.TENANT,
        "since": "2026-10-01",
        "until": "2026-11-01",
        "window_s": 86400,
        "steps": ["impression", "click"],
        "by": "",
    }

    def count(sql: str) -> int:
        return int(store.query(sql, "TabSeparated"))

    for view in VIEWS:
        arguments = {p: given[p] for p, _, _ in view.parameters if p != "include_bots"}
        humans, everyone = (
            count(f"SELECT count() FROM {view.call({**arguments, 'include_bots': b})}") for b in (0, 1)
        )
        assert 0 < humans < everyone, view.name
    month = {p: given[p] for p in ("tenant_id", "since", "until")}
    assert count(f"SELECT countIf(is_bot) FROM {PERSON_ACTIVITIES.call({**month, 'include_bots': 0})}") == 0
    stored = shop.distinct(events + experiments)
    assert count(f"SELECT count() FROM {PERSON_ACTIVITIES.call({**month, 'include_bots': 1})}") == len(stored)
    assert count(f"SELECT count() FROM {PERSON_ACTIVITIES.call({**month, 'include_bots': 0})}") == len(
        shop.humans(stored)
    )


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["experiment", "--name", "nope"], "no impressions, views or clicks of responses named 'nope' from"),
        (["sources", "--by", "variant", "--name", "nope"], "of responses named 'nope' from 2026-10-01"),
    ],
)
def test_filters_that_match_nothing_say_so(
    capsys: pytest.CaptureFixture[str], seeded: Any, args: list[str], message: str, fmt: str
) -> None:
    _, flags = seeded
    assert main(["report", *args, *MONTH, "--format", fmt, *flags]) == 3
    out, err = capsys.readouterr()
    assert message in err and not out


def test_a_login_that_arrives_a_day_later_moves_the_credit_in_the_refreshed_figures(
    store: ClickHouseStore,
) -> None:
    # A visitor clicks a recommendation while anonymous and buys the next morning from another device as
    # the user; the login that links the two ids arrives the day after, once those days were refreshed.
    day = dt.date(2026, 11, 2)
    reco = {
        "source_id": "reco-9",
        "source_type": "recommendation",
        "source_name": "pdp-late",
        "source_variant": "A",
    }
    bought = {"quantity": 1, "price": 500, "currency": "EUR", "order_id": "o-9"}

    def event(
        action: str, at_s: int, session: str, anonymous: str, user: str = "", **extra: Any
    ) -> shop.Event:
        return shop.Event(
            shop.TENANT,
            action,
            "product",
            "sku-9",
            shop.ms_of(day, at_s),
            anonymous,
            user,
            session,
            "mobile",
            (),
            **extra,
        )

    before = [
        event("impression", 23 * 3600, "s-1", "a-1", source_position=2, **reco),
        event("click", 23 * 3600 + 5, "s-1", "a-1", source_position=2, **reco),
        event("purchase", 30 * 3600, "s-2", "a-9", "u-1", **bought),  # the next day
    ]
    login = dataclasses.replace(
        event("view", 2 * 86400, "s-3", "a-1", "u-1"), target_id="login", target_type="page"
    )
    request = Request("sources", dt.date(2026, 11, 1), dt.date(2026, 11, 30), group_by=("name",))

    def purchases() -> int:
        rows = [json.loads(line) for line in store.query(sources_by_sql(request), "JSONEachRow").splitlines()]
        assert [r["name"] for r in rows] == ["pdp-late"]
        return int(rows[0]["purchases"])

    shop.insert(store, before)
    refresh_aggregates(store.command, store.database, margin_s=0)
    assert purchases() == 0 and shop.attribution(before, 86400)[before[2].id] == ""
    shop.insert(store, [login])
    assert purchases() == 1  # the login's day and the days it can change are read from activities
    assert refresh_aggregates(store.command, store.database, margin_s=0).days > 0
    assert purchases() == 1  # ... and the refresh computed them again
    assert shop.attribution([*before, login], 86400)[before[2].id] == "reco-9"


def test_after_an_erasure_the_rebuilt_rollups_equal_the_rows_left(store: ClickHouseStore) -> None:
    events = responses.generate(seed=23, visitors=30)
    shop.insert(store, events)
    refresh_aggregates(store.command, store.database, margin_s=0)
    credited = shop.attribution(events, 86400)
    erased = next(e.anonymous_id for e in events if credited.get(e.id) and not e.is_bot)
    gone = [e for e in events if e.anonymous_id == erased]
    left = [e for e in events if e.anonymous_id != erased]
    store.command(f"DELETE FROM activities WHERE anonymous_id = {quote(erased)}")
    by = ["name", "variant"]
    request = Request("sources", FIRST, LAST, tenant=shop.TENANT, group_by=tuple(by))
    queries = Request("queries", FIRST, LAST, limit=50)

    def stored(r: Request, sql: str) -> list[dict[str, Any]]:
        return [numbers(json.loads(line)) for line in store.query(sql, "JSONEachRow").splitlines()]

    # The rollups still hold the erased person's figures (nothing touched their days) ...
    assert stored(request, sources_by_sql(request)) != approx_rows(responses.by_groups(left, by), by)
    days = sorted({shop.day_of(e.occurred_ms).isoformat() for e in gone})
    for rollup in SOURCE_ROLLUPS:
        condition = f"day IN ({', '.join(quote(d) for d in days)})"
        for statement in aggregate_rebuild_statements(store.database, rollup.name, shop.TENANT, condition):
            store.command(statement)
    # ... and after the rebuild of their days, what the activities left give.
    assert stored(request, sources_by_sql(request)) == approx_rows(responses.by_groups(left, by), by)
    expected = responses.queries(left)
    got = {r.pop("query"): r for r in stored(queries, queries_sql(queries))}
    assert got == {q: {k: pytest.approx(v, abs=1e-4) for k, v in f.items()} for q, f in expected.items()}
