"""The durable spool: a write-ahead log of accepted activities, between acknowledgement and ClickHouse.

With the spool on, an activity is acknowledged once its record is written and fsynced here; inserts
then drain the spool into ClickHouse at their own pace, so a ClickHouse outage only grows the spool.

On disk: segment files `<first sequence, 20 digits>.seg` in the spool directory, each a run of
records. A record is a 20-byte header (magic, format version, payload length, sequence number,
CRC-32 of the payload) and a payload (row count, then the rows' ProtobufList bytes). Sequence numbers
rise with each record across segments (an append that fails leaves a gap, never reuses a number).
`checkpoint` says up to which sequence every record is committed to ClickHouse, and which sequence
ranges are being inserted right now: an insert is planned (range and deduplication token written here)
before it is sent, so that after a crash the same range is inserted again with the same token and
ClickHouse drops the copy.

A full disk. The spool keeps a reserve: an append that would leave less than `min_free_bytes` free on
its file system is refused (`SpoolDiskFull`, a `SpoolFull`) before anything is written, and taken again
once there is room. Draining never needs new space: the checkpoint is written in place, in one of two
preallocated slots (`Checkpoint`), and segments are deleted as soon as every record in them is
committed (the one being written too, once space runs short). An append that fails all the same (a
short write, ENOSPC, an fsync error) leaves nothing behind that a reader would trip on: the segment is
cut back to its last whole record, and the records of the failed append are forgotten.

Reading tolerates damage: a torn tail (a crash mid-write) or a record whose checksum fails is skipped,
reported and counted; the reader resynchronises on the next valid header, so intact records after the
damage are still delivered.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
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


class SpoolDiskFull(SpoolFull):
    """Appending would leave less than the reserve (`spool_min_free_bytes`) free on the spool's disk."""


class SpoolError(OSError):
    """The spool's own disk failed (a segment's write or fsync, a read, the checkpoint): not the store.
    `transient` when the cause may pass by itself (a full disk, a quota)."""

    @property
    def transient(self) -> bool:
        return self.errno in DISK_FULL_ERRNOS


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""OS errors that say a disk (or a quota) is full: they pass once space is freed."""


def _spool_error(what: str, error: OSError) -> SpoolError:
    return SpoolError(error.errno or errno.EIO, f"{what}: {error.strerror or error}")


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
    disk_failures: int = 0
    """Operations on the spool's disk that failed (writes, fsyncs, reads, checkpoint writes)."""
    disk_refusals: int = 0
    """Appends refused because the disk's free space was under the reserve."""
    errors: dict[str, str] = field(default_factory=dict)
    """The last error of each kind of disk operation ("write", "read", "checkpoint") that has not
    succeeded since: empty while the disk works."""


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


