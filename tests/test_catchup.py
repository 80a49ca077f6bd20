"""History and anti-entropy between in-process nodes: the late joiner, the
healed partition, the restart, the gap, the window.  What a user would see:
every line once, in one order, on every node."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import FAST_LINK, LOOPBACK, Cable, Cluster, RawPeer, Recorder, wait_for

from p2pchat import wire
from p2pchat.core.history_store import MemoryStore
from p2pchat.errors import StoreError
from p2pchat.node import GAP_GRACE_S, ORDER_HOLD_S, Node, NodeConfig


def history_texts(node: Node, n: int = 1000) -> list[str]:
    return [m.text for m in node.history(n)]


def shown(rec: Recorder) -> Counter[str]:
    """How many times each line was shown to the user of a node."""
    return Counter(m.text for m in rec.messages())


def test_a_late_joiner_sees_the_last_lines_once_and_in_order(cluster: Cluster) -> None:
    a = cluster.add("alice", link=FAST_LINK)
    b = cluster.add("bob", peers=[a], link=FAST_LINK)
    wait_for(lambda: a.has_link(b.node_id), 10, "alice and bob to link")
    said = [f"line {i}" for i in range(60)]
    for text in said:
        a.send(text)
    wait_for(lambda: len(cluster.recorders[1].messages()) == 60, 10, "bob to get 60 lines")

    c = cluster.add("carol", peers=[b], link=FAST_LINK)
    rec_c = cluster.recorders[2]
    wait_for(lambda: len(rec_c.messages()) >= 60, 15, "carol to catch up")

    got = rec_c.messages()
    assert all(m.history for m in got), "lines from before carol came are marked as earlier"
    assert [m.text for m in got] == said  # oldest first, once each
    assert history_texts(c, 50) == said[-50:] == history_texts(a, 50) == history_texts(b, 50)
    # Live lines after the catch-up are not marked as history.
    a.send("welcome, carol")
    wait_for(lambda: "welcome, carol" in rec_c.texts(), 10, "carol to get a live line")
    assert not rec_c.messages()[-1].history
    assert c.stats().catchup_in == 60


def test_a_healed_partition_leaves_every_node_with_every_line_once(
    cluster: Cluster, cables: list[Cable]
) -> None:
    # A fixed topology (no overlay dials): the cable is the only way across.
    a = cluster.add("a", link=FAST_LINK, active_target=0)
    b = cluster.add("b", peers=[a], link=FAST_LINK, active_target=0)
    c = cluster.add("c", link=FAST_LINK, active_target=0)
    d = cluster.add("d", peers=[c], link=FAST_LINK, active_target=0)
    cable = Cable(c.port)
    cables.append(cable)
    b.add_peer(LOOPBACK, cable.port)
    cluster.wait_all_know_each_other()
    a.send("before the split")
    wait_for(
        lambda: all("before the split" in r.texts() for r in cluster.recorders),
        10,
        "the first line everywhere",
    )

    cable.cut()
    wait_for(lambda: not b.has_link(c.node_id), 10, "the split")
    west = [f"west {i}" for i in range(5)]
    east = [f"east {i}" for i in range(5)]
    for w, e in zip(west, east, strict=True):
        a.send(w)
        d.send(e)
    wait_for(
        lambda: (
            all(set(west) <= set(r.texts()) for r in cluster.recorders[:2])
            and all(set(east) <= set(r.texts()) for r in cluster.recorders[2:])
        ),
        10,
        "each side to chat",
    )
    assert not set(east) & set(cluster.recorders[0].texts())

    cable.mend()
    everything = {"before the split", *west, *east}
    wait_for(
        lambda: all(everything <= set(r.texts()) for r in cluster.recorders),
        20,
        "every line on every node after healing",
    )
    for rec in cluster.recorders:
        assert max(shown(rec).values()) == 1, "no line is shown twice"
    # a and d never linked to the other side: what they missed came hop by hop.
    assert {m.text for m in cluster.recorders[0].messages() if m.history} == set(east)
    assert {m.text for m in cluster.recorders[3].messages() if m.history} == set(west)
    orders = [history_texts(n) for n in (a, b, c, d)]
    assert all(o == orders[0] for o in orders)
    assert sorted(orders[0]) == sorted(everything)


def test_a_restarted_node_gets_what_it_missed_once(cluster: Cluster, tmp_path: Path) -> None:
    data = str(tmp_path / "bob")
    a = cluster.add("alice", link=FAST_LINK)
    b = cluster.add("bob", peers=[a], link=FAST_LINK, data_dir=data)
    wait_for(lambda: a.has_link(b.node_id), 10, "the link")
    a.send("before")
    b.send("mine, before")
    wait_for(lambda: "before" in cluster.recorders[1].texts(), 10, "bob to get a line")
    bob_id = b.node_id
    b.close()

    missed = [f"while bob was away {i}" for i in range(3)]
    for text in missed:
        a.send(text)

    b2 = cluster.add("bob", peers=[a], link=FAST_LINK, data_dir=data)
    rec = cluster.recorders[-1]
    assert b2.node_id == bob_id, "the node id survives a restart"
    wait_for(lambda: set(missed) <= set(rec.texts()), 15, "bob to catch up")
    b2.send("mine, after")
    wait_for(lambda: "mine, after" in cluster.recorders[0].texts(), 10, "alice to get bob's line")
    assert [m.text for m in rec.messages() if m.history] == missed
    assert "before" not in rec.texts(), "what bob saw before is not shown again"
    assert history_texts(b2) == history_texts(a)
    assert history_texts(a) == ["before", "mine, before", *missed, "mine, after"]
    assert shown(cluster.recorders[0])["mine, after"] == 1


def test_two_nodes_cannot_share_a_data_directory(cluster: Cluster, tmp_path: Path) -> None:
    data = str(tmp_path / "shared")
    cluster.add("one", data_dir=data)
    with pytest.raises(StoreError, match="in use"):
        cluster.add("two", data_dir=data)


def test_the_window_bounds_what_is_kept_and_sent(cluster: Cluster) -> None:
    a = cluster.add("alice", link=FAST_LINK, history_max_lines=20)
    b = cluster.add("bob", peers=[a], link=FAST_LINK)
    wait_for(lambda: a.has_link(b.node_id), 10, "the link")
    said = [f"line {i}" for i in range(50)]
    for text in said:
        a.send(text)
    wait_for(lambda: len(cluster.recorders[1].messages()) == 50, 10, "bob to get them live")
    wait_for(lambda: a.stats().stored_lines <= 20, 15, "alice to drop what is beyond her window")
    assert history_texts(a) == said[-20:]
    cluster.add("carol", peers=[a], link=FAST_LINK)
    wait_for(lambda: len(cluster.recorders[-1].messages()) >= 20, 10, "carol to catch up")
    assert [m.text for m in cluster.recorders[-1].messages()] == said[-20:]


def test_a_line_overtaken_by_the_next_one_is_not_fetched(cluster: Cluster) -> None:
    # Lines overtake each other when the broadcast tree changes: a line that
    # comes within the grace is not fetched (a sync in the middle of a burst
    # would fetch the whole burst a second time).
    node = cluster.add("alice", link=FAST_LINK)
    peer = history_peer(node, cluster.room, ["history"])
    try:
        assert read_frames(peer, 1, kind=wire.Sync), "a sync when the link comes up"
        hlc = wire_hlc()
        first, third, second = (
            peer.message(wire.Chat, cluster.room, text=t, line=n, hlc=hlc + n)
            for n, t in ((1, "first"), (3, "third"), (2, "second"))
        )
        for line in (first, third, second):  # the second overtaken by the third
            peer.send(wire.encode_frame(line))
        got: list[wire.Message] = []
        deadline = time.monotonic() + GAP_GRACE_S + 1.5  # past the grace and a tick
        while time.monotonic() < deadline:
            peer.send(wire.encode_frame(wire.Keepalive()))
            frame = peer.next_message(1.0)
            assert frame is not None, "the link stays up"
            got.append(frame)
        assert not [m for m in got if isinstance(m, wire.Sync)], "nothing to fetch"
        assert history_texts(node) == ["first", "second", "third"]
    finally:
        peer.close()


def test_a_gap_in_an_origins_lines_is_fetched_soon(cluster: Cluster) -> None:
    node = cluster.add("alice", link=FAST_LINK)
    peer = history_peer(node, cluster.room, ["history"])
    try:
        assert read_frames(peer, 1, kind=wire.Sync), "a sync when the link comes up"
        # Line 3 of ours arrives live; lines 1 and 2 never did.
        line3 = peer.message(wire.Chat, cluster.room, text="third", line=3, hlc=wire_hlc())
        assert isinstance(line3, wire.Chat)
        peer.send(wire.encode_frame(line3))
        (sync,) = read_frames(peer, 1, timeout_s=3.0, kind=wire.Sync)
        assert isinstance(sync, wire.Sync), "the node asks for the missing lines within seconds"
        # Line 3 is held unshown, and stored only when shown: the sync does not list it yet.
        have = {h.origin: (h.lo, h.hi) for h in sync.have}
        assert peer.node_id not in have
        # Line 3 waits unshown for line 2, but not longer than ORDER_HOLD_S.
        rec = cluster.recorders[0]
        keepalive = wire.encode_frame(wire.Keepalive())

        def third_shown() -> bool:
            peer.send(keepalive)  # the link stays up meanwhile
            return rec.texts() == ["third"]

        wait_for(third_shown, ORDER_HOLD_S + 2, "line 3 shown")
        # Answer with lines 1 and 2 after that: they are shown as earlier lines, in order.
        lines = [
            peer.message(wire.Chat, cluster.room, text=t, line=n, hlc=line3.hlc - 10 + n)
            for n, t in ((1, "first"), (2, "second"))
        ]
        peer.send(wire.encode_frame(wire.Lines(batch=1, lines=lines)))  # type: ignore[arg-type]
        assert read_frames(peer, 1, timeout_s=3.0, kind=wire.Ack) == [wire.Ack(batch=1)]
        assert history_texts(node) == ["first", "second", "third"]
        assert [(m.text, m.history) for m in rec.messages()] == [
            ("third", False),
            ("first", True),
            ("second", True),
        ]
    finally:
        peer.close()


def wire_hlc() -> int:
    return int(wire.now_ts() * 1e6)


def read_frames(
    peer: RawPeer, n: int, timeout_s: float = 5.0, kind: type | None = None
) -> list[wire.Message]:
    """Read until ``n`` frames (of ``kind``, if given; keepalives skipped) came."""
    out: list[wire.Message] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        msg = peer.next_message(max(0.1, deadline - time.monotonic()))
        if msg is None:
            pytest.fail(f"the node closed the link; got {out}")
        if isinstance(msg, wire.Keepalive):
            continue
        if kind is None or isinstance(msg, kind):
            out.append(msg)
    return out


def history_peer(node: Node, room: str, features: list[str]) -> RawPeer:
    peer = RawPeer(node.port)
    peer.hello(room, features=features)
    return peer


def test_bad_catch_up_is_ignored_and_the_link_keeps_working(cluster: Cluster) -> None:
    node = cluster.add("alice", link=FAST_LINK)
    rec = cluster.recorders[0]
    node.send("a line of alice's")
    peer = history_peer(node, cluster.room, ["history"])
    try:
        read_frames(peer, 1, kind=wire.Sync)
        elsewhere = peer.message(wire.Chat, "another-room", text="elsewhere", line=1, hlc=1)
        forged = wire.Chat(
            id=wire.new_message_id(),
            origin=node.node_id,
            seq=99,
            name="alice",
            room=cluster.room,
            ts=wire.now_ts(),
            hops=16,
            text="forged as alice",
            line=99,
            hlc=wire_hlc(),
        )
        ancient = peer.message(wire.Chat, cluster.room, text="ancient", line=1, hlc=1)
        bad = wire.Lines(batch=1, lines=[elsewhere, forged, ancient])  # type: ignore[list-item]
        peer.send(wire.encode_frame(bad))
        assert read_frames(peer, 1, kind=wire.Ack) == [wire.Ack(batch=1)]
        peer.send(wire.encode_frame(wire.Ack(batch=12345)))  # nothing of that number was sent
        # A burst of syncs is answered, not amplified: the one line we hold
        # comes at most a few times, however many syncs asked.
        sync = wire.Sync(room=cluster.room, since=0, have=[])
        peer.send(wire.encode_frame(sync) * 50)
        batches = read_frames(peer, 1, kind=wire.Lines)
        assert [m.text for m in batches[0].lines] == ["a line of alice's"]  # type: ignore[union-attr]
        live = peer.message(wire.Chat, cluster.room, text="still here", line=2, hlc=wire_hlc())
        peer.send(wire.encode_frame(live))
        wait_for(lambda: "still here" in rec.texts(), 5, "an honest line after the bad ones")
        assert not {"elsewhere", "forged as alice", "ancient"} & set(rec.texts())
        assert peer.node_id in {m.node for m in node.snapshot().members}
        stats = node.stats()
        assert stats.frames_refused.get("wrong_room", 0) >= 1
        assert stats.catchup_out <= 5
    finally:
        peer.close()


def test_catch_up_frames_on_a_link_without_the_feature_are_ignored(cluster: Cluster) -> None:
    node = cluster.add("alice", link=FAST_LINK)
    peer = history_peer(node, cluster.room, [])
    try:
        line = peer.message(wire.Chat, cluster.room, text="pushed", line=1, hlc=wire_hlc())
        peer.send(wire.encode_frame(wire.Lines(batch=1, lines=[line])))  # type: ignore[list-item]
        peer.send(wire.encode_frame(wire.Sync(room=cluster.room, since=0, have=[])))
        hello = peer.message(wire.Chat, cluster.room, text="live")
        peer.send(wire.encode_frame(hello))
        wait_for(lambda: "live" in cluster.recorders[0].texts(), 5, "the live line")
        assert "pushed" not in cluster.recorders[0].texts()
    finally:
        peer.close()


def test_a_node_on_the_in_memory_store_catches_up_and_chats(cluster: Cluster) -> None:
    """The core's in-memory history store (the simulator's) serves a real node: it catches up
    on what was said before it came, in the agreed order, and its lines reach the room."""
    alice = cluster.add("alice", link=FAST_LINK)
    said = [alice.send(f"before bob {i}") for i in range(3)]
    rec = Recorder()
    config = NodeConfig(
        name="bob",
        room=cluster.room,
        port=0,
        interfaces=["127.0.0.1"],
        peers=[("127.0.0.1", alice.port)],
        link=FAST_LINK,
    )
    with Node(config, on_event=rec, store=MemoryStore()) as bob:
        bob.start()
        wait_for(
            lambda: [m.id for m in bob.history(10)] == [m.id for m in said], 10, "bob's catch-up"
        )
        line = bob.send("bob here")
        wait_for(
            lambda: line.id in {m.id for m in cluster.recorders[0].messages()}, 10, "bob's line"
        )
