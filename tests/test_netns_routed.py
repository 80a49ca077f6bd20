"""Multi-LAN tests: real ``p2pchat`` processes on two namespace LANs joined by
a router or by a two-homed host (:mod:`netns_routed`), real mDNS (which
never crosses the router).

Needs root and iproute2; skipped (with the reason) where namespaces cannot
be made.  Run one at a time with ``pytest -m netns tests/test_netns_routed.py::NAME``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_lab import netns_available
from netns_routed import Routed, routed

from p2pchat.harness import NodeProcess, env_with_path, pump_for, stop, wait_exit, wait_until
from p2pchat.peerbook import FILE_NAME

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parent.parent
ROOM_DEADLINE_S = 20.0
DELIVERY_DEADLINE_S = 10.0
EXIT_DEADLINE_S = 10.0


@pytest.fixture(scope="module", autouse=True)
def _need_netns() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.skip(why)


class Chat:
    """Starts ``p2pchat --json`` processes in the lab's namespaces, all in
    one fresh room and DNS-SD service type; stops them all at the end."""

    def __init__(self, lab: Routed) -> None:
        self.lab = lab
        self.room = f"lab-{secrets.token_hex(4)}"
        self.service_type = f"_p2pt{secrets.token_hex(4)}._tcp.local."
        self.env = env_with_path(REPO)
        self.nodes: list[NodeProcess] = []

    def start(self, ns: str, label: str, *extra: str) -> NodeProcess:
        argv = [
            sys.executable,
            "-m",
            "p2pchat",
            "--name",
            label,
            "--room",
            self.room,
            "--json",
            "--service-type",
            self.service_type,
            *extra,
        ]

        def popen(args: list[str], **kw: object) -> object:
            return self.lab.popen(ns, args, **kw)

        node = NodeProcess.spawn(argv, label, cwd=str(REPO), env=self.env, popen=popen)  # type: ignore[arg-type]
        self.nodes.append(node)
        return node


@contextlib.contextmanager
def chat(lab: Routed) -> Iterator[Chat]:
    c = Chat(lab)
    try:
        yield c
    finally:
        stop(c.nodes)


def wait_room(nodes: list[NodeProcess], what: str) -> float:
    """Every node ready, and a member of every other one's room now."""

    def one_room() -> bool:
        ids = [n.node_id for n in nodes]
        if None in ids:
            return False
        return all({i for i in ids if i != n.node_id} <= n.members() for n in nodes)

    took = wait_until(one_room, ROOM_DEADLINE_S, what, nodes)
    print(f"{what}: {took:.1f} s")
    return took


def say_and_check(nodes: list[NodeProcess], senders: list[NodeProcess], tag: str) -> None:
    """Each sender says one line; every node shows every line exactly once."""
    lines = {s.label: f"{tag} from {s.label}" for s in senders}
    for s in senders:
        s.send_line(lines[s.label])
    expected = set(lines.values())

    def delivered() -> bool:
        return all(expected <= set(n.texts()) for n in nodes)

    wait_until(delivered, DELIVERY_DEADLINE_S, f"{tag}: every line at every node", nodes)
    pump_for(nodes, 0.5)  # a late duplicate must be seen too
    for n in nodes:
        counts = Counter(t for t in n.texts() if t in expected)
        assert counts == Counter(expected), f"{n.label}: {counts}\n{n.describe()}"


def test_two_lans_joined_by_a_router_one_peer_then_that_peer_dies() -> None:
    """Two IPv4 LANs and a router, one --peer: one room; kill that peer and
    the others keep chatting across the router (presences carry addresses)."""
    with routed(2, 2) as lab, chat(lab) as c:
        b0h, b1h = lab.lan_b
        a0 = c.start(lab.lan_a[0].ns, "a0", "--ephemeral", "--peer", b0h.addr)
        a1 = c.start(lab.lan_a[1].ns, "a1", "--ephemeral")
        b0 = c.start(b0h.ns, "b0", "--ephemeral")
        b1 = c.start(b1h.ns, "b1", "--ephemeral")
        nodes = [a0, a1, b0, b1]
        wait_room(nodes, "one room over the router from one --peer")
        say_and_check(nodes, [a1, b1], "before")

        b0.proc.send_signal(signal.SIGKILL)
        b0.proc.wait(timeout=5)
        rest = [a0, a1, b1]
        say_and_check(rest, [a0, a1, b1], "after")
        for n in rest:
            n.close_stdin()
        assert wait_exit(rest, EXIT_DEADLINE_S) == {n.label: 0 for n in rest}


def test_a_two_homed_host_joins_two_lans_without_peer() -> None:
    """No router, no --peer: a host with a leg on each LAN finds both by
    mDNS, and the two LANs chat through it as one room."""
    with routed(2, 2, router=False, bridge=True) as lab, chat(lab) as c:
        assert lab.bridge is not None
        nodes = [c.start(h.ns, f"a{h.index}", "--ephemeral") for h in lab.lan_a]
        nodes += [c.start(h.ns, f"b{h.index}", "--ephemeral") for h in lab.lan_b]
        bridge = c.start(lab.bridge.ns, "bridge", "--ephemeral")
        nodes.append(bridge)
        wait_room(nodes, "one room through the two-homed host")
        say_and_check(nodes, [nodes[0], nodes[2]], "across")
        for n in nodes:
            n.close_stdin()
        assert wait_exit(nodes, EXIT_DEADLINE_S) == {n.label: 0 for n in nodes}


def test_a_restarted_node_rejoins_from_its_remembered_peers(tmp_path: Path) -> None:
    """A node alone on its LAN links to the other LAN by --peer once; started
    again with the same data directory and no --peer (and no mDNS path to the
    other LAN), it re-joins the room from its remembered peers."""
    data = tmp_path / "a0"
    book = data / FILE_NAME
    with routed(1, 2) as lab, chat(lab) as c:
        b0h, b1h = lab.lan_b
        a0 = c.start(lab.lan_a[0].ns, "a0", "--data-dir", str(data), "--peer", b0h.addr)
        b0 = c.start(b0h.ns, "b0", "--ephemeral")
        b1 = c.start(b1h.ns, "b1", "--ephemeral")
        wait_room([a0, b0, b1], "one room from one --peer")

        def remembered() -> dict[str, str]:
            try:
                doc = json.loads(book.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
            return {e["host"]: e["source"] for e in doc["peers"]}

        wait_until(
            lambda: remembered().get(b0h.addr) == "typed",
            DELIVERY_DEADLINE_S,
            "a0 to remember b0",
            [a0, b0, b1],
        )
        a0.close_stdin()
        assert wait_exit([a0], EXIT_DEADLINE_S) == {"a0": 0}, a0.describe()
        a0_id = a0.node_id

        # No --peer; and another port, so that the other LAN, which knows a0's
        # old address from its presences, cannot be the one that dials: a0 must.
        again = c.start(lab.lan_a[0].ns, "a0", "--data-dir", str(data), "--port", "7431")
        nodes = [again, b0, b1]
        wait_until(
            lambda: again.node_id == a0_id and bool(again.links_now() & {b0.node_id, b1.node_id}),
            ROOM_DEADLINE_S,
            "the restarted a0 to link to the other LAN from its remembered peers",
            nodes,
        )
        wait_room(nodes, "one room again from remembered peers")
        say_and_check(nodes, [again, b1], "again")
        for n in nodes:
            n.close_stdin()
        assert wait_exit(nodes, EXIT_DEADLINE_S) == {n.label: 0 for n in nodes}
