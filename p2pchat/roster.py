"""Who is in the room: members heard from, their names, and presence timeouts.

No sockets; time is passed in.  One thread (the node's router) owns a roster.
A member is any origin heard from in our room (a join, a presence, a chat
line...).  A member that sends nothing for ``timeout_s`` seconds (or for
``MISSED_PRESENCES`` of the presence intervals it announced, if longer) is
timed out (see ``docs/protocol.md`` section 9).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

from p2pchat import names
from p2pchat.wire import MAX_PRESENCE_EVERY_S

MISSED_PRESENCES = 3.0
"""A member that announces its presence interval is timed out after this many
intervals of silence, or after the roster's timeout if that is longer (10 s
for the default 3 s interval)."""

DEFAULT_MAX_MEMBERS = 2048
"""Most members a roster holds (this node included)."""


@dataclass
class Member:
    """One node in the room.

    Attributes:
        node: node id (16 hex digits).
        name: display name as last heard, in NFC (:func:`p2pchat.names.normalise`).
        last_seen: monotonic time (s) of the last message from it.
        name_seq: sequence number of the message that gave ``name``.
        skeleton: :func:`p2pchat.names.skeleton` of ``name`` (kept by the roster).
        away: its away text from its latest presence ("" = not away).
    """

    node: str
    name: str
    last_seen: float
    name_seq: int = -1
    timeout_s: float = 0.0  # 0: the roster's own
    skeleton: str = field(default="", compare=False)
    suspect_until: float = float("inf")
    """When a suspected member is removed unless it refutes (monotonic s)."""
    suspect_seq: int = -1
    """The ``seq`` a ``presence.gone`` reported it at; a newer message refutes."""
    away: str = ""


class Roster:
    """Members of one room, as seen by one node.

    Args:
        self_id: this node's id; it is a member that never times out.
        self_name: this node's display name.
        timeout_s: seconds of silence after which a member is timed out,
            at least (a member that announces a longer presence interval
            gets ``MISSED_PRESENCES`` of its intervals; an announced
            interval counts up to ``wire.MAX_PRESENCE_EVERY_S`` only).
        max_members: most members held.  When full, a newcomer takes the
            place of the member heard least recently among those not linked
            to us and overdue (silent for longer than one presence interval
            of theirs); if no member is overdue, the newcomer is not taken
            (counted in :attr:`refused`).  Members that are linked or heard on
            time are therefore never pushed out by a flood of fresh keys.
    """

    def __init__(
        self,
        self_id: str,
        self_name: str,
        timeout_s: float,
        max_members: int = DEFAULT_MAX_MEMBERS,
    ) -> None:
        self.self_id = self_id
        self.timeout_s = timeout_s
        self.max_members = max(2, max_members)
        self.refused = 0
        """Newcomers not taken because the roster was full."""
        self._members: dict[str, Member] = {}
        self._skeletons: dict[str, set[str]] = {}  # skeleton -> nodes whose name has it
        self._evicted: list[Member] = []
        self._check_at = float("-inf")  # no member is due before this (monotonic s)
        self._add(Member(self_id, names.normalise(self_name), float("inf")))
        self.flagged: set[str] = set()
        """Nodes always shown as ``name#abcd``: their key is not the first
        this node saw with their name or a look-alike of it (trust on first
        use)."""

    def _add(self, member: Member) -> None:
        member.skeleton = names.skeleton(member.name)
        self._members[member.node] = member
        self._skeletons.setdefault(member.skeleton, set()).add(member.node)

    def _drop(self, member: Member) -> None:
        del self._members[member.node]
        alike = self._skeletons[member.skeleton]
        alike.discard(member.node)
        if not alike:
            del self._skeletons[member.skeleton]

    def _rename(self, member: Member, name: str) -> None:
        self._drop(member)
        member.name = name
        self._add(member)

    def lookalikes(self, node: str, name: str) -> list[Member]:
        """The other members (not ``node``) whose names look like ``name``
        (the same :func:`p2pchat.names.skeleton`), this node included.
        O(look-alikes)."""
        skel = names.skeleton(names.normalise(name))
        return [self._members[n] for n in self._skeletons.get(skel, ()) if n != node]

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, node: object) -> bool:
        return node in self._members

    def get(self, node: str) -> Member | None:
        """The member with this id, or None."""
        return self._members.get(node)

    def members(self) -> list[Member]:
        """Every member, this node included, sorted by display name."""
        return sorted(self._members.values(), key=lambda m: (m.name.casefold(), m.node))

    def heard(
        self,
        node: str,
        name: str,
        now: float,
        seq: int | None = None,
        every_s: float = 0.0,
        linked: Container[str] = (),
    ) -> tuple[bool, str | None]:
        """Note a message from ``node`` carrying display name ``name``.

        ``seq`` is the message's per-origin sequence number, if known: a name
        carried by an older message than the one that set the current name is
        ignored, so lines that arrive out of order never undo a nick change.
        ``every_s``, from a presence: the member's presence interval (clamped
        to ``wire.MAX_PRESENCE_EVERY_S``).  ``linked``: the node ids linked
        to us directly (never evicted to make room).  ``name`` is kept in NFC.

        Returns:
            ``(is_new, old_name)``: ``is_new`` if the node was not a member;
            ``old_name`` if it was, under another name (a nick change missed
            or just received), else None.  A newcomer that finds the roster
            full with nobody overdue is not taken: ``(False, None)``, and
            :meth:`get` still says None.  The member evicted to make room,
            if any, is returned by :meth:`take_evicted`.
        """
        if node == self.self_id:
            return False, None  # only rename_self changes our own name
        name = names.normalise(name)
        member = self._members.get(node)
        is_new = member is None
        if member is None:
            if len(self._members) >= self.max_members and not self._make_room(now, linked):
                self.refused += 1
                return False, None
            member = Member(node, name, now, -1 if seq is None else seq)
            self._add(member)
        if every_s > 0:
            every = min(every_s, MAX_PRESENCE_EVERY_S)
            member.timeout_s = max(self.timeout_s, MISSED_PRESENCES * every)
        if is_new:
            self._check_at = min(self._check_at, self._due(member))
            return True, None
        member.last_seen = now
        if seq is not None and seq > member.suspect_seq:
            member.suspect_until = float("inf")  # alive after all: refuted
        self._check_at = min(self._check_at, self._due(member))
        if seq is not None:
            if seq < member.name_seq:
                return False, None
            member.name_seq = seq
        if member.name != name:
            old = member.name
            self._rename(member, name)
            return False, old
        return False, None

    def _make_room(self, now: float, linked: Container[str]) -> bool:
        """Evict the member heard least recently among those not linked and
        overdue; False if there is none."""
        best: Member | None = None
        for m in self._members.values():
            if m.node == self.self_id or m.node in linked:
                continue
            interval = (m.timeout_s or self.timeout_s) / MISSED_PRESENCES
            if now - m.last_seen <= interval:
                continue
            if best is None or m.last_seen < best.last_seen:
                best = m
        if best is None:
            return False
        self._drop(best)
        self._evicted.append(best)
        return True

    def take_evicted(self) -> list[Member]:
        """The members evicted to make room since the last call."""
        out, self._evicted = self._evicted, []
        return out

    def rename_self(self, name: str) -> None:
        """Change this node's own display name."""
        self._rename(self._members[self.self_id], names.normalise(name))

    def remove(self, node: str) -> Member | None:
        """Remove a member that left; returns it, or None if unknown."""
        if node == self.self_id:
            return None
        member = self._members.get(node)
        if member is not None:
            self._drop(member)
        return member

    def suspect(self, node: str, seq: int, until: float) -> bool:
        """A peer reports ``node``'s link to it broken at ``seq`` (a
        ``presence.gone``, ``docs/protocol.md`` §9): unless a message newer
        than ``seq`` has come from it, ``node`` is removed at ``until``
        (monotonic s) by :meth:`expire`, or earlier if already suspected.
        Any message from it with a higher ``seq`` refutes.  Returns True if
        the member is suspected now (False: unknown, ourselves, or the
        report is older than what we heard)."""
        member = self._members.get(node)
        if member is None or node == self.self_id or seq < member.name_seq:
            return False
        member.suspect_seq = max(member.suspect_seq, seq)
        member.suspect_until = min(member.suspect_until, until)
        self._check_at = min(self._check_at, member.suspect_until)
        return True

    def _due(self, m: Member) -> float:
        """When ``m`` is timed out unless heard again (monotonic s)."""
        return min(m.last_seen + (m.timeout_s or self.timeout_s), m.suspect_until)

    def expire(self, now: float) -> list[Member]:
        """Remove and return members silent for more than ``timeout_s``, and
        the suspected members whose time is up (:meth:`suspect`).  Looks at
        the members only when the earliest of them may be due (a room of
        1,000 checked every 0.5 s was a scan of 2,000 members a second)."""
        if now < self._check_at:
            return []
        gone = []
        check_at = float("inf")
        for m in self._members.values():
            if m.node == self.self_id:
                continue
            if now - m.last_seen > (m.timeout_s or self.timeout_s) or now >= m.suspect_until:
                gone.append(m)
            else:
                check_at = min(check_at, self._due(m))
        self._check_at = check_at
        for m in gone:
            self._drop(m)
        return gone

    def display(self, node: str, name: str | None = None) -> str:
        """How to show ``node`` to a person: its name (NFC), or ``name#abcd``
        (the first four hex digits of its node id, which are those of its key
        fingerprint) when another member's name looks like it (the same name,
        or a confusable one: :func:`p2pchat.names.confusable`), or when it is
        flagged (see :attr:`flagged`).  ``name`` overrides the roster's name
        (for a node that has just left or is not known).  More than four
        hex digits when a look-alike's node id starts with the same four.
        O(look-alikes)."""
        member = self._members.get(node)
        shown = member.name if member else node[:8]
        if name is not None:
            shown = names.normalise(name)
        skel = member.skeleton if member and member.name == shown else names.skeleton(shown)
        alike = self._skeletons.get(skel, set())
        if not (len(alike) > 1 or (alike and node not in alike) or node in self.flagged):
            return shown
        # Four hex digits, or more while a look-alike's node id starts with
        # the same ones (a key with chosen first digits is cheap to find).
        n = 4
        for other in alike:
            while n < len(node) and other != node and other[:n] == node[:n]:
                n += 1
        return f"{shown}#{node[:n]}"
