"""A p2pchat node: composes transport, discovery, flooding and the roster.

The node owns every thread it starts and joins them all in :meth:`Node.close`:

* ``p2pchat-router``: runs the timers: presence, member timeouts, the
  seen-cache's expiry.
* ``p2pchat-listener-<addr>`` and ``p2pchat-link-<n>-r/-w``: see
  :mod:`p2pchat.transport`.  A link's reader thread applies what it receives
  (the flood rule, the roster) itself, under the node's state lock; nothing
  done under that lock blocks (sending only queues a frame on each link), so
  one lock and no extra thread hop per frame.
* ``p2pchat-dial-<target>``: one per known peer, dialling with backoff while
  there is no link to it.
* the discovery's threads (see :mod:`p2pchat.discovery`); its callbacks
  take the lock, note the peer and return.

``on_event`` is called with :mod:`p2pchat.events` objects on whichever of
these threads made the change (or on the caller's thread for :meth:`Node.send`
and :meth:`Node.set_name`), with the state lock held, so events come in the
order the changes were made.  The lock is re-entrant: a callback may call
:meth:`Node.snapshot` or :meth:`Node.stats`.  It must return quickly and must
not call :meth:`Node.send`, :meth:`Node.set_name` or :meth:`Node.close`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from p2pchat import flood, history, identity, names, wire
from p2pchat.core.admission import SIGNATURE_REASONS, Admission, BoundedMap
from p2pchat.core.history_store import HistoryStore
from p2pchat.core.order import OriginOrder, Release
from p2pchat.core.overlay import Overlay
from p2pchat.discovery import Discovery, FoundPeer, LocalService
from p2pchat.errors import (
    LineTooLong,
    LocalError,
    RemoteProtocolError,
    StartupError,
    UsageError,
)
from p2pchat.events import (
    Event,
    JoinEvent,
    KeyInfo,
    LeaveEvent,
    LinkInfo,
    MemberInfo,
    MessageEvent,
    NickEvent,
    Notice,
    PeerDown,
    PeerUp,
    Ready,
    Snapshot,
    Stats,
)
from p2pchat.identity import Identity
from p2pchat.privacy import RoomSecret
from p2pchat.roster import DEFAULT_MAX_MEMBERS, Roster
from p2pchat.store import Store
from p2pchat.transport import Link, LinkConfig, Listener, PortInUse, dial
from p2pchat.tree import DEFAULT_IHAVE_DELAY_S, TreeState

log = logging.getLogger(__name__)

DEFAULT_PORT = 7420
"""TCP port a node listens on unless told otherwise."""

DEFAULT_ROOM = "lobby"

PRESENCE_SHARE_S = 0.2
"""A room sends about one presence per this many seconds in all (rooms of more
than 15 nodes space each node's presences out; see Node._presence_every)."""

IDLE_CHECK_S = 5.0
"""How often an idle dialler thread looks up without being woken (a safety net)."""

SYNC_INTERVAL_S = 30.0
"""How often a link repeats its anti-entropy ``sync`` when nothing asks sooner."""

SYNC_DEBOUNCE_S = 1.0
"""Least time between two ``sync`` frames on one link."""

ORDER_HOLD_S = 1.0
"""Longest a live line waits, unshown, for its origin's previous line (see
:mod:`p2pchat.core.order`); the gap is fetched before then (``GAP_GRACE_S``)."""

IN_PLACE_FRESH_S = 10.0
"""A catch-up line shown in its place (before a held live line of its origin)
is still marked as an earlier line when its origin said it more than this
long ago (by the line's ``ts``): a node that joins while someone speaks gets
that origin's older lines this way, and they are earlier lines."""

GAP_GRACE_S = 0.3
"""How long a line may stay missing behind a later line of its origin before
it is fetched: lines overtake each other when the broadcast tree changes (a
sync sent while a burst is in flight fetches the rest of the burst a second
time), but the later line is held unshown for it (``ORDER_HOLD_S``), so the
fetch must come back within that bound: a node that took an origin's first
lines by catch-up forwards its next lines live at once, and its neighbours
fetch the first ones this way (measured on loopback: with a 1 s grace the
fetch came 1.2 s after the gap, too late, and the line was shown earlier)."""

PRUNE_INTERVAL_S = 10.0
"""How often the store drops lines that fell out of the history window."""

MAX_ORIGINS = 4096
"""Most origins each per-origin table keeps (keys, highest seq, rate
buckets, direct-message keys, presence addresses, leaves, equivocators); the
least recently heard go first."""

MAX_DIGEST_QUERIES = 64
"""Most runs one ``sync`` answer reads from the store to compare a peer's
digest over a run that differs from ours (the rest wait for a later sync)."""

BAD_SIGNATURES_PER_LINK = 10
"""Messages failing their signature after which the link that brought them
is closed (each one is dropped and counted anyway)."""


@dataclass
class _LinkHistory:
    """Anti-entropy state of one link (feature ``history`` on both ends)."""

    push: history.Push = field(default_factory=history.Push)
    sync_sent_at: float = float("-inf")  # monotonic
    want_sync: bool = False
    answered_at: float = float("-inf")  # when we last answered the peer's sync
    deferred: wire.Sync | None = None  # the peer's latest sync, to answer at the next tick


@dataclass
class NodeConfig:
    """Settings of one node.  Times are in seconds.

    Attributes:
        name: display name (1..32 code points, no control characters).
        room: room name (1..64 code points).
        port: TCP port to listen on; 0 = any free port.
        port_fallback: if ``port`` is taken, listen on a free port instead
            (and say so) rather than fail.
        interfaces: IPv4 addresses to listen on (and to run mDNS on, if the
            caller builds its discovery from them); empty = all interfaces.
        peers: static peers ``(host, port)``, dialled with backoff.
        hop_limit: hop limit of the messages this node creates.
        presence_interval_s: how often to flood a presence.
        member_timeout_s: silence after which a member is timed out.
        redial_min_s, redial_max_s: redial backoff bounds.
        dial_timeout_s: TCP connect timeout per address.
        mdns_dial_delay_s: unused since the bounded overlay picks who dials
            (kept so that old settings still load).
        max_links: most links at once, whatever the overlay says; a hello
            beyond them is refused with ``busy`` (``links_refused.busy``).
            At most ``2 * max_links`` inbound sockets are held in all.
        active_target, active_max, passive_max: the bounded overlay
            (:mod:`p2pchat.core.overlay`, ``docs/protocol.md`` §8): the node
            dials peers it knows (from mDNS, ``peers`` and presences) while
            it has fewer than ``active_target`` links, replaces a link that
            fails, and holds at most ``active_max``: an inbound link beyond
            it drops a random other inbound one (at most one a second,
            ``links_refused.overlay_full``) or is refused with ``busy``.  At
            most ``passive_max`` known peers are kept to dial from.  Static
            ``peers`` are dialled at start, and again whenever the node has
            fewer than ``active_target`` links.  At most 2 dials of the
            overlay are under way at once.  ``active_target=0``: a fixed
            topology; the node dials its static peers only (always).
        max_links_per_address: most inbound sockets from one remote IP
            address, still in the handshake or linked.  Checked when the
            socket is accepted, before any thread starts for it: one more is
            refused at once with ``busy`` (``links_refused.busy``).
        max_handshakes_per_address, max_handshakes: most inbound sockets
            still in the handshake (no ``hello`` and ``proof`` yet) from one
            remote IP address, and from all addresses together.  A budget
            apart from the links: one more socket is refused as it is
            accepted, with ``busy`` (``links_refused.handshake_busy``).
            Sockets this node dialled never count and are never refused, so
            an inbound flood cannot starve the node's own dials.
        link_rate_per_s, link_burst: token bucket on the flooded frames
            received on one link (duplicates included); excess is dropped.
        origin_rate_per_s, origin_burst: token bucket on the new messages
            of one origin; excess is dropped.  Our own lines wait for a token
            (``send`` blocks up to ``send_wait_s``), so an honest sender is
            paced, not dropped; receivers allow twice the burst.
        send_wait_s: how long ``send`` may wait for the rate limit.
        broadcast: ``"flood"`` (every link gets every message) or ``"tree"``
            (Plumtree: pushed along a spanning tree, announced elsewhere; see
            :mod:`p2pchat.tree`), used on links whose peer speaks it too.
        max_known_peers: most dial targets kept (static and discovered).
        max_members: most members the roster holds (see
            :class:`~p2pchat.roster.Roster` for who gives way when full).
        link: per-link timing and queue limits.
        seen_max_entries, seen_max_age_s: seen-cache bounds.
        leave_flush_s: on close, how long to wait for the leave to go out.
        secret: the shared secret of a private room (see
            :mod:`p2pchat.privacy`), or None for an open room.
        data_dir: directory of the node's store (its id, sequence counters
            and the rooms' lines, in SQLite); None keeps nothing on disk
            (an in-memory store: ``--ephemeral``).  One node at a time may
            use a directory.
        history_max_age_s, history_max_lines: the history window: a room's
            lines older than this many seconds, or beyond the newest this
            many, are neither kept nor exchanged by catch-up.
    """

    name: str
    room: str = DEFAULT_ROOM
    port: int = DEFAULT_PORT
    port_fallback: bool = False
    interfaces: list[str] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)
    hop_limit: int = wire.DEFAULT_HOP_LIMIT
    presence_interval_s: float = 3.0
    member_timeout_s: float = 10.0
    redial_min_s: float = 0.5
    redial_max_s: float = 10.0
    dial_timeout_s: float = 3.0
    mdns_dial_delay_s: float = 1.5
    max_links: int = 64
    active_target: int = 5
    active_max: int = 12
    passive_max: int = 64
    max_links_per_address: int = 16
    max_handshakes_per_address: int = 4
    max_handshakes: int = 32
    link_rate_per_s: float = 2000.0
    link_burst: float = 4000.0
    origin_rate_per_s: float = 100.0
    origin_burst: float = 500.0
    send_wait_s: float = 10.0
    broadcast: str = "tree"
    max_known_peers: int = 256
    max_members: int = DEFAULT_MAX_MEMBERS
    link: LinkConfig = field(default_factory=LinkConfig)
    seen_max_entries: int = flood.DEFAULT_SEEN_MAX_ENTRIES
    seen_max_age_s: float = flood.DEFAULT_SEEN_MAX_AGE_S
    leave_flush_s: float = 1.0
    data_dir: str | None = None
    secret: bytes | None = field(default=None, repr=False)
    history_max_age_s: float = 7 * 86400.0
    history_max_lines: int = 10_000


