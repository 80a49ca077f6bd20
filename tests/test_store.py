"""The SQLite store: identity and counters across restarts, one node per
directory, refusing files that are not ours, version vectors, the window."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat import history, wire
from p2pchat import store as store_mod
from p2pchat.core.history_store import MemoryStore
from p2pchat.errors import StoreError
from p2pchat.store import DB_NAME, Store

KINDS = pytest.mark.parametrize("kind", ["sqlite", "ephemeral", "memory"])
"""The rule tests run against every store: SQLite on disk (the product: an index in memory, the
lines' bodies read back from disk), the product's ephemeral store, and the core's in-memory one."""

ROOM = "lobby"
A = "a" * 16
B = "b" * 16
NOW_S = 2_000_000_000.0
NOW_US = int(NOW_S * 1e6)


def open_store(
    kind: str, max_age_s: float = 7 * 86400.0, max_lines: int = 10_000
) -> Store | MemoryStore:
    if kind == "memory":
        return MemoryStore(max_age_s, max_lines)
    if kind == "ephemeral":
        return Store.open(None, max_age_s, max_lines)
    return Store.open(tempfile.mkdtemp(prefix="store-", dir=_scratch), max_age_s, max_lines)


_scratch: str | None = None


@pytest.fixture(autouse=True, scope="module")
def scratch() -> Iterator[None]:
    """A directory for the on-disk stores of this module's tests, removed at the end."""
    global _scratch
    with tempfile.TemporaryDirectory(prefix="store-test-") as path:
        _scratch = path
        yield
        _scratch = None


def chat(
    origin: str, line: int, hlc: int, room: str = ROOM, text: str = "hi", topic: bool = False
) -> wire.Chat:
    return wire.Chat(
        topic=topic,
        id=os.urandom(16).hex(),
        origin=origin,
        seq=line,
        name="a",
        room=room,
        ts=hlc / 1e6,
        hops=16,
        text=text,
        line=line,
        hlc=hlc,
    )


def test_an_ephemeral_store_keeps_nothing_on_disk(tmp_path: Path) -> None:
    with Store.open(None) as one, Store.open(None) as two:
        assert one.ephemeral and one.path is None
        assert one.add(chat(A, 1, NOW_US))
        assert one.count(ROOM) == 1 and two.count(ROOM) == 0


def test_counters_survive_a_restart(tmp_path: Path) -> None:
    data = str(tmp_path / "node")
    with Store.open(data) as store:
        node_id = A
        seqs = [store.next_seq() for _ in range(3)]
        assert seqs == [1, 2, 3]
        own = chat(node_id, store.next_line(ROOM), NOW_US)
        store.add_own(own)
        assert store.next_line(ROOM) == 2
    with Store.open(data) as store:
        assert store.next_seq() > 3, "sequence numbers never repeat"
        assert store.next_line(ROOM) == 2
        assert store.last_hlc == NOW_US
        assert store.holds(own)
        assert store.get([own.id]) == [own]


def test_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "node"
    Store.open(str(data)).close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / DB_NAME).stat().st_mode) == 0o600


def test_a_second_node_on_one_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "node"
    Store.open(str(data)).close()
    code = (
        "import sys; from p2pchat.store import Store; s = Store.open(sys.argv[1]); "
        "print('open', flush=True); sys.stdin.read(); s.close()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match=rf"in use by another p2pchat \(pid {holder.pid}\)"):
            Store.open(str(data))
    finally:
        holder.communicate("", timeout=10)
    Store.open(str(data)).close()  # free again once the other has closed


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir()
    junk = b"my notes, not a database\n" * 100
    (data / DB_NAME).write_bytes(junk)
    with pytest.raises(StoreError, match=r"not a p2pchat database.*nothing was changed"):
        Store.open(str(data))
    assert (data / DB_NAME).read_bytes() == junk
    assert not (data / (DB_NAME + "-wal")).exists()


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir()
    db = sqlite3.connect(data / DB_NAME)
    db.execute("CREATE TABLE recipes (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a p2pchat database"):
        Store.open(str(data))
    db = sqlite3.connect(data / DB_NAME)
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("recipes",)]
    db.close()


