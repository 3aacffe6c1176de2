"""`activity-collector sql`: run SQL against the store, through a running server when there is one."""

from __future__ import annotations

import argparse
import sys

from collector.cli.common import FORMATS, Configuration, Subparsers, query_clickhouse, store_flags
from collector.config import Settings


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("sql", help="run ClickHouse SQL against the store and print the result")
    parser.add_argument("query", help="the SQL statement")
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default="table", help="output format (default table)"
    )
    store_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    return run_sql(config.settings, args.query, FORMATS[args.format])


def run_sql(settings: Settings, query: str, fmt: str) -> int:
    from workers.storage.clickhouse import StoreError

    try:
        result = query_clickhouse(settings, query, fmt)
    except StoreError as error:
        print(f"activity-collector sql: {error}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(result)
    sys.stdout.flush()
    return 0
