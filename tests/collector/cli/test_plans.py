"""`activity-collector plans`, run in this process against a real PostgreSQL and a running collector:
a malformed plan refused with the path of the bad node, versions kept, a plan applied while the
collector runs in force within 5 s, and the dry run over a file of activities."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from google.protobuf import json_format
from helpers import make_activity

from collector.cli.main import main
from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(90)


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def purchase(**metadata: Any) -> pb.Activity:
    return make_activity(action="purchase", metadata=pb.Metadata(**metadata))


async def test_apply_show_history_and_a_change_in_force_within_five_seconds(
    start_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The default poll interval: what an operator gets.
    server: CollectorServer = await start_server()
    flags = (
        "--tenant",
        "default",
        "--postgres-dsn",
        server.settings.postgres_dsn,
        "--data-dir",
        str(tmp_path),
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("actions:\n  purchase:\n    required: [metadata.order]\n")
    code, out, err = await run(capsys, "plans", "apply", str(bad), *flags)
    assert code == 1 and "actions.purchase.required[0]" in err and "nothing changed" in err
    code, out, _ = await run(capsys, "plans", "history", *flags)
    assert code == 0 and "never had a plan" in out

    activity = purchase(price=1999, currency="EUR")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ActivityServiceStub(channel)
        first = await stub.TrackActivity(pb.TrackActivityRequest(activity=activity))
        assert first.accepted_count == 1

        good = tmp_path / "plan.json"
        good.write_text(json.dumps({"actions": {"purchase": {"required": ["metadata.order_id"]}}}))
        code, out, _ = await run(capsys, "plans", "apply", str(good), *flags)
        assert code == 0 and "plan version 1 applied" in out
        applied = time.monotonic()
        # In force within 5 s, without restart.
        while True:
            activity.id = make_activity().id
            answer = await stub.TrackActivity(pb.TrackActivityRequest(activity=activity))
            if answer.rejections:
                break
            assert time.monotonic() - applied < 5, "the new plan was not in force within 5 s"
            await asyncio.sleep(0.1)
    assert answer.rejections[0].reason == pb.REJECTION_REASON_PLAN_VIOLATION
    assert answer.rejections[0].field == "metadata.order_id"

    code, out, _ = await run(capsys, "plans", "show", *flags)
    assert code == 0 and json.loads(out.split("\n", 1)[1]) == json.loads(good.read_text())
    code, out, _ = await run(capsys, "plans", "remove", *flags)
    assert code == 0 and "version 2" in out
    code, out, _ = await run(capsys, "plans", "history", *flags)
    lines = out.splitlines()
    assert lines[0].split() == ["version", "applied", "(UTC)", "actions", "source"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2"] and "removed" in lines[2]


async def test_check_is_a_dry_run_over_a_file_of_activities(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "unknown_actions: reject\n"
        "actions:\n"
        "  view: {}\n"
        "  purchase:\n"
        "    mode: flag\n"
        "    required: [metadata.order_id]\n"
        "    min: {metadata.quantity: 2}\n"
    )
    activities = [
        make_activity(action="view"),
        purchase(order_id="o-1", price=100, currency="EUR", quantity=2),
        purchase(price=100, currency="EUR", quantity=1),
        make_activity(action="click"),
    ]
    lines = [json_format.MessageToJson(a, indent=None) for a in activities] + ['{"action": 3}', "[]"]
    source = tmp_path / "activities.jsonl"
    source.write_text("\n".join(lines) + "\n")
    code, out, _ = await run(
        capsys,
        "plans",
        "check",
        str(source),
        "--plan",
        str(plan),
        "--tenant",
        "t",
        "--data-dir",
        str(tmp_path),
    )
    assert code == 0
    assert out.splitlines() == [
        "line 3: flag: required:metadata.order_id metadata.order_id: "
        "metadata.order_id is required for 'purchase'",
        "line 3: flag: min:metadata.quantity metadata.quantity: metadata.quantity is 1, below the minimum 2 "
        "for 'purchase'",
        "line 4: reject: unknown_action action: action 'click' is not in the plan",
        out.splitlines()[3],
        out.splitlines()[4],
        "2 accepted, 1 flagged, 1 rejected, 2 invalid",
    ]
    assert out.splitlines()[3].startswith("line 5: invalid") and out.splitlines()[4].startswith(
        "line 6: invalid"
    )
