"""The durable spool: a write-ahead log of accepted activities, between acknowledgement and ClickHouse.

With the spool on, an activity is acknowledged once its record is written and fsynced here; inserts
then drain the spool into ClickHouse at their own pace, so a ClickHouse outage only grows the spool.

On disk: segment files `<first sequence, 20 digits>.seg` in the spool directory, each a run of
records. A record is a 20-byte header (magic, format version, payload length, sequence number,
CRC-32 of the payload) and a payload (row count, then the rows' ProtobufList bytes). Sequence numbers
rise by one per record across segments. `checkpoint.json` (replaced atomically) says up to which
sequence every record is committed to ClickHouse, and which sequence ranges are being inserted right
now: an insert is planned (range and deduplication token written here) before it is sent, so that after
a crash the same range is inserted again with the same token and ClickHouse drops the copy.

Reading tolerates damage: a torn tail (a crash mid-write) or a record whose checksum fails is skipped,
reported and counted; the reader resynchronises on the next valid header, so intact records after the
damage are still delivered.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

MAGIC = 0xAC7F
VERSION = 1
_HEADER = struct.Struct("<HHIQI")  # magic, version, payload length, sequence, crc32(payload)
_COUNT = struct.Struct("<I")
HEADER_SIZE = _HEADER.size
_MAX_PAYLOAD = 1 << 30


class SpoolFull(Exception):
    """Appending would pass the spool's capacity."""


@dataclass(frozen=True)
class Record:
    sequence: int
    count: int
    rows: bytes


@dataclass
class SpoolStats:
    appended_records: int = 0
    appended_rows: int = 0
    synced: int = 0
    committed_records: int = 0
    corrupt_records: int = 0
    corrupt_bytes: int = 0
    replayed_records: int = 0
    damage: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SpooledRange:
    """The uncommitted records of a sequence range (gaps from damage left out), their rows in all and
    the bytes of those rows."""

    sequences: list[int]
    rows: int
    nbytes: int


@dataclass(frozen=True)
class Planned:
    """An insert of records first..last (inclusive), with the token that makes its retry a no-op."""

    first: int
    last: int
    token: str


def encode_record(sequence: int, count: int, rows: bytes) -> bytes:
    payload = _COUNT.pack(count) + rows
    return _HEADER.pack(MAGIC, VERSION, len(payload), sequence, zlib.crc32(payload)) + payload


def read_segment(path: Path, stats: SpoolStats) -> Iterator[tuple[int, Record]]:
    """(offset, record) for every intact record of a segment; damage is skipped, counted and logged."""
    data = path.read_bytes()
    pos = 0
    end = len(data)
    while pos < end:
        record = _record_at(data, pos)
        if record is not None:
            yield pos, record[0]
            pos = record[1]
            continue
        # Damaged: find the next offset where an intact record starts.
        start = pos
        pos += 1
        while pos < end and _record_at(data, pos) is None:
            pos += 1
        skipped = pos - start
        stats.corrupt_records += 1
        stats.corrupt_bytes += skipped
        what = "a torn tail" if pos >= end else "a damaged record"
        message = f"{path.name}: {what} at offset {start}: {skipped} bytes skipped"
        stats.damage.append(message)
        log.error("spool damage", extra={"segment": path.name, "offset": start, "skipped_bytes": skipped})


