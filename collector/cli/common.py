"""What the commands of `activity-collector` share: the error a command reports, the settings it runs
with, the flags many take, and the openers of the stores.

Every command is a module of this package with `add_parser(subparsers)`, which registers the command's
parser and sets its handler, `run(args, config) -> exit status`, with `set_defaults(run=...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from collector.config import LOG_LEVELS, EffectiveSettings, Settings, load_config

if TYPE_CHECKING:
    from workers.storage.postgres import Postgres

PROG = "activity-collector"

FORMATS = {
    "table": "PrettyCompactMonoBlock",
    "tsv": "TabSeparatedWithNames",
    "csv": "CSVWithNames",
    "json": "JSONEachRow",
}
"""The output formats of `sql` and `report`, by flag value: their ClickHouse names."""


class CommandError(Exception):
    """The command cannot do what it was asked; the message says why."""


class Subparsers(Protocol):
    """What `ArgumentParser.add_subparsers()` returns, as the commands use it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


class Configuration:
    """The settings of a command, from its flags, the ACTIVITY_* variables and the configuration file,
    loaded when the command first asks for them: the commands that only talk to a running server
    (`send`, `health`) never do, so a setting they do not use cannot stop them. Loading raises
    `collector.config.ConfigError`, which `main` reports with exit status 2."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._effective: EffectiveSettings | None = None

    @property
    def effective(self) -> EffectiveSettings:
        """Every setting with where it came from."""
        if self._effective is None:
            args = self._args
            overrides: dict[str, Any] = {
                name: getattr(args, name, None)
                for name in (
                    "data_dir",
                    "clickhouse_dsn",
                    "clickhouse_database",
                    "postgres_dsn",
                    "listen",
                    "metrics_listen",
                    "http_listen",
                    "tls_cert_file",
                    "tls_key_file",
                    "log_level",
                )
            }
            self._effective = load_config(overrides, config_file=getattr(args, "config", None))
        return self._effective

    @property
    def settings(self) -> Settings:
        return self.effective.settings


Command = Callable[[argparse.Namespace, Configuration], int]
"""A command's handler: its parsed arguments and settings in, its exit status out."""


# -- flags -----------------------------------------------------------------------------------------


def config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file; flags and ACTIVITY_* variables override it (ACTIVITY_CONFIG)",
    )


def data_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="data directory (default ./data; ACTIVITY_DATA_DIR)")


def postgres_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgres-dsn",
        help="PostgreSQL DSN: postgresql://user:pass@host:5432/db "
        "(default: embedded PostgreSQL under the data directory; ACTIVITY_POSTGRES_DSN)",
    )


def postgres_command_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the commands that use PostgreSQL only: --config, --data-dir, --postgres-dsn."""
    config_flag(parser)
    data_dir_flag(parser)
    postgres_flags(parser)


def store_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the commands that use ClickHouse (and PostgreSQL)."""
    config_flag(parser)
    data_dir_flag(parser)
    parser.add_argument(
        "--clickhouse-dsn",
        help="ClickHouse DSN: http(s)://user:pass@host:8123 or chdb:///path "
        "(default: embedded engine under the data directory; ACTIVITY_CLICKHOUSE_DSN)",
    )
    parser.add_argument("--clickhouse-database", help="ClickHouse database (default activity)")
    postgres_flags(parser)


def serve_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `serve` (and of `config`, which prints what they make)."""
    parser.add_argument("--listen", help="HOST:PORT of the gRPC service (default 127.0.0.1:50051)")
    parser.add_argument(
        "--tls-cert-file", help="PEM certificate chain: TLS on the gRPC port and the HTTP door"
    )
    parser.add_argument("--tls-key-file", help="PEM private key of --tls-cert-file")
    parser.add_argument(
        "--http-listen",
        help="HOST:PORT of the HTTP/JSON door, POST /v1/activities (default 127.0.0.1:8080; empty: none)",
    )
    parser.add_argument(
        "--metrics-listen",
        help="HOST:PORT of the Prometheus /metrics endpoint (default 127.0.0.1:9464; empty: none)",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, help="least severe log events written (default info)"
    )
    store_flags(parser)


def print_rows(header: tuple[str, ...], lines: Sequence[tuple[str, ...]]) -> None:
    """A table: columns as wide as their widest cell, two spaces apart."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    for line in (header, *lines):
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())


def when(value: Any) -> str:
    """A timestamp as the tables show it; empty for none."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


# -- the stores ------------------------------------------------------------------------------------


def open_postgres(settings: Settings) -> Postgres:
    """A pool on the configured PostgreSQL, to use as `async with`. On the embedded PostgreSQL it joins
    the server that `serve` runs on the same data directory, or starts it for the command's duration;
    a data directory without one is a CommandError."""
    from workers.storage.postgres import Postgres

    if not settings.postgres_dsn and not settings.postgres_dir.exists():
        raise CommandError(
            f"no data in {settings.data_dir.resolve()}: start `activity-collector serve` there first, "
            "or pass --data-dir or --postgres-dsn"
        )
    return Postgres(settings.postgres_dsn, settings.data_dir, pool_size=2)


def run_async(command: str, body: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a command's coroutine; its errors, and PostgreSQL's, become a message and exit status 1."""
    from collector.tenants import TenantError
    from workers.storage.postgres import POSTGRES_ERRORS, PostgresError

    try:
        return asyncio.run(body())
    except (CommandError, PostgresError, TenantError) as error:
        print(f"{PROG} {command}: {error}", file=sys.stderr)
        return 1
    except POSTGRES_ERRORS as error:
        print(f"{PROG} {command}: PostgreSQL failed: {error}", file=sys.stderr)
        return 1


def query_clickhouse(settings: Settings, query: str, fmt: str) -> bytes:
    """Result bytes of `query` in ClickHouse format `fmt`. With the embedded engine, a server running on
    the same data directory answers; without one, the engine is opened here. Raises StoreError."""
    from collector.process.control import ControlUnavailable, query_via_control
    from workers.storage.clickhouse import ClickHouseStore, StoreError

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
