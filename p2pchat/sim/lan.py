"""The virtual LAN: a heap of timed events, hosts, links, dials and faults.

One thread, one virtual clock.  Every event is ``(time, seq, fn, args)`` on
a heap; ``seq`` counts up, so two events at one time run in the order they
were scheduled and one seed gives one run, event for event.  Nothing here
reads the real clock or the OS's randomness: all draws come from the
``random.Random`` given to :class:`Lan`.

Hosts handle frames in no virtual time, unless ``cpu_s`` is set: then each
frame costs that much, one at a time per host (a queue forms under load).
Links are TCP-like: each link has one latency (drawn when it comes up, the
same both ways), frames in one direction arrive in the order they were sent
(FIFO), and a link that breaks drops what was in flight.  A link has an int
id at each end (a fresh one per end), which is all a core sees of it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pchat import wire
from p2pchat.core.actions import Action, Close, Dial, Emit, Retire, Send
from p2pchat.core.config import NodeConfig
from p2pchat.core.history_store import MemoryStore
from p2pchat.errors import P2PChatError, RemoteProtocolError
from p2pchat.identity import Identity
from p2pchat.sim.api import Core, CoreFactory

WALL0 = 1_800_000_000.0
"""Epoch seconds at virtual time 0 (fixed, so that runs repeat)."""

DIAL_TIMEOUT_S = 3.0
"""How long a dial to an address cut off by a partition takes to fail."""

DECODE_CACHE_MAX = 50_000
"""Decoded frames kept (a frame forwarded to many links is decoded once)."""


@dataclass(eq=False, slots=True)
class End:
    """One end of a link.

    Attributes:
        host: the host at this end.
        lid: the link id this host's core knows the link by.
        peer: the other end (set once both exist).
        latency: one-way latency in seconds, both ways.
        last_arrival: virtual time the last frame sent from this end arrives
            (a later frame never arrives earlier: FIFO).
        alive: False once this end is down (frames to it are dropped).
        dialler: this host dialled the link.
        peer_node: the node id of the other end.
    """

    host: Host
    lid: int
    latency: float
    dialler: bool
    peer_node: str
    peer: End | None = None
    last_arrival: float = 0.0
    alive: bool = True


@dataclass(eq=False)
class Host:
    """A machine on the LAN: an honest node (``core`` set while it runs) or
    a hostile one (``honest`` False, driven by :mod:`p2pchat.sim.hostile`).

    Attributes:
        idx: index in :attr:`Lan.hosts`.
        addr: its IPv4 address on the virtual LAN.
        identity: its key pair (kept across restarts).
        store: its history store (kept across restarts).
        config: its node settings.
        core: the running core, None while down or not started.
        epoch: counts starts; events of an older incarnation are ignored.
        group: its side of the current partition (0 when healed).
        ends: its live link ends by link id.
        on_frame: for hostile hosts, what to do with a frame received.
    """

    idx: int
    addr: str
    identity: Identity
    store: MemoryStore
    config: NodeConfig
    honest: bool = True
    core: Core | None = None
    epoch: int = 0
    group: int = 0
    started: bool = False
    tick_at: float = math.inf
    last_tick: float = -1.0
    busy_until: float = 0.0
    ends: dict[int, End] = field(default_factory=dict)
    on_frame: Callable[[End, wire.Message, bytes], None] | None = None

    @property
    def node_id(self) -> str:
        """The host's node id."""
        return self.identity.node_id

    @property
    def up(self) -> bool:
        """True while the host runs (a hostile host always runs)."""
        return self.core is not None or not self.honest


class Watcher:
    """What the LAN tells an observer (:mod:`p2pchat.sim.observe`); each
    method is called from the simulator's thread at the event's time."""

    def on_emit(self, host: Host, action: Emit, now: float) -> None:
        """A core emitted an event for its front end."""

    def on_frame(self, host: Host, msg: wire.Message, frame: bytes, now: float) -> None:
        """A frame reached ``host`` and decoded."""


