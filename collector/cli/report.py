"""`activity-collector report NAME`: the common analytics questions, answered without writing SQL.

Each report is one SQL statement over the aggregates and views of `workers.storage.analytics_schema`, run like
`sql` (through a running server's control socket, or on the engine opened here), printed in the chosen
ClickHouse output format. `--chart FILE.png` draws the time series, the funnel or the rates per
group as well. The reports over search and recommendation responses are in `report_sources`.

Dates are UTC days; `--from` and `--to` are both included. The default range is the 30 days that end
today. A range without activities prints no report but says so, with the days the stored activities
span (exit status 3), rather than a month of zeros or nothing at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.cli.common import FORMATS, Configuration, Subparsers, query_clickhouse, store_flags
from collector.cli.report_sources import (
    QUERIES_SORT,
    SOURCES_BY,
    experiment_chart,
    experiment_sql,
    queries_chart,
    queries_sql,
    reads_rollups,
    rollup_table,
    rollups_current_sql,
    sources_by_sql,
    sources_chart,
)
from collector.config import Settings
from core.normalize import normalize_action, normalize_source_type
from workers.storage.analytics_schema import (
    CREDITED_ACTIVITIES,
    FUNNEL,
    MAX_FUNNEL_STEPS,
    MEASURE,
    REVENUE,
    SESSIONS,
    quote,
)
from workers.storage.session_rollups import SESSION_FIGURES
from workers.storage.source_rollups import RESPONSE_FIGURES, WINDOW_S

DEFAULT_DAYS = 30
NOTHING_IN_RANGE = 3
"""The exit status of a report over a range without activities."""
EXIT_STATUSES = """exit status: 0 the report was printed; 1 the store failed; 2 bad arguments; 3 no
activities in the range (the message says which days the stored activities span), or none that the
filters of experiment, queries or sources --by match."""
DEFAULT_WINDOW_S = WINDOW_S
"""Attribution window: that of the rollups, which answer the reports over responses within it."""
FUNNEL_BY = ("day", "device_type", "segment")


class ReportError(ValueError):
    """A report was asked for with arguments it cannot take; the message says which."""


@dataclass(frozen=True)
class Request:
    """What a report is asked: the filters shared by every report and the report's own options."""

    name: str
    first_day: dt.date
    last_day: dt.date
    tenant: str = ""
    steps: tuple[str, ...] = ("view", "add_to_cart", "purchase")
    window_s: int = DEFAULT_WINDOW_S
    by: str = ""
    action: str = "purchase"
    limit: int = 10
    include_bots: bool = False
    """Keep the activities flagged `is_bot`; every report leaves them out by default."""
    group_by: tuple[str, ...] = ()
    """sources: the `--by` keys (type, name, variant, position), in order; empty for one row per source id."""
    source_type: str = ""
    source_name: str = ""
    control: str = ""
    zero_results: bool = False
    sort: str = "searches"
    rollups_current: bool = False
    """Every day of the range is in the rollups (`rollups_current_sql` said so): the reports that read
    them (`reads_rollups`) read the rollup tables alone, not the views that compute the other days."""

    @property
    def since(self) -> str:
        return f"{self.first_day.isoformat()} 00:00:00"

    @property
    def until(self) -> str:
        return f"{(self.last_day + dt.timedelta(days=1)).isoformat()} 00:00:00"

    def range_arguments(self) -> dict[str, str | int | list[str]]:
        return {
            "tenant_id": self.tenant,
            "since": self.since,
            "until": self.until,
            "include_bots": int(self.include_bots),
        }

    def tenant_filter(self) -> str:
        return "1" if not self.tenant else f"tenant_id = {quote(self.tenant)}"

    def day_fill(self) -> str:
        first = quote(self.first_day.isoformat())
        after = quote((self.last_day + dt.timedelta(days=1)).isoformat())
        return f"WITH FILL FROM toDate({first}) TO toDate({after})"


_ACTIVITIES = MEASURE["activities"]
_USERS = MEASURE["users"]
_ITEMS = MEASURE["items"]
_REVENUE = MEASURE["revenue"]


