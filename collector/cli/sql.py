"""`activity-collector sql`: run SQL against the store, through a running server when there is one."""

from __future__ import annotations

import sys

from collector.config import Settings
from collector.process.control import ControlUnavailable, query_via_control
from workers.storage.clickhouse import ClickHouseStore, StoreError


def execute(settings: Settings, query: str, fmt: str) -> bytes:
    """Result bytes of `query` in ClickHouse format `fmt`. With the embedded engine, a server running on
    the same data directory answers; without one, the engine is opened here."""
    dsn = settings.effective_clickhouse_dsn
    if dsn.startswith("chdb:"):
        try:
            return query_via_control(settings.control_socket, query, fmt)
        except ControlUnavailable:
            pass
        if not (settings.data_dir / "clickhouse").exists():
            raise StoreError(
                f"no data in {settings.data_dir.resolve()}: start `activity-collector serve` there first, "
                "or pass --data-dir",
                transient=False,
            )
    store = ClickHouseStore(dsn, settings.clickhouse_database, connections=1, cluster=settings.cluster)
    try:
        return store.query(query, fmt)
    finally:
        store.close()


def run_sql(settings: Settings, query: str, fmt: str) -> int:
    try:
        result = execute(settings, query, fmt)
    except StoreError as error:
        print(f"activity-collector sql: {error}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(result)
    sys.stdout.flush()
    return 0
