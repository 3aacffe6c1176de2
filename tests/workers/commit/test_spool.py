"""The spool on a real file system: durability records, replay, damage, capacity, checkpoints."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from workers.commit.spool import HEADER_SIZE, Planned, Spool, SpoolFull, encode_record

pytestmark = pytest.mark.timeout(30)


def opened(directory: Path, **kwargs: int) -> Spool:
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
    # A FIFO where the checkpoint's temporary file goes: its writer blocks in open() until a reader
    # comes, as a checkpoint fsync can block behind the engine's writes on a busy disk.
    spool = opened(tmp_path)
    spool.append([(1, b"row-a")])
    spool.sync()
    os.mkfifo(tmp_path / "checkpoint.tmp")
    failures: list[BaseException] = []

    def commit() -> None:
        try:
            spool.commit(Planned(1, 1, "t1"))
        except OSError as error:  # fsync of a FIFO: the checkpoint was only there to block
            failures.append(error)

    committing = threading.Thread(target=commit)
    committing.start()
    appended: list[list[int]] = []
    appending = threading.Thread(target=lambda: appended.append(spool.append([(1, b"row-b")])))
    appending.start()
    appending.join(timeout=10)
    unblocked = not appending.is_alive()
    with open(tmp_path / "checkpoint.tmp", "rb") as reader:  # let the commit through
        reader.read()
    committing.join(timeout=10)
    appending.join(timeout=10)
    assert unblocked, "append waited for the checkpoint"
    assert appended == [[2]]
    assert not committing.is_alive()
    spool.sync()
    spool.close()
