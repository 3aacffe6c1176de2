"""User agent strings to device type, OS, browser and the bot flag, with the real parser's rules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workers.enrichment.useragent import EMPTY, parse_user_agent

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1"
)
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
MAC_SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15"
)
LINUX_FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


@pytest.mark.parametrize(
    ("text", "device_type", "os", "browser"),
    [
        (IPHONE, "mobile", "iOS", "Mobile Safari"),
        (IPAD, "tablet", "iOS", "Mobile Safari"),
        (WINDOWS_CHROME, "desktop", "Windows", "Chrome"),
        (ANDROID_TABLET, "tablet", "Android", "Chrome"),
        (ANDROID_PHONE, "mobile", "Android", "Chrome Mobile"),
        (GOOGLEBOT, "bot", "", "Googlebot"),
        (MAC_SAFARI, "desktop", "Mac OS X", "Safari"),
        (LINUX_FIREFOX, "desktop", "Linux", "Firefox"),
        ("curl/8.4.0", "other", "", "curl"),
    ],
)
def test_device_type_os_and_browser(text: str, device_type: str, os: str, browser: str) -> None:
    info = parse_user_agent(text)
    assert (info.device_type, info.os, info.browser) == (device_type, os, browser)
    assert info.is_bot == (device_type == "bot")


def test_versions_are_as_precise_as_the_string() -> None:
    assert parse_user_agent(IPHONE).os_version == "17.1"
    assert parse_user_agent(IPHONE).browser_version == "17.1"
    assert parse_user_agent(WINDOWS_CHROME).browser_version == "120.0.0"
    assert parse_user_agent(MAC_SAFARI).os_version == "10.15.7"
    assert parse_user_agent(LINUX_FIREFOX).os_version == ""


def test_an_empty_user_agent_says_nothing() -> None:
    assert parse_user_agent("") == EMPTY
    assert EMPTY.device_type == "" and not EMPTY.is_bot


def test_garbage_is_other_not_an_error() -> None:
    info = parse_user_agent("\x00\uffff not a browser at all ;;;")
    assert info.device_type == "other"
    assert not info.is_bot


def test_prepare_builds_the_parser_before_the_first_request() -> None:
    # ua_parser builds its parser on first use; a fresh interpreter shows whether prepare() did.
    code = (
        "import ua_parser; from workers.enrichment import useragent; "
        "assert 'parser' not in vars(ua_parser); useragent.prepare(); "
        "assert 'parser' in vars(ua_parser)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
