"""The transfer engine: which data-link messages to send, whom to dial, progress.

A sans-socket core (``docs/files.md`` §13): it owns, per download, the
:class:`~p2pchat.files.swarm.Swarm`, the hash list being fetched and the
:class:`~p2pchat.files.partial.PartialFile`; per served file, the
:class:`~p2pchat.files.source.SourceFile` or the download; one
:class:`~p2pchat.files.serve.Server`; and per data link (an int id), the
chunks being reassembled from ``fchunk`` slices.  Inputs are method calls
with the time passed in (:meth:`Engine.link_up`, :meth:`Engine.receive`,
:meth:`Engine.tick`...); outputs are lists of actions (:class:`Send`,
:class:`Dial`, :class:`Close`, :class:`Emit`) that the threaded shell
(:mod:`p2pchat.files.transfers`) carries out.  It opens no socket, starts no
thread and reads no clock; it does touch the disk, through ``PartialFile``
and ``SourceFile`` (the shell calls it on its file thread only).

A malformed or out-of-order data-link message ends that data link
(:class:`Close` with a reason code, counted in ``frames_refused``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from p2pchat import addrs
from p2pchat.errors import RemoteProtocolError
from p2pchat.files import datawire as dw
from p2pchat.files.errors import (
    BadOffer,
    ChunksFailedCheck,
    DamagedState,
    TransferError,
)
from p2pchat.files.events import FileDone, FileFailed, FileProgress, TransferStatus
from p2pchat.files.manifest import (
    Manifest,
    Offer,
    chunk_span,
    piece_count,
    verify_piece,
)
from p2pchat.files.partial import PartialFile, WriterFactory, open_writer
from p2pchat.files.serve import Action as ServeAction
from p2pchat.files.serve import ServeConfig, Server
from p2pchat.files.source import SourceFile
from p2pchat.files.swarm import Cancel, Outcome, Request, Swarm, SwarmConfig

IDLE_CLOSE_S: Final = 30.0
"""A data link that carried no file message either way for 30 s is closed."""

MAX_REASSEMBLY: Final = 4
"""Chunks being reassembled from slices at once, per data link."""

MAX_HOLDERS_PER_FILE: Final = 64
"""Holders remembered per download (from ``get``, ``add_holders``, ``fholders``)."""

MAX_INTERESTED_PER_FILE: Final = 256
"""Peers remembered per served file as fetching it (to tell others)."""

MAX_PIECE_JOBS: Final = 8
"""Hash-list pieces waiting to be sent, per data link; more are dropped."""

PIECE_TIMEOUT_S: Final = 10.0
"""A hash-list piece unanswered for 10 s is asked of another holder."""

DIAL_BACKOFF_S: Final = 5.0
"""A holder that could not be dialled, or whose data link closed, is not
dialled again for 5 s."""

PAIR_DIAL_WAIT_S: Final = 0.5
"""Two receivers told of each other by ``fholders`` (both at once, by the
offerer) would dial each other at once and end up with two data links: the
one with the higher node id waits 0.5 s for the other's dial, and dials only
if none came."""

VIOLATION_BACKOFF_S: Final = 60.0
"""A holder whose data link ended in a protocol error is not dialled for 60 s."""

SUPERSEED_SCAN: Final = 64
"""Never-sent chunks looked at per request for one the requester lacks."""

PROGRESS_EVERY_S: Final = 0.25
"""At most 4 ``FileProgress`` a second per file; ``fhas`` batches as often."""

SPEED_WINDOW_S: Final = 2.0
"""Speeds are measured over the last 2 s."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """A node that holds (or fetches) a file, and where to dial it.

    Attributes:
        node: its node id (16 hex digits).
        addrs: its addresses (IPv4 or IPv6 text), tried in order.
        port: its listening TCP port.
    """

    node: str
    addrs: tuple[str, ...]
    port: int

    def __init__(self, node: str, addrs: list[str] | tuple[str, ...], port: int) -> None:
        object.__setattr__(self, "node", node)
        object.__setattr__(self, "addrs", tuple(addrs))
        object.__setattr__(self, "port", port)


@dataclass(frozen=True)
class Send:
    """Send ``frame`` (encoded) on data link ``link``."""

    link: int
    frame: bytes


@dataclass(frozen=True)
class Dial:
    """Open a data link to ``holder``; report :meth:`Engine.dial_failed` if it
    cannot be reached."""

    holder: Holder


@dataclass(frozen=True)
class Close:
    """Close data link ``link``; ``code`` is counted in ``frames_refused``
    when it is a peer's fault (empty otherwise)."""

    link: int
    reason: str
    code: str = ""


@dataclass(frozen=True)
class Emit:
    """Tell the user: a :class:`FileProgress`, :class:`FileDone` or :class:`FileFailed`."""

    event: object


EngineAction = Send | Dial | Close | Emit


@dataclass
class _Link:
    id: int
    node: str
    host: str
    port: int
    at: float  # last file message either way
    sent_have: set[bytes] = field(default_factory=set)
    chunks: dict[tuple[bytes, int], bytearray] = field(default_factory=dict)
    pieces: int = 0  # piece jobs queued


@dataclass
class _Download:
    offer: Offer
    allowed: frozenset[str] | None = None  # who may fetch our copy (None: the room)
    holders: dict[str, Holder] = field(default_factory=dict)
    pieces: dict[int, list[bytes]] = field(default_factory=dict)
    piece_asked: dict[int, tuple[str, float]] = field(default_factory=dict)
    piece_skip: dict[int, set[str]] = field(default_factory=dict)
    maps: dict[str, set[int]] = field(default_factory=dict)  # connected holders' chunks
    no: set[str] = field(default_factory=set)  # said it does not serve the file
    partial: PartialFile | None = None
    swarm: Swarm | None = None
    state: str = "waiting"
    started: bool = False
    done_bytes: int = 0
    window: deque[tuple[float, int]] = field(default_factory=deque)
    pending_has: list[int] = field(default_factory=list)
    progress_at: float = float("-inf")
    progress_bytes: int = -1
    from_node: Counter[str] = field(default_factory=Counter)

    @property
    def n(self) -> int:
        return self.offer.n_chunks


