"""The gRPC handlers of `activity.v1.ActivityService`.

Handlers take requests as raw bytes and parse them themselves, so that a request too large or that does
not parse gets a precise INVALID_ARGUMENT (or a per-activity rejection) instead of a transport error.
Every request goes the same way: parse, check the request as a whole, validate each activity, hand the
valid ones to the pipeline, and answer once they are committed. Errors map to gRPC codes here and
only here; no exception reaches a client as UNKNOWN.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import operator
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message

from collector.config import Settings
from collector.doors.auth import TENANT
from collector.doors.refusal_hold import RefusalHold
from collector.doors.trailers import status_details
from collector.logs import REQUEST_ID, new_request_id
from core import fastpath
from core.proto.activity.v1 import activity_pb2 as pb
from core.validation import (
    INVALID_VALUE,
    InvalidActivity,
    Rejection,
    check_activity,
    validate_activities,
)
from core.wire import WireError, describe_unparsable, salvage_batch
from workers.commit.pipeline import Overloaded, Pipeline, Submission, Unavailable
from workers.processors import ProcessorChain
from workers.processors.quota import QuotaExceeded, Quotas
from workers.processors.rejections import RejectionRecorder
from workers.rows import FastSpans

log = logging.getLogger(__name__)

SERVICE_NAME = "activity.v1.ActivityService"
# End-of-stream marker returned by ServicerContext.read(); missing from the type stubs.
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009
_NS = 1_000_000_000
# One fast span as `core.fastpath.check` packs it: index, start, end, little-endian.
_SPAN = struct.Struct("<III")
_first = operator.itemgetter(0)
_index = operator.attrgetter("index")
# Times are handled in int64 nanoseconds (they end in 2262); a client clock past this is broken.
_MAX_SECONDS = 7_258_118_400  # 2200-01-01T00:00:00Z


def _stream_sequence(raw: bytes) -> int:
    """The sequence number of a stream batch that failed as a whole, if it can be read at all."""
    try:
        return int(fastpath.StreamHeader.FromString(raw).sequence)
    except DecodeError:
        return 0


class InvalidRequest(Exception):
    """The request as a whole cannot be processed; nothing of it was stored."""


class RequestFailed(Exception):
    """A request failed as a whole: the gRPC code to answer, its message and the retry delay to offer."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_delay_s: float | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_delay_s = retry_delay_s


@dataclass(frozen=True)
class RequestKind:
    request_class: type[Message]
    activities_field: int
    repeated: bool
    header_class: Any
    """Reads only the request's own fields, for the compiled path; None: Python path only."""


_fast_headers = fastpath.available
ONE = RequestKind(pb.TrackActivityRequest, 1, False, fastpath.OneHeader if _fast_headers else None)
BATCH = RequestKind(pb.TrackActivitiesRequest, 1, True, fastpath.BatchHeader if _fast_headers else None)
STREAM = RequestKind(pb.StreamActivitiesRequest, 2, True, fastpath.StreamHeader if _fast_headers else None)


@dataclass(slots=True)
class Evaluated:
    """A checked request: its rejections, and the valid activities in the form the pipeline takes."""

    sequence: int
    sent_ns: int | None
    skew_ns: int
    count: int
    items: list[tuple[int, pb.Activity]]
    rejections: list[Rejection]
    fast: FastSpans | None
    single_id: str = ""
    """TrackActivity: the id of its activity as sent ('' when none)."""
    dropped: int = 0
    """Activities a processor dropped: acknowledged, not stored (counted by the processor chain)."""
    flags: dict[int, tuple[str, ...]] | None = None
    """The rules each activity a processor flagged broke, by index (stored in `plan_violations`)."""
    payloads: dict[int, bytes] = dataclasses.field(default_factory=dict)
    """The rejected activities' bytes as sent, by index, for the rejections kept (filled on rejection
    only: nothing on the happy path)."""
    rules: dict[int, str] | None = None
    """The processor rule behind each refusal, by index."""

    @property
    def to_store(self) -> int:
        return len(self.items) + (self.fast.count if self.fast is not None else 0)

    @property
    def accepted(self) -> int:
        return self.to_store + self.dropped


