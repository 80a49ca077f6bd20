"""The settings of a node and the checks of our own name and room.

Pure: no sockets, threads or clock.  :mod:`p2pchat.node` re-exports
:class:`NodeConfig`, :func:`check_name` and :func:`check_label`;
:mod:`p2pchat.transport` re-exports :class:`LinkConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pchat import flood, names, wire
from p2pchat.errors import RemoteProtocolError, UsageError
from p2pchat.roster import DEFAULT_MAX_MEMBERS

DEFAULT_PORT = 7420
"""TCP port a node listens on unless told otherwise."""

DEFAULT_ROOM = "lobby"


@dataclass(frozen=True)
class LinkConfig:
    """Timing and size limits of a link.

    Attributes:
        handshake_timeout_s: seconds to receive the peer's ``hello``.
        keepalive_interval_s: send a keepalive after this many idle seconds.
        link_timeout_s: a link with nothing received for this long is dead;
            also the timeout of every socket send.
        send_queue_frames: capacity of the send queue, in frames.
    """

    handshake_timeout_s: float = 5.0
    keepalive_interval_s: float = 2.0
    link_timeout_s: float = 6.0
    send_queue_frames: int = 1024


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
        download_dir: where fetched files go (``--download-dir``); None: the
            user's downloads folder with ``p2pchat/`` under it.
        accept_files: offers of at most this many bytes are fetched without
            a ``/get`` (``--accept-files``); 0: none.
        chunk_size: the chunk size of the files we offer, bytes (a power of
            two from 64 KiB to 1 MiB: ``--chunk-size``); None: 128 KiB,
            doubled for files of more than 65,536 chunks
            (:func:`p2pchat.files.manifest.choose_chunk_size`).
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
    download_dir: str | None = None
    accept_files: int = 0
    chunk_size: int | None = None


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
