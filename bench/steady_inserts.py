"""What a steady stream of inserts costs the embedded engine, merges included: `--inserts` inserts of
`--rows` distinct activities each (as the spool's drainer sends them under load), with background
merges running, into `activities` without its analytics views and then with them; after the last
insert it waits until no merge runs.

    .venv/bin/python -m bench.steady_inserts [--rows 12500] [--inserts 40]

Prints per table the process CPU per row of the inserts (with the merges that ran meanwhile), of the
merges after them, and the rows and parts each table holds at the end. Every insert's activities are
new (their own seed), so that nothing collapses on merge and the aggregates see what a shop's traffic
would give them.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from bench.insert_breakdown import enriched_payload, insert_payload
from workers.storage.clickhouse import ClickHouseStore

DATABASE = "bench"

# Table, label. `bare` is a copy of `activities` made before the run: the same table, no views.
TABLES = (
    ("bare", "activities without the analytics views"),
    ("activities", "activities with its views"),
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _settle(store: ClickHouseStore, poll_s: float = 0.5) -> None:
    """Return once no merge has run for two polls in a row."""
    quiet = 0
    while quiet < 2:
        time.sleep(poll_s)
        running = int(store.query("SELECT count() FROM system.merges", "TabSeparated"))
        quiet = quiet + 1 if running == 0 else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.steady_inserts", description=__doc__)
    parser.add_argument("--rows", type=int, default=12_500, help="activities per insert (default 12500)")
    parser.add_argument("--inserts", type=int, default=40, help="inserts per table (default 40)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.inserts < 1:
        parser.error("--rows and --inserts must be at least 1")

    payloads = [enriched_payload(args.rows, seed) for seed in range(args.inserts)]
    rows = args.rows * args.inserts
    print(f"{args.inserts} inserts of {args.rows} distinct activities; µs of CPU per row")
    print(f"  {'table':<42}{'inserts':>9}{'merges after':>14}{'total':>8}")
    with tempfile.TemporaryDirectory(prefix="steady-inserts-") as directory:
        store = ClickHouseStore(f"chdb://{directory}/clickhouse", DATABASE, connections=1)
        try:
            store.command("CREATE TABLE bare AS activities")
            for table, label in TABLES:
                start = _cpu()
                with store._client() as client:
                    for payload in payloads:
                        insert_payload(client, table, payload, store.insert_settings)
                inserted = _cpu()
                _settle(store)
                settled = _cpu()
                insert_us = (inserted - start) / rows * 1e6
                merge_us = (settled - inserted) / rows * 1e6
                print(f"  {label:<42}{insert_us:9.2f}{merge_us:14.2f}{insert_us + merge_us:8.2f}")
            held = store.query(
                f"SELECT table, sum(rows), count() FROM system.parts WHERE database = '{DATABASE}' "
                "AND active AND table != 'schema_migrations' GROUP BY table ORDER BY table",
                "TabSeparated",
            )
        finally:
            store.close()
    print("rows and parts held at the end:")
    for line in held.decode().splitlines():
        table, table_rows, parts = line.split("\t")
        print(
            f"  {table:<42}{int(table_rows):>10} rows {int(parts):>4} parts"
            f" ({int(table_rows) / rows:.2f} per activity)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
