"""The ``/commands`` and chat lines a user types, in both modes."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from p2pchat import names
from p2pchat.cli.args import parse_peer, validate_name
from p2pchat.cli.offers import TABLE as OFFERS
from p2pchat.cli.offers import files_json, format_size, offer_json
from p2pchat.cli.render import (
    clean,
    format_current_topic,
    format_duration,
    format_files,
    format_history,
    format_peers,
    format_stats,
    format_who,
    format_whois,
    shown_name,
)
from p2pchat.errors import LineTooLong, LocalError, UsageError
from p2pchat.events import FileOfferEvent, TopicEvent
from p2pchat.files.events import TransferStatus
from p2pchat.node import Node
from p2pchat.peerbook import Remembered, format_address

COMMANDS = (
    "/who",
    "/whois",
    "/msg",
    "/peers",
    "/forget",
    "/stats",
    "/history",
    "/nick",
    "/away",
    "/topic",
    "/send",
    "/get",
    "/cancel",
    "/files",
    "/me",
    "/help",
    "/quit",
)


class Replies(Protocol):
    """Where a command's replies go: :class:`~p2pchat.cli.output.Output` (line
    and scripted modes) or the full screen's chat area."""

    json_mode: bool

    def text(self, *lines: str) -> None:
        """Show text lines (``-- reply``, ``!! problem``), kept together."""

    def error(self, text: str) -> None:
        """Report a problem with what was typed (one sentence)."""

    def obj(self, kind: str, **fields: Any) -> None:
        """A reply in JSON mode: ``{"event": kind, **fields}``."""


@dataclass
class CommandState:
    """What one front end's commands remember from one line to the next
    (one per run; the thread that reads typed lines uses it).

    Attributes:
        nick_warned: the name the last line's ``/nick`` was warned about
            (another member has it or a look-alike); the same ``/nick`` as
            the very next line takes it anyway.
    """

    nick_warned: str | None = None


DEFAULT_HISTORY_SHOWN = 20
"""Lines ``/history`` shows when no number is given."""

HELP_TEXT = """\
commands:
  /who         who is in the room (* = linked to you directly)
  /whois NAME  the key fingerprints of everyone called NAME or a look-alike
  /msg NAME TEXT  a private line to NAME, encrypted end to end (alice#3f2a
               picks alice by key fingerprint, as /who shows look-alikes;
               "bob smith" in quotes for a name with blanks)
  /peers       your direct links: name, address, in/out, uptime; and the
               remembered peers (dialled at start) with when they last answered
  /forget ADDR forget a remembered peer (HOST, HOST:PORT or [IPv6]:PORT) and
               stop dialling it
  /stats       counters: frames and bytes, duplicates, refusals, rate limits
  /history [N] the room's last N lines (default 20), in the order every node shows
  /nick NEW    change your name (no blanks; a name someone has: warned first)
  /away [TEXT] mark yourself away (TEXT shown to the room, at most 200
               characters); /away alone: back
  /topic [TEXT] set the room's topic (at most 300 characters, kept in the
               history, shown in the status line); /topic alone: show it;
               /topic - clears it
  /send [NAME] PATH  offer a file to the room (or to NAME alone, sealed to
               its key): shown as "you offer report.pdf (2.4 MB)"
  /get N       fetch offer N (as its line says: "- /get 3"; or its file id)
               into the download directory, from every node that has it
  /cancel N    stop fetching N (what came is kept: /get N resumes)
  /files       the files offered (number, name, size, who, when) and the
               transfers with their progress
  /me ACTION   an action line, shown as "* you ACTION"
  /help        this text
  /quit        leave the room (so do Ctrl+D, Ctrl+C and SIGTERM)
  //text       send a line that starts with "/"
anything else is sent to the room as a chat line."""


def handle_line(node: Node, out: Replies, line: str, state: CommandState | None = None) -> bool:
    """Act on one input line: a chat line or a command.

    Errors (an unknown command, a line too long, a bad name) are reported
    through ``out`` and never raised.

    Args:
        node: the running node.
        out: where replies go.
        line: the line, without its newline.
        state: what the previous lines left (None: nothing; then a
            ``/nick`` onto a name someone has is always only warned about).

    Returns:
        False when the user asked to quit, else True.
    """
    if not line.strip():
        return True  # empty lines are ignored
    state = state if state is not None else CommandState()
    warned, state.nick_warned = state.nick_warned, None
    if line.startswith("/") and not line.startswith("//"):
        return _command(node, out, line, state, warned)
    text = line[1:] if line.startswith("//") else line
    _send(node, out, text, action=False)
    return True


