"""A generated shop: a month of activities from visitors who search, browse, follow recommendations,
add to cart and buy, with the right answers to the analytics questions computed from the activities
in plain Python (no SQL), so that the tests can hold the aggregates, views and reports to them.

The generator also records what it meant (one session per visit, the source each purchase came
from), and the tests check that the plain-Python answers agree with that too.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from core.proto.activity.v1 import activity_pb2 as pb
from core.wire import bytes_field, field_key
from workers.rows import encode_rows, envelope
from workers.storage.clickhouse import ClickHouseStore
from workers.storage.schema import IS_BOT_FIELD, RESOLVED_USER_ID_FIELD

TENANT = "shop"
OTHER_TENANT = "outlet"
FIRST_DAY = dt.date(2026, 10, 1)
DAYS = 31
GAP_MS = 30 * 60 * 1000
DAY_MS = 86_400_000


def day_of(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()


def ms_of(day: dt.date, seconds: int = 0) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000) + seconds * 1000


@dataclass
class Event:
    """One activity, as the shop sent it."""

    tenant: str
    action: str
    target_type: str
    target_id: str
    occurred_ms: int
    anonymous_id: str
    user_id: str
    session_id: str
    device_type: str
    segments: tuple[str, ...]
    source_id: str = ""
    quantity: int | None = None
    price: int | None = None
    currency: str = ""
    order_id: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    resolved_user_id: str = ""
    """The user identity stitching resolved this activity's visitor to ('' when none)."""
    source_type: str = ""
    source_name: str = ""
    source_variant: str = ""
    source_position: int = 0
    result_count: int | None = None
    query: str = ""
    is_bot: bool = False
    """What enrichment finds for a crawler's user agent."""

    @property
    def user_key(self) -> str:
        return self.user_id or self.anonymous_id or self.session_id

    @property
    def target(self) -> tuple[str, str]:
        return self.target_type, self.target_id

    @property
    def has_amount(self) -> bool:
        return self.quantity is not None or self.price is not None

    @property
    def items(self) -> int:
        return self.quantity if self.quantity is not None else 1

    @property
    def revenue(self) -> int:
        """ifNull(quantity, 1) * ifNull(price, 0), in minor units."""
        return self.items * (self.price or 0)

    def activity(self) -> pb.Activity:
        a = pb.Activity(
            id=self.id,
            action=self.action,
            target=pb.Target(type=self.target_type, id=self.target_id),
            user=pb.User(session_id=self.session_id, anonymous_id=self.anonymous_id, user_id=self.user_id),
            source_id=self.source_id,
            metadata=pb.Metadata(
                device_type=self.device_type,
                currency=self.currency,
                order_id=self.order_id,
                page_url=f"https://shop.example/{self.target_type}/{self.target_id}",
                query=self.query,
            ),
        )
        if self.source_type or self.source_name or self.source_variant or self.source_position:
            a.source.type = self.source_type
            a.source.name = self.source_name
            a.source.variant = self.source_variant
            a.source.position = self.source_position
        if self.result_count is not None:
            a.source.result_count = self.result_count
        if self.quantity is not None:
            a.metadata.quantity = self.quantity
        if self.price is not None:
            a.metadata.price = self.price
        a.segments[:] = self.segments
        a.occurred_at.FromMilliseconds(self.occurred_ms)
        return a


@dataclass
class Shop:
    events: list[Event]
    visits: list[list[Event]]
    """The generator's visits: each one is meant to be one session."""
    meant_sources: dict[str, str]
    """Activity id of each add-to-cart and purchase -> the source the generator led it from ('' none)."""


class _Visitor:
    def __init__(self, rng: random.Random, tenant: str, n: int) -> None:
        self.tenant = tenant
        self.anonymous_id = f"anon-{tenant}-{n}"
        self.user_id = f"user-{tenant}-{n}" if rng.random() < 0.6 else ""
        self.device_type = rng.choice(["mobile", "mobile", "desktop", "tablet"])
        self.segments = tuple(rng.sample(["vip", "new", "returning"], rng.choice([0, 1, 1, 2])))
        self.currency = "USD" if rng.random() < 0.25 else "EUR"


