"""Fresh databases for tests, copied from one that the ClickHouse migrations built.

Applying the twelve migrations to a fresh database costs the embedded engine about a second of work
(most of it in the ALTERs of `activities` and one insert into `schema_migrations` per version), and most
tests start a collector or a store on a database of their own. So the run applies the migrations once,
to a template database of its engine, and a test's database is a copy of it: the template's objects
created again from their `SHOW CREATE` statements under the test's database name, and its
`schema_migrations` rows. The collector or store the test starts then finds every migration applied.

The migration path itself stays tested: the tests of the storage (tests/workers/storage/) and every
`serve` a test starts migrate their databases themselves, and tests/test_migrated_template.py checks
that a copy is the schema the migrations build.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import clickhouse_connect

from workers.storage.migrations import apply_migrations, database_ddl

TEMPLATE = "migrated_template"

_UNKNOWN_TABLE = 60


class MigratedTemplate:
    """The template database of one engine (`dsn`), built on first use, and its copies."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._lock = threading.Lock()
        self._client: Any = None
        self._statements: list[str] = []

    def copy(self, database: str) -> None:
        """Create `database` as a copy of the template; a database that exists is left as it is."""
        with self._lock:
            client = self._template_client()
            if client.command(f"EXISTS DATABASE `{database}`") == 1:
                return
            client.command(database_ddl(database))
            for statement in self._statements:
                client.command(_rename(statement, database))
            client.command(
                f"INSERT INTO `{database}`.schema_migrations SELECT * FROM {TEMPLATE}.schema_migrations"
            )

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _template_client(self) -> Any:
        if self._client is None:
            client = clickhouse_connect.get_client(dsn=self.dsn)
            client.command(database_ddl(TEMPLATE))
            apply_migrations(client, TEMPLATE)
            self._statements = _creation_order(client)
            self._client = client
        return self._client


def _rename(statement: str, database: str) -> str:
    # The statements name the template as `migrated_template`.x, migrated_template.x or, calling a
    # parameterized view, `migrated_template.x`(...).
    assert re.fullmatch(r"\w+", database), database
    return re.sub(rf"\b{TEMPLATE}\.", f"{database}.", statement.replace(f"`{TEMPLATE}`.", f"`{database}`."))


def _creation_order(client: Any) -> list[str]:
    """The template's `CREATE` statements, in an order that creates what a view reads before the view:
    found once, by creating them in a scratch database, retrying those whose sources are not there yet."""
    names = [row[0] for row in client.query(f"SHOW TABLES FROM {TEMPLATE}").result_rows]
    pending = [client.query(f"SHOW CREATE TABLE {TEMPLATE}.`{name}`").result_rows[0][0] for name in names]
    scratch = f"{TEMPLATE}_order"
    client.command(f"DROP DATABASE IF EXISTS {scratch} SYNC")
    client.command(database_ddl(scratch))
    ordered: list[str] = []
    try:
        while pending:
            waiting = []
            for statement in pending:
                try:
                    client.command(_rename(statement, scratch))
                except Exception as error:
                    if getattr(error, "code", None) != _UNKNOWN_TABLE and "UNKNOWN_TABLE" not in str(error):
                        raise
                    waiting.append(statement)
                else:
                    ordered.append(statement)
            if len(waiting) == len(pending):
                raise RuntimeError(f"cannot order the template's objects: {waiting}")
            pending = waiting
    finally:
        client.command(f"DROP DATABASE IF EXISTS {scratch} SYNC")
    return ordered
