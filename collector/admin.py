"""Operator commands on PostgreSQL: `migrate`.

Each command opens its own connection pool. On the embedded PostgreSQL it joins the server that
`serve` runs on the same data directory, or starts it for the command's duration when none runs.
"""

from __future__ import annotations

import asyncio
import sys

from collector.config import Settings
from collector.postgres import Postgres, PostgresError, latest_version


async def migrate(settings: Settings) -> list[int]:
    async with Postgres(settings.postgres_dsn, settings.data_dir, pool_size=1) as postgres:
        return postgres.applied


def run_migrate(settings: Settings) -> int:
    try:
        applied = asyncio.run(migrate(settings))
    except PostgresError as error:
        print(f"activity-collector migrate: {error}", file=sys.stderr)
        return 1
    if applied:
        print(
            f"applied PostgreSQL migrations {', '.join(map(str, applied))}; schema version {latest_version()}"
        )
    else:
        print(f"PostgreSQL schema up to date (version {latest_version()})")
    return 0
