"""Where an insert's CPU goes on the embedded engine: the same ProtobufList payload into tables that do
more and more of the `activities` table's work.

    .venv/bin/python -m bench.insert_breakdown [--rows 50000] [--repeat 3] [--settings A=1,B=2 ...]

Tables, all with the `activities` columns: `Null` (parsing and DEFAULT expressions only), a plain
`MergeTree` with no sort key (plus writing compressed parts), a copy of `activities` without the
analytics materialized views (plus the sort key, partitions, ReplacingMergeTree), that copy with each
analytics view alone, and `activities` itself (with every aggregate kept on insert). Rows carry the
user-agent enrichment fields, and every insert its own deduplication token, as the collector's do.

Each `--settings` adds a column: the same inserts with those query settings on top of the ones the
collector sends (`ClickHouseStore.insert_settings`). Each `--table-settings NAME:A=1,B=2` adds a copy
of the bare table with those table settings. Prints process CPU per row, median of the repeats;
repeats are interleaved over tables and settings so that a slow phase of the machine spreads over all.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
import uuid
from typing import Any

from bench.workload import make_activities
from workers.enrichment.enricher import Enricher, activity_keys
from workers.rows import encode_rows, envelope
from workers.storage.analytics_schema import AGGREGATES, aggregate_table_ddl, aggregate_view_ddl
from workers.storage.clickhouse import ClickHouseStore
from workers.storage.schema import INSERT_COLUMNS

DATABASE = "bench"

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
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _settings(text: str) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in text.split(",") if p]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE...], got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def _table_settings(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    if not name.isidentifier() or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME:A=1[,B=2...], got {text!r}")
    return name, _settings(rest)


def _view_tables(store: ClickHouseStore) -> list[tuple[str, str]]:
    """A copy of the bare table per aggregate, with that aggregate's view (into a copy of its table)."""
    tables: list[tuple[str, str]] = []
    for aggregate in AGGREGATES:
        source = f"with_{aggregate.name}"
        store.command(f"CREATE TABLE {source} AS activities")
        table_ddl = aggregate_table_ddl(DATABASE, aggregate)
        view_ddl = aggregate_view_ddl(DATABASE, aggregate)
        copy = f"{aggregate.name}_copy"
        store.command(table_ddl.replace(f"`{aggregate.name}`", f"`{copy}`"))
        store.command(
            view_ddl.replace(f"`{aggregate.view}`", f"`{aggregate.view}_copy`")
            .replace(f"`{aggregate.name}`", f"`{copy}`")
            .replace("`activities`", f"`{source}`")
        )
        tables.append((source, f"+ {aggregate.name} alone"))
    return tables


def enriched_payload(rows: int, seed: int = 1) -> bytes:
    """`rows` benchmark activities, encoded as the collector does, with their user-agent fields; another
    seed, other activities (other ids)."""
    activities = make_activities(rows, seed=seed)
    extras = asyncio.run(Enricher(None, None).enrich("bench", [activity_keys(a) for a in activities]))
    items = list(enumerate(activities))
    encoded = encode_rows(items, "bench", time.time_ns(), None, 0, None, dict(enumerate(extras)), None)
    return envelope([encoded])


def insert_payload(client: Any, table: str, payload: bytes, settings: dict[str, Any]) -> None:
    """One insert as the collector sends it: `settings` (its insert settings, and any more) with a
    deduplication token of its own."""
    settings = {**settings, "insert_deduplication_token": uuid.uuid4().hex}
    client.raw_insert(table, INSERT_COLUMNS, payload, settings=settings, fmt="ProtobufList")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.insert_breakdown", description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000, help="rows per insert (default 50000)")
    parser.add_argument("--repeat", type=int, default=3, help="inserts per table and settings (default 3)")
    parser.add_argument(
        "--settings",
        type=_settings,
        action="append",
        default=[],
        metavar="A=1,B=2",
        help="query settings of an extra column of figures; repeatable",
    )
    parser.add_argument(
        "--table-settings",
        type=_table_settings,
        action="append",
        default=[],
        metavar="NAME:A=1,B=2",
        help="an extra copy of the bare table with these table settings; repeatable",
    )
    parser.add_argument("--no-views", action="store_true", help="skip the per-view tables")
    args = parser.parse_args(argv)

    payload = enriched_payload(args.rows)
    with tempfile.TemporaryDirectory(prefix="insert-breakdown-") as directory:
        store = ClickHouseStore(f"chdb://{directory}/clickhouse", DATABASE, connections=1)
        try:
            tables: list[tuple[str, str]] = []
            for name, ddl, label in TABLES:
                store.command(ddl)
                tables.append((name, label))
            for name, settings in args.table_settings:
                listed = ", ".join(f"{k} = {v}" for k, v in settings.items())
                store.command(f"CREATE TABLE bare_{name} AS activities")
                store.command(f"ALTER TABLE bare_{name} MODIFY SETTING {listed}")
                tables.append((f"bare_{name}", f"  bare, {listed}"))
            if not args.no_views:
                tables += _view_tables(store)
            tables.append(("activities", "+ analytics aggregates (activities)"))
            columns: list[tuple[str, dict[str, Any]]] = [("as shipped", {})]
            columns += [(",".join(f"{k}={v}" for k, v in s.items()), s) for s in args.settings]
            base = store.insert_settings
            per_row: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.repeat):
                for table, _ in tables:
                    for column, extra in columns:
                        with store._client() as client:
                            started = _cpu()
                            insert_payload(client, table, payload, {**base, **extra})
                            spent = _cpu() - started
                        per_row.setdefault((table, column), []).append(spent / args.rows * 1e6)
            size = len(payload) / args.rows
            print(f"{args.rows} rows per insert, {size:.0f} bytes/row, us/row CPU, median of {args.repeat}")
            print(" " * 50 + "".join(f"{c[:24]:>26}" for c, _ in columns))
            for table, label in tables:
                figures = "".join(f"{statistics.median(per_row[(table, c)]):26.2f}" for c, _ in columns)
                print(f"  {label:<48}{figures}")
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
