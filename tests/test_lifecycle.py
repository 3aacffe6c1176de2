"""Every stage has the same lifecycle: shutdown is safe without start and idempotent; after shutdown
the stage takes no more work."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import make_activity

from collector.config import PipelineSettings, Settings
from collector.control import ControlServer
from collector.postgres import Postgres, PostgresError
from collector.server import CollectorServer
from workers.pipeline import Pipeline, Submission, Unavailable
from workers.storage import ClickHouseStore, StoreError

pytestmark = pytest.mark.timeout(60)


def refuses_pipeline(stage: Pipeline) -> None:
    loop_future: Any = None
    with pytest.raises(Unavailable):
        stage.submit(Submission([(0, make_activity(1))], "t", 0, None, 0, loop_future))


def refuses_control(stage: ControlServer) -> None:
    assert not stage.path.exists()


def refuses_postgres(stage: Postgres) -> None:
    with pytest.raises(PostgresError):
        stage.pool  # noqa: B018


def refuses_server(stage: CollectorServer) -> None:
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", stage.port or 0))


Stage = Any
Factory = Callable[[ClickHouseStore, Settings, Path], Stage]

STAGES: dict[str, tuple[Factory, Callable[[Stage], None]]] = {
    "pipeline": (lambda store, settings, tmp: Pipeline(PipelineSettings(), store), refuses_pipeline),
    "control": (lambda store, settings, tmp: ControlServer(tmp / "c.sock", store.query), refuses_control),
    "server": (lambda store, settings, tmp: CollectorServer(settings), refuses_server),
    "postgres": (lambda store, settings, tmp: Postgres(settings.postgres_dsn, tmp), refuses_postgres),
}


@pytest.mark.parametrize("name", sorted(STAGES))
async def test_shutdown_without_start_is_safe_and_idempotent(
    name: str, store: ClickHouseStore, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    factory, _ = STAGES[name]
    stage = factory(store, make_settings(), tmp_path)
    await stage.shutdown()
    await stage.shutdown()


@pytest.mark.parametrize("name", sorted(STAGES))
async def test_start_then_shutdown_twice_then_no_more_work(
    name: str, store: ClickHouseStore, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    factory, refuses = STAGES[name]
    stage = factory(store, make_settings(), tmp_path)
    start: Callable[[], Awaitable[None]] = stage.start
    await start()
    await stage.shutdown()
    await stage.shutdown()
    refuses(stage)


def test_store_close_is_idempotent_and_final(store: ClickHouseStore, engine_dir: Path, database: str) -> None:
    other = ClickHouseStore(f"chdb://{engine_dir}", database, connections=1)
    other.close()
    other.close()
    with pytest.raises(StoreError, match="closed"):
        other.query("SELECT 1", "TabSeparated")
