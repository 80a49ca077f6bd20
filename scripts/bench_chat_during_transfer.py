#!/usr/bin/env python3
"""Does chat stay live during a file transfer?  Chat latency between p2pchat nodes
idle and while a file flows, over rate-limited links in network namespaces.

The lab is ``scripts/bench_files.py``'s (imported, not copied: ``tests/netns_lab.py``
underneath), with namespaces of its own (``bc-<pid>-<hex>-sw`` and ``...-h<i>``) on
``10.79.0.0/24``: host 0 is the sender (10.79.0.1), hosts 1..R the receivers
(10.79.0.2 ...), all on one bridge.  Every bottleneck gets a token bucket as
bench_files.py puts there, with one of three queues behind it (``--qdisc``, each
in turn, the same nodes throughout)::

    fifo:      tc qdisc add dev eth0 root handle 1: tbf rate 100mbit burst 64kb latency 50ms
    fq_codel:  the same, then
               tc qdisc add dev eth0 parent 1:1 handle 10: fq_codel
    fq_htb:    the same bucket, then an HTB with 64 leaf classes and a classic-BPF
               classifier picking a flow's class by its hash (:func:`qdisc_commands`)
    dscp:      the same bucket, then an HTB with two FIFO classes: DSCP CS1 (the
               file data's mark, ``transport.mark_bulk``) served after the rest
    pfifo_fast: the same bucket, then Linux's default three-band queue, a band by
               the socket's priority (``SO_PRIORITY``: meaningful at ``--bottleneck
               host`` only, where the packets are the host's own)

``fifo`` is the token bucket's own byte FIFO (up to ``latency`` worth of bytes
queue in it): a plain switch port or router.  ``fq_codel`` is what most Linux
machines run (systemd sets ``net.core.default_qdisc=fq_codel``) and close to what
Linux Wi-Fi does (mac80211 has FQ-CoDel per station built in); a kernel without
it (``CONFIG_NET_SCH_FQ_CODEL`` unset) makes the report say so, and ``fq_htb``
stands in: per-flow round robin, no CoDel.  ``dscp`` is a bottleneck that honours
DSCP (Wi-Fi's WMM access categories, RFC 8325; a DiffServ router) and is
otherwise a FIFO.  Sources in docs/performance.md.

Where the bottlenecks are (``--bottleneck``): ``host`` (as bench_files.py) is
every host's uplink, ``eth0``'s egress inside the host, so the queue is in the
sending kernel, where TCP Small Queues keep each socket's share short; ``switch``
is every switch port's egress towards its host (``v<i>`` in the switch
namespace), a queue the sender's kernel does not see, as in a switch, a router
or an access point.  TCP hands ``eth0`` one MSS per packet (``gso_max_segs 1``;
``--gso`` keeps the 64 KB bursts a veth passes whole), as a router's queue sees
them.  ``--cc`` sets the nodes' TCP congestion control per socket (this
kernel's default may be BBR; most machines run CUBIC), ``--window-clamp`` clamps
their TCP windows (an experiment), both through a ``sitecustomize`` shim.

p2pchat runs on every host (``--json``, mDNS inside the namespaces only, a
service type and room of the run's own, ``--interface`` its address).  For each
qdisc, two phases of ``--seconds`` each:

1. ``idle``: the sender says a line every ``--interval-ms`` (50 ms), and
   receiver 1 does too, half an interval later (both directions at once: each
   uplink carries its own host's lines only).
2. ``transfer``: the sender ``/send``s a file of random bytes big enough to
   outlast the phase, every receiver ``/get``s it at its ``file_offer``; once
   every receiver has reported progress, the same lines as in phase 1 for
   ``--seconds``; then the receivers ``/cancel`` (the figures count only lines
   said while no receiver had finished).  With one receiver, receiver 1's
   uplink carries only its requests and acks; with two they also serve each
   other.

A line's one-way latency is the receiving node's arrival minus the line's
``ts``: ``ts`` is the sender node's wall clock when it made the line; the
arrival is this driver's wall clock when it reads the receiver's ``message``
event off the receiver's stdout (a reader thread per node stamps it).  Every
host is a namespace of one machine: one clock, no sync error.  The arrival
includes the receiver's JSON output and the pipe, the same in both phases.  A
line not heard within 3 s of the phase's end counts as lost.

Output: a table on stdout (progress on stderr): per qdisc and direction, p50,
p95 and max in ms idle and during the transfer, the ratio of the p50s against
the issue's goal (<= 2), and the data rate the transfer reached; ``--json``:
then one JSON line with every figure.  ``--cleanup`` deletes the ``bc-*``
namespaces of runs that died and exits.  Needs root, iproute2 (``ip``, ``tc``).
Examples::

    sudo python3 scripts/bench_chat_during_transfer.py              # every qdisc, 10 s phases
    sudo python3 scripts/bench_chat_during_transfer.py --bottleneck switch --cc cubic --json
    sudo python3 scripts/bench_chat_during_transfer.py --qdisc fifo --receivers 2 --rate 20mbit
    sudo python3 scripts/bench_chat_during_transfer.py --cleanup
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
import bench_files as bf  # noqa: E402  (the lab, the shaping, the node's argv)

from p2pchat.harness import NodeProcess, WaitFailed  # noqa: E402

NS_PREFIX = "bc-"
"""Every namespace this bench makes starts with this."""
NET24 = (79, 0)
"""The lab's subnet: 10.79.0.0/24; host i is 10.79.0.{i+1} (the sender is host 0)."""
QDISCS = ("fifo", "fq_codel", "fq_htb", "dscp", "pfifo_fast")
BOTTLENECKS = ("host", "switch")
PHASES = ("idle", "transfer")
DIRECTIONS = ("from_sender", "from_receiver")
DIRECTION_TITLES = {
    "from_sender": "sender -> receivers (behind the file data)",
    "from_receiver": "receiver 1 -> others (its uplink: requests and acks)",
}
GOAL_RATIO = 2.0
"""The issue's goal: chat p50 during a transfer within 2x idle."""
DEFAULT_SECONDS = 10.0
DEFAULT_INTERVAL_MS = 50.0
MAX_RECEIVERS = 2
GRACE_S = 3.0
"""How long after a phase a line may still arrive before it counts as lost."""
SIZE_MARGIN = 2.0
"""The default file lasts this many phases at the rate (p2pchat may be faster or slower)."""
START_DEADLINE_S = 60.0
SETTLE_S = 2.0
"""Quiet after a transfer is cancelled (what is in flight drains) before the next phase."""
LINE_PREFIX = "lat"
DEFAULT_CC = ""
"""TCP congestion control on every host: "" keeps the kernel's (``--cc``)."""


