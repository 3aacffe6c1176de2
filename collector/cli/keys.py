"""`activity-collector keys create|list|revoke`: the tenants' API keys (with `tenants`).

Works whether or not `serve` runs: on the embedded PostgreSQL it joins the server that `serve` runs on
the same data directory, or starts it for the command's duration.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from collector.cli.common import (
    Configuration,
    Subparsers,
    open_postgres,
    postgres_command_flags,
    print_table,
    run_async,
    table_format_flag,
    when,
)
from collector.config import Settings

if TYPE_CHECKING:
    from collector.tenants import TenantStore


def add_parser(subparsers: Subparsers) -> None:
    keys = subparsers.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key, printed once, alone on the last line")
    create.add_argument("--tenant", required=True, help="the tenant the key writes for")
    listing = actions.add_parser("list", help="keys (ids, never secrets), their tenant and state")
    listing.add_argument("--tenant", help="only this tenant's keys")
    table_format_flag(listing)
    revoke = actions.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key", help="the key id (as `keys list` shows it) or the whole key")
    for action in (create, listing, revoke):
        postgres_command_flags(action)
    keys.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    from collector.tenants import TenantStore

    settings = config.settings

    async def body() -> int:
        async with open_postgres(settings) as postgres:
            return await keys_command(TenantStore(postgres.pool), settings, args)

    return run_async("keys", body)


async def keys_command(store: TenantStore, settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "create":
        key, stored = await store.create_key(args.tenant)
        print(f"created API key {stored.key_id} of tenant {stored.tenant}; the key is shown this once:")
        print(key)
    elif args.action == "list":
        keys = await store.list_keys(args.tenant)
        print_table(
            ("key id", "tenant", "state", "created (UTC)", "revoked (UTC)"),
            [(k.key_id, k.tenant, k.state, when(k.created_at), when(k.revoked_at)) for k in keys],
            args.format,
            empty="no API keys",
        )
    elif args.action == "revoke":
        revoked = await store.revoke_key(args.key)
        print(
            f"revoked API key {revoked.key_id} of tenant {revoked.tenant}: it is refused within "
            f"auth_cache_ttl_s ({settings.auth_cache_ttl_s:g} s here) on every running collector"
        )
    return 0
