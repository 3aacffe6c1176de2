"""ClickHouse storage and migrations on the real embedded engine."""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from helpers import items, make_activity, wait_for

from core.proto.activity.v1 import activity_pb2 as pb
from workers.rows import Envelope, encode_rows, envelope
from workers.storage.analytics_schema import AGGREGATE, ROLLUP_MERGE_AGE_S, rollup_table_ddl
from workers.storage.clickhouse import ClickHouseStore, StoreError, classify
from workers.storage.migrations import COMPACT_PART_MAX_ROWS, MIGRATIONS, apply_migrations, latest_version
from workers.storage.refresher import refresh_aggregates
from workers.storage.schema import COLUMNS, ENRICHMENT_COLUMNS, SOURCE_COLUMNS
from workers.storage.session_rollups import EVERY_ROLLUP

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]


def test_migrations_are_recorded_and_applied_once(store: ClickHouseStore, database: str) -> None:
    versions = store.query(
        f"SELECT version FROM `{database}`.schema_migrations ORDER BY version", "TabSeparated"
    )
    assert versions.decode().split() == [str(m.version) for m in MIGRATIONS]
    with store._client() as client:
        assert apply_migrations(client, database) == []
    again = store.query(f"SELECT count() FROM `{database}`.schema_migrations", "TabSeparated")
    assert int(again) == latest_version()


def test_table_columns_are_the_documented_ones(store: ClickHouseStore) -> None:
    described = store.query(
        "SELECT name, type, comment FROM system.columns WHERE table = 'activities' "
        "AND database = currentDatabase() AND default_kind != 'EPHEMERAL' ORDER BY position",
        "TabSeparated",
    )
    got = [tuple(line.replace("\\'", "'").split("\t")) for line in described.decode().splitlines()]
    assert [(c.name, c.type) for c in COLUMNS] == [(n, t) for n, t, _ in got]
    assert all(comment for _, _, comment in got)
    documented = (ROOT / "docs" / "schema.md").read_text()
    for c in COLUMNS:
        assert f"| `{c.name}` | {c.type} |" in documented, f"docs/schema.md lacks column {c.name} ({c.type})"


def test_insert_counts_rows_and_the_rows_are_queryable(store: ClickHouseStore) -> None:
    activities = [make_activity(n) for n in range(250)]
    rows = encode_rows(items(activities, range(250)), "tenant-a", time.time_ns(), None)
    store.insert_rows(envelope([rows]), 250)
    result = store.query(
        "SELECT tenant_id, count(), uniqExact(id) FROM activities GROUP BY tenant_id", "TabSeparated"
    )
    assert result.decode().split() == ["tenant-a", "250", "250"]


def test_an_envelope_in_pieces_is_stored_like_its_bytes_and_can_be_sent_again(
    store: ClickHouseStore,
) -> None:
    chunks = [
        encode_rows(items([make_activity(n) for n in range(k, k + 40)], range(40)), "t", time.time_ns(), None)
        for k in (0, 40, 80)
    ]
    pieces = Envelope.of(chunks)
    assert pieces.join() == envelope(chunks)
    store.insert_rows(pieces, 120, token="in-pieces")
    # A retried insert iterates the same envelope again: same rows, same token, stored once.
    store.insert_rows(pieces, 120, token="in-pieces")
    assert store.query("SELECT count(), uniqExact(id) FROM activities", "TabSeparated") == b"120\t120\n"


def test_an_envelope_whose_rows_do_not_match_its_length_is_not_sent(store: ClickHouseStore) -> None:
    rows = encode_rows(items([make_activity(1)]), "t", time.time_ns(), None)
    lying = Envelope(rows.nbytes + 1, lambda: [b"".join(rows.pieces)])
    with pytest.raises(ValueError, match=r"not the \d+ announced"):
        store.insert_rows(lying, 1)
    assert store.query("SELECT count() FROM activities", "TabSeparated") == b"0\n"


