"""The local control channel: a running server answers SQL for the data directory it holds.

The embedded ClickHouse engine admits one process per data directory, so while `serve` runs,
`activity-collector sql` cannot open the store itself; it asks the server over a Unix socket inside the
data directory (mode 0600: only the owner of the data can use it). One request per connection: a JSON
line `{"sql": ..., "format": ...}`; the answer is a JSON line `{"ok": true}` or
`{"ok": false, "error": ...}`, then, when ok, the result bytes until the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from workers.storage import StoreError

log = logging.getLogger(__name__)

_MAX_REQUEST = 1024 * 1024


class ControlServer:
    """Serves SQL over a Unix socket. `query` blocks; it runs on a worker thread."""

    def __init__(self, path: Path, query: Callable[[str, str], bytes]) -> None:
        self.path = path
        self._query = query
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.path.exists():
            if _socket_is_live(self.path):
                raise RuntimeError(
                    f"another collector is serving {self.path.parent} (its control socket answers)"
                )
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path), limit=_MAX_REQUEST)
        os.chmod(self.path, 0o600)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            request = json.loads(line)
            sql, fmt = str(request["sql"]), str(request["format"])
            try:
                result = await asyncio.to_thread(self._query, sql, fmt)
            except StoreError as error:
                writer.write(json.dumps({"ok": False, "error": str(error)}).encode() + b"\n")
            else:
                writer.write(b'{"ok": true}\n')
                writer.write(result)
            await writer.drain()
        except (ValueError, KeyError) as error:
            writer.write(json.dumps({"ok": False, "error": f"bad control request: {error}"}).encode() + b"\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def shutdown(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _socket_is_live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
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
            conn.connect(str(path))
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