@dataclass
class ServiceStats:
    """Counters since start, in activities unless named otherwise; the totals are sums of the counters
    kept per tenant (and per reason, per code)."""

    requests: int = 0
    received_by_tenant: Counter[str] = dataclasses.field(default_factory=Counter)
    accepted_by_tenant: Counter[str] = dataclasses.field(default_factory=Counter)
    rejected_by_tenant: Counter[tuple[str, int]] = dataclasses.field(default_factory=Counter)
    """Rejected activities by (tenant, RejectionReason value)."""
    failed_by_code: Counter[str] = dataclasses.field(default_factory=Counter)
    """Requests (stream batches included) that failed as a whole, by gRPC status code name."""

    @property
    def received(self) -> int:
        return self.received_by_tenant.total()

    @property
    def accepted(self) -> int:
        return self.accepted_by_tenant.total()

    @property
    def rejected(self) -> int:
        return self.rejected_by_tenant.total()

    @property
    def failed_requests(self) -> int:
        return self.failed_by_code.total()

    def record_rejections(self, tenant: str, rejections: Sequence[Rejection]) -> None:
        for r in rejections:
            self.rejected_by_tenant[(tenant, r.reason)] += 1

    def record_failure(self, code: grpc.StatusCode) -> None:
        self.failed_by_code[code.name] += 1


