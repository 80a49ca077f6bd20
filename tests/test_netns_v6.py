"""Multi-host IPv6 tests: real ``p2pchat`` processes on a namespace LAN, real mDNS over IPv6.

(1) Three hosts with only IPv6 addresses on their LAN interface (no IPv4 but loopback) find each
other over mDNS (AAAA records, ``ff02::fb``) and chat, every line exactly once.  (2) An IPv4-only
host and an IPv6-only host on one bridge cannot reach each other; a dual-stack third joins them
into one room, and reports the IPv4 host by its plain IPv4 address (its dual-stack listener sees
it as ``::ffff:a.b.c.d``).

Needs root and iproute2; skipped (with the reason) where namespaces cannot be made.  Run alone
with ``pytest -m netns tests/test_netns_v6.py``.
"""

from __future__ import annotations

from collections import Counter

import pytest
from netns_lab import netns_available
from test_netns import DELIVERY_DEADLINE_S, MESH_DEADLINE_S, chat_lan, wait_mesh

from p2pchat.harness import NodeProcess, pump_for, wait_until

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
        v6 = {h.addr6 for h in net.hosts}
        for n in nodes:
            for ev in n.of("peer_up"):
                host = str(ev["address"]).rpartition("]")[0].lstrip("[")
                assert host in v6, f"{n.label}: link over {ev['address']}, not the LAN's IPv6"


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
        # The v4 and v6 hosts have no family in common: their link is through the dual host.
        assert v4_node.linked() == {dual.node_id}, v4_node.describe()
        assert v6_node.linked() == {dual.node_id}, v6_node.describe()
        by_peer = {str(ev["peer"]): str(ev["address"]) for ev in dual.of("peer_up")}
        assert by_peer[str(v4_node.node_id)].startswith(net.hosts[0].addr + ":"), by_peer
        assert by_peer[str(v6_node.node_id)].startswith(f"[{net.hosts[2].addr6}]:"), by_peer
