"""The worker pipeline against the real embedded engine: group commit, bounds, failures, shutdown."""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import make_activity, wait_for

from core.proto.activity.v1 import activity_pb2 as pb
from workers.commit.pipeline import Overloaded, Pipeline, Submission, Unavailable
from workers.commit.settings import PipelineSettings
from workers.commit.spool import Spool
from workers.commit.spooled import MAX_RETRY_S
from workers.storage.clickhouse import ClickHouseStore

pytestmark = pytest.mark.timeout(60)

MakePipeline = Callable[..., Pipeline]


@pytest.fixture
async def make_pipeline(store: ClickHouseStore) -> AsyncIterator[MakePipeline]:
    made: list[Pipeline] = []

    def make(**settings: Any) -> Pipeline:
        pipeline = Pipeline(PipelineSettings(**settings), store)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        await pipeline.shutdown(timeout=5)


def submission(activities: list[pb.Activity]) -> Submission:
    return Submission(
        items=list(enumerate(activities)),
        tenant="t1",
        received_ns=time.time_ns(),
        sent_ns=None,
        skew_ns=0,
        future=asyncio.get_running_loop().create_future(),
    )


def stored(store: ClickHouseStore) -> int:
    return int(store.query("SELECT count() FROM activities", "TabSeparated"))


async def test_concurrent_submissions_share_inserts(
    make_pipeline: MakePipeline, store: ClickHouseStore
) -> None:
    pipeline = make_pipeline(flush_interval_ms=20)
    await pipeline.start()
    subs = [submission([make_activity(n * 10 + i) for i in range(3)]) for n in range(100)]
    for sub in subs:
        pipeline.submit(sub)
    await asyncio.gather(*(s.future for s in subs))
    assert stored(store) == 300
    assert pipeline.stats.committed == 300
    assert pipeline.stats.inserts <= 5
    assert pipeline.pending == 0


async def test_inserts_are_cut_at_insert_max_rows(
    make_pipeline: MakePipeline, store: ClickHouseStore
) -> None:
    pipeline = make_pipeline(insert_max_rows=100, flush_interval_ms=50, queue_capacity=10_000)
    await pipeline.start()
    subs = [submission([make_activity(n * 100 + i) for i in range(40)]) for n in range(10)]
    for sub in subs:
        pipeline.submit(sub)
    await asyncio.gather(*(s.future for s in subs))
    # Whole submissions are never split; an insert stops taking them once it holds 100 rows.
    assert max(pipeline.stats.insert_sizes) <= 120
    assert sum(pipeline.stats.insert_sizes) == 400
    assert stored(store) == 400


async def test_admission_is_bounded_and_counted(make_pipeline: MakePipeline) -> None:
    pipeline = make_pipeline(queue_capacity=10, flush_interval_ms=200, insert_workers=1, retry_delay_ms=700)
    await pipeline.start()
    first = submission([make_activity(i) for i in range(8)])
    pipeline.submit(first)
    with pytest.raises(Overloaded) as refused:
        pipeline.submit(submission([make_activity(100 + i) for i in range(3)]))
    assert refused.value.retry_delay_s == pytest.approx(0.7)
    assert "queue_capacity is 10" in str(refused.value)
    assert pipeline.stats.refused == 3
    pipeline.submit(submission([make_activity(200), make_activity(201)]))  # exactly fills it
    await first.future
    assert pipeline.pending <= 2


async def test_store_failure_fails_the_submissions_without_retrying_a_permanent_error(
    make_pipeline: MakePipeline, store: ClickHouseStore
) -> None:
    pipeline = make_pipeline(insert_attempts=3)
    await pipeline.start()
    store.command("RENAME TABLE activities TO activities_gone")
    sub = submission([make_activity(1)])
    pipeline.submit(sub)
    with pytest.raises(Unavailable) as failed:
        await sub.future
    assert "storing the activities failed" in str(failed.value)
    assert pipeline.stats.insert_failures == 1
    assert pipeline.stats.insert_retries == 0  # an unknown table will not appear by retrying
    assert pipeline.stats.failed == 1
    assert pipeline.pending == 0
    store.command("RENAME TABLE activities_gone TO activities")


