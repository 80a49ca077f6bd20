"""A p2pchat node: the threaded shell around the protocol core.

The protocol lives in :class:`p2pchat.core.protocol.Protocol` (sans-I/O:
events in, actions out).  This module owns the sockets, the threads and the
store, feeds the core under one state lock and carries out the actions it
returns after releasing it, in order (:meth:`Node._drain`):

* ``p2pchat-router``: runs the core's timers (:meth:`Protocol.tick
  <p2pchat.core.protocol.Protocol.tick>` at its next deadline).
* ``p2pchat-listener-<addr>`` and ``p2pchat-link-<n>-r/-w``: see
  :mod:`p2pchat.transport`.  A link's reader thread hands each frame to the
  core itself, under the state lock; nothing done under that lock waits on
  the network.
* ``p2pchat-dial-<target>``: one per static peer (dialling with backoff
  while there is no link to it) and one per dial the overlay asks for.
* the discovery's threads (see :mod:`p2pchat.discovery`); its callbacks
  take the lock, tell the core and return.

``on_event`` is called with :mod:`p2pchat.events` objects on whichever of
these threads made the change (or on the caller's thread for :meth:`Node.send`
and :meth:`Node.set_name`), in the order the core made the changes, without
the state lock held (a callback may call :meth:`Node.snapshot` or
:meth:`Node.stats`).  It must return quickly and must not call
:meth:`Node.send`, :meth:`Node.set_name` or :meth:`Node.close`.
docs/architecture.md has the picture: layers, threads, locks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import cast

from p2pchat import wire
from p2pchat.core.actions import Action, Close, Dial, Emit, Retire, Send
from p2pchat.core.antientropy import GAP_GRACE_S, PRUNE_INTERVAL_S, SYNC_DEBOUNCE_S
from p2pchat.core.config import DEFAULT_PORT, DEFAULT_ROOM, NodeConfig, check_label, check_name
from p2pchat.core.direct import check_direct_text
from p2pchat.core.history_store import HistoryStore
from p2pchat.core.membership import PRESENCE_SHARE_S
from p2pchat.core.protocol import Protocol, check_config, check_text, check_topic
from p2pchat.core.state import BAD_SIGNATURES_PER_LINK, IN_PLACE_FRESH_S, MAX_ORIGINS, ORDER_HOLD_S
from p2pchat.discovery import Discovery, LocalService
from p2pchat.errors import LocalError, UsageError
from p2pchat.events import (
    Event,
    FileOfferEvent,
    KeyInfo,
    LineEvent,
    LinkInfo,
    MemberInfo,
    MessageEvent,
    Notice,
    Ready,
    Snapshot,
    Stats,
    TopicEvent,
)
from p2pchat.files.events import TransferStatus
from p2pchat.files.manifest import Offer
from p2pchat.flood import TokenBucket
from p2pchat.identity import Identity
from p2pchat.links import Links
from p2pchat.node_files import NodeFiles
from p2pchat.peerbook import Remembered
from p2pchat.peers import Peers, advertised_addresses
from p2pchat.store import Store
from p2pchat.transport import Link

__all__ = [
    "BAD_SIGNATURES_PER_LINK",
    "DEFAULT_PORT",
    "DEFAULT_ROOM",
    "GAP_GRACE_S",
    "IN_PLACE_FRESH_S",
    "MAX_ORIGINS",
    "ORDER_HOLD_S",
    "PRESENCE_SHARE_S",
    "PRUNE_INTERVAL_S",
    "SYNC_DEBOUNCE_S",
    "Node",
    "NodeConfig",
    "check_label",
    "check_name",
]

log = logging.getLogger(__name__)

ROUTER_MAX_SLEEP_S = 5.0
"""Longest the router sleeps without looking at the core's next deadline."""


