#!/usr/bin/env python3
"""Benchmark p2pchat flooding against a classic central relay, on 127.0.0.1.

Each run starts N node processes (one ``p2pchat.node.Node`` per process, static
peers only, no mDNS) linked in a topology, waits until every node sees every
other as a member and has all its direct links up, then sends ``--lines`` lines
of ``--size`` bytes from node 0 at ``--rate`` lines/s (``--rate 0``: a burst).
In the same run and with the same load it measures the classic design as a
baseline: a threaded central TCP relay process (our own code, below) that sends
each length-prefixed line to every other client, and N client processes.  The
two systems run one after the other, never at once; their order alternates
between runs.

Topologies (node i only links to earlier nodes, so every edge is ``i -> j < i``):

* ``full``: every pair is linked;
* ``line``: node i links to node i-1 (the sender, node 0, is at one end);
* ``ring``: ``line``, and the last node also links to node 0;
* ``random``: each new node links to ``--k`` earlier ones, chosen with
  ``--seed`` (the same graph in every run).

How it measures (one clock: ``time.monotonic()``, i.e. CLOCK_MONOTONIC, which on
Linux is system-wide and so comparable between processes of one machine):

* send time: taken by the sender's process just before the send call
  (``Node.send`` / ``socket.sendall``);
* receive time: taken in each receiver's process at the first delivery of the
  line to the application (the node's ``on_event`` MessageEvent; for the relay,
  right after the ``recv`` that completed the frame);
* delivered_fraction: lines that reached all N-1 other nodes / lines;
* latency_last_p50_ms / _p99_ms: over those lines, latency to the last node
  (max over receivers of receive time - send time);
* lines_per_s: lines delivered to all / (last such delivery - first send);
* frames_per_line: chat frames sent by all processes (for the relay: client
  uploads + relay fan-out) per line, divided by the N-1 minimum;
* duplicates_per_node_per_line: chat frames that arrived anywhere but were not
  a first delivery (including copies of its own line coming back to the
  sender), per line and per receiving node (N-1); for p2pchat this equals
  frames_per_line - 1 when nothing is lost;
* cpu_ms_per_delivery: user+system CPU of all processes (relay included), from
  just before the first line until the report, per (line, receiver) delivery;
* rss_mb_per_node: peak RSS (``ru_maxrss``) summed over all processes (relay
  included), divided by N.

Figures are medians over ``--runs``.  Output: a table on stdout; with ``--json``
one last line holding ``{"p2pchat": {...}, "relay": {...}}``.  ``--nodes`` may
list several counts (``--nodes 5,10,20,30``): each is measured in turn with a
table of its own, ``--json`` then prints one line per count, which also holds
``"nodes": N``, and ``--plot FILE.png`` draws latency to the last node (p50
and p99) and CPU per delivery against N (matplotlib).  Every worker binds and
dials 127.0.0.1 only.  Examples::

    python scripts/bench.py --nodes 10 --topology random --lines 300 --rate 20 --json
    python scripts/bench.py --nodes 4 --topology line --lines 200 --rate 0
    python scripts/bench.py --nodes 10 --topology random --lines 300 --broadcast tree --kill
    python scripts/bench.py --nodes 5,10,20,30 --topology random --plot bench.png

With ``--kill`` the driver SIGKILLs one receiver halfway through the sending
(the one with the most links); the figures then count the live nodes only:
``delivered_fraction`` is the fraction of lines that reached every live node.

With ``--relay-signed`` the relay's clients do what every p2pchat node does
for a line besides routing it: the sender signs it as a ``wire.Chat`` with its
Ed25519 key, and each receiver decodes and validates the frame and checks the
signature before the line counts as delivered (receive time after the check).
It separates what the duties cost from what the mesh costs.

The workers are this script in another mode (``--worker``, ``--worker-relay``,
``--worker-client``), driven by JSON lines on stdin/stdout; they are internal.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import os
import queue
import random
import resource
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the driver imports these when it runs; the workers stay lean
    import subprocess

HOST = "127.0.0.1"
"""The only address any part of the benchmark binds or dials."""

TOPOLOGIES = ("full", "line", "ring", "random")
METRICS = (
    "delivered_fraction",
    "latency_last_p50_ms",
    "latency_last_p99_ms",
    "lines_per_s",
    "frames_per_line",
    "duplicates_per_node_per_line",
    "cpu_ms_per_delivery",
    "rss_mb_per_node",
)
EXTRA_METRICS = (
    "frames_per_line_abs",
    "pair_delivered_fraction",
    "link_drops",
    "setup_s",
    "cpu_s_total",
)
SYSTEMS = ("p2pchat", "relay")

MAX_NODES = 60  # a node takes at most 64 links; stay below
MAX_LINES = 1_000_000
MAX_RUNS = 100
INDEX_DIGITS = 8  # a line's text starts with its index, zero-padded
MIN_SIZE = INDEX_DIGITS + 1
MAX_SIZE = 2000  # wire.MAX_TEXT_CHARS; the text is ASCII, so bytes == code points
CHAT_PREFIX = b"\xdc\x00\x10\xa4chat"  # how a chat frame body starts: an array of 16, "chat"
FRAME_HEADER = struct.Struct("!I")
MAX_RELAY_FRAME = 65536
QUIET_S = 0.3  # a report waits until the counters were still for this long...
QUIET_MAX_S = 3.0  # ...but no longer than this
STOP_TIMEOUT_S = 5.0  # grace after quit before SIGTERM


class BenchError(Exception):
    """A run could not be measured (a worker failed, a deadline passed)."""


# -- small helpers ------------------------------------------------------------------------


def line_text(index: int, size: int) -> str:
    """The text of line ``index``: its zero-padded index, then filler, ``size`` bytes."""
    head = f"{index:0{INDEX_DIGITS}d} "
    return (head + "x" * size)[:size]


def line_index(text: str | bytes) -> int:
    """The index a line's text starts with, or -1 if it has none."""
    try:
        return int(text[:INDEX_DIGITS])
    except ValueError:
        return -1


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolated linearly; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, in seconds."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_kb() -> int:
    """Peak resident set size of this process, in KiB (Linux ``ru_maxrss``)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def topology_edges(topology: str, n: int, k: int, seed: int) -> list[tuple[int, int]]:
    """The links of a topology as ``(i, j)`` pairs with ``j < i`` (node i dials node j).

    Args:
        topology: one of :data:`TOPOLOGIES`.
        n: number of nodes (>= 2).
        k: for ``random``, how many earlier nodes each new node links to.
        seed: for ``random``, the seed of the choice.

    Returns:
        The edges, each once.
    """
    edges: list[tuple[int, int]] = []
    rng = random.Random(seed)
    for i in range(1, n):
        if topology == "full":
            edges += [(i, j) for j in range(i)]
        elif topology in ("line", "ring"):
            edges.append((i, i - 1))
        elif topology == "random":
            edges += [(i, j) for j in sorted(rng.sample(range(i), min(k, i)))]
        else:
            raise ValueError(f"unknown topology {topology!r}")
    if topology == "ring" and n >= 3:
        edges.append((n - 1, 0))
    return edges


def eccentricity(n: int, edges: Sequence[tuple[int, int]], source: int) -> int:
    """Most hops from ``source`` to any node (breadth-first); -1 if not connected."""
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    dist = {source: 0}
    todo = deque([source])
    while todo:
        a = todo.popleft()
        for b in adj[a]:
            if b not in dist:
                dist[b] = dist[a] + 1
                todo.append(b)
    return max(dist.values()) if len(dist) == n else -1


# -- worker side --------------------------------------------------------------------------


class _Control:
    """The worker's end of the control channel: JSON lines on stdout, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event line ``{"event": event, **fields}`` and flush."""
        line = json.dumps({"event": event, **fields})
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


