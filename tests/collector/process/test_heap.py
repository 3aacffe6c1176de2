"""Start-up objects frozen out of the garbage collector's generations (collector/process/heap.py), in a
process of its own: freezing the test process would keep every test's objects for good."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT

SCRIPT = """
import gc, json, weakref
import collector.process.server  # what serve imports and builds before it freezes
from collector.process import heap

before = len(gc.get_objects())
frozen = heap.freeze_startup_objects()
after = len(gc.get_objects())

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a
made_later = weakref.ref(a)
del a, b
gc.collect()
print(json.dumps({"before": before, "frozen": frozen, "after": after,
                  "cycle_collected": made_later() is None}))
"""


def test_startup_objects_are_frozen_and_garbage_made_later_is_still_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    )
    got = json.loads(done.stdout)
    assert got["frozen"] >= 0.9 * got["before"]
    assert got["after"] < 0.01 * got["before"]
    assert got["cycle_collected"]
