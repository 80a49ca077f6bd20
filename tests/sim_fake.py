"""A naive flooding core with the methods of ``p2pchat.core.protocol.Protocol``
that the simulator calls: the simulator's own tests run on it, so that they
test the simulator (its clock, links, faults and invariants) apart from the
product's core.  It floods every line on every link, sends its whole store to
each new link (catch-up), and shows a line that comes after a later one of
its origin as an earlier line; each presence tick it sends its newest lines to
one random link."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from p2pchat import identity as keys
from p2pchat import wire
from p2pchat.core.actions import Action, Close, Dial, Emit, LinkId, Send
from p2pchat.core.config import NodeConfig
from p2pchat.core.history_store import MemoryStore
from p2pchat.events import MessageEvent
from p2pchat.identity import Identity

TARGET = 3


class NaiveCore:
    """Flooding with a seen-set; see the module docstring."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        store: MemoryStore,
        *,
        now: float,
        wall: float,
        rng: random.Random,
        port: int,
        addrs: list[str],
        verify: Callable[[str, str, bytes], bool] | None = None,
    ) -> None:
        self.verify = verify or keys.verify
        self.config = config
        self.me = identity
        self.store = store
        self.rng = rng
        self.port = port
        self.node_id = identity.node_id
        self.wire_room = config.room
        self.links: dict[LinkId, str] = {}
        self.peers: dict[str, LinkId] = {}
        self.known: dict[str, tuple[list[str], int]] = {}
        self.dialing: set[str] = set()
        self.failed: dict[str, float] = {}
        self.roster: dict[str, float] = {}
        self.seen: set[str] = set()
        self.live_last: dict[str, int] = {}
        self.refused: Counter[str] = Counter()
        self.next_tick = now + config.presence_interval_s

    # -- handshake ------------------------------------------------------------------

    def hello(self, nonce: str) -> wire.Hello:
        return wire.Hello(
            version=wire.PROTOCOL_VERSION,
            node=self.node_id,
            name=self.config.name,
            room=self.wire_room,
            port=self.port,
            features=[],
            nonce=nonce,
            key=self.me.key,
        )

    def check_hello(
        self, direction: Literal["in", "out"], hello: wire.Hello, now: float
    ) -> wire.Refuse | None:
        if hello.room != self.wire_room:
            return wire.Refuse(code="room", reason="another room")
        if hello.node == self.node_id:
            return wire.Refuse(code="self", reason="that is me")
        if hello.node in self.peers or (direction == "in" and len(self.links) >= 3 * TARGET):
            return wire.Refuse(code="busy", reason="busy")
        return None

    def prove(self, peer_hello: wire.Hello) -> wire.Proof:
        data = wire.proof_bytes(peer_hello.nonce, self.node_id, peer_hello.node, self.wire_room)
        return wire.Proof(sig=self.me.sign(data))

    def check_proof(self, our_nonce: str, peer_hello: wire.Hello, proof: wire.Proof) -> bool:
        data = wire.proof_bytes(our_nonce, peer_hello.node, self.node_id, self.wire_room)
        return keys.node_id_of(peer_hello.key) == peer_hello.node and keys.verify(
            peer_hello.key, proof.sig, data
        )

    # -- links ----------------------------------------------------------------------

    def link_up(
        self,
        link: LinkId,
        peer_hello: wire.Hello,
        direction: Literal["in", "out"],
        address: str,
        now: float,
        wall: float,
    ) -> list[Action]:
        if peer_hello.node in self.peers:
            return [Close(link, "duplicate")]
        self.links[link] = peer_hello.node
        self.peers[peer_hello.node] = link
        lines = self.store.recent(self.wire_room, 10_000)
        return [
            Send(link, wire.encode_frame(wire.Lines(batch=1 + i // 256, lines=lines[i : i + 256])))
            for i in range(0, len(lines), 256)
        ]

    def link_down(self, link: LinkId, reason: str, now: float, wall: float) -> list[Action]:
        node = self.links.pop(link, None)
        if node is not None and self.peers.get(node) == link:
            del self.peers[node]
        return self._fill(now)

    def found(self, node_id: str, addrs: list[str], port: int, now: float) -> list[Action]:
        if node_id == self.node_id:
            return []
        self.known[node_id] = (addrs, port)
        out = self._fill(now)
        if (
            node_id not in self.peers
            and node_id not in self.dialing
            and len(self.peers) + len(self.dialing) < 2 * TARGET
        ):
            # Found again (as after a heal): dial it even at the target, so
            # that halves that formed apart join.
            self.dialing.add(node_id)
            out.append(Dial(node_id, tuple(addrs), port))
        return out

    def lost(self, node_id: str) -> list[Action]:
        self.known.pop(node_id, None)
        return []

    def dial_done(self, node_id: str, now: float, linked: bool, code: str) -> list[Action]:
        self.dialing.discard(node_id)
        if not linked:
            self.failed[node_id] = now
        return self._fill(now)

    def _fill(self, now: float) -> list[Action]:
        out: list[Action] = []
        free = sorted(
            n
            for n in self.known
            if n not in self.peers and n not in self.dialing and now - self.failed.get(n, -9) > 2
        )
        while free and len(self.peers) + len(self.dialing) < TARGET:
            node = free.pop(self.rng.randrange(len(free)))
            self.dialing.add(node)
            addrs, port = self.known[node]
            out.append(Dial(node, tuple(addrs), port))
        return out

    # -- lines ----------------------------------------------------------------------

    def receive(self, link: LinkId, msg: wire.Message, now: float, wall: float) -> list[Action]:
        if isinstance(msg, wire.Chat):
            return self._accept(msg, link, now, wall, False)
        if isinstance(msg, wire.Lines):
            out: list[Action] = []
            for line in msg.lines:
                out += self._accept(line, link, now, wall, True)
            return out
        if isinstance(msg, wire.Presence) and self._admit(msg, wall):
            self.roster[msg.origin] = now
            return self._forward(msg, link)
        return []

    def _admit(self, msg: wire.Flooded, wall: float) -> bool:
        if msg.id in self.seen:
            return False
        if msg.room != self.wire_room:
            self.refused["room"] += 1
            return False
        if msg.ts > wall + wire.MAX_CLOCK_SKEW_S:
            self.refused["future"] += 1
            return False
        if keys.node_id_of(msg.key) != msg.origin or not self.verify(
            msg.key, msg.sig, wire.signing_bytes(msg)
        ):
            self.refused["bad_signature"] += 1
            return False
        self.seen.add(msg.id)
        return True

    def _forward(self, msg: wire.Chat | wire.Presence, came: LinkId) -> list[Action]:
        if msg.hops <= 1:
            return []
        frame = wire.encode_frame(msgspec.structs.replace(msg, hops=msg.hops - 1))
        return [Send(link, frame) for link in self.links if link != came]

    def _accept(
        self, msg: wire.Chat, link: LinkId, now: float, wall: float, history: bool
    ) -> list[Action]:
        if self.store.holds(msg) or not self._admit(msg, wall):
            return []
        self.store.add(msg)
        self.roster.setdefault(msg.origin, now)
        if msg.line <= self.live_last.get(msg.origin, 0):
            history = True
        elif not history:
            self.live_last[msg.origin] = msg.line
        return [Emit(_event(msg, False, history)), *self._forward(msg, link)]

    def send_line(self, text: str, action: bool, now: float, wall: float) -> list[Action]:
        store = self.store
        msg = wire.Chat(
            id=f"{self.rng.getrandbits(128):032x}",
            origin=self.node_id,
            seq=store.next_seq(),
            name=self.config.name,
            room=self.wire_room,
            ts=wall,
            hops=wire.DEFAULT_HOP_LIMIT,
            key=self.me.key,
            text=text,
            action=action,
            line=store.next_line(self.wire_room),
            hlc=max(int(wall * 1e6), store.last_hlc + 1),
        )
        msg = msgspec.structs.replace(msg, sig=self.me.sign(wire.signing_bytes(msg)))
        store.add_own(msg)
        self.seen.add(msg.id)
        frame = wire.encode_frame(msg)
        return [Emit(_event(msg, True, False)), *(Send(link, frame) for link in self.links)]

    # -- timers and the rest --------------------------------------------------------

    def tick(self, now: float, wall: float) -> list[Action]:
        self.next_tick = now + self.config.presence_interval_s
        msg = wire.Presence(
            id=f"{self.rng.getrandbits(128):032x}",
            origin=self.node_id,
            seq=self.store.next_seq(),
            name=self.config.name,
            room=self.wire_room,
            ts=wall,
            hops=wire.DEFAULT_HOP_LIMIT,
            key=self.me.key,
        )
        msg = msgspec.structs.replace(msg, sig=self.me.sign(wire.signing_bytes(msg)))
        self.seen.add(msg.id)
        frame = wire.encode_frame(msg)
        out: list[Action] = [Send(link, frame) for link in self.links]
        recent = self.store.recent(self.wire_room, 256)
        if recent and self.links:
            # Anti-entropy, naively: our newest lines to one random link.
            link = sorted(self.links)[self.rng.randrange(len(self.links))]  # type: ignore[type-var]
            out.append(Send(link, wire.encode_frame(wire.Lines(batch=1, lines=recent))))
        strangers = sorted(n for n in self.known if n not in self.roster and n not in self.peers)
        if strangers and not self.dialing and len(self.peers) < 2 * TARGET:
            # Merge: a known peer never heard of is in another part of the room.
            node = strangers[self.rng.randrange(len(strangers))]
            self.dialing.add(node)
            out.append(Dial(node, tuple(self.known[node][0]), self.known[node][1]))
        return [*out, *self._fill(now)]

    def next_deadline(self) -> float:
        return self.next_tick

    def leave(self, now: float, wall: float) -> list[Action]:
        return []

    def history(self, n: int) -> list[MessageEvent]:
        return [
            _event(m, m.origin == self.node_id, True) for m in self.store.recent(self.wire_room, n)
        ]

    def stats_counts(self) -> dict[str, Any]:
        return {"frames_refused": dict(self.refused)}


def _event(msg: wire.Chat, own: bool, history: bool) -> MessageEvent:
    return MessageEvent(
        id=msg.id,
        origin=msg.origin,
        name=msg.name,
        text=msg.text,
        ts=msg.ts,
        self=own,
        seq=msg.seq,
        action=msg.action,
        history=history,
        hlc=msg.hlc,
        line=msg.line,
    )
