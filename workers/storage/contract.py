"""The storage seam: what the commit path and the readers need of a store, as two small protocols.

`RowSink` takes inserts (the commit path, dead-letter replay); `QueryEngine` answers SQL (reports,
`activity-collector sql`, the health probe, the control socket). `ClickHouseStore` is both, on either
engine the DSN names; a stage asks for the narrower one it uses. Every method blocks: call them from a
worker thread, never from the event loop.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from workers.rows import Envelope


class RowSink(Protocol):
    """Where encoded rows go."""

    def insert_rows(self, payload: bytes | Envelope, rows: int, token: str | None = None) -> None:
        """Insert one ProtobufList envelope of `rows` rows, durably, or raise StoreError. An insert
        repeated with the same `token` is stored once."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...


class QueryEngine(Protocol):
    """Where SQL is answered."""

    def query(self, sql: str, fmt: str) -> bytes:
        """Run SQL and return its result in ClickHouse output format `fmt`, or raise StoreError."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...


class ActivityStore(RowSink, QueryEngine, Protocol):
    """A store that takes rows and answers SQL: what the collector's process opens."""


def json_rows(data: bytes) -> list[dict[str, Any]]:
    """The rows of a `JSONEachRow` answer, as dictionaries."""
    return [json.loads(line) for line in data.splitlines() if line.strip()]
