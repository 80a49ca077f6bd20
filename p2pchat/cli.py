"""The terminal front end: the ``p2pchat`` command.

Two modes, picked by where stdin and stdout go:

* **Interactive** (stdin and stdout are terminals, no ``--json``, in :mod:`p2pchat.tui`): a
  prompt_toolkit input line at the bottom of the screen; incoming lines are
  printed above it (through ``patch_stdout``) and never garble what is being
  typed.  Without ``--name`` it asks for one.
* **Scripted** (anything else): each stdin line is a chat line or a command;
  events go to stdout one per line, as text or, with ``--json``, as one JSON
  object each (:meth:`p2pchat.events.Event.as_dict`).  Diagnostics go to
  stderr only.

Both modes leave gracefully (the room sees ``* alice left``) on ``/quit``,
end of input (Ctrl+D), Ctrl+C and SIGTERM, and then exit with status 0.

Exit statuses are decided in one place, :func:`main`: 2 for bad usage
(:class:`~p2pchat.errors.UsageError`), 1 when the node cannot start
(:class:`~p2pchat.errors.StartupError`: a port taken, an address not on this
machine, mDNS failing) or on an unexpected error, 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import io
import ipaddress
import json
import logging
import os
import queue
import re
import select
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from p2pchat import __version__, wire
from p2pchat.discovery import SERVICE_TYPE, MdnsDiscovery
from p2pchat.errors import LineTooLong, LocalError, P2PChatError, StartupError, UsageError
from p2pchat.events import (
    Event,
    JoinEvent,
    KeyInfo,
    LeaveEvent,
    LinkInfo,
    MemberInfo,
    MessageEvent,
    NickEvent,
    Notice,
    PeerDown,
    PeerUp,
    Ready,
    Stats,
)
from p2pchat.node import DEFAULT_PORT, Node, NodeConfig, check_label, check_name

if TYPE_CHECKING:  # prompt_toolkit is imported only for the interactive mode (p2pchat.tui)
    from prompt_toolkit.application import Application

log = logging.getLogger(__name__)

PROG = "p2pchat"
DEFAULT_ROOM = "lobby"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

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

_EPILOG = """\
In a terminal p2pchat is interactive: type to chat, /help lists the commands.
With stdin not a terminal (a pipe, a file) it is scripted: each stdin line is
a chat line or a command, events go to stdout one per line (UTF-8), as text or
with --json as one JSON object each; end of input leaves the room.

History: each node keeps its rooms' recent lines (--history-days,
--history-lines) in --data-dir and, on every link that comes up, trades with
its peer the lines the other lacks.  Lines you missed while away or split off
arrive marked "(earlier HH:MM)", in order, once the catch-up is over (only
the latest 50 of a long one); /history shows them in their place.

exit status: 0 after leaving the room, 1 when the node cannot start (port
taken, address not on this machine, data directory in use or unreadable,
mDNS failure) or on an unexpected error, 2 for bad usage.

examples:
  p2pchat --name alice
  p2pchat --name bob --room dev --peer 192.168.1.20
  p2pchat --name carol --data-dir ~/.p2pchat-carol   (a second node on one machine)
  printf 'hello\\n/who\\n' | p2pchat --name bot --json --port 0 --ephemeral
"""

_SERVICE_TYPE_RE = re.compile(r"^_[A-Za-z0-9-]{1,15}\._(tcp|udp)\.local\.$")

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

# Lines queued for stdout at most; beyond that a stalled reader of our stdout
# loses lines rather than stalling the node's router thread.
_OUTPUT_QUEUE_MAX = 100_000
_EARLIER_SHOWN = 50
"""Text views show at most this many earlier lines of one catch-up: the latest."""
_EARLIER_QUIET_S = 1.0
"""A catch-up is over (and its earlier lines are printed) after this long without one."""
_WAKE = object()  # Output's writer: look at the earlier lines now
_OUTPUT_DRAIN_S = 10.0


class _Terminate(BaseException):
    """SIGTERM (or SIGHUP, or Ctrl+C in scripted mode) asked us to leave.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception``
    on the way swallows it.
    """


class _ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are UsageErrors, reported by main()."""

    def error(self, message: str) -> NoReturn:
        """Raise a UsageError instead of printing usage and exiting.

        Args:
            message: argparse's description of the problem.

        Raises:
            UsageError: always.
        """
        raise UsageError(f"{message} (see {PROG} --help)")


