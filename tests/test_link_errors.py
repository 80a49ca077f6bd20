"""A node facing bad peers: each bad link is refused or closed, nothing else breaks."""

from __future__ import annotations

import json
import socket
import time

import pytest
from conftest import FAST_LINK, Cluster, RawPeer, wait_for

from p2pchat import wire
from p2pchat.events import LeaveEvent, Notice, PeerDown


@pytest.fixture
def pair(cluster: Cluster) -> Cluster:
    """Two honest nodes, linked; the tests attack the first."""
    a = cluster.add("alice", link=FAST_LINK)
    cluster.add("bob", peers=[a], link=FAST_LINK)
    cluster.wait_all_know_each_other()
    return cluster


def honest_chat_still_works(cluster: Cluster) -> None:
    line = cluster.nodes[1].send("still here")
    wait_for(
        lambda: line.id in {m.id for m in cluster.recorders[0].messages()},
        10.0,
        "an honest line after the attack",
    )


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x00\x00\x00\x05hello", id="not-json"),
        pytest.param(b"\xff\xff\xff\xff", id="huge-length-prefix"),
        pytest.param(b"\x00\x00\x00\x00", id="zero-length"),
        pytest.param(b"\x00\x00\x00\x04\xff\xfe\xfd\xfc", id="invalid-utf8"),
        pytest.param(wire.encode_frame(wire.Keepalive()), id="keepalive-before-hello"),
        pytest.param(b'\x00\x00\x00\x10{"type":"bogus"}', id="unknown-type"),
    ],
)
def test_bad_first_frame_ends_only_that_link(pair: Cluster, payload: bytes) -> None:
    raw = RawPeer(pair.nodes[0].port)
    try:
        raw.sock.sendall(payload)
        got = raw.read_until_closed()
        assert all(isinstance(m, wire.Hello | wire.Refuse) for m in got)
    finally:
        raw.close()
    honest_chat_still_works(pair)
    assert len(pair.nodes[0].snapshot().links) == 1


def bodies_until_closed(raw: RawPeer, timeout_s: float = 10.0) -> list[bytes]:
    """The bodies of the frames the node sends ``raw`` until it closes the
    link, undecoded; fail after ``timeout_s``."""
    splitter = wire.FrameDecoder()
    bodies: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    raw.sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = raw.sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return bodies
        if not data:
            return bodies
        bodies += splitter.feed_bodies(data)
    pytest.fail(f"the node did not close the link within {timeout_s} s")


@pytest.mark.parametrize("version", [1, 3])
def test_other_protocol_version_is_refused_with_a_reason(pair: Cluster, version: int) -> None:
    node = pair.nodes[0]
    before = node.stats().links_refused.get("version", 0)
    raw = RawPeer(node.port)
    try:
        # What a version-1 node sends first (its whole hello, JSON); a later
        # version's hello may carry other fields: the version is still read.
        hello = {
            "type": "hello",
            "version": version,
            "node": raw.node_id,
            "name": "old",
            "room": pair.room,
            "port": 0,
            "features": ["history", "tree", "y"],
            "nonce": "ab" * 16,
            "key": raw.identity.key,
        }
        body = json.dumps(hello).encode()
        raw.sock.sendall(len(body).to_bytes(4, "big") + body)
        frames = bodies_until_closed(raw)
    finally:
        raw.close()
    # Every frame the node sent is JSON, which a version-1 node reads: first
    # its hello, which says version 2 (a v1 node refuses it for that), then
    # the refusal.
    sent = [json.loads(f) for f in frames]
    assert [m["type"] for m in sent] == ["hello", "refuse"]
    assert sent[0]["version"] == wire.PROTOCOL_VERSION == 2
    assert sent[1]["code"] == "version"
    assert f"version {version}" in sent[1]["reason"] and "version 2" in sent[1]["reason"]
    wait_for(
        lambda: node.stats().links_refused.get("version", 0) == before + 1,
        5.0,
        "the refusal counted under links_refused.version",
    )
    wait_for(
        lambda: any(isinstance(e, Notice) for e in pair.recorders[0].events),
        5.0,
        "a notice for the user",
    )
    honest_chat_still_works(pair)


def test_bad_frame_after_handshake_is_not_delivered(pair: Cluster) -> None:
    raw = RawPeer(pair.nodes[0].port)
    try:
        raw.hello(pair.room)
        raw.flooded(wire.Chat, pair.room, text="a fine line")
        # A chat whose text carries a newline, then invalid UTF-8.
        bad = wire.encode_body(
            wire.Chat(
                id=wire.new_message_id(),
                origin=raw.node_id,
                seq=9,
                name="raw",
                room=pair.room,
                ts=1.0,
                hops=3,
                text="PLACEHOLDER",
            )
        ).replace(b"PLACEHOLDER", b"\xc3\x28" * 5 + b"x")  # as long: the frame still parses
        raw.sock.sendall(len(bad).to_bytes(4, "big") + bad)
        raw.read_until_closed()
    finally:
        raw.close()
    honest_chat_still_works(pair)
    for rec in pair.recorders:
        assert "a fine line" in rec.texts()  # what came before the bad frame is kept
        assert all("\ufffd" not in t and "(" not in t for t in rec.texts())
    # The link's reader reports the close after its socket is shut, so the
    # raw peer can see EOF a moment before the node tells its user.
    wait_for(
        lambda: any(
            isinstance(e, PeerDown) and "protocol error" in e.reason
            for e in pair.recorders[0].events
        ),
        5.0,
        "the link closed for a protocol error",
    )


