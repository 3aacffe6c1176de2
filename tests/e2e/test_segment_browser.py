"""Segment's browser SDK (@segment/analytics-next), unchanged, in the example web shop
(examples/web-shop), in headless Chromium: what the page tracks arrives with the browser's user agent,
the page's URL and the SDK's anonymous id, across origins (CORS), and so does a sendBeacon on unload.

The page's bundle is built here from the repository's node_modules (esbuild, package-lock.json): no
CDN, no download at run time. Needs Debian's `chromium` (scripts/install-browser installs it)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import install_node_modules, wait_for

from collector.process.server import CollectorServer

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "web-shop"
DRIVER = Path(__file__).with_name("segment_browser.mjs")


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found is not None:
            return found
    pytest.skip("needs Debian's `chromium` (scripts/install-browser installs it)")


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example shop with its bundle, built with esbuild from node_modules (installed by `npm ci`
    from package-lock.json when missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the browser test needs `node` and `npm` on PATH")
    install_node_modules("@segment/analytics-next")
    site = tmp_path_factory.mktemp("web-shop")
    shutil.copy(EXAMPLE / "index.html", site / "index.html")
    built = subprocess.run(
        [
            str(ROOT / "node_modules" / ".bin" / "esbuild"),
            str(EXAMPLE / "shop.js"),
            "--bundle",
            "--log-level=warning",
            f"--outfile={site / 'shop.bundle.js'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    return site


@pytest.fixture
async def site(shop: Path) -> AsyncIterator[str]:
    """The shop served on an origin of its own (another port than the collector's)."""
    app = web.Application()
    app.router.add_static("/", shop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def rows(server: CollectorServer, sql: str) -> list[list[str]]:
    assert server.store is not None
    return [line.split("\t") for line in server.store.query(sql, "TabSeparated").decode().splitlines()]


async def test_the_web_shop_tracks_through_the_segment_door(start_server: Any, site: str) -> None:
    browser = chromium()
    server: CollectorServer = await start_server(auth=True)
    assert server.created_key is not None and server.http is not None
    page_url = f"{site}/index.html?collector={server.http.base_url}&writeKey={server.created_key}"
    driver = await asyncio.create_subprocess_exec(
        "node",
        str(DRIVER),
        browser,
        page_url,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert driver.stdout is not None and driver.stdin is not None
    try:
        line = await asyncio.wait_for(driver.stdout.readline(), 120)
        if not line:
            err = await driver.stderr.read() if driver.stderr else b""
            raise AssertionError(f"the browser driver failed: {err.decode()[-3000:]}")
        seen = json.loads(line)

        def arrived() -> bool:
            return rows(server, "SELECT count() FROM activities") >= [["4"]]

        await wait_for(arrived, "the page's four activities", timeout=60)
    finally:
        driver.stdin.close()
        await asyncio.wait_for(driver.wait(), 60)

    got = rows(
        server,
        "SELECT action, target_type, target_id, toString(price), currency, anonymous_id, user_agent,"
        " page_url, browser FROM activities",
    )
    assert sorted((r[0], r[1], r[2], r[3], r[4]) for r in got) == sorted(
        [
            ("view", "page", "/index.html", "\\N", ""),
            ("view", "product", "sku-1001", "8990", "EUR"),
            ("add_to_cart", "product", "sku-1001", "8990", "EUR"),
            ("page_left", "product", "sku-1001", "\\N", ""),
        ]
    )
    assert seen["anonymousId"]
    assert {r[5] for r in got} == {seen["anonymousId"]}
    assert {r[6] for r in got} == {seen["userAgent"]}
    assert {r[7] for r in got} == {page_url}
    # Enrichment read the user agent: a Chrome browser.
    assert {r[8] for r in got} != {""}
