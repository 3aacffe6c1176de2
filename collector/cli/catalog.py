"""`activity-collector catalog import|show|count`: the catalogue of targets that enrichment attaches to
activities (`workers.enrichment.catalog`).

Like the other operator commands, each opens its own connection pool and works whether or not `serve`
runs. `import` reads and checks the whole file before it connects; a refused line is listed and skipped,
and the good lines are imported all the same, in one transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from collector.cli.common import (
    CommandError,
    Configuration,
    Subparsers,
    open_postgres,
    postgres_command_flags,
    run_async,
)
from collector.config import Settings
from collector.tenants import check_name
from workers.enrichment.catalog import FORMATS, CatalogFileError, CatalogStore, LineError, parse_catalog

MAX_LISTED = 50
"""Refused lines listed one by one; the rest are counted."""


def add_parser(subparsers: Subparsers) -> None:
    """The `catalog` subcommand and its actions."""
    parser = subparsers.add_parser(
        "catalog", help="import and read the catalogue of targets that enrichment attaches to activities"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    tenant_help = "the tenant whose catalogue it is (default: default_tenant)"
    importing = actions.add_parser(
        "import",
        help="add or replace catalogue entries from a JSON Lines or CSV file",
        description="Each line replaces the whole entry of its target; a target named twice keeps its "
        "last line. Refused lines are listed on stderr and skipped; the good lines are imported all "
        "the same. Exit status: 0 when every line was imported, 1 when some were refused, 2 when the "
        "file cannot be read at all. See docs/enrichment.md for the file formats.",
    )
    importing.add_argument("file", type=Path, metavar="FILE", help="the file: .jsonl, .ndjson, .json or .csv")
    importing.add_argument("--tenant", help=tenant_help)
    importing.add_argument(
        "--format", choices=FORMATS, help="the file's format (default: from its extension)"
    )
    show = actions.add_parser("show", help="print one target's catalogue entry as JSON")
    show.add_argument("target_type", metavar="TYPE", help="the target's type, as activities send it")
    show.add_argument("target_id", metavar="ID", help="the target's id, as activities send it (sku-1001)")
    show.add_argument("--tenant", help=tenant_help)
    count = actions.add_parser("count", help="print how many targets a tenant's catalogue holds")
    count.add_argument("--tenant", help=tenant_help)
    for action in (importing, show, count):
        postgres_command_flags(action)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    return run_catalog(config.settings, args)


def refused_lines(file: str, errors: list[LineError], limit: int = MAX_LISTED) -> list[str]:
    """`FILE:LINE: field: message` for the first `limit` errors, then how many more there are."""
    lines = [
        f"{file}:{e.line_number}: {e.field + ': ' if e.field else ''}{e.message}" for e in errors[:limit]
    ]
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more")
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


async def _known_tenant(store: CatalogStore, tenant: str, settings: Settings) -> None:
    """Refuse a catalogue for a tenant that does not exist: its activities could never meet it.
    default_tenant needs no row: with auth off it is every activity's tenant."""
    if tenant == settings.default_tenant:
        return
    if not await store.pool.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE name = $1)", tenant):
        raise CommandError(f"no tenant {tenant}; create it first: activity-collector tenants create {tenant}")


async def import_file(settings: Settings, path: Path, fmt: str | None, tenant: str) -> int:
    try:
        entries, errors = await asyncio.to_thread(parse_catalog, path, fmt, settings.limits)
    except CatalogFileError as error:
        print(f"activity-collector catalog: {error}", file=sys.stderr)
        return 2
    async with open_postgres(settings) as postgres:
        store = CatalogStore(postgres.pool)
        await _known_tenant(store, tenant, settings)
        imported = await store.upsert(tenant, entries)
    if imported:
        await asyncio.to_thread(tell_running_server, settings, tenant)
    for line in refused_lines(str(path), errors):
        print(line, file=sys.stderr)
    print(
        f"imported {_plural(imported, 'target')} for tenant {tenant}; {_plural(len(errors), 'line')} refused"
    )
    return 1 if errors else 0


def tell_running_server(settings: Settings, tenant: str) -> bool:
    """Have the collector serving this data directory, if one does, drop what its enrichment caches
    hold of `tenant`'s catalogue: the activities it takes next see the import. Other collectors (on
    other machines) hear of it from PostgreSQL (`CatalogStore.upsert` notifies them). Whether a
    collector was told."""
    from collector.process.control import ControlUnavailable, catalog_changed_via_control

    try:
        catalog_changed_via_control(settings.control_socket, tenant)
    except (ControlUnavailable, OSError, ValueError):
        return False
    return True


async def show_target(settings: Settings, tenant: str, target_type: str, target_id: str) -> int:
    async with open_postgres(settings) as postgres:
        stored = await CatalogStore(postgres.pool).get(tenant, target_type, target_id)
    if stored is None:
        raise CommandError(f"no target {target_type} {target_id} in the catalogue of tenant {tenant}")
    info = stored.info
    document = {
        "tenant": tenant,
        "target_type": target_type,
        "target_id": target_id,
        "name": info.name,
        "category_path": list(info.category_path),
        "brand": info.brand,
        "list_price": info.list_price,
        "currency": info.currency,
        "attributes": dict(info.attributes),
        "updated_at": stored.updated_at.isoformat(),
    }
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0


async def count_targets(settings: Settings, tenant: str) -> int:
    async with open_postgres(settings) as postgres:
        print(await CatalogStore(postgres.pool).count(tenant))
    return 0


def run_catalog(settings: Settings, args: argparse.Namespace) -> int:
    async def body() -> int:
        tenant = check_name(args.tenant or settings.default_tenant)
        if args.action == "import":
            return await import_file(settings, args.file, args.format, tenant)
        if args.action == "show":
            return await show_target(settings, tenant, args.target_type, args.target_id)
        if args.action == "count":
            return await count_targets(settings, tenant)
        raise AssertionError(f"unhandled action {args.action}")

    return run_async("catalog", body)
