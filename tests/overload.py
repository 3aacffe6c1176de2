"""A client process that offers a collector more than it can take, for the memory tests.

    python tests/overload.py ADDRESS SECONDS STREAMS CALLERS BATCH ACTIVITY_BYTES

For SECONDS it keeps STREAMS StreamActivities streams (each with every batch it may have in flight
written) and CALLERS TrackActivities callers busy, over one connection, with batches of BATCH
activities of about ACTIVITY_BYTES each, resending at once whatever is refused. It prints one JSON
object: how many batches ended with each gRPC status code (by name).
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
import uuid
from typing import Any

import grpc
import grpc.aio

from core.proto.activity.v1 import activity_pb2 as pb

SERVICE = "/activity.v1.ActivityService/"


def activities(count: int, size: int) -> list[pb.Activity]:
    made = []
    for n in range(count):
        activity = pb.Activity(
            id=str(uuid.uuid4()),
            action="view",
            target=pb.Target(type="product", id=f"sku-{n}"),
            user=pb.User(anonymous_id=f"anon-{n}"),
            metadata=pb.Metadata(locale="en-US", page_url=f"https://shop.example/p/{n}"),
        )
        # Filler in the custom map, in values short enough for max_text_chars.
        key = 0
        while activity.ByteSize() < size - 64:
            room = size - 64 - activity.ByteSize()
            activity.metadata.custom[f"k{key}"] = "x" * min(1500, max(1, room - 8))
            key += 1
        made.append(activity)
    return made


async def stream(
    channel: grpc.aio.Channel, batches: list[bytes], stop: float, codes: collections.Counter[str]
) -> None:
    call: Any = channel.stream_stream(
        SERVICE + "StreamActivities", response_deserializer=pb.StreamActivitiesResponse.FromString
    )

    async def requests() -> Any:
        n = 0
        while time.monotonic() < stop:
            yield batches[n % len(batches)]
            n += 1

    try:
        async for answer in call(requests()):
            code = grpc.StatusCode.OK if answer.status.code == 0 else _code(answer.status.code)
            codes[code.name] += 1
            if code not in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED):
                print("batch", code, answer.status.message, file=sys.stderr)
    except grpc.aio.AioRpcError as error:
        codes[error.code().name] += 1
        print("stream", error.code(), error.details(), file=sys.stderr)


async def caller(
    channel: grpc.aio.Channel, requests: list[bytes], stop: float, codes: collections.Counter[str]
) -> None:
    call = channel.unary_unary(
        SERVICE + "TrackActivities", response_deserializer=pb.TrackActivitiesResponse.FromString
    )
    n = 0
    while time.monotonic() < stop:
        try:
            await call(requests[n % len(requests)])
        except grpc.aio.AioRpcError as error:
            codes[error.code().name] += 1
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                print("call", error.code(), error.details(), file=sys.stderr)
        else:
            codes["OK"] += 1
        n += 1


def _code(value: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


async def main(address: str, seconds: float, streams: int, callers: int, batch: int, size: int) -> None:
    templates = [activities(batch, size) for _ in range(4)]
    stream_batches = [
        pb.StreamActivitiesRequest(sequence=n + 1, activities=t).SerializeToString()
        for n, t in enumerate(templates)
    ]
    unary_requests = [pb.TrackActivitiesRequest(activities=t).SerializeToString() for t in templates]
    codes: collections.Counter[str] = collections.Counter()
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stop = time.monotonic() + seconds
        await asyncio.gather(
            *(stream(channel, stream_batches, stop, codes) for _ in range(streams)),
            *(caller(channel, unary_requests, stop, codes) for _ in range(callers)),
        )
    print(json.dumps(codes))


if __name__ == "__main__":
    address, seconds, streams, callers, batch, size = sys.argv[1:7]
    asyncio.run(main(address, float(seconds), int(streams), int(callers), int(batch), int(size)))
