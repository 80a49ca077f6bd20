"""TCP links to peers: listener, handshake, reader and writer threads, send queues.

Threads (all named, all joined by :meth:`Link.join` / :meth:`Listener.join`):

* ``p2pchat-listener-<addr>``: accepts links on one listening socket.
* ``p2pchat-link-<n>-r``: a link's reader; runs the handshake, then decodes
  frames and hands each message to the owner's ``on_message``.
* ``p2pchat-link-<n>-w``: a link's writer; drains the link's bounded send
  queue and sends a ``keepalive`` whenever nothing was sent for
  ``keepalive_interval_s``.  A frame sent while nothing is queued and the
  socket has room is written at once on the sending thread instead (no
  thread hop: about 0.4 ms less per hop, ``docs/performance.md``).

A :class:`Link` knows nothing of flooding: its owner (the node) decides what
to send.  One slow peer fills only its own queue; when that is full the link is
closed ("send queue full") rather than slowing the others.  Every blocking call
has a timeout: ``handshake_timeout_s`` for the first frame, ``link_timeout_s``
for every later read and every send.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol

from p2pchat import wire
from p2pchat.addrs import hostport, is_link_local_v6, normalize
from p2pchat.core.config import LinkConfig as LinkConfig
from p2pchat.errors import LinkRefused, RemoteProtocolError, StartupError, VersionMismatch
from p2pchat.portable import WriteProbe, reuse_address, send_nowait
from p2pchat.privacy import LinkCipher

log = logging.getLogger(__name__)

Direction = Literal["in", "out"]

_RETIRE = object()  # writer sentinel: flush, then half-close
_STOP = object()  # writer sentinel: stop now
_FLUSH = object()  # writer sentinel: send the rest of a frame a caller began

_link_numbers = itertools.count(1)


class LinkOwner(Protocol):
    """What a :class:`Link` calls back into.  All three are called on the
    link's reader thread; they must not block for long."""

    def check_hello(self, link: Link, hello: wire.Hello) -> wire.Refuse | None:
        """Return a refusal for this peer's hello, or None to accept it."""

    def prove(self, link: Link, hello: wire.Hello) -> wire.Proof:
        """Our ``proof`` for the peer whose (accepted) hello this is."""

    def check_proof(self, link: Link, hello: wire.Hello, proof: wire.Proof) -> bool:
        """True if ``proof`` proves that the peer holds the key of ``hello``."""

    def on_link_up(self, link: Link) -> None:
        """The handshake finished; ``link.peer`` is set."""

    def on_message(
        self, link: Link, msg: wire.FloodMessage | wire.TreeMessage | wire.HistoryMessage
    ) -> None:
        """A flooded message (or a tree-broadcast frame) arrived on an
        established link."""

    def on_link_closed(self, link: Link, reason: str, was_up: bool) -> None:
        """The link is closed (always called once, last)."""


