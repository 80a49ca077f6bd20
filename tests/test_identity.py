"""Who said it: signed messages, node ids bound to keys, replays, and names
kept on first use.  A hostile in-process peer forges, tampers and replays;
each is rejected while honest lines keep flowing."""

from __future__ import annotations

import contextlib
import stat
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import FAST_LINK, LOOPBACK, Cable, Cluster, RawPeer, wait_for

from p2pchat import identity, wire
from p2pchat.cli import render
from p2pchat.errors import StoreError, UsageError
from p2pchat.events import KeyInfo, MessageEvent, Notice, PeerDown
from p2pchat.identity import KEY_FILE, Identity
from p2pchat.node import BAD_SIGNATURES_PER_LINK, Node


def test_keys_sign_and_check() -> None:
    me = Identity.generate()
    sig = me.sign(b"hello")
    assert identity.verify(me.key, sig, b"hello")
    assert not identity.verify(me.key, sig, b"hellO")
    assert not identity.verify(Identity.generate().key, sig, b"hello")
    assert not identity.verify("zz", sig, b"hello")  # malformed input is just invalid
    assert me.node_id == identity.fingerprint(me.key)[:16]


def test_the_key_is_kept_private_and_gives_the_node_its_id(
    cluster: Cluster, tmp_path: Path
) -> None:
    data = tmp_path / "alice"
    node = cluster.add("alice", data_dir=str(data))
    key_file = data / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first_id = node.node_id
    node.close()
    again = cluster.add("alice", data_dir=str(data))
    assert again.node_id == first_id == Identity.load_or_create(str(data)).node_id
    again.close()
    key_file.chmod(0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        cluster.add("alice", data_dir=str(data))


def joined(cluster: Cluster) -> RawPeer:
    """A hand-driven peer linked to the cluster's first node."""
    peer = RawPeer(cluster.nodes[0].port)
    peer.hello(cluster.room)
    node = cluster.nodes[0]
    wait_for(lambda: node.has_link(peer.node_id), 5, "the raw peer's link")
    return peer


def test_forged_tampered_and_unsigned_lines_are_dropped(cluster: Cluster) -> None:
    node = cluster.add("alice", link=FAST_LINK)
    rec = cluster.recorders[0]
    peer = joined(cluster)
    victim = Identity.generate()
    try:
        # Forged origin: the victim's node id, signed with the peer's own key.
        forged = peer.message(wire.Chat, cluster.room, text="forged", origin=victim.node_id)
        # Tampered: a valid line of the peer's, its text changed on the way.
        good = peer.message(wire.Chat, cluster.room, text="I owe you 5")
        tampered = msgspec.structs.replace(good, text="I owe you 500")
        # Unsigned.
        bare = msgspec.structs.replace(
            peer.message(wire.Chat, cluster.room, text="unsigned"), key="", sig=""
        )
        for msg in (forged, tampered, bare):
            peer.send(wire.encode_frame(msg))
        honest = peer.message(wire.Chat, cluster.room, text="honest")
        peer.send(wire.encode_frame(honest))
        wait_for(lambda: "honest" in rec.texts(), 5, "the honest line")
        assert not {"forged", "I owe you 500", "unsigned"} & set(rec.texts())
        refused = node.stats().frames_refused
        assert (refused["wrong_key"], refused["bad_signature"], refused["unsigned"]) == (1, 1, 1)
        # The real line, sent after its tampered copy, still gets through.
        peer.send(wire.encode_frame(good))
        wait_for(lambda: "I owe you 5" in rec.texts(), 5, "the untampered line")
    finally:
        peer.close()


def test_a_link_bringing_many_bad_signatures_is_closed(cluster: Cluster) -> None:
    """The peer stays alive (keepalives all along, past the 1.5 s link
    timeout): only the bad-signature rule can close its link."""
    node = cluster.add("alice", link=FAST_LINK)
    friend = cluster.add("bob", peers=[node], link=FAST_LINK)
    peer = joined(cluster)
    keepalive = wire.encode_frame(wire.Keepalive())
    try:
        with contextlib.suppress(OSError):  # the node may close the link meanwhile
            for i in range(20):
                msg = peer.message(wire.Chat, cluster.room, text=f"x{i}")
                peer.send(wire.encode_frame(msgspec.structs.replace(msg, text=f"y{i}")))
                peer.send(keepalive)
        took = peer.talk_until_closed(timeout_s=3 * FAST_LINK.link_timeout_s)
    finally:
        peer.close()
    assert took < FAST_LINK.link_timeout_s  # closed for the signatures, not for silence
    refused = node.stats().frames_refused
    assert refused["bad_signature"] >= BAD_SIGNATURES_PER_LINK
    assert not {f"y{i}" for i in range(20)} & set(cluster.recorders[0].texts())
    wait_for(
        lambda: any(
            isinstance(e, PeerDown) and e.peer == peer.node_id and "signature" in e.reason
            for e in cluster.recorders[0].events
        ),
        5,
        "the link closed for its signatures",
    )
    assert "keepalive_timeout" not in node.stats().links_refused
    line = friend.send("still chatting")
    wait_for(lambda: line.id in {m.id for m in cluster.recorders[0].messages()}, 5, "bob's line")


def test_old_messages_replayed_are_dropped(cluster: Cluster) -> None:
    node = cluster.add("alice", link=FAST_LINK, seen_max_age_s=0.5)
    rec = cluster.recorders[0]
    peer = joined(cluster)
    try:
        line = peer.message(wire.Chat, cluster.room, text="said once", line=1, hlc=now_us())
        old_presence = peer.message(wire.Presence, cluster.room)
        for msg in (line, old_presence):
            peer.send(wire.encode_frame(msg))
        for _ in range(100):  # the peer goes on talking: its seq moves on
            peer.send(wire.encode_frame(peer.message(wire.Presence, cluster.room)))
        wait_for(lambda: "said once" in rec.texts(), 5, "the line")
        wait_for(
            lambda: line.id not in node._core.s.seen and old_presence.id not in node._core.s.seen,
            5,
            "the seen-cache to forget them",
        )
        peer.send(wire.encode_frame(line))
        peer.send(wire.encode_frame(old_presence))
        marker = peer.message(wire.Chat, cluster.room, text="marker", line=2, hlc=now_us())
        peer.send(wire.encode_frame(marker))
        wait_for(lambda: "marker" in rec.texts(), 5, "the marker")
        assert rec.texts().count("said once") == 1
        assert node.stats().frames_refused.get("replayed", 0) >= 1
    finally:
        peer.close()


def now_us() -> int:
    return int(wire.now_ts() * 1e6)


def signed_by(me: Identity, msg: wire.Chat) -> wire.Chat:
    """``msg`` with ``me``'s key and signature."""
    msg = msgspec.structs.replace(msg, key=me.key)
    return msgspec.structs.replace(msg, sig=me.sign(wire.signing_bytes(msg)))


def line_of(me: Identity, room: str, text: str, line: int, hlc: int) -> wire.Chat:
    """Line number ``line`` of ``me``, with clock ``hlc`` (µs), signed."""
    return signed_by(
        me,
        wire.Chat(
            id=wire.new_message_id(),
            origin=me.node_id,
            seq=line,
            name="other",
            room=room,
            ts=hlc / 1e6,
            hops=16,
            text=text,
            line=line,
            hlc=hlc,
        ),
    )


def next_of(peer: RawPeer, cls: type, timeout_s: float = 5.0) -> Any:
    """The node's next frame of type ``cls``, others skipped; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = peer.next_message(max(0.05, deadline - time.monotonic()))
        assert msg is not None, "the node closed the link"
        if isinstance(msg, cls):
            return msg
    pytest.fail(f"no {cls.__name__} from the node within {timeout_s} s")


def test_the_window_floor_is_inclusive_for_catch_up(cluster: Cluster) -> None:
    """The floor of the history window is the clock of the oldest line kept
    (once the window is full): a line exactly at the floor belongs in the
    window, one microsecond below does not.  Pinned both ways a catch-up
    line can cross it: sent by this node (``sync`` answered with the lines
    from ``since`` on, the floor line included) and taken by it (a ``lines``
    batch: the line at the floor is kept and shown, the one below dropped).
    Fails if either comparison becomes strict (``<`` to ``<=`` in
    ``_apply_lines``, ``>=`` to ``>`` in the store's query)."""
    node = cluster.add("alice", link=FAST_LINK, history_max_lines=3)
    rec = cluster.recorders[0]
    peer = RawPeer(node.port)
    try:
        peer.hello(cluster.room, features=["history"])
        wait_for(lambda: node.has_link(peer.node_id), 5, "the raw peer's link")
        base = now_us() - 60 * 10**6  # a minute ago: inside every time limit
        mine = [
            peer.flooded(wire.Chat, cluster.room, text=f"mine {n}", line=n, hlc=base + (n - 1))
            for n in (1, 2, 3)
        ]
        wait_for(lambda: len(rec.texts()) == 3, 5, "the raw peer's three lines")
        # The window is full: its floor is `base`, the clock of "mine 1".
        peer.send(wire.encode_frame(wire.Sync(room=cluster.room, since=base, have=[])))
        sent = next_of(peer, wire.Lines)
        assert [m.id for m in sent.lines] == [m.id for m in mine]
        peer.send(wire.encode_frame(wire.Keepalive()))

        # Two other origins' lines by catch-up: one just below the floor,
        # one exactly at it.  At the floor, ties are ordered by origin: the
        # one at the floor sorts after "mine 1", so the window keeps it.
        below, at = Identity.generate(), Identity.generate()
        while at.node_id < peer.node_id:
            at = Identity.generate()
        batch = [
            line_of(below, cluster.room, "below the floor", 1, base - 1),
            line_of(at, cluster.room, "at the floor", 1, base),
        ]
        peer.send(wire.encode_frame(wire.Lines(batch=1, lines=batch)))
        assert next_of(peer, wire.Ack).batch == 1
        peer.send(wire.encode_frame(wire.Keepalive()))
        wait_for(lambda: "at the floor" in rec.texts(), 5, "the line at the floor")
        shown = {m.text: m for m in rec.messages()}  # the batch was taken whole
        assert "below the floor" not in shown
        assert "at the floor" in shown and shown["at the floor"].history
        assert "at the floor" in [m.text for m in node.history(10)]
    finally:
        peer.close()


def test_two_keys_with_one_name_are_told_apart_and_the_newcomer_is_flagged(
    cluster: Cluster,
) -> None:
    carol = cluster.add("carol", link=FAST_LINK)
    alice = cluster.add("alice", peers=[carol], link=FAST_LINK)
    first = alice.send("hi, it's alice")
    rec = cluster.recorders[0]
    wait_for(lambda: first.id in {m.id for m in rec.messages()}, 10, "alice's line")
    assert rec.messages()[-1].display == "alice"

    impostor = cluster.add("alice", peers=[carol], link=FAST_LINK)
    second = impostor.send("hi, it's alice too")
    wait_for(lambda: second.id in {m.id for m in rec.messages()}, 10, "the second alice's line")
    got = next(m for m in rec.messages() if m.id == second.id)
    assert got.display == f"alice#{impostor.node_id[:4]}"
    notices = [e for e in rec.events if isinstance(e, Notice) and "alice" in e.text]
    assert len(notices) == 1 and f"alice#{impostor.node_id[:4]}" in notices[0].text
    assert "may not be who you think" in notices[0].text

    keys = {k.node: k for k in carol.whois("alice")}
    assert keys[alice.node_id].first and not keys[impostor.node_id].first
    assert keys[alice.node_id].fingerprint.startswith(alice.node_id)
    shown = render.format_whois("alice", list(keys.values()))
    assert any("NOT the first key" in line for line in shown)

    # The first alice stays "alice"; the flag stays on the newcomer even alone.
    impostor.close()
    wait_for(lambda: len(carol.whois("alice")) == 1, 10, "the second alice to leave")
    again = alice.send("still me")
    wait_for(lambda: again.id in {m.id for m in rec.messages()}, 10, "alice's next line")
    assert rec.messages()[-1].display == "alice"


def test_whois_formats() -> None:
    me = KeyInfo(node="a" * 16, name="a", display="a", fingerprint="a" * 64, first=True, self=True)
    assert render.format_whois("a", [me]) == [f"-- a: {' '.join(['aaaa'] * 16)} (you)"]
    assert render.format_whois("zed", []) == ["-- nobody called zed is in the room"]


def send_direct_when_ready(node: Node, to: str, text: str) -> MessageEvent:
    """``send_direct`` once the recipient has announced its key (first presence)."""
    sent: list[MessageEvent] = []

    def attempt() -> bool:
        try:
            sent.append(node.send_direct(to, text))
        except UsageError as exc:
            assert "not announced a key" in str(exc), exc
            return False
        return True

    wait_for(attempt, 10, f"{to}'s key for direct messages")
    return sent[0]


def test_a_direct_message_is_read_only_by_its_recipient(
    cluster: Cluster, cables: list[Cable]
) -> None:
    # A fixed line alice - relay - bob (active_target=0: no overlay links besides): with a
    # link of her own to bob, alice's lines could reach the relay that way and be only
    # announced over the cable (one broadcast tree per origin), and the capture would miss them.
    alice = cluster.add("alice", link=FAST_LINK, active_target=0)
    relay = cluster.add("relay", link=FAST_LINK, active_target=0)
    cable = Cable(relay.port)
    cables.append(cable)
    alice.add_peer(LOOPBACK, cable.port)  # every frame alice exchanges crosses the cable
    bob = cluster.add("bob", peers=[relay], link=FAST_LINK, active_target=0)
    cluster.wait_all_know_each_other()
    secret = "meet me at the blue door at 3"
    mine = send_direct_when_ready(alice, "bob", secret)
    assert mine.private and mine.self and mine.to == bob.node_id and mine.to_display == "bob"
    rec_bob = cluster.recorders[2]
    wait_for(lambda: secret in rec_bob.texts(), 10, "bob's direct message")
    got = next(m for m in rec_bob.messages() if m.text == secret)
    assert got.private and not got.self and got.origin == alice.node_id
    assert render.Renderer().render(got) == f"[private] alice: {secret}"
    assert render.Renderer().render(mine) == f"[private to bob] alice: {secret}"
    # The relay carried it but cannot read it, and neither can a capture.
    line = alice.send("a public line after it")
    wait_for(
        lambda: all(line.id in {m.id for m in r.messages()} for r in cluster.recorders[1:]),
        10,
        "the line after it at the relay and at bob",
    )
    assert secret not in cluster.recorders[1].texts()
    assert secret.encode() not in bytes(cable.captured)
    assert b"a public line after it" in bytes(cable.captured)  # the capture works
    assert bob.history(10)[-1].text == "a public line after it"  # not kept in history


def test_direct_messages_need_one_known_recipient(cluster: Cluster) -> None:
    me = cluster.add("me", link=FAST_LINK)
    one = cluster.add("twin", peers=[me], link=FAST_LINK)
    two = cluster.add("twin", peers=[me], link=FAST_LINK)
    cluster.wait_all_know_each_other()
    with pytest.raises(UsageError, match="nobody called 'ghost'"):
        me.send_direct("ghost", "hello?")
    with pytest.raises(UsageError, match="2 members are called 'twin'"):
        me.send_direct("twin", "which one?")
    target = f"twin#{two.node_id[:4]}"
    send_direct_when_ready(me, target, "you, the second one")
    wait_for(lambda: "you, the second one" in cluster.recorders[2].texts(), 10, "the right twin")
    assert "you, the second one" not in cluster.recorders[1].texts()
    assert one.node_id != two.node_id


def test_a_peer_cannot_take_another_nodes_id_on_a_link(cluster: Cluster) -> None:
    alice = cluster.add("alice", link=FAST_LINK)
    bob = cluster.add("bob", peers=[alice], link=FAST_LINK)
    wait_for(lambda: alice.has_link(bob.node_id), 10, "alice and bob to link")
    bob_key = bob._identity.key  # public: every message of bob's carries it

    # Bob's id with a key that is not bob's: refused at once.
    liar = RawPeer(alice.port)
    try:
        liar.hello(cluster.room, node=bob.node_id)
        assert isinstance(liar.next_message(), wire.Refuse)
    finally:
        liar.close()
    # Bob's id and bob's public key, but no way to sign for it.
    thief = RawPeer(alice.port)
    try:
        thief.hello(cluster.room, node=bob.node_id, key=bob_key)  # its proof is signed wrongly
        thief.wait_closed()
    finally:
        thief.close()
    wait_for(
        lambda: (
            alice.stats().links_refused.get("protocol_error", 0) >= 1
            and alice.stats().links_refused.get("identity", 0) >= 1
        ),
        5,
        "both refusals counted",
    )
    assert alice.has_link(bob.node_id)
    line = bob.send("the real bob, still linked")
    wait_for(lambda: line.id in {m.id for m in cluster.recorders[0].messages()}, 5, "bob's line")
