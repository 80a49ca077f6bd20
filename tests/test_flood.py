"""The seen-cache and the flood rule: each node delivers a message once, and
forwards it to every other link with one hop less."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.flood import (
    DEFAULT_SEEN_MAX_AGE_S,
    DEFAULT_SEEN_MAX_ENTRIES,
    Decision,
    SeenCache,
    TokenBucket,
    decide,
)
from p2pchat.wire import DEFAULT_HOP_LIMIT, Chat, Join, Presence

FAST = settings(max_examples=150, deadline=None, database=None)

ROOM = "lobby"
ORIGIN = "0123456789abcdef"


def mid(n: int) -> str:
    """A message id (32 hex digits) made from a number."""
    return f"{n:032x}"


def chat(n: int = 1, hops: int = DEFAULT_HOP_LIMIT, room: str = ROOM) -> Chat:
    return Chat(
        id=mid(n),
        origin=ORIGIN,
        seq=n,
        name="alice",
        room=room,
        ts=1700000000.0,
        hops=hops,
        text=f"line {n}",
    )


# ---------------------------------------------------------------- SeenCache


def test_defaults_match_the_contract() -> None:
    assert DEFAULT_SEEN_MAX_ENTRIES == 65536
    assert DEFAULT_SEEN_MAX_AGE_S == 600.0
    cache = SeenCache()
    assert cache.max_entries == 65536
    assert cache.max_age_s == 600.0


def test_add_is_true_once_then_false() -> None:
    cache = SeenCache()
    assert cache.add(mid(1), now=0.0) is True
    assert cache.add(mid(1), now=1.0) is False
    assert cache.add(mid(1), now=2.0) is False
    assert cache.add(mid(2), now=3.0) is True
    assert mid(1) in cache
    assert mid(2) in cache
    assert mid(3) not in cache
    assert len(cache) == 2


def test_entries_are_bounded_and_the_oldest_is_forgotten_first() -> None:
    cache = SeenCache(max_entries=3, max_age_s=1000.0)
    for n in range(1, 6):
        assert cache.add(mid(n), now=float(n))
        assert len(cache) <= 3
    assert len(cache) == 3
    assert mid(1) not in cache
    assert mid(2) not in cache
    assert all(mid(n) in cache for n in (3, 4, 5))
    # A forgotten id counts as new again; a remembered one is still a duplicate.
    assert cache.add(mid(5), now=6.0) is False
    assert cache.add(mid(1), now=7.0) is True


def test_entries_are_forgotten_after_max_age() -> None:
    cache = SeenCache(max_entries=100, max_age_s=10.0)
    cache.add(mid(1), now=100.0)
    cache.add(mid(2), now=105.0)
    assert cache.add(mid(1), now=109.0) is False  # 9 s old: still a duplicate
    cache.expire(now=110.5)
    assert mid(1) not in cache
    assert mid(2) in cache
    assert len(cache) == 1
    cache.expire(now=200.0)
    assert len(cache) == 0


def test_add_expires_old_entries_and_readmits_them() -> None:
    cache = SeenCache(max_entries=100, max_age_s=10.0)
    assert cache.add(mid(1), now=0.0) is True
    assert cache.add(mid(1), now=5.0) is False
    assert cache.add(mid(1), now=20.0) is True  # forgotten by then
    assert len(cache) == 1


def test_a_duplicate_does_not_refresh_its_age() -> None:
    cache = SeenCache(max_entries=100, max_age_s=10.0)
    cache.add(mid(1), now=0.0)
    cache.add(mid(1), now=8.0)
    cache.expire(now=11.0)
    assert mid(1) not in cache


@pytest.mark.parametrize(("entries", "age"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -5.0)])
def test_bad_bounds_are_refused(entries: int, age: float) -> None:
    with pytest.raises(ValueError):
        SeenCache(max_entries=entries, max_age_s=age)


@FAST
@given(
    ops=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5)), max_size=200),
    max_entries=st.integers(1, 10),
)
def test_cache_never_exceeds_its_bounds(ops: list[tuple[int, int]], max_entries: int) -> None:
    cache = SeenCache(max_entries=max_entries, max_age_s=20.0)
    now = 0.0
    added_at: dict[str, float] = {}
    for n, step in ops:
        now += step
        if cache.add(mid(n), now):
            added_at[mid(n)] = now
        assert len(cache) <= max_entries
        assert mid(n) in cache
        for key, t in added_at.items():
            if key in cache:
                assert now - t < 20.0


# ------------------------------------------------------------------- decide


def test_new_message_is_delivered_and_forwarded_to_the_other_links() -> None:
    seen = SeenCache()
    d = decide(chat(hops=16), came_from=2, links=[1, 2, 3, 4], seen=seen, room=ROOM, now=0.0)
    assert d.deliver is True
    assert d.drop_reason is None
    assert d.to == (1, 3, 4)
    assert d.forward is not None
    assert d.forward.hops == 15
    assert d.forward == chat(hops=15)
    assert mid(1) in seen


def test_own_message_goes_to_every_link_with_hops_unchanged() -> None:
    d: Decision[str] = decide(
        chat(hops=16), came_from=None, links=["a", "b"], seen=SeenCache(), room=ROOM, now=0
    )
    assert d.deliver is True
    assert d.to == ("a", "b")
    assert d.forward == chat(hops=16)


def test_own_message_without_links_is_delivered_and_not_sent() -> None:
    no_links: list[int] = []
    d = decide(chat(), came_from=None, links=no_links, seen=SeenCache(), room=ROOM, now=0.0)
    assert d.deliver is True
    assert d.forward is None
    assert d.to == ()


def test_message_from_the_only_link_is_delivered_and_not_sent_back() -> None:
    d = decide(chat(), came_from=7, links=[7], seen=SeenCache(), room=ROOM, now=0.0)
    assert d.deliver is True
    assert d.forward is None
    assert d.to == ()


@pytest.mark.parametrize("hops", [1, 0])
def test_last_hop_is_delivered_but_not_forwarded(hops: int) -> None:
    d = decide(chat(hops=hops), came_from=1, links=[1, 2, 3], seen=SeenCache(), room=ROOM, now=0)
    assert d.deliver is True
    assert d.forward is None
    assert d.to == ()


def test_hops_two_is_forwarded_with_one() -> None:
    d = decide(chat(hops=2), came_from=1, links=[1, 2], seen=SeenCache(), room=ROOM, now=0.0)
    assert d.forward is not None
    assert d.forward.hops == 1
    assert d.to == (2,)


def test_duplicate_is_dropped() -> None:
    seen = SeenCache()
    first = decide(chat(), came_from=1, links=[1, 2], seen=seen, room=ROOM, now=0.0)
    assert first.deliver
    again = decide(chat(), came_from=2, links=[1, 2], seen=seen, room=ROOM, now=1.0)
    assert again.deliver is False
    assert again.drop_reason == "duplicate"
    assert again.forward is None
    assert again.to == ()


def test_our_own_message_coming_back_is_a_duplicate() -> None:
    seen = SeenCache()
    assert decide(chat(), came_from=None, links=[1], seen=seen, room=ROOM, now=0.0).deliver
    back = decide(chat(hops=14), came_from=1, links=[1], seen=seen, room=ROOM, now=0.5)
    assert back.deliver is False
    assert back.drop_reason == "duplicate"


def test_other_room_is_dropped() -> None:
    seen = SeenCache()
    d = decide(chat(room="kitchen"), came_from=1, links=[1, 2], seen=seen, room=ROOM, now=0.0)
    assert d.deliver is False
    assert d.forward is None
    assert d.to == ()
    assert d.drop_reason is not None
    assert d.drop_reason != "duplicate"


def test_other_kinds_are_flooded_the_same_way() -> None:
    join = Join(id=mid(10), origin=ORIGIN, seq=1, name="a", room=ROOM, ts=0.0, hops=5)
    presence = Presence(id=mid(11), origin=ORIGIN, seq=2, name="a", room=ROOM, ts=0.0, hops=5)
    msgs: list[Join | Presence] = [join, presence]
    for n, msg in enumerate(msgs):
        d = decide(msg, came_from=0, links=[0, 1], seen=SeenCache(), room=ROOM, now=float(n))
        assert d.deliver
        assert d.forward is not None
        assert type(d.forward) is type(msg)
        assert d.forward.hops == 4
        assert d.to == (1,)


def test_decide_does_not_change_the_message_it_was_given() -> None:
    msg = chat(hops=9)
    decide(msg, came_from=1, links=[1, 2], seen=SeenCache(), room=ROOM, now=0.0)
    assert msg.hops == 9


# --------------------------------------------------------------- simulation


Graph = dict[int, list[int]]


def distances(graph: Graph, start: int) -> dict[int, int]:
    dist = {start: 0}
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for v in graph[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def diameter(graph: Graph) -> int:
    return max(max(distances(graph, u).values()) for u in graph)


def edge_count(graph: Graph) -> int:
    return sum(len(vs) for vs in graph.values()) // 2


@st.composite
def connected_graphs(draw: st.DrawFn, max_nodes: int) -> Graph:
    """A random connected graph: a random spanning tree plus some extra edges.

    Half of them are "long": a chain with short cross-links, so that the
    diameter often reaches past the hop limit.
    """
    n = draw(st.integers(1, max_nodes))
    long = draw(st.booleans())
    edges: set[tuple[int, int]] = set()
    for v in range(1, n):
        u = max(0, v - draw(st.integers(1, 2))) if long else draw(st.integers(0, v - 1))
        edges.add((u, v))
    if n > 1:
        if long:
            pairs = st.integers(0, n - 1).flatmap(
                lambda a: st.tuples(st.just(a), st.integers(a, min(n - 1, a + 3)))
            )
        else:
            pairs = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))
        for a, b in draw(st.lists(pairs, max_size=2 * n)):
            if a != b:
                edges.add((min(a, b), max(a, b)))
    graph: Graph = {v: [] for v in range(n)}
    for a, b in sorted(edges):
        graph[a].append(b)
        graph[b].append(a)
    return graph


def flood(
    graph: Graph, origins: list[int], rng: random.Random | None
) -> tuple[dict[int, dict[str, int]], dict[str, int]]:
    """Flood one message from each origin; FIFO delivery, or random order if rng.

    Returns (deliveries per node per message id, transmissions per message id).
    """
    seen = {v: SeenCache() for v in graph}
    delivered: dict[int, dict[str, int]] = {v: {} for v in graph}
    sent: dict[str, int] = {}
    in_flight: list[tuple[int, int | None, Chat]] = []  # (to node, from node, msg)

    def handle(node: int, came_from: int | None, msg: Chat, now: float) -> None:
        d = decide(msg, came_from, graph[node], seen[node], ROOM, now)
        if d.deliver:
            delivered[node][msg.id] = delivered[node].get(msg.id, 0) + 1
        else:
            assert d.drop_reason == "duplicate"
        assert came_from not in d.to
        if d.forward is None:
            assert d.to == ()
            return
        assert isinstance(d.forward, Chat)
        expected_hops = msg.hops if came_from is None else msg.hops - 1
        assert d.forward.hops == expected_hops
        for target in d.to:
            assert target in graph[node]
            sent[msg.id] = sent.get(msg.id, 0) + 1
            in_flight.append((target, node, d.forward))

    for n, origin in enumerate(origins):
        sent[mid(n)] = 0
        handle(origin, None, chat(n), now=0.0)
    step = 0
    while in_flight:
        step += 1
        if rng is None:
            target, source, msg = in_flight.pop(0)
        else:
            target, source, msg = in_flight.pop(rng.randrange(len(in_flight)))
        handle(target, source, msg, now=step * 0.001)
    return delivered, sent


@FAST
@given(
    graph=connected_graphs(max_nodes=40),
    origin_picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=3),
)
def test_flooding_in_order_reaches_every_node_within_the_hop_limit_once(
    graph: Graph, origin_picks: list[int]
) -> None:
    origins = [p % len(graph) for p in origin_picks]
    delivered, sent = flood(graph, origins, rng=None)
    for n, origin in enumerate(origins):
        dist = distances(graph, origin)
        for v in graph:
            count = delivered[v].get(mid(n), 0)
            # In-order delivery takes shortest paths: reach = 16 hops.
            assert count == (1 if dist[v] <= DEFAULT_HOP_LIMIT else 0)
        assert sent[mid(n)] <= 2 * edge_count(graph)
    if diameter(graph) < DEFAULT_HOP_LIMIT:
        for v in graph:
            assert all(delivered[v].get(mid(n)) == 1 for n in range(len(origins)))


@FAST
@given(
    graph=connected_graphs(max_nodes=DEFAULT_HOP_LIMIT),
    origin_picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_flooding_in_any_order_delivers_every_message_exactly_once(
    graph: Graph, origin_picks: list[int], seed: int
) -> None:
    # With at most 16 nodes every simple path is shorter than the hop limit,
    # so even the slowest, most roundabout first copy still gets everywhere.
    origins = [p % len(graph) for p in origin_picks]
    delivered, sent = flood(graph, origins, rng=random.Random(seed))
    assert diameter(graph) < DEFAULT_HOP_LIMIT
    for v in graph:
        for n in range(len(origins)):
            assert delivered[v].get(mid(n)) == 1
    for n in range(len(origins)):
        assert sent[mid(n)] <= 2 * edge_count(graph)


@pytest.mark.parametrize("length", [16, 17, 18, 20])
def test_a_line_of_nodes_reaches_exactly_sixteen_hops(length: int) -> None:
    graph: Graph = {v: [u for u in (v - 1, v + 1) if 0 <= u < length] for v in range(length)}
    delivered, sent = flood(graph, [0], rng=None)
    reached = [v for v in graph if delivered[v].get(mid(0)) == 1]
    assert reached == list(range(min(length, DEFAULT_HOP_LIMIT + 1)))
    assert sent[mid(0)] == min(length - 1, DEFAULT_HOP_LIMIT)


def test_a_full_mesh_sends_each_message_over_every_link_at_most_twice() -> None:
    n = 6
    graph: Graph = {v: [u for u in range(n) if u != v] for v in range(n)}
    delivered, sent = flood(graph, [0], rng=None)
    assert all(delivered[v] == {mid(0): 1} for v in graph)
    # origin: n-1 sends; each other node: n-2 sends.
    assert sent[mid(0)] == (n - 1) + (n - 1) * (n - 2)
    assert sent[mid(0)] <= 2 * edge_count(graph)


# ------------------------------------------------------------------- token bucket


def test_bucket_lets_a_burst_through_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.wait_s(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    # A long pause refills only up to the burst.
    assert sum(bucket.take(100.0) for _ in range(10)) == 5


def test_bucket_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=0.0, burst=5, now=0.0)
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=1.0, burst=0.5, now=0.0)


@FAST
@given(
    rate=st.floats(min_value=0.5, max_value=1000.0),
    burst=st.integers(min_value=1, max_value=100),
    steps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200),
)
def test_bucket_never_passes_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, steps: list[float]
) -> None:
    bucket = TokenBucket(rate_per_s=rate, burst=burst, now=0.0)
    now = 0.0
    passed = 0
    for step in steps:
        now += step
        passed += bucket.take(now)
        assert passed <= burst + rate * now + 1e-9
