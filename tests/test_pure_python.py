"""The pure-Python paths, run for real where the compiled modules are built.

`ACTIVITY_PURE_PYTHON=1` makes `core.fastpath` and `workers.enrichment.lookups` behave as if their
compiled modules were absent, as on a machine without a C compiler. With it, the service's own tests
(validation, and the gRPC service end to end: real server, ClickHouse, PostgreSQL, enrichment) run in a
subprocess and must give the same answers; the subprocess reports that neither compiled module was
even loaded and that enrichment ran its Python loops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_compiled import NO_COMPILER_ENV

from collector.config import load_settings
from core.fastpath import PURE_PYTHON_ENV

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[1]
COMPILED_MODULES = ("core._fastpath", "workers.enrichment._lookups")

# The tests the subprocess runs; they pass on either path. The one test below checks which path a
# request takes, and wants the compiled one.
SUITE = ("tests/core/test_validation.py", "tests/collector/doors/test_service.py")
ABOUT_THE_COMPILED_PATH = (
    "tests/collector/doors/test_service.py::test_track_activity_answers_alike_on_the_compiled_and_the_python_path",
)

# Runs pytest in this process and then says which implementations it used.
RUN = """
import json, sys
import pytest
from core import fastpath
from workers.enrichment import lookups

calls = {"lookup": 0, "join": 0}

def counting(name, function):
    def counted(*args, **kwargs):
        calls[name] += 1
        return function(*args, **kwargs)
    return counted

python_loops = lookups.lookup is lookups.lookup_py and lookups.join is lookups.join_py
lookups.lookup = counting("lookup", lookups.lookup)
lookups.join = counting("join", lookups.join)
code = pytest.main(sys.argv[1:])
from collector.doors import service
report = {
    "available": fastpath.available,
    "compiled": lookups.compiled,
    "python_loops": python_loops,
    "loaded": sorted(m for m in COMPILED_MODULES if m in sys.modules),
    "header_classes": [k.header_class is not None for k in (service.ONE, service.BATCH, service.STREAM)],
    "calls": calls,
}
print("PURE-PYTHON-REPORT " + json.dumps(report))
sys.exit(code)
""".replace("COMPILED_MODULES", repr(COMPILED_MODULES))

# What a fresh process chose, without running anything.
PROBE = """
import json, sys
from core import fastpath
from workers.enrichment import lookups
print(json.dumps({
    "pure_python": fastpath.pure_python,
    "available": fastpath.available,
    "compiled": lookups.compiled,
    "python_lookup": lookups.lookup is lookups.lookup_py,
    "loaded": sorted(m for m in COMPILED_MODULES if m in sys.modules),
}))
""".replace("COMPILED_MODULES", repr(COMPILED_MODULES))


def run_python(
    code: str, *args: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def environment(value: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != PURE_PYTHON_ENV}
    if value is not None:
        env[PURE_PYTHON_ENV] = value
    return env


def probe(value: str | None) -> dict[str, Any]:
    done = run_python(PROBE, env=environment(value), timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_variable_switches_both_compiled_modules_off_and_leaves_them_unloaded() -> None:
    assert probe("1") == {
        "pure_python": True,
        "available": False,
        "compiled": False,
        "python_lookup": True,
        "loaded": [],
    }
    # Unset or 0: whatever the build has (both, on this machine; tests/test_compiled.py fails if not).
    for value in (None, "0", ""):
        chosen = probe(value)
        assert chosen["pure_python"] is False
        assert chosen["available"] == chosen["compiled"] == (not chosen["python_lookup"])
        assert chosen["loaded"] == (sorted(COMPILED_MODULES) if chosen["available"] else [])


def test_the_variables_are_not_taken_for_settings() -> None:
    # ACTIVITY_<NAME> sets a setting, and an unknown one stops every command that reads the settings
    # (serve included); these two switch the compiled code off, or tell the tests there is none.
    load_settings(environ={PURE_PYTHON_ENV: "1", NO_COMPILER_ENV: "1"})


def test_the_service_gives_the_same_answers_on_the_pure_python_paths() -> None:
    args = [*SUITE, "-q", "-p", "no:cacheprovider"]
    for node in ABOUT_THE_COMPILED_PATH:
        args += ["--deselect", node]
    env = environment("1")
    # A pytest session makes its temporary root owner-only as it starts: on this session's root, that
    # would cut this session's embedded PostgreSQL (a user of its own) off from its data directory. The
    # nested session gets a root of its own beside it (short: unix socket paths are short).
    nested = Path(os.environ["PYTEST_DEBUG_TEMPROOT"]) / "n"
    nested.mkdir(exist_ok=True)
    env["PYTEST_DEBUG_TEMPROOT"] = str(nested)
    done = run_python(RUN, *args, env=env, timeout=200)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("PURE-PYTHON-REPORT ")]
    assert lines, output[-3000:]
    report = json.loads(lines[-1].removeprefix("PURE-PYTHON-REPORT "))
    # The fallback was taken, for the whole run: no compiled module was ever imported, requests never
    # took the compiled path (no header classes), and enrichment ran its Python loops.
    assert report["available"] is False and report["compiled"] is False, report
    assert report["loaded"] == [], report
    assert report["header_classes"] == [False, False, False], report
    assert report["python_loops"] is True, report
    assert report["calls"]["lookup"] > 0 and report["calls"]["join"] > 0, report
    # ... and the tests ran.
    summary = [line for line in done.stdout.splitlines() if " passed" in line]
    assert summary, output[-3000:]
    passed = int(summary[-1].split(" passed")[0].split()[-1])
    assert passed >= 100, summary[-1]
