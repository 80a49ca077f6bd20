"""Membership news worded for who arrived, for the interactive views (no I/O).

A node learns of the members already in the room one by one, as their
``presence`` (or ``join``) messages reach it after its first link; shown one
by one they would read as a stream of arrivals.  :class:`Arrival` holds them
back during our own arrival and shows them as one line,
``-- in lobby: alice, bob``; afterwards every member that appears is shown as
``* carol joined`` (:class:`~p2pchat.cli.render.Renderer` with
``interactive=True``), whichever message told us: the ``via`` of
:class:`~p2pchat.events.JoinEvent` says which message came first, and over a
tree of links a newcomer's presence can overtake its join.

Our arrival is over :data:`ARRIVAL_SETTLE_S` after our first link, later while
members keep coming in (until :data:`ARRIVAL_QUIET_S` passes without one, at
most :data:`ARRIVAL_MAX_S` after the first link); or, with no link at all,
:data:`ARRIVAL_ALONE_S` after the start: we were there first, and whoever
comes later has joined.

It also tells us when our name is taken: another member's name is ours or
looks like it (:func:`p2pchat.names.confusable`), so the others see us as
``bob#b63b`` (the start of our node id, as :meth:`p2pchat.roster.Roster.display`
shows it): ``-- the name bob is taken here; ...`` when we arrive, ``-- bob#7c0d
now has your name ...`` when another comes with it (or renames itself so) later.

``--json`` and the scripted text mode do not use it: their events stay as the
node reports them.
"""

from __future__ import annotations

from collections.abc import Sequence

from p2pchat import names
from p2pchat.cli.render import clean
from p2pchat.events import AwayEvent, Event, JoinEvent, LeaveEvent, MemberInfo, NickEvent, Ready

ARRIVAL_SETTLE_S = 3.0
"""Our arrival lasts at least this long after our first link (s): long
enough for the members' presences (every 3 s in a room of up to 15) to come."""
ARRIVAL_QUIET_S = 1.5
"""... and until no new member was heard of for this long (s) ..."""
ARRIVAL_MAX_S = 30.0
"""... but at most this long after our first link (s): a big room spaces its
presences out (0.2 s times its size), so its members trickle in for longer."""
ARRIVAL_ALONE_S = 3.0
"""With no link this long after the start (s), we arrived alone."""


