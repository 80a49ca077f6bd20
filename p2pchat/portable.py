"""The few calls that differ between Linux/macOS and Windows, behind one check each.

Windows lacks ``select.poll`` and ``MSG_DONTWAIT``, and its ``SO_REUSEADDR`` lets a
second program bind a port that is in use.  Every branch tests ``sys.platform``,
so that ``mypy --platform win32`` and ``--platform darwin`` (``scripts/check``)
check each platform's side against the calls typeshed says it has.
"""

from __future__ import annotations

import select
import socket
import sys
from collections.abc import Callable

WINDOWS = sys.platform == "win32"
"""True on Windows (evaluated at import)."""


class WriteProbe:
    """Says, without waiting, whether a socket has room to send.

    On Linux and macOS a ``select.poll`` object registered once for
    ``POLLOUT`` (no limit on the descriptor's number); on Windows, which has no
    ``poll``, ``select.select`` on the one socket (Windows ``select`` takes
    sockets of any number).

    Args:
        sock: a connected socket; the probe does not own or close it.
        use_select: force the ``select.select`` way (tests of the Windows
            branch on Linux; ``select`` fails there for descriptors >= 1024).
    """

    def __init__(self, sock: socket.socket, *, use_select: bool = False) -> None:
        self._sock = sock
        self._poll: Callable[[int], list[tuple[int, int]]] | None = None
        if sys.platform != "win32" and not use_select:
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            self._poll = poller.poll

    def ready(self) -> bool:
        """True if a send now would take at least one byte, or would fail at
        once (a closed or failed socket counts as ready, so that the send
        reports the error).  Any thread (callers serialise sends themselves).

        Raises:
            OSError: ``select`` failed on an open socket (select way only).
        """
        if self._poll is not None:
            return bool(self._poll(0))
        if self._sock.fileno() < 0:
            return True  # closed: as poll's POLLNVAL; the send raises OSError
        _, writable, errored = select.select([], [self._sock], [self._sock], 0)
        return bool(writable or errored)


def send_nowait(sock: socket.socket, data: bytes) -> int:
    """Send what the socket takes now, after :meth:`WriteProbe.ready` said
    it has room; returns the number of bytes sent (0 to ``len(data)``).

    On Linux and macOS with ``MSG_DONTWAIT``; on Windows, which lacks it, a
    plain ``send``: the socket has a timeout (so the descriptor is
    non-blocking underneath) and room, so it does not wait either.

    Raises:
        BlockingIOError: no room after all.
        OSError: the link failed.
    """
    if sys.platform != "win32":
        return sock.send(data, socket.MSG_DONTWAIT)
    return sock.send(data)


def reuse_address(sock: socket.socket) -> None:
    """Set the option a listening socket needs before ``bind``, as
    ``socket.create_server`` does.

    Linux and macOS: ``SO_REUSEADDR`` (rebind at once after a restart while
    old links sit in TIME_WAIT; a port in active use still fails).  Windows:
    nothing; there ``SO_REUSEADDR`` would let a second program listen on a
    port in use and take its links, and a plain bind already ignores
    TIME_WAIT.

    Raises:
        OSError: the option cannot be set.
    """
    if sys.platform != "win32":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
