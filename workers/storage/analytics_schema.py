"""The analytics layer over `activities`: aggregates of the deduplicated rows, and parameterized views.

Everything here is defined once, as data, and the DDL is generated from it (as `workers.storage.schema` does
for the raw table), so that the migrations, the reports (`collector.cli.report`) and the documentation
(`docs/analytics.md`, checked by the tests) name the same tables, columns and expressions.

Aggregates. A client that resends an acknowledged batch inserts the same activities (same ids) again:
the raw table, a ReplacingMergeTree, collapses those copies only when it merges parts, and a
materialized view sees every copy. So since schema version 11 nothing is counted on insert. An insert
only records the days it touched (`aggregate_touches`); the collectors' refresh
(`workers.storage.refresher`) computes each touched day again from `activities FINAL`, where copies are
one row, into a rollup table per `Aggregate` (`<name>_rollup`, the latest computation of a key wins),
then moves a watermark; and the aggregate itself is a view that reads the rollup for the days not
touched since the watermark and computes the other days from `activities FINAL` when read. Every day
is thus counted from the deduplicated rows: exact after retries, with plain numbers in the rows
(`activities`, `items`, `revenue`) and a sketch of the user keys (`users`, `uniqCombined64`). See
docs/analytics.md, "Why the counts are exact".

Schema versions 2 to 10 kept idempotent states keyed by activity id instead (`MEASURES_V2`,
AggregatingMergeTree tables filled by materialized views), which made a month cost more to read from
the aggregates than from the raw rows; version 11 replaces them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.storage.schema import SINGLE_NODE, TIME, USER_KEY, Cluster

if TYPE_CHECKING:
    from workers.storage.session_rollups import SessionRollup
    from workers.storage.source_rollups import SourceRollup

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


# The measures of schema versions 2 to 10: idempotent states keyed by activity id, which an
# AggregatingMergeTree filled on insert could add copies of an activity to without counting them twice.
MEASURES_V2: tuple[Measure, ...] = (
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
            ("items", "arraySum(maxMapMerge{If}({c}{cond}).2)", "Sum of items."),
            ("revenue", "arraySum(maxMapMerge{If}({c}{cond}).3)", "Sum of revenue."),
        ),
    ),
)

# The measures since schema version 11: plain numbers over the deduplicated rows (`activities FINAL`),
# computed per day by the refresh (`refresh_statements`), or when read for the days not refreshed yet.
MEASURES: tuple[Measure, ...] = (
    Measure(
        "activities",
        "UInt64",
        "count()",
        "Activities, each counted once however often it was sent (copies collapsed).",
        (("activities", "sum{If}({c}{cond})", "Number of activities (exact): sum(activities)."),),
    ),
    Measure(
        "users",
        "AggregateFunction(uniqCombined64, String)",
        f"uniqCombined64State({USER_KEY})",
        "Sketch of the distinct user keys (user_id, else anonymous_id, else session_id).",
        (("users", "uniqCombined64Merge{If}({c}{cond})", "Number of distinct users (sketch)."),),
    ),
    Measure(
        "items",
        "Int64",
        f"sumIf({ITEMS}, {HAS_AMOUNT})",
        "Sum of ifNull(quantity, 1) over the activities with a quantity or a price.",
        (("items", "sum{If}({c}{cond})", "Items: sum(items)."),),
    ),
    Measure(
        "revenue",
        "Int64",
        f"sumIf({REVENUE}, {HAS_AMOUNT})",
        "Sum of ifNull(quantity, 1) * price, in minor units of `currency`.",
        (("revenue", "sum{If}({c}{cond})", "Revenue in minor units of currency: sum(revenue)."),),
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
_IS_BOT = Dimension(
    "is_bot",
    "Bool",
    "is_bot",
    "Whether the activity's user agent is a crawler, monitor or link previewer; reports leave these out.",
)


@dataclass(frozen=True)
class Aggregate:
    """A view (`name`) over a rollup table (`<name>_rollup`): the rollup holds the measures of the days
    refreshed since their last activity arrived, and the view adds those of the other days from
    `activities FINAL` when read (see the module's docstring)."""

    name: str
    comment: str
    bucket: Dimension
    dimensions: tuple[Dimension, ...]
    order_by: tuple[str, ...]
    where: str | None = None
    since_version: int = 2
    """The schema version that brought the aggregate."""
    rollup_order_by: tuple[str, ...] = ()
    """The rollup table's sorting key when it differs from `order_by` (that of the states of schema
    versions 2 to 10)."""

    @property
    def view(self) -> str:
        """The materialized view of schema versions 2 to 10 (dropped by version 11)."""
        return f"{self.name}_mv"

    @property
    def rollup(self) -> str:
        return f"{self.name}_rollup"

    @property
    def rollup_key(self) -> tuple[str, ...]:
        return self.rollup_order_by or self.order_by

    @property
    def bucket_day(self) -> str:
        """The UTC day of a bucket, over the rollup's columns."""
        return self.bucket.name if self.bucket.type == "Date" else f"toDate({self.bucket.name})"

    @property
    def keys(self) -> tuple[Dimension, ...]:
        return (self.dimensions[0], self.bucket, *self.dimensions[1:])

    def without_bot_key(self) -> Aggregate:
        """The shape of schema versions 2 to 10, before `is_bot` became a key."""
        return Aggregate(
            self.name,
            self.comment,
            self.bucket,
            tuple(d for d in self.dimensions if d is not _IS_BOT),
            tuple(o for o in self.order_by if o != _IS_BOT.name),
            self.where,
        )


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
            _IS_BOT,
        ),
        ("tenant_id", "is_bot", "hour", "action", "device_type", "currency", "sourced"),
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
            _IS_BOT,
        ),
        ("tenant_id", "action", "is_bot", "day", "target_type", "target_id", "currency"),
        # Schema version 16: a target's days together, so that the top targets' second pass (their
        # users, items and revenue, `report top-targets`) reads a few granules.
        rollup_order_by=("tenant_id", "action", "is_bot", "target_type", "target_id", "day", "currency"),
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
            _IS_BOT,
        ),
        ("tenant_id", "is_bot", "day", "source_id", "action", "currency"),
        where="source_id != ''",
    ),
    Aggregate(
        "activity_stats_daily",
        "Activities per tenant, UTC day and currency: the daily totals, and the distinct users of a day "
        "in a few sketches rather than one per hour and action.",
        _DAY,
        (_TENANT, _CURRENCY, _IS_BOT),
        ("tenant_id", "is_bot", "day", "currency"),
        since_version=11,
    ),
)

