"""`activity-collector send FILE`: send activities from JSON Lines to a running server, in batches.

Each line is one Activity in the proto's JSON mapping (field names as in the proto or in lowerCamelCase).
Lines that do not parse are reported and not sent. The others go through the Python client
(`activity_client.Client`), which sends them in batches over one StreamActivities stream and resends a
batch refused as a whole for a passing reason (RESOURCE_EXHAUSTED, UNAVAILABLE) after the delay the
server asks for, up to --attempts times. Activities keep their ids across resends, so a resend never
counts one twice. A line without an id gets one derived from its line number and its bytes
(`line_id`): sending the same file again stores the same activities again under the same ids, which
count once (see docs/delivery.md).

An acknowledged activity is durable (spooled) but reaches ClickHouse only when the spool drains, within
`drain_interval_ms`. With --wait (the default when the collector answering on the data directory's
control socket is the one at --target), `send` waits, up to --wait-timeout, until what it sent
can be queried, so that a `sql` right after sees it.

The client numbers the activities in the order they were tracked and says what became of each batch
(`BatchResult`), so every rejection and every batch not stored is reported with its lines.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from activity_client.client import BatchResult, BufferFull, Client
from activity_client.proto.activity.v1 import activity_pb2 as pb
from google.protobuf import json_format

from collector.cli.common import (
    CommandError,
    Configuration,
    Subparsers,
    config_flag,
    data_dir_flag,
    setting_flag,
)

# Refusals of the key: every further batch would be refused the same way.
REFUSED_KEY = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
# --attempts bounds the resends of a batch, and --timeout each try: the client needs no time limit of
# its own on top (its retry_timeout must be finite: ten years).
NO_RETRY_TIMEOUT_S = 10 * 365 * 24 * 3600.0
# While the client resends a batch, track() waits for room in its buffer this long at a time, then looks
# whether the key was refused meanwhile.
BLOCK_S = 1.0

LINE_IDS = uuid.UUID("6c1d2a0e-5b0f-5f3c-9a57-3f1d2e8b7a41")
"""The namespace of the ids `send` gives lines without one (`line_id`)."""

# Exit statuses, as `send --help` lists them.
ALL_ACCEPTED = 0
SOME_REFUSED = 1
NOT_STORED = 2
"""Some activities were not stored, or the command was given values it cannot use."""
NO_INPUT = 3
"""The file cannot be read: missing, a directory, not readable."""

EXIT_STATUSES = """exit status:
  0  every activity was accepted
  1  some lines were rejected by the server or are not activities (each is listed)
  2  some activities could not be stored (resend them: the ids stay the same), or a bad option
  3  the file cannot be read (missing, a directory, no permission)

ids: a line without an "id" gets a UUID derived from its line number and its bytes (uuid5), so sending
the same file again stores each activity under the same id: it counts once (FROM activities FINAL,
uniqExact(id); a line without "occurredAt" gets the time it is received, so only a resend on the same
UTC day collapses). A line that has an id keeps it.

