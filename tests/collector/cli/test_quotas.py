"""`activity-collector quotas set|list|clear` against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from collector.cli.main import main


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_set_list_and_clear(
    postgres_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--postgres-dsn", postgres_dsn, "--data-dir", str(tmp_path))
    code, out, _ = await run(capsys, "quotas", "set", "--tenant", "shop", "--rate", "100", *flags)
    assert code == 0 and "100/s, burst 100" in out
    code, out, _ = await run(
        capsys, "quotas", "set", "--tenant", "lab", "--rate", "5", "--burst", "50", *flags
    )
    assert code == 0
    code, out, _ = await run(capsys, "quotas", "list", *flags)
    assert [line.split() for line in out.splitlines()[1:]] == [
        ["(default)", "0", "1"],
        ["lab", "5", "50"],
        ["shop", "100", "100"],
    ]
    code, out, _ = await run(capsys, "quotas", "clear", "--tenant", "shop", *flags)
    assert code == 0 and "default quota" in out
    code, _, err = await run(capsys, "quotas", "clear", "--tenant", "shop", *flags)
    assert code == 1 and "no quota of its own" in err


async def test_list_as_json_and_csv(
    postgres_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--postgres-dsn", postgres_dsn, "--data-dir", str(tmp_path))
    code, _, _ = await run(capsys, "quotas", "set", "--tenant", "shop", "--rate", "100", *flags)
    assert code == 0
    code, out, _ = await run(capsys, "quotas", "list", "--format", "json", *flags)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[-1] == {"tenant": "shop", "activities/s (0: none)": "100", "burst": "100"}
    code, out, _ = await run(capsys, "quotas", "list", "--format", "csv", *flags)
    assert code == 0
    assert out.splitlines()[0] == "tenant,activities/s (0: none),burst"
    assert out.splitlines()[-1] == "shop,100,100"


async def test_tenants_set_takes_a_quota_too(
    postgres_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--postgres-dsn", postgres_dsn, "--data-dir", str(tmp_path))
    code, out, err = await run(capsys, "tenants", "set", "shop", "--quota", "40", "--burst", "80", *flags)
    assert code == 0, err
    assert "40 activities/s, burst 80" in out
    code, out, _ = await run(capsys, "quotas", "list", "--format", "json", *flags)
    assert {"tenant": "shop", "activities/s (0: none)": "40", "burst": "80"} in [
        json.loads(line) for line in out.splitlines()
    ]
    code, _, err = await run(capsys, "tenants", "set", "shop", *flags)
    assert code == 1 and "--retention-days, --quota" in err
    code, _, err = await run(capsys, "tenants", "set", "shop", "--burst", "5", *flags)
    assert code == 1 and "--burst goes with --quota" in err
