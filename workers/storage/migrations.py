"""Versioned schema migrations for the ClickHouse database, applied at start.

Each migration is a version number, a name and the statements that take the schema from the previous
version to this one. Applied versions are recorded in `schema_migrations`; a start applies the missing
ones in order. Statements are idempotent (`IF NOT EXISTS`), so a migration interrupted half-way is
simply applied again.

On a cluster (`Cluster`), every statement carries `ON CLUSTER`: ClickHouse runs it on every node through
its distributed DDL queue in Keeper, and `schema_migrations` is one replicated table shared by all the
nodes, so that the collectors of a cluster, whichever node they reach, agree on the version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.storage.analytics_schema import (
    aggregates_redesign_statements,
    analytics_statements,
    funnel_by_person_statements,
    rollup_reorder_statements,
    source_views_statements,
)
from workers.storage.person_schema import person_statements, person_tail_statements
from workers.storage.schema import (
    SINGLE_NODE,
    Cluster,
    activities_statements,
    enrichment_statements,
    plan_violations_statements,
    rejections_statements,
    source_statements,
)
from workers.storage.session_rollups import rollup_merge_statements, session_rollup_statements
from workers.storage.source_rollups import source_rollups_statements


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[str, Cluster], list[str]]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "activities table", activities_statements),
    Migration(2, "analytics: aggregates, sessions, funnels, attribution", analytics_statements),
    # Insert deduplication tokens (retried and replayed inserts) are honoured within a window of the
    # table's latest inserts: on one node its default, 0, turns them off; on a replicated table the
    # default (1000 inserts, kept in Keeper) is widened to the same 10000.
    Migration(3, "deduplication window", lambda db, cluster: [_deduplication_window(db, cluster)]),
    Migration(4, "enrichment: user agent, catalogue, resolved user", enrichment_statements),
    # The parts inserts make are written in the compact format (all columns in one file) instead of
    # the wide one (two files per column and substream, about 200 for this table): creating those
    # files cost more than writing the rows (on ext4, 150-220 ms of system time per insert, most of it
    # in the kernel's inode allocation).
    Migration(5, "compact insert parts", lambda db, cluster: [_compact_parts(db, cluster)]),
    # Tracking plans (workers/processors/plan.py): the rules a flagged activity broke.
    Migration(6, "plan violations", plan_violations_statements),
    # Failed events kept (workers/processors/rejections.py): rejected activities, with a TTL.
    Migration(7, "rejected activities", rejections_statements),
    # Funnels count persons: a visitor who logs in between two steps is one person, not two user keys.
    Migration(8, "funnel by person", funnel_by_person_statements),
    # The response an activity's source_id names: kind, name, A/B variant, position, result count.
    Migration(9, "source columns", source_statements),
    # Persons resolved when queried, attribution across sessions, bots left out of every view unless asked
    # for, and the views over sources and searches: every view replaced.
    Migration(10, "views: persons, sources, searches, bots", source_views_statements),
    # The aggregates become rollups of the deduplicated rows, refreshed per touched day and read
    # through views (exact after retries without an id per activity in their states); the bot flag
    # is a key of every aggregate (reports leave bots out unless asked).
    Migration(
        11, "aggregates: rollups of the deduplicated rows, bot flag as a key", aggregates_redesign_statements
    ),
    # The read side (ProfileService): each activity again, ordered by person, and the person's ids.
    Migration(12, "read side: activities by person, person links", person_statements),
    # What the responses earned, per day, with the outcomes attributed to them: rollups refreshed with
    # the aggregates (report sources, experiment, queries); persons resolved through person_links.
    Migration(13, "rollups of what responses earned; persons via person_links", source_rollups_statements),
    # The read models of the collectors tail activities_by_person by the time its rows were written.
    Migration(14, "read side: activities by person carry their write time", person_tail_statements),
    Migration(15, "rollup of the sessions per day", session_rollup_statements),
    Migration(16, "top targets' rollup sorted by target", rollup_reorder_statements),
    # A rollup's partition merged into one part once its parts are a few minutes old: FINAL then
    # reads it without merging.
    Migration(17, "rollups merged per partition", rollup_merge_statements),
)

# Parts below this many rows are written compact. Above the largest insert (`insert_max_rows`,
# 100,000 by default), so that every insert writes one compact part; merges into larger parts write
# wide ones, which queries reading a few columns of many rows prefer.
COMPACT_PART_MAX_ROWS = 262_144


def _activities_settings(database: str, cluster: Cluster, settings: str) -> str:
    """Table settings of `activities` (its local table on a cluster, on every node)."""
    table = cluster.local("activities")
    return f"ALTER TABLE `{database}`.`{table}`{cluster.on_cluster} MODIFY SETTING {settings}"


def _deduplication_window(database: str, cluster: Cluster) -> str:
    setting = "replicated_deduplication_window" if cluster.enabled else "non_replicated_deduplication_window"
    return _activities_settings(database, cluster, f"{setting} = 10000")


def _compact_parts(database: str, cluster: Cluster) -> str:
    # A part is compact when it is under either threshold: the rows alone decide here.
    return _activities_settings(
        database, cluster, f"min_rows_for_wide_part = {COMPACT_PART_MAX_ROWS}, min_bytes_for_wide_part = 0"
    )


def migrations_table_ddl(database: str, cluster: Cluster = SINGLE_NODE) -> str:
    # On a cluster one replica per node of a single shard: the path has no {shard}.
    engine = "ReplacingMergeTree"
    if cluster.enabled:
        engine = "ReplicatedReplacingMergeTree('/clickhouse/tables/{database}/{table}', '{replica}')"
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations{cluster.on_cluster} ("
        " version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC'))"
        f" ENGINE = {engine} ORDER BY version"
        " COMMENT 'Schema versions applied by activity-collector migrations.'"
    )


def database_ddl(database: str, cluster: Cluster = SINGLE_NODE) -> str:
    return f"CREATE DATABASE IF NOT EXISTS `{database}`{cluster.on_cluster}"


def applied_versions(client: Any, database: str) -> set[int]:
    rows = client.query(f"SELECT version FROM `{database}`.schema_migrations").result_rows
    return {int(r[0]) for r in rows}


def migration_statements(database: str, cluster: Cluster = SINGLE_NODE) -> list[str]:
    """Every statement of a fresh schema, in order (the record of versions aside): what the tests
    check against the engine's parser for both placements."""
    statements = [database_ddl(database, cluster), migrations_table_ddl(database, cluster)]
    for migration in MIGRATIONS:
        statements += _statements(migration, database, cluster)
    return statements


def _statements(migration: Migration, database: str, cluster: Cluster) -> list[str]:
    """A migration's statements as they run: on a cluster, a backfill or copy through Distributed
    tables returns once every shard has its rows, so that the statements after it find them there."""
    return [cluster.foreground(statement) for statement in migration.statements(database, cluster)]


def apply_migrations(client: Any, database: str, cluster: Cluster = SINGLE_NODE) -> list[int]:
    """Apply the migrations `database` lacks; return the versions applied now."""
    client.command(migrations_table_ddl(database, cluster))
    done = applied_versions(client, database)
    applied: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in _statements(migration, database, cluster):
            client.command(statement)
        client.insert(
            f"`{database}`.schema_migrations",
            [[migration.version, migration.name]],
            column_names=["version", "name"],
        )
        applied.append(migration.version)
    return applied


def latest_version() -> int:
    return MIGRATIONS[-1].version
