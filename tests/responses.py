"""A generated shop whose pages are powered by search and recommendation responses: impressions at
positions, clicks, A/B variants, searches (some finding nothing), visitors who log in on a later visit
(and buy there what they clicked while anonymous), crawlers; and an A/B experiment of a given
click-through per variant. The right answers are computed from the activities in plain Python (the
figures per group, the statistics of the experiment), never by the product.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import shop
from shop import Event

TENANT = shop.TENANT
WIDGETS = (
    ("recommendation", "pdp-similar", ("A", "B")),
    ("recommendation", "home-trending", ("",)),
    ("merchandising", "summer-banner", ("",)),
)
# (as typed, results): the first two are one query once normalised; the last finds nothing.
QUERIES = (("Red Shoes", 4), ("  red   SHOES ", 4), ("blue hat", 3), ("gift card", 2), ("xyzzy", 0))
SHOWN = 5
"""Items a recommendation response shows."""
HOUR_MS = 3_600_000


@dataclass
class _Visitor:
    n: int
    rng: random.Random
    anonymous_id: str = ""
    user_id: str = ""
    logs_in_at: int = -1
    """Index of the visit in which the visitor logs in; -1 never."""
    is_bot: bool = False
    currency: str = "EUR"
    variant: str = "A"
    pending: list[tuple[str, int]] = field(default_factory=list)
    """Products clicked and not bought yet: bought at the start of the next visit."""


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.events: list[Event] = []
        self.responses = 0

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def response(self, kind: str) -> str:
        self.responses += 1
        return f"{kind}-{self.responses:05d}"

    def visit(self, who: _Visitor, index: int, start_ms: int) -> None:
        rng = self.rng
        session_id = f"sess-{who.n}-{index}"
        clock = [start_ms]
        logged_in = 0 <= who.logs_in_at <= index
        # Before the login the visitor is anonymous; at the login both ids travel together; after it,
        # on another device, only the user id.
        anonymous = who.anonymous_id if index <= who.logs_in_at or who.logs_in_at < 0 else ""
        user = who.user_id if logged_in else ""

        def act(action: str, target: tuple[str, str], **extra: Any) -> Event:
            event = Event(
                tenant=TENANT,
                action=action,
                target_type=target[0],
                target_id=target[1],
                occurred_ms=clock[0],
                anonymous_id=anonymous,
                user_id=user,
                session_id=session_id,
                device_type="desktop" if index % 2 else "mobile",
                segments=(),
                id=self.uuid(),
                is_bot=who.is_bot,
                **extra,
            )
            self.events.append(event)
            clock[0] += rng.randint(3, 90) * 1000
            return event

        def buy(sku: str, price: int) -> None:
            quantity = rng.randint(1, 3)
            amount = {"quantity": quantity, "price": price, "currency": who.currency}
            act("add_to_cart", ("product", sku), **amount)
            if rng.random() < 0.7:
                act("purchase", ("product", sku), order_id=f"order-{self.uuid()[:8]}", **amount)

        if index == who.logs_in_at:
            act("view", ("page", "login"))
        for sku, price in who.pending:
            act("view", ("product", sku))
            buy(sku, price)
        who.pending.clear()

        def respond(source_id: str, source: dict[str, Any], items: Sequence[tuple[str, int]]) -> None:
            for position, (sku, _) in enumerate(items, start=1):
                act("impression", ("product", sku), source_id=source_id, source_position=position, **source)
            # Shoppers click the top of the list more often; crawlers follow every other link.
            weights = [1 / p for p in range(1, len(items) + 1)]
            if not items or rng.random() > (0.9 if who.is_bot else 0.45):
                return
            position = rng.choices(range(1, len(items) + 1), weights)[0]
            sku, price = items[position - 1]
            act("click", ("product", sku), source_id=source_id, source_position=position, **source)
            act("view", ("product", sku))
            roll = rng.random()
            if roll < 0.35:
                buy(sku, price)
            elif roll < 0.6:
                who.pending.append((sku, price))

        if rng.random() < 0.4:
            typed, results = rng.choice(QUERIES)
            source_id = self.response("search")
            act(
                "search",
                ("search", typed),
                source_id=source_id,
                query=typed,
                source_type="search",
                source_name="site-search",
                result_count=results,
            )
            items = rng.sample(shop.PRODUCTS, results)
            respond(source_id, {"source_type": "search", "source_name": "site-search"}, items)
        else:
            kind, name, variants = rng.choice(WIDGETS)
            variant = who.variant if len(variants) > 1 else variants[0]
            source = {"source_type": kind, "source_name": name, "source_variant": variant}
            respond(self.response("reco"), source, rng.sample(shop.PRODUCTS, SHOWN))


def generate(seed: int = 17, visitors: int = 60) -> list[Event]:
    """A month of visits; every visitor's visits are 4 to 30 hours apart, so that a product clicked in
    one visit and bought in the next is within a day's window, or not."""
    g = _Generator(seed)
    for n in range(visitors):
        rng = g.rng
        who = _Visitor(n, rng, anonymous_id=f"anon-{n}")
        who.is_bot = n % 10 == 9
        if not who.is_bot and rng.random() < 0.5:
            who.user_id = f"user-{n}"
            who.logs_in_at = rng.randint(1, 3)
        who.currency = "USD" if rng.random() < 0.3 else "EUR"
        who.variant = rng.choice("AB")
        start = shop.ms_of(shop.FIRST_DAY + dt.timedelta(rng.randrange(20)), rng.randrange(20 * 3600))
        for index in range(rng.randint(2, 5)):
            g.visit(who, index, start)
            start += rng.randint(4, 30) * HOUR_MS
    return g.events


