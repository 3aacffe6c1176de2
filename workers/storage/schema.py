"""The `activities` table and the protobuf row format that fills it, from one definition.

Inserts are `INSERT ... FORMAT ProtobufList`: ClickHouse itself parses the rows, so the hot path never
encodes a column in Python. A row is an `activity.v1.Activity` exactly as serialized by the client,
followed by a few fields the collector adds per batch (tenant, receive time, clock skew). Protobuf
parsers read concatenated messages as one, so the row message declared to ClickHouse (`ROW_SCHEMA`) is
the Activity message with those extra fields; it is generated from the Activity descriptor, so that it
cannot drift from `protos/`.

ClickHouse matches insert columns to row fields by name, nested fields joined with `_`
(`target_type` is `target.type`). Fields whose natural column name would read badly
(`user_user_id`, `metadata_price`) arrive in EPHEMERAL columns, and the stored column takes its
value through a DEFAULT expression. The stored columns are what analysts see: `docs/schema.md`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from core.proto.activity.v1 import activity_pb2 as pb

ROW_MESSAGE = "Row"

# Fields the collector appends to every serialized Activity. Numbers are far above the Activity's own,
# which keeps room for the Activity to grow; protos/activity/v1 reserves nothing here because the Row
# message exists only between the collector and ClickHouse.
TENANT_FIELD = 1001
RECEIVED_AT_FIELD = 1002
SENT_AT_FIELD = 1003
CLOCK_SKEW_FIELD = 1004
# Enrichment, per activity (see workers.enrichment.enricher); each is left out of a row when empty.
UA_DEVICE_TYPE_FIELD = 1005
OS_FIELD = 1006
OS_VERSION_FIELD = 1007
BROWSER_FIELD = 1008
BROWSER_VERSION_FIELD = 1009
IS_BOT_FIELD = 1010
TARGET_NAME_FIELD = 1011
TARGET_CATEGORY_PATH_FIELD = 1012
TARGET_BRAND_FIELD = 1013
TARGET_LIST_PRICE_FIELD = 1014
TARGET_LIST_CURRENCY_FIELD = 1015
TARGET_CATALOG_ATTRIBUTES_FIELD = 1016
RESOLVED_USER_ID_FIELD = 1017
# Processors, per activity: the rules of the tenant's tracking plan it broke, when flagged.
PLAN_VIOLATIONS_FIELD = 1018

_EXTRA_FIELDS = f"""  string tenant_id = {TENANT_FIELD};
  Timestamp received_at = {RECEIVED_AT_FIELD};
  Timestamp sent_at = {SENT_AT_FIELD};
  int64 clock_skew_ms = {CLOCK_SKEW_FIELD};
  string ua_device_type = {UA_DEVICE_TYPE_FIELD};
  string os = {OS_FIELD};
  string os_version = {OS_VERSION_FIELD};
  string browser = {BROWSER_FIELD};
  string browser_version = {BROWSER_VERSION_FIELD};
  bool is_bot = {IS_BOT_FIELD};
  string catalog_name = {TARGET_NAME_FIELD};
  repeated string catalog_category_path = {TARGET_CATEGORY_PATH_FIELD};
  string catalog_brand = {TARGET_BRAND_FIELD};
  optional int64 catalog_list_price = {TARGET_LIST_PRICE_FIELD};
  string catalog_currency = {TARGET_LIST_CURRENCY_FIELD};
  map<string, string> catalog_attributes = {TARGET_CATALOG_ATTRIBUTES_FIELD};
  string resolved_user_id = {RESOLVED_USER_ID_FIELD};
  repeated string plan_violations = {PLAN_VIOLATIONS_FIELD};
