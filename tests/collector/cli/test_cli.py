"""The command line, as a user runs it: `serve` in its own process, `send` and `sql` beside it."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import start_serve

from collector.config import SETTING_NAMES

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "examples" / "activities.jsonl"


def cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    proc, target, key = start_serve(data)
    yield proc, target, data, key
    if proc.poll() is None:
        # A graceful stop, so that the server stops the embedded PostgreSQL it started.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_send_sql_and_graceful_stop(served) -> None:  # type: ignore[no-untyped-def]
    proc, target, data, key = served
    # A fresh data directory: serve created the default tenant and printed its key.
    assert key is not None

    unauthenticated = cli("send", str(SAMPLE), "--target", target)
    assert unauthenticated.returncode == 2
    assert "not stored: UNAUTHENTICATED: missing API key" in unauthenticated.stderr
    assert "no key given: set ACTIVITY_API_KEY or pass --api-key" in unauthenticated.stderr
    assert "accepted 0, rejected 0, unparsed 0, not stored 5" in unauthenticated.stdout

    sent = cli("send", str(SAMPLE), "--target", target, env={"ACTIVITY_API_KEY": key})
    assert sent.returncode == 1, sent.stderr  # two lines of the sample are invalid on purpose
    assert "accepted 3, rejected 2, unparsed 0, not stored 0" in sent.stdout
    assert "line 4: metadata.price: metadata.price must not be negative" in sent.stdout
    assert "line 5: target.id: target.id is required [MISSING_FIELD]" in sent.stdout

    # stdin, and a line that is not an activity
    lines = (
        '{"action": "view", "target": {"type": "page", "id": "home"}, "user": {"userId": "u"}}\nnot json\n'
    )
    piped = cli("send", "-", "--target", target, "--api-key", key, stdin=lines)
    assert "accepted 1, rejected 0, unparsed 1" in piped.stdout
    assert "line 2: not an activity" in piped.stdout

    # The server acknowledges once the spool holds the activities; ClickHouse has them a moment later.
    for _ in range(100):
        settled = cli("sql", "--data-dir", str(data), "--format", "tsv", "SELECT count() FROM activities")
        if settled.stdout.splitlines()[-1:] == ["4"]:
            break
        time.sleep(0.1)
    # While the server holds the embedded engine, sql goes through it.
    query = "SELECT action, target_id, currency FROM activities ORDER BY action, target_id FORMAT JSONEachRow"
    through_server = cli("sql", "--data-dir", str(data), "--format", "json", query.rsplit(" FORMAT", 1)[0])
    assert through_server.returncode == 0, through_server.stderr
    got = [json.loads(line) for line in through_server.stdout.splitlines()]
    assert got == [
        {"action": "add_to_cart", "target_id": "sku-1001", "currency": "EUR"},
        {"action": "purchase", "target_id": "sku-1001", "currency": "EUR"},
        {"action": "view", "target_id": "home", "currency": ""},
        {"action": "view", "target_id": "sku-1001", "currency": ""},
    ]

    table = cli("sql", "--data-dir", str(data), "SELECT count() AS n FROM activities")
    assert "n" in table.stdout and "4" in table.stdout and "┌" in table.stdout

    bad = cli("sql", "--data-dir", str(data), "SELECT nope FROM activities")
    assert bad.returncode == 1
    assert "nope" in bad.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not (data / "control.sock").exists()
    # What start-up built is out of the garbage collector's sight (collector/process/heap.py).
    events = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    started = [e for e in events if e.get("event") == "started"]
    assert len(started) == 1 and started[0]["frozen_objects"] > 50_000

    # With no server, sql opens the engine itself and sees the same data.
    direct = cli("sql", "--data-dir", str(data), "--format", "tsv", "SELECT count() FROM activities")
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.splitlines() == ["count()", "4"]


def test_sql_without_data_says_so(tmp_path: Path) -> None:
    result = cli("sql", "--data-dir", str(tmp_path / "nothing"), "SELECT 1")
    assert result.returncode == 1
    assert "no data" in result.stderr


def test_bad_configuration_names_the_setting(tmp_path: Path) -> None:
    result = cli("serve", "--data-dir", str(tmp_path), env={"ACTIVITY_QUEUE_CAPACITY": "10"})
    assert result.returncode == 2
    assert "queue_capacity" in result.stderr
    unknown = cli("serve", "--data-dir", str(tmp_path), env={"ACTIVITY_QUEUE_CAPACTY": "10"})
    assert unknown.returncode == 2
    assert "ACTIVITY_QUEUE_CAPACTY: unknown setting" in unknown.stderr


def test_a_second_server_on_the_same_data_directory_is_refused(served) -> None:  # type: ignore[no-untyped-def]
    _, _, data, _ = served
    second = cli("serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data))
    assert second.returncode == 1
    assert "cannot start" in second.stderr


def test_send_to_nothing_reports_not_stored(tmp_path: Path) -> None:
    result = cli(
        "send", str(SAMPLE), "--target", f"127.0.0.1:{free_port()}", "--timeout", "2", "--attempts", "2"
    )
    assert result.returncode == 2
    assert "lines 1-5: not stored: UNAVAILABLE" in result.stderr
    assert "accepted 0, rejected 0, unparsed 0, not stored 5" in result.stdout


def test_dead_letters_beside_a_running_server_and_without_one(served) -> None:  # type: ignore[no-untyped-def]
    proc, target, data, key = served
    constraint = "ALTER TABLE activities ADD CONSTRAINT no_forbidden CHECK action != 'forbidden'"
    assert cli("sql", "--data-dir", str(data), constraint).returncode == 0
    lines = "\n".join(
        json.dumps({"action": action, "target": {"type": "page", "id": "p"}, "user": {"userId": "u"}})
        for action in ("view", "forbidden", "view")
    )
    sent = cli("send", "-", "--target", target, "--batch-size", "1", "--api-key", key, stdin=lines)
    assert "accepted 3" in sent.stdout, sent.stderr

    # The commands join the embedded PostgreSQL of the running server.
    for _ in range(100):
        listed = cli("dead-letters", "list", "--data-dir", str(data))
        assert listed.returncode == 0, listed.stderr
        if len(listed.stdout.splitlines()) == 2:
            break
        time.sleep(0.1)
    header, row = listed.stdout.splitlines()
    assert header.split() == ["id", "created", "(UTC)", "tenant", "rows", "state", "replays", "error"]
    assert row.split()[0] == "1" and row.split()[3:7] == ["default", "1", "pending", "0"]
    assert "Code: 469" in row
    shown = cli("dead-letters", "show", "1", "--data-dir", str(data))
    assert '"action": "forbidden"' in shown.stdout

    assert (
        cli("sql", "--data-dir", str(data), "ALTER TABLE activities DROP CONSTRAINT no_forbidden").returncode
        == 0
    )
    replayed = cli("dead-letters", "replay", "1", "--data-dir", str(data))
    assert (replayed.returncode, replayed.stdout) == (0, "dead letter 1: 1 activities stored in ClickHouse\n")
    again = cli("dead-letters", "replay", "1", "--data-dir", str(data))
    assert again.returncode == 0 and "already replayed" in again.stdout
    counted = cli(
        "sql",
        "--data-dir",
        str(data),
        "--format",
        "tsv",
        "SELECT action, count() FROM activities GROUP BY action ORDER BY action",
    )
    assert counted.stdout.splitlines()[1:] == ["forbidden\t1", "view\t2"]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # No server: the command starts the embedded PostgreSQL for itself, and stops it.
    listed = cli("dead-letters", "list", "--all", "--format", "json", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["state"] for line in listed.stdout.splitlines()] == ["replayed"]
    purged = cli("dead-letters", "purge", "--all", "--data-dir", str(data))
    assert purged.stdout == "purged 1 dead letters\n"
    assert not (data / "postgres" / "postmaster.pid").exists()


TESTDATA = ROOT / "tests" / "testdata" / "config"


def test_config_prints_every_setting_its_value_and_origin_with_passwords_masked() -> None:
    result = cli(
        "config",
        "--config",
        str(TESTDATA / "good.toml"),
        "--listen",
        "127.0.0.1:7000",
        env={"ACTIVITY_INSERT_WORKERS": "8", "ACTIVITY_CONFIG": ""},
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in result.stdout.splitlines()[1:]}
    assert result.stdout.splitlines()[0].split() == ["setting", "value", "source"]
    assert set(rows) == set(SETTING_NAMES)
    good = str(TESTDATA / "good.toml")
    assert rows["listen"] == ['"127.0.0.1:7000"', "flag (--listen)"]
    assert rows["insert_workers"] == ["8", "env (ACTIVITY_INSERT_WORKERS)"]
    assert rows["queue_capacity"] == ["300000", f"file ({good})"]
    assert rows["spool"] == ["false", f"file ({good})"]
    assert rows["clickhouse_dsn"] == ['"http://writer:***@clickhouse:8123"', f"file ({good})"]
    assert rows["postgres_dsn"] == ['"postgresql://writer:***@postgres:5432/activity"', f"file ({good})"]
    assert rows["max_segments"] == ["64", "default"]
    assert "s3cret" not in result.stdout


def test_config_as_json_names_the_file_from_the_environment() -> None:
    good = str(TESTDATA / "good.toml")
    result = cli("config", "--format", "json", env={"ACTIVITY_CONFIG": good})
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["listen"] == {"value": "127.0.0.1:6000", "source": "file", "from": good}
    assert document["max_batch_activities"] == {"value": 500, "source": "file", "from": good}
    assert document["clock_skew_tolerance_ms"]["value"] == 250.0
    assert document["data_dir"]["value"] == "/srv/activity"
    assert document["http_listen"] == {"value": "127.0.0.1:8080", "source": "default"}
    assert document["clickhouse_dsn"]["value"] == "http://writer:***@clickhouse:8123"
    assert "s3cret" not in result.stdout


def test_a_bad_config_file_stops_serve_naming_the_setting_and_the_file(tmp_path: Path) -> None:
    bad = TESTDATA / "bad-type.toml"
    result = cli("serve", "--config", str(bad), "--data-dir", str(tmp_path), env={"ACTIVITY_CONFIG": ""})
    assert result.returncode == 2
    assert f"configuration error: insert_workers: expected an integer, got str 'four' (in {bad})" in (
        result.stderr
    )
    unknown = cli("sql", "SELECT 1", env={"ACTIVITY_CONFIG": str(TESTDATA / "bad-unknown-key.toml")})
    assert unknown.returncode == 2
    assert "max_batch_activites: unknown setting in" in unknown.stderr
    assert "bad-unknown-key.toml" in unknown.stderr


def test_every_command_registers_its_parser_and_its_handler(capsys: pytest.CaptureFixture[str]) -> None:
    from collector.cli.main import COMMANDS, build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None
    assert list(commands) == [
        "serve",
        "config",
        "send",
        "health",
        "sql",
        "report",
        "schema",
        "migrate",
        "dead-letters",
        "tenants",
        "keys",
        "catalog",
        "plans",
        "rejections",
        "quotas",
        "users",
        "segments",
    ]
    assert len(COMMANDS) == len(commands)
    for name, command in commands.items():
        assert callable(command.get_default("run")), name
        with pytest.raises(SystemExit) as ended:
            parser.parse_args([name, "--help"])
        assert ended.value.code == 0
    assert "usage: activity-collector send" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["send", "missing.jsonl"], 3, "activity-collector send: cannot read missing.jsonl: no such file"),
        (["send", str(SAMPLE), "--batch-size", "0"], 2, "--batch-size and --attempts must be greater"),
        (["send", str(SAMPLE), "--timeout", "0"], 2, "--timeout must be a number of seconds above zero"),
        (["send", str(SAMPLE), "--ca-cert", "missing.pem"], 2, "--ca-cert: cannot read missing.pem"),
        (["health", "--ca-file", "missing.pem"], 2, "activity-collector health: --ca-file: cannot read"),
        (["sql", "--data-dir", str(SAMPLE), "SELECT 1"], 1, "activity-collector sql: "),
        (["dead-letters"], 2, "the following arguments are required: action"),
        (["nonsense"], 2, "invalid choice: 'nonsense'"),
    ],
)
def test_a_mistake_gives_a_message_and_an_exit_status_never_a_traceback(
    args: list[str], code: int, message: str
) -> None:
    result = cli(*args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_send_to_a_server_that_never_answers_gives_up_after_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = cli(
            "send", str(SAMPLE), "--target", f"127.0.0.1:{port}", "--timeout", "1", "--attempts", "2"
        )
    assert result.returncode == 2
    assert "lines 1-5: not stored: DEADLINE_EXCEEDED: Deadline Exceeded" in result.stderr
    assert "accepted 0, rejected 0, unparsed 0, not stored 5" in result.stdout
    assert time.monotonic() - started < 30


def _parsers() -> list[tuple[str, argparse.ArgumentParser, str | None]]:
    """Every command and subcommand: (its words, its parser, its one-line help in its parent's list)."""
    from collector.cli.main import build_parser

    found: list[tuple[str, argparse.ArgumentParser, str | None]] = []

    def walk(words: str, parser: argparse.ArgumentParser, line: str | None) -> None:
        found.append((words, parser, line))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                lines = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    walk(f"{words} {name}".strip(), sub, lines.get(name))

    walk("", build_parser(), "")
    return found


# The commands that exit with statuses other than 0 and 1 (beyond the 2 of a bad configuration).
MORE_EXIT_STATUSES = {
    "serve",
    "send",
    "health",
    "sql",
    "report",
    "catalog import",
    "users erase",
    "users erasure-status",
}
LISTS = {
    "config",
    "tenants list",
    "keys list",
    "quotas list",
    "plans history",
    "dead-letters list",
    "rejections list",
    "rejections report",
    "report",
    "segments list",
    "segments members",
}


def test_every_command_and_argument_says_what_it_is() -> None:
    parsers = _parsers()
    assert len(parsers) > 40  # every subcommand of every command was walked
    missing: list[str] = []
    for words, parser, line in parsers:
        if not line and words:
            missing.append(f"{words}: no one-line help in its parent's list")
        if not parser.description:
            missing.append(f"{words}: no description")
        text = f"{parser.description or ''} {parser.epilog or ''}".lower()
        if words in MORE_EXIT_STATUSES and "exit status" not in text:
            missing.append(f"{words}: its exit statuses are not listed")
        for action in parser._actions:
            skipped = (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)
            if isinstance(action, skipped):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not action.help:
                missing.append(f"{words} {name}: no help")
            # A flag of a setting names its variable and its default.
            if action.dest in SETTING_NAMES and action.option_strings:
                variable = "ACTIVITY_" + action.dest.upper()
                if variable not in (action.help or "") or "default" not in (action.help or ""):
                    missing.append(f"{words} {name}: does not show {variable} and its default")
        if words in LISTS:
            formats = next((a.choices for a in parser._actions if "--format" in a.option_strings), None)
            if formats is None or not {"table", "json", "csv"} <= set(formats):
                missing.append(f"{words}: --format lacks table, json or csv: {formats}")
    assert missing == []


@pytest.mark.parametrize("command", ["serve", "config"])
def test_every_setting_is_a_flag_with_its_variable_and_default(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collector.cli.common import Configuration
    from collector.cli.main import build_parser

    [parser] = [p for words, p, _ in _parsers() if words == command]
    flags = {a.dest: a for a in parser._actions if a.option_strings}
    for name in SETTING_NAMES:
        flag = flags.get(name)
        assert flag is not None, f"{command} has no flag for {name}"
        assert flag.option_strings == ["--" + name.replace("_", "-")]
        assert f"ACTIVITY_{name.upper()}" in (flag.help or "") and "default " in (flag.help or "")
    # The flags set the settings, converted and checked as variables are, and win over them.
    args = build_parser().parse_args(
        [command, "--queue-capacity", "20000", "--spool", "false", "--drop-actions", "debug_*"]
    )
    monkeypatch.setenv("ACTIVITY_QUEUE_CAPACITY", "30000")
    effective = Configuration(args).effective
    assert effective.settings.pipeline.queue_capacity == 20000
    assert effective.settings.spool is False
    assert str(effective.origin("queue_capacity")) == "set by --queue-capacity"
    assert str(effective.origin("drop_actions")) == "set by --drop-actions"


def test_a_bad_setting_flag_is_named() -> None:
    result = cli("config", "--insert-workers", "many")
    assert result.returncode == 2
    assert "insert_workers: expected a int, got 'many' (set by --insert-workers)" in result.stderr


def test_list_commands_print_json_and_csv() -> None:
    from collector.cli.common import print_table

    header, rows = ("tenant", "state"), [("default", "active"), ("shop, two", "disabled")]
    outputs = {}
    for fmt in ("table", "json", "csv"):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            print_table(header, rows, fmt, empty="no tenants")
        outputs[fmt] = out.getvalue()
    assert outputs["table"].splitlines()[0].split() == ["tenant", "state"]
    assert [json.loads(line) for line in outputs["json"].splitlines()] == [
        {"tenant": "default", "state": "active"},
        {"tenant": "shop, two", "state": "disabled"},
    ]
    assert outputs["csv"].splitlines() == ["tenant,state", "default,active", '"shop, two",disabled']
    with contextlib.redirect_stdout(io.StringIO()) as out:
        print_table(header, [], "table", empty="no tenants")
        print_table(header, [], "json", empty="no tenants")
        print_table(header, [], "csv", empty="no tenants")
    assert out.getvalue() == "no tenants\ntenant,state\n"