class Lan:
    """The virtual LAN and its clock.

    Args:
        rng: every random draw of the LAN (latencies, nonces).
        latency: draws one link's one-way latency in seconds.
        make_core: builds a node's core (:class:`p2pchat.sim.api.CoreFactory`).
        watcher: told of every frame and event.
        verify: the signature check every core gets (None: its default).
        cpu_s: virtual seconds an honest host takes to handle one frame (0:
            none); a host handles its frames one at a time, in arrival order,
            so a busy node queues them as a real one does.
    """

    def __init__(
        self,
        rng: random.Random,
        latency: Callable[[random.Random], float],
        make_core: CoreFactory,
        watcher: Watcher,
        verify: Callable[[str, str, bytes], bool] | None = None,
        cpu_s: float = 0.0,
    ) -> None:
        self.rng = rng
        self.verify = verify
        self.cpu_s = cpu_s
        self.latency = latency
        self.make_core = make_core
        self.watcher = watcher
        self.now = 0.0
        self.hosts: list[Host] = []
        self.by_addr: dict[str, Host] = {}
        self.events = 0
        self.anomalies: dict[str, int] = {}
        self.bad_frames = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.links_up = 0
        self.dials = 0
        self.dials_refused: dict[str, int] = {}
        self.closes: dict[str, int] = {}  # Close actions by reason
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._lids = itertools.count(1)
        self._decoded: dict[bytes, wire.Message | None] = {}

    # -- the clock ------------------------------------------------------------------

    @property
    def wall(self) -> float:
        """Epoch seconds now."""
        return WALL0 + self.now

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` at virtual time ``t`` (not before now)."""
        heapq.heappush(self._heap, (max(t, self.now), next(self._seq), fn, args))

    def run(self, until: float) -> None:
        """Run the events up to virtual time ``until``, then set the clock to it."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= until:
            t, _, fn, args = pop(heap)
            self.now = t
            self.events += 1
            fn(*args)
        self.now = max(self.now, until)

    def note(self, what: str) -> None:
        """Count an anomaly of the run (reported in the JSON)."""
        self.anomalies[what] = self.anomalies.get(what, 0) + 1

    # -- hosts ----------------------------------------------------------------------

    def add_host(self, identity: Identity, config: NodeConfig, honest: bool = True) -> Host:
        """A new host with the next address (10.x.y.z), not started."""
        idx = len(self.hosts)
        addr = f"10.{1 + idx // 65536}.{idx // 256 % 256}.{idx % 256}"
        store = MemoryStore(config.history_max_age_s, config.history_max_lines)
        host = Host(idx, addr, identity, store, config, honest=honest)
        self.hosts.append(host)
        self.by_addr[addr] = host
        return host

    def start(self, host: Host) -> None:
        """Start (or restart) an honest host: a new core on its kept identity and store."""
        if host.core is not None:
            return
        host.epoch += 1
        host.started = True
        host.tick_at = math.inf
        host.core = self.make_core(
            host.config,
            host.identity,
            host.store,
            now=self.now,
            wall=self.wall,
            rng=random.Random(self.rng.getrandbits(64)),
            port=host.config.port,
            addrs=[host.addr],
            verify=self.verify,
        )
        self._resched(host)

    def crash(self, host: Host) -> None:
        """Stop an honest host at once (no leave): its links break, and its
        peers see it after one latency; its store and identity are kept."""
        if host.core is None:
            return
        host.core = None
        host.epoch += 1
        for end in list(host.ends.values()):
            end.alive = False
            if end.peer is not None:
                self._close_peer_later(end, "crash")
        host.ends.clear()

    def call(self, host: Host, fn: Callable[[Core], list[Action]]) -> None:
        """Run one entry point of ``host``'s core (if it runs) and carry out its actions."""
        if host.core is not None:
            self.apply(host, fn(host.core))

    # -- actions --------------------------------------------------------------------

    def apply(self, host: Host, actions: list[Action]) -> None:
        """Carry out a core's actions, in order, then reschedule its timer."""
        for action in actions:
            if type(action) is Send:
                end = host.ends.get(action.link)  # type: ignore[call-overload]
                if end is not None:
                    self.send(end, action.frame)
            elif type(action) is Emit:
                self.watcher.on_emit(host, action, self.now)
            elif type(action) is Dial:
                self._dial(host, action)
            elif type(action) is Close:
                end = host.ends.get(action.link)  # type: ignore[call-overload]
                self.closes[action.reason] = self.closes.get(action.reason, 0) + 1
                if end is not None:
                    self.close(end, action.reason)
            elif type(action) is Retire:
                end = host.ends.get(action.link)  # type: ignore[call-overload]
                if end is not None:
                    self._retire(end)
            else:
                self.note(f"unknown_action:{type(action).__name__}")
        if host.core is not None:
            self._resched(host)

    def _resched(self, host: Host) -> None:
        assert host.core is not None
        deadline = host.core.next_deadline()
        if deadline <= self.now and host.last_tick == self.now:
            # Ticked at this very time and asked again: call it a little later
            # rather than spin (reported: a core that does not move its deadline).
            self.note("deadline_not_advanced")
            deadline = self.now + 0.001
        if deadline < host.tick_at:
            host.tick_at = deadline
            self.at(deadline, self._tick, host, host.epoch, deadline)

    def _tick(self, host: Host, epoch: int, deadline: float) -> None:
        core = host.core
        if core is None or host.epoch != epoch or host.tick_at != deadline:
            return
        host.tick_at = math.inf
        host.last_tick = self.now
        self.apply(host, core.tick(self.now, self.wall))

    # -- frames ---------------------------------------------------------------------

    def send(self, end: End, frame: bytes) -> None:
        """Put ``frame`` on the link at ``end``; it arrives one latency later,
        after every frame sent before it on that end (dropped if the link
        breaks meanwhile)."""
        if not end.alive or end.peer is None:
            return
        t = self.now + end.latency
        if t < end.last_arrival:
            t = end.last_arrival
        end.last_arrival = t
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        heapq.heappush(self._heap, (t, next(self._seq), self._deliver, (end.peer, frame)))

    def decode(self, frame: bytes) -> wire.Message | None:
        """The message of a whole frame (cached by value), None if it does not decode."""
        cache = self._decoded
        msg = cache.get(frame, cache)
        if msg is not cache:
            return msg  # type: ignore[return-value]
        try:
            (size,) = wire.HEADER.unpack_from(frame)
            body = frame[wire.HEADER.size :]
            if size != len(body):
                raise RemoteProtocolError("length prefix does not match")
            decoded: wire.Message | None = wire.decode_body(body)
        except (P2PChatError, ValueError):
            decoded = None
        if len(cache) >= DECODE_CACHE_MAX:
            cache.clear()
        cache[frame] = decoded
        return decoded

    def _deliver(self, end: End, frame: bytes) -> None:
        if not end.alive:
            return
        host = end.host
        if self.cpu_s and host.honest:
            # The host handles one frame at a time: this one is done (and
            # its effects happen) after the frames before it and its own cost.
            done = max(self.now, host.busy_until) + self.cpu_s
            host.busy_until = done
            heapq.heappush(self._heap, (done, next(self._seq), self._handle, (end, frame)))
            return
        self._handle(end, frame)

    def _handle(self, end: End, frame: bytes) -> None:
        if not end.alive:
            return
        host = end.host
        msg = self.decode(frame)
        if msg is None:
            # As the shell does: a frame that does not decode ends the link.
            self.bad_frames += 1
            self.close(end, "bad frame")
            return
        self.watcher.on_frame(host, msg, frame, self.now)
        if host.on_frame is not None:
            host.on_frame(end, msg, frame)
            return
        core = host.core
        if core is not None:
            self.apply(host, core.receive(end.lid, msg, self.now, self.wall))

    # -- links breaking -------------------------------------------------------------

    def _down(self, end: End, reason: str) -> None:
        """``end`` is down now: tell its core (and the dialler its dial ended)."""
        host = end.host
        if host.ends.get(end.lid) is not end:
            return
        end.alive = False
        del host.ends[end.lid]
        core = host.core
        if core is None:
            return
        actions = core.link_down(end.lid, reason, self.now, self.wall)
        if end.dialler:
            actions = actions + core.dial_done(end.peer_node, self.now, True, "")
        self.apply(host, actions)

    def _close_peer_later(self, end: End, reason: str) -> None:
        peer = end.peer
        if peer is not None and peer.alive:
            self.at(max(self.now + end.latency, end.last_arrival), self._down, peer, reason)

    def close(self, end: End, reason: str) -> None:
        """This end closes the link now: its frames in flight still arrive,
        then the peer sees the link end; frames to this end are dropped."""
        if not end.alive:
            return
        self._close_peer_later(end, reason)
        self._down(end, reason)

    def _retire(self, end: End) -> None:
        # Half-close after the queued frames: the peer sees the end after the
        # last of them, and this end one latency after that.
        peer = end.peer
        t = max(self.now + end.latency, end.last_arrival)
        if peer is not None and peer.alive:
            self.at(t, self._down, peer, "retired")
        self.at(t + end.latency, self._down, end, "retired")

    def cut(self, end: End, reason: str = "cut") -> None:
        """The link breaks under both ends at once (cable, partition):
        frames in flight are lost, both cores see the link go down now."""
        peer = end.peer
        for e in (end, peer):
            if e is not None and e.alive:
                self._down(e, reason)

    def links(self) -> list[End]:
        """Every live link once (the dialler's end), in a repeatable order."""
        return [e for h in self.hosts for e in h.ends.values() if e.dialler and e.alive]

    # -- dials ----------------------------------------------------------------------

    def reachable(self, a: Host, b: Host) -> bool:
        """True if ``a`` and ``b`` are on one side of the partition."""
        return a.group == b.group

    def nonce(self) -> str:
        """A fresh hello nonce, 32 hex digits (from the LAN's rng)."""
        return f"{self.rng.getrandbits(128):032x}"

    def _dial(self, host: Host, dial: Dial) -> None:
        self.dials += 1
        target = next((self.by_addr[a] for a in dial.addrs if a in self.by_addr), None)
        lat = self.latency(self.rng)
        if target is None or not target.up or not target.honest:
            self.at(self.now + 2 * lat, self._dial_failed, host, host.epoch, dial.node, "")
        elif not self.reachable(host, target):
            self.at(self.now + DIAL_TIMEOUT_S, self._dial_failed, host, host.epoch, dial.node, "")
        else:
            self.at(self.now + 2 * lat, self._handshake, host, host.epoch, target, dial.node, lat)

    def _dial_failed(self, host: Host, epoch: int, node: str, code: str) -> None:
        if host.epoch == epoch and host.core is not None:
            self.dials_refused[code or "unreachable"] = (
                self.dials_refused.get(code or "unreachable", 0) + 1
            )
            self.call(host, lambda c: c.dial_done(node, self.now, False, code))

    def _handshake(self, host: Host, epoch: int, target: Host, node: str, lat: float) -> None:
        """Both hellos and proofs at once, one round trip after the dial."""
        me, them = host.core, target.core
        if host.epoch != epoch or me is None:
            return
        if them is None or not self.reachable(host, target):
            self._dial_failed(host, epoch, node, "")
            return
        n_out, n_in = self.nonce(), self.nonce()
        h_out, h_in = me.hello(n_out), them.hello(n_in)
        refuse = them.check_hello("in", h_out, self.now) or me.check_hello("out", h_in, self.now)
        if refuse is not None:
            self._dial_failed(host, epoch, node, refuse.code)
            return
        if not them.check_proof(n_in, h_out, me.prove(h_in)) or not me.check_proof(
            n_out, h_in, them.prove(h_out)
        ):
            self.note("proof_failed")
            self._dial_failed(host, epoch, node, "proof")
            return
        out_end, in_end = self.join(host, target, lat, h_in.node, h_out.node)
        a_out = me.link_up(out_end.lid, h_in, "out", target.addr, self.now, self.wall)
        a_in = them.link_up(in_end.lid, h_out, "in", host.addr, self.now, self.wall)
        self.apply(host, a_out)
        self.apply(target, a_in)

    def join(
        self, dialler: Host, listener: Host, lat: float, listener_node: str, dialler_node: str
    ) -> tuple[End, End]:
        """Make a link's two ends (the dialler's first) and register them."""
        self.links_up += 1
        out_end = End(dialler, next(self._lids), lat, True, listener_node)
        in_end = End(listener, next(self._lids), lat, False, dialler_node)
        out_end.peer, in_end.peer = in_end, out_end
        dialler.ends[out_end.lid] = out_end
        listener.ends[in_end.lid] = in_end
        return out_end, in_end