def aggregate_filter(r: Request) -> str:
    """The tenant and, unless `include_bots`, the humans only: the aggregates key both."""
    return r.tenant_filter() + ("" if r.include_bots else " AND NOT is_bot")


def overview_aggregates_sql(r: Request) -> str:
    """Per day of the overview: activities, purchases and revenue per currency (one read of
    `activity_stats_hourly`, per day and currency) and users (from `activity_stats_daily`: a few sketches
    a day instead of one per hour and key)."""
    in_range = (
        f"{aggregate_filter(r)} AND hour >= toDateTime({quote(r.since)}, 'UTC') "
        f"AND hour < toDateTime({quote(r.until)}, 'UTC')"
    )
    first, last = quote(r.first_day.isoformat()), quote(r.last_day.isoformat())
    purchase = "action = 'purchase'"
    return f"""SELECT day, activities, users, purchases, revenue
FROM (
  SELECT day, sum(n) AS activities, sum(bought) AS purchases,
    CAST((groupArrayIf(currency, amount != 0), groupArrayIf(amount, amount != 0)), 'Map(String, Int64)')
      AS revenue
  FROM (
    SELECT toDate(hour) AS day, toString(currency) AS currency,
      {_ACTIVITIES.merged(table="s")} AS n,
      {_ACTIVITIES.merged(condition=purchase, table="s")} AS bought,
      {_REVENUE.merged(condition=purchase, table="s")} AS amount
    FROM activity_stats_hourly AS s
    WHERE {in_range}
    GROUP BY day, currency
  )
  GROUP BY day
) AS totals
LEFT JOIN (
  SELECT day, {_USERS.merged(table="p")} AS users
  FROM activity_stats_daily AS p
  WHERE {aggregate_filter(r)} AND day >= toDate({first}) AND day <= toDate({last})
  GROUP BY day
) AS people USING (day)"""


def overview_sql(r: Request) -> str:
    """Per day: activities, users, purchases and revenue (`overview_aggregates_sql`), sessions and their
    conversion (`_visits`)."""
    return f"""SELECT
  day, activities, users, sessions, converted_sessions,
  if(sessions = 0, 0, round(converted_sessions / sessions, 4)) AS conversion,
  purchases, revenue
FROM ({overview_aggregates_sql(r)}) AS totals
LEFT JOIN ({_visits(r)}) AS visits USING (day)
ORDER BY day {r.day_fill()}"""


def _visits(r: Request) -> str:
    """Per day, the sessions that began and those with a purchase: from the rollup of the sessions
    when it answers `r` (a session counts on the day it began, whole), else from the `sessions` view
    (which cuts the sessions at the range's ends)."""
    if reads_rollups(r):
        return f"""SELECT s.day AS day, sum(s.sessions) AS sessions, sum(s.converted) AS converted_sessions
FROM {rollup_table(r, SESSION_FIGURES)}
WHERE {_rollup_days(r)}
GROUP BY day"""
    return f"""SELECT toDate(start) AS day, count() AS sessions, countIf(converted) AS converted_sessions
FROM {SESSIONS.call(r.range_arguments())}
GROUP BY day"""


def _rollup_days(r: Request) -> str:
    first, last = quote(r.first_day.isoformat()), quote(r.last_day.isoformat())
    return f"{r.tenant_filter()} AND s.day >= toDate({first}) AND s.day <= toDate({last})"


def funnel_sql(r: Request) -> str:
    """Per step: the users who did the steps up to it in order within the window, and the share of
    the previous step and of the first; per value of `--by` when given."""
    arguments = {
        **r.range_arguments(),
        "steps": list(r.steps),
        "window_s": r.window_s,
        "by": r.by,
    }
    steps = "[" + ", ".join(quote(s) for s in r.steps) + "]"
    dimension = f"dimension AS {r.by}, " if r.by else ""
    return f"""SELECT {dimension}step, {steps}[step] AS action, users,
  if(first_value(users) OVER d = 0, 0, round(users / first_value(users) OVER d, 4)) AS of_first,
  if(lagInFrame(users, 1, users) OVER d = 0, 0, round(users / lagInFrame(users, 1, users) OVER d, 4))
    AS of_previous
FROM (
  SELECT dimension, step, countIf(level >= step) AS users
  FROM {FUNNEL.call(arguments)}
  ARRAY JOIN range(1, {len(r.steps) + 1}) AS step
  GROUP BY dimension, step
)
WINDOW d AS (PARTITION BY dimension ORDER BY step ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
ORDER BY dimension, step"""


