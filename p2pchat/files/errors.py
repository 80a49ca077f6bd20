"""The errors of the file-transfer pieces, in the tree of :mod:`p2pchat.errors`.

A :class:`BadOffer` is a peer's fault (counted by its :attr:`~BadOffer.code`,
the offer dropped); the others are local conditions the user is told about in
one sentence (the ``file_failed`` event's ``reason``).
"""

from __future__ import annotations

from p2pchat.errors import LocalError, RemoteProtocolError


class BadOffer(RemoteProtocolError):
    """A file offer (or a piece of its hash list) is not valid.

    Args:
        message: what was wrong, for the log.
        code: the reason counted in ``frames_refused``: ``bad_file_name``,
            ``bad_file_size``, ``bad_chunk_size`` or ``bad_file_hash``.
    """

    default_code = "bad_file_hash"


class TransferError(LocalError):
    """A download cannot go on; the message says why and what was kept."""


class NotEnoughSpace(TransferError):
    """Before a download starts: the disk lacks the file's size plus the margin
    (``partial.FREE_SPACE_MARGIN_BYTES``).  Nothing was created."""


class DiskFull(TransferError):
    """The disk filled up while writing a chunk (``ENOSPC`` or ``EDQUOT``).

    Every chunk written before stays in the ``.p2pchat-part`` file and marked
    in its chunk map; the download can be resumed once space is freed.
    """


class ChunksFailedCheck(TransferError):
    """The final check of a download read back chunks whose hash is wrong
    (the disk changed them, or the part file was edited).  They are marked
    missing again, to be fetched once more.

    Attributes:
        indices: the chunk indices that failed, ascending.
    """

    def __init__(self, message: str, indices: list[int]) -> None:
        super().__init__(message)
        self.indices = indices


class DamagedState(TransferError):
    """A ``.p2pchat-map`` file cannot be read: not one of ours, of a newer
    version, or cut short.  Nothing was changed."""
