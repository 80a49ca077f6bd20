"""Events and command replies as the text lines a person reads (no I/O).

Peer text is cleaned of control characters; lines are wrapped at the
terminal width so that no row a peer writes starts like a line of this node.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Iterable, Sequence

from p2pchat.cli.offers import TABLE as OFFERS
from p2pchat.cli.offers import format_size
from p2pchat.events import (
    AwayEvent,
    Event,
    FileDoneEvent,
    FileFailedEvent,
    FileOfferEvent,
    FileProgressEvent,
    JoinEvent,
    KeyInfo,
    LeaveEvent,
    LineEvent,
    LinkInfo,
    MemberInfo,
    MessageEvent,
    NickEvent,
    Notice,
    PeerDown,
    PeerUp,
    Ready,
    Stats,
    TopicEvent,
)
from p2pchat.files.events import TransferStatus

log = logging.getLogger(__name__)

# C0 and C1 control characters and DEL: a peer's chat text may hold any of
# them (only CR, LF and NUL are refused on the wire), and printed raw they
# would drive the terminal.  Shown as U+FFFD instead; a tab becomes a space.
# The bidi embeddings, overrides and isolates too: on a terminal that lays
# out right-to-left text they would reorder the rest of the row.
_CONTROL_CHARS = {
    c: "\ufffd"
    for c in (*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}
_CONTROL_CHARS[0x09] = " "
_BLANKS_RE = re.compile(r"\s{2,}")

SYSTEM_MARKS = ("* ", "-- ", "!! ")
"""How this node's own lines start (membership news, link news, replies,
notices).  No row of a peer's line starts so at column 0: see
:func:`peer_row` and :func:`wrap_rows`."""
_PEER_LOOKALIKES = (*SYSTEM_MARKS, "[private", "(earlier")
WRAP_INDENT = "    "
"""Rows after the first of a wrapped line start with this (text views)."""


def clean(text: str) -> str:
    """Make a peer's text safe to print on a terminal (no control characters).

    Args:
        text: text as received.

    Returns:
        ``text`` with C0/C1 control characters and DEL shown as U+FFFD.
    """
    return text.translate(_CONTROL_CHARS)


def format_clock(ts: float) -> str:
    """A line's time as local ``HH:MM``, or ``HH:MM dd Mon`` if not today."""
    when = time.localtime(ts)
    if time.strftime("%Y%m%d", when) == time.strftime("%Y%m%d"):
        return time.strftime("%H:%M", when)
    return time.strftime("%H:%M %d %b", when)


def format_line(ev: MessageEvent, who: str) -> str:
    """A chat line as shown: ``who: text`` or ``* who action``; ``who`` is
    already cleaned.  Runs of blanks in the text are shown as one space (a
    padded line cannot push its end onto a row of its own)."""
    text = _BLANKS_RE.sub(" ", clean(ev.text))
    return f"* {who} {text}" if ev.action else f"{who}: {text}"


def format_topic(ev: TopicEvent, who: str) -> str:
    """A topic line as shown: ``bob set the topic: text`` or ``bob cleared
    the topic`` (``you ...`` for ours), without a mark; ``who`` is already
    cleaned, the text is cleaned here (runs of blanks shown as one space)."""
    if ev.self:
        who = "you"
    if not ev.text.strip():  # a peer's topic of blanks clears it as much as ""
        return f"{who} cleared the topic"
    return f"{who} set the topic: {_BLANKS_RE.sub(' ', clean(ev.text))}"


def format_current_topic(ev: TopicEvent | None) -> str:
    """The room's current topic as ``/topic`` and the start of the views
    show it: ``-- topic: text (set by bob, 14:02)``, ``-- no topic (cleared
    by bob, 14:02)`` or ``-- no topic``."""
    if ev is None:
        return "-- no topic"
    who = "you" if ev.self else clean(ev.display or ev.name)
    when = format_clock(ev.ts)
    if not ev.text.strip():
        return f"-- no topic (cleared by {who}, {when})"
    return f"-- topic: {_BLANKS_RE.sub(' ', clean(ev.text))} (set by {who}, {when})"


def shown_name(ev: FileOfferEvent) -> str:
    """The offered base name, safe to print: control and bidi characters
    shown as U+FFFD (:func:`~p2pchat.cli.render.clean`), runs of blanks as
    one space."""
    return _BLANKS_RE.sub(" ", clean(ev.offer.name))