def _record_at(data: bytes, pos: int) -> tuple[Record, int] | None:
    if pos + HEADER_SIZE > len(data):
        return None
    magic, version, length, sequence, crc = _HEADER.unpack_from(data, pos)
    if magic != MAGIC or version != VERSION or length < _COUNT.size or length > _MAX_PAYLOAD:
        return None
    start = pos + HEADER_SIZE
    stop = start + length
    if stop > len(data):
        return None
    payload = data[start:stop]
    if zlib.crc32(payload) != crc:
        return None
    (count,) = _COUNT.unpack_from(payload)
    return Record(sequence, count, payload[_COUNT.size :]), stop


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Segments in `directory`. Every method blocks (file I/O): call from a worker thread.

    One writer appends; readers take records by sequence; commits advance the checkpoint. A lock
    guards the shared state, because the writer, the reader and commits run on different threads.
    """

    def __init__(
        self, directory: Path, *, capacity_bytes: int, segment_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self.directory = directory
        self.capacity_bytes = capacity_bytes
        self.segment_bytes = segment_bytes
        self.stats = SpoolStats()
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._segments: list[tuple[int, Path, int]] = []  # (first sequence, path, size)
        # sequence -> (segment, offset, bytes of its rows), uncommitted only
        self._index: dict[int, tuple[Path, int, int]] = {}
        self._counts: dict[int, int] = {}  # sequence -> row count, uncommitted only
        self._next_sequence = 1
        self._committed = 0
        self._committed_ranges: list[tuple[int, int]] = []
        self._planned: list[Planned] = []
        self._file: object | None = None
        self._fd: int | None = None
        self._opened = False

    # -- opening and replay --------------------------------------------------------------------

    def open(self) -> None:
        """Read the checkpoint and every segment; index what is not committed yet."""
        self.directory.mkdir(parents=True, exist_ok=True)
        checkpoint = self.directory / "checkpoint.json"
        if checkpoint.exists():
            state = json.loads(checkpoint.read_text())
            self._committed = int(state["committed"])
            self._planned = [Planned(int(p[0]), int(p[1]), str(p[2])) for p in state.get("planned", [])]
        last = self._committed
        for path in sorted(self.directory.glob("*.seg")):
            first = int(path.stem)
            size = path.stat().st_size
            self._segments.append((first, path, size))
            for offset, record in read_segment(path, self.stats):
                last = max(last, record.sequence)
                if record.sequence > self._committed:
                    self._index[record.sequence] = (path, offset, len(record.rows))
                    self._counts[record.sequence] = record.count
        self.stats.replayed_records = len(self._index)
        self._next_sequence = last + 1
        self._opened = True
        for path in self._take_committed_segments():
            path.unlink(missing_ok=True)

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def next_sequence(self) -> int:
        return self._next_sequence

    def pending_counts(self) -> dict[int, int]:
        """Row count by sequence of every record not committed yet."""
        with self._lock:
            return dict(self._counts)

    def planned(self) -> list[Planned]:
        """Inserts planned before the last stop and not known to be committed: redo them first, as they
        were, so that their tokens make ClickHouse drop what had already arrived."""
        with self._lock:
            return list(self._planned)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(size for _, _, size in self._segments)

    @property
    def pending_rows(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    # -- writing -------------------------------------------------------------------------------

    def append(self, entries: list[tuple[int, bytes]]) -> list[int]:
        """Write one record per (row count, rows) and return their sequences. Not durable until sync().
        Raises SpoolFull, writing nothing, when the records do not fit in the capacity."""
        encoded: list[bytes] = []
        with self._lock:
            sequence = self._next_sequence
            for count, rows in entries:
                encoded.append(encode_record(sequence, count, rows))
                sequence += 1
            total = sum(len(e) for e in encoded)
            used = sum(size for _, _, size in self._segments)
            if used + total > self.capacity_bytes:
                raise SpoolFull(
                    f"the spool holds {used} bytes not yet in ClickHouse; "
                    f"its capacity is {self.capacity_bytes} (spool_capacity_bytes)"
                )
            sequences: list[int] = []
            for (count, rows), record in zip(entries, encoded, strict=True):
                path, offset = self._write(record)
                seq = self._next_sequence
                self._next_sequence += 1
                self._index[seq] = (path, offset, len(rows))
                self._counts[seq] = count
                sequences.append(seq)
            self.stats.appended_records += len(entries)
            self.stats.appended_rows += sum(c for c, _ in entries)
            return sequences

    def _write(self, record: bytes) -> tuple[Path, int]:
        if not self._segments or self._fd is None or self._segments[-1][2] >= self.segment_bytes:
            self._roll()
        first, path, size = self._segments[-1]
        assert self._fd is not None
        os.write(self._fd, record)
        self._segments[-1] = (first, path, size + len(record))
        return path, size

    def _roll(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        path = self.directory / f"{self._next_sequence:020d}.seg"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments.append((self._next_sequence, path, os.fstat(self._fd).st_size))
        _fsync_dir(self.directory)

    def sync(self) -> None:
        """Make every appended record durable (one fsync for all of them: group commit)."""
        with self._lock:
            fd = self._fd
        if fd is not None:
            os.fsync(fd)
            self.stats.synced += 1

    # -- reading -------------------------------------------------------------------------------

    def read(self, sequences: list[int]) -> list[Record]:
        """The records with these (uncommitted) sequences, read back from their segments."""
        return list(self.records(sequences))

    def records(self, sequences: list[int]) -> Iterator[Record]:
        """The records with these (uncommitted) sequences, read back one at a time, each checked
        against its checksum (OSError if it changed on disk)."""
        with self._lock:
            places = [self._index[s] for s in sequences]
        handles: dict[Path, BinaryIO] = {}
        try:
            for sequence, (path, offset, _) in zip(sequences, places, strict=True):
                handle = handles.get(path)
                if handle is None:
                    handle = handles[path] = open(path, "rb")  # noqa: SIM115
                handle.seek(offset)
                _, _, length, got, crc = _HEADER.unpack(handle.read(HEADER_SIZE))
                # The count and the rows are read apart, so that the rows need no copy of their own.
                count_bytes = handle.read(_COUNT.size)
                rows = handle.read(length - _COUNT.size)
                if got != sequence or zlib.crc32(rows, zlib.crc32(count_bytes)) != crc:
                    raise OSError(f"spool record {sequence} changed on disk in {path.name} at {offset}")
                (count,) = _COUNT.unpack(count_bytes)
                yield Record(sequence, count, rows)
        finally:
            for handle in handles.values():
                handle.close()

    def read_range(self, first: int, last: int) -> list[Record]:
        """The uncommitted records with sequences first..last; gaps (damaged records) are skipped."""
        return self.read(self.spooled(first, last).sequences)

    def spooled(self, first: int, last: int) -> SpooledRange:
        """What the uncommitted records with sequences first..last hold, without reading them."""
        with self._lock:
            sequences = [s for s in range(first, last + 1) if s in self._index]
            rows = sum(self._counts[s] for s in sequences)
            nbytes = sum(self._index[s][2] for s in sequences)
        return SpooledRange(sequences, rows, nbytes)

    # -- committing ----------------------------------------------------------------------------

    # The checkpoint is written, and committed segments deleted, outside `_lock`: their fsyncs and
    # unlinks can take tens of milliseconds while the engine writes its parts to the same disk, and the
    # spool writer, which acknowledges, must not wait for them to append. `_checkpoint_lock` keeps the
    # checkpoint's writes in the order their states were taken.

    def plan(self, planned: Planned) -> None:
        """Record an insert before it is sent (durably), so that a crash redoes it with its token."""
        with self._checkpoint_lock:
            with self._lock:
                self._planned = [p for p in self._planned if p.first != planned.first] + [planned]
                state = self._checkpoint_state()
            self._write_checkpoint(state)

    def commit(self, planned: Planned) -> None:
        """The insert of `planned` is in ClickHouse: advance the checkpoint over every contiguous
        committed range, and delete segments that hold nothing uncommitted any more."""
        with self._checkpoint_lock:
            with self._lock:
                self._advance(planned)
                state = self._checkpoint_state()
            self._write_checkpoint(state)
            with self._lock:
                doomed = self._take_committed_segments()
        for path in doomed:
            path.unlink(missing_ok=True)

    def _advance(self, planned: Planned) -> None:
        """Mark the range committed (call with `_lock` held)."""
        self._planned = [p for p in self._planned if p.first != planned.first]
        self._committed_ranges.append((planned.first, planned.last))
        self._committed_ranges.sort()
        for sequence in range(planned.first, planned.last + 1):
            self._index.pop(sequence, None)
            self._counts.pop(sequence, None)
        while True:
            following = self._committed + 1
            if self._committed_ranges and self._committed_ranges[0][0] <= following:
                self._committed = max(self._committed, self._committed_ranges.pop(0)[1])
            elif following < self._next_sequence and following not in self._index:
                # A sequence lost to damage: nothing of it can ever be committed.
                self._committed = following
            else:
                break
        self.stats.committed_records += planned.last - planned.first + 1

    def _checkpoint_state(self) -> dict[str, object]:
        return {
            "committed": self._committed,
            "planned": [[p.first, p.last, p.token] for p in self._planned],
        }

    def _write_checkpoint(self, state: dict[str, object]) -> None:
        path = self.directory / "checkpoint.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as out:
            json.dump(state, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)

    def _take_committed_segments(self) -> list[Path]:
        """Forget the segments that hold no uncommitted record, except the one being written, and
        return them for deletion."""
        live = {path for path, _, _ in self._index.values()}
        writing = self._segments[-1][1] if self._segments and self._fd is not None else None
        keep: list[tuple[int, Path, int]] = []
        doomed: list[Path] = []
        for first, path, size in self._segments:
            if path in live or path == writing:
                keep.append((first, path, size))
            else:
                doomed.append(path)
        self._segments = keep
        return doomed

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
