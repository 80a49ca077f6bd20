"""The core's admission checks, without sockets or a clock: their order, and that a message
that fails one changes nothing but the counter of its reason."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import msgspec

from p2pchat import errors, wire
from p2pchat.core.admission import REASONS, Admission
from p2pchat.identity import Identity

ROOM = "lobby"
NOW_S = 2_000_000_000.0
ME = Identity.generate()
THEM = Identity.generate()


def signed(who: Identity, msg: wire.F) -> wire.F:
    msg = msgspec.structs.replace(msg, origin=who.node_id, key=who.key, sig="")
    return msgspec.structs.replace(msg, sig=who.sign(wire.signing_bytes(msg)))


def chat(who: Identity = THEM, seq: int = 1, hlc_s: float = NOW_S, **kw: object) -> wire.Chat:
    fields: dict[str, object] = {
        "id": wire.new_message_id(),
        "origin": who.node_id,
        "seq": seq,
        "name": "them",
        "room": ROOM,
        "ts": NOW_S,
        "hops": 16,
        "text": "hi",
        "line": seq,
        "hlc": int(hlc_s * 1e6),
    }
    fields.update(kw)
    return signed(who, wire.Chat(**fields))  # type: ignore[arg-type]


def envelope(cls: type, who: Identity, seq: int) -> wire.FloodMessage:
    msg: wire.FloodMessage = cls(
        id=wire.new_message_id(),
        origin=who.node_id,
        seq=seq,
        name="them",
        room=ROOM,
        ts=NOW_S,
        hops=16,
    )
    return signed(who, msg)


def admission() -> Admission:
    return Admission(ME.node_id, ROOM)


def check(a: Admission, msg: wire.FloodMessage, floor_us: int = 0, last_seq: int = -1) -> object:
    return a.check(msg, NOW_S, lambda: floor_us, lambda origin: last_seq)


def snapshot(a: Admission) -> tuple[object, object]:
    return copy.deepcopy(dict(a.keys)), copy.deepcopy(dict(a.max_seq))


def test_a_valid_line_passes_and_only_admitted_keeps_anything() -> None:
    a = admission()
    msg = chat(seq=7)
    assert check(a, msg) is None
    assert snapshot(a) == ({}, {}), "checking keeps nothing"
    a.admitted(msg)
    assert a.keys[THEM.node_id] == THEM.key and a.max_seq[THEM.node_id] == 7


def test_the_checks_run_in_the_documented_order() -> None:
    """Room before signature, signature before our own origin, before the clock, before
    replay: each message below fails two checks and is counted under the earlier one."""
    a = admission()
    other_room = msgspec.structs.replace(chat(), room="elsewhere", sig="")
    assert check(a, other_room) == "wrong_room"
    forged_as_me = msgspec.structs.replace(chat(), origin=ME.node_id)
    assert check(a, forged_as_me) == "wrong_key", "a copy claiming our id is checked, not dropped"
    assert check(a, chat(ME)) == "own"
    tampered_future = msgspec.structs.replace(chat(hlc_s=NOW_S + 3600), text="changed")
    assert check(a, tampered_future) == "bad_signature"
    old_and_future = chat(hlc_s=NOW_S + 61)
    assert check(a, old_and_future, floor_us=int((NOW_S + 100) * 1e6)) == "future"
    assert check(a, chat(hlc_s=NOW_S - 1), floor_us=int(NOW_S * 1e6)) == "replayed"
    assert a.refused == {
        "wrong_room": 1,
        "wrong_key": 1,
        "bad_signature": 1,
        "future": 1,
        "replayed": 1,
    }
    assert snapshot(a) == ({}, {}), "refusals keep nothing but counters"


def test_a_clock_within_the_skew_passes_and_ts_counts_too() -> None:
    a = admission()
    assert check(a, chat(hlc_s=NOW_S + 59)) is None
    assert check(a, chat(ts=NOW_S + 61.0)) == "future"
    assert check(a, envelope(wire.Presence, THEM, 3)) is None


def test_an_old_leave_cannot_pass_and_other_messages_get_the_reorder_allowance() -> None:
    a = admission()
    a.admitted(envelope(wire.Presence, THEM, 100))
    assert check(a, envelope(wire.Presence, THEM, 40)) is None, "within 64 of the highest"
    assert check(a, envelope(wire.Presence, THEM, 30)) == "replayed"
    assert check(a, envelope(wire.Leave, THEM, 99)) == "replayed", "not above the highest seq"
    assert check(a, envelope(wire.Leave, THEM, 101), last_seq=150) == "replayed", (
        "roster knows more"
    )
    assert check(a, envelope(wire.Leave, THEM, 151), last_seq=150) is None


def test_every_reason_is_documented_and_every_error_code_has_a_reason() -> None:
    """One table of reasons (core.admission.REASONS) for /stats, the docs and the tests."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    text = (docs / "reliability.md").read_text() + (docs / "protocol.md").read_text()
    missing = [r for r in REASONS if f"`{r}`" not in text and f".{r}`" not in text]
    assert not missing, f"reasons not in docs/reliability.md or protocol.md: {missing}"
    codes = {
        cls.default_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.RemoteProtocolError)
    }
    source = "".join(
        p.read_text() for p in (Path(__file__).resolve().parent.parent / "p2pchat").glob("*.py")
    )
    codes |= set(re.findall(r'RemoteProtocolError\([^)]*?"([a-z_]+)"\)', source, re.S))
    assert codes <= set(REASONS), f"codes without a reason: {codes - set(REASONS)}"
