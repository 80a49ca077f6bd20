"""The store's writer thread: nothing that runs under the node's lock waits on the disk,
every query sees every line added, everything added is on disk after close, own lines are
on disk (after the received lines before them) when add_own returns, and no thread is left."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_LINK, Cluster, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat import store as store_mod
from p2pchat import wire
from p2pchat.core.history_store import MemoryStore
from p2pchat.errors import LocalError
from p2pchat.store import DB_NAME, WRITER_THREAD, Store

ROOM = "lobby"
A = "a" * 16
B = "b" * 16
NOW_S = time.time()
NOW_US = int(NOW_S * 1e6)
PROMPT_S = 0.5
"""Each call on a stalled disk must return within this (the stall lasts 30 s)."""


def chat(origin: str, line: int, hlc: int, room: str = ROOM) -> wire.Chat:
    return wire.Chat(
        id=os.urandom(16).hex(),
        origin=origin,
        seq=line,
        name="a",
        room=room,
        ts=hlc / 1e6,
        hops=16,
        text=f"line {line}",
        line=line,
        hlc=hlc,
    )


def on_disk(data: Path) -> set[str]:
    """The ids committed in the database (read on a connection of our own)."""
    db = sqlite3.connect(f"file:{data / DB_NAME}?mode=ro", uri=True)
    try:
        return {str(r[0]) for r in db.execute("SELECT id FROM lines")}
    finally:
        db.close()


class Stall:
    """Makes a store's writer wait in its commit until released."""

    def __init__(self, store: Store) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        real = store._commit

        def commit(db: sqlite3.Connection) -> None:
            self.entered.set()
            self.gate.wait(30.0)
            real(db)

        store._commit = commit  # type: ignore[method-assign]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture
def stalled(data: Path) -> Iterator[tuple[Store, Stall]]:
    """An on-disk store whose writer is stuck in a commit (released at the end)."""
    store = Store.open(str(data))
    stall = Stall(store)
    try:
        store.add(chat(B, 1, NOW_US))
        store.flush()
        wait_for(stall.entered.is_set, 5.0, "the writer to start its commit")
        yield store, stall
    finally:
        stall.gate.set()
        store.close()


def prompt(call: Callable[[], Any]) -> Any:
    """Run ``call``; fail unless it returns within :data:`PROMPT_S`."""
    start = time.monotonic()
    out = call()
    took = time.monotonic() - start
    assert took < PROMPT_S, f"{call} waited {took:.2f} s on the disk"
    return out


def test_nothing_waits_on_a_slow_disk_and_every_query_sees_every_line(
    stalled: tuple[Store, Stall], data: Path
) -> None:
    store, stall = stalled
    lines = [chat(A, n, NOW_US + n) for n in range(1, 201)]  # more than WRITE_EVERY: handed over
    for msg in lines:
        assert prompt(partial(store.add, msg))
    prompt(store.flush)
    assert prompt(lambda: store.has_line(ROOM, A, 200)) and store.has_line(ROOM, A, 1)
    assert prompt(lambda: store.holds(lines[99]))
    assert prompt(lambda: store.get([lines[5].id, lines[150].id])) == [lines[5], lines[150]]
    have = prompt(lambda: store.summary(ROOM))
    assert [(h.origin, h.lo, h.hi) for h in have] == [(A, 1, 200), (B, 1, 1)]
    assert prompt(lambda: store.count(ROOM)) == 201
    assert prompt(lambda: store.line_id(ROOM, A, 7)) == lines[6].id
    assert prompt(lambda: store.run_ids(ROOM, A, 1, 3)) == [m.id for m in lines[:3]]
    assert prompt(lambda: store.missing(ROOM, {A: (1, 199), B: (1, 1)}, 0, 10)) == [lines[199].id]
    assert [m.id for m in prompt(lambda: store.recent(ROOM, 2))] == [m.id for m in lines[-2:]]
    better = chat(A, 3, NOW_US + 3)
    prompt(lambda: store.replace(lines[2].id, better))
    assert store.line_id(ROOM, A, 3) == better.id and not store.holds(lines[2])
    assert prompt(lambda: [store.next_seq() for _ in range(400)])[-1] == 400
    store.max_lines = 150
    assert prompt(lambda: store.prune(NOW_S)) == 51
    assert prompt(lambda: store.count(ROOM)) == 150
    assert on_disk(data) == set(), "nothing was committed yet: the writer is stuck"
    stall.gate.set()
    store.close()
    with Store.open(str(data)) as again:
        assert again.count(ROOM) == 150
        assert [m.id for m in again.recent(ROOM, 150)] == [m.id for m in lines[-150:]]
        assert again.next_seq() > 400


