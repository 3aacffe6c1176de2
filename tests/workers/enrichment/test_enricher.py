"""Enrichment against the real engines: user agents, the catalogue (PostgreSQL) and identity links
(PostgreSQL), each checked in the ClickHouse columns it fills."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from helpers import make_activity
from test_compiled import compiled_module

from core.proto.activity.v1 import activity_pb2 as pb
from workers.commit.pipeline import Pipeline, Submission
from workers.commit.settings import PipelineSettings
from workers.enrichment import lookups
from workers.enrichment.catalog import CatalogEntry, CatalogStore, TargetInfo
from workers.enrichment.enricher import CATALOG, IDENTITY, Enricher
from workers.enrichment.identity import IdentityStore
from workers.storage.clickhouse import ClickHouseStore
from workers.storage.postgres import apply_migrations

pytestmark = pytest.mark.timeout(60)

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.fixture(autouse=True, params=["compiled", "reference"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on the compiled per-activity loops (when built) and on their Python reference:
    the patch swaps one real implementation for the other; PostgreSQL and ClickHouse stay real."""
    if request.param == "reference":
        monkeypatch.setattr(lookups, "lookup", lookups.lookup_py)
        monkeypatch.setattr(lookups, "stitch", lookups.stitch_py)
        monkeypatch.setattr(lookups, "join", lookups.join_py)
    elif not lookups.compiled:
        # Not built: fails (a broken build), or skips where ACTIVITY_NO_COMPILER=1 (tests/test_compiled.py).
        compiled_module("workers.enrichment._lookups")
        pytest.skip("ACTIVITY_PURE_PYTHON=1 switches the compiled loops off: the reference runs alone")
    return str(request.param)


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh schema, once on the PostgreSQL server and once on the embedded one."""
    p = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    async with p.acquire() as conn:
        await apply_migrations(conn)
    yield p
    await p.close()


def make_enricher(pool: asyncpg.Pool, **options: Any) -> Enricher:
    # A lookup slower than the default timeout (0.25 s) is stored without enrichment, as it should be;
    # these tests are about what PostgreSQL answers, and a busy machine may take that long to answer.
    return Enricher(CatalogStore(pool), IdentityStore(pool), **{"timeout_s": 30.0, **options})


@pytest.fixture
async def run(store: ClickHouseStore) -> AsyncIterator[Callable[..., Any]]:
    """Push batches through a pipeline with `enricher` and return once they are committed."""
    pipelines: list[Pipeline] = []

    async def go(enricher: Enricher, *batches: list[pb.Activity], tenant: str = "t1") -> None:
        pipeline = Pipeline(PipelineSettings(flush_interval_ms=1), store, enricher=enricher)
        pipelines.append(pipeline)
        await pipeline.start()
        for batch in batches:
            sub = Submission(
                items=list(enumerate(batch)),
                tenant=tenant,
                received_ns=time.time_ns(),
                sent_ns=None,
                skew_ns=0,
                future=asyncio.get_running_loop().create_future(),
            )
            pipeline.submit(sub)
            await sub.future

    yield go
    for p in pipelines:
        await p.shutdown(timeout=5)


def rows(store: ClickHouseStore, columns: str, where: str = "1") -> list[list[Any]]:
    result = store.query(f"SELECT {columns} FROM activities WHERE {where} ORDER BY target_id", "JSONCompact")
    return list(json.loads(result)["data"])


def anonymous(n: int, anon: str = "", session: str = "", user: str = "", ua: str = "") -> pb.Activity:
    return make_activity(
        n,
        user=pb.User(anonymous_id=anon, session_id=session, user_id=user),
        metadata=pb.Metadata(user_agent=ua),
    )


async def test_user_agent_columns_and_the_client_device_type_wins(
    pool: asyncpg.Pool, run: Any, store: ClickHouseStore
) -> None:
    await run(
        make_enricher(pool),
        [
            make_activity(1, metadata=pb.Metadata(user_agent=IPHONE)),
            make_activity(2, metadata=pb.Metadata(user_agent=IPHONE, device_type="desktop")),
            make_activity(3, metadata=pb.Metadata(user_agent=GOOGLEBOT)),
            make_activity(4, metadata=pb.Metadata()),
        ],
    )
    assert rows(store, "target_id, device_type, os, os_version, browser, is_bot") == [
        ["sku-1", "mobile", "iOS", "17.1", "Mobile Safari", False],
        ["sku-2", "desktop", "iOS", "17.1", "Mobile Safari", False],
        ["sku-3", "bot", "", "", "Googlebot", True],
        ["sku-4", "", "", "", "", False],
    ]


async def test_catalogue_columns_and_unknown_targets(
    pool: asyncpg.Pool, run: Any, store: ClickHouseStore
) -> None:
    catalog = CatalogStore(pool)
    await catalog.upsert(
        "t1",
        [
            CatalogEntry(
                "product",
                "sku-1",
                TargetInfo("Trail shoe", ("Shoes", "Running"), "Acme", 8999, "EUR", {"color": "blue"}),
            ),
            CatalogEntry("product", "sku-2", TargetInfo("Sock")),
        ],
    )
    # Another tenant's catalogue never answers for t1.
    await catalog.upsert("t2", [CatalogEntry("product", "sku-3", TargetInfo("Not yours"))])
    enricher = make_enricher(pool)
    await run(enricher, [make_activity(n) for n in (1, 2, 3, 1)])
    columns = (
        "target_id, target_name, target_category_path, target_brand, target_list_price, "
        "target_list_currency, target_catalog_attributes"
    )
    assert rows(store, columns) == [
        ["sku-1", "Trail shoe", ["Shoes", "Running"], "Acme", 8999, "EUR", {"color": "blue"}],
        ["sku-1", "Trail shoe", ["Shoes", "Running"], "Acme", 8999, "EUR", {"color": "blue"}],
        ["sku-2", "Sock", [], "", None, "", {}],
        ["sku-3", "", [], "", None, "", {}],
    ]
    assert enricher.stats.activities[(CATALOG, "enriched")] == 3
    assert enricher.stats.activities[(CATALOG, "unknown")] == 1
    # The second batch is answered by the cache: no further query.
    queries = enricher.stats.lookups[(CATALOG, "ok")]
    await run(enricher, [make_activity(1), make_activity(3)])
    assert enricher.stats.lookups[(CATALOG, "ok")] == queries


async def test_an_import_shows_after_the_cache_time_to_live(
    pool: asyncpg.Pool, run: Any, store: ClickHouseStore
) -> None:
    now = [0.0]
    enricher = make_enricher(pool, ttl_s=60, clock=lambda: now[0])
    await run(enricher, [make_activity(1)])
    await CatalogStore(pool).upsert("t1", [CatalogEntry("product", "sku-1", TargetInfo("Late"))])
    await run(enricher, [make_activity(1)])
    now[0] = 61.0
    await run(enricher, [make_activity(1)])
    assert sorted(r[0] for r in rows(store, "target_name")) == ["", "", "Late"]


async def test_a_tenant_without_a_catalogue_is_not_looked_up_until_it_has_one(
    pool: asyncpg.Pool, run: Any, store: ClickHouseStore
) -> None:
    now = [0.0]
    enricher = make_enricher(pool, ttl_s=60, clock=lambda: now[0])
    await CatalogStore(pool).upsert("t2", [CatalogEntry("product", "sku-9", TargetInfo("Theirs"))])
    for n in range(1, 6):  # five requests, each on a target no cache holds
        await run(enricher, [make_activity(n)])
    # One query found that t1 has no catalogue; its targets were not asked for.
    assert enricher.stats.lookups[(CATALOG, "ok")] == 1
    assert enricher.stats.activities[(CATALOG, "unknown")] == 5
    # The other enrichments go on: each activity resolves to its user.
    assert [r[0] for r in rows(store, "resolved_user_id")] == [f"u-{n % 5}" for n in range(1, 6)]
    # Another tenant's catalogue is its own: t2's target is enriched at once.
    await run(enricher, [make_activity(9)], tenant="t2")
    assert rows(store, "target_name", "tenant_id = 't2'") == [["Theirs"]]
    await CatalogStore(pool).upsert("t1", [CatalogEntry("product", "sku-7", TargetInfo("New"))])
    await run(enricher, [make_activity(7)])
    now[0] = 61.0  # past the cache's time to live, t1's catalogue is found
    await run(enricher, [make_activity(7)])
    assert sorted(r[0] for r in rows(store, "target_name", "tenant_id = 't1' AND target_id = 'sku-7'")) == [
        "",
        "New",
    ]
    assert enricher.stats.activities[(CATALOG, "enriched")] == 2  # sku-9 of t2, then sku-7


async def test_identity_stitching_follows_the_batch_order_and_lasts(
    pool: asyncpg.Pool, run: Any, store: ClickHouseStore
) -> None:
    enricher = make_enricher(pool)
    await run(
        enricher,
        [
            anonymous(1, anon="a-1"),  # before the login: nobody known yet
            anonymous(2, anon="a-1", session="s-1", user="u-1"),  # the login links a-1 and s-1 to u-1
            anonymous(3, anon="a-1"),
            anonymous(4, session="s-1"),
            anonymous(5, anon="a-2", session="s-1"),  # a-2 unknown: the session decides
            anonymous(6, anon="a-3"),
        ],
    )
    await run(enricher, [anonymous(7, anon="a-1")])
    assert rows(store, "target_id, resolved_user_id") == [
        ["sku-1", ""],
        ["sku-2", "u-1"],
        ["sku-3", "u-1"],
        ["sku-4", "u-1"],
        ["sku-5", "u-1"],
        ["sku-6", ""],
        ["sku-7", "u-1"],
    ]
    links = await pool.fetch("SELECT tenant_id, kind, key, user_id FROM identity_links ORDER BY kind")
    assert [tuple(r) for r in links] == [("t1", "anonymous", "a-1", "u-1"), ("t1", "session", "s-1", "u-1")]
    # Another collector, with caches of its own, resolves through PostgreSQL; another tenant does not.
    other = make_enricher(pool)
    await run(other, [anonymous(8, anon="a-1")])
    await run(other, [anonymous(9, anon="a-1")], tenant="t2")
    assert rows(store, "target_id, tenant_id, resolved_user_id", "target_id IN ('sku-8', 'sku-9')") == [
        ["sku-8", "t1", "u-1"],
        ["sku-9", "t2", ""],
    ]
    assert other.stats.activities[(IDENTITY, "enriched")] == 1
    assert other.stats.activities[(IDENTITY, "unknown")] == 1


async def test_the_latest_user_of_an_anonymous_id_wins(
    pool: asyncpg.Pool, run: Any, store: ClickHouseStore
) -> None:
    enricher = make_enricher(pool)
    await run(enricher, [anonymous(1, anon="shared", user="u-1")])
    await run(enricher, [anonymous(2, anon="shared", user="u-2"), anonymous(3, anon="shared")])
    assert rows(store, "target_id, resolved_user_id", "target_id = 'sku-3'") == [["sku-3", "u-2"]]
    user = await pool.fetchval("SELECT user_id FROM identity_links WHERE key = 'shared'")
    assert user == "u-2"


async def test_waiting_requests_are_enriched_together_in_order(
    pool: asyncpg.Pool, store: ClickHouseStore
) -> None:
    enricher = make_enricher(pool)
    pipeline = Pipeline(PipelineSettings(flush_interval_ms=1), store, enricher=enricher)
    loop = asyncio.get_running_loop()

    def submit(batch: list[pb.Activity], tenant: str) -> asyncio.Future[dict[int, str]]:
        sub = Submission(list(enumerate(batch)), tenant, time.time_ns(), None, 0, loop.create_future())
        pipeline.submit(sub)
        return sub.future

    # Queued before the workers run: one round of lookups per tenant for all of them, and a login
    # in one request resolves the requests after it.
    await pipeline.start()
    futures = [
        submit([anonymous(1, anon="a-1")], "t1"),
        submit([anonymous(2, anon="a-1", user="u-1")], "t1"),
        submit([anonymous(3, anon="a-1")], "t2"),
        submit([anonymous(4, anon="a-1")], "t1"),
        submit([anonymous(5, anon="a-9")], "t1"),
    ]
    try:
        await asyncio.gather(*futures)
    finally:
        await pipeline.shutdown(timeout=5)
    assert rows(store, "target_id, tenant_id, resolved_user_id") == [
        ["sku-1", "t1", ""],
        ["sku-2", "t1", "u-1"],
        ["sku-3", "t2", ""],
        ["sku-4", "t1", "u-1"],
        ["sku-5", "t1", ""],
    ]
    assert enricher.stats.lookups[(IDENTITY, "ok")] == 2  # t1 and t2, not one per request


async def test_postgres_unreachable_stores_everything_and_counts_gaps(
    pool: asyncpg.Pool, run: Any, store: ClickHouseStore
) -> None:
    """A pool on a port where nothing listens: every lookup fails; the activities are stored anyway,
    without what PostgreSQL would have said, and each is counted as a gap."""
    dead = await asyncpg.create_pool("postgresql://nobody@127.0.0.1:1/none", min_size=0, max_size=2)
    # The clock stands still: the pause after the failure lasts the whole test, however slow the machine.
    enricher = Enricher(CatalogStore(dead), IdentityStore(dead), timeout_s=2, clock=lambda: 0.0)
    try:
        batch = [
            anonymous(1, anon="a-1", ua=IPHONE),
            anonymous(2, anon="a-1", user="u-1", ua=IPHONE),
            anonymous(3, anon="a-9"),
        ]
        await run(enricher, batch)
        await run(enricher, [anonymous(4, anon="a-9"), anonymous(5, anon="a-1")])
    finally:
        await dead.close()
    assert rows(store, "target_id, device_type, resolved_user_id") == [
        ["sku-1", "mobile", ""],
        ["sku-2", "mobile", "u-1"],
        ["sku-3", "", ""],
        ["sku-4", "", ""],
        # The link the first batch showed is known to this collector, PostgreSQL or not.
        ["sku-5", "", "u-1"],
    ]
    stats = enricher.stats
    assert stats.activities[(CATALOG, "gap")] == 5
    assert stats.activities[(IDENTITY, "gap")] == 3  # a-1 before the login, a-9 twice
    assert stats.lookups[(CATALOG, "error")] == 1
    # After the failure PostgreSQL is left alone for a while: the next batch does not wait for it.
    assert stats.lookups[(CATALOG, "skipped")] == 1
    # The link waits for PostgreSQL to come back.
    assert enricher.pending_links == 1
    assert stats.links_recorded == 0


async def test_requests_waiting_together_share_their_lookups(
    pool: asyncpg.Pool, store: ClickHouseStore
) -> None:
    enricher = make_enricher(pool)
    pipeline = Pipeline(PipelineSettings(flush_interval_ms=1), store, enricher=enricher)
    await pipeline.start()
    try:
        subs = []
        for n in range(50):  # fifty single-activity requests, each with ids no cache holds
            sub = Submission(
                items=[(0, anonymous(n, anon=f"a-{n}"))],
                tenant="t1",
                received_ns=time.time_ns(),
                sent_ns=None,
                skew_ns=0,
                future=asyncio.get_running_loop().create_future(),
            )
            pipeline.submit(sub)
            subs.append(sub)
        await asyncio.gather(*(s.future for s in subs))
    finally:
        await pipeline.shutdown(timeout=5)
    assert len(rows(store, "id")) == 50
    assert enricher.stats.lookups[(IDENTITY, "ok")] <= 2
    assert enricher.stats.lookups[(CATALOG, "ok")] <= 2
