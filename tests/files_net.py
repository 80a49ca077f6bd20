"""Helpers of the file-transfer tests: a node's data side on 127.0.0.1, no Node.

:class:`MemNet` joins engines in memory on a virtual clock (no sockets).
:class:`FilePeer` is an identity, a :class:`~p2pchat.files.transfers.FileTransfers`
and a listener whose inbound sockets go through the real
:class:`p2pchat.links.Links` (``adopt`` with its per-address and handshake
caps, then ``check_hello`` handing a hello that lists ``data`` to
``Links.data_owner``), over a stub of the node that only makes hellos (a
chat hello would reach the stub core and fail the test: only data links come).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pchat import wire
from p2pchat.core.config import LinkConfig, NodeConfig
from p2pchat.files import datawire
from p2pchat.files.engine import Close, Dial, Emit, Engine, EngineAction, Holder, Send
from p2pchat.files.events import FileDone, FileFailed, FileProgress
from p2pchat.files.manifest import Offer
from p2pchat.files.partial import WriterFactory, open_writer
from p2pchat.files.seal import data_link_cipher
from p2pchat.files.serve import ServeConfig
from p2pchat.files.swarm import SwarmConfig
from p2pchat.files.transfers import FileTransfers
from p2pchat.identity import Identity
from p2pchat.links import Links
from p2pchat.privacy import RoomSecret
from p2pchat.transport import Link, Listener, dial

LOOPBACK = "127.0.0.1"
FAST_LINKS = LinkConfig(handshake_timeout_s=3.0, keepalive_interval_s=1.0, link_timeout_s=4.0)


@dataclass
class _State:
    links_refused: dict[str, int] = field(default_factory=dict)
    frames_refused: dict[str, int] = field(default_factory=dict)
    closed: bool = False


class _StubCore:
    """What :meth:`Links.adopt` and ``check_hello``'s hand-off touch of the core."""

    def __init__(self, make_hello: Callable[[str], wire.Hello]) -> None:
        self.s = _State()
        self.closed = False
        self.secret = None
        self._make_hello = make_hello

    def hello(self, nonce: str) -> wire.Hello:
        return self._make_hello(nonce)

    def check_hello(self, *args: Any) -> wire.Refuse | None:
        raise AssertionError("a chat hello reached the stub core")

    def link_down(self, *args: Any) -> list[Any]:
        return []


class _StubNode:
    def __init__(self, make_hello: Callable[[str], wire.Hello]) -> None:
        self.config = NodeConfig(name="n", room="r", port=0, interfaces=[LOOPBACK], link=FAST_LINKS)
        self._lock = threading.RLock()
        self._core = _StubCore(make_hello)

    def _call(self, fn: Callable[[float, float], list[Any]]) -> None:
        fn(0.0, 0.0)

    def wake_dialer(self, node_id: str) -> None:
        pass


