"""The bounded overlay: which peers a node links to (HyParView's two views).

Leitão, Pereira, Rodrigues, "HyParView: a membership protocol for reliable
gossip-based broadcast", DSN 2007.  A node keeps a small *active view* (the
peers it has links to, and broadcasts over) and a larger *passive view* (peers
it knows the address of, from mDNS, ``--peer`` or presence, to repair from).
Without it every node linked to every node mDNS showed it: a full mesh, and an
idle room's presences flooded over N-1 links at every node.

The rules kept from the paper, and what this LAN version changes:

* **Fill** (the paper's join and neighbour request): while the active view is
  below ``target``, dial random passive peers, at most ``max_pending`` at
  once.  A link that fails (not one we dropped ourselves) is replaced by one
  random passive peer even at or above the target (below ``max_active``):
  the paper's fixed-size active view,
  which is what keeps the overlay connected when a node that joined two parts
  dies.
* **Own choice**: at least ``min_outbound`` of the links are ones the node
  dialled itself (to random known peers), whatever came in: peers that dial
  a node first cannot be all its links (an eclipse by inbound links).
* **Accept**: an inbound link is taken while the active view holds fewer than
  ``max_active``.  Beyond that, as the paper does on a join to a full view, it
  is taken and a random other *inbound* link is dropped (links this node
  dialled are never dropped for a newcomer, so a peer that dials many times
  cannot push out the links this node chose); at most one such drop per
  ``evict_interval_s``, and a newcomer beyond that is refused with ``busy``
  and dials someone else.  The dropped peer is below its target at once and
  dials another passive peer: newcomers always get in.
* **Merge**: a passive peer known for ``merge_after_s`` that is not a member
  of the room (nothing of it heard, so it is in another part of the room) is
  dialled even when the active view is at the target, one at a time, at most
  one such dial per ``merge_interval_s`` (a newcomer is not one: its join
  reaches every node through its first links): two parts that mDNS shows each other but that
  formed apart (nodes started together) join.  The paper's shuffle, which
  refreshes the passive views, is not needed: mDNS and presences keep them
  fresh.
* **Passive view**: at most ``max_passive`` peers; when full, a random
  non-static peer gives way (the paper drops a random one).  A peer whose
  dial failed waits ``retry_s`` (doubled per failure, at most ``retry_max_s``)
  before it is picked again, and after ``max_failures`` in a row it is
  forgotten (mDNS or a presence brings it back if it is alive).

All random choices come from the ``random.Random`` passed in; time is passed
in (seconds, any monotonic origin).  Pure: no sockets, threads or clock.  The
node (``p2pchat/node.py``) calls it under its lock, keyed by node id.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Container, Iterable
from dataclasses import dataclass, field

from p2pchat.addrs import family, prefer

DEFAULT_TARGET = 5
"""Links a node dials up to: HyParView's log N + c (the paper's active view
is 5 for 10,000 nodes).  Inbound links come on top: in a room started all at
once a node ends with about 8 (in memory, 60 to 200 nodes), at most
``DEFAULT_MAX_ACTIVE``."""

DEFAULT_MAX_ACTIVE = 12
"""Most links a node holds (inbound beyond it: one dropped, or ``busy``)."""

DEFAULT_MAX_PASSIVE = 64
"""Most known peers kept to repair from."""

DEFAULT_MAX_PENDING = 2
"""Most dials of the overlay under way at once: a node dials a few peers,
then sees which inbound links came meanwhile, so a room started at once does
not end with every node at twice the target."""


@dataclass
class Known:
    """A peer of the passive view: where it listens and how dials to it went.

    Attributes:
        addrs: its addresses of either family, as text (at most 8 kept).
        port: its TCP port.
        static: named by ``--peer`` (never forgotten or given away).
        failures: dials in a row that failed.
        not_before: earliest time (seconds) to dial it again.
        since: when it was first learnt (seconds).
        answered: the address a dial of ours last reached it at ("" if none):
            dialled first next time.
    """

    addrs: list[str]
    port: int
    static: bool = False
    failures: int = 0
    not_before: float = float("-inf")
    since: float = float("-inf")
    answered: str = ""


@dataclass
class Overlay:
    """One node's active and passive views (see the module docstring).

    Args:
        me: this node's id (never put in a view).
        rng: the source of every random choice.
        target, max_active, max_passive: the views' sizes (``0 <= target <=
            max_active``).  A target of 0 dials nobody (no fill, no
            replacement, no merge): a fixed topology of static peers.
        retry_s, retry_max_s, max_failures: redial backoff of a passive peer.
        max_pending: most dials under way at once.
        min_outbound: links this node dialled that it keeps at least.
        evict_interval_s: least time between two links dropped for newcomers.
        merge_interval_s: least time between two dials of non-members above
            the target.
        merge_after_s: how long a peer must be known, and no member, before
            it is dialled as one.

    Thread: the caller's, under the caller's lock.
    """

    me: str
    rng: random.Random
    target: int = DEFAULT_TARGET
    max_active: int = DEFAULT_MAX_ACTIVE
    max_passive: int = DEFAULT_MAX_PASSIVE
    retry_s: float = 2.0
    retry_max_s: float = 30.0
    max_failures: int = 5
    max_pending: int = DEFAULT_MAX_PENDING
    min_outbound: int = 2
    evict_interval_s: float = 1.0
    merge_interval_s: float = 5.0
    merge_after_s: float = 10.0
    active: dict[str, bool] = field(default_factory=dict)  # peer -> inbound
    passive: dict[str, Known] = field(default_factory=dict)
    _replace: int = 0  # failed links still to replace (above the target)
    _last_evict: float = float("-inf")
    _last_merge: float = float("-inf")
    family: int = 0  # the address family (4 or 6) that answered our last dial

    def __post_init__(self) -> None:
        if not 0 <= self.target <= self.max_active:
            raise ValueError("need 0 <= target <= max_active")

    # -- what the node learns -----------------------------------------------------

    def learn(
        self, peer: str, addrs: Iterable[str], port: int, now: float, static: bool = False
    ) -> None:
        """A peer's address, from mDNS, ``--peer`` or a presence.  Kept in
        the passive view (its address updated if known); a full view gives
        way a random non-static peer, or ignores the newcomer if all are
        static.  A peer that is heard of again after failures keeps its
        backoff (an address is no proof it is up)."""
        if peer == self.me or not port:
            return
        addrs = list(addrs)[:8]
        if not addrs:
            return
        known = self.passive.get(peer)
        if known is not None:
            known.addrs, known.port = addrs, port
            known.static = known.static or static
            return
        if len(self.passive) >= self.max_passive:
            others = [p for p, k in self.passive.items() if not k.static]
            if not others:
                return
            del self.passive[self.rng.choice(sorted(others))]
        self.passive[peer] = Known(addrs, port, static, since=now)

    def forget(self, peer: str) -> None:
        """The peer is gone (an mDNS goodbye): out of the passive view
        unless static.  Its link, if any, stays until it ends by itself."""
        known = self.passive.get(peer)
        if known is not None and not known.static:
            del self.passive[peer]

    def address(self, peer: str) -> tuple[list[str], int] | None:
        """``(addrs, port)`` of a passive peer, or None.  The addresses in
        the order to dial them: the one that answered before first, then
        those of the family that answered our last dial (a node on a LAN
        with no IPv6 route does not wait on IPv6 addresses first, and the
        other way round)."""
        known = self.passive.get(peer)
        if known is None:
            return None
        return prefer(known.addrs, known.answered, self.family), known.port

    def answered(self, peer: str, host: str) -> None:
        """A dial of ours reached ``peer`` at ``host``: that address, and its
        family, are tried first from now on."""
        fam = family(host)
        if fam:
            self.family = fam
        known = self.passive.get(peer)
        if known is not None:
            known.answered = host

    # -- links ----------------------------------------------------------------------

    def room_for(self, now: float) -> bool:
        """May one more inbound link be taken now (below ``max_active``, or
        a drop for a newcomer is allowed)?  Used on a hello, before the link
        is up; :meth:`link_up` decides which link goes."""
        if len(self.active) < self.max_active:
            return True
        return now - self._last_evict >= self.evict_interval_s and any(self.active.values())

    def link_up(self, peer: str, inbound: bool, now: float) -> str | None:
        """A link to ``peer`` is up (or replaced another to it).

        Returns:
            the peer whose link to drop now to stay within ``max_active``
            (a random inbound one other than ``peer``), ``peer`` itself if
            it is inbound and no other may be dropped (refuse the newcomer),
            or None.  A link this node dialled is never refused: beyond the
            max it drops an inbound one (at once), or is kept if there is none
            (static peers may exceed the max).
        """
        self.active[peer] = inbound
        known = self.passive.get(peer)
        if known is not None:
            known.failures = 0
            known.not_before = float("-inf")
        if len(self.active) <= self.max_active:
            return None
        others = sorted(p for p, i in self.active.items() if i and p != peer)
        if not inbound:  # a link we dialled (a static peer, or dials that crossed)
            if not others:
                return None  # over the max by static peers only: kept
        elif not others or now - self._last_evict < self.evict_interval_s:
            del self.active[peer]
            return peer
        self._last_evict = now
        victim = self.rng.choice(others)
        del self.active[victim]
        return victim

    def link_down(self, peer: str, now: float, failed: bool = True) -> None:
        """The link to ``peer`` ended.  ``failed``: it was not this node that
        dropped it; it is then replaced even above the target (the peer stays
        in the passive view: a cut link is not a dead node)."""
        if self.active.pop(peer, None) is None:
            return
        if failed:
            self._replace = min(self._replace + 1, self.max_active)
        known = self.passive.get(peer)
        if known is not None:
            known.not_before = max(known.not_before, now + self.retry_s)

    def dial_failed(self, peer: str, now: float) -> None:
        """A dial to ``peer`` got no link: back off; forget it after
        ``max_failures`` in a row (unless static)."""
        known = self.passive.get(peer)
        if known is None:
            return
        known.failures += 1
        if known.failures >= self.max_failures and not known.static:
            del self.passive[peer]
            return
        wait = min(self.retry_s * 2 ** (known.failures - 1), self.retry_max_s)
        known.not_before = now + wait * self.rng.uniform(0.8, 1.2)

    # -- what to dial ---------------------------------------------------------------

    def to_dial(self, now: float, dialing: Collection[str], members: Container[str]) -> list[str]:
        """Passive peers to dial now, in random order.

        Args:
            now: the time.
            dialing: peers a dial is under way to (not picked again; they
                count as links to come).
            members: node ids heard in the room (their presence): a passive
                peer outside it is dialled even at the target (merge).

        Returns:
            peer ids (each at most once; none active or in ``dialing``).
        """
        if self.target == 0:
            return []
        pending = sum(1 for p in dialing if p not in self.active)
        have = len(self.active) + pending
        ready = sorted(
            p
            for p, k in self.passive.items()
            if p not in self.active and p not in dialing and k.not_before <= now
        )
        self.rng.shuffle(ready)
        outbound = sum(1 for inbound in self.active.values() if not inbound)
        # Own choices even in a full view: their links push out inbound ones.
        need_out = min(self.target, self.min_outbound) - outbound - pending
        want = max(0, self.target - have, need_out)
        if self._replace and ready:  # failed links: replaced even above the target
            want = max(want, min(self._replace, self.max_active - have))
            self._replace = 0
        want = min(want, max(0, self.max_pending - pending))
        picked = ready[:want]
        rest = ready[want:]
        if (
            have + len(picked) < self.max_active
            and pending == 0
            and now - self._last_merge >= self.merge_interval_s
        ):
            strangers = [
                p
                for p in rest
                if p not in members and now - self.passive[p].since >= self.merge_after_s
            ]
            if strangers:
                self._last_merge = now
                picked.append(strangers[0])
        return picked
