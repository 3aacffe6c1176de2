"""A collector's own figures, read from its `/metrics` page before and after a benchmark's window."""

from __future__ import annotations

import re
import urllib.request

PREFIX = "activity_collector_"


def scrape(url: str) -> dict[str, float]:
    """Every sample of the collector's metrics (`activity_collector_*`), by name with its labels."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        return parse(answer.read().decode())


def parse(text: str) -> dict[str, float]:
    """The `activity_collector_*` samples of a page in the Prometheus text format."""
    return {
        match.group(1): float(match.group(2))
        for match in re.finditer(rf"^({PREFIX}\S*) (\S+)$", text, re.MULTILINE)
    }


def moved(before: dict[str, float], after: dict[str, float], prefix: str) -> float:
    """How much the samples whose name (labels included) starts with `prefix` grew between two scrapes."""
    return sum(value - before.get(name, 0.0) for name, value in after.items() if name.startswith(prefix))


def p99_bound_ms(
    before: dict[str, float], after: dict[str, float], histogram: str, having: str = ""
) -> float:
    """The upper bound, in ms, of the bucket of the collector's `histogram` (its name without the
    prefix) that holds the 99th percentile of what it observed between two scrapes, over the samples
    whose labels hold `having` (for example `call="GetProfile"`; every one by default); 0 when it
    observed nothing."""
    name = PREFIX + histogram
    count = sum(
        value - before.get(sample, 0.0)
        for sample, value in after.items()
        if sample.startswith(name + "_count") and having in sample
    )
    bucket = re.compile(rf'^{name}_bucket\{{(?:.*,)?le="([^"]+)"\}}$')
    by_bound: dict[float, float] = {}
    for sample, value in after.items():
        found = bucket.match(sample)
        if found and having in sample:
            bound = float(found.group(1))
            by_bound[bound] = by_bound.get(bound, 0.0) + value - before.get(sample, 0.0)
    for bound in sorted(by_bound):
        if count and by_bound[bound] >= 0.99 * count:
            return bound * 1000
    return 0.0
