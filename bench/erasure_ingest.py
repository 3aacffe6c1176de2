"""Ingest through a running collector with and without an erasure running, in the same run.

    .venv/bin/python -m bench.erasure --through-collector [--rows 1000000] [--rounds 3] [--window 10]

Starts `activity-collector serve` (spool on, the embedded engines) as a subprocess, fills its
`activities` with `--rows` activities of the default tenant through its control socket, computes the
rollups, then runs interleaved rounds of the load generator (`bench.loadgen`: `TrackActivities`
batches of 100, 8 callers, closed loop or at `--rate` activities/s), each round once without and once
with an erasure of one more person of that tenant requested at the start of the measured window (in
A/B, then B/A order). It prints, per round, the acknowledged activities per second, the collector's
CPU per 1,000 activities and the acknowledgements' p99 latency in both windows, their ratio, how much
of the window the erasure covered, and the time of each of its steps (from the job's receipt). Where
the latency goes, from the collector's `/metrics` at the window's start and end: the bucket that holds
the 99th percentile of its own answers' durations (`activity_collector_request_duration_seconds`, from
the handler's start), of its event loop's lag (`activity_collector_event_loop_lag_seconds`) and of the
spool's fsyncs (`activity_collector_spool_sync_seconds`).
The tenant has a suppression (an opt-out) from the start: every window then
takes the same intake path (a tenant with a suppression leaves the compiled path, as it does after its
first erasure).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.erasure import insert_sql
from bench.loadgen import Spec
from bench.runner import (
    METRICS_AT,
    RunOptions,
    ServerProcess,
    child_env,
    collector_argv,
    collector_settings,
    run_loadgen,
)
from bench.scrape import p99_bound_ms, scrape
from collector.process.control import query_via_control
from workers.privacy.erasure import ErasureStore, Receipt
from workers.processors.suppression import USER, SuppressionStore, id_digest
from workers.storage.analytics_schema import EPOCH, refresh_statements
from workers.storage.postgres import Postgres

TENANT = "default"
DATABASE = "activity"
"""The collector's own database (`clickhouse_database`'s default)."""
CHUNK = 1_000_000


def _sql(data: Path, sql: str) -> bytes:
    return query_via_control(data / "control.sock", sql, "TabSeparated", timeout=1800)


def _fill(data: Path, rows: int, persons: int) -> float:
    started = time.monotonic()
    for first in range(0, rows, CHUNK):
        _sql(data, insert_sql(TENANT, first, min(CHUNK, rows - first), persons))
    now = time.strftime("%Y-%m-%d %H:%M:%S.000", time.gmtime(time.time() + 86400))
    for statement in refresh_statements(DATABASE, EPOCH, now):
        _sql(data, statement)
    return time.monotonic() - started


async def _erasure_done(jobs: ErasureStore, job: int, timeout: float) -> Receipt:
    deadline = time.monotonic() + timeout
    while True:
        receipt = await jobs.receipt(job)
        assert receipt is not None
        if receipt.state in ("done", "failed") or time.monotonic() > deadline:
            return receipt
        await asyncio.sleep(0.1)


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-erasure-ingest-"))
    data = work / "data"
    env = child_env(collector_settings(args.setting))
    argv = [*collector_argv(data, "warning", env), "--spool", "true"]
    if args.postgres_dsn:
        argv += ["--postgres-dsn", args.postgres_dsn]
    server = ServerProcess(argv, work / "serve.log", env)
    address = server.start()
    metrics = server.wait_for_line(METRICS_AT)
    postgres = Postgres(args.postgres_dsn, data)
    try:
        await postgres.start()
        print(f"collector at {address}; filling {args.rows} activities of {args.persons} persons ...")
        print(f"  filled in {await asyncio.to_thread(_fill, data, args.rows, args.persons):.1f} s")
        pool = postgres.pool
        await SuppressionStore(pool).suppress(
            TENANT, b"bench-opt-out", {id_digest(TENANT, USER, "u-0"): USER}
        )
        jobs = ErasureStore(pool)
        opts = RunOptions(warmup_s=2.0, duration_s=args.window)
        rows: list[tuple[float, float, float, float, float, Receipt]] = []
        p99s: list[tuple[float, float]] = []
        inside: list[dict[bool, tuple[float, float, float]]] = []
        busy: list[float] = []
        for n in range(args.rounds):
            order = (False, True) if n % 2 == 0 else (True, False)
            figures: dict[bool, tuple[float, float]] = {}
            tails: dict[bool, float] = {}
            own: dict[bool, tuple[float, float, float]] = {}
            receipt: Receipt | None = None
            overlap = 0.0
            for erase in order:
                spec = Spec(
                    target=address,
                    kind="batch",
                    batch_size=100,
                    concurrency=8,
                    warmup_s=opts.warmup_s,
                    duration_s=args.window,
                    server_pid=server.pid,
                    server_marker=str(data),
                    api_key=server.api_key,
                    rate=args.rate,
                    seed=n * 2 + int(erase) + 1,
                )
                round_dir = work / f"round-{n}-{'erase' if erase else 'plain'}"
                round_dir.mkdir()
                load = asyncio.create_task(asyncio.to_thread(run_loadgen, spec, round_dir, opts))
                job = None
                await asyncio.sleep(opts.warmup_s)
                before = await asyncio.to_thread(scrape, metrics.group(1)) if metrics else {}
                if erase:
                    job = await jobs.request(TENANT, "user", f"u-{42 + n}")
                result = await load
                after = await asyncio.to_thread(scrape, metrics.group(1)) if metrics else {}
                own[erase] = (
                    p99_bound_ms(before, after, "request_duration_seconds", 'call="TrackActivities"'),
                    p99_bound_ms(before, after, "event_loop_lag_seconds"),
                    p99_bound_ms(before, after, "spool_sync_seconds"),
                )
                acked = result["acked_window"] / result["window_s"]
                # ms of the collector's CPU (all its threads, the embedded engine's too) per 1,000 acks.
                cpu_per_k = 1e6 * (result["server_group_cpu_s"] or 0.0) / max(result["acked_window"], 1)
                figures[erase] = (acked, cpu_per_k)
                tails[erase] = float(result.get("latency_ms", {}).get("p99", float("nan")))
                busy.append(result["machine_busy_cores"])
                if job is not None:
                    receipt = await _erasure_done(jobs, job, 600)
                    if receipt.started_at is not None and receipt.finished_at is not None:
                        span = (receipt.finished_at - receipt.started_at).total_seconds()
                        overlap = min(span, args.window) / args.window
            assert receipt is not None
            rows.append((*figures[False], *figures[True], overlap, receipt))
            p99s.append((tails[False], tails[True]))
            inside.append(own)

        offered = f"{args.rate:,.0f} activities/s offered" if args.rate else "closed loop"
        print(
            f"\ningest through the collector (TrackActivities, batches of 100, 8 callers, {offered},"
            f" {args.window:g} s windows); machine busy (cores of 2, all processes):"
            f" {min(busy):.2f}-{max(busy):.2f}"
        )
        print(
            "round  plain act/s  cpu ms/1k  p99 ms   erasing act/s  cpu ms/1k  p99 ms   ratio"
            "  window erased  erasure"
        )
        for n, (plain, plain_cpu, erasing, erasing_cpu, overlap, receipt) in enumerate(rows):
            span = (
                (receipt.finished_at - receipt.started_at).total_seconds()
                if receipt.started_at and receipt.finished_at
                else float("nan")
            )
            plain_p99, erasing_p99 = p99s[n]
            print(
                f"{n:>5}  {plain:>11,.0f}  {plain_cpu:>9.1f}  {plain_p99:>6.1f}   {erasing:>13,.0f}"
                f"  {erasing_cpu:>9.1f}  {erasing_p99:>6.1f}   {erasing / plain:>5.2f}  {overlap:>12.0%}"
                f"  {span:.1f} s ({receipt.state})"
            )
        ratios = [erasing / plain for plain, _, erasing, _, _, _ in rows]
        print(f"median ratio (erasing / plain): {statistics.median(ratios):.2f}")
        print(
            "in the collector, p99 at most (ms): its answers from the handler's start; its event loop's "
            "lag; the spool's fsyncs"
        )
        for n, own in enumerate(inside):
            without, within = ("; ".join(f"{v:g}" for v in own[e]) for e in (False, True))
            print(f"  {n}: plain {without}   erasing {within}")
        print("erasure steps (s), per round:")
        for n, (*_, receipt) in enumerate(rows):
            steps = "  ".join(f"{step} {seconds:.2f}" for step, seconds in receipt.step_seconds())
            print(f"  {n}: {steps}; removed {receipt.removed}")
    finally:
        await postgres.shutdown()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
