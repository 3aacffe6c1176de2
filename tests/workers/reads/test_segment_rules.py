"""Segment rules: what a malformed rule is refused for, naming the node at fault."""

from __future__ import annotations

from typing import Any

import pytest

from workers.reads.segments import MAX_NODES, RuleError, check_name, parse_rule

CART_ABANDONERS = {
    "all": [{"action": "add_to_cart", "within": "1d"}, {"not": {"action": "purchase", "within": "1d"}}]
}


def test_the_cart_abandoners_rule_compiles() -> None:
    rule = parse_rule(CART_ABANDONERS)
    assert rule.document == CART_ABANDONERS
    assert "action = 'add_to_cart'" in rule.sql and "NOT" in rule.sql


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ([], ""),
        ({}, ""),
        ({"all": []}, "all"),
        ({"all": {"action": "view"}}, "all"),
        ({"any": [{"action": "view"}, {"action": ""}]}, "any[1].action"),
        (
            {"all": [{"action": "view"}, {"not": {"action": "purchase", "within": "yesterday"}}]},
            "all[1].not.within",
        ),
        ({"action": "view", "within": "0d"}, "within"),
        ({"action": "view", "min": -1}, "min"),
        ({"action": "view", "min": True}, "min"),
        ({"action": "view", "min": 3, "max": 2}, "max"),
        ({"action": "view", "colour": "red"}, "colour"),
        ({"action": "view", "category": ""}, "category"),
        ({"all": [{"action": "view"}], "any": [{"action": "view"}]}, ""),
        ({"not": {"all": [{"action": "view", "brand": 7}]}}, "not.all[0].brand"),
    ],
)
def test_a_malformed_rule_is_refused_naming_the_node(document: Any, path: str) -> None:
    with pytest.raises(RuleError) as error:
        parse_rule(document)
    assert error.value.path == path


def test_a_rule_has_a_bounded_size() -> None:
    parse_rule({"any": [{"action": "view"}] * (MAX_NODES - 1)})
    with pytest.raises(RuleError, match=f"at most {MAX_NODES}"):
        parse_rule({"any": [{"action": "view"}] * MAX_NODES})


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "é"])
def test_segment_names_are_plain(name: str) -> None:
    with pytest.raises(RuleError):
        check_name(name)
    check_name("cart-abandoners.v2")
