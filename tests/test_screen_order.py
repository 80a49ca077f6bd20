"""Per-origin order on screen, between in-process nodes on 127.0.0.1 (issue 12, item 5).

What a user sees: an origin's lines in the order it said them, even when line n+1 reaches
the node before line n (a node that learnt the first lines by catch-up forwards the later
ones live at once); a line whose predecessor never comes is shown after about
``ORDER_HOLD_S``, and a line that comes after a later one was shown is marked earlier.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from conftest import FAST_LINK, Cluster, RawPeer, Recorder, wait_for

from p2pchat import wire
from p2pchat.core.order import DEFAULT_MAX_PER_ORIGIN
from p2pchat.events import MessageEvent
from p2pchat.node import ORDER_HOLD_S, SYNC_DEBOUNCE_S, Node

WORDS = ["one", "two", "three", "four", "five"]


def from_origin(rec: Recorder, origin: str) -> list[MessageEvent]:
    return [m for m in rec.messages() if m.origin == origin]


@pytest.fixture
def raw_peers() -> Iterator[Callable[[Node, str], RawPeer]]:
    made: list[RawPeer] = []

    def make(node: Node, room: str) -> RawPeer:
        peer = RawPeer(node.port)
        made.append(peer)
        peer.hello(room, features=[])
        return peer

    yield make
    for peer in made:
        peer.close()


def keep_alive(peer: RawPeer, predicate: Callable[[], bool]) -> Callable[[], bool]:
    """``predicate``, sending a keepalive on ``peer`` every 0.3 s meanwhile."""
    last = [0.0]

    def check() -> bool:
        if time.monotonic() - last[0] > 0.3:
            last[0] = time.monotonic()
            peer.send(wire.encode_frame(wire.Keepalive()))
        return predicate()

    return check


def erin_speaks_as_she_links_to_bob(cluster: Cluster, alice: Node, bob: Node) -> list[MessageEvent]:
    """A third node, erin, links to bob only and says five lines, one each
    0.3 s, from the instant it starts (before its link is up); returns what
    alice, two hops away, shows of them."""
    erin = cluster.add("erin", peers=[bob], link=FAST_LINK)
    for i, word in enumerate(WORDS):
        if i:
            time.sleep(0.3)  # erin's typing, not a wait for a condition
        erin.send(word)
    rec = cluster.recorders[0]
    wait_for(lambda: len(from_origin(rec, erin.node_id)) == 5, 10, "alice to show erin's lines")
    assert [m.text for m in alice.history(5)] == WORDS
    return from_origin(rec, erin.node_id)


def test_lines_said_while_the_first_link_comes_up_are_shown_in_order_two_hops_away(
    cluster: Cluster,
) -> None:
    # Nodes started together: alice's link to bob synced less than a second
    # ago.  bob takes erin's line 1 by catch-up and floods line 2 at once;
    # alice holds line 2, fetches line 1 and shows it in its place.
    alice = cluster.add("alice", link=FAST_LINK)
    bob = cluster.add("bob", peers=[alice], link=FAST_LINK)
    cluster.wait_all_know_each_other()
    got = erin_speaks_as_she_links_to_bob(cluster, alice, bob)
    assert [m.text for m in got] == WORDS, "alice shows erin's lines in the order said"
    assert not any(m.history for m in got), "none is marked earlier: each came within the bound"


def test_lines_said_while_the_first_link_comes_up_in_an_older_room_are_in_order(
    cluster: Cluster,
) -> None:
    # A room of two up for a while: bob's catch-up of erin's line 1 makes him
    # offer it to alice at once (a sync), so line 1 reaches alice before line
    # 2, by catch-up with nothing waiting for it: an earlier line, shown first.
    alice = cluster.add("alice", link=FAST_LINK)
    bob = cluster.add("bob", peers=[alice], link=FAST_LINK)
    cluster.wait_all_know_each_other()
    wait_for(
        lambda: all(
            link.uptime_s > SYNC_DEBOUNCE_S for n in (alice, bob) for link in n.snapshot().links
        ),
        10,
        "alice and bob linked for longer than the sync debounce",
    )
    got = erin_speaks_as_she_links_to_bob(cluster, alice, bob)
    assert [m.text for m in got] == WORDS, "alice shows erin's lines in the order said"
    assert not any(m.history for m in got[1:]), "lines 2..5 came live, in their place"


def test_a_line_that_overtook_its_predecessor_waits_for_it(
    cluster: Cluster, raw_peers: Callable[[Node, str], RawPeer]
) -> None:
    node = cluster.add("alice", link=FAST_LINK)
    peer = raw_peers(node, cluster.room)
    hlc = int(wire.now_ts() * 1e6)
    one, two = (
        peer.message(wire.Chat, cluster.room, text=t, line=n, hlc=hlc + n)
        for n, t in ((1, "one"), (2, "two"))
    )
    peer.send(wire.encode_frame(two))
    time.sleep(0.1)  # the network delaying line 1, not a wait for a condition
    peer.send(wire.encode_frame(one))
    rec = cluster.recorders[0]
    wait_for(keep_alive(peer, lambda: len(rec.messages()) == 2), 5, "both lines shown")
    assert [(m.text, m.history) for m in rec.messages()] == [("one", False), ("two", False)]


def test_a_line_whose_predecessor_never_comes_is_shown_after_the_bound(
    cluster: Cluster, raw_peers: Callable[[Node, str], RawPeer]
) -> None:
    node = cluster.add("alice", link=FAST_LINK)
    peer = raw_peers(node, cluster.room)
    hlc = int(wire.now_ts() * 1e6)
    one, three = (
        peer.message(wire.Chat, cluster.room, text=t, line=n, hlc=hlc + n)
        for n, t in ((1, "one"), (3, "three"))
    )
    rec = cluster.recorders[0]
    peer.send(wire.encode_frame(one))
    wait_for(keep_alive(peer, lambda: rec.texts() == ["one"]), 5, "line 1 shown")
    sent = time.monotonic()
    peer.send(wire.encode_frame(three))  # line 2 never comes
    wait_for(keep_alive(peer, lambda: len(rec.messages()) == 2), 5, "line 3 shown")
    waited = time.monotonic() - sent
    assert 0.8 <= waited <= ORDER_HOLD_S + 1.0, f"line 3 shown after {waited:.2f} s"
    assert [(m.text, m.history) for m in rec.messages()] == [("one", False), ("three", False)]
    # Line 2 at last: the user is told it is an earlier line.
    two = peer.message(wire.Chat, cluster.room, text="two", line=2, hlc=hlc + 2)
    peer.send(wire.encode_frame(two))
    wait_for(keep_alive(peer, lambda: len(rec.messages()) == 3), 5, "line 2 shown")
    assert (rec.messages()[-1].text, rec.messages()[-1].history) == ("two", True)
    assert [m.text for m in node.history(3)] == ["one", "two", "three"]


def test_a_sender_that_leaves_gaps_cannot_make_the_node_hold_more_than_the_cap(
    cluster: Cluster, raw_peers: Callable[[Node, str], RawPeer]
) -> None:
    node = cluster.add("alice", link=FAST_LINK)
    peer = raw_peers(node, cluster.room)
    hlc = int(wire.now_ts() * 1e6)
    cap, extra = DEFAULT_MAX_PER_ORIGIN, 20
    numbers = range(2, 2 * (cap + extra) + 1, 2)  # only even lines: a gap before each
    frames = b"".join(
        wire.encode_frame(peer.message(wire.Chat, cluster.room, text=f"l{n}", line=n, hlc=hlc + n))
        for n in numbers
    )
    peer.send(frames)
    rec = cluster.recorders[0]
    wait_for(keep_alive(peer, lambda: len(rec.messages()) == len(numbers)), 10, "every line")
    # Past the cap the oldest held lines are shown at once, counted; all in order.
    assert node.stats().rate_limited.get("order_held") == extra
    assert [m.text for m in rec.messages()] == [f"l{n}" for n in numbers]
    assert not any(m.history for m in rec.messages())


def test_old_lines_that_fill_the_gap_by_catch_up_are_in_place_but_marked_earlier(
    cluster: Cluster,
) -> None:
    # A node joins while someone speaks: that origin's live line waits for
    # its older lines, which come by catch-up. They are shown before it, but
    # as what they are: earlier lines (said an hour ago).
    node = cluster.add("alice", link=FAST_LINK)
    peer = RawPeer(node.port)
    try:
        peer.hello(cluster.room, features=["history"])
        now_us = int(wire.now_ts() * 1e6)
        hour_ago = wire.now_ts() - 3600
        third = peer.message(wire.Chat, cluster.room, text="third", line=3, hlc=now_us)
        old = [
            peer.message(
                wire.Chat,
                cluster.room,
                text=t,
                line=n,
                hlc=int(hour_ago * 1e6) + n,
                ts=hour_ago + n,
            )
            for n, t in ((1, "first"), (2, "second"))
        ]
        peer.send(wire.encode_frame(third))
        peer.send(wire.encode_frame(wire.Lines(batch=1, lines=old)))  # type: ignore[arg-type]
        rec = cluster.recorders[0]
        wait_for(keep_alive(peer, lambda: len(rec.messages()) == 3), 5, "three lines shown")
        assert [(m.text, m.history) for m in rec.messages()] == [
            ("first", True),
            ("second", True),
            ("third", False),
        ]
    finally:
        peer.close()
