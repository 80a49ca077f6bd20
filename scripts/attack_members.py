#!/usr/bin/env python3
"""Fake members without end: what a flood of fresh keys costs a victim node.

Starts two honest ``p2pchat --json`` nodes on 127.0.0.1 (alice, the victim, and bob, linked to
her), then links a raw attacker to alice that sends one validly signed presence from each of
``--fakes`` fresh keys, each announcing a one-hour interval (issue 11, attack 4).  It measures
alice's resident memory (``VmRSS`` of her process) before and after, checks that a line each
way between alice and bob still arrives, and prints one JSON object::

    {"fakes": 20000, "rss_before_kb": ..., "rss_after_kb": ..., "rss_growth_mb": ...,
     "members": ..., "members_full": ..., "honest_lines": true, "seconds": ...}

Exit status 1 when the growth is ``--max-growth-mb`` or more, or an honest line was lost.

Network safety: every process binds 127.0.0.1 with ``--no-mdns``; the attacker connects to
127.0.0.1 only and its presences name no address.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from p2pchat import wire  # noqa: E402
from p2pchat.harness import NodeProcess, env_with_path, stop  # noqa: E402
from p2pchat.identity import Identity  # noqa: E402

LOOPBACK = "127.0.0.1"


def rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def node(name: str, room: str, peer_port: int | None = None) -> NodeProcess:
    argv = [sys.executable, "-m", "p2pchat", "--json", "--ephemeral", "--no-mdns"]
    argv += ["--interface", LOOPBACK, "--port", "0", "--name", name, "--room", room]
    if peer_port is not None:
        argv += ["--peer", f"{LOOPBACK}:{peer_port}"]
    return NodeProcess.spawn(argv, name, env=env_with_path(ROOT))


class Attacker:
    """A raw link to the victim: hello and proof as an honest node, then whatever we send.
    A daemon thread drains what the victim sends; :meth:`close` ends both."""

    def __init__(self, port: int, room: str) -> None:
        self.me = Identity.generate()
        self.sock = socket.create_connection((LOOPBACK, port), timeout=5.0)
        nonce = os.urandom(16).hex()
        hello = wire.Hello(
            version=wire.PROTOCOL_VERSION,
            node=self.me.node_id,
            name="mallory",
            room=room,
            port=0,
            nonce=nonce,
            key=self.me.key,
        )
        self.sock.sendall(wire.encode_frame(hello))
        decoder = wire.FrameDecoder()
        theirs: wire.Message | None = None
        while theirs is None:
            got = decoder.feed(self.sock.recv(65536))
            theirs = got[0] if got else None
        if not isinstance(theirs, wire.Hello):
            raise RuntimeError(f"the victim answered {theirs!r}")
        proof = wire.proof_bytes(theirs.nonce, self.me.node_id, theirs.node, room)
        self.sock.sendall(wire.encode_frame(wire.Proof(sig=self.me.sign(proof))))
        self._stop = threading.Event()
        self._drain = threading.Thread(target=self._read, name="attacker-drain", daemon=True)
        self._drain.start()

    def _read(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                if not self.sock.recv(65536):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._drain.join(2.0)


def fake_presences(n: int, room: str) -> list[bytes]:
    """``n`` frames, each a presence signed by a fresh key, announcing a one-hour interval."""
    frames = []
    for _ in range(n):
        fake = Identity.generate()
        msg = wire.Presence(
            id=wire.new_message_id(),
            origin=fake.node_id,
            seq=1,
            name=f"fake{fake.node_id[:8]}",
            room=room,
            ts=wire.now_ts(),
            hops=16,
            every=3600.0,
            key=fake.key,
        )
        signed = msgspec.structs.replace(msg, sig=fake.sign(wire.signing_bytes(msg)))
        frames.append(wire.encode_frame(signed))
    return frames


def stats_of(proc: NodeProcess) -> dict[str, object]:
    before = len(proc.of("stats"))
    proc.send_line("/stats")
    deadline = time.monotonic() + 10.0
    while len(proc.of("stats")) <= before:
        if time.monotonic() > deadline:
            raise RuntimeError("no stats event from the victim")
        proc.pump(0.1)
    return dict(proc.of("stats")[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fakes", type=int, default=20_000, help="fresh keys (default 20000)")
    ap.add_argument("--rate", type=float, default=1500.0, help="presences per second sent")
    ap.add_argument("--max-growth-mb", type=float, default=20.0)
    args = ap.parse_args(argv)
    room = f"attack-{os.urandom(3).hex()}"
    started = time.monotonic()
    frames = fake_presences(args.fakes, room)
    alice = node("alice", room)
    procs = [alice]
    attacker: Attacker | None = None
    try:
        port = int(alice.wait_event("ready", timeout_s=20.0)["port"])
        bob = node("bob", room, port)
        procs.append(bob)
        alice.wait_event("peer_up", timeout_s=20.0)
        bob.wait_event("join", timeout_s=20.0)
        attacker = Attacker(port, room)
        time.sleep(1.0)  # settle: alice's threads and caches are warm
        alice.pump()
        before = rss_kb(alice.proc.pid)
        keepalive = wire.encode_frame(wire.Keepalive())
        t0 = time.monotonic()
        for i, frame in enumerate(frames):
            attacker.send(frame)
            if i % 100 == 99:
                attacker.send(keepalive)
                alice.pump()
                bob.pump()
                ahead = t0 + (i + 1) / args.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        attacker.send(keepalive)
        stats = stats_of(alice)
        alice.send_line("alice after the attack")
        bob.send_line("bob after the attack")
        ok = True
        try:
            bob.wait_event("message", text="alice after the attack", timeout_s=20.0)
            alice.wait_event("message", text="bob after the attack", timeout_s=20.0)
        except AssertionError:
            ok = False
        after = rss_kb(alice.proc.pid)
        rate_limited = stats.get("rate_limited")
        full = rate_limited.get("members_full", 0) if isinstance(rate_limited, dict) else 0
        result = {
            "fakes": args.fakes,
            "rss_before_kb": before,
            "rss_after_kb": after,
            "rss_growth_mb": round((after - before) / 1024, 1),
            "members": stats.get("members"),
            "members_full": full,
            "honest_lines": ok,
            "seconds": round(time.monotonic() - started, 1),
        }
        print(json.dumps(result))
        return 0 if ok and (after - before) / 1024 < args.max_growth_mb else 1
    finally:
        if attacker is not None:
            attacker.close()
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
