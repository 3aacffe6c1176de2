"""Segment's own SDKs (segment-analytics-python, @segment/analytics-node), unchanged, pointed at a served
collector: every call kind arrives as docs/segment.md maps it, read back with `activity-collector sql`;
a collector stopped while an SDK flushes loses nothing the SDK was told was sent (the Python SDK reports
failures to `on_error`; the Node.js SDK's callbacks say which calls were delivered)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import install_node_modules, reap, start_serve, stop_serve

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPT = Path(__file__).with_name("segment_node.mjs")
NODE_STOP_SCRIPT = Path(__file__).with_name("segment_node_stop.mjs")


class Served:
    def __init__(self, data: Path, *extra: str) -> None:
        self.data = data
        self.proc, self.address, key = start_serve(data, *extra)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("HTTP/JSON door at "), line
        # Segment's SDKs take the host; they add /v1/batch (or /v1/t, ...) themselves.
        self.url = line.split(" at ", 1)[1].strip().removesuffix("/v1/activities")
        self.key = key or ""

    def sql(self, statement: str) -> list[list[str]]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "collector.cli",
                "sql",
                "--data-dir",
                str(self.data),
                "--format",
                "tsv",
                statement,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return [line.split("\t") for line in result.stdout.splitlines()[1:]]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path / "data")
    try:
        yield s
    finally:
        stop_serve(s.proc)
        reap(s.proc)


COLUMNS = "action, target_type, target_id, toString(price), currency, order_id, toString(quantity)"


def python_client(served: Served, errors: list[Any], **options: Any) -> Any:
    from segment.analytics.client import Client

    return Client(
        write_key=served.key,
        host=served.url,
        gzip=True,
        on_error=lambda error, batch: errors.append((error, batch)),
        **options,
    )


def wait_rows(served: Served, where: str, count: int) -> None:
    import time

    deadline = time.monotonic() + 30
    while int(served.sql(f"SELECT count() FROM activities WHERE {where}")[0][0]) < count:
        assert time.monotonic() < deadline, f"fewer than {count} activities where {where}"
        time.sleep(0.2)


def test_the_python_sdk_sends_every_call_kind(served: Served) -> None:
    errors: list[Any] = []
    client = python_client(served, errors)
    tag = uuid.uuid4().hex[:8]
    user, anon = f"py-user-{tag}", f"py-anon-{tag}"
    context = {
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
        "locale": "de-DE",
        "page": {"url": "https://shop.example/p/9", "referrer": "https://search.example/"},
        "campaign": {"name": "spring", "medium": "email"},
    }
    when = datetime(2026, 11, 2, 10, 15, 0, tzinfo=UTC)
    client.identify(user, {"plan": "pro"}, anonymous_id=anon)
    client.track(
        anonymous_id=anon,
        event="Product Added",
        properties={"product_id": "p-9", "price": 1.234, "currency": "BHD", "quantity": 3, "queryID": "q-1"},
        context=context,
        timestamp=when,
    )
    client.track(
        anonymous_id=anon,
        event="Product List Viewed",
        properties={"list_id": "recs", "products": [{"product_id": "p-1"}, {"product_id": "p-2"}]},
    )
    client.track(anonymous_id=anon, event="Products Searched", properties={"query": "red shoes"})
    client.track(user, "Wishlist Shared", {"channel": "email", "items": 3})
    client.page(anonymous_id=anon, name="Home", properties={"path": "/", "url": "https://shop.example/"})
    client.screen(user, name="Cart")
    client.alias(f"py-old-{tag}", user)
    client.group(user, "acme", {"seats": 10})
    client.flush()
    assert errors == []

    where = f"user_id = '{user}' OR anonymous_id IN ('{anon}', 'py-old-{tag}')"
    wait_rows(served, where, 10)
    got = sorted(tuple(r) for r in served.sql(f"SELECT {COLUMNS} FROM activities WHERE {where}"))
    N = "\\N"
    assert got == sorted(
        [
            ("identify", "user", user, N, "", "", N),
            ("add_to_cart", "product", "p-9", "1234", "BHD", "", "3"),
            ("impression", "product", "p-1", N, "", "", N),
            ("impression", "product", "p-2", N, "", "", N),
            ("search", "search", "red shoes", N, "", "", N),
            ("wishlist_shared", "event", "Wishlist Shared", N, "", "", N),
            ("view", "page", "/", N, "", "", N),
            ("view", "screen", "Cart", N, "", "", N),
            ("alias", "user", user, N, "", "", N),
            ("group", "group", "acme", N, "", "", N),
        ]
    )
    [added] = served.sql(
        "SELECT user_agent, locale, page_url, referrer, custom['utm_campaign'], custom['utm_medium'],"
        " source_id, occurred_at, resolved_user_id FROM activities"
        f" WHERE action = 'add_to_cart' AND anonymous_id = '{anon}'"
    )
    assert added[:7] == [
        context["userAgent"],
        "de-DE",
        "https://shop.example/p/9",
        "https://search.example/",
        "spring",
        "email",
        "q-1",
    ]
    assert added[7].startswith("2026-11-02 10:15:00")
    # The identify linked the anonymous id to the user, as a login does.
    assert added[8] == user
    impressions = served.sql(
        f"SELECT target_id, source_position, source_type, source_name FROM activities"
        f" WHERE action = 'impression' AND anonymous_id = '{anon}' ORDER BY source_position"
    )
    assert impressions == [["p-1", "1", "list", "recs"], ["p-2", "2", "list", "recs"]]
    [custom] = served.sql(
        "SELECT custom['channel'], custom['items'] FROM activities WHERE action = 'wishlist_shared'"
    )
    assert custom == ["email", "3"]


@pytest.fixture(scope="session")
def node_sdk() -> str:
    """`node`, with @segment/analytics-node installed from the repository's package-lock.json."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the Node.js SDK test needs `node` and `npm` on PATH")
    install_node_modules("@segment/analytics-node")
    return node


