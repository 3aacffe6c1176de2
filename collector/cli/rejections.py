"""`activity-collector rejections list|show ID|report`: the rejected activities the collector kept (by
validation or a tracking plan), from ClickHouse's `rejected_activities`, kept `rejections_ttl_days`;
`report` counts them, with the activities stored flagged by a plan, per day, tenant, reason and rule.

Works through a running server on the same data directory (embedded engine), or on ClickHouse itself.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.cli.common import (
    FORMATS,
    CommandError,
    Configuration,
    Subparsers,
    query_clickhouse,
    store_flags,
)

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def add_parser(subparsers: Subparsers) -> None:
    rejections = subparsers.add_parser("rejections", help="rejected activities kept: list, show")
    actions = rejections.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the latest rejected activities kept, newest first")
    listing.add_argument("--tenant", help="only this tenant's")
    listing.add_argument("--reason", help="only this reason: plan_violation, missing_field, ...")
    listing.add_argument("--since", help="only since: 30m, 6h, 2d, or a UTC time 2026-01-31T12:00:00")
    listing.add_argument("--limit", type=int, default=50, help="most rows shown (default 50)")
    listing.add_argument("--format", choices=sorted(FORMATS), help="output format (default table)")
    show = actions.add_parser("show", help="one rejected activity: why, and the activity as sent")
    show.add_argument("id", help="its id, from rejections list")
    show.add_argument("--tenant", help="fail unless it is this tenant's")
    report = actions.add_parser(
        "report", help="data quality: rejected and flagged activities per day, tenant, reason, rule, field"
    )
    report.add_argument("--tenant", help="only this tenant's")
    report.add_argument("--since", default="7d", help="since: 30m, 6h, 2d or a UTC time (default 7d)")
    report.add_argument("--format", choices=sorted(FORMATS), help="output format (default table)")
    for action in (listing, show, report):
        store_flags(action)
    rejections.set_defaults(run=run)


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def since_time(value: str, now: datetime | None = None) -> datetime:
    """`--since`: an age (30m, 6h, 2d) or a UTC time; CommandError otherwise."""
    match = _AGO.match(value.strip())
    if match is not None:
        delta = timedelta(**{_UNITS[match[2]]: int(match[1])})
        return (now or datetime.now(UTC)) - delta
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CommandError(
            f"--since: expected 30m, 6h, 2d or a time (2026-01-31T12:00:00), got {value!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def list_query(args: argparse.Namespace) -> str:
    where = ["1"]
    if args.tenant:
        where.append(f"tenant_id = {_quote(args.tenant)}")
    if args.reason:
        where.append(f"reason = {_quote(args.reason.lower().removeprefix('rejection_reason_'))}")
    if args.since:
        since = since_time(args.since).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        where.append(f"rejected_at >= toDateTime64({_quote(since)}, 3, 'UTC')")
    if args.limit < 1:
        raise CommandError(f"--limit: must be 1 or more, got {args.limit}")
    return (
        "SELECT id, rejected_at, tenant_id, reason, field, rule, activity_id"
        f" FROM rejected_activities WHERE {' AND '.join(where)}"
        f" ORDER BY rejected_at DESC, id LIMIT {int(args.limit)}"
    )


def report_query(args: argparse.Namespace) -> str:
    """`rejections report`: `quality_sql` since `--since`."""
    since = since_time(args.since).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return quality_sql(since, None, args.tenant or "")


def quality_sql(since: str, until: str | None, tenant: str) -> str:
    """Rejected activities kept (rejected_activities) and flagged ones stored (activities'
    plan_violations, one row per rule), counted per day, tenant, outcome, reason, rule and field, from
    `since` (a UTC time, included) to `until` (excluded; None: now). Also `report quality`."""
    since_sql = f"toDateTime64({_quote(since)}, 3, 'UTC')"
    until_sql = f" AND {{t}} < toDateTime64({_quote(until)}, 3, 'UTC')" if until else ""
    of_tenant = f" AND tenant_id = {_quote(tenant)}" if tenant else ""
    rejected_range = f"rejected_at >= {since_sql}{until_sql.format(t='rejected_at')}"
    flagged_range = f"received_at >= {since_sql}{until_sql.format(t='received_at')}"
    return (
        "SELECT day, tenant_id, outcome, reason, rule, field, count() AS activities FROM ("
        " SELECT toDate(rejected_at) AS day, tenant_id, 'rejected' AS outcome, reason, rule, field"
        f" FROM rejected_activities WHERE {rejected_range}{of_tenant}"
        " UNION ALL"
        " SELECT toDate(received_at) AS day, tenant_id, 'flagged' AS outcome, 'plan_violation' AS reason,"
        " arrayJoin(plan_violations) AS rule, multiIf(position(rule, ':') > 0,"
        " substring(rule, position(rule, ':') + 1), rule = 'unknown_action', 'action',"
        " rule = 'target_types', 'target.type', '') AS field"
        f" FROM activities FINAL WHERE {flagged_range} AND notEmpty(plan_violations){of_tenant}"
        ") GROUP BY day, tenant_id, outcome, reason, rule, field"
        " ORDER BY day DESC, tenant_id, activities DESC, outcome, reason, rule, field"
    )


def run(args: argparse.Namespace, config: Configuration) -> int:
    from workers.storage.clickhouse import StoreError

    settings = config.settings
    try:
        if args.action in ("list", "report"):
            query = list_query(args) if args.action == "list" else report_query(args)
            sys.stdout.buffer.write(query_clickhouse(settings, query, FORMATS[args.format or "table"]))
            sys.stdout.flush()
            return 0
        return show(settings, args)
    except CommandError as error:
        print(f"activity-collector rejections: {error}", file=sys.stderr)
        return 1
    except StoreError as error:
        print(f"activity-collector rejections: {error}", file=sys.stderr)
        return 1


def show(settings: Any, args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    from core.proto.activity.v1 import activity_pb2 as pb

    try:
        record_id = str(uuid.UUID(args.id))
    except ValueError:
        raise CommandError(f"not a rejection id (a UUID): {args.id!r}") from None
    query = (
        "SELECT id, rejected_at, tenant_id, reason, field, rule, message, activity_id, payload_bytes,"
        " hex(payload) AS payload_hex"
        f" FROM rejected_activities WHERE id = toUUID({_quote(record_id)})"
    )
    if args.tenant:
        query += f" AND tenant_id = {_quote(args.tenant)}"
    text = query_clickhouse(settings, query + " LIMIT 1", "JSONEachRow").decode()
    if not text.strip():
        raise CommandError(
            f"no rejected activity {record_id}" + (f" of tenant {args.tenant}" if args.tenant else "")
        )
    row = json.loads(text.splitlines()[0])
    payload = bytes.fromhex(row.pop("payload_hex"))
    for key in ("id", "rejected_at", "tenant_id", "reason", "field", "rule", "message", "activity_id"):
        print(f"{key}: {row[key]}")
    size = int(row["payload_bytes"])
    print(f"bytes: {size}" + (f" (kept: the first {len(payload)})" if size > len(payload) else ""))
    try:
        activity = pb.Activity.FromString(payload)
    except DecodeError:
        print(f"activity (does not parse; hex): {payload.hex()}")
    else:
        print("activity:")
        print(json_format.MessageToJson(activity, indent=2, preserving_proto_field_name=True))
    return 0
