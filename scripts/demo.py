#!/usr/bin/env python3
"""Run a few p2pchat nodes on this machine and check they all chat.

Scripted (default): starts N ``p2pchat --json`` processes bound to 127.0.0.1
in a fresh room, waits until everyone has joined, runs a short conversation
from several nodes, sends EOF to all, prints what each node saw and a final
``PASS: ...`` or ``FAIL: ...`` line (exit status 0 only on PASS).

Topologies:

* ``--topology line`` (default): node i dials node i-1 (``--no-mdns --peer``);
  lines reach the far end only by being relayed.
* ``--topology ring``: the same, and the last node also dials the first.
* ``--mdns``: no static peers; the nodes find each other with mDNS on
  127.0.0.1 only, with a DNS-SD service type unique to this run.

``--interactive`` opens a tmux session with one interactive node per pane
instead, and prints how to attach.

Everything stays on 127.0.0.1.  Examples::

    python scripts/demo.py
    python scripts/demo.py -n 6 --topology ring
    python scripts/demo.py --mdns
    python scripts/demo.py --interactive
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from p2pchat.harness import NodeProcess, WaitFailed, pump_for, stop, wait_exit, wait_until

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
MAX_NODES = 32
STOP_TIMEOUT_S = 5.0

SCRIPT = [
    "hello everyone",
    "hi alice 👋",
    "grüße aus Köln — ça va ?",
    "привет, 你好 🙂",
    "anyone up for lunch?",
    "¡sí! 🍕 at noon",
    "see you all ✌️",
]
"""The conversation; line k is sent by node k mod N."""


def node_name(i: int) -> str:
    return NAMES[i] if i < len(NAMES) else f"node{i}"


def base_command() -> list[str]:
    """How to run p2pchat: this interpreter's ``-m p2pchat`` (same install)."""
    return [sys.executable, "-m", "p2pchat", "--ephemeral"]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (racy but fine here)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(node: NodeProcess) -> str:
    """A failed node's exit status, command line and last stderr and junk lines."""
    out = [f"  {node.label}: rc={node.proc.poll()} argv={shlex.join(node.argv)}"]
    out += [f"    err: {line}" for line in node.stderr[-15:]]
    out += [f"    junk: {line}" for line in node.junk[-5:]]
    return "\n".join(out)


def reached(nodes: Sequence[NodeProcess], pred: Callable[[], bool], deadline_s: float) -> bool:
    """Read output until ``pred()`` holds (True) or the deadline passes, or a
    node exits (then: whether ``pred()`` holds after reading what is left)."""
    try:
        wait_until(pred, deadline_s, "a stage of the demo", nodes, settle_s=0.0)
    except WaitFailed:
        return pred()
    return True


@dataclass
class Run:
    """Settings of one scripted run."""

    n: int
    topology: str
    mdns: bool
    room: str
    service_type: str
    deadline_s: float
    verbose: bool


def _is_ready(node: NodeProcess) -> Callable[[], bool]:
    return lambda: node.ready_event is not None


def _delivered(nodes: Sequence[NodeProcess], text: str) -> Callable[[], bool]:
    return lambda: all(text in n.texts() for n in nodes)


def start_nodes(run: Run, nodes: list[NodeProcess]) -> str | None:
    """Start the nodes (appending to ``nodes``); return an error text or None."""
    common = ["--room", run.room, "--interface", "127.0.0.1", "--port", "0", "--json"]
    if run.mdns:
        for i in range(run.n):
            argv = [*base_command(), "--name", node_name(i), *common]
            argv += ["--service-type", run.service_type]
            nodes.append(NodeProcess.spawn(argv, node_name(i), new_session=True))
        if not reached(nodes, lambda: all(n.ready_event for n in nodes), run.deadline_s):
            return "not every node became ready"
        return None
    for i in range(run.n):
        peers: list[int] = []
        if i > 0:
            peers.append(i - 1)
        if run.topology == "ring" and run.n >= 3 and i == run.n - 1:
            peers.append(0)
        argv = [*base_command(), "--name", node_name(i), *common, "--no-mdns"]
        for p in peers:
            argv += ["--peer", f"127.0.0.1:{nodes[p].port}"]
        # A session of its own: Ctrl+C reaches only us, and we stop the nodes.
        node = NodeProcess.spawn(argv, node_name(i), new_session=True)
        nodes.append(node)
        # Read the ready event for its port before starting the next node.
        if not reached([node], _is_ready(node), run.deadline_s):
            return f"{node.label} did not become ready"
    return None


