"""Quotas as token buckets, on a clock of the test's own."""

from __future__ import annotations

import pytest

from workers.processors.quota import Quota, QuotaExceeded, Quotas, default_quota


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_tenant_gets_its_burst_then_its_rate_and_the_delay_until_it_fits() -> None:
    clock = Clock()
    quotas = Quotas(Quota(10, 20), clock=clock)
    quotas.take("a", 20)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.take("a", 5)
    assert refused.value.retry_delay_s == pytest.approx(0.5)
    clock.now += 0.5
    quotas.take("a", 5)
    # Another tenant's bucket is its own.
    quotas.take("b", 20)
    assert quotas.stats.refused == {"a": 5} and quotas.stats.refused_requests == {"a": 1}


def test_a_batch_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_a_debt() -> None:
    clock = Clock()
    quotas = Quotas(Quota(10, 5), clock=clock)
    quotas.take("a", 15)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.take("a", 1)
    assert refused.value.retry_delay_s == pytest.approx(1.1)


def test_own_quotas_replace_the_default_and_a_rate_of_zero_is_none() -> None:
    clock = Clock()
    quotas = Quotas(default_quota(0, 0), clock=clock)
    quotas.take("a", 1_000_000)
    quotas.replace({"b": default_quota(2, 0)})
    assert quotas.quota("b") == Quota(2, 2) and quotas.quota("a") == Quota(0, 1)
    quotas.take("b", 2)
    with pytest.raises(QuotaExceeded):
        quotas.take("b", 1)


def test_check_refuses_what_the_bucket_cannot_hold_and_takes_nothing() -> None:
    clock = Clock()
    quotas = Quotas(Quota(10, 20), clock=clock)
    quotas.check("a", 20)
    quotas.check("a", 20)
    quotas.take("a", 15)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.check("a", 10)
    assert refused.value.retry_delay_s == pytest.approx(0.5)
    assert quotas.stats.refused == {"a": 10} and quotas.stats.refused_requests == {"a": 1}
    # A refusal by check took nothing: what the bucket held is still there.
    quotas.take("a", 5)
    clock.now += 1.0
    quotas.check("a", 10)
    quotas.take("a", 10)
