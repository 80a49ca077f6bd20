"""Membership and presence: who is in the room, under which name.

The roster (:mod:`p2pchat.roster`) learns members from every admitted
flooded message; ``join``, ``presence``, ``nick`` and ``leave`` exist for
it.  Names are trusted on first use: the first key seen with a name, and
with any name that looks like it (Unicode TR39 skeletons,
:mod:`p2pchat.names`), is kept in the store; another key is always shown as
``name#abcd`` with a notice.  Presences are spaced so that a room sends
about one per ``PRESENCE_SHARE_S`` in all (RFC 3550 §6.2's rule).

Pure: no sockets, threads or clock (see :mod:`p2pchat.core.state`).
"""

from __future__ import annotations

import msgspec

from p2pchat import flood, identity, names, wire
from p2pchat.addrs import screen
from p2pchat.core.actions import LinkId
from p2pchat.core.admission import BoundedMap
from p2pchat.core.state import MAX_ORIGINS, Shared
from p2pchat.events import AwayEvent, JoinEvent, KeyInfo, LeaveEvent, NickEvent, Notice
from p2pchat.roster import Member

PRESENCE_SHARE_S = 0.2
"""A room sends about one presence per this many seconds in all (rooms of more
than 15 nodes space each node's presences out; see Membership.presence_every)."""


SUSPECT_S = 6.0
"""A member reported gone (``presence.gone``) is removed this long after the
report unless a newer message of its own refutes it (SWIM's suspicion)."""

GONE_DELAY_S = (0.2, 1.0)
"""A node whose only link to a member broke reports it in a presence sent
after a random delay in this range (s), unless another report came first."""

GONE_RATE_PER_S = 0.1
"""Reports (``presence.gone`` entries) a receiver takes per second from one
origin, after a burst of ``wire.MAX_GONE``; more are ignored
(``rate_limited.gone``): one key cannot keep the room refuting."""

PRESENCE_JITTER = 0.75
"""Our next presence comes after between this share of our interval and all of it
(never later than announced: peers time us out after missed intervals)."""


