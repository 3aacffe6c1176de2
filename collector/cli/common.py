"""What the commands of `activity-collector` share: the error a command reports, the settings it runs
with, the flags many take, and the openers of the stores.

Every command is a module of this package with `add_parser(subparsers)`, which registers the command's
parser and sets its handler, `run(args, config) -> exit status`, with `set_defaults(run=...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from collector.config import ENV_PREFIX, LOG_LEVELS, SETTING_NAMES, EffectiveSettings, Settings, load_config

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
            # Every setting a command has a flag for (`serve` and `config` have one for each).
            overrides: dict[str, Any] = {name: getattr(args, name, None) for name in SETTING_NAMES}
            self._effective = load_config(overrides, config_file=getattr(args, "config", None))
        return self._effective

    @property
    def settings(self) -> Settings:
        return self.effective.settings


Command = Callable[[argparse.Namespace, Configuration], int]
"""A command's handler: its parsed arguments and settings in, its exit status out."""


# -- flags -----------------------------------------------------------------------------------------


def setting_default(name: str) -> str:
    """A setting's default as `--help` shows it."""
    _, f = SETTING_NAMES[name]
    if f.default is not dataclasses.MISSING:
        value: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:  # pragma: no cover - every setting has a default
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "" or value is None:
        return "empty"
    return str(value)


def setting_help(name: str, text: str | None = None, default: str | None = None) -> str:
    """The help of a setting's flag: what it is, then its variable and its default."""
    shown = setting_default(name) if default is None else default
    where = f"{ENV_PREFIX}{name.upper()}; default {shown}"
    # argparse formats help with %: a literal percent sign must be doubled.
    return (f"{text} ({where})" if text else where).replace("%", "%%")


def setting_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    text: str | None = None,
    **kwargs: Any,
) -> None:
    """The flag `--<name>` of a setting, its value kept in `args.<name>` (None when not given), with
    its variable and default in its help. `kwargs` go to `add_argument` (type, choices, metavar) and
    may hold `default_shown`, the default as the help should say it."""
    shown = kwargs.pop("default_shown", None)
    parser.add_argument(
        "--" + name.replace("_", "-"), dest=name, help=setting_help(name, text, shown), **kwargs
    )


def all_setting_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every setting of `collector.config.SETTING_NAMES` the parser has none for yet: values
    are converted and checked as those of the variables and the file are, with errors naming the flag."""
    others = parser.add_argument_group(
        "the other settings", "One flag per setting, named after it; what each does: docs/configuration.md."
    )
    for name in SETTING_NAMES:
        option = "--" + name.replace("_", "-")
        if option in parser._option_string_actions:
            continue
        _, f = SETTING_NAMES[name]
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        metavar = {"bool": "{true,false}", "int": "N", "float": "X", "Path": "PATH"}.get(kind, "VALUE")
        setting_flag(others, name, metavar=metavar)


def config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file; flags and ACTIVITY_* variables override it (ACTIVITY_CONFIG; "
        "default none)",
    )


def data_dir_flag(parser: argparse.ArgumentParser) -> None:
    setting_flag(parser, "data_dir", "data directory", type=Path, metavar="DIR", default_shown="./data")


def postgres_flags(parser: argparse.ArgumentParser) -> None:
    setting_flag(
        parser,
        "postgres_dsn",
        "PostgreSQL DSN: postgresql://user:pass@host:5432/db",
        metavar="DSN",
        default_shown="embedded PostgreSQL under the data directory",
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
    setting_flag(
        parser,
        "clickhouse_dsn",
        "ClickHouse DSN: http(s)://user:pass@host:8123 or chdb:///path",
        metavar="DSN",
        default_shown="embedded engine under the data directory",
    )
    setting_flag(parser, "clickhouse_database", "ClickHouse database", metavar="NAME")
    postgres_flags(parser)


def serve_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `serve` (and of `config`, which prints what they make): one for every setting."""
    setting_flag(parser, "listen", "HOST:PORT of the gRPC service", metavar="HOST:PORT")
    setting_flag(
        parser,
        "tls_cert_file",
        "PEM certificate chain: TLS on the gRPC port and the HTTP door",
        metavar="FILE",
    )
    setting_flag(parser, "tls_key_file", "PEM private key of --tls-cert-file", metavar="FILE")
    setting_flag(
        parser,
        "http_listen",
        "HOST:PORT of the HTTP/JSON door, POST /v1/activities; empty: none",
        metavar="HOST:PORT",
    )
    setting_flag(
        parser,
        "metrics_listen",
        "HOST:PORT of the Prometheus /metrics endpoint; empty: none",
        metavar="HOST:PORT",
    )
    setting_flag(parser, "log_level", "least severe log events written", choices=LOG_LEVELS)
    store_flags(parser)
    all_setting_flags(parser)


TABLE_FORMATS = ("table", "json", "csv")
"""The output formats of the commands that list things (`tenants list`, `keys list`, ...)."""


def table_format_flag(parser: argparse.ArgumentParser) -> None:
    """--format of a command that prints a table: table, json (one object a line) or csv."""
    parser.add_argument(
        "--format",
        choices=TABLE_FORMATS,
        default="table",
        help="output format: table, json (one object a line, keyed by column) or csv with a header "
        "(default table)",
    )


def print_table(
    header: tuple[str, ...], lines: Sequence[tuple[str, ...]], fmt: str = "table", empty: str = ""
) -> None:
    """Rows in a `TABLE_FORMATS` format. With no rows: `empty` as a table, nothing as json, the header
    alone as csv."""
    if fmt == "json":
        for line in lines:
            print(json.dumps(dict(zip(header, line, strict=True)), ensure_ascii=False))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(lines)
    elif not lines and empty:
        print(empty)
    else:
        print_rows(header, lines)


def describe(parser: argparse.ArgumentParser) -> None:
    """Give every command and subcommand under `parser` without a description one, from its one-line
    help: `--help` of each then says what it does. A command that has exit statuses beyond 0 and 1
    lists them itself (in its description or epilog)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            text = helps.get(name)
            if not sub.description and text:
                sub.description = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
            describe(sub)


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


class CommandStore:
    """ClickHouse as `workers/` asks it (`query`, `command`): through the running server holding the
    embedded engine when there is one, else opened here (`query_clickhouse`). A read-only one refuses
    `command`, for commands that must not change ClickHouse."""

    def __init__(self, settings: Settings, writable: bool = True) -> None:
        self.settings = settings
        self.writable = writable

    def query(self, sql: str, fmt: str) -> bytes:
        return query_clickhouse(self.settings, sql, fmt)

    def command(self, sql: str) -> bytes:
        if not self.writable:
            raise CommandError("this command does not change ClickHouse")
        return query_clickhouse(self.settings, sql, "TabSeparated")

    def close(self) -> None:
        """Nothing held between queries."""


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