class Node:
    """One p2pchat node: the protocol core (:class:`~p2pchat.core.protocol.
    Protocol`) in its threads and sockets.

    Args:
        config: the node's settings.
        discovery: how to find peers (``MdnsDiscovery``), or None for static
            peers only.
        on_event: called with every :class:`~p2pchat.events.Event`, in order,
            on the thread that made the change; must return quickly.
        store: the history store to use (e.g. a
            :class:`~p2pchat.core.history_store.MemoryStore`), or None to open
            the SQLite one of ``config.data_dir`` (in memory when None).  The
            node closes it.

    Raises:
        UsageError: bad settings (:func:`~p2pchat.core.protocol.check_config`).
        StoreError: the data directory's store cannot be used.

    Use: ``node.start()``, then ``node.send(text)`` from any thread, and
    ``node.close()`` (idempotent) at the end.  The node is also a context
    manager that closes on exit.
    """

    def __init__(
        self,
        config: NodeConfig,
        discovery: Discovery | None = None,
        on_event: Callable[[Event], None] | None = None,
        store: HistoryStore | None = None,
    ) -> None:
        check_config(config)
        self.config = config
        # Opened after the checks: it takes the data directory's lock.
        self._store: HistoryStore = store or Store.open(
            config.data_dir, config.history_max_age_s, config.history_max_lines
        )
        try:
            self._identity = Identity.load_or_create(config.data_dir)
            self._core = Protocol(
                config, self._identity, self._store, now=time.monotonic(), wall=time.time()
            )
        except BaseException:
            self._store.close()
            raise
        self.node_id = self._core.node_id
        self._discovery = discovery
        self._on_event = on_event or (lambda ev: None)
        self._lock = threading.RLock()  # the core's state, and the tables below
        self._own_line_lock = threading.Lock()
        self._send_lock = threading.Lock()
        # Filled under _lock, in the core's order; emptied by _drain without it.
        self._outbox: deque[Action] = deque()
        self._out_lock = threading.Lock()
        self._draining: threading.Thread | None = None
        self._wake = threading.Event()  # wakes the router
        self.links = Links(self)  # the listeners and every link: the sockets' side
        self.peers = Peers(self)  # the dialler threads, the discovery's callbacks
        self.files = NodeFiles(  # /send, /get
            self, config.download_dir, config.accept_files, config.chunk_size
        )
        self._started_at = time.monotonic()
        self._own_bucket = flood_bucket(config)
        self._router: threading.Thread | None = None
        self._stopping = threading.Event()
        self._started = False

    # -- feeding the core ---------------------------------------------------------------

    def _call(self, fn: Callable[[float, float], list[Action]]) -> None:
        """Run one input of the core under the state lock (``fn(now, wall)``),
        then carry out its actions.  Never called with the lock held."""
        with self._lock:
            self._queue(fn(time.monotonic(), time.time()))
        self._drain()

    def _queue(self, actions: list[Action]) -> None:
        """Queue the actions of one input of the core, and wake the router if
        one of the core's timers moved earlier.  Lock held."""
        self._outbox.extend(actions)
        if self._core.s.wake:
            self._core.s.wake = False
            self._wake.set()

    def _drain(self) -> None:
        """Carry out the queued actions, oldest first, one thread at a time
        (so frames and events keep the core's order).  Without the state
        lock: a send only queues a frame; an event callback may call
        :meth:`snapshot`.  The outbox is appended to under the state lock (in
        the core's order) and popped here without it (a deque's ``append``
        and ``popleft`` are atomic).  A callback that feeds the node again on
        this thread leaves its actions to the loop already draining."""
        outbox = self._outbox
        if not outbox or self._draining is threading.current_thread():
            return
        with self._out_lock:
            self._draining = threading.current_thread()
            try:
                while True:
                    try:
                        action = outbox.popleft()
                    except IndexError:
                        return
                    try:
                        self._act(action)
                    except Exception:
                        log.exception("internal error carrying out %s", type(action).__name__)
            finally:
                self._draining = None

    def _act(self, action: Action) -> None:
        if isinstance(action, Send):
            cast(Link, action.link).send(action.frame)
        elif isinstance(action, Emit):
            self._on_event(action.event)
            if isinstance(action.event, FileOfferEvent):
                self.files.on_offer(action.event)  # --accept-files
        elif isinstance(action, Close):
            cast(Link, action.link).close(action.reason)
        elif isinstance(action, Retire):
            cast(Link, action.link).retire()
        elif isinstance(action, Dial):
            self.peers.dial(action)

    def _emit(self, events: list[Event]) -> None:
        with self._lock:
            self._outbox.extend(Emit(ev) for ev in events)
        self._drain()

    # -- public API -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the node listens on (0 before :meth:`start`)."""
        return self.links.port

    @property
    def name(self) -> str:
        """This node's display name."""
        return self._core.name

    @property
    def room(self) -> str:
        """This node's room, by name (in a private room, the network sees
        only its tag: see :mod:`p2pchat.privacy`)."""
        return self.config.room

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Listen, start discovery and dial the static peers; emit Ready.

        Raises:
            StartupError: the port is taken (and ``port_fallback`` is off), an
                interface address is not on this machine, or discovery failed.
                Nothing is left running then.
        """
        if self._started:
            raise UsageError("node already started")
        self._started = True
        try:
            self.links.listen()
            with self._lock:
                self._core.port = self.port
                self._core.addrs = advertised_addresses(self.config)
            self._started_at = time.monotonic()
            self._router = threading.Thread(target=self._route, name="p2pchat-router", daemon=True)
            self._router.start()
            for host, port in self.config.peers:
                self.add_peer(host, port)
            self.peers.recall()  # remembered peers (p2pchat/peerbook.py)
            self.files.start()  # downloads to resume, offers to serve (p2pchat/node_files.py)
            if self._discovery is not None:
                self._discovery.start(
                    LocalService(
                        self.node_id,
                        self.name,
                        self._core.wire_room,
                        self.port,
                        wire.PROTOCOL_VERSION,
                    ),
                    self.peers.found,
                    self.peers.lost,
                )
        except BaseException:
            self.close()
            raise
        if self.peers.book.warning:
            self._emit([Notice(text=self.peers.book.warning, level="warning")])
        self._emit([Ready(node=self.node_id, name=self.name, room=self.room, port=self.port)])

    def send(self, text: str, action: bool = False) -> MessageEvent:
        """Send a chat line to the room (``action`` for ``/me``).  Any thread.

        The line is numbered and signed by the core, committed to the store
        (fsync) outside the state lock, then flooded: on disk before it is sent.

        Returns:
            The event of our own line, also passed to ``on_event``.

        Raises:
            LineTooLong: more than ``wire.MAX_TEXT_CHARS`` code points.
            UsageError: empty, contains a line break or control character,
                or the node is not running.
            LocalError: sending faster than the origin rate limit for longer
                than ``send_wait_s``; the line was not sent.
        """
        check_text(text)
        ev = self._send_own(text, action, topic=False)
        assert isinstance(ev, MessageEvent)
        return ev

    def send_offer(self, offer: Offer, to: str | None = None) -> FileOfferEvent:
        """Offer a file: to the room (``to`` None: a numbered, signed line
        with the offer, kept and caught up like a chat line, sent as
        :meth:`send`), or to one member only (``to``: its node id, or as
        :meth:`send_direct`; sealed to its key like ``/msg``, never kept in
        the history).  Any thread.

        Args:
            offer: what to offer (:func:`p2pchat.files.manifest.offer_for`
                of the file's manifest); serving its chunks is the caller's.
            to: the one member, or None for the room.

        Returns:
            Our event of the offer, also passed to ``on_event``.

        Raises:
            UsageError: the node is not running; the offer breaks a rule
                receivers apply (``files.manifest.make_offer``: its name, sizes
                or id); for ``to``, as :meth:`send_direct` (nobody or several
                answer to it, no key yet).
            LocalError: as :meth:`send` (rate limit, store).
        """
        if to is None:
            ev = self._send_own("", False, topic=False, offer=offer)
        else:
            self._wait_own_token()
            with self._lock:
                ev, actions = self._core.send_direct_offer(to, offer, time.monotonic(), time.time())
                self._queue(actions)
            self._drain()
        assert isinstance(ev, FileOfferEvent)
        return ev

    def send_file(self, path: str, to: str | None = None) -> None:
        """``/send``: offer the file at ``path`` to the room, or to the one
        member ``to`` (as :meth:`send_direct` names it; only it may fetch the
        file).  The file is hashed on the transfers' file thread, then served
        from where it lies, then offered (:meth:`send_offer`); a file that
        cannot be read or offered comes back as an error :class:`Notice`.
        Any thread; returns at once.

        Raises:
            UsageError: no such file; ``to`` answers to nobody or several; the
                node is not running.
            LocalError: the download directory cannot be made.
        """
        if not self._started or self._core.closed:
            raise UsageError("the node is not running")
        where = Path(path).expanduser()
        if not where.is_file():
            raise UsageError(f"no such file: {path}")
        node_id = None
        if to is not None:
            with self._lock:
                node_id = self._core.directs.resolve(to)
        self.files.send(where, node_id)

    def get_file(self, file_id: str) -> FileOfferEvent:
        """``/get``: fetch the file of the offer ``file_id`` (64 hex digits)
        into the download directory, from its offerer and every holder it
        names; a part file of an earlier attempt is resumed.  Progress, the
        end and a failure come as :class:`FileProgressEvent`,
        :class:`FileDoneEvent` and :class:`FileFailedEvent`.  Any thread.

        Returns:
            The offer fetched.

        Raises:
            UsageError: no such offer, or our own.
            NotEnoughSpace: the disk cannot hold it with its margin.
            LocalError: the download directory is not usable.
        """
        ev = self.offer(file_id)
        if ev is None:
            raise UsageError(f"no offer of a file {file_id[:16]}")
        self.files.get(ev)
        return ev

    def cancel_file(self, file_id: str) -> bool:
        """``/cancel``: stop fetching ``file_id`` (64 hex digits); its part
        file stays, so a later :meth:`get_file` resumes.  Any thread.

        Returns:
            Whether a download was stopped.
        """
        try:
            raw = bytes.fromhex(file_id)
        except ValueError:
            return False
        return self.files.cancel(raw)

    def transfers(self) -> list[TransferStatus]:
        """The downloads and served offers of this run (``/files``).  Any thread."""
        return self.files.status()

    def offers(self) -> list[FileOfferEvent]:
        """The file offers this node knows, oldest first: the room's offer
        lines still in the history window (at most 256, ``history=True``),
        then the one-member offers to us, or ours, of this run (at most 256).
        Any thread."""
        with self._lock:
            return self._core.offers()

    def offer(self, file_id: str) -> FileOfferEvent | None:
        """The latest offer of the file whose id is ``file_id`` (64 hex
        digits, any case) among :meth:`offers`, or None.  Any thread."""
        want = file_id.lower()
        found = [ev for ev in self.offers() if ev.file_hex == want]
        return found[-1] if found else None

    def set_topic(self, text: str) -> TopicEvent:
        """Set the room's topic to ``text`` (blanks at either end dropped;
        "" clears it): a numbered, signed topic line, sent and kept like a
        chat line (:meth:`send`).  Any thread.

        Returns:
            The event of our topic line, also passed to ``on_event``.

        Raises:
            LineTooLong: more than ``wire.MAX_TOPIC_CHARS`` code points.
            UsageError: a line break or control character, or the node is
                not running.
            LocalError: as :meth:`send` (rate limit, store).
        """
        check_topic(text)
        ev = self._send_own(text, False, topic=True)
        assert isinstance(ev, TopicEvent)
        return ev

    def topic(self) -> TopicEvent | None:
        """The room's current topic from the store (the topic line that
        sorts last in the room's order; ``text`` "" if it cleared the
        topic), or None if no topic line is held.  Any thread."""
        with self._lock:
            return self._core.topic()

    def _send_own(
        self, text: str, action: bool, topic: bool, offer: Offer | None = None
    ) -> LineEvent:
        """Number, sign, store durably and flood a line of ours (see :meth:`send`)."""
        self._wait_own_token()
        with self._own_line_lock:  # own lines are numbered, stored and sent in order
            with self._lock:
                now, wall = time.monotonic(), time.time()
                msg = self._core.new_line(text, action, now, wall, topic, offer)
            # Durable before it counts as sent; outside the state lock so that
            # links keep flowing meanwhile.
            self._store.add_own(msg)
            ev = self._core.own_event(msg)
            self._call(lambda now, wall: self._core.line_stored(msg, now, wall))
        return ev

    def _wait_own_token(self) -> None:
        """Pace our own lines to the origin rate limit that peers enforce."""
        deadline = time.monotonic() + self.config.send_wait_s
        while True:
            with self._send_lock:
                now = time.monotonic()
                if self._own_bucket.take(now):
                    return
                wait = self._own_bucket.wait_s(now)
            if now + wait > deadline:
                with self._lock:
                    limited = self._core.s.rate_limited
                    limited["own"] = limited.get("own", 0) + 1
                raise LocalError(
                    f"sending faster than {self.config.origin_rate_per_s:g} lines/s "
                    "for too long; the line was not sent"
                )
            if self._stopping.wait(wait):
                raise UsageError("the node is closed")

    def send_direct(self, to: str, text: str, action: bool = False) -> MessageEvent:
        """Send a direct message, encrypted end to end, to one member.  Any thread.

        Args:
            to: the member's ``name#abcd`` display, its name (when no other
                member's name looks like it), or a prefix of its node id; see
                :meth:`Directs.resolve <p2pchat.core.direct.Directs.resolve>`.
            text: the line (the rules of :meth:`send`).

        Returns:
            Our event for it (``private=True``), also passed to ``on_event``.

        Raises:
            UsageError: nobody, or more than one member, answers to ``to``;
                the member has not announced a key for direct messages yet;
                or the line is not valid (see :meth:`send`).
        """
        check_direct_text(text)
        self._wait_own_token()
        with self._lock:
            ev, actions = self._core.send_direct(to, text, action, time.monotonic(), time.time())
            self._queue(actions)
        self._drain()
        return ev

    def stats(self) -> Stats:
        """The node's counters (see :class:`~p2pchat.events.Stats`).  Any thread."""
        files = self.files.counts()

        def merged(mine: dict[str, int], kind: str) -> dict[str, int]:
            out = dict(mine)
            for code, n in files.get(kind, {}).items():
                out[code] = out.get(code, 0) + n
            return out

        with self._lock:
            counts = self.links.totals()
            s = self._core.s
            return Stats(
                uptime_s=round(time.monotonic() - self._started_at, 1),
                frames_in=counts["frames_in"],
                frames_out=counts["frames_out"],
                bytes_in=counts["bytes_in"],
                bytes_out=counts["bytes_out"],
                duplicates_dropped=s.counts["duplicates_dropped"],
                frames_refused=merged(s.frames_refused, "frames_refused"),
                links_refused=merged(s.links_refused, "links_refused"),
                rate_limited=merged(
                    {**self._core.rate_limited_counts(), **self.peers.book.counts}, "rate_limited"
                ),
                queue_drops=self.links.queue_drops,
                links=len(s.links),
                members=len(s.roster),
                seen_cache=len(s.seen),
                stored_lines=self._store.count(self._core.wire_room),
                catchup_in=s.counts["catchup_in"],
                catchup_out=s.counts["catchup_out"],
                store_stalls=getattr(self._store, "writer_stalls", 0),
                addrs_refused=dict(s.addrs_refused),
                files=dict(files.get("counters", {})),
            )

    def set_name(self, name: str) -> None:
        """Change our display name and tell the room.  Any thread.

        Raises:
            UsageError: the name is invalid, or the node is closed.
        """
        self._call(lambda now, wall: self._core.set_name(name, now, wall))

    def set_away(self, text: str) -> None:
        """Mark us away with ``text`` (at most ``wire.MAX_AWAY_CHARS`` code
        points), or back with ""; the room learns it from a presence sent at
        once.  Any thread.

        Raises:
            UsageError: the text is too long or holds a control character,
                or the node is closed.
        """
        self._call(lambda now, wall: self._core.set_away(text, now, wall))

    def add_peer(self, host: str, port: int) -> None:
        """Add a static peer, dialled with backoff for as long as the node runs."""
        self.peers.add_static(host, port)

    def remembered(self) -> list[Remembered]:
        """The remembered peers (:mod:`p2pchat.peerbook`), the most recently
        answered first; empty for an ephemeral node.  Any thread."""
        return self.peers.book.entries()

    def forget_peer(self, host: str, port: int | None = None) -> list[Remembered]:
        """Forget a remembered address and stop dialling it (:meth:`Peers.forget
        <p2pchat.peers.Peers.forget>`; every port of ``host`` when ``port``
        is None).  Any thread.

        Returns:
            the entries removed (empty: nothing was remembered there).
        """
        return self.peers.forget(host, port)

    def link_answered(self, link: Link) -> None:
        """A link is up: :meth:`Peers.answered <p2pchat.peers.Peers.answered>`."""
        self.peers.answered(link)

    def history(self, n: int = 20) -> list[LineEvent]:
        """The room's last ``n`` lines in the one order every node agrees on
        (hybrid logical clock, then origin id, then line number), oldest
        first, each with ``history=True`` (topic lines as ``TopicEvent``,
        file offers as ``FileOfferEvent``).
        Any thread.

        Raises:
            UsageError: ``n`` is below 1.
        """
        if n < 1:
            raise UsageError("the number of lines must be at least 1")
        with self._lock:
            return self._core.history(n)

    def whois(self, name: str) -> list[KeyInfo]:
        """The members (us included) called ``name`` or a name that looks
        like it, with their key fingerprints, and whether each holds the
        first key this node saw with its name (trust on first use).  Any thread."""
        with self._lock:
            return self._core.whois(name)

    @property
    def closing(self) -> bool:
        """True once :meth:`close` has begun.  Any thread."""
        return self._core.closed

    def has_link(self, node_id: str) -> bool:
        """True if a link to ``node_id`` is up."""
        return node_id in self._core.links

    def wants_links(self) -> bool:
        """True while the node has fewer links than the overlay's target, or
        always with a target of 0 (a fixed topology: static peers only).  Any thread."""
        return self._core.wants_links()

    def snapshot(self) -> Snapshot:
        """Members of the room and the links that are up, for /who and /peers."""
        now = time.monotonic()
        with self._lock:
            s = self._core.s
            roster = s.roster
            members = [
                MemberInfo(
                    node=m.node,
                    name=m.name,
                    display=roster.display(m.node),
                    linked=m.node in s.links,
                    self=m.node == self.node_id,
                    away=m.away,
                )
                for m in roster.members()
            ]
            links = []
            for pid, lid in sorted(s.links.items()):
                link = cast(Link, lid)
                peer_name = link.peer.name if link.peer else ""
                links.append(
                    LinkInfo(
                        peer=pid,
                        name=roster.display(pid, peer_name) if pid in roster else peer_name,
                        address=link.address,
                        direction=link.direction,
                        uptime_s=round(now - (link.up_at or now), 1),
                        frames_in=link.frames_in,
                        frames_out=link.frames_out,
                    )
                )
        return Snapshot(members=members, links=links)

    def close(self) -> None:
        """Leave the room gracefully and stop every thread.  Idempotent.

        Floods a ``leave``, waits up to ``leave_flush_s`` for it to be sent,
        unregisters from mDNS (peers see the goodbye), closes every link and
        joins every thread the node started.
        """
        with self._lock:
            if self._core.closed:
                return
            links = [cast(Link, lid) for lid in self._core.links.values()]
            self._outbox.extend(self._core.leave(time.monotonic(), time.time()))
        self._drain()
        deadline = time.monotonic() + self.config.leave_flush_s
        while time.monotonic() < deadline and any(link.queued() for link in links):
            time.sleep(0.02)
        for link in links:
            self.peers.answered(link)  # still answering: remembered as of now
            link.retire()  # half-close after the leave: peers read it, then EOF
        self._stopping.set()
        self._wake.set()
        self.files.close()  # part files flushed, data links closed, threads joined
        if self._discovery is not None:
            self._discovery.close()
        for listener in self.links.listeners:
            listener.close()
        with self._lock:
            dialers = list(self.peers.dialers.values())
        for d in dialers:
            d.stop()
        # Give retired links a moment to reach EOF cleanly, then cut the rest.
        deadline = time.monotonic() + 0.5
        for link in links:
            link.done.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            all_links = list(self.links.all)
        for link in all_links:
            link.close("node closing")
        for listener in self.links.listeners:
            listener.join(2.0)
        for d in dialers:
            if d.thread.is_alive() and d.thread is not threading.current_thread():
                d.thread.join(self.config.dial_timeout_s + 2.0)
        for link in all_links:
            link.join(self.config.link.link_timeout_s + 2.0)
        if self._router is not None and self._router is not threading.current_thread():
            self._router.join(5.0)
        self._drain()  # the last events (links down)
        self.peers.book.save(time.time())
        with self._lock:
            self._store.close()

    def rooms_seen(self) -> dict[str, int]:
        """Other rooms on this LAN by mDNS, with their node counts: :meth:`Peers.rooms_seen
        <p2pchat.peers.Peers.rooms_seen>`.  Any thread."""
        return self.peers.rooms_seen()

    def wake_dialer(self, node_id: str) -> None:
        """The link to ``node_id`` ended: :meth:`Peers.wake <p2pchat.peers.Peers.wake>`."""
        self.peers.wake(node_id)

    # -- the router thread ----------------------------------------------------------

    def _route(self) -> None:
        """Run the core's timers at its next deadline (woken sooner when an
        input moves a deadline earlier: ``Shared.wake``)."""
        while not self._stopping.is_set():
            with self._lock:
                wake_at = self._core.next_deadline()
            timeout = min(max(0.0, wake_at - time.monotonic()), ROUTER_MAX_SLEEP_S)
            if timeout > 0 and self._wake.wait(timeout):
                self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._call(self._core.tick)
                self.peers.recall_due()  # remembered peers, offered again (p2pchat/peers.py)
                self.files.tick(time.monotonic())  # offerers of downloads (p2pchat/node_files.py)
            except Exception:
                log.exception("router: internal error in the timers")


def flood_bucket(config: NodeConfig) -> TokenBucket:
    """Our own token bucket: the origin rate limit peers enforce on us."""
    return TokenBucket(config.origin_rate_per_s, config.origin_burst, time.monotonic())
