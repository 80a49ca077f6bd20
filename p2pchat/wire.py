"""Wire protocol v2: frames and messages; encode, decode, validate.  No sockets.

The contract is ``docs/protocol.md``; this module is its reference
implementation.  In short:

* A **frame** is a 4-byte big-endian unsigned length ``N`` followed by an
  ``N``-byte body holding one message.  ``1 <= N <= MAX_FRAME_BYTES``.
* ``hello`` and ``refuse`` bodies are UTF-8 JSON objects, in every protocol
  version, so that nodes of two versions can tell each other so; every
  other body is a MessagePack array: the type tag, then the fields in their
  order, ids, keys, signatures and ciphertexts as ``bin`` (version 2).
* The ``type`` names the message kind.  Link-local kinds are ``hello``,
  ``refuse``, ``proof`` and ``keepalive`` (and the tree and history frames);
  flooded kinds (carried through the mesh with a message id and a hop limit)
  are ``chat``, ``join``, ``leave``, ``nick``, ``presence`` and ``direct``.
* In memory, ids, keys and signatures are lowercase hex strings whatever
  the encoding; the codec converts at the boundary.  The signed bytes of a
  flooded message are its JSON text (:func:`signing_bytes`), as in v1.
* Unknown JSON keys and MessagePack array elements after the known fields
  are ignored (room for later minor additions); an unknown ``type``, a
  wrong field type, a value out of range, invalid UTF-8 or a lone surrogate
  is a :class:`~p2pchat.errors.RemoteProtocolError`.

Typical use, on the reading side of a link::

    decoder = FrameDecoder()
    for message in decoder.feed(sock.recv(65536)):
        ...

and on the writing side ``sock.sendall(encode_frame(message))``.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import os
import re
import struct
import time
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, NoReturn, TypeVar

import msgspec

from p2pchat import names
from p2pchat.errors import FrameTooLarge, LocalError, RemoteProtocolError

PROTOCOL_VERSION: Final = 2
"""The version this module speaks; sent in ``hello`` and in the mDNS TXT record."""

MAX_FRAME_BYTES: Final = 65536
"""Largest frame body in bytes (the 4-byte length prefix not counted)."""

MAX_TEXT_CHARS: Final = 2000
"""Longest chat line, in Unicode code points."""

MAX_TOPIC_CHARS: Final = 300
"""Longest room topic (a ``chat`` with ``topic`` true), in code points."""

MAX_NAME_CHARS: Final = 32
"""Longest display name, in code points."""

MAX_ROOM_CHARS: Final = 48
"""Longest room name, in code points."""

DEFAULT_HOP_LIMIT: Final = 16
"""Hop limit given to a new flooded message; each relay takes one off."""

MAX_HOP_LIMIT: Final = 64
"""A received hop limit above this is refused as malformed."""

HEADER: Final = struct.Struct("!I")

NodeId = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{16}$")]
MessageId = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
Room = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ROOM_CHARS)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Hops = Annotated[int, msgspec.Meta(ge=0, le=MAX_HOP_LIMIT)]
Timestamp = Annotated[float, msgspec.Meta(ge=0, le=1e11)]
Reason = Annotated[str, msgspec.Meta(max_length=200)]
LineNo = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Hlc = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
BatchNo = Annotated[int, msgspec.Meta(ge=1, le=2**53)]
PublicKey = Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{64})?$")]
Signature = Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{128})?$")]

MAX_CLOCK_SKEW_S: Final = 60.0
"""A flooded message whose ``ts``, or a line whose ``hlc``, is more than this
many seconds ahead of the receiver's wall clock is refused (reason
``future``), never stored: clocks of a room must agree within a minute."""

MAX_PRESENCE_EVERY_S: Final = 3600.0
"""The longest presence interval a ``presence``'s ``every`` may say.  Rooms
space presences out with their size (``docs/protocol.md`` §9), so a member
that crashed is reported by its neighbours (``presence.gone``), not only
timed out after three missed intervals."""

MAX_GONE: Final = 16
"""Most members one ``presence`` reports gone."""

MAX_AWAY_CHARS: Final = 200
"""Longest ``presence.away`` text, in code points (no control characters)."""

MAX_SYNC_ORIGINS: Final = 800
"""Most origins one ``sync`` lists (keeps the frame well under the size limit)."""

MAX_BATCH_LINES: Final = 256
"""Most chat lines one ``lines`` frame carries."""


class Hello(msgspec.Struct, tag_field="type", tag="hello", frozen=True):
    """First frame on a link, sent by both ends at once.

    Attributes:
        version: protocol version (:data:`PROTOCOL_VERSION`).
        node: the sender's node id, 16 lowercase hex digits.
        name: the sender's display name.
        room: the room the sender is in; a link joins two nodes of one room.
        port: the TCP port the sender listens on (0 if it does not listen).
        features: optional protocol features the sender speaks; a feature is
            used on a link only when both ends list it.  ``"tree"``: the
            ``ihave``/``graft``/``prune`` frames of tree broadcast.
        nonce: 32 random hex digits, fresh per link: the peer signs it in
            its ``proof``; in a private room the link keys are derived from
            both hellos' nonces (§7.5).
        key: the sender's Ed25519 public key (64 hex digits); ``node`` must
            be the first 16 hex digits of its SHA-256 (§4).
    """

    version: int
    node: NodeId
    name: Name
    room: Room
    port: Port
    features: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=32)]], msgspec.Meta(max_length=16)
    ] = msgspec.field(default_factory=list)
    nonce: Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{32})?$")] = ""
    key: PublicKey = ""


class Refuse(msgspec.Struct, tag_field="type", tag="refuse", frozen=True):
    """Sent instead of (or after) ``hello`` to refuse a link; the sender then
    closes it.  ``code`` is one of ``version``, ``room``, ``self``, ``busy``
    (a receiver accepts codes it does not know); ``reason`` is a sentence for
    people."""

    code: Annotated[str, msgspec.Meta(max_length=32)]
    reason: Reason


class Proof(msgspec.Struct, tag_field="type", tag="proof", frozen=True):
    """Second frame on a link, sent by both ends once the peer's hello is
    accepted: an Ed25519 signature of :func:`proof_bytes` for the peer's
    nonce, which proves that the sender holds the key of the node id its
    hello claims.  A link comes up only after a valid proof (§4)."""

    sig: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{128}$")]


def proof_bytes(nonce: str, prover: str, verifier: str, room: str) -> bytes:
    """What a ``proof`` signs: the verifier's hello nonce, both node ids and
    the room (as it is on the wire), one per line, after a fixed label."""
    return f"p2pchat link proof v1\n{nonce}\n{prover}\n{verifier}\n{room}".encode()


class Keepalive(msgspec.Struct, tag_field="type", tag="keepalive", frozen=True):
    """Sent on an otherwise idle link so that the peer knows it is alive."""


MessageIds = Annotated[list[MessageId], msgspec.Meta(min_length=1, max_length=256)]


class IHave(msgspec.Struct, tag_field="type", tag="ihave", frozen=True):
    """Tree broadcast (feature ``tree``): "I have these messages" on a lazy
    link, so that the receiver can graft the link if one never reaches it.

    Attributes:
        ids: the message ids.
        hops: for each id, the ``hops`` its copy would carry on this link
            (empty from senders that leave it out; ignored unless it has one
            entry per id).
    """

    ids: MessageIds
    hops: Annotated[
        list[Annotated[int, msgspec.Meta(ge=0, le=255)]], msgspec.Meta(max_length=256)
    ] = []


class Graft(msgspec.Struct, tag_field="type", tag="graft", frozen=True):
    """Tree broadcast: "send me these messages, and push to me from now on"."""

    ids: MessageIds


class Prune(msgspec.Struct, tag_field="type", tag="prune", frozen=True, omit_defaults=True):
    """Tree broadcast: "I got a message of ``origin`` twice; announce, don't
    push, that origin's messages to me" (``origin`` empty, as older peers
    send it: every origin's; ``docs/protocol.md`` §7.1)."""

    origin: Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{16})?$")] = ""


