"""`python -m bench.reports`: how long each report takes over a month of a shop, at 1M and 10M activities.

For each size the benchmark creates a fresh database on the embedded engine through the product's
migrations (`apply_migrations`), generates the shop inside ClickHouse (`bench/shop_sql.py`: 200,000
people over 30 days, sources, variants, searches, bots, 1 % of the activities resent), refreshes the
rollups, waits for the background merges to settle, times two reports over the rollups as the refresh
wrote them, merges the rollups' parts (what the engine does minutes later), then runs every report of
`activity-collector report` over the 30 days, as the command builds it (its own argument parser and
SQL builders), `--runs` times, and prints the median, the spread and what the engine read (its
`SelectedRows` and `SelectedBytes` counters, taken around each query: the embedded engine keeps no
query log). A report the command does not offer yet, or whose flags it does not take, is skipped with
a note. See bench/README.md, "Reports".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import clickhouse_connect

from bench.shop_sql import DAYS, FIRST_DAY, PEOPLE, TENANT, generate_sql, resend_sql
from collector.cli import report
from collector.cli.report_sources import reads_rollups, rollups_current_sql
from workers.storage.analytics_schema import AGGREGATES, MEASURE, ROLLUP_MERGE_AGE_S
from workers.storage.migrations import apply_migrations, database_ddl
from workers.storage.refresher import refresh_aggregates
from workers.storage.session_rollups import EVERY_ROLLUP

SIZES = {"100k": 100_000, "1M": 1_000_000, "10M": 10_000_000}
"""Sizes offered (100k: a quick check of the benchmark itself)."""
INSERT_ROWS = 2_000_000
"""Rows per generating INSERT: bounds the engine's memory."""
RESEND_PER_MILLE = 10
MERGE_WAIT_S = 300
QUERY_TIMEOUT_S = 300
SLOW_S = 20.0
"""A query whose run takes longer is not repeated (the figure is that run's): keeps the default run short."""

LAST_DAY = FIRST_DAY.toordinal() + DAYS - 1
RANGE = [
    "--from",
    FIRST_DAY.isoformat(),
    "--to",
    FIRST_DAY.fromordinal(LAST_DAY).isoformat(),
    "--tenant",
    TENANT,
]

# (label, report arguments, target in ms). Targets: reports that read aggregates 100 ms at 10M
# activities, those that read the activities (funnels, attribution) 2 s.
REPORTS: tuple[tuple[str, list[str], int | None], ...] = (
    ("overview", ["overview"], 100),
    ("top-targets", ["top-targets", "--action", "purchase"], 100),
    ("top-targets click", ["top-targets", "--action", "click"], 100),
    ("sources --by type", ["sources", "--by", "type"], 100),
    ("sources --by name", ["sources", "--by", "name"], 100),
    ("sources --by variant", ["sources", "--by", "variant"], 100),
    ("sources --by name --by variant", ["sources", "--by", "name", "--by", "variant"], 100),
    ("sources --by position", ["sources", "--by", "position"], 2000),
    ("sources", ["sources"], 2000),
    ("funnel", ["funnel", "--steps", "view,add_to_cart,purchase"], 2000),
    ("experiment", ["experiment", "--name", "pdp-similar"], 2000),
    ("queries", ["queries"], 2000),
    ("sessions", ["sessions"], None),
)

# Before the rollups' parts are merged (the minutes after a refresh wrote a day).
UNMERGED: tuple[tuple[str, list[str], int | None], ...] = (
    ("top-targets click, rollups just refreshed", ["top-targets", "--action", "click"], None),
    ("sources --by name, rollups just refreshed", ["sources", "--by", "name"], None),
)

# What the aggregates cost to read, next to the raw table.
PROBES: tuple[tuple[str, str], ...] = (
    ("raw: count()", "SELECT count() FROM activities WHERE tenant_id = 'shop'"),
    ("raw: count() FINAL", "SELECT count() FROM activities FINAL WHERE tenant_id = 'shop'"),
    (
        "raw: per action, FINAL",
        "SELECT action, count(), sum(ifNull(price, 0)) FROM activities FINAL WHERE tenant_id = 'shop' "
        "GROUP BY action",
    ),
    (
        "activity_stats_hourly: per action",
        f"SELECT action, {MEASURE['activities'].merged()} AS n FROM activity_stats_hourly "
        "WHERE tenant_id = 'shop' GROUP BY action",
    ),
    (
        "activity_stats_hourly: revenue",
        f"SELECT currency, {MEASURE['revenue'].merged()} AS amount FROM activity_stats_hourly "
        "WHERE tenant_id = 'shop' AND action = 'purchase' GROUP BY currency",
    ),
)


