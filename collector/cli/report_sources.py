"""The reports over search and recommendation responses: `sources --by`, `experiment` and `queries`.

Each is one SQL statement over the views `source_activities` and `search_responses`
(`workers.storage.analytics_schema`), like the other reports, so that every output format comes from
the engine. The experiment's statistics are computed in that statement too (the engine has `erfc`):

- the 95 % confidence interval of a rate is Wilson's score interval, which stays inside [0, 1] and
  keeps its coverage for small counts and rates near 0 (where the textbook p ± 1.96·se does not);
- a variant is compared with the control by a two-sided two-proportion z-test with a pooled
  proportion: z = (p1 - p0) / sqrt(p(1 - p)(1/n1 + 1/n0)), p-value = erfc(|z| / √2);
- the normal approximation behind the test needs enough successes and failures: a test is made only
  when each of the two variants has at least `MIN_OUTCOMES` of both, and the `note` column says so
  otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.storage.analytics_schema import SEARCH_RESPONSES, SOURCE_ACTIVITIES, quote
from workers.storage.source_rollups import (
    RESPONSE_FIGURES,
    SOURCE_FIGURES,
    WINDOW_S,
    SourceRollup,
    unrefreshed_days_sql,
)

if TYPE_CHECKING:
    from pathlib import Path

    from collector.cli.report import Request
    from workers.storage.session_rollups import SessionRollup

SOURCES_BY = {
    "type": "source_type",
    "name": "source_name",
    "variant": "source_variant",
    "position": "source_position",
}
"""`--by` of `report sources`: the group key (also its JSON key) and the column of `source_activities`."""
QUERIES_SORT = ("searches", "zero_results", "clicks", "ctr", "purchases", "query")
MIN_OUTCOMES = 5
"""Successes and failures each variant needs before a z-test is made (the usual rule for the normal
approximation: n·p and n·(1 - p) at least 5)."""
Z_95 = 1.959963984540054
"""The standard normal quantile of 0.975: two-sided 95 %."""

_CLICK_POSITION = "action = 'click' AND source_position > 0"
_FIGURES = f"""countIf(action = 'impression') AS impressions,
    countIf(action = 'click') AS clicks,
    countIf(action = 'add_to_cart') AS add_to_carts,
    countIf(action = 'purchase') AS purchases,
    sumMapIf(map(toString(currency), revenue), action = 'purchase' AND revenue != 0) AS revenue,
    countIf({_CLICK_POSITION}) AS positioned_clicks,
    sumIf(source_position, {_CLICK_POSITION}) AS click_position_sum"""
_RATES = """if(impressions = 0, 0, round(clicks / impressions, 4)) AS ctr,
  if(clicks = 0, 0, round(purchases / clicks, 4)) AS conversion,
  if(positioned_clicks = 0, 0, round(click_position_sum / positioned_clicks, 2)) AS avg_click_position"""


# The figures of `_FIGURES` summed over the rows of the rollup `source_figures_daily` (aliased `s`).
_ROLLED_FIGURES = """sum(s.impressions) AS impressions,
    sum(s.clicks) AS clicks,
    sum(s.add_to_carts) AS add_to_carts,
    sum(s.purchases) AS purchases,
    sumMap(s.revenue) AS revenue,
    sum(s.positioned_clicks) AS positioned_clicks,
    sum(s.click_position_sum) AS click_position_sum"""
# A group exists when the responses had an activity in it, as in `source_activities`: the rollup also
# keeps rows of zeros for keys whose credit moved elsewhere.
_ANY_FIGURE = "sum(s.impressions + s.views + s.clicks + s.add_to_carts + s.purchases) > 0"


def reads_rollups(r: Request) -> bool:
    """Whether the rollups answer `r` (and whether the rollup tables alone do, once
    `rollups_current_sql` said so): the top targets' always (bots are a key of it); the sessions' and
    the responses' leave bots out, and the responses' attribute within WINDOW_S only; any other request
    reads the views over `activities`."""
    if r.name == "top-targets":
        return True
    if r.include_bots:
        return False
    return r.name in ("overview", "sessions") or (
        r.name in ("sources", "experiment", "queries") and r.window_s == WINDOW_S
    )


def rollups_current_sql(r: Request) -> str:
    """1 when no day of the range awaits the refresh of the rollups, else 0: the report then reads
    the rollup tables alone (planning the views' computation of the other days costs more than
    reading a month of the rollups)."""
    first, last = quote(r.first_day.isoformat()), quote(r.last_day.isoformat())
    return (
        f"SELECT count() = 0 FROM ({unrefreshed_days_sql()}) "
        f"WHERE {r.tenant_filter()} AND day >= toDate({first}) AND day <= toDate({last})"
    )


def rollup_table(r: Request, rollup: SourceRollup | SessionRollup) -> str:
    """What a report reads of `rollup`, as `s`: the table alone when the range is in it, else the view."""
    return f"{rollup.rollup} AS s FINAL" if r.rollups_current else f"{rollup.name} AS s"


def _rollup_range(r: Request) -> str:
    first, last = quote(r.first_day.isoformat()), quote(r.last_day.isoformat())
    return f"{r.tenant_filter()} AND s.day >= toDate({first}) AND s.day <= toDate({last})"


def _grouped_figures(r: Request, keys: str, names: str, where: str) -> str:
    """`keys` (expressions with their aliases `names`) and the `_FIGURES` of each, for the responses
    that satisfy `where`: from the rollup when it answers `r`, else from `source_activities`."""
    if reads_rollups(r):
        return f"""SELECT {keys},
    {_ROLLED_FIGURES}
  FROM {rollup_table(r, SOURCE_FIGURES)}
  WHERE {_rollup_range(r)} AND {where}
  GROUP BY {names}
  HAVING {_ANY_FIGURE}"""
    return f"""SELECT {keys},
    {_FIGURES}
  FROM {SOURCE_ACTIVITIES.call(_arguments(r))}
  WHERE {where}
  GROUP BY {names}"""


def _arguments(r: Request) -> dict[str, str | int | list[str]]:
    return {**r.range_arguments(), "window_s": r.window_s}


def _filters(r: Request) -> str:
    conditions = ["1"]
    if r.source_type:
        conditions.append(f"source_type = {quote(r.source_type)}")
    if r.source_name:
        conditions.append(f"source_name = {quote(r.source_name)}")
    return " AND ".join(conditions)


def sources_by_sql(r: Request) -> str:
    """Per group of `--by` (type, name, variant, position): impressions, clicks, click-through, the
    add-to-carts, purchases and revenue attributed to the group's responses, purchases per click and
    the average position clicked."""
    keys = ", ".join(f"{SOURCES_BY[k]} AS {k}" for k in r.group_by)
    names = ", ".join(r.group_by)
    return f"""SELECT {names}, impressions, clicks, ctr, add_to_carts, purchases, revenue, conversion,
  avg_click_position
