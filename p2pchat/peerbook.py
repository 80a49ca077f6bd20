"""Remembered peers: addresses that answered before, kept in the data directory.

A node that linked to a peer it dialled (a ``--peer`` address typed once, or
an address a presence told it of) keeps that address in
``<data_dir>/peers.json``, with the peer's node id, where the address came
from (``typed`` or ``learnt``), when it last answered (wall-clock seconds)
and how many dials to it failed since.  On the next start the node dials
them again through the core's overlay (:meth:`Protocol.found
<p2pchat.core.protocol.Protocol.found>`): with the overlay's backoff, forgotten
by it after its ``max_failures`` dials in a row but offered again later
(:meth:`Peers.recall_due <p2pchat.peers.Peers.recall_due>`), never static, and through whatever
address policy the overlay's ``learn`` applies (an address read from the data
directory is no more trusted than one a peer sent).  Peers found by mDNS are
not remembered: mDNS finds them again on the same LAN, and they would only
crowd out the routed or VPN peers the book is for.

**Why a JSON file, not a table of the SQLite store.**  The store is the
history: its writer thread batches lines, and an unreadable store stops the
node.  The book is a few kilobytes that change a few times an hour; a file of
its own is written whole (temp file, ``fsync``, ``rename``: never half
written), mode 0600, and when it is unreadable or malformed it is ignored with
a warning and rewritten at the next change, without touching the history.
Only one node uses a data directory at a time (the store's lock), so no
other process writes the file meanwhile.

**Bounds** (``docs/reliability.md``): at most :data:`MAX_ENTRIES` addresses
(a new one evicts the one that answered longest ago: ``remembered_full``),
kept :data:`MAX_AGE_S` since they last answered (``remembered_expired``), a
file over :data:`MAX_FILE_BYTES` or not in the format ignored
(``remembered_unreadable``), a malformed entry skipped
(``remembered_bad_entry``).  The counters are in ``Node.stats().rate_limited``.

Thread: every method may be called from any thread; the book has its own
lock (never held while taking the node's).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("p2pchat.node")

FILE_NAME = "peers.json"
"""The book's file in the data directory."""

MAX_ENTRIES = 64
"""Most addresses remembered; a new one evicts the one that answered longest ago."""

MAX_AGE_S = 30 * 86400.0
"""An address that has not answered for this long (seconds) is forgotten."""

MAX_FILE_BYTES = 256 * 1024
"""A bigger file is not read (ignored with a warning): 64 entries take about 10 KB."""

MAX_HOST_CHARS = 255
"""Longest host (a DNS name is at most 253 characters; an IPv6 address with a scope fits)."""

MAX_ADDRS_PER_PEER = 8
"""Most addresses of one peer handed to the overlay (its own bound)."""

SAVE_EVERY_S = 3600.0
"""A peer that answers again is written at once only if its stored time is
older than this (seconds); else at the next change or when the node closes."""

SOURCES = ("typed", "learnt")

_NODE_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass
class Remembered:
    """One remembered address.

    Attributes:
        host: the address (IPv4, IPv6 or a host name as typed), as text.
        port: its TCP port (1..65535).
        node: the node id (16 hex digits) that answered there.
        source: ``"typed"`` (``--peer``) or ``"learnt"`` (a presence).
        answered: when a link to it last came up (wall clock, seconds since
            the Unix epoch).
        failures: dials to that peer that failed since it last answered.
    """

    host: str
    port: int
    node: str
    source: str
    answered: float
    failures: int = 0


