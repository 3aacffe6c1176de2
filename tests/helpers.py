"""Builders shared by the tests."""

from __future__ import annotations

import asyncio
import fcntl
import inspect
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from core.proto.activity.v1 import activity_pb2 as pb
from workers.privacy.erasure import ErasureStore, Receipt


def make_activity(n: int = 0, **fields: Any) -> pb.Activity:
    """A valid activity with every commonly sent field filled; keyword arguments replace fields."""
    activity = pb.Activity(
        id=str(uuid.uuid4()),
        action="view",
        target=pb.Target(type="product", id=f"sku-{n}", attributes={"color": "red"}),
        user=pb.User(session_id=f"s-{n % 7}", anonymous_id=f"anon-{n % 11}", user_id=f"u-{n % 5}"),
        metadata=pb.Metadata(locale="en-US", device_type="mobile", page_url=f"https://shop.example/p/{n}"),
    )
    for name, value in fields.items():
        if isinstance(value, (pb.Target, pb.User, pb.Metadata, pb.Source)):
            getattr(activity, name).CopyFrom(value)
        elif name == "segments":
            activity.segments[:] = value
        else:
            setattr(activity, name, value)
    return activity


def items(activities: list[pb.Activity], indexes: Any = None) -> list[tuple[int, pb.Activity]]:
    """(index, activity) pairs, as the pipeline takes them; all of them unless `indexes` says which."""
    chosen = range(len(activities)) if indexes is None else indexes
    return [(i, activities[i]) for i in chosen]


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str | Callable[[], str],
    timeout: float = 20.0,
) -> None:
    """Poll `condition` (a function, or a coroutine function such as a query) until it holds; fail
    naming `what` (or what `what()` says then) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.02)


async def receipt_until(
    jobs: ErasureStore, job: int, condition: Callable[[Receipt], bool], what: str, timeout: float = 60
) -> Receipt:
    """Poll an erasure job's receipt until `condition` holds; fail naming `what` (and the receipt) after
    `timeout` seconds, or at once when the job failed."""
    last: list[Receipt] = []

    async def reached() -> bool:
        receipt = await jobs.receipt(job)
        assert receipt is not None
        last[:] = [receipt]
        if condition(receipt):
            return True
        assert receipt.state != "failed", receipt.error
        return False

    await wait_for(reached, lambda: f"{what}: {last[0] if last else None}", timeout)
    return last[0]


def hold_inserts(server: Any, monkeypatch: Any) -> threading.Event:
    """Hold every insert of a started `server` (spool off) on its insert thread until the returned
    event is set: what it admits stays pending for as long as a test needs, however slow the machine.
    Set the event before the test ends (a held insert gives up waiting after a minute). Not a fake: the
    real store still does every insert; only when it starts is held."""
    store = server.pipeline.commit.store
    insert = store.insert_rows
    release = threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        release.wait(60)
        return insert(*args, **kwargs)

    monkeypatch.setattr(store, "insert_rows", held)
    return release


ROOT = Path(__file__).resolve().parents[1]


def install_node_modules(package: str) -> None:
    """`npm ci` in the checkout (from its package-lock.json) when `package` is not in node_modules yet.
    Test processes running at once (the workers of scripts/test) take turns, holding a lock on
    package-lock.json, and look again once they hold it: `npm ci` starts by deleting node_modules, which
    would pull it from under another process's install or its running tests."""
    if (ROOT / "node_modules" / package).is_dir():
        return
    npm = shutil.which("npm")
    assert npm is not None, "npm is not on PATH"
    with open(ROOT / "package-lock.json") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (ROOT / "node_modules" / package).is_dir():
            return
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr


def start_serve(data: Path, *extra: str) -> tuple[subprocess.Popen[str], str, str | None]:
    """`activity-collector serve` in its own process on `data`, every port of its choosing (one chosen
    here could be taken before the server binds it): the process, its gRPC address, and the API key its
    first start created, if it did."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector.cli",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    address, key = read_start(proc)
    return proc, address, key


def stop_serve(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """Stop a served process as an operator does (SIGTERM) and wait for it: its exit status."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill `proc` if it still runs: the end of a test that failed before it stopped the process."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying `key`."""
    return (("authorization", f"Bearer {key}"),)


def read_start(proc: subprocess.Popen[str]) -> tuple[str, str | None]:
    """The address a starting `serve` listens on, and the API key it created, if it did (printed
    before, when there was no tenant yet)."""
    assert proc.stdout is not None
    lines = []
    while True:
        line = proc.stdout.readline()
        lines.append(line)
        if "listening on" in line or not line:
            break
    assert "listening on 127.0.0.1:" in line, "".join(lines) + (proc.stderr.read() if proc.stderr else "")
    key = next((text.strip() for text in lines if text.startswith("ak_")), None)
    return line.split("listening on ", 1)[1].split()[0], key


class _Key(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, key: str) -> None:
        self.metadata = (("authorization", f"Bearer {key}"),)

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self.metadata))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def with_key(channel: grpc.Channel, key: str) -> grpc.Channel:
    """`channel`, sending `key` as the `authorization: Bearer` metadata of every call."""
    return grpc.intercept_channel(channel, _Key(key))


def self_signed_certificate(where: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 and its key, made by openssl in `where`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        # Only on a machine without the command: the TLS tests cannot make their certificate there.
        pytest.skip("making a test certificate needs the openssl command")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            openssl,
            *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def store_flags(engine_dir: Path, database: str) -> list[str]:
    """The flags that point a command (`report`, `sql`) at `database` of the engine in `engine_dir`."""
    return [
        "--data-dir",
        str(engine_dir.parent),
        "--clickhouse-dsn",
        f"chdb://{engine_dir}",
        "--clickhouse-database",
        database,
    ]
