#!/usr/bin/env python3
"""How fast do hosts of one LAN find each other and form their mesh?

Builds ``--hosts`` network namespaces on one bridge (10.x addresses inside
them only, see ``tests/netns_lab.py``; needs root and iproute2), starts one
``p2pchat --ephemeral --json`` per host, all at once or ``--stagger`` seconds
apart (as people do), with real mDNS on the bridge and a service type of this
run only, and measures:

* **ready**: from the first start until every node reported ``ready``
  (process start-up, imports, mDNS registration);
* **mesh after the last start**: from the moment the last process was
  started until every node shows every other as a member and has at least
  one link (issue 6's goal: 2 s);
* **mesh after the last ready**: the same, counted from the last ``ready``
  (what is left once the processes are up: mDNS browsing, resolving,
  dialling, handshakes, joins);
* **links**: direct links in the mesh at that moment (each pair once);
* **max links**: the most links one node has at that moment (the bounded
  overlay keeps it at 12 or fewer, ``docs/protocol.md`` §8).

Medians over ``--runs``; with ``--json`` one last line with a JSON object.
Every process is stopped and every namespace removed, also on failure or
Ctrl+C.  Example::

    sudo python scripts/bench_discovery.py --hosts 10 --runs 3
    sudo python scripts/bench_discovery.py --hosts 60   # issue 12's goal: within 60 s, <= 12 links
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2pchat.harness import NodeProcess, WaitFailed, env_with_path, stop, wait_until

REPO = Path(__file__).resolve().parent.parent
READY_DEADLINE_S = 120.0  # 60 processes starting at once on a small machine
MESH_DEADLINE_S = 60.0
STOP_TIMEOUT_S = 5.0


def _netns_lab() -> Any:
    """The namespace lab of the tests (``tests/netns_lab.py``)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("netns_lab")


def one_run(n_hosts: int, stagger_s: float = 0.0) -> dict[str, float]:
    """Start ``n_hosts`` nodes in their namespaces, ``stagger_s`` seconds
    apart (0: at once); return the figures (s).

    Raises:
        WaitFailed: the nodes were not ready, or not meshed, within the deadlines.
    """
    netns_lab = _netns_lab()
    room = f"disc-{secrets.token_hex(4)}"
    service_type = f"_p2pd{secrets.token_hex(4)}._tcp.local."
    with netns_lab.lan(n_hosts) as net:
        nodes: list[NodeProcess] = []
        try:
            first = time.monotonic()
            for i in range(n_hosts):
                if i and stagger_s:
                    time.sleep(stagger_s)  # the driver's pacing, as people start it
                    for n in nodes:
                        n.pump()
                argv = [sys.executable, "-m", "p2pchat", "--ephemeral", "--name", f"host{i}"]
                argv += ["--room", room, "--json", "--service-type", service_type]
                popen = functools.partial(net.popen, i)
                nodes.append(
                    NodeProcess.spawn(
                        argv, f"host{i}", cwd=str(REPO), env=env_with_path(REPO), popen=popen
                    )
                )
            last_start = time.monotonic()
            wait_until(
                lambda: all(n.ready_event is not None for n in nodes),
                READY_DEADLINE_S,
                "every node ready",
                nodes,
                settle_s=0,
            )
            last_ready = time.monotonic()

            def meshed() -> bool:
                ids = {str(n.node_id) for n in nodes}
                return all(ids - {str(n.node_id)} <= n.members() and n.linked() for n in nodes)

            wait_until(meshed, MESH_DEADLINE_S, "every node sees every other", nodes, settle_s=0)
            done = time.monotonic()
            now = {str(n.node_id): n.links_now() for n in nodes}
            links = {frozenset((a, b)) for a, peers in now.items() for b in peers}
            return {
                "ready_s": last_ready - first,
                "mesh_after_last_start_s": done - last_start,
                "mesh_after_last_ready_s": done - last_ready,
                "links": float(len(links)),
                "max_links": float(max(len(p) for p in now.values())),
            }
        finally:
            stop(nodes, STOP_TIMEOUT_S)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time for hosts in network namespaces to find each other over mDNS "
        "and form their mesh (needs root).",
    )
    p.add_argument("--hosts", type=int, default=10, help="hosts (network namespaces), 2..60")
    p.add_argument("--runs", type=int, default=1, help="runs, 1..10; figures are medians")
    p.add_argument(
        "--stagger", type=float, default=0.0, help="seconds between two starts, 0..10 (0: at once)"
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line of medians")
    args = p.parse_args(argv)
    if not 2 <= args.hosts <= 60 or not 1 <= args.runs <= 10 or not 0 <= args.stagger <= 10:
        p.error("--hosts must be 2..60, --runs 1..10 and --stagger 0..10")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement; exit 0, or 1 if a run failed, 2 if namespaces are unavailable."""
    args = parse_args(argv)
    ok, why = _netns_lab().netns_available()
    if not ok:
        print(f"bench_discovery.py: cannot build network namespaces: {why}", file=sys.stderr)
        return 2
    results: list[dict[str, float]] = []
    try:
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}: {args.hosts} hosts ...", file=sys.stderr)
            results.append(one_run(args.hosts, args.stagger))
    except WaitFailed as exc:
        print(f"bench_discovery.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_discovery.py: interrupted", file=sys.stderr)
        return 130
    medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
    start = f"started {args.stagger:g} s apart" if args.stagger else "started at once"
    print(f"{args.hosts} hosts in network namespaces, real mDNS, {start}; ", end="")
    print(f"median of {args.runs} run(s)")
    print(f"  every node ready after the first start   {medians['ready_s']:6.2f} s")
    print(f"  mesh formed after the last start         {medians['mesh_after_last_start_s']:6.2f} s")
    print(f"  mesh formed after the last node is ready {medians['mesh_after_last_ready_s']:6.2f} s")
    print(f"  direct links                             {medians['links']:6.0f}")
    print(f"  most links of one node                   {medians['max_links']:6.0f}")
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in medians.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
