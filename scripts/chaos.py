#!/usr/bin/env python3
"""Run p2pchat under hostile and broken network conditions; print what held.

Every scenario runs real ``p2pchat --json`` processes (driven by
:mod:`p2pchat.harness`) and checks what the user would see:

* ``crash``: a seeded random mesh of 10 nodes on 127.0.0.1 made of two parts
  (nodes 0-4 and 6-9) whose only joint is node 5.  Node 5 gets SIGKILL.  The
  others must report it gone (``leave``, reason ``timeout``) within 12.5 s
  (10 s member timeout, checked every 0.5 s, plus scheduling slack); lines
  sent all along must reach their own part exactly once; the parts must
  re-link by themselves (no node was given a peer of the other part, so only
  the addresses carried by presences can do it); lines sent once the room is
  whole again must reach every live node exactly once.
* ``linkcut``: three hosts in network namespaces (real mDNS, a service type
  of this run only).  Host 2's link goes down inside its namespace for
  ``--cut-s`` seconds (30) and comes back: the others must time it out, and
  the links and the chat must come back with no user action.  Needs root and
  iproute2; skipped, with the reason, without them.
* ``slow-reader``: a hand-made v1 peer (a raw socket, tiny receive window)
  completes the handshake with node A, sends keepalives, and never reads,
  while A sends ``--slow-lines`` lines (3000).  A must drop it (``send queue
  full``) and its honest peer B must get every line exactly once.
* ``flood``: a hand-made peer of A sends ``--flood-frames`` (2000) valid
  chat frames of its own origin within about 2 s.  Honest lines from A and B
  must all arrive; the figure is how many flood lines got through, against
  what the per-origin rate limit allows.
* ``garbage``: ``--garbage-conns`` (1000) connections to A, 8 at a time, each
  sending random bytes (some with a plausible length prefix, some a frame
  before the handshake).  A must close each of them, stay up and keep its
  link to B; honest chat must go on meanwhile.  The figure is connections
  handled per second.

Where useful, ``/stats`` (the ``stats`` event) gives the node's own counters.

Output: one row per check, ``scenario | what was checked | PASS/FAIL/SKIP |
figure``, then the runtime of each scenario; with ``--json`` one JSON object
instead.  Exit status: 0 when no check failed (a skipped scenario says why;
``--strict`` makes a skip fail too), 1 otherwise, 2 for bad usage.

Network safety: in the main namespace everything binds and dials 127.0.0.1
only, with ``--no-mdns``; the namespace scenario uses 10.x addresses inside
its own namespaces (see ``tests/netns_lab.py``), which it removes afterwards.
Only processes this script started are ever signalled.  Examples::

    python scripts/chaos.py
    python scripts/chaos.py --only crash --only flood --json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import random
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec

from p2pchat import wire
from p2pchat.harness import (
    NodeProcess,
    WaitFailed,
    env_with_path,
    pump_for,
    stop,
    wait_until,
)
from p2pchat.identity import Identity
from p2pchat.node import NodeConfig

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
"""The only address used in the main namespace."""

SCENARIOS = ("crash", "linkcut", "slow-reader", "flood", "garbage")

# The documented bounds (docs/protocol.md sections 9 and 10).
MEMBER_TIMEOUT_S = 10.0
TIMEOUT_BOUND_S = 12.5  # 10 s timeout + 0.5 s check period + slack for a busy machine
READY_DEADLINE_S = 15.0
MESH_DEADLINE_S = 25.0
DELIVERY_DEADLINE_S = 15.0
RELINK_DEADLINE_S = 30.0  # after SIGKILL
RESUME_DEADLINE_S = 30.0  # after link-up
STATS_DEADLINE_S = 5.0
STOP_TIMEOUT_S = 5.0
MAX_ROUNDS = 1_000_000  # safety bound of every polling loop; the deadlines end them first

# The crash mesh: nodes 0-4 and 6-9, joined only by node 5.
PART_A = range(0, 5)
BRIDGE = 5
PART_B = range(6, 10)
N_MESH = 10

FRAME_HEADER = struct.Struct("!I")
MAX_FRAME = 65536
KEEPALIVE = b'\x00\x00\x00\x14{"type":"keepalive"}'
RAW_KEEPALIVE_S = 1.5  # under the 2 s a real node uses; the link dies after 6 s of silence
RAW_SOCKET_TIMEOUT_S = 5.0
SLOW_TEXT_CHARS = 1000
GARBAGE_WORKERS = 8  # under the 16 inbound links a node takes from one address
GARBAGE_CONN_TIMEOUT_S = 8.0  # > the 5 s handshake deadline
FLOOD_SPREAD_S = 2.0
FLOOD_BATCHES = 20


# -- the report -----------------------------------------------------------------------------


@dataclass
class Row:
    """One check: its scenario, what was checked, PASS/FAIL/SKIP and a figure."""

    scenario: str
    check: str
    result: str
    figure: str


@dataclass
class Scenario:
    """The rows of one scenario as it runs, and the output of failed waits."""

    name: str
    verbose: bool = False
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    runtime_s: float = 0.0

    def check(self, what: str, ok: bool, figure: str) -> bool:
        self.rows.append(Row(self.name, what, "PASS" if ok else "FAIL", figure))
        progress(f"  {'PASS' if ok else 'FAIL'}  {what}: {figure}")
        return ok

    def skip(self, what: str, reason: str) -> None:
        self.rows.append(Row(self.name, what, "SKIP", reason))
        progress(f"  SKIP  {what}: {reason}")

    def wait(
        self,
        what: str,
        pred: Callable[[], bool],
        timeout_s: float,
        procs: Sequence[NodeProcess],
        *,
        must_run: Sequence[NodeProcess] | None = None,
    ) -> float | None:
        """Seconds until ``pred()`` held; on a timeout (or a node exiting), a
        FAIL row for ``what`` and None."""
        try:
            return wait_until(pred, max(0.1, timeout_s), what, procs, must_run=must_run)
        except WaitFailed as exc:
            text = str(exc)
            self.details.append(text)
            if self.verbose:
                progress(text)
            self.check(what, False, text.splitlines()[0])
            return None


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def format_table(rows: Sequence[Row]) -> str:
    head = Row("scenario", "what was checked", "result", "figure")
    cols = [max(len(getattr(r, f.name)) for r in [head, *rows]) for f in dataclasses.fields(Row)]
    lines = []
    for k, r in enumerate([head, *rows]):
        cells = [getattr(r, f.name) for f in dataclasses.fields(Row)]
        lines.append(" | ".join(c.ljust(w) for c, w in zip(cells, cols, strict=True)).rstrip())
        if k == 0:
            lines.append("-+-".join("-" * w for w in cols))
    return "\n".join(lines)


# -- p2pchat processes ----------------------------------------------------------------------


def _is_ready(node: NodeProcess) -> Callable[[], bool]:
    return lambda: node.ready_event is not None


@contextlib.contextmanager
def loopback_nodes(
    dials: Sequence[Sequence[int]], names: Sequence[str], room: str
) -> Iterator[list[NodeProcess]]:
    """One ``p2pchat --json --no-mdns`` on 127.0.0.1 per entry of ``dials``
    (``dials[i]``: the earlier nodes it gets as ``--peer``), each started once
    the ones it dials are ready; all stopped on exit."""
    nodes: list[NodeProcess] = []
    try:
        for i, peers in enumerate(dials):
            argv = [
                sys.executable,
                "-m",
                "p2pchat",
                "--ephemeral",
                "--name",
                names[i],
                "--room",
                room,
            ]
            argv += ["--json", "--no-mdns", "--interface", HOST, "--port", "0"]
            for p in peers:
                argv += ["--peer", f"{HOST}:{nodes[p].port}"]
            node = NodeProcess.spawn(argv, names[i], cwd=str(REPO), env=env_with_path(REPO))
            nodes.append(node)
            wait_until(_is_ready(node), READY_DEADLINE_S, f"{names[i]} ready", [node])
        yield nodes
    finally:
        stop(nodes, STOP_TIMEOUT_S)


def ids_of(nodes: Sequence[NodeProcess]) -> list[str]:
    return [str(n.node_id) for n in nodes]


def stats(node: NodeProcess) -> dict[str, Any] | None:
    """The node's ``/stats`` counters (its ``stats`` event), or None."""
    node.pump()
    start = len(node.events)
    try:
        node.send_line("/stats")
    except (OSError, ValueError):
        return None

    def answered() -> bool:
        return any(e.get("event") in ("stats", "error") for e in node.events[start:])

    try:
        wait_until(answered, STATS_DEADLINE_S, "stats", [node], settle_s=0.0)
    except WaitFailed:
        return None
    got = [e for e in node.events[start:] if e.get("event") == "stats"]
    return got[-1] if got else None