"""

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_BOOL: "bool",
}


def _type_name(f: Any) -> str:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return str(f.message_type.name)
    return _SCALARS[f.type]


def _message_text(d: Any, extra: str = "", name: str | None = None) -> str:
    lines = [f"message {name or d.name} {{"]
    for f in d.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key, value = f.message_type.fields
            lines.append(f"  map<{_type_name(key)}, {_type_name(value)}> {f.name} = {f.number};")
        elif f.is_repeated:
            lines.append(f"  repeated {_type_name(f)} {f.name} = {f.number};")
        elif f.has_presence and f.type != FieldDescriptor.TYPE_MESSAGE:
            lines.append(f"  optional {_type_name(f)} {f.name} = {f.number};")
        else:
            lines.append(f"  {_type_name(f)} {f.name} = {f.number};")
    return "\n".join(lines) + "\n" + extra + "}\n"


def _row_schema() -> str:
    activity = pb.Activity.DESCRIPTOR
    nested: dict[str, Any] = {}
    for f in activity.fields:
        if f.message_type is not None and not f.message_type.GetOptions().map_entry:
            nested[f.message_type.name] = f.message_type
    # google.protobuf.Timestamp, declared locally (same wire form) because an inline schema cannot
    # import files on a ClickHouse server.
    parts = ['syntax = "proto3";\n', "message Timestamp {\n  int64 seconds = 1;\n  int32 nanos = 2;\n}\n"]
    parts += [_message_text(d) for name, d in sorted(nested.items()) if name != "Timestamp"]
    parts.append(_message_text(activity, _EXTRA_FIELDS, name=ROW_MESSAGE))
    return "\n".join(parts)


ROW_SCHEMA = _row_schema()


@dataclass(frozen=True)
class Column:
    """A stored column of `activities`. `source`, when set, is the EPHEMERAL insert column (or
    expression over insert columns) its value comes from; otherwise the column is filled by name."""

    name: str
    type: str
    comment: str
    source: str | None = None
    ephemeral: tuple[tuple[str, str], ...] = ()


def _from(field: str, type_: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return field, ((field, type_),)


def _time(field: str, nullable: bool) -> tuple[str, tuple[tuple[str, str], ...]]:
    seconds, nanos = f"{field}_seconds", f"{field}_nanos"
    value = f"fromUnixTimestamp64Milli({seconds} * 1000 + intDiv({nanos}, 1000000), 'UTC')"
    expr = f"if({seconds} = 0, NULL, {value})" if nullable else value
    return expr, ((seconds, "Int64"), (nanos, "Int32"))


_OCCURRED = (
    "if(occurred_at_seconds = 0, received_at, "
    "fromUnixTimestamp64Milli(occurred_at_seconds * 1000 + intDiv(occurred_at_nanos, 1000000) "
    "+ clock_skew_ms, 'UTC'))"
)

TIME = "DateTime64(3, 'UTC')"

COLUMNS: tuple[Column, ...] = (
    Column("tenant_id", "LowCardinality(String)", "Tenant (customer platform) the activity belongs to."),
    Column("id", "UUID", "Activity id: the idempotency key, set by the client or assigned on receipt."),
    Column(
        "action", "LowCardinality(String)", "What the user did, normalised: view, click, add_to_cart, ..."
    ),
    Column("target_type", "LowCardinality(String)", "Kind of target: product, category, page, ..."),
    Column("target_id", "String", "Identifier of the target within its type."),
    Column("target_attributes", "Map(String, String)", "Properties of the target as the client saw them."),
    Column(
        "session_id",
        "String",
        "Client session id; empty when the client sent none.",
        *_from("user_session_id", "String"),
    ),
    Column(
        "anonymous_id",
        "String",
        "Anonymous visitor id; empty when unknown.",
        *_from("user_anonymous_id", "String"),
    ),
    Column(
        "user_id",
        "String",
        "Authenticated user id; empty for anonymous visitors.",
        *_from("user_user_id", "String"),
    ),
    Column(
        "identities",
        "Map(String, String)",
        "Ids of the user in further identity repositories.",
        *_from("user_identities", "Map(String, String)"),
    ),
    Column(
        "source_id",
        "String",
        "Response id of the search or recommendation response that powered the page; empty elsewhere.",
    ),
    Column(
        "source_type",
        "LowCardinality(String)",
        "Kind of the response source_id names (search, recommendation, merchandising, ...), normalised "
        "like actions; empty when not sent.",
    ),
    Column(
        "source_name",
        "LowCardinality(String)",
        "The widget, strategy or search page that produced the response; empty when not sent.",
    ),
    Column("source_variant", "LowCardinality(String)", "The response's A/B arm; empty when none."),
    Column(
        "source_position",
        "UInt32",
        "1-based position of the target in the response's list; 0 when not known.",
    ),
    Column(
        "source_result_count",
        "Nullable(UInt32)",
        "How many results the response held (0: a search that found nothing); NULL when not sent.",
    ),
    Column(
        "locale",
        "LowCardinality(String)",
        "BCP 47 language tag, normalised (en-US); empty when unknown.",
        *_from("metadata_locale", "String"),
    ),
    Column(
        "device_type",
        "LowCardinality(String)",
        "Device type: as sent by the client (lower case) when it sent one, else read from user_agent "
        "(desktop, mobile, tablet, bot, other); empty when neither says.",
        "if(metadata_device_type != '', metadata_device_type, ua_device_type)",
        (("metadata_device_type", "String"), ("ua_device_type", "String")),
    ),
    Column(
        "quantity",
        "Nullable(Int64)",
        "Number of items; NULL when not applicable.",
        *_from("metadata_quantity", "Nullable(Int64)"),
    ),
    Column(
        "price",
        "Nullable(Int64)",
        "Unit price in minor units of currency (cents); NULL when not applicable.",
        *_from("metadata_price", "Nullable(Int64)"),
    ),
    Column(
        "currency",
        "LowCardinality(String)",
        "ISO 4217 code of price, upper case.",
        *_from("metadata_currency", "String"),
    ),
    Column("order_id", "String", "Order the purchase belongs to.", *_from("metadata_order_id", "String")),
    Column("page_url", "String", "URL of the page of the action.", *_from("metadata_page_url", "String")),
    Column("referrer", "String", "URL of the page before.", *_from("metadata_referrer", "String")),
    Column("user_agent", "String", "User agent string.", *_from("metadata_user_agent", "String")),
    Column("os", "LowCardinality(String)", "Operating system read from user_agent; empty when unknown."),
    Column("os_version", "LowCardinality(String)", "Its version (major.minor.patch as far as known)."),
    Column(
        "browser",
        "LowCardinality(String)",
        "Browser or client application read from user_agent; empty when unknown.",
    ),
    Column("browser_version", "LowCardinality(String)", "Its version (major.minor.patch as far as known)."),
    Column(
        "is_bot",
        "Bool",
        "The user agent is a crawler, monitor or link previewer. Such activities are stored, not dropped.",
    ),
    Column("query", "String", "Search query typed by the user.", *_from("metadata_query", "String")),
    Column(
        "custom",
        "Map(String, String)",
        "Any other context sent by the client.",
        *_from("metadata_custom", "Map(String, String)"),
    ),
    Column(
        "resolved_user_id",
        "String",
        "The person: user_id when sent, else the user id last linked to the anonymous_id (or, failing "
        "that, the session_id) by an earlier activity that carried both; empty when none is known.",
    ),
    Column(
        "target_name",
        "String",
        "Catalogue: the target's name; empty when the target is not in the tenant's catalogue.",
        *_from("catalog_name", "String"),
    ),
    Column(
        "target_category_path",
        "Array(LowCardinality(String))",
        "Catalogue: categories from the most general down.",
        *_from("catalog_category_path", "Array(String)"),
    ),
    Column("target_brand", "LowCardinality(String)", "Catalogue: brand.", *_from("catalog_brand", "String")),
    Column(
        "target_list_price",
        "Nullable(Int64)",
        "Catalogue: list price in minor units of target_list_currency; NULL when unknown.",
        *_from("catalog_list_price", "Nullable(Int64)"),
    ),
    Column(
        "target_list_currency",
        "LowCardinality(String)",
        "Catalogue: ISO 4217 code of target_list_price.",
        *_from("catalog_currency", "String"),
    ),
    Column(
        "target_catalog_attributes",
        "Map(String, String)",
        "Catalogue: any other attributes of the target.",
        *_from("catalog_attributes", "Map(String, String)"),
    ),
    Column("segments", "Array(LowCardinality(String))", "Segments the user belonged to."),
    Column(
        "plan_violations",
        "Array(String)",
        "Rules of the tenant's tracking plan the activity broke, when the plan flags rather than rejects "
        "(required:metadata.order_id, unknown_action, ...); empty when it conforms or has no plan.",
    ),
    Column(
        "received_at",
        TIME,
        "When the collector received the request (server clock).",
        *_time("received_at", nullable=False),
    ),
    Column(
        "sent_at",
        f"Nullable({TIME})",
        "When the client sent the request (client clock); NULL if not sent.",
        *_time("sent_at", nullable=True),
    ),
    Column(
        "clock_skew_ms",
        "Int64",
        "Correction applied to the client's times, in milliseconds: received_at minus sent_at when that "
        "exceeds the clock-skew tolerance (1 s by default), else 0.",
    ),
    Column(
        "client_occurred_at",
        f"Nullable({TIME})",
        "occurred_at as sent, by the client's clock; NULL when the client sent none.",
        *_time("occurred_at", nullable=True),
    ),
    Column(
        "occurred_at",
        TIME,
        "When the action happened, by the server's clock: client_occurred_at + clock_skew_ms, or "
        "received_at when the client sent no time.",
        _OCCURRED,
    ),
)


def insert_columns() -> list[str]:
    """The columns an insert names: the row's fields, as ClickHouse matches them to columns."""
    names: list[str] = []
    for c in COLUMNS:
        if c.ephemeral:
            names += [n for n, _ in c.ephemeral if n not in names]
        elif c.source is None:
            names.append(c.name)
    return names


