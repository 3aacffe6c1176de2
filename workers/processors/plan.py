"""`plan`: each tenant's tracking plan, the actions it sends and what each must (not) carry.

A plan is a JSON (or YAML) document (docs/plans.md):

    {"mode": "reject", "unknown_actions": "reject",
     "actions": {"view": {},
                 "purchase": {"required": ["metadata.order_id", "metadata.price"],
                              "min": {"metadata.quantity": 1}, "mode": "flag"}}}

`parse_plan` checks a document and compiles it, or raises `PlanError` naming the path of the bad node
(`actions.purchase.min.metadata.quantity`); `TrackingPlans` is the processor holding the compiled plan
of each tenant that has one. An activity of a tenant without a plan is not looked at, so the doors
keep the compiled path's byte spans for that tenant's requests (`ProcessorChain.applies`).

Rule names (the `reason` of the metrics, the strings of the `plan_violations` column) are
`unknown_action`, `required:<path>`, `forbidden:<path>`, `target_types`, `enum:<path>`,
`pattern:<path>`, `min:<path>`, `max:<path>`, `max_length:<path>`.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core import fastpath
from core.normalize import normalize_action
from core.proto.activity.v1 import activity_pb2 as pb
from workers.processors.base import Verdict
from workers.processors.plan_screen import compile_program

PLAN_VIOLATION = pb.REJECTION_REASON_PLAN_VIOLATION
MODES = ("reject", "flag")
UNKNOWN_ACTIONS = ("allow", "flag", "reject")
VALUE_RULES = ("enum", "pattern", "min", "max", "max_length")
_ACTION_KEYS = ("required", "forbidden", "target_types", *VALUE_RULES, "mode", "description")
_PLAN_KEYS = ("mode", "unknown_actions", "actions", "description")
MAX_ACTIONS = 1_000
MAX_PATTERN_LENGTH = 500
_NAMES_CACHED = 4_096
"""Action spellings remembered per tenant by `TrackingPlans.process` (a client may send any)."""


class PlanError(ValueError):
    """A plan document that cannot be used: `path` is the node at fault (`actions.purchase.min`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '(plan)'}: {message}")
        self.path = path
        self.message = message


# -- field paths -----------------------------------------------------------------------------------

Getter = Callable[[pb.Activity], Any]
"""Reads one path of an activity: its value, or None when the activity does not carry it."""


def _compile_path(path: str) -> Getter:
    """A getter for `path` (`metadata.price`, `target.attributes.color`, `segments`); ValueError when
    the Activity message has no such field."""
    parts = path.split(".")
    descriptor: Any = pb.Activity.DESCRIPTOR
    steps: list[tuple[str, str]] = []  # (kind, name): message field, scalar field, map key
    n = 0
    while n < len(parts):
        name = parts[n]
        if descriptor is None:
            raise ValueError(f"{'.'.join(parts[:n])} has no fields")
        f = descriptor.fields_by_name.get(name)
        if f is None:
            known = ", ".join(sorted(descriptor.fields_by_name))
            raise ValueError(f"unknown field {name!r} (known here: {known})")
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            steps.append(("field", name))
            if n + 1 < len(parts):
                key = ".".join(parts[n + 1 :])
                if not key:
                    raise ValueError("empty map key")
                steps.append(("key", key))
            break
        if f.message_type is not None and not f.is_repeated:
            steps.append(("message", name))
            descriptor = f.message_type
            if descriptor.full_name == "google.protobuf.Timestamp":
                descriptor = None
        else:
            steps.append(("repeated" if f.is_repeated else "presence" if f.has_presence else "field", name))
            descriptor = None
        n += 1

    def get(activity: pb.Activity) -> Any:
        value: Any = activity
        for kind, name in steps:
            if kind in ("message", "presence"):
                if not value.HasField(name):
                    return None
                value = getattr(value, name)
            elif kind == "key":
                entry = value.get(name)
                return entry if entry else None
            else:
                value = getattr(value, name)
                # Without presence, proto3 cannot tell empty from absent: empty is absent.
                if not value:
                    return None
                if kind == "repeated":
                    return list(value)
        return value

    return get


def _is_string_path(path: str) -> bool:
    return not path.startswith(
        ("metadata.quantity", "metadata.price", "source.position", "source.result_count")
    )


