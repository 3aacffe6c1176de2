"""The Segment door: Segment's HTTP Tracking API on the HTTP port, so that analytics.js, the server SDKs
and every tool speaking the same API send activities unchanged.

`POST /v1/track`, `/v1/page`, `/v1/screen`, `/v1/identify`, `/v1/alias`, `/v1/group` (and the
one-letter paths analytics.js uses: `/v1/t`, `/v1/p`, ...) take one call; `/v1/batch` (`/v1/b`) takes
`{"batch": [...]}`. The body is JSON, sent as `application/json` or `text/plain` (what `sendBeacon`
and analytics.js send, which needs no CORS preflight), plain or gzip-encoded. The write key is the
HTTP Basic user name, else `writeKey` in the body; it is an API key of the collector.

The door only translates (collector.doors.segment_mapping): the activities are handed to the same
`ActivityService.track_activities_raw` as the HTTP/JSON door, so auth, validation, processors,
enrichment and spool are those of every door. The answer is Segment's `200 {"success": true}`, plus
`rejections`, one entry per call (or activity of a call) not accepted, by the call's index.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
from aiohttp import web

from collector.doors.auth import TENANT, Authenticator, AuthError
from collector.doors.origins import KeyOrigins, normalize_origin
from collector.doors.segment_body import BodyError, decode
from collector.doors.segment_mapping import CALL_TYPES, Mapper, MappingError, parse_time
from collector.doors.service import ActivityService, RequestFailed
from collector.logs import REQUEST_ID, new_request_id
from core.proto.activity.v1 import activity_pb2 as pb
from core.validation import INVALID_VALUE, TOO_LARGE, Rejection
from core.wire import timestamp_field, varint
from workers.storage.postgres import POSTGRES_ERRORS

MAX_CALL_BYTES = 32 * 1024
"""Segment's limit on one call, in bytes of JSON."""
MAX_BATCH_BYTES = 500 * 1024
"""Segment's limit on one batch request, in bytes of JSON (after gzip decoding)."""
BATCH = "batch"
PATHS = {**{t: t for t in CALL_TYPES}, BATCH: BATCH}
# analytics.js posts each call to the first letter of its type, and batches to `b`.
PATHS |= {t[0]: t for t in (*CALL_TYPES, BATCH)}

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
}
_REASONS = {v.number: v.name for v in pb.RejectionReason.DESCRIPTOR.values}
# TrackActivitiesRequest: field 1 (activities, length-delimited), field 2 (sent_at).
_ACTIVITIES_TAG = b"\x0a"
SENT_AT_FIELD = pb.TrackActivitiesRequest.DESCRIPTOR.fields_by_name["sent_at"].number
_serialize = pb.Activity.SerializeToString


