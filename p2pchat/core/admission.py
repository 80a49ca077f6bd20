"""Admission: the checks a flooded message passes before anything about it is kept.

Pure: no sockets, threads, store or clock; the wall clock and the window's
floor are passed in.  The order is ``docs/protocol.md`` §6.1:

1. room;
2. key and signature (``docs/protocol.md`` §7.3): ``unsigned``, ``wrong_key``,
   ``bad_signature``;
   then a line's file offer (:func:`p2pchat.core.offers.refusal`):
   ``bad_file_name``, ``bad_chunk_size``, ``bad_file_size``, ``bad_file_hash``;
3. our own origin: an authentic copy of our own message (``own``, dropped
   quietly, not a refusal);
4. clock: ``ts``, or a line's ``hlc``, more than ``wire.MAX_CLOCK_SKEW_S``
   ahead of our wall clock (``future``);
5. replay (``replayed``): a line below the window's floor; a ``leave`` not
   above every ``seq`` heard from its origin; any other message
   ``REORDER_ALLOWANCE`` below the highest ``seq`` of its origin.

A message that fails a check changes nothing here but the counter of its
reason.  :meth:`Admission.admitted` then keeps what an admitted message says
about its origin (its key, its highest ``seq``), in tables of at most
``max_origins`` origins each.

:data:`REASONS` is the one table of the reasons a frame or a message is
refused, as ``/stats`` counts them (``frames_refused``), the docs list them
and the tests name them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from p2pchat import identity, wire
from p2pchat.core import offers

K = TypeVar("K")
V = TypeVar("V")

REORDER_ALLOWANCE: Final = 64
"""A message (other than a chat line or a leave) whose ``seq`` is this far
below the highest seen from its origin is an old one replayed."""

DEFAULT_MAX_ORIGINS: Final = 4096
"""Most origins each per-origin table keeps; the least recently heard go first."""

SIGNATURE_REASONS: Final = frozenset({"unsigned", "wrong_key", "bad_signature"})
"""The reasons that count against the link that brought the message."""

REASONS: Final[dict[str, str]] = {
    # a frame that ends its link (raised by wire / transport / privacy as RemoteProtocolError)
    "oversized": "a frame's length prefix is 0 or above 65,536 bytes",
    "malformed": (
        "a frame is not one JSON object (`hello`, `refuse`) or one MessagePack array "
        "(the others), or nests too deeply"
    ),
    "invalid_fields": "a field is missing, of the wrong type or out of range",
    "invalid_utf8": (
        "a JSON frame is not valid UTF-8, or holds a lone surrogate; "
        "a MessagePack string is not valid UTF-8"
    ),
    "bad_name": "a name holds invisible, format or bidi characters, or '#'",
    "too_slow": "a frame was still incomplete 12 s after its first byte",
    "wrong_secret": "a private room's frame does not open with the room's key",
    "before_handshake": "a frame other than hello or refuse before the handshake",
    "unexpected_handshake": "a second hello, or a proof out of turn",
    "version": "the peer speaks another protocol version",
    "refused": "the peer refused the link during the handshake",
    # a message dropped, the link kept (this module and the node)
    "wrong_room": "a message or sync for another room",
    "unsigned": "a flooded message without key or signature",
    "wrong_key": "the key does not hash to the message's origin",
    "bad_signature": "the signature does not check",
    "future": "ts or hlc more than 60 s ahead of the receiver's clock",
    "replayed": "an old message sent again after the seen-cache forgot it",
    "equivocation": "a second line under one origin and line number (the higher id)",
    "undecryptable": "a direct message to us that does not open",
    "bad_file_name": (
        "a file offer's name is empty, over 255 bytes of UTF-8, a path, blank at an end, "
        "or holds a control, format, separator, private-use or unassigned character"
    ),
    "bad_chunk_size": "a file offer's chunk size is not a power of two from 64 KiB to 1 MiB",
    "bad_file_size": "a file offer's size is above 256 GiB or more than 262,144 chunks",
    "bad_file_hash": (
        "a file offer's id is not the id of its size, chunk size and root, "
        "or a one-member offer's box does not decode"
    ),
}


class BoundedMap(OrderedDict[K, V], Generic[K, V]):
    """An ordered dict of at most ``max_entries``: :meth:`put` moves a key to
    the end, and the oldest keys go first when it is full."""

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.max_entries = max_entries

    def put(self, key: K, value: V) -> None:
        """Set ``key`` (as the most recent) and drop the oldest past the bound."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.max_entries:
            self.popitem(last=False)


