"""The time of an erasure, step by step: one person out of `--rows` activities on the embedded engine.

    .venv/bin/python -m bench.erasure [--rows 1000000] [--persons 100000] [--postgres-dsn DSN]

Fills `activities` of one tenant with `--rows` activities of `--persons` persons (each with a user id,
an anonymous id and a session id, spread over 30 days), computes the aggregates' rollups as a
collector's refresh does, then erases one person through the same job a collector runs and prints
how long each step took (docs/privacy.md quotes these figures), and the rate of a stream of inserts
into the same table before and during the erasure. PostgreSQL: `--postgres-dsn`, or an
embedded one in the run's temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import tempfile
import threading
import time
from pathlib import Path

from bench.runner import collector_settings
from collector.config import Settings
from workers.privacy.erasure import ErasureRunner, ErasureStore, ErasureWorker
from workers.storage.analytics_schema import EPOCH, refresh_statements
from workers.storage.clickhouse import ClickHouseStore
from workers.storage.postgres import Postgres

DATABASE = "bench_erasure"
TENANT = "bench"
CHUNK = 1_000_000


class Ingest:
    """Inserts of `rows` new activities each, one after the other on a thread of their own, while the
    erasure runs: their rate before and during it. Not the collector's own path (no gRPC, no spool):
    the engine's share of it, where a mutation could get in the way."""

    def __init__(self, store: ClickHouseStore, persons: int, rows: int = 50_000) -> None:
        self.store = store
        self.persons = persons
        self.rows = rows
        self.done: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._next = 10**9

    def _run(self) -> None:
        # At the niceness a collector gives its engine's inserts (`background_niceness`), so that the
        # erasure (`erasure_niceness`) meets them as it would there.
        niceness = Settings().background_niceness
        while not self._stop.is_set():
            # Other persons than the one erased: the collector would drop theirs at intake.
            sql = insert_sql(TENANT, self._next, self.rows, self.persons, "new-")
            self.store.command(f"{sql} SETTINGS os_thread_priority = {niceness}")
            self._next += self.rows
            self.done.append(time.monotonic())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def rate(self, since: float, until: float) -> float:
        """Activities per second inserted in [since, until)."""
        count = sum(1 for at in self.done if since <= at < until)
        return count * self.rows / max(until - since, 1e-9)


def insert_sql(tenant: str, first: int, count: int, persons: int, prefix: str = "") -> str:
    """An INSERT of `count` activities of `tenant`, numbered from `first`, of `persons` persons (user
    `u-N`, anonymous id `a-N`, session `s-N`), spread over the last 30 days."""
    return (
        "INSERT INTO activities (tenant_id, id, action, target_type, target_id, user_id, anonymous_id,"
        " session_id, device_type, occurred_at, received_at)"
        f" SELECT '{tenant}', generateUUIDv4(number), ['view', 'click', 'purchase'][n % 3 + 1],"
        " 'product', concat('sku-', toString(n % 5000)), concat('{x}u-', toString(n % {p})),"
        " concat('{x}a-', toString(n % {p})), concat('{x}s-', toString(n % {p})), 'mobile',"
        " now64(3, 'UTC') - toIntervalSecond(n % 2592000), now64(3, 'UTC')"
        f" FROM (SELECT number, number + {first} AS n FROM numbers({count}))".replace(
            "{p}", str(persons)
        ).replace("{x}", prefix)
    )


def insert(store: ClickHouseStore, first: int, count: int, persons: int, prefix: str = "") -> None:
    store.command(insert_sql(TENANT, first, count, persons, prefix))


def fill(store: ClickHouseStore, rows: int, persons: int) -> float:
    started = time.monotonic()
    for first in range(0, rows, CHUNK):
        insert(store, first, min(CHUNK, rows - first), persons)
    return time.monotonic() - started


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.erasure", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="activities in the table (default 1000000)"
    )
    parser.add_argument(
        "--persons", type=int, default=100_000, help="persons they belong to (default 100000)"
    )
    parser.add_argument(
        "--baseline",
        type=float,
        default=10.0,
        help="seconds of inserts measured before the erasure (default 10)",
    )
    parser.add_argument("--postgres-dsn", default="", help="PostgreSQL; default: an embedded one")
    parser.add_argument(
        "--through-collector",
        action="store_true",
        help="measure ingest through a running collector with and without an erasure (bench.erasure_ingest)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="--through-collector: A/B rounds (default 3)")
    parser.add_argument(
        "--window", type=float, default=10.0, help="--through-collector: seconds measured per window"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="--through-collector: activities/s offered (default 0: a closed loop, as fast as acknowledged)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="--through-collector: a setting of the collector (docs/configuration.md), repeatable; "
        "for example background_niceness=19",
    )
    args = parser.parse_args()
    try:
        collector_settings(args.setting)
    except ValueError as error:
        parser.error(str(error))
    if args.through_collector:
        from bench.erasure_ingest import run

        await run(args)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-erasure-"))
    store = ClickHouseStore(f"chdb://{work / 'clickhouse'}", DATABASE, connections=2)
    postgres = Postgres(args.postgres_dsn, work)
    await postgres.start()
    try:
        if args.postgres_dsn:
            # A database others use: this run's jobs only.
            await postgres.pool.execute("DELETE FROM suppressions; DELETE FROM erasure_jobs")
        print(f"filling {args.rows} activities of {args.persons} persons ...")
        print(f"  filled in {fill(store, args.rows, args.persons):.1f} s")
        now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
        started = time.monotonic()
        for statement in refresh_statements(DATABASE, EPOCH, now.strftime("%Y-%m-%d %H:%M:%S.000")):
            store.command(statement)
        print(f"  rollups computed in {time.monotonic() - started:.1f} s")

        marks: list[tuple[str, float]] = []

        async def step_done(_job: int, step: str) -> None:
            marks.append((step, time.monotonic()))

        runner = ErasureRunner(postgres.pool, store, DATABASE, step_done=step_done)
        job = await ErasureStore(postgres.pool).request(TENANT, "user", "u-42")
        ingest = Ingest(store, args.persons)
        ingest.start()
        await asyncio.sleep(args.baseline)
        started = time.monotonic()
        await ErasureWorker(runner).run_pending()
        total = time.monotonic() - started
        ingest.stop()
        before = ingest.rate(started - args.baseline, started)
        during = ingest.rate(started, started + total)
        receipt = await ErasureStore(postgres.pool).receipt(job)
        assert receipt is not None and receipt.state == "done", receipt
        print(f"erasure of one person (user u-42) out of {args.rows} activities: {total:.2f} s")
        last = started
        for step, at in marks:
            print(f"  {step:<12} {at - last:7.3f} s")
            last = at
        print(f"  ids covered: {receipt.ids}")
        print(f"  removed: {receipt.removed}")
        print(
            f"engine inserts of {ingest.rows} activities, one after the other: {before:,.0f} activities/s"
            f" in the {args.baseline:g} s before the erasure, {during:,.0f} activities/s during it"
        )
    finally:
        await postgres.shutdown()
        store.close()


if __name__ == "__main__":
    asyncio.run(main())