CC_SHIM = """\
# Written by scripts/bench_chat_during_transfer.py for its p2pchat nodes only: every TCP
# socket they listen or connect on uses the congestion control named in CC_ENV and the
# window clamp in CLAMP_ENV (accepted sockets inherit both from their listener).
import os
import socket

_cc = os.environ.get("BENCH_CHATLIVE_CC", "").encode()
_clamp = int(os.environ.get("BENCH_CHATLIVE_CLAMP", "0") or 0)
if _cc or _clamp:
    _listen, _connect = socket.socket.listen, socket.socket.connect

    def _set(sock):
        if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6):
            if _cc:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, _cc)
            if _clamp:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, _clamp)

    def listen(self, *args):
        _set(self)
        return _listen(self, *args)

    def connect(self, address):
        _set(self)
        return _connect(self, address)

    socket.socket.listen, socket.socket.connect = listen, connect
"""
"""``--cc``: a ``sitecustomize`` put first on the nodes' ``PYTHONPATH``.  A namespace
may only pick an algorithm the main namespace allows
(``net.ipv4.tcp_allowed_congestion_control``), but a socket of a root process may
pick any the kernel has (``TCP_CONGESTION``); an accepted socket inherits its
listener's."""
CC_ENV = "BENCH_CHATLIVE_CC"
CLAMP_ENV = "BENCH_CHATLIVE_CLAMP"


class Unavailable(Exception):
    """A qdisc this kernel does not have; the message says which."""


# -- the pure parts: options, figures, the table ----------------------------------------


def parse_qdiscs(text: str) -> list[str]:
    """``--qdisc``: one or more of :data:`QDISCS` separated by commas, each once;
    returned in :data:`QDISCS` order.

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    names = [part.strip() for part in text.split(",")]
    if not names or any(n not in QDISCS for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give one or more of {', '.join(QDISCS)}, separated by commas (each once)"
        )
    return [q for q in QDISCS if q in names]


CS1_TOS = 0x20
"""``dscp``: the TOS byte of DSCP CS1, as p2pchat marks its data links
(``p2pchat.transport.BULK_TOS``)."""

FQ_HTB_CLASSES = 64
"""``fq_htb``: how many per-flow classes (a power of two; a flow's class: its hash
modulo this).  Two given flows share one 1 time in 64."""
FQ_HTB_FILTER = f"4,32 0 0 4294963232,84 0 0 {FQ_HTB_CLASSES - 1},68 0 0 1048592,22 0 0 0"
"""``fq_htb``'s classifier, classic BPF as ``tc ... bpf bytecode`` takes it: ``ld
#rxhash`` (the packet's flow hash: for TCP the socket's ``sk_txhash``), ``and #63``,
``or #0x100010``, ``ret a``: class ``10:10`` .. ``10:4f``."""


