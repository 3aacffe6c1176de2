"""workers.enrichment.lookups: enrichment's per-activity loops, the Python reference and the compiled module.

The compiled functions must behave as the reference on any batch (random ones below, with few
distinct values so that repeats, links and expiry all happen), and the reference must do what
enrichment documents (the examples)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_compiled import compiled_module

from core import fastpath
from workers.enrichment import lookups

COMPILED = "workers.enrichment._lookups"


@pytest.fixture(scope="module")
def compiled() -> Any:
    """The compiled module. Not built: its tests fail (a broken build), or are skipped where
    ACTIVITY_NO_COMPILER=1 (tests/test_compiled.py); the reference's tests run either way."""
    return compiled_module(COMPILED)


MISSING = object()

ids = st.sampled_from(["", "a", "b", "c", "d"])
users = st.sampled_from(["", "u1", "u2", "u3"])
key_tuples = st.tuples(
    st.sampled_from(["product", "page"]), ids, users, ids, ids, st.sampled_from(["", "ua1", "ua2"])
)


def test_the_compiled_module_is_used_whenever_the_fast_path_is() -> None:
    # Both are optional extensions of the same build, switched off together by ACTIVITY_PURE_PYTHON.
    assert lookups.compiled == fastpath.available
    if lookups.compiled:
        assert lookups.lookup is compiled_module(COMPILED).lookup
    else:
        assert (lookups.lookup, lookups.stitch, lookups.join) == (
            lookups.lookup_py,
            lookups.stitch_py,
            lookups.join_py,
        )


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(key_tuples, max_size=40),
    entries=st.dictionaries(
        st.tuples(st.just("t"), st.sampled_from(["product", "page"]), ids), st.binary(max_size=3)
    ),
    expires=st.lists(st.sampled_from([1.0, 5.0, 9.0]), min_size=60, max_size=60),
    prefix=st.sampled_from(["t", None]),
)
def test_lookup_agrees_with_the_reference(
    keys: list[tuple[str, ...]],
    entries: dict[tuple[str, ...], bytes],
    expires: list[float],
    prefix: str | None,
    compiled: Any,
) -> None:
    columns = (0, 1)
    table: dict[Any, Any] = entries if prefix else {k[1:]: v for k, v in entries.items()}
    assert compiled.lookup(table, keys, columns, prefix, None, MISSING) == lookups.lookup_py(
        table, keys, columns, prefix, None, MISSING
    )
    timed = {k: (expires[n % len(expires)], v) for n, (k, v) in enumerate(table.items())}
    assert compiled.lookup(timed, keys, columns, prefix, 5.0, MISSING) == lookups.lookup_py(
        timed, keys, columns, prefix, 5.0, MISSING
    )
    single = {"ua1": b"x"}
    assert compiled.lookup(single, keys, (5,), None, None, None) == lookups.lookup_py(
        single, keys, (5,), None, None, None
    )


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(key_tuples, max_size=40),
    anonymous=st.dictionaries(ids.filter(bool), users.filter(bool)),
    sessions=st.dictionaries(ids.filter(bool), users.filter(bool)),
)
def test_stitch_agrees_with_the_reference(
    keys: list[tuple[str, ...]], anonymous: dict[str, str], sessions: dict[str, str], compiled: Any
) -> None:
    a1, s1, a2, s2 = dict(anonymous), dict(sessions), dict(anonymous), dict(sessions)
    assert compiled.stitch(keys, a1, s1, "anon", "session") == lookups.stitch_py(
        keys, a2, s2, "anon", "session"
    )
    assert (a1, s1) == (a2, s2)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=3)), st.sampled_from([b"", b"ab", None, MISSING]), users
        ),
        max_size=30,
    )
)
def test_join_agrees_with_the_reference(rows: list[tuple[Any, Any, str]], compiled: Any) -> None:
    columns = tuple(list(column) for column in zip(*rows, strict=True)) if rows else ([], [], [])
    tables = (None, None, {"u1": b"<u1>", "u2": b"<u2>"})
    assert compiled.join(columns, tables) == lookups.join_py(columns, tables)


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_lookup_reports_each_absent_key_once_with_its_positions(impl: str) -> None:
    lookup = compiled_module(COMPILED).lookup if impl == "compiled" else lookups.lookup_py
    keys = [("product", "1"), ("product", "2"), ("product", "1"), ("page", "home")]
    table = {("t", "product", "2"): (10.0, b"two"), ("t", "page", "home"): (3.0, b"stale")}
    values, misses = lookup(table, keys, (0, 1), "t", 5.0, MISSING)
    assert values == [MISSING, b"two", MISSING, MISSING]
    assert misses == {("t", "product", "1"): [0, 2], ("t", "page", "home"): [3]}


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_stitch_follows_the_batch_order(impl: str) -> None:
    stitch = compiled_module(COMPILED).stitch if impl == "compiled" else lookups.stitch_py
    keys = [
        ("product", "1", "", "anon-1", "s-1", ""),  # before the login: the link known before, if any
        ("product", "1", "alice", "anon-1", "s-1", ""),  # login: links anon-1 and s-1 to alice
        ("product", "1", "", "anon-1", "", ""),  # after: alice
        ("product", "1", "", "", "s-1", ""),  # by the session: alice
        ("product", "1", "bob", "anon-1", "", ""),  # the latest user wins
        ("product", "1", "", "anon-1", "s-1", ""),  # bob (anonymous id first)
        ("product", "1", "", "", "", ""),  # nothing to resolve: not counted
    ]
    anonymous = {"anon-1": "carol"}
    sessions: dict[str, str] = {}
    resolved, changes, enriched, unknown = stitch(keys, anonymous, sessions, "anon", "session")
    assert resolved == ["carol", "alice", "alice", "alice", "bob", "bob", ""]
    assert changes == [("anon", "anon-1", "alice"), ("session", "s-1", "alice"), ("anon", "anon-1", "bob")]
    assert (enriched, unknown) == (4, 0)
    assert anonymous == {"anon-1": "bob"} and sessions == {"s-1": "alice"}


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_join_concatenates_and_skips_what_is_not_bytes(impl: str) -> None:
    join = compiled_module(COMPILED).join if impl == "compiled" else lookups.join_py
    out = join(
        ([b"ua", b"", b"ua"], [b"T", None, MISSING], ["u1", "", "nobody"]), (None, None, {"u1": b"<u1>"})
    )
    assert out == [b"uaT<u1>", b"", b"ua"]
    with pytest.raises(ValueError, match="differ in length"):
        join(([b""], []), (None, None))


def test_the_compiled_functions_refuse_bad_arguments_instead_of_crashing(compiled: Any) -> None:
    with pytest.raises(TypeError):
        compiled.lookup({}, ["not a tuple"], (0,), None, None, None)
    with pytest.raises(IndexError):
        compiled.lookup({}, [("a",)], (3,), None, None, None)
    with pytest.raises(TypeError):
        compiled.lookup({"a": "not a pair"}, [("a",)], (0,), None, 1.0, None)
    with pytest.raises(TypeError):
        compiled.stitch([("too", "short")], {}, {}, "anon", "session")
    with pytest.raises(TypeError):
        compiled.join(([b""],), ("not a dict",))
