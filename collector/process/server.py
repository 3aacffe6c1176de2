"""The collector process: PostgreSQL, store, pipeline, control channel, metrics endpoint, HTTP door and
gRPC port (with the health and reflection services beside the activity service), started and stopped
together.

Start order is PostgreSQL (started when embedded; migrations run here), store (connected and migrated
here; with the spool on and a ClickHouse server, in the background, so that the collector starts and
spools while ClickHouse is away), processors, pipeline, control channel, metrics endpoint, HTTP door,
gRPC port, health. Each stage is registered in `collector.process.lifecycle.Stages` once started.
Shutdown is idempotent and safe without start (or after a failed start): health turns NOT_SERVING,
both doors stop taking requests, in-flight requests finish within the grace period (their activities
are flushed to the store and they are answered), then the started stages stop in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import grpc
import grpc.aio

from collector.config import Settings
from collector.doors.auth import AuthenticatingHandler, Authenticator
from collector.doors.handlers import Handlers
from collector.doors.http import HttpServer, parse_origins
from collector.doors.privacy import SERVICE_NAME as PRIVACY_SERVICE
from collector.doors.privacy import PrivacyService
from collector.doors.profile import SERVICE_NAME as PROFILE_SERVICE
from collector.doors.profile import ProfileService
from collector.doors.requestid import RequestIdHandler
from collector.doors.service import ActivityService
from collector.doors.web import server_ssl_context
from collector.process.control import ControlServer, DataDirLock
from collector.process.health import HealthMonitor
from collector.process.lifecycle import Stages
from collector.process.metrics import ErasedAtDrainCollector, Metrics, MetricsServer, ReadsCollector
from collector.tenants import TenantStore
from workers.commit.deadletters import DeadLetterStore
from workers.commit.pipeline import Pipeline
from workers.commit.spool import Spool
from workers.commit.spooled import SpooledCommit
from workers.enrichment import useragent
from workers.enrichment.catalog import CatalogStore, CatalogWatcher
from workers.enrichment.enricher import Enricher
from workers.enrichment.identity import IdentityStore
from workers.priority import ThreadPriority
from workers.privacy.erasure import ErasureRunner, ErasureWorker
from workers.privacy.marks import DrainMarks, ErasedRows, collector_id
from workers.privacy.retention import sync_retention
from workers.processors import ProcessorChain, TrackingPlans, build_processors
from workers.processors.plan_store import PlanRefresher, PlanStore
from workers.processors.quota import Quotas, default_quota
from workers.processors.rejections import RejectionRecorder
from workers.processors.suppression import SuppressionRefresher, Suppressions, SuppressionStore
from workers.reads.items import ItemLists
from workers.reads.model import ReadModel
from workers.reads.segments import SegmentStore
from workers.storage.clickhouse import ClickHouseStore, StoreError
from workers.storage.connector import StoreConnector
from workers.storage.postgres import Postgres
from workers.storage.refresher import AggregateRefresher

log = logging.getLogger(__name__)


class CollectorServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.postgres: Postgres | None = None
        self.store: ClickHouseStore | None = None
        self.connector: StoreConnector | None = None
        self.pipeline: Pipeline | None = None
        self.enricher: Enricher | None = None
        self.processors: ProcessorChain | None = None
        self.plans: TrackingPlans | None = None
        self.plan_refresher: PlanRefresher | None = None
        self.rejections: RejectionRecorder | None = None
        self.quotas: Quotas | None = None
        self.suppressions: Suppressions | None = None
        self.erasures: ErasureWorker | None = None
        self.drain_marks: DrainMarks | None = None
        self.privacy: PrivacyService | None = None
        self.profiles: ProfileService | None = None
        self.read_model: ReadModel | None = None
        self.item_lists: ItemLists | None = None
        self.aggregates_refresher: AggregateRefresher | None = None
        self.stages = Stages()
        self.service: ActivityService | None = None
        self.control: ControlServer | None = None
        self.health: HealthMonitor | None = None
        self.metrics: Metrics | None = None
        self.metrics_server: MetricsServer | None = None
        self.http: HttpServer | None = None
        self.authenticator: Authenticator | None = None
        self.created_key: str | None = None
        """The key of the default tenant, when this start created it (there was no tenant): shown once."""
        self.priority = ThreadPriority(settings.background_niceness)
        self._grpc: grpc.aio.Server | None = None
        self.port: int | None = None
        self._stopped = asyncio.Event()
        self._shutdown_started = False

    async def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # First: a second collector on this directory is refused by name, before any store is opened.
        lock = DataDirLock(settings.data_dir)
        lock.acquire()
        self.stages.started("data directory lock", lambda _: asyncio.to_thread(lock.release))
        # One connection more than the default: the catalogue watcher holds one to listen.
        postgres = self.postgres = Postgres(settings.postgres_dsn, settings.data_dir, pool_size=5)
        await postgres.start()
        self.stages.started("postgres", lambda _: postgres.shutdown())
        store = self.store = await asyncio.to_thread(
            ClickHouseStore,
            settings.effective_clickhouse_dsn,
            settings.clickhouse_database,
            connections=settings.pipeline.insert_workers + 1,
            cluster=settings.cluster,
            connect=False,
        )
        self.stages.started("store", lambda _: asyncio.to_thread(store.close))
        connector = self.connector = StoreConnector(self.store)
        self.stages.started("store connector", lambda _: connector.shutdown())
        if settings.spool and not self.store.is_embedded:
            # Acknowledgements need only the spool: start without ClickHouse, connect behind.
            await self.connector.start()
        else:
            # The embedded engine is in this process: it is there or broken. Without the spool, an
            # acknowledgement is a commit in ClickHouse: a collector that cannot reach it has nothing
            # to offer, and a wrong DSN or password is best found at deploy time.
            try:
                await self.connector.connect()
            except StoreError as error:
                if settings.spool:
                    raise
                raise StoreError(
                    f"{error} (with spool off, acknowledgements need ClickHouse: start it first, or "
                    "turn the spool on to start without it)",
                    transient=error.transient,
                    code=error.code,
                ) from error
        spool = None
        if settings.spool:
            spool = Spool(
                settings.spool_dir,
                capacity_bytes=settings.pipeline.spool_capacity_bytes,
                segment_bytes=settings.pipeline.spool_segment_bytes,
            )
        await asyncio.to_thread(useragent.prepare)
        self.enricher = Enricher(
            CatalogStore(self.postgres.pool) if settings.enrichment else None,
            IdentityStore(self.postgres.pool) if settings.enrichment else None,
            cache_size=settings.enrichment_cache_size,
            ttl_s=settings.enrichment_cache_ttl_s,
            timeout_s=settings.enrichment_timeout_ms / 1000,
        )
        if settings.enrichment:
            # Imports made anywhere drop the enrichment caches of their tenant's catalogue at once.
            watcher = CatalogWatcher(self.postgres.pool, self.enricher.forget_catalog)
            await watcher.start()
            self.stages.started("catalog watcher", watcher.shutdown)
        if settings.processors.plans:
            self.plans = TrackingPlans()
        self.quotas = Quotas(default_quota(settings.quota_rate, settings.quota_burst))
        refresher = self.plan_refresher = PlanRefresher(
            PlanStore(self.postgres.pool), self.plans, settings.processors.plan_refresh_s, self.quotas
        )
        await refresher.start()
        self.stages.started("tracking plans and quotas", refresher.shutdown)
        # Erased and opted-out persons: their activities are dropped at intake (workers/privacy/).
        suppressions = self.suppressions = Suppressions()
        suppression_refresher = SuppressionRefresher(
            SuppressionStore(self.postgres.pool), suppressions, settings.processors.plan_refresh_s
        )
        await suppression_refresher.start()
        self.stages.started("suppressions", suppression_refresher.shutdown)
        processors = self.processors = build_processors(settings.processors, self.plans, suppressions)
        await processors.start()
        self.stages.started("processors", processors.shutdown)
        if settings.processors.rejections_store:
            rejections = self.rejections = RejectionRecorder(
                self.store,
                settings.processors.rejections_per_tenant_minute,
                settings.processors.rejections_ttl_days,
                settings.cluster,
            )
            await rejections.start()
            self.stages.started("rejections kept", lambda left: rejections.shutdown(min(left, 2.0)))
        pipeline = self.pipeline = Pipeline(
            settings.pipeline, self.store, spool, DeadLetterStore(self.postgres.pool), self.enricher
        )
        pipeline.store_ready = self.connector.ready
        # Erased persons' rows are dropped from the spool as it drains: every erasure job is read
        # before the drainer starts, so that a spool left by a stop is screened too.
        erased = ErasedRows()
        spooled = pipeline.commit if isinstance(pipeline.commit, SpooledCommit) else None
        marks = self.drain_marks = DrainMarks(
            self.postgres.pool,
            collector_id(settings.data_dir),
            erased,
            suppressions=suppressions,
            settled=pipeline.settled,
            inserts_ended=None if spooled is None else spooled.inserts_ended,
            next_sequence=None if spool is None else lambda: spool.next_sequence,
        )
        await marks.load()
        if spooled is not None:
            spooled.screen = erased
        # Stopped (after the pipeline, below), the collector has no insert in flight: erasures stop
        # waiting for its mark at once rather than after erasure_stale_s.
        self.stages.started("drain mark", lambda _: marks.retire())
        await pipeline.start()
        self.stages.started("pipeline", lambda left: pipeline.shutdown(timeout=left))
        await marks.start()
        self.stages.started("drain marks", marks.shutdown)
        erasures = self.erasures = ErasureWorker(
            ErasureRunner(
                self.postgres.pool,
                self.store,
                settings.clickhouse_database,
                settings.cluster,
                suppressions=suppressions,
                wake_marks=marks.wake,
                stale_s=settings.erasure_stale_s,
                niceness=settings.erasure_niceness,
            )
        )
        await erasures.start()
        self.stages.started("erasures", erasures.shutdown)
        if self.connector.ready.is_set():
            # The tenants' retentions as TTLs (also written by `tenants set`, on the store it reaches).
            try:
                await sync_retention(
                    self.postgres.pool, self.store, settings.clickhouse_database, settings.cluster
                )
            except StoreError as error:
                log.warning("retention TTLs not written", extra={"error": str(error)})
        # The aggregates' rollups: the days that received activities, computed again every interval.
        aggregates = self.aggregates_refresher = AggregateRefresher(
            self.store.command, settings.clickhouse_database, settings.cluster, settings.aggregates_refresh_s
        )
        await aggregates.start()
        self.stages.started("aggregates refresher", aggregates.shutdown)
        self.service = ActivityService(settings, pipeline, processors, self.rejections, self.quotas)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        control = self.control = ControlServer(
            settings.control_socket,
            self.store.query,
            self.store.insert_rows,
            catalog_changed=self.enricher.forget_catalog,
            info=lambda: {"listen": self.address},
        )
        await control.start()
        self.stages.started("control socket", lambda _: control.shutdown())

        # The transport admits a little more than max_request_bytes so that an oversized request
        # reaches the handler and gets INVALID_ARGUMENT naming the limit rather than a transport error.
        max_message = settings.limits.max_request_bytes + 64 * 1024
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message),
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", settings.limits.max_concurrent_streams),
                # Without BDP probing, gRPC reads ahead of the handlers at most grpc.http2.lookahead_bytes
                # (64 KiB) per stream, besides the message a handler is reading. With it, the read-ahead
                # grows with the connection's throughput, and overload shows up as memory.
                ("grpc.http2.bdp_probe", 0),
            ]
        )
        self.privacy = PrivacyService(
            self.postgres.pool,
            self.store,
            settings.clickhouse_database,
            settings.default_tenant,
            suppressions=suppressions,
            wake=erasures.wake,
        )
        # The read side: profiles and recommendations from the stored activities (workers/reads/),
        # answered from memory by the read model where it holds what a call asks about.
        if settings.read_model:
            model = self.read_model = ReadModel(
                self.store,
                settings.read_model_max_activities,
                tail_interval_s=settings.read_model_tail_interval_s,
                suppressions=suppressions,
                # Without the spool an acknowledgement means committed: a read then sees it.
                read_your_writes=not settings.spool,
            )
            await model.start()
            self.stages.started("read model", model.shutdown)
            lists = self.item_lists = ItemLists(
                self.store, settings.read_model_lists_ttl_s, settings.read_model_trending_ttl_s
            )
            self.stages.started("recommendation lists", lists.shutdown)
        profiles = self.profiles = ProfileService(
            self.store,
            settings.default_tenant,
            SegmentStore(self.postgres.pool),
            settings.read_concurrency,
            settings.read_queue,
            self.read_model,
            self.item_lists,
        )
        handler: grpc.GenericRpcHandler[Any, Any] = Handlers(
            self.service.rpc_handler(), self.privacy.rpc_handler(), profiles.rpc_handler()
        )
        if settings.auth:
            tenants = TenantStore(self.postgres.pool)
            self.created_key = await tenants.bootstrap(settings.default_tenant)
            self.authenticator = Authenticator(
                tenants,
                ttl_s=settings.auth_cache_ttl_s,
                max_entries=settings.auth_cache_size,
                retry_delay_s=settings.pipeline.retry_delay_ms / 1000,
            )
            handler = AuthenticatingHandler(handler, self.authenticator)
        handler = RequestIdHandler(handler)
        self._grpc.add_generic_rpc_handlers((handler,))
        self.health = HealthMonitor(
            self.store,
            self.pipeline,
            settings.health_interval_s,
            settings.limits.max_request_bytes,
            connector=self.connector,
        )
        self.health.register(self._grpc, (PRIVACY_SERVICE, PROFILE_SERVICE))
        self.metrics = Metrics(
            settings,
            self.service,
            self.pipeline,
            self.health,
            self.connector,
            authenticator=self.authenticator,
        )
        self.metrics.registry.register(ReadsCollector(profiles.stats, self.read_model, self.item_lists))
        profiles.on_answer = self.metrics.observe_read
        self.metrics.registry.register(ErasedAtDrainCollector(erased.dropped_by_tenant))
        if self.read_model is not None:
            # After the metrics' hook: each committed insert also wakes the read model's tail.
            observe, committed = pipeline.on_insert, self.read_model.committed

            def on_insert(rows: int, seconds: float) -> None:
                if observe is not None:
                    observe(rows, seconds)
                committed(rows, seconds)

            pipeline.on_insert = on_insert
        self.metrics.gc_pauses.install()
        self.stages.started("garbage collector timing", self._stop_gc_timing)
        self.metrics.loop_lag.start()
        self.stages.started("event loop lag probe", self._stop_loop_lag)
        if settings.metrics_listen:
            metrics_server = self.metrics_server = MetricsServer(settings.metrics_listen, self.metrics)
            await metrics_server.start()
            self.stages.started("metrics endpoint", lambda _: metrics_server.shutdown())
        if settings.http_listen:
            self.http = HttpServer(
                settings.http_listen,
                self.service,
                parse_origins(settings.http_cors_origins),
                # JSON takes more room than protobuf; the request's own size is checked after parsing.
                max_body_bytes=4 * settings.limits.max_request_bytes,
                ssl_context=(
                    server_ssl_context(settings.tls_cert_file, settings.tls_key_file)
                    if settings.tls_cert_file
                    else None
                ),
                authenticator=self.authenticator,
            )
            http = self.http
            await http.start()
            self.stages.started("HTTP door", lambda _: http.shutdown())
        tls = settings.tls
        if tls is None:
            self.port = self._grpc.add_insecure_port(settings.listen)
        else:
            certificate_chain, private_key = tls
            credentials = grpc.ssl_server_credentials([(private_key, certificate_chain)])
            self.port = self._grpc.add_secure_port(settings.listen, credentials)
        if not self.port:
            raise RuntimeError(f"listen: cannot bind {settings.listen}")
        grpc_server = self._grpc
        await grpc_server.start()
        self.stages.started("gRPC port", grpc_server.stop)
        health = self.health
        await health.start()
        self.stages.started("health", lambda _: health.shutdown())
        self.priority.start()
        self.stages.started("thread priorities", self._stop_priority)

    async def _stop_priority(self, _left: float) -> None:
        self.priority.shutdown()

    async def _stop_loop_lag(self, _left: float) -> None:
        if self.metrics is not None:
            await self.metrics.loop_lag.shutdown()

    async def _stop_gc_timing(self, _left: float) -> None:
        if self.metrics is not None:
            self.metrics.gc_pauses.remove()

    @property
    def address(self) -> str:
        host = self.settings.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def wait(self) -> None:
        await self._stopped.wait()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        log.info("signal received, shutting down", extra={"signal": signal.Signals(sig).name})
        asyncio.get_running_loop().create_task(self.shutdown())

    async def shutdown(self, grace: float | None = None) -> None:
        if self._shutdown_started:
            await self._stopped.wait()
            return
        self._shutdown_started = True
        grace = self.settings.shutdown_grace_s if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        try:
            if self.health is not None:
                # Probes see NOT_SERVING from the first moment, so that load balancers stop sending.
                await self.health.begin_shutdown()
            if self.service is not None:
                # Refuse new requests with UNAVAILABLE (retryable) while the port is still open, and let
                # the ones in flight be answered; only then close the port.
                self.service.begin_drain()
                await self.service.wait_idle(grace)
                # Clients answered just now may send again at once: give those requests a moment to
                # reach the handler and get UNAVAILABLE rather than be cut off by the closing port.
                await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
                await self.service.wait_idle(max(0.0, deadline - loop.time()))
            await self.stages.stop_all(deadline)
        finally:
            self._stopped.set()
