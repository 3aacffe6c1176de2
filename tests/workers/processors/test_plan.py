"""Tracking plans: the document checked node by node, and what a plan decides for each activity."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import make_activity

from core.proto.activity.v1 import activity_pb2 as pb
from workers.processors import Action, ProcessorChain, TrackingPlans
from workers.processors.plan import PlanError, load_document, parse_plan

PURCHASE = {
    "unknown_actions": "reject",
    "actions": {
        "view": {},
        "purchase": {
            "required": ["metadata.order_id", "metadata.price", "metadata.currency"],
            "min": {"metadata.quantity": 1},
        },
    },
}


def purchase(**metadata: Any) -> pb.Activity:
    values = {"order_id": "o-1", "price": 1999, "currency": "EUR", "quantity": 2} | metadata
    values = {k: v for k, v in values.items() if v is not None}
    return make_activity(action="purchase", metadata=pb.Metadata(**values))


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ([], ""),
        ({"actions": {}, "mode": "warn"}, "mode"),
        ({"actions": {}, "unknown_actions": "drop"}, "unknown_actions"),
        ({"acts": {}}, "acts"),
        ({"mode": "flag"}, "actions"),
        ({"actions": []}, "actions"),
        ({"actions": {"Not An Action!": {}}}, "actions.Not An Action!"),
        ({"actions": {"view": {"requird": []}}}, "actions.view.requird"),
        ({"actions": {"view": {"required": "metadata.price"}}}, "actions.view.required"),
        ({"actions": {"view": {"required": ["metadata.prize"]}}}, "actions.view.required[0]"),
        ({"actions": {"view": {"forbidden": ["target.type.x"]}}}, "actions.view.forbidden[0]"),
        ({"actions": {"view": {"min": {"metadata.quantity": "one"}}}}, "actions.view.min.metadata.quantity"),
        ({"actions": {"view": {"pattern": {"source_id": "("}}}}, "actions.view.pattern.source_id"),
        ({"actions": {"view": {"enum": {"metadata.currency": []}}}}, "actions.view.enum.metadata.currency"),
        ({"actions": {"view": {"max_length": {"segments": -1}}}}, "actions.view.max_length.segments"),
        ({"actions": {"view": {"target_types": "product"}}}, "actions.view.target_types"),
        ({"actions": {"view": {"mode": "drop"}}}, "actions.view.mode"),
        ({"actions": {"view": {}, "View": {}}}, "actions.View"),
    ],
)
def test_a_malformed_plan_is_refused_naming_the_node(document: Any, path: str) -> None:
    with pytest.raises(PlanError) as refused:
        parse_plan(document)
    assert refused.value.path == path


def test_yaml_and_json_read_alike() -> None:
    yaml = """
unknown_actions: reject
actions:
  view: {}
  purchase:
    required: [metadata.order_id, metadata.price, metadata.currency]
    min: {metadata.quantity: 1}
