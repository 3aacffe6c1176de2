"""Shared fixtures: one embedded ClickHouse engine for the whole run, a fresh database per test.

The embedded engine admits one data directory per process, so every test in this process uses the
same directory and isolates itself with its own database (random name), as the integration tests of
clickhouse-connect do with random table names.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc.aio
import pytest

from collector.config import Settings, load_settings
from collector.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from collector.server import CollectorServer
from workers.storage import ClickHouseStore


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine") / "clickhouse"


@pytest.fixture
def database() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_settings(engine_dir: Path, database: str, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "metrics_listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "data_dir": tmp_path / "data",
            "clickhouse_dsn": f"chdb://{engine_dir}",
            "clickhouse_database": database,
            "shutdown_grace_s": 5.0,
            # Most tests check what ClickHouse holds right after an answer: that is the spool-off
            # contract. The spool's own tests turn it on.
            "spool": False,
        }
        values.update(overrides)
        return load_settings(values, environ={})

    return make


@pytest.fixture
def store(engine_dir: Path, database: str) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore(f"chdb://{engine_dir}", database, connections=2)
    yield s
    try:
        s.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    finally:
        s.close()


StartServer = Callable[..., Awaitable[CollectorServer]]


@pytest.fixture
async def start_server(make_settings: Callable[..., Settings]) -> AsyncIterator[StartServer]:
    servers: list[CollectorServer] = []

    async def start(**overrides: Any) -> CollectorServer:
        server = CollectorServer(make_settings(**overrides))
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.shutdown(grace=1.0)


@pytest.fixture
async def server(start_server: StartServer) -> CollectorServer:
    return await start_server()


@pytest.fixture
async def channel(server: CollectorServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.ActivityServiceStub:
    return pb_grpc.ActivityServiceStub(channel)
