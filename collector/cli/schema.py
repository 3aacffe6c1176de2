"""`activity-collector schema`: the ClickHouse DDL of the configured placement, to create the tables on
nodes added to a cluster."""

from __future__ import annotations

import argparse

from collector.cli.common import Configuration, Subparsers, store_flags


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "schema",
        help="print the ClickHouse DDL of the configured placement (one node, or clickhouse_cluster), "
        "every statement IF NOT EXISTS: run it to create the tables on nodes added to a cluster",
    )
    store_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    from workers.storage.migrations import migration_statements

    settings = config.settings
    statements = migration_statements(settings.clickhouse_database, settings.cluster)
    # The backfills fill aggregates from existing rows: the migrations' business, not a new node's.
    print("\n\n".join(s + ";" for s in statements if not s.startswith("INSERT")))
    return 0
