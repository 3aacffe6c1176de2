"""The ClickHouse row format: ROW_SCHEMA matches activity.v1.Activity, the table takes every insert
column, and encode_rows frames enriched activities that parse back as rows."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import decoder, encoder
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_tools import protoc
from helpers import items, make_activity

from core.proto.activity.v1 import activity_pb2 as pb
from core.wire import iter_fields, varint
from workers.rows import batch_suffix, encode_rows, envelope
from workers.storage import schema
from workers.storage.schema import (
    CLOCK_SKEW_FIELD,
    INSERT_COLUMNS,
    RECEIVED_AT_FIELD,
    ROW_MESSAGE,
    ROW_SCHEMA,
    SENT_AT_FIELD,
    TENANT_FIELD,
    activities_table_ddl,
)

NS = 1_000_000_000
RECEIVED_NS = 1_750_000_000 * NS + 123_456_789
SENT_NS = 1_749_996_400 * NS + 5_000_000
EXTRA_FIELDS = {
    "tenant_id": (TENANT_FIELD, FieldDescriptor.TYPE_STRING),
    "received_at": (RECEIVED_AT_FIELD, FieldDescriptor.TYPE_MESSAGE),
    "sent_at": (SENT_AT_FIELD, FieldDescriptor.TYPE_MESSAGE),
    "clock_skew_ms": (CLOCK_SKEW_FIELD, FieldDescriptor.TYPE_INT64),
}
ENRICHMENT_FIELDS = {
    "ua_device_type": (schema.UA_DEVICE_TYPE_FIELD, FieldDescriptor.TYPE_STRING),
    "os": (schema.OS_FIELD, FieldDescriptor.TYPE_STRING),
    "os_version": (schema.OS_VERSION_FIELD, FieldDescriptor.TYPE_STRING),
    "browser": (schema.BROWSER_FIELD, FieldDescriptor.TYPE_STRING),
    "browser_version": (schema.BROWSER_VERSION_FIELD, FieldDescriptor.TYPE_STRING),
    "is_bot": (schema.IS_BOT_FIELD, FieldDescriptor.TYPE_BOOL),
    "catalog_name": (schema.TARGET_NAME_FIELD, FieldDescriptor.TYPE_STRING),
    "catalog_category_path": (schema.TARGET_CATEGORY_PATH_FIELD, FieldDescriptor.TYPE_STRING),
    "catalog_brand": (schema.TARGET_BRAND_FIELD, FieldDescriptor.TYPE_STRING),
    "catalog_list_price": (schema.TARGET_LIST_PRICE_FIELD, FieldDescriptor.TYPE_INT64),
    "catalog_currency": (schema.TARGET_LIST_CURRENCY_FIELD, FieldDescriptor.TYPE_STRING),
    "catalog_attributes": (schema.TARGET_CATALOG_ATTRIBUTES_FIELD, FieldDescriptor.TYPE_MESSAGE),
    "resolved_user_id": (schema.RESOLVED_USER_ID_FIELD, FieldDescriptor.TYPE_STRING),
    # Not enrichment: the rules of the tenant's tracking plan a flagged activity broke.
    "plan_violations": (schema.PLAN_VIOLATIONS_FIELD, FieldDescriptor.TYPE_STRING),
}


# -- ROW_SCHEMA ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def row_descriptor(tmp_path_factory: pytest.TempPathFactory) -> Descriptor:
    """ROW_SCHEMA compiled by protoc and loaded into a pool of its own."""
    directory: Path = tmp_path_factory.mktemp("row_schema")
    (directory / "row.proto").write_text(ROW_SCHEMA)
    out = directory / "row.pb"
    status = protoc.main(["protoc", f"-I{directory}", f"--descriptor_set_out={out}", "row.proto"])
    assert status == 0, "protoc could not compile ROW_SCHEMA"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool.FindMessageTypeByName(ROW_MESSAGE)


@pytest.fixture(scope="module")
def row_class(row_descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(row_descriptor)


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _assert_same_fields(expected: Descriptor, actual: Descriptor, path: str, extra: set[str]) -> None:
    assert {f.name for f in actual.fields} == {f.name for f in expected.fields} | extra, path
    for f in expected.fields:
        r = actual.fields_by_name[f.name]
        where = f"{path}{f.name}"
        assert r.number == f.number, where
        assert r.type == f.type, where
        assert r.is_repeated == f.is_repeated, where
        assert r.has_presence == f.has_presence, where
        assert _is_map(r) == _is_map(f), where
        if f.message_type is not None:
            assert r.message_type.name == f.message_type.name, where
            _assert_same_fields(f.message_type, r.message_type, where + ".", set())


def test_row_schema_declares_every_activity_field_with_its_number_and_type(
    row_descriptor: Descriptor,
) -> None:
    _assert_same_fields(pb.Activity.DESCRIPTOR, row_descriptor, "", {*EXTRA_FIELDS, *ENRICHMENT_FIELDS})


def test_row_schema_covers_the_nested_messages_by_name(row_descriptor: Descriptor) -> None:
    # Spelled out so that a bug in the recursive walk above cannot hide a missing nested field.
    target = row_descriptor.fields_by_name["target"].message_type
    user = row_descriptor.fields_by_name["user"].message_type
    metadata = row_descriptor.fields_by_name["metadata"].message_type
    occurred_at = row_descriptor.fields_by_name["occurred_at"].message_type
    assert {f.name: f.number for f in target.fields} == {
        f.name: f.number for f in pb.Target.DESCRIPTOR.fields
    }
    assert {f.name: f.number for f in user.fields} == {f.name: f.number for f in pb.User.DESCRIPTOR.fields}
    assert {f.name: f.number for f in metadata.fields} == {
        f.name: f.number for f in pb.Metadata.DESCRIPTOR.fields
    }
    assert {f.name: f.number for f in occurred_at.fields} == {"seconds": 1, "nanos": 2}
    assert metadata.fields_by_name["quantity"].has_presence
    assert metadata.fields_by_name["price"].has_presence
    assert not metadata.fields_by_name["currency"].has_presence


def test_row_schema_timestamp_has_the_wire_form_of_google_protobuf_timestamp(
    row_descriptor: Descriptor,
) -> None:
    for name in ("occurred_at", "received_at", "sent_at"):
        local = row_descriptor.fields_by_name[name].message_type
        _assert_same_fields(Timestamp.DESCRIPTOR, local, f"{name}.", set())


def test_row_schema_adds_the_batch_fields(row_descriptor: Descriptor) -> None:
    for name, (number, type_) in EXTRA_FIELDS.items():
        f = row_descriptor.fields_by_name[name]
        assert (f.number, f.type, f.is_repeated) == (number, type_, False), name
    activity_numbers = {f.number for f in pb.Activity.DESCRIPTOR.fields}
    assert not activity_numbers & {number for number, _ in EXTRA_FIELDS.values()}


def test_row_schema_adds_the_enrichment_fields(row_descriptor: Descriptor) -> None:
    repeated = {"catalog_category_path", "catalog_attributes", "plan_violations"}
    for name, (number, type_) in ENRICHMENT_FIELDS.items():
        f = row_descriptor.fields_by_name[name]
        assert (f.number, f.type, f.is_repeated) == (number, type_, name in repeated), name
    numbers = [n for n, _ in (*EXTRA_FIELDS.values(), *ENRICHMENT_FIELDS.values())]
    assert len(set(numbers)) == len(numbers)
    assert not {f.number for f in pb.Activity.DESCRIPTOR.fields} & set(numbers)


def test_a_serialized_activity_parses_as_a_row_with_the_same_values(row_class: type[Message]) -> None:
    activity = make_activity(
        3,
        source_id="resp-1",
        segments=["vip", "returning"],
        metadata=pb.Metadata(
            locale="en-US",
            device_type="mobile",
            quantity=2,
            price=0,
            currency="EUR",
            order_id="o-1",
            page_url="https://shop.example/",
            referrer="https://search.example/",
            user_agent="Mozilla/5.0",
            query="red shirt",
            custom={"ab": "b"},
        ),
    )
    activity.user.identities["crm"] = "C-1"
    activity.occurred_at.FromNanoseconds(RECEIVED_NS - 60 * NS)
    row: Any = row_class.FromString(activity.SerializeToString())
    as_row = json_format.MessageToDict(row)
    as_activity = json_format.MessageToDict(activity)
    # json_format knows google.protobuf.Timestamp but not the row's local Timestamp: compare apart.
    assert as_row.pop("occurredAt") == {"seconds": str(activity.occurred_at.seconds), "nanos": 123_456_789}
    as_activity.pop("occurredAt")
    assert as_row == as_activity
    assert pb.Activity.FromString(row.SerializeToString()) == activity
    # price=0 is set (optional field): the row must see it as set too.
    assert row.metadata.HasField("price")


# -- the table -------------------------------------------------------------------------------------


def _ddl_columns(ddl: str) -> tuple[dict[str, str], dict[str, str]]:
    """(stored columns, EPHEMERAL columns) of a CREATE TABLE statement, by name -> definition."""
    stored: dict[str, str] = {}
    ephemeral: dict[str, str] = {}
    for line in ddl.splitlines():
        match = re.fullmatch(r"  `(\w+)` (.+?),?", line)
        if match is None:
            continue
        name, definition = match.groups()
        assert name not in stored and name not in ephemeral, f"column {name} declared twice"
        (ephemeral if definition.endswith(" EPHEMERAL") else stored)[name] = definition
    return stored, ephemeral


def _row_leaves(d: Descriptor, prefix: str = "") -> set[str]:
    """Field paths of the row as ClickHouse names them: nested fields joined with '_'."""
    leaves: set[str] = set()
    for f in d.fields:
        if f.message_type is not None and not _is_map(f):
            leaves |= _row_leaves(f.message_type, f"{prefix}{f.name}_")
        else:
            leaves.add(prefix + f.name)
    return leaves


def test_ddl_names_the_database_and_table() -> None:
    assert activities_table_ddl("db").startswith("CREATE TABLE IF NOT EXISTS `db`.`activities` (")
    assert activities_table_ddl("db", "t2").startswith("CREATE TABLE IF NOT EXISTS `db`.`t2` (")


def test_insert_columns_are_columns_or_ephemeral_columns_of_the_table() -> None:
    stored, ephemeral = _ddl_columns(activities_table_ddl("db"))
    assert stored and ephemeral
    assert len(INSERT_COLUMNS) == len(set(INSERT_COLUMNS))
    missing = [c for c in INSERT_COLUMNS if c not in stored and c not in ephemeral]
    assert missing == []


def test_every_ephemeral_column_is_inserted() -> None:
    # An EPHEMERAL column that no insert names would leave the columns computed from it at defaults.
    _, ephemeral = _ddl_columns(activities_table_ddl("db"))
    assert set(ephemeral) <= set(INSERT_COLUMNS)


def test_inserted_stored_columns_have_no_default() -> None:
    stored, _ = _ddl_columns(activities_table_ddl("db"))
    for name in INSERT_COLUMNS:
        if name in stored:
            assert " DEFAULT " not in stored[name], name


def test_insert_columns_are_exactly_the_fields_of_a_row(row_descriptor: Descriptor) -> None:
    leaves = _row_leaves(row_descriptor)
    assert set(INSERT_COLUMNS) <= leaves, "an insert column that no row field fills"
    assert leaves <= set(INSERT_COLUMNS), "a row field that no column stores"


# -- varint ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**32, 2**63 - 1])
def test_varint_round_trips_through_protobuf(value: int) -> None:
    encoded = varint(value)
    assert decoder._DecodeVarint(encoded, 0) == (value, len(encoded))
    assert encoded == encoder._VarintBytes(value)


@pytest.mark.parametrize("value", [-1, -2, -(2**63)])
def test_negative_varint_is_a_ten_byte_int64(value: int) -> None:
    encoded = varint(value)
    assert len(encoded) == 10
    assert decoder._DecodeSignedVarint(encoded, 0) == (value, 10)
    assert decoder._DecodeVarint(encoded, 0) == (value + 2**64, 10)


@pytest.mark.parametrize(("value", "size"), [(0, 1), (127, 1), (128, 2), (16383, 2), (16384, 3)])
def test_varint_sizes(value: int, size: int) -> None:
    assert len(varint(value)) == size


# -- encode_rows and envelope ----------------------------------------------------------------------


def _payload(encoded: bytes) -> bytes:
    _, pos = decoder._DecodeVarint(encoded, 0)
    _, pos = decoder._DecodeVarint(encoded, pos)
    return encoded[pos:]


def _rows(data: bytes) -> list[bytes]:
    """The row messages of a ProtobufList envelope: its length, then field 1 once per row."""
    length, pos = decoder._DecodeVarint(data, 0)
    assert length == len(data) - pos
    rows = []
    for number, wire_type, encoded in iter_fields(data[pos:]):
        assert (number, wire_type) == (1, 2)
        rows.append(_payload(encoded))
    return rows


def _activity(row: bytes) -> pb.Activity:
    activity = pb.Activity.FromString(row)
    activity.DiscardUnknownFields()
    return activity


def test_encode_rows_assigns_ids_to_activities_without_one() -> None:
    activities = [make_activity(0, id=""), make_activity(1), make_activity(2, id="")]
    given = activities[1].id
    rows = encode_rows(items(activities, [0, 1, 2]), "t1", RECEIVED_NS, None)
    assert set(rows.assigned_ids) == {0, 2}
    for index, assigned in rows.assigned_ids.items():
        assert str(uuid.UUID(assigned)) == assigned
        assert uuid.UUID(assigned).version == 4
        assert activities[index].id == assigned
    assert rows.assigned_ids[0] != rows.assigned_ids[2]
    assert activities[1].id == given
    ids = [_activity(r).id for r in _rows(envelope([rows]))]
    assert ids == [rows.assigned_ids[0], given, rows.assigned_ids[2]]


def test_encode_rows_encodes_only_the_given_indexes_in_their_order() -> None:
    activities = [make_activity(n, id="") for n in range(4)]
    rows = encode_rows(items(activities, [3, 1]), "t1", RECEIVED_NS, None)
    assert rows.count == 2
    assert set(rows.assigned_ids) == {1, 3}
    assert activities[0].id == "" and activities[2].id == ""
    parsed = [_activity(r) for r in _rows(envelope([rows]))]
    assert [a.target.id for a in parsed] == ["sku-3", "sku-1"]


def test_encode_rows_normalises_action_locale_currency_and_device_type() -> None:
    activity = make_activity(
        0,
        action="Add-To-Cart",
        metadata=pb.Metadata(locale="zh_hant_tw", currency="eur", price=1999, device_type="Smart TV"),
    )
    rows = encode_rows(items([activity], [0]), "t1", RECEIVED_NS, None)
    (row,) = _rows(envelope([rows]))
    parsed = _activity(row)
    assert parsed.action == "add_to_cart"
    assert parsed.metadata.locale == "zh-Hant-TW"
    assert parsed.metadata.currency == "EUR"
    assert parsed.metadata.device_type == "smart_tv"
    assert parsed.metadata.price == 1999
    assert parsed == activity


def test_encode_rows_keeps_every_other_field() -> None:
    activity = make_activity(5, source_id="resp-9", segments=["vip"])
    activity.user.identities["crm"] = "C-5"
    activity.metadata.custom["k"] = "v"
    activity.occurred_at.FromNanoseconds(RECEIVED_NS - NS)
    original = pb.Activity()
    original.CopyFrom(activity)
    (row,) = _rows(envelope([encode_rows(items([activity], [0]), "t1", RECEIVED_NS, SENT_NS)]))
    assert _activity(row) == original


def test_encode_rows_adds_no_metadata_to_an_activity_without_it() -> None:
    activity = make_activity(0)
    activity.ClearField("metadata")
    (row,) = _rows(envelope([encode_rows(items([activity], [0]), "t1", RECEIVED_NS, None)]))
    assert not _activity(row).HasField("metadata")


def test_rows_carry_the_batch_fields(row_class: type[Message]) -> None:
    skew_ns = -3600 * NS
    rows = encode_rows(
        items([make_activity(0), make_activity(1)], [0, 1]), "tenant-a", RECEIVED_NS, SENT_NS, skew_ns
    )
    for data in _rows(envelope([rows])):
        row: Any = row_class.FromString(data)
        assert row.tenant_id == "tenant-a"
        assert (row.received_at.seconds, row.received_at.nanos) == divmod(RECEIVED_NS, NS)
        assert (row.sent_at.seconds, row.sent_at.nanos) == divmod(SENT_NS, NS)
        assert row.clock_skew_ms == -3_600_000


def test_rows_carry_the_plan_rules_a_flagged_activity_broke(row_class: type[Message]) -> None:
    flags = {1: ("required:metadata.order_id", "unknown_action")}
    extras = {0: b"", 1: b""}
    rows = encode_rows(
        items([make_activity(0), make_activity(1)]), "t", RECEIVED_NS, None, item_extras=extras, flags=flags
    )
    parsed: list[Any] = [row_class.FromString(data) for data in _rows(envelope([rows]))]
    assert [list(row.plan_violations) for row in parsed] == [
        [],
        ["required:metadata.order_id", "unknown_action"],
    ]
    assert parsed[1].tenant_id == "t"


def test_rows_without_sent_at_or_skew_leave_those_fields_unset(row_class: type[Message]) -> None:
    rows = encode_rows(items([make_activity(0)], [0]), "t", 1_750_000_000 * NS, None)
    (data,) = _rows(envelope([rows]))
    row: Any = row_class.FromString(data)
    assert row.tenant_id == "t"
    assert row.received_at.seconds == 1_750_000_000
    assert row.received_at.nanos == 0
    assert not row.HasField("sent_at")
    assert row.clock_skew_ms == 0
    assert data.endswith(batch_suffix("t", 1_750_000_000 * NS, None, 0))


def test_batch_suffix_parses_as_the_row_fields(row_class: type[Message]) -> None:
    row: Any = row_class.FromString(batch_suffix("t", RECEIVED_NS, SENT_NS, 2500 * 1_000_000))
    assert row.tenant_id == "t"
    assert (row.received_at.seconds, row.received_at.nanos) == divmod(RECEIVED_NS, NS)
    assert (row.sent_at.seconds, row.sent_at.nanos) == divmod(SENT_NS, NS)
    assert row.clock_skew_ms == 2500
    assert not row.id and not row.HasField("target")


def test_nbytes_and_envelope_length_count_every_byte() -> None:
    first = encode_rows(items([make_activity(n) for n in range(3)], [0, 1, 2]), "t", RECEIVED_NS, SENT_NS)
    second = encode_rows(
        items([make_activity(n) for n in range(3, 5)], [0, 1]), "t", RECEIVED_NS, None, NS * 5
    )
    assert first.nbytes == len(b"".join(first.pieces))
    assert second.nbytes == len(b"".join(second.pieces))
    data = envelope([first, second])
    assert data == varint(first.nbytes + second.nbytes) + b"".join(first.pieces + second.pieces)
    assert [_activity(r).target.id for r in _rows(data)] == [f"sku-{n}" for n in range(5)]


def test_envelope_of_nothing_is_an_empty_list() -> None:
    rows = encode_rows(items([make_activity(0)], []), "t", RECEIVED_NS, None)
    assert rows.count == 0
    assert rows.nbytes == 0
    assert envelope([rows]) == b"\x00"
    assert envelope([]) == b"\x00"


@pytest.mark.parametrize("row_size", [16382, 16383, 16384, 16385, 40_000])
def test_rows_around_the_prefix_size_boundaries_parse(row_size: int, row_class: type[Message]) -> None:
    suffix_len = len(batch_suffix("t", RECEIVED_NS, SENT_NS, 0))

    def activity(url_chars: int) -> pb.Activity:
        a = make_activity(0)
        a.metadata.page_url = "u" * url_chars
        return a

    # Find the page_url length that makes the framed row (activity + suffix) exactly row_size bytes.
    url_chars = max(0, row_size - suffix_len - activity(0).ByteSize())
    while activity(url_chars).ByteSize() + suffix_len < row_size:
        url_chars += 1
    while url_chars and activity(url_chars).ByteSize() + suffix_len > row_size:
        url_chars -= 1
    assert activity(url_chars).ByteSize() + suffix_len == row_size

    source = activity(url_chars)
    rows = encode_rows(items([source], [0]), "t", RECEIVED_NS, SENT_NS)
    data = envelope([rows])
    assert rows.nbytes == len(varint(row_size)) + 1 + row_size
    (row_bytes,) = _rows(data)
    assert len(row_bytes) == row_size
    row: Any = row_class.FromString(row_bytes)
    assert row.metadata.page_url == source.metadata.page_url
    assert row.tenant_id == "t"
