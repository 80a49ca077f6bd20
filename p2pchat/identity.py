"""Node identity: an Ed25519 key pair, and signing and checking messages.

Each node has one Ed25519 key pair (RFC 8032), made on first start and kept
in its data directory as ``identity.key`` (PKCS #8 PEM, file mode 0600), or
in memory only for an ephemeral node.  All the cryptography is the
``cryptography`` package's, except the check of signatures, which is
libsodium's (PyNaCl, faster); nothing here is home-made but the encoding.

* The **fingerprint** of a public key is the SHA-256 of its 32 raw bytes, in
  hex (64 digits).
* The **node id** is the first 16 hex digits of the fingerprint, so a node
  id cannot be claimed without the private key (a second key with the same
  id takes about 2^64 tries).
* A flooded message carries its origin's public key (``key``) and an
  Ed25519 signature (``sig``) of :func:`p2pchat.wire.signing_bytes`: the
  message as JSON with ``hops`` 0 and ``sig`` empty (``docs/protocol.md``
  §7.3).  Relays forward it unchanged except for ``hops``.
* For **direct messages** each node also has an X25519 key pair, derived
  from its Ed25519 private key with HKDF-SHA256 and announced (signed) in its
  presence.  A direct message is sealed to the recipient's X25519 key with a
  one-time X25519 key, HKDF-SHA256 and ChaCha20-Poly1305 (:func:`seal`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pchat.errors import StoreError

KEY_FILE = "identity.key"
"""The private key's file name in the data directory."""


def fingerprint(key_hex: str) -> str:
    """SHA-256 of a raw 32-byte public key given in hex: 64 hex digits."""
    return hashlib.sha256(bytes.fromhex(key_hex)).hexdigest()


def node_id_of(key_hex: str) -> str:
    """The node id a public key (64 hex digits) stands for: 16 hex digits."""
    return fingerprint(key_hex)[:16]


