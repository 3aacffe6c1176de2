"""Every SQL example of docs/analytics.md runs as written, and the worked queries for the four goals
return what the generated shop's activities say, computed in Python."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
import shop

from workers.storage.clickhouse import ClickHouseStore

pytestmark = pytest.mark.timeout(60)

DOC = Path(__file__).resolve().parents[1] / "docs" / "analytics.md"
BLOCKS = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)
NAMED = {m[1]: block for block in BLOCKS if (m := re.match(r"-- query: ([\w-]+)\n", block))}
# The queries over search and recommendation responses run on a shop that has them (tests/responses.py).
ON_RESPONSES = {
    "ctr-by-widget-and-variant",
    "ctr-by-position",
    "revenue-by-widget",
    "experiment-z-test",
    "searches-per-query",
    "zero-result-searches",
}


@pytest.fixture(scope="module")
def events() -> list[shop.Event]:
    generated = shop.generate(seed=99)
    return [dataclasses.replace(e, tenant="default") for e in generated.events if e.tenant == shop.TENANT]


@pytest.fixture(scope="module")
def docs_store(engine_dir: Path, events: list[shop.Event]) -> Iterator[ClickHouseStore]:
    database = f"docs_{uuid.uuid4().hex[:12]}"
    store = ClickHouseStore(f"chdb://{engine_dir}", database, connections=1)
    shop.insert(store, events)
    shop.insert(store, events[:50])  # a retry: the answers do not change
    yield store
    store.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    store.close()


@pytest.fixture(scope="module")
def response_events() -> list[shop.Event]:
    return [dataclasses.replace(e, tenant="default") for e in responses.generate(seed=99)]


@pytest.fixture(scope="module")
def responses_store(engine_dir: Path, response_events: list[shop.Event]) -> Iterator[ClickHouseStore]:
    """The shop of responses, crawlers and all, some activities resent."""
    database = f"docs_responses_{uuid.uuid4().hex[:12]}"
    store = ClickHouseStore(f"chdb://{engine_dir}", database, connections=1)
    shop.insert(store, response_events)
    shop.insert(store, response_events[::7])
    yield store
    store.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    store.close()


def run(store: ClickHouseStore, sql: str) -> list[dict[str, Any]]:
    text = store.query(sql.strip().rstrip(";"), "JSONEachRow").decode()
    rows = [json.loads(line) for line in text.splitlines()]
    return [{k: _number(v) for k, v in r.items()} for r in rows]


def _number(v: Any) -> Any:
    if isinstance(v, str) and re.fullmatch(r"-?\d+", v):
        return int(v)
    return v


def day(e: shop.Event) -> str:
    return shop.day_of(e.occurred_ms).isoformat()


def test_the_doc_names_its_worked_queries() -> None:
    assert len(BLOCKS) >= len(NAMED) >= 13 + len(ON_RESPONSES)
    assert set(NAMED) >= ON_RESPONSES


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_every_example_runs_and_answers(request: pytest.FixtureRequest, number: int) -> None:
    on_responses = any(BLOCKS[number] == NAMED[name] for name in ON_RESPONSES)
    store = request.getfixturevalue("responses_store" if on_responses else "docs_store")
    assert run(store, BLOCKS[number]), BLOCKS[number]


def approx(x: float) -> Any:
    return pytest.approx(x, abs=1e-3)


def test_activities_per_day(docs_store: ClickHouseStore, events: list[shop.Event]) -> None:
    groups: dict[tuple[str, str], list[shop.Event]] = defaultdict(list)
    for e in events:
        groups[(day(e), e.action)].append(e)
    expected = [
        {"day": d, "action": a, "n": len(evs), "people": len({e.user_key for e in evs})}
        for (d, a), evs in sorted(groups.items())
    ]
    assert run(docs_store, NAMED["activities-per-day"]) == expected


def test_top_targets_per_user(docs_store: ClickHouseStore, events: list[shop.Event]) -> None:
    views: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        if e.action == "view" and e.target_type == "product":
            views[e.user_key][e.target_id] += 1
    expected = []
    for user in sorted(views):
        ranked = sorted(views[user].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        expected += [{"user_key": user, "target_id": t, "views": n} for t, n in ranked]
    assert run(docs_store, NAMED["top-targets-per-user"]) == expected


def test_co_viewed(docs_store: ClickHouseStore, events: list[shop.Event]) -> None:
    pairs: Counter[tuple[str, str]] = Counter()
    for s in shop.sessions(events):
        viewed = {e.target_id for e in s.events if e.action == "view" and e.target_type == "product"}
        pairs.update((a, b) for a in viewed for b in viewed if a != b)
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    expected = [{"product": a, "also_viewed": b, "sessions": n} for (a, b), n in ranked]
    assert run(docs_store, NAMED["co-viewed"]) == expected
    assert expected


def test_revenue_by_source(docs_store: ClickHouseStore, events: list[shop.Event]) -> None:
    attributed = shop.attribution(events, 86400)
    groups: dict[tuple[str, str], list[shop.Event]] = defaultdict(list)
    for e in events:
        if e.action in ("add_to_cart", "purchase"):
            groups[(attributed[e.id], e.currency)].append(e)
    expected = [
        {
            "source_id": source,
            "currency": currency,
            "add_to_carts": sum(e.action == "add_to_cart" for e in evs),
            "purchases": sum(e.action == "purchase" for e in evs),
            "revenue_minor": sum(e.revenue for e in evs if e.action == "purchase"),
        }
        for (source, currency), evs in groups.items()
    ]
    expected.sort(key=lambda r: (-r["purchases"], r["source_id"], r["currency"]))
    assert run(docs_store, NAMED["revenue-by-source"]) == expected


def test_ctr_per_source(docs_store: ClickHouseStore, events: list[shop.Event]) -> None:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        if e.source_id:
            counts[e.source_id][e.action] += 1
    expected = [
        {"source_id": s, "views": c["view"], "clicks": c["click"], "ctr": approx(c["click"] / c["view"])}
        for s, c in counts.items()
        if c["view"]
    ]
    expected.sort(key=lambda r: (-r["clicks"], r["source_id"]))
    assert run(docs_store, NAMED["ctr-per-source"]) == expected[:20]


def test_with_and_without_source(docs_store: ClickHouseStore, events: list[shop.Event]) -> None:
    groups: dict[bool, list[shop.Session]] = defaultdict(list)
    for s in shop.sessions(events):
        groups[any(e.source_id for e in s.events)].append(s)
    expected = [
        {
            "sourced": sourced,
            "sessions": len(sess),
            "converted_sessions": sum(s.purchases > 0 for s in sess),
            "conversion": approx(sum(s.purchases > 0 for s in sess) / len(sess)),
        }
        for sourced, sess in sorted(groups.items())
    ]
    assert run(docs_store, NAMED["with-and-without-source"]) == expected


def test_funnel_by_device(docs_store: ClickHouseStore, events: list[shop.Event]) -> None:
    counts = shop.funnel(events, ["view", "add_to_cart", "purchase"], 86400, "device_type")
    expected = [
        {"device_type": d, "viewed": c[0], "added": c[1], "bought": c[2]} for d, c in sorted(counts.items())
    ]
    assert run(docs_store, NAMED["funnel-by-device"]) == expected


def test_converting_products(docs_store: ClickHouseStore, events: list[shop.Event]) -> None:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        if e.target_type == "product":
            counts[e.target_id][e.action] += 1
    expected = [
        {
            "target_id": t,
            "views": c["view"],
            "purchases": c["purchase"],
            "purchases_per_view": approx(c["purchase"] / c["view"]),
        }
        for t, c in counts.items()
        if c["view"]
    ]
    expected.sort(key=lambda r: (-r["purchases"], -r["views"], r["target_id"]))
    assert run(docs_store, NAMED["converting-products"]) == expected[:10]


def test_revenue_per_day(docs_store: ClickHouseStore, events: list[shop.Event]) -> None:
    revenue: Counter[tuple[str, str]] = Counter()
    for e in events:
        if e.action == "purchase":
            revenue[(day(e), e.currency)] += e.revenue
    expected = [{"day": d, "currency": c, "revenue_minor": r} for (d, c), r in sorted(revenue.items())]
    assert run(docs_store, NAMED["revenue-per-day"]) == expected


def test_returning_users(docs_store: ClickHouseStore, events: list[shop.Event]) -> None:
    visits = Counter(s.events[-1].user_key for s in shop.sessions(events))
    returning = sum(n > 1 for n in visits.values())
    expected = [{"users": len(visits), "returning": returning, "share": approx(returning / len(visits))}]
    assert run(docs_store, NAMED["returning-users"]) == expected
    assert 0 < returning < len(visits)


def test_sessions_by_device_and_depth(docs_store: ClickHouseStore, events: list[shop.Event]) -> None:
    sessions = shop.sessions(events)
    by_device = Counter(s.events[0].device_type for s in sessions)
    got = run(docs_store, NAMED["sessions-by-device"])
    assert {r["device_type"]: r["sessions"] for r in got} == dict(by_device)
    depth = Counter(min(len(s.events), 10) for s in sessions)
    got = run(docs_store, NAMED["depth-and-conversion"])
    assert {r["depth"]: r["sessions"] for r in got} == dict(depth)
    entries = Counter(s.events[0].target for s in sessions)
    got = run(docs_store, NAMED["entry-targets"])
    assert sum(r["sessions"] for r in got) <= len(sessions)
    for r in got:
        assert r["sessions"] == entries[(r["entry_target_type"], r["entry_target_id"])]


def test_dates_in_the_examples_are_the_generated_month() -> None:
    assert dt.date(2026, 10, 1) == shop.FIRST_DAY and shop.DAYS == 31


# -- the responses ---------------------------------------------------------------------------------


def test_ctr_by_widget_and_variant(
    responses_store: ClickHouseStore, response_events: list[shop.Event]
) -> None:
    groups = responses.by_groups(response_events, ["type", "name", "variant"])
    expected = [
        {
            "source_name": name,
            "source_variant": variant,
            "impressions": f["impressions"],
            "clicks": f["clicks"],
            "ctr": approx(f["ctr"]),
            "purchases": f["purchases"],
            "conversion": approx(f["conversion"]),
        }
        for (kind, name, variant), f in sorted(groups.items())
        if kind == "recommendation" and f["impressions"]
    ]
    assert run(responses_store, NAMED["ctr-by-widget-and-variant"]) == expected
    assert len(expected) == 3


def test_ctr_by_position(responses_store: ClickHouseStore, response_events: list[shop.Event]) -> None:
    groups = responses.by_groups(response_events, ["position"])
    expected = [
        {"position": p, "impressions": f["impressions"], "clicks": f["clicks"], "ctr": approx(f["ctr"])}
        for (p,), f in sorted(groups.items())
        if p and f["impressions"]
    ]
    assert run(responses_store, NAMED["ctr-by-position"]) == expected
    # Shoppers click the top of the list more often.
    assert expected[0]["ctr"] != expected[-1]["ctr"]


def test_revenue_by_widget(responses_store: ClickHouseStore, response_events: list[shop.Event]) -> None:
    totals: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for e, touch in responses.credited(response_events, 86400):
        if e.action == "purchase":
            row = totals[(touch.source_type, touch.source_name, e.currency)]
            row[0] += 1
            row[1] += e.revenue
    expected = [
        {"source_type": t, "source_name": n, "currency": c, "purchases": p, "revenue_minor": r}
        for (t, n, c), (p, r) in sorted(totals.items())
    ]
    assert run(responses_store, NAMED["revenue-by-widget"]) == expected


def test_experiment_z_test(responses_store: ClickHouseStore, response_events: list[shop.Event]) -> None:
    groups = responses.by_groups(response_events, ["name", "variant"])
    a, b = groups[("pdp-similar", "A")], groups[("pdp-similar", "B")]
    [got] = run(responses_store, NAMED["experiment-z-test"])
    assert (got["variant"], got["impressions"], got["clicks"]) == ("B", b["impressions"], b["clicks"])
    expected = responses.z_test(b["clicks"], b["impressions"], a["clicks"], a["impressions"])
    assert got["p_value"] == pytest.approx(expected, rel=1e-3)


def test_searches_per_query(responses_store: ClickHouseStore, response_events: list[shop.Event]) -> None:
    per_query = responses.queries(response_events)
    expected = [
        {
            "query": q,
            "n": f["searches"],
            "clicked": f["clicks"],
            "ctr": approx(f["ctr"]),
            "bought": f["purchases"],
        }
        for q, f in sorted(per_query.items(), key=lambda kv: (-kv[1]["searches"], kv[0]))
    ]
    assert run(responses_store, NAMED["searches-per-query"]) == expected
    nothing = responses.queries(response_events, zero_results=True)
    assert run(responses_store, NAMED["zero-result-searches"]) == [
        {"query": q, "n": f["searches"]}
        for q, f in sorted(nothing.items(), key=lambda kv: (-kv[1]["searches"], kv[0]))
    ]
