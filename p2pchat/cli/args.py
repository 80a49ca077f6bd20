"""The command line of ``p2pchat``: the parser, its checks and :class:`Options`."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from p2pchat import __version__, wire
from p2pchat.discovery import SERVICE_TYPE
from p2pchat.errors import UsageError
from p2pchat.files.manifest import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from p2pchat.node import DEFAULT_PORT, check_label, check_name

PROG = "p2pchat"
DEFAULT_ROOM = "lobby"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

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


@dataclass(frozen=True)
class Options:
    """The validated command line.

    Attributes:
        name: display name, or None to ask for one (interactive mode only).
        room: room to join.
        port: TCP port to listen on (0 = any free port).
        port_fallback: take a free port if ``port`` is taken (only when
            ``--port`` was not given).
        interfaces: IPv4 and IPv6 addresses to listen and run mDNS on; empty = all.
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
        plain: on a terminal, the line mode (an input line, lines printed
            above it) instead of the full screen; also when ``TERM=dumb``.
        notify: in the full screen, a desktop notification for a line
            that names us and a private line (:mod:`p2pchat.cli.notify`).
        download_dir: where fetched files go (``--download-dir``); None:
            the user's downloads folder + ``p2pchat/``.
        accept_files: fetch offers up to this many bytes without ``/get``
            (``--accept-files``); 0: none.
        chunk_size: the chunk size of our offers, bytes (``--chunk-size``);
            None: the default for each file's size.
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
    plain: bool = False
    notify: bool = False
    download_dir: str | None = None
    accept_files: int = 0
    chunk_size: int | None = None


def validate_name(value: str) -> str:
    """Check a name we take (``--name``, the name prompt, ``/nick``): the
    wire protocol's rules, and no blanks at all, so that ``/msg NAME`` and
    Tab completion can address it (a front-end rule: names with blanks from
    others are still accepted, and ``/msg "bob smith" hi`` reaches them).

    Args:
        value: the name.

    Returns:
        ``value`` in NFC.

    Raises:
        UsageError: empty, longer than 32 code points, any blank (Unicode
            white space), ``#``, or control, format (zero width, bidi) or
            other invisible characters (``docs/protocol.md`` §5).
    """
    name = check_name(value)
    if any(ch.isspace() for ch in name):
        joined = "_".join(name.split())
        raise UsageError(f"name must not contain blanks (try {joined!r})")
    return name


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


_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


def parse_interface(text: str) -> list[str]:
    """Parse an ``--interface`` value: an IPv4 or IPv6 address of this
    machine (a link-local IPv6 one with its zone, ``fe80::1%eth0``), or the
    name of an interface, which stands for all its addresses.

    Args:
        text: the address or interface name.

    Returns:
        The addresses in canonical form (one for an address).

    Raises:
        UsageError: a wildcard (``0.0.0.0``, ``::``), a multicast address, a
            link-local IPv6 address without its zone, or no such interface
            (or one without any address).
    """
    text = text.strip()
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        addr = None
    if addr is not None:
        if addr.is_unspecified:
            raise UsageError(f"interface {text} means every interface: leave out --interface")
        if addr.is_multicast:
            raise UsageError(f"interface {text} is a multicast address")
        if isinstance(addr, ipaddress.IPv6Address) and addr.is_link_local and not addr.scope_id:
            raise UsageError(f"interface {text}: a link-local address needs its zone, {text}%eth0")
        return [str(addr)]
    if not _IFNAME_RE.match(text):
        raise UsageError(f"interface {text!r} is neither an IP address nor an interface name")
    from p2pchat.discovery import interface_addresses

    found = interface_addresses(text)
    if found is None:
        raise UsageError(f"no interface named {text!r} on this machine")
    if not found:
        raise UsageError(f"interface {text!r} has no IP address")
    return found


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


_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(text: str) -> int:
    """Parse ``--accept-files``: bytes, or a number with a unit ``k``, ``M``,
    ``G``, ``T`` (decimal, as the offer lines show sizes; ``MB`` and ``MiB``
    are read as ``M``), e.g. ``20M``, ``1.5G``; ``0`` accepts nothing.

    Raises:
        UsageError: not a size.
    """
    m = _SIZE_RE.match(text)
    if m is None:
        raise UsageError(f"a size is a number with an optional unit k, M, G (20M), not {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_chunk_size(text: str) -> int:
    """Parse ``--chunk-size``: ``64K`` to ``1M`` in binary units (``K`` is
    1,024 bytes: a chunk size is a power of two), or bytes.

    Raises:
        UsageError: not a power of two from 64 KiB to 1 MiB.
    """
    m = _SIZE_RE.match(text)
    unit = {"": 1, "k": 1 << 10, "m": 1 << 20}.get(m.group(2).lower()) if m else None
    size = int(float(m.group(1)) * unit) if m is not None and unit is not None else 0
    if not (MIN_CHUNK_BYTES <= size <= MAX_CHUNK_BYTES and size & (size - 1) == 0):
        raise UsageError(f"a chunk size is 64K, 128K, 256K, 512K or 1M, not {text!r}")
    return size


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
        help="your display name (1-32 characters, no blanks); asked for when interactive and "
        "missing (the last run's name offered), "
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
        metavar="ADDR|NAME",
        type=_arg_type(parse_interface),
        action="extend",
        default=[],
        help="listen and run mDNS only on this IPv4 or IPv6 address of this machine "
        "(fe80::1%%eth0 for a link-local one), or on every address of this interface "
        "(repeatable; default: every interface, both families)",
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
        "--plain",
        action="store_true",
        help="on a terminal, a plain line mode (lines printed above one input line) instead "
        "of the full screen; also used when TERM=dumb",
    )
    p.add_argument(
        "--notify",
        action="store_true",
        help="in the full screen, a desktop notification (notify-send, or macOS's) when a "
        "line names you or is private to you; at most one a second",
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
        "--download-dir",
        metavar="DIR",
        default=None,
        help="where /get puts files (default: your downloads folder, p2pchat/ under it)",
    )
    p.add_argument(
        "--accept-files",
        metavar="SIZE",
        type=_arg_type(parse_size),
        default=0,
        help="fetch every file offered to you or the room up to SIZE (20M, 1G) without "
        "/get, never beyond the disk's free space minus 256 MB (default: 0, ask)",
    )
    p.add_argument(
        "--chunk-size",
        metavar="SIZE",
        type=_arg_type(parse_chunk_size),
        default=None,
        help="the chunk size of the files you offer: 64K, 128K, 256K, 512K or 1M "
        "(default: 128K, more for files over 8 GiB)",
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
        plain=ns.plain,
        notify=ns.notify,
        download_dir=ns.download_dir,
        accept_files=ns.accept_files,
        chunk_size=ns.chunk_size,
    )
