"""`activity-collector segments` and the segments of `GetProfile`, against a running collector on the
real engines: membership checked against the activities the test sent."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import grpc.aio
import pytest

from collector.cli.main import main
from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc
from core.proto.activity.v1 import profile_pb2 as ppb
from core.proto.activity.v1 import profile_pb2_grpc as ppb_grpc

pytestmark = pytest.mark.timeout(120)

HOUR = 3600
CART_ABANDONERS = {
    "all": [{"action": "add_to_cart", "within": "1d"}, {"not": {"action": "purchase", "within": "1d"}}]
}


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def act(action: str, ago_s: int, **user: str) -> pb.Activity:
    a = pb.Activity(
        id=str(uuid.uuid4()),
        action=action,
        target=pb.Target(type="product", id="sku-1"),
        user=pb.User(**user),
    )
    a.occurred_at.FromSeconds(int(time.time()) - ago_s)
    return a


async def test_segments_from_the_command_line_to_profiles(
    start_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server: CollectorServer = await start_server()
    pg = (
        "--tenant",
        "default",
        "--data-dir",
        str(server.settings.data_dir),
        "--postgres-dsn",
        server.settings.postgres_dsn,
    )
    store = (
        *pg,
        "--clickhouse-dsn",
        server.settings.effective_clickhouse_dsn,
        "--clickhouse-database",
        server.settings.clickhouse_database,
    )
    rule = tmp_path / "abandoners.json"
    rule.write_text(json.dumps(CART_ABANDONERS))
    bad = tmp_path / "bad.yaml"
    bad.write_text("all:\n  - action: add_to_cart\n    within: someday\n")

    code, _, err = await run(capsys, "segments", "create", "abandoners", "--rule", str(bad), *pg)
    assert code == 1 and "all[0].within" in err and "nothing changed" in err
    code, out, err = await run(capsys, "segments", "create", "abandoners", "--rule", str(rule), *pg)
    assert code == 0, err
    code, _, err = await run(capsys, "segments", "create", "abandoners", "--rule", str(rule), *pg)
    assert code == 1 and "--replace" in err
    code, out, _ = await run(capsys, "segments", "list", "--format", "json", *pg)
    assert [json.loads(line)["segment"] for line in out.splitlines()] == ["abandoners"]
    code, out, _ = await run(capsys, "segments", "show", "abandoners", *pg)
    assert json.loads(out) == CART_ABANDONERS

    activities = [
        # In: a cart an hour ago, no purchase.
        act("add_to_cart", HOUR, user_id="ann"),
        # Out: bought after the cart, as the same person after a login.
        act("add_to_cart", 2 * HOUR, anonymous_id="a-bob"),
        act("view", HOUR + 60, anonymous_id="a-bob", user_id="bob"),
        act("purchase", HOUR, user_id="bob"),
        # Out: the cart is older than the window.
        act("add_to_cart", 2 * 86400, user_id="cat"),
        # In: anonymous, never logged in.
        act("add_to_cart", 600, anonymous_id="a-dan"),
    ]
    async with grpc.aio.insecure_channel(server.address) as channel:
        answer = await pb_grpc.ActivityServiceStub(channel).TrackActivities(
            pb.TrackActivitiesRequest(activities=activities)
        )
        assert answer.accepted_count == len(activities)
        profiles = ppb_grpc.ProfileServiceStub(channel)
        segments = {}
        for user in (
            pb.User(user_id="ann"),
            pb.User(anonymous_id="a-bob"),
            pb.User(user_id="cat"),
            pb.User(anonymous_id="a-dan"),
        ):
            profile = (await profiles.GetProfile(ppb.GetProfileRequest(user=user))).profile
            segments[profile.person_id] = list(profile.segments)
    assert segments == {"ann": ["abandoners"], "bob": [], "cat": [], "a-dan": ["abandoners"]}

    code, out, err = await run(capsys, "segments", "members", "abandoners", "--format", "csv", *store)
    assert code == 0, err
    assert out.splitlines() == ["person", "a-dan", "ann"]
    code, out, _ = await run(capsys, "segments", "delete", "abandoners", *pg)
    assert code == 0
    code, _, err = await run(capsys, "segments", "members", "abandoners", *store)
    assert code == 1 and "no segment abandoners" in err
