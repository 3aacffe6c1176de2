"""The read side's answers computed in memory from one person's records (`workers.reads.records`):
the same profile, recently viewed list and purchases that `workers.reads.profiles` and
`workers.reads.recommendations` read from ClickHouse, over the same rows (one per activity id).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Mapping

from workers.reads.profiles import (
    DEFAULT_RECENT,
    HALF_LIFE_DAYS,
    MAX_AFFINITIES,
    MAX_RECENT,
    WEIGHTS,
    Affinity,
    Profile,
    RecentActivity,
)
from workers.reads.recommendations import Item
from workers.reads.records import Record
from workers.reads.segments import Rule, holds

HALF_LIFE_S = HALF_LIFE_DAYS * 86400


def _when(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def profile(
    person_id: str,
    records: Iterable[Record],
    recent_limit: int = DEFAULT_RECENT,
    segments: Mapping[str, Rule] | None = None,
    now_ms: int = 0,
) -> Profile:
    """The profile of the person of `records` at `now_ms` (as `read_profile` computes it)."""
    held = list(records)
    out = Profile(person_id)
    if not held:
        return out
    limit = max(1, min(recent_limit or DEFAULT_RECENT, MAX_RECENT))
    out.first_seen = _when(min(r.occurred_ms for r in held))
    out.last_seen = _when(max(r.occurred_ms for r in held))
    out.counts = dict(Counter(r.action for r in held))
    revenue: Counter[str] = Counter()
    for r in held:
        if r.action == "purchase" and r.price is not None:
            revenue[r.currency] += (1 if r.quantity is None else r.quantity) * r.price
    out.revenue = {currency: value for currency, value in revenue.items() if value}
    newest = sorted(
        held,
        key=lambda r: (r.occurred_ms, r.id, r.action, r.target_type, r.target_id, r.source_id),
        reverse=True,
    )
    out.recent = [
        RecentActivity(r.id, r.action, r.target_type, r.target_id, r.source_id, _when(r.occurred_ms))
        for r in newest[:limit]
    ]
    out.affinities = affinities(held, now_ms)
    out.segments = [name for name, rule in (segments or {}).items() if holds(rule, held, now_ms)]
    return out


def affinities(records: Iterable[Record], now_ms: int) -> list[Affinity]:
    """Time-decayed weights per category, brand and kind of target, highest first (at most
    MAX_AFFINITIES): the age in whole seconds, as ClickHouse's dateDiff counts it."""
    now_s = now_ms // 1000
    by_kind: dict[str, dict[str, float]] = {"category": {}, "brand": {}, "target_type": {}}
    category, brand, target_type = by_kind["category"], by_kind["brand"], by_kind["target_type"]
    for r in records:
        weight = WEIGHTS.get(r.action)
        if not weight:
            continue
        decayed = weight * math.pow(0.5, (now_s - r.occurred_ms // 1000) / HALF_LIFE_S)
        if r.category_path:
            value = r.category_path[-1]
            category[value] = category.get(value, 0.0) + decayed
        if r.brand:
            brand[r.brand] = brand.get(r.brand, 0.0) + decayed
        if r.target_type:
            target_type[r.target_type] = target_type.get(r.target_type, 0.0) + decayed
    ranked = sorted(
        (
            (-score, kind, value)
            for kind, scores in by_kind.items()
            for value, score in scores.items()
            if value
        )
    )
    return [Affinity(kind, value, -score) for score, kind, value in ranked[:MAX_AFFINITIES]]


def recently_viewed(records: Iterable[Record], excluded: Iterable[str], limit: int) -> list[Item]:
    """The person's views, newest first, each target once; score: the last view's Unix time."""
    left_out = set(excluded)
    last: dict[tuple[str, str], int] = {}
    for r in records:
        if r.action == "view" and r.target_id not in left_out:
            key = (r.target_type, r.target_id)
            if last.get(key, -1) < r.occurred_ms:
                last[key] = r.occurred_ms
    ranked = sorted(last.items(), key=lambda kv: (-kv[1], kv[0]))
    return [Item(t, i, ms / 1000) for (t, i), ms in ranked[:limit]]


def bought(records: Iterable[Record]) -> set[tuple[str, str]]:
    """The targets the person bought, ever."""
    return {(r.target_type, r.target_id) for r in records if r.action == "purchase"}
