"""Runs one measurement: a fresh server process, one load-generator process, the checks, the cleanup.

Every process started here is a child of the benchmark, in its own session, and is stopped in a
`finally`: SIGTERM first (the collector drains and flushes), SIGKILL after a timeout. Temporary data
directories are removed whatever happens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import Spec
from bench.procstat import MachineCpu, related_pids, status_kib
from bench.tracking_plan import RULES_PER_ACTION, ten_rule_plan
from bench.workload import SEGMENT

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\S+:\d+)")
METRICS_AT = re.compile(r"^metrics at (http://\S+)\s*$", re.MULTILINE)
HTTP_DOOR_AT = re.compile(r"^HTTP/JSON door at (http://\S+)/v1/activities\s*$", re.MULTILINE)
# The gauge of the tenants with a tracking plan in force on a collector.
PLANS_IN_FORCE = re.compile(r"^activity_collector_tracking_plans(?:\{\})? (\S+)\s*$", re.MULTILINE)
# The key a collector prints, alone on its line, when it creates the first tenant of a data directory.
API_KEY = re.compile(r"^(ak_\w+)\s*$", re.MULTILINE)
# Sent to the no-op server too, so that both servers get the same metadata.
DUMMY_KEY = "ak_bench_transport"


class BenchError(Exception):
    """A run could not be carried out; the message says why (with the tail of the relevant log)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str
    batch_size: int
    concurrency: int
    channels: int = 1
    streams: int = 1
    templates: int = 32
    description: str = ""

    def runs_against(self, target: str) -> bool:
        """The Segment door is the collector's: the no-op servers speak gRPC only. Nor does the Segment
        scenario run with a tracking plan: the plans of `--with-plan` are written for the gRPC workload
        (the built-in one requires session ids, which Segment's calls do not carry)."""
        if self.kind != SEGMENT:
            return True
        return target in COLLECTORS and target not in PLAN_TARGETS


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "unary-1", "unary", 1, 64, channels=4, templates=4096,
            description="TrackActivity, 1 activity per call, 64 concurrent callers on 4 connections",
        ),
        Scenario(
            "batch-100", "batch", 100, 8, templates=64,
            description="TrackActivities, 100 activities per call, 8 concurrent callers",
        ),
        Scenario(
            "batch-500", "batch", 500, 8, templates=32,
            description="TrackActivities, 500 activities per call, 8 concurrent callers",
        ),
        Scenario(
            "stream-500", "stream", 500, 8, templates=32,
            description="StreamActivities, one stream, 500 activities per batch, 8 batches in flight",
        ),
        Scenario(
            "segment-batch-100", SEGMENT, 100, 8, templates=64,
            description="Segment's POST /v1/batch on the HTTP port, 100 calls per request (JSON), "
            "8 concurrent callers; collectors only",
        ),
    )
}  # fmt: skip

# The product's runs, by target name: the collector settings each adds to `--server-env`. `collector`
# runs as shipped (the durable spool on: activities are acknowledged once fsynced to the spool and
# inserted behind); `collector-nospool` acknowledges only once the insert is committed to ClickHouse.
COLLECTORS: dict[str, dict[str, str]] = {
    "collector": {"ACTIVITY_SPOOL": "true"},
    "collector-nospool": {"ACTIVITY_SPOOL": "false"},
    "collector-plan": {"ACTIVITY_SPOOL": "true"},
}
# Collector targets whose run applies a tracking plan to the load generator's tenant (`--with-plan`):
# after the server printed its key and before the load starts, and waited for until it is in force.
PLAN_TARGETS = frozenset({"collector-plan"})
# The baselines: `transport`, the no-op server; `transport-commit`, the same answering after an empty
# group-commit hop (`bench/noop_server.py --group-commit`), the floor of any acknowledgement that waits
# for an off-loop write in one asyncio process.
NOOP_SERVERS: dict[str, list[str]] = {"transport": [], "transport-commit": ["--group-commit"]}
TARGETS = (*COLLECTORS, *NOOP_SERVERS)


# Package directories of the product, relative to the repository root (the client under clients/python).
PRODUCT_PACKAGES = ("core", "collector", "workers", "clients/python/activity_client")
# Where child processes import the product from, ahead of the working tree (see `snapshot_sources`).
_source_root: Path | None = None


