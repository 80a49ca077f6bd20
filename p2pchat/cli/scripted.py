"""Scripted mode: stdin lines in, events out on stdout, one per line."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import sys
import time
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
    with ``poll`` in steps of ``_STDIN_POLL_S`` and reads what is there with
    ``os.read``.  Lines are UTF-8 (undecodable bytes kept as surrogates, which
    ``Node.send`` refuses); a line longer than 1 MiB is cut (and then refused
    as too long).  Streams without a descriptor (tests) are read with
    ``readline``.  Main thread only.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._buf = b""
        self._eof = False
        self._poller: select.poll | None = None
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            self._fd = None
        if self._fd is not None:
            self._poller = select.poll()
            self._poller.register(self._fd, select.POLLIN)

    def readline(self, timeout_s: float) -> str | None:
        """The next line (with its newline, if it had one), ``""`` at the end
        of input, or None if no whole line came within ``timeout_s`` seconds."""
        if self._fd is None or self._poller is None:
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
            left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            if not self._poller.poll(left_ms):
                return None
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                self._eof = True
            self._buf += data


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
