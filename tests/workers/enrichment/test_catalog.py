"""The catalogue: parsing JSON Lines and CSV files, and the store on the PostgreSQL server and on the
embedded PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from core.limits import Limits
from workers.enrichment.catalog import (
    UPSERT_CHUNK,
    CatalogEntry,
    CatalogFileError,
    CatalogStore,
    LineError,
    TargetInfo,
    parse_catalog,
)
from workers.storage.postgres import apply_migrations

pytestmark = pytest.mark.timeout(60)

LIMITS = Limits()


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def jsonl(tmp_path: Path, *lines: object) -> Path:
    return write(tmp_path, "catalog.jsonl", [x if isinstance(x, str) else json.dumps(x) for x in lines])


def refused(errors: list[LineError]) -> list[tuple[int, str]]:
    return [(e.line_number, e.field) for e in errors]


# -- JSON Lines ------------------------------------------------------------------------------------


def test_jsonl_fields_are_read_and_normalised(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        {
            "target_type": "product",
            "target_id": "sku-1001",
            "name": "Trail runner “Fox”",
            "category_path": ["Shoes", "Running > Trail"],
            "brand": "Fox",
            "list_price": 1999,
            "currency": "eur",
            "attributes": {"color": "red", "size": 42, "weight_kg": 0.35, "waterproof": True, "gone": None},
        },
        "",
        {"target_type": "category", "target_id": "shoes", "category_path": " Shoes >  Running "},
        {"target_type": "product", "target_id": "sku-2", "list_price": "500", "currency": "USD"},
        {"target_type": "product", "target_id": "sku-3", "name": None, "list_price": None},
    )
    entries, errors = parse_catalog(path, None)
    assert errors == []
    assert entries == [
        CatalogEntry(
            "product",
            "sku-1001",
            TargetInfo(
                name="Trail runner “Fox”",
                category_path=("Shoes", "Running > Trail"),
                brand="Fox",
                list_price=1999,
                currency="EUR",
                attributes={"color": "red", "size": "42", "weight_kg": "0.35", "waterproof": "true"},
            ),
        ),
        CatalogEntry("category", "shoes", TargetInfo(category_path=("Shoes", "Running"))),
        CatalogEntry("product", "sku-2", TargetInfo(list_price=500, currency="USD")),
        CatalogEntry("product", "sku-3", TargetInfo()),
    ]


def test_every_bad_jsonl_line_is_reported_with_its_field_and_the_good_ones_kept(tmp_path: Path) -> None:
    good = {"target_type": "product", "target_id": "sku-1"}
    long_id = "x" * (LIMITS.max_id_chars + 1)
    path = jsonl(
        tmp_path,
        good,  # 1
        "{not json",  # 2
        '["product", "sku-2"]',  # 3
        {**good, "colour": "red"},  # 4
        {"target_id": "sku-5"},  # 5
        {"target_type": "product", "target_id": ""},  # 6
        {"target_type": "product", "target_id": long_id},  # 7
        {"target_type": "p" * (LIMITS.max_name_chars + 1), "target_id": "sku-8"},  # 8
        {**good, "name": 12},  # 9
        {**good, "category_path": "Shoes > > Running"},  # 10
        {**good, "category_path": {"a": "b"}},  # 11
        {**good, "list_price": -1, "currency": "EUR"},  # 12
        {**good, "list_price": 19.99, "currency": "EUR"},  # 13
        {**good, "list_price": 1999},  # 14
        {**good, "currency": "EURO"},  # 15
        {**good, "attributes": ["red"]},  # 16
        {**good, "attributes": {"color": {"name": "red"}}},  # 17
        {**good, "attributes": {"note": "n" * (LIMITS.max_text_chars + 1)}},  # 18
        {**good, "attributes": {f"a{n}": "x" for n in range(LIMITS.max_map_entries + 1)}},  # 19
        {**good, "name": "n" * (LIMITS.max_text_chars + 1)},  # 20
        {**good, "target_id": "sku-21", "list_price": True, "currency": "EUR"},  # 21
        '{"target_type": "product", "target_id": "sku-22", "list_price": NaN}',  # 22
        {"target_type": "product", "target_id": "sku-23", "attributes": {"": "x"}},  # 23
        {**good, "name": "a\u0000b"},  # 24
        '{"target_type": "product", "target_id": "sku-25", "attributes": {"k": "\\ud800"}}',  # 25
        {**good, "category_path": ["Shoes", "\u0000"]},  # 26
        {"target_type": "product", "target_id": "sku-27"},  # 27
    )
    entries, errors = parse_catalog(path, None)
    assert [(e.target_type, e.target_id) for e in entries] == [("product", "sku-1"), ("product", "sku-27")]
    assert refused(errors) == [
        (2, ""),
        (3, ""),
        (4, "colour"),
        (5, "target_type"),
        (6, "target_id"),
        (7, "target_id"),
        (8, "target_type"),
        (9, "name"),
        (10, "category_path"),
        (11, "category_path"),
        (12, "list_price"),
        (13, "list_price"),
        (14, "currency"),
        (15, "currency"),
        (16, "attributes"),
        (17, "attributes.color"),
        (18, "attributes.note"),
        (19, "attributes"),
        (20, "name"),
        (21, "list_price"),
        (22, ""),
        (23, "attributes"),
        (24, "name"),
        (25, "attributes.k"),
        (26, "category_path"),
    ]
    messages = {e.line_number: e.message for e in errors}
    assert messages[2].startswith("not valid JSON")
    assert messages[3] == "a JSON object is expected, got an array"
    assert messages[4].startswith("unknown field; the fields are target_type, target_id, name")
    assert messages[5] == "target_type is required"
    assert messages[7] == f"target_id has {len(long_id)} characters; the limit is {LIMITS.max_id_chars}"
    assert messages[10] == "category 2 is empty"
    assert messages[12] == "list_price must be zero or more (and below 2^63), got -1"
    assert messages[13] == "an integer number of minor units (cents) is expected, got 19.99"
    assert messages[14] == "currency is required with list_price"
    assert messages[15] == "not an ISO 4217 currency code: 'EURO'"
    assert messages[24] == "name contains a NUL character (U+0000)"
    assert messages[25] == "attributes.k contains a lone surrogate (character 1)"
    assert messages[19] == f"attributes has {LIMITS.max_map_entries + 1} entries; the limit is 64"


def test_a_line_that_is_not_utf8_is_refused_alone(tmp_path: Path) -> None:
    path = tmp_path / "catalog.ndjson"
    path.write_bytes(
        b'\xef\xbb\xbf{"target_type": "product", "target_id": "a"}\n'
        b'{"target_type": "product", "target_id": "b\xff"}\n'
        b'{"target_type": "product", "target_id": "c"}'
    )
    entries, errors = parse_catalog(path, None)
    assert [e.target_id for e in entries] == ["a", "c"]
    assert errors == [LineError(2, "", "not UTF-8 (byte 43 of the line)")]


def test_the_configured_limits_apply(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"target_type": "product", "target_id": "sku-123456"})
    entries, errors = parse_catalog(path, None, Limits(max_id_chars=8))
    assert entries == [] and refused(errors) == [(1, "target_id")]


# -- CSV -------------------------------------------------------------------------------------------


def test_csv_columns_and_attribute_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "catalog.csv",
        [
            "target_type,target_id,name,category_path,brand,list_price,currency,attributes.color,attributes.size",
            'product,sku-1001,"Trail runner, red",Shoes > Running,Fox,1999,eur,red,42',
            "",
            ",,,,,,,,",
            "product,sku-2,,,,,,,",
            'product,sku-3,"two',
            'lines",,,,,blue,',
            "category,shoes,Shoes,Shoes,,,,,",
        ],
    )
    entries, errors = parse_catalog(path, None)
    assert errors == []
    assert entries == [
        CatalogEntry(
            "product",
            "sku-1001",
            TargetInfo(
                name="Trail runner, red",
                category_path=("Shoes", "Running"),
                brand="Fox",
                list_price=1999,
                currency="EUR",
                attributes={"color": "red", "size": "42"},
            ),
        ),
        CatalogEntry("product", "sku-2", TargetInfo()),
        CatalogEntry("product", "sku-3", TargetInfo(name="two\nlines", attributes={"color": "blue"})),
        CatalogEntry("category", "shoes", TargetInfo(name="Shoes", category_path=("Shoes",))),
    ]


def test_bad_csv_lines_are_reported_with_their_line_number(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "catalog.csv",
        [
            "target_type,target_id,name,list_price,currency",
            "product,sku-1,ok,,",  # 2
            'product,sku-2,"a name',  # 3: the cell goes on
            'on two lines",-5,EUR',  # 4
            "product,,no id,,",  # 5
            "product,sku-6,too many,,,cells",  # 6
            "product,sku-7,price,1999,",  # 7
            "product,sku-8,price,19.99,EUR",  # 8
            "product,sku-9,fine,100,usd",  # 9
        ],
    )
    entries, errors = parse_catalog(path, None)
    assert [e.target_id for e in entries] == ["sku-1", "sku-9"]
    assert errors == [
        LineError(3, "list_price", "list_price must be zero or more (and below 2^63), got -5"),
        LineError(5, "target_id", "target_id is required"),
        LineError(6, "", "6 cells where the header has 5"),
        LineError(7, "currency", "currency is required with list_price"),
        LineError(8, "list_price", "an integer number of minor units (cents) is expected, got '19.99'"),
    ]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("target_type,target_id,colour", "catalog.csv:1: column 'colour': unknown column"),
        ("target_type,target_id,attributes", "catalog.csv:1: column 'attributes': unknown column"),
        ("target_type,name", "catalog.csv:1: column 'target_id': required, missing from the header"),
        ("target_type,target_id,name,name", "catalog.csv:1: column 'name': named twice"),
    ],
)
def test_a_bad_csv_header_refuses_the_file(tmp_path: Path, header: str, message: str) -> None:
    path = write(tmp_path, "catalog.csv", [header, "product,sku-1,x,y"])
    with pytest.raises(CatalogFileError, match=message):
        parse_catalog(path, None)


# -- formats and files -----------------------------------------------------------------------------


def test_the_format_comes_from_the_flag_or_the_extension(tmp_path: Path) -> None:
    csv_text = ["target_type,target_id", "product,sku-1"]
    assert [e.target_id for e in parse_catalog(write(tmp_path, "a.CSV", csv_text), None)[0]] == ["sku-1"]
    assert [e.target_id for e in parse_catalog(write(tmp_path, "a.txt", csv_text), "csv")[0]] == ["sku-1"]
    line = [json.dumps({"target_type": "product", "target_id": "sku-2"})]
    assert [e.target_id for e in parse_catalog(write(tmp_path, "a.json", line), None)[0]] == ["sku-2"]
    with pytest.raises(CatalogFileError, match=r"cannot tell the format .* pass --format jsonl or csv"):
        parse_catalog(write(tmp_path, "a.txt", line), None)
    with pytest.raises(CatalogFileError, match=r"cannot read .*missing.jsonl: No such file or directory"):
        parse_catalog(tmp_path / "missing.jsonl", None)


def test_an_empty_file_has_no_entries(tmp_path: Path) -> None:
    for name in ("empty.jsonl", "empty.csv"):
        (tmp_path / name).write_text("")
        assert parse_catalog(tmp_path / name, None) == ([], [])


# -- the store -------------------------------------------------------------------------------------


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[CatalogStore]:
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        yield CatalogStore(pool)


SHOE = TargetInfo(
    name="Trail runner “Fox”",
    category_path=("Shoes", "Running", "Trail"),
    brand="Fox",
    list_price=1999,
    currency="EUR",
    attributes={"color": "red", "size": "42"},
)


async def test_upsert_replaces_the_whole_entry(store: CatalogStore) -> None:
    assert await store.upsert("shop-a", [CatalogEntry("product", "sku-1", SHOE)]) == 1
    first = await store.get("shop-a", "product", "sku-1")
    assert first is not None and first.info == SHOE

    # The second import says less: what it does not say is gone.
    assert await store.upsert("shop-a", [CatalogEntry("product", "sku-1", TargetInfo(name="Renamed"))]) == 1
    second = await store.get("shop-a", "product", "sku-1")
    assert second is not None and second.info == TargetInfo(name="Renamed")
    assert second.updated_at > first.updated_at
    assert await store.count("shop-a") == 1


async def test_of_entries_naming_the_same_target_the_last_wins(store: CatalogStore) -> None:
    entries = [
        CatalogEntry("product", "sku-1", TargetInfo(name="first")),
        CatalogEntry("product", "sku-2", TargetInfo(name="other")),
        CatalogEntry("product", "sku-1", TargetInfo(name="last")),
    ]
    assert await store.upsert("shop-a", entries) == 2
    found = await store.lookup("shop-a", [("product", "sku-1"), ("product", "sku-2")])
    assert found == {
        ("product", "sku-1"): TargetInfo(name="last"),
        ("product", "sku-2"): TargetInfo(name="other"),
    }


async def test_lookup_returns_the_known_targets_of_the_tenant_only(store: CatalogStore) -> None:
    await store.upsert(
        "shop-a",
        [CatalogEntry("product", "sku-1", SHOE), CatalogEntry("category", "shoes", TargetInfo(name="Shoes"))],
    )
    await store.upsert("shop-b", [CatalogEntry("product", "sku-2", TargetInfo(name="B's"))])
    keys = [("product", "sku-1"), ("product", "sku-2"), ("category", "shoes"), ("product", "shoes")]
    assert await store.lookup("shop-a", keys) == {
        ("product", "sku-1"): SHOE,
        ("category", "shoes"): TargetInfo(name="Shoes"),
    }
    assert await store.lookup("shop-b", keys) == {("product", "sku-2"): TargetInfo(name="B's")}
    assert await store.lookup("shop-c", keys) == {}
    assert await store.lookup("shop-a", []) == {}
    assert await store.get("shop-b", "product", "sku-1") is None
    assert (await store.count("shop-a"), await store.count("shop-b"), await store.count("shop-c")) == (
        2,
        1,
        0,
    )


async def test_an_import_larger_than_one_statement(store: CatalogStore) -> None:
    n = 2 * UPSERT_CHUNK + 500
    entries = [
        CatalogEntry("product", f"sku-{i}", TargetInfo(name=f"n{i}", list_price=i, currency="EUR"))
        for i in range(n)
    ]
    assert await store.upsert("shop-a", entries) == n
    assert await store.count("shop-a") == n
    keys = [("product", f"sku-{i}") for i in (0, UPSERT_CHUNK, n - 1, n)]
    found = await store.lookup("shop-a", keys)
    assert sorted(info.list_price or 0 for info in found.values()) == [0, UPSERT_CHUNK, n - 1]


def test_the_files_shown_in_the_docs_parse_whole(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    text = (root / "docs" / "enrichment.md").read_text()
    for heading, name in (("### JSON Lines", "doc.jsonl"), ("### CSV", "doc.csv")):
        block = text.split(heading, 1)[1].split("```\n", 2)[1]
        path = tmp_path / name
        path.write_text(block)
        entries, errors = parse_catalog(path, None)
        assert errors == [] and len(entries) >= 3, name
        assert entries[0] == parse_catalog(root / "examples" / f"catalog.{name.split('.')[1]}", None)[0][0]
