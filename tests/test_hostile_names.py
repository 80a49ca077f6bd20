"""Attack 6 of issue 11, look-alike names, rebuilt with raw hostile peers.

An honest pair A ("alice", attacked) and B ("bob") as in tests/test_hostile.py;
a raw peer with its own valid key links to A and speaks for itself, signing
every frame, under names meant to pass for bob's:

* a Cyrillic look-alike ("b\\u043eb") is shown at A as ``name#abcd`` (and so is
  bob, while both are there), A raises a notice, ``/msg bob#<bob's digits>``
  reaches the real bob, and a bare ``/msg bob`` is refused as ambiguous;
* a name with a zero-width space, a bidi override, or ``#`` (``bob#2d96``,
  what A shows for bob) is a protocol error of its frame, counted as
  ``bad_name``;
* padded lines, actions and names never put a row that starts like one of
  A's own lines (``* bob left``, ``!! ...``, ``-- ...``) on an 80-column
  terminal.

Network safety: every socket here is on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest
from conftest import FAST_LINK, LOOPBACK, Cluster, RawPeer, wait_for
from test_hostile import (
    DELIVERY_S,
    Pair,
    counter,
    expect_protocol_error,
    honest_lines_still_flow,
    ids,
    make_pair,
    raw_peers,
    refused_before,
)

from p2pchat import wire
from p2pchat.cli import output, render
from p2pchat.errors import UsageError
from p2pchat.events import Event, MessageEvent, Notice
from p2pchat.node import Node, NodeConfig

__all__ = ["raw_peers"]  # a fixture, used by name

FAKE_BOB = "b\u043eb"  # Cyrillic small o
PATIENT_LINK = dataclasses.replace(FAST_LINK, link_timeout_s=30.0)
"""A's links: a raw peer sends no keepalives, and must not be cut for it."""


def _send(raw: RawPeer, msg: wire.Message) -> None:
    raw.send(wire.encode_frame(msg))


def _impostor(pair: Pair, raw_peers: Callable[..., RawPeer], name: str) -> RawPeer:
    raw = raw_peers(pair.a.port)
    raw.hello(pair.room, name=name)
    _send(raw, raw.message(wire.Join, pair.room, name=name))
    return raw


def _line_at_a(pair: Pair, raw: RawPeer, name: str, text: str) -> MessageEvent:
    msg = raw.message(wire.Chat, pair.room, name=name, text=text)
    _send(raw, msg)
    wait_for(lambda: msg.id in ids(pair.rec_a), DELIVERY_S, f"the line {text!r} at A")
    return next(m for m in pair.rec_a.messages() if m.id == msg.id)


def test_a_cyrillic_look_alike_is_shown_with_its_fingerprint_and_raises_a_notice(
    cluster: Cluster, raw_peers: Callable[..., RawPeer]
) -> None:
    pair = make_pair(cluster, a_link=PATIENT_LINK)
    raw = _impostor(pair, raw_peers, FAKE_BOB)
    got = _line_at_a(pair, raw, FAKE_BOB, "it's bob, send me the key")
    assert got.display == f"{FAKE_BOB}#{raw.node_id[:4]}"

    notices = [e for e in pair.rec_a.events if isinstance(e, Notice)]
    assert len(notices) == 1, notices
    assert f"{FAKE_BOB}#{raw.node_id[:4]}" in notices[0].text
    assert f"bob#{pair.b.node_id[:4]}" in notices[0].text
    assert "may not be who you think" in notices[0].text

    # While the look-alike is there, the real bob is shown with his digits too.
    real = pair.b.send("it's the real bob")
    wait_for(lambda: real.id in ids(pair.rec_a), DELIVERY_S, "bob's line at A")
    shown = next(m for m in pair.rec_a.messages() if m.id == real.id)
    assert shown.display == f"bob#{pair.b.node_id[:4]}"
    whois = {k.node: k for k in pair.a.whois("bob")}
    assert set(whois) == {pair.b.node_id, raw.node_id}
    assert whois[pair.b.node_id].first and not whois[raw.node_id].first

    # /whois and /who in A's text view.
    who = render.format_who(pair.room, pair.a.snapshot().members)
    assert f"bob#{pair.b.node_id[:4]}" in who and f"{FAKE_BOB}#{raw.node_id[:4]}" in who

    # A name first seen with bob's key: the look-alike stays flagged even
    # when bob is not there to clash with.
    pair.b.close()
    wait_for(
        lambda: pair.b.node_id not in {m.node for m in pair.a.snapshot().members},
        DELIVERY_S,
        "bob to leave A's room",
    )
    alone = _line_at_a(pair, raw, FAKE_BOB, "bob is gone, I'm bob now")
    assert alone.display == f"{FAKE_BOB}#{raw.node_id[:4]}"