--wait: an acknowledged activity is durable, and queryable once the server's spool drains (within
drain_interval_ms). With --wait, send waits until what it sent is queryable (up to --wait-timeout),
asking the collector serving --data-dir over its control socket (or --clickhouse-dsn). The default:
wait when that collector, on this machine, is the one at --target."""
WAIT_SAMPLE = 1000
"""Past this many accepted activities, --wait checks the first and the last this many: the spool
drains in the order activities were acknowledged."""


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "send",
        help="send activities from a JSON Lines file to a running server",
        description="Reads one Activity a line (the proto's JSON mapping; - for stdin), sends them in "
        "batches through the Python client, resends the batches the server asks to be resent, and "
        "lists each line it rejects. Also the way to backfill historical activities.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "file", help="JSON Lines file, one activity per line (proto JSON mapping); - for stdin"
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("ACTIVITY_TARGET", "127.0.0.1:50051"),
        help="HOST:PORT of the server (default 127.0.0.1:50051; ACTIVITY_TARGET)",
    )
    parser.add_argument("--batch-size", type=int, default=500, help="activities per request (default 500)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ACTIVITY_API_KEY"),
        help="API key sent as `authorization: Bearer <key>` (default: ACTIVITY_API_KEY)",
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=6,
        help="tries per batch when the server is unreachable or asks for a resend (default 6)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="connect over TLS, trusting the system's root certificates (default: plain text)",
    )
    parser.add_argument(
        "--ca-cert",
        metavar="FILE",
        help="connect over TLS, trusting the PEM certificates of FILE (a private CA, a self-signed server)",
    )
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wait until what was accepted can be queried (default: when the collector serving "
        "--data-dir on this machine is --target)",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest --wait (default 30)",
    )
    config_flag(parser)
    data_dir_flag(parser)
    setting_flag(
        parser,
        "clickhouse_dsn",
        "--wait: the ClickHouse the server stores into",
        metavar="DSN",
        default_shown="through --data-dir",
    )
    setting_flag(parser, "clickhouse_database", "--wait: its database", metavar="NAME")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    if not 0 < args.wait_timeout < math.inf:
        print(
            "activity-collector send: --wait-timeout must be a number of seconds above zero", file=sys.stderr
        )
        return NOT_STORED
    ids: list[str] = []
    started = time.time()
    status = send(
        args.file,
        args.target,
        args.batch_size,
        args.timeout,
        args.attempts,
        args.api_key,
        tls=args.tls,
        ca_cert=args.ca_cert,
        accepted_ids=ids,
    )
    if ids and args.wait is not False:
        query = queryable_check(config, args.target, explicit=bool(args.wait))
        if query is not None:
            wait_until_queryable(query, ids, args.wait_timeout, since=started)
    return status


def _local(target: str) -> bool:
    host = target.rpartition(":")[0].strip("[]") or target
    return host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "")


def queryable_check(config: Configuration, target: str, *, explicit: bool) -> Callable[[str], bytes] | None:
    """How --wait asks the store: a function running SQL (TabSeparated), or None when it cannot (said
    on stderr when --wait was asked for). By default only a collector on this machine, answering on the
    data directory's control socket, is asked."""
    from collector.config import ConfigError
    from collector.process.control import ControlUnavailable, info_via_control, query_via_control

    if not explicit and not _local(target):
        return None
    try:
        settings = config.settings
    except ConfigError:
        if explicit:
            raise
        return None
    if settings.effective_clickhouse_dsn.startswith("chdb:"):
        socket_path = settings.control_socket
        try:
            info = info_via_control(socket_path)
        except (ControlUnavailable, OSError, ValueError) as error:
            if explicit:
                print(
                    f"activity-collector send: --wait: no collector answers on {socket_path.resolve()} "
                    f"({error}); pass the server's --data-dir, or --clickhouse-dsn",
                    file=sys.stderr,
                )
            return None
        # By default, only when the collector of the data directory is the one sent to.
        if not explicit and str(info.get("listen", "")).rpartition(":")[2] != target.rpartition(":")[2]:
            return None
        return lambda sql: query_via_control(socket_path, sql, "TabSeparated", timeout=30)
    if not explicit:
        return None
    from collector.cli.common import query_clickhouse

    return lambda sql: query_clickhouse(settings, sql, "TabSeparated")


def wait_until_queryable(
    query: Callable[[str], bytes],
    ids: list[str],
    timeout_s: float,
    *,
    since: float,
    interval_s: float = 0.1,
) -> bool:
    """Poll until the activities of `ids` (or, past WAIT_SAMPLE, the first and the last of them) can be
    queried as received at `since` (a Unix time, this machine's clock) or later, up to `timeout_s`:
    copies stored by an earlier send of the same file do not count. Say on stderr when they could not
    be in time."""
    from workers.storage.clickhouse import StoreError

    wanted = ids if len(ids) <= 2 * WAIT_SAMPLE else ids[:WAIT_SAMPLE] + ids[-WAIT_SAMPLE:]
    listed = ", ".join(f"'{i}'" for i in wanted)
    sql = (
        "SELECT uniqExact(id) FROM activities WHERE received_at >= "
        f"fromUnixTimestamp64Milli(toInt64({int(since * 1000)}), 'UTC') AND id IN ({listed})"
    )
    deadline = time.monotonic() + timeout_s
    seen = 0
    while True:
        try:
            seen = int(query(sql).strip() or 0)
        except (StoreError, OSError, ValueError) as error:
            print(f"activity-collector send: --wait: cannot query the store: {error}", file=sys.stderr)
            return False
        if seen >= len(wanted):
            return True
        if time.monotonic() >= deadline:
            print(
                f"activity-collector send: --wait: after {timeout_s:g} s, {seen} of {len(wanted)} activities "
                "checked can be queried; the others are stored (spooled) and arrive when the spool drains",
                file=sys.stderr,
            )
            return False
        time.sleep(interval_s)


