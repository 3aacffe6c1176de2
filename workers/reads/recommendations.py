"""Recommendation strategies over the stored activities.

- `also_viewed`: the targets viewed by the people who viewed the given target, by how many of them did.
- `also_bought`: the same over purchases: targets bought by the people who bought the given target.
- `trending`: the targets with the most weighted activity (`workers.reads.profiles.WEIGHTS`) over the
  last two days, each activity halved for every TRENDING_HALF_LIFE_H hours of its age, so that a burst
  rises to the top within the hour and fades within a day.
- `recently_viewed`: the person's own views, newest first, each target once.
- `for_you`: targets in the categories and brands the person is drawn to (their affinities), by how
  popular they were over the last CO_DAYS days; `trending` for a person without affinities.

People are counted by `PERSON` (the user identity stitching resolved, else the user key); bots' activities
are left out. Already-bought targets are left out of `also_bought` and `for_you` for the asking person.
Blocking: run off the event loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from workers.reads.people import PERSON, Person, rows
from workers.reads.profiles import WEIGHT, Affinity, read_profile
from workers.storage.analytics_schema import quote
from workers.storage.contract import QueryEngine

STRATEGIES = ("also_viewed", "also_bought", "trending", "recently_viewed", "for_you")
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
CO_DAYS = 90
"""How far back the item-based strategies and for_you look."""
TRENDING_HOURS = 48
TRENDING_HALF_LIFE_H = 6


class StrategyError(ValueError):
    """A request a strategy cannot answer; `field` is the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Item:
    target_type: str
    target_id: str
    score: float


def _exclusions(tenant: str, person: Person | None, excluded: list[str], bought: bool) -> str:
    """SQL over (target_type, target_id): the targets not to recommend."""
    terms = []
    if excluded:
        terms.append(f"target_id NOT IN ({', '.join(map(quote, excluded))})")
    if bought and person is not None and person.person_id:
        terms.append(
            f"(target_type, target_id) NOT IN (SELECT target_type, target_id FROM ({person.activities()}) "
            "WHERE action = 'purchase')"
        )
    return " AND ".join(terms) or "1"


def query_items(engine: QueryEngine, sql: str) -> list[Item]:
    """The items of `sql` (columns target_type, target_id, score)."""
    return [
        Item(str(r["target_type"]), str(r["target_id"]), float(str(r["score"]))) for r in rows(engine, sql)
    ]


def _recent(tenant: str) -> str:
    return f"tenant_id = {quote(tenant)} AND NOT is_bot AND occurred_at >= now64(3) - INTERVAL {CO_DAYS} DAY"


def together_sql(tenant: str, action: str, target: tuple[str, str], exclude: str, limit: int) -> str:
    """Targets `action`-ed by the people who `action`-ed `target`, by how many of them did."""
    target_type, target_id = target
    base = f"{_recent(tenant)} AND action = {quote(action)}"
    return (
        f"SELECT target_type, target_id, uniqExact({PERSON}) AS score FROM activities "
        f"WHERE {base} AND {PERSON} IN (SELECT {PERSON} FROM activities WHERE {base} "
        f"AND target_type = {quote(target_type)} AND target_id = {quote(target_id)}) "
        f"AND NOT (target_type = {quote(target_type)} AND target_id = {quote(target_id)}) AND {exclude} "
        f"GROUP BY target_type, target_id ORDER BY score DESC, target_type, target_id LIMIT {limit}"
    )


def together_many_sql(tenant: str, action: str, seeds: list[tuple[str, str]], limit: int) -> str:
    """`together_sql` for each of `seeds` at once (no exclusions): two scans of the tenant's `action`s
    instead of two per seed. A row per seed with another target: seed_type, seed_id, and `items`, the
    best `limit` (target_type, target_id, score), best first (one array per seed: little to parse)."""
    base = f"{_recent(tenant)} AND action = {quote(action)}"
    listed = ", ".join(f"({quote(t)}, {quote(i)})" for t, i in seeds)
    seeders = f"FROM activities WHERE {base} AND (target_type, target_id) IN ({listed})"
    scored = (
        "SELECT seed_type, seed_id, target_type, target_id, uniqExact(person) AS score FROM "
        f"(SELECT {PERSON} AS person, target_type, target_id FROM activities WHERE {base} "
        f"AND {PERSON} IN (SELECT {PERSON} {seeders})) AS done "
        f"INNER JOIN (SELECT DISTINCT {PERSON} AS person, target_type AS seed_type, "
        f"target_id AS seed_id {seeders}) AS seeds USING person "
        "WHERE NOT (target_type = seed_type AND target_id = seed_id) "
        "GROUP BY seed_type, seed_id, target_type, target_id"
    )
    ranked = "arraySort(x -> (-x.3, x.1, x.2), groupArray((target_type, target_id, score)))"
    return (
        f"SELECT seed_type, seed_id, arraySlice({ranked}, 1, {limit}) AS items FROM ({scored}) "
        "GROUP BY seed_type, seed_id"
    )


def query_together(
    engine: QueryEngine, sql: str, seeds: list[tuple[str, str]]
) -> dict[tuple[str, str], list[Item]]:
    """The items of `together_many_sql` per seed; a seed nobody shares with others has none."""
    found: dict[tuple[str, str], list[Item]] = {seed: [] for seed in seeds}
    for line in engine.query(sql, "JSONCompactEachRow").splitlines():
        if line.strip():
            seed_type, seed_id, ranked = json.loads(line)
            found[(seed_type, seed_id)] = [Item(t, i, float(score)) for t, i, score in ranked]
    return found