FROM (
  SELECT *,
    {_RATES}
  FROM (
  {_grouped_figures(r, keys, names, _filters(r))}
  )
)
ORDER BY {names}"""


def _wilson(successes: str, trials: str, sign: str) -> str:
    """One end (`sign` '-' or '+') of the 95 % Wilson score interval of successes / trials; NULL when
    there are no trials or more successes than trials (purchases can outnumber clicks)."""
    z, z2 = Z_95, Z_95 * Z_95
    p = f"({successes} / {trials})"
    return (
        f"if({trials} = 0 OR {successes} > {trials}, NULL, round(({p} + {z2} / (2 * {trials}) {sign} "
        f"{z} * sqrt({p} * (1 - {p}) / {trials} + {z2} / (4 * {trials} * {trials}))) "
        f"/ (1 + {z2} / {trials}), 4))"
    )


def _testable(x1: str, n1: str, x0: str, n0: str) -> str:
    counts = (x1, f"{n1} - {x1}", x0, f"{n0} - {x0}")
    return f"least({', '.join(f'toInt64({c})' for c in counts)}) >= {MIN_OUTCOMES}"


def _p_value(x1: str, n1: str, x0: str, n0: str) -> str:
    """Two-sided p-value of the pooled two-proportion z-test of x1/n1 against x0/n0."""
    pooled = f"(({x1} + {x0}) / ({n1} + {n0}))"
    z = f"(({x1} / {n1} - {x0} / {n0}) / sqrt({pooled} * (1 - {pooled}) * (1 / {n1} + 1 / {n0})))"
    return f"if(is_control OR NOT {_testable(x1, n1, x0, n0)}, NULL, erfc(abs({z}) / sqrt(2)))"


def _lift(x1: str, n1: str, x0: str, n0: str) -> str:
    """Relative lift of the rate x1/n1 over the control's x0/n0."""
    return (
        f"if(is_control OR NOT {_testable(x1, n1, x0, n0)}, NULL, "
        f"round(({x1} / {n1}) / ({x0} / {n0}) - 1, 4))"
    )


