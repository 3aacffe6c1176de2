"""Every stage has the same lifecycle: shutdown is safe without start and idempotent; after shutdown
the stage takes no more work."""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2
from helpers import make_activity

from collector.config import PipelineSettings, Settings
from collector.doors.web import WebListener
from collector.process.control import ControlServer
from collector.process.health import HealthMonitor
from collector.process.server import CollectorServer
from workers.commit.pipeline import Pipeline, Submission, Unavailable
from workers.storage.clickhouse import ClickHouseStore, StoreError
from workers.storage.connector import StoreConnector
from workers.storage.postgres import Postgres, PostgresError

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


def refuses_web(stage: WebListener) -> None:
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", stage.port or 0))


async def refuses_health(stage: HealthMonitor) -> None:
    # After shutdown the status stays NOT_SERVING, even when start() is called again.
    await stage.start()
    answer = await stage.servicer.Check(health_pb2.HealthCheckRequest(service=""), None)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def refuses_connector(stage: StoreConnector) -> None:
    attempts = stage.attempts
    await stage.start()
    await asyncio.sleep(0.1)
    assert stage.attempts == attempts and not stage.ready.is_set()


def unreachable_store() -> ClickHouseStore:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return ClickHouseStore(f"http://127.0.0.1:{port}", "lifecycle", connect=False)


Stage = Any
Factory = Callable[[ClickHouseStore, Settings, Path], Stage]
Refuses = Callable[[Stage], Any]

STAGES: dict[str, tuple[Factory, Refuses]] = {
    "pipeline": (lambda store, settings, tmp: Pipeline(PipelineSettings(), store), refuses_pipeline),
    "control": (lambda store, settings, tmp: ControlServer(tmp / "c.sock", store.query), refuses_control),
    "connector": (lambda store, settings, tmp: StoreConnector(unreachable_store()), refuses_connector),
    "server": (lambda store, settings, tmp: CollectorServer(settings), refuses_server),
    "web": (lambda store, settings, tmp: WebListener(web.Application(), "127.0.0.1:0", "x"), refuses_web),
    "health": (
        lambda store, settings, tmp: HealthMonitor(store, Pipeline(PipelineSettings(), store), 0.05),
        refuses_health,
    ),
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
    refused = refuses(stage)
    if inspect.isawaitable(refused):
        await refused


def test_store_close_is_idempotent_and_final(store: ClickHouseStore, engine_dir: Path, database: str) -> None:
    other = ClickHouseStore(f"chdb://{engine_dir}", database, connections=1)
    other.close()
    other.close()
    with pytest.raises(StoreError, match="closed"):
        other.query("SELECT 1", "TabSeparated")
