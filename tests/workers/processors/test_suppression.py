"""The `suppression` processor: drops the activities of suppressed persons, by any of their ids, per
tenant; keeps what this collector added until a refresh of the list holds it."""

from __future__ import annotations

from helpers import make_activity

from core.proto.activity.v1 import activity_pb2 as pb
from workers.processors import ProcessorChain
from workers.processors.base import Action
from workers.processors.suppression import Suppressions, id_digest


def test_an_activity_with_any_suppressed_id_is_dropped_and_counted() -> None:
    suppressions = Suppressions({"shop-a": [id_digest("shop-a", "anonymous", "anon-1")]})
    chain = ProcessorChain([suppressions])
    assert chain.applies("shop-a") and not chain.applies("shop-b")
    theirs = make_activity(1, user=pb.User(anonymous_id="anon-1", session_id="s-9"))
    others = make_activity(2, user=pb.User(user_id="anon-1"))  # the same text as a user id: not theirs
    verdict = suppressions.process("shop-a", theirs)
    assert verdict is not None and verdict.action is Action.DROP and verdict.reason == "suppressed"
    assert suppressions.process("shop-a", others) is None
    assert suppressions.process("shop-b", theirs) is None
    result = chain.run("shop-a", [(0, theirs), (1, others)])
    assert result.dropped == 1 and [i for i, _ in result.kept] == [1]
    assert suppressions.suppressed == {"shop-a": 2}
    assert chain.stats.dropped == {("suppression", "suppressed"): 1}


def test_added_digests_outlive_a_refresh_read_before_them_and_removed_ones_go() -> None:
    suppressions = Suppressions()
    assert not suppressions.active
    digest = id_digest("shop-a", "user", "u-1")
    suppressions.add("shop-a", [digest])
    # A refresh that read the list before the digest was committed: the digest stays.
    suppressions.replace({}, 1)
    assert suppressions.covers("shop-a", [digest])
    # Once a read holds it, the store decides: lifted there, lifted here at the next refresh.
    suppressions.replace({"shop-a": [digest]}, 2)
    suppressions.replace({}, 3)
    assert not suppressions.applies("shop-a")
    suppressions.add("shop-a", [digest])
    suppressions.remove("shop-a", [digest])
    suppressions.replace({}, 4)
    assert not suppressions.active
