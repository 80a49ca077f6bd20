"""The keys of a data link (``docs/files.md`` §8, ``docs/security.md``).

Every data link is sealed, in every room.  Both ends know each other's
Ed25519 key from the hellos (and each proves it holds its key in its
``proof``); each converts both keys to X25519 (libsodium) and computes the
shared secret (:meth:`p2pchat.identity.Identity.shared_with`).  Per
direction, a ChaCha20-Poly1305 key comes from HKDF-SHA256 over that secret,
salted with both hello nonces (fresh per link: no two links share keys) and,
in a private room, 32 bytes derived from the room key
(:meth:`p2pchat.privacy.RoomSecret.data_salt`), so that only members can
open a data link at all; ``info`` names the direction and both public keys.
Frames then go through :class:`p2pchat.privacy.LinkCipher` exactly as a
private room's chat links do (a 96-bit frame counter as nonce).

Nothing here is a home-made primitive: libsodium's key conversion and
X25519, ``cryptography``'s HKDF and AEAD.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pchat.errors import RemoteProtocolError
from p2pchat.identity import Identity
from p2pchat.privacy import LinkCipher


def _derive(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def data_link_cipher(
    identity: Identity,
    peer_key: str,
    my_nonce: str,
    peer_nonce: str,
    i_dialled: bool,
    room_salt: bytes | None,
) -> LinkCipher:
    """The cipher of one data link (reader thread, in ``check_hello``).

    Args:
        identity: our key pair.
        peer_key: the peer's Ed25519 public key from its hello, 64 hex digits.
        my_nonce: our hello's nonce, 32 hex digits.
        peer_nonce: the peer's hello's nonce, 32 hex digits.
        i_dialled: whether we dialled the link.
        room_salt: :meth:`~p2pchat.privacy.RoomSecret.data_salt` in a private
            room, else None.

    Raises:
        RemoteProtocolError: (``data_key``) the peer's key or nonce is
            malformed or of small order.
    """
    try:
        shared = identity.shared_with(peer_key)
        mine, theirs = bytes.fromhex(my_nonce), bytes.fromhex(peer_nonce)
    except ValueError as exc:
        raise RemoteProtocolError(f"no data-link key: {exc}", "data_key") from None
    if len(mine) != 16 or len(theirs) != 16:
        raise RemoteProtocolError("a data link's hellos need nonces", "data_key")
    if i_dialled:
        dialler_key, acceptor_key, salt = identity.key, peer_key, mine + theirs
    else:
        dialler_key, acceptor_key, salt = peer_key, identity.key, theirs + mine
    salt += room_salt or b""
    keys = (dialler_key + acceptor_key).encode()
    forward = _derive(shared, salt, b"p2pchat data v1 dialler->acceptor " + keys)
    backward = _derive(shared, salt, b"p2pchat data v1 acceptor->dialler " + keys)
    return LinkCipher(forward, backward) if i_dialled else LinkCipher(backward, forward)
