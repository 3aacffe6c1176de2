"""The documentation names what the code has."""

from __future__ import annotations

from pathlib import Path

from collector.config import SETTING_NAMES, load_settings

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


def test_the_configuration_files_shown_in_the_docs_are_valid(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```toml\n")[1:]]
    assert blocks
    for n, block in enumerate(blocks):
        path = tmp_path / f"{n}.toml"
        path.write_text(block)
        load_settings(environ={}, config_file=path)


def test_every_command_the_readme_runs_exists() -> None:
    from collector.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None
    readme = (ROOT / "README.md").read_text()
    shown = {line.split()[2] for line in readme.splitlines() if line.startswith("$ activity-collector ")}
    assert shown and shown <= set(commands), shown - set(commands)


def test_the_http_example_sends_the_api_key() -> None:
    text = (ROOT / "docs" / "http.md").read_text()
    curl = text.split("$ curl ", 1)[1].split("\n{", 1)[0]
    assert '-H "Authorization: Bearer $ACTIVITY_API_KEY"' in curl
