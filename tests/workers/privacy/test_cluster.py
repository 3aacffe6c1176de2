"""On a cluster, the erasure's deletes and the retention's TTLs run `ON CLUSTER` on the local tables.
The embedded engine has no cluster: the statements are parsed by its own parser (`EXPLAIN AST`), as
the cluster schema's are (tests/workers/storage/test_cluster.py)."""

from __future__ import annotations

import pytest

from workers.priority import niced
from workers.privacy.erasure import ERASURE_NICENESS, ErasureRunner
from workers.privacy.persons import PersonIds
from workers.privacy.retention import Retention, retention_statements
from workers.storage.analytics_schema import aggregate_rebuild_statements
from workers.storage.clickhouse import ClickHouseStore, StoreError
from workers.storage.schema import Cluster
from workers.storage.session_rollups import EVERY_ROLLUP

CLUSTER = Cluster("shop_cluster")


def parses(store: ClickHouseStore, statement: str) -> str:
    return store.query(f"EXPLAIN AST {statement}", "TabSeparatedRaw").decode()


def test_the_cluster_statements_of_an_erasure_and_a_retention_parse(store: ClickHouseStore) -> None:
    runner = ErasureRunner(None, store, "shop", CLUSTER)  # type: ignore[arg-type]  # statements only
    ids = PersonIds({"u-1"}, {"a-1"}, {"s-1", "s-2"})
    statements = [
        runner._mutation("activities", f"tenant_id = 'shop-a' AND {ids.condition()}"),
        runner._mutation(
            "rejected_activities", "tenant_id = 'shop-a' AND id IN ('00000000-0000-0000-0000-000000000001')"
        ),
    ]
    for aggregate in EVERY_ROLLUP:
        # As the erasure runs them: at its niceness.
        rebuild = aggregate_rebuild_statements(
            "shop", aggregate, "shop-a", f"{aggregate.bucket.name} IN ('2026-11-02')", CLUSTER
        )
        statements += [niced(statement, ERASURE_NICENESS) for statement in rebuild]
    statements += retention_statements("shop", {"shop-a": Retention("shop-a", 30, 400)}, CLUSTER)
    statements += retention_statements("shop", {}, CLUSTER, frozenset({"activities_local"}))
    for statement in statements:
        if statement.startswith(("ALTER", "DELETE")):
            assert "ON CLUSTER `shop_cluster`" in statement, statement
            assert "_local`" in statement, statement
        assert parses(store, statement).strip(), statement
    assert statements[0].endswith("SETTINGS mutations_sync = 2, os_thread_priority = 19")
    with pytest.raises(StoreError):
        parses(store, statements[0].replace("DELETE WHERE", "DELETE WHEN"))
