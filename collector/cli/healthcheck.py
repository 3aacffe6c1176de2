"""`activity-collector health`: ask a running collector's gRPC health service, for container health checks.

Exit status 0 when the collector answers SERVING, 1 when it answers anything else or cannot be reached.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _channel(target: str, ca_file: str | None, server_name: str | None) -> grpc.Channel:
    if ca_file is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, credentials, options=options)


def check(
    target: str,
    service: str = "",
    timeout: float = 5.0,
    ca_file: str | None = None,
    server_name: str | None = None,
) -> int:
    with _channel(target, ca_file, server_name) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            print(f"{target}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(f"{target}: {status}")
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1
