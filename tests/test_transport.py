"""Sending on a link: frames leave in order whether the caller's thread
writes them at once or the writer thread does, when the socket is full."""

from __future__ import annotations

import socket
import threading

from conftest import LOOPBACK, Cluster, RawPeer, wait_for

from p2pchat import wire
from p2pchat.identity import Identity
from p2pchat.transport import BULK_PRIORITY, BULK_TOS, Link, LinkConfig, mark_bulk

# A patient link: the raw peer sends no keepalives while it is not reading.
PATIENT_LINK = LinkConfig(
    handshake_timeout_s=2.0, keepalive_interval_s=0.3, link_timeout_s=20.0, send_queue_frames=1024
)


def test_lines_keep_their_order_when_a_slow_reader_fills_the_socket(cluster: Cluster) -> None:
    node = cluster.add("alice", link=PATIENT_LINK)
    peer = RawPeer(node.port, rcvbuf=4096)  # a small window: the node's socket fills up
    try:
        peer.hello(cluster.room)
        wait_for(lambda: node.has_link(peer.node_id), 5, "the raw peer's link")
        # About 1 MB while the peer reads nothing, through a whole node (the
        # kernel's buffers may take it all; the next test fills the socket).
        sent = [node.send(f"{i:04d} " + "x" * 1990).line for i in range(400)]
        got: list[int] = []
        while len(got) < len(sent):
            msg = peer.next_message(10.0)
            assert msg is not None, f"the node closed the link after {len(got)} lines"
            if isinstance(msg, wire.Chat):
                assert msg.text.startswith(f"{msg.line - 1:04d} "), msg.text[:8]
                got.append(msg.line)
        assert got == sent  # every line once, in the order it was sent
        assert node.has_link(peer.node_id)
    finally:
        peer.close()


class GatedOwner:
    """A link owner that accepts any peer and, once ``gate`` is armed,
    stops reading (its reader thread waits) until the gate opens."""

    def __init__(self) -> None:
        self.chats: list[wire.Chat] = []
        self.gate = threading.Event()
        self.closed = threading.Event()

    def check_hello(self, link: Link, hello: wire.Hello) -> wire.Refuse | None:
        return None

    def prove(self, link: Link, hello: wire.Hello) -> wire.Proof:
        return wire.Proof(sig="00" * 64)

    def check_proof(self, link: Link, hello: wire.Hello, proof: wire.Proof) -> bool:
        return True

    def on_link_up(self, link: Link) -> None:
        pass

    def on_message(self, link: Link, msg: object) -> None:
        if isinstance(msg, wire.Chat):
            self.gate.wait(20.0)
            self.chats.append(msg)

    def on_link_closed(self, link: Link, reason: str, was_up: bool) -> None:
        self.closed.set()


def test_frames_keep_their_order_through_a_full_socket() -> None:
    # Small buffers at both ends: the sender's socket fills after a few
    # frames, so frames go out whole on the caller's thread, in part (the
    # writer thread sends the rest) and through the send queue.
    listener = socket.create_server((LOOPBACK, 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.connect(listener.getsockname())
    server, remote = listener.accept()
    listener.close()
    ids = [Identity.generate() for _ in range(2)]
    owners = [GatedOwner(), GatedOwner()]
    hellos = [
        wire.Hello(
            version=wire.PROTOCOL_VERSION,
            node=ident.node_id,
            name=f"n{i}",
            room="lobby",
            port=0,
            nonce=f"{i:02d}" * 16,
            key=ident.key,
        )
        for i, ident in enumerate(ids)
    ]
    sender = Link(client, "out", remote, owners[0], hellos[0], PATIENT_LINK)
    receiver = Link(server, "in", remote, owners[1], hellos[1], PATIENT_LINK)
    try:
        sender.start()
        receiver.start()
        wait_for(lambda: sender.up_at is not None and receiver.up_at is not None, 5, "link up")
        texts = [f"{i:04d} " + "x" * 1990 for i in range(300)]
        for seq, text in enumerate(texts, 1):
            chat = wire.Chat(
                id=wire.new_message_id(),
                origin=ids[0].node_id,
                seq=seq,
                name="n0",
                room="lobby",
                ts=wire.now_ts(),
                hops=16,
                text=text,
            )
            assert sender.send(wire.encode_frame(chat))
        assert sender.queued() > 0  # the socket was full: some frames wait
        owners[1].gate.set()  # the receiver reads again
        wait_for(lambda: len(owners[1].chats) == len(texts), 20, "every frame")
        assert [c.text for c in owners[1].chats] == texts
        assert not owners[0].closed.is_set() and not owners[1].closed.is_set()
    finally:
        owners[1].gate.set()
        for link in (sender, receiver):
            link.close("test over")
        for link in (sender, receiver):
            link.join(5.0)


def test_mark_bulk_sets_dscp_cs1_on_ipv4_and_ipv6_sockets() -> None:
    """File data's sockets carry DSCP CS1 (TOS byte 0x20), both families."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s4:
        assert mark_bulk(s4) is True
        assert s4.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == BULK_TOS == 0x20
        if hasattr(socket, "SO_PRIORITY"):  # Linux: pfifo_fast's lowest band
            assert s4.getsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY) == BULK_PRIORITY
    if socket.has_ipv6 and hasattr(socket, "IPV6_TCLASS"):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
            assert mark_bulk(s6) is True
            assert s6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS) == BULK_TOS
