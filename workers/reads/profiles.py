"""A person's profile, read from the stored activities: recent activities, counts per action, revenue
per currency, and time-decayed affinities to categories, brands and kinds of target.

Every read is over the person's rows of `activities_by_person` (one per activity id: a resent activity
counts once), found by `workers.reads.people`. Blocking: run it off the event loop.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from workers.reads.people import Person, rows
from workers.reads.segments import Rule
from workers.storage.analytics_schema import quote
from workers.storage.contract import QueryEngine

DEFAULT_RECENT = 20
MAX_RECENT = 200
MAX_AFFINITIES = 20
HALF_LIFE_DAYS = 7
WEIGHTS = {"view": 1, "click": 2, "add_to_cart": 3, "purchase": 5}
"""How much one activity of each action weighs in an affinity (others weigh nothing)."""

WEIGHT = "multiIf(" + ", ".join(f"action = {quote(a)}, {w}" for a, w in WEIGHTS.items()) + ", 0)"
"""SQL: the weight of one activity by its action."""
DECAYED_WEIGHT = f"{WEIGHT} * pow(0.5, dateDiff('second', occurred_at, now64(3)) / {HALF_LIFE_DAYS * 86400})"
"""The weight of one activity, halved for every HALF_LIFE_DAYS of its age."""


@dataclass(frozen=True)
class RecentActivity:
    id: str
    action: str
    target_type: str
    target_id: str
    source_id: str
    occurred_at: dt.datetime


@dataclass(frozen=True)
class Affinity:
    kind: str
    value: str
    score: float


@dataclass
class Profile:
    person_id: str
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None
    recent: list[RecentActivity] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    revenue: dict[str, int] = field(default_factory=dict)
    affinities: list[Affinity] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)


def _time(value: object) -> dt.datetime:
    return dt.datetime.fromisoformat(str(value)).replace(tzinfo=dt.UTC)


_AFFINITY_KINDS = (
    ("category", "if(empty(target_category_path), '', toString(target_category_path[-1]))"),
    ("brand", "toString(target_brand)"),
    ("target_type", "toString(target_type)"),
)


def profile_sql(person: Person, recent_limit: int, segments: Mapping[str, Rule]) -> str:
    """One pass over the person's rows: the summary, the latest activities, the affinities' weights
    and each segment's rule."""
    limit = max(1, min(recent_limit or DEFAULT_RECENT, MAX_RECENT))
    affinities = ", ".join(
        f"CAST(sumMapIf(map({expression}, weight), weight > 0 AND {expression} != ''), "
        f"'Map(String, Float64)') AS affinity_{kind}"
        for kind, expression in _AFFINITY_KINDS
    )
    rules = "".join(f", {rule.sql} AS segment_{n}" for n, rule in enumerate(segments.values()))
    return (
        f"SELECT min(occurred_at) AS first, max(occurred_at) AS last, count() AS n, "
        f"CAST(sumMap(map(action, toUInt64(1))), 'Map(String, UInt64)') AS counts, "
        f"CAST(sumMapIf(map(toString(currency), ifNull(quantity, 1) * price), "
        f"action = 'purchase' AND price IS NOT NULL), 'Map(String, Int64)') AS revenue, "
        f"arraySlice(arrayReverseSort(groupArray((toUnixTimestamp64Milli(occurred_at), toString(id), "
        f"toString(action), toString(target_type), target_id, source_id))), 1, {limit}) AS recent, "
        f"{affinities}{rules} "
        f"FROM (SELECT *, {DECAYED_WEIGHT} AS weight FROM ({person.activities()}))"
    )


def read_profile(
    engine: QueryEngine,
    person: Person,
    recent_limit: int = DEFAULT_RECENT,
    segments: Mapping[str, Rule] | None = None,
) -> Profile:
    """`person`'s profile, with the names of `segments` they are in now; an empty one (but for the
    person id) when nothing of theirs is stored."""
    segments = segments or {}
    profile = Profile(person.person_id)
    found = rows(engine, profile_sql(person, recent_limit, segments))
    if not found or not int(str(found[0]["n"])):
        return profile
    head = found[0]
    profile.first_seen = _time(head["first"])
    profile.last_seen = _time(head["last"])
    counts, revenue, recent = head["counts"], head["revenue"], head["recent"]
    profile.counts = {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {}
    profile.revenue = (
        {str(k): int(v) for k, v in revenue.items() if int(v)} if isinstance(revenue, dict) else {}
    )
    profile.recent = [
        RecentActivity(
            str(r[1]),
            str(r[2]),
            str(r[3]),
            str(r[4]),
            str(r[5]),
            dt.datetime.fromtimestamp(int(r[0]) / 1000, dt.UTC),
        )
        for r in (recent if isinstance(recent, list) else [])
    ]
    weights = [
        Affinity(kind, str(value), float(score))
        for kind, _ in _AFFINITY_KINDS
        for value, score in dict(head[f"affinity_{kind}"]).items()  # type: ignore[call-overload]
    ]
    weights.sort(key=lambda a: (-a.score, a.kind, a.value))
    profile.affinities = weights[:MAX_AFFINITIES]
    profile.segments = [
        name for n, name in enumerate(segments) if head[f"segment_{n}"] in (1, True, "1", "true")
    ]
    return profile
