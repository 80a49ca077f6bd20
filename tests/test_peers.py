"""The rooms a node alone sees on its LAN (p2pchat/peers.py), for the hint of the full screen."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from p2pchat import wire
from p2pchat.discovery import FoundPeer
from p2pchat.peers import MAX_NODES_PER_ROOM, MAX_ROOMS_SEEN, Peers
from p2pchat.privacy import TAG_PREFIX


def peers() -> Peers:
    host: Any = SimpleNamespace(
        config=SimpleNamespace(max_known_peers=64, data_dir=None),
        node_id="ff" * 8,
        _lock=threading.RLock(),
        _core=SimpleNamespace(wire_room="lobby", lost=lambda node: None),
    )
    return Peers(host)


def found(node: str, room: str) -> FoundPeer:
    return FoundPeer(
        node_id=node,
        name="x",
        room=room,
        addresses=("127.0.0.1",),
        port=7420,
        version=wire.PROTOCOL_VERSION,
    )


def test_other_rooms_are_counted_by_node_and_forgotten_when_their_nodes_go() -> None:
    p = peers()
    p.found(found("a1" * 8, "dev"))
    p.found(found("a1" * 8, "dev"))  # seen again: one node
    p.found(found("a2" * 8, "dev"))
    p.found(found("a3" * 8, TAG_PREFIX + "0123456789abcdef"))
    p.found(found("a4" * 8, TAG_PREFIX + "fedcba9876543210"))
    assert p.rooms_seen() == {"dev": 2, "private": 2}
    p.lost("a1" * 8)
    p.lost("a3" * 8)
    assert p.rooms_seen() == {"dev": 1, "private": 1}


def test_the_rooms_seen_are_bounded() -> None:
    p = peers()
    for i in range(MAX_ROOMS_SEEN + 10):
        p.found(found(f"{i:016x}", f"room{i}"))
    for i in range(MAX_NODES_PER_ROOM + 10):
        p.found(found(f"{i + 10_000:016x}", "room0"))
    seen = p.rooms_seen()
    assert len(seen) == MAX_ROOMS_SEEN
    assert seen["room0"] == MAX_NODES_PER_ROOM