class Refused(Exception):
    """The request as a whole is refused: HTTP status, message, the delay after which a resend may
    pass, and whether the page may read the answer (not when its origin is the problem)."""

    def __init__(
        self, status: int, message: str, retry_delay_s: float | None = None, cors: bool = True
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_delay_s = retry_delay_s
        self.cors = cors


def basic_user(header: str | None) -> str | None:
    """The user name of an `Authorization: Basic` header (Segment's write key), or a Bearer key."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


class Translated:
    """A request's calls as activities, mapped straight into a TrackActivitiesRequest: which call each
    activity came from, and the calls refused."""

    def __init__(self) -> None:
        self.request = pb.TrackActivitiesRequest()
        self.activities = self.request.activities
        self.origin: list[int] = []
        self.rejections: list[Rejection] = []

    def add(self, index: int, call: Any, call_type: str, mapper: Mapper, size: int) -> None:
        if size > MAX_CALL_BYTES:
            message = f"the call has {size} bytes of JSON; the limit is {MAX_CALL_BYTES}"
            self.rejections.append(Rejection(index, "", TOO_LARGE, "", message))
            return
        if not isinstance(call, dict):
            self.rejections.append(Rejection(index, "", INVALID_VALUE, "", "a call must be an object"))
            return
        try:
            count = mapper.map_into(self.activities, call, call_type)
        except (ValueError, TypeError) as error:
            # What protobuf refuses that the mapping does not check itself (text that is not valid
            # UTF-8, such as a lone surrogate escaped in the JSON).
            message = f"the call does not map onto an activity: {error}"
            self.rejections.append(Rejection(index, "", INVALID_VALUE, "", message[:500]))
            return
        except MappingError as error:
            message_id = call.get("messageId")
            self.rejections.append(
                Rejection(
                    index,
                    message_id if isinstance(message_id, str) else "",
                    error.reason,
                    error.field,
                    error.message,
                )
            )
            return
        if count == 1:
            self.origin.append(index)
        else:
            self.origin.extend([index] * count)

    def requests(self, step: int, sent_at: bytes) -> Iterator[tuple[int, bytes]]:
        """The activities as serialized TrackActivitiesRequests of at most `step` activities each, with
        `sent_at` (a serialized field) appended; each with the position of its first activity."""
        activities = self.activities
        if not activities:
            return
        if len(activities) <= step:
            yield 0, self.request.SerializeToString() + sent_at
            return
        for start in range(0, len(activities), step):
            # The request's bytes framed here: a TrackActivitiesRequest built of the activities would
            # copy each of them first.
            raw = b"".join(
                [
                    _ACTIVITIES_TAG + varint(len(a)) + a
                    for a in map(_serialize, activities[start : start + step])
                ]
            )
            yield start, raw + sent_at


class SegmentDoor:
    """Segment's Tracking API routes, added to the HTTP door's application."""

    def __init__(
        self,
        service: ActivityService,
        authenticator: Authenticator | None = None,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.mapper = Mapper()
        self.max_batch_bytes = max_batch_bytes
        self.origins = (
            KeyOrigins(authenticator.tenants.pool, ttl_s=authenticator.ttl_s)
            if authenticator is not None
            else None
        )

    def add_routes(self, app: web.Application) -> None:
        for path, call_type in PATHS.items():
            app.router.add_post(f"/v1/{path}", self._handler(call_type))
            app.router.add_route("OPTIONS", f"/v1/{path}", self._preflight)

    def _handler(self, call_type: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            request_id = new_request_id()
            token = REQUEST_ID.set(request_id)
            try:
                response = await self._handle(request, call_type)
            except Refused as refused:
                response = self._answer(
                    request, {"success": False, "message": refused.message}, refused.status, refused.cors
                )
                if refused.retry_delay_s is not None:
                    response.headers["Retry-After"] = str(max(1, math.ceil(refused.retry_delay_s)))
            finally:
                REQUEST_ID.reset(token)
            response.headers["X-Request-Id"] = request_id
            return response

        return handle

    async def _preflight(self, request: web.Request) -> web.Response:
        # A preflight carries no write key: any origin may ask; the call itself is checked against its
        # key's allowed origins.
        response = web.Response(status=204)
        origin = request.headers.get("Origin")
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", "Content-Type, Authorization"
        )
        response.headers["Access-Control-Max-Age"] = "600"
        return response

    def _answer(
        self, request: web.Request, body: Mapping[str, Any], status: int = 200, cors: bool = True
    ) -> web.Response:
        response = web.json_response(body, status=status, dumps=_dumps)
        origin = request.headers.get("Origin")
        if cors and origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Retry-After, X-Request-Id"
            response.headers["Vary"] = "Origin"
        return response

    async def _read(self, request: web.Request, limit: int) -> bytes:
        """The body (gzip already decoded by aiohttp), refused past `limit` bytes without reading on."""
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise Refused(400, f"the body has more than {limit} bytes of JSON; the limit is {limit}")
                chunks.append(chunk)
        except web.RequestPayloadError as error:
            # A body its Content-Encoding does not decode.
            raise Refused(400, f"the body cannot be read: {error}") from None
        return b"".join(chunks)

    async def _handle(self, request: web.Request, call_type: str) -> web.Response:
        limit = self.max_batch_bytes if call_type == BATCH else MAX_CALL_BYTES
        body = await self._read(request, limit)
        try:
            document, sizes = decode(body)
        except BodyError as error:
            raise Refused(400, str(error)) from None
        tenant = await self._tenant(request, document)
        translated = Translated()
        if call_type == BATCH:
            calls = document.get("batch")
            if not isinstance(calls, list):
                raise Refused(400, "batch: must be a list of calls")
            for index, (call, size) in enumerate(zip(calls, sizes, strict=True)):
                kind = call.get("type") if isinstance(call, dict) else None
                if not isinstance(kind, str) or kind not in CALL_TYPES:
                    kind = "unknown"
                translated.add(index, call, kind, self.mapper, size)
            sent_at = document.get("sentAt")
            if sent_at is None and calls and isinstance(calls[0], dict):
                sent_at = calls[0].get("sentAt")
        else:
            calls = [document]
            translated.add(0, document, call_type, self.mapper, 0)
            sent_at = document.get("sentAt")
        sent_ns = None
        if sent_at is not None:
            try:
                sent_ns = parse_time(sent_at, "sentAt")
            except MappingError as error:
                raise Refused(400, error.message) from None
        token = TENANT.set(tenant)
        try:
            if translated.rejections:
                self.service.reject_translated(translated.rejections)
            rejections = await self._track(translated, sent_ns)
        except RequestFailed as failed:
            response = self._answer(
                request,
                {"success": False, "code": failed.code.value[0], "message": failed.message},
                _HTTP_STATUS.get(failed.code, 500),
            )
            if failed.retry_delay_s is not None:
                response.headers["Retry-After"] = str(max(1, math.ceil(failed.retry_delay_s)))
            return response
        finally:
            TENANT.reset(token)
        rejections.extend(translated.rejections)
        rejections.sort(key=lambda r: r.index)
        return self._answer(
            request,
            {
                "success": True,
                "accepted": len(calls) - len({r.index for r in rejections}),
                "rejections": [
                    {
                        "index": r.index,
                        "reason": _REASONS.get(r.reason, str(r.reason)),
                        "field": r.field,
                        "message": r.message,
                    }
                    for r in rejections
                ],
            },
        )

    async def _tenant(self, request: web.Request, document: Mapping[str, Any]) -> str | None:
        """The tenant of the call's write key (None when auth is off), checked against its origins."""
        if self.authenticator is None:
            return None
        key = basic_user(request.headers.get("Authorization"))
        if key is None:
            sent = document.get("writeKey")
            key = sent if isinstance(sent, str) and sent else None
        try:
            tenant = await self.authenticator.tenant_of(key)
        except AuthError as refused:
            status = _HTTP_STATUS.get(refused.code, 500)
            message = str(refused)
            if refused.code == grpc.StatusCode.UNAUTHENTICATED and key is None:
                message = "missing write key: send it as the HTTP Basic user name or as writeKey in the body"
            raise Refused(status, message, refused.retry_delay_s) from None
        origin = request.headers.get("Origin")
        if origin is not None and key is not None and self.origins is not None:
            try:
                allowed = await self.origins.of(key)
            except POSTGRES_ERRORS:
                raise Refused(
                    503,
                    "the write key's allowed origins cannot be read now (PostgreSQL does not answer)",
                    self.authenticator.retry_delay_s,
                ) from None
            if allowed and normalize_origin(origin) not in allowed:
                raise Refused(403, f"origin {origin[:100]} may not send with this write key", cors=False)
        return tenant

    async def _track(self, translated: Translated, sent_ns: int | None) -> list[Rejection]:
        """Hand the activities to the service in requests it takes; their rejections by call index."""
        step = self.service.limits.max_batch_activities
        rejections: list[Rejection] = []
        sent_at = timestamp_field(SENT_AT_FIELD, sent_ns) if sent_ns is not None else b""
        for start, request in translated.requests(step, sent_at):
            raw = await self.service.track_activities_raw(request)
            answer = pb.TrackActivitiesResponse.FromString(raw)
            for r in answer.rejections:
                index = translated.origin[start + r.index]
                rejections.append(Rejection(index, r.activity_id, r.reason, r.field, r.message))
        return rejections


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
