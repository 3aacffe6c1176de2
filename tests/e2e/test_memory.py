"""Memory under overload: a `serve` process offered far more than it can take refuses the excess and
keeps its peak RSS under the cap that docs/delivery.md ("Memory under load") derives from its settings."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import ROOT, reap, start_serve, stop_serve

from collector.config import Settings, load_config

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024
READ_AHEAD = 64 * 1024
"""What gRPC reads of a stream ahead of its handler (grpc.http2.lookahead_bytes, BDP probing off); also
what the transport admits over max_request_bytes."""
ENGINE_INSERT_FIXED = 48 * MiB
ENGINE_INSERT_PER_BYTE = 8
"""The embedded engine's memory for one insert, measured on the product's schema: about 48 MiB, plus 8
bytes per byte of rows."""
SLACK = 1.2
"""On the terms that grow with the load: the allocator keeps part of what was freed for reuse."""

CONFIG = """\
auth = false
shutdown_grace_s = 2.0
[limits]
max_request_bytes = 1048576
max_activity_bytes = 4096
max_batch_activities = 250
max_concurrent_streams = 16
max_stream_in_flight = 4
[pipeline]
queue_capacity = 2000
insert_max_rows = 2000
insert_workers = 2
spool_capacity_bytes = 268435456
"""
CLIENTS = 4
"""Client processes, one connection each."""
STREAMS, CALLERS = 4, 4
"""Per client: StreamActivities streams and TrackActivities callers, all sending as fast as they can."""
SECONDS = 5


def memory_cap(settings: Settings, rest: int, connections: int) -> int:
    """The peak RSS, in bytes, that `settings` admit with `connections` client connections, on the
    embedded engine, for a process whose RSS at rest is `rest` (docs/delivery.md)."""
    limits, pipeline = settings.limits, settings.pipeline
    admitted = 3 * pipeline.queue_capacity * limits.max_activity_bytes
    per_stream = (limits.max_stream_in_flight + 1) * (limits.max_request_bytes + READ_AHEAD) + READ_AHEAD
    reading = connections * limits.max_concurrent_streams * per_stream
    inserting = pipeline.insert_workers * (
        ENGINE_INSERT_FIXED + ENGINE_INSERT_PER_BYTE * pipeline.insert_max_rows * limits.max_activity_bytes
    )
    return rest + int(SLACK * (admitted + reading + inserting))


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of `pid`, in bytes."""
    figures = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                figures[name] = int(value.split()[0]) * 1024
    return figures


def test_overload_is_refused_and_memory_stays_under_the_cap_of_the_settings(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(CONFIG)
    settings = load_config(config_file=config, environ={}).settings
    proc, address, _ = start_serve(tmp_path / "data", "--config", str(config))
    assert proc.stderr is not None
    stderr = proc.stderr
    threading.Thread(target=lambda: collections.deque(stderr, maxlen=0), daemon=True).start()
    try:
        rest = memory(proc.pid)["VmRSS"]
        clients = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "tests" / "overload.py"),
                    address,
                    str(SECONDS),
                    str(STREAMS),
                    str(CALLERS),
                    str(settings.limits.max_batch_activities),
                    # The largest activity the settings take, less room for the ids the server adds.
                    str(settings.limits.max_activity_bytes - 256),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for _ in range(CLIENTS)
        ]
        codes: collections.Counter[str] = collections.Counter()
        for client in clients:
            out, _ = client.communicate(timeout=60)
            assert client.returncode == 0
            codes.update(json.loads(out))
        peak = memory(proc.pid)["VmHWM"]
        assert stop_serve(proc) == 0
    finally:
        reap(proc)
    # Overload is answered, and answered with a code that tells the client to come back later.
    assert codes["RESOURCE_EXHAUSTED"] > 0 and codes["OK"] > 0, codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    cap = memory_cap(settings, rest, connections=CLIENTS)
    assert peak <= cap, (
        f"peak RSS {peak / MiB:.0f} MiB over the cap of {cap / MiB:.0f} MiB (at rest {rest / MiB:.0f})"
    )
