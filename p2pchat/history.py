"""Clock and catch-up bookkeeping for history and anti-entropy.  No sockets.

* :class:`HybridClock` stamps our own lines.  A room's lines are ordered by
  ``(hlc, origin, line)`` on every node, so ``/history`` reads the same
  everywhere.
* :class:`Push` holds the lines one peer still needs after its ``sync``. It
  hands them out in ``lines`` batches, at most :data:`MAX_IN_FLIGHT` batches
  unacknowledged.  A long catch-up therefore never puts more than two batch
  frames ahead of live frames in the link's send queue.

The exchange itself (``docs/protocol.md`` §8): when a link comes up, each end
sends a ``sync`` listing, per origin, the run of line numbers ``lo..hi`` it
holds and the oldest clock value it wants (``since``).  The other end answers
with the lines the sender may lack, oldest first.  Lines that arrive this way
are new to the receiver. It then sends ``sync`` on its other links, so what it
learnt spreads by pull, hop by hop, with flow control on every link.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from p2pchat import wire

MAX_IN_FLIGHT = 2
"""Most ``lines`` batches sent on a link and not yet acknowledged."""

MAX_BATCH_BYTES = 48_000
"""Most bytes of chat lines in one ``lines`` frame (its limit is 65,536)."""

BATCH_LINES = 64
"""Most lines the reference sends in one ``lines`` frame (the wire allows
256).  A live line that arrives behind a batch waits for the receiver to
apply it: smaller batches keep that wait short (see docs/performance.md)."""

DEFAULT_MAX_DRIFT_S = 60.0
"""How far ahead of our wall clock a received clock value may pull ours."""


class HybridClock:
    """A hybrid logical clock kept as one integer, in microseconds since the
    Unix epoch.

    It is the wall clock when that is ahead, and one microsecond past the
    highest value used or seen otherwise.  A line stamped after another was
    seen therefore sorts after it, even between machines whose clocks
    disagree a little.  This is HLC (Kulkarni et al., "Logical Physical
    Clocks", OPODIS 2014) with the logical counter folded into the low
    digits. A received value more than ``max_drift_s`` ahead of our wall
    clock moves ours only that far, so a peer with a wrong clock cannot drag
    everyone's into the future.

    Not thread-safe: the node calls it under its state lock.

    Args:
        last_us: the highest value used before (persisted by the store), so
            the clock never goes back across a restart.
        max_drift_s: see above, in seconds.
        wall_s: the wall clock, seconds since the epoch (for tests).
    """

    def __init__(
        self,
        last_us: int = 0,
        max_drift_s: float = DEFAULT_MAX_DRIFT_S,
        wall_s: Callable[[], float] = time.time,
    ) -> None:
        self._last = last_us
        self._max_drift_us = int(max_drift_s * 1e6)
        self._wall_s = wall_s

    @property
    def last(self) -> int:
        """The highest value used or observed, in microseconds."""
        return self._last

    def now(self) -> int:
        """A new value for a line we write: above every value before it."""
        value = max(int(self._wall_s() * 1e6), self._last + 1)
        self._last = value
        return value

    def observe(self, remote_us: int) -> None:
        """Take a received line's clock into account (capped at wall clock
        plus ``max_drift_s``)."""
        cap = int(self._wall_s() * 1e6) + self._max_drift_us
        if remote_us > self._last:
            self._last = min(remote_us, max(cap, self._last))


def order_key(msg: wire.Chat) -> tuple[int, str, int]:
    """The one order of a room's lines: clock, then origin id, then number."""
    return (msg.hlc, msg.origin, msg.line)


def behind(ours: Iterable[wire.Have], theirs: Iterable[wire.Have], floor_hlc: int) -> bool:
    """True if ``theirs`` (a peer's ``sync``) shows lines we lack: an origin
    whose run reaches past ours, or one we hold nothing of, with its last
    line at or above ``floor_hlc`` (older lines are outside our window).

    Both arguments are version vectors as in ``wire.Sync.have``.
    """
    mine = {h.origin: h.hi for h in ours}
    return any(h.hi > mine.get(h.origin, 0) and h.hi_hlc >= floor_hlc for h in theirs)


def run_digest(ids: Iterable[str]) -> str:
    """The ``digest`` of a ``sync`` entry (``wire.Have``): the first 16 hex
    digits of the SHA-256 of the line ids, in line order, concatenated."""
    h = hashlib.sha256()
    for msg_id in ids:
        h.update(msg_id.encode())
    return h.hexdigest()[:16]


class Push:
    """The catch-up one peer still needs, sent in flow-controlled batches.

    Not thread-safe: the node calls it under its state lock.

    Args:
        batch_lines: most lines per ``lines`` frame.

    Use: :meth:`reset` with the ids the store says the peer may lack, then
    :meth:`batches` to get the ``lines`` frames that may go out now, and
    :meth:`acked` when the peer acknowledges one (then :meth:`batches` again).
    """

    def __init__(self, batch_lines: int = BATCH_LINES) -> None:
        if not 1 <= batch_lines <= wire.MAX_BATCH_LINES:
            raise ValueError(f"batch_lines must be 1..{wire.MAX_BATCH_LINES}")
        self.batch_lines = batch_lines
        self._pending: deque[str] = deque()
        self._in_flight: set[int] = set()
        self._next_batch = 1
        self.lines_sent = 0

    @property
    def idle(self) -> bool:
        """Nothing left to send and nothing unacknowledged."""
        return not self._pending and not self._in_flight

    @property
    def pending(self) -> int:
        """Lines still to send."""
        return len(self._pending)

    def reset(self, ids: Sequence[str]) -> None:
        """Replace what is left to send (the peer's newest ``sync`` knows
        best).  Batches already sent stay in flight."""
        self._pending = deque(ids)

    def offer(self, ids: Iterable[str]) -> None:
        """Send these lines too, after what is already pending (ids already
        pending are not added twice)."""
        pending = set(self._pending)
        for msg_id in ids:
            if msg_id not in pending:
                self._pending.append(msg_id)
                pending.add(msg_id)

    def acked(self, batch: int) -> bool:
        """The peer applied ``batch``.  Returns False for a batch number
        that is not in flight (a confused or hostile peer)."""
        if batch not in self._in_flight:
            return False
        self._in_flight.discard(batch)
        return True

    def batches(self, fetch: Callable[[Sequence[str]], list[wire.Chat]]) -> list[wire.Lines]:
        """The batches that may be sent now (keeping at most
        :data:`MAX_IN_FLIGHT` in flight), each at most
        ``batch_lines`` lines and :data:`MAX_BATCH_BYTES` bytes.

        Args:
            fetch: gets lines by id, in the order given, skipping ids no
                longer held (``Store.get``).
        """
        out: list[wire.Lines] = []
        while self._pending and len(self._in_flight) < MAX_IN_FLIGHT:
            count = min(len(self._pending), self.batch_lines)
            fetched = fetch([self._pending.popleft() for _ in range(count)])
            lines: list[wire.Chat] = []
            size = 0
            for i, msg in enumerate(fetched):
                n = len(wire.encode_body(msg)) + 1
                if lines and size + n > MAX_BATCH_BYTES:
                    # Put back what did not fit, in order.
                    self._pending.extendleft(reversed([m.id for m in fetched[i:]]))
                    break
                lines.append(msg)
                size += n
            if not lines:
                continue  # all of these were pruned meanwhile
            batch = self._next_batch
            self._next_batch += 1
            self._in_flight.add(batch)
            self.lines_sent += len(lines)
            out.append(wire.Lines(batch=batch, lines=lines))
        return out