def format_offer(ev: FileOfferEvent, who: str, number: int) -> str:
    """An offer as its line shows it (``who`` already cleaned):
    ``bob offers report.pdf (2.4 MB) - /get 3``, ``bob offers you report.pdf
    (2.4 MB) - /get 3`` (one-member), ``you offer report.pdf (2.4 MB)``
    (ours; ``... to carol`` for a one-member offer of ours)."""
    what = f"{shown_name(ev)} ({format_size(ev.offer.size)})"
    if ev.self:
        to = f" to {clean(ev.to_display or ev.to[:8])}" if ev.to else ""
        return f"you offer {what}{to}"
    you = "you " if ev.to_me else ""
    return f"{who} offers {you}{what} - /get {number}"


def format_eta(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_bar(done: int, size: int, width: int = 10) -> str:
    """``[####------]``: ``width`` cells, ``#`` for the part done."""
    filled = width if size <= 0 else min(width, done * width // size)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def format_progress(
    name: str, done: int, size: int, speed: float, holders: int, eta: float | None
) -> str:
    """One download's progress (``name`` already cleaned):
    ``report.pdf [####------] 41% 1.0 MB of 2.4 MB, 5.2 MB/s from 3, 1s left``."""
    pct = 100 if size <= 0 else done * 100 // size
    return (
        f"{name} {progress_bar(done, size)} {pct}% {format_size(done)} of {format_size(size)}, "
        f"{format_size(int(speed))}/s from {holders}, {format_eta(eta)} left"
    )


def format_transfer(t: TransferStatus) -> str:
    """A ``/files`` row for one transfer: state, then progress."""
    name = _BLANKS_RE.sub(" ", clean(t.name))
    if t.state in ("fetching", "hashes"):
        return "--   " + format_progress(
            name, t.done_bytes, t.size, t.speed_Bps, t.holders, t.eta_s
        )
    if t.state == "offered":
        return f"--   {name} ({format_size(t.size)}): offered by you, served"
    words = {
        "waiting": "waiting for a holder",
        "done": "done",
        "failed": "failed",
        "cancelled": "cancelled (/get resumes it)",
    }
    pct = 100 if t.size <= 0 else t.done_bytes * 100 // t.size
    return f"--   {name} ({format_size(t.size)}): {words.get(t.state, t.state)}, {pct}%"


def format_files(
    offers: list[FileOfferEvent], transfers: Sequence[TransferStatus] = ()
) -> list[str]:
    """``/files``: one row per offer, oldest first: number, name, size, who,
    when (and ``private`` for a one-member offer); then the transfers of this
    run with their progress."""
    tail = (
        [f"-- {len(transfers)} transfer{'s' if len(transfers) != 1 else ''}:"] if transfers else []
    )
    tail += [format_transfer(t) for t in transfers]
    if not offers:
        return ["-- no files offered (yet)", *tail]
    out = [f"-- {len(offers)} file{'s' if len(offers) != 1 else ''} offered:"]
    for ev in offers:
        n = OFFERS.number(ev)
        who = "you" if ev.self else clean(ev.display or ev.name)
        private = " (private)" if ev.private else ""
        out.append(
            f"--   {n:>3}  {shown_name(ev)}  {format_size(ev.offer.size)}  "
            f"from {who}, {format_clock(ev.ts)}{private}"
        )
    return out + tail


def peer_row(line: str) -> str:
    """A line whose text a peer chose, shifted one column right if it would
    start like one of this node's own lines (:data:`SYSTEM_MARKS`: an action
    ``* alice left``, a peer called ``-- x``) or like a private or earlier
    line: ``" * alice waves"``."""
    return " " + line if line.startswith(_PEER_LOOKALIKES) else line


def _cells(ch: str) -> int:
    """Terminal cells ``ch`` takes, counted high: 2 from U+1100 up (wide
    scripts, emoji, and everything whose width terminals disagree on)."""
    return 1 if ch < "\u1100" else 2


def wrap_rows(line: str, width: int) -> list[str]:
    """Cut a text line into rows that fit a terminal ``width`` cells wide,
    so that the terminal never wraps one itself: rows after the first start
    with :data:`WRAP_INDENT`, so a peer cannot make a row that starts like a
    line of this node.  Breaks at the last blank that fits, else mid-word.

    Args:
        line: one line, without newlines.
        width: the terminal's width in cells (at least 20 is used).

    Returns:
        The rows, at most ``width - 1`` cells each (counted high, see
        :func:`_cells`).
    """
    limit = max(width, 20) - 1
    if len(line) * 2 <= limit or sum(map(_cells, line)) <= limit:
        return [line]
    rows: list[str] = []
    rest = line
    prefix = ""
    while rest:
        room = limit - len(prefix)
        used = 0
        cut = len(rest)
        blank = -1
        for i, ch in enumerate(rest):
            used += _cells(ch)
            if used > room:
                cut = i
                break
            if ch == " ":
                blank = i
        if cut == len(rest):
            rows.append(prefix + rest)
            break
        if blank > 0:
            rows.append(prefix + rest[:blank])
            rest = rest[blank + 1 :]
        else:
            cut = max(cut, 1)
            rows.append(prefix + rest[:cut])
            rest = rest[cut:]
        rest = rest.lstrip(" ")
        prefix = WRAP_INDENT
    return rows


def terminal_width() -> int:
    """Columns of the terminal on stdout (``COLUMNS`` wins; 80 when stdout
    is not a terminal).  Text views wrap at it."""
    return shutil.get_terminal_size((80, 24)).columns


def format_history(room: str, lines: Sequence[LineEvent]) -> list[str]:
    """``/history``: a header, then each line with its time (a topic line
    as ``-- bob set the topic: ...``, an offer as ``bob offers ... - /get 3``)."""
    if not lines:
        return [f"-- no lines yet in {clean(room)}"]
    n = len(lines)
    out = [f"-- the last {n} line{'s' if n != 1 else ''} of {clean(room)}:"]
    for ev in lines:
        who = clean(ev.display or ev.name)
        if isinstance(ev, TopicEvent):
            out.append(f"   {format_clock(ev.ts)}  -- {format_topic(ev, who)}")
        elif isinstance(ev, FileOfferEvent):
            out.append(f"   {format_clock(ev.ts)}  {format_offer(ev, who, OFFERS.number(ev))}")
        else:
            out.append(f"   {format_clock(ev.ts)}  {format_line(ev, who)}")
    return out


def format_whois(name: str, keys: Sequence[KeyInfo]) -> list[str]:
    """``/whois``: one line per member called ``name`` or a name that looks
    like it, with its fingerprint."""
    if not keys:
        return [f"-- nobody called {clean(name)} is in the room"]
    out = []
    for k in keys:
        fp = " ".join(k.fingerprint[i : i + 4] for i in range(0, len(k.fingerprint), 4))
        if k.self:
            note = "(you)"
        elif k.first:
            note = "(the first key this node saw with this name or a look-alike)"
        elif k.fingerprint:
            note = "(NOT the first key this node saw with this name or a look-alike)"
        else:
            note = "(no signed message from it yet)"
        if k.equivocated:
            note += " (it signed two different lines under one number: it lies)"
        out.append(f"-- {clean(k.display)}: {fp or '?'} {note}")
    return out


def format_duration(seconds: float) -> str:
    """Format an uptime compactly: ``42s``, ``3m05s``, ``2h07m``.

    Args:
        seconds: a duration, in seconds.

    Returns:
        The text.
    """
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_who(room: str, members: Iterable[MemberInfo]) -> str:
    """Format a ``/who`` reply as one line.

    Args:
        room: our room.
        members: the members, us included.

    Returns:
        e.g. ``-- 3 in lobby: alice (you), bob*, carol   (* = linked directly)``.
    """
    rows = sorted(members, key=lambda m: (not m.self, m.display.casefold(), m.node))
    parts = []
    for m in rows:
        label = clean(m.display or m.name)
        if m.self:
            label += " (you)"
        elif m.linked:
            label += "*"
        if m.away:
            label += f" (away: {clean(m.away)})"
        parts.append(label)
    line = f"-- {len(rows)} in {clean(room)}: {', '.join(parts)}"
    if any(m.linked and not m.self for m in rows):
        line += "   (* = linked directly)"
    return line


def format_stats(stats: Stats) -> list[str]:
    """``/stats`` as text lines: one counter (or group of counters) a line."""

    def group(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"

    return [
        f"-- up {format_duration(stats.uptime_s)}; {stats.links} links, "
        f"{stats.members} in the room",
        f"   in  {stats.frames_in} frames, {stats.bytes_in} bytes; "
        f"out {stats.frames_out} frames, {stats.bytes_out} bytes",
        f"   duplicates dropped {stats.duplicates_dropped}; seen-cache {stats.seen_cache} ids",
        f"   bad frames: {group(stats.frames_refused)}",
        f"   links refused or dropped: {group(stats.links_refused)}",
        f"   learnt addresses not dialled: {group(stats.addrs_refused)}",
        f"   rate-limited: {group(stats.rate_limited)}; queue drops {stats.queue_drops}",
        f"   history: {stats.stored_lines} lines stored; catch-up in {stats.catchup_in}, "
        f"out {stats.catchup_out}; store writer stalls {stats.store_stalls}",
        *([f"   files: {group(stats.files)}"] if stats.files else []),
    ]


def format_peers(links: Iterable[LinkInfo]) -> list[str]:
    """Format a ``/peers`` reply, one line per direct link.

    Args:
        links: the links that are up.

    Returns:
        The lines.
    """
    rows = list(links)
    if not rows:
        return ["-- no direct links"]
    out = [f"-- {len(rows)} direct link{'s' if len(rows) != 1 else ''}:"]
    for link in rows:
        name = clean(link.name) or link.peer[:8]
        out.append(
            f"--   {name}  {link.address}  {link.direction}  up {format_duration(link.uptime_s)}"
        )
    return out


class Renderer:
    """Turns events into the text lines a person reads.

    Remembers the names of node ids it has seen, because a
    :class:`~p2pchat.events.PeerDown` carries only the node id.  Not
    thread-safe: :class:`Output` calls it under its lock.

    Args:
        interactive: text for a person at a terminal: a hint in the ready
            line, and every member that appears is ``* carol joined``
            (:class:`~p2pchat.cli.arrival.Arrival` holds back those already
            there when we arrive); else (the scripted text mode) a member we
            learn of by its presence is ``* carol is here``.
        links: show links coming up and going down (``-- linked to ...``);
            the interactive views show them only with ``--log-level info``
            (else ``/peers`` and ``/stats`` tell of links).
    """

    def __init__(self, interactive: bool = False, links: bool = True) -> None:
        self.interactive = interactive
        self.links = links
        self._names: dict[str, str] = {}

    def _who(self, node: str, display: str, name: str) -> str:
        label = display or name or self._names.get(node) or node[:8]
        self._names[node] = label
        return clean(label)

    def render(self, ev: Event) -> str | None:
        """Format one event.

        Args:
            ev: the event.

        Returns:
            One line (without a newline), or None for an event not shown.
        """
        if isinstance(ev, MessageEvent):
            line = format_line(ev, self._who(ev.origin, ev.display, ev.name))
            if ev.private:
                to = f" to {clean(ev.to_display)}" if ev.self else ""
                return f"[private{to}] {line}"
            return f"(earlier {format_clock(ev.ts)}) {line}" if ev.history else peer_row(line)
        if isinstance(ev, TopicEvent):
            line = format_topic(ev, self._who(ev.origin, ev.display, ev.name))
            return f"-- (earlier {format_clock(ev.ts)}) {line}" if ev.history else f"-- {line}"
        if isinstance(ev, FileOfferEvent):
            who = self._who(ev.origin, ev.display, ev.name)
            line = format_offer(ev, who, OFFERS.number(ev))
            return f"(earlier {format_clock(ev.ts)}) {line}" if ev.history else peer_row(line)
        if isinstance(ev, FileProgressEvent):
            return None  # the full screen's status line shows it; /files lists it
        if isinstance(ev, FileDoneEvent):
            return (
                f"-- got {clean(ev.name)} ({format_size(ev.size)}): {clean(ev.path)} "
                f"(sha256 {ev.sha256[:16]}...)"
            )
        if isinstance(ev, FileFailedEvent):
            return f"!! {clean(ev.name)} failed: {clean(ev.reason)}"
        if isinstance(ev, JoinEvent):
            who = self._who(ev.origin, ev.display, ev.name)
            if ev.via == "presence" and not self.interactive:
                return f"* {who} is here"
            return f"* {who} joined"
        if isinstance(ev, LeaveEvent):
            who = self._who(ev.origin, ev.display, ev.name)
            if ev.reason == "timeout":
                return f"* {who} timed out"
            if ev.reason in ("quit", ""):
                return f"* {who} left"
            return f"* {who} left ({clean(ev.reason)})"
        if isinstance(ev, NickEvent):
            self._names[ev.origin] = ev.display or ev.new
            old = clean(ev.old_display or ev.old)
            return f"* {old} is now known as {clean(ev.display or ev.new)}"
        if isinstance(ev, AwayEvent):
            who = "you" if ev.self else self._who(ev.origin, ev.display, ev.name)
            verb = "are" if ev.self else "is"
            return f"-- {who} {verb} away: {clean(ev.text)}" if ev.text else f"-- {who} {verb} back"
        if isinstance(ev, (PeerUp, PeerDown)) and not self.links:
            self._who(ev.peer, "", ev.name)  # a later PeerDown may carry no name
            return None
        if isinstance(ev, PeerUp):
            who = self._who(ev.peer, "", ev.name)
            return f"-- linked to {who} ({ev.address})"
        if isinstance(ev, PeerDown):
            who = self._who(ev.peer, "", str(getattr(ev, "name", "") or ""))
            reason = clean(ev.reason)
            return f"-- link to {who} lost: {reason}" if reason else f"-- link to {who} lost"
        if isinstance(ev, Notice):
            return f"!! {clean(ev.text)}"
        if isinstance(ev, Ready):
            self._names[ev.node] = ev.name
            line = (
                f"-- you are {clean(ev.name)} in room {clean(ev.room)}, listening on port {ev.port}"
            )
            return line + " (/help for commands)" if self.interactive else line
        log.debug("not shown: %r", ev)
        return None
