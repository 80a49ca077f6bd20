"""Broadcast: every flooded message through admission, then to every node once.

A flooded message from a link passes the admission pipeline
(``docs/protocol.md`` §6.1) and is then forwarded by the flood rule
(:mod:`p2pchat.flood`: hop limit, seen-cache) along the broadcast tree
(Plumtree, :mod:`p2pchat.tree`: eager push on tree links, ``ihave`` on the
others, ``graft``/``prune`` to repair and trim the tree), and delivered:
to the roster, to the screen in each origin's order, to the store.

Pure: no sockets, threads or clock (see :mod:`p2pchat.core.state`).
"""

from __future__ import annotations

from p2pchat import flood, wire
from p2pchat.core.actions import LinkId
from p2pchat.core.admission import BoundedMap
from p2pchat.core.antientropy import AntiEntropy
from p2pchat.core.direct import Directs
from p2pchat.core.membership import Membership
from p2pchat.core.state import MAX_ORIGINS, Shared, log
from p2pchat.tree import DEFAULT_IHAVE_DELAY_S, TreeState

MAX_TREE_BATCH = 256
"""Most ids one ``ihave`` or ``graft`` frame carries."""

PRESENCE_IHAVE_DELAY_S = 4.0
"""How long the ids of presences and joins may wait for a batched ``ihave``
(the ids of lines wait ``tree.DEFAULT_IHAVE_DELAY_S``, and take any waiting
presence ids along).  A presence is only a repair's worth of late: an idle
room of steady presences sent an ``ihave`` on every lazy link twice a second,
two thirds of its frames (the simulator)."""