# -- the compiled plan -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class _Check:
    rule: str
    path: str
    getter: Getter
    test: Callable[[Any], str | None]
    """None when the value passes; otherwise what is wrong with it."""
    arg: Any = None
    """The rule's argument as the test uses it: the allowed values, the compiled pattern, the bound,
    the length (read by `workers.processors.plan_screen` to run the same rule on raw bytes)."""


@dataclass(frozen=True)
class ActionRules:
    action: str
    mode: str
    required: tuple[tuple[str, Getter], ...] = ()
    forbidden: tuple[tuple[str, Getter], ...] = ()
    target_types: frozenset[str] | None = None
    checks: tuple[_Check, ...] = ()

    def violations(self, activity: pb.Activity, first_only: bool) -> list[Violation]:
        found: list[Violation] = []
        for path, get in self.required:
            if get(activity) is None:
                found.append(Violation(f"required:{path}", path, f"{path} is required for {self.action!r}"))
                if first_only:
                    return found
        for path, get in self.forbidden:
            if get(activity) is not None:
                found.append(Violation(f"forbidden:{path}", path, f"{path} is forbidden for {self.action!r}"))
                if first_only:
                    return found
        if self.target_types is not None:
            target_type = activity.target.type
            if target_type not in self.target_types:
                allowed = ", ".join(sorted(self.target_types))
                found.append(
                    Violation(
                        "target_types",
                        "target.type",
                        f"target.type {target_type!r} is not one of {allowed} for {self.action!r}",
                    )
                )
                if first_only:
                    return found
        for check in self.checks:
            value = check.getter(activity)
            if value is None:
                continue
            problem = check.test(value)
            if problem is not None:
                found.append(Violation(check.rule, check.path, f"{check.path} {problem} for {self.action!r}"))
                if first_only:
                    return found
        return found


@dataclass(frozen=True)
class Plan:
    """A tenant's compiled plan. `document` is the plan as applied (JSON-ready)."""

    mode: str
    unknown_actions: str
    actions: Mapping[str, ActionRules]
    document: Mapping[str, Any] = field(default_factory=dict)

    def rules_for(self, action: str) -> ActionRules | None:
        """The rules of `action` as sent (`Add-To-Cart` is `add_to_cart`); None: not in the plan."""
        rules = self.actions.get(action)
        if rules is None:
            rules = self.actions.get(normalize_action(action) or action)
        return rules

    def judge(self, activity: pb.Activity) -> Verdict | None:
        action = activity.action
        rules = self.rules_for(action)
        if rules is None:
            if self.unknown_actions == "allow":
                return None
            message = f"action {action!r} is not in the tenant's tracking plan (rule unknown_action)"
            if self.unknown_actions == "reject":
                return Verdict.reject("unknown_action", "action", message, PLAN_VIOLATION)
            return Verdict.flag("unknown_action")
        reject = rules.mode == "reject"
        found = rules.violations(activity, first_only=reject)
        if not found:
            return None
        if reject:
            v = found[0]
            message = f"{v.message} (tracking plan rule {v.rule})"
            return Verdict.reject(v.rule, v.field, message, PLAN_VIOLATION)
        return Verdict.flag(found[0].rule, tuple(v.rule for v in found))

    def violations(self, activity: pb.Activity) -> list[Violation]:
        """Every rule `activity` breaks, whatever the mode (for `plans check`)."""
        action = activity.action
        rules = self.rules_for(action)
        if rules is None:
            if self.unknown_actions == "allow":
                return []
            return [Violation("unknown_action", "action", f"action {action!r} is not in the plan")]
        return rules.violations(activity, first_only=False)

    def mode_of(self, activity: pb.Activity) -> str:
        """What a violation of `activity` leads to: reject or flag."""
        rules = self.rules_for(activity.action)
        if rules is None:
            return "reject" if self.unknown_actions == "reject" else "flag"
        return rules.mode


# -- parsing ---------------------------------------------------------------------------------------


