"""The Python client: `Client` for threaded code, `AsyncClient` for asyncio.

    from activity_client import Client

    with Client("127.0.0.1:50051") as client:
        activity_id = client.track(
            action="view",
            target={"type": "product", "id": "sku-1"},
            user={"anonymous_id": "a-1"},
        )

`track()` gives the activity an id when it has none (and returns it), stamps `occurred_at` when unset,
serializes it and puts it in a bounded buffer; it never touches the network. A sender thread takes
batches off the buffer, `batch_size` activities (or `max_batch_bytes`) at a time, or fewer once the
oldest has waited `flush_interval` seconds, and sends them over one `StreamActivities` stream, one batch
at a time: batches are stored in the order they were tracked, and a batch is resent before the next one
goes. A batch the server asks to be resent (`RESOURCE_EXHAUSTED`, `UNAVAILABLE`, the stream breaking)
goes again after the server's `retry_delay` (`BatchStatus.retry_delay` or `RetryInfo`), or after an
exponential backoff with jitter when the server named none, with the same ids, so that a resend never
counts an activity twice. After `retry_timeout` seconds of resending (or `max_attempts` sends), or at
once when the server refuses the batch as a whole for good (`INVALID_ARGUMENT`, ...), its activities are
counted as failed.

`on_rejection` hears of each activity the server rejected; `on_batch` of what became of every batch
(`BatchResult`: where it starts among the tracked activities, how many were accepted, the rejections,
and why it failed, if it did), so a caller can tell which of its activities were not stored.

When the buffer is full, `when_full` decides: "block" waits up to `block_timeout` seconds for room, then
raises `BufferFull`; "drop" drops the activity and counts it; "raise" raises `BufferFull` at once.
Nothing is lost without a count: `stats` has tracked, accepted, rejected, failed and dropped activities.

`close()` stops taking activities, sends what is buffered (within its timeout; what is left then is
counted as failed) and closes the connection. A client that was not closed is closed at interpreter
exit, within `exit_timeout`.

Why a sender thread, for `AsyncClient` too: sending never competes with the application's event loop,
a loop blocked by other work never holds back a batch, and the buffer can be sent at interpreter exit
even when the loop that made the client is gone.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import os
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import grpc

from activity_client.proto.activity.v1 import activity_pb2 as pb
from activity_client.trailers import retry_delay_from_trailer

__all__ = [
    "AsyncClient",
    "BatchHandler",
    "BatchResult",
    "BufferFull",
    "Client",
    "ClientClosed",
    "ClientStats",
    "RejectionHandler",
    "WhenFull",
]

log = logging.getLogger(__name__)

WhenFull = Literal["block", "drop", "raise"]
RejectionHandler = Callable[[pb.Activity, pb.Rejection], None]

STREAM_METHOD = "/activity.v1.ActivityService/StreamActivities"
# Batch outcomes that ask for a resend; any other non-OK code is final for the batch.
RESEND_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], grpc.StatusCode.UNAVAILABLE.value[0]})
# Ways a stream can end that a new stream may not meet.
STREAM_RESEND = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
_CODES = {code.value[0]: code for code in grpc.StatusCode}
INITIAL_BACKOFF_S = 0.1
MAX_BACKOFF_S = 10.0


class BufferFull(Exception):
    """The client's buffer is full (`when_full` is "raise", or "block" and the wait timed out)."""


class ClientClosed(Exception):
    """The client was closed; it takes no more activities."""


@dataclass(frozen=True)
class ClientStats:
    """Counters since the client was made, in activities unless named otherwise."""

    tracked: int
    """Taken into the buffer."""
    accepted: int
    """Stored by the server."""
    rejected: int
    """Refused by the server's validation (see `on_rejection`); never resent."""
    failed: int
    """Not stored: resent until `retry_timeout` in vain, refused as a whole batch, or left at close."""
    dropped: int
    """Not taken: the buffer was full and `when_full` is "drop"."""
    full: int
    """Times `track()` found the buffer full, whatever `when_full` says."""
    batches: int
    """Batches the server answered."""
    resends: int
    """Batches sent again."""
    buffered: int
    """Waiting in the buffer now."""


