"""A rollup of the sessions per day: how many began, their users, length, bounces, conversions and
revenue, for `report overview` and `report sessions` (schema version 15).

Like the other rollups (`workers.storage.analytics_schema`, `workers.storage.source_rollups`), it is a
view (`session_figures_daily`) over a table (`session_figures_daily_rollup`) that the collectors'
refresh computes per day from `activities FINAL`, copies of a resent activity collapsed; the view
computes the days not refreshed yet when read. Humans only: the reports read the `sessions` view over
`activities` when asked to keep bots.

A session counts on the UTC day of its first activity, whole: a session that runs past midnight
belongs to the day it began, with its full length. A day's sessions are therefore computed from the
activities of the day and of `REACH_DAYS` on either side of it (a session that began the day before
can take in this day's activities; an activity late in this day can begin a session that runs into
the next), and the days a touched day changes are it and `REACH_DAYS` on either side. A client
session id kept for longer than `REACH_DAYS` is read as one session per stretch of days computed.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.storage.analytics_schema import (
    AGGREGATES,
    ROLLUP_SETTINGS,
    TOUCHES,
    Aggregate,
    Dimension,
    quote,
    session_activities_sql,
    sessions_sql,
    touch_every_day_sql,
)
from workers.storage.schema import SINGLE_NODE, Cluster
from workers.storage.source_rollups import (
    SOURCE_ROLLUPS,
    SourceRollup,
    computed_once,
    day_rollup_statements,
)

REACH_DAYS = 1
"""Days on either side of a day whose activities can belong to the sessions that began on it."""

_REVENUE_MAP = "Map(String, Int64)"


@dataclass(frozen=True)
class SessionColumn:
    name: str
    type: str
    comment: str
    expression: str
    """Over the rows of the `sessions` view of one day."""
    zero: str


@dataclass(frozen=True)
class SessionRollup:
    """A rollup per tenant and UTC day of the sessions that began on that day."""

    name: str
    comment: str
    columns: tuple[SessionColumn, ...]

    bucket = Dimension("day", "Date", "toDate(occurred_at)", "UTC day of the session's first activity.")
    keys: tuple[Dimension, ...] = ()
    """None after tenant_id and day."""
    where: str | None = None
    """Erasure picks the days of a person's activities through `bucket`, as for the aggregates."""

    @property
    def rollup(self) -> str:
        return f"{self.name}_rollup"

    @property
    def key_names(self) -> list[str]:
        return ["tenant_id", "day"]

    @property
    def column_names(self) -> list[str]:
        return [*self.key_names, *(c.name for c in self.columns)]

    def select(self, database: str, days: str, version: str = "") -> str:
        """A row for each (tenant_id, day) of `days` (a SELECT), computed from `activities FINAL`: zeros
        for a day without sessions, so that a refresh or a rebuild replaces what the day held before."""
        db = _prefix(database)
        rows = (
            f"{db}activities FINAL\n      WHERE (tenant_id, toDate(occurred_at)) GLOBAL IN ({_around(days)}) "
            "AND NOT is_bot"
        )
        # The branches name their figures apart (`f_...`): the sessions' own columns have the same names.
        figures = ", ".join(f"{c.expression} AS f_{c.name}" for c in self.columns)
        zeros = ", ".join(f"{c.zero} AS f_{c.name}" for c in self.columns)
        merged = ", ".join(
            f"{'sumMap' if c.type == _REVENUE_MAP else 'sum'}(b.f_{c.name}) AS {c.name}" for c in self.columns
        )
        refreshed = f", {version} AS refreshed_at" if version else ""
        return f"""SELECT tenant_id, day, {merged}{refreshed}
FROM (
  SELECT tenant_id, toDate(start) AS day, {figures}
  FROM ({sessions_sql(f"({session_activities_sql(rows)})")})
  WHERE (tenant_id, toDate(start)) GLOBAL IN ({days})
  GROUP BY tenant_id, day
  UNION ALL
  SELECT tenant_id, day, {zeros}
  FROM ({days})
) AS b
GROUP BY tenant_id, day"""


def _count(name: str, comment: str, expression: str) -> SessionColumn:
    return SessionColumn(name, "UInt64", comment, f"toUInt64({expression})", "toUInt64(0)")


