"""User agent strings to device type, operating system, browser and a bot flag.

Parsing is `ua-parser` (the uap-core rules, updated monthly in `ua-parser-builtins`); it names the
browser, the operating system and the device family, but not the kind of device. The kind is decided
here, from what it names, in this order:

1. `bot`: uap-core's device family `Spider` (crawlers, monitors, link previewers).
2. `tablet`: an iPad, a device family or brand that says tablet (Kindle, `Generic_Android_Tablet`),
   or Android without `Mobile` in the string (Google's rule for Android tablets).
3. `mobile`: a phone operating system (iOS, Android, ...) or `Mobile` in the string.
4. `desktop`: a desktop operating system (Windows, macOS, Linux, ChromeOS, BSDs).
5. `other`: anything else (command-line tools, libraries, consoles, TVs).

An empty string yields nothing: every field empty, `is_bot` false. Parsing a string costs tens of
microseconds; enrichment parses each distinct string once and caches the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import ua_parser

_PHONE_SYSTEMS = frozenset(
    {
        "iOS",
        "Android",
        "Windows Phone",
        "BlackBerry OS",
        "KaiOS",
        "Firefox OS",
        "Symbian OS",
        "Tizen",
        "HarmonyOS",
        "Sailfish",
        "webOS",
    }
)
_DESKTOP_SYSTEMS = frozenset(
    {
        "Windows",
        "Mac OS X",
        "Linux",
        "Ubuntu",
        "Debian",
        "Fedora",
        "Red Hat",
        "SUSE",
        "openSUSE",
        "Mint",
        "Chrome OS",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
    }
)
_TABLET_WORDS = ("tablet", "ipad", "kindle", "playbook", "tab ")


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    device_type: str
    """bot, tablet, mobile, desktop or other; empty for an empty user agent."""
    os: str
    os_version: str
    browser: str
    """The browser or client application (uap-core's user agent family)."""
    browser_version: str
    is_bot: bool


EMPTY = UserAgentInfo("", "", "", "", "", False)


def _version(*parts: str | None) -> str:
    out: list[str] = []
    for part in parts:
        if not part:
            break
        out.append(part)
    return ".".join(out)


def _known(family: str | None) -> str:
    return "" if family in (None, "Other") else str(family)


def prepare() -> None:
    """Build the parser now: `ua_parser` compiles its rules on first use (about 0.15 s), which would
    otherwise stall the first request that brings a user agent."""
    ua_parser.parse("Mozilla/5.0")


def parse_user_agent(text: str) -> UserAgentInfo:
    if not text:
        return EMPTY
    result = ua_parser.parse(text)
    agent, system, device = result.user_agent, result.os, result.device
    os_name = _known(system.family if system else None)
    device_family = _known(device.family if device else None)
    brand = (device.brand or "") if device else ""
    is_bot = device_family == "Spider"
    lowered = f"{device_family} {brand}".lower()
    if is_bot:
        kind = "bot"
    elif (
        any(word in lowered for word in _TABLET_WORDS)
        or (os_name == "Android" and "Mobile" not in text)
        or " Tablet" in text
    ):
        kind = "tablet"
    elif os_name in _PHONE_SYSTEMS or "Mobile" in text:
        kind = "mobile"
    elif os_name in _DESKTOP_SYSTEMS:
        kind = "desktop"
    else:
        kind = "other"
    return UserAgentInfo(
        device_type=kind,
        os=os_name,
        os_version=_version(system.major, system.minor, system.patch) if system and os_name else "",
        browser=_known(agent.family if agent else None),
        browser_version=_version(agent.major, agent.minor, agent.patch) if agent and agent.family else "",
        is_bot=is_bot,
    )
