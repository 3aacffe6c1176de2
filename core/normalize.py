"""Canonical forms of the open-set text fields (action, locale, currency, device type).

Each normaliser returns the canonical form, or None when the value has no canonical form and must be
rejected. Activities repeat the same few values endlessly, so results are memoised in bounded caches:
the hot path pays one dictionary lookup per field instead of string surgery.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pycountry

WELL_KNOWN_ACTIONS = (
    "view",
    "click",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "impression",
    "search",
)

_CACHE_LIMIT = 10_000

_ACTION_RE = re.compile(r"[a-z][a-z0-9_.:]*")
# BCP 47 language tag, the common subset: language, optional script, optional region, optional variants.
_LOCALE_RE = re.compile(
    r"(?P<lang>[a-z]{2,3}|[a-z]{5,8})"
    r"(?:-(?P<script>[a-z]{4}))?"
    r"(?:-(?P<region>[a-z]{2}|[0-9]{3}))?"
    r"(?P<variants>(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*)"
)

CURRENCIES = frozenset(c.alpha_3 for c in pycountry.currencies)


def _memoised(compute: Callable[[str], str | None]) -> Callable[[str], str | None]:
    cache: dict[str, str | None] = {}

    def lookup(value: str) -> str | None:
        try:
            return cache[value]
        except KeyError:
            result = compute(value)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[value] = result
            return result

    lookup.__doc__ = compute.__doc__
    lookup.__name__ = compute.__name__
    return lookup


@_memoised
def normalize_action(value: str) -> str | None:
    """'Add-To-Cart', 'add to cart' and 'add_to_cart' are all 'add_to_cart'."""
    canonical = value.strip().lower().replace("-", "_").replace(" ", "_")
    return canonical if _ACTION_RE.fullmatch(canonical) else None


def normalize_source_type(value: str) -> str | None:
    """A response's kind (Source.type), an open set normalised like actions."""
    return normalize_action(value)


@_memoised
def normalize_locale(value: str) -> str | None:
    """'en_us', 'EN-us' and 'en-US' are all 'en-US'; 'zh-hant-tw' is 'zh-Hant-TW'."""
    match = _LOCALE_RE.fullmatch(value.strip().lower().replace("_", "-"))
    if match is None:
        return None
    parts = [match["lang"]]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    return "-".join(parts) + match["variants"]


@_memoised
def normalize_currency(value: str) -> str | None:
    """An ISO 4217 code in upper case, or None for a code that does not exist."""
    canonical = value.strip().upper()
    return canonical if canonical in CURRENCIES else None


@_memoised
def normalize_device_type(value: str) -> str | None:
    """Lower case, with '-' and spaces read as '_'."""
    canonical = value.strip().lower().replace("-", "_").replace(" ", "_")
    return canonical if _ACTION_RE.fullmatch(canonical) else None
