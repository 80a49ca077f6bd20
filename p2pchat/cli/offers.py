"""File offers on the command line: the per-process offer numbers (``/get
3``), sizes for people and the ``file_offer`` JSON (no I/O; the lines
themselves are :mod:`p2pchat.cli.render`'s).

Every front end of the process (the line mode, ``--json``, the full screen)
numbers offers through the one table here, :data:`TABLE`, so that the
number a person reads is the number ``/get N`` takes, and
:func:`resolve_offer` finds an offer from ``3`` or a file id prefix.  The
first offer seen is 1; a file offered again (by anyone) keeps its number.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final

from p2pchat.events import FileOfferEvent

MAX_NUMBERED: Final = 4096
"""Most offers the table remembers; the least recently numbered go first
(their numbers are not reused)."""

MIN_ID_PREFIX: Final = 8
"""A file id prefix must have at least this many hex digits to name an offer."""

_HEX_RE: Final = re.compile(r"[0-9a-fA-F]+")


class OfferTable:
    """Offer numbers of one process: file id -> (number, latest event).

    Thread-safe (the node's router thread numbers offers as they come; the
    input thread resolves ``/get`` arguments).
    """

    def __init__(self, max_entries: int = MAX_NUMBERED) -> None:
        self._lock = threading.Lock()
        self._max = max_entries
        self._next = 1
        self._by_file: OrderedDict[str, tuple[int, FileOfferEvent]] = OrderedDict()
        self._by_number: dict[int, str] = {}

    def number(self, ev: FileOfferEvent) -> int:
        """The number of ``ev``'s file: the one it already has, or the next
        (1 for the first offer of the run).  Keeps ``ev`` as its latest event."""
        key = ev.file_hex
        with self._lock:
            known = self._by_file.get(key)
            if known is not None:
                self._by_file[key] = (known[0], ev)
                self._by_file.move_to_end(key)
                return known[0]
            n = self._next
            self._next += 1
            self._by_file[key] = (n, ev)
            self._by_number[n] = key
            while len(self._by_file) > self._max:
                _old, (old_n, _) = self._by_file.popitem(last=False)
                self._by_number.pop(old_n, None)
            return n

    def resolve(self, arg: str) -> FileOfferEvent | None:
        """The offer ``arg`` names: its number (``3``), or a prefix of at
        least :data:`MIN_ID_PREFIX` hex digits of its file id that only one
        numbered offer has; None if none (or several) match."""
        arg = arg.strip()
        with self._lock:
            if arg.isdigit() and len(arg) < MIN_ID_PREFIX:
                key = self._by_number.get(int(arg))
                return self._by_file[key][1] if key is not None else None
            if len(arg) < MIN_ID_PREFIX or not _HEX_RE.fullmatch(arg):
                return None
            prefix = arg.lower()
            found = [ev for k, (_, ev) in self._by_file.items() if k.startswith(prefix)]
            return found[0] if len(found) == 1 else None

    def clear(self) -> None:
        """Forget every number and start again at 1 (for tests)."""
        with self._lock:
            self._next = 1
            self._by_file.clear()
            self._by_number.clear()


TABLE: Final = OfferTable()
"""The process's offer numbers."""


def resolve_offer(arg: str) -> FileOfferEvent | None:
    """The offer ``arg`` names in this process (``3``, or a file id prefix of
    at least 8 hex digits), or None: :meth:`OfferTable.resolve` of :data:`TABLE`."""
    return TABLE.resolve(arg)


def format_size(size: int) -> str:
    """A size in bytes for people, decimal units with one decimal place:
    ``512 B``, ``2.4 kB``, ``2.4 MB``, ``1.5 GB`` (``GB`` above that too)."""
    if size < 1000:
        return f"{size} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6)):
        if round(size / scale, 1) < 1000:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1e9:.1f} GB"


def offer_json(ev: FileOfferEvent, number: int) -> dict[str, Any]:
    """The ``file_offer`` JSON object: :meth:`FileOfferEvent.as_dict
    <p2pchat.events.FileOfferEvent.as_dict>` with ``number``."""
    return {**ev.as_dict(), "number": number}


def files_json(offers: Iterable[FileOfferEvent]) -> list[dict[str, Any]]:
    """``/files`` in JSON: each offer's ``file_offer`` object (without ``event``)."""
    out = []
    for ev in offers:
        obj = offer_json(ev, TABLE.number(ev))
        del obj["event"]
        out.append(obj)
    return out