PRODUCTS = [(f"sku-{n}", 500 + 250 * n) for n in range(1, 31)]


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.events: list[Event] = []
        self.visits: list[list[Event]] = []
        self.meant: dict[str, str] = {}
        self.orders = 0
        self.responses = 0

    def response(self, kind: str) -> str:
        self.responses += 1
        return f"{kind}-{self.responses:04d}"

    def visit(self, who: _Visitor, start_ms: int) -> None:
        rng = self.rng
        session_id = f"sess-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}" if rng.random() < 0.5 else ""
        visit: list[Event] = []
        clock = [start_ms]

        def act(action: str, target: tuple[str, str], source: str = "", **extra: object) -> Event:
            event = Event(
                tenant=who.tenant,
                action=action,
                target_type=target[0],
                target_id=target[1],
                occurred_ms=clock[0],
                anonymous_id=who.anonymous_id,
                user_id=who.user_id,
                session_id=session_id,
                device_type=who.device_type,
                segments=who.segments,
                source_id=source,
                id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                **extra,  # type: ignore[arg-type]
            )
            visit.append(event)
            # Steps of a visit are seconds to minutes apart; once in a while a pause of 20 minutes
            # (still the same session) or of exactly 30 minutes (the longest gap within one).
            pause = rng.choice([rng.randint(3, 600)] * 8 + [1200, 1800])
            clock[0] += pause * 1000
            return event

        def buy(product: tuple[str, int], source: str) -> None:
            sku, price = product
            quantity = rng.randint(1, 3)
            cart = act("add_to_cart", ("product", sku), quantity=quantity, price=price, currency=who.currency)
            self.meant[cart.id] = source
            if rng.random() < 0.6:
                self.orders += 1
                order = f"order-{self.orders}"
                paid = act(
                    "purchase",
                    ("product", sku),
                    quantity=quantity,
                    price=price,
                    currency=who.currency,
                    order_id=order,
                )
                self.meant[paid.id] = source

        kind = rng.choice(["search", "search", "reco", "browse", "bounce", "two_touches"])
        product = rng.choice(PRODUCTS)
        sku = ("product", product[0])
        if kind == "bounce":
            act("view", ("page", "home"))
        elif kind == "search":
            search = self.response("fhr")
            act("view", ("page", "search"), search)
            if rng.random() < 0.75:
                act("click", sku, search)
                act("view", sku)
                if rng.random() < 0.6:
                    buy(product, search)
        elif kind == "reco":
            act("view", ("page", "home"))
            act("view", ("product", rng.choice(PRODUCTS)[0]))
            reco = self.response("xo")
            act("view", sku, reco)
            if rng.random() < 0.7:
                act("click", sku, reco)
                act("view", sku)
                if rng.random() < 0.6:
                    buy(product, reco)
        elif kind == "browse":
            act("view", ("page", "home"))
            act("view", sku)
            if rng.random() < 0.5:
                buy(product, "")
        else:  # found through search first, then again through a recommendation: the last touch wins
            search = self.response("fhr")
            act("view", ("page", "search"), search)
            act("click", sku, search)
            act("view", sku)
            act("view", ("page", "home"))
            reco = self.response("xo")
            act("view", sku, reco)
            act("click", sku, reco)
            act("view", sku)
            buy(product, reco)
        self.events += visit
        self.visits.append(visit)

    def visitor(self, who: _Visitor) -> None:
        rng = self.rng
        starts: list[int] = []
        while len(starts) < rng.randint(1, 4):
            # Visits start on the hour's minute 0-49 between 00:00 and 19:59 UTC, so that none runs
            # into the next day, and are at least three hours apart (so never one session).
            candidate = ms_of(FIRST_DAY + dt.timedelta(rng.randrange(DAYS)), rng.randrange(20 * 3600))
            if all(abs(candidate - s) > 3 * 3600 * 1000 for s in starts):
                starts.append(candidate)
        for start in sorted(starts):
            self.visit(who, start)


def generate(seed: int = 20261001, visitors: int = 45) -> Shop:
    g = _Generator(seed)
    for n in range(visitors):
        g.visitor(_Visitor(g.rng, TENANT, n))
    for n in range(4):
        g.visitor(_Visitor(g.rng, OTHER_TENANT, n))
    return Shop(g.events, g.visits, g.meant)


