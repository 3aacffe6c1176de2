"""gRPC health checking (`grpc.health.v1.Health`) and server reflection on the service's own port.

The collector is SERVING while it can acknowledge activities: while its store takes writes, or, with
the spool on, while the spool has room. It is NOT_SERVING otherwise, and for good from the moment
shutdown begins. Both the overall status (service "") and `activity.v1.ActivityService` carry the same
value, so a Kubernetes gRPC probe, which asks for "", and a client that asks for the service by name
see the same thing.

Where is the store's health read from? From the inserts themselves while there is traffic: every
`health_interval_s`, if an insert committed since the last look the store is up; if inserts failed (or
were retried) and none committed, it is down. With no insert since the last look, a probe query on the
`activities` table, through a store connection like an insert, decides. The probe never runs on the
event loop.

Until the store is connected (with the spool on, the collector starts without ClickHouse and connects
in the background, `workers/storage/connector.py`), it counts as unreachable, and no probe is sent.

Without the spool, an unreachable store means NOT_SERVING at once: nothing can be acknowledged. With
the spool on, activities are acknowledged once on local disk, so the collector stays SERVING while the
store is away and turns NOT_SERVING only when the spool is full as well (it has no room left for one
more request of `max_request_bytes`).

The spool's own disk is watched apart from the store: while its free space is under the reserve
(`spool_min_free_bytes`, plus room for one more request) or writes to it fail, nothing can be
acknowledged, so the collector is NOT_SERVING whatever the store does, and `spool_error` says why
("the spool's disk is full: ... bytes free at ..."). That is never reported as the store being down:
a checkpoint that cannot be written is not an insert that failed. When inserts do fail, `last_error`
carries the store's own error (a full disk of ClickHouse's says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The asyncio servicer, exported as grpc_health.v1.health.aio, which the type stubs do not know.
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from collector.doors.service import SERVICE_NAME
from workers.commit.pipeline import Pipeline
from workers.commit.spooled import SpooledCommit
from workers.storage.connector import StoreConnector
from workers.storage.contract import QueryEngine

log = logging.getLogger(__name__)

HEALTH_SERVICE_NAME = "grpc.health.v1.Health"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PROBE_SQL = "SELECT 1 FROM activities LIMIT 0"


class _HealthServicer(HealthServicer):  # type: ignore[misc]
    """The reference servicer, whose Watch streams end when the server closes, so that an open Watch
    does not hold shutdown for its whole grace period."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = asyncio.Event()

    async def Watch(self, request: Any, context: Any) -> None:
        watch = asyncio.ensure_future(super().Watch(request, context))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait((watch, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, closing):
                task.cancel()
            await asyncio.gather(watch, closing, return_exceptions=True)


class HealthMonitor:
    """Keeps the health status in step with the store.

    Lifecycle: `start()` sets SERVING and starts the periodic check; `begin_shutdown()` sets NOT_SERVING
    for good; `shutdown()` ends the check and any open Watch stream. Both are idempotent and safe
    without start.
    """

    def __init__(
        self,
        store: QueryEngine,
        pipeline: Pipeline,
        interval_s: float,
        request_bytes: int = 0,
        connector: StoreConnector | None = None,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.interval_s = interval_s
        self.request_bytes = request_bytes
        """Room the spool must have left to count as not full."""
        self.connector = connector
        """Connects the store; while it has not, the store is unreachable. None: connected already."""
        self.servicer = _HealthServicer()
        self.store_up = self._store_connected
        self.serving = True
        self.last_error = ""
        self.spool_error = ""
        """What is wrong with the spool's disk (full, or failing), or "" while it is fine."""
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Future[bytes] | None = None
        self._shutting_down = False

    def register(self, server: grpc.aio.Server, services: tuple[str, ...] = ()) -> None:
        """Add the health service, and reflection of every service on the port (`services` beside the
        activity service), to `server`."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, *services, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
        )

    async def start(self) -> None:
        if self._task is not None or self._shutting_down:
            return
        self.spool_error = self._spool_problem()
        self.serving = self._serving(self.store_up)
        await self._publish(self.serving)
        self._task = asyncio.create_task(self._run(), name="health")

    async def _publish(self, up: bool) -> None:
        status = SERVING if up else NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.servicer.set(service, status)

    @property
    def spool_full(self) -> bool:
        """Whether the spool (when on) has no room left for one more full request: by its capacity, or
        by its disk's reserve."""
        spool = self.pipeline.spool
        if spool is None:
            return False
        return spool.size_bytes + self.request_bytes >= spool.capacity_bytes or self._disk_short()

    def _disk_short(self) -> bool:
        """Whether the spool's disk has less free than its reserve plus one more full request."""
        spool = self.pipeline.spool
        if spool is None:
            return False
        try:
            return spool.free_bytes() - self.request_bytes < spool.reserve_bytes
        except OSError:
            return True

    def _spool_problem(self) -> str:
        spool = self.pipeline.spool
        return "" if spool is None else spool.disk_problem(self.request_bytes)

    @property
    def spool_writable(self) -> bool:
        """Whether the spool's disk takes records: above its reserve, and its last write did not fail."""
        spool = self.pipeline.spool
        return spool is None or not (self._disk_short() or "write" in spool.stats.errors)

    @property
    def _store_connected(self) -> bool:
        return self.connector is None or self.connector.ready.is_set()

    def _serving(self, store_up: bool) -> bool:
        # With the spool, acknowledgements need only the local disk until the spool is full; and
        # nothing at all is acknowledged while that disk takes no records.
        if not self.spool_writable:
            return False
        return store_up or (self.pipeline.spool is not None and not self.spool_full)

    def _insert_error(self) -> str:
        commit = self.pipeline.commit
        if isinstance(commit, SpooledCommit) and commit.last_insert_error:
            if commit.store_disk_full:
                return f"ClickHouse's disk is full: inserts are failing: {commit.last_insert_error}"
            return f"inserts are failing: {commit.last_insert_error}"
        return "inserts are failing"

    async def _run(self) -> None:
        stats = self.pipeline.stats
        inserts, failures, retries = stats.inserts, stats.insert_failures, stats.insert_retries
        while True:
            await asyncio.sleep(self.interval_s)
            if self.connector is not None and not self.connector.ready.is_set():
                up, error = False, self.connector.last_error or "the store is not connected yet"
            elif stats.inserts > inserts:
                up, error = True, ""
            elif stats.insert_failures > failures or stats.insert_retries > retries:
                up, error = False, self._insert_error()
            else:
                up, error = await self._run_probe()
            inserts, failures, retries = stats.inserts, stats.insert_failures, stats.insert_retries
            if up != self.store_up:
                if up:
                    log.info("store reachable again")
                else:
                    log.warning("store unreachable", extra={"error": error})
            self.store_up, self.last_error = up, error
            spool_error = self._spool_problem()
            if spool_error != self.spool_error:
                if spool_error:
                    log.warning("spool disk problem", extra={"error": spool_error})
                else:
                    log.info("spool disk fine again")
            self.spool_error = spool_error
            serving = self._serving(up)
            if serving != self.serving:
                if serving:
                    log.info("health SERVING")
                else:
                    log.warning("health NOT_SERVING", extra={"error": spool_error or error})
            self.serving = serving
            await self._publish(serving)

    async def _run_probe(self) -> tuple[bool, str]:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(
                asyncio.to_thread(self.store.query, PROBE_SQL, "TabSeparated")
            )
        try:
            async with asyncio.timeout(self.interval_s):
                await asyncio.shield(self._probe)
        except TimeoutError:
            return False, f"the probe query took longer than {self.interval_s}s"
        except Exception as error:
            return False, str(error)
        return True, ""

    async def begin_shutdown(self) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        await self.servicer.enter_graceful_shutdown()

    async def shutdown(self) -> None:
        await self.begin_shutdown()
        self.servicer.closing.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._probe is not None and not self._probe.done():
            # The store closes next: let a probe still running on its thread finish first.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.interval_s):
                    await self._probe
