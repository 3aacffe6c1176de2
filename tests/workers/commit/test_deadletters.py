"""The dead-letter store, on the PostgreSQL server and on the embedded PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from helpers import items, make_activity

from workers.commit.deadletters import DeadLetter, DeadLetterStore, rows_tenant, split_rows
from workers.rows import encode_rows
from workers.storage.clickhouse import StoreError
from workers.storage.postgres import apply_migrations

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        yield pool


def rows_of(tenant: str, n: int = 1) -> bytes:
    activities = [make_activity(i) for i in range(n)]
    return b"".join(encode_rows(items(activities), tenant, time.time_ns(), None).pieces)


def letter(source: str, count: int = 1, tenant: str = "shop-a") -> DeadLetter:
    rows = rows_of(tenant, count)
    return DeadLetter(source, count, rows, "Code: 376. Cannot parse uuid", 376, rows_tenant(rows))


async def test_a_letter_written_twice_is_stored_and_counted_once(pool: asyncpg.Pool) -> None:
    store = DeadLetterStore(pool)
    assert await store.add([letter("spool-1-3-abc-2", count=3)]) == 3
    # The same record again (a retry after a failed spool commit, or a restart): ignored.
    assert await store.add([letter("spool-1-3-abc-2", count=3), letter("spool-1-3-abc-3")]) == 1
    stored = await store.list()
    assert [(x.source, x.count, x.tenant, x.error_code, x.state) for x in stored] == [
        ("spool-1-3-abc-2", 3, "shop-a", 376, "pending"),
        ("spool-1-3-abc-3", 1, "shop-a", 376, "pending"),
    ]
    assert len(split_rows(stored[0].rows)) == 3


async def test_replay_state_and_purge(pool: asyncpg.Pool) -> None:
    store = DeadLetterStore(pool)
    await store.add([letter("a"), letter("b"), letter("c")])
    first, second, third = await store.list()
    assert first.replay_token == "dead-letter-a"

    await store.mark_replay_failed(first.id, "still refused")
    failed = await store.get(first.id)
    assert failed is not None
    assert (failed.state, failed.replay_attempts, failed.last_replay_error) == ("pending", 1, "still refused")

    await store.mark_replayed(first.id)
    await store.mark_replayed(second.id)
    replayed = await store.get(first.id)
    assert replayed is not None and replayed.replayed_at is not None
    assert (replayed.state, replayed.replay_attempts, replayed.last_replay_error) == ("replayed", 2, None)
    assert [x.id for x in await store.list()] == [third.id]
    assert [x.id for x in await store.list(include_replayed=True)] == [first.id, second.id, third.id]

    assert await store.purge(replayed_only=True) == 2
    assert await store.purge(third.id) == 1
    assert await store.purge(third.id) == 0
    assert await store.get(third.id) is None
    await store.add([letter("d"), letter("e")])
    assert await store.purge() == 2


async def test_a_store_that_cannot_be_written_raises_a_transient_error(pool: asyncpg.Pool) -> None:
    store = DeadLetterStore(pool)
    await pool.execute("ALTER TABLE dead_letters RENAME TO dead_letters_away")
    try:
        with pytest.raises(StoreError) as failed:
            await store.add([letter("x")])
        assert failed.value.transient and not failed.value.data
    finally:
        await pool.execute("ALTER TABLE dead_letters_away RENAME TO dead_letters")
    assert await store.add([letter("x")]) == 1


def test_the_tenant_is_read_from_the_rows() -> None:
    assert rows_tenant(rows_of("shop-b", 2)) == "shop-b"
    assert rows_tenant(b"") is None
    assert rows_tenant(b"\xff\xff\xff") is None
    assert rows_tenant(b"\x12\x00") is None  # field 2: not framed rows
