"""Multi-host tests: real ``p2pchat`` processes on a namespace LAN, real mDNS.

Each host is a network namespace (see :mod:`netns_lab`) whose only
interfaces are ``lo`` and a veth to a bridge in a separate "switch"
namespace, so mDNS with the default interfaces stays inside the lab.  Every
run uses its own room and DNS-SD service type.

Needs root and iproute2; skipped (with the reason) where namespaces cannot
be made.  Run alone with ``pytest -m netns``.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_lab import Lan, lan, netns_available

from p2pchat.harness import NodeProcess, env_with_path, pump_for, stop, wait_exit, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parent.parent
N_HOSTS = 3
MESH_DEADLINE_S = 20.0
DELIVERY_DEADLINE_S = 10.0
EXIT_DEADLINE_S = 10.0
TIMEOUT_LEAVE_DEADLINE_S = 20.0
# Contract: a silent member is reported as gone within about 10.5 s of its
# last message; the margin covers process scheduling on a busy test machine.
TIMEOUT_LEAVE_BOUND_S = 10.5 + 2.0


@contextlib.contextmanager
def chat_lan(
    n_hosts: int, families: list[str] | None = None
) -> Iterator[tuple[Lan, list[NodeProcess]]]:
    """A lab of ``n_hosts`` hosts (``families``: each one's address family,
    see :func:`netns_lab.lan`), each running ``p2pchat`` with real mDNS; the
    processes are stopped and their reader threads joined on exit."""
    room = f"lab-{secrets.token_hex(4)}"
    service_type = f"_p2pt{secrets.token_hex(4)}._tcp.local."
    env = env_with_path(REPO)
    with lan(n_hosts, families) as net:
        nodes: list[NodeProcess] = []
        try:
            for i in range(n_hosts):
                argv = [
                    sys.executable,
                    "-m",
                    "p2pchat",
                    "--ephemeral",
                    "--name",
                    f"host{i}",
                    "--room",
                    room,
                    "--json",
                    "--service-type",
                    service_type,
                ]
                popen = functools.partial(net.popen, i)
                node = NodeProcess.spawn(argv, f"host{i}", cwd=str(REPO), env=env, popen=popen)
                nodes.append(node)
            yield net, nodes
        finally:
            stop(nodes)


def wait_mesh(nodes: list[NodeProcess]) -> float:
    """Wait until every node is ready and has a join and a link for every other."""

    def ids() -> list[str | None]:
        return [n.node_id for n in nodes]

    def meshed() -> bool:
        all_ids = ids()
        if None in all_ids:
            return False
        for n in nodes:
            others = {i for i in all_ids if i != n.node_id and i is not None}
            if not others <= n.joined() or not others <= n.linked():
                return False
        return True

    took = wait_until(meshed, MESH_DEADLINE_S, "every host to join and link to all others", nodes)
    assert len(set(ids())) == len(nodes), f"node ids not unique: {ids()}"
    print(f"mesh of {len(nodes)} hosts up in {took:.1f} s")
    return took


@pytest.fixture(scope="module", autouse=True)
def _need_netns() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.skip(why)


def test_three_hosts_chat_and_quit() -> None:
    with chat_lan(N_HOSTS) as (_net, nodes):
        wait_mesh(nodes)
        ids = {n.label: str(n.node_id) for n in nodes}

        lines = {n.label: f"привет 你好 🙂 from {n.label}" for n in nodes}
        for n in nodes:
            n.send_line(lines[n.label])

        expected = set(lines.values())

        def delivered() -> bool:
            return all(expected <= {m.get("text") for m in n.of("message")} for n in nodes)

        wait_until(delivered, DELIVERY_DEADLINE_S, "every line at every host", nodes)
        pump_for(nodes, 0.5)  # a duplicate arriving late must be seen too

        by_text = {text: label for label, text in lines.items()}
        for n in nodes:
            msgs = n.of("message")
            id_counts = Counter(str(m.get("id")) for m in msgs)
            dups = {k: c for k, c in id_counts.items() if c > 1}
            assert not dups, f"{n.label} got duplicates {dups}\n{n.describe()}"
            text_counts = Counter(str(m.get("text")) for m in msgs)
            assert text_counts == Counter(expected), f"{n.label}: {text_counts}\n{n.describe()}"
            for m in msgs:
                sender = by_text[str(m["text"])]
                assert m.get("origin") == ids[sender], f"{n.label}: wrong origin in {m}"
                assert m.get("name") == sender, f"{n.label}: wrong name in {m}"
                assert m.get("self") is (sender == n.label), f"{n.label}: wrong self in {m}"
            assert not n.junk, f"{n.label}: non-JSON lines on stdout with --json: {n.junk}"

        # One host leaves by EOF on stdin: the others see it quit.
        quitter, rest = nodes[0], nodes[1:]
        quitter.close_stdin()
        qid = ids[quitter.label]
        wait_until(
            lambda: all(any(e.get("reason") == "quit" for e in n.leaves(qid)) for n in rest),
            EXIT_DEADLINE_S,
            f"leave(quit) of {quitter.label} at the others",
            nodes,
            must_run=rest,
        )
        for n in rest:
            assert len(n.leaves(qid)) == 1, f"{n.label}: {n.leaves(qid)}"
        assert wait_exit([quitter], EXIT_DEADLINE_S) == {quitter.label: 0}, quitter.describe()

        for n in rest:
            n.close_stdin()
        codes = wait_exit(rest, EXIT_DEADLINE_S)
        assert codes == {n.label: 0 for n in rest}, "\n".join(n.describe() for n in rest)


def test_killed_host_times_out() -> None:
    with chat_lan(N_HOSTS) as (_net, nodes):
        wait_mesh(nodes)
        victim, rest = nodes[-1], nodes[:-1]
        vid = str(victim.node_id)

        killed_at = time.monotonic()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=5)

        wait_until(
            lambda: all(n.leaves(vid) for n in rest),
            TIMEOUT_LEAVE_DEADLINE_S,
            f"leave of killed {victim.label} at the others",
            rest,
        )
        took = time.monotonic() - killed_at
        print(f"leave(timeout) of the killed host seen by all {took:.1f} s after SIGKILL")
        for n in rest:
            reasons = [e.get("reason") for e in n.leaves(vid)]
            assert reasons == ["timeout"], f"{n.label}: leave reasons {reasons}\n{n.describe()}"
        assert took <= TIMEOUT_LEAVE_BOUND_S, f"leave(timeout) came {took:.1f} s after SIGKILL"

        for n in rest:
            n.close_stdin()
        codes = wait_exit(rest, EXIT_DEADLINE_S)
        assert codes == {n.label: 0 for n in rest}, "\n".join(n.describe() for n in rest)