INSERT_COLUMNS = insert_columns()


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- placement: one node, or a cluster ------------------------------------------------------------

# Where a user's activities go on a cluster, unless configured otherwise: one hash of the tenant and the
# user key (`USER_KEY`, as the sessions and funnels use it), or of the activity id for activities without any
# user id. Every column it reads is one the client sends, so copies of one activity (retries, resends)
# hash alike and meet on one shard, where ReplacingMergeTree and FINAL collapse them.
USER_KEY = "multiIf(user_id != '', user_id, anonymous_id != '', anonymous_id, session_id)"
"""Who did it: the identified user when known, else the anonymous visitor, else the client session."""

DEFAULT_SHARDING_KEY = f"cityHash64(tenant_id, if({USER_KEY} != '', {USER_KEY}, toString(id)))"


@dataclass(frozen=True)
class Cluster:
    """Where the tables live. `name` empty: one node, every table a plain MergeTree of its kind. Else
    the ClickHouse cluster of that name (`remote_servers`): each table is a `Replicated*MergeTree` named
    `<table>_local`, created `ON CLUSTER` on every node, with a `Distributed` table of the plain name in
    front of it, so that inserts and queries name the same tables as on one node. `sharding_key`
    decides the shard of each inserted activity."""

    name: str = ""
    sharding_key: str = DEFAULT_SHARDING_KEY

    @property
    def enabled(self) -> bool:
        return bool(self.name)

    @property
    def on_cluster(self) -> str:
        """The `ON CLUSTER` clause of a DDL statement ('' on one node)."""
        return f" ON CLUSTER `{self.name}`" if self.name else ""

    def foreground(self, statement: str) -> str:
        """An `INSERT ... SELECT` through Distributed tables that returns once every shard has its rows
        (not once they are queued on this node): what runs after it may count on them. As is on one
        node, and for any other statement."""
        waited = "\nSETTINGS distributed_foreground_insert = 1"
        if not self.name or not statement.startswith("INSERT") or statement.endswith(waited):
            return statement
        return statement + waited

    def local(self, table: str) -> str:
        """The table that holds the rows: `table` itself on one node, `<table>_local` on a cluster."""
        return f"{table}_local" if self.name else table

    def engine(self, kind: str, arguments: str = "") -> str:
        """`kind` (ReplacingMergeTree, AggregatingMergeTree, ...) on one node, its replicated variant on
        a cluster: one replica per node, the replicas of a shard sharing a path in Keeper. The macros
        `{shard}` and `{replica}` come from each node's configuration; `{database}` and `{table}` are
        expanded by ClickHouse."""
        if not self.name:
            return f"{kind}({arguments})" if arguments else kind
        path = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
        return f"Replicated{kind}({path}{', ' + arguments if arguments else ''})"

    def distributed(self, database: str, table: str, sharding_key: str | None = None) -> str:
        """DDL of the Distributed table `table` in front of `<table>_local`, same columns."""
        key = f", {sharding_key}" if sharding_key else ""
        return (
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}`{self.on_cluster} "
            f"AS `{database}`.`{self.local(table)}`\n"
            f"ENGINE = Distributed({_quote(self.name)}, {_quote(database)}, {_quote(self.local(table))}{key})"
        )


SINGLE_NODE = Cluster()


def _column_ddl(c: Column) -> str:
    default = f" DEFAULT {c.source}" if c.source else ""
    return f"`{c.name}` {c.type}{default} COMMENT {_quote(c.comment)}"


def _ephemeral_columns() -> dict[str, str]:
    """The insert-only columns, name to type, in the order of the columns they fill."""
    ephemeral: dict[str, str] = {}
    for c in COLUMNS:
        for n, t in c.ephemeral:
            ephemeral.setdefault(n, t)
    return ephemeral


def activities_table_ddl(database: str, table: str = "activities", cluster: Cluster = SINGLE_NODE) -> str:
    """The table holding the rows (`<table>_local` on a cluster); see `activities_statements`."""
    lines = [f"  `{n}` {t} EPHEMERAL" for n, t in _ephemeral_columns().items()]
    lines += [f"  {_column_ddl(c)}" for c in COLUMNS]
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{cluster.local(table)}`{cluster.on_cluster} (\n"
        + ",\n".join(lines)
        + f"\n)\nENGINE = {cluster.engine('ReplacingMergeTree', 'received_at')}\n"
        "PARTITION BY toYYYYMM(occurred_at)\n"
        "ORDER BY (tenant_id, action, toDate(occurred_at), id)\n"
        "COMMENT 'One row per accepted activity. Rows with the same tenant, action, day and id are "
        "copies of one activity (a client retry) and collapse into one on merge; see docs/schema.md.'"
    )


