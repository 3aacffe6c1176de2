"""The load generator: a separate process that drives one scenario against one server over loopback.

    python -m bench.loadgen SPEC_JSON OUT_JSON

It builds its request templates first (untimed), connects, runs a warm-up, then a measured window,
then stops issuing requests and waits for the ones in flight. Requests are raw bytes on the wire
(no serializer), responses are parsed with the generated classes to read accepted counts. At the
window's edges it samples the server's CPU time (/proc/<server_pid>/stat), its own, and the machine's,
so that CPU figures cover exactly the window whose acknowledgements are counted.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import grpc.aio

from bench.procstat import (
    MachineCpu,
    group_cpu_delta,
    group_cpu_s,
    process_cpu_s,
    related_pids,
    self_cpu_s,
)
from bench.workload import (
    METHOD_BATCH,
    METHOD_STREAM,
    METHOD_UNARY,
    SEGMENT,
    SEGMENT_PATH,
    RequestFactory,
    build_templates,
)
from core.proto.activity.v1 import activity_pb2 as pb

_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009
MAX_MESSAGE = 16 * 1024 * 1024
MAX_SAMPLES = 5


@dataclass
class Spec:
    target: str
    """host:port of the gRPC port; for the Segment scenario, the HTTP port's base URL."""
    kind: str
    batch_size: int
    concurrency: int
    """Concurrent callers (unary, batch) or batches in flight per stream (stream)."""
    streams: int = 1
    channels: int = 1
    templates: int = 32
    seed: int = 1
    warmup_s: float = 2.0
    duration_s: float = 10.0
    drain_timeout_s: float = 60.0
    rpc_timeout_s: float = 60.0
    server_pid: int | None = None
    server_marker: str | None = None
    """A path in the command line of the server's helper processes (its data directory)."""
    api_key: str | None = None
    rate: float = 0.0
    """Activities per second offered, spread evenly over the callers (open loop, see `_Pacer`); 0: each
    caller sends its next request when the previous one is answered (closed loop)."""


@dataclass
class Result:
    window_s: float = 0.0
    requests_window: int = 0
    acked_window: int = 0
    requests_total: int = 0
    sent_activities_total: int = 0
    acked_total: int = 0
    rejected_total: int = 0
    failed_activities_total: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    server_cpu_s: float | None = None
    server_group_cpu_s: float | None = None
    server_group_pids: int = 0
    gen_cpu_s: float = 0.0
    machine_busy_cores: float = 0.0
    machine_interrupt_cores: float = 0.0
    load_wall_s: float = 0.0
    first_send_mono: float = 0.0
    last_ack_mono: float = 0.0
    drain_s: float = 0.0
    drain_timed_out: bool = False
    build_s: float = 0.0


class State:
    def __init__(self) -> None:
        self.in_window = False
        self.stop = False
        self.result = Result()
        self.latencies_ns: list[int] = []
        self.first_send: float | None = None
        self.last_ack = 0.0

    def sample(self, text: str) -> None:
        if len(self.result.samples) < MAX_SAMPLES:
            self.result.samples.append(text)

    def sent(self, activities: int) -> None:
        if self.first_send is None:
            self.first_send = time.monotonic()
        self.result.requests_total += 1
        self.result.sent_activities_total += activities

    def answered(self, started_ns: int, accepted: int, rejections: Any) -> None:
        now_ns = time.perf_counter_ns()
        self.last_ack = time.monotonic()
        r = self.result
        r.acked_total += accepted
        if rejections:
            r.rejected_total += len(rejections)
            first = rejections[0]
            self.sample(f"rejection: {first.field}: {first.message}")
        if self.in_window:
            r.requests_window += 1
            r.acked_window += accepted
            self.latencies_ns.append(now_ns - started_ns)

    def failed(self, activities: int, code: str, message: str) -> None:
        self.result.failed_activities_total += activities
        self.result.errors[code] = self.result.errors.get(code, 0) + 1
        self.sample(f"{code}: {message}")


class _Pacer:
    """A caller's send schedule at a fixed rate. `wait()` sleeps until the next request is due and
    returns the time it was due (perf_counter_ns): latency counts from then, so an answer that comes
    late delays the requests after it and that delay is measured too (no coordinated omission). With
    rate 0, `wait()` returns at once: the closed loop."""

    def __init__(self, rate: float, batch_size: int, callers: int, index: int) -> None:
        self.interval_ns = int(callers * batch_size / rate * 1e9) if rate > 0 else 0
        # Callers start staggered over one interval, so that the load is even from the start.
        self.next_ns = time.perf_counter_ns() + self.interval_ns * index // max(1, callers)

    async def wait(self) -> int:
        if not self.interval_ns:
            return time.perf_counter_ns()
        due = self.next_ns
        self.next_ns += self.interval_ns
        delay = due - time.perf_counter_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        return due


