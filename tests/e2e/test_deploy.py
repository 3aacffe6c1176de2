"""The deployment files, checked without docker: what the image and the compose file would run is
validated by the collector's own configuration, and the image's entry point and health check command run
here as the container would run them (on loopback ports)."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from helpers import read_start, reap, stop_serve

from collector.config import load_settings

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        instruction, _, args = pending.strip().partition(" ")
        lines.append((instruction.upper(), args.strip()))
        pending = ""
    return lines


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(instruction: str) -> list[str]:
    [args] = [a for i, a in dockerfile() if i == instruction]
    if instruction == "HEALTHCHECK":
        args = args[args.index("CMD") + 3 :].strip()
    parsed: list[str] = json.loads(args)
    return parsed


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_the_image_settings_are_valid_and_expose_the_ports_they_listen_on() -> None:
    env = image_env()
    settings = load_settings(environ=env)
    ports = {int(p) for i, a in dockerfile() if i == "EXPOSE" for p in a.split()}
    listened = {
        int(v.rpartition(":")[2]) for v in (settings.listen, settings.http_listen, settings.metrics_listen)
    }
    assert ports == listened == {50051, 8080, 9464}
    assert str(settings.data_dir) in {a.strip('[]" ') for i, a in dockerfile() if i == "VOLUME"}


def test_the_entry_point_is_the_packaged_command() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert exec_form("ENTRYPOINT")[0] in scripts
    assert exec_form("HEALTHCHECK")[0] in scripts
    assert exec_form("CMD") == ["serve"]


def test_compose_wires_the_collector_to_the_clickhouse_server_and_postgresql() -> None:
    services = compose()["services"]
    clickhouse, collector, postgres = services["clickhouse"], services["collector"], services["postgres"]
    assert clickhouse["image"].startswith("clickhouse/clickhouse-server:")
    assert postgres["image"].startswith("postgres:")
    assert collector["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert collector["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert collector["build"] == "."

    # What the container would run with: the image's environment under the compose file's.
    environment = {**image_env(), **{k: str(v) for k, v in collector["environment"].items()}}
    settings = load_settings(environ=environment)
    dsn = urlsplit(settings.clickhouse_dsn)
    assert (dsn.scheme, dsn.hostname, dsn.port) == ("http", "clickhouse", 8123)
    assert (dsn.username, dsn.password) == (
        clickhouse["environment"]["CLICKHOUSE_USER"],
        clickhouse["environment"]["CLICKHOUSE_PASSWORD"],
    )
    pg = urlsplit(settings.postgres_dsn)
    assert (pg.scheme, pg.hostname, pg.port, pg.path) == (
        "postgresql",
        "postgres",
        5432,
        "/" + postgres["environment"]["POSTGRES_DB"],
    )
    assert (pg.username, pg.password) == (
        postgres["environment"]["POSTGRES_USER"],
        postgres["environment"]["POSTGRES_PASSWORD"],
    )
    published = {int(p.rpartition(":")[2]) for p in collector["ports"]}
    assert published == {50051, 8080, 9464}
    # The container gets longer to stop than the collector takes to drain.
    grace = int(collector["stop_grace_period"].rstrip("s"))
    assert grace > settings.shutdown_grace_s
    assert any(v.endswith(":" + str(settings.data_dir)) for v in collector["volumes"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_entry_point_serves_and_the_health_check_passes(tmp_path: Path) -> None:
    grpc_port = free_port()
    env = {
        **os.environ,
        **image_env(),
        # The image's settings, on loopback ports and a local data directory.
        "ACTIVITY_LISTEN": f"127.0.0.1:{grpc_port}",
        "ACTIVITY_HTTP_LISTEN": "127.0.0.1:0",
        "ACTIVITY_METRICS_LISTEN": "127.0.0.1:0",
        "ACTIVITY_DATA_DIR": str(tmp_path / "data"),
    }
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(
        [*exec_form("ENTRYPOINT"), *exec_form("CMD")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address, _ = read_start(proc)
        assert address == f"127.0.0.1:{grpc_port}"
        health = exec_form("HEALTHCHECK")
        health[health.index("--target") + 1] = f"127.0.0.1:{grpc_port}"
        checked = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        assert "SERVING" in checked.stdout
        assert stop_serve(proc) == 0
    finally:
        reap(proc)
    # Nothing answers any more: the health check fails.
    gone = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1
    assert re.search(r"UNAVAILABLE", gone.stderr)


def test_the_image_ships_the_compiled_modules() -> None:
    """The wheel is built where a compiler is (setup.py declares the extensions), and the image's own
    install imports them, so that an image without them fails to build instead of running slower."""
    steps = dockerfile()
    froms = [a for i, a in steps if i == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    copies = [a for i, a in steps if i == "COPY"]
    assert any("setup.py" in a.split() for a in copies)
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert "gcc" in runs and "pip wheel" in runs
    extensions = re.findall(r'"([\w.]+)",\s*\[', (ROOT / "setup.py").read_text())
    assert extensions == ["core._fastpath", "workers.enrichment._lookups"]
    final_install = [a for i, a in steps if i == "RUN" and "/wheels/*.whl" in a]
    assert final_install and f"import {', '.join(extensions)}" in final_install[0]