def trending_sql(tenant: str, exclude: str, limit: int) -> str:
    decay = f"pow(0.5, dateDiff('second', occurred_at, now64(3)) / {TRENDING_HALF_LIFE_H * 3600})"
    return (
        f"SELECT target_type, target_id, sum({WEIGHT} * {decay}) AS score FROM activities "
        f"WHERE tenant_id = {quote(tenant)} AND NOT is_bot "
        f"AND occurred_at >= now64(3) - INTERVAL {TRENDING_HOURS} HOUR AND {exclude} "
        f"GROUP BY target_type, target_id HAVING score > 0 "
        f"ORDER BY score DESC, target_type, target_id LIMIT {limit}"
    )


def check(strategy: str, has_person: bool, target: tuple[str, str] | None) -> None:
    """StrategyError, naming the field, for a request `strategy` cannot answer."""
    if strategy not in STRATEGIES:
        raise StrategyError("strategy", f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if strategy in ("also_viewed", "also_bought") and (target is None or not target[0] or not target[1]):
        raise StrategyError("target", f"{strategy} needs the target being viewed (target.type and target.id)")
    if strategy in ("recently_viewed", "for_you") and not has_person:
        raise StrategyError(
            "user", f"{strategy} needs the person (one of user.user_id, anonymous_id, session_id)"
        )


def recommend(
    engine: QueryEngine,
    tenant: str,
    strategy: str,
    person: Person | None,
    target: tuple[str, str] | None,
    limit: int = DEFAULT_LIMIT,
    excluded: list[str] | None = None,
) -> list[Item]:
    """The items `strategy` recommends, best first; StrategyError for a request it cannot answer."""
    check(strategy, person is not None and bool(person.person_id), target)
    limit = max(1, min(limit or DEFAULT_LIMIT, MAX_LIMIT))
    excluded = list(excluded or [])
    if strategy in ("also_viewed", "also_bought"):
        assert target is not None
        action = "view" if strategy == "also_viewed" else "purchase"
        exclude = _exclusions(tenant, person, excluded, bought=strategy == "also_bought")
        return query_items(engine, together_sql(tenant, action, target, exclude, limit))
    if strategy == "trending":
        return query_items(
            engine, trending_sql(tenant, _exclusions(tenant, person, excluded, bought=False), limit)
        )
    assert person is not None
    if strategy == "recently_viewed":
        return query_items(
            engine,
            f"SELECT target_type, target_id, toUnixTimestamp64Milli(max(occurred_at)) / 1000 AS score "
            f"FROM ({person.activities()}) WHERE action = 'view' "
            f"AND {_exclusions(tenant, person, excluded, bought=False)} "
            f"GROUP BY target_type, target_id ORDER BY score DESC, target_type, target_id LIMIT {limit}",
        )
    # for_you
    exclude = _exclusions(tenant, person, excluded, bought=True)
    affinities = [a for a in read_profile(engine, person, 1).affinities if a.kind in ("category", "brand")]
    if not affinities:
        return query_items(engine, trending_sql(tenant, exclude, limit))
    return query_items(engine, _for_you(tenant, affinities, exclude, limit))


def popularity_sql(tenant: str, limit: int) -> str:
    """Every target with activity over CO_DAYS days, with its most specific category, its brand and how
    many people took to it: what `for_you` ranks, read whole (at most `limit` rows)."""
    return (
        f"SELECT target_type, target_id, "
        f"if(empty(target_category_path), '', toString(target_category_path[-1])) AS category, "
        f"toString(target_brand) AS brand, uniqExact({PERSON}) AS people FROM activities "
        f"WHERE {_recent(tenant)} GROUP BY target_type, target_id, category, brand LIMIT {limit}"
    )


def _affinity(expression: str, affinities: list[Affinity], kind: str) -> str:
    """SQL: the person's affinity to the value of `expression` (a category or a brand), else 0."""
    chosen = [a for a in affinities if a.kind == kind]
    if not chosen:
        return "0."
    values = ", ".join(quote(a.value) for a in chosen)
    scores = ", ".join(repr(float(a.score)) for a in chosen)
    return f"transform({expression}, [{values}], [{scores}], 0.)"


def _for_you(tenant: str, affinities: list[Affinity], exclude: str, limit: int) -> str:
    """Targets of the person's categories and brands: how many people took to them over CO_DAYS days,
    times the person's affinity to their category plus that to their brand."""
    category = _affinity(
        "if(empty(target_category_path), '', target_category_path[-1])", affinities, "category"
    )
    brand = _affinity("toString(target_brand)", affinities, "brand")
    return (
        f"SELECT target_type, target_id, uniqExact(person) * (max(category) + max(brand)) AS score FROM ("
        f"  SELECT target_type, target_id, {PERSON} AS person, {category} AS category, {brand} AS brand "
        f"  FROM activities WHERE {_recent(tenant)} AND {exclude}"
        f") WHERE category > 0 OR brand > 0 "
        f"GROUP BY target_type, target_id ORDER BY score DESC, target_type, target_id LIMIT {limit}"
    )