def test_add_own_waits_for_its_commit_while_others_do_not(
    stalled: tuple[Store, Stall], data: Path
) -> None:
    store, stall = stalled
    received = [chat(B, n, NOW_US + n) for n in range(2, 5)]
    for msg in received:
        store.add(msg)
    own = chat(A, store.next_line(ROOM), NOW_US + 10)
    returned = threading.Event()
    errors: list[BaseException] = []

    def send() -> None:
        try:
            store.add_own(own)
        except BaseException as exc:
            errors.append(exc)
        returned.set()

    sender = threading.Thread(target=send, name="test-add-own")
    sender.start()
    try:
        assert not returned.wait(0.3), "add_own returned before its line was on disk"
        late = chat(B, 5, NOW_US + 5)
        assert prompt(lambda: store.add(late))  # a link thread goes on
        assert prompt(lambda: store.has_line(ROOM, B, 4))
        prompt(store.flush)
        stall.gate.set()
        wait_for(returned.is_set, 10.0, "add_own to return once the disk answers")
    finally:
        stall.gate.set()
        sender.join(10.0)
    assert not errors
    disk = on_disk(data)
    assert own.id in disk, "on disk when add_own returns"
    assert {m.id for m in received} <= disk, "with the received lines added before it"
    assert store.holds(own) and store.next_line(ROOM) == 2 and store.last_hlc == own.hlc
    assert store.get([m.id for m in [*received, own]]) == [*received, own], "read back from disk"
    assert [m.id for m in store.recent(ROOM, 2)] == [late.id, own.id]


