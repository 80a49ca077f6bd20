"""The ``/commands`` and chat lines a user types, in both modes."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Protocol

from p2pchat.cli.render import (
    clean,
    format_history,
    format_peers,
    format_stats,
    format_who,
    format_whois,
)
from p2pchat.errors import LineTooLong, LocalError
from p2pchat.node import Node

COMMANDS = (
    "/who",
    "/whois",
    "/msg",
    "/peers",
    "/stats",
    "/history",
    "/nick",
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


DEFAULT_HISTORY_SHOWN = 20
"""Lines ``/history`` shows when no number is given."""

HELP_TEXT = """\
commands:
  /who         who is in the room (* = linked to you directly)
  /whois NAME  the key fingerprints of everyone called NAME or a look-alike
  /msg NAME TEXT  a private line to NAME, encrypted end to end (alice#3f2a
               picks alice by key fingerprint, as /who shows look-alikes)
  /peers       your direct links: name, address, in/out, uptime
  /stats       counters: frames and bytes, duplicates, refusals, rate limits
  /history [N] the room's last N lines (default 20), in the order every node shows
  /nick NEW    change your name
  /me ACTION   an action line, shown as "* you ACTION"
  /help        this text
  /quit        leave the room (so do Ctrl+D, Ctrl+C and SIGTERM)
  //text       send a line that starts with "/"
anything else is sent to the room as a chat line."""


def handle_line(node: Node, out: Replies, line: str) -> bool:
    """Act on one input line: a chat line or a command.

    Errors (an unknown command, a line too long, a bad name) are reported
    through ``out`` and never raised.

    Args:
        node: the running node.
        out: where replies go.
        line: the line, without its newline.

    Returns:
        False when the user asked to quit, else True.
    """
    if not line.strip():
        return True  # empty lines are ignored
    if line.startswith("/") and not line.startswith("//"):
        return _command(node, out, line)
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
        out.obj("history", room=node.room, lines=[asdict(m) for m in lines])
    else:
        out.text(*format_history(node.room, lines))


def _command(node: Node, out: Replies, line: str) -> bool:
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
            out.obj("who", members=[asdict(m) for m in snap.members])
        else:
            out.text(format_who(node.room, snap.members))
    elif cmd == "stats":
        stats = node.stats()
        if out.json_mode:
            out.obj("stats", **{k: v for k, v in stats.as_dict().items() if k != "event"})
        else:
            out.text(*format_stats(stats))
    elif cmd == "msg":
        parts = arg.split(maxsplit=1)
        if len(parts) < 2:
            out.error("usage: /msg NAME TEXT")
        else:
            try:
                node.send_direct(parts[0], parts[1])
            except LocalError as exc:
                out.error(f"not sent: {exc}")
    elif cmd == "whois":
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
        if out.json_mode:
            out.obj("peers", links=[asdict(link) for link in snap.links])
        else:
            out.text(*format_peers(snap.links))
    elif cmd == "nick":
        if not arg:
            out.error("usage: /nick NEW")
        else:
            try:
                node.set_name(arg)
            except LocalError as exc:
                out.error(f"cannot change name: {exc}")
    elif cmd == "me":
        if not arg:
            out.error("usage: /me ACTION")
        else:
            _send(node, out, arg, action=True)
    else:
        shown = clean(line.split(maxsplit=1)[0])
        out.error(f"unknown command {shown} (/help lists the commands; // sends a '/' line)")
    return True
