"""The Segment mapping, field by field, as docs/segment.md states it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from collector.doors.segment_mapping import (
    MESSAGE_NAMESPACE,
    Mapper,
    MappingError,
    action_of,
    activity_id,
    minor_units,
)
from core.proto.activity.v1 import activity_pb2 as pb

mapper = Mapper()
MESSAGE_ID = "3b6a5b4e-1d4f-4c1a-9a55-0c8b9e3f7d21"
CONTEXT = {
    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0",
    "locale": "en-GB",
    "ip": "203.0.113.9",
    "page": {"url": "https://shop.example/p/1?utm_source=news", "referrer": "https://news.example/"},
    "campaign": {"name": "spring", "source": "news", "medium": "email", "term": "shoes", "content": "a"},
}


def call(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "messageId": MESSAGE_ID,
        "anonymousId": "anon-1",
        "timestamp": "2026-11-02T10:15:00.250Z",
        "context": CONTEXT,
    }
    base.update(fields)
    return base


def one(kind: str, **fields: Any) -> pb.Activity:
    activities = mapper.map(call(**fields), kind)
    assert len(activities) == 1
    return activities[0]


def test_common_fields_come_from_the_call_and_its_context() -> None:
    a = one("track", event="Product Viewed", userId="u-1", properties={"product_id": "sku-1"})
    assert a.id == MESSAGE_ID
    assert (a.user.anonymous_id, a.user.user_id) == ("anon-1", "u-1")
    assert a.occurred_at.ToDatetime(UTC) == datetime(2026, 11, 2, 10, 15, 0, 250_000, UTC)
    m = a.metadata
    assert m.user_agent == CONTEXT["userAgent"]
    assert m.locale == "en-GB"
    assert m.page_url == "https://shop.example/p/1?utm_source=news"
    assert m.referrer == "https://news.example/"
    assert dict(m.custom) == {
        "utm_campaign": "spring",
        "utm_source": "news",
        "utm_medium": "email",
        "utm_term": "shoes",
        "utm_content": "a",
    }
    # No IP address anywhere in the activity.
    assert "203.0.113.9" not in str(a)


def test_original_timestamp_is_used_without_timestamp() -> None:
    a = one("page", timestamp=None, originalTimestamp="2026-11-02T11:15:00+01:00")
    assert a.occurred_at.ToDatetime(UTC) == datetime(2026, 11, 2, 10, 15, tzinfo=UTC)
    assert not one("page", timestamp=None).HasField("occurred_at")


def test_message_ids_that_are_not_uuids_map_to_a_stable_uuid() -> None:
    a = one("track", event="Signed Up", messageId="ajs-next-1700000000000-abc")
    assert a.id == str(uuid.uuid5(MESSAGE_NAMESPACE, "ajs-next-1700000000000-abc"))
    assert one("track", event="Signed Up", messageId="ajs-next-1700000000000-abc").id == a.id
    assert activity_id("ajs-1", 1) != activity_id("ajs-1", 0) != activity_id("ajs-2", 0)
    assert activity_id(MESSAGE_ID.upper()) == MESSAGE_ID
    assert one("track", event="Signed Up", messageId=None).id == ""


@pytest.mark.parametrize(
    ("event", "action"),
    [
        ("Product Viewed", "view"),
        ("Product Clicked", "click"),
        ("Product Added", "add_to_cart"),
        ("Product Removed", "remove_from_cart"),
    ],
)
def test_ecommerce_product_events(event: str, action: str) -> None:
    properties = {
        "product_id": "p-7",
        "sku": "SKU-7",
        "price": 19.99,
        "quantity": 2,
        "currency": "eur",
        "name": "Shoe",
        "variant": {"size": 42},
    }
    a = one("track", event=event, properties=properties)
    assert a.action == action
    assert (a.target.type, a.target.id) == ("product", "p-7")
    assert (a.metadata.price, a.metadata.currency, a.metadata.quantity) == (1999, "EUR", 2)
    # Properties not mapped onto a field are kept, non-strings as JSON text.
    assert a.metadata.custom["name"] == "Shoe"
    assert json.loads(a.metadata.custom["variant"]) == {"size": 42}
    assert "price" not in a.metadata.custom and "product_id" not in a.metadata.custom


def test_the_target_falls_back_to_the_sku() -> None:
    a = one("track", event="Product Viewed", properties={"sku": "SKU-7"})
    assert a.target.id == "SKU-7"
    assert not a.metadata.HasField("price")
    with pytest.raises(MappingError) as error:
        one("track", event="Product Viewed", properties={"name": "no id"})
    assert error.value.field == "properties.product_id"


@pytest.mark.parametrize(
    ("value", "currency", "minor"),
    [
        (19.99, "EUR", 1999),
        ("19.99", "EUR", 1999),
        (0.1, "EUR", 10),
        (1500, "JPY", 1500),
        (1500.0, "JPY", 1500),
        (1.234, "BHD", 1234),
        (12.5, "BHD", 12500),
        (1234567.89, "USD", 123456789),
        (0.29, "USD", 29),
    ],
)
def test_prices_are_exact_minor_units(value: Any, currency: str, minor: int) -> None:
    assert minor_units(value, currency, "price") == minor
    # The independent computation: the decimal text times 10 ** exponent.
    exponent = {"EUR": 2, "USD": 2, "JPY": 0, "BHD": 3}[currency]
    assert Decimal(str(value)) * 10**exponent == minor


@pytest.mark.parametrize(
    ("value", "currency"), [(100.5, "JPY"), (1.2345, "BHD"), ("abc", "EUR"), (True, "EUR")]
)
def test_prices_the_currency_cannot_hold_are_refused(value: Any, currency: str) -> None:
    with pytest.raises(MappingError) as error:
        minor_units(value, currency, "properties.price")
    assert error.value.field == "properties.price"


def test_order_completed_is_one_purchase_per_product() -> None:
    properties = {
        "order_id": "o-1",
        "currency": "JPY",
        "total": 4500,
        "coupon": "WINTER",
        "products": [
            {"product_id": "p-1", "price": 1500, "quantity": 2},
            {"sku": "SKU-2", "price": 1500},
        ],
    }
    activities = mapper.map(call(event="Order Completed", properties=properties), "track")
    assert [(a.action, a.target.id) for a in activities] == [("purchase", "p-1"), ("purchase", "SKU-2")]
    assert [(a.metadata.price, a.metadata.currency, a.metadata.order_id) for a in activities] == [
        (1500, "JPY", "o-1"),
        (1500, "JPY", "o-1"),
    ]
    assert activities[0].metadata.quantity == 2
    assert not activities[1].metadata.HasField("quantity")
    assert activities[0].id == MESSAGE_ID
    assert activities[1].id == activity_id(MESSAGE_ID, 1) != MESSAGE_ID
    assert activities[1].metadata.custom["coupon"] == "WINTER"
    assert "products" not in activities[0].metadata.custom
    with pytest.raises(MappingError) as error:
        mapper.map(call(event="Order Completed", properties={"order_id": "o-2"}), "track")
    assert error.value.field == "properties.products"
    bad = {"products": [{"product_id": "p-1", "price": 1.5}], "currency": "JPY"}
    with pytest.raises(MappingError) as error:
        mapper.map(call(event="Order Completed", properties=bad), "track")
    assert error.value.field == "properties.products[0].price"


def test_a_call_that_fails_midway_leaves_no_activity_behind() -> None:
    """Calls are mapped into one request: a call refused after some of its activities were added
    takes them out again, and its neighbours keep theirs."""
    activities = pb.TrackActivitiesRequest().activities
    products = [{"product_id": "p-1", "price": 15}, {"product_id": "p-2", "price": 1.5}]
    half_bad = call(event="Order Completed", properties={"currency": "JPY", "products": products})
    assert mapper.map_into(activities, call(event="Signed Up", messageId="m-1"), "track") == 1
    with pytest.raises(MappingError) as error:
        mapper.map_into(activities, half_bad, "track")
    assert error.value.field == "properties.products[1].price"
    with pytest.raises(ValueError):  # protobuf refuses a lone surrogate
        mapper.map_into(activities, call(name="\ud800"), "screen")
    assert mapper.map_into(activities, call(name="Home", messageId="m-2"), "screen") == 1
    assert [(a.action, a.target.id) for a in activities] == [("signed_up", "Signed Up"), ("view", "Home")]


def test_a_price_without_a_currency_is_in_usd() -> None:
    a = one("track", event="Product Added", properties={"product_id": "p", "price": 5})
    assert (a.metadata.price, a.metadata.currency) == (500, "USD")
    with pytest.raises(MappingError) as error:
        one("track", event="Product Added", properties={"product_id": "p", "price": 5, "currency": "XYZ"})
    assert error.value.field == "properties.currency"


def test_products_searched_is_a_search_with_its_response_id() -> None:
    a = one("track", event="Products Searched", properties={"query": "blue shoes", "queryID": "q-77"})
    assert a.action == "search"
    assert (a.target.type, a.target.id, a.metadata.query) == ("search", "blue shoes", "blue shoes")
    assert a.source_id == "q-77"
    assert a.source.type == "search"
    with pytest.raises(MappingError) as error:
        one("track", event="Products Searched", properties={})
    assert error.value.field == "properties.query"


def test_product_list_viewed_is_one_impression_per_product_with_its_position() -> None:
    properties = {
        "list_id": "home-recs",
        "category": "Shoes",
        "source_id": "r-5",
        "products": [{"product_id": "p-1"}, {"product_id": "p-2", "position": 7}, {"sku": "S-3"}],
    }
    activities = mapper.map(call(event="Product List Viewed", properties=properties), "track")
    assert [(a.action, a.target.id, a.source.position) for a in activities] == [
        ("impression", "p-1", 1),
        ("impression", "p-2", 7),
        ("impression", "S-3", 3),
    ]
    assert {(a.source_id, a.source.type, a.source.name) for a in activities} == {("r-5", "list", "home-recs")}
    assert len({a.id for a in activities}) == 3
    # Without a response id, the list view itself is the response.
    without = mapper.map(
        call(event="Product List Viewed", properties={"products": [{"product_id": "p"}]}), "track"
    )
    assert without[0].source_id == MESSAGE_ID


@pytest.mark.parametrize("key", ["source_id", "query_id", "queryID"])
def test_a_response_id_in_the_properties_is_the_source_id(key: str) -> None:
    a = one("track", event="Product Clicked", properties={"product_id": "p", key: "r-1"})
    assert a.source_id == "r-1"


def test_other_track_events_keep_their_name_and_properties() -> None:
    properties = {"plan": "pro", "seats": 3, "trial": True, "price": 9.5, "tags": ["a", "b"]}
    a = one("track", event="Signed Up", properties=properties)
    assert a.action == "signed_up"
    assert (a.target.type, a.target.id) == ("event", "Signed Up")
    custom = dict(a.metadata.custom)
    assert custom["plan"] == "pro"
    assert (custom["seats"], custom["trial"], custom["price"]) == ("3", "true", "9.5")
    assert custom["tags"] == '["a","b"]'
    assert action_of("Video: Played!") == "video:_played"
    assert action_of("3D View") == "event_3d_view"
    with pytest.raises(MappingError) as error:
        one("track", event="   ")
    assert error.value.field == "event"
    with pytest.raises(MappingError):
        one("track", event="!!!")


def test_other_track_events_about_a_product_target_it() -> None:
    a = one("track", event="Product Shared", properties={"product_id": "p-9", "share_via": "email"})
    assert (a.action, a.target.type, a.target.id) == ("product_shared", "product", "p-9")
    assert a.metadata.custom["share_via"] == "email"


def test_page_and_screen_are_views() -> None:
    page = one(
        "page",
        name="Home",
        category="Landing",
        properties={"path": "/home", "url": "https://shop.example/home", "referrer": "https://x.example/"},
    )
    assert (page.action, page.target.type, page.target.id) == ("view", "page", "/home")
    assert page.metadata.page_url == "https://shop.example/home"
    assert page.metadata.referrer == "https://x.example/"
    assert page.metadata.custom["name"] == "Home" and page.metadata.custom["category"] == "Landing"
    # The path from the context when the properties have none.
    assert one("page", properties={}, context={"page": {"path": "/p/1"}}).target.id == "/p/1"
    screen = one("screen", name="Checkout", properties={"step": 2})
    assert (screen.action, screen.target.type, screen.target.id) == ("view", "screen", "Checkout")
    assert screen.metadata.custom["step"] == "2"
    with pytest.raises(MappingError) as error:
        one("screen")
    assert error.value.field == "name"


def test_identify_and_alias_carry_both_ids_for_the_identity_link() -> None:
    identify = one("identify", userId="u-42", traits={"email": "a@example.com"})
    assert (identify.action, identify.target.type, identify.target.id) == ("identify", "user", "u-42")
    assert (identify.user.anonymous_id, identify.user.user_id) == ("anon-1", "u-42")
    # Traits are not kept: the collector records activities, not profiles.
    assert "a@example.com" not in str(identify)
    alias = one("alias", anonymousId=None, userId="u-42", previousId="anon-old")
    assert (alias.action, alias.user.anonymous_id, alias.user.user_id) == ("alias", "anon-old", "u-42")
    with pytest.raises(MappingError) as error:
        one("alias", userId="u-42")
    assert error.value.field == "previousId"


def test_group_is_an_activity_on_the_group() -> None:
    g = one("group", userId="u-1", groupId="acme", traits={"plan": "enterprise"})
    assert (g.action, g.target.type, g.target.id) == ("group", "group", "acme")
    with pytest.raises(MappingError) as error:
        one("group")
    assert error.value.field == "groupId"


def test_bad_times_and_shapes_name_the_field() -> None:
    for fields, field in [
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": "2026-11-02T10:15:00"}, "timestamp"),
        ({"properties": []}, "properties"),
        ({"context": "x"}, "context"),
    ]:
        with pytest.raises(MappingError) as error:
            one("track", event="Signed Up", **fields)
        assert error.value.field == field
    with pytest.raises(MappingError) as error:
        mapper.map(call(), "unknown")
    assert error.value.field == "type"


@pytest.mark.parametrize(
    ("properties", "field"),
    [
        ({"product_id": "p", "quantity": float("nan")}, "properties.quantity"),
        ({"product_id": "p", "quantity": float("inf")}, "properties.quantity"),
        ({"product_id": "p", "quantity": 1.5}, "properties.quantity"),
        ({"product_id": "p", "quantity": 2**63}, "properties.quantity"),
        ({"product_id": "p", "price": 1e30}, "properties.price"),
        ({"product_id": "p", "price": "Infinity"}, "properties.price"),
    ],
)
def test_numbers_out_of_reach_name_the_field(properties: dict[str, Any], field: str) -> None:
    with pytest.raises(MappingError) as error:
        one("track", event="Product Added", properties=properties)
    assert error.value.field == field


def test_a_position_below_zero_or_too_large_is_refused() -> None:
    for position in (-1, 2**32):
        properties = {"source_id": "r", "products": [{"product_id": "p", "position": position}]}
        with pytest.raises(MappingError) as error:
            mapper.map(call(event="Product List Viewed", properties=properties), "track")
        assert error.value.field == "properties.products[0].position"
