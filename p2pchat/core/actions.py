"""What the protocol core asks its shell to do (sans-I/O, as h11 and aioquic).

Every entry point of :class:`p2pchat.core.protocol.Protocol` returns a list
of these, in the order the core decided them; the shell carries them out in
that order (``node.py`` after releasing its state lock, the simulator on its
virtual LAN).  Links are opaque ids the shell chose (any hashable value: the
product's :class:`~p2pchat.transport.Link` objects, the simulator's ints).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from p2pchat.events import Event

LinkId = Hashable
"""A link as the shell names it; the core only compares and hashes it."""


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``frame`` (an encoded frame: :func:`p2pchat.wire.encode_frame`,
    header included) on ``link``.  One frame object is shared by the sends of
    one forward: the shell may rely on that to encode or decode it once."""

    link: LinkId
    frame: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close ``link`` at once (its queued frames are dropped); the shell
    reports the end later with :meth:`Protocol.link_down`."""

    link: LinkId
    reason: str


@dataclass(frozen=True, slots=True)
class Retire:
    """Half-close ``link`` once its queued frames are written (the loser of a
    tie-break between two links to one peer, or our leave on close)."""

    link: LinkId


@dataclass(frozen=True, slots=True)
class Dial:
    """Dial ``node`` once at ``addrs`` (IP address strings) on TCP ``port``;
    the shell reports the outcome with :meth:`Protocol.dial_done` (and, when
    a link comes up, :meth:`Protocol.link_up`)."""

    node: str
    addrs: tuple[str, ...]
    port: int


@dataclass(frozen=True, slots=True)
class Emit:
    """Pass ``event`` to the front end (``on_event``), in this order."""

    event: Event


Action = Send | Close | Retire | Dial | Emit
