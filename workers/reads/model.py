"""The read model: the people a collector was asked about, held in memory with every stored activity
of theirs, kept current by tailing `activities_by_person`.

A person is loaded from ClickHouse the first time they are asked about (their ids through
`person_links`, then their rows, one per activity id), and answered from memory after that
(`workers.reads.held`): a profile, its segments, `recently_viewed` and the purchases left out of
`also_bought` and `for_you` cost microseconds instead of a query. A person with no activity yet is held
too (empty), so that a stranger asked about again does not cost a query either.

What keeps them current is the tail: every `tail_interval_s`, and at once after each insert this
collector commits, one query lists the ids that rows written since the last look carry
(`activities_by_person.inserted_at`, a column the server fills when it writes the row, ClickHouse
schema version 14), whichever collector inserted them; the rows of the held people among those are
then read and added (one per activity id: the latest received copy). The look goes back `overlap_s`
before the previous one, so that an insert that began before it and committed after is still seen;
rows seen twice are recognised by their id. A row that links a held id to a user not known to be
theirs (a login) drops the people it concerns, who are loaded again, whole, when next asked about.

Bounded: at most `max_activities` activities are held (a person counts at least one), the least
recently asked-about people dropped first; a person with more than `max_per_person` activities is not
held (asked of ClickHouse each time). Erased and suppressed persons (`Suppressions`: their ids'
digests) are dropped as soon as the list changes, checked again before any answer from memory, and
never loaded. Counted in `ModelStats` (metrics `activity_collector_read_model_*`).

Until the first look at the table has given the tail its starting point, nothing is held and every
read goes to ClickHouse. The queries run on worker threads (the embedded engine answers synchronously).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from workers.processors.suppression import ANONYMOUS, SESSION, USER, Suppressions, id_digest
from workers.reads.people import Person, find_person, rows
from workers.reads.records import BYTES_PER_RECORD, COLUMNS, ROW_COLUMNS, Record, record
from workers.storage.analytics_schema import quote
from workers.storage.contract import QueryEngine
from workers.storage.person_schema import INSERTED_AT, PERSON_ACTIVITIES

log = logging.getLogger(__name__)

T = TypeVar("T")
Run = Callable[[Callable[[], T]], Awaitable[T]]
"""How the model runs a blocking store call: the read side's bounded worker threads."""

DEFAULT_MAX_ACTIVITIES = 500_000
DEFAULT_MAX_PER_PERSON = 2_000
DEFAULT_TAIL_INTERVAL_S = 0.5
DEFAULT_OVERLAP_S = 2.0
CATCH_UP_TIMEOUT_S = 2.0


@dataclass
class ModelStats:
    persons: int = 0
    activities: int = 0
    """Activities held (a person without any counts one)."""
    hits: int = 0
    """Reads answered from memory."""
    loads: int = 0
    """People read from ClickHouse and held."""
    passed: int = 0
    """Reads answered from ClickHouse without holding the person: too large, suppressed, asked with an
    id that is not theirs, or the model not started."""
    evicted: int = 0
    too_large: int = 0
    relinked: int = 0
    """People dropped because a new login linked one of their ids."""
    forgotten: int = 0
    """People dropped because their ids were suppressed (erasure, opt-out)."""
    tail_passes: int = 0
    tail_rows: int = 0
    tail_errors: int = 0
    tail_seconds: float = 0.0
    max_activities: int = DEFAULT_MAX_ACTIVITIES

    @property
    def bytes(self) -> int:
        return self.activities * BYTES_PER_RECORD


@dataclass
class HeldPerson:
    tenant: str
    person_id: str
    is_user: bool
    keys: tuple[str, ...]
    records: dict[str, Record] = field(default_factory=dict)
    aliases: set[tuple[str, str, str]] = field(default_factory=set)
    checked: int = -1
    """The suppression list's `changes` this person was last checked against."""

    @property
    def units(self) -> int:
        return max(1, len(self.records))

    def add(self, held: Record) -> bool:
        """Add a record (the latest received copy of an activity wins); True when it is new."""
        old = self.records.get(held.id)
        if old is not None and old.received_ms >= held.received_ms:
            return False
        self.records[held.id] = held
        return old is None


def _since(ms: int) -> str:
    return f"fromUnixTimestamp64Milli({ms})"