def _metadata(spec: Spec) -> grpc.aio.Metadata | None:
    if not spec.api_key:
        return None
    return grpc.aio.Metadata(("authorization", f"Bearer {spec.api_key}"))


async def _unary_caller(
    channel: grpc.aio.Channel, factory: RequestFactory, spec: Spec, state: State, index: int = 0
) -> None:
    if factory.kind == "unary":
        call = channel.unary_unary(METHOD_UNARY, None, None)
        parse: Any = pb.TrackActivityResponse.FromString
    else:
        call = channel.unary_unary(METHOD_BATCH, None, None)
        parse = pb.TrackActivitiesResponse.FromString
    n = factory.batch_size
    metadata = _metadata(spec)
    pacer = _Pacer(spec.rate, n, spec.concurrency, index)
    while not state.stop:
        started = await pacer.wait()
        if state.stop:
            break
        request = factory.make()
        state.sent(n)
        try:
            raw = await call(request, timeout=spec.rpc_timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            state.failed(n, error.code().name, str(error.details()))
            await asyncio.sleep(0.05)
            continue
        response = parse(raw)
        state.answered(started, response.accepted_count, response.rejections)


async def _segment_caller(
    session: Any, factory: RequestFactory, spec: Spec, state: State, index: int = 0
) -> None:
    """Segment's /v1/batch as the server SDKs send it: JSON, the key as the HTTP Basic user name."""
    import aiohttp

    url = spec.target + SEGMENT_PATH
    n = factory.batch_size
    auth = aiohttp.BasicAuth(spec.api_key or "", "")
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=spec.rpc_timeout_s)
    pacer = _Pacer(spec.rate, n, spec.concurrency, index)
    while not state.stop:
        started = await pacer.wait()
        if state.stop:
            break
        request = factory.make()
        state.sent(n)
        try:
            async with session.post(url, data=request, headers=headers, auth=auth, timeout=timeout) as answer:
                body = await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as error:
            state.failed(n, type(error).__name__, str(error))
            await asyncio.sleep(0.05)
            continue
        reply = json.loads(body)
        if status != 200:
            state.failed(n, f"http-{status}", str(reply.get("message", "")))
            await asyncio.sleep(0.05)
            continue
        rejections = [_Rejected(r["field"], r["message"]) for r in reply["rejections"]]
        state.answered(started, n - len({r["index"] for r in reply["rejections"]}), rejections)


@dataclass
class _Rejected:
    field: str
    message: str


async def _stream_caller(
    channel: grpc.aio.Channel, factory: RequestFactory, spec: Spec, state: State, index: int = 0
) -> None:
    call: Any = channel.stream_stream(METHOD_STREAM, None, None)(None, metadata=_metadata(spec))
    slots = asyncio.Semaphore(spec.concurrency)
    pending: dict[int, int] = {}
    n = factory.batch_size

    async def reader() -> None:
        try:
            while True:
                raw = await call.read()
                if raw is _EOF:
                    return
                response = pb.StreamActivitiesResponse.FromString(raw)
                started = pending.pop(response.sequence)
                if response.status.code:
                    state.failed(n, f"batch-status-{response.status.code}", response.status.message)
                else:
                    state.answered(started, response.accepted_count, response.rejections)
                slots.release()
        finally:
            # Never leave the writer waiting for a slot once nothing will be read any more.
            for _ in range(spec.concurrency):
                slots.release()

    read_task = asyncio.create_task(reader())
    sequence = 0
    pacer = _Pacer(spec.rate, n, spec.streams, index)
    try:
        while not state.stop:
            due = await pacer.wait()
            await slots.acquire()
            if state.stop or read_task.done():
                break
            sequence += 1
            request = factory.make(sequence)
            state.sent(n)
            pending[sequence] = due
            await call.write(request)
        await call.done_writing()
        await read_task
    except grpc.aio.AioRpcError as error:
        state.failed(n * len(pending), error.code().name, str(error.details()))
        pending.clear()
    finally:
        if not read_task.done():
            read_task.cancel()
    if read_task.done() and not read_task.cancelled():
        crash = read_task.exception()
        if crash is not None:
            state.failed(n * len(pending), type(crash).__name__, str(crash))


