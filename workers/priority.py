"""Scheduling priority: the request path first, the rest of the process when there is CPU to spare.

The collector's request path runs on the event loop's thread, gRPC's transport threads and the spool
writer. Everything else in the process is background work: above all the embedded ClickHouse engine's
inserts and merges, which take a core or more under load and, competing for the same cores, delay the
acknowledgements by tens of milliseconds at the tail. `ThreadPriority` gives every thread off the
request path a higher niceness (`background_niceness`, 10 by default): the kernel runs the request
path first and the engine on the CPU left over. What is acknowledged does not change; with the spool
on, an engine short of CPU lets the spool grow (bounded by `spool_capacity_bytes`), with the spool off
it makes the acknowledgements wait for their insert as before.

Threads appear while the process runs (the engine grows its pools on demand, and thread ids are
reused), so every thread is checked again every second: a few dozen reads of /proc. Request-path
threads are known by their native id (the thread that starts this, those that call
`keep_current_thread`, and gRPC's asyncio poller, found by its Python name) or by name (gRPC's own).
Linux only: elsewhere, and where the kernel refuses, threads keep the process's priority. Raising
niceness needs no privilege; lowering it back would, so a thread is never moved back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

TASKS = Path("/proc/self/task")
REQUEST_PATH_NAMES = ("event_engine", "grpc_")
"""Prefixes of the names of gRPC's transport threads (grpcio's C core names them)."""
POLLER_TARGET = "_poll_wrapper"
"""The Python thread of gRPC's asyncio server that waits on the completion queue and wakes the event
loop for every call's events (`Thread-N (_poll_wrapper)`): on the request path, though the kernel
knows it by the process's name only. Each sweep names it `POLLER_NAME` for the kernel (what `top -H`
shows), which keeps it by the prefix above."""
POLLER_NAME = "grpc_aio_poller"

_request_path: set[int] = set()


def niced(sql: str, niceness: int, max_threads: int = 0) -> str:
    """`sql` run by ClickHouse threads at `niceness` (its `os_thread_priority`; 0: as they are) and on
    at most `max_threads` of them (0: as many as the engine likes); the statement's own settings, if
    any, on its last line. A ClickHouse server needs CAP_SYS_NICE to apply the niceness."""
    extra = [f"os_thread_priority = {niceness}"] if niceness else []
    extra += [f"max_threads = {max_threads}"] if max_threads else []
    if not extra:
        return sql
    if sql.rpartition("\n")[2].startswith("SETTINGS "):
        return f"{sql}, {', '.join(extra)}"
    return f"{sql}\nSETTINGS {', '.join(extra)}"


def keep_current_thread() -> None:
    """Mark the calling thread as part of the request path: it keeps the process's priority."""
    _request_path.add(threading.get_native_id())


class ThreadPriority:
    """Lifecycle: `start()` keeps the calling thread on the request path, sweeps once and then every
    `interval_s` on a daemon thread; `shutdown()` stops the sweeps (idempotent, safe without start)."""

    def __init__(self, niceness: int, interval_s: float = 1.0) -> None:
        self.niceness = niceness
        self.interval_s = interval_s
        self.lowered = 0
        """Threads given `niceness` so far."""
        self._warned = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.niceness > 0 and TASKS.is_dir()

    def start(self) -> None:
        if self._thread is not None or not self.enabled:
            return
        keep_current_thread()
        self.sweep()
        self._thread = threading.Thread(target=self._run, name="thread-priority", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sweep()

    def sweep(self) -> int:
        """Give every thread off the request path the niceness if it has less; returns how many."""
        lowered = 0
        try:
            tids = [int(name) for name in os.listdir(TASKS)]
        except OSError:
            return 0
        # After the listing: a poller started since is not in it, and is found by name next time.
        self._name_pollers()
        for tid in tids:
            if tid in _request_path:
                continue
            try:
                if os.getpriority(os.PRIO_PROCESS, tid) >= self.niceness:
                    continue
                if (TASKS / str(tid) / "comm").read_text().strip().startswith(REQUEST_PATH_NAMES):
                    continue
                os.setpriority(os.PRIO_PROCESS, tid, self.niceness)
            except (ProcessLookupError, FileNotFoundError):
                continue  # the thread ended meanwhile
            except OSError as error:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot lower a thread's priority", extra={"tid": tid, "error": str(error)})
                continue
            lowered += 1
        self.lowered += lowered
        return lowered

    @staticmethod
    def _name_pollers() -> None:
        for thread in threading.enumerate():
            tid = thread.native_id
            if tid is None or POLLER_TARGET not in thread.name or tid in _request_path:
                continue
            _request_path.add(tid)
            with contextlib.suppress(OSError):  # a thread that ended, or a kernel without it
                (TASKS / str(tid) / "comm").write_text(POLLER_NAME)
