"""Canonical forms of action, locale, currency and device type, and None for values without one."""

from __future__ import annotations

import pytest

from core.normalize import (
    CURRENCIES,
    WELL_KNOWN_ACTIONS,
    normalize_action,
    normalize_currency,
    normalize_device_type,
    normalize_locale,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Add-To-Cart", "add_to_cart"),
        ("add to cart", "add_to_cart"),
        ("ADD_TO_CART", "add_to_cart"),
        ("add_to_cart", "add_to_cart"),
        ("  View  ", "view"),
        ("page.view", "page.view"),
        ("checkout:step2", "checkout:step2"),
        ("Remove-From Cart", "remove_from_cart"),
    ],
)
def test_action_canonical_forms(value: str, expected: str) -> None:
    assert normalize_action(value) == expected


@pytest.mark.parametrize("value", ["", "   ", "1abc", "a/b", "_view", "view!", "héllo", "add\tto"])
def test_action_without_canonical_form(value: str) -> None:
    assert normalize_action(value) is None


def test_well_known_actions_are_their_own_canonical_form() -> None:
    for action in WELL_KNOWN_ACTIONS:
        assert normalize_action(action) == action


def test_action_results_are_stable_when_repeated() -> None:
    # The normaliser is memoised; the second lookup must give the same answer as the first.
    assert normalize_action("Add-To-Cart") == normalize_action("Add-To-Cart") == "add_to_cart"
    assert normalize_action("a/b") is None
    assert normalize_action("a/b") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("en_us", "en-US"),
        ("EN-us", "en-US"),
        ("en-US", "en-US"),
        ("zh-hant-tw", "zh-Hant-TW"),
        ("ZH_HANS", "zh-Hans"),
        ("EN", "en"),
        ("es-419", "es-419"),
        ("de-DE-1996", "de-DE-1996"),
        ("sl-rozaj", "sl-rozaj"),
        ("fil-PH", "fil-PH"),
        (" fr-ca ", "fr-CA"),
    ],
)
def test_locale_canonical_forms(value: str, expected: str) -> None:
    assert normalize_locale(value) == expected


@pytest.mark.parametrize(
    "value", ["", "e", "english!", "en-", "en--us", "en-u", "e1", "en-US-", "en/US", "12"]
)
def test_locale_without_canonical_form(value: str) -> None:
    assert normalize_locale(value) is None


@pytest.mark.parametrize(
    ("value", "expected"), [("eur", "EUR"), ("EUR", "EUR"), (" usd ", "USD"), ("Jpy", "JPY")]
)
def test_currency_canonical_forms(value: str, expected: str) -> None:
    assert normalize_currency(value) == expected


@pytest.mark.parametrize("value", ["", "XYZ", "EURO", "EU", "€", "US D"])
def test_currency_without_canonical_form(value: str) -> None:
    assert normalize_currency(value) is None


def test_currencies_are_iso_4217_codes() -> None:
    assert {"EUR", "USD", "GBP", "JPY", "CHF"} <= CURRENCIES
    assert all(len(code) == 3 and code.isupper() for code in CURRENCIES)
    assert "XYZ" not in CURRENCIES


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mobile", "mobile"),
        ("Mobile", "mobile"),
        ("DESKTOP", "desktop"),
        ("Smart TV", "smart_tv"),
        ("smart-tv", "smart_tv"),
        (" tablet ", "tablet"),
    ],
)
def test_device_type_canonical_forms(value: str, expected: str) -> None:
    assert normalize_device_type(value) == expected


@pytest.mark.parametrize("value", ["", "9x", "desk/top", "phone!", "_tv"])
def test_device_type_without_canonical_form(value: str) -> None:
    assert normalize_device_type(value) is None
