"""In-process nodes on 127.0.0.1: every line reaches every node exactly once."""

from __future__ import annotations

import random
from typing import cast

import pytest
from conftest import FAST_LINK, Cluster, unique_room, unique_service_type, wait_for

from p2pchat.events import NickEvent, PeerUp
from p2pchat.transport import Link


def build(cluster: Cluster, n: int, edges: list[tuple[int, int]], target: int = 6) -> None:
    """Start ``n`` nodes; for each edge (i, j) with i < j, node j dials node i."""
    for j in range(n):
        peers = [cluster.nodes[i] for (i, jj) in edges if jj == j]
        cluster.add(f"node{j}", peers=peers, active_target=target)


def chat_round(cluster: Cluster, texts_per_node: int = 2) -> None:
    """Every node sends lines; each node must get every line exactly once."""
    sent: set[str] = set()
    for k, node in enumerate(cluster.nodes):
        for m in range(texts_per_node):
            sent.add(node.send(f"line {m} from node{k} — привет 你好 🙂").id)
    # A last marker from each node: when all markers are in, so is the rest.
    for node in cluster.nodes:
        sent.add(node.send(f"marker from {node.name}").id)

    def all_in() -> bool:
        return all(sent <= {m.id for m in rec.messages()} for rec in cluster.recorders)

    wait_for(all_in, 20.0, "every line at every node")
    for k, rec in enumerate(cluster.recorders):
        ids = [m.id for m in rec.messages()]
        assert len(ids) == len(set(ids)), f"node{k} got a line twice"
        assert set(ids) == sent, f"node{k} got lines nobody sent"
        own = {m.id for m in rec.messages() if m.self}
        assert own == {m.id for m in rec.messages() if m.origin == cluster.nodes[k].node_id}


def test_line_of_four(cluster: Cluster) -> None:
    # A fixed line (no overlay dials): node0 reaches node3 only through the others.
    build(cluster, 4, [(0, 1), (1, 2), (2, 3)], target=0)
    cluster.wait_all_know_each_other()
    # node0 and node3 are not linked directly, yet hear each other.
    assert not cluster.nodes[0].has_link(cluster.nodes[3].node_id)
    chat_round(cluster)
    line = next(m for m in cluster.recorders[3].messages() if m.origin == cluster.nodes[0].node_id)
    assert line.name == "node0" and line.text.endswith("привет 你好 🙂")


def test_ring_of_five(cluster: Cluster) -> None:
    build(cluster, 5, [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)])
    cluster.wait_all_know_each_other()
    chat_round(cluster)


def test_random_mesh_of_ten(cluster: Cluster) -> None:
    rng = random.Random(20261122)
    edges = [(i, j) for j in range(1, 10) for i in rng.sample(range(j), min(j, 2))]
    build(cluster, 10, edges)
    cluster.wait_all_know_each_other(timeout_s=20.0)
    chat_round(cluster, texts_per_node=3)


def test_one_link_per_pair_when_both_dial(cluster: Cluster) -> None:
    a = cluster.add("alice")
    b = cluster.add("bob", peers=[a])
    a.add_peer("127.0.0.1", b.port)  # now both dial each other
    cluster.wait_all_know_each_other()

    def one_link_each() -> bool:
        return len(a.snapshot().links) == 1 and len(b.snapshot().links) == 1

    wait_for(one_link_each, 10.0, "exactly one link between alice and bob")
    chat_round(cluster)
    assert len(a.snapshot().links) == 1


def test_leave_is_seen_by_everyone(cluster: Cluster) -> None:
    build(cluster, 3, [(0, 1), (1, 2)])
    cluster.wait_all_know_each_other()
    cluster.nodes[2].close()
    recs = cluster.recorders[:2]
    wait_for(lambda: all(rec.leaves() for rec in recs), 10.0, "the leave at both")
    for rec in recs:
        (leave,) = rec.leaves()
        assert (leave.name, leave.reason) == ("node2", "quit")