class FilePeer:
    """One node's data side: listener on 127.0.0.1 (port ``port``), transfers.

    Args:
        tmp: a directory of its own (downloads in ``tmp/dl``, state in ``tmp/state``).
        room: the room (the hello's room).
        secret: a private room's secret, or None.
        identity: reuse a key pair (a restarted node), or a new one.
        port: listen on this port (a restarted node keeps its port), 0: any.
    """

    def __init__(
        self,
        tmp: Path,
        room: str = "files-test",
        secret: bytes | None = None,
        identity: Identity | None = None,
        port: int = 0,
        serve_config: ServeConfig | None = None,
        swarm_config: SwarmConfig | None = None,
        max_data_links: int = 16,
        open_file: WriterFactory = open_writer,
    ) -> None:
        self.tmp = tmp
        self.identity = identity or Identity.generate()
        self.room_secret = RoomSecret(secret, room) if secret is not None else None
        self.wire_room = self.room_secret.tag if self.room_secret is not None else room
        self.events: list[object] = []
        self.lock = threading.Lock()
        self.node = _StubNode(self.hello)
        self.links = Links(self.node)  # type: ignore[arg-type]
        self.links.node.config.port = port
        self.links.listen()
        self.port = self.links.port
        self.transfers = FileTransfers(
            identity=self.identity,
            room=room,
            room_secret=self.room_secret,
            hello=self.hello,
            link_config=FAST_LINKS,
            download_dir=tmp / "dl",
            state_dir=tmp / "state",
            on_event=self._event,
            loopback_ok=True,
            max_data_links=max_data_links,
            swarm_config=swarm_config or SwarmConfig(request_timeout_s=3.0),
            serve_config=serve_config,
            open_file=open_file,
        )
        self.links.data_owner = self.transfers.data_owner

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def hello(self, nonce: str) -> wire.Hello:
        return wire.Hello(
            version=wire.PROTOCOL_VERSION,
            node=self.identity.node_id,
            name="n",
            room=self.wire_room,
            port=self.port if hasattr(self, "port") else 0,
            features=["history"],
            nonce=nonce,
            key=self.identity.key,
        )

    def holder(self) -> Holder:
        return Holder(self.node_id, [LOOPBACK], self.port)

    def _event(self, event: object) -> None:
        with self.lock:
            self.events.append(event)

    def offer(self, path: Path, allowed: frozenset[str] | None = None) -> Offer:
        got: list[Offer | Exception] = []
        ready = threading.Event()

        def done(result: Offer | Exception) -> None:
            got.append(result)
            ready.set()

        self.transfers.offer_path(path, allowed, done)
        assert ready.wait(30.0), "the offer was not hashed in 30 s"
        result = got[0]
        assert isinstance(result, Offer), result
        return result

    def done(self, file_id: bytes) -> FileDone | None:
        with self.lock:
            return next(
                (e for e in self.events if isinstance(e, FileDone) and e.file == file_id), None
            )

    def failed(self, file_id: bytes) -> FileFailed | None:
        with self.lock:
            return next(
                (e for e in self.events if isinstance(e, FileFailed) and e.file == file_id), None
            )

    def progress(self) -> list[FileProgress]:
        with self.lock:
            return [e for e in self.events if isinstance(e, FileProgress)]

    def close(self) -> None:
        for listener in self.links.listeners:
            listener.close()
        self.transfers.close(10.0)
        for listener in self.links.listeners:
            listener.join(5.0)
        for link in list(self.links.all):
            link.close("test over")
            link.join(5.0)

    def abort(self) -> None:
        """As a killed process: listener closed, links cut, no part file flushed."""
        for listener in self.links.listeners:
            listener.close()
        self.transfers.abort()
        for listener in self.links.listeners:
            listener.join(5.0)


def make_file(path: Path, size: int, seed: int = 1) -> bytes:
    """A file of ``size`` pseudo-random bytes (incompressible, reproducible)."""
    out = bytearray()
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    data = bytes(out[:size])
    path.write_bytes(data)
    return data


Script = Callable[["HostilePeer", Link, Any], None]


class HostilePeer:
    """A raw data-link peer: a real sealed :class:`Link` whose answers are
    whatever ``script(peer, link, msg)`` sends (``link.send`` of any bytes).
    It listens on 127.0.0.1 (a holder to dial) and can dial a FilePeer.

    Attributes:
        got: every message received, in order.
    """

    def __init__(self, script: Script, room: str = "files-test") -> None:
        self.identity = Identity.generate()
        self.room = room
        self.script = script
        self.got: list[Any] = []
        self.links: list[Link] = []
        self.lock = threading.Lock()
        self.listener = Listener(LOOPBACK, 0, self._accept)
        self.port = self.listener.port
        self.listener.start()

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def holder(self) -> Holder:
        return Holder(self.node_id, [LOOPBACK], self.port)

    def hello(self) -> wire.Hello:
        return wire.Hello(
            version=wire.PROTOCOL_VERSION,
            node=self.identity.node_id,
            name="evil",
            room=self.room,
            port=self.port,
            features=["data"],
            nonce=os.urandom(16).hex(),
            key=self.identity.key,
        )

    def _accept(self, sock: socket.socket, remote: tuple[str, int]) -> None:
        self._start(Link(sock, "in", remote, self, self.hello(), FAST_LINKS))

    def dial(self, port: int, source: str = LOOPBACK) -> Link:
        sock = socket.create_connection((LOOPBACK, port), timeout=3.0, source_address=(source, 0))
        link = Link(sock, "out", (LOOPBACK, port), self, self.hello(), FAST_LINKS)
        self._start(link)
        return link

    def _start(self, link: Link) -> None:
        with self.lock:
            self.links.append(link)
        link.start()

    # LinkOwner
    def check_hello(self, link: Link, hello: wire.Hello) -> wire.Refuse | None:
        link.decode_body = datawire.decode_body
        link.cipher = data_link_cipher(
            self.identity, hello.key, link.hello.nonce, hello.nonce, link.direction == "out", None
        )
        return None

    def prove(self, link: Link, hello: wire.Hello) -> wire.Proof:
        data = wire.proof_bytes(hello.nonce, self.node_id, hello.node, link.hello.room)
        return wire.Proof(sig=self.identity.sign(data))

    def check_proof(self, link: Link, hello: wire.Hello, proof: wire.Proof) -> bool:
        return True

    def on_link_up(self, link: Link) -> None:
        pass

    def on_message(self, link: Link, msg: Any) -> None:
        with self.lock:
            self.got.append(msg)
        self.script(self, link, msg)

    def on_link_closed(self, link: Link, reason: str, was_up: bool) -> None:
        pass

    def close(self) -> None:
        self.listener.close()
        self.listener.join(5.0)
        with self.lock:
            links = list(self.links)
        for link in links:
            link.close("test over")
            link.join(5.0)


