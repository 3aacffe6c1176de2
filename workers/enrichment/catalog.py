"""The catalogue: what each tenant's targets are, in PostgreSQL (`targets`), and the files it is imported
from.

Enrichment looks up an activity's target (its type and id) and attaches the entry to the row: name,
category path, brand, list price and currency, attributes. An operator fills the catalogue with
`activity-collector catalog import FILE`, from JSON Lines or CSV; each line replaces the whole entry of
its target, and a bad line is reported and skipped while the good ones are imported.

Entries are held to the limits of the activities they describe (`collector.config.Limits`): a target
type or id that no activity could carry is refused rather than stored for nothing.

An import notifies PostgreSQL's channel `activity_catalog` with its tenant, on commit; each collector
listens there (`CatalogWatcher`) and drops what its enrichment caches hold of that tenant's catalogue,
so that every collector of a cluster sees an import at once rather than after `enrichment_cache_ttl_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import asyncpg

from core.limits import Limits
from core.normalize import normalize_currency
from workers.storage.postgres import POSTGRES_ERRORS

log = logging.getLogger(__name__)
_LISTEN_ERRORS: tuple[type[BaseException], ...] = (*POSTGRES_ERRORS, OSError)

FORMATS = ("jsonl", "csv")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
FIELDS = (
    "target_type",
    "target_id",
    "name",
    "category_path",
    "brand",
    "list_price",
    "currency",
    "attributes",
)
ATTRIBUTE_COLUMN = "attributes."
"""Prefix of the CSV columns holding attributes: `attributes.color` holds the attribute `color`."""
CATEGORY_SEPARATOR = ">"
UPSERT_CHUNK = 1000
"""Entries per INSERT statement of an import."""
CHANNEL = "activity_catalog"
"""The PostgreSQL notification channel of catalogue imports; the payload is the tenant."""

_MAX_BIGINT = 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")
_Line = TypeVar("_Line")


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """What the catalogue says of one target: what enrichment attaches to its activities."""

    name: str = ""
    category_path: tuple[str, ...] = ()
    """Categories from the most general down: ("Shoes", "Running")."""
    brand: str = ""
    list_price: int | None = None
    """Catalogue price in integer minor units of `currency` (cents); None when unknown."""
    currency: str = ""
    """ISO 4217 code in upper case; set whenever list_price is."""
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One target of an imported file."""

    target_type: str
    target_id: str
    info: TargetInfo


@dataclass(frozen=True, slots=True)
class StoredTarget:
    """A catalogue entry as PostgreSQL holds it."""

    info: TargetInfo
    updated_at: datetime.datetime


@dataclass(frozen=True, slots=True)
class LineError:
    """Why a line of an imported file was refused. `field` is empty when the line as a whole is bad."""

    line_number: int
    field: str
    message: str


class CatalogFileError(Exception):
    """The file cannot be imported at all (unreadable, unknown format, a bad CSV header); the message
    says why."""


