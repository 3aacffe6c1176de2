"""End to end: a real gRPC connection on loopback into the embedded ClickHouse engine."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
import grpc.aio
import pytest
from activity_client.trailers import retry_delay_from_trailer
from helpers import hold_inserts, make_activity, wait_for

from collector.doors.service import ONE
from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from core.wire import varint

pytestmark = pytest.mark.timeout(60)


def rows(server: CollectorServer, sql: str) -> list[tuple[Any, ...]]:
    assert server.store is not None
    text = server.store.query(sql, "TabSeparated").decode()
    return [tuple(line.split("\t")) for line in text.splitlines()]


def count(server: CollectorServer, where: str = "1") -> int:
    return int(rows(server, f"SELECT count() FROM activities WHERE {where}")[0][0])


async def test_track_activity_stores_every_column(
    server: CollectorServer, stub: pb_grpc.ActivityServiceStub
) -> None:
    activity = pb.Activity(
        id="0b6f3a1e-3c55-4a8e-9d8e-7a1f2b3c4d5e",
        action="Add-To-Cart",
        target=pb.Target(type="product", id="sku-1", attributes={"color": "red", "size": "M"}),
        user=pb.User(session_id="s-1", anonymous_id="anon-1", user_id="u-1", identities={"crm": "C-9"}),
        source_id="fhr-response-42",
        source=pb.Source(type="Site-Search", name="pdp similar", variant="B", position=3, result_count=0),
        metadata=pb.Metadata(
            locale="en_us",
            device_type="Mobile",
            quantity=2,
            price=1999,
            currency="eur",
            order_id="o-1",
            page_url="https://shop.example/p/1",
            referrer="https://shop.example/",
            user_agent="Mozilla/5.0",
            query="red shirt",
            custom={"ab": "b"},
        ),
        segments=["returning", "vip"],
    )
    activity.occurred_at.FromSeconds(1_790_000_000)
    request = pb.TrackActivityRequest(activity=activity)
    # The client's clock is one hour behind the server's.
    request.sent_at.FromNanoseconds(time.time_ns() - 3600 * 10**9)

    response = await stub.TrackActivity(request)

    assert response.accepted_count == 1
    assert list(response.rejections) == []
    assert response.activity_id == activity.id
    got = rows(
        server,
        "SELECT tenant_id, id, action, target_type, target_id, toJSONString(mapSort(target_attributes)), "
        "session_id, "
        "anonymous_id, user_id, toJSONString(identities), source_id, locale, device_type, quantity, price, "
        "currency, order_id, page_url, referrer, user_agent, query, toJSONString(custom), "
        "arrayStringConcat(segments, ','), toUnixTimestamp(client_occurred_at), "
        "round(clock_skew_ms / 1000), toUnixTimestamp(occurred_at) - toUnixTimestamp(client_occurred_at), "
        "abs(dateDiff('second', received_at, now64())) < 60, sent_at < received_at, "
        "source_type, source_name, source_variant, source_position, source_result_count FROM activities",
    )
    assert got == [
        (
            "default",
            activity.id,
            "add_to_cart",
            "product",
            "sku-1",
            '{"color":"red","size":"M"}',
            "s-1",
            "anon-1",
            "u-1",
            '{"crm":"C-9"}',
            "fhr-response-42",
            "en-US",
            "mobile",
            "2",
            "1999",
            "EUR",
            "o-1",
            "https://shop.example/p/1",
            "https://shop.example/",
            "Mozilla/5.0",
            "red shirt",
            '{"ab":"b"}',
            "returning,vip",
            "1790000000",
            "3600",
            "3600",
            "1",
            "1",
            "site_search",
            "pdp similar",
            "B",
            "3",
            "0",
        )
    ]


async def test_activity_without_id_or_time_gets_them_from_the_server(
    server: CollectorServer, stub: pb_grpc.ActivityServiceStub
) -> None:
    activity = make_activity(1)
    activity.ClearField("id")
    activity.metadata.ClearField("locale")
    response = await stub.TrackActivity(pb.TrackActivityRequest(activity=activity))
    assert response.accepted_count == 1
    assigned = uuid.UUID(response.activity_id)
    got = rows(
        server,
        "SELECT id, client_occurred_at IS NULL, occurred_at = received_at, quantity IS NULL FROM activities",
    )
    assert got == [(str(assigned), "1", "1", "1")]


async def test_mixed_batch_keeps_good_activities_and_names_each_bad_one(
    server: CollectorServer, stub: pb_grpc.ActivityServiceStub
) -> None:
    good = [make_activity(n) for n in range(3)]
    missing_action = make_activity(10, action="")
    bad_currency = make_activity(11, metadata=pb.Metadata(price=100, currency="XYZ"))
    no_user = make_activity(12)
    no_user.ClearField("user")
    duplicate = make_activity(13, id=good[0].id)
    batch = [good[0], missing_action, good[1], bad_currency, no_user, good[2], duplicate]

    response = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))

    assert response.accepted_count == 3
    got = [(r.index, r.activity_id, r.reason, r.field) for r in response.rejections]
    assert got == [
        (1, missing_action.id, pb.REJECTION_REASON_MISSING_FIELD, "action"),
        (3, bad_currency.id, pb.REJECTION_REASON_INVALID_VALUE, "metadata.currency"),
        (4, no_user.id, pb.REJECTION_REASON_MISSING_FIELD, "user"),
        (6, duplicate.id, pb.REJECTION_REASON_DUPLICATE_ID, "id"),
    ]
    assert all(r.message for r in response.rejections)
    stored = {r[0] for r in rows(server, "SELECT id FROM activities")}
    assert stored == {a.id for a in good}


async def test_assigned_ids_are_reported_by_index(
    server: CollectorServer, stub: pb_grpc.ActivityServiceStub
) -> None:
    batch = [make_activity(n) for n in range(4)]
    batch[1].ClearField("id")
    batch[3].ClearField("id")
    response = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
    assert response.accepted_count == 4
    assert sorted(response.assigned_ids) == [1, 3]
    stored = {r[0] for r in rows(server, "SELECT id FROM activities")}
    assert stored == {batch[0].id, batch[2].id, *response.assigned_ids.values()}


async def test_stream_answers_every_batch_with_its_sequence(
    server: CollectorServer, channel: grpc.aio.Channel
) -> None:
    stub = pb_grpc.ActivityServiceStub(channel)
    call = stub.StreamActivities()
    sent: dict[int, list[pb.Activity]] = {}
    for seq in range(1, 21):
        batch = [make_activity(seq * 100 + n) for n in range(50)]
        if seq == 7:
            batch[3].target.id = ""
        sent[seq] = batch
        request = pb.StreamActivitiesRequest(sequence=seq, activities=batch)
        request.sent_at.GetCurrentTime()
        await call.write(request)
    await call.done_writing()
    answers = {r.sequence: r async for r in call}

    assert sorted(answers) == list(range(1, 21))
    for seq, answer in answers.items():
        assert answer.status.code == 0
        assert answer.accepted_count == (49 if seq == 7 else 50)
    assert [(r.index, r.field) for r in answers[7].rejections] == [(3, "target.id")]
    assert count(server) == 20 * 50 - 1
    assert await call.code() == grpc.StatusCode.OK


async def test_stream_reports_a_whole_batch_failure_in_its_status(
    server: CollectorServer, stub: pb_grpc.ActivityServiceStub
) -> None:
    call = stub.StreamActivities()
    await call.write(pb.StreamActivitiesRequest(sequence=5))
    await call.write(pb.StreamActivitiesRequest(sequence=6, activities=[make_activity(1)]))
    await call.done_writing()
    answers = {r.sequence: r async for r in call}
    assert answers[5].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "empty" in answers[5].status.message
    assert answers[6].status.code == 0 and answers[6].accepted_count == 1


async def test_concurrent_single_activity_calls_share_inserts(
    server: CollectorServer, stub: pb_grpc.ActivityServiceStub
) -> None:
    assert server.pipeline is not None
    before = server.pipeline.stats.inserts
    calls = [stub.TrackActivity(pb.TrackActivityRequest(activity=make_activity(n))) for n in range(200)]
    responses = await asyncio.gather(*calls)
    assert all(r.accepted_count == 1 for r in responses)
    inserts = server.pipeline.stats.inserts - before
    assert count(server) == 200
    # Two hundred requests, a handful of inserts: group commit across requests.
    assert 1 <= inserts <= 20, inserts


async def test_empty_and_oversized_batches_are_invalid_argument(
    start_server: Any,
) -> None:
    server = await start_server(max_batch_activities=10, max_request_bytes=20_000, max_activity_bytes=5_000)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await stub.TrackActivities(pb.TrackActivitiesRequest())
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "empty" in (empty.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as too_many:
            await stub.TrackActivities(
                pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(11)])
            )
        assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit is 10" in (too_many.value.details() or "")

        big = [
            make_activity(n, source_id="x" * 100, metadata=pb.Metadata(query="q" * 2000)) for n in range(10)
        ]
        with pytest.raises(grpc.aio.AioRpcError) as too_big:
            await stub.TrackActivities(pb.TrackActivitiesRequest(activities=big))
        assert too_big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_request_bytes" in (too_big.value.details() or "")

        # Far past the transport's own limit: refused by the transport, and the server lives on.
        huge = pb.TrackActivitiesRequest(activities=[make_activity(0, source_id="y" * 200_000)])
        with pytest.raises(grpc.aio.AioRpcError) as transport:
            await stub.TrackActivities(huge)
        assert transport.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ok = await stub.TrackActivity(pb.TrackActivityRequest(activity=make_activity(1)))
        assert ok.accepted_count == 1


async def test_malformed_utf8_rejects_only_its_activity(
    server: CollectorServer, channel: grpc.aio.Channel
) -> None:
    batch = [make_activity(n) for n in range(3)]
    batch[1].metadata.referrer = "MARKER-MARKER"
    raw = pb.TrackActivitiesRequest(activities=batch).SerializeToString()
    raw = raw.replace(b"MARKER-MARKER", b"MARKER-\xff\xfe\xfdKER")
    call = channel.unary_unary(
        "/activity.v1.ActivityService/TrackActivities",
        request_serializer=None,
        response_deserializer=pb.TrackActivitiesResponse.FromString,
    )
    response = await call(raw)
    assert response.accepted_count == 2
    assert [(r.index, r.reason, r.field) for r in response.rejections] == [
        (1, pb.REJECTION_REASON_INVALID_VALUE, "metadata.referrer")
    ]
    assert {r[0] for r in rows(server, "SELECT id FROM activities")} == {batch[0].id, batch[2].id}

    with pytest.raises(grpc.aio.AioRpcError) as garbage:
        await call(b"\xff\xff\xff\xff")
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_full_queue_answers_resource_exhausted_with_retry_delay(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first batch fills the queue, and its insert is held until the second has been refused.
    server = await start_server(
        queue_capacity=100,
        max_batch_activities=100,
        insert_workers=1,
        retry_delay_ms=250,
    )
    assert server.pipeline is not None
    release = hold_inserts(server, monkeypatch)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        first = asyncio.ensure_future(
            stub.TrackActivities(pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(100)]))
        )
        try:
            await wait_for(lambda: server.pipeline.pending == 100, "the first batch to fill the queue")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.TrackActivity(pb.TrackActivityRequest(activity=make_activity(500)))
        finally:
            release.set()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_delay_from_trailer(refused.value.trailing_metadata()) == pytest.approx(0.25)
        assert (await first).accepted_count == 100
        assert server.pipeline.stats.refused == 1
        # Once committed, there is room again.
        later = await stub.TrackActivity(pb.TrackActivityRequest(activity=make_activity(501)))
        assert later.accepted_count == 1
    assert count(server) == 101


async def test_store_failure_answers_unavailable_and_stores_nothing(
    server: CollectorServer, stub: pb_grpc.ActivityServiceStub
) -> None:
    assert server.store is not None
    server.store.command("RENAME TABLE activities TO activities_away")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.TrackActivities(
                pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(5)])
            )
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert retry_delay_from_trailer(failed.value.trailing_metadata()) is not None
        call = stub.StreamActivities()
        await call.write(pb.StreamActivitiesRequest(sequence=1, activities=[make_activity(9)]))
        await call.done_writing()
        answer = await anext(aiter(call))
        assert answer.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert answer.status.retry_delay.ToNanoseconds() > 0
        assert answer.accepted_count == 0
    finally:
        server.store.command("RENAME TABLE activities_away TO activities")
    assert count(server) == 0
    # The store is back: the same request now succeeds.
    ok = await stub.TrackActivities(
        pb.TrackActivitiesRequest(activities=[make_activity(n) for n in range(5)])
    )
    assert ok.accepted_count == 5


async def test_shutdown_with_requests_in_flight_loses_nothing_acknowledged(start_server: Any) -> None:
    server = await start_server(flush_interval_ms=50)
    acknowledged: list[str] = []
    errors: list[grpc.StatusCode] = []

    async def client(n: int, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.ActivityServiceStub(channel)
        for k in range(1000):
            batch = [make_activity(n * 100_000 + k * 10 + i) for i in range(10)]
            try:
                response = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=batch))
            except grpc.aio.AioRpcError as error:
                errors.append(error.code())
                return
            assert response.accepted_count == 10
            acknowledged.extend(a.id for a in batch)

    async with grpc.aio.insecure_channel(server.address) as channel:
        clients = [asyncio.create_task(client(n, channel)) for n in range(8)]
        await wait_for(lambda: len(acknowledged) >= 100, "some requests to be answered before shutdown")
        await server.shutdown(grace=5.0)
        await asyncio.gather(*clients)

    assert acknowledged, "no request was answered before shutdown"
    # Refused requests are told to come back (UNAVAILABLE); one racing the closing port may see the
    # transport's CANCELLED instead. Neither is an acknowledgement.
    assert len(errors) == 8
    assert set(errors) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    # The store is closed with the server: read what it committed through a new one.
    from workers.storage.clickhouse import ClickHouseStore

    store = ClickHouseStore(server.settings.effective_clickhouse_dsn, server.settings.clickhouse_database)
    try:
        ids = {
            line for line in store.query("SELECT id FROM activities", "TabSeparated").decode().splitlines()
        }
    finally:
        store.close()
    assert set(acknowledged) <= ids


async def test_track_activity_with_malformed_utf8_is_a_rejection(
    server: CollectorServer, channel: grpc.aio.Channel
) -> None:
    activity = make_activity(1, source_id="MARKER-MARKER")
    raw = pb.TrackActivityRequest(activity=activity).SerializeToString()
    call = channel.unary_unary(
        "/activity.v1.ActivityService/TrackActivity",
        request_serializer=None,
        response_deserializer=pb.TrackActivityResponse.FromString,
    )
    response = await call(raw.replace(b"MARKER-MARKER", b"MARKER-\xff\xfe\xfdKER"))
    assert response.accepted_count == 0
    assert [(r.index, r.reason, r.field) for r in response.rejections] == [
        (0, pb.REJECTION_REASON_INVALID_VALUE, "source_id")
    ]
    with pytest.raises(grpc.aio.AioRpcError) as truncated:
        await call(raw[:-3])
    assert truncated.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_activity_with_broken_framing_inside_does_not_sink_its_batch(
    server: CollectorServer, channel: grpc.aio.Channel
) -> None:
    good = make_activity(1)
    # A valid outer frame around an activity whose own first field claims 5 bytes and has 2.
    broken = b"\x0a\x04\x0a\x05ab"
    raw = pb.TrackActivitiesRequest(activities=[good]).SerializeToString() + broken
    call = channel.unary_unary(
        "/activity.v1.ActivityService/TrackActivities",
        request_serializer=None,
        response_deserializer=pb.TrackActivitiesResponse.FromString,
    )
    response = await call(raw)
    assert response.accepted_count == 1
    assert [(r.index, r.reason) for r in response.rejections] == [(1, pb.REJECTION_REASON_INVALID_VALUE)]
    assert count(server) == 1


async def test_a_client_cannot_set_the_fields_the_collector_appends(
    server: CollectorServer, channel: grpc.aio.Channel
) -> None:
    # Field 1001 of a stored row is its tenant; a client sending it inside an Activity is ignored.
    activity = make_activity(1)
    spoof = b"\xca\x3e\x04evil"  # field 1001, length-delimited, "evil"
    body = activity.SerializeToString() + spoof
    raw = b"\x0a" + varint(len(body)) + body
    call = channel.unary_unary(
        "/activity.v1.ActivityService/TrackActivity",
        request_serializer=None,
        response_deserializer=pb.TrackActivityResponse.FromString,
    )
    response = await call(raw)
    assert response.accepted_count == 1
    assert rows(server, "SELECT tenant_id FROM activities") == [("default",)]


async def test_concurrent_calls_per_connection_are_bounded(start_server: Any) -> None:
    server = await start_server(max_concurrent_streams=2, flush_interval_ms=300)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        # The first call connects; from then on the client knows the limit.
        await stub.TrackActivity(pb.TrackActivityRequest(activity=make_activity(99)))
        started = time.monotonic()

        # Each call waits ~300 ms for its group commit; with two streams at a time, six calls take
        # at least three rounds.
        # A stream the server has not yet released when the client opens the next one is refused
        # (REFUSED_STREAM, UNAVAILABLE): the documented answer to that is a resend.
        async def track(n: int) -> pb.TrackActivityResponse:
            request = pb.TrackActivityRequest(activity=make_activity(n))
            for _ in range(4):
                try:
                    response: pb.TrackActivityResponse = await stub.TrackActivity(request)
                    return response
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
            return await stub.TrackActivity(request)

        responses = await asyncio.gather(*(track(n) for n in range(6)))
        elapsed = time.monotonic() - started
    assert [r.accepted_count for r in responses] == [1] * 6
    assert elapsed >= 0.8


async def test_track_activity_answers_alike_on_the_compiled_and_the_python_path(
    server: CollectorServer, channel: grpc.aio.Channel
) -> None:
    """A canonical single activity takes the compiled path (as batches do); one that must be
    normalised, or a request carrying its activity field twice (protobuf merges the two), takes the
    Python path. Either way the caller gets the same kind of answer and the row is stored."""
    assert server.service is not None
    call = channel.unary_unary(
        "/activity.v1.ActivityService/TrackActivity",
        request_serializer=None,
        response_deserializer=pb.TrackActivityResponse.FromString,
    )
    with_id = make_activity(1)
    without_id = make_activity(2, id="")
    legacy = make_activity(3, action="Add-To-Cart")
    first, second = make_activity(4), make_activity(5)
    merged = (
        pb.TrackActivityRequest(activity=first).SerializeToString()
        + pb.TrackActivityRequest(activity=second).SerializeToString()
    )
    cases = [
        (pb.TrackActivityRequest(activity=with_id).SerializeToString(), True),
        (pb.TrackActivityRequest(activity=without_id).SerializeToString(), True),
        (pb.TrackActivityRequest(activity=legacy).SerializeToString(), True),
        (merged, False),
    ]
    for raw, compiled in cases:
        evaluated = server.service._evaluate(raw, ONE, time.time_ns())
        assert (evaluated.fast is not None) is compiled
        if compiled:
            # The legacy spelling goes the Python way inside the compiled path's request.
            slow = raw is cases[2][0]
            assert (evaluated.fast.count, [i for i, _ in evaluated.items]) == ((0, [0]) if slow else (1, []))  # type: ignore[union-attr]

    answers = [await call(raw) for raw, _ in cases]
    assert [a.accepted_count for a in answers] == [1, 1, 1, 1]
    assert answers[0].activity_id == with_id.id
    assigned = answers[1].activity_id
    assert uuid.UUID(assigned).version == 4
    assert answers[2].activity_id == legacy.id
    assert answers[3].activity_id == second.id  # the later id wins, as protobuf merges
    stored = rows(server, "SELECT toString(id), action FROM activities ORDER BY id")
    assert sorted(stored) == sorted(
        [
            (with_id.id, with_id.action),
            (assigned, without_id.action),
            (legacy.id, "add_to_cart"),
            (second.id, second.action),
        ]
    )


async def test_source_fields_are_stored_on_both_paths_and_unset_ones_stay_empty(
    server: CollectorServer, stub: pb_grpc.ActivityServiceStub
) -> None:
    # Canonical (the compiled path takes it), non-canonical type (the Python path), no source at all,
    # and a source without a result count: NULL, not 0.
    activities = [
        make_activity(0, source_id="r-0", source=pb.Source(type="recommendation", name="home", position=1)),
        make_activity(1, source_id="r-1", source=pb.Source(type="Search", result_count=0)),
        make_activity(2),
        make_activity(3, source=pb.Source(type="search")),
    ]
    response = await stub.TrackActivities(pb.TrackActivitiesRequest(activities=activities))
    assert response.accepted_count == 3
    assert [(r.index, r.field) for r in response.rejections] == [(3, "source")]
    got = rows(
        server,
        "SELECT target_id, source_id, source_type, source_name, source_position, "
        "ifNull(toString(source_result_count), 'NULL') FROM activities ORDER BY target_id",
    )
    assert got == [
        ("sku-0", "r-0", "recommendation", "home", "1", "NULL"),
        ("sku-1", "r-1", "search", "", "0", "0"),
        ("sku-2", "", "", "", "0", "NULL"),
    ]
