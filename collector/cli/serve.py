"""`activity-collector serve`: run the service until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from collector.cli.common import Configuration, Subparsers, serve_flags
from collector.config import Settings

log = logging.getLogger("collector")


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the gRPC service",
        description="Serves gRPC (with health and reflection), the HTTP/JSON door and the Prometheus "
        "metrics, storing under the data directory unless ClickHouse and PostgreSQL servers are named. "
        "Its first start creates the tenant default and prints its API key once. Every setting is a "
        "flag here (flags win over ACTIVITY_* variables, which win over --config's file). SIGTERM or "
        "Ctrl-C stops it gracefully. Exit status: 0 stopped; 1 could not start (a port taken, a store "
        "unreachable); 2 a configuration error.",
    )
    serve_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    return asyncio.run(serve(config.settings))


def show_created_key(key: str | None, tenant: str) -> None:
    """The key the first start created, printed once (there is no other way to see it)."""
    if key is None:
        return
    print(
        f"no tenant yet: created tenant {tenant} and its API key, shown this once "
        "(`activity-collector send` reads it from ACTIVITY_API_KEY or --api-key):",
        flush=True,
    )
    print(key, flush=True)


async def serve(settings: Settings) -> int:
    # Imported here: every other command would pay for the whole service at start.
    from collector import logs
    from collector.process import heap
    from collector.process.server import CollectorServer
    from core.dsn import mask_dsn
    from workers.storage.clickhouse import StoreError
    from workers.storage.postgres import PostgresError

    logs.configure(settings.log_level)
    server = CollectorServer(settings)
    try:
        await server.start()
    except (StoreError, PostgresError, RuntimeError, OSError) as error:
        await server.shutdown(grace=0)
        # The key was created before the start failed (a port taken, say): it is shown now or never.
        show_created_key(server.created_key, settings.default_tenant)
        if str(error).startswith("Failed to bind to address"):
            # gRPC's words, which point at GRPC_VERBOSITY: say which setting and what to do instead.
            error = RuntimeError(
                f"listen: cannot bind {settings.listen}: the address is taken (another collector?) or not "
                "this machine's; pass another --listen"
            )
        print(f"activity-collector: cannot start: {error}", file=sys.stderr)
        return 1
    server.install_signal_handlers()
    frozen = heap.freeze_startup_objects()
    show_created_key(server.created_key, settings.default_tenant)
    store = (
        mask_dsn(settings.clickhouse_dsn)
        if settings.clickhouse_dsn
        else f"embedded ClickHouse in {(settings.data_dir / 'clickhouse').resolve()}"
    )
    print(f"activity-collector listening on {server.address} (gRPC, activity.v1.ActivityService)", flush=True)
    if server.http is not None:
        print(f"HTTP/JSON door at {server.http.url}", flush=True)
    if server.metrics_server is not None:
        print(f"metrics at {server.metrics_server.url}", flush=True)
    print(f"storing into {store}, database {settings.clickhouse_database}", flush=True)
    if server.connector is not None and not server.connector.ready.is_set():
        print(
            "ClickHouse is not reachable yet: activities are spooled and acknowledged, and inserted once "
            f"it is ({server.connector.last_error or 'connecting'})",
            flush=True,
        )
    if server.postgres is not None:
        print(f"using {server.postgres.describe()}", flush=True)
    print(f"data directory: {settings.data_dir.resolve()}", flush=True)
    log.info(
        "started",
        extra={
            "listen": server.address,
            "data_dir": str(settings.data_dir.resolve()),
            "frozen_objects": frozen,
        },
    )
    await server.wait()
    log.info("stopped")
    return 0
