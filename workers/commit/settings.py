"""Settings of the commit path: the queues and worker pools between the doors and ClickHouse.

The collector's configuration holds them under `[pipeline]`.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.limits import check_positive


@dataclass(frozen=True)
class PipelineSettings:
    """Sizes of the worker pools and queues between the gRPC handlers and ClickHouse."""

    queue_capacity: int = 200_000
    """Most activities accepted by validation but not yet committed. Past it, RESOURCE_EXHAUSTED."""
    enrich_workers: int = 1
    """Enrichment tasks taking batches from the intake queue."""
    insert_workers: int = 1
    """Inserts that may run at once (each on its own thread and ClickHouse connection). One suits the
    embedded engine, whose inserts share the collector's cores: while it runs, rows pile up and the next
    insert takes them all. A ClickHouse server with cores to spare may take more."""
    insert_max_rows: int = 100_000
    """Largest insert, in rows; an insert is cut as soon as this many rows wait."""
    flush_interval_ms: float = 10.0
    """Longest wait for more rows once an insert worker is free and some rows wait (group commit)."""
    insert_attempts: int = 3
    """Attempts per insert for errors that may pass (connection lost, timeouts) before callers get
    UNAVAILABLE."""
    drain_interval_ms: float = 500.0
    """With the spool on: longest wait for more spooled rows before an insert is sent. Answers do not
    wait for inserts then, so inserts can be large: fewer parts for ClickHouse, less CPU per row. Half a
    second keeps an acknowledged activity in ClickHouse, and in the read model's answers, within 2 s."""
    drain_rows: int = 50_000
    """With the spool on: an insert is sent without waiting longer once this many rows wait (at most
    insert_max_rows go in it). Under load inserts then come every drain_rows rows, not every interval."""
    spool_capacity_bytes: int = 1024 * 1024 * 1024
    """With the spool on: most bytes of accepted activities waiting on disk for ClickHouse. Past it,
    RESOURCE_EXHAUSTED."""
    spool_segment_bytes: int = 64 * 1024 * 1024
    """With the spool on: size at which a spool segment file is closed and a new one started."""
    spool_min_free_bytes: int = 2 * 64 * 1024 * 1024
    """With the spool on: space kept free on the spool's file system (twice the default
    spool_segment_bytes). An activity that would leave less is refused with RESOURCE_EXHAUSTED before
    anything is written, so that the disk never fills under the spool, and ClickHouse or PostgreSQL on
    the same disk keep room to work; accepted again once there is room."""
    retry_delay_ms: float = 500.0
    """The delay suggested to callers in RESOURCE_EXHAUSTED and UNAVAILABLE answers."""

    def validate(self) -> None:
        check_positive(self)