def mesh_connected(nodes: Sequence[NodeProcess]) -> bool:
    ids = [n.node_id for n in nodes]
    if None in ids:
        return False
    return all({i for i in ids if i and i != n.node_id} <= n.joined() for n in nodes)


def check(nodes: Sequence[NodeProcess], sent: list[tuple[int, str]]) -> list[str]:
    """Problems with delivery: missing, duplicated, unexpected, misattributed."""
    problems = []
    expected = Counter(text for _, text in sent)
    sender_of = {text: nodes[i] for i, text in sent}
    for n in nodes:
        msgs = n.of("message")
        ids = Counter(str(m.get("id")) for m in msgs)
        got = Counter(n.texts())
        for text in expected:
            if got[text] == 0:
                problems.append(f"{n.label} missed {text!r} from {sender_of[text].label}")
            elif got[text] > 1:
                problems.append(f"{n.label} got {text!r} {got[text]} times")
        for text in got:
            if text not in expected:
                problems.append(f"{n.label} got unexpected {text!r}")
        dup_ids = [i for i, c in ids.items() if c > 1]
        if dup_ids:
            problems.append(f"{n.label} got message ids more than once: {dup_ids}")
        for m in msgs:
            s = sender_of.get(str(m.get("text")))
            if s is None:
                continue
            if m.get("origin") != s.node_id or m.get("name") != s.label:
                problems.append(f"{n.label} saw {m.get('text')!r} as from {m.get('name')}")
            if bool(m.get("self")) != (s is n):
                problems.append(f"{n.label} has self={m.get('self')} on {m.get('text')!r}")
    return problems


def print_transcripts(nodes: Sequence[NodeProcess]) -> None:
    for n in nodes:
        print(f"== {n.label} (node {n.node_id}, port {n.port}) ==")
        for m in n.of("message"):
            who = m.get("display") or m.get("name")
            if m.get("action"):
                print(f"  * {who} {m.get('text')}")
            else:
                print(f"  {who}: {m.get('text')}")
        for e in n.events:
            if e.get("event") == "leave":
                print(f"  -- {e.get('display') or e.get('name')} left ({e.get('reason')})")
        print()


def scripted(run: Run) -> int:
    nodes: list[NodeProcess] = []
    problems: list[str] = []
    sent: list[tuple[int, str]] = []
    try:
        how = "mDNS on 127.0.0.1" if run.mdns else f"{run.topology} topology"
        print(f"starting {run.n} nodes in room {run.room!r} ({how})", flush=True)
        err = start_nodes(run, nodes)
        if err is None:
            t0 = time.monotonic()
            if reached(nodes, lambda: mesh_connected(nodes), run.deadline_s):
                print(f"mesh connected in {time.monotonic() - t0:.1f} s", flush=True)
            else:
                err = "mesh not connected: not every node saw every other join"
        if err is not None:
            problems.append(err)
        else:
            for k, text in enumerate(SCRIPT):
                sender = nodes[k % run.n]
                sender.send_line(text)
                sent.append((k % run.n, text))
                if run.verbose:
                    print(f"  {sender.label} says {text!r}", flush=True)
                # One line at a time, so every transcript reads as a conversation.
                reached(nodes, _delivered(nodes, text), run.deadline_s)
            pump_for(nodes, 0.5)  # give a late duplicate the chance to show up
        for n in nodes:
            n.close_stdin()
        codes = wait_exit(nodes, max(run.deadline_s, 5.0))
        for n in nodes:
            if codes[n.label] is None:
                problems.append(f"{n.label} did not exit after EOF")
    finally:
        # A second Ctrl+C must not cut the clean-up short.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stop(nodes, STOP_TIMEOUT_S)
        finally:
            signal.signal(signal.SIGINT, previous)
    for n in nodes:
        rc = n.proc.returncode
        if rc != 0 and f"{n.label} did not exit after EOF" not in problems:
            problems.append(f"{n.label} exited with status {rc}")
    print_transcripts(nodes)
    if sent:
        problems[:0] = check(nodes, sent)
    if problems:
        for n in nodes:
            if n.proc.returncode != 0 or n.stderr or n.junk:
                print(tail(n))
        print("FAIL: " + "; ".join(problems))
        return 1
    print(f"PASS: every node got every line exactly once ({run.n} nodes, {len(sent)} lines)")
    return 0