def test_nick_and_same_names_told_apart(cluster: Cluster) -> None:
    a = cluster.add("alice")
    b = cluster.add("alice", peers=[a])
    cluster.wait_all_know_each_other()
    line = a.send("hi")
    wait_for(lambda: line.id in {m.id for m in cluster.recorders[1].messages()}, 10.0, "line")
    got = next(m for m in cluster.recorders[1].messages() if m.id == line.id)
    assert got.display == f"alice#{a.node_id[:4]}"
    b.set_name("bob")
    wait_for(
        lambda: any(isinstance(e, NickEvent) for e in cluster.recorders[0].events),
        10.0,
        "the nick",
    )
    nick = next(e for e in cluster.recorders[0].events if isinstance(e, NickEvent))
    assert (nick.old, nick.new) == ("alice", "bob")
    line = a.send("hi again")
    wait_for(lambda: line.id in {m.id for m in cluster.recorders[1].messages()}, 10.0, "line")
    got = next(m for m in cluster.recorders[1].messages() if m.id == line.id)
    # No clash any more, but b used the name "alice" first, with its own key:
    # a's key stays flagged there (trust on first use).
    assert got.display == f"alice#{a.node_id[:4]}"
    assert got.name == "alice"


def test_rooms_do_not_mix(cluster: Cluster) -> None:
    a = cluster.add("alice")
    other = Cluster(cluster.room + "-other")
    try:
        b = other.add("bob", peers=[a])
        wait_for(
            lambda: any(n.kind == "notice" for n in other.recorders[0].events),
            10.0,
            "bob to be told alice is in another room",
        )
        a.send("only for my room")
        b.send("only for the other room")
        assert not a.snapshot().links and not b.snapshot().links
    finally:
        other.close()
    assert cluster.recorders[0].texts() == ["only for my room"]
    assert other.recorders[0].texts() == ["only for the other room"]


def test_dead_link_detected_and_relinked(cluster: Cluster) -> None:
    a = cluster.add("alice", link=FAST_LINK)
    b = cluster.add("bob", peers=[a], link=FAST_LINK)
    cluster.wait_all_know_each_other()
    # Cut the link under the node's feet (as a pulled cable would end it).
    link = cast(Link, next(iter(b._core.links.values())))
    link.close("test cut")
    wait_for(
        lambda: sum(isinstance(e, PeerUp) for e in cluster.recorders[1].events) >= 2,
        10.0,
        "bob to redial alice",
    )
    chat_round(cluster)


@pytest.mark.timeout(60)
def test_mdns_discovery_on_loopback(cluster: Cluster) -> None:
    stype = unique_service_type()
    for name in ("ann", "ben", "cat"):
        cluster.add(name, mdns_type=stype)
    cluster.wait_all_know_each_other(timeout_s=20.0)
    chat_round(cluster)
    # A room on the same service type but another room name stays apart.
    other = Cluster(cluster.room + "-x")
    try:
        other.add("dan", mdns_type=stype)
        line = cluster.nodes[0].send("not for dan")
        wait_for(
            lambda: all(line.id in {m.id for m in r.messages()} for r in cluster.recorders),
            10.0,
            "the line in the first room",
        )
        assert other.recorders[0].texts() == []
        assert all(len(n.snapshot().links) <= 2 for n in cluster.nodes)
    finally:
        other.close()


@pytest.mark.timeout(60)
def test_mdns_with_longest_unicode_name_and_room() -> None:
    # 32 four-byte characters of name and 48 of room: DNS-SD's 63-byte label
    # and 255-byte TXT string limits still hold.
    stype = unique_service_type()
    long_room = Cluster("🙂" * 47 + unique_room()[-1])
    try:
        long_room.add("🦊" * 32, mdns_type=stype)
        long_room.add("🐙" * 32, mdns_type=stype)
        long_room.wait_all_know_each_other(timeout_s=20.0)
        chat_round(long_room, texts_per_node=1)
    finally:
        long_room.close()