"""
    assert load_document(yaml) == PURCHASE
    with pytest.raises(PlanError):
        load_document("{not: [json")


def test_reject_mode_names_the_first_rule_broken() -> None:
    plan = parse_plan(PURCHASE)
    assert plan.judge(purchase()) is None
    assert plan.judge(make_activity(action="view")) is None
    assert plan.judge(make_activity(action="View")) is None  # the canonical action counts

    missing = plan.judge(purchase(order_id=None))
    assert missing is not None and missing.action is Action.REJECT
    assert missing.rejection == pb.REJECTION_REASON_PLAN_VIOLATION
    assert (missing.reason, missing.field) == ("required:metadata.order_id", "metadata.order_id")
    assert "required:metadata.order_id" in missing.message

    few = plan.judge(purchase(quantity=0))
    assert few is not None and (few.reason, few.field) == ("min:metadata.quantity", "metadata.quantity")
    # An absent optional value is not below its minimum.
    assert plan.judge(purchase(quantity=None)) is None

    unknown = plan.judge(make_activity(action="click"))
    assert unknown is not None and (unknown.reason, unknown.field) == ("unknown_action", "action")


def test_flag_mode_lists_every_rule_broken() -> None:
    plan = parse_plan(PURCHASE | {"mode": "flag", "unknown_actions": "flag"})
    verdict = plan.judge(purchase(order_id=None, price=None, quantity=0))
    assert verdict is not None and verdict.action is Action.FLAG
    assert verdict.flags == ("required:metadata.order_id", "required:metadata.price", "min:metadata.quantity")
    unknown = plan.judge(make_activity(action="click"))
    assert unknown is not None and unknown.flags == ("unknown_action",)


def test_an_action_may_override_the_mode_and_unknown_actions_may_pass() -> None:
    document = {
        "mode": "reject",
        "actions": {"purchase": {"required": ["metadata.order_id"], "mode": "flag"}},
    }
    plan = parse_plan(document)
    verdict = plan.judge(purchase(order_id=None))
    assert verdict is not None and verdict.action is Action.FLAG
    assert plan.judge(make_activity(action="anything")) is None


def test_value_rules_on_every_kind_of_path() -> None:
    plan = parse_plan(
        {
            "actions": {
                "view": {
                    "forbidden": ["user.identities.email"],
                    "target_types": ["product", "page"],
                    "enum": {"target.attributes.color": ["red", "blue"], "metadata.currency": ["EUR"]},
                    "pattern": {"source_id": "resp-[0-9]+", "segments": "[a-z]+"},
                    "max": {"target.attributes.size": 48, "metadata.price": 100_00},
                    "max_length": {"metadata.query": 5, "segments": 2},
                }
            }
        }
    )

    def rule(**fields: Any) -> str | None:
        verdict = plan.judge(make_activity(action="view", **fields))
        return None if verdict is None else verdict.reason

    assert rule() is None
    assert rule(target=pb.Target(type="product", id="1", attributes={"color": "green"})) == (
        "enum:target.attributes.color"
    )
    assert rule(target=pb.Target(type="category", id="1")) == "target_types"
    assert (
        rule(target=pb.Target(type="page", id="1", attributes={"size": "50"})) == "max:target.attributes.size"
    )
    assert (
        rule(target=pb.Target(type="page", id="1", attributes={"size": "XL"})) == "max:target.attributes.size"
    )
    assert rule(source_id="resp-12") is None
    assert rule(source_id="resp-x") == "pattern:source_id"
    assert rule(segments=["vip", "new"]) is None
    assert rule(segments=["vip", "new", "eu"]) == "max_length:segments"
    assert rule(segments=["VIP"]) == "pattern:segments"
    assert rule(user=pb.User(user_id="u", identities={"email": "a@b.c"})) == "forbidden:user.identities.email"
    assert rule(metadata=pb.Metadata(price=100_01)) == "max:metadata.price"
    assert rule(metadata=pb.Metadata(price=0)) is None  # present (optional field), within bounds
    assert rule(metadata=pb.Metadata(query="shoes!")) == "max_length:metadata.query"
    assert rule(metadata=pb.Metadata(currency="USD")) == "enum:metadata.currency"


def test_the_chain_judges_only_the_tenants_with_a_plan() -> None:
    plans = TrackingPlans()
    chain = ProcessorChain([plans])
    assert not chain.active and not chain.applies("shop")
    plans.replace({"shop": parse_plan(PURCHASE), "lab": parse_plan(PURCHASE | {"mode": "flag"})}, 1)
    assert chain.active and chain.applies("shop") and not chain.applies("other")

    activities = [(0, purchase()), (1, purchase(price=None)), (2, make_activity(action="view"))]
    shop = chain.run("shop", activities)
    assert [i for i, _ in shop.kept] == [0, 2] and [r.index for r in shop.refused] == [1]
    assert shop.refused[0].processor == "plan" and not shop.flags
    lab = chain.run("lab", activities)
    assert [i for i, _ in lab.kept] == [0, 1, 2] and lab.flags == {1: ("required:metadata.price",)}
    other = chain.run("other", activities)
    assert len(other.kept) == 3 and not other.refused and not other.flags
    assert chain.stats.rejected == {("plan", "required:metadata.price"): 1}
    assert chain.stats.flagged == {("plan", "required:metadata.price"): 1}
