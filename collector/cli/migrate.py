"""`activity-collector migrate`: apply the PostgreSQL migrations this release lacks (`serve` does it at
start). Works whether or not `serve` runs: on the embedded PostgreSQL it joins the server that `serve`
runs on the same data directory, or starts it for the command's duration."""

from __future__ import annotations

import argparse

from collector.cli.common import Configuration, Subparsers, postgres_command_flags, run_async
from collector.config import Settings


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="apply the PostgreSQL migrations this release lacks",
        description="Applies, under an advisory lock, the PostgreSQL migrations not yet applied (serve "
        "does it at start); on the embedded PostgreSQL it joins a running server's.",
    )
    postgres_command_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    return run_migrate(config.settings)


def run_migrate(settings: Settings) -> int:
    from workers.storage.postgres import Postgres, latest_version

    async def body() -> int:
        async with Postgres(settings.postgres_dsn, settings.data_dir, pool_size=1) as postgres:
            applied = postgres.applied
        if applied:
            versions = ", ".join(map(str, applied))
            print(f"applied PostgreSQL migrations {versions}; schema version {latest_version()}")
        else:
            print(f"PostgreSQL schema up to date (version {latest_version()})")
        return 0

    return run_async("migrate", body)
