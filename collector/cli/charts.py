"""PNG pictures of reports: a daily time series, a funnel, rates per group as bars or along positions
as a line. Needs matplotlib (the `charts` extra); drawn with the Agg backend, so no display is needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

_SIZE = (10, 5.5)
_DPI = 110


def time_series(
    path: Path,
    title: str,
    days: Sequence[str],
    counts: Mapping[str, Sequence[int]],
    rates: Mapping[str, Sequence[float]],
) -> None:
    """Counts per day as lines on the left axis, rates (0 to 1) as dashed lines on the right."""
    fig, left = plt.subplots(figsize=_SIZE)
    try:
        for name, values in counts.items():
            left.plot(days, values, marker="o", markersize=3, label=name)
        left.set_ylabel("count")
        left.set_ylim(bottom=0)
        right = left.twinx()
        for name, shares in rates.items():
            right.plot(days, [v * 100 for v in shares], linestyle="--", color="gray", label=f"{name} (%)")
        right.set_ylabel("%")
        right.set_ylim(bottom=0)
        handles, labels = left.get_legend_handles_labels()
        more_handles, more_labels = right.get_legend_handles_labels()
        left.legend(handles + more_handles, labels + more_labels, loc="upper left")
        step = max(1, len(days) // 10)
        left.set_xticks(range(0, len(days), step), [days[i] for i in range(0, len(days), step)], rotation=30)
        left.set_title(title)
        left.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)


def funnel(path: Path, title: str, steps: Sequence[str], groups: Mapping[str, Sequence[int]]) -> None:
    """Users per step as bars, one colour per group, each bar labelled with its share of the first step."""
    fig, axes = plt.subplots(figsize=_SIZE)
    try:
        width = 0.8 / max(1, len(groups))
        for g, (name, users) in enumerate(groups.items()):
            xs = [i + g * width for i in range(len(users))]
            bars = axes.bar(xs, users, width=width, label=name)
            first = users[0] if users else 0
            labels = [f"{u}\n{(u / first if first else 0):.0%}" for u in users]
            axes.bar_label(bars, labels=labels, fontsize=8)
        axes.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(steps))], list(steps))
        axes.set_ylabel("users")
        axes.set_title(title)
        if len(groups) > 1:
            axes.legend()
        axes.margins(y=0.15)
        fig.tight_layout()
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)


def rate_bars(
    path: Path,
    title: str,
    groups: Sequence[str],
    rates: Mapping[str, Sequence[float]],
    intervals: Mapping[str, Sequence[tuple[float, float]]] | None = None,
) -> None:
    """Rates (0 to 1) per group as bars in %, one colour per rate, with error bars where `intervals`
    gives a (low, high) per group."""
    fig, axes = plt.subplots(figsize=_SIZE)
    try:
        width = 0.8 / max(1, len(rates))
        for r, (name, values) in enumerate(rates.items()):
            xs = [i + r * width for i in range(len(values))]
            heights = [v * 100 for v in values]
            errors = None
            if intervals and name in intervals:
                errors = [
                    [max(0.0, v - lo * 100) for v, (lo, _) in zip(heights, intervals[name], strict=True)],
                    [max(0.0, hi * 100 - v) for v, (_, hi) in zip(heights, intervals[name], strict=True)],
                ]
            bars = axes.bar(xs, heights, width=width, label=f"{name} (%)", yerr=errors, capsize=4)
            axes.bar_label(bars, labels=[f"{v:.1f}" for v in heights], fontsize=8)
        axes.set_xticks(
            [i + width * (len(rates) - 1) / 2 for i in range(len(groups))],
            list(groups),
            rotation=30,
            ha="right",
        )
        axes.set_ylabel("%")
        axes.set_title(title)
        axes.legend()
        axes.margins(y=0.15)
        fig.tight_layout()
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)


def rate_line(
    path: Path, title: str, xs: Sequence[int], rates: Mapping[str, Sequence[float]], xlabel: str
) -> None:
    """Rates (0 to 1) in % as lines over an ordered axis (CTR by position)."""
    fig, axes = plt.subplots(figsize=_SIZE)
    try:
        for name, values in rates.items():
            axes.plot(list(xs), [v * 100 for v in values], marker="o", label=f"{name} (%)")
        axes.set_xlabel(xlabel)
        axes.set_ylabel("%")
        axes.set_ylim(bottom=0)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)
