"""The examples run as a user runs them, against a live collector."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from collector.process.server import CollectorServer

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
NODE_EXAMPLE = ROOT / "examples" / "node"


async def run(*args: str, cwd: Path, timeout: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture(scope="session")
def node_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/node with its dependencies installed (`npm ci`, from package-lock.json)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the Node.js example needs `node` and `npm` on PATH")
    work = tmp_path_factory.mktemp("node-example")
    for name in ("package.json", "package-lock.json", "track.js"):
        shutil.copy(NODE_EXAMPLE / name, work / name)
    installed = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return work


async def test_node_example_tracks_activities(node_example: Path, server: CollectorServer) -> None:
    node = shutil.which("node")
    assert node is not None
    code, out, err = await run(
        node,
        "track.js",
        "--target",
        server.address,
        "--protos",
        str(ROOT / "protos"),
        cwd=node_example,
        timeout=60,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["batch"] == {
        "accepted_count": 2,
        "rejections": [{"index": 2, "reason": "REJECTION_REASON_MISSING_FIELD", "field": "target.id"}],
    }
    assert summary["stream"] == [
        {"sequence": 1, "accepted_count": 2, "code": 0},
        {"sequence": 2, "accepted_count": 1, "code": 0},
    ]
    assert server.store is not None
    text = server.store.query(
        "SELECT id, action, target_id, price, currency FROM activities ORDER BY target_id, action",
        "TabSeparated",
    ).decode()
    got = [line.split("\t") for line in text.splitlines()]
    assert [row[1:] for row in got] == [
        ["add_to_cart", "sku-1001", "1999", "EUR"],
        ["view", "sku-1001", "\\N", ""],
        ["purchase", "sku-2001", "500", "USD"],
        ["view", "sku-2001", "\\N", ""],
        ["view", "sku-2002", "\\N", ""],
    ]
    # The ids the script chose are the ones stored.
    assert set(summary["sent_ids"][:2]) <= {row[0] for row in got}