class _Refused(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# -- parsing ---------------------------------------------------------------------------------------


def file_format(path: Path, fmt: str | None) -> str:
    """`fmt` when given, else the format its extension names."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise CatalogFileError(f"unknown format {fmt!r}: jsonl or csv")
        return fmt
    try:
        return EXTENSIONS[path.suffix.lower()]
    except KeyError:
        known = ", ".join(EXTENSIONS)
        raise CatalogFileError(
            f"{path}: cannot tell the format from the extension (known: {known}); pass --format jsonl or csv"
        ) from None


def parse_catalog(
    path: Path, fmt: str | None = None, limits: Limits | None = None
) -> tuple[list[CatalogEntry], list[LineError]]:
    """The entries of a catalogue file, in file order, and the lines refused. Blank lines are skipped.
    A target named on several lines appears several times: `CatalogStore.upsert` keeps the last.
    Raises CatalogFileError when the file cannot be read or, for CSV, its header is bad."""
    limits = limits or Limits()
    kind = file_format(path, fmt)
    try:
        with path.open("rb") as f:
            if kind == "csv":
                return _parse_csv(path, f, limits)
            return _collect(_jsonl_lines(f), _jsonl_entry, limits)
    except OSError as error:
        raise CatalogFileError(f"cannot read {path}: {error.strerror or error}") from error


def _collect(
    lines: Iterable[tuple[int, _Line]], parse: Callable[[_Line, Limits], CatalogEntry], limits: Limits
) -> tuple[list[CatalogEntry], list[LineError]]:
    entries: list[CatalogEntry] = []
    errors: list[LineError] = []
    for number, line in lines:
        try:
            entries.append(parse(line, limits))
        except _Refused as refused:
            errors.append(LineError(number, refused.field, refused.message))
    return entries, errors


def _jsonl_lines(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(f, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if raw.strip():
            yield number, raw


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _jsonl_entry(raw: bytes, limits: Limits) -> CatalogEntry:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Refused("", f"not UTF-8 (byte {error.start + 1} of the line)") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as error:
        raise _Refused("", f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise _Refused("", f"a JSON object is expected, got {_kind(value)}")
    for key in value:
        if key not in FIELDS:
            raise _Refused(key, f"unknown field; the fields are {', '.join(FIELDS)}")
    return _entry(value, value.get("attributes"), limits)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _text(name: str, value: Any, limit: int, *, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise _Refused(name, f"{name} is required")
        return ""
    if not isinstance(value, str):
        raise _Refused(name, f"a string is expected, got {_kind(value)}")
    if len(value) > limit:
        raise _Refused(name, f"{name} has {len(value)} characters; the limit is {limit}")
    return _storable(name, value)


def _storable(name: str, value: str) -> str:
    """`value`, unless PostgreSQL cannot store it as text."""
    if "\x00" in value:
        raise _Refused(name, f"{name} contains a NUL character (U+0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise _Refused(name, f"{name} contains a lone surrogate (character {error.start + 1})") from None
    return value


def _category_path(value: Any, limits: Limits) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        parts: list[Any] = [part.strip() for part in value.split(CATEGORY_SEPARATOR)]
    elif isinstance(value, list):
        parts = value
    else:
        raise _Refused("category_path", f"an array of strings or a string is expected, got {_kind(value)}")
    if len(parts) > limits.max_segments:
        raise _Refused(
            "category_path", f"category_path has {len(parts)} categories; the limit is {limits.max_segments}"
        )
    for n, part in enumerate(parts, start=1):
        if not isinstance(part, str):
            raise _Refused("category_path", f"category {n} is {_kind(part)}; a string is expected")
        if not part:
            raise _Refused("category_path", f"category {n} is empty")
        if len(part) > limits.max_text_chars:
            raise _Refused(
                "category_path",
                f"category {n} has {len(part)} characters; the limit is {limits.max_text_chars}",
            )
        _storable("category_path", part)
    return tuple(parts)


def _attributes(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Refused("attributes", f"an object is expected, got {_kind(value)}")
    attributes: dict[str, str] = {}
    for key, item in value.items():
        if item is None:
            continue
        if isinstance(item, (bool, int, float)):
            item = json.dumps(item)  # 12.5 -> "12.5", true -> "true"
        elif not isinstance(item, str):
            raise _Refused(f"attributes.{key}", f"a string, number or boolean is expected, got {_kind(item)}")
        attributes[key] = item
    return attributes


def _list_price(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Refused("list_price", f"an integer number of minor units (cents) is expected, got {value!r}")
    if not 0 <= value <= _MAX_BIGINT:
        raise _Refused("list_price", f"list_price must be zero or more (and below 2^63), got {value}")
    return value


def _entry(values: Mapping[str, Any], attributes: Any, limits: Limits) -> CatalogEntry:
    """The entry of one line's fields (`attributes` apart), or _Refused naming the first field at
    fault."""
    kind = _text("target_type", values.get("target_type"), limits.max_name_chars, required=True)
    ident = _text("target_id", values.get("target_id"), limits.max_id_chars, required=True)
    name = _text("name", values.get("name"), limits.max_text_chars)
    category_path = _category_path(values.get("category_path"), limits)
    brand = _text("brand", values.get("brand"), limits.max_text_chars)
    price = _list_price(values.get("list_price"))
    code = _text("currency", values.get("currency"), limits.max_name_chars)
    if code:
        canonical = normalize_currency(code)
        if canonical is None:
            raise _Refused("currency", f"not an ISO 4217 currency code: {code!r}")
        code = canonical
    elif price is not None:
        raise _Refused("currency", "currency is required with list_price")
    attributes = _attributes(attributes)
    if len(attributes) > limits.max_map_entries:
        raise _Refused(
            "attributes", f"attributes has {len(attributes)} entries; the limit is {limits.max_map_entries}"
        )
    for key, value in attributes.items():
        if not key:
            raise _Refused("attributes", "attributes has an entry with an empty name")
        if len(key) > limits.max_name_chars:
            raise _Refused(
                "attributes",
                f"attributes has a name of {len(key)} characters; the limit is {limits.max_name_chars}",
            )
        if len(value) > limits.max_text_chars:
            raise _Refused(
                f"attributes.{key}",
                f"attributes.{key} has {len(value)} characters; the limit is {limits.max_text_chars}",
            )
        _storable("attributes", key)
        _storable(f"attributes.{key}", value)
    info = TargetInfo(
        name=name,
        category_path=category_path,
        brand=brand,
        list_price=price,
        currency=code,
        attributes=attributes,
    )
    return CatalogEntry(kind, ident, info)


def _parse_csv(path: Path, f: BinaryIO, limits: Limits) -> tuple[list[CatalogEntry], list[LineError]]:
    reader = csv.reader(io.TextIOWrapper(f, encoding="utf-8-sig", newline=""), strict=True)

    def rows() -> Iterator[tuple[int, list[str]]]:
        start = reader.line_num + 1
        for cells in reader:
            if any(cells):  # blank lines, and lines of empty cells as spreadsheets write them
                yield start, cells
            start = reader.line_num + 1

    def entry(cells: list[str], limits: Limits) -> CatalogEntry:
        if len(cells) != len(columns):
            raise _Refused("", f"{len(cells)} cells where the header has {len(columns)}")
        values = dict(zip(columns, cells, strict=True))
        attributes = {
            column[len(ATTRIBUTE_COLUMN) :]: value
            for column, value in values.items()
            if column.startswith(ATTRIBUTE_COLUMN) and value
        }
        return _entry(values, attributes, limits)

    try:
        header = next(reader, None)
        if header is None:
            return [], []
        columns = _csv_columns(path, header)
        return _collect(rows(), entry, limits)
    except UnicodeDecodeError:
        raise CatalogFileError(f"{path}:{reader.line_num + 1}: not UTF-8") from None
    except csv.Error as error:
        raise CatalogFileError(f"{path}:{reader.line_num}: not valid CSV: {error}") from None


def _csv_columns(path: Path, header: list[str]) -> list[str]:
    columns = [name.strip() for name in header]
    known = [name for name in FIELDS if name != "attributes"]
    for name in columns:
        if name.startswith(ATTRIBUTE_COLUMN) and len(name) > len(ATTRIBUTE_COLUMN):
            continue
        if name not in known:
            hint = f"the columns are {', '.join(known)} and {ATTRIBUTE_COLUMN}<name> for attributes"
            raise CatalogFileError(f"{path}:1: column {name!r}: unknown column; {hint}")
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            raise CatalogFileError(f"{path}:1: column {name!r}: named twice")
        seen.add(name)
    for required in ("target_type", "target_id"):
        if required not in seen:
            raise CatalogFileError(f"{path}:1: column {required!r}: required, missing from the header")
    return columns


# -- the store -------------------------------------------------------------------------------------

# unnest() would flatten an array of category paths into one array of categories: each path travels as
# a JSON array, in text.
_UPSERT = """
INSERT INTO targets
    (tenant_id, target_type, target_id, name, category_path, brand, list_price, currency, attributes,
     updated_at)
SELECT $1, u.target_type, u.target_id, u.name,
       ARRAY(SELECT c FROM jsonb_array_elements_text(u.category_path::jsonb) WITH ORDINALITY AS p(c, n)
             ORDER BY p.n),
       u.brand, u.list_price, u.currency, u.attributes::jsonb, now()
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[],
            $9::text[])
     AS u(target_type, target_id, name, category_path, brand, list_price, currency, attributes)