class Membership:
    """The roster's side of delivery, names, presences and timeouts.

    Args:
        s: the core's shared state.
    """

    def __init__(self, s: Shared) -> None:
        self.s = s
        self.left: BoundedMap[str, int] = BoundedMap(MAX_ORIGINS)  # origin -> its leave's seq
        # origin -> (addresses, port) from its latest presence
        self.addrs: BoundedMap[str, tuple[list[str], int]] = BoundedMap(MAX_ORIGINS)
        self.flagged: set[tuple[str, str]] = set()  # (origin, name) already flagged
        self.to_report: dict[str, int] = {}  # member -> seq, for our next presence's gone
        # origin -> its latest presence, handed to a newcomer linked to us
        self.latest: BoundedMap[str, wire.Presence] = BoundedMap(MAX_ORIGINS)
        self.checked: BoundedMap[str, tuple[str, str]] = BoundedMap(MAX_ORIGINS)  # name, key
        self.own: wire.Presence | None = None  # our latest presence
        self.handed: set[LinkId] = set()  # links we handed the roster to
        self.gone_buckets: BoundedMap[str, flood.TokenBucket] = BoundedMap(MAX_ORIGINS)
        self.away = ""  # our away text, sent in our presences
        self.remember_name(s.name, s.identity.key)

    def heard(self, msg: wire.FloodMessage) -> bool:
        """An admitted message from another origin: update the roster (join,
        rename, leave) and report it.  Returns False if the message is stale
        (older than a leave of its origin): a chat line is still kept then."""
        s = self.s
        origin = msg.origin
        left_seq = self.left.get(origin)
        stale = left_seq is not None and msg.seq <= left_seq
        if left_seq is not None and not stale:
            del self.left[origin]  # it came back
        if isinstance(msg, wire.Leave):
            if stale:
                return False
            member = s.roster.remove(origin)
            self.left.put(origin, msg.seq)
            if member is not None:
                self._left(member, "quit")
            return False
        if stale:
            return False
        if isinstance(msg, wire.Presence) and msg.port and msg.addrs:
            # The address policy (p2pchat.addrs): never multicast, loopback... of either family.
            where = screen(msg.addrs, s.loopback_ok, s.addrs_refused)
            if where:
                self.addrs.put(origin, (where, msg.port))
        member = s.roster.get(origin)
        renamed = member is not None and member.name != msg.name
        was = s.roster.display(origin) if renamed else ""  # how it was shown: before any flag
        if self.checked.get(origin) != (msg.name, msg.key):
            # Names are checked once per origin, name and key, not per message
            # (normalising and skeletons cost ~10 µs a presence).
            self.check_name(msg)
            self.checked.put(origin, (msg.name, msg.key))
        every = msg.every if isinstance(msg, wire.Presence) else 0.0
        is_new, old = s.roster.heard(
            origin, msg.name, s.now, seq=msg.seq, every_s=every, linked=s.links
        )
        for gone in s.roster.take_evicted():
            self._left(gone, "timeout")
        if is_new and s.store.first_key(msg.name) == msg.key:
            s.store.touch_name(msg.name)  # the names of members are evicted last
        if is_new:
            via = "join" if isinstance(msg, wire.Join) else "presence"
            s.emit(
                JoinEvent(origin=origin, name=msg.name, via=via, display=s.roster.display(origin))
            )
        elif old is not None:
            s.emit(
                NickEvent(
                    origin=origin,
                    old=old,
                    new=msg.name,
                    display=s.roster.display(origin),
                    old_display=was,
                )
            )
        if isinstance(msg, wire.Presence):
            held = self.latest.get(origin)
            if held is None or held.seq < msg.seq:
                self.latest.put(origin, msg)
                self._away_heard(origin, msg.away)
            if msg.gone:
                self._reported_gone(origin, msg.gone)
        if isinstance(msg, wire.Join) and origin in s.links:
            # A node linked to us joined (new, or restarted with an empty
            # roster): it learns the room, us included, from us at once.  (Every
            # member answering every join with a presence made a storm: 100
            # presences and 75,000 frames in 0.5 s for one node joining a room
            # of 100, in the simulator.)
            self.hand_roster(s.links[origin], origin)
        return True

    def hand_roster(self, link: LinkId, peer: str) -> None:
        """Send ``peer``, on ``link`` only and once per link, the latest
        presence of every member we hold and our own, with hop limit 1 (it
        delivers them and forwards none; their signatures do not cover
        ``hops``), so that it knows the room at once and not at each
        member's next presence, which in a big room is minutes away
        (docs/protocol.md §9).  Called when a link comes up to a node not in
        our roster, and when a node linked to us joins."""
        s = self.s
        if link in self.handed:
            return
        if len(self.handed) >= 4096:
            self.handed.clear()
        self.handed.add(link)
        # Unchanged but for hops: the signature covers every other field (a
        # presence handed without its gone reports failed its signature).
        if self.own is not None:  # else our first presence is on its way
            s.send_msg(link, msgspec.structs.replace(self.own, hops=1))
        for member in s.roster.members():
            msg = self.latest.get(member.node)
            if msg is not None and member.node != peer and msg.seq >= member.name_seq:
                s.send_msg(link, msgspec.structs.replace(msg, hops=1))

    # -- crashed members (docs/protocol.md §9: SWIM-style suspicion) ---------------------

    def link_lost(self, node: str) -> None:
        """Our link to ``node`` broke, not by our choice nor by its ``leave``
        (a member that left is no longer in the roster).  If no other link
        to it is up, report it in a presence soon (after ``GONE_DELAY_S``),
        unless someone else's report comes first: in a room whose presences
        are spaced out by its size, the neighbours of a crashed node are the
        ones who learn of it in seconds."""
        s = self.s
        member = s.roster.get(node)
        if member is None or s.closed or node in s.links or node == s.node_id:
            return
        if member.suspect_until != float("inf"):
            return  # reported already
        if len(self.to_report) >= 4 * wire.MAX_GONE:
            self.to_report.pop(next(iter(self.to_report)))
        self.to_report[node] = member.name_seq
        at = s.now + s.rng.uniform(*GONE_DELAY_S)
        if at < s.next_presence:
            s.next_presence = at
            s.wake = True

    def _take_reports(self) -> list[wire.Lost]:
        """The members to report gone in the presence we send now: those
        still unlinked, silent since, and not reported by anyone else."""
        s = self.s
        out: list[wire.Lost] = []
        for node, seq in self.to_report.items():
            member = s.roster.get(node)
            if (
                member is not None
                and node not in s.links
                and member.name_seq == seq
                and member.suspect_until == float("inf")
                and len(out) < wire.MAX_GONE
            ):
                out.append(wire.Lost(node=node, seq=seq))
                # We suspect it as those who read our report do.
                s.roster.suspect(node, seq, s.now + SUSPECT_S)
        self.to_report.clear()
        return out

    def _reported_gone(self, reporter: str, gone: list[wire.Lost]) -> None:
        """``reporter``'s presence says these members' links to it broke."""
        s = self.s
        bucket = self.gone_buckets.get(reporter)
        if bucket is None:
            bucket = flood.TokenBucket(GONE_RATE_PER_S, wire.MAX_GONE, s.now)
            self.gone_buckets.put(reporter, bucket)
        for lost in gone:
            if not bucket.take(s.now):
                s.count_limited("gone", reporter)
                return
            if lost.node == s.node_id:
                s.presence_soon()  # we are alive: our next message refutes it
            elif lost.node not in s.links and s.roster.suspect(
                lost.node, lost.seq, s.now + SUSPECT_S
            ):
                self.to_report.pop(lost.node, None)

    def _away_heard(self, origin: str, text: str) -> None:
        """A member's newest presence says ``text`` (validated by the wire:
        at most ``wire.MAX_AWAY_CHARS``, no control characters): keep it and
        report a change."""
        member = self.s.roster.get(origin)
        if member is None or member.away == text:
            return
        member.away = text
        self.s.emit(
            AwayEvent(
                origin=origin, name=member.name, text=text, display=self.s.roster.display(origin)
            )
        )

    def set_away(self, text: str) -> bool:
        """Take ``text`` (checked by the caller) as our away text, "" to
        clear it; True if it changed (then our next presence says it)."""
        if text == self.away:
            return False
        self.away = text
        me = self.s.roster.get(self.s.node_id)
        if me is not None:
            me.away = text
        return True

    def _left(self, member: Member, reason: str) -> None:
        self.s.emit(
            LeaveEvent(
                origin=member.node,
                name=member.name,
                reason=reason,
                display=self.s.roster.display(member.node, member.name),
            )
        )

    def expire(self) -> list[str]:
        """Time out the members not heard within their timeout; returns their ids."""
        gone = self.s.roster.expire(self.s.now)
        for member in gone:
            self._left(member, "timeout")
        return [m.node for m in gone]

    # -- presences ------------------------------------------------------------------

    def presence_every(self) -> float:
        """Seconds between our presences: the configured interval, or longer
        in a big room, so that the whole room sends about one presence per
        ``PRESENCE_SHARE_S`` (RTCP's rule for its reports, RFC 3550 section
        6.2: a fixed share for all, whatever the group's size).  Every node
        checks the signature of every presence, so without this the cost of
        an idle room would grow with the square of its size.

        The share has no cap below the wire's (an hour; the roster holds
        2,048 members: 410 s): a crashed member is reported by its
        neighbours in seconds (:meth:`link_lost`), so idle frames per node do
        not grow with the room.  A longer configured interval is kept."""
        shared = len(self.s.roster) * PRESENCE_SHARE_S
        return min(max(self.s.config.presence_interval_s, shared), wire.MAX_PRESENCE_EVERY_S)

    def presence(self, port: int, addrs: list[str]) -> wire.Presence:
        """Our next presence, signed, and the time of the one after it."""
        s = self.s
        every = self.presence_every()
        msg = s.signed(
            wire.Presence(
                addrs=addrs,
                port=port,
                dh=s.identity.dh,
                every=every,
                gone=self._take_reports(),
                away=self.away,
                **s.envelope(),
            )
        )
        self.own = msg
        s.last_presence = s.now
        # A little earlier than announced, at random (RFC 3550 §6.3.1's idea):
        # the presences of nodes started together do not stay in step.
        s.next_presence = s.now + every * s.rng.uniform(PRESENCE_JITTER, 1.0)
        return msg

    # -- names (trust on first use) ---------------------------------------------------

    def remember_name(self, name: str, key: str) -> tuple[str, str]:
        """Trust on first use: the first key seen with ``name`` (NFC) is
        kept, and so is the first key seen with any name that looks like it,
        under ``"#" + skeleton`` in the store's name table (``#`` is never in
        a name).  Returns both first keys."""
        store = self.s.store
        first = store.first_key(name)
        if first is None:
            store.remember_name(name, key, keep=self.member_names)
            first = key
        like = "#" + names.skeleton(name)
        first_like = store.first_key(like)
        if first_like is None:  # a new look, or a store from before looks were kept
            store.remember_name(like, first, keep=self.member_names)
            first_like = first
        return first, first_like

    def member_names(self) -> set[str]:
        """The names of the members present and their ``"#" + skeleton``
        entries (kept when the first-key table is full)."""
        members = self.s.roster.members()
        return {m.name for m in members} | {"#" + m.skeleton for m in members}

    def check_name(self, msg: wire.FloodMessage) -> None:
        """Flag a key that claims a name, or a look-alike of one (the same
        :func:`p2pchat.names.skeleton`), first seen here with another key
        (trust on first use): it is always shown as ``name#abcd``.  Raise a
        notice, once per origin and name, for it and for a member that comes
        in (or renames itself) under a name that looks like another member's.
        """
        s = self.s
        name = names.normalise(msg.name)
        first, first_like = self.remember_name(name, msg.key)
        impostor = first != msg.key or first_like != msg.key
        if (msg.origin, name) in self.flagged:
            return
        member = s.roster.get(msg.origin)
        newcomer = member is None or member.name != name
        lookalikes = s.roster.lookalikes(msg.origin, name) if newcomer else []
        if not impostor and not lookalikes:
            return
        if len(self.flagged) >= 4096:
            self.flagged.clear()
        self.flagged.add((msg.origin, name))
        text = f"{name}#{msg.origin[:4]}"
        if lookalikes:
            others = ", ".join(sorted(f"{m.name}#{m.node[:4]}" for m in lookalikes[:5]))
            text += f" has a name that looks like {others}"
        if impostor:
            s.roster.flagged.add(msg.origin)
            text += (" and" if lookalikes else "") + (
                f" uses the name {name!r}, or one that looks like it, which this node first "
                "saw with another key"
            )
        text += f": it may not be who you think (/whois {name})"
        s.emit(Notice(text=text, level="warning"))

    def rename(self, new: str) -> wire.Nick:
        """We take the name ``new``; returns our signed ``nick`` to flood."""
        s = self.s
        old, s.name = s.name, new  # lines sent from now on carry the new name
        s.roster.rename_self(new)
        nick = s.signed(wire.Nick(old=old, **s.envelope()))
        self.remember_name(new, s.identity.key)
        return nick

    def whois(self, name: str) -> list[KeyInfo]:
        """The members (us included) called ``name`` or a name that looks
        like it (:func:`p2pchat.names.confusable`), with their key
        fingerprints, and whether each holds the first key this node saw with
        its name and that look (trust on first use)."""
        s = self.s
        name = names.normalise(name.strip())
        like = "#" + names.skeleton(name)
        first_like = s.store.first_key(like)
        out = []
        for m in s.roster.members():
            if m.skeleton != like[1:]:
                continue
            first = s.store.first_key(m.name)
            if first_like is not None and first != first_like:
                first = None
            key = s.identity.key if m.node == s.node_id else s.admission.keys.get(m.node, "")
            out.append(
                KeyInfo(
                    node=m.node,
                    name=m.name,
                    display=s.roster.display(m.node),
                    fingerprint=identity.fingerprint(key) if key else "",
                    first=bool(key) and key == first,
                    self=m.node == s.node_id,
                    equivocated=m.node in s.equivocators,
                )
            )
        return out