class Link:
    """One TCP link to one peer.

    Args:
        sock: a connected TCP socket; the link owns it from now on.
        direction: ``"out"`` if we dialled, ``"in"`` if the peer did.
        remote: ``(ip, port)`` of the socket's remote end.
        owner: receives the callbacks (see :class:`LinkOwner`).
        hello: our own ``hello``, sent first.
        config: timing and size limits.

    After :meth:`start`, the reader and writer threads run until the link
    closes; :meth:`join` waits for them.  :attr:`done` is set once closed.
    """

    def __init__(
        self,
        sock: socket.socket,
        direction: Direction,
        remote: tuple[str, int],
        owner: LinkOwner,
        hello: wire.Hello,
        config: LinkConfig,
    ) -> None:
        self.number = next(_link_numbers)
        self.sock = sock
        self.direction: Direction = direction
        self.remote = remote
        self.config = config
        self.peer: wire.Hello | None = None
        self.refused: wire.Refuse | None = None  # the peer refused us
        self.refusal: wire.Refuse | None = None  # we refused the peer
        self.end_code: str | None = None  # why it ended, for counters
        self.frame_error: str | None = None  # code of the bad frame that ended it
        self._partial_since: float | None = None
        self.started_at = time.monotonic()
        self.up_at: float | None = None
        self.done = threading.Event()
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._owner = owner
        self._hello = hello
        self.cipher: LinkCipher | None = None
        """Set by the owner's ``check_hello`` in a private room: every frame
        after the two hellos is sealed and opened with it."""
        self.decode_body: Callable[[bytes], Any] = wire.decode_body
        """Decodes each frame body after the handshake (the hello and proof
        are always :func:`wire.decode_body`'s).  A data link's owner sets its
        own in ``check_hello`` (:mod:`p2pchat.files.datawire`); it returns a
        :class:`wire.Keepalive` for a keepalive and raises
        :class:`~p2pchat.errors.RemoteProtocolError` for a bad frame."""
        self._queue: queue.Queue[object] = queue.Queue(maxsize=config.send_queue_frames)
        # Sending.  A frame goes out on the caller's thread when nothing is
        # queued and the socket has room (no thread hop: lower latency and
        # CPU), else through the queue and the writer thread.  _state guards
        # _pending (frames queued, not yet sent) and the claim of _sock_lock,
        # which is held while bytes go out, so frames keep their order.
        self._state = threading.Lock()
        self._sock_lock = threading.Lock()
        self._pending = 0
        self._carry = b""  # the unsent rest of a frame sent on a caller's thread
        self._first = True  # our hello: always in the clear
        self._sent_at = time.monotonic()  # when a frame last went out (keepalives)
        self._probe = WriteProbe(sock)  # poll(), or select() on Windows
        self._close_lock = threading.Lock()
        self._close_reason: str | None = None
        self._retired = False
        self._reader = threading.Thread(
            target=self._read_loop, name=f"p2pchat-link-{self.number}-r", daemon=True
        )
        self._writer = threading.Thread(
            target=self._write_loop, name=f"p2pchat-link-{self.number}-w", daemon=True
        )

    def __repr__(self) -> str:
        peer = self.peer.node if self.peer else "?"
        return f"<Link #{self.number} {self.direction} {self.address} peer={peer}>"

    @property
    def hello(self) -> wire.Hello:
        """The hello we sent on this link."""
        return self._hello

    @property
    def peer_id(self) -> str:
        """The peer's node id (empty before the handshake)."""
        return self.peer.node if self.peer else ""

    @property
    def address(self) -> str:
        """``host:port`` of the peer (``[host]:port`` for IPv6): its listening
        port once known."""
        port = self.peer.port if self.peer and self.peer.port else self.remote[1]
        return hostport(normalize(self.remote[0]), port)

    @property
    def dialer(self) -> str:
        """Node id of the node that dialled this link (needs the handshake)."""
        return self._hello.node if self.direction == "out" else self.peer_id

    def set_owner(self, owner: LinkOwner) -> None:
        """Hand the link to another owner, from inside the current owner's
        ``check_hello`` (reader thread): the new owner gets every later
        callback, ``on_link_closed`` included (a data link handed from the
        node's :class:`~p2pchat.links.Links` to the file transfers)."""
        self._owner = owner

    @property
    def retired(self) -> bool:
        """True once :meth:`retire` was called."""
        return self._retired

    def start(self) -> None:
        """Queue our hello and start the reader and writer threads."""
        with self._state:
            self._queue.put_nowait(wire.encode_frame(self._hello))
            self._pending += 1
        self.sock.settimeout(self.config.link_timeout_s)
        self._writer.start()
        self._reader.start()

    def send(self, frame: bytes) -> bool:
        """Send one encoded frame, in order; never blocks.  Any thread.

        Once the link is up, with nothing queued and room in the socket's
        buffer, the frame is written on the caller's thread; otherwise it
        waits in the send queue for the writer thread.

        Returns:
            False if the link is closed or retired, or if the queue was full:
            the link is then closed ("send queue full"), so one peer that
            stops reading cannot hold up the others.
        """
        with self._state:
            if self._close_reason is not None or self._retired:
                return False
            direct = (
                self.up_at is not None
                and self._pending == 0
                and self._sock_lock.acquire(blocking=False)
            )
            if not direct:
                return self._enqueue_locked(frame)
        try:
            self._send_now(frame)
        finally:
            self._sock_lock.release()
        return True

    def _enqueue_locked(self, item: object) -> bool:
        """Queue ``item`` for the writer (caller holds ``_state``)."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.end_code = "queue_full"
            self.close("send queue full")  # takes no _state: safe here
            return False
        self._pending += 1
        return True

    def _send_now(self, frame: bytes) -> None:
        """Write ``frame`` on this thread without blocking (caller holds
        ``_sock_lock``); what the socket does not take now is left to the
        writer thread, first in line."""
        item = self._seal(frame)
        sent = 0
        try:
            if self._probe.ready():
                sent = send_nowait(self.sock, item)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._send_failed(exc)
            return
        self.frames_out += 1
        self.bytes_out += len(item)
        self._sent_at = time.monotonic()
        if sent < len(item):
            self._carry = item[sent:]
            with self._state:
                self._enqueue_locked(_FLUSH)

    def _seal(self, frame: bytes) -> bytes:
        """The frame as it goes on the wire (caller holds ``_sock_lock``):
        sealed in a private room, except our hello."""
        if self._first:
            self._first = False
            return frame
        if self.cipher is None:
            return frame
        sealed = self.cipher.seal(frame[wire.HEADER.size :])
        return wire.HEADER.pack(len(sealed)) + sealed

    def _send_failed(self, exc: OSError) -> None:
        if self._close_reason is None:
            self.close(
                "send timeout"
                if isinstance(exc, TimeoutError)
                else f"send failed: {exc.strerror or exc}"
            )

    def queued(self) -> int:
        """Frames waiting in the send queue."""
        return self._queue.qsize()

    def retire(self) -> None:
        """Stop sending on this link after what is queued, then half-close it.

        Frames the peer still sends are read until it half-closes too (or the
        link times out).  Used to drop the losing link of a duplicate pair
        without losing a frame that was already on its way.
        """
        with self._state:
            if self._retired:
                return
            self._retired = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_RETIRE)

    def close(self, reason: str) -> None:
        """Close the link now (idempotent; the first reason is kept).

        Wakes both threads by shutting the socket down; the reader thread
        then reports :meth:`LinkOwner.on_link_closed`.
        """
        with self._close_lock:
            if self._close_reason is not None:
                return
            self._close_reason = reason
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds for both threads to end."""
        deadline = time.monotonic() + timeout_s
        for t in (self._reader, self._writer):
            if t.is_alive() and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    # -- reader ---------------------------------------------------------------

    def _read_loop(self) -> None:
        reason = "closed"
        was_up = False
        try:
            decoder = wire.FrameDecoder()
            early = self._handshake(decoder)
            was_up = True
            self.up_at = time.monotonic()
            self._owner.on_link_up(self)
            self.sock.settimeout(self.config.link_timeout_s)
            while True:
                # Decode one frame at a time, so that the frames before a bad
                # one in the same read are still delivered.
                for body in early or self._recv(decoder):
                    if self.cipher is not None:
                        body = self._open(body)
                    msg = self.decode_body(body)
                    self.frames_in += 1
                    if isinstance(msg, wire.Keepalive):
                        continue
                    if isinstance(msg, (wire.Hello, wire.Refuse, wire.Proof)):
                        raise RemoteProtocolError(
                            f"unexpected {wire.kind(msg)} after handshake", "unexpected_handshake"
                        )
                    self._owner.on_message(self, msg)
                early = []
        except _Closed as exc:
            reason = exc.reason
            if self.refusal is not None:
                self.end_code = self.refusal.code
        except LinkRefused as exc:
            reason = str(exc)
            log.info("link %s to %s: %s", self.number, self.address, reason)
        except RemoteProtocolError as exc:
            reason = f"protocol error: {exc}"
            self.end_code = "version" if isinstance(exc, VersionMismatch) else "protocol_error"
            self.frame_error = exc.code
            log.warning("link %s to %s closed: %s", self.number, self.address, reason)
        except TimeoutError:
            reason = "keepalive timeout" if was_up else "handshake timeout"
            self.end_code = reason.replace(" ", "_")
            log.info("link %s to %s: %s", self.number, self.address, reason)
        except OSError as exc:
            reason = self._close_reason or f"connection error: {exc.strerror or exc}"
        except Exception:  # a bug of ours: end this link, keep the node
            log.exception("link %s to %s: internal error", self.number, self.address)
            reason = "internal error"
        finally:
            self.close(reason)
            self._writer.join(self.config.link_timeout_s + 1.0)
            with contextlib.suppress(OSError):
                self.sock.close()
            self.done.set()
            self._owner.on_link_closed(self, self._close_reason or reason, was_up)

    def _open(self, body: bytes) -> bytes:
        """Decrypt a frame body of a private room's link.  A peer that
        refused the link after its hello sent the refusal in the clear."""
        assert self.cipher is not None
        try:
            return self.cipher.open(body)
        except RemoteProtocolError:
            try:
                msg = wire.decode_body(body)
            except RemoteProtocolError:
                msg = None
            if isinstance(msg, wire.Refuse):
                self.refused = msg
                raise LinkRefused(f"peer refused the link ({msg.code}): {msg.reason}") from None
            raise

    def _recv_chunk(self, eof_reason: str) -> bytes:
        """One ``recv`` (bounded by the socket timeout), counted in ``bytes_in``.

        Raises:
            _Closed: the peer closed the link (``eof_reason``), or we did.
            TimeoutError: nothing arrived within the socket timeout.
        """
        try:
            data = self.sock.recv(65536)
        except OSError:
            if self._close_reason is not None:
                raise _Closed(self._close_reason) from None
            raise
        if not data:
            raise _Closed(self._close_reason or eof_reason)
        self.bytes_in += len(data)
        return data

    def _recv(self, decoder: wire.FrameDecoder) -> list[bytes]:
        data = self._recv_chunk("retired" if self._retired else "peer closed the link")
        bodies = decoder.feed_bodies(data)
        # A frame must arrive whole within two link timeouts: a peer that
        # trickles bytes (slowloris) cannot hold a link and its buffer forever.
        now = time.monotonic()
        if decoder.buffered == 0:
            self._partial_since = None
        elif self._partial_since is None or bodies:
            self._partial_since = now
        elif now - self._partial_since > 2 * self.config.link_timeout_s:
            raise RemoteProtocolError("a frame took too long to arrive", "too_slow")
        return bodies

    def _handshake(self, decoder: wire.FrameDecoder) -> list[bytes]:
        """Receive and check the peer's hello; return the frame bodies that
        came in the same reads, still undecoded."""
        self.sock.settimeout(self.config.handshake_timeout_s)
        deadline = time.monotonic() + self.config.handshake_timeout_s
        bodies: list[bytes] = []
        while not bodies:
            if time.monotonic() > deadline:
                raise TimeoutError
            data = self._recv_chunk("peer closed the link during the handshake")
            bodies = decoder.feed_bodies(data)
        first, rest = bodies[0], bodies[1:]
        version = wire.hello_version(first)
        if version is not None and version != wire.PROTOCOL_VERSION:
            reason = (
                f"peer speaks protocol version {version}; this node speaks "
                f"version {wire.PROTOCOL_VERSION}"
            )
            self._refuse(wire.Refuse(code="version", reason=reason))
            raise VersionMismatch(reason)
        msg = wire.decode_body(first)
        self.frames_in += 1
        if isinstance(msg, wire.Refuse):
            self.refused = msg
            raise LinkRefused(f"peer refused the link ({msg.code}): {msg.reason}")
        if not isinstance(msg, wire.Hello):
            raise RemoteProtocolError(
                f"{wire.kind(msg)} frame before the handshake", "before_handshake"
            )
        refusal = self._owner.check_hello(self, msg)
        if refusal is not None:
            self._refuse(refusal)
            raise _Closed(f"refused ({refusal.code}): {refusal.reason}")
        self.send(wire.encode_frame(self._owner.prove(self, msg)))
        while not rest:
            if time.monotonic() > deadline:
                raise TimeoutError
            rest = decoder.feed_bodies(
                self._recv_chunk("peer closed the link during the handshake")
            )
        body = rest.pop(0)
        proof = wire.decode_body(self._open(body) if self.cipher is not None else body)
        self.frames_in += 1
        if isinstance(proof, wire.Refuse):
            self.refused = proof
            raise LinkRefused(f"peer refused the link ({proof.code}): {proof.reason}")
        if not isinstance(proof, wire.Proof) or not self._owner.check_proof(self, msg, proof):
            raise RemoteProtocolError(
                f"the peer did not prove that it is node {msg.node}", "bad_proof"
            )
        self.peer = msg
        return rest

    def _refuse(self, refusal: wire.Refuse) -> None:
        """Send a refusal (best effort, bounded by the socket timeout), after
        whatever the writer thread is sending (our hello), never inside it."""
        self.refusal = refusal
        with self._sock_lock, contextlib.suppress(OSError):
            self._flush_carry()
            self.sock.sendall(wire.encode_frame(refusal))

    # -- writer ---------------------------------------------------------------

    def _write_loop(self) -> None:
        interval = self.config.keepalive_interval_s
        keepalive = wire.encode_frame(wire.Keepalive())
        try:
            while True:
                queued = True
                try:
                    # Once up, wake when the link will have been quiet for the interval.
                    wait_s = interval
                    if self.up_at is not None:
                        wait_s -= time.monotonic() - self._sent_at
                    item = self._queue.get(timeout=max(0.01, wait_s))
                except queue.Empty:
                    idle_s = time.monotonic() - self._sent_at
                    if self.up_at is None or self._retired or idle_s < interval:
                        continue
                    item, queued = keepalive, False
                if item is _STOP:
                    return
                if item is _RETIRE:
                    with self._sock_lock, contextlib.suppress(OSError):
                        self._flush_carry()
                        self.sock.shutdown(socket.SHUT_WR)
                    return
                with self._sock_lock:
                    self._flush_carry()
                    if isinstance(item, bytes):
                        wired = self._seal(item)
                        self.sock.sendall(wired)
                        self.frames_out += 1
                        self.bytes_out += len(wired)
                        self._sent_at = time.monotonic()
                if queued:
                    with self._state:
                        self._pending -= 1
        except OSError as exc:
            self._send_failed(exc)

    def _flush_carry(self) -> None:
        """Send the rest of a frame begun on a caller's thread (caller holds
        ``_sock_lock``)."""
        if self._carry:
            carry, self._carry = self._carry, b""
            self.sock.sendall(carry)


