"""An in-memory net of protocol cores, for the core's own tests: no sockets, threads or sleeps.

Not the simulator (:mod:`p2pchat.sim` is that): a small synchronous harness that joins a few
:class:`~p2pchat.core.protocol.Protocol` instances and plays the threaded shell's part for
them, by hand, one frame at a time::

    net = CoreNet(seed=1)
    alice, bob = net.add("alice"), net.add("bob")
    net.connect(alice, bob)          # hello, check_hello, prove, check_proof, link_up on both
    net.say(alice, "hi")             # send_line: the frames go into the link's queues
    net.run_until_quiet()            # deliver every queued frame, decoded by p2pchat.wire
    net.tick_all(1.0)                # one virtual second: tick() each node at its deadline
    assert bob.texts() == ["hi"]     # the MessageEvents bob's front end got

Time is virtual: ``net.now`` seconds (monotonic), ``net.wall == WALL0 + net.now``; frames
take no time; nothing moves until the test calls :meth:`CoreNet.step`,
:meth:`CoreNet.run_until_quiet` or :meth:`CoreNet.tick_all`.  Each link direction is a FIFO
queue of encoded frames (a test may drop or copy a frame in flight); :meth:`CoreNet.step`
delivers the frame queued first over all links.  A node's actions are carried out at once,
in order: ``Send`` queues, ``Emit`` is recorded in :attr:`CoreNode.events`, ``Close`` ends
the link on both sides, ``Retire`` ends it once the frames queued before it are delivered,
``Dial`` is recorded (:attr:`CoreNode.dials`) and carried out as a :meth:`connect` to the node
of that id, at the next :meth:`CoreNet.step`, with ``dial_done`` when it fails or its link ends
(``honour_dials=False``: recorded only).  Peers are learnt only from :meth:`CoreNet.found` (a
node's presences name no address here), so a test that never calls it links nodes by hand.

:class:`RawPeer` is a hostile peer: a key of its own, a handshake like anyone's, and frames
built by hand with :mod:`p2pchat.wire` and signed with its key.

Every random choice of a core comes from a ``random.Random`` seeded from the net's seed;
identities are :meth:`Identity.generate` (fresh keys each run: tests compare with the ids
they get, such as the lower of two).
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from p2pchat import wire
from p2pchat.core.actions import Action, Close, Dial, Emit, Retire, Send
from p2pchat.core.config import NodeConfig
from p2pchat.core.history_store import MemoryStore
from p2pchat.core.protocol import Protocol
from p2pchat.errors import RemoteProtocolError
from p2pchat.events import Event, MessageEvent, Notice
from p2pchat.files.manifest import Offer
from p2pchat.identity import Identity

WALL0 = 1.7e9
"""The wall clock (seconds since the epoch) at virtual time 0."""

MAX_STEPS = 200_000
"""Most frames one :meth:`CoreNet.run_until_quiet` delivers (a loop is a bug)."""

MAX_TICKS_AT_ONCE = 1_000
"""Most tick rounds :meth:`CoreNet.tick_all` runs at one instant (a deadline
that never moves on is a bug)."""


@dataclass(frozen=True)
class End:
    """One end of a link, as the party ``owner`` holds it (the core's opaque link id).

    Attributes:
        owner: the name of the party holding this end.
        peer: the name of the party at the other end.
        number: the link's number in the net (both ends share it).
    """

    owner: str
    peer: str
    number: int

    def __str__(self) -> str:
        return f"{self.owner}>{self.peer}#{self.number}"


@dataclass(frozen=True)
class Link:
    """A link whose handshake passed: ``out`` is the dialler's end, ``into`` the dialled one's."""

    out: End
    into: End


@dataclass(frozen=True)
class Refused:
    """A handshake that failed: ``by`` (a party's name) sent ``refuse``."""

    by: str
    refuse: wire.Refuse

    @property
    def code(self) -> str:
        """The refusal's code (``self``, ``identity``, ``room``, ``busy``, ``bad_proof``)."""
        return self.refuse.code


_EOF = b""
"""Queued after a ``Retire``: the end of what the retiring side sends."""


class Party:
    """Anything that holds link ends in the net: a :class:`CoreNode` or a :class:`RawPeer`."""

    def __init__(self, name: str, ident: Identity) -> None:
        self.name = name
        self.identity = ident
        self.node_id = ident.node_id
        self.nonces = 0

    def new_nonce(self) -> str:
        """A fresh nonce for a handshake (32 hex digits, deterministic per party)."""
        self.nonces += 1
        return f"{self.nonces:032x}"


class CoreNode(Party):
    """One honest node: a :class:`Protocol` with a :class:`MemoryStore`, and what its
    front end was told.

    Attributes:
        core: the protocol core.
        store: its history store.
        events: every event the core emitted, in order.
        dials: every ``Dial`` the core asked for.
        refused: its handshakes that the other side refused (``Refused``).
        gone: True once it left or crashed (no more ticks or frames).
    """

    def __init__(self, name: str, ident: Identity, core: Protocol, store: MemoryStore) -> None:
        super().__init__(name, ident)
        self.core = core
        self.store = store
        self.events: list[Event] = []
        self.dials: list[Dial] = []
        self.refused: list[Refused] = []
        self.gone = False

    def __repr__(self) -> str:
        return f"CoreNode({self.name}, {self.node_id})"

    # -- what the front end saw ----------------------------------------------------------

    def of(self, kind: type[Any]) -> list[Any]:
        """The events of one type, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    def messages(self) -> list[MessageEvent]:
        """The chat lines shown (not direct messages), in order."""
        return [e for e in self.of(MessageEvent) if not e.private]

    def texts(self, *, others_only: bool = False) -> list[str]:
        """The texts of the chat lines shown, in order (``others_only``: not our own)."""
        return [e.text for e in self.messages() if not (others_only and e.self)]

    def notices(self) -> list[str]:
        """The texts of the notices shown."""
        return [e.text for e in self.of(Notice)]

    def history(self, n: int = 1000) -> list[tuple[str, int, str, str]]:
        """``/history``: ``(origin, line, id, text)`` of the last ``n`` stored lines."""
        return [(e.origin, e.line, e.id, e.text) for e in self.core.history(n)]

    def stats(self) -> dict[str, Any]:
        """The core's ``/stats`` counters (:meth:`Protocol.stats_counts`)."""
        return dict(self.core.stats_counts())


class RawPeer(Party):
    """A hostile peer: its own key, an honest handshake, and frames made by hand.

    Attributes:
        received: ``(our end, message)`` for every frame a node sent us, decoded.
        seq: the ``seq`` of our last flooded message.
        wire_name: the name our messages carry.
    """

    def __init__(self, net: CoreNet, name: str, ident: Identity, wire_name: str) -> None:
        super().__init__(name, ident)
        self.net = net
        self.wire_name = wire_name
        self.received: list[tuple[End, wire.Message]] = []
        self.seq = 0

    def signed(self, msg: wire.F) -> wire.F:
        """``msg`` under our node id, with our key and a valid signature."""
        msg = msgspec.structs.replace(msg, origin=self.node_id, key=self.identity.key, sig="")
        return msgspec.structs.replace(msg, sig=self.identity.sign(wire.signing_bytes(msg)))

    def envelope(self, **fields: Any) -> dict[str, Any]:
        """The common fields of our next flooded message (``fields`` override)."""
        self.seq += 1
        values: dict[str, Any] = {
            "id": self.net.rng.getrandbits(128).to_bytes(16, "big").hex(),
            "origin": self.node_id,
            "seq": self.seq,
            "name": self.wire_name,
            "room": self.net.room,
            "ts": self.net.wall,
            "hops": wire.DEFAULT_HOP_LIMIT,
        }
        values.update(fields)
        return values

    def chat(self, text: str, line: int, **fields: Any) -> wire.Chat:
        """A signed chat line of ours numbered ``line`` (``hlc`` now unless given)."""
        hlc = fields.pop("hlc", int(self.net.wall * 1e6))
        return self.signed(wire.Chat(text=text, line=line, hlc=hlc, **self.envelope(**fields)))

    def send(self, end: End, msg: wire.Message | bytes) -> None:
        """Queue a message (or a whole encoded frame) on our end of a link."""
        self.net.queue(end, msg if isinstance(msg, bytes) else wire.encode_frame(msg))

    def got(self, kind: type[Any]) -> list[Any]:
        """The messages of one type the nodes sent us, in order."""
        return [m for _, m in self.received if isinstance(m, kind)]


@dataclass
class _LinkState:
    ends: Link
    hello: dict[End, wire.Hello]  # end -> the hello of the party at the other end
    up: set[End] = field(default_factory=set)  # ends whose core had link_up
    retired: set[End] = field(default_factory=set)


class CoreNet:
    """Protocol cores joined in memory (see the module docstring).

    Args:
        seed: seeds every core's ``random.Random`` and the net's own.
        room: the room every node joins unless told otherwise.
        honour_dials: carry out the cores' ``Dial`` actions (else only record them).
        config: :class:`NodeConfig` fields for every node (``add`` may override).
    """

    def __init__(
        self, seed: int = 1, room: str = "lobby", honour_dials: bool = True, **config: Any
    ) -> None:
        self.rng = random.Random(seed)
        self.honour_dials = honour_dials
        self._dials: deque[tuple[CoreNode, Dial]] = deque()  # to carry out, in order
        self._dialled: dict[int, tuple[CoreNode, str]] = {}  # link -> (dialler, node id)
        self.room = room
        self.config = config
        self.now = 0.0
        self.parties: dict[str, Party] = {}
        self.links: dict[int, _LinkState] = {}
        self.queues: dict[End, deque[tuple[int, bytes]]] = {}
        self.decoders: dict[End, wire.FrameDecoder] = {}
        self._serial = 0
        self._numbers = 0
        self.delivered = 0  # frames delivered so far

    @property
    def wall(self) -> float:
        """The wall clock now (seconds since the epoch)."""
        return WALL0 + self.now

    @property
    def nodes(self) -> list[CoreNode]:
        """The honest nodes still running, in the order they were added."""
        return [p for p in self.parties.values() if isinstance(p, CoreNode) and not p.gone]

    # -- parties -------------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        store: MemoryStore | None = None,
        identity: Identity | None = None,
        **config: Any,
    ) -> CoreNode:
        """A new node called ``name`` (also its display name unless ``config`` says).
        ``store`` and ``identity``: a node that left or crashed restarting with its own
        (it may take its old ``name`` again)."""
        settings: dict[str, Any] = {"name": name, "room": self.room, "port": 0}
        settings.update(self.config)
        settings.update(config)
        cfg = NodeConfig(**settings)
        if store is None:
            store = MemoryStore(cfg.history_max_age_s, cfg.history_max_lines)
        ident = identity or Identity.generate()
        rng = random.Random(self.rng.getrandbits(64))
        # On loopback, as the addresses it learns (p2pchat.addrs: loopback only then).
        core = Protocol(
            cfg, ident, store, now=self.now, wall=self.wall, rng=rng, addrs=["127.0.0.1"]
        )
        node = CoreNode(name, ident, core, store)
        self._register(node)
        return node

    def hostile(self, name: str, wire_name: str = "mallory") -> RawPeer:
        """A raw peer with a fresh key (``wire_name``: the name its messages carry)."""
        peer = RawPeer(self, name, Identity.generate(), wire_name)
        self._register(peer)
        return peer

    def _register(self, party: Party) -> None:
        old = self.parties.get(party.name)
        if old is not None and not (isinstance(old, CoreNode) and old.gone):
            raise ValueError(f"{party.name} is taken")
        self.parties[party.name] = party

    # -- links ---------------------------------------------------------------------------

    def connect(
        self,
        dialler: Party,
        dialled: Party,
        *,
        up: bool = True,
        hello: dict[str, Any] | None = None,
    ) -> Link | Refused:
        """``dialler`` dials ``dialled``: the handshake of ``docs/protocol.md`` §4 through the
        cores' ``hello``, ``check_hello``, ``prove`` and ``check_proof`` (a raw peer accepts
        anything and proves with its key), then ``link_up`` on both ends unless ``up`` is
        False (then call :meth:`up` on each end).  ``hello``: fields overriding a raw
        dialler's hello.  A refusal is counted in the refusing node's ``links_refused``
        under its code, as the shell does, and kept in the other node's ``refused``."""
        self._numbers += 1
        n = self._numbers
        out, into = End(dialler.name, dialled.name, n), End(dialled.name, dialler.name, n)
        h_out = self._hello(dialler, dict(hello or {}))
        h_in = self._hello(dialled, {})
        refusal = self._check(dialled, "in", h_out) or self._check(dialler, "out", h_in)
        if refusal is None:
            if not self._proves(dialler, dialled, h_in, h_out):
                refusal = Refused(dialled.name, wire.Refuse(code="bad_proof", reason="no proof"))
                self._count_refused(dialled, "bad_proof")
            elif not self._proves(dialled, dialler, h_out, h_in):
                refusal = Refused(dialler.name, wire.Refuse(code="bad_proof", reason="no proof"))
                self._count_refused(dialler, "bad_proof")
        if refusal is not None:
            for party in (dialler, dialled):
                if isinstance(party, CoreNode) and party.name != refusal.by:
                    party.refused.append(refusal)
            return refusal
        link = Link(out, into)
        self.links[n] = _LinkState(link, {out: h_in, into: h_out})
        for end in (out, into):
            self.queues[end] = deque()
            self.decoders[end] = wire.FrameDecoder()
        if up:
            self.up(out)
            self.up(into)
        return link

    def _hello(self, party: Party, fields: dict[str, Any]) -> wire.Hello:
        if isinstance(party, CoreNode):
            return party.core.hello(party.new_nonce())
        values: dict[str, Any] = {
            "version": wire.PROTOCOL_VERSION,
            "node": party.node_id,
            "name": getattr(party, "wire_name", party.name),
            "room": self.room,
            "port": 0,
            "features": [],
            "nonce": party.new_nonce(),
            "key": party.identity.key,
        }
        values.update(fields)
        return wire.Hello(**values)

    def _check(self, party: Party, direction: str, theirs: wire.Hello) -> Refused | None:
        if not isinstance(party, CoreNode):
            return None
        refuse = party.core.check_hello(direction, theirs, self.now)
        if refuse is None:
            return None
        self._count_refused(party, refuse.code)
        return Refused(party.name, refuse)

    @staticmethod
    def _count_refused(party: Party, code: str) -> None:
        if isinstance(party, CoreNode):  # the shell's bookkeeping (node.py _account_closed)
            refused = party.core.s.links_refused
            refused[code] = refused.get(code, 0) + 1

    @staticmethod
    def _proves(
        prover: Party, verifier: Party, verifier_hello: wire.Hello, prover_hello: wire.Hello
    ) -> bool:
        """``prover`` signs the verifier's nonce; the verifier checks it."""
        if isinstance(prover, CoreNode):
            proof = prover.core.prove(verifier_hello)
        else:
            data = wire.proof_bytes(
                verifier_hello.nonce, prover_hello.node, verifier_hello.node, verifier_hello.room
            )
            proof = wire.Proof(sig=prover.identity.sign(data))
        if not isinstance(verifier, CoreNode):
            return True
        return verifier.core.check_proof(verifier_hello.nonce, prover_hello, proof)

    def up(self, end: End) -> None:
        """The handshake is done at ``end``'s owner: ``link_up`` (a raw peer has nothing to do)."""
        state = self.links[end.number]
        if end in state.up:
            return
        state.up.add(end)
        party = self.parties[end.owner]
        if isinstance(party, CoreNode):
            direction = "out" if end == state.ends.out else "in"
            address = f"{end.peer}:{end.number}"
            hello = state.hello[end]
            self._act(
                party, party.core.link_up(end, hello, direction, address, self.now, self.wall)
            )

    def ends_between(self, a: Party, b: Party) -> list[End]:
        """``a``'s ends of the links between ``a`` and ``b`` that are open."""
        out = []
        for state in self.links.values():
            for end in (state.ends.out, state.ends.into):
                if end.owner == a.name and end.peer == b.name:
                    out.append(end)
        return out

    def end(self, a: Party, b: Party) -> End:
        """``a``'s end of the one open link between ``a`` and ``b``."""
        ends = self.ends_between(a, b)
        assert len(ends) == 1, f"{len(ends)} links between {a.name} and {b.name}"
        return ends[0]

    def linked(self, a: CoreNode) -> set[str]:
        """The names of the parties ``a``'s core has a link up to (its ``links``)."""
        return {end.peer for end in a.core.links.values() if isinstance(end, End)}

    def cut(self, a: Party, b: Party, reason: str = "connection reset") -> None:
        """End every link between ``a`` and ``b`` at once (frames in flight are lost):
        ``link_down`` on both ends."""
        for end in self.ends_between(a, b):
            self._end_link(end.number, {end.owner: reason, end.peer: reason})

    def line(self, nodes: Iterable[Party]) -> None:
        """Link the nodes in a line, each dialling the next."""
        parties = list(nodes)
        for a, b in itertools.pairwise(parties):
            result = self.connect(a, b)
            assert isinstance(result, Link), result

    def _end_link(self, number: int, reasons: dict[str, str]) -> None:
        state = self.links.pop(number, None)
        if state is None:
            return
        dialled = self._dialled.pop(number, None)
        for end in (state.ends.out, state.ends.into):
            self.queues.pop(end, None)
            self.decoders.pop(end, None)
        for end in (state.ends.out, state.ends.into):
            party = self.parties[end.owner]
            if end in state.up and isinstance(party, CoreNode) and not party.gone:
                reason = reasons.get(end.owner, "peer closed the link")
                self._act(party, party.core.link_down(end, reason, self.now, self.wall))
        if dialled is not None and not dialled[0].gone:
            node, peer = dialled
            self._act(node, node.core.dial_done(peer, self.now, linked=True))

    def found(self, node: CoreNode, peer: Party) -> None:
        """``node`` learns where ``peer`` listens (as from mDNS or ``--peer``): ``found``;
        the dials it asks for are carried out at the next step."""
        port = 7000 + list(self.parties).index(peer.name)  # an address for the record only
        self._act(node, node.core.found(peer.node_id, ["127.0.0.1"], port, self.now))

    def _dial(self, node: CoreNode, dial: Dial) -> None:
        """Carry out a ``Dial``: connect to the party of that node id; ``dial_done`` now if
        it fails, when the link ends if it came up."""
        if node.gone:
            return
        target = next((p for p in self.parties.values() if p.node_id == dial.node), None)
        if target is None or (isinstance(target, CoreNode) and target.gone):
            self._act(node, node.core.dial_done(dial.node, self.now, linked=False))
            return
        result = self.connect(node, target)
        if isinstance(result, Refused):
            code = result.code if result.by == target.name else ""
            self._act(node, node.core.dial_done(dial.node, self.now, linked=False, code=code))
        elif result.out.number in self.links:
            self._dialled[result.out.number] = (node, dial.node)
        else:  # up and already ended (the tie-break closed it at once)
            self._act(node, node.core.dial_done(dial.node, self.now, linked=True))

    # -- frames ----------------------------------------------------------------------------

    def queue(self, end: End, frame: bytes) -> None:
        """Queue an encoded frame sent on ``end`` (dropped if the link is gone or retired)."""
        state = self.links.get(end.number)
        if state is None or end in state.retired:
            return
        self._serial += 1
        self.queues[end].append((self._serial, frame))

    def in_flight(self, end: End) -> list[wire.Message]:
        """The frames queued on ``end`` (sent by its owner, not yet delivered), decoded."""
        out: list[wire.Message] = []
        for _, frame in self.queues.get(end, ()):
            if frame:
                out.extend(wire.FrameDecoder().feed(frame))
        return out

    def drop(self, end: End, kind: type[Any], count: int = 1) -> list[wire.Message]:
        """Take the first ``count`` queued frames of message type ``kind`` off ``end``'s
        queue (lost in flight); returns them decoded."""
        q = self.queues[end]
        kept: deque[tuple[int, bytes]] = deque()
        taken: list[wire.Message] = []
        for serial, frame in q:
            msgs = wire.FrameDecoder().feed(frame) if frame else []
            if len(taken) < count and msgs and isinstance(msgs[0], kind):
                taken.extend(msgs)
            else:
                kept.append((serial, frame))
        self.queues[end] = kept
        return taken

    def step(self) -> bool:
        """Carry out the oldest ``Dial`` waiting, else deliver the frame queued first over
        every link; False if there was nothing to do."""
        if self._dials:
            self._dial(*self._dials.popleft())
            return True
        first: End | None = None
        first_serial = 0
        for end, q in self.queues.items():
            if q and (first is None or q[0][0] < first_serial) and self._ready(end):
                first, first_serial = end, q[0][0]
        if first is None:
            return False
        _, frame = self.queues[first].popleft()
        self.delivered += 1
        state = self.links[first.number]
        to = state.ends.into if first == state.ends.out else state.ends.out
        if frame == _EOF:  # the retired side's last frame went out: the link ends
            self._end_link(first.number, {first.owner: "link retired"})
            return True
        party = self.parties[to.owner]
        try:
            msgs = self.decoders[to].feed(frame)
        except RemoteProtocolError as exc:  # the shell closes the link and counts it
            if isinstance(party, CoreNode):
                refused = party.core.s.frames_refused
                refused[exc.code] = refused.get(exc.code, 0) + 1
            self._end_link(first.number, {to.owner: f"protocol error: {exc}"})
            return True
        for msg in msgs:
            if to.number not in self.links:
                break  # the link ended while its frames were taken
            if isinstance(party, RawPeer):
                party.received.append((to, msg))
            elif isinstance(party, CoreNode) and not isinstance(msg, wire.Keepalive):
                assert not isinstance(msg, wire.Hello | wire.Refuse | wire.Proof), msg
                self._act(party, party.core.receive(to, msg, self.now, self.wall))
        return True

    def _ready(self, end: End) -> bool:
        """Frames sent on ``end`` may be delivered: the other end's owner took the link
        up (a shell reads nothing before its ``link_up``), or is a raw peer."""
        state = self.links[end.number]
        to = state.ends.into if end == state.ends.out else state.ends.out
        return to in state.up or not isinstance(self.parties[to.owner], CoreNode)

    def step_until(self, done: Callable[[], object], max_steps: int = MAX_STEPS) -> None:
        """Deliver frames one at a time until ``done()`` is true (checked first).

        Raises:
            AssertionError: nothing more to deliver, or ``max_steps`` frames, before that.
        """
        for _ in range(max_steps):
            if done():
                return
            if not self.step():
                raise AssertionError("quiet before the condition held")
        raise AssertionError(f"condition not met after {max_steps} frames")

    def run_until_quiet(self, max_steps: int = MAX_STEPS) -> int:
        """Deliver frames until none is queued; returns how many were delivered."""
        n = 0
        while self.step():
            n += 1
            if n >= max_steps:
                raise AssertionError(f"still busy after {n} frames")
        return n

    # -- time ------------------------------------------------------------------------------

    def tick_all(self, dt: float) -> None:
        """Let ``dt`` virtual seconds pass: deliver what is queued, then at each deadline
        (the earliest of the nodes' ``next_deadline()``) tick every node whose deadline
        passed and deliver what that sent, until the next deadline is after ``now + dt``."""
        until = self.now + dt
        self.run_until_quiet()
        rounds = 0
        last = self.now
        while True:
            due = min((n.core.next_deadline() for n in self.nodes), default=float("inf"))
            if due > until:
                break
            self.now = max(self.now, due)
            rounds = rounds + 1 if self.now == last else 0
            last = self.now
            if rounds > MAX_TICKS_AT_ONCE:
                raise AssertionError(f"a deadline stays at {self.now}")
            for node in self.nodes:
                if node.core.next_deadline() <= self.now:
                    self._act(node, node.core.tick(self.now, self.wall))
            self.run_until_quiet()
        self.now = until

    # -- the user --------------------------------------------------------------------------

    def say(self, node: CoreNode, text: str, action: bool = False) -> None:
        """``node``'s user types a chat line (``send_line``)."""
        self._act(node, node.core.send_line(text, action, self.now, self.wall))

    def set_topic(self, node: CoreNode, text: str) -> None:
        """``node``'s user types ``/topic text`` (a topic line; "" clears it)."""
        self._act(node, node.core.send_line(text, False, self.now, self.wall, topic=True))

    def direct(self, node: CoreNode, to: str, text: str) -> MessageEvent:
        """``node``'s user sends ``/msg to text``; returns its own event of it."""
        ev, actions = node.core.send_direct(to, text, False, self.now, self.wall)
        self._act(node, actions)
        return ev

    def offer(self, node: CoreNode, offer: Offer, to: str | None = None) -> None:
        """``node``'s user offers a file: to the room (an offer line), or to
        the one member ``to`` (a sealed ``direct``)."""
        if to is None:
            self._act(node, node.core.send_line("", False, self.now, self.wall, offer=offer))
        else:
            self._act(node, node.core.send_direct_offer(to, offer, self.now, self.wall)[1])

    def rename(self, node: CoreNode, name: str) -> None:
        """``node``'s user types ``/nick name`` (``set_name``)."""
        self._act(node, node.core.set_name(name, self.now, self.wall))

    def crash(self, node: CoreNode) -> None:
        """``node`` stops at once, saying nothing: its links end (``connection reset`` at
        the other ends) and it runs no more.  Its store and identity may start it again
        (:meth:`add`)."""
        node.gone = True
        for state in list(self.links.values()):
            owners = (state.ends.out.owner, state.ends.into.owner)
            if node.name in owners:
                reasons = {o: "connection reset" for o in owners if o != node.name}
                self._end_link(state.ends.out.number, reasons)

    def leave(self, node: CoreNode) -> None:
        """``node`` quits: its ``leave`` goes out, then its links close and it stops."""
        self._act(node, node.core.leave(self.now, self.wall))
        self.run_until_quiet()
        for state in list(self.links.values()):
            if node.name in (state.ends.out.owner, state.ends.into.owner):
                self._end_link(state.ends.out.number, {node.name: "this node left"})
        node.gone = True

    # -- actions ---------------------------------------------------------------------------

    def _act(self, node: CoreNode, actions: list[Action]) -> None:
        """Carry out a core's actions, in order (the shell's part)."""
        for action in actions:
            if isinstance(action, Send):
                assert isinstance(action.link, End)
                self.queue(action.link, action.frame)
            elif isinstance(action, Emit):
                node.events.append(action.event)
            elif isinstance(action, Close):
                assert isinstance(action.link, End)
                self._end_link(action.link.number, {node.name: action.reason})
            elif isinstance(action, Retire):
                assert isinstance(action.link, End)
                self.queue(action.link, _EOF)
                state = self.links.get(action.link.number)
                if state is not None:
                    state.retired.add(action.link)
            elif isinstance(action, Dial):
                node.dials.append(action)
                if self.honour_dials:
                    self._dials.append((node, action))
