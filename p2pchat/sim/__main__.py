"""``python -m p2pchat.sim``: run the protocol core on a simulated LAN.

Example::

    python -m p2pchat.sim --nodes 1000 --lines 100 --seed 1 --json

Exit status 0 iff every invariant held (``docs/architecture.md``,
"The simulator"), 1 if one broke, 2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from p2pchat.sim.hostile import ATTACKS
from p2pchat.sim.scenario import TOPOLOGIES, SimConfig, parse_latency, run


def parse_args(argv: list[str] | None = None) -> tuple[SimConfig, bool, bool]:
    """The run's settings from the command line, and the ``--json`` and
    ``--timing`` flags (exits 2 on bad options)."""
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="python -m p2pchat.sim",
        description="Run the p2pchat protocol core on a deterministic simulated LAN.",
    )
    p.add_argument("--nodes", type=int, default=d.nodes, help="honest nodes")
    p.add_argument("--lines", type=int, default=d.lines, help="lines sent in all")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--rate", type=float, default=d.rate, help="lines per second, whole room")
    p.add_argument("--senders", type=int, default=d.senders, help="nodes that send (0 = all)")
    p.add_argument("--topology", choices=TOPOLOGIES, default=d.topology)
    p.add_argument("--degree", type=int, default=d.degree, help="neighbours for random-k")
    p.add_argument(
        "--mdns-sample",
        type=int,
        default=d.mdns_sample,
        help="peers a node finds at start (mdns topology)",
    )
    p.add_argument(
        "--latency",
        default=d.latency,
        help="one-way ms per link: fixed:X, uniform:LO:HI or exp:MEAN",
    )
    p.add_argument("--partitions", type=int, default=d.partitions)
    p.add_argument("--partition-s", type=float, default=d.partition_s)
    p.add_argument("--cuts", type=int, default=d.cuts)
    p.add_argument("--crashes", type=int, default=d.crashes)
    p.add_argument("--down-s", type=float, default=d.down_s)
    p.add_argument("--late", type=int, default=d.late, help="nodes that start late")
    p.add_argument("--hostile", default="", help=f"comma-separated attacks: {','.join(ATTACKS)}")
    p.add_argument("--hostile-period", type=float, default=d.hostile_period)
    p.add_argument("--warmup-s", type=float, default=d.warmup_s)
    p.add_argument("--start-spread-s", type=float, default=d.start_spread_s)
    p.add_argument("--settle-s", type=float, default=d.settle_s)
    p.add_argument("--idle-s", type=float, default=d.idle_s)
    p.add_argument("--broadcast", choices=("tree", "flood"), default=d.broadcast)
    p.add_argument(
        "--cpu-us",
        type=float,
        default=d.cpu_us,
        help="virtual µs a node takes per frame, one frame at a time (0: none)",
    )
    p.add_argument(
        "--no-sig-cache", action="store_true", help="every node checks every signature itself"
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="error",
        help="the nodes' log messages shown on stderr (default: errors only)",
    )
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.add_argument(
        "--timing", action="store_true", help="add the wall and CPU time (s) to the report"
    )
    a = p.parse_args(argv)
    attacks = [x for x in a.hostile.split(",") if x]
    bad = [x for x in attacks if x not in ATTACKS]
    if bad:
        p.error(f"unknown attack(s) {bad}; known: {', '.join(ATTACKS)}")
    try:
        parse_latency(a.latency)
    except ValueError as exc:
        p.error(str(exc))
    if a.nodes < 2:
        p.error("--nodes must be at least 2")
    cfg = SimConfig(
        nodes=a.nodes,
        lines=a.lines,
        seed=a.seed,
        rate=a.rate,
        senders=a.senders,
        topology=a.topology,
        degree=a.degree,
        mdns_sample=a.mdns_sample,
        latency=a.latency,
        partitions=a.partitions,
        partition_s=a.partition_s,
        cuts=a.cuts,
        crashes=a.crashes,
        down_s=a.down_s,
        late=a.late,
        hostile=attacks,
        hostile_period=a.hostile_period,
        warmup_s=a.warmup_s,
        start_spread_s=a.start_spread_s,
        settle_s=a.settle_s,
        idle_s=a.idle_s,
        broadcast=a.broadcast,
        sig_cache=not a.no_sig_cache,
        cpu_us=a.cpu_us,
    )
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("p2pchat").setLevel(a.log_level.upper())
    return cfg, a.json, a.timing


def main(argv: list[str] | None = None) -> int:
    """Run once; print the report (JSON, or a few lines); 0 iff it held."""
    cfg, as_json, timing = parse_args(argv)
    started, cpu = time.perf_counter(), time.process_time()
    report = run(cfg)
    if timing:
        report["wall_s"] = round(time.perf_counter() - started, 2)
        report["cpu_s"] = round(time.process_time() - cpu, 2)
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        f = report["figures"]
        print(f"ok: {report['ok']}")
        for name, inv in report["invariants"].items():
            print(f"  {name}: {'ok' if inv['ok'] else 'BROKEN'}")
        print(
            f"frames/node/line {f['frames_per_node_per_line']}, "
            f"duplicates/node/line {f['duplicates_per_node_per_line']}, "
            f"converge after heal {f['converge_after_heal_s']} s, "
            f"idle frames/node/s {f['idle']['frames_per_node_per_s']}"
        )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
