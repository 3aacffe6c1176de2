"""`action_filter`: reject or drop activities by action, with glob patterns (`test_*`, `debug`).

For actions a platform sends but does not want stored (internal test traffic, a retired action):
`reject_actions` answers each such activity with a rejection naming the pattern, so that the sender
finds out; `drop_actions` acknowledges them and stores nothing, counted per pattern in the metrics.
Patterns match the canonical (normalised) action name.
"""

from __future__ import annotations

import fnmatch
import re

from core.limits import ConfigError
from core.normalize import normalize_action
from core.proto.activity.v1 import activity_pb2 as pb
from workers.processors.base import Verdict

_PATTERN = re.compile(r"^[a-z0-9_.:*?\[\]!-]{1,64}$")


def parse_patterns(setting: str, value: str) -> tuple[str, ...]:
    """A comma-separated list of action patterns, checked; ConfigError naming `setting` otherwise."""
    patterns = tuple(p.strip() for p in value.split(",") if p.strip())
    for pattern in patterns:
        if not _PATTERN.match(pattern):
            raise ConfigError(
                f"{setting}: expected comma-separated action patterns (lower-case letters, digits, "
                f"'_', '.', ':', '-' and the globs '*', '?', '[...]'), got {pattern!r}"
            )
    return patterns


class ActionFilter:
    name = "action_filter"

    def __init__(self, reject: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> None:
        self.reject = reject
        self.drop = drop
        self._reject = [(p, re.compile(fnmatch.translate(p))) for p in reject]
        self._drop = [(p, re.compile(fnmatch.translate(p))) for p in drop]
        # Verdicts by action name: a platform sends few distinct actions.
        self._memo: dict[str, Verdict | None] = {}

    active = True
    """Configured with patterns: it may judge any activity."""

    def applies(self, tenant: str) -> bool:
        return True

    def process(self, tenant: str, activity: pb.Activity) -> Verdict | None:
        action = activity.action
        try:
            return self._memo[action]
        except KeyError:
            pass
        verdict = self._judge(normalize_action(action) or action)
        if len(self._memo) < 10_000:
            self._memo[action] = verdict
        return verdict

    def screen(self, tenant: str, raw: bytes, spans: bytes) -> tuple[bytes, bytes] | None:
        return None

    def _judge(self, action: str) -> Verdict | None:
        for pattern, compiled in self._reject:
            if compiled.match(action):
                return Verdict.reject(
                    pattern, "action", f"action {action!r} is refused by {self.name} (pattern {pattern!r})"
                )
        for pattern, compiled in self._drop:
            if compiled.match(action):
                return Verdict.drop(pattern)
        return None