async def run(spec: Spec) -> Result:
    state = State()
    started = time.perf_counter()
    templates = build_templates(spec.kind, spec.batch_size, spec.templates, spec.seed)
    factory = RequestFactory(spec.kind, templates, random.Random())
    state.result.build_s = time.perf_counter() - started
    gc.collect()
    gc.freeze()

    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        # Separate channels get separate connections instead of sharing the global subchannel pool.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    segment = spec.kind == SEGMENT
    channels = (
        []
        if segment
        else [grpc.aio.insecure_channel(spec.target, options=options) for _ in range(spec.channels)]
    )
    session: Any = None
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
        if segment:
            import aiohttp

            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=spec.concurrency))
            callers = [_segment_caller(session, factory, spec, state, i) for i in range(spec.concurrency)]
        elif spec.kind == "stream":
            callers = [
                _stream_caller(channels[i % len(channels)], factory, spec, state, i)
                for i in range(spec.streams)
            ]
        else:
            callers = [
                _unary_caller(channels[i % len(channels)], factory, spec, state, i)
                for i in range(spec.concurrency)
            ]
        tasks = [asyncio.create_task(c) for c in callers]

        await asyncio.sleep(spec.warmup_s)
        group: set[int] = set()
        if spec.server_pid:
            group = related_pids(spec.server_pid, spec.server_marker)
        group_cpu0 = group_cpu_s(group)
        server_cpu0 = process_cpu_s(spec.server_pid) if spec.server_pid else None
        gen_cpu0, machine0, t0 = self_cpu_s(), MachineCpu.read(), time.perf_counter()
        state.in_window = True
        await asyncio.sleep(spec.duration_s)
        state.in_window = False
        t1 = time.perf_counter()
        server_cpu1 = process_cpu_s(spec.server_pid) if spec.server_pid else None
        if spec.server_pid:
            # Helpers started during the window count from their start.
            group |= related_pids(spec.server_pid, spec.server_marker)
        group_cpu1 = group_cpu_s(group)
        gen_cpu1, machine1 = self_cpu_s(), MachineCpu.read()
        state.stop = True

        r = state.result
        r.window_s = t1 - t0
        if server_cpu0 is not None and server_cpu1 is not None:
            r.server_cpu_s = server_cpu1 - server_cpu0
            r.server_group_cpu_s = group_cpu_delta(group_cpu0, group_cpu1)
            r.server_group_pids = len(group)
        r.gen_cpu_s = gen_cpu1 - gen_cpu0
        r.machine_busy_cores = machine1.busy_cores_since(machine0)
        r.machine_interrupt_cores = machine1.interrupt_cores_since(machine0)

        done, not_done = await asyncio.wait(tasks, timeout=spec.drain_timeout_s)
        r.drain_s = time.perf_counter() - t1
        for task in not_done:
            task.cancel()
        if not_done:
            r.drain_timed_out = True
            await asyncio.gather(*not_done, return_exceptions=True)
        for task in done:
            crash = task.exception()
            if crash is not None:
                state.sample(f"caller crashed: {crash!r}")
                r.errors["caller-crash"] = r.errors.get("caller-crash", 0) + 1
    finally:
        for channel in channels:
            await channel.close(None)
        if session is not None:
            await session.close()

    r.load_wall_s = max(0.0, state.last_ack - (state.first_send or state.last_ack))
    # time.monotonic is one clock for every process of the machine: the benchmark compares them.
    r.first_send_mono = state.first_send or 0.0
    r.last_ack_mono = state.last_ack
    lat = sorted(state.latencies_ns)
    if lat:
        r.latency_ms = {
            "p50": percentile(lat, 50) / 1e6,
            "p90": percentile(lat, 90) / 1e6,
            "p99": percentile(lat, 99) / 1e6,
            "max": lat[-1] / 1e6,
            "mean": sum(lat) / len(lat) / 1e6,
            "count": float(len(lat)),
        }
    return r


def percentile(ordered: list[int], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return float(ordered[rank - 1])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.loadgen SPEC_JSON OUT_JSON", file=sys.stderr)
        return 2
    spec = Spec(**json.loads(args[0]))
    result = asyncio.run(run(spec))
    with open(args[1], "w", encoding="utf-8") as f:
        json.dump(asdict(result), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
