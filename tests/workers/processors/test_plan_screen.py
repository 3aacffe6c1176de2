"""The tracking plan run on raw bytes (`workers.processors.plan_screen`, in C) against the Python plan.

The compiled screen may send an activity to Python that conforms (it then gets judged there, at some
cost), but must never keep on the compiled path one that the Python plan would reject or flag. The
generated activities sit on both sides of every rule: values in and out of each enum, pattern, bound and
length, paths present, empty and absent, integers with and without presence, map keys there or not.
"""

from __future__ import annotations

import re
import struct
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.tracking_plan import ten_rule_plan
from core import fastpath
from core.limits import Limits
from core.proto.activity.v1 import activity_pb2 as pb
from workers.processors.plan import Plan, TrackingPlans, parse_plan
from workers.processors.plan_screen import ascii_pattern, compile_program, wire_path

pytestmark = pytest.mark.skipif(
    not fastpath.available, reason="the compiled module is not built (ACTIVITY_PURE_PYTHON or no compiler)"
)

NOW_NS = time.time_ns()

PLANS: list[dict[str, Any]] = [
    ten_rule_plan(),
    {
        "unknown_actions": "allow",
        "actions": {
            "purchase": {
                "required": ["metadata.order_id", "metadata.price", "metadata.currency", "source"],
                "forbidden": ["user.identities.email", "segments"],
                "min": {"metadata.quantity": 1, "metadata.price": 100, "metadata.custom.score": 2},
                "max": {"metadata.quantity": 3, "source.position": 5},
                "enum": {"metadata.currency": ["EUR", "USD"], "metadata.quantity": [1, 2, "3"]},
                "max_length": {"metadata.order_id": 4, "segments": 1},
                "pattern": {"metadata.order_id": "o-[0-9]+", "metadata.quantity": "[12]"},
            },
            "view": {"target_types": ["product"], "enum": {"source.result_count": [0]}, "mode": "flag"},
        },
    },
    {
        "unknown_actions": "flag",
        "mode": "flag",
        "actions": {
            "click": {
                "required": ["source_id", "source.position", "user.user_id", "target.attributes.color"],
                "enum": {"target.attributes.color": ["red", "é"], "segments": ["vip"]},
                "pattern": {"user.user_id": "u-[0-9]", "target.attributes.size": "[SML]"},
                "max_length": {"target.attributes.color": 3, "metadata.custom": 1},
                "min": {"source.result_count": 1},
            },
            "add_to_cart": {"forbidden": ["occurred_at", "metadata"], "required": ["target.attributes"]},
        },
    },
]


def _limits() -> tuple[int, ...]:
    return fastpath.limits_tuple(Limits())


def _spans(raw: bytes) -> bytes:
    """The spans of the activities the compiled path vouched for."""
    return fastpath.check(raw, 1, _limits(), NOW_NS, 0)[0]


def _indexes(spans: bytes) -> list[int]:
    return [index for index, _, _ in struct.iter_unpack("<III", spans)]


