"""Access: everything held about a person, as records for JSON Lines (`activity-collector users export`,
`PrivacyService.ExportPerson`).

One record per thing held, each with its `type`: `person` (the ids found, see
`workers.privacy.persons`), `activity` (a row of `activities`, copies collapsed), `rejected_activity`
(a row of `rejected_activities`, with the activity as sent), `identity_link`, `dead_letter` (one row of
a letter, with the letter's id and error), `suppression` (whether the person's activities are dropped at
intake) and `erasure` (the latest erasure that covered them).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from google.protobuf.json_format import MessageToDict

from core.proto.activity.v1 import activity_pb2 as pb
from workers.commit.deadletters import split_rows
from workers.privacy.erasure import ErasureStore, row_ids
from workers.privacy.persons import PersonIds, SqlEngine, resolve_person
from workers.processors.suppression import SuppressionStore, id_digest
from workers.storage.analytics_schema import quote
from workers.storage.contract import json_rows
from workers.storage.schema import REJECTIONS_TABLE


def _json(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def _activity(body: bytes) -> dict[str, Any]:
    try:
        return dict(MessageToDict(pb.Activity.FromString(body), preserving_proto_field_name=True))
    except Exception:
        # Cut at its size limit, or never an activity: given as its bytes.
        return {"unreadable_hex": body.hex()}


async def _call(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


async def export_person(
    tenant: str, kind: str, value: str, pool: asyncpg.Pool, clickhouse: SqlEngine, database: str
) -> AsyncIterator[dict[str, Any]]:
    """The records held about the person `kind` `value` names, one at a time."""
    ids = await resolve_person(tenant, PersonIds.of(kind, value), pool, clickhouse, database, _call)
    yield {
        "type": "person",
        "tenant": tenant,
        "ids": {k: sorted(ids.by_kind(k)) for k in ("user", "anonymous", "session")},
    }
    table = f"`{database}`.`activities`"
    sql = (
        f"SELECT * FROM {table} FINAL WHERE tenant_id = {quote(tenant)} AND {ids.condition()}"
        " ORDER BY occurred_at, id"
    )
    for row in json_rows(await _call(clickhouse.query, sql, "JSONEachRow")):
        yield {"type": "activity", **row}
    needles = "[" + ", ".join(quote(v) for _, v in ids) + "]"
    sql = (
        "SELECT toString(id) AS record, rejected_at, reason, field, message, hex(payload) AS bytes"
        f" FROM `{database}`.`{REJECTIONS_TABLE}` WHERE tenant_id = {quote(tenant)}"
        f" AND arrayExists(n -> position(payload, n) > 0, {needles}) ORDER BY rejected_at"
    )
    for row in json_rows(await _call(clickhouse.query, sql, "JSONEachRow")):
        body = bytes.fromhex(row.pop("bytes"))
        try:
            if not ids.matches(*row_ids(body)):
                continue
        except Exception:
            pass  # unreadable, and holding one of the ids' bytes: theirs as far as can be told
        yield {"type": "rejected_activity", **row, "activity": _activity(body)}
    links = await pool.fetch(
        "SELECT kind, key, user_id, first_seen, last_seen FROM identity_links WHERE tenant_id = $1 AND"
        " (user_id = ANY($2) OR (kind = 'anonymous' AND key = ANY($3))"
        " OR (kind = 'session' AND key = ANY($4)))"
        " ORDER BY kind, key",
        tenant,
        sorted(ids.user),
        sorted(ids.anonymous),
        sorted(ids.session),
    )
    for link in links:
        yield {"type": "identity_link", **{k: _json(v) for k, v in dict(link).items()}}
    letters = await pool.fetch(
        "SELECT id, created_at, error, payload FROM dead_letters WHERE tenant_id = $1 OR tenant_id IS NULL"
        " ORDER BY id",
        tenant,
    )
    for letter in letters:
        try:
            bodies = split_rows(bytes(letter["payload"]))
        except Exception:
            continue
        for body in bodies:
            try:
                if not ids.matches(*row_ids(body)):
                    continue
            except Exception:
                continue
            yield {
                "type": "dead_letter",
                "letter": letter["id"],
                "created_at": _json(letter["created_at"]),
                "error": letter["error"],
                "activity": _activity(body),
            }
    state = await SuppressionStore(pool).state(tenant, id_digest(tenant, kind, value))
    yield {
        "type": "suppression",
        "suppressed": state is not None,
        **{k: _json(v) for k, v in (state or {}).items()},
    }
    receipt = await ErasureStore(pool).find(tenant, kind, value)
    if receipt is not None:
        yield {"type": "erasure", **receipt.to_dict()}
