"""The HTTP/JSON door: `POST /v1/activities` on `http_listen`, for browsers and tools without gRPC.

The body is a `TrackActivitiesRequest` in the proto's canonical JSON mapping; the answer is the
`TrackActivitiesResponse` in JSON (lowerCamelCase names, every field present). The JSON is turned into
the protobuf request and handed to the same `ActivityService` path as a gRPC `TrackActivities` call
(`track_activities_raw`): the same checks, per-activity rejections, pipeline and counters.

A request that fails as a whole is answered with the HTTP status of its gRPC code and a
`google.rpc.Status` in JSON (`code`, `message`, `details` with a `RetryInfo` when a resend helps, whose
delay is also in `Retry-After`). JSON that does not map onto the request (a syntax error, an unknown
field, a value of the wrong type) is refused as a whole with 400 naming the field: unlike protobuf bytes,
it cannot be split into activities that parse and activities that do not.

CORS: origins listed in `http_cors_origins` (or any, with `*`) may call the endpoint from a browser.

The same port serves Segment's Tracking API (collector.doors.segment).
"""

from __future__ import annotations

import json
import math
import ssl

import grpc
from aiohttp import web
from google.protobuf import json_format

from collector.doors.auth import TENANT, Authenticator, AuthError, bearer_key
from collector.doors.segment import SegmentDoor
from collector.doors.service import ActivityService, RequestFailed
from collector.doors.trailers import retry_status
from collector.doors.web import WebListener
from collector.logs import REQUEST_ID, new_request_id
from core.proto.activity.v1 import activity_pb2 as pb

PATH = "/v1/activities"
JSON = "application/json"

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
}


def _status_body(code: grpc.StatusCode, message: str, retry_delay_s: float | None) -> str:
    return json_format.MessageToJson(retry_status(code.value[0], message, retry_delay_s), indent=None)


def parse_origins(value: str) -> frozenset[str]:
    """`http_cors_origins`: comma-separated origins, `*` for any, empty for none."""
    return frozenset(o.strip().rstrip("/") for o in value.split(",") if o.strip())


class HttpServer(WebListener):
    """`POST /v1/activities` (and its CORS preflight) on `http_listen`."""

    def __init__(
        self,
        listen: str,
        service: ActivityService,
        cors_origins: frozenset[str],
        max_body_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        app = web.Application(client_max_size=max_body_bytes)
        app.router.add_post(PATH, self._identified)
        app.router.add_route("OPTIONS", PATH, self._preflight)
        # Segment's Tracking API on the same port: a translation into the same service calls.
        self.segment = SegmentDoor(service, authenticator)
        self.segment.add_routes(app)
        super().__init__(app, listen, "http_listen", ssl_context)
        self.service = service
        self.cors_origins = cors_origins
        self.authenticator = authenticator

    @property
    def url(self) -> str:
        return self.base_url + PATH

    def _allowed_origin(self, request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        if origin is None or not self.cors_origins:
            return None
        if "*" in self.cors_origins or origin.rstrip("/") in self.cors_origins:
            return origin
        return None

    def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = self._allowed_origin(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Retry-After, X-Request-Id"
            response.headers["Vary"] = "Origin"

    async def _preflight(self, request: web.Request) -> web.Response:
        if self._allowed_origin(request) is None:
            return web.Response(status=403, text="origin not allowed (http_cors_origins)")
        response = web.Response(status=204)
        self._cors(request, response)
        response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", "Content-Type"
        )
        response.headers["Access-Control-Max-Age"] = "600"
        return response

    def _failure(
        self, request: web.Request, code: grpc.StatusCode, message: str, retry_delay_s: float | None = None
    ) -> web.Response:
        response = web.Response(
            status=HTTP_STATUS.get(code, 500),
            text=_status_body(code, message, retry_delay_s),
            content_type=JSON,
        )
        if retry_delay_s is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(retry_delay_s)))
        self._cors(request, response)
        return response

    async def _identified(self, request: web.Request) -> web.Response:
        """`_track` with a request id: on the log events of its handling, and in `X-Request-Id`."""
        request_id = new_request_id()
        # Requests on one connection run in one task: the id is reset for the next.
        token = REQUEST_ID.set(request_id)
        try:
            response = await self._track(request)
        finally:
            REQUEST_ID.reset(token)
        response.headers["X-Request-Id"] = request_id
        return response

    async def _track(self, request: web.Request) -> web.Response:
        if request.content_type != JSON:
            response = web.Response(status=415, text=f"Content-Type must be {JSON}")
            self._cors(request, response)
            return response
        try:
            text = await request.text()
        except UnicodeDecodeError as error:
            return self._failure(request, grpc.StatusCode.INVALID_ARGUMENT, f"the body is not UTF-8: {error}")
        try:
            message = json_format.Parse(text, pb.TrackActivitiesRequest())
        except (json_format.ParseError, json.JSONDecodeError) as error:
            return self._failure(
                request,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the body is not a TrackActivitiesRequest in JSON: {error}",
            )
        tenant = None
        if self.authenticator is not None:
            # The same keys and answers as the gRPC door: `Authorization: Bearer <key>`.
            header = request.headers.get("Authorization")
            try:
                tenant = await self.authenticator.tenant_of(
                    bearer_key([("authorization", header)] if header else [])
                )
            except AuthError as refused:
                return self._failure(request, refused.code, str(refused), refused.retry_delay_s)
        token = TENANT.set(tenant)
        try:
            raw = await self.service.track_activities_raw(message.SerializeToString())
        except RequestFailed as failed:
            return self._failure(request, failed.code, failed.message, failed.retry_delay_s)
        finally:
            TENANT.reset(token)
        answer = pb.TrackActivitiesResponse.FromString(raw)
        response = web.Response(
            text=json_format.MessageToJson(answer, indent=None, always_print_fields_with_no_presence=True),
            content_type=JSON,
        )
        self._cors(request, response)
        return response