def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    data = str(tmp_path / "node")
    Store.open(data).close()
    db = sqlite3.connect(Path(data) / DB_NAME)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer p2pchat"):
        Store.open(data)


def test_the_first_key_of_a_name_is_kept(tmp_path: Path) -> None:
    data = str(tmp_path / "node")
    with Store.open(data) as store:
        assert store.first_key("bob") is None
        store.remember_name("bob", "1" * 64)
        store.remember_name("bob", "2" * 64)
        assert store.first_key("bob") == "1" * 64
    with Store.open(data) as store:
        assert store.first_key("bob") == "1" * 64


@KINDS
def test_a_line_is_stored_once(kind: str) -> None:
    with open_store(kind) as store:
        line = chat(A, 1, NOW_US)
        assert store.add(line)
        assert not store.add(line)
        assert store.count(ROOM) == 1
        assert store.has_line(ROOM, A, 1) and not store.has_line(ROOM, A, 2)


@KINDS
def test_summary_is_the_run_from_the_lowest_line(kind: str) -> None:
    with open_store(kind) as store:
        for n in (1, 2, 3, 5):
            store.add(chat(A, n, NOW_US + n))
        store.add(chat(B, 7, NOW_US + 100))
        have = store.summary(ROOM)
        assert [(h.origin, h.lo, h.hi, h.hi_hlc) for h in have] == [
            (B, 7, 7, NOW_US + 100),
            (A, 1, 3, NOW_US + 3),
        ]
        a_ids = store.run_ids(ROOM, A, 1, 3)
        assert a_ids is not None and have[1].digest == history.run_digest(a_ids)
        assert store.run_ids(ROOM, A, 1, 5) is None, "line 4 is missing"


@KINDS
def test_missing_is_what_the_peer_lacks_oldest_first(kind: str) -> None:
    with open_store(kind) as store:
        lines = [chat(A, n, NOW_US + n) for n in range(1, 6)] + [chat(B, 1, NOW_US + 10)]
        for m in lines:
            store.add(m)
        ids = store.missing(ROOM, {A: (2, 3)}, since_hlc=0, limit=100)
        assert ids == [lines[0].id, lines[3].id, lines[4].id, lines[5].id]
        assert store.missing(ROOM, {A: (2, 3)}, since_hlc=NOW_US + 4, limit=100) == [
            lines[3].id,
            lines[4].id,
            lines[5].id,
        ]
        assert store.missing(ROOM, {}, since_hlc=0, limit=2) == [lines[4].id, lines[5].id]


@KINDS
def test_recent_is_in_one_order_with_ties_broken_by_origin_then_line(kind: str) -> None:
    with open_store(kind) as store:
        lines = [chat(B, 1, NOW_US), chat(A, 2, NOW_US), chat(A, 1, NOW_US), chat(A, 3, NOW_US - 1)]
        for m in lines:
            store.add(m)
        assert [(m.origin, m.line) for m in store.recent(ROOM, 10)] == [
            (A, 3),
            (A, 1),
            (A, 2),
            (B, 1),
        ]
        assert [(m.origin, m.line) for m in store.recent(ROOM, 2)] == [(A, 2), (B, 1)]


@KINDS
def test_the_current_topic_is_the_topic_line_last_in_the_rooms_order(kind: str) -> None:
    with open_store(kind, max_age_s=3600.0, max_lines=5) as store:
        assert store.topic(ROOM) is None
        first = chat(B, 1, NOW_US, text="first", topic=True)
        store.add(first)
        store.add(chat(A, 1, NOW_US + 5, text="a chat line, not a topic"))
        assert store.topic(ROOM) == first
        # Ties on the clock go by origin: A's sorts before B's, so B's stays.
        store.add(chat(A, 2, NOW_US, text="tied", topic=True))
        assert store.topic(ROOM) == first
        later = chat(A, 3, NOW_US + 1, text="", topic=True)  # cleared
        store.add(later)
        assert store.topic(ROOM) == later
        store.add(chat(B, 2, NOW_US - 10, text="older, caught up", topic=True))
        assert store.topic(ROOM) == later
        store.add(chat(B, 3, NOW_US - 20, text="another room", room="other", topic=True))
        assert store.topic(ROOM) == later and store.topic("other") is not None
        # The window drops the oldest lines of the room first; a topic goes with its line.
        for n in range(4, 7):
            store.add(chat(B, n, NOW_US + 10 + n))
        store.prune(NOW_S)
        assert next(m.text for m in store.recent(ROOM, 10)) == ""  # the clear kept, oldest
        assert store.topic(ROOM) == later
        store.add(chat(B, 7, NOW_US + 100))
        store.prune(NOW_S)
        assert store.topic(ROOM) is None


