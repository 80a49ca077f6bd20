"""The pure history core: the hybrid logical clock, version-vector
comparison and flow-controlled catch-up batches (no sockets, no store)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from p2pchat import history, wire


def chat(line: int, hlc: int, origin: str = "a" * 16, text: str = "hi") -> wire.Chat:
    return wire.Chat(
        id=os.urandom(16).hex(),
        origin=origin,
        seq=line,
        name="a",
        room="r",
        ts=hlc / 1e6,
        hops=16,
        text=text,
        line=line,
        hlc=hlc,
    )


class FakeWall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_clock_follows_the_wall_clock_and_never_goes_back() -> None:
    wall = FakeWall(1000.0)
    clock = history.HybridClock(wall_s=wall)
    first = clock.now()
    assert first == 1_000_000_000
    wall.t = 999.0  # the wall clock stepped back
    assert clock.now() == first + 1
    wall.t = 1001.0
    assert clock.now() == 1_001_000_000


def test_clock_continues_after_a_restart() -> None:
    clock = history.HybridClock(last_us=5_000_000_000, wall_s=FakeWall(1000.0))
    assert clock.now() == 5_000_000_001


def test_a_line_written_after_seeing_another_sorts_after_it() -> None:
    # Bob's clock is 10 s behind Alice's; he answers her line.
    alice = history.HybridClock(wall_s=FakeWall(1010.0))
    bob = history.HybridClock(wall_s=FakeWall(1000.0))
    question = alice.now()
    bob.observe(question)
    answer = bob.now()
    assert answer > question


def test_a_clock_far_in_the_future_pulls_ours_only_by_the_drift_limit() -> None:
    clock = history.HybridClock(max_drift_s=60.0, wall_s=FakeWall(1000.0))
    clock.observe(10**15)
    assert clock.now() == 1_060_000_001


def test_behind_sees_newer_runs_and_unknown_origins_within_the_window() -> None:
    ours = [wire.Have("a" * 16, 1, 5, 500)]
    assert not history.behind(ours, [wire.Have("a" * 16, 1, 5, 500)], 0)
    assert not history.behind(ours, [wire.Have("a" * 16, 1, 3, 300)], 0)
    assert history.behind(ours, [wire.Have("a" * 16, 1, 6, 600)], 0)
    assert history.behind(ours, [wire.Have("b" * 16, 1, 1, 100)], 0)
    # Older than our window's floor: not worth asking for.
    assert not history.behind(ours, [wire.Have("b" * 16, 1, 1, 100)], 200)


def test_push_keeps_two_batches_in_flight_and_sends_everything_once() -> None:
    lines = [chat(n, n) for n in range(1, 1001)]
    by_id = {m.id: m for m in lines}

    def fetch(ids: Sequence[str]) -> list[wire.Chat]:
        return [by_id[i] for i in ids if i in by_id]

    push = history.Push()
    push.reset([m.id for m in lines])
    got: list[wire.Chat] = []
    first = push.batches(fetch)
    assert len(first) == history.MAX_IN_FLIGHT
    assert push.batches(fetch) == []  # nothing more until an ack
    in_flight = list(first)
    while in_flight:
        batch = in_flight.pop(0)
        got += batch.lines
        assert len(wire.encode_frame(batch)) <= wire.MAX_FRAME_BYTES
        assert push.acked(batch.batch)
        in_flight += push.batches(fetch)
        assert len(in_flight) <= history.MAX_IN_FLIGHT
    assert [m.line for m in got] == list(range(1, 1001))
    assert push.idle
    assert push.lines_sent == 1000


def test_push_splits_batches_by_size() -> None:
    big = [chat(n, n, text="é" * wire.MAX_TEXT_CHARS) for n in range(1, 30)]
    by_id = {m.id: m for m in big}

    def fetch(ids: Sequence[str]) -> list[wire.Chat]:
        return [by_id[i] for i in ids if i in by_id]

    push = history.Push()
    push.reset([m.id for m in big])
    sent: list[int] = []
    batches = push.batches(fetch)
    while batches:
        for b in batches:
            assert len(wire.encode_frame(b)) <= wire.MAX_FRAME_BYTES
            sent += [m.line for m in b.lines]
            push.acked(b.batch)
        batches = push.batches(fetch)
    assert sent == list(range(1, 30))


def test_push_skips_lines_pruned_meanwhile_and_refuses_unknown_acks() -> None:
    lines = [chat(n, n) for n in range(1, 6)]
    push = history.Push()
    push.reset([m.id for m in lines])
    (batch, *_) = push.batches(lambda ids: [m for m in lines if m.id in ids and m.line != 3])
    assert [m.line for m in batch.lines] == [1, 2, 4, 5]
    assert not push.acked(batch.batch + 7)
    assert push.acked(batch.batch)
    assert not push.acked(batch.batch)  # twice
    assert push.idle


@given(st.lists(st.integers(min_value=0, max_value=2**40), min_size=2, max_size=50))
def test_observed_clocks_keep_the_local_clock_monotonic(values: list[int]) -> None:
    wall = FakeWall(1_000_000.0)
    clock = history.HybridClock(wall_s=wall)
    last = 0
    for v in values:
        clock.observe(v)
        now = clock.now()
        assert now > last
        last = now