def copy_sources(into: Path) -> Path:
    """Copy the product's packages (sources and any compiled extension) into `into`."""
    for package in PRODUCT_PACKAGES:
        shutil.copytree(
            ROOT / package, into / Path(package).name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return into


def snapshot_sources(into: Path) -> Path:
    """`copy_sources`, and make every child process import the product from there: edits made to the
    working tree while the benchmark runs do not reach the servers it starts. (The editable install's
    finder comes after PYTHONPATH.)"""
    global _source_root
    _source_root = copy_sources(into)
    return into


def source_digest(root: Path | None = None) -> str:
    """Digest of the product's Python and C sources and extensions (core/, collector/, workers/, the
    client) under `root` (default: the sources the children import)."""
    root = root or _source_root or ROOT
    digest = hashlib.sha256()
    for package in PRODUCT_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.suffix not in (".py", ".c", ".so") or "__pycache__" in path.parts:
                continue
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            with contextlib.suppress(OSError):
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def collector_settings(given: list[str]) -> dict[str, str]:
    """`--setting NAME=VALUE` arguments as the collector's environment (`ACTIVITY_NAME=VALUE`);
    ValueError naming the one that is not NAME=VALUE."""
    settings: dict[str, str] = {}
    for one in given:
        name, equals, value = one.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"--setting: NAME=VALUE, got {one!r}")
        settings[f"ACTIVITY_{name.strip().upper()}"] = value.strip()
    return settings


def child_env(extra: dict[str, str] | None = None, sources: Path | None = None) -> dict[str, str]:
    """The environment of every child: ours without ACTIVITY_* settings (runs must not depend on the
    caller's shell), plus `extra`, with the product's sources (`sources`, else the snapshot if one was
    taken) and the project root importable (bench/ is not installed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVITY_")}
    env.update(extra or {})
    first = sources or _source_root
    paths = [str(p) for base in (first, ROOT) if base is not None for p in (base, base / "clients/python")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    # `python -m` would put its working directory (the repository root) ahead of PYTHONPATH, and with it
    # the working tree's packages ahead of the snapshot.
    env["PYTHONSAFEPATH"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def wait_until_idle(max_wait_s: float, threshold_cores: float = 0.3) -> float:
    """Wait (up to `max_wait_s`) for a 1-second sample in which the machine is nearly idle; the busy
    cores of the last sample."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = MachineCpu.read()
        time.sleep(1.0)
        busy = MachineCpu.read().busy_cores_since(before)
        if busy <= threshold_cores or time.monotonic() >= deadline:
            return busy


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def noop_argv(target: str) -> list[str]:
    """The command line of a no-op server target (`NOOP_SERVERS`)."""
    return [sys.executable, "-m", "bench.noop_server", "--listen", "127.0.0.1:0", *NOOP_SERVERS[target]]


class ServerProcess:
    """A server subprocess whose stdout and stderr go to a log file; `start` waits for its
    "listening on HOST:PORT" line."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.api_key: str | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> str:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"server exited with {self.proc.returncode} before listening:\n{_tail(self.log_path)}"
                )
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            match = LISTENING.search(text)
            if match:
                self.address = match.group(1)
                key = API_KEY.search(text)
                self.api_key = key.group(1) if key else None
                return self.address
            time.sleep(0.05)
        raise BenchError(f"server not listening after {timeout:.0f} s:\n{_tail(self.log_path)}")

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str] | None:
        """The first match of `pattern` in the server's log, waiting up to `timeout` for it (lines printed
        after "listening on" may not be there yet); None if it does not come."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.log_path.read_text(encoding="utf-8", errors="replace"))
            exited = self.proc is not None and self.proc.poll() is not None
            if match or exited or time.monotonic() >= deadline:
                return match
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (negative: killed by that signal)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return proc.returncode

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


@dataclass
class RunOptions:
    warmup_s: float
    duration_s: float
    drain_timeout_s: float = 60.0
    rpc_timeout_s: float = 60.0
    server_env: dict[str, str] | None = None
    keep_logs: Path | None = None
    profile_dir: Path | None = None
    profile_native: bool = False
    server_log_level: str = "warning"
    wait_idle_s: float = 0.0
    rate: float = 0.0
    """Activities per second offered by the load generator; 0: closed loop."""
    plan_file: Path | None = None
    """The tracking plan the `PLAN_TARGETS` apply; None: `bench.tracking_plan.ten_rule_plan()`."""


_serve_flags: dict[str, set[str]] = {}


def serve_flags(env: dict[str, str]) -> set[str]:
    """The options `activity-collector serve` accepts (they vary with the product's version)."""
    key = env["PYTHONPATH"]
    if key not in _serve_flags:
        done = subprocess.run(
            [sys.executable, "-m", "collector.cli", "serve", "--help"],
            capture_output=True,
            cwd=ROOT,
            env=env,
            timeout=120,
            check=False,
        )
        _serve_flags[key] = set(re.findall(r"--[a-z][a-z-]*", done.stdout.decode(errors="replace")))
    return _serve_flags[key]


