"""Anti-entropy: the room's history kept alike on every node.

Each link with feature ``history`` on both ends trades ``sync`` frames (our
version vector of the room: per origin the run of line numbers held, and a
digest of each run) and answers them with ``lines`` batches, acknowledged
one at a time (``ack``), so a node that was away, or a part of the room cut
off for a while, fetches what it lacks (``docs/protocol.md`` §5.12-5.14).
A live line whose predecessor is missing is fetched after ``GAP_GRACE_S``.
Two lines signed by one origin under one number (equivocation) are resolved
here the same way on every node: the lower id is kept, both are offered.

Pure: no sockets, threads or clock (see :mod:`p2pchat.core.state`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from p2pchat import history, wire
from p2pchat.core.actions import LinkId
from p2pchat.core.admission import BoundedMap
from p2pchat.core.state import MAX_ORIGINS, Shared, log
from p2pchat.events import Notice

SYNC_INTERVAL_S = 30.0
"""How often a link repeats its anti-entropy ``sync`` when nothing asks sooner."""

SYNC_DEBOUNCE_S = 1.0
"""Least time between two ``sync`` frames on one link."""

GAP_GRACE_S = 0.3
"""How long a line may stay missing behind a later line of its origin before
it is fetched: lines overtake each other when the broadcast tree changes (a
sync sent while a burst is in flight fetches the rest of the burst a second
time), but the later line is held unshown for it (``ORDER_HOLD_S``), so the
fetch must come back within that bound: a node that took an origin's first
lines by catch-up forwards its next lines live at once, and its neighbours
fetch the first ones this way (measured on loopback: with a 1 s grace the
fetch came 1.2 s after the gap, too late, and the line was shown earlier)."""

PRUNE_INTERVAL_S = 10.0
"""How often the store drops lines that fell out of the history window."""

MAX_DIGEST_QUERIES = 64
"""Most runs one ``sync`` answer reads from the store to compare a peer's
digest over a run that differs from ours (the rest wait for a later sync)."""

MAX_GAPS = 1024
"""Most missing lines waiting to be fetched; the oldest give way."""


@dataclass
class LinkHistory:
    """Anti-entropy state of one link (feature ``history`` on both ends)."""

    push: history.Push = field(default_factory=history.Push)
    sync_sent_at: float = float("-inf")  # monotonic
    want_sync: bool = False
    answered_at: float = float("-inf")  # when we last answered the peer's sync
    deferred: wire.Sync | None = None  # the peer's latest sync, to answer at the next tick


class AntiEntropy:
    """Catch-up, gap fetch, pruning and equivocation (see the module docstring).

    Args:
        s: the core's shared state.
    """

    def __init__(self, s: Shared) -> None:
        self.s = s
        self.links: dict[LinkId, LinkHistory] = {}
        # (origin, line) missing behind a later line -> (when to fetch it, from which link)
        self.gaps: OrderedDict[tuple[str, int], tuple[float, LinkId]] = OrderedDict()
        self._summary_cache: tuple[int, list[wire.Have]] | None = None
        self._inserts_since_prune = 0
        self.next_prune = s.now + PRUNE_INTERVAL_S  # the node pruned at start
        # (origin, line) -> the line dropped for another under that number
        self.evidence: BoundedMap[tuple[str, int], wire.Chat] = BoundedMap(MAX_ORIGINS)
        s.store_released = self.store_line  # held live lines, stored when shown

    # -- links ------------------------------------------------------------------------

    def link_up(self, link: LinkId, peer: wire.Hello, replaced: LinkId | None) -> None:
        """A link is up (``replaced``: the link to the same peer it replaces)."""
        if replaced is not None:
            self.links.pop(replaced, None)
        if "history" not in peer.features:
            return
        state = self.links[link] = LinkHistory()
        self.send_sync(link, state)

    def link_down(self, link: LinkId) -> None:
        """A link is gone."""
        self.links.pop(link, None)

    # -- the store ----------------------------------------------------------------------

    def store_line(self, msg: wire.Chat) -> bool:
        """Keep a received line; True if it was new to the store."""
        if not self.s.store.add(msg):
            return False
        self.counted_insert()
        return True

    def counted_insert(self) -> None:
        """A line was stored: prune at the next tick once 10 % of the window
        (at least 10 lines) came in since the last prune, so the store
        stays within the window under any load."""
        self.s.store_version += 1
        self._inserts_since_prune += 1
        if self._inserts_since_prune > max(10, self.s.config.history_max_lines // 10):
            self.next_prune = 0.0

    def summary(self) -> list[wire.Have]:
        """Our version vector of the room, cached until the store changes."""
        cached = self._summary_cache
        if cached is not None and cached[0] == self.s.store_version:
            return cached[1]
        have = self.s.store.summary(self.s.wire_room)
        self._summary_cache = (self.s.store_version, have)
        return have

    # -- sync ---------------------------------------------------------------------------

    def send_sync(self, link: LinkId, state: LinkHistory) -> None:
        """Send our version vector on ``link``."""
        s = self.s
        state.sync_sent_at = s.now
        state.want_sync = False
        have = self.summary()
        since = s.store.floor(s.wire_room, s.wall)
        while True:
            body = wire.encode_body(wire.Sync(room=s.wire_room, since=since, have=have))
            if len(body) <= wire.MAX_FRAME_BYTES:
                break
            # 800 entries with digests and very long numbers can pass the frame
            # limit: the least recently active origins are left for later.
            have = have[: len(have) * 9 // 10]
        s.send(link, wire.HEADER.pack(len(body)) + body)

    def want_sync(self, link: LinkId) -> None:
        """Ask ``link`` for what we lack: now, or at the first tick the
        debounce allows."""
        state = self.links.get(link)
        if state is None:
            return
        if self.s.now - state.sync_sent_at >= SYNC_DEBOUNCE_S:
            self.send_sync(link, state)
        else:
            state.want_sync = True

    def timers(self) -> None:
        """Tick: commit received lines, prune, and the due syncs."""
        s = self.s
        now = s.now
        s.store.flush()
        self.gap_timers()
        if now >= self.next_prune:
            self.next_prune = now + PRUNE_INTERVAL_S
            self._inserts_since_prune = 0
            if s.store.prune(s.wall):
                s.store_version += 1
        for link, state in list(self.links.items()):
            if state.deferred is not None and now - state.answered_at >= SYNC_DEBOUNCE_S / 2:
                self.answer_sync(link, state, state.deferred)
            since = now - state.sync_sent_at
            if (state.want_sync and since >= SYNC_DEBOUNCE_S) or since >= SYNC_INTERVAL_S:
                self.send_sync(link, state)

    # -- gaps ---------------------------------------------------------------------------

    def check_gap(self, link: LinkId, msg: wire.Chat) -> None:
        """A live line whose predecessor we lack: fetch it unless it comes
        within ``GAP_GRACE_S`` (then it was only overtaken)."""
        key = (msg.origin, msg.line - 1)
        if key in self.gaps or self.s.has_line(*key):
            return
        self.gaps[key] = (self.s.now + GAP_GRACE_S, link)
        self.s.wake = True
        while len(self.gaps) > MAX_GAPS:
            self.gaps.popitem(last=False)

    def next_gap(self) -> float | None:
        """When the first missing line is due to be fetched, or None."""
        return next(iter(self.gaps.values()))[0] if self.gaps else None

    def gap_timers(self) -> None:
        """Fetch the lines still missing after their grace (a later line
        waits unshown for them, ``ORDER_HOLD_S``).  The link's sync debounce
        applies (a sync every 0.5 s during a burst whose lines overtake each
        other took the p99 latency of a 1000-line burst from 0.1 s to 2 s),
        except for an origin none of whose lines was shown yet (one that
        speaks as its first links come up, in a room whose links are new):
        then a quarter of it."""
        s = self.s
        now = s.now
        for key, (due, link) in list(self.gaps.items()):
            if due > now:
                break  # in the order of their due times (one grace for all)
            del self.gaps[key]
            if not s.has_line(*key):
                # From the link that showed the gap, or any other if it is gone.
                target = link if link in self.links else next(iter(self.links), None)
                state = self.links.get(target) if target is not None else None
                if target is None or state is None:
                    continue
                new_origin = s.order.last_shown(key[0]) is None
                if new_origin and now - state.sync_sent_at >= SYNC_DEBOUNCE_S / 4:
                    self.send_sync(target, state)
                else:
                    self.want_sync(target)

    # -- frames -------------------------------------------------------------------------

    def receive(self, link: LinkId, msg: wire.HistoryMessage) -> None:
        """A ``sync``, ``lines`` or ``ack`` frame (feature ``history``)."""
        s = self.s
        state = self.links.get(link)
        if state is None:
            log.info("ignored %s: history not agreed", wire.kind(msg))
            return
        if isinstance(msg, wire.Sync):
            if msg.room != s.wire_room:
                s.admission.refuse("wrong_room")
                return
            if s.now - state.answered_at < SYNC_DEBOUNCE_S / 2:
                # Answering scans the window: a peer asking faster than this
                # is answered at the next tick, with its latest sync only.
                state.deferred = msg
                return
            self.answer_sync(link, state, msg)
        elif isinstance(msg, wire.Ack):
            if state.push.acked(msg.batch):
                self.pump(link, state)
            else:
                log.info("ignored ack of batch %d: not in flight", msg.batch)
        else:
            if self.apply_lines(link, msg.lines):
                for other in self.links:
                    if other != link:
                        self.want_sync(other)
            s.send_msg(link, wire.Ack(batch=msg.batch))

    def answer_sync(self, link: LinkId, state: LinkHistory, msg: wire.Sync) -> None:
        """Queue for the peer what its ``sync`` says it lacks; ask for what
        it has that we lack."""
        s = self.s
        state.answered_at = s.now
        state.deferred = None
        floor = s.store.floor(s.wire_room, s.wall)
        have = {h.origin: (h.lo, h.hi) for h in msg.have}
        ids = s.store.missing(s.wire_room, have, max(msg.since, floor), s.config.history_max_lines)
        conflicts = self.conflicts(msg.have)
        if conflicts:
            listed = set(ids)
            ids += [i for i in conflicts if i not in listed]
        state.push.reset(ids)
        self.pump(link, state)
        ours = self.summary()
        if history.behind(ours, msg.have, floor) or self.waits_below(ours, msg.have):
            self.want_sync(link)

    def waits_below(self, ours: list[wire.Have], theirs: list[wire.Have]) -> bool:
        """True if the peer holds a line below our lowest of an origin whose
        later line waits unshown for its predecessor (a line lost before the
        neighbour we asked got it: ``behind`` sees only runs reaching past
        ours, so it was fetched at the next periodic sync, 30 s later)."""
        order = self.s.order
        if not len(order):
            return False
        lowest = {h.origin: h.lo for h in ours}
        return any(h.lo < lowest.get(h.origin, 0) and order.held(h.origin) for h in theirs)

    def conflicts(self, theirs: list[wire.Have]) -> list[str]:
        """The ids of our lines that a peer holds under the same numbers but
        other ids (its ``sync`` entry's digest differs from ours over the
        same run): an origin equivocated, and the two sides must trade them
        to keep the same one (``docs/protocol.md`` §7.2).  At most a window's
        worth."""
        s = self.s
        mine = {h.origin: h for h in self.summary()}
        out: list[str] = []
        queries = 0
        for h in theirs:
            m = mine.get(h.origin)
            if not h.digest or m is None or m.lo > h.lo or m.hi < h.hi:
                continue  # we do not hold every line of its run: nothing to compare
            run: list[str] | None = None
            if (m.lo, m.hi) == (h.lo, h.hi):
                ours = m.digest
            elif queries >= MAX_DIGEST_QUERIES:
                continue  # the rest at a later sync
            else:
                queries += 1
                run = s.store.run_ids(s.wire_room, h.origin, h.lo, h.hi)
                ours = history.run_digest(run) if run is not None else ""
            if not ours or ours == h.digest:
                continue
            if run is None:
                run = s.store.run_ids(s.wire_room, h.origin, h.lo, h.hi)
            out += run or []
            if len(out) >= s.config.history_max_lines:
                break
        return out[: s.config.history_max_lines]

    def pump(self, link: LinkId, state: LinkHistory) -> None:
        """Send the next catch-up batches the peer's acks allow."""
        for batch in state.push.batches(self.lines_by_id):
            self.s.counts["catchup_out"] += len(batch.lines)
            self.s.send_msg(link, batch)

    def lines_by_id(self, ids: Sequence[str]) -> list[wire.Chat]:
        """Lines for catch-up, by id: from the store, or the evidence of an
        equivocation (a line we dropped for another under its number)."""
        lines = self.s.store.get(ids)
        if len(lines) == len(ids) or not self.evidence:
            return lines
        found = {m.id: m for m in lines}
        wanted = set(ids)
        extra = {m.id: m for m in self.evidence.values() if m.id in wanted}
        return [m for m in (found.get(i) or extra.get(i) for i in ids) if m is not None]

    def apply_lines(self, link: LinkId, lines: list[wire.Chat]) -> bool:
        """Take catch-up lines; report the new ones as earlier lines.  Each
        line passes the checks of a live message (:meth:`Shared.admit`)
        before anything about it is kept.  Returns True if any was new."""
        s = self.s
        floor = s.store.floor(s.wire_room, s.wall)  # once per batch: it scans
        news = False
        for msg in lines:
            if msg.room != s.wire_room:
                s.admission.refuse("wrong_room")
                continue
            if msg.line < 1 or msg.id in s.seen:
                continue
            if msg.hlc < floor:
                continue  # too old for our window: neither kept nor shown
            if s.store.holds(msg) or s.admit(link, msg) is not None:
                continue
            held = s.line_id(msg.origin, msg.line)
            if held is not None and held != msg.id:
                self.equivocation(msg, held)
                continue
            s.admission.admitted(msg)
            s.clock.observe(msg.hlc)
            if self.store_line(msg):
                s.seen.add(msg.id, s.now)
                s.counts["catchup_in"] += 1
                news = True
                # An earlier line, unless a held live line of its origin waits
                # for it: then it is shown in its place, before that line (the
                # store is asked only then: a long catch-up holds nothing).
                prev = (
                    msg.line > 1
                    and s.order.held(msg.origin) > 0
                    and s.store.has_line(s.wire_room, msg.origin, msg.line - 1)
                )
                s.show(s.order.offer(msg.origin, msg.line, msg, s.now, prev_held=prev, live=False))
        return news

    # -- equivocation (docs/protocol.md §7.2) -----------------------------------------------

    def equivocation(self, msg: wire.Chat, held: str) -> None:
        """``msg`` carries the origin and line number of the line ``held``
        under another id: its origin signed two lines with one number.  Every
        node keeps the one with the lower id (the same everywhere), shows
        neither again, flags the origin, and offers both lines to every link
        (the one it dropped is kept in memory as evidence), so that every
        node learns of the lie and keeps the same line."""
        s = self.s
        s.seen.add(msg.id, s.now)
        key = (msg.origin, msg.line)
        known = self.evidence.get(key)
        if known is not None and msg.id == known.id:
            return  # this lie is known here and was passed on already
        s.admission.refuse("equivocation")
        if msg.id < held:
            old = s.store.get([held])
            s.store.replace(held, msg)
            s.store_version += 1
            keep, lose = msg.id, (old[0] if old else None)
        else:
            keep, lose = held, msg
        if lose is not None:
            self.evidence.put(key, lose)
        origin = msg.origin
        first = origin not in s.equivocators
        s.equivocators.put(origin, msg.key)
        s.roster.flagged.add(origin)
        if first:
            shown = s.roster.display(origin, msg.name)
            log.warning("%s signed two lines numbered %d: %s, %s", origin, msg.line, held, msg.id)
            s.emit(
                Notice(
                    text=f"{shown} signed two different lines under one number ({msg.line}): "
                    "it is lying to part of the room. Every node keeps the same one of them "
                    f"(/whois {msg.name})",
                    level="warning",
                )
            )
        offer = [keep] if lose is None else [keep, lose.id]
        for link, state in self.links.items():
            state.push.offer(offer)
            self.pump(link, state)
