"""core.cache: the one cache kind, a bounded, expiring map."""

from __future__ import annotations

import math

import pytest

from core.cache import ExpiringCache


def test_entries_expire_ttl_after_they_are_set() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(10, ttl_s=5)
    cache.set("a", 1, now=100)
    assert cache.get("a", 104.9, None) == 1
    assert cache.get("a", 105, None) is None
    assert cache.get("b", 100, "missing") == "missing"
    cache.set("a", 2, now=105)  # set again: a new life
    assert cache.get("a", 109, None) == 2


def test_the_oldest_set_entry_goes_first_when_full() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(3, ttl_s=60)
    for n, key in enumerate("abc"):
        cache.set(key, n, now=0)
    cache.set("a", 10, now=1)  # a is now the newest
    cache.set("d", 3, now=2)
    assert len(cache) == 3
    assert cache.get("b", 2, None) is None
    assert [cache.get(k, 2, None) for k in "acd"] == [10, 2, 3]


def test_a_cache_holds_something() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ExpiringCache(0, ttl_s=1)


def test_an_expired_entry_can_still_be_peeked_and_an_endless_one_never_expires() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(10, ttl_s=5)
    cache.set("a", 1, now=100)
    assert cache.get("a", 200, None) is None
    assert cache.peek("a") == (105, 1)
    assert cache.peek("b") is None
    endless: ExpiringCache[str, int] = ExpiringCache(2, ttl_s=math.inf)
    endless.set("x", 1, now=0.0)
    assert endless.get("x", 1e18, None) == 1
    endless.set("y", 2, now=0.0)
    endless.set("z", 3, now=0.0)
    assert endless.get("x", 0.0, None) is None and list(endless.entries) == ["y", "z"]
