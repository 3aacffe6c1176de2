"""Metrics in the Prometheus text format, served at `/metrics` on `metrics_listen`.

Most values are read at scrape time from the counters the service, the pipeline and authentication
keep anyway (`ServiceStats`, `PipelineStats`, `Pipeline.pending`, `AuthStats`) by a custom collector:
what a request pays for metrics is one observation of its answer's duration (the histograms of ingest
and reads); the insert histograms (rows and duration) are observed once per insert. The HTTP listener
runs on the collector's event loop, where the counters are written, so a scrape reads a consistent set
of values and no lock is needed. What to alert on: `docs/operations.md`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from collector.config import Settings
from collector.doors.auth import UNAUTHENTICATED, UNAVAILABLE, Authenticator
from collector.doors.profile import ReadStats
from collector.doors.service import ActivityService
from collector.doors.web import WebListener
from collector.process.health import HealthMonitor
from collector.process.heap import GcPauses
from collector.process.looplag import LoopLag
from core.proto.activity.v1 import activity_pb2 as pb
from workers.commit.pipeline import Pipeline
from workers.enrichment.enricher import CATALOG, IDENTITY, MAX_PENDING_LINKS
from workers.processors import Suppressions, TrackingPlans
from workers.reads.items import ItemLists
from workers.reads.model import ReadModel
from workers.storage.connector import StoreConnector

log = logging.getLogger(__name__)

PREFIX = "activity_collector"
INSERT_ROWS_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
INSERT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
GC_PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
ANSWER_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def _counter(name: str, doc: str, label: str, values: Iterable[tuple[str, float]]) -> CounterMetricFamily:
    """A counter family `PREFIX + name` with one sample per (label value, count)."""
    family = CounterMetricFamily(PREFIX + name, doc, labels=[label])
    for key, n in values:
        family.add_metric([key], n)
    return family


def _reason_label(reason: int) -> str:
    try:
        name = pb.RejectionReason.Name(reason)
    except ValueError:
        return str(reason)
    return name.removeprefix("REJECTION_REASON_").lower()


def _version() -> str:
    try:
        return metadata.version("activity-collector")
    except metadata.PackageNotFoundError:
        return "unknown"


class StatsCollector(Collector):
    """Reads the service's, the pipeline's and authentication's counters at scrape time."""

    def __init__(
        self,
        settings: Settings,
        service: ActivityService,
        pipeline: Pipeline,
        health: HealthMonitor | None,
        connector: StoreConnector | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.capacity = settings.pipeline.queue_capacity
        self.service = service
        self.pipeline = pipeline
        self.health = health
        self.connector = connector
        self.authenticator = authenticator

    def collect(self) -> Iterable[Metric]:
        s = self.service.stats
        p = self.pipeline.stats

        info = InfoMetricFamily(PREFIX + "_build", "The collector's version.", labels=["version"])
        info.add_metric([_version()], {})
        yield info

        yield CounterMetricFamily(
            PREFIX + "_requests",
            "Requests received: TrackActivity and TrackActivities calls and StreamActivities batches.",
            value=s.requests,
        )
        failed = CounterMetricFamily(
            PREFIX + "_requests_failed",
            "Requests (and stream batches) that failed as a whole, by gRPC status code.",
            labels=["code"],
        )
        for code, n in sorted(s.failed_by_code.items()):
            failed.add_metric([code], n)
        yield failed

        def per_tenant(name: str, doc: str, counts: Mapping[str, int]) -> CounterMetricFamily:
            return _counter(name, doc, "tenant", sorted(counts.items()))

        yield per_tenant(
            "_activities_received",
            "Activities in requests that passed the request-level checks.",
            s.received_by_tenant,
        )
        yield per_tenant("_activities_accepted", "Activities stored and acknowledged.", s.accepted_by_tenant)
        rejected = CounterMetricFamily(
            PREFIX + "_activities_rejected",
            "Activities rejected by validation, by reason (the RejectionReason without its prefix).",
            labels=["tenant", "reason"],
        )
        for (tenant, reason), n in sorted(s.rejected_by_tenant.items()):
            rejected.add_metric([tenant, _reason_label(reason)], n)
        yield rejected
        yield per_tenant(
            "_activities_refused",
            "Valid activities refused because the queue or the spool was full (answered RESOURCE_EXHAUSTED).",
            p.refused_by_tenant,
        )
        yield per_tenant(
            "_activities_failed",
            "Valid activities admitted but not stored: the store failed or shutdown came first "
            "(answered UNAVAILABLE).",
            p.failed_by_tenant,
        )

        yield GaugeMetricFamily(
            PREFIX + "_queue_activities",
            "Activities admitted and not yet committed or failed.",
            value=self.pipeline.pending,
        )
        yield GaugeMetricFamily(
            PREFIX + "_queue_capacity_activities",
            "Most activities the queue admits (queue_capacity); past it, RESOURCE_EXHAUSTED.",
            value=self.capacity,
        )
        yield CounterMetricFamily(PREFIX + "_inserts", "Inserts committed to ClickHouse.", value=p.inserts)
        yield CounterMetricFamily(
            PREFIX + "_rows_committed", "Rows (activities) committed to ClickHouse.", value=p.committed
        )
        yield CounterMetricFamily(
            PREFIX + "_insert_retries",
            "Inserts tried again after an error that may pass.",
            value=p.insert_retries,
        )
        yield CounterMetricFamily(
            PREFIX + "_insert_failures",
            "Inserts given up: every request in them was answered UNAVAILABLE.",
            value=p.insert_failures,
        )
        yield per_tenant(
            "_activities_dead_lettered",
            "Spooled activities ClickHouse refused for good, kept in the dead_letters table in PostgreSQL "
            "(tenant '' when their rows do not say).",
            p.dead_letters_by_tenant,
        )
        yield from self._auth()
        yield from self._processors()
        yield from self._plans_and_rejections()
        yield from self._enrichment()
        spool = self.pipeline.spool
        if spool is not None:
            yield GaugeMetricFamily(
                PREFIX + "_spool_bytes", "Bytes in the spool not yet in ClickHouse.", value=spool.size_bytes
            )
            yield GaugeMetricFamily(
                PREFIX + "_spool_capacity_bytes",
                "Most bytes the spool holds (spool_capacity_bytes); past it, RESOURCE_EXHAUSTED.",
                value=spool.capacity_bytes,
            )
            yield GaugeMetricFamily(
                PREFIX + "_spool_activities",
                "Activities acknowledged from the spool and not yet in ClickHouse.",
                value=spool.pending_rows,
            )
            yield CounterMetricFamily(
                PREFIX + "_spool_damaged_records",
                "Spool records found damaged on replay and skipped.",
                value=spool.stats.corrupt_records,
            )
            yield from self._spool_disk()
        if self.connector is not None:
            yield GaugeMetricFamily(
                PREFIX + "_store_ready",
                "1 once the store is connected and its migrations applied, 0 until then.",
                value=1 if self.connector.ready.is_set() else 0,
            )
            yield CounterMetricFamily(
                PREFIX + "_store_connect_attempts",
                "Attempts to connect the store (and apply its migrations), the successful one included.",
                value=self.connector.attempts,
            )
        if self.health is not None:
            yield GaugeMetricFamily(
                PREFIX + "_store_up",
                "1 while the store takes writes, 0 while it does not.",
                value=1 if self.health.store_up else 0,
            )
            yield GaugeMetricFamily(
                PREFIX + "_serving",
                "1 while gRPC health is SERVING (the store, or the spool, takes activities), 0 while not.",
                value=1 if self.health.serving else 0,
            )

    def _spool_disk(self) -> Iterable[Metric]:
        """The spool's file system: its free space against the reserve, and failures of its disk."""
        spool = self.pipeline.spool
        if spool is None:
            return
        try:
            free: int | None = spool.free_bytes()
        except OSError:
            free = None
        if free is not None:
            yield GaugeMetricFamily(
                PREFIX + "_spool_disk_free_bytes",
                "Bytes free on the spool's file system. Under spool_min_free_bytes, activities are refused "
                "(RESOURCE_EXHAUSTED) and health is NOT_SERVING.",
                value=free,
            )
        yield GaugeMetricFamily(
            PREFIX + "_spool_min_free_bytes",
            "Space the spool keeps free on its file system (spool_min_free_bytes).",
            value=spool.reserve_bytes,
        )
        yield CounterMetricFamily(
            PREFIX + "_spool_disk_failures",
            "Operations on the spool's disk that failed: segment writes and fsyncs, reads, checkpoint "
            "writes (not ClickHouse).",
            value=spool.stats.disk_failures,
        )
        yield CounterMetricFamily(
            PREFIX + "_spool_disk_refusals",
            "Appends to the spool refused because its disk's free space was under spool_min_free_bytes.",
            value=spool.stats.disk_refusals,
        )
        if self.health is not None:
            yield GaugeMetricFamily(
                PREFIX + "_spool_disk_ok",
                "1 while the spool's disk is above its reserve and works, 0 while it is full or failing.",
                value=0 if self.health.spool_error else 1,
            )

    def _processors(self) -> Iterable[Metric]:
        chain = self.service.processors
        family = CounterMetricFamily(
            PREFIX + "_processor_activities",
            "Activities a processor rejected, dropped (acknowledged, not stored) or flagged (stored), by "
            "processor and reason (the rule, e.g. the action pattern).",
            labels=["processor", "reason", "outcome"],
        )
        s = chain.stats
        for outcome, counts in (("rejected", s.rejected), ("dropped", s.dropped), ("flagged", s.flagged)):
            for (processor, reason), n in sorted(counts.items()):
                family.add_metric([processor, reason, outcome], n)
        yield family

    def _plans_and_rejections(self) -> Iterable[Metric]:
        """Tracking plans in force, and the rejected activities kept (workers/processors/)."""
        service = self.service
        plans = next((p for p in service.processors.processors if isinstance(p, TrackingPlans)), None)
        if plans is not None:
            yield GaugeMetricFamily(
                PREFIX + "_tracking_plans",
                "Tenants with a tracking plan in force on this collector.",
                value=len(plans.plans),
            )
        suppressions = next((p for p in service.processors.processors if isinstance(p, Suppressions)), None)
        if suppressions is not None:
            suppressed = CounterMetricFamily(
                PREFIX + "_activities_suppressed",
                "Activities of erased or opted-out persons dropped at intake (answered as accepted, not "
                "stored), by tenant (activity-collector users suppress).",
                labels=["tenant"],
            )
            for tenant, n in sorted(suppressions.suppressed.items()):
                suppressed.add_metric([tenant], n)
            yield suppressed
        quotas = service.quotas
        if quotas is not None:
            refused = CounterMetricFamily(
                PREFIX + "_quota_refused_activities",
                "Activities refused (RESOURCE_EXHAUSTED, with a retry delay) because their tenant was over "
                "its quota (quota_rate, or its own: activity-collector quotas set), by tenant.",
                labels=["tenant"],
            )
            for tenant, n in sorted(quotas.stats.refused.items()):
                refused.add_metric([tenant], n)
            yield refused
            requests = CounterMetricFamily(
                PREFIX + "_quota_refused_requests",
                "Requests (and stream batches) refused over their tenant's quota, by tenant.",
                labels=["tenant"],
            )
            for tenant, n in sorted(quotas.stats.refused_requests.items()):
                requests.add_metric([tenant], n)
            yield requests
            hold = service.refusal_hold.stats
            yield CounterMetricFamily(
                PREFIX + "_quota_refusals_held",
                "Refusals over quota answered after a wait (their retry delay, at most "
                "quota_refusal_hold_ms).",
                value=hold.held,
            )
            yield CounterMetricFamily(
                PREFIX + "_quota_refusals_unheld",
                "Refusals over quota answered at once because quota_refusal_hold_max refusals were "
                "already held.",
                value=hold.overflowed,
            )
            yield CounterMetricFamily(
                PREFIX + "_quota_refusal_hold_seconds",
                "Seconds refusals over quota spent held before they were answered, summed.",
                value=hold.held_s,
            )
            yield GaugeMetricFamily(
                PREFIX + "_quota_refusals_holding",
                "Refusals over quota held now.",
                value=service.refusal_hold.holding,
            )
        recorder = service.rejections
        if recorder is None:
            return
        kept = CounterMetricFamily(
            PREFIX + "_rejections_kept",
            "Rejected activities by what became of their record in rejected_activities: kept (written), "
            "over_cap (past rejections_per_tenant_minute: counted only), lost (queue full or write failed).",
            labels=["tenant", "outcome"],
        )
        r = recorder.stats
        for outcome, counts in (("kept", r.kept), ("over_cap", r.over_cap), ("lost", r.lost)):
            for tenant, n in sorted(counts.items()):
                kept.add_metric([tenant, outcome], n)
        yield kept
        yield GaugeMetricFamily(
            PREFIX + "_rejections_queued",
            "Rejected activities waiting to be written to rejected_activities.",
            value=recorder.queued,
        )

    def _auth(self) -> Iterable[Metric]:
        if self.authenticator is None:
            return
        checks = CounterMetricFamily(
            PREFIX + "_auth_checks",
            "API key checks (calls and stream batches) by outcome: accepted, stale (accepted on a past "
            "decision: PostgreSQL did not answer), unauthenticated (missing or unknown key), "
            "permission_denied (revoked key, disabled tenant), unavailable (PostgreSQL did not answer); "
            "tenant where the key has one, else ''.",
            labels=["outcome", "tenant"],
        )
        # The refusals without a tenant are there from the start, so that rate() sees their first one.
        counts = {(UNAUTHENTICATED, ""): 0, (UNAVAILABLE, ""): 0, **self.authenticator.stats.outcomes}
        for (outcome, tenant), n in sorted(counts.items()):
            checks.add_metric([outcome, tenant], n)
        yield checks

    def _enrichment(self) -> Iterable[Metric]:
        enricher = self.pipeline.enricher
        if enricher is None:
            return
        e = enricher.stats
        activities = CounterMetricFamily(
            PREFIX + "_enrichment_activities",
            "Activities by enrichment (catalog, identity) and outcome: enriched, unknown (no catalogue "
            "entry, no identity link) or gap (PostgreSQL failed or was too slow: stored without it).",
            labels=["kind", "outcome"],
        )
        gaps = CounterMetricFamily(
            PREFIX + "_enrichment_gaps",
            "Activities stored without an enrichment they may have had, because PostgreSQL failed or "
            "was too slow (enrichment_timeout_ms).",
            labels=["kind"],
        )
        for kind in (CATALOG, IDENTITY):
            for outcome in ("enriched", "unknown", "gap"):
                activities.add_metric([kind, outcome], e.activities[(kind, outcome)])
            gaps.add_metric([kind], e.activities[(kind, "gap")])
        yield activities
        yield gaps
        lookups = CounterMetricFamily(
            PREFIX + "_enrichment_lookups",
            "PostgreSQL lookups of enrichment (one per kind and batch with cache misses), by outcome: ok, "
            "error (failed or timed out) or skipped (PostgreSQL left alone after a failure).",
            labels=["kind", "outcome"],
        )
        for kind in (CATALOG, IDENTITY):
            for outcome in ("ok", "error", "skipped"):
                lookups.add_metric([kind, outcome], e.lookups[(kind, outcome)])
        yield lookups
        yield CounterMetricFamily(
            PREFIX + "_user_agents_parsed",
            "Distinct user agent strings parsed (each is cached after).",
            value=e.user_agents_parsed,
        )
        yield CounterMetricFamily(
            PREFIX + "_identity_links_recorded",
            "Identity links written to PostgreSQL (new or changed).",
            value=e.links_recorded,
        )
        yield CounterMetricFamily(
            PREFIX + "_identity_link_write_failures",
            "Writes of identity links that failed; their links are kept and written with a later batch.",
            value=e.link_write_failures,
        )
        yield CounterMetricFamily(
            PREFIX + "_identity_links_dropped",
            f"Identity links given up because more than {MAX_PENDING_LINKS} waited for PostgreSQL.",
            value=e.links_dropped,
        )
        yield CounterMetricFamily(
            PREFIX + "_enrichment_failures",
            "Activities stored without any enrichment because enriching their batch failed unexpectedly.",
            value=self.pipeline.stats.enrichment_failures,
        )


class ErasedAtDrainCollector(Collector):
    """Spooled activities of erased persons dropped as the spool drained (`workers.privacy.marks`)."""

    def __init__(self, dropped_by_tenant: Mapping[str, int]) -> None:
        self.dropped_by_tenant = dropped_by_tenant

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            PREFIX + "_activities_erased_from_spool",
            "Spooled activities of erased persons, acknowledged before their erasure, dropped as the spool "
            "drained instead of being inserted, by tenant (docs/privacy.md#several-collectors).",
            labels=["tenant"],
        )
        for tenant, n in sorted(self.dropped_by_tenant.items()):
            family.add_metric([tenant], n)
        yield family


