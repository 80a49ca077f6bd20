"""Tree broadcast (Plumtree): the pure state, and in-process meshes that use it."""

from __future__ import annotations

import random

from conftest import Cluster, wait_for

from p2pchat import wire
from p2pchat.tree import TreeState

A = "0123456789abcdef"
"""The origin of the lines below."""


def chat(n: int, hops: int = 16, origin: str = A) -> wire.Chat:
    return wire.Chat(
        id=f"{n:032x}",
        origin=origin,
        seq=n,
        name="a",
        room="lobby",
        ts=1.0,
        hops=hops,
        text=f"line {n}",
    )


# -- the pure state ------------------------------------------------------------------------


def test_a_copy_of_a_line_first_taken_by_catch_up_prunes_nothing() -> None:
    """A line that came by catch-up (not through the tree) and then live: the live copy is the
    first push of it, so it says nothing about the link, which stays as it is (a node whose only
    link was pruned this way waited on grafts for every line after)."""
    t: TreeState[str] = TreeState()
    t.link_up("a")
    assert t.duplicate("a", chat(7).id, 0.0) is None
    assert t.muted_for(A) == set()


def test_links_start_eager_and_a_duplicate_prunes_only_what_we_receive() -> None:
    t: TreeState[str] = TreeState()
    for link in "abc":
        t.link_up(link)
    split = t.new_message(chat(1), "a", now=0.0)
    assert sorted(split.eager) == ["b", "c"] and split.lazy == []
    assert t.duplicate("b", chat(1).id, 0.0) == A  # b: stop pushing A's messages to us
    assert t.duplicate("b", chat(1).id, 0.5) is None  # its pushes in flight: no second prune
    assert t.muted_for(A) == {"b"}
    assert "b" in t.eager_for(A), "we push to b until b prunes us"
    t.pruned("b", A)
    split = t.new_message(chat(2), "a", now=0.1)
    assert split.eager == ["c"] and split.lazy == ["b"]
    assert t.take_announcements() == {"b": [(chat(2).id, 16)]}
    assert t.take_announcements() == {}
    t.new_message(chat(3), "a", now=2.0)
    assert t.duplicate("b", chat(3).id, 2.0) == A, "still pushing long after: told again"


def test_missing_announced_id_is_grafted_from_the_announcer() -> None:
    t: TreeState[str] = TreeState(graft_timeout_s=1.0)
    t.link_up("a")
    t.link_up("b")
    t.new_message(chat(4), "a", now=0.0)
    t.duplicate("b", chat(4).id, 0.0)  # b pushes to us no more
    t.announced([chat(5).id], "b", seen=set(), now=0.0)
    assert t.next_deadline() == 1.0
    assert t.due_grafts(0.5) == {}
    assert t.due_grafts(1.0) == {"b": [chat(5).id]}
    assert t.muted_for(A) == set()  # grafting asks b to push to us again
    # The line was only late: it comes over a, and then b's answer comes second.
    t.new_message(chat(5), "a", now=1.05)
    assert t.duplicate("b", chat(5).id, 1.1) is None, "the answer to our graft prunes nothing"
    assert t.due_grafts(10.0) == {}  # it arrived: nothing more to graft


def test_ids_already_seen_are_not_waited_for() -> None:
    t: TreeState[str] = TreeState()
    t.link_up("a")
    t.announced([chat(1).id], "a", seen={chat(1).id}, now=0.0)
    assert t.next_deadline() is None


def test_graft_returns_cached_messages_and_link_down_forgets() -> None:
    t: TreeState[str] = TreeState(cache_entries=2)
    t.link_up("a")
    t.link_up("b")
    t.pruned("b", A)
    for n in (1, 2, 3):
        t.new_message(chat(n), None, now=float(n))
    assert [m.id for m in t.grafted([chat(1).id, chat(3).id], "b")] == [chat(3).id]
    assert "b" in t.eager_for(A)
    t.announced([chat(9).id], "a", seen=set(), now=0.0)
    t.link_down("a")
    assert t.due_grafts(100.0) == {}
    assert "a" not in t.eager_for(A) and "a" not in t.lazy_for(A)


