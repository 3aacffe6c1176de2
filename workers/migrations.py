"""Versioned schema migrations for the ClickHouse database, applied at start.

Each migration is a version number, a name and the statements that take the schema from the previous
version to this one. Applied versions are recorded in `schema_migrations`; a start applies the missing
ones in order. Statements are idempotent (`IF NOT EXISTS`), so a migration interrupted half-way is
simply applied again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.analytics_schema import analytics_statements
from workers.schema import activities_table_ddl


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[str], list[str]]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "activities table", lambda db: [activities_table_ddl(db)]),
    Migration(2, "analytics: aggregates, sessions, funnels, attribution", analytics_statements),
    # Insert deduplication tokens (retried and replayed inserts) are honoured by a table that is not
    # replicated only within this window; its default, 0, turns them off.
    Migration(
        3,
        "deduplication window",
        lambda db: [
            f"ALTER TABLE `{db}`.activities MODIFY SETTING non_replicated_deduplication_window = 10000"
        ],
    ),
)


def applied_versions(client: Any, database: str) -> set[int]:
    rows = client.query(f"SELECT version FROM `{database}`.schema_migrations").result_rows
    return {int(r[0]) for r in rows}


def apply_migrations(client: Any, database: str) -> list[int]:
    """Apply the migrations `database` lacks; return the versions applied now."""
    client.command(
        f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations ("
        " version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC'))"
        " ENGINE = ReplacingMergeTree ORDER BY version"
        " COMMENT 'Schema versions applied by activity-collector migrations.'"
    )
    done = applied_versions(client, database)
    applied: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements(database):
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
