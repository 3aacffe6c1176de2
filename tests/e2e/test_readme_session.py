"""The README's first session, run from README.md's own text, in its order, on a fresh data directory.

`serve` runs in its own process; every `$ activity-collector ...` line of the section "A first session"
is run as written (the key the server printed stands for the README's `ak_...`, and ACTIVITY_TARGET and
ACTIVITY_DATA_DIR point the commands at this server), and what the README shows under each command is
checked: its table rows cell by cell, its other lines exactly. A README edit that the code does not
match, or a code change that makes the README wrong, fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import reap

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "$ "
README_KEY = re.compile(r"ak_[0-9a-f]+_\.\.\.")
README_ADDRESS = "127.0.0.1:50051"


@dataclass
class Step:
    command: str
    shown: list[str] = field(default_factory=list)


def session_steps(readme: str) -> list[Step]:
    """The commands of the section "A first session", in order, each with the lines shown under it."""
    section = readme.split("\n## A first session\n", 1)[1].split("\n## ", 1)[0]
    steps: list[Step] = []
    for block in section.split("```")[1::2]:
        for line in block.splitlines():
            if line.startswith(PROMPT):
                steps.append(Step(line[len(PROMPT) :]))
            elif steps and line.strip():
                steps[-1].shown.append(line)
    return steps


def table_rows(lines: list[str]) -> list[list[str]]:
    """The cells of a ClickHouse Pretty table: the header's names, then each row's cells."""
    rows: list[list[str]] = []
    for line in lines:
        text = line.strip()
        if text.startswith("┌"):
            rows.append([name.strip("─") for name in re.split("[┬]", text.strip("┌┐"))])
        elif "│" in text:
            rows.append([cell.strip() for cell in text.split("│")[1:-1]])
    return rows


def in_table(line: str) -> bool:
    return line.strip()[:1] in ("┌", "└") or "│" in line


def split_output(lines: list[str]) -> tuple[list[str], list[str]]:
    """(lines of tables, other lines)."""
    return [line for line in lines if in_table(line)], [line for line in lines if not in_table(line)]


def start(data: Path) -> tuple[subprocess.Popen[str], list[str], str]:
    """`serve` on `data`, as the README starts it but on ports of its own choosing: the process, the
    lines it printed up to and including the one that says where it listens, and that address."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "collector.cli", "serve", "--data-dir", str(data)),
            *("--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or "listening on" not in lines[-1]:
        line = proc.stdout.readline()
        assert line, "".join(lines) + (proc.stderr.read() if proc.stderr else "")
        lines.append(line.rstrip("\n"))
    return proc, lines, lines[-1].split("listening on ", 1)[1].split()[0]


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def test_the_readme_first_session_runs_as_written(data: Path) -> None:
    steps = session_steps((ROOT / "README.md").read_text())
    assert [s.command.split()[:2] for s in steps][:3] == [
        ["activity-collector", "serve"],
        ["export", "ACTIVITY_API_KEY=ak_3f9c0a1b2d4e_..."],
        ["activity-collector", "send"],
    ]
    assert any(s.command.startswith("activity-collector catalog import") for s in steps)
    assert any(s.command.startswith("activity-collector report") for s in steps)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVITY_")}
    proc: subprocess.Popen[str] | None = None
    key = ""
    try:
        for step in steps:
            argv = shlex.split(step.command)
            if argv[:2] == ["activity-collector", "serve"]:
                proc, printed, address = start(data)
                env.update(ACTIVITY_TARGET=address, ACTIVITY_DATA_DIR=str(data))
                shown = [line.replace(README_ADDRESS, address) for line in step.shown]
                assert shown[-1] == "...", shown
                assert len(printed) >= len(shown) - 1
                for want, got in zip(shown[:-1], printed, strict=False):
                    if README_KEY.fullmatch(want):
                        assert re.fullmatch(r"ak_[0-9a-f]{12}_\S+", got), got
                        key = got
                    else:
                        assert got == want
                assert key, "the first start printed no key"
                continue
            if argv[0] == "export":
                name, _, value = argv[1].partition("=")
                env[name] = key if README_KEY.fullmatch(value) else value
                continue
            assert argv[0] == "activity-collector", step.command
            result = subprocess.run(
                [sys.executable, "-m", "collector.cli", *argv[1:]],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                cwd=ROOT,
            )
            assert "Traceback" not in result.stderr, result.stderr
            got = result.stdout.splitlines() + result.stderr.splitlines()
            got_table, got_lines = split_output(got)
            want_table, want_lines = split_output(step.shown)
            assert got_lines == want_lines, f"$ {step.command}\n{result.stdout}{result.stderr}"
            assert table_rows(got_table) == table_rows(want_table), f"$ {step.command}\n{result.stdout}"
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    reap(proc)
            assert proc.stderr is not None
            proc.stderr.close()
            assert proc.stdout is not None
            proc.stdout.close()


def test_the_session_is_parsed_from_the_readme() -> None:
    steps = session_steps((ROOT / "README.md").read_text())
    sql = next(s for s in steps if s.command.startswith("activity-collector sql"))
    rows = table_rows(sql.shown)
    assert rows[0] == ["action", "target_id", "price", "currency", "occurred_at"]
    assert [row[0] for row in rows[1:]] == ["view", "add_to_cart", "purchase"]
    assert rows[1][2] == "ᴺᵁᴸᴸ"
