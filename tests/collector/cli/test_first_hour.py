"""The first hour of a new user: the mistakes a newcomer makes get a clear message and an exit status of
their own, and what looks like it should work does (a file sent twice, `sql` right after `send`, a
report with the default range, a query with its own FORMAT)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import reap, start_serve

from collector.cli.send import line_id
from collector.cli.sql import FormatClash, split_format

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "examples" / "activities.jsonl"


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ACTIVITY_", "GRPC_"))}
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
        cwd=ROOT,
        input=stdin,
    )


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[str], Path, dict[str, str]]]:
    """One `serve` for the module, and the environment that points the commands at it."""
    data = tmp_path_factory.mktemp("first-hour") / "data"
    proc, target, key = start_serve(data)
    assert key is not None
    env = {"ACTIVITY_TARGET": target, "ACTIVITY_DATA_DIR": str(data), "ACTIVITY_API_KEY": key}
    yield proc, data, env
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            reap(proc)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.stdout is not None
    proc.stdout.close()
    # gRPC's own log lines do not show between the collector's.
    assert "fork_posix.cc" not in stderr and ".cc:" not in stderr, stderr


# -- send ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("missing.jsonl", "activity-collector send: cannot read missing.jsonl: no such file"),
        (
            "examples",
            "activity-collector send: cannot read examples: it is a directory; name a JSON Lines file "
            "(or - for stdin)",
        ),
    ],
)
def test_send_of_a_file_that_cannot_be_read_exits_3(path: str, message: str) -> None:
    result = cli("send", path)
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr.strip() == message


def test_send_help_lists_the_exit_statuses_and_the_ids() -> None:
    text = cli("send", "--help").stdout
    for status in (
        "0  every activity was accepted",
        "1  some lines were rejected",
        "2  some activities could not be stored",
        "3  the file cannot be read",
    ):
        assert status in text
    assert "uuid5" in text and "--wait" in text


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("activity-collector ")
    assert result.stdout.split()[1][0].isdigit()


def test_a_line_id_depends_on_the_line_and_its_place_only() -> None:
    line = '{"action": "view"}\n'
    assert line_id(1, line) == line_id(1, line.rstrip("\n")) == line_id(1, line.replace("\n", "\r\n"))
    assert line_id(1, line) != line_id(2, line)
    assert line_id(1, line) != line_id(1, '{"action": "click"}')
    assert line_id(7, "caf\udce9") == line_id(7, "caf\udce9")  # bytes that are not UTF-8


def test_send_twice_counts_once_and_sql_right_after_sees_every_row(served) -> None:  # type: ignore[no-untyped-def]
    _, _, env = served
    lines = (
        "".join(
            json.dumps(
                {
                    "action": "view",
                    "target": {"type": "product", "id": f"twice-{n}"},
                    "user": {"anonymousId": "twice"},
                    "occurredAt": "2026-10-01T10:00:00Z",
                }
            )
            + "\n"
            for n in range(4)
        )
        + json.dumps(
            {
                "id": "7b6b1c1e-0d6e-4a43-9b7f-2f1a4f0a9e11",
                "action": "view",
                "target": {"type": "product", "id": "twice-x"},
                "user": {"anonymousId": "twice"},
                "occurredAt": "2026-10-01T10:00:00Z",
            }
        )
        + "\n"
    )
    for _ in range(2):
        sent = cli("send", "-", env=env, stdin=lines)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip() == "accepted 5, rejected 0, unparsed 0, not stored 0"
        # send waited: the rows can be queried at once (the spool drains within a second otherwise).
        seen = cli(
            "sql",
            "SELECT uniqExact(id) FROM activities WHERE anonymous_id = 'twice'",
            "--format",
            "tsv",
            env=env,
        )
        assert seen.stdout.splitlines() == ["uniqExact(id)", "5"], seen.stderr
    counts = cli(
        "sql",
        "SELECT (SELECT count() FROM activities FINAL WHERE anonymous_id = 'twice'),"
        " (SELECT count() FROM activities WHERE anonymous_id = 'twice') FORMAT TSV",
        env=env,
    )
    assert counts.returncode == 0, counts.stderr
    # Stored twice (until the parts merge), counted once.
    assert counts.stdout.split() == ["5", "10"]
    ids = cli(
        "sql",
        "SELECT DISTINCT id FROM activities WHERE anonymous_id = 'twice'",
        "--format",
        "tsv",
        env=env,
    )
    # Derived from each line and its number; the line that has an id keeps it.
    expected = {line_id(n + 1, line) for n, line in enumerate(lines.splitlines()[:4])}
    assert set(ids.stdout.splitlines()[1:]) == expected | {"7b6b1c1e-0d6e-4a43-9b7f-2f1a4f0a9e11"}


def test_send_no_wait_and_wait_without_a_collector_here(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, env = served
    line = (
        json.dumps({"action": "view", "target": {"type": "page", "id": "w"}, "user": {"userId": "w"}}) + "\n"
    )
    quick = cli("send", "-", "--no-wait", env=env, stdin=line)
    assert quick.returncode == 0, quick.stderr
    elsewhere = cli("send", "-", "--wait", "--data-dir", str(tmp_path), env=env, stdin=line)
    assert elsewhere.returncode == 0
    assert "--wait: no collector answers on" in elsewhere.stderr


# -- serve -----------------------------------------------------------------------------------------


def test_a_second_serve_on_the_data_directory_names_the_first(served) -> None:  # type: ignore[no-untyped-def]
    proc, data, _ = served
    second = cli(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--http-listen",
        "",
        "--data-dir",
        str(data),
    )
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"activity-collector: cannot start: another collector (pid {proc.pid}) is serving the data "
        f"directory {data.resolve()}: stop it first, or pass another --data-dir"
    )
    assert "EmbeddedServer" not in second.stderr and ".cc:" not in second.stderr


def test_a_first_start_that_fails_still_prints_the_key_it_created(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = cli(
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            "",
            "--http-listen",
            "",
            "--data-dir",
            str(data),
        )
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert lines[0].startswith("no tenant yet: created tenant default and its API key, shown this once")
    assert lines[1].startswith("ak_")
    assert failed.stderr.splitlines()[-1] == (
        f"activity-collector: cannot start: listen: cannot bind 127.0.0.1:{port}: the address is taken "
        "(another collector?) or not this machine's; pass another --listen"
    )
    # gRPC's own "add_port.cc" line does not come with it.
    assert ".cc:" not in failed.stderr, failed.stderr
    assert not (data / "serve.pid").exists()


# -- sql -------------------------------------------------------------------------------------------


def test_a_query_s_own_format_is_honoured() -> None:
    assert split_format("SELECT 1 FORMAT JSON", None) == ("SELECT 1", "JSON")
    assert split_format("SELECT 1 format JSONEachRow;\n", None) == ("SELECT 1", "JSONEachRow")
    assert split_format("SELECT 1;", "tsv") == ("SELECT 1", "TabSeparatedWithNames")
    assert split_format("SELECT 'FORMAT JSON' AS f", None) == (
        "SELECT 'FORMAT JSON' AS f",
        "PrettyCompactMonoBlock",
    )
    assert split_format("SELECT 1 FORMAT JSONEachRow", "json") == ("SELECT 1", "JSONEachRow")
    with pytest.raises(FormatClash, match="the query ends in FORMAT JSON and --format tsv"):
        split_format("SELECT 1 FORMAT JSON", "tsv")


def test_sql_with_its_own_format_and_with_two(served) -> None:  # type: ignore[no-untyped-def]
    _, _, env = served
    own = cli("sql", "SELECT 1 AS one FORMAT JSON", env=env)
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["data"] == [{"one": 1}]
    two = cli("sql", "SELECT 1 FORMAT JSON", "--format", "csv", env=env)
    assert two.returncode == 2
    assert two.stderr.strip() == (
        "activity-collector sql: the query ends in FORMAT JSON and --format csv asks for CSVWithNames: "
        "drop one of them"
    )


# -- report ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["overview", "funnel", "top-targets", "sources", "sessions"])
def test_a_report_over_a_range_without_activities_says_why(served, name: str) -> None:  # type: ignore[no-untyped-def]
    _, _, env = served
    sent = cli("send", str(SAMPLE), env=env)
    assert sent.returncode == 1, sent.stderr  # two lines of the sample are invalid on purpose
    result = cli("report", name, "--from", "2026-01-01", "--to", "2026-01-31", env=env)
    assert (result.returncode, result.stdout) == (3, "")
    span = cli(
        "sql", "SELECT toDate(min(occurred_at)), toDate(max(occurred_at)) FROM activities FORMAT TSV", env=env
    )
    first, last = span.stdout.split()
    assert result.stderr.strip() == (
        f"activity-collector report: no activities from 2026-01-01 to 2026-01-31; the stored activities "
        f"span {first} to {last} - use --from/--to"
    )
    other = cli("report", name, "--tenant", "nobody", env=env)
    assert other.returncode == 3
    assert (
        other.stderr.strip()
        == "activity-collector report: no activities of tenant nobody are stored yet: nothing to report"
    )
    shown = cli("report", name, "--from", "2026-11-02", "--to", "2026-11-02", "--format", "json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip()


# -- the control socket and the data directory lock ------------------------------------------------


async def test_the_control_socket_tells_the_server_of_an_import_and_who_it_is(tmp_path: Path) -> None:
    import asyncio

    from collector.process.control import (
        ControlServer,
        ControlUnavailable,
        catalog_changed_via_control,
        info_via_control,
    )

    told: list[str | None] = []

    def changed(tenant: str | None) -> int:
        told.append(tenant)
        return 2

    path = tmp_path / "control.sock"
    control = ControlServer(
        path, lambda sql, fmt: b"", catalog_changed=changed, info=lambda: {"listen": "h:1"}
    )
    await control.start()
    try:
        assert await asyncio.to_thread(catalog_changed_via_control, path, "shop") == 2
        assert await asyncio.to_thread(catalog_changed_via_control, path, None) == 2
        info = await asyncio.to_thread(info_via_control, path)
        assert info["listen"] == "h:1" and info["pid"] == os.getpid()
    finally:
        await control.shutdown()
    assert told == ["shop", None]
    with pytest.raises(ControlUnavailable):
        catalog_changed_via_control(path, "shop")


def test_the_data_directory_lock_names_its_holder_and_goes_with_it(tmp_path: Path) -> None:
    from collector.process.control import DataDirBusy, DataDirLock

    first = DataDirLock(tmp_path)
    first.acquire()
    assert (tmp_path / "serve.pid").read_text() == f"{os.getpid()}\n"
    with pytest.raises(DataDirBusy, match=rf"another collector \(pid {os.getpid()}\) is serving"):
        DataDirLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / "serve.pid").exists()
    # A file left by a process that died holds no lock: it does not stop a start.
    (tmp_path / "serve.pid").write_text("999999\n")
    again = DataDirLock(tmp_path)
    again.acquire()
    again.release()