def test_the_node_sdk_sends_every_call_kind(served: Served, node_sdk: str) -> None:
    tag = uuid.uuid4().hex[:8]
    result = subprocess.run(
        [node_sdk, str(NODE_SCRIPT), served.url, served.key, tag],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"errors": []}
    user, anon = f"node-user-{tag}", f"node-anon-{tag}"
    where = f"user_id = '{user}' OR anonymous_id IN ('{anon}', 'node-old-{tag}')"
    wait_rows(served, where, 9)
    got = sorted(tuple(r) for r in served.sql(f"SELECT {COLUMNS} FROM activities WHERE {where}"))
    N = "\\N"
    assert got == sorted(
        [
            ("identify", "user", user, N, "", "", N),
            ("view", "product", "p-1", "1999", "EUR", "", N),
            ("purchase", "product", "p-1", "1500", "JPY", "o-1", "2"),
            ("purchase", "product", "s-2", "300", "JPY", "o-1", N),
            ("coupon_applied", "event", "Coupon Applied", N, "", "", N),
            ("view", "page", "/", N, "", "", N),
            ("view", "screen", "Cart", N, "", "", N),
            ("alias", "user", user, N, "", "", N),
            ("group", "group", "acme", N, "", "", N),
        ]
    )
    [viewed] = served.sql(
        "SELECT user_agent, locale, page_url, custom['utm_source'], source_id, occurred_at, browser"
        f" FROM activities WHERE action = 'view' AND target_type = 'product' AND anonymous_id = '{anon}'"
    )
    assert viewed[:5] == [
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/17.0 Safari/605.1.15",
        "fr-FR",
        "https://shop.example/p/1",
        "newsletter",
        "r-1",
    ]
    assert viewed[5].startswith("2026-11-02 10:15:00")


def test_a_collector_stopped_during_a_flush_loses_nothing_the_sdk_was_told_was_sent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    served = Served(data)
    errors: list[Any] = []
    # One attempt per batch: what the SDK was not told was sent, it reports to on_error.
    client = python_client(served, errors, max_retries=0, upload_size=100, max_queue_size=100_000)
    sent: list[str] = []
    stopped = threading.Event()

    def stop_when_some_arrived() -> None:
        try:
            wait_rows(served, "1", 1)
        finally:
            stop_serve(served.proc)
            stopped.set()

    stopper = threading.Thread(target=stop_when_some_arrived)
    stopper.start()
    try:
        # The SDK keeps sending while the collector stops, and a while after.
        after = 0
        while after < 500 and len(sent) < 200_000:
            message_id = str(uuid.uuid4())
            n = len(sent)
            client.track(f"u-{n % 50}", "Product Viewed", {"product_id": f"p-{n}"}, message_id=message_id)
            sent.append(message_id)
            if stopped.is_set():
                after += 1
            elif n % 100 == 99:
                client.flush()
        client.flush()
        stopper.join(timeout=60)
        assert stopped.is_set()
    finally:
        reap(served.proc)

    failed = {m["messageId"] for _, batch in errors for m in batch}
    assert failed, "the SDK was told of no failure: the collector did not stop during its sending"
    again = Served(data)
    try:
        told_sent = set(sent) - failed
        # Everything acknowledged was on disk (the spool): it is all stored once the collector is back.
        wait_rows(again, "1", len(told_sent))
        stored = {r[0] for r in again.sql("SELECT toString(id) FROM activities")}
        assert told_sent <= stored <= set(sent)
    finally:
        stop_serve(again.proc)
        reap(again.proc)


def test_a_collector_stopped_while_the_node_sdk_sends_loses_nothing_it_was_told_was_sent(
    tmp_path: Path, node_sdk: str
) -> None:
    data = tmp_path / "data"
    flag = tmp_path / "stopped"
    served = Served(data)
    try:
        sender = subprocess.Popen(
            [node_sdk, str(NODE_STOP_SCRIPT), served.url, served.key, str(flag)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            wait_rows(served, "1", 1)
        finally:
            stop_serve(served.proc)
            flag.touch()
        out, err = sender.communicate(timeout=150)
        assert sender.returncode == 0, err
    finally:
        reap(served.proc)
    result = json.loads(out.splitlines()[-1])
    sent, delivered = set(result["sent"]), set(result["delivered"])
    assert delivered < sent, "the SDK was told of no failure: the collector did not stop during its sending"
    again = Served(data)
    try:
        wait_rows(again, "1", len(delivered))
        stored = {r[0] for r in again.sql("SELECT toString(id) FROM activities")}
        assert delivered <= stored <= sent
    finally:
        stop_serve(again.proc)
        reap(again.proc)
