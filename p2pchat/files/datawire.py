"""The messages of a data link (``docs/files.md`` §9.2): encode, decode, validate.

A data link is a :class:`p2pchat.transport.Link` whose hello lists the
``data`` feature; after the handshake its frames carry the messages below
instead of chat ones (the link's ``decode_body`` is :func:`decode_body`).
Same framing as every link (4-byte length, body at most
:data:`p2pchat.wire.MAX_FRAME_BYTES`, sealed), each body a MessagePack array:
the type tag, then the fields in order; file ids are ``bin`` of 32 bytes.

A chunk (up to 1 MiB) travels as ``fchunk`` *slices* of at most
:data:`MAX_SLICE_BYTES`, in order, so that every frame stays within 64 KiB.

Pure: no sockets, no threads, no clock.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from p2pchat import wire
from p2pchat.errors import RemoteProtocolError

MAX_SLICE_BYTES: Final = 60 * 1024
"""Most chunk bytes one ``fchunk`` frame carries (60 KiB: with its fields and
the seal it stays under the 64 KiB frame limit)."""

MAX_HAS_INDICES: Final = 256
"""Most chunk indices one ``fhas`` lists."""

MAX_HOLDERS: Final = 32
"""Most holders one ``fholders`` lists."""

MAX_HOLDER_ADDRS: Final = 8
"""Most addresses per holder in ``fholders``."""

MAX_MAP_BYTES: Final = (1 << 18) // 8
"""The longest have-map: one bit per chunk of the largest file (32 KiB)."""

FileId = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Index = Annotated[int, msgspec.Meta(ge=0, lt=1 << 18)]
WHOLE_FILE: Final = -1
"""``fno.idx`` for "I do not serve this file to you" (an answer to ``fhave``
or ``fpiece_get``): the same for a file offered to other members only as for
an id never heard of."""


class _D(msgspec.Struct, array_like=True, frozen=True, tag_field="type"):
    """Base of the data-link messages (array form, tag first)."""


class FHave(_D, tag="fhave", frozen=True):
    """My whole have-map of ``file`` (bit ``i``, most significant first, of
    byte ``i // 8``); sent by a requester when it starts wanting a file on
    this link (an empty map is fine) and by a holder in answer."""

    file: FileId
    map: Annotated[bytes, msgspec.Meta(max_length=MAX_MAP_BYTES)]


class FHas(_D, tag="fhas", frozen=True):
    """I now also have these chunks (batched, at most 4 a second)."""

    file: FileId
    idx: Annotated[list[Index], msgspec.Meta(min_length=1, max_length=MAX_HAS_INDICES)]


class FPieceGet(_D, tag="fpiece_get", frozen=True):
    """Send me hash-list piece ``piece``."""

    file: FileId
    piece: Annotated[int, msgspec.Meta(ge=0, lt=1 << 8)]


class FPiece(_D, tag="fpiece", frozen=True):
    """Hash-list piece ``piece`` and its proof, 32 bytes per hash."""

    file: FileId
    piece: Annotated[int, msgspec.Meta(ge=0, lt=1 << 8)]
    hashes: Annotated[bytes, msgspec.Meta(max_length=32 * 1024)]
    proof: Annotated[bytes, msgspec.Meta(max_length=32 * 8)]


class FGet(_D, tag="fget", frozen=True):
    """Send me chunk ``idx``."""

    file: FileId
    idx: Index


class FChunk(_D, tag="fchunk", frozen=True):
    """Bytes ``[off, off + len(data))`` of chunk ``idx``: the slices of a chunk
    come in order, each but the last :data:`MAX_SLICE_BYTES` long."""

    file: FileId
    idx: Index
    off: Annotated[int, msgspec.Meta(ge=0, lt=1 << 20)]
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_SLICE_BYTES)]


class FNo(_D, tag="fno", frozen=True):
    """I will not send chunk ``idx`` now (``busy``: over my rate, ask later);
    ``idx`` :data:`WHOLE_FILE`: I do not serve this file to you."""

    file: FileId
    idx: Annotated[int, msgspec.Meta(ge=WHOLE_FILE, lt=1 << 18)]
    busy: bool = False


class FInstead(_D, tag="finstead", frozen=True):
    """I send chunk ``instead`` in place of ``idx``, which you asked for
    (super-seeding, ``docs/files.md`` §6: ``idx`` has gone out to another
    peer already, ``instead`` to nobody yet); its ``fchunk`` slices follow
    on this link.  Answer ``fcancel`` of ``instead`` if you do not want it."""

    file: FileId
    idx: Index
    instead: Index


class FCancel(_D, tag="fcancel", frozen=True):
    """I no longer want chunk ``idx`` (the endgame got it elsewhere)."""

    file: FileId
    idx: Index


class HolderEntry(msgspec.Struct, array_like=True, frozen=True):
    """One holder in ``fholders``: its node id, addresses and listening port."""

    node: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{16}$")]
    addrs: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=64)]],
        msgspec.Meta(min_length=1, max_length=MAX_HOLDER_ADDRS),
    ]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]


class FHolders(_D, tag="fholders", frozen=True):
    """Other nodes that hold or fetch ``file`` (so receivers find each other
    without the offerer)."""

    file: FileId
    holders: Annotated[list[HolderEntry], msgspec.Meta(max_length=MAX_HOLDERS)]


class _Keepalive(_D, tag="keepalive", frozen=True):
    """The link's keepalive (the same bytes as :class:`p2pchat.wire.Keepalive`)."""


DataMessage = (
    FHave | FHas | FPieceGet | FPiece | FGet | FChunk | FNo | FInstead | FCancel | FHolders
)
"""Any data-link message."""

_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(DataMessage | _Keepalive)
_encoder = msgspec.msgpack.Encoder()
_KEEPALIVE: Final = wire.Keepalive()


def decode_body(body: bytes) -> DataMessage | wire.Keepalive:
    """Decode and validate one data-link frame body (a link's reader thread).

    Returns:
        The message, or a :class:`p2pchat.wire.Keepalive`.

    Raises:
        RemoteProtocolError: (code ``data_malformed``) empty, too long, not
            MessagePack, an unknown type (chat messages included), a missing
            or wrongly typed field, a value out of range.
    """
    if not 1 <= len(body) <= wire.MAX_FRAME_BYTES:
        raise RemoteProtocolError(f"data frame of {len(body)} bytes", "data_malformed")
    try:
        msg = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise RemoteProtocolError(f"bad data-link frame: {exc}", "data_malformed") from None
    if isinstance(msg, _Keepalive):
        return _KEEPALIVE
    result: DataMessage = msg
    return result


def encode_frame(msg: DataMessage) -> bytes:
    """A whole frame (length prefix and body) for ``msg``; any thread.

    Raises:
        ValueError: the body is over the frame limit (a bug of the caller:
            every field is bounded below it).
    """
    body = _encoder.encode(msg)
    if len(body) > wire.MAX_FRAME_BYTES:
        raise ValueError(f"data message of {len(body)} bytes")
    return wire.HEADER.pack(len(body)) + body
