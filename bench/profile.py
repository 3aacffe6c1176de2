"""Summaries of py-spy `--format raw` profiles (collapsed stacks: `frame;frame;... count` per line)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def load(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """(self samples by frame, inclusive samples by frame, total samples)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # The first frame is the thread ("process 123:"python -m ..."" / "thread (0x...)"): skip it.
        # Lines are dropped so that a function's samples add up whatever line they fell on.
        frames = [_LINE.sub(")", f) for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return own, inclusive, total


def _short(frame: str, width: int = 100) -> str:
    frame = frame.replace(str(Path.cwd()) + "/", "")
    for marker in ("site-packages/", "lib/python3.11/"):
        at = frame.find(marker)
        if at >= 0:
            start = frame.rfind("(", 0, at) + 1
            frame = frame[:start] + frame[at + len(marker) :]
    return frame if len(frame) <= width else frame[: width - 3] + "..."


def summary(path: Path, top: int = 15) -> str:
    own, inclusive, total = load(path)
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples of busy threads"]
    lines.append("  self time:")
    for frame, count in own.most_common(top):
        lines.append(f"    {count / total * 100:5.1f}%  {_short(frame)}")
    lines.append("  inclusive time:")
    for frame, count in inclusive.most_common(top + 10):
        if count == total:
            continue
        lines.append(f"    {count / total * 100:5.1f}%  {_short(frame)}")
    return "\n".join(lines)
