"""Hostile and broken networks: real ``p2pchat --json`` processes under faults.

* :func:`test_kill_bridge_in_mesh_of_ten` (127.0.0.1 only, ``--no-mdns``):
  ten nodes in a seeded random mesh made of two parts, nodes 0-4 and 6-9,
  whose only joint is node 5.  Node 5 gets SIGKILL: every other node must
  report it gone (``leave``, reason ``timeout``) within the documented bound,
  lines sent during the split must reach their own part exactly once, the
  two parts must re-link by themselves (a ``peer_up`` across the parts, which
  only presence-learned addresses can give, as no node was told a peer of the
  other part), and lines sent afterwards must reach every live node exactly
  once.
* :func:`test_link_cut_and_back` (network namespaces, real mDNS): three
  hosts; host 2's link goes down for 30 s inside its namespace.  The others
  must time it out, and after the link comes back the links and the chat
  must resume with no user action.

Every wait has a deadline; every process is stopped and every namespace
removed, also when a check fails.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from netns_lab import Lan, lan, netns_available

from p2pchat.harness import NodeProcess, env_with_path, pump_for, stop, wait_until

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
# The mesh whose only joint is node 5 is built the same way by scripts/chaos.py.
from chaos import BRIDGE, N_MESH, PART_A, PART_B, bridged_mesh  # noqa: E402

LOOPBACK = "127.0.0.1"

SEED = 20261203

READY_DEADLINE_S = 15.0
MESH_DEADLINE_S = 25.0
DELIVERY_DEADLINE_S = 10.0
# Contract: member timeout 10 s, checked every 0.5 s, so a dead member is
# reported within about 10.5 s of its last message; the rest is scheduling
# slack on a busy machine.
TIMEOUT_BOUND_S = 12.5
# The parts re-link once they have timed each other out (<= ~10.5 s) and a
# dial has gone through.
RELINK_DEADLINE_S = 30.0
CUT_S = 30.0
RESUME_DEADLINE_S = 30.0
STOP_TIMEOUT_S = 5.0


def _ids(nodes: Sequence[NodeProcess]) -> list[str]:
    ids = [n.node_id for n in nodes]
    assert None not in ids, "a node has no ready event"
    return [str(i) for i in ids]


def is_ready(node: NodeProcess) -> Callable[[], bool]:
    return lambda: node.ready_event is not None


def has_text(nodes: Sequence[NodeProcess], text: str) -> Callable[[], bool]:
    """Whether every one of ``nodes`` has shown a message with ``text``."""
    return lambda: all(text in n.texts() for n in nodes)


def assert_exactly_once(nodes: Sequence[NodeProcess], texts: Sequence[str]) -> None:
    """Each of ``texts`` is in each node's messages exactly once; no id twice."""
    for n in nodes:
        got = Counter(n.texts())
        for text in texts:
            assert got[text] == 1, f"{n.label} got {text!r} {got[text]} times\n{n.describe()}"
        ids = Counter(str(m.get("id")) for m in n.of("message"))
        dups = {k: c for k, c in ids.items() if c > 1}
        assert not dups, f"{n.label} got message ids more than once: {dups}"


# -- (a) SIGKILL of the only joint of a mesh of ten, on 127.0.0.1 -------------------------


def _part_of(i: int) -> str:
    return "A" if i in PART_A else "B" if i in PART_B else "bridge"


@contextlib.contextmanager
def loopback_mesh(dials: list[list[int]]) -> Iterator[list[NodeProcess]]:
    """Start one ``p2pchat --json --no-mdns`` on 127.0.0.1 per entry of
    ``dials``, each after the ones it dials are ready; stop them all on exit."""
    room = f"chaos-{secrets.token_hex(4)}"
    nodes: list[NodeProcess] = []
    try:
        for i, peers in enumerate(dials):
            argv = [
                sys.executable,
                "-m",
                "p2pchat",
                "--ephemeral",
                "--name",
                f"n{i}",
                "--room",
                room,
            ]
            argv += ["--json", "--no-mdns", "--interface", LOOPBACK, "--port", "0"]
            for p in peers:
                argv += ["--peer", f"{LOOPBACK}:{nodes[p].port}"]
            node = NodeProcess.spawn(argv, f"n{i}", cwd=str(REPO), env=env_with_path(REPO))
            nodes.append(node)
            wait_until(is_ready(node), READY_DEADLINE_S, "ready", [node])
        yield nodes
    finally:
        stop(nodes, STOP_TIMEOUT_S)


def test_bridged_mesh_shape() -> None:
    dials = bridged_mesh(SEED)
    cross = [
        (i, j)
        for i, peers in enumerate(dials)
        for j in peers
        if {_part_of(i), _part_of(j)} == {"A", "B"}
    ]
    assert not cross, f"parts linked directly: {cross}"
    assert all(dials[1:]) and sum(BRIDGE in p for p in dials) == 2, dials
    edges = {frozenset((i, j)) for i, peers in enumerate(dials) for j in peers}
    for part in (PART_A, PART_B):  # each part is connected without the bridge
        reach = {part.start}
        for _ in range(N_MESH):
            reach |= {k for e in edges if e & reach and e <= set(part) for k in e}
        assert reach == set(part), (part, dials)


