"""The history store as the protocol core sees it, and an in-memory one.

:class:`HistoryStore` is the interface the node's protocol code uses to reach
its store: counters, the rooms' lines within the history window, and the
first key seen with each name (trust on first use).  Two implementations
keep the same rules:

* :class:`p2pchat.store.Store`, SQLite on disk (or ``:memory:``), for the
  product: durable own lines, one node per data directory;
* :class:`MemoryStore` here: plain Python containers, no I/O, no locks, for
  the core's tests and the simulator (``tests/test_store.py`` runs the same
  rule tests against both).

Conventions shared by both: clock values (``hlc``) are integers,
microseconds since the Unix epoch; ``now_s`` arguments are wall-clock
seconds.  A room's lines are ordered by ``(hlc, origin, line)``.  The window
holds a room's lines younger than ``max_age_s`` and at most the newest
``max_lines`` of them; lines more than ``wire.MAX_CLOCK_SKEW_S`` ahead are
dropped by :meth:`HistoryStore.prune`.
"""

from __future__ import annotations

import bisect
import itertools
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol

from p2pchat import history, wire

DEFAULT_MAX_NAMES = 10_000
"""Most names the first-key table keeps (see :meth:`HistoryStore.remember_name`)."""


class HistoryStore(Protocol):
    """What the protocol code asks of a node's store (see the module docstring)."""

    max_age_s: float
    max_lines: int

    @property
    def last_hlc(self) -> int:
        """The highest clock value of our own lines so far (µs), 0 at first."""
        ...

    def next_seq(self) -> int:
        """The next sequence number of a flooded message of ours (strictly increasing)."""
        ...

    def next_line(self, room: str) -> int:
        """The number our next line in ``room`` will carry (not reserved)."""
        ...

    def add_own(self, msg: wire.Chat) -> None:
        """Keep a line of ours (durably, before it is sent, where the store can)."""
        ...

    def add(self, msg: wire.Chat) -> bool:
        """Keep a received line; True if its id was new."""
        ...

    def flush(self) -> None:
        """Write what waits in memory (nothing to do for a memory store)."""
        ...

    def first_key(self, name: str) -> str | None:
        """The first public key (hex) seen with ``name``, or None."""
        ...

    def remember_name(
        self, name: str, key: str, keep: Callable[[], Collection[str]] | None = None
    ) -> None:
        """Keep ``key`` as the first key of ``name`` unless one is kept; when the
        table is full, the least recently remembered or touched names go first,
        never those ``keep()`` returns."""
        ...

    def touch_name(self, name: str) -> None:
        """Mark ``name`` as recently used (evicted last)."""
        ...

    def holds(self, msg: wire.Chat) -> bool:
        """True if ``msg`` (by id) is held."""
        ...

    def has_line(self, room: str, origin: str, line: int) -> bool:
        """True if line number ``line`` of ``origin`` in ``room`` is held."""
        ...

    def line_id(self, room: str, origin: str, line: int) -> str | None:
        """The id of the line numbered ``line`` of ``origin`` in ``room``, or None."""
        ...

    def replace(self, old_id: str, msg: wire.Chat) -> None:
        """Keep ``msg`` instead of the line ``old_id`` (an equivocation resolved)."""
        ...

    def count(self, room: str) -> int:
        """How many lines of ``room`` are held."""
        ...

    def floor(self, room: str, now_s: float) -> int:
        """The lowest clock value the window of ``room`` takes (µs), never above ``now_s``."""
        ...

    def summary(self, room: str, max_origins: int = wire.MAX_SYNC_ORIGINS) -> list[wire.Have]:
        """Our version vector of ``room`` for a ``sync`` (runs from each origin's lowest line)."""
        ...

    def run_ids(self, room: str, origin: str, lo: int, hi: int) -> list[str] | None:
        """The ids of ``origin``'s lines ``lo..hi``, in line order, or None unless all held."""
        ...

    def top_lines(self, room: str) -> dict[str, int]:
        """Per origin with numbered lines in ``room``, the highest line number held."""
        ...

    def missing(
        self, room: str, have: Mapping[str, tuple[int, int]], since_hlc: int, limit: int
    ) -> list[str]:
        """Ids of the numbered lines with clock >= ``since_hlc`` that a peer with
        version vector ``have`` may lack: the newest ``limit``, oldest first."""
        ...

    def get(self, ids: Sequence[str]) -> list[wire.Chat]:
        """The lines with these ids, in the order given; unknown ids skipped."""
        ...

    def recent(self, room: str, n: int) -> list[wire.Chat]:
        """The last ``n`` lines of ``room`` in the agreed order, oldest first."""
        ...

    def topic(self, room: str) -> wire.Chat | None:
        """The topic line of ``room`` that sorts last by ``(hlc, origin,
        line)`` (the room's current topic; its text "" if it cleared it), or
        None if no topic line is held."""
        ...

    def offers(self, room: str, n: int) -> list[wire.Chat]:
        """The last ``n`` lines of ``room`` that offer a file (``offer`` set),
        in the agreed order, oldest first."""
        ...

    def prune(self, now_s: float) -> int:
        """Drop the lines outside the window (and too far ahead); returns how many."""
        ...

    def close(self) -> None:
        """Release the store.  Idempotent."""
        ...


