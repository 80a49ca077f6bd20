"""The bounded overlay's policy (p2pchat/core/overlay.py) on an in-memory LAN:
random join orders, mDNS-style full discovery or one seed peer each, crashes;
the overlay is connected and no node holds more than ``max_active`` links."""

from __future__ import annotations

import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from p2pchat.core.overlay import DEFAULT_MAX_ACTIVE, DEFAULT_TARGET, Overlay


class Lan:
    """Nodes that link instantly: a dial is a link, unless the callee refuses."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.nodes: dict[str, Overlay] = {}
        self.links: dict[str, set[str]] = {}
        self.now = 0.0

    def join(self, name: str, mdns: bool) -> None:
        present = sorted(self.nodes)
        ov = Overlay(name, random.Random(self.rng.random()))
        self.nodes[name] = ov
        self.links[name] = set()
        if mdns:
            for other in present:
                ov.learn(other, ["127.0.0.1"], 1, self.now)
                self.nodes[other].learn(name, ["127.0.0.1"], 1, self.now)
        elif present:
            ov.learn(self.rng.choice(present), ["127.0.0.1"], 1, self.now, static=True)

    def crash(self, name: str) -> None:
        del self.nodes[name]
        for peer in self.links.pop(name):
            self.links[peer].discard(name)
            self.nodes[peer].link_down(name, self.now)
            self.nodes[peer].forget(name)  # an mDNS goodbye, or a timeout

    def component(self, start: str) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for peer in self.links[todo.pop()]:
                if peer not in seen:
                    seen.add(peer)
                    todo.append(peer)
        return seen

    def connected(self) -> bool:
        return not self.nodes or len(self.component(next(iter(self.nodes)))) == len(self.nodes)

    def _drop(self, at: str, peer: str) -> None:
        """``at`` dropped its link to ``peer`` (already out of at's view)."""
        self.links[at].discard(peer)
        self.links[peer].discard(at)
        self.nodes[peer].link_down(at, self.now)

    def round(self) -> int:
        """One second: presences teach every node its component's addresses;
        every node dials what its overlay asks.  Returns the dials made."""
        self.now += 1.0
        comps: dict[str, set[str]] = {}
        for name in self.nodes:
            if name not in comps:
                comp = self.component(name)
                for member in comp:
                    comps[member] = comp
        for name, ov in self.nodes.items():  # a few presences a second each
            heard = sorted(comps[name])
            for member in self.rng.sample(heard, min(4, len(heard))):
                ov.learn(member, ["127.0.0.1"], 1, self.now)
        dials = 0
        order = sorted(self.nodes)
        self.rng.shuffle(order)
        for name in order:
            ov = self.nodes[name]
            for peer in ov.to_dial(self.now, set(), comps[name]):
                dials += 1
                callee = self.nodes.get(peer)
                if callee is None or peer in self.links[name]:
                    ov.dial_failed(peer, self.now)
                    continue
                if not callee.room_for(self.now):
                    ov.dial_failed(peer, self.now)  # refused: busy
                    continue
                self.links[name].add(peer)
                self.links[peer].add(name)
                for at, other, inbound in ((name, peer, False), (peer, name, True)):
                    if other not in self.links[at]:
                        continue
                    victim = self.nodes[at].link_up(other, inbound, self.now)
                    if victim is not None:
                        self._drop(at, victim)
        self.check_degrees()
        return dials

    def check_degrees(self) -> None:
        for name, ov in self.nodes.items():
            assert set(ov.active) == self.links[name], name
            assert len(self.links[name]) <= DEFAULT_MAX_ACTIVE, (name, len(self.links[name]))

    def settle(self, max_rounds: int) -> int:
        """Rounds until connected and two rounds without a dial."""
        quiet = 0
        for r in range(max_rounds):
            quiet = quiet + 1 if self.round() == 0 else 0
            if quiet >= 2 and self.connected():
                return r
        raise AssertionError(f"not connected and quiet after {max_rounds} rounds")


@settings(max_examples=25, deadline=None)
@example(n=200, mdns=True, together=True, seed=1)
@example(n=200, mdns=False, together=False, seed=2)
@given(
    n=st.integers(2, 200),
    mdns=st.booleans(),
    together=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_joins_connect_within_bounded_degree(
    n: int, mdns: bool, together: bool, seed: int
) -> None:
    lan = Lan(seed)
    for i in range(n):
        lan.join(f"n{i:03}", mdns)
        if not together:
            lan.round()
    lan.settle(200)
    if n > DEFAULT_TARGET + 1 and mdns:  # every node filled its view to the target
        assert min(len(p) for p in lan.links.values()) >= DEFAULT_TARGET


@settings(max_examples=15, deadline=None)
@example(n=120, kill=0.3, mdns=True, seed=3)
@example(n=120, kill=0.3, mdns=False, seed=4)
@given(
    n=st.integers(10, 120),
    kill=st.floats(0.05, 0.3),
    mdns=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_crashes_are_repaired_from_the_passive_view(
    n: int, kill: float, mdns: bool, seed: int
) -> None:
    lan = Lan(seed)
    for i in range(n):
        lan.join(f"n{i:03}", mdns)
    lan.settle(200)
    for victim in lan.rng.sample(sorted(lan.nodes), max(1, int(n * kill))):
        lan.crash(victim)
    lan.settle(200)


def test_a_hub_never_holds_more_than_max_links() -> None:
    """60 nodes started together that all know only one static hub: the hub
    stays within ``max_active`` (it drops one inbound link per second for a
    newcomer, refuses the rest), and the room is one overlay through the
    addresses learnt from presences (in a few minutes: one newcomer a second)."""
    lan = Lan(7)
    lan.join("hub", mdns=False)
    for i in range(60):
        name = f"n{i:03}"
        lan.nodes[name] = Overlay(name, random.Random(i))
        lan.links[name] = set()
        lan.nodes[name].learn("hub", ["127.0.0.1"], 1, 0.0, static=True)
    lan.settle(300)
    assert len(lan.links["hub"]) <= DEFAULT_MAX_ACTIVE


def test_inbound_beyond_max_drops_an_inbound_link_at_most_every_interval() -> None:
    ov = Overlay("me", random.Random(1), target=2, max_active=3, evict_interval_s=10.0)
    assert ov.link_up("out1", inbound=False, now=0.0) is None
    assert ov.link_up("in1", inbound=True, now=0.0) is None
    assert ov.link_up("in2", inbound=True, now=0.0) is None
    assert ov.room_for(1.0)
    victim = ov.link_up("in3", inbound=True, now=1.0)
    assert victim in ("in1", "in2")  # never the link this node dialled
    assert not ov.room_for(2.0)
    assert ov.link_up("in4", inbound=True, now=2.0) == "in4"  # refused: too soon
    assert len(ov.active) == 3 and "out1" in ov.active


def test_fill_to_target_then_replace_failed_links() -> None:
    ov = Overlay("me", random.Random(2), target=2, max_active=4, merge_interval_s=1e9)
    for i in range(6):
        ov.learn(f"p{i}", ["127.0.0.1"], 7420, 0.0)
    first = ov.to_dial(0.0, set(), {f"p{i}" for i in range(6)})
    assert len(first) == 2
    for p in first:
        ov.link_up(p, inbound=False, now=0.0)
    ov.link_up("p5" if "p5" not in first else "p4", inbound=True, now=0.0)
    assert ov.to_dial(1.0, set(), {f"p{i}" for i in range(6)}) == []  # at target: quiet
    ov.link_down(first[0], 1.0)  # failed: replaced although still at the target
    assert len(ov.to_dial(2.0, set(), {f"p{i}" for i in range(6)})) == 1


def test_unheard_peers_are_dialled_to_merge_parts() -> None:
    ov = Overlay("me", random.Random(3), target=1, max_active=4, merge_interval_s=5.0)
    ov.learn("a", ["127.0.0.1"], 1, 0.0)
    ov.learn("b", ["127.0.0.1"], 1, 0.0)
    ov.learn("c", ["127.0.0.1"], 1, 0.0)
    ov.link_up("a", inbound=False, now=0.0)
    assert ov.to_dial(1.0, set(), {"a"}) == []  # b and c may be newcomers: not yet
    assert ov.to_dial(10.0, set(), {"a", "b", "c"}) == []
    assert ov.to_dial(10.0, set(), {"a", "c"}) == ["b"]  # b is not heard: another part
    assert ov.to_dial(11.0, set(), {"a"}) == []  # one merge dial per interval
    assert len(ov.to_dial(15.0, set(), {"a"})) == 1  # the next interval


def test_passive_view_is_bounded_and_keeps_static_peers() -> None:
    ov = Overlay("me", random.Random(4), max_passive=8)
    ov.learn("s", ["127.0.0.1"], 1, 0.0, static=True)
    for i in range(100):
        ov.learn(f"p{i}", ["127.0.0.1"], 1, 0.0)
    assert len(ov.passive) == 8 and "s" in ov.passive
    for _ in range(10):
        ov.dial_failed("s", 0.0)
    assert "s" in ov.passive  # static: dialled for as long as the node runs


def test_a_view_full_of_inbound_links_still_dials_its_own() -> None:
    """Peers that dialled first cannot be all of a node's links: it dials
    ``min_outbound`` peers of its own choice, each pushing out an inbound link."""
    ov = Overlay("me", random.Random(5), target=5, max_active=6, evict_interval_s=60.0)
    for i in range(6):
        assert ov.link_up(f"in{i}", inbound=True, now=0.0) is None
    for i in range(3):
        ov.learn(f"p{i}", ["127.0.0.1"], 1, 0.0)
    picked = ov.to_dial(1.0, set(), {f"p{i}" for i in range(3)})
    assert len(picked) == 2
    for p in picked:
        victim = ov.link_up(p, inbound=False, now=1.0)
        assert victim is not None and victim.startswith("in")
    assert len(ov.active) == 6 and sum(not i for i in ov.active.values()) == 2
    assert ov.to_dial(2.0, set(), {f"p{i}" for i in range(3)}) == []