def test_the_current_topic_survives_a_reopen(tmp_path: Path) -> None:
    data = str(tmp_path / "node")
    mine = chat(A, 1, NOW_US + 2, text="release on friday", topic=True)
    with Store.open(data) as store:
        store.add(chat(B, 1, NOW_US + 1, text="older", topic=True))
        store.add_own(mine)  # committed at once
        store.add(chat(B, 2, NOW_US + 3, text="a chat line"))
    with Store.open(data) as store:
        assert store.topic(ROOM) == mine
        assert [m.topic for m in store.recent(ROOM, 10)] == [True, True, False]


def test_a_store_made_before_topics_gets_the_column(tmp_path: Path) -> None:
    """A database whose ``lines`` table has no ``topic`` column opens: its lines are
    no topics, and topic lines stored afterwards are found after a reopen."""
    data = tmp_path / "node"
    with Store.open(str(data)) as store:
        store.add(chat(A, 1, NOW_US, text="plain"))
    db = sqlite3.connect(str(data / DB_NAME))
    db.executescript(
        "CREATE TABLE old AS SELECT id, room, origin, line, hlc, body FROM lines;"
        "DROP TABLE lines;"
        "CREATE TABLE lines (id TEXT PRIMARY KEY, room TEXT NOT NULL, origin TEXT NOT NULL,"
        " line INTEGER NOT NULL, hlc INTEGER NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;"
        "INSERT INTO lines SELECT * FROM old; DROP TABLE old;"
    )
    db.close()
    topic = chat(B, 1, NOW_US + 1, text="new", topic=True)
    with Store.open(str(data)) as store:
        assert store.topic(ROOM) is None and store.count(ROOM) == 1
        store.add(topic)
    with Store.open(str(data)) as store:
        assert store.topic(ROOM) == topic
        assert [m.text for m in store.recent(ROOM, 10)] == ["plain", "new"]


@KINDS
def test_prune_keeps_the_window_by_age_and_by_count(kind: str) -> None:
    with open_store(kind, max_age_s=3600.0, max_lines=5) as store:
        old = chat(A, 1, NOW_US - 7200 * 10**6)
        store.add(old)
        fresh = [chat(A, n, NOW_US + n) for n in range(2, 10)]
        for m in fresh:
            store.add(m)
        assert store.prune(NOW_S) == 4
        assert [m.line for m in store.recent(ROOM, 100)] == [5, 6, 7, 8, 9]
        later = NOW_S + 1  # the floor counts only lines not in the future
        assert not store.in_window(ROOM, NOW_US + 4, later)
        assert store.in_window(ROOM, NOW_US + 5, later)
        assert store.floor(ROOM, later) == NOW_US + 5


@KINDS
def test_lines_in_the_future_never_lift_the_floor_and_are_pruned(kind: str) -> None:
    """A window's worth of lines stamped far ahead (a peer's lying clock) must not
    put the floor above the present, and the first prune (at start) removes them."""
    with open_store(kind, max_age_s=3600.0, max_lines=5) as store:
        honest = [chat(A, n, NOW_US - 10 + n) for n in range(1, 4)]
        ahead = [chat(B, n, NOW_US + 10**15 + n) for n in range(1, 7)]
        for m in honest + ahead:
            store.add(m)
        assert store.floor(ROOM, NOW_S) <= NOW_US
        assert store.prune(NOW_S) == 6
        assert [m.id for m in store.recent(ROOM, 100)] == [m.id for m in honest]


@KINDS
def test_other_rooms_are_pruned_on_their_own(kind: str) -> None:
    with open_store(kind, max_lines=2) as store:
        for n in range(1, 4):
            store.add(chat(A, n, NOW_US + n, room="one"))
            store.add(chat(A, n, NOW_US + n, room="two"))
        store.prune(NOW_S)
        assert store.count("one") == 2 and store.count("two") == 2