def experiment(seed: int, name: str, ctr: dict[str, float], impressions: int = 10_000) -> list[Event]:
    """`impressions` impressions per variant of the responses named `name`, each clicked with the
    variant's probability; a click is bought now and then."""
    rng = random.Random(seed)
    start = shop.ms_of(shop.FIRST_DAY + dt.timedelta(days=21))
    events: list[Event] = []
    for variant, rate in ctr.items():
        for n in range(impressions):
            at = start + rng.randrange(5 * 86_400_000)
            sku = rng.choice(shop.PRODUCTS)[0]
            common: dict[str, Any] = {
                "tenant": TENANT,
                "target_type": "product",
                "target_id": sku,
                "anonymous_id": f"{name}-{variant}-{n}",
                "user_id": "",
                "session_id": "",
                "device_type": "mobile",
                "segments": (),
                "source_id": f"{name}-{variant}-{n}",
                "source_type": "recommendation",
                "source_name": name,
                "source_variant": variant,
                "source_position": 1 + n % 4,
            }
            events.append(Event(action="impression", occurred_ms=at, id=_uuid(rng), **common))
            if rng.random() < rate:
                events.append(Event(action="click", occurred_ms=at + 2000, id=_uuid(rng), **common))
    return events


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# -- the right answers, in plain Python ------------------------------------------------------------

KEYS: dict[str, Callable[[Event], object]] = {
    "type": lambda e: e.source_type,
    "name": lambda e: e.source_name,
    "variant": lambda e: e.source_variant,
    "position": lambda e: e.source_position,
}


def credited(events: Sequence[Event], window_s: int, include_bots: bool = False) -> list[tuple[Event, Event]]:
    """(activity, the response activity it counts for): impressions, views and clicks count for their
    own response; add-to-carts and purchases for their last touch."""
    touches = shop.last_touches(events, window_s, include_bots)
    out: list[tuple[Event, Event]] = []
    for e in shop.humans(events, include_bots):
        if e.action in ("impression", "view", "click") and e.source_id:
            out.append((e, e))
        elif e.action in ("add_to_cart", "purchase") and (touch := touches[e.id]) is not None:
            out.append((e, touch))
    return out


def figures(pairs: Iterable[tuple[Event, Event]]) -> dict[str, Any]:
    """The figures of `report sources --by` over the given (activity, response activity) pairs."""
    count: Counter[str] = Counter()
    revenue: Counter[str] = Counter()
    positions: list[int] = []
    for e, source in pairs:
        count[e.action] += 1
        if e.action == "purchase" and e.revenue:
            revenue[e.currency] += e.revenue
        if e.action == "click" and source.source_position > 0:
            positions.append(source.source_position)
    return {
        "impressions": count["impression"],
        "clicks": count["click"],
        "ctr": shop.ratio(count["click"], count["impression"]),
        "add_to_carts": count["add_to_cart"],
        "purchases": count["purchase"],
        "revenue": dict(revenue),
        "conversion": shop.ratio(count["purchase"], count["click"]),
        "avg_click_position": round(sum(positions) / len(positions), 2) if positions else 0,
    }


def by_groups(
    events: Sequence[Event], keys: Sequence[str], window_s: int = 86400, include_bots: bool = False
) -> dict[tuple[object, ...], dict[str, Any]]:
    groups: dict[tuple[object, ...], list[tuple[Event, Event]]] = defaultdict(list)
    for e, source in credited(events, window_s, include_bots):
        groups[tuple(KEYS[k](source) for k in keys)].append((e, source))
    return {key: figures(pairs) for key, pairs in groups.items()}


def normalised(query: str) -> str:
    return " ".join(query.split()).lower()


def queries(
    events: Sequence[Event], window_s: int = 86400, zero_results: bool = False
) -> dict[str, dict[str, Any]]:
    """Per normalised query: the figures of `report queries`."""
    touches = shop.last_touches(events, window_s)
    counted = shop.humans(events)
    searches = [e for e in counted if e.action == "search" and (not zero_results or e.result_count == 0)]
    query_of = {e.source_id: normalised(e.query or e.target_id) for e in searches}
    out: dict[str, dict[str, Any]] = {}
    for e in searches:
        row = out.setdefault(query_of[e.source_id], Counter())
        row["searches"] += 1
        row["zero_results"] += e.result_count == 0
    for e in counted:
        response = e.source_id if e.action == "click" else ""
        if e.action == "purchase" and (touch := touches[e.id]) is not None:
            response = touch.source_id
        if response not in query_of:
            continue
        row = out[query_of[response]]
        row[f"{e.action}s"] += 1
        if e.action == "click" and e.source_position > 0:
            row["positioned"] += 1
            row["position_sum"] += e.source_position
    return {
        q: {
            "searches": c["searches"],
            "zero_results": c["zero_results"],
            "clicks": c["clicks"],
            "ctr": shop.ratio(c["clicks"], c["searches"]),
            "avg_click_position": round(c["position_sum"] / c["positioned"], 2) if c["positioned"] else 0,
            "purchases": c["purchases"],
        }
        for q, c in out.items()
    }


def wilson(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval."""
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (centre - spread) / (1 + z * z / trials), (centre + spread) / (1 + z * z / trials)


def z_test(x1: int, n1: int, x0: int, n0: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test."""
    pooled = (x1 + x0) / (n1 + n0)
    z = (x1 / n1 - x0 / n0) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    return math.erfc(abs(z) / math.sqrt(2))
