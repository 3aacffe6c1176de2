"""The spool on a real file system: durability records, replay, damage, capacity, checkpoints."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers.commit.spool import (
    CHECKPOINT,
    HEADER_SIZE,
    Planned,
    Spool,
    SpoolDiskFull,
    SpoolError,
    SpoolFull,
    encode_record,
)

pytestmark = pytest.mark.timeout(30)


def opened(directory: Path, **kwargs: int) -> Spool:
    kwargs.setdefault("min_free_bytes", 0)
    spool = Spool(directory, capacity_bytes=kwargs.pop("capacity_bytes", 10_000_000), **kwargs)
    spool.open()
    return spool


def test_records_survive_a_reopen_until_committed(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    sequences = spool.append([(2, b"row-a|row-b"), (1, b"row-c")])
    spool.sync()
    assert sequences == [1, 2]
    spool.close()

    again = opened(tmp_path)
    assert again.pending_counts() == {1: 2, 2: 1}
    assert [(r.sequence, r.count, r.rows) for r in again.read_range(1, 2)] == [
        (1, 2, b"row-a|row-b"),
        (2, 1, b"row-c"),
    ]
    again.commit(Planned(1, 1, "t1"))
    again.close()

    third = opened(tmp_path)
    assert third.pending_counts() == {2: 1}
    assert third.committed == 1
    assert third.next_sequence == 3


def test_a_range_is_sized_before_it_is_read_and_read_one_record_at_a_time(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([(2, b"row-a|row-b"), (1, b"row-c"), (3, b"x" * 1000)])
    spool.sync()
    spool.commit(Planned(1, 1, "t1"))
    spooled = spool.spooled(1, 3)
    assert (spooled.sequences, spooled.rows, spooled.nbytes) == ([2, 3], 4, 5 + 1000)
    records = spool.records(spooled.sequences)
    assert next(records).rows == b"row-c"
    assert next(records).rows == b"x" * 1000
    assert next(records, None) is None
    spool.close()

    # After a reopen, the sizes come from the segments.
    again = opened(tmp_path)
    assert again.spooled(1, 3) == spooled


def test_a_record_changed_on_disk_after_it_was_written_fails_its_read(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([(1, b"row-a"), (1, b"row-b")])
    spool.sync()
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the second record's rows
    segment.write_bytes(bytes(data))
    records = spool.records([1, 2])
    assert next(records).rows == b"row-a"
    with pytest.raises(OSError, match="spool record 2 changed on disk"):
        next(records)
    spool.close()


def test_planned_inserts_are_handed_back_after_a_stop(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([(1, b"a"), (1, b"b"), (1, b"c")])
    spool.sync()
    spool.plan(Planned(1, 2, "token-1"))
    spool.close()  # as if the process died before the insert's answer

    again = opened(tmp_path)
    assert again.planned() == [Planned(1, 2, "token-1")]
    again.commit(Planned(1, 2, "token-1"))
    assert again.planned() == []
    assert again.committed == 2


def test_commits_out_of_order_advance_the_checkpoint_only_when_contiguous(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([(1, b"a"), (1, b"b"), (1, b"c")])
    spool.commit(Planned(3, 3, "t3"))
    assert spool.committed == 0
    spool.commit(Planned(1, 2, "t12"))
    assert spool.committed == 3


def test_a_torn_tail_is_skipped_reported_and_the_rest_delivered(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([(1, b"first"), (1, b"second")])
    spool.sync()
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    with segment.open("ab") as out:
        out.write(encode_record(3, 1, b"third, cut short")[:-5])

    again = opened(tmp_path)
    assert sorted(again.pending_counts()) == [1, 2]
    assert again.stats.corrupt_records == 1
    assert "torn tail" in again.stats.damage[0]
    # Appending after the damage goes on with the next sequence number.
    assert again.append([(1, b"fourth")]) == [3]


def test_a_damaged_record_in_the_middle_loses_only_itself(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([(1, b"one" * 10), (1, b"two" * 10), (1, b"three" * 10)])
    spool.sync()
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    second = len(encode_record(1, 1, b"one" * 10))
    data[second + HEADER_SIZE + 6] ^= 0xFF  # flip a byte inside the second record's payload
    segment.write_bytes(bytes(data))

    again = opened(tmp_path)
    assert sorted(again.pending_counts()) == [1, 3]
    assert [r.rows for r in again.read_range(1, 3)] == [b"one" * 10, b"three" * 10]
    assert again.stats.corrupt_records == 1
    assert "damaged record" in again.stats.damage[0]
    # The lost sequence does not hold the checkpoint back.
    again.commit(Planned(1, 1, "a"))
    again.commit(Planned(3, 3, "b"))
    assert again.committed == 3


def test_capacity_refuses_whole_appends(tmp_path: Path) -> None:
    spool = opened(tmp_path, capacity_bytes=200)
    spool.append([(1, b"x" * 100)])
    with pytest.raises(SpoolFull, match="spool_capacity_bytes"):
        spool.append([(1, b"y" * 100)])
    assert spool.pending_counts() == {1: 1}


def test_segments_roll_and_are_deleted_once_committed(tmp_path: Path) -> None:
    spool = opened(tmp_path, segment_bytes=100)
    for n in range(6):
        spool.append([(1, bytes([65 + n]) * 80)])
    spool.sync()
    assert len(list(tmp_path.glob("*.seg"))) == 6
    spool.commit(Planned(1, 4, "t"))
    # Segments 1-4 are fully committed; 5 holds an uncommitted record; 6 is being written.
    assert sorted(p.name for p in tmp_path.glob("*.seg")) == [f"{5:020d}.seg", f"{6:020d}.seg"]
    assert spool.size_bytes < 250


def test_appends_do_not_wait_for_a_checkpoint_being_written(tmp_path: Path) -> None:
    # The checkpoint's write blocks, as a checkpoint fsync can block behind the engine's writes on a
    # busy disk.
    spool = opened(tmp_path)
    spool.append([(1, b"row-a")])
    spool.sync()
    writing, release = threading.Event(), threading.Event()
    real_write = spool._checkpoint.write

    def slow_write(state: dict[str, object]) -> None:
        writing.set()
        release.wait(10)
        real_write(state)

    spool._checkpoint.write = slow_write  # type: ignore[method-assign]
    committing = threading.Thread(target=lambda: spool.commit(Planned(1, 1, "t1")))
    committing.start()
    assert writing.wait(10)
    appended: list[list[int]] = []
    appending = threading.Thread(target=lambda: appended.append(spool.append([(1, b"row-b")])))
    appending.start()
    appending.join(timeout=10)
    unblocked = not appending.is_alive()
    release.set()
    committing.join(timeout=10)
    appending.join(timeout=10)
    assert unblocked, "append waited for the checkpoint"
    assert appended == [[2]]
    assert not committing.is_alive()
    assert spool.committed == 1
    spool.sync()
    spool.close()


# -- a full or failing disk -------------------------------------------------------------------------


def test_the_checkpoint_is_written_in_place_and_a_torn_write_leaves_the_state_before(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([(1, b"a"), (1, b"b"), (1, b"c")])
    spool.sync()
    checkpoint = tmp_path / CHECKPOINT
    before = checkpoint.stat()
    spool.plan(Planned(1, 1, "t1"))
    spool.commit(Planned(1, 1, "t1"))
    spool.plan(Planned(2, 3, "t23"))
    after = checkpoint.stat()
    # The same file, the same size: no new space, no temporary file.
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".seg")) == [CHECKPOINT]
    spool.close()

    # The last write torn by a crash (its slot's checksum fails): the state before it is read.
    data = bytearray(checkpoint.read_bytes())
    slot = len(data) // 2
    generations = [int.from_bytes(data[n * slot + 8 : n * slot + 16], "little") for n in range(2)]
    newest = generations.index(max(generations))
    data[newest * slot + 30] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    again = opened(tmp_path)
    assert again.committed == 1
    assert again.planned() == []
    assert sorted(again.pending_counts()) == [2, 3]
    again.close()


def test_a_checkpoint_of_an_earlier_version_is_taken_over(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([(1, b"a"), (1, b"b"), (1, b"c")])
    spool.sync()
    spool.close()
    (tmp_path / CHECKPOINT).unlink()
    (tmp_path / "checkpoint.json").write_text('{"committed": 1, "planned": [[2, 2, "token-2"]]}')

    again = opened(tmp_path)
    assert again.committed == 1
    assert again.planned() == [Planned(2, 2, "token-2")]
    assert not (tmp_path / "checkpoint.json").exists()
    again.close()
    assert opened(tmp_path).planned() == [Planned(2, 2, "token-2")]


def test_a_large_checkpoint_state_grows_the_file(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([(1, b"x")] * 400)
    plans = [Planned(n, n, f"spool-{n}-{'f' * 60}") for n in range(1, 401)]
    for planned in plans:
        spool.plan(planned)
    spool.close()
    assert opened(tmp_path).planned() == plans


def test_the_reserve_refuses_appends_before_any_write_and_takes_them_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = opened(tmp_path, min_free_bytes=1000)
    free = [10_000]
    # A stand-in for the filesystem's free space (statvfs), named as such: the real small disk is
    # test_on_a_full_disk_the_spool_refuses_first_and_drains_without_new_space below.
    monkeypatch.setattr(spool, "free_bytes", lambda: free[0])
    assert spool.append([(1, b"x" * 100)]) == [1]
    assert spool.disk_problem() == ""
    size = spool.size_bytes
    free[0] = 1100  # an append of 120 bytes would leave less than 1000
    with pytest.raises(
        SpoolDiskFull, match=r"1100 bytes free .* under the reserve of 1000 \(spool_min_free_bytes\)"
    ):
        spool.append([(1, b"y" * 100)])
    assert isinstance(SpoolDiskFull("x"), SpoolFull)  # answered as a full spool is
    assert spool.size_bytes == size and spool.pending_counts() == {1: 1}
    assert spool.stats.disk_refusals == 1
    assert spool.disk_problem() == ""  # room for 100 bytes more
    assert spool.disk_problem(margin=200).startswith("the spool's disk is full: 1100 bytes free at ")
    free[0] = 50_000
    assert spool.append([(1, b"z" * 100)]) == [2]
    assert spool.disk_problem() == ""


def test_a_write_that_fails_half_way_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file system that runs out of space in the middle of a record: a short write, then ENOSPC.
    spool = opened(tmp_path)
    assert spool.append([(1, b"first" * 100)]) == [1]
    real_write = os.write
    calls = [0]

    # A fake disk, named as such: a real one cannot be made to cut a write at a chosen byte. The first
    # write is real but cut in half; the next fails as a full disk does.
    def full_disk(fd: int, data: Any) -> int:
        calls[0] += 1
        if calls[0] == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(SpoolError, match="No space left on device") as failed:
        spool.append([(1, b"second" * 100), (1, b"third" * 100)])
    assert failed.value.errno == errno.ENOSPC and failed.value.transient
    monkeypatch.setattr(os, "write", real_write)
    assert spool.stats.disk_failures == 1
    assert "write" in spool.stats.errors
    assert spool.pending_counts() == {1: 1}

    # Space is back: the next records go where the failed ones would have, and read back whole. Their
    # sequences skip those of the failed append (never reused).
    assert spool.append([(1, b"fourth" * 100)]) == [4]
    spool.sync()
    assert "write" not in spool.stats.errors
    assert [r.rows for r in spool.read([1, 4])] == [b"first" * 100, b"fourth" * 100]
    # The sequences of the failed append do not hold the checkpoint back.
    spool.commit(Planned(1, 1, "t1"))
    spool.commit(Planned(4, 4, "t4"))
    assert spool.committed == 4
    spool.close()
    again = opened(tmp_path)
    assert again.stats.corrupt_records == 0


def test_records_whose_fsync_failed_are_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = opened(tmp_path)
    spool.append([(1, b"a")])
    spool.sync()
    sequences = spool.append([(1, b"b")])

    # A fake of a failing disk: a real file system here cannot be made to fail an fsync on demand.
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(SpoolError, match="Input/output error"):
        spool.sync()
    monkeypatch.undo()
    spool.abandon(sequences)
    assert spool.pending_counts() == {1: 1}
    assert spool.append([(1, b"c")]) == [3]  # in a new segment
    spool.sync()
    assert [r.rows for r in spool.read([1, 3])] == [b"a", b"c"]
    spool.commit(Planned(1, 1, "t1"))
    spool.commit(Planned(3, 3, "t3"))
    assert spool.committed == 3


def test_a_commit_whose_checkpoint_failed_is_finished_by_save(tmp_path: Path) -> None:
    spool = opened(tmp_path, segment_bytes=10)
    spool.append([(1, b"a" * 20), (1, b"b" * 20)])
    spool.sync()
    real_write = spool._checkpoint.write

    def full(state: dict[str, object]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    spool._checkpoint.write = full  # type: ignore[method-assign]
    with pytest.raises(SpoolError, match="No space left on device"):
        spool.commit(Planned(1, 1, "t1"))
    assert "checkpoint" in spool.stats.errors
    assert "is failing: checkpoint" in spool.disk_problem()
    # Committed in memory, but its segment stays until a checkpoint says so.
    assert spool.committed == 1
    assert (tmp_path / f"{1:020d}.seg").exists()
    spool._checkpoint.write = real_write  # type: ignore[method-assign]
    spool.save()
    assert not (tmp_path / f"{1:020d}.seg").exists()
    assert spool.stats.errors == {}
    spool.close()
    assert opened(tmp_path).committed == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root, or the right to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path) -> Path:
    """A file taking every free byte of `directory`'s file system."""
    ballast = directory / f"ballast-{len(list(directory.glob('ballast-*')))}"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


