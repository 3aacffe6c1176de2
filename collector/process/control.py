"""The local control channel: a running server answers SQL and takes inserts for the data directory
it holds.

The embedded ClickHouse engine admits one process per data directory, so while `serve` runs,
`activity-collector sql` and `dead-letters replay` cannot open the store themselves; they ask the
server over a Unix socket inside the data directory (mode 0600: only the owner of the data can use it).
One request per connection, a JSON line:

- `{"sql": ..., "format": ...}`: the answer is a JSON line `{"ok": true}` or `{"ok": false, "error": ...}`,
  then, when ok, the result bytes until the connection closes.
- `{"op": "insert", "rows": N, "token": ..., "bytes": L}` followed by L bytes, one ProtobufList envelope
  of N rows, inserted with that deduplication token (null: none): the answer is a JSON line
  `{"ok": true}` or `{"ok": false, "error": ..., "code": ..., "transient": ..., "data": ...}` (the
  store's error and its classification).
- `{"op": "catalog-changed", "tenant": ...}`: the catalogue of that tenant (null: of every tenant)
  changed; the server drops what its enrichment caches hold of it, so that the next activities see the
  import at once. The answer is `{"ok": true, "dropped": N}`.
- `{"op": "info"}`: `{"ok": true, "pid": ..., "listen": "HOST:PORT"}`, the server's process and gRPC
  address (`send --wait` asks it, to know whether the server it sent to is this one).

`serve` also holds `serve.pid` in the data directory, locked (`DataDirLock`) while it runs: a second
`serve` on the same directory is refused naming the first one's process id.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from workers.storage.clickhouse import StoreError

log = logging.getLogger(__name__)

_MAX_REQUEST = 1024 * 1024
_MAX_INSERT = 1 << 30

Insert = Callable[[bytes, int, str | None], None]
CatalogChanged = Callable[[str | None], int]
"""Drops the enrichment caches of a tenant's catalogue (every tenant's for None); how many entries."""
PID_FILE = "serve.pid"


def _failure(error: StoreError) -> bytes:
    answer = {
        "ok": False,
        "error": str(error),
        "code": error.code,
        "transient": error.transient,
        "data": error.data,
    }
    return json.dumps(answer).encode() + b"\n"


class ControlServer:
    """Serves SQL and inserts over a Unix socket. `query` and `insert` block; they run on a worker
    thread. Without `insert`, insert requests are refused."""

    def __init__(
        self,
        path: Path,
        query: Callable[[str, str], bytes],
        insert: Insert | None = None,
        *,
        catalog_changed: CatalogChanged | None = None,
        info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.path = path
        self._query = query
        self._insert = insert
        self._catalog_changed = catalog_changed
        self._info = info
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.path.exists():
            if _socket_is_live(self.path):
                raise RuntimeError(
                    f"another collector is serving {self.path.parent} (its control socket answers)"
                )
            self.path.unlink()
        with _address(self.path) as address:
            self._server = await asyncio.start_unix_server(self._handle, path=address, limit=_MAX_REQUEST)
        os.chmod(self.path, 0o600)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            request = json.loads(line)
            op = request.get("op", "query")
            if op == "insert":
                await self._handle_insert(request, reader, writer)
                return
            if op == "info":
                answer = {"ok": True, "pid": os.getpid(), **(self._info() if self._info else {})}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
                return
            if op == "catalog-changed":
                tenant = request.get("tenant")
                dropped = 0
                if self._catalog_changed is not None:
                    dropped = self._catalog_changed(None if tenant is None else str(tenant))
                writer.write(json.dumps({"ok": True, "dropped": dropped}).encode() + b"\n")
                await writer.drain()
                return
            sql, fmt = str(request["sql"]), str(request["format"])
            try:
                result = await asyncio.to_thread(self._query, sql, fmt)
            except StoreError as error:
                writer.write(json.dumps({"ok": False, "error": str(error)}).encode() + b"\n")
            else:
                writer.write(b'{"ok": true}\n')
                writer.write(result)
            await writer.drain()
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            writer.write(json.dumps({"ok": False, "error": f"bad control request: {error}"}).encode() + b"\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handle_insert(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        rows, size = int(request["rows"]), int(request["bytes"])
        token = None if request.get("token") is None else str(request["token"])
        if self._insert is None:
            raise ValueError("this server takes no inserts")
        if not 0 <= size <= _MAX_INSERT or rows < 0:
            raise ValueError(f"insert of {size} bytes, {rows} rows: out of bounds")
        payload = await reader.readexactly(size)
        try:
            await asyncio.to_thread(self._insert, payload, rows, token)
        except StoreError as error:
            writer.write(_failure(error))
        else:
            writer.write(b'{"ok": true}\n')
        await writer.drain()

    async def shutdown(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# A socket's path must fit in sockaddr_un's 108 bytes; a deeper data directory is reached through its
# descriptor's name in /proc instead, which is short whatever the directory's path.
_MAX_SOCKET_PATH = 100


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """An address for the socket at `path` that bind and connect accept, however deep `path` is."""
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        yield str(path)
        return
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


def _connect(conn: socket.socket, path: Path) -> None:
    with _address(path) as address:
        conn.connect(address)


def _socket_is_live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            _connect(probe, path)
        except OSError:
            return False
        return True


class ControlUnavailable(Exception):
    """No server answers on the socket."""


def query_via_control(path: Path, sql: str, fmt: str, timeout: float = 300.0) -> bytes:
    """Ask the server holding `path`'s data directory to run `sql`. Raises ControlUnavailable when no
    server listens there, StoreError when the query fails."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            _connect(conn, path)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            raise ControlUnavailable(str(error)) from error
        conn.sendall(json.dumps({"sql": sql, "format": fmt}).encode() + b"\n")
        with conn.makefile("rb") as stream:
            header = json.loads(
                stream.readline() or b'{"ok": false, "error": "the server closed the connection"}'
            )
            if not header.get("ok"):
                raise StoreError(str(header.get("error")), transient=False)
            return stream.read()