def experiment_sql(r: Request) -> str:
    """Per variant of the responses named `--name`: the figures of `sources --by variant`, 95 %
    confidence intervals of ctr and conversion, and against the control (`--control`, else the first
    variant by name) the relative lift and the two-sided p-value of a two-proportion z-test, for the
    click-through (`lift`, `p_value`) and for purchases per click (`conversion_lift`,
    `conversion_p_value`). `note` says which variant is the control and when a sample is too small."""
    # One pass over the activities: the variants are grouped, then the control's counts are spread to
    # every row by window functions over those few rows.
    control = quote(r.control) if r.control else "min(variant) OVER ()"
    named = f"source_name = {quote(r.source_name)}"
    too_small = (
        f"sample too small for the test (each variant needs {MIN_OUTCOMES} {{what}} and {MIN_OUTCOMES} "
        "{without})"
    )
    ctr_small = quote("ctr: " + too_small.format(what="clicks", without="impressions without a click"))
    conversion_small = quote(
        "conversion: " + too_small.format(what="purchases", without="clicks without a purchase")
    )
    ctr_test = _testable("clicks", "impressions", "c_clicks", "c_impressions")
    conversion_test = _testable("purchases", "clicks", "c_purchases", "c_clicks")
    missing = quote("no control: the variant ") + " || control || " + quote(" has no activities")
    controls = ",\n    ".join(
        f"sumIf({c}, is_control) OVER () AS c_{c}" for c in ("impressions", "clicks", "purchases")
    )
    return f"""SELECT variant, impressions, clicks, ctr, ctr_low, ctr_high, add_to_carts, purchases, revenue,
  conversion, conversion_low, conversion_high, avg_click_position, lift, p_value, conversion_lift,
  conversion_p_value, note
FROM (
  SELECT *,
    {_RATES},
    {_wilson("clicks", "impressions", "-")} AS ctr_low,
    {_wilson("clicks", "impressions", "+")} AS ctr_high,
    {_wilson("purchases", "clicks", "-")} AS conversion_low,
    {_wilson("purchases", "clicks", "+")} AS conversion_high,
    {_lift("clicks", "impressions", "c_clicks", "c_impressions")} AS lift,
    {_p_value("clicks", "impressions", "c_clicks", "c_impressions")} AS p_value,
    {_lift("purchases", "clicks", "c_purchases", "c_clicks")} AS conversion_lift,
    {_p_value("purchases", "clicks", "c_purchases", "c_clicks")} AS conversion_p_value,
    multiIf(
      found = 0, {missing},
      is_control, 'control',
      arrayStringConcat(arrayFilter(s -> s != '', [
        if({ctr_test}, '', {ctr_small}),
        if({conversion_test}, '', {conversion_small})]), '; ')) AS note
  FROM (
    SELECT *,
      {controls},
      countIf(is_control) OVER () AS found
    FROM (
      SELECT *, {control} AS control, variant = control AS is_control
      FROM (
        {_grouped_figures(r, "toString(source_variant) AS variant", "variant", named)}
      )
    )
  )
)
ORDER BY variant"""


