"""workers.processors: the chain's order and outcomes, the action filter, its settings."""

from __future__ import annotations

import pytest
from helpers import make_activity

from collector.config import ConfigError, load_settings
from core.proto.activity.v1 import activity_pb2 as pb
from workers.processors import (
    ActionFilter,
    ProcessorChain,
    ProcessorSettings,
    Verdict,
    build_processors,
)


class Recorder:
    """A processor that records what it saw and answers from a table by action."""

    def __init__(self, name: str, verdicts: dict[str, Verdict]) -> None:
        self.name = name
        self.verdicts = verdicts
        self.seen: list[str] = []

    active = True

    def applies(self, tenant: str) -> bool:
        return True

    def process(self, tenant: str, activity: pb.Activity) -> Verdict | None:
        self.seen.append(f"{tenant}/{activity.action}")
        return self.verdicts.get(activity.action)


def test_the_first_processor_that_rejects_or_drops_decides_and_the_next_do_not_see_it() -> None:
    first = Recorder(
        "first",
        {
            "bad": Verdict.reject("no_bad", "action", "bad is refused"),
            "noise": Verdict.drop("noise"),
            "odd": Verdict.flag("odd"),
        },
    )
    second = Recorder("second", {"view": Verdict.reject("never", "action", "second rejects view")})
    chain = ProcessorChain([first, second])
    activities = [make_activity(i, action=a) for i, a in enumerate(["click", "bad", "noise", "odd", "view"])]

    result = chain.run("t1", list(enumerate(activities)))

    assert [i for i, _ in result.kept] == [0, 3]
    assert [(r.index, r.activity_id, r.processor, r.verdict.field) for r in result.refused] == [
        (1, activities[1].id, "first", "action"),
        (4, activities[4].id, "second", "action"),
    ]
    assert result.dropped == 1
    assert first.seen == ["t1/click", "t1/bad", "t1/noise", "t1/odd", "t1/view"]
    # Neither the rejected nor the dropped activity reached the second processor; the flagged one did.
    assert second.seen == ["t1/click", "t1/odd", "t1/view"]
    assert chain.stats.rejected == {("first", "no_bad"): 1, ("second", "never"): 1}
    assert chain.stats.dropped == {("first", "noise"): 1}
    assert chain.stats.flagged == {("first", "odd"): 1}


def test_an_empty_chain_is_inactive_and_keeps_everything() -> None:
    chain = build_processors(ProcessorSettings())
    assert not chain.active
    activities = [make_activity(i) for i in range(3)]
    assert chain.run("t", list(enumerate(activities))).kept == list(enumerate(activities))


def test_the_action_filter_matches_globs_on_the_canonical_action() -> None:
    f = ActionFilter(reject=("test_*",), drop=("debug", "internal.?"))
    rejected = f.process("t", make_activity(action="Test-Checkout"))
    assert rejected is not None and rejected.field == "action"
    assert "test_checkout" in rejected.message and "test_*" in rejected.message
    dropped = f.process("t", make_activity(action="debug"))
    assert dropped == Verdict.drop("debug")
    assert f.process("t", make_activity(action="internal.x")) == Verdict.drop("internal.?")
    assert f.process("t", make_activity(action="internal.xy")) is None
    assert f.process("t", make_activity(action="view")) is None
    # A reject pattern wins over a drop pattern that matches too.
    both = ActionFilter(reject=("a*",), drop=("ab",))
    verdict = both.process("t", make_activity(action="ab"))
    assert verdict is not None and verdict.reason == "a*" and verdict.message


def test_settings_build_the_filter_and_refuse_a_bad_pattern_naming_the_setting() -> None:
    settings = load_settings({"reject_actions": "test_*, qa_*", "drop_actions": "debug"}, environ={})
    chain = build_processors(settings.processors)
    assert chain.names == ("action_filter",)
    with pytest.raises(ConfigError, match=r"^drop_actions: .*'Bad Action'"):
        load_settings({"drop_actions": "ok,Bad Action"}, environ={})
    with pytest.raises(ConfigError, match=r"ACTIVITY_REJECT_ACTIONS"):
        load_settings({}, environ={"ACTIVITY_REJECT_ACTIONS": "x;y"})
