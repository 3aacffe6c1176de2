"""Property-based: random and malformed activities and raw bytes against every RPC of a live server.

Whatever arrives, the server answers with a deliberate code (never UNKNOWN or INTERNAL), stays up, and
every rejection says which field is at fault, or that the activity as a whole is.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import grpc
import pytest
from helpers import start_serve, with_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.proto.activity.v1 import activity_pb2 as pb

pytestmark = pytest.mark.timeout(300)

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}
METHODS = {
    "TrackActivity": pb.TrackActivityResponse,
    "TrackActivities": pb.TrackActivitiesResponse,
}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A server's address and the API key its first start created."""
    data = tmp_path_factory.mktemp("fuzz") / "data"
    proc, address, key = start_serve(data)
    assert key is not None
    yield address, key
    assert proc.poll() is None, "the server died under fuzzing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def channel(target: tuple[str, str]) -> Iterator[grpc.Channel]:
    address, key = target
    with grpc.insecure_channel(address) as ch:
        yield with_key(ch, key)


text = st.text(max_size=80) | st.sampled_from(["", "view", "Add-To-Cart", "en_us", "EUR", "x" * 3000])
maps = st.dictionaries(st.text(max_size=70), st.text(max_size=40), max_size=70)
timestamps = st.builds(
    lambda s, n: (s, n),
    st.integers(-(2**40), 2**40) | st.integers(1_700_000_000, 1_900_000_000),
    st.integers(0, 999),
)


@st.composite
def activities(draw: st.DrawFn) -> pb.Activity:
    a = pb.Activity(
        id=draw(
            st.sampled_from(["", "0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4d5e", "not-a-uuid"]) | st.uuids().map(str)
        ),
        action=draw(text),
        source_id=draw(text),
        segments=draw(st.lists(text, max_size=70)),
    )
    if draw(st.booleans()):
        a.target.type, a.target.id = draw(text), draw(text)
        a.target.attributes.update(draw(maps))
    if draw(st.booleans()):
        a.user.session_id, a.user.anonymous_id, a.user.user_id = draw(text), draw(text), draw(text)
        a.user.identities.update(draw(maps))
    if draw(st.booleans()):
        m = a.metadata
        m.locale, m.device_type, m.currency = draw(text), draw(text), draw(text)
        m.page_url, m.user_agent, m.query = draw(text), draw(text), draw(text)
        if draw(st.booleans()):
            m.price = draw(st.integers(-(2**63), 2**63 - 1))
        if draw(st.booleans()):
            m.quantity = draw(st.integers(-(2**63), 2**63 - 1))
        m.custom.update(draw(maps))
    if draw(st.booleans()):
        seconds, nanos = draw(timestamps)
        a.occurred_at.seconds, a.occurred_at.nanos = seconds, nanos
    return a


def check_rejections(response: pb.TrackActivitiesResponse | pb.TrackActivityResponse) -> None:
    for r in response.rejections:
        assert r.message
        assert r.reason != pb.REJECTION_REASON_UNSPECIFIED
        # A rejection names its field, or the activity as a whole (its size, or bytes that do not parse).
        assert r.field or r.reason in (pb.REJECTION_REASON_TOO_LARGE, pb.REJECTION_REASON_INVALID_VALUE)


def call(channel: grpc.Channel, method: str, body: bytes) -> None:
    stub = channel.unary_unary(
        f"/activity.v1.ActivityService/{method}",
        request_serializer=None,
        response_deserializer=METHODS[method].FromString,
    )
    try:
        response = stub(body, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in ALLOWED, (error.code(), error.details())  # type: ignore[attr-defined]
        return
    check_rejections(response)


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(batch=st.lists(activities(), min_size=0, max_size=12), sent=st.none() | timestamps)
def test_random_batches(
    channel: grpc.Channel, batch: list[pb.Activity], sent: tuple[int, int] | None
) -> None:
    request = pb.TrackActivitiesRequest(activities=batch)
    if sent is not None:
        request.sent_at.seconds, request.sent_at.nanos = sent
    call(channel, "TrackActivities", request.SerializeToString())


@FUZZ
@given(activity=activities())
def test_random_single_activities(channel: grpc.Channel, activity: pb.Activity) -> None:
    call(channel, "TrackActivity", pb.TrackActivityRequest(activity=activity).SerializeToString())


@FUZZ
@given(
    batch=st.lists(activities(), min_size=1, max_size=5),
    cut=st.integers(0, 2000),
    noise=st.binary(max_size=40),
)
def test_mangled_bytes(channel: grpc.Channel, batch: list[pb.Activity], cut: int, noise: bytes) -> None:
    raw = pb.TrackActivitiesRequest(activities=batch).SerializeToString()
    position = cut % (len(raw) + 1)
    for method in METHODS:
        call(channel, method, raw[:position] + noise + raw[position:])
        call(channel, method, raw[:position])


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes(channel: grpc.Channel, body: bytes) -> None:
    for method in METHODS:
        call(channel, method, body)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(
        st.binary(max_size=200)
        | st.builds(
            lambda b: b.SerializeToString(),
            st.builds(
                lambda acts: pb.StreamActivitiesRequest(sequence=7, activities=acts),
                st.lists(activities(), max_size=4),
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_stream_batches(channel: grpc.Channel, batches: list[bytes]) -> None:
    stream = channel.stream_stream(
        "/activity.v1.ActivityService/StreamActivities",
        request_serializer=None,
        response_deserializer=pb.StreamActivitiesResponse.FromString,
    )
    answers = list(stream(iter(batches), timeout=30))
    assert len(answers) == len(batches)
    for answer in answers:
        assert answer.status.code in {c.value[0] for c in ALLOWED}
        check_rejections(answer)  # type: ignore[arg-type]


def test_the_server_still_answers(channel: grpc.Channel) -> None:
    time.sleep(0.1)
    call(channel, "TrackActivities", b"")