def load_document(text: str, name: str = "") -> Any:
    """A plan file's text as data: JSON, or YAML (a superset, when PyYAML is installed)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        json_error = error
    try:
        yaml: Any = importlib.import_module("yaml")
    except ImportError:
        raise PlanError("", f"not valid JSON ({json_error}); YAML needs PyYAML installed") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PlanError("", f"neither JSON nor YAML: {error}") from None


def _mapping(node: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(node, dict):
        raise PlanError(path, f"expected an object, got {type(node).__name__}")
    for key in node:
        if not isinstance(key, str):
            raise PlanError(path, f"keys must be strings, got {key!r}")
    return node


def _choice(node: Any, path: str, choices: tuple[str, ...]) -> str:
    if node not in choices:
        raise PlanError(path, f"expected one of {', '.join(choices)}, got {node!r}")
    return str(node)


def _path(node: Any, where: str) -> tuple[str, Getter]:
    if not isinstance(node, str) or not node:
        raise PlanError(where, f"expected a field path (metadata.price), got {node!r}")
    try:
        return node, _compile_path(node)
    except ValueError as error:
        raise PlanError(where, f"{node!r}: {error}") from None


def _paths(node: Any, where: str) -> tuple[tuple[str, Getter], ...]:
    if not isinstance(node, list):
        raise PlanError(where, f"expected a list of field paths, got {type(node).__name__}")
    return tuple(_path(item, f"{where}[{n}]") for n, item in enumerate(node))


def _number(node: Any, where: str) -> float:
    if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(node):
        raise PlanError(where, f"expected a number, got {node!r}")
    return float(node)


def _as_number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _value_check(rule: str, path: str, getter: Getter, arg: Any, where: str) -> _Check:
    name = f"{rule}:{path}"
    if rule == "enum":
        if not isinstance(arg, list) or not arg:
            raise PlanError(where, f"expected a non-empty list of allowed values, got {arg!r}")
        for n, item in enumerate(arg):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise PlanError(f"{where}[{n}]", f"expected a string or a number, got {item!r}")
        allowed = frozenset(str(item) if _is_string_path(path) else item for item in arg)
        shown = ", ".join(sorted(map(str, allowed)))

        def test_enum(value: Any) -> str | None:
            if isinstance(value, list):
                bad = [v for v in value if v not in allowed]
                return None if not bad else f"holds {bad[0]!r}, not one of {shown}"
            return None if value in allowed else f"is {value!r}, not one of {shown}"

        return _Check(name, path, getter, test_enum, allowed)
    if rule == "pattern":
        if not isinstance(arg, str) or len(arg) > MAX_PATTERN_LENGTH:
            raise PlanError(where, f"expected a regular expression of at most {MAX_PATTERN_LENGTH} chars")
        try:
            compiled = re.compile(arg)
        except re.error as error:
            raise PlanError(where, f"not a valid regular expression: {error}") from None

        def test_pattern(value: Any) -> str | None:
            values = value if isinstance(value, list) else [value]
            for v in values:
                if compiled.fullmatch(str(v)) is None:
                    return f"is {v!r}, which does not match {arg!r}"
            return None

        return _Check(name, path, getter, test_pattern, compiled)
    if rule in ("min", "max"):
        bound = _number(arg, where)
        low = rule == "min"

        def test_bound(value: Any) -> str | None:
            number = _as_number(value)
            if number is None:
                return f"is {value!r}, not a number"
            if (number < bound) if low else (number > bound):
                return f"is {value!r}, {'below the minimum' if low else 'above the maximum'} {arg!r}"
            return None

        return _Check(name, path, getter, test_bound, bound)
    # max_length
    if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0:
        raise PlanError(where, f"expected a length (an integer >= 0), got {arg!r}")

    def test_length(value: Any) -> str | None:
        size = len(value) if isinstance(value, str | list | Mapping) or hasattr(value, "__len__") else None
        if size is None:
            return "has no length"
        return None if size <= arg else f"has length {size}, above the maximum {arg}"

    return _Check(name, path, getter, test_length, arg)


def _action_rules(action: str, node: Any, where: str, default_mode: str) -> ActionRules:
    if node is None:
        node = {}
    spec = _mapping(node, where)
    for key in spec:
        if key not in _ACTION_KEYS:
            raise PlanError(f"{where}.{key}", f"unknown rule (known: {', '.join(_ACTION_KEYS)})")
    mode = _choice(spec["mode"], f"{where}.mode", MODES) if "mode" in spec else default_mode
    required = _paths(spec.get("required", []), f"{where}.required")
    forbidden = _paths(spec.get("forbidden", []), f"{where}.forbidden")
    target_types: frozenset[str] | None = None
    if "target_types" in spec:
        types = spec["target_types"]
        if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
            raise PlanError(f"{where}.target_types", f"expected a list of target types, got {types!r}")
        target_types = frozenset(types)
    checks: list[_Check] = []
    for rule in VALUE_RULES:
        if rule not in spec:
            continue
        for path, arg in _mapping(spec[rule], f"{where}.{rule}").items():
            at = f"{where}.{rule}.{path}"
            _, getter = _path(path, at)
            checks.append(_value_check(rule, path, getter, arg, at))
    return ActionRules(action, mode, required, forbidden, target_types, tuple(checks))


def parse_plan(document: Any) -> Plan:
    """Check a plan document and compile it; PlanError names the first bad node."""
    spec = _mapping(document, "")
    for key in spec:
        if key not in _PLAN_KEYS:
            raise PlanError(key, f"unknown key (known: {', '.join(_PLAN_KEYS)})")
    if "description" in spec and not isinstance(spec["description"], str):
        raise PlanError("description", "expected a string")
    mode = _choice(spec.get("mode", "reject"), "mode", MODES)
    unknown = _choice(spec.get("unknown_actions", "allow"), "unknown_actions", UNKNOWN_ACTIONS)
    if "actions" not in spec:
        raise PlanError("actions", "required: the actions the tenant sends, with their rules ({} for none)")
    actions_node = _mapping(spec["actions"], "actions")
    if len(actions_node) > MAX_ACTIONS:
        raise PlanError("actions", f"at most {MAX_ACTIONS} actions")
    actions: dict[str, ActionRules] = {}
    for name, node in actions_node.items():
        where = f"actions.{name}"
        canonical = normalize_action(name)
        if canonical is None:
            raise PlanError(where, f"{name!r} is not a valid action name")
        if canonical in actions:
            raise PlanError(where, f"{name!r} is the same action as another one ({canonical!r})")
        actions[canonical] = _action_rules(canonical, node, where, mode)
    return Plan(mode, unknown, actions, spec)


# -- the processor ---------------------------------------------------------------------------------


class TrackingPlans:
    """The `plan` processor: each tenant's compiled plan, replaced whole by `replace` (from
    `workers.processors.plan_store.PlanRefresher`); tenants without a plan are not looked at."""

    name = "plan"

    def __init__(self, plans: Mapping[str, Plan] | None = None) -> None:
        self._plans: dict[str, Plan] = {}
        self._checks: dict[str, tuple[Plan, Any, dict[str, bytes]]] = {}
        self.replace(plans or {}, 0)
        self.version = 0
        """The plan store's change marker these plans were read at (0: never read)."""

    @property
    def active(self) -> bool:
        return bool(self._plans)

    @property
    def plans(self) -> Mapping[str, Plan]:
        return self._plans

    def replace(self, plans: Mapping[str, Plan], version: int) -> None:
        # Per tenant with a program (None without the compiled module): the plan, its program, and
        # the plan's name (as the program has it) of each action as activities spell it, filled as
        # they come.
        checks: dict[str, tuple[Plan, Any, dict[str, bytes]]] = {}
        for tenant, plan in plans.items():
            program = compile_program(plan)
            if program is not None:
                checks[tenant] = (plan, program, {})
        # Assignments only, no await between them: a request on the event loop sees the old plans
        # and programs or the new ones, never a mix.
        self._plans = dict(plans)
        self._checks = checks
        self.version = version

    def applies(self, tenant: str) -> bool:
        return tenant in self._plans

    def process(self, tenant: str, activity: pb.Activity) -> Verdict | None:
        compiled = self._checks.get(tenant)
        if compiled is None:
            plan = self._plans.get(tenant)
            return None if plan is None else plan.judge(activity)
        plan, program, names = compiled
        # The compiled program first, on the activity serialized again (about a tenth of the Python
        # rules' cost): activities the compiled path left to Python (an old SDK's spellings, ...)
        # mostly conform, and only those it cannot vouch for are judged here.
        action = activity.action
        name = names.get(action)
        if name is None:
            rules = plan.rules_for(action)
            name = rules.action.encode() if rules is not None else b""
            if len(names) < _NAMES_CACHED:
                names[action] = name
        if fastpath.plan_check(program, name, activity.SerializeToString()):
            return None
        return plan.judge(activity)

    def screen(self, tenant: str, raw: bytes, spans: bytes) -> tuple[bytes, bytes] | None:
        """The fast spans of `raw` that certainly conform to the tenant's plan, and those `process`
        must judge (see `workers.processors.plan_screen`); None without the compiled module."""
        compiled = self._checks.get(tenant)
        if compiled is None:
            return (spans, b"") if tenant not in self._plans else None
        return fastpath.plan_screen(raw, spans, compiled[1])
