"""The transport baselines of the benchmark (`bench/noop_server.py`), run as the benchmark runs them:
a process of its own, answering the three RPCs over loopback, plain and with `--group-commit`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from helpers import make_activity

from bench.runner import NOOP_SERVERS, ServerProcess, child_env, noop_argv
from bench.workload import METHOD_BATCH, METHOD_STREAM, METHOD_UNARY
from core.proto.activity.v1 import activity_pb2 as pb

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=list(NOOP_SERVERS))
def noop_address(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A no-op server target started and stopped as the benchmark does it."""
    server = ServerProcess(noop_argv(request.param), tmp_path / "server.log", child_env())
    try:
        yield server.start(timeout=30)
    finally:
        assert server.stop(timeout=10) == 0


async def test_every_rpc_is_answered_with_its_activities_counted(noop_address: str) -> None:
    async with grpc.aio.insecure_channel(noop_address) as channel:
        unary = channel.unary_unary(
            METHOD_UNARY,
            request_serializer=pb.TrackActivityRequest.SerializeToString,
            response_deserializer=pb.TrackActivityResponse.FromString,
        )
        one = make_activity(1)
        answer = await unary(pb.TrackActivityRequest(activity=one), timeout=10)
        assert (answer.accepted_count, answer.activity_id) == (1, one.id)

        batch = channel.unary_unary(
            METHOD_BATCH,
            request_serializer=pb.TrackActivitiesRequest.SerializeToString,
            response_deserializer=pb.TrackActivitiesResponse.FromString,
        )
        answer = await batch(
            pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(3)]), timeout=10
        )
        assert answer.accepted_count == 3

        stream = channel.stream_stream(
            METHOD_STREAM,
            request_serializer=pb.StreamActivitiesRequest.SerializeToString,
            response_deserializer=pb.StreamActivitiesResponse.FromString,
        )
        requests = [
            pb.StreamActivitiesRequest(sequence=s, activities=[make_activity(n) for n in range(s)])
            for s in (1, 2)
        ]
        answers = [(a.sequence, a.accepted_count) async for a in stream(iter(requests), timeout=10)]
        assert answers == [(1, 1), (2, 2)]
