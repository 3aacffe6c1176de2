"""Connecting the store in the background: the spool acknowledges meanwhile, the drainer waits, and
everything acknowledged arrives once the store is connected.

No ClickHouse server runs here (the embedded engine is in-process), so a server that refuses and then
answers within one run cannot be staged. The store that comes back within a run is the embedded engine,
refusing for a real reason an operator fixes: its database holds a `schema_migrations` table the
migrations cannot read. The unreachable server is a closed port.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from helpers import make_activity, wait_for

from workers.commit.pipeline import Pipeline, Submission
from workers.commit.settings import PipelineSettings
from workers.commit.spool import Spool
from workers.storage.clickhouse import ClickHouseStore, StoreError
from workers.storage.connector import StoreConnector

pytestmark = pytest.mark.timeout(60)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_an_unreachable_server_is_tried_again_until_shutdown(database: str) -> None:
    store = ClickHouseStore(
        f"http://collector:s3cret@127.0.0.1:{closed_port()}", database, connections=1, connect=False
    )
    connector = StoreConnector(store, first_delay_s=0.01, max_delay_s=0.05)
    await connector.start()
    try:
        await wait_for(lambda: connector.attempts >= 3, "three attempts")
        assert not connector.ready.is_set()
        assert "collector:***@127.0.0.1" in connector.last_error and "s3cret" not in connector.last_error
        with pytest.raises(StoreError) as refused:
            store.query("SELECT 1", "TabSeparated")
        assert refused.value.transient
        assert "not connected to ClickHouse at http://collector:***@127.0.0.1" in str(refused.value)
    finally:
        await connector.shutdown()
        store.close()
    attempts = connector.attempts
    await asyncio.sleep(0.2)
    assert connector.attempts == attempts


async def test_spooled_activities_wait_for_the_store_and_arrive_once_it_is_connected(
    engine_dir: Path, database: str, tmp_path: Path
) -> None:
    dsn = f"chdb://{engine_dir}"
    # What an operator would have to fix: a table the migrations cannot read their versions from.
    admin = ClickHouseStore(dsn, database, connections=1, migrate=False)
    admin.command("CREATE TABLE schema_migrations (note String) ENGINE = MergeTree ORDER BY note")
    store = ClickHouseStore(dsn, database, connections=2, connect=False)
    connector = StoreConnector(store, first_delay_s=0.01, max_delay_s=0.05)
    spool = Spool(tmp_path / "spool", capacity_bytes=10_000_000)
    pipeline = Pipeline(PipelineSettings(drain_interval_ms=5), store, spool)
    pipeline.store_ready = connector.ready
    await connector.start()
    await pipeline.start()
    try:
        batches = [[make_activity(n * 10 + i) for i in range(10)] for n in range(5)]
        for batch in batches:
            future = asyncio.get_running_loop().create_future()
            pipeline.submit(Submission(list(enumerate(batch)), "t1", time.time_ns(), None, 0, future))
            await future
        await wait_for(lambda: connector.attempts >= 3, "three attempts")
        assert not connector.ready.is_set()
        assert "schema_migrations" in connector.last_error
        assert spool.pending_rows == 50
        assert pipeline.stats.inserts == 0 and pipeline.stats.insert_retries == 0

        admin.command("DROP TABLE schema_migrations SYNC")
        await wait_for(connector.ready.is_set, "the store to connect")
        await wait_for(lambda: pipeline.stats.committed >= 50, "the spool to drain")
        assert store.query("SELECT count(), uniqExact(id) FROM activities", "TabSeparated") == b"50\t50\n"
        ids = store.query("SELECT toString(id) FROM activities", "TabSeparated").decode().split()
        assert set(ids) == {a.id for batch in batches for a in batch}
    finally:
        await pipeline.shutdown(timeout=5)
        await connector.shutdown()
        store.close()
        admin.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
        admin.close()