async def test_shutdown_flushes_what_was_submitted(
    make_pipeline: MakePipeline, store: ClickHouseStore
) -> None:
    pipeline = make_pipeline(flush_interval_ms=500)
    await pipeline.start()
    subs = [submission([make_activity(n)]) for n in range(20)]
    for sub in subs:
        pipeline.submit(sub)
    await pipeline.shutdown(timeout=5)
    assert all(s.future.done() and s.future.exception() is None for s in subs)
    assert stored(store) == 20
    with pytest.raises(Unavailable):
        pipeline.submit(submission([make_activity(99)]))


async def test_enrichment_writes_canonical_values_and_batch_fields(
    make_pipeline: MakePipeline, store: ClickHouseStore
) -> None:
    pipeline = make_pipeline()
    await pipeline.start()
    activity = make_activity(
        1, action="Remove From-Cart", metadata=pb.Metadata(locale="pt_br", currency="brl")
    )
    activity.metadata.price = 500
    activity.metadata.device_type = "Smart-TV"
    activity.ClearField("id")
    sub = submission([activity])
    pipeline.submit(sub)
    assigned = await sub.future
    row = store.query(
        "SELECT toString(id), action, locale, currency, device_type, tenant_id FROM activities",
        "TabSeparated",
    )
    assert row.decode().split() == [assigned[0], "remove_from_cart", "pt-BR", "BRL", "smart_tv", "t1"]


async def test_spooled_rows_are_inserted_once_drain_rows_wait_or_the_interval_has_passed(
    store: ClickHouseStore, tmp_path: Path
) -> None:
    # drain_rows: with an interval far longer than the test waits, only the rows can start the insert.
    spool = Spool(tmp_path / "spool", capacity_bytes=10_000_000)
    pipeline = Pipeline(PipelineSettings(drain_interval_ms=120_000, drain_rows=30), store, spool)
    await pipeline.start()
    try:
        first = submission([make_activity(n) for n in range(20)])
        pipeline.submit(first)
        await first.future  # acknowledged once spooled
        await asyncio.sleep(0.5)
        # 20 rows wait, fewer than drain_rows: no insert before the interval.
        assert stored(store) == 0 and pipeline.stats.inserts == 0
        second = submission([make_activity(100 + n) for n in range(10)])
        pipeline.submit(second)
        await second.future
        # 30 rows wait: the insert goes without waiting for the rest of the interval (wait_for gives
        # up after 20 s, well before the 120 s interval would have passed).
        await wait_for(lambda: pipeline.stats.inserts == 1, "the 30 rows to be inserted", timeout=20)
        assert stored(store) == 30
    finally:
        await pipeline.shutdown(timeout=5)

    # drain_interval_ms: 5 rows alone, far fewer than drain_rows, are inserted once the interval has passed.
    spool = Spool(tmp_path / "spool-2", capacity_bytes=10_000_000)
    pipeline = Pipeline(PipelineSettings(drain_interval_ms=1500, drain_rows=1000), store, spool)
    await pipeline.start()
    try:
        third = submission([make_activity(200 + n) for n in range(5)])
        started = time.monotonic()
        pipeline.submit(third)
        await third.future
        await wait_for(lambda: pipeline.stats.inserts == 1, "the last 5 rows to be inserted")
        assert time.monotonic() - started >= 1.4
        assert stored(store) == 35
    finally:
        await pipeline.shutdown(timeout=5)


class WatchedSpool(Spool):
    """The real spool, noting at each commit what the pipeline had counted as committed by then."""

    pipeline: Pipeline | None = None
    counted_at_commit: list[int]

    def commit(self, planned: Any) -> None:
        assert self.pipeline is not None
        self.counted_at_commit.append(self.pipeline.stats.committed)
        super().commit(planned)


