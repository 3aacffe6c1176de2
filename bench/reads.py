"""`python -m bench.reads`: how long the read side takes (`GetProfile`, each recommendation strategy) over
a month of a shop, at 100k, 1M and 10M activities; with `--under-ingest`, through a running collector
while ingest runs.

For each size the benchmark creates a fresh database on the embedded engine through the product's
migrations, generates the shop inside ClickHouse (`bench/shop_sql.py`, as `python -m bench.reports`
does), then asks, one request at a time, what `activity.v1.ProfileService` asks the store for each call
(`workers.reads`: the person, the profile with one computed segment, each strategy), for `--requests`
people drawn from the shop (half identified users, half anonymous visitors), and prints each call's
median and 99th percentile latency and what the engine read per call. The store's latency alone, on
one thread, without the gRPC transport or concurrent ingest.

`--under-ingest`: the shop of the first size is generated into a collector's data directory, `serve`
starts on it (its default tenant the shop's), and the load generator sends batches of 100 at
`--ingest-rate` activities/s for `--duration` s, alone, then again while this process calls
`ProfileService` at `--read-rate` calls/s (every call kind in turn, for people and products of the
shop, with a key of scope read) over gRPC. Printed: each call's latency, the errors, and ingest's rate
with reads against without. See bench/README.md, "Reads".
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.reports import Engine, generate, settle
from bench.scrape import moved, p99_bound_ms, scrape
from bench.shop_sql import DAYS, PEOPLE, TENANT
from collector.process.looplag import LoopLag
from workers.reads.people import Person, find_person
from workers.reads.profiles import read_profile
from workers.reads.recommendations import STRATEGIES, recommend
from workers.reads.segments import parse_rule
from workers.storage.refresher import refresh_aggregates

SIZES = {"100k": 100_000, "1M": 1_000_000, "10M": 10_000_000}
CART_ABANDONERS = parse_rule(
    {"all": [{"action": "add_to_cart", "within": "30d"}, {"not": {"action": "purchase", "within": "30d"}}]}
)


class Store:
    """The engine as `workers.reads` asks it (a `QueryEngine`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def query(self, sql: str, fmt: str) -> bytes:
        result: bytes = self.engine.client.raw_query(sql, fmt=fmt)
        return result

    def close(self) -> None:
        pass


@dataclass
class Latency:
    call: str
    size: str
    ms: list[float] = field(default_factory=list)
    read_rows: int = 0
    cpu_s: float = 0.0
    """CPU time of the calls (the answers from memory: on this thread, nothing else works for them)."""

    @property
    def p50(self) -> float:
        return statistics.median(self.ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def people(engine: Engine, count: int) -> list[tuple[str, str]]:
    """(user_id, anonymous_id) of `count` people of the shop, half of them identified."""
    half = max(1, count // 2)
    users = engine.client.query(
        f"SELECT DISTINCT user_id FROM activities WHERE tenant_id = '{TENANT}' AND user_id != '' "
        f"ORDER BY cityHash64(user_id) LIMIT {half}"
    ).result_rows
    visitors = engine.client.query(
        f"SELECT DISTINCT anonymous_id FROM activities WHERE tenant_id = '{TENANT}' AND user_id = '' "
        f"AND anonymous_id != '' ORDER BY cityHash64(anonymous_id) LIMIT {count - half}"
    ).result_rows
    return [(str(u), "") for (u,) in users] + [("", str(a)) for (a,) in visitors]


def products(engine: Engine, count: int) -> list[tuple[str, str]]:
    found = engine.client.query(
        f"SELECT target_type, target_id FROM activities WHERE tenant_id = '{TENANT}' AND action = 'purchase' "
        f"GROUP BY target_type, target_id ORDER BY count() DESC LIMIT {count}"
    ).result_rows
    return [(str(t), str(i)) for t, i in found]


def timed(engine: Engine, latency: Latency, call: Callable[[], Any]) -> None:
    before = engine.counters()
    start = time.perf_counter()
    call()
    latency.ms.append((time.perf_counter() - start) * 1000)
    latency.read_rows += engine.counters().get("SelectedRows", 0) - before.get("SelectedRows", 0)


def run_size(engine: Engine, size: str, rows: int, requests: int) -> list[Latency]:
    database = f"bench_reads_{size.lower()}"
    engine.client.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    print(f"\n== {size}: {rows:,} activities, {PEOPLE:,} people, {DAYS} days ==", flush=True)
    engine.use(database)
    generated_s = generate(engine, rows)
    settled_s = settle(engine)
    print(f"  generated in {generated_s:.0f} s, merges settled after {settled_s:.0f} s", flush=True)
    store = Store(engine)
    who = people(engine, requests)
    targets = products(engine, requests)
    calls: dict[str, Latency] = {}

    def latency(call: str) -> Latency:
        return calls.setdefault(call, Latency(call, size))

    for n, (user_id, anonymous_id) in enumerate(who):
        person: Person = find_person(store, TENANT, user_id, anonymous_id)

        def profile(p: Person = person) -> None:
            asked = find_person(store, TENANT, p.user_id, p.person_id if not p.user_id else "")
            read_profile(store, asked, segments={"cart-abandoners": CART_ABANDONERS})

        timed(engine, latency("GetProfile"), profile)
        target = targets[n % len(targets)] if targets else None
        for strategy in STRATEGIES:
            timed(
                engine,
                latency(f"GetRecommendations {strategy}"),
                lambda s=strategy, p=person, t=target: recommend(store, TENANT, s, p, t),  # type: ignore[misc]
            )
    out = list(calls.values())
    for item in out:
        print(
            f"  {item.call:<38} p50 {item.p50:8.1f} ms  p99 {item.p99:8.1f} ms  "
            f"{item.read_rows / len(item.ms):>12,.0f} rows read per call",
            flush=True,
        )
    out += time_memory(store, who, targets, size)
    engine.client.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    return out


async def _time_memory(
    store: Store, who: list[tuple[str, str]], targets: list[tuple[str, str]], size: str
) -> list[Latency]:

    from collector.doors.profile import ProfileService
    from core.proto.activity.v1 import activity_pb2 as pb
    from core.proto.activity.v1 import profile_pb2 as ppb
    from workers.reads.items import ItemLists
    from workers.reads.model import ReadModel

    model = ReadModel(store)
    lists = ItemLists(store)
    service = ProfileService(store, TENANT, model=model, items=lists)
    context: Any = None  # only an error would use it
    await model.start()
    try:
        await model.wait_ready()
        calls: dict[str, Latency] = {}

        async def ask(n: int, user: tuple[str, str], kind: str) -> None:
            asked = pb.User(user_id=user[0], anonymous_id=user[1])
            if kind == "GetProfile":
                await service.GetProfile(ppb.GetProfileRequest(user=asked), context)
            else:
                target_type, target_id = targets[n % len(targets)]
                request = ppb.GetRecommendationsRequest(
                    strategy=kind.split()[1], user=asked, target=pb.Target(type=target_type, id=target_id)
                )
                await service.GetRecommendations(request, context)

        for rounds in range(2):  # the first loads the people and the lists; the second is timed
            for n, user in enumerate(who):
                for kind in KINDS:
                    cpu, start = time.thread_time(), time.perf_counter()
                    await ask(n, user, kind)
                    if rounds:
                        latency = calls.setdefault(kind, Latency(f"from memory: {kind}", size))
                        latency.ms.append((time.perf_counter() - start) * 1000)
                        latency.cpu_s += time.thread_time() - cpu
        return list(calls.values())
    finally:
        await model.shutdown()
        await lists.shutdown()


def time_memory(
    store: Store, who: list[tuple[str, str]], targets: list[tuple[str, str]], size: str
) -> list[Latency]:
    """Each call kind answered by the read model (`ProfileService` without its transport), once the
    people and lists are loaded: latency and CPU per call."""
    import asyncio

    out = asyncio.run(_time_memory(store, who, targets, size))
    for item in out:
        print(
            f"  {item.call:<50} p50 {item.p50:7.3f} ms  p99 {item.p99:7.3f} ms  "
            f"{item.cpu_s / len(item.ms) * 1e6:7.0f} µs CPU per call",
            flush=True,
        )
    return out


def sample(engine: Engine, requests: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    return people(engine, requests), products(engine, requests)


KINDS = ["GetProfile", *(f"GetRecommendations {s}" for s in STRATEGIES)]
CHANNELS = 4
BUYERS = {"action": "purchase", "within": "1h"}
"""The segment the freshness probes enter with their purchase."""


@dataclass
class Reads:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    freshness_ms: list[float] = field(default_factory=list)
    stale: int = 0
    """Probes not seen in the profile and its segments within 10 s."""
    caller_lag_ms: list[float] = field(default_factory=list)
    """How late the callers' own event loops ran a probe due every 10 ms: the part of the latencies
    above spent in the callers, waiting for their own CPU, before a call's answer is taken."""

    @property
    def caller_lag_p99_ms(self) -> float:
        return Latency("lag", "", self.caller_lag_ms).p99 if self.caller_lag_ms else 0.0


@dataclass
class _Milliseconds:
    """What a `LoopLag` observes (seconds), kept as milliseconds in a list."""

    into: list[float]

    def observe(self, amount: float) -> None:
        self.into.append(amount * 1000)


async def read_load(
    address: str,
    key: str,
    write_key: str,
    who: list[tuple[str, str]],
    targets: list[tuple[str, str]],
    rate: float,
    seconds: float,
    probe: bool = True,
    kinds: list[str] | None = None,
) -> Reads:
    """Each of `kinds` (default: every call kind) at `rate` per second for `seconds` (in turn); with
    `probe`, once a second, a
    purchase of a new person asked about before, then their profile until it shows the purchase and
    the segment `buyers`: the freshness of an acknowledged activity."""
    import asyncio
    import gc
    import uuid

    import grpc
    import grpc.aio

    from core.proto.activity.v1 import activity_pb2 as pb
    from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
    from core.proto.activity.v1 import profile_pb2 as ppb
    from core.proto.activity.v1 import profile_pb2_grpc as ppb_grpc

    out = Reads()
    # The collector's own probe of its event loop, every 10 ms, into this process's figures.
    lag = LoopLag(_Milliseconds(out.caller_lag_ms), interval_s=0.01)
    metadata = (("authorization", f"Bearer {key}"),)
    kinds = kinds or KINDS
    total_rate = rate * len(kinds)
    # Several connections, as from several application servers: one would hold every call in flight.
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    try:
        stubs = [ppb_grpc.ProfileServiceStub(c) for c in channels]  # type: ignore[no-untyped-call]
        stub = stubs[0]
        writer = pb_grpc.ActivityServiceStub(channels[0])  # type: ignore[no-untyped-call]

        async def one(n: int) -> None:
            kind = kinds[n % len(kinds)]
            stub = stubs[n % len(stubs)]
            user_id, anonymous_id = who[(n // len(kinds)) % len(who)]
            user = pb.User(user_id=user_id, anonymous_id=anonymous_id)
            start = time.perf_counter()
            try:
                if kind == "GetProfile":
                    await stub.GetProfile(ppb.GetProfileRequest(user=user), metadata=metadata, timeout=10)
                else:
                    target_type, target_id = targets[(n // len(kinds)) % len(targets)]
                    await stub.GetRecommendations(
                        ppb.GetRecommendationsRequest(
                            strategy=kind.split()[1],
                            user=user,
                            target=pb.Target(type=target_type, id=target_id),
                        ),
                        metadata=metadata,
                        timeout=10,
                    )
            except grpc.aio.AioRpcError as error:
                reason = f"{error.code().name}: {(error.details() or '')[:60]}"
                out.errors[reason] = out.errors.get(reason, 0) + 1
                return
            out.latencies.setdefault(kind, []).append((time.perf_counter() - start) * 1000)

        async def fresh() -> None:
            user = pb.User(user_id=f"fresh-{uuid.uuid4()}")
            asked = ppb.GetProfileRequest(user=user)
            await stub.GetProfile(asked, metadata=metadata, timeout=10)
            bought = pb.Activity(
                id=str(uuid.uuid4()),
                action="purchase",
                target=pb.Target(type="product", id="probe"),
                user=user,
            )
            bought.occurred_at.GetCurrentTime()
            await writer.TrackActivities(
                pb.TrackActivitiesRequest(activities=[bought]),
                metadata=(("authorization", f"Bearer {write_key}"),),
                timeout=10,
            )
            acknowledged = time.perf_counter()
            while time.perf_counter() - acknowledged < 10:
                profile = (await stub.GetProfile(asked, metadata=metadata, timeout=10)).profile
                if any(a.id == bought.id for a in profile.recent) and "buyers" in profile.segments:
                    out.freshness_ms.append((time.perf_counter() - acknowledged) * 1000)
                    return
                await asyncio.sleep(0.01)
            out.stale += 1

        async def probes() -> None:
            started = time.perf_counter()
            while time.perf_counter() - started < seconds - 1:
                began = time.perf_counter()
                try:
                    await fresh()
                except grpc.aio.AioRpcError as error:
                    out.errors[f"probe {error.code().name}"] = (
                        out.errors.get(f"probe {error.code().name}", 0) + 1
                    )
                await asyncio.sleep(max(0.0, began + 1.0 - time.perf_counter()))

        # Only the calls in flight are held: thousands of finished tasks kept to the end would make
        # each of this process's full garbage collections longer, a pause that shows as latency.
        tasks: set[asyncio.Task[None]] = set()

        def start(call: Awaitable[None]) -> None:
            task = asyncio.ensure_future(call)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        # What this process holds by now lives to its end: kept out of the full collections, which
        # would otherwise walk it all (grpc's and protobuf's modules), 18-124 ms with the loop stopped.
        gc.collect()
        gc.freeze()
        lag.start()
        if probe:
            start(probes())
        started = time.perf_counter()
        n = 0
        while time.perf_counter() - started < seconds:
            start(one(n))
            n += 1
            await asyncio.sleep(max(0.0, started + n / total_rate - time.perf_counter()))
        await asyncio.gather(*tasks)
    finally:
        await lag.shutdown()
        for c in channels:
            await c.close(None)
    return out


READERS = 3
"""Processes that send the reads, two call kinds each: one process could not send 1,200 calls a second
and read their answers on a busy machine, and its own delay would show as the collector's latency."""


def _reader(args: tuple[Any, ...]) -> Reads:
    import asyncio

    address, key, write_key, who, targets, rate, seconds, probe, kinds = args
    return asyncio.run(read_load(address, key, write_key, who, targets, rate, seconds, probe, kinds))


def read_processes(
    address: str,
    key: str,
    write_key: str,
    who: list[tuple[str, str]],
    targets: list[tuple[str, str]],
    rate: float,
    seconds: float,
    kinds: list[str] | None = None,
) -> Reads:
    """`read_load` split over READERS processes (the first also runs the freshness probes), merged:
    `kinds` (default every call kind) shared out among them, each at `rate`; a single kind is asked by
    every process, at its share of `rate`."""
    import multiprocessing

    kinds = kinds or KINDS
    if len(kinds) == 1:
        groups, share = [kinds] * READERS, rate / READERS
    else:
        groups, share = [kinds[n::READERS] for n in range(READERS)], rate
    jobs = [(address, key, write_key, who, targets, share, seconds, n == 0, g) for n, g in enumerate(groups)]
    with multiprocessing.get_context("spawn").Pool(READERS) as pool:
        parts = pool.map(_reader, jobs)
    out = Reads()
    for part in parts:
        for call, ms in part.latencies.items():
            out.latencies.setdefault(call, []).extend(ms)
        for reason, n in part.errors.items():
            out.errors[reason] = out.errors.get(reason, 0) + n
        out.freshness_ms += part.freshness_ms
        out.stale += part.stale
        out.caller_lag_ms += part.caller_lag_ms
    return out


async def warm(address: str, key: str, who: list[tuple[str, str]], targets: list[tuple[str, str]]) -> float:
    """Every call kind once for every person, one call at a time (again while refused): the read model
    loads them before the clock starts. Seconds taken."""
    import asyncio

    import grpc
    import grpc.aio

    from core.proto.activity.v1 import activity_pb2 as pb
    from core.proto.activity.v1 import profile_pb2 as ppb
    from core.proto.activity.v1 import profile_pb2_grpc as ppb_grpc

    started = time.perf_counter()
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ppb_grpc.ProfileServiceStub(channel)  # type: ignore[no-untyped-call]
        for n, (user_id, anonymous_id) in enumerate(who):
            user = pb.User(user_id=user_id, anonymous_id=anonymous_id)
            for kind in KINDS:
                for _ in range(20):
                    try:
                        if kind == "GetProfile":
                            await stub.GetProfile(
                                ppb.GetProfileRequest(user=user), metadata=metadata, timeout=60
                            )
                        else:
                            target_type, target_id = targets[n % len(targets)]
                            request = ppb.GetRecommendationsRequest(
                                strategy=kind.split()[1],
                                user=user,
                                target=pb.Target(type=target_type, id=target_id),
                            )
                            await stub.GetRecommendations(request, metadata=metadata, timeout=60)
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.2)
    return time.perf_counter() - started


def _in_collector(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the collector counted between two scrapes: its own time per answered read, its event
    loop's lag, and how reads were answered (from memory, or by loading from ClickHouse)."""

    def grew(prefix: str) -> float:
        return moved(before, after, "activity_collector_" + prefix)

    ok = grew("read_duration_seconds_count")
    return {
        "handler_ms_per_read": grew("read_duration_seconds_sum") / ok * 1000 if ok else 0.0,
        "handler_p99_ms_at_most": p99_bound_ms(before, after, "read_duration_seconds"),
        "loop_lag_p99_ms_at_most": p99_bound_ms(before, after, "event_loop_lag_seconds"),
        "memory_hits": grew('read_model_events_total{event="hit"}'),
        "loads": grew('read_model_events_total{event="load"}'),
        "passed": grew('read_model_events_total{event="passed"}'),
        "lists_asked_store": grew('read_list_events_total{event="asked_store"}'),
        "tail_passes": grew('read_model_events_total{event="tail_pass"}'),
        "full_collections": grew('gc_pause_seconds_count{generation="2"}'),
        "full_collection_s": grew('gc_pause_seconds_sum{generation="2"}'),
        "collections_over_10ms": grew("gc_pause_seconds_count")
        - grew('gc_pause_seconds_bucket{generation="0",le="0.01"}')
        - grew('gc_pause_seconds_bucket{generation="1",le="0.01"}')
        - grew('gc_pause_seconds_bucket{generation="2",le="0.01"}'),
    }


def _create_segment(data: Path, env: dict[str, str], work: Path) -> None:
    import subprocess

    from bench.runner import ROOT

    rule = work / "buyers.json"
    rule.write_text(json.dumps(BUYERS))
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector.cli",
            "segments",
            "create",
            "buyers",
            "--tenant",
            TENANT,
            "--rule",
            str(rule),
            "--data-dir",
            str(data),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    if made.returncode != 0:
        raise SystemExit(f"bench.reads: segment not created: {made.stdout}{made.stderr}")


def _each_kind_report(
    size: str,
    seconds: float,
    ingest_rate: float,
    read_rate: float,
    alone: dict[str, Any],
    phases: dict[str, tuple[dict[str, Any], Reads, dict[str, float]]],
    rate: Callable[[dict[str, Any]], float],
    load_avg: tuple[float, float, float],
) -> dict[str, Any]:
    """`--each-kind`: one line per call kind, read alone at `read_rate` beside the ingest."""
    import os

    print(
        f"  ingest {ingest_rate:,.0f}/s offered ({rate(alone):,.0f}/s acknowledged alone); each call kind "
        f"alone at {read_rate:,.0f}/s beside it, {seconds:.0f} s each"
    )
    out = []
    for kind, (together, reads, inside) in phases.items():
        ms = reads.latencies.get(kind, [])
        item = Latency(kind, size, ms) if ms else None
        extra_cpu = float(together.get("server_cpu_s") or 0) - float(alone.get("server_cpu_s") or 0)
        cpu_us = extra_cpu / len(ms) * 1e6 if ms else 0.0
        fresh = sorted(reads.freshness_ms)
        ratio = rate(together) / rate(alone) if rate(alone) else 0.0
        row = {
            "call": kind,
            "n": len(ms),
            "per_s": len(ms) / seconds,
            "p50_ms": item.p50 if item else None,
            "p99_ms": item.p99 if item else None,
            "read_errors": reads.errors,
            "cpu_per_read_us": cpu_us,
            "ingest_with_reads": rate(together),
            "ingest_ratio": ratio,
            "ingest_errors": together.get("errors"),
            "freshness_ms": fresh,
            "machine_busy_cores": together.get("machine_busy_cores"),
            "in_collector": inside,
            "caller_lag_p99_ms": reads.caller_lag_p99_ms,
        }
        out.append(row)
        latency = f"p50 {item.p50:6.1f} ms  p99 {item.p99:6.1f} ms" if item else "no answer"
        freshness = f"freshness max {fresh[-1]:,.0f} ms" if fresh else "no freshness probe"
        print(
            f"  {kind:<38} {latency}  {len(ms) / seconds:6.1f}/s  errors {reads.errors or 'none'}  "
            f"ingest {ratio:.3f} of alone ({together.get('errors') or 'no errors'})  "
            f"{cpu_us:,.0f} µs CPU per read  in the collector 99 % within "
            f"{inside.get('handler_p99_ms_at_most', 0):g} ms (loop lag "
            f"{inside.get('loop_lag_p99_ms_at_most', 0):g})  "
            f"callers' lag p99 {reads.caller_lag_p99_ms:.1f} ms  {freshness}  "
            f"{together.get('machine_busy_cores', 0):.2f} of {os.cpu_count()} cores busy"
        )
    return {
        "size": size,
        "each_kind": out,
        "ingest_alone": rate(alone),
        "ingest_errors_alone": alone.get("errors"),
        "load_average": load_avg[0],
    }


def under_ingest(
    size: str,
    requests: int,
    ingest_rate: float,
    read_rate: float,
    seconds: float,
    settings: dict[str, str] | None = None,
    each_kind: list[str] | None = None,
) -> dict[str, Any]:
    import asyncio
    import os
    import subprocess
    import threading

    from bench.loadgen import Spec
    from bench.runner import (
        METRICS_AT,
        ROOT,
        RunOptions,
        ServerProcess,
        child_env,
        collector_argv,
        run_loadgen,
    )

    work = Path(tempfile.mkdtemp(prefix="bench-reads-ingest-"))
    data = work / "data"
    given = ", ".join(f"{k.removeprefix('ACTIVITY_').lower()}={v}" for k, v in (settings or {}).items())
    print(f"\n== under ingest: {size} shop{f' ({given})' if given else ''} ==", flush=True)
    try:
        engine = Engine(data / "clickhouse")
        engine.use("activity")
        generated_s = generate(engine, SIZES[size])
        # The month's rollups computed now, as a collector's refresher would have done day by day: left
        # to the collector started below, the whole month's refresh would run in the measured windows.
        refresh = refresh_aggregates(engine.client.command, engine.database, margin_s=0)
        settled_s = settle(engine)
        print(
            f"  generated in {generated_s:.0f} s, aggregates refreshed in {refresh.seconds:.0f} s, "
            f"merges settled after {settled_s:.0f} s",
            flush=True,
        )
        who, targets = sample(engine, requests)
        memory = time_memory(Store(engine), who, targets, size)
        engine.client.close()
        env = child_env({"ACTIVITY_DEFAULT_TENANT": TENANT, **(settings or {})})
        server = ServerProcess(collector_argv(data, "warning", env), work / "serve.log", env)
        address = server.start(timeout=180)
        try:
            keys = [sys.executable, "-m", "collector.cli", "keys", "create", "--tenant", TENANT]
            made = subprocess.run(
                [*keys, "--scope", "read", "--data-dir", str(data)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
                timeout=120,
                check=False,
            )
            read_key = next((w for w in made.stdout.split() if w.startswith("ak_")), "")
            if not read_key:
                raise SystemExit(f"bench.reads: no read key: {made.stdout}{made.stderr}")
            _create_segment(data, env, work)
            write_key = server.api_key or ""

            def ingest(out: dict[str, Any]) -> None:
                spec = Spec(
                    target=address,
                    kind="batch",
                    batch_size=100,
                    concurrency=4,
                    warmup_s=2.0,
                    duration_s=seconds,
                    api_key=server.api_key,
                    rate=ingest_rate,
                    server_pid=server.pid,
                    server_marker=str(data),
                )
                run_dir = work / f"ingest-{len(list(work.glob('ingest-*')))}"
                run_dir.mkdir()
                out.update(run_loadgen(spec, run_dir, RunOptions(warmup_s=2.0, duration_s=seconds)))

            # The people and lists the calls ask about, read once before the clock starts (the read
            # model holds them from then on; before, a call reads ClickHouse as without it).
            warmed_s = asyncio.run(warm(address, read_key, who, targets))
            print(f"  warm-up: each call kind asked once for each person in {warmed_s:.0f} s", flush=True)
            alone: dict[str, Any] = {}
            ingest(alone)
            metrics = server.wait_for_line(METRICS_AT)

            def with_reads(kinds: list[str] | None) -> tuple[dict[str, Any], Reads, dict[str, float]]:
                together: dict[str, Any] = {}
                thread = threading.Thread(target=ingest, args=(together,))
                thread.start()
                time.sleep(2.0)  # the load generator's warm-up
                before = scrape(metrics.group(1)) if metrics else {}
                reads = read_processes(address, read_key, write_key, who, targets, read_rate, seconds, kinds)
                inside = _in_collector(before, scrape(metrics.group(1))) if metrics else {}
                thread.join()
                return together, reads, inside

            # `each_kind`: these kinds one after another, each alone; else every kind at once.
            phases = {kind: with_reads([kind]) for kind in each_kind} if each_kind else {}
            together, reads, inside = with_reads(None) if not each_kind else ({}, Reads(), {})
            load_avg = os.getloadavg()
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def rate(result: dict[str, Any]) -> float:
        window = float(result.get("window_s") or 0)
        return float(result.get("acked_window", 0)) / window if window else 0.0

    if each_kind:
        return _each_kind_report(size, seconds, ingest_rate, read_rate, alone, phases, rate, load_avg)
    print(
        f"  ingest {ingest_rate:,.0f}/s offered, reads {read_rate:,.0f}/s offered per call kind, "
        f"{seconds:.0f} s"
    )
    calls = {}
    answered = 0
    for call in KINDS:
        ms = reads.latencies.get(call, [])
        answered += len(ms)
        if not ms:
            print(f"  {call:<38} no answer")
            continue
        item = Latency(call, size, ms)
        calls[call] = {"n": len(ms), "per_s": len(ms) / seconds, "p50_ms": item.p50, "p99_ms": item.p99}
        print(
            f"  {call:<38} p50 {item.p50:7.1f} ms  p99 {item.p99:7.1f} ms  "
            f"{len(ms) / seconds:6.1f} answered/s"
        )
    print(f"  read errors: {reads.errors or 'none'}")
    print(
        f"  the callers' own event loops: lag p99 {reads.caller_lag_p99_ms:.1f} ms, "
        f"max {max(reads.caller_lag_ms, default=0):.1f} ms (waiting for their CPU: counted in the "
        "latencies above)"
    )
    if inside:
        print(
            f"  in the collector: {inside['handler_ms_per_read']:.2f} ms per answered read from its "
            f"handler to its answer (99 % within {inside['handler_p99_ms_at_most']:g} ms; the event "
            f"loop's lag 99 % within {inside['loop_lag_p99_ms_at_most']:g} ms); "
            f"{inside['memory_hits']:,.0f} people from memory, "
            f"{inside['loads']:,.0f} loaded, {inside['passed']:,.0f} read from ClickHouse; "
            f"{inside['lists_asked_store']:,.0f} recommendation calls asked of ClickHouse; "
            f"{inside['tail_passes']:,.0f} looks at new rows; garbage collector: "
            f"{inside['full_collections']:,.0f} full collections "
            f"({inside['full_collection_s'] * 1000:,.0f} ms in all), "
            f"{inside['collections_over_10ms']:,.0f} collections over 10 ms"
        )
    extra_cpu = float(together.get("server_cpu_s") or 0) - float(alone.get("server_cpu_s") or 0)
    cpu_per_read_us = extra_cpu / answered * 1e6 if answered else 0.0
    print(
        f"  collector CPU: {alone.get('server_cpu_s') or 0:.1f} s ingest alone, "
        f"{together.get('server_cpu_s') or 0:.1f} s with reads: {cpu_per_read_us:,.0f} µs per read"
    )
    fresh = sorted(reads.freshness_ms)
    if fresh:
        print(
            f"  freshness (acknowledged purchase -> in GetProfile and segment): "
            f"p50 {statistics.median(fresh):.0f} ms, max {fresh[-1]:.0f} ms over {len(fresh)} probes; "
            f"{reads.stale} not seen within 10 s"
        )
    print(
        f"  ingest acknowledged: {rate(alone):,.0f}/s alone, {rate(together):,.0f}/s with reads "
        f"({rate(together) / rate(alone) if rate(alone) else 0:.3f}); ingest errors: "
        f"alone {alone.get('errors') or 'none'}, with reads {together.get('errors') or 'none'}"
    )
    print(
        f"  machine: {together.get('machine_busy_cores', 0):.2f} of {os.cpu_count()} cores busy with reads, "
        f"{alone.get('machine_busy_cores', 0):.2f} alone; load average {load_avg[0]:.1f}"
    )
    return {
        "size": size,
        "from_memory": [
            {"call": m.call, "p50_ms": m.p50, "p99_ms": m.p99, "cpu_us": m.cpu_s / len(m.ms) * 1e6}
            for m in memory
        ],
        "calls": calls,
        "read_errors": reads.errors,
        "in_collector": inside,
        "caller_lag_p99_ms": reads.caller_lag_p99_ms,
        "cpu_per_read_us": cpu_per_read_us,
        "freshness_ms": fresh,
        "stale_probes": reads.stale,
        "ingest_alone": rate(alone),
        "ingest_with_reads": rate(together),
        "ingest_errors": {"alone": alone.get("errors"), "with_reads": together.get("errors")},
        "machine_busy_cores": {
            "alone": alone.get("machine_busy_cores"),
            "with_reads": together.get("machine_busy_cores"),
        },
        "load_average": load_avg[0],
    }


def _p99_of(found: dict[str, Any], call: str) -> float:
    """The p99 of `call` in one size's results, of either shape (every kind at once, or each alone)."""
    if "each_kind" in found:
        rows = [row for row in found["each_kind"] if row["call"] == call]
        return float(rows[0]["p99_ms"]) if rows and rows[0]["p99_ms"] is not None else float("nan")
    return float(found["calls"].get(call, {}).get("p99_ms", float("nan")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reads", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100k,1M", help=f"comma-separated, out of {', '.join(SIZES)}")
    parser.add_argument("--requests", type=int, default=50, help="people asked about per size (default 50)")
    parser.add_argument("--data-dir", type=Path, help="engine directory (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, default=Path("bench-results/reads.json"), help="results file")
    parser.add_argument("--under-ingest", action="store_true", help="through a collector, while ingest runs")
    parser.add_argument(
        "--ingest-rate", type=float, default=20_000, help="activities/s offered (default 20000)"
    )
    parser.add_argument(
        "--read-rate", type=float, default=200, help="read calls/s of each call kind (default 200)"
    )
    parser.add_argument("--duration", type=float, default=30, help="seconds of each phase (default 30)")
    parser.add_argument(
        "--each-kind",
        action="store_true",
        help="--under-ingest: each call kind alone at --read-rate beside the ingest, one after the other "
        "(default: every kind at once, each at --read-rate)",
    )
    parser.add_argument(
        "--kind",
        action="append",
        default=[],
        choices=["GetProfile", *STRATEGIES],
        help="--each-kind: this call kind only (GetProfile or a strategy), repeatable (default: every one)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="--under-ingest: a setting of the collector (docs/configuration.md), repeatable; "
        "for example drain_interval_ms=500",
    )
    args = parser.parse_args(argv)
    from bench.runner import collector_settings

    try:
        settings = collector_settings(args.setting)
    except ValueError as error:
        print(f"bench.reads: {error}", file=sys.stderr)
        return 2
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if not sizes or any(s not in SIZES for s in sizes) or args.requests < 2:
        print(f"bench.reads: --sizes: some of {', '.join(SIZES)}; --requests at least 2", file=sys.stderr)
        return 2
    if args.kind and not args.each_kind:
        print("bench.reads: --kind goes with --each-kind", file=sys.stderr)
        return 2
    chosen = [k if k == "GetProfile" else f"GetRecommendations {k}" for k in args.kind]
    each_kind = (chosen or KINDS) if args.each_kind else None
    if args.under_ingest:
        found = [
            under_ingest(
                size,
                args.requests,
                args.ingest_rate,
                args.read_rate,
                args.duration,
                settings,
                each_kind,
            )
            for size in sizes
        ]
        if len(found) > 1:
            print("\n== latency by size (p99 ms) ==")
            for call in KINDS:
                row = "  ".join(f"{f['size']}: {_p99_of(f, call):7.1f}" for f in found)
                print(f"  {call:<38} {row}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(found, indent=2))
        print(f"\nresults: {args.json}")
        return 0
    path = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-reads-"))
    engine = Engine(path)
    results: list[Latency] = []
    try:
        for size in sizes:
            results += run_size(engine, size, SIZES[size], args.requests)
    finally:
        engine.client.close()
        if args.data_dir is None:
            shutil.rmtree(path, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps([{**asdict(r), "p50_ms": r.p50, "p99_ms": r.p99} for r in results], indent=2)
    )
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
