"""The state the parts of the protocol core share, and their common helpers.

:class:`Shared` is built by :class:`~p2pchat.core.protocol.Protocol` and
handed to each part (broadcast, anti-entropy, membership, direct
messages): the node's identity and settings, its store, the tables every
part reads (links up, roster, seen-cache, per-origin tables), the counters
of ``/stats``, and the outbox of actions the current entry point returns.

Pure: no sockets, threads or clock.  ``now`` (seconds of a monotonic clock)
and ``wall`` (seconds since the epoch) are the times of the entry point
being run, set by the protocol before it calls into a part.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from p2pchat import flood, history, wire
from p2pchat.core import offers
from p2pchat.core.actions import Action, Close, Emit, LinkId, Send
from p2pchat.core.admission import SIGNATURE_REASONS, Admission, BoundedMap
from p2pchat.core.config import NodeConfig
from p2pchat.core.history_store import HistoryStore
from p2pchat.core.order import OriginOrder, Release
from p2pchat.events import Event, FileOfferEvent, LineEvent, MessageEvent, TopicEvent
from p2pchat.identity import Identity
from p2pchat.roster import Roster

log = logging.getLogger("p2pchat.node")

MAX_ORIGINS = 4096
"""Most origins each per-origin table keeps (keys, highest seq, rate
buckets, direct-message keys, presence addresses, leaves, equivocators); the
least recently heard go first."""

BAD_SIGNATURES_PER_LINK = 10
"""Messages failing their signature after which the link that brought them
is closed (each one is dropped and counted anyway)."""

ORDER_HOLD_S = 1.0
"""Longest a live line waits, unshown, for its origin's previous line (see
:mod:`p2pchat.core.order`); the gap is fetched before then (``GAP_GRACE_S``)."""

IN_PLACE_FRESH_S = 10.0
"""A catch-up line shown in its place (before a held live line of its origin)
is still marked as an earlier line when its origin said it more than this
long ago (by the line's ``ts``): a node that joins while someone speaks gets
that origin's older lines this way, and they are earlier lines."""


@dataclass(slots=True)
class LinkUp:
    """A link whose handshake is done, as the core knows it.

    Attributes:
        link: the shell's id of the link.
        peer: the peer's ``hello`` (node id, name, features, key).
        direction: ``"out"`` if this node dialled it, else ``"in"``.
        address: the peer's address as text, for logs and ``/peers``.
        up_at: when it came up (monotonic s).
    """

    link: LinkId
    peer: wire.Hello
    direction: str
    address: str
    up_at: float

    def dialled_by(self, self_id: str) -> str:
        """The node id of the side that dialled (for the tie-break), ``self_id`` being ours."""
        return self_id if self.direction == "out" else self.peer.node


class Shared:
    """What every part of the core reads and writes (see the module docstring).

    Args:
        config: the node's settings.
        identity: our key pair.
        store: the history store (read and written synchronously; the SQLite
            one writes received lines on its own thread).
        rng: the source of message ids and random choices (a seeded
            :class:`random.Random` in the simulator, ``SystemRandom`` in the
            product: ids must not be guessable).
        wire_room: the room as the wire names it (a private room's tag).
        now, wall: the times at creation.
        verify: the signature check (``identity.verify``; the simulator may
            pass a cached one).
    """

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        store: HistoryStore,
        rng: random.Random,
        wire_room: str,
        now: float,
        wall: float,
        verify: Callable[[str, str, bytes], bool] | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.store = store
        self.rng = rng
        self.node_id = identity.node_id
        self.wire_room = wire_room
        self.name = config.name
        self.now = now
        self.wall = wall
        self.out: list[Action] = []
        self.admission = Admission(self.node_id, wire_room, MAX_ORIGINS, verify=verify)
        self.seen = flood.SeenCache(config.seen_max_entries, config.seen_max_age_s)
        self.roster = Roster(self.node_id, self.name, config.member_timeout_s, config.max_members)
        self.clock = history.HybridClock(store.last_hlc, wall_s=lambda: self.wall)
        self.order: OriginOrder[wire.Chat] = OriginOrder(hold_s=ORDER_HOLD_S)
        self.links: dict[str, LinkId] = {}  # peer id -> the link flooding uses
        self.up: dict[LinkId, LinkUp] = {}  # every link of self.links, by link
        self.counts: dict[str, int] = dict.fromkeys(
            ("duplicates_dropped", "catchup_in", "catchup_out"), 0
        )
        self.frames_refused = self.admission.refused  # one table of reasons (core.admission)
        self.links_refused: dict[str, int] = {}
        # Learnt addresses not dialled, by reason (p2pchat.addrs.refusal).
        self.addrs_refused: dict[str, int] = {}
        self.loopback_ok = False  # this node runs on loopback only (p2pchat.addrs.loopback_only)
        self.rate_limited: dict[str, int] = {}
        self.bad_sigs: dict[LinkId, int] = {}
        self.equivocators: BoundedMap[str, str] = BoundedMap(MAX_ORIGINS)  # origin -> key
        self.closed = False
        self.joined = False
        self.next_presence = 0.0
        self.closing: set[LinkId] = set()  # links we closed, until the shell reports their end
        self.last_presence = 0.0
        self.store_version = 0  # bumped on every line stored
        # Live lines the order buffer holds, not stored until they are shown
        # (a node that crashes meanwhile fetches them again by catch-up and
        # shows them then, rather than finding them stored and never shown):
        # id -> line, and (origin, line) -> id.
        self.unshown: dict[str, wire.Chat] = {}
        self.unshown_at: dict[tuple[str, int], str] = {}
        self.store_released: Callable[[wire.Chat], object] = lambda msg: None
        # Set when a timer may have moved earlier than the shell's planned
        # tick (a held line, a gap, announcements, a presence soon): the
        # shell then asks next_deadline() again and clears it.
        self.wake = False
        self._floor_cache = (float("-inf"), 0)  # (now, floor hlc)

    # -- the outbox ---------------------------------------------------------------

    def send(self, link: LinkId, frame: bytes) -> None:
        """Queue ``frame`` (encoded, header included) for ``link``."""
        self.out.append(Send(link, frame))

    def send_msg(self, link: LinkId, msg: wire.Message) -> None:
        """Queue ``msg``, encoded, for ``link``."""
        self.out.append(Send(link, wire.encode_frame(msg)))

    def close(self, link: LinkId, reason: str) -> None:
        """Ask the shell to close ``link`` at once."""
        if len(self.closing) >= 4096:  # links closed before they were up are never reported
            self.closing.clear()
        self.closing.add(link)
        self.out.append(Close(link, reason))

    def emit(self, event: Event) -> None:
        """Pass ``event`` to the front end, in order with the rest."""
        self.out.append(Emit(event))

    def take(self) -> list[Action]:
        """The actions queued since the last call, oldest first."""
        out, self.out = self.out, []
        return out

    # -- our own messages -----------------------------------------------------------

    def new_id(self) -> str:
        """A fresh message id: 32 hex digits from the core's rng."""
        return self.rng.getrandbits(128).to_bytes(16, "big").hex()

    def envelope(self) -> dict[str, Any]:
        """The fields every message of ours carries (``docs/protocol.md`` §5)."""
        return {
            "id": self.new_id(),
            "origin": self.node_id,
            "seq": self.store.next_seq(),
            "name": self.name,
            "room": self.wire_room,
            "ts": self.wall,
            "hops": self.config.hop_limit,
        }

    def signed(self, msg: wire.F) -> wire.F:
        """Our message with our public key and signature (``docs/protocol.md`` §7.3)."""
        msg = msgspec.structs.replace(msg, key=self.identity.key)
        return msgspec.structs.replace(msg, sig=self.identity.sign(wire.signing_bytes(msg)))

    def presence_soon(self) -> None:
        """Schedule a presence at once, but not twice within 0.5 s."""
        self.next_presence = min(self.next_presence, max(self.now, self.last_presence + 0.5))
        self.wake = True

    # -- admission (docs/protocol.md §6.1) ------------------------------------------------

    def admit(self, link: LinkId, msg: wire.FloodMessage) -> str | None:
        """The checks every flooded message and every catch-up line passes
        before anything about it is kept (:class:`~p2pchat.core.admission.
        Admission`, ``docs/protocol.md`` §6.1); a signature failure also
        counts against ``link`` (``BAD_SIGNATURES_PER_LINK``, then a
        :class:`~p2pchat.core.actions.Close`).

        Returns:
            None if the message passed, else the reason it was refused
            (counted in ``/stats`` under that reason), or ``"own"``.
        """
        reason = self.admission.check(msg, self.wall, self.live_floor, self.last_seq)
        if reason == "own":
            self.counts["duplicates_dropped"] += 1
        elif reason in SIGNATURE_REASONS:
            bad = self.bad_sigs.get(link, 0) + 1
            self.bad_sigs[link] = bad
            if bad == 1 or bad % 100 == 0:
                log.warning("dropped %s %s: %s", wire.kind(msg), msg.id, reason)
            if bad >= BAD_SIGNATURES_PER_LINK:
                self.close(link, f"{bad} messages failed their signature")
        return reason

    def last_seq(self, origin: str) -> int:
        """The ``seq`` of the latest message the roster heard from ``origin`` (-1 if none)."""
        member = self.roster.get(origin)
        return member.name_seq if member is not None else -1

    def live_floor(self) -> int:
        """The lowest clock a live line may carry not to be a replay (µs):
        the window's floor, cached for 1 s (it scans), but never above the
        seen-cache's age: lines younger than that are judged by the
        seen-cache and the store, so a flood of valid lines that fills the
        window cannot make honest lines still in flight look like replays."""
        if self.now - self._floor_cache[0] > 1.0:
            recent = int((self.wall - self.config.seen_max_age_s) * 1e6)
            floor = self.store.floor(self.wire_room, self.wall)
            self._floor_cache = (self.now, min(floor, recent))
        return self._floor_cache[1]

    def count_limited(self, kind: str, who: str) -> None:
        """Count a message dropped by a rate limit of ``kind`` (log the first
        and every 1000th)."""
        n = self.rate_limited.get(kind, 0) + 1
        self.rate_limited[kind] = n
        if n == 1 or n % 1000 == 0:
            log.warning("rate limit (%s) hit by %s; %d dropped so far", kind, who, n)

    # -- the screen -------------------------------------------------------------------

    def hold_unstored(self, msg: wire.Chat) -> None:
        """``msg`` is held by the order buffer: it is stored when shown."""
        self.unshown[msg.id] = msg
        self.unshown_at[(msg.origin, msg.line)] = msg.id

    def store_unshown(self, msg_id: str) -> None:
        """Store a held line now (it is shown, or another line claims its number)."""
        msg = self.unshown.pop(msg_id, None)
        if msg is not None:
            del self.unshown_at[(msg.origin, msg.line)]
            self.store_released(msg)

    def line_id(self, origin: str, line: int) -> str | None:
        """The id of the line ``origin`` numbered ``line`` that we hold,
        stored or held unshown (a held one is stored now: the caller is about
        to compare it with another line under that number)."""
        held = self.unshown_at.get((origin, line))
        if held is not None:
            self.store_unshown(held)
        return self.store.line_id(self.wire_room, origin, line)

    def has_line(self, origin: str, line: int) -> bool:
        """True if we hold line ``line`` of ``origin``, stored or held unshown."""
        return (origin, line) in self.unshown_at or self.store.has_line(
            self.wire_room, origin, line
        )

    def message_event(self, msg: wire.Chat, self_: bool, history: bool = False) -> LineEvent:
        """The event of a chat line, as the front end shows it: a
        :class:`~p2pchat.events.TopicEvent` for a topic line, a
        :class:`~p2pchat.events.FileOfferEvent` for a room file offer."""
        if msg.offer is not None:
            return FileOfferEvent(
                id=msg.id,
                room=self.config.room,
                origin=msg.origin,
                name=msg.name,
                offer=offers.unchecked(msg.offer),
                ts=msg.ts,
                self=self_,
                seq=msg.seq,
                display=self.roster.display(msg.origin, msg.name),
                history=history,
                hlc=msg.hlc,
                line=msg.line,
            )
        if msg.topic:
            return TopicEvent(
                id=msg.id,
                room=self.config.room,
                origin=msg.origin,
                name=msg.name,
                text=msg.text,
                ts=msg.ts,
                self=self_,
                seq=msg.seq,
                display=self.roster.display(msg.origin, msg.name),
                history=history,
                hlc=msg.hlc,
                line=msg.line,
            )
        return MessageEvent(
            id=msg.id,
            origin=msg.origin,
            name=msg.name,
            text=msg.text,
            ts=msg.ts,
            self=self_,
            seq=msg.seq,
            action=msg.action,
            display=self.roster.display(msg.origin, msg.name),
            history=history,
            hlc=msg.hlc,
            line=msg.line,
        )

    def show(self, shown: list[Release[wire.Chat]]) -> None:
        """Report the lines :attr:`order` released, in its order; one shown
        out of its place (or by catch-up with nothing waiting for it, or by
        catch-up and said more than ``IN_PLACE_FRESH_S`` ago) is an earlier
        line (``history=True``)."""
        old = self.wall - IN_PLACE_FRESH_S
        for r in shown:
            self.store_unshown(r.item.id)
        if len(self.order):
            self.wake = True  # a line waits for its predecessor: the hold's deadline
        for r in shown:
            earlier = r.earlier or (not r.live and r.item.ts < old)
            self.emit(self.message_event(r.item, self_=False, history=earlier))
