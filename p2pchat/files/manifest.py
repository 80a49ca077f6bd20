"""Chunks, their hashes, the file id and the offer (``docs/files.md`` §2).

A file of ``size`` bytes is cut into ``n = max(1, ceil(size / chunk_size))``
chunks (an empty file is one empty chunk); ``chunk_size`` is a power of two
from 64 KiB to 1 MiB (:func:`choose_chunk_size`).  Every chunk has a *leaf*
hash, ``SHA-256(chunk bytes)``.  The leaves, padded with 32 zero bytes up to
the next power of two, are the bottom of a binary Merkle tree whose inner
nodes are ``SHA-256(0x01 || left || right)``; its top is the *root* (for one
chunk, the leaf itself).  The *file id* is::

    SHA-256(b"p2pchat-file-v1\\x00" || u64be(size) || u32be(chunk_size) || root)

so it covers the size, the chunk size and every chunk hash (through the root),
and two offers of the same bytes at the same chunk size have the same id.

Why a root and not the hash list in the offer: an offer is a signed flooded
message every member keeps in its history; the list is ``32 * n`` bytes (a
1 GiB file at 128 KiB: 8192 hashes, 256 KiB, four whole frames).  The offer
carries the root (a fixed ~150 bytes whatever the size); a receiver fetches
the list from any holder in *pieces* of :data:`PIECE_HASHES` hashes (32 KiB,
one frame), each checked on arrival against the root with a Merkle proof
(:func:`verify_piece`), so a hostile holder cannot make it accept a false
list.  With the list, each chunk is checked by one SHA-256 and chunk
responses carry no proof.

Pure functions and frozen values: no sockets, no threads, no clock; only
:func:`hash_file` reads (from a file object it is given).
"""

from __future__ import annotations

import hashlib
import struct
import unicodedata
from dataclasses import dataclass, field
from typing import BinaryIO, Final

from p2pchat.files.errors import BadOffer

MIN_CHUNK_BYTES: Final = 1 << 16
"""Smallest chunk size, 64 KiB."""

MAX_CHUNK_BYTES: Final = 1 << 20
"""Largest chunk size, 1 MiB."""

DEFAULT_CHUNK_BYTES: Final = 1 << 17
"""The default chunk size, 128 KiB, measured (``docs/files.md`` §2,
``docs/performance.md`` "Files"): the smallest size within 5 % of the best
both for ten receivers at 100 Mbit/s (where smaller is faster: 64 KiB 5.22 s,
128 KiB 5.23 s, 256 KiB 5.81 s) and for one at 1 Gbit/s, where p2pchat's
per-chunk work in Python sets the pace (64 KiB 2.65 s, 128 KiB 2.42 s,
256 KiB 2.40 s)."""

MAX_CHUNKS: Final = 1 << 18
"""At most 262,144 chunks (an 8 MiB hash list): 32 GiB at 128 KiB chunks."""

MAX_FILE_BYTES: Final = MAX_CHUNKS * MAX_CHUNK_BYTES
"""The largest file the protocol describes: 256 GiB (at 1 MiB chunks)."""

PIECE_HASHES: Final = 1024
"""Leaf hashes per piece of the hash list (32 KiB, one frame with room to
spare); a piece is a whole aligned subtree of the Merkle tree."""

HASH_BYTES: Final = 32
"""Length of every hash (SHA-256), in bytes."""

MAX_NAME_BYTES: Final = 255
"""An offered base name is at most 255 bytes of UTF-8 (what most file systems
allow in one path component)."""

FILE_ID_PREFIX: Final = b"p2pchat-file-v1\x00"
"""Domain separation of the file id from any other SHA-256 in p2pchat."""

_NODE_PREFIX: Final = b"\x01"
_PAD: Final = bytes(HASH_BYTES)
_SIZE_AND_CHUNK: Final = struct.Struct("!QI")