class ReadModel:
    def __init__(
        self,
        engine: QueryEngine,
        max_activities: int = DEFAULT_MAX_ACTIVITIES,
        max_per_person: int = DEFAULT_MAX_PER_PERSON,
        tail_interval_s: float = DEFAULT_TAIL_INTERVAL_S,
        overlap_s: float = DEFAULT_OVERLAP_S,
        suppressions: Suppressions | None = None,
        read_your_writes: bool = False,
    ) -> None:
        if max_activities <= 0:
            raise ValueError(f"read_model_max_activities: must be greater than zero, got {max_activities}")
        self.engine = engine
        self.max_activities = max_activities
        self.max_per_person = max_per_person
        self.tail_interval_s = tail_interval_s
        self.overlap_ms = int(overlap_s * 1000)
        self.suppressions = suppressions
        self.read_your_writes = read_your_writes
        self.stats = ModelStats(max_activities=max_activities)
        self._people: OrderedDict[tuple[str, str, bool], HeldPerson] = OrderedDict()
        self._by_key: dict[tuple[str, str], set[tuple[str, str, bool]]] = {}
        self._aliases: dict[tuple[str, str, str], tuple[str, str, bool]] = {}
        self._alias_keys: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        self._pending: list[tuple[HeldPerson, int]] = []
        self._watermark_ms = -1
        self._commits = 0
        self._tailed = 0
        self._suppression_changes = -1
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._tailed_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def ready(self) -> bool:
        return self._watermark_ms >= 0

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._tail_loop(), name="read-model-tail")

    async def shutdown(self, _left: float = 0.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def committed(self, _rows: int = 0, _seconds: float = 0.0) -> None:
        """This collector committed an insert: look at the table now (the pipeline's insert hook)."""
        self._commits += 1
        self._wake.set()

    async def caught_up(self, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        """With `read_your_writes`, return once a look at the table began after every insert this
        collector committed so far: a read then sees every activity acknowledged before it (when an
        acknowledgement means committed: the spool off). Otherwise at once: the tail follows within
        `tail_interval_s` of the commit, without holding reads up behind it."""
        if not self.read_your_writes:
            return
        target = self._commits
        deadline = time.monotonic() + timeout_s
        while self.ready and self._tailed < target and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._tailed_event.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tailed_event.wait(), left)

    async def wait_ready(self) -> None:
        """Return once the tail has its starting point (the model then holds what it loads)."""
        await self._ready.wait()

    # -- reads ---------------------------------------------------------------------------------------

    def lookup(
        self, tenant: str, user_id: str, anonymous_id: str = "", session_id: str = ""
    ) -> HeldPerson | None:
        """The held person the ids name, or None (not held: ask `load`)."""
        if not self.ready:
            return None
        if user_id:
            ident = (tenant, user_id, True)
            held = self._people.get(ident)
            if held is not None and any(k and k not in held.keys for k in (anonymous_id, session_id)):
                return None
        else:
            alias = self._aliases.get((tenant, anonymous_id, session_id))
            held = None if alias is None else self._people.get(alias)
        if held is None:
            return None
        if self._suppressed(held):
            self._drop(held)
            self.stats.forgotten += 1
            return None
        self._people.move_to_end((held.tenant, held.person_id, held.is_user))
        self.stats.hits += 1
        return held

    async def load(
        self, tenant: str, user_id: str, anonymous_id: str, session_id: str, run: Run[Any]
    ) -> tuple[Person, list[Record] | None]:
        """Read the person from ClickHouse (on `run`'s threads) and hold them when that is allowed:
        the person, and their records (None: more than max_per_person; ask ClickHouse itself)."""
        since = self._watermark_ms - self.overlap_ms
        limit = self.max_per_person

        def read() -> tuple[Person, list[Record] | None]:
            person = find_person(self.engine, tenant, user_id, anonymous_id, session_id)
            found = (
                rows(self.engine, f"{person.activities(COLUMNS)} LIMIT {limit + 1}") if person.keys else []
            )
            return person, None if len(found) > limit else [record(r) for r in found]

        person, records = await run(read)
        if records is None:
            self.stats.too_large += 1
            self.stats.passed += 1
        elif since < 0 or not self.ready or not person.own_keys:
            self.stats.passed += 1
        else:
            self._hold(person, records, (tenant, anonymous_id, session_id) if not user_id else None, since)
        return person, records

    # -- holding ------------------------------------------------------------------------------------

    def _hold(
        self, person: Person, records: list[Record], alias: tuple[str, str, str] | None, since: int
    ) -> None:
        ident = (person.tenant, person.person_id, bool(person.user_id))
        held = self._people.get(ident)
        if held is None or held.keys != person.keys:
            if held is not None:
                self._drop(held)
            held = HeldPerson(person.tenant, person.person_id, bool(person.user_id), person.keys)
            if self._suppressed(held):
                self.stats.passed += 1
                return
            before = 0
            for r in records:
                held.add(r)
            self._people[ident] = held
            for key in held.keys:
                self._by_key.setdefault((held.tenant, key), set()).add(ident)
            self.stats.persons += 1
            self.stats.loads += 1
            self._pending.append((held, since))
        else:
            before = held.units
            for r in records:
                held.add(r)
        self.stats.activities += held.units - before
        if alias is not None:
            held.aliases.add(alias)
            self._aliases[alias] = ident
            for key in alias[1:]:
                if key:
                    self._alias_keys.setdefault((alias[0], key), set()).add(alias)
        self._people.move_to_end(ident)
        self._evict()

    def _evict(self) -> None:
        while self.stats.activities > self.max_activities and self._people:
            _, oldest = next(iter(self._people.items()))
            self._drop(oldest)
            self.stats.evicted += 1

    def _drop(self, held: HeldPerson) -> None:
        ident = (held.tenant, held.person_id, held.is_user)
        if self._people.pop(ident, None) is None:
            return
        for key in held.keys:
            owners = self._by_key.get((held.tenant, key))
            if owners is not None:
                owners.discard(ident)
                if not owners:
                    del self._by_key[(held.tenant, key)]
        for alias in held.aliases:
            if self._aliases.get(alias) == ident:
                del self._aliases[alias]
        self.stats.persons -= 1
        self.stats.activities -= held.units

    def _drop_aliases(self, tenant: str, key: str) -> None:
        for alias in self._alias_keys.pop((tenant, key), set()):
            ident = self._aliases.pop(alias, None)
            held = None if ident is None else self._people.get(ident)
            if held is not None:
                held.aliases.discard(alias)

    def _suppressed(self, held: HeldPerson) -> bool:
        suppressions = self.suppressions
        if suppressions is None or held.checked == suppressions.changes:
            return False
        if suppressions.applies(held.tenant):
            digests = [
                id_digest(held.tenant, kind, key) for key in held.keys for kind in (USER, ANONYMOUS, SESSION)
            ]
            if suppressions.holds_any(held.tenant, digests):
                return True
        held.checked = suppressions.changes
        return False

    def _sweep_suppressed(self) -> None:
        suppressions = self.suppressions
        if suppressions is None or suppressions.changes == self._suppression_changes:
            return
        self._suppression_changes = suppressions.changes
        for held in list(self._people.values()):
            if self._suppressed(held):
                self._drop(held)
                self.stats.forgotten += 1

    # -- the tail -----------------------------------------------------------------------------------

    async def _tail_loop(self) -> None:
        while not self._stopping:
            try:
                if not self.ready:
                    found = await asyncio.to_thread(
                        rows, self.engine, "SELECT toUnixTimestamp64Milli(now64(3)) AS now"
                    )
                    self._watermark_ms = int(str(found[0]["now"]))
                    self._ready.set()
                    log.info("read model ready")
                else:
                    await self._pass()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.stats.tail_errors += 1
                log.warning("read model: looking at the new rows failed", extra={"error": str(error)})
                await asyncio.sleep(min(5.0, self.tail_interval_s * 4))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tail_interval_s)
            self._wake.clear()

    async def _pass(self) -> None:
        started = time.perf_counter()
        commits = self._commits
        self._sweep_suppressed()
        pending, self._pending = self._pending, []
        since = self._watermark_ms - self.overlap_ms
        tenants = sorted({t for t, _, _ in self._people})
        touched: set[tuple[str, str]] = set()
        now_ms = self._watermark_ms
        if tenants:
            now_ms, touched = await asyncio.to_thread(self._touched, tenants, since)
        else:
            found = await asyncio.to_thread(
                rows, self.engine, "SELECT toUnixTimestamp64Milli(now64(3)) AS now"
            )
            now_ms = int(str(found[0]["now"]))
        affected: dict[str, set[str]] = {}
        oldest = since
        if touched:
            # A pass under ingest brings tens of thousands of keys: the held keys met with them as
            # sets (an intersection of a dict's keys runs in C, over the smaller side).
            for tenant, key in (self._by_key.keys() & touched) | (self._alias_keys.keys() & touched):
                affected.setdefault(tenant, set()).add(key)
        for held, held_since in pending:
            if (held.tenant, held.person_id, held.is_user) in self._people:
                affected.setdefault(held.tenant, set()).update(held.keys)
                oldest = min(oldest, held_since)
        for tenant, wanted in affected.items():
            found_rows = await asyncio.to_thread(rows, self.engine, self._rows_sql(tenant, wanted, oldest))
            self._apply(tenant, found_rows)
        self._watermark_ms = max(self._watermark_ms, now_ms)
        self._tailed = commits
        self._tailed_event.set()
        self.stats.tail_passes += 1
        self.stats.tail_seconds += time.perf_counter() - started

    def _touched(self, tenants: list[str], since: int) -> tuple[int, set[tuple[str, str]]]:
        """The engine's clock, and the (tenant, key) of every row of `tenants` written since `since`
        (a thread's work: under ingest they are tens of thousands)."""
        found = rows(self.engine, self._touched_sql(tenants, since))
        pairs = found[0]["touched"]
        touched: set[tuple[str, str]] = set()
        if isinstance(pairs, list):
            for tenant, keys in pairs:
                if isinstance(keys, list):
                    touched.update((str(tenant), str(key)) for key in keys)
        return int(str(found[0]["now"])), touched

    @staticmethod
    def _touched_sql(tenants: list[str], since: int) -> str:
        ids = "[person_key, if(user_id != '', anonymous_id, ''), if(user_id != '', session_id, '')]"
        return (
            "SELECT toUnixTimestamp64Milli(now64(3)) AS now, groupArray((tenant_id, keys)) AS touched FROM ("
            f"SELECT toString(tenant_id) AS tenant_id, groupUniqArray(key) AS keys FROM {PERSON_ACTIVITIES} "
            f"ARRAY JOIN {ids} AS key WHERE {INSERTED_AT} > {_since(since)} "
            f"AND tenant_id IN ({', '.join(map(quote, tenants))}) AND key != '' GROUP BY tenant_id)"
        )

    @staticmethod
    def _rows_sql(tenant: str, keys: Iterable[str], since: int) -> str:
        listed = ", ".join(map(quote, sorted(keys)))
        return (
            f"SELECT {ROW_COLUMNS} FROM {PERSON_ACTIVITIES} WHERE tenant_id = {quote(tenant)} "
            f"AND {INSERTED_AT} > {_since(since)} AND (person_key IN ({listed}) OR (user_id != '' "
            f"AND (anonymous_id IN ({listed}) OR session_id IN ({listed}))))"
        )

    def _apply(self, tenant: str, found: list[dict[str, object]]) -> None:
        for row in found:
            user_id = str(row["user_id"])
            if user_id:
                for key in (str(row["anonymous_id"]), str(row["session_id"])):
                    if key:
                        self._link(tenant, user_id, key)
            owners = self._by_key.get((tenant, str(row["person_key"])))
            if not owners:
                continue
            held_record = record(row)
            self.stats.tail_rows += 1
            for ident in list(owners):
                held = self._people.get(ident)
                if held is None:
                    continue
                before = held.units
                held.add(held_record)
                self.stats.activities += held.units - before
                if len(held.records) > self.max_per_person:
                    self._drop(held)
                    self.stats.too_large += 1
        self._evict()

    def _link(self, tenant: str, user_id: str, key: str) -> None:
        """A row carried the user id with `key`: drop whoever it changes (a login not known before)."""
        concerned = set(self._by_key.get((tenant, key), set()))
        user = (tenant, user_id, True)
        if user in self._people:
            concerned.add(user)
        for ident in concerned:
            held = self._people.get(ident)
            if held is not None and (key not in held.keys or held.person_id != user_id or not held.is_user):
                self._drop(held)
                self.stats.relinked += 1
        if (tenant, key) in self._alias_keys:
            for alias in list(self._alias_keys[(tenant, key)]):
                if self._aliases.get(alias) != user:
                    self._drop_aliases(tenant, key)
                    break
