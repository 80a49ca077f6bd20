"""File offers on the command line (issue 14, part 1): the offer line, the offer
numbers and ``resolve_offer``, ``/files``, the ``file_offer`` JSON event, and
``/send`` between processes on 127.0.0.1."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Cluster, Recorder, unique_room, wait_for
from test_cli import LOOPBACK, NO_MDNS, _clean_exit, _pair, spawn  # noqa: F401 - the fixture
from test_tui import BOB_ID as TUI_BOB
from test_tui import running

from p2pchat.cli import offers as cli_offers
from p2pchat.cli import output, render
from p2pchat.cli.offers import format_size, resolve_offer
from p2pchat.errors import UsageError
from p2pchat.events import FileOfferEvent, MessageEvent
from p2pchat.files.manifest import DEFAULT_CHUNK_BYTES, Offer, file_id_of
from p2pchat.harness import NodeProcess
from p2pchat.node import Node

B_ID = "b0b0" * 4
ROOT = bytes(range(32))


def offer_of(name: str = "report.pdf", size: int = 2_400_000) -> Offer:
    chunk = 1 << 18
    return Offer(file_id_of(size, chunk, ROOT), name, size, chunk, ROOT)


def event(offer: Offer | None = None, **fields: object) -> FileOfferEvent:
    values: dict[str, object] = {
        "id": "1" * 32,
        "room": "lobby",
        "origin": B_ID,
        "name": "bob",
        "offer": offer or offer_of(),
        "ts": 1_700_000_000.0,
        "self": False,
        "seq": 3,
        "display": "bob",
        "line": 1,
        "hlc": 5,
    }
    values.update(fields)
    return FileOfferEvent(**values)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def fresh_numbers() -> Iterator[None]:
    """Offer numbers are per process: each test starts at 1."""
    cli_offers.TABLE.clear()
    yield
    cli_offers.TABLE.clear()


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (2_400_000, "2.4 MB"),
        (999_960, "1.0 MB"),
        (1_500_000_000, "1.5 GB"),
        (256 << 30, "274.9 GB"),
    ],
)
def test_sizes_are_decimal_with_one_decimal_place(size: int, shown: str) -> None:
    assert format_size(size) == shown


def test_an_offer_is_shown_as_a_line_with_its_number() -> None:
    r = render.Renderer(interactive=True)
    first = event()
    assert r.render(first) == "bob offers report.pdf (2.4 MB) - /get 1"
    other = event(offer_of("notes.txt", 512), id="2" * 32)
    assert r.render(other) == "bob offers notes.txt (512 B) - /get 2"
    assert r.render(first) == "bob offers report.pdf (2.4 MB) - /get 1"  # stable for the run
    private = event(offer_of("plan.odt", 31_000), to_me=True, id="3" * 32)
    assert r.render(private) == "bob offers you plan.odt (31.0 kB) - /get 3"
    mine = event(offer_of("mine.iso", 4_700_000_000), self=True, display="alice", id="4" * 32)
    assert r.render(mine) == "you offer mine.iso (4.7 GB)"
    sealed = event(offer_of("x.bin", 10), self=True, to="c" * 16, to_display="carol")
    assert r.render(sealed) == "you offer x.bin (10 B) to carol"
    earlier = event(history=True)
    line = r.render(earlier)
    assert line is not None and re.fullmatch(
        r"\(earlier \d\d:\d\d( \d\d \w+)?\) bob offers report\.pdf \(2\.4 MB\) - /get 1", line
    )
    history = render.format_history("lobby", [earlier])
    assert history[1].endswith("  bob offers report.pdf (2.4 MB) - /get 1")


def test_a_name_is_cleaned_before_it_reaches_the_terminal() -> None:
    """Admission refuses such names; the views clean them all the same."""
    evil = event(offer_of("a\u202egpj.exe\x1b[2J  b\tc"), name="ev\x07il", display="ev\x07il")
    line = render.Renderer().render(evil)
    assert line == "ev\ufffdil offers a\ufffdgpj.exe\ufffd[2J b c (2.4 MB) - /get 1"
    (row,) = render.format_files([evil])[1:]
    assert "\u202e" not in row and "\x1b" not in row and "\x07" not in row


def test_resolve_offer_takes_a_number_or_a_long_enough_id_prefix() -> None:
    first, second = event(), event(offer_of("b.txt", 5), id="2" * 32)
    r = render.Renderer()
    r.render(first)
    r.render(second)
    assert resolve_offer("1") == first and resolve_offer(" 2 ") == second
    assert resolve_offer("3") is None and resolve_offer("0") is None
    hex_id = second.file_hex
    assert resolve_offer(hex_id) == second
    assert resolve_offer(hex_id[:8].upper()) == second
    assert resolve_offer(hex_id[:7]) is None  # too short to name one
    assert resolve_offer("zz" * 8) is None and resolve_offer("") is None
    again = event(id="5" * 32, origin="c" * 16, name="carol", display="carol")
    assert r.render(again) == "carol offers report.pdf (2.4 MB) - /get 1"  # the same file
    assert resolve_offer("1") == again  # the latest offer of it


def test_files_lists_the_offers_with_number_name_size_who_and_when() -> None:
    assert render.format_files([]) == ["-- no files offered (yet)"]
    rows = render.format_files([event(), event(offer_of("b.txt", 5), self=True, to="c" * 16)])
    assert rows[0] == "-- 2 files offered:"
    assert re.fullmatch(r"--     1  report\.pdf  2\.4 MB  from bob, \d\d:\d\d( \d\d \w+)?", rows[1])
    assert re.fullmatch(r"--     2  b\.txt  5 B  from you, .*\(private\)", rows[2])


def test_the_json_event_carries_the_number(capsys: pytest.CaptureFixture[str]) -> None:
    out = output.Output(json_mode=True)
    try:
        out.on_event(event(offer_of("notes.txt", 512), id="9" * 32))
        out.on_event(event())
    finally:
        out.close()
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    offer = offer_of()
    assert second == {
        "event": "file_offer",
        "file": offer.file_id.hex(),
        "number": 2,
        "from": "bob",
        "origin": B_ID,
        "name": "report.pdf",
        "size": 2_400_000,
        "chunk_size": 1 << 18,
        "root": ROOT.hex(),
        "private": False,
        "self": False,
        "history": False,
        "time": 1_700_000_000.0,
        "to": "",
        "id": "1" * 32,
        "hlc": 5,
        "line": 1,
    }
    assert first["number"] == 1 and first["name"] == "notes.txt"


# -- between processes --------------------------------------------------------------


def test_send_offers_a_file_that_reaches_the_others_as_a_file_offer(
    spawn: Callable[..., NodeProcess],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """bob ``/send PATH``: alice (``--json``) gets a ``file_offer`` event and
    ``/files`` lists it; ``/send alice PATH`` reaches her alone, sealed;
    carol, in text mode and later, sees the room's offer by catch-up."""
    room = unique_room()
    alice, bob, a_id, b_id = _pair(spawn, room)
    report = tmp_path / "report.pdf"
    report.write_bytes(bytes(range(256)) * 9375)  # 2,400,000 bytes
    bob.send_line(f"/send {report}")
    got = alice.wait_event("file_offer", name="report.pdf")
    assert (got["from"], got["origin"], got["size"], got["chunk_size"]) == (
        "bob",
        b_id,
        2_400_000,
        DEFAULT_CHUNK_BYTES,  # bob gave no --chunk-size
    )
    assert (got["number"], got["private"], got["self"], got["history"]) == (1, False, False, False)
    assert re.fullmatch("[0-9a-f]{64}", got["file"]) and got["time"] > 0
    mine = bob.wait_event("file_offer", name="report.pdf")
    assert mine["self"] is True and mine["file"] == got["file"]
    assert not alice.of("message") and not bob.of("message")  # never a chat line too
    alice.send_line("/files")
    files = alice.wait_event("files")
    assert files["transfers"] == []
    (listed,) = files["offers"]
    assert (listed["number"], listed["file"], listed["name"]) == (1, got["file"], "report.pdf")
    assert listed["history"] is True  # from the store
    bob.send_line("/history")
    (kept,) = bob.wait_event("history")["lines"]
    assert (kept["event"], kept["file"], kept["number"], kept["self"]) == (
        "file_offer",
        got["file"],
        1,
        True,
    )
    # One member only.
    secret = tmp_path / "secret plan.txt"
    secret.write_bytes(b"for alice only\n")
    bob.send_line(f"/send alice {secret}")
    private = alice.wait_event("file_offer", name="secret plan.txt")
    assert (private["private"], private["number"], private["size"]) == (True, 2, 15)
    sent = bob.wait_event("file_offer", name="secret plan.txt")
    assert (sent["private"], sent["to"]) == (True, a_id)
    bob.send_line(f"/send {tmp_path / 'nothing here'}")
    assert "no such file" in bob.wait_event("error")["text"]
    # Later, in text mode: the room's offer by catch-up, not the private one.
    port = alice.wait_event("ready")["port"]
    carol = spawn(
        "--name", "carol", "--room", room, *NO_MDNS, "--peer", f"{LOOPBACK}:{port}",
        json_mode=False,
    )  # fmt: skip
    line = carol.wait_line(lambda s: "offers" in s, "the offer line")
    assert re.fullmatch(
        r"\(earlier \d\d:\d\d( \d\d \w+)?\) bob offers report\.pdf \(2\.4 MB\) - /get 1", line
    )
    carol.send_line("/files")
    carol.wait_line(lambda s: s == "-- 1 file offered:", "the /files header")
    row = carol.wait_line(lambda s: s.startswith("--     1  "), "the /files row")
    assert "report.pdf  2.4 MB  from bob" in row
    carol.send_line("/quit")
    _clean_exit(carol)
    assert not any("secret" in s for s in carol.lines)
    for node in (alice, bob):
        node.send_line("/quit")
        _clean_exit(node)


