"""Shared fixtures: one embedded ClickHouse engine per test process (scripts/test runs three, pytest-xdist),
a fresh database per test, a copy of one the migrations built (tests/migrated_template.py); the PostgreSQL
server at 127.0.0.1:5432 and one embedded PostgreSQL per test process, a fresh schema per test.

The embedded engine admits one data directory per process, so every test in this process uses the
same directory and isolates itself with its own database (random name), as the integration tests of
clickhouse-connect do with random table names. PostgreSQL tests take `pg_dsn`, which runs each of them
against both PostgreSQLs; every other collector a test starts uses a schema of its own on the server
(or on the embedded one, when no server answers).

`TEST_POSTGRES_DSN` names the server (default postgresql://postgres@127.0.0.1:5432/test). When it is
set, a server that does not answer fails the tests; when it is not, they run on the embedded one only.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import clickhouse_connect
import grpc.aio
import pytest
from migrated_template import MigratedTemplate

from collector.config import Settings, load_settings
from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.storage.clickhouse import ClickHouseStore
from workers.storage.postgres import acquire_embedded, release_embedded


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine") / "clickhouse"


@pytest.fixture
def database() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def migrated_template(engine_dir: Path) -> Iterator[MigratedTemplate]:
    template = MigratedTemplate(f"chdb://{engine_dir}")
    yield template
    template.close()


STORAGE_TESTS = Path(__file__).resolve().parent / "workers" / "storage"


@pytest.fixture
def copy_migrated(
    request: pytest.FixtureRequest, migrated_template: MigratedTemplate
) -> Callable[[str], None]:
    """Creates a database of the run's engine as a copy of the migrated template (tests/migrated_template.py);
    in the tests of the storage, which are about the migrations, it does nothing and the store migrates."""
    if request.path.is_relative_to(STORAGE_TESTS):
        return lambda database: None
    return migrated_template.copy


# When the tests run as root, the embedded PostgreSQL runs as a system user of its own that must be able
# to traverse the test directories. pytest makes its temporary root owner-only at the start of every
# session, any user's on the machine, which would cut a running embedded server off from its data; so
# the tests keep their temporary directories in the checkout, under a root only they use.
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(Path(__file__).resolve().parents[1] / ".pytest-tmp"))
Path(os.environ["PYTEST_DEBUG_TEMPROOT"]).mkdir(exist_ok=True)

T = TypeVar("T")

WORKER_TIMEOUT_FACTOR = 3
"""The per-test timeouts (pytest-timeout) guard against hangs, sized for a test that has the machine's
cores to itself; in a worker process of scripts/test the tests share the cores with the other workers'."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    default = float(config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = default
        if marker is not None:
            seconds = float(marker.args[0] if marker.args else marker.kwargs.get("timeout", default))
        if seconds > 0:
            item.add_marker(pytest.mark.timeout(seconds * WORKER_TIMEOUT_FACTOR))


PG_SERVER_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a loop of its own, from sync code that may be inside a running loop."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def with_search_path(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server's DSN."""
    try:
        run_async(_execute(PG_SERVER_DSN, "SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        if "TEST_POSTGRES_DSN" in os.environ:
            raise
        pytest.skip(f"no PostgreSQL server at {PG_SERVER_DSN}: {error}")
    return PG_SERVER_DSN


@pytest.fixture(scope="session")
def pg_embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The DSN of an embedded PostgreSQL started for the run."""
    pgdata = tmp_path_factory.mktemp("embedded") / "postgres"
    dsn = acquire_embedded(pgdata)
    yield dsn
    release_embedded(pgdata)


@pytest.fixture(params=["server", "embedded"])
def pg_base(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"pg_{request.param}"))


_schemas_to_drop: list[tuple[str, str]] = []


def _fresh_schema(base: str) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    run_async(_execute(base, f"CREATE SCHEMA {schema}"))
    yield with_search_path(base, schema)
    # Dropped once the test's every fixture is torn down (pytest_runtest_teardown): a collector set up
    # after this fixture is stopped after it, and until then a transaction of its, on this thread's event
    # loop, could hold a lock the DROP waits for while the DROP blocks that loop.
    _schemas_to_drop.append((base, schema))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    try:
        return (yield)
    finally:
        while _schemas_to_drop:
            base, schema = _schemas_to_drop.pop()
            try:
                run_async(_execute(base, f"DROP SCHEMA {schema} CASCADE"))
            except OSError:
                # After the last test the embedded PostgreSQL has stopped, its data with it.
                if nextitem is not None:
                    raise


@pytest.fixture
def pg_dsn(pg_base: str) -> Iterator[str]:
    """A DSN on a fresh schema, once on the server and once on the embedded PostgreSQL."""
    yield from _fresh_schema(pg_base)


@pytest.fixture
def postgres_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """A DSN on a fresh schema of the server (of the embedded PostgreSQL when no server answers), for
    collectors whose tests are not about PostgreSQL."""
    try:
        base = str(request.getfixturevalue("pg_server"))
    except pytest.skip.Exception:
        base = str(request.getfixturevalue("pg_embedded"))
    yield from _fresh_schema(base)


@pytest.fixture
def make_settings(
    engine_dir: Path, database: str, tmp_path: Path, postgres_dsn: str
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "metrics_listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "data_dir": tmp_path / "data",
            "clickhouse_dsn": f"chdb://{engine_dir}",
            "clickhouse_database": database,
            "postgres_dsn": postgres_dsn,
            "shutdown_grace_s": 5.0,
            # Most tests check what ClickHouse holds right after an answer: that is the spool-off
            # contract. The spool's own tests turn it on.
            "spool": False,
            # Most tests are not about API keys; the tests of auth turn it on.
            "auth": False,
            # Servers started in the test process would lower the priority of its threads for good
            # (niceness cannot be lowered back without privileges), for every later test; the serving
            # subprocesses of tests/e2e/test_priority.py and the others keep the default.
            "background_niceness": 0,
        }
        values.update(overrides)
        return load_settings(values, environ={})

    return make


@pytest.fixture
def store(engine_dir: Path, database: str, copy_migrated: Callable[[str], None]) -> Iterator[ClickHouseStore]:
    copy_migrated(database)
    s = ClickHouseStore(f"chdb://{engine_dir}", database, connections=2)
    yield s
    try:
        s.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    finally:
        s.close()


StartServer = Callable[..., Awaitable[CollectorServer]]


@pytest.fixture
async def start_server(
    make_settings: Callable[..., Settings], engine_dir: Path, copy_migrated: Callable[[str], None]
) -> AsyncIterator[StartServer]:
    servers: list[CollectorServer] = []

    async def start(**overrides: Any) -> CollectorServer:
        settings = make_settings(**overrides)
        if settings.effective_clickhouse_dsn == f"chdb://{engine_dir}" and not settings.clickhouse_cluster:
            await asyncio.to_thread(copy_migrated, settings.clickhouse_database)
        server = CollectorServer(settings)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.shutdown(grace=1.0)
    # Drop the test's database from the engine the run shares: left there, every test's tables and
    # views would keep the engine busier and its next CREATEs slower for the rest of the run.
    for dsn, database in {
        (s.settings.effective_clickhouse_dsn, s.settings.clickhouse_database) for s in servers
    }:
        if dsn.startswith("chdb://"):
            await asyncio.to_thread(_drop_database, dsn, database)


def _drop_database(dsn: str, database: str) -> None:
    client = clickhouse_connect.get_client(dsn=dsn)
    try:
        client.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    finally:
        client.close()


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