class Admission:
    """The admission checks of one node (see the module docstring).

    Not thread-safe: the node calls it under its state lock.

    Args:
        self_id: our node id.
        room: our room as it is on the wire (a private room's tag).
        max_origins: most origins each per-origin table keeps.
        skew_s: how far ahead of our wall clock a message may be stamped.
        verify: the signature check, ``(key hex, sig hex, signed bytes) ->
            bool`` (default :func:`p2pchat.identity.verify`; the simulator
            passes one with a cache shared by its nodes).

    Attributes:
        refused: counts of refusals by reason (keys of :data:`REASONS`);
            the node counts its other refusals in the same dict.
        keys: origin -> its public key (hex), for origins admitted.
        max_seq: origin -> the highest ``seq`` admitted from it.
    """

    def __init__(
        self,
        self_id: str,
        room: str,
        max_origins: int = DEFAULT_MAX_ORIGINS,
        skew_s: float = wire.MAX_CLOCK_SKEW_S,
        verify: Callable[[str, str, bytes], bool] | None = None,
    ) -> None:
        self.self_id = self_id
        self.verify = verify or identity.verify
        self.room = room
        self.skew_s = skew_s
        self.refused: dict[str, int] = {}
        self.keys: BoundedMap[str, str] = BoundedMap(max_origins)
        self.max_seq: BoundedMap[str, int] = BoundedMap(max_origins)

    def refuse(self, reason: str) -> str:
        """Count a refusal under ``reason``; returns ``reason``."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return reason

    def signature(self, msg: wire.FloodMessage) -> str | None:
        """None if ``msg`` carries its origin's key and a valid signature,
        else the reason (``unsigned``, ``wrong_key``, ``bad_signature``).
        Changes nothing."""
        if not msg.key or not msg.sig:
            return "unsigned"
        if self.keys.get(msg.origin) != msg.key and identity.node_id_of(msg.key) != msg.origin:
            return "wrong_key"  # (a key admitted with this origin before was checked then)
        if not self.verify(msg.key, msg.sig, wire.signing_bytes(msg)):
            return "bad_signature"
        return None

    def check(
        self,
        msg: wire.FloodMessage,
        wall_s: float,
        floor_us: Callable[[], int],
        last_seq: Callable[[str], int],
    ) -> str | None:
        """Run the checks in order; count and return the first that fails.

        Args:
            msg: a decoded, validated flooded message (live or a catch-up line).
            wall_s: our wall clock, seconds since the epoch.
            floor_us: the lowest clock value a line may carry (the window's
                floor, µs); asked only for a chat line.
            last_seq: the ``seq`` of the latest message heard from an origin
                (e.g. the roster's), asked only for a ``leave``.

        Returns:
            None if ``msg`` passed; ``"own"`` for an authentic copy of our own
            message (not counted); else the reason it was refused (counted).
        """
        if msg.room != self.room:
            return self.refuse("wrong_room")
        bad = self.signature(msg)
        if bad is not None:
            return self.refuse(bad)
        if isinstance(msg, wire.Chat) and msg.offer is not None:
            bad = offers.refusal(msg.offer)
            if bad is not None:
                return self.refuse(bad)
        if msg.origin == self.self_id:
            return "own"
        ahead = wall_s + self.skew_s
        if msg.ts > ahead or (isinstance(msg, wire.Chat) and msg.hlc > ahead * 1e6):
            return self.refuse("future")
        if self.replayed(msg, floor_us, last_seq):
            return self.refuse("replayed")
        return None

    def replayed(
        self, msg: wire.FloodMessage, floor_us: Callable[[], int], last_seq: Callable[[str], int]
    ) -> bool:
        """An old message sent again (see the module docstring).  Changes nothing."""
        if isinstance(msg, wire.Chat) and msg.hlc:
            return msg.hlc < floor_us()
        highest = self.max_seq.get(msg.origin, 0)
        if isinstance(msg, wire.Leave):
            return msg.seq <= max(highest, last_seq(msg.origin))
        return msg.seq + REORDER_ALLOWANCE < highest

    def admitted(self, msg: wire.FloodMessage) -> None:
        """Keep what an admitted message tells about its origin: its key (so
        the next message skips the id check) and its highest ``seq``."""
        self.keys.put(msg.origin, msg.key)
        if msg.seq > self.max_seq.get(msg.origin, 0):
            self.max_seq.put(msg.origin, msg.seq)
