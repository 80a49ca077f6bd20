"""A simulated run: its settings, its schedule of starts, lines and faults,
and the report (the JSON ``python -m p2pchat.sim --json`` prints).

The schedule is drawn from one ``random.Random(seed)`` in a fixed order, so
one seed gives one run, event for event.  Phases, in virtual seconds:

1. **warm-up** (``warmup_s``): honest nodes start over ``start_spread_s``,
   each finding peers as mDNS would show them (or its ``topology``
   neighbours); hostile nodes link to two honest nodes at its end;
2. **traffic**: ``lines`` lines at ``rate`` lines/s from ``senders`` nodes,
   with the faults (partitions and their heals, link cuts, crashes and
   restarts, late joiners) spread over the same span;
3. **settle**: runs until every honest line is shown everywhere, the
   overlay is one connected graph and ``/history`` is the same on every
   node (at most ``settle_s``);
4. **idle** (``idle_s``): nothing typed; frames counted per node per second.

Then, after settling again if the idle time changed something (at most
``settle_s`` more), the invariants are checked (:mod:`p2pchat.sim.observe`).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pchat import identity
from p2pchat.core.config import NodeConfig
from p2pchat.core.protocol import Protocol
from p2pchat.sim.api import CoreFactory
from p2pchat.sim.hostile import Attacker, identity_from
from p2pchat.sim.lan import Host, Lan
from p2pchat.sim.observe import Observer, overlay

TOPOLOGIES = ("mdns", "full", "random-k", "line", "ring")
"""What each node finds at start: an mDNS-like random sample, everyone, or
the neighbours of a fixed graph."""


@dataclass
class SimConfig:
    """Settings of one run (the CLI's options; times in virtual seconds).

    Attributes:
        nodes: honest nodes.
        lines: lines sent in all.
        seed: the run's seed.
        rate: lines per second, the whole room together.
        senders: nodes that send (0 = every node may).
        topology: one of :data:`TOPOLOGIES`.
        degree: neighbours per node of ``random-k``.
        mdns_sample: most peers a node finds at start under ``mdns`` (all
            when the room is smaller).
        latency: one-way link latency in milliseconds, ``fixed:X``,
            ``uniform:LO:HI`` or ``exp:MEAN`` (drawn once per link).
        partitions: how many times the room splits in two (one after another).
        partition_s: how long each split lasts.
        cuts: single links broken at random times.
        crashes: nodes crashed at random times (each restarts after
            ``down_s`` with its store and key).
        late: nodes that start during the traffic instead of the warm-up.
        hostile: attacks, one hostile node each (``p2pchat.sim.hostile.ATTACKS``).
        hostile_period: seconds between an attacker's rounds.
        warmup_s, start_spread_s, settle_s, idle_s: the phases (module docstring).
        broadcast: the nodes' broadcast (``tree`` or ``flood``).
        sig_cache: share one cache of signature checks between all nodes
            (a check's answer does not depend on who asks).
        cpu_us: microseconds a node takes to handle one frame (0: none), one
            frame at a time per node, so that load makes queues.
    """

    nodes: int = 20
    lines: int = 100
    seed: int = 1
    rate: float = 20.0
    senders: int = 0
    topology: str = "mdns"
    degree: int = 3
    mdns_sample: int = 32
    latency: str = "uniform:0.5:5"
    partitions: int = 0
    partition_s: float = 5.0
    cuts: int = 0
    crashes: int = 0
    down_s: float = 3.0
    late: int = 0
    hostile: list[str] = field(default_factory=list)
    hostile_period: float = 0.5
    warmup_s: float = 5.0
    start_spread_s: float = 1.0
    settle_s: float = 60.0
    idle_s: float = 10.0
    broadcast: str = "tree"
    sig_cache: bool = True
    cpu_us: float = 0.0


def parse_latency(spec: str) -> Callable[[random.Random], float]:
    """A latency sampler (seconds) from ``fixed:X``, ``uniform:LO:HI`` or
    ``exp:MEAN`` (milliseconds).

    Raises:
        ValueError: another form, or a negative figure.
    """
    kind, *args = spec.split(":")
    try:
        nums = [float(a) / 1000.0 for a in args]
    except ValueError:
        raise ValueError(f"bad latency {spec!r}") from None
    if any(n < 0 for n in nums):
        raise ValueError(f"negative latency in {spec!r}")
    if kind == "fixed" and len(nums) == 1:
        return lambda rng: nums[0]
    if kind == "uniform" and len(nums) == 2 and nums[0] <= nums[1]:
        return lambda rng: rng.uniform(nums[0], nums[1])
    if kind == "exp" and len(nums) == 1 and nums[0] > 0:
        return lambda rng: rng.expovariate(1.0 / nums[0])
    raise ValueError(f"bad latency {spec!r} (fixed:MS, uniform:LO:HI or exp:MEAN)")


def real_core() -> CoreFactory:
    """The product's core, :class:`p2pchat.core.protocol.Protocol`."""
    return Protocol


SIG_CACHE_ENTRIES = 1 << 16
"""Signature checks the shared cache keeps (a run of 1,000 nodes makes about
5,000 signed messages)."""


class Run:
    """One simulated run: build it, then :meth:`go` returns the report.

    Args:
        cfg: the settings.
        make_core: the core to run (default: the product's).
    """

    def __init__(self, cfg: SimConfig, make_core: CoreFactory | None = None) -> None:
        if cfg.nodes < 2 or cfg.lines < 0 or cfg.rate <= 0:
            raise ValueError("need at least 2 nodes, lines >= 0 and a positive rate")
        if cfg.topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {cfg.topology!r}")
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.obs = Observer(cfg.nodes + len(cfg.hostile))
        self.lan = Lan(
            random.Random(self.rng.getrandbits(64)),
            parse_latency(cfg.latency),
            make_core or real_core(),
            self.obs,
            functools.lru_cache(maxsize=SIG_CACHE_ENTRIES)(identity.verify)
            if cfg.sig_cache
            else None,
            cfg.cpu_us / 1e6,
        )
        self.honest: list[Host] = []
        for i in range(cfg.nodes):
            config = NodeConfig(name=f"n{i}", room="sim", broadcast=cfg.broadcast)
            self.honest.append(self.lan.add_host(identity_from(self.rng), config))
        self.neighbours = self._topology()
        self.traffic_s = max(1.0, cfg.lines / cfg.rate)
        self.end_of_schedule = cfg.warmup_s + self.traffic_s
        self.attackers: list[Attacker] = []
        self.crashed = 0

    # -- the schedule -----------------------------------------------------------------

    def _topology(self) -> list[list[int]] | None:
        n, kind = self.cfg.nodes, self.cfg.topology
        if kind == "mdns":
            return None
        if kind == "full":
            return [[j for j in range(n) if j != i] for i in range(n)]
        if kind in ("line", "ring"):
            nb: list[set[int]] = [set() for _ in range(n)]
            for i in range(n - 1 if kind == "line" else n):
                j = (i + 1) % n
                nb[i].add(j)
                nb[j].add(i)
            return [sorted(s - {i}) for i, s in enumerate(nb)]
        nb = [set() for _ in range(n)]
        for i in range(n):
            for j in self.rng.sample([j for j in range(n) if j != i], min(self.cfg.degree, n - 1)):
                nb[i].add(j)
                nb[j].add(i)
        return [sorted(s) for s in nb]

    def discover(self, host: Host) -> None:
        """``host`` (just started) finds peers, and some running peers find it."""
        lan, cfg = self.lan, self.cfg
        if self.neighbours is not None:
            for j in self.neighbours[host.idx]:
                self.found(host, self.honest[j])
                self.found(self.honest[j], host)
            return
        running = [h for h in self.honest if h.core is not None and h is not host]
        k = min(cfg.mdns_sample, len(running))
        for peer in lan.rng.sample(running, k):
            self.found(host, peer)
        for peer in lan.rng.sample(running, k):
            self.found(peer, host)

    def found(self, host: Host, peer: Host) -> None:
        """``host`` finds ``peer`` (as its mDNS browser would)."""
        now = self.lan.now
        self.lan.call(host, lambda c: c.found(peer.node_id, [peer.addr], peer.config.port, now))

    def _start(self, host: Host) -> None:
        self.lan.start(host)
        self.discover(host)

    def _crash(self) -> None:
        up = [h for h in self.honest if h.core is not None]
        if len(up) < 2:
            self.lan.note("crash_skipped")
            return
        host = self.lan.rng.choice(up)
        self.crashed += 1
        self.obs.crashing(host)
        self.lan.crash(host)
        self.lan.at(self.lan.now + self.cfg.down_s, self._start, host)

    def _partition(self, side: set[int]) -> None:
        for host in self.honest:
            host.group = 1 if host.idx in side else 0
        for end in self.lan.links():
            peer = end.peer
            if peer is not None and end.host.group != peer.host.group:
                self.lan.cut(end, "partition")

    def _heal(self) -> None:
        for host in self.lan.hosts:
            host.group = 0
        self.obs.heal_at = self.lan.now
        for host in self.honest:
            if host.core is not None:
                self.discover(host)

    def _cut(self) -> None:
        links = self.lan.links()
        if links:
            self.lan.cut(self.lan.rng.choice(links), "cut")

    def _line(self, i: int, pool: list[Host]) -> None:
        up = [h for h in pool if h.core is not None]
        if not up:
            self.lan.note("line_not_sent")
            return
        host = up[i % len(up)]
        lan = self.lan
        lan.call(
            host, lambda c: c.send_line(f"line {i} from n{host.idx}", False, lan.now, lan.wall)
        )

    def _sample(self) -> None:
        self.obs.sample_state(self.lan)
        self.lan.at(self.lan.now + 1.0, self._sample)

    def schedule(self) -> None:
        """Put the whole run's plan on the LAN's heap (draws in a fixed order)."""
        cfg, lan, rng = self.cfg, self.lan, self.rng
        t0, span = cfg.warmup_s, self.traffic_s
        late = set(rng.sample(range(cfg.nodes), min(cfg.late, cfg.nodes - 2)))
        for host in self.honest:
            if host.idx in late:
                at = rng.uniform(t0, t0 + span)
            else:
                at = rng.uniform(0.0, cfg.start_spread_s)
            lan.at(at, self._start, host)
        pool = list(self.honest)
        if cfg.senders:
            pool = rng.sample(self.honest, min(cfg.senders, cfg.nodes))
        for i in range(cfg.lines):
            lan.at(t0 + i / cfg.rate, self._line, i, pool)
        for k in range(cfg.partitions):
            slot = span / cfg.partitions
            start = t0 + k * slot + rng.uniform(0, max(0.0, slot - cfg.partition_s) / 2)
            side = set(rng.sample(range(cfg.nodes), cfg.nodes // 2))
            lan.at(start, self._partition, side)
            lan.at(start + cfg.partition_s, self._heal)
            self.end_of_schedule = max(self.end_of_schedule, start + cfg.partition_s)
        for _ in range(cfg.cuts):
            lan.at(rng.uniform(t0, t0 + span), self._cut)
        for _ in range(cfg.crashes):
            at = rng.uniform(t0, t0 + span)
            lan.at(at, self._crash)
            self.end_of_schedule = max(self.end_of_schedule, at + cfg.down_s)
        for attack in cfg.hostile:
            host = lan.add_host(identity_from(rng), self.honest[0].config, honest=False)
            attacker = Attacker(
                lan, host, attack, random.Random(rng.getrandbits(64)), cfg.hostile_period
            )
            self.obs.hostile_kind[host.node_id] = attack
            targets = rng.sample(self.honest, min(len(self.honest), 20))
            attacker.start(targets, max(0.0, t0 - 1.0), t0 + span)
            self.attackers.append(attacker)
        lan.at(0.5, self._sample)

    # -- the run ----------------------------------------------------------------------

    def history_n(self) -> int:
        """How many lines of ``/history`` to compare: all the room's lines."""
        return len(self.obs.honest_lines) + 100 * len(self.cfg.hostile) + 10

    def _settled(self) -> bool:
        """Every line everywhere, one connected overlay, one ``/history``
        (the costlier checks only once the cheaper hold)."""
        obs, lan = self.obs, self.lan
        return (
            obs.delivered_all(self.honest)
            and overlay(lan)["parts"] <= 1
            and len(obs.history_variants(self.honest, self.history_n())) <= 1
        )

    def go(self) -> dict[str, Any]:
        """Run it and return the report (a JSON-ready dict; ``ok`` is True
        iff every invariant holds)."""
        cfg, lan, obs = self.cfg, self.lan, self.obs
        self.schedule()
        lan.run(self.end_of_schedule)
        settle_end = lan.now + cfg.settle_s
        while lan.now < settle_end and not self._settled():
            lan.run(min(settle_end, lan.now + 0.5))
        settled_at = lan.now
        frames0, bytes0 = obs.idle_mark(self.honest)
        kinds0 = dict(obs.kinds)
        lan.run(lan.now + cfg.idle_s)
        frames1, bytes1 = obs.idle_mark(self.honest)
        kinds1 = dict(obs.kinds)
        # Anything in flight at the first check (an attacker's last frames)
        # may have changed a node since: settle again before judging.
        settle_end = lan.now + cfg.settle_s
        while lan.now < settle_end and not self._settled():
            lan.run(min(settle_end, lan.now + 0.5))
        obs.sample_state(lan)
        graph = overlay(lan)
        per = max(1.0, cfg.idle_s) * len(self.honest)
        idle: dict[str, Any] = {
            "frames_per_node_per_s": round((frames1 - frames0) / per, 3),
            "bytes_per_node_per_s": round((bytes1 - bytes0) / per, 1),
            "frames_by_kind_per_node_per_s": {
                k: round((n - kinds0.get(k, 0)) / per, 3)
                for k, n in sorted(kinds1.items())
                if n > kinds0.get(k, 0)
            },
        }
        lines_n = len(obs.honest_lines)
        invariants = obs.invariants(lan, self.honest, self.history_n())
        invariants["overlay_connected"] = {"ok": graph["parts"] <= 1, "parts": graph["parts"]}
        stats: dict[str, Any] = {}
        for host in self.honest:
            if host.core is not None:
                _add_into(stats, host.core.stats_counts())
        return {
            "ok": all(v["ok"] for v in invariants.values()),
            "invariants": invariants,
            "figures": {**obs.figures(self.honest, lines_n, idle), "overlay_at_end": graph},
            "run": {
                "lines_sent": lines_n,
                "sim_s": round(lan.now, 3),
                "settled_at_s": round(settled_at, 3),
                "settle_s": round(settled_at - self.end_of_schedule, 3),
                "events": lan.events,
                "links_up": lan.links_up,
                "dials": lan.dials,
                "dials_failed": dict(sorted(lan.dials_refused.items())),
                "closes": dict(sorted(lan.closes.items())),
                "crashes": self.crashed,
                "bad_frames": lan.bad_frames,
                "frames_sent": lan.frames_sent,
                "bytes_sent": lan.bytes_sent,
                "anomalies": dict(sorted(lan.anomalies.items())),
                "trace": obs.trace.hexdigest()[:16],
            },
            "hostile": {
                a.attack: {
                    "frames_sent": a.sent,
                    "refused": a.refused,
                    "shown_by_honest": obs.hostile_shown.get(a.attack, 0),
                }
                for a in self.attackers
            },
            "core_stats": stats,
            "config": dataclasses.asdict(cfg),
        }


def _add_into(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add_into(total.setdefault(key, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


def run(cfg: SimConfig, make_core: CoreFactory | None = None) -> dict[str, Any]:
    """Run ``cfg`` and return its report (see :class:`Run`)."""
    return Run(cfg, make_core).go()
