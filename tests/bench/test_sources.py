"""The benchmark's children import the product from the snapshot taken at start, not the working tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import runner


def test_children_import_the_snapshot_not_the_working_tree(tmp_path: Path) -> None:
    snapshot = runner.copy_sources(tmp_path / "sources")
    found = subprocess.run(
        [sys.executable, "-c", "import collector; print(collector.__file__)"],
        cwd=runner.ROOT,  # where the benchmark starts its children
        env=runner.child_env(sources=snapshot),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert Path(found).parent == snapshot / "collector"
