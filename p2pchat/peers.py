"""The node's peers: its dialler threads and the discovery's callbacks (the shell's side).

:class:`Peers` keeps one :class:`~p2pchat.dialer.Dialer` per static peer
(``--peer``: dialled with backoff for as long as the node runs) and per dial
the core's overlay asks for (:class:`~p2pchat.core.actions.Dial`: once), and
turns what discovery finds or loses into the core's ``found``/``lost``.  It
is the :class:`~p2pchat.dialer.DialOwner` of those dialers.  Its methods run
on the discovery's threads, the diallers' threads or the thread carrying out
the core's actions; each takes the node's state lock only to call the core.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from typing import Protocol

from p2pchat import wire
from p2pchat.addrs import parse as parse_address
from p2pchat.addrs import refusal
from p2pchat.core.actions import Action, Dial
from p2pchat.core.config import NodeConfig
from p2pchat.core.protocol import Protocol as Core
from p2pchat.dialer import Dialer
from p2pchat.discovery import FoundPeer
from p2pchat.links import Links, ShellHost
from p2pchat.peerbook import PeerBook, Remembered
from p2pchat.privacy import TAG_PREFIX
from p2pchat.transport import Link

log = logging.getLogger("p2pchat.node")

MAX_ROOMS_SEEN = 32
"""Most other rooms :class:`Peers` remembers having seen on the LAN."""

MAX_NODES_PER_ROOM = 256
"""Most nodes it counts in one of them."""

RECALL_FIRST_S = 60.0
"""Seconds after start (or after the last offer) before the remembered peers
with no link are offered to the overlay again; doubled at each offer up to
:data:`RECALL_MAX_S`."""

RECALL_MAX_S = 960.0
"""Longest wait between two offers of the remembered peers (16 minutes)."""


class PeerHost(ShellHost, Protocol):
    """What :class:`Peers` needs of its node besides :class:`~p2pchat.links.ShellHost`."""

    @property
    def node_id(self) -> str: ...
    @property
    def links(self) -> Links: ...


class Peers:
    """The dialler threads of one node, by key (``host:port`` for a static
    peer, the node id for a dial of the overlay).  Node lock for the table.

    Args:
        node: the node whose core learns of peers and whose links the
            dialled sockets become.
    """

    def __init__(self, node: PeerHost) -> None:
        self.node = node
        self.config = node.config
        self.dialers: dict[str, Dialer] = {}
        # Other rooms' nodes discovery showed us: room (as its TXT says) -> node ids.
        self.rooms: dict[str, set[str]] = {}
        # Remembered peers (p2pchat/peerbook.py), and the addresses mDNS gave
        # of each node (those are not remembered): node id -> addresses.
        self.book = PeerBook(self.config.data_dir, time.time())
        self.on_lan: dict[str, set[str]] = {}
        self._recall_wait = RECALL_FIRST_S  # Peers.recall_due: the router thread's
        self._next_recall = float("inf")  # until recall() at start

    # -- DialOwner: what a dialler asks (any thread) -------------------------------------

    @property
    def closing(self) -> bool:
        """True once the node is closing."""
        return self.node._core.closed

    def has_link(self, node_id: str) -> bool:
        """True if a link to ``node_id`` is up."""
        return node_id in self.node._core.links

    def wants_links(self) -> bool:
        """True while the node has fewer links than the overlay's target."""
        return self.node._core.wants_links()

    def adopt(self, sock: socket.socket, direction: str, remote: tuple[str, int]) -> Link | None:
        """A dialler's connected socket becomes a link (:meth:`Links.adopt
        <p2pchat.links.Links.adopt>`)."""
        return self.node.links.adopt(sock, direction, remote)

    def dialer_done(self, dialer: Dialer) -> None:
        """A dialler thread ends: a dial of the overlay reports its outcome."""
        node = self.node
        with node._lock:
            if self.dialers.get(dialer.key) is dialer:
                del self.dialers[dialer.key]
        if dialer.once:
            linked, code = dialer.outcome
            if not linked:
                self.book.failed(dialer.node_id, list(dialer.addresses), dialer.port)
            core = node._core
            node._call(lambda now, wall: core.dial_done(dialer.node_id, now, linked, code))

    # -- the node's side --------------------------------------------------------------------

    def add_static(self, host: str, port: int) -> None:
        """A static peer, dialled with backoff for as long as the node runs
        (at most ``max_known_peers`` of them)."""
        key = f"{host}:{port}"
        with self.node._lock:
            if key in self.dialers or len(self.dialers) >= self.config.max_known_peers:
                return
            dialer = Dialer(self, key, [host], port)
            self.dialers[key] = dialer
        dialer.thread.start()

    def recall(self) -> None:
        """Start: the remembered peers go to the core like peers a presence
        named (its overlay dials them with backoff and its address policy
        applies; never static).  The caller's thread (``Node.start``)."""
        self._recall_wait = RECALL_FIRST_S
        self._next_recall = time.monotonic() + self._recall_wait
        # A host name typed with --peer (a MagicDNS name, say) is no address
        # the overlay may dial (p2pchat.addrs refuses names learnt from peers):
        # it comes back as the user typed it, a static peer resolved afresh.
        for e in self.book.entries():
            if e.source == "typed" and parse_address(e.host) is None:
                self.add_static(e.host, e.port)
        self._offer_remembered()

    def recall_due(self) -> None:
        """The router's turn (every few seconds): offer the remembered peers
        the node has no link to again, :data:`RECALL_FIRST_S` after the last
        offer, doubling to :data:`RECALL_MAX_S` (back to the first when a
        peer we dialled answers).  The overlay forgets a peer after a few
        failed dials; this brings back a site that was down when the node
        started (a VPN not up yet).  The overlay decides whether to dial: below
        its target, or one at a time as a peer that is no member of the room
        (its merge rule), so two sites that formed apart join.  The router
        thread."""
        now = time.monotonic()
        if now < self._next_recall or not self.book.enabled:
            return
        self._next_recall = now + self._recall_wait
        if self.node._core.closed:
            return
        self._recall_wait = min(self._recall_wait * 2, RECALL_MAX_S)
        self._offer_remembered()

    def _offer_remembered(self) -> None:
        """The remembered peers with no link now, to the core's ``found``;
        not at an address a ``--peer`` dialler dials already (the overlay
        would dial it too: two links to one node at start, one closed at
        once, and a line said meanwhile taken by catch-up as an earlier line)."""
        core = self.node._core
        for node_id, named, port in self.book.peers():
            hosts = [h for h in named if parse_address(h) is not None]  # names: recall()
            with self.node._lock:
                hosts = [h for h in hosts if f"{h}:{port}" not in self.dialers]
                skip = not hosts or node_id == self.node.node_id or node_id in core.links
            if not skip:
                self.node._call(functools.partial(_found, core, node_id, hosts, port))

    def answered(self, link: Link) -> None:
        """A link is up: if we dialled it, and not at an address mDNS gave
        for that node, its address is remembered (``typed`` if a ``--peer``
        dialler dialled it, else ``learnt``).  A link's reader thread."""
        if link.direction != "out" or link.peer is None:
            return
        host, port = link.remote[0], link.remote[1]
        node_id = link.peer.node
        with self.node._lock:
            if host in self.on_lan.get(node_id, ()):
                return
            static = self.dialers.get(f"{host}:{port}")
            typed = static is not None and not static.once
        self._recall_wait = RECALL_FIRST_S
        self.book.answered(host, port, node_id, "typed" if typed else "learnt", time.time())

    def forget(self, host: str, port: int | None) -> list[Remembered]:
        """``/forget``: remove the remembered ``host:port`` (every port of
        ``host`` when ``port`` is None), take the nodes that answered there
        out of the overlay's passive view and stop their diallers, and stop
        a ``--peer`` dialler of that address.  Links that are up stay.  Any
        thread.

        Returns:
            the entries removed.
        """
        gone = self.book.forget(host, port, time.time())
        nodes = {e.node for e in gone}
        with self.node._lock:
            stop = [
                d
                for key, d in self.dialers.items()
                if key in nodes or (not d.once and host in d.addresses and port in (None, d.port))
            ]
        core = self.node._core
        for node_id in nodes:
            self.node._call(functools.partial(_lost, core, node_id))
        for dialer in stop:
            dialer.stop()
        return gone

    def dial(self, action: Dial) -> None:
        """The core asks for one dial (its overlay): a dialler thread, unless
        one runs for that peer already (then it is no new dial)."""
        node = self.node
        core = node._core
        with node._lock:
            busy = action.node in self.dialers or core.closed
            if not busy:
                dialer = Dialer(
                    self,
                    action.node,
                    list(action.addrs),
                    action.port,
                    node_id=action.node,
                    once=True,
                )
                self.dialers[action.node] = dialer
        if busy:
            node._call(lambda now, wall: core.dial_done(action.node, now, linked=True))
        else:
            dialer.thread.start()

    def wake(self, node_id: str) -> None:
        """The link to ``node_id`` ended: its static peer's dialler (if any)
        dials again now, not at its next check.  Node lock held."""
        for dialer in self.dialers.values():
            if dialer.node_id == node_id:
                dialer.wake.set()

    # -- discovery callbacks (on the discovery's thread) ---------------------------------

    def found(self, peer: FoundPeer) -> None:
        """Discovery found (or updated) a peer: into the core's passive view,
        unless it is us, of another room or of another protocol version."""
        node = self.node
        core = node._core
        if peer.node_id == node.node_id:
            return
        if peer.room != core.wire_room:
            self._saw_room(peer.room, peer.node_id)
            return
        if peer.version != wire.PROTOCOL_VERSION:
            log.info("ignoring %s: protocol version %s", peer.name, peer.version)
            return
        addrs = list(peer.addresses)
        with node._lock:
            if peer.node_id in self.on_lan or len(self.on_lan) < self.config.max_known_peers:
                self.on_lan[peer.node_id] = set(addrs)  # not remembered (Peers.answered)
            dialer = self.dialers.get(peer.node_id)
            # The address policy (p2pchat.addrs), as the core applies (and counts) in found().
            allowed = [a for a in addrs if refusal(a, core.s.loopback_ok) is None]
            if dialer is not None and not dialer.stopped.is_set() and allowed:
                dialer.addresses = allowed
                dialer.port = peer.port
        node._call(lambda now, wall: core.found(peer.node_id, addrs, peer.port, now))

    def _saw_room(self, room: str, node_id: str) -> None:
        """Discovery showed a node of another room (for the hint of a node
        alone: "rooms seen on this LAN").  At most ``MAX_ROOMS_SEEN`` rooms
        of ``MAX_NODES_PER_ROOM`` nodes each; a private room is counted under
        its tag, which says nothing of its name."""
        room = room[: wire.MAX_ROOM_CHARS]
        with self.node._lock:
            seen = self.rooms.get(room)
            if seen is None:
                if len(self.rooms) >= MAX_ROOMS_SEEN:
                    return
                seen = self.rooms[room] = set()
            if len(seen) < MAX_NODES_PER_ROOM:
                seen.add(node_id)

    def rooms_seen(self) -> dict[str, int]:
        """Other rooms discovery shows on this LAN, with how many nodes each
        (private rooms under ``"private"``).  Any thread."""
        out: dict[str, int] = {}
        with self.node._lock:
            for room, nodes in self.rooms.items():
                if nodes:
                    key = "private" if room.startswith(TAG_PREFIX) else room
                    out[key] = out.get(key, 0) + len(nodes)
        return out

    def lost(self, node_id: str) -> None:
        """Discovery says the peer is gone: out of the passive view, its dialler stopped."""
        with self.node._lock:
            for nodes in self.rooms.values():
                nodes.discard(node_id)
            self.on_lan.pop(node_id, None)
            self.node._core.lost(node_id)
            dialer = self.dialers.get(node_id)
        if dialer is not None:
            dialer.stop()


def _found(
    core: Core, node_id: str, hosts: list[str], port: int, now: float, wall: float
) -> list[Action]:
    return core.found(node_id, hosts, port, now)


def _lost(core: Core, node_id: str, now: float, wall: float) -> list[Action]:
    return core.lost(node_id)


def advertised_addresses(config: NodeConfig) -> list[str]:
    """Addresses for our presence, both families: the ``interfaces``, or
    the machine's (:func:`~p2pchat.discovery.local_addresses`: loopback only
    when it has nothing else), at most 8.  Never a link-local IPv6 address:
    its zone names an interface of this machine, meaningless to others."""
    from p2pchat.addrs import is_link_local_v6, normalize
    from p2pchat.discovery import local_addresses

    addrs = [a for a in config.interfaces if a not in ("0.0.0.0", "::")] or local_addresses()
    return [normalize(a) for a in addrs if not is_link_local_v6(a)][:8]
