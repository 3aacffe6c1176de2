"""`activity-collector tenants create|list|disable|enable`: who may send (with `keys`).

Works whether or not `serve` runs: on the embedded PostgreSQL it joins the server that `serve` runs on
the same data directory, or starts it for the command's duration.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from collector.cli.common import (
    CommandError,
    CommandStore,
    Configuration,
    Subparsers,
    open_postgres,
    postgres_command_flags,
    print_table,
    run_async,
    store_flags,
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
    setting = actions.add_parser(
        "set",
        help="a tenant's own settings: how long its data is kept (docs/privacy.md), its quota "
        "(docs/plans.md#quotas); give at least one",
    )
    setting.add_argument("name", help="the tenant's name")
    setting.add_argument(
        "--quota",
        dest="own_quota_rate",
        type=float,
        default=argparse.SUPPRESS,
        metavar="R",
        help="the tenant's own quota, activities per second; 0: none (as activity-collector quotas set)",
    )
    setting.add_argument(
        "--burst",
        dest="own_quota_burst",
        type=float,
        default=argparse.SUPPRESS,
        metavar="B",
        help="with --quota: most activities at once (default: one second of the rate)",
    )
    setting.add_argument(
        "--retention-days",
        default=argparse.SUPPRESS,
        type=_days,
        metavar="N|keep",
        help="days the raw activities are kept (a ClickHouse TTL: older rows go at the next merge); keep: "
        "for ever",
    )
    setting.add_argument(
        "--aggregate-retention-days",
        type=_days,
        default=None,
        metavar="N|keep",
        help="days the tenant's aggregate rows are kept, at least --retention-days (default keep)",
    )
    for action in (create, listing, disable, enable):
        postgres_command_flags(action)
    store_flags(setting)
    tenants.set_defaults(run=run)


def _days(value: str) -> int | None:
    if value == "keep":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of days or keep, not {value!r}") from None


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
        from workers.privacy.retention import RetentionStore

        tenants = await store.list_tenants()
        kept = await RetentionStore(store.pool).all()

        def days(value: int | None) -> str:
            return "keep" if value is None else str(value)

        print_table(
            ("tenant", "state", "active keys", "created (UTC)", "retention days", "aggregate retention days"),
            [
                (
                    t.name,
                    t.state,
                    str(t.active_keys),
                    when(t.created_at),
                    days(kept[t.name].days if t.name in kept else None),
                    days(kept[t.name].aggregate_days if t.name in kept else None),
                )
                for t in tenants
            ],
            args.format,
            empty="no tenants",
        )
    elif args.action == "set":
        if "own_quota_burst" in args and "own_quota_rate" not in args:
            raise CommandError("--burst goes with --quota")
        if args.aggregate_retention_days is not None and "retention_days" not in args:
            raise CommandError("--aggregate-retention-days goes with --retention-days")
        if "own_quota_rate" not in args and "retention_days" not in args:
            raise CommandError("give a setting: --retention-days, --quota (see --help)")
        if "own_quota_rate" in args:
            await set_quota(store, settings, args)
        if "retention_days" in args:
            await set_retention(store, settings, args)
    elif args.action in ("disable", "enable"):
        await store.set_disabled(args.name, args.action == "disable")
        if args.action == "disable":
            print(f"disabled tenant {args.name}: its keys are refused {within}")
        else:
            print(f"enabled tenant {args.name}: its active keys are accepted {within}")
    return 0


async def set_quota(store: TenantStore, settings: Settings, args: argparse.Namespace) -> None:
    """The tenant's own quota, as `activity-collector quotas set` records it."""
    from workers.processors.quota import QuotaStore

    burst = getattr(args, "own_quota_burst", 0.0)
    if not (0 <= args.own_quota_rate < float("inf") and 0 <= burst < float("inf")):
        raise CommandError("--quota and --burst: finite numbers, zero or more")
    quota = await QuotaStore(store.pool).set(args.name, args.own_quota_rate, burst)
    shown = "no quota" if quota.rate == 0 else f"{quota.rate:g} activities/s, burst {quota.burst:g}"
    print(
        f"tenant {args.name}: {shown}, on every running collector within plan_refresh_s "
        f"({settings.processors.plan_refresh_s:g} s)"
    )


async def set_retention(store: TenantStore, settings: Settings, args: argparse.Namespace) -> None:
    """Record the retention, then write the TTLs of ClickHouse (every collector also does at start)."""
    import asyncio

    from workers.privacy.retention import RetentionError, RetentionStore, apply_retention
    from workers.storage.clickhouse import StoreError

    retentions = RetentionStore(store.pool)
    try:
        await retentions.set(args.name, args.retention_days, getattr(args, "aggregate_retention_days", None))
    except RetentionError as error:
        raise CommandError(str(error)) from error
    engine = CommandStore(settings)
    try:
        await asyncio.to_thread(
            apply_retention, engine, settings.clickhouse_database, await retentions.all(), settings.cluster
        )
    except StoreError as error:
        raise CommandError(
            f"retention recorded, but ClickHouse's TTLs were not written ({error}): every collector writes "
            "them when it starts"
        ) from error

    def shown(days: int | None) -> str:
        return "for ever" if days is None else f"{days} days"

    print(
        f"tenant {args.name}: raw activities kept {shown(args.retention_days)}, aggregate rows "
        f"{shown(getattr(args, 'aggregate_retention_days', None))}; older rows go at ClickHouse's next merge"
    )
