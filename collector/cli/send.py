"""`activity-collector send FILE`: send activities from JSON Lines to a running server, in batches.

Each line is one Activity in the proto's JSON mapping (field names as in the proto or in lowerCamelCase).
Lines that do not parse are reported and not sent. Batches refused as a whole for a passing reason
(RESOURCE_EXHAUSTED, UNAVAILABLE) are resent after the delay the server asks for; activities keep their
ids across resends (ids are assigned here when a line has none), so a resend never counts one twice.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import grpc
from activity_client.trailers import retry_delay_from_trailer
from google.protobuf import json_format

from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

RETRYABLE = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
# Refusals of the key: every further batch would be refused the same way.
REFUSED_KEY = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class KeyRefused(Exception):
    """The server refused the API key; nothing more is sent."""


@dataclass
class SendReport:
    accepted: int = 0
    rejected: list[str] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    failed: int = 0


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
            activity.id = str(uuid.uuid4())
        yield number, activity


def _send_batch(
    stub: pb_grpc.ActivityServiceStub,
    batch: list[tuple[int, pb.Activity]],
    timeout: float,
    attempts: int,
    report: SendReport,
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    request = pb.TrackActivitiesRequest(activities=[a for _, a in batch])
    for attempt in range(1, attempts + 1):
        request.sent_at.GetCurrentTime()
        try:
            response = stub.TrackActivities(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            code = error.code()
            if code in RETRYABLE and attempt < attempts:
                delay = retry_delay_from_trailer(error.trailing_metadata()) or min(10.0, 0.25 * 2**attempt)
                time.sleep(delay)
                continue
            report.failed += len(batch)
            print(
                f"lines {batch[0][0]}-{batch[-1][0]}: not stored: {code.name}: {error.details()}",
                file=sys.stderr,
            )
            if code in REFUSED_KEY:
                raise KeyRefused(str(error.details())) from None
            return
        report.accepted += response.accepted_count
        for r in response.rejections:
            line = batch[r.index][0]
            reason = pb.RejectionReason.Name(r.reason).removeprefix("REJECTION_REASON_")
            report.rejected.append(f"line {line}: {r.field or 'activity'}: {r.message} [{reason}]")
        return


def send(
    path: str, target: str, batch_size: int, timeout: float, attempts: int = 6, api_key: str | None = None
) -> int:
    """Send the activities of `path` (JSON Lines; - for stdin) to `target`, with `api_key` as the
    `authorization: Bearer` metadata of every call when given. Exit status: 0 all accepted, 1 some
    rejected or unparsed, 2 some not stored."""
    if batch_size <= 0 or attempts <= 0:
        print(
            "activity-collector send: --batch-size and --attempts must be greater than zero", file=sys.stderr
        )
        return 2
    report = SendReport()
    stream: IO[str] = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    activities = read_activities(stream, report)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.ActivityServiceStub(channel)  # type: ignore[no-untyped-call]
            batch: list[tuple[int, pb.Activity]] = []
            for item in activities:
                batch.append(item)
                if len(batch) >= batch_size:
                    _send_batch(stub, batch, timeout, attempts, report, metadata)
                    batch = []
            if batch:
                _send_batch(stub, batch, timeout, attempts, report, metadata)
    except KeyRefused:
        unsent = sum(1 for _ in activities)
        report.failed += unsent
        hint = "" if api_key else " (no key given: set ACTIVITY_API_KEY or pass --api-key)"
        print(f"the server refused the API key{hint}; {unsent} more activities not sent", file=sys.stderr)
    finally:
        if stream is not sys.stdin:
            stream.close()
    for message in report.unparsed + report.rejected:
        print(message)
    print(
        f"accepted {report.accepted}, rejected {len(report.rejected)}, unparsed {len(report.unparsed)}, "
        f"not stored {report.failed}"
    )
    if report.failed:
        return 2
    return 1 if report.rejected or report.unparsed else 0
