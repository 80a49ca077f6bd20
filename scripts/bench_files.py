#!/usr/bin/env python3
"""Benchmark sending one file to 1..10 receivers: p2pchat's swarm against a plain TCP
copy and a central HTTP server, over rate-limited links in network namespaces.

The lab (``tests/netns_lab.py``, namespaces ``bf-<pid>-<hex>-sw`` and ``...-h<i>``):
host 0 is the sender (10.77.0.1), hosts 1..R the receivers (10.77.0.2 ...), every
one on one bridge in a switch namespace, and on every host's uplink (``eth0``'s
egress) a token bucket::

    tc qdisc add dev eth0 root tbf rate 100mbit burst 64kb latency 50ms

(``--rate``).  Nothing of the lab exists in the main namespace, so nothing it
sends (mDNS included) reaches a real network.  The file is ``--size`` MB
(10^6 bytes) of random bytes.  Measured side by side in one run, one system
after the other (never at once; the TCP copy first, then for each receiver
count the server and p2pchat, in an order that alternates):

1. ``tcp``: a plain TCP copy, Python's ``socket.sendfile`` from the sender to
   a socket reader on receiver 1 that writes the bytes to a file: the
   baseline of the issue's "one receiver within 1.15x of a TCP copy".  Once
   per run, with 1 receiver whatever ``--receivers`` says.  Time: from just
   before ``connect`` (in the sender's process) to the last byte written (in
   the reader's); both read CLOCK_MONOTONIC, which is system-wide.
2. ``server``: a central server, Python's ``http.server``
   (``ThreadingHTTPServer`` with ``SimpleHTTPRequestHandler``, what
   ``python -m http.server`` runs) in the sender's namespace, and R
   concurrent clients (``curl``, or a Python ``urllib`` client where curl is
   missing) fetching the file at once.  Time: from the start of the first
   client to each client's exit (seen by this driver).
3. ``p2pchat``: ``p2pchat --json --name s --interface 10.77.0.1 --room
   bench-<hex>`` on the sender and likewise on every receiver (mDNS inside
   the namespaces only; a service type of the run's own; ``--data-dir`` and,
   where p2pchat has it, ``--download-dir`` in the run's temporary directory,
   as are ``HOME`` and the XDG folders); once every node
   sees every other, ``/send PATH`` on the sender and ``/get <file id>`` on
   each receiver at its ``file_offer`` event.  Time: from the ``/send`` line
   to each receiver's ``file_done``.  Where p2pchat has no ``/send`` yet (its
   ``/help`` does not list it), the table says "p2pchat: not available (no
   /send)" (or "no /get", while only the offer has landed) and the baselines
   are still measured; ``--no-p2pchat`` skips it;
   ``--p2pchat-arg=--chunk-size=256K`` (repeatable) adds an argument to
   every node's command line.

Every received copy is checked against the source's SHA-256 (after the clock
stops; p2pchat checks its own and reports it in ``file_done``).  A cell's
figure is the completion time of its last receiver (the median over
``--runs``); a receiver that failed, timed out or got a wrong copy makes the
cell "fail".

``--interrupt-sender S``: in the server and p2pchat runs, the sender's
process is stopped (SIGSTOP) for S seconds, then continued (SIGCONT), once
the first receiver has 30 % of the file (p2pchat: a ``file_progress``
event; server: the size of a client's output file) or half the time a
single copy takes at ``--rate``, whichever comes first.  The table says
whether every receiver still finished.  ``--interrupt-after T`` stops it T
seconds after the start instead, whatever the progress (in the middle of a
transfer, when the receivers may already hold every chunk between them).

After each p2pchat run every node is asked ``/stats`` and its file-transfer
counters go to stderr (``  stats r3: chunks_served=... swarm_requests=...``): how
many chunks each node served, the swarm's requests, timeouts and declines, and
the refusals, to tell where the time went.

Output: the table on stdout (progress on stderr); ``--json``: then one JSON
line with every figure; ``--plot FILE.png``: completion time against
receivers (needs matplotlib; without it the bench says so and goes on).
``--cleanup`` deletes the ``bf-*`` namespaces of runs that died (ending the
processes still in them) and exits.  Needs root, iproute2 (``ip``, ``tc``).
Examples::

    sudo python3 scripts/bench_files.py                      # 50 MB, 1,2,5,10 receivers
    sudo python3 scripts/bench_files.py --receivers 1,10 --runs 3 --json --plot files.png
    sudo python3 scripts/bench_files.py --no-p2pchat --size 5 --receivers 1,2
    sudo python3 scripts/bench_files.py --interrupt-sender 10
    sudo python3 scripts/bench_files.py --receivers 1,10 --p2pchat-arg=--chunk-size=1M
    sudo python3 scripts/bench_files.py --cleanup

The workers (``--worker-*``) are this script in another mode, started by the
driver inside a namespace; they are internal.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # so that the driver's p2pchat.harness is this checkout's

if TYPE_CHECKING:
    from p2pchat.harness import NodeProcess

SYSTEMS = ("tcp", "server", "p2pchat")
"""The systems measured, in table order."""
SYSTEM_TITLES = {"tcp": "tcp copy", "server": "server", "p2pchat": "p2pchat"}
NS_PREFIX = "bf-"
"""Every namespace the bench makes starts with this."""
NET24 = (77, 0)
"""The lab's subnet: 10.77.0.0/24; host i is 10.77.0.{i+1} (the sender is host 0)."""
MB = 1_000_000
DEFAULT_SIZE_MB = 50.0
MAX_SIZE_MB = 2000.0
DEFAULT_RATE = "100mbit"
TBF_BURST = "64kb"
TBF_LATENCY = "50ms"
DEFAULT_RECEIVERS = (1, 2, 5, 10)
MAX_RECEIVERS = 10
MAX_RUNS = 20
PROGRESS_TRIGGER = 0.3
"""--interrupt-sender stops the sender once a receiver has this fraction of the file."""
READY_DEADLINE_S = 60.0
MESH_DEADLINE_S = 90.0
PROBE_DEADLINE_S = 30.0
POLL_S = 0.01
STATS_DEADLINE_S = 5.0
"""How long the bench waits for a node's ``/stats`` after a p2pchat run."""
GOALS = {
    "p2pchat/tcp": "goal <= 1.15",
    "p2pchat(N)/p2pchat(1)": "goal <= 2.5",
    "server(N)/server(1)": "about N expected",
}
UNAVAILABLE_NO_SEND = "not available (no /send)"
UNAVAILABLE_NO_GET = "not available (no /get)"