class Flooded(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    """Fields common to every message that is flooded through the mesh.

    Attributes:
        id: message id, 32 lowercase hex digits (128 random bits), unique.
        origin: node id of the node that created the message.
        seq: per-origin sequence number, counting up from 1 over every
            flooded message that origin creates.
        name: the origin's display name when it created the message.
        room: the room of the message; never delivered in another room.
        ts: creation time, seconds since the Unix epoch (the origin's clock).
        hops: hop limit left; a relay forwards a copy with ``hops - 1`` only
            if ``hops > 1``, so a message crosses at most ``hops`` links.
        key: the origin's Ed25519 public key, 64 hex digits; ``origin``
            must be the first 16 hex digits of its SHA-256.
        sig: the origin's Ed25519 signature of :func:`signing_bytes`, 128
            hex digits.  Nodes drop messages whose ``key`` or ``sig`` is
            missing or does not check (``docs/protocol.md`` §7.3).
    """

    id: MessageId
    origin: NodeId
    seq: Seq
    name: Name
    room: Room
    ts: Timestamp
    hops: Hops
    key: PublicKey = ""
    sig: Signature = ""


FileId = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
"""A file id or a Merkle root: 32 bytes (64 lowercase hex digits in memory, bin on the wire)."""


class FileOffer(msgspec.Struct, array_like=True, frozen=True):
    """A file offered (``chat.offer``, or inside a one-member ``direct``'s
    box), sent as ``[file, fname, size, chunk, root]`` (``docs/files.md`` §3).

    Attributes:
        file: the file id, :func:`p2pchat.files.manifest.file_id_of` of
            ``size``, ``chunk`` and ``root``.
        fname: the base name, at most 255 bytes of UTF-8 (no path, no
            control or invisible characters: checked at admission).
        size: the file's length in bytes.
        chunk: bytes per chunk, a power of two from 64 KiB to 1 MiB.
        root: the Merkle root of the chunk hashes.
    The decoder checks only the types (and the two hashes' length); the
    rest is :func:`p2pchat.files.manifest.make_offer`'s, at admission, so a
    bad offer is dropped and counted by its reason, its link kept.
    """

    file: FileId
    fname: str
    size: Annotated[int, msgspec.Meta(ge=0)]
    chunk: Annotated[int, msgspec.Meta(ge=0)]
    root: FileId


class Chat(Flooded, tag="chat", frozen=True, kw_only=True):
    """A chat line.

    Attributes:
        text: the line, at most :data:`MAX_TEXT_CHARS` code points.
        action: true for ``/me`` lines.
        line: the line's number among the lines its origin wrote in this
            room, counting up from 1 (across restarts); 0 = not numbered.
            Per origin these numbers form a version vector: a gap is a line
            to fetch.
        hlc: hybrid logical clock at the origin when it wrote the line, in
            microseconds since the Unix epoch (never below any clock value
            the origin had seen); 0 = none.  A room's lines are ordered by
            ``(hlc, origin, line)``, the same on every node.
        topic: true for a room topic (``/topic``): ``text`` (at most
            :data:`MAX_TOPIC_CHARS` code points; "" clears the topic) is
            the room's topic from this line on; never with ``action``, always
            numbered (``line`` at least 1).  The
            room's current topic is its topic line that sorts last by
            ``(hlc, origin, line)`` (``docs/protocol.md`` §5.5).
        offer: a file offered to the room (``/send``, :class:`FileOffer`),
            or None (a chat line).  A line with an offer is numbered, has
            ``text`` "", is no action and no topic; its fields are checked at
            admission by :func:`p2pchat.files.manifest.make_offer`
            (``docs/protocol.md`` §5.5).
    """

    text: Text
    action: bool = False
    line: LineNo = 0
    hlc: Hlc = 0
    topic: bool = False
    offer: FileOffer | None = None


class Join(Flooded, tag="join", frozen=True, kw_only=True):
    """The origin entered the room.  ``dh``: its X25519 public key for
    direct messages, as in ``presence`` (optional)."""

    dh: PublicKey = ""


class Leave(Flooded, tag="leave", frozen=True, kw_only=True):
    """The origin left the room on purpose (``reason`` is ``quit``)."""

    reason: Annotated[str, msgspec.Meta(max_length=32)] = "quit"


class Nick(Flooded, tag="nick", frozen=True, kw_only=True):
    """The origin changed its display name from ``old`` to ``name``."""

    old: Name


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV6_CHARS = "[0-9a-f:]{2,39}"
IPAddr = Annotated[
    str,
    msgspec.Meta(
        pattern=f"^({_OCTET}\\.{_OCTET}\\.{_OCTET}\\.{_OCTET}|{_IPV6_CHARS})$", max_length=39
    ),
]
"""An address in a presence: an IPv4 dotted quad (no leading zeros) or an
IPv6 address in the compressed lowercase form of RFC 5952 (``fd00::7``), no
zone, not IPv4-mapped; the pattern lets the characters through,
:func:`check_ipv6_text` the rest (on decoding: a bad one is an
``invalid_fields`` frame)."""


def check_ipv6_text(text: str) -> None:
    """Raise ValueError unless ``text`` (IPv6 characters only) is an IPv6
    address in RFC 5952 form, not IPv4-mapped (an IPv4 address travels as a
    dotted quad)."""
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv6 address") from None
    if addr.ipv4_mapped is not None:
        raise ValueError(f"{text!r}: an IPv4 address travels as a dotted quad")
    if str(addr) != text:
        raise ValueError(f"{text!r} is not in compressed form ({addr})")


class Lost(msgspec.Struct, array_like=True, frozen=True):
    """One entry of ``presence.gone``, sent as ``[node, seq]``: the sender's
    link to member ``node`` broke (not by a ``leave``) and it has no other;
    ``seq`` is the highest ``seq`` it heard from that node (``docs/protocol.md``
    §9).  Receivers suspect the node; the node refutes with any newer message."""

    node: NodeId
    seq: Seq


class Presence(Flooded, tag="presence", frozen=True, kw_only=True):
    """Periodic "still here" from the origin (see ``docs/protocol.md``).

    Attributes:
        addrs: addresses the origin listens on, IPv4 and IPv6 (optional, at
            most 8; see :data:`IPAddr`).
        port: the origin's TCP listening port (optional; 0 = unknown).
        dh: the origin's X25519 public key for direct messages, 64 hex
            digits (optional; signed with the rest of the presence).
        every: seconds until the origin's next presence at the latest
            (optional; 0 = the default 3 s).  Rooms of many nodes space their
            presences out; receivers time a member out after several missed.
        gone: members whose link to the origin broke (optional, at most
            :data:`MAX_GONE`): suspected until they refute (§9).
        away: the origin's away text (optional, at most
            :data:`MAX_AWAY_CHARS` code points, no control characters; ""
            = not away, §9).
    A node that loses touch with a member dials these, so that the parts of
    a mesh re-link when the node that joined them dies.
    """

    addrs: Annotated[list[IPAddr], msgspec.Meta(max_length=8)] = msgspec.field(default_factory=list)
    port: Port = 0
    dh: PublicKey = ""
    every: Annotated[float, msgspec.Meta(ge=0, le=MAX_PRESENCE_EVERY_S)] = 0.0
    gone: Annotated[list[Lost], msgspec.Meta(max_length=MAX_GONE)] = msgspec.field(
        default_factory=list
    )
    away: Annotated[str, msgspec.Meta(max_length=MAX_AWAY_CHARS)] = ""


MAX_BOX_CHARS: Final = 2 * (4 * MAX_TEXT_CHARS + 64)
"""Longest ``direct.box``: hex of the longest line's UTF-8, a flag byte and the AEAD tag."""


class Direct(Flooded, tag="direct", frozen=True, kw_only=True):
    """A direct message to one node, encrypted end to end (``docs/protocol.md``
    §7.4).  Flooded like any message; only ``to`` can read it.

    Attributes:
        to: the recipient's node id.
        eph: the sender's one-time X25519 public key, 64 hex digits.
        box: ChaCha20-Poly1305 ciphertext of the line, in hex.
    """

    to: NodeId
    eph: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    box: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]*$", max_length=MAX_BOX_CHARS)]