class _Closed(Exception):
    """Internal: the link ended in an expected way; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


ANY_HOST = "::"
"""The listener's host for "every interface": one dual-stack IPv6 socket
(``IPV6_V6ONLY`` off) that takes IPv4 peers too, or IPv4 only (``0.0.0.0``)
on a machine without IPv6."""


def _sockaddr(host: str, port: int) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    """``(family, sockaddr)`` of a numeric address for bind (an IPv6 zone
    such as ``%eth0`` resolved to its index).

    Raises:
        StartupError: ``host`` is no IP address of either family.
    """
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        info = socket.getaddrinfo(
            host, port, fam, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST | socket.AI_PASSIVE
        )
    except (OSError, UnicodeError):
        raise StartupError(f"{host} is not an IP address") from None
    return fam, info[0][4]


class Listener:
    """A listening TCP socket and its accept thread.

    Args:
        host: IPv4 or IPv6 address to bind (an IPv6 link-local one with its
            zone, ``fe80::1%eth0``); :data:`ANY_HOST` (``"::"``) for every
            interface of both families (a dual-stack socket; IPv4 only,
            ``0.0.0.0``, when the machine has no IPv6), ``"0.0.0.0"`` for
            every IPv4 one.
        port: TCP port (0 = any free port).
        on_accept: called on the listener thread with ``(sock, (ip, port))``
            for each accepted connection; must not block.  ``ip`` is in the
            text form of :func:`p2pchat.addrs.normalize`: an IPv4 peer of a
            dual-stack socket is a plain dotted quad, a link-local IPv6 peer
            carries its zone.

    Raises:
        StartupError: the port is taken or the address is not on this machine.
        OSError: other bind failures, with ``errno`` set.
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_accept: Callable[[socket.socket, tuple[str, int]], None],
        backlog: int = 64,
    ) -> None:
        if host == ANY_HOST:
            try:
                sock = self._bind(host, port, backlog)
            except PortInUse:
                raise
            except (StartupError, OSError) as exc:  # no IPv6 here: IPv4 only
                log.info("no IPv6 listener (%s): listening on IPv4 only", exc)
                host = "0.0.0.0"
                sock = self._bind(host, port, backlog)
        else:
            sock = self._bind(host, port, backlog)
        # close() wakes accept() by shutting the socket down; the timeout is a
        # safety net (an idle thread that polls costs a wake-up each time).
        sock.settimeout(5.0)
        self.sock = sock
        self.host = host
        self.port: int = sock.getsockname()[1]
        self._on_accept = on_accept
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"p2pchat-listener-{host}", daemon=True
        )

    @staticmethod
    def _bind(host: str, port: int, backlog: int) -> socket.socket:
        if host == ANY_HOST and not socket.has_ipv6:
            raise StartupError("this Python has no IPv6")
        fam, where = _sockaddr(host, port)
        sock = socket.socket(fam, socket.SOCK_STREAM)
        reuse_address(sock)
        try:
            if host == ANY_HOST:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(where)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {port} on {host} is already in use") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise StartupError(f"address {host} is not on this machine") from None
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        return sock

    def start(self) -> None:
        """Start the accept thread."""
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("accept failed on %s:%s: %s", self.host, self.port, exc)
                time.sleep(0.1)  # e.g. EMFILE: don't spin
                continue
            try:
                self._on_accept(conn, (peer_host(addr), addr[1]))
            except Exception:
                log.exception("accept handler failed")
                conn.close()

    def close(self) -> None:
        """Stop accepting and close the socket (idempotent)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() (Linux)
        with contextlib.suppress(OSError):
            self.sock.close()

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds for the accept thread to end."""
        if self._thread.is_alive():
            self._thread.join(timeout_s)