def insert(
    store: ClickHouseStore, events: Sequence[Event], batch: int = 200, received_ns: int | None = None
) -> None:
    """Insert as the pipeline does: per tenant, ProtobufList rows from encode_rows, in batches."""
    received = received_ns or time.time_ns()
    by_tenant: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_tenant[e.tenant].append(e)
    for tenant, tenant_events in by_tenant.items():
        for i in range(0, len(tenant_events), batch):
            events_chunk = tenant_events[i : i + batch]
            chunk = [e.activity() for e in events_chunk]
            # What enrichment adds for a visitor it resolved and for a crawler's user agent, as the
            # pipeline appends it.
            extras = {
                n: (
                    bytes_field(RESOLVED_USER_ID_FIELD, e.resolved_user_id.encode())
                    if e.resolved_user_id
                    else b""
                )
                + (field_key(IS_BOT_FIELD, 0) + b"\x01" if e.is_bot else b"")
                for n, e in enumerate(events_chunk)
                if e.resolved_user_id or e.is_bot
            }
            rows = encode_rows(list(enumerate(chunk)), tenant, received, None, item_extras=extras)
            store.insert_rows(envelope([rows]), len(chunk))


# -- the right answers, in plain Python ------------------------------------------------------------


def distinct(events: Iterable[Event]) -> list[Event]:
    """One event per (tenant, id): what a resent copy does not change."""
    seen: dict[tuple[str, str], Event] = {}
    for e in events:
        seen.setdefault((e.tenant, e.id), e)
    return list(seen.values())


def in_range(events: Iterable[Event], tenant: str, first: dt.date, last: dt.date) -> list[Event]:
    lo, hi = ms_of(first), ms_of(last + dt.timedelta(days=1))
    return [e for e in distinct(events) if (not tenant or e.tenant == tenant) and lo <= e.occurred_ms < hi]


