"""The seen-cache and the flood forwarding decision.  No sockets; time is passed in.

A node delivers each flooded message once and forwards it to every linked
peer except the one it came from, with the hop limit lowered by one; a message
whose id is in the seen-cache is dropped as a duplicate.  See
``docs/protocol.md``, section "Flooding".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec

from p2pchat.wire import FloodMessage

DEFAULT_SEEN_MAX_ENTRIES = 65536
"""Default bound on the seen-cache, in message ids."""

DEFAULT_SEEN_MAX_AGE_S = 600.0
"""Default bound on how long an id stays in the seen-cache, in seconds."""


class SeenCache:
    """Message ids seen lately, bounded both in entries and in age.

    An id is forgotten once it is ``max_age_s`` old or once
    ``max_entries`` newer ids have been added, whichever comes first.  Memory
    is therefore O(``max_entries``) under any load.  A duplicate that arrives
    after its id was forgotten would be delivered again; the hop limit and
    ``max_age_s`` (far above any path's delay) make that practically impossible.

    Args:
        max_entries: most ids kept (>= 1).
        max_age_s: seconds an id is kept (> 0).

    Not thread-safe: one thread (the node's router) owns it.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_SEEN_MAX_ENTRIES,
        max_age_s: float = DEFAULT_SEEN_MAX_AGE_S,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._ids: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._ids

    def expire(self, now: float) -> None:
        """Forget ids older than ``max_age_s`` at monotonic time ``now`` (s)."""
        horizon = now - self.max_age_s
        ids = self._ids
        while ids:
            oldest_id, added = next(iter(ids.items()))
            if added > horizon:
                break
            del ids[oldest_id]

    def add(self, msg_id: str, now: float) -> bool:
        """Record ``msg_id`` as seen at monotonic time ``now`` (seconds).

        Returns:
            True if the id was new (deliver and forward it), False if it is a
            duplicate (drop it).
        """
        self.expire(now)
        if msg_id in self._ids:
            return False
        self._ids[msg_id] = now
        while len(self._ids) > self.max_entries:
            self._ids.popitem(last=False)
        return True


L = TypeVar("L", bound=Hashable)


@dataclass(frozen=True)
class Decision(Generic[L]):
    """What to do with one received flooded message.

    Attributes:
        deliver: show it to the user (it is new and for our room).
        forward: the message to send on, with its hop limit lowered, or None.
        to: the links to send ``forward`` on (never the one it came from).
        drop_reason: why it was dropped, if ``deliver`` is False.
    """

    deliver: bool
    forward: FloodMessage | None = None
    to: tuple[L, ...] = field(default_factory=tuple)
    drop_reason: str | None = None


def decide(
    msg: FloodMessage,
    came_from: L | None,
    links: Iterable[L],
    seen: SeenCache,
    room: str,
    now: float,
) -> Decision[L]:
    """The flood rule for one flooded message, received or created here.

    Args:
        msg: the message, as received (or as created, with its full hop limit).
        came_from: the link it arrived on, or None when this node created it.
        links: every link that is up now.
        seen: this node's seen-cache; the id is added to it if new.
        room: this node's room; messages of other rooms are dropped.
        now: monotonic time in seconds.

    Returns:
        The decision; the caller delivers and sends as it says.
    """
    if msg.room != room:
        return Decision(False, drop_reason=f"message for room {msg.room!r}")
    if not seen.add(msg.id, now):
        return Decision(False, drop_reason="duplicate")
    if came_from is None:
        out: FloodMessage | None = msg
    elif msg.hops > 1:
        out = msgspec.structs.replace(msg, hops=msg.hops - 1)
    else:
        out = None
    targets = tuple(link for link in links if link != came_from) if out is not None else ()
    return Decision(True, forward=out if targets else None, to=targets)


class TokenBucket:
    """A token bucket: ``rate_per_s`` tokens a second, at most ``burst`` saved.

    Not thread-safe; time is passed in (monotonic seconds).  Starts full.

    Args:
        rate_per_s: tokens added per second (> 0).
        burst: bucket size (>= 1): how many may pass at once after a pause.
        now: the current monotonic time.
    """

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
            self._at = now

    def take(self, now: float) -> bool:
        """Take one token if there is one; False means over the rate."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self, now: float) -> float:
        """Seconds until a token will be there (0 if one is there now)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate_per_s
