"""The databases most tests start on are copies of a template the migrations built
(tests/migrated_template.py): a copy must be the schema the migrations build, object for object."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from migrated_template import MigratedTemplate

from workers.storage.clickhouse import ClickHouseStore
from workers.storage.migrations import MIGRATIONS


@pytest.fixture
def client(engine_dir: Path) -> Iterator[Any]:
    c = clickhouse_connect.get_client(dsn=f"chdb://{engine_dir}")
    databases: list[str] = []
    yield c, databases
    for database in databases:
        c.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    c.close()


def schema(client: Any, database: str) -> dict[str, str]:
    """Every object of `database` and its CREATE statement, the database's name taken out."""
    names = [row[0] for row in client.query(f"SHOW TABLES FROM `{database}`").result_rows]
    return {
        name: client.query(f"SHOW CREATE TABLE `{database}`.`{name}`")
        .result_rows[0][0]
        .replace(f"`{database}`.", "DB.")
        .replace(f"{database}.", "DB.")
        for name in names
    }


def test_a_copy_is_the_schema_the_migrations_build(
    client: tuple[Any, list[str]], engine_dir: Path, migrated_template: MigratedTemplate
) -> None:
    c, databases = client
    migrated, copied = f"m_{uuid.uuid4().hex[:12]}", f"c_{uuid.uuid4().hex[:12]}"
    databases += [migrated, copied]
    ClickHouseStore(f"chdb://{engine_dir}", migrated, connections=1).close()
    migrated_template.copy(copied)

    built = schema(c, migrated)
    assert len(built) > 20 and "activities" in built and "funnel" in built
    assert schema(c, copied) == built
    versions = [(m.version, m.name) for m in MIGRATIONS]
    for database in (migrated, copied):
        rows = c.query(f"SELECT version, name FROM `{database}`.schema_migrations ORDER BY version")
        assert [tuple(row) for row in rows.result_rows] == versions
    # A store on the copy finds nothing to apply, and its views answer.
    store = ClickHouseStore(f"chdb://{engine_dir}", copied, connections=1)
    try:
        assert store.query("SELECT count() FROM activity_stats_daily", "TabSeparated").strip() == b"0"
    finally:
        store.close()
