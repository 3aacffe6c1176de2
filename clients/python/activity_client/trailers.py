"""The retry delay a collector suggests, read from the standard `grpc-status-details-bin` trailer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"


def retry_delay_from_trailer(metadata: Iterable[Any] | None) -> float | None:
    """The RetryInfo delay, in seconds, from a call's trailing metadata; None when there is none."""
    for item in metadata or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key != DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return float(info.retry_delay.ToNanoseconds() / 1e9)
    return None
