"""Private rooms: a room key from a shared secret, and encrypted links.

A private room is one whose members share a secret (``--secret-file`` or
``P2PCHAT_SECRET``).  From the secret and the room name, every member
derives the same 32-byte **room key** with scrypt (RFC 7914; N = 2^15,
r = 8, p = 1, salt ``"p2pchat room v1" NUL room``).  From the room key, with
HKDF-SHA256 (RFC 5869):

* the room's **tag**, ``private-`` and 16 hex digits.  It stands in for
  the room name everywhere on the network: in ``hello``, in the mDNS TXT
  record and in messages.  It reveals neither the name nor the secret.
* per link and direction, a **link key**, salted with the random nonces of
  both ``hello`` frames.  After the two hellos, every frame on the link is
  sealed with ChaCha20-Poly1305 under the sender's direction key, with a
  96-bit frame counter as nonce.  A peer without the secret cannot produce a
  frame that opens: its first frame ends the link (``wrong_secret``).  It
  cannot read ours either.

Everything cryptographic is the ``cryptography`` package's.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pchat import wire
from p2pchat.errors import LocalError, RemoteProtocolError

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
TAG_PREFIX = "private-"
AEAD_OVERHEAD = 16
"""Bytes the AEAD adds to each frame body (the Poly1305 tag)."""


def _hkdf(key: bytes, info: bytes, salt: bytes | None = None, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


class RoomSecret:
    """The keys of one private room.

    Args:
        secret: the shared secret, as bytes (at least 1 byte).
        room: the room's name.

    Raises:
        LocalError: the secret is empty.
    """

    def __init__(self, secret: bytes, room: str) -> None:
        if not secret:
            raise LocalError("the room secret is empty")
        self._key = hashlib.scrypt(
            secret,
            salt=b"p2pchat room v1\x00" + room.encode("utf-8"),
            n=SCRYPT_N,
            r=SCRYPT_R,
            p=SCRYPT_P,
            maxmem=64 * 1024 * 1024,
            dklen=32,
        )
        self.tag = TAG_PREFIX + _hkdf(self._key, b"p2pchat room tag v1", length=8).hex()

    def data_salt(self) -> bytes:
        """32 bytes from the room key that data links mix into their key
        derivation (:mod:`p2pchat.files.seal`), so that only members can
        open one.  Reveals nothing of the key (HKDF, its own label)."""
        return _hkdf(self._key, b"p2pchat data link salt v1")

    def link_cipher(self, my_nonce: str, peer_nonce: str, i_dialled: bool) -> LinkCipher:
        """The cipher of one link, from both hellos' nonces (hex).

        Raises:
            RemoteProtocolError: the peer's nonce is missing or malformed.
        """
        try:
            mine, theirs = bytes.fromhex(my_nonce), bytes.fromhex(peer_nonce)
        except ValueError:
            raise RemoteProtocolError("malformed hello nonce", "wrong_secret") from None
        if len(theirs) != 16 or len(mine) != 16:
            raise RemoteProtocolError("a private room's hello needs a nonce", "wrong_secret")
        dialler, acceptor = (mine, theirs) if i_dialled else (theirs, mine)
        salt = dialler + acceptor
        forward = _hkdf(self._key, b"p2pchat link v1 dialler->acceptor", salt)
        backward = _hkdf(self._key, b"p2pchat link v1 acceptor->dialler", salt)
        return LinkCipher(forward, backward) if i_dialled else LinkCipher(backward, forward)


class LinkCipher:
    """Seals the frame bodies one way and opens them the other, each
    direction with its own key and frame counter.  :meth:`seal` is called
    by the link's writer thread only, :meth:`open` by its reader only."""

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self._sent = 0
        self._received = 0

    def seal(self, body: bytes) -> bytes:
        """Encrypt one frame body (adds :data:`AEAD_OVERHEAD` bytes)."""
        nonce = self._sent.to_bytes(12, "big")
        self._sent += 1
        return self._send.encrypt(nonce, body, None)

    def open(self, data: bytes) -> bytes:
        """Decrypt one frame body.

        Raises:
            RemoteProtocolError: it does not open (code ``wrong_secret``):
                another secret, a changed or replayed frame.
        """
        nonce = self._received.to_bytes(12, "big")
        try:
            body = self._recv.decrypt(nonce, data, None)
        except InvalidTag:
            raise RemoteProtocolError(
                "a frame did not decrypt: the peer does not have this room's secret",
                "wrong_secret",
            ) from None
        self._received += 1
        if len(body) > wire.MAX_FRAME_BYTES - AEAD_OVERHEAD:
            raise RemoteProtocolError("frame too large", "oversized")
        return body
