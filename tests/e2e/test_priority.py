"""Scheduling priority: the request path's threads keep the process's priority, the others (the embedded
engine's inserts and merges above all) get `background_niceness`.

A thread's niceness cannot be lowered back without privileges, so each check runs in a process of its
own: a small script for ThreadPriority itself, `activity-collector serve` for the whole collector."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from helpers import make_activity, reap, start_serve, stop_serve, with_key

from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.priority import POLLER_NAME, TASKS

pytestmark = [
    pytest.mark.timeout(120),
    # Off Linux ThreadPriority does nothing by design (no /proc/self/task): nothing there to check.
    pytest.mark.skipif(not TASKS.is_dir(), reason="not Linux: thread priorities are left alone there"),
]

SCRIPT = """
import os, sys, threading
from workers.priority import ThreadPriority, keep_current_thread

niceness = int(sys.argv[1])
ids = {}
ready, done = threading.Barrier(3), threading.Event()

def worker(name, keep):
    if keep:
        keep_current_thread()
    ids[name] = threading.get_native_id()
    ready.wait()
    done.wait()

threads = [threading.Thread(target=worker, args=(n, n == "kept")) for n in ("kept", "plain")]
for t in threads:
    t.start()
ready.wait()
priority = ThreadPriority(niceness, interval_s=60)
priority.shutdown()  # safe before start
priority.start()
nice = {n: os.getpriority(os.PRIO_PROCESS, tid) for n, tid in ids.items()}
nice["main"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
priority.shutdown()
priority.shutdown()  # idempotent
done.set()
print(nice["main"], nice["kept"], nice["plain"], priority.lowered)
"""


def run_script(niceness: int) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(niceness)], capture_output=True, text=True, timeout=60, check=True
    )
    return [int(v) for v in out.stdout.split()]


def test_threads_off_the_request_path_get_the_niceness() -> None:
    main, kept, plain, lowered = run_script(7)
    assert (main, kept, plain) == (0, 0, 7)
    # The plain thread alone: no other runs in that process when start() sweeps first.
    assert lowered == 1


def test_niceness_zero_changes_nothing() -> None:
    assert run_script(0) == [0, 0, 0, 0]


def nice_by_thread(pid: int) -> dict[int, tuple[str, int]]:
    out: dict[int, tuple[str, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            out[int(tid)] = (name, os.getpriority(os.PRIO_PROCESS, int(tid)))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def test_the_collector_runs_its_engine_below_its_request_path(tmp_path: Path) -> None:
    proc, address, key = start_serve(tmp_path / "data")
    try:
        assert key is not None
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ActivityServiceStub(with_key(channel, key))
            response = stub.TrackActivities(
                pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(20)]), timeout=30
            )
            assert response.accepted_count == 20
        deadline = time.monotonic() + 30
        while True:
            threads = nice_by_thread(proc.pid)
            merges = [nice for name, nice in threads.values() if name.startswith("MergeMutate")]
            if (merges and set(merges) == {10}) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert merges and set(merges) == {10}, threads
        assert threads[proc.pid][1] == 0  # the event loop's thread
        transport = [nice for name, nice in threads.values() if name.startswith("event_engine")]
        assert transport and set(transport) == {0}
        # gRPC's asyncio poller, which wakes the event loop for every call, named for the kernel.
        assert [nice for name, nice in threads.values() if name == POLLER_NAME] == [0]
        assert stop_serve(proc) == 0
    finally:
        reap(proc)