class Have(msgspec.Struct, array_like=True, frozen=True):
    """One origin's entry in a ``sync``, sent as ``[origin, lo, hi, hi_hlc,
    digest]``: the sender holds that origin's lines ``lo..hi`` (every one of
    them) in the room, and line ``hi`` has clock ``hi_hlc``.  It may hold
    later ones too, after a gap.  ``digest`` (optional, 16 hex digits): the
    start of the SHA-256 of the ids of lines ``lo..hi`` in line order,
    concatenated; a receiver holding the same numbers under other ids sends
    them, so two halves of a room given different lines under one number
    (an equivocating origin) converge (``docs/protocol.md`` §7.2)."""

    origin: NodeId
    lo: LineNo
    hi: LineNo
    hi_hlc: Hlc
    digest: Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{16})?$")] = ""


class Sync(msgspec.Struct, tag_field="type", tag="sync", frozen=True):
    """Anti-entropy (feature ``history``): what the sender holds of the room.

    The receiver answers with ``lines`` frames carrying the lines of the
    room, within its window, with ``hlc >= since``, that the sender may lack:
    of an origin not in ``have``, or numbered below ``lo`` or above ``hi``.

    Attributes:
        room: the room (must be the link's room).
        since: the oldest clock value the sender wants (its window's floor).
        have: at most :data:`MAX_SYNC_ORIGINS` entries, most recent first;
            an origin left out is one the sender has nothing of.
    """

    room: Room
    since: Hlc
    have: Annotated[list[Have], msgspec.Meta(max_length=MAX_SYNC_ORIGINS)] = msgspec.field(
        default_factory=list
    )


