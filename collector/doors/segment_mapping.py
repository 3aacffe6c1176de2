"""Segment Tracking API calls as activities: the translation of the Segment door, with no I/O.

One Segment call (`track`, `page`, `screen`, `identify`, `alias`, `group`, as a dict decoded from JSON)
becomes zero or more `activity.v1.Activity` messages, or a `MappingError` naming the field at fault.
What the activities then go through (validation, processors, enrichment, storage) is the service's,
as for any other door. The table of what goes where is docs/segment.md.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from core.normalize import normalize_currency
from core.proto.activity.v1 import activity_pb2 as pb
from core.validation import INVALID_VALUE, MISSING_FIELD, OUT_OF_RANGE, is_uuid

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

    Activities = RepeatedCompositeFieldContainer[pb.Activity]

CALL_TYPES = ("track", "page", "screen", "identify", "alias", "group")

# The namespace of the ids made from message ids that are not UUIDs: the same message id (an SDK's
# retry) always gives the same activity id.
MESSAGE_NAMESPACE = uuid.UUID("6f0c1c55-52a4-4a54-8d3e-5e67a7c1b0d1")

# ISO 4217 minor units of the currencies whose exponent is not 2.
_EXPONENTS = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}
DEFAULT_CURRENCY = "USD"
_INT64 = 2**63

ECOMMERCE = {
    "product viewed": "view",
    "product clicked": "click",
    "product added": "add_to_cart",
    "product removed": "remove_from_cart",
}
ORDER_COMPLETED = "order completed"
PRODUCTS_SEARCHED = "products searched"
PRODUCT_LIST_VIEWED = "product list viewed"

# The spec's event names as SDKs send them, so that the common case is one lookup.
_EVENT_NAMES = {
    name.title(): name for name in (*ECOMMERCE, ORDER_COMPLETED, PRODUCTS_SEARCHED, PRODUCT_LIST_VIEWED)
}

SOURCE_ID_KEYS = ("source_id", "query_id", "queryID")
# Properties that become fields of the activity, not `metadata.custom` entries.
_CONSUMED = frozenset(
    (*SOURCE_ID_KEYS, "product_id", "sku", "price", "quantity", "currency", "products", "order_id", "query")
)
_PAGE_CONSUMED = frozenset((*SOURCE_ID_KEYS, "url", "referrer", "path"))
_SOURCE_IDS = frozenset(SOURCE_ID_KEYS)
_CAMPAIGN = {"name": "utm_campaign", "source": "utm_source", "medium": "utm_medium"}
_CAMPAIGN |= {"term": "utm_term", "content": "utm_content"}
_NOT_ACTION = re.compile(r"[^a-z0-9_.:]+")


def exponent(currency: str) -> int:
    """The number of decimals of `currency`'s minor unit (ISO 4217)."""
    return _EXPONENTS.get(currency, 2)