_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$")
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}


def wait_meshed(nodes: Sequence[NodeProcess]) -> float:
    """Wait until every node is ready (:data:`READY_DEADLINE_S`) and sees every
    other as a member (:data:`MESH_DEADLINE_S`).

    Returns:
        Seconds the second wait took.

    Raises:
        WaitFailed: a deadline passed.
    """
    from p2pchat.harness import wait_until

    wait_until(
        lambda: all(p.ready_event is not None for p in nodes),
        READY_DEADLINE_S,
        "every node ready",
        nodes,
        settle_s=0,
    )

    def meshed() -> bool:
        ids = {str(p.node_id) for p in nodes}
        return all(ids - {str(p.node_id)} <= p.members() for p in nodes)

    return wait_until(meshed, MESH_DEADLINE_S, "every node sees every other", nodes)


class BenchError(RuntimeError):
    """The bench cannot go on (a worker did not start, the lab failed)."""


class Unavailable(Exception):
    """The system cannot be measured here; the message says why."""


# -- the pure parts: options, figures, the table ------------------------------------------


def parse_receivers(text: str) -> list[int]:
    """``--receivers``: counts separated by commas (``1,2,5,10``), each 1..10, each once;
    returned ascending.

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a receiver count or a comma-separated list of them"
        ) from None
    if not all(1 <= n <= MAX_RECEIVERS for n in counts):
        raise argparse.ArgumentTypeError(f"receiver counts must be 1..{MAX_RECEIVERS}")
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError("each receiver count once")
    return sorted(counts)


def parse_rate(text: str) -> int:
    """``--rate`` in ``tc``'s own units (``100mbit``, ``1gbit``, ``500kbit``; bits per
    second, powers of 10); returns bits per second (at least 1 kbit/s).

    Raises:
        argparse.ArgumentTypeError: another form, or below 1kbit.
    """
    m = _RATE_RE.match(text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate such as 100mbit, 1gbit or 500kbit"
        )
    bits = int(float(m.group(1)) * _RATE_UNITS[m.group(2)])
    if bits < 1000:
        raise argparse.ArgumentTypeError("the rate must be at least 1kbit")
    return bits


def tc_rate(bits_per_s: int) -> str:
    """A rate in bits per second as ``tc`` takes it (``100mbit``, ``1500kbit``, ``7bit``)."""
    for unit in ("gbit", "mbit", "kbit"):
        if bits_per_s % _RATE_UNITS[unit] == 0:
            return f"{bits_per_s // _RATE_UNITS[unit]}{unit}"
    return f"{bits_per_s}bit"


def wire_seconds(size_bytes: int, bits_per_s: int) -> float:
    """How long ``size_bytes`` take at ``bits_per_s`` (no overhead): the time of one copy."""
    return size_bytes * 8 / bits_per_s


def median(values: Sequence[float]) -> float:
    """The median of the finite values; NaN when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def ratio(a: float, b: float) -> float:
    """``a / b``; NaN unless both are finite and ``b`` > 0."""
    if not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return math.nan
    return a / b


@dataclass
class Trial:
    """One measurement: one system, one receiver count, one run.

    Attributes:
        system: one of :data:`SYSTEMS`.
        receivers: how many receivers fetched the file.
        times_s: per receiver, seconds from the start to its verified copy
            (NaN: it failed, timed out or its copy was wrong).
        failures: why receivers failed, one sentence each.
        interrupted_s: how long the sender was stopped (0: not stopped).
        stopped_at_s: when, after the start, the sender was stopped (NaN: never).
    """

    system: str
    receivers: int
    times_s: list[float]
    failures: list[str] = field(default_factory=list)
    interrupted_s: float = 0.0
    stopped_at_s: float = math.nan

    @property
    def all_done(self) -> bool:
        """Whether every receiver holds a verified copy."""
        return len(self.times_s) == self.receivers and all(math.isfinite(t) for t in self.times_s)

    @property
    def without_sender(self) -> bool:
        """Whether the sender was stopped and every receiver finished before
        it was continued (from the others alone)."""
        return (
            self.all_done
            and self.interrupted_s > 0
            and max(self.times_s) < self.stopped_at_s + self.interrupted_s
        )

    @property
    def completion_s(self) -> float:
        """The last receiver's time; NaN unless every receiver finished."""
        return max(self.times_s) if self.all_done else math.nan


@dataclass
class Cell:
    """The figures of one (system, receiver count) over the runs.

    Attributes:
        completion_s: median over runs of the last receiver's time (NaN: no
            run where every receiver finished).
        mean_s: median over runs of the mean receiver time.
        runs: the runs measured; ``complete``: those where every receiver finished.
        failures: every failure of every run.
        interrupted: whether the sender was stopped in some run.
        without_sender: the runs where every receiver finished while the
            sender was stopped.
    """

    completion_s: float
    mean_s: float
    runs: int
    complete: int
    failures: list[str]
    interrupted: bool
    without_sender: int = 0


def summarize(trials: Sequence[Trial]) -> dict[str, dict[int, Cell]]:
    """Group ``trials`` by system and receiver count: system -> receivers -> :class:`Cell`."""
    groups: dict[tuple[str, int], list[Trial]] = {}
    for t in trials:
        groups.setdefault((t.system, t.receivers), []).append(t)
    out: dict[str, dict[int, Cell]] = {}
    for (system, n), ts in groups.items():
        means = [statistics.fmean(t.times_s) if t.all_done else math.nan for t in ts]
        out.setdefault(system, {})[n] = Cell(
            completion_s=median([t.completion_s for t in ts]),
            mean_s=median(means),
            runs=len(ts),
            complete=sum(t.all_done for t in ts),
            failures=[f for t in ts for f in t.failures],
            interrupted=any(t.interrupted_s > 0 for t in ts),
            without_sender=sum(t.without_sender for t in ts),
        )
    return out


def _completion(summary: dict[str, dict[int, Cell]], system: str, n: int) -> float:
    cell = summary.get(system, {}).get(n)
    return cell.completion_s if cell is not None else math.nan


