"""The documentation names what the code has."""

from __future__ import annotations

from pathlib import Path

from collector.config import SETTING_NAMES

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in SETTING_NAMES if f"| `{name}` |" not in text]
    assert missing == []


def test_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "./scripts/test" in readme
    assert (ROOT / "scripts" / "test").stat().st_mode & 0o111
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test" in ci