@dataclass
class SendReport:
    accepted: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    """(line, message) of each rejected activity."""
    unparsed: list[str] = field(default_factory=list)
    failed: int = 0


def channel_credentials(tls: bool, ca_cert: str | None) -> grpc.ChannelCredentials | None:
    """TLS credentials: trusting the certificates of `ca_cert` when given, the system's when `tls`;
    None for plain text."""
    if ca_cert is not None:
        try:
            roots = Path(ca_cert).read_bytes()
        except OSError as error:
            raise CommandError(f"--ca-cert: cannot read {ca_cert}: {error.strerror or error}") from None
        if b"-----BEGIN CERTIFICATE-----" not in roots:
            raise CommandError(f"--ca-cert: {ca_cert} holds no PEM certificate")
        return grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.ssl_channel_credentials() if tls else None


def line_id(number: int, line: str) -> str:
    """The id of line `number` of a file when it has none: a UUID (version 5, namespace LINE_IDS) of the
    line number and the line's bytes without its line end. The same line at the same place of the same
    file gets the same id every time it is sent."""
    raw = line.rstrip("\r\n").encode("utf-8", "surrogateescape")
    digest = hashlib.sha1(LINE_IDS.bytes + f"{number}:".encode() + raw).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def open_input(path: str) -> IO[str]:
    """The lines to send. Bytes that are not UTF-8 reach the parser as such (and fail it, for their line
    alone) rather than stopping the reading."""
    if path == "-":
        if isinstance(sys.stdin, io.TextIOWrapper):
            sys.stdin.reconfigure(errors="surrogateescape")
        return sys.stdin
    if os.path.isdir(path):
        raise CommandError(f"cannot read {path}: it is a directory; name a JSON Lines file (or - for stdin)")
    try:
        return open(path, encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise CommandError(f"cannot read {path}: no such file") from None
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror or error}") from None


def read_activities(stream: IO[str], report: SendReport) -> Iterator[tuple[int, pb.Activity]]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            activity = json_format.Parse(line, pb.Activity())
        except json_format.ParseError as error:
            report.unparsed.append(f"line {number}: not an activity: {error}")
            continue
        if not activity.id:
            activity.id = line_id(number, line)
        yield number, activity


class _Lines:
    """The line of each activity tracked, by the number the client gives it; reports what became of each
    batch (`on_batch`, called on the client's sender thread, in order)."""

    def __init__(self, report: SendReport) -> None:
        self.report = report
        self.lines: list[int] = []
        self.ids: list[str] = []
        """The id of each activity tracked, by the client's number."""
        self.accepted_ids: list[str] = []
        self.key_refused = threading.Event()
        # Activities of the batches that failed after the key was refused: reported in one line.
        self.after_refusal = 0

    def track(self, client: Client, number: int, activity: pb.Activity) -> bool:
        """Hand `activity` (of line `number`) to the client; False when the key was refused first."""
        # Listed before track(): the answer to its batch may come before track() returns.
        self.lines.append(number)
        self.ids.append(activity.id)
        while not self.key_refused.is_set():
            try:
                client.track(activity)
                return True
            except BufferFull:
                continue  # the client is resending a batch: wait on
        self.lines.pop()
        self.ids.pop()
        return False

    def settled(self, result: BatchResult) -> None:
        lines = self.lines[result.first : result.first + result.size]
        if not result.failed:
            refused = {rejection.index for rejection in result.rejections}
            ids = self.ids[result.first : result.first + result.size]
            self.accepted_ids.extend(i for n, i in enumerate(ids) if n not in refused)
        for rejection in result.rejections:
            if rejection.index >= len(lines):
                continue
            line = lines[rejection.index]
            reason = pb.RejectionReason.Name(rejection.reason).removeprefix("REJECTION_REASON_")
            where = rejection.field or "activity"
            self.report.rejected.append((line, f"line {line}: {where}: {rejection.message} [{reason}]"))
        if not result.failed or not lines:
            return
        if self.key_refused.is_set():
            self.after_refusal += result.size
            return
        cause = f"{result.code.name}: {result.error}" if result.code is not None else result.error
        print(f"lines {lines[0]}-{lines[-1]}: not stored: {cause}", file=sys.stderr)
        if result.code in REFUSED_KEY:
            self.key_refused.set()