def test_kill_bridge_in_mesh_of_ten() -> None:
    dials = bridged_mesh(SEED)
    with loopback_mesh(dials) as nodes:
        ids = _ids(nodes)
        t0 = time.monotonic()
        wait_until(
            lambda: all(set(ids) - {ids[k]} <= n.members() for k, n in enumerate(nodes)),
            MESH_DEADLINE_S,
            "every node to see the nine others",
            nodes,
        )
        print(f"mesh of {N_MESH} up {time.monotonic() - t0:.1f} s after the last start")

        victim = nodes[BRIDGE]
        vid = ids[BRIDGE]
        rest = [n for k, n in enumerate(nodes) if k != BRIDGE]
        part_a = [nodes[k] for k in PART_A]
        part_b = [nodes[k] for k in PART_B]
        ids_b = {ids[k] for k in PART_B}
        for n in rest:
            n.pump()
        mark = {n.label: len(n.events) for n in rest}

        victim.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.proc.wait(timeout=STOP_TIMEOUT_S)

        # Lines during the split: each reaches its own part exactly once.
        split_a, split_b = f"split A {secrets.token_hex(3)}", f"split B {secrets.token_hex(3)}"
        part_a[1].send_line(split_a)
        part_b[-1].send_line(split_b)

        reported: dict[str, float] = {}
        relinked: list[float] = []

        def new_events(n: NodeProcess, kind: str) -> list[dict[str, object]]:
            return [e for e in n.events[mark[n.label] :] if e.get("event") == kind]

        def watch() -> bool:
            now = time.monotonic() - killed_at
            for n in rest:
                if n.label not in reported and n.leaves(vid):
                    reported[n.label] = now
            if not relinked:
                for n in part_a:
                    if any(e.get("peer") in ids_b for e in new_events(n, "peer_up")):
                        relinked.append(now)
                        break
            return len(reported) == len(rest)

        wait_until(watch, TIMEOUT_BOUND_S + 5.0, "leave of the killed bridge at all", rest)
        for n in rest:
            reasons = [e.get("reason") for e in n.leaves(vid)]
            assert reasons == ["timeout"], f"{n.label}: leave reasons {reasons}\n{n.describe()}"
        latest = max(reported.values())
        print(
            f"leave(timeout) of the killed bridge after {min(reported.values()):.1f}"
            f"..{latest:.1f} s"
        )
        assert latest <= TIMEOUT_BOUND_S, f"timeout reported too late: {reported}"

        for part, text in ((part_a, split_a), (part_b, split_b)):
            wait_until(has_text(part, text), DELIVERY_DEADLINE_S, f"{text!r} in its part", rest)
            assert_exactly_once(part, [text])
        for n in rest:  # the other part may have missed it, but never twice
            assert n.texts().count(split_a) <= 1 and n.texts().count(split_b) <= 1

        def whole() -> bool:
            watch()
            return bool(relinked) and all(
                set(ids) - {vid, ids[k]} <= nodes[k].members() for k in range(N_MESH) if k != BRIDGE
            )

        wait_until(whole, RELINK_DEADLINE_S - (time.monotonic() - killed_at), "re-link", rest)
        healed = time.monotonic() - killed_at
        print(f"parts re-linked {relinked[0]:.1f} s after SIGKILL; room whole after {healed:.1f} s")
        cross = [
            f"{n.label}-{e.get('name')} ({e.get('address')})"
            for n in part_a
            for e in new_events(n, "peer_up")
            if e.get("peer") in ids_b
        ]
        print(f"links across the parts: {', '.join(cross)}")
        assert cross, "no direct link across the parts"

        after = [f"after from {n.label} {secrets.token_hex(3)}" for n in (part_a[0], part_b[0])]
        part_a[0].send_line(after[0])
        part_b[0].send_line(after[1])
        took = wait_until(
            lambda: all(set(after) <= set(n.texts()) for n in rest),
            DELIVERY_DEADLINE_S,
            "the lines sent after the re-link at every live node",
            rest,
        )
        pump_for(rest, 0.5)  # a late duplicate must be seen too
        assert_exactly_once(rest, after)
        print(f"lines after the re-link delivered to all {len(rest)} in {took:.2f} s")
        for n in rest:
            assert not n.junk, f"{n.label}: non-JSON lines on stdout: {n.junk}"


# -- (b) a host's link down for 30 s, in network namespaces ---------------------------------