def top_targets_sql(r: Request) -> str:
    """The targets with the most activities of one action, from `target_stats_daily`. When its rollup
    holds every day of the range, in two passes over the rollup table: the targets ranked by their
    activities alone, then the users' sketches, items and revenue of the top ones only (the rollup is
    sorted by target: a few granules); otherwise in one pass over the view."""
    first, last = quote(r.first_day.isoformat()), quote(r.last_day.isoformat())
    in_range = (
        f"{aggregate_filter(r)} AND action = {quote(r.action)} "
        f"AND day >= toDate({first}) AND day <= toDate({last})"
    )
    source = "target_stats_daily AS s"
    if r.rollups_current:
        source = "target_stats_daily_rollup AS s FINAL"
        in_range += f"""
    AND (target_type, target_id) GLOBAL IN (
      SELECT target_type, target_id
      FROM target_stats_daily_rollup FINAL
      WHERE {in_range}
      GROUP BY target_type, target_id
      ORDER BY sum(activities) DESC, target_type, target_id
      LIMIT {r.limit}
    )"""
    return f"""SELECT target_type, target_id,
  sum(n) AS activities,
  uniqCombined64Merge(people) AS users,
  sum(pieces) AS items,
  CAST((groupArrayIf(currency, amount != 0), groupArrayIf(amount, amount != 0)), 'Map(String, Int64)')
    AS revenue
FROM (
  SELECT target_type, target_id, toString(currency) AS currency,
    {_ACTIVITIES.merged(table="s")} AS n,
    uniqCombined64MergeState(s.users) AS people,
    {_ITEMS.merged(table="s")} AS pieces,
    {_REVENUE.merged(table="s")} AS amount
  FROM {source}
  WHERE {in_range}
  GROUP BY target_type, target_id, currency
)
GROUP BY target_type, target_id
ORDER BY activities DESC, target_type, target_id
LIMIT {r.limit}"""


def sources_sql(r: Request) -> str:
    """Per source id: views and clicks on the pages it powered, click-through, and the add-to-carts,
    purchases and revenue attributed to it (last touch by the person, `credited_activities`); `(none)`
    for what no source led to."""
    arguments = {**r.range_arguments(), "window_s": r.window_s}
    humans = "" if r.include_bots else " AND NOT is_bot"
    in_range = (
        f"{r.tenant_filter()} AND occurred_at >= toDateTime64({quote(r.since)}, 3, 'UTC') "
        f"AND occurred_at < toDateTime64({quote(r.until)}, 3, 'UTC'){humans}"
    )
    return f"""SELECT if(source = '', '(none)', source) AS source_id,
  views, clicks, ctr, add_to_carts, purchases, purchases_per_click, revenue
FROM (
  SELECT source,
    countIf(action = 'view') AS views,
    countIf(action = 'click') AS clicks,
    if(views = 0, 0, round(clicks / views, 4)) AS ctr,
    countIf(action = 'add_to_cart') AS add_to_carts,
    countIf(action = 'purchase') AS purchases,
    if(clicks = 0, 0, round(purchases / clicks, 4)) AS purchases_per_click,
    sumMapIf(map(currency, revenue), revenue != 0) AS revenue
  FROM (
    SELECT tenant_id, id, action, source_id,
      toString(currency) AS currency, if(action = 'purchase' AND price IS NOT NULL, {REVENUE}, 0) AS revenue
    FROM activities FINAL
    WHERE {in_range} AND action IN ('view', 'click', 'add_to_cart', 'purchase')
  ) AS a
  LEFT JOIN (
    SELECT tenant_id, id, source_id AS credited_source_id FROM {CREDITED_ACTIVITIES.call(arguments)}
  ) AS c ON a.tenant_id = c.tenant_id AND a.id = c.id
  GROUP BY if(action IN ('view', 'click'), source_id, credited_source_id) AS source
)
ORDER BY source != '', purchases DESC, clicks DESC, source
LIMIT {r.limit + 1}"""