class _Recorder:
    """First-arrival times of the benchmark's lines at one receiver."""

    def __init__(self, ctl: _Control) -> None:
        self._ctl = ctl
        self._lock = threading.Lock()
        self.first: list[float | None] = []
        self.unique = 0
        self.arrivals = 0
        self._complete = False

    def expect(self, lines: int) -> None:
        """Forget what was recorded; expect line indexes ``0..lines-1``."""
        with self._lock:
            self.first = [None] * lines
            self.unique = 0
            self.arrivals = 0
            self._complete = lines == 0

    def arrived(self, index: int, t: float) -> None:
        """Line ``index`` arrived at monotonic time ``t``; say ``complete`` once all have."""
        announce = False
        with self._lock:
            self.arrivals += 1
            if 0 <= index < len(self.first) and self.first[index] is None:
                self.first[index] = t
                self.unique += 1
                if self.unique == len(self.first) and not self._complete:
                    self._complete = announce = True
        if announce:
            self._ctl.emit("complete")


class _Counter:
    """An integer counter that several threads increment."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int = 1) -> None:
        """Add ``n``."""
        with self._lock:
            self.value += n


def _watchdog(deadline_s: float) -> None:
    """End this worker after ``deadline_s`` seconds whatever happens (orphan guard)."""

    def run() -> None:
        time.sleep(deadline_s)
        os._exit(3)

    threading.Thread(target=run, name="bench-watchdog", daemon=True).start()


def _quiesce(read: Callable[[], tuple[int, ...]]) -> None:
    """Wait until ``read()`` stops changing for QUIET_S (at most QUIET_MAX_S)."""
    end = time.monotonic() + QUIET_MAX_S
    last = read()
    still_since = time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.05)
        now_val = read()
        if now_val != last:
            last, still_since = now_val, time.monotonic()
        elif time.monotonic() - still_since >= QUIET_S:
            return


def _control_loop(ctl: _Control, handlers: dict[str, Callable[[dict[str, Any]], None]]) -> None:
    """Run commands from stdin until ``quit`` or end of input."""
    while True:
        raw = sys.stdin.readline()
        if not raw:
            return
        try:
            cmd = json.loads(raw)
        except ValueError:
            ctl.emit("error", text=f"bad command {raw.strip()[:80]!r}")
            continue
        name = cmd.get("cmd", "")
        if name == "quit":
            return
        handler = handlers.get(name)
        if handler is None:
            ctl.emit("error", text=f"unknown command {name!r}")
            continue
        try:
            handler(cmd)
        except Exception as exc:
            ctl.emit("error", text=f"{name}: {type(exc).__name__}: {exc}")


def _send_lines(
    cmd: dict[str, Any], send_one: Callable[[int, str], object]
) -> tuple[list[float | None], int]:
    """Send ``cmd["lines"]`` lines at ``cmd["rate"]`` lines/s (0 = at once).

    Returns:
        The monotonic time taken just before each send call (None if it
        failed), and the number of failures.
    """
    lines, size, rate = int(cmd["lines"]), int(cmd["size"]), float(cmd["rate"])
    texts = [line_text(i, size) for i in range(lines)]
    times: list[float | None] = []
    errors = 0
    t0 = time.monotonic()
    for i, text in enumerate(texts):
        if rate > 0:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        t = time.monotonic()
        try:
            send_one(i, text)
        except Exception:
            errors += 1
            times.append(None)
        else:
            times.append(t)
    return times, errors


def node_worker(index: int, room: str, deadline_s: float, broadcast: str = "tree") -> int:
    """``--worker``: one p2pchat node in this process, driven over stdin/stdout.

    Commands: ``peers`` (ports to dial, expected degree and node count),
    ``start`` (take the CPU baseline, expect ``lines``), ``send`` (sender only),
    ``report``, ``quit``.  Events: ``ready``, ``meshed``, ``started``, ``sent``,
    ``complete``, ``report``, ``error``.
    """
    _watchdog(deadline_s)
    from p2pchat import transport, wire
    from p2pchat.events import Event, JoinEvent, LeaveEvent, MessageEvent, PeerDown, PeerUp
    from p2pchat.links import Links
    from p2pchat.node import Node, NodeConfig

    ctl = _Control()
    rec = _Recorder(ctl)
    chat_in = _Counter()
    chat_out = _Counter()

    original_send = transport.Link.send

    def counting_send(link: transport.Link, frame: bytes) -> bool:
        ok = original_send(link, frame)
        if ok and frame.startswith(CHAT_PREFIX, FRAME_HEADER.size):
            chat_out.add()
        return ok

    transport.Link.send = counting_send  # type: ignore[method-assign, assignment]

    class CountingLinks(Links):
        """Links that count the chat frames they receive (before the dedup)."""

        def on_message(
            self,
            link: transport.Link,
            msg: wire.FloodMessage | wire.TreeMessage | wire.HistoryMessage,
        ) -> None:
            if isinstance(msg, wire.Chat):
                chat_in.add()
            super().on_message(link, msg)

    state_lock = threading.Lock()
    members: set[str] = set()
    links: set[str] = set()
    want = {"degree": -1, "members": -1}
    meshed = threading.Event()
    measuring = threading.Event()
    drops: list[str] = []  # reasons of links that went down while measuring

    def check_mesh() -> None:
        with state_lock:
            ok = want["degree"] >= 0 and len(links) >= want["degree"]
            ok = ok and len(members) >= want["members"]
            if not ok or meshed.is_set():
                return
            meshed.set()
        ctl.emit("meshed", members=len(members), links=len(links))

    def on_event(ev: Event) -> None:
        now = time.monotonic()
        if isinstance(ev, MessageEvent):
            if not ev.self:
                rec.arrived(line_index(ev.text), now)
            return
        with state_lock:
            if isinstance(ev, JoinEvent):
                members.add(ev.origin)
            elif isinstance(ev, LeaveEvent):
                members.discard(ev.origin)
            elif isinstance(ev, PeerUp):
                links.add(ev.peer)
            elif isinstance(ev, PeerDown):
                links.discard(ev.peer)
                if measuring.is_set():
                    drops.append(ev.reason)
        check_mesh()

    # active_target=0: the topology under test, and no link of the overlay's own (§8.1).
    config = NodeConfig(
        name=f"n{index}",
        room=room,
        port=0,
        interfaces=[HOST],
        broadcast=broadcast,
        active_target=0,
    )
    node = Node(config, discovery=None, on_event=on_event)
    node.links = CountingLinks(node)
    cpu0 = [cpu_seconds()]

    def do_peers(cmd: dict[str, Any]) -> None:
        with state_lock:
            want["degree"] = int(cmd["degree"])
            want["members"] = int(cmd["nodes"]) - 1
        for port in cmd["ports"]:
            node.add_peer(HOST, int(port))
        check_mesh()

    def do_start(cmd: dict[str, Any]) -> None:
        rec.expect(int(cmd["lines"]))
        measuring.set()
        cpu0[0] = cpu_seconds()
        ctl.emit("started")

    def do_send(cmd: dict[str, Any]) -> None:
        times, errors = _send_lines(cmd, lambda i, text: node.send(text))
        ctl.emit("sent", times=times, errors=errors)

    def do_report(cmd: dict[str, Any]) -> None:
        _quiesce(lambda: (chat_in.value, chat_out.value, rec.arrivals))
        ctl.emit(
            "report",
            first=rec.first,
            unique=rec.unique,
            frames_in=chat_in.value,
            frames_out=chat_out.value,
            cpu_s=cpu_seconds() - cpu0[0],
            maxrss_kb=peak_rss_kb(),
            links=len(links),
            drops=list(drops),
        )

    try:
        node.start()
        ctl.emit("ready", port=node.port, node=node.node_id)
        _control_loop(
            ctl, {"peers": do_peers, "start": do_start, "send": do_send, "report": do_report}
        )
    finally:
        node.close()
    return 0


def _read_frames(
    sock: socket.socket, on_frame: Callable[[bytes, float], None], stop: threading.Event
) -> None:
    """Read length-prefixed frames from ``sock`` until EOF, an error or ``stop``.

    ``on_frame(frame, t)`` gets each whole frame (prefix included) and the
    monotonic time right after the ``recv`` that completed it.
    """
    buf = bytearray()
    while not stop.is_set():
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return
        t = time.monotonic()
        if not data:
            return
        buf += data
        while len(buf) >= FRAME_HEADER.size:
            (n,) = FRAME_HEADER.unpack_from(buf)
            if not 1 <= n <= MAX_RELAY_FRAME:
                return
            end = FRAME_HEADER.size + n
            if len(buf) < end:
                break
            frame = bytes(buf[:end])
            del buf[:end]
            on_frame(frame, t)


class _RelayConn:
    """One client of the relay: its socket, a write lock and its reader's counters."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wlock = threading.Lock()
        self.frames_in = 0  # written by this client's reader thread only
        self.forwarded = 0  # ditto: frames this reader sent to the others
        self.thread: threading.Thread | None = None

    def send(self, frame: bytes) -> bool:
        """Send one frame to this client; False if its socket failed."""
        with self.wlock:
            try:
                self.sock.sendall(frame)
            except OSError:
                return False
        return True

    def close(self) -> None:
        """Shut the connection down (idempotent)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


def relay_worker(deadline_s: float) -> int:
    """``--worker-relay``: the baseline, a threaded central TCP relay on 127.0.0.1.

    One reader thread per client; each frame it reads is sent (``sendall``,
    under that client's write lock) to every other client.  Events: ``ready``
    (port), ``clients`` (count), ``started``, ``report``.
    """
    _watchdog(deadline_s)
    ctl = _Control()
    stop = threading.Event()
    measuring = threading.Event()
    lock = threading.Lock()
    conns: list[_RelayConn] = []
    drops: list[str] = []
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, 0))
    lsock.listen(128)
    lsock.settimeout(0.5)

    def serve(conn: _RelayConn) -> None:
        def forward(frame: bytes, t: float) -> None:
            conn.frames_in += 1
            with lock:
                others = [c for c in conns if c is not conn]
            for other in others:
                if other.send(frame):
                    conn.forwarded += 1

        try:
            _read_frames(conn.sock, forward, stop)
        finally:
            with lock:
                if conn in conns:
                    conns.remove(conn)
                count = len(conns)
            conn.close()
            if not stop.is_set():
                if measuring.is_set():
                    drops.append("client connection ended")
                ctl.emit("clients", count=count)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                sock, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                if stop.is_set():
                    return
                time.sleep(0.1)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(2.0)
            conn = _RelayConn(sock)
            conn.thread = threading.Thread(target=serve, args=(conn,), daemon=True)
            with lock:
                conns.append(conn)
                count = len(conns)
            conn.thread.start()
            ctl.emit("clients", count=count)

    acceptor = threading.Thread(target=accept_loop, name="relay-accept", daemon=True)
    cpu0 = [cpu_seconds()]
    all_conns: list[_RelayConn] = []

    def do_start(cmd: dict[str, Any]) -> None:
        measuring.set()
        cpu0[0] = cpu_seconds()
        ctl.emit("started")

    def do_report(cmd: dict[str, Any]) -> None:
        with lock:
            all_conns[:] = list(conns)

        def read() -> tuple[int, ...]:
            return (sum(c.frames_in for c in all_conns), sum(c.forwarded for c in all_conns))

        _quiesce(read)
        frames_in, frames_out = read()
        ctl.emit(
            "report",
            first=[],
            unique=0,
            frames_in=frames_in,
            frames_out=frames_out,
            cpu_s=cpu_seconds() - cpu0[0],
            maxrss_kb=peak_rss_kb(),
            drops=list(drops),
        )

    try:
        acceptor.start()
        ctl.emit("ready", port=lsock.getsockname()[1])
        _control_loop(ctl, {"start": do_start, "report": do_report})
    finally:
        stop.set()
        lsock.close()
        acceptor.join(2.0)
        with lock:
            left = list(conns)
        for conn in left:
            conn.close()
        for conn in left:
            if conn.thread is not None:
                conn.thread.join(3.0)
    return 0


class _SignedLines:
    """``--relay-signed``: the relay clients' share of p2pchat's duties.

    The sender makes each line a signed ``wire.Chat`` (its own Ed25519 key,
    as a node signs its lines); a receiver decodes and validates the frame
    with ``wire.decode_body`` and checks the key and signature as a node does
    (``docs/protocol.md`` section 7.3) before the line counts as delivered.
    No store, roster, presence or routing: what any design that refuses
    forged names and bad frames pays per delivery.
    """

    def __init__(self) -> None:
        import msgspec

        from p2pchat import identity, wire
        from p2pchat.errors import RemoteProtocolError

        me = identity.Identity.generate()
        self._sign = me.sign
        self._me = (me.node_id, me.key)
        self._replace = msgspec.structs.replace
        self._chat = wire.Chat
        self._new_id = wire.new_message_id
        self._now = wire.now_ts
        self._encode = wire.encode_frame
        self._decode = wire.decode_body
        self._signing_bytes = wire.signing_bytes
        self._bad_frame = RemoteProtocolError
        self._node_id_of = identity.node_id_of
        self._verify = identity.verify
        self.rejected = 0  # frames that failed decoding or the signature check

    def frame(self, i: int, text: str) -> bytes:
        """Line ``i`` with ``text`` as a signed, framed chat message."""
        node_id, key = self._me
        msg = self._chat(
            id=self._new_id(),
            origin=node_id,
            seq=i + 1,
            name="sender",
            room="bench",
            ts=self._now(),
            hops=1,
            text=text,
            line=i + 1,
            key=key,
        )
        return self._encode(self._replace(msg, sig=self._sign(self._signing_bytes(msg))))

    def index(self, body: bytes) -> int:
        """The line index of a received frame body, or -1 if it is rejected."""
        try:
            msg = self._decode(body)
        except self._bad_frame:
            self.rejected += 1
            return -1
        if (
            not isinstance(msg, self._chat)
            or self._node_id_of(msg.key) != msg.origin
            or not self._verify(msg.key, msg.sig, self._signing_bytes(msg))
        ):
            self.rejected += 1
            return -1
        return line_index(msg.text)


def client_worker(relay_port: int, deadline_s: float, signed: bool = False) -> int:
    """``--worker-client``: one client of the relay baseline, driven like a node.

    With ``signed``, lines travel as signed chat messages that each receiver
    decodes and checks before it counts them (:class:`_SignedLines`).
    Commands: ``start``, ``send`` (sender only), ``report``, ``quit``.
    """
    _watchdog(deadline_s)
    ctl = _Control()
    rec = _Recorder(ctl)
    stop = threading.Event()
    frames_in = _Counter()
    frames_out = [0]
    duties = _SignedLines() if signed else None
    sock = socket.create_connection((HOST, relay_port), timeout=5.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(2.0)

    def on_frame(frame: bytes, t: float) -> None:
        frames_in.add()
        body = frame[FRAME_HEADER.size :]
        if duties is None:
            rec.arrived(line_index(body), t)
        else:
            index = duties.index(body)
            rec.arrived(index, time.monotonic())  # delivered once checked

    reader = threading.Thread(
        target=_read_frames, args=(sock, on_frame, stop), name="client-reader", daemon=True
    )
    cpu0 = [cpu_seconds()]

    def do_start(cmd: dict[str, Any]) -> None:
        rec.expect(int(cmd["lines"]))
        cpu0[0] = cpu_seconds()
        ctl.emit("started")

    def send_one(i: int, text: str) -> None:
        if duties is None:
            body = text.encode("utf-8")
            sock.sendall(FRAME_HEADER.pack(len(body)) + body)
        else:
            sock.sendall(duties.frame(i, text))
        frames_out[0] += 1

    def do_send(cmd: dict[str, Any]) -> None:
        times, errors = _send_lines(cmd, send_one)
        ctl.emit("sent", times=times, errors=errors)

    def do_report(cmd: dict[str, Any]) -> None:
        _quiesce(lambda: (frames_in.value, rec.arrivals))
        ctl.emit(
            "report",
            first=rec.first,
            unique=rec.unique,
            frames_in=frames_in.value,
            frames_out=frames_out[0],
            cpu_s=cpu_seconds() - cpu0[0],
            maxrss_kb=peak_rss_kb(),
        )

    try:
        reader.start()
        ctl.emit("ready", port=sock.getsockname()[1])
        _control_loop(ctl, {"start": do_start, "send": do_send, "report": do_report})
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        reader.join(3.0)
        sock.close()
    return 0


# -- driver side --------------------------------------------------------------------------


@dataclass
class _Proc:
    name: str
    proc: subprocess.Popen[str]
    stderr_path: Path
    reader: threading.Thread | None = None


class WorkerGroup:
    """Worker processes of one system in one run, and their control channels.

    Every worker's stdout is read by a thread into one queue; :meth:`wait_for`
    takes events from it against a deadline.  :meth:`close` ends and reaps all
    workers (stdin closed, then SIGKILL after a grace period).
    """

    def __init__(self, tmpdir: Path) -> None:
        self._tmpdir = tmpdir
        self._events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.procs: list[_Proc] = []
        self.mail: list[dict[str, dict[str, Any]]] = []

    def spawn(self, name: str, args: list[str]) -> int:
        """Start ``bench.py <args>`` as a worker called ``name``; return its index."""
        import subprocess

        idx = len(self.procs)
        stderr_path = self._tmpdir / f"{name}-{idx}.stderr"
        with stderr_path.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
                start_new_session=True,  # Ctrl+C reaches only us; we reap them
            )
        p = _Proc(name, proc, stderr_path)
        self.procs.append(p)
        self.mail.append({})
        p.reader = threading.Thread(target=self._read, args=(idx,), daemon=True)
        p.reader.start()
        return idx

    def _read(self, idx: int) -> None:
        stdout = self.procs[idx].proc.stdout
        assert stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for line in stdout:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    self._events.put((idx, obj))
        self._events.put((idx, {"event": "eof"}))

    def send(self, idx: int, cmd: str, **fields: Any) -> None:
        """Send one command to worker ``idx``."""
        stdin = self.procs[idx].proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise BenchError(f"{self.procs[idx].name} is gone ({exc}){self._tail(idx)}") from None

    def _tail(self, idx: int) -> str:
        try:
            text = self.procs[idx].stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        lines = text.strip().splitlines()[-8:]
        return ("\n  stderr: " + "\n  ".join(lines)) if lines else ""

    def wait_for(
        self,
        event: str,
        indices: Sequence[int],
        deadline: float,
        pred: Callable[[dict[str, Any]], bool] | None = None,
        what: str = "",
    ) -> dict[int, dict[str, Any]]:
        """Wait until each worker in ``indices`` has sent ``event`` (satisfying ``pred``).

        Events that arrive meanwhile are kept, latest per kind and worker.

        Raises:
            BenchError: ``deadline`` (monotonic) passed, a worker reported an
                error, or one exited.
        """

        def ok(i: int) -> bool:
            msg = self.mail[i].get(event)
            return msg is not None and (pred is None or pred(msg))

        while True:
            if all(ok(i) for i in indices):
                return {i: self.mail[i][event] for i in indices}
            for i in indices:
                if "error" in self.mail[i]:
                    text = self.mail[i]["error"].get("text", "")
                    raise BenchError(f"{self.procs[i].name}: {text}{self._tail(i)}")
                if "eof" in self.mail[i]:
                    raise BenchError(f"{self.procs[i].name} exited early{self._tail(i)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [self.procs[i].name for i in indices if not ok(i)]
                raise BenchError(f"timed out waiting for {what or event} from {missing}")
            try:
                idx, msg = self._events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            self.mail[idx][str(msg.get("event", ""))] = msg

    def kill(self, idx: int) -> None:
        """SIGKILL worker ``idx`` (a process we started) and reap it."""
        import subprocess

        proc = self.procs[idx].proc
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)

    def close(self) -> None:
        """End every worker: ``quit`` and EOF, then SIGTERM, then SIGKILL; reap all.

        A worker busy sending reads ``quit`` only when done, hence the signals.
        """
        import subprocess

        for p in self.procs:
            if p.proc.stdin is not None:
                with contextlib.suppress(OSError, ValueError):
                    p.proc.stdin.write('{"cmd": "quit"}\n')
                    p.proc.stdin.flush()
                with contextlib.suppress(OSError, ValueError):
                    p.proc.stdin.close()
        end = time.monotonic() + STOP_TIMEOUT_S
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(timeout=max(0.0, end - time.monotonic()))
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.terminate()
        end = time.monotonic() + 2.0
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(timeout=max(0.0, end - time.monotonic()))
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(timeout=5.0)
            if p.reader is not None:
                p.reader.join(2.0)
            if p.proc.stdout is not None:
                with contextlib.suppress(OSError):
                    p.proc.stdout.close()


@dataclass
class Options:
    """The benchmark's parameters (see ``--help``)."""

    nodes: int
    topology: str
    k: int
    seed: int
    lines: int
    size: int
    rate: float
    runs: int
    mesh_timeout_s: float
    drain_timeout_s: float
    json: bool
    plot: str | None
    broadcast: str = "tree"
    kill: bool = False
    relay_signed: bool = False


@dataclass
class RunResult:
    """The figures of one system in one run, and the per-line latencies."""

    metrics: dict[str, float]
    latencies_ms: list[float] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)
    send_errors: int = 0


