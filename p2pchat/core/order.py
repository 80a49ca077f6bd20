"""Per-origin order on screen: a short hold for a line whose predecessor is missing.

Lines of one origin can reach a node out of order: a broadcast tree that
changes lets a later line overtake, and a node that takes an origin's first
lines by catch-up (anti-entropy, not forwarded live) forwards its later lines
at once, so two hops away line n+1 arrives live before line n arrives by
catch-up.  :class:`OriginOrder` decides when each line is *shown*:

* a line whose predecessor was shown (or is held by the node, or which is an
  origin's line 1) is shown at once, followed by any held lines it makes
  contiguous;
* a live line n+1 whose line n the node does not hold is held for at most
  ``hold_s`` (the node fetches the gap meanwhile); when n comes, live or by
  catch-up, n is shown in its place and then n+1;
* when the bound passes, the held line is shown (after every held line of its
  origin below it), and a line n that comes after a later line of its origin
  was shown is shown marked *earlier*, as catch-up lines are;
* a catch-up line of an origin with nothing held is shown at once, marked
  earlier (it is a line said while we were away);
* memory is bounded: at most ``max_per_origin`` lines held per origin and
  ``max_held`` in all; over a cap, the oldest held line is shown at once
  (with the lines of its origin below it), and counted in
  :attr:`OriginOrder.released_by_cap`.

The class is pure: no clock (``now`` is passed in, seconds of a monotonic
clock, never decreasing; a smaller ``now`` is taken as the largest seen), no
threads; the node calls it under its lock.  The store is not its business: the
node stores a held line when it is shown (``Shared.show``), so that a node that
stops meanwhile fetches it again after its restart.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_HOLD_S = 1.0
"""Longest a line waits for its origin's previous line before it is shown."""

DEFAULT_MAX_PER_ORIGIN = 512
"""Most lines held for one origin (a pasted block of 200 lines whose first
line is late fits)."""

DEFAULT_MAX_HELD = 4096
"""Most lines held in all."""

DEFAULT_MAX_ORIGINS = 4096
"""Most origins whose last shown line number is remembered (least recently
heard forgotten first; a forgotten origin's next line relies on the store)."""


@dataclass(frozen=True, slots=True)
class Release(Generic[T]):
    """A line to show now.

    Attributes:
        item: what the caller offered (the node passes its chat line).
        earlier: show it marked as an earlier line: it came by catch-up with
            nothing of its origin waiting for it, or a later line of its
            origin was shown before it (it came after the hold's bound).
        live: as offered (False: it came by catch-up; the caller may still
            mark an old one as earlier when it is shown in its place).
    """

    item: T
    earlier: bool
    live: bool = True


@dataclass(slots=True)
class _Held(Generic[T]):
    origin: str
    line: int
    item: T
    deadline: float
    live: bool


