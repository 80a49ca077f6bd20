#!/usr/bin/env python3
"""What does an idle room cost each node?  Frames, bytes and CPU per second.

Starts ``--nodes`` processes ``p2pchat --json --ephemeral --no-mdns
--interface 127.0.0.1`` (loopback only), node j dialling ``--k`` random
earlier nodes by ``--peer`` (a random graph; ``--mdns``: every node finds the
others by mDNS on 127.0.0.1 instead, with a service type of this run only),
waits until every node shows every other as a member, lets the joins settle
for ``--settle`` seconds, then measures an idle ``--seconds`` window: frames
and bytes sent and received per node per second (from each node's ``/stats``)
and CPU % per node (from ``/proc/<pid>/stat``), and the links per node at the
end (``peer_up`` minus ``peer_down``). Medians (and the max) over the nodes;
with ``--json`` one last line with a JSON object.

``--code DIR`` runs the p2pchat package under DIR (a checkout, e.g. one made
by ``git archive``) instead of this one, to measure old and new alternately::

    python scripts/bench_idle.py --nodes 30 --seconds 20 --json
    git archive 99f2124 | tar -x -C /tmp/old && \\
        python scripts/bench_idle.py --nodes 30 --code /tmp/old --json

Every process is stopped at the end, also on failure or Ctrl+C.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2pchat.harness import NodeProcess, WaitFailed, env_with_path, pump_for, stop, wait_until

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def read_stats(nodes: Sequence[NodeProcess], timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Ask every node for ``/stats``; return each node's newest reply."""
    before = [len(n.of("stats")) for n in nodes]
    for n in nodes:
        n.send_line("/stats")
    wait_until(
        lambda: all(len(n.of("stats")) > b for n, b in zip(nodes, before, strict=True)),
        timeout_s,
        "every node's /stats",
        nodes,
        settle_s=0,
    )
    return [n.of("stats")[-1] for n in nodes]


def idle_figures(nodes: Sequence[NodeProcess], seconds: float) -> dict[str, float]:
    """Measure ``seconds`` of idle: per-node rates, medians and maxima.

    Returns:
        ``frames_out_per_s``, ``frames_in_per_s``, ``bytes_out_per_s``,
        ``cpu_pct`` (medians over the nodes), their ``*_max``, ``links_median``
        and ``links_max``.
    """
    s0 = read_stats(nodes)
    c0 = [cpu_seconds(n.proc.pid) for n in nodes]
    t0 = time.monotonic()
    pump_for(nodes, seconds)
    s1 = read_stats(nodes)
    c1 = [cpu_seconds(n.proc.pid) for n in nodes]
    dt = time.monotonic() - t0
    pairs = list(zip(s0, s1, strict=True))
    per: dict[str, list[float]] = {
        f"{key}_per_s": [(b[key] - a[key]) / dt for a, b in pairs]
        for key in ("frames_out", "frames_in", "bytes_out")
    }
    per["cpu_pct"] = [100.0 * (b - a) / dt for a, b in zip(c0, c1, strict=True)]
    out: dict[str, float] = {}
    for key, values in per.items():
        out[key] = round(statistics.median(values), 2)
        out[key + "_max"] = round(max(values), 2)
    links = [len(n.links_now()) for n in nodes]
    out["links_median"] = float(statistics.median(links))
    out["links_max"] = float(max(links))
    return out


def one_run(
    n: int,
    k: int,
    seconds: float,
    settle_s: float,
    seed: int,
    code: Path,
    mdns: bool = False,
    lines: int = 0,
) -> dict[str, float]:
    """Start the room, wait for it to form, measure the idle window.
    ``mdns``: the nodes find each other by mDNS on 127.0.0.1 (a service
    type of this run only) instead of ``--peer``.  ``lines``: chat lines
    each node sends before the settling time (so that duplicates prune the
    broadcast tree, as in a room that has talked)."""
    rng = random.Random(seed)
    room = f"idle-{secrets.token_hex(3)}"
    service_type = f"_p2pi{secrets.token_hex(4)}._tcp.local."
    nodes: list[NodeProcess] = []
    try:
        for j in range(n):
            argv = [sys.executable, "-m", "p2pchat", "--ephemeral", "--json"]
            argv += ["--interface", LOOPBACK, "--port", "0", "--room", room, "--name", f"n{j}"]
            if mdns:
                argv += ["--service-type", service_type]
            else:
                argv += ["--no-mdns"]
                for i in rng.sample(range(j), min(j, k)):
                    argv += ["--peer", f"{LOOPBACK}:{nodes[i].port}"]
            # cwd: `python -m` puts it first on sys.path, so it picks the code.
            node = NodeProcess.spawn(argv, f"n{j}", cwd=str(code), env=env_with_path(code))
            nodes.append(node)
            wait_until(lambda: nodes[-1].ready_event is not None, 30.0, "ready", nodes, settle_s=0)

        def formed() -> bool:
            ids = {str(p.node_id) for p in nodes}
            return all(ids - {str(p.node_id)} <= p.members() for p in nodes)

        formed_s = wait_until(formed, 60.0, "every node sees every other", nodes, settle_s=0)
        for i in range(lines):
            for node in nodes:
                node.send_line(f"line {i} from {node.label}")
        pump_for(nodes, settle_s)
        figures = idle_figures(nodes, seconds)
        figures["formed_s"] = round(formed_s, 2)
        return figures
    finally:
        stop(nodes)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Idle cost per node of a room on 127.0.0.1.")
    p.add_argument("--nodes", type=int, default=10, help="processes, 2..60")
    p.add_argument("--k", type=int, default=2, help="--peer links each new node dials")
    p.add_argument("--seconds", type=float, default=20.0, help="idle window measured")
    p.add_argument("--settle", type=float, default=10.0, help="seconds let pass before it")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mdns", action="store_true", help="find peers by mDNS on 127.0.0.1")
    p.add_argument("--lines", type=int, default=0, help="chat lines per node before the idle")
    p.add_argument("--code", type=Path, default=REPO, help="checkout whose p2pchat to run")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    if not 2 <= args.nodes <= 60 or args.k < 1 or args.seconds <= 0:
        p.error("--nodes must be 2..60, --k at least 1, --seconds positive")
    try:
        figures = one_run(
            args.nodes,
            args.k,
            args.seconds,
            args.settle,
            args.seed,
            args.code,
            args.mdns,
            args.lines,
        )
    except WaitFailed as exc:
        print(f"bench_idle.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    how = "mDNS" if args.mdns else f"random graph k={args.k}"
    print(f"{args.nodes} idle nodes on 127.0.0.1, {how}, {args.seconds:g} s:")
    for key, value in figures.items():
        print(f"  {key:24} {value:10.2f}")
    if args.json:
        head = {"nodes": args.nodes, "mdns": args.mdns, "lines": args.lines, "code": str(args.code)}
        print(json.dumps({**head, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
