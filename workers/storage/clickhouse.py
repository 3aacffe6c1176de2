"""ClickHouse storage: the row sink and query engine of `workers.storage.contract` on clickhouse-connect.

The DSN picks the engine: `http(s)://...` for a ClickHouse server, `chdb:///path` for the embedded
in-process engine. Both take the same SQL and the same ProtobufList inserts. clickhouse-connect's chdb
backend is synchronous, so every method here blocks: the pipeline calls them from worker threads,
never from the event loop.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from core.dsn import mask_dsn
from workers.rows import Envelope
from workers.storage.migrations import apply_migrations, database_ddl
from workers.storage.schema import INSERT_COLUMNS, ROW_MESSAGE, ROW_SCHEMA, SINGLE_NODE, Cluster

# ClickHouse error codes that describe a passing condition of the server rather than the data.
_TRANSIENT_CODES = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        164,  # READONLY
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        243,  # NOT_ENOUGH_SPACE: the server's disk is full; it passes once space is freed
        252,  # TOO_MANY_PARTS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)


# ClickHouse error codes that blame the data itself: inserting the same rows again can never succeed.
_DATA_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        32,  # ATTEMPT_TO_READ_AFTER_EOF
        33,  # CANNOT_READ_ALL_DATA
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        376,  # CANNOT_PARSE_UUID
        444,  # UNKNOWN_PROTOBUF_FORMAT
        469,  # VIOLATED_CONSTRAINT
        570,  # DATA_TYPE_INCOMPATIBLE_WITH_PROTOBUF_FIELD
    }
)


# Settings every insert carries. `optimize_on_insert` 0: ClickHouse writes each insert's rows as they
# come instead of first collapsing, within the insert, the rows that share a sort key (copies of one
# activity in `activities`, equal keys in the aggregates' blocks). Nothing that queries see depends on
# that collapse: copies of an activity collapse on merge wherever they arrived from, exact counts read
# `FINAL` or count distinct ids, and the aggregates are merged when read; the insert dedupe by token
# is unaffected. It halves the insert's cost on the embedded engine (see bench/README.md).
INSERT_SETTINGS: dict[str, Any] = {"optimize_on_insert": 0}


# Inserts into a Distributed table return once every shard's part of it is written on a replica of that
# shard (not once queued on the node that took it), so that a committed spool range is in the replicated
# tables. The deduplication token travels with each shard's part.
CLUSTER_INSERT_SETTINGS: dict[str, Any] = {"distributed_foreground_insert": 1}


class StoreError(Exception):
    """An insert or query failed. `transient`: trying again soon may succeed. `data`: the rows
    themselves are at fault, so no retry can ever store them. Neither: the store is unusable until an
    operator acts (a missing table, denied access)."""

    def __init__(self, message: str, *, transient: bool, code: int | None = None, data: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.code = code
        self.data = data


def classify(error: Exception) -> StoreError:
    if isinstance(error, StoreError):
        return error
    code = getattr(error, "code", None)
    if isinstance(error, OperationalError):
        transient = True
    elif isinstance(error, DatabaseError):
        transient = code in _TRANSIENT_CODES
    else:
        # A full local disk (the embedded engine's) passes once space is freed, like a lost connection.
        transient = isinstance(error, (ConnectionError, TimeoutError)) or (
            isinstance(error, OSError) and error.errno == errno.ENOSPC
        )
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    code = code if isinstance(code, int) else None
    return StoreError(message, transient=transient, code=code, data=code in _DATA_CODES)


class ClickHouseStore:
    """`RowSink` and `QueryEngine` on clickhouse-connect; one connection per concurrent caller, taken from a
    pool."""

    def __init__(
        self,
        dsn: str,
        database: str,
        *,
        connections: int = 2,
        migrate: bool = True,
        cluster: Cluster = SINGLE_NODE,
        connect: bool = True,
    ) -> None:
        """With `connect` (the default) the store connects at once, or raises StoreError; without, it
        is usable once `connect()` has succeeded, and until then every call raises a transient
        StoreError."""
        self.dsn = dsn
        self.database = database
        self.cluster = cluster
        self._connections = connections
        self._migrate = migrate
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._all: list[Any] = []
        self._closed = False
        self._connected = False
        self.connect_error = ""
        """Why the last `connect()` failed; empty once connected."""
        self._insert_settings: dict[str, Any] = {**self._row_schema_settings(), **INSERT_SETTINGS}
        if cluster.enabled:
            self._insert_settings.update(CLUSTER_INSERT_SETTINGS)
        if connect:
            self.connect()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def masked_dsn(self) -> str:
        return mask_dsn(self.dsn)

    def connect(self) -> None:
        """Create the database, apply the migrations it lacks and open the connections; or raise a
        StoreError naming the DSN (password masked). Idempotent once it succeeded."""
        if self._connected:
            return
        clients: list[Any] = []
        try:
            admin = self._connect(database=None)
            try:
                admin.command(database_ddl(self.database, self.cluster))
                if self._migrate:
                    apply_migrations(admin, self.database, self.cluster)
            finally:
                admin.close()
            for _ in range(self._connections):
                clients.append(self._connect(database=self.database))
        except Exception as raw:
            for client in clients:
                client.close()
            error = classify(raw)
            self.connect_error = str(error)
            raise StoreError(
                f"ClickHouse at {self.masked_dsn}: {error}", transient=error.transient, code=error.code
            ) from raw
        with self._lock:
            closed = self._closed
            if not closed:
                self._idle.extend(clients)
                self._all.extend(clients)
                self._connected = True
                self.connect_error = ""
        if closed:
            # Closed while connecting (a shutdown during a retried connect): keep nothing open.
            for client in clients:
                client.close()
            raise StoreError("the store is closed", transient=False)

    def _connect(self, database: str | None) -> Any:
        try:
            kwargs: dict[str, Any] = {"dsn": self.dsn}
            if database is not None:
                kwargs["database"] = database
            return clickhouse_connect.get_client(**kwargs)
        except ClickHouseError as error:
            raise classify(error) from error

    def _row_schema_settings(self) -> dict[str, str]:
        """How inserts name their row schema. A server takes it inline (no file to deploy); the embedded
        engine would cache an inline schema under the process's working directory, so it reads a file
        kept beside its data instead."""
        if not self.is_embedded:
            return {
                "format_schema": ROW_SCHEMA,
                "format_schema_source": "string",
                "format_schema_message_name": ROW_MESSAGE,
            }
        directory = Path(self.dsn.removeprefix("chdb://")) / "format_schemas"
        directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(ROW_SCHEMA.encode()).hexdigest()[:16]
        path = directory / f"activity_row_{digest}.proto"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(ROW_SCHEMA)
            os.replace(tmp, path)
        return {"format_schema": f"{path}:{ROW_MESSAGE}"}

    @property
    def insert_settings(self) -> dict[str, Any]:
        """The settings every insert carries (a retried or replayed insert adds its token)."""
        return dict(self._insert_settings)

    @property
    def is_embedded(self) -> bool:
        return self.dsn.startswith("chdb:")

    @contextmanager
    def _client(self) -> Iterator[Any]:
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed", transient=False)
            if not self._connected:
                raise StoreError(
                    f"not connected to ClickHouse at {self.masked_dsn} yet"
                    + (f": {self.connect_error}" if self.connect_error else ""),
                    transient=True,
                )
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = self._connect(self.database)
            with self._lock:
                self._all.append(client)
        try:
            yield client
        finally:
            with self._lock:
                self._idle.append(client)

    def insert_rows(self, payload: bytes | Envelope, rows: int, token: str | None = None) -> None:
        settings = self._insert_settings
        if token is not None:
            settings = {**settings, "insert_deduplication_token": token}
        try:
            if isinstance(payload, Envelope) and not self.is_embedded:
                # The HTTP transport may send a body again when a connection fails: give it bytes,
                # not pieces it would have used up. The embedded engine reads the pieces once, from a
                # file clickhouse-connect writes them to.
                payload = payload.join()
            with self._client() as client:
                summary = client.raw_insert(
                    "activities", INSERT_COLUMNS, payload, settings=settings, fmt="ProtobufList"
                )
        except (ClickHouseError, OSError) as error:
            raise classify(error) from error
        # A lower bound: a ClickHouse server also counts the rows that the analytics materialized
        # views wrote into their aggregates (the embedded engine counts the table's rows only).
        written = summary.written_rows
        if written is not None and written and written < rows and token is None:
            raise StoreError(f"ClickHouse wrote {written} rows of {rows}", transient=False)

    def query(self, sql: str, fmt: str) -> bytes:
        try:
            with self._client() as client:
                result: bytes = client.raw_query(sql, fmt=fmt)
                return result
        except (ClickHouseError, OSError) as error:
            raise classify(error) from error

    def command(self, sql: str) -> Any:
        try:
            with self._client() as client:
                return client.command(sql)
        except (ClickHouseError, OSError) as error:
            raise classify(error) from error

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            clients, self._all, self._idle = self._all, [], []
        for client in clients:
            client.close()