AGGREGATES_V2 = tuple(a for a in AGGREGATES if a.since_version == 2)
"""The aggregates schema version 2 created (as states filled on insert)."""


def _select(database: str, aggregate: Aggregate, source: str = "activities") -> str:
    keys = aggregate.keys
    columns = [f"{d.expression} AS {d.name}" for d in keys] + [f"{m.state} AS {m.name}" for m in MEASURES_V2]
    where = f"\nWHERE {aggregate.where}" if aggregate.where else ""
    return (
        "SELECT\n  "
        + ",\n  ".join(columns)
        + f"\nFROM `{database}`.`{source}`{where}\nGROUP BY "
        + ", ".join(d.name for d in keys)
    )


def aggregate_table_ddl(database: str, aggregate: Aggregate, cluster: Cluster = SINGLE_NODE) -> str:
    """Schema version 2: the table holding the states (`<name>_local` on a cluster, with a Distributed
    table in front of it)."""
    lines = [f"  `{d.name}` {d.type} COMMENT {quote(d.comment)}" for d in aggregate.keys]
    lines += [f"  `{m.name}` {m.type} COMMENT {quote(m.comment)}" for m in MEASURES_V2]
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
    """Schema version 2: on a cluster the view sits on every node, between the local tables."""
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{database}`.`{aggregate.view}`{cluster.on_cluster} "
        f"TO `{database}`.`{cluster.local(aggregate.name)}` AS\n"
        f"{_select(database, aggregate, cluster.local('activities'))}"
    )


def aggregate_backfill_sql(database: str, aggregate: Aggregate) -> str:
    """Schema version 2: fills the aggregate from the rows `activities` already holds."""
    names = ", ".join(f"`{d.name}`" for d in aggregate.keys) + ", " + ", ".join(m.name for m in MEASURES_V2)
    return f"INSERT INTO `{database}`.`{aggregate.name}` ({names})\n{_select(database, aggregate)}"


# -- aggregates since schema version 11: rollups of the deduplicated rows --------------------------

TOUCHES = "aggregate_touches"
"""Per tenant and UTC day, when activities of that day were last inserted (filled on insert)."""
TOUCHES_VIEW = "aggregate_touches_mv"
REFRESHES = "aggregate_refreshes"
"""The refresh watermark: every day touched before it is in the rollups."""
REFRESH_MARGIN_S = 30
"""How long an insert may take, from its touch to its rows being visible to a query: a refresh that
starts at T counts as covering the touches up to T minus this margin only."""
EPOCH = "1970-01-01 00:00:00.000"

_DIRTY = (
    "SELECT tenant_id, day FROM {db}.`" + TOUCHES + "` "
    "WHERE inserted_at > (SELECT max(refreshed_to) FROM {db}.`" + REFRESHES + "`)"
)


def _rollup_select(database: str, aggregate: Aggregate, where: str, version: str) -> str:
    """The rollup's rows computed from `activities FINAL` (copies collapsed) for the rows of `where`;
    keys cast to the rollup's types, so that the view's two branches have the same columns."""
    keys = [f"CAST({d.expression} AS {d.type}) AS {d.name}" for d in aggregate.keys]
    columns = keys + [f"{m.state} AS {m.name}" for m in MEASURES]
    if version:
        columns.append(f"{version} AS refreshed_at")
    conditions = " AND ".join(f"({w})" for w in (where, aggregate.where) if w)
    return (
        "SELECT\n  "
        + ",\n  ".join(columns)
        + f"\nFROM `{database}`.activities FINAL\nWHERE {conditions}\nGROUP BY "
        + ", ".join(d.name for d in aggregate.keys)
    )


ROLLUP_MERGE_AGE_S = 300
ROLLUP_SETTINGS = (
    f"min_age_to_force_merge_seconds = {ROLLUP_MERGE_AGE_S}, min_age_to_force_merge_on_partition_only = 1"
)
"""Table settings of every rollup (schema version 17). A rollup is read with FINAL, which merges the
rows of a partition's parts while reading unless the partition is one part: at 10M activities a
month's top targets took 80 ms to rank over three parts, 25 ms over one. A refresh writes a day into
a rollup once that day has gone quiet (and again for late activities or an erasure), so a partition
gets a new part seldom; once every part of a partition is `ROLLUP_MERGE_AGE_S` old, ClickHouse merges
them into one (about 2.5 s of a background thread for a month of 3M rollup rows)."""


def _rollup_columns(aggregate: Aggregate) -> str:
    return ", ".join(f"`{c}`" for c in [*(d.name for d in aggregate.keys), *(m.name for m in MEASURES)])


def rollup_table_ddl(
    database: str, aggregate: Aggregate, cluster: Cluster = SINGLE_NODE, table: str = ""
) -> str:
    """The rollup table (`<name>_rollup_local` on a cluster, with a Distributed table in front of it):
    one row per key and refresh; the latest refresh of a key wins (`FINAL`). `table`: another name."""
    lines = [f"  `{d.name}` {d.type} COMMENT {quote(d.comment)}" for d in aggregate.keys]
    lines += [f"  `{m.name}` {m.type} COMMENT {quote(m.comment)}" for m in MEASURES]
    lines.append(
        f"  `refreshed_at` {TIME} COMMENT 'The refresh that computed the row: the latest one counts.'"
    )
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{cluster.local(table or aggregate.rollup)}`"
        f"{cluster.on_cluster} (\n"
        + ",\n".join(lines)
        + f"\n)\nENGINE = {cluster.engine('ReplacingMergeTree', 'refreshed_at')}\n"
        f"PARTITION BY toYYYYMM({aggregate.bucket.name})\n"
        f"ORDER BY ({', '.join(aggregate.rollup_key)})\n"
        f"SETTINGS {ROLLUP_SETTINGS}\n"
        f"COMMENT {quote(f'{aggregate.comment} Refreshed per day; read {aggregate.name}.')}"
    )