def verify(key_hex: str, sig_hex: str, data: bytes) -> bool:
    """True if ``sig_hex`` (128 hex digits) is a valid Ed25519 signature of
    ``data`` by the public key ``key_hex`` (64 hex digits).  Never raises
    for bad input: a malformed key or signature is simply not valid.

    Checked with libsodium (PyNaCl): every node checks every new message,
    and libsodium does it in about half the time of OpenSSL here (45 µs
    against 94 µs, ``docs/performance.md``).  libsodium also refuses
    small-order keys and non-canonical signatures, which no honest signer
    makes.
    """
    try:
        public = _verify_key(key_hex)
        signature = bytes.fromhex(sig_hex)
        if public is None or len(signature) != nacl.bindings.crypto_sign_BYTES:
            return False
        public.verify(data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _verify_key(key_hex: str) -> nacl.signing.VerifyKey | None:
    """The parsed public key (None if malformed); the cache is bounded and
    holds only keys whose messages were checked."""
    try:
        raw = bytes.fromhex(key_hex)
        if len(raw) != nacl.bindings.crypto_sign_PUBLICKEYBYTES:
            return None
        return nacl.signing.VerifyKey(raw)
    except (ValueError, nacl.exceptions.CryptoError):
        return None


_DIRECT_INFO = b"p2pchat direct v1"
_NONCE = bytes(12)  # every key is used once: a fixed nonce is safe


def _direct_key(shared: bytes, eph: bytes, recipient: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=eph + recipient, info=_DIRECT_INFO
    ).derive(shared)


def seal(recipient_dh_hex: str, plaintext: bytes, aad: bytes) -> tuple[str, str]:
    """Encrypt ``plaintext`` so that only the holder of the X25519 key
    ``recipient_dh_hex`` can read it; ``aad`` is bound to it, unencrypted.

    Returns:
        ``(eph, box)``: the one-time public key and the ciphertext, in hex.

    Raises:
        ValueError: ``recipient_dh_hex`` is not an X25519 public key.
    """
    recipient = bytes.fromhex(recipient_dh_hex)
    eph_private = X25519PrivateKey.generate()
    eph = eph_private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = eph_private.exchange(X25519PublicKey.from_public_bytes(recipient))
    box = ChaCha20Poly1305(_direct_key(shared, eph, recipient)).encrypt(_NONCE, plaintext, aad)
    return eph.hex(), box.hex()


def pretty_fingerprint(key_hex: str) -> str:
    """A fingerprint for people: 64 hex digits in groups of four."""
    fp = fingerprint(key_hex)
    return " ".join(fp[i : i + 4] for i in range(0, len(fp), 4))


def _check_private(path: Path) -> None:
    """Refuse a key file that other users can read (POSIX mode bits).

    Skipped on Windows: there ``st_mode`` is made up from the read-only flag
    (always 0o666 or 0o444), and who may read a file is decided by its ACL;
    the default data directory (under ``%LOCALAPPDATA%``) is the user's own.

    Raises:
        StoreError: the file is readable or writable by its group or others.
        OSError: the file cannot be examined.
    """
    if sys.platform == "win32":
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise StoreError(
            f"{path} can be read by other users (mode {mode:o}); run: chmod 600 {path}"
        )


class Identity:
    """A node's key pair.

    Build it with :meth:`generate` or :meth:`load_or_create`.

    Attributes:
        key: the public key, 64 hex digits (the ``key`` of our messages).
        node_id: :func:`node_id_of` ``key``.
        dh: our X25519 public key for direct messages, 64 hex digits.
    """

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key = raw.hex()
        self.node_id = node_id_of(self.key)
        seed = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        dh_seed = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"p2pchat x25519 v1"
        ).derive(seed)
        self._dh = X25519PrivateKey.from_private_bytes(dh_seed)
        self.dh = (
            self._dh.public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            .hex()
        )

    @classmethod
    def generate(cls) -> Identity:
        """A new key pair, in memory only (an ephemeral node, or a test)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, data_dir: str | None) -> Identity:
        """The key pair of a data directory, made there on first use.

        Args:
            data_dir: the node's data directory (it exists and the caller
                holds its lock), or None for a new in-memory key pair.

        Raises:
            StoreError: the key file cannot be read or written, is not an
                Ed25519 private key, or can be read by other users.
        """
        if data_dir is None:
            return cls.generate()
        path = Path(data_dir) / KEY_FILE
        if path.exists():
            try:
                _check_private(path)
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (OSError, ValueError, TypeError) as exc:
                raise StoreError(f"cannot read the identity key {path}: {exc}") from None
            if not isinstance(private, Ed25519PrivateKey):
                raise StoreError(f"{path} is not an Ed25519 private key")
            return cls(private)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            # O_BINARY (Windows only): no newline translation of the PEM.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(path, flags, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise StoreError(f"cannot write the identity key {path}: {exc}") from None
        return cls(private)

    def sign(self, data: bytes) -> str:
        """Sign ``data``; returns the signature as 128 hex digits."""
        return self._private.sign(data).hex()

    def shared_with(self, peer_key_hex: str) -> bytes:
        """The X25519 shared secret with the node whose Ed25519 public key is
        ``peer_key_hex`` (64 hex digits): both keys converted to Curve25519
        with libsodium (``crypto_sign_ed25519_*_to_curve25519``), so two nodes
        that know each other's hello key agree on it (data links,
        :mod:`p2pchat.files.seal`).  32 bytes; any thread.

        Raises:
            ValueError: the key is malformed or of small order (the result
                would be all zero).
        """
        try:
            peer = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(bytes.fromhex(peer_key_hex))
            seed = self._private.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            mine = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
                seed + bytes.fromhex(self.key)
            )
            shared = nacl.bindings.crypto_scalarmult(mine, peer)
        except (nacl.exceptions.CryptoError, RuntimeError, TypeError) as exc:
            raise ValueError(f"not a usable Ed25519 key: {exc}") from None
        if not any(shared):
            raise ValueError("a small-order key")
        return bytes(shared)

    def open(self, eph_hex: str, box_hex: str, aad: bytes) -> bytes | None:
        """Decrypt a direct message sealed to us (see :func:`seal`).

        Returns:
            The plaintext, or None if it was not sealed to us or was changed.
        """
        try:
            eph = bytes.fromhex(eph_hex)
            shared = self._dh.exchange(X25519PublicKey.from_public_bytes(eph))
            key = _direct_key(shared, eph, bytes.fromhex(self.dh))
            return ChaCha20Poly1305(key).decrypt(_NONCE, bytes.fromhex(box_hex), aad)
        except (InvalidTag, ValueError):
            return None
