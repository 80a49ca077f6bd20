"""Protocol version 2 and nodes of version 1: mDNS records of another version
are skipped before any dial (TXT ``v``, docs/protocol.md section 2)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from conftest import LOOPBACK, HandDiscovery, wait_for

from p2pchat import wire
from p2pchat.discovery import FoundPeer
from p2pchat.node import Node, NodeConfig


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    """Two listening sockets on 127.0.0.1 that stand for found peers."""
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((LOOPBACK, 0))
        s.listen(4)
        s.setblocking(False)
        socks.append(s)
    yield socks
    for s in socks:
        s.close()


def accepted(listener: socket.socket) -> bool:
    """True once ``listener`` has a connection waiting (which it closes)."""
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_a_peer_of_another_protocol_version_found_by_mdns_is_never_dialled(
    listeners: list[socket.socket],
) -> None:
    old, new = listeners
    disc = HandDiscovery()
    config = NodeConfig(name="alice", room="lobby", port=0, interfaces=[LOOPBACK])
    with Node(config, discovery=disc) as node:  # type: ignore[arg-type]
        node.start()
        (local,) = disc.announced
        assert local.version == wire.PROTOCOL_VERSION == 2  # the TXT record's v
        assert disc.found is not None

        def found(node_id: str, version: int, listener: socket.socket) -> FoundPeer:
            port = listener.getsockname()[1]
            return FoundPeer(node_id, "peer", "lobby", version, (LOOPBACK,), port)

        disc.found(found("1111111111111111", 1, old))
        disc.found(found("2222222222222222", 2, new))
        # The node dials the peer of its own version; by then it has passed
        # over the other (found calls are handled in order, the old one at once).
        wait_for(lambda: accepted(new), 10.0, "a dial to the version-2 peer")
        assert not accepted(old), "the node dialled a version-1 peer"
