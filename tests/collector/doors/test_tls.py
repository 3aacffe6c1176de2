"""TLS on the gRPC port and the HTTP door, with a self-signed certificate made for the test."""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from activity_client.client import AsyncClient
from google.protobuf import json_format
from helpers import make_activity, self_signed_certificate

from collector.config import ConfigError
from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


async def test_grpc_and_http_over_tls(start_server: Any, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server: CollectorServer = await start_server(tls_cert_file=str(cert), tls_key_file=str(key))
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())

    async with grpc.aio.secure_channel(server.address, credentials) as channel:
        answer = await pb_grpc.ActivityServiceStub(channel).TrackActivity(
            pb.TrackActivityRequest(activity=make_activity(1))
        )
        assert answer.accepted_count == 1

    # Plain text is not answered on a TLS port.
    async with grpc.aio.insecure_channel(server.address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.ActivityServiceStub(plain).TrackActivity(
                pb.TrackActivityRequest(activity=make_activity(2)), timeout=3
            )
        assert refused.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

    assert server.http is not None and server.http.url.startswith("https://")
    trust = ssl.create_default_context(cafile=str(cert))
    body = json_format.MessageToDict(pb.TrackActivitiesRequest(activities=[make_activity(3)]))
    async with aiohttp.ClientSession() as http, http.post(server.http.url, json=body, ssl=trust) as answer:
        assert answer.status == 200
        assert (await answer.json())["acceptedCount"] == 1

    # The Python client, and the health command, over TLS.
    async with AsyncClient(server.address, credentials=credentials, flush_interval=0.01) as client:
        await client.track(action="view", target={"type": "page", "id": "home"}, user={"user_id": "u"})
        assert await client.flush(timeout=10)
        assert client.stats.accepted == 1
    health = await asyncio.create_subprocess_exec(
        *(
            sys.executable,
            "-m",
            "collector.cli",
            "health",
            "--target",
            server.address,
            "--ca-file",
            str(cert),
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(health.communicate(), 30)
    assert health.returncode == 0, err.decode()
    assert "SERVING" in out.decode()

    assert server.store is not None
    assert server.store.query("SELECT count() FROM activities", "TabSeparated").strip() == b"3"


def test_tls_needs_both_files_and_readable_ones(make_settings: Any, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with pytest.raises(ConfigError, match="tls_key_file"):
        make_settings(tls_cert_file=str(cert))
    with pytest.raises(ConfigError, match="tls_cert_file"):
        make_settings(tls_key_file=str(key))
    with pytest.raises(ConfigError, match="tls_cert_file: cannot read"):
        make_settings(tls_cert_file=str(cert.parent / "missing.pem"), tls_key_file=str(key))