def aggregate_read_view_ddl(database: str, aggregate: Aggregate, cluster: Cluster = SINGLE_NODE) -> str:
    """The aggregate as analysts and reports read it: the rollup's rows of the days refreshed since their
    last insert, and the same rows computed from `activities FINAL` for the other days. GLOBAL: on a
    cluster the set of days is computed once and sent to every shard."""
    db = f"`{database}`"
    dirty = _DIRTY.replace("{db}", db)
    keys = ", ".join(d.name for d in aggregate.keys)
    measures = ", ".join(m.name for m in MEASURES)
    rolled = (
        f"SELECT {keys}, {measures}\nFROM {db}.`{aggregate.rollup}` FINAL\n"
        f"WHERE (tenant_id, {aggregate.bucket_day}) GLOBAL NOT IN ({dirty})"
    )
    fresh = _rollup_select(database, aggregate, f"(tenant_id, toDate(occurred_at)) GLOBAL IN ({dirty})", "")
    return (
        f"CREATE VIEW IF NOT EXISTS {db}.`{aggregate.name}`{cluster.on_cluster} AS\n"
        f"{rolled}\nUNION ALL\n{fresh}"
    )


def touch_every_day_sql(database: str) -> str:
    """Every (tenant, day) `activities` holds marked touched now: the reads compute them from
    `activities` until the next refresh puts them in the rollups (a migration that brings a rollup)."""
    return (
        f"INSERT INTO `{database}`.`{TOUCHES}` (tenant_id, day, inserted_at)\n"
        f"SELECT tenant_id, toDate(occurred_at) AS day, now64(3, 'UTC') FROM `{database}`.activities "
        "GROUP BY tenant_id, day"
    )


def touches_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """`aggregate_touches` and the materialized view that fills it: a few rows per insert (one per
    tenant and day in it), each replacing the last of its day (`ReplacingMergeTree`)."""
    table = cluster.local(TOUCHES)
    statements = [
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}`{cluster.on_cluster} (\n"
        "  `tenant_id` LowCardinality(String) COMMENT 'Tenant.',\n"
        "  `day` Date COMMENT 'UTC day of occurred_at of inserted activities.',\n"
        f"  `inserted_at` {TIME} COMMENT 'When activities of that day were inserted (server clock).'\n"
        f")\nENGINE = {cluster.engine('ReplacingMergeTree', 'inserted_at')}\n"
        "ORDER BY (tenant_id, day)\n"
        "COMMENT 'The days that received activities, and when last: the aggregates refresh them.'"
    ]
    if cluster.enabled:
        statements.append(cluster.distributed(database, TOUCHES, "cityHash64(tenant_id, day)"))
    statements.append(
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{database}`.`{TOUCHES_VIEW}`{cluster.on_cluster} "
        f"TO `{database}`.`{table}` AS\n"
        f"SELECT tenant_id, toDate(occurred_at) AS day, now64(3, 'UTC') AS inserted_at\n"
        f"FROM `{database}`.`{cluster.local('activities')}`\nGROUP BY tenant_id, day"
    )
    return statements


