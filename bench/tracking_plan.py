"""The tracking plan `python -m bench --with-plan` applies to the load generator's tenant: ten rules on
every action of `bench/workload.py`, which every activity it generates satisfies.

The rules read fields every activity carries (so that each is a real check, not a skipped one), of each
kind a plan offers: required, forbidden, target types, enum, pattern, max_length and min. None reads a
field the workload's "old SDK" sessions spell their own way (device type, locale, currency, action):
the plan sees the activity as sent, before normalisation. `unknown_actions` is `reject` and `mode` is
`reject`, so a plan the workload broke would show as rejected activities, which fail the run's checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.workload import ACTIONS

RULES_PER_ACTION = 10

_RULES: dict[str, Any] = {
    "required": ["user.session_id", "user.anonymous_id", "target.id", "metadata.page_url"],
    "forbidden": ["user.identities.email"],
    "target_types": ["product", "category", "page"],
    "enum": {"metadata.custom.channel": ["web", "app"]},
    "pattern": {"user.session_id": "[0-9a-f]{16}"},
    "max_length": {"metadata.page_url": 2048},
    # Only cart and purchase activities carry a quantity: on the others the rule reads the field and
    # skips it, as a plan's value rules do.
    "min": {"metadata.quantity": 1},
}


def ten_rule_plan() -> dict[str, Any]:
    """The plan document (JSON-ready): the same ten rules on each of the workload's actions."""
    return {
        "description": "python -m bench --with-plan: ten rules on every action of bench/workload.py",
        "mode": "reject",
        "unknown_actions": "reject",
        "actions": {action: dict(_RULES) for action, _ in ACTIONS},
    }


def count_rules(action: Mapping[str, Any]) -> int:
    """The rules of one action of a plan document: one per required or forbidden path, one for
    `target_types`, one per path of each value rule."""
    rules = len(action.get("required", ())) + len(action.get("forbidden", ()))
    rules += 1 if "target_types" in action else 0
    for kind in ("enum", "pattern", "min", "max", "max_length"):
        rules += len(action.get(kind, {}))
    return rules
