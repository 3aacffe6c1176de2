"""`activity-collector tenants create|list|disable|enable`: who may send (with `keys`).

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
from collector.config import TENANT_NAME_RULE, Settings

if TYPE_CHECKING:
    from collector.tenants import TenantStore


def add_parser(subparsers: Subparsers) -> None:
    tenants = subparsers.add_parser("tenants", help="create, list, disable and enable tenants")
    actions = tenants.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new tenant (then: keys create --tenant NAME)")
    create.add_argument("name", help=f"the tenant's name: {TENANT_NAME_RULE}")
    listing = actions.add_parser("list", help="every tenant, its state and active keys")
    table_format_flag(listing)
    disable = actions.add_parser("disable", help="refuse every key of a tenant")
    disable.add_argument("name", help="the tenant's name")
    enable = actions.add_parser("enable", help="accept a disabled tenant's keys again")
    enable.add_argument("name", help="the tenant's name")
    for action in (create, listing, disable, enable):
        postgres_command_flags(action)
    tenants.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    from collector.tenants import TenantStore

    settings = config.settings

    async def body() -> int:
        async with open_postgres(settings) as postgres:
            return await tenants_command(TenantStore(postgres.pool), settings, args)

    return run_async("tenants", body)


async def tenants_command(store: TenantStore, settings: Settings, args: argparse.Namespace) -> int:
    within = f"within auth_cache_ttl_s ({settings.auth_cache_ttl_s:g} s here) on every running collector"
    if args.action == "create":
        tenant = await store.create_tenant(args.name)
        hint = f"activity-collector keys create --tenant {tenant.name}"
        print(f"created tenant {tenant.name}; give it a key: {hint}")
    elif args.action == "list":
        tenants = await store.list_tenants()
        print_table(
            ("tenant", "state", "active keys", "created (UTC)"),
            [(t.name, t.state, str(t.active_keys), when(t.created_at)) for t in tenants],
            args.format,
            empty="no tenants",
        )
    elif args.action in ("disable", "enable"):
        await store.set_disabled(args.name, args.action == "disable")
        if args.action == "disable":
            print(f"disabled tenant {args.name}: its keys are refused {within}")
        else:
            print(f"enabled tenant {args.name}: its active keys are accepted {within}")
    return 0