def qdisc_commands(qdisc: str, rate_bps: int, dev_name: str = "eth0") -> list[list[str]]:
    """The ``tc`` argument lists (without ``tc``) that shape ``dev_name``'s egress to
    ``rate_bps`` with ``qdisc`` (one of :data:`QDISCS`) as the bucket's queue.

    ``fq_htb`` stands in for fq_codel on a kernel without it: an HTB under the
    bucket with :data:`FQ_HTB_CLASSES` leaf classes, each with a packet FIFO, a
    flow's packets going to the class its hash picks; HTB serves the backlogged
    classes in turn, one MTU-sized quantum each, so a sparse flow (chat) waits for
    at most one packet of each bulk flow.  No CoDel (a bulk flow's own queue may
    grow) and no hash perturbation (two flows may share a class: 1 in 64).

    Raises:
        ValueError: an unknown qdisc."""
    tbf = ["qdisc", "add", "dev", dev_name, "root", "handle", "1:", "tbf"]
    tbf += ["rate", bf.tc_rate(rate_bps), "burst", bf.TBF_BURST, "latency", bf.TBF_LATENCY]
    dev = ["dev", dev_name]
    if qdisc == "fifo":
        return [tbf]
    if qdisc == "fq_codel":
        return [tbf, ["qdisc", "add", *dev, "parent", "1:1", "handle", "10:", "fq_codel"]]
    if qdisc == "fq_htb":
        cmds = [tbf, ["qdisc", "add", *dev, "parent", "1:1", "handle", "10:", "htb"]]
        cmds.append(
            [
                *["class", "add", *dev, "parent", "10:", "classid", "10:1", "htb"],
                *["rate", "10gbit", "quantum", "1514"],
            ]
        )
        for minor in range(0x10, 0x10 + FQ_HTB_CLASSES):
            cmds.append(
                [
                    *["class", "add", *dev, "parent", "10:1", "classid", f"10:{minor:x}"],
                    *["htb", "rate", bf.tc_rate(rate_bps), "ceil", "10gbit", "quantum", "1514"],
                ]
            )
        cmds.append(
            [
                *["filter", "add", *dev, "parent", "10:", "protocol", "all", "prio", "1"],
                *["bpf", "bytecode", FQ_HTB_FILTER, "classid", "10:10"],
            ]
        )
        return cmds
    if qdisc == "pfifo_fast":
        return [tbf, ["qdisc", "add", *dev, "parent", "1:1", "handle", "10:", "pfifo_fast"]]
    if qdisc == "dscp":
        cls = ["class", "add", *dev, "parent"]
        best_effort = ["prio", "0", "rate", bf.tc_rate(rate_bps), "ceil", "10gbit"]
        bulk = ["prio", "7", "rate", "1mbit", "ceil", "10gbit"]
        match = ["u32", "match", "ip", "dsfield", f"{CS1_TOS:#x}", "0xfc", "flowid", "10:20"]
        return [
            tbf,
            ["qdisc", "add", *dev, "parent", "1:1", "handle", "10:", "htb", "default", "10"],
            [*cls, "10:", "classid", "10:1", "htb", "rate", "10gbit"],
            [*cls, "10:1", "classid", "10:10", "htb", *best_effort],
            [*cls, "10:1", "classid", "10:20", "htb", *bulk],
            ["filter", "add", *dev, "parent", "10:", "protocol", "ip", "prio", "1", *match],
        ]
    raise ValueError(f"unknown qdisc {qdisc!r}")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by nearest rank (an observed
    value: p50 of 1..4 is 2, p95 of 20 values the 19th); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Stats:
    """The latencies of one (qdisc, direction, phase).

    Attributes:
        sent: lines said (times their receivers: one line to two receivers is 2).
        latencies_ms: one per line heard, in milliseconds.
    """

    sent: int
    latencies_ms: list[float]

    @property
    def received(self) -> int:
        """How many of :attr:`sent` were heard in time."""
        return len(self.latencies_ms)

    @property
    def lost(self) -> int:
        """How many were not heard within the grace time."""
        return max(0, self.sent - self.received)

    def p(self, q: float) -> float:
        """The ``q``-th percentile in ms (NaN: none heard)."""
        return percentile(self.latencies_ms, q)

    @property
    def max_ms(self) -> float:
        """The worst latency in ms (NaN: none heard)."""
        return max(self.latencies_ms) if self.latencies_ms else math.nan


def latency_ratio(during: Stats, idle: Stats) -> float:
    """p50 during the transfer over p50 idle; NaN when either is missing or idle is 0."""
    a, b = during.p(50), idle.p(50)
    if not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return math.nan
    return a / b


def goal_met(ratio: float) -> bool | None:
    """Whether ``ratio`` meets the issue's goal (<= :data:`GOAL_RATIO`); None: unknown."""
    return None if not math.isfinite(ratio) else ratio <= GOAL_RATIO


@dataclass
class Transfer:
    """What the file did during one transfer phase.

    Attributes:
        bytes_during: bytes the receivers reported between the phase's start and end
            (summed over receivers).
        seconds: the phase's length as measured.
        finished_early: a receiver finished before the phase's end (the figures
            then cover only the lines said before).
        failures: why the transfer did not run (empty when it did).
    """

    bytes_during: int = 0
    seconds: float = 0.0
    finished_early: bool = False
    failures: list[str] = field(default_factory=list)

    @property
    def mbit_s(self) -> float:
        """The data rate the receivers reached in the phase (Mbit/s; NaN: unknown)."""
        return self.bytes_during * 8 / self.seconds / 1e6 if self.seconds > 0 else math.nan


@dataclass
class QdiscResult:
    """Every figure of one qdisc: ``stats[direction][phase]`` and the transfer."""

    qdisc: str
    stats: dict[str, dict[str, Stats]]
    transfer: Transfer


@dataclass
class Setup:
    """What a run was, for the table's head and the JSON.

    Attributes:
        rate_bps: the uplinks' token-bucket rate; ``seconds``: each phase;
        interval_ms: between two lines of one node; ``receivers``: how many;
        size_bytes: the file; ``qdiscs``: those asked for; ``cc``: the hosts'
        TCP congestion control; ``load``: :func:`machine_load` at the start, at
        every phase's start and at the end; ``unavailable``: qdisc -> why it was
        not measured.
    """

    rate_bps: int
    seconds: float
    interval_ms: float
    receivers: int
    size_bytes: int
    qdiscs: list[str]
    cc: str = DEFAULT_CC
    gso: bool = False
    window_clamp: int = 0
    bottleneck: str = "host"
    load: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)


