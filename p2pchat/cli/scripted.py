"""Scripted mode: stdin lines in, events out on stdout, one per line."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from p2pchat.cli.args import Options
from p2pchat.cli.commands import CommandState, handle_line
from p2pchat.cli.output import Output
from p2pchat.cli.session import Stopper, Terminate, close, make_node
from p2pchat.errors import UsageError

log = logging.getLogger(__name__)

_STDIN_POLL_S = 0.5
_MAX_INPUT_LINE_BYTES = 1 << 20


class _LineReader:
    """Lines of scripted input, read so that a stop request is never missed.

    A blocking ``readline`` can miss the signal that should end it (one that
    arrives just before the read starts is handled only after the read
    returns); so, where the stream has a file descriptor, the reader waits
    for input in steps of ``_STDIN_POLL_S`` and reads what is there with
    ``os.read``: with ``poll`` on Linux and macOS; on Windows, whose
    ``select`` takes only sockets, a :class:`_ChunkThread` reads and the main
    thread waits on its queue.  Lines are UTF-8 (undecodable bytes kept as
    surrogates, which ``Node.send`` refuses); a line longer than 1 MiB is cut
    (and then refused as too long).  Streams without a descriptor (tests) are
    read with ``readline``.  Main thread only.

    Args:
        stream: the input (``sys.stdin``).
        threaded: read on a thread (default: on Windows only).
    """

    def __init__(self, stream: Any, threaded: bool | None = None) -> None:
        self._stream = stream
        self._buf = b""
        self._eof = False
        self._poll: Callable[[int], list[tuple[int, int]]] | None = None
        self._thread: _ChunkThread | None = None
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            self._fd = None
        if self._fd is None:
            return
        if threaded is None:
            threaded = sys.platform == "win32"
        if sys.platform != "win32" and not threaded:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            self._poll = poller.poll
        else:
            # The raw stream where there is one: on a Windows console it gives
            # UTF-8 (os.read would give the console's code page).
            raw = getattr(getattr(stream, "buffer", None), "raw", None)
            fd = self._fd
            read: Callable[[int], bytes | None] = (
                raw.read if raw is not None else lambda n: os.read(fd, n)
            )
            self._thread = _ChunkThread(read)
            self._thread.start()

    def readline(self, timeout_s: float) -> str | None:
        """The next line (with its newline, if it had one), ``""`` at the end
        of input, or None if no whole line came within ``timeout_s`` seconds."""
        if self._fd is None:
            line: str = self._stream.readline()
            return line
        deadline = time.monotonic() + timeout_s
        while True:
            cut = self._buf.find(b"\n")
            if cut >= 0 or len(self._buf) >= _MAX_INPUT_LINE_BYTES or (self._eof and self._buf):
                end = cut + 1 if cut >= 0 else min(len(self._buf), _MAX_INPUT_LINE_BYTES)
                raw, self._buf = self._buf[:end], self._buf[end:]
                return raw.decode("utf-8", errors="surrogateescape")
            if self._eof:
                return ""
            data = self._read(max(0.0, deadline - time.monotonic()))
            if data is None:
                return None
            if not data:
                self._eof = True
            self._buf += data

    def _read(self, timeout_s: float) -> bytes | None:
        """What input came within ``timeout_s``: bytes, ``b""`` at the end,
        or None if none came.  Returns after one wait, possibly early (None
        then means "ask again")."""
        if self._thread is not None:
            return self._thread.get(timeout_s)
        assert self._poll is not None and self._fd is not None
        if not self._poll(int(timeout_s * 1000)):
            return None
        try:
            return os.read(self._fd, 65536)
        except BlockingIOError:
            return None


class _ChunkThread(threading.Thread):
    """Reads a stream in chunks on its own thread, for :class:`_LineReader`
    where ``poll`` cannot wait on it (Windows consoles and pipes).

    A daemon: a read of a console cannot be interrupted, so the thread ends
    at the end of input or a read error, or with the process.  At most
    ``_CHUNKS`` chunks of 64 KiB wait in the queue; then the thread waits too.

    Args:
        read: reads up to n bytes, blocking (``b""`` at the end; None, from a
            non-blocking stream with nothing there, is taken as the end too).
    """

    _CHUNKS = 16

    def __init__(self, read: Callable[[int], bytes | None]) -> None:
        super().__init__(name="p2pchat-stdin", daemon=True)
        self._read = read
        self._chunks: queue.Queue[bytes] = queue.Queue(maxsize=self._CHUNKS)

    def run(self) -> None:
        """Read until the end of input (or an error, taken as the end)."""
        while True:
            try:
                data = self._read(65536) or b""
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                log.warning("cannot read stdin: %s", exc)
                data = b""
            self._chunks.put(data)
            if not data:
                return

    def get(self, timeout_s: float) -> bytes | None:
        """The next chunk (``b""``: the end), or None if none came within
        ``timeout_s`` seconds.  Main thread."""
        try:
            return self._chunks.get(timeout=timeout_s)
        except queue.Empty:
            return None


def run_scripted(opts: Options) -> int:
    """Scripted mode: stdin lines in, events out, one per line.

    Args:
        opts: the command line (``name`` is required).

    Returns:
        0 after leaving the room.

    Raises:
        UsageError: no ``--name``.
        StartupError: the node could not start.
    """
    if opts.name is None:
        raise UsageError("--name is required when stdin is not a terminal")
    stdin = sys.stdin
    with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
        # JSON lines are UTF-8; undecodable bytes reach node.send(), which refuses them.
        if isinstance(stdin, io.TextIOWrapper):
            stdin.reconfigure(encoding="utf-8", errors="surrogateescape")
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(encoding="utf-8", errors="backslashreplace")
    stopper = Stopper()
    with stopper.installed(sigint=True):
        # Created and closed inside: the writer may signal the main thread.
        out = Output(json_mode=opts.json, on_broken_pipe=stopper.request_stop)
        try:
            node = make_node(opts, opts.name, out.on_event)
            try:
                node.start()
                reader = _LineReader(stdin)
                commands = CommandState()
                while not stopper.requested:
                    stopper.reading = True
                    try:
                        if stopper.requested:
                            break
                        raw = reader.readline(_STDIN_POLL_S)
                    finally:
                        stopper.reading = False
                    if raw is None:
                        continue  # nothing yet: look at stopper.requested again
                    if not raw:
                        break  # end of input
                    line = raw[:-1] if raw.endswith("\n") else raw
                    line = line.removesuffix("\r")
                    if not handle_line(node, out, line, commands):
                        break
            except Terminate:
                log.info("leaving: signal")
            finally:
                close(node, stopper, out)
        finally:
            out.close()
    return 0
