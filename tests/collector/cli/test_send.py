"""`activity-collector send` as a user runs it, against a collector in this process: over TLS, with a
resend after RESOURCE_EXHAUSTED, and with every rejection and failure reported on its line."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from helpers import make_activity, self_signed_certificate, wait_for

from collector.process.server import CollectorServer
from core.proto.activity.v1 import activity_pb2 as pb
from core.proto.activity.v1 import activity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "examples" / "activities.jsonl"


async def cli(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """The command line in its own process; asynchronous, so that the collector of this event loop
    answers meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "collector.cli",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def stored(server: CollectorServer, query: str) -> list[str]:
    assert server.store is not None
    return server.store.query(query, "TabSeparated").decode().splitlines()


def line(**fields: Any) -> str:
    activity = {"action": "view", "target": {"type": "page", "id": "home"}, "user": {"userId": "u"}}
    activity.update(fields)
    return json.dumps(activity)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


async def test_send_over_tls_trusting_a_ca_file(
    start_server: Any, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    server: CollectorServer = await start_server(tls_cert_file=str(cert), tls_key_file=str(key))

    code, out, err = await cli("send", str(SAMPLE), "--target", server.address, "--ca-cert", str(cert))
    assert code == 1, err  # two lines of the sample are invalid on purpose
    assert out.splitlines() == [
        "line 4: metadata.price: metadata.price must not be negative, got -5 [OUT_OF_RANGE]",
        "line 5: target.id: target.id is required [MISSING_FIELD]",
        "accepted 3, rejected 2, unparsed 0, not stored 0",
    ]
    assert err == ""
    assert stored(server, "SELECT count() FROM activities") == ["3"]

    # --tls alone trusts the system's roots, which do not know a self-signed certificate; plain text
    # is not answered on a TLS port. Nothing more is stored.
    for flags in (["--tls"], []):
        code, out, err = await cli(
            "send", str(SAMPLE), "--target", server.address, *flags, "--attempts", "1", "--timeout", "5"
        )
        assert code == 2, (flags, out, err)
        assert "lines 1-5: not stored: UNAVAILABLE" in err, (flags, err)
        assert out.endswith("accepted 0, rejected 0, unparsed 0, not stored 5\n")
    assert stored(server, "SELECT count() FROM activities") == ["3"]

    # A CA file that cannot be used: a message and exit status 2, nothing sent.
    missing = tmp_path / "missing.pem"
    code, out, err = await cli("send", str(SAMPLE), "--target", server.address, "--ca-cert", str(missing))
    assert (code, out, err) == (
        2,
        "",
        f"activity-collector send: --ca-cert: cannot read {missing}: No such file or directory\n",
    )
    code, out, err = await cli("send", str(SAMPLE), "--target", server.address, "--ca-cert", str(SAMPLE))
    assert (code, out) == (2, "")
    assert err == f"activity-collector send: --ca-cert: {SAMPLE} holds no PEM certificate\n"


async def test_a_resend_after_resource_exhausted_counts_once(start_server: Any) -> None:
    server: CollectorServer = await start_server(
        queue_capacity=100, max_batch_activities=100, insert_workers=1, retry_delay_ms=100
    )
    assert server.store is not None and server.pipeline is not None
    # Hold the inserts until the file's activities have been refused for want of room.
    holding, release = threading.Event(), threading.Event()
    insert = server.store.insert_rows

    def held_insert(*args: Any, **kwargs: Any) -> None:
        holding.set()
        release.wait(30)
        insert(*args, **kwargs)

    server.store.insert_rows = held_insert  # type: ignore[method-assign]
    ids = [str(uuid.uuid4()) for _ in range(5)]
    lines = "".join(line(id=i, target={"type": "page", "id": f"p-{n}"}) + "\n" for n, i in enumerate(ids))
    async with grpc.aio.insecure_channel(server.address) as channel:
        filler = [make_activity(n) for n in range(100)]
        first = asyncio.ensure_future(
            pb_grpc.ActivityServiceStub(channel).TrackActivities(pb.TrackActivitiesRequest(activities=filler))
        )
        await wait_for(holding.is_set, "the queue's activities held in their insert")
        sending = asyncio.ensure_future(
            cli("send", "-", "--target", server.address, "--attempts", "100", stdin=lines)
        )
        await wait_for(
            lambda: server.pipeline is not None and server.pipeline.stats.refused >= 10, "refusals"
        )
        release.set()
        code, out, err = await sending
        assert (await first).accepted_count == 100
    assert (code, out, err) == (0, "accepted 5, rejected 0, unparsed 0, not stored 0\n", "")
    # Sent at least twice, stored once each.
    assert server.pipeline.stats.refused >= 10
    counts = stored(server, "SELECT id, count() FROM activities GROUP BY id")
    assert sorted(c.split("\t")[0] for c in counts if c.endswith("\t1")) == sorted(
        [*ids, *(a.id for a in filler)]
    )


async def test_every_rejection_is_reported_on_its_line_across_batches(server: CollectorServer) -> None:
    same = str(uuid.uuid4())
    lines = [
        line(id=same),  # 1
        "",  # 2: blank, skipped
        line(target={"type": "page"}),  # 3: no target id
        "not json",  # 4
        line(id=same, action="click"),  # 5: the id of line 1 again, in the same batch
        line(),  # 6
        line(metadata={"price": "-5"}),  # 7
        line(id=same, action="purchase"),  # 8: the id of line 1 again, in a later batch
    ]
    code, out, err = await cli(
        "send", "-", "--target", server.address, "--batch-size", "3", stdin="\n".join(lines) + "\n"
    )
    assert code == 1, err
    assert out.splitlines()[:1] == [
        "line 4: not an activity: Failed to load JSON: Expecting value: line 1 column 1 (char 0)."
    ]
    assert out.splitlines()[1:] == [
        "line 3: target.id: target.id is required [MISSING_FIELD]",
        "line 5: id: an earlier activity of this request has the same id [DUPLICATE_ID]",
        "line 7: metadata.price: metadata.price must not be negative, got -5 [OUT_OF_RANGE]",
        "accepted 3, rejected 3, unparsed 1, not stored 0",
    ]


async def test_a_refused_key_stops_the_sending_and_counts_the_rest(start_server: Any) -> None:
    server: CollectorServer = await start_server(auth=True)
    lines = "".join(line(target={"type": "page", "id": f"p-{n}"}) + "\n" for n in range(5)) + "oops\n"
    code, out, err = await cli("send", "-", "--target", server.address, "--batch-size", "2", stdin=lines)
    assert code == 2
    assert err.splitlines() == [
        "lines 1-2: not stored: UNAUTHENTICATED: missing API key: send the metadata "
        "`authorization: Bearer <key>`",
        "the server refused the API key (no key given: set ACTIVITY_API_KEY or pass --api-key); "
        "3 more activities not sent",
    ]
    assert out.splitlines() == [
        "line 6: not an activity: Failed to load JSON: Expecting value: line 1 column 1 (char 0).",
        "accepted 0, rejected 0, unparsed 1, not stored 5",
    ]


async def test_a_line_that_is_not_utf8_is_reported_alone(server: CollectorServer, tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        line().encode() + b"\n" + b'{"action": "vi\xffew"}\n' + line(action="click").encode() + b"\n"
    )
    code, out, err = await cli("send", str(path), "--target", server.address)
    assert (code, err) == (1, "")
    assert out.splitlines() == [
        "line 2: not an activity: Failed to parse action field: Unpaired surrogate at Activity.action.",
        "accepted 2, rejected 0, unparsed 1, not stored 0",
    ]