def test_a_refused_commit_refuses_the_own_line_and_keeps_received_lines_in_memory(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Store.open(str(data)) as store:
        real = store._commit

        def full(db: sqlite3.Connection) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        store._commit = full  # type: ignore[method-assign]
        got = chat(B, 1, NOW_US)
        assert store.add(got)
        own = chat(A, 1, NOW_US + 1)
        with (
            caplog.at_level(logging.ERROR, logger="p2pchat.store"),
            pytest.raises(LocalError, match="disk is full"),
        ):
            store.add_own(own)
        assert "could not write 2 lines" in caplog.text
        assert not store.holds(own) and store.next_line(ROOM) == 1, "the number is free again"
        assert store.holds(got), "the running node still serves it; catch-up heals the disk"
        store._commit = real  # type: ignore[method-assign]
        store.add_own(own)
    assert on_disk(data) == {own.id}


def test_close_commits_everything_and_leaves_no_thread(data: Path) -> None:
    store = Store.open(str(data))
    writers = [t for t in threading.enumerate() if t.name == WRITER_THREAD]
    assert len(writers) == 1 and writers[0].is_alive()
    lines = [chat(A, n, NOW_US + n) for n in range(1, 301)]
    for msg in lines:
        store.add(msg)
    store.remember_name("alice", "1" * 64)
    store.close()
    assert not writers[0].is_alive()
    assert WRITER_THREAD not in {t.name for t in threading.enumerate()}
    assert on_disk(data) == {m.id for m in lines}
    with Store.open(str(data)) as again:
        assert again.first_key("alice") == "1" * 64
        assert again.get([m.id for m in lines]) == lines


def test_an_ephemeral_store_has_no_writer() -> None:
    before = {t.name for t in threading.enumerate()}
    with Store.open(None) as store:
        assert store.add(chat(A, 1, NOW_US))
        assert WRITER_THREAD not in {t.name for t in threading.enumerate()} - before


def test_a_full_writer_queue_makes_flush_wait_a_bounded_time(
    data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk so slow that the writer falls behind: flush waits FLUSH_WAIT_S, says so, and
    keeps the lines in memory; nothing is lost once the disk answers."""
    monkeypatch.setattr(store_mod, "WRITER_QUEUE", 2)
    monkeypatch.setattr(store_mod, "FLUSH_WAIT_S", 0.2)
    store = Store.open(str(data))
    stall = Stall(store)
    lines = [chat(A, n, NOW_US + n) for n in range(1, 6)]
    try:
        store.add(lines[0])
        store.flush()
        wait_for(stall.entered.is_set, 5.0, "the writer to start its commit")
        for msg in lines[1:3]:  # two batches fill the queue
            store.add(msg)
            store.flush()
        store.add(lines[3])
        with caplog.at_level(logging.WARNING, logger="p2pchat.store"):
            start = time.monotonic()
            store.flush()
            took = time.monotonic() - start
        assert 0.15 <= took < 0.2 + PROMPT_S, took
        assert "the store's writer is behind" in caplog.text
        assert store.writer_stalls == 1
        assert store.add(lines[4]) and all(store.holds(m) for m in lines)
    finally:
        stall.gate.set()
        store.close()
    assert on_disk(data) == {m.id for m in lines}


_CRASH = """
import os, sys, time
from p2pchat import wire
from p2pchat.store import Store

def chat(origin, line, hlc):
    return wire.Chat(id=os.urandom(16).hex(), origin=origin, seq=line, name="a", room="lobby",
                     ts=hlc / 1e6, hops=16, text="x", line=line, hlc=hlc)

now = int(time.time() * 1e6)
store = Store.open(sys.argv[1])
before = [chat("b" * 16, n, now + n) for n in (1, 2, 3)]
for msg in before:
    store.add(msg)
own = chat("a" * 16, 1, now + 10)
store.add_own(own)
print(" ".join([m.id for m in before] + [own.id]), flush=True)
for n in range(4, 100):
    store.add(chat("b" * 16, n, now + n))
os._exit(0)  # a crash: no close
"""


def test_a_crash_loses_at_most_the_received_lines_not_yet_committed(data: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CRASH, str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        check=True,
    )
    kept = out.stdout.split()
    assert len(kept) == 4
    with Store.open(str(data)) as store:
        assert [m.id for m in store.get(kept)] == kept, "the own line and those before it"
        assert store.next_line(ROOM) == 2
        have = {h.origin: (h.lo, h.hi) for h in store.summary(ROOM)}
        assert have[A] == (1, 1) and have[B][0] == 1 and have[B][1] >= 3


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["add", "add", "add", "prune", "replace", "flush", "own"]),
            st.sampled_from([A, B, "c" * 16]),
            st.integers(1, 12),
            st.sampled_from([-5_000, -1, 0, 1, 2, 5_000]),
        ),
        max_size=60,
    )
)
def test_the_disk_after_close_holds_what_memory_held(ops: list[tuple[str, str, int, int]]) -> None:
    """Random adds, own lines, equivocation replacements, prunes and flushes on an on-disk store
    (a window of 8 lines and an hour), next to the in-memory store: reopened, it answers the
    same, so the writer replayed every change in order."""
    mem = MemoryStore(max_age_s=3600.0, max_lines=8)
    now_s = NOW_S
    now_us = int(now_s * 1e6)
    with tempfile.TemporaryDirectory(prefix="store-writer-") as tmp:
        with Store.open(tmp, max_age_s=3600.0, max_lines=8) as sql:
            own_line = 0
            for op, origin, line, dt_s in ops:
                if op == "prune":
                    assert sql.prune(now_s) == mem.prune(now_s)
                    continue
                if op == "flush":
                    sql.flush()
                    continue
                if op == "own":
                    own_line += 1
                    msg = chat(A, own_line, now_us + own_line)
                    sql.add_own(msg)
                    mem.add_own(msg)
                    continue
                msg = chat(origin, line, now_us + dt_s * 10**6)
                held = sql.line_id(ROOM, origin, line)
                assert held == mem.line_id(ROOM, origin, line)
                if op == "replace" and held is not None:
                    sql.replace(held, msg)
                    mem.replace(held, msg)
                elif held is None:
                    assert sql.add(msg) == mem.add(msg)
        with Store.open(tmp, max_age_s=3600.0, max_lines=8) as again:
            later = now_s + 1
            assert again.count(ROOM) == mem.count(ROOM)
            assert [m.id for m in again.recent(ROOM, 100)] == [m.id for m in mem.recent(ROOM, 100)]
            assert again.summary(ROOM) == mem.summary(ROOM)
            assert again.floor(ROOM, later) == mem.floor(ROOM, later)
            assert again.next_line(ROOM) == mem.next_line(ROOM)


def _has(cluster: Cluster, i: int, text: str) -> bool:
    return text in cluster.recorders[i].texts()


def test_a_node_whose_disk_stalls_still_relays_and_shows_lines(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice - bob - carol, bob on disk: bob's commits hang, and lines still reach bob and carol
    at once (bob's link readers, router and /history never wait on his disk)."""
    gate = threading.Event()
    stalled = threading.Event()
    real = Store._commit

    def commit(self: Store, db: sqlite3.Connection) -> None:
        stalled.set()
        gate.wait(30.0)
        real(self, db)

    monkeypatch.setattr(Store, "_commit", commit)
    try:
        a = cluster.add("alice", link=FAST_LINK)
        b = cluster.add("bob", peers=[a], link=FAST_LINK, data_dir=str(tmp_path / "bob"))
        cluster.add("carol", peers=[b], link=FAST_LINK)
        cluster.wait_all_know_each_other()
        a.send("one")
        wait_for(stalled.is_set, 10.0, "bob's writer to start a commit")
        texts = [f"while bob's disk hangs {i}" for i in range(5)]
        for text in texts:
            start = time.monotonic()
            a.send(text)
            wait_for(partial(_has, cluster, 1, text), 3.0, "bob to get it")
            wait_for(partial(_has, cluster, 2, text), 3.0, "carol to get it")
            assert time.monotonic() - start < 3.0
        wait_for(lambda: [m.text for m in b.history(5)] == texts, 3.0, "bob's /history")
        assert stalled.is_set() and not gate.is_set(), "all of it while bob's commit hung"
    finally:
        gate.set()