def _send(node: Node, out: Replies, text: str, action: bool) -> None:
    try:
        node.send(text, action=action)
    except LineTooLong as exc:
        out.error(str(exc))
    except LocalError as exc:  # empty line, control characters, overloaded
        out.error(f"not sent: {exc}")


def _history(node: Node, out: Replies, arg: str) -> None:
    limit = node.config.history_max_lines
    if not arg:
        n = DEFAULT_HISTORY_SHOWN
    elif arg.isdigit() and int(arg) >= 1:
        n = min(int(arg), limit)
    else:
        out.error(f"usage: /history [N], N a whole number from 1 to {limit}")
        return
    lines = node.history(n)
    if out.json_mode:
        # message objects as they were; a topic line as its topic event, an
        # offer as its file_offer event (numbered)
        shown = [
            offer_json(m, OFFERS.number(m))
            if isinstance(m, FileOfferEvent)
            else m.as_dict()
            if isinstance(m, TopicEvent)
            else asdict(m)
            for m in lines
        ]
        out.obj("history", room=node.room, lines=shown)
    else:
        out.text(*format_history(node.room, lines))


TOPIC_CLEAR = "-"
"""``/topic -`` clears the room's topic (a topic of just ``-`` cannot be set)."""


def _topic(node: Node, out: Replies, arg: str) -> None:
    """``/topic``: show the current topic; ``/topic TEXT`` sets it;
    ``/topic -`` clears it."""
    if not arg:
        current = node.topic()
        if out.json_mode:
            out.obj("current_topic", topic=current.as_dict() if current is not None else None)
        else:
            out.text(format_current_topic(current))
        return
    try:
        node.set_topic("" if arg == TOPIC_CLEAR else arg)
    except LineTooLong as exc:
        out.error(str(exc))
    except LocalError as exc:  # control characters, overloaded
        out.error(f"topic not set: {exc}")


def _files(node: Node, out: Replies) -> None:
    """``/files``: the offers this node knows, oldest first, and the
    transfers of this run."""
    offers = node.offers()
    transfers = node.transfers()
    if out.json_mode:
        out.obj("files", offers=files_json(offers), transfers=transfers_json(transfers))
    else:
        out.text(*format_files(offers, transfers))


def transfers_json(transfers: list[TransferStatus]) -> list[dict[str, Any]]:
    """The ``transfers`` of ``/files`` in ``--json``: ``file`` (hex), ``name``,
    ``size``, ``done`` (bytes), ``speed`` (bytes/s), ``holders``, ``eta``
    (seconds or null), ``state``."""
    return [
        {
            "file": t.file.hex(),
            "name": t.name,
            "size": t.size,
            "done": t.done_bytes,
            "speed": round(t.speed_Bps),
            "holders": t.holders,
            "eta": None if t.eta_s is None else round(t.eta_s, 1),
            "state": t.state,
        }
        for t in transfers
    ]


def _send_file(node: Node, out: Replies, arg: str) -> None:
    """``/send PATH`` (the room) or ``/send NAME PATH`` (one member): the
    node hashes the file on its file thread, serves it, then offers it
    (:meth:`Node.send_file`); problems come back as error notices."""
    if not arg:
        out.error("usage: /send PATH, or /send NAME PATH to offer a file to one member")
        return
    to: str | None = None
    path = Path(arg).expanduser()
    if not path.is_file():
        who, rest = split_name(arg)
        if who and rest and Path(rest).expanduser().is_file():
            to, path = who, Path(rest).expanduser()
        else:
            out.error(f"cannot send {clean(arg)}: no such file")
            return
    if to is not None and _is_self(node, to):
        out.error(f"{clean(to)} is you: a file goes to another member (/who lists them)")
        return
    try:
        node.send_file(str(path), to=to)
    except LocalError as exc:
        out.error(f"cannot send {clean(path.name)}: {exc}")


def _offer_arg(out: Replies, cmd: str, arg: str) -> FileOfferEvent | None:
    """The offer ``/get`` or ``/cancel`` names (its number or file id), or
    None after telling the user."""
    if not arg:
        out.error(f"usage: /{cmd} N (the number of an offer, as /files lists them) or a file id")
        return None
    ev = OFFERS.resolve(arg.strip())
    if ev is None:
        out.error(f"no offer {clean(arg)} (/files lists them)")
    return ev


