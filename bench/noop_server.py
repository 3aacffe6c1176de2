"""Transport ceiling: a no-op `activity.v1.ActivityService` on grpc.aio, in its own process.

    python -m bench.noop_server --listen 127.0.0.1:0

Same three RPCs, same raw-bytes handlers and transport options as the collector, but each handler only
parses the request with the generated class and answers accepted_count = number of activities: no
validation, no enrichment, no storage. What the collector reaches against this is the most that
Python gRPC on this machine allows for the same load. Prints "noop-server listening on HOST:PORT"
when ready; SIGTERM or SIGINT stops it.

With `--group-commit`, every answer first waits for a group-commit hop shaped like the collector's:
the request joins a queue, one task takes every request waiting, runs an empty function on a
one-thread executor (where the collector appends to its spool and fsyncs) and then releases them. The
work is nil; what it measures is the price of acknowledging after an off-loop write in asyncio and
grpc.aio: the suspended handler, the queue, the executor's round trip and the futures.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio

from bench.workload import SERVICE
from core.limits import Limits
from core.proto.activity.v1 import activity_pb2 as pb

_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009


class GroupCommit:
    """The collector's acknowledgement path with nothing in it: queue, one committer task, one thread."""

    def __init__(self) -> None:
        self._waiting: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._task: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._committer())
        done = asyncio.get_running_loop().create_future()
        self._waiting.put_nowait(done)
        await done

    async def _committer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [await self._waiting.get()]
            while not self._waiting.empty():
                group.append(self._waiting.get_nowait())
            await loop.run_in_executor(self._thread, _nothing)
            for done in group:
                done.set_result(None)


def _nothing() -> None:
    pass


# Set by `--group-commit`. The handlers test it inline: the plain no-op server makes no extra call.
_commit: GroupCommit | None = None


async def track_activity(raw: bytes, _context: Any) -> bytes:
    request = pb.TrackActivityRequest.FromString(raw)
    accepted = 1 if request.HasField("activity") else 0
    if _commit is not None:
        await _commit.wait()
    return pb.TrackActivityResponse(
        accepted_count=accepted, activity_id=request.activity.id
    ).SerializeToString()


async def track_activities(raw: bytes, _context: Any) -> bytes:
    request = pb.TrackActivitiesRequest.FromString(raw)
    if _commit is not None:
        await _commit.wait()
    return pb.TrackActivitiesResponse(accepted_count=len(request.activities)).SerializeToString()


async def stream_activities(_requests: Any, context: Any) -> None:
    while True:
        raw = await context.read()
        if raw is _EOF:
            return
        request = pb.StreamActivitiesRequest.FromString(raw)
        if _commit is not None:
            await _commit.wait()
        await context.write(
            pb.StreamActivitiesResponse(
                sequence=request.sequence, accepted_count=len(request.activities)
            ).SerializeToString()
        )


def handler() -> grpc.GenericRpcHandler[Any, Any]:
    serialize: Any = bytes
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "TrackActivity": grpc.unary_unary_rpc_method_handler(
                track_activity, response_serializer=serialize
            ),
            "TrackActivities": grpc.unary_unary_rpc_method_handler(
                track_activities, response_serializer=serialize
            ),
            "StreamActivities": grpc.stream_stream_rpc_method_handler(
                stream_activities, response_serializer=serialize
            ),
        },
    )


async def serve(listen: str, group_commit: bool = False) -> int:
    global _commit
    _commit = GroupCommit() if group_commit else None
    max_message = Limits().max_request_bytes + 64 * 1024
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", 0),
            ("grpc.http2.bdp_probe", 0),
        ]
    )
    server.add_generic_rpc_handlers((handler(),))
    port = server.add_insecure_port(listen)
    if not port:
        print(f"noop-server: cannot bind {listen}", file=sys.stderr)
        return 1
    await server.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    print(f"noop-server listening on {listen.rpartition(':')[0]}:{port}", flush=True)
    await stopped.wait()
    await server.stop(5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noop_server")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument(
        "--group-commit", action="store_true", help="answer after an empty group-commit hop (see above)"
    )
    args = parser.parse_args(argv)
    return asyncio.run(serve(args.listen, args.group_commit))


if __name__ == "__main__":
    sys.exit(main())
