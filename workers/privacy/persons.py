"""A person: every id of one human of one tenant, found from one of them.

Found by a user id, an anonymous id or a session id, a person is expanded in two steps, through the
identity links in PostgreSQL and the activities in ClickHouse that carry several ids at once:

1. from an anonymous or session id, to the user ids it was seen with (its identity link, and the
   `user_id` or `resolved_user_id` of the activities that carry it);
2. from the user ids, to every anonymous and session id seen with them (their links, and the
   activities whose `user_id` or `resolved_user_id` is one of them).

It stops there: an anonymous id seen with a second user (a shared device) does not pull in that
user's other ids, so that one person's request never reaches into another person's data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from workers.processors.suppression import ANONYMOUS, KINDS, SESSION, USER, id_digest
from workers.storage.analytics_schema import quote
from workers.storage.contract import json_rows

MAX_IDS = 10_000
"""Most ids one person may have: beyond, the request is refused as too wide to be one person."""


class PersonError(Exception):
    """The person cannot be resolved as asked; the message says why."""


class SqlEngine(Protocol):
    """What the privacy jobs need of ClickHouse (`workers.storage.clickhouse.ClickHouseStore` is one).
    Both block: call them from a worker thread."""

    def query(self, sql: str, fmt: str) -> bytes: ...

    def command(self, sql: str) -> Any: ...


@dataclass
class PersonIds:
    user: set[str] = field(default_factory=set)
    anonymous: set[str] = field(default_factory=set)
    session: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, kind: str, value: str) -> PersonIds:
        if kind not in KINDS:
            raise PersonError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
        if not value:
            raise PersonError(f"the {kind} id is empty")
        ids = cls()
        ids.by_kind(kind).add(value)
        return ids

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PersonIds:
        return cls(set(data.get(USER, ())), set(data.get(ANONYMOUS, ())), set(data.get(SESSION, ())))

    def to_json(self) -> str:
        return json.dumps({kind: sorted(self.by_kind(kind)) for kind in KINDS})

    def by_kind(self, kind: str) -> set[str]:
        return {USER: self.user, ANONYMOUS: self.anonymous, SESSION: self.session}[kind]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for kind in KINDS:
            for value in sorted(self.by_kind(kind)):
                yield kind, value

    def __len__(self) -> int:
        return len(self.user) + len(self.anonymous) + len(self.session)

    def counts(self) -> dict[str, int]:
        return {kind: len(self.by_kind(kind)) for kind in KINDS}

    def digests(self, tenant: str) -> dict[bytes, str]:
        """digest -> kind of every id (what suppressions and receipts keep)."""
        return {id_digest(tenant, kind, value): kind for kind, value in self}

    def condition(self) -> str:
        """A ClickHouse condition on `activities` rows: the row names one of the person's ids."""
        parts = []
        if self.user:
            users = _in(self.user)
            parts += [f"user_id IN {users}", f"resolved_user_id IN {users}"]
        if self.anonymous:
            parts.append(f"anonymous_id IN {_in(self.anonymous)}")
        if self.session:
            parts.append(f"session_id IN {_in(self.session)}")
        return "(" + (" OR ".join(parts) or "0") + ")"

    def matches(self, user_id: str, resolved_user_id: str, anonymous_id: str, session_id: str) -> bool:
        """Whether an activity with these ids belongs to the person."""
        return bool(
            (user_id and user_id in self.user)
            or (resolved_user_id and resolved_user_id in self.user)
            or (anonymous_id and anonymous_id in self.anonymous)
            or (session_id and session_id in self.session)
        )


def _in(values: set[str]) -> str:
    return "(" + ", ".join(quote(v) for v in sorted(values)) + ")"


async def resolve_person(
    tenant: str, seed: PersonIds, pool: asyncpg.Pool, clickhouse: SqlEngine, database: str, call: Any
) -> PersonIds:
    """Every id of the person `seed` names (see the module's docstring). `call(f, *args)` runs a
    blocking ClickHouse call off the event loop (`asyncio.to_thread`)."""
    ids = PersonIds(set(seed.user), set(seed.anonymous), set(seed.session))
    table = f"`{database}`.`activities`"
    tenant_sql = quote(tenant)
    if ids.anonymous or ids.session:
        rows = await pool.fetch(
            "SELECT user_id FROM identity_links WHERE tenant_id = $1 AND"
            " ((kind = 'anonymous' AND key = ANY($2)) OR (kind = 'session' AND key = ANY($3)))",
            tenant,
            sorted(ids.anonymous),
            sorted(ids.session),
        )
        ids.user.update(r["user_id"] for r in rows)
        probe = PersonIds(set(), ids.anonymous, ids.session)
        sql = (
            f"SELECT DISTINCT user_id, resolved_user_id FROM {table}"
            f" WHERE tenant_id = {tenant_sql} AND {probe.condition()} LIMIT {MAX_IDS + 1}"
        )
        for row in json_rows(await call(clickhouse.query, sql, "JSONEachRow")):
            ids.user.update(v for v in (row["user_id"], row["resolved_user_id"]) if v)
    if ids.user:
        rows = await pool.fetch(
            "SELECT kind, key FROM identity_links WHERE tenant_id = $1 AND user_id = ANY($2)",
            tenant,
            sorted(ids.user),
        )
        for r in rows:
            ids.by_kind(ANONYMOUS if r["kind"] == "anonymous" else SESSION).add(r["key"])
        probe = PersonIds(ids.user)
        sql = (
            f"SELECT DISTINCT anonymous_id, session_id FROM {table}"
            f" WHERE tenant_id = {tenant_sql} AND {probe.condition()} LIMIT {MAX_IDS + 1}"
        )
        for row in json_rows(await call(clickhouse.query, sql, "JSONEachRow")):
            if row["anonymous_id"]:
                ids.anonymous.add(row["anonymous_id"])
            if row["session_id"]:
                ids.session.add(row["session_id"])
    if len(ids) > MAX_IDS:
        raise PersonError(f"the person has more than {MAX_IDS} ids: not one person")
    return ids


async def user_of_identity(
    tenant: str, repository: str, value: str, clickhouse: SqlEngine, database: str, call: Any
) -> str:
    """The user id of the activities that carry the identity `repository`=`value` (`User.identities`).
    Raises PersonError when none carries it, or when several user ids do (then name one of them)."""
    if not repository or not value:
        raise PersonError("an identity is REPOSITORY=ID, both non-empty (e.g. crm=C-1234)")
    sql = (
        f"SELECT DISTINCT if(user_id != '', user_id, resolved_user_id) AS user FROM `{database}`.`activities`"
        f" WHERE tenant_id = {quote(tenant)} AND identities[{quote(repository)}] = {quote(value)}"
        " AND user != '' LIMIT 3"
    )
    users = sorted(row["user"] for row in json_rows(await call(clickhouse.query, sql, "JSONEachRow")))
    if not users:
        raise PersonError(
            f"no activity of tenant {tenant} carries the identity {repository}={value} with a user id"
        )
    if len(users) > 1:
        raise PersonError(
            f"the identity {repository}={value} is carried by several user ids ({', '.join(users)}, ...):"
            " name the person by one of them"
        )
    return str(users[0])