def test_handshake_deadline(cluster: Cluster) -> None:
    from p2pchat.transport import LinkConfig

    a = cluster.add("alice", link=LinkConfig(handshake_timeout_s=0.5))
    raw = RawPeer(a.port)
    try:
        start = time.monotonic()
        raw.read_until_closed(timeout_s=5.0)  # we never send our hello
        assert time.monotonic() - start < 3.0
    finally:
        raw.close()


def test_silent_peer_times_out(cluster: Cluster) -> None:
    a = cluster.add("alice", link=FAST_LINK, member_timeout_s=1.0)
    raw = RawPeer(a.port)
    try:
        raw.hello(cluster.room)
        raw.flooded(wire.Join, cluster.room)
        wait_for(lambda: "raw" in cluster.recorders[0].joined_names(), 5.0, "raw to join")
        # Now raw goes silent without a word: no keepalive, no leave.
        wait_for(
            lambda: any(
                isinstance(e, LeaveEvent) and e.reason == "timeout"
                for e in cluster.recorders[0].events
            ),
            5.0,
            "the timeout",
        )
        wait_for(
            lambda: any(isinstance(e, PeerDown) for e in cluster.recorders[0].events),
            5.0,
            "the dead link",
        )
    finally:
        raw.close()


def test_hop_limit_ends_stray_frames(cluster: Cluster) -> None:
    """The hop limit, end to end: a raw peer injects lines into alice, in a
    line of nodes raw - alice - bob - carol.  A line's ``hops`` counts the
    nodes it may reach: hops=1 stops at alice, hops=2 at bob, hops=3 gets to
    carol.  This checks the live relay only: the lines are unnumbered
    (``line=0``), so catch-up, which serves numbered lines, cannot carry them
    on afterwards (for numbered lines it may: by design, a line too short of
    hops still spreads by catch-up).  Fails if flood.py stops lowering the
    hop limit, or relays a line whose limit is used up."""
    # A fixed line (no overlay dials): carol reaches alice only through bob.
    alice = cluster.add("alice", link=FAST_LINK, active_target=0)
    bob = cluster.add("bob", peers=[alice], link=FAST_LINK, active_target=0)
    carol = cluster.add("carol", peers=[bob], link=FAST_LINK, active_target=0)
    cluster.wait_all_know_each_other()
    raw = RawPeer(alice.port)
    try:
        raw.hello(cluster.room)
        wait_for(lambda: alice.has_link(raw.node_id), 5.0, "the raw link")
        # The line of nodes: carol reaches alice only through bob.
        assert {li.peer for li in carol.snapshot().links} == {bob.node_id}
        assert {li.peer for li in alice.snapshot().links} == {bob.node_id, raw.node_id}
        for hops in (1, 2, 3):
            msg = raw.message(wire.Chat, cluster.room, text=f"hops={hops}", hops=hops)
            assert isinstance(msg, wire.Chat) and msg.line == 0
            raw.send(wire.encode_frame(msg))
            raw.send(wire.encode_frame(wire.Keepalive()))
        recs = dict(zip(("alice", "bob", "carol"), cluster.recorders, strict=True))
        wait_for(lambda: "hops=3" in recs["carol"].texts(), 5.0, "the hops=3 line at carol")
        wait_for(lambda: "hops=3" in recs["bob"].texts(), 5.0, "the hops=3 line at bob")
        # Each node relays in order, so the earlier lines had their chance.
        assert recs["alice"].texts() == ["hops=1", "hops=2", "hops=3"]
        assert recs["bob"].texts() == ["hops=2", "hops=3"]
        assert recs["carol"].texts() == ["hops=3"]
        honest_chat_still_works(cluster)
    finally:
        raw.close()


def test_self_link_is_refused_and_not_redialled(cluster: Cluster) -> None:
    a = cluster.add("alice")
    a.add_peer("127.0.0.1", a.port)
    wait_for(lambda: not a.peers.dialers, 10.0, "the self-dialler to give up")
    assert a.snapshot().links == []


def test_port_taken_is_a_clear_startup_error(cluster: Cluster) -> None:
    from p2pchat.errors import StartupError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StartupError, match=f"port {port} on 127.0.0.1 is already in use"):
            cluster.add("alice", port=port)
        node = cluster.add("bob", port=port, port_fallback=True)
        assert node.port != port
        assert any(isinstance(e, Notice) for e in cluster.recorders[-1].events)


def test_link_cap_refuses_with_busy(cluster: Cluster) -> None:
    a = cluster.add("alice", max_links=1)
    cluster.add("bob", peers=[a])
    cluster.wait_all_know_each_other()
    raw = RawPeer(a.port)
    try:
        raw.hello(cluster.room)
        got = raw.read_until_closed()
    finally:
        raw.close()
    refusals = [m for m in got if isinstance(m, wire.Refuse)]
    assert [r.code for r in refusals] == ["busy"]
    wait_for(lambda: a.stats().links_refused.get("busy") == 1, 5.0, "the refusal to be counted")
    honest_chat_still_works(cluster)


def test_too_long_line_is_refused_whole(cluster: Cluster) -> None:
    from p2pchat.errors import LineTooLong

    a = cluster.add("alice")
    with pytest.raises(LineTooLong, match="2001 characters; the limit is 2000"):
        a.send("x" * 2001)
    assert a.send("y" * 2000).text == "y" * 2000
    wait_for(lambda: cluster.recorders[0].texts() == ["y" * 2000], 5.0, "the 2000-char line")
