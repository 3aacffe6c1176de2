"""The control socket of a data directory deeper than a Unix socket's path may be (108 bytes): the
server binds and the clients connect all the same."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collector.process.control import ControlServer, ControlUnavailable, info_via_control, query_via_control
from workers.storage.clickhouse import ClickHouseStore

pytestmark = pytest.mark.timeout(60)


async def test_a_data_directory_too_deep_for_a_socket_path_still_serves(
    tmp_path: Path, store: ClickHouseStore
) -> None:
    deep = tmp_path.joinpath(*(["a-directory-of-the-collector"] * 5))
    deep.mkdir(parents=True)
    path = deep / "control.sock"
    assert len(str(path).encode()) > 108
    server = ControlServer(path, store.query, info=lambda: {"pid": 1, "address": "here"})
    await server.start()
    try:
        assert path.exists()
        answer = await asyncio.to_thread(query_via_control, path, "SELECT 40 + 2", "TabSeparated")
        assert answer == b"42\n"
        assert (await asyncio.to_thread(info_via_control, path))["address"] == "here"
        # A second server on the same directory sees the first one answering.
        with pytest.raises(Exception, match="another collector is serving"):
            await ControlServer(path, store.query).start()
    finally:
        await server.shutdown()
    assert not path.exists()
    with pytest.raises(ControlUnavailable):
        await asyncio.to_thread(query_via_control, path, "SELECT 1", "TabSeparated")