def count_problems(
    nodes: Sequence[NodeProcess], texts: Sequence[str], *, at_most: bool = False
) -> tuple[int, int]:
    """``(missing, duplicated)`` deliveries of ``texts`` over ``nodes``
    (``at_most``: a missing line is fine)."""
    missing = dups = 0
    for n in nodes:
        got = Counter(n.texts())
        for t in texts:
            if got[t] == 0 and not at_most:
                missing += 1
            elif got[t] > 1:
                dups += got[t] - 1
    return missing, dups


def config_default(name: str, fallback: float) -> float:
    """A :class:`NodeConfig` default (the limit every node runs with)."""
    for f in dataclasses.fields(NodeConfig):
        if f.name == name and isinstance(f.default, int | float):
            return float(f.default)
    return fallback


# -- a hand-made peer -----------------------------------------------------------------------


def frame(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return FRAME_HEADER.pack(len(body)) + body


class RawPeer:
    """A peer on a raw socket to 127.0.0.1: sends ``hello`` (port 0: it
    does not listen), reads the node's ``hello``; then only what it is told.

    ``rcvbuf`` and ``mss`` shrink its receive window and segment size before
    it connects, so that a peer that stops reading fills the node's send
    queue rather than kernel buffers."""

    def __init__(self, port: int, room: str, name: str, *, rcvbuf: int = 0, mss: int = 0) -> None:
        self.identity = Identity.generate()
        self.node_id = self.identity.node_id
        self.room = room
        self.name = name
        self.seq = 0
        self.bytes_read = 0
        self.alive = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if mss:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            self.sock.settimeout(RAW_SOCKET_TIMEOUT_S)
            self.sock.connect((HOST, port))
            hello = wire.Hello(
                version=wire.PROTOCOL_VERSION,
                node=self.node_id,
                name=name,
                room=room,
                port=0,
                nonce=secrets.token_hex(16),
                key=self.identity.key,
            )
            self.sock.sendall(wire.encode_frame(hello))
            self.peer_hello = self.read_frame()
            if self.peer_hello.get("type") == "hello":  # prove we hold our node id's key
                nonce = str(self.peer_hello.get("nonce", ""))
                data = wire.proof_bytes(nonce, self.node_id, str(self.peer_hello["node"]), room)
                proof = wire.Proof(sig=self.identity.sign(data))
                self.sock.sendall(wire.encode_frame(proof))
        except BaseException:
            self.sock.close()
            raise
        if self.peer_hello.get("type") != "hello":
            self.close()
            raise ConnectionError(f"expected a hello, got {self.peer_hello}")

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        for _ in range(n + 1):
            if len(buf) >= n:
                break
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the node closed the connection")
            buf += chunk
        return buf

    def read_frame(self) -> dict[str, Any]:
        (n,) = FRAME_HEADER.unpack(self._recv_exact(4))
        if not 1 <= n <= MAX_FRAME:
            raise ConnectionError(f"frame length {n}")
        obj = json.loads(self._recv_exact(n))
        if not isinstance(obj, dict):
            raise ConnectionError("frame is not an object")
        return obj

    def send(self, data: bytes) -> bool:
        """Send ``data`` whole; False once the connection is gone."""
        with self._lock:
            if not self.alive:
                return False
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                self.alive = False
                return False

    def chat_frame(self, text: str) -> bytes:
        """A valid chat line of ours, signed as every node requires."""
        self.seq += 1
        msg = wire.Chat(
            id=secrets.token_hex(16),
            origin=self.node_id,
            seq=self.seq,
            name=self.name,
            room=self.room,
            ts=round(time.time(), 3),
            hops=16,
            text=text,
            key=self.identity.key,
        )
        msg = msgspec.structs.replace(msg, sig=self.identity.sign(wire.signing_bytes(msg)))
        return wire.encode_frame(msg)

    def _thread(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=f"chaos-{self.name}-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def start_keepalive(self, max_s: float) -> None:
        """Send a keepalive every 1.5 s, for at most ``max_s`` or until closed."""

        def run() -> None:
            for _ in range(int(max_s / RAW_KEEPALIVE_S) + 1):
                if self._stop.wait(RAW_KEEPALIVE_S) or not self.send(KEEPALIVE):
                    break

        self._thread("keepalive", run)

    def start_drain(self, max_s: float) -> None:
        """Read and discard what the node sends, for at most ``max_s``."""

        def run() -> None:
            end = time.monotonic() + max_s
            for _ in range(MAX_ROUNDS):
                if self._stop.is_set() or time.monotonic() > end:
                    break
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                self.bytes_read += len(data)

        self._thread("drain", run)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self.alive = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for t in self._threads:
            t.join(RAW_SOCKET_TIMEOUT_S + 1.0)


# -- crash: SIGKILL of the only joint of a mesh of ten --------------------------------------


def bridged_mesh(seed: int) -> list[list[int]]:
    """``dials[i]``: the earlier nodes node ``i`` dials.  Each new node dials
    two earlier ones of its part (node 5: two of part A; a part-B node with
    only one earlier part-B node also dials node 5)."""
    rng = random.Random(seed)
    dials: list[list[int]] = []
    for i in range(N_MESH):
        if i in PART_A:
            pool = list(range(PART_A.start, i))
        elif i == BRIDGE:
            pool = list(PART_A)
        else:
            pool = list(range(PART_B.start, i))
        picks = sorted(rng.sample(pool, min(2, len(pool))))
        if i in PART_B and len(picks) < 2:
            picks.append(BRIDGE)
        dials.append(picks)
    return dials


def scenario_crash(opts: argparse.Namespace, sc: Scenario) -> None:
    dials = bridged_mesh(opts.seed)
    names = [f"n{i}" for i in range(N_MESH)]
    progress(f"crash: mesh {dials} (seed {opts.seed}); node 5 joins the parts")
    with loopback_nodes(dials, names, f"chaos-{secrets.token_hex(4)}") as nodes:
        ids = ids_of(nodes)
        took = sc.wait(
            "mesh of 10 up",
            lambda: all(set(ids) - {ids[k]} <= n.members() for k, n in enumerate(nodes)),
            MESH_DEADLINE_S,
            nodes,
        )
        if took is None:
            return
        vid = ids[BRIDGE]
        rest = [n for k, n in enumerate(nodes) if k != BRIDGE]
        part_a = [nodes[k] for k in PART_A]
        part_b = [nodes[k] for k in PART_B]
        ids_b = {ids[k] for k in PART_B}
        for n in rest:
            n.pump()
        mark = {n.label: len(n.events) for n in rest}

        nodes[BRIDGE].proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        nodes[BRIDGE].proc.wait(timeout=STOP_TIMEOUT_S)
        progress("crash: node 5 killed (SIGKILL)")

        # A line from each part every second all along: (part, text, sent at).
        sent: list[tuple[str, str, float]] = []
        ticking = [True]
        reported: dict[str, float] = {}
        relinked: list[float] = []

        def tick() -> None:
            now = time.monotonic() - killed_at
            if ticking[0] and len(sent) < 200 and (not sent or now - sent[-1][2] >= 1.0):
                for part, sender in (("A", part_a[0]), ("B", part_b[-1])):
                    text = f"tick {len(sent) // 2} from {sender.label} {secrets.token_hex(2)}"
                    sender.send_line(text)
                    sent.append((part, text, now))

        def watch() -> bool:
            tick()
            now = time.monotonic() - killed_at
            for n in rest:
                if n.label not in reported and n.leaves(vid):
                    reported[n.label] = now
            if not relinked:
                for n in part_a:
                    ups = n.events[mark[n.label] :]
                    if any(e.get("event") == "peer_up" and e.get("peer") in ids_b for e in ups):
                        relinked.append(now)
                        break
            return len(reported) == len(rest)

        what = "leave(timeout) of the killed bridge at all 8 others within 12.5 s"
        if sc.wait(what, watch, TIMEOUT_BOUND_S + 5.0, rest) is None:
            return
        reasons = {n.label: [e.get("reason") for e in n.leaves(vid)] for n in rest}
        bad = {k: v for k, v in reasons.items() if v != ["timeout"]}
        latest = max(reported.values())
        figure = f"timeout reported after {min(reported.values()):.1f}-{latest:.1f} s"
        sc.check(what, not bad and latest <= TIMEOUT_BOUND_S, figure + (f"; {bad}" if bad else ""))

        def whole() -> bool:
            watch()
            return bool(relinked) and all(
                set(ids) - {vid, ids[k]} <= nodes[k].members() for k in range(N_MESH) if k != BRIDGE
            )

        remaining = RELINK_DEADLINE_S - (time.monotonic() - killed_at)
        if sc.wait("the parts re-link by themselves", whole, remaining, rest) is None:
            return
        healed_at = time.monotonic() - killed_at
        cross = sum(
            1
            for n in part_a
            for e in n.events[mark[n.label] :]
            if e.get("event") == "peer_up" and e.get("peer") in ids_b
        )
        sc.check(
            "the parts re-link by themselves (peer_up across, from presence addresses)",
            True,
            f"re-linked after {relinked[0]:.1f} s ({cross} links across)",
        )
        sc.check(
            "the room is whole again (every live node sees the 8 others)",
            True,
            f"after {healed_at:.1f} s",
        )

        # A few more ticks with the room whole, then wait for every line.
        pump_until = time.monotonic() + 3.0

        def more_ticks() -> bool:
            tick()
            return time.monotonic() >= pump_until

        wait_until(more_ticks, 10.0, "more ticks", rest)
        ticking[0] = False
        after = [t for _, t, at in sent if at >= healed_at]
        split = [(p, t) for p, t, at in sent if at < healed_at]
        own = {"A": part_a, "B": part_b}
        other = {"A": part_b, "B": part_a}

        def all_in() -> bool:
            return all(set(after) <= set(n.texts()) for n in rest) and all(
                t in n.texts() for p, t in split for n in own[p]
            )

        took = sc.wait("every line at its receivers", all_in, DELIVERY_DEADLINE_S, rest)
        pump_for(rest, 0.5)  # late duplicates must be seen too
        miss = dups = 0
        for p, t in split:
            m, d = count_problems(own[p], [t])
            _, d2 = count_problems(other[p], [t], at_most=True)
            miss, dups = miss + m, dups + d + d2
        sc.check(
            "lines sent during the split: own part exactly once, other part at most once",
            miss == 0 and dups == 0,
            f"{len(split)} lines; {miss} missing, {dups} duplicates",
        )
        miss, dups = count_problems(rest, after)
        sc.check(
            "lines sent after the re-link: every live node exactly once",
            miss == 0 and dups == 0 and bool(after),
            f"{len(after)} lines x {len(rest)} nodes; {miss} missing, {dups} duplicates",
        )
        st = stats(part_a[0])
        if st is not None:
            progress(
                f"crash: n0 stats: links {st.get('links')}, members {st.get('members')}, "
                f"duplicates dropped {st.get('duplicates_dropped')}"
            )


# -- linkcut: a host's link down for --cut-s, in network namespaces --------------------------


def set_link(ns: str, ifname: str, state: str) -> None:
    subprocess.run(
        ["ip", "-n", ns, "link", "set", ifname, state],
        check=True,
        capture_output=True,
        timeout=10,
    )


def scenario_linkcut(opts: argparse.Namespace, sc: Scenario) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import netns_lab

    ok, why = netns_lab.netns_available()
    if not ok:
        sc.skip(f"link down {opts.cut_s:g} s and back", why)
        return
    room = f"cut-{secrets.token_hex(4)}"
    service_type = f"_p2pt{secrets.token_hex(4)}._tcp.local."
    with netns_lab.lan(3) as net:
        nodes: list[NodeProcess] = []
        try:
            for i in range(3):
                argv = [sys.executable, "-m", "p2pchat", "--ephemeral", "--name", f"host{i}"]
                argv += ["--room", room]
                argv += ["--json", "--service-type", service_type]
                popen = functools.partial(net.popen, i)
                nodes.append(
                    NodeProcess.spawn(
                        argv, f"host{i}", cwd=str(REPO), env=env_with_path(REPO), popen=popen
                    )
                )
            _linkcut(opts, sc, net, nodes)
        finally:
            stop(nodes, STOP_TIMEOUT_S)


def _linkcut(opts: argparse.Namespace, sc: Scenario, net: Any, nodes: list[NodeProcess]) -> None:
    def meshed() -> bool:
        if None in [n.node_id for n in nodes]:
            return False
        ids = set(ids_of(nodes))
        return all(ids - {str(n.node_id)} <= n.members() & n.linked() for n in nodes)

    took = sc.wait("3 hosts linked over mDNS", meshed, MESH_DEADLINE_S, nodes)
    if took is None:
        return
    progress(f"linkcut: 3 hosts linked in {took:.1f} s; taking host2's link down")
    ids = ids_of(nodes)
    cut, others = nodes[2], nodes[:2]
    cid = ids[2]
    for n in nodes:
        n.pump()
    mark = {n.label: len(n.events) for n in nodes}
    host = net.hosts[2]
    set_link(host.ns, host.ifname, "down")
    down_at = time.monotonic()
    try:
        what = "the others time out the cut host within 12.5 s"
        took = sc.wait(what, lambda: all(n.leaves(cid) for n in others), TIMEOUT_BOUND_S + 5, nodes)
        if took is None:
            return
        reasons = [e.get("reason") for n in others for e in n.leaves(cid)]
        ok = reasons == ["timeout", "timeout"] and took <= TIMEOUT_BOUND_S
        sc.check(what, ok, f"timeout reported after {took:.1f} s (reasons {reasons})")
        pump_for(nodes, max(0.0, opts.cut_s - (time.monotonic() - down_at)))
    finally:
        set_link(host.ns, host.ifname, "up")
    up_at = time.monotonic()
    progress(f"linkcut: link up again after {up_at - down_at:.1f} s")

    def ups(n: NodeProcess) -> set[str]:
        return {
            str(e.get("peer")) for e in n.events[mark[n.label] :] if e.get("event") == "peer_up"
        }

    what = "the links come back by themselves"
    took = sc.wait(
        what,
        lambda: all(cid in ups(n) for n in others) and set(ids[:2]) <= ups(cut),
        RESUME_DEADLINE_S,
        nodes,
    )
    if took is None:
        return
    sc.check(what, True, f"relinked {took:.1f} s after link-up")
    from_cut = f"back from host2 {secrets.token_hex(3)}"
    to_cut = f"welcome back from host0 {secrets.token_hex(3)}"
    cut.send_line(from_cut)
    others[0].send_line(to_cut)
    what = "chat resumes both ways, no user action"
    remaining = RESUME_DEADLINE_S - (time.monotonic() - up_at)
    took = sc.wait(
        what, lambda: all({from_cut, to_cut} <= set(n.texts()) for n in nodes), remaining, nodes
    )
    if took is None:
        return
    resumed = time.monotonic() - up_at
    pump_for(nodes, 0.5)
    miss, dups = count_problems(nodes, [from_cut, to_cut])
    sc.check(what, miss == dups == 0, f"chat resumed {resumed:.1f} s after link-up; {dups} dups")


# -- slow reader ------------------------------------------------------------------------------


def _feed(node: NodeProcess, lines: Sequence[str], done: list[float]) -> threading.Thread:
    """Write ``lines`` to the node's stdin on a thread (p2pchat paces its own
    lines, so this can take a while); it ends early if the node goes away."""

    def run() -> None:
        start = time.monotonic()
        with contextlib.suppress(OSError, ValueError):
            for text in lines:
                node.send_line(text)
        done.append(time.monotonic() - start)

    t = threading.Thread(target=run, name=f"chaos-feed-{node.label}", daemon=True)
    t.start()
    return t


def two_nodes(room: str) -> contextlib.AbstractContextManager[list[NodeProcess]]:
    """Node A, and node B linked to it."""
    return loopback_nodes([[], [0]], ["A", "B"], room)


def _linked(a: NodeProcess, b: NodeProcess) -> Callable[[], bool]:
    return lambda: str(b.node_id) in a.members() and str(a.node_id) in b.members()


def scenario_slow_reader(opts: argparse.Namespace, sc: Scenario) -> None:
    room = f"slow-{secrets.token_hex(4)}"
    n_lines = opts.slow_lines
    rate = config_default("origin_rate_per_s", 100.0)
    burst = config_default("origin_burst", 500.0)
    budget_s = max(0.0, n_lines - burst) / rate + 30.0
    with two_nodes(room) as (a, b):
        if sc.wait("A and B linked", _linked(a, b), MESH_DEADLINE_S, [a, b]) is None:
            return
        slow = RawPeer(int(str(a.port)), room, "slow", rcvbuf=4096, mss=536)
        feeder: threading.Thread | None = None
        try:
            slow.start_keepalive(budget_s + 30.0)
            if (
                sc.wait("the raw peer is linked", lambda: slow.node_id in a.linked(), 10.0, [a])
                is None
            ):
                return
            progress(f"slow-reader: a raw peer linked to A never reads; A sends {n_lines} lines")
            filler = "x" * SLOW_TEXT_CHARS
            lines = [f"slow {k:05d} {filler}"[:SLOW_TEXT_CHARS] for k in range(n_lines)]
            fed: list[float] = []
            start = time.monotonic()
            feeder = _feed(a, lines, fed)
            dropped_at: list[float] = []
            lines_at_drop: list[int] = []

            def done() -> bool:
                if not dropped_at and any(e.get("peer") == slow.node_id for e in a.of("peer_down")):
                    dropped_at.append(time.monotonic() - start)
                    lines_at_drop.append(sum(1 for m in a.of("message") if m.get("self")))
                return bool(dropped_at) and len(b.of("message")) >= n_lines

            sc.wait(f"B gets all {n_lines} lines, slow peer dropped", done, budget_s, [a, b])
            pump_for([a, b], 0.5)
            downs = [e for e in a.of("peer_down") if e.get("peer") == slow.node_id]
            reason = str(downs[0].get("reason")) if downs else "-"
            sent_before = len([m for m in a.of("message") if m.get("self")])
            st = stats(a)
            qd = st.get("queue_drops") if st else "n/a"
            sc.check(
                "A drops the peer that never reads (send queue full)",
                bool(downs) and "queue" in reason,
                (
                    f"dropped after {dropped_at[0]:.1f} s, {lines_at_drop[0]} lines "
                    f"({reason!r}); stats queue_drops {qd}"
                    if dropped_at
                    else f"not dropped ({sent_before} lines sent)"
                ),
            )
            miss, dups = count_problems([b], lines)
            b_down = [e for e in b.of("peer_down") if e.get("peer") == a.node_id]
            sc.check(
                "honest peer B gets every line exactly once, its link kept",
                miss == dups == 0 and not b_down,
                f"{n_lines - miss}/{n_lines} lines at B, {dups} duplicates, "
                f"{len(b_down)} link drops; {n_lines / max(fed[0] if fed else 1e9, 1e-3):.0f} "
                "lines/s sent",
            )
        finally:
            slow.close()
            stop([a, b], STOP_TIMEOUT_S)  # ends the feeder's writes too
            if feeder is not None:
                feeder.join(STOP_TIMEOUT_S)


# -- flood from one origin ------------------------------------------------------------------


def scenario_flood(opts: argparse.Namespace, sc: Scenario) -> None:
    room = f"flood-{secrets.token_hex(4)}"
    n_flood = opts.flood_frames
    rate = config_default("origin_rate_per_s", 100.0)
    burst = 2 * config_default("origin_burst", 500.0)  # receivers allow twice the burst
    with two_nodes(room) as (a, b):
        if sc.wait("A and B linked", _linked(a, b), MESH_DEADLINE_S, [a, b]) is None:
            return
        peer = RawPeer(int(str(a.port)), room, "flood")
        try:
            peer.start_drain(120.0)
            peer.start_keepalive(120.0)
            if (
                sc.wait("the raw peer is linked", lambda: peer.node_id in a.linked(), 10.0, [a])
                is None
            ):
                return
            progress(f"flood: a raw peer sends {n_flood} chat frames within {FLOOD_SPREAD_S:g} s")
            honest = [f"honest {k} from {n.label}" for k in range(20) for n in (a, b)]
            for k, text in enumerate(honest[:10]):
                (a if k % 2 == 0 else b).send_line(text)
            frames = [peer.chat_frame(f"flood {k:05d}") for k in range(n_flood)]
            per = max(1, -(-n_flood // FLOOD_BATCHES))
            start = time.monotonic()
            batches = [b"".join(frames[i : i + per]) for i in range(0, n_flood, per)]
            for k, chunk in enumerate(batches):
                if not peer.send(chunk):
                    break
                if k == len(batches) // 2:
                    for j, text in enumerate(honest[10:]):
                        (a if j % 2 == 0 else b).send_line(text)
                time.sleep(
                    max(0.0, start + (k + 1) * FLOOD_SPREAD_S / len(batches) - time.monotonic())
                )
            spread = time.monotonic() - start
            sc.wait(
                "honest lines arrive during the flood",
                lambda: all(set(honest) <= set(n.texts()) for n in (a, b)),
                DELIVERY_DEADLINE_S,
                [a, b],
            )
            pump_for([a, b], 1.0)
            miss, dups = count_problems([a, b], honest)
            sc.check(
                "honest lines from A and B all arrive exactly once during the flood",
                miss == dups == 0 and a.proc.poll() is None,
                f"{len(honest)} lines x 2 nodes; {miss} missing, {dups} duplicates",
            )
            got = {
                n.label: sum(1 for m in n.of("message") if m.get("origin") == peer.node_id)
                for n in (a, b)
            }
            expected = min(n_flood, burst + rate * spread)
            st = stats(a)
            limited = st.get("rate_limited", {}).get("origin", 0) if st else "n/a"
            sc.check(
                "the flood is cut to the per-origin rate limit",
                max(got.values()) <= expected * 1.05 + 10,
                f"{got['A']}/{n_flood} got through at A, {got['B']} at B "
                f"(limit {burst:g} + {rate:g}/s x {spread:.1f} s = {expected:.0f}); "
                f"stats rate_limited.origin {limited}",
            )
        finally:
            peer.close()


# -- garbage connections --------------------------------------------------------------------


def _garbage_payload(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:  # random bytes
        return rng.randbytes(rng.randint(1, 600))
    if kind == 1:  # a plausible length prefix, a random body of that length
        n = rng.randint(1, 600)
        return FRAME_HEADER.pack(n) + rng.randbytes(n)
    if kind == 2:  # an oversized length prefix
        return FRAME_HEADER.pack(rng.randint(MAX_FRAME + 1, 2**32 - 1)) + rng.randbytes(16)
    # a valid JSON object or MessagePack array, but not a hello, before the handshake
    kind_name = rng.choice(["keepalive", "chat", "presence", "nonsense"])
    if rng.random() < 0.5:
        return frame({"type": kind_name})
    body = msgspec.msgpack.encode([kind_name])
    return FRAME_HEADER.pack(len(body)) + body


def _garbage_conn(port: int, rng: random.Random) -> str:
    """One connection: send garbage, wait for the node to close it."""
    try:
        s = socket.create_connection((HOST, port), timeout=3.0)
    except OSError:
        return "connect failed"
    with s:
        try:
            s.sendall(_garbage_payload(rng))
            s.settimeout(GARBAGE_CONN_TIMEOUT_S)
            end = time.monotonic() + GARBAGE_CONN_TIMEOUT_S
            for _ in range(10_000):
                if not s.recv(65536):
                    return "closed"
                if time.monotonic() > end:
                    return "left open"
        except TimeoutError:
            return "left open"
        except OSError:
            return "closed"  # reset by the node
    return "left open"


def scenario_garbage(opts: argparse.Namespace, sc: Scenario) -> None:
    room = f"junk-{secrets.token_hex(4)}"
    total = opts.garbage_conns
    with two_nodes(room) as (a, b):
        if sc.wait("A and B linked", _linked(a, b), MESH_DEADLINE_S, [a, b]) is None:
            return
        port = int(str(a.port))
        results: Counter[str] = Counter()
        prompt: list[tuple[float, float]] = []  # (closed at, took) of those closed within 1 s
        lock = threading.Lock()
        next_index = [0]

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(total):
                with lock:
                    if next_index[0] >= total:
                        return
                    next_index[0] += 1
                t = time.monotonic()
                r = _garbage_conn(port, rng)
                now = time.monotonic()
                with lock:
                    results[r] += 1
                    if r == "closed" and now - t < 1.0:
                        prompt.append((now, now - t))

        progress(f"garbage: {total} connections of random bytes to A, {GARBAGE_WORKERS} at a time")
        workers = [
            threading.Thread(
                target=worker, args=(opts.seed + k,), name=f"chaos-junk-{k}", daemon=True
            )
            for k in range(GARBAGE_WORKERS)
        ]
        start = time.monotonic()
        for w in workers:
            w.start()
        honest: list[str] = []
        limit = time.monotonic() + total * GARBAGE_CONN_TIMEOUT_S / GARBAGE_WORKERS + 10.0
        for k in range(1000):  # honest chat while the junk flows
            if not any(w.is_alive() for w in workers) or time.monotonic() > limit:
                break
            sender = a if k % 2 == 0 else b
            honest.append(f"honest {k} from {sender.label} during garbage")
            sender.send_line(honest[-1])
            pump_for([a, b], 0.2)
        for w in workers:
            w.join(max(0.1, limit - time.monotonic()))
        elapsed = time.monotonic() - start
        handled = sum(results.values())
        # A payload shorter than a length prefix is held to the 5 s handshake
        # deadline; the rate is that of the connections closed at once.
        quick = len(prompt)
        quick_s = max((at for at, _ in prompt), default=start) - start
        rate = quick / quick_s if quick_s > 0 else 0.0
        median_ms = 1000 * sorted(took for _, took in prompt)[quick // 2] if prompt else 0.0
        sc.check(
            "A closes every garbage connection",
            results["closed"] == total,
            f"{handled} connections in {elapsed:.1f} s; {quick} closed at once: {rate:.0f}/s, "
            f"median {median_ms:.1f} ms; "
            + ", ".join(f"{k} {v}" for k, v in sorted(results.items())),
        )
        sc.wait(
            "honest lines arrive during the garbage",
            lambda: all(set(honest) <= set(n.texts()) for n in (a, b)),
            DELIVERY_DEADLINE_S,
            [a, b],
        )
        pump_for([a, b], 0.5)
        miss, dups = count_problems([a, b], honest)
        downs = [e for e in a.of("peer_down") if e.get("peer") == b.node_id]
        st = stats(a)
        refused = (
            f"frames_refused {st.get('frames_refused')}, links_refused {st.get('links_refused')}"
            if st
            else "stats n/a"
        )
        sc.check(
            "A stays up, keeps its link to B; honest chat goes on exactly once",
            a.proc.poll() is None and not downs and miss == dups == 0 and bool(honest),
            f"{len(honest)} lines; {miss} missing, {dups} duplicates, {len(downs)} link drops; "
            f"{refused}",
        )


# -- main -----------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[argparse.Namespace, Scenario], None]] = {
    "crash": scenario_crash,
    "linkcut": scenario_linkcut,
    "slow-reader": scenario_slow_reader,
    "flood": scenario_flood,
    "garbage": scenario_garbage,
}


def run_scenario(name: str, opts: argparse.Namespace) -> Scenario:
    sc = Scenario(name, verbose=opts.verbose)
    progress(f"== {name}")
    start = time.monotonic()
    try:
        RUNNERS[name](opts, sc)
    except (WaitFailed, OSError, subprocess.SubprocessError, ValueError) as exc:
        text = str(exc)
        sc.details.append(text)
        if opts.verbose:
            progress(text)
        sc.check("scenario ran to the end", False, f"{type(exc).__name__}: {text.splitlines()[0]}")
    if not sc.rows:
        sc.check("scenario ran to the end", False, "no check was made")
    sc.runtime_s = time.monotonic() - start
    progress(f"   {name}: {sc.runtime_s:.1f} s")
    return sc


def _bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be {lo}..{hi}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run p2pchat under crashes, cut links, slow readers, floods and garbage.",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--strict", action="store_true", help="a skipped scenario fails the run")
    p.add_argument("--verbose", "-v", action="store_true", help="show the output of failed waits")
    p.add_argument("--seed", type=int, default=20261203, help="seed of the crash mesh and junk")
    p.add_argument("--cut-s", type=_bounded_int(15, 300), default=30, help="link-down time (30)")
    p.add_argument(
        "--slow-lines",
        type=_bounded_int(1500, 20000),
        default=3000,
        help="lines sent past the slow reader (3000)",
    )
    p.add_argument(
        "--flood-frames",
        type=_bounded_int(1, 20000),
        default=2000,
        help="chat frames in the flood (2000)",
    )
    p.add_argument(
        "--garbage-conns",
        type=_bounded_int(1, 100000),
        default=1000,
        help="garbage connections (1000)",
    )
    return p.parse_args(argv)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so every finally: stops its nodes
    names = [s for s in SCENARIOS if not opts.only or s in opts.only]
    start = time.monotonic()
    done: list[Scenario] = []
    try:
        for name in names:
            done.append(run_scenario(name, opts))
    except KeyboardInterrupt:  # the scenario's finally: blocks have stopped its nodes
        progress("interrupted")
        return 130
    total_s = time.monotonic() - start
    rows = [r for sc in done for r in sc.rows]
    failed = any(r.result == "FAIL" for r in rows) or (
        opts.strict and any(r.result == "SKIP" for r in rows)
    )
    if opts.json:
        out = {
            "passed": not failed,
            "rows": [dataclasses.asdict(r) for r in rows],
            "runtime_s": {sc.name: round(sc.runtime_s, 1) for sc in done},
            "total_s": round(total_s, 1),
        }
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(format_table(rows))
        print()
        print(
            "runtime: "
            + ", ".join(f"{sc.name} {sc.runtime_s:.1f} s" for sc in done)
            + f"; total {total_s:.1f} s"
        )
        skipped = sum(r.result == "SKIP" for r in rows)
        print(("FAIL" if failed else "PASS") + (f" ({skipped} skipped)" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
