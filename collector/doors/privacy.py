"""`activity.v1.PrivacyService`: erasure, access and opt-out of a person, for platforms that automate them.

Every call acts within the tenant of its API key (`default_tenant` with auth off), and the doors let
only keys of scope `admin` through (`collector.doors.auth.METHOD_SCOPES`). The work is the same as
`activity-collector users` does: an erasure is a job in PostgreSQL that this collector (or another)
runs; the call returns once it is recorded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import grpc.aio

from collector.doors.auth import TENANT
from collector.doors.handlers import generic_handler
from core.proto.activity.v1 import privacy_pb2 as ppb
from core.proto.activity.v1 import privacy_pb2_grpc as ppb_grpc
from workers.privacy.erasure import ErasureStore, Receipt
from workers.privacy.export import export_person
from workers.privacy.persons import PersonError, PersonIds, SqlEngine, resolve_person, user_of_identity
from workers.processors.suppression import Suppressions, SuppressionStore, id_digest
from workers.storage.clickhouse import StoreError
from workers.storage.postgres import POSTGRES_ERRORS

SERVICE_NAME = "activity.v1.PrivacyService"

_STATES = {
    "pending": ppb.ERASURE_STATE_PENDING,
    "running": ppb.ERASURE_STATE_RUNNING,
    "done": ppb.ERASURE_STATE_DONE,
    "failed": ppb.ERASURE_STATE_FAILED,
}


def erasure_message(receipt: Receipt) -> ppb.Erasure:
    message = ppb.Erasure(
        id=receipt.id,
        state=_STATES.get(receipt.state, ppb.ERASURE_STATE_UNSPECIFIED),
        step=receipt.step,
        ids_covered=receipt.ids,
        rows_removed=receipt.removed,
        error=receipt.error,
    )
    message.requested_at.FromDatetime(receipt.requested_at)
    if receipt.started_at is not None:
        message.started_at.FromDatetime(receipt.started_at)
    if receipt.finished_at is not None:
        message.finished_at.FromDatetime(receipt.finished_at)
    return message


def _person(ref: ppb.PersonRef) -> tuple[str, str]:
    which = ref.WhichOneof("id")
    kind = {"user_id": "user", "anonymous_id": "anonymous", "session_id": "session"}.get(which or "")
    value = getattr(ref, which) if which and which != "identity" else ""
    if kind is None or not value:
        raise PersonError("person: set one of user_id, anonymous_id, session_id, identity (not empty)")
    return kind, value


async def _call(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


class PrivacyService(ppb_grpc.PrivacyServiceServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        clickhouse: SqlEngine,
        database: str,
        default_tenant: str,
        *,
        suppressions: Suppressions | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.clickhouse = clickhouse
        self.database = database
        self.default_tenant = default_tenant
        self.suppressions = suppressions
        self.wake = wake
        self.jobs = ErasureStore(pool)

    def rpc_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The generic handler of the service, for the doors to wrap (authentication, request ids)."""
        return generic_handler(ppb_grpc.add_PrivacyServiceServicer_to_server, self)

    def _tenant(self) -> str:
        return TENANT.get() or self.default_tenant

    async def _person(self, ref: ppb.PersonRef) -> tuple[str, str]:
        """(kind, id) of the person `ref` names; an identity names the user whose activities carry it."""
        if ref.WhichOneof("id") == "identity":
            user = await user_of_identity(
                self._tenant(),
                ref.identity.repository,
                ref.identity.id,
                self.clickhouse,
                self.database,
                _call,
            )
            return "user", user
        return _person(ref)

    async def _guard(self, context: grpc.aio.ServicerContext[Any, Any], work: Any) -> Any:
        """Run `work`; a bad request is INVALID_ARGUMENT, a store that fails UNAVAILABLE."""
        try:
            return await work
        except PersonError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except StoreError as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"ClickHouse did not answer: {error}")
        except POSTGRES_ERRORS as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"PostgreSQL did not answer: {error}")

    async def ErasePerson(
        self, request: ppb.ErasePersonRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ppb.ErasePersonResponse:
        async def work() -> ppb.ErasePersonResponse:
            kind, value = await self._person(request.person)
            tenant = self._tenant()
            job = await self.jobs.request(tenant, kind, value)
            if self.suppressions is not None:
                self.suppressions.add(tenant, [id_digest(tenant, kind, value)])
            if self.wake is not None:
                self.wake()
            receipt = await self.jobs.receipt(job)
            assert receipt is not None
            return ppb.ErasePersonResponse(erasure=erasure_message(receipt))

        result: ppb.ErasePersonResponse = await self._guard(context, work())
        return result

    async def GetErasure(
        self, request: ppb.GetErasureRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ppb.GetErasureResponse:
        async def work() -> Receipt | None:
            tenant = self._tenant()
            if request.WhichOneof("by") == "erasure_id":
                receipt = await self.jobs.receipt(request.erasure_id)
                return receipt if receipt is not None and receipt.tenant == tenant else None
            kind, value = await self._person(request.person)
            return await self.jobs.find(tenant, kind, value)

        receipt = await self._guard(context, work())
        if receipt is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such erasure in this tenant")
        return ppb.GetErasureResponse(erasure=erasure_message(receipt))

    async def ExportPerson(
        self, request: ppb.ExportPersonRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ppb.ExportPersonResponse:
        async def work() -> ppb.ExportPersonResponse:
            kind, value = await self._person(request.person)
            records = [
                json.dumps(record, ensure_ascii=False, sort_keys=True)
                async for record in export_person(
                    self._tenant(), kind, value, self.pool, self.clickhouse, self.database
                )
            ]
            return ppb.ExportPersonResponse(records=records)

        result: ppb.ExportPersonResponse = await self._guard(context, work())
        return result

    async def SuppressPerson(
        self, request: ppb.SuppressPersonRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ppb.SuppressPersonResponse:
        async def work() -> ppb.SuppressPersonResponse:
            kind, value = await self._person(request.person)
            tenant = self._tenant()
            store = SuppressionStore(self.pool)
            digest = id_digest(tenant, kind, value)
            if request.lift:
                lifted = await store.unsuppress(tenant, digest)
                if self.suppressions is not None:
                    self.suppressions.remove(tenant, lifted)
                return ppb.SuppressPersonResponse(ids=len(lifted), suppressed=False)
            ids = await resolve_person(
                tenant, PersonIds.of(kind, value), self.pool, self.clickhouse, self.database, _call
            )
            digests = ids.digests(tenant)
            added = await store.suppress(tenant, digest, digests)
            if self.suppressions is not None:
                self.suppressions.add(tenant, digests)
            return ppb.SuppressPersonResponse(ids=added, suppressed=True)

        result: ppb.SuppressPersonResponse = await self._guard(context, work())
        return result
