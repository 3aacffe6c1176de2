"""`activity-collector keys create|list|revoke`: the tenants' API keys (with `tenants`).

Works whether or not `serve` runs: on the embedded PostgreSQL it joins the server that `serve` runs on
the same data directory, or starts it for the command's duration.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from collector.cli.common import (
    CommandError,
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
    create.add_argument(
        "--scope",
        action="append",
        choices=("write", "read", "admin"),
        help="what the key may do: write (send activities), read (the read side), admin (everything, and"
        " activity.v1.PrivacyService); repeat for several (default write)",
    )
    create.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a page origin (https://shop.example) that may send with the key through the Segment door;"
        " repeat for more; none: any origin",
    )
    listing = actions.add_parser(
        "list", help="keys (ids, never secrets), their tenant, state, scope and allowed origins"
    )
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


def allowed_origins(values: list[str]) -> list[str]:
    from collector.doors.origins import normalize_origin

    origins = []
    for value in values:
        origin = normalize_origin(value)
        if origin is None:
            raise CommandError(
                f"--allowed-origin {value!r}: an origin is scheme://host[:port], e.g. https://shop.example"
            )
        origins.append(origin)
    return origins


async def keys_command(store: TenantStore, settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "create":
        origins = allowed_origins(args.allowed_origin)
        key, stored = await store.create_key(args.tenant, ",".join(args.scope or ["write"]), origins)
        if stored.allowed_origins:
            print(f"pages of {', '.join(stored.allowed_origins)} may send with it through the Segment door")
        print(
            f"created API key {stored.key_id} of tenant {stored.tenant}, scope {stored.scope}; the key is "
            "shown this once:"
        )
        print(key)
    elif args.action == "list":
        keys = await store.list_keys(args.tenant)
        print_table(
            ("key id", "tenant", "state", "scope", "allowed origins", "created (UTC)", "revoked (UTC)"),
            [
                (
                    k.key_id,
                    k.tenant,
                    k.state,
                    k.scope,
                    " ".join(k.allowed_origins) or "any",
                    when(k.created_at),
                    when(k.revoked_at),
                )
                for k in keys
            ],
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
