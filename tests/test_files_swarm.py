"""The download scheduler on a virtual clock: every chunk once and verified, rarest first,
bounded requests per holder, hostile holders only waste time, departures survived."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.errors import RemoteProtocolError
from p2pchat.files.swarm import Cancel, Outcome, Request, Swarm, SwarmConfig


def bitfield(n: int, chunks: set[int] | range) -> bytes:
    out = bytearray((n + 7) // 8)
    for i in chunks:
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


@dataclass
class Holder:
    """A simulated holder: what it has, how it answers."""

    chunks: set[int]
    kind: str = "honest"  # honest | bad (every chunk fails its hash) | silent (never answers)
    delay: tuple[float, float] = (0.01, 0.2)
    leaves_at: float | None = None


@dataclass
class Run:
    accepted: Counter[int] = field(default_factory=Counter)
    asked: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, Outcome]] = field(default_factory=Counter)
    cancels: list[Cancel] = field(default_factory=list)
    max_outstanding: Counter[str] = field(default_factory=Counter)
    end: float = 0.0


def simulate(
    n: int,
    holders: dict[str, Holder],
    seed: int = 1,
    config: SwarmConfig | None = None,
    limit_s: float = 10_000.0,
    swarm: Swarm | None = None,
) -> tuple[Swarm, Run]:
    """Drive a Swarm with simulated holders on a virtual clock until it completes or stalls."""
    rng = random.Random(seed)
    swarm = swarm or Swarm(n, random.Random(seed), config=config)
    timeout = swarm.config.request_timeout_s
    for name, holder in holders.items():
        swarm.holder_map(name, bitfield(n, holder.chunks))
    run = Run()
    events: list[tuple[float, int, str, str, int]] = []  # time, seq, what, holder, index
    seq = 0
    for name, holder in holders.items():
        if holder.leaves_at is not None:
            heapq.heappush(events, (holder.leaves_at, seq, "leave", name, -1))
            seq += 1
    gone: set[str] = set()
    sent: dict[str, dict[int, float]] = {name: {} for name in holders}  # outstanding by our count
    now = 0.0
    while now <= limit_s:
        for action in swarm.poll(now):
            if isinstance(action, Cancel):
                run.cancels.append(action)
                sent[action.holder].pop(action.index, None)
                continue
            assert isinstance(action, Request)
            assert action.holder not in gone
            assert action.index in holders[action.holder].chunks
            run.asked[action.holder] += 1
            sent[action.holder][action.index] = now
            holder = holders[action.holder]
            if holder.kind != "silent":
                heapq.heappush(
                    events,
                    (now + rng.uniform(*holder.delay), seq, "answer", action.holder, action.index),
                )
                seq += 1
        for name, outstanding in sent.items():
            live = sum(1 for t in outstanding.values() if now < t + timeout)
            run.max_outstanding[name] = max(run.max_outstanding[name], live)
        if swarm.complete:
            break
        deadline = swarm.next_deadline()
        upcoming = events[0][0] if events else None
        if deadline is None and upcoming is None:
            break  # stalled: nothing in flight, nothing coming
        now = min(t for t in (deadline, upcoming) if t is not None)
        while events and events[0][0] <= now:
            _, _, what, name, index = heapq.heappop(events)
            if what == "leave":
                gone.add(name)
                swarm.holder_gone(name)
                continue
            if name in gone:
                continue
            sent[name].pop(index, None)
            ok = holders[name].kind == "honest"
            outcome = swarm.received(name, index, ok, now)
            run.outcomes[(name, outcome)] += 1
            if outcome is Outcome.ACCEPTED:
                assert ok, "a bad chunk was accepted"
                run.accepted[index] += 1
    run.end = now
    return swarm, run


def test_one_holder_every_chunk_once() -> None:
    swarm, run = simulate(20, {"a": Holder(set(range(20)))})
    assert swarm.complete
    assert run.accepted == Counter(range(20))
    assert swarm.counts["requests"] == 20


def test_rarest_first() -> None:
    n = 8
    swarm = Swarm(n, random.Random(5), config=SwarmConfig(max_in_flight=1))
    swarm.holder_map("a", bitfield(n, range(8)))
    swarm.holder_map("b", bitfield(n, range(7)))
    swarm.holder_map("c", bitfield(n, range(6)))
    first = {r.holder: r.index for r in swarm.poll(0.0) if isinstance(r, Request)}
    assert first["a"] == 7  # only a has it
    assert first["b"] == 6  # a and b have it: rarer than 0..5
    assert 0 <= first["c"] <= 5


def test_ties_are_broken_by_the_seeded_rng() -> None:
    def first_requests(seed: int) -> list[Request | Cancel]:
        swarm = Swarm(64, random.Random(seed))
        swarm.holder_map("a", bitfield(64, range(64)))
        swarm.holder_map("b", bitfield(64, range(64)))
        return swarm.poll(0.0)

    assert first_requests(1) == first_requests(1)
    assert len({tuple(first_requests(seed)) for seed in range(10)}) > 1


def test_a_holder_is_never_asked_for_more_than_k_at_once() -> None:
    """A raw holder that never answers: at most K requests are outstanding at it
    at any time (with the bound removed, it is asked for every chunk at once)."""
    config = SwarmConfig(max_in_flight=4, request_timeout_s=5.0)
    swarm, run = simulate(
        200,
        {"sink": Holder(set(range(200)), kind="silent"), "good": Holder(set(range(200)))},
        config=config,
    )
    assert swarm.complete
    assert run.max_outstanding["sink"] <= 4
    assert run.max_outstanding["good"] <= 4
    assert run.accepted == Counter(range(200))


def test_a_holder_sending_bad_chunks_is_dropped_past_the_threshold() -> None:
    """Every chunk from "liar" fails its hash: it is asked at most limit + K - 1
    times, then never again; the file completes from the honest holder."""
    config = SwarmConfig(max_in_flight=4, bad_chunks_limit=3)
    swarm, run = simulate(
        300,
        {"liar": Holder(set(range(300)), kind="bad"), "good": Holder(set(range(300)))},
        config=config,
    )
    assert swarm.complete
    assert run.accepted == Counter(range(300))
    assert run.outcomes[("liar", Outcome.BAD)] == 3
    assert run.asked["liar"] <= 3 + 4 - 1
    assert swarm.holders()["liar"]["banned"] is True
    assert swarm.counts["holders_banned"] == 1


def test_a_timed_out_chunk_goes_to_another_holder_and_a_late_answer_still_counts() -> None:
    n = 2
    config = SwarmConfig(max_in_flight=1, request_timeout_s=5.0, endgame_copies=1)
    swarm = Swarm(n, random.Random(1), config=config)
    swarm.holder_map("slow", bitfield(n, {0}))
    swarm.holder_map("other", bitfield(n, {0, 1}))
    assert set(swarm.poll(0.0)) == {Request("slow", 0), Request("other", 1)}
    assert swarm.next_deadline() == 5.0
    assert swarm.received("other", 1, True, 1.0) is Outcome.ACCEPTED
    assert swarm.poll(1.0) == []  # chunk 0 is in flight at slow
    assert swarm.poll(5.0) == [Request("other", 0)]
    assert swarm.counts["timeouts"] == 1
    assert swarm.holders()["slow"]["limit"] == 1
    assert swarm.expects("slow", 0)
    assert swarm.received("slow", 0, True, 6.0) is Outcome.ACCEPTED  # late, still missing
    assert swarm.poll(6.0) == [Cancel("other", 0)]  # the copy asked of other is not wanted
    assert swarm.received("other", 0, True, 6.5) is Outcome.UNEXPECTED  # not written
    assert swarm.complete


def test_answers_that_were_not_asked_for_are_not_taken() -> None:
    swarm = Swarm(4, random.Random(1))
    swarm.holder_map("a", bitfield(4, {0}))
    swarm.poll(0.0)
    assert not swarm.expects("a", 1)
    assert swarm.received("a", 1, True, 0.1) is Outcome.UNEXPECTED
    assert swarm.received("stranger", 0, True, 0.1) is Outcome.UNEXPECTED
    assert swarm.missing_count == 4


def test_endgame_asks_a_second_holder_and_cancels_the_loser() -> None:
    n = 1
    swarm = Swarm(n, random.Random(1), config=SwarmConfig(max_in_flight=1))
    swarm.holder_map("slow", bitfield(n, {0}))
    assert swarm.poll(0.0) == [Request("slow", 0)]
    swarm.holder_map("fast", bitfield(n, {0}))
    assert swarm.poll(0.1) == [Request("fast", 0)]  # everything in flight: a second copy
    assert swarm.received("fast", 0, True, 0.2) is Outcome.ACCEPTED
    assert swarm.poll(0.2) == [Cancel("slow", 0)]
    assert swarm.received("slow", 0, True, 3.0) is Outcome.UNEXPECTED
    swarm2 = Swarm(n, random.Random(1), config=SwarmConfig(endgame_copies=1))
    swarm2.holder_map("slow", bitfield(n, {0}))
    swarm2.poll(0.0)
    swarm2.holder_map("fast", bitfield(n, {0}))
    assert swarm2.poll(0.1) == []  # endgame off


def test_the_offerer_leaving_midway_is_survived_when_others_hold_the_chunks() -> None:
    n = 100
    holders = {
        "offerer": Holder(set(range(n)), leaves_at=0.5),
        "b": Holder(set(range(0, 60))),
        "c": Holder(set(range(40, 100))),
    }
    swarm, run = simulate(n, holders)
    assert swarm.complete
    assert run.accepted == Counter(range(n))
    assert "offerer" not in swarm.holders()
    assert 0 < run.outcomes[("offerer", Outcome.ACCEPTED)] < n


def test_chunks_nobody_has_are_reported_and_nothing_spins() -> None:
    n = 10
    swarm, run = simulate(
        n, {"offerer": Holder(set(range(n)), leaves_at=0.05), "b": Holder({1, 2})}
    )
    assert not swarm.complete
    assert set(swarm.unavailable()) <= set(range(n)) - {1, 2}
    assert swarm.unavailable() == sorted(set(range(n)) - set(run.accepted))
    assert swarm.next_deadline() is None


def test_a_resumed_download_asks_only_for_what_is_missing() -> None:
    swarm = Swarm(10, random.Random(1), done={0, 1, 2, 3, 4, 5, 6, 7})
    swarm.holder_map("a", bitfield(10, range(10)))
    assert sorted(r.index for r in swarm.poll(0.0) if isinstance(r, Request)) == [8, 9]


def test_bad_have_maps_are_protocol_errors() -> None:
    swarm = Swarm(10, random.Random(1))
    with pytest.raises(RemoteProtocolError):
        swarm.holder_map("a", bytes(3))
    with pytest.raises(RemoteProtocolError):
        swarm.holder_map("a", bytes([0, 0x20]))  # bit 10 of a 10-chunk file
    with pytest.raises(RemoteProtocolError):
        swarm.holder_has("a", 10)


def test_a_declining_holder_is_asked_less_and_the_chunk_goes_elsewhere() -> None:
    swarm = Swarm(8, random.Random(2), config=SwarmConfig(max_in_flight=4))
    swarm.holder_map("busy", bitfield(8, range(8)))
    swarm.holder_map("b", bitfield(8, range(8)))
    first = [r for r in swarm.poll(0.0) if isinstance(r, Request) and r.holder == "busy"]
    swarm.declined("busy", first[0].index, 0.1)
    assert swarm.holders()["busy"]["limit"] == 2
    again = swarm.poll(0.1)
    assert Request("busy", first[0].index) not in again


@st.composite
def swarms(draw: st.DrawFn) -> tuple[int, dict[str, Holder], int]:
    n = draw(st.integers(1, 80))
    holders: dict[str, Holder] = {}
    for h in range(draw(st.integers(1, 4))):
        chunks = draw(st.sets(st.integers(0, n - 1), max_size=n))
        holders[f"honest{h}"] = Holder(chunks, delay=(0.01, draw(st.floats(0.02, 3.0))))
    holders["honest0"].chunks |= set(range(n)) - set().union(*(h.chunks for h in holders.values()))
    if draw(st.booleans()):  # an offerer with everything that leaves at some point
        holders["offerer"] = Holder(set(range(n)), leaves_at=draw(st.floats(0.0, 2.0)))
    for h in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["bad", "silent"]))
        chunks = draw(st.sets(st.integers(0, n - 1), max_size=n)) | {draw(st.integers(0, n - 1))}
        holders[f"{kind}{h}"] = Holder(chunks, kind=kind)
    return n, holders, draw(st.integers(0, 2**32))


@settings(max_examples=150, deadline=None)
@given(swarms())
def test_every_chunk_is_fetched_exactly_once_and_verified_whatever_the_holders(
    case: tuple[int, dict[str, Holder], int],
) -> None:
    n, holders, seed = case
    config = SwarmConfig(request_timeout_s=5.0)
    swarm, run = simulate(n, holders, seed=seed, config=config)
    assert swarm.complete
    assert run.accepted == Counter(range(n))  # each chunk accepted once, all of them good
    for name, holder in holders.items():
        assert run.max_outstanding[name] <= config.max_in_flight
        if holder.kind == "bad":
            assert run.outcomes[(name, Outcome.BAD)] <= config.bad_chunks_limit
            # Asked at most limit + K - 1 times, not counting endgame copies it was
            # asked for and which came from elsewhere first (cancelled, or duplicates).
            spared = run.outcomes[(name, Outcome.DUPLICATE)] + sum(
                1 for c in run.cancels if c.holder == name
            )
            assert run.asked[name] - spared <= config.bad_chunks_limit + config.max_in_flight - 1
    # A hostile holder only costs time: at most a few timeouts' worth per chunk.
    assert run.end <= 5.0 * (n + 4) + 10


def test_a_chunk_sent_in_place_of_the_one_asked_takes_its_slot() -> None:
    """The holder answers a request for chunk a with chunk b (``finstead``):
    b is expected from it, a is asked of the other holder that has it, the
    holder's limit is not cut; a substitute for a request never made is not
    wanted, and one past the end is a protocol error."""
    swarm = Swarm(8, random.Random(1), config=SwarmConfig(max_in_flight=1))
    swarm.holder_map("seed", b"\xff")
    (ask,) = [r for r in swarm.poll(0.0) if isinstance(r, Request)]
    swarm.holder_map("peer", bytes([0x80 >> ask.index]))
    other = (ask.index + 1) % 8
    assert swarm.substituted("seed", ask.index, other, 0.1) is True
    assert swarm.expects("seed", other) and not swarm.expects("seed", ask.index)
    assert swarm.holders()["seed"]["limit"] == 1 and swarm.counts["substituted"] == 1
    assert Request("peer", ask.index) in swarm.poll(0.2)
    assert swarm.received("seed", other, True, 0.3) is Outcome.ACCEPTED
    assert swarm.substituted("seed", 5, 6, 0.4) is False  # 5 was never asked of it
    with pytest.raises(RemoteProtocolError):
        swarm.substituted("seed", 0, 8, 0.5)