SESSION_FIGURES = SessionRollup(
    "session_figures_daily",
    "The sessions of the humans per tenant and UTC day of their first activity (whole, also past "
    "midnight): their number, users, length, bounces, conversions and revenue: report overview, sessions.",
    (
        _count("sessions", "Sessions that began on the day.", "count()"),
        _count(
            "users",
            "Distinct user keys of those sessions (each session's last activity's, exact).",
            "uniqExact(user_key)",
        ),
        _count(
            "duration_ms",
            "Sum of their lengths (last activity - first), milliseconds.",
            "sum(dateDiff('millisecond', start, end))",
        ),
        _count("activities", "Sum of their activities.", "sum(activities)"),
        _count("bounces", "Those of a single activity.", "countIf(activities = 1)"),
        _count("converted", "Those with a purchase.", "countIf(converted)"),
        SessionColumn(
            "revenue",
            _REVENUE_MAP,
            "Currency -> revenue of their purchases, minor units.",
            f"CAST(sumMap(revenue), '{_REVENUE_MAP}')",
            f"CAST(map(), '{_REVENUE_MAP}')",
        ),
    ),
)


def _prefix(database: str) -> str:
    return f"`{database}`." if database else ""


def _around(days: str) -> str:
    """`days` and the REACH_DAYS on either side of each."""
    return (
        "SELECT DISTINCT tenant_id, addDays(d, k) AS day "
        f"FROM (SELECT tenant_id, subtractDays(day, {REACH_DAYS}) AS d FROM ({days})) "
        f"ARRAY JOIN range({2 * REACH_DAYS + 1}) AS k"
    )


def refresh_statements(database: str, touched: str, version: str) -> list[str]:
    """The insert that computes every day the touched (tenant_id, day) of `touched` change, versioned
    `version`."""
    days = computed_once(_around(touched))
    rollup = SESSION_FIGURES
    return [
        f"INSERT INTO `{database}`.`{rollup.rollup}` ({', '.join(rollup.column_names)}, refreshed_at)\n"
        + rollup.select(database, days, version)
    ]


def rebuild_statements(
    database: str,
    rollup: SessionRollup,
    tenant_id: str,
    buckets_where_sql: str,
    cluster: Cluster = SINGLE_NODE,
) -> list[str]:
    """`aggregate_rebuild_statements` of the sessions rollup: the days of `buckets_where_sql` (a
    condition on `day`, the days of the activities that changed) and the REACH_DAYS on either side,
    deleted and computed again."""
    db = _prefix(database)
    chosen = (
        f"SELECT tenant_id, day FROM {db}`{TOUCHES}` "
        f"WHERE tenant_id = {quote(tenant_id)} AND ({buckets_where_sql})"
    )
    days = computed_once(_around(chosen))
    local = cluster.local(rollup.rollup)
    return [
        f"DELETE FROM {db}`{local}`{cluster.on_cluster} WHERE (tenant_id, day) IN ({days})",
        f"INSERT INTO {db}`{rollup.rollup}` ({', '.join(rollup.column_names)}, refreshed_at)\n"
        + rollup.select(database, days, "now64(3, 'UTC')"),
    ]


def session_rollup_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Migration 15: the rollup and its view; every day `activities` holds touched, so that the reads
    compute it from `activities` until the next refresh puts it in the rollup."""
    return [*day_rollup_statements(database, SESSION_FIGURES, cluster), touch_every_day_sql(database)]


EVERY_ROLLUP: tuple[Aggregate | SourceRollup | SessionRollup, ...] = (
    *AGGREGATES,
    *SOURCE_ROLLUPS,
    SESSION_FIGURES,
)
"""Every table a refresh computes and an erasure rebuilds (`aggregate_rebuild_statements` takes each)."""


def rollup_merge_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Migration 17: every rollup's partitions merged into one part once their parts are old enough
    (`ROLLUP_SETTINGS`), on every node of a cluster."""
    return [
        f"ALTER TABLE `{database}`.`{cluster.local(rollup.rollup)}`{cluster.on_cluster} "
        f"MODIFY SETTING {ROLLUP_SETTINGS}"
        for rollup in EVERY_ROLLUP
    ]
