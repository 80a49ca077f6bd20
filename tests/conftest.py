"""Shared fixtures: no thread outlives its test; in-process nodes on loopback.

Network safety: every node made here listens on 127.0.0.1 only, and mDNS runs
on 127.0.0.1 only, with a service type unique to the test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from p2pchat import wire
from p2pchat.discovery import FoundPeer, LocalService, MdnsDiscovery
from p2pchat.events import Event, JoinEvent, LeaveEvent, MessageEvent
from p2pchat.identity import Identity
from p2pchat.node import Node, NodeConfig
from p2pchat.transport import LinkConfig

LOOPBACK = "127.0.0.1"

REQUIRE_ALL_ENV = "P2PCHAT_REQUIRE_ALL"
"""When this environment variable is ``1`` (``.ci/run`` sets it), a skipped
test that needs the machine's help (the ``netns`` tests: root and iproute2;
the tmux test: tmux) fails instead: CI must not stay green by running less."""


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``ci_required`` marker (see :data:`REQUIRE_ALL_ENV`)."""
    config.addinivalue_line(
        "markers",
        f"ci_required: skipping this test fails the run when {REQUIRE_ALL_ENV}=1 (as in CI)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that must not skip in CI: every ``netns`` test and
    every tmux test (by name: they skip where tmux is not installed)."""
    for item in items:
        if item.get_closest_marker("netns") is not None or "tmux" in item.name:
            item.add_marker(pytest.mark.ci_required)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Turn the skip of a ``ci_required`` test into a failure when
    :data:`REQUIRE_ALL_ENV` is ``1``; elsewhere it stays a skip with its reason."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and os.environ.get(REQUIRE_ALL_ENV) == "1"
        and item.get_closest_marker("ci_required") is not None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"{REQUIRE_ALL_ENV}=1 (CI) but this test skipped: {reason}. "
            "Run as root with iproute2 and tmux installed (bash scripts/test installs them)."
        )


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Fail a test that leaves a thread running (as python-zeroconf's suite does)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"threads left running: {[t.name for t in extra]}"


@pytest.fixture(autouse=True)
def private_data_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test touches the real per-user data directory: ``XDG_DATA_HOME``
    (which platformdirs reads, and child processes inherit) points at a fresh
    temporary directory.  Several nodes at once still need ``--ephemeral`` or
    a ``--data-dir`` each."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))


def unique_service_type() -> str:
    """A DNS-SD service type no other test run uses (label <= 15 chars)."""
    return f"_p2pt{os.urandom(4).hex()}._tcp.local."


def unique_room() -> str:
    return f"test-{os.urandom(3).hex()}"


@dataclass
class Recorder:
    """Collects one node's events (thread-safe enough: list.append is atomic)."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)

    def messages(self) -> list[MessageEvent]:
        return [e for e in self.events if isinstance(e, MessageEvent)]

    def texts(self) -> list[str]:
        return [m.text for m in self.messages()]

    def joined_names(self) -> set[str]:
        return {e.name for e in self.events if isinstance(e, JoinEvent)}

    def leaves(self) -> list[LeaveEvent]:
        return [e for e in self.events if isinstance(e, LeaveEvent)]


FAST_LINK = LinkConfig(
    handshake_timeout_s=2.0, keepalive_interval_s=0.3, link_timeout_s=1.5, send_queue_frames=1024
)


class Cluster:
    """In-process nodes on 127.0.0.1, closed at the end of the test."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.nodes: list[Node] = []
        self.recorders: list[Recorder] = []

    def add(
        self,
        name: str,
        peers: list[Node] | None = None,
        mdns_type: str | None = None,
        **overrides: object,
    ) -> Node:
        rec = Recorder()
        settings: dict[str, object] = {
            "room": self.room,
            "port": 0,
            "interfaces": [LOOPBACK],
            "peers": [(LOOPBACK, p.port) for p in (peers or [])],
            "redial_min_s": 0.1,
            "redial_max_s": 1.0,
        }
        settings.update(overrides)
        config = NodeConfig(name=name, **settings)  # type: ignore[arg-type]
        disc = MdnsDiscovery(interfaces=[LOOPBACK], service_type=mdns_type) if mdns_type else None
        node = Node(config, discovery=disc, on_event=rec)
        self.nodes.append(node)
        self.recorders.append(rec)
        node.start()
        return node

    def wait_all_know_each_other(self, timeout_s: float = 15.0) -> None:
        n = len(self.nodes)
        wait_for(
            lambda: all(len(node.snapshot().members) == n for node in self.nodes),
            timeout_s,
            f"all {n} nodes to see each other",
        )

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture(autouse=True)
def _downloads_in_tmp(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test writes to the user's downloads folder: the default download
    directory (platformdirs, which reads ``XDG_DOWNLOAD_DIR``) is a temporary
    one, for in-process nodes and the processes tests start alike."""
    monkeypatch.setenv("XDG_DOWNLOAD_DIR", str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(unique_room())
    try:
        yield c
    finally:
        c.close()


class RawPeer:
    """A hand-driven peer on a raw TCP socket to a node on 127.0.0.1, for
    tests that send what an honest node never would.

    Args:
        port: the node's listening port.
        rcvbuf: a small SO_RCVBUF, set before connecting (for a peer that
            stops reading).
    """

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5.0)
        self.sock.connect((LOOPBACK, port))
        self.decoder = wire.FrameDecoder()
        self.identity = Identity.generate()
        self.node_id = self.identity.node_id
        self.nonce = os.urandom(16).hex()
        self.seq = 0
        self.backlog: list[wire.Message] = []  # read during the handshake, not yet taken

    @property
    def address(self) -> str:
        """How the node names this link in its logs: ``ip:port`` of our end (we send port 0)."""
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def make_hello(
        self, room: str, version: int = wire.PROTOCOL_VERSION, **fields: Any
    ) -> wire.Hello:
        """Our hello (with our key and nonce), ``fields`` overriding."""
        values: dict[str, Any] = {
            "version": version,
            "node": self.node_id,
            "name": "raw",
            "room": room,
            "port": 0,
            "nonce": self.nonce,
            "key": self.identity.key,
        }
        values.update(fields)
        return wire.Hello(**values)

    def hello_frame(self, room: str, version: int = wire.PROTOCOL_VERSION) -> bytes:
        return wire.encode_frame(self.make_hello(room, version))

    def hello(self, room: str, version: int = wire.PROTOCOL_VERSION, **fields: Any) -> None:
        """Send our hello and, if the node answers with its own, our proof,
        as an honest node does; anything else read stays in :attr:`backlog`."""
        hello = self.make_hello(room, version, **fields)
        self.sock.sendall(wire.encode_frame(hello))
        if version != wire.PROTOCOL_VERSION:
            return
        theirs = self.next_message()
        if isinstance(theirs, wire.Hello):
            data = wire.proof_bytes(theirs.nonce, self.node_id, theirs.node, hello.room)
            with contextlib.suppress(OSError):  # the node may be refusing us meanwhile
                self.sock.sendall(wire.encode_frame(wire.Proof(sig=self.identity.sign(data))))
        elif theirs is not None:
            self.backlog.insert(0, theirs)

    def next_message(self, timeout_s: float = 5.0) -> wire.Message | None:
        """The node's next frame (backlog first); None if the link closed."""
        deadline = time.monotonic() + timeout_s
        while not self.backlog:
            if not self._read_more(deadline, f"no frame from the node within {timeout_s} s"):
                return None
        return self.backlog.pop(0)

    def _read_more(self, deadline: float, failure: str) -> bool:
        """Read what the node sent next into :attr:`backlog`; False once it
        closed the link; fail with ``failure`` after ``deadline`` (monotonic)."""
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return False
            if not data:
                return False
            self.backlog += self.decoder.feed(data)
            return True
        pytest.fail(failure)

    def message(self, cls: type, room: str, **fields: object) -> wire.FloodMessage:
        """A new valid flooded message of type ``cls`` from us, signed (not
        sent).  ``fields`` may override the envelope (``origin``, ``seq``, ...)."""
        self.seq += 1
        envelope: dict[str, object] = {
            "id": wire.new_message_id(),
            "origin": self.node_id,
            "seq": self.seq,
            "name": "raw",
            "room": room,
            "ts": wire.now_ts(),
            "hops": 16,
        }
        envelope.update(fields)
        msg: wire.FloodMessage = cls(**envelope)
        return self.sign(msg)

    def sign(self, msg: wire.F) -> wire.F:
        """``msg`` with our key and a valid signature of ours."""
        msg = msgspec.structs.replace(msg, key=self.identity.key)
        return msgspec.structs.replace(msg, sig=self.identity.sign(wire.signing_bytes(msg)))

    def chat(self, room: str, text: str) -> wire.Chat:
        """A new valid chat line of ours (not sent)."""
        msg = self.message(wire.Chat, room, text=text)
        assert isinstance(msg, wire.Chat)
        return msg

    def flooded(self, cls: type, room: str, **fields: object) -> wire.FloodMessage:
        """Send a new valid flooded message of type ``cls`` and return it."""
        msg = self.message(cls, room, **fields)
        self.sock.sendall(wire.encode_frame(msg))
        return msg

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until_closed(self, timeout_s: float = 10.0) -> list[wire.Message]:
        """Read the node's frames until it closes the link; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._read_more(deadline, f"the node did not close the link within {timeout_s} s"):
            pass
        out, self.backlog = self.backlog, []
        return out

    def talk_until_closed(self, timeout_s: float = 10.0, every_s: float = 0.2) -> float:
        """Send a keepalive every ``every_s`` seconds, as a live honest peer
        does, and read until the node closes the link; return the seconds it
        took; fail after ``timeout_s``.  Unlike :meth:`wait_closed`, the link
        cannot die of silence meanwhile: only a rule of the node can close it."""
        start = time.monotonic()
        keepalive = wire.encode_frame(wire.Keepalive())
        self.sock.settimeout(every_s)
        while time.monotonic() - start < timeout_s:
            try:
                self.sock.sendall(keepalive)
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset, broken pipe: closed
                return time.monotonic() - start
            if not data:
                return time.monotonic() - start
            self.backlog += self.decoder.feed(data)
        pytest.fail(f"the node did not close the link within {timeout_s} s")

    def wait_closed(self, timeout_s: float = 10.0) -> float:
        """Wait until the node closes the link; return the seconds it took."""
        start = time.monotonic()
        self.read_until_closed(timeout_s)
        return time.monotonic() - start

    def close(self) -> None:
        self.sock.close()


class Cable:
    """A TCP relay on 127.0.0.1 in front of a node's port, that a test can
    cut (every connection through it closes, new ones are closed at once)
    and mend: a network link between two parts of the mesh.  It keeps what
    went through in :attr:`captured`, like a packet capture of the link."""

    def __init__(self, target_port: int) -> None:
        self.target = (LOOPBACK, target_port)
        self.server = socket.create_server((LOOPBACK, 0))
        self.server.settimeout(0.1)
        self.port: int = self.server.getsockname()[1]
        self.cut_off = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.captured = bytearray()  # everything that went through, both ways (first 16 MiB)
        self._accept = threading.Thread(target=self._run, name="test-cable", daemon=True)
        self._accept.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.cut_off:
                conn.close()
                continue
            try:
                out = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._socks += [conn, out]
                for a, b in ((conn, out), (out, conn)):
                    t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                    self._threads.append(t)
                    t.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            with self._lock:
                if len(self.captured) < 16 << 20:
                    self.captured += data
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cut_off = True
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def mend(self) -> None:
        self.cut_off = False

    def close(self) -> None:
        self.cut()
        self._stop.set()
        self.server.close()
        self._accept.join(2.0)
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(2.0)


@pytest.fixture
def cables() -> Iterator[list[Cable]]:
    cables: list[Cable] = []
    yield cables
    for c in cables:
        c.close()


class HandDiscovery:
    """A discovery driven by the test: it remembers what it was asked to
    announce and keeps the node's ``found`` callback."""

    def __init__(self) -> None:
        self.announced: list[LocalService] = []
        self.found: Callable[[FoundPeer], None] | None = None

    def start(
        self,
        local: LocalService,
        found: Callable[[FoundPeer], None],
        lost: Callable[[str], None],
        **_: Any,
    ) -> None:
        self.announced.append(local)
        self.found = found

    def close(self) -> None:
        pass