def test_a_row_count_mismatch_is_an_error(store: ClickHouseStore) -> None:
    rows = encode_rows(items([make_activity(1), make_activity(2)], [0, 1]), "t", time.time_ns(), None)
    with pytest.raises(StoreError, match="wrote 2 rows of 3"):
        store.insert_rows(envelope([rows]), 3)


def test_bad_rows_are_a_permanent_error(store: ClickHouseStore) -> None:
    broken = make_activity(1, id="not-a-uuid-but-the-store-was-not-told")
    rows = encode_rows(items([broken], [0]), "t", time.time_ns(), None)
    with pytest.raises(StoreError) as error:
        store.insert_rows(envelope([rows]), 1)
    assert error.value.transient is False
    assert error.value.code == 376  # CANNOT_PARSE_UUID


def test_an_unreachable_server_is_a_transient_error(database: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError) as error:
        ClickHouseStore(f"http://127.0.0.1:{port}", database, connections=1)
    assert error.value.transient is True


def test_an_insert_repeated_with_its_token_is_stored_once(store: ClickHouseStore) -> None:
    rows = encode_rows(items([make_activity(n) for n in range(3)]), "t", time.time_ns(), None)
    payload = envelope([rows])
    for _ in range(3):
        store.insert_rows(payload, 3, token="the-same-insert")
    store.insert_rows(payload, 3, token="another-insert")
    # Counted without FINAL: the copies were dropped at insert, not collapsed by a merge later.
    assert store.query("SELECT count() FROM activities", "TabSeparated") == b"6\n"


def test_copies_within_one_insert_are_counted_once(store: ClickHouseStore) -> None:
    # Inserts do not collapse copies themselves (optimize_on_insert off): what counts exactly (FINAL,
    # distinct ids, the aggregates) sees one activity, and a merge keeps one row.
    store.command("SYSTEM STOP MERGES activities")
    twice = [make_activity(n) for n in range(3)] * 2
    store.insert_rows(envelope([encode_rows(items(twice), "t", time.time_ns(), None)]), 6, token="copies")
    assert store.query("SELECT count() FROM activities", "TabSeparated") == b"6\n"
    assert store.query("SELECT count() FROM activities FINAL", "TabSeparated") == b"3\n"
    counted = store.query("SELECT sum(activities) FROM activity_stats_hourly", "TabSeparated")
    assert counted == b"3\n"
    store.command("SYSTEM START MERGES activities")
    store.command("OPTIMIZE TABLE activities FINAL")
    assert store.query("SELECT count() FROM activities", "TabSeparated") == b"3\n"


def _insert(store: ClickHouseStore, activities: list[pb.Activity], tenant: str) -> None:
    rows = encode_rows(items(activities), tenant, time.time_ns(), None)
    store.insert_rows(envelope([rows]), len(activities))


def _parts(store: ClickHouseStore) -> list[str]:
    listed = store.query(
        "SELECT part_type, rows FROM system.parts WHERE table = 'activities' "
        "AND database = currentDatabase() AND active ORDER BY modification_time, name",
        "TabSeparated",
    )
    return listed.decode().splitlines()


def test_inserts_write_compact_parts_and_the_rows_alone_decide(store: ClickHouseStore) -> None:
    def insert(count: int, tenant: str, page_bytes: int) -> None:
        page = pb.Metadata(page_url="https://shop.example/" + "p" * page_bytes)
        _insert(store, [make_activity(n, metadata=page) for n in range(count)], tenant)

    store.command("SYSTEM STOP MERGES activities")
    # 12 MiB of rows: past ClickHouse's default threshold for wide parts (10 MiB), still compact.
    insert(1500, "t1", 8 * 1024)
    assert _parts(store) == ["Compact\t1500"]
    # The threshold is in rows: lowered below an insert, that insert's part is wide, however few bytes
    # it holds.
    assert COMPACT_PART_MAX_ROWS > 100_000
    store.command("ALTER TABLE activities MODIFY SETTING min_rows_for_wide_part = 200")
    insert(300, "t2", 10)
    assert _parts(store) == ["Compact\t1500", "Wide\t300"]