@contextlib.contextmanager
def chat_lan(n_hosts: int) -> Iterator[tuple[Lan, list[NodeProcess]]]:
    """``n_hosts`` namespace hosts, each running ``p2pchat`` with real mDNS
    (a service type and room of this run only); all stopped on exit."""
    room = f"cut-{secrets.token_hex(4)}"
    service_type = f"_p2pt{secrets.token_hex(4)}._tcp.local."
    with lan(n_hosts) as net:
        nodes: list[NodeProcess] = []
        try:
            for i in range(n_hosts):
                argv = [sys.executable, "-m", "p2pchat", "--ephemeral", "--name", f"host{i}"]
                argv += ["--room", room]
                argv += ["--json", "--service-type", service_type]
                popen = functools.partial(net.popen, i)
                nodes.append(
                    NodeProcess.spawn(
                        argv, f"host{i}", cwd=str(REPO), env=env_with_path(REPO), popen=popen
                    )
                )
            yield net, nodes
        finally:
            stop(nodes, STOP_TIMEOUT_S)


def set_link(net: Lan, i: int, state: str) -> None:
    """``ip -n <host i> link set <its veth> up|down``."""
    host = net.hosts[i]
    subprocess.run(
        ["ip", "-n", host.ns, "link", "set", host.ifname, state],
        check=True,
        capture_output=True,
        timeout=10,
    )


@pytest.mark.netns
def test_link_cut_and_back() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.skip(why)
    with chat_lan(3) as (net, nodes):
        wait_until(
            lambda: (
                None not in [n.node_id for n in nodes]
                and all(
                    set(_ids(nodes)) - {str(n.node_id)} <= n.members() & n.linked() for n in nodes
                )
            ),
            MESH_DEADLINE_S,
            "every host to join and link to the others",
            nodes,
        )
        ids = _ids(nodes)
        cut, others = nodes[2], nodes[:2]
        cid = ids[2]
        for n in nodes:
            n.pump()
        mark = {n.label: len(n.events) for n in nodes}

        set_link(net, 2, "down")
        down_at = time.monotonic()
        took = wait_until(
            lambda: (
                all(n.leaves(cid) for n in others) and all(cut.leaves(ids[k]) for k in range(2))
            ),
            TIMEOUT_BOUND_S + 5.0,
            "the cut host timed out (and the others at the cut host)",
            nodes,
        )
        for n in others:
            assert [e.get("reason") for e in n.leaves(cid)] == ["timeout"], n.describe()
        assert took <= TIMEOUT_BOUND_S, f"timeout reported {took:.1f} s after link-down"
        print(f"the cut host timed out {took:.1f} s after link-down")
        # Both sides of the split chat on; neither hears the other.
        alone = [f"alone on host2 {k} {secrets.token_hex(3)}" for k in range(3)]
        together = [f"host{k % 2} meanwhile {k} {secrets.token_hex(3)}" for k in range(4)]
        for k, text in enumerate(together):
            others[k % 2].send_line(text)
        for text in alone:
            cut.send_line(text)
        wait_until(
            lambda: (
                set(alone) <= set(cut.texts())
                and all(set(together) <= set(n.texts()) for n in others)
            ),
            DELIVERY_DEADLINE_S,
            "each side of the split to chat",
            nodes,
        )
        assert not set(together) & set(cut.texts())
        pump_for(nodes, max(0.0, CUT_S - (time.monotonic() - down_at)))

        set_link(net, 2, "up")
        up_at = time.monotonic()

        def ups(n: NodeProcess) -> set[str]:
            return {
                str(e.get("peer")) for e in n.events[mark[n.label] :] if e.get("event") == "peer_up"
            }

        relink = wait_until(
            lambda: all(cid in ups(n) for n in others) and set(ids[:2]) <= ups(cut),
            RESUME_DEADLINE_S,
            "the cut host's links to come back",
            nodes,
        )
        print(f"links back {relink:.1f} s after link-up")

        from_cut = f"back from host2 {secrets.token_hex(3)}"
        to_cut = f"welcome back from host0 {secrets.token_hex(3)}"
        cut.send_line(from_cut)
        others[0].send_line(to_cut)
        wait_until(
            lambda: all({from_cut, to_cut} <= set(n.texts()) for n in nodes),
            max(1.0, RESUME_DEADLINE_S - (time.monotonic() - up_at)),
            "chat both ways after link-up",
            nodes,
        )
        resumed = time.monotonic() - up_at
        pump_for(nodes, 0.5)
        assert_exactly_once(nodes, [from_cut, to_cut])
        print(f"chat resumed {resumed:.1f} s after link-up")

        # After healing, every host has every line of the split, once, and
        # what it missed came marked as earlier lines.
        split = [*alone, *together]
        wait_until(
            lambda: all(set(split) <= set(n.texts()) for n in nodes),
            RESUME_DEADLINE_S,
            "the lines of both sides of the split everywhere",
            nodes,
        )
        pump_for(nodes, 0.5)
        assert_exactly_once(nodes, split)
        for n in others:
            marked = {str(e["text"]) for e in n.of("message") if e.get("history")}
            assert marked == set(alone), n.describe()
        assert {str(e["text"]) for e in cut.of("message") if e.get("history")} == set(together)
        listings = []
        for n in nodes:
            n.send_line("/history 100")
            listings.append([m["text"] for m in n.wait_event("history")["lines"]])
        assert all(listing == listings[0] for listing in listings), listings
        assert set(split) | {from_cut, to_cut} <= set(listings[0])