def sources_rolled_sql(r: Request) -> str:
    """`sources_sql` from the rollup `response_figures_daily` (see `report_sources.reads_rollups`)."""
    first, last = quote(r.first_day.isoformat()), quote(r.last_day.isoformat())
    return f"""SELECT if(source = '', '(none)', source) AS source_id,
  views, clicks, ctr, add_to_carts, purchases, purchases_per_click, revenue
FROM (
  SELECT s.source_id AS source,
    sum(s.views) AS views,
    sum(s.clicks) AS clicks,
    if(views = 0, 0, round(clicks / views, 4)) AS ctr,
    sum(s.add_to_carts) AS add_to_carts,
    sum(s.purchases) AS purchases,
    if(clicks = 0, 0, round(purchases / clicks, 4)) AS purchases_per_click,
    sumMap(s.revenue) AS revenue
  FROM {rollup_table(r, RESPONSE_FIGURES)}
  WHERE {r.tenant_filter()} AND s.day >= toDate({first}) AND s.day <= toDate({last})
  GROUP BY source
  HAVING sum(s.views + s.clicks + s.add_to_carts + s.purchases) > 0
)
ORDER BY source != '', purchases DESC, clicks DESC, source
LIMIT {r.limit + 1}"""


def sources_report_sql(r: Request) -> str:
    """`sources`: one row per source id, or per group of `--by`."""
    if r.group_by:
        return sources_by_sql(r)
    return sources_rolled_sql(r) if reads_rollups(r) else sources_sql(r)


def sessions_sql(r: Request) -> str:
    """Per day (of the session's start): sessions, users, length, bounces, conversion, revenue."""
    if reads_rollups(r):
        return f"""SELECT s.day AS day,
  sum(s.sessions) AS sessions,
  sum(s.users) AS users,
  round(sum(s.duration_ms) / 1000 / sessions, 1) AS avg_duration_s,
  round(sum(s.activities) / sessions, 2) AS avg_activities,
  round(sum(s.bounces) / sessions, 4) AS bounce_rate,
  sum(s.converted) AS converted,
  round(converted / sessions, 4) AS conversion,
  sumMap(s.revenue) AS revenue
FROM {rollup_table(r, SESSION_FIGURES)}
WHERE {_rollup_days(r)}
GROUP BY day
HAVING sessions > 0
ORDER BY day {r.day_fill()}"""
    return f"""SELECT toDate(start) AS day,
  count() AS sessions,
  uniqExact(user_key) AS users,
  round(avg(duration_s), 1) AS avg_duration_s,
  round(avg(activities), 2) AS avg_activities,
  round(countIf(activities = 1) / sessions, 4) AS bounce_rate,
  countIf(converted) AS converted,
  round(converted / sessions, 4) AS conversion,
  sumMap(revenue) AS revenue
FROM {SESSIONS.call(r.range_arguments())}
GROUP BY day
ORDER BY day {r.day_fill()}"""


def coverage_sql(r: Request) -> str:
    """How many hourly aggregate rows fall in the range, and the first and last day of any (cheap: the
    aggregate, never the activities)."""
    return f"""SELECT
  countIf(hour >= toDateTime({quote(r.since)}, 'UTC') AND hour < toDateTime({quote(r.until)}, 'UTC')),
  count(), toDate(min(hour)), toDate(max(hour))
FROM activity_stats_hourly
WHERE {aggregate_filter(r)}"""


