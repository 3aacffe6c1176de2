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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.reports import Engine, generate, settle
from bench.shop_sql import DAYS, PEOPLE, TENANT
from workers.reads.people import Person, find_person
from workers.reads.profiles import read_profile
from workers.reads.recommendations import STRATEGIES, recommend
from workers.reads.segments import parse_rule

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
    engine.client.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    out = list(calls.values())
    for item in out:
        print(
            f"  {item.call:<38} p50 {item.p50:8.1f} ms  p99 {item.p99:8.1f} ms  "
            f"{item.read_rows / len(item.ms):>12,.0f} rows read per call",
            flush=True,
        )
    return out


def sample(engine: Engine, requests: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    return people(engine, requests), products(engine, requests)


async def read_load(
    address: str,
    key: str,
    who: list[tuple[str, str]],
    targets: list[tuple[str, str]],
    rate: float,
    seconds: float,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Calls at `rate` per second for `seconds`, each call kind in turn: latencies by call, errors by code."""
    import asyncio

    import grpc
    import grpc.aio

    from core.proto.activity.v1 import activity_pb2 as pb
    from core.proto.activity.v1 import profile_pb2 as ppb
    from core.proto.activity.v1 import profile_pb2_grpc as ppb_grpc

    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    metadata = (("authorization", f"Bearer {key}"),)
    kinds = ["GetProfile", *(f"GetRecommendations {s}" for s in STRATEGIES)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ppb_grpc.ProfileServiceStub(channel)  # type: ignore[no-untyped-call]

        async def one(n: int) -> None:
            kind = kinds[n % len(kinds)]
            user_id, anonymous_id = who[n % len(who)]
            user = pb.User(user_id=user_id, anonymous_id=anonymous_id)
            start = time.perf_counter()
            try:
                if kind == "GetProfile":
                    await stub.GetProfile(ppb.GetProfileRequest(user=user), metadata=metadata, timeout=10)
                else:
                    target_type, target_id = targets[n % len(targets)]
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
                errors[error.code().name] = errors.get(error.code().name, 0) + 1
                return
            latencies.setdefault(kind, []).append((time.perf_counter() - start) * 1000)

        tasks = []
        started = time.perf_counter()
        n = 0
        while time.perf_counter() - started < seconds:
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
    return latencies, errors


def under_ingest(
    size: str, requests: int, ingest_rate: float, read_rate: float, seconds: float
) -> dict[str, Any]:
    import asyncio
    import subprocess
    import threading

    from bench.loadgen import Spec
    from bench.runner import ROOT, RunOptions, ServerProcess, child_env, collector_argv, run_loadgen

    work = Path(tempfile.mkdtemp(prefix="bench-reads-ingest-"))
    data = work / "data"
    try:
        engine = Engine(data / "clickhouse")
        engine.use("activity")
        generate(engine, SIZES[size])
        who, targets = sample(engine, requests)
        engine.client.close()
        env = child_env({"ACTIVITY_DEFAULT_TENANT": TENANT})
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

            alone: dict[str, Any] = {}
            ingest(alone)
            together: dict[str, Any] = {}
            thread = threading.Thread(target=ingest, args=(together,))
            thread.start()
            time.sleep(2.0)  # the load generator's warm-up
            latencies, errors = asyncio.run(read_load(address, read_key, who, targets, read_rate, seconds))
            thread.join()
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def rate(result: dict[str, Any]) -> float:
        window = float(result.get("window_s") or 0)
        return float(result.get("acked_window", 0)) / window if window else 0.0

    print(f"\n== under ingest: {size} shop, ingest {ingest_rate:,.0f}/s offered, reads {read_rate:,.0f}/s ==")
    calls = {}
    for call, ms in sorted(latencies.items()):
        item = Latency(call, size, ms)
        calls[call] = {"n": len(ms), "p50_ms": item.p50, "p99_ms": item.p99}
        print(f"  {call:<38} p50 {item.p50:8.1f} ms  p99 {item.p99:8.1f} ms  ({len(ms)} calls)")
    print(f"  read errors: {errors or 'none'}")
    print(
        f"  ingest acknowledged: {rate(alone):,.0f}/s alone, {rate(together):,.0f}/s with reads "
        f"({rate(together) / rate(alone) if rate(alone) else 0:.3f}); ingest errors: "
        f"{together.get('errors') or 'none'}"
    )
    return {
        "calls": calls,
        "read_errors": errors,
        "ingest_alone": rate(alone),
        "ingest_with_reads": rate(together),
    }


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
    parser.add_argument("--read-rate", type=float, default=200, help="read calls/s (default 200)")
    parser.add_argument("--duration", type=float, default=30, help="seconds of each phase (default 30)")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if not sizes or any(s not in SIZES for s in sizes) or args.requests < 2:
        print(f"bench.reads: --sizes: some of {', '.join(SIZES)}; --requests at least 2", file=sys.stderr)
        return 2
    if args.under_ingest:
        found = under_ingest(sizes[0], args.requests, args.ingest_rate, args.read_rate, args.duration)
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
