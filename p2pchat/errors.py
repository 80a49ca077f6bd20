"""The p2pchat exception tree.

Every error that p2pchat raises on purpose derives from :class:`P2PChatError`.
The split follows h11: a :class:`RemoteProtocolError` means a peer sent
something bad (it ends that link and nothing else), a :class:`LocalError` means
this program or its user asked for something that cannot be done.  The CLI maps
these to messages and exit codes in one place (``p2pchat.cli.main``).
"""

from __future__ import annotations


class P2PChatError(Exception):
    """Base class of every error p2pchat raises on purpose."""


class RemoteProtocolError(P2PChatError):
    """A peer broke the wire protocol (``docs/protocol.md``).

    The link that carried the bad frame is closed with this error's text as
    the logged reason; the node and its other links keep running.

    Args:
        message: what was wrong, for the log.
        code: a short reason code for counters (``/stats``): ``oversized``,
            ``invalid_utf8``, ``malformed``, ``invalid_fields``,
            ``before_handshake``, ``unexpected_handshake``, ``version``,
            ``refused``.
    """

    default_code = "invalid_fields"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code


class FrameTooLarge(RemoteProtocolError):
    """A frame's length prefix is zero or above ``wire.MAX_FRAME_BYTES``."""

    default_code = "oversized"


class VersionMismatch(RemoteProtocolError):
    """The peer speaks another protocol version; the link is refused."""

    default_code = "version"


class LinkRefused(RemoteProtocolError):
    """The peer refused the link during the handshake (another room, another
    protocol version, or a link to itself); the text is the peer's reason."""

    default_code = "refused"


class LocalError(P2PChatError):
    """This node or its user asked for something that cannot be done."""


class UsageError(LocalError):
    """A command line or a chat command was used wrongly (the CLI exits 2)."""


class StartupError(LocalError):
    """The node could not start: a port is taken, an address is not on this
    machine, mDNS could not bind.  The CLI prints the sentence and exits 1."""


class LineTooLong(LocalError):
    """A chat line is longer than ``wire.MAX_TEXT_CHARS``; nothing was sent."""


class StoreError(StartupError):
    """The data directory cannot be used: another p2pchat is using it, its
    database is not a p2pchat database, was made by a newer p2pchat, or is
    damaged.  The message says which, and what to do; nothing was changed."""