def ratios(summary: dict[str, dict[int, Cell]], counts: Sequence[int]) -> dict[str, float]:
    """The issue's ratios of completion times (NaN where a figure is missing):

    * ``p2pchat/tcp``: p2pchat with 1 receiver over the TCP copy (goal <= 1.15);
    * ``p2pchat(N)/p2pchat(1)``: the most receivers measured over 1 (goal <= 2.5 at 10);
    * ``server(N)/server(1)``: the same for the central server (about N).

    Returns ``{"p2pchat/tcp": x, "p2pchat(N)/p2pchat(1)": y, "server(N)/server(1)": z,
    "N": most}`` (N as a float).
    """
    most = max(counts) if counts else 1
    return {
        "p2pchat/tcp": ratio(_completion(summary, "p2pchat", 1), _completion(summary, "tcp", 1)),
        "p2pchat(N)/p2pchat(1)": ratio(
            _completion(summary, "p2pchat", most), _completion(summary, "p2pchat", 1)
        )
        if most > 1
        else math.nan,
        "server(N)/server(1)": ratio(
            _completion(summary, "server", most), _completion(summary, "server", 1)
        )
        if most > 1
        else math.nan,
        "N": float(most),
    }


def _fmt(v: float, spec: str = "{:.2f}") -> str:
    return spec.format(v) if math.isfinite(v) else "n/a"


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    if cell.complete == 0:
        return "fail"
    text = _fmt(cell.completion_s)
    if cell.complete < cell.runs:
        text += f" ({cell.complete}/{cell.runs})"
    return text


@dataclass
class Setup:
    """What a run was, for the table's head and the JSON.

    Attributes:
        size_bytes: the file's size.
        rate_bps: the uplinks' token-bucket rate (bits/s).
        runs: runs per receiver count.
        counts: the receiver counts measured (ascending).
        interrupt_s: ``--interrupt-sender`` (0: none).
        interrupt_after_s: ``--interrupt-after`` (0: the progress trigger).
        client: what the server's clients were (``curl`` or ``urllib``).
        unavailable: system -> why it was not measured.
    """

    size_bytes: int
    rate_bps: int
    runs: int
    counts: list[int]
    interrupt_s: float = 0.0
    interrupt_after_s: float = 0.0
    client: str = "curl"
    unavailable: dict[str, str] = field(default_factory=dict)


def format_table(setup: Setup, summary: dict[str, dict[int, Cell]]) -> str:
    """The human-readable result: completion time of the last receiver per receiver
    count and system, the ratios against their goals, and what went wrong."""
    one = wire_seconds(setup.size_bytes, setup.rate_bps)
    head = [
        f"files bench: {setup.size_bytes / MB:g} MB of random bytes, every uplink "
        f"tbf {tc_rate(setup.rate_bps)} (burst {TBF_BURST}, latency {TBF_LATENCY}; "
        f"one copy {one:.2f} s at that rate); median of {setup.runs} run(s); "
        f"server clients: {setup.client}",
    ]
    if setup.interrupt_s > 0:
        when = (
            f"{setup.interrupt_after_s:g} s after the start"
            if setup.interrupt_after_s > 0
            else f"at {PROGRESS_TRIGGER:.0%} of the first receiver or half a copy's time"
        )
        head.append(
            f"sender stopped for {setup.interrupt_s:g} s in the server and p2pchat runs ({when})"
        )
    head += [
        "",
        "completion time of the last receiver (s)",
        f"{'receivers':>9}" + "".join(f"{SYSTEM_TITLES[s]:>12}" for s in SYSTEMS),
        "-" * (9 + 12 * len(SYSTEMS)),
    ]
    body = []
    for n in setup.counts:
        cells = []
        for system in SYSTEMS:
            if system in setup.unavailable:
                cells.append("n/a")
            elif system == "tcp" and n != 1:
                cells.append("-")
            else:
                cells.append(_cell_text(summary.get(system, {}).get(n)))
        body.append(f"{n:>9}" + "".join(f"{c:>12}" for c in cells))
    if 1 not in setup.counts and "tcp" not in setup.unavailable:
        body.append(f"{'(1)':>9}{_cell_text(summary.get('tcp', {}).get(1)):>12}")
    r = ratios(summary, setup.counts)
    most = int(r["N"])
    body += ["", "ratios of completion times"]
    labels = {
        "p2pchat/tcp": "p2pchat / tcp copy, 1 receiver",
        "p2pchat(N)/p2pchat(1)": f"p2pchat({most}) / p2pchat(1)",
        "server(N)/server(1)": f"server({most}) / server(1)",
    }
    for key, label in labels.items():
        goal = GOALS[key].replace("N", str(most))
        body.append(f"  {label:<34}{_fmt(r[key]):>8}   ({goal})")
    if setup.interrupt_s > 0:
        body += [
            "",
            f"sender stopped {setup.interrupt_s:g} s: did every receiver finish"
            " (and before the sender came back)?",
        ]
        for system in ("server", "p2pchat"):
            if system in setup.unavailable:
                continue
            by_n = summary.get(system, {})
            for n in setup.counts:
                cell = by_n.get(n)
                if cell is None:
                    continue
                verdict = "yes" if cell.complete == cell.runs else f"{cell.complete}/{cell.runs}"
                early = f"{cell.without_sender}/{cell.runs} before"
                body.append(f"  {system:<8} {n:>2} receiver(s): {verdict} ({early})")
    notes = [f"{s}: {why}" for s, why in setup.unavailable.items()]
    for system in SYSTEMS:
        for n, cell in sorted(summary.get(system, {}).items()):
            for why in cell.failures[:5]:
                notes.append(f"{system} ({n} receivers): {why}")
    if notes:
        body += ["", *notes]
    return "\n".join(head + body)


