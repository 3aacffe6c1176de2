"""`activity-collector segments create|list|show|delete|members`: a tenant's computed segments.

A segment is a name and a rule over a person's activities (`workers/reads/segments.py`,
docs/profiles.md), kept in PostgreSQL; membership is computed from the stored activities when asked
(`members`, and `GetProfile` on a running collector).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

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
)

EXIT_STATUSES = """exit status: 0 done; 1 a malformed rule (the message names the node at fault), no such
segment, or PostgreSQL or the store failed; 2 bad arguments."""


def add_parser(subparsers: Subparsers) -> None:
    segments = subparsers.add_parser(
        "segments",
        help="a tenant's computed segments: create, list, show, delete, members",
        description="Computed segments: named rules over a person's activities (docs/profiles.md).",
        epilog=EXIT_STATUSES,
    )
    actions = segments.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create", help="a segment from a rule file (JSON or YAML)", epilog=EXIT_STATUSES
    )
    create.add_argument("name", help="the segment's name: letters, digits, '_', '.', ':', '-'")
    create.add_argument("--rule", required=True, type=Path, help="the rule file (JSON or YAML)")
    create.add_argument("--replace", action="store_true", help="replace the rule of an existing segment")
    listing = actions.add_parser("list", help="the tenant's segments and their rules")
    table_format_flag(listing)
    show = actions.add_parser("show", help="one segment's rule, as JSON", epilog=EXIT_STATUSES)
    show.add_argument("name", help="the segment's name")
    delete = actions.add_parser("delete", help="remove a segment", epilog=EXIT_STATUSES)
    delete.add_argument("name", help="the segment's name")
    members = actions.add_parser(
        "members", help="the persons in a segment now, from the stored activities", epilog=EXIT_STATUSES
    )
    members.add_argument("name", help="the segment's name")
    members.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    store_flags(members)
    for action in (create, listing, show, delete):
        postgres_command_flags(action)
    for action in (create, listing, show, delete, members):
        action.add_argument("--tenant", required=True, help="the tenant's name")
    segments.set_defaults(run=run)


def _read_rule(path: Path) -> Any:
    from workers.processors.plan import PlanError, load_document

    try:
        text = path.read_text()
    except OSError as error:
        raise CommandError(f"--rule: cannot read {path}: {error.strerror or error}") from None
    try:
        return load_document(text, str(path))
    except PlanError as error:
        raise CommandError(f"--rule: {error.message}") from None


def run(args: argparse.Namespace, config: Configuration) -> int:
    from workers.reads.segments import RuleError, SegmentStore, check_name, members, parse_rule
    from workers.storage.clickhouse import StoreError

    settings = config.settings

    async def body() -> int:
        if args.action == "create":
            try:
                check_name(args.name)
            except RuleError as error:
                raise CommandError(str(error)) from None
            try:
                rule = parse_rule(_read_rule(args.rule))
            except RuleError as error:
                raise CommandError(f"{args.rule}: the rule is refused, nothing changed: {error}") from None
        async with open_postgres(settings) as postgres:
            store = SegmentStore(postgres.pool)
            if args.action == "create":
                try:
                    created = await store.create(args.tenant, args.name, rule, replace=args.replace)
                except RuleError as error:
                    raise CommandError(str(error)) from None
                if not created:
                    raise CommandError(
                        f"segment {args.name} exists in tenant {args.tenant}: --replace replaces it"
                    )
                print(f"segment {args.name} of tenant {args.tenant} {'set' if args.replace else 'created'}")
            elif args.action == "list":
                found = await store.all(args.tenant)
                print_table(
                    ("segment", "rule"), [(n, json.dumps(r.document)) for n, r in found.items()], args.format
                )
            elif args.action == "delete":
                if not await store.delete(args.tenant, args.name):
                    raise CommandError(f"no segment {args.name} in tenant {args.tenant}")
                print(f"segment {args.name} of tenant {args.tenant} deleted")
            else:
                found_rule = await store.get(args.tenant, args.name)
                if found_rule is None:
                    raise CommandError(f"no segment {args.name} in tenant {args.tenant}")
                if args.action == "show":
                    print(json.dumps(found_rule.document, indent=2))
                    return 0

                try:
                    people = await asyncio.to_thread(
                        members, CommandStore(settings, writable=False), args.tenant, found_rule
                    )
                except StoreError as error:
                    raise CommandError(f"the store failed: {error}") from None
                if args.format == "json":
                    for person in people:
                        print(json.dumps({"person": person}))
                else:
                    print_table(("person",), [(p,) for p in people], args.format)
        return 0

    return run_async("segments", body)
