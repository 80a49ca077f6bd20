"""The roster: who is in the room, under which name, and who went quiet."""

from __future__ import annotations

from p2pchat.roster import Member, Roster

SELF = "5e1f000000000000"
ALICE = "abcd0123456789ef"
ALICE2 = "9f8e7d6c5b4a3210"
BOB = "b0b0b0b0b0b0b0b0"
TIMEOUT = 10.0


def roster() -> Roster:
    return Roster(SELF, "me", timeout_s=TIMEOUT)


def names(r: Roster) -> list[str]:
    return [m.name for m in r.members()]


def test_a_new_roster_holds_only_this_node() -> None:
    r = roster()
    assert SELF in r
    assert [(m.node, m.name) for m in r.members()] == [(SELF, "me")]
    assert r.get(ALICE) is None
    assert ALICE not in r


def test_heard_from_a_new_node_adds_it() -> None:
    r = roster()
    assert r.heard(ALICE, "alice", now=1.0) == (True, None)
    assert ALICE in r
    member = r.get(ALICE)
    assert member == Member(ALICE, "alice", 1.0)


def test_heard_from_a_known_node_is_not_new() -> None:
    r = roster()
    r.heard(ALICE, "alice", now=1.0)
    assert r.heard(ALICE, "alice", now=2.0) == (False, None)
    assert len(r.members()) == 2


def test_heard_under_another_name_reports_the_old_name() -> None:
    r = roster()
    r.heard(ALICE, "alice", now=1.0)
    assert r.heard(ALICE, "alicia", now=2.0) == (False, "alice")
    member = r.get(ALICE)
    assert member is not None
    assert member.name == "alicia"
    assert r.heard(ALICE, "alicia", now=3.0) == (False, None)


def test_silent_member_expires_after_the_timeout() -> None:
    r = roster()
    r.heard(ALICE, "alice", now=100.0)
    r.heard(BOB, "bob", now=105.0)
    assert r.expire(now=100.0 + TIMEOUT - 0.5) == []
    assert ALICE in r
    gone = r.expire(now=100.0 + TIMEOUT + 0.5)
    assert [m.node for m in gone] == [ALICE]
    assert ALICE not in r
    assert BOB in r
    assert r.expire(now=100.0 + TIMEOUT + 0.6) == []  # reported once only
    assert [m.node for m in r.expire(now=200.0)] == [BOB]


def test_a_member_with_a_longer_presence_interval_gets_a_longer_timeout() -> None:
    r = roster()
    r.heard(ALICE, "alice", now=100.0, every_s=6.0)  # a big room: presence every 6 s
    r.heard(BOB, "bob", now=100.0, every_s=3.0)  # the default: the roster's 10 s stands
    assert [m.node for m in r.expire(now=100.0 + TIMEOUT + 0.5)] == [BOB]
    assert r.expire(now=100.0 + 3 * 6.0 - 0.5) == []
    assert [m.node for m in r.expire(now=100.0 + 3 * 6.0 + 0.5)] == [ALICE]


def test_hearing_from_a_member_keeps_it_alive() -> None:
    r = roster()
    r.heard(ALICE, "alice", now=0.0)
    for t in range(1, 50):
        r.heard(ALICE, "alice", now=float(t))
        assert r.expire(now=t + TIMEOUT - 0.1) == []
    assert ALICE in r


def test_this_node_never_expires() -> None:
    r = roster()
    r.heard(SELF, "me", now=0.0)
    assert r.expire(now=1e12) == []
    assert SELF in r
    assert names(r) == ["me"]


def test_hearing_our_own_id_does_not_make_us_expire() -> None:
    r = roster()
    assert r.heard(SELF, "me", now=5.0) == (False, None)
    assert r.expire(now=5.0 + 10 * TIMEOUT) == []
    assert SELF in r


def test_rename_self() -> None:
    r = roster()
    r.rename_self("zed")
    assert names(r) == ["zed"]


def test_remove_returns_the_member_and_forgets_it() -> None:
    r = roster()
    r.heard(ALICE, "alice", now=1.0)
    removed = r.remove(ALICE)
    assert removed is not None
    assert (removed.node, removed.name) == (ALICE, "alice")
    assert ALICE not in r
    assert r.remove(ALICE) is None
    assert r.expire(now=1e9) == []


def test_remove_of_an_unknown_node_or_self_does_nothing() -> None:
    r = roster()
    assert r.remove(BOB) is None
    assert r.remove(SELF) is None
    assert SELF in r


def test_display_is_the_plain_name_when_unique() -> None:
    r = roster()
    r.heard(ALICE, "alice", now=0.0)
    r.heard(BOB, "bob", now=0.0)
    assert r.display(ALICE) == "alice"
    assert r.display(BOB) == "bob"
    assert r.display(SELF) == "me"


def test_display_adds_the_id_prefix_when_two_members_share_a_name() -> None:
    r = roster()
    r.heard(ALICE, "alice", now=0.0)
    r.heard(ALICE2, "alice", now=0.0)
    r.heard(BOB, "bob", now=0.0)
    assert r.display(ALICE) == "alice#abcd"
    assert r.display(ALICE2) == "alice#9f8e"
    assert r.display(BOB) == "bob"


