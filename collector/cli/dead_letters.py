"""`activity-collector dead-letters list|show|replay|purge`: the activities ClickHouse refused for their
data, kept in PostgreSQL.

Each action opens its own connection pool and works whether or not `serve` runs. On the embedded
PostgreSQL it joins the server that `serve` runs on the same data directory, or starts it for the
command's duration when none runs. `replay` inserts into ClickHouse directly, or, on the embedded engine
held by a running server, through that server's control socket.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from collector.cli.common import (
    CommandError,
    Configuration,
    Subparsers,
    open_postgres,
    run_async,
    store_flags,
    table_format_flag,
    when,
)
from collector.config import Settings

if TYPE_CHECKING:
    from workers.commit.deadletters import DeadLetterStore, StoredLetter
    from workers.storage.clickhouse import ClickHouseStore


def add_parser(subparsers: Subparsers) -> None:
    letters = subparsers.add_parser(
        "dead-letters", help="list, show, replay and purge the activities ClickHouse refused"
    )
    actions = letters.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list the dead letters waiting (with --all, replayed ones too)")
    listing.add_argument("--all", action="store_true", help="include the letters already replayed")
    table_format_flag(listing)
    show = actions.add_parser("show", help="a dead letter's error and activities")
    show.add_argument("id", type=int, help="the letter's id (as `dead-letters list` shows it)")
    replay = actions.add_parser(
        "replay", help="insert dead letters into ClickHouse again (idempotent); failures are kept"
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?", help="the letter to replay")
    which.add_argument("--all", action="store_true", help="every letter waiting")
    purge = actions.add_parser("purge", help="delete dead letters")
    gone = purge.add_mutually_exclusive_group(required=True)
    gone.add_argument("id", type=int, nargs="?", help="the letter to delete")
    gone.add_argument("--replayed", action="store_true", help="every letter already replayed")
    gone.add_argument("--all", action="store_true", help="every letter, replayed or not")
    for action in (listing, show, replay, purge):
        store_flags(action)
    letters.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    return run_dead_letters(config.settings, args)


class ClickHouseWriter:
    """Inserts into the configured ClickHouse. On the embedded engine a running server holds it, so the
    insert goes through that server's control socket; otherwise the store is opened here. Blocks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: ClickHouseStore | None = None

    def insert(self, payload: bytes, rows: int, token: str) -> None:
        from collector.process.control import ControlUnavailable, insert_via_control
        from workers.storage.clickhouse import ClickHouseStore, StoreError

        settings = self.settings
        dsn = settings.effective_clickhouse_dsn
        if self._store is None and dsn.startswith("chdb:"):
            try:
                insert_via_control(settings.control_socket, payload, rows, token)
                return
            except ControlUnavailable:
                pass
            if not settings.clickhouse_dsn and not (settings.data_dir / "clickhouse").exists():
                raise StoreError(f"no ClickHouse data in {settings.data_dir.resolve()}", transient=False)
        if self._store is None:
            self._store = ClickHouseStore(
                dsn, settings.clickhouse_database, connections=1, cluster=settings.cluster
            )
        self._store.insert_rows(payload, rows, token=token)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _summary_fields() -> tuple[str, ...]:
    """The keys of `_summary`, in order: the columns of `list --format csv`."""
    return (
        "id",
        "created_at",
        "tenant",
        "rows",
        "state",
        "error_code",
        "error",
        "replay_attempts",
        "replayed_at",
        "last_replay_error",
    )


def _summary(letter: StoredLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "created_at": letter.created_at.isoformat(),
        "tenant": letter.tenant,
        "rows": letter.count,
        "state": letter.state,
        "error_code": letter.error_code,
        "error": letter.error,
        "replay_attempts": letter.replay_attempts,
        "replayed_at": None if letter.replayed_at is None else letter.replayed_at.isoformat(),
        "last_replay_error": letter.last_replay_error,
    }


def print_table(letters: list[StoredLetter], out: TextIO) -> None:
    header = ("id", "created (UTC)", "tenant", "rows", "state", "replays", "error")
    lines = [
        (
            str(x.id),
            when(x.created_at),
            x.tenant or "",
            str(x.count),
            x.state,
            str(x.replay_attempts),
            x.error if len(x.error) <= 80 else x.error[:79] + "…",
        )
        for x in letters
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    for line in (header, *lines):
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n"
        )