# -- argument parsing -------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The validated command line.

    Attributes:
        name: display name, or None to ask for one (interactive mode only).
        room: room to join.
        port: TCP port to listen on (0 = any free port).
        port_fallback: take a free port if ``port`` is taken (only when
            ``--port`` was not given).
        interfaces: IPv4 addresses to listen and run mDNS on; empty = all.
        peers: static peers ``(host, port)``.
        mdns: run mDNS discovery.
        json: scripted mode with one JSON object per event.
        service_type: DNS-SD service type.
        log_level: logging level name for diagnostics.
        log_file: write diagnostics to this file instead of stderr.
        broadcast: ``"flood"`` or ``"tree"`` (see ``NodeConfig.broadcast``).
        data_dir: the node's data directory; None with ``--ephemeral``.
        history_days: the history window's age, in days.
        history_lines: the history window's size, lines per room.
        secret: a private room's shared secret (``--secret-file`` or
            ``P2PCHAT_SECRET``), or None.
    """

    name: str | None
    room: str
    port: int
    port_fallback: bool
    interfaces: tuple[str, ...]
    peers: tuple[tuple[str, int], ...]
    mdns: bool
    json: bool
    service_type: str
    log_level: str
    log_file: str | None = None
    broadcast: str = "tree"
    data_dir: str | None = None
    history_days: float = 7.0
    history_lines: int = 10_000
    secret: bytes | None = field(default=None, repr=False)


def validate_name(value: str) -> str:
    """Check a display name the way the wire protocol does.

    Args:
        value: the name.

    Returns:
        ``value`` in NFC.

    Raises:
        UsageError: empty, longer than 32 code points, blanks at either end,
            ``#``, or control, format (zero width, bidi) or other invisible
            characters (``docs/protocol.md`` §5).
    """
    return check_name(value)


def validate_room(value: str) -> str:
    """Check a room name the way the wire protocol does (1..48 code points).

    Args:
        value: the room name.

    Returns:
        ``value`` unchanged.

    Raises:
        UsageError: the room name is invalid.
    """
    return check_label(value, "room", wire.MAX_ROOM_CHARS)


def parse_port(text: str, allow_zero: bool = True) -> int:
    """Parse a TCP port number.

    Args:
        text: decimal digits.
        allow_zero: accept 0 ("any free port").

    Returns:
        The port.

    Raises:
        UsageError: not a number, or out of range.
    """
    low = 0 if allow_zero else 1
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"port {text!r} is not a number")
    port = int(text)
    if not low <= port <= 65535:
        raise UsageError(f"port {port} is out of range ({low}..65535)")
    return port


def parse_peer(text: str) -> tuple[str, int]:
    """Parse a ``--peer`` value: ``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT``.

    Args:
        text: the value; the port defaults to :data:`p2pchat.node.DEFAULT_PORT`.

    Returns:
        ``(host, port)``.

    Raises:
        UsageError: empty host, blanks inside, or a bad port.
    """
    text = text.strip()
    port = DEFAULT_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise UsageError(f"peer {text!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"peer {text!r}: expected [ADDRESS]:PORT")
            port = parse_port(rest[1:], allow_zero=False)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = parse_port(port_text, allow_zero=False)
    else:
        host = text  # a host name, an IPv4 address or a bare IPv6 address
    if not host:
        raise UsageError(f"peer {text!r}: the host is missing")
    if any(ch.isspace() for ch in host):
        raise UsageError(f"peer {text!r}: the host contains blanks")
    return host, port


def parse_interface(text: str) -> str:
    """Parse an ``--interface`` value: one IPv4 address of this machine.

    Args:
        text: a dotted-quad IPv4 address.

    Returns:
        The address in canonical form.

    Raises:
        UsageError: not an IPv4 address, or the wildcard 0.0.0.0.
    """
    try:
        addr = ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise UsageError(f"interface {text!r} is not an IPv4 address") from None
    if addr.is_unspecified:
        raise UsageError("interface 0.0.0.0 means every interface: leave out --interface")
    return str(addr)


def default_data_dir() -> str:
    """The per-user data directory (``platformdirs``), e.g.
    ``~/.local/share/p2pchat`` on Linux."""
    import platformdirs

    return str(platformdirs.user_data_dir("p2pchat", appauthor=False))


SECRET_ENV = "P2PCHAT_SECRET"


def read_secret(path: str | None) -> bytes | None:
    """The room secret: the file's bytes (without a final line end) if
    ``path`` is given, else ``$P2PCHAT_SECRET`` if set, else None.

    Raises:
        UsageError: the file cannot be read, or the secret is empty.
    """
    if path is not None:
        try:
            with open(path, "rb") as f:
                secret = f.read(1 << 16)
        except OSError as exc:
            raise UsageError(f"cannot read the secret file {path}: {exc.strerror}") from None
        secret = secret.rstrip(b"\r\n")
        where = f"the secret file {path}"
    elif os.environ.get(SECRET_ENV) is not None:
        secret = os.environ[SECRET_ENV].encode("utf-8")
        where = SECRET_ENV
    else:
        return None
    if not secret.strip():
        raise UsageError(f"{where} is empty")
    return secret


def parse_days(text: str) -> float:
    """Parse ``--history-days``: a number of days above 0, at most 36500.

    Raises:
        UsageError: not a number, or out of range.
    """
    try:
        days = float(text)
    except ValueError:
        raise UsageError(f"history days must be a number, not {text!r}") from None
    if not 0 < days <= 36_500:
        raise UsageError(f"history days must be above 0 and at most 36500, not {text}")
    return days


def parse_history_lines(text: str) -> int:
    """Parse ``--history-lines``: a whole number from 1 to 1,000,000.

    Raises:
        UsageError: not a whole number, or out of range.
    """
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"history lines must be a whole number, not {text!r}") from None
    if not 1 <= n <= 1_000_000:
        raise UsageError(f"history lines must be 1 to 1000000, not {n}")
    return n


def _arg_type(func: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a parse function so that argparse names the option in its error."""

    def convert(text: str) -> Any:
        try:
            return func(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = func.__name__
    return convert


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser (its errors raise UsageError).

    Returns:
        The parser; ``--help`` and ``--version`` still exit with SystemExit(0).
    """
    p = _ArgumentParser(
        prog=PROG,
        description="Peer-to-peer chat for a local network: no server; peers find each\n"
        "other over mDNS (or --peer) and link up over TCP.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--name",
        metavar="NAME",
        type=_arg_type(validate_name),
        help="your display name (1-32 characters); asked for when interactive and missing, "
        "required when scripted",
    )
    p.add_argument(
        "--room",
        metavar="NAME",
        type=_arg_type(validate_room),
        default=DEFAULT_ROOM,
        help="the room to join (1-48 characters; default: %(default)s)",
    )
    p.add_argument(
        "--port",
        metavar="N",
        type=_arg_type(parse_port),
        default=None,
        help=f"TCP port to listen on (default: {DEFAULT_PORT}, or a free port if that one is "
        "taken); 0 = any free port; an explicit port that is taken is an error",
    )
    p.add_argument(
        "--interface",
        metavar="ADDR",
        type=_arg_type(parse_interface),
        action="append",
        default=[],
        help="listen and run mDNS only on this IPv4 address of this machine "
        "(repeatable; default: every interface)",
    )
    p.add_argument(
        "--peer",
        metavar="HOST[:PORT]",
        type=_arg_type(parse_peer),
        action="append",
        default=[],
        help=f"also link to this peer (repeatable; PORT defaults to {DEFAULT_PORT}); "
        "for networks where multicast does not get through",
    )
    p.add_argument(
        "--no-mdns",
        action="store_true",
        help="no mDNS discovery: find peers by --peer (and the addresses their presences give)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="scripted mode with one JSON object per event on stdout",
    )
    p.add_argument(
        "--broadcast",
        choices=("flood", "tree"),
        default="tree",
        help="how lines spread: tree (default: a Plumtree spanning tree with announcements "
        "elsewhere, used with peers that speak it) or flood (every link)",
    )
    store = p.add_mutually_exclusive_group()
    store.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="where the node keeps its identity and the rooms' history (default: "
        f"{default_data_dir()}); each node on one machine needs its own",
    )
    store.add_argument(
        "--ephemeral",
        action="store_true",
        help="keep nothing on disk: a new identity each run, history in memory only",
    )
    p.add_argument(
        "--secret-file",
        metavar="PATH",
        help="make the room private: members share the secret in this file (or in the "
        "P2PCHAT_SECRET environment variable; never on the command line, which other "
        "users can read); links are encrypted and the room's name is not announced",
    )
    p.add_argument(
        "--history-days",
        metavar="DAYS",
        type=_arg_type(parse_days),
        default=7.0,
        help="keep and trade the lines of the last DAYS days (default: %(default)g)",
    )
    p.add_argument(
        "--history-lines",
        metavar="N",
        type=_arg_type(parse_history_lines),
        default=10_000,
        help="keep and trade at most the newest N lines of a room (default: %(default)s)",
    )
    p.add_argument(
        "--service-type",
        metavar="TYPE",
        default=SERVICE_TYPE,
        help="the DNS-SD service type (default: %(default)s); for tests and demos that "
        "must not see other nodes",
    )
    p.add_argument(
        "--log-level",
        metavar="LEVEL",
        type=str.lower,
        choices=LOG_LEVELS,
        default="warning",
        help=f"diagnostics on stderr: {', '.join(LOG_LEVELS)} (default: %(default)s)",
    )
    p.add_argument(
        "--log-file",
        metavar="PATH",
        help="append diagnostics to this file instead of stderr",
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__} (protocol {wire.PROTOCOL_VERSION})",
    )
    return p


def parse_args(argv: list[str] | None = None) -> Options:
    """Parse and validate the command line.

    Args:
        argv: the arguments without the program name; None for ``sys.argv[1:]``.

    Returns:
        The options.

    Raises:
        UsageError: bad usage (one sentence, for stderr).
        SystemExit: ``--help`` or ``--version`` was given (status 0).
    """
    ns = build_parser().parse_args(argv)
    if not _SERVICE_TYPE_RE.match(ns.service_type):
        raise UsageError(
            f"service type {ns.service_type!r} is not of the form _name._tcp.local. "
            "(name: 1-15 letters, digits or '-')"
        )
    interfaces = tuple(dict.fromkeys(ns.interface))  # the same address twice would clash
    return Options(
        name=ns.name,
        room=ns.room,
        port=DEFAULT_PORT if ns.port is None else ns.port,
        port_fallback=ns.port is None,
        interfaces=interfaces,
        peers=tuple(ns.peer),
        mdns=not ns.no_mdns,
        json=ns.json,
        service_type=ns.service_type,
        log_level=ns.log_level,
        log_file=ns.log_file,
        broadcast=ns.broadcast,
        data_dir=None if ns.ephemeral else (ns.data_dir or default_data_dir()),
        secret=read_secret(ns.secret_file),
        history_days=ns.history_days,
        history_lines=ns.history_lines,
    )


# -- rendering --------------------------------------------------------------------------


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


def format_history(room: str, lines: Sequence[MessageEvent]) -> list[str]:
    """``/history``: a header, then each line with its time."""
    if not lines:
        return [f"-- no lines yet in {clean(room)}"]
    n = len(lines)
    out = [f"-- the last {n} line{'s' if n != 1 else ''} of {clean(room)}:"]
    for ev in lines:
        who = clean(ev.display or ev.name)
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
        f"   rate-limited: {group(stats.rate_limited)}; queue drops {stats.queue_drops}",
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
        interactive: add hints meant for a person at a terminal.
    """

    def __init__(self, interactive: bool = False) -> None:
        self.interactive = interactive
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
        if isinstance(ev, JoinEvent):
            who = self._who(ev.origin, ev.display, ev.name)
            return f"* {who} is here" if ev.via == "presence" else f"* {who} joined"
        if isinstance(ev, LeaveEvent):
            who = self._who(ev.origin, ev.display, ev.name)
            if ev.reason == "timeout":
                return f"* {who} timed out"
            if ev.reason in ("quit", ""):
                return f"* {who} left"
            return f"* {who} left ({clean(ev.reason)})"
        if isinstance(ev, NickEvent):
            self._names[ev.origin] = ev.new
            return f"* {clean(ev.old)} is now known as {clean(ev.new)}"
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


# -- output -----------------------------------------------------------------------------


class Output:
    """Everything we print to stdout goes through here, one whole line at a time.

    ``on_event`` (called on the node's threads) only formats the event and
    queues the line; one writer thread prints the lines in order and flushes
    after each, so lines from different threads never interleave and a slow
    reader of our stdout never stalls the node.  The writer resolves
    ``sys.stdout`` at each write, so under ``patch_stdout`` lines are printed
    above the input line.

    Args:
        json_mode: one JSON object per line instead of text.
        interactive: text meant for a person at a terminal.
        on_broken_pipe: called (once, on the writer thread) when stdout is
            gone, e.g. to leave the room.
    """

    def __init__(
        self,
        json_mode: bool,
        interactive: bool = False,
        on_broken_pipe: Callable[[], None] | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.renderer = Renderer(interactive=interactive)
        self._lock = threading.Lock()  # guards the renderer and the queue order
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_OUTPUT_QUEUE_MAX)
        # Earlier lines (catch-up) in a text view: the latest _EARLIER_SHOWN
        # in the room's order (a min-heap on hlc, origin, line), how many came,
        # and when the catch-up counts as over.
        self._earlier: list[tuple[tuple[int, str, int], str]] = []
        self._earlier_count = 0
        self._earlier_due: float | None = None
        self._on_broken_pipe = on_broken_pipe
        self._dropped = 0
        self._broken = False
        self.leaving = False  # set when we leave the room
        self._thread = threading.Thread(target=self._write_loop, name="p2pchat-cli-out")
        self._thread.daemon = True
        self._thread.start()

    # Producers: any thread.

    def on_event(self, ev: Event) -> None:
        """The node's ``on_event`` callback: format and queue, never block.

        Args:
            ev: the event.
        """
        try:
            with self._lock:
                if self.json_mode:
                    line: str | None = _json_line(ev.as_dict())
                elif self.leaving and isinstance(ev, PeerDown):
                    line = None  # our own leave takes every link down: not news
                else:
                    line = self.renderer.render(ev)
                    if line is not None and isinstance(ev, MessageEvent) and ev.history:
                        self._hold_earlier(ev, line)
                        return
                    if isinstance(ev, MessageEvent) and any(
                        key[1] == ev.origin for key, _ in self._earlier
                    ):
                        # A live line of an origin whose earlier lines wait for
                        # the end of their catch-up: those first, so that its
                        # lines are printed in the order it said them.
                        for held in self._take_earlier_locked(force=True):
                            self._put(held)
                if line is not None:
                    self._put(line)
        except Exception:
            log.exception("could not print %r", ev)

    def obj(self, kind: str, **fields: Any) -> None:
        """Print a command reply in JSON mode: ``{"event": kind, **fields}``.

        Args:
            kind: the ``event`` value.
            **fields: the other keys.
        """
        with self._lock:
            self._put(_json_line({"event": kind, **fields}))

    def text(self, *lines: str) -> None:
        """Print text lines (kept together).

        Args:
            *lines: the lines, without newlines.
        """
        with self._lock:
            for line in lines:
                self._put(line)

    def error(self, text: str) -> None:
        """Report a problem with what the user typed (never fatal).

        Args:
            text: one sentence.
        """
        if self.json_mode:
            self.obj("error", text=text)
        else:
            self.text(f"!! {text}")

    def _hold_earlier(self, ev: MessageEvent, line: str) -> None:
        """Keep an earlier line until its catch-up is over (caller holds
        ``_lock``): a catch-up of 10,000 lines prints only the latest
        ``_EARLIER_SHOWN``, in order, under a line that says how many came."""
        heapq.heappush(self._earlier, ((ev.hlc, ev.origin, ev.line), line))
        if len(self._earlier) > _EARLIER_SHOWN:
            heapq.heappop(self._earlier)
        self._earlier_count += 1
        first = self._earlier_due is None
        self._earlier_due = time.monotonic() + _EARLIER_QUIET_S
        if first:
            self._put(_WAKE)

    def _take_earlier(self, force: bool) -> list[str]:
        """The earlier lines to print now (the catch-up is over, or ``force``)."""
        with self._lock:
            return self._take_earlier_locked(force)

    def _take_earlier_locked(self, force: bool) -> list[str]:
        """:meth:`_take_earlier` with ``_lock`` held by the caller."""
        due = self._earlier_due
        if due is None or (not force and time.monotonic() < due):
            return []
        held = sorted(self._earlier)
        count = self._earlier_count
        self._earlier, self._earlier_count, self._earlier_due = [], 0, None
        lines = [line for _, line in held]
        if count > len(lines):
            lines.insert(
                0,
                f"-- {count} earlier lines came in; the latest {len(lines)} follow "
                f"(/history {count} shows them all in their place)",
            )
        return lines

    def _put(self, line: object) -> None:
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self._dropped += 1
            if self._dropped == 1:
                log.warning("stdout is not being read; dropping output lines")

    # The writer thread.

    def _write_loop(self) -> None:
        while True:
            due = self._earlier_due  # read without the lock: at worst one late wake
            try:
                item = self._queue.get(
                    timeout=None if due is None else max(0.0, due - time.monotonic())
                )
            except queue.Empty:  # a catch-up may be over
                self._write_all(self._take_earlier(force=False))
                continue
            try:
                if item is None:
                    self._write_all(self._take_earlier(force=True))
                    return
                if item is _WAKE:
                    self._write_all(self._take_earlier(force=False))
                elif isinstance(item, str):
                    self._write_all([item])
            finally:
                self._queue.task_done()

    def _write_all(self, lines: list[str]) -> None:
        for line in lines:
            if self._broken:
                return
            self._write(line)

    def _write(self, line: str) -> None:
        if not self.json_mode:
            line = "\n".join(wrap_rows(line, terminal_width()))
        try:
            out = sys.stdout
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError) as exc:  # EPIPE; stdout closed
            self._broken = True
            log.info("stdout is gone (%s); no more output", exc)
            _silence_stdout()
            if self._on_broken_pipe is not None:
                self._on_broken_pipe()

    def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds until every queued line is printed.

        The interactive loop calls this before it draws the next prompt, so
        that a command's reply is not printed while the prompt is being set
        up (which could leave a stray prompt on the reply's line).
        """
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        """Print what is queued (waiting at most a few seconds) and stop the writer."""
        deadline = time.monotonic() + _OUTPUT_DRAIN_S
        while True:
            try:
                self._queue.put(None, timeout=0.2)
                break
            except queue.Full:  # pragma: no cover - a reader of stdout that stalled
                if time.monotonic() > deadline:
                    return  # the writer is a daemon thread: it dies with the process
        self._thread.join(max(0.0, deadline - time.monotonic()))


def _json_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so that the interpreter's final flush of a
    broken stdout does not print 'Exception ignored ... BrokenPipeError'."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
        os.close(devnull)


class _StderrHandler(logging.Handler):
    """A logging handler that writes to whatever ``sys.stderr`` is at emit time.

    Under ``patch_stdout`` that is prompt_toolkit's proxy, so log lines are
    printed above the input line instead of through it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record to the current ``sys.stderr``.

        Args:
            record: the record.
        """
        try:
            msg = self.format(record)
            stream = sys.stderr
            stream.write(msg + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _logging_to_stderr(level_name: str, log_file: str | None = None) -> Iterator[None]:
    """Send log records of ``level_name`` and above to stderr (or to
    ``log_file``, appended, with timestamps), for the duration.

    Raises:
        StartupError: the log file cannot be opened.
    """
    level = getattr(logging, level_name.upper())
    handler: logging.Handler
    fmt = "%(asctime)s %(threadName)s %(name)s %(levelname)s: %(message)s"
    if log_file:
        try:
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise StartupError(f"cannot open log file {log_file}: {exc.strerror}") from None
        handler.setLevel(level)
    else:
        handler = _StderrHandler(level)
        if level > logging.DEBUG:
            fmt = f"{PROG}: %(levelname)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


# -- commands ---------------------------------------------------------------------------


def handle_line(node: Node, out: Output, line: str) -> bool:
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


def _send(node: Node, out: Output, text: str, action: bool) -> None:
    try:
        node.send(text, action=action)
    except LineTooLong as exc:
        out.error(str(exc))
    except LocalError as exc:  # empty line, control characters, overloaded
        out.error(f"not sent: {exc}")


def _history(node: Node, out: Output, arg: str) -> None:
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


def _command(node: Node, out: Output, line: str) -> bool:
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


# -- signals ----------------------------------------------------------------------------


class _Stopper:
    """What SIGTERM and SIGHUP (and, when scripted, SIGINT) do: leave the room.

    The handler runs on the main thread.  It never raises into arbitrary
    code: it raises :class:`_Terminate` only while the main thread is blocked
    reading stdin (scripted mode), makes a running prompt exit (interactive
    mode), and otherwise just sets :attr:`requested`, which the main loop
    checks before it waits for input again.  Once closing has begun, further
    signals are ignored, except a second Ctrl+C, which aborts.
    """

    def __init__(self) -> None:
        self.requested = False
        self.closing = False
        self.reading = False
        self.active = False  # our SIGTERM handler is installed
        self.app: Application[Any] | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler.

        Args:
            signum: the signal.
            frame: unused.

        Raises:
            _Terminate: the main thread is blocked reading stdin.
            KeyboardInterrupt: Ctrl+C while closing.
        """
        if self.closing:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        app = self.app
        if app is not None and app.is_running:
            loop = app.loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop just closed
                    loop.call_soon_threadsafe(self.exit_app)
        if self.reading:
            raise _Terminate

    def exit_app(self) -> None:
        """Make the running prompt return (as if Ctrl+D was pressed), if asked to."""
        app = self.app
        if (
            self.requested
            and app is not None
            and app.is_running
            and app.future is not None
            and not app.future.done()
        ):
            app.exit(exception=EOFError())

    def request_stop(self) -> None:
        """Leave as on SIGTERM; for other threads (the stdout writer, when
        stdout is gone).

        The signal goes to the main thread, so that a blocking read of stdin
        is interrupted and the handler runs at once.
        """
        main_id = threading.main_thread().ident
        if not self.active or self.closing or self.requested or main_id is None:
            return
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_kill(main_id, signal.SIGTERM)

    @contextlib.contextmanager
    def installed(self, sigint: bool) -> Iterator[None]:
        """Install the handler for SIGTERM, SIGHUP (and SIGINT) for the duration.

        Args:
            sigint: also handle SIGINT (scripted mode; interactive mode leaves
                Ctrl+C to prompt_toolkit, which reports it as KeyboardInterrupt).
        """
        signums: list[int] = [signal.SIGTERM]
        if hasattr(signal, "SIGHUP"):
            signums.append(signal.SIGHUP)
        if sigint:
            signums.append(signal.SIGINT)
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for s in signums:
                if s != signal.SIGTERM and signal.getsignal(s) == signal.SIG_IGN:
                    continue  # nohup, or a background job of a script: keep ignoring
                old[s] = signal.signal(s, self.handle)
            self.active = True
        try:
            yield
        finally:
            self.active = False
            for s, handler in old.items():
                signal.signal(s, handler)


# -- the two modes ----------------------------------------------------------------------


def make_node(opts: Options, name: str, on_event: Callable[[Event], None]) -> Node:
    """Build (not start) the node the options describe.

    Args:
        opts: the command line.
        name: the display name.
        on_event: the event callback.

    Returns:
        The node.

    Raises:
        UsageError: an invalid name or room.
    """
    config = NodeConfig(
        name=name,
        room=opts.room,
        port=opts.port,
        interfaces=list(opts.interfaces),
        peers=list(opts.peers),
        port_fallback=opts.port_fallback,
        broadcast=opts.broadcast,
        data_dir=opts.data_dir,
        history_max_age_s=opts.history_days * 86400.0,
        history_max_lines=opts.history_lines,
        secret=opts.secret,
    )
    discovery = (
        MdnsDiscovery(interfaces=list(opts.interfaces) or None, service_type=opts.service_type)
        if opts.mdns
        else None
    )
    return Node(config, discovery=discovery, on_event=on_event)


def _close(node: Node, stopper: _Stopper, out: Output) -> None:
    stopper.closing = True
    out.leaving = True
    node.close()


_STDIN_POLL_S = 0.5
_MAX_INPUT_LINE_BYTES = 1 << 20


class _LineReader:
    """Lines of scripted input, read so that a stop request is never missed.

    A blocking ``readline`` can miss the signal that should end it (one that
    arrives just before the read starts is handled only after the read
    returns); so, where the stream has a file descriptor, the reader waits
    with ``poll`` in steps of ``_STDIN_POLL_S`` and reads what is there with
    ``os.read``.  Lines are UTF-8 (undecodable bytes kept as surrogates, which
    ``Node.send`` refuses); a line longer than 1 MiB is cut (and then refused
    as too long).  Streams without a descriptor (tests) are read with
    ``readline``.  Main thread only.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._buf = b""
        self._eof = False
        self._poller: select.poll | None = None
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            self._fd = None
        if self._fd is not None:
            self._poller = select.poll()
            self._poller.register(self._fd, select.POLLIN)

    def readline(self, timeout_s: float) -> str | None:
        """The next line (with its newline, if it had one), ``""`` at the end
        of input, or None if no whole line came within ``timeout_s`` seconds."""
        if self._fd is None or self._poller is None:
            line: str = self._stream.readline()
            return line
        deadline = time.monotonic() + timeout_s
        while True:
            cut = self._buf.find(b"\n")
            if cut >= 0 or len(self._buf) >= _MAX_INPUT_LINE_BYTES or (self._eof and self._buf):
                end = cut + 1 if cut >= 0 else min(len(self._buf), _MAX_INPUT_LINE_BYTES)
                raw, self._buf = self._buf[:end], self._buf[end:]
                return raw.decode("utf-8", errors="surrogateescape")
            if self._eof:
                return ""
            left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            if not self._poller.poll(left_ms):
                return None
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                self._eof = True
            self._buf += data


def run_scripted(opts: Options) -> int:
    """Scripted mode: stdin lines in, events out, one per line.

    Args:
        opts: the command line (``name`` is required).

    Returns:
        0 after leaving the room.

    Raises:
        UsageError: no ``--name``.
        StartupError: the node could not start.
    """
    if opts.name is None:
        raise UsageError("--name is required when stdin is not a terminal")
    stdin = sys.stdin
    with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
        # JSON lines are UTF-8; undecodable bytes reach node.send(), which refuses them.
        if isinstance(stdin, io.TextIOWrapper):
            stdin.reconfigure(encoding="utf-8", errors="surrogateescape")
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(encoding="utf-8", errors="backslashreplace")
    stopper = _Stopper()
    with stopper.installed(sigint=True):
        # Created and closed inside: the writer may signal the main thread.
        out = Output(json_mode=opts.json, on_broken_pipe=stopper.request_stop)
        try:
            node = make_node(opts, opts.name, out.on_event)
            try:
                node.start()
                reader = _LineReader(stdin)
                while not stopper.requested:
                    stopper.reading = True
                    try:
                        if stopper.requested:
                            break
                        raw = reader.readline(_STDIN_POLL_S)
                    finally:
                        stopper.reading = False
                    if raw is None:
                        continue  # nothing yet: look at stopper.requested again
                    if not raw:
                        break  # end of input
                    line = raw[:-1] if raw.endswith("\n") else raw
                    line = line.removesuffix("\r")
                    if not handle_line(node, out, line):
                        break
            except _Terminate:
                log.info("leaving: signal")
            finally:
                _close(node, stopper, out)
        finally:
            out.close()
    return 0


def _interactive_terminal() -> bool:
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Run p2pchat: the console script ``p2pchat`` and ``python -m p2pchat``.

    The only place where errors become exit statuses and messages.

    Args:
        argv: the arguments without the program name; None for ``sys.argv[1:]``.

    Returns:
        The exit status: 0 after a graceful leave (or ``--help``), 1 when the
        node could not start or on an unexpected error, 2 for bad usage.
    """
    level = "warning"
    try:
        try:
            opts = parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        level = opts.log_level
        with _logging_to_stderr(level, opts.log_file):
            if opts.json or not _interactive_terminal():
                return run_scripted(opts)
            from p2pchat.tui import run_interactive  # scripted runs start faster without it

            return run_interactive(opts)
    except UsageError as exc:
        _say(str(exc))
        return 2
    except StartupError as exc:
        _say(_sentence(str(exc)))
        return 1
    except P2PChatError as exc:
        _say(_sentence(str(exc)))
        return 1
    except KeyboardInterrupt:
        return 130  # a second Ctrl+C while leaving
    except Exception as exc:
        _say(f"unexpected error: {type(exc).__name__}: {exc}")
        if level == "debug":
            traceback.print_exc(file=sys.stderr)
        else:
            _say("(run with --log-level debug for the details)")
        return 1


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _say(text: str) -> None:
    """One line on stderr, prefixed with the program name."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{PROG}: {text}\n")
        sys.stderr.flush()
