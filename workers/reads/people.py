"""Who a read is about: a person found by any of their ids, and every id of theirs.

A person is the identified user when one is known, else the visitor (or session) the request named.
An anonymous id (or session id) belongs to a user when some stored activity carried both: a login.
The links are read from `person_links` (filled on insert, `workers.storage.person_schema`) when the
call is answered, so a visitor's activities from before the login belong to the user as much as those
after it (`resolved_user_id`, set by enrichment, only covers the activities that arrived after the link
was seen). The person's activities are then point reads of `activities_by_person` by user key.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.storage.analytics_schema import quote
from workers.storage.contract import QueryEngine, json_rows
from workers.storage.schema import USER_KEY

PERSON = f"if(resolved_user_id != '', resolved_user_id, {USER_KEY})"
"""The person of a stored activity as enrichment resolved it, for aggregate reads over many people."""


def rows(engine: QueryEngine, sql: str) -> list[dict[str, object]]:
    """The rows of `sql`, as dictionaries."""
    return json_rows(engine.query(sql, "JSONEachRow"))


@dataclass(frozen=True)
class Person:
    """A person of one tenant: `person_id`, and the user keys their activities are stored under."""

    tenant: str
    person_id: str
    user_id: str = ""
    keys: tuple[str, ...] = ()
    own_keys: bool = True
    """`keys` are the person's own ids (the user's and the ids linked to it), with no id the request
    named besides them: the same for every request of this person (the read model keeps those)."""

    def activities(self, columns: str = "*") -> str:
        """SQL: the person's activities from `activities_by_person`, one row per activity id."""
        keys = ", ".join(map(quote, self.keys)) or "''"
        return (
            f"SELECT {columns} FROM activities_by_person "
            f"WHERE tenant_id = {quote(self.tenant)} AND person_key IN ({keys}) "
            "ORDER BY received_at DESC LIMIT 1 BY id"
        )


def find_person(
    engine: QueryEngine, tenant: str, user_id: str = "", anonymous_id: str = "", session_id: str = ""
) -> Person:
    """The person named by any of their ids (the first given of user id, anonymous id, session id
    decides who is asked about), with every id of theirs the stored activities link."""
    where = f"tenant_id = {quote(tenant)}"
    if not user_id:
        for value in (anonymous_id, session_id):
            if not value:
                continue
            linked = rows(
                engine,
                f"SELECT argMax(linked, occurred_at) AS user FROM person_links "
                f"WHERE {where} AND kind = 'user' AND key = {quote(value)} HAVING count() > 0",
            )
            if linked:
                user_id = str(linked[0]["user"])
                break
    if not user_id:
        own = anonymous_id or session_id
        return Person(tenant, own, keys=(own,) if own else ())
    found = rows(
        engine,
        f"SELECT DISTINCT linked FROM person_links "
        f"WHERE {where} AND kind IN ('anonymous', 'session') AND key = {quote(user_id)}",
    )
    keys = {user_id, *(str(r["linked"]) for r in found)}
    asked = {k for k in (anonymous_id, session_id) if k}
    return Person(tenant, user_id, user_id, tuple(sorted(keys | asked)), asked <= keys)