class Lines(msgspec.Struct, tag_field="type", tag="lines", frozen=True):
    """Catch-up (feature ``history``): a batch of chat lines, oldest first,
    sent unchanged as their origins made them.  The receiver applies them
    and answers ``ack`` with the same ``batch``; the sender keeps at most
    two batches unacknowledged, so live frames on the link never wait
    behind more than two batches."""

    batch: BatchNo
    lines: Annotated[list[Chat], msgspec.Meta(min_length=1, max_length=MAX_BATCH_LINES)]


class Ack(msgspec.Struct, tag_field="type", tag="ack", frozen=True):
    """Catch-up flow control: the ``lines`` frame ``batch`` was applied."""

    batch: BatchNo


LinkMessage = Hello | Refuse | Proof | Keepalive
TreeMessage = IHave | Graft | Prune
HistoryMessage = Sync | Lines | Ack
FloodMessage = Chat | Join | Leave | Nick | Presence | Direct
Message = (
    Hello
    | Refuse
    | Proof
    | Keepalive
    | IHave
    | Graft
    | Prune
    | Sync
    | Lines
    | Ack
    | Chat
    | Join
    | Leave
    | Nick
    | Presence
    | Direct
)

_json_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)
_json_link_decoder: msgspec.json.Decoder[Hello | Refuse] = msgspec.json.Decoder(Hello | Refuse)
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()

JSON_KINDS: Final = (Hello, Refuse)
"""The message types whose frames are JSON in every protocol version (§3):
what a node of another version must be able to read to refuse it clearly."""


# -- the binary form of the other frames (protocol version 2) ---------------
#
# In memory every id, key and signature is a string of lowercase hex digits,
# as the rest of the code base uses them.  On the wire they are MessagePack
# bin.  For each message type a twin struct is made from the type's own
# fields (``array_like``: the tag first, then the fields in order, no names),
# each hex string field turned into a bin field of half its length; the twin
# decodes and validates in msgspec's C code.  Two small functions per type,
# generated from the same field list, swap hex and bytes at the boundary
# (generated rather than looped over: the loop cost more than JSON's regex
# checks of the hex).