def test_display_drops_the_suffix_once_the_clash_is_gone() -> None:
    r = roster()
    r.heard(ALICE, "alice", now=0.0)
    r.heard(ALICE2, "alice", now=0.0)
    r.remove(ALICE2)
    assert r.display(ALICE) == "alice"
    r.heard(ALICE2, "alice", now=1.0)
    r.heard(ALICE2, "alice2", now=2.0)
    assert r.display(ALICE) == "alice"


def test_display_clashes_with_our_own_name_too() -> None:
    r = roster()
    r.heard(ALICE, "me", now=0.0)
    assert r.display(ALICE) == "me#abcd"
    assert r.display(SELF) == "me#5e1f"


def test_display_with_an_explicit_name_for_a_node_that_left() -> None:
    r = roster()
    r.heard(ALICE, "alice", now=0.0)
    assert r.display(ALICE2, "alice") == "alice#9f8e"
    assert r.display(BOB, "bob") == "bob"
    assert r.display(BOB) == BOB[:8]


def test_members_are_sorted_by_name_case_insensitively_self_included() -> None:
    r = roster()
    r.heard(BOB, "bob", now=0.0)
    r.heard(ALICE, "Zoe", now=0.0)
    r.heard(ALICE2, "alice", now=0.0)
    assert names(r) == ["alice", "bob", "me", "Zoe"]
    r.heard(BOB, "aaron", now=1.0)
    assert names(r) == ["aaron", "alice", "me", "Zoe"]


def test_members_with_the_same_name_are_in_a_stable_order() -> None:
    r = roster()
    r.heard(ALICE, "alice", now=0.0)
    r.heard(ALICE2, "alice", now=0.0)
    first = [m.node for m in r.members()]
    assert sorted(first[:2]) == sorted([ALICE, ALICE2])
    assert [m.node for m in r.members()] == first


def test_big_rooms_space_their_presences_out() -> None:
    from p2pchat.node import PRESENCE_SHARE_S, Node, NodeConfig

    node = Node(NodeConfig(name="me", room="lobby", port=0, interfaces=["127.0.0.1"]))
    try:
        assert node._core.members.presence_every() == 3.0  # a room of one: the configured interval
        for i in range(29):
            node._core.s.roster.heard(f"{i:016x}", f"n{i}", now=0.0)
        # 30 members: about one presence per PRESENCE_SHARE_S from the whole room.
        assert node._core.members.presence_every() == 30 * PRESENCE_SHARE_S == 6.0
    finally:
        node.close()


def test_a_member_is_timed_out_after_three_of_its_announced_intervals() -> None:
    """Big rooms space presences out (a room of 500: 100 s); a crashed member is
    reported by its neighbours (presence.gone), the timeout is the fallback."""
    r = roster()
    r.heard(ALICE, "alice", 0.0, every_s=100.0)
    assert r.expire(299.0) == []
    assert [m.node for m in r.expire(300.5)] == [ALICE]


def test_a_suspected_member_is_removed_at_its_deadline_unless_a_newer_message_refutes() -> None:
    r = roster()
    r.heard(ALICE, "alice", 0.0, seq=5, every_s=100.0)
    r.heard(ALICE2, "alice2", 0.0, seq=9, every_s=100.0)
    assert not r.suspect(ALICE, 4, until=6.0)  # older than what we heard: stale
    assert r.suspect(ALICE, 5, until=6.0)
    assert r.suspect(ALICE2, 9, until=6.0)
    r.heard(ALICE2, "alice2", 3.0, seq=10)  # alive: refuted
    assert r.expire(5.9) == []
    assert [m.node for m in r.expire(6.0)] == [ALICE]
    assert ALICE2 in r
    assert not r.suspect(SELF, 100, until=6.0)


def test_a_full_roster_takes_a_newcomer_only_in_place_of_an_overdue_member() -> None:
    """Members linked to us or heard on time are never pushed out by newcomers (fresh keys
    cost an attacker nothing); an overdue one gives way, the least recently heard first."""
    r = Roster(SELF, "me", timeout_s=TIMEOUT, max_members=3)
    r.heard(ALICE, "alice", 0.0, every_s=3.0)
    r.heard(BOB, "bob", 1.0, every_s=3.0)
    assert r.heard("f" * 16, "fake", 2.0) == (False, None), "nobody overdue: not taken"
    assert r.refused == 1 and r.get("f" * 16) is None
    assert r.heard("f" * 16, "fake", 4.5, linked={ALICE}) == (True, None), "bob is overdue"
    assert [m.node for m in r.take_evicted()] == [BOB]
    assert ALICE in r, "linked: kept though overdue"
    assert r.heard("e" * 16, "fake2", 20.0, linked={ALICE}) == (True, None)
    assert [m.node for m in r.take_evicted()] == ["f" * 16]
    assert len(r) == 3