def nothing_matched(r: Request) -> str:
    """What an empty answer to `r` means, for the reports whose filters can match nothing in a range
    that has activities; '' for the others (an empty answer never needs explaining there)."""
    days = f"from {r.first_day} to {r.last_day}"
    if r.name == "experiment":
        return f"no impressions, views or clicks of responses named {r.source_name!r} {days}"
    if r.name == "queries":
        found = " that found nothing" if r.zero_results else ""
        return f"no searches{found} {days}"
    if r.name == "sources" and r.group_by:
        of_type = f" of type {r.source_type!r}" if r.source_type else ""
        named = f" named {r.source_name!r}" if r.source_name else ""
        return f"no impressions, views or clicks of responses{of_type}{named} {days}"
    return ""


def empty_range(r: Request, coverage: str) -> str | None:
    """Why the report over `r` would be empty, from `coverage_sql`'s answer (TabSeparated); None when
    the range has activities."""
    in_range, stored, first, last = coverage.strip().split("\t")
    if int(in_range):
        return None
    of = f" of tenant {r.tenant}" if r.tenant else ""
    if not int(stored):
        return f"no activities{of} are stored yet: nothing to report"
    return (
        f"no activities{of} from {r.first_day} to {r.last_day}; the stored activities span {first} to "
        f"{last} - use --from/--to"
    )


@dataclass(frozen=True)
class Report:
    name: str
    help: str
    sql: Callable[[Request], str]
    chart: Callable[[Request, list[dict[str, Any]], Path], None] | None = None
    of_activities: bool = True
    """Whether the report reads stored activities: a range without any is then said, not printed."""


def quality_sql(r: Request) -> str:
    """Rejected activities kept and flagged ones stored, per day, tenant, outcome, reason, rule and
    field (as `activity-collector rejections report`, over the report's days)."""
    from collector.cli.rejections import quality_sql as of_range

    return of_range(r.since, r.until, r.tenant)


def _overview_chart(r: Request, rows: list[dict[str, Any]], path: Path) -> None:
    from collector.cli import charts

    charts.time_series(
        path,
        f"Overview {r.first_day} to {r.last_day}",
        [row["day"] for row in rows],
        {k: [int(row[k]) for row in rows] for k in ("activities", "users", "sessions")},
        {"conversion": [float(row["conversion"]) for row in rows]},
    )


def _sessions_chart(r: Request, rows: list[dict[str, Any]], path: Path) -> None:
    from collector.cli import charts

    charts.time_series(
        path,
        f"Sessions {r.first_day} to {r.last_day}",
        [row["day"] for row in rows],
        {k: [int(row[k]) for row in rows] for k in ("sessions", "converted")},
        {"bounce rate": [float(row["bounce_rate"]) for row in rows]},
    )


def _funnel_chart(r: Request, rows: list[dict[str, Any]], path: Path) -> None:
    from collector.cli import charts

    groups: dict[str, list[int]] = {}
    for row in rows:
        groups.setdefault(str(row[r.by]) if r.by else "users", []).append(int(row["users"]))
    charts.funnel(path, f"Funnel {' → '.join(r.steps)}", list(r.steps), groups)


REPORTS: dict[str, Report] = {
    r.name: r
    for r in (
        Report(
            "overview",
            "activities, users, sessions, conversion and revenue per day",
            overview_sql,
            _overview_chart,
        ),
        Report(
            "funnel", "users at each step of --steps, in order within --window", funnel_sql, _funnel_chart
        ),
        Report("top-targets", "targets with the most activities of --action", top_targets_sql),
        Report(
            "sources",
            "click-through and attributed conversion per source id, or per type, name, variant or position",
            sources_report_sql,
            sources_chart,
        ),
        Report(
            "experiment",
            "the variants of the responses named --name against the control: intervals, lift, p-value",
            experiment_sql,
            experiment_chart,
        ),
        Report(
            "queries",
            "searches, searches without results, clicks and purchases per query",
            queries_sql,
            queries_chart,
        ),
        Report("sessions", "sessions, length, bounces and conversion per day", sessions_sql, _sessions_chart),
        Report(
            "quality",
            "data quality: rejected and flagged activities per day, tenant, reason, rule and field",
            quality_sql,
            of_activities=False,
        ),
    )
}


