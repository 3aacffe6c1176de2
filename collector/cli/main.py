"""`activity-collector`: serve, config, send, health, sql, report, schema, migrate, dead-letters, tenants,
keys, catalog, plans, rejections, quotas, users, segments.

Each command is a module of this package whose `add_parser(subparsers)` registers its parser and sets its
handler (`set_defaults(run=...)`); what they share is in `collector.cli.common`. Here: the top parser,
the settings, and the dispatch.
"""

from __future__ import annotations

import argparse
import sys

from collector.cli import (
    catalog,
    config_cmd,
    dead_letters,
    healthcheck,
    keys,
    migrate,
    plans,
    quotas,
    rejections,
    report,
    schema,
    segments,
    send,
    serve,
    sql,
    tenants,
    users,
)
from collector.cli.common import PROG, Command, Configuration, Subparsers, describe
from collector.config import ConfigError

# In the order `--help` lists them.
COMMANDS = (
    serve,
    config_cmd,
    send,
    healthcheck,
    sql,
    report,
    schema,
    migrate,
    dead_letters,
    tenants,
    keys,
    catalog,
    plans,
    rejections,
    quotas,
    users,
    segments,
)


def version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("activity-collector")
    except PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Collects user activities over gRPC and stores them in ClickHouse.",
        epilog="Every command exits 0 when it did what it was asked, 1 when it could not, 2 on a bad "
        "argument or a configuration error and 130 when interrupted; a command's --help lists its other "
        "exit statuses.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    subparsers: Subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    describe(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Command = args.run
    try:
        # The settings load when the command first asks for them: `send` and `health` never do.
        return run(args, Configuration(args))
    except ConfigError as error:
        print(f"{PROG}: configuration error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A file or directory the command was pointed at that cannot be used: a message, not a traceback.
        print(f"{PROG} {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