def format_address(host: str, port: int) -> str:
    """``host:port``, or ``[host]:port`` for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _entry(raw: Any) -> Remembered | None:
    """One entry of the file, checked; None if malformed."""
    if not isinstance(raw, dict):
        return None
    host, port, node = raw.get("host"), raw.get("port"), raw.get("node")
    source, answered, failures = raw.get("source"), raw.get("answered"), raw.get("failures", 0)
    if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_CHARS:
        return None
    if any(ch.isspace() or not ch.isprintable() for ch in host):
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    if not isinstance(node, str) or not _NODE_RE.match(node):
        return None
    if source not in SOURCES:
        return None
    if isinstance(answered, bool) or not isinstance(answered, int | float):
        return None
    if not math.isfinite(answered):
        return None
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
        return None
    return Remembered(host, port, node, str(source), float(answered), min(failures, 1_000_000))


class PeerBook:
    """The remembered peers of one data directory (see the module docstring).

    Args:
        data_dir: the node's data directory (it exists; the caller holds its
            lock), or None to keep nothing (``--ephemeral``): then the book
            stays empty and never touches a disk.
        now: wall-clock seconds (``time.time()``) for the expiry at load.
        max_entries, max_age_s: the bounds (tests make them small).

    Attributes:
        warning: why the file was ignored at load ("" if it was not).
        counts: bounds hit (``remembered_full``, ``remembered_expired``,
            ``remembered_unreadable``, ``remembered_bad_entry``,
            ``remembered_unwritable``).

    Never raises for a bad file: it is ignored with a warning (logged, and in
    :attr:`warning` for the node to show).
    """

    def __init__(
        self,
        data_dir: str | None,
        now: float,
        max_entries: int = MAX_ENTRIES,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        self.path = None if data_dir is None else Path(data_dir) / FILE_NAME
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.warning = ""
        self.counts: dict[str, int] = {}
        self._entries: dict[tuple[str, int], Remembered] = {}
        self._saved: dict[tuple[str, int], float] = {}  # answered as last written
        self._lock = threading.Lock()
        self._load(now)

    @property
    def enabled(self) -> bool:
        """False for an ephemeral node (no data directory)."""
        return self.path is not None

    def _count(self, what: str, n: int = 1) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n

    # -- the file -----------------------------------------------------------------

    def _load(self, now: float) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._ignore(f"cannot read {self.path}: {exc}")
            return
        if len(data) > MAX_FILE_BYTES:
            self._ignore(f"{self.path} is over {MAX_FILE_BYTES} bytes")
            return
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            self._ignore(f"{self.path} is not valid JSON: {exc}")
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("peers"), list):
            self._ignore(f'{self.path} has no "peers" list')
            return
        for raw in doc["peers"]:
            entry = _entry(raw)
            if entry is None:
                self._count("remembered_bad_entry")
                continue
            entry.answered = min(entry.answered, now)  # a clock set back: not "in the future"
            if now - entry.answered > self.max_age_s:
                self._count("remembered_expired")
                continue
            key = (entry.host, entry.port)
            old = self._entries.get(key)
            if old is None or old.answered < entry.answered:
                self._entries[key] = entry
        self._evict()
        self._saved = {k: e.answered for k, e in self._entries.items()}

    def _ignore(self, why: str) -> None:
        self.warning = f"remembered peers ignored: {why}"
        self._count("remembered_unreadable")
        log.warning("%s", self.warning)

    def _evict(self) -> None:
        """Down to ``max_entries``: the ones that answered longest ago go.  Book lock held."""
        over = len(self._entries) - self.max_entries
        if over <= 0:
            return
        oldest = sorted(self._entries.items(), key=lambda kv: (kv[1].answered, kv[0]))[:over]
        for key, _ in oldest:
            del self._entries[key]
        self._count("remembered_full", over)

    def save(self, now: float) -> None:
        """Write the book (expired entries dropped first): temp file in the
        data directory, ``fsync``, rename over ``peers.json``, mode 0600.
        A failure is logged (``remembered_unwritable``), never raised."""
        if self.path is None:
            return
        with self._lock:
            self._expire(now)
            if not self._entries and not self.path.exists():
                return  # nothing remembered, nothing to write
            doc = {"version": 1, "peers": [asdict(e) for e in self._sorted()]}
            data = json.dumps(doc, indent=1).encode("utf-8")
            tmp = self.path.with_name(f".{FILE_NAME}.tmp")
            try:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()  # a leftover of a crash: O_EXCL gives a fresh 0600 file
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
                fd = os.open(tmp, flags, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:
                self._count("remembered_unwritable")
                log.warning("cannot write the remembered peers %s: %s", self.path, exc)
                with contextlib.suppress(OSError):
                    tmp.unlink()
                return
            self._saved = {k: e.answered for k, e in self._entries.items()}

    def _expire(self, now: float) -> None:
        """Drop entries unanswered for ``max_age_s``.  Book lock held."""
        old = [k for k, e in self._entries.items() if now - e.answered > self.max_age_s]
        for key in old:
            del self._entries[key]
        self._count("remembered_expired", len(old))

    def _sorted(self) -> list[Remembered]:
        """Entries, the most recently answered first.  Book lock held."""
        return sorted(self._entries.values(), key=lambda e: (-e.answered, e.host, e.port))

    # -- what the node tells it ---------------------------------------------------

    def answered(self, host: str, port: int, node: str, source: str, now: float) -> None:
        """A link to ``host:port`` we dialled came up with ``node``: remember
        it (a new address may evict the one that answered longest ago).  A
        ``typed`` source stays typed.  Written at once when the entry is new
        or changed, or last written over :data:`SAVE_EVERY_S` ago.

        Args:
            host, port: the address dialled.
            node: the node id that answered there.
            source: ``"typed"`` or ``"learnt"``.
            now: wall-clock seconds.
        """
        if self.path is None or not host or len(host) > MAX_HOST_CHARS:
            return
        key = (host, port)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = Remembered(host, port, node, source, now)
                self._evict()
                write = True
            else:
                write = entry.node != node or (source == "typed" and entry.source != "typed")
                entry.node = node
                entry.source = "typed" if source == "typed" else entry.source
                entry.answered = now
                entry.failures = 0
                write = write or now - self._saved.get(key, float("-inf")) > SAVE_EVERY_S
        if write:
            self.save(now)

    def failed(self, node: str, hosts: list[str], port: int) -> None:
        """A dial to ``node`` (at ``hosts``, ``port``) got no link: its
        entries count one more failure (written with the next change)."""
        with self._lock:
            for host in hosts:
                entry = self._entries.get((host, port))
                if entry is not None and entry.node == node:
                    entry.failures += 1

    def forget(self, host: str, port: int | None, now: float) -> list[Remembered]:
        """Remove ``host:port`` (every port of ``host`` when ``port`` is None)
        and write the book.

        Returns:
            the entries removed (empty if none matched).
        """
        with self._lock:
            gone = [e for k, e in self._entries.items() if k[0] == host and port in (None, k[1])]
            for e in gone:
                del self._entries[(e.host, e.port)]
        if gone:
            self.save(now)
        return gone

    # -- what the node asks --------------------------------------------------------

    def entries(self) -> list[Remembered]:
        """Copies of every entry, the most recently answered first."""
        with self._lock:
            return [Remembered(**asdict(e)) for e in self._sorted()]

    def peers(self) -> list[tuple[str, list[str], int]]:
        """What to dial at start: ``(node, hosts, port)`` per node, most
        recently answered first; a node's hosts (at most
        :data:`MAX_ADDRS_PER_PEER`) are those of the port that answered
        last, newest first."""
        out: dict[str, tuple[list[str], int]] = {}
        for e in self.entries():
            hosts, port = out.setdefault(e.node, ([], e.port))
            if e.port == port and len(hosts) < MAX_ADDRS_PER_PEER:
                hosts.append(e.host)
        return [(node, hosts, port) for node, (hosts, port) in out.items()]