def refreshes_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    table = cluster.local(REFRESHES)
    statements = [
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}`{cluster.on_cluster} (\n"
        "  `name` LowCardinality(String) COMMENT 'What was refreshed: aggregates.',\n"
        f"  `refreshed_to` {TIME} COMMENT 'Every day touched before this instant is in the rollups.',\n"
        f"  `days` UInt64 COMMENT 'Days the refresh computed.',\n"
        f"  `finished_at` {TIME} DEFAULT now64(3, 'UTC') COMMENT 'When the refresh ended.'\n"
        f")\nENGINE = {cluster.engine('ReplacingMergeTree', 'refreshed_to')}\n"
        "ORDER BY name\n"
        "COMMENT 'The watermark of the aggregates: the latest refresh (see docs/analytics.md).'"
    ]
    if cluster.enabled:
        statements.append(cluster.distributed(database, REFRESHES, "rand()"))
    return statements


def refresh_statements(
    database: str, since: str, refreshed_to: str, cluster: Cluster = SINGLE_NODE
) -> list[str]:
    """One refresh: every day last touched after `since` (the last watermark) and by `refreshed_to`
    (the refresh's start minus REFRESH_MARGIN_S; both 'YYYY-MM-DD hh:mm:ss.sss' UTC, from the server's
    clock) computed again from `activities FINAL` into each rollup, then the watermark moved to
    `refreshed_to`. A day touched after `refreshed_to` (today, while traffic flows) is left for a later
    refresh: the views read it from `activities` until its inserts stop, so computing it now would be
    wasted. Run the statements in order: the watermark moves only once the rollups hold the days. On a
    cluster the rows go through the Distributed rollups, sharded by tenant and bucket, so that the rows
    of one key meet on a shard (where FINAL collapses them)."""
    days = refreshed_days_sql(database, since, refreshed_to)
    touched = f"(tenant_id, toDate(occurred_at)) GLOBAL IN ({days})"
    version = f"toDateTime64({quote(refreshed_to)}, 3, 'UTC')"
    statements = [
        f"INSERT INTO `{database}`.`{a.rollup}` ({_rollup_columns(a)}, `refreshed_at`)\n"
        + _rollup_select(database, a, touched, version)
        for a in AGGREGATES
    ]
    # The rollups of what the responses earned (schema version 13), before the watermark too.
    from workers.storage import session_rollups, source_rollups

    statements += source_rollups.refresh_statements(database, days, version)
    statements += session_rollups.refresh_statements(database, days, version)
    statements.append(
        f"INSERT INTO `{database}`.`{REFRESHES}` (name, refreshed_to, days)\n"
        f"SELECT 'aggregates', {version}, count() FROM ({days})"
    )
    # The watermark may move only once the rollups' rows are on their shards.
    return [cluster.foreground(s) for s in statements]


def refreshed_days_sql(database: str, since: str, refreshed_to: str) -> str:
    """The (tenant_id, day) a refresh from watermark `since` to `refreshed_to` computes."""
    return (
        f"SELECT tenant_id, day FROM `{database}`.`{TOUCHES}` GROUP BY tenant_id, day "
        f"HAVING max(inserted_at) > toDateTime64({quote(since)}, 3, 'UTC') "
        f"AND max(inserted_at) <= toDateTime64({quote(refreshed_to)}, 3, 'UTC')"
    )


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
    ("include_bots", "Bool", "false leaves out the activities flagged is_bot; true keeps them."),
)
# Bots are stored but left out of every view unless asked for.
_HUMANS = "({include_bots:Bool} OR NOT is_bot)"
# The arguments by which one view passes its own range on to another.
_PASS_RANGE = (
    "tenant_id = {tenant_id:String}, since = {since:DateTime64(3, 'UTC')}, "
    "until = {until:DateTime64(3, 'UTC')}, include_bots = {include_bots:Bool}"
)

# Identity links, read when a view is queried: per anonymous id, the user it was last seen with on an
# activity that carried both (a login, or anything sent after it). Every stored activity of the tenant
# counts, whatever the range, so that a visitor's activities *before* the login belong to the user too
# (enrichment's resolved_user_id only covers the activities that arrive after it saw the link). Read
# from `person_links` (kind `user`: the user of an anonymous or session id), a row per pair of ids,
# rather than from every activity.
_LINKS = """SELECT tenant_id AS link_tenant_id, key AS link_anonymous_id,
      argMax(linked, occurred_at) AS linked_user_id
    FROM {db}.person_links
    WHERE ({tenant_id:String} = '' OR tenant_id = {tenant_id:String}) AND kind = 'user'
    GROUP BY link_tenant_id, link_anonymous_id"""

# The person an activity belongs to: its user id; else the user its anonymous id was seen logging in
# as (`_LINKS`); else the user identity stitching resolved (links kept in PostgreSQL); else its user key.
PERSON = (
    "multiIf(user_id != '', user_id, linked_user_id != '', linked_user_id, "
    f"resolved_user_id != '', resolved_user_id, {USER_KEY})"
)

# A search query as the reports group it: the query typed (metadata.query, else the search target's
# id), lower case, spaces trimmed and runs of white space read as one.
NORMALISED_QUERY = "lower(trimBoth(replaceRegexpAll(if(query != '', query, target_id), '[[:space:]]+', ' ')))"

_PERSON_ACTIVITIES = f"""SELECT
  tenant_id, id, occurred_at, action, target_type, target_id, source_id, source_type, source_name,
  source_variant, source_position, source_result_count, query, user_key, {PERSON} AS person, session_id,
  anonymous_id, user_id, device_type, segments, quantity, price, currency, order_id, is_bot
FROM (
  SELECT tenant_id, id, occurred_at, action, target_type, target_id, source_id, source_type, source_name,
    source_variant, source_position, source_result_count, query, session_id, anonymous_id, user_id,
    resolved_user_id, device_type, segments, quantity, price, currency, order_id, is_bot,
    {USER_KEY} AS user_key
  FROM {{db}}.activities FINAL
  WHERE {_RANGE} AND {_HUMANS}
) AS a
LEFT JOIN (
    {_LINKS}
) AS l ON a.tenant_id = l.link_tenant_id AND a.anonymous_id = l.link_anonymous_id"""

_PERSON_COLUMNS: tuple[tuple[str, str], ...] = (
    ("tenant_id", "Tenant."),
    ("id", "Activity id."),
    ("occurred_at", "When the action happened (UTC)."),
    ("action", "Action."),
    ("target_type", "Kind of target."),
    ("target_id", "Target id."),
    ("source_id", "The activity's own source_id; empty when its page was not powered by a response."),
    ("source_type", "Kind of response (search, recommendation, ...); empty when not sent."),
    ("source_name", "Widget, strategy or search page of the response."),
    ("source_variant", "A/B arm of the response; empty when none."),
    ("source_position", "1-based position of the target in the response's list; 0 when not known."),
    ("source_result_count", "Results the response held (searches); NULL when not sent."),
    ("query", "Search query typed by the user."),
    ("user_key", "user_id, else anonymous_id, else session_id."),
    (
        "person",
        "user_id; else the user the anonymous_id was last seen with on any stored activity; else "
        "resolved_user_id; else user_key.",
    ),
    ("session_id", "The client's session id; empty when it sent none."),
    ("anonymous_id", "Anonymous visitor id."),
    ("user_id", "Identified user id."),
    ("device_type", "Device type."),
    ("segments", "Segments the user belonged to."),
    ("quantity", "Number of items."),
    ("price", "Unit price in minor units of currency."),
    ("currency", "Currency of price."),
    ("order_id", "Order of a purchase."),
    ("is_bot", "The user agent is a crawler (only with include_bots = true)."),
)

PERSON_ACTIVITIES = View(
    "person_activities",
    "The activities of a range, copies collapsed, each with the person it belongs to.",
    _RANGE_PARAMETERS,
    _PERSON_ACTIVITIES,
    _PERSON_COLUMNS,
)


# The activities of the range, one row per activity (copies of a resent activity collapsed), each
# with its user key and session. A session is the client's session_id when it sent one; otherwise a
# run of the user's activities (without session id) with no gap longer than SESSION_GAP_S, named by
# the user key and the time of its first activity.
def session_activities_sql(rows: str) -> str:
    """The activities of `rows` (what follows FROM: `activities FINAL` and a WHERE clause), each with
    its user key and session."""
    return f"""SELECT
  tenant_id, id, occurred_at, action, target_type, target_id, source_id, user_key, session_id,
  anonymous_id, user_id, device_type, segments, quantity, price, currency, order_id,
  if(session_id != '', session_id,
     concat(user_key, '@', toString(min(occurred_at) OVER (PARTITION BY tenant_id, user_key, gap_run))))
    AS session,
  is_bot, source_type, source_name, source_variant, source_position, source_result_count, query
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
      FROM {rows}
    )
    WINDOW w AS (PARTITION BY tenant_id, user_key, session_id = '' ORDER BY occurred_at, id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
  )
)"""


_SESSION_ACTIVITIES = session_activities_sql(f"{{db}}.activities FINAL\n      WHERE {_RANGE} AND {_HUMANS}")

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
_PERSON_COLUMN = dict(_PERSON_COLUMNS)
_SESSION_ACTIVITY_COLUMNS = _ACTIVITY_COLUMNS + tuple(
    (c, _PERSON_COLUMN[c])
    for c in (
        "is_bot",
        "source_type",
        "source_name",
        "source_variant",
        "source_position",
        "source_result_count",
        "query",
    )
)

SESSION_ACTIVITIES = View(
    "session_activities",
    "The activities of a range, copies collapsed, each with its user key and session.",
    _RANGE_PARAMETERS,
    _SESSION_ACTIVITIES,
    _SESSION_ACTIVITY_COLUMNS,
)

_PURCHASE_REVENUE = f"if(action = 'purchase' AND price IS NOT NULL, {REVENUE}, 0)"


def sessions_sql(session_activities: str) -> str:
    """One row per session of `session_activities` (what follows FROM: rows as `session_activities`
    gives them)."""
    return f"""SELECT
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
FROM {session_activities}
GROUP BY tenant_id, session"""


SESSIONS = View(
    "sessions",
    "One row per session of a range.",
    _RANGE_PARAMETERS,
    sessions_sql(f"{{db}}.session_activities({_PASS_RANGE})"),
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
  SELECT tenant_id, occurred_at, action, person AS user_key,
    arrayJoin(multiIf(
      {{by:String}} = 'day', [toString(toDate(occurred_at))],
      {{by:String}} = 'device_type', [toString(device_type)],
      {{by:String}} = 'segment', if(empty(segments), [''], arrayMap(s -> toString(s), segments)),
      [''])) AS dimension
  FROM {{db}}.person_activities({_PASS_RANGE})
  WHERE has({{steps:Array(String)}}, action)
)
GROUP BY tenant_id, dimension, user_key""",
    (
        ("tenant_id", "Tenant."),
        ("dimension", "Value of the `by` dimension (a day, a device type, a segment); '' when by is ''."),
        (
            "user_key",
            "The person (see `person_activities`): a visitor who logs in mid-funnel is one person.",
        ),
        ("level", "Number of steps done in order within the window (0 when none started the funnel)."),
    ),
)

# A touch: a click or a view that carries a source_id, the shopper choosing the target in the response's
# list or looking at a page it powered. Impressions (shown, not chosen) and searches (the response
# itself) are not touches. Naming the actions lets a query read them by the table's key.
TOUCH_ACTIONS = "('click', 'view')"
IS_TOUCH = f"source_id != '' AND action IN {TOUCH_ACTIONS}"
OUTCOME_ACTIONS = "('add_to_cart', 'purchase')"
_TOUCH_FIELDS = (
    ("touch_source_id", "source_id"),
    ("touch_at", "occurred_at"),
    ("touch_source_type", "source_type"),
    ("touch_source_name", "source_name"),
    ("touch_source_variant", "source_variant"),
    ("touch_source_position", "source_position"),
)
_LAST_TOUCH = ",\n    ".join(
    f"last_value(if(is_touch, {column}, NULL)) OVER touches AS {name}" for name, column in _TOUCH_FIELDS
)
_WINDOW_PARAMETER = ("window_s", "UInt32", "How long a touch counts, in seconds, across sessions.")

ATTRIBUTED_ACTIVITIES = View(
    "attributed_activities",
    "The activities of a range with the source each one is attributed to (last touch by the person).",
    (*_RANGE_PARAMETERS, _WINDOW_PARAMETER),
    # The touches of the window before `since` are read too, so that what is bought early in the range
    # still finds the click that led to it.
    f"""SELECT *,
  ifNull(touch_source_id, '') AS attributed_source_id,
  if(action = 'purchase' AND price IS NOT NULL, {REVENUE}, 0) AS revenue
FROM (
  SELECT *,
    {_LAST_TOUCH}
  FROM (
    SELECT *, toUnixTimestamp64Milli(occurred_at) AS occurred_ms, {IS_TOUCH} AS is_touch
    FROM {{db}}.person_activities(
      tenant_id = {{tenant_id:String}},
      since = {{since:DateTime64(3, 'UTC')}} - toIntervalSecond({{window_s:UInt32}}),
      until = {{until:DateTime64(3, 'UTC')}}, include_bots = {{include_bots:Bool}})
  )
  WINDOW touches AS (PARTITION BY tenant_id, person, target_type, target_id ORDER BY occurred_ms
                     RANGE BETWEEN {{window_s:UInt32}} * 1000 PRECEDING AND CURRENT ROW)
)
WHERE occurred_at >= {{since:DateTime64(3, 'UTC')}}""",
    (
        *_PERSON_COLUMNS,
        ("occurred_ms", "occurred_at in milliseconds since the epoch."),
        (
            "is_touch",
            "Whether the activity is a touch: a click or a view with a source_id.",
        ),
        ("touch_source_id", "Source of the last touch, NULL when none."),
        ("touch_at", "occurred_at of the last touch, NULL when none."),
        ("touch_source_type", "source_type of the last touch, NULL when none."),
        ("touch_source_name", "source_name of the last touch, NULL when none."),
        ("touch_source_variant", "source_variant of the last touch, NULL when none."),
        ("touch_source_position", "source_position of the last touch, NULL when none."),
        (
            "attributed_source_id",
            "source_id of the latest touch by the same person on the same target, at most window_s "
            "before (the activity itself when it is a touch), in any session; empty when none.",
        ),
        ("revenue", "ifNull(quantity, 1) * price for purchases, in minor units of currency; else 0."),
    ),
)

# The add-to-carts and purchases a touch led to, found per (person, target): the touches and the
# outcomes of each are gathered into two arrays and every outcome takes the latest touch at most
# window_s before it. The same answer as `attributed_activities` gives for those actions, computed
# from the touches and outcomes only (a fraction of the activities), without a window function over
# them all.
CREDITED_ACTIVITIES = View(
    "credited_activities",
    "The add-to-carts and purchases of a range that a touch by the same person led to, with its response.",
    (*_RANGE_PARAMETERS, _WINDOW_PARAMETER),
    f"""SELECT tenant_id, outcome.1 AS id, outcome.2 AS occurred_at, outcome.3 AS action, person, target_type,
  target_id,
  arrayLast(t -> t.1 <= toUnixTimestamp64Milli(outcome.2)
                 AND t.1 >= toUnixTimestamp64Milli(outcome.2) - {{window_s:UInt32}} * 1000, touches) AS touch,
  touch.2 AS source_id, touch.3 AS source_type, touch.4 AS source_name, touch.5 AS source_variant,
  touch.6 AS source_position, fromUnixTimestamp64Milli(touch.1, 'UTC') AS touch_at,
  outcome.4 AS currency, outcome.5 AS revenue
FROM (
  SELECT tenant_id, person, target_type, target_id,
    arraySort(groupArrayIf((toUnixTimestamp64Milli(occurred_at), source_id, source_type, source_name,
      source_variant, source_position), is_touch)) AS touches,
    groupArrayIf((id, occurred_at, action, currency,
      if(action = 'purchase' AND price IS NOT NULL, {REVENUE}, 0)),
      action IN ('add_to_cart', 'purchase') AND occurred_at >= {{since:DateTime64(3, 'UTC')}}) AS outcomes
  FROM (
    SELECT *, {IS_TOUCH} AS is_touch
    FROM {{db}}.person_activities(
      tenant_id = {{tenant_id:String}},
      since = {{since:DateTime64(3, 'UTC')}} - toIntervalSecond({{window_s:UInt32}}),
      until = {{until:DateTime64(3, 'UTC')}}, include_bots = {{include_bots:Bool}})
    WHERE action IN ('click', 'view', 'add_to_cart', 'purchase') AND (is_touch OR action IN {OUTCOME_ACTIONS})
  )
  GROUP BY tenant_id, person, target_type, target_id
  HAVING notEmpty(touches) AND notEmpty(outcomes)
)
ARRAY JOIN outcomes AS outcome
WHERE touch.1 != 0""",
    (
        ("tenant_id", "Tenant."),
        ("id", "Activity id of the add-to-cart or purchase."),
        ("occurred_at", "When it happened (UTC)."),
        ("action", "add_to_cart or purchase."),
        ("person", "The person (see `person_activities`)."),
        ("target_type", "Kind of target."),
        ("target_id", "Target id."),
        ("touch", "The touch: (ms since the epoch, source_id, type, name, variant, position)."),
        ("source_id", "source_id of the latest touch by the person on the target within window_s."),
        ("source_type", "Its response's kind."),
        ("source_name", "Its response's widget, strategy or search page."),
        ("source_variant", "Its response's A/B arm."),
        ("source_position", "The position the target had where it was touched; 0 when not known."),
        ("touch_at", "occurred_at of the touch."),
        ("currency", "Currency of revenue."),
        ("revenue", "Purchases: ifNull(quantity, 1) * price, minor units of currency; else 0."),
    ),
)

_OWN = f"""FROM {{db}}.activities FINAL
WHERE {_RANGE} AND {_HUMANS} AND source_id != ''"""

# What a response earned: its own impressions, views and clicks, and the add-to-carts and purchases
# attributed to it, each with the response's type, name, variant and the position the target had.
SOURCE_ACTIVITIES = View(
    "source_activities",
    "Impressions, views and clicks of the responses, and the add-to-carts and purchases attributed to them.",
    (*_RANGE_PARAMETERS, _WINDOW_PARAMETER),
    f"""SELECT tenant_id, id, occurred_at, action, target_type, target_id, false AS credited, source_id,
  toString(source_type) AS source_type, toString(source_name) AS source_name,
  toString(source_variant) AS source_variant, source_position, toString(currency) AS currency,
  toInt64(0) AS revenue
{_OWN} AND action IN ('impression', 'view', 'click')
UNION ALL
SELECT tenant_id, id, occurred_at, action, target_type, target_id, true AS credited, source_id, source_type,
  source_name, source_variant, source_position, currency, revenue
FROM {{db}}.credited_activities({_PASS_RANGE}, window_s = {{window_s:UInt32}})""",
    (
        ("tenant_id", "Tenant."),
        ("id", "Activity id."),
        ("occurred_at", "When the action happened (UTC)."),
        ("action", "impression, view, click, add_to_cart or purchase."),
        ("target_type", "Kind of target."),
        ("target_id", "Target id."),
        (
            "credited",
            "true for an add-to-cart or purchase credited to the response by attribution; false for the "
            "response's own impressions, views and clicks.",
        ),
        ("source_id", "The response: the activity's own source_id, or the one it is attributed to."),
        ("source_type", "Kind of response."),
        ("source_name", "Widget, strategy or search page."),
        ("source_variant", "A/B arm; empty when none."),
        ("source_position", "Position of the target in the response's list (of the touch, when credited)."),
        ("currency", "Currency of revenue."),
        ("revenue", "Purchases: ifNull(quantity, 1) * price, minor units of currency; else 0."),
    ),
)

SEARCH_RESPONSES = View(
    "search_responses",
    "One row per search response: the query, how many results it held, and what it led to.",
    (*_RANGE_PARAMETERS, _WINDOW_PARAMETER),
    f"""SELECT tenant_id, source_id, searched_at, normalised_query AS query, searches, result_count,
  clicks, positioned_clicks, click_position_sum, add_to_carts, purchases, revenue
FROM (
  SELECT tenant_id, source_id,
    minIf(occurred_at, action = 'search') AS searched_at,
    anyIf({NORMALISED_QUERY}, action = 'search') AS normalised_query,
    countIf(action = 'search') AS searches,
    anyIf(source_result_count, action = 'search') AS result_count,
    countIf(action = 'click') AS clicks,
    countIf(action = 'click' AND source_position > 0) AS positioned_clicks,
    sumIf(source_position, action = 'click' AND source_position > 0) AS click_position_sum,
    countIf(action = 'add_to_cart') AS add_to_carts,
    countIf(action = 'purchase') AS purchases,
    sumMapIf(map(currency, revenue), action = 'purchase' AND revenue != 0) AS revenue
  FROM (
    SELECT tenant_id, source_id, action, occurred_at, query, target_id, source_result_count, source_position,
      toString(currency) AS currency, toInt64(0) AS revenue
    {_OWN} AND action IN ('search', 'click')
    UNION ALL
    SELECT tenant_id, source_id, action, occurred_at, '' AS query, '' AS target_id,
      CAST(NULL, 'Nullable(UInt32)') AS source_result_count, source_position, currency, revenue
    FROM {{db}}.credited_activities({_PASS_RANGE}, window_s = {{window_s:UInt32}})
  )
  GROUP BY tenant_id, source_id
  HAVING searches > 0
)""",
    (
        ("tenant_id", "Tenant."),
        ("source_id", "The search response's id."),
        ("searched_at", "occurred_at of the search."),
        (
            "query",
            "The query: metadata.query (else the search target's id), lower case, trimmed, runs of "
            "white space as one space.",
        ),
        ("searches", "Search activities with this response id (1, unless one response was reused)."),
        ("result_count", "Results the response held; 0 for a search that found nothing; NULL when not sent."),
        ("clicks", "Clicks carrying the response's id."),
        ("positioned_clicks", "Those of them with a known position."),
        ("click_position_sum", "Sum of their positions (divide by positioned_clicks for the average)."),
        ("add_to_carts", "Add-to-carts attributed to the response."),
        ("purchases", "Purchases attributed to the response."),
        ("revenue", "Map currency -> revenue of those purchases, minor units."),
    ),
)

VIEWS: tuple[View, ...] = (
    PERSON_ACTIVITIES,
    SESSION_ACTIVITIES,
    SESSIONS,
    FUNNEL,
    ATTRIBUTED_ACTIVITIES,
    CREDITED_ACTIVITIES,
    SOURCE_ACTIVITIES,
    SEARCH_RESPONSES,
)
"""In the order they are created: a view after those it reads."""


def funnel_by_person_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Migration 8: the `funnel` view counts persons (see PERSON). A schema created since has it already;
    replacing it again changes nothing."""
    return [FUNNEL.ddl(database, cluster).replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW", 1)]


def source_views_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Migration 10: every view replaced by its current form: persons resolved when queried, attribution
    across sessions, bots left out unless asked for, and the views over sources and searches."""
    return [
        view.ddl(database, cluster).replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW", 1)
        for view in VIEWS
    ]


def analytics_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """The statements of the analytics migration: aggregate tables (on a cluster, local tables and
    their Distributed tables), their views, their backfill from the rows already stored, then the
    parameterized views."""
    statements: list[str] = []
    for aggregate in AGGREGATES_V2:
        # The shape of version 2: `is_bot` did not exist in `activities` yet (it came with version 4).
        statements += _aggregate_statements(database, aggregate.without_bot_key(), cluster)
    statements += [view.ddl(database, cluster) for view in VIEWS]
    return statements


def _aggregate_statements(database: str, aggregate: Aggregate, cluster: Cluster) -> list[str]:
    statements = [aggregate_table_ddl(database, aggregate, cluster)]
    if cluster.enabled:
        # Read-only in normal use (the views write into the local tables); the backfill's rows go
        # to any shard.
        statements.append(cluster.distributed(database, aggregate.name, "rand()"))
    statements.append(aggregate_view_ddl(database, aggregate, cluster))
    statements.append(aggregate_backfill_sql(database, aggregate))
    return statements


def aggregates_redesign_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Migration 11: the aggregates become rollups of the deduplicated rows, with the bot flag as a key.
    The states of version 2 are dropped (materialized view first, so that nothing writes into a table
    being dropped); the rollups, the touches and the views that read them are created, and every day
    `activities` holds is touched, so that the reads take it from `activities` until the first
    refresh computes it (see `workers.storage.refresher`). Applied again after an interruption, it
    starts over."""
    statements: list[str] = []
    for aggregate in AGGREGATES_V2:
        statements.append(f"DROP VIEW IF EXISTS `{database}`.`{aggregate.view}`{cluster.on_cluster} SYNC")
        statements.append(f"DROP TABLE IF EXISTS `{database}`.`{aggregate.name}`{cluster.on_cluster} SYNC")
        if cluster.enabled:
            local = cluster.local(aggregate.name)
            statements.append(f"DROP TABLE IF EXISTS `{database}`.`{local}`{cluster.on_cluster} SYNC")
    statements += touches_statements(database, cluster)
    statements += refreshes_statements(database, cluster)
    for aggregate in AGGREGATES:
        statements.append(rollup_table_ddl(database, aggregate, cluster))
        if cluster.enabled:
            statements.append(
                cluster.distributed(
                    database, aggregate.rollup, f"cityHash64(tenant_id, toString({aggregate.bucket.name}))"
                )
            )
        statements.append(aggregate_read_view_ddl(database, aggregate, cluster))
    statements.append(touch_every_day_sql(database))
    return statements


def rollup_reorder_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Migration 16: each rollup whose sorting key changed (`Aggregate.rollup_order_by`) copied into a
    table sorted the new way, which then takes its place (`EXCHANGE TABLES`); the old one dropped.
    Applied again after an interruption, it starts over from the table in place."""
    statements: list[str] = []
    for aggregate in AGGREGATES:
        if not aggregate.rollup_order_by:
            continue
        new = f"{aggregate.rollup}_reordered"
        local, new_local = cluster.local(aggregate.rollup), cluster.local(new)
        drop = [f"DROP TABLE IF EXISTS `{database}`.`{new_local}`{cluster.on_cluster} SYNC"]
        if cluster.enabled:
            drop.insert(0, f"DROP TABLE IF EXISTS `{database}`.`{new}`{cluster.on_cluster} SYNC")
        statements += drop
        statements.append(rollup_table_ddl(database, aggregate, cluster, new))
        if cluster.enabled:
            # The copy goes through Distributed tables: each shard's rows to the shard they hash to.
            sharding = f"cityHash64(tenant_id, toString({aggregate.bucket.name}))"
            statements.append(cluster.distributed(database, new, sharding))
        # On a cluster through the Distributed tables, waited for (`migrations` runs every INSERT so).
        statements.append(f"INSERT INTO `{database}`.`{new}` SELECT * FROM `{database}`.`{aggregate.rollup}`")
        statements.append(
            f"EXCHANGE TABLES `{database}`.`{local}` AND `{database}`.`{new_local}`{cluster.on_cluster}"
        )
        statements += drop
    return statements


AGGREGATE = {a.name: a for a in AGGREGATES}


def aggregate_rebuild_statements(
    database: str,
    aggregate: Aggregate | SourceRollup | SessionRollup | str,
    tenant_id: str,
    buckets_where_sql: str,
    cluster: Cluster = SINGLE_NODE,
) -> list[str]:
    """Statements that make the rows of `aggregate` (an `Aggregate`, a `source_rollups.SourceRollup`, or
    the name of either) for tenant `tenant_id` in the buckets chosen by `buckets_where_sql` equal what
    the raw table `activities` gives for them now: the rollup's rows of those buckets are deleted, then
    computed again from `activities FINAL`. Run them in order, after the raw rows changed (an erasure
    deleted a person's activities, say); each is safe to run again.

    `buckets_where_sql` is a ClickHouse condition on the aggregate's bucket column only, named as
    `aggregate.bucket.name` (`hour` for `activity_stats_hourly`, `day` for the daily ones), for example
    `day IN ('2026-10-01', '2026-10-02')` or `hour >= '2026-10-01 00:00:00' AND hour < '2026-10-02
    00:00:00'`. It is used as given: build it from trusted values (`quote` for literals). `tenant_id`
    is quoted here.

    The recomputed rows carry the time of the rebuild as their version, later than any refresh's
    watermark, so that they replace whatever a refresh wrote for the same keys. Days not refreshed
    since their last insert are read from `activities` anyway. On a cluster the rows are deleted from
    the local rollup on every node and recomputed through the Distributed tables."""
    from workers.storage import session_rollups, source_rollups

    if isinstance(aggregate, str):
        sessions = session_rollups.SESSION_FIGURES
        named: dict[str, Aggregate | SourceRollup | SessionRollup] = {
            sessions.name: sessions,
            **source_rollups.SOURCE_ROLLUP,
            **AGGREGATE,
        }
        aggregate = named[aggregate]
    if isinstance(aggregate, session_rollups.SessionRollup):
        # Schema version 15: the chosen days and those on either side (sessions past midnight).
        statements = session_rollups.rebuild_statements(
            database, aggregate, tenant_id, buckets_where_sql, cluster
        )
    elif isinstance(aggregate, source_rollups.SourceRollup):
        # Rollups of schema version 13: the chosen days and the days their touches' credit reaches.
        statements = source_rollups.rebuild_statements(
            database, aggregate, tenant_id, buckets_where_sql, cluster
        )
    else:
        tenant = f"tenant_id = {quote(tenant_id)}"
        local = cluster.local(aggregate.rollup)
        delete = (
            f"DELETE FROM `{database}`.`{local}`{cluster.on_cluster} WHERE {tenant} AND ({buckets_where_sql})"
        )
        # The condition names the bucket's alias (`toDate(occurred_at) AS day`): ClickHouse resolves
        # the aliases of the SELECT list in WHERE.
        insert = (
            f"INSERT INTO `{database}`.`{aggregate.rollup}` ({_rollup_columns(aggregate)}, `refreshed_at`)\n"
        )
        insert += _rollup_select(
            database, aggregate, f"{tenant} AND ({buckets_where_sql})", "now64(3, 'UTC')"
        )
        statements = [delete, insert]
    # The recomputed rows on their shards before the erasure goes on (a DELETE is left as it is).
    return [cluster.foreground(s) for s in statements]