class MappingError(Exception):
    """A call that does not map onto an activity: the field at fault (as sent) and why."""

    def __init__(self, field: str, reason: int, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason
        self.message = message


def _text(value: Any) -> str:
    """An id or a name as Segment's SDKs send them: strings, and numbers taken as their text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return ""


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _dict(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MappingError(field, INVALID_VALUE, f"{field} must be an object")
    return value


def action_of(event: str) -> str:
    """An event name as an action: 'Signed Up' is 'signed_up', 'Video: Played' is 'video:_played'."""
    name = _NOT_ACTION.sub("_", event.strip().lower()).strip("_")
    if name and not name[0].isalpha():
        name = "event_" + name
    return name


def minor_units(value: Any, currency: str, field: str) -> int:
    """A decimal price (a number or its text) in `currency`'s minor units, exactly: 19.99 EUR is
    1999, 1500 JPY is 1500, 1.234 BHD is 1234. More decimals than the currency has is an error."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MappingError(field, INVALID_VALUE, f"{field} must be a number")
    try:
        # repr of a float is its shortest exact decimal text: 19.99 stays 19.99, not 19.989999...
        amount = Decimal(value if isinstance(value, str) else repr(value))
    except InvalidOperation:
        raise MappingError(field, INVALID_VALUE, f"{field} must be a number") from None
    if not amount.is_finite():
        raise MappingError(field, INVALID_VALUE, f"{field} must be a finite number")
    scaled = amount.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise MappingError(
            field,
            INVALID_VALUE,
            f"{field} {value} has more decimals than {currency} has ({exponent(currency)})",
        )
    minor = int(scaled)
    if not -_INT64 <= minor < _INT64:
        raise MappingError(field, OUT_OF_RANGE, f"{field} is too large")
    return minor


def _quantity(value: Any, field: str, low: int = -_INT64, high: int = _INT64) -> int:
    """A whole number (a JSON number without a fraction) in [low, high)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MappingError(field, INVALID_VALUE, f"{field} must be a whole number")
    if value != int(value):
        raise MappingError(field, INVALID_VALUE, f"{field} must be a whole number")
    if not low <= value < high:
        raise MappingError(field, OUT_OF_RANGE, f"{field} must be at least {low} and below {high}")
    return int(value)


def parse_time(value: Any, field: str) -> int:
    """An ISO 8601 time (as Segment's SDKs send it) in nanoseconds since the epoch."""
    if not isinstance(value, str):
        raise MappingError(field, INVALID_VALUE, f"{field} must be an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise MappingError(
            field, INVALID_VALUE, f"{field} must be an ISO 8601 time, got {value[:64]!r}"
        ) from None
    if moment.tzinfo is None:
        raise MappingError(field, INVALID_VALUE, f"{field} must carry a time zone, got {value[:64]!r}")
    whole = int(moment.timestamp())
    return whole * 1_000_000_000 + moment.microsecond * 1000


def activity_id(message_id: str, k: int = 0) -> str:
    """The id of the k-th activity of a call: its message id when that is a UUID (k = 0), else a UUID
    derived from it, the same for every retry of the call."""
    if not message_id:
        return ""
    if k == 0 and is_uuid(message_id):
        return message_id.lower()
    return str(uuid.uuid5(MESSAGE_NAMESPACE, message_id if k == 0 else f"{message_id}#{k}"))


def _source_id(properties: Mapping[str, Any]) -> str:
    for key in SOURCE_ID_KEYS:
        value = properties.get(key)
        if value is not None:
            text = value if type(value) is str else _text(value)
            if text:
                return text
    return ""


def _base(activity: pb.Activity, call: Mapping[str, Any]) -> pb.Activity:
    """`activity` (empty) given the fields every activity of a call shares: user, time, context. (On
    every call's path: one lookup per field, and the protobuf touched only for what the call has.)"""
    anonymous_id = call.get("anonymousId")
    user_id = call.get("userId")
    if anonymous_id is not None or user_id is not None:
        user = activity.user
        if anonymous_id is not None:
            user.anonymous_id = anonymous_id if type(anonymous_id) is str else _text(anonymous_id)
        if user_id is not None:
            user.user_id = user_id if type(user_id) is str else _text(user_id)
    when = call.get("timestamp")
    field = "timestamp"
    if not when:
        when = call.get("originalTimestamp")
        field = "originalTimestamp"
    if when is not None:
        occurred_at = activity.occurred_at
        occurred_at.seconds, occurred_at.nanos = divmod(parse_time(when, field), 1_000_000_000)
    context = call.get("context")
    if not context:
        return activity
    if type(context) is not dict:
        raise MappingError("context", INVALID_VALUE, "context must be an object")
    metadata = activity.metadata
    user_agent = context.get("userAgent")
    if type(user_agent) is str:
        metadata.user_agent = user_agent
    locale = context.get("locale")
    if type(locale) is str:
        metadata.locale = locale
    page = context.get("page")
    if page:
        if type(page) is not dict:
            raise MappingError("context.page", INVALID_VALUE, "context.page must be an object")
        url = page.get("url")
        if type(url) is str:
            metadata.page_url = url
        referrer = page.get("referrer")
        if type(referrer) is str:
            metadata.referrer = referrer
    campaign = context.get("campaign")
    if campaign:
        if type(campaign) is not dict:
            raise MappingError("context.campaign", INVALID_VALUE, "context.campaign must be an object")
        custom = metadata.custom
        for key, value in campaign.items():
            if value is not None:
                custom[_CAMPAIGN.get(key) or f"utm_{key}"] = (
                    value if type(value) is str else _json_text(value)
                )
    return activity


def _custom(activity: pb.Activity, properties: Mapping[str, Any], consumed: frozenset[str]) -> None:
    custom = activity.metadata.custom
    for key, value in properties.items():
        if value is not None and key not in consumed:
            custom[key] = value if type(value) is str else _json_text(value)


def _product_target(activity: pb.Activity, product: Mapping[str, Any], field: str) -> None:
    target_id = product.get("product_id")
    if type(target_id) is not str:
        target_id = _text(target_id)
    if not target_id:
        target_id = _text(product.get("sku"))
        if not target_id:
            raise MappingError(
                f"{field}.product_id", MISSING_FIELD, f"{field}.product_id (or sku) is required"
            )
    target = activity.target
    target.type = "product"
    target.id = target_id


def _currency(properties: Mapping[str, Any]) -> str:
    sent = properties.get("currency")
    if sent is None or sent == "":
        return DEFAULT_CURRENCY
    code = normalize_currency(_text(sent))
    if code is None:
        raise MappingError(
            "properties.currency",
            INVALID_VALUE,
            f"properties.currency {str(sent)[:16]!r} is not an ISO 4217 code",
        )
    return code


def _money(
    activity: pb.Activity, product: Mapping[str, Any], properties: Mapping[str, Any], field: str
) -> None:
    """Price (in the currency of `properties`) and quantity of `product`, when it has them."""
    price = product.get("price")
    quantity = product.get("quantity")
    if price is None and quantity is None:
        return
    metadata = activity.metadata
    if price is not None:
        currency = _currency(properties)
        metadata.price = minor_units(price, currency, f"{field}.price")
        metadata.currency = currency
    if quantity is not None:
        metadata.quantity = _quantity(quantity, f"{field}.quantity")


class Mapper:
    """Calls to activities. Stateless apart from its settings; one per door."""

    def map(self, call: Mapping[str, Any], call_type: str) -> list[pb.Activity]:
        """The activities of one call of type `call_type`; MappingError when it maps onto none."""
        request = pb.TrackActivitiesRequest()
        self.map_into(request.activities, call, call_type)
        return list(request.activities)

    def map_into(self, activities: Activities, call: Mapping[str, Any], call_type: str) -> int:
        """Append the activities of one call to `activities`, a request's repeated field (serialized
        with the request, each activity is written once, not copied); their number. MappingError, or
        ValueError and TypeError from protobuf, leave `activities` as they were."""
        start = len(activities)
        try:
            if call_type == "track":
                self._track(activities, call)
            elif call_type in ("page", "screen"):
                self._view(activities.add(), call, call_type)
            elif call_type in ("identify", "alias"):
                self._identity(activities.add(), call, call_type)
            elif call_type == "group":
                self._group(activities.add(), call)
            else:
                raise MappingError("type", INVALID_VALUE, f"type must be one of {', '.join(CALL_TYPES)}")
        except BaseException:
            del activities[start:]
            raise
        return len(activities) - start

    def _track(self, activities: Activities, call: Mapping[str, Any]) -> None:
        event = call.get("event")
        if not isinstance(event, str) or not event.strip():
            raise MappingError("event", MISSING_FIELD, "event is required for a track call")
        properties = _dict(call.get("properties"), "properties")
        message_id = _text(call.get("messageId"))
        name = _EVENT_NAMES.get(event) or event.strip().lower()
        if name in (ORDER_COMPLETED, PRODUCT_LIST_VIEWED):
            # One activity per product, each a copy of what the call's activities share.
            base = _base(pb.Activity(), call)
            base.source_id = _source_id(properties)
            if name == ORDER_COMPLETED:
                self._order(activities, base, properties, message_id)
            else:
                self._impressions(activities, base, properties, message_id)
            return
        activity = _base(activities.add(), call)
        activity.source_id = _source_id(properties)
        if name in ECOMMERCE:
            activity.id = activity_id(message_id)
            activity.action = ECOMMERCE[name]
            _product_target(activity, properties, "properties")
            _money(activity, properties, properties, "properties")
            _custom(activity, properties, _CONSUMED)
            return
        if name == PRODUCTS_SEARCHED:
            query = _text(properties.get("query"))
            if not query:
                raise MappingError("properties.query", MISSING_FIELD, "properties.query is required")
            activity.id = activity_id(message_id)
            activity.action = "search"
            activity.target.type = "search"
            activity.target.id = query
            activity.metadata.query = query
            if activity.source_id:
                activity.source.type = "search"
            _custom(activity, properties, _CONSUMED)
            return
        action = action_of(event)
        if not action:
            raise MappingError("event", INVALID_VALUE, "event must hold a letter or a digit")
        activity.id = activity_id(message_id)
        activity.action = action
        if properties.get("product_id") or properties.get("sku"):
            _product_target(activity, properties, "properties")
            _money(activity, properties, properties, "properties")
            _custom(activity, properties, _CONSUMED)
        else:
            activity.target.type = "event"
            activity.target.id = event.strip()
            _custom(activity, properties, _SOURCE_IDS)

    def _order(
        self, activities: Activities, base: pb.Activity, properties: Mapping[str, Any], message_id: str
    ) -> None:
        products = properties.get("products")
        if not isinstance(products, list) or not products:
            raise MappingError(
                "properties.products", MISSING_FIELD, "properties.products must list the products bought"
            )
        order_id = _text(properties.get("order_id")) or _text(properties.get("checkout_id"))
        _custom(base, properties, _CONSUMED)
        for k, product in enumerate(products):
            field = f"properties.products[{k}]"
            activity = activities.add()
            activity.CopyFrom(base)
            activity.id = activity_id(message_id, k)
            activity.action = "purchase"
            product = _dict(product, field)
            _product_target(activity, product, field)
            _money(activity, product, properties, field)
            if order_id:
                activity.metadata.order_id = order_id

    def _impressions(
        self, activities: Activities, base: pb.Activity, properties: Mapping[str, Any], message_id: str
    ) -> None:
        products = properties.get("products")
        if not isinstance(products, list) or not products:
            raise MappingError(
                "properties.products", MISSING_FIELD, "properties.products must list the products shown"
            )
        # The list as shown is the response the impressions belong to: its own id when sent, else the
        # call's message id.
        if not base.source_id:
            base.source_id = message_id
        base.action = "impression"
        if base.source_id:
            base.source.type = "list"
            base.source.name = _text(properties.get("list_id")) or _text(properties.get("category"))
        _custom(base, properties, _CONSUMED | {"list_id"})
        for k, product in enumerate(products):
            field = f"properties.products[{k}]"
            activity = activities.add()
            activity.CopyFrom(base)
            activity.id = activity_id(message_id, k)
            product = _dict(product, field)
            _product_target(activity, product, field)
            if base.source_id:
                position = product.get("position", k + 1)
                activity.source.position = _quantity(position, f"{field}.position", 0, 2**32)

    def _view(self, activity: pb.Activity, call: Mapping[str, Any], call_type: str) -> None:
        properties = _dict(call.get("properties"), "properties")
        _base(activity, call)
        activity.id = activity_id(_text(call.get("messageId")))
        activity.action = "view"
        activity.target.type = call_type
        activity.source_id = _source_id(properties)
        name = _text(call.get("name"))
        context_page = _dict(_dict(call.get("context"), "context").get("page"), "context.page")
        if call_type == "page":
            target = _text(properties.get("path")) or _text(context_page.get("path")) or name or "/"
        else:
            target = name
            if not target:
                raise MappingError("name", MISSING_FIELD, "name is required for a screen call")
        activity.target.id = target
        if isinstance(properties.get("url"), str):
            activity.metadata.page_url = properties["url"]
        if isinstance(properties.get("referrer"), str):
            activity.metadata.referrer = properties["referrer"]
        if name and call_type == "page":
            activity.metadata.custom["name"] = name
        category = call.get("category")
        if isinstance(category, str) and category:
            activity.metadata.custom["category"] = category
        _custom(activity, properties, _PAGE_CONSUMED)

    def _identity(self, activity: pb.Activity, call: Mapping[str, Any], call_type: str) -> None:
        """identify and alias: an activity carrying both ids, which enrichment records as a link."""
        _base(activity, call)
        activity.id = activity_id(_text(call.get("messageId")))
        activity.action = call_type
        activity.target.type = "user"
        if call_type == "alias":
            previous = _text(call.get("previousId"))
            if not previous:
                raise MappingError("previousId", MISSING_FIELD, "previousId is required for an alias call")
            if not activity.user.user_id:
                raise MappingError("userId", MISSING_FIELD, "userId is required for an alias call")
            activity.user.anonymous_id = previous
        activity.target.id = activity.user.user_id or activity.user.anonymous_id

    def _group(self, activity: pb.Activity, call: Mapping[str, Any]) -> None:
        _base(activity, call)
        activity.id = activity_id(_text(call.get("messageId")))
        group_id = _text(call.get("groupId"))
        if not group_id:
            raise MappingError("groupId", MISSING_FIELD, "groupId is required for a group call")
        activity.action = "group"
        activity.target.type = "group"
        activity.target.id = group_id
