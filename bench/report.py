"""Aggregation over runs (median, min, max), the stdout report, and the comparison of two result files."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    better: str
    """"higher", "lower" or "" (neither: context only)."""
    digits: int = 0


FIGURES = (
    Figure("acked_per_s", "activities/s acknowledged", "higher"),
    Figure("committed_rows_per_s", "committed rows/s (whole load)", "higher"),
    Figure("commit_lag_s", "rows visible after last ack (s)", "lower", 2),
    Figure("requests_per_s", "requests/s", "higher"),
    Figure("latency_p50_ms", "ack latency p50 (ms)", "lower", 1),
    Figure("latency_p99_ms", "ack latency p99 (ms)", "lower", 1),
    Figure("latency_max_ms", "ack latency max (ms)", "lower", 1),
    Figure("server_cpu_us_per_activity", "server CPU per activity (us)", "lower", 2),
    Figure("server_cpu_cores", "server CPU (cores busy)", "", 2),
    Figure("server_helper_cpu_cores", "  of which helper processes", "", 2),
    Figure("server_peak_rss_mib", "server peak RSS (MiB)", "lower"),
    Figure("loadgen_cpu_cores", "load generator CPU (cores busy)", "", 2),
    Figure("interrupt_cpu_cores", "irq + softirq (cores busy)", "", 2),
    Figure("other_cpu_cores", "other processes (cores busy)", "", 2),
)

STORAGE_FIGURES = (
    Figure("insert_rows_per_s", "insert_rows only (rows/s)", "higher"),
    Figure("encode_insert_rows_per_s", "encode_rows + envelope + insert (rows/s)", "higher"),
    Figure("encode_us_per_row", "encode_rows (us/row)", "lower", 2),
    Figure("envelope_us_per_row", "envelope (us/row)", "lower", 2),
    Figure("insert_us_per_row", "insert_rows (us/row)", "lower", 2),
    Figure("peak_rss_mib", "peak RSS (MiB)", "lower"),
)

SUMMARY_KEYS = ("median", "min", "max")
# Targets in the order the report shows them, with their column labels; a collector target's ratios are
# keyed `<target with _ for ->_vs_<ceiling>`.
TARGET_LABELS = {
    "collector": "collector (serve, spool on)",
    "collector-nospool": "collector (serve, spool off)",
    "collector-plan": "collector + tracking plan",
    "transport": "transport (no-op server)",
    "transport-commit": "no-op + group-commit hop",
}
SPOOL = {"collector": "on", "collector-nospool": "off", "collector-plan": "on+plan"}
# How the ratio lines name each collector target.
COLLECTOR_NAMES = {
    "collector": "collector with the spool on",
    "collector-nospool": "collector with the spool off",
    "collector-plan": "collector with the tracking plan (spool on)",
}
NOISY_CORES = 0.15


def aggregate(runs: Sequence[dict[str, Any]], keys: Iterable[str]) -> dict[str, dict[str, float]]:
    """Median, min and max of each figure over the runs that have it."""
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [float(r[key]) for r in runs if r.get(key) is not None and not math.isnan(float(r[key]))]
        if values:
            out[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "n": len(values),
            }
    return out


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) < 0.5 * 10**-digits:
        value = 0.0  # not "-0.00" for a reading that is zero within rounding
    if digits == 0 and abs(value) >= 10_000:
        return f"{value / 1000:.1f}k"
    return f"{value:,.{digits}f}"


def fmt_spread(stats: dict[str, float] | None, digits: int = 0) -> str:
    if not stats:
        return "-"
    text = fmt(stats["median"], digits)
    if stats.get("n", 1) > 1:
        text += f" [{fmt(stats['min'], digits)}-{fmt(stats['max'], digits)}]"
    return text


def _median(summary: dict[str, Any], key: str) -> float | None:
    stats = summary.get(key)
    return None if stats is None else float(stats["median"])


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: bool = True) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = []
    for n, row in enumerate([header, *rows]):
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            cells.append(cell.ljust(width) if i == 0 or not right else cell.rjust(width))
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """The human-readable report of a results document."""
    out: list[str] = []
    config = results["config"]
    meta = results["meta"]
    out.append(
        f"activity-collector benchmark  {meta['started']}  commit {meta.get('commit', '?')}"
        f"{' (dirty)' if meta.get('dirty') else ''}  sources {meta.get('source_digest', '?')}  "
        f"{meta['cpus']} CPUs"
    )
    out.append(
        f"runs {config['runs']}, warm-up {config['warmup_s']:g} s, window {config['duration_s']:g} s "
        "per run; median over runs [min-max]"
    )
    if config.get("server_env"):
        out.append(f"collector settings: {config['server_env']}")
    storage = results.get("storage", {}).get("summary", {})
    head = ["scenario", "spool", "collector act/s", "committed rows/s", "transport act/s",
            "coll/transport", "coll/storage", "coll/insert", "p50 ms", "p99 ms", "max ms", "CPU us/act",
            "peak RSS MiB", "check"]  # fmt: skip
    rows = []
    for name, scenario in results["scenarios"].items():
        trans = scenario["targets"].get("transport", {}).get("summary", {})
        r = scenario.get("ratios", {})
        for target, spool in SPOOL.items():
            if target not in scenario["targets"]:
                continue
            coll = scenario["targets"][target].get("summary", {})
            prefix = target.replace("-", "_")
            rows.append(
                [
                    name,
                    spool,
                    fmt(_median(coll, "acked_per_s")),
                    fmt(_median(coll, "committed_rows_per_s")),
                    fmt(_median(trans, "acked_per_s")),
                    fmt(r.get(f"{prefix}_vs_transport"), 3),
                    fmt(r.get(f"{prefix}_vs_storage"), 3),
                    fmt(r.get(f"{prefix}_vs_insert_only"), 3),
                    fmt(_median(coll, "latency_p50_ms"), 1),
                    fmt(_median(coll, "latency_p99_ms"), 1),
                    fmt(_median(coll, "latency_max_ms"), 1),
                    fmt(_median(coll, "server_cpu_us_per_activity"), 1),
                    fmt(_median(coll, "server_peak_rss_mib")),
                    "ok" if scenario["targets"][target].get("check_ok") else "FAILED",
                ]
            )
    out.append("")
    out.append(table(head, rows))
    if storage:
        out.append(
            f"storage ceiling (in-process, {config['insert_rows']} rows per insert): "
            f"encode+insert {fmt_spread(storage.get('encode_insert_rows_per_s'))} rows/s, "
            f"insert only {fmt_spread(storage.get('insert_rows_per_s'))} rows/s"
        )

    for name, scenario in results["scenarios"].items():
        out.append("")
        out.append(f"{name}: {scenario['description']}")
        targets = scenario["targets"]
        names = [t for t in TARGET_LABELS if t in targets]
        head = ["figure", *[TARGET_LABELS[t] for t in names]]
        rows = []
        for figure in FIGURES:
            cells = [fmt_spread(targets[t].get("summary", {}).get(figure.key), figure.digits) for t in names]
            if all(c == "-" for c in cells):
                continue
            rows.append([figure.label, *cells])
        out.append(table(head, rows))
        for t in names:
            for problem in targets[t].get("problems", []):
                out.append(f"  {t}: {problem}")
            other = _median(targets[t].get("summary", {}), "other_cpu_cores")
            if other is not None and other > NOISY_CORES:
                out.append(
                    f"  {t}: note: other processes kept {other:.2f} cores busy during the windows "
                    "(median): these figures are disturbed"
                )

    if storage:
        out.append("")
        out.append(
            "storage ceiling: workers.rows.encode_rows/envelope + ClickHouseStore.insert_rows, embedded"
        )
        out.append(
            table(
                ["figure", "value"],
                [[f.label, fmt_spread(storage.get(f.key), f.digits)] for f in STORAGE_FIGURES],
            )
        )

    out.append("")
    out.append("ratios (medians):")
    for name, scenario in results["scenarios"].items():
        r = scenario.get("ratios", {})
        for target in SPOOL:
            prefix = target.replace("-", "_")
            parts = []
            if r.get(f"{prefix}_vs_transport") is not None:
                parts.append(f"/ transport ceiling = {r[f'{prefix}_vs_transport']:.3f}")
            if r.get(f"{prefix}_vs_transport_commit") is not None:
                parts.append(f"/ no-op with a group-commit hop = {r[f'{prefix}_vs_transport_commit']:.3f}")
            if r.get(f"{prefix}_vs_storage") is not None:
                parts.append(f"/ storage ceiling (encode+insert) = {r[f'{prefix}_vs_storage']:.3f}")
            if r.get(f"{prefix}_vs_insert_only") is not None:
                parts.append(f"/ insert-only ceiling = {r[f'{prefix}_vs_insert_only']:.3f}")
            if r.get(f"{prefix}_vs_grpc_batch") is not None:
                parts.append(f"/ gRPC TrackActivities, same batch size = {r[f'{prefix}_vs_grpc_batch']:.3f}")
            if parts:
                out.append(f"  {name}, {COLLECTOR_NAMES[target]}: " + ", ".join(parts))
        if r.get("transport_commit_vs_transport") is not None:
            out.append(
                f"  {name}, no-op server with a group-commit hop: / transport ceiling = "
                f"{r['transport_commit_vs_transport']:.3f}"
            )
    plan_lines = []
    for name, scenario in results["scenarios"].items():
        r = scenario.get("ratios", {})
        if r.get("collector_plan_vs_collector") is None:
            continue
        line = f"  {name}: activities/s acknowledged {r['collector_plan_vs_collector']:.3f}"
        if r.get("collector_plan_cpu_vs_collector") is not None:
            line += f", server CPU per activity {r['collector_plan_cpu_vs_collector']:.3f}"
        plan_lines.append(line)
    if plan_lines:
        out.append("")
        out.append(
            f"tracking plan ({config.get('plan') or 'applied'}): collector-plan / collector, medians "
            "of the same run:"
        )
        out.extend(plan_lines)
    for error in results.get("errors", []):
        out.append(f"ERROR: {error}")
    out.append("")
    out.append("all checks passed" if results.get("ok") else "SOME CHECKS FAILED (see above)")
    return "\n".join(out)


def _delta(old: float | None, new: float | None) -> str:
    if old is None or new is None:
        return "-"
    if old == 0:
        return "n/a"
    return f"{(new - old) / old * 100:+.1f}%"


def _verdict(figure: Figure, old: float | None, new: float | None, spread: float) -> str:
    if old is None or new is None or old == 0 or not figure.better:
        return ""
    change = (new - old) / old
    if abs(change) <= spread:
        return "~"
    better = change > 0 if figure.better == "higher" else change < 0
    return "better" if better else "WORSE"


def _relative_spread(*summaries: dict[str, float] | None) -> float:
    """Half the widest relative min-max spread of the two summaries: changes within it are noise."""
    worst = 0.0
    for s in summaries:
        if s and s.get("median"):
            worst = max(worst, (s["max"] - s["min"]) / abs(s["median"]) / 2)
    return max(worst, 0.02)


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Deltas of every median present in both result documents."""
    out = [
        f"comparison: {old['meta'].get('started')} (commit {old['meta'].get('commit', '?')}) -> "
        f"{new['meta'].get('started')} (commit {new['meta'].get('commit', '?')})",
        "'~' = within the runs' spread (or 2%); better/WORSE otherwise",
    ]
    head = ["scenario / target / figure", "old", "new", "delta", ""]
    rows = []
    for name, scenario in new["scenarios"].items():
        old_scenario = old.get("scenarios", {}).get(name)
        if old_scenario is None:
            continue
        for target, data in scenario["targets"].items():
            old_summary = old_scenario["targets"].get(target, {}).get("summary", {})
            summary = data.get("summary", {})
            for figure in FIGURES:
                a, b = old_summary.get(figure.key), summary.get(figure.key)
                if a is None or b is None:
                    continue
                rows.append(
                    [
                        f"{name} / {target} / {figure.label}",
                        fmt(a["median"], figure.digits),
                        fmt(b["median"], figure.digits),
                        _delta(a["median"], b["median"]),
                        _verdict(figure, a["median"], b["median"], _relative_spread(a, b)),
                    ]
                )
    old_storage = old.get("storage", {}).get("summary", {})
    storage = new.get("storage", {}).get("summary", {})
    for figure in STORAGE_FIGURES:
        a, b = old_storage.get(figure.key), storage.get(figure.key)
        if a is None or b is None:
            continue
        rows.append(
            [
                f"storage / {figure.label}",
                fmt(a["median"], figure.digits),
                fmt(b["median"], figure.digits),
                _delta(a["median"], b["median"]),
                _verdict(figure, a["median"], b["median"], _relative_spread(a, b)),
            ]
        )
    if not rows:
        out.append("(no figure in common)")
    else:
        out.append(table(head, rows))
    return "\n".join(out)
