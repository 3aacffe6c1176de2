"""The engine probes of the benchmark on a few rows, each in a process of its own (each opens its own
embedded engine): `python -m bench.part_formats` (each copy of `activities` writes the part format its
settings say) and `python -m bench.steady_inserts` (both tables get every row, the aggregates their
groups); their figures print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def probe(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench.<module> ARGS` from the repository's root."""
    command = [sys.executable, "-m", f"bench.{module}", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)


def test_part_formats_compares_the_shipped_table_with_wide_parts() -> None:
    done = probe("part_formats", "--rows", "40", "--inserts", "2", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("2 inserts of 40 rows")
    wrote = {line.split("  ")[1].strip(): line.rsplit(" ", 1)[-1] for line in lines[2:]}
    assert wrote == {
        "as shipped (compact under 262144 rows)": "Compact",
        "ClickHouse default (compact under 10 MiB)": "Compact",
        "always wide": "Wide",
    }
    for line in lines[2:]:
        # inserts (sys), merge (sys), total: five non-negative figures per copy.
        assert len(re.findall(r"\d+\.\d\d", line)) == 5, line


def test_part_formats_refuses_nonsense_sizes() -> None:
    done = probe("part_formats", "--rows", "0")
    assert done.returncode == 2
    assert "--rows, --inserts and --repeat must be at least 1" in done.stderr


def test_steady_inserts_measures_both_tables_and_what_the_aggregates_hold() -> None:
    done = probe("steady_inserts", "--rows", "60", "--inserts", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("2 inserts of 60 distinct activities")
    for label in ("activities without the analytics views", "activities with its views"):
        line = next(line for line in out.splitlines() if line.strip().startswith(label))
        assert len(re.findall(r"\d+\.\d\d", line)) == 3, line
    held = {line.split()[0]: int(line.split()[1]) for line in out.split("held at the end:\n")[1].splitlines()}
    # Every activity is new, so both tables hold all 120; an insert records the days it touched, which
    # the aggregates' refresh (not run here) computes later.
    assert held["bare"] == held["activities"] == 120
    assert 0 < held["aggregate_touches"] < 120


def test_enrichment_groups_measures_each_group_size_and_skips_an_absent_catalogue(pg_dsn: str) -> None:
    done = probe("enrichment_groups", "--dsn", pg_dsn, "--activities", "500", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    figures: dict[tuple[int, str], list[float]] = {}
    for line in done.stdout.splitlines():
        match = re.match(r"\s*(\d+)  (\S.*?)\s{2,}([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", line)
        if match:
            figures[(int(match[1]), match[2])] = [float(match[n]) for n in range(3, 7)]
    modes = ("user agents only", "identity, no catalogue", "catalogue + identity")
    assert set(figures) == {(size, mode) for size in (1, 4, 100, 500) for mode in modes}
    for size in (1, 4, 100, 500):
        assert figures[(size, "user agents only")][3] == 0  # no PostgreSQL at all
        # With a catalogue, every group of new targets asks for them; without one, only whether there
        # is one, once, and the identity links the cache lacks.
        assert figures[(size, "catalogue + identity")][3] >= 1
        assert figures[(size, "identity, no catalogue")][3] < figures[(size, "catalogue + identity")][3]
