"""The download scheduler: which chunk to ask of which holder, and when to give up.

Sans-I/O (``docs/files.md`` §5): a :class:`Swarm` is told what holders have
(:meth:`~Swarm.holder_map`, :meth:`~Swarm.holder_has`), that they left
(:meth:`~Swarm.holder_gone`), and how each request ended
(:meth:`~Swarm.received` with the hash check's result, :meth:`~Swarm.declined`,
:meth:`~Swarm.substituted`);
:meth:`~Swarm.poll` takes the time and returns the requests to send (and the
requests to cancel).  :meth:`~Swarm.next_deadline` says when to poll again if
nothing arrives.  Time is monotonic seconds passed in; randomness comes from
the ``random.Random`` passed in, so a run is reproducible from its seed.

Policy:

* **Rarest first**: a holder with a free slot is asked for the chunk it has
  that the fewest usable holders have, ties broken by a random order of the
  chunks drawn once from the RNG (so receivers spread over different chunks
  and soon hold different things to give each other).
* **Bounded in flight**: at most :attr:`SwarmConfig.max_in_flight` requests
  per holder (4 x 128 KiB = 512 KiB outstanding: many times the bandwidth-delay
  product of a LAN, so one holder's link stays busy, while ten receivers
  cannot queue more than 40 chunks at one uploader).  The holders take turns,
  one request each per round.
* **Timeouts**: a request unanswered after :attr:`SwarmConfig.request_timeout_s`
  frees its slot, halves that holder's own limit (at least 1; each chunk it
  delivers adds one back, up to the maximum), and the chunk is asked of
  another holder (the same one only if no other has it).  A late answer is
  still taken if the chunk is still missing.
* **Bad chunks**: a chunk that fails its hash is asked of another holder;
  the sender is counted and after :attr:`SwarmConfig.bad_chunks_limit` bad
  chunks it is no longer asked (nor counted as having anything).
* **Endgame**: once every missing chunk is in flight, a free holder may ask
  for one already asked elsewhere (at most :attr:`SwarmConfig.endgame_copies`
  requests per chunk); the first good copy wins, the others are cancelled.

* **Substitutes**: a holder may answer a request with another chunk
  (super-seeding, ``docs/files.md`` §6); :meth:`~Swarm.substituted` moves the
  request's slot to it, with no penalty to the holder.

A chunk is accepted (:data:`Outcome.ACCEPTED`) once only; every other answer
is a duplicate, unexpected (never asked of that holder) or bad.  The caller's
order for an arriving chunk: :meth:`~Swarm.expects` (if not, drop it unread),
then check and write it (``PartialFile.write_chunk`` does both, and writes
nothing if the hash fails), then :meth:`~Swarm.received` with the result.
Holder ids are opaque strings (node keys).  One thread at a time (the node's, under its lock).
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from p2pchat.errors import RemoteProtocolError

DEFAULT_MAX_IN_FLIGHT: Final = 4
DEFAULT_REQUEST_TIMEOUT_S: Final = 10.0
DEFAULT_BAD_CHUNKS_LIMIT: Final = 3


@dataclass(frozen=True)
class SwarmConfig:
    """The scheduler's limits.

    Attributes:
        max_in_flight: requests outstanding per holder, 1 or more.
        request_timeout_s: seconds before an unanswered request is given up.
        bad_chunks_limit: bad chunks after which a holder is no longer asked.
        endgame_copies: requests per chunk at most in the endgame (1: off).
    """

    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    bad_chunks_limit: int = DEFAULT_BAD_CHUNKS_LIMIT
    endgame_copies: int = 2


@dataclass(frozen=True)
class Request:
    """Ask ``holder`` for chunk ``index``."""

    holder: str
    index: int


@dataclass(frozen=True)
class Cancel:
    """Tell ``holder`` that chunk ``index`` is no longer wanted (endgame)."""

    holder: str
    index: int


class Outcome(enum.Enum):
    """What :meth:`Swarm.received` made of an answer."""

    ACCEPTED = "accepted"
    """First good copy: the chunk is done (announce it, serve it)."""
    DUPLICATE = "duplicate"
    """The chunk was already done (a late endgame copy)."""
    UNEXPECTED = "unexpected"
    """Never asked of this holder, or the holder is banned (``expects`` was false)."""
    BAD = "bad"
    """Failed its hash: counted against the holder; asked elsewhere."""


@dataclass
class _Holder:
    name: str
    limit: int
    has: set[int] = field(default_factory=set)
    in_flight: dict[int, float] = field(default_factory=dict)  # index -> deadline
    late: set[int] = field(default_factory=set)  # timed out; a late answer still counts
    skip: set[int] = field(default_factory=set)  # timed out, declined or bad: ask others
    bad: int = 0
    banned: bool = False


class Swarm:
    """The scheduler of one download.

    Args:
        n_chunks: chunks in the file, 1 or more.
        rng: the random source (seed it for reproducible runs).
        done: chunks already on disk (a resumed download).
        config: the limits.

    Attributes:
        counts: ``requests``, ``accepted``, ``bad``, ``timeouts``,
            ``declined``, ``duplicates``, ``unexpected``, ``cancelled``,
            ``substituted``, ``holders_banned``: what happened so far (for ``/stats``).
    """

    def __init__(
        self,
        n_chunks: int,
        rng: random.Random,
        done: frozenset[int] | set[int] = frozenset(),
        config: SwarmConfig | None = None,
    ) -> None:
        if n_chunks < 1:
            raise ValueError("a file has at least one chunk")
        self.n_chunks = n_chunks
        self.config = config or SwarmConfig()
        self._rng = rng
        order = list(range(n_chunks))
        rng.shuffle(order)
        self._rank = [0] * n_chunks
        for position, index in enumerate(order):
            self._rank[index] = position
        self._missing = set(range(n_chunks)) - set(done)
        self._requestable = set(self._missing)  # missing and not in flight
        self._asked: dict[int, set[str]] = {}  # missing chunk -> holders it is in flight at
        self._availability = [0] * n_chunks  # usable holders having the chunk
        self._holders_of: dict[int, set[str]] = {}
        self._holders: dict[str, _Holder] = {}
        self._pending_cancels: list[Cancel] = []
        self.counts: Counter[str] = Counter()

    # -- what holders have ----------------------------------------------------

    def holder_map(self, holder: str, bitfield: bytes) -> None:
        """``holder`` has exactly the chunks set in ``bitfield`` (bit ``i``,
        most significant first, of byte ``i // 8``); replaces what it had.

        Raises:
            RemoteProtocolError: (``invalid_fields``) wrong length, or bits
                set past the last chunk.
        """
        if len(bitfield) != (self.n_chunks + 7) // 8:
            raise RemoteProtocolError(
                f"a have-map of {len(bitfield)} bytes for {self.n_chunks} chunks", "invalid_fields"
            )
        has = {i for i in range(len(bitfield) * 8) if bitfield[i >> 3] & (0x80 >> (i & 7))}
        if has and max(has) >= self.n_chunks:
            raise RemoteProtocolError("a have-map with bits past the last chunk", "invalid_fields")
        state = self._holder(holder)
        for index in state.has - has:
            self._forget_has(state, index)
        for index in has - state.has:
            self._add_has(state, index)

    def holder_has(self, holder: str, index: int) -> None:
        """``holder`` now has chunk ``index`` too.

        Raises:
            RemoteProtocolError: (``invalid_fields``) no such chunk.
        """
        if not 0 <= index < self.n_chunks:
            raise RemoteProtocolError(f"chunk {index} of {self.n_chunks}", "invalid_fields")
        state = self._holder(holder)
        if index not in state.has:
            self._add_has(state, index)

    def holder_gone(self, holder: str) -> None:
        """``holder`` left (link lost, node closed): its requests are freed at
        once and the chunks asked elsewhere; what it had no longer counts."""
        state = self._holders.pop(holder, None)
        if state is None:
            return
        for index in list(state.in_flight):
            self._end_request(state, index)
        for index in state.has:
            self._holders_of[index].discard(holder)
            if not state.banned:
                self._availability[index] -= 1

    # -- answers ----------------------------------------------------------------

    def expects(self, holder: str, index: int) -> bool:
        """Whether an answer from ``holder`` for ``index`` would be used:
        asked of it (in flight, or timed out), still missing, holder not
        banned.  Check before hashing a received chunk."""
        state = self._holders.get(holder)
        return (
            state is not None
            and not state.banned
            and index in self._missing
            and (index in state.in_flight or index in state.late)
        )

    def received(self, holder: str, index: int, ok: bool, now: float) -> Outcome:
        """A chunk arrived from ``holder``; ``ok`` is whether it matched its hash
        (call after :meth:`expects` said yes and the chunk was checked and,
        if good, written).

        Args:
            holder: who sent it.
            index: which chunk.
            ok: the caller's hash check.
            now: monotonic seconds.

        Returns:
            The :class:`Outcome`.
        """
        state = self._holders.get(holder)
        if (
            state is None
            or state.banned
            or (index not in state.in_flight and index not in state.late)
        ):
            self.counts["unexpected"] += 1
            return Outcome.UNEXPECTED
        if index not in self._missing:
            self._end_request(state, index)
            state.late.discard(index)
            self.counts["duplicates"] += 1
            return Outcome.DUPLICATE
        self._end_request(state, index)
        state.late.discard(index)
        if not ok:
            self.counts["bad"] += 1
            state.bad += 1
            state.skip.add(index)
            if state.bad >= self.config.bad_chunks_limit:
                self._ban(state)
            return Outcome.BAD
        state.limit = min(self.config.max_in_flight, state.limit + 1)
        self.counts["accepted"] += 1
        self._missing.discard(index)
        self._requestable.discard(index)
        for other in self._asked.pop(index, set()):
            other_state = self._holders[other]
            other_state.in_flight.pop(index, None)
            self._pending_cancels.append(Cancel(other, index))
            self.counts["cancelled"] += 1
        for other_state in self._holders.values():
            other_state.late.discard(index)
            other_state.skip.discard(index)
        return Outcome.ACCEPTED

    def declined(self, holder: str, index: int, now: float) -> None:
        """``holder`` answered that it will not send ``index`` now (does not
        have it, or is busy): ask another, and ask this one less at once."""
        state = self._holders.get(holder)
        if state is None or index not in state.in_flight:
            return
        self.counts["declined"] += 1
        self._end_request(state, index)
        state.limit = max(1, state.limit // 2)
        self._skip_if_others_have(state, index)

    def substituted(self, holder: str, index: int, instead: int, now: float) -> bool:
        """``holder`` sends chunk ``instead`` in place of ``index``, which was
        asked of it (its super-seeding: ``index`` is out elsewhere already).
        The request for ``index`` ends without counting against the holder
        (asked of another next if another has it); ``instead`` takes its slot
        and deadline if it is still missing and not in flight there already.

        Args:
            holder: who answered.
            index: the chunk asked for.
            instead: the chunk it sends.
            now: monotonic seconds.

        Returns:
            Whether ``instead`` is wanted (``False``: cancel it at the holder).

        Raises:
            RemoteProtocolError: (``invalid_fields``) no such chunk.
        """
        if not (0 <= index < self.n_chunks and 0 <= instead < self.n_chunks):
            raise RemoteProtocolError(
                f"chunk {index} or {instead} of {self.n_chunks}", "invalid_fields"
            )
        state = self._holders.get(holder)
        if state is None or state.banned or index not in state.in_flight:
            return False
        deadline = state.in_flight[index]
        self.counts["substituted"] += 1
        self._end_request(state, index)
        self._skip_if_others_have(state, index)
        if instead not in self._missing or instead in state.in_flight:
            return False
        if instead not in state.has:
            self._add_has(state, instead)
        state.in_flight[instead] = max(deadline, now)
        state.late.discard(instead)
        self._asked.setdefault(instead, set()).add(holder)
        self._requestable.discard(instead)
        return True

    # -- time -------------------------------------------------------------------

    def poll(self, now: float) -> list[Request | Cancel]:
        """Give up overdue requests, then fill every free slot.

        Args:
            now: monotonic seconds.

        Returns:
            Cancels (endgame copies no longer wanted) then new requests, in
            the order to send them.
        """
        out: list[Request | Cancel] = list(self._pending_cancels)
        self._pending_cancels.clear()
        for state in self._holders.values():
            for index, deadline in list(state.in_flight.items()):
                if deadline <= now:
                    self.counts["timeouts"] += 1
                    self._end_request(state, index)
                    state.late.add(index)
                    state.limit = max(1, state.limit // 2)
                    self._skip_if_others_have(state, index)
        out.extend(self._assign(now))
        return out

    def next_deadline(self) -> float | None:
        """The earliest request deadline (monotonic seconds), or ``None``."""
        deadlines = [d for s in self._holders.values() for d in s.in_flight.values()]
        return min(deadlines) if deadlines else None

    # -- state for the views -------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Every chunk accepted (or done at the start)."""
        return not self._missing

    @property
    def missing_count(self) -> int:
        """Chunks still missing."""
        return len(self._missing)

    def unavailable(self) -> list[int]:
        """Missing chunks no usable holder has (the download waits for one)."""
        return sorted(i for i in self._missing if self._availability[i] == 0)

    def holders(self) -> dict[str, dict[str, int | bool]]:
        """Per holder: ``chunks`` it has, ``in_flight``, ``limit``, ``bad``,
        ``banned`` (for ``/files`` and tests)."""
        return {
            name: {
                "chunks": len(s.has),
                "in_flight": len(s.in_flight),
                "limit": s.limit,
                "bad": s.bad,
                "banned": s.banned,
            }
            for name, s in self._holders.items()
        }

    # -- inside -------------------------------------------------------------------

    def _holder(self, holder: str) -> _Holder:
        state = self._holders.get(holder)
        if state is None:
            state = self._holders[holder] = _Holder(holder, self.config.max_in_flight)
        return state

    def _add_has(self, state: _Holder, index: int) -> None:
        state.has.add(index)
        self._holders_of.setdefault(index, set()).add(state.name)
        if not state.banned:
            self._availability[index] += 1

    def _forget_has(self, state: _Holder, index: int) -> None:
        state.has.discard(index)
        self._holders_of[index].discard(state.name)
        if not state.banned:
            self._availability[index] -= 1

    def _end_request(self, state: _Holder, index: int) -> None:
        """Free ``state``'s slot for ``index``; the chunk is requestable again
        if it is missing and asked of nobody else."""
        if state.in_flight.pop(index, None) is None:
            return
        asked = self._asked.get(index)
        if asked is not None:
            asked.discard(state.name)
            if not asked:
                del self._asked[index]
        if index in self._missing and index not in self._asked:
            self._requestable.add(index)

    def _skip_if_others_have(self, state: _Holder, index: int) -> None:
        """Ask ``index`` of another holder next, unless none other has it."""
        others = self._holders_of.get(index, set()) - {state.name}
        if any(not self._holders[o].banned and index not in self._holders[o].skip for o in others):
            state.skip.add(index)

    def _ban(self, state: _Holder) -> None:
        state.banned = True
        self.counts["holders_banned"] += 1
        for index in list(state.in_flight):
            self._end_request(state, index)
        state.late.clear()
        for index in state.has:
            self._availability[index] -= 1

    def _usable(self, state: _Holder, index: int) -> bool:
        if index not in state.skip:
            return True
        # Skipped after a timeout or a "no": still ask it if nobody else can.
        return not any(
            not self._holders[o].banned and index not in self._holders[o].skip
            for o in self._holders_of.get(index, set()) - {state.name}
        )

    def _assign(self, now: float) -> list[Request]:
        out: list[Request] = []
        deadline = now + self.config.request_timeout_s
        names = sorted(self._holders)
        self._rng.shuffle(names)
        progressed = True
        while progressed:
            progressed = False
            for name in names:
                state = self._holders[name]
                if state.banned or len(state.in_flight) >= state.limit:
                    continue
                index = self._pick(state)
                if index is None:
                    continue
                state.in_flight[index] = deadline
                state.late.discard(index)
                self._asked.setdefault(index, set()).add(name)
                self._requestable.discard(index)
                self.counts["requests"] += 1
                out.append(Request(name, index))
                progressed = True
        return out

    def _pick(self, state: _Holder) -> int | None:
        """The rarest chunk ``state`` can be asked for, or ``None``."""
        candidates = [i for i in state.has & self._requestable if self._usable(state, i)]
        if not candidates and self._missing and not self._requestable:
            copies = self.config.endgame_copies
            candidates = [
                i
                for i in state.has & self._missing
                if len(self._asked.get(i, ())) < copies
                and state.name not in self._asked.get(i, ())
                and i not in state.skip
            ]
        if not candidates:
            return None
        availability, rank = self._availability, self._rank
        return min(candidates, key=lambda i: (availability[i], rank[i]))