def json_result(setup: Setup, summary: dict[str, dict[int, Cell]]) -> dict[str, Any]:
    """The ``--json`` line: the setup, per system and receiver count the figures
    (NaN as null), the ratios and why a system was not measured."""

    def num(v: float) -> float | None:
        return round(v, 4) if math.isfinite(v) else None

    systems: dict[str, Any] = {}
    for system in SYSTEMS:
        if system in setup.unavailable:
            systems[system] = {"available": False, "why": setup.unavailable[system]}
            continue
        systems[system] = {
            "available": True,
            "by_receivers": {
                str(n): {
                    "completion_s": num(cell.completion_s),
                    "mean_s": num(cell.mean_s),
                    "runs": cell.runs,
                    "complete_runs": cell.complete,
                    "failures": cell.failures,
                    "interrupted": cell.interrupted,
                    "finished_without_sender_runs": cell.without_sender,
                }
                for n, cell in sorted(summary.get(system, {}).items())
            },
        }
    r = ratios(summary, setup.counts)
    return {
        "size_bytes": setup.size_bytes,
        "rate_bit_s": setup.rate_bps,
        "runs": setup.runs,
        "receivers": setup.counts,
        "interrupt_sender_s": setup.interrupt_s,
        "interrupt_after_s": setup.interrupt_after_s,
        "server_client": setup.client,
        "systems": systems,
        "ratios": {k: num(v) for k, v in r.items() if k != "N"} | {"N": int(r["N"])},
    }


