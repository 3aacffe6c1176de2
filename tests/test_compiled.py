"""The compiled modules are part of the build: a missing one is a broken build, and fails.

`setup.py` builds `core._fastpath` and `workers.enrichment._lookups` as optional extensions, so an
install without a C compiler (or with a compile error) succeeds quietly without them and the collector
runs on its pure-Python paths. The tests must not be as quiet: `compiled_module` below is the one rule
every test of a compiled module goes through. A module that does not import fails the test that asks
for it, unless `ACTIVITY_NO_COMPILER=1` says that this machine has no C compiler on purpose; then the
test is skipped, and the skip says why. The tests of the pure-Python paths run either way
(`tests/test_pure_python.py` runs them with the compiled modules switched off).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
from typing import Any

import pytest

from core import fastpath
from workers.enrichment import lookups

NO_COMPILER_ENV = "ACTIVITY_NO_COMPILER"
COMPILED_MODULES = ("core._fastpath", "workers.enrichment._lookups")


def no_compiler() -> bool:
    """True when the environment says this machine builds without a C compiler on purpose."""
    return os.environ.get(NO_COMPILER_ENV, "").strip() == "1"


def compiled_module(name: str) -> Any:
    """The compiled module `name`. Not built: fails the caller (test or module), or skips it where
    `ACTIVITY_NO_COMPILER=1`."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if no_compiler():
            pytest.skip(
                f"{name} is not built and {NO_COMPILER_ENV}=1 says this machine has no C compiler on "
                "purpose: the pure-Python path runs alone",
                allow_module_level=True,
            )
        pytest.fail(
            f"{name} is not built ({error}): a broken build. Rebuild it (pip install -e . or "
            f"python setup.py build_ext --inplace and read the compiler's errors), or set "
            f"{NO_COMPILER_ENV}=1 where no C compiler is meant to be",
            pytrace=False,
        )


@pytest.mark.parametrize("name", COMPILED_MODULES)
def test_the_compiled_module_is_built(name: str) -> None:
    module = compiled_module(name)
    assert module.__file__ is not None
    assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), module.__file__


def test_the_wrappers_use_the_compiled_modules_unless_told_not_to() -> None:
    fast = compiled_module("core._fastpath")
    loops = compiled_module("workers.enrichment._lookups")
    if fastpath.pure_python:
        assert (fastpath.available, lookups.compiled) == (False, False)
        assert lookups.lookup is lookups.lookup_py
    else:
        assert fastpath._fastpath is fast and fastpath.available
        assert lookups.compiled and lookups.lookup is loops.lookup


def test_a_missing_module_fails_unless_there_is_no_compiler_on_purpose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = "core._fastpath_that_was_never_built"
    monkeypatch.delenv(NO_COMPILER_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match="a broken build"):
        compiled_module(missing)
    monkeypatch.setenv(NO_COMPILER_ENV, "1")
    with pytest.raises(pytest.skip.Exception, match="no C compiler on purpose"):
        compiled_module(missing)