class ActivityService:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        processors: ProcessorChain | None = None,
        rejections: RejectionRecorder | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.pipeline = pipeline
        self.processors = processors if processors is not None else ProcessorChain()
        self.rejections = rejections
        """Where rejected activities are kept (None: they are not)."""
        self.quotas = quotas
        """Each tenant's activities per second (None: no quotas)."""
        self.refusal_hold = RefusalHold(
            settings.quota_refusal_hold_ms / 1000, settings.quota_refusal_hold_max
        )
        """Where calls refused over their quota wait before they are answered."""
        self.stats = ServiceStats()
        self.on_answer: Callable[[str, float], None] | None = None
        """Called with the call's name (`TrackActivity`, `TrackActivities`, `StreamActivities` for each
        batch, `http` for the HTTP doors) and its seconds, from the handler's start to its answer, for
        every request answered OK (the metrics' latency histogram)."""
        self._draining = asyncio.Event()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._skew_tolerance_ns = int(settings.clock_skew_tolerance_ms * 1_000_000)
        self._limits_tuple = fastpath.limits_tuple(settings.limits)

    def begin_drain(self) -> None:
        """New requests are refused with UNAVAILABLE; streams stop reading new batches and end once
        their in-flight batches are answered; refusals held over quota are answered at once."""
        self._draining.set()
        self.refusal_hold.release_all()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being processed; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _enter(self) -> None:
        self._active += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    # -- shared core -------------------------------------------------------------------------------

    def _sent_ns(self, request: Any, field: str = "sent_at") -> int | None:
        if not request.HasField(field):
            return None
        ts = getattr(request, field)
        if not 0 < ts.seconds < _MAX_SECONDS or not 0 <= ts.nanos < _NS:
            raise InvalidRequest(f"{field}: must be a valid time between 1970 and 2200")
        return int(ts.seconds * _NS + ts.nanos)

    def _skew_ns(self, sent_ns: int | None, received_ns: int) -> int:
        skew_ns = 0 if sent_ns is None else received_ns - sent_ns
        return 0 if abs(skew_ns) <= self._skew_tolerance_ns else skew_ns

    def _check_count(self, count: int) -> None:
        if count == 0:
            raise InvalidRequest("activities: the batch is empty; send at least one activity")
        if count > self.limits.max_batch_activities:
            raise InvalidRequest(
                f"activities: the batch has {count} activities; "
                f"the limit is {self.limits.max_batch_activities}"
            )

    def _check_size(self, raw: bytes) -> None:
        if len(raw) > self.limits.max_request_bytes:
            raise InvalidRequest(
                f"the request has {len(raw)} bytes; the limit is {self.limits.max_request_bytes} "
                "(max_request_bytes): split the batch"
            )

    def _parse(self, raw: bytes, kind: RequestKind) -> tuple[Any, dict[int, tuple[str, str]] | None]:
        try:
            return kind.request_class.FromString(raw), None
        except DecodeError:
            pass
        try:
            return salvage_batch(raw, kind.request_class, kind.activities_field)
        except (WireError, DecodeError) as error:
            raise InvalidRequest(
                f"the request is not a valid {kind.request_class.DESCRIPTOR.name}: {error}"
            ) from None

    def _check_quota(self, raw: bytes, kind: RequestKind) -> None:
        """Refuse a request its tenant's quota cannot hold now (QuotaExceeded), from the number of its
        activities read off its framing, before anything of it is parsed: a tenant over its quota then
        costs the collector little more than the call itself. Tokens are taken in `_store`, once the
        request is known to be valid. Without the compiled module, only `_store` checks."""
        if self.quotas is None or not fastpath.available:
            return
        count = 1
        if kind.repeated:
            try:
                count = fastpath.count_field(raw, kind.activities_field)
            except ValueError:
                return  # broken framing: the request fails as INVALID_ARGUMENT on its own
            if not count:
                return
        self.quotas.check(TENANT.get() or self.settings.default_tenant, count)

    def _evaluate(self, raw: bytes, kind: RequestKind, received_ns: int) -> Evaluated:
        """Check a request and sort its activities into rejections and what goes to the pipeline."""
        self._check_size(raw)
        self._check_quota(raw, kind)
        if kind.header_class is not None:
            fast = self._evaluate_fast(raw, kind, received_ns)
            if fast is not None:
                return fast
        request, unparsed = self._parse(raw, kind)
        sent_ns = self._sent_ns(request)
        skew_ns = self._skew_ns(sent_ns, received_ns)
        if kind.repeated:
            activities = request.activities
        elif request.HasField("activity") or unparsed:
            activities = [request.activity]
        else:
            raise InvalidRequest("activity: required")
        self._check_count(len(activities))
        valid, rejections = validate_activities(activities, self.limits, received_ns, skew_ns, unparsed)
        sequence = request.sequence if kind is STREAM else 0
        items = [(i, activities[i]) for i in valid]
        single_id = "" if kind.repeated else activities[0].id
        evaluated = Evaluated(sequence, sent_ns, skew_ns, len(activities), items, rejections, None, single_id)
        if rejections and self.rejections is not None:
            # Activities that did not parse alone are kept empty: their bytes are not at hand here.
            evaluated.payloads = {
                r.index: b"" if unparsed and r.index in unparsed else activities[r.index].SerializeToString()
                for r in rejections
            }
        return evaluated

    def _evaluate_fast(self, raw: bytes, kind: RequestKind, received_ns: int) -> Evaluated | None:
        """The compiled path; None when it cannot take the request (the Python path then does)."""
        assert kind.header_class is not None
        try:
            header = kind.header_class.FromString(raw)
        except DecodeError:
            return None
        sent_ns = self._sent_ns(header)
        skew_ns = self._skew_ns(sent_ns, received_ns)
        try:
            spans, slow, dups, missing_ids, count = fastpath.check(
                raw, kind.activities_field, self._limits_tuple, received_ns, skew_ns
            )
        except (ValueError, OverflowError):
            return None
        if not kind.repeated and count != 1:
            # No activity (the Python path names the field), or the field twice on the wire, which
            # protobuf merges into one activity.
            return None
        if dups:
            # Rare, and a duplicate's rejection quotes its id as sent: the Python path has it at hand.
            return None
        self._check_count(count)
        items: list[tuple[int, pb.Activity]] = []
        rejections: list[Rejection] = []
        payloads: dict[int, bytes] = {}
        for index, start, end in slow:
            payload = raw[start:end]
            try:
                activity = pb.Activity.FromString(payload)
            except DecodeError:
                field, message = describe_unparsable(payload)
                rejections.append(Rejection(index, "", INVALID_VALUE, field, message))
                payloads[index] = payload
                continue
            try:
                check_activity(activity, self.limits, received_ns, skew_ns)
            except InvalidActivity as error:
                rejections.append(Rejection(index, activity.id, error.reason, error.field, error.message))
                payloads[index] = payload
            else:
                items.append((index, activity))
        sequence = header.sequence if kind is STREAM else 0
        single_id = "" if kind.repeated else header.activity.id
        fast = FastSpans(raw, spans, len(spans) // 12, missing_ids)
        evaluated = Evaluated(sequence, sent_ns, skew_ns, count, items, rejections, fast, single_id)
        evaluated.payloads = payloads
        return evaluated

    async def _store(self, evaluated: Evaluated, received_ns: int) -> dict[int, str]:
        """Hand the valid activities to the pipeline and wait until they are committed."""
        # Set by collector.doors.auth from the call's API key; unset when auth is off.
        tenant = TENANT.get() or self.settings.default_tenant
        if self.quotas is not None:
            # Refused as a whole (RESOURCE_EXHAUSTED, retry delay) when over the tenant's quota.
            self.quotas.take(tenant, evaluated.count)
        self.stats.received_by_tenant[tenant] += evaluated.count
        processors = self.processors
        if processors.active and processors.applies(tenant):
            self._process(evaluated, tenant)
        if evaluated.rejections:
            self.stats.record_rejections(tenant, evaluated.rejections)
            if self.rejections is not None:
                self.rejections.record(
                    tenant, received_ns, evaluated.rejections, evaluated.payloads, evaluated.rules
                )
        accepted = evaluated.accepted
        if not evaluated.to_store:
            self.stats.accepted_by_tenant[tenant] += accepted
            return {}
        future: asyncio.Future[dict[int, str]] = asyncio.get_running_loop().create_future()
        self.pipeline.submit(
            Submission(
                evaluated.items,
                tenant,
                received_ns,
                evaluated.sent_ns,
                evaluated.skew_ns,
                future,
                evaluated.fast,
                evaluated.flags,
            )
        )
        assigned = await future
        self.stats.accepted_by_tenant[tenant] += accepted
        return assigned

    def _process(self, evaluated: Evaluated, tenant: str) -> None:
        """The processor seam, for a tenant some processor judges: every valid activity the processors
        cannot vouch for from its bytes (`ProcessorChain.screen`), parsed, through the chain; what it
        refuses joins the rejections, what it drops leaves the request, what it flags carries its
        rules to its row. The spans they vouch for stay on the compiled path, unparsed."""
        items = evaluated.items
        fast = evaluated.fast
        if fast is not None and fast.count:
            raw = fast.raw
            keep, judge = self.processors.screen(tenant, raw, fast.spans)
            if judge:
                for k in range(len(judge) // 12):
                    index, start, end = _SPAN.unpack_from(judge, 12 * k)
                    items.append((index, pb.Activity.FromString(raw[start:end])))
                items.sort(key=_first)
            if len(keep) != len(fast.spans):
                # missing_ids stays the count before the split: an upper bound, which frame() accepts.
                evaluated.fast = FastSpans(raw, keep, len(keep) // 12, fast.missing_ids) if keep else None
        if not items:
            # Every activity vouched for and none parsed: nothing for the chain to judge.
            return
        result = self.processors.run(tenant, items)
        evaluated.items = result.kept
        evaluated.dropped = result.dropped
        if result.flags:
            evaluated.flags = result.flags
        if result.refused:
            if self.rejections is not None:
                by_index = dict(items)
                evaluated.rules = {r.index: r.verdict.reason for r in result.refused}
                for r in result.refused:
                    evaluated.payloads[r.index] = by_index[r.index].SerializeToString()
            evaluated.rejections.extend(
                Rejection(r.index, r.activity_id, r.verdict.rejection, r.verdict.field, r.verdict.message)
                for r in result.refused
            )
            evaluated.rejections.sort(key=_index)

    # -- error mapping -----------------------------------------------------------------------------

    def _failed(self, error: Exception) -> tuple[grpc.StatusCode, str, float | None]:
        """A request failed as a whole: its status (code, message, retry delay), counted."""
        code, message, delay = self._error_status(error)
        self.stats.record_failure(code)
        return code, message, delay

    def _error_status(self, error: Exception) -> tuple[grpc.StatusCode, str, float | None]:
        if isinstance(error, InvalidRequest):
            return grpc.StatusCode.INVALID_ARGUMENT, str(error), None
        if isinstance(error, Overloaded | QuotaExceeded):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), error.retry_delay_s
        if isinstance(error, Unavailable):
            return grpc.StatusCode.UNAVAILABLE, str(error), error.retry_delay_s
        log.exception("unexpected error in a request", exc_info=error, extra={"error": repr(error)})
        return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}", None

    async def _hold_refusal(self, error: QuotaExceeded) -> None:
        """Hold a refusal over quota (RefusalHold), then shorten its retry delay by the time held."""
        held = await self.refusal_hold.hold(error.retry_delay_s)
        error.retry_delay_s = max(error.retry_delay_s - held, 0.0)

    async def _run(self, body: Callable[[int], Awaitable[bytes]], call: str) -> bytes:
        """Run one unary request, whichever door it came in by; a failure raises RequestFailed."""
        received_ns = time.time_ns()
        start = time.perf_counter()
        self.stats.requests += 1
        self._enter()
        try:
            if self._draining.is_set():
                raise Unavailable("the collector is shutting down", self.pipeline.retry_delay_s)
            answer = await body(received_ns)
        except Exception as error:
            if isinstance(error, QuotaExceeded):
                await self._hold_refusal(error)
            raise RequestFailed(*self._failed(error)) from None
        finally:
            self._leave()
        if self.on_answer is not None:
            self.on_answer(call, time.perf_counter() - start)
        return answer

    async def _unary(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        body: Callable[[int], Awaitable[bytes]],
        call: str,
    ) -> bytes:
        try:
            return await self._run(body, call)
        except RequestFailed as failed:
            # The status set and an empty answer returned (grpc sends no message with a status that is
            # not OK), rather than context.abort: the exception abort raises through grpc's handler
            # costs about a fifth more CPU per call, which a tenant refused over its quota would have
            # every other tenant pay. The request id's wrapper adds `x-request-id`.
            context.set_code(failed.code)
            context.set_details(failed.message)
            context.set_trailing_metadata(
                status_details(failed.code.value[0], failed.message, failed.retry_delay_s)
            )
            return b""

    async def track_activities_raw(self, raw: bytes) -> bytes:
        """TrackActivities without gRPC, for the HTTP door: a serialized TrackActivitiesRequest in, a
        serialized TrackActivitiesResponse out. Same checks, same pipeline, same counters; a request
        that fails as a whole raises RequestFailed."""
        return await self._run(lambda received_ns: self._track_activities(raw, received_ns), "http")

    def reject_translated(self, rejections: Sequence[Rejection]) -> None:
        """Count (and keep) what a translating door refused before it became activities (a call that
        does not map onto one), under the call's tenant, as the service's own rejections are."""
        tenant = TENANT.get() or self.settings.default_tenant
        self.stats.received_by_tenant[tenant] += len(rejections)
        self.stats.record_rejections(tenant, rejections)
        if self.rejections is not None:
            # Nothing protobuf to keep: the call did not map onto an activity.
            self.rejections.record(tenant, time.time_ns(), rejections, {})

    # -- RPCs --------------------------------------------------------------------------------------

    async def track_activity(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        async def body(received_ns: int) -> bytes:
            evaluated = self._evaluate(raw, ONE, received_ns)
            assigned = await self._store(evaluated, received_ns)
            return pb.TrackActivityResponse(
                accepted_count=evaluated.accepted,
                rejections=[r.to_proto() for r in evaluated.rejections],
                activity_id=assigned.get(0, evaluated.single_id),
            ).SerializeToString()

        return await self._unary(context, body, "TrackActivity")

    async def _track_activities(self, raw: bytes, received_ns: int) -> bytes:
        evaluated = self._evaluate(raw, BATCH, received_ns)
        assigned = await self._store(evaluated, received_ns)
        return pb.TrackActivitiesResponse(
            accepted_count=evaluated.accepted,
            rejections=[r.to_proto() for r in evaluated.rejections],
            assigned_ids=assigned,
        ).SerializeToString()

    async def track_activities(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return await self._unary(
            context, lambda received_ns: self._track_activities(raw, received_ns), "TrackActivities"
        )

    async def _stream_batch(self, raw: bytes) -> bytes:
        received_ns = time.time_ns()
        start = time.perf_counter()
        self.stats.requests += 1
        sequence = 0
        try:
            evaluated = self._evaluate(raw, STREAM, received_ns)
            sequence = evaluated.sequence
            assigned = await self._store(evaluated, received_ns)
        except Exception as error:
            if isinstance(error, QuotaExceeded):
                await self._hold_refusal(error)
            code, message, delay = self._failed(error)
            if not sequence:
                sequence = _stream_sequence(raw)
            status = pb.BatchStatus(code=code.value[0], message=message)
            if delay is not None:
                status.retry_delay.FromNanoseconds(int(delay * _NS))
            return pb.StreamActivitiesResponse(sequence=sequence, status=status).SerializeToString()
        if self.on_answer is not None:
            self.on_answer("StreamActivities", time.perf_counter() - start)
        return pb.StreamActivitiesResponse(
            sequence=sequence,
            accepted_count=evaluated.accepted,
            rejections=[r.to_proto() for r in evaluated.rejections],
            assigned_ids=assigned,
        ).SerializeToString()

    async def stream_activities(self, _requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        slots = asyncio.Semaphore(self.limits.max_stream_in_flight)
        write_lock = asyncio.Lock()
        in_flight: set[asyncio.Task[None]] = set()
        drained = asyncio.ensure_future(self._draining.wait())
        self._enter()
        # Set by collector.doors.requestid for the stream; each batch is a request of its own within it.
        stream_id = REQUEST_ID.get() or new_request_id()
        batches = 0

        async def answer(raw: bytes, batch: int) -> None:
            # This task's own context: the id does not leak into the stream's other batches.
            REQUEST_ID.set(f"{stream_id}/{batch}")
            try:
                response = await self._stream_batch(raw)
                async with write_lock:
                    await context.write(response)
            finally:
                slots.release()

        try:
            while not self._draining.is_set():
                await slots.acquire()
                read = asyncio.ensure_future(context.read())
                await asyncio.wait((read, drained), return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    slots.release()
                    break
                raw = read.result()
                if raw is _EOF:
                    slots.release()
                    break
                batches += 1
                task = asyncio.create_task(answer(raw, batches))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        finally:
            drained.cancel()
            for task in in_flight:
                task.cancel()
            self._leave()

    def rpc_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        serialize: Callable[[bytes], bytes] = bytes
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "TrackActivity": grpc.unary_unary_rpc_method_handler(
                    self.track_activity, response_serializer=serialize
                ),
                "TrackActivities": grpc.unary_unary_rpc_method_handler(
                    self.track_activities, response_serializer=serialize
                ),
                "StreamActivities": grpc.stream_stream_rpc_method_handler(
                    self.stream_activities, response_serializer=serialize
                ),
            },
        )
