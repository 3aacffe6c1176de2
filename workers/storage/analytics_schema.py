"""The analytics layer over `activities`: aggregates maintained on insert, and parameterized views.

Everything here is defined once, as data, and the DDL is generated from it (as `workers.storage.schema` does
for the raw table), so that the migrations, the reports (`collector.cli.report`) and the documentation
(`docs/analytics.md`, checked by the tests) name the same tables, columns and expressions.

Aggregates. Each `Aggregate` is an AggregatingMergeTree table fed by a materialized view on
`activities`. A client that resends an acknowledged batch inserts the same activities (same ids)
again: the raw table, a ReplacingMergeTree, collapses those copies only when it merges parts, and a
materialized view sees every copy. So every measure kept here is *idempotent*: adding the same
activity twice leaves the state as adding it once.

- `activities`: `uniqExact` over activity ids: an exact, retry-proof count.
- `users`: `uniqCombined64` over the user key: a sketch (exact for small sets, about 0.5 % error
  beyond some thousands), idempotent by nature.
- `amounts`: `maxMap` keyed by activity id, holding each priced activity's items and revenue once;
  the sums are taken when the state is read.

The price of exactness under retries is one id per activity in the states (16 bytes, about what the
raw table's `id` column holds): see docs/analytics.md, "Why the counts are exact".

The same idempotence makes the backfill of a migration safe: the aggregates are filled from the
existing rows after their view is created, and an activity seen by both is still counted once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from workers.storage.schema import SINGLE_NODE, USER_KEY, Cluster

# Items and revenue of an activity that carries a quantity or a price. Revenue is in minor units of
# `currency`; a priced activity without a quantity counts as one item.
HAS_AMOUNT = "(quantity IS NOT NULL OR price IS NOT NULL)"
ITEMS = "ifNull(quantity, 1)"
REVENUE = "ifNull(quantity, 1) * ifNull(price, 0)"
# The inactivity that ends a session when the client sends no session id, in seconds.
SESSION_GAP_S = 30 * 60
# Steps a funnel may have (the `funnel` view's `steps` parameter).
MAX_FUNNEL_STEPS = 8


def quote(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Measure:
    """A column of aggregate state: `state` computes it from `activities` rows; `read` gives the
    expressions that finalize it, by result name, with `{c}` standing for the column."""

    name: str
    type: str
    state: str
    comment: str
    read: tuple[tuple[str, str, str], ...]
    """(result name, expression over `{c}`, meaning)."""

    def merged(self, result: str | None = None, condition: str | None = None, table: str = "") -> str:
        """The finalized expression `result` (the first one by default), over the rows that satisfy
        `condition` when one is given; `table` qualifies the column (needed where an alias of the
        same name is in scope)."""
        expression = next(r[1] for r in self.read if result in (None, r[0]))
        column = f"{table}.{self.name}" if table else self.name
        if condition is None:
            return expression.format(c=column, If="", cond="")
        return expression.format(c=column, If="If", cond=f", {condition}")


MEASURES: tuple[Measure, ...] = (
    Measure(
        "activities",
        "AggregateFunction(uniqExact, UUID)",
        "uniqExactState(id)",
        "Distinct activity ids: a resent copy of an activity is not counted again.",
        (("activities", "uniqExactMerge{If}({c}{cond})", "Number of activities (exact)."),),
    ),
    Measure(
        "users",
        "AggregateFunction(uniqCombined64, String)",
        f"uniqCombined64State({USER_KEY})",
        "Sketch of the distinct user keys (user_id, else anonymous_id, else session_id).",
        (("users", "uniqCombined64Merge{If}({c}{cond})", "Number of distinct users (sketch)."),),
    ),
    Measure(
        "amounts",
        "AggregateFunction(1, maxMap, Array(UUID), Array(Int64), Array(Int64))",
        f"maxMapState(if({HAS_AMOUNT}, [id], []), if({HAS_AMOUNT}, [{ITEMS}], []), "
        f"if({HAS_AMOUNT}, [{REVENUE}], []))",
        "Items and revenue of each activity that carries a quantity or a price, keyed by activity id.",
        (
            (
                "items",
                "arraySum(maxMapMerge{If}({c}{cond}).2)",
                "Sum of ifNull(quantity, 1) over activities with a quantity or a price.",
            ),
            (
                "revenue",
                "arraySum(maxMapMerge{If}({c}{cond}).3)",
                "Sum of ifNull(quantity, 1) * price, in minor units of `currency`.",
            ),
        ),
    ),
)

MEASURE = {m.name: m for m in MEASURES}


@dataclass(frozen=True)
class Dimension:
    name: str
    type: str
    expression: str
    comment: str


_TENANT = Dimension("tenant_id", "LowCardinality(String)", "tenant_id", "Tenant.")
_ACTION = Dimension("action", "LowCardinality(String)", "action", "Action (view, click, add_to_cart, ...).")
_CURRENCY = Dimension(
    "currency", "LowCardinality(String)", "currency", "Currency of `revenue`; empty for unpriced activities."
)
_HOUR = Dimension(
    "hour", "DateTime('UTC')", "toStartOfHour(occurred_at)", "Start of the UTC hour of occurred_at."
)
_DAY = Dimension("day", "Date", "toDate(occurred_at)", "UTC day of occurred_at.")


@dataclass(frozen=True)
class Aggregate:
    """An AggregatingMergeTree table and the materialized view that fills it from `activities`."""

    name: str
    comment: str
    bucket: Dimension
    dimensions: tuple[Dimension, ...]
    order_by: tuple[str, ...]
    where: str | None = None

    @property
    def view(self) -> str:
        return f"{self.name}_mv"

    @property
    def keys(self) -> tuple[Dimension, ...]:
        return (self.dimensions[0], self.bucket, *self.dimensions[1:])


AGGREGATES: tuple[Aggregate, ...] = (
    Aggregate(
        "activity_stats_hourly",
        "Activities per tenant, UTC hour, action, device type, currency and whether a search or "
        "recommendation response powered the page: the time series and totals.",
        _HOUR,
        (
            _TENANT,
            _ACTION,
            Dimension("device_type", "LowCardinality(String)", "device_type", "Device type."),
            _CURRENCY,
            Dimension(
                "sourced",
                "Bool",
                "source_id != ''",
                "Whether the activity carried a source_id (its page was powered by a response).",
            ),
        ),
        ("tenant_id", "hour", "action", "device_type", "currency", "sourced"),
    ),
    Aggregate(
        "target_stats_daily",
        "Activities per tenant, UTC day, action, target and currency: top targets, conversion per target.",
        _DAY,
        (
            _TENANT,
            _ACTION,
            Dimension("target_type", "LowCardinality(String)", "target_type", "Kind of target."),
            Dimension("target_id", "String", "target_id", "Target id within its type."),
            _CURRENCY,
        ),
        ("tenant_id", "action", "day", "target_type", "target_id", "currency"),
    ),
    Aggregate(
        "source_stats_daily",
        "Activities that carried a source_id, per tenant, UTC day, source id, action and currency: "
        "views, clicks and click-through per search or recommendation response.",
        _DAY,
        (
            _TENANT,
            Dimension("source_id", "String", "source_id", "Response id of the search or recommendation."),
            _ACTION,
            _CURRENCY,
        ),
        ("tenant_id", "day", "source_id", "action", "currency"),
        where="source_id != ''",
    ),
)


def _select(database: str, aggregate: Aggregate, source: str = "activities") -> str:
    keys = aggregate.keys
    columns = [f"{d.expression} AS {d.name}" for d in keys] + [f"{m.state} AS {m.name}" for m in MEASURES]
    where = f"\nWHERE {aggregate.where}" if aggregate.where else ""
    return (
        "SELECT\n  "
        + ",\n  ".join(columns)
        + f"\nFROM `{database}`.`{source}`{where}\nGROUP BY "
        + ", ".join(d.name for d in keys)
    )


def aggregate_table_ddl(database: str, aggregate: Aggregate, cluster: Cluster = SINGLE_NODE) -> str:
    """The table holding the states (`<name>_local` on a cluster, with a Distributed table in front)."""
    lines = [f"  `{d.name}` {d.type} COMMENT {quote(d.comment)}" for d in aggregate.keys]
    lines += [f"  `{m.name}` {m.type} COMMENT {quote(m.comment)}" for m in MEASURES]
    partition = f"toYYYYMM({aggregate.bucket.name})"
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{cluster.local(aggregate.name)}`{cluster.on_cluster} (\n"
        + ",\n".join(lines)
        + f"\n)\nENGINE = {cluster.engine('AggregatingMergeTree')}\n"
        f"PARTITION BY {partition}\n"
        f"ORDER BY ({', '.join(aggregate.order_by)})\n"
        f"COMMENT {quote(aggregate.comment + ' Filled on insert by ' + aggregate.view + '.')}"
    )


def aggregate_view_ddl(database: str, aggregate: Aggregate, cluster: Cluster = SINGLE_NODE) -> str:
    """On a cluster the view sits on every node, between the local tables: each replica aggregates the
    rows its shard receives, and a query through the Distributed aggregate merges the shards' states."""
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{database}`.`{aggregate.view}`{cluster.on_cluster} "
        f"TO `{database}`.`{cluster.local(aggregate.name)}` AS\n"
        f"{_select(database, aggregate, cluster.local('activities'))}"
    )


def aggregate_backfill_sql(database: str, aggregate: Aggregate) -> str:
    """Fills the aggregate from the rows `activities` already holds. Safe to repeat, and safe while
    inserts run: every measure is idempotent. On a cluster both names are Distributed tables: the
    states land on any shard, which a read merges all the same."""
    names = ", ".join(f"`{d.name}`" for d in aggregate.keys) + ", " + ", ".join(m.name for m in MEASURES)
    return f"INSERT INTO `{database}`.`{aggregate.name}` ({names})\n{_select(database, aggregate)}"


# -- parameterized views ---------------------------------------------------------------------------

# Parameters shared by the views. `tenant_id` '' means every tenant; `since` is inclusive, `until`
# exclusive, both on occurred_at (UTC).
_RANGE = (
    "({tenant_id:String} = '' OR tenant_id = {tenant_id:String})"
    " AND occurred_at >= {since:DateTime64(3, 'UTC')} AND occurred_at < {until:DateTime64(3, 'UTC')}"
)


@dataclass(frozen=True)
class View:
    """A parameterized view (`CREATE VIEW ... AS SELECT ... {param:Type}`), called as a table
    function: `SELECT ... FROM sessions(tenant_id = 'default', since = '...', until = '...')`."""

    name: str
    comment: str
    parameters: tuple[tuple[str, str, str], ...]
    """(name, type, meaning)."""
    body: str
    """The SELECT, with `{db}` for the database."""
    columns: tuple[tuple[str, str], ...]
    """(output column, meaning), as documented."""

    def ddl(self, database: str, cluster: Cluster = SINGLE_NODE) -> str:
        """On a cluster the view is created on every node and reads the Distributed `activities`:
        `FINAL` runs on each shard, which holds every copy of its activities (see docs/scaling.md)."""
        body = self.body.replace("{db}", f"`{database}`")
        return f"CREATE VIEW IF NOT EXISTS `{database}`.`{self.name}`{cluster.on_cluster} AS\n{body}"

    def call(self, arguments: Mapping[str, str | int | list[str]], database: str | None = None) -> str:
        """`name(param = literal, ...)`, the table function form, with every parameter given."""
        missing = [p for p, _, _ in self.parameters if p not in arguments]
        unknown = sorted(set(arguments) - {p for p, _, _ in self.parameters})
        if missing or unknown:
            raise ValueError(f"{self.name}: missing parameters {missing}, unknown {unknown}")
        args = ", ".join(f"{p} = {_literal(arguments[p])}" for p, _, _ in self.parameters)
        prefix = f"`{database}`." if database else ""
        return f"{prefix}{self.name}({args})"


def _literal(value: str | int | list[str]) -> str:
    if isinstance(value, bool):
        raise TypeError("no boolean parameters")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(quote(v) for v in value) + "]"
    return quote(value)


_RANGE_PARAMETERS = (
    ("tenant_id", "String", "Tenant; '' for every tenant."),
    ("since", "DateTime64(3, 'UTC')", "First instant of occurred_at included ('2026-11-01 00:00:00')."),
    ("until", "DateTime64(3, 'UTC')", "First instant of occurred_at no longer included."),
)

# The activities of the range, one row per activity (copies of a resent activity collapsed), each
# with its user key and session. A session is the client's session_id when it sent one; otherwise a
# run of the user's activities (without session id) with no gap longer than SESSION_GAP_S, named by
# the user key and the time of its first activity.
_SESSION_ACTIVITIES = f"""SELECT
  tenant_id, id, occurred_at, action, target_type, target_id, source_id, user_key, session_id,
  anonymous_id, user_id, device_type, segments, quantity, price, currency, order_id,
  if(session_id != '', session_id,
     concat(user_key, '@', toString(min(occurred_at) OVER (PARTITION BY tenant_id, user_key, gap_run))))
    AS session
FROM (
  SELECT *,
    sum(starts_run) OVER (PARTITION BY tenant_id, user_key, session_id = '' ORDER BY occurred_at, id
                          ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS gap_run
  FROM (
    SELECT *,
      session_id = '' AND (
        row_number() OVER w = 1
        OR dateDiff('millisecond', lagInFrame(occurred_at) OVER w, occurred_at) > {SESSION_GAP_S * 1000}
      ) AS starts_run
    FROM (
      SELECT *, {USER_KEY} AS user_key
      FROM {{db}}.activities FINAL
      WHERE {_RANGE}
    )
    WINDOW w AS (PARTITION BY tenant_id, user_key, session_id = '' ORDER BY occurred_at, id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
  )
)"""

_ACTIVITY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("tenant_id", "Tenant."),
    ("id", "Activity id."),
    ("occurred_at", "When the action happened (UTC)."),
    ("action", "Action."),
    ("target_type", "Kind of target."),
    ("target_id", "Target id."),
    ("source_id", "The activity's own source_id; empty when its page was not powered by a response."),
    ("user_key", "user_id, else anonymous_id, else session_id."),
    ("session_id", "The client's session id; empty when it sent none."),
    ("anonymous_id", "Anonymous visitor id."),
    ("user_id", "Identified user id."),
    ("device_type", "Device type."),
    ("segments", "Segments the user belonged to."),
    ("quantity", "Number of items."),
    ("price", "Unit price in minor units of currency."),
    ("currency", "Currency of price."),
    ("order_id", "Order of a purchase."),
    (
        "session",
        "Session key: the client's session_id, else `user_key@start` of the run of activities with no "
        "gap over 30 minutes.",
    ),
)

SESSION_ACTIVITIES = View(
    "session_activities",
    "The activities of a range, copies collapsed, each with its user key and session.",
    _RANGE_PARAMETERS,
    _SESSION_ACTIVITIES,
    _ACTIVITY_COLUMNS,
)

_PURCHASE_REVENUE = f"if(action = 'purchase' AND price IS NOT NULL, {REVENUE}, 0)"

SESSIONS = View(
    "sessions",
    "One row per session of a range.",
    _RANGE_PARAMETERS,
    f"""SELECT
  tenant_id,
  session,
  any(session_id) AS client_session_id,
  argMax(user_key, (occurred_at, id)) AS user_key,
  min(occurred_at) AS start,
  max(occurred_at) AS end,
  dateDiff('millisecond', start, end) / 1000 AS duration_s,
  count() AS activities,
  countIf(action = 'view') AS views,
  countIf(action = 'click') AS clicks,
  countIf(action = 'add_to_cart') AS add_to_carts,
  countIf(action = 'purchase') AS purchases,
  purchases > 0 AS converted,
  sumMapIf(map(currency, {_PURCHASE_REVENUE}), action = 'purchase' AND price IS NOT NULL) AS revenue,
  argMin(target_type, (occurred_at, id)) AS entry_target_type,
  argMin(target_id, (occurred_at, id)) AS entry_target_id,
  argMax(target_type, (occurred_at, id)) AS exit_target_type,
  argMax(target_id, (occurred_at, id)) AS exit_target_id,
  argMin(device_type, (occurred_at, id)) AS device_type,
  countIf(source_id != '') > 0 AS sourced
FROM {{db}}.session_activities(tenant_id = {{tenant_id:String}}, since = {{since:DateTime64(3, 'UTC')}},
                              until = {{until:DateTime64(3, 'UTC')}})
GROUP BY tenant_id, session""",
    (
        ("tenant_id", "Tenant."),
        ("session", "Session key (see `session_activities`)."),
        ("client_session_id", "The client's session id; empty for sessions cut by inactivity."),
        ("user_key", "User key of the session's last activity (the identified user after a sign-in)."),
        ("start", "occurred_at of the first activity."),
        ("end", "occurred_at of the last activity."),
        ("duration_s", "end - start, in seconds; 0 for a single-activity session (a bounce)."),
        ("activities", "Activities in the session."),
        ("views", "Activities with action view."),
        ("clicks", "Activities with action click."),
        ("add_to_carts", "Activities with action add_to_cart."),
        ("purchases", "Activities with action purchase."),
        ("converted", "Whether the session has a purchase."),
        ("revenue", "Revenue of the session's purchases by currency, in minor units."),
        ("entry_target_type", "Target type of the first activity."),
        ("entry_target_id", "Target id of the first activity."),
        ("exit_target_type", "Target type of the last activity."),
        ("exit_target_id", "Target id of the last activity."),
        ("device_type", "Device type of the first activity."),
        ("sourced", "Whether any activity of the session carried a source_id."),
    ),
)

# The person an activity belongs to: the user an anonymous visitor was seen logging in as (enrichment's
# identity stitching), else the activity's own user key. A visitor who logs in mid-funnel is one person.
PERSON = f"if(resolved_user_id != '', resolved_user_id, {USER_KEY})"

_STEP_CONDITIONS = ", ".join(f"action = {{steps:Array(String)}}[{n}]" for n in range(1, MAX_FUNNEL_STEPS + 1))

FUNNEL = View(
    "funnel",
    "Per person (and dimension value), how far along the steps the person went within the window.",
    (
        *_RANGE_PARAMETERS,
        ("steps", "Array(String)", f"The actions of the funnel, in order, 1 to {MAX_FUNNEL_STEPS}."),
        ("window_s", "UInt32", "Seconds from a first step within which the later steps must follow."),
        (
            "by",
            "String",
            "'' for one funnel; 'day' (per UTC day of activity), 'device_type' or 'segment'.",
        ),
    ),
    f"""SELECT
  tenant_id,
  dimension,
  user_key,
  windowFunnel({{window_s:UInt32}} * 1000)(toUInt64(toUnixTimestamp64Milli(occurred_at)), {_STEP_CONDITIONS})
    AS level
FROM (
  SELECT tenant_id, occurred_at, action, {PERSON} AS user_key,
    arrayJoin(multiIf(
      {{by:String}} = 'day', [toString(toDate(occurred_at))],
      {{by:String}} = 'device_type', [toString(device_type)],
      {{by:String}} = 'segment', if(empty(segments), [''], arrayMap(s -> toString(s), segments)),
      [''])) AS dimension
  FROM {{db}}.activities FINAL
  WHERE {_RANGE} AND has({{steps:Array(String)}}, action)
)
GROUP BY tenant_id, dimension, user_key""",
    (
        ("tenant_id", "Tenant."),
        ("dimension", "Value of the `by` dimension (a day, a device type, a segment); '' when by is ''."),
        (
            "user_key",
            "The person: the user identity stitching resolved (resolved_user_id), else the user key.",
        ),
        ("level", "Number of steps done in order within the window (0 when none started the funnel)."),
    ),
)

ATTRIBUTED_ACTIVITIES = View(
    "attributed_activities",
    "The activities of a range with the source each one is attributed to (last touch).",
    (
        *_RANGE_PARAMETERS,
        ("window_s", "UInt32", "How long a touch counts, in seconds, within the session."),
    ),
    f"""SELECT *,
  ifNull(touch_source_id, '') AS attributed_source_id,
  if(action = 'purchase' AND price IS NOT NULL, {REVENUE}, 0) AS revenue
FROM (
  SELECT *,
    last_value(nullIf(source_id, '')) OVER touches AS touch_source_id,
    last_value(if(source_id != '', occurred_at, NULL)) OVER touches AS touch_at
  FROM (
    SELECT *, toUnixTimestamp64Milli(occurred_at) AS occurred_ms
    FROM {{db}}.session_activities(tenant_id = {{tenant_id:String}}, since = {{since:DateTime64(3, 'UTC')}},
                                  until = {{until:DateTime64(3, 'UTC')}})
  )
  WINDOW touches AS (PARTITION BY tenant_id, session, target_type, target_id ORDER BY occurred_ms
                     RANGE BETWEEN {{window_s:UInt32}} * 1000 PRECEDING AND CURRENT ROW)
)""",
    (
        *_ACTIVITY_COLUMNS,
        ("occurred_ms", "occurred_at in milliseconds since the epoch."),
        ("touch_source_id", "Source of the last touch, NULL when none."),
        ("touch_at", "occurred_at of the last touch, NULL when none."),
        (
            "attributed_source_id",
            "source_id of the latest activity with a source_id on the same target in the same session, "
            "at most window_s before (the activity itself when it has one); empty when none.",
        ),
        ("revenue", "ifNull(quantity, 1) * price for purchases, in minor units of currency; else 0."),
    ),
)

VIEWS: tuple[View, ...] = (SESSION_ACTIVITIES, SESSIONS, FUNNEL, ATTRIBUTED_ACTIVITIES)


def funnel_by_person_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Migration 8: the `funnel` view counts persons (see PERSON). A schema created since has it already;
    replacing it again changes nothing."""
    return [FUNNEL.ddl(database, cluster).replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW", 1)]


def analytics_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """The statements of the analytics migration: aggregate tables (on a cluster, local tables and
    their Distributed tables), their views, their backfill from the rows already stored, then the
    parameterized views."""
    statements: list[str] = []
    for aggregate in AGGREGATES:
        statements.append(aggregate_table_ddl(database, aggregate, cluster))
        if cluster.enabled:
            # Read-only in normal use (the views write into the local tables); the backfill's rows go
            # to any shard.
            statements.append(cluster.distributed(database, aggregate.name, "rand()"))
        statements.append(aggregate_view_ddl(database, aggregate, cluster))
        statements.append(aggregate_backfill_sql(database, aggregate))
    statements += [view.ddl(database, cluster) for view in VIEWS]
    return statements
