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

from p2pchat import identity, names, wire
from p2pchat.core.admission import BoundedMap
from p2pchat.core.state import MAX_ORIGINS, Shared
from p2pchat.events import JoinEvent, KeyInfo, LeaveEvent, NickEvent, Notice
from p2pchat.roster import Member

PRESENCE_SHARE_S = 0.2
"""A room sends about one presence per this many seconds in all (rooms of more
than 15 nodes space each node's presences out; see Membership.presence_every)."""


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
            self.addrs.put(origin, (list(msg.addrs), msg.port))
        self.check_name(msg)
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
            s.emit(NickEvent(origin=origin, old=old, new=msg.name))
        if isinstance(msg, wire.Join) and origin in s.links:
            # So that a newcomer linked to us learns of us at once; the others
            # hear of us at our next presence (every member answering every
            # join made a storm: 100 presences and 75,000 frames in 0.5 s for
            # one node joining a room of 100, in the simulator).
            s.presence_soon()
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

        The share stretches the interval up to ``wire.MAX_PRESENCE_EVERY_S``
        only (members counted are those heard within their timeout; the
        roster is capped), so fake members cannot push the detection of a
        crashed member past three such intervals (30 s).  A longer
        configured interval is kept (within the wire's range)."""
        shared = min(len(self.s.roster) * PRESENCE_SHARE_S, wire.MAX_PRESENCE_EVERY_S)
        return min(max(self.s.config.presence_interval_s, shared), 3600.0)

    def presence(self, port: int, addrs: list[str]) -> wire.Presence:
        """Our next presence, signed, and the time of the one after it."""
        s = self.s
        every = self.presence_every()
        msg = s.signed(
            wire.Presence(addrs=addrs, port=port, dh=s.identity.dh, every=every, **s.envelope())
        )
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