class ReadsCollector(Collector):
    """The read side's counters (`collector.doors.profile.ReadStats`), at scrape time."""

    def __init__(
        self, stats: ReadStats, model: ReadModel | None = None, lists: ItemLists | None = None
    ) -> None:
        self.stats = stats
        self.model = model
        self.lists = lists

    def collect(self) -> Iterable[Metric]:
        calls = CounterMetricFamily(
            PREFIX + "_reads",
            "ProfileService calls by call and outcome: ok, invalid_argument, unavailable (the store failed), "
            "refused (read_queue calls waiting already: RESOURCE_EXHAUSTED with a retry delay).",
            labels=["call", "outcome"],
        )
        for (call, outcome), n in sorted(self.stats.calls.items()):
            calls.add_metric([call, outcome], n)
        yield calls
        if self.model is not None:
            held = self.model.stats
            for name, value, text in (
                ("persons", held.persons, "People the read model holds."),
                (
                    "activities",
                    held.activities,
                    "Activities the read model holds (a person without any counts one).",
                ),
                (
                    "max_activities",
                    held.max_activities,
                    "The bound of the read model (read_model_max_activities).",
                ),
                (
                    "bytes",
                    held.bytes,
                    "Memory the read model's activities take, estimated (about 400 bytes each).",
                ),
            ):
                yield GaugeMetricFamily(PREFIX + f"_read_model_{name}", text, value=value)
            yield _counter(
                "_read_model_events",
                "What the read model did: hit (answered from memory), load (a person read from ClickHouse "
                "and held), passed (read from ClickHouse, not held: too large, suppressed, or not ready), "
                "evicted (dropped for the bound), too_large, relinked (dropped by a new login), forgotten "
                "(suppressed or erased), tail_pass, tail_row (rows added by the tail), tail_error.",
                "event",
                (
                    ("hit", held.hits),
                    ("load", held.loads),
                    ("passed", held.passed),
                    ("evicted", held.evicted),
                    ("too_large", held.too_large),
                    ("relinked", held.relinked),
                    ("forgotten", held.forgotten),
                    ("tail_pass", held.tail_passes),
                    ("tail_row", held.tail_rows),
                    ("tail_error", held.tail_errors),
                ),
            )
        if self.lists is not None:
            lists = self.lists.stats
            yield GaugeMetricFamily(
                PREFIX + "_read_lists", "Recommendation lists held in memory.", value=lists.entries
            )
            yield _counter(
                "_read_list_events",
                "Recommendation lists: hit, computed (on a call), refreshed (behind the calls), "
                "refresh_query (a query of the refreshes, for one list or several), refresh_error, "
                "asked_store (a call the lists could not answer).",
                "event",
                (
                    ("hit", lists.hits),
                    ("computed", lists.computed),
                    ("refreshed", lists.refreshed),
                    ("refresh_query", lists.refresh_queries),
                    ("refresh_error", lists.refresh_errors),
                    ("asked_store", lists.asked_store),
                ),
            )


