"""The protocol core's rules, on nodes joined in memory (issue 12): no sockets, no sleeps.

Each test builds a few :class:`~p2pchat.core.protocol.Protocol` instances in
:class:`corenet.CoreNet` (virtual time, frames queued per link direction and delivered
decoded) and asserts what a user would see: the events a front end gets, ``/history``,
the ``/stats`` counters.  Hostile peers (:class:`corenet.RawPeer`) build their frames with
:mod:`p2pchat.wire` and sign them with keys of their own.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from corenet import CoreNet, CoreNode, Link, Refused

from p2pchat import wire
from p2pchat.core.antientropy import GAP_GRACE_S
from p2pchat.core.membership import GONE_DELAY_S, SUSPECT_S
from p2pchat.core.protocol import TICK_S
from p2pchat.core.state import BAD_SIGNATURES_PER_LINK, ORDER_HOLD_S
from p2pchat.errors import LineTooLong, UsageError
from p2pchat.events import (
    AwayEvent,
    JoinEvent,
    LeaveEvent,
    MessageEvent,
    NickEvent,
    PeerDown,
    PeerUp,
    TopicEvent,
)
from p2pchat.identity import Identity

SETTLE_S = 2.0
"""Virtual seconds for new links to trade their joins, syncs and presences."""


def shown(node: CoreNode) -> list[tuple[str, str, bool]]:
    """``(who, text, shown as an earlier line)`` of each chat line ``node`` showed."""
    return [(e.display, e.text, e.history) for e in node.messages()]


def line_of(net: CoreNet, *names: str, **config: object) -> list[CoreNode]:
    """Nodes linked in a line, settled."""
    nodes = [net.add(n, **config) for n in names]  # type: ignore[arg-type]
    net.line(nodes)
    net.tick_all(SETTLE_S)
    return nodes


# -- the tie-break -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "order",
    [
        ("1out", "1in", "2out", "2in"),  # one link up on both sides, then the second
        ("1out", "2out", "1in", "2in"),  # crossed: alice sees link 1 first, bob link 2
        ("2in", "1in", "2out", "1out"),
    ],
)
def test_two_links_between_two_nodes_one_stays_the_one_the_lower_id_dialled(
    order: tuple[str, ...],
) -> None:
    net = CoreNet(seed=3)
    alice, bob = net.add("alice"), net.add("bob")
    one = net.connect(alice, bob, up=False)  # both dial each other at once
    two = net.connect(bob, alice, up=False)
    assert isinstance(one, Link) and isinstance(two, Link)
    ends = {"1out": one.out, "1in": one.into, "2out": two.out, "2in": two.into}
    for name in order:
        net.up(ends[name])
    net.tick_all(SETTLE_S)

    kept = one if alice.node_id < bob.node_id else two  # dialled by the lower id
    assert set(net.links) == {kept.out.number}
    assert alice.core.links == {bob.node_id: kept.out if kept is one else kept.into}
    assert bob.core.links == {alice.node_id: kept.into if kept is one else kept.out}
    for node, other in ((alice, bob), (bob, alice)):
        assert [e.peer for e in node.of(PeerUp)] == [other.node_id]  # one peer_up, ever
        assert node.of(PeerDown) == []
        assert [e.origin for e in node.of(JoinEvent)] == [other.node_id]
    net.say(alice, "one link")
    net.tick_all(1.0)
    assert shown(bob) == [("alice", "one link", False)]


def test_nodes_that_find_each_other_dial_each_other_and_keep_one_link_a_pair() -> None:
    net = CoreNet(seed=7)
    nodes = [net.add(n) for n in ("a", "b", "c", "d")]
    for node in nodes:  # as mDNS shows every node to every other, at once
        for other in nodes:
            if other is not node:
                net.found(node, other)
    net.tick_all(SETTLE_S)
    assert sum(len(n.dials) for n in nodes) >= 6  # both ends of some pairs dialled
    assert len(net.links) == 6  # one link per pair: crossed dials were retired
    for node in nodes:
        others = {n.node_id for n in nodes} - {node.node_id}
        assert node.core.links.keys() == others
        assert sorted(e.peer for e in node.of(PeerUp)) == sorted(others)  # once each
        assert node.of(PeerDown) == []
    net.say(nodes[0], "all here?")
    net.tick_all(1.0)
    assert all(n.texts() == ["all here?"] for n in nodes)


# -- the handshake policy ------------------------------------------------------------------


def test_a_node_refuses_a_link_to_itself() -> None:
    net = CoreNet()
    alice = net.add("alice")
    refused = net.connect(alice, alice)
    assert isinstance(refused, Refused) and refused.code == "self"
    assert alice.stats()["links_refused"] == {"self": 1}
    assert alice.of(PeerUp) == [] and alice.core.links == {}


def test_a_hello_whose_key_is_not_its_node_ids_is_refused() -> None:
    net = CoreNet()
    alice, bob = line_of(net, "alice", "bob")
    mallory = net.hostile("mallory")
    other_key = Identity.generate().key
    for fields in (
        {"key": other_key},  # a key that does not hash to its node id
        {"node": alice.node_id},  # alice's id with mallory's key
        {"key": ""},  # no key at all
    ):
        refused = net.connect(mallory, bob, hello=fields)
        assert isinstance(refused, Refused), fields
        assert (refused.by, refused.code) == ("bob", "identity")
    # alice's id and alice's (public) key, but mallory cannot sign alice's proof
    refused = net.connect(mallory, bob, hello={"node": alice.node_id, "key": alice.identity.key})
    assert isinstance(refused, Refused) and refused.code == "bad_proof"
    assert bob.stats()["links_refused"] == {"identity": 3, "bad_proof": 1}
    assert [e.peer for e in bob.of(PeerUp)] == [alice.node_id]
    assert bob.core.links.keys() == {alice.node_id}


def test_a_node_of_another_room_is_refused_by_both_sides() -> None:
    net = CoreNet()
    alice = net.add("alice")
    bob = net.add("bob", room="attic")
    for a, b in ((alice, bob), (bob, alice)):
        refused = net.connect(a, b)
        assert isinstance(refused, Refused) and refused.code == "room"
        assert refused.by == b.name
        assert "attic" in refused.refuse.reason and "lobby" in refused.refuse.reason
    assert alice.of(PeerUp) == [] and bob.of(PeerUp) == []
    assert alice.stats()["links_refused"] == {"room": 1}
    assert bob.stats()["links_refused"] == {"room": 1}


def test_a_node_at_max_links_refuses_one_more_as_busy() -> None:
    net = CoreNet()
    hub = net.add("hub", max_links=1)
    bob, carol = net.add("bob"), net.add("carol")
    assert isinstance(net.connect(bob, hub), Link)
    refused = net.connect(carol, hub)
    assert isinstance(refused, Refused) and (refused.by, refused.code) == ("hub", "busy")
    assert "too many links (1)" in refused.refuse.reason
    refused = net.connect(hub, carol)  # nor does it dial past its cap
    assert isinstance(refused, Refused) and (refused.by, refused.code) == ("hub", "busy")
    assert hub.stats()["links_refused"] == {"busy": 2}
    assert [e.peer for e in hub.of(PeerUp)] == [bob.node_id]


def test_inbound_links_beyond_the_overlay_bound_drop_one_or_are_refused() -> None:
    net = CoreNet(seed=5)
    hub = net.add("hub", active_target=2, active_max=2)
    others = [net.add(f"n{i}") for i in range(4)]
    results = [net.connect(n, hub) for n in others]  # all at one instant
    net.run_until_quiet()
    assert [type(r).__name__ for r in results] == ["Link", "Link", "Link", "Refused"]
    last = results[3]
    assert isinstance(last, Refused) and (last.by, last.code) == ("hub", "busy")
    # the third took the place of one of the first two (at most one such drop a second)
    assert len(hub.core.links) == 2 and others[2].node_id in hub.core.links
    dropped = [e.peer for e in hub.of(PeerDown)]
    assert len(dropped) == 1 and dropped[0] in (others[0].node_id, others[1].node_id)
    assert hub.stats()["links_refused"] == {"overlay_full": 1, "busy": 1}
    net.tick_all(1.0)  # a second later, a newcomer may push out another inbound link
    assert isinstance(net.connect(others[3], hub), Link)
    assert len(hub.core.links) == 2 and others[3].node_id in hub.core.links
    assert hub.stats()["links_refused"] == {"overlay_full": 2, "busy": 1}


# -- chat ------------------------------------------------------------------------------------


def test_chat_crosses_a_line_of_five_nodes_exactly_once() -> None:
    net = CoreNet()
    nodes = line_of(net, "a", "b", "c", "d", "e")
    for node in nodes:
        net.say(node, f"hello from {node.name}")
    net.tick_all(1.0)
    everyone = sorted(f"hello from {n.name}" for n in nodes)
    for node in nodes:
        assert sorted(node.texts()) == everyone, node  # each line once, none missing
        assert not any(e.history for e in node.messages())  # all live
        assert [e.text for e in node.messages() if e.self] == [f"hello from {node.name}"]
        assert node.stats()["catchup_in"] == 0  # flooded, not fetched
    histories = [n.history() for n in nodes]
    assert all(h == histories[0] for h in histories) and len(histories[0]) == 5


def test_lines_typed_before_the_first_link_come_up_in_order_at_every_peer() -> None:
    net = CoreNet()
    a, b, c = line_of(net, "a", "b", "c")
    erin = net.add("erin")
    net.say(erin, "one")  # no link yet: stored, sent to nobody
    net.say(erin, "two")
    assert isinstance(net.connect(erin, a), Link)
    for text in ("three", "four"):  # then one line each 0.3 s
        net.tick_all(0.3)
        net.say(erin, text)
    net.tick_all(2.0)
    for node in (a, b, c):  # the first two by catch-up (earlier lines), in order
        assert [(e.text, e.history) for e in node.messages() if e.origin == erin.node_id] == [
            ("one", True),
            ("two", True),
            ("three", False),
            ("four", False),
        ], node


def test_lines_typed_on_both_sides_of_a_cut_reach_everyone_after_it_heals() -> None:
    net = CoreNet()
    a, b, c, d = line_of(net, "a", "b", "c", "d")
    net.say(a, "before")
    net.tick_all(1.0)
    net.cut(b, c)
    net.tick_all(0.5)
    assert b.of(PeerDown)[-1].peer == c.node_id
    net.say(a, "west 1")
    net.say(b, "west 2")
    net.say(d, "east 1")
    net.tick_all(1.0)
    assert a.texts() == ["before", "west 1", "west 2"]
    assert d.texts() == ["before", "east 1"]
    healed = net.connect(c, b)
    assert isinstance(healed, Link)
    net.tick_all(3.0)

    for node in (a, b):
        assert sorted(shown(node)[1:]) == [
            ("a", "west 1", False),
            ("b", "west 2", False),
            ("d", "east 1", True),  # an earlier line: said while we were apart
        ]
    for node in (c, d):
        assert sorted(shown(node)[1:]) == [
            ("a", "west 1", True),
            ("b", "west 2", True),
            ("d", "east 1", False),
        ]
    histories = [n.history() for n in (a, b, c, d)]
    assert all(h == histories[0] for h in histories)
    assert sorted(t for *_, t in histories[0]) == ["before", "east 1", "west 1", "west 2"]
    assert c.stats()["catchup_in"] == 2 and d.stats()["catchup_in"] == 2
    assert a.stats()["catchup_in"] == 1 and b.stats()["catchup_in"] == 1


def test_a_line_lost_in_flight_is_fetched_and_shown_before_the_next_one() -> None:
    net = CoreNet()
    a, b, c = line_of(net, "a", "b", "c")
    net.say(a, "one")
    net.run_until_quiet()
    net.tick_all(0.1)
    net.say(a, "two")
    net.step_until(lambda: net.in_flight(net.end(b, c)))
    lost = net.drop(net.end(b, c), wire.Chat)  # lost between b and c
    assert [m.text for m in lost if isinstance(m, wire.Chat)] == ["two"]
    net.run_until_quiet()
    net.tick_all(0.1)
    net.say(a, "three")
    net.run_until_quiet()
    assert c.texts() == ["one"]  # "three" is held: "two" is missing
    net.tick_all(GAP_GRACE_S + TICK_S)
    assert GAP_GRACE_S + TICK_S < ORDER_HOLD_S  # fetched before the hold gave up
    assert shown(c) == [("a", "one", False), ("a", "two", False), ("a", "three", False)]
    assert c.stats()["catchup_in"] == 1
    assert c.history() == b.history() == a.history()


def test_a_line_lost_on_its_first_hop_is_fetched_by_the_next_node_in_time() -> None:
    net = CoreNet()
    a, b, c = line_of(net, "a", "b", "c")
    net.say(a, "one")
    lost = net.drop(net.end(a, b), wire.Chat)  # lost between a and b
    assert [m.text for m in lost if isinstance(m, wire.Chat)] == ["one"]
    net.run_until_quiet()
    net.tick_all(0.1)
    net.say(a, "two")
    net.run_until_quiet()
    assert b.texts() == [] and c.texts() == []  # "two" is held at both
    net.tick_all(GAP_GRACE_S + TICK_S)
    assert shown(b) == [("a", "one", False), ("a", "two", False)]
    # c asked b for "one" at the same instant as b asked a, and got nothing; b's next sync
    # shows c that b has it now, and c asks again (not 30 s later, at the periodic sync):
    # "two" is shown at the hold's bound and "one" soon after, as an earlier line.
    net.tick_all(ORDER_HOLD_S)
    assert shown(c) == [("a", "two", False), ("a", "one", True)]
    assert c.history() == b.history() == a.history()


# -- hostile peers -------------------------------------------------------------------------


def test_an_old_line_sent_again_is_dropped_or_refused_and_never_shown_twice() -> None:
    net = CoreNet(history_max_age_s=60.0, seen_max_age_s=20.0)
    a, b, c = line_of(net, "a", "b", "c")
    mallory = net.hostile("mallory")
    link = net.connect(mallory, c)
    assert isinstance(link, Link)
    net.say(a, "pay bob 10")
    net.tick_all(1.0)
    copies = [m for m in mallory.got(wire.Chat) if m.text == "pay bob 10"]
    assert len(copies) == 1  # mallory took a copy as it passed
    replay = copies[0]

    def again() -> None:
        mallory.send(link.out, replay)
        net.tick_all(1.0)

    def dropped() -> int:
        return int(c.stats()["duplicates_dropped"])

    before = dropped()
    again()  # at once: the seen-cache knows it
    assert dropped() == before + 1
    net.tick_all(25.0)  # the seen-cache forgot it; the store still holds it
    assert replay.id not in c.core.seen and [h[3] for h in c.history()] == ["pay bob 10"]
    before = dropped()
    again()
    assert dropped() == before + 1
    net.tick_all(45.0)  # out of the history window: the store dropped it too
    assert c.history() == [] and "replayed" not in c.stats()["frames_refused"]
    before = dropped()
    again()
    assert c.stats()["frames_refused"]["replayed"] == 1 and dropped() == before
    for node in (a, b, c):
        assert node.texts() == ["pay bob 10"]  # shown once, ever
        assert node.history() == []  # not taken back into the history


def test_a_line_signed_twice_under_one_number_is_resolved_alike_everywhere() -> None:
    net = CoreNet()
    nodes = line_of(net, "a", "b", "c", "d")
    mallory = net.hostile("mallory")
    west = net.connect(mallory, nodes[0])
    east = net.connect(mallory, nodes[3])
    assert isinstance(west, Link) and isinstance(east, Link)
    one = mallory.chat("I owe alice 100", line=1)
    mallory.seq -= 1  # the same seq and line number, another text
    two = mallory.chat("I owe alice nothing", line=1)
    mallory.send(west.out, one)  # one half of the room gets one line,
    mallory.send(east.out, two)  # the other half the other
    net.tick_all(3.0)

    keep = min((one, two), key=lambda m: m.id)  # the lower id, on every node
    for node, first in zip(nodes, (one, one, two, two), strict=True):
        assert shown(node) == [("mallory", first.text, False)], node  # the first seen, once
        assert [h[2] for h in node.history()] == [keep.id], node
        warnings = [t for t in node.notices() if "signed two different lines" in t]
        assert len(warnings) == 1, node
        assert warnings[0].startswith(f"mallory#{mallory.node_id[:4]} ")
        assert node.stats()["frames_refused"]["equivocation"] == 1
        assert node.core.whois("mallory")[0].equivocated
    histories = [n.history() for n in nodes]
    assert all(h == histories[0] for h in histories)


def test_a_second_key_under_a_members_name_is_shown_apart_with_a_notice() -> None:
    net = CoreNet()
    alice, bob = line_of(net, "alice", "bob")
    net.say(alice, "hi, it's alice")
    net.tick_all(1.0)
    fake = net.hostile("fake", wire_name="alice")
    link = net.connect(fake, bob)
    assert isinstance(link, Link)
    fake.send(link.out, fake.chat("send me your password", line=1))
    net.tick_all(1.0)
    tag = f"alice#{fake.node_id[:4]}"
    for node in (alice, bob):
        lines = [(e.display, e.text) for e in node.messages()]
        assert (tag, "send me your password") in lines, node
        assert ("alice", "hi, it's alice") in lines
        notices = [t for t in node.notices() if t.startswith(tag)]
        assert len(notices) == 1 and "first saw with another key" in notices[0]
        (first,) = [k for k in node.core.whois("alice") if k.first]
        assert first.node == alice.node_id


def test_a_look_alike_name_is_shown_apart_with_a_notice() -> None:
    net = CoreNet()
    alice, bob = line_of(net, "alice", "bob")
    fake = net.hostile("fake", wire_name="\u0430lice")  # a Cyrillic a
    link = net.connect(fake, bob)
    assert isinstance(link, Link)
    fake.send(link.out, fake.chat("it's me, alice", line=1))
    net.tick_all(1.0)
    for node in (alice, bob):
        (line,) = [e for e in node.messages() if e.origin == fake.node_id]
        assert line.display == f"\u0430lice#{fake.node_id[:4]}"
        (notice,) = [t for t in node.notices() if t.startswith(line.display)]
        assert f"looks like alice#{alice.node_id[:4]}" in notice
    assert {k.node for k in bob.core.whois("alice")} == {alice.node_id, fake.node_id}


# -- direct messages, members, line numbers ---------------------------------------------------


def test_a_direct_message_is_read_by_its_addressee_only() -> None:
    net = CoreNet()
    a, b, c = line_of(net, "alice", "bob", "carol")
    mine = net.direct(a, "carol", "meet at noon")
    net.tick_all(1.0)
    assert (mine.private, mine.to, mine.text) == (True, c.node_id, "meet at noon")
    (got,) = [e for e in c.of(MessageEvent) if e.private]
    assert (got.origin, got.text, got.to, got.display) == (
        a.node_id,
        "meet at noon",
        c.node_id,
        "alice",
    )
    assert b.of(MessageEvent) == []  # it went through bob, sealed
    assert all(n.history() == [] for n in (a, b, c))  # never kept
    assert "undecryptable" not in b.stats()["frames_refused"]


def test_members_leave_with_quit_or_time_out_when_silent() -> None:
    net = CoreNet()
    a, b, c, d = line_of(net, "a", "b", "c", "d")
    net.leave(d)
    net.tick_all(1.0)
    for node in (a, b, c):
        assert [(e.origin, e.reason) for e in node.of(LeaveEvent)] == [(d.node_id, "quit")]
    net.cut(b, c)  # c is cut off, silently
    net.tick_all(c.core.config.member_timeout_s + 1.0)
    for node in (a, b):
        left = [(e.name, e.reason) for e in node.of(LeaveEvent)]
        assert left == [("d", "quit"), ("c", "timeout")]
    assert sorted((e.name, e.reason) for e in c.of(LeaveEvent)) == [
        ("a", "timeout"),
        ("b", "timeout"),
        ("d", "quit"),
    ]
    assert {m.node for m in a.core.roster.members()} == {a.node_id, b.node_id}


# -- crashed members in a big room (presence.gone, docs/protocol.md §9) -------------------------

BIG_ROOM: dict[str, Any] = {"presence_interval_s": 120.0}  # spaced as in a room of 600


def test_a_crashed_member_is_reported_by_its_neighbour_and_leaves_every_roster_in_seconds() -> None:
    net = CoreNet()
    a, b, c, d = line_of(net, "a", "b", "c", "d", **BIG_ROOM)
    net.crash(d)
    # Its presences come every 2 minutes (timeout 6); c, whose link broke, reports it.
    net.tick_all(GONE_DELAY_S[1] + SUSPECT_S + 1.0)
    for node in (a, b, c):
        assert [(e.name, e.reason) for e in node.of(LeaveEvent)] == [("d", "timeout")]
        assert d.node_id not in node.core.roster


def test_a_member_reported_gone_while_alive_refutes_and_stays() -> None:
    # A square a-b-c-d-a: the link c-d breaks, both ends report the other gone; each is
    # alive and linked to the rest of the room, hears the report and answers it.
    net = CoreNet()
    a, b, c, d = line_of(net, "a", "b", "c", "d", **BIG_ROOM)
    net.connect(d, a)
    net.tick_all(SETTLE_S)
    net.cut(c, d)
    net.tick_all(3 * SUSPECT_S)
    for node in (a, b, c, d):
        assert node.of(LeaveEvent) == []
        assert len(node.core.roster) == 4
    net.say(a, "all here")
    net.tick_all(1.0)
    assert all(n.texts(others_only=True) == ["all here"] for n in (b, c, d))


def test_a_newcomer_to_a_big_room_knows_every_member_at_once() -> None:
    # Presences 2 minutes apart: the newcomer, linked to both ends of a line of five, gets
    # the latest presence of every member from its neighbours (hop limit 1: not flooded on).
    net = CoreNet()
    nodes = line_of(net, "a", "b", "c", "d", "e", **BIG_ROOM)
    dups_before = sum(n.stats()["duplicates_dropped"] for n in nodes)
    late = net.add("late", **BIG_ROOM)
    net.connect(late, nodes[0])
    net.connect(late, nodes[4])
    net.tick_all(1.0)
    assert {m.name for m in late.core.roster.members()} == {"a", "b", "c", "d", "e", "late"}
    assert sorted(e.name for e in late.of(JoinEvent)) == ["a", "b", "c", "d", "e"]
    dups = sum(n.stats()["duplicates_dropped"] for n in nodes) - dups_before
    # Late's own join and presence come round the ring twice (6 copies); the members'
    # presences handed to it come back to nobody (forwarded on, they made 11).
    assert dups <= 8, dups


def test_a_handed_presence_that_reported_a_crash_keeps_its_signature() -> None:
    # b's latest presence reports c gone; a newcomer linked to b gets it as it was signed
    # (only hops changes: the signature does not cover hops, it covers gone).
    net = CoreNet()
    _, b, c = line_of(net, "a", "b", "c", **BIG_ROOM)
    net.crash(c)
    net.tick_all(GONE_DELAY_S[1] + 0.5)
    assert b.core.members.own is not None and b.core.members.own.gone
    late = net.add("late", **BIG_ROOM)
    net.connect(late, b)
    net.tick_all(0.5)
    assert late.stats()["frames_refused"].get("bad_signature", 0) == 0
    assert {"a", "b"} <= {m.name for m in late.core.roster.members()}


def test_a_false_report_is_refuted_and_one_key_reporting_again_and_again_is_rate_limited() -> None:
    """Mallory, linked to carol only, reports alice (alive, two hops away) gone once a
    second.  Carol suspects alice at each report she takes; alice hears the report and
    refutes it with a presence, so she is never removed.  Carol takes the first
    wire.MAX_GONE reports of one key and then one in ten seconds (rate_limited.gone)."""
    net = CoreNet()
    a, b, c = line_of(net, "alice", "bob", "carol", **BIG_ROOM)
    mallory = net.hostile("mallory")
    link = net.connect(mallory, c)
    assert isinstance(link, Link)
    net.tick_all(SETTLE_S)
    before = len(mallory.received)
    for _ in range(40):
        report = wire.Lost(node=a.node_id, seq=c.core.s.last_seq(a.node_id))
        mallory.send(link.out, mallory.signed(wire.Presence(gone=[report], **mallory.envelope())))
        net.tick_all(1.0)
    net.tick_all(2 * SUSPECT_S)
    assert c.stats()["rate_limited"].get("gone", 0) >= 40 - wire.MAX_GONE - 5
    for node in (b, c):
        assert a.node_id in node.core.roster
        assert [e for e in node.of(LeaveEvent) if e.origin == a.node_id] == []
    refutes = [
        m
        for _, m in mallory.received[before:]
        if isinstance(m, wire.Presence) and m.origin == a.node_id
    ]
    assert 1 <= len(refutes) <= wire.MAX_GONE + 6, len(refutes)


def test_own_lines_are_numbered_from_one_and_on_after_a_restart() -> None:
    net = CoreNet()
    a, b = line_of(net, "a", "b")
    for text in ("one", "two", "three"):
        net.say(a, text)
    net.tick_all(1.0)
    assert [(e.line, e.self) for e in a.messages()] == [(1, True), (2, True), (3, True)]
    assert [(e.line, e.text) for e in b.messages()] == [(1, "one"), (2, "two"), (3, "three")]
    # a crashes and restarts with its store (a new Protocol, the same lines): numbering goes on
    net.crash(a)
    assert [(e.peer, e.reason) for e in b.of(PeerDown)] == [(a.node_id, "connection reset")]
    again = net.add("a", store=a.store, identity=a.identity)
    assert isinstance(net.connect(again, b), Link)
    net.tick_all(SETTLE_S)
    net.say(again, "four")
    net.tick_all(1.0)
    assert [e.line for e in again.messages()] == [4]
    assert [e.line for e in b.messages() if e.text == "four"] == [4]


def test_a_leave_replayed_after_its_node_came_back_does_not_remove_it() -> None:
    net = CoreNet(seen_max_age_s=20.0)
    a, b, c = line_of(net, "a", "b", "c")
    mallory = net.hostile("mallory")
    link = net.connect(mallory, c)
    assert isinstance(link, Link)
    net.leave(a)
    net.tick_all(1.0)
    (old_leave,) = mallory.got(wire.Leave)  # mallory kept a copy as it passed
    back = net.add("a", store=a.store, identity=a.identity)  # a restarts with its store
    assert isinstance(net.connect(back, b), Link)
    net.tick_all(SETTLE_S)
    assert [e.reason for e in c.of(LeaveEvent)] == ["quit"]
    net.tick_all(25.0)  # the seen-cache forgot the leave
    assert old_leave.id not in c.core.seen
    mallory.send(link.out, old_leave)
    net.tick_all(1.0)
    assert c.stats()["frames_refused"]["replayed"] == 1
    for node in (b, c):
        assert [e.reason for e in node.of(LeaveEvent)] == ["quit"]  # the real one only
        assert a.node_id in {m.node for m in node.core.roster.members()}


def test_a_long_catch_up_goes_in_acknowledged_batches_and_arrives_whole() -> None:
    net = CoreNet()
    a, b, c = line_of(net, "a", "b", "c")
    net.cut(b, c)
    pasted = [f"line {n}" for n in range(1, 601)]  # more than two batches of 256
    for text in pasted:
        net.say(a, text)
    net.tick_all(1.0)
    assert c.texts() == []
    assert isinstance(net.connect(b, c), Link)
    net.tick_all(3.0)
    assert c.texts() == pasted  # every line, once, in its origin's order
    assert all(e.history for e in c.messages())  # said while c was away
    assert c.stats()["catchup_in"] == 600
    assert c.history() == b.history() == a.history()


@pytest.mark.parametrize(
    ("reason", "forge"),
    [
        ("unsigned", lambda m, _: msgspec.structs.replace(m, sig="")),
        ("wrong_key", lambda m, other: msgspec.structs.replace(m, key=other.key)),
        ("bad_signature", lambda m, _: msgspec.structs.replace(m, text="changed on the way")),
        ("wrong_room", lambda m, _: msgspec.structs.replace(m, room="attic")),
    ],
)
def test_a_forged_line_is_shown_nowhere_and_counted_by_its_reason(reason: str, forge: Any) -> None:
    net = CoreNet()
    a, b = line_of(net, "a", "b")
    mallory = net.hostile("mallory")
    link = net.connect(mallory, b)
    assert isinstance(link, Link)
    mallory.send(link.out, forge(mallory.chat("forged", line=1), Identity.generate()))
    net.tick_all(1.0)
    assert b.stats()["frames_refused"] == {reason: 1}
    assert a.stats()["frames_refused"] == {}  # not passed on
    assert a.texts() == [] and b.texts() == [] and b.history() == []
    assert net.end(mallory, b) == link.out  # one forgery does not end the link


def test_a_line_stamped_in_the_future_is_refused() -> None:
    net = CoreNet()
    a, b = line_of(net, "a", "b")
    mallory = net.hostile("mallory")
    link = net.connect(mallory, b)
    assert isinstance(link, Link)
    ahead = net.wall + wire.MAX_CLOCK_SKEW_S + 5.0
    mallory.send(link.out, mallory.chat("from the future", line=1, ts=ahead))
    mallory.send(link.out, mallory.chat("so is my clock", line=2, hlc=int(ahead * 1e6)))
    net.tick_all(1.0)
    assert b.stats()["frames_refused"] == {"future": 2}
    assert a.texts() == [] and b.texts() == [] and b.history() == []


def test_a_link_that_brings_ten_bad_signatures_is_closed() -> None:
    net = CoreNet()
    a, b = line_of(net, "a", "b")
    mallory = net.hostile("mallory")
    link = net.connect(mallory, b)
    assert isinstance(link, Link)
    for n in range(1, BAD_SIGNATURES_PER_LINK):
        mallory.send(link.out, msgspec.structs.replace(mallory.chat("x", line=n), text="y"))
    net.tick_all(1.0)
    assert mallory.name in net.linked(b)  # nine: still linked
    mallory.send(link.out, msgspec.structs.replace(mallory.chat("x", line=10), text="y"))
    net.tick_all(1.0)
    assert mallory.name not in net.linked(b) and net.ends_between(b, mallory) == []
    assert b.stats()["frames_refused"] == {"bad_signature": BAD_SIGNATURES_PER_LINK}
    (down,) = b.of(PeerDown)
    assert down.peer == mallory.node_id and "failed their signature" in down.reason
    assert a.node_id in b.core.links  # the honest link stays


def test_a_member_renamed_to_another_members_name_is_shown_apart() -> None:
    net = CoreNet()
    alice, bob, carol = line_of(net, "alice", "bob", "carol")
    net.rename(bob, "alice")
    net.say(bob, "trust me")
    net.tick_all(1.0)
    shown_as = f"alice#{bob.node_id[:4]}"
    for node in (alice, carol, bob):  # bob's own nick event too: the front ends show it so
        (nick,) = node.of(NickEvent)
        assert (nick.old, nick.new, nick.old_display, nick.display) == (
            "bob",
            "alice",
            "bob",
            shown_as,
        )
    for node in (alice, carol):
        (line,) = node.messages()
        assert (line.display, line.text) == (f"alice#{bob.node_id[:4]}", "trust me")
        (notice,) = [t for t in node.notices() if t.startswith(f"alice#{bob.node_id[:4]}")]
        assert "first saw with another key" in notice


def test_a_pasted_block_of_200_lines_reaches_every_node_whole_and_in_order() -> None:
    net = CoreNet()
    nodes = line_of(net, "a", "b", "c", "d")
    block = [f"row {n:03}" for n in range(200)]
    for text in block:
        net.say(nodes[0], text)
    net.tick_all(1.0)
    for node in nodes:
        assert node.texts() == block, node
        assert not any(e.history for e in node.messages())
        assert node.stats()["rate_limited"] == {}


def test_a_busy_senders_neighbours_keep_it_pushing_to_them_whatever_comes_first() -> None:
    # A sender pushing a burst to every neighbour is slower than the way round: u had line 1
    # from v before the sender's own copy, v had line 2 from u first.  Pruning on arrival
    # order alone, u and v each told the sender to stop, and were left pushing to each other
    # with nobody pushing to them: every later line of a burst came by ihave and graft, 1.5 s
    # late, at 2 to 14 of 30 nodes (issue 12, scripts/bench.py).  The sender here is a raw
    # peer that pushes as an honest one does: to the links that have not pruned it.
    net = CoreNet()
    u, v = net.add("u"), net.add("v")
    net.connect(u, v)
    sender = net.hostile("sender", wire_name="sender")
    to_u, to_v = net.connect(sender, u), net.connect(sender, v)
    assert isinstance(to_u, Link) and isinstance(to_v, Link)
    net.tick_all(SETTLE_S)
    one, two, three = (sender.chat(f"line {n}", n) for n in (1, 2, 3))

    def pruned_by() -> set[str]:
        return {end.peer for end, m in sender.received if isinstance(m, wire.Prune)}

    sender.send(to_v.out, one)
    net.run_until_quiet()  # v pushes line 1 on to u
    sender.send(to_u.out, one)  # the sender's own copy, late
    sender.send(to_u.out, two)  # sent before any prune of u's could reach the sender
    net.run_until_quiet()  # u pushes line 2 on to v
    sender.send(to_v.out, two)  # late again
    net.run_until_quiet()
    assert pruned_by() == set()
    for link in (to_u, to_v):
        if link.into.owner not in pruned_by():
            sender.send(link.out, three)
    net.run_until_quiet()
    for node in (u, v):  # at once: no time passed for an ihave and a graft
        assert node.texts() == ["line 1", "line 2", "line 3"], node


# -- the presence tree ---------------------------------------------------------------------


def test_an_idle_room_sends_each_presence_to_each_node_about_once() -> None:
    # 8 nodes, every one linked to every other: without a tree of their own, presences
    # came over each of a node's 7 links (6 duplicates each, for ever: only chat lines pruned).
    net = CoreNet(seed=5)
    nodes = [net.add(f"n{i}") for i in range(8)]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            net.connect(a, b)
    net.tick_all(60.0)  # the presence tree forms from the first duplicates
    dups = [n.stats()["duplicates_dropped"] for n in nodes]
    heard = {n.core.node_id: len(n.core.roster) for n in nodes}
    net.tick_all(60.0)
    # Each node hears 7 others, one presence each per 3 s: 140 in the minute.
    new_dups = [n.stats()["duplicates_dropped"] - d for n, d in zip(nodes, dups, strict=True)]
    assert all(heard[n.core.node_id] == 8 for n in nodes)
    assert max(new_dups) <= 14, new_dups  # at most one in ten arrives twice
    net.say(nodes[0], "still one room")
    net.run_until_quiet()
    assert all(n.texts(others_only=True) == ["still one room"] for n in nodes[1:])


def test_after_a_restart_an_older_line_that_comes_live_is_shown_as_earlier() -> None:
    # The simulator found it: the order buffer started empty after a restart, so a line
    # older than lines of its origin shown before the crash was shown as a new one.
    net = CoreNet()
    (b,) = line_of(net, "b")
    mallory = net.hostile("mallory", wire_name="mal")
    link = net.connect(mallory, b)
    assert isinstance(link, Link)
    two = mallory.chat("two", 2)  # kept back: it comes after the restart
    for line, text in ((1, "one"), (3, "three")):
        mallory.send(link.out, mallory.chat(text, line))
    net.tick_all(ORDER_HOLD_S + 1.0)  # "three" waits for "two", then is shown
    assert [(t, h) for _, t, h in shown(b)] == [("one", False), ("three", False)]
    net.crash(b)
    again = net.add("b", store=b.store, identity=b.identity)
    link = net.connect(mallory, again)
    assert isinstance(link, Link)
    mallory.send(link.out, two)
    net.tick_all(1.0)
    assert [(t, h) for _, t, h in shown(again)] == [("two", True)], "an earlier line"


# -- away (/away) -------------------------------------------------------------------------


def test_away_is_told_by_a_presence_at_once_and_cleared_the_same_way() -> None:
    net = CoreNet()
    alice, bob, carol = line_of(net, "alice", "bob", "carol")
    net._act(alice, alice.core.set_away("  at lunch ☕ ", net.now, net.wall))
    net.tick_all(0.6)  # one presence, at once (debounced by 0.5 s at most): not the 3 s one
    for node in (bob, carol):
        (away,) = node.of(AwayEvent)
        assert (away.origin, away.display, away.text, away.self) == (
            alice.node_id,
            "alice",
            "at lunch ☕",
            False,
        )
        assert node.core.roster.get(alice.node_id).away == "at lunch ☕"  # type: ignore[union-attr]
    (mine,) = alice.of(AwayEvent)
    assert (mine.text, mine.self) == ("at lunch ☕", True)
    assert alice.core.roster.get(alice.node_id).away == "at lunch ☕"  # type: ignore[union-attr]
    assert alice.core.set_away("at lunch ☕", net.now, net.wall) == []  # no change: no news
    net.tick_all(5.0)  # later presences say the same: no more events
    assert len(bob.of(AwayEvent)) == 1
    net._act(alice, alice.core.set_away("", net.now, net.wall))
    net.tick_all(0.6)
    for node in (bob, carol):
        assert [e.text for e in node.of(AwayEvent)] == ["at lunch ☕", ""]
        assert node.core.roster.get(alice.node_id).away == ""  # type: ignore[union-attr]


def test_an_away_text_over_the_limit_or_with_control_characters_is_refused_locally() -> None:
    net = CoreNet()
    (alice,) = line_of(net, "alice")
    for bad in ("x" * (wire.MAX_AWAY_CHARS + 1), "out\nto lunch", "bell\x07"):
        with pytest.raises(UsageError):
            alice.core.set_away(bad, net.now, net.wall)
    assert alice.of(AwayEvent) == []
    net._act(alice, alice.core.set_away("y" * wire.MAX_AWAY_CHARS, net.now, net.wall))
    assert len(alice.of(AwayEvent)) == 1


@pytest.mark.parametrize(
    "away", ["x" * (wire.MAX_AWAY_CHARS + 1), "fake\r\n-- bob left", "\x1b[2J"]
)
def test_a_hostile_away_text_is_a_protocol_error_and_never_shown(away: str) -> None:
    net = CoreNet()
    alice, bob = line_of(net, "alice", "bob")
    mallory = net.hostile("mallory")
    link = net.connect(mallory, bob)
    assert isinstance(link, Link)
    mallory.send(link.out, mallory.signed(wire.Presence(away=away, **mallory.envelope())))
    net.tick_all(1.0)
    assert bob.stats()["frames_refused"] == {"invalid_fields": 1}
    assert mallory.name not in net.linked(bob)  # the link that brought it is closed
    assert bob.of(AwayEvent) == [] and alice.of(AwayEvent) == []
    assert all(not m.away for m in bob.core.roster.members())


# -- the room's topic (/topic) --------------------------------------------------------------


def topic_of(node: CoreNode) -> str | None:
    """The current topic's text as the node's store has it (None: no topic line)."""
    current = node.core.topic()
    return None if current is None else current.text


def test_a_topic_reaches_the_room_as_a_topic_event_never_as_a_chat_line() -> None:
    net = CoreNet()
    alice, bob, carol = line_of(net, "alice", "bob", "carol")
    net.set_topic(alice, "  release on friday  ")
    net.tick_all(1.0)
    for node in (bob, carol):
        (topic,) = node.of(TopicEvent)
        assert (topic.origin, topic.display, topic.text, topic.self, topic.history) == (
            alice.node_id,
            "alice",
            "release on friday",
            False,
            False,
        )
        assert topic.room == net.room and topic.line == 1
        assert node.messages() == []  # not a chat line too
        assert topic_of(node) == "release on friday"
    (mine,) = alice.of(TopicEvent)
    assert (mine.text, mine.self) == ("release on friday", True)
    assert topic_of(alice) == "release on friday" and alice.messages() == []
    # Cleared: an empty topic line, the current one everywhere.
    net.set_topic(bob, "")
    net.tick_all(1.0)
    for node in (alice, bob, carol):
        assert [t.text for t in node.of(TopicEvent)] == ["release on friday", ""]
        assert topic_of(node) == ""
    assert [e[3] for e in carol.history()] == ["release on friday", ""]  # kept in history


def test_a_node_that_comes_later_learns_the_topic_by_catch_up() -> None:
    net = CoreNet()
    alice, bob = line_of(net, "alice", "bob")
    net.say(alice, "before")
    net.set_topic(alice, "old topic")
    net.tick_all(0.1)  # bob's clock has seen alice's topic: his sorts after it
    net.set_topic(bob, "the topic")
    net.say(bob, "after")
    net.tick_all(1.0)
    carol = net.add("carol")
    assert topic_of(carol) is None
    net.line([bob, carol])
    net.tick_all(SETTLE_S)
    assert topic_of(carol) == "the topic"
    current = carol.core.topic()
    assert current is not None and (current.origin, current.self) == (bob.node_id, False)
    # Shown as earlier topic lines, not as chat lines.
    assert sorted(t.text for t in carol.of(TopicEvent)) == ["old topic", "the topic"]
    assert all(t.history for t in carol.of(TopicEvent))
    assert sorted(carol.texts()) == ["after", "before"]


def test_the_current_topic_is_the_topic_line_that_sorts_last_in_the_room() -> None:
    net = CoreNet()
    alice, bob = line_of(net, "alice", "bob")
    mallory = net.hostile("mallory")
    link = net.connect(mallory, bob)
    assert isinstance(link, Link)
    net.tick_all(1.0)
    net.set_topic(alice, "current")
    net.tick_all(1.0)
    # A valid topic line stamped a minute ago (a catch-up of an old one, say)
    # is kept in the history but is not the current topic.
    old = mallory.chat("stale", 1, hlc=int((net.wall - 60) * 1e6), topic=True)
    mallory.send(link.out, old)
    net.tick_all(2.0)
    assert "stale" in [t.text for t in bob.of(TopicEvent)]
    assert "stale" in [e[3] for e in bob.history()]
    for node in (alice, bob):
        assert topic_of(node) == "current"
    newer = mallory.chat("newer", 2, topic=True)
    mallory.send(link.out, newer)
    net.tick_all(1.0)
    for node in (alice, bob):
        assert topic_of(node) == "newer"
    assert bob.stats()["frames_refused"] == {}


def test_a_topic_over_the_limit_or_with_control_characters_is_refused_locally() -> None:
    net = CoreNet()
    (alice,) = line_of(net, "alice")
    with pytest.raises(LineTooLong):
        net.set_topic(alice, "x" * (wire.MAX_TOPIC_CHARS + 1))
    for bad in ("two\nlines", "bell\x07"):
        with pytest.raises(UsageError):
            net.set_topic(alice, bad)
    with pytest.raises(UsageError):
        alice.core.new_line("waves", True, net.now, net.wall, topic=True)
    assert alice.of(TopicEvent) == [] and topic_of(alice) is None
    net.set_topic(alice, "y" * wire.MAX_TOPIC_CHARS)
    assert topic_of(alice) == "y" * wire.MAX_TOPIC_CHARS


@pytest.mark.parametrize(
    "fields",
    [
        {"text": "waves", "action": True},
        {"text": "x" * (wire.MAX_TOPIC_CHARS + 1)},
        {"text": "not numbered", "line": 0},
    ],
    ids=["action", "too_long", "unnumbered"],
)
def test_a_hostile_topic_line_is_a_protocol_error_and_never_the_topic(
    fields: dict[str, object],
) -> None:
    net = CoreNet()
    alice, bob = line_of(net, "alice", "bob")
    mallory = net.hostile("mallory")
    link = net.connect(mallory, bob)
    assert isinstance(link, Link)
    values = {"line": 1, **fields}
    mallory.send(link.out, mallory.chat(topic=True, **values))  # type: ignore[arg-type]
    net.tick_all(1.0)
    assert bob.stats()["frames_refused"] == {"invalid_fields": 1}
    assert mallory.name not in net.linked(bob)  # the link that brought it is closed
    for node in (alice, bob):
        assert node.of(TopicEvent) == [] and node.messages() == []
        assert topic_of(node) is None


def test_topics_set_at_once_on_two_nodes_end_as_one_topic_everywhere() -> None:
    net = CoreNet()
    alice, bob, carol = line_of(net, "alice", "bob", "carol")
    net.set_topic(alice, "from alice")
    net.set_topic(carol, "from carol")  # before either has heard of the other's
    net.tick_all(1.0)
    topics = {topic_of(node) for node in (alice, bob, carol)}
    assert len(topics) == 1 and topics <= {"from alice", "from carol"}