@dataclass
class Session:
    tenant: str
    key: str
    client_session_id: str
    events: list[Event]

    @property
    def start(self) -> int:
        return self.events[0].occurred_ms

    @property
    def end(self) -> int:
        return self.events[-1].occurred_ms

    @property
    def purchases(self) -> int:
        return sum(e.action == "purchase" for e in self.events)

    @property
    def revenue(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for e in self.events:
            if e.action == "purchase" and e.price is not None:
                out[e.currency] += e.revenue
        return dict(out)

    def row(self) -> dict[str, object]:
        """The columns of the `sessions` view that the tests compare."""
        ordered = self.events
        return {
            "tenant_id": self.tenant,
            "client_session_id": self.client_session_id,
            "user_key": ordered[-1].user_key,
            "start_ms": self.start,
            "end_ms": self.end,
            "duration_s": (self.end - self.start) / 1000,
            "activities": len(ordered),
            "views": sum(e.action == "view" for e in ordered),
            "clicks": sum(e.action == "click" for e in ordered),
            "add_to_carts": sum(e.action == "add_to_cart" for e in ordered),
            "purchases": self.purchases,
            "converted": self.purchases > 0,
            "revenue": self.revenue,
            "entry": ordered[0].target,
            "exit": ordered[-1].target,
            "device_type": ordered[0].device_type,
            "sourced": any(e.source_id for e in ordered),
        }


def sessions(events: Iterable[Event]) -> list[Session]:
    """The client's session id where given; else runs of a user's activities with gaps of at most
    30 minutes."""
    by_client: dict[tuple[str, str], list[Event]] = defaultdict(list)
    by_user: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for e in events:
        if e.session_id:
            by_client[(e.tenant, e.session_id)].append(e)
        else:
            by_user[(e.tenant, e.user_key)].append(e)
    out = [
        Session(tenant, sid, sid, sorted(evs, key=lambda e: (e.occurred_ms, e.id)))
        for (tenant, sid), evs in by_client.items()
    ]
    for (tenant, user), evs in by_user.items():
        run: list[Event] = []
        for e in sorted(evs, key=lambda e: (e.occurred_ms, e.id)):
            if run and e.occurred_ms - run[-1].occurred_ms > GAP_MS:
                out.append(Session(tenant, f"{user}@{run[0].occurred_ms}", "", run))
                run = []
            run.append(e)
        if run:
            out.append(Session(tenant, f"{user}@{run[0].occurred_ms}", "", run))
    return out


def session_of(all_sessions: Iterable[Session]) -> dict[str, Session]:
    return {e.id: s for s in all_sessions for e in s.events}


def funnel_level(times_by_step: Sequence[Sequence[int]], window_ms: int) -> int:
    """How many steps, in order, some chain reaches with every step at most window_ms after its
    first: the longest t1 <= t2 <= ... <= tk with tk - t1 <= window_ms."""
    best = 0
    for t1 in times_by_step[0]:
        level, last = 1, t1
        for times in times_by_step[1:]:
            after = [t for t in times if last <= t <= t1 + window_ms]
            if not after:
                break
            last = min(after)
            level += 1
        best = max(best, level)
    return best


def persons(events: Iterable[Event]) -> dict[str, str]:
    """Activity id -> its person: the user id; else the user its anonymous id was last seen with on an
    activity carrying both (any activity given, before or after); else the user identity stitching
    resolved; else the user key."""
    every = distinct(events)
    links: dict[tuple[str, str], tuple[int, str, str]] = {}
    for e in every:
        if e.anonymous_id and e.user_id:
            key = (e.tenant, e.anonymous_id)
            links[key] = max(links.get(key, (-1, "", "")), (e.occurred_ms, e.id, e.user_id))
    out: dict[str, str] = {}
    for e in every:
        linked = links.get((e.tenant, e.anonymous_id), (0, "", ""))[2]
        out[e.id] = e.user_id or linked or e.resolved_user_id or e.user_key
    return out


def humans(events: Iterable[Event], include_bots: bool = False) -> list[Event]:
    """The activities the figures count: copies collapsed, bots left out unless asked for."""
    return [e for e in distinct(events) if include_bots or not e.is_bot]


def funnel(
    events: Iterable[Event], steps: Sequence[str], window_s: int, by: str = "", by_person: bool = True
) -> dict[str, list[int]]:
    """Per dimension value: persons at each step (level >= step); user keys when not by_person."""
    events = list(events)
    person = persons(events)
    groups: dict[tuple[str, str, str], list[Event]] = defaultdict(list)
    for e in humans(events):
        if e.action not in steps:
            continue
        if by == "day":
            dims = [day_of(e.occurred_ms).isoformat()]
        elif by == "device_type":
            dims = [e.device_type]
        elif by == "segment":
            dims = list(e.segments) or [""]
        else:
            dims = [""]
        for d in dims:
            groups[(e.tenant, d, person[e.id] if by_person else e.user_key)].append(e)
    out: dict[str, list[int]] = {}
    for (_, dim, _), evs in groups.items():
        times = [[e.occurred_ms for e in evs if e.action == step] for step in steps]
        level = funnel_level(times, window_s * 1000)
        counts = out.setdefault(dim, [0] * len(steps))
        for k in range(level):
            counts[k] += 1
    return out


def is_touch(e: Event) -> bool:
    """A click or a view with a source id."""
    return bool(e.source_id) and e.action in ("click", "view")


def last_touches(
    events: Sequence[Event], window_s: int, include_bots: bool = False
) -> dict[str, Event | None]:
    """Activity id -> the latest touch by the same person on the same target, at most window_s before it,
    in any session (the activity itself when it is one); None when none. Bots' activities are neither
    attributed nor touches unless include_bots."""
    person = persons(events)
    groups: dict[tuple[str, str, tuple[str, str]], list[Event]] = defaultdict(list)
    for e in humans(events, include_bots):
        groups[(e.tenant, person[e.id], e.target)].append(e)
    out: dict[str, Event | None] = {}
    for evs in groups.values():
        for e in evs:
            touches = [
                t
                for t in evs
                if is_touch(t) and e.occurred_ms - window_s * 1000 <= t.occurred_ms <= e.occurred_ms
            ]
            out[e.id] = max(touches, key=lambda t: t.occurred_ms) if touches else None
    return out


def attribution(events: Sequence[Event], window_s: int, include_bots: bool = False) -> dict[str, str]:
    """Activity id -> the source_id of its last touch (see `last_touches`); '' when none."""
    return {i: t.source_id if t else "" for i, t in last_touches(events, window_s, include_bots).items()}


def revenue_by_currency(events: Iterable[Event]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for e in events:
        if e.action == "purchase" and e.price is not None and e.revenue:
            out[e.currency] += e.revenue
    return dict(out)


def ratio(a: int, b: int, digits: int = 4) -> float:
    return 0.0 if b == 0 else round(a / b, digits)
