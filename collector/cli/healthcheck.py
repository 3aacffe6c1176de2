"""`activity-collector health`: ask a running collector's gRPC health service, for container health checks.

Exit status 0 when the collector answers SERVING, 1 when it answers anything else or cannot be reached,
2 when the --ca-file cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc

from collector.cli.common import CommandError, Configuration, Subparsers


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "health",
        help="ask a running server whether it is SERVING (exit 0) or not (1)",
        description="Asks the gRPC health service of a running server (a container's health check, "
        "a script's wait for start-up). Exit status: 0 SERVING; 1 NOT_SERVING, or no answer within "
        "--timeout; 2 the command cannot run (an unreadable --ca-file).",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("ACTIVITY_TARGET", "127.0.0.1:50051"),
        help="HOST:PORT of the server (default 127.0.0.1:50051; ACTIVITY_TARGET)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    parser.add_argument("--ca-file", help="PEM certificates to trust: connect over TLS (default: plain text)")
    parser.add_argument("--server-name", help="with --ca-file: the name the certificate must carry")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    try:
        return check(args.target, timeout=args.timeout, ca_file=args.ca_file, server_name=args.server_name)
    except CommandError as error:
        print(f"activity-collector health: {error}", file=sys.stderr)
        return 2


def _channel(target: str, ca_file: str | None, server_name: str | None) -> grpc.Channel:
    if ca_file is None:
        return grpc.insecure_channel(target)
    try:
        roots = Path(ca_file).read_bytes()
    except OSError as error:
        raise CommandError(f"--ca-file: cannot read {ca_file}: {error.strerror or error}") from None
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, credentials, options=options)


def check(
    target: str,
    service: str = "",
    timeout: float = 5.0,
    ca_file: str | None = None,
    server_name: str | None = None,
) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

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