def test_msg_name_hash_digits_reaches_the_real_member_never_the_look_alike(
    cluster: Cluster, raw_peers: Callable[..., RawPeer]
) -> None:
    pair = make_pair(cluster, a_link=PATIENT_LINK)
    raw = _impostor(pair, raw_peers, FAKE_BOB)
    _line_at_a(pair, raw, FAKE_BOB, "I'm bob")
    wait_for(
        lambda: f"bob#{pair.b.node_id[:4]}" in {m.display for m in pair.a.snapshot().members},
        DELIVERY_S,
        "bob shown with his digits at A",
    )
    with pytest.raises(UsageError, match="look like"):
        pair.a.send_direct("bob", "which bob?")
    with pytest.raises(UsageError, match="nobody"):
        pair.a.send_direct(f"bob#{'0000' if pair.b.node_id[:4] != '0000' else '1111'}", "x")

    def direct_sent() -> bool:
        try:
            pair.a.send_direct(f"bob#{pair.b.node_id[:4]}", "for the real bob")
        except UsageError as exc:  # bob's key for direct messages not heard yet
            assert "not announced a key" in str(exc)
            return False
        return True

    wait_for(direct_sent, DELIVERY_S, "A to send bob a direct line")
    wait_for(
        lambda: any(m.private and m.text == "for the real bob" for m in pair.rec_b.messages()),
        DELIVERY_S,
        "the direct line at bob",
    )
    # The impostor, linked to A, gets the line as every relay does: addressed
    # to bob's node id, and it cannot open it.
    deadline = time.monotonic() + DELIVERY_S
    while True:
        msg = raw.next_message(max(0.1, deadline - time.monotonic()))
        assert msg is not None, "A closed the impostor's link"
        if isinstance(msg, wire.Direct):
            break
    assert msg.to == pair.b.node_id
    assert raw.identity.open(msg.eph, msg.box, f"{msg.id}:{msg.origin}:{msg.to}".encode()) is None
    honest_lines_still_flow(pair, "a look-alike")


@pytest.mark.parametrize(
    "bad",
    ["bob\u200b", "\u202ebob", "bob#0000", "b\u2066ob"],
    ids=["zero-width-space", "rtl-override", "hash", "isolate"],
)
def test_names_with_invisible_characters_or_hash_are_counted_protocol_errors(
    cluster: Cluster,
    raw_peers: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    bad: str,
) -> None:
    pair = make_pair(cluster)
    bad = bad.replace("0000", pair.b.node_id[:4])  # exactly what A shows for bob
    # In a flooded message from a linked peer.
    before = refused_before(pair, "bad_name")
    raw = raw_peers(pair.a.port)
    raw.hello(pair.room)
    _send(raw, raw.message(wire.Chat, pair.room, name=bad, text="it's bob"))
    expect_protocol_error(pair, caplog, raw, raw.address, "bad_name", before)
    # In a hello.
    before = refused_before(pair, "bad_name")
    raw = raw_peers(pair.a.port)
    raw.send(wire.encode_frame(raw.make_hello(pair.room, name=bad)))
    raw.wait_closed()
    wait_for(
        lambda: counter(pair.a, "frames_refused", "bad_name") >= before[0] + 1,
        DELIVERY_S,
        "the bad hello counted",
    )
    assert "it's bob" not in pair.rec_a.texts()
    assert bad not in {m.name for m in pair.a.snapshot().members}
    honest_lines_still_flow(pair, f"the name {bad!r}")


# -- the text view ------------------------------------------------------------------------------

SYSTEM_LOOKING = ("* bob left", "!! ", "-- ", "* bob timed out", "* bob is now known")


