"""Storage ceiling: the collector's own insert path, driven directly, without gRPC or validation.

    python -m bench.storage_ceiling OUT_JSON --data-dir DIR [--rows N] [--insert-rows N] [--seed N]

Runs in its own process (the embedded engine is process-wide state). Rows are the benchmark's
activities, parsed from the same request bytes the load generators send (untimed); the timed part is
what the pipeline does after validation: `workers.rows.encode_rows` per request of 500 activities,
`envelope` per insert of `--insert-rows` rows, and `ClickHouseStore.insert_rows`. Reported: rows/s of
the inserts alone and of encode + envelope + insert, and microseconds per row of each step.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.procstat import status_kib
from bench.workload import RequestFactory, build_templates
from core.proto.activity.v1 import activity_pb2 as pb
from workers.rows import EncodedRows, encode_rows, envelope
from workers.storage.clickhouse import ClickHouseStore

REQUEST_ROWS = 500


def encoder() -> Callable[[Sequence[pb.Activity], int], EncodedRows]:
    """`encode_rows` for all the activities of one request, whichever of its signatures is installed:
    (activities, indexes, tenant, ...) or (items as (index, activity), tenant, ...)."""
    encode: Any = encode_rows
    first = next(iter(inspect.signature(encode_rows).parameters))
    if first == "items":
        return lambda activities, now: encode(list(enumerate(activities)), "default", now, now)
    return lambda activities, now: encode(activities, range(len(activities)), "default", now, now)


def run(data_dir: Path, rows: int, insert_rows: int, seed: int) -> dict[str, float | int]:
    factory = RequestFactory("batch", build_templates("batch", REQUEST_ROWS, 20, seed))
    encode = encoder()
    requests_per_insert = max(1, insert_rows // REQUEST_ROWS)
    insert_rows = requests_per_insert * REQUEST_ROWS
    inserts = max(1, rows // insert_rows)
    store = ClickHouseStore(f"chdb://{data_dir.resolve() / 'clickhouse'}", "activity", connections=1)
    try:
        # Warm-up: the first insert pays for schema parsing and part directories.
        warm = pb.TrackActivitiesRequest.FromString(factory.make()).activities
        now = time.time_ns()
        store.insert_rows(envelope([encode(warm, now)]), len(warm))

        encode_s = envelope_s = insert_s = 0.0
        for _ in range(inserts):
            batches = [
                pb.TrackActivitiesRequest.FromString(factory.make()).activities
                for _ in range(requests_per_insert)
            ]
            t0 = time.perf_counter()
            now = time.time_ns()
            encoded = [encode(b, now) for b in batches]
            t1 = time.perf_counter()
            payload = envelope(encoded)
            t2 = time.perf_counter()
            store.insert_rows(payload, insert_rows)
            t3 = time.perf_counter()
            encode_s += t1 - t0
            envelope_s += t2 - t1
            insert_s += t3 - t2
        total = inserts * insert_rows
        counted = int(store.query("SELECT count() FROM activities", "TSV").split()[0]) - len(warm)
    finally:
        store.close()
    return {
        "rows": total,
        "insert_rows": insert_rows,
        "inserts": inserts,
        "counted": counted,
        "insert_rows_per_s": total / insert_s,
        "encode_insert_rows_per_s": total / (encode_s + envelope_s + insert_s),
        "encode_us_per_row": encode_s / total * 1e6,
        "envelope_us_per_row": envelope_s / total * 1e6,
        "insert_us_per_row": insert_s / total * 1e6,
        "payload_bytes_per_row": len(payload) / insert_rows,
        "peak_rss_mib": (status_kib(os.getpid(), "VmHWM") or 0) / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage_ceiling")
    parser.add_argument("out")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--insert-rows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.data_dir, args.rows, args.insert_rows, args.seed)
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