_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in '90', '90s', '30m', '2h' or '7d'."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) <= 0:
        raise ReportError(f"--window: expected a positive duration like 3600, 30m, 2h or 7d, got {text!r}")
    return int(match[1]) * _UNITS[match[2]]


def parse_day(flag: str, text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ReportError(f"{flag}: expected a date YYYY-MM-DD, got {text!r}") from None


def parse_steps(text: str) -> tuple[str, ...]:
    steps = tuple(normalize_action(s) or "" for s in text.split(","))
    if not 2 <= len(steps) <= MAX_FUNNEL_STEPS or "" in steps:
        raise ReportError(
            f"--steps: expected 2 to {MAX_FUNNEL_STEPS} action names separated by commas, got {text!r}"
        )
    return steps


def build_request(args: argparse.Namespace, today: dt.date | None = None) -> Request:
    today = today or dt.datetime.now(dt.UTC).date()
    last_day = parse_day("--to", args.to) if args.to else today
    first_day = parse_day("--from", args.since) if args.since else last_day - dt.timedelta(DEFAULT_DAYS - 1)
    if first_day > last_day:
        raise ReportError(f"--from {first_day} is after --to {last_day}")
    action = normalize_action(args.action)
    if action is None:
        raise ReportError(f"--action: not an action name: {args.action!r}")
    if args.limit <= 0:
        raise ReportError(f"--limit: must be greater than zero, got {args.limit}")
    by: list[str] = args.by or []
    if args.report == "sources":
        wrong = [b for b in by if b not in SOURCES_BY]
        if wrong or len(set(by)) != len(by):
            raise ReportError(f"--by: sources takes each of {', '.join(SOURCES_BY)} at most once, got {by}")
        if (args.type or args.name) and not by:
            raise ReportError("--type and --name filter the groups of sources --by: give --by too")
    elif by and (args.report != "funnel" or len(by) > 1 or by[0] not in FUNNEL_BY):
        raise ReportError(
            f"--by: funnel takes one of {', '.join(FUNNEL_BY)}, sources any of {', '.join(SOURCES_BY)}; "
            f"{args.report} takes none (got {by})"
        )
    if args.report == "experiment" and not args.name:
        raise ReportError("--name: experiment needs the name of the responses whose variants to compare")
    source_type = ""
    if args.type:
        source_type = normalize_source_type(args.type) or ""
        if not source_type:
            raise ReportError(f"--type: not a source type: {args.type!r}")
    if args.chart is not None and (
        REPORTS[args.report].chart is None or (args.report == "sources" and not by)
    ):
        raise ReportError(
            f"--chart: the {args.report} report has no chart"
            f"{' without --by' if args.report == 'sources' else ''} "
            "(overview, sessions, funnel, sources --by, experiment and queries have one)"
        )
    return Request(
        name=args.report,
        first_day=first_day,
        last_day=last_day,
        tenant=args.tenant or "",
        steps=parse_steps(args.steps),
        window_s=parse_duration(args.window),
        by=by[0] if args.report == "funnel" and by else "",
        action=action,
        limit=args.limit,
        include_bots=args.include_bots,
        group_by=tuple(by) if args.report == "sources" else (),
        source_type=source_type,
        source_name=args.name or "",
        control=args.control or "",
        zero_results=args.zero_results,
        sort=args.sort,
    )


def add_parser(subparsers: Subparsers) -> None:
    """The `report` subcommand and its flags."""
    names = "; ".join(f"{r.name}: {r.help}" for r in REPORTS.values())
    parser = subparsers.add_parser(
        "report", help="print an analytics report", description=f"Reports: {names}.", epilog=EXIT_STATUSES
    )
    parser.add_argument("report", choices=list(REPORTS), metavar="NAME", help=", ".join(REPORTS))
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default="table", help="output format (default table)"
    )
    parser.add_argument(
        "--from", dest="since", metavar="DAY", help="first UTC day, YYYY-MM-DD (default: 29 days before --to)"
    )
    parser.add_argument("--to", metavar="DAY", help="last UTC day, included (default: today)")
    parser.add_argument("--tenant", help="only this tenant (default: every tenant)")
    parser.add_argument(
        "--steps",
        default="view,add_to_cart,purchase",
        help="funnel: actions in order (default view,add_to_cart,purchase)",
    )
    parser.add_argument(
        "--window",
        default="1d",
        help="funnel: time from the first step to the last; sources, experiment, queries: how long a touch "
        "counts (default 1d)",
    )
    parser.add_argument(
        "--by",
        action="append",
        choices=(*FUNNEL_BY, *SOURCES_BY),
        help="funnel: one funnel per day, device_type or segment; sources: one row per type, name, "
        "variant or position (repeatable: --by name --by variant)",
    )
    parser.add_argument("--type", metavar="T", help="sources --by: only the responses of this type")
    parser.add_argument(
        "--name",
        metavar="N",
        help="sources --by: only the responses of this name; experiment: the responses to compare",
    )
    parser.add_argument(
        "--control", metavar="V", help="experiment: the control variant (default: the first variant by name)"
    )
    parser.add_argument(
        "--zero-results", action="store_true", help="queries: only the searches that found nothing"
    )
    parser.add_argument(
        "--sort",
        choices=QUERIES_SORT,
        default="searches",
        help="queries: the column to sort by, largest first (query: alphabetically; default searches)",
    )
    parser.add_argument(
        "--action", default="purchase", help="top-targets: the action to rank by (default purchase)"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=10,
        help="top-targets, sources (per source id), queries: rows to print (default 10)",
    )
    parser.add_argument(
        "--include-bots",
        action="store_true",
        help="keep the activities flagged is_bot (every report leaves them out by default)",
    )
    parser.add_argument(
        "--chart", type=Path, metavar="FILE.png", help="also draw the report as a PNG picture"
    )
    store_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    return run_report(config.settings, args, FORMATS[args.format])


