"""What the simulator watches, and the invariants it checks at the end.

:class:`Observer` is told of every frame and every event of every node (by
:class:`p2pchat.sim.lan.Lan`, on the simulator's one thread) and keeps
counters; :meth:`Observer.invariants` and :meth:`Observer.figures` turn them
into the JSON report.  The invariants (each true or false, with samples of
what broke):

* ``exactly_once``: every line an honest node sent was shown (a
  ``MessageEvent``, live or as an earlier line) exactly once by every
  honest node that runs at the end, counted over its restarts (of the lines
  missing, ``missing_stored_at_crash`` counts those a node had stored but
  not shown when it crashed);
* ``fifo``: on every node's live view (``history`` False) the lines of one
  origin come in increasing ``line`` order, over its restarts too (of the
  breaks, ``broken_across_restart`` counts those where the later line was
  shown before a restart and the earlier one after it);
* ``history_identical``: ``/history`` (``Protocol.history``) is the same
  list on every honest node at the end;
* ``no_future_lines``: no honest node showed a line of the future-clock
  attacker;
* ``overlay_connected`` (checked by :mod:`p2pchat.sim.scenario`): the links
  between the honest nodes that run form one connected graph at the end.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

from p2pchat import wire
from p2pchat.core.actions import Emit
from p2pchat.events import MessageEvent
from p2pchat.sim.lan import Host, Lan, Watcher

SAMPLES = 5
"""Examples kept of each broken invariant."""


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Observer(Watcher):
    """Counters over a run (see the module docstring).

    Args:
        hosts: number of hosts (honest and hostile), indexed as the LAN's.
    """

    def __init__(self, hosts: int) -> None:
        self.shown: list[Counter[str]] = [Counter() for _ in range(hosts)]
        # per host: origin -> (last line shown live, the incarnation that showed it)
        self.live_last: list[dict[str, tuple[int, int]]] = [{} for _ in range(hosts)]
        self.chat_ids: list[set[str]] = [set() for _ in range(hosts)]
        self.frames_in = [0] * hosts
        self.bytes_in = [0] * hosts
        self.chat_frames = 0
        self.chat_bytes = 0
        self.chat_copies = 0
        self.chat_dups = 0
        self.kinds: Counter[str] = Counter()
        self.hosts = hosts
        self.got: dict[str, bytearray] = {}  # flooded id (not chat) -> who got a copy
        self.copies: Counter[str] = Counter()  # by kind: copies received
        self.unique: Counter[str] = Counter()  # by kind: (node, message) pairs
        self.delays: list[float] = []  # every show of an honest line by another node
        self.honest_lines: dict[str, tuple[int, float]] = {}  # id -> (host idx, sent at)
        self.last_shown: dict[str, float] = {}  # honest line id -> last first-show time
        self.shows = 0
        self.first_shows = 0  # (honest host, honest line) pairs shown at least once
        self.history_shows = 0
        self.fifo_broken: list[dict[str, Any]] = []
        self.fifo_count = 0
        self.fifo_across_restart = 0
        self.hostile_kind: dict[str, str] = {}  # hostile node id -> attack
        self.hostile_shown: Counter[str] = Counter()
        self.unshown_at_crash: dict[int, set[str]] = {}
        self.heal_at: float | None = None
        self.converge_s: float | None = None
        self.max_state = {"members": 0, "seen": 0, "store_lines": 0, "links": 0}
        self.trace = hashlib.sha256()

    # -- the LAN's callbacks ----------------------------------------------------------

    def on_frame(self, host: Host, msg: wire.Message, frame: bytes, now: float) -> None:
        """Count a frame received: by kind, and chat copies and duplicates."""
        if not host.honest:
            return
        i = host.idx
        self.frames_in[i] += 1
        self.bytes_in[i] += len(frame)
        kind = type(msg)
        self.kinds[kind.__name__] += 1
        if kind is wire.Chat:
            lines: list[wire.Chat] = [msg]  # type: ignore[list-item]
        elif kind is wire.Lines:
            lines = msg.lines  # type: ignore[union-attr]
        else:
            if isinstance(msg, wire.Flooded):
                name = kind.__name__
                self.copies[name] += 1
                got = self.got.get(msg.id)
                if got is None:
                    got = self.got[msg.id] = bytearray(self.hosts)
                if not got[i]:
                    got[i] = 1
                    self.unique[name] += 1
            return
        self.chat_frames += 1
        self.chat_bytes += len(frame)
        ids = self.chat_ids[i]
        for line in lines:
            self.chat_copies += 1
            if line.id in ids:
                self.chat_dups += 1
            else:
                ids.add(line.id)

    def on_emit(self, host: Host, action: Emit, now: float) -> None:
        """Count a line shown, check per-origin order, note convergence."""
        ev = action.event
        if type(ev) is not MessageEvent or ev.private:
            return
        i = host.idx
        self.trace.update(f"{now:.6f} {i} {ev.id} {int(ev.history)}\n".encode())
        if ev.self and not ev.history and host.honest and ev.id not in self.honest_lines:
            self.honest_lines[ev.id] = (i, now)
        shown = self.shown[i]
        shown[ev.id] += 1
        self.shows += 1
        if ev.history:
            self.history_shows += 1
        elif ev.line > 0:
            last = self.live_last[i]
            before = last.get(ev.origin)
            if before is not None and ev.line <= before[0]:
                self.fifo_count += 1
                across = before[1] != host.epoch
                self.fifo_across_restart += across
                if len(self.fifo_broken) < SAMPLES:
                    self.fifo_broken.append(
                        {
                            "node": i,
                            "origin": ev.origin,
                            "line": ev.line,
                            "after": before[0],
                            "after_restart": across,
                            "t": round(now, 6),
                        }
                    )
            else:
                last[ev.origin] = (ev.line, host.epoch)
        kind = self.hostile_kind.get(ev.origin)
        if kind is not None:
            self.hostile_shown[kind] += 1
        sent = self.honest_lines.get(ev.id)
        if sent is not None and shown[ev.id] == 1:
            self.first_shows += host.honest
            self.last_shown[ev.id] = now
            if sent[0] != i:
                self.delays.append(now - sent[1])
            if self.heal_at is not None and sent[1] < self.heal_at <= now:
                since = now - self.heal_at
                if self.converge_s is None or since > self.converge_s:
                    self.converge_s = since

    def crashing(self, host: Host) -> None:
        """``host`` is about to crash: note the honest lines its store holds
        that it has not shown (a restart finds them stored, so nothing
        brings them to its screen again: ``missing_stored_at_crash``)."""
        shown = self.shown[host.idx]
        unshown = [i for i in self.honest_lines if not shown.get(i)]
        held = {m.id for m in host.store.get(unshown)}
        if held:
            self.unshown_at_crash.setdefault(host.idx, set()).update(held)

    def sample_state(self, lan: Lan) -> None:
        """Note the largest per-node state now (honest nodes that run)."""
        top = self.max_state
        for host in lan.hosts:
            core = host.core
            if core is None:
                continue
            top["members"] = max(top["members"], len(core.roster))
            top["seen"] = max(top["seen"], len(core.seen))
            top["store_lines"] = max(top["store_lines"], host.store.count(core.wire_room))
            top["links"] = max(top["links"], len(host.ends))

    # -- the end --------------------------------------------------------------------

    def delivered_all(self, honest: list[Host]) -> bool:
        """True if every honest line was shown by every honest host (compares
        two counts: cheap enough to ask often)."""
        return self.first_shows >= len(self.honest_lines) * len(honest)

    @staticmethod
    def history_variants(
        live: list[Host], history_n: int
    ) -> list[tuple[tuple[str, ...], list[int]]]:
        """The distinct ``/history`` lists (line ids) of the running hosts,
        each with the hosts that show it, the most common first."""
        histories: dict[tuple[str, ...], list[int]] = {}
        for host in live:
            if host.core is not None:
                ids = tuple(ev.id for ev in host.core.history(history_n))
                histories.setdefault(ids, []).append(host.idx)
        return sorted(histories.items(), key=lambda kv: -len(kv[1]))

    def invariants(self, lan: Lan, honest: list[Host], history_n: int) -> dict[str, Any]:
        """Check the invariants on the honest hosts that run at the end."""
        live = [h for h in honest if h.core is not None]
        missing = dupes = held = 0
        samples: list[dict[str, Any]] = []
        for host in live:
            shown = self.shown[host.idx]
            stored_unshown = self.unshown_at_crash.get(host.idx, set())
            for line_id in self.honest_lines:
                n = shown.get(line_id, 0)
                if n != 1:
                    missing += n == 0
                    dupes += n > 1
                    held += n == 0 and line_id in stored_unshown
                    if len(samples) < SAMPLES:
                        sample = {"node": host.idx, "line": line_id, "shown": n}
                        if line_id in stored_unshown:
                            sample["stored_unshown_at_crash"] = True
                        samples.append(sample)
        variants = self.history_variants(live, history_n)
        history_len = len(variants[0][0]) if variants else 0
        return {
            "exactly_once": {
                "ok": missing == 0 and dupes == 0,
                "missing": missing,
                "missing_stored_at_crash": held,
                "duplicated": dupes,
                "samples": samples,
            },
            "fifo": {
                "ok": self.fifo_count == 0,
                "broken": self.fifo_count,
                "broken_across_restart": self.fifo_across_restart,
                "samples": self.fifo_broken,
            },
            "history_identical": {
                "ok": len(variants) <= 1,
                "variants": len(variants),
                "lines": history_len,
                "nodes_per_variant": [len(v[1]) for v in variants[:SAMPLES]],
            },
            "no_future_lines": {
                "ok": self.hostile_shown.get("future", 0) == 0,
                "shown": self.hostile_shown.get("future", 0),
            },
        }

    def figures(self, honest: list[Host], lines: int, idle: dict[str, Any]) -> dict[str, Any]:
        """The run's figures: frames, bytes and duplicates per node per line,
        latency to the last node, convergence, largest state, idle frames."""
        n = max(1, len(honest))
        per = max(1, n * max(1, lines))
        lat = [
            self.last_shown[i] - sent
            for i, (_, sent) in self.honest_lines.items()
            if i in self.last_shown
        ]
        frames = [self.frames_in[h.idx] for h in honest]
        return {
            "frames_per_node_per_line": round(self.chat_frames / per, 3),
            "line_copies_per_node_per_line": round(self.chat_copies / per, 3),
            "bytes_per_node_per_line": round(self.chat_bytes / per, 1),
            "duplicates_per_node_per_line": round(self.chat_dups / per, 3),
            "all_frames_per_node": round(sum(frames) / n, 1),
            "max_frames_per_node": max(frames, default=0),
            "frames_by_kind": dict(sorted(self.kinds.items())),
            "copies_per_node_per_message": {
                k: round(self.copies[k] / max(1, self.unique[k]), 3) for k in sorted(self.copies)
            },
            "shown_as_earlier": self.history_shows,
            "latency_to_last_node_s": {
                "p50": round(_percentile(lat, 0.5), 4),
                "p99": round(_percentile(lat, 0.99), 4),
                "max": round(max(lat, default=0.0), 4),
            },
            "latency_s": {
                "p50": round(_percentile(self.delays, 0.5), 4),
                "p99": round(_percentile(self.delays, 0.99), 4),
                "over_0.5s": round(
                    sum(1 for d in self.delays if d > 0.5) / max(1, len(self.delays)), 3
                ),
            },
            "converge_after_heal_s": (
                None if self.converge_s is None else round(self.converge_s, 4)
            ),
            "max_state": dict(self.max_state),
            "idle": idle,
        }

    def idle_mark(self, honest: list[Host]) -> tuple[int, int]:
        """Frames and bytes received by the honest hosts so far."""
        return (
            sum(self.frames_in[h.idx] for h in honest),
            sum(self.bytes_in[h.idx] for h in honest),
        )


def overlay(lan: Lan) -> dict[str, float]:
    """The link graph of the honest hosts that run: how many connected
    parts it has, and the most and mean links a host has."""
    live = [h for h in lan.hosts if h.core is not None]
    if not live:
        return {"parts": 0, "max_links": 0, "mean_links": 0.0}
    parts, seen = 0, set()
    for start in live:
        if start.idx in seen:
            continue
        parts += 1
        seen.add(start.idx)
        todo = [start]
        while todo:
            host = todo.pop()
            for end in host.ends.values():
                peer = end.peer.host if end.peer is not None else None
                if peer is not None and peer.core is not None and peer.idx not in seen:
                    seen.add(peer.idx)
                    todo.append(peer)
    degrees = [sum(1 for e in h.ends.values() if e.peer and e.peer.host.honest) for h in live]
    return {
        "parts": parts,
        "max_links": max(degrees),
        "mean_links": round(sum(degrees) / len(degrees), 2),
    }