def check_label(value: str, what: str, max_chars: int) -> str:
    """Validate a name or room the way the wire protocol does.

    Returns:
        ``value`` unchanged.

    Raises:
        UsageError: empty, too long, blanks at either end, or control characters.
    """
    if not value:
        raise UsageError(f"{what} must not be empty")
    if len(value) > max_chars:
        raise UsageError(f"{what} is longer than {max_chars} characters")
    try:
        wire._check_label(value, what)
    except RemoteProtocolError as exc:
        raise UsageError(str(exc)) from None
    return value


def check_name(value: str) -> str:
    """Validate a display name of ours (``--name``, ``/nick``) by the wire
    rules for names (``docs/protocol.md`` §5).

    Returns:
        The name in NFC (:func:`p2pchat.names.normalise`), the form it is
        sent and shown in.

    Raises:
        UsageError: empty, longer than 32 code points, blanks at either end,
            ``#``, or a control, format (zero width, bidi) or other invisible
            character.
    """
    value = names.normalise(value)
    if len(value) > wire.MAX_NAME_CHARS:
        raise UsageError(f"name is longer than {wire.MAX_NAME_CHARS} characters")
    try:
        names.check_name(value)
    except names.BadName as exc:
        raise UsageError(str(exc)) from None
    return value


class _Dialer:
    """Dials one peer with backoff while there is no link to it.

    ``addresses``/``port`` may be updated by discovery.  Runs on its own
    thread ``p2pchat-dial-<key>`` until :meth:`stop`, until the node closes,
    or until it gives up (a peer that is this node, or a discovered peer
    unreachable for ``give_up_s``).  Every other failure (a refusal such as
    ``busy``, a link that could not be set up, a timeout) only backs off.
    A static peer known by its id is redialled only while the node has fewer
    links than the overlay's target.  ``once``: a dial the overlay asked for
    (:meth:`Node._fill_overlay`): one attempt, the outcome reported to the
    overlay, and the thread ends with the link.
    """

    def __init__(
        self,
        node: Node,
        key: str,
        addresses: list[str],
        port: int,
        node_id: str = "",
        first_delay_s: float = 0.0,
        give_up_s: float | None = None,
        once: bool = False,
    ) -> None:
        self.node = node
        self.once = once
        self.key = key
        self.addresses = addresses
        self.port = port
        self.node_id = node_id
        self.first_delay_s = first_delay_s
        self.give_up_s = give_up_s
        self.stopped = threading.Event()
        self.wake = threading.Event()  # set by stop() and when the peer's link goes down
        self.thread = threading.Thread(target=self._run, name=f"p2pchat-dial-{key}", daemon=True)

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()

    def _run(self) -> None:
        cfg = self.node.config
        backoff = cfg.redial_min_s
        last_ok = time.monotonic()
        if self.first_delay_s and self.stopped.wait(self.first_delay_s):
            return
        while not self.stopped.is_set():
            if self.node_id and self.node.has_link(self.node_id):
                if self.once:
                    break
                # Linked (dialled by the peer): sleep until that link goes down.
                # The timeout is only a safety net; an idle thread costs a wake-up.
                last_ok = time.monotonic()
                self.wake.wait(IDLE_CHECK_S)
                self.wake.clear()
                continue
            if self.node_id and not self.once and not self.node.wants_links():
                # A static peer, and the overlay has its links: no need of it now.
                self.wake.wait(IDLE_CHECK_S)
                self.wake.clear()
                continue
            try:
                sock, host = dial(list(self.addresses), self.port, cfg.dial_timeout_s)
            except OSError as exc:
                log.debug("dial %s:%s failed: %s", self.addresses, self.port, exc)
                if self.once:
                    self.node._overlay_dial_failed(self.node_id, "")
                    break
                if self.give_up_s is not None and time.monotonic() - last_ok > self.give_up_s:
                    log.info("giving up on %s after %.0f s", self.key, self.give_up_s)
                    break
            else:
                if self.stopped.is_set():
                    sock.close()
                    break
                link = self.node._adopt(sock, "out", (host, self.port))
                if link is None:
                    if self.node.closing:
                        break
                    if self.once:
                        self.node._overlay_dial_failed(self.node_id, "")
                        break
                    # Not adopted (no slot, or any other passing reason): this
                    # is a failed dial like any other; back off and dial again.
                    log.debug("dial %s:%s: link not adopted", host, self.port)
                else:
                    while not link.done.wait(IDLE_CHECK_S):  # closing the node ends the link
                        if self.stopped.is_set():
                            break
                    if link.peer is not None:
                        self.node_id = link.peer.node
                    lived = time.monotonic() - (link.up_at or time.monotonic())
                    if lived > 10.0:
                        backoff = cfg.redial_min_s
                    if link.up_at is not None:
                        last_ok = time.monotonic()
                    if link.refused is not None or link.peer is None:
                        code = link.refused.code if link.refused else ""
                        if link.refusal is not None:
                            code = code or link.refusal.code
                        if self.once:
                            self.node._overlay_dial_failed(self.node_id, code)
                            break
                        if code == "self":
                            log.info("%s is this node; not dialling it again", self.key)
                            break
                        if code in ("room", "version"):
                            backoff = cfg.redial_max_s
                    if self.once:
                        break
            jitter = random.uniform(0.8, 1.2)
            if self.stopped.wait(backoff * jitter):
                break
            backoff = min(backoff * 2, cfg.redial_max_s)
        self.node._dialer_done(self)


