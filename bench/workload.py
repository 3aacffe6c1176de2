"""Realistic shop activities, pre-serialized as request templates that are cheap to send many times.

A template is one serialized request body (the activities only). Sending it again costs a copy and
one 12-byte write per activity: the last 12 hex digits of each activity id are replaced by a counter,
so every activity sent is unique, and `sent_at` (plus the stream's `sequence`) is appended as trailing
fields (protobuf readers take fields in any order, and the last value of a scalar field wins). The
generator process therefore spends its CPU on gRPC, not on building messages.

Content: sessions with a stable anonymous id, a user id when logged in, a device, a locale, a user
agent and segments; actions in shop proportions (mostly views, a few purchases); product targets from a
skewed space of two million SKUs with attributes; a search/recommendation `source_id` on about half;
quantity, price and currency on cart and purchase actions; a query on search pages; a custom map.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from core.proto.activity.v1 import activity_pb2 as pb
from core.wire import timestamp_field, varint

SERVICE = "activity.v1.ActivityService"
METHOD_UNARY = f"/{SERVICE}/TrackActivity"
METHOD_BATCH = f"/{SERVICE}/TrackActivities"
METHOD_STREAM = f"/{SERVICE}/StreamActivities"

KINDS = ("unary", "batch", "stream", "segment")
SEGMENT = "segment"
"""Segment's `/v1/batch` on the HTTP port: the same activities as Segment track and page calls, JSON."""
SEGMENT_PATH = "/v1/batch"

_NS = 1_000_000_000

ACTIONS = (
    ("view", 0.68),
    ("click", 0.18),
    ("add_to_cart", 0.08),
    ("remove_from_cart", 0.02),
    ("purchase", 0.04),
)
# Share of sessions from clients on an old SDK, which spell actions, locales, currencies and device types
# their own way ("Add-To-Cart", "en_us", "eur", "Mobile"); the server normalises them.
LEGACY_SDK_SHARE = 0.05
LEGACY_ACTIONS = {
    "view": "View",
    "click": "Click",
    "add_to_cart": "Add-To-Cart",
    "remove_from_cart": "Remove From Cart",
}
LOCALES = (
    "en-US", "en-US", "en-US", "en-GB", "de-DE", "de-DE", "fr-FR", "es-ES", "it-IT", "nl-NL", "pt-BR",
    "ja-JP", "sv-SE", "pl-PL", "fr-CA", "zh-Hant-TW",
)  # fmt: skip
CURRENCY_BY_LOCALE = {
    "en-US": "USD", "en-GB": "GBP", "de-DE": "EUR", "fr-FR": "EUR", "es-ES": "EUR", "it-IT": "EUR",
    "nl-NL": "EUR", "pt-BR": "BRL", "ja-JP": "JPY", "sv-SE": "SEK", "pl-PL": "PLN", "fr-CA": "CAD",
    "zh-Hant-TW": "TWD",
}  # fmt: skip
DEVICES = (("mobile", 0.56), ("desktop", 0.36), ("tablet", 0.07), ("tv", 0.01))
USER_AGENTS = {
    "mobile": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.6367.82 Mobile Safari/537.36",
        "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
        "ShopApp/5.12.1 (iOS 17.4; iPhone15,2; Scale/3.00)",
    ),
    "desktop": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67",
    ),
    "tablet": (
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Mobile/15E148 Safari/604.1",
    ),
    "tv": (
        "Mozilla/5.0 (SMART-TV; Linux; Tizen 7.0) AppleWebKit/537.36 (KHTML, like Gecko) TV Safari/537.36",
    ),
}
SEGMENTS = ("returning", "new", "vip", "newsletter", "high_value", "discount_seeker", "mobile_app", "b2b")
CATEGORIES = (
    "shoes/running", "shoes/sneakers", "apparel/tops", "apparel/jeans", "home/kitchen", "home/bedding",
    "electronics/audio", "electronics/phones", "beauty/skincare", "toys/lego", "sports/cycling", "garden",
)  # fmt: skip
BRANDS = (
    "Acme",
    "Northwind",
    "Contoso",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark",
    "Wayne",
    "Tyrell",
)
COLORS = ("black", "white", "red", "navy", "green", "beige", "grey", "pink")
SIZES = ("XS", "S", "M", "L", "XL", "36", "38", "40", "42", "44", "one-size")
QUERIES = (
    "running shoes", "red dress", "wireless headphones", "lego star wars", "king size duvet",
    "iphone 15 case", "yoga mat", "espresso machine", "kids rain jacket", "nike air max 90", "usb-c charger",
    "linen shirt men", "gift for her", "standing desk",
)  # fmt: skip
REFERRERS = (
    "https://www.google.com/", "https://www.bing.com/", "https://duckduckgo.com/",
    "https://www.instagram.com/", "https://l.facebook.com/", "https://newsletter.shop.example.com/2026-w44",
)  # fmt: skip
EXPERIMENTS = ("checkout-v2", "reco-carousel", "free-shipping-banner", "search-ranker-b")
N_PRODUCTS = 2_000_000
SHOP = "https://shop.example.com"


