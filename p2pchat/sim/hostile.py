"""Hostile nodes: the attacks of the hostile-peer issue (#11), replayed.

A hostile host is no core: it dials honest nodes itself (a real ``hello``
and ``proof`` with its own key, so the honest core admits it as any peer),
then sends frames it builds with :mod:`p2pchat.wire` and signs with its
:class:`~p2pchat.identity.Identity`.  Attacks:

* ``replay``: keeps every chat and lines frame it receives and sends them
  all again, on every link, every ``period`` seconds;
* ``members``: floods ``presence`` messages of freshly made keys (fake
  members), :data:`FAKES_PER_ROUND` a round;
* ``future``: chat lines dated an hour ahead (``ts`` and ``hlc``);
* ``equivocate``: an origin that signs two lines under one number, one
  sent on its first link, the other on its second.

Every random draw comes from the simulator's ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pchat import wire
from p2pchat.identity import Identity
from p2pchat.sim.lan import End, Host, Lan

ATTACKS = ("replay", "members", "future", "equivocate")
"""The attack names ``--hostile`` takes."""

FAKES_PER_ROUND = 5
"""Fake members the ``members`` attacker makes per round."""

FUTURE_S = 3600.0
"""How far ahead the future-clock attacker dates its lines, seconds."""


def identity_from(rng: random.Random) -> Identity:
    """A key pair drawn from ``rng`` (the same seed gives the same keys)."""
    return Identity(Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)))


class Attacker:
    """One hostile host and its attack (see the module docstring).

    Args:
        lan: the LAN it is on.
        host: its host (``honest`` False).
        attack: one of :data:`ATTACKS`.
        rng: its random draws.
        period: seconds between its attack's rounds.
    """

    def __init__(
        self, lan: Lan, host: Host, attack: str, rng: random.Random, period: float
    ) -> None:
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r} (known: {', '.join(ATTACKS)})")
        self.lan = lan
        self.host = host
        self.attack = attack
        self.rng = rng
        self.period = period
        self.seq = 0
        self.line = 0
        self.room = ""
        self.features: list[str] = []
        self.kept: list[bytes] = []
        self.targets: list[Host] = []
        self.want = 2
        self.sent = 0
        self.fakes = 0
        self.refused: dict[str, int] = {}
        host.on_frame = self.on_frame

    # -- linking --------------------------------------------------------------------

    def connect(self, target: Host) -> bool:
        """Dial ``target`` now with a real handshake; True if it took the link."""
        lan, me = self.lan, self.host.identity
        core = target.core
        if core is None or not lan.reachable(self.host, target):
            return False
        self.room = core.wire_room
        n_out, n_in = lan.nonce(), lan.nonce()
        theirs = core.hello(n_in)
        self.features = list(theirs.features)
        hello = wire.Hello(
            version=wire.PROTOCOL_VERSION,
            node=me.node_id,
            name=f"mallory{self.host.idx}",
            room=self.room,
            port=0,
            features=self.features,
            nonce=n_out,
            key=me.key,
        )
        refuse = core.check_hello("in", hello, lan.now)
        if refuse is not None:
            self.refused[refuse.code] = self.refused.get(refuse.code, 0) + 1
            return False
        proof = wire.Proof(sig=me.sign(wire.proof_bytes(n_in, me.node_id, core.node_id, self.room)))
        if not core.check_proof(n_in, hello, proof):
            self.refused["proof"] = self.refused.get("proof", 0) + 1
            return False
        lat = lan.latency(lan.rng)
        _, in_end = lan.join(self.host, target, lat, core.node_id, me.node_id)
        lan.call(
            target, lambda c: c.link_up(in_end.lid, hello, "in", self.host.addr, lan.now, lan.wall)
        )
        return True

    def start(self, targets: list[Host], at: float, until: float, links: int = 2) -> None:
        """From ``at`` to ``until``: every :attr:`period`, link again (to the
        next of ``targets`` that takes it) while under ``links`` links, as a
        persistent attacker would, and attack."""
        self.targets = targets
        self.want = links
        self.lan.at(at, self._round, until)

    def _round(self, until: float) -> None:
        if self.lan.now > until:
            return
        tries = 0
        while len(self.links()) < self.want and tries < len(self.targets):
            tries += 1
            target = self.targets.pop(0)
            self.targets.append(target)
            if not any(e.peer_node == target.node_id for e in self.links()):
                self.connect(target)
        self.act()
        self.lan.at(self.lan.now + self.period, self._round, until)

    def links(self) -> list[End]:
        """Its live link ends, oldest first."""
        return [e for e in self.host.ends.values() if e.alive]

    def on_frame(self, end: End, msg: wire.Message, frame: bytes) -> None:
        """Keep chat frames (the replayer); everything else is ignored."""
        if (
            self.attack == "replay"
            and isinstance(msg, wire.Chat | wire.Lines)
            and len(self.kept) < 2000
        ):
            self.kept.append(frame)

    # -- attacks --------------------------------------------------------------------

    def act(self) -> None:
        """One round of the attack."""
        ends = self.links()
        if not ends:
            return
        if self.attack == "replay":
            for end in ends:
                for frame in self.kept[-200:]:
                    self._send(end, frame)
        elif self.attack == "members":
            for _ in range(FAKES_PER_ROUND):
                fake = identity_from(self.rng)
                msg = wire.Presence(
                    id=self._id(),
                    origin=fake.node_id,
                    seq=1,
                    name=f"fake{self.fakes}",
                    room=self.room,
                    ts=self.lan.wall,
                    hops=wire.DEFAULT_HOP_LIMIT,
                    key=fake.key,
                    addrs=[],
                    port=0,
                )
                self.fakes += 1
                frame = wire.encode_frame(_signed(msg, fake.sign))
                for end in ends:
                    self._send(end, frame)
        elif self.attack == "future":
            frame = wire.encode_frame(self._chat("from the future", self.lan.wall + FUTURE_S))
            for end in ends:
                self._send(end, frame)
        elif self.attack == "equivocate":
            self.line += 1
            hlc = int(self.lan.wall * 1e6)
            for n, end in enumerate(ends[:2]):
                line = self._chat(f"version {'AB'[n]} of line {self.line}", self.lan.wall, hlc)
                self._send(end, wire.encode_frame(line))

    def _send(self, end: End, frame: bytes) -> None:
        self.sent += 1
        self.lan.send(end, frame)

    def _id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _chat(self, text: str, ts: float, hlc: int | None = None) -> wire.Chat:
        me = self.host.identity
        self.seq += 1
        if self.attack != "equivocate":
            self.line += 1
        msg = wire.Chat(
            id=self._id(),
            origin=me.node_id,
            seq=self.seq,
            name=f"mallory{self.host.idx}",
            room=self.room,
            ts=ts,
            hops=wire.DEFAULT_HOP_LIMIT,
            key=me.key,
            text=text,
            line=self.line,
            hlc=int(ts * 1e6) if hlc is None else hlc,
        )
        return _signed(msg, me.sign)


def _signed(msg: wire.F, sign: Callable[[bytes], str]) -> wire.F:
    return msgspec.structs.replace(msg, sig=sign(wire.signing_bytes(msg)))