def collector_argv(data_dir: Path, log_level: str, env: dict[str, str]) -> list[str]:
    argv = [
        sys.executable, "-m", "collector.cli", "serve", "--listen", "127.0.0.1:0",
        "--data-dir", str(data_dir), "--log-level", log_level,
    ]  # fmt: skip
    # Side doors (HTTP/JSON, metrics) stay on, as deployed, but on free ports: fixed defaults could
    # collide with anything else running on the machine.
    for flag in ("--http-listen", "--metrics-listen"):
        if flag in serve_flags(env):
            argv += [flag, "127.0.0.1:0"]
    return argv


def stop_leftovers(marker: Path) -> list[int]:
    """Kill (by pid) processes still running from a run's directory, e.g. an embedded database the
    server failed to stop; their pids."""
    killed = []
    for pid in related_pids(-1, str(marker)) - {-1, os.getpid()}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def run_loadgen(spec: Spec, workdir: Path, opts: RunOptions) -> dict[str, Any]:
    out = workdir / "loadgen.json"
    log = workdir / "loadgen.log"
    timeout = spec.warmup_s + spec.duration_s + spec.drain_timeout_s + 120
    with open(log, "wb") as log_file:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bench.loadgen", json.dumps(asdict(spec)), str(out)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=child_env(),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"load generator still running after {timeout:.0f} s:\n{_tail(log)}") from None
    if done.returncode != 0 or not out.exists():
        raise BenchError(f"load generator failed with {done.returncode}:\n{_tail(log)}")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def count_rows(data_dir: Path, env: dict[str, str]) -> tuple[int, int]:
    """(rows, distinct ids) in the activities table, asked with `activity-collector sql` (which goes
    through the running collector's control socket)."""
    done = subprocess.run(
        [
            sys.executable, "-m", "collector.cli", "sql", "--data-dir", str(data_dir),
            "SELECT count(), uniqExact(id) FROM activities", "--format", "tsv",
        ],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=180,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"counting rows failed: {done.stderr.decode(errors='replace').strip()}")
    lines = done.stdout.decode().strip().splitlines()
    rows, ids = lines[-1].split("\t")
    return int(rows), int(ids)


def _count_via_socket(data_dir: Path) -> int | None:
    """count() of the activities table straight over the collector's control socket (the protocol
    of `collector.process.control`: a JSON line in, a JSON header line and the result out); None if that
    fails."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect(str(data_dir.resolve() / "control.sock"))
            request = {"sql": "SELECT count() FROM activities", "format": "TabSeparated"}
            conn.sendall(json.dumps(request).encode() + b"\n")
            with conn.makefile("rb") as stream:
                if not json.loads(stream.readline() or b"{}").get("ok"):
                    return None
                return int(stream.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_for_rows(data_dir: Path, expected: int, env: dict[str, str], timeout: float = 180.0) -> float | None:
    """Wait until the activities table holds `expected` rows (acknowledged activities may still be on
    their way to ClickHouse, e.g. in a spool); the monotonic time they were seen, or None if the count
    stopped growing for 30 s or `timeout` passed first."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        rows = _count_via_socket(data_dir)
        if rows is None:
            rows = count_rows(data_dir, env)[0]
        now = time.monotonic()
        if rows >= expected:
            return now
        if rows != last:
            last, last_change = rows, now
        elif now - last_change > 30:
            return None
        time.sleep(0.2)
    return None


def plans_in_force(metrics_text: str) -> int | None:
    """The collector's `activity_collector_tracking_plans` gauge in a /metrics page; None if absent."""
    match = PLANS_IN_FORCE.search(metrics_text)
    return None if match is None else int(float(match.group(1)))