@st.composite
def activities(draw: st.DrawFn) -> pb.Activity:
    a = pb.Activity(action=draw(st.sampled_from(["view", "click", "purchase", "add_to_cart", "search"])))
    a.target.type = draw(st.sampled_from(["product", "category", "page"]))
    a.target.id = "sku-1"
    for key in draw(st.sets(st.sampled_from(["color", "size"]))):
        a.target.attributes[key] = draw(st.sampled_from(["red", "é", "blue", "S", "XL", ""]))
    a.user.session_id = draw(st.sampled_from(["0123456789abcdef", "0123456789ABCDEF", "s-1"]))
    if draw(st.booleans()):
        a.user.anonymous_id = "anon-1"
    if draw(st.booleans()):
        a.user.user_id = draw(st.sampled_from(["u-1", "u-12", "x"]))
    if draw(st.booleans()):
        a.user.identities["email" if draw(st.booleans()) else "crm"] = draw(st.sampled_from(["a@b", ""]))
    if draw(st.booleans()):
        a.source_id = "resp-1"
        if draw(st.booleans()):
            a.source.SetInParent()
            a.source.position = draw(st.sampled_from([0, 1, 5, 6]))
            if draw(st.booleans()):
                a.source.result_count = draw(st.sampled_from([0, 1, 7]))
    if draw(st.booleans()):
        m = a.metadata
        m.SetInParent()
        m.page_url = draw(st.sampled_from(["", "https://shop.example/p/1"]))
        quantity = draw(st.sampled_from([None, 1, 2, 3, 4]))
        if quantity is not None:
            m.quantity = quantity
        price = draw(st.sampled_from([None, 0, 99, 100, 2**62]))
        if price is not None:
            m.price = price
        if price is not None or draw(st.booleans()):
            m.currency = draw(st.sampled_from(["EUR", "USD", "JPY"]))
        m.order_id = draw(st.sampled_from(["", "o-1", "o-12", "o-123", "order"]))
        for key in draw(st.sets(st.sampled_from(["channel", "score"]))):
            m.custom[key] = draw(st.sampled_from(["web", "app", "tv", "1", "2.5", "x", ""]))
    a.segments.extend(draw(st.lists(st.sampled_from(["vip", "new"]), max_size=2)))
    if draw(st.booleans()):
        a.occurred_at.FromNanoseconds(NOW_NS - 3_600 * 10**9)
    return a


def _tenant_plans(document: dict[str, Any]) -> tuple[Plan, TrackingPlans]:
    plan = parse_plan(document)
    return plan, TrackingPlans({"t": plan})


def _screened(plans: TrackingPlans, batch: list[pb.Activity]) -> tuple[bytes, bytes, bytes]:
    """`batch` as one request's fast spans, and the screen's (keep, judge) of them for tenant t."""
    raw = pb.TrackActivitiesRequest(activities=batch).SerializeToString()
    spans = _spans(raw)
    screened = plans.screen("t", raw, spans)
    assert screened is not None
    return spans, *screened


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(activities(), min_size=1, max_size=20), which=st.integers(0, len(PLANS) - 1))
def test_the_screen_never_keeps_what_the_python_plan_would_judge(
    batch: list[pb.Activity], which: int
) -> None:
    plan, plans = _tenant_plans(PLANS[which])
    spans, keep, judge = _screened(plans, batch)
    assert sorted(_indexes(keep) + _indexes(judge)) == _indexes(spans)
    for index in _indexes(keep):
        assert plan.judge(batch[index]) is None, (index, batch[index])


def _ten_rule_view() -> pb.Activity:
    """A view the ten-rule plan accepts."""
    view = pb.Activity(action="view", target=pb.Target(type="product", id="sku-1"))
    view.user.session_id = "0123456789abcdef"
    view.user.anonymous_id = "anon-1"
    view.metadata.page_url = "https://shop.example/p/1"
    return view


def test_conforming_activities_of_the_ten_rule_plan_stay_on_the_compiled_path() -> None:
    plan, plans = _tenant_plans(ten_rule_plan())
    conforming = _ten_rule_view()
    conforming.metadata.custom["channel"] = "web"
    wrong_channel = pb.Activity()
    wrong_channel.CopyFrom(conforming)
    wrong_channel.metadata.custom["channel"] = "tv"
    bad_session = pb.Activity()
    bad_session.CopyFrom(conforming)
    bad_session.user.session_id = "not-hex"
    batch = [conforming, wrong_channel, bad_session, conforming]
    assert [plan.judge(a) is None for a in batch] == [True, False, False, True]
    spans, keep, judge = _screened(plans, batch)
    assert _indexes(spans) == [0, 1, 2, 3]
    assert [_indexes(keep), _indexes(judge)] == [[0, 3], [1, 2]]