_REFUSED_NAME_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def choose_chunk_size(size: int) -> int:
    """The chunk size an offerer uses for a file of ``size`` bytes.

    :data:`DEFAULT_CHUNK_BYTES`, doubled (up to :data:`MAX_CHUNK_BYTES`) while
    the file would have more than 65,536 chunks (8 GiB at 128 KiB), so the
    hash list of a big file stays at 2 MiB or less where it can.

    Raises:
        ValueError: ``size`` is negative or above :data:`MAX_FILE_BYTES`.
    """
    if not 0 <= size <= MAX_FILE_BYTES:
        raise ValueError(f"file of {size} bytes (allowed 0..{MAX_FILE_BYTES})")
    chunk = DEFAULT_CHUNK_BYTES
    while chunk < MAX_CHUNK_BYTES and chunk_count(size, chunk) > (1 << 16):
        chunk *= 2
    return chunk


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks of a file: ``max(1, ceil(size / chunk_size))``."""
    return max(1, -(-size // chunk_size))


def chunk_span(size: int, chunk_size: int, index: int) -> tuple[int, int]:
    """``(offset, length)`` in bytes of chunk ``index`` (the last may be short;
    the one chunk of an empty file is ``(0, 0)``).

    Raises:
        IndexError: ``index`` is not a chunk of this file.
    """
    if not 0 <= index < chunk_count(size, chunk_size):
        raise IndexError(f"chunk {index} of a file of {chunk_count(size, chunk_size)} chunks")
    offset = index * chunk_size
    return offset, min(chunk_size, size - offset)


def leaf_hash(data: bytes) -> bytes:
    """The hash of one chunk: ``SHA-256(data)``, 32 bytes."""
    return hashlib.sha256(data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _width(n: int) -> int:
    """Leaves of the padded tree: the power of two at or above ``n``."""
    return 1 << (n - 1).bit_length()


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the padded tree, leaves first, root last."""
    level = leaves + [_PAD] * (_width(len(leaves)) - len(leaves))
    levels = [level]
    while len(level) > 1:
        level = [_node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def merkle_root(leaves: list[bytes]) -> bytes:
    """The root over ``leaves`` (1 or more 32-byte hashes), padded with zero
    hashes to a power of two.

    Raises:
        ValueError: no leaves.
    """
    if not leaves:
        raise ValueError("a file has at least one chunk")
    return _levels(list(leaves))[-1][0]


def file_id_of(size: int, chunk_size: int, root: bytes) -> bytes:
    """The 32-byte file id (module docstring): SHA-256 of the prefix,
    ``size`` as 8 bytes and ``chunk_size`` as 4 bytes (big-endian), and ``root``."""
    return hashlib.sha256(FILE_ID_PREFIX + _SIZE_AND_CHUNK.pack(size, chunk_size) + root).digest()


def piece_count(n_chunks: int) -> int:
    """Number of pieces of the hash list: ``ceil(n_chunks / PIECE_HASHES)``."""
    return -(-n_chunks // PIECE_HASHES)


@dataclass(frozen=True)
class Manifest:
    """Everything about a file's content that a holder needs to serve it.

    Attributes:
        size: bytes in the file.
        chunk_size: bytes per chunk (a power of two, 64 KiB..1 MiB).
        leaves: the chunk hashes, ``chunk_count(size, chunk_size)`` of 32 bytes.
    """

    size: int
    chunk_size: int
    leaves: tuple[bytes, ...]
    _levels: list[list[bytes]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_size(self.size, self.chunk_size)
        if len(self.leaves) != chunk_count(self.size, self.chunk_size) or any(
            len(h) != HASH_BYTES for h in self.leaves
        ):
            raise BadOffer("the hash list does not match the size", "bad_file_hash")
        object.__setattr__(self, "_levels", _levels(list(self.leaves)))

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        return len(self.leaves)

    @property
    def root(self) -> bytes:
        """The Merkle root (32 bytes)."""
        return self._levels[-1][0]

    @property
    def file_id(self) -> bytes:
        """The file id (32 bytes), :func:`file_id_of`."""
        return file_id_of(self.size, self.chunk_size, self.root)

    def span(self, index: int) -> tuple[int, int]:
        """``(offset, length)`` of chunk ``index``; :func:`chunk_span`."""
        return chunk_span(self.size, self.chunk_size, index)

    def piece(self, index: int) -> tuple[list[bytes], list[bytes]]:
        """Piece ``index`` of the hash list and its proof.

        Returns:
            ``(hashes, proof)``: up to :data:`PIECE_HASHES` leaf hashes (the
            last piece may be shorter), and the sibling hashes from the
            piece's subtree up to the root, lowest first (empty when the
            whole list is one piece).

        Raises:
            IndexError: not a piece of this file.
        """
        if not 0 <= index < piece_count(self.n_chunks):
            raise IndexError(f"piece {index} of {piece_count(self.n_chunks)}")
        hashes = list(self.leaves[index * PIECE_HASHES : (index + 1) * PIECE_HASHES])
        if len(self._levels[0]) <= PIECE_HASHES:
            return hashes, []
        proof = []
        position = index
        for level in self._levels[PIECE_HASHES.bit_length() - 1 : -1]:
            proof.append(level[position ^ 1])
            position //= 2
        return hashes, proof


def verify_piece(
    root: bytes, n_chunks: int, index: int, hashes: list[bytes], proof: list[bytes]
) -> None:
    """Check piece ``index`` of a hash list against the offer's root.

    Args:
        root: the offer's Merkle root (32 bytes).
        n_chunks: the file's chunk count (from the offer's size and chunk size).
        index: which piece, 0-based.
        hashes: the piece's leaf hashes as received.
        proof: the sibling hashes as received, lowest first.

    Raises:
        BadOffer: (code ``bad_file_hash``) wrong count or length of hashes,
            wrong proof length, or the hashes do not lead to ``root``.
    """
    pieces = piece_count(n_chunks)
    if not 0 <= index < pieces:
        raise BadOffer(f"piece {index} of a list of {pieces}", "bad_file_hash")
    expected = min(PIECE_HASHES, n_chunks - index * PIECE_HASHES)
    if len(hashes) != expected or any(len(h) != HASH_BYTES for h in hashes):
        raise BadOffer(f"piece {index} must hold {expected} hashes of 32 bytes", "bad_file_hash")
    width = _width(n_chunks)
    if width <= PIECE_HASHES:
        if proof:
            raise BadOffer("a one-piece list has no proof", "bad_file_hash")
        top = merkle_root(list(hashes) + [_PAD] * (width - len(hashes)))
    else:
        depth = width.bit_length() - PIECE_HASHES.bit_length()
        if len(proof) != depth or any(len(h) != HASH_BYTES for h in proof):
            raise BadOffer(f"the proof of piece {index} must hold {depth} hashes", "bad_file_hash")
        top = merkle_root(list(hashes) + [_PAD] * (PIECE_HASHES - len(hashes)))
        position = index
        for sibling in proof:
            top = _node(sibling, top) if position & 1 else _node(top, sibling)
            position //= 2
    if top != root:
        raise BadOffer(f"piece {index} of the hash list does not match the root", "bad_file_hash")


def hash_file(stream: BinaryIO, chunk_size: int | None = None) -> tuple[Manifest, str]:
    """Read ``stream`` from its start to its end and describe it.

    Args:
        stream: a seekable binary file object, read in chunk-sized reads on
            the caller's thread (it blocks: ~1-2 s per GiB).
        chunk_size: the chunk size; default :func:`choose_chunk_size` of the
            stream's length.

    Returns:
        ``(manifest, sha256_hex)``: the manifest and the whole file's SHA-256
        in lowercase hex (the ``file_done`` event's ``sha256``).

    Raises:
        ValueError: the file is larger than :data:`MAX_FILE_BYTES`.
        BadOffer: ``chunk_size`` is not a valid chunk size.
        OSError: from reading.
    """
    if chunk_size is None:
        chunk_size = choose_chunk_size(stream.seek(0, 2))
    stream.seek(0)
    whole = hashlib.sha256()
    leaves: list[bytes] = []
    size = 0
    while True:
        data = stream.read(chunk_size)
        while data and len(data) < chunk_size:  # a short read before the end
            more = stream.read(chunk_size - len(data))
            if not more:
                break
            data += more
        if not data:
            break
        whole.update(data)
        leaves.append(leaf_hash(data))
        size += len(data)
        if size > MAX_FILE_BYTES:
            raise ValueError(f"file larger than {MAX_FILE_BYTES} bytes")
    if not leaves:
        leaves.append(leaf_hash(b""))
    return Manifest(size, chunk_size, tuple(leaves)), whole.hexdigest()


def check_size(size: int, chunk_size: int) -> None:
    """Check an offered size and chunk size.

    Raises:
        BadOffer: ``bad_chunk_size`` (not a power of two in 64 KiB..1 MiB) or
            ``bad_file_size`` (negative, above :data:`MAX_FILE_BYTES`, or more
            than :data:`MAX_CHUNKS` chunks).
    """
    if (
        type(chunk_size) is not int
        or not MIN_CHUNK_BYTES <= chunk_size <= MAX_CHUNK_BYTES
        or chunk_size & (chunk_size - 1)
    ):
        raise BadOffer(
            f"chunk size {chunk_size!r} is not a power of two in 64 KiB..1 MiB", "bad_chunk_size"
        )
    if type(size) is not int or not 0 <= size <= MAX_FILE_BYTES:
        raise BadOffer(f"file size {size!r} (allowed 0..{MAX_FILE_BYTES})", "bad_file_size")
    if chunk_count(size, chunk_size) > MAX_CHUNKS:
        raise BadOffer(
            f"{chunk_count(size, chunk_size)} chunks (at most {MAX_CHUNKS})", "bad_file_size"
        )


def check_offer_name(name: str) -> None:
    """Check an offered base name.  The receiver still makes it safe for its
    own disk with :func:`p2pchat.files.safename.safe_filename` (reserved
    Windows names, length, collisions); this refuses what no honest sender
    offers.

    Raises:
        BadOffer: ``bad_file_name``: not a string; empty; over
            :data:`MAX_NAME_BYTES` bytes of UTF-8; ``.`` or ``..``; holds
            ``/``, ``\\``, a lone surrogate, or a control, format (bidi,
            zero width), separator, private-use or unassigned character;
            blank at either end.
    """
    if type(name) is not str or not name:
        raise BadOffer("an offered file name is empty", "bad_file_name")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise BadOffer("an offered file name holds a lone surrogate", "bad_file_name") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise BadOffer(
            f"an offered file name of {len(encoded)} bytes (at most {MAX_NAME_BYTES})",
            "bad_file_name",
        )
    if name in (".", "..") or "/" in name or "\\" in name:
        raise BadOffer(f"an offered file name is a path: {name!r}", "bad_file_name")
    if name != name.strip():
        raise BadOffer("an offered file name has blanks at an end", "bad_file_name")
    for char in name:
        if unicodedata.category(char) in _REFUSED_NAME_CATEGORIES:
            raise BadOffer(f"an offered file name holds U+{ord(char):04X}", "bad_file_name")


@dataclass(frozen=True)
class Offer:
    """A file offered to a room or to one member (the ``file_offer`` event).

    Build it with :func:`make_offer` (from a peer's fields: validated) or
    :func:`offer_for` (from our own :class:`Manifest`).

    Attributes:
        file_id: 32 bytes, :func:`file_id_of` of the three below.
        name: the base name, valid for :func:`check_offer_name`.
        size: bytes, 0..:data:`MAX_FILE_BYTES`.
        chunk_size: bytes per chunk, a power of two, 64 KiB..1 MiB.
        root: the Merkle root of the chunk hashes, 32 bytes.
    """

    file_id: bytes
    name: str
    size: int
    chunk_size: int
    root: bytes

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        return chunk_count(self.size, self.chunk_size)


def make_offer(file_id: bytes, name: str, size: int, chunk_size: int, root: bytes) -> Offer:
    """An :class:`Offer` from a peer's fields, validated.

    Raises:
        BadOffer: with the reason code of the first check that failed:
            ``bad_file_name``, ``bad_chunk_size``, ``bad_file_size``, or
            ``bad_file_hash`` (``root`` or ``file_id`` not 32 bytes, or
            ``file_id`` not the id of the size, chunk size and root).
    """
    check_offer_name(name)
    check_size(size, chunk_size)
    if type(root) is not bytes or len(root) != HASH_BYTES:
        raise BadOffer("an offer's root must be 32 bytes", "bad_file_hash")
    if type(file_id) is not bytes or file_id != file_id_of(size, chunk_size, root):
        raise BadOffer("an offer's file id does not match its size and hashes", "bad_file_hash")
    return Offer(file_id, name, size, chunk_size, root)


def offer_for(manifest: Manifest, name: str) -> Offer:
    """Our own offer of ``manifest`` under the base name ``name``.

    Raises:
        BadOffer: ``bad_file_name`` (e.g. a name with a control character:
            the caller should say so to the user instead of sending it).
    """
    check_offer_name(name)
    return Offer(manifest.file_id, name, manifest.size, manifest.chunk_size, manifest.root)