@dataclass(frozen=True)
class BatchResult:
    """What became of one batch, given to `on_batch` once the batch is settled (answered, or given up).

    Activities are numbered in the order the buffer took them (`stats.tracked` of them; dropped ones get
    no number), from 0; a batch holds the `size` activities numbered `first` on. Every tracked activity is
    in exactly one result, and results come in that order.
    """

    first: int
    """The number of the batch's first activity: how many were tracked before it."""
    size: int
    """How many activities the batch holds."""
    accepted: int
    """How many the server stored."""
    rejections: tuple[pb.Rejection, ...] = ()
    """The server's rejections; the `index` of each counts from `first`."""
    code: grpc.StatusCode | None = None
    """When the batch failed, the gRPC status of its last try; None when it was answered, or when it
    failed for no gRPC status (the stream ended, the client was closed)."""
    error: str | None = None
    """Why the batch failed: the message of its last try (the server's, or the client's own when the
    stream ended or the client was closed); None when it was answered. A failed batch's `size`
    activities all count as failed."""

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def positions(self) -> range:
        """The numbers of the batch's activities."""
        return range(self.first, self.first + self.size)


BatchHandler = Callable[[BatchResult], None]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _timestamp(field_tag: bytes, ns: int) -> bytes:
    """A google.protobuf.Timestamp field, encoded."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    body = b"\x08" + _varint(seconds) + (b"\x10" + _varint(nanos) if nanos else b"")
    return field_tag + _varint(len(body)) + body


def _prepare(activity: pb.Activity | None, fields: dict[str, Any]) -> tuple[str, bytes]:
    """The activity's id and its serialized form, with an id and occurred_at added when missing.

    The missing fields are appended to the serialized bytes (protobuf reads the last value of a field),
    so the caller's message is neither changed nor copied, and may be reused at once.
    """
    if activity is None:
        activity = pb.Activity(**fields)
    elif fields:
        raise TypeError("track() takes an Activity or keyword fields, not both")
    data = activity.SerializeToString()
    activity_id = activity.id
    if not activity_id:
        activity_id = str(uuid.uuid4())
        data += b"\x0a\x24" + activity_id.encode()
    if not activity.HasField("occurred_at"):
        data += _timestamp(b"\x42", time.time_ns())
    return activity_id, data


def _positive(name: str, value: float) -> None:
    if not value > 0 or value == math.inf:
        raise ValueError(f"{name}: must be a finite number greater than zero, got {value!r}")


@dataclass
class _Retry:
    delay_s: float | None
    code: grpc.StatusCode | None
    message: str

    @property
    def reason(self) -> str:
        return f"{self.code.name}: {self.message}" if self.code is not None else self.message


@dataclass
class _Fail:
    code: grpc.StatusCode | None
    message: str

    @property
    def reason(self) -> str:
        return f"{self.code.name}: {self.message}" if self.code is not None else self.message


class _Core:
    """The buffer and the sender thread, shared by both clients."""

    def __init__(
        self,
        target: str,
        *,
        batch_size: int,
        flush_interval: float,
        max_batch_bytes: int,
        buffer_size: int,
        when_full: WhenFull,
        block_timeout: float,
        retry_timeout: float,
        max_attempts: int | None,
        request_timeout: float,
        exit_timeout: float,
        credentials: grpc.ChannelCredentials | None,
        metadata: Sequence[tuple[str, str]],
        channel_options: Sequence[tuple[str, Any]],
        on_rejection: RejectionHandler | None,
        on_batch: BatchHandler | None,
    ) -> None:
        for name, number in (
            ("batch_size", batch_size),
            ("flush_interval", flush_interval),
            ("max_batch_bytes", max_batch_bytes),
            ("buffer_size", buffer_size),
            ("block_timeout", block_timeout),
            ("retry_timeout", retry_timeout),
            ("request_timeout", request_timeout),
            ("exit_timeout", exit_timeout),
        ):
            _positive(name, number)
        if when_full not in ("block", "drop", "raise"):
            raise ValueError(f"when_full: must be 'block', 'drop' or 'raise', got {when_full!r}")
        if max_attempts is not None and (isinstance(max_attempts, bool) or not max_attempts >= 1):
            raise ValueError(f"max_attempts: must be None or at least 1, got {max_attempts!r}")
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_batch_bytes = max_batch_bytes
        self.buffer_size = buffer_size
        self.when_full = when_full
        self.block_timeout = block_timeout
        self.retry_timeout = retry_timeout
        self.max_attempts = max_attempts
        self.request_timeout = request_timeout
        self.exit_timeout = exit_timeout
        self.metadata = tuple(metadata)
        self.on_rejection = on_rejection
        self.on_batch = on_batch

        self._lock = threading.Lock()
        self._has_data = threading.Condition(self._lock)
        self._has_space = threading.Condition(self._lock)
        self._settled_cv = threading.Condition(self._lock)
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._items: deque[tuple[bytes, float]] = deque()
        self._closed = False
        self._abort = threading.Event()
        # Counters: taken into the buffer; taken off it by the sender; answered or given up.
        self._enqueued = 0
        self._taken = 0
        self._settled = 0
        self._flush_to = 0
        self._accepted = self._rejected = self._failed = self._dropped = self._full = 0
        self._batches = self._resends = 0

        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=list(channel_options))
        else:
            self._channel = grpc.secure_channel(target, credentials, options=list(channel_options))
        self._stream = self._channel.stream_stream(
            STREAM_METHOD,
            request_serializer=None,
            response_deserializer=pb.StreamActivitiesResponse.FromString,
        )
        self._requests: queue.SimpleQueue[bytes | None] | None = None
        self._call: Any = None
        self._sequence = 0
        self._thread = threading.Thread(target=self._run, name="activity-client-sender", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)

    # -- the caller's side --------------------------------------------------------------------------

    def stats(self) -> ClientStats:
        with self._lock:
            return ClientStats(
                tracked=self._enqueued,
                accepted=self._accepted,
                rejected=self._rejected,
                failed=self._failed,
                dropped=self._dropped,
                full=self._full,
                batches=self._batches,
                resends=self._resends,
                buffered=len(self._items),
            )

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("the client is closed")

    def _append(self, data: bytes) -> None:
        self._items.append((data, time.monotonic()))
        self._enqueued += 1
        n = len(self._items)
        if n == 1 or n == self.batch_size:
            self._has_data.notify()

    def _on_full(self) -> bool:
        """Count a full buffer and apply `when_full`: True to wait for room, False when dropped."""
        self._full += 1
        if self.when_full == "drop":
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning("activity buffer full: dropping activities", extra={"dropped": self._dropped})
            return False
        if self.when_full == "raise":
            raise BufferFull(f"the buffer holds {self.buffer_size} activities (buffer_size)")
        return True

    def put(self, data: bytes) -> None:
        """Buffer one serialized activity, waiting (for "block") on this thread."""
        with self._lock:
            self._check_open()
            if len(self._items) >= self.buffer_size:
                if not self._on_full():
                    return
                if not self._has_space.wait_for(
                    lambda: self._closed or len(self._items) < self.buffer_size, self.block_timeout
                ):
                    raise BufferFull(
                        f"the buffer stayed full ({self.buffer_size} activities) for {self.block_timeout}s"
                    )
                self._check_open()
            self._append(data)

    async def put_async(self, data: bytes) -> None:
        """Buffer one serialized activity, waiting (for "block") without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.block_timeout
        counted = False
        while True:
            with self._lock:
                self._check_open()
                if len(self._items) < self.buffer_size:
                    self._append(data)
                    return
                if not counted:
                    counted = True
                    if not self._on_full():
                        return
                room: asyncio.Future[None] = loop.create_future()
                self._async_waiters.append((loop, room))
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    await room
            except TimeoutError:
                raise BufferFull(
                    f"the buffer stayed full ({self.buffer_size} activities) for {self.block_timeout}s"
                ) from None

    def _wake_async_waiters(self) -> None:
        """Called with the lock held."""
        waiters, self._async_waiters = self._async_waiters, []
        for loop, room in waiters:
            # A closed loop raises RuntimeError: nobody waits there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, room)

    def flush(self, timeout: float | None) -> bool:
        """Send what is buffered now; True once all of it is answered or given up, False on timeout."""
        with self._lock:
            target = self._enqueued
            self._flush_to = max(self._flush_to, target)
            self._has_data.notify()
            return self._settled_cv.wait_for(lambda: self._settled >= target, timeout)

    def close(self, timeout: float | None) -> None:
        with self._lock:
            first = not self._closed
            self._closed = True
            self._has_data.notify()
            self._has_space.notify_all()
            self._wake_async_waiters()
        if first:
            atexit.unregister(self._close_at_exit)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            call = self._call
            if call is not None:
                call.cancel()
            with self._lock:
                self._has_data.notify()
            self._thread.join(5.0)
        with self._lock:
            left = len(self._items)
            # The buffer holds the activities numbered from the count taken off it.
            numbered_from = self._taken
            self._items.clear()
        if left:
            log.warning("client closed with activities not sent", extra={"activities": left})
            self._report_batch(
                BatchResult(numbered_from, left, 0, error="the client was closed before they were sent")
            )
            with self._lock:
                self._failed += left
                self._settled += left
                self._settled_cv.notify_all()
        if first:
            self._channel.close()

    def _close_at_exit(self) -> None:
        self.close(self.exit_timeout)

    # -- the sender thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                taken = self._take()
                if taken is None:
                    return
                self._deliver(*taken)
        except Exception:
            log.exception("the client's sender stopped on an unexpected error")
        finally:
            self._end_stream()

    def _take(self) -> tuple[int, list[bytes]] | None:
        """The next batch and the number of its first activity, once it is due; None when the client is
        closed and the buffer is empty."""
        with self._lock:
            while True:
                if self._abort.is_set():
                    return None
                if self._items:
                    if len(self._items) >= self.batch_size or self._taken < self._flush_to or self._closed:
                        break
                    wait = self._items[0][1] + self.flush_interval - time.monotonic()
                    if wait <= 0:
                        break
                    self._has_data.wait(wait)
                elif self._closed:
                    return None
                else:
                    self._has_data.wait()
            batch: list[bytes] = []
            size = 0
            while self._items and len(batch) < self.batch_size:
                data = self._items[0][0]
                if batch and size + len(data) > self.max_batch_bytes:
                    break
                self._items.popleft()
                batch.append(data)
                size += len(data) + 6
            first = self._taken
            self._taken += len(batch)
            self._has_space.notify_all()
            self._wake_async_waiters()
            return first, batch

    def _settle(self, batch: list[bytes], accepted: int, rejected: int, failed: int) -> None:
        with self._lock:
            self._accepted += accepted
            self._rejected += rejected
            self._failed += failed
            self._settled += len(batch)
            self._settled_cv.notify_all()

    def _deliver(self, first: int, batch: list[bytes]) -> None:
        body = b"".join(b"\x12" + _varint(len(data)) + data for data in batch)
        started = time.monotonic()
        attempt = 0
        while True:
            outcome = self._attempt(body)
            if isinstance(outcome, pb.StreamActivitiesResponse):
                status = outcome.status
                with self._lock:
                    self._batches += 1
                if status.code == 0:
                    self._report_rejections(batch, outcome)
                    result = BatchResult(first, len(batch), outcome.accepted_count, tuple(outcome.rejections))
                    self._report_batch(result)
                    self._settle(batch, outcome.accepted_count, len(outcome.rejections), 0)
                    return
                code = _CODES.get(status.code)
                message = status.message if code is not None else f"{status.code}: {status.message}"
                if status.code not in RESEND_CODES:
                    self._give_up(first, batch, _Fail(code, message))
                    return
                delay = status.retry_delay.ToNanoseconds() / 1e9 if status.HasField("retry_delay") else None
                outcome = _Retry(delay or None, code, message)
            if isinstance(outcome, _Fail):
                self._give_up(first, batch, outcome)
                return
            attempt += 1
            if self.max_attempts is not None and attempt >= self.max_attempts:
                self._give_up(first, batch, outcome, f"still failing after {attempt} attempts: ")
                return
            if outcome.delay_s is not None:
                # Honour the server's delay; a little jitter keeps many clients from coming back at once.
                delay_s = outcome.delay_s * random.uniform(1.0, 1.2)
            else:
                delay_s = random.uniform(0.5, 1.0) * min(
                    MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2 ** (attempt - 1)
                )
            if time.monotonic() + delay_s - started > self.retry_timeout:
                self._give_up(first, batch, outcome, f"still failing after {self.retry_timeout}s: ")
                return
            log.info(
                "resending a batch",
                extra={"activities": len(batch), "delay_s": delay_s, "error": outcome.reason},
            )
            if self._abort.wait(delay_s):
                closed = _Fail(None, "the client was closed before the batch was stored")
                self._give_up(first, batch, closed)
                return
            with self._lock:
                self._resends += 1

    def _give_up(self, first: int, batch: list[bytes], why: _Retry | _Fail, prefix: str = "") -> None:
        log.warning("activities not stored", extra={"activities": len(batch), "error": prefix + why.reason})
        self._report_batch(BatchResult(first, len(batch), 0, code=why.code, error=why.message))
        self._settle(batch, 0, 0, len(batch))

    def _report_batch(self, result: BatchResult) -> None:
        if self.on_batch is None:
            return
        try:
            self.on_batch(result)
        except Exception:
            log.exception("on_batch raised")

    def _report_rejections(self, batch: list[bytes], response: pb.StreamActivitiesResponse) -> None:
        for rejection in response.rejections:
            log.debug(
                "activity rejected",
                extra={
                    "activity_id": rejection.activity_id,
                    "field": rejection.field,
                    "error": rejection.message,
                },
            )
            if self.on_rejection is None or rejection.index >= len(batch):
                continue
            try:
                self.on_rejection(pb.Activity.FromString(batch[rejection.index]), rejection)
            except Exception:
                log.exception("on_rejection raised")

    def _attempt(self, body: bytes) -> pb.StreamActivitiesResponse | _Retry | _Fail:
        """Send one batch on the stream (opening one when needed) and read its answer."""
        self._sequence += 1
        raw = b"\x08" + _varint(self._sequence) + body + _timestamp(b"\x1a", time.time_ns())
        if self._call is None:
            self._requests = queue.SimpleQueue()
            self._call = self._stream(_requests(self._requests), metadata=self.metadata)
        call = self._call
        assert self._requests is not None
        self._requests.put(raw)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            call.cancel()

        watchdog = threading.Timer(self.request_timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            response: pb.StreamActivitiesResponse = next(call)
        except StopIteration:
            self._end_stream()
            return _Retry(None, None, "the server ended the stream")
        except grpc.RpcError as error:
            self._end_stream()
            # Cancelled by the watchdog: the answer took longer than request_timeout.
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired.is_set() else error.code()
            details = "Deadline Exceeded" if expired.is_set() else str(error.details())
            if code in STREAM_RESEND:
                return _Retry(retry_delay_from_trailer(error.trailing_metadata()), code, details)
            return _Fail(code, details)
        finally:
            watchdog.cancel()
        if response.sequence != self._sequence:
            self._end_stream()
            return _Retry(None, None, f"answer for batch {response.sequence}, expected {self._sequence}")
        return response

    def _end_stream(self) -> None:
        call, requests = self._call, self._requests
        self._call = self._requests = None
        if requests is not None:
            requests.put(None)
        if call is not None:
            call.cancel()


def _requests(source: queue.SimpleQueue[bytes | None]) -> Iterator[bytes]:
    while (raw := source.get()) is not None:
        yield raw


def _resolve(room: asyncio.Future[None]) -> None:
    if not room.done():
        room.set_result(None)


class _ClientBase:
    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_batch_bytes: int = 1024 * 1024,
        buffer_size: int = 10_000,
        when_full: WhenFull = "block",
        block_timeout: float = 1.0,
        retry_timeout: float = 60.0,
        request_timeout: float = 30.0,
        exit_timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Sequence[tuple[str, Any]] = (),
        on_rejection: RejectionHandler | None = None,
        api_key: str | None = None,
        max_attempts: int | None = None,
        on_batch: BatchHandler | None = None,
    ) -> None:
        """Connect to the collector at `target` (HOST:PORT). Every number must be greater than zero.

        batch_size: most activities per batch. flush_interval: longest wait, in seconds, for a batch to
        fill. max_batch_bytes: most serialized bytes per batch (keep it under the server's
        max_request_bytes). buffer_size: most activities waiting to be sent. when_full and
        block_timeout: what `track()` does when the buffer is full. retry_timeout: how long, in
        seconds, a batch is resent before its activities count as failed. max_attempts: how many times,
        at most, a batch is sent (the first time included) before its activities count as failed;
        None: as often as retry_timeout allows. request_timeout: longest wait for the answer to one
        batch. exit_timeout: how long sending may take at interpreter exit
        for a client not closed. credentials: TLS credentials (`grpc.ssl_channel_credentials()`);
        None: plain text. metadata: headers sent with the stream. channel_options: gRPC channel
        options. on_rejection: called on the sender thread with each activity the server rejected and
        its `Rejection`. on_batch: called with the `BatchResult` of every batch once it is settled,
        before `flush()` or `close()` returns for it: on the sender thread, or, for activities still
        buffered when `close()` gives up, on the thread that closes. api_key: the tenant's API key,
        sent as `authorization: Bearer <key>`; None: the environment variable ACTIVITY_API_KEY, if set.
        """
        key = api_key if api_key is not None else os.environ.get("ACTIVITY_API_KEY")
        if key:
            metadata = (*metadata, ("authorization", f"Bearer {key}"))
        self._core = _Core(
            target,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_batch_bytes=max_batch_bytes,
            buffer_size=buffer_size,
            when_full=when_full,
            block_timeout=block_timeout,
            retry_timeout=retry_timeout,
            max_attempts=max_attempts,
            request_timeout=request_timeout,
            exit_timeout=exit_timeout,
            credentials=credentials,
            metadata=metadata,
            channel_options=channel_options,
            on_rejection=on_rejection,
            on_batch=on_batch,
        )

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the client's counters."""
        return self._core.stats()