def decode_rows(rows: bytes) -> list[str]:
    """Each framed row as an activity in the proto JSON mapping, or a line saying why it cannot be."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    from core.proto.activity.v1 import activity_pb2 as pb
    from core.wire import WireError
    from workers.commit.deadletters import split_rows

    try:
        bodies = split_rows(rows)
    except WireError as error:
        return [f"(the rows do not parse: {error})"]
    decoded: list[str] = []
    for n, body in enumerate(bodies, start=1):
        try:
            activity = pb.Activity.FromString(body)
        except DecodeError:
            decoded.append(f"(row {n} does not parse as an Activity: {len(body)} bytes)")
            continue
        activity.DiscardUnknownFields()  # the fields the collector appends (tenant, receive time)
        decoded.append(json_format.MessageToJson(activity, indent=None))
    return decoded


async def list_letters(store: DeadLetterStore, include_replayed: bool, fmt: str) -> int:
    letters = await store.list(include_replayed=include_replayed)
    if fmt == "json":
        for letter in letters:
            print(json.dumps(_summary(letter)))
        return 0
    if fmt == "csv":
        summaries = [_summary(letter) for letter in letters]
        writer = csv.DictWriter(sys.stdout, fieldnames=list(_summary_fields()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(summaries)
        return 0
    if not letters:
        print(
            "no dead letters" if include_replayed else "no dead letters waiting (--all lists replayed ones)"
        )
        return 0
    print_table(letters, sys.stdout)
    return 0


async def show_letter(store: DeadLetterStore, letter_id: int) -> int:
    letter = await store.get(letter_id)
    if letter is None:
        raise CommandError(f"no dead letter {letter_id}")
    print(f"id: {letter.id}")
    print(f"created: {letter.created_at.isoformat()}")
    print(f"tenant: {letter.tenant or '(unknown)'}")
    print(f"rows: {letter.count}")
    print(
        f"state: {letter.state}" + (f" (at {letter.replayed_at.isoformat()})" if letter.replayed_at else "")
    )
    print(f"error code: {letter.error_code if letter.error_code is not None else '(none)'}")
    print(f"error: {letter.error}")
    print(f"replays: {letter.replay_attempts}")
    if letter.last_replay_error:
        print(f"last replay error: {letter.last_replay_error}")
    print(f"source: {letter.source}")
    print("activities:")
    for line in decode_rows(letter.rows):
        print(line)
    return 0


async def replay_letter(store: DeadLetterStore, writer: ClickHouseWriter, letter: StoredLetter) -> bool:
    """Insert one letter's rows into ClickHouse and mark it replayed; False when ClickHouse refuses."""
    from workers.rows import envelope_bytes
    from workers.storage.clickhouse import StoreError

    payload = envelope_bytes([letter.rows])
    try:
        await asyncio.to_thread(writer.insert, payload, letter.count, letter.replay_token)
    except StoreError as error:
        await store.mark_replay_failed(letter.id, str(error))
        kind = "still refuses it" if error.data else "failed"
        print(f"dead letter {letter.id}: ClickHouse {kind}: {error}; the letter is kept", file=sys.stderr)
        return False
    await store.mark_replayed(letter.id)
    print(f"dead letter {letter.id}: {letter.count} activities stored in ClickHouse")
    return True


async def replay(store: DeadLetterStore, settings: Settings, letter_id: int | None) -> int:
    if letter_id is not None:
        letter = await store.get(letter_id)
        if letter is None:
            raise CommandError(f"no dead letter {letter_id}")
        if letter.replayed_at is not None:
            replayed_at = letter.replayed_at.isoformat()
            print(f"dead letter {letter.id}: already replayed at {replayed_at}; nothing to do")
            return 0
        letters = [letter]
    else:
        letters = await store.list()
        if not letters:
            print("no dead letters waiting")
            return 0
    writer = ClickHouseWriter(settings)
    try:
        outcomes = [await replay_letter(store, writer, letter) for letter in letters]
    finally:
        await asyncio.to_thread(writer.close)
    if letter_id is None:
        done = [x for x, ok in zip(letters, outcomes, strict=True) if ok]
        failed = len(letters) - len(done)
        print(
            f"replayed {len(done)} dead letters ({sum(x.count for x in done)} activities)"
            + (f"; {failed} failed and are kept" if failed else "")
        )
    return 0 if all(outcomes) else 1


async def purge(store: DeadLetterStore, letter_id: int | None, everything: bool, replayed: bool) -> int:
    if letter_id is not None:
        if await store.purge(letter_id) == 0:
            raise CommandError(f"no dead letter {letter_id}")
        print(f"purged dead letter {letter_id}")
        return 0
    deleted = await store.purge(replayed_only=replayed and not everything)
    print(f"purged {deleted} dead letters")
    return 0


def run_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    from workers.commit.deadletters import DeadLetterStore

    async def body() -> int:
        async with open_postgres(settings) as postgres:
            store = DeadLetterStore(postgres.pool)
            action = args.action
            if action == "list":
                return await list_letters(store, args.all, args.format)
            if action == "show":
                return await show_letter(store, args.id)
            if action == "replay":
                return await replay(store, settings, None if args.all else args.id)
            if action == "purge":
                return await purge(store, args.id, args.all, args.replayed)
            raise AssertionError(f"unhandled action {action}")

    return run_async("dead-letters", body)