def plot_series(summary: dict[str, dict[int, Cell]]) -> dict[str, tuple[list[int], list[float]]]:
    """What ``--plot`` draws: per system with figures, receiver counts ascending and
    the completion times (finite ones only)."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for system in SYSTEMS:
        cells = summary.get(system, {})
        points = [(n, c.completion_s) for n, c in sorted(cells.items())]
        points = [(n, t) for n, t in points if math.isfinite(t)]
        if points:
            out[system] = ([n for n, _ in points], [t for _, t in points])
    return out


def plot(path: str, setup: Setup, summary: dict[str, dict[int, Cell]]) -> None:
    """Draw completion time against receivers to the PNG ``path`` (matplotlib must be
    importable); the TCP copy is one point at 1 receiver."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, (xs, ys) in plot_series(summary).items():
        style = "D" if system == "tcp" else "o-"
        ax.plot(xs, ys, style, label=SYSTEM_TITLES[system])
    ax.set_xlabel("receivers")
    ax.set_ylabel("completion time of the last receiver (s)")
    ax.set_xticks(setup.counts)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(
        f"{setup.size_bytes / MB:g} MB, uplinks {tc_rate(setup.rate_bps)}; "
        f"median of {setup.runs} run(s)"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line (the bench's options and the hidden worker modes);
    a bad option exits with status 2 and the reason, as argparse does."""
    p = argparse.ArgumentParser(
        description="Send one file to 1..10 receivers over rate-limited links in network "
        "namespaces: p2pchat against a plain TCP copy and a central HTTP server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--receivers",
        type=parse_receivers,
        default=list(DEFAULT_RECEIVERS),
        metavar="N[,N...]",
        help=f"receiver counts to measure, each 1..{MAX_RECEIVERS}",
    )
    p.add_argument(
        "--size", type=float, default=DEFAULT_SIZE_MB, help="the file's size in MB (10^6 bytes)"
    )
    p.add_argument(
        "--rate",
        type=parse_rate,
        default=parse_rate(DEFAULT_RATE),
        metavar="RATE",
        help=f"every uplink's token-bucket rate, in tc's units (default {DEFAULT_RATE})",
    )
    p.add_argument("--runs", type=int, default=1, help="runs per receiver count; medians")
    p.add_argument(
        "--p2pchat",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure p2pchat too (--no-p2pchat: the baselines only)",
    )
    p.add_argument(
        "--p2pchat-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for every p2pchat node (repeatable; as "
        "--p2pchat-arg=--chunk-size=256K)",
    )
    p.add_argument(
        "--interrupt-sender",
        type=float,
        default=0.0,
        metavar="S",
        help="stop the sender for S seconds once the first receiver has 30%% of the file "
        "(server and p2pchat runs); 0: never",
    )
    p.add_argument(
        "--interrupt-after",
        type=float,
        default=0.0,
        metavar="S",
        help="with --interrupt-sender: stop it S seconds after the start instead "
        "(e.g. in the middle of the transfer); 0: at 30%% of the first receiver",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="give up on a transfer after S seconds (0: 5x the time the server needs at "
        "--rate, plus the interruption, plus 30 s)",
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line of figures")
    p.add_argument(
        "--plot", metavar="FILE.png", help="draw completion time against receivers (matplotlib)"
    )
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="delete the bf-* namespaces of dead runs (and end what still runs in them); exit",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--worker-tcp-recv", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--worker-tcp-send", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--worker-http", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--worker-get", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--addr", default="", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--path", default="", help=argparse.SUPPRESS)
    p.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    problems = []
    if not (math.isfinite(args.size) and 0 < args.size <= MAX_SIZE_MB):
        problems.append(f"--size must be in (0, {MAX_SIZE_MB:g}] MB")
    if not 1 <= args.runs <= MAX_RUNS:
        problems.append(f"--runs must be 1..{MAX_RUNS}")
    if not (math.isfinite(args.interrupt_sender) and 0 <= args.interrupt_sender <= 600):
        problems.append("--interrupt-sender must be 0..600 s")
    if not (math.isfinite(args.interrupt_after) and 0 <= args.interrupt_after <= 600):
        problems.append("--interrupt-after must be 0..600 s")
    if not (math.isfinite(args.timeout) and 0 <= args.timeout <= 3600):
        problems.append("--timeout must be 0..3600 s")
    if problems:
        p.error("; ".join(problems))
    return args


# -- the workers (this script, inside a namespace) ----------------------------------------


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def worker_tcp_recv(addr: str, path: str) -> int:
    """Accept one connection on ``addr`` (any port) and write what it brings to
    ``path``; prints ``ready`` (with the port) and then ``done`` (``end``: the
    monotonic time after the last byte was written, ``bytes``)."""
    with socket.create_server((addr, 0)) as srv:
        _emit("ready", port=srv.getsockname()[1])
        conn, _ = srv.accept()
        total = 0
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        with conn, open(path, "wb") as out:
            while n := conn.recv_into(buf):
                out.write(view[:n])
                total += n
            out.flush()
            end = time.monotonic()
        _emit("done", end=end, bytes=total)
    return 0


def worker_tcp_send(addr: str, port: int, path: str) -> int:
    """Wait for a line on stdin, then connect to ``addr:port`` and ``sendfile``
    ``path``; prints ``ready`` first and ``sent`` (``start``: the monotonic time
    just before connect) once the reader has closed."""
    _emit("ready")
    if not sys.stdin.readline():
        return 1
    start = time.monotonic()
    with socket.create_connection((addr, port)) as sock, open(path, "rb") as f:
        sock.sendfile(f)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    _emit("sent", start=start)
    return 0


def worker_http(addr: str, directory: str) -> int:
    """Serve ``directory`` with ``http.server`` on ``addr`` (any port), one thread
    per request, until stdin closes; prints ``ready`` with the port."""
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=directory)
    with http.server.ThreadingHTTPServer((addr, 0), handler) as httpd:
        serving = threading.Thread(target=httpd.serve_forever, name="bench-files-http")
        serving.start()
        _emit("ready", port=httpd.server_address[1])
        try:
            while sys.stdin.readline():
                pass
        finally:
            httpd.shutdown()
            serving.join()
    return 0


def worker_get(url: str, path: str) -> int:
    """Fetch ``url`` to ``path`` with ``urllib`` (no proxy); the exit status says
    whether it worked (curl's stand-in)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=600) as resp, open(path, "wb") as out:
        shutil.copyfileobj(resp, out, 1 << 20)
    return 0


# -- the lab ----------------------------------------------------------------------------


def missing_tools() -> str:
    """Why the bench cannot build its lab here ("" when it can): root, ``ip``, ``tc``."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not found: install iproute2 "
            "(apt-get install iproute2, dnf install iproute, apk add iproute2)"
        )
    if os.geteuid() != 0:
        return "network namespaces and tc need root (run with sudo)"
    return ""


def netns_lab() -> Any:
    """The namespace lab of the tests (``tests/netns_lab.py``)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("netns_lab")


def cleanup() -> list[str]:
    """Delete the ``bf-*`` namespaces whose creating process is gone, after ending
    (SIGKILL, by PID) the processes still inside them: only this bench starts
    processes there.  Returns the names deleted."""
    lab = netns_lab()
    stale = lab.stale_namespaces(NS_PREFIX)
    for ns in stale:
        pids = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    return list(lab.remove_stale_namespaces(NS_PREFIX))


def shape(net: Any, rate_bps: int) -> None:
    """Put the token bucket on every host's uplink (``eth0`` egress).

    Raises:
        BenchError: ``tc`` refused it (its message)."""
    for host in net.hosts:
        argv = ["ip", "netns", "exec", host.ns, "tc", "qdisc", "add", "dev", "eth0", "root"]
        argv += ["tbf", "rate", tc_rate(rate_bps), "burst", TBF_BURST, "latency", TBF_LATENCY]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            raise BenchError(f"tc on {host.ns}: {done.stderr.strip() or done.returncode}")


# -- measuring --------------------------------------------------------------------------


@dataclass
class Ctx:
    """What every measurement needs.

    Attributes:
        net: the running lab (``netns_lab.Lan``).
        source: the file sent; ``sha256``: its hex digest; ``size``: its bytes.
        tmp: a scratch directory (the run's own).
        rate_bps, interrupt_s, timeout_s: the options.
        interrupt_after_s: ``--interrupt-after`` (0: the progress trigger).
        download_dir_flag: whether p2pchat takes ``--download-dir``.
        p2pchat_args: ``--p2pchat-arg``, for every node.
    """

    net: Any
    source: Path
    sha256: str
    size: int
    tmp: Path
    rate_bps: int
    interrupt_s: float
    timeout_s: float
    download_dir_flag: bool = False
    p2pchat_args: list[str] = field(default_factory=list)
    interrupt_after_s: float = 0.0

    def stopper(self, pid: int, start: float) -> Interrupter:
        """The :class:`Interrupter` of a run whose sender is ``pid``, started at ``start``:
        at :data:`PROGRESS_TRIGGER` or half a copy's time, or at ``--interrupt-after``."""
        if self.interrupt_after_s > 0:
            return Interrupter(pid, self.interrupt_s, start, self.interrupt_after_s, math.inf)
        half_copy_s = wire_seconds(self.size, self.rate_bps) / 2
        return Interrupter(pid, self.interrupt_s, start, half_copy_s)

    def addr(self, i: int) -> str:
        """Host ``i``'s address (0: the sender)."""
        return str(self.net.hosts[i].addr)

    def spawn(
        self, i: int, argv: Sequence[str], label: str, env: dict[str, str] | None = None
    ) -> Any:
        """Start ``argv`` in host ``i`` wrapped in a harness ``NodeProcess``."""
        from p2pchat.harness import NodeProcess, env_with_path

        popen = functools.partial(self.net.popen, i)
        return NodeProcess.spawn(
            argv, label, cwd=str(REPO), env=env or env_with_path(REPO), popen=popen
        )

    def worker(self, i: int, mode: str, label: str, **opts: Any) -> Any:
        """Start this script as worker ``mode`` in host ``i``."""
        argv = [sys.executable, str(Path(__file__).resolve()), f"--worker-{mode}"]
        for key, value in opts.items():
            argv += [f"--{key}", str(value)]
        return self.spawn(i, argv, label)


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_source(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256 (hex)."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def _stop(procs: Sequence[Any]) -> None:
    from p2pchat.harness import stop

    for p in procs:  # a stopped sender would not see the terminate
        if p.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.proc.pid, signal.SIGCONT)
    stop(list(procs))


def run_tcp(ctx: Ctx, tag: str) -> Trial:
    """One plain TCP copy, sender (host 0) -> receiver (host 1)."""
    out = ctx.tmp / f"tcp-{tag}"
    recv = ctx.worker(1, "tcp-recv", "tcp-recv", addr=ctx.addr(1), path=out)
    procs = [recv]
    try:
        port = recv.wait_event("ready", timeout_s=READY_DEADLINE_S)["port"]
        send = ctx.worker(0, "tcp-send", "tcp-send", addr=ctx.addr(1), port=port, path=ctx.source)
        procs.append(send)
        send.wait_event("ready", timeout_s=READY_DEADLINE_S)
        send.send_line("go")
        done = recv.wait_event("done", timeout_s=ctx.timeout_s)
        start = send.wait_event("sent", timeout_s=30)["start"]
        elapsed = float(done["end"]) - float(start)
        if sha256_of(out) != ctx.sha256:
            return Trial("tcp", 1, [math.nan], [f"the copy differs ({done['bytes']} bytes)"])
        return Trial("tcp", 1, [elapsed])
    except AssertionError as exc:  # harness.WaitFailed
        return Trial("tcp", 1, [math.nan], [_first_line(exc)])
    finally:
        _stop(procs)
        out.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class Interrupter:
    """Stops the sender once, for ``seconds``, when :meth:`check` is first told a
    receiver has ``trigger`` of the file (default :data:`PROGRESS_TRIGGER`; ``inf``:
    never) or ``half_copy_s`` have passed since ``start`` (by default half a copy's
    time; ``--interrupt-after``'s seconds).

    Used by the driver's thread only."""

    def __init__(
        self,
        pid: int,
        seconds: float,
        start: float,
        half_copy_s: float,
        trigger: float = PROGRESS_TRIGGER,
    ) -> None:
        self.pid = pid
        self.trigger = trigger
        self.seconds = seconds
        self.start = start
        self.half_copy_s = half_copy_s
        self.stopped_at = math.nan
        self.resumed = seconds <= 0

    def check(self, now: float, fraction: float) -> None:
        """Stop or resume the sender as due (``fraction``: the most any receiver has)."""
        if self.seconds <= 0:
            return
        if math.isnan(self.stopped_at):
            if fraction >= self.trigger or now - self.start >= self.half_copy_s:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGSTOP)
                self.stopped_at = now
                print(f"  sender stopped at {now - self.start:.1f} s", file=sys.stderr)
        elif not self.resumed and now - self.stopped_at >= self.seconds:
            self.resume()

    def resume(self) -> None:
        """Continue the sender if it is stopped (also on the way out)."""
        if not math.isnan(self.stopped_at) and not self.resumed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
            self.resumed = True
            print("  sender continued", file=sys.stderr)

    def fill(self, trial: Trial) -> Trial:
        """Record in ``trial`` when the sender was stopped and for how long."""
        if not math.isnan(self.stopped_at):
            trial.stopped_at_s = self.stopped_at - self.start
            trial.interrupted_s = self.seconds
        return trial


def run_server(ctx: Ctx, n: int, tag: str, curl: bool) -> Trial:
    """``http.server`` in the sender, ``n`` clients at once in hosts 1..n."""
    serve_dir = ctx.source.parent
    server = ctx.worker(0, "http", "http-server", addr=ctx.addr(0), path=serve_dir)
    outs = [ctx.tmp / f"http-{tag}-{i}" for i in range(1, n + 1)]
    clients: list[subprocess.Popen[bytes]] = []
    try:
        port = server.wait_event("ready", timeout_s=READY_DEADLINE_S)["port"]
        url = f"http://{ctx.addr(0)}:{port}/{ctx.source.name}"
        start = time.monotonic()
        for i, out in enumerate(outs, 1):
            if curl:
                argv = ["curl", "-sS", "--fail", "--noproxy", "*", "-o", str(out), url]
            else:
                argv = [sys.executable, str(Path(__file__).resolve()), "--worker-get"]
                argv += ["--url", url, "--path", str(out)]
            clients.append(ctx.net.popen(i, argv, stdout=subprocess.DEVNULL))
        ends: list[float] = [math.nan] * n
        codes: list[int | None] = [None] * n
        stopper = ctx.stopper(server.proc.pid, start)
        deadline = start + ctx.timeout_s
        try:
            while any(c is None for c in codes) and time.monotonic() < deadline:
                now = time.monotonic()
                for k, c in enumerate(clients):
                    if codes[k] is None and (rc := c.poll()) is not None:
                        codes[k], ends[k] = rc, now
                if ctx.interrupt_s > 0:
                    have = max((_size(o) for o in outs), default=0)
                    stopper.check(now, have / ctx.size)
                time.sleep(POLL_S)
        finally:
            stopper.resume()
        trial = Trial("server", n, [], [])
        for k, out in enumerate(outs):
            if codes[k] is None:
                trial.failures.append(f"receiver {k + 1}: no copy after {ctx.timeout_s:.0f} s")
                trial.times_s.append(math.nan)
            elif codes[k] != 0:
                trial.failures.append(f"receiver {k + 1}: client exited with {codes[k]}")
                trial.times_s.append(math.nan)
            elif sha256_of(out) != ctx.sha256:
                trial.failures.append(f"receiver {k + 1}: the copy differs")
                trial.times_s.append(math.nan)
            else:
                trial.times_s.append(ends[k] - start)
        return stopper.fill(trial)
    except AssertionError as exc:
        return Trial("server", n, [math.nan] * n, [_first_line(exc)])
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
            c.wait()
        _stop([server])
        for out in outs:
            out.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _p2pchat_argv(name: str, addr: str, room: str, service: str, home: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "p2pchat",
        "--json",
        "--name",
        name,
        "--interface",
        addr,
        "--room",
        room,
        "--service-type",
        service,
        "--data-dir",
        str(home / "data"),
    ]


def _p2pchat_env(home: Path) -> dict[str, str]:
    """The environment of one p2pchat node: this checkout first on PYTHONPATH, and
    every per-user folder (downloads included, should ``--download-dir`` be missing)
    in ``home``."""
    from p2pchat.harness import env_with_path

    env = env_with_path(REPO)
    env["HOME"] = str(home)
    for var, sub in (
        ("XDG_DATA_HOME", "xdg-data"),
        ("XDG_CONFIG_HOME", "xdg-config"),
        ("XDG_CACHE_HOME", "xdg-cache"),
        ("XDG_STATE_HOME", "xdg-state"),
        ("XDG_DOWNLOAD_DIR", "downloads"),
    ):
        env[var] = str(home / sub)
    return env


def probe_p2pchat(ctx: Ctx) -> tuple[bool, bool]:
    """Whether p2pchat here has ``/get`` (its ``/help`` lists it) and the
    ``--download-dir`` option: one node on the sender's loopback, no mDNS.

    Raises:
        Unavailable: it has no ``/send`` (:data:`UNAVAILABLE_NO_SEND`), or
            the node did not start or answer (with its output)."""
    from p2pchat.harness import WaitFailed

    home = ctx.tmp / "probe"
    home.mkdir()
    help_out = subprocess.run(
        [sys.executable, "-m", "p2pchat", "--help"],
        capture_output=True,
        text=True,
        timeout=PROBE_DEADLINE_S,
        env=_p2pchat_env(home),
        cwd=str(REPO),
        check=False,
    ).stdout
    argv = [sys.executable, "-m", "p2pchat", "--json", "--name", "probe", "--ephemeral"]
    argv += ["--no-mdns", "--interface", "127.0.0.1", "--port", "0"]
    node = ctx.spawn(0, argv, "probe", env=_p2pchat_env(home))
    try:
        node.wait_event("ready", timeout_s=PROBE_DEADLINE_S)
        node.send_line("/help")
        text = str(node.wait_event("help", timeout_s=PROBE_DEADLINE_S).get("text", ""))
    except WaitFailed as exc:
        raise Unavailable(f"not available (the probe node did not answer: {exc})") from None
    finally:
        _stop([node])
    if re.search(r"^\s*/send\b", text, re.M) is None:
        raise Unavailable(UNAVAILABLE_NO_SEND)
    return re.search(r"^\s*/get\b", text, re.M) is not None, "--download-dir" in help_out


def _progress_fraction(ev: dict[str, Any], size: int) -> float:
    """How much of the file a ``file_progress`` event says is here (0 when it does not
    say in a way this bench knows: a fraction, a percent, or bytes of the size)."""
    for key in ("fraction", "progress"):
        v = ev.get(key)
        if isinstance(v, int | float) and 0 <= v <= 1:
            return float(v)
    v = ev.get("percent")
    if isinstance(v, int | float):
        return float(v) / 100
    total = ev.get("size") if isinstance(ev.get("size"), int) else size
    for key in ("done_bytes", "received", "have", "done", "bytes", "bytes_done"):
        v = ev.get(key)
        if isinstance(v, int) and total:
            return v / total
    return 0.0


def run_p2pchat(ctx: Ctx, n: int, tag: str) -> Trial:
    """p2pchat on the sender and on hosts 1..n, linked over mDNS; ``/send`` then ``/get``.

    Raises:
        Unavailable: the sender answered ``/send`` with "unknown command"."""
    from p2pchat.harness import WaitFailed

    room = f"bench-{secrets.token_hex(3)}"
    service = f"_p2pb{secrets.token_hex(4)}._tcp.local."
    nodes = []
    try:
        for i in range(n + 1):
            home = ctx.tmp / f"p2p-{tag}-{i}"
            name = "s" if i == 0 else f"r{i}"
            argv = _p2pchat_argv(name, ctx.addr(i), room, service, home)
            if ctx.download_dir_flag:
                argv += ["--download-dir", str(home / "downloads")]
            argv += ctx.p2pchat_args
            nodes.append(ctx.spawn(i, argv, name, env=_p2pchat_env(home)))
        setup_s = wait_meshed(nodes)
        print(f"  {n + 1} nodes linked in {setup_s:.1f} s", file=sys.stderr)
        sender, receivers = nodes[0], nodes[1:]
        seen = len(sender.events)
        start = time.monotonic()
        sender.send_line(f"/send {ctx.source}")
        stopper = ctx.stopper(sender.proc.pid, start)
        asked: list[str | None] = [None] * n
        after_get = [0] * n  # each receiver's events before its /get
        ends: list[float] = [math.nan] * n
        done: list[dict[str, Any] | None] = [None] * n
        failures: list[str | None] = [None] * n
        deadline = start + ctx.timeout_s
        try:
            while time.monotonic() < deadline:
                for p in nodes:
                    p.pump()
                now = time.monotonic()
                for ev in sender.events[seen:]:
                    if ev.get("event") != "error":
                        continue
                    if "unknown command" in str(ev.get("text")):
                        raise Unavailable(UNAVAILABLE_NO_SEND)
                    failures = [f"the sender refused /send: {ev.get('text')}"] * n
                seen = len(sender.events)
                fraction = 0.0
                for k, r in enumerate(receivers):
                    if asked[k] is None and (offers := r.of("file_offer")):
                        asked[k] = str(offers[-1]["file"])
                        after_get[k] = len(r.events)
                        r.send_line(f"/get {asked[k]}")
                    if asked[k] is None or failures[k] is not None or done[k] is not None:
                        continue
                    for ev in r.events[after_get[k] :]:
                        kind = ev.get("event")
                        if kind == "error" and "unknown command" in str(ev.get("text")):
                            raise Unavailable(UNAVAILABLE_NO_GET)
                        if kind == "error":
                            failures[k] = f"receiver {k + 1}: /get refused: {ev.get('text')}"
                        elif ev.get("file") != asked[k]:
                            continue
                        elif kind == "file_progress":
                            fraction = max(fraction, _progress_fraction(ev, ctx.size))
                        elif kind == "file_done":
                            ends[k], done[k] = now, ev
                        elif kind == "file_failed":
                            failures[k] = f"receiver {k + 1}: failed: {ev.get('reason')}"
                        if failures[k] is not None or done[k] is not None:
                            break
                stopper.check(now, fraction)
                if all(d is not None or f is not None for d, f in zip(done, failures, strict=True)):
                    break
                sender.pump(POLL_S)
        finally:
            stopper.resume()
        print_files_stats(nodes)
        trial = Trial("p2pchat", n, [], [])
        for k in range(n):  # the copies are checked once every clock has stopped
            ev = done[k]
            if failures[k] is None and ev is not None and _copy_differs(ev, ctx):
                failures[k] = f"receiver {k + 1}: the copy differs ({ev.get('path')})"
            if failures[k] is not None:
                trial.failures.append(str(failures[k]))
                trial.times_s.append(math.nan)
            elif ev is None:
                what = "no offer" if asked[k] is None else "no file_done"
                trial.failures.append(f"receiver {k + 1}: {what} after {ctx.timeout_s:.0f} s")
                trial.times_s.append(math.nan)
            else:
                trial.times_s.append(ends[k] - start)
        return stopper.fill(trial)
    except WaitFailed as exc:
        return Trial("p2pchat", n, [math.nan] * n, [_first_line(exc)])
    finally:
        _stop(nodes)
        for i in range(n + 1):
            shutil.rmtree(ctx.tmp / f"p2p-{tag}-{i}", ignore_errors=True)


def files_stats(nodes: Sequence[Any]) -> dict[str, dict[str, int]]:
    """Each node's file-transfer counters, by its label: ``/stats``'s ``files``
    counters with the ``file_*``/``data_*`` refusals, link refusals and rate limits
    (nonzero only); a node that does not answer within :data:`STATS_DEADLINE_S`
    is left out."""
    from p2pchat.harness import WaitFailed

    for p in nodes:
        if p.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                p.send_line("/stats")
    out: dict[str, dict[str, int]] = {}
    for p in nodes:
        try:
            ev = p.wait_event("stats", timeout_s=STATS_DEADLINE_S)
        except WaitFailed:
            continue
        counts: dict[str, int] = {}
        files = ev.get("files")
        if isinstance(files, dict):
            counts.update({str(k): int(v) for k, v in files.items() if v})
        for kind in ("frames_refused", "rate_limited", "links_refused"):
            found = ev.get(kind)
            if isinstance(found, dict):
                for k, v in found.items():
                    if v and str(k).startswith(("file_", "data_", "bad_")):
                        counts[f"{kind}.{k}"] = int(v)
        out[p.label] = counts
    return out


def print_files_stats(nodes: Sequence[Any]) -> None:
    """Print :func:`files_stats` to stderr, one line per node (where the time went:
    chunks served by whom, swarm timeouts and declines, refusals)."""
    for label, counts in files_stats(nodes).items():
        text = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print(f"  stats {label}: {text}", file=sys.stderr)


def _copy_differs(ev: dict[str, Any], ctx: Ctx) -> bool:
    """Whether the file a ``file_done`` event names is not the source: its ``sha256``
    field, and the file itself hashed by this bench (a missing path counts as different)."""
    if ev.get("sha256") != ctx.sha256:
        return True
    path = ev.get("path")
    if not isinstance(path, str) or not Path(path).is_file():
        return True
    return sha256_of(Path(path)) != ctx.sha256


# -- the driver -------------------------------------------------------------------------


@contextlib.contextmanager
def lab(hosts: int, rate_bps: int) -> Iterator[Any]:
    """The shaped lab of ``hosts`` hosts; torn down (processes, namespaces) on exit."""
    with netns_lab().lan(hosts, prefix=NS_PREFIX, net24=NET24) as net:
        shape(net, rate_bps)
        yield net


def measure(args: argparse.Namespace, setup: Setup) -> list[Trial]:
    """Build the lab, write the file and run every measurement; return the trials."""
    size = setup.size_bytes
    server_s = wire_seconds(size, setup.rate_bps) * max(setup.counts)
    timeout_s = args.timeout or 5 * server_s + setup.interrupt_s + 30
    trials: list[Trial] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-files-") as tmpname,
        lab(1 + max(setup.counts), setup.rate_bps) as net,
    ):
        tmp = Path(tmpname)
        os.chmod(tmp, 0o755)
        (tmp / "src").mkdir()
        source = tmp / "src" / "bench-file.bin"
        print(f"writing {size / MB:g} MB of random bytes ...", file=sys.stderr, flush=True)
        digest = make_source(source, size)
        ctx = Ctx(net, source, digest, size, tmp, setup.rate_bps, setup.interrupt_s, timeout_s)
        ctx.p2pchat_args = list(args.p2pchat_arg)
        ctx.interrupt_after_s = setup.interrupt_after_s
        want_p2pchat = args.p2pchat
        if want_p2pchat:
            try:
                has_get, ctx.download_dir_flag = probe_p2pchat(ctx)
                if not has_get:
                    raise Unavailable(UNAVAILABLE_NO_GET)
            except Unavailable as exc:
                setup.unavailable["p2pchat"] = str(exc)
                want_p2pchat = False
        for run in range(setup.runs):
            tag = f"r{run}"
            print(f"run {run + 1}/{setup.runs}: tcp copy ...", file=sys.stderr, flush=True)
            trials.append(run_tcp(ctx, tag))
            for n in setup.counts:
                order = ["server", "p2pchat"] if (run + n) % 2 == 0 else ["p2pchat", "server"]
                for system in order:
                    if system == "p2pchat" and not want_p2pchat:
                        continue
                    print(
                        f"run {run + 1}/{setup.runs}: {system}, {n} receiver(s) ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    if system == "server":
                        trials.append(run_server(ctx, n, f"{tag}-{n}", setup.client == "curl"))
                        continue
                    try:
                        trials.append(run_p2pchat(ctx, n, f"{tag}-{n}"))
                    except Unavailable as exc:
                        setup.unavailable["p2pchat"] = str(exc)
                        want_p2pchat = False
            if not want_p2pchat and "p2pchat" not in setup.unavailable:
                setup.unavailable["p2pchat"] = "not measured (--no-p2pchat)"
    if not args.p2pchat:
        setup.unavailable["p2pchat"] = "not measured (--no-p2pchat)"
    return trials


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench (or, with a hidden ``--worker-*`` flag, one worker); exit status
    0 when it measured (whatever the figures), 1 when it could not, 2 when the
    machine lacks what it needs (root, iproute2) or an option is bad."""
    args = parse_args(argv)
    if args.worker_tcp_recv:
        return worker_tcp_recv(args.addr, args.path)
    if args.worker_tcp_send:
        return worker_tcp_send(args.addr, args.port, args.path)
    if args.worker_http:
        return worker_http(args.addr, args.path)
    if args.worker_get:
        return worker_get(args.url, args.path)
    why = missing_tools()
    if why:
        print(f"bench_files.py: {why}", file=sys.stderr)
        return 2
    if args.cleanup:
        removed = cleanup()
        print(f"removed {len(removed)} namespace(s){': ' if removed else ''}{' '.join(removed)}")
        return 0
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(
            "bench_files.py: --plot needs matplotlib, which is not installed "
            "(python3 -m pip install matplotlib); measuring without the plot",
            file=sys.stderr,
        )
        args.plot = None
    setup = Setup(
        size_bytes=round(args.size * MB),
        rate_bps=args.rate,
        runs=args.runs,
        counts=args.receivers,
        interrupt_s=args.interrupt_sender,
        interrupt_after_s=args.interrupt_after,
        client="curl" if shutil.which("curl") else "urllib",
    )

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so that every ``finally`` tears the lab down

    signal.signal(signal.SIGTERM, on_term)
    try:
        trials = measure(args, setup)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # BenchError, LabError
        print(f"bench_files.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_files.py: interrupted", file=sys.stderr)
        return 130
    summary = summarize(trials)
    print(format_table(setup, summary), flush=True)
    if args.plot:
        plot(args.plot, setup, summary)
        print(f"plot written to {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(json_result(setup, summary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
