"""`activity-collector sql`: run SQL against the store, through a running server when there is one."""

from __future__ import annotations

import argparse
import re
import sys

from collector.cli.common import FORMATS, Configuration, Subparsers, query_clickhouse, store_flags
from collector.config import Settings

_OWN_FORMAT = re.compile(r"\s+FORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*$", re.IGNORECASE)
_TRAILING_SEMICOLONS = re.compile(r"[\s;]+$")


class FormatClash(ValueError):
    """The query names an output format and --format another."""


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "sql",
        help="run ClickHouse SQL against the store and print the result",
        description="A query ending in its own FORMAT clause (SELECT 1 FORMAT JSON) is printed in that "
        "format; otherwise in --format. It runs against the configured store; on the embedded engine, "
        "a server running on the same data directory answers it. Exit status: 0 printed; 1 the store "
        "failed or refused the query; 2 the query's FORMAT and --format disagree, or a configuration "
        "error.",
    )
    parser.add_argument("query", help="the SQL statement")
    parser.add_argument("--format", choices=sorted(FORMATS), help="output format (default table)")
    store_flags(parser)
    parser.set_defaults(run=run)


def split_format(query: str, flag: str | None) -> tuple[str, str]:
    """The query without its trailing FORMAT clause (and semicolons), and the ClickHouse format to ask
    for: the query's own, else --format's (`flag`), else the table. Raises FormatClash when the query
    and --format name different formats."""
    match = _OWN_FORMAT.search(query)
    if match is None:
        return _TRAILING_SEMICOLONS.sub("", query), FORMATS[flag or "table"]
    own = match[1]
    if flag is not None and FORMATS[flag].lower() != own.lower():
        raise FormatClash(
            f"the query ends in FORMAT {own} and --format {flag} asks for {FORMATS[flag]}: drop one of them"
        )
    return query[: match.start()], own


def run(args: argparse.Namespace, config: Configuration) -> int:
    try:
        query, fmt = split_format(args.query, args.format)
    except FormatClash as error:
        print(f"activity-collector sql: {error}", file=sys.stderr)
        return 2
    return run_sql(config.settings, query, fmt)


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
