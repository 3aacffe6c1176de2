"""The dead-letter store: activities ClickHouse refused for their data, kept in PostgreSQL.

A dead letter is one spool record (one request's rows) that ClickHouse refused on its own, with the
error, the ClickHouse error code, the tenant when it can be read, and the rows exactly as they were to be
inserted. An operator lists, reads, replays and purges them (`activity-collector dead-letters`).

Writes are idempotent: each letter carries its `source` (the spool insert token and the record's
sequence), unique in the table, so a record dead-lettered again after a crash, or after a failed spool
commit, is stored once and counted once.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from core.wire import WireError, iter_fields
from workers.storage.clickhouse import StoreError
from workers.storage.postgres import POSTGRES_ERRORS
from workers.storage.schema import TENANT_FIELD


@dataclass(frozen=True)
class DeadLetter:
    """A record to keep: `rows` are framed ProtobufList rows, as the spool holds them."""

    source: str
    count: int
    rows: bytes
    error: str
    error_code: int | None
    tenant: str | None


@dataclass(frozen=True)
class StoredLetter:
    """A dead letter as the store holds it."""

    id: int
    created_at: datetime.datetime
    source: str
    tenant: str | None
    count: int
    error: str
    error_code: int | None
    rows: bytes
    replayed_at: datetime.datetime | None
    replay_attempts: int
    last_replay_at: datetime.datetime | None
    last_replay_error: str | None

    @property
    def state(self) -> str:
        return "replayed" if self.replayed_at is not None else "pending"

    @property
    def replay_token(self) -> str:
        """Deduplication token of every replay of this letter: ClickHouse stores its rows once, however
        many replays run (within the table's deduplication window)."""
        return f"dead-letter-{self.source}"


class DeadLetterSink(Protocol):
    """Where the pipeline keeps what ClickHouse refused."""

    async def add(self, letters: Sequence[DeadLetter]) -> int:
        """Store `letters` durably; return how many activities they hold that were not stored yet
        (a letter written again is ignored). Raises StoreError (transient) when the
        store cannot be written: the caller keeps the records and tries again."""
        ...


def split_rows(rows: bytes) -> list[bytes]:
    """The rows of framed ProtobufList rows, each without its frame. Raises WireError when the bytes
    are not framed rows."""
    bodies = []
    for number, wire_type, encoded in iter_fields(rows):
        if number != 1 or wire_type != 2:
            raise WireError(f"field {number} of wire type {wire_type} where a row was expected")
        bodies.append(_length_delimited(encoded))
    return bodies


def rows_tenant(rows: bytes) -> str | None:
    """The tenant appended to the first row of framed rows, or None when the rows do not say."""
    try:
        bodies = split_rows(rows)
        if not bodies:
            return None
        tenant: str | None = None
        for field, kind, value in iter_fields(bodies[0]):
            if field == TENANT_FIELD and kind == 2:
                tenant = _length_delimited(value).decode("utf-8", "replace")
        return tenant
    except WireError:
        return None


def _length_delimited(encoded: bytes) -> bytes:
    """The payload of one length-delimited field, given its whole encoding (key, length, payload)."""
    pos = 0
    for _ in range(2):  # skip the key's varint, then the length's
        while encoded[pos] & 0x80:
            pos += 1
        pos += 1
    return encoded[pos:]


_COLUMNS = (
    "id, created_at, source, tenant_id, row_count, error, error_code, payload, replayed_at,"
    " replay_attempts, last_replay_at, last_replay_error"
)


def _letter(row: asyncpg.Record) -> StoredLetter:
    return StoredLetter(
        id=row["id"],
        created_at=row["created_at"],
        source=row["source"],
        tenant=row["tenant_id"],
        count=row["row_count"],
        error=row["error"],
        error_code=row["error_code"],
        rows=bytes(row["payload"]),
        replayed_at=row["replayed_at"],
        replay_attempts=row["replay_attempts"],
        last_replay_at=row["last_replay_at"],
        last_replay_error=row["last_replay_error"],
    )


class DeadLetterStore:
    """The `dead_letters` table, through an asyncpg pool. Every method runs on the event loop."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add(self, letters: Sequence[DeadLetter]) -> int:
        if not letters:
            return 0
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                added = 0
                for letter in letters:
                    new = await conn.fetchval(
                        "INSERT INTO dead_letters (source, tenant_id, row_count, error, error_code, payload)"
                        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (source) DO NOTHING RETURNING id",
                        letter.source,
                        letter.tenant,
                        letter.count,
                        letter.error,
                        letter.error_code,
                        letter.rows,
                    )
                    if new is not None:
                        added += letter.count
                return added
        except POSTGRES_ERRORS as error:
            raise StoreError(f"the dead-letter store cannot be written: {error}", transient=True) from error

    async def list(self, *, include_replayed: bool = False, limit: int | None = None) -> list[StoredLetter]:
        where = "" if include_replayed else " WHERE replayed_at IS NULL"
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM dead_letters{where} ORDER BY id LIMIT $1", limit
        )
        return [_letter(r) for r in rows]

    async def get(self, letter_id: int) -> StoredLetter | None:
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM dead_letters WHERE id = $1", letter_id)
        return None if row is None else _letter(row)

    async def mark_replayed(self, letter_id: int) -> None:
        await self.pool.execute(
            "UPDATE dead_letters SET replayed_at = coalesce(replayed_at, now()), last_replay_at = now(),"
            " replay_attempts = replay_attempts + 1, last_replay_error = NULL WHERE id = $1",
            letter_id,
        )

    async def mark_replay_failed(self, letter_id: int, error: str) -> None:
        await self.pool.execute(
            "UPDATE dead_letters SET last_replay_at = now(), replay_attempts = replay_attempts + 1,"
            " last_replay_error = $2 WHERE id = $1",
            letter_id,
            error,
        )

    async def purge(self, letter_id: int | None = None, *, replayed_only: bool = False) -> int:
        """Delete one letter, every replayed letter, or (no id, not replayed_only) every letter.
        Returns how many were deleted."""
        if letter_id is not None:
            result = await self.pool.execute("DELETE FROM dead_letters WHERE id = $1", letter_id)
        elif replayed_only:
            result = await self.pool.execute("DELETE FROM dead_letters WHERE replayed_at IS NOT NULL")
        else:
            result = await self.pool.execute("DELETE FROM dead_letters")
        return int(result.split()[-1])
