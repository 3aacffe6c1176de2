"""`activity-collector quotas set|list|clear`: tenants' own quotas, in activities per second.

A tenant without one of its own gets the default (`quota_rate`, `quota_burst`). Kept in PostgreSQL
(`tenant_quotas`); every running collector reads them every `plan_refresh_s`.
"""

from __future__ import annotations

import argparse

from collector.cli.common import (
    CommandError,
    Configuration,
    Subparsers,
    open_postgres,
    postgres_command_flags,
    print_table,
    run_async,
    table_format_flag,
)


def add_parser(subparsers: Subparsers) -> None:
    quotas = subparsers.add_parser("quotas", help="tenants' own quotas (activities/s): set, list, clear")
    actions = quotas.add_subparsers(dest="action", required=True)
    set_ = actions.add_parser("set", help="a tenant's own quota, in place of quota_rate and quota_burst")
    set_.add_argument("--tenant", required=True, help="the tenant's name")
    set_.add_argument("--rate", type=float, required=True, help="activities per second; 0: no quota")
    set_.add_argument(
        "--burst", type=float, default=0.0, help="most activities at once (default: one second)"
    )
    listing = actions.add_parser("list", help="the tenants with a quota of their own, and the default")
    table_format_flag(listing)
    clear = actions.add_parser("clear", help="a tenant gets the default quota again")
    clear.add_argument("--tenant", required=True, help="the tenant's name")
    for action in (set_, listing, clear):
        postgres_command_flags(action)
    quotas.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    from workers.processors.quota import QuotaStore, default_quota

    settings = config.settings
    within = f"on every running collector within plan_refresh_s ({settings.processors.plan_refresh_s:g} s)"

    async def body() -> int:
        async with open_postgres(settings) as postgres:
            store = QuotaStore(postgres.pool)
            if args.action == "set":
                if not (0 <= args.rate < float("inf") and 0 <= args.burst < float("inf")):
                    raise CommandError("--rate and --burst: finite numbers, zero or more")
                quota = await store.set(args.tenant, args.rate, args.burst)
                shown = "no quota" if quota.rate == 0 else f"{quota.rate:g}/s, burst {quota.burst:g}"
                print(f"tenant {args.tenant}: {shown}, {within}")
            elif args.action == "clear":
                if not await store.clear(args.tenant):
                    raise CommandError(f"tenant {args.tenant} has no quota of its own")
                print(f"tenant {args.tenant}: the default quota, {within}")
            else:
                default = default_quota(settings.quota_rate, settings.quota_burst)
                rows = [("(default)", f"{default.rate:g}", f"{default.burst:g}")]
                rows += [(t, f"{q.rate:g}", f"{q.burst:g}") for t, q in (await store.all()).items()]
                print_table(("tenant", "activities/s (0: none)", "burst"), rows, args.format)
        return 0

    return run_async("quotas", body)
