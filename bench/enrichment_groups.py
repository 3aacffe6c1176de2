"""What enrichment costs per activity, by how many activities the pipeline enriches together.

    .venv/bin/python -m bench.enrichment_groups [--dsn postgresql://...] [--activities 4000] [--repeat 3]

The pipeline's enrich worker takes every request waiting as one group: a few single-activity calls
under `TrackActivity` load, one batch or more under `TrackActivities`. Each group costs its cache
lookups, and its PostgreSQL round trips for the cache misses (targets, identity links, new links to
record) whatever its size, so small groups pay them for few activities. This probe runs the collector's
`Enricher` over the benchmark's activities (`bench.workload`: targets drawn from 2 million products,
so that the caches miss the way they do in the benchmark) in groups of 1, 4, 100 and 500, against a
real PostgreSQL (the embedded one unless `--dsn`), for a tenant with no catalogue (as the benchmark's,
a fresh data directory) and for one whose catalogue holds half of the targets, with a baseline
measured in the same run: user agents only, no PostgreSQL. Printed per activity: this
process' CPU, PostgreSQL's CPU (every `postgres` process of the machine), wall time, and PostgreSQL
queries per group. Repeats are interleaved over groups and modes; figures are medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench.procstat import group_cpu_delta, group_cpu_s, pids_named
from bench.workload import make_activities
from core.fastpath import EnrichmentKeys
from workers.enrichment import useragent
from workers.enrichment.catalog import CatalogEntry, CatalogStore, TargetInfo
from workers.enrichment.enricher import Enricher, activity_keys
from workers.enrichment.identity import IdentityStore, LinkKey
from workers.storage.postgres import Postgres

GROUPS = (1, 4, 100, 500)


def postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of every process named `postgres` (the server and its backends)."""
    return group_cpu_s(pids_named("postgres"))


class CountingCatalog(CatalogStore):
    """The real catalogue store, counting its queries."""

    queries = 0

    async def lookup(self, tenant: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], TargetInfo]:
        self.queries += 1
        return await super().lookup(tenant, keys)

    async def has_entries(self, tenant: str) -> bool:
        self.queries += 1
        return await super().has_entries(tenant)


class CountingIdentity(IdentityStore):
    """The real identity store, counting its queries."""

    queries = 0

    async def lookup(self, tenant: str, keys: Sequence[LinkKey]) -> dict[LinkKey, str]:
        self.queries += 1
        return await super().lookup(tenant, keys)

    async def record(self, tenant: str, links: Iterable[tuple[str, str, str]]) -> int:
        self.queries += 1
        return await super().record(tenant, links)


MODES = (
    ("user agents only", False, False),
    ("identity, no catalogue", True, False),
    ("catalogue + identity", True, True),
)


async def measure(
    postgres: Postgres | None, keys: Sequence[EnrichmentKeys], size: int, tenant: str, catalogue: bool
) -> dict[str, float]:
    if postgres is not None and catalogue:
        # Half of the targets known to the catalogue, as a shop that imported only part of it.
        targets = sorted({(k[0], k[1]) for k in keys})[::2]
        entries = [
            CatalogEntry(t, i, TargetInfo(f"name of {i}", ("Shoes",), "Acme", 1999, "EUR"))
            for t, i in targets
        ]
        await CatalogStore(postgres.pool).upsert(tenant, entries)
    catalog = CountingCatalog(postgres.pool) if postgres else None
    identity = CountingIdentity(postgres.pool) if postgres else None
    # What a lookup costs is measured, not the collector's give-up time: a lookup slowed by a busy
    # machine must finish, not be skipped.
    enricher = Enricher(catalog, identity, timeout_s=30.0)
    groups = [list(keys[at : at + size]) for at in range(0, len(keys), size)]
    pg0, cpu0, wall0 = postgres_cpu(), time.process_time(), time.perf_counter()
    for group in groups:
        await enricher.enrich(tenant, group)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    pg = group_cpu_delta(pg0, postgres_cpu())
    if any(outcome != "ok" for _, outcome in enricher.stats.lookups):
        raise RuntimeError(f"PostgreSQL lookups failed or were skipped: {dict(enricher.stats.lookups)}")
    queries = (catalog.queries if catalog else 0) + (identity.queries if identity else 0)
    n = len(keys)
    return {
        "cpu_us": cpu / n * 1e6,
        "postgres_us": pg / n * 1e6,
        "wall_us": wall / n * 1e6,
        "queries_per_group": queries / len(groups),
    }


async def run(dsn: str, activities: int, repeat: int) -> None:
    useragent.prepare()
    keys = [activity_keys(a) for a in make_activities(activities, seed=7)]
    with tempfile.TemporaryDirectory(prefix="enrichment-groups-") as tmp:
        async with Postgres(dsn, Path(tmp), pool_size=4) as postgres:
            print(f"PostgreSQL: {postgres.describe()}; {activities} activities per measurement\n")
            results: dict[tuple[str, int], list[dict[str, float]]] = {}
            for rep in range(repeat):
                for size in GROUPS:
                    for mode, uses_postgres, catalogue in MODES:
                        # A tenant of its own: links recorded by an earlier measurement are not found.
                        tenant = f"probe-{rep}-{size}-{time.time_ns()}"
                        pg = postgres if uses_postgres else None
                        results.setdefault((mode, size), []).append(
                            await measure(pg, keys, size, tenant, catalogue)
                        )
    header = (
        f"{'group':>5}  {'mode':<24} {'CPU us/act':>10} {'PostgreSQL us/act':>17} "
        f"{'wall us/act':>11} {'queries/group':>13}"
    )
    print(header)
    print("-" * len(header))
    for size in GROUPS:
        for mode, _, _ in MODES:
            runs = results[(mode, size)]

            def med(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            print(
                f"{size:>5}  {mode:<24} {med('cpu_us'):>10.1f} {med('postgres_us'):>17.1f} "
                f"{med('wall_us'):>11.1f} {med('queries_per_group'):>13.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.enrichment_groups", description=__doc__)
    parser.add_argument("--dsn", default="", help="PostgreSQL DSN (default: an embedded PostgreSQL)")
    parser.add_argument("--activities", type=int, default=4000, help="activities per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats (median)")
    args = parser.parse_args(argv)
    if args.activities < 500 or args.repeat < 1:
        parser.error("--activities must be at least 500 and --repeat at least 1")
    asyncio.run(run(args.dsn, args.activities, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
