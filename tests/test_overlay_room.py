"""The bounded overlay on real sockets (127.0.0.1): a room found by mDNS is one
room with at most ``active_max`` links per node, stays one room when nodes
leave, and a crowd of raw peers cannot push a node past ``active_max``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from conftest import Cluster, RawPeer, unique_service_type, wait_for

from p2pchat.node import Node


@pytest.fixture
def raw_peers() -> Iterator[Callable[..., RawPeer]]:
    made: list[RawPeer] = []

    def make(port: int) -> RawPeer:
        peer = RawPeer(port)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def one_room(nodes: list[Node], what: str, timeout_s: float) -> None:
    """Every node lists every node as a member, and a line from the first
    node reaches every other one (members alone can be stale)."""
    ids = {n.node_id for n in nodes}
    wait_for(
        lambda: all({m.node for m in n.snapshot().members} >= ids for n in nodes),
        timeout_s,
        f"{what}: every node to see all {len(nodes)}",
    )
    line = nodes[0].send(f"hello from {nodes[0].name}")
    wait_for(
        lambda: all(line.id in {m.id for m in n.history(50)} for n in nodes),
        timeout_s,
        f"{what}: the line at every node",
    )


@pytest.mark.timeout(120)
def test_twenty_nodes_over_mdns_are_one_room_with_bounded_links(cluster: Cluster) -> None:
    stype = unique_service_type()
    for i in range(20):
        cluster.add(f"n{i:02}", mdns_type=stype, member_timeout_s=6.0)
    one_room(cluster.nodes, "20 nodes", 40.0)
    # A link dropped to make room closes asynchronously: for a moment a node may
    # still count it, so the bound is awaited, not read once.
    at_most_12(cluster.nodes)
    degrees = [len(n.snapshot().links) for n in cluster.nodes]
    assert sum(degrees) < 20 * 19 * 0.75, degrees  # not a full mesh
    # Four nodes leave (their links go): the rest repair from the passive view.
    for node in cluster.nodes[:4]:
        node.close()
    rest = cluster.nodes[4:]
    wait_for(
        lambda: all(len(n.snapshot().members) == len(rest) for n in rest),
        20.0,
        "the 4 who left to be gone from every roster",
    )
    one_room(rest, "16 nodes after 4 left", 20.0)
    at_most_12(rest)


def at_most_12(nodes: list[Node]) -> None:
    wait_for(
        lambda: max(len(n.snapshot().links) for n in nodes) <= 12,
        10.0,
        "every node at 12 links or fewer",
    )


def test_a_crowd_of_peers_cannot_push_a_node_past_active_max(
    cluster: Cluster, raw_peers: Callable[..., RawPeer]
) -> None:
    """14 peers dial one node (each with its own key): it holds at most
    ``active_max`` (4 here) links, dropping or refusing the rest, counted."""
    a = cluster.add("alice", active_max=4, active_target=2)
    peers = []
    for _ in range(14):
        peer = raw_peers(a.port)
        peer.hello(cluster.room)
        peers.append(peer)
        # A link dropped for a newcomer goes once its peer reads the end.
        wait_for(lambda: len(a.snapshot().links) <= 4, 5.0, "alice at 4 links or fewer")
    refused = a.stats().links_refused
    wait_for(
        lambda: (
            a.stats().links_refused.get("busy", 0) + a.stats().links_refused.get("overlay_full", 0)
            >= 10
        ),
        10.0,
        f"10 links refused or dropped (now {refused})",
    )
    assert len(a.snapshot().links) <= 4
    # An honest node that dials alice still gets in (it drops an inbound link).
    b = cluster.add("bob", peers=[a])
    wait_for(lambda: a.has_link(b.node_id), 10.0, "bob's link to alice")
    wait_for(lambda: len(a.snapshot().links) <= 4, 5.0, "alice back at 4 links or fewer")