def queries_sql(r: Request) -> str:
    """Per normalised query of the searches: searches, those that found nothing, the clicks on their
    responses, click-through (clicks / searches), average position clicked and the purchases
    attributed to their responses."""
    only_zero = "WHERE result_count = 0" if r.zero_results else ""
    order = "query" if r.sort == "query" else f"{r.sort} DESC, query"
    return f"""SELECT query, n_searches AS searches, n_zero_results AS zero_results, n_clicks AS clicks,
  if(n_searches = 0, 0, round(n_clicks / n_searches, 4)) AS ctr,
  if(n_positioned = 0, 0, round(n_position_sum / n_positioned, 2)) AS avg_click_position,
  n_purchases AS purchases
FROM (
  SELECT query,
    sum(searches) AS n_searches,
    sumIf(searches, result_count = 0) AS n_zero_results,
    sum(clicks) AS n_clicks,
    sum(positioned_clicks) AS n_positioned,
    sum(click_position_sum) AS n_position_sum,
    sum(purchases) AS n_purchases
  FROM {_search_responses(r)}
  {only_zero}
  GROUP BY query
)
ORDER BY {order}
LIMIT {r.limit}"""


def _search_responses(r: Request) -> str:
    """The `search_responses` of the range: from the rollup `response_figures_daily` when it answers
    `r` (its rows of a response summed over the days), else the view."""
    if not reads_rollups(r):
        return SEARCH_RESPONSES.call(_arguments(r))
    return f"""(
    SELECT s.tenant_id, s.source_id,
      anyIf(s.query, s.searches > 0) AS query,
      sum(s.searches) AS searches,
      anyIf(s.result_count, s.searches > 0) AS result_count,
      sum(s.clicks) AS clicks,
      sum(s.positioned_clicks) AS positioned_clicks,
      sum(s.click_position_sum) AS click_position_sum,
      sum(s.purchases) AS purchases
    FROM {rollup_table(r, RESPONSE_FIGURES)}
    WHERE {_rollup_range(r)} AND s.source_id != ''
    GROUP BY s.tenant_id, s.source_id
    HAVING searches > 0
  )"""


# -- charts ------------------------------------------------------------------------------------------


def _label(row: dict[str, Any], keys: tuple[str, ...]) -> str:
    return " / ".join(str(row[k]) or "(none)" for k in keys)


def sources_chart(r: Request, rows: list[dict[str, Any]], path: Path) -> None:
    """CTR by position as a line; any other grouping as bars of ctr and conversion per group."""
    from collector.cli import charts

    title = f"Sources by {', '.join(r.group_by)} {r.first_day} to {r.last_day}"
    rates = {k: [float(row[k]) for row in rows] for k in ("ctr", "conversion")}
    if r.group_by == ("position",):
        charts.rate_line(path, title, [int(row["position"]) for row in rows], rates, "position")
    else:
        charts.rate_bars(path, title, [_label(row, r.group_by) for row in rows], rates)


def experiment_chart(r: Request, rows: list[dict[str, Any]], path: Path) -> None:
    """Bars of ctr and conversion per variant, with their 95 % intervals."""
    from collector.cli import charts

    def number(value: Any) -> float:
        return float(value) if value is not None else 0.0

    rates = {k: [number(row[k]) for row in rows] for k in ("ctr", "conversion")}
    intervals = {
        k: [(number(row[f"{k}_low"]), number(row[f"{k}_high"])) for row in rows]
        for k in ("ctr", "conversion")
    }
    labels = [row["variant"] or "(none)" for row in rows]
    charts.rate_bars(
        path, f"Experiment {r.source_name} {r.first_day} to {r.last_day}", labels, rates, intervals
    )


def queries_chart(r: Request, rows: list[dict[str, Any]], path: Path) -> None:
    """Bars of the click-through per query."""
    from collector.cli import charts

    rates = {"ctr": [float(row["ctr"]) for row in rows]}
    charts.rate_bars(path, f"Searches {r.first_day} to {r.last_day}", [row["query"] for row in rows], rates)
