"""Multi-host IPv6 tests: real ``p2pchat`` processes on a namespace LAN, real mDNS over IPv6.

(1) Three hosts with only IPv6 addresses on their LAN interface (no IPv4 but loopback) find each
other over mDNS (AAAA records, ``ff02::fb``) and chat, every line exactly once.  (2) An IPv4-only
host and an IPv6-only host on one bridge cannot reach each other; a dual-stack third joins them
into one room, and reports the IPv4 host by its plain IPv4 address (its dual-stack listener sees
it as ``::ffff:a.b.c.d``).  (3) Without mDNS, ``--peer [fe80::...%eth0]:7420`` (a link-local
address with its zone) links two IPv6-only hosts.

Needs root and iproute2; skipped (with the reason) where namespaces cannot be made.  Run alone
with ``pytest -m netns tests/test_netns_v6.py``.
"""

from __future__ import annotations

import functools
import secrets
import sys
from collections import Counter

import pytest
from netns_lab import Lan, lan, netns_available
from test_netns import DELIVERY_DEADLINE_S, MESH_DEADLINE_S, REPO, chat_lan, wait_mesh

from p2pchat import addrs
from p2pchat.harness import NodeProcess, env_with_path, pump_for, stop, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]


@pytest.fixture(scope="module", autouse=True)
def _need_netns() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.skip(why)


def send_and_check_once(nodes: list[NodeProcess]) -> dict[str, str]:
    """Each node sends one line; wait until every node shows every line, then check that each
    shows each exactly once.  Returns the lines by sender label."""
    lines = {n.label: f"hello over IPv6 from {n.label}" for n in nodes}
    for n in nodes:
        n.send_line(lines[n.label])
    expected = set(lines.values())
    wait_until(
        lambda: all(expected <= set(n.texts()) for n in nodes),
        DELIVERY_DEADLINE_S,
        "every line at every host",
        nodes,
    )
    pump_for(nodes, 0.5)  # a duplicate arriving late must be seen too
    for n in nodes:
        counts = Counter(n.texts())
        assert counts == Counter(expected), f"{n.label}: {counts}\n{n.describe()}"
    return lines


def test_three_hosts_on_an_ipv6_only_lan_chat() -> None:
    with chat_lan(3, ["v6", "v6", "v6"]) as (net, nodes):
        wait_mesh(nodes)
        send_and_check_once(nodes)
        # Every link is over IPv6: the LAN's unique local addresses, or link-local ones
        # (from AAAA records, dialled with the zone they were heard on: named by eth0 here).
        v6 = {h.addr6 for h in net.hosts}
        for n in nodes:
            for ev in n.of("peer_up"):
                host = str(ev["address"]).rpartition("]")[0].lstrip("[")
                ok = host in v6 or (addrs.is_link_local_v6(host) and host.endswith("%eth0"))
                assert ok, f"{n.label}: link over {ev['address']}, not the LAN's IPv6"


def test_a_dual_stack_host_joins_an_ipv4_only_and_an_ipv6_only_host() -> None:
    with chat_lan(3, ["v4", "both", "v6"]) as (net, nodes):
        v4_node, dual, v6_node = nodes
        ids = [n.node_id for n in nodes]

        def one_room() -> bool:
            if None in ids:
                ids[:] = [n.node_id for n in nodes]
                return False
            return all({i for i in ids if i != n.node_id} <= n.members() for n in nodes)

        wait_until(one_room, MESH_DEADLINE_S, "one room of the three hosts", nodes)
        send_and_check_once(nodes)
        # The v4 and v6 hosts have no family in common: their link is through the dual host,
        # which names the IPv4 host by its plain IPv4 address (not ::ffff:a.b.c.d)
        assert v4_node.linked() == {dual.node_id}, v4_node.describe()
        assert v6_node.linked() == {dual.node_id}, v6_node.describe()
        by_peer = {str(ev["peer"]): str(ev["address"]) for ev in dual.of("peer_up")}
        assert by_peer[str(v4_node.node_id)].startswith(net.hosts[0].addr + ":"), by_peer
        # and the IPv6 host by an IPv6 address: its ULA, or its link-local one on eth0
        v6_host = by_peer[str(v6_node.node_id)].rpartition("]")[0].lstrip("[")
        assert v6_host == net.hosts[2].addr6 or (
            addrs.is_link_local_v6(v6_host) and v6_host.endswith("%eth0")
        ), by_peer


def link_local(net: Lan, i: int) -> str:
    """Host ``i``'s link-local IPv6 address on ``eth0`` (the kernel's, from its MAC)."""
    out = net.run(i, ["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"])
    return out.split("inet6 ")[1].split("/")[0]


def spawn(net: Lan, i: int, room: str, *extra: str) -> NodeProcess:
    """``p2pchat --json`` on host ``i`` in ``room``, with ``extra`` options."""
    argv = [sys.executable, "-m", "p2pchat", "--ephemeral", "--name", f"host{i}"]
    argv += ["--room", room, "--json", *extra]
    popen = functools.partial(net.popen, i)
    return NodeProcess.spawn(argv, f"host{i}", cwd=str(REPO), env=env_with_path(REPO), popen=popen)


def test_a_link_local_peer_with_its_zone() -> None:
    room = f"lab-{secrets.token_hex(4)}"
    with lan(2, ["v6", "v6"]) as net:
        nodes: list[NodeProcess] = []
        try:
            nodes.append(spawn(net, 0, room, "--no-mdns", "--port", "7420"))
            target = f"[{link_local(net, 0)}%eth0]:7420"
            nodes.append(spawn(net, 1, room, "--no-mdns", "--peer", target))
            wait_mesh(nodes)
            send_and_check_once(nodes)
            (up,) = nodes[1].of("peer_up")
            assert up["address"] == target, up  # the link it dialled, by the address typed
            # host0 names host1 by the source address of that link: its link-local one with
            # the zone, or its ULA when the link-local one was still tentative (DAD)
            (up,) = nodes[0].of("peer_up")
            host = str(up["address"]).rpartition("]")[0].lstrip("[")
            assert host in (f"{link_local(net, 1)}%eth0", net.hosts[1].addr6), up
        finally:
            stop(nodes)


def test_interface_options_name_ipv6_addresses() -> None:
    """``--interface fd..::1`` (IPv6 only: mDNS on that interface's index, AAAA of that address)
    on two hosts, ``--interface eth0`` (the name: all its addresses) on the third."""
    room = f"lab-{secrets.token_hex(4)}"
    service = f"_p2pt{secrets.token_hex(4)}._tcp.local."
    with lan(3, ["v6", "v6", "v6"]) as net:
        nodes: list[NodeProcess] = []
        try:
            for i, host in enumerate(net.hosts):
                where = host.addr6 if i < 2 else "eth0"
                nodes.append(spawn(net, i, room, "--service-type", service, "--interface", where))
            wait_mesh(nodes)
            send_and_check_once(nodes)
        finally:
            stop(nodes)