ON CONFLICT (tenant_id, target_type, target_id) DO UPDATE SET
    name = excluded.name, category_path = excluded.category_path, brand = excluded.brand,
    list_price = excluded.list_price, currency = excluded.currency, attributes = excluded.attributes,
    updated_at = excluded.updated_at
"""

# JSON travels as text both ways, whatever codecs the pool's connections have.
_INFO_COLUMNS = "name, category_path, brand, list_price, currency, attributes::text AS attributes"


def _info(row: asyncpg.Record) -> TargetInfo:
    return TargetInfo(
        row["name"],
        tuple(row["category_path"]),
        row["brand"],
        row["list_price"],
        row["currency"],
        json.loads(row["attributes"]),
    )


class CatalogStore:
    """The `targets` table, through an asyncpg pool. Every method runs on the event loop and raises
    asyncpg and connection errors when PostgreSQL cannot answer."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def upsert(self, tenant: str, entries: Iterable[CatalogEntry]) -> int:
        """Store `entries` as `tenant`'s, each replacing the whole entry of its target, in one
        transaction. Of entries naming the same target, the last wins. Returns how many targets were
        written."""
        latest: dict[tuple[str, str], TargetInfo] = {}
        for entry in entries:
            key = (entry.target_type, entry.target_id)
            latest.pop(key, None)  # the last occurrence takes the last place
            latest[key] = entry.info
        items = list(latest.items())
        if not items:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            for start in range(0, len(items), UPSERT_CHUNK):
                chunk = items[start : start + UPSERT_CHUNK]
                await conn.execute(
                    _UPSERT,
                    tenant,
                    [key[0] for key, _ in chunk],
                    [key[1] for key, _ in chunk],
                    [info.name for _, info in chunk],
                    [json.dumps(info.category_path) for _, info in chunk],
                    [info.brand for _, info in chunk],
                    [info.list_price for _, info in chunk],
                    [info.currency for _, info in chunk],
                    [json.dumps(dict(info.attributes)) for _, info in chunk],
                )
            # Delivered on commit, to every collector listening (CatalogWatcher).
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, tenant)
        return len(items)

    async def lookup(self, tenant: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], TargetInfo]:
        """The entries of `tenant`'s targets among `keys` ((target type, target id) pairs), in one
        query; targets the catalogue does not know are absent from the answer."""
        if not keys:
            return {}
        rows = await self.pool.fetch(
            f"SELECT target_type, target_id, {_INFO_COLUMNS} FROM targets WHERE tenant_id = $1"
            " AND (target_type, target_id) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
            tenant,
            [key[0] for key in keys],
            [key[1] for key in keys],
        )
        return {(row["target_type"], row["target_id"]): _info(row) for row in rows}

    async def has_entries(self, tenant: str) -> bool:
        """Whether `tenant`'s catalogue holds any entry (an index probe, however large it is)."""
        return bool(
            await self.pool.fetchval("SELECT EXISTS (SELECT 1 FROM targets WHERE tenant_id = $1)", tenant)
        )

    async def get(self, tenant: str, target_type: str, target_id: str) -> StoredTarget | None:
        row = await self.pool.fetchrow(
            f"SELECT {_INFO_COLUMNS}, updated_at FROM targets"
            " WHERE tenant_id = $1 AND target_type = $2 AND target_id = $3",
            tenant,
            target_type,
            target_id,
        )
        return None if row is None else StoredTarget(_info(row), row["updated_at"])

    async def count(self, tenant: str) -> int:
        """How many targets `tenant`'s catalogue holds."""
        return int(await self.pool.fetchval("SELECT count(*) FROM targets WHERE tenant_id = $1", tenant))