class Node:
    """One p2pchat node.

    Args:
        config: the node's settings.
        discovery: how to find peers (``MdnsDiscovery``), or None for static
            peers only.
        on_event: called with every :class:`~p2pchat.events.Event`, mostly on
            the router thread; must return quickly.
        store: the history store to use (e.g. a
            :class:`~p2pchat.core.history_store.MemoryStore`), or None to open
            the SQLite one of ``config.data_dir`` (in memory when None).  The
            node closes it.

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
        name = check_name(config.name)
        check_label(config.room, "room", wire.MAX_ROOM_CHARS)
        self.config = config
        if config.broadcast not in ("flood", "tree"):
            raise UsageError(f"broadcast must be 'flood' or 'tree', not {config.broadcast!r}")
        if config.history_max_lines < 1 or config.history_max_age_s <= 0:
            raise UsageError("the history window must hold at least one line and one second")
        self._secret = RoomSecret(config.secret, config.room) if config.secret else None
        self._wire_room = self._secret.tag if self._secret else config.room
        # Opened last among the checks: it takes the data directory's lock.
        self._store: HistoryStore = store or Store.open(
            config.data_dir, config.history_max_age_s, config.history_max_lines
        )
        try:
            self._identity = Identity.load_or_create(config.data_dir)
        except BaseException:
            self._store.close()
            raise
        self.node_id = self._identity.node_id
        self._admission = Admission(self.node_id, self._wire_room, MAX_ORIGINS)
        self._dh_keys: BoundedMap[str, str] = BoundedMap(MAX_ORIGINS)  # origin -> X25519 key
        self._bad_sigs: dict[Link, int] = {}
        self._floor_cache = (float("-inf"), 0)  # (monotonic time, floor hlc)
        # The first prune runs now: it also drops lines stamped in the future
        # (a store poisoned before nodes refused them is repaired at start).
        self._store.prune(time.time())
        self._clock = history.HybridClock(self._store.last_hlc)
        self._own_line_lock = threading.Lock()
        self._hist: dict[Link, _LinkHistory] = {}
        # (origin, line) missing behind a later line -> (when to fetch it, from which link)
        self._gaps: OrderedDict[tuple[str, int], tuple[float, Link]] = OrderedDict()
        self._summary_cache: tuple[int, list[wire.Have]] | None = None
        # Live lines held back so that each origin's lines are shown in order.
        self._order: OriginOrder[wire.Chat] = OriginOrder(hold_s=ORDER_HOLD_S)
        self._store_version = 0  # bumped on every line stored
        self._inserts_since_prune = 0
        self._next_prune = time.monotonic() + PRUNE_INTERVAL_S  # pruned just above
        self._name = name
        self._discovery = discovery
        self._on_event = on_event or (lambda ev: None)
        self._lock = threading.RLock()
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=16)  # wakes the router
        self._seen = flood.SeenCache(config.seen_max_entries, config.seen_max_age_s)
        self._roster = Roster(self.node_id, name, config.member_timeout_s, config.max_members)
        self._equivocators: BoundedMap[str, str] = BoundedMap(MAX_ORIGINS)  # origin -> key
        # (origin, line) -> the line dropped for another under that number
        self._evidence: BoundedMap[tuple[str, int], wire.Chat] = BoundedMap(MAX_ORIGINS)
        self._remember_name(name, self._identity.key)
        self._left: BoundedMap[str, int] = BoundedMap(MAX_ORIGINS)  # origin -> its leave's seq
        self._links: dict[str, Link] = {}  # peer id -> the link flooding uses
        self._all_links: set[Link] = set()
        self._dialers: dict[str, _Dialer] = {}
        self._overlay = Overlay(
            self.node_id,
            random.Random(),
            target=config.active_target,
            max_active=config.active_max,
            max_passive=config.passive_max,
        )
        self._noticed: set[tuple[str, str]] = set()
        self._flagged: set[tuple[str, str]] = set()  # (origin, name) already flagged
        self._started_at = time.monotonic()
        self._own_bucket = flood.TokenBucket(
            config.origin_rate_per_s, config.origin_burst, time.monotonic()
        )
        self._send_lock = threading.Lock()
        self._link_buckets: dict[Link, flood.TokenBucket] = {}
        self._origin_buckets: BoundedMap[str, flood.TokenBucket] = BoundedMap(MAX_ORIGINS)
        self._member_addrs: BoundedMap[str, tuple[list[str], int]] = BoundedMap(MAX_ORIGINS)
        self._tree: TreeState[Link] | None = TreeState() if config.broadcast == "tree" else None
        self._router_woken = False
        self._addrs: list[str] = []
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "frames_in",
                "frames_out",
                "bytes_in",
                "bytes_out",
                "duplicates_dropped",
                "catchup_in",
                "catchup_out",
            ),
            0,
        )
        self._queue_drops = 0
        self._frames_refused = self._admission.refused  # one table of reasons (core.admission)
        self._links_refused: dict[str, int] = {}
        self._rate_limited: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self._router: threading.Thread | None = None
        self._stopping = threading.Event()
        self._started = False
        self._closed = False
        self._joined = False
        self._next_presence = 0.0
        self._last_presence = 0.0
        self.port = 0

    # -- public API -------------------------------------------------------------

    @property
    def name(self) -> str:
        """This node's display name."""
        return self._name

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
            self._listen()
            self._addrs = self._advertised_addresses()
            self._started_at = time.monotonic()
            self._router = threading.Thread(target=self._route, name="p2pchat-router", daemon=True)
            self._router.start()
            for host, port in self.config.peers:
                self.add_peer(host, port)
            if self._discovery is not None:
                self._discovery.start(
                    LocalService(
                        self.node_id, self._name, self._wire_room, self.port, wire.PROTOCOL_VERSION
                    ),
                    self._found,
                    self._lost,
                )
        except BaseException:
            self.close()
            raise
        self._emit([Ready(node=self.node_id, name=self._name, room=self.room, port=self.port)])

    def send(self, text: str, action: bool = False) -> MessageEvent:
        """Send a chat line to the room (``action`` for ``/me``).  Any thread.

        Returns:
            The event of our own line, also passed to ``on_event``.

        Raises:
            LineTooLong: more than ``wire.MAX_TEXT_CHARS`` code points.
            UsageError: empty, contains a line break or control character,
                or the node is not running.
            LocalError: sending faster than the origin rate limit for longer
                than ``send_wait_s``; the line was not sent.
        """
        if len(text) > wire.MAX_TEXT_CHARS:
            raise LineTooLong(
                f"line is {len(text)} characters; the limit is {wire.MAX_TEXT_CHARS}. "
                "Nothing was sent."
            )
        if not text.strip():
            raise UsageError("empty line")
        if wire.has_control_chars(text):
            raise UsageError("a line must not contain line breaks or control characters")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("the line is not valid Unicode text") from None
        self._wait_own_token()
        with self._own_line_lock:  # own lines are numbered, stored and sent in order
            with self._lock:
                if self._closed:
                    raise UsageError("the node is closed")
                msg = self._signed(
                    wire.Chat(
                        text=text,
                        action=action,
                        line=self._store.next_line(self._wire_room),
                        hlc=self._clock.now(),
                        **self._envelope_locked(),
                    )
                )
            # Durable before it counts as sent (the store commits with fsync);
            # outside the state lock so that links keep flowing meanwhile.
            self._store.add_own(msg)
            with self._lock:
                self._counted_insert()
                ev = self._message_event(msg, self_=True)
                self._handle_now(("local", msg))
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
                    self._rate_limited["own"] = self._rate_limited.get("own", 0) + 1
                raise LocalError(
                    f"sending faster than {self.config.origin_rate_per_s:g} lines/s "
                    "for too long; the line was not sent"
                )
            if self._stopping.wait(wait):
                raise UsageError("the node is closed")

    def stats(self) -> Stats:
        """The node's counters (see :class:`~p2pchat.events.Stats`).  Any thread."""
        with self._lock:
            counts = dict(self._counts)
            for link in self._all_links:
                counts["frames_in"] += link.frames_in
                counts["frames_out"] += link.frames_out
                counts["bytes_in"] += link.bytes_in
                counts["bytes_out"] += link.bytes_out
            return Stats(
                uptime_s=round(time.monotonic() - self._started_at, 1),
                frames_in=counts["frames_in"],
                frames_out=counts["frames_out"],
                bytes_in=counts["bytes_in"],
                bytes_out=counts["bytes_out"],
                duplicates_dropped=counts["duplicates_dropped"],
                frames_refused=dict(self._frames_refused),
                links_refused=dict(self._links_refused),
                rate_limited=self._rate_limited_counts(),
                queue_drops=self._queue_drops,
                links=len(self._links),
                members=len(self._roster),
                seen_cache=len(self._seen),
                stored_lines=self._store.count(self._wire_room),
                catchup_in=counts["catchup_in"],
                catchup_out=counts["catchup_out"],
            )

    def _rate_limited_counts(self) -> dict[str, int]:
        counts = dict(self._rate_limited)
        if self._roster.refused:  # newcomers not taken: the roster was full
            counts["members_full"] = self._roster.refused
        if self._order.released_by_cap:  # lines shown before their hold's bound
            counts["order_held"] = self._order.released_by_cap
        return counts

    def set_name(self, name: str) -> None:
        """Change our display name and tell the room.  Any thread.

        Raises:
            UsageError: the name is invalid.
        """
        name = check_name(name)
        if self._closed:
            raise UsageError("the node is closed")
        with self._lock:
            if name == self._name:
                return
            old = self._name
            self._name = name  # lines sent from now on carry the new name
            self._handle_now(("nick", old, name))

    def add_peer(self, host: str, port: int) -> None:
        """Add a static peer, dialled with backoff for as long as the node runs."""
        key = f"{host}:{port}"
        with self._lock:
            if key in self._dialers or len(self._dialers) >= self.config.max_known_peers:
                return
            dialer = _Dialer(self, key, [host], port)
            self._dialers[key] = dialer
        dialer.thread.start()

    def history(self, n: int = 20) -> list[MessageEvent]:
        """The room's last ``n`` lines in the one order every node agrees on
        (hybrid logical clock, then origin id, then line number), oldest
        first, each with ``history=True``.  Any thread.

        Raises:
            UsageError: ``n`` is below 1.
        """
        if n < 1:
            raise UsageError("the number of lines must be at least 1")
        with self._lock:
            lines = self._store.recent(self._wire_room, min(n, self.config.history_max_lines))
            return [
                self._message_event(m, self_=m.origin == self.node_id, history=True) for m in lines
            ]

    @property
    def closing(self) -> bool:
        """True once :meth:`close` has begun.  Any thread."""
        return self._closed

    def has_link(self, node_id: str) -> bool:
        """True if a link to ``node_id`` is up."""
        return node_id in self._links

    def wants_links(self) -> bool:
        """True while the node has fewer links than the overlay's target, or
        always with a target of 0 (a fixed topology: static peers only).  Any thread."""
        target = self.config.active_target
        return target == 0 or len(self._links) < target

    def snapshot(self) -> Snapshot:
        """Members of the room and the links that are up, for /who and /peers."""
        now = time.monotonic()
        with self._lock:
            members = [
                MemberInfo(
                    node=m.node,
                    name=m.name,
                    display=self._roster.display(m.node),
                    linked=m.node in self._links,
                    self=m.node == self.node_id,
                )
                for m in self._roster.members()
            ]
            links = [
                LinkInfo(
                    peer=pid,
                    name=self._roster.display(pid, link.peer.name if link.peer else None)
                    if pid in self._roster
                    else (link.peer.name if link.peer else ""),
                    address=link.address,
                    direction=link.direction,
                    uptime_s=round(now - (link.up_at or now), 1),
                    frames_in=link.frames_in,
                    frames_out=link.frames_out,
                )
                for pid, link in sorted(self._links.items())
            ]
        return Snapshot(members=members, links=links)

    def close(self) -> None:
        """Leave the room gracefully and stop every thread.  Idempotent.

        Floods a ``leave``, waits up to ``leave_flush_s`` for it to be sent,
        unregisters from mDNS (peers see the goodbye), closes every link and
        joins every thread the node started.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            links = list(self._links.values())
            frame = b""
            if self._joined and links:
                leave = self._signed(wire.Leave(reason="quit", **self._envelope_locked()))
                self._seen.add(leave.id, time.monotonic())
                frame = wire.encode_frame(leave)
        if frame:
            for link in links:
                link.send(frame)
            deadline = time.monotonic() + self.config.leave_flush_s
            while time.monotonic() < deadline and any(link.queued() for link in links):
                time.sleep(0.02)
            for link in links:
                link.retire()  # half-close after the leave: peers read it, then EOF
        self._stopping.set()
        if self._discovery is not None:
            self._discovery.close()
        for listener in self._listeners:
            listener.close()
        with self._lock:
            dialers = list(self._dialers.values())
        for d in dialers:
            d.stop()
        # Give retired links a moment to reach EOF cleanly, then cut the rest.
        deadline = time.monotonic() + 0.5
        for link in links:
            link.done.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            all_links = list(self._all_links)
        for link in all_links:
            link.close("node closing")
        for listener in self._listeners:
            listener.join(2.0)
        for d in dialers:
            if d.thread.is_alive() and d.thread is not threading.current_thread():
                d.thread.join(self.config.dial_timeout_s + 2.0)
        for link in all_links:
            link.join(self.config.link.link_timeout_s + 2.0)
        if self._router is not None and self._router is not threading.current_thread():
            with contextlib.suppress(queue.Full):
                self._inbox.put_nowait(("stop",))
            self._router.join(5.0)
        with self._lock:
            self._store.close()

    # -- listening and links ------------------------------------------------------

    def _listen(self) -> None:
        hosts = self.config.interfaces or ["0.0.0.0"]
        port = self.config.port
        try:
            self._bind_all(hosts, port)
        except PortInUse as exc:
            if not self.config.port_fallback:
                raise StartupError(
                    f"{exc}; choose another with --port (0 = any free port)"
                ) from None
            self._emit([Notice(text=f"{exc}; listening on a free port instead", level="warning")])
            self._bind_all(hosts, 0)

    def _bind_all(self, hosts: list[str], port: int) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        try:
            for host in hosts:
                listener = Listener(host, port, self._accept)
                self._listeners.append(listener)
                port = listener.port  # the others take the same port
        except StartupError:
            for listener in self._listeners:
                listener.close()
            self._listeners = []
            raise
        self.port = port
        for listener in self._listeners:
            listener.start()

    def _hello(self) -> wire.Hello:
        return wire.Hello(
            version=wire.PROTOCOL_VERSION,
            node=self.node_id,
            name=self._name,
            room=self._wire_room,
            port=self.port,
            features=["history", "tree"] if self._tree is not None else ["history"],
            nonce=os.urandom(16).hex(),
            key=self._identity.key,
        )

    def _accept(self, sock: socket.socket, remote: tuple[str, int]) -> None:
        """Listener thread: adopt an inbound socket, or refuse it at once."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._adopt(sock, "in", remote)

    def _adopt(self, sock: socket.socket, direction: str, remote: tuple[str, int]) -> Link | None:
        """Start a link on a connected socket (its reader and writer threads).

        An inbound socket over a limit of :meth:`_inbound_refusal` is refused
        here, before any thread starts for it: it gets a ``refuse`` (best
        effort, never blocking) and is closed.  An outbound one is never
        refused here.  Listener or dialler thread.

        Returns:
            the link, or None when the socket was refused or the node is
            closing (the socket is closed then).
        """
        assert direction in ("in", "out")
        with self._lock:
            if self._closed:
                sock.close()
                return None
            refusal = self._inbound_refusal(remote[0]) if direction == "in" else None
            if refusal is not None:
                code = refusal[0]
                self._links_refused[code] = self._links_refused.get(code, 0) + 1
            else:
                link = Link(
                    sock,
                    "in" if direction == "in" else "out",
                    remote,
                    self,
                    self._hello(),
                    self.config.link,
                )
                self._all_links.add(link)
        if refusal is not None:
            log.debug("refused a connection from %s: %s", remote[0], refusal[1])
            frame = wire.encode_frame(wire.Refuse(code="busy", reason=refusal[1]))
            with contextlib.suppress(OSError):
                sock.send(frame, socket.MSG_DONTWAIT)
            sock.close()
            return None
        link.start()
        return link

    def _inbound_refusal(self, ip: str) -> tuple[str, str] | None:
        """Why a socket just accepted from ``ip`` must be refused, as
        ``(links_refused counter, reason for the peer)``, or None to take it.

        Counts the inbound sockets the node holds (outbound ones never
        count): from ``ip`` at most ``max_links_per_address``; still in the
        handshake at most ``max_handshakes_per_address`` from ``ip`` and
        ``max_handshakes`` in all; at most ``2 * max_links`` in all.  The
        caller holds the lock.
        """
        cfg = self.config
        inbound = from_ip = shaking = shaking_from_ip = 0
        for link in self._all_links:
            if link.direction != "in":
                continue
            inbound += 1
            in_handshake = link.up_at is None
            shaking += in_handshake
            if link.remote[0] == ip:
                from_ip += 1
                shaking_from_ip += in_handshake
        if from_ip >= cfg.max_links_per_address:
            return "busy", f"too many links from {ip} ({cfg.max_links_per_address})"
        if shaking_from_ip >= cfg.max_handshakes_per_address:
            return "handshake_busy", (
                f"too many handshakes from {ip} ({cfg.max_handshakes_per_address})"
            )
        if shaking >= cfg.max_handshakes:
            return "handshake_busy", f"too many handshakes ({cfg.max_handshakes})"
        if inbound >= 2 * cfg.max_links:
            return "busy", f"too many links ({cfg.max_links})"
        return None

    # LinkOwner callbacks: on link reader threads.

    def check_hello(self, link: Link, hello: wire.Hello) -> wire.Refuse | None:
        """Refuse a peer's hello when it is ourselves, another room, or too
        many; in a private room, set the link's cipher from both nonces."""
        if hello.node == self.node_id:
            return wire.Refuse(code="self", reason="this is a link to myself")
        if not hello.key or not hello.nonce or identity.node_id_of(hello.key) != hello.node:
            return wire.Refuse(
                code="identity", reason="a hello needs a nonce and the key of its node id"
            )
        if hello.room != self._wire_room:
            return wire.Refuse(
                code="room", reason=f"this node is in room {self._wire_room!r}, not {hello.room!r}"
            )
        if len(self._links) >= self.config.max_links and hello.node not in self._links:
            return wire.Refuse(code="busy", reason=f"too many links ({self.config.max_links})")
        if link.direction == "in" and hello.node not in self._links:
            with self._lock:
                full = not self._overlay.room_for(time.monotonic())
            if full:  # the overlay's bound (core/overlay.py): dial someone else
                return wire.Refuse(code="busy", reason=f"too many links ({self.config.active_max})")
        if self._secret is not None:  # every frame after the hellos is sealed
            link.cipher = self._secret.link_cipher(
                link.hello.nonce, hello.nonce, link.direction == "out"
            )
        return None

    def prove(self, link: Link, hello: wire.Hello) -> wire.Proof:
        """Sign the peer's nonce: we hold the key of our node id (§4)."""
        data = wire.proof_bytes(hello.nonce, self.node_id, hello.node, self._wire_room)
        return wire.Proof(sig=self._identity.sign(data))

    def check_proof(self, link: Link, hello: wire.Hello, proof: wire.Proof) -> bool:
        """The peer signed our nonce with the key its hello names."""
        data = wire.proof_bytes(link.hello.nonce, hello.node, self.node_id, self._wire_room)
        return identity.verify(hello.key, proof.sig, data)

    def on_link_up(self, link: Link) -> None:
        """Handshake done: register the link (tie-break, peer_up)."""
        self._handle_now(("up", link))

    def on_message(
        self, link: Link, msg: wire.FloodMessage | wire.TreeMessage | wire.HistoryMessage
    ) -> None:
        """A flooded message arrived: the flood rule runs here, on the link's
        reader thread, under the state lock (nothing in it blocks: sends only
        queue frames).  A reader busy here reads no more, which pushes back
        on the peer through TCP."""
        self._handle_now(("msg", link, msg))

    def on_link_closed(self, link: Link, reason: str, was_up: bool) -> None:
        """The link ended: tell the router (and surface refusals to the user)."""
        text = ""
        if link.refused is not None and link.refused.code in ("version", "room"):
            text = f"{link.address} refused the link: {link.refused.reason}"
            key = (link.remote[0], link.refused.code)
        elif link.refusal is not None and link.refusal.code in ("version", "room"):
            text = f"refused a link with {link.remote[0]}: {link.refusal.reason}"
            key = (link.remote[0], link.refusal.code)
        if text:
            with self._lock:
                fresh = key not in self._noticed
                if fresh and len(self._noticed) < 1024:
                    self._noticed.add(key)
            if fresh:  # once per address and cause, not at every redial
                self._emit([Notice(text=text, level="error")])
        self._handle_now(("down", link, reason))

    # -- discovery callbacks: on the discovery thread ---------------------------------

    def _found(self, peer: FoundPeer) -> None:
        if peer.node_id == self.node_id or peer.room != self._wire_room:
            return
        if peer.version != wire.PROTOCOL_VERSION:
            log.info("ignoring %s: protocol version %s", peer.name, peer.version)
            return
        with self._lock:
            self._dial_node_locked(peer.node_id, list(peer.addresses), peer.port)

    def _dial_node_locked(self, node_id: str, addrs: list[str], port: int) -> None:
        """A peer and where it listens: into the overlay's passive view, and
        dial whom the overlay wants now (:meth:`_fill_overlay`).  The caller
        holds ``self._lock``."""
        if self._closed:
            return
        dialer = self._dialers.get(node_id)
        if dialer is not None and not dialer.stopped.is_set():
            dialer.addresses = addrs
            dialer.port = port
        self._overlay.learn(node_id, addrs, port, time.monotonic())
        self._fill_overlay(time.monotonic())

    def _fill_overlay(self, now: float) -> None:
        """Dial the peers the overlay asks for (:meth:`Overlay.to_dial
        <p2pchat.core.overlay.Overlay.to_dial>`), each once.  The latest
        presences' addresses join the passive view first.  Lock held."""
        if self._closed:
            return
        for n, origin in enumerate(reversed(self._member_addrs)):
            if n >= 8:
                break
            if origin not in self._overlay.passive:
                addrs, port = self._member_addrs[origin]
                self._overlay.learn(origin, addrs, port, now)
        dialing = {d.node_id for d in self._dialers.values() if d.node_id}
        for pid in self._overlay.to_dial(now, dialing, self._roster):
            known = self._overlay.address(pid)
            if known is None or len(self._dialers) >= self.config.max_known_peers:
                continue
            dialer = _Dialer(self, pid, known[0], known[1], node_id=pid, once=True)
            self._dialers[pid] = dialer
            dialer.thread.start()

    def _overlay_dial_failed(self, node_id: str, code: str) -> None:
        """A dial the overlay asked for got no link (``code``: the peer's
        refusal, or empty).  Dialler thread."""
        with self._lock:
            if code == "self":
                self._overlay.forget(node_id)
            else:
                self._overlay.dial_failed(node_id, time.monotonic())

    def _relink(self, node_id: str) -> None:
        """A member went silent: if its presence told us where it listens,
        keep it in the overlay's passive view: it is no member now, so the
        overlay dials it (merge), and two parts of the room whose only
        joining node died find each other again.  Router thread, lock held."""
        known = self._member_addrs.pop(node_id, None)
        if known is None or node_id in self._links:
            return
        addrs, port = known
        self._dial_node_locked(node_id, addrs, port)

    def _advertised_addresses(self) -> list[str]:
        """IPv4 addresses for our presence: the ``interfaces``, or all of them."""
        addrs = [a for a in self.config.interfaces if a != "0.0.0.0"]
        if not addrs:
            from p2pchat.discovery import local_ipv4_addresses

            addrs = local_ipv4_addresses()
        return addrs[:8]

    def _lost(self, node_id: str) -> None:
        with self._lock:
            self._overlay.forget(node_id)
            dialer = self._dialers.get(node_id)
        if dialer is not None:
            dialer.stop()

    def _dialer_done(self, dialer: _Dialer) -> None:
        with self._lock:
            if self._dialers.get(dialer.key) is dialer:
                del self._dialers[dialer.key]

    # -- the router thread ----------------------------------------------------------

    def _handle_now(self, item: tuple[Any, ...]) -> None:
        """Apply one change to the node's state on the calling thread, under
        the state lock, and report its events in the order the changes were
        made (they are emitted with the lock still held; it is re-entrant, so
        a callback may call :meth:`snapshot` or :meth:`stats`)."""
        events: list[Event] = []
        with self._lock:
            try:
                self._handle(item, events)
            except Exception:
                log.exception("internal error handling %s", item[0])
            self._emit(events)

    def _emit(self, events: list[Event]) -> None:
        for ev in events:
            try:
                self._on_event(ev)
            except Exception:
                log.exception("on_event callback failed")

    def _deadlines(self) -> tuple[float | None, float | None, float | None]:
        """The router's next graft, held-line and gap deadlines (monotonic s),
        read under the state lock: link readers change the tables they come
        from meanwhile (read without it, the router once died of a dict that
        changed size)."""
        with self._lock:
            try:
                graft_at = self._tree.next_deadline() if self._tree is not None else None
                gap_at = next(iter(self._gaps.values()))[0] if self._gaps else None
                return graft_at, self._order.next_deadline(), gap_at
            except Exception:
                log.exception("router: internal error reading the deadlines")
                return None, None, None

    def _route(self) -> None:
        next_tick = 0.0
        announce_at: float | None = None  # when to send the batched ihaves
        while True:
            now = time.monotonic()
            wake = min(next_tick, self._next_presence) if self._joined else next_tick
            if announce_at is not None:
                wake = min(wake, announce_at)
            graft_at, show_at, gap_at = self._deadlines()
            for at in (graft_at, show_at, gap_at):
                if at is not None:
                    wake = min(wake, at)
            timeout = max(0.0, wake - now)
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is not None and item[0] == "stop":
                return
            events: list[Event] = []
            with self._lock:
                try:
                    now = time.monotonic()
                    if self._tree is not None:
                        if item is not None and announce_at is None:
                            announce_at = now + DEFAULT_IHAVE_DELAY_S
                        if announce_at is not None and now >= announce_at:
                            announce_at = None
                            self._router_woken = False
                            self._tree_timers(now)
                        elif graft_at is not None and now >= graft_at:
                            self._tree_timers(now)
                    if show_at is not None and now >= show_at:
                        self._show(self._order.tick(now), events)
                    if gap_at is not None and now >= gap_at:
                        self._gap_timers(now)  # a held line's gap: fetch it now
                    if now >= next_tick:
                        next_tick = now + 0.5
                        self._tick(now, events)
                    if now >= self._next_presence and self._joined and not self._closed:
                        every = self._presence_every()
                        presence = self._signed(
                            wire.Presence(
                                addrs=self._addrs,
                                port=self.port,
                                dh=self._identity.dh,
                                every=every,
                                **self._envelope_locked(),
                            )
                        )
                        self._flood_own(presence, events)
                        self._last_presence = now
                        self._next_presence = now + every
                except Exception:
                    log.exception("router: internal error in the timers")
                self._emit(events)

    def _signed(self, msg: wire.F) -> wire.F:
        """Our message with our public key and signature (``docs/protocol.md`` §7.3)."""
        msg = msgspec.structs.replace(msg, key=self._identity.key)
        return msgspec.structs.replace(msg, sig=self._identity.sign(wire.signing_bytes(msg)))

    def _envelope_locked(self) -> dict[str, Any]:
        return {
            "id": wire.new_message_id(),
            "origin": self.node_id,
            "seq": self._store.next_seq(),
            "name": self._name,
            "room": self._wire_room,
            "ts": wire.now_ts(),
            "hops": self.config.hop_limit,
        }

    def _presence_every(self) -> float:
        """Seconds between our presences: the configured interval, or longer
        in a big room, so that the whole room sends about one presence per
        ``PRESENCE_SHARE_S`` (RTCP's rule for its reports, RFC 3550 section
        6.2: a fixed share for all, whatever the group's size).  Every node
        checks the signature of every presence, so without this the cost of
        an idle room would grow with the square of its size.

        The share stretches the interval up to ``wire.MAX_PRESENCE_EVERY_S``
        only (members counted are those heard within their timeout; the
        roster is capped), so fake members cannot push the detection of a
        crashed member past three such intervals (30 s).  A longer
        configured interval is kept (within the wire's range)."""
        shared = min(len(self._roster) * PRESENCE_SHARE_S, wire.MAX_PRESENCE_EVERY_S)
        return min(max(self.config.presence_interval_s, shared), 3600.0)

    def _presence_soon(self, now: float) -> None:
        """Schedule a presence at once, but not twice within 0.5 s."""
        self._next_presence = min(self._next_presence, max(now, self._last_presence + 0.5))

    def _handle(self, item: tuple[Any, ...], events: list[Event]) -> None:
        kind = item[0]
        now = time.monotonic()
        if kind == "msg":
            if isinstance(item[2], wire.IHave | wire.Graft | wire.Prune):
                self._on_tree(item[1], item[2])
            elif isinstance(item[2], wire.Sync | wire.Lines | wire.Ack):
                self._on_history(item[1], item[2], events)
            else:
                self._on_flooded(item[1], item[2], events)
        elif kind == "local":
            self._flood_own(item[1], events)
        elif kind == "up":
            self._link_up(item[1], events)
        elif kind == "down":
            link: Link = item[1]
            if link in self._all_links:
                self._all_links.discard(link)
                self._account_closed(link)
            if self._tree is not None:
                self._tree.link_down(link)
            self._hist.pop(link, None)
            self._bad_sigs.pop(link, None)
            if link.peer is not None and self._links.get(link.peer.node) is link:
                del self._links[link.peer.node]
                self._overlay.link_down(link.peer.node, now)
                self._fill_overlay(now)
                for dialer in self._dialers.values():
                    if dialer.node_id == link.peer.node:
                        dialer.wake.set()  # dial again now, not at its next check
                reason = "this node left" if self._closed else item[2]
                events.append(
                    PeerDown(
                        peer=link.peer.node,
                        address=link.address,
                        reason=reason,
                        name=self._roster.display(link.peer.node, link.peer.name),
                    )
                )
        elif kind == "nick":
            _, old, new = item
            self._roster.rename_self(new)
            nick = self._signed(wire.Nick(old=old, **self._envelope_locked()))
            self._remember_name(new, self._identity.key)
            self._flood_own(nick, events)
            events.append(NickEvent(origin=self.node_id, old=old, new=new))
            self._presence_soon(now)

    def _account_closed(self, link: Link) -> None:
        """Fold a closed link's counters into the node's totals."""
        self._link_buckets.pop(link, None)
        self._counts["frames_in"] += link.frames_in
        self._counts["frames_out"] += link.frames_out
        self._counts["bytes_in"] += link.bytes_in
        self._counts["bytes_out"] += link.bytes_out
        if link.frame_error:
            self._frames_refused[link.frame_error] = (
                self._frames_refused.get(link.frame_error, 0) + 1
            )
        if link.end_code and not (link.end_code == "keepalive_timeout" and self._closed):
            self._links_refused[link.end_code] = self._links_refused.get(link.end_code, 0) + 1
        if link.end_code == "queue_full":
            self._queue_drops += 1

    def _link_up(self, link: Link, events: list[Event]) -> None:
        if self._closed or link.peer is None:
            link.close("node closing")
            return
        pid = link.peer.node
        existing = self._links.get(pid)
        if existing is not None and existing is not link:
            # Exactly one link per pair: keep the one dialled by the lower
            # node id; if both were dialled by the same node, keep the newer.
            lower = min(self.node_id, pid)
            if existing.dialer == lower and link.dialer != lower:
                link.retire()
                return
            existing.retire()
            self._links[pid] = link
            self._tree_link_up(link, existing)
            self._history_link_up(link, existing)
            self._overlay_link_up(link)
            return
        if self._overlay_link_up(link):
            return
        self._links[pid] = link
        self._tree_link_up(link, None)
        self._history_link_up(link, None)
        events.append(PeerUp(peer=pid, address=link.address, name=link.peer.name))
        if not self._joined:
            self._joined = True
            join = wire.Join(dh=self._identity.dh, **self._envelope_locked())
            self._flood_own(self._signed(join), events)
        self._presence_soon(time.monotonic())

    def _overlay_link_up(self, link: Link) -> bool:
        """Tell the overlay of a link that is up (before it is registered,
        or when it replaced another to the same peer); drop the link it says
        must go to stay within ``active_max`` (closed, counted in
        ``links_refused``: ``overlay_full`` for another link dropped for a
        newcomer, ``busy`` for the newcomer itself).  Lock held.

        Returns:
            True if ``link`` itself was dropped.
        """
        assert link.peer is not None
        pid = link.peer.node
        victim = self._overlay.link_up(pid, link.direction == "in", time.monotonic())
        if victim is None:
            return False
        code = "busy" if victim == pid else "overlay_full"
        self._links_refused[code] = self._links_refused.get(code, 0) + 1
        dropped = link if victim == pid else self._links.get(victim)
        if dropped is not None:  # closed now: a peer that never reads the end cannot linger
            log.info("overlay full: dropping the link to %s", victim)
            dropped.close("overlay full")
        return victim == pid

    def _tree_link_up(self, link: Link, replaced: Link | None) -> None:
        if self._tree is None:
            return
        if replaced is not None:
            self._tree.link_down(replaced)
        if link.peer is not None and "tree" in link.peer.features:
            self._tree.link_up(link)

    def _on_tree(self, link: Link, msg: wire.TreeMessage) -> None:
        """An ``ihave``, ``graft`` or ``prune`` from a tree-capable peer."""
        tree = self._tree
        if tree is None or link.peer is None or "tree" not in link.peer.features:
            log.info("ignored %s from %s: tree broadcast not agreed", wire.kind(msg), link.address)
            return
        if isinstance(msg, wire.IHave):
            shortcut = tree.announced(msg.ids, link, self._seen, time.monotonic(), msg.hops)
            if shortcut is not None:
                # A shorter way to the origin (tree.py: dynamic tree optimisation).
                shortcut.link.send(wire.encode_frame(wire.Graft(ids=[shortcut.msg_id])))
            self._wake_router()
        elif isinstance(msg, wire.Graft):
            cached = tree.grafted(msg.ids, link)
            for m in cached:
                link.send(wire.encode_frame(m))
            if len(cached) < len(msg.ids):
                # Lines that fell out of the tree's cache (a busy minute) are
                # answered from the store: a graft is a node's repair path.
                have = {m.id for m in cached}
                for line in self._store.get([i for i in msg.ids if i not in have]):
                    link.send(wire.encode_frame(line))
        else:
            tree.pruned(link)

    def _wake_router(self) -> None:
        if not self._router_woken:
            self._router_woken = True
            with contextlib.suppress(queue.Full):
                self._inbox.put_nowait(("wake",))

    def _tree_timers(self, now: float) -> None:
        """Send batched announcements and the grafts that are due."""
        tree = self._tree
        if tree is None:
            return
        for link, announced in tree.take_announcements().items():
            for i in range(0, len(announced), 256):
                batch = announced[i : i + 256]
                ihave = wire.IHave(ids=[a[0] for a in batch], hops=[a[1] for a in batch])
                link.send(wire.encode_frame(ihave))
        for link, ids in tree.due_grafts(now).items():
            for i in range(0, len(ids), 256):
                link.send(wire.encode_frame(wire.Graft(ids=ids[i : i + 256])))

    def _flood_own(self, msg: wire.FloodMessage, events: list[Event]) -> None:
        self._forward(msg, None, events)

    def _on_flooded(self, link: Link, msg: wire.FloodMessage, events: list[Event]) -> None:
        """A flooded message from a link: the admission pipeline, in the one
        order ``docs/protocol.md`` §6.1 gives.  Every check runs before any
        state changes; a message that fails one changes nothing but counters.

        0. the link's token bucket (it bounds the work one link can cause);
        1. (decoded and validated by the link's reader: :func:`wire.decode_body`);
        2. :meth:`_admit`: room, key and signature, own origin, clock,
           replay;
        3. duplicates: the seen-cache and the store (read only), then for a
           line, another line held under its origin and number
           (equivocation, resolved by :meth:`_equivocation`);
        4. the origin's token bucket;
        5. only then: the seen-cache, the per-origin tables, the store,
           forwarding and delivery.
        """
        now = time.monotonic()
        cfg = self.config
        bucket = self._link_buckets.get(link)
        if bucket is None:
            bucket = flood.TokenBucket(cfg.link_rate_per_s, cfg.link_burst, now)
            self._link_buckets[link] = bucket
        if not bucket.take(now):
            self._count_limited("link", link.address)
            return
        if msg.id in self._seen and msg.room == self._wire_room:
            # A copy of a message already taken: dropped unread (the first
            # copy passed every check).  Only this link's tree state changes.
            self._counts["duplicates_dropped"] += 1
            tree = self._tree
            # Only chat lines prune: presence comes from every node, and copies of
            # several origins' messages pruned at once can cut a cycle twice.
            if (
                tree is not None
                and isinstance(msg, wire.Chat)
                and tree.duplicate(link, msg.id, now)
            ):
                link.send(wire.encode_frame(wire.Prune()))
            return
        if self._admit(link, msg, time.time()) is not None:
            return
        if isinstance(msg, wire.Chat) and msg.line > 0:
            if self._store.holds(msg):
                # Older than the seen-cache, but we hold it (catch-up, or before
                # a restart): a line is shown once, ever.
                self._seen.add(msg.id, now)
                self._counts["duplicates_dropped"] += 1
                return
            held = self._store.line_id(self._wire_room, msg.origin, msg.line)
            if held is not None and held != msg.id:
                self._equivocation(msg, held, events)
                return
        ob = self._origin_buckets.get(msg.origin)
        if ob is not None and not ob.take(now):
            self._count_limited("origin", msg.origin)
            return
        # -- admitted: from here on, state changes.
        if ob is None:
            burst = 2 * cfg.origin_burst
            ob = flood.TokenBucket(cfg.origin_rate_per_s, burst, now)
            ob.take(now)
            self._origin_buckets.put(msg.origin, ob)
        else:
            self._origin_buckets.move_to_end(msg.origin)
        self._admitted(msg)
        if isinstance(msg, wire.Presence | wire.Join) and msg.dh:
            self._dh_keys.put(msg.origin, msg.dh)
        if isinstance(msg, wire.Presence) and msg.port and msg.addrs:
            self._member_addrs.put(msg.origin, (list(msg.addrs), msg.port))
        if isinstance(msg, wire.Chat) and msg.line > 1:
            self._check_gap(link, msg)  # before storing it: then the store answers from memory
        self._forward(msg, link, events)

    def _refused(self, reason: str) -> str:
        """Count a refused message under ``reason``; returns ``reason``."""
        return self._admission.refuse(reason)

    def _admit(self, link: Link, msg: wire.FloodMessage, wall_s: float) -> str | None:
        """The checks every flooded message and every catch-up line passes
        before anything about it is kept (:class:`~p2pchat.core.admission.
        Admission`, ``docs/protocol.md`` §6.1); a signature failure also
        counts against ``link`` (``BAD_SIGNATURES_PER_LINK``).

        Returns:
            None if the message passed, else the reason it was refused
            (counted in ``/stats`` under that reason), or ``"own"``.
        """
        reason = self._admission.check(msg, wall_s, self._live_floor, self._last_seq)
        if reason == "own":
            self._counts["duplicates_dropped"] += 1
        elif reason in SIGNATURE_REASONS:
            self._penalise(link, msg, reason)
        return reason

    def _last_seq(self, origin: str) -> int:
        """The ``seq`` of the latest message the roster heard from ``origin`` (-1 if none)."""
        member = self._roster.get(origin)
        return member.name_seq if member is not None else -1

    def _live_floor(self) -> int:
        """The lowest clock a live line may carry not to be a replay (µs):
        the window's floor, cached for 1 s (it scans), but never above the
        seen-cache's age: lines younger than that are judged by the
        seen-cache and the store, so a flood of valid lines that fills the
        window cannot make honest lines still in flight look like replays."""
        now = time.monotonic()
        if now - self._floor_cache[0] > 1.0:
            wall = time.time()
            recent = int((wall - self.config.seen_max_age_s) * 1e6)
            self._floor_cache = (now, min(self._store.floor(self._wire_room, wall), recent))
        return self._floor_cache[1]

    def _admitted(self, msg: wire.FloodMessage) -> None:
        """Keep what an admitted message tells about its origin."""
        self._admission.admitted(msg)

    def _equivocation(self, msg: wire.Chat, held: str, events: list[Event]) -> None:
        """``msg`` carries the origin and line number of the line ``held``
        under another id: its origin signed two lines with one number.  Every
        node keeps the one with the lower id (the same everywhere), shows
        neither again, flags the origin, and offers both lines to every link
        (the one it dropped is kept in memory as evidence), so that every
        node learns of the lie and keeps the same line
        (``docs/protocol.md`` §7.2)."""
        now = time.monotonic()
        self._seen.add(msg.id, now)
        key = (msg.origin, msg.line)
        known = self._evidence.get(key)
        if known is not None and msg.id == known.id:
            return  # this lie is known here and was passed on already
        self._refused("equivocation")
        if msg.id < held:
            old = self._store.get([held])
            self._store.replace(held, msg)
            self._store_version += 1
            keep, lose = msg.id, (old[0] if old else None)
        else:
            keep, lose = held, msg
        if lose is not None:
            self._evidence.put(key, lose)
        origin = msg.origin
        first = origin not in self._equivocators
        self._equivocators.put(origin, msg.key)
        self._roster.flagged.add(origin)
        if first:
            shown = self._roster.display(origin, msg.name)
            log.warning("%s signed two lines numbered %d: %s, %s", origin, msg.line, held, msg.id)
            events.append(
                Notice(
                    text=f"{shown} signed two different lines under one number ({msg.line}): "
                    "it is lying to part of the room. Every node keeps the same one of them "
                    f"(/whois {msg.name})",
                    level="warning",
                )
            )
        offer = [keep] if lose is None else [keep, lose.id]
        for link, state in self._hist.items():
            state.push.offer(offer)
            self._pump(link, state)

    def _lines_by_id(self, ids: Sequence[str]) -> list[wire.Chat]:
        """Lines for catch-up, by id: from the store, or the evidence of an
        equivocation (a line we dropped for another under its number)."""
        lines = self._store.get(ids)
        if len(lines) == len(ids) or not self._evidence:
            return lines
        found = {m.id: m for m in lines}
        wanted = set(ids)
        extra = {m.id: m for m in self._evidence.values() if m.id in wanted}
        return [m for m in (found.get(i) or extra.get(i) for i in ids) if m is not None]

    def _count_limited(self, kind: str, who: str) -> None:
        n = self._rate_limited.get(kind, 0) + 1
        self._rate_limited[kind] = n
        if n == 1 or n % 1000 == 0:  # log the first and then every 1000th
            log.warning("rate limit (%s) hit by %s; %d dropped so far", kind, who, n)

    def _forward(self, msg: wire.FloodMessage, came_from: Link | None, events: list[Event]) -> None:
        now = time.monotonic()
        decision = flood.decide(
            msg, came_from, list(self._links.values()), self._seen, self._wire_room, now
        )
        if not decision.deliver:
            if decision.drop_reason != "duplicate":
                log.info("dropped %s %s: %s", wire.kind(msg), msg.id, decision.drop_reason)
            return
        if decision.forward is not None:
            frame = wire.encode_frame(decision.forward)
            targets: list[Link] = list(decision.to)
            tree = self._tree
            if tree is not None:
                split = tree.new_message(decision.forward, came_from, now)
                lazy = set(split.lazy)
                targets = [t for t in targets if t not in lazy]
                if lazy:
                    self._wake_router()
            for target in targets:
                target.send(frame)
        self._deliver(msg, came_from is None, events, now)

    def _deliver(self, msg: wire.FloodMessage, own: bool, events: list[Event], now: float) -> None:
        if own:
            if isinstance(msg, wire.Chat):
                events.append(self._message_event(msg, self_=True))
            return
        if isinstance(msg, wire.Direct) and msg.to == self.node_id:
            ev = self._open_direct(msg)
            if ev is not None:
                events.append(ev)
        origin = msg.origin
        left_seq = self._left.get(origin)
        stale = left_seq is not None and msg.seq <= left_seq
        if left_seq is not None and not stale:
            del self._left[origin]  # it came back
        if isinstance(msg, wire.Leave):
            if stale:
                return
            member = self._roster.remove(origin)
            self._left.put(origin, msg.seq)
            if member is not None:
                events.append(
                    LeaveEvent(
                        origin=origin,
                        name=member.name,
                        reason="quit",
                        display=self._roster.display(origin, member.name),
                    )
                )
            return
        if not stale:
            self._check_name(msg, events)
            every = msg.every if isinstance(msg, wire.Presence) else 0.0
            is_new, old = self._roster.heard(
                origin, msg.name, now, seq=msg.seq, every_s=every, linked=self._links
            )
            for gone in self._roster.take_evicted():
                events.append(
                    LeaveEvent(
                        origin=gone.node,
                        name=gone.name,
                        reason="timeout",
                        display=self._roster.display(gone.node, gone.name),
                    )
                )
            if is_new and self._store.first_key(msg.name) == msg.key:
                self._store.touch_name(msg.name)  # the names of members are evicted last
            if is_new:
                via = "join" if isinstance(msg, wire.Join) else "presence"
                events.append(
                    JoinEvent(
                        origin=origin,
                        name=msg.name,
                        via=via,
                        display=self._roster.display(origin),
                    )
                )
            elif old is not None:
                events.append(NickEvent(origin=origin, old=old, new=msg.name))
            if isinstance(msg, wire.Join):
                self._presence_soon(now)  # so the newcomer learns of us
        if isinstance(msg, wire.Chat):
            self._clock.observe(msg.hlc)
            self._store_line(msg)
            if msg.line < 1:  # an unnumbered line: nothing to order it by
                events.append(self._message_event(msg, self_=False))
                return
            # Shown in its origin's order: held (up to ORDER_HOLD_S) while its
            # previous line is missing; the store has it at once all the same.
            prev = msg.line > 1 and self._store.has_line(self._wire_room, msg.origin, msg.line - 1)
            self._show(self._order.offer(msg.origin, msg.line, msg, now, prev_held=prev), events)

    def _show(self, shown: list[Release[wire.Chat]], events: list[Event]) -> None:
        """Report the lines :attr:`_order` released, in its order; one shown
        out of its place (or by catch-up with nothing waiting for it, or by
        catch-up and said more than ``IN_PLACE_FRESH_S`` ago) is an earlier
        line (``history=True``)."""
        old = time.time() - IN_PLACE_FRESH_S
        for r in shown:
            earlier = r.earlier or (not r.live and r.item.ts < old)
            events.append(self._message_event(r.item, self_=False, history=earlier))

    def send_direct(self, to: str, text: str, action: bool = False) -> MessageEvent:
        """Send a direct message, encrypted end to end, to one member.  Any thread.

        Args:
            to: the member's ``name#abcd`` display (resolved by the hex
                digits, which start its node id and key fingerprint), its
                name (when no other member's name looks like it), or a
                prefix of its node id; see :meth:`_resolve`.
            text: the line (the rules of :meth:`send`).

        Returns:
            Our event for it (``private=True``), also passed to ``on_event``.

        Raises:
            UsageError: nobody, or more than one member, answers to ``to``;
                the member has not announced a key for direct messages yet;
                or the line is not valid (see :meth:`send`).
        """
        check_text = text.strip()
        if not check_text or wire.has_control_chars(text):
            raise UsageError("a direct message needs text without control characters")
        if len(text) > wire.MAX_TEXT_CHARS:
            raise LineTooLong(
                f"line is {len(text)} characters; the limit is {wire.MAX_TEXT_CHARS}."
            )
        self._wait_own_token()
        with self._lock:
            if self._closed:
                raise UsageError("the node is closed")
            node = self._resolve(to)
            dh = self._dh_keys.get(node)
            if dh is None:
                raise UsageError(
                    f"{self._roster.display(node)} has not announced a key for direct "
                    "messages yet; try again in a few seconds"
                )
            env = self._envelope_locked()
            aad = f"{env['id']}:{self.node_id}:{node}".encode()
            eph, box = identity.seal(dh, bytes([int(action)]) + text.encode("utf-8"), aad)
            msg = self._signed(wire.Direct(to=node, eph=eph, box=box, **env))
            ev = MessageEvent(
                id=msg.id,
                origin=self.node_id,
                name=self._name,
                text=text,
                ts=msg.ts,
                self=True,
                seq=msg.seq,
                action=action,
                display=self._name,
                private=True,
                to=node,
                to_display=self._roster.display(node),
            )
            self._handle_now(("local", msg))
            self._emit([ev])
        return ev

    def _resolve(self, who: str) -> str:
        """The node id of the one other member ``who`` stands for (lock held).

        ``name#abcd``: the member whose node id (the first hex digits of its
        key fingerprint) starts with the hex digits after the last ``#`` and
        whose name looks like ``name`` (:func:`p2pchat.names.confusable`);
        never a member whose name merely reads so (``#`` is not allowed in
        names).  A bare name: the member with exactly that name (in NFC), only
        when no other member's name looks like it.  Else a prefix of at least
        4 hex digits of a node id.

        Raises:
            UsageError: nobody, or more than one member, answers to ``who``;
                or members with look-alike names need their ``#abcd``.
        """
        who = names.normalise(who)
        others = [m for m in self._roster.members() if m.node != self.node_id]
        if "#" in who:
            name, _, prefix = who.rpartition("#")
            prefix = prefix.lower()
            if not 4 <= len(prefix) <= 16 or prefix.strip("0123456789abcdef"):
                raise UsageError(
                    f"in {who!r}, '#' must be followed by 4 to 16 hex digits of a key "
                    "fingerprint, as /who shows them"
                )
            found = [
                m
                for m in others
                if m.node.startswith(prefix) and (not name or names.confusable(name, m.name))
            ]
        else:
            found = [m for m in others if m.name == who]
            alike = [m for m in self._roster.lookalikes(self.node_id, who) if m.name != who]
            if alike:
                shown = ", ".join(sorted(self._roster.display(m.node) for m in found + alike))
                raise UsageError(
                    f"names look like {who!r} ({shown}): say which, with its #fingerprint"
                )
            if not found and len(who) >= 4 and not who.strip("0123456789abcdef"):
                found = [m for m in others if m.node.startswith(who)]
        if not found:
            raise UsageError(f"nobody called {who!r} is in the room (/who lists them)")
        if len(found) > 1:
            names_ = ", ".join(sorted(self._roster.display(m.node) for m in found))
            raise UsageError(f"{len(found)} members are called {who!r}: say which ({names_})")
        return found[0].node

    def _open_direct(self, msg: wire.Direct) -> MessageEvent | None:
        aad = f"{msg.id}:{msg.origin}:{msg.to}".encode()
        plain = self._identity.open(msg.eph, msg.box, aad)
        if plain is None or not plain:
            self._frames_refused["undecryptable"] = self._frames_refused.get("undecryptable", 0) + 1
            return None
        try:
            text = plain[1:].decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if not text.strip() or wire.has_control_chars(text) or len(text) > wire.MAX_TEXT_CHARS:
            self._frames_refused["undecryptable"] = self._frames_refused.get("undecryptable", 0) + 1
            return None
        return MessageEvent(
            id=msg.id,
            origin=msg.origin,
            name=msg.name,
            text=text,
            ts=msg.ts,
            self=False,
            seq=msg.seq,
            action=plain[0] == 1,
            display=self._roster.display(msg.origin, msg.name),
            private=True,
            to=self.node_id,
            to_display=self._name,
        )

    def _message_event(self, msg: wire.Chat, self_: bool, history: bool = False) -> MessageEvent:
        return MessageEvent(
            id=msg.id,
            origin=msg.origin,
            name=msg.name,
            text=msg.text,
            ts=msg.ts,
            self=self_,
            seq=msg.seq,
            action=msg.action,
            display=self._roster.display(msg.origin, msg.name),
            history=history,
            hlc=msg.hlc,
            line=msg.line,
        )

    def _tick(self, now: float, events: list[Event]) -> None:
        self._seen.expire(now)
        self._fill_overlay(now)
        self._history_timers(now)
        for member in self._roster.expire(now):
            self._relink(member.node)
            events.append(
                LeaveEvent(
                    origin=member.node,
                    name=member.name,
                    reason="timeout",
                    display=self._roster.display(member.node, member.name),
                )
            )

    # -- history: store and anti-entropy (lock held) ------------------------------------

    def _store_line(self, msg: wire.Chat) -> bool:
        """Keep a received line; True if it was new to the store."""
        if not self._store.add(msg):
            return False
        self._counted_insert()
        return True

    def _counted_insert(self) -> None:
        """A line was stored: prune at the next tick once 10 % of the window
        (at least 10 lines) came in since the last prune, so the store
        stays within the window under any load."""
        self._store_version += 1
        self._inserts_since_prune += 1
        if self._inserts_since_prune > max(10, self.config.history_max_lines // 10):
            self._next_prune = 0.0

    def _summary(self) -> list[wire.Have]:
        """Our version vector of the room, cached until the store changes."""
        cached = self._summary_cache
        if cached is not None and cached[0] == self._store_version:
            return cached[1]
        have = self._store.summary(self._wire_room)
        self._summary_cache = (self._store_version, have)
        return have

    def _history_link_up(self, link: Link, replaced: Link | None) -> None:
        if replaced is not None:
            self._hist.pop(replaced, None)
        if link.peer is None or "history" not in link.peer.features:
            return
        state = self._hist[link] = _LinkHistory()
        self._send_sync(link, state, time.monotonic())

    def _send_sync(self, link: Link, state: _LinkHistory, now: float) -> None:
        state.sync_sent_at = now
        state.want_sync = False
        have = self._summary()
        since = self._store.floor(self._wire_room, time.time())
        while True:
            body = wire.encode_body(wire.Sync(room=self._wire_room, since=since, have=have))
            if len(body) <= wire.MAX_FRAME_BYTES:
                break
            # 800 entries with digests and very long numbers can pass the frame
            # limit: the least recently active origins are left for later.
            have = have[: len(have) * 9 // 10]
        link.send(wire.HEADER.pack(len(body)) + body)

    def _want_sync(self, link: Link) -> None:
        """Ask ``link`` for what we lack: now, or at the first tick the
        debounce allows."""
        state = self._hist.get(link)
        if state is None:
            return
        now = time.monotonic()
        if now - state.sync_sent_at >= SYNC_DEBOUNCE_S:
            self._send_sync(link, state, now)
        else:
            state.want_sync = True

    def _history_timers(self, now: float) -> None:
        """Router tick: commit received lines, prune, and the due syncs."""
        self._store.flush()
        self._gap_timers(now)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL_S
            self._inserts_since_prune = 0
            if self._store.prune(time.time()):
                self._store_version += 1
        for link, state in list(self._hist.items()):
            if state.deferred is not None and now - state.answered_at >= SYNC_DEBOUNCE_S / 2:
                self._answer_sync(link, state, state.deferred)
            since = now - state.sync_sent_at
            if (state.want_sync and since >= SYNC_DEBOUNCE_S) or since >= SYNC_INTERVAL_S:
                self._send_sync(link, state, now)

    def _check_gap(self, link: Link, msg: wire.Chat) -> None:
        """A live line whose predecessor we lack: fetch it unless it comes
        within ``GAP_GRACE_S`` (then it was only overtaken)."""
        key = (msg.origin, msg.line - 1)
        if key in self._gaps or self._store.has_line(self._wire_room, *key):
            return
        self._gaps[key] = (time.monotonic() + GAP_GRACE_S, link)
        while len(self._gaps) > 1024:
            self._gaps.popitem(last=False)

    def _gap_timers(self, now: float) -> None:
        """Router: fetch the lines still missing after their grace (the
        router wakes for the first one due: a later line waits unshown for
        them, ``ORDER_HOLD_S``).  The link's sync debounce applies (a sync
        every 0.5 s during a burst whose lines overtake each other took the
        p99 latency of a 1000-line burst from 0.1 s to 2 s), except for an
        origin none of whose lines was shown yet (one that speaks as its
        first links come up, in a room whose links are new): then a quarter
        of it."""
        for key, (due, link) in list(self._gaps.items()):
            if due > now:
                break  # in the order of their due times (one grace for all)
            del self._gaps[key]
            if not self._store.has_line(self._wire_room, *key):
                # From the link that showed the gap, or any other if it is gone.
                target = link if link in self._hist else next(iter(self._hist), None)
                state = self._hist.get(target) if target is not None else None
                if target is None or state is None:
                    continue
                new_origin = self._order.last_shown(key[0]) is None
                if new_origin and now - state.sync_sent_at >= SYNC_DEBOUNCE_S / 4:
                    self._send_sync(target, state, now)
                else:
                    self._want_sync(target)

    def _on_history(self, link: Link, msg: wire.HistoryMessage, events: list[Event]) -> None:
        """A ``sync``, ``lines`` or ``ack`` frame (feature ``history``)."""
        state = self._hist.get(link)
        if state is None:
            log.info("ignored %s from %s: history not agreed", wire.kind(msg), link.address)
            return
        if isinstance(msg, wire.Sync):
            if msg.room != self._wire_room:
                self._frames_refused["wrong_room"] = self._frames_refused.get("wrong_room", 0) + 1
                return
            if time.monotonic() - state.answered_at < SYNC_DEBOUNCE_S / 2:
                # Answering scans the window: a peer asking faster than this
                # is answered at the next tick, with its latest sync only.
                state.deferred = msg
                return
            self._answer_sync(link, state, msg)
        elif isinstance(msg, wire.Ack):
            if state.push.acked(msg.batch):
                self._pump(link, state)
            else:
                log.info("ignored ack of batch %d from %s: not in flight", msg.batch, link.address)
        else:
            if self._apply_lines(link, msg.lines, events):
                for other in self._hist:
                    if other is not link:
                        self._want_sync(other)
            link.send(wire.encode_frame(wire.Ack(batch=msg.batch)))

    def _answer_sync(self, link: Link, state: _LinkHistory, msg: wire.Sync) -> None:
        """Queue for the peer what its ``sync`` says it lacks; ask for what
        it has that we lack."""
        state.answered_at = time.monotonic()
        state.deferred = None
        floor = self._store.floor(self._wire_room, time.time())
        have = {h.origin: (h.lo, h.hi) for h in msg.have}
        ids = self._store.missing(
            self._wire_room, have, max(msg.since, floor), self.config.history_max_lines
        )
        conflicts = self._conflicts(msg.have)
        if conflicts:
            listed = set(ids)
            ids += [i for i in conflicts if i not in listed]
        state.push.reset(ids)
        self._pump(link, state)
        if history.behind(self._summary(), msg.have, floor):
            self._want_sync(link)

    def _conflicts(self, theirs: list[wire.Have]) -> list[str]:
        """The ids of our lines that a peer holds under the same numbers but
        other ids (its ``sync`` entry's digest differs from ours over the
        same run): an origin equivocated, and the two sides must trade them
        to keep the same one (``docs/protocol.md`` §7.2).  At most a window's
        worth."""
        mine = {h.origin: h for h in self._summary()}
        out: list[str] = []
        queries = 0
        for h in theirs:
            m = mine.get(h.origin)
            if not h.digest or m is None or m.lo > h.lo or m.hi < h.hi:
                continue  # we do not hold every line of its run: nothing to compare
            run: list[str] | None = None
            if (m.lo, m.hi) == (h.lo, h.hi):
                ours = m.digest
            elif queries >= MAX_DIGEST_QUERIES:
                continue  # the rest at a later sync
            else:
                queries += 1
                run = self._store.run_ids(self._wire_room, h.origin, h.lo, h.hi)
                ours = history.run_digest(run) if run is not None else ""
            if not ours or ours == h.digest:
                continue
            if run is None:
                run = self._store.run_ids(self._wire_room, h.origin, h.lo, h.hi)
            out += run or []
            if len(out) >= self.config.history_max_lines:
                break
        return out[: self.config.history_max_lines]

    def _pump(self, link: Link, state: _LinkHistory) -> None:
        for batch in state.push.batches(self._lines_by_id):
            self._counts["catchup_out"] += len(batch.lines)
            link.send(wire.encode_frame(batch))

    def _apply_lines(self, link: Link, lines: list[wire.Chat], events: list[Event]) -> bool:
        """Take catch-up lines; report the new ones as earlier lines.  Each
        line passes the checks of a live message (:meth:`_admit`) before
        anything about it is kept.  Returns True if any was new."""
        now = time.monotonic()
        wall = time.time()
        floor = self._store.floor(self._wire_room, wall)  # once per batch: it scans
        news = False
        for msg in lines:
            if msg.room != self._wire_room:
                self._refused("wrong_room")
                continue
            if msg.line < 1 or msg.id in self._seen:
                continue
            if msg.hlc < floor:
                continue  # too old for our window: neither kept nor shown
            if self._store.holds(msg) or self._admit(link, msg, wall) is not None:
                continue
            held = self._store.line_id(self._wire_room, msg.origin, msg.line)
            if held is not None and held != msg.id:
                self._equivocation(msg, held, events)
                continue
            self._admitted(msg)
            self._clock.observe(msg.hlc)
            if self._store_line(msg):
                self._seen.add(msg.id, now)
                self._counts["catchup_in"] += 1
                news = True
                # An earlier line, unless a held live line of its origin waits
                # for it: then it is shown in its place, before that line (the
                # store is asked only then: a long catch-up holds nothing).
                prev = (
                    msg.line > 1
                    and self._order.held(msg.origin) > 0
                    and self._store.has_line(self._wire_room, msg.origin, msg.line - 1)
                )
                self._show(
                    self._order.offer(msg.origin, msg.line, msg, now, prev_held=prev, live=False),
                    events,
                )
        return news

    # -- identity: signatures, replays, names (lock held) -------------------------------

    def _penalise(self, link: Link, msg: wire.FloodMessage, reason: str) -> None:
        """A message on ``link`` failed its signature check (already counted
        under ``reason``): log it, and close the link after
        ``BAD_SIGNATURES_PER_LINK`` such messages."""
        bad = self._bad_sigs.get(link, 0) + 1
        self._bad_sigs[link] = bad
        if bad == 1 or bad % 100 == 0:
            log.warning("dropped %s %s from %s: %s", wire.kind(msg), msg.id, link.address, reason)
        if bad >= BAD_SIGNATURES_PER_LINK:
            link.close(f"{bad} messages failed their signature")

    def _remember_name(self, name: str, key: str) -> tuple[str, str]:
        """Trust on first use: the first key seen with ``name`` (NFC) is
        kept, and so is the first key seen with any name that looks like it,
        under ``"#" + skeleton`` in the store's name table (``#`` is never in
        a name).  Returns both first keys."""
        first = self._store.first_key(name)
        if first is None:
            self._store.remember_name(name, key, keep=self._member_names)
            first = key
        like = "#" + names.skeleton(name)
        first_like = self._store.first_key(like)
        if first_like is None:  # a new look, or a store from before looks were kept
            self._store.remember_name(like, first, keep=self._member_names)
            first_like = first
        return first, first_like

    def _member_names(self) -> set[str]:
        """The names of the members present and their ``"#" + skeleton``
        entries (kept when the first-key table is full)."""
        members = self._roster.members()
        return {m.name for m in members} | {"#" + m.skeleton for m in members}

    def _check_name(self, msg: wire.FloodMessage, events: list[Event]) -> None:
        """Flag a key that claims a name, or a look-alike of one (the same
        :func:`p2pchat.names.skeleton`), first seen here with another key
        (trust on first use): it is always shown as ``name#abcd``.  Raise a
        notice, once per origin and name, for it and for a member that comes
        in (or renames itself) under a name that looks like another member's.
        """
        name = names.normalise(msg.name)
        first, first_like = self._remember_name(name, msg.key)
        impostor = first != msg.key or first_like != msg.key
        if (msg.origin, name) in self._flagged:
            return
        member = self._roster.get(msg.origin)
        newcomer = member is None or member.name != name
        lookalikes = self._roster.lookalikes(msg.origin, name) if newcomer else []
        if not impostor and not lookalikes:
            return
        if len(self._flagged) >= 4096:
            self._flagged.clear()
        self._flagged.add((msg.origin, name))
        text = f"{name}#{msg.origin[:4]}"
        if lookalikes:
            others = ", ".join(sorted(f"{m.name}#{m.node[:4]}" for m in lookalikes[:5]))
            text += f" has a name that looks like {others}"
        if impostor:
            self._roster.flagged.add(msg.origin)
            text += (" and" if lookalikes else "") + (
                f" uses the name {name!r}, or one that looks like it, which this node first "
                "saw with another key"
            )
        text += f": it may not be who you think (/whois {name})"
        events.append(Notice(text=text, level="warning"))

    def whois(self, name: str) -> list[KeyInfo]:
        """The members (us included) called ``name`` or a name that looks
        like it (:func:`p2pchat.names.confusable`), with their key
        fingerprints, and whether each holds the first key this node saw with
        its name and that look (trust on first use).  Any thread."""
        name = names.normalise(name.strip())
        like = "#" + names.skeleton(name)
        with self._lock:
            first_like = self._store.first_key(like)
            out = []
            for m in self._roster.members():
                if m.skeleton != like[1:]:
                    continue
                first = self._store.first_key(m.name)
                if first_like is not None and first != first_like:
                    first = None
                key = (
                    self._identity.key
                    if m.node == self.node_id
                    else self._admission.keys.get(m.node, "")
                )
                out.append(
                    KeyInfo(
                        node=m.node,
                        name=m.name,
                        display=self._roster.display(m.node),
                        fingerprint=identity.fingerprint(key) if key else "",
                        first=bool(key) and key == first,
                        self=m.node == self.node_id,
                        equivocated=m.node in self._equivocators,
                    )
                )
            return out