def test_version_5_makes_an_older_table_write_compact_parts(store: ClickHouseStore, database: str) -> None:
    store.command(
        "ALTER TABLE activities MODIFY SETTING min_rows_for_wide_part = 0, min_bytes_for_wide_part = 0"
    )
    store.command("ALTER TABLE schema_migrations DELETE WHERE version = 5 SETTINGS mutations_sync = 1")
    store.command("SYSTEM STOP MERGES activities")
    _insert(store, [make_activity(1)], "before")
    with store._client() as client:
        assert apply_migrations(client, database) == [5]
    _insert(store, [make_activity(1)], "after")
    assert _parts(store) == ["Wide\t1", "Compact\t1"]


def test_version_4_brings_an_older_table_up_to_date(store: ClickHouseStore, database: str) -> None:
    # Stored columns in order; insert-only (EPHEMERAL) columns, never read, in any order.
    columns = (
        "SELECT name, type, default_kind, default_expression FROM system.columns "
        "WHERE table = 'activities' AND database = currentDatabase() "
        "ORDER BY default_kind = 'EPHEMERAL', if(default_kind = 'EPHEMERAL', name, ''), position"
    )
    fresh = store.query(columns, "TabSeparated")
    # The table as the releases before enrichment created it: no enrichment columns, device_type
    # only from the client.
    ephemeral = ["ua_device_type", "catalog_name", "catalog_category_path", "catalog_brand"]
    ephemeral += ["catalog_list_price", "catalog_currency", "catalog_attributes"]
    # The read side's views (version 12) name enrichment columns: a table that old had none of them.
    store.command("DROP VIEW activities_by_person_mv")
    store.command(
        "ALTER TABLE activities "
        + ", ".join(f"DROP COLUMN `{name}`" for name in ENRICHMENT_COLUMNS)
        + ", MODIFY COLUMN device_type LowCardinality(String) DEFAULT metadata_device_type"
    )
    store.command("ALTER TABLE activities " + ", ".join(f"DROP COLUMN `{name}`" for name in ephemeral))
    store.command("ALTER TABLE schema_migrations DELETE WHERE version = 4 SETTINGS mutations_sync = 1")
    assert store.query(columns, "TabSeparated") != fresh
    with store._client() as client:
        assert apply_migrations(client, database) == [4]
    assert store.query(columns, "TabSeparated") == fresh


def test_version_9_adds_the_source_columns_to_an_older_table(store: ClickHouseStore, database: str) -> None:
    columns = (
        "SELECT name, type, position FROM system.columns "
        "WHERE table = 'activities' AND database = currentDatabase() ORDER BY position"
    )
    fresh = store.query(columns, "TabSeparated")
    store.command("ALTER TABLE activities " + ", ".join(f"DROP COLUMN `{name}`" for name in SOURCE_COLUMNS))
    store.command("ALTER TABLE schema_migrations DELETE WHERE version = 9 SETTINGS mutations_sync = 1")
    assert b"source_position" not in store.query(columns, "TabSeparated")
    with store._client() as client:
        assert apply_migrations(client, database) == [9]
    assert store.query(columns, "TabSeparated") == fresh


def test_a_full_disk_is_a_transient_error() -> None:
    # Inserts can succeed again once space is freed: retried, never dead-lettered.
    no_space = OSError(errno.ENOSPC, "No space left on device")
    assert classify(no_space).transient is True
    full = DatabaseError("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space")
    full.code = 243  # type: ignore[attr-defined]
    assert classify(full).transient is True and classify(full).data is False
    assert classify(OSError(errno.EACCES, "Permission denied")).transient is False


