"""The uploader's side: which chunk requests to answer (``docs/files.md`` §6).

Sans-I/O: a :class:`Server` knows the files we serve (our own offers, whole;
downloads, the chunks verified so far) and, per requesting peer, a token
bucket of bytes and the requests it has in flight.  :meth:`Server.request`
takes a request and the time and returns a :class:`Verdict`:

* ``SERVE``: read the chunk, check its hash (an offered file may have changed
  on disk), send it, then call :meth:`Server.sent` (or :meth:`Server.failed`);
* ``DECLINE``: answer "no" at once, so the requester asks another holder
  (``busy`` when over the rate, else a plain "no": a file offered to one
  member is "no" to everyone else, as an id we never heard of);
* ``DROP``: answer nothing (the peer broke the in-flight bound that an honest
  scheduler never passes: it waits for its own timeout).

Checks, in order, each counted under its reason in :attr:`Server.counts`:

1. ``file_in_flight`` (``rate_limited``): the peer already has
   :attr:`ServeConfig.max_in_flight` requests being served: DROP.
2. ``file_rate`` (``rate_limited``): its bucket lacks the chunk's bytes
   (at least :attr:`ServeConfig.min_request_cost_bytes`, also charged for
   requests refused below): DECLINE ``busy``.
3. ``file_unknown`` (``frames_refused``): not a file we serve, or one offered
   to other members only: DECLINE.
4. ``file_bad_index``: no such chunk: DECLINE.
5. ``file_not_held``: a chunk we have not verified yet: DECLINE.

Peer ids and file ids are opaque (node key strings, 32-byte ids).  One thread
at a time (the node's, under its lock); no clock, no I/O.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Final

from p2pchat.files.manifest import chunk_count, chunk_span

DEFAULT_RATE_BYTES_PER_S: Final = 128 * 1024 * 1024
"""Per peer, 128 MiB/s (a little over a gigabit link): never the bottleneck of
an honest download, but a bound on the disk reads one peer can cause."""

DEFAULT_BURST_BYTES: Final = 16 * 1024 * 1024
"""Per peer, 16 MiB at once (128 chunks of 128 KiB)."""

DEFAULT_MIN_REQUEST_COST_BYTES: Final = 16 * 1024
"""Every request costs at least 16 KiB of the bucket (at most 8,192 requests/s
per peer, refused ones included)."""

DEFAULT_MAX_IN_FLIGHT: Final = 8
"""Per peer, requests being served at once: twice what our own scheduler
asks of one holder (``swarm.DEFAULT_MAX_IN_FLIGHT``)."""

MAX_PEERS: Final = 4096
"""Peers whose bucket and requests are remembered; the least recent with
nothing in flight is forgotten first."""


@dataclass(frozen=True)
class ServeConfig:
    """The server's limits (module docstring; ``docs/files.md`` §7)."""

    rate_bytes_per_s: float = DEFAULT_RATE_BYTES_PER_S
    burst_bytes: int = DEFAULT_BURST_BYTES
    min_request_cost_bytes: int = DEFAULT_MIN_REQUEST_COST_BYTES
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT


class Action(enum.Enum):
    """What to do with a request."""

    SERVE = "serve"
    DECLINE = "decline"
    DROP = "drop"


@dataclass(frozen=True)
class Verdict:
    """A request's fate.

    Attributes:
        action: serve, decline (answer "no") or drop (answer nothing).
        reason: ``""`` when served, else the counted reason (module docstring).
        offset: where the chunk starts in the file, bytes (when served).
        length: the chunk's length, bytes (when served).
    """

    action: Action
    reason: str = ""
    offset: int = 0
    length: int = 0

    @property
    def busy(self) -> bool:
        """Whether the "no" should say ``busy`` (over the rate: ask later)."""
        return self.reason == "file_rate"


@dataclass
class _Served:
    size: int
    chunk_size: int
    whole: bool
    have: set[int]
    allowed: frozenset[str] | None


@dataclass
class _Peer:
    tokens: float
    at: float
    in_flight: set[tuple[bytes, int]] = field(default_factory=set)


