"""A file we offered, served from where it lies (``docs/files.md`` §6).

The offerer does not copy the file: it keeps the path, the size and the
modification time it had when hashed, and the :class:`~p2pchat.files.manifest.Manifest`.
Every chunk it serves is read from the path and checked against its hash
first, and the file's size and mtime are checked before each read, so a
file edited after the offer stops being served (``None``) rather than
spreading data that does not match the offer.  After a restart the offer is
served again from its :meth:`SourceFile.record` (kept in the data directory
by the node) while size and mtime are unchanged; the chunk hashes are
checked on demand, as each chunk is read.

Blocking file I/O, on the caller's thread (the node's file thread).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pchat.files.errors import BadOffer, TransferError
from p2pchat.files.manifest import Manifest, hash_file, leaf_hash


@dataclass(frozen=True)
class SourceFile:
    """An offered file on disk.

    Attributes:
        path: where it lies (absolute).
        manifest: its chunks and hashes.
        mtime_ns: its modification time when hashed, nanoseconds.
    """

    path: Path
    manifest: Manifest
    mtime_ns: int

    @classmethod
    def hash(cls, path: Path, chunk_size: int | None = None) -> tuple[SourceFile, str]:
        """Hash the file at ``path`` to offer it.

        Returns:
            ``(source, sha256_hex)``.

        Raises:
            TransferError: not a regular file, or it changed while it was
                being hashed (size or mtime).
            OSError: it cannot be read.
        """
        path = path.resolve()
        before = os.stat(path)
        if not path.is_file():
            raise TransferError(f"{path} is not a regular file")
        with open(path, "rb") as stream:
            manifest, sha = hash_file(stream, chunk_size)
        after = os.stat(path)
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or (
            manifest.size != after.st_size
        ):
            raise TransferError(f"{path} changed while it was being read; offer it again")
        return cls(path, manifest, after.st_mtime_ns), sha

    def unchanged(self) -> bool:
        """Whether the file still has the size and mtime it was hashed with."""
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        return (now.st_size, now.st_mtime_ns) == (self.manifest.size, self.mtime_ns)

    def read_chunk(self, index: int) -> bytes | None:
        """Chunk ``index`` read from the file and checked against its hash.

        Returns:
            The bytes, or ``None`` if the file changed (size, mtime or this
            chunk's content): stop serving the offer (``Server.withdraw``).

        Raises:
            IndexError: no such chunk.
        """
        offset, length = self.manifest.span(index)
        if not self.unchanged():
            return None
        try:
            with open(self.path, "rb") as stream:
                stream.seek(offset)
                data = stream.read(length)
        except OSError:
            return None
        return data if leaf_hash(data) == self.manifest.leaves[index] else None

    def record(self) -> dict[str, Any]:
        """What the node keeps in its data directory to serve the offer after
        a restart: JSON-ready (path, size, chunk size, mtime, hashes in hex)."""
        return {
            "path": str(self.path),
            "size": self.manifest.size,
            "chunk_size": self.manifest.chunk_size,
            "mtime_ns": self.mtime_ns,
            "leaves": [leaf.hex() for leaf in self.manifest.leaves],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SourceFile:
        """The :class:`SourceFile` of a :meth:`record` (whether the file is
        still the same is for :meth:`unchanged` to say).

        Raises:
            TransferError: the record is not valid.
        """
        try:
            leaves = tuple(bytes.fromhex(h) for h in record["leaves"])
            manifest = Manifest(int(record["size"]), int(record["chunk_size"]), leaves)
            return cls(Path(record["path"]), manifest, int(record["mtime_ns"]))
        except (KeyError, TypeError, ValueError, BadOffer) as error:
            raise TransferError(f"a kept offer cannot be read: {error!r}") from None
