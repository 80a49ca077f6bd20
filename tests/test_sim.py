"""The simulator (p2pchat/sim/): small rooms keep the invariants, one seed
gives one run, partitions heal, crashed nodes come back, hostile nodes are
refused, random schedules keep the invariants, and a 200-node run with
partitions and crashes passes.  The invariant checks themselves are tested
on stand-in cores that break them on purpose (tests/sim_fake.py)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_fake import NaiveCore

from p2pchat import wire
from p2pchat.core.actions import Action, Emit
from p2pchat.events import MessageEvent
from p2pchat.sim import SimConfig, run
from p2pchat.sim.api import CoreFactory
from p2pchat.sim.scenario import parse_latency, real_core

CORE: CoreFactory = real_core()


def sim(core: CoreFactory | None = None, **kw: Any) -> dict[str, Any]:
    """Run a small room on ``core`` (default: the one under test)."""
    kw.setdefault("idle_s", 3.0)
    return run(SimConfig(**kw), core or CORE)


def broken(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report["invariants"].items() if not v["ok"]}


@pytest.mark.parametrize("nodes", [5, 10, 20])
def test_a_small_room_shows_every_line_once_in_order_everywhere(nodes: int) -> None:
    report = sim(nodes=nodes, lines=40, seed=nodes)
    assert report["ok"], broken(report)
    assert report["run"]["lines_sent"] == 40
    assert report["invariants"]["history_identical"]["lines"] == 40
    # Each node but the sender gets at least one frame with each line.
    assert report["figures"]["frames_per_node_per_line"] >= (nodes - 1) / nodes


def test_one_seed_gives_one_run_event_for_event() -> None:
    cfg: dict[str, Any] = {
        "nodes": 12,
        "lines": 30,
        "partitions": 1,
        "crashes": 1,
        "cuts": 2,
        "late": 1,
        "hostile": ["replay", "equivocate"],
    }
    first = json.dumps(sim(seed=7, **cfg), sort_keys=True)
    assert first == json.dumps(sim(seed=7, **cfg), sort_keys=True)
    other = sim(seed=8, **cfg)
    assert other["run"]["trace"] != json.loads(first)["run"]["trace"]


def test_a_partition_heals_and_the_halves_converge() -> None:
    report = sim(nodes=12, lines=60, rate=10.0, partitions=1, partition_s=3.0, seed=3)
    assert report["ok"], broken(report)
    converge = report["figures"]["converge_after_heal_s"]
    assert converge is not None and 0.0 < converge < 10.0
    assert report["figures"]["shown_as_earlier"] > 0


def test_crashed_nodes_restart_with_their_store_and_catch_up() -> None:
    report = sim(nodes=10, lines=60, rate=10.0, crashes=3, down_s=2.0, seed=4)
    assert report["run"]["crashes"] == 3
    assert report["ok"], broken(report)


def test_late_joiners_and_cut_links() -> None:
    report = sim(nodes=10, lines=40, late=3, cuts=4, seed=5)
    assert report["ok"], broken(report)


@pytest.mark.parametrize("topology", ["full", "line", "ring", "random-k"])
def test_given_topologies(topology: str) -> None:
    report = sim(nodes=8, lines=20, topology=topology, seed=6)
    assert report["ok"], broken(report)


def test_hostile_nodes_are_refused_and_the_room_still_agrees() -> None:
    report = sim(nodes=10, lines=40, seed=9, hostile=["replay", "members", "future", "equivocate"])
    assert report["ok"], broken(report)
    hostile = report["hostile"]
    assert all(h["frames_sent"] > 0 for h in hostile.values())
    assert hostile["future"]["shown_by_honest"] == 0
    assert hostile["replay"]["shown_by_honest"] == 0
    assert report["core_stats"]["frames_refused"]["future"] > 0


def run_cli(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run(
        [sys.executable, "-m", "p2pchat.sim", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_the_cli_prints_the_report_and_exits_0_when_it_holds() -> None:
    args = ("--nodes", "8", "--lines", "12", "--seed", "2", "--partitions", "1", "--json")
    first = run_cli(*args, hash_seed="1")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["ok"] and report["run"]["lines_sent"] == 12
    # Another process, another string hash seed: the same run, event for event.
    assert run_cli(*args, hash_seed="2").stdout == first.stdout
    short = run_cli("--nodes", "4", "--lines", "3")
    assert short.returncode == 0 and "exactly_once: ok" in short.stdout


def test_the_cli_refuses_bad_options() -> None:
    for args in (["--nodes", "1"], ["--hostile", "nuke"], ["--latency", "gauss:1"]):
        done = run_cli(*args)
        assert done.returncode == 2, args
        assert "error" in done.stderr


def test_a_cost_per_frame_makes_queues_and_latency() -> None:
    burst: dict[str, Any] = {"nodes": 10, "lines": 200, "rate": 1e5, "senders": 1, "seed": 2}
    free = sim(**burst)
    busy = sim(**burst, cpu_us=300.0)
    assert free["ok"] and busy["ok"], (broken(free), broken(busy))
    # 200 lines reach a node as 200 frames or more: at least 60 ms of work each.
    assert busy["figures"]["latency_to_last_node_s"]["max"] > 0.06
    assert free["figures"]["latency_to_last_node_s"]["max"] < 0.05


def test_latency_specs() -> None:
    rng = random.Random(1)
    assert parse_latency("fixed:2")(rng) == 0.002
    assert 0.001 <= parse_latency("uniform:1:3")(rng) <= 0.003
    assert parse_latency("exp:5")(rng) >= 0
    for bad in ("fixed", "uniform:3:1", "exp:-1", "gauss:1:2", "fixed:x"):
        with pytest.raises(ValueError):
            parse_latency(bad)


# -- the checks catch a core that breaks them ------------------------------------------


class DoubleShow(NaiveCore):
    """Shows every received line twice."""

    def receive(self, link: Any, msg: wire.Message, now: float, wall: float) -> list[Action]:
        out = super().receive(link, msg, now, wall)
        return out + [a for a in out if isinstance(a, Emit) and isinstance(a.event, MessageEvent)]


class Backwards(NaiveCore):
    """Numbers its lines downwards and never holds or marks a late one."""

    down = 500

    def send_line(self, text: str, action: bool, now: float, wall: float) -> list[Action]:
        self.down -= 1
        self.store._own_lines[self.wire_room] = self.down
        return super().send_line(text, action, now, wall)

    def _accept(
        self, msg: wire.Chat, link: Any, now: float, wall: float, history: bool
    ) -> list[Action]:
        self.live_last.clear()
        return super()._accept(msg, link, now, wall, history)


class Forgetful(NaiveCore):
    """Sends nothing to a new link (no catch-up), forwards nothing, and
    has no timers (no anti-entropy)."""

    def link_up(self, *args: Any, **kw: Any) -> list[Action]:
        super().link_up(*args, **kw)
        return []

    def _forward(self, msg: wire.Chat | wire.Presence, came: Any) -> list[Action]:
        return []

    def tick(self, now: float, wall: float) -> list[Action]:
        self.next_tick = now + self.config.presence_interval_s
        return []


def test_a_line_shown_twice_breaks_exactly_once() -> None:
    report = sim(DoubleShow, nodes=5, lines=10)
    assert not report["ok"]
    assert report["invariants"]["exactly_once"]["duplicated"] > 0


def test_lines_out_of_order_break_fifo() -> None:
    report = sim(Backwards, nodes=5, lines=10, senders=1)
    assert not report["ok"]
    assert report["invariants"]["fifo"]["broken"] > 0


def test_lost_lines_break_exactly_once_and_history() -> None:
    report = sim(Forgetful, nodes=8, lines=10, topology="line")
    assert not report["ok"]
    assert report["invariants"]["exactly_once"]["missing"] > 0
    assert not report["invariants"]["history_identical"]["ok"]


# -- random schedules ------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    nodes=st.integers(3, 9),
    lines=st.integers(0, 25),
    partitions=st.integers(0, 1),
    crashes=st.integers(0, 2),
    cuts=st.integers(0, 3),
    late=st.integers(0, 2),
    latency=st.sampled_from(["fixed:1", "uniform:0.5:20", "exp:5"]),
)
def test_random_small_schedules_keep_the_invariants(
    seed: int,
    nodes: int,
    lines: int,
    partitions: int,
    crashes: int,
    cuts: int,
    late: int,
    latency: str,
) -> None:
    report = sim(
        seed=seed,
        nodes=nodes,
        lines=lines,
        partitions=partitions,
        crashes=crashes,
        cuts=cuts,
        late=late,
        latency=latency,
        partition_s=2.0,
        down_s=1.5,
        idle_s=1.0,
    )
    assert not broken(report), broken(report)


def test_a_line_held_on_screen_at_a_crash_is_shown_after_the_restart() -> None:
    # Small rooms with crashes (the same 60 schedules every time, not a pinned seed, so
    # that the test keeps failing while the bug lasts whatever the core draws): a node
    # that got lines of an origin before their predecessor crashes within the hold.
    rng = random.Random(5)
    for _ in range(60):
        report = sim(
            seed=rng.getrandbits(32),
            nodes=rng.randint(4, 10),
            lines=rng.randint(10, 30),
            crashes=rng.randint(1, 3),
            cuts=rng.randint(0, 4),
            latency=rng.choice(["fixed:1", "uniform:0.5:20"]),
            down_s=1.5,
            idle_s=1.0,
        )
        assert report["invariants"]["exactly_once"]["missing_stored_at_crash"] == 0
        assert report["ok"], broken(report)


def test_after_a_restart_an_older_line_is_shown_as_earlier() -> None:
    # Node 2 showed lines 3-6 of an origin (line 2 missing), crashed, and after its
    # restart shows line 2 live.  A pinned schedule: if the core's random draws change,
    # this may pass without a fix (then look for another with the random schedules).
    report = sim(
        seed=4138327041,
        nodes=9,
        lines=35,
        partitions=1,
        partition_s=4.0,
        crashes=3,
        down_s=0.5,
        cuts=4,
        late=2,
        latency="fixed:1",
        rate=5.0,
        senders=2,
        hostile=["replay", "equivocate"],
        topology="line",
        cpu_us=200.0,
        idle_s=1.0,
        settle_s=30.0,
    )
    assert report["invariants"]["fifo"]["broken_across_restart"] == 0
    assert report["invariants"]["fifo"]["ok"], broken(report)


def test_two_hundred_nodes_with_partitions_and_crashes() -> None:
    # Short phases: the room's presences cost N^2 frames per simulated second.
    report = sim(
        nodes=200,
        lines=60,
        seed=1,
        partitions=2,
        partition_s=1.5,
        crashes=4,
        down_s=1.5,
        cuts=5,
        late=4,
        warmup_s=3.0,
        idle_s=1.0,
    )
    assert report["ok"], broken(report)
    assert report["run"]["crashes"] == 4
    assert report["figures"]["converge_after_heal_s"] is not None