def apply_plan(
    server: ServerProcess, data_dir: Path, plan_file: Path | None, env: dict[str, str], timeout: float = 60.0
) -> dict[str, Any]:
    """Apply a tracking plan to the tenant the load generator sends as, through the running server's
    PostgreSQL (`activity-collector plans apply --data-dir`, as an operator would), and wait until the
    server has it in force (its /metrics gauge `activity_collector_tracking_plans`). What was applied
    and how long it took to be in force."""
    metrics = server.wait_for_line(METRICS_AT)
    if metrics is None:
        raise BenchError(
            "--with-plan needs the collector's /metrics (to see the plan in force); "
            f"no 'metrics at' line:\n{_tail(server.log_path)}"
        )
    url = metrics.group(1)
    if plan_file is None:
        plan_file = data_dir.parent / "tracking-plan.json"
        plan_file.write_text(json.dumps(ten_rule_plan(), indent=1), encoding="utf-8")
        which = f"built-in, {RULES_PER_ACTION} rules per action"
    else:
        which = str(plan_file)
    tenant = env.get("ACTIVITY_DEFAULT_TENANT", "default")
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable, "-m", "collector.cli", "plans", "apply", "--tenant", tenant, str(plan_file),
            "--data-dir", str(data_dir),
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        raise BenchError(f"plans apply failed with {done.returncode}: {output}")
    applied = time.monotonic()
    deadline = applied + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                count = plans_in_force(answer.read().decode(errors="replace"))
        except OSError:
            count = None
        if count:
            break
        if time.monotonic() >= deadline:
            raise BenchError(
                f"the tracking plan applied to tenant {tenant} was not in force after {timeout:.0f} s "
                f"(activity_collector_tracking_plans at {url}: {count})"
            )
        time.sleep(0.1)
    return {
        "plan": which,
        "tenant": tenant,
        "apply_s": round(applied - started, 2),
        "in_force_after_s": round(time.monotonic() - applied, 2),
    }


def _start_profiler(pid: int, path: Path, seconds: float, native: bool) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("  (py-spy not found: pip install py-spy; profiling skipped)", flush=True)
        return None
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "97"]
    argv += ["--format", "raw", "--output", str(path), "--nonblocking"]
    if native:
        argv.append("--native")
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )


def measure(
    scenario: Scenario, target: str, seed: int, opts: RunOptions, profile: bool = False
) -> dict[str, Any]:
    """One run of `scenario` against a fresh `target` server; the figures of that run."""
    if opts.wait_idle_s:
        wait_until_idle(opts.wait_idle_s)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{scenario.name}-{target}-"))
    server_env = child_env({**(opts.server_env or {}), **COLLECTORS.get(target, {})})
    if target in COLLECTORS:
        argv = collector_argv(workdir / "data", opts.server_log_level, server_env)
    elif target in NOOP_SERVERS:
        argv = noop_argv(target)
    else:
        raise ValueError(f"unknown target {target!r}")
    server = ServerProcess(argv, workdir / "server.log", server_env)
    profiler: subprocess.Popen[bytes] | None = None
    try:
        address = server.start()
        plan = None
        if target in PLAN_TARGETS:
            # Before the load generator starts: none of this is in the measured window.
            plan = apply_plan(server, workdir / "data", opts.plan_file, server_env)
        if scenario.kind == SEGMENT:
            door = server.wait_for_line(HTTP_DOOR_AT)
            if door is None:
                raise BenchError(f"the server shows no HTTP door:\n{_tail(server.log_path)}")
            address = door.group(1)
        spec = Spec(
            target=address,
            kind=scenario.kind,
            batch_size=scenario.batch_size,
            concurrency=scenario.concurrency,
            streams=scenario.streams,
            channels=scenario.channels,
            templates=scenario.templates,
            seed=seed,
            warmup_s=opts.warmup_s,
            duration_s=opts.duration_s,
            drain_timeout_s=opts.drain_timeout_s,
            rpc_timeout_s=opts.rpc_timeout_s,
            server_pid=server.pid,
            server_marker=str(workdir),
            api_key=server.api_key if target in COLLECTORS else DUMMY_KEY,
            rate=opts.rate,
        )
        if profile and opts.profile_dir is not None:
            opts.profile_dir.mkdir(parents=True, exist_ok=True)
            profile_path = opts.profile_dir / f"{scenario.name}-{target}.txt"
            # Starts with the load generator: its template building (~1 s) and the warm-up precede the
            # window, so the profile covers the warm-up's tail and the window.
            profiler = _start_profiler(
                server.pid, profile_path, opts.warmup_s + opts.duration_s + 1, opts.profile_native
            )
        load = run_loadgen(spec, workdir, opts)
        peak_rss_kib = status_kib(server.pid, "VmHWM")
        rows = ids = None
        committed_at = None
        if target in COLLECTORS:
            committed_at = wait_for_rows(workdir / "data", load["acked_total"], server_env)
            rows, ids = count_rows(workdir / "data", server_env)
        exit_code = server.stop()
        leftovers = stop_leftovers(workdir)
        if leftovers:
            print(f"    note: killed {len(leftovers)} process(es) left running by the server", flush=True)
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
        record = summarize(scenario, target, load, rows, ids, peak_rss_kib, exit_code, committed_at)
        if plan is not None:
            record["plan"] = plan
        return record
    finally:
        server.kill()
        stop_leftovers(workdir)
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
            profiler.wait()
        if opts.keep_logs is not None:
            opts.keep_logs.mkdir(parents=True, exist_ok=True)
            for name in ("server.log", "loadgen.log"):
                if (workdir / name).exists():
                    shutil.copy(workdir / name, opts.keep_logs / f"{scenario.name}-{target}-{name}")
        shutil.rmtree(workdir, ignore_errors=True)