def _get(node: Node, out: Replies, arg: str) -> None:
    """``/get N``: fetch an offer's file (progress in the status line and
    ``/files``; ``-- got NAME`` at the end)."""
    ev = _offer_arg(out, "get", arg)
    if ev is None:
        return
    try:
        node.get_file(ev.offer.file_id.hex())
    except LocalError as exc:
        out.error(f"cannot get {shown_name(ev)}: {exc}")
        return
    if out.json_mode:
        out.obj("get", file=ev.offer.file_id.hex(), name=ev.offer.name, size=ev.offer.size)
    else:
        out.text(
            f"-- fetching {shown_name(ev)} ({format_size(ev.offer.size)}) "
            f"into {clean(str(node.files.download_dir))}"
        )


def _cancel(node: Node, out: Replies, arg: str) -> None:
    """``/cancel N``: stop a download (its part file stays: ``/get N`` resumes)."""
    ev = _offer_arg(out, "cancel", arg)
    if ev is None:
        return
    stopped = node.cancel_file(ev.offer.file_id.hex())
    if out.json_mode:
        out.obj("cancel", file=ev.offer.file_id.hex(), cancelled=stopped)
    elif stopped:
        out.text(f"-- stopped fetching {shown_name(ev)} (what came is kept: /get resumes it)")
    else:
        out.text(f"-- {shown_name(ev)} is not being fetched")


def format_remembered(entries: list[Remembered], now: float) -> list[str]:
    """The remembered peers as ``/peers`` shows them after the links.

    Args:
        entries: the book's entries (:meth:`Node.remembered`).
        now: wall-clock seconds, to say how long ago each answered.

    Returns:
        The lines (none when nothing is remembered).
    """
    if not entries:
        return []
    out = [f"-- {len(entries)} remembered peer{'s' if len(entries) != 1 else ''}:"]
    for e in entries:
        failed = f", {e.failures} failed dials since" if e.failures else ""
        out.append(
            f"--   {clean(format_address(e.host, e.port))}  {e.source}  last answered "
            f"{format_duration(now - e.answered)} ago{failed}"
        )
    return out


def _forget(node: Node, out: Replies, arg: str) -> None:
    """``/forget ADDR``: ``HOST`` (every port), ``HOST:PORT`` or ``[IPv6]:PORT``."""
    if not arg:
        out.error("usage: /forget HOST, HOST:PORT or [IPv6]:PORT (/peers lists them)")
        return
    try:
        host, port = parse_peer(arg)
    except UsageError as exc:
        out.error(f"cannot forget: {exc}")
        return
    with_port = "]:" in arg if arg.startswith("[") else arg.count(":") == 1
    gone = node.forget_peer(host, port if with_port else None)
    shown = clean(format_address(host, port) if with_port else host)
    if out.json_mode:
        out.obj("forget", address=arg, forgotten=[asdict(e) for e in gone])
    elif gone:
        out.text(f"-- forgot {', '.join(clean(format_address(e.host, e.port)) for e in gone)}")
    else:
        out.text(f"-- {shown} is not remembered (/peers lists the remembered peers)")


def split_name(arg: str) -> tuple[str, str]:
    """Split ``/msg``'s argument into the name and the rest: ``bob hi`` or,
    for a name with blanks (others' names may have them), ``"bob smith" hi``.

    Returns:
        ``(name, rest)``; ``("", "")`` for an unclosed quote.
    """
    if arg.startswith('"'):
        name, quote, rest = arg[1:].partition('"')
        return (name, rest.strip()) if quote else ("", "")
    parts = arg.split(maxsplit=1)
    return (parts[0], parts[1]) if len(parts) == 2 else (arg, "")


def _is_self(node: Node, who: str) -> bool:
    """``who`` (a ``/msg`` target) stands for us and for no other member."""
    who = names.normalise(who)
    if "#" in who:
        name, _, prefix = who.rpartition("#")
        mine = len(prefix) >= 4 and node.node_id.startswith(prefix.lower())
        return mine and (not name or names.confusable(name, node.name))
    if who != node.name:
        return False
    return not any(not m.self and m.name == who for m in node.snapshot().members)


