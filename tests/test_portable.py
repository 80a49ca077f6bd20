"""The Windows and macOS branches, exercised on Linux (issue 13).

Windows has no ``select.poll`` and no ``MSG_DONTWAIT``, its ``select`` takes
only sockets, and its file modes are made up.  The branches that stand in
for them are run here, either forced (``use_select``, ``threaded``) or with
``sys.platform`` patched where the branch is chosen at call time.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pchat import portable
from p2pchat.cli import scripted
from p2pchat.cli.session import Stopper
from p2pchat.errors import StoreError
from p2pchat.identity import KEY_FILE, Identity


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two connected TCP sockets on 127.0.0.1, small buffers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("use_select", [False, True], ids=["poll", "select-windows"])
def test_the_write_probe_says_when_a_socket_is_full(
    pair: tuple[socket.socket, socket.socket], use_select: bool
) -> None:
    a, b = pair
    a.settimeout(5.0)  # as a Link's socket: non-blocking underneath
    probe = portable.WriteProbe(a, use_select=use_select)
    assert probe.ready()
    sent = 0
    while probe.ready():  # the peer reads nothing: the buffers fill up
        sent += portable.send_nowait(a, b"x" * 65536)
        assert sent < 64 << 20, "the socket never filled"
    assert not probe.ready()
    b.setblocking(False)
    drained = 0
    while drained < sent:  # the peer reads: room again
        try:
            drained += len(b.recv(1 << 20))
        except BlockingIOError:
            if probe.ready():
                break
    assert probe.ready()
    a.close()
    assert probe.ready()  # closed counts as ready: the send then reports it
    with pytest.raises(OSError):
        portable.send_nowait(a, b"x")


def test_send_nowait_without_msg_dontwait_does_not_wait(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows: a plain send on a socket with a timeout and room returns at once."""
    a, b = pair
    a.settimeout(5.0)
    monkeypatch.setattr(sys, "platform", "win32")
    probe = portable.WriteProbe(a, use_select=True)
    assert probe.ready()
    assert portable.send_nowait(a, b"hello") == 5
    monkeypatch.undo()
    b.settimeout(5.0)
    assert b.recv(16) == b"hello"


def test_a_listener_reuses_its_address_except_on_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as s:
        portable.reuse_address(s)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    monkeypatch.setattr(sys, "platform", "win32")
    with socket.socket() as s:
        portable.reuse_address(s)  # Windows' SO_REUSEADDR would let others share the port
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0


def test_the_key_file_mode_check_is_skipped_on_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows makes up st_mode (0o666 for every writable file): it says nothing there."""
    first = Identity.load_or_create(str(tmp_path))
    key_file = tmp_path / KEY_FILE
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # no \r\n
    key_file.chmod(0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        Identity.load_or_create(str(tmp_path))
    monkeypatch.setattr(sys, "platform", "win32")
    assert Identity.load_or_create(str(tmp_path)).node_id == first.node_id


@pytest.mark.parametrize("threaded", [False, True], ids=["poll", "thread-windows"])
def test_scripted_input_lines_from_a_pipe_either_way(threaded: bool) -> None:
    """Whole lines only, a wait that ends, a long line in parts, the end of input;
    the reader thread (Windows) ends with the input."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        reader = scripted._LineReader(stream, threaded=threaded)
        assert (reader._thread is not None) == threaded
        assert reader.readline(0.05) is None  # nothing yet: the wait ends
        os.write(write_fd, b"one\r\ntw")
        assert reader.readline(2.0) == "one\r\n"
        assert reader.readline(0.05) is None  # half a line is not a line
        tail = b"o\n" + b"z" * ((1 << 20) + 10) + b"\n" + "thré".encode() + b"\xff"
        writer = threading.Thread(target=os.write, args=(write_fd, tail), daemon=True)
        writer.start()  # more than a pipe holds: written while the reader reads
        assert reader.readline(2.0) == "two\n"
        parts = [reader.readline(5.0)]
        while parts[-1] is not None and not parts[-1].endswith("\n"):  # cut at 1 MiB
            parts.append(reader.readline(5.0))
        assert all(p is not None and len(p) <= (1 << 20) + (1 << 16) for p in parts)
        assert "".join(p or "" for p in parts) == "z" * ((1 << 20) + 10) + "\n"
        writer.join(5.0)
        assert not writer.is_alive()
        os.close(write_fd)
        last = reader.readline(2.0)
        assert last is not None and last.startswith("thré")  # the last line needs no newline
        assert reader.readline(2.0) == ""  # the end of input
        if reader._thread is not None:
            reader._thread.join(5.0)
            assert not reader._thread.is_alive()


def test_a_stop_request_on_windows_needs_no_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no pthread_kill: the request is a flag the scripted loop reads."""
    stopper = Stopper()
    with stopper.installed(sigint=False):
        monkeypatch.setattr(sys, "platform", "win32")
        asker = threading.Thread(target=stopper.request_stop)  # as the stdout writer does
        asker.start()
        asker.join(5.0)
        monkeypatch.undo()
        assert stopper.requested
