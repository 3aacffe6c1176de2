"""Validation: every rule rejects with the field at fault and its reason; one bad activity sinks no other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers import make_activity

from core.limits import Limits
from core.proto.activity.v1 import activity_pb2 as pb
from core.validation import (
    InvalidActivity,
    Rejection,
    check_activity,
    rejections_to_proto,
    validate_activities,
)

NS = 1_000_000_000
NOW_NS = 1_750_000_000 * NS
DEFAULT = Limits()
# Small limits that make_activity's values still fit into, so that tests can cross them cheaply.
SMALL = Limits(
    max_request_bytes=4096,
    max_activity_bytes=1024,
    max_id_chars=8,
    max_name_chars=8,
    max_text_chars=32,
    max_map_entries=2,
    max_segments=2,
    max_future_skew_s=10.0,
)

MISSING_FIELD = pb.REJECTION_REASON_MISSING_FIELD
INVALID_VALUE = pb.REJECTION_REASON_INVALID_VALUE
OUT_OF_RANGE = pb.REJECTION_REASON_OUT_OF_RANGE
TOO_LARGE = pb.REJECTION_REASON_TOO_LARGE
DUPLICATE_ID = pb.REJECTION_REASON_DUPLICATE_ID


def _set(activity: pb.Activity, path: str, value: Any) -> None:
    *parents, name = path.split(".")
    message: Any = activity
    for parent in parents:
        message = getattr(message, parent)
    setattr(message, name, value)


def accepted(activity: pb.Activity, limits: Limits = DEFAULT, skew_ns: int = 0) -> bool:
    valid, rejections = validate_activities([activity], limits, NOW_NS, skew_ns)
    assert (valid == [0]) != bool(rejections)
    return valid == [0]


def rejection(activity: pb.Activity, limits: Limits = DEFAULT, skew_ns: int = 0) -> Rejection:
    valid, rejections = validate_activities([activity], limits, NOW_NS, skew_ns)
    assert valid == []
    assert len(rejections) == 1
    r = rejections[0]
    assert r.index == 0
    assert r.activity_id == activity.id
    assert r.message
    return r


def assert_rejected(
    activity: pb.Activity, field: str, reason: int, limits: Limits = DEFAULT, skew_ns: int = 0
) -> Rejection:
    r = rejection(activity, limits, skew_ns)
    assert (r.field, r.reason) == (field, reason), r.message
    return r


# -- valid activities ------------------------------------------------------------------------------


def test_valid_activity_is_accepted() -> None:
    valid, rejections = validate_activities([make_activity(0)], DEFAULT, NOW_NS, 0)
    assert valid == [0]
    assert rejections == []
    check_activity(make_activity(0), DEFAULT, NOW_NS, 0)


def test_make_activity_fits_the_small_limits() -> None:
    assert accepted(make_activity(0), SMALL)


def test_minimal_activity_without_id_metadata_or_time_is_accepted() -> None:
    activity = pb.Activity(action="view", target=pb.Target(type="product", id="1"), user=pb.User(user_id="u"))
    assert accepted(activity)


@pytest.mark.parametrize("user", [{"session_id": "s"}, {"anonymous_id": "a"}, {"user_id": "u"}])
def test_any_one_user_id_is_enough(user: dict[str, str]) -> None:
    assert accepted(make_activity(0, user=pb.User(**user)))


def test_upper_case_uuid_is_accepted() -> None:
    assert accepted(make_activity(0, id="0B6F3A1E-3C55-4A8E-9D8E-7A1F2B3C4D5E"))


def test_non_canonical_spellings_that_normalise_are_accepted() -> None:
    activity = make_activity(
        0,
        action="Add-To-Cart",
        metadata=pb.Metadata(locale="en_us", device_type="Smart TV", currency="eur", price=1999, quantity=2),
    )
    assert accepted(activity)


# -- id --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    [
        "not-a-uuid",
        "0b6f3a1e3c554a8e9d8e7a1f2b3c4d5e",
        "{0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4d5e}",
        "0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4d5e0",
        "0b6f3a1g-3c55-4a8e-9d8e-7a1f2b3c4d5e",
        " 0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4d5",
    ],
)
def test_id_that_is_not_a_uuid_is_rejected(bad_id: str) -> None:
    r = assert_rejected(make_activity(0, id=bad_id), "id", INVALID_VALUE)
    assert r.activity_id == bad_id


# -- required fields -------------------------------------------------------------------------------


def test_missing_action_is_rejected() -> None:
    assert_rejected(make_activity(0, action=""), "action", MISSING_FIELD)


@pytest.mark.parametrize("action", ["a/b", "1click", "view!"])
def test_action_without_canonical_form_is_rejected(action: str) -> None:
    assert_rejected(make_activity(0, action=action), "action", INVALID_VALUE)


def test_missing_target_type_is_rejected() -> None:
    assert_rejected(make_activity(0, target=pb.Target(id="sku-1")), "target.type", MISSING_FIELD)


def test_missing_target_id_is_rejected() -> None:
    assert_rejected(make_activity(0, target=pb.Target(type="product")), "target.id", MISSING_FIELD)


def test_missing_target_is_rejected_on_its_type() -> None:
    activity = make_activity(0)
    activity.ClearField("target")
    assert_rejected(activity, "target.type", MISSING_FIELD)


def test_missing_every_user_id_is_rejected() -> None:
    assert_rejected(make_activity(0, user=pb.User(identities={"crm": "C-1"})), "user", MISSING_FIELD)
    activity = make_activity(0)
    activity.ClearField("user")
    assert_rejected(activity, "user", MISSING_FIELD)


# -- string length limits --------------------------------------------------------------------------

LENGTH_LIMITED = [
    ("action", "max_name_chars"),
    ("target.type", "max_name_chars"),
    ("target.id", "max_id_chars"),
    ("user.session_id", "max_id_chars"),
    ("user.anonymous_id", "max_id_chars"),
    ("user.user_id", "max_id_chars"),
    ("source_id", "max_id_chars"),
    ("metadata.device_type", "max_name_chars"),
    ("metadata.order_id", "max_id_chars"),
    ("metadata.page_url", "max_text_chars"),
    ("metadata.referrer", "max_text_chars"),
    ("metadata.user_agent", "max_text_chars"),
    ("metadata.query", "max_text_chars"),
]


@pytest.mark.parametrize(("path", "limit_name"), LENGTH_LIMITED)
def test_string_at_its_limit_is_accepted(path: str, limit_name: str) -> None:
    activity = make_activity(0)
    _set(activity, path, "a" * getattr(SMALL, limit_name))
    assert accepted(activity, SMALL)


@pytest.mark.parametrize(("path", "limit_name"), LENGTH_LIMITED)
def test_string_over_its_limit_is_rejected(path: str, limit_name: str) -> None:
    activity = make_activity(0)
    _set(activity, path, "a" * (getattr(SMALL, limit_name) + 1))
    r = assert_rejected(activity, path, TOO_LARGE, SMALL)
    assert str(getattr(SMALL, limit_name)) in r.message


# -- maps ------------------------------------------------------------------------------------------

MAPS = ["target.attributes", "user.identities", "metadata.custom"]


def _map(activity: pb.Activity, path: str) -> Any:
    parent, name = path.split(".")
    entries = getattr(getattr(activity, parent), name)
    entries.clear()
    return entries


@pytest.mark.parametrize("path", MAPS)
def test_map_at_its_limits_is_accepted(path: str) -> None:
    activity = make_activity(0)
    entries = _map(activity, path)
    entries["k" * SMALL.max_name_chars] = "v" * SMALL.max_text_chars
    entries["k"] = ""
    assert len(entries) == SMALL.max_map_entries
    assert accepted(activity, SMALL)


@pytest.mark.parametrize("path", MAPS)
def test_map_with_too_many_entries_is_rejected(path: str) -> None:
    activity = make_activity(0)
    _map(activity, path).update({f"k{i}": "v" for i in range(SMALL.max_map_entries + 1)})
    assert_rejected(activity, path, TOO_LARGE, SMALL)


@pytest.mark.parametrize("path", MAPS)
def test_map_key_over_the_name_limit_is_rejected(path: str) -> None:
    activity = make_activity(0)
    _map(activity, path)["k" * (SMALL.max_name_chars + 1)] = "v"
    assert_rejected(activity, path, TOO_LARGE, SMALL)


@pytest.mark.parametrize("path", MAPS)
def test_map_value_over_the_text_limit_is_rejected_naming_its_key(path: str) -> None:
    activity = make_activity(0)
    _map(activity, path)["big"] = "v" * (SMALL.max_text_chars + 1)
    assert_rejected(activity, f"{path}[big]", TOO_LARGE, SMALL)


@pytest.mark.parametrize("path", MAPS)
def test_map_with_an_empty_key_is_rejected(path: str) -> None:
    activity = make_activity(0)
    _map(activity, path)[""] = "v"
    assert_rejected(activity, path, INVALID_VALUE, SMALL)


# -- segments --------------------------------------------------------------------------------------


def test_segments_at_their_limits_are_accepted() -> None:
    assert accepted(make_activity(0, segments=["s" * SMALL.max_name_chars, "vip"]), SMALL)


def test_too_many_segments_are_rejected() -> None:
    segments = [f"s{i}" for i in range(SMALL.max_segments + 1)]
    assert_rejected(make_activity(0, segments=segments), "segments", TOO_LARGE, SMALL)


def test_empty_segment_is_rejected() -> None:
    assert_rejected(make_activity(0, segments=["vip", ""]), "segments", INVALID_VALUE, SMALL)


def test_segment_over_the_name_limit_is_rejected() -> None:
    segments = ["s" * (SMALL.max_name_chars + 1)]
    assert_rejected(make_activity(0, segments=segments), "segments", TOO_LARGE, SMALL)


# -- metadata values -------------------------------------------------------------------------------


def _metadata(**fields: Any) -> pb.Metadata:
    return pb.Metadata(locale="en-US", device_type="mobile", **fields)


def test_negative_price_is_rejected() -> None:
    activity = make_activity(0, metadata=_metadata(price=-1, currency="EUR"))
    assert_rejected(activity, "metadata.price", OUT_OF_RANGE)


def test_zero_price_with_currency_is_accepted() -> None:
    assert accepted(make_activity(0, metadata=_metadata(price=0, currency="EUR")))


def test_price_without_currency_is_rejected_on_currency() -> None:
    activity = make_activity(0, metadata=_metadata(price=1999))
    assert_rejected(activity, "metadata.currency", MISSING_FIELD)


def test_zero_price_without_currency_is_rejected_on_currency() -> None:
    # price is an optional field: an explicit 0 is set and needs a currency.
    activity = make_activity(0, metadata=_metadata(price=0))
    assert_rejected(activity, "metadata.currency", MISSING_FIELD)


@pytest.mark.parametrize("metadata", [{"price": 100, "currency": "XYZ"}, {"currency": "EURO"}])
def test_unknown_currency_is_rejected(metadata: dict[str, Any]) -> None:
    activity = make_activity(0, metadata=_metadata(**metadata))
    assert_rejected(activity, "metadata.currency", INVALID_VALUE)


def test_currency_without_price_is_accepted() -> None:
    assert accepted(make_activity(0, metadata=_metadata(currency="usd")))


@pytest.mark.parametrize("quantity", [0, -1, -(2**63)])
def test_quantity_below_one_is_rejected(quantity: int) -> None:
    activity = make_activity(0, metadata=_metadata(quantity=quantity))
    assert_rejected(activity, "metadata.quantity", OUT_OF_RANGE)


def test_quantity_of_one_is_accepted() -> None:
    assert accepted(make_activity(0, metadata=_metadata(quantity=1)))


@pytest.mark.parametrize("locale", ["english!", "e", "en-", "en/US"])
def test_bad_locale_is_rejected(locale: str) -> None:
    activity = make_activity(0, metadata=pb.Metadata(locale=locale))
    assert_rejected(activity, "metadata.locale", INVALID_VALUE)


@pytest.mark.parametrize("device_type", ["desk/top", "9x", "phone!"])
def test_bad_device_type_is_rejected(device_type: str) -> None:
    activity = make_activity(0, metadata=pb.Metadata(device_type=device_type))
    assert_rejected(activity, "metadata.device_type", INVALID_VALUE)


# -- occurred_at -----------------------------------------------------------------------------------


def _at(ns: int) -> pb.Activity:
    activity = make_activity(0)
    activity.occurred_at.FromNanoseconds(ns)
    return activity


def test_occurred_at_in_the_past_is_accepted() -> None:
    assert accepted(_at(NOW_NS - 86_400 * NS), SMALL)


def test_occurred_at_within_the_future_skew_is_accepted() -> None:
    assert accepted(_at(NOW_NS + 9 * NS), SMALL)
    assert accepted(_at(NOW_NS + 10 * NS), SMALL)


def test_occurred_at_beyond_the_future_skew_is_rejected() -> None:
    r = assert_rejected(_at(NOW_NS + 10 * NS + 1), "occurred_at", OUT_OF_RANGE, SMALL)
    assert "future" in r.message
    assert_rejected(_at(NOW_NS + 3600 * NS), "occurred_at", OUT_OF_RANGE, SMALL)


def test_default_future_skew_is_five_minutes() -> None:
    assert accepted(_at(NOW_NS + 299 * NS))
    assert_rejected(_at(NOW_NS + 301 * NS), "occurred_at", OUT_OF_RANGE)


@pytest.mark.parametrize(("seconds", "nanos"), [(0, 0), (-1, 0), (-1, 999_999_999), (-86_400, 500)])
def test_occurred_at_at_or_before_the_epoch_is_rejected(seconds: int, nanos: int) -> None:
    activity = make_activity(0)
    activity.occurred_at.seconds = seconds
    activity.occurred_at.nanos = nanos
    assert_rejected(activity, "occurred_at", OUT_OF_RANGE)


@pytest.mark.parametrize("nanos", [-1, NS])
def test_occurred_at_with_nanos_out_of_range_is_rejected(nanos: int) -> None:
    activity = make_activity(0)
    activity.occurred_at.seconds = NOW_NS // NS - 60
    activity.occurred_at.nanos = nanos
    assert_rejected(activity, "occurred_at", OUT_OF_RANGE)


def test_client_clock_ahead_is_corrected_before_the_future_check() -> None:
    # The client's clock is an hour ahead: it sent the request at NOW + 1 h by its clock, so the
    # service computes skew = received - sent = -1 h. An activity that happened "now" by the client's
    # clock is stamped NOW + 1 h, which is in the future uncorrected but fine once corrected.
    hour = 3600 * NS
    activity = _at(NOW_NS + hour)
    assert_rejected(activity, "occurred_at", OUT_OF_RANGE, SMALL, skew_ns=0)
    assert accepted(activity, SMALL, skew_ns=-hour)


def test_client_clock_behind_is_corrected_before_the_future_check() -> None:
    # The client's clock is an hour behind (skew = +1 h): a time that looks like the present by the
    # client's clock is, on the server's clock, an hour in the future.
    hour = 3600 * NS
    activity = _at(NOW_NS - 60 * NS)
    assert accepted(activity, SMALL, skew_ns=0)
    assert_rejected(activity, "occurred_at", OUT_OF_RANGE, SMALL, skew_ns=hour)


# -- whole activity size ---------------------------------------------------------------------------


def test_activity_over_max_activity_bytes_is_rejected_as_a_whole() -> None:
    activity = make_activity(0)
    size = activity.ByteSize()
    limits = Limits(max_activity_bytes=size - 1)
    r = assert_rejected(activity, "", TOO_LARGE, limits)
    assert str(size) in r.message


def test_activity_of_exactly_max_activity_bytes_is_accepted() -> None:
    activity = make_activity(0)
    assert accepted(activity, Limits(max_activity_bytes=activity.ByteSize()))


# -- check_activity --------------------------------------------------------------------------------


def test_check_activity_raises_with_field_reason_and_message() -> None:
    with pytest.raises(InvalidActivity) as info:
        check_activity(make_activity(0, action=""), DEFAULT, NOW_NS, 0)
    assert info.value.field == "action"
    assert info.value.reason == MISSING_FIELD
    assert info.value.message
    assert str(info.value) == info.value.message


# -- batches ---------------------------------------------------------------------------------------

ID = "0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4d5e"


def test_duplicate_id_in_one_batch_rejects_the_later_ones_case_insensitively() -> None:
    activities = [make_activity(0, id=ID), make_activity(1, id=ID.upper()), make_activity(2, id=ID)]
    valid, rejections = validate_activities(activities, DEFAULT, NOW_NS, 0)
    assert valid == [0]
    assert [(r.index, r.activity_id, r.field, r.reason) for r in rejections] == [
        (1, ID.upper(), "id", DUPLICATE_ID),
        (2, ID, "id", DUPLICATE_ID),
    ]
    assert all(r.message for r in rejections)


def test_the_first_copy_counts_even_when_it_is_invalid() -> None:
    activities = [make_activity(0, id=ID, action=""), make_activity(1, id=ID)]
    valid, rejections = validate_activities(activities, DEFAULT, NOW_NS, 0)
    assert valid == []
    assert [(r.index, r.field, r.reason) for r in rejections] == [
        (0, "action", MISSING_FIELD),
        (1, "id", DUPLICATE_ID),
    ]


def test_a_duplicate_is_reported_as_such_before_other_problems() -> None:
    activities = [make_activity(0, id=ID), make_activity(1, id=ID, action="")]
    valid, rejections = validate_activities(activities, DEFAULT, NOW_NS, 0)
    assert valid == [0]
    assert [(r.index, r.field, r.reason) for r in rejections] == [(1, "id", DUPLICATE_ID)]


def test_activities_without_id_are_never_duplicates() -> None:
    activities = [make_activity(0, id=""), make_activity(1, id=""), make_activity(2, id="")]
    valid, rejections = validate_activities(activities, DEFAULT, NOW_NS, 0)
    assert valid == [0, 1, 2]
    assert rejections == []


def test_ids_are_not_remembered_between_batches() -> None:
    for _ in range(2):
        valid, rejections = validate_activities([make_activity(0, id=ID)], DEFAULT, NOW_NS, 0)
        assert valid == [0]
        assert rejections == []


def test_unparsed_activities_are_rejected_with_their_field() -> None:
    message = "user.user_id does not parse"
    activities = [make_activity(0), pb.Activity(), make_activity(2)]
    valid, rejections = validate_activities(
        activities, DEFAULT, NOW_NS, 0, unparsed={1: ("user.user_id", message)}
    )
    assert valid == [0, 2]
    assert rejections == [Rejection(1, "", INVALID_VALUE, "user.user_id", message)]


def test_unparsed_index_is_rejected_even_if_its_placeholder_would_pass() -> None:
    activities = [make_activity(0)]
    valid, rejections = validate_activities(activities, DEFAULT, NOW_NS, 0, unparsed={0: ("", "broken")})
    assert valid == []
    assert [(r.index, r.field, r.reason, r.message) for r in rejections] == [(0, "", INVALID_VALUE, "broken")]


def test_one_bad_activity_does_not_affect_its_neighbours() -> None:
    bad: list[Callable[[pb.Activity], None]] = [
        lambda a: setattr(a, "action", ""),
        lambda a: setattr(a.metadata, "currency", "XYZ"),
        lambda a: a.segments.append(""),
    ]
    activities = [make_activity(n) for n in range(7)]
    for index, spoil in zip((1, 3, 5), bad, strict=True):
        spoil(activities[index])
    valid, rejections = validate_activities(activities, DEFAULT, NOW_NS, 0)
    assert valid == [0, 2, 4, 6]
    assert [(r.index, r.activity_id, r.field, r.reason) for r in rejections] == [
        (1, activities[1].id, "action", MISSING_FIELD),
        (3, activities[3].id, "metadata.currency", INVALID_VALUE),
        (5, activities[5].id, "segments", INVALID_VALUE),
    ]


def test_empty_batch_gives_nothing() -> None:
    assert validate_activities([], DEFAULT, NOW_NS, 0) == ([], [])


def test_rejections_convert_to_proto() -> None:
    r = Rejection(3, ID, OUT_OF_RANGE, "metadata.price", "metadata.price must not be negative")
    (proto,) = rejections_to_proto([r])
    assert proto == pb.Rejection(
        index=3,
        activity_id=ID,
        reason=pb.REJECTION_REASON_OUT_OF_RANGE,
        field="metadata.price",
        message="metadata.price must not be negative",
    )
    assert r.to_proto() == proto


# -- source ----------------------------------------------------------------------------------------


def _sourced(**fields: Any) -> pb.Activity:
    return make_activity(0, source_id="resp-1", source=pb.Source(**fields))


def test_a_full_source_with_its_source_id_is_accepted() -> None:
    assert accepted(_sourced(type="Site-Search", name="pdp similar", variant="B", position=3, result_count=0))


def test_a_source_without_a_source_id_is_rejected_on_source() -> None:
    activity = make_activity(0, source=pb.Source(type="search"))
    r = assert_rejected(activity, "source", INVALID_VALUE)
    assert "source_id" in r.message


def test_an_empty_source_still_needs_its_source_id() -> None:
    activity = make_activity(0)
    activity.source.SetInParent()
    assert_rejected(activity, "source", INVALID_VALUE)


@pytest.mark.parametrize("source_type", ["search!", "9search", "a/b"])
def test_a_source_type_without_canonical_form_is_rejected(source_type: str) -> None:
    assert_rejected(_sourced(type=source_type), "source.type", INVALID_VALUE)


@pytest.mark.parametrize("field", ["type", "name", "variant"])
def test_source_names_over_the_name_limit_are_rejected(field: str) -> None:
    assert accepted(_sourced(**{field: "a" * SMALL.max_name_chars}), SMALL)
    r = assert_rejected(
        _sourced(**{field: "a" * (SMALL.max_name_chars + 1)}), f"source.{field}", TOO_LARGE, SMALL
    )
    assert str(SMALL.max_name_chars) in r.message