@dataclass
class Timing:
    name: str
    size: str
    runs_ms: list[float] = field(default_factory=list)
    read_rows: int = 0
    read_bytes: int = 0
    target_ms: int | None = None
    skipped: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_ms) if self.runs_ms else float("nan")


class Engine:
    """The embedded engine of this process, on one database."""

    def __init__(self, path: Path) -> None:
        self.dsn = f"chdb://{path}"
        self.client = clickhouse_connect.get_client(dsn=self.dsn)
        self.database = ""

    def use(self, database: str) -> None:
        self.client.command(database_ddl(database))
        applied = apply_migrations(self.client, database)
        print(f"  schema: migrations {applied[0]}..{applied[-1]} applied", flush=True)
        self.client.close()
        self.client = clickhouse_connect.get_client(dsn=self.dsn, database=database)
        self.database = database

    def counters(self) -> dict[str, int]:
        rows = self.client.query(
            "SELECT event, value FROM system.events WHERE event IN ('SelectedRows', 'SelectedBytes')"
        ).result_rows
        return {str(k): int(v) for k, v in rows}

    def timed(self, sql: str) -> tuple[float, int, int]:
        """Wall time in ms, and the rows and bytes the engine read from its tables."""
        before = self.counters()
        start = time.perf_counter()
        self.client.raw_query(sql, fmt="Null", settings={"max_execution_time": QUERY_TIMEOUT_S})
        elapsed = (time.perf_counter() - start) * 1000
        after = self.counters()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("SelectedRows", "SelectedBytes")}
        return elapsed, delta["SelectedRows"], delta["SelectedBytes"]


def generate(engine: Engine, rows: int) -> float:
    """The shop, then the resent copies; seconds taken."""
    start = time.perf_counter()
    for first in range(0, rows, INSERT_ROWS):
        engine.client.command(generate_sql(engine.database, first, min(INSERT_ROWS, rows - first)))
        print(f"  generated {min(first + INSERT_ROWS, rows):,} rows", flush=True)
    engine.client.command(resend_sql(engine.database, rows, RESEND_PER_MILLE))
    return time.perf_counter() - start


def settle(engine: Engine) -> float:
    """Wait (up to MERGE_WAIT_S) until no merge runs in the database: a month-old shop is merged."""
    start = time.perf_counter()
    quiet = 0
    while time.perf_counter() - start < MERGE_WAIT_S:
        running = int(
            str(
                engine.client.command(
                    f"SELECT count() FROM system.merges WHERE database = '{engine.database}'"
                )
            )
        )
        quiet = quiet + 1 if running == 0 else 0
        if quiet >= 3:
            break
        time.sleep(1)
    return time.perf_counter() - start


def storage(engine: Engine) -> list[tuple[str, int, int, int]]:
    """(table, rows, bytes on disk, uncompressed bytes) of the raw table, the aggregates and the rollups."""
    tables = ["activities"] + [a.name for a in AGGREGATES] + [a.rollup for a in EVERY_ROLLUP]
    names = ", ".join(f"'{t}'" for t in tables)
    rows = engine.client.query(
        "SELECT table, sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes) FROM system.parts "
        f"WHERE database = '{engine.database}' AND active AND table IN ({names}) "
        "GROUP BY table ORDER BY table"
    ).result_rows
    return [(str(t), int(r), int(b), int(u)) for t, r, b, u in rows]


def report_request(arguments: list[str]) -> tuple[report.Request | None, str]:
    """The request `activity-collector report ARGUMENTS` makes, read by the command's own parser, or None
    and why not."""
    parser = argparse.ArgumentParser(prog="activity-collector")
    report.add_parser(parser.add_subparsers())
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(["report", *arguments, *RANGE])
    except SystemExit:
        lines = stderr.getvalue().strip().splitlines()
        return None, lines[-1] if lines else "not accepted"
    try:
        return report.build_request(args), ""
    except report.ReportError as error:
        return None, str(error)


