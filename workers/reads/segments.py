"""Computed segments: named rules over a person's activities, kept per tenant in PostgreSQL.

A rule is a tree of `all` / `any` / `not` over conditions on the person's activities:

    {"all": [{"action": "add_to_cart", "within": "1d"},
             {"not": {"action": "purchase", "within": "1d"}}]}          (cart abandoners)

A condition counts the person's activities of `action` (optionally only of `target_type`, of a
`category` anywhere in the catalogue's path, or of a `brand`) within the last `within` (`30m`, `2h`,
`7d`; absent: ever), and holds when that count is at least `min` (default 1) and at most `max` (default:
no bound). `parse_rule` checks a document and compiles it to one SQL expression over a person's rows,
or raises `RuleError` naming the path of the bad node (`all[1].not.within`).

Membership is computed when it is asked for, from the stored activities: a person is in a segment as
soon as the activity that qualifies them is committed, and leaves it when the window passes. These
segments are apart from `Activity.segments`, which stays what the client sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from core.normalize import normalize_action
from workers.reads.people import rows
from workers.reads.records import Record
from workers.storage.analytics_schema import quote
from workers.storage.contract import QueryEngine

MAX_NODES = 64
MAX_SEGMENTS = 100
"""Segments a tenant may have: each GetProfile evaluates every one of them for the person."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CONDITION_KEYS = ("action", "within", "min", "max", "target_type", "category", "brand")


class RuleError(ValueError):
    """A rule that cannot be used: `path` is the node at fault."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '(rule)'}: {message}")
        self.path = path


def _count(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RuleError(path, f"expected a count (an integer >= 0), got {value!r}")
    return value


def _within(value: Any, path: str) -> int:
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match[1]) == 0:
        raise RuleError(path, f"expected a duration like 30m, 2h or 7d, got {value!r}")
    return int(match[1]) * _UNITS[match[2]]


def _condition(node: dict[str, Any], path: str) -> str:
    for key in node:
        if key not in _CONDITION_KEYS:
            raise RuleError(
                f"{path}.{key}" if path else key, f"unknown key (known: {', '.join(_CONDITION_KEYS)})"
            )
    action = normalize_action(node["action"]) if isinstance(node.get("action"), str) else None
    if not action:
        raise RuleError(
            f"{path}.action" if path else "action", f"expected an action name, got {node.get('action')!r}"
        )
    where = [f"action = {quote(action)}"]
    if "within" in node:
        seconds = _within(node["within"], f"{path}.within" if path else "within")
        where.append(f"occurred_at >= now64(3) - INTERVAL {seconds} SECOND")
    for key, sql in (
        ("target_type", "target_type = {}"),
        ("brand", "target_brand = {}"),
        ("category", "has(target_category_path, {})"),
    ):
        if key in node:
            value = node[key]
            if not isinstance(value, str) or not value:
                raise RuleError(
                    f"{path}.{key}" if path else key, f"expected a non-empty string, got {value!r}"
                )
            where.append(sql.format(quote(value)))
    low = _count(node.get("min", 1), f"{path}.min" if path else "min")
    count = f"countIf({' AND '.join(where)})"
    terms = [f"{count} >= {low}"]
    if "max" in node:
        high = _count(node["max"], f"{path}.max" if path else "max")
        if high < low:
            raise RuleError(f"{path}.max" if path else "max", f"max {high} is below min {low}")
        terms.append(f"{count} <= {high}")
    return "(" + " AND ".join(terms) + ")"


def _compile(node: Any, path: str, budget: list[int]) -> str:
    budget[0] -= 1
    if budget[0] < 0:
        raise RuleError(path, f"a rule has at most {MAX_NODES} nodes")
    if not isinstance(node, dict) or not node:
        raise RuleError(path, f"expected an object (all, any, not, or a condition), got {node!r}")
    operators = [k for k in ("all", "any", "not") if k in node]
    if not operators:
        return _condition(node, path)
    if len(node) != 1:
        raise RuleError(path, f"{operators[0]} stands alone in its object; got keys {sorted(node)}")
    op = operators[0]
    at = f"{path}.{op}" if path else op
    if op == "not":
        return f"NOT {_compile(node[op], at, budget)}"
    children = node[op]
    if not isinstance(children, list) or not children:
        raise RuleError(at, "expected a non-empty list of rules")
    joined = f" {'AND' if op == 'all' else 'OR'} ".join(
        _compile(child, f"{at}[{n}]", budget) for n, child in enumerate(children)
    )
    return f"({joined})"


@dataclass(frozen=True)
class Rule:
    document: Any
    sql: str
    """A boolean expression over the aggregates of one person's rows."""


