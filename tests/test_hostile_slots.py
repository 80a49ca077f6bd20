"""One host, or many, trying to take every connection slot of a node (issue 11, attack 3).

The attacker opens TCP connections to a node from other loopback addresses (127.0.0.2 and up,
bound before connecting) and holds them idle, reopening each one the node closes, as a hostile
host on the LAN would.  Honest nodes on 127.0.0.1 must still link and chat: a node refuses, as
it accepts them, the sockets of an address that already holds its share (``max_links_per_address``
sockets, or ``max_handshakes_per_address`` of them still in the handshake) and those beyond its
total handshake budget (``max_handshakes``); its own dials never count against that budget, and
its diallers never give up because a slot was full.

Network safety: every socket here binds and connects on 127.0.0.0/8 only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import FAST_LINK, LOOPBACK, Cluster, RawPeer, Recorder, wait_for

from p2pchat import wire
from p2pchat.identity import Identity
from p2pchat.node import Node
from p2pchat.transport import LinkConfig

DELIVERY_S = 10.0
"""Deadline for an honest link, line or counter to show up."""

SLOW_HANDSHAKE = LinkConfig(handshake_timeout_s=10.0, keepalive_interval_s=0.3, link_timeout_s=1.5)
"""A handshake deadline longer than a test: an idle socket that the node took keeps its slot
until the attacker lets go, as with the default 5 s deadline and an attacker that reopens
what is cut (the worst case, without waiting for it)."""

SMALL: dict[str, Any] = {"max_links": 4, "max_handshakes": 8, "max_handshakes_per_address": 2}
"""Small limits for a flooded node, so that a few dozen sockets fill them (before this fix
the node held at most ``2 * max_links`` = 8 sockets of any kind, idle ones included)."""


@pytest.fixture(autouse=True)
def _p2pchat_info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p2pchat")


# -- the attacker -------------------------------------------------------------------------------


class IdleFlood:
    """Holds up to ``per_source`` idle TCP connections to ``127.0.0.1:port`` from each address
    of ``sources``, and reopens each one the node closes, on its own thread until :meth:`stop`.
    It never sends a byte.  At most ``per_round`` new connections every ``round_s`` seconds (a
    bounded load: a few hundred connections a second)."""

    def __init__(self, port: int, sources: list[str], per_source: int, per_round: int = 10) -> None:
        self.port = port
        self.sources = sources
        self.per_source = per_source
        self.per_round = per_round
        self.round_s = 0.05
        self.connects = 0  # connections opened in all
        self.cut = 0  # connections the node closed
        self._socks: dict[socket.socket, str] = {}  # open socket -> its source address
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-idle-flood", daemon=True)

    def __enter__(self) -> IdleFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop, and close every connection (the node sees each one end)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        for sock in list(self._socks):
            sock.close()
        self._socks.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drop_closed()
            self._reopen()
            self._stop.wait(self.round_s)  # the attacker's pacing

    def _drop_closed(self) -> None:
        if not self._socks:
            return
        readable, _, _ = select.select(list(self._socks), [], [], 0)
        for sock in readable:
            try:
                data = sock.recv(65536)  # the node's hello, or a refuse, or EOF
            except OSError:
                data = b""
            if not data:
                del self._socks[sock]
                sock.close()
                self.cut += 1

    def _reopen(self) -> None:
        held: dict[str, int] = dict.fromkeys(self.sources, 0)
        for source in self._socks.values():
            held[source] += 1
        budget = self.per_round
        for source in self.sources:
            while held[source] < self.per_source and budget > 0 and not self._stop.is_set():
                budget -= 1
                held[source] += 1
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind((source, 0))
                    sock.settimeout(1.0)
                    sock.connect((LOOPBACK, self.port))
                except OSError:
                    sock.close()
                    continue
                self._socks[sock] = source
                self.connects += 1


class RawPeerFrom(RawPeer):
    """A :class:`RawPeer` whose socket comes from ``source`` (a loopback address)."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((source, 0))
        self.sock.settimeout(5.0)
        self.sock.connect((LOOPBACK, port))
        self.decoder = wire.FrameDecoder()
        self.identity = Identity.generate()
        self.node_id = self.identity.node_id
        self.nonce = os.urandom(16).hex()
        self.seq = 0
        self.backlog = []


@pytest.fixture
def raw_from() -> Iterator[Callable[[int, str], RawPeerFrom]]:
    """Make raw peers from other loopback addresses; all closed at the end of the test."""
    made: list[RawPeerFrom] = []

    def make(port: int, source: str) -> RawPeerFrom:
        peer = RawPeerFrom(port, source)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def refused(node: Node, code: str) -> int:
    """``node.stats().links_refused[code]`` (0 if absent)."""
    return node.stats().links_refused.get(code, 0)


def wait_refused(node: Node, code: str, at_least: int) -> None:
    wait_for(
        lambda: refused(node, code) >= at_least,
        DELIVERY_S,
        f"links_refused[{code!r}] >= {at_least} (now {refused(node, code)})",
    )


def linked(a: Node, b: Node) -> bool:
    return b.node_id in {link.peer for link in a.snapshot().links}


def line_arrives(sender: Node, rec: Recorder, text: str) -> None:
    """``sender`` says ``text``; the user of ``rec``'s node sees it."""
    sender.send(text)
    wait_for(lambda: text in rec.texts(), DELIVERY_S, f"{text!r} to arrive")


# -- one address ---------------------------------------------------------------------------------