class Server:
    """Admission of chunk requests.

    Args:
        config: the limits.

    Attributes:
        counts: requests refused or limited, by reason (``file_in_flight``,
            ``file_rate``: ``rate_limited``; ``file_unknown``,
            ``file_bad_index``, ``file_not_held``: ``frames_refused``), and
            ``served`` / ``served_bytes``.
    """

    def __init__(self, config: ServeConfig | None = None) -> None:
        self.config = config or ServeConfig()
        self._files: dict[bytes, _Served] = {}
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self.counts: Counter[str] = Counter()

    # -- what we serve ------------------------------------------------------

    def offer(
        self, file_id: bytes, size: int, chunk_size: int, allowed: frozenset[str] | None = None
    ) -> None:
        """Serve every chunk of a file we offered.

        Args:
            file_id: its id.
            size: bytes.
            chunk_size: bytes per chunk.
            allowed: the peers it was offered to (a one-member offer), or
                ``None`` for the whole room.
        """
        self._files[file_id] = _Served(size, chunk_size, True, set(), allowed)

    def hold(
        self, file_id: bytes, size: int, chunk_size: int, allowed: frozenset[str] | None = None
    ) -> None:
        """Start serving a file we are downloading (no chunk yet: add them
        with :meth:`add_chunk` as they are verified).  Arguments as :meth:`offer`."""
        served = self._files.get(file_id)
        if served is None:
            self._files[file_id] = _Served(size, chunk_size, False, set(), allowed)

    def add_chunk(self, file_id: bytes, index: int) -> None:
        """Chunk ``index`` of a held file is verified and written: serve it.

        Raises:
            KeyError: not a file given to :meth:`hold`.
        """
        self._files[file_id].have.add(index)

    def withdraw(self, file_id: bytes) -> None:
        """Stop serving a file (cancelled, deleted, changed on disk)."""
        self._files.pop(file_id, None)

    # -- requests -------------------------------------------------------------

    def request(self, peer: str, file_id: bytes, index: int, now: float) -> Verdict:
        """Decide on ``peer``'s request for chunk ``index`` of ``file_id``.

        Args:
            peer: the requesting peer.
            file_id: the file asked for.
            index: the chunk asked for.
            now: monotonic seconds.

        Returns:
            The :class:`Verdict`; on ``SERVE`` the request is in flight until
            :meth:`sent` or :meth:`failed`.
        """
        state = self._peer(peer, now)
        config = self.config
        if len(state.in_flight) >= config.max_in_flight:
            return self._refuse(Action.DROP, "file_in_flight")
        served = self._files.get(file_id)
        length = config.min_request_cost_bytes
        valid = (
            served is not None
            and (served.allowed is None or peer in served.allowed)
            and 0 <= index < chunk_count(served.size, served.chunk_size)
        )
        if served is not None and valid:
            offset, chunk_length = chunk_span(served.size, served.chunk_size, index)
            length = max(chunk_length, length)
        state.tokens = min(
            float(config.burst_bytes), state.tokens + (now - state.at) * config.rate_bytes_per_s
        )
        state.at = max(state.at, now)
        if state.tokens < length:
            return self._refuse(Action.DECLINE, "file_rate")
        state.tokens -= length
        if served is None or (served.allowed is not None and peer not in served.allowed):
            return self._refuse(Action.DECLINE, "file_unknown")
        if not valid:
            return self._refuse(Action.DECLINE, "file_bad_index")
        if not served.whole and index not in served.have:
            return self._refuse(Action.DECLINE, "file_not_held")
        if (file_id, index) in state.in_flight:
            return self._refuse(Action.DROP, "file_in_flight")  # asked twice at once
        state.in_flight.add((file_id, index))
        self.counts["served"] += 1
        self.counts["served_bytes"] += chunk_length
        return Verdict(Action.SERVE, "", offset, chunk_length)

    def sent(self, peer: str, file_id: bytes, index: int) -> None:
        """The chunk is handed to the peer's connection: free its slot."""
        state = self._peers.get(peer)
        if state is not None:
            state.in_flight.discard((file_id, index))

    def failed(self, peer: str, file_id: bytes, index: int) -> None:
        """The chunk could not be read or failed its hash on our disk: free
        the slot (the caller answers "no" and, for an offered file, should
        :meth:`withdraw` it: it changed)."""
        self.sent(peer, file_id, index)

    def substitute(self, peer: str, file_id: bytes, index: int, instead: int) -> None:
        """A request being served is answered with chunk ``instead`` in place
        of ``index`` (the engine's super-seeding): the slot moves to it.

        Raises:
            KeyError: ``index`` is not in flight for ``peer``.
        """
        in_flight = self._peers[peer].in_flight
        in_flight.remove((file_id, index))
        in_flight.add((file_id, instead))

    def cancel(self, peer: str, file_id: bytes, index: int) -> bool:
        """The peer no longer wants the chunk (its endgame).

        Returns:
            Whether it was in flight (the caller may drop it unsent).
        """
        state = self._peers.get(peer)
        if state is None or (file_id, index) not in state.in_flight:
            return False
        state.in_flight.discard((file_id, index))
        return True

    def peer_gone(self, peer: str) -> None:
        """The peer's link is gone: forget its requests (not its bucket, so a
        peer cannot refill it by reconnecting; the table is bounded)."""
        state = self._peers.get(peer)
        if state is not None:
            state.in_flight.clear()

    def in_flight(self, peer: str) -> int:
        """Requests of ``peer`` being served now."""
        state = self._peers.get(peer)
        return len(state.in_flight) if state is not None else 0

    # -- inside ---------------------------------------------------------------

    def _refuse(self, action: Action, reason: str) -> Verdict:
        self.counts[reason] += 1
        return Verdict(action, reason)

    def _peer(self, peer: str, now: float) -> _Peer:
        state = self._peers.get(peer)
        if state is not None:
            self._peers.move_to_end(peer)
            return state
        if len(self._peers) >= MAX_PEERS:
            victim = next((p for p, s in self._peers.items() if not s.in_flight), None)
            self._peers.pop(victim if victim is not None else next(iter(self._peers)))
        state = self._peers[peer] = _Peer(float(self.config.burst_bytes), now)
        return state
