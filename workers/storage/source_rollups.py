"""Rollups of what the search and recommendation responses earned: per day, their impressions, views,
clicks and the add-to-carts, purchases and revenue attributed to them (last touch by the same person
within `WINDOW_S`, across sessions, as `credited_activities` computes it).

Like the aggregates (`workers.storage.analytics_schema`), each is a view (`name`) over a rollup table
(`<name>_rollup`) that the collectors' refresh (`workers.storage.refresher`) computes per day from
`activities FINAL`, copies of a resent activity collapsed, and the view computes the days not refreshed
yet when read. Bots are left out (the reports read the views over `activities` when asked for them),
and the attribution window is fixed at `WINDOW_S` (the reports' default; another window reads the
views over `activities`).

Attribution reaches across days, so the days a refresh computes are more than the days touched:

- the `SPILL_DAYS` after a touched day: a touch on day D can take the credit for an outcome on D + 1;
- the `SPILL_DAYS` before it: a login on day D (an activity that carries an anonymous and a user id)
  moves the visitor's earlier anonymous activities to the user's person, and with them the credit of
  D - 1's outcomes (the touches of D - 1 are within the window of D's outcomes anyway);
- the touches of a computed day's outcomes are read from the `SPILL_DAYS` before it too.

A person is resolved when a day is computed: a login that first links a visitor more than `SPILL_DAYS`
after their anonymous activities moves the credit of those older days in the views over `activities`
at once, and in the rollups when the older days are next computed (an activity of theirs arrives, or
`aggregate_rebuild_statements`). Following every first login back to all the visitor's days would
recompute most of the month at every refresh (each day's first logins reach visitors seen on almost
every earlier day).

A recomputed day also writes a row of zeros for every key it held before and no longer has (the credit
moved elsewhere), so that `FINAL` replaces the stale row; the reports leave rows without any figure out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from workers.storage.analytics_schema import (
    IS_TOUCH,
    NORMALISED_QUERY,
    OUTCOME_ACTIONS,
    PERSON,
    REFRESHES,
    REVENUE,
    ROLLUP_SETTINGS,
    TOUCHES,
    VIEWS,
    Dimension,
    quote,
    touch_every_day_sql,
)
from workers.storage.person_schema import PERSON_LINKS
from workers.storage.schema import SINGLE_NODE, TIME, Cluster

WINDOW_S = 24 * 3600
"""The attribution window of the rollups (`report --window`'s default)."""
SPILL_DAYS = math.ceil(WINDOW_S / 86_400)
"""Days after an outcome's touch its credit may fall on."""

_DAY = Dimension("day", "Date", "toDate(occurred_at)", "UTC day of occurred_at.")
_CLICK_POSITION = "action = 'click' AND source_position > 0"
_REVENUE_MAP = "Map(String, Int64)"
_NO_REVENUE = f"CAST(map(), '{_REVENUE_MAP}')"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    comment: str
    merge: str
    """How the refresh combines the branches' values of the column (`{c}` the column)."""
    zero: str
    """The value of a branch that does not count it."""


def _count(name: str, comment: str) -> Column:
    return Column(name, "UInt64", comment, "sum({c})", "toUInt64(0)")


_ATTRIBUTED = (
    _count("add_to_carts", "Add-to-carts attributed to the key (outcome's day)."),
    _count("purchases", "Purchases attributed to the key (outcome's day)."),
    Column(
        "revenue",
        _REVENUE_MAP,
        "Currency -> revenue of those purchases, minor units.",
        "sumMap({c})",
        _NO_REVENUE,
    ),
)
_CLICKS = (
    _count("views", "Views carrying the response's id."),
    _count("clicks", "Clicks carrying the response's id."),
    _count("positioned_clicks", "Those clicks with a known position."),
    _count("click_position_sum", "Sum of their positions."),
)


@dataclass(frozen=True)
class SourceRollup:
    """A rollup per tenant, UTC day and `keys`, of the own activities `own_actions` (counted by
    `own_columns`) and of the outcomes attributed to them."""

    name: str
    comment: str
    keys: tuple[Dimension, ...]
    """After tenant_id and day."""
    columns: tuple[Column, ...]
    own_actions: str
    own_where: str
    own_columns: dict[str, str]
    """Column -> its expression over the own activities (the others are zero there)."""
    attributed_where: str

    bucket = _DAY
    where: str | None = None
    """Erasure picks the buckets of a person's activities (`day`) through these, as for the aggregates."""

    @property
    def rollup(self) -> str:
        return f"{self.name}_rollup"

    @property
    def key_names(self) -> list[str]:
        return ["tenant_id", "day", *(k.name for k in self.keys)]

    @property
    def column_names(self) -> list[str]:
        return [*self.key_names, *(c.name for c in self.columns)]

    def select(self, database: str, days: str, version: str = "") -> str:
        """The rows of the (tenant_id, day) of `days` (a SELECT), computed from `activities FINAL`.
        With `version` (a refresh or a rebuild), also a row of zeros for each key the rollup holds for
        those days and the computation no longer gives."""
        db = _prefix(database)
        keys = ", ".join(self.key_names)
        own = [
            "tenant_id",
            "toDate(occurred_at) AS day",
            *(f"CAST({k.expression} AS {k.type}) AS {k.name}" for k in self.keys),
            *(f"{self.own_columns.get(c.name, c.zero)} AS {c.name}" for c in self.columns),
        ]
        attributed_columns = {
            "add_to_carts": "countIf(action = 'add_to_cart')",
            "purchases": "countIf(action = 'purchase')",
            "revenue": "sumMapIf(map(currency, revenue), action = 'purchase' AND revenue != 0)",
        }
        credited = [
            "tenant_id",
            "toDate(occurred_at) AS day",
            *(f"CAST({k.name} AS {k.type}) AS {k.name}" for k in self.keys),
            *(f"{attributed_columns.get(c.name, c.zero)} AS {c.name}" for c in self.columns),
        ]
        branches = [
            f"SELECT {', '.join(own)}\nFROM {db}activities FINAL\n"
            f"WHERE (tenant_id, toDate(occurred_at)) GLOBAL IN ({days}) AND NOT is_bot "
            f"AND action IN {self.own_actions} AND ({self.own_where})\nGROUP BY {keys}",
            f"SELECT {', '.join(credited)}\nFROM ({attributed_sql(database, days)})\n"
            f"WHERE {self.attributed_where}\nGROUP BY {keys}",
        ]
        if version:
            zeros = [*self.key_names, *(f"{c.zero} AS {c.name}" for c in self.columns)]
            branches.append(
                f"SELECT {', '.join(zeros)}\nFROM {db}`{self.rollup}`\n"
                f"WHERE (tenant_id, day) GLOBAL IN ({days})"
            )
        merged = [*self.key_names, *(f"{c.merge.format(c='b.' + c.name)} AS {c.name}" for c in self.columns)]
        if version:
            merged.append(f"{version} AS refreshed_at")
        union = "\nUNION ALL\n".join(branches)
        return f"SELECT {', '.join(merged)}\nFROM (\n{union}\n) AS b\nGROUP BY {keys}"


SOURCE_FIGURES = SourceRollup(
    "source_figures_daily",
    "What the responses earned per tenant, UTC day, source type, name, variant and position (humans "
    "only): impressions, views, clicks and click positions, and the add-to-carts, purchases and revenue "
    f"attributed to them (last touch by the person within {WINDOW_S} s): report sources --by, experiment.",
    (
        Dimension("source_type", "String", "source_type", "Kind of response."),
        Dimension("source_name", "String", "source_name", "Widget, strategy or search page."),
        Dimension("source_variant", "String", "source_variant", "A/B arm; empty when none."),
        Dimension(
            "source_position",
            "UInt32",
            "source_position",
            "Position of the target in the response's list (of the touch, for attributed outcomes).",
        ),
    ),
    (_count("impressions", "Impressions of the responses."), *_CLICKS, *_ATTRIBUTED),
    "('impression', 'view', 'click')",
    "source_id != ''",
    {
        "impressions": "countIf(action = 'impression')",
        "views": "countIf(action = 'view')",
        "clicks": "countIf(action = 'click')",
        "positioned_clicks": f"countIf({_CLICK_POSITION})",
        "click_position_sum": f"sumIf(toUInt64(source_position), {_CLICK_POSITION})",
    },
    "source_id != ''",
)

RESPONSE_FIGURES = SourceRollup(
    "response_figures_daily",
    "What each response earned per tenant and UTC day (humans only): its searches, query and result "
    "count, views, clicks and click positions, and the add-to-carts, purchases and revenue attributed "
    f"to it (last touch by the person within {WINDOW_S} s); source_id '' holds the views and clicks of "
    "pages no response powered and the outcomes no touch led to: report sources, queries.",
    (Dimension("source_id", "String", "source_id", "The response; '' for none."),),
    (
        _count("searches", "Searches with this response id."),
        Column(
            "query",
            "String",
            "The normalised query of a search of the day ('' without one).",
            "anyIf({c}, b.searches > 0)",
            "''",
        ),
        Column(
            "result_count",
            "Nullable(UInt32)",
            "Results a search of the day said it held; NULL when none said.",
            "anyIf({c}, b.searches > 0)",
            "CAST(NULL, 'Nullable(UInt32)')",
        ),
        *_CLICKS,
        *_ATTRIBUTED,
    ),
    "('search', 'view', 'click')",
    "action != 'search' OR source_id != ''",
    {
        "searches": "countIf(action = 'search')",
        "query": f"anyIf({NORMALISED_QUERY}, action = 'search')",
        "result_count": "anyIf(source_result_count, action = 'search')",
        "views": "countIf(action = 'view')",
        "clicks": "countIf(action = 'click')",
        "positioned_clicks": f"countIf({_CLICK_POSITION})",
        "click_position_sum": f"sumIf(toUInt64(source_position), {_CLICK_POSITION})",
    },
    "1",
)

SOURCE_ROLLUPS: tuple[SourceRollup, ...] = (SOURCE_FIGURES, RESPONSE_FIGURES)
SOURCE_ROLLUP = {r.name: r for r in SOURCE_ROLLUPS}


def _prefix(database: str) -> str:
    """How a table of `database` is named: qualified, or ('') in the current database."""
    return f"`{database}`." if database else ""


def computed_once(days: str) -> str:
    """The (tenant_id, day) of `days` through a scalar subquery: the engine computes a scalar subquery
    once per query however many times it appears, where each `IN (SELECT ...)` computes its own."""
    return (
        "SELECT d.1 AS tenant_id, d.2 AS day "
        f"FROM (SELECT arrayJoin((SELECT groupArray((tenant_id, day)) FROM ({days}))) AS d)"
    )


def _reach(days: str) -> str:
    """`days` and the SPILL_DAYS before each: where the touches of their outcomes lie."""
    return (
        "SELECT DISTINCT tenant_id, subtractDays(d, k) AS day "
        f"FROM (SELECT tenant_id, day AS d FROM ({days})) ARRAY JOIN range({SPILL_DAYS + 1}) AS k"
    )


def attributed_sql(database: str, days: str) -> str:
    """Every add-to-cart and purchase of the humans on the (tenant_id, day) of `days`, with the response
    of the latest touch (click or view with a source_id) by the same person on the same target at most
    WINDOW_S before it, in any session: the `credited_activities` of those days, and the outcomes no
    touch led to with source_id ''."""
    db = _prefix(database)
    reach = _reach(days)
    at = "toUnixTimestamp64Milli(outcome.2)"
    return f"""SELECT tenant_id, outcome.1 AS id, outcome.2 AS occurred_at, outcome.3 AS action,
  arrayLast(t -> t.1 <= {at} AND t.1 >= {at} - {WINDOW_S * 1000}, touches) AS touch,
  touch.2 AS source_id, touch.3 AS source_type, touch.4 AS source_name, touch.5 AS source_variant,
  touch.6 AS source_position, outcome.4 AS currency, outcome.5 AS revenue
FROM (
  SELECT tenant_id, person, target_type, target_id,
    arraySort(groupArrayIf((toUnixTimestamp64Milli(occurred_at), source_id, toString(source_type),
      toString(source_name), toString(source_variant), source_position), is_touch)) AS touches,
    groupArrayIf((id, occurred_at, action, toString(currency),
      if(action = 'purchase' AND price IS NOT NULL, {REVENUE}, 0)), is_outcome) AS outcomes
  FROM (
    SELECT *, {PERSON} AS person
    FROM (
      SELECT tenant_id, id, occurred_at, action, target_type, target_id, source_id, source_type, source_name,
        source_variant, source_position, user_id, anonymous_id, session_id, resolved_user_id, quantity, price,
        currency, {IS_TOUCH} AS is_touch,
        action IN {OUTCOME_ACTIONS} AND (tenant_id, toDate(occurred_at)) GLOBAL IN ({days}) AS is_outcome
      FROM {db}activities FINAL
      WHERE (tenant_id, toDate(occurred_at)) GLOBAL IN ({reach}) AND NOT is_bot
        AND action IN ('click', 'view', 'add_to_cart', 'purchase')
    ) AS a
    LEFT JOIN (
      SELECT tenant_id AS link_tenant_id, key AS link_anonymous_id,
        argMax(linked, occurred_at) AS linked_user_id
      FROM {db}`{PERSON_LINKS}`
      WHERE kind = 'user' AND (tenant_id, key) GLOBAL IN (
        SELECT tenant_id, anonymous_id FROM {db}activities
        WHERE (tenant_id, toDate(occurred_at)) GLOBAL IN ({reach}) AND anonymous_id != '' AND user_id = '')
      GROUP BY link_tenant_id, link_anonymous_id
    ) AS l ON a.tenant_id = l.link_tenant_id AND a.anonymous_id = l.link_anonymous_id
    WHERE is_touch OR is_outcome
  )
  GROUP BY tenant_id, person, target_type, target_id
  HAVING notEmpty(outcomes)
)
ARRAY JOIN outcomes AS outcome"""


def affected_days_sql(touched: str) -> str:
    """The (tenant_id, day) whose figures the activities of the touched (tenant_id, day) of `touched` can
    change: each touched day, the SPILL_DAYS after it and the SPILL_DAYS before it (see the module's
    docstring)."""
    return (
        "SELECT DISTINCT tenant_id, addDays(d, k) AS day "
        f"FROM (SELECT tenant_id, subtractDays(day, {SPILL_DAYS}) AS d FROM ({touched})) "
        f"ARRAY JOIN range({2 * SPILL_DAYS + 1}) AS k"
    )


def unrefreshed_days_sql(database: str = "") -> str:
    """The (tenant_id, day) the rollups do not hold yet: those the activities inserted since the last
    refresh can change (`database` '' for the current one)."""
    db = _prefix(database)
    touched = (
        f"SELECT tenant_id, day FROM {db}`{TOUCHES}` "
        f"WHERE inserted_at > (SELECT max(refreshed_to) FROM {db}`{REFRESHES}`)"
    )
    return computed_once(affected_days_sql(touched))


class _Described(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def comment(self) -> str: ...


class DayRollup(Protocol):
    """What the DDL below needs of a rollup per tenant and UTC day (`SourceRollup`, and the sessions'
    in `workers.storage.session_rollups`)."""

    @property
    def name(self) -> str: ...
    @property
    def comment(self) -> str: ...
    @property
    def rollup(self) -> str: ...
    @property
    def bucket(self) -> Dimension: ...
    @property
    def keys(self) -> tuple[Dimension, ...]: ...
    @property
    def columns(self) -> Sequence[_Described]: ...
    @property
    def column_names(self) -> list[str]: ...
    @property
    def key_names(self) -> list[str]: ...
    def select(self, database: str, days: str, version: str = "") -> str: ...


def rollup_table_ddl(database: str, rollup: DayRollup, cluster: Cluster = SINGLE_NODE) -> str:
    lines = [
        "  `tenant_id` LowCardinality(String) COMMENT 'Tenant.'",
        f"  `day` Date COMMENT {quote(rollup.bucket.comment)}",
    ]
    lines += [f"  `{k.name}` {k.type} COMMENT {quote(k.comment)}" for k in rollup.keys]
    lines += [f"  `{c.name}` {c.type} COMMENT {quote(c.comment)}" for c in rollup.columns]
    lines.append(
        f"  `refreshed_at` {TIME} COMMENT 'The refresh that computed the row: the latest one counts.'"
    )
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{cluster.local(rollup.rollup)}`{cluster.on_cluster} (\n"
        + ",\n".join(lines)
        + f"\n)\nENGINE = {cluster.engine('ReplacingMergeTree', 'refreshed_at')}\n"
        "PARTITION BY toYYYYMM(day)\n"
        f"ORDER BY ({', '.join(rollup.key_names)})\n"
        f"SETTINGS {ROLLUP_SETTINGS}\n"
        f"COMMENT {quote(f'{rollup.comment} Refreshed per day; read {rollup.name}.')}"
    )


def read_view_ddl(database: str, rollup: DayRollup, cluster: Cluster = SINGLE_NODE) -> str:
    """The rollup's rows of the days no unrefreshed activity can change, and the others computed from
    `activities FINAL` when read."""
    db = _prefix(database)
    dirty = unrefreshed_days_sql(database)
    columns = ", ".join(rollup.column_names)
    return (
        f"CREATE VIEW IF NOT EXISTS {db}`{rollup.name}`{cluster.on_cluster} AS\n"
        f"SELECT {columns}\nFROM {db}`{rollup.rollup}` FINAL\n"
        f"WHERE (tenant_id, day) GLOBAL NOT IN ({dirty})\nUNION ALL\n{rollup.select(database, dirty)}"
    )


def day_rollup_statements(database: str, rollup: DayRollup, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """The rollup's table (on a cluster, a Distributed table in front, sharded by tenant and day so that
    the versions of a row meet on one shard) and its read view."""
    statements = [rollup_table_ddl(database, rollup, cluster)]
    if cluster.enabled:
        sharding = "cityHash64(tenant_id, toString(day))"
        statements.append(cluster.distributed(database, rollup.rollup, sharding))
    statements.append(read_view_ddl(database, rollup, cluster))
    return statements


def refresh_statements(database: str, touched: str, version: str) -> list[str]:
    """The inserts that compute every day the touched (tenant_id, day) of `touched` affect into each
    rollup, versioned `version`."""
    days = computed_once(affected_days_sql(touched))
    return [
        f"INSERT INTO `{database}`.`{r.rollup}` ({', '.join(r.column_names)}, refreshed_at)\n"
        + r.select(database, days, version)
        for r in SOURCE_ROLLUPS
    ]


def rebuild_statements(
    database: str,
    rollup: SourceRollup,
    tenant_id: str,
    buckets_where_sql: str,
    cluster: Cluster = SINGLE_NODE,
) -> list[str]:
    """`aggregate_rebuild_statements` of a rollup: the days of `buckets_where_sql` (a condition on `day`)
    and the SPILL_DAYS after each, deleted and computed again."""
    db = _prefix(database)
    chosen = (
        f"SELECT tenant_id, day FROM {db}`{TOUCHES}` "
        f"WHERE tenant_id = {quote(tenant_id)} AND ({buckets_where_sql})"
    )
    days = (
        f"SELECT DISTINCT tenant_id, addDays(d, k) AS day FROM (SELECT tenant_id, day AS d FROM ({chosen})) "
        f"ARRAY JOIN range({SPILL_DAYS + 1}) AS k"
    )
    local = cluster.local(rollup.rollup)
    return [
        f"DELETE FROM {db}`{local}`{cluster.on_cluster} WHERE (tenant_id, day) IN ({days})",
        f"INSERT INTO {db}`{rollup.rollup}` ({', '.join(rollup.column_names)}, refreshed_at)\n"
        + rollup.select(database, days, "now64(3, 'UTC')"),
    ]


def source_rollups_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Migration 13: the rollups and their views; every view replaced (persons resolved through
    `person_links`); every day `activities` holds touched, so that the reads compute it from `activities`
    until the next refresh puts it in the rollups."""
    statements: list[str] = []
    for rollup in SOURCE_ROLLUPS:
        statements += day_rollup_statements(database, rollup, cluster)
    statements += [
        view.ddl(database, cluster).replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW", 1)
        for view in VIEWS
    ]
    statements.append(touch_every_day_sql(database))
    return statements