def current(engine: Engine, request: report.Request) -> report.Request:
    """The request as the command runs it: a report over responses first asks whether the rollups hold
    every day of the range (`rollups_current_sql`, timed apart as `(rollups check)`)."""
    if not reads_rollups(request):
        return request
    answer = str(engine.client.command(rollups_current_sql(request))).strip()
    return dataclasses.replace(request, rollups_current=answer == "1")


def measure(engine: Engine, size: str, name: str, sql: str, runs: int, target: int | None) -> Timing:
    timing = Timing(name, size, target_ms=target)
    for _ in range(runs):
        elapsed, rows, read = engine.timed(sql)
        timing.runs_ms.append(elapsed)
        timing.read_rows, timing.read_bytes = rows, read
        if elapsed > SLOW_S * 1000:
            break
    return timing


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def print_timings(timings: list[Timing]) -> None:
    print(
        f"\n{'query':<42} {'size':>4} {'median ms':>10} {'min-max ms':>17} {'read rows':>12} {'read MiB':>9}"
    )
    for t in timings:
        if t.skipped:
            print(f"{t.name:<42} {t.size:>4} skipped: {t.skipped}")
            continue
        spread = f"{min(t.runs_ms):,.0f}-{max(t.runs_ms):,.0f}"
        print(
            f"{t.name:<42} {t.size:>4} {t.median_ms:>10,.1f} {spread:>17} {t.read_rows:>12,} "
            f"{_mib(t.read_bytes):>9}"
        )


def print_growth(timings: list[Timing], sizes: list[str]) -> None:
    if len(sizes) < 2:
        return
    first, last = sizes[0], sizes[-1]
    by = {(t.name, t.size): t for t in timings if not t.skipped}
    names = list(dict.fromkeys(t.name for t in timings))
    print(
        f"\n{'query':<42} {first + ' ms':>10} {last + ' ms':>10} {'growth':>7} {'target ms':>10} {'met':>4}"
    )
    for name in names:
        a, b = by.get((name, first)), by.get((name, last))
        if a is None or b is None:
            continue
        growth = b.median_ms / a.median_ms if a.median_ms else float("nan")
        target = f"{b.target_ms:,}" if b.target_ms else "-"
        met = "-" if not b.target_ms else ("yes" if b.median_ms <= b.target_ms else "no")
        print(f"{name:<42} {a.median_ms:>10,.1f} {b.median_ms:>10,.1f} {growth:>6.1f}x {target:>10} {met:>4}")


def time_report(
    engine: Engine, size: str, name: str, arguments: list[str], runs: int, target: int | None
) -> Timing:
    """One report as `activity-collector report <arguments>` runs it, timed (skipped with a note when
    the command does not offer it)."""
    request, why = report_request(arguments)
    if request is None:
        print(f"  {name}: skipped ({why})", flush=True)
        return Timing(name, size, target_ms=target, skipped=why)
    try:
        request = current(engine, request)
        sql = report.REPORTS[request.name].sql(request)
        timing = measure(engine, size, name, sql, runs, target)
    except Exception as error:  # a report being built in this tree: noted, not fatal
        why = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
        print(f"  {name}: skipped ({why})", flush=True)
        return Timing(name, size, target_ms=target, skipped=why)
    print(f"  {name}: {timing.median_ms:,.1f} ms", flush=True)
    return timing


def merge_rollups(engine: Engine) -> float:
    """Each rollup's partitions merged into one part, as the engine does by itself once their parts
    are `ROLLUP_MERGE_AGE_S` old (schema version 17). Seconds taken."""
    start = time.perf_counter()
    for rollup in EVERY_ROLLUP:
        engine.client.command(f"OPTIMIZE TABLE `{rollup.rollup}` FINAL")
    return time.perf_counter() - start


