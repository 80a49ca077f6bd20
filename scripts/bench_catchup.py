#!/usr/bin/env python3
"""Benchmark catch-up: how long a new node takes to fetch a room's history
over one link, and what that does to the latency of live lines meanwhile.

Three node processes on 127.0.0.1 (static peers, no mDNS), one
``p2pchat.node.Node`` each:

* ``A`` holds ``--lines`` lines of ``--size`` bytes from 10 origins (its data
  directory is filled before it starts);
* ``C`` holds the same lines (so A and C have nothing to exchange) and is
  linked to A: it writes the live lines;
* ``B`` starts empty (ephemeral) and links to A only.

Once B's link to A is up, A pushes B the history in flow-controlled batches.
Meanwhile C writes a live line every ``1/--rate`` s, which reaches B through
A on the same link as the catch-up.  The script keeps this up for
``--after-s`` seconds after the catch-up ends, for a baseline on the same path.

Measured, with one clock (``time.monotonic()``, system-wide on Linux):

* ``catchup_s``: from B's link to A coming up to B's last history line;
* ``catchup_lines_per_s``: lines / catchup_s;
* ``live_during_p50_ms`` / ``_p99_ms``: latency C -> B of the live lines sent
  while the catch-up ran (send time just before ``Node.send``, receive time
  at B's delivery to the application);
* ``live_after_p50_ms`` / ``_p99_ms``: the same after the catch-up;
* ``live_lost``: live lines B never showed (should be 0).

Usage::

    python scripts/bench_catchup.py --lines 10000 --rate 20 [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pchat import wire
from p2pchat.events import Event, MessageEvent, PeerUp, Ready
from p2pchat.identity import Identity
from p2pchat.node import Node, NodeConfig
from p2pchat.store import Store

LOOPBACK = "127.0.0.1"
ROOM = "bench-catchup"
DEADLINE_S = 300.0
"""No run waits longer than this for anything."""


def prefill(data_dir: str, lines: int, size: int, seed: int) -> None:
    """Fill a data directory with ``lines`` signed lines from 10 made-up
    authors, the newest one second old (the same lines for the same seed)."""
    authors = [
        Identity(Ed25519PrivateKey.from_private_bytes(bytes([seed % 256, i]) * 16))
        for i in range(10)
    ]
    now_us = int(time.time() * 1e6) - 1_000_000
    text = "x" * size
    with Store.open(data_dir, max_lines=max(lines, 10_000)) as store:
        for i in range(lines):
            author = authors[i % 10]
            hlc = now_us - (lines - i) * 1000
            msg = wire.Chat(
                id=f"{seed:08x}{i:024x}",
                origin=author.node_id,
                seq=i // 10 + 1,
                name=f"o{i % 10}",
                room=ROOM,
                ts=hlc / 1e6,
                hops=16,
                text=text,
                line=i // 10 + 1,
                hlc=hlc,
                key=author.key,
            )
            store.add(msgspec.structs.replace(msg, sig=author.sign(wire.signing_bytes(msg))))
        store.flush()


def worker(
    role: str,
    data_dir: str | None,
    peer_port: int | None,
    max_lines: int,
    out: mp.Queue[tuple[Any, ...]],
    cmds: mp.Queue[tuple[Any, ...]],
) -> None:
    """One node process: reports events as tuples on ``out``; obeys ``cmds``
    (``("send", text)``, ``("stop",)``)."""

    def on_event(ev: Event) -> None:
        now = time.monotonic()
        if isinstance(ev, MessageEvent) and not ev.self:
            out.put(("msg", role, ev.text, ev.history, now))
        elif isinstance(ev, PeerUp):
            out.put(("up", role, now))
        elif isinstance(ev, Ready):
            out.put(("ready", role, ev.port))

    config = NodeConfig(
        name=role,
        room=ROOM,
        port=0,
        interfaces=[LOOPBACK],
        peers=[(LOOPBACK, peer_port)] if peer_port else [],
        data_dir=data_dir,
        history_max_lines=max_lines,
    )
    node = Node(config, on_event=on_event)
    try:
        node.start()
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                cmd = cmds.get(timeout=1.0)
            except queue.Empty:
                continue
            if cmd[0] == "stop":
                break
            sent = time.monotonic()
            node.send(cmd[1])
            out.put(("sent", role, cmd[1], sent))
    finally:
        node.close()
        out.put(("closed", role))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out: mp.Queue[tuple[Any, ...]] = ctx.Queue()
    cmds = {r: ctx.Queue() for r in "ABC"}
    procs: dict[str, mp.process.BaseProcess] = {}
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        dirs = {r: os.path.join(tmp, r) for r in "AC"}
        for d in dirs.values():
            prefill(d, args.lines, args.size, args.seed)
        window = max(args.lines, 10_000)

        def start(role: str, data_dir: str | None, peer: int | None) -> None:
            p = ctx.Process(
                target=worker,
                args=(role, data_dir, peer, window, out, cmds[role]),
                name=f"bench-{role}",
            )
            p.start()
            procs[role] = p

        ports: dict[str, int] = {}
        up: dict[str, float] = {}
        history_at: list[float] = []
        live_recv: dict[str, float] = {}
        sent: dict[str, float] = {}

        def take(timeout_s: float) -> None:
            try:
                ev = out.get(timeout=timeout_s)
            except queue.Empty:
                return
            if ev[0] == "ready":
                ports[ev[1]] = ev[2]
            elif ev[0] == "up":
                up.setdefault(ev[1], ev[2])
            elif ev[0] == "sent":
                sent[ev[2]] = ev[3]
            elif ev[0] == "msg" and ev[1] == "B":
                if ev[3]:
                    history_at.append(ev[4])
                else:
                    live_recv.setdefault(ev[2], ev[4])

        def wait(cond: Any, what: str) -> None:
            deadline = time.monotonic() + DEADLINE_S
            while not cond():
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting for {what}")
                take(0.05)

        try:
            start("A", dirs["A"], None)
            wait(lambda: "A" in ports, "A to start")
            start("C", dirs["C"], ports["A"])
            wait(lambda: "C" in up, "C to link to A")
            start("B", None, ports["A"])
            interval = 1.0 / args.rate
            next_send: float | None = None
            n = 0
            done_at: float | None = None
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                now = time.monotonic()
                if done_at is None and len(history_at) >= args.lines:
                    done_at = history_at[-1]
                if done_at is not None and now > done_at + args.after_s:
                    break
                if next_send is None and "B" in up:
                    next_send = now  # the first live line as the catch-up starts
                if next_send is not None and now >= next_send:
                    cmds["C"].put(("send", f"live {n}"))
                    n += 1
                    next_send += interval
                take(0.001 if next_send is None else max(0.0, min(0.01, next_send - now)))
            else:
                raise SystemExit("the catch-up did not finish in time")
            wait(lambda: len(sent) >= n, "the send reports")
            settle = time.monotonic() + 2.0
            while time.monotonic() < settle and len(live_recv) < n:
                take(0.05)
        finally:
            for role, q in cmds.items():
                if role in procs:
                    q.put(("stop",))
            for p in procs.values():
                p.join(10.0)
                if p.is_alive():
                    p.kill()
                    p.join(5.0)
    assert done_at is not None
    during = [live_recv[t] - s for t, s in sent.items() if t in live_recv and s <= done_at]
    after = [live_recv[t] - s for t, s in sent.items() if t in live_recv and s > done_at]
    catchup_s = done_at - up["B"]
    return {
        "lines": args.lines,
        "size": args.size,
        "history_received": len(history_at),
        "catchup_s": round(catchup_s, 3),
        "catchup_lines_per_s": round(args.lines / catchup_s, 1),
        "live_during_n": len(during),
        "live_during_p50_ms": round(pct(during, 50) * 1000, 2),
        "live_during_p99_ms": round(pct(during, 99) * 1000, 2),
        "live_after_n": len(after),
        "live_after_p50_ms": round(pct(after, 50) * 1000, 2),
        "live_after_p99_ms": round(pct(after, 99) * 1000, 2),
        "live_lost": len(sent) - len(live_recv),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=10_000, help="history lines (default 10000)")
    p.add_argument("--size", type=int, default=100, help="bytes of text per line (default 100)")
    p.add_argument("--rate", type=float, default=20.0, help="live lines/s (default 20)")
    p.add_argument("--after-s", type=float, default=5.0, help="live lines after the catch-up (s)")
    p.add_argument("--runs", type=int, default=1, help="runs; medians are reported")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="end with one JSON line of results")
    args = p.parse_args(argv)
    if args.lines < 1 or args.rate <= 0 or args.runs < 1 or not 1 <= args.size <= 2000:
        p.error("--lines, --rate and --runs must be positive; --size 1..2000")
    results = [run(args) for _ in range(args.runs)]
    keys = [k for k in results[0] if k not in ("lines", "size")]
    summary: dict[str, Any] = {"lines": args.lines, "size": args.size, "runs": args.runs}
    for k in keys:
        summary[k] = statistics.median(r[k] for r in results)
    width = max(len(k) for k in keys)
    print(
        f"catch-up of {args.lines} lines of {args.size} bytes over one link, "
        f"live lines at {args.rate:g}/s"
    )
    for k in keys:
        print(f"  {k:<{width}}  {summary[k]}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
