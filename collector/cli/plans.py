"""`activity-collector plans apply|show|history|remove|check`: each tenant's tracking plan (docs/plans.md).

Plans are kept, every version, in PostgreSQL; every running collector polls for changes every
`plan_refresh_s` and applies a new plan without restart. `apply` checks the plan first: a malformed
one is refused with the path of the bad node, and nothing changes. `check` is a dry run of a plan over
a JSON Lines file of activities: what each would get, nothing sent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from collector.config import Settings
    from workers.processors.plan import Plan


def add_parser(subparsers: Subparsers) -> None:
    plans = subparsers.add_parser("plans", help="tenants' tracking plans: apply, show, history, check")
    actions = plans.add_subparsers(dest="action", required=True)
    apply = actions.add_parser("apply", help="check a plan file (JSON or YAML) and make it the tenant's plan")
    apply.add_argument("file", type=Path, help="the plan: JSON or YAML (docs/plans.md)")
    show = actions.add_parser("show", help="the tenant's plan in force (or --version N)")
    show.add_argument("--version", type=int, help="a past version (plans history lists them)")
    history = actions.add_parser("history", help="every version of the tenant's plan")
    table_format_flag(history)
    remove = actions.add_parser("remove", help="the tenant has no plan from now on (a version too)")
    check = actions.add_parser(
        "check", help="dry run: what a plan would do to a JSON Lines file of activities; nothing is sent"
    )
    check.add_argument("file", type=Path, help="activities, one JSON object a line (as the HTTP door takes)")
    check.add_argument("--plan", type=Path, help="the plan file to try (default: the tenant's plan in force)")
    for action in (apply, show, history, remove, check):
        action.add_argument("--tenant", required=True, help="the tenant's name")
        postgres_command_flags(action)
    plans.set_defaults(run=run)


def read_plan(path: Path) -> tuple[dict[str, Any], Plan]:
    """A plan file, read and checked; CommandError naming the bad node otherwise."""
    from workers.processors.plan import PlanError, load_document, parse_plan

    try:
        document = load_document(path.read_text(encoding="utf-8"))
        plan = parse_plan(document)
    except PlanError as error:
        raise CommandError(f"{path}: the plan is refused, nothing changed: {error}") from None
    return dict(document), plan


def run(args: argparse.Namespace, config: Configuration) -> int:
    settings = config.settings
    if args.action == "check" and args.plan is not None:
        # A plan file and activities: no PostgreSQL needed.
        try:
            _, plan = read_plan(args.plan)
        except CommandError as error:
            print(f"activity-collector plans: {error}", file=sys.stderr)
            return 1
        return check_file(plan, args.file, settings)

    async def body() -> int:
        from workers.processors.plan import parse_plan
        from workers.processors.plan_store import PlanStore

        async with open_postgres(settings) as postgres:
            store = PlanStore(postgres.pool)
            if args.action == "apply":
                document, _ = read_plan(args.file)
                version = await store.apply(args.tenant, document, str(args.file))
                actions = len(document["actions"])
                print(
                    f"tenant {args.tenant}: plan version {version} applied ({actions} actions); "
                    f"in force on every running collector within plan_refresh_s "
                    f"({settings.processors.plan_refresh_s:g} s)"
                )
            elif args.action == "remove":
                version = await store.apply(args.tenant, None, "removed")
                print(f"tenant {args.tenant}: plan removed (version {version})")
            elif args.action == "show":
                found = await store.get(args.tenant, args.version)
                if found is None or found.document is None:
                    which = f"version {args.version}" if args.version else "plan"
                    raise CommandError(f"tenant {args.tenant} has no {which}")
                print(
                    f"# tenant {args.tenant}, plan version {found.version}, applied {when(found.created_at)}"
                )
                print(json.dumps(found.document, indent=2, sort_keys=True))
            elif args.action == "history":
                versions = await store.history(args.tenant)
                print_table(
                    ("version", "applied (UTC)", "actions", "source"),
                    [
                        (
                            str(v.version),
                            when(v.created_at),
                            "removed" if v.document is None else str(len(v.document.get("actions", {}))),
                            v.source,
                        )
                        for v in versions
                    ],
                    args.format,
                    empty=f"tenant {args.tenant} has never had a plan",
                )
            else:
                found = await store.get(args.tenant)
                if found is None or found.document is None:
                    raise CommandError(f"tenant {args.tenant} has no plan: pass --plan FILE")
                return check_file(parse_plan(found.document), args.file, settings)
        return 0

    return run_async("plans", body)


def check_file(plan: Plan, path: Path, settings: Settings) -> int:
    """Print what `plan` (and validation) would do to each activity of the JSON Lines file `path`."""
    from google.protobuf import json_format

    from core.proto.activity.v1 import activity_pb2 as pb
    from core.validation import InvalidActivity, check_activity

    counts = {"accepted": 0, "flagged": 0, "rejected": 0, "invalid": 0}
    now = time.time_ns()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                activity = json_format.Parse(line, pb.Activity())
            except (json_format.ParseError, ValueError, TypeError, AttributeError) as error:
                print(f"line {number}: invalid: not an activity: {error}")
                counts["invalid"] += 1
                continue
            try:
                check_activity(activity, settings.limits, now, 0)
            except InvalidActivity as error:
                reason = pb.RejectionReason.Name(error.reason).removeprefix("REJECTION_REASON_")
                print(f"line {number}: invalid: {reason} {error.field}: {error.message}")
                counts["invalid"] += 1
                continue
            violations = plan.violations(activity)
            if not violations:
                counts["accepted"] += 1
                continue
            verb = plan.mode_of(activity)
            counts["rejected" if verb == "reject" else "flagged"] += 1
            # A rejection names the first rule broken, as the collector's answer does.
            for v in violations[:1] if verb == "reject" else violations:
                print(f"line {number}: {verb}: {v.rule} {v.field}: {v.message}")
    print(", ".join(f"{n} {name}" for name, n in counts.items()))
    return 0