def run_size(engine: Engine, size: str, rows: int, runs: int) -> tuple[list[Timing], dict[str, Any]]:
    database = f"bench_reports_{size.lower()}"
    engine.client.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    print(f"\n== {size}: {rows:,} activities, {PEOPLE:,} people, {DAYS} days ==", flush=True)
    engine.use(database)
    generated_s = generate(engine, rows)
    # What the collector's refresher does every `aggregates_refresh_s`, here for the whole month at
    # once. The generating inserts have returned, so no margin is needed for their rows to be visible.
    refresh = refresh_aggregates(engine.client.command, engine.database, margin_s=0)
    settled_s = settle(engine)
    stored = storage(engine)
    print(f"  generated in {generated_s:.0f} s, merges settled after {settled_s:.0f} s")
    print(f"  aggregates refreshed: {refresh.days} tenant-days in {refresh.seconds:.1f} s")
    for table, n, disk, raw in stored:
        print(f"  {table:<24} {n:>12,} rows {_mib(disk):>9} MiB on disk {_mib(raw):>9} MiB uncompressed")
    timings: list[Timing] = []
    # Just refreshed: the rollups in the parts the refresh wrote, read with FINAL merging them.
    for name, arguments, target in UNMERGED:
        timings.append(time_report(engine, size, name, arguments, runs, target))
    merged_s = merge_rollups(engine)
    print(
        f"  rollups merged into one part per partition in {merged_s:.1f} s (the engine does it "
        f"{ROLLUP_MERGE_AGE_S} s after a refresh)",
        flush=True,
    )
    for name, sql in PROBES:
        timings.append(measure(engine, size, name, sql, runs, None))
    overview, _ = report_request(["overview"])
    if overview is not None:
        # Every report first asks whether the range holds activities.
        timings.append(measure(engine, size, "(range check)", report.coverage_sql(overview), runs, 100))
        timings.append(
            measure(
                engine, size, "overview: aggregate part", report.overview_aggregates_sql(overview), runs, 100
            )
        )
        by_name, _ = report_request(["sources", "--by", "name"])
        if by_name is not None and reads_rollups(by_name):
            check = rollups_current_sql(by_name)
            timings.append(measure(engine, size, "(rollups check of sources, queries)", check, runs, 100))
    for name, arguments, target in REPORTS:
        timings.append(time_report(engine, size, name, arguments, runs, target))
    # With live traffic the last day is touched after every refresh: the aggregates read it from
    # `activities` (a day of raw rows) until the next one.
    last = FIRST_DAY.fromordinal(LAST_DAY).isoformat()
    engine.client.command(
        "INSERT INTO aggregate_touches (tenant_id, day, inserted_at) "
        f"VALUES ('{TENANT}', '{last}', now64(3, 'UTC'))"
    )
    top, _ = report_request(["top-targets", "--action", "purchase"])
    if overview is not None and top is not None:
        for name, sql in (
            ("overview: aggregate part, last day unrefreshed", report.overview_aggregates_sql(overview)),
            ("top-targets, last day unrefreshed", report.top_targets_sql(top)),
        ):
            timings.append(measure(engine, size, name, sql, runs, 100))
    # The reports that read rollups then read their views: the rollups for the other days, and the
    # last day and those its activities can change computed from `activities`.
    for name, arguments, target in (
        ("overview, last day unrefreshed", ["overview"], 100),
        ("sessions, last day unrefreshed", ["sessions"], None),
        ("sources --by name, last day unrefreshed", ["sources", "--by", "name"], 100),
        ("experiment, last day unrefreshed", ["experiment", "--name", "pdp-similar"], 2000),
        ("queries, last day unrefreshed", ["queries"], 2000),
    ):
        request, _ = report_request(arguments)
        if request is not None and reads_rollups(request):
            request = current(engine, request)
            sql = report.REPORTS[request.name].sql(request)
            timings.append(measure(engine, size, name, sql, runs, target))
    meta = {
        "rows": rows,
        "generated_s": generated_s,
        "refresh_s": refresh.seconds,
        "refreshed_days": refresh.days,
        "merges_settled_s": settled_s,
        "rollups_merged_s": merged_s,
        "storage": stored,
    }
    engine.client.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    return timings, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="1M,10M", help=f"comma-separated, out of {', '.join(SIZES)} (default 1M,10M)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per report; the median is shown (default 3)"
    )
    parser.add_argument("--data-dir", type=Path, help="engine directory (default: a temporary one, removed)")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("bench-results/reports.json"),
        help="results file (default %(default)s)",
    )
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes or args.runs < 1:
        print(f"bench.reports: --sizes: expected some of {', '.join(SIZES)}, got {args.sizes!r}; --runs >= 1")
        return 2
    path = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-reports-"))
    engine = Engine(path)
    timings: list[Timing] = []
    meta: dict[str, Any] = {}
    try:
        for size in sizes:
            got, meta[size] = run_size(engine, size, SIZES[size], args.runs)
            timings += got
    finally:
        engine.client.close()
        if args.data_dir is None:
            shutil.rmtree(path, ignore_errors=True)
    print_timings(timings)
    print_growth(timings, sizes)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "timings": [asdict(t) for t in timings]}, indent=2))
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
