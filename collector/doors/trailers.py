"""Status details the doors send: RetryInfo in the standard `grpc-status-details-bin` trailer (gRPC) or
in the JSON body (HTTP).

Clients read it back with `activity_client.retry_delay_from_trailer`.
"""

from __future__ import annotations

from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from collector.logs import REQUEST_ID

DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEY = "x-request-id"


def retry_status(code: int, message: str, retry_delay_s: float | None) -> status_pb2.Status:
    """A google.rpc.Status, with RetryInfo when a delay is given: what both doors send on failure (gRPC
    in the trailer, HTTP as JSON)."""
    status = status_pb2.Status(code=code, message=message)
    if retry_delay_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_delay_s * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def status_details(code: int, message: str, retry_delay_s: float | None) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a google.rpc.Status, with RetryInfo when a delay is given."""
    return ((DETAILS_KEY, retry_status(code, message, retry_delay_s).SerializeToString()),)


def status_trailer(
    code: int, message: str, retry_delay_s: float | None
) -> tuple[tuple[str, bytes | str], ...]:
    """`status_details`, and the id of the request being handled (`x-request-id`) when there is one:
    for a call that ends in `context.abort`, which the request id's wrapper never sees return."""
    details: tuple[tuple[str, bytes | str], ...] = status_details(code, message, retry_delay_s)
    request_id = REQUEST_ID.get()
    if request_id is None:
        return details
    return (*details, (REQUEST_ID_KEY, request_id))


OK = code_pb2.OK