class Client(_ClientBase):
    """Batches activities in the background; every method may be called from any thread."""

    def track(self, activity: pb.Activity | None = None, /, **fields: Any) -> str:
        """Buffer an activity, given as an `Activity` or as its fields (`action="view",
        target={"type": "product", "id": "sku-1"}, ...`), and return its id. Raises `BufferFull`
        (see `when_full`) and `ClientClosed`."""
        activity_id, data = _prepare(activity, fields)
        self._core.put(data)
        return activity_id

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything buffered now and wait until it is answered (or given up). False when
        `timeout` seconds passed first."""
        return self._core.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking activities, send what is buffered within `timeout` seconds (what is left then is
        counted as failed), and close the connection. Idempotent."""
        self._core.close(timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient(_ClientBase):
    """`Client` for asyncio: `track()` waits for room in the buffer without blocking the event loop."""

    async def track(self, activity: pb.Activity | None = None, /, **fields: Any) -> str:
        """Buffer an activity, given as an `Activity` or as its fields, and return its id. Raises
        `BufferFull` (see `when_full`) and `ClientClosed`."""
        activity_id, data = _prepare(activity, fields)
        await self._core.put_async(data)
        return activity_id

    async def flush(self, timeout: float | None = None) -> bool:
        """Send everything buffered now and wait until it is answered (or given up). False when
        `timeout` seconds passed first."""
        return await asyncio.to_thread(self._core.flush, timeout)

    async def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking activities, send what is buffered within `timeout` seconds (what is left then is
        counted as failed), and close the connection. Idempotent."""
        await asyncio.to_thread(self._core.close, timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