def newest_missing(
    rows: Iterable[tuple[str, str, int]], have: Mapping[str, tuple[int, int]], limit: int
) -> list[str]:
    """Of numbered lines given as ``(id, origin, line)``, newest first, the
    ids a peer with version vector ``have`` (origin -> (lo, hi)) may lack: of
    an origin it does not list, or numbered outside its run; the newest
    ``limit`` of them, returned oldest first (both stores answer ``missing``
    with it)."""
    out: list[str] = []
    for msg_id, origin, line in rows:
        run = have.get(origin)
        if run is None or line < run[0] or line > run[1]:
            out.append(msg_id)
            if len(out) >= limit:
                break
    out.reverse()
    return out


_Key = tuple[int, str, int, str]  # (hlc, origin, line, id): the agreed order, then id


class MemoryStore:
    """A :class:`HistoryStore` in plain Python containers: no I/O, no locks
    (the caller serialises access, as the core does), nothing kept after the
    object is gone.

    Args:
        max_age_s: the window's age limit, seconds.
        max_lines: the window's size limit, lines per room.
        max_names: most names the first-key table keeps.
    """

    def __init__(
        self,
        max_age_s: float = 7 * 86400.0,
        max_lines: int = 10_000,
        max_names: int = DEFAULT_MAX_NAMES,
    ) -> None:
        self.max_age_s = max_age_s
        self.max_lines = max_lines
        self.max_names = max_names
        self._seq = 0
        self._last_hlc = 0
        self._own_lines: dict[str, int] = {}
        self._lines: dict[str, wire.Chat] = {}  # id -> line
        self._order: dict[str, list[_Key]] = {}  # room -> keys in the agreed order
        self._numbered: dict[tuple[str, str], dict[int, list[str]]] = {}  # (room, origin)
        self._topics: dict[str, list[_Key]] = {}  # room -> its topic lines' keys, in order
        self._offers: dict[str, list[_Key]] = {}  # room -> its file offer lines' keys, in order
        self._names: OrderedDict[str, str] = OrderedDict()  # least recently used first
        self.closed = False

    # -- counters ---------------------------------------------------------------------

    @property
    def last_hlc(self) -> int:
        """The highest clock value of our own lines so far (µs), 0 at first."""
        return self._last_hlc

    @property
    def ephemeral(self) -> bool:
        """Always True: nothing outlives the object."""
        return True

    def next_seq(self) -> int:
        """The next sequence number of a flooded message of ours."""
        self._seq += 1
        return self._seq

    def next_line(self, room: str) -> int:
        """The number our next line in ``room`` will carry (not reserved)."""
        return self._own_lines.get(room, 0) + 1

    # -- lines ------------------------------------------------------------------------

    def _insert(self, msg: wire.Chat) -> bool:
        if msg.id in self._lines:
            return False
        self._lines[msg.id] = msg
        bisect.insort(self._order.setdefault(msg.room, []), _key(msg))
        if msg.topic:
            bisect.insort(self._topics.setdefault(msg.room, []), _key(msg))
        if msg.offer is not None:
            bisect.insort(self._offers.setdefault(msg.room, []), _key(msg))
        if msg.line > 0:
            by_line = self._numbered.setdefault((msg.room, msg.origin), {})
            by_line.setdefault(msg.line, []).append(msg.id)
        return True

    def _delete(self, msg_id: str) -> None:
        msg = self._lines.pop(msg_id, None)
        if msg is None:
            return
        order = self._order[msg.room]
        i = bisect.bisect_left(order, _key(msg))
        if i < len(order) and order[i][3] == msg_id:
            del order[i]
        if msg.topic:
            topics = self._topics[msg.room]
            topics.remove(_key(msg))
            if not topics:
                del self._topics[msg.room]
        if msg.offer is not None:
            offers = self._offers[msg.room]
            offers.remove(_key(msg))
            if not offers:
                del self._offers[msg.room]
        if msg.line > 0:
            by_line = self._numbered[(msg.room, msg.origin)]
            ids = by_line[msg.line]
            ids.remove(msg_id)
            if not ids:
                del by_line[msg.line]
            if not by_line:
                del self._numbered[(msg.room, msg.origin)]

    def add_own(self, msg: wire.Chat) -> None:
        """Keep a line of ours."""
        self._insert(msg)
        self._own_lines[msg.room] = msg.line
        self._last_hlc = max(self._last_hlc, msg.hlc)

    def add(self, msg: wire.Chat) -> bool:
        """Keep a received line; True if its id was new."""
        return not self.closed and self._insert(msg)

    def flush(self) -> None:
        """Nothing waits: every line is kept at once."""

    def holds(self, msg: wire.Chat) -> bool:
        """True if ``msg`` (by id) is held."""
        return msg.id in self._lines

    def has_line(self, room: str, origin: str, line: int) -> bool:
        """True if line number ``line`` of ``origin`` in ``room`` is held."""
        return line in self._numbered.get((room, origin), {})

    def line_id(self, room: str, origin: str, line: int) -> str | None:
        """The (lowest) id held under ``origin``'s number ``line`` in ``room``, or None."""
        ids = self._numbered.get((room, origin), {}).get(line)
        return min(ids) if ids else None

    def replace(self, old_id: str, msg: wire.Chat) -> None:
        """Keep ``msg`` instead of the line ``old_id``."""
        self._delete(old_id)
        self._insert(msg)

    def count(self, room: str) -> int:
        """How many lines of ``room`` are held."""
        return len(self._order.get(room, ()))

    def floor(self, room: str, now_s: float) -> int:
        """The lowest clock value the window of ``room`` takes (µs): the age
        limit, or the clock of the oldest kept line once ``max_lines`` lines
        not in the future are held."""
        floor = max(0, int((now_s - self.max_age_s) * 1e6))
        order = self._order.get(room, [])
        # Keys at or below now: every key with hlc <= now sorts before (now + 1, ...).
        present = bisect.bisect_left(order, (int(now_s * 1e6) + 1, "", 0, ""))
        if present >= self.max_lines:
            floor = max(floor, order[present - self.max_lines][0])
        return floor

    def in_window(self, room: str, hlc: int, now_s: float) -> bool:
        """True if a line of ``room`` with clock ``hlc`` belongs in the window."""
        return hlc >= self.floor(room, now_s)

    def summary(self, room: str, max_origins: int = wire.MAX_SYNC_ORIGINS) -> list[wire.Have]:
        """Our version vector of ``room``: per origin with numbered lines, the
        run ``lo..hi`` held from its lowest line on and its digest, most
        recently active origins first, at most ``max_origins``."""
        out: list[tuple[int, wire.Have]] = []
        for (r, origin), by_line in self._numbered.items():
            if r != room or not by_line:
                continue
            numbers = sorted(by_line)
            lo = hi = numbers[0]
            for n in numbers[1:]:
                if n != hi + 1:
                    break
                hi = n
            run = [min(by_line[n]) for n in range(lo, hi + 1)]
            newest = max(self._lines[i].hlc for ids in by_line.values() for i in ids)
            hi_hlc = self._lines[min(by_line[hi])].hlc
            out.append((newest, wire.Have(origin, lo, hi, hi_hlc, history.run_digest(run))))
        out.sort(key=lambda t: (-t[0], t[1].origin))  # as the SQLite store: ties by origin
        return [h for _, h in out[:max_origins]]

    def top_lines(self, room: str) -> dict[str, int]:
        """Per origin with numbered lines in ``room``, the highest line number held."""
        return {o: max(by) for (r, o), by in self._numbered.items() if r == room and by}

    def run_ids(self, room: str, origin: str, lo: int, hi: int) -> list[str] | None:
        """The ids of ``origin``'s lines ``lo..hi``, in line order, or None
        unless every one of them is held."""
        by_line = self._numbered.get((room, origin), {})
        if any(n not in by_line for n in range(lo, hi + 1)):
            return None
        return [min(by_line[n]) for n in range(lo, hi + 1)]

    def missing(
        self, room: str, have: Mapping[str, tuple[int, int]], since_hlc: int, limit: int
    ) -> list[str]:
        """Ids of the numbered lines of ``room`` with clock >= ``since_hlc``
        that a peer with version vector ``have`` may lack: the newest
        ``limit`` of them, oldest first."""
        newest_first = itertools.takewhile(
            lambda k: k[0] >= since_hlc, reversed(self._order.get(room, []))
        )
        return newest_missing(((k[3], k[1], k[2]) for k in newest_first if k[2] > 0), have, limit)

    def get(self, ids: Sequence[str]) -> list[wire.Chat]:
        """The lines with these ids, in the order given; unknown ids skipped."""
        return [self._lines[i] for i in ids if i in self._lines]

    def recent(self, room: str, n: int) -> list[wire.Chat]:
        """The last ``n`` lines of ``room`` in the agreed order, oldest first."""
        order = self._order.get(room, [])
        return [self._lines[k[3]] for k in order[max(0, len(order) - n) :]]

    def topic(self, room: str) -> wire.Chat | None:
        """The topic line of ``room`` that sorts last by ``(hlc, origin,
        line)`` (then id), or None if none is held."""
        topics = self._topics.get(room)
        return self._lines[topics[-1][3]] if topics else None

    def offers(self, room: str, n: int) -> list[wire.Chat]:
        """The last ``n`` file offer lines of ``room``, oldest first."""
        offers = self._offers.get(room, [])
        return [self._lines[k[3]] for k in offers[max(0, len(offers) - n) :]]

    def prune(self, now_s: float) -> int:
        """Drop the lines older than the window, beyond the newest
        ``max_lines`` of their room, or more than ``wire.MAX_CLOCK_SKEW_S``
        ahead of ``now_s``.  Returns how many."""
        cutoff = int((now_s - self.max_age_s) * 1e6)
        ahead = int((now_s + wire.MAX_CLOCK_SKEW_S) * 1e6)
        doomed = [
            k[3] for order in self._order.values() for k in order if k[0] < cutoff or k[0] > ahead
        ]
        for msg_id in doomed:
            self._delete(msg_id)
        deleted = len(doomed)
        for order in self._order.values():
            excess = len(order) - self.max_lines
            if excess > 0:
                for k in list(order[:excess]):
                    self._delete(k[3])
                deleted += excess
        return deleted

    # -- names ------------------------------------------------------------------------

    def first_key(self, name: str) -> str | None:
        """The first public key (hex) seen with ``name``, or None."""
        return self._names.get(name)

    def remember_name(
        self, name: str, key: str, keep: Callable[[], Collection[str]] | None = None
    ) -> None:
        """Keep ``key`` as the first key of ``name`` unless one is kept; past
        ``max_names``, the least recently remembered or touched names go
        first (a tenth of the table at a time), never those ``keep()`` returns."""
        if name in self._names:
            return
        self._names[name] = key
        if len(self._names) > self.max_names:
            kept = {name, *(keep() if keep else ())}
            excess = len(self._names) - self.max_names + self.max_names // 10
            victims = [n for n in self._names if n not in kept][:excess]
            for n in victims:
                del self._names[n]

    def touch_name(self, name: str) -> None:
        """Mark ``name`` as recently used (evicted last)."""
        if name in self._names:
            self._names.move_to_end(name)

    def name_count(self) -> int:
        """How many names the first-key table holds."""
        return len(self._names)

    def close(self) -> None:
        """Nothing to release; further received lines are not kept."""
        self.closed = True

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _key(msg: wire.Chat) -> _Key:
    return (msg.hlc, msg.origin, msg.line, msg.id)