def send(link: Link, msg: datawire.DataMessage) -> None:
    """Send one data-link message on a hostile link."""
    link.send(datawire.encode_frame(msg))


__all__ = ["dial"]


MEMNET_STEP_S = 0.01
"""How far :meth:`MemNet.step` moves the virtual clock."""


@dataclass
class MemNet:
    """Engines by node id, linked in memory; every frame a node sends is logged."""

    engines: dict[str, Engine] = field(default_factory=dict)
    peer_of: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    next_link: int = 1
    sent: list[tuple[str, str, datawire.DataMessage]] = field(default_factory=list)  # from, to, msg
    done: dict[str, FileDone] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)
    now: float = 0.0

    def run(self, node: str, actions: list[EngineAction]) -> None:
        for action in actions:
            if isinstance(action, Send):
                peer = self.peer_of.get((node, action.link))
                if peer is None:
                    continue
                msg = datawire.decode_body(action.frame[4:])
                if isinstance(msg, wire.Keepalive):
                    continue
                self.sent.append((node, peer[0], msg))
                self.run(peer[0], self.engines[peer[0]].receive(peer[1], msg, self.now))
            elif isinstance(action, Dial):
                self.link(node, action.holder.node)
            elif isinstance(action, Close):
                self.unlink(node, action.link)
            elif isinstance(action, Emit) and isinstance(action.event, FileDone):
                self.done[node] = action.event

    def link(self, a: str, b: str) -> None:
        if b in self.stopped or a in self.stopped:
            self.run(a, self.engines[a].dial_failed(b, self.now))
            return
        la, lb = self.next_link, self.next_link + 1
        self.next_link += 2
        self.peer_of[(a, la)], self.peer_of[(b, lb)] = (b, lb), (a, la)
        out_a = self.engines[a].link_up(la, b, "127.0.0.1", 1, self.now)
        out_b = self.engines[b].link_up(lb, a, "127.0.0.1", 1, self.now)
        self.run(a, out_a)
        self.run(b, out_b)

    def unlink(self, node: str, link: int) -> None:
        peer = self.peer_of.pop((node, link), None)
        self.run(node, self.engines[node].link_down(link, self.now))
        if peer is not None:
            self.peer_of.pop(peer, None)
            self.run(peer[0], self.engines[peer[0]].link_down(peer[1], self.now))

    def stop(self, node: str) -> None:
        """The node vanishes: every link of it goes down."""
        self.stopped.add(node)
        for n, link in [k for k in self.peer_of if k[0] == node]:
            self.unlink(n, link)

    def step(self) -> None:
        self.now += MEMNET_STEP_S
        for node, engine in self.engines.items():
            if node in self.stopped:
                continue
            self.run(node, engine.pump(lambda _: True, self.now))
            self.run(node, engine.tick(self.now))
