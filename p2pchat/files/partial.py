"""A download being written: ``NAME.p2pchat-part`` and its chunk map.

Files, both in the download directory (``docs/files.md`` §4):

* ``NAME.p2pchat-part``: the data, each verified chunk written at its offset
  (preallocated to the file's size where the file system can);
* ``NAME.p2pchat-map``: a header written once (the offer, the chunk hashes,
  their SHA-256) and two *slots* of the chunk map (a sequence number, one
  bit per chunk, their SHA-256).  An update writes the older slot in place
  and fsyncs, so a crash mid-write leaves the other slot whole (the newest
  valid slot wins on load): the map is replaced atomically without needing a
  byte of new disk space, which matters when the disk is full.

Ordering: the data file is fsynced before a map slot that marks its chunks
done is written, so a chunk marked done was on disk before the mark.  The
map is written at most once per :data:`MAP_FLUSH_EVERY_S` (time passed in),
on :meth:`PartialFile.flush` and :meth:`PartialFile.close`; a crash loses at
most the last second of chunks, which are fetched again.

Resume trusts the map (no re-read on load, so resuming a 10 GiB download
costs nothing), because of that ordering; :meth:`PartialFile.finish` then
reads every chunk back and checks its hash and the whole file's SHA-256
before the rename, so a chunk damaged while we were away is found there,
marked missing and fetched again (:class:`~p2pchat.files.errors.ChunksFailedCheck`).

All disk access goes through a :class:`ChunkWriter` (tests pass one that
fails with ``ENOSPC``).  Called on one thread at a time (the node's file
thread); nothing here starts threads or reads the clock.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, NamedTuple, Protocol

from p2pchat.files.errors import (
    BadOffer,
    ChunksFailedCheck,
    DamagedState,
    DiskFull,
    NotEnoughSpace,
    TransferError,
)
from p2pchat.files.manifest import (
    HASH_BYTES,
    Manifest,
    Offer,
    check_size,
    chunk_count,
    chunk_span,
    leaf_hash,
    make_offer,
)
from p2pchat.files.safename import safe_filename

PART_SUFFIX: Final = ".p2pchat-part"
MAP_SUFFIX: Final = ".p2pchat-map"

MAP_FLUSH_EVERY_S: Final = 1.0
"""The chunk map is written at most once a second while chunks arrive."""

FREE_SPACE_MARGIN_BYTES: Final = 256 * 1024 * 1024
"""A download starts only if the disk keeps 256 MiB free after it."""

_MAGIC: Final = b"p2pcmap\x01"
_HEADER: Final = struct.Struct(
    "!8s32sQI32sH"
)  # magic, file id, size, chunk size, root, name length
_SEQ: Final = struct.Struct("!Q")
_DISK_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


class ChunkWriter(Protocol):
    """Where a part file's bytes go: positional reads and writes on one file.

    The default is :class:`FileWriter`; every method may raise ``OSError``.
    """

    def allocate(self, size: int) -> None:
        """Reserve ``size`` bytes on disk (may do nothing)."""

    def pwrite(self, data: bytes, offset: int) -> None:
        """Write all of ``data`` at byte ``offset``."""

    def pread(self, length: int, offset: int) -> bytes:
        """Read up to ``length`` bytes at ``offset``."""

    def fsync(self) -> None:
        """Make every write so far durable."""

    def close(self) -> None:
        """Close; idempotent."""


class FileWriter:
    """A :class:`ChunkWriter` on a real file descriptor (``os.pwrite``)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._seek_lock = threading.Lock()  # Windows: seek + read/write as one step

    def allocate(self, size: int) -> None:
        """``posix_fallocate`` where the OS and file system have it, so a
        too-small disk fails now (``ENOSPC``) rather than mid-way."""
        if size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(self._fd, 0, size)
            except OSError as error:
                if error.errno in _DISK_FULL:
                    raise
                # EOPNOTSUPP, EINVAL...: the file system cannot; write as we go.

    def pwrite(self, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (loops over short writes).
        Windows has no ``os.pwrite``: a seek and a write under a lock there."""
        view = memoryview(data)
        while view:
            if sys.platform == "win32":
                with self._seek_lock:
                    os.lseek(self._fd, offset, os.SEEK_SET)
                    written = os.write(self._fd, view)
            else:
                written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def pread(self, length: int, offset: int) -> bytes:
        """``os.pread`` (a seek and a read under a lock on Windows)."""
        if sys.platform == "win32":
            with self._seek_lock:
                os.lseek(self._fd, offset, os.SEEK_SET)
                return os.read(self._fd, length)
        return os.pread(self._fd, length, offset)

    def fsync(self) -> None:
        """``os.fsync``."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the descriptor once."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def open_writer(path: Path, create: bool) -> ChunkWriter:
    """The default writer: ``path`` opened read-write, created exclusively
    when ``create`` (``O_EXCL``: never an existing file), never through a
    symlink (``O_NOFOLLOW``).

    Raises:
        FileExistsError: ``create`` and the path exists.
        OSError: any other failure to open.
    """
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    return FileWriter(os.open(path, flags, 0o644))


WriterFactory = Callable[[Path, bool], ChunkWriter]


def check_free_space(
    directory: Path,
    needed_bytes: int,
    margin_bytes: int = FREE_SPACE_MARGIN_BYTES,
    disk_usage: Callable[[Path], tuple[int, int, int]] = shutil.disk_usage,
) -> None:
    """Refuse a download the disk cannot hold with ``margin_bytes`` to spare.

    Raises:
        NotEnoughSpace: ``free - margin_bytes < needed_bytes``.
    """
    free = disk_usage(directory)[2]
    if free - margin_bytes < needed_bytes:
        raise NotEnoughSpace(
            f"not enough space in {directory}: the file needs {needed_bytes:,} bytes and "
            f"{free:,} are free ({margin_bytes:,} are kept free)"
        )


class _Header(NamedTuple):
    offer: Offer
    leaves: tuple[bytes, ...]
    slots_at: int


def _header_bytes(offer: Offer, leaves: tuple[bytes, ...]) -> bytes:
    name = offer.name.encode("utf-8")
    head = (
        _HEADER.pack(_MAGIC, offer.file_id, offer.size, offer.chunk_size, offer.root, len(name))
        + name
        + b"".join(leaves)
    )
    return head + hashlib.sha256(head).digest()


def _read_header(data: bytes, where: Path) -> _Header:
    """The header of a map file, every field checked.

    Raises:
        DamagedState: not ours, cut short, checksum or hashes wrong.
    """

    def damaged(why: str) -> DamagedState:
        return DamagedState(f"{where} cannot be resumed: {why}; delete it and its part file")

    if len(data) < _HEADER.size or data[:8] != _MAGIC:
        raise damaged("not a p2pchat chunk map (or of a newer version)")
    _, file_id, size, chunk_size, root, name_len = _HEADER.unpack_from(data)
    try:
        check_size(size, chunk_size)
    except BadOffer as error:
        raise damaged(str(error)) from None
    at = _HEADER.size + name_len
    end = at + chunk_count(size, chunk_size) * HASH_BYTES
    if len(data) < end + HASH_BYTES:
        raise damaged("cut short")
    if hashlib.sha256(data[:end]).digest() != data[end : end + HASH_BYTES]:
        raise damaged("its header does not match its checksum")
    try:
        offer = make_offer(file_id, data[_HEADER.size : at].decode("utf-8"), size, chunk_size, root)
    except (UnicodeDecodeError, BadOffer) as error:
        raise damaged(str(error)) from None
    leaves = tuple(data[i : i + HASH_BYTES] for i in range(at, end, HASH_BYTES))
    if Manifest(size, chunk_size, leaves).file_id != file_id:
        raise damaged("its chunk hashes do not match its file id")
    return _Header(offer, leaves, end + HASH_BYTES)


class PartialFile:
    """One download in progress.  Make it with :meth:`create` or :meth:`resume`.

    Attributes:
        offer: the offer being downloaded.
        leaves: the chunk hashes (32 bytes each), checked against the offer.
        part_path: the data file, ``NAME.p2pchat-part``.
        map_path: the chunk map, ``NAME.p2pchat-map``.
    """

    def __init__(
        self,
        offer: Offer,
        leaves: tuple[bytes, ...],
        map_path: Path,
        writer: ChunkWriter,
        map_writer: ChunkWriter,
        slots_at: int,
        done: bytearray,
        seq: int,
    ) -> None:
        """Internal: use :meth:`create` or :meth:`resume`."""
        self.offer = offer
        self.leaves = leaves
        self.map_path = map_path
        self.part_path = map_path.with_name(map_path.name[: -len(MAP_SUFFIX)] + PART_SUFFIX)
        self._writer = writer
        self._map = map_writer
        self._slots_at = slots_at
        self._done = done
        self._seq = seq
        self._dirty = False
        self._last_flush = float("-inf")
        self._closed = False

    # -- making one --------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        offer: Offer,
        leaves: tuple[bytes, ...],
        *,
        margin_bytes: int = FREE_SPACE_MARGIN_BYTES,
        open_file: WriterFactory = open_writer,
        disk_usage: Callable[[Path], tuple[int, int, int]] = shutil.disk_usage,
    ) -> PartialFile:
        """Start a download of ``offer`` in ``directory``.

        Args:
            directory: the download directory (it must exist).
            offer: a validated offer.
            leaves: its chunk hashes, fetched and checked piece by piece
                (:func:`~p2pchat.files.manifest.verify_piece`).
            margin_bytes: disk space that must stay free.
            open_file: opens the part and map files (tests pass fakes).
            disk_usage: ``shutil.disk_usage`` or a fake.

        Raises:
            NotEnoughSpace: the disk cannot hold the file plus the margin
                (also when preallocation says ``ENOSPC``); nothing is left.
            TransferError: ``leaves`` do not match the offer, or no free name.
            OSError: the files cannot be created.
        """
        try:
            manifest = Manifest(offer.size, offer.chunk_size, leaves)
        except BadOffer as error:
            raise TransferError(f"the chunk hashes do not fit the offer: {error}") from None
        if manifest.file_id != offer.file_id:
            raise TransferError("the chunk hashes do not match the offer's file id")
        check_free_space(directory, offer.size, margin_bytes, disk_usage)
        while True:
            final = safe_filename(offer.name, directory, (PART_SUFFIX, MAP_SUFFIX))
            part_path = Path(str(final) + PART_SUFFIX)
            try:
                writer = open_file(part_path, True)
                break
            except FileExistsError:
                continue  # taken since the check: take the next name
        map_path = Path(str(final) + MAP_SUFFIX)
        map_writer: ChunkWriter | None = None
        created = [part_path]
        try:
            try:
                writer.allocate(offer.size)
            except OSError as error:
                if error.errno in _DISK_FULL:
                    raise NotEnoughSpace(
                        f"not enough space in {directory} for {offer.size:,} bytes"
                    ) from None
                raise
            map_writer = open_file(map_path, True)
            created.append(map_path)
            header = _header_bytes(offer, leaves)
            done = bytearray((len(leaves) + 7) // 8)
            empty_slot = cls._slot_bytes(0, done)
            map_writer.pwrite(header + empty_slot + empty_slot, 0)
            map_writer.fsync()
            _fsync_dir(directory)
        except BaseException:
            writer.close()
            if map_writer is not None:
                map_writer.close()
            for path in created:
                path.unlink(missing_ok=True)
            raise
        return cls(offer, leaves, map_path, writer, map_writer, len(header), done, 0)

    @classmethod
    def resume(cls, map_path: Path, *, open_file: WriterFactory = open_writer) -> PartialFile:
        """Take up a download from its chunk map after a restart or a crash.

        The chunks the newest valid map slot marks done count as done
        (module docstring: why they are not re-read here).

        Raises:
            DamagedState: the map is not ours, is cut short, or fails its
                checksum; or the part file is missing.
            OSError: the files cannot be opened.
        """
        map_writer = open_file(map_path, False)
        try:
            data = _read_all(map_writer)
            header = _read_header(data, map_path)
            n = len(header.leaves)
            slot_len = _SEQ.size + (n + 7) // 8 + HASH_BYTES
            best: tuple[int, bytearray] | None = None
            for at in (header.slots_at, header.slots_at + slot_len):
                slot = data[at : at + slot_len]
                if (
                    len(slot) == slot_len
                    and hashlib.sha256(slot[:-HASH_BYTES]).digest() == slot[-HASH_BYTES:]
                ):
                    seq = _SEQ.unpack_from(slot)[0]
                    if best is None or seq > best[0]:
                        best = (seq, bytearray(slot[_SEQ.size : -HASH_BYTES]))
            if best is None:
                raise DamagedState(f"{map_path} cannot be resumed: both chunk maps are damaged")
            part_path = map_path.with_name(map_path.name[: -len(MAP_SUFFIX)] + PART_SUFFIX)
            try:
                writer = open_file(part_path, False)
            except FileNotFoundError:
                raise DamagedState(f"{part_path} is missing: the download starts over") from None
        except BaseException:
            map_writer.close()
            raise
        return cls(
            header.offer,
            header.leaves,
            map_path,
            writer,
            map_writer,
            header.slots_at,
            best[1],
            best[0],
        )

    # -- state -------------------------------------------------------------

    def is_done(self, index: int) -> bool:
        """Whether chunk ``index`` is written and marked done."""
        return bool(self._done[index >> 3] & (0x80 >> (index & 7)))

    def have_map(self) -> bytes:
        """The done chunks as a bitfield: bit ``i`` (MSB first) of byte
        ``i // 8`` is chunk ``i`` (what a have-map on the wire carries)."""
        return bytes(self._done)

    def missing(self) -> list[int]:
        """The chunk indices not done yet, ascending."""
        return [i for i in range(len(self.leaves)) if not self.is_done(i)]

    @property
    def done_count(self) -> int:
        """How many chunks are done."""
        return sum(bin(byte).count("1") for byte in self._done)

    # -- writing -----------------------------------------------------------

    def write_chunk(self, index: int, data: bytes, now: float) -> bool:
        """Check chunk ``index`` against its hash and, if it matches, write it.

        Args:
            index: the chunk index.
            data: the chunk's bytes as received.
            now: monotonic seconds (for the once-a-second map write).

        Returns:
            ``True`` if written (or already done: nothing written again);
            ``False`` if ``data`` does not match the chunk's hash (nothing
            written: tell the scheduler, refetch elsewhere).

        Raises:
            IndexError: no such chunk.
            DiskFull: the disk is full: the chunk is not marked, the map of
                the chunks before it is written (or the previous one stays);
                the download is closed and can be resumed later.
            OSError: other write errors.
        """
        offset, length = self.span(index)
        if self.is_done(index):
            return True
        if len(data) != length or leaf_hash(data) != self.leaves[index]:
            return False
        try:
            self._writer.pwrite(data, offset)
        except OSError as error:
            if error.errno not in _DISK_FULL:
                raise
            self._fail_full(index, error)
        self._done[index >> 3] |= 0x80 >> (index & 7)
        self._dirty = True
        if now - self._last_flush >= MAP_FLUSH_EVERY_S:
            self.flush(now)
        return True

    def span(self, index: int) -> tuple[int, int]:
        """``(offset, length)`` of chunk ``index``."""
        return chunk_span(self.offer.size, self.offer.chunk_size, index)

    def _fail_full(self, index: int, error: OSError) -> None:
        done = self.done_count
        with contextlib.suppress(OSError):  # else the previous map slot stays valid
            self.flush(self._last_flush)
        self._close_files()
        raise DiskFull(
            f"the disk is full ({os.strerror(error.errno or errno.ENOSPC)}) writing chunk "
            f"{index} of {self.offer.name!r}: the {done} of {len(self.leaves)} chunks received "
            f"are kept in {self.part_path}; free some space and get the file again to resume"
        ) from error

    def flush(self, now: float) -> None:
        """Make the done chunks durable: fsync the data, then write the older
        map slot and fsync it.  Nothing happens if nothing changed.

        Raises:
            OSError: from fsync or the map write.
        """
        if not self._dirty:
            return
        self._writer.fsync()
        seq = self._seq + 1
        slot = self._slot_bytes(seq, self._done)
        self._map.pwrite(slot, self._slots_at + (seq % 2) * len(slot))
        self._map.fsync()
        self._seq = seq
        self._dirty = False
        self._last_flush = now

    def flush_due(self, now: float) -> None:
        """The timer's turn: write the map if chunks came since it was last
        written and :data:`MAP_FLUSH_EVERY_S` has passed, so a download that
        stalls (its holders gone) does not keep its last chunks unmarked until
        the next one comes; a crash then loses at most that second.

        Raises:
            OSError: as :meth:`flush`.
        """
        if self._dirty and now - self._last_flush >= MAP_FLUSH_EVERY_S:
            self.flush(now)

    @staticmethod
    def _slot_bytes(seq: int, done: bytearray) -> bytes:
        body = _SEQ.pack(seq) + bytes(done)
        return body + hashlib.sha256(body).digest()

    # -- reading (to serve others) ------------------------------------------

    def read_chunk(self, index: int) -> bytes | None:
        """The bytes of a done chunk, checked against its hash again (serve
        only what checks); ``None`` if not done or not matching any more.

        Raises:
            OSError: from reading.
        """
        if not self.is_done(index):
            return None
        offset, length = self.span(index)
        data = self._writer.pread(length, offset)
        return data if leaf_hash(data) == self.leaves[index] else None

    # -- the end -----------------------------------------------------------

    def finish(self) -> tuple[Path, str]:
        """Check the whole file and give it its name.

        Reads every chunk back, checks it against its hash, computes the
        whole file's SHA-256, then links the part file to a free name from
        :func:`~p2pchat.files.safename.safe_filename` (never replacing a
        file: ``os.link`` fails on an existing name, and where links are not
        supported an exclusively created placeholder is replaced), and
        removes the part file and the map.

        Returns:
            ``(path, sha256_hex)`` of the finished file (for ``file_done``).

        Raises:
            TransferError: chunks are still missing.
            ChunksFailedCheck: chunks read back do not match their hash: they
                are marked missing and the map written; fetch them again.
            OSError: from reading, linking or removing.
        """
        if self.done_count != len(self.leaves):
            raise TransferError(f"{len(self.leaves) - self.done_count} chunks still missing")
        self._writer.fsync()
        whole = hashlib.sha256()
        bad = []
        for index in range(len(self.leaves)):
            offset, length = self.span(index)
            data = self._writer.pread(length, offset)
            if leaf_hash(data) != self.leaves[index]:
                bad.append(index)
            whole.update(data)
        if bad:
            for index in bad:
                self._done[index >> 3] &= ~(0x80 >> (index & 7)) & 0xFF
            self._dirty = True
            self.flush(self._last_flush)
            raise ChunksFailedCheck(
                f"{len(bad)} chunks of {self.offer.name!r} changed on disk; fetching them again",
                bad,
            )
        self._close_files()
        directory = self.part_path.parent
        while True:
            final = safe_filename(self.offer.name, directory)
            try:
                os.link(self.part_path, final, follow_symlinks=False)
            except FileExistsError:
                continue
            except OSError:  # no hard links here (FAT, some network file systems)
                try:
                    os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                except FileExistsError:
                    continue
                os.replace(self.part_path, final)
            break
        self.part_path.unlink(missing_ok=True)
        self.map_path.unlink(missing_ok=True)
        _fsync_dir(directory)
        return final, whole.hexdigest()

    def close(self, now: float | None = None) -> None:
        """Write the map and close both files; idempotent.  The download can
        be resumed with :meth:`resume`."""
        if self._closed:
            return
        try:
            self.flush(self._last_flush if now is None else now)
        finally:
            self._close_files()

    def discard(self) -> None:
        """Cancel: close and delete the part file and the map."""
        self._close_files()
        self.part_path.unlink(missing_ok=True)
        self.map_path.unlink(missing_ok=True)

    def _close_files(self) -> None:
        self._closed = True
        self._writer.close()
        self._map.close()


def _read_all(writer: ChunkWriter) -> bytes:
    parts: list[bytes] = []
    offset = 0
    while True:
        data = writer.pread(1 << 20, offset)
        if not data:
            return b"".join(parts)
        parts.append(data)
        offset += len(data)


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so a created or renamed name is durable (POSIX only)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
