"""CPU and memory figures of a process and of the machine, read from /proc (Linux only, no dependency)."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of `pid` so far, all its threads included."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def pids_named(name: str) -> set[int]:
    """Every process whose command name (`/proc/<pid>/comm`) is `name`, e.g. `postgres`."""
    found: set[int] = set()
    for pid in _all_pids():
        try:
            with open(f"/proc/{pid}/comm", encoding="ascii", errors="replace") as f:
                if f.read().strip() == name:
                    found.add(pid)
        except OSError:
            continue
    return found


def related_pids(root_pid: int, marker: str | None = None) -> set[int]:
    """`root_pid`, its descendants, and every process whose command line holds `marker` (e.g. the run's
    temporary directory: daemons such as an embedded PostgreSQL are re-parented to init) with their
    descendants."""
    parents: dict[int, int] = {}
    members = {root_pid}
    needle = marker.encode() if marker else None
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is None:
            continue
        parents[pid] = int(fields[1])
        if needle is not None and pid != os.getpid() and needle in _cmdline(pid):
            members.add(pid)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return members


def group_cpu_s(pids: set[int]) -> dict[int, float]:
    """CPU seconds by process: its own (utime+stime) plus its reaped children's (cutime+cstime), so
    that short-lived workers are counted once they exit."""
    out: dict[int, float] = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = sum(int(v) for v in fields[11:15]) / CLK_TCK
    return out


def group_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def status_kib(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status, e.g. VmHWM (peak RSS) or VmRSS."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass(frozen=True)
class MachineCpu:
    """The machine's CPU time counters (all cores, clock ticks) from the first line of /proc/stat."""

    busy: int
    interrupts: int
    """irq + softirq: time no process is charged for (on loopback, much of the network stack)."""
    total: int

    @classmethod
    def read(cls) -> MachineCpu:
        with open("/proc/stat", encoding="ascii") as f:
            # user nice system idle iowait irq softirq steal ...
            values = [int(v) for v in f.readline().split()[1:9]]
        idle = values[3] + values[4]
        total = sum(values)
        return cls(total - idle, values[5] + values[6], total)

    def _cores(self, ticks: int, earlier: MachineCpu) -> float:
        total = self.total - earlier.total
        if total <= 0:
            return 0.0
        return ticks / total * (os.cpu_count() or 1)

    def busy_cores_since(self, earlier: MachineCpu) -> float:
        """Average busy cores between `earlier` and this reading."""
        return self._cores(self.busy - earlier.busy, earlier)

    def interrupt_cores_since(self, earlier: MachineCpu) -> float:
        """Average cores spent in irq and softirq between `earlier` and this reading."""
        return self._cores(self.interrupts - earlier.interrupts, earlier)