def summarize(
    scenario: Scenario,
    target: str,
    load: dict[str, Any],
    rows: int | None,
    ids: int | None,
    peak_rss_kib: int | None,
    exit_code: int | None,
    committed_at: float | None = None,
) -> dict[str, Any]:
    window = load["window_s"] or float("nan")
    acked = load["acked_window"]
    server_cpu = load["server_group_cpu_s"]
    if server_cpu is None:
        server_cpu = load["server_cpu_s"]
    latency = load["latency_ms"]
    figures: dict[str, Any] = {
        "acked_per_s": acked / window,
        "requests_per_s": load["requests_window"] / window,
        "latency_p50_ms": latency.get("p50"),
        "latency_p99_ms": latency.get("p99"),
        "latency_max_ms": latency.get("max"),
        "server_cpu_us_per_activity": server_cpu / acked * 1e6 if server_cpu is not None and acked else None,
        "server_cpu_cores": server_cpu / window if server_cpu is not None else None,
        "server_helper_cpu_cores": (server_cpu - load["server_cpu_s"]) / window
        if server_cpu is not None and load["server_cpu_s"] is not None
        else None,
        "server_peak_rss_mib": peak_rss_kib / 1024 if peak_rss_kib else None,
        "loadgen_cpu_cores": load["gen_cpu_s"] / window,
        "machine_busy_cores": load["machine_busy_cores"],
        "interrupt_cpu_cores": load["machine_interrupt_cores"],
    }
    if figures["server_cpu_cores"] is not None:
        # CPU used by neither the server, nor the load generator, nor interrupts: other processes
        # disturbing the run (another benchmark, a test suite, a build).
        figures["other_cpu_cores"] = max(
            0.0,
            load["machine_busy_cores"]
            - load["machine_interrupt_cores"]
            - figures["server_cpu_cores"]
            - figures["loadgen_cpu_cores"],
        )
    problems: list[str] = []
    if rows is not None:
        figures["committed_rows"] = rows
        if committed_at is not None and load.get("first_send_mono"):
            # From the first request to the moment every acknowledged row was visible in ClickHouse.
            figures["committed_rows_per_s"] = rows / (committed_at - load["first_send_mono"])
            figures["commit_lag_s"] = max(0.0, committed_at - load["last_ack_mono"])
        if rows != load["acked_total"]:
            problems.append(f"rows in ClickHouse {rows} != acknowledged {load['acked_total']}")
        if ids != rows:
            problems.append(f"distinct ids {ids} != rows {rows}")
    if load["errors"]:
        problems.append(f"failed requests: {load['errors']}")
    if load["rejected_total"]:
        problems.append(f"{load['rejected_total']} activities rejected")
    if load["drain_timed_out"]:
        problems.append("requests still in flight after the drain timeout")
    if exit_code not in (0, None):
        problems.append(f"server exit code {exit_code}")
    if problems and load["samples"]:
        problems.append("samples: " + " | ".join(load["samples"]))
    return {
        "scenario": scenario.name,
        "target": target,
        "figures": figures,
        "check_ok": not problems,
        "problems": problems,
        "acked_total": load["acked_total"],
        "server_exit_code": exit_code,
        "loadgen": load,
    }


def measure_storage(rows: int, insert_rows: int, seed: int, wait_idle_s: float = 0.0) -> dict[str, Any]:
    if wait_idle_s:
        wait_until_idle(wait_idle_s)
    workdir = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    out = workdir / "storage.json"
    log = workdir / "storage.log"
    try:
        with open(log, "wb") as log_file:
            try:
                done = subprocess.run(
                    [
                        sys.executable, "-m", "bench.storage_ceiling", str(out), "--data-dir",
                        str(workdir / "data"), "--rows", str(rows), "--insert-rows", str(insert_rows),
                        "--seed", str(seed),
                    ],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=ROOT,
                    env=child_env(),
                    timeout=600,
                    check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise BenchError(f"storage ceiling still running after 600 s:\n{_tail(log)}") from None
        if done.returncode != 0 or not out.exists():
            raise BenchError(f"storage ceiling failed with {done.returncode}:\n{_tail(log)}")
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        result["check_ok"] = result["counted"] == result["rows"]
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