def _worker_deadline(opts: Options) -> float:
    send_s = opts.lines / opts.rate if opts.rate > 0 else 0.0
    return 2 * (opts.mesh_timeout_s + send_s + opts.drain_timeout_s) + 120.0


def victim(opts: Options) -> int:
    """The node ``--kill`` ends: the receiver with the most links (the
    lowest index among equals), so that its loss cuts the most paths."""
    edges = topology_edges(opts.topology, opts.nodes, opts.k, opts.seed)
    degree = Counter(v for edge in edges for v in edge)
    return max(range(1, opts.nodes), key=lambda i: (degree[i], -i))


def _measure(
    group: WorkerGroup,
    opts: Options,
    sender: int,
    receivers: list[int],
    helpers: list[int],
    setup_s: float,
) -> RunResult:
    """Send the load from ``sender`` and compute the figures from every report.

    ``helpers`` are processes that are not nodes (the relay server): their CPU,
    RSS and frames count, their arrivals do not.  With ``opts.kill``, the
    receiver :func:`victim` names is SIGKILLed halfway through the sending
    and left out of every figure (its CPU and RSS too).
    """
    everyone = [sender, *receivers, *helpers]
    for i in everyone:
        group.send(i, "start", lines=opts.lines)
    group.wait_for("started", everyone, time.monotonic() + 30.0)
    send_s = opts.lines / opts.rate if opts.rate > 0 else 0.0
    group.send(sender, "send", lines=opts.lines, size=opts.size, rate=opts.rate)
    if opts.kill:
        killed = receivers[victim(opts) - 1]
        time.sleep(send_s / 2 if send_s else 0.05)  # the driver's pacing, not a test's wait
        group.kill(killed)
        receivers = [r for r in receivers if r != killed]
        everyone = [i for i in everyone if i != killed]
    sent = group.wait_for("sent", [sender], time.monotonic() + 2 * send_s + 60.0)[sender]
    with contextlib.suppress(BenchError):  # lines that never arrive are measured, not fatal
        group.wait_for(
            "complete", receivers, time.monotonic() + opts.drain_timeout_s, what="all lines"
        )
    for i in everyone:
        group.send(i, "report")
    reports = group.wait_for("report", everyone, time.monotonic() + QUIET_MAX_S + 30.0)
    result = _figures(opts, sent["times"], reports, sender, receivers, setup_s)
    result.send_errors = int(sent.get("errors", 0))
    return result