def _msg(node: Node, out: Replies, arg: str) -> None:
    who, text = split_name(arg)
    if not who or not text:
        out.error('usage: /msg NAME TEXT (a name with blanks in quotes: /msg "bob smith" hi)')
    elif _is_self(node, who):
        out.error(f"{clean(who)} is you: a private line goes to another member (/who lists them)")
    else:
        try:
            ev = node.send_direct(who, text)
        except LocalError as exc:
            out.error(f"not sent: {exc}")
            return
        for m in node.snapshot().members:
            if m.node == ev.to and m.away and not out.json_mode:
                out.text(f"-- {clean(m.display or m.name)} is away: {clean(m.away)}")


def _nick(node: Node, out: Replies, arg: str, state: CommandState, warned: str | None) -> None:
    """``/nick NEW``: a name with no blanks; onto a name another member has
    (or one that looks like it), only when asked twice in a row."""
    try:
        new = validate_name(arg)
    except UsageError as exc:
        out.error(f"cannot change name: {exc}")
        return
    taken = [m for m in node.snapshot().members if not m.self and names.confusable(m.name, new)]
    if taken and warned != new:
        state.nick_warned = new
        who = ", ".join(sorted(clean(m.display or m.name) for m in taken))
        out.error(
            f"{who} {'is' if len(taken) == 1 else 'are'} in the room already: the others would "
            f"see you as {clean(new)}#{node.node_id[:4]}. /nick {clean(new)} again to take it "
            "anyway"
        )
        return
    try:
        node.set_name(new)
    except LocalError as exc:
        out.error(f"cannot change name: {exc}")


def _command(node: Node, out: Replies, line: str, state: CommandState, warned: str | None) -> bool:
    parts = line[1:].split(maxsplit=1)
    cmd = parts[0].lower() if parts else ""
    arg = parts[1].strip() if len(parts) > 1 else ""
    if cmd in ("quit", "exit", "q"):
        return False
    if cmd == "help":
        if out.json_mode:
            out.obj("help", text=HELP_TEXT)
        else:
            out.text(*HELP_TEXT.splitlines())
    elif cmd == "who":
        snap = node.snapshot()
        if out.json_mode:
            # The reply's keys stay as they were; away texts come as ``away`` events.
            members = [{k: v for k, v in asdict(m).items() if k != "away"} for m in snap.members]
            out.obj("who", members=members)
        else:
            out.text(format_who(node.room, snap.members))
    elif cmd == "stats":
        stats = node.stats()
        if out.json_mode:
            out.obj("stats", **{k: v for k, v in stats.as_dict().items() if k != "event"})
        else:
            out.text(*format_stats(stats))
    elif cmd == "msg":
        _msg(node, out, arg)
    elif cmd == "whois":
        if len(arg) > 1 and arg[0] == arg[-1] == '"':
            arg = arg[1:-1]  # "bob smith", as Tab completes it
        if not arg:
            out.error("usage: /whois NAME")
        else:
            found = node.whois(arg)
            if out.json_mode:
                out.obj("whois", name=arg, keys=[asdict(k) for k in found])
            else:
                out.text(*format_whois(arg, found))
    elif cmd == "history":
        _history(node, out, arg)
    elif cmd == "peers":
        snap = node.snapshot()
        book = node.remembered()
        if out.json_mode:
            out.obj(
                "peers",
                links=[asdict(link) for link in snap.links],
                remembered=[asdict(e) for e in book],
            )
        else:
            out.text(*format_peers(snap.links), *format_remembered(book, time.time()))
    elif cmd == "forget":
        _forget(node, out, arg)
    elif cmd == "nick":
        if not arg:
            out.error("usage: /nick NEW")
        else:
            _nick(node, out, arg, state, warned)
    elif cmd == "away":
        try:
            node.set_away(arg)
        except LocalError as exc:
            out.error(f"cannot set away: {exc}")
    elif cmd == "topic":
        _topic(node, out, arg)
    elif cmd == "files":
        _files(node, out)
    elif cmd == "send":
        _send_file(node, out, arg)
    elif cmd == "get":
        _get(node, out, arg)
    elif cmd == "cancel":
        _cancel(node, out, arg)
    elif cmd == "me":
        if not arg:
            out.error("usage: /me ACTION")
        else:
            _send(node, out, arg, action=True)
    else:
        shown = clean(line.split(maxsplit=1)[0])
        out.error(f"unknown command {shown} (/help lists the commands; // sends a '/' line)")
    return True
