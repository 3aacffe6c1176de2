"""core.backoff.backoff_delay: the ceiling doubles from first_s up to max_s, the delay is drawn under it."""

from __future__ import annotations

import random

import pytest

from core.backoff import backoff_delay

DRAWS = 2_000


def draws(attempt: int, **options: float) -> list[float]:
    return [backoff_delay(attempt, **options) for _ in range(DRAWS)]


@pytest.fixture(autouse=True)
def seeded() -> None:
    random.seed(1234)


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 0.05), (2, 0.1), (3, 0.2), (4, 0.4), (5, 0.8), (6, 1.0), (7, 1.0), (50, 1.0)],
)
def test_the_delay_stays_within_a_ceiling_that_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    delays = draws(attempt, first_s=0.05, max_s=1.0)
    assert all(0 <= d <= ceiling for d in delays)
    # Full jitter: the draws cover the whole range, from near 0 to near the ceiling.
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling


def test_the_delay_grows_with_the_attempts() -> None:
    means = [sum(draws(attempt, first_s=0.1, max_s=100.0)) / DRAWS for attempt in range(1, 8)]
    for attempt, mean in enumerate(means, start=1):
        assert mean == pytest.approx(0.1 * 2 ** (attempt - 1) / 2, rel=0.1)  # half the ceiling
    assert means == sorted(means)


def test_the_delay_varies() -> None:
    delays = draws(3, first_s=0.5, max_s=30.0)
    assert len(set(delays)) == DRAWS


def test_the_same_seed_gives_the_same_delays() -> None:
    random.seed(7)
    first = draws(4, first_s=0.05, max_s=5.0)
    random.seed(7)
    assert draws(4, first_s=0.05, max_s=5.0) == first


def test_the_first_delay_and_the_cap_are_those_given() -> None:
    # The ceilings of the collector's loops: spooled inserts 0.1 s up to 5 s, enrichment 0.5 s up to 30 s.
    assert max(draws(1, first_s=0.1, max_s=5.0)) <= 0.1
    assert max(draws(1, first_s=0.5, max_s=30.0)) <= 0.5
    assert max(draws(20, first_s=0.1, max_s=5.0)) <= 5.0
    assert max(draws(20, first_s=0.5, max_s=30.0)) == pytest.approx(30.0, rel=0.01)


def test_a_loop_that_retries_for_ever_never_fails_on_its_delay() -> None:
    # 0.05 * 2**1024 does not fit in a float: the ceiling stops at the cap long before.
    for attempt in (64, 65, 1_025, 10**6):
        assert 0 <= backoff_delay(attempt, first_s=0.05, max_s=5.0) <= 5.0


def test_partial_jitter_keeps_a_floor() -> None:
    delays = draws(2, first_s=0.5, max_s=30.0, jitter=0.5)
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert min(delays) < 0.55 and max(delays) > 0.95
    assert backoff_delay(3, first_s=0.5, max_s=30.0, jitter=0) == 2.0


def test_full_jitter_draws_exactly_uniform_from_zero_to_the_ceiling() -> None:
    random.seed(99)
    delays = draws(3, first_s=0.05, max_s=5.0)
    random.seed(99)
    assert delays == [random.uniform(0, 0.2) for _ in range(DRAWS)]


@pytest.mark.parametrize(("attempt", "jitter"), [(0, 1.0), (-1, 1.0), (1, -0.1), (1, 1.5)])
def test_nonsense_is_refused(attempt: int, jitter: float) -> None:
    with pytest.raises(ValueError):
        backoff_delay(attempt, first_s=0.1, max_s=1.0, jitter=jitter)