_HEX_EXACT = re.compile(r"\^\[0-9a-f\]\{(\d+)\}\$")
_HEX_OPTIONAL = re.compile(r"\^\(\[0-9a-f\]\{(\d+)\}\)\?\$")
_HEX_ANY = "^[0-9a-f]*$"

_HEX, _HEX_OPT, _HEX_UPTO = range(3)


def hex_bytes(annotation: object) -> tuple[int, int] | None:
    """How a field type of the in-memory structs travels in MessagePack.

    Args:
        annotation: a field's type, as ``msgspec.structs.fields`` gives it.

    Returns:
        For a hex string type (one whose pattern is ``^[0-9a-f]{2n}$``,
        ``^([0-9a-f]{2n})?$`` or ``^[0-9a-f]*$``), which travels as bin:
        ``(kind, n)``, kind 0 for exactly ``n`` bytes, 1 for 0 or ``n``, 2
        for 0 to ``n`` (``n`` from the string's ``max_length``).  None for
        any other type, which travels as itself.
    """
    for meta in getattr(annotation, "__metadata__", ()):
        pattern = getattr(meta, "pattern", None)
        if pattern is None:
            continue
        if m := _HEX_EXACT.fullmatch(pattern):
            return _HEX, int(m.group(1)) // 2
        if m := _HEX_OPTIONAL.fullmatch(pattern):
            return _HEX_OPT, int(m.group(1)) // 2
        if pattern == _HEX_ANY:
            return _HEX_UPTO, meta.max_length // 2
    return None


def _bin_type(kind_: int, size: int) -> Any:
    if kind_ == _HEX:
        return Annotated[bytes, msgspec.Meta(min_length=size, max_length=size)]
    return Annotated[bytes, msgspec.Meta(max_length=size)]  # _HEX_OPT: 0 or size, checked after


def _wrong_length(what: str, value: bytes, size: int) -> NoReturn:
    raise RemoteProtocolError(
        f"invalid message: `{what}` is {len(value)} bytes (allowed 0 or {size})"
    )


_TO_WIRE: dict[type, Callable[[Any], list[Any]]] = {}
_FROM_WIRE: dict[type, Callable[[Any], Any]] = {}
_TWIN: dict[type, type] = {}