def _figures(
    opts: Options,
    send_times: list[float | None],
    reports: dict[int, dict[str, Any]],
    sender: int,
    receivers: list[int],
    setup_s: float,
) -> RunResult:
    """The metrics of :data:`METRICS` (and extras) from the workers' reports."""
    n, m = 1 + len(receivers), opts.lines  # the live nodes
    firsts = [reports[r]["first"] for r in receivers]
    latencies: list[float] = []
    last_arrivals: list[float] = []
    for i in range(m):
        t_send = send_times[i] if i < len(send_times) else None
        arr = [f[i] for f in firsts]
        if t_send is None or any(a is None for a in arr):
            continue
        last = max(arr)
        last_arrivals.append(last)
        latencies.append((last - t_send) * 1000.0)
    sent = [t for t in send_times if t is not None]
    delivered = len(latencies)
    span = (max(last_arrivals) - min(sent)) if last_arrivals and sent else 0.0
    nodes = [sender, *receivers]
    deliveries = sum(int(reports[r]["unique"]) for r in receivers)
    frames_out = sum(int(reports[i]["frames_out"]) for i in reports)
    dups = sum(int(reports[i]["frames_in"]) - int(reports[i]["unique"]) for i in nodes)
    cpu_s = sum(float(reports[i]["cpu_s"]) for i in reports)
    rss_kb = sum(int(reports[i]["maxrss_kb"]) for i in reports)
    drops = [str(reason) for i in reports for reason in reports[i].get("drops", [])]
    metrics = {
        "delivered_fraction": delivered / m,
        "latency_last_p50_ms": percentile(latencies, 50),
        "latency_last_p99_ms": percentile(latencies, 99),
        "lines_per_s": delivered / span if span > 0 else math.nan,
        "frames_per_line": frames_out / m / (n - 1),
        "duplicates_per_node_per_line": dups / m / (n - 1),
        "cpu_ms_per_delivery": cpu_s * 1000.0 / deliveries if deliveries else math.nan,
        "rss_mb_per_node": rss_kb / 1024.0 / n,
        "frames_per_line_abs": frames_out / m,
        "pair_delivered_fraction": deliveries / (m * (n - 1)),
        "link_drops": float(len(drops)),
        "setup_s": setup_s,
        "cpu_s_total": cpu_s,
    }
    return RunResult(metrics, latencies, drops)