class CatalogWatcher:
    """Listens on `CHANNEL` on one connection of `pool` and calls `changed(tenant)` for every import,
    made by any process on this PostgreSQL. Off the request path: the notifications arrive on the
    connection's own reads. When the connection is lost, notifications may be missed meanwhile: once
    listening again (tried every `retry_s`), it calls `changed(None)`, every tenant."""

    def __init__(
        self, pool: asyncpg.Pool, changed: Callable[[str | None], object], *, retry_s: float = 5.0
    ) -> None:
        self.pool = pool
        self.changed = changed
        self.retry_s = retry_s
        self.listening = asyncio.Event()
        self.backend_pid: int | None = None
        """The PostgreSQL process of the listening connection, while it listens."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="catalog watcher")

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.changed(str(payload) if payload else None)

    async def _run(self) -> None:
        listened = False
        failing = False
        while True:
            lost = asyncio.Event()

            def terminated(_conn: object) -> None:
                lost.set()  # noqa: B023 (this iteration's connection, this iteration's event)

            try:
                async with self.pool.acquire() as conn:
                    conn.add_termination_listener(terminated)
                    await conn.add_listener(CHANNEL, self._heard)
                    try:
                        if listened:
                            self.changed(None)
                        if failing:
                            log.info("listening for catalogue imports again")
                        listened, failing = True, False
                        self.backend_pid = conn.get_server_pid()
                        self.listening.set()
                        await lost.wait()
                    finally:
                        self.listening.clear()
                        self.backend_pid = None
                        if not conn.is_closed():
                            conn.remove_termination_listener(terminated)
                            with contextlib.suppress(*_LISTEN_ERRORS):
                                await conn.remove_listener(CHANNEL, self._heard)
            except _LISTEN_ERRORS as error:
                if not failing:  # once per outage, not once per try
                    log.warning(
                        "not listening for catalogue imports; retrying (meanwhile an import shows after "
                        "enrichment_cache_ttl_s)",
                        extra={"error": str(error) or type(error).__name__, "retry_s": self.retry_s},
                    )
                failing = True
            await asyncio.sleep(self.retry_s)

    async def shutdown(self, _left: float = 0.0) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
