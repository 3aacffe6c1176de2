"""Where an insert's CPU goes on the embedded engine: the same ProtobufList payload into tables that do
more and more of the `activities` table's work.

    .venv/bin/python -m bench.insert_breakdown [--rows 50000] [--repeat 3]

Tables, all with the `activities` columns: `Null` (parsing and DEFAULT expressions only), a plain
`MergeTree` with no sort key (plus writing compressed parts), a copy of `activities` without the
analytics materialized views (plus the sort key, partitions, ReplacingMergeTree), and `activities`
itself (plus the three aggregates kept on insert). Prints process CPU per row, median of the repeats.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time

from bench.workload import make_activities
from workers.enrich import encode_rows, envelope
from workers.schema import INSERT_COLUMNS
from workers.storage import ClickHouseStore

TABLES = (
    ("null_engine", "CREATE TABLE null_engine AS activities ENGINE = Null", "parse + defaults (Null engine)"),
    (
        "plain_merge_tree",
        "CREATE TABLE plain_merge_tree AS activities ENGINE = MergeTree ORDER BY tuple()",
        "+ write parts (MergeTree, no sort key)",
    ),
    (
        "bare_activities",
        "CREATE TABLE bare_activities AS activities",
        "+ sort key, partitions (activities, no views)",
    ),
    ("activities", "", "+ analytics aggregates (activities)"),
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.insert_breakdown", description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000, help="rows per insert (default 50000)")
    parser.add_argument("--repeat", type=int, default=3, help="inserts per table (default 3)")
    args = parser.parse_args(argv)

    activities = make_activities(args.rows, seed=1)
    payload = envelope([encode_rows(list(enumerate(activities)), "bench", time.time_ns(), None)])
    with tempfile.TemporaryDirectory(prefix="insert-breakdown-") as directory:
        store = ClickHouseStore(f"chdb://{directory}/clickhouse", "bench", connections=1)
        try:
            for _, ddl, _ in TABLES:
                if ddl:
                    store.command(ddl)
            size = len(payload) / args.rows
            print(f"{args.rows} rows per insert, {size:.0f} bytes per row, median of {args.repeat}")
            for table, _, label in TABLES:
                per_row: list[float] = []
                for _ in range(args.repeat):
                    with store._client() as client:
                        started = _cpu()
                        client.raw_insert(
                            table,
                            INSERT_COLUMNS,
                            payload,
                            settings=store._insert_settings,
                            fmt="ProtobufList",
                        )
                        per_row.append((_cpu() - started) / args.rows * 1e6)
                print(f"  {label:<48} {statistics.median(per_row):6.2f} us/row CPU")
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