def run_p2pchat(opts: Options, run: int, tmpdir: Path) -> RunResult:
    """One run of the p2pchat mesh: N node processes, static peers on 127.0.0.1."""
    t0 = time.monotonic()
    n = opts.nodes
    edges = topology_edges(opts.topology, n, opts.k, opts.seed)
    room = f"bench-{os.getpid()}-{run}"
    deadline_s = _worker_deadline(opts)
    group = WorkerGroup(tmpdir)
    try:
        idx = [
            group.spawn(
                f"node{i}",
                [
                    "--worker",
                    "--index",
                    str(i),
                    "--room",
                    room,
                    "--deadline",
                    str(deadline_s),
                    "--broadcast",
                    opts.broadcast,
                ],
            )
            for i in range(n)
        ]
        ready = group.wait_for("ready", idx, time.monotonic() + 60.0)
        ports = [int(ready[idx[i]]["port"]) for i in range(n)]
        for i in range(n):
            dial = [ports[j] for a, j in edges if a == i]
            degree = sum(1 for a, b in edges if i in (a, b))
            group.send(idx[i], "peers", ports=dial, degree=degree, nodes=n)
        group.wait_for("meshed", idx, time.monotonic() + opts.mesh_timeout_s, what="mesh")
        return _measure(group, opts, idx[0], idx[1:], [], time.monotonic() - t0)
    finally:
        group.close()