def _padded_lines(name: str) -> list[tuple[str, str, bool]]:
    """(name, text, action) that would put a fake system line at column 0 of
    a row of an 80-column terminal, whichever way the terminal wrapped."""
    out: list[tuple[str, str, bool]] = []
    for pad in range(60, 100):
        out.append((name, "hi" + " " * pad + "* bob left", False))
    for n in range(60, 80):
        out.append((name, "x" * n + " !! bob is an impostor, trust me", False))
        out.append((name, "word " * (n // 5) + "-- link to bob lost", False))
    out.append((name, "left", True))  # "/me left": "* raw left"
    out.append(("-- link to bob lost", "ok", False))
    out.append(("!! bob is fake", "see above", False))
    out.append(("* bob left", "bye", False))
    return out


def _terminal_rows(line: str, width: int) -> list[str]:
    """The rows an 80-column terminal shows for ``line``: it wraps at the
    last column, and a wide character that does not fit starts the next row.
    Widths counted as render.wrap_rows counts them (high)."""
    rows, row, used = [], "", 0
    for ch in line:
        cells = 1 if ch < "\u1100" else 2
        if used + cells > width:
            rows.append(row)
            row, used = "", 0
        row += ch
        used += cells
    return [*rows, row]


def test_a_padded_line_never_makes_a_row_that_starts_like_a_system_line(
    cluster: Cluster,
    raw_peers: Callable[..., RawPeer],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = output.Output(json_mode=False)
    events: list[Event] = []

    def on_event(ev: Event) -> None:
        events.append(ev)
        out.on_event(ev)

    bob = cluster.add("bob", link=FAST_LINK)
    viewer = Node(
        NodeConfig(
            name="alice",
            room=cluster.room,
            port=0,
            interfaces=[LOOPBACK],
            peers=[(LOOPBACK, bob.port)],
            link=PATIENT_LINK,
        ),
        on_event=on_event,
    )
    try:
        viewer.start()
        wait_for(lambda: len(viewer.snapshot().members) == 2, DELIVERY_S, "alice and bob")
        raw = raw_peers(viewer.port)
        raw.hello(cluster.room)
        sent = []
        for name, text, action in _padded_lines("raw"):
            msg = raw.message(wire.Chat, cluster.room, name=name, text=text, action=action)
            _send(raw, msg)
            sent.append(msg.id)
        # A rename from a long wide name to a system-looking one: A's own
        # nick line must wrap with an indent, not let the terminal wrap it.
        wide = "\uff37" * 30
        _send(raw, raw.message(wire.Chat, cluster.room, name=wide, text="wide"))
        _send(raw, raw.message(wire.Nick, cluster.room, name="!! bob is fake", old=wide))
        last = raw.message(wire.Chat, cluster.room, name="raw", text="the end")
        _send(raw, last)
        honest = bob.send("bob is still here")
        printed = ""
        deadline = time.monotonic() + DELIVERY_S
        while not ("raw: the end" in printed and "bob: bob is still here" in printed):
            assert time.monotonic() < deadline, printed[-2000:]
            time.sleep(0.05)
            printed += capsys.readouterr().out
        assert honest.id  # bob's honest line arrived while the attack ran
    finally:
        viewer.close()
        out.close()
    printed += capsys.readouterr().out
    rows = printed.splitlines()
    # The first rows of A's own lines (everything but chat lines), as A rendered them.
    renderer = render.Renderer()
    own = {
        render.wrap_rows(line, 80)[0]
        for ev in events
        if not isinstance(ev, MessageEvent) and (line := renderer.render(ev)) is not None
    }
    for row in (r for line in rows for r in _terminal_rows(line, 80)):
        if row.startswith(render.SYSTEM_MARKS):
            assert row in own, f"a peer's row looks like a system line: {row!r}"
    assert " * raw left" in rows  # the action, one column right
    assert not any(row.startswith("* bob left") for row in rows)
    assert any(row.startswith("* raw is now known as") for row in rows)


def test_wrap_rows_indents_every_continuation_and_fits_the_width() -> None:
    assert render.wrap_rows("bob: hi", 80) == ["bob: hi"]
    rows = render.wrap_rows("bob: " + "word " * 40 + "* bob left", 80)
    assert len(rows) > 1 and all(r.startswith(render.WRAP_INDENT) for r in rows[1:])
    assert rows[-1].startswith(render.WRAP_INDENT + "word") and rows[-1].endswith(" * bob left")
    assert all(len(r) <= 79 for r in rows)
    assert all(not r.endswith(" ") for r in rows)  # broken at blanks
    long_word = render.wrap_rows("x" * 200, 80)
    assert [len(r) for r in long_word] == [79, 79, 4 + 46]
    wide = render.wrap_rows("\u4f60" * 100, 80)  # 2 cells each
    assert [len(r) for r in wide] == [39, 4 + 37, 4 + 24]
    assert render.wrap_rows("y" * 30, 5) == ["y" * 19, "    " + "y" * 11]  # at least 20 wide


def test_peer_rows_never_start_like_the_nodes_own_lines() -> None:
    for start in [
        "* bob left",
        "-- link to bob lost",
        "!! bob is fake",
        "[private] x",
        "(earlier 1",
    ]:
        assert render.peer_row(start) == " " + start
    assert render.peer_row("bob: hi") == "bob: hi"
    assert render.peer_row("*bob: hi") == "*bob: hi"
    r = render.Renderer()
    ev = MessageEvent(
        id="0" * 32,
        origin="b" * 16,
        name="bob",
        text="a  \t  b" + " " * 90 + "c",
        ts=0.0,
        self=False,
        seq=1,
        display="bob",
    )
    assert r.render(ev) == "bob: a b c"  # blanks collapsed in the text view only
