"""Tree broadcast (Plumtree): eager push on a spanning tree, lazy announcements elsewhere.

Leitão, Pereira, Rodrigues, "Epidemic Broadcast Trees", SRDS 2007.  Each link
is *eager* (new messages are pushed whole) or *lazy* (only their ids are
announced, in batched ``ihave`` frames).  Links start eager, so the first
messages flood; a node that receives a message twice prunes the link that
brought the copy (both ends make it lazy), and the eager links that remain form
a spanning tree.  A node that hears of an id on a lazy link and does not get
the message within ``graft_timeout_s`` grafts that link (asks for the message
and makes the link eager), which repairs the tree when a node or link fails.

This module is the pure state of one node: no sockets, time passed in.  The
node (``p2pchat/node.py``) calls it under its lock and performs the sends it
returns.  Links are any hashable objects.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from p2pchat.wire import FloodMessage

L = TypeVar("L", bound=Hashable)

DEFAULT_GRAFT_TIMEOUT_S = 1.0
"""How long an announced id may stay missing before its announcer is grafted."""

DEFAULT_IHAVE_DELAY_S = 0.5
"""How long announcements are gathered before a batched ``ihave`` is sent."""


@dataclass
class Split(Generic[L]):
    """Where one new message goes: pushed whole to ``eager``, announced to ``lazy``."""

    eager: list[L] = field(default_factory=list)
    lazy: list[L] = field(default_factory=list)


class TreeState(Generic[L]):
    """Plumtree state of one node.

    Args:
        graft_timeout_s: seconds an announced id may stay missing.
        cache_entries: messages kept to answer grafts (oldest dropped first).
        cache_age_s: seconds a message is kept to answer grafts.
    """

    def __init__(
        self,
        graft_timeout_s: float = DEFAULT_GRAFT_TIMEOUT_S,
        cache_entries: int = 4096,
        cache_age_s: float = 60.0,
    ) -> None:
        self.graft_timeout_s = graft_timeout_s
        self.cache_entries = cache_entries
        self.cache_age_s = cache_age_s
        self.eager: set[L] = set()
        self.lazy: set[L] = set()
        self._cache: OrderedDict[str, tuple[float, FloodMessage]] = OrderedDict()
        # id -> (deadline, announcers still to try, in order)
        self._missing: dict[str, tuple[float, list[L]]] = {}
        self._announce: dict[L, list[str]] = {}

    # -- links --------------------------------------------------------------------

    def link_up(self, link: L) -> None:
        """A tree-capable link came up: it starts eager."""
        self.eager.add(link)
        self.lazy.discard(link)

    def link_down(self, link: L) -> None:
        """A link went down: forget it everywhere."""
        self.eager.discard(link)
        self.lazy.discard(link)
        self._announce.pop(link, None)
        for _, announcers in self._missing.values():
            while link in announcers:
                announcers.remove(link)

    # -- messages -----------------------------------------------------------------

    def new_message(self, msg: FloodMessage, came_from: L | None, now: float) -> Split[L]:
        """A message seen for the first time (ours, or received on ``came_from``).

        Returns:
            The tree links to push it to and to announce it to (never
            ``came_from``).  The message is cached to answer grafts.
        """
        self._missing.pop(msg.id, None)
        self._cache[msg.id] = (now, msg)
        self._trim_cache(now)
        if came_from is not None and came_from in self.lazy:
            # It reached us over a lazy link (answering our graft): that link
            # is now part of the tree.
            self.lazy.discard(came_from)
            self.eager.add(came_from)
        split: Split[L] = Split(
            eager=[x for x in self.eager if x != came_from],
            lazy=[x for x in self.lazy if x != came_from],
        )
        for link in split.lazy:
            self._announce.setdefault(link, []).append(msg.id)
        return split

    def duplicate(self, came_from: L) -> bool:
        """A copy of a message already seen arrived on ``came_from``.

        Returns:
            True if a ``prune`` should be sent on that link (it was eager and
            is lazy from now on).
        """
        if came_from in self.eager:
            self.eager.discard(came_from)
            self.lazy.add(came_from)
            return True
        return False

    def pruned(self, link: L) -> None:
        """The peer on ``link`` sent ``prune``: announce to it from now on."""
        if link in self.eager:
            self.eager.discard(link)
            self.lazy.add(link)

    def announced(self, ids: list[str], link: L, seen: Container[str] | None, now: float) -> None:
        """The peer on ``link`` announced ``ids``.  Ids not in ``seen`` (a
        membership test: the seen-cache) are waited for, then grafted."""
        for msg_id in ids:
            if seen is not None and msg_id in seen:
                continue
            entry = self._missing.get(msg_id)
            if entry is None:
                self._missing[msg_id] = (now + self.graft_timeout_s, [link])
            elif link not in entry[1]:
                entry[1].append(link)
            if len(self._missing) > 4 * self.cache_entries:
                self._missing.pop(next(iter(self._missing)))

    def grafted(self, ids: list[str], link: L) -> list[FloodMessage]:
        """The peer on ``link`` sent ``graft``: push to it from now on, and
        return the cached messages it asked for."""
        self.lazy.discard(link)
        self.eager.add(link)
        return [self._cache[i][1] for i in ids if i in self._cache]

    # -- timers -------------------------------------------------------------------

    def due_grafts(self, now: float) -> dict[L, list[str]]:
        """Ids whose wait ran out, by the link to graft for them; each such link
        becomes eager.  An id whose announcer is tried is re-armed with the
        next announcer, if any."""
        out: dict[L, list[str]] = {}
        for msg_id, (deadline, announcers) in list(self._missing.items()):
            if deadline > now:
                continue
            if not announcers:
                del self._missing[msg_id]
                continue
            link = announcers.pop(0)
            out.setdefault(link, []).append(msg_id)
            self._missing[msg_id] = (now + self.graft_timeout_s, announcers)
            self.lazy.discard(link)
            self.eager.add(link)
        return out

    def take_announcements(self) -> dict[L, list[str]]:
        """The ids to announce, by lazy link; clears them."""
        out, self._announce = self._announce, {}
        return {link: ids for link, ids in out.items() if ids}

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