_ACTIONS = ("view", "click", "purchase", "add_to_cart", "search")
# Rules the program runs in C exactly as Python does (no value it leaves to Python), several on each of
# the user, the target and the metadata, in an order that reads late fields of a submessage before
# early ones, map entries after other entries, and fields a submessage lacks.
EXACT_PLANS: list[dict[str, Any]] = [
    {
        "unknown_actions": "allow",
        "actions": {
            action: {
                "required": ["metadata.custom.channel"],
                "forbidden": ["metadata.locale"],
                "enum": {"metadata.currency": ["EUR", "USD"]},
                "min": {"metadata.quantity": 2},
                "max_length": {"metadata.page_url": 30},
            }
            for action in _ACTIONS[:4]
        },
    },
    {
        "unknown_actions": "reject",
        "actions": {
            action: {
                "required": ["target.id"],
                "forbidden": ["user.identities.email"],
                "enum": {"target.attributes.size": ["S", "XL"], "user.user_id": ["u-1", "u-12"]},
                "pattern": {"metadata.order_id": "o-[0-9]{2}", "user.session_id": "[0-9a-f]{16}"},
                "max": {"metadata.quantity": 3},
                "max_length": {"target.attributes.color": 1},
            }
            for action in _ACTIONS[1:]
        },
    },
]


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(activities(), min_size=1, max_size=20), which=st.integers(0, len(EXACT_PLANS) - 1))
def test_rules_the_program_runs_whole_keep_exactly_the_conforming_activities(
    batch: list[pb.Activity], which: int
) -> None:
    """For rules the program runs without Python, the screen keeps an activity exactly when the Python
    plan finds nothing, whichever fields of a submessage the checks read first, and in the spans'
    order whichever of them is the first to judge."""
    plan, plans = _tenant_plans(EXACT_PLANS[which])
    spans, keep, judge = _screened(plans, batch)
    assert _indexes(keep) == [i for i in _indexes(spans) if plan.judge(batch[i]) is None]
    assert _indexes(judge) == [i for i in _indexes(spans) if plan.judge(batch[i]) is not None]
    program = compile_program(plan)
    for i in _indexes(spans):
        name = batch[i].action.encode()
        conforms = fastpath.plan_check(program, name, batch[i].SerializeToString())
        assert conforms is (plan.judge(batch[i]) is None), batch[i]


def test_a_map_entry_is_found_after_other_entries_and_other_fields_of_its_submessage() -> None:
    plan, plans = _tenant_plans(
        {
            "actions": {
                "view": {
                    "required": ["metadata.custom.utm", "metadata.page_url"],
                    "enum": {"metadata.custom.channel": ["web"], "metadata.locale": ["de-DE"]},
                    "forbidden": ["metadata.referrer"],
                }
            }
        }
    )
    batch = []
    for channel, utm, referrer in (("web", "a", ""), ("app", "a", ""), ("web", "", ""), ("web", "a", "r")):
        a = pb.Activity(action="view", target=pb.Target(type="product", id="1"), user=pb.User(user_id="u"))
        a.metadata.locale = "de-DE"
        a.metadata.page_url = "https://shop.example/"
        a.metadata.referrer = referrer
        for key in ("a", "b", "channel", "c", "utm", "z"):
            a.metadata.custom[key] = {"channel": channel, "utm": utm}.get(key, "x")
        batch.append(a)
    assert [plan.judge(a) is None for a in batch] == [True, False, False, False]
    spans, keep, judge = _screened(plans, batch)
    assert _indexes(spans) == [0, 1, 2, 3]
    assert [_indexes(keep), _indexes(judge)] == [[0], [1, 2, 3]]


def test_a_batch_that_conforms_whole_is_kept_whole() -> None:
    _, plans = _tenant_plans(ten_rule_plan())
    conforming = _ten_rule_view()
    raw = pb.TrackActivitiesRequest(activities=[conforming] * 3).SerializeToString()
    spans = _spans(raw)
    assert plans.screen("t", raw, spans) == (spans, b"")
    assert plans.screen("t", raw, b"") == (b"", b"")


def test_unknown_actions_conform_only_when_the_plan_allows_them() -> None:
    raw = pb.TrackActivitiesRequest(
        activities=[pb.Activity(action="wave", target=pb.Target(type="p", id="1"), user=pb.User(user_id="u"))]
    ).SerializeToString()
    spans = _spans(raw)
    for unknown, kept in (("allow", [0]), ("flag", []), ("reject", [])):
        _, plans = _tenant_plans({"unknown_actions": unknown, "actions": {"view": {}}})
        screened = plans.screen("t", raw, spans)
        assert screened is not None
        assert _indexes(screened[0]) == kept