def run_report(settings: Settings, args: argparse.Namespace, fmt: str) -> int:
    """Print the report in ClickHouse format `fmt`; 0 on success, 1 when the store fails, 2 for bad
    arguments (a --chart file that cannot be written among them), 3 when the range has no activities
    (said on stderr)."""
    from workers.storage.clickhouse import StoreError

    try:
        request = build_request(args)
        report = REPORTS[request.name]
        if reads_rollups(request):
            answer = query_clickhouse(settings, rollups_current_sql(request), "TabSeparated").decode()
            request = dataclasses.replace(request, rollups_current=answer.strip() == "1")
        sql = report.sql(request)
        if report.of_activities:
            coverage = query_clickhouse(settings, coverage_sql(request), "TabSeparated").decode()
            empty = empty_range(request, coverage)
            if empty is not None:
                print(f"activity-collector report: {empty}", file=sys.stderr)
                return NOTHING_IN_RANGE
        result = query_clickhouse(settings, sql, fmt)
        unmatched = nothing_matched(request)
        if unmatched and len(result.strip().splitlines()) <= (1 if fmt.endswith("WithNames") else 0):
            print(f"activity-collector report: {unmatched}", file=sys.stderr)
            return NOTHING_IN_RANGE
        if args.chart is not None and report.chart is not None:
            rows = [json.loads(line) for line in query_clickhouse(settings, sql, "JSONEachRow").splitlines()]
            try:
                report.chart(request, rows, args.chart)
            except OSError as error:
                raise ReportError(f"--chart: cannot write {args.chart}: {error.strerror or error}") from None
    except ReportError as error:
        print(f"activity-collector report: {error}", file=sys.stderr)
        return 2
    except StoreError as error:
        print(f"activity-collector report: {error}", file=sys.stderr)
        return 1
    except ImportError as error:
        print(
            f"activity-collector report: --chart needs matplotlib ({error}); "
            "install the charts extra: pip install 'activity-collector[charts]'",
            file=sys.stderr,
        )
        return 1
    sys.stdout.buffer.write(result)
    sys.stdout.flush()
    return 0
