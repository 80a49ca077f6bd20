"""Private rooms: a shared secret keeps out who lacks it, and what goes over
the network reveals neither the lines nor the room's name."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FAST_LINK, LOOPBACK, Cable, Cluster, HandDiscovery, RawPeer, wait_for

from p2pchat import wire
from p2pchat.cli import args
from p2pchat.errors import UsageError
from p2pchat.privacy import RoomSecret

SECRET = b"correct horse battery staple"
ROOM_NAME = "board-meeting-secret-plans"


@contextlib.contextmanager
def loopback_capture() -> Iterator[bytearray]:
    """Every packet on the loopback interface while the block runs (root
    only: an AF_PACKET socket, as tcpdump uses)."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    except (PermissionError, AttributeError, OSError) as exc:
        pytest.skip(f"no packet capture here: {exc}")
    sock.bind(("lo", 0))
    sock.settimeout(0.1)
    captured = bytearray()
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set() and len(captured) < 64 << 20:
            try:
                captured.extend(sock.recv(65536))
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=run, name="test-capture", daemon=True)
    t.start()
    try:
        yield captured
    finally:
        stop.set()
        t.join(2.0)
        sock.close()


def test_a_private_room_chats_and_the_wire_shows_no_text_nor_name(
    cluster: Cluster, cables: list[Cable]
) -> None:
    cluster.room = ROOM_NAME
    a = cluster.add("alice", link=FAST_LINK, secret=SECRET)
    b = cluster.add("bob", link=FAST_LINK, secret=SECRET)
    cable = Cable(b.port)
    cables.append(cable)
    text = "the merger is off, tell nobody"
    with loopback_capture() as captured:
        a.add_peer(LOOPBACK, cable.port)
        cluster.wait_all_know_each_other()
        line = a.send(text)
        wait_for(lambda: line.id in {m.id for m in cluster.recorders[1].messages()}, 10, "bob")
        reply = b.send("understood")
        wait_for(lambda: reply.id in {m.id for m in cluster.recorders[0].messages()}, 10, "alice")
    assert a.room == ROOM_NAME
    through_cable = bytes(cable.captured)
    tag = RoomSecret(SECRET, ROOM_NAME).tag.encode()
    assert tag in through_cable  # the hellos name the room by its tag
    for leak in (text.encode(), b"understood", ROOM_NAME.encode()):
        assert leak not in through_cable
        assert leak not in bytes(captured)
    assert b"alice" in through_cable  # only the hellos are in the clear


def test_a_node_without_the_secret_cannot_link_nor_read(cluster: Cluster) -> None:
    cluster.room = ROOM_NAME
    a = cluster.add("alice", link=FAST_LINK, secret=SECRET)
    outsider = cluster.add("eve", peers=[a], link=FAST_LINK, secret=b"a guess")
    plain = cluster.add("mallory", peers=[a], link=FAST_LINK)
    wait_for(
        lambda: a.stats().links_refused.get("room", 0) >= 2,
        10,
        "alice to refuse both",
    )
    a.send("members only")
    assert not a.snapshot().links
    assert not outsider.snapshot().links and not plain.snapshot().links
    assert "members only" not in cluster.recorders[1].texts() + cluster.recorders[2].texts()


def test_a_peer_that_copies_the_tag_cannot_inject(cluster: Cluster) -> None:
    cluster.room = ROOM_NAME
    a = cluster.add("alice", link=FAST_LINK, secret=SECRET)
    b = cluster.add("bob", peers=[a], link=FAST_LINK, secret=SECRET)
    tag = RoomSecret(SECRET, ROOM_NAME).tag
    peer = RawPeer(a.port)
    try:
        # Its hello passes (it copied the tag); what follows, unsealed, does
        # not open.  (The node's own frames after its hello are sealed: the
        # peer reads them as bytes, not frames.)
        peer.send(peer.hello_frame(tag))
        with contextlib.suppress(OSError):
            peer.send(wire.encode_frame(peer.message(wire.Chat, tag, text="injected")))
        # What the node sends from now on is sealed: read bytes, not frames.
        wait_for(lambda: not peer_alive(peer), 10, "the node to close the link")
    finally:
        peer.close()
    wait_for(lambda: a.stats().frames_refused.get("wrong_secret") == 1, 5, "the refusal counted")
    wait_for(lambda: a.has_link(b.node_id), 10, "alice and bob to link")
    line = b.send("still private and fine")
    wait_for(lambda: line.id in {m.id for m in cluster.recorders[0].messages()}, 10, "the line")
    assert "injected" not in cluster.recorders[0].texts()


def peer_alive(peer: RawPeer) -> bool:
    """Read what is there (any bytes); False once the node closed the link."""
    peer.sock.settimeout(0.05)
    try:
        return bool(peer.sock.recv(65536))
    except TimeoutError:
        return True
    except OSError:
        return False


def test_the_mdns_record_of_a_private_room_names_only_its_tag(cluster: Cluster) -> None:
    from p2pchat.node import Node, NodeConfig

    disc = HandDiscovery()
    config = NodeConfig(name="alice", room=ROOM_NAME, port=0, interfaces=[LOOPBACK], secret=SECRET)
    with Node(config, discovery=disc) as node:  # type: ignore[arg-type]
        node.start()
        (local,) = disc.announced
    assert local.room == RoomSecret(SECRET, ROOM_NAME).tag
    assert ROOM_NAME not in repr(local) and SECRET.decode() not in repr(local)


def test_the_secret_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(args.SECRET_ENV, raising=False)
    assert args.parse_args(["--name", "a"]).secret is None
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"s3cret\n")
    opts = args.parse_args(["--name", "a", "--secret-file", str(secret_file)])
    assert opts.secret == b"s3cret"
    assert "s3cret" not in repr(opts)
    monkeypatch.setenv(args.SECRET_ENV, "from env")
    assert args.parse_args(["--name", "a"]).secret == b"from env"
    secret_file.write_bytes(b"\n")
    with pytest.raises(UsageError, match="is empty"):
        args.parse_args(["--name", "a", "--secret-file", str(secret_file)])
    with pytest.raises(UsageError, match="cannot read the secret file"):
        args.parse_args(["--name", "a", "--secret-file", str(tmp_path / "missing")])