def parse_rule(document: Any) -> Rule:
    return Rule(document, _compile(document, "", [MAX_NODES]))


def holds(rule: Rule, records: Iterable[Record], now_ms: int) -> bool:
    """Whether `rule` holds over one person's `records` at `now_ms`: what `rule.sql` computes over the
    same rows in ClickHouse, computed in memory (the read model's segments)."""
    return _holds(rule.document, list(records), now_ms)


def _holds(node: Any, records: list[Record], now_ms: int) -> bool:
    if "all" in node:
        return all(_holds(child, records, now_ms) for child in node["all"])
    if "any" in node:
        return any(_holds(child, records, now_ms) for child in node["any"])
    if "not" in node:
        return not _holds(node["not"], records, now_ms)
    action = normalize_action(node["action"])
    since = now_ms - _within(node["within"], "within") * 1000 if "within" in node else None
    target_type, brand, category = node.get("target_type"), node.get("brand"), node.get("category")
    count = sum(
        1
        for r in records
        if r.action == action
        and (since is None or r.occurred_ms >= since)
        and (target_type is None or r.target_type == target_type)
        and (brand is None or r.brand == brand)
        and (category is None or category in r.category_path)
    )
    return count >= node.get("min", 1) and ("max" not in node or count <= node["max"])


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise RuleError(
            "name",
            "a segment name is 1-64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
        )
    return name


# -- membership ------------------------------------------------------------------------------------


def _people(tenant: str) -> str:
    """The tenant's activities with their person, resolved at query time: a user id, else the user an
    anonymous id logged in as (any stored activity carrying both), else the user key."""
    where = f"tenant_id = {quote(tenant)}"
    return (
        "SELECT a.*, multiIf(a.user_id != '', a.user_id, l.linked != '', l.linked, "
        "a.anonymous_id != '', a.anonymous_id, a.session_id) AS person "
        f"FROM (SELECT * FROM activities FINAL WHERE {where}) AS a "
        f"LEFT JOIN (SELECT anonymous_id, argMax(user_id, occurred_at) AS linked FROM activities "
        f"WHERE {where} AND anonymous_id != '' AND user_id != '' GROUP BY anonymous_id) AS l "
        f"ON a.anonymous_id = l.anonymous_id"
    )


def members(engine: QueryEngine, tenant: str, rule: Rule) -> list[str]:
    """The persons in the segment now, sorted."""
    found = rows(
        engine, f"SELECT person FROM ({_people(tenant)}) GROUP BY person HAVING {rule.sql} ORDER BY person"
    )
    return [str(r["person"]) for r in found]


# -- storage ---------------------------------------------------------------------------------------


class SegmentStore:
    """The `segments` table of PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self, tenant: str, name: str, rule: Rule, replace: bool = False) -> bool:
        """Create the segment (or replace its rule, with `replace`); False when it exists already."""
        document = json.dumps(rule.document)
        if replace:
            await self.pool.execute(
                "INSERT INTO segments (tenant_id, name, rule) VALUES ($1, $2, $3::jsonb)"
                " ON CONFLICT (tenant_id, name) DO UPDATE SET rule = $3::jsonb, updated_at = now()",
                tenant,
                name,
                document,
            )
            return True
        count = await self.pool.fetchval("SELECT count(*) FROM segments WHERE tenant_id = $1", tenant)
        if int(count) >= MAX_SEGMENTS:
            raise RuleError("name", f"tenant {tenant} has {MAX_SEGMENTS} segments, the most it may have")
        result = await self.pool.execute(
            "INSERT INTO segments (tenant_id, name, rule) VALUES ($1, $2, $3::jsonb) ON CONFLICT DO NOTHING",
            tenant,
            name,
            document,
        )
        return str(result).split()[-1] != "0"

    async def delete(self, tenant: str, name: str) -> bool:
        result = await self.pool.execute(
            "DELETE FROM segments WHERE tenant_id = $1 AND name = $2", tenant, name
        )
        return str(result).split()[-1] != "0"

    async def get(self, tenant: str, name: str) -> Rule | None:
        document = await self.pool.fetchval(
            "SELECT rule FROM segments WHERE tenant_id = $1 AND name = $2", tenant, name
        )
        return None if document is None else parse_rule(json.loads(document))

    async def all(self, tenant: str) -> dict[str, Rule]:
        found = await self.pool.fetch(
            "SELECT name, rule FROM segments WHERE tenant_id = $1 ORDER BY name", tenant
        )
        return {r["name"]: parse_rule(json.loads(r["rule"])) for r in found}