class PortInUse(StartupError):
    """The listening port is taken (the node may fall back to a free port)."""


def peer_host(addr: tuple[object, ...]) -> str:
    """The host of a socket address from ``accept``/``getpeername``, as
    :func:`p2pchat.addrs.normalize` prints it: ``::ffff:10.0.0.1`` is
    ``10.0.0.1``; a link-local IPv6 peer gets its zone (``fe80::1%eth0``)."""
    host = str(addr[0])
    if len(addr) >= 4 and addr[3] and "%" not in host and is_link_local_v6(host):
        scope = int(str(addr[3]))
        try:
            host = f"{host}%{socket.if_indextoname(scope)}"
        except OSError:
            host = f"{host}%{scope}"
    return normalize(host)


BULK_TOS: Final = 0x20
"""The IP TOS / IPv6 traffic-class byte of file data: DSCP CS1 (8 << 2).
Wi-Fi's WMM puts it in the background access category (RFC 8325 §4.2.1:
CS1 to UP 1; Linux and most access points map DSCP by its top 3 bits, so
CS1 is UP 1 there too), and a DiffServ-aware switch port or router queues it
behind best effort (RFC 4594's "low-priority data").  RFC 8622's LE (DSCP 1)
is the newer code point for this, but equipment that maps by the top 3 bits
sees it as best effort."""