def test_a_lazy_link_one_hop_shorter_is_grafted_and_the_next_line_prunes_the_old() -> None:
    t: TreeState[str] = TreeState(optimize_hops=1, optimize_interval_s=5.0)
    for link in "pq":
        t.link_up(link)
    t.new_message(chat(1, hops=12), "p", now=0.0)  # arrived over p with 13 hops left
    assert t.duplicate("q", chat(1).id, 0.0) == A  # q's copy came second: q, stop
    # q announces it with 14 hops left: one hop shorter than p's way.
    cut = t.announced([chat(1).id], "q", seen={chat(1).id}, now=2.0, hops=[14])
    assert cut is not None and (cut.link, cut.msg_id) == ("q", chat(1).id)
    assert t.muted_for(A) == set()  # both push to us now
    # The copy the graft brings back is expected: no prune for it.
    assert t.duplicate("q", chat(1).id, 2.0) is None
    # The next line comes over q first; p's copy, second, prunes p.
    t.new_message(chat(2, hops=13), "q", now=3.0)
    assert t.duplicate("p", chat(2).id, 3.0) == A
    assert t.muted_for(A) == {"p"}


def test_no_shortcut_for_an_equal_way_too_soon_or_without_hop_counts() -> None:
    t: TreeState[str] = TreeState(optimize_hops=1, optimize_interval_s=5.0)
    for link in "pqr":
        t.link_up(link)
    t.new_message(chat(1, hops=12), "p", now=0.0)
    t.duplicate("q", chat(1).id, 0.0)
    t.duplicate("r", chat(1).id, 0.0)
    seen = {chat(1).id}
    assert t.announced([chat(1).id], "q", seen, now=0.5, hops=[13]) is None  # as long
    assert t.announced([chat(1).id], "q", seen, now=0.5) is None  # an older peer
    assert t.announced([chat(1).id], "q", seen, now=0.5, hops=[14, 1]) is None  # malformed
    assert t.announced([chat(1).id], "q", seen, now=0.5, hops=[15]) is not None
    t.new_message(chat(2, hops=10), "q", now=1.0)
    # r is shorter again, but the last shortcut was 0.5 s ago.
    assert t.announced([chat(2).id], "r", seen | {chat(2).id}, now=1.0, hops=[15]) is None
    assert t.announced([chat(2).id], "r", seen | {chat(2).id}, now=6.0, hops=[15]) is not None


def test_a_push_that_crossed_our_prune_prunes_no_other_link() -> None:
    t: TreeState[str] = TreeState()
    for link in "pq":
        t.link_up(link)
    t.new_message(chat(1), "q", now=0.0)
    assert t.duplicate("p", chat(1).id, 0.0) == A  # p brought line 1 second: p, stop
    # Line 2 was already on its way from p: it arrives first, over the link just pruned.
    t.new_message(chat(2), "p", now=0.001)
    # q's copy comes second; pruning q as well would leave nobody pushing to us.
    assert t.duplicate("q", chat(2).id, 0.002) is None
    assert t.muted_for(A) == {"p"}


def test_a_second_copy_over_the_link_that_brought_the_first_prunes_nothing() -> None:
    # A neighbour hands a newcomer the latest presence of every member (hop limit 1) just
    # after it pushed one of them: the copy came back over the same link.  Pruning that
    # link too left a two-link node pushed to by nobody for that origin, and every line of
    # a burst came by ihave and graft, 1.5 s late (issue 12, scripts/bench.py).
    t: TreeState[str] = TreeState()
    for link in "pq":
        t.link_up(link)
    t.new_message(chat(1), "p", now=0.0)
    assert t.duplicate("q", chat(1).id, 0.0) == A  # q brought it second: q, stop
    assert t.duplicate("p", chat(1).id, 0.1) is None  # p again: p is the one that pushes
    assert t.muted_for(A) == {"q"}


def test_a_copy_that_came_a_shorter_way_second_prunes_nothing() -> None:
    # Node u is linked to the sender s and to v; s, busy pushing a burst to every
    # neighbour, is slower than the way round through v.  Pruning s there (as arrival
    # order alone says), while v prunes s for a copy it had first from u, leaves u and v
    # pushing to each other and nobody pushing to them: every later line of the burst
    # came by ihave and graft, 1.5 s late (issue 12, scripts/bench.py).
    t: TreeState[str] = TreeState()
    for link in ("s", "v"):
        t.link_up(link)
    t.new_message(chat(1, hops=14), "v", now=0.0)  # arrived with 15 hops left: s -> v -> u
    assert t.duplicate("s", chat(1).id, 0.01, hops=16) is None, "s is nearer the sender"
    assert t.muted_for(A) == set()
    t.new_message(chat(2, hops=15), "s", now=0.1)  # from s itself (16 hops left)
    assert t.duplicate("v", chat(2).id, 0.1, hops=15) == A  # v's way is longer: v, stop
    assert t.muted_for(A) == {"v"}


