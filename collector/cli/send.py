"""`activity-collector send FILE`: send activities from JSON Lines to a running server, in batches.

Each line is one Activity in the proto's JSON mapping (field names as in the proto or in lowerCamelCase).
Lines that do not parse are reported and not sent. The others go through the Python client
(`activity_client.Client`), which sends them in batches over one StreamActivities stream and resends a
batch refused as a whole for a passing reason (RESOURCE_EXHAUSTED, UNAVAILABLE) after the delay the
server asks for, up to --attempts times. Activities keep their ids across resends (the client gives one
to a line that has none before it is sent), so a resend never counts one twice.

The client numbers the activities in the order they were tracked and says what became of each batch
(`BatchResult`), so every rejection and every batch not stored is reported with its lines.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from activity_client.client import BatchResult, BufferFull, Client
from activity_client.proto.activity.v1 import activity_pb2 as pb
from google.protobuf import json_format

from collector.cli.common import CommandError, Configuration, Subparsers

# Refusals of the key: every further batch would be refused the same way.
REFUSED_KEY = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
# --attempts bounds the resends of a batch, and --timeout each try: the client needs no time limit of
# its own on top (its retry_timeout must be finite: ten years).
NO_RETRY_TIMEOUT_S = 10 * 365 * 24 * 3600.0
# While the client resends a batch, track() waits for room in its buffer this long at a time, then looks
# whether the key was refused meanwhile.
BLOCK_S = 1.0


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("send", help="send activities from a JSON Lines file to a running server")
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
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    return send(
        args.file,
        args.target,
        args.batch_size,
        args.timeout,
        args.attempts,
        args.api_key,
        tls=args.tls,
        ca_cert=args.ca_cert,
    )


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


def open_input(path: str) -> IO[str]:
    """The lines to send. Bytes that are not UTF-8 reach the parser as such (and fail it, for their line
    alone) rather than stopping the reading."""
    if path == "-":
        if isinstance(sys.stdin, io.TextIOWrapper):
            sys.stdin.reconfigure(errors="surrogateescape")
        return sys.stdin
    try:
        return open(path, encoding="utf-8", errors="surrogateescape")
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
        yield number, activity


class _Lines:
    """The line of each activity tracked, by the number the client gives it; reports what became of each
    batch (`on_batch`, called on the client's sender thread, in order)."""

    def __init__(self, report: SendReport) -> None:
        self.report = report
        self.lines: list[int] = []
        self.key_refused = threading.Event()
        # Activities of the batches that failed after the key was refused: reported in one line.
        self.after_refusal = 0

    def track(self, client: Client, number: int, activity: pb.Activity) -> bool:
        """Hand `activity` (of line `number`) to the client; False when the key was refused first."""
        # Listed before track(): the answer to its batch may come before track() returns.
        self.lines.append(number)
        while not self.key_refused.is_set():
            try:
                client.track(activity)
                return True
            except BufferFull:
                continue  # the client is resending a batch: wait on
        self.lines.pop()
        return False

    def settled(self, result: BatchResult) -> None:
        lines = self.lines[result.first : result.first + result.size]
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
) -> int:
    """Send the activities of `path` (JSON Lines; - for stdin) to `target`, with `api_key` as the
    `authorization: Bearer` metadata when given, over TLS with `tls` or `ca_cert`. Exit status: 0 all
    accepted, 1 some rejected or unparsed, 2 some not stored (or the command cannot start)."""
    if batch_size <= 0 or attempts <= 0:
        print(
            "activity-collector send: --batch-size and --attempts must be greater than zero", file=sys.stderr
        )
        return 2
    if not 0 < timeout < math.inf:
        print("activity-collector send: --timeout must be a number of seconds above zero", file=sys.stderr)
        return 2
    try:
        credentials = channel_credentials(tls, ca_cert)
        stream = open_input(path)
    except CommandError as error:
        print(f"activity-collector send: {error}", file=sys.stderr)
        return 2
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
    if report.failed:
        return 2
    return 1 if report.rejected or report.unparsed else 0
