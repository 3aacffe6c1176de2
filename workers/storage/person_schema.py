"""The read side's tables: each activity again, ordered by person, and the links between a person's ids.

`activities` is ordered for the analytics (tenant, action, day), so one person's rows lie all over it
and a profile would read the whole tenant. Two tables, filled on insert by materialized views, make a
person a point read instead:

- `activities_by_person`: the columns a profile and the person-based strategies read, ordered by
  (tenant, person key, time). The person key is the activity's user key (`USER_KEY`: user id, else
  anonymous id, else session id).
- `person_links`: for every activity that carries a user id with an anonymous id or a session id (a
  login), both directions of the link: from the user to each of those ids (`kind` `anonymous`,
  `session`) and from each id to the user (`kind` `user`), ordered by (tenant, kind, key).

A person's rows are then those of their user key and of every id linked to it. Copies of a resent
activity are collapsed when read (one row per id). On a cluster both are replicated tables on every
node, fed by views on the local `activities`, with Distributed tables in front.
"""

from __future__ import annotations

from workers.storage.analytics_schema import quote
from workers.storage.schema import SINGLE_NODE, TIME, USER_KEY, Cluster

PERSON_ACTIVITIES = "activities_by_person"
PERSON_LINKS = "person_links"

_COLUMNS = (
    ("tenant_id", "LowCardinality(String)", "tenant_id", "Tenant."),
    (
        "person_key",
        "String",
        USER_KEY,
        "The activity's user key: user_id, else anonymous_id, else session_id.",
    ),
    ("occurred_at", TIME, "occurred_at", "When the action happened."),
    ("id", "UUID", "id", "Activity id: copies of a resent activity share it."),
    ("received_at", TIME, "received_at", "When the collector received it."),
    ("action", "LowCardinality(String)", "action", "Action."),
    ("target_type", "LowCardinality(String)", "target_type", "Kind of target."),
    ("target_id", "String", "target_id", "Target id."),
    ("source_id", "String", "source_id", "Response id of the page's search or recommendation response."),
    ("user_id", "String", "user_id", "Identified user id."),
    ("anonymous_id", "String", "anonymous_id", "Anonymous visitor id."),
    ("session_id", "String", "session_id", "Client session id."),
    ("resolved_user_id", "String", "resolved_user_id", "The user enrichment resolved the visitor to."),
    ("quantity", "Nullable(Int64)", "quantity", "Number of items."),
    ("price", "Nullable(Int64)", "price", "Unit price in minor units of currency."),
    ("currency", "LowCardinality(String)", "currency", "Currency of price."),
    ("is_bot", "Bool", "is_bot", "The user agent is a bot's."),
    (
        "target_category_path",
        "Array(LowCardinality(String))",
        "target_category_path",
        "Catalogue categories.",
    ),
    ("target_brand", "LowCardinality(String)", "target_brand", "Catalogue brand."),
)

_LINKS = (
    "[(user_id, anonymous_id, 'anonymous'), (anonymous_id, user_id, 'user'), "
    "(user_id, session_id, 'session'), (session_id, user_id, 'user')]"
)