def send(
    path: str,
    target: str,
    batch_size: int,
    timeout: float,
    attempts: int = 6,
    api_key: str | None = None,
    *,
    tls: bool = False,
    ca_cert: str | None = None,
    accepted_ids: list[str] | None = None,
) -> int:
    """Send the activities of `path` (JSON Lines; - for stdin) to `target`, with `api_key` as the
    `authorization: Bearer` metadata when given, over TLS with `tls` or `ca_cert`; the ids of the
    accepted activities are added to `accepted_ids` when given. Exit status: 0 all accepted, 1 some
    rejected or unparsed, 2 some not stored (or a bad option), 3 the file cannot be read."""
    if batch_size <= 0 or attempts <= 0:
        print(
            "activity-collector send: --batch-size and --attempts must be greater than zero", file=sys.stderr
        )
        return NOT_STORED
    if not 0 < timeout < math.inf:
        print("activity-collector send: --timeout must be a number of seconds above zero", file=sys.stderr)
        return NOT_STORED
    try:
        credentials = channel_credentials(tls, ca_cert)
    except CommandError as error:
        print(f"activity-collector send: {error}", file=sys.stderr)
        return NOT_STORED
    try:
        stream = open_input(path)
    except CommandError as error:
        print(f"activity-collector send: {error}", file=sys.stderr)
        return NO_INPUT
    # Each batch not stored is reported here, with its lines: not again by the client's log, which
    # Python would print on stderr for want of a handler.
    client_log = logging.getLogger("activity_client")
    if not client_log.handlers:
        client_log.addHandler(logging.NullHandler())
    report = SendReport()
    lines = _Lines(report)
    client = Client(
        target,
        batch_size=batch_size,
        buffer_size=2 * batch_size,
        block_timeout=BLOCK_S,
        request_timeout=timeout,
        max_attempts=attempts,
        retry_timeout=NO_RETRY_TIMEOUT_S,
        credentials=credentials,
        # "" and not None: the client would read ACTIVITY_API_KEY itself, which --api-key overrides.
        api_key=api_key or "",
        on_batch=lines.settled,
    )
    untracked = 0
    try:
        for number, activity in read_activities(stream, report):
            if not lines.track(client, number, activity):
                untracked += 1
        client.close(timeout=None)
    except BaseException:
        client.close(timeout=0.5)
        raise
    finally:
        if stream is not sys.stdin:
            stream.close()
    stats = client.stats
    report.accepted = stats.accepted
    report.failed = stats.failed + untracked
    if lines.key_refused.is_set():
        unsent = lines.after_refusal + untracked
        hint = "" if api_key else " (no key given: set ACTIVITY_API_KEY or pass --api-key)"
        print(f"the server refused the API key{hint}; {unsent} more activities not sent", file=sys.stderr)
    for message in report.unparsed + [message for _, message in sorted(report.rejected)]:
        print(message)
    print(
        f"accepted {report.accepted}, rejected {len(report.rejected)}, unparsed {len(report.unparsed)}, "
        f"not stored {report.failed}"
    )
    if accepted_ids is not None:
        accepted_ids.extend(lines.accepted_ids)
    if report.failed:
        return NOT_STORED
    return SOME_REFUSED if report.rejected or report.unparsed else ALL_ACCEPTED
