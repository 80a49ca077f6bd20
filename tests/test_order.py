"""The per-origin order on screen (p2pchat.core.order), without sockets or clocks.

Hypothesis draws random arrivals (origin, line, time, live or by catch-up, some lines
never coming) and drives :class:`OriginOrder` as the node does: the store holds every
line offered so far, ``tick`` runs at each deadline.  It checks what a user would see:
every line shown exactly once, an origin's lines never inverted while within the bound,
nothing held longer than the bound, and memory within the caps.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.core.order import OriginOrder, Release

HOLD = 1.0


@dataclass(frozen=True)
class Arrival:
    origin: str
    line: int
    at: float
    live: bool


@dataclass
class Shown:
    origin: str
    line: int
    at: float
    earlier: bool
    index: int


def run(
    order: OriginOrder[tuple[str, int]], arrivals: list[Arrival]
) -> tuple[list[Shown], dict[tuple[str, int], int], list[int]]:
    """Offer ``arrivals`` in time order, ticking at every deadline; return
    what was shown, the event index at which each line was offered, and the
    number of lines held after each step."""
    stored: set[tuple[str, int]] = set()
    shown: list[Shown] = []
    offered_at: dict[tuple[str, int], int] = {}
    sizes: list[int] = []
    step = 0

    def show(releases: list[Release[tuple[str, int]]], at: float) -> None:
        for r in releases:
            shown.append(Shown(r.item[0], r.item[1], at, r.earlier, len(shown)))

    for a in sorted(arrivals, key=lambda a: a.at):
        while (d := order.next_deadline()) is not None and d <= a.at:
            show(order.tick(d), d)
            sizes.append(len(order))
        key = (a.origin, a.line)
        if key in stored:
            continue  # the node drops a duplicate before it would show it
        offered_at[key] = len(shown)
        step += 1
        prev = (a.origin, a.line - 1) in stored
        stored.add(key)
        show(order.offer(a.origin, a.line, key, a.at, prev_held=prev, live=a.live), a.at)
        sizes.append(len(order))
    while (d := order.next_deadline()) is not None:
        show(order.tick(d), d)
    return shown, offered_at, sizes


@st.composite
def arrivals(draw: st.DrawFn, max_lines: int = 10) -> list[Arrival]:
    out: list[Arrival] = []
    for origin in draw(st.sampled_from([["a"], ["a", "b"], ["a", "b", "c"]])):
        n = draw(st.integers(1, max_lines))
        for line in range(1, n + 1):
            copies = draw(st.integers(0, 2))  # 0: never comes; 2: live and by catch-up
            for _ in range(copies):
                at = draw(st.floats(0, 5, allow_nan=False).map(lambda x: round(x, 2)))
                out.append(Arrival(origin, line, at, draw(st.booleans())))
    return out


@settings(max_examples=400, deadline=None)
@given(arrivals())
def test_every_line_is_shown_once_in_order_and_never_held_past_the_bound(
    arr: list[Arrival],
) -> None:
    shown, offered_at, _ = run(OriginOrder(hold_s=HOLD), arr)
    # Exactly once: every line offered is shown, none twice.
    keys = [(s.origin, s.line) for s in shown]
    assert sorted(keys) == sorted(offered_at)
    first_at: dict[tuple[str, int], float] = {}
    for a in sorted(arr, key=lambda a: a.at):
        first_at.setdefault((a.origin, a.line), a.at)
    for s in shown:
        # Nothing held longer than the bound.
        assert s.at - first_at[(s.origin, s.line)] <= HOLD + 1e-9
    by_key = {(s.origin, s.line): s for s in shown}
    for s in shown:
        for t in shown:
            if s.origin != t.origin or s.line >= t.line:
                continue
            # s.line < t.line: if s was offered before t was shown, s is shown first.
            if offered_at[(s.origin, s.line)] <= t.index:
                assert s.index < t.index, (s, t)
            else:
                # It came after a later line was shown: marked earlier.
                assert by_key[(s.origin, s.line)].earlier
    # Shown in order (not marked) lines of one origin rise.
    for origin in {s.origin for s in shown}:
        placed = [s.line for s in shown if s.origin == origin and not s.earlier]
        assert placed == sorted(placed)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_lines_that_come_within_the_bound_are_all_shown_in_order_unmarked(
    data: st.DataObject,
) -> None:
    """Every line comes live, each within the bound after any later line of its
    origin: the user sees 1..n of each origin, in order, none marked earlier."""
    arr: list[Arrival] = []
    for origin in ("a", "b"):
        n = data.draw(st.integers(1, 12))
        base = data.draw(st.floats(0, 3))
        times = [base + data.draw(st.floats(0, HOLD * 0.9)) for _ in range(n)]
        arr += [Arrival(origin, i + 1, round(t, 3), True) for i, t in enumerate(times)]
    # Within the bound: line k comes less than HOLD after the first later line came.
    shown, _, _ = run(OriginOrder(hold_s=HOLD), arr)
    for origin in ("a", "b"):
        mine = [s for s in shown if s.origin == origin]
        assert [s.line for s in mine] == list(range(1, len(mine) + 1))
        assert not any(s.earlier for s in mine)


@settings(max_examples=200, deadline=None)
@given(arrivals(max_lines=12), st.integers(1, 4), st.integers(1, 6))
def test_memory_stays_within_the_caps(arr: list[Arrival], per_origin: int, total: int) -> None:
    order: OriginOrder[tuple[str, int]] = OriginOrder(
        hold_s=HOLD, max_per_origin=per_origin, max_held=total
    )
    shown, offered_at, sizes = run(order, arr)
    assert max(sizes, default=0) <= total
    assert sorted((s.origin, s.line) for s in shown) == sorted(offered_at)
    for origin in {s.origin for s in shown}:
        placed = [s.line for s in shown if s.origin == origin and not s.earlier]
        assert placed == sorted(placed)


def test_a_catch_up_line_fills_the_gap_in_its_place_then_the_held_line_follows() -> None:
    order: OriginOrder[str] = OriginOrder(hold_s=HOLD)
    assert order.offer("erin", 2, "two", 0.0, prev_held=False) == []
    assert order.next_deadline() == HOLD
    assert order.last_shown("erin") is None and order.held("erin") == 1
    out = order.offer("erin", 1, "one", 0.3, prev_held=False, live=False)
    assert [(r.item, r.earlier) for r in out] == [("one", False), ("two", False)]
    assert order.next_deadline() is None
    assert order.last_shown("erin") == 2 and len(order) == 0
    # A catch-up line nothing waits for is an earlier line.
    out = order.offer("bob", 4, "old", 0.4, prev_held=False, live=False)
    assert [(r.item, r.earlier) for r in out] == [("old", True)]


def test_a_line_whose_gap_never_fills_is_shown_at_the_bound_and_the_late_one_marked() -> None:
    order: OriginOrder[str] = OriginOrder(hold_s=HOLD)
    assert order.offer("erin", 3, "three", 10.0, prev_held=False) == []
    assert order.tick(10.9) == []
    assert [r.item for r in order.tick(11.0)] == ["three"]
    assert order.released_by_time == 1
    out = order.offer("erin", 2, "two", 11.5, prev_held=False)
    assert [(r.item, r.earlier) for r in out] == [("two", True)]
    out = order.offer("erin", 4, "four", 11.6, prev_held=True)
    assert [(r.item, r.earlier) for r in out] == [("four", False)]


def test_over_the_cap_the_oldest_held_line_is_shown_at_once() -> None:
    order: OriginOrder[int] = OriginOrder(hold_s=HOLD, max_per_origin=3)
    for n in (2, 3, 4):
        assert order.offer("m", n, n, 0.0, prev_held=n > 2) == []
    out = order.offer("m", 6, 6, 0.1, prev_held=False)
    assert [r.item for r in out] == [2, 3, 4]
    assert order.released_by_cap == 1
    assert order.held("m") == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        OriginOrder(hold_s=-1)
    with pytest.raises(ValueError):
        OriginOrder(max_held=0)