BULK_PRIORITY: Final = 2
"""Linux's ``SO_PRIORITY`` for file data: ``TC_PRIO_BULK``, the lowest of
``pfifo_fast``'s three bands (the kernel's default queue on a NIC where
systemd does not set fq_codel), so this host's own queue sends chat first."""


def mark_bulk(sock: socket.socket) -> bool:
    """Mark ``sock``'s packets as bulk data (:data:`BULK_TOS`; on Linux also
    :data:`BULK_PRIORITY`), so a network that honours DSCP, and this host's
    own priority queue, let chat lines on other connections go first.  Best
    effort: a platform without the option, or that refuses it (Windows
    without a QoS policy ignores it), leaves the socket as it was.

    Returns:
        Whether the option was set.
    """
    try:
        if sock.family == socket.AF_INET6:
            tclass = getattr(socket, "IPV6_TCLASS", None)
            if tclass is None:
                return False
            sock.setsockopt(socket.IPPROTO_IPV6, tclass, BULK_TOS)
            with contextlib.suppress(OSError):  # a v4-mapped peer on a dual-stack socket
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, BULK_TOS)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, BULK_TOS)
        so_priority = getattr(socket, "SO_PRIORITY", None)  # Linux; after IP_TOS, which sets it
        if so_priority is not None:
            sock.setsockopt(socket.SOL_SOCKET, so_priority, BULK_PRIORITY)
    except OSError:
        return False
    return True


def dial(addresses: list[str], port: int, timeout_s: float) -> tuple[socket.socket, str]:
    """Connect to the first of ``addresses`` that answers on ``port``.

    Args:
        addresses: IPv4 or IPv6 addresses (a link-local one with its zone,
            ``fe80::1%eth0``) or host names, tried in order.
        port: TCP port.
        timeout_s: connect timeout per address, seconds.

    Returns:
        ``(socket, address)`` of the first successful connection
        (``address`` as given).

    Raises:
        OSError: no address could be reached (the last error).
    """
    last: OSError = OSError("no address to dial")
    for host in addresses:
        try:
            sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            last = exc
            continue
        except UnicodeError as exc:  # a host name that IDNA refuses
            last = OSError(f"bad host name {host!r}: {exc}")
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, host
    raise last
