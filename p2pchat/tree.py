"""Tree broadcast (Plumtree): eager push on a spanning tree, lazy announcements elsewhere.

Leitão, Pereira, Rodrigues, "Epidemic Broadcast Trees", SRDS 2007. Each link is
*eager* (new messages are pushed whole) or *lazy* (only their ids are
announced, in batched ``ihave`` frames). Links start eager, so the first
messages flood; a node that receives a message twice tells the peer that sent
the copy to stop pushing (``prune``), and the pushes that remain form a
spanning tree (not for a copy over the link that brought the first, nor for
one that came a shorter way, more hops left: see :meth:`TreeState.duplicate`).
Each end decides only what it receives: the paper makes a pruned link lazy
at both ends, and then a slow node, whose forwards of a burst's first lines
come second everywhere, is pruned by every neighbour and cut off (seen:
two of ten nodes got a 1000-line burst 1.5 s late, by graft). A node that hears
of an id on a lazy link and does not get the message within ``graft_timeout_s``
grafts that link (asks for the message, and to be pushed to from then on),
which repairs the tree when a node or link fails.

The tree forms from whichever copy of the first messages arrives first, which
on busy hosts is close to random: a tree twice as deep as the mesh.  So each
announced id carries the hop count its copy would arrive with, and a node that
got a message at least ``optimize_hops`` hops later than an announcing link
would have brought it grafts that link (the paper's section 3.8, "dynamic
tree optimization").  The paper prunes the old eager link at the same time;
here the next line prunes whichever of the two brings it second, as any
duplicate does: a prune sent at once races lines already on their way over
the old link, and both ends of the new link could end up lazy.  At most one
such graft per ``optimize_interval_s``, so that senders in different parts of
the mesh cannot make the tree flap on every line.

**One tree per origin.**  Eager and lazy are kept per origin: a ``prune``
names the origin of the message that came twice, and makes the link lazy for
that origin's messages only; a ``graft`` makes it eager again for the origins
of the messages it asks for.  One tree shared by every origin (as before)
falls apart when many speak: a copy of origin A's line that comes second
prunes a link that origin B's lines need, and at 100 nodes with 100 origins a
line reached 6 % of the room by push, the rest by graft a second later (the
simulator).  Presences prune their origin's tree like lines do.  A ``prune``
without an origin (from an older peer) makes the link lazy for every origin.
At most ``max_origins`` origins' trees are kept (the least recently heard
forgotten first: its links are all eager again).

This module is the pure state of one node: no sockets, time passed in.  The
node (``p2pchat/node.py``) calls it under its lock and performs the sends it
returns.  Links are any hashable objects.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from p2pchat.wire import Chat, FloodMessage

L = TypeVar("L", bound=Hashable)

DEFAULT_GRAFT_TIMEOUT_S = 1.0
"""How long an announced id may stay missing before its announcer is grafted."""

DEFAULT_IHAVE_DELAY_S = 0.5
"""How long announcements are gathered before a batched ``ihave`` is sent."""

IN_FLIGHT_S = 1.0
"""For this long after we prune a link, pushes still arriving on it were on
their way before the peer read our prune."""

DEFAULT_OPTIMIZE_HOPS = 1
"""An announcing link must be this many hops shorter than the one that pushed a
line for a shortcut to it."""

DEFAULT_OPTIMIZE_INTERVAL_S = 5.0
"""At most one shortcut per this many seconds."""

DEFAULT_MAX_ORIGINS = 4096
"""Most origins whose tree (the links pruned for them) is kept."""


@dataclass(frozen=True)
class Shortcut(Generic[L]):
    """A tree optimisation: graft ``link``, asking for ``msg_id``, which the
    node already has (a graft names at least one id); the copy that comes
    back is expected and prunes nothing."""

    link: L
    msg_id: str


@dataclass
class Split(Generic[L]):
    """Where one new message goes: pushed whole to ``eager``, announced to ``lazy``."""

    eager: list[L] = field(default_factory=list)
    lazy: list[L] = field(default_factory=list)


class TreeState(Generic[L]):
    """Plumtree state of one node, one tree per origin (see the module docstring).

    Args:
        graft_timeout_s: seconds an announced id may stay missing.
        cache_entries: messages kept to answer grafts (oldest dropped first).
        cache_age_s: seconds a message is kept to answer grafts.
        optimize_hops: hops an announcing link must save for a shortcut
            (0 switches the optimisation off).
        optimize_interval_s: seconds between two shortcuts, at least.
        max_origins: most origins whose tree is kept.
    """

    def __init__(
        self,
        graft_timeout_s: float = DEFAULT_GRAFT_TIMEOUT_S,
        cache_entries: int = 4096,
        cache_age_s: float = 60.0,
        optimize_hops: int = DEFAULT_OPTIMIZE_HOPS,
        optimize_interval_s: float = DEFAULT_OPTIMIZE_INTERVAL_S,
        max_origins: int = DEFAULT_MAX_ORIGINS,
    ) -> None:
        self.graft_timeout_s = graft_timeout_s
        self.cache_entries = cache_entries
        self.cache_age_s = cache_age_s
        self.optimize_hops = optimize_hops
        self.optimize_interval_s = optimize_interval_s
        self.max_origins = max_origins
        self.links: set[L] = set()
        # origin -> links whose peer pruned that origin's messages (we announce to them)
        self._pruned: OrderedDict[str, set[L]] = OrderedDict()
        self._pruned_all: set[L] = set()  # pruned with no origin named (older peers)
        # id -> (time, message as forwarded, link it came on or None if ours)
        self._cache: OrderedDict[str, tuple[float, FloodMessage, L | None]] = OrderedDict()
        self._last_shortcut = float("-inf")
        # (link, origin) we told to stop pushing that origin to us (prune sent, no graft since)
        self._muted: dict[tuple[L, str], float] = {}
        self._muted_by_link: dict[L, set[str]] = {}  # the same pairs, by link
        self._expected: OrderedDict[tuple[L, str], None] = OrderedDict()
        # id -> (deadline, announcers still to try, in order)
        self._missing: dict[str, tuple[float, list[L]]] = {}
        self._announce: dict[L, list[str]] = {}

    # -- views ------------------------------------------------------------------------

    def lazy_for(self, origin: str) -> set[L]:
        """The links we only announce ``origin``'s messages to."""
        return (self._pruned.get(origin, set()) | self._pruned_all) & self.links

    def eager_for(self, origin: str) -> set[L]:
        """The links we push ``origin``'s messages to."""
        return self.links - self.lazy_for(origin)

    def muted_for(self, origin: str) -> set[L]:
        """The links we asked to stop pushing ``origin``'s messages to us."""
        return {link for (link, o) in self._muted if o == origin}

    # -- links --------------------------------------------------------------------

    def link_up(self, link: L) -> None:
        """A tree-capable link came up: eager for every origin."""
        self.links.add(link)
        self._pruned_all.discard(link)
        for pruned in self._pruned.values():
            pruned.discard(link)

    def link_down(self, link: L) -> None:
        """A link went down: forget it everywhere."""
        self.links.discard(link)
        self._pruned_all.discard(link)
        for pruned in self._pruned.values():
            pruned.discard(link)
        self._announce.pop(link, None)
        self._unmute_link(link)
        for key in [k for k in self._expected if k[0] == link]:
            del self._expected[key]
        for _, announcers in self._missing.values():
            while link in announcers:
                announcers.remove(link)

    # -- messages -----------------------------------------------------------------

    def new_message(self, msg: FloodMessage, came_from: L | None, now: float) -> Split[L]:
        """A message seen for the first time (ours, or received on ``came_from``).

        Args:
            msg: the message as it is pushed on (its ``hops`` already counted
                down); announcements carry its ``hops``.
            came_from: the link it came on, None for our own.
            now: monotonic seconds.

        Returns:
            The tree links to push it to and to announce it to, on its
            origin's tree (never ``came_from``).  The message is cached to
            answer grafts.
        """
        self._missing.pop(msg.id, None)
        self._cache[msg.id] = (now, msg, came_from)
        self._trim_cache(now)
        if came_from is not None and (came_from, msg.id) in self._expected:
            # The answer to our graft: that peer pushes this origin to us again.
            self._unmute(came_from, msg.origin)
        lazy = self.lazy_for(msg.origin)
        if msg.origin in self._pruned:
            self._pruned.move_to_end(msg.origin)
        split: Split[L] = Split(
            eager=[x for x in self.links if x != came_from and x not in lazy],
            lazy=[x for x in lazy if x != came_from],
        )
        for link in split.lazy:
            self._announce.setdefault(link, []).append(msg.id)
        return split

    def duplicate(
        self, came_from: L, msg_id: str, now: float, hops: int | None = None
    ) -> str | None:
        """A copy of message ``msg_id``, already seen, arrived on ``came_from``
        with ``hops`` (its remaining hop count as it arrived; None: not known).

        Returns:
            The origin to send a ``prune`` for on that link (the peer is to
            stop pushing that origin's messages to us), or None.  What we
            push to the peer does not change (it prunes us if it wants).
            Nothing is pruned for the copy one of our grafts asked for, nor
            when the first copy came over a link we have pruned for that
            origin (a push that crossed our prune: pruning this link too would
            leave us with no link that pushes that origin to us), nor when
            the first copy did not come by push at all (it came by catch-up,
            or is no longer cached), nor when it came over this same link:
            that says nothing about the links.  Nor is a link pruned whose
            copy came a shorter way than the first (more ``hops`` left): it
            is nearer the origin, only slower now (a sender busy pushing a
            burst to every neighbour); pruning on arrival order alone let
            two nodes each prune their link to the sender for the other
            (each had its first copy from the other), a cycle that no push
            reached: every later line came by ``ihave`` and ``graft``, 1.5 s
            late (issue 12).  A peer that still pushes ``IN_FLIGHT_S`` after
            our prune is told again.
        """
        if (came_from, msg_id) in self._expected:
            del self._expected[(came_from, msg_id)]
            return None
        first = self._cache.get(msg_id)
        if first is None or first[2] == came_from:
            # A second copy over the link that brought the first is no sign
            # of a second path (a neighbour handing a newcomer the roster's
            # presences, a resend): pruning the one link that pushed it to
            # us cut nodes off from whole origins at start-up (issue 12).
            return None
        origin = first[1].origin
        muted_at = self._muted.get((came_from, origin))
        if muted_at is not None:
            if now - muted_at <= IN_FLIGHT_S:
                return None
            self._muted[(came_from, origin)] = now
            return origin
        if first[2] is not None and (first[2], origin) in self._muted:
            return None
        # The first copy arrived with one more hop than the cached one (counted
        # down for pushing on), our own with all of them.
        first_hops = first[1].hops + (first[2] is not None)
        if hops is not None and (hops > first_hops or hops <= 1):
            # ... nor a copy that could go no further: a roster handed to us
            # (presences resent with hop limit 1, protocol.md §9) is no push.
            return None
        self._mute(came_from, origin, now)
        return origin

    def pruned(self, link: L, origin: str = "") -> None:
        """The peer on ``link`` sent ``prune`` for ``origin`` (empty: for
        every origin): announce that origin's messages to it from now on."""
        if link not in self.links:
            return
        if not origin:
            self._pruned_all.add(link)
            return
        pruned = self._pruned.get(origin)
        if pruned is None:
            pruned = self._pruned[origin] = set()
            while len(self._pruned) > self.max_origins:
                self._pruned.popitem(last=False)
        else:
            self._pruned.move_to_end(origin)
        pruned.add(link)

    def announced(
        self,
        ids: list[str],
        link: L,
        seen: Container[str] | None,
        now: float,
        hops: list[int] | None = None,
    ) -> Shortcut[L] | None:
        """The peer on ``link`` announced ``ids``.  Ids not in ``seen`` (a
        membership test: the seen-cache) are waited for, then grafted.

        Args:
            hops: for each id, the ``hops`` its copy would carry on ``link``
                (remaining hop count: more is closer to the origin); None or
                empty from peers that do not send it.

        Returns:
            A shortcut that makes the tree shorter (the caller sends its
            graft), or None.
        """
        shortcut: Shortcut[L] | None = None
        for i, msg_id in enumerate(ids):
            if seen is not None and msg_id in seen:
                if shortcut is None and hops and len(hops) == len(ids):
                    shortcut = self._shorter(msg_id, link, hops[i], now)
                continue
            entry = self._missing.get(msg_id)
            if entry is None:
                self._missing[msg_id] = (now + self.graft_timeout_s, [link])
            elif link not in entry[1]:
                entry[1].append(link)
            if len(self._missing) > 4 * self.cache_entries:
                self._missing.pop(next(iter(self._missing)))
        return shortcut

    def _shorter(self, msg_id: str, link: L, hops: int, now: float) -> Shortcut[L] | None:
        """A shortcut if ``link`` would have brought ``msg_id``
        ``optimize_hops`` or more hops sooner than the eager link that did."""
        entry = self._cache.get(msg_id)
        if entry is None or self.optimize_hops <= 0:
            return None
        _, msg, parent = entry
        if not isinstance(msg, Chat):
            return None  # only lines steer shortcuts
        origin = msg.origin
        if (
            parent is None
            or parent == link
            or (parent, origin) in self._muted
            or (link, origin) not in self._muted
        ):
            return None
        # msg.hops was counted down once for pushing on: it arrived with one more.
        if hops - (msg.hops + 1) < self.optimize_hops:
            return None
        if now - self._last_shortcut < self.optimize_interval_s:
            return None
        self._last_shortcut = now
        self._unmute(link, origin)
        self._expect(link, msg_id)
        return Shortcut(link=link, msg_id=msg_id)

    def cached(self, msg_id: str) -> bool:
        """True if ``msg_id`` is in the cache that answers grafts."""
        return msg_id in self._cache

    def grafted(self, ids: list[str], link: L) -> list[FloodMessage]:
        """The peer on ``link`` sent ``graft``: push to it from now on (for
        the origins of the messages it asks for, and for every origin if it
        had pruned them all), and return the cached messages it asked for."""
        self._pruned_all.discard(link)
        out = []
        for i in ids:
            entry = self._cache.get(i)
            if entry is None:
                continue
            out.append(entry[1])
            pruned = self._pruned.get(entry[1].origin)
            if pruned is not None:
                pruned.discard(link)
        return out

    # -- timers -------------------------------------------------------------------

    def _expect(self, link: L, msg_id: str) -> None:
        """A copy of ``msg_id`` we asked ``link`` for: when it comes after all,
        it is no reason to prune the link we just grafted."""
        self._expected[(link, msg_id)] = None
        while len(self._expected) > self.cache_entries:
            self._expected.popitem(last=False)

    def _mute(self, link: L, origin: str, now: float) -> None:
        self._muted[(link, origin)] = now
        self._muted_by_link.setdefault(link, set()).add(origin)
        while len(self._muted) > 4 * self.max_origins:
            self._unmute(*next(iter(self._muted)))

    def _unmute(self, link: L, origin: str) -> None:
        if self._muted.pop((link, origin), None) is not None:
            origins = self._muted_by_link[link]
            origins.discard(origin)
            if not origins:
                del self._muted_by_link[link]

    def _unmute_link(self, link: L) -> None:
        for origin in self._muted_by_link.pop(link, ()):
            del self._muted[(link, origin)]

    def due_grafts(self, now: float) -> dict[L, list[str]]:
        """Ids whose wait ran out, by the link to graft for them; that peer is
        asked to push to us again (we no longer count it as pruned), and the
        copy it answers with prunes nothing even if the id came meanwhile.
        An id whose announcer is tried is re-armed with the next announcer,
        if any."""
        out: dict[L, list[str]] = {}
        for msg_id, (deadline, announcers) in list(self._missing.items()):
            if deadline > now:
                continue
            if not announcers:
                del self._missing[msg_id]
                continue
            link = announcers.pop(0)
            out.setdefault(link, []).append(msg_id)
            # Under load a line can be late rather than lost: the answer may then
            # come second, and pruning on it would undo the graft at once.
            self._expect(link, msg_id)
            self._missing[msg_id] = (now + self.graft_timeout_s, announcers)
        for link in out:
            # We ask that peer to push to us again (for the origin of the ids:
            # an ihave does not say which, so for every origin we had muted).
            self._unmute_link(link)
        return out

    def take_announcements(self) -> dict[L, list[tuple[str, int]]]:
        """The ids to announce, by lazy link, each with the ``hops`` its copy
        would carry on that link; clears them."""
        out, self._announce = self._announce, {}
        cache = self._cache
        return {
            link: [(i, cache[i][1].hops if i in cache else 0) for i in ids]
            for link, ids in out.items()
            if ids
        }

    def next_deadline(self) -> float | None:
        """The earliest graft deadline, or None."""
        return min((d for d, _ in self._missing.values()), default=None)

    def _trim_cache(self, now: float) -> None:
        cache = self._cache
        while cache and (
            len(cache) > self.cache_entries
            or next(iter(cache.values()))[0] < now - self.cache_age_s
        ):
            cache.popitem(last=False)
