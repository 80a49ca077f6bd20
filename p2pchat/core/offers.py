"""File offers on the chat links: the wire's :class:`~p2pchat.wire.FileOffer`
and the :class:`~p2pchat.files.manifest.Offer` value, both ways, and a
one-member offer's sealed box (``docs/files.md`` §3, §8, §9.1).

A room offer is a numbered chat line whose ``offer`` field is set (``text``
"", no action, no topic): admitted, stored, ordered and caught up like any
line.  A one-member offer is a ``direct`` message whose box holds the offer
instead of a line: the box's plaintext is one flag byte, then

* ``0`` or ``1``: a line (UTF-8; ``1`` = an action), as ``/msg`` sends it;
* ``2`` (:data:`BOX_OFFER`): the offer's MessagePack array
  ``[file, fname, size, chunk, root]`` (the encoding of
  :class:`~p2pchat.wire.FileOffer` in a frame).  Its first byte is ``0x95``
  (an array of five), never the first byte of UTF-8 text, so a receiver
  that knows only lines finds no valid line in it and drops it as
  ``undecryptable``, as it drops any box it cannot read.

Pure: no sockets, threads or clock.
"""

from __future__ import annotations

from typing import Final

import msgspec

from p2pchat import wire
from p2pchat.errors import UsageError
from p2pchat.files.errors import BadOffer
from p2pchat.files.manifest import Offer, make_offer

BOX_LINE: Final = 0
"""Flag byte of a direct box holding a line."""

BOX_ACTION: Final = 1
"""Flag byte of a direct box holding an action line (``/me``)."""

BOX_OFFER: Final = 2
"""Flag byte of a direct box holding a one-member file offer."""

OFFER_REASONS: Final = ("bad_file_name", "bad_chunk_size", "bad_file_size", "bad_file_hash")
"""The reasons an offer is refused (``frames_refused``), :class:`BadOffer` codes."""

_box_encoder = msgspec.msgpack.Encoder()


def offer_of(fields: wire.FileOffer) -> Offer:
    """The validated :class:`Offer` of a peer's offer fields.

    Raises:
        BadOffer: its ``code`` is one of :data:`OFFER_REASONS`
            (:func:`~p2pchat.files.manifest.make_offer`).
    """
    return make_offer(
        bytes.fromhex(fields.file),
        fields.fname,
        fields.size,
        fields.chunk,
        bytes.fromhex(fields.root),
    )


def check_own(offer: Offer) -> wire.FileOffer:
    """The wire fields of our own ``offer``, checked by the rules receivers
    apply (so that we never flood an offer every member refuses).

    Raises:
        UsageError: the offer breaks a rule (the sentence says which).
    """
    fields = fields_of(offer)
    try:
        offer_of(fields)
    except BadOffer as exc:
        raise UsageError(f"cannot offer {offer.name!r}: {exc}") from None
    return fields


def unchecked(fields: wire.FileOffer) -> Offer:
    """The :class:`Offer` of fields already admitted (a stored line, ours):
    no check, never raises."""
    return Offer(
        bytes.fromhex(fields.file),
        fields.fname,
        fields.size,
        fields.chunk,
        bytes.fromhex(fields.root),
    )


def fields_of(offer: Offer) -> wire.FileOffer:
    """The wire fields of ``offer`` (ours: already valid)."""
    return wire.FileOffer(
        file=offer.file_id.hex(),
        fname=offer.name,
        size=offer.size,
        chunk=offer.chunk_size,
        root=offer.root.hex(),
    )


def refusal(fields: wire.FileOffer) -> str | None:
    """None if ``fields`` make a valid offer, else the reason (one of
    :data:`OFFER_REASONS`).  Changes nothing."""
    try:
        offer_of(fields)
    except BadOffer as exc:
        return exc.code
    return None


def box_plaintext(offer: Offer) -> bytes:
    """The plaintext of a one-member offer's box: :data:`BOX_OFFER`, then
    the offer's MessagePack array (with the two hashes as bin 32)."""
    f = fields_of(offer)
    array = [bytes.fromhex(f.file), f.fname, f.size, f.chunk, bytes.fromhex(f.root)]
    return bytes([BOX_OFFER]) + _box_encoder.encode(array)


def open_box_offer(body: bytes) -> Offer:
    """The offer in a box's plaintext after its flag byte :data:`BOX_OFFER`.

    Raises:
        BadOffer: not a MessagePack offer array (``bad_file_hash``), or an
            offer :func:`offer_of` refuses (its reason).
    """
    try:
        file, fname, size, chunk, root = msgspec.msgpack.decode(body, type=_BoxOffer)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise BadOffer("a direct box's offer does not decode", "bad_file_hash") from None
    return make_offer(file, fname, size, chunk, root)


_BoxOffer = tuple[bytes, str, int, int, bytes]
"""How a box's offer array decodes (the hashes' lengths checked by make_offer)."""