def test_a_copy_with_hop_limit_one_prunes_nothing() -> None:
    # A neighbour hands us the roster (each member's latest presence, hop limit 1) over a
    # link that never pushed that origin: that says nothing about the tree.
    t: TreeState[str] = TreeState()
    for link in "pq":
        t.link_up(link)
    t.new_message(chat(1, hops=14), "p", now=0.0)
    assert t.duplicate("q", chat(1).id, 0.1, hops=1) is None
    assert t.muted_for(A) == set()
    assert t.duplicate("q", chat(1).id, 0.2, hops=14) == A  # a real second push still prunes


def test_a_node_whose_copies_all_come_second_is_still_pushed_to() -> None:
    # A slow node forwards the first lines of a burst after its neighbours
    # have them: they all prune it, but that only stops its pushes to them.
    t: TreeState[str] = TreeState()
    for link in "abc":
        t.link_up(link)
    t.new_message(chat(1), "a", now=0.0)
    for link in "abc":
        t.pruned(link, A)
    assert t.eager_for(A) == set() and t.muted_for(A) == set(), "everyone still pushes to it"


def test_a_prune_stops_the_pushes_of_one_origin_only() -> None:
    # One tree shared by every origin fell apart when many spoke: a copy of A's line that
    # came second pruned a link B's lines needed (issue 12, the simulator).
    b_origin = "fedcba9876543210"
    t: TreeState[str] = TreeState()
    for link in "pq":
        t.link_up(link)
    t.pruned("p", A)
    split_a = t.new_message(chat(1), None, now=0.0)
    split_b = t.new_message(chat(2, origin=b_origin), None, now=0.0)
    assert (sorted(split_a.eager), split_a.lazy) == (["q"], ["p"])
    assert (sorted(split_b.eager), split_b.lazy) == (["p", "q"], [])
    # A copy of B's line second over q prunes q for B only.
    t.new_message(chat(3, origin=b_origin), "p", now=1.0)
    assert t.duplicate("q", chat(3).id, 1.0) == b_origin
    assert t.muted_for(b_origin) == {"q"} and t.muted_for(A) == set()
    # An older peer's prune names no origin: every origin's pushes stop.
    t.pruned("q")
    assert t.eager_for(A) == set() and t.eager_for(b_origin) == {"p"}
    assert [m.id for m in t.grafted([chat(1).id], "q")] == [chat(1).id]
    assert t.eager_for(A) == {"q"}, "a graft asks for pushes of its ids' origins again"


# -- in-process meshes ---------------------------------------------------------------------


def random_mesh(
    cluster: Cluster, n: int, seed: int, broadcast: str, presence_interval_s: float = 3.0
) -> None:
    rng = random.Random(seed)
    for j in range(n):
        peers = [cluster.nodes[i] for i in rng.sample(range(j), min(j, 2))] if j else []
        cluster.add(
            f"node{j}",
            peers=peers,
            broadcast=broadcast,
            presence_interval_s=presence_interval_s,
            member_timeout_s=max(10.0, 3 * presence_interval_s),
        )


def send_and_check(cluster: Cluster, senders: list[int], lines: int, skip: set[int]) -> None:
    sent = {cluster.nodes[s].send(f"line {k} from {s}").id for k in range(lines) for s in senders}

    def all_in() -> bool:
        return all(
            sent <= {m.id for m in rec.messages()}
            for i, rec in enumerate(cluster.recorders)
            if i not in skip
        )

    wait_for(all_in, 20.0, "every line at every live node")
    for i, rec in enumerate(cluster.recorders):
        ids = [m.id for m in rec.messages()]
        assert len(ids) == len(set(ids)), f"node{i} got a line twice"