# -- the Node API, nodes in one process -------------------------------------------------


def test_node_send_offer_to_the_room_and_to_one_member(cluster: Cluster) -> None:
    alice = cluster.add("alice")
    bob = cluster.add("bob", peers=[alice])
    carol = cluster.add("carol", peers=[bob])
    cluster.wait_all_know_each_other()
    rec_a, _, rec_c = cluster.recorders

    def offers_seen(rec: Recorder) -> list[FileOfferEvent]:
        return [e for e in rec.events if isinstance(e, FileOfferEvent)]

    room_offer = offer_of("report.pdf")
    mine = bob.send_offer(room_offer)
    assert (mine.self, mine.offer, mine.private, mine.line) == (True, room_offer, False, 1)
    for rec in (rec_a, rec_c):
        wait_for(lambda rec=rec: bool(offers_seen(rec)), 5.0, "the room offer")  # type: ignore[misc]
    for node in (alice, carol):
        found = node.offer(room_offer.file_id.hex().upper())
        assert found is not None and found.origin == bob.node_id and found.history
        assert [e.offer for e in node.offers()] == [room_offer]
        assert [type(e) for e in node.history()] == [FileOfferEvent]
    secret = offer_of("plan.txt", 15)
    wait_for(lambda: _sealable(bob, carol.node_id, secret), 5.0, "carol's key for direct messages")
    wait_for(lambda: len(offers_seen(rec_c)) == 2, 5.0, "the one-member offer")
    got = offers_seen(rec_c)[1]
    assert (got.offer, got.to_me, got.origin) == (secret, True, bob.node_id)
    assert carol.offer(secret.file_id.hex()) == got
    assert [e.offer for e in bob.offers()] == [room_offer, secret]
    assert alice.offer(secret.file_id.hex()) is None  # flooded to her too, sealed: unread
    assert [e.offer for e in offers_seen(rec_a)] == [room_offer]
    assert not any(isinstance(e, MessageEvent) for r in cluster.recorders for e in r.events)
    assert all(not n.stats().frames_refused for n in (alice, bob, carol))


def _sealable(node: Node, to: str, offer: Offer) -> bool:
    """Offer ``offer`` to ``to`` alone once its key is known (True when sent)."""
    try:
        node.send_offer(offer, to=to)
    except UsageError:
        return False
    return True


# -- the full screen -----------------------------------------------------------------


def test_the_full_screen_shows_offers_as_system_lines_with_names_cleaned() -> None:
    with running(cols=80, rows=24) as r:
        r.view.on_event(event(origin=TUI_BOB))
        r.screen.wait_text("-!- bob offers report.pdf (2.4 MB) - /get 1")
        assert "system" in r.screen.style_at("bob offers report.pdf")
        assert r.view.bells == 0
        hostile = offer_of("\u202eevil\x1b[2J\x07.txt", 10)
        r.view.on_event(event(hostile, origin=TUI_BOB, id="2" * 32, to_me=True))
        rows = r.screen.wait_text("bob offers you \ufffdevil\ufffd[2J\ufffd.txt (10 B) - /get 2")
        assert r.view.bells == 1  # offered to us alone: as a private line
        out = r.terminal.getvalue()
        assert "\x1b[2J" not in out and "\u202e" not in out
        assert len(rows) == 24 and rows[-1] == "alice>"