class Metrics:
    """The collector's metrics registry: the stats collector, insert histograms, process metrics."""

    def __init__(
        self,
        settings: Settings,
        service: ActivityService,
        pipeline: Pipeline,
        health: HealthMonitor | None,
        connector: StoreConnector | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StatsCollector(settings, service, pipeline, health, connector, authenticator))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.insert_rows = Histogram(
            PREFIX + "_insert_rows",
            "Rows per committed insert.",
            buckets=INSERT_ROWS_BUCKETS,
            registry=self.registry,
        )
        self.insert_seconds = Histogram(
            PREFIX + "_insert_duration_seconds",
            "Time taken by committed inserts, from the call to ClickHouse to its answer.",
            buckets=INSERT_SECONDS_BUCKETS,
            registry=self.registry,
        )
        pipeline.on_insert = self.observe_insert
        if pipeline.spool is not None:
            pipeline.spool.on_sync = Histogram(
                PREFIX + "_spool_sync_seconds",
                "Time of each fsync that made spooled activities durable (one for every group of appends "
                "committed together): an acknowledgement with the spool on waits for one.",
                buckets=ANSWER_SECONDS_BUCKETS,
                registry=self.registry,
            ).observe
        service.on_answer = self._answers(
            "_request_duration_seconds",
            "Ingest requests answered OK (each batch of a stream), by call (TrackActivity, "
            "TrackActivities, StreamActivities, http): from the handler's start to its answer.",
        )
        self.observe_read = self._answers(
            "_read_duration_seconds",
            "ProfileService calls answered OK, by call (GetProfile, GetRecommendations): from the "
            "handler's start to its answer.",
        )
        self.loop_lag = LoopLag(
            Histogram(
                PREFIX + "_event_loop_lag_seconds",
                "How late the event loop ran a probe due every 100 ms: the wait, before any handler, of "
                "a request arriving then.",
                buckets=LOOP_LAG_BUCKETS,
                registry=self.registry,
            )
        )
        self.gc_pauses = GcPauses(
            Histogram(
                PREFIX + "_gc_pause_seconds",
                "Time the process stood still for each run of Python's cyclic garbage collector, by "
                "generation (2: a full collection).",
                ["generation"],
                buckets=GC_PAUSE_BUCKETS,
                registry=self.registry,
            )
        )

    def _answers(self, name: str, documentation: str) -> Callable[[str, float], None]:
        """A histogram of answers' durations by call, registered; returns what observes one, each
        call's child looked up once."""
        histogram = Histogram(
            PREFIX + name, documentation, ["call"], buckets=ANSWER_SECONDS_BUCKETS, registry=self.registry
        )
        children: dict[str, Histogram] = {}

        def observe(call: str, seconds: float) -> None:
            child = children.get(call)
            if child is None:
                child = children[call] = histogram.labels(call)
            child.observe(seconds)

        return observe

    def observe_insert(self, rows: int, seconds: float) -> None:
        self.insert_rows.observe(rows)
        self.insert_seconds.observe(seconds)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The registry's current values, encoded as the scraper's Accept header asks."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class MetricsServer(WebListener):
    """`/metrics` on `metrics_listen`."""

    def __init__(self, listen: str, metrics: Metrics) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        super().__init__(app, listen, "metrics_listen")
        self.metrics = metrics

    async def _handle(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    @property
    def url(self) -> str:
        return self.base_url + "/metrics"
