"""Request ids on the gRPC door: every call of the activity service gets one, set in `REQUEST_ID` so
that the log events of its handling carry it, and returned to the client as `x-request-id` metadata.

Unary calls return it in the trailing metadata, whether they succeed or fail (aborted calls through
`collector.doors.trailers.status_trailer`). A stream gets one id,
sent in its initial metadata when the call starts; its k-th batch (counting from 1, in the order the
client sent them) is handled as request `<stream id>/<k>`.

The wrapper sits outside authentication, so that a refused or failed key check is logged with the id
the client sees too.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from collector.doors.handlers import WrappingHandler
from collector.doors.trailers import REQUEST_ID_KEY as HEADER
from collector.logs import REQUEST_ID, new_request_id


class RequestIdHandler(WrappingHandler):
    """Wraps a handler: each call it serves runs with a request id of its own."""

    def _unary(self, behaviour: Any) -> Any:
        async def identified(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request_id = new_request_id()
            token = REQUEST_ID.set(request_id)
            try:
                response = await behaviour(request, context)
                context.set_trailing_metadata((*(context.trailing_metadata() or ()), (HEADER, request_id)))
                return response
            finally:
                # A call aborted (context.abort) carries the id in status_trailer's metadata; one that
                # fails by setting its status and returning gets it above.
                REQUEST_ID.reset(token)

        return identified

    def _stream(self, behaviour: Any) -> Any:
        async def identified(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            request_id = new_request_id()
            token = REQUEST_ID.set(request_id)
            try:
                await context.send_initial_metadata(((HEADER, request_id),))
                await behaviour(requests, context)
            finally:
                REQUEST_ID.reset(token)

        return identified