def _weighted(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    x = rng.random()
    for value, weight in table:
        x -= weight
        if x < 0:
            return value
    return table[-1][0]


@dataclass
class _Session:
    legacy: bool
    session_id: str
    anonymous_id: str
    user_id: str
    identities: dict[str, str]
    device: str
    locale: str
    currency: str
    user_agent: str
    segments: list[str]


def _session(rng: random.Random) -> _Session:
    device = _weighted(rng, DEVICES)
    logged_in = rng.random() < 0.4
    segments = rng.sample(SEGMENTS, rng.choice((0, 0, 1, 1, 2, 3)))
    legacy = rng.random() < LEGACY_SDK_SHARE
    locale = rng.choice(LOCALES)
    return _Session(
        legacy=legacy,
        session_id=f"{rng.getrandbits(64):016x}",
        anonymous_id=f"anon-{uuid.UUID(int=rng.getrandbits(128))}",
        user_id=f"u-{rng.randrange(10_000_000)}" if logged_in else "",
        identities={"crm": f"C-{rng.randrange(1_000_000):06d}"} if logged_in and rng.random() < 0.25 else {},
        device=device.title() if legacy else device,
        locale=locale.lower().replace("-", "_") if legacy else locale,
        currency=CURRENCY_BY_LOCALE[locale].lower() if legacy else CURRENCY_BY_LOCALE[locale],
        user_agent=rng.choice(USER_AGENTS[device]),
        segments=segments,
    )


def make_activity(rng: random.Random, session: _Session, now_ns: int) -> pb.Activity:
    """One activity of `session`, with a unique random (placeholder) id."""
    action = _weighted(rng, ACTIONS)
    spelled = LEGACY_ACTIONS.get(action, action) if session.legacy else action
    # Skewed popularity: a few products get most of the traffic, the long tail the rest.
    sku = int(N_PRODUCTS * rng.random() ** 3)
    category = CATEGORIES[sku % len(CATEGORIES)]
    kind = "product"
    if action == "view" and rng.random() < 0.08:
        kind = rng.choice(("category", "page"))
    if kind == "product":
        target_id = f"SKU-{sku:07d}" if sku % 3 else f"{BRANDS[sku % len(BRANDS)][:3].upper()}{sku}"
        attributes = {"brand": BRANDS[sku % len(BRANDS)], "category": category}
        if rng.random() < 0.7:
            attributes["color"] = COLORS[(sku // 7) % len(COLORS)]
        if rng.random() < 0.5:
            attributes["size"] = rng.choice(SIZES)
        if rng.random() < 0.3:
            attributes["list_price"] = str(499 + sku % 20000)
        page_url = f"{SHOP}/p/{category.split('/')[-1]}-{target_id.lower()}"
    elif kind == "category":
        target_id = category
        attributes = {"depth": str(category.count("/") + 1)}
        page_url = f"{SHOP}/c/{category}?page={rng.randint(1, 5)}"
    else:
        target_id = rng.choice(("home", "deals", "new-in", "help/returns"))
        attributes = {}
        page_url = f"{SHOP}/{target_id}"
    query = ""
    source_id = ""
    if rng.random() < 0.5:
        source_id = f"resp-{rng.getrandbits(48):012x}"
        if rng.random() < 0.35:
            query = rng.choice(QUERIES)
            page_url = f"{SHOP}/search?q={query.replace(' ', '+')}"
    metadata = pb.Metadata(
        locale=session.locale,
        device_type=session.device,
        page_url=page_url,
        referrer=rng.choice(REFERRERS) if rng.random() < 0.3 else f"{SHOP}/",
        user_agent=session.user_agent,
        query=query,
        custom={"ab_test": rng.choice(EXPERIMENTS), "bucket": rng.choice("AB"), "channel": "web"},
    )
    if action in ("add_to_cart", "remove_from_cart", "purchase"):
        metadata.quantity = rng.choice((1, 1, 1, 1, 2, 2, 3, 5))
        metadata.price = 199 + (sku * 37) % 50000
        metadata.currency = session.currency
    if action == "purchase":
        metadata.order_id = f"o-{rng.randrange(100_000_000)}"
    occurred = now_ns - rng.randrange(0, 5 * _NS)
    activity = pb.Activity(
        id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        action=spelled,
        target=pb.Target(type=kind, id=target_id, attributes=attributes),
        user=pb.User(
            session_id=session.session_id,
            anonymous_id=session.anonymous_id,
            user_id=session.user_id,
            identities=session.identities,
        ),
        source_id=source_id,
        metadata=metadata,
        segments=session.segments,
    )
    activity.occurred_at.FromNanoseconds(occurred)
    return activity


def make_activities(count: int, seed: int, now_ns: int | None = None) -> list[pb.Activity]:
    rng = random.Random(seed)
    now_ns = time.time_ns() if now_ns is None else now_ns
    sessions = [_session(rng) for _ in range(max(1, count // 12))]
    return [make_activity(rng, rng.choice(sessions), now_ns) for _ in range(count)]


SEGMENT_EVENTS = {
    "view": "Product Viewed",
    "click": "Product Clicked",
    "add_to_cart": "Product Added",
    "remove_from_cart": "Product Removed",
    "purchase": "Order Completed",
}
# Minor units per major unit of the currencies the workload uses (JPY has none).
_MINOR = {"JPY": 1}


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / _NS, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def segment_call(a: pb.Activity) -> dict[str, object]:
    """The Segment call an SDK sends for the activity `a` (one activity each: one product an order)."""
    m = a.metadata
    context: dict[str, object] = {
        "userAgent": m.user_agent,
        "locale": m.locale,
        "page": {"url": m.page_url, "referrer": m.referrer},
    }
    call: dict[str, object] = {"messageId": a.id, "anonymousId": a.user.anonymous_id, "context": context}
    if a.user.user_id:
        call["userId"] = a.user.user_id
    call["timestamp"] = _iso(a.occurred_at.ToNanoseconds())
    properties: dict[str, object] = dict(m.custom)
    if a.source_id:
        properties["source_id"] = a.source_id
    if a.target.type != "product":
        call["type"] = "page"
        properties |= {"path": "/" + a.target.id, "url": m.page_url}
        call["properties"] = properties
        return call
    action = a.action.lower().replace("-", "_").replace(" ", "_")
    product: dict[str, object] = {"product_id": a.target.id, **a.target.attributes}
    if m.HasField("price"):
        currency = m.currency.upper()
        product["price"] = m.price / _MINOR.get(currency, 100)
        product["quantity"] = m.quantity
        properties["currency"] = currency
    if action == "purchase":
        properties |= {"order_id": m.order_id, "products": [product]}
    else:
        properties |= product
    call |= {"type": "track", "event": SEGMENT_EVENTS[action], "properties": properties}
    return call


@dataclass
class Template:
    body: bytes
    id_offsets: list[int]
    """Offset, in `body`, of the first byte of each activity's 36-character id."""


def build_templates(kind: str, batch_size: int, count: int, seed: int) -> list[Template]:
    """`count` distinct request bodies of `batch_size` activities each, for the RPC of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown request kind {kind!r}")
    activities = make_activities(batch_size * count, seed)
    templates = []
    for n in range(count):
        chunk = activities[n * batch_size : (n + 1) * batch_size]
        if kind == SEGMENT:
            # Without its closing brace: each request appends its own `sentAt`.
            body = json.dumps({"batch": [segment_call(a) for a in chunk]}, separators=(",", ":"))[
                :-1
            ].encode()
        elif kind == "unary":
            body = pb.TrackActivityRequest(activity=chunk[0]).SerializeToString()
        elif kind == "batch":
            body = pb.TrackActivitiesRequest(activities=chunk).SerializeToString()
        else:
            body = pb.StreamActivitiesRequest(activities=chunk).SerializeToString()
        offsets = []
        for a in chunk:
            at = body.find(a.id.encode())
            if at < 0 or body.find(a.id.encode(), at + 1) >= 0:
                raise AssertionError("placeholder id not found exactly once")
            offsets.append(at)
        templates.append(Template(body, offsets))
    return templates


class RequestFactory:
    """Fresh requests from templates: unique ids (a random per-factory prefix and a counter), the
    current `sent_at`, and for streams the `sequence`."""

    def __init__(self, kind: str, templates: list[Template], rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self.kind = kind
        self.templates = templates
        self.batch_size = len(templates[0].id_offsets)
        self._sent_at_field = 3 if kind == "stream" else 2
        self._next = 0
        self._counter = 0
        # UUID version 4 layout; the random 62 bits of the prefix tell factories (processes, runs) apart.
        self.id_prefix = (
            f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-"
            f"{0x8000 | rng.getrandbits(14):04x}-"
        ).encode()

    @property
    def issued(self) -> int:
        """Activities issued so far (each with its own id)."""
        return self._counter

    def make(self, sequence: int = 0) -> bytes:
        template = self.templates[self._next]
        self._next = (self._next + 1) % len(self.templates)
        buf = bytearray(template.body)
        counter = self._counter
        prefix = self.id_prefix
        for offset in template.id_offsets:
            buf[offset : offset + 36] = b"%s%012x" % (prefix, counter)
            counter += 1
        self._counter = counter
        if self.kind == SEGMENT:
            buf += b',"sentAt":"%s"}' % _iso(time.time_ns()).encode()
            return bytes(buf)
        if sequence:
            buf += b"\x08" + varint(sequence)
        buf += timestamp_field(self._sent_at_field, time.time_ns())
        return bytes(buf)

    def ids_of(self, request: bytes) -> list[str]:
        """The activity ids of a request made here (for checks and tests)."""
        message: object
        if self.kind == SEGMENT:
            return [str(call["messageId"]) for call in json.loads(request)["batch"]]
        if self.kind == "unary":
            message = pb.TrackActivityRequest.FromString(request)
            return [message.activity.id]
        if self.kind == "batch":
            return [a.id for a in pb.TrackActivitiesRequest.FromString(request).activities]
        return [a.id for a in pb.StreamActivitiesRequest.FromString(request).activities]
