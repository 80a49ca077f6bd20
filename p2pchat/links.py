"""The node's sockets: its listeners, and the links it owns (the shell's side).

:class:`Links` is the :class:`~p2pchat.transport.LinkOwner` of every link of
one :class:`~p2pchat.node.Node`: it binds the listeners, adopts connected
sockets (refusing inbound ones over the handshake budgets of
:mod:`p2pchat.core.slots` before any thread starts for them), answers the
handshake callbacks with the core's policy, hands each decoded frame to the
core and folds a closed link's counters into the node's totals.  Every
callback runs on a link's reader thread (or the listener's, or a dialler's)
and takes the node's state lock only to call the core; the actions the core
returns are carried out after the lock is released (``Node._drain``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

from p2pchat import wire
from p2pchat.core.actions import Action, Emit
from p2pchat.core.config import NodeConfig
from p2pchat.core.protocol import Protocol as Core
from p2pchat.core.slots import Held, inbound_refusal
from p2pchat.errors import StartupError
from p2pchat.events import Event, Notice
from p2pchat.transport import ANY_HOST, Link, LinkOwner, Listener, PortInUse

log = logging.getLogger("p2pchat.node")


class ShellHost(Protocol):
    """What the node's parts (:class:`Links`, :class:`p2pchat.peers.Peers`)
    need of it (:class:`p2pchat.node.Node`): its settings, its state lock,
    its core, and feeding the core (``_call``)."""

    @property
    def config(self) -> NodeConfig: ...
    @property
    def _lock(self) -> AbstractContextManager[Any]: ...
    @property
    def _core(self) -> Core: ...

    def _call(self, fn: Callable[[float, float], list[Action]]) -> None: ...


class LinkHost(ShellHost, Protocol):
    """What :class:`Links` needs of its node besides :class:`ShellHost`."""

    @property
    def _outbox(self) -> deque[Action]: ...

    def _queue(self, actions: list[Action]) -> None: ...
    def _drain(self) -> None: ...
    def _emit(self, events: list[Event]) -> None: ...
    def wake_dialer(self, node_id: str) -> None: ...
    def link_answered(self, link: Link) -> None: ...


class Links:
    """The listeners and links of one node.

    Args:
        node: the node whose core, state lock and outbox the links feed.

    Attributes:
        port: the TCP port listened on (0 before :meth:`listen`).
        all: every link not yet closed, handshake done or not.  Node lock.
        queue_drops: links closed because their send queue was full.
        data_owner: the owner of data links (file transfers,
            :class:`p2pchat.files.transfers.FileTransfers`), or None: a hello
            that lists the ``data`` feature is then refused (``busy``).
    """

    def __init__(self, node: LinkHost) -> None:
        self.node = node
        self.port = 0
        self.all: set[Link] = set()
        self.listeners: list[Listener] = []
        self.queue_drops = 0
        self.data_owner: LinkOwner | None = None
        self._noticed: set[tuple[str, str]] = set()
        self._counts: dict[str, int] = dict.fromkeys(
            ("frames_in", "frames_out", "bytes_in", "bytes_out"), 0
        )

    # -- listening ------------------------------------------------------------------

    def listen(self) -> None:
        """Bind every interface of the config on its port (or, with
        ``port_fallback``, any free one when it is taken) and start
        accepting.

        Raises:
            StartupError: the port is taken (and no fallback), or an
                interface address is not on this machine.
        """
        config = self.node.config
        hosts = config.interfaces or [ANY_HOST]  # both families (IPv4 only if no IPv6)
        try:
            self._bind_all(hosts, config.port)
        except PortInUse as exc:
            if not config.port_fallback:
                raise StartupError(
                    f"{exc}; choose another with --port (0 = any free port)"
                ) from None
            self.node._emit(
                [Notice(text=f"{exc}; listening on a free port instead", level="warning")]
            )
            self._bind_all(hosts, 0)

    def _bind_all(self, hosts: list[str], port: int) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners = []
        try:
            for host in hosts:
                listener = Listener(host, port, self._accept)
                self.listeners.append(listener)
                port = listener.port  # the others take the same port
        except StartupError:
            for listener in self.listeners:
                listener.close()
            self.listeners = []
            raise
        self.port = port
        for listener in self.listeners:
            listener.start()

    def _accept(self, sock: socket.socket, remote: tuple[str, int]) -> None:
        """Listener thread: adopt an inbound socket, or refuse it at once."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.adopt(sock, "in", remote)

    def adopt(self, sock: socket.socket, direction: str, remote: tuple[str, int]) -> Link | None:
        """Start a link on a connected socket (its reader and writer threads).

        An inbound socket over a limit of :func:`~p2pchat.core.slots.inbound_refusal` is refused
        here, before any thread starts for it: it gets a ``refuse`` (best
        effort, never blocking) and is closed.  An outbound one is never
        refused here.  Listener or dialler thread.

        Returns:
            the link, or None when the socket was refused or the node is
            closing (the socket is closed then).
        """
        assert direction in ("in", "out")
        node = self.node
        with node._lock:
            core = node._core
            if core.closed:
                sock.close()
                return None
            refusal = (
                inbound_refusal(
                    node.config,
                    (Held(k.remote[0], k.up_at is None) for k in self.all if k.direction == "in"),
                    remote[0],
                )
                if direction == "in"
                else None
            )
            if refusal is not None:
                code = refusal[0]
                refused = core.s.links_refused
                refused[code] = refused.get(code, 0) + 1
            else:
                hello = core.hello(os.urandom(16).hex())
                way: Literal["in", "out"] = "in" if direction == "in" else "out"
                link = Link(sock, way, remote, self, hello, node.config.link)
                self.all.add(link)
        if refusal is not None:
            log.debug("refused a connection from %s: %s", remote[0], refusal[1])
            frame = wire.encode_frame(wire.Refuse(code="busy", reason=refusal[1]))
            with contextlib.suppress(OSError):
                sock.setblocking(False)  # never wait (MSG_DONTWAIT is not on Windows)
                sock.send(frame)
            sock.close()
            return None
        link.start()
        return link

    # -- LinkOwner callbacks: on link reader threads ------------------------------------

    def check_hello(self, link: Link, hello: wire.Hello) -> wire.Refuse | None:
        """The core's handshake policy (:meth:`Protocol.check_hello
        <p2pchat.core.protocol.Protocol.check_hello>`); in a private room, set
        the link's cipher from both nonces.  A data link (the hello lists
        ``data``) is handed to :attr:`data_owner`, whose verdict this returns;
        it no longer counts among :attr:`all` (it was admitted by the same
        per-address and handshake caps; the data owner bounds its own)."""
        node = self.node
        if "data" in hello.features:
            owner = self.data_owner
            if owner is None:
                return wire.Refuse(code="busy", reason="no file transfers here")
            with node._lock:
                self.all.discard(link)
            link.set_owner(owner)
            return owner.check_hello(link, hello)
        with node._lock:
            refusal = node._core.check_hello(link.direction, hello, time.monotonic())
        secret = node._core.secret
        if refusal is None and secret is not None:  # every frame after the hellos is sealed
            link.cipher = secret.link_cipher(link.hello.nonce, hello.nonce, link.direction == "out")
        return refusal

    def prove(self, link: Link, hello: wire.Hello) -> wire.Proof:
        """Sign the peer's nonce: we hold the key of our node id (§4)."""
        return self.node._core.prove(hello)

    def check_proof(self, link: Link, hello: wire.Hello, proof: wire.Proof) -> bool:
        """The peer signed our nonce with the key its hello names."""
        return self.node._core.check_proof(link.hello.nonce, hello, proof)

    def on_link_up(self, link: Link) -> None:
        """Handshake done: the core registers the link (tie-break, peer_up)."""
        peer = link.peer
        if peer is None:
            link.close("no hello")
            return
        core = self.node._core
        self.node._call(
            lambda now, wall: core.link_up(link, peer, link.direction, link.address, now, wall)
        )
        if not link.done.is_set():
            self.node.link_answered(link)  # remembered peers (p2pchat/peerbook.py)

    def on_message(
        self, link: Link, msg: wire.FloodMessage | wire.TreeMessage | wire.HistoryMessage
    ) -> None:
        """A decoded frame: the core takes it on the link's reader thread,
        under the state lock (``Node._call`` without its closure: the hot
        path).  A reader busy here reads no more, which pushes back on the
        peer through TCP."""
        node = self.node
        with node._lock:
            node._queue(node._core.receive(link, msg, time.monotonic(), time.time()))
        node._drain()

    def on_link_closed(self, link: Link, reason: str, was_up: bool) -> None:
        """The link ended: fold its counters in, tell the core (and surface
        refusals to the user, once per address and cause)."""
        node = self.node
        text = ""
        if link.refused is not None and link.refused.code in ("version", "room"):
            text = f"{link.address} refused the link: {link.refused.reason}"
            key = (link.remote[0], link.refused.code)
        elif link.refusal is not None and link.refusal.code in ("version", "room"):
            text = f"refused a link with {link.remote[0]}: {link.refusal.reason}"
            key = (link.remote[0], link.refusal.code)
        with node._lock:
            if text:
                fresh = key not in self._noticed
                if fresh and len(self._noticed) < 1024:
                    self._noticed.add(key)
                if fresh:
                    node._outbox.append(Emit(Notice(text=text, level="error")))
            if link in self.all:
                self.all.discard(link)
                self._account_closed(link)
            if link.peer is not None:
                node.wake_dialer(link.peer.node)
        core = node._core
        node._call(lambda now, wall: core.link_down(link, reason, now, wall))

    def _account_closed(self, link: Link) -> None:
        """Fold a closed link's counters into the node's totals.  Node lock held."""
        self._counts["frames_in"] += link.frames_in
        self._counts["frames_out"] += link.frames_out
        self._counts["bytes_in"] += link.bytes_in
        self._counts["bytes_out"] += link.bytes_out
        s = self.node._core.s
        if link.frame_error:
            s.frames_refused[link.frame_error] = s.frames_refused.get(link.frame_error, 0) + 1
        if link.end_code and not (link.end_code == "keepalive_timeout" and s.closed):
            s.links_refused[link.end_code] = s.links_refused.get(link.end_code, 0) + 1
        if link.end_code == "queue_full":
            self.queue_drops += 1

    def totals(self) -> dict[str, int]:
        """Frames and bytes in and out over every link, closed or up:
        ``frames_in``, ``frames_out``, ``bytes_in``, ``bytes_out``.  Node lock held."""
        counts = dict(self._counts)
        for link in self.all:
            counts["frames_in"] += link.frames_in
            counts["frames_out"] += link.frames_out
            counts["bytes_in"] += link.bytes_in
            counts["bytes_out"] += link.bytes_out
        return counts
