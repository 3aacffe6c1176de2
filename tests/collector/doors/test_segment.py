"""The Segment door against a live collector: Segment's paths, bodies, keys, limits and CORS, and what
the store holds afterwards."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import shlex
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from collector.cli.main import main
from collector.doors.segment import MAX_BATCH_BYTES, MAX_CALL_BYTES
from collector.process.server import CollectorServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def base(server: CollectorServer) -> str:
    assert server.http is not None
    return server.http.base_url + "/v1"


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def rows(server: CollectorServer, sql: str) -> list[list[str]]:
    assert server.store is not None
    text = server.store.query(sql, "TabSeparated").decode()
    return [line.split("\t") for line in text.splitlines()]


def msg() -> str:
    return str(uuid.uuid4())


async def test_a_batch_of_every_call_kind_is_stored_as_mapped(
    start_server: Any, http: aiohttp.ClientSession
) -> None:
    server: CollectorServer = await start_server(auth=True)
    assert server.created_key is not None
    user = {"anonymousId": "anon-b", "userId": "u-b"}
    calls: list[dict[str, Any]] = [
        {"type": "track", "event": "Product Viewed", "properties": {"product_id": "p-1"}, **user},
        {
            "type": "track",
            "event": "Order Completed",
            "properties": {
                "order_id": "o-9",
                "currency": "BHD",
                "products": [{"product_id": "p-1", "price": 1.25}, {"product_id": "p-2", "price": 2}],
            },
            **user,
        },
        {"type": "page", "properties": {"path": "/home"}, **user},
        {"type": "screen", "name": "Cart", **user},
        {"type": "identify", **user},
        {"type": "alias", "previousId": "anon-old", "userId": "u-b"},
        {"type": "group", "groupId": "acme", **user},
        {"type": "screen", **user},  # no name: refused by the mapping
        {"type": "track", "event": "Signed Up"},  # no user id: refused by validation
    ]
    for c in calls:
        c["messageId"] = msg()
    async with http.post(
        f"{base(server)}/batch", json={"batch": calls}, headers=basic(server.created_key)
    ) as r:
        assert r.status == 200
        answer = await r.json()
    assert answer["success"] is True
    assert [(x["index"], x["reason"], x["field"]) for x in answer["rejections"]] == [
        (7, "REJECTION_REASON_MISSING_FIELD", "name"),
        (8, "REJECTION_REASON_MISSING_FIELD", "user"),
    ]
    assert answer["accepted"] == 7

    stored = rows(
        server,
        "SELECT tenant_id, id, action, target_type, target_id, toString(price), currency, order_id,"
        " anonymous_id, user_id FROM activities",
    )
    expected = {
        (calls[0]["messageId"], "view", "product", "p-1", "\\N", ""),
        (calls[1]["messageId"], "purchase", "product", "p-1", "1250", "BHD"),
        (
            str(uuid.uuid5(uuid.UUID("6f0c1c55-52a4-4a54-8d3e-5e67a7c1b0d1"), calls[1]["messageId"] + "#1")),
            "purchase",
            "product",
            "p-2",
            "2000",
            "BHD",
        ),
        (calls[2]["messageId"], "view", "page", "/home", "\\N", ""),
        (calls[3]["messageId"], "view", "screen", "Cart", "\\N", ""),
        (calls[4]["messageId"], "identify", "user", "u-b", "\\N", ""),
        (calls[5]["messageId"], "alias", "user", "u-b", "\\N", ""),
        (calls[6]["messageId"], "group", "group", "acme", "\\N", ""),
    }
    assert {tuple(r[1:7]) for r in stored} == expected
    assert {r[0] for r in stored} == {"default"}
    assert {r[7] for r in stored if r[2] == "purchase"} == {"o-9"}
    alias = next(r for r in stored if r[2] == "alias")
    assert alias[8:] == ["anon-old", "u-b"]

    assert server.service is not None
    stats = server.service.stats
    assert stats.received_by_tenant["default"] == 10  # 8 activities and 2 refused calls
    assert stats.rejected == 2


async def test_identify_links_the_anonymous_id_for_later_activities(
    start_server: Any, http: aiohttp.ClientSession
) -> None:
    server: CollectorServer = await start_server(auth=True)
    assert server.created_key is not None
    identify = {"type": "identify", "anonymousId": "anon-i", "userId": "u-i", "messageId": msg()}
    later = {
        "type": "track",
        "event": "Product Viewed",
        "properties": {"product_id": "p"},
        "anonymousId": "anon-i",
    }
    for path, body in (("identify", identify), ("track", later)):
        async with http.post(f"{base(server)}/{path}", json=body, headers=basic(server.created_key)) as r:
            assert r.status == 200 and (await r.json())["rejections"] == []
    stored = rows(server, "SELECT action, user_id, resolved_user_id FROM activities ORDER BY action")
    assert stored == [["identify", "u-i", "u-i"], ["view", "", "u-i"]]


async def test_bodies_as_sdks_send_them(start_server: Any, http: aiohttp.ClientSession) -> None:
    server: CollectorServer = await start_server(auth=True)
    key = server.created_key
    assert key is not None
    event = {"event": "Product Added", "anonymousId": "a", "properties": {"sku": "S-1"}}
    # gzip-encoded JSON with the key as the Basic user name (server SDKs).
    gz = gzip.compress(json.dumps({**event, "messageId": msg()}).encode())
    headers = {**basic(key), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with http.post(f"{base(server)}/track", data=gz, headers=headers) as r:
        assert r.status == 200 and (await r.json())["success"] is True
    # text/plain with writeKey in the body, on analytics.js's one-letter path (sendBeacon).
    plain = json.dumps({**event, "messageId": msg(), "writeKey": key})
    async with http.post(f"{base(server)}/t", data=plain, headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 200 and (await r.json())["success"] is True
    batch = json.dumps({"writeKey": key, "batch": [{**event, "type": "track", "messageId": msg()}]})
    async with http.post(f"{base(server)}/b", data=batch, headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 200
    assert rows(server, "SELECT count(), uniqExact(id) FROM activities WHERE action = 'add_to_cart'") == [
        ["3", "3"]
    ]


async def test_keys_are_checked(start_server: Any, http: aiohttp.ClientSession) -> None:
    server: CollectorServer = await start_server(auth=True)
    event = {"event": "Signed Up", "anonymousId": "a"}
    async with http.post(f"{base(server)}/track", json=event) as r:
        assert r.status == 401
        answer = await r.json()
        assert answer["success"] is False and "write key" in answer["message"]
    async with http.post(f"{base(server)}/track", json=event, headers=basic("ak_000000000000_x")) as r:
        assert r.status == 401
    assert rows(server, "SELECT count() FROM activities") == [["0"]]


async def test_segment_limits(server: CollectorServer, http: aiohttp.ClientSession) -> None:
    big = {
        "type": "track",
        "event": "Signed Up",
        "anonymousId": "a",
        "properties": {"blob": "x" * MAX_CALL_BYTES},
    }
    small = {"type": "track", "event": "Signed Up", "anonymousId": "a", "messageId": msg()}
    async with http.post(f"{base(server)}/batch", json={"batch": [small, big]}) as r:
        assert r.status == 200
        answer = await r.json()
    assert [(x["index"], x["reason"]) for x in answer["rejections"]] == [(1, "REJECTION_REASON_TOO_LARGE")]
    # Text protobuf cannot hold (a lone surrogate, escaped in the JSON): that call alone is rejected.
    broken = json.dumps({"batch": [{**small, "messageId": msg()}, {**small, "event": "\ud800"}]})
    async with http.post(f"{base(server)}/batch", data=broken) as r:
        assert r.status == 200
        answer = await r.json()
    assert [(x["index"], x["reason"]) for x in answer["rejections"]] == [
        (1, "REJECTION_REASON_INVALID_VALUE")
    ]
    async with http.post(f"{base(server)}/track", json=big) as r:
        assert r.status == 400
        assert str(MAX_CALL_BYTES) in (await r.json())["message"]
    over = {"batch": [small] * (MAX_BATCH_BYTES // len(json.dumps(small)) + 10)}
    async with http.post(f"{base(server)}/batch", json=over) as r:
        assert r.status == 400
    for body, status in ((b"{not json", 400), (b"[]", 400), (b'{"batch": 3}', 400)):
        async with http.post(f"{base(server)}/batch", data=body) as r:
            assert r.status == status
            assert (await r.json())["success"] is False
    async with http.post(
        f"{base(server)}/track", data=b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip"}
    ) as r:
        assert r.status == 400
        assert "cannot be read" in (await r.json())["message"]
    assert rows(server, "SELECT count() FROM activities") == [["2"]]


async def test_cors_for_browsers(server: CollectorServer, http: aiohttp.ClientSession) -> None:
    origin = "https://shop.example"
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-retry-count",
    }
    async with http.options(f"{base(server)}/b", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == origin
        assert r.headers["Access-Control-Allow-Headers"] == "authorization,content-type,x-retry-count"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
    event = {"event": "Signed Up", "anonymousId": "a", "messageId": msg()}
    async with http.post(f"{base(server)}/track", json=event, headers={"Origin": origin}) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == origin
        assert "X-Request-Id" in r.headers


async def test_a_key_with_allowed_origins_refuses_other_pages(
    start_server: Any, postgres_dsn: str, http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    server: CollectorServer = await start_server(auth=True, auth_cache_ttl_s=0.2)
    pg = ["--postgres-dsn", postgres_dsn]
    code = await asyncio.to_thread(
        main,
        ["keys", "create", "--tenant", "default", "--allowed-origin", "https://Shop.example/", *pg],
    )
    out = capsys.readouterr().out
    assert code == 0 and "pages of https://shop.example may send with it" in out
    key = out.splitlines()[-1]
    code = await asyncio.to_thread(
        main, ["keys", "create", "--tenant", "default", "--allowed-origin", "shop", *pg]
    )
    assert code == 1 and "--allowed-origin 'shop'" in capsys.readouterr().err
    code = await asyncio.to_thread(main, ["keys", "list", "--format", "json", *pg])
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # The refused create left no key behind; the key's origins are stored with it, normalized.
    assert code == 0 and len(listed) == 2
    origins = {k["key id"]: k["allowed origins"] for k in listed}
    assert origins[key.split("_")[1]] == "https://shop.example"
    assert sorted(origins.values()) == ["any", "https://shop.example"]

    event = {"event": "Signed Up", "anonymousId": "a", "writeKey": key}
    for origin, status in (("https://shop.example", 200), ("https://evil.example", 403), (None, 200)):
        headers = {"Content-Type": "text/plain"} | ({"Origin": origin} if origin else {})
        body = json.dumps({**event, "messageId": msg()})
        async with http.post(f"{base(server)}/track", data=body, headers=headers) as r:
            assert r.status == status, origin
            if status == 403:
                assert "Access-Control-Allow-Origin" not in r.headers
                assert "may not send with this write key" in (await r.json())["message"]
    # The server SDKs send no Origin: the key's origins do not concern them.
    assert rows(server, "SELECT count() FROM activities") == [["2"]]


async def test_the_curl_example_of_the_docs_answers_as_shown(start_server: Any) -> None:
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    server: CollectorServer = await start_server(auth=True)
    assert server.created_key is not None and server.http is not None
    text = (ROOT / "docs" / "segment.md").read_text()
    block, shown = text.split("$ curl ", 1)[1].split("\n{", 1)
    argv = ["curl", *shlex.split(block.replace("\\\n", " "))]
    argv = [
        arg.replace("http://127.0.0.1:8080", server.http.base_url).replace(
            "$ACTIVITY_API_KEY", server.created_key
        )
        for arg in argv
    ]
    result = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads("{" + shown.split("\n```", 1)[0])
    assert rows(server, "SELECT target_id, price, currency FROM activities") == [["sku-1001", "1999", "EUR"]]
