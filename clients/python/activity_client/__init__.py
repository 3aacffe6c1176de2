"""The Python client of the activity collector.

    from activity_client import Client

    with Client("127.0.0.1:50051", api_key="ak_...") as client:
        client.track(action="view", target={"type": "product", "id": "sku-1"}, user={"anonymous_id": "a-1"})

`Client` (threads) and `AsyncClient` (asyncio) buffer activities and send them in batches over one
stream, resending what the collector asks to be resent; `on_batch` hears what became of each batch
(`BatchResult`). `Reader` asks for profiles and recommendations (a key of scope read).
`activity_client.proto.activity.v1` is the generated code of the wire format, for
callers that build requests themselves.
"""

from activity_client.client import (
    AsyncClient,
    BatchResult,
    BufferFull,
    Client,
    ClientClosed,
    ClientStats,
    WhenFull,
)
from activity_client.proto.activity.v1 import activity_pb2, activity_pb2_grpc, profile_pb2
from activity_client.reads import Reader
from activity_client.trailers import retry_delay_from_trailer

__all__ = [
    "AsyncClient",
    "BatchResult",
    "BufferFull",
    "Client",
    "ClientClosed",
    "ClientStats",
    "Reader",
    "WhenFull",
    "activity_pb2",
    "activity_pb2_grpc",
    "profile_pb2",
    "retry_delay_from_trailer",
]