def run_relay(opts: Options, run: int, tmpdir: Path) -> RunResult:
    """One run of the baseline: a relay process and N client processes."""
    t0 = time.monotonic()
    n = opts.nodes
    deadline_s = _worker_deadline(opts)
    group = WorkerGroup(tmpdir)
    try:
        relay = group.spawn("relay", ["--worker-relay", "--deadline", str(deadline_s)])
        port = int(group.wait_for("ready", [relay], time.monotonic() + 30.0)[relay]["port"])
        idx = [
            group.spawn(
                f"client{i}",
                [
                    "--worker-client",
                    "--relay-port",
                    str(port),
                    "--deadline",
                    str(deadline_s),
                    *(["--relay-signed"] if opts.relay_signed else []),
                ],
            )
            for i in range(n)
        ]
        group.wait_for("ready", idx, time.monotonic() + 60.0)
        group.wait_for(
            "clients",
            [relay],
            time.monotonic() + opts.mesh_timeout_s,
            pred=lambda msg: int(msg.get("count", 0)) >= n,
            what=f"{n} clients",
        )
        return _measure(group, opts, idx[0], idx[1:], [relay], time.monotonic() - t0)
    finally:
        group.close()


def median_metrics(results: list[RunResult]) -> dict[str, float]:
    """Per metric, the median over runs of the finite values (NaN if none)."""
    import statistics

    out: dict[str, float] = {}
    for key in (*METRICS, *EXTRA_METRICS):
        vals = [r.metrics[key] for r in results if math.isfinite(r.metrics[key])]
        out[key] = statistics.median(vals) if vals else math.nan
    return out