class Broadcast:
    """The admission pipeline, the flood rule and the broadcast tree.

    Args:
        s: the core's shared state.
        members, history, directs: the parts a delivered message goes to.
    """

    def __init__(
        self, s: Shared, members: Membership, history: AntiEntropy, directs: Directs
    ) -> None:
        self.s = s
        self.members = members
        self.history = history
        self.directs = directs
        self.tree: TreeState[LinkId] | None = TreeState() if s.config.broadcast == "tree" else None
        self.announce_at: float | None = None  # when to send the batched ihaves
        self.link_buckets: dict[LinkId, flood.TokenBucket] = {}
        self.origin_buckets: BoundedMap[str, flood.TokenBucket] = BoundedMap(MAX_ORIGINS)

    # -- links ------------------------------------------------------------------------

    def link_up(self, link: LinkId, peer: wire.Hello, replaced: LinkId | None) -> None:
        """A link is up (``replaced``: the link to the same peer it replaces)."""
        if self.tree is None:
            return
        if replaced is not None:
            self.tree.link_down(replaced)
        if "tree" in peer.features:
            self.tree.link_up(link)

    def link_down(self, link: LinkId) -> None:
        """A link is gone."""
        if self.tree is not None:
            self.tree.link_down(link)
        self.link_buckets.pop(link, None)

    # -- received -----------------------------------------------------------------------

    def receive(self, link: LinkId, msg: wire.FloodMessage) -> None:
        """A flooded message from a link: the admission pipeline, in the one
        order ``docs/protocol.md`` §6.1 gives.  Every check runs before any
        state changes; a message that fails one changes nothing but counters.

        0. the link's token bucket (it bounds the work one link can cause);
        1. (decoded and validated by the shell: :func:`wire.decode_body`);
        2. :meth:`Shared.admit`: room, key and signature, own origin, clock,
           replay;
        3. duplicates: the seen-cache and the store (read only), then for a
           line, another line held under its origin and number
           (equivocation, resolved by :meth:`AntiEntropy.equivocation`);
        4. the origin's token bucket;
        5. only then: the seen-cache, the per-origin tables, the store,
           forwarding and delivery.
        """
        s = self.s
        now = s.now
        cfg = s.config
        bucket = self.link_buckets.get(link)
        if bucket is None:
            bucket = flood.TokenBucket(cfg.link_rate_per_s, cfg.link_burst, now)
            self.link_buckets[link] = bucket
        if not bucket.take(now):
            s.count_limited("link", str(link))
            return
        if msg.id in s.seen and msg.room == s.wire_room:
            # A copy of a message already taken: dropped unread (the first
            # copy passed every check).  Only this link's tree state changes.
            s.counts["duplicates_dropped"] += 1
            # Every kind prunes its origin's tree: an origin's join, its first
            # message, builds the tree its presences and lines then follow
            # (when only lines and presences pruned, the first presence of
            # every origin crossed every link a second time).
            tree = self.tree
            if tree is not None:
                origin = tree.duplicate(link, msg.id, now, msg.hops)
                if origin is not None:
                    s.send_msg(link, wire.Prune(origin=origin))
            return
        if s.admit(link, msg) is not None:
            return
        if isinstance(msg, wire.Chat) and msg.line > 0:
            if s.store.holds(msg):
                # Older than the seen-cache, but we hold it (catch-up, or before
                # a restart): a line is shown once, ever.
                s.seen.add(msg.id, now)
                s.counts["duplicates_dropped"] += 1
                return
            held = s.line_id(msg.origin, msg.line)
            if held is not None and held != msg.id:
                self.history.equivocation(msg, held)
                return
        ob = self.origin_buckets.get(msg.origin)
        if ob is not None and not ob.take(now):
            s.count_limited("origin", msg.origin)
            return
        # -- admitted: from here on, state changes.
        if ob is None:
            ob = flood.TokenBucket(cfg.origin_rate_per_s, 2 * cfg.origin_burst, now)
            ob.take(now)
            self.origin_buckets.put(msg.origin, ob)
        else:
            self.origin_buckets.move_to_end(msg.origin)
        s.admission.admitted(msg)
        self.directs.heard(msg)
        if isinstance(msg, wire.Chat) and msg.line > 1:
            self.history.check_gap(link, msg)  # before storing it: the store answers from memory
        self.forward(msg, link)

    def forward(self, msg: wire.FloodMessage, came_from: LinkId | None) -> None:
        """Forward ``msg`` by the flood rule and the tree, then deliver it
        (``came_from`` None: our own message)."""
        s = self.s
        now = s.now
        decision = flood.decide(msg, came_from, list(s.links.values()), s.seen, s.wire_room, now)
        if not decision.deliver:
            if decision.drop_reason != "duplicate":
                log.info("dropped %s %s: %s", wire.kind(msg), msg.id, decision.drop_reason)
            return
        if decision.forward is not None:
            frame = wire.encode_frame(decision.forward)
            targets: list[LinkId] = list(decision.to)
            tree = self.tree
            if tree is not None:
                split = tree.new_message(decision.forward, came_from, now)
                lazy = set(split.lazy)
                targets = [t for t in targets if t not in lazy]
                if lazy:
                    slow = isinstance(msg, wire.Presence | wire.Join)
                    self._announce_soon(PRESENCE_IHAVE_DELAY_S if slow else DEFAULT_IHAVE_DELAY_S)
            for target in targets:
                s.send(target, frame)
        self._deliver(msg, came_from is None)

    def _deliver(self, msg: wire.FloodMessage, own: bool) -> None:
        s = self.s
        if own:
            if isinstance(msg, wire.Chat):
                s.emit(s.message_event(msg, self_=True))
            return
        if isinstance(msg, wire.Direct) and msg.to == s.node_id:
            ev = self.directs.open(msg)
            if ev is not None:
                s.emit(ev)
        self.members.heard(msg)
        if isinstance(msg, wire.Chat):
            s.clock.observe(msg.hlc)
            if msg.line < 1:  # an unnumbered line: nothing to order it by
                self.history.store_line(msg)
                s.emit(s.message_event(msg, self_=False))
                return
            # Shown in its origin's order: held (up to ORDER_HOLD_S) while its
            # previous line is missing, and stored when shown (Shared.show).
            prev = msg.line > 1 and s.store.has_line(s.wire_room, msg.origin, msg.line - 1)
            s.hold_unstored(msg)
            s.show(s.order.offer(msg.origin, msg.line, msg, s.now, prev_held=prev))

    # -- the tree (Plumtree) ---------------------------------------------------------------

    def _announce_soon(self, delay_s: float = DEFAULT_IHAVE_DELAY_S) -> None:
        at = self.s.now + delay_s
        if self.announce_at is None or at < self.announce_at:
            self.announce_at = at
            self.s.wake = True

    def receive_tree(self, link: LinkId, peer: wire.Hello, msg: wire.TreeMessage) -> None:
        """An ``ihave``, ``graft`` or ``prune`` from a peer (``peer``: its hello)."""
        s = self.s
        tree = self.tree
        if tree is None or "tree" not in peer.features:
            log.info("ignored %s: tree broadcast not agreed", wire.kind(msg))
            return
        if isinstance(msg, wire.IHave):
            shortcut = tree.announced(msg.ids, link, s.seen, s.now, msg.hops)
            if shortcut is not None:
                # A shorter way to the origin (tree.py: dynamic tree optimisation).
                s.send_msg(shortcut.link, wire.Graft(ids=[shortcut.msg_id]))
            s.wake = True  # the graft deadlines may have moved
        elif isinstance(msg, wire.Graft):
            cached = tree.grafted(msg.ids, link)
            for m in cached:
                s.send_msg(link, m)
            if len(cached) < len(msg.ids):
                # Lines that fell out of the tree's cache (a busy minute) are
                # answered from the store: a graft is a node's repair path.
                have = {m.id for m in cached}
                for line in s.store.get([i for i in msg.ids if i not in have]):
                    s.send_msg(link, line)
        else:
            tree.pruned(link, msg.origin)

    def next_deadline(self) -> float | None:
        """When the tree wants a tick next (announcements, grafts), or None."""
        if self.tree is None:
            return None
        graft_at = self.tree.next_deadline()
        if self.announce_at is None:
            return graft_at
        return self.announce_at if graft_at is None else min(graft_at, self.announce_at)

    def timers(self) -> None:
        """Send the batched announcements once due, and the grafts that are due."""
        tree = self.tree
        if tree is None:
            return
        s = self.s
        now = s.now
        graft_at = tree.next_deadline()
        announce = self.announce_at is not None and now >= self.announce_at
        if not announce and (graft_at is None or now < graft_at):
            return
        if announce:
            self.announce_at = None
        for link, announced in tree.take_announcements().items():
            for i in range(0, len(announced), MAX_TREE_BATCH):
                batch = announced[i : i + MAX_TREE_BATCH]
                ihave = wire.IHave(ids=[a[0] for a in batch], hops=[a[1] for a in batch])
                s.send_msg(link, ihave)
        for link, ids in tree.due_grafts(now).items():
            for i in range(0, len(ids), MAX_TREE_BATCH):
                s.send_msg(link, wire.Graft(ids=ids[i : i + MAX_TREE_BATCH]))