def interactive(run: Run) -> int:
    tmux = shutil.which("tmux")
    if tmux is None:
        print("tmux is missing: install it, or run without --interactive", file=sys.stderr)
        return 1
    session = f"p2pchat-demo-{secrets.token_hex(3)}"
    ports = free_ports(run.n)
    commands = []
    for i in range(run.n):
        argv = [*base_command(), "--name", f"node{i}", "--room", run.room]
        argv += ["--interface", "127.0.0.1"]
        if run.mdns:
            argv += ["--port", "0", "--service-type", run.service_type]
        else:
            argv += ["--port", str(ports[i]), "--no-mdns"]
            if i > 0:
                argv += ["--peer", f"127.0.0.1:{ports[i - 1]}"]
            if run.topology == "ring" and run.n >= 3 and i == run.n - 1:
                argv += ["--peer", f"127.0.0.1:{ports[0]}"]
        commands.append(shlex.join(argv))

    def tm(*args: str) -> None:
        subprocess.run([tmux, *args], check=True, timeout=10, capture_output=True)

    created = False
    try:
        # One tmux command line, so the option is set before the first pane can exit.
        first = ["new-session", "-d", "-s", session, "-x", "200", "-y", "50", commands[0]]
        tm(*first, ";", "set-option", "-t", session, "remain-on-exit", "on")
        created = True
        for cmd in commands[1:]:
            tm("split-window", "-t", session, cmd)
            tm("select-layout", "-t", session, "tiled")
    except (subprocess.SubprocessError, OSError, KeyboardInterrupt) as exc:
        if created:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                tm("kill-session", "-t", session)
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        print(f"could not set up tmux: {detail}", file=sys.stderr)
        return 1
    how = "mDNS on 127.0.0.1" if run.mdns else f"{run.topology} topology, ports {ports}"
    print(f"tmux session {session!r}: {run.n} nodes in room {run.room!r} ({how})")
    print(f"  attach:  tmux attach -t {session}")
    print("  in a pane: type to chat, /who, /peers, /quit; switch panes with Ctrl+B then arrows")
    print(f"  stop all: tmux kill-session -t {session}")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Start several p2pchat nodes on 127.0.0.1 and check that they chat.",
        epilog="Exit status: 0 on PASS (or when the tmux session is up), 1 otherwise.",
    )
    p.add_argument("-n", "--nodes", type=int, default=4, help="number of nodes (default 4)")
    p.add_argument(
        "--topology",
        choices=["line", "ring"],
        default="line",
        help="static links: node i dials node i-1; ring: the last also dials the first",
    )
    p.add_argument(
        "--mdns",
        action="store_true",
        help="no static links: discover each other by mDNS on 127.0.0.1 only",
    )
    p.add_argument(
        "--interactive",
        action="store_true",
        help="open a tmux session with one interactive node per pane",
    )
    p.add_argument("--room", help="room name (default: a fresh random one)")
    p.add_argument(
        "--deadline",
        type=float,
        default=20.0,
        help="seconds to wait for each stage (default 20)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show lines as they are sent")
    args = p.parse_args(argv)
    if not 2 <= args.nodes <= MAX_NODES:
        p.error(f"--nodes must be 2..{MAX_NODES}")
    if args.deadline <= 0:
        p.error("--deadline must be positive")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(
        n=args.nodes,
        topology=args.topology,
        mdns=args.mdns,
        room=args.room or f"demo-{secrets.token_hex(3)}",
        service_type=f"_p2pt{secrets.token_hex(4)}._tcp.local.",
        deadline_s=args.deadline,
        verbose=args.verbose,
    )
    # SIGTERM and Ctrl+C both unwind through the finally blocks that stop nodes.
    # (SIGINT explicitly too: a shell starting us in the background ignores it.)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return interactive(run) if args.interactive else scripted(run)
    except KeyboardInterrupt:
        print("\ninterrupted; nodes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