def test_on_a_full_disk_the_spool_refuses_first_and_drains_without_new_space(small_disk: Path) -> None:
    spool = Spool(small_disk / "spool", capacity_bytes=10**9, segment_bytes=100_000, min_free_bytes=300_000)
    spool.open()
    appended: list[int] = []
    with pytest.raises(SpoolDiskFull):
        for n in range(1000):
            appended += spool.append([(1, bytes([n % 250]) * 20_000)])
            spool.sync()
    assert spool.free_bytes() > 250_000
    # Something else takes the rest: the disk is full for real.
    ballast = fill(small_disk)
    assert spool.free_bytes() == 0
    with pytest.raises(SpoolFull):
        spool.append([(1, b"x")])
    # Draining needs no new space: plans and commits write the checkpoint in place, and every segment
    # committed is deleted, the one being written too.
    ranges = [(f, min(f + 9, appended[-1])) for f in range(appended[0], appended[-1] + 1, 10)]
    for n, (first, last) in enumerate(ranges):
        if n == len(ranges) - 1:
            # The last range: the disk is full again (the space freed taken), and the segment being
            # written goes too once committed.
            more = fill(small_disk)
            assert spool.free_bytes() == 0
        planned = Planned(first, last, f"t{first}")
        spool.plan(planned)
        assert len(spool.read(spool.spooled(first, last).sequences)) > 0
        spool.commit(planned)
    assert spool.committed == appended[-1]
    assert list(small_disk.joinpath("spool").glob("*.seg")) == []
    more.unlink()
    ballast.unlink()
    assert spool.free_bytes() > 1_500_000
    assert spool.append([(1, b"again")]) == [appended[-1] + 1]
    spool.sync()
    spool.close()
    again = Spool(small_disk / "spool", capacity_bytes=10**9)
    again.open()
    assert again.pending_counts() == {appended[-1] + 1: 1}
    assert again.stats.corrupt_records == 0
    again.close()