def activities_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """The `activities` table; on a cluster, its local replicated table and the Distributed table in
    front, which shards inserts by `cluster.sharding_key`."""
    statements = [activities_table_ddl(database, cluster=cluster)]
    if cluster.enabled:
        statements.append(cluster.distributed(database, "activities", cluster.sharding_key))
    return statements


ENRICHMENT_COLUMNS = (
    "os",
    "os_version",
    "browser",
    "browser_version",
    "is_bot",
    "resolved_user_id",
    "target_name",
    "target_category_path",
    "target_brand",
    "target_list_price",
    "target_list_currency",
    "target_catalog_attributes",
)
"""Columns added to `activities` by schema version 4 (enrichment)."""


def enrichment_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Bring an `activities` table of schema version 1 to the columns of this release: the enrichment
    columns, the insert columns they come from, and device_type's fallback to the user agent. Every
    statement is a no-op on a table created by this release (IF NOT EXISTS; the same default)."""
    by_name = {c.name: c for c in COLUMNS}
    new: set[str] = set()
    for name in (*ENRICHMENT_COLUMNS, "device_type"):
        new.update(n for n, _ in by_name[name].ephemeral if n != "metadata_device_type")
    # Insert-only columns go last (EPHEMERAL takes an optional expression, so it cannot be followed by
    # AFTER): their place is invisible, they are never read.
    actions = [
        f"ADD COLUMN IF NOT EXISTS `{n}` {t} EPHEMERAL" for n, t in _ephemeral_columns().items() if n in new
    ]
    names = [c.name for c in COLUMNS]
    for name in ENRICHMENT_COLUMNS:
        after = names[names.index(name) - 1]
        actions.append(f"ADD COLUMN IF NOT EXISTS {_column_ddl(by_name[name])} AFTER `{after}`")
    actions.append(f"MODIFY COLUMN {_column_ddl(by_name['device_type'])}")
    tables = [cluster.local("activities")] + (["activities"] if cluster.enabled else [])
    return [
        f"ALTER TABLE `{database}`.`{table}`{cluster.on_cluster}\n  " + ",\n  ".join(actions)
        for table in tables
    ]


def plan_violations_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Bring an `activities` table of schema version 5 to `plan_violations` (a no-op on a table created
    by this release); on a cluster the local and the Distributed table alike."""
    column = next(c for c in COLUMNS if c.name == "plan_violations")
    tables = [cluster.local("activities")] + (["activities"] if cluster.enabled else [])
    return [
        f"ALTER TABLE `{database}`.`{table}`{cluster.on_cluster}\n"
        f"  ADD COLUMN IF NOT EXISTS {_column_ddl(column)} AFTER `segments`"
        for table in tables
    ]