def test_paths_resolve_to_their_field_numbers() -> None:
    v = fastpath.plan_vocabulary()
    assert wire_path("metadata.custom.utm.source") == ((6, 11), v["PT_MAP_KEY"], b"utm.source")
    assert wire_path("metadata.quantity") == ((6, 3), v["PT_INT64"], None)
    assert wire_path("source.position") == ((9, 4), v["PT_UINT_PLAIN"], None)
    assert wire_path("source.result_count") == ((9, 5), v["PT_UINT"], None)
    assert wire_path("segments") == ((7,), v["PT_PRESENT"], None)
    assert wire_path("occurred_at") == ((8,), v["PT_PRESENT"], None)
    assert wire_path("user.session_id") == ((4, 1), v["PT_STRING"], None)
    assert wire_path("occurred_at.seconds") is None


def test_a_tenant_without_a_plan_keeps_every_span_and_pure_python_judges_all() -> None:
    _, plans = _tenant_plans({"actions": {"view": {}}})
    assert plans.screen("other", b"", b"x" * 12) == (b"x" * 12, b"")


# -- activities the compiled path left to Python, and patterns matched in C ------------------------


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    activity=activities(),
    spelled=st.sampled_from([None, "View", "Add-To-Cart", "add to cart", "Purchase", "wave"]),
    which=st.integers(0, len(PLANS) - 1),
)
def test_a_parsed_activity_gets_the_verdict_of_the_python_plan(
    activity: pb.Activity, spelled: str | None, which: int
) -> None:
    """`process` checks a parsed activity with the compiled program first (the action as the plan names
    it, however the activity spells it) and judges in Python only what the program cannot vouch for:
    the verdict is the Python plan's, always."""
    if spelled is not None:
        activity.action = spelled
    plan, plans = _tenant_plans(PLANS[which])
    assert plans.process("t", activity) == plan.judge(activity)


def test_a_spelling_remembered_under_one_plan_is_not_used_under_the_next() -> None:
    activity = pb.Activity(action="Add-To-Cart", target=pb.Target(type="product", id="1"))
    first = parse_plan({"unknown_actions": "reject", "actions": {"add_to_cart": {}}})
    plans = TrackingPlans({"t": first})
    for _ in range(2):
        assert plans.process("t", activity) is None
    second = parse_plan({"unknown_actions": "reject", "actions": {"view": {}}})
    plans.replace({"t": second}, 2)
    for _ in range(2):
        verdict = plans.process("t", activity)
        assert verdict is not None and verdict.reason == "unknown_action"
        assert verdict == second.judge(activity)


def test_a_tenant_sending_ever_new_action_names_gets_the_python_plans_verdicts() -> None:
    plan, plans = _tenant_plans({"unknown_actions": "flag", "actions": {"view": {"required": ["source_id"]}}})
    view = pb.Activity(action="View", target=pb.Target(type="product", id="1"))
    for n in range(5_000):
        activity = pb.Activity(action=f"wave-{n}", target=pb.Target(type="product", id="1"))
        assert plans.process("t", activity) == plan.judge(activity)
    verdict = plans.process("t", view)
    assert verdict is not None and verdict.reason == "required:source_id"
    view.source_id = "r-1"
    assert plans.process("t", view) is None


def test_an_unknown_field_sharing_a_known_number_reads_as_absent_in_c_as_in_python() -> None:
    """A field sent with the wrong wire type is kept by the parser as unknown and serialized after the
    known fields: the program reads it as absent, as the Python plan does, whichever it is."""
    plan, plans = _tenant_plans(
        {"actions": {"view": {"required": ["segments", "metadata"], "forbidden": ["source"]}}}
    )
    base = pb.Activity(action="view", target=pb.Target(type="product", id="1"))
    base.segments.append("vip")
    base.metadata.page_url = "https://shop.example/"
    # Field 9 (source) as a varint, field 7 (segments) and 6 (metadata) as varints too.
    for extra, conforms in ((b"\x48\x01", True), (b"\x38\x01", True), (b"\x30\x01", True)):
        activity = pb.Activity.FromString(base.SerializeToString() + extra)
        assert (plan.judge(activity) is None) is conforms
        assert plans.process("t", activity) == plan.judge(activity)
    bare = pb.Activity.FromString(pb.Activity(action="view").SerializeToString() + b"\x38\x01\x30\x01")
    assert plan.judge(bare) is not None
    assert plans.process("t", bare) == plan.judge(bare)