ROWS: tuple[tuple[str, str, str], ...] = (
    ("delivered_fraction", "delivered to all (fraction of lines)", "{:.3f}"),
    ("pair_delivered_fraction", "  deliveries (fraction of line x node)", "{:.3f}"),
    ("latency_last_p50_ms", "latency to last node p50 (ms)", "{:.2f}"),
    ("latency_last_p99_ms", "latency to last node p99 (ms)", "{:.2f}"),
    ("lines_per_s", "lines/s delivered to all", "{:.1f}"),
    ("frames_per_line", "frames per line / (N-1)", "{:.2f}"),
    ("frames_per_line_abs", "  frames per line", "{:.1f}"),
    ("duplicates_per_node_per_line", "duplicate arrivals per node per line", "{:.2f}"),
    ("cpu_ms_per_delivery", "CPU ms per delivery (all processes)", "{:.3f}"),
    ("cpu_s_total", "  CPU s total (all processes)", "{:.2f}"),
    ("rss_mb_per_node", "peak RSS per node (MB)", "{:.1f}"),
    ("link_drops", "link-down events while measuring", "{:.0f}"),
    ("setup_s", "setup until mesh/clients ready (s)", "{:.1f}"),
)


def format_table(
    opts: Options, medians: dict[str, dict[str, float]], results: dict[str, list[RunResult]]
) -> str:
    """The human-readable result table, and why links dropped (all runs), if any did."""
    edges = topology_edges(opts.topology, opts.nodes, opts.k, opts.seed)
    ecc = eccentricity(opts.nodes, edges, 0)
    rate = f"{opts.rate:g} lines/s" if opts.rate > 0 else "burst"
    topo = opts.topology + (f" k={opts.k} seed={opts.seed}" if opts.topology == "random" else "")
    topo += f", broadcast {opts.broadcast}"
    if opts.kill:
        topo += f", node {victim(opts)} killed halfway"
    if opts.relay_signed:
        topo += ", relay clients sign and check lines"
    head = [
        f"p2pchat bench: {opts.nodes} nodes, topology {topo} ({len(edges)} links, "
        f"sender at most {ecc} hops from any node); {opts.lines} lines x {opts.size} B, "
        f"{rate}; median of {opts.runs} run(s)",
        "",
        f"{'metric':<42}{'p2pchat':>12}{'relay':>12}",
        "-" * 66,
    ]
    body = []
    for key, label, fmt in ROWS:
        cells = []
        for system in SYSTEMS:
            v = medians[system][key]
            cells.append(fmt.format(v) if math.isfinite(v) else "n/a")
        body.append(f"{label:<42}{cells[0]:>12}{cells[1]:>12}")
    for system in SYSTEMS:
        reasons = Counter(r for res in results[system] for r in res.drops)
        if reasons:
            text = ", ".join(f"{why} x{count}" for why, count in reasons.most_common(5))
            body.append(f"{system}: links went down while measuring: {text}")
        errors = sum(res.send_errors for res in results[system])
        if errors:
            body.append(f"{system}: {errors} send call(s) raised (all runs)")
    return "\n".join(head + body)


def json_line(medians: dict[str, dict[str, float]], nodes: int | None = None) -> str:
    """The ``--json`` summary: ``{"p2pchat": {...}, "relay": {...}}``, NaN as null.

    With several ``--nodes`` there is one such line per node count, which
    then also holds ``"nodes": N``.
    """
    out: dict[str, Any] = {} if nodes is None else {"nodes": nodes}
    out |= {
        system: {
            key: (round(medians[system][key], 6) if math.isfinite(medians[system][key]) else None)
            for key in METRICS
        }
        for system in SYSTEMS
    }
    return json.dumps(out)