def _fmt(v: float, spec: str = "{:.1f}") -> str:
    return spec.format(v) if math.isfinite(v) else "n/a"


def _verdict(ratio: float) -> str:
    met = goal_met(ratio)
    if met is None:
        return "unknown"
    return "goal met" if met else "goal MISSED"


def load_line(samples: Sequence[dict[str, Any]]) -> str:
    """How loaded the machine was, in one line, from :func:`machine_load` samples."""
    if not samples:
        return "machine: load not sampled"
    loads = [float(x["loadavg_1m"]) for x in samples]
    busy = sum(bool(x["bench_files_running"]) for x in samples)
    return (
        f"machine: {samples[0]['cpus']} CPU(s), load average (1 min) {min(loads):.2f} .. "
        f"{max(loads):.2f} over {len(samples)} samples; bench_files.py running in "
        f"{busy} of them"
    )


def format_table(setup: Setup, results: Sequence[QdiscResult]) -> str:
    """The human-readable result: per qdisc and direction, the idle and during
    figures, the p50 ratio against the goal, and the transfer's rate."""
    lines = [
        f"chat during a file transfer: "
        f"{'every uplink' if setup.bottleneck == 'host' else 'every switch port'} "
        f"tbf {bf.tc_rate(setup.rate_bps)} "
        f"(burst {bf.TBF_BURST}, latency {bf.TBF_LATENCY}); {setup.receivers} receiver(s); "
        f"a line every {setup.interval_ms:g} ms per direction for {setup.seconds:g} s per phase; "
        f"file {setup.size_bytes / bf.MB:g} MB; TCP congestion control {setup.cc}; "
        f"{'64 KB GSO bursts' if setup.gso else 'one MSS per packet (gso_max_segs 1)'}"
        + (f"; TCP windows clamped to {setup.window_clamp} bytes" if setup.window_clamp else ""),
        load_line(setup.load),
        "",
        f"{'qdisc':<9} {'direction':<14} {'phase':<9} {'lines':>9} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'max ms':>8}",
        "-" * 71,
    ]
    short = {"from_sender": "sender->", "from_receiver": "receiver->"}
    notes: list[str] = []
    for res in results:
        for direction in DIRECTIONS:
            for phase in PHASES:
                s = res.stats[direction][phase]
                lines.append(
                    f"{res.qdisc:<9} {short[direction]:<14} {phase:<9} "
                    f"{f'{s.received}/{s.sent}':>9} {_fmt(s.p(50)):>8} {_fmt(s.p(95)):>8} "
                    f"{_fmt(s.max_ms):>8}"
                )
        t = res.transfer
        lines.append(
            f"{res.qdisc:<9} transfer: {_fmt(t.mbit_s)} Mbit/s to the receivers during the phase"
            + (" (a receiver finished early)" if t.finished_early else "")
        )
        notes += [f"{res.qdisc}: {why}" for why in t.failures]
    lines += ["", f"chat p50 during the transfer / idle (goal <= {GOAL_RATIO:g})"]
    for res in results:
        for direction in DIRECTIONS:
            r = latency_ratio(res.stats[direction]["transfer"], res.stats[direction]["idle"])
            lines.append(
                f"  {res.qdisc:<9} {DIRECTION_TITLES[direction]:<54}{_fmt(r, '{:.2f}'):>7}"
                f"   {_verdict(r)}"
            )
    notes += [f"{q}: {why}" for q, why in setup.unavailable.items()]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def json_result(setup: Setup, results: Sequence[QdiscResult]) -> dict[str, Any]:
    """The ``--json`` line: the setup and, per qdisc and direction, every figure
    (NaN as null: plain JSON)."""

    def num(v: float) -> float | None:
        return round(v, 3) if math.isfinite(v) else None

    out: dict[str, Any] = {
        "rate_bit_s": setup.rate_bps,
        "seconds": setup.seconds,
        "interval_ms": setup.interval_ms,
        "receivers": setup.receivers,
        "size_bytes": setup.size_bytes,
        "cc": setup.cc,
        "gso": setup.gso,
        "window_clamp": setup.window_clamp,
        "bottleneck": setup.bottleneck,
        "goal_ratio": GOAL_RATIO,
        "unavailable": setup.unavailable,
        "load": setup.load,
        "qdiscs": {},
    }
    for res in results:
        entry: dict[str, Any] = {}
        for direction in DIRECTIONS:
            phases = res.stats[direction]
            r = latency_ratio(phases["transfer"], phases["idle"])
            entry[direction] = {
                phase: {
                    "sent": s.sent,
                    "received": s.received,
                    "lost": s.lost,
                    "p50_ms": num(s.p(50)),
                    "p95_ms": num(s.p(95)),
                    "max_ms": num(s.max_ms),
                }
                for phase, s in phases.items()
            } | {"ratio_p50": num(r), "goal_met": goal_met(r)}
        t = res.transfer
        entry["transfer"] = {
            "bytes": t.bytes_during,
            "seconds": num(t.seconds),
            "mbit_s": num(t.mbit_s),
            "finished_early": t.finished_early,
            "failures": t.failures,
        }
        out["qdiscs"][res.qdisc] = entry
    return out