@KINDS
@settings(max_examples=50, deadline=None)
@given(held=st.dictionaries(st.sampled_from([A, B]), st.sets(st.integers(1, 40), min_size=1)))
def test_summary_runs_are_exact(kind: str, held: dict[str, set[int]]) -> None:
    with open_store(kind) as store:
        for origin, numbers in held.items():
            for n in numbers:
                store.add(chat(origin, n, NOW_US + n))
        have = {h.origin: h for h in store.summary(ROOM)}
        assert set(have) == set(held)
        for origin, numbers in held.items():
            h = have[origin]
            assert h.lo == min(numbers)
            assert set(range(h.lo, h.hi + 1)) <= numbers
            assert h.hi + 1 not in numbers
            assert h.hi_hlc == NOW_US + h.hi


@KINDS
def test_received_lines_in_memory_are_seen_by_every_query(kind: str) -> None:
    with open_store(kind) as store:
        lines = [chat(A, n, NOW_US + n) for n in (1, 2, 3)]
        for msg in lines:
            assert store.add(msg)
        assert not store.add(lines[1]), "a line waiting in memory is not stored twice"
        assert all(store.holds(m) for m in lines)
        assert store.has_line(ROOM, A, 2) and store.has_line(ROOM, A, 3)
        assert not store.has_line(ROOM, A, 4) and not store.has_line(ROOM, B, 1)
        assert not store.holds(chat(A, 4, NOW_US + 4))
        assert not store.holds(chat(A, 2, NOW_US + 2)), "another id with a held line number"
        assert store.count(ROOM) == 3
        assert [m.id for m in store.recent(ROOM, 10)] == [m.id for m in lines]
        assert [(h.lo, h.hi, h.hi_hlc) for h in store.summary(ROOM)] == [(1, 3, NOW_US + 3)]


def test_received_lines_still_in_memory_are_written_on_close(tmp_path: Path) -> None:
    data = str(tmp_path / "node")
    with Store.open(data) as store:
        msg = chat(A, 1, NOW_US)
        assert store.add(msg)
    with Store.open(data) as store:
        assert store.holds(msg) and store.count(ROOM) == 1


@KINDS
def test_the_names_table_is_capped(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """A flood of fresh names cannot grow the first-key table without end, and it never
    forgets the names of the members present (nor a name just used)."""
    monkeypatch.setattr(store_mod, "MAX_NAMES", 50)
    with MemoryStore(max_names=50) if kind == "memory" else open_store(kind) as store:
        store.remember_name("alice", "a" * 64)
        store.remember_name("bob", "b" * 64)
        for i in range(500):
            store.remember_name(f"fake{i}", f"{i:064x}", keep=lambda: {"alice"})
            assert store.name_count() <= 50
        assert store.first_key("alice") == "a" * 64, "a member present is kept"
        assert store.first_key("bob") is None, "an old name nobody uses goes"
        assert store.first_key("fake499") == f"{499:064x}"
        store.touch_name("fake460")
        for i in range(500, 530):
            store.remember_name(f"fake{i}", f"{i:064x}", keep=lambda: {"alice"})
        assert store.first_key("fake460") is not None, "a name touched lately is kept"


@settings(max_examples=60, deadline=None)  # on disk: each example costs a few fsyncs
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["add", "add", "add", "prune", "replace", "flush"]),
            st.sampled_from([A, B, "c" * 16]),
            st.integers(1, 12),
            st.sampled_from([-5_000, -1, 0, 1, 2, 5_000]),
        ),
        max_size=60,
    )
)
def test_the_memory_store_answers_as_the_sqlite_store_does(
    ops: list[tuple[str, str, int, int]],
) -> None:
    """Random adds, equivocation replacements, prunes and flushes (handing lines to the writer) on
    both stores (a window of 8 lines and an hour): every query answers the same, and the lines
    read back (from disk or from memory, committed or not) are the lines added."""
    sql = open_store("sqlite", max_age_s=3600.0, max_lines=8)
    mem = MemoryStore(max_age_s=3600.0, max_lines=8)
    try:
        for op, origin, line, dt_s in ops:
            if op == "prune":
                assert sql.prune(NOW_S) == mem.prune(NOW_S)
                continue
            if op == "flush":
                sql.flush()
                continue
            msg = chat(origin, line, NOW_US + dt_s * 10**6)
            held = sql.line_id(ROOM, origin, line)
            assert held == mem.line_id(ROOM, origin, line)
            if op == "replace" and held is not None:
                sql.replace(held, msg)
                mem.replace(held, msg)
            elif held is None:
                assert sql.add(msg) == mem.add(msg)
        now = NOW_S + 1
        assert sql.count(ROOM) == mem.count(ROOM)
        assert sql.floor(ROOM, now) == mem.floor(ROOM, now)
        assert sql.recent(ROOM, 100) == mem.recent(ROOM, 100)
        ids = [m.id for m in mem.recent(ROOM, 100)]
        assert sql.get(ids[::-1]) == mem.get(ids[::-1])
        assert sql.summary(ROOM) == mem.summary(ROOM)
        have = {h.origin: (h.lo, h.hi) for h in sql.summary(ROOM)[:1]}
        since = sql.floor(ROOM, now)
        assert sql.missing(ROOM, have, since, 5) == mem.missing(ROOM, have, since, 5)
    finally:
        sql.close()