def insert_via_control(
    path: Path, payload: bytes, rows: int, token: str | None, timeout: float = 300.0
) -> None:
    """Ask the server holding `path`'s data directory to insert one ProtobufList envelope of `rows` rows
    with deduplication `token`. Raises ControlUnavailable when no server listens there, StoreError (as
    the server classified it) when the insert fails."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            _connect(conn, path)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            raise ControlUnavailable(str(error)) from error
        request = {"op": "insert", "rows": rows, "token": token, "bytes": len(payload)}
        conn.sendall(json.dumps(request).encode() + b"\n")
        conn.sendall(payload)
        with conn.makefile("rb") as stream:
            answer = json.loads(
                stream.readline()
                or b'{"ok": false, "error": "the server closed the connection", "transient": true}'
            )
        if not answer.get("ok"):
            code = answer.get("code")
            raise StoreError(
                str(answer.get("error")),
                transient=bool(answer.get("transient")),
                code=code if isinstance(code, int) else None,
                data=bool(answer.get("data")),
            )


def _ask(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One JSON request, one JSON line answered; ControlUnavailable when no server answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            _connect(conn, path)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            raise ControlUnavailable(str(error)) from error
        conn.sendall(json.dumps(request).encode() + b"\n")
        with conn.makefile("rb") as stream:
            answer = json.loads(stream.readline() or b'{"ok": false}')
    if not isinstance(answer, dict) or not answer.get("ok"):
        reason = answer.get("error") if isinstance(answer, dict) else None
        raise ControlUnavailable(str(reason or "the server closed the connection"))
    return answer


def catalog_changed_via_control(path: Path, tenant: str | None, timeout: float = 10.0) -> int:
    """Tell the server holding `path`'s data directory that `tenant`'s catalogue changed (every
    tenant's: None), so that it drops its cached view of it: how many cache entries it dropped. Raises
    ControlUnavailable when no server listens there."""
    return int(_ask(path, {"op": "catalog-changed", "tenant": tenant}, timeout).get("dropped", 0))


def info_via_control(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """The process id and gRPC address of the server holding `path`'s data directory. Raises
    ControlUnavailable when no server listens there."""
    return _ask(path, {"op": "info"}, timeout)


class DataDirBusy(RuntimeError):
    """Another collector serves the data directory; the message names it."""


class DataDirLock:
    """`serve.pid` in a data directory: the process id of the collector serving it, locked (flock)
    while it runs. The lock goes with the process, however it ends, so a stale file never blocks a
    start; the embedded ClickHouse engine would otherwise refuse a second process with a bare
    "Error initializing EmbeddedServer"."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / PID_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write this process's id; DataDirBusy when another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise DataDirBusy(
                f"another collector{who} is serving the data directory {self.data_dir.resolve()}: "
                "stop it first, or pass another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(fd)