def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    """Write every byte of `data` (at `offset`, or at the end of an O_APPEND file): a short write, as a
    file system that runs out of space in the middle of a record returns, is continued, so that it
    either completes or raises."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "the write made no progress")
        view = view[written:]
        if offset is not None:
            offset += written


CHECKPOINT = "checkpoint"
LEGACY_CHECKPOINT = "checkpoint.json"
_SLOT = struct.Struct("<4sIQI")  # magic, payload length, generation, crc32(length, generation, payload)
_SLOT_MAGIC = b"ACKP"
CHECKPOINT_SLOT_BYTES = 16 * 1024
"""Room for a checkpoint's state: some 120 bytes per planned insert, so about 130 planned inserts (one
per insert worker is usual); a larger state grows the file (which then needs new space, once)."""


class Checkpoint:
    """The spool's checkpoint (a JSON state), written in place so that writing it never needs new space
    on a full disk.

    The file is two slots of `slot_bytes`, written with zeros when it is created (its space is taken
    then, once). Each write goes to the slot the previous one did not use, with a generation number and
    a checksum, then is fsynced; a reader takes the intact slot of the highest generation, so a write
    torn by a crash leaves the state before it. (On a copy-on-write file system, such as btrfs or ZFS,
    an overwrite takes new blocks all the same: keep the spool off those, or keep the reserve.)
    """

    def __init__(self, directory: Path, slot_bytes: int = CHECKPOINT_SLOT_BYTES) -> None:
        self.path = directory / CHECKPOINT
        self.slot_bytes = slot_bytes
        self._fd: int | None = None
        self._generation = 0

    def load(self) -> dict[str, object]:
        """The state last written; creates the file (from `checkpoint.json` of earlier versions, or
        empty) when there is none. Raises SpoolError when the file holds no intact state."""
        legacy = self.path.parent / LEGACY_CHECKPOINT
        if not self.path.exists():
            state: dict[str, object] = {"committed": 0, "planned": []}
            if legacy.exists():
                state = json.loads(legacy.read_text())
            self._create(state, self.slot_bytes)
            legacy.unlink(missing_ok=True)
            return state
        data = self.path.read_bytes()
        self.slot_bytes = len(data) // 2
        best: tuple[int, dict[str, object]] | None = None
        for slot in range(2):
            found = self._slot_at(data, slot * self.slot_bytes)
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        if best is None:
            raise SpoolError(errno.EIO, f"{self.path}: neither slot of the checkpoint is intact")
        self._generation = best[0]
        self._fd = os.open(self.path, os.O_RDWR)
        legacy.unlink(missing_ok=True)
        return best[1]

    def _slot_at(self, data: bytes, offset: int) -> tuple[int, dict[str, object]] | None:
        if offset + _SLOT.size > len(data):
            return None
        magic, length, generation, crc = _SLOT.unpack_from(data, offset)
        start = offset + _SLOT.size
        if magic != _SLOT_MAGIC or start + length > offset + self.slot_bytes:
            return None
        payload = data[start : start + length]
        if zlib.crc32(payload, zlib.crc32(struct.pack("<IQ", length, generation))) != crc:
            return None
        state = json.loads(payload)
        return (generation, state) if isinstance(state, dict) else None

    def _encode(self, generation: int, state: dict[str, object]) -> bytes:
        payload = json.dumps(state, separators=(",", ":")).encode()
        crc = zlib.crc32(payload, zlib.crc32(struct.pack("<IQ", len(payload), generation)))
        return _SLOT.pack(_SLOT_MAGIC, len(payload), generation, crc) + payload

    def _create(self, state: dict[str, object], slot_bytes: int) -> None:
        """Write a new file of two slots, the state in the first one, and put it in place atomically."""
        generation = self._generation + 1
        record = self._encode(generation, state)
        while len(record) > slot_bytes:
            slot_bytes *= 2
        image = bytearray(2 * slot_bytes)
        at = (generation % 2) * slot_bytes
        image[at : at + len(record)] = record
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, bytes(image), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR)
        self.slot_bytes = slot_bytes
        self._generation = generation

    def write(self, state: dict[str, object]) -> None:
        """Write `state` durably, in place (OSError if the disk refuses)."""
        generation = self._generation + 1
        record = self._encode(generation, state)
        if self._fd is None or len(record) > self.slot_bytes:
            self._create(state, self.slot_bytes)  # larger than a slot (or not loaded): a new file
            return
        _write_all(self._fd, record, (generation % 2) * self.slot_bytes)
        os.fdatasync(self._fd)
        self._generation = generation

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Spool:
    """Segments in `directory`. Every method blocks (file I/O): call from a worker thread.

    One writer appends; readers take records by sequence; commits advance the checkpoint. A lock
    guards the shared state, because the writer, the reader and commits run on different threads.

    `min_free_bytes` is the reserve kept free on the spool's file system (None: not set yet; the commit
    path sets it from `spool_min_free_bytes`; 0: none).
    """

    def __init__(
        self,
        directory: Path,
        *,
        capacity_bytes: int,
        segment_bytes: int = 64 * 1024 * 1024,
        min_free_bytes: int | None = None,
    ) -> None:
        self.directory = directory
        self.capacity_bytes = capacity_bytes
        self.segment_bytes = segment_bytes
        self.min_free_bytes = min_free_bytes
        self.stats = SpoolStats()
        self.on_sync: Callable[[float], None] | None = None
        """Called with the seconds of every fsync that made appended records durable (the metrics'
        histogram), on the thread that synced."""
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._checkpoint = Checkpoint(directory)
        self._segments: list[tuple[int, Path, int]] = []  # (first sequence, path, size)
        # sequence -> (segment, offset, bytes of its rows), uncommitted only
        self._index: dict[int, tuple[Path, int, int]] = {}
        self._counts: dict[int, int] = {}  # sequence -> row count, uncommitted only
        self._next_sequence = 1
        self._committed = 0
        self._committed_ranges: list[tuple[int, int]] = []
        self._planned: list[Planned] = []
        self._fd: int | None = None
        self._opened = False
        self._short = False  # whether the last append was refused for the reserve

    # -- opening and replay --------------------------------------------------------------------

    def open(self) -> None:
        """Read the checkpoint and every segment; index what is not committed yet."""
        self.directory.mkdir(parents=True, exist_ok=True)
        state = self._checkpoint.load()
        committed, planned = state.get("committed", 0), state.get("planned", [])
        if not isinstance(committed, int) or not isinstance(planned, list):
            raise SpoolError(errno.EIO, f"{self._checkpoint.path}: not a checkpoint: {state!r}")
        self._committed = committed
        self._planned = [Planned(int(p[0]), int(p[1]), str(p[2])) for p in planned]
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

    # -- the disk ------------------------------------------------------------------------------

    @property
    def reserve_bytes(self) -> int:
        return self.min_free_bytes or 0

    def free_bytes(self) -> int:
        """Bytes free for this process on the spool's file system (OSError if it cannot say)."""
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def disk_problem(self, margin: int = 0) -> str:
        """What is wrong with the spool's disk, or "": its free space under the reserve (plus `margin`,
        the room one more request needs), or an operation on it failing."""
        try:
            free = self.free_bytes()
        except OSError as error:
            return f"the spool's disk at {self.directory} cannot be read: {error.strerror or error}"
        if free - margin < self.reserve_bytes:
            return (
                f"the spool's disk is full: {free} bytes free at {self.directory}, under the reserve "
                f"of {self.reserve_bytes} (spool_min_free_bytes)"
            )
        errors = dict(self.stats.errors)
        if errors:
            what = "; ".join(f"{kind}: {error}" for kind, error in sorted(errors.items()))
            return f"the spool's disk at {self.directory} is failing: {what}"
        return ""

    def _failed(self, kind: str, error: OSError) -> SpoolError:
        """Count and note a failure of the disk; the error to raise."""
        failure = error if isinstance(error, SpoolError) else _spool_error(f"spool {kind} failed", error)
        self.stats.disk_failures += 1
        self.stats.errors[kind] = failure.strerror or str(failure)
        return failure

    def _succeeded(self, kind: str) -> None:
        if kind in self.stats.errors:
            del self.stats.errors[kind]
            log.info("spool disk works again", extra={"operation": kind, "directory": str(self.directory)})

    # -- writing -------------------------------------------------------------------------------

    def append(self, entries: list[tuple[int, bytes]]) -> list[int]:
        """Write one record per (row count, rows) and return their sequences. Not durable until sync().
        Raises SpoolFull, writing nothing, when the records do not fit in the capacity, SpoolDiskFull
        when they would eat into the disk's reserve, and SpoolError when the disk fails: then the
        segment is cut back to where it was and the records are forgotten (their sequences stay
        unused)."""
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
            self._check_room(total)
            first = self._next_sequence
            self._next_sequence += len(entries)
            marks = self._marks()
            sequences: list[int] = []
            try:
                for n, ((count, rows), record) in enumerate(zip(entries, encoded, strict=True)):
                    seq = first + n
                    path, offset = self._write(record, seq)
                    self._index[seq] = (path, offset, len(rows))
                    self._counts[seq] = count
                    sequences.append(seq)
            except OSError as error:
                for seq in sequences:
                    self._index.pop(seq, None)
                    self._counts.pop(seq, None)
                self._cut_back(marks)
                failure = self._failed("write", error)
                log.error(
                    "spool write failed",
                    extra={"error": str(failure), "errno": failure.errno, "directory": str(self.directory)},
                )
                raise failure from error
            self._succeeded("write")
            self.stats.appended_records += len(entries)
            self.stats.appended_rows += sum(c for c, _ in entries)
            return sequences

    def _check_room(self, total: int) -> None:
        """Refuse (SpoolDiskFull) an append of `total` bytes that would eat into the reserve; log when
        that starts and ends. Call with `_lock` held."""
        reserve = self.reserve_bytes
        if not reserve:
            return
        try:
            free = self.free_bytes()
        except OSError as error:
            raise self._failed("write", error) from error
        if free - total < reserve:
            self.stats.disk_refusals += 1
            if not self._short:
                self._short = True
                log.warning(
                    "spool disk full: refusing activities until there is room",
                    extra={"free_bytes": free, "reserve_bytes": reserve, "directory": str(self.directory)},
                )
            raise SpoolDiskFull(
                f"the spool's disk is full: {free} bytes free at {self.directory}, under the reserve of "
                f"{reserve} (spool_min_free_bytes)"
            )
        if self._short:
            self._short = False
            log.info(
                "spool disk has room again", extra={"free_bytes": free, "directory": str(self.directory)}
            )

    def _marks(self) -> tuple[int, int]:
        """Where the segments end before an append: the number of segments and the last one's size."""
        return len(self._segments), (self._segments[-1][2] if self._segments else 0)

    def _cut_back(self, marks: tuple[int, int]) -> None:
        """After a failed append: cut the segments it wrote to back to where they ended before it, so
        that no part of its records stays behind where the next ones go. When that fails too, the
        segment being written is closed: the next append starts a new one, and the torn tail left
        behind is skipped (as damage) when the spool is read again. Call with `_lock` held."""
        count, size = marks
        try:
            for n in range(max(count - 1, 0), len(self._segments)):
                first, path, _ = self._segments[n]
                keep = size if n == count - 1 else 0
                if n == len(self._segments) - 1 and self._fd is not None:
                    os.ftruncate(self._fd, keep)
                else:
                    os.truncate(path, keep)
                self._segments[n] = (first, path, keep)
        except OSError as error:
            log.error("spool segment could not be cut back", extra={"error": str(error)})
            self._close_segment()

    def _close_segment(self) -> None:
        """Stop writing the current segment (the next append starts a new one). Call with `_lock` held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as error:
                log.error("spool segment could not be closed", extra={"error": str(error)})

    def _write(self, record: bytes, sequence: int) -> tuple[Path, int]:
        if not self._segments or self._fd is None or self._segments[-1][2] >= self.segment_bytes:
            self._roll(sequence)
        first, path, size = self._segments[-1]
        assert self._fd is not None
        _write_all(self._fd, record)
        self._segments[-1] = (first, path, size + len(record))
        return path, size

    def _roll(self, sequence: int) -> None:
        """Start segment `<sequence>.seg` (named by its first record's sequence)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        path = self.directory / f"{sequence:020d}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(fd).st_size
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._segments.append((sequence, path, size))

    def sync(self) -> None:
        """Make every appended record durable (one fsync for all of them: group commit). SpoolError if
        the disk fails: the caller then forgets the records (`abandon`)."""
        with self._lock:
            fd = self._fd
        if fd is not None:
            started = time.perf_counter()
            try:
                os.fsync(fd)
            except OSError as error:
                raise self._failed("write", error) from error
            self.stats.synced += 1
            if self.on_sync is not None:
                self.on_sync(time.perf_counter() - started)

    def abandon(self, sequences: list[int]) -> None:
        """Forget appended records whose fsync failed: they are not acknowledged, and not inserted. The
        segment is closed (after a failed fsync its pages may be lost); the next append starts a new one."""
        with self._lock:
            for seq in sequences:
                self._index.pop(seq, None)
                self._counts.pop(seq, None)
            self._close_segment()

    # -- reading -------------------------------------------------------------------------------

    def read(self, sequences: list[int]) -> list[Record]:
        """The records with these (uncommitted) sequences, read back from their segments."""
        return list(self.records(sequences))

    def records(self, sequences: list[int]) -> Iterator[Record]:
        """The records with these (uncommitted) sequences, read back one at a time, each checked
        against its checksum (SpoolError if it changed on disk or cannot be read)."""
        with self._lock:
            places = [self._index[s] for s in sequences]
        handles: dict[Path, BinaryIO] = {}
        try:
            for sequence, (path, offset, _) in zip(sequences, places, strict=True):
                try:
                    handle = handles.get(path)
                    if handle is None:
                        handle = handles[path] = open(path, "rb")  # noqa: SIM115
                    handle.seek(offset)
                    header = handle.read(HEADER_SIZE)
                    if len(header) < HEADER_SIZE:
                        raise OSError(errno.EIO, f"spool record {sequence} cut short in {path.name}")
                    _, _, length, got, crc = _HEADER.unpack(header)
                    # The count and the rows are read apart, so that the rows need no copy of their own.
                    count_bytes = handle.read(_COUNT.size)
                    rows = handle.read(length - _COUNT.size)
                    if got != sequence or zlib.crc32(rows, zlib.crc32(count_bytes)) != crc:
                        raise OSError(
                            errno.EIO, f"spool record {sequence} changed on disk in {path.name} at {offset}"
                        )
                except OSError as error:
                    raise self._failed("read", error) from error
                (count,) = _COUNT.unpack(count_bytes)
                yield Record(sequence, count, rows)
            self._succeeded("read")
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
        """Record an insert before it is sent (durably), so that a crash redoes it with its token.
        SpoolError if the checkpoint cannot be written: then the insert must not be sent."""
        with self._checkpoint_lock:
            with self._lock:
                self._planned = [p for p in self._planned if p.first != planned.first] + [planned]
                state = self._checkpoint_state()
            self._write_checkpoint(state)

    def commit(self, planned: Planned) -> None:
        """The insert of `planned` is in ClickHouse: advance the checkpoint over every contiguous
        committed range, and delete segments that hold nothing uncommitted any more.

        The range is committed in memory first, whatever happens to the checkpoint's write: if that
        raises (SpoolError), call `save()` until it succeeds, not `commit` again."""
        with self._checkpoint_lock:
            with self._lock:
                self._advance(planned)
            self._save()

    def save(self) -> None:
        """Write the checkpoint as the spool stands, then delete the segments it lets go of: what a
        `commit` whose checkpoint could not be written still owes."""
        with self._checkpoint_lock:
            self._save()

    def _save(self) -> None:
        with self._lock:
            state = self._checkpoint_state()
        self._write_checkpoint(state)
        # Segments go only once a checkpoint that covers them is durable: a restart must never see
        # sequences lower than those it has already been told about.
        with self._lock:
            doomed = self._take_committed_segments(retire=True)
        for path in doomed:
            try:
                path.unlink(missing_ok=True)
            except OSError as error:  # read again, and deleted, at the next start
                log.error(
                    "spool segment could not be deleted", extra={"segment": path.name, "error": str(error)}
                )

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
                # A sequence lost to damage, or to a failed append: nothing of it can ever be committed.
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
        try:
            self._checkpoint.write(state)
        except OSError as error:
            failure = self._failed("checkpoint", error)
            log.error(
                "spool checkpoint write failed",
                extra={"error": str(failure), "errno": failure.errno, "directory": str(self.directory)},
            )
            raise failure from error
        self._succeeded("checkpoint")

    def _take_committed_segments(self, retire: bool = False) -> list[Path]:
        """Forget the segments that hold no uncommitted record and return them for deletion. The one
        being written is kept, unless `retire` and the disk is short of space (under twice its reserve):
        then it is closed and goes too, and the next append starts a new one."""
        live = {path for path, _, _ in self._index.values()}
        writing = self._segments[-1][1] if self._segments and self._fd is not None else None
        if retire and writing is not None and writing not in live and self._space_is_short():
            self._close_segment()
            writing = None
        keep: list[tuple[int, Path, int]] = []
        doomed: list[Path] = []
        for first, path, size in self._segments:
            if path in live or path == writing:
                keep.append((first, path, size))
            else:
                doomed.append(path)
        self._segments = keep
        return doomed

    def _space_is_short(self) -> bool:
        if not self.reserve_bytes:
            return False
        try:
            return self.free_bytes() < 2 * self.reserve_bytes
        except OSError:
            return True

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        with self._checkpoint_lock:
            self._checkpoint.close()