def offer_line(origin: str, line: int, hlc: int, fname: str, room: str = ROOM) -> wire.Chat:
    """A file offer line (the store does not check the offer's id: admission did)."""
    offer = wire.FileOffer(
        file=os.urandom(32).hex(), fname=fname, size=10, chunk=1 << 18, root=os.urandom(32).hex()
    )
    return msgspec.structs.replace(chat(origin, line, hlc, room, text=""), offer=offer)


@KINDS
def test_the_rooms_offers_are_its_offer_lines_in_the_rooms_order(kind: str) -> None:
    with open_store(kind, max_age_s=3600.0, max_lines=4) as store:
        assert store.offers(ROOM, 10) == []
        late = offer_line(A, 1, NOW_US + 5, "late.pdf")
        early = offer_line(B, 1, NOW_US + 1, "early.pdf")
        store.add(late)
        store.add(chat(A, 2, NOW_US + 6, text="a chat line, no offer"))
        store.add(early)  # caught up: it sorts first
        store.add(offer_line(B, 2, NOW_US, "other room", room="other"))
        assert store.offers(ROOM, 10) == [early, late]
        assert store.offers(ROOM, 1) == [late]  # the newest n
        assert [m.offer is not None for m in store.recent(ROOM, 10)] == [True, True, False]
        # The window drops the oldest lines first; an offer goes with its line.
        for n in range(3, 6):
            store.add(chat(A, n, NOW_US + 10 + n))
        store.prune(NOW_S)
        assert store.offers(ROOM, 10) == []
        assert len(store.offers("other", 10)) == 1


def test_offers_survive_a_reopen_and_a_store_made_before_them_gets_the_column(
    tmp_path: Path,
) -> None:
    """A database whose ``lines`` table has no ``offer`` column (nor ``topic``)
    opens: none of its lines is an offer; offer lines stored afterwards are
    found after a reopen, whole."""
    data = tmp_path / "node"
    with Store.open(str(data)) as store:
        store.add(chat(A, 1, NOW_US, text="plain"))
    db = sqlite3.connect(str(data / DB_NAME))
    db.executescript(
        "CREATE TABLE old AS SELECT id, room, origin, line, hlc, body FROM lines;"
        "DROP TABLE lines;"
        "CREATE TABLE lines (id TEXT PRIMARY KEY, room TEXT NOT NULL, origin TEXT NOT NULL,"
        " line INTEGER NOT NULL, hlc INTEGER NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;"
        "INSERT INTO lines SELECT * FROM old; DROP TABLE old;"
    )
    db.close()
    mine = offer_line(A, 2, NOW_US + 2, "report.pdf")
    theirs = offer_line(B, 1, NOW_US + 1, "notes.txt")
    with Store.open(str(data)) as store:
        assert store.offers(ROOM, 10) == [] and store.count(ROOM) == 1
        store.add(theirs)
        store.add_own(mine)
    with Store.open(str(data)) as store:
        assert store.offers(ROOM, 10) == [theirs, mine]
        assert [m.text for m in store.recent(ROOM, 10)] == ["plain", "", ""]