class Arrival:
    """Our own arrival: which membership events to hold back and when to
    show them as one line.  Pure: the caller passes the time, reads
    :meth:`due`, and calls :meth:`poll` then.  Not thread-safe (the views
    call it from one thread, or under their lock).

    Args:
        now: the start, in monotonic seconds.
        alone_s, settle_s, quiet_s, max_s: :data:`ARRIVAL_ALONE_S`,
            :data:`ARRIVAL_SETTLE_S`, :data:`ARRIVAL_QUIET_S`,
            :data:`ARRIVAL_MAX_S` (tests make them short).
        settled: start with our arrival already over (every member that
            appears is shown as joined).
    """

    def __init__(
        self,
        now: float,
        alone_s: float = ARRIVAL_ALONE_S,
        settle_s: float = ARRIVAL_SETTLE_S,
        quiet_s: float = ARRIVAL_QUIET_S,
        max_s: float = ARRIVAL_MAX_S,
        settled: bool = False,
    ) -> None:
        self.started = now
        self.alone_s = alone_s
        self.settle_s = settle_s
        self.quiet_s = quiet_s
        self.max_s = max_s
        self.settled = settled
        self.me = ""  # our node id (from Ready)
        self.name = ""  # our name
        self.room = ""
        self.first_link: float | None = None
        self.last_new = now
        self.held: dict[str, tuple[str, str]] = {}  # origin -> (name, display), as learned
        self.told: set[str] = set()  # our names whose being taken we told

    def due(self) -> float | None:
        """When :meth:`poll` has something to do (monotonic s), or None."""
        if self.settled:
            return None
        if self.first_link is None:
            return self.started + self.alone_s
        end = max(self.first_link + self.settle_s, self.last_new + self.quiet_s)
        return min(end, self.first_link + self.max_s)

    def feed(self, ev: Event, now: float) -> tuple[bool, list[str]]:
        """Look at one event.

        Args:
            ev: the event.
            now: monotonic seconds.

        Returns:
            Whether to show the event as usual (False while our arrival holds
            it back), and the lines to show after it (``-- the name bob is
            taken here ...``).
        """
        if isinstance(ev, Ready):
            self.me, self.name, self.room = ev.node, ev.name, ev.room
        elif isinstance(ev, JoinEvent) and ev.origin != self.me:
            who = ev.display or ev.name
            if not self.settled:
                self.held[ev.origin] = (ev.name, who)
                self.last_new = now
                return False, []
            return True, self._taken([(ev.origin, ev.name, who)], arriving=False)
        elif isinstance(ev, AwayEvent) and not self.settled and ev.origin in self.held:
            return False, []  # the one line says it: ``bob (away)``
        elif isinstance(ev, LeaveEvent) and not self.settled and ev.origin in self.held:
            del self.held[ev.origin]
            return False, []
        elif isinstance(ev, NickEvent):
            if ev.origin == self.me:
                self.name = ev.new
            elif not self.settled and ev.origin in self.held:
                self.held[ev.origin] = (ev.new, ev.display or ev.new)
                return False, []
            elif self.settled:
                news = [(ev.origin, ev.new, ev.display or ev.new)]
                return True, self._taken(news, arriving=False)
        return True, []

    def note_link(self, now: float) -> None:
        """A link came up (a :class:`~p2pchat.events.PeerUp`): the first one
        starts the end of our arrival."""
        if self.first_link is None and not self.settled:
            self.first_link = now

    def poll(self, now: float, members: Sequence[MemberInfo] | None = None) -> list[str]:
        """End our arrival if its time has come.

        Args:
            now: monotonic seconds.
            members: the room's members now (``Node.snapshot().members``),
                shown as they are displayed now; None to use the ones the
                events named.

        Returns:
            The lines to show: ``-- in lobby: alice, bob (away)`` (none
            when we are alone; ``(away)`` from ``members`` only) and whether
            our name is taken; or nothing yet.
        """
        due = self.due()
        if due is None or now < due:
            return []
        self.settled = True
        if members is not None:
            others = [
                (m.node, m.name, m.display or m.name, " (away)" if m.away else "")
                for m in members
                if not m.self
            ]
        else:
            others = [(node, n, d, "") for node, (n, d) in self.held.items()]
        self.held.clear()
        if not others:
            return []
        shown = sorted(
            ((clean(d), a) for _, _, d, a in others), key=lambda da: (da[0].casefold(), da)
        )
        line = f"-- in {clean(self.room)}: {', '.join(d + a for d, a in shown)}"
        return [line, *self._taken([(n, name, d) for n, name, d, _ in others], arriving=True)]

    def _taken(self, others: Sequence[tuple[str, str, str]], arriving: bool) -> list[str]:
        """The line that says our name is taken, if one of ``others``
        (node, name, display) has it or a look-alike, once per name of ours:
        ``arriving``, we came to a room where it is taken; else another
        member came with it (or renamed itself so) after us."""
        if not self.name or self.name in self.told:
            return []
        mine, me = self.name, self.me
        found = [(n, d) for n, name, d in others if n != me and names.confusable(name, mine)]
        if not found:
            return []
        alike = [n for n, _ in found]
        self.told.add(self.name)
        n = 4  # as Roster.display: more hex digits while a look-alike's id starts the same
        for other in alike:
            while n < len(me) and other[:n] == me[:n]:
                n += 1
        seen_as = f"{clean(mine)}#{me[:n]}"
        if not arriving:
            who = ", ".join(sorted(clean(d) for _, d in found))
            return [
                f"-- {who} now has your name or one like it; others see you as {seen_as} "
                "while both are here (/nick NEWNAME to change)"
            ]
        return [
            f"-- the name {clean(mine)} is taken here; others see you as {seen_as} "
            "(/nick NEWNAME to change)"
        ]