def test_one_address_cannot_take_every_slot(cluster: Cluster) -> None:
    # 30 idle sockets from 127.0.0.2 against a node that held 8 sockets of any kind before.
    a = cluster.add("alice", link=SLOW_HANDSHAKE, **SMALL)
    with IdleFlood(a.port, ["127.0.0.2"], per_source=30) as flood:
        wait_for(
            lambda: flood.cut >= 20, DELIVERY_S, "the node to cut 20 of the attacker's sockets"
        )
        b = cluster.add("bob", peers=[a], link=FAST_LINK)
        c = cluster.add("carol", peers=[a], link=FAST_LINK)
        cluster.wait_all_know_each_other(DELIVERY_S)
        line_arrives(b, cluster.recorders[2], "bob, through the flood")
        line_arrives(c, cluster.recorders[1], "carol, through the flood")
    assert {link.peer for link in a.snapshot().links} == {b.node_id, c.node_id}
    # Sockets beyond 2 in the handshake from 127.0.0.2 were refused as they came.
    assert refused(a, "handshake_busy") >= 20


def test_one_address_cannot_hold_every_link(
    cluster: Cluster, raw_from: Callable[[int, str], RawPeerFrom]
) -> None:
    # The attacker completes its handshakes (a fresh key for each link) from 127.0.0.2; the
    # node takes 3 links from there and refuses the next sockets at once, before its hello.
    slow_death = LinkConfig(handshake_timeout_s=2.0, keepalive_interval_s=0.3, link_timeout_s=30.0)
    a = cluster.add("alice", link=slow_death, max_links=4, max_links_per_address=3)
    room = cluster.room
    for _ in range(3):
        raw = raw_from(a.port, "127.0.0.2")
        raw.hello(room)
    wait_for(lambda: len(a.snapshot().links) == 3, DELIVERY_S, "3 links from 127.0.0.2")
    for _ in range(2):
        extra = raw_from(a.port, "127.0.0.2")
        extra.hello(room)
        got = extra.read_until_closed(DELIVERY_S)
        assert got and isinstance(got[0], wire.Refuse) and got[0].code == "busy", got
    wait_refused(a, "busy", 2)
    b = cluster.add("bob", peers=[a], link=FAST_LINK)
    wait_for(lambda: linked(a, b), DELIVERY_S, "bob to link with alice")
    line_arrives(b, cluster.recorders[0], "bob, beside three hostile links")
    line_arrives(a, cluster.recorders[1], "alice, beside three hostile links")


# -- many addresses ------------------------------------------------------------------------------

MANY = [f"127.0.0.{i}" for i in range(2, 41)]
"""39 attacking addresses."""


def test_many_addresses_fill_the_handshakes_but_not_the_own_dials(cluster: Cluster) -> None:
    # 2 idle sockets from each of 39 addresses: none over its address's share, 78 in all
    # against a handshake budget of 8.  Carol's own dial to alice still gets through.
    alice = cluster.add("alice", link=FAST_LINK)
    carol = cluster.add("carol", link=SLOW_HANDSHAKE, **SMALL)
    with IdleFlood(carol.port, MANY, per_source=2) as flood:
        wait_for(
            lambda: flood.cut >= 20, DELIVERY_S, "the node to cut 20 of the attacker's sockets"
        )
        carol.add_peer(LOOPBACK, alice.port)
        wait_for(lambda: linked(carol, alice), DELIVERY_S, "carol's dial to alice to link")
        cluster.wait_all_know_each_other(DELIVERY_S)
        line_arrives(alice, cluster.recorders[1], "alice to carol, under the flood")
        line_arrives(carol, cluster.recorders[0], "carol to alice, under the flood")
    assert refused(carol, "handshake_busy") >= 20


def test_static_peer_is_dialled_again_after_the_flood(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    # Alice's handshakes are full, so carol's first dials to her (--peer) are refused; carol
    # is flooded too.  Once the flood stops, carol's dialler, still at it, links.
    alice = cluster.add("alice", link=SLOW_HANDSHAKE, **SMALL)
    address = f"{LOOPBACK}:{alice.port}"

    def refusals() -> int:
        return sum(
            1
            for r in caplog.records
            if address in r.getMessage() and "refused the link (busy)" in r.getMessage()
        )

    with contextlib.ExitStack() as floods:
        flood = floods.enter_context(IdleFlood(alice.port, MANY[:20], per_source=2))
        wait_for(lambda: flood.cut >= 10, DELIVERY_S, "alice to cut 10 of the attacker's sockets")
        carol = cluster.add("carol", peers=[alice], link=SLOW_HANDSHAKE, **SMALL)
        floods.enter_context(IdleFlood(carol.port, MANY[20:], per_source=2))
        wait_for(lambda: refusals() >= 1, DELIVERY_S, "carol's first dial to be refused")
        assert not linked(carol, alice)
    wait_for(lambda: linked(carol, alice), DELIVERY_S, "carol to link with alice after the flood")
    line_arrives(carol, cluster.recorders[0], "carol, after the flood")
    line_arrives(alice, cluster.recorders[1], "alice, after the flood")


def test_inbound_sockets_past_twice_max_links_are_refused_as_busy() -> None:
    """Handshakes done, each from its own address: the node holds at most 2 x max_links
    inbound sockets (the overlay then closes the surplus links); the next is refused."""
    from p2pchat.core.config import NodeConfig
    from p2pchat.core.slots import Held, inbound_refusal

    cfg = NodeConfig(name="n", room="lobby", port=0, max_links=8)
    held = [Held(f"10.0.{i // 250}.{i % 250 + 1}", False) for i in range(2 * cfg.max_links - 1)]
    assert inbound_refusal(cfg, held, "10.9.9.9") is None
    held.append(Held("10.9.9.8", False))
    refusal = inbound_refusal(cfg, held, "10.9.9.9")
    assert refusal is not None and refusal[0] == "busy"