class OriginOrder(Generic[T]):
    """The lines held back so that each origin's lines are shown in order.

    Args:
        hold_s: the bound, in seconds: no line is held longer.
        max_per_origin, max_held: caps on the lines held for one origin and
            in all (each at least 1).
        max_origins: origins whose last shown line number is remembered.

    Raises:
        ValueError: a negative bound or a cap below 1.

    Not thread-safe: the caller serialises calls (the node holds its lock).
    """

    def __init__(
        self,
        hold_s: float = DEFAULT_HOLD_S,
        max_per_origin: int = DEFAULT_MAX_PER_ORIGIN,
        max_held: int = DEFAULT_MAX_HELD,
        max_origins: int = DEFAULT_MAX_ORIGINS,
    ) -> None:
        if hold_s < 0 or min(max_per_origin, max_held, max_origins) < 1:
            raise ValueError("the hold must be >= 0 s and every cap >= 1")
        self.hold_s = hold_s
        self.max_per_origin = max_per_origin
        self.max_held = max_held
        self.max_origins = max_origins
        self.released_by_cap = 0
        """Lines shown before their bound because a cap was reached."""
        self.released_by_time = 0
        """Lines shown when their bound passed, their gap still open."""
        self._now = float("-inf")
        # Every held line, in the order of its deadline (= arrival + hold_s).
        self._held: OrderedDict[tuple[str, int], _Held[T]] = OrderedDict()
        self._by_origin: dict[str, dict[int, _Held[T]]] = {}
        self._top: OrderedDict[str, int] = OrderedDict()  # origin -> last line shown

    def __len__(self) -> int:
        """The number of lines held now."""
        return len(self._held)

    def last_shown(self, origin: str) -> int | None:
        """The highest line number of ``origin`` shown so far, or None if
        none was (or the origin was forgotten: see ``max_origins``)."""
        return self._top.get(origin)

    def held(self, origin: str) -> int:
        """The number of lines of ``origin`` held now."""
        return len(self._by_origin.get(origin, ()))

    def offer(
        self, origin: str, line: int, item: T, now: float, *, prev_held: bool, live: bool = True
    ) -> list[Release[T]]:
        """A line the node would show: decide whether it is shown now.

        Args:
            origin: the line's origin (node id).
            line: its line number in its origin's numbering (>= 1).
            item: returned in a :class:`Release` when the line is shown.
            now: seconds, monotonic.
            prev_held: the node holds the origin's line ``line - 1`` (in its
                store): then ``line`` follows a line that was shown already.
            live: False for a line that came by catch-up.

        Returns:
            The lines to show now, in order (possibly empty: ``item`` is
            held; possibly ``item`` followed by held lines it released).
            An ``(origin, line)`` already held is ignored (empty list).
        """
        now = self._clock(now)
        held = self._by_origin.get(origin)
        top = self._top.get(origin)
        if top is not None:
            self._top.move_to_end(origin)
        if not live and not held:
            self._shown(origin, line)
            return [Release(item, True, live)]
        if top is not None and line <= top:
            return [Release(item, True, live)]  # a later line of its origin was shown
        if held is not None and line in held:
            return []
        below = held is not None and min(held) < line
        if not below and (line == 1 or line - 1 == top or prev_held):
            out = [Release(item, False, live)]
            self._shown(origin, line)
            self._cascade(origin, out)
            return out
        entry = _Held(origin, line, item, now + self.hold_s, live)
        self._held[(origin, line)] = entry
        self._by_origin.setdefault(origin, {})[line] = entry
        out = []
        per_origin = self._by_origin[origin]
        while len(per_origin) > self.max_per_origin:
            self.released_by_cap += 1
            self._release_through(origin, min(per_origin), out)
        while len(self._held) > self.max_held:
            self.released_by_cap += 1
            first = next(iter(self._held.values()))
            self._release_through(first.origin, first.line, out)
        return out

    def tick(self, now: float) -> list[Release[T]]:
        """Show the lines held for ``hold_s`` or longer (each after the held
        lines of its origin below it).  ``now``: seconds, monotonic."""
        now = self._clock(now)
        out: list[Release[T]] = []
        while self._held:
            first = next(iter(self._held.values()))
            if first.deadline > now:
                break
            self.released_by_time += 1
            self._release_through(first.origin, first.line, out)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has a line to show (monotonic seconds), or
        None when nothing is held."""
        if not self._held:
            return None
        return next(iter(self._held.values())).deadline

    # -- internals ------------------------------------------------------------

    def _clock(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now

    def seed(self, origin: str, line: int) -> None:
        """Count ``origin``'s lines up to ``line`` as shown (a node that
        restarts: the lines its store holds were shown before), so that an
        older line that comes live is shown as an earlier line."""
        self._shown(origin, line)

    def _shown(self, origin: str, line: int) -> None:
        top = self._top.get(origin)
        if top is None or line > top:
            self._top[origin] = line
        self._top.move_to_end(origin)
        if len(self._top) > self.max_origins:
            # Forget the least recently heard origin with nothing held (an
            # origin with held lines stays: there are at most max_held).
            for old in self._top:
                if old not in self._by_origin:
                    del self._top[old]
                    break

    def _release_through(self, origin: str, line: int, out: list[Release[T]]) -> None:
        """Show every held line of ``origin`` up to ``line`` (in order), then
        the held lines that follow without a gap."""
        held = self._by_origin[origin]
        for n in sorted(k for k in held if k <= line):
            entry = held.pop(n)
            del self._held[(origin, n)]
            out.append(Release(entry.item, False, entry.live))
            self._shown(origin, n)
        self._cascade(origin, out)

    def _cascade(self, origin: str, out: list[Release[T]]) -> None:
        held = self._by_origin.get(origin)
        top = self._top.get(origin)
        if held is None:
            return
        while top is not None and top + 1 in held:
            top += 1
            del self._held[(origin, top)]
            entry = held.pop(top)
            out.append(Release(entry.item, False, entry.live))
        if top is not None:
            self._shown(origin, top)
        if not held:
            del self._by_origin[origin]
