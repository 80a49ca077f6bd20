"""Events a node reports to its front end.

A :class:`~p2pchat.node.Node` calls its ``on_event`` callback with one of these
for everything a user should learn about.  Each event is a frozen dataclass
whose :meth:`as_dict` gives the ``--json`` form (``{"event": <kind>, ...}``);
see README.md, "Scripted use", for the keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from p2pchat.files.manifest import Offer


@dataclass(frozen=True)
class Event:
    """Base of every event.  ``kind`` is the ``"event"`` value in JSON."""

    kind: ClassVar[str] = "event"

    def as_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict, ``{"event": kind, ...fields}``."""
        return {"event": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Ready(Event):
    """The node listens and is linking up.  ``port`` is its TCP port."""

    kind: ClassVar[str] = "ready"
    node: str
    name: str
    room: str
    port: int


@dataclass(frozen=True)
class MessageEvent(Event):
    """A chat line, delivered once.  ``self`` is True for our own lines;
    ``display`` is the sender as a person should see it (``alice#3f2a`` when
    two members share a name); ``action`` is True for ``/me`` lines.
    ``history`` is True for a line that arrived by catch-up (anti-entropy:
    it was sent while this node was away or split off) and for the lines
    :meth:`~p2pchat.node.Node.history` returns; ``hlc`` is its hybrid logical
    clock (microseconds), which with ``origin`` and ``line`` orders a room's
    lines the same way on every node; ``line`` is its number among its
    origin's lines in the room (0 if the sender did not number it).
    ``private`` is True for a direct message (``/msg``), encrypted end to
    end: ``to`` is the recipient's node id and ``to_display`` how to show it;
    a direct message is never kept in the history."""

    kind: ClassVar[str] = "message"
    id: str
    origin: str
    name: str
    text: str
    ts: float
    self: bool
    seq: int
    action: bool = False
    display: str = ""
    history: bool = False
    hlc: int = 0
    line: int = 0
    private: bool = False
    to: str = ""
    to_display: str = ""


@dataclass(frozen=True)
class TopicEvent(Event):
    """A room topic line (``/topic``), delivered once like a chat line (never
    also as a :class:`MessageEvent`): ``text`` is the topic from this line
    on, "" when it was cleared.  ``room`` is the room's name as this node
    knows it; ``origin``, ``name``, ``display``, ``ts``, ``self``, ``seq``,
    ``history``, ``hlc`` and ``line`` are as in :class:`MessageEvent`.  A
    topic line from catch-up may be older than the current topic: the
    current one is the topic line that sorts last by ``(hlc, origin,
    line)`` (:meth:`order`).  ``text`` and ``name`` are a peer's: clean
    them before printing."""

    kind: ClassVar[str] = "topic"
    id: str
    room: str
    origin: str
    name: str
    text: str
    ts: float
    self: bool
    seq: int
    display: str = ""
    history: bool = False
    hlc: int = 0
    line: int = 0

    def order(self) -> tuple[int, str, int]:
        """Where the line sorts in the room: ``(hlc, origin, line)``."""
        return (self.hlc, self.origin, self.line)


@dataclass(frozen=True)
class FileOfferEvent(Event):
    """A file offered (``/send``), delivered once like a chat line (never
    also as a :class:`MessageEvent`).

    A room offer is a numbered line kept in the history (``history`` as in
    :class:`MessageEvent`: caught up, or from :meth:`~p2pchat.node.Node.offers`);
    a one-member offer came sealed to us alone (``to_me``) or is ours to
    one member (``self`` and ``to``); it is never kept in the history.

    Attributes:
        id: the message id of the offer line or direct message.
        room: the room's name as this node knows it.
        origin, name, display, ts, self, seq, history, hlc, line: as in
            :class:`MessageEvent` (``hlc`` and ``line`` 0 for a one-member offer).
        offer: what is offered: file id, base name, size, chunk size, root
            (validated by :func:`~p2pchat.files.manifest.make_offer`).  The
            name is a peer's: clean it before printing, make it safe
            (:func:`~p2pchat.files.safename.safe_filename`) before saving.
        to_me: a one-member offer sealed to us.
        to, to_display: the one member our own one-member offer went to
            ("" for a room offer).
    """

    kind: ClassVar[str] = "file_offer"
    id: str
    room: str
    origin: str
    name: str
    offer: Offer
    ts: float
    self: bool
    seq: int
    display: str = ""
    to_me: bool = False
    to: str = ""
    to_display: str = ""
    history: bool = False
    hlc: int = 0
    line: int = 0

    @property
    def text(self) -> str:
        """The line's text: always "" (a front end words the offer itself)."""
        return ""

    @property
    def private(self) -> bool:
        """True for a one-member offer (to us, or ours to one member)."""
        return self.to_me or bool(self.to)

    @property
    def file_hex(self) -> str:
        """The file id, 64 lowercase hex digits."""
        return self.offer.file_id.hex()

    def order(self) -> tuple[int, str, int]:
        """Where the line sorts in the room: ``(hlc, origin, line)``."""
        return (self.hlc, self.origin, self.line)

    def as_dict(self) -> dict[str, Any]:
        """The ``file_offer`` JSON object (README, "Scripted use"): ``file``
        (hex id), ``from`` (the sender as shown), ``origin``, ``name`` (the
        offered base name), ``size``, ``chunk_size``, ``root`` (hex),
        ``private``, ``self``, ``history``, ``time`` (``ts``), ``to`` (the
        one member ours went to, or ""), ``id``, ``hlc``, ``line``.  The
        command line adds ``number``."""
        return {
            "event": self.kind,
            "file": self.file_hex,
            "from": self.display or self.name,
            "origin": self.origin,
            "name": self.offer.name,
            "size": self.offer.size,
            "chunk_size": self.offer.chunk_size,
            "root": self.offer.root.hex(),
            "private": self.private,
            "self": self.self,
            "history": self.history,
            "time": self.ts,
            "to": self.to,
            "id": self.id,
            "hlc": self.hlc,
            "line": self.line,
        }


@dataclass(frozen=True)
class FileProgressEvent(Event):
    """A download moved on (``/get``): at most 4 a second per file.

    Attributes:
        file: the file id, 64 hex digits.
        name: the offered name (a peer's: clean it before printing).
        done: bytes verified and written so far.
        size: the file's size in bytes.
        speed: recent speed, bytes per second.
        holders: holders it is fetching from now.
        eta: seconds left at that speed, or None if unknown.
    """

    kind: ClassVar[str] = "file_progress"
    file: str
    name: str
    done: int
    size: int
    speed: int
    holders: int
    eta: float | None


@dataclass(frozen=True)
class FileDoneEvent(Event):
    """A download is complete: every chunk checked, the whole file's SHA-256
    computed, renamed to ``path`` (in the download directory, a safe name
    that overwrote nothing).

    Attributes:
        file: the file id, 64 hex digits.
        name: the offered name.
        path: where the file now lies.
        size: bytes.
        sha256: the whole file's SHA-256, 64 lowercase hex digits.
    """

    kind: ClassVar[str] = "file_done"
    file: str
    name: str
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FileFailedEvent(Event):
    """A download stopped: ``reason`` says what failed, what was kept and
    how to resume (a full disk, say).

    Attributes:
        file: the file id, 64 hex digits.
        name: the offered name.
        reason: a sentence for the user.
    """

    kind: ClassVar[str] = "file_failed"
    file: str
    name: str
    reason: str


@dataclass(frozen=True)
class KeyInfo:
    """One answer of ``/whois``: a member called ``name`` and its key.

    Attributes:
        node: its node id (the first 16 hex digits of ``fingerprint``).
        display: how it is shown (``name#abcd`` when the name is shared).
        fingerprint: SHA-256 of its Ed25519 public key, 64 hex digits
            ("" if no signed message of it has arrived yet).
        first: its key is the first this node saw with this name.
        self: it is this node.
        equivocated: it signed two different lines under one number (it
            lied to part of the room; ``docs/security.md``).
    """

    node: str
    name: str
    display: str
    fingerprint: str
    first: bool
    self: bool
    equivocated: bool = False


@dataclass(frozen=True)
class JoinEvent(Event):
    """A member appeared in the room.  ``via`` is ``"join"`` when it just
    joined, ``"presence"`` when it was already there and we just learned of it."""

    kind: ClassVar[str] = "join"
    origin: str
    name: str
    via: str = "join"
    display: str = ""


@dataclass(frozen=True)
class LeaveEvent(Event):
    """A member left: ``reason`` is ``"quit"`` (it said goodbye) or
    ``"timeout"`` (it went silent for longer than the member timeout)."""

    kind: ClassVar[str] = "leave"
    origin: str
    name: str
    reason: str
    display: str = ""


@dataclass(frozen=True)
class NickEvent(Event):
    """A member changed its display name from ``old`` to ``new``.
    ``display`` is how to show it now and ``old_display`` how it was shown
    (``bob#b63b`` when another member's name is the same or looks alike)."""

    kind: ClassVar[str] = "nick"
    origin: str
    old: str
    new: str
    display: str = ""
    old_display: str = ""


@dataclass(frozen=True)
class AwayEvent(Event):
    """A member's away text changed (``/away``): ``text`` is the new text,
    "" when it is back.  ``self`` is True for our own; ``display`` is how to
    show the member (as in :class:`JoinEvent`).  ``text`` is a peer's text:
    clean it before printing."""

    kind: ClassVar[str] = "away"
    origin: str
    name: str
    text: str
    display: str = ""
    self: bool = False


@dataclass(frozen=True)
class PeerUp(Event):
    """A direct TCP link to ``peer`` (a node id) came up; ``address`` is
    ``host:port`` of the remote end; ``name`` its display name."""

    kind: ClassVar[str] = "peer_up"
    peer: str
    address: str
    name: str = ""


@dataclass(frozen=True)
class PeerDown(Event):
    """The direct link to ``peer`` went down; ``reason`` says why."""

    kind: ClassVar[str] = "peer_down"
    peer: str
    address: str
    reason: str = ""
    name: str = ""


@dataclass(frozen=True)
class Notice(Event):
    """Something the user should read that is not chat: a peer that refused
    us (another protocol version, say), or the default port being taken.
    ``level`` is ``"info"``, ``"warning"`` or ``"error"``."""

    kind: ClassVar[str] = "notice"
    text: str
    level: str = "info"


@dataclass(frozen=True)
class MemberInfo:
    """One row of ``/who``: a member of the room.

    ``linked`` is True when we have a direct link to it; ``self`` marks us;
    ``away`` is its away text ("" when not away; a peer's text: clean it)."""

    node: str
    name: str
    display: str
    linked: bool
    self: bool
    away: str = ""


@dataclass(frozen=True)
class LinkInfo:
    """One row of ``/peers``: a direct link that is up."""

    peer: str
    name: str
    address: str
    direction: str  # "in" (the peer dialed us) or "out" (we dialed it)
    uptime_s: float
    frames_in: int = 0
    frames_out: int = 0


@dataclass(frozen=True)
class Snapshot:
    """State for ``/who`` and ``/peers`` at one moment."""

    members: list[MemberInfo] = field(default_factory=list)
    links: list[LinkInfo] = field(default_factory=list)


@dataclass(frozen=True)
class Stats(Event):
    """Counters of one node since it started (``/stats``).

    Attributes:
        uptime_s: seconds since start.
        frames_in, frames_out, bytes_in, bytes_out: over all links, closed
            ones included (keepalives and handshakes counted).
        duplicates_dropped: flooded messages dropped as already seen.
        frames_refused: bad frames by reason code (``oversized``,
            ``invalid_utf8``, ``malformed``, ``invalid_fields``,
            ``before_handshake``, ``unexpected_handshake``, ``too_slow``,
            ``wrong_room``, and the message reasons of
            :data:`p2pchat.core.admission.REASONS`: ``bad_signature``,
            ``bad_file_name``, ...); the frame reasons also ended their link.
        links_refused: links refused or dropped by reason code (``version``,
            ``room``, ``self``, ``busy``, ``handshake_busy``,
            ``handshake_timeout``, ``keepalive_timeout``, ``protocol_error``,
            ``queue_full``).
        rate_limited: flooded messages dropped by a token bucket: ``link``
            (per link) or ``origin`` (per origin node); also ``members_full``
            (newcomers not added to a full roster), ``direct_offers_full``
            (one-member file offers forgotten, oldest first, past the 256 kept
            for ``/files``) and ``order_held`` (lines
            shown before their predecessor came and before the 1 s hold ran
            out, because the held lines reached a cap); and remembered peers
            (``p2pchat/peerbook.py``) dropped by a bound: ``remembered_full``,
            ``remembered_expired``, ``remembered_unreadable`` (the file
            ignored), ``remembered_bad_entry``, ``remembered_unwritable``.
        queue_drops: links dropped because their send queue was full.
        links: links up now; members: members in the room, us included;
        seen_cache: ids in the seen-cache.
        stored_lines: lines of the room in the store (the history window).
        catchup_in, catchup_out: lines received and sent by catch-up
            (anti-entropy), new ones only for ``catchup_in``.
        store_stalls: times the store's writer thread was so far behind (a
            disk stalled for seconds) that handing it a batch gave up after
            1 s (the batch waits for the next hand-over; nothing is lost).
        addrs_refused: addresses learnt from peers (presences, mDNS) that
            the node will not dial, by reason (``multicast``, ``loopback``,
            ...: :data:`p2pchat.addrs.REFUSAL_REASONS`).
        files: the file transfers' counters (chunks and bytes in and out,
            data links, timeouts...: ``docs/files.md`` §7); empty before the
            first ``/send`` or ``/get``.
    """

    kind: ClassVar[str] = "stats"
    uptime_s: float
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    duplicates_dropped: int
    frames_refused: dict[str, int]
    links_refused: dict[str, int]
    rate_limited: dict[str, int]
    queue_drops: int
    links: int
    members: int
    seen_cache: int
    stored_lines: int = 0
    catchup_in: int = 0
    catchup_out: int = 0
    store_stalls: int = 0
    addrs_refused: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)


LineEvent = MessageEvent | TopicEvent | FileOfferEvent
"""The event of a line of the room's history: a chat line, a topic line or a
room file offer (``Node.history`` returns these)."""
