"""What the format of an insert's part costs on the embedded engine: the same inserts, then a merge of
all they wrote, into copies of `activities` that differ only in when a part is written wide (a file
per column and substream) rather than compact (all columns in one file).

    .venv/bin/python -m bench.part_formats [--rows 20000] [--inserts 10] [--repeat 3]

Copies: `as shipped` (the table's own settings, migration 5: compact below
`workers.storage.migrations.COMPACT_PART_MAX_ROWS` rows), `ClickHouse default` (compact below 10 MiB of rows),
`always wide`. Each copy gets `--inserts` inserts of `--rows` of the benchmark's activities with its
merges stopped, then `OPTIMIZE TABLE ... FINAL`. Prints the process CPU per row of the inserts and of
the merge, and the part of it spent in the kernel (`sys`), median of the repeats; repeats are
interleaved over the copies so that a slow phase of the machine spreads over all.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile

from bench.insert_breakdown import enriched_payload, insert_payload
from workers.storage.clickhouse import ClickHouseStore
from workers.storage.migrations import COMPACT_PART_MAX_ROWS

DATABASE = "bench"

# Label, and the table settings that make the copy (None: as the migrations left `activities`).
COPIES: tuple[tuple[str, str | None], ...] = (
    (f"as shipped (compact under {COMPACT_PART_MAX_ROWS} rows)", None),
    (
        "ClickHouse default (compact under 10 MiB)",
        "min_rows_for_wide_part = 0, min_bytes_for_wide_part = 10485760",
    ),
    ("always wide", "min_rows_for_wide_part = 0, min_bytes_for_wide_part = 0"),
)


def _cpu() -> tuple[float, float]:
    """Process CPU so far, and its system part, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.part_formats", description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000, help="rows per insert (default 20000)")
    parser.add_argument("--inserts", type=int, default=10, help="inserts before the merge (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over the copies (default 3)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.inserts < 1 or args.repeat < 1:
        parser.error("--rows, --inserts and --repeat must be at least 1")

    payload = enriched_payload(args.rows)
    rows = args.rows * args.inserts
    # Per copy: [insert CPU, insert sys, merge CPU, merge sys] per row, one entry per repeat.
    figures: dict[str, list[list[float]]] = {label: [[], [], [], []] for label, _ in COPIES}
    formats: dict[str, set[str]] = {label: set() for label, _ in COPIES}
    with tempfile.TemporaryDirectory(prefix="part-formats-") as directory:
        store = ClickHouseStore(f"chdb://{directory}/clickhouse", DATABASE, connections=1)
        try:
            for round_ in range(args.repeat):
                for number, (label, settings) in enumerate(COPIES):
                    table = f"copy_{round_}_{number}"
                    store.command(f"CREATE TABLE {table} AS activities")
                    if settings is not None:
                        store.command(f"ALTER TABLE {table} MODIFY SETTING {settings}")
                    store.command(f"SYSTEM STOP MERGES {table}")
                    with store._client() as client:
                        start, start_sys = _cpu()
                        for _ in range(args.inserts):
                            insert_payload(client, table, payload, store.insert_settings)
                        inserted, inserted_sys = _cpu()
                        written = store.query(
                            f"SELECT DISTINCT part_type FROM system.parts WHERE database = '{DATABASE}' "
                            f"AND table = '{table}' AND active",
                            "TabSeparated",
                        )
                        store.command(f"SYSTEM START MERGES {table}")
                        store.command(f"OPTIMIZE TABLE {table} FINAL")
                        merged, merged_sys = _cpu()
                    formats[label].update(written.decode().split())
                    for series, value in zip(
                        figures[label],
                        (
                            inserted - start,
                            inserted_sys - start_sys,
                            merged - inserted,
                            merged_sys - inserted_sys,
                        ),
                        strict=True,
                    ):
                        series.append(value / rows * 1e6)
                    store.command(f"DROP TABLE {table} SYNC")
        finally:
            store.close()

    print(
        f"{args.inserts} inserts of {args.rows} rows ({len(payload) / args.rows:.0f} bytes/row), then a "
        f"merge of them all; µs of CPU per row (of which system), median of {args.repeat}"
    )
    print(f"  {'copy':<48}{'inserts':>16}{'merge':>16}{'total':>9}  inserts wrote")
    for label, _ in COPIES:
        insert, insert_sys, merge, merge_sys = (statistics.median(s) for s in figures[label])
        print(
            f"  {label:<48}{insert:9.2f} ({insert_sys:4.2f}){merge:9.2f} ({merge_sys:4.2f})"
            f"{insert + merge:9.2f}  {', '.join(sorted(formats[label]))}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