def _make_twin(cls: type[msgspec.Struct]) -> type:
    """Make (once) the twin of ``cls`` and its two converters."""
    twin = _TWIN.get(cls)
    if twin is not None:
        return twin
    tag = cls.__struct_config__.tag
    fields: list[Any] = []
    to_parts = [] if tag is None else [repr(tag)]
    from_parts = []
    env: dict[str, Any] = {"_cls": cls, "_wrong_length": _wrong_length}
    for f in msgspec.structs.fields(cls):
        wire_type: Any = f.type
        name = f.name
        meta = getattr(f.type, "__metadata__", ())
        base = f.type.__origin__ if meta else f.type
        element = typing.get_args(base)[0] if typing.get_origin(base) is list else None
        optional = [a for a in typing.get_args(base) if a is not type(None)]
        nested = (
            optional[0]
            if typing.get_origin(base) in (typing.Union, types.UnionType)
            and len(optional) == 1
            and isinstance(optional[0], type)
            and issubclass(optional[0], msgspec.Struct)
            else None
        )
        hexed = hex_bytes(f.type)
        hexed_element = None if element is None else hex_bytes(element)
        to_part, from_part = f"m.{name}", f"w.{name}"
        if hexed is not None:
            wire_type = _bin_type(*hexed)
            to_part = f"_fromhex(m.{name})"
            from_part = f"w.{name}.hex()"
            if hexed[0] == _HEX_OPT:
                size = hexed[1]
                from_part = (
                    f"(w.{name}.hex() if len(w.{name}) in (0, {size})"
                    f" else _wrong_length({name!r}, w.{name}, {size}))"
                )
        elif nested is not None:  # an optional struct (chat.offer): its twin or nil
            inner = _make_twin(nested)
            wire_type = inner | None
            env[f"_to_{name}"] = _TO_WIRE[nested]
            env[f"_from_{name}"] = _FROM_WIRE[inner]
            to_part = f"(None if m.{name} is None else _to_{name}(m.{name}))"
            from_part = f"(None if w.{name} is None else _from_{name}(w.{name}))"
        elif hexed_element is not None:
            wire_type = Annotated[(list[_bin_type(*hexed_element)], *meta)]  # type: ignore[misc]
            to_part = f"[_fromhex(x) for x in m.{name}]"
            from_part = f"[x.hex() for x in w.{name}]"
        elif isinstance(element, type) and issubclass(element, msgspec.Struct):
            inner = _make_twin(element)
            wire_type = Annotated[(list[inner], *meta)]  # type: ignore[valid-type]
            env[f"_to_{name}"] = _TO_WIRE[element]
            env[f"_from_{name}"] = _FROM_WIRE[inner]
            to_part = f"[_to_{name}(x) for x in m.{name}]"
            from_part = f"[_from_{name}(x) for x in w.{name}]"
        to_parts.append(to_part)
        from_parts.append(f"{name}={from_part}")
        if f.default is not msgspec.NODEFAULT:
            default = bytes.fromhex(f.default) if hexed is not None else f.default
            fields.append((name, wire_type, default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((name, wire_type, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((name, wire_type))
    twin = msgspec.defstruct(
        "Wire" + cls.__name__,
        fields,
        array_like=True,
        frozen=True,
        kw_only=True,
        tag_field=None if tag is None else "type",
        tag=tag,
    )
    env["_fromhex"] = bytes.fromhex
    source = (
        f"def to_wire(m):\n    return [{', '.join(to_parts)}]\n"
        f"def from_wire(w):\n    return _cls({', '.join(from_parts)})\n"
    )
    exec(source, env)  # the text is made of our own field names and tags only, at import
    _TWIN[cls] = twin
    _TO_WIRE[cls] = env["to_wire"]
    _FROM_WIRE[twin] = env["from_wire"]
    return twin


BINARY_KINDS: Final = (
    Proof,
    Keepalive,
    IHave,
    Graft,
    Prune,
    Sync,
    Lines,
    Ack,
    Chat,
    Join,
    Leave,
    Nick,
    Presence,
    Direct,
)
"""The message types whose frames are MessagePack (protocol version 2)."""

_msgpack_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
    functools.reduce(operator.or_, [_make_twin(c) for c in BINARY_KINDS])
)


def _to_wire(msg: Message) -> list[Any]:
    """The MessagePack array of a message: its tag, then its fields in order."""
    return _TO_WIRE[type(msg)](msg)


def _from_wire(twin: msgspec.Struct) -> Message:
    """The in-memory message of a decoded twin: bin fields back to hex."""
    msg: Message = _FROM_WIRE[type(twin)](twin)
    return msg


def new_message_id() -> str:
    """Return a fresh message id: 32 lowercase hex digits from the OS RNG."""
    return os.urandom(16).hex()


def new_node_id() -> str:
    """Return a fresh node id: 16 lowercase hex digits from the OS RNG."""
    return os.urandom(8).hex()


def now_ts() -> float:
    """Wall-clock time for a message's ``ts`` field, in seconds since the epoch."""
    return time.time()


# Control characters (C0, DEL, C1) and line/paragraph separators.  Only these:
# a check on "unassigned" code points would depend on the Unicode version of
# each implementation, and a newer emoji would split the room.
# Category Cc is exactly U+0000-U+001F and U+007F-U+009F; Zl and Zp are
# exactly U+2028 and U+2029.  A regular expression checks a 2000-character line
# about 100 times faster than unicodedata.category per character.
_BAD_IN_LABELS_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BAD_IN_TEXT_RE: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def has_control_chars(text: str) -> bool:
    """True if ``text`` holds a character a chat line must not carry: any
    control character (C0, DEL, C1; TAB excepted) or a line or paragraph
    separator.  Such characters could move the cursor or rewrite a terminal."""
    return _BAD_IN_TEXT_RE.search(text) is not None


def _check_text(value: str, what: str) -> None:
    # msgspec accepts a JSON escape of a lone surrogate; such a string cannot be
    # UTF-8 encoded again, so we refuse it as invalid UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RemoteProtocolError(f"{what} is not valid UTF-8", "invalid_utf8") from None


def _check_label(value: str, what: str) -> None:
    _check_text(value, what)
    if value != value.strip():
        raise RemoteProtocolError(f"{what} has leading or trailing blanks")
    if _BAD_IN_LABELS_RE.search(value):
        raise RemoteProtocolError(f"{what} contains control characters")


def check_name(value: str, what: str = "name") -> None:
    """Validate a display name from the network: valid UTF-8 and the rules
    of :func:`p2pchat.names.check_name` (no control, format, zero-width,
    bidi or other invisible characters, no ``#``, no blanks at either end).
    A name not in NFC is accepted; receivers normalise it before they use it.

    Raises:
        RemoteProtocolError: code ``bad_name`` (``invalid_utf8`` for a lone
            surrogate).
    """
    if value in _GOOD_NAMES:  # names repeat on every frame: check each once
        return
    _check_text(value, what)
    try:
        names.check_name(value, what)
    except names.BadName as exc:
        raise RemoteProtocolError(str(exc), "bad_name") from None
    if len(_GOOD_NAMES) >= _GOOD_NAMES_MAX:
        _GOOD_NAMES.clear()
    _GOOD_NAMES.add(value)


_GOOD_NAMES: set[str] = set()
"""Names that passed :func:`check_name` (a pure function of the string):
the rules cost more than decoding a whole chat frame."""

_GOOD_NAMES_MAX: Final = 4096
"""Most names :data:`_GOOD_NAMES` holds; it is emptied when full."""


def _check_topic(msg: Chat) -> None:
    """A topic line is numbered (every node must be able to fetch it, so that
    the room agrees on its topic), no action, and at most
    :data:`MAX_TOPIC_CHARS` code points."""
    if msg.action:
        raise RemoteProtocolError("a topic is no action line")
    if msg.line == 0:
        raise RemoteProtocolError("a topic line must be numbered")
    if len(msg.text) > MAX_TOPIC_CHARS:
        raise RemoteProtocolError(
            f"topic of {len(msg.text)} code points (at most {MAX_TOPIC_CHARS})"
        )


def _check_offer_line(msg: Chat) -> None:
    """A line with an offer is numbered (kept and caught up as any line),
    carries no text (the receiver words it), and is no action and no topic.
    The offer's own fields are checked at admission (``make_offer``)."""
    if msg.text or msg.action or msg.topic:
        raise RemoteProtocolError("a file offer line has no text and is no action or topic")
    if msg.line == 0:
        raise RemoteProtocolError("a file offer line must be numbered")


def _validate(msg: Message) -> None:
    if isinstance(msg, Hello):
        check_name(msg.name)
        _check_label(msg.room, "room")
    elif isinstance(msg, Flooded):
        check_name(msg.name)
        _check_label(msg.room, "room")
        if isinstance(msg, Chat):
            _check_text(msg.text, "text")
            if has_control_chars(msg.text):
                raise RemoteProtocolError("text contains a control character or line break")
            if msg.topic:
                _check_topic(msg)
            if msg.offer is not None:
                _check_offer_line(msg)
        elif isinstance(msg, Nick):
            check_name(msg.old, "old name")
        elif isinstance(msg, Leave) and has_control_chars(msg.reason):
            raise RemoteProtocolError("leave reason contains control characters")
        elif isinstance(msg, Presence):
            if msg.away:
                _check_text(msg.away, "away text")
                if has_control_chars(msg.away):
                    raise RemoteProtocolError("away text contains control characters")
            for addr in msg.addrs:
                if ":" in addr:
                    try:
                        check_ipv6_text(addr)
                    except ValueError as exc:
                        raise RemoteProtocolError(f"presence addrs: {exc}") from None
    elif isinstance(msg, Sync):
        _check_label(msg.room, "room")
    elif isinstance(msg, Lines):
        for line in msg.lines:
            _validate(line)
    elif isinstance(msg, Refuse) and (has_control_chars(msg.reason) or has_control_chars(msg.code)):
        raise RemoteProtocolError("refuse reason contains control characters")


_JSON_FIRST: Final = frozenset(b"{ \t\r\n")
"""First bytes of a JSON body: ``{``, or JSON whitespace before it.  None of
them can start a valid MessagePack body (each is a bare integer there)."""


def decode_body(body: bytes) -> Message:
    """Decode and validate one frame body (the bytes after the length prefix).

    A body whose first byte is ``{`` (or JSON whitespace) is JSON and must
    be a ``hello`` or a ``refuse`` (:data:`JSON_KINDS`); any other body is MessagePack and must
    be one of the other types (:data:`BINARY_KINDS`), as ``docs/protocol.md``
    §3 says.  Runs on a link's reader thread (and in the simulator).

    Args:
        body: the frame body, 1 to :data:`MAX_FRAME_BYTES` bytes.

    Returns:
        The message, one of the types in :data:`Message`, with ids, keys and
        signatures as lowercase hex strings whatever the encoding.

    Raises:
        FrameTooLarge: ``body`` is empty or longer than :data:`MAX_FRAME_BYTES`.
        RemoteProtocolError: not UTF-8 JSON nor MessagePack, an unknown
            ``type``, a type in the other encoding, a missing or wrongly
            typed field, a value out of range, or data after the message.
    """
    if not 1 <= len(body) <= MAX_FRAME_BYTES:
        raise FrameTooLarge(f"frame body of {len(body)} bytes (allowed 1..{MAX_FRAME_BYTES})")
    if body[0] in _JSON_FIRST:
        msg: Message = _decode_json(body, _json_link_decoder)
    else:
        try:
            msg = _from_wire(_msgpack_decoder.decode(body))
        except RecursionError:
            raise RemoteProtocolError("MessagePack nested too deeply", "malformed") from None
        except msgspec.ValidationError as exc:
            raise RemoteProtocolError(f"invalid message: {exc}") from None
        except msgspec.DecodeError as exc:
            # msgspec says "Invalid UTF-8 encoded string" for a bad str.
            code = "invalid_utf8" if "UTF-8" in str(exc) else "malformed"
            raise RemoteProtocolError(f"malformed MessagePack: {exc}", code) from None
    _validate(msg)
    return msg


def _decode_json(body: bytes, decoder: msgspec.json.Decoder[Any]) -> Any:
    try:
        # msgspec checks the UTF-8 of the fields it decodes but skips unknown
        # keys; the protocol wants the whole body to be UTF-8.
        body.decode("utf-8")
        return decoder.decode(body)
    except UnicodeDecodeError:
        raise RemoteProtocolError("frame is not valid UTF-8", "invalid_utf8") from None
    except RecursionError:
        raise RemoteProtocolError("JSON nested too deeply", "malformed") from None
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"invalid message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise RemoteProtocolError(f"malformed JSON: {exc}", "malformed") from None


def encode_body(msg: Message) -> bytes:
    """Encode a message to a frame body, without the prefix: JSON (UTF-8)
    for ``hello`` and ``refuse``, MessagePack for every other type (§3).
    Pure; any thread.

    Raises:
        ValueError: an id, key or signature field holds something else than
            an even number of hex digits (a bug of the caller: decoded and
            locally made messages never do).
    """
    if isinstance(msg, JSON_KINDS):
        return _json_encoder.encode(msg)
    return _msgpack_encoder.encode(_to_wire(msg))


def encode_json(msg: Message) -> bytes:
    """The JSON text of any message (protocol version 1's body): what the
    history store keeps on disk, so that stores outlive a change of the
    wire encoding.  Pure; any thread."""
    return _json_encoder.encode(msg)


def decode_json(body: bytes) -> Message:
    """Decode and validate the JSON text of any message
    (:func:`encode_json`'s output), as the store reads its rows back.

    Raises:
        RemoteProtocolError: as :func:`decode_body`.
    """
    msg: Message = _decode_json(body, _json_decoder)
    _validate(msg)
    return msg


F = TypeVar("F", bound=Flooded)
"""Any flooded message type (for functions that return what they are given)."""


def signing_bytes(msg: Flooded) -> bytes:
    """The bytes an origin signs: the message's JSON text (:func:`encode_json`,
    hex strings for ids, keys and signatures), with ``hops`` set to 0 and
    ``sig`` to ``""`` (hops change on the way; the signature cannot sign
    itself).  The same in protocol versions 1 and 2: the signed bytes do not
    depend on the encoding of the frame that carries the message
    (``docs/protocol.md`` §5.18)."""
    return _json_encoder.encode(msgspec.structs.replace(msg, hops=0, sig=""))


def encode_frame(msg: Message) -> bytes:
    """Encode a message to a whole frame: length prefix and body
    (:func:`encode_body`).

    Raises:
        LocalError: the encoded body is larger than :data:`MAX_FRAME_BYTES`
            (a bug of ours: fields are bounded well below that).
    """
    body = encode_body(msg)
    if len(body) > MAX_FRAME_BYTES:
        raise LocalError(f"message encodes to {len(body)} bytes, over {MAX_FRAME_BYTES}")
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental frame decoder for one link's byte stream.

    Feed it bytes as they arrive, in any split (one byte at a time works); it
    returns every whole message and keeps the rest.  Its buffer never holds
    more than one frame (``MAX_FRAME_BYTES + 4`` bytes) plus the last chunk fed.
    After it raises, the link must be closed: the stream cannot be resynced.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes from the link and return the messages now complete.

        Raises:
            FrameTooLarge: a length prefix is 0 or above ``MAX_FRAME_BYTES``
                (raised as soon as the 4 prefix bytes are in, before the body).
            RemoteProtocolError: a complete frame failed :func:`decode_body`.
        """
        return [decode_body(body) for body in self.feed_bodies(data)]

    def feed_bodies(self, data: bytes) -> list[bytes]:
        """Like :meth:`feed`, but return the complete frame bodies undecoded.

        Raises:
            FrameTooLarge: a length prefix is 0 or above ``MAX_FRAME_BYTES``.
        """
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER.size:
                    return out
                (need,) = HEADER.unpack_from(self._buf)
                if not 1 <= need <= MAX_FRAME_BYTES:
                    raise FrameTooLarge(
                        f"frame length prefix {need} (allowed 1..{MAX_FRAME_BYTES})"
                    )
                del self._buf[: HEADER.size]
                self._need = need
            if len(self._buf) < self._need:
                return out
            out.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None


def hello_version(body: bytes) -> int | None:
    """The ``version`` of a frame body that looks like a ``hello``, however
    the rest of it parses; None if it is not a JSON object of type hello with
    an integer version.  Used to refuse another protocol version with a clear
    reason even when its ``hello`` has other fields than ours.  (The hello is
    JSON in every version, so that nodes of two versions can both say so.)"""
    if not body or body[0] not in _JSON_FIRST:
        return None
    try:
        obj = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("type") != "hello":
        return None
    version = obj.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        return version
    return None


MessageKind = Literal[
    "hello",
    "refuse",
    "proof",
    "keepalive",
    "ihave",
    "graft",
    "prune",
    "sync",
    "lines",
    "ack",
    "chat",
    "join",
    "leave",
    "nick",
    "presence",
    "direct",
]


def kind(msg: Message) -> MessageKind:
    """The ``type`` tag of a message, e.g. ``"chat"``."""
    tag: MessageKind = type(msg).__struct_config__.tag  # type: ignore[assignment]
    return tag