def test_version_16_sorts_the_top_targets_rollup_by_target_and_keeps_its_rows(
    store: ClickHouseStore, database: str
) -> None:
    sorting = (
        "SELECT sorting_key FROM system.tables WHERE database = currentDatabase() "
        "AND name = 'target_stats_daily_rollup'"
    )
    fresh = store.query(sorting, "TabSeparated")
    assert fresh.startswith(b"tenant_id, action, is_bot, target_type, target_id, day")
    # The table as versions 11 to 15 created it (by day first), holding a refresh's rows.
    store.command("DROP TABLE target_stats_daily_rollup SYNC")
    old = rollup_table_ddl(database, AGGREGATE["target_stats_daily"]).replace(
        "target_type, target_id, day, currency", "day, target_type, target_id, currency"
    )
    store.command(old)
    _insert(store, [make_activity(n) for n in range(5)], "shop")
    refresh_aggregates(store.command, database, margin_s=0)
    rows = (
        "SELECT * EXCEPT users, hex(users) FROM target_stats_daily_rollup "
        "ORDER BY tenant_id, action, target_type, target_id, day"
    )
    before = store.query(rows, "TabSeparated")
    assert before.count(b"\n") == 5
    assert store.query(sorting, "TabSeparated") != fresh
    store.command("ALTER TABLE schema_migrations DELETE WHERE version = 16 SETTINGS mutations_sync = 1")
    with store._client() as client:
        assert apply_migrations(client, database) == [16]
    assert store.query(sorting, "TabSeparated") == fresh
    assert store.query(rows, "TabSeparated") == before
    tables = store.query("SHOW TABLES LIKE 'target_stats_daily_rollup%'", "TabSeparated")
    assert tables == b"target_stats_daily_rollup\n"


def _rollup_settings(store: ClickHouseStore) -> dict[str, str]:
    listed = store.query(
        "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() "
        "AND name LIKE '%\\\\_rollup' ORDER BY name",
        "TabSeparated",
    )
    return dict(line.split("\t", 1) for line in listed.decode().splitlines())


def test_version_17_merges_every_rollup_partition_once_its_parts_are_old(
    store: ClickHouseStore, database: str
) -> None:
    every = {rollup.rollup for rollup in EVERY_ROLLUP}

    def merged_when_old() -> set[str]:
        return {
            name
            for name, engine in _rollup_settings(store).items()
            if f"min_age_to_force_merge_seconds = {ROLLUP_MERGE_AGE_S}" in engine
            and "min_age_to_force_merge_on_partition_only = 1" in engine
        }

    assert set(_rollup_settings(store)) == every
    assert merged_when_old() == every
    # The tables as versions 11 to 16 left them: without the settings.
    for name in every:
        store.command(
            f"ALTER TABLE `{name}` RESET SETTING min_age_to_force_merge_seconds, "
            "min_age_to_force_merge_on_partition_only"
        )
    assert merged_when_old() == set()
    store.command("ALTER TABLE schema_migrations DELETE WHERE version = 17 SETTINGS mutations_sync = 1")
    with store._client() as client:
        assert apply_migrations(client, database) == [17]
    assert merged_when_old() == every


async def test_a_rollup_partition_refreshed_twice_becomes_one_part(store: ClickHouseStore) -> None:
    # The age lowered so that the test need not wait minutes; the rest is the rollup as migrated.
    store.command("ALTER TABLE target_stats_daily_rollup MODIFY SETTING min_age_to_force_merge_seconds = 1")
    store.command("SYSTEM STOP MERGES target_stats_daily_rollup")
    for first in (0, 5):
        _insert(store, [make_activity(n) for n in range(first, first + 5)], "shop")
        refresh_aggregates(store.command, store.database, margin_s=0)
    parts = (
        "SELECT count() FROM system.parts WHERE database = currentDatabase() "
        "AND table = 'target_stats_daily_rollup' AND active"
    )
    assert int(store.query(parts, "TabSeparated")) >= 2
    store.command("SYSTEM START MERGES target_stats_daily_rollup")
    await wait_for(
        lambda: int(store.query(parts, "TabSeparated")) == 1,
        lambda: f"one part; {store.query(parts, 'TabSeparated').decode().strip()} now",
        timeout=45,
    )
    final = store.query("SELECT sum(activities) FROM target_stats_daily_rollup FINAL", "TabSeparated")
    assert int(final) == 10