def test_an_unknown_field_sharing_a_maps_number_holds_no_entry_in_c_as_in_python() -> None:
    """A varint sent under the number of a map (User.identities, Target.attributes) is kept as unknown
    and serialized after the known fields: it holds no entry of the map for the program either."""
    plan, plans = _tenant_plans(
        {
            "actions": {
                "view": {
                    "forbidden": ["user.identities.email"],
                    "required": ["target.attributes.color"],
                    "enum": {"target.attributes.size": ["S"]},
                }
            }
        }
    )

    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    for identities, attributes in (
        (b"", b""),
        (b"\x20\x01", b""),
        (b"", b"\x18\x05"),
        (b"\x20\x01", b"\x18\x05"),
    ):
        for color in ("", "red"):
            target = pb.Target(type="product", id="1")
            if color:
                target.attributes["color"] = color
            raw = (
                pb.Activity(action="view").SerializeToString()
                + field(3, target.SerializeToString() + attributes)
                + field(4, pb.User(user_id="u").SerializeToString() + identities)
            )
            activity = pb.Activity.FromString(raw)
            assert (plan.judge(activity) is None) is bool(color)
            assert plans.process("t", activity) == plan.judge(activity)


_PIECES = st.sampled_from(
    ["a", "b", "Z", "0", "9", "-", "_", " ", ":", "\\.", "\\-", "\\[", "[0-9]", "[a-f]", "[A-Z0-9_]",
     "[-a]", "[a-]", "[\\]x]", "[.]", "[^a]", ".", "\\d", "é", "(a)", "a|b", "^", "$"]
)  # fmt: skip
_COUNTS = st.sampled_from(
    ["", "", "?", "*", "+", "{2}", "{0}", "{1,3}", "{2,}", "{,2}", "{,}", "*?", "+?", "{}"]
)
_VALUE_CHARS = st.sampled_from([*"abZ09-_ :.[]xAé\n", "ab", "0123", "é9"])


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.tuples(_PIECES, _COUNTS), min_size=1, max_size=6),
    values=st.lists(st.lists(_VALUE_CHARS, max_size=8).map("".join), min_size=1, max_size=6),
)
def test_a_pattern_matched_in_c_matches_what_python_matches(
    pieces: list[tuple[str, str]], values: list[str]
) -> None:
    """Patterns of ASCII characters and classes with counts run in C (`ascii_pattern`); every other
    pattern calls Python's re from C. Either way a value conforms exactly when re.fullmatch says so."""
    source = "".join(piece + count for piece, count in pieces)
    try:
        compiled = re.compile(source)
    except re.error:
        return
    plan = parse_plan({"actions": {"view": {"pattern": {"user.session_id": source}}}})
    program = compile_program(plan)
    for value in values:
        if not value:
            continue
        activity = pb.Activity(action="view", target=pb.Target(type="product", id="1"))
        activity.user.session_id = value
        expected = compiled.fullmatch(value) is not None
        conforms = fastpath.plan_check(program, b"view", activity.SerializeToString())
        assert conforms is expected, (source, value)
        assert (plan.judge(activity) is None) is expected


def test_simple_patterns_are_matched_in_c_and_the_others_by_python() -> None:
    for source in ("[0-9a-f]{16}", "ord-[0-9]{6,}", "[A-Z]{3}", "u-[0-9]+", r"a\.b", "x?y*z{,2}"):
        assert ascii_pattern(re.compile(source)) is not None, source
    for source in (".*", r"\d+", "(a|b)", "[^a]", "a{2,}?", "a++", "é", "^a$", "x{}"):
        assert ascii_pattern(re.compile(source)) is None, source
    assert ascii_pattern(re.compile("a", re.IGNORECASE)) is None
