"""bench.scrape: the collector's figures between two scrapes, from a real Prometheus registry's page."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.scrape import moved, p99_bound_ms, parse
from collector.process.metrics import ANSWER_SECONDS_BUCKETS


def test_the_99th_percentile_bucket_of_what_was_observed_between_two_scrapes() -> None:
    registry = CollectorRegistry()
    histogram = Histogram(
        "activity_collector_read_duration_seconds",
        "",
        ["call"],
        buckets=ANSWER_SECONDS_BUCKETS,
        registry=registry,
    )
    # Before the window: slow answers that must not count.
    for _ in range(500):
        histogram.labels("GetProfile").observe(2.0)
    before = parse(generate_latest(registry).decode())
    # In the window: 990 answers in 0.4 ms and 10 in 300 ms, then 11 more slow ones of another call.
    for _ in range(990):
        histogram.labels("GetProfile").observe(0.0004)
    for _ in range(10):
        histogram.labels("GetProfile").observe(0.3)
    after_profile = parse(generate_latest(registry).decode())
    for _ in range(11):
        histogram.labels("GetRecommendations").observe(0.3)
    after = parse(generate_latest(registry).decode())

    # 990 of 1,000 (99 %) in the first bucket (0.5 ms).
    assert p99_bound_ms(before, after_profile, "read_duration_seconds") == 0.5
    assert p99_bound_ms(before, after, "read_duration_seconds", 'call="GetProfile"') == 0.5
    # 990 of 1,011 under 99 %: the 99th percentile is in the bucket of 300 ms (up to 500 ms).
    assert p99_bound_ms(before, after, "read_duration_seconds") == 500
    assert p99_bound_ms(after, after, "read_duration_seconds") == 0
    assert moved(before, after, "activity_collector_read_duration_seconds_count") == 1011
    assert moved(before, after, 'activity_collector_read_duration_seconds_count{call="GetProfile"}') == 1000