def plot_series(by_n: dict[int, dict[str, dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """What ``--plot`` draws: per system, N ascending and the medians at each N.

    Args:
        by_n: node count -> system -> metric -> median (as :func:`median_metrics`).

    Returns:
        system -> ``{"nodes", "p50_ms", "p99_ms", "cpu_ms"}`` -> values, one per N.
    """
    out: dict[str, dict[str, list[float]]] = {}
    ns = sorted(by_n)
    for system in SYSTEMS:
        out[system] = {
            "nodes": [float(n) for n in ns],
            "p50_ms": [by_n[n][system]["latency_last_p50_ms"] for n in ns],
            "p99_ms": [by_n[n][system]["latency_last_p99_ms"] for n in ns],
            "cpu_ms": [by_n[n][system]["cpu_ms_per_delivery"] for n in ns],
        }
    return out


def plot(path: str, opts: Options, by_n: dict[int, dict[str, dict[str, float]]]) -> None:
    """Write latency to the last node (p50, p99) and CPU per delivery against N to ``path``.

    Args:
        path: the PNG to write.
        opts: the benchmark's options (for the title).
        by_n: node count -> system -> metric -> median, one entry per ``--nodes`` value.
    """
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    series = plot_series(by_n)
    fig, (lat_ax, cpu_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for system, color in zip(SYSTEMS, ("tab:blue", "tab:orange"), strict=True):
        data = series[system]
        lat_ax.plot(data["nodes"], data["p50_ms"], "o-", color=color, label=f"{system} p50")
        lat_ax.plot(data["nodes"], data["p99_ms"], "s--", color=color, label=f"{system} p99")
        cpu_ax.plot(data["nodes"], data["cpu_ms"], "o-", color=color, label=system)
    lat_ax.set_xlabel("nodes (N)")
    lat_ax.set_ylabel("latency to the last node (ms)")
    lat_ax.set_yscale("log")
    cpu_ax.set_xlabel("nodes (N)")
    cpu_ax.set_ylabel("CPU ms per delivery (all processes)")
    cpu_ax.set_ylim(bottom=0)
    for ax in (lat_ax, cpu_ax):
        ax.set_xticks(series[SYSTEMS[0]]["nodes"])
        ax.legend()
        ax.grid(True, alpha=0.3)
    rate = f"{opts.rate:g} lines/s" if opts.rate > 0 else "burst"
    relay = ", relay clients sign and check" if opts.relay_signed else ""
    fig.suptitle(
        f"{opts.topology} topology, {opts.lines} lines x {opts.size} B at {rate}, "
        f"broadcast {opts.broadcast}{relay}; median of {opts.runs} run(s)"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_nodes(text: str) -> list[int]:
    """``--nodes``: one node count, or several separated by commas (``5,10,30``).

    Raises:
        argparse.ArgumentTypeError: not a comma-separated list of integers.
    """
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a node count or a comma-separated list of them"
        ) from None
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line (benchmark options and the hidden worker modes)."""
    p = argparse.ArgumentParser(
        description="Benchmark p2pchat flooding against a central TCP relay, on 127.0.0.1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--nodes",
        type=parse_nodes,
        default=[5],
        metavar="N[,N...]",
        help="number of node processes; several (5,10,30) measure each in turn",
    )
    p.add_argument("--topology", choices=TOPOLOGIES, default="full", help="how nodes link")
    p.add_argument("--k", type=int, default=2, help="random: earlier nodes each node links to")
    p.add_argument("--seed", type=int, default=1, help="random: seed of the topology")
    p.add_argument("--lines", type=int, default=200, help="lines sent by node 0")
    p.add_argument("--size", type=int, default=100, help="bytes per line")
    p.add_argument("--rate", type=float, default=20.0, help="lines/s; 0 = all at once")
    p.add_argument("--runs", type=int, default=1, help="runs; figures are medians")
    p.add_argument("--mesh-timeout", type=float, default=30.0, help="s to wait for the mesh")
    p.add_argument(
        "--drain-timeout", type=float, default=10.0, help="s to wait for lines after the last send"
    )
    p.add_argument(
        "--broadcast",
        choices=("flood", "tree"),
        default="tree",
        help="p2pchat's broadcast: a Plumtree spanning tree (p2pchat's default), or flood "
        "every link",
    )
    p.add_argument(
        "--kill",
        action="store_true",
        help="halfway through the sending, SIGKILL one receiver (p2pchat: the one with the "
        "most links; relay: the same client); figures then count the live nodes only",
    )
    p.add_argument(
        "--relay-signed",
        action="store_true",
        help="the relay's clients send signed chat messages and decode, validate and check "
        "each one as a node does before it counts (the same duties, no mesh)",
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line of medians")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw latency and CPU against N (give several --nodes; needs matplotlib)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--worker-relay", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--worker-client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--room", default="bench", help=argparse.SUPPRESS)
    p.add_argument("--relay-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=600.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    problems = []
    if not all(2 <= n <= MAX_NODES for n in args.nodes):
        problems.append(f"--nodes must be 2..{MAX_NODES}")
    if len(set(args.nodes)) != len(args.nodes):
        problems.append("--nodes: each count once")
    if not 1 <= args.lines <= MAX_LINES:
        problems.append(f"--lines must be 1..{MAX_LINES}")
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        problems.append(f"--size must be {MIN_SIZE}..{MAX_SIZE}")
    if not (math.isfinite(args.rate) and args.rate >= 0):
        problems.append("--rate must be >= 0")
    if not 1 <= args.runs <= MAX_RUNS:
        problems.append(f"--runs must be 1..{MAX_RUNS}")
    if args.k < 1:
        problems.append("--k must be >= 1")
    if not 0 < args.mesh_timeout <= 600 or not 0 < args.drain_timeout <= 600:
        problems.append("timeouts must be in (0, 600] s")
    if problems:
        p.error("; ".join(problems))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with a hidden ``--worker*`` flag, one worker)."""
    args = parse_args(argv)
    if args.worker:
        return node_worker(args.index, args.room, args.deadline, args.broadcast)
    if args.worker_relay:
        return relay_worker(args.deadline)
    if args.worker_client:
        return client_worker(args.relay_port, args.deadline, args.relay_signed)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(
            "bench.py: --plot needs matplotlib, which is not installed "
            "(python3 -m pip install matplotlib)",
            file=sys.stderr,
        )
        return 2
    opts = Options(
        nodes=args.nodes[0],
        topology=args.topology,
        k=args.k,
        seed=args.seed,
        lines=args.lines,
        size=args.size,
        rate=args.rate,
        runs=args.runs,
        mesh_timeout_s=args.mesh_timeout,
        drain_timeout_s=args.drain_timeout,
        json=args.json,
        plot=args.plot,
        broadcast=args.broadcast,
        kill=args.kill,
        relay_signed=args.relay_signed,
    )
    import tempfile

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so that every ``finally`` reaps its workers

    signal.signal(signal.SIGTERM, on_term)
    runners: dict[str, Callable[[Options, int, Path], RunResult]] = {
        "p2pchat": run_p2pchat,
        "relay": run_relay,
    }
    by_n: dict[int, dict[str, dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
            for n in args.nodes:
                opts_n = replace(opts, nodes=n)
                results: dict[str, list[RunResult]] = {s: [] for s in SYSTEMS}
                for run in range(opts.runs):
                    order = SYSTEMS if run % 2 == 0 else SYSTEMS[::-1]
                    for system in order:
                        print(
                            f"N={n} run {run + 1}/{opts.runs}: {system} ...",
                            file=sys.stderr,
                            flush=True,
                        )
                        results[system].append(runners[system](opts_n, run, Path(tmp)))
                by_n[n] = {s: median_metrics(results[s]) for s in SYSTEMS}
                if len(by_n) > 1:
                    print()
                print(format_table(opts_n, by_n[n], results), flush=True)
    except BenchError as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.py: interrupted", file=sys.stderr)
        return 130
    if opts.plot:
        plot(opts.plot, opts, by_n)
        print(f"plot written to {opts.plot}", file=sys.stderr)
    if opts.json:
        for n in args.nodes:
            print(json_line(by_n[n], None if len(args.nodes) == 1 else n), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
