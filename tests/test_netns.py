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
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netns_lab import Lan, lan, netns_available

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
MAX_LINES = 100_000
POLL_S = 0.05


class ChatProc:
    """A ``p2pchat --json`` process; stdout/stderr are read by threads.

    JSON events land in :attr:`events` when :meth:`pump` is called (main
    thread only); lines of stdout that are not JSON objects go to :attr:`junk`."""

    def __init__(self, label: str, proc: subprocess.Popen[str]) -> None:
        self.label = label
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.junk: list[str] = []
        self.stderr: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._stdout_done = False
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for n, line in enumerate(self.proc.stdout):
                if n >= MAX_LINES:
                    break
                self._q.put(line)
        self._q.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            for n, line in enumerate(self.proc.stderr):
                if n >= MAX_LINES:
                    break
                self.stderr.append(line.rstrip("\n"))

    def pump(self, timeout: float = 0.0) -> None:
        """Move everything read so far into :attr:`events` (waiting up to
        ``timeout`` for the first line)."""
        block = timeout > 0
        for _ in range(MAX_LINES):
            try:
                line = self._q.get(block, timeout) if block else self._q.get_nowait()
            except queue.Empty:
                return
            block = False
            if line is None:
                self._stdout_done = True
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and "event" in obj:
                self.events.append(obj)
            elif line.strip():
                self.junk.append(line.rstrip("\n"))

    # -- views on the events ------------------------------------------------
    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    @property
    def node_id(self) -> str | None:
        ready = self.of("ready")
        return str(ready[0]["node"]) if ready else None

    def joined(self) -> set[str]:
        return {str(e.get("origin")) for e in self.of("join")}

    def linked(self) -> set[str]:
        return {str(e.get("peer")) for e in self.of("peer_up")}

    def leaves(self, origin: str) -> list[dict[str, Any]]:
        return [e for e in self.of("leave") if e.get("origin") == origin]

    def send_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def describe(self) -> str:
        self.pump()
        lines = [f"--- {self.label} (pid {self.proc.pid}, rc {self.proc.poll()})"]
        lines += [f"  out: {json.dumps(e, ensure_ascii=False)}" for e in self.events[-60:]]
        lines += [f"  junk: {j}" for j in self.junk[-10:]]
        lines += [f"  err: {e}" for e in self.stderr[-30:]]
        return "\n".join(lines)


def wait_until(
    nodes: list[ChatProc],
    pred: Callable[[], bool],
    deadline_s: float,
    what: str,
    must_run: list[ChatProc] | None = None,
) -> float:
    """Pump events until ``pred()`` holds; return the seconds it took.

    Fails the test with every node's recent output after ``deadline_s``, or
    at once when one of ``must_run`` (default: ``nodes``) has exited."""
    must_run = nodes if must_run is None else must_run
    start = time.monotonic()
    end = start + deadline_s
    why = f"timed out after {deadline_s:.1f} s"
    max_rounds = 100_000  # a safety bound; the deadline ends the loop first
    for _ in range(max_rounds):
        for n in nodes:
            n.pump()
        if pred():
            return time.monotonic() - start
        dead = [n.label for n in must_run if n.proc.poll() is not None]
        if dead:
            why = f"{', '.join(dead)} exited"
            break
        if time.monotonic() >= end:
            break
        nodes[0].pump(POLL_S)  # waits for output instead of sleeping blindly
    pump_for(nodes, 0.2)  # collect the last output and stderr for the report
    pytest.fail(f"{why} waiting for {what}\n" + "\n".join(n.describe() for n in nodes))


def pump_for(nodes: list[ChatProc], seconds: float) -> None:
    """Keep reading output for ``seconds`` (to catch late duplicates)."""
    end = time.monotonic() + seconds
    for _ in range(100_000):
        if time.monotonic() >= end:
            break
        for n in nodes:
            n.pump()
        nodes[0].pump(POLL_S)
    for n in nodes:
        n.pump()


def wait_exit(nodes: list[ChatProc], deadline_s: float) -> dict[str, int | None]:
    """Wait for the processes to exit; return ``label -> returncode``."""
    end = time.monotonic() + deadline_s
    codes: dict[str, int | None] = {}
    for n in nodes:
        try:
            codes[n.label] = n.proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[n.label] = None
    for n in nodes:
        n.pump(0.2 if n.proc.poll() is not None else 0.0)
    return codes


@contextlib.contextmanager
def chat_lan(n_hosts: int) -> Iterator[tuple[Lan, list[ChatProc]]]:
    """A lab of ``n_hosts`` hosts, each running ``p2pchat`` with real mDNS."""
    room = f"lab-{secrets.token_hex(4)}"
    service_type = f"_p2pt{secrets.token_hex(4)}._tcp.local."
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with lan(n_hosts) as net:
        nodes = []
        for i in range(n_hosts):
            argv = [
                sys.executable,
                "-m",
                "p2pchat",
                "--name",
                f"host{i}",
                "--room",
                room,
                "--json",
                "--service-type",
                service_type,
            ]
            proc = net.popen(
                i,
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                cwd=str(REPO),
                env=env,
            )
            nodes.append(ChatProc(f"host{i}", proc))
        yield net, nodes


def wait_mesh(nodes: list[ChatProc]) -> float:
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

    took = wait_until(nodes, meshed, MESH_DEADLINE_S, "every host to join and link to all others")
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

        wait_until(nodes, delivered, DELIVERY_DEADLINE_S, "every line at every host")
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
            nodes,
            lambda: all(any(e.get("reason") == "quit" for e in n.leaves(qid)) for n in rest),
            EXIT_DEADLINE_S,
            f"leave(quit) of {quitter.label} at the others",
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
            rest,
            lambda: all(n.leaves(vid) for n in rest),
            TIMEOUT_LEAVE_DEADLINE_S,
            f"leave of killed {victim.label} at the others",
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