def default_size(rate_bps: int, seconds: float) -> int:
    """A file that lasts :data:`SIZE_MARGIN` phases of ``seconds`` at ``rate_bps``
    (bytes; at least 1 MB)."""
    return max(bf.MB, int(rate_bps / 8 * seconds * SIZE_MARGIN))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; a bad option exits with status 2 and the reason."""
    p = argparse.ArgumentParser(
        description="Chat latency between p2pchat nodes, idle and during a file transfer, "
        "over rate-limited links (a FIFO, fair queueing or priority queues) in network "
        "namespaces.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--qdisc",
        type=parse_qdiscs,
        default=list(QDISCS),
        metavar="Q[,Q...]",
        help="the queues behind each bottleneck's token bucket, each in turn: "
        f"{', '.join(QDISCS)} (fq_htb: per-flow round robin, for kernels without fq_codel; "
        "dscp: CS1 served last; pfifo_fast: bands by socket priority)",
    )
    p.add_argument(
        "--seconds", type=float, default=DEFAULT_SECONDS, help="the length of each phase"
    )
    p.add_argument(
        "--interval-ms",
        type=float,
        default=DEFAULT_INTERVAL_MS,
        help="between two chat lines of one node",
    )
    p.add_argument(
        "--rate",
        type=bf.parse_rate,
        default=bf.parse_rate(bf.DEFAULT_RATE),
        metavar="RATE",
        help=f"every bottleneck's token-bucket rate in tc's units, e.g. {bf.DEFAULT_RATE}",
    )
    p.add_argument(
        "--receivers",
        type=int,
        default=1,
        help=f"receivers of the file, 1..{MAX_RECEIVERS} (with 2 they also serve each other)",
    )
    p.add_argument(
        "--size",
        type=float,
        default=0.0,
        help=f"the file's size in MB (0: enough for {SIZE_MARGIN:g} phases at --rate)",
    )
    p.add_argument(
        "--p2pchat-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for every p2pchat node (repeatable)",
    )
    p.add_argument(
        "--cc",
        default=DEFAULT_CC,
        help="the nodes' TCP congestion control, set on each socket (TCP_CONGESTION), e.g. "
        "cubic or bbr ("
        ": the kernel's)",
    )
    p.add_argument(
        "--window-clamp",
        type=int,
        default=0,
        metavar="BYTES",
        help="an experiment: clamp every node's TCP window (TCP_WINDOW_CLAMP) to BYTES, "
        "which bounds what a connection keeps queued in the network (0: no clamp)",
    )
    p.add_argument(
        "--bottleneck",
        choices=BOTTLENECKS,
        default="host",
        help="where the queues are: each host's uplink (as bench_files.py; the sender's "
        "own kernel holds the queue, and TCP Small Queues keep it short) or each switch "
        "port towards a host (a remote queue, as in a switch or an access point)",
    )
    p.add_argument(
        "--gso",
        action="store_true",
        help="leave TCP's 64 KB segmentation offload bursts on the uplinks (default: one "
        "MSS per packet, as a router's queue sees them)",
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line of figures")
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="delete the bc-* namespaces of dead runs (and end what still runs in them); exit",
    )
    args = p.parse_args(argv)
    problems = []
    if not (math.isfinite(args.seconds) and 0.5 <= args.seconds <= 600):
        problems.append("--seconds must be 0.5..600")
    if not (math.isfinite(args.interval_ms) and 5 <= args.interval_ms <= 5000):
        problems.append("--interval-ms must be 5..5000")
    if not 0 <= args.window_clamp <= 1 << 30:
        problems.append("--window-clamp must be 0..2^30 bytes")
    if not 1 <= args.receivers <= MAX_RECEIVERS:
        problems.append(f"--receivers must be 1..{MAX_RECEIVERS}")
    if not (math.isfinite(args.size) and 0 <= args.size <= bf.MAX_SIZE_MB):
        problems.append(f"--size must be 0..{bf.MAX_SIZE_MB:g} MB")
    if problems:
        p.error("; ".join(problems))
    return args


def machine_load() -> dict[str, Any]:
    """The load average (1 min), the CPU count and whether ``bench_files.py`` runs now."""
    running = subprocess.run(
        ["pgrep", "-f", "bench_files.py"], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "bench_files_running": bool(running),
    }


# -- the nodes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Heard:
    """A chat line a node heard: its text, its ``ts`` (the sender's wall clock) and
    when the driver read it (its own wall clock), both in Unix seconds."""

    text: str
    ts: float
    arrival: float


class StampedNode(NodeProcess):
    """A :class:`NodeProcess` whose stdout reader stamps each ``message`` event with
    the wall clock when it is read (before the driver's loop gets to it):
    :attr:`heard`, appended to by the reader thread, read by the driver."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        """As :class:`NodeProcess`."""
        self.heard: list[Heard] = []
        super().__init__(*args, **kw)

    def _start_reader(
        self,
        name: str,
        stream: IO[str],
        put: Callable[[str], None],
        end: Callable[[], None],
    ) -> None:
        if name != "stdout":
            super()._start_reader(name, stream, put, end)
            return

        def stamped(line: str) -> None:
            now = time.time()
            if '"message"' in line:
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    if isinstance(ev, dict) and ev.get("event") == "message":
                        text = str(ev.get("text", ""))
                        if text.startswith(LINE_PREFIX) and not ev.get("self"):
                            self.heard.append(Heard(text, float(ev.get("ts", 0.0)), now))
            put(line)

        super()._start_reader(name, stream, stamped, end)


def line_text(qdisc: str, phase: str, who: str, k: int) -> str:
    """The chat line number ``k`` of node ``who`` (``s`` or ``r1``) in a phase."""
    return f"{LINE_PREFIX} {qdisc} {phase} {who} {k}"


def collect(
    texts: Sequence[str], heard_by: Sequence[Sequence[Heard]], ts_max: float = math.inf
) -> Stats:
    """The :class:`Stats` of the lines ``texts`` as heard by each listener
    (``heard_by``: one list of :class:`Heard` per listener), each line once per
    listener; a line made (``ts``) after ``ts_max`` is left out altogether."""
    wanted = set(texts)
    sent = 0
    latencies: list[float] = []
    for heard in heard_by:
        seen = {h.text: h for h in heard if h.text in wanted}
        for text in texts:
            h = seen.get(text)
            if h is not None and h.ts > ts_max:
                continue
            sent += 1
            if h is not None:
                latencies.append((h.arrival - h.ts) * 1000)
    return Stats(sent, latencies)


class Lab:
    """The running lab and its nodes: set the qdisc, run the phases."""

    def __init__(self, net: Any, tmp: Path, args: argparse.Namespace) -> None:
        """Remember the lab; the nodes start in :meth:`start`."""
        self.net = net
        self.tmp = tmp
        self.args = args
        self.nodes: list[StampedNode] = []
        self.room = f"chatlive-{secrets.token_hex(3)}"
        self.service = f"_p2pc{secrets.token_hex(4)}._tcp.local."

    def set_qdisc(self, qdisc: str) -> None:
        """Replace every bottleneck queue with the token bucket and ``qdisc``: each
        host's uplink (``--bottleneck host``: ``eth0``'s egress in the host) or each
        switch port towards a host (``switch``: ``v<i>``'s egress in the switch).

        Raises:
            Unavailable: this kernel lacks ``qdisc`` (the root is left a plain bucket).
            bf.BenchError: ``tc`` refused otherwise (its message)."""
        for host in self.net.hosts:
            if self.args.bottleneck == "switch":
                ns, dev_name = self.net.switch_ns, f"v{host.index}"
            else:
                ns, dev_name = host.ns, "eth0"
            base = ["ip", "netns", "exec", ns, "tc"]
            subprocess.run(
                [*base, "qdisc", "del", "dev", dev_name, "root"],
                capture_output=True,
                timeout=10,
                check=False,
            )
            for cmd in qdisc_commands(qdisc, self.args.rate, dev_name):
                done = subprocess.run(
                    [*base, *cmd], capture_output=True, text=True, timeout=10, check=False
                )
                if done.returncode != 0 and "kind is unknown" in done.stderr:
                    self.set_qdisc("fifo")
                    raise Unavailable(
                        f"not available on this kernel (tc {' '.join(cmd)}: {done.stderr.strip()})"
                    )
                if done.returncode != 0:
                    raise bf.BenchError(
                        f"tc {' '.join(cmd)} in {ns}: {done.stderr.strip() or done.returncode}"
                    )

    def node_env(self, home: Path) -> dict[str, str]:
        """A node's environment: bench_files.py's (this checkout, ``HOME`` and the XDG
        folders in ``home``) and, with ``--cc`` or ``--window-clamp``, :data:`CC_SHIM`
        first on the path."""
        env = bf._p2pchat_env(home)
        if self.args.cc or self.args.window_clamp:
            shim = self.tmp / "cc-shim"
            shim.mkdir(exist_ok=True)
            (shim / "sitecustomize.py").write_text(CC_SHIM)
            env["PYTHONPATH"] = os.pathsep.join([str(shim), env.get("PYTHONPATH", "")])
            env[CC_ENV] = self.args.cc
            env[CLAMP_ENV] = str(self.args.window_clamp)
        return env

    def one_packet_per_skb(self) -> None:
        """Make TCP hand every host's ``eth0`` one MSS per packet (``gso_max_segs 1``):
        as a router's or an access point's queue sees them (segmented on the wire),
        not as 64 KB GSO bursts that a veth would pass whole (one takes 5 ms at
        100 Mbit/s, and a queue can only take turns between whole packets).

        Raises:
            bf.BenchError: ``ip`` refused it."""
        for host in self.net.hosts:
            argv = ["ip", "-n", host.ns, "link", "set", "dev", "eth0", "gso_max_segs", "1"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            if done.returncode != 0:
                raise bf.BenchError(f"{' '.join(argv)}: {done.stderr.strip()}")

    def start(self) -> None:
        """Start p2pchat on every host and wait until every node sees every other.

        Raises:
            WaitFailed: they did not start or link in time."""
        for i in range(len(self.net.hosts)):
            home = self.tmp / f"node-{i}"
            name = "s" if i == 0 else f"r{i}"
            argv = bf._p2pchat_argv(name, self.net.hosts[i].addr, self.room, self.service, home)
            argv += ["--download-dir", str(home / "downloads"), *self.args.p2pchat_arg]
            popen = functools.partial(self.net.popen, i)
            node = StampedNode.spawn(
                argv, name, cwd=str(bf.REPO), env=self.node_env(home), popen=popen
            )
            assert isinstance(node, StampedNode)  # spawn makes an instance of its class
            self.nodes.append(node)
        nodes = self.nodes
        took = bf.wait_meshed(nodes)
        print(f"  {len(nodes)} nodes linked in {took:.1f} s", file=sys.stderr, flush=True)

    def pump(self, seconds: float) -> None:
        """Take the nodes' output for ``seconds`` (paces the loops)."""
        end = time.monotonic() + seconds
        while True:
            for p in self.nodes:
                p.pump()
            left = end - time.monotonic()
            if left <= 0:
                return
            self.nodes[0].pump(min(left, 0.005))

    def chat(
        self, qdisc: str, phase: str, stop: Callable[[], bool] | None = None
    ) -> tuple[list[str], list[str], float]:
        """Say a line every interval on the sender and receiver 1 (half an interval
        apart) for ``--seconds`` or until ``stop()``; returns the sender's and
        receiver 1's lines and the phase's length (s)."""
        interval = self.args.interval_ms / 1000
        sender, r1 = self.nodes[0], self.nodes[1]
        said: dict[str, list[str]] = {"s": [], "r1": []}
        start = time.monotonic()
        k = 0
        while True:
            t0 = start + k * interval
            for who, node, at in (("s", sender, t0), ("r1", r1, t0 + interval / 2)):
                self.pump(max(0.0, at - time.monotonic()))
                if time.monotonic() - start >= self.args.seconds or (stop and stop()):
                    return said["s"], said["r1"], time.monotonic() - start
                text = line_text(qdisc, phase, who, k)
                node.send_line(text)
                said[who].append(text)
            k += 1

    def wait_heard(self, texts_s: Sequence[str], texts_r: Sequence[str]) -> None:
        """Take output until every listener heard every line, or :data:`GRACE_S`."""
        end = time.monotonic() + GRACE_S
        want_s, want_r = set(texts_s), set(texts_r)
        while time.monotonic() < end:
            self.pump(0.05)
            ok = all(want_s <= {h.text for h in list(n.heard)} for n in self.nodes[1:])
            ok = ok and all(
                want_r <= {h.text for h in list(n.heard)}
                for i, n in enumerate(self.nodes)
                if i != 1
            )
            if ok:
                return

    def phase_stats(
        self, texts_s: Sequence[str], texts_r: Sequence[str], ts_max: float = math.inf
    ) -> dict[str, Stats]:
        """The stats of one phase per direction (lines made after ``ts_max`` left out)."""
        heard = [list(n.heard) for n in self.nodes]
        from_s = collect(texts_s, heard[1:], ts_max)
        from_r = collect(texts_r, [h for i, h in enumerate(heard) if i != 1], ts_max)
        return {"from_sender": from_s, "from_receiver": from_r}

    def idle(self, qdisc: str) -> dict[str, Stats]:
        """Phase 1: chat only."""
        texts_s, texts_r, _ = self.chat(qdisc, "idle")
        self.wait_heard(texts_s, texts_r)
        return self.phase_stats(texts_s, texts_r)

    def transfer(self, qdisc: str, size: int) -> tuple[dict[str, Stats], Transfer]:
        """Phase 2: the sender offers a new file, every receiver fetches it, and once
        data flows to each, chat as in phase 1; then every receiver cancels."""
        source = self.tmp / f"chatlive-{qdisc}.bin"
        print(f"  writing {size / bf.MB:g} MB of random bytes ...", file=sys.stderr, flush=True)
        bf.make_source(source, size)
        sender, receivers = self.nodes[0], self.nodes[1:]
        marks = [len(r.events) for r in receivers]
        sender.send_line(f"/send {source}")
        result = Transfer()
        file_id: list[str | None] = [None] * len(receivers)
        done_at: list[int] = [0] * len(receivers)  # bytes at the phase's start
        finished: list[float] = []  # wall clock of any receiver's file_done

        def scan() -> None:
            for k, r in enumerate(receivers):
                for ev in r.events[marks[k] :]:
                    kind = ev.get("event")
                    if kind == "file_offer" and file_id[k] is None and not ev.get("history"):
                        if ev.get("name") == source.name:
                            file_id[k] = str(ev["file"])
                            r.send_line(f"/get {file_id[k]}")
                    elif kind == "file_done" and ev.get("file") == file_id[k]:
                        finished.append(time.time())
                    elif kind in ("file_failed", "error"):
                        why = ev.get("reason") or ev.get("text")
                        result.failures.append(f"receiver {k + 1}: {kind}: {why}")
                marks[k] = len(r.events)

        def progress(k: int) -> int:
            evs = [e for e in receivers[k].of("file_progress") if e.get("file") == file_id[k]]
            return int(evs[-1].get("done", 0)) if evs else 0

        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline and not result.failures:
            self.pump(0.02)
            scan()
            if all(f is not None for f in file_id) and all(
                progress(k) > 0 for k in range(len(receivers))
            ):
                break
        else:
            if not result.failures:
                result.failures.append(f"no data flowed within {START_DEADLINE_S:g} s")
        empty = {d: Stats(0, []) for d in DIRECTIONS}
        if result.failures:
            return empty, result
        done_at = [progress(k) for k in range(len(receivers))]

        def stop() -> bool:
            scan()
            return bool(finished) or bool(result.failures)

        texts_s, texts_r, result.seconds = self.chat(qdisc, "transfer", stop)
        scan()
        result.bytes_during = sum(progress(k) - done_at[k] for k in range(len(receivers)))
        result.finished_early = bool(finished)
        for k, r in enumerate(receivers):
            if file_id[k] is not None:
                r.send_line(f"/cancel {file_id[k]}")
        self.wait_heard(texts_s, texts_r)
        stats = self.phase_stats(texts_s, texts_r, min(finished, default=math.inf))
        self.pump(SETTLE_S)
        source.unlink(missing_ok=True)
        for i in range(1, len(self.nodes)):  # what came (the .part files too): not needed
            for path in (self.tmp / f"node-{i}" / "downloads").iterdir():
                if path.is_file():
                    path.unlink()
        return stats, result


@contextlib.contextmanager
def lab(hosts: int) -> Iterator[Any]:
    """The lab of ``hosts`` hosts (unshaped: :meth:`Lab.set_qdisc` shapes it); torn
    down (processes, namespaces) on exit."""
    with bf.netns_lab().lan(hosts, prefix=NS_PREFIX, net24=NET24) as net:
        yield net


def measure(args: argparse.Namespace, setup: Setup) -> list[QdiscResult]:
    """Build the lab, start the nodes and measure every qdisc in turn."""
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-chatlive-") as tmpname,
        lab(1 + args.receivers) as net,
    ):
        tmp = Path(tmpname)
        os.chmod(tmp, 0o755)
        run = Lab(net, tmp, args)
        if not setup.cc:
            setup.cc = f"{net_cc(net)} (the kernel's default)"
        run.set_qdisc("fifo")
        if not args.gso:
            run.one_packet_per_skb()
        print("starting the nodes ...", file=sys.stderr, flush=True)
        run.start()
        for qdisc in setup.qdiscs:
            try:
                run.set_qdisc(qdisc)
            except Unavailable as exc:
                setup.unavailable[qdisc] = str(exc)
                print(f"{qdisc}: {exc}", file=sys.stderr, flush=True)
                continue
            print(f"{qdisc}: idle ...", file=sys.stderr, flush=True)
            setup.load.append(machine_load())
            run.pump(SETTLE_S / 2)
            idle = run.idle(qdisc)
            print(f"{qdisc}: during a transfer ...", file=sys.stderr, flush=True)
            setup.load.append(machine_load())
            during, transfer = run.transfer(qdisc, setup.size_bytes)
            stats = {d: {"idle": idle[d], "transfer": during[d]} for d in DIRECTIONS}
            results.append(QdiscResult(qdisc, stats, transfer))
    return results


def net_cc(net: Any) -> str:
    """Host 0's TCP congestion control (what new connections there use)."""
    return subprocess.run(
        ["ip", "netns", "exec", net.hosts[0].ns, "sysctl", "-n", "net.ipv4.tcp_congestion_control"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()


def cleanup() -> list[str]:
    """Delete the ``bc-*`` namespaces whose creating process is gone, after ending
    (SIGKILL, by PID) the processes still inside them; returns the names deleted."""
    lab_mod = bf.netns_lab()
    for ns in lab_mod.stale_namespaces(NS_PREFIX):
        pids = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    return list(lab_mod.remove_stale_namespaces(NS_PREFIX))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; exit status 0 when it measured (whatever the figures), 1 when it
    could not, 2 when the machine lacks what it needs (root, iproute2) or an option
    is bad."""
    args = parse_args(argv)
    why = bf.missing_tools()
    if why:
        print(f"bench_chat_during_transfer.py: {why}", file=sys.stderr)
        return 2
    if args.cleanup:
        removed = cleanup()
        print(f"removed {len(removed)} namespace(s){': ' if removed else ''}{' '.join(removed)}")
        return 0
    size = round(args.size * bf.MB) if args.size else default_size(args.rate, args.seconds)
    setup = Setup(
        rate_bps=args.rate,
        seconds=args.seconds,
        interval_ms=args.interval_ms,
        receivers=args.receivers,
        size_bytes=size,
        qdiscs=args.qdisc,
        cc=args.cc,
        gso=args.gso,
        window_clamp=args.window_clamp,
        bottleneck=args.bottleneck,
        load=[machine_load()],
    )

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so that every ``finally`` tears the lab down

    signal.signal(signal.SIGTERM, on_term)
    try:
        results = measure(args, setup)
    except (RuntimeError, OSError, subprocess.SubprocessError, WaitFailed) as exc:
        print(f"bench_chat_during_transfer.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_chat_during_transfer.py: interrupted", file=sys.stderr)
        return 130
    setup.load.append(machine_load())
    print(format_table(setup, results), flush=True)
    if args.json:
        print(json.dumps(json_result(setup, results)), flush=True)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench-chatlive"
    sys.exit(main())
