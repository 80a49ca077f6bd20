"""What the file transfers tell their user (``FileTransfers(on_event=...)``).

Frozen values, made on the transfers' file thread and handed to
``on_event`` there, never under a lock.  File ids are 32 bytes; sizes in
bytes, speeds in bytes per second, times in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileProgress:
    """A download moved on (at most 4 a second per file).

    Attributes:
        file: the file id.
        name: the offered name.
        done_bytes: bytes verified and written so far.
        size: the file's size.
        speed_Bps: recent speed, bytes per second (over the last 2 s).
        holders: holders with a data link and something to give.
        eta_s: seconds left at that speed, or None if unknown.
    """

    file: bytes
    name: str
    done_bytes: int
    size: int
    speed_Bps: float
    holders: int
    eta_s: float | None


@dataclass(frozen=True)
class FileDone:
    """A download is complete, checked whole and renamed.

    Attributes:
        file: the file id.
        name: the offered name.
        path: where it now lies (in the download directory, a safe name).
        size: bytes.
        sha256: the whole file's SHA-256, lowercase hex.
    """

    file: bytes
    name: str
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class FileFailed:
    """A download stopped; ``reason`` is a sentence for the user (what
    failed, what was kept, how to resume).

    Attributes:
        file: the file id.
        name: the offered name.
        reason: why.
    """

    file: bytes
    name: str
    reason: str


@dataclass(frozen=True)
class TransferStatus:
    """One transfer in :meth:`FileTransfers.status`.

    Attributes:
        file: the file id.
        name: the offered name.
        size: bytes.
        done_bytes: bytes verified and written (``size`` when served whole).
        speed_Bps: recent download speed, bytes per second.
        holders: holders connected for it.
        eta_s: seconds left, or None.
        state: ``hashes`` (fetching the hash list), ``fetching``,
            ``waiting`` (no holder known or reachable), ``done``, ``failed``,
            ``cancelled``, or ``offered`` (our own offer, served).
    """

    file: bytes
    name: str
    size: int
    done_bytes: int
    speed_Bps: float
    holders: int
    eta_s: float | None
    state: str
