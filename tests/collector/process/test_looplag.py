"""The event loop's lag probe: a loop held busy shows as lag, in a real Prometheus histogram."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import wait_for
from prometheus_client import CollectorRegistry, Histogram

from collector.process.looplag import LoopLag
from collector.process.metrics import LOOP_LAG_BUCKETS

pytestmark = pytest.mark.timeout(30)


def observed(registry: CollectorRegistry, above: float | None = None) -> float:
    """Observations so far; with `above`, those over that bucket bound."""
    total = registry.get_sample_value("lag_count") or 0.0
    if above is None:
        return total
    return total - (registry.get_sample_value("lag_bucket", {"le": str(above)}) or 0.0)


async def test_a_loop_held_busy_shows_as_lag_and_the_probe_stops_on_shutdown() -> None:
    registry = CollectorRegistry()
    probe = LoopLag(Histogram("lag", "lag", buckets=LOOP_LAG_BUCKETS, registry=registry), interval_s=0.01)
    probe.start()
    probe.start()  # once only
    await wait_for(lambda: observed(registry) >= 3, "the probe's first observations")

    late_before = observed(registry, above=0.25)
    # The loop's thread kept busy for 0.4 s, as by a handler that computes too long: the stimulus.
    busy_until = time.monotonic() + 0.4
    while time.monotonic() < busy_until:
        pass
    await wait_for(lambda: observed(registry, above=0.25) > late_before, "the blocked loop's lag")

    await probe.shutdown()
    await probe.shutdown()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "event loop lag"]