def person_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Migration 12: the two tables, their views, and their backfill from the rows already stored."""
    db = f"`{database}`"
    columns = ",\n".join(f"  `{n}` {t} COMMENT {quote(c)}" for n, t, _, c in _COLUMNS)
    select = ", ".join(f"{e} AS `{n}`" for n, _, e, _ in _COLUMNS)
    activities_local = cluster.local("activities")
    statements = [
        f"CREATE TABLE IF NOT EXISTS {db}.`{cluster.local(PERSON_ACTIVITIES)}`{cluster.on_cluster} "
        f"(\n{columns}\n)\n"
        f"ENGINE = {cluster.engine('ReplacingMergeTree', 'received_at')}\n"
        "PARTITION BY toYYYYMM(occurred_at)\n"
        "ORDER BY (tenant_id, person_key, occurred_at, id)\n"
        "COMMENT 'Each activity again, ordered by person, for the read side (ProfileService); "
        "filled on insert by activities_by_person_mv.'",
        f"CREATE TABLE IF NOT EXISTS {db}.`{cluster.local(PERSON_LINKS)}`{cluster.on_cluster} (\n"
        "  `tenant_id` LowCardinality(String) COMMENT 'Tenant.',\n"
        "  `kind` LowCardinality(String) COMMENT 'What `linked` is: user (key is an anonymous or session "
        "id), anonymous or session (key is a user id).',\n"
        "  `key` String COMMENT 'The id looked up.',\n"
        "  `linked` String COMMENT 'An id of the same person.',\n"
        f"  `occurred_at` {TIME} COMMENT 'The latest activity that carried both.'\n"
        ")\n"
        f"ENGINE = {cluster.engine('ReplacingMergeTree', 'occurred_at')}\n"
        "ORDER BY (tenant_id, kind, key, linked)\n"
        "COMMENT 'The ids of one person, both ways, from every activity that carried a user id with an "
        "anonymous or session id; filled on insert by person_links_mv.'",
    ]
    if cluster.enabled:
        statements.append(
            cluster.distributed(database, PERSON_ACTIVITIES, "cityHash64(tenant_id, person_key)")
        )
        statements.append(cluster.distributed(database, PERSON_LINKS, "cityHash64(tenant_id, key)"))
    activities_select = f"SELECT {select} FROM {db}.`{activities_local}`"
    links_select = (
        f"SELECT tenant_id, link.3 AS kind, link.1 AS key, link.2 AS linked, occurred_at "
        f"FROM {db}.`{activities_local}` "
        f"ARRAY JOIN arrayFilter(l -> l.1 != '' AND l.2 != '', {_LINKS}) AS link WHERE user_id != ''"
    )
    statements += [
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.`{PERSON_ACTIVITIES}_mv`{cluster.on_cluster} "
        f"TO {db}.`{cluster.local(PERSON_ACTIVITIES)}` AS\n{activities_select}",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.`{PERSON_LINKS}_mv`{cluster.on_cluster} "
        f"TO {db}.`{cluster.local(PERSON_LINKS)}` AS\n{links_select}",
        # The rows stored before this version. Repeating it only adds copies, which reads collapse.
        f"INSERT INTO {db}.`{PERSON_ACTIVITIES}` {activities_select.replace(activities_local, 'activities')}",
        f"INSERT INTO {db}.`{PERSON_LINKS}` {links_select.replace(activities_local, 'activities')}",
    ]
    return statements


INSERTED_AT = "inserted_at"


def person_tail_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Migration 14: `activities_by_person.inserted_at`, the time each row was written, with a minmax
    index, so that a collector's read model (`workers.reads.model`) finds the rows written since its last
    look, by any collector, in the few newest parts. The rows stored before get the migration's time."""
    db = f"`{database}`"
    local = f"{db}.`{cluster.local(PERSON_ACTIVITIES)}`{cluster.on_cluster}"
    column = (
        f"`{INSERTED_AT}` DateTime64(3) DEFAULT now64(3) COMMENT "
        f"{quote('When the row was written (the server clock): the read models tail the table by it.')}"
    )
    statements = [
        f"ALTER TABLE {local} ADD COLUMN IF NOT EXISTS {column}",
        f"ALTER TABLE {local} MATERIALIZE COLUMN `{INSERTED_AT}` SETTINGS mutations_sync = 2",
        f"ALTER TABLE {local} ADD INDEX IF NOT EXISTS `{INSERTED_AT}_minmax` `{INSERTED_AT}` "
        "TYPE minmax GRANULARITY 1",
        f"ALTER TABLE {local} MATERIALIZE INDEX `{INSERTED_AT}_minmax` SETTINGS mutations_sync = 2",
    ]
    if cluster.enabled:
        statements.append(
            f"ALTER TABLE {db}.`{PERSON_ACTIVITIES}`{cluster.on_cluster} ADD COLUMN IF NOT EXISTS {column}"
        )
    return statements
