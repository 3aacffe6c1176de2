"""What the process builds at start lives as long as it does: keep it out of the garbage collector's
sight.

By the end of start-up the process holds about 110,000 objects the cyclic garbage collector tracks
(modules, functions, gRPC's and clickhouse-connect's classes, the user-agent rules), and none of them
will ever be garbage. Left in the collector's oldest generation, every full collection walks them all:
50-70 ms with the event loop stopped, once every several seconds under load, long enough to be the
acknowledgement latency's p99 on its own. Frozen (`gc.freeze`), they are skipped, and a full collection
walks only what was made since: about 1 ms. Objects made later are collected as usual.
"""

from __future__ import annotations

import contextlib
import gc
import time
from typing import Any, Protocol


def freeze_startup_objects() -> int:
    """Collect what start-up left as garbage, then freeze every object still alive; returns how
    many are frozen. Call once, when start-up is over and before requests come in."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class _Labelled(Protocol):
    def labels(self, *values: str) -> Any: ...


class GcPauses:
    """Times every run of the cyclic garbage collector, which stops every thread of the process (the
    event loop with them), into a histogram labelled by generation: a tail latency that a full
    collection explains shows there.

    Lifecycle: `install()` adds the hook to `gc.callbacks` (once), `remove()` takes it out (idempotent).
    """

    def __init__(self, histogram: _Labelled) -> None:
        self.histogram = histogram
        self._started: float | None = None

    def install(self) -> None:
        if self._hook not in gc.callbacks:
            gc.callbacks.append(self._hook)

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._hook)

    def _hook(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.histogram.labels(str(info["generation"])).observe(time.perf_counter() - self._started)
            self._started = None
