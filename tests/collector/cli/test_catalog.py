"""`activity-collector catalog import|show|count`, run in this process on the PostgreSQL server and on the
embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from collector.cli.main import main

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[3]


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The command line, in a thread of its own (it runs its own event loop)."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_jsonl(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


async def test_a_file_with_bad_lines_imports_the_good_ones_and_lists_the_bad(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pg = ["--postgres-dsn", pg_dsn]
    path = write_jsonl(
        tmp_path / "shop.jsonl",
        {
            "target_type": "product",
            "target_id": "sku-1",
            "name": "Shoe",
            "list_price": 1999,
            "currency": "eur",
        },
        {"target_type": "product", "target_id": "sku-2", "list_price": 500},
        "",
        {"target_type": "product", "target_id": "sku-3", "colour": "red"},
        "not json",
        {"target_type": "category", "target_id": "shoes", "category_path": "Shoes"},
    )
    code, out, err = await run(capsys, "catalog", "import", str(path), *pg)
    assert code == 1
    assert out == "imported 2 targets for tenant default; 3 lines refused\n"
    assert err.splitlines() == [
        f"{path}:2: currency: currency is required with list_price",
        f"{path}:4: colour: unknown field; the fields are target_type, target_id, name, category_path, "
        "brand, list_price, currency, attributes",
        f"{path}:5: not valid JSON: Expecting value: line 1 column 1 (char 0)",
    ]
    code, out, _ = await run(capsys, "catalog", "count", *pg)
    assert (code, out) == (0, "2\n")

    code, out, err = await run(capsys, "catalog", "show", "product", "sku-1", *pg)
    assert (code, err) == (0, "")
    shown = json.loads(out)
    assert shown.pop("updated_at")
    assert shown == {
        "tenant": "default",
        "target_type": "product",
        "target_id": "sku-1",
        "name": "Shoe",
        "category_path": [],
        "brand": "",
        "list_price": 1999,
        "currency": "EUR",
        "attributes": {},
    }
    code, _, err = await run(capsys, "catalog", "show", "product", "sku-2", *pg)
    assert (code, err) == (
        1,
        "activity-collector catalog: no target product sku-2 in the catalogue of tenant default\n",
    )

    # Fixed, the file goes in whole; sku-1 loses what the new line does not say.
    write_jsonl(path, {"target_type": "product", "target_id": "sku-1", "name": "Shoe, renamed"})
    code, out, err = await run(capsys, "catalog", "import", str(path), *pg)
    assert (code, out, err) == (0, "imported 1 target for tenant default; 0 lines refused\n", "")
    code, out, _ = await run(capsys, "catalog", "show", "product", "sku-1", *pg)
    assert json.loads(out)["name"] == "Shoe, renamed" and json.loads(out)["list_price"] is None


async def test_catalogues_belong_to_tenants(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pg = ["--postgres-dsn", pg_dsn]
    path = write_jsonl(tmp_path / "a.jsonl", {"target_type": "product", "target_id": "sku-1"})
    code, _, err = await run(capsys, "catalog", "import", str(path), "--tenant", "shop-a", *pg)
    assert code == 1
    assert err == (
        "activity-collector catalog: no tenant shop-a; "
        "create it first: activity-collector tenants create shop-a\n"
    )
    code, _, err = await run(capsys, "catalog", "import", str(path), "--tenant", "Shop A", *pg)
    assert code == 1 and "tenant name 'Shop A': 1 to 63 characters" in err

    assert (await run(capsys, "tenants", "create", "shop-a", *pg))[0] == 0
    code, out, _ = await run(capsys, "catalog", "import", str(path), "--tenant", "shop-a", *pg)
    assert (code, out) == (0, "imported 1 target for tenant shop-a; 0 lines refused\n")
    assert (await run(capsys, "catalog", "count", "--tenant", "shop-a", *pg))[:2] == (0, "1\n")
    assert (await run(capsys, "catalog", "count", *pg))[:2] == (0, "0\n")
    code, out, _ = await run(capsys, "catalog", "show", "--tenant", "shop-a", "product", "sku-1", *pg)
    assert code == 0 and json.loads(out)["tenant"] == "shop-a"
    assert (await run(capsys, "catalog", "show", "product", "sku-1", *pg))[0] == 1


async def test_files_that_cannot_be_imported_at_all(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pg = ["--postgres-dsn", pg_dsn]
    code, out, err = await run(capsys, "catalog", "import", str(tmp_path / "missing.jsonl"), *pg)
    assert (code, out) == (2, "")
    assert err.startswith("activity-collector catalog: cannot read ") and "No such file" in err

    path = tmp_path / "shop.csv"
    path.write_text("target_type,target_id,colour\nproduct,sku-1,red\n")
    code, out, err = await run(capsys, "catalog", "import", str(path), *pg)
    assert (code, out) == (2, "")
    assert err.startswith(f"activity-collector catalog: {path}:1: column 'colour': unknown column;")

    code, out, err = await run(capsys, "catalog", "import", str(path.with_suffix(".txt")), *pg)
    assert code == 2 and "pass --format jsonl or csv" in err
    assert (await run(capsys, "catalog", "count", *pg))[:2] == (0, "0\n")


async def test_the_listing_of_refused_lines_is_capped(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", *[{"target_type": "product"}] * 60)
    code, out, err = await run(capsys, "catalog", "import", str(path), "--postgres-dsn", pg_dsn)
    assert (code, out) == (1, "imported 0 targets for tenant default; 60 lines refused\n")
    lines = err.splitlines()
    assert len(lines) == 51
    assert lines[0] == f"{path}:1: target_id: target_id is required"
    assert lines[49].startswith(f"{path}:50: ")
    assert lines[50] == "... and 10 more"


@pytest.mark.parametrize("name", ["catalog.jsonl", "catalog.csv"])
async def test_the_example_catalogues_import_whole(
    name: str, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pg = ["--postgres-dsn", pg_dsn]
    code, out, err = await run(capsys, "catalog", "import", str(ROOT / "examples" / name), *pg)
    assert (code, err) == (0, "")
    assert out.startswith("imported ") and out.endswith(" targets for tenant default; 0 lines refused\n")
    code, out, _ = await run(capsys, "catalog", "show", "product", "sku-1001", *pg)
    assert code == 0
    assert json.loads(out)["currency"] == "EUR" and json.loads(out)["list_price"] == 1999


async def test_an_import_is_heard_by_every_collector_listening_on_postgres(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A collector elsewhere (its own pool on the same PostgreSQL) hears of an import at once, and
    drops that tenant's catalogue caches."""
    from workers.enrichment.catalog import CatalogStore, CatalogWatcher
    from workers.enrichment.enricher import Enricher
    from workers.storage.postgres import Postgres

    async with Postgres(pg_dsn, tmp_path) as postgres:
        enricher = Enricher(CatalogStore(postgres.pool), None)
        # What a collector that saw activities before the import caches: "no catalogue", no target.
        enricher._catalogued.set("default", False, 0.0)
        enricher._targets.set(("default", "product", "sku-1"), None, 0.0)
        enricher._targets.set(("other", "product", "sku-1"), None, 0.0)
        heard: list[str | None] = []
        told = asyncio.Event()

        def changed(tenant: str | None) -> int:
            heard.append(tenant)
            told.set()
            return enricher.forget_catalog(tenant)

        watcher = CatalogWatcher(postgres.pool, changed)
        await watcher.start()
        try:
            await asyncio.wait_for(watcher.listening.wait(), 10)
            path = write_jsonl(tmp_path / "c.jsonl", {"target_type": "product", "target_id": "sku-1"})
            code, _, err = await run(capsys, "catalog", "import", str(path), "--postgres-dsn", pg_dsn)
            assert code == 0, err
            await asyncio.wait_for(told.wait(), 5)
        finally:
            await watcher.shutdown()
    assert heard == ["default"]
    assert enricher._catalogued.peek("default") is None
    assert list(enricher._targets.entries) == [("other", "product", "sku-1")]


async def test_a_watcher_that_lost_its_connection_forgets_every_tenant_once_listening_again(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Imports made while nobody listened were not heard: back, the watcher drops every tenant's."""
    from workers.enrichment.catalog import CatalogWatcher
    from workers.storage.postgres import Postgres

    async with Postgres(pg_dsn, tmp_path) as postgres:
        heard: list[str | None] = []
        told = asyncio.Event()

        def changed(tenant: str | None) -> int:
            heard.append(tenant)
            told.set()
            return 0

        watcher = CatalogWatcher(postgres.pool, changed, retry_s=0.05)
        await watcher.start()
        try:
            await asyncio.wait_for(watcher.listening.wait(), 10)
            pid = watcher.backend_pid
            assert pid is not None
            assert await postgres.pool.fetchval("SELECT pg_terminate_backend($1)", pid)
            await asyncio.wait_for(told.wait(), 10)
            await asyncio.wait_for(watcher.listening.wait(), 10)
            assert watcher.backend_pid not in (None, pid)
        finally:
            await watcher.shutdown()
    assert heard == [None]