async def test_spooled_rows_are_counted_before_the_spool_lets_them_go(
    store: ClickHouseStore, tmp_path: Path
) -> None:
    # A scrape between the two must never see the spool's depth drop ahead of the committed rows.
    spool = WatchedSpool(tmp_path / "spool", capacity_bytes=10_000_000)
    spool.counted_at_commit = []
    pipeline = Pipeline(PipelineSettings(drain_interval_ms=50, drain_rows=10), store, spool)
    spool.pipeline = pipeline
    await pipeline.start()
    try:
        for batch in range(3):
            sub = submission([make_activity(10 * batch + n) for n in range(10)])
            pipeline.submit(sub)
            await sub.future
            # Counted first, then the spool's commit: wait for both.
            await wait_for(
                lambda b=batch: pipeline.stats.inserts == b + 1 and len(spool.counted_at_commit) == b + 1,
                "the batch to be inserted and the spool to commit it",
            )
        assert spool.counted_at_commit == [10, 20, 30]
        assert stored(store) == 30
    finally:
        await pipeline.shutdown(timeout=5)


class FullDiskCheckpoint:
    """Stands in for a spool's checkpoint writer: its writes fail with ENOSPC while `full`, and the
    `skip` first writes of a failing spell go through (to fail a commit after its plan)."""

    def __init__(self, spool: Spool) -> None:
        self.real = spool._checkpoint.write
        self.full = False
        self.skip = 0
        self.failed = 0
        spool._checkpoint.write = self.write  # type: ignore[method-assign]

    def write(self, state: dict[str, object]) -> None:
        if self.full and self.skip:
            self.skip -= 1
        elif self.full:
            self.failed += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real(state)


@pytest.mark.parametrize("failing", ["plan", "commit"])
async def test_a_checkpoint_that_cannot_be_written_holds_the_drain_not_the_store(
    store: ClickHouseStore, tmp_path: Path, failing: str
) -> None:
    spool = Spool(tmp_path / "spool", capacity_bytes=10_000_000, min_free_bytes=0)
    pipeline = Pipeline(PipelineSettings(drain_interval_ms=20, drain_rows=10), store, spool)
    await pipeline.start()
    checkpoint = FullDiskCheckpoint(spool)
    try:
        checkpoint.full, checkpoint.skip = True, (1 if failing == "commit" else 0)
        sub = submission([make_activity(n) for n in range(10)])
        pipeline.submit(sub)
        await sub.future  # acknowledged: the records are written, only the checkpoint fails
        await wait_for(lambda: checkpoint.failed >= 3, "the checkpoint's write to fail again and again")
        # Not the store's failure: no insert counted as failed or retried.
        assert (pipeline.stats.insert_retries, pipeline.stats.insert_failures) == (0, 0)
        assert "checkpoint" in spool.stats.errors
        assert stored(store) == (10 if failing == "commit" else 0)
        checkpoint.full = False
        started = time.monotonic()
        await wait_for(lambda: spool.committed == 1 and not spool.stats.errors, "the drain to resume")
        # Retried at most SPOOL_RETRY_MAX_S (1 s) apart: resumed well before the store's ceiling of
        # MAX_RETRY_S (5 s) between retries would have let it.
        assert time.monotonic() - started < MAX_RETRY_S
        assert stored(store) == 10
        assert (pipeline.stats.inserts, pipeline.stats.committed) == (1, 10)
    finally:
        await pipeline.shutdown(timeout=5)
    again = Spool(tmp_path / "spool", capacity_bytes=10_000_000)
    again.open()
    assert (again.pending_counts(), again.planned(), again.committed) == ({}, [], 1)
    again.close()


async def test_a_spool_disk_under_its_reserve_refuses_as_overloaded(
    store: ClickHouseStore, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool", capacity_bytes=10_000_000)
    # A reserve larger than any disk: every request is refused before anything is written.
    pipeline = Pipeline(PipelineSettings(spool_min_free_bytes=2**62, retry_delay_ms=250), store, spool)
    await pipeline.start()
    try:
        assert spool.min_free_bytes == 2**62  # taken from the settings
        sub = submission([make_activity(n) for n in range(3)])
        pipeline.submit(sub)
        with pytest.raises(Overloaded, match=r"spool's disk is full: .* \(spool_min_free_bytes\)") as refused:
            await sub.future
        assert refused.value.retry_delay_s == 0.25
        assert pipeline.stats.refused == 3 and pipeline.pending == 0
        assert spool.size_bytes == 0 and spool.stats.disk_refusals == 1
    finally:
        await pipeline.shutdown(timeout=5)