SOURCE_COLUMNS = ("source_type", "source_name", "source_variant", "source_position", "source_result_count")
"""Columns added to `activities` by schema version 9 (the response's kind, name, variant, position)."""


def source_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Bring an `activities` table of schema version 8 to the `Source` columns (a no-op on a table
    created by this release); on a cluster the local and the Distributed table alike."""
    by_name = {c.name: c for c in COLUMNS}
    actions = []
    after = "source_id"
    for name in SOURCE_COLUMNS:
        actions.append(f"ADD COLUMN IF NOT EXISTS {_column_ddl(by_name[name])} AFTER `{after}`")
        after = name
    tables = [cluster.local("activities")] + (["activities"] if cluster.enabled else [])
    return [
        f"ALTER TABLE `{database}`.`{table}`{cluster.on_cluster}\n  " + ",\n  ".join(actions)
        for table in tables
    ]


REJECTIONS_TABLE = "rejected_activities"
REJECTIONS_TTL_DAYS = 7
"""How long rejected activities are kept unless `rejections_ttl_days` says otherwise (set at start)."""


def rejections_ttl(days: int) -> str:
    return f"toDateTime(rejected_at) + toIntervalDay({int(days)})"


def rejections_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """The failed events kept for operators (`workers.processors.rejections`): every activity rejected
    by validation or a processor, its bytes as sent, for a few days (a TTL), never the caller's key."""
    table = cluster.local(REJECTIONS_TABLE)
    statements = [
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}`{cluster.on_cluster} (\n"
        "  `id` UUID COMMENT 'Id of this record (activity-collector rejections show ID).',\n"
        "  `tenant_id` LowCardinality(String) COMMENT 'Tenant whose request held the activity.',\n"
        f"  `rejected_at` {TIME} COMMENT 'When the collector received the request (server clock).',\n"
        "  `reason` LowCardinality(String) COMMENT 'RejectionReason, lower case without its prefix: "
        "missing_field, invalid_value, plan_violation, ...',\n"
        "  `field` String COMMENT 'The field at fault, as answered to the caller.',\n"
        "  `rule` LowCardinality(String) COMMENT 'For processors: the rule (tracking plan rule, action "
        "pattern); empty for validation.',\n"
        "  `message` String COMMENT 'The message answered to the caller.',\n"
        "  `activity_id` String COMMENT 'The activity id as sent; empty when none or unreadable.',\n"
        "  `payload` String COMMENT 'The activity as sent: activity.v1.Activity bytes, cut at 64 KiB.',\n"
        "  `payload_bytes` UInt32 COMMENT 'Size of the activity as sent, before any cut.'\n"
        f")\nENGINE = {cluster.engine('MergeTree') if cluster.enabled else 'MergeTree()'}\n"
        "PARTITION BY toDate(rejected_at)\n"
        "ORDER BY (tenant_id, rejected_at, id)\n"
        f"TTL {rejections_ttl(REJECTIONS_TTL_DAYS)}\n"
        "COMMENT 'Activities the collector rejected, kept for a few days (TTL) within a cap per tenant "
        "and minute; see docs/plans.md.'"
    ]
    if cluster.enabled:
        statements.append(cluster.distributed(database, REJECTIONS_TABLE, "cityHash64(tenant_id)"))
    return statements
