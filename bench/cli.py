"""`python -m bench`: the collector's throughput benchmark, with its transport and storage ceilings.

See bench/README.md for what is measured and how to read the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

import grpc

from bench import profile
from bench.report import FIGURES, NOISY_CORES, STORAGE_FIGURES, aggregate, compare, render
from bench.runner import (
    COLLECTORS,
    PLAN_TARGETS,
    ROOT,
    SCENARIOS,
    TARGETS,
    BenchError,
    RunOptions,
    measure,
    measure_storage,
    snapshot_sources,
    source_digest,
    wait_until_idle,
)
from bench.tracking_plan import RULES_PER_ACTION

FIGURE_KEYS = [f.key for f in FIGURES]
# Scenarios reported against a gRPC scenario of the same batch size (ratio `<target>_vs_grpc_batch`).
GRPC_BASELINE_OF = {"segment-batch-100": "batch-100"}
SPOOL_CHOICES = {
    "on": ("collector",),
    "off": ("collector-nospool",),
    "both": ("collector", "collector-nospool"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput, latency, CPU and memory of `activity-collector serve` under load, "
        "next to a no-op gRPC server (transport ceiling) and direct inserts (storage ceiling).",
    )
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 run, 1 s warm-up, 3 s window")
    parser.add_argument("--runs", type=int, help="runs per scenario and server (default 5; --quick 1)")
    parser.add_argument("--duration", type=float, help="measured window per run, s (default 10; --quick 3)")
    parser.add_argument("--warmup", type=float, help="warm-up before the window, s (default 2; --quick 1)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="scenario to run (repeatable; default all)",
    )
    parser.add_argument(
        "--json", type=Path, default=Path("bench-results/latest.json"), help="where to write the results"
    )
    parser.add_argument(
        "--compare", type=Path, metavar="OLD.json", help="print deltas against earlier results"
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="NEW.json",
        help="with --compare: compare OLD.json with this file instead of running anything",
    )
    parser.add_argument(
        "--no-transport", action="store_true", help="skip the no-op server (transport ceiling)"
    )
    parser.add_argument(
        "--commit-baseline",
        action="store_true",
        help="also run the no-op server with an empty group-commit hop before each answer "
        "(target `transport-commit`)",
    )
    parser.add_argument(
        "--spool",
        choices=sorted(SPOOL_CHOICES),
        default="both",
        help="run the collector with its durable spool on (target `collector`), off "
        "(`collector-nospool`: acknowledged once committed to ClickHouse), or both (default)",
    )
    parser.add_argument(
        "--with-plan",
        action="store_true",
        help="also run the collector (spool on) with a tracking plan of ten rules per action applied to the "
        "load generator's tenant (target `collector-plan`), reported against `collector`",
    )
    parser.add_argument(
        "--plan",
        type=Path,
        metavar="FILE",
        help="with --with-plan (implied): apply this plan file instead of the built-in ten-rule plan",
    )
    parser.add_argument("--no-storage", action="store_true", help="skip the direct-insert storage ceiling")
    parser.add_argument("--storage-rows", type=int, help="rows per storage-ceiling run (default 500000)")
    parser.add_argument(
        "--insert-rows", type=int, default=50_000, help="rows per direct insert (default 50000)"
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="collector setting for the runs, e.g. insert_max_rows=50000 (ACTIVITY_ prefix optional)",
    )
    parser.add_argument(
        "--server-log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="the collector's --log-level (default warning; debug logs every insert: costs CPU)",
    )
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy server and generator logs here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after the measurements, one extra (unreported) collector run per scenario under py-spy; "
        "collapsed stacks go to DIR and a summary to stdout",
    )
    parser.add_argument("--profile-native", action="store_true", help="with --profile: include native frames")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="N",
        help="open loop: offer N activities/s in every scenario, spread over its callers, latency counted "
        "from each request's scheduled time (default 0: closed loop)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run, wait up to S seconds for the machine to be idle (default 0: do not wait)",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="run the working tree's collector/ and workers/ as they are at each start, instead of a "
        "snapshot taken when the benchmark starts",
    )
    return parser


def choose_targets(
    spool: str, transport: bool, commit_baseline: bool = False, with_plan: bool = False
) -> list[str]:
    """The servers each scenario runs against, in report order: the collector with its spool on, off
    or both (`--spool`), the collector with a tracking plan when `with_plan` is on, then the no-op
    server unless `transport` is off, then the no-op server with a group-commit hop when
    `commit_baseline` is on."""
    chosen = SPOOL_CHOICES[spool]
    wanted = {"transport": transport, "transport-commit": commit_baseline}
    wanted.update((t, with_plan) for t in PLAN_TARGETS)
    return [t for t in TARGETS if wanted.get(t, t in chosen)]


def plan_label(path: Path | None) -> str:
    """How the report names the plan of `collector-plan`."""
    return str(path) if path is not None else f"built-in, {RULES_PER_ACTION} rules per action"


def check_plan_file(path: Path) -> None:
    """Refuse, before any run, a plan file that `plans apply` would refuse."""
    from workers.processors.plan import PlanError, load_document, parse_plan

    try:
        parse_plan(load_document(path.read_text(encoding="utf-8")))
    except OSError as error:
        raise SystemExit(f"--plan: cannot read {path}: {error}") from None
    except PlanError as error:
        raise SystemExit(f"--plan {path}: {error}") from None


def _server_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--server-env: expected SETTING=VALUE, got {pair!r}")
        key = key.upper()
        env[key if key.startswith("ACTIVITY_") else f"ACTIVITY_{key}"] = value
    return env


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode().strip() if done.returncode == 0 else None


def _meta() -> dict[str, Any]:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": (_git("rev-parse", "--short=12", "HEAD") or "?"),
        "dirty": bool(status),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
    }


def _on_sigterm(_signum: int, _frame: Any) -> NoReturn:
    # Unwind through the `finally` blocks that stop child processes and remove temporary directories.
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.against is not None:
        if args.compare is None:
            raise SystemExit("--against needs --compare OLD.json")
        old = json.loads(args.compare.read_text(encoding="utf-8"))
        new = json.loads(args.against.read_text(encoding="utf-8"))
        print(compare(old, new))
        return 0
    old_results = json.loads(args.compare.read_text(encoding="utf-8")) if args.compare else None

    runs = args.runs if args.runs is not None else (1 if args.quick else 5)
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    storage_rows = args.storage_rows or (100_000 if args.quick else 500_000)
    if runs < 1 or duration <= 0 or warmup < 0 or args.wait_idle < 0 or args.rate < 0:
        raise SystemExit(
            "--runs must be at least 1, --duration positive, --warmup, --wait-idle and --rate not negative"
        )
    names = list(dict.fromkeys(args.scenario or SCENARIOS))
    server_env = _server_env(args.server_env)
    if "ACTIVITY_SPOOL" in server_env:
        raise SystemExit("--server-env spool=...: the spool is chosen with --spool on|off|both")
    with_plan = args.with_plan or args.plan is not None
    if with_plan and "collector" not in SPOOL_CHOICES[args.spool]:
        raise SystemExit("--with-plan compares with the collector with its spool on: use --spool on or both")
    if args.plan is not None:
        check_plan_file(args.plan)
    targets = choose_targets(
        args.spool,
        transport=not args.no_transport,
        commit_baseline=args.commit_baseline,
        with_plan=with_plan,
    )
    opts = RunOptions(
        warmup_s=warmup,
        duration_s=duration,
        server_env=server_env,
        keep_logs=args.keep_logs,
        profile_dir=args.profile,
        profile_native=args.profile_native,
        server_log_level=args.server_log_level,
        wait_idle_s=args.wait_idle,
        rate=args.rate,
        plan_file=args.plan.resolve() if args.plan is not None else None,
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C stops the runs and reports those done, even when started where SIGINT is ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    with tempfile.TemporaryDirectory(prefix="bench-sources-") as snapshot:
        meta = _meta()
        meta["sources"] = "working tree" if args.live else "snapshot taken at start"
        if not args.live:
            snapshot_sources(Path(snapshot))
        meta["source_digest"] = source_digest()
        meta["busy_cores_at_start"] = round(wait_until_idle(0), 2)
        if meta["busy_cores_at_start"] > 0.3:
            print(
                f"warning: the machine is already busy ({meta['busy_cores_at_start']:.2f} cores): "
                "figures will be disturbed (--wait-idle S waits for quiet before each run)",
                flush=True,
            )
        results: dict[str, Any] = {
            "version": 1,
            "meta": meta,
            "config": {
                "runs": runs,
                "duration_s": duration,
                "warmup_s": warmup,
                "scenarios": names,
                "targets": targets,
                "server_env": server_env,
                "storage_rows": storage_rows,
                "insert_rows": args.insert_rows,
                "rate": args.rate,
                "plan": plan_label(args.plan) if with_plan else None,
                "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
            },
            "scenarios": {
                name: {
                    "description": SCENARIOS[name].description,
                    "targets": {t: {"runs": []} for t in targets if SCENARIOS[name].runs_against(t)},
                }
                for name in names
            },
            "storage": {"runs": []},
            "errors": [],
        }
        started = time.monotonic()
        try:
            run_all(results, names, targets, runs, opts, None if args.no_storage else args.insert_rows)
        except KeyboardInterrupt:
            results["errors"].append("interrupted")
            print("interrupted: reporting the runs done so far", flush=True)

        live = source_digest(ROOT)
        if live != meta["source_digest"]:
            meta["working_tree_digest_at_end"] = live
            if args.live:
                results["errors"].append(
                    "the product's sources changed while the benchmark ran (--live): "
                    "runs measured different code"
                )
        finish(results)
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
        print()
        print(render(results))
        print(f"\nresults written to {args.json}")
        if old_results is not None:
            print()
            print(compare(old_results, results))

        if args.profile is not None and "interrupted" not in results["errors"]:
            run_profiles(names, [t for t in targets if t in COLLECTORS], opts)
    return 0 if results["ok"] else 1


def run_all(
    results: dict[str, Any],
    names: list[str],
    targets: list[str],
    runs: int,
    opts: RunOptions,
    insert_rows: int | None,
) -> None:
    """Every run, interleaved: run 1 of the storage ceiling and of each scenario and server, then run 2..."""
    errors: list[str] = results["errors"]
    storage_rows = results["config"]["storage_rows"]
    pairs = sum(SCENARIOS[name].runs_against(t) for name in names for t in targets)
    total = runs * (pairs + (0 if insert_rows is None else 1))
    step = 0
    for run in range(runs):
        seed = 1000 + run
        if insert_rows is not None:
            step += 1
            print(f"[{step}/{total}] run {run + 1}: storage ceiling ({storage_rows} rows)", flush=True)
            try:
                storage = measure_storage(storage_rows, insert_rows, seed, opts.wait_idle_s)
            except BenchError as error:
                errors.append(f"storage ceiling, run {run + 1}: {error}")
                print(f"    FAILED: {error}", flush=True)
            else:
                results["storage"]["runs"].append(storage)
                print(
                    f"    encode+insert {storage['encode_insert_rows_per_s']:,.0f} rows/s, "
                    f"insert only {storage['insert_rows_per_s']:,.0f} rows/s",
                    flush=True,
                )
        for name in names:
            for target in targets:
                if not SCENARIOS[name].runs_against(target):
                    continue
                step += 1
                print(f"[{step}/{total}] run {run + 1}: {name} against {target}", flush=True)
                try:
                    record = measure(SCENARIOS[name], target, seed, opts)
                except BenchError as error:
                    errors.append(f"{name} against {target}, run {run + 1}: {error}")
                    print(f"    FAILED: {error}", flush=True)
                    continue
                results["scenarios"][name]["targets"][target]["runs"].append(record)
                print("    " + _progress_line(record), flush=True)


def _progress_line(record: dict[str, Any]) -> str:
    f = record["figures"]
    line = (
        f"{f['acked_per_s']:,.0f} act/s, p50 {f['latency_p50_ms'] or 0:.1f} ms, "
        f"p99 {f['latency_p99_ms'] or 0:.1f} ms"
    )
    if f.get("server_cpu_us_per_activity") is not None:
        line += f", server {f['server_cpu_us_per_activity']:.1f} us CPU/act"
    if f.get("committed_rows") is not None:
        line += f", {f['committed_rows']:,} rows stored"
    if f.get("other_cpu_cores") is not None and f["other_cpu_cores"] > NOISY_CORES:
        line += f", other processes {f['other_cpu_cores']:.2f} cores (disturbed)"
    if not record["check_ok"]:
        line += "  CHECK FAILED: " + "; ".join(record["problems"])
    return line


def finish(results: dict[str, Any]) -> None:
    """Summaries, ratios and the overall verdict, in place."""
    ok = not results["errors"]
    storage_runs = results["storage"]["runs"]
    storage_keys = [f.key for f in STORAGE_FIGURES]
    results["storage"]["summary"] = aggregate(storage_runs, storage_keys)
    results["storage"]["check_ok"] = all(r.get("check_ok") for r in storage_runs)
    ok = ok and results["storage"]["check_ok"]
    storage_ceiling = results["storage"]["summary"].get("encode_insert_rows_per_s", {}).get("median")
    insert_ceiling = results["storage"]["summary"].get("insert_rows_per_s", {}).get("median")
    for scenario in results["scenarios"].values():
        for target in scenario["targets"].values():
            target["summary"] = aggregate([r["figures"] for r in target["runs"]], FIGURE_KEYS)
            target["check_ok"] = bool(target["runs"]) and all(r["check_ok"] for r in target["runs"])
            target["problems"] = [
                f"run {n + 1}: {p}" for n, r in enumerate(target["runs"]) for p in r["problems"]
            ]
            ok = ok and target["check_ok"]
        medians = {
            t: d["summary"].get("acked_per_s", {}).get("median") for t, d in scenario["targets"].items()
        }
        ratios: dict[str, float] = {}
        for name in COLLECTORS:
            coll = medians.get(name)
            prefix = name.replace("-", "_")
            if coll is not None and medians.get("transport"):
                ratios[f"{prefix}_vs_transport"] = coll / medians["transport"]
            if coll is not None and medians.get("transport-commit"):
                ratios[f"{prefix}_vs_transport_commit"] = coll / medians["transport-commit"]
            if coll is not None and storage_ceiling:
                ratios[f"{prefix}_vs_storage"] = coll / storage_ceiling
            if coll is not None and insert_ceiling:
                ratios[f"{prefix}_vs_insert_only"] = coll / insert_ceiling
        collector = scenario["targets"].get("collector", {}).get("summary", {})
        for name in PLAN_TARGETS:
            with_plan = scenario["targets"].get(name, {}).get("summary", {})
            prefix = name.replace("-", "_")
            for key, suffix in (("acked_per_s", ""), ("server_cpu_us_per_activity", "_cpu")):
                plan_value = with_plan.get(key, {}).get("median")
                base = collector.get(key, {}).get("median")
                if plan_value is not None and base:
                    ratios[f"{prefix}{suffix}_vs_collector"] = plan_value / base
        if medians.get("transport-commit") and medians.get("transport"):
            ratios["transport_commit_vs_transport"] = medians["transport-commit"] / medians["transport"]
        scenario["ratios"] = ratios
    # The Segment door against gRPC TrackActivities with the same batch size, in the same run.
    for name, baseline in GRPC_BASELINE_OF.items():
        segment, grpc_batch = results["scenarios"].get(name), results["scenarios"].get(baseline)
        if segment is None or grpc_batch is None:
            continue
        for target in COLLECTORS:
            pair = [
                s["targets"].get(target, {}).get("summary", {}).get("acked_per_s", {}).get("median")
                for s in (segment, grpc_batch)
            ]
            if pair[0] is not None and pair[1]:
                segment["ratios"][f"{target.replace('-', '_')}_vs_grpc_batch"] = pair[0] / pair[1]
    results["ok"] = ok


def run_profiles(names: list[str], collectors: list[str], opts: RunOptions) -> None:
    assert opts.profile_dir is not None
    print(f"\nprofiling the collector with py-spy (extra runs, not in the figures) into {opts.profile_dir}")
    for name in names:
        for target in collectors:
            try:
                record = measure(SCENARIOS[name], target, 9999, opts, profile=True)
            except BenchError as error:
                print(f"  {name} against {target}: FAILED: {error}")
                continue
            path = opts.profile_dir / f"{name}-{target}.txt"
            print(f"\n{name} against {target} (profiled run: {record['figures']['acked_per_s']:,.0f} act/s)")
            if path.exists():
                print(profile.summary(path))
            else:
                print(f"  no profile written to {path}")


def entry() -> int:
    try:
        return main()
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