@dataclass
class _Served:
    offer: Offer
    allowed: frozenset[str] | None
    source: SourceFile | None  # None: served from the download's part file
    interested: dict[str, Holder] = field(default_factory=dict)
    # Super-seeding (whole files only): the have-maps of the peers fetching
    # it from us, how often each chunk was handed out (saturating at 255:
    # sent, or seen at a peer; None for a part file), and the chunks in a
    # random order drawn at the first request, those before ``fresh_at``
    # all handed out.
    peer_maps: dict[str, bytearray] = field(default_factory=dict)
    handed: bytearray | None = field(init=False)
    fresh: list[int] = field(default_factory=list)
    fresh_at: int = 0

    def __post_init__(self) -> None:
        self.handed = bytearray(self.offer.n_chunks) if self.source is not None else None


class Engine:
    """The transfers of one node (module docstring).  One thread at a time.

    Args:
        node_id: our node id (never dialled, never listed to others).
        download_dir: where downloads are written.
        loopback_ok: loopback addresses from peers may be dialled (a node on
            loopback only, and tests).
        max_links: data links at most (in + out, handshaking included).
        rng: randomness for the swarms (seed it in tests).
        swarm_config: the schedulers' limits.
        serve_config: the server's limits.
        on_index: called with no arguments whenever the download or offer
            index changed (the shell saves it).
        open_file: opens part and map files (tests pass one that fills the disk).

    Attributes:
        counts: ``frames_refused``, ``rate_limited`` and ``counters`` dicts.
    """

    def __init__(
        self,
        node_id: str,
        download_dir: Path,
        *,
        loopback_ok: bool,
        max_links: int = 16,
        rng: random.Random | None = None,
        swarm_config: SwarmConfig | None = None,
        serve_config: ServeConfig | None = None,
        on_index: Callable[[], None] = lambda: None,
        open_file: WriterFactory = open_writer,
    ) -> None:
        self.node_id = node_id
        self.download_dir = download_dir
        self.loopback_ok = loopback_ok
        self.max_links = max_links
        self.rng = rng or random.Random()
        self.swarm_config = swarm_config or SwarmConfig()
        self.server = Server(serve_config)
        self.on_index = on_index
        self.open_file = open_file
        self.idle_close_s = IDLE_CLOSE_S
        self.dial_backoff_s = DIAL_BACKOFF_S
        self.downloads: dict[bytes, _Download] = {}
        self.served: dict[bytes, _Served] = {}
        self.links: dict[int, _Link] = {}
        self.by_node: dict[str, int] = {}
        self.dialling: set[str] = set()
        self.dial_after: dict[str, float] = {}
        self.handshaking = 0  # set by the shell: links not up yet
        self.jobs: deque[tuple[int, bytes, int]] = deque()  # (link, file, idx or -1-piece)
        self.frames_refused: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.failed_swarm: Counter[str] = Counter()  # counts of swarms already gone
        self.index: dict[bytes, Path] = {}  # downloads with a part file: file id -> map

    # -- what the user asks ---------------------------------------------------------

    def offer(self, offer: Offer, source: SourceFile, allowed: frozenset[str] | None) -> None:
        """Serve our own file (hashed by the caller), to ``allowed`` members
        or (None) to the whole room."""
        self.served[offer.file_id] = _Served(offer, allowed, source)
        self.server.offer(offer.file_id, offer.size, offer.chunk_size, allowed)
        self.on_index()

    def get(
        self,
        offer: Offer,
        holders: list[Holder],
        now: float,
        allowed: frozenset[str] | None = None,
    ) -> list[EngineAction]:
        """Start (or resume, from the part file in :attr:`index`)
        downloading ``offer``, from ``holders``.

        Args:
            offer: a validated offer.
            holders: where to fetch it (more come with :meth:`add_holders`
                and ``fholders``).
            now: monotonic seconds.
            allowed: the peers our copy is served to, chunk by chunk as it
                comes and whole once done: ``None`` for a room offer, an
                empty set for a file offered to us alone (nobody else may
                fetch it, from us either).  Kept with the download (the
                shell's index) when it is resumed.
        """
        fid = offer.file_id
        d = self.downloads.get(fid)
        if d is not None and d.state in ("done", "hashes", "fetching", "waiting") and d.started:
            return self.add_holders(fid, holders, now)
        if fid in self.served and self.served[fid].source is not None and d is None:
            return []  # our own offer: nothing to fetch
        if d is None or d.state in ("failed", "cancelled"):
            old, d = d, _Download(offer, allowed)
            if old is not None:  # the maps of linked holders still hold (fhas kept them)
                d.maps, d.holders = old.maps, old.holders
            self.downloads[fid] = d
            map_path = self.index.get(fid)
            if map_path is not None:
                self._resume(d, map_path)
        d.started = True
        out: list[EngineAction] = []
        if d.partial is not None and d.partial.done_count == d.n:
            out += self._finish(d, now)
            return out
        if d.state in ("waiting", "failed", "cancelled"):
            d.state = "fetching" if d.partial is not None else "hashes"
        out += self.add_holders(fid, holders, now)
        for link in list(self.links.values()):
            if link.node in d.holders:
                out += self._send_have(link, d)
        return out

    def _resume(self, d: _Download, map_path: Path) -> None:
        try:
            partial = PartialFile.resume(map_path, open_file=self.open_file)
        except (DamagedState, OSError):
            return
        if partial.offer != d.offer:
            partial.close()
            return
        self._adopt_partial(d, partial)

    def adopt_resumed(self, partial: PartialFile, allowed: frozenset[str] | None = None) -> None:
        """A download found in the index at start-up: kept, waiting for
        :meth:`get` or :meth:`add_holders` to give it holders (``allowed``:
        as :meth:`get`)."""
        d = _Download(partial.offer, allowed)
        self._adopt_partial(d, partial)
        d.state = "waiting"
        self.downloads[partial.offer.file_id] = d

    def _adopt_partial(self, d: _Download, partial: PartialFile) -> None:
        d.partial = partial
        self.index[d.offer.file_id] = partial.map_path
        done = {i for i in range(d.n) if partial.is_done(i)}
        d.swarm = Swarm(d.n, self.rng, done, self.swarm_config)
        d.done_bytes = sum(chunk_span(d.offer.size, d.offer.chunk_size, i)[1] for i in done)
        fid = d.offer.file_id
        self.server.hold(fid, d.offer.size, d.offer.chunk_size, d.allowed)
        for i in done:
            self.server.add_chunk(fid, i)
        if fid not in self.served:
            self.served[fid] = _Served(d.offer, d.allowed, None)
        for node, has in d.maps.items():
            d.swarm.holder_map(node, _bitfield(has, d.n))

    def allowed_of(self, file_id: bytes) -> frozenset[str] | None:
        """Who may fetch our copy of download ``file_id`` (:meth:`get`)."""
        d = self.downloads.get(file_id)
        return d.allowed if d is not None else None

    def add_holders(self, file_id: bytes, holders: list[Holder], now: float) -> list[EngineAction]:
        """More nodes that hold ``file_id``; a download waiting for holders
        starts (a resumed one too).  Unknown files are ignored."""
        d = self.downloads.get(file_id)
        if d is None:
            return []
        for h in holders:
            if h.node == self.node_id:
                continue
            if h.node not in d.holders and len(d.holders) >= MAX_HOLDERS_PER_FILE:
                self.rate_limited["file_holders"] += 1
                continue
            kept = [
                addrs.normalize(a) for a in h.addrs if addrs.refusal(a, self.loopback_ok) is None
            ]
            if kept and 0 < h.port < 65536:
                d.holders[h.node] = Holder(h.node, kept, h.port)
                d.no.discard(h.node)
        if d.state == "waiting" and d.holders:
            d.started = True
            d.state = "fetching" if d.partial is not None else "hashes"
        out: list[EngineAction] = []
        for link in list(self.links.values()):
            if link.node in d.holders:
                out += self._send_have(link, d)
        return out + self._dial(now)

    def cancel(self, file_id: bytes, now: float) -> bool:
        """Stop a download; its part file and map are kept (a later
        :meth:`get` resumes it).  Returns whether there was one."""
        d = self.downloads.get(file_id)
        if d is None or d.state in ("done", "failed", "cancelled"):
            return False
        d.state = "cancelled"
        self._stop(d, now)
        return True

    def _stop(self, d: _Download, now: float) -> None:
        if d.partial is not None:
            with contextlib.suppress(OSError):
                d.partial.close(now)
        if d.swarm is not None:
            self.failed_swarm.update(d.swarm.counts)
        d.swarm = None
        d.partial = None
        d.started = False
        fid = d.offer.file_id
        s = self.served.get(fid)
        if s is not None and s.source is None:
            del self.served[fid]
            self.server.withdraw(fid)

    def close(self, now: float) -> None:
        """Flush and close every part file (their maps written)."""
        for d in self.downloads.values():
            if d.partial is not None:
                with contextlib.suppress(OSError):
                    d.partial.close(now)

    # -- links ------------------------------------------------------------------------

    def room_for_link(self) -> bool:
        """Whether one more data link fits (:attr:`max_links`)."""
        return len(self.links) + self.handshaking + len(self.dialling) < self.max_links

    def dial_failed(self, node: str, now: float) -> list[EngineAction]:
        """A :class:`Dial` did not give a link."""
        self.dialling.discard(node)
        self.dial_after[node] = now + self.dial_backoff_s
        self.counters["data_dial_failed"] += 1
        return []

    def link_up(
        self, link_id: int, node: str, host: str, port: int, now: float
    ) -> list[EngineAction]:
        """A data link's handshake is done (``node``: the proven peer;
        ``host``: its address as seen; ``port``: its hello's listening port)."""
        self.dialling.discard(node)
        link = _Link(link_id, node, host, port, now)
        self.links[link_id] = link
        self.by_node[node] = link_id
        self.counters["data_links"] += 1
        out: list[EngineAction] = []
        for d in self.downloads.values():
            if d.started and d.state in ("hashes", "fetching") and node in d.holders:
                out += self._send_have(link, d)
        return out

    def link_down(self, link_id: int, now: float) -> list[EngineAction]:
        """A data link closed (for any reason)."""
        link = self.links.pop(link_id, None)
        if link is None:
            return []
        after = now + self.dial_backoff_s
        self.dial_after[link.node] = max(self.dial_after.get(link.node, 0.0), after)
        self.jobs = deque(j for j in self.jobs if j[0] != link_id)
        if self.by_node.get(link.node) == link_id:
            del self.by_node[link.node]
            other = next((k for k in self.links.values() if k.node == link.node), None)
            if other is not None:
                self.by_node[link.node] = other.id
            else:
                self.server.peer_gone(link.node)
                for d in self.downloads.values():
                    d.maps.pop(link.node, None)
                    if d.swarm is not None:
                        d.swarm.holder_gone(link.node)
                    for piece, (who, _) in list(d.piece_asked.items()):
                        if who == link.node:
                            del d.piece_asked[piece]
        return self._dial(now)

    # -- messages ---------------------------------------------------------------------

    def receive(self, link_id: int, msg: dw.DataMessage, now: float) -> list[EngineAction]:
        """A message arrived on data link ``link_id``."""
        link = self.links.get(link_id)
        if link is None:
            return []
        link.at = now
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            return []
        try:
            return handler(self, link, msg, now)
        except (_Violation, RemoteProtocolError) as exc:  # the swarm's too (bad maps)
            code = exc.code if isinstance(exc, _Violation) else "data_" + exc.code
            self.frames_refused[code] += 1
            self.dial_after[link.node] = now + VIOLATION_BACKOFF_S
            return [Close(link.id, str(exc), code)]

    def _on_have(self, link: _Link, msg: dw.FHave, now: float) -> list[EngineAction]:
        fid = msg.file
        out: list[EngineAction] = []
        d = self.downloads.get(fid)
        s = self.served.get(fid)
        serves = s is not None and (s.allowed is None or link.node in s.allowed)
        # A download of a file offered to us alone trades with the holders we chose only.
        ours = d is not None and (d.allowed is None or link.node in d.holders)
        if not ours and not serves:
            self.frames_refused["file_unknown"] += 1
            return [self._frame(link, dw.FNo(file=fid, idx=dw.WHOLE_FILE))]
        n = d.n if d is not None else s.offer.n_chunks if s is not None else 0
        if len(msg.map) != (n + 7) // 8:
            raise _Violation("a have-map of the wrong length", "data_bad_map")
        has = _bits(msg.map, n)
        if has is None:
            raise _Violation("a have-map with bits past the end", "data_bad_map")
        if d is not None and ours and d.started and d.state in ("hashes", "fetching"):
            d.maps[link.node] = set(has)
            d.no.discard(link.node)
            if link.node not in d.holders and len(d.holders) < MAX_HOLDERS_PER_FILE:
                d.holders[link.node] = Holder(link.node, [link.host], link.port)
            if d.swarm is not None:
                d.swarm.holder_map(link.node, bytes(msg.map))
            out += self._send_have(link, d)
        if serves and s is not None:
            if s.source is not None and (
                link.node in s.peer_maps or len(s.peer_maps) < MAX_INTERESTED_PER_FILE
            ):  # a whole copy: its requesters' maps, to super-seed
                s.peer_maps[link.node] = bytearray(msg.map)
                _mark_handed(s, has)
            fresh = link.node not in s.interested
            if fresh and len(s.interested) >= MAX_INTERESTED_PER_FILE:
                s.interested.pop(next(iter(s.interested)))
                self.counters["file_interested_forgotten"] += 1
            s.interested[link.node] = Holder(link.node, [link.host], link.port)
            if fid not in link.sent_have:
                out.append(self._frame(link, dw.FHave(file=fid, map=self._map_of(fid))))
                link.sent_have.add(fid)
            out.append(self._holders_frame(link, fid))
            if fresh:  # tell the others about the newcomer
                entry = self._entry(s.interested[link.node])
                for other in s.interested:
                    lid = self.by_node.get(other)
                    if other != link.node and lid is not None and entry is not None:
                        out.append(
                            self._frame(self.links[lid], dw.FHolders(file=fid, holders=[entry]))
                        )
        return out

    def _on_has(self, link: _Link, msg: dw.FHas, now: float) -> list[EngineAction]:
        s = self.served.get(msg.file)
        d = self.downloads.get(msg.file)
        peer_map = s.peer_maps.get(link.node) if s is not None else None
        fetching = d is not None and link.node in d.maps
        if peer_map is None and not fetching:
            return []
        n = d.n if d is not None else s.offer.n_chunks if s is not None else 0
        if any(i >= n for i in msg.idx):
            raise _Violation("fhas of a chunk past the end", "data_bad_index")
        if s is not None and peer_map is not None:  # a requester of our whole copy
            for i in msg.idx:
                peer_map[i >> 3] |= 0x80 >> (i & 7)
            _mark_handed(s, msg.idx)
        if d is None or not fetching:
            return []
        d.maps[link.node].update(msg.idx)
        if d.swarm is not None:
            for i in msg.idx:
                d.swarm.holder_has(link.node, i)
        return []

    def _on_piece_get(self, link: _Link, msg: dw.FPieceGet, now: float) -> list[EngineAction]:
        s = self.served.get(msg.file)
        leaves = self._leaves(msg.file)
        if (
            s is None
            or leaves is None
            or (s.allowed is not None and link.node not in s.allowed)
            or msg.piece >= piece_count(len(leaves))
        ):
            self.frames_refused["file_unknown"] += 1
            return [self._frame(link, dw.FNo(file=msg.file, idx=dw.WHOLE_FILE))]
        if link.pieces >= MAX_PIECE_JOBS:
            self.rate_limited["file_piece"] += 1
            return []
        link.pieces += 1
        self.jobs.append((link.id, msg.file, -1 - msg.piece))
        return []

    def _on_piece(self, link: _Link, msg: dw.FPiece, now: float) -> list[EngineAction]:
        d = self.downloads.get(msg.file)
        if d is None or d.piece_asked.get(msg.piece, ("", 0.0))[0] != link.node:
            self.counters["data_unexpected"] += 1
            return []
        del d.piece_asked[msg.piece]
        hashes = [msg.hashes[i : i + 32] for i in range(0, len(msg.hashes), 32)]
        proof = [msg.proof[i : i + 32] for i in range(0, len(msg.proof), 32)]
        try:
            if len(msg.hashes) % 32 or len(msg.proof) % 32:
                raise BadOffer("hashes not in 32-byte units", "bad_file_hash")
            verify_piece(d.offer.root, d.n, msg.piece, hashes, proof)
        except BadOffer:
            self.frames_refused["bad_file_hash"] += 1
            d.piece_skip.setdefault(msg.piece, set()).add(link.node)
            d.no.add(link.node)  # a liar: not asked again for this file
            return self._ask_pieces(d, now)
        d.pieces[msg.piece] = hashes
        if len(d.pieces) == piece_count(d.n):
            leaves = tuple(h for p in range(piece_count(d.n)) for h in d.pieces[p])
            try:
                partial = PartialFile.create(
                    self.download_dir, d.offer, leaves, open_file=self.open_file
                )
            except (TransferError, OSError) as exc:
                return self._fail(d, str(exc), now)
            d.pieces.clear()
            self._adopt_partial(d, partial)
            d.state = "fetching"
            self.on_index()
            return self._fill(d, now)
        return self._ask_pieces(d, now)

    def _on_get(self, link: _Link, msg: dw.FGet, now: float) -> list[EngineAction]:
        verdict = self.server.request(link.node, msg.file, msg.idx, now)
        if verdict.action is ServeAction.SERVE:
            out: list[EngineAction] = []
            idx = msg.idx
            s = self.served.get(msg.file)
            if s is not None and s.source is not None:
                instead = _fresh_instead(s, link.node, idx, self.rng)
                if instead is not None:
                    self.server.substitute(link.node, msg.file, idx, instead)
                    self.counters["chunks_instead"] += 1
                    swap = dw.FInstead(file=msg.file, idx=idx, instead=instead)
                    out.append(self._frame(link, swap))
                    idx = instead
                _mark_handed(s, (idx,))
            self.jobs.append((link.id, msg.file, idx))
            return out
        if verdict.action is ServeAction.DECLINE:
            # A file we do not serve (to this peer, or any more: it changed on
            # disk) is declined whole, so the requester stops asking us for it.
            idx = dw.WHOLE_FILE if verdict.reason == "file_unknown" else msg.idx
            return [self._frame(link, dw.FNo(file=msg.file, idx=idx, busy=verdict.busy))]
        return []

    def _on_chunk(self, link: _Link, msg: dw.FChunk, now: float) -> list[EngineAction]:
        key = (msg.file, msg.idx)
        buf = link.chunks.get(key)
        d = self.downloads.get(msg.file)
        if buf is None:
            if msg.off != 0:
                return []  # the rest of a chunk we dropped
            expected = d is not None and d.swarm is not None and d.swarm.expects(link.node, msg.idx)
            buf = link.chunks[key] = bytearray() if expected else _DROPPING
            out = self._check_reassembly(link)
            if out:
                return out
        if buf is _DROPPING:  # not asked for: its slices are dropped unread
            if msg.off == 0:
                self.counters["data_unexpected"] += 1
            if len(msg.data) < dw.MAX_SLICE_BYTES:
                link.chunks.pop(key, None)
            return []
        assert d is not None and d.swarm is not None and d.partial is not None
        if msg.idx >= d.n:
            raise _Violation("fchunk past the end", "data_bad_index")
        length = chunk_span(d.offer.size, d.offer.chunk_size, msg.idx)[1]
        if msg.off != len(buf) or msg.off + len(msg.data) > length:
            raise _Violation("fchunk slices out of order or too long", "data_slices")
        if len(msg.data) < dw.MAX_SLICE_BYTES and msg.off + len(msg.data) < length:
            raise _Violation("a short fchunk slice before the end", "data_slices")
        buf += msg.data
        if len(buf) < length:
            return []
        del link.chunks[key]
        return self._chunk_done(d, link, msg.idx, bytes(buf), now)

    def _check_reassembly(self, link: _Link) -> list[EngineAction]:
        if len(link.chunks) > MAX_REASSEMBLY:
            self.frames_refused["data_reassembly"] += 1
            return [Close(link.id, "too many chunks at once", "data_reassembly")]
        return []

    def _chunk_done(
        self, d: _Download, link: _Link, idx: int, data: bytes, now: float
    ) -> list[EngineAction]:
        assert d.swarm is not None and d.partial is not None
        if not d.swarm.expects(link.node, idx):
            self.counters["data_unexpected"] += 1
            return []
        try:
            ok = d.partial.write_chunk(idx, data, now)
        except (TransferError, OSError) as exc:
            return self._fail(d, str(exc), now)
        outcome = d.swarm.received(link.node, idx, ok, now)
        if outcome is Outcome.BAD:
            self.frames_refused["bad_chunk"] += 1
        elif outcome is Outcome.ACCEPTED:
            length = chunk_span(d.offer.size, d.offer.chunk_size, idx)[1]
            d.done_bytes += length
            d.window.append((now, length))
            d.from_node[link.node] += 1
            self.server.add_chunk(d.offer.file_id, idx)
            d.pending_has.append(idx)
            if d.swarm.complete:
                return self._finish(d, now)
        return self._fill(d, now)

    def _on_no(self, link: _Link, msg: dw.FNo, now: float) -> list[EngineAction]:
        d = self.downloads.get(msg.file)
        if d is None:
            return []
        if msg.idx == dw.WHOLE_FILE:
            d.no.add(link.node)
            d.maps.pop(link.node, None)
            if d.swarm is not None:
                d.swarm.holder_gone(link.node)
            for piece, (who, _) in list(d.piece_asked.items()):
                if who == link.node:
                    del d.piece_asked[piece]
            return self._fill(d, now)
        if d.swarm is not None:
            d.swarm.declined(link.node, msg.idx, now)
        return [] if msg.busy else self._fill(d, now)  # busy: ask again at the next tick

    def _on_instead(self, link: _Link, msg: dw.FInstead, now: float) -> list[EngineAction]:
        d = self.downloads.get(msg.file)
        cancel: list[EngineAction] = [self._frame(link, dw.FCancel(file=msg.file, idx=msg.instead))]
        if d is None or d.swarm is None:
            return cancel
        if d.swarm.substituted(link.node, msg.idx, msg.instead, now):
            return self._fill(d, now)
        return cancel + self._fill(d, now)

    def _on_cancel(self, link: _Link, msg: dw.FCancel, now: float) -> list[EngineAction]:
        if self.server.cancel(link.node, msg.file, msg.idx):
            job = (link.id, msg.file, msg.idx)
            if job in self.jobs:  # not sent yet: it goes back to the never-sent ones
                self.jobs = deque(j for j in self.jobs if j != job)
                s = self.served.get(msg.file)
                if s is not None and s.handed is not None and s.handed[msg.idx] == 1:
                    s.handed[msg.idx] = 0
                    s.fresh_at = 0
        return []

    def _on_holders(self, link: _Link, msg: dw.FHolders, now: float) -> list[EngineAction]:
        d = self.downloads.get(msg.file)
        if d is None or not d.started:
            return []
        for h in msg.holders:  # the lower node id of a pair dials, the other waits for it
            if h.node < self.node_id and h.node not in self.by_node and h.node not in d.holders:
                wait = now + PAIR_DIAL_WAIT_S
                self.dial_after[h.node] = max(self.dial_after.get(h.node, 0.0), wait)
        return self.add_holders(
            msg.file, [Holder(h.node, h.addrs, h.port) for h in msg.holders], now
        )

    # -- serving (the shell calls pump when links have room) ---------------------------

    def pump(self, room: Callable[[int], bool], now: float) -> list[EngineAction]:
        """Serve queued chunk and piece requests on links with ``room``
        (their send queue is short): read, check, slice, send."""
        out: list[EngineAction] = []
        waiting: deque[tuple[int, bytes, int]] = deque()
        while self.jobs:
            job = self.jobs.popleft()
            link_id, fid, idx = job
            link = self.links.get(link_id)
            if link is None:
                continue
            if not room(link_id):
                waiting.append(job)
                continue
            link.at = now
            if idx < 0:
                link.pieces -= 1
                out += self._serve_piece(link, fid, -1 - idx)
            else:
                out += self._serve_chunk(link, fid, idx)
        self.jobs = waiting
        return out

    def _serve_piece(self, link: _Link, fid: bytes, piece: int) -> list[EngineAction]:
        leaves = self._leaves(fid)
        if leaves is None:
            return [self._frame(link, dw.FNo(file=fid, idx=dw.WHOLE_FILE))]
        hashes, proof = Manifest(*self._size(fid), leaves).piece(piece)
        frame = dw.FPiece(file=fid, piece=piece, hashes=b"".join(hashes), proof=b"".join(proof))
        return [self._frame(link, frame)]

    def _serve_chunk(self, link: _Link, fid: bytes, idx: int) -> list[EngineAction]:
        s = self.served.get(fid)
        data: bytes | None = None
        try:
            if s is not None and s.source is not None:
                data = s.source.read_chunk(idx)
            elif (d := self.downloads.get(fid)) is not None and d.partial is not None:
                data = d.partial.read_chunk(idx)
        except (OSError, IndexError):
            data = None
        if data is None:
            self.server.failed(link.node, fid, idx)
            if s is not None and s.source is not None:
                self.server.withdraw(fid)  # the file changed on disk
                self.counters["offer_changed"] += 1
                return [self._frame(link, dw.FNo(file=fid, idx=dw.WHOLE_FILE))]
            return [self._frame(link, dw.FNo(file=fid, idx=idx))]
        out: list[EngineAction] = []
        for off in range(0, max(1, len(data)), dw.MAX_SLICE_BYTES):
            piece = data[off : off + dw.MAX_SLICE_BYTES]
            out.append(self._frame(link, dw.FChunk(file=fid, idx=idx, off=off, data=piece)))
        self.server.sent(link.node, fid, idx)
        self.counters["chunks_served"] += 1
        return out

    # -- time --------------------------------------------------------------------------

    def tick(self, now: float) -> list[EngineAction]:
        """Time passes: timeouts, requests, ``fhas`` batches, progress, idle links."""
        out: list[EngineAction] = []
        for d in list(self.downloads.values()):
            if d.partial is not None and d.state in ("fetching", "waiting"):
                try:
                    d.partial.flush_due(now)  # a stalled download's last chunks marked
                except OSError as exc:
                    log.warning("cannot write the chunk map of %s: %s", d.offer.name, exc)
            if not d.started or d.state not in ("hashes", "fetching"):
                continue
            if d.state == "hashes":
                out += self._ask_pieces(d, now)
            else:
                out += self._fill(d, now)
            if now - d.progress_at >= PROGRESS_EVERY_S:
                out += self._flush_has(d)
                if d.done_bytes != d.progress_bytes:
                    d.progress_at = now
                    d.progress_bytes = d.done_bytes
                    out.append(Emit(self._progress(d, now)))
        for link in list(self.links.values()):
            if now - link.at > self.idle_close_s:
                out.append(Close(link.id, "idle"))
        return out + self._dial(now)

    # -- inside ------------------------------------------------------------------------

    def _fill(self, d: _Download, now: float) -> list[EngineAction]:
        if d.swarm is None or d.state != "fetching":
            return []
        out: list[EngineAction] = []
        for step in d.swarm.poll(now):
            lid = self.by_node.get(step.holder)
            if lid is None:
                continue
            link = self.links[lid]
            if isinstance(step, Request):
                out.append(self._frame(link, dw.FGet(file=d.offer.file_id, idx=step.index)))
            elif isinstance(step, Cancel):
                link.chunks.pop((d.offer.file_id, step.index), None)
                out.append(self._frame(link, dw.FCancel(file=d.offer.file_id, idx=step.index)))
        return out

    def _ask_pieces(self, d: _Download, now: float) -> list[EngineAction]:
        out: list[EngineAction] = []
        for piece, (_, deadline) in list(d.piece_asked.items()):
            if deadline <= now:
                del d.piece_asked[piece]
        # Only a holder with a chunk surely has the hash list (a receiver still
        # fetching its own would answer "no").
        nodes = [n for n, has in d.maps.items() if has and n in self.by_node and n not in d.no]
        if not nodes:
            return []
        for piece in range(piece_count(d.n)):
            if piece in d.pieces or piece in d.piece_asked:
                continue
            skip = d.piece_skip.get(piece, set())
            choices = [n for n in nodes if n not in skip] or nodes
            node = self.rng.choice(choices)
            d.piece_asked[piece] = (node, now + PIECE_TIMEOUT_S)
            link = self.links[self.by_node[node]]
            out.append(self._frame(link, dw.FPieceGet(file=d.offer.file_id, piece=piece)))
        return out

    def _dial(self, now: float) -> list[EngineAction]:
        out: list[EngineAction] = []
        for d in self.downloads.values():
            if not d.started or d.state not in ("hashes", "fetching"):
                continue
            if d.swarm is not None and d.swarm.complete:
                continue
            for h in d.holders.values():
                if not self.room_for_link():
                    return out
                if (
                    h.node in self.by_node
                    or h.node in self.dialling
                    or h.node in d.no
                    or self.dial_after.get(h.node, 0.0) > now
                ):
                    continue
                self.dialling.add(h.node)
                out.append(Dial(h))
        return out

    def _send_have(self, link: _Link, d: _Download) -> list[EngineAction]:
        fid = d.offer.file_id
        if fid in link.sent_have or not d.started or d.state not in ("hashes", "fetching"):
            return []
        link.sent_have.add(fid)
        out: list[EngineAction] = [self._frame(link, dw.FHave(file=fid, map=self._map_of(fid)))]
        return out

    def _map_of(self, fid: bytes) -> bytes:
        d = self.downloads.get(fid)
        s = self.served.get(fid)
        if s is not None and s.source is not None:
            n = s.offer.n_chunks
            return _bitfield(set(range(n)), n)
        if d is not None and d.partial is not None:
            return d.partial.have_map()
        n = d.n if d is not None else 1
        return bytes((n + 7) // 8)

    def _leaves(self, fid: bytes) -> tuple[bytes, ...] | None:
        s = self.served.get(fid)
        if s is not None and s.source is not None:
            return s.source.manifest.leaves
        d = self.downloads.get(fid)
        if d is not None and d.partial is not None:
            return d.partial.leaves
        return None

    def _size(self, fid: bytes) -> tuple[int, int]:
        s = self.served[fid]
        return s.offer.size, s.offer.chunk_size

    def _entry(self, h: Holder) -> dw.HolderEntry | None:
        if not h.addrs or not 0 < h.port < 65536:
            return None
        return dw.HolderEntry(node=h.node, addrs=list(h.addrs[: dw.MAX_HOLDER_ADDRS]), port=h.port)

    def _holders_frame(self, link: _Link, fid: bytes) -> Send:
        known: dict[str, Holder] = {}
        d = self.downloads.get(fid)
        if d is not None:
            known.update(d.holders)
        s = self.served.get(fid)
        if s is not None:
            known.update(s.interested)
        entries = []
        for node, h in known.items():
            if node in (link.node, self.node_id):
                continue
            entry = self._entry(h)
            if entry is not None:
                entries.append(entry)
            if len(entries) >= dw.MAX_HOLDERS:
                break
        return self._frame(link, dw.FHolders(file=fid, holders=entries))

    def _flush_has(self, d: _Download) -> list[EngineAction]:
        if not d.pending_has:
            return []
        fid = d.offer.file_id
        s = self.served.get(fid)
        nodes = set(d.maps) | (set(s.interested) if s is not None else set())
        out: list[EngineAction] = []
        batch = sorted(set(d.pending_has))
        d.pending_has.clear()
        for node in nodes:
            lid = self.by_node.get(node)
            if lid is None:
                continue
            for at in range(0, len(batch), dw.MAX_HAS_INDICES):
                idx = batch[at : at + dw.MAX_HAS_INDICES]
                out.append(self._frame(self.links[lid], dw.FHas(file=fid, idx=idx)))
        return out

    def _finish(self, d: _Download, now: float) -> list[EngineAction]:
        assert d.partial is not None
        out = self._flush_has(d)
        leaves = d.partial.leaves
        try:
            path, sha = d.partial.finish()
        except ChunksFailedCheck:
            self.counters["chunks_failed_check"] += 1
            self._adopt_partial(d, d.partial)  # a new swarm without the failed chunks
            return out + self._fill(d, now)
        except (TransferError, OSError) as exc:
            return out + self._fail(d, str(exc), now)
        if d.swarm is not None:
            self.failed_swarm.update(d.swarm.counts)
        d.state = "done"
        d.swarm = None
        d.partial = None
        d.done_bytes = d.offer.size
        fid = d.offer.file_id
        try:
            stat = os.stat(path)
            manifest = Manifest(d.offer.size, d.offer.chunk_size, leaves)
            source = SourceFile(path, manifest, stat.st_mtime_ns)
            interested = self.served[fid].interested if fid in self.served else {}
            self.served[fid] = _Served(d.offer, d.allowed, source, interested)
            self.server.offer(fid, d.offer.size, d.offer.chunk_size, d.allowed)
        except (OSError, BadOffer):
            self.server.withdraw(fid)
        self.counters["files_done"] += 1
        self.index.pop(fid, None)
        self.on_index()
        out.append(Emit(self._progress(d, now)))
        out.append(Emit(FileDone(fid, d.offer.name, path, d.offer.size, sha)))
        return out

    def _fail(self, d: _Download, reason: str, now: float) -> list[EngineAction]:
        d.state = "failed"
        self._stop(d, now)
        self.counters["files_failed"] += 1
        self.on_index()
        return [Emit(FileFailed(d.offer.file_id, d.offer.name, reason))]

    def _frame(self, link: _Link, msg: dw.DataMessage) -> Send:
        return Send(link.id, dw.encode_frame(msg))

    def _speed(self, d: _Download, now: float) -> float:
        while d.window and d.window[0][0] < now - SPEED_WINDOW_S:
            d.window.popleft()
        return sum(b for _, b in d.window) / SPEED_WINDOW_S

    def _progress(self, d: _Download, now: float) -> FileProgress:
        speed = self._speed(d, now)
        left = d.offer.size - d.done_bytes
        eta = left / speed if speed > 0 else (0.0 if left == 0 else None)
        holders = sum(1 for n, has in d.maps.items() if has and n in self.by_node)
        return FileProgress(
            d.offer.file_id, d.offer.name, d.done_bytes, d.offer.size, speed, holders, eta
        )

    # -- views ---------------------------------------------------------------------------

    def status(self, now: float) -> list[TransferStatus]:
        """Every download and every offer of ours."""
        out = []
        for d in self.downloads.values():
            p = self._progress(d, now)
            # Fetching with no holder that has something to give: waiting for one.
            state = "waiting" if d.state == "fetching" and not p.holders else d.state
            out.append(
                TransferStatus(
                    p.file, p.name, p.size, p.done_bytes, p.speed_Bps, p.holders, p.eta_s, state
                )
            )
        for fid, s in self.served.items():
            if fid not in self.downloads and s.source is not None:
                o = s.offer
                out.append(TransferStatus(fid, o.name, o.size, o.size, 0.0, 0, None, "offered"))
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """``frames_refused``, ``rate_limited`` and ``counters`` (``/stats``):
        the server's and every swarm's counts folded in."""
        swarm: Counter[str] = Counter(self.failed_swarm)
        for d in self.downloads.values():
            if d.swarm is not None:
                swarm.update(d.swarm.counts)
        refused = Counter(self.frames_refused)
        limited = Counter(self.rate_limited)
        counters = Counter(self.counters)
        for reason, n in self.server.counts.items():
            if reason in ("file_in_flight", "file_rate"):
                limited[reason] += n
            elif reason in ("file_unknown", "file_bad_index", "file_not_held"):
                refused[reason] += n
            else:
                counters[reason] += n
        for reason, n in swarm.items():
            counters["swarm_" + reason] += n
        return {
            "frames_refused": dict(refused),
            "rate_limited": dict(limited),
            "counters": dict(counters),
        }


_DROPPING: Final = bytearray(b"-")  # marker: slices of a chunk being dropped


class _Violation(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _bits(bitfield: bytes, n: int) -> set[int] | None:
    has = {i for i in range(len(bitfield) * 8) if bitfield[i >> 3] & (0x80 >> (i & 7))}
    return None if has and max(has) >= n else has


def _mark_handed(s: _Served, indices: Iterable[int]) -> None:
    """Chunks of ``s`` sent, or seen at a peer: out of our hands (super-seeding)."""
    handed = s.handed
    if handed is None:
        return
    for i in indices:
        if handed[i] < 255:
            handed[i] += 1


def _fresh_instead(s: _Served, node: str, index: int, rng: random.Random) -> int | None:
    """Super-seeding (``docs/files.md`` §6): the chunk to send ``node`` in
    place of ``index``, or ``None`` to send ``index``.  A whole copy sends
    every chunk once before it sends any twice: a request for a chunk handed
    out already gets one never sent (and which ``node``'s have-map lacks), so
    the receivers soon hold every chunk between them and can finish from
    each other if we stop.  A chunk nobody else has (``index`` never handed
    out), or a requester whose map we lack, gets what it asked for."""
    handed = s.handed
    peer_map = s.peer_maps.get(node)
    if handed is None or peer_map is None or not handed[index]:
        return None
    n = s.offer.n_chunks
    if not s.fresh:
        s.fresh = list(range(n))
        rng.shuffle(s.fresh)
    fresh = s.fresh
    while s.fresh_at < n and handed[fresh[s.fresh_at]]:
        s.fresh_at += 1
    for k in fresh[s.fresh_at : s.fresh_at + SUPERSEED_SCAN]:
        if not handed[k] and not peer_map[k >> 3] & (0x80 >> (k & 7)):
            return k
    return None


def _bitfield(has: set[int], n: int) -> bytes:
    out = bytearray((n + 7) // 8)
    for i in has:
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


_HANDLERS: dict[type, Callable[[Engine, _Link, object, float], list[EngineAction]]] = {
    dw.FHave: Engine._on_have,  # type: ignore[dict-item]
    dw.FHas: Engine._on_has,  # type: ignore[dict-item]
    dw.FPieceGet: Engine._on_piece_get,  # type: ignore[dict-item]
    dw.FPiece: Engine._on_piece,  # type: ignore[dict-item]
    dw.FGet: Engine._on_get,  # type: ignore[dict-item]
    dw.FChunk: Engine._on_chunk,  # type: ignore[dict-item]
    dw.FNo: Engine._on_no,  # type: ignore[dict-item]
    dw.FInstead: Engine._on_instead,  # type: ignore[dict-item]
    dw.FCancel: Engine._on_cancel,  # type: ignore[dict-item]
    dw.FHolders: Engine._on_holders,  # type: ignore[dict-item]
}
