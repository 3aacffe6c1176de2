"""The examples run as a user runs them, against a live collector."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def readme_python_snippet() -> str:
    """The Python client snippet of the README (section "Clients")."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Clients\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def http_curl_example() -> list[str]:
    """The curl command of docs/http.md, as argv (after the key is exported as shown)."""
    text = (ROOT / "docs" / "http.md").read_text()
    block = text.split("$ curl ", 1)[1].split("\n{", 1)[0]
    return ["curl", *shlex.split(block.replace("\\\n", " "))]


async def test_the_readme_python_snippet_says_why_without_a_key(start_server: Any) -> None:
    server: CollectorServer = await start_server(auth=True)
    assert server.created_key is not None
    snippet = readme_python_snippet().replace("127.0.0.1:50051", server.address)
    env = {k: v for k, v in os.environ.items() if k != "ACTIVITY_API_KEY"}
    code, out, err = await run_env(sys.executable, "-c", snippet, env=env, cwd=ROOT)
    assert code == 0, err
    reason, accepted = out.splitlines()
    assert reason.startswith("1 activities not stored: UNAUTHENTICATED: missing API key")
    assert accepted == "accepted 0"
    env["ACTIVITY_API_KEY"] = server.created_key
    code, out, err = await run_env(sys.executable, "-c", snippet, env=env, cwd=ROOT)
    assert code == 0, err
    assert out.splitlines() == ["accepted 1"]


async def test_the_http_curl_example_is_accepted_with_the_key(start_server: Any) -> None:
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    server: CollectorServer = await start_server(auth=True)
    assert server.created_key is not None and server.http is not None
    url = server.http.url
    argv = [arg.replace("http://127.0.0.1:8080/v1/activities", url) for arg in http_curl_example()]
    env = {**os.environ, "ACTIVITY_API_KEY": server.created_key}
    # The shell would expand $ACTIVITY_API_KEY: so does this.
    argv = [arg.replace("$ACTIVITY_API_KEY", server.created_key) for arg in argv]
    code, out, err = await run_env(*argv, env=env, cwd=ROOT)
    assert code == 0, err
    answer = json.loads(out)
    assert answer.get("acceptedCount") == 1, answer
    assert answer["rejections"][0]["field"] == "target.id"
    header = next(n for n, arg in enumerate(argv) if arg.startswith("Authorization: Bearer "))
    assert argv[header - 1] == "-H"
    without = argv[: header - 1] + argv[header + 1 :]
    code, out, _ = await run_env(*without, "-w", "\n%{http_code}", env=env, cwd=ROOT)
    assert out.splitlines()[-1] == "401"


async def run_env(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
