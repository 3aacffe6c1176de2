"""Exponential backoff with jitter: how long to wait before trying something again.

Every retry loop of the service waits `backoff_delay(attempt, ...)`: a delay drawn at random below a
ceiling that doubles with each attempt, from `first_s` for the first retry up to `max_s`. By default
the delay is drawn from the whole range [0, ceiling] ("full jitter", as in
https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/); a pause that must last a
while whatever the draw keeps a floor with `jitter` < 1. The randomness keeps processes that lost the
same server at the same moment from coming back in step; the doubling keeps a server that stays away
from being called ever more often.

The client (`activity_client`) keeps its own copy: it installs without the service.
"""

from __future__ import annotations

import random

_DOUBLINGS = 64
"""Past this many doublings the ceiling is `max_s`: `first_s * 2**n` would only grow past it (and, as a
float, overflow after about a thousand), so a loop that retries for ever never fails on its delay."""


def backoff_delay(attempt: int, *, first_s: float, max_s: float, jitter: float = 1.0) -> float:
    """Seconds to wait before retry number `attempt` (1 for the first retry after a failure).

    The ceiling is `first_s` for the first retry, doubles with each one after it, and stays at `max_s`
    once it reaches it: min(max_s, first_s * 2**(attempt - 1)). The delay is drawn uniformly from the
    top `jitter` part of it, [ceiling * (1 - jitter), ceiling]: with the default 1, from [0, ceiling]
    (full jitter); with 0.5, at least half the ceiling ("equal jitter"); with 0, the ceiling itself.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter is a fraction between 0 and 1, got {jitter}")
    doublings = attempt - 1
    ceiling = max_s if doublings >= _DOUBLINGS else min(max_s, first_s * 2**doublings)
    return random.uniform(ceiling * (1 - jitter), ceiling)
