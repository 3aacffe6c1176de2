"""`activity-collector users erase|erasure-status|export|suppress|unsuppress`: a person's data
(docs/privacy.md).

A person is named by one id (`--user-id`, `--anonymous-id`, `--session-id` or `--identity`) of one
tenant and found under every id of theirs through the identity links and the activities. `erase`
records an erasure job in PostgreSQL; a running collector takes it up within a second, and when none
runs on the data directory (or none takes it within `--claim-wait` seconds) the command runs it itself,
unless the data directory's spool still holds activities (they would reach ClickHouse after it): then
the next `serve` runs it, once it has drained them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from collector.cli.common import (
    CommandError,
    CommandStore,
    Configuration,
    Subparsers,
    open_postgres,
    print_table,
    run_async,
    store_flags,
)
from collector.config import Settings

if TYPE_CHECKING:
    import asyncpg

    from workers.privacy.erasure import Receipt

STILL_RUNNING = 3
"""Exit status of `erase` when the erasure has not finished within --timeout."""
NOT_FOUND = 4
"""Exit status of `erasure-status` when no erasure covers the id."""


def add_parser(subparsers: Subparsers) -> None:
    users = subparsers.add_parser(
        "users", help="erase, export, suppress and unsuppress a person's data (docs/privacy.md)"
    )
    actions = users.add_subparsers(dest="action", required=True)
    erase = actions.add_parser(
        "erase",
        help="erase a person everywhere (activities, aggregates, rejections, dead letters, identity links)"
        " and suppress their later activities",
        epilog=f"Exit status {STILL_RUNNING}: the erasure was recorded and runs on; see erasure-status.",
    )
    erase.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="seconds to wait for the end (default 600)"
    )
    erase.add_argument("--no-wait", action="store_true", help="record the erasure and return at once")
    erase.add_argument(
        "--claim-wait",
        type=float,
        default=5.0,
        metavar="S",
        help="with a ClickHouse server, seconds to leave a running collector to take the erasure up before"
        " running it here (default 5)",
    )
    status = actions.add_parser(
        "erasure-status",
        help="the receipt of the latest erasure covering an id: state, ids covered, rows removed per store",
        epilog=f"Exit status {NOT_FOUND}: no erasure covers the id.",
    )
    export = actions.add_parser(
        "export", help="everything held about a person, as JSON Lines (one record a line, with its type)"
    )
    export.add_argument("--output", metavar="FILE", help="write to FILE instead of the standard output")
    suppress = actions.add_parser(
        "suppress", help="drop a person's activities at intake from now on, without erasing (an opt-out)"
    )
    unsuppress = actions.add_parser("unsuppress", help="accept a suppressed person's activities again")
    for action in (erase, status, export, suppress, unsuppress):
        action.add_argument("--tenant", required=True, help="the person's tenant")
        which = action.add_mutually_exclusive_group(required=True)
        which.add_argument("--user-id", metavar="U", help="the person's user id")
        which.add_argument("--anonymous-id", metavar="A", help="one of the person's anonymous ids")
        which.add_argument("--session-id", metavar="S", help="one of the person's session ids")
        which.add_argument(
            "--identity",
            metavar="REPOSITORY=ID",
            help="an id in a further identity repository (User.identities, e.g. crm=C-1234): the person is "
            "the user whose activities carry it",
        )
        if action in (erase, status):
            action.add_argument(
                "--format",
                choices=("table", "json"),
                default="table",
                help="output format: table or json (one object) (default table)",
            )
        store_flags(action)
    users.set_defaults(run=run)


def person_of(args: argparse.Namespace) -> tuple[str, str]:
    if args.identity is not None:
        return "identity", args.identity
    for kind, value in (
        ("user", args.user_id),
        ("anonymous", args.anonymous_id),
        ("session", args.session_id),
    ):
        if value is not None:
            if not value:
                raise CommandError(f"--{kind}-id: must not be empty")
            return kind, value
    raise CommandError("name the person: --user-id, --anonymous-id or --session-id")


def run(args: argparse.Namespace, config: Configuration) -> int:
    from workers.storage.clickhouse import StoreError

    settings = config.settings

    async def body() -> int:
        kind, value = person_of(args)
        async with open_postgres(settings) as postgres:
            try:
                return await users_command(postgres.pool, settings, args, kind, value)
            except StoreError as error:
                raise CommandError(f"ClickHouse: {error}") from error

    return run_async(f"users {args.action}", body)


async def users_command(
    pool: asyncpg.Pool, settings: Settings, args: argparse.Namespace, kind: str, value: str
) -> int:
    from workers.privacy.erasure import ErasureStore
    from workers.privacy.persons import PersonError, PersonIds, resolve_person
    from workers.processors.suppression import SuppressionStore, id_digest

    tenant = args.tenant
    database = settings.clickhouse_database
    if kind == "identity":
        from workers.privacy.persons import user_of_identity

        repository, _, identity = value.partition("=")
        try:
            kind, value = (
                "user",
                await user_of_identity(
                    tenant, repository, identity, CommandStore(settings, writable=False), database, _call
                ),
            )
        except PersonError as error:
            raise CommandError(str(error)) from error
    if args.action == "erase":
        return await erase(pool, settings, args, kind, value)
    if args.action == "erasure-status":
        receipt = await ErasureStore(pool).find(tenant, kind, value)
        if receipt is None:
            print(f"no erasure of tenant {tenant} covers that {kind} id", file=sys.stderr)
            return NOT_FOUND
        show(receipt, args.format)
        return 0
    if args.action == "export":
        return await export(pool, settings, args, kind, value)
    suppressions = SuppressionStore(pool)
    digest = id_digest(tenant, kind, value)
    if args.action == "suppress":
        try:
            ids = await resolve_person(
                tenant,
                PersonIds.of(kind, value),
                pool,
                CommandStore(settings, writable=False),
                database,
                _call,
            )
        except PersonError as error:
            raise CommandError(str(error)) from error
        added = await suppressions.suppress(tenant, digest, ids.digests(tenant))
        print(
            f"suppressed {len(ids)} ids of the person ({added} new): their activities are dropped at intake "
            f"on every collector within plan_refresh_s ({settings.processors.plan_refresh_s:g} s here)"
        )
        return 0
    lifted = len(await suppressions.unsuppress(tenant, digest))
    if lifted:
        print(f"lifted the suppression of {lifted} ids of the person")
    else:
        print(f"that {kind} id of tenant {tenant} was not suppressed")
    return 0


async def _call(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


def show(receipt: Receipt, fmt: str) -> None:
    data = receipt.to_dict()
    if fmt == "json":
        print(json.dumps(data, sort_keys=True))
        return
    lines = [
        ("erasure", str(receipt.id)),
        ("tenant", receipt.tenant),
        ("state", receipt.state),
        ("step", receipt.step or "(not started)"),
        ("ids covered", ", ".join(f"{k} {n}" for k, n in sorted(receipt.ids.items()))),
        ("requested", data["requested_at"] or ""),
        ("started", data["started_at"] or ""),
        ("finished", data["finished_at"] or ""),
    ]
    lines += [(f"removed: {store}", str(n)) for store, n in sorted(receipt.removed.items())]
    lines += [(f"took: {step}", f"{seconds:.2f} s") for step, seconds in receipt.step_seconds()]
    if receipt.error:
        lines.append(("last error", receipt.error))
    print_table(("field", "value"), lines)


def _collector_runs(settings: Settings) -> bool | None:
    """Whether a collector runs on the embedded engine's data directory; None: cannot tell (a
    ClickHouse server, shared by collectors elsewhere)."""
    from collector.process.control import ControlUnavailable, info_via_control

    if not settings.effective_clickhouse_dsn.startswith("chdb:"):
        return None
    try:
        info_via_control(settings.control_socket)
    except (ControlUnavailable, OSError):
        return False
    return True


async def erase(
    pool: asyncpg.Pool, settings: Settings, args: argparse.Namespace, kind: str, value: str
) -> int:
    from workers.privacy.erasure import ErasureStore

    jobs = ErasureStore(pool)
    job = await jobs.request(args.tenant, kind, value)
    print(f"erasure {job} recorded; the person's activities are suppressed from now on", file=sys.stderr)
    if not args.no_wait:
        deadline = time.monotonic() + args.timeout
        runs = _collector_runs(settings)
        claim_by = time.monotonic() + (args.claim_wait if runs is None else 0.0)
        while True:
            receipt = await jobs.receipt(job)
            assert receipt is not None
            if receipt.state in ("done", "failed") or time.monotonic() > deadline:
                break
            if not runs and receipt.started_at is None and time.monotonic() >= claim_by:
                spooled = await asyncio.to_thread(_spooled, settings)
                if spooled:
                    # Run now, the erasure would miss them: they reach ClickHouse when serve drains the
                    # spool at its start, past the processors; serve runs the erasure after that.
                    print(
                        f"the spool in {settings.spool_dir} holds {spooled} activities not yet in "
                        "ClickHouse: the erasure stays recorded and runs when `activity-collector serve` "
                        "starts there",
                        file=sys.stderr,
                    )
                    break
                await run_here(pool, settings)
                continue
            await asyncio.sleep(0.1)
    receipt = await jobs.receipt(job)
    assert receipt is not None
    show(receipt, args.format)
    if receipt.state == "failed":
        return 1
    return 0 if receipt.state == "done" else STILL_RUNNING


def _spooled(settings: Settings) -> int:
    """Activities acknowledged into the data directory's spool and not yet in ClickHouse (a collector
    stopped with a backlog). Opening the spool drops its fully committed segments, as a start does."""
    from workers.commit.spool import Spool

    if not settings.spool or not settings.spool_dir.exists():
        return 0
    spool = Spool(settings.spool_dir, capacity_bytes=settings.pipeline.spool_capacity_bytes)
    spool.open()
    try:
        return spool.pending_rows
    finally:
        spool.close()


async def run_here(pool: asyncpg.Pool, settings: Settings) -> None:
    """Run the open erasures in this process, on a store of its own."""
    from workers.privacy.erasure import ErasureRunner, ErasureWorker
    from workers.storage.clickhouse import ClickHouseStore

    store = await asyncio.to_thread(
        ClickHouseStore,
        settings.effective_clickhouse_dsn,
        settings.clickhouse_database,
        connections=1,
        cluster=settings.cluster,
    )
    try:
        await ErasureWorker(
            ErasureRunner(
                pool,
                store,
                settings.clickhouse_database,
                settings.cluster,
                stale_s=settings.erasure_stale_s,
                niceness=settings.erasure_niceness,
            )
        ).run_pending()
    finally:
        await asyncio.to_thread(store.close)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)


async def export(
    pool: asyncpg.Pool, settings: Settings, args: argparse.Namespace, kind: str, value: str
) -> int:
    from workers.privacy.export import export_person
    from workers.privacy.persons import PersonError

    lines = []
    try:
        async for record in export_person(
            args.tenant,
            kind,
            value,
            pool,
            CommandStore(settings, writable=False),
            settings.clickhouse_database,
        ):
            lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    except PersonError as error:
        raise CommandError(str(error)) from error
    records = len(lines)
    if args.output:
        await asyncio.to_thread(_write, args.output, "".join(lines))
    else:
        sys.stdout.write("".join(lines))
    print(f"{records} records", file=sys.stderr)
    return 0