def test_tree_mesh_delivers_exactly_once_with_few_duplicates(cluster: Cluster) -> None:
    # Presence is flooded, not sent along the tree: space it out so that only
    # chat lines are counted.
    random_mesh(cluster, 10, seed=7, broadcast="tree", presence_interval_s=60.0)
    cluster.wait_all_know_each_other(timeout_s=20.0)

    def dups() -> int:
        return sum(n.stats().duplicates_dropped for n in cluster.nodes)

    # The tree forms from the first lines: a few rounds, until one costs no copy.
    for _ in range(6):
        start = dups()
        send_and_check(cluster, senders=[0], lines=10, skip=set())
        if dups() == start:
            break
    before = dups()
    send_and_check(cluster, senders=[0], lines=40, skip=set())
    after = dups()
    # Flooding this mesh costs about 1.8 duplicates per node per line; once the
    # tree has formed for a sender, its lines cost almost none.
    per_node_per_line = (after - before) / 9 / 40
    assert per_node_per_line < 0.1, per_node_per_line
    # Several senders: the one tree serves them all, still exactly once.
    send_and_check(cluster, senders=[0, 4, 9], lines=10, skip=set())


def test_tree_repairs_when_a_node_leaves(cluster: Cluster) -> None:
    random_mesh(cluster, 8, seed=3, broadcast="tree")
    cluster.wait_all_know_each_other(timeout_s=20.0)
    send_and_check(cluster, senders=[0], lines=10, skip=set())
    cluster.nodes[2].close()
    send_and_check(cluster, senders=[0, 7], lines=10, skip={2})


def test_flood_mesh_delivers_exactly_once_and_survives_a_node_leaving(cluster: Cluster) -> None:
    # ``--broadcast flood`` (the tree is the default): every link carries every line.
    random_mesh(cluster, 8, seed=3, broadcast="flood")
    cluster.wait_all_know_each_other(timeout_s=20.0)
    send_and_check(cluster, senders=[0, 5], lines=10, skip=set())
    assert sum(n.stats().duplicates_dropped for n in cluster.nodes) > 0  # copies on every link
    cluster.nodes[2].close()
    send_and_check(cluster, senders=[0, 7], lines=10, skip={2})


def test_tree_and_flood_nodes_mix(cluster: Cluster) -> None:
    a = cluster.add("alice", broadcast="tree")
    b = cluster.add("bob", peers=[a], broadcast="flood")
    cluster.add("carol", peers=[a, b], broadcast="tree")
    cluster.wait_all_know_each_other()
    send_and_check(cluster, senders=[0, 1, 2], lines=5, skip=set())


def test_cli_processes_with_tree_broadcast() -> None:
    import sys

    from conftest import unique_room

    from p2pchat.harness import NodeProcess, stop

    room = unique_room()
    base = [sys.executable, "-m", "p2pchat", "--ephemeral", "--room", room, "--json"]
    base.append("--no-mdns")
    base += ["--interface", "127.0.0.1", "--port", "0", "--broadcast", "tree"]
    procs: list[NodeProcess] = []
    try:
        a = NodeProcess.spawn([*base, "--name", "ann"], "ann")
        procs.append(a)
        port = a.wait_event("ready")["port"]
        b = NodeProcess.spawn([*base, "--name", "ben", "--peer", f"127.0.0.1:{port}"], "ben")
        procs.append(b)
        b.wait_event("join", name="ann")
        a.send_line("через дерево 🌳")
        assert b.wait_event("message", text="через дерево 🌳")["name"] == "ann"
        b.close_stdin()
        assert a.wait_event("leave", name="ben")["reason"] == "quit"
    finally:
        stop(procs)


def test_a_graft_for_a_line_no_longer_cached_is_answered_from_the_store(cluster: Cluster) -> None:
    """The tree's cache keeps a minute (4096 messages); a graft that comes later, or after a busy
    minute, still gets the line, from the history store."""
    from conftest import FAST_LINK, RawPeer

    node = cluster.add("alice", link=FAST_LINK)
    said = node.send("still here")
    assert node._core.broadcast.tree is not None
    node._core.broadcast.tree._cache.clear()  # as a busy minute would
    peer = RawPeer(node.port)
    try:
        peer.hello(cluster.room, features=["tree"])
        wait_for(lambda: node.has_link(peer.node_id), 5, "the raw peer's link")
        peer.send(wire.encode_frame(wire.Graft(ids=[said.id])))
        got = None
        deadline_frames = 50
        while got is None and deadline_frames:
            deadline_frames -= 1
            msg = peer.next_message(2.0)
            if isinstance(msg, wire.Chat) and msg.id == said.id:
                got = msg
        assert got is not None and got.text == "still here"
    finally:
        peer.close()
