"""The protocol core of a node: events in, actions out (sans-I/O).

:class:`Protocol` holds everything one node knows and decides, and nothing
that waits: it imports no socket, thread, SQLite, zeroconf or clock module.
Its caller (the threaded shell :class:`p2pchat.node.Node`, or the simulator
:mod:`p2pchat.sim`) passes every input in with the time, and carries out the
:mod:`~p2pchat.core.actions` each call returns, in order::

    core = Protocol(config, identity, MemoryStore(), now=0.0, wall=1.7e9)
    actions = core.link_up(link, hello, "out", "10.0.0.2:7420", now, wall)
    actions = core.receive(link, msg, now, wall)        # a decoded frame
    actions = core.tick(now, wall)                      # at core.next_deadline()

Inputs: a link's handshake (:meth:`hello`, :meth:`check_hello`,
:meth:`prove`, :meth:`check_proof`), :meth:`link_up`, :meth:`receive`,
:meth:`link_down`, peers found and lost (:meth:`found`, :meth:`lost`,
:meth:`dial_done`), the user (:meth:`send_line`, :meth:`send_direct`,
:meth:`set_name`, :meth:`leave`) and :meth:`tick`.  Time: ``now`` in
seconds of a monotonic clock (timers), ``wall`` in seconds since the epoch
(message stamps, the history window).

The parts, each one job: :class:`~p2pchat.core.admission.Admission` (the
ordered checks, via :class:`~p2pchat.core.state.Shared`),
:class:`~p2pchat.core.broadcast.Broadcast` (flood, Plumtree),
:class:`~p2pchat.core.antientropy.AntiEntropy` (catch-up, gaps,
equivocation), :class:`~p2pchat.core.membership.Membership` (roster,
presences, names), :class:`~p2pchat.core.direct.Directs` (``/msg``),
:class:`~p2pchat.core.overlay.Overlay` (whom to link to).

Not thread-safe: the shell calls it under one lock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from p2pchat import identity, wire
from p2pchat.addrs import hostport_split, loopback_only, screen
from p2pchat.core import offers
from p2pchat.core.actions import Action, Dial, LinkId, Retire
from p2pchat.core.antientropy import AntiEntropy
from p2pchat.core.broadcast import Broadcast
from p2pchat.core.config import NodeConfig, check_label, check_name
from p2pchat.core.direct import Directs
from p2pchat.core.history_store import HistoryStore
from p2pchat.core.membership import Membership
from p2pchat.core.overlay import Overlay
from p2pchat.core.state import LinkUp, Shared
from p2pchat.errors import LineTooLong, UsageError
from p2pchat.events import (
    AwayEvent,
    FileOfferEvent,
    KeyInfo,
    LineEvent,
    MessageEvent,
    NickEvent,
    PeerDown,
    PeerUp,
    TopicEvent,
)
from p2pchat.files.manifest import Offer
from p2pchat.flood import SeenCache
from p2pchat.identity import Identity
from p2pchat.privacy import RoomSecret
from p2pchat.roster import Roster

TICK_S = 0.5
"""Period of the housekeeping tick: seen-cache expiry, overlay, catch-up
timers, member timeouts."""

MAX_OFFERS_LISTED = 256
"""Most room offers, and most one-member offers, :meth:`Protocol.offers` lists."""

MAX_PRESENCE_ADDRS = 8
"""Addresses of the latest presences offered to the overlay at each tick."""


def check_text(text: str) -> None:
    """Check a chat line of ours before anything else is done for it.

    Raises:
        LineTooLong: more than ``wire.MAX_TEXT_CHARS`` code points.
        UsageError: empty, a line break or control character, or not valid
            Unicode text.
    """
    if len(text) > wire.MAX_TEXT_CHARS:
        raise LineTooLong(
            f"line is {len(text)} characters; the limit is {wire.MAX_TEXT_CHARS}. Nothing was sent."
        )
    if not text.strip():
        raise UsageError("empty line")
    _check_chars(text, "line", "a")


def _check_chars(text: str, what: str, article: str) -> None:
    """No line break, control character or lone surrogate in a ``what`` of ours.

    Raises:
        UsageError: naming ``what`` (with ``article``).
    """
    if wire.has_control_chars(text):
        raise UsageError(f"{article} {what} must not contain line breaks or control characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"the {what} is not valid Unicode text") from None


def check_away(text: str) -> str:
    """Check an away text of ours; returns it without blanks at either end
    ("" = not away).

    Raises:
        UsageError: more than ``wire.MAX_AWAY_CHARS`` code points, a line
            break or control character, or not valid Unicode text.
    """
    text = text.strip()
    if len(text) > wire.MAX_AWAY_CHARS:
        raise UsageError(f"away text is {len(text)} characters; the limit is {wire.MAX_AWAY_CHARS}")
    _check_chars(text, "away text", "an")
    return text


def check_topic(text: str) -> str:
    """Check a room topic of ours; returns it without blanks at either end
    ("" = clear the topic).

    Raises:
        LineTooLong: more than ``wire.MAX_TOPIC_CHARS`` code points (not
            split: a topic is one line).
        UsageError: a line break or control character, or not valid
            Unicode text.
    """
    text = text.strip()
    if len(text) > wire.MAX_TOPIC_CHARS:
        raise LineTooLong(
            f"the topic is {len(text)} characters; the limit is {wire.MAX_TOPIC_CHARS}. "
            "Nothing was sent."
        )
    _check_chars(text, "topic", "a")
    return text


def check_config(config: NodeConfig) -> str:
    """Check the settings a node cannot run with; returns the name in NFC.

    Raises:
        UsageError: a bad name or room, broadcast mode or history window.
    """
    name = check_name(config.name)
    check_label(config.room, "room", wire.MAX_ROOM_CHARS)
    if config.broadcast not in ("flood", "tree"):
        raise UsageError(f"broadcast must be 'flood' or 'tree', not {config.broadcast!r}")
    if config.history_max_lines < 1 or config.history_max_age_s <= 0:
        raise UsageError("the history window must hold at least one line and one second")
    return name


FIRST_PRESENCE_AFTER_S = 1.0
"""Seconds from our ``join`` to our first ``presence``."""


class Protocol:
    """One node's protocol state and rules (see the module docstring).

    Args:
        config: the node's settings.
        identity: its key pair.
        store: its history store (a :class:`~p2pchat.core.history_store.
            MemoryStore` or the SQLite :class:`~p2pchat.store.Store`); the
            first prune runs here (it also drops lines stamped in the future).
        now, wall: the time of creation.
        rng: message ids and random choices; default ``random.SystemRandom()``
            (ids must not be guessable; the simulator passes a seeded one).
        port: the TCP port we listen on (``hello``, presences); the shell
            may set :attr:`port` once it listens.
        addrs: our addresses for presences (:attr:`addrs`).
        verify: the signature check (see :class:`~p2pchat.core.admission.Admission`).

    Raises:
        UsageError: a bad name, room, broadcast mode or history window.
    """

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        store: HistoryStore,
        *,
        now: float,
        wall: float,
        rng: random.Random | None = None,
        port: int = 0,
        addrs: Sequence[str] = (),
        verify: Callable[[str, str, bytes], bool] | None = None,
    ) -> None:
        name = check_config(config)
        self.config = config
        self.secret = RoomSecret(config.secret, config.room) if config.secret else None
        self.wire_room = self.secret.tag if self.secret else config.room
        store.prune(wall)
        rng = rng or random.SystemRandom()
        s = self.s = Shared(config, identity, store, rng, self.wire_room, now, wall, verify)
        s.name = name
        s.roster.rename_self(name)
        # A restart: the lines the store holds were shown before (a line of an
        # origin older than those that comes live is shown as an earlier line).
        tops = store.top_lines(self.wire_room)
        for origin in sorted(tops, key=tops.__getitem__)[-s.order.max_origins :]:
            s.order.seed(origin, tops[origin])
        self.node_id = s.node_id
        self.port = port
        self._addrs: list[str] = []
        self.addrs = list(addrs)
        self.members = Membership(s)
        self.history_ = AntiEntropy(s)
        self.directs = Directs(s)
        self.broadcast = Broadcast(s, self.members, self.history_, self.directs)
        self.overlay = Overlay(
            self.node_id,
            rng,
            target=config.active_target,
            max_active=config.active_max,
            max_passive=config.passive_max,
        )
        self.dialing: set[str] = set()  # peers a Dial is out for
        self._peers: dict[LinkId, wire.Hello] = {}  # every link up, registered or not
        self._next_tick = now

    # -- what the shell reads -----------------------------------------------------------

    @property
    def addrs(self) -> list[str]:
        """Our addresses for presences (both families; the shell sets them
        once it listens).  Whether all are loopback decides whether loopback
        addresses learnt from peers are dialled (:mod:`p2pchat.addrs`)."""
        return self._addrs

    @addrs.setter
    def addrs(self, value: Sequence[str]) -> None:
        self._addrs = list(value)
        self.s.loopback_ok = loopback_only(self._addrs)

    @property
    def name(self) -> str:
        """Our display name (NFC)."""
        return self.s.name

    @property
    def links(self) -> dict[str, LinkId]:
        """Peer id -> the link to it that flooding uses."""
        return self.s.links

    @property
    def closed(self) -> bool:
        """True once :meth:`leave` ran."""
        return self.s.closed

    @property
    def roster(self) -> Roster:
        """The members of the room (us included)."""
        return self.s.roster

    @property
    def seen(self) -> SeenCache:
        """The seen-cache of message ids."""
        return self.s.seen

    def stats_counts(self) -> dict[str, dict[str, int] | int]:
        """The core's counters: ``duplicates_dropped``, ``catchup_in``,
        ``catchup_out`` and the dicts ``frames_refused``, ``links_refused``,
        ``rate_limited`` (by reason), as ``/stats`` shows them."""
        s = self.s
        out: dict[str, dict[str, int] | int] = dict(s.counts)
        out["frames_refused"] = dict(s.frames_refused)
        out["links_refused"] = dict(s.links_refused)
        out["rate_limited"] = self.rate_limited_counts()
        return out

    def link_info(self, link: LinkId) -> LinkUp | None:
        """What the core knows of a registered link, or None."""
        return self.s.up.get(link)

    def wants_links(self) -> bool:
        """True while we have fewer links than the overlay's target, or always
        with a target of 0 (a fixed topology: static peers only)."""
        target = self.config.active_target
        return target == 0 or len(self.s.links) < target

    def rate_limited_counts(self) -> dict[str, int]:
        """``/stats`` ``rate_limited``: messages dropped by each limit."""
        s = self.s
        counts = dict(s.rate_limited)
        if s.roster.refused:  # newcomers not taken: the roster was full
            counts["members_full"] = s.roster.refused
        if s.order.released_by_cap:  # lines shown before their hold's bound
            counts["order_held"] = s.order.released_by_cap
        return counts

    def history(self, n: int) -> list[LineEvent]:
        """The room's last ``n`` stored lines in the order every node agrees
        on, oldest first, as events with ``history=True`` (topic lines as
        :class:`~p2pchat.events.TopicEvent`, file offers as
        :class:`~p2pchat.events.FileOfferEvent`)."""
        s = self.s
        lines = s.store.recent(self.wire_room, min(n, self.config.history_max_lines))
        return [s.message_event(m, self_=m.origin == self.node_id, history=True) for m in lines]

    def topic(self) -> TopicEvent | None:
        """The room's current topic: its stored topic line that sorts last
        by ``(hlc, origin, line)``, with ``history=True`` (``text`` "" if
        that line cleared it), or None if the store holds no topic line."""
        msg = self.s.store.topic(self.wire_room)
        if msg is None:
            return None
        ev = self.s.message_event(msg, self_=msg.origin == self.node_id, history=True)
        return ev if isinstance(ev, TopicEvent) else None

    def offers(self) -> list[FileOfferEvent]:
        """The file offers we know of, oldest first: the room's offer lines
        still in the history window (the newest ``MAX_OFFERS_LISTED``, in the
        room's order, ``history=True``), then the one-member offers to us (or
        ours to one member) of this run (at most ``MAX_OFFERS_LISTED``), by
        time."""
        s = self.s
        room = [
            s.message_event(m, self_=m.origin == self.node_id, history=True)
            for m in s.store.offers(self.wire_room, MAX_OFFERS_LISTED)
        ]
        out = [ev for ev in room if isinstance(ev, FileOfferEvent)]
        return out + sorted(self.directs.offers.values(), key=lambda ev: ev.ts)

    def whois(self, name: str) -> list[KeyInfo]:
        """See :meth:`Membership.whois <p2pchat.core.membership.Membership.whois>`."""
        return self.members.whois(name)

    def _begin(self, now: float, wall: float) -> Shared:
        s = self.s
        s.now, s.wall = now, wall
        return s

    # -- the handshake (docs/protocol.md §4) ------------------------------------------------

    def hello(self, nonce: str) -> wire.Hello:
        """Our ``hello`` for a new link; ``nonce``: 32 hex digits, fresh per link."""
        return wire.Hello(
            version=wire.PROTOCOL_VERSION,
            node=self.node_id,
            name=self.s.name,
            room=self.wire_room,
            port=self.port,
            features=["history", "tree"] if self.broadcast.tree is not None else ["history"],
            nonce=nonce,
            key=self.s.identity.key,
        )

    def check_hello(self, direction: str, hello: wire.Hello, now: float) -> wire.Refuse | None:
        """Refuse a peer's ``hello`` when it is ourselves, names a key that is
        not its node id's, is in another room, or is one link too many (the
        ``max_links`` cap; for an inbound link, the overlay's bound)."""
        s = self.s
        if hello.node == self.node_id:
            return wire.Refuse(code="self", reason="this is a link to myself")
        if not hello.key or not hello.nonce or identity.node_id_of(hello.key) != hello.node:
            return wire.Refuse(
                code="identity", reason="a hello needs a nonce and the key of its node id"
            )
        if hello.room != self.wire_room:
            return wire.Refuse(
                code="room", reason=f"this node is in room {self.wire_room!r}, not {hello.room!r}"
            )
        if len(s.links) >= self.config.max_links and hello.node not in s.links:
            return wire.Refuse(code="busy", reason=f"too many links ({self.config.max_links})")
        if direction == "in" and hello.node not in s.links and not self.overlay.room_for(now):
            # the overlay's bound (core/overlay.py): dial someone else
            return wire.Refuse(code="busy", reason=f"too many links ({self.config.active_max})")
        return None

    def prove(self, hello: wire.Hello) -> wire.Proof:
        """Sign the peer's nonce: we hold the key of our node id (§4)."""
        data = wire.proof_bytes(hello.nonce, self.node_id, hello.node, self.wire_room)
        return wire.Proof(sig=self.s.identity.sign(data))

    def check_proof(self, our_nonce: str, hello: wire.Hello, proof: wire.Proof) -> bool:
        """The peer signed our nonce with the key its hello names."""
        data = wire.proof_bytes(our_nonce, hello.node, self.node_id, self.wire_room)
        return identity.verify(hello.key, proof.sig, data)

    # -- links ---------------------------------------------------------------------------

    def link_up(
        self, link: LinkId, hello: wire.Hello, direction: str, address: str, now: float, wall: float
    ) -> list[Action]:
        """A link's handshake is done (``hello``: the peer's, checked).

        Exactly one link per pair of nodes: of two, the one dialled by the
        lower node id stays (if both were dialled by the same node, the
        newer); the other is retired.  The overlay may drop a link to stay
        within ``active_max``.  The first link makes us join the room."""
        s = self._begin(now, wall)
        if s.closed:
            s.close(link, "node closing")
            return s.take()
        self._peers[link] = hello
        pid = hello.node
        up = LinkUp(link, hello, direction, address, now)
        existing = s.links.get(pid)
        if existing is not None and existing != link:
            lower = min(self.node_id, pid)
            old_dialer = s.up[existing].dialled_by(self.node_id)
            if old_dialer == lower and up.dialled_by(self.node_id) != lower:
                s.out.append(Retire(link))
                return s.take()
            s.out.append(Retire(existing))
            del s.up[existing]
            s.links[pid] = link
            s.up[link] = up
            self.broadcast.link_up(link, hello, existing)
            self.history_.link_up(link, hello, existing)
            self._overlay_link_up(up)
            return s.take()
        if self._overlay_link_up(up):
            return s.take()
        s.links[pid] = link
        s.up[link] = up
        self.broadcast.link_up(link, hello, None)
        self.history_.link_up(link, hello, None)
        s.emit(PeerUp(peer=pid, address=address, name=hello.name))
        if not s.joined:
            s.joined = True
            join = s.signed(wire.Join(dh=s.identity.dh, **s.envelope()))
            self.broadcast.forward(join, None)
            # Our first presence a moment after the join: the join's copies
            # prune our broadcast tree first, so the presence follows the tree
            # instead of crossing every link of the room a second time.
            s.next_presence = s.now + FIRST_PRESENCE_AFTER_S
            s.wake = True
        if pid not in s.roster:
            # A newcomer, or a node from the other side of a split: it learns
            # the room from us (our first presence goes out at the next tick
            # anyway; a presence flooded to the whole room at every link that
            # came up was most of a big room's start in the simulator).
            self.members.hand_roster(link, pid)
        return s.take()

    def _overlay_link_up(self, up: LinkUp) -> bool:
        """Tell the overlay of a link that is up; close the link it says must
        go to stay within ``active_max`` (counted in ``links_refused``:
        ``overlay_full`` for another link dropped for a newcomer, ``busy``
        for the newcomer itself).  True if ``up`` itself was dropped."""
        s = self.s
        pid = up.peer.node
        if up.direction == "out":  # dial this address (and its family) first next time
            self.overlay.answered(pid, hostport_split(up.address)[0])
        victim = self.overlay.link_up(pid, up.direction == "in", s.now)
        if victim is None:
            return False
        code = "busy" if victim == pid else "overlay_full"
        s.links_refused[code] = s.links_refused.get(code, 0) + 1
        dropped = up.link if victim == pid else s.links.get(victim)
        if dropped is not None:  # closed now: a peer that never reads the end cannot linger
            s.close(dropped, "overlay full")
            if victim != pid:  # gone from /peers and the tree at once, not when its end is read
                self._forget_link(dropped, "overlay full")
        return victim == pid

    def receive(self, link: LinkId, msg: wire.Message, now: float, wall: float) -> list[Action]:
        """A decoded frame from a link that is up."""
        s = self._begin(now, wall)
        if isinstance(msg, wire.IHave | wire.Graft | wire.Prune):
            peer = self._peers.get(link)
            if peer is not None and link in s.up:  # not from a link dropped or replaced
                self.broadcast.receive_tree(link, peer, msg)
        elif isinstance(msg, wire.Sync | wire.Lines | wire.Ack):
            self.history_.receive(link, msg)
        elif isinstance(
            msg, wire.Chat | wire.Join | wire.Leave | wire.Nick | wire.Presence | wire.Direct
        ):
            self.broadcast.receive(link, msg)
        return s.take()

    def link_down(self, link: LinkId, reason: str, now: float, wall: float) -> list[Action]:
        """A link ended (``reason``, as the user sees it)."""
        s = self._begin(now, wall)
        self._peers.pop(link, None)
        up = s.up.get(link)
        ours = link in s.closing
        s.closing.discard(link)
        self._forget_link(link, reason)
        if up is not None and not ours:
            # Not closed by us (a tie-break or the overlay forget theirs at
            # once): the peer may have crashed; tell the room (§9).
            self.members.link_lost(up.peer.node)
        return s.take()

    def _forget_link(self, link: LinkId, reason: str) -> None:
        """Drop a link's tree, catch-up and penalty state; if it is the link
        to its peer, unregister it (the overlay, ``peer_down``)."""
        s = self.s
        self.broadcast.link_down(link)
        self.history_.link_down(link)
        s.bad_sigs.pop(link, None)
        self.members.handed.discard(link)
        up = s.up.pop(link, None)
        if up is not None and s.links.get(up.peer.node) == link:
            pid = up.peer.node
            del s.links[pid]
            self.overlay.link_down(pid, s.now)
            self._fill_overlay()
            s.emit(
                PeerDown(
                    peer=pid,
                    address=up.address,
                    reason="this node left" if s.closed else reason,
                    name=s.roster.display(pid, up.peer.name),
                )
            )

    # -- peers to link to (the overlay) --------------------------------------------------------

    def found(self, node: str, addrs: Sequence[str], port: int, now: float) -> list[Action]:
        """A peer and where it listens (mDNS, ``--peer``, a presence): into the
        overlay's passive view; returns the dials the overlay wants now."""
        s = self.s
        s.now = now
        if not s.closed and node != self.node_id:
            where = screen(addrs, s.loopback_ok, s.addrs_refused)  # p2pchat.addrs
            if where:
                self.overlay.learn(node, where, port, now)
                self._fill_overlay()
        return s.take()

    def lost(self, node: str) -> list[Action]:
        """mDNS says the peer is gone: it leaves the passive view."""
        self.overlay.forget(node)
        return self.s.take()

    def dial_done(self, node: str, now: float, linked: bool, code: str = "") -> list[Action]:
        """A :class:`~p2pchat.core.actions.Dial` ended: ``linked`` if a link
        came up (and has gone down since), else ``code``: the peer's refusal
        code, or empty."""
        self.dialing.discard(node)
        if not linked:
            if code == "self":
                self.overlay.forget(node)
            else:
                self.overlay.dial_failed(node, now)
        return self.s.take()

    def _fill_overlay(self) -> None:
        """Dial the peers the overlay asks for, each once.  The latest
        presences' addresses join the passive view first."""
        s = self.s
        if s.closed:
            return
        addrs = self.members.addrs
        for n, origin in enumerate(reversed(addrs)):
            if n >= MAX_PRESENCE_ADDRS:
                break
            if origin not in self.overlay.passive:
                where, port = addrs[origin]
                self.overlay.learn(origin, where, port, s.now)
        for pid in self.overlay.to_dial(s.now, self.dialing, s.roster):
            known = self.overlay.address(pid)
            if known is None or len(self.dialing) >= self.config.max_known_peers:
                continue
            self.dialing.add(pid)
            s.out.append(Dial(pid, tuple(known[0]), known[1]))

    def _relink(self, node: str) -> None:
        """A member went silent: if its presence told us where it listens,
        keep it in the overlay's passive view: it is no member now, so the
        overlay dials it (merge), and two parts of the room whose only
        joining node died find each other again."""
        known = self.members.addrs.pop(node, None)
        if known is None or node in self.s.links:
            return
        self.overlay.learn(node, known[0], known[1], self.s.now)
        self._fill_overlay()

    # -- the user ----------------------------------------------------------------------

    def new_line(
        self,
        text: str,
        action: bool,
        now: float,
        wall: float,
        topic: bool = False,
        offer: Offer | None = None,
    ) -> wire.Chat:
        """Our next chat line, numbered and signed, not yet stored or sent
        (the shell stores it durably, then calls :meth:`line_stored`).
        ``topic``: a room topic line instead (``text`` stripped; "" clears
        the topic; ``action`` must be False).  ``offer``: a file offered to
        the room instead (``text`` must be "", no action, no topic).

        Raises:
            UsageError, LineTooLong: see :func:`check_text` (for a topic,
                :func:`check_topic`; or ``action`` with ``topic``); an offer
                with text, action or topic, or one receivers would refuse
                (:func:`p2pchat.core.offers.check_own`); or we left.
        """
        offered = None
        if offer is not None:
            if text or action or topic:
                raise UsageError("a file offer line has no text and is no action or topic")
            offered = offers.check_own(offer)
        elif topic:
            if action:
                raise UsageError("a topic cannot be an action line")
            text = check_topic(text)
        else:
            check_text(text)
        s = self._begin(now, wall)
        if s.closed:
            raise UsageError("the node is closed")
        return s.signed(
            wire.Chat(
                text=text,
                action=action,
                line=s.store.next_line(self.wire_room),
                hlc=s.clock.now(),
                topic=topic,
                offer=offered,
                **s.envelope(),
            )
        )

    def own_event(self, msg: wire.Chat) -> LineEvent:
        """The event of our own line ``msg``."""
        return self.s.message_event(msg, self_=True)

    def line_stored(self, msg: wire.Chat, now: float, wall: float) -> list[Action]:
        """Our line from :meth:`new_line` is in the store: flood it."""
        s = self._begin(now, wall)
        self.history_.counted_insert()
        self.broadcast.forward(msg, None)
        return s.take()

    def send_line(
        self,
        text: str,
        action: bool,
        now: float,
        wall: float,
        topic: bool = False,
        offer: Offer | None = None,
    ) -> list[Action]:
        """:meth:`new_line`, the store's ``add_own``, :meth:`line_stored` in one."""
        msg = self.new_line(text, action, now, wall, topic, offer)
        self.s.store.add_own(msg)
        return self.line_stored(msg, now, wall)

    def send_direct(
        self, to: str, text: str, action: bool, now: float, wall: float
    ) -> tuple[MessageEvent, list[Action]]:
        """A direct message to the member ``to`` stands for
        (:meth:`Directs.resolve <p2pchat.core.direct.Directs.resolve>`);
        returns our event for it (also the last action's) and the actions.

        Raises:
            UsageError, LineTooLong: see :meth:`Directs.seal
                <p2pchat.core.direct.Directs.seal>`; or we left.
        """
        s = self._begin(now, wall)
        if s.closed:
            raise UsageError("the node is closed")
        msg, ev = self.directs.seal(to, text, action)
        self.broadcast.forward(msg, None)
        s.emit(ev)
        return ev, s.take()

    def send_direct_offer(
        self, to: str, offer: Offer, now: float, wall: float
    ) -> tuple[FileOfferEvent, list[Action]]:
        """A file offered to the one member ``to`` stands for (a node id, or
        as :meth:`send_direct`), sealed to its key in a ``direct`` message
        (:mod:`p2pchat.core.offers`); returns our event for it (also the
        last action's) and the actions.

        Raises:
            UsageError: see :meth:`Directs.seal_offer
                <p2pchat.core.direct.Directs.seal_offer>`; or we left.
        """
        s = self._begin(now, wall)
        if s.closed:
            raise UsageError("the node is closed")
        msg, ev = self.directs.seal_offer(to, offer)
        self.broadcast.forward(msg, None)
        s.emit(ev)
        return ev, s.take()

    def set_name(self, name: str, now: float, wall: float) -> list[Action]:
        """Take a new display name and tell the room (a ``nick``).

        Raises:
            UsageError: the name is invalid, or we left.
        """
        name = check_name(name)
        s = self._begin(now, wall)
        if s.closed:
            raise UsageError("the node is closed")
        if name == s.name:
            return []
        old, was = s.name, s.roster.display(self.node_id)
        nick = self.members.rename(name)
        self.broadcast.forward(nick, None)
        shown = s.roster.display(self.node_id)
        s.emit(NickEvent(origin=self.node_id, old=old, new=name, display=shown, old_display=was))
        s.presence_soon()
        return s.take()

    def set_away(self, text: str, now: float, wall: float) -> list[Action]:
        """Mark us away with ``text`` ("" or blanks: back), tell the room at
        once (a presence, ``docs/protocol.md`` §9) and emit an
        :class:`~p2pchat.events.AwayEvent` with ``self=True`` when it changed.
        ``text`` is stripped of blanks at both ends.

        Raises:
            UsageError: more than ``wire.MAX_AWAY_CHARS`` code points, a
                control character or line break, not valid Unicode text, or
                we left.
        """
        text = check_away(text)
        s = self._begin(now, wall)
        if s.closed:
            raise UsageError("the node is closed")
        if not self.members.set_away(text):
            return []
        s.emit(
            AwayEvent(
                origin=self.node_id,
                name=s.name,
                text=text,
                display=s.roster.display(self.node_id),
                self=True,
            )
        )
        s.presence_soon()
        return s.take()

    def leave(self, now: float, wall: float) -> list[Action]:
        """We leave: a ``leave`` to every link (if we joined); nothing more
        is sent or accepted afterwards.  Idempotent."""
        s = self._begin(now, wall)
        if s.closed:
            return []
        s.closed = True
        if s.joined and s.links:
            leave = s.signed(wire.Leave(reason="quit", **s.envelope()))
            s.seen.add(leave.id, now)
            frame = wire.encode_frame(leave)
            for link in s.links.values():
                s.send(link, frame)
        return s.take()

    # -- time ------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`tick` wants to run next (``now`` s)."""
        s = self.s
        at = self._next_tick
        if s.joined and not s.closed:
            at = min(at, s.next_presence)
        for other in (
            self.broadcast.next_deadline(),
            s.order.next_deadline(),
            self.history_.next_gap(),
        ):
            if other is not None and other < at:
                at = other
        return at

    def tick(self, now: float, wall: float) -> list[Action]:
        """Run what is due: tree announcements and grafts, held lines, gap
        fetches, and every ``TICK_S`` the housekeeping (seen-cache expiry,
        the overlay, catch-up timers, member timeouts), and our presence."""
        s = self._begin(now, wall)
        self.broadcast.timers()
        show_at = s.order.next_deadline()
        if show_at is not None and now >= show_at:
            s.show(s.order.tick(now))
        gap_at = self.history_.next_gap()
        if gap_at is not None and now >= gap_at:
            self.history_.gap_timers()  # a held line's gap: fetch it now
        if now >= self._next_tick:
            self._next_tick = now + TICK_S
            s.seen.expire(now)
            self._fill_overlay()
            self.history_.timers()
            for node in self.members.expire():
                self._relink(node)
        if s.joined and not s.closed and now >= s.next_presence:
            presence = self.members.presence(self.port, self.addrs)
            self.broadcast.forward(presence, None)
        return s.take()
