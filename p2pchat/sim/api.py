"""The protocol core as the simulator drives it (a structural type).

The simulator runs :class:`p2pchat.core.protocol.Protocol` unchanged; it
names the methods it calls here, so that the tests can also drive a small
stand-in of their own with the same methods.  Times: ``now`` is the virtual
clock in seconds (monotonic, from 0 at the start of a run), ``wall`` is
epoch seconds (a fixed origin plus ``now``).  Links are the simulator's ints.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence, Sized
from typing import Any, Literal, Protocol

from p2pchat import wire
from p2pchat.core.actions import Action, LinkId
from p2pchat.core.config import NodeConfig
from p2pchat.core.history_store import MemoryStore
from p2pchat.events import LineEvent
from p2pchat.identity import Identity


class Core(Protocol):
    """The methods and attributes of the protocol core the simulator uses.

    Every method is called from the simulator's one thread, in virtual time
    order; the lists of actions returned are carried out at once, in order.
    """

    @property
    def node_id(self) -> str:
        """Our node id, 16 hex digits."""
        ...

    @property
    def wire_room(self) -> str:
        """The room name as it is on the wire."""
        ...

    @property
    def roster(self) -> Sized:
        """The members known (only its size is read)."""
        ...

    @property
    def seen(self) -> Sized:
        """The seen-cache (only its size is read)."""
        ...

    def hello(self, nonce: str) -> wire.Hello:
        """Our hello for a new link whose nonce is ``nonce`` (32 hex digits)."""
        ...

    def check_hello(
        self, direction: Literal["in", "out"], hello: wire.Hello, now: float
    ) -> wire.Refuse | None:
        """A refusal of the peer's hello, or None to go on."""
        ...

    def prove(self, peer_hello: wire.Hello) -> wire.Proof:
        """Our proof for the peer's nonce."""
        ...

    def check_proof(self, our_nonce: str, peer_hello: wire.Hello, proof: wire.Proof) -> bool:
        """True if ``proof`` signs our nonce with the key of ``peer_hello``."""
        ...

    def link_up(
        self,
        link: LinkId,
        peer_hello: wire.Hello,
        direction: Literal["in", "out"],
        address: str,
        now: float,
        wall: float,
    ) -> list[Action]:
        """A link passed the handshake."""
        ...

    def receive(self, link: LinkId, msg: wire.Message, now: float, wall: float) -> list[Action]:
        """A decoded frame arrived on ``link``."""
        ...

    def link_down(self, link: LinkId, reason: str, now: float, wall: float) -> list[Action]:
        """``link`` is gone."""
        ...

    def send_line(self, text: str, action: bool, now: float, wall: float) -> list[Action]:
        """The user typed a line."""
        ...

    def found(self, node_id: str, addrs: list[str], port: int, now: float) -> list[Action]:
        """Discovery saw a peer."""
        ...

    def lost(self, node_id: str) -> list[Action]:
        """Discovery lost a peer."""
        ...

    def dial_done(self, node_id: str, now: float, linked: bool, code: str) -> list[Action]:
        """A dial ended (``code``: the peer's refusal code, or "")."""
        ...

    def tick(self, now: float, wall: float) -> list[Action]:
        """Timers: called at or after :meth:`next_deadline`."""
        ...

    def next_deadline(self) -> float:
        """When :meth:`tick` wants to run next (``now``-based; ``inf``: never)."""
        ...

    def leave(self, now: float, wall: float) -> list[Action]:
        """A graceful quit."""
        ...

    def history(self, n: int) -> Sequence[LineEvent]:
        """The room's newest ``n`` lines, oldest first, as ``/history`` shows them."""
        ...

    def stats_counts(self) -> dict[str, Any]:
        """Counters (frames refused and so on), possibly nested dicts of ints."""
        ...


class CoreFactory(Protocol):
    """Makes one node's core: ``Protocol(config, identity, store, now=...,
    wall=..., rng=..., port=..., addrs=..., verify=...)`` has this shape."""

    def __call__(
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
    ) -> Core:
        """A new core for a node starting (or restarting) at ``now``;
        ``verify`` checks signatures (``identity.verify`` when None)."""
        ...
