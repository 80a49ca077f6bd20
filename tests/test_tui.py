"""The full-screen view (issue 13), headless: prompt_toolkit's pipe input for
the keys, a VT100 output of a fixed size, and the renderer's last screen read
back cell by cell (text and style).  A fake node stands in for the network:
no socket, no thread but the view's own.

The real program in tmux is in tests/test_cli.py (``test_fullscreen_in_tmux``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import wait_for
from corenet import CoreNet
from prompt_toolkit.application import create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.input.base import PipeInput
from prompt_toolkit.output import DummyOutput
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.utils import get_cwidth
from test_notify import fake_command, read_calls

from p2pchat import wire
from p2pchat.cli import tui
from p2pchat.cli.args import parse_args
from p2pchat.cli.arrival import Arrival
from p2pchat.cli.chatlog import (
    CHAT,
    MAX_CHAT_LINES,
    SYSTEM,
    ChatLine,
    ChatLog,
    complete,
    mentions,
    sender_style,
    split_long_line,
)
from p2pchat.cli.notify import Notifier, find_backend
from p2pchat.cli.output import Output
from p2pchat.cli.render import Renderer
from p2pchat.cli.screen import (
    INBOX_MAX,
    INPUT_HISTORY_FILE,
    BoundedFileHistory,
    ChatView,
    input_history,
)
from p2pchat.core.protocol import check_topic
from p2pchat.events import (
    AwayEvent,
    JoinEvent,
    KeyInfo,
    LeaveEvent,
    MemberInfo,
    MessageEvent,
    NickEvent,
    PeerDown,
    PeerUp,
    Ready,
    Snapshot,
    Stats,
    TopicEvent,
)

WAIT_S = 5.0
CLOCK = re.compile(r"^\d\d:\d\d ")
ALICE_ID = "a1" * 8
BOB_ID = "b0" * 8
# Two members called alice with different keys, and a third; their ids give
# three different colours (checked below, so a palette change cannot hide it).
ALICE2_ID = "c3" * 8
CAROL_ID = "d4" * 8

ENTER = "\r"
CTRL_C = "\x03"
CTRL_D = "\x04"
TAB = "\t"
PAGE_UP = "\x1b[5~"
PAGE_DOWN = "\x1b[6~"
F2 = "\x1bOQ"


def paste(text: str) -> str:
    """The bytes a terminal sends for a bracketed paste of ``text``."""
    return f"\x1b[200~{text}\x1b[201~"


@dataclass
class FakeNode:
    """The public face of a Node that the view and /commands use, no network."""

    name: str = "alice"
    room: str = "lobby"
    node_id: str = ALICE_ID
    members: list[MemberInfo] = field(default_factory=list)
    past: Sequence[MessageEvent | TopicEvent] = field(default_factory=list)
    current_topic: TopicEvent | None = None
    secret: bytes | None = None
    sent: list[str] = field(default_factory=list)
    view: ChatView | None = None
    rooms: dict[str, int] = field(default_factory=dict)  # other rooms mDNS shows

    def __post_init__(self) -> None:
        self.config = SimpleNamespace(secret=self.secret, history_max_lines=10_000)
        if not self.members:
            self.members = [MemberInfo(self.node_id, self.name, self.name, False, True)]

    def send(self, text: str, action: bool = False) -> MessageEvent:
        self.sent.append(text)
        ev = message(self.node_id, self.name, text, own=True, action=action)
        assert self.view is not None
        self.view.on_event(ev)
        return ev

    def send_direct(self, to: str, text: str, action: bool = False) -> MessageEvent:
        self.sent.append(f"to {to}: {text}")
        node = next((m.node for m in self.members if to in (m.name, m.display)), "")
        ev = message(self.node_id, self.name, text, own=True, private=True, to_display=to, to=node)
        assert self.view is not None
        self.view.on_event(ev)
        return ev

    def snapshot(self) -> Snapshot:
        return Snapshot(members=list(self.members), links=[])

    def rooms_seen(self) -> dict[str, int]:
        return dict(self.rooms)

    def whois(self, name: str) -> list[KeyInfo]:
        self.sent.append(f"whois {name}")
        return []

    def set_name(self, name: str) -> None:
        old, self.name = self.name, name
        self.sent.append(f"nick {name}")
        assert self.view is not None
        self.view.on_event(NickEvent(origin=self.node_id, old=old, new=name, display=name))

    def set_away(self, text: str) -> None:
        self.sent.append(f"away {text}")
        assert self.view is not None
        ev = AwayEvent(origin=self.node_id, name=self.name, text=text, display=self.name, self=True)
        self.view.on_event(ev)

    def set_topic(self, text: str) -> TopicEvent:
        text = check_topic(text)  # the node's own checks
        self.sent.append(f"topic {text}")
        ev = topic_event(self.node_id, self.name, text, own=True)
        self.current_topic = ev
        assert self.view is not None
        self.view.on_event(ev)
        return ev

    def topic(self) -> TopicEvent | None:
        return self.current_topic

    def history(self, n: int = 20) -> list[MessageEvent | TopicEvent]:
        return list(self.past[-n:])

    def stats(self) -> Stats:
        return Stats(0.0, 0, 0, 0, 0, 0, {}, {}, {}, 0, 0, len(self.members), 0)


_counter = iter(range(1, 1_000_000))


def message(
    origin: str,
    name: str,
    text: str,
    own: bool = False,
    display: str = "",
    **kw: Any,
) -> MessageEvent:
    n = next(_counter)
    return MessageEvent(
        id=f"{origin}-{n}",
        origin=origin,
        name=name,
        text=text,
        ts=time.time(),
        self=own,
        seq=n,
        display=display or name,
        hlc=n,
        line=n,
        **kw,
    )


def topic_event(
    origin: str, name: str, text: str, own: bool = False, display: str = "", **kw: Any
) -> TopicEvent:
    n = next(_counter)
    kw.setdefault("hlc", n)
    return TopicEvent(
        id=f"{origin}-{n}",
        room="lobby",
        origin=origin,
        name=name,
        text=text,
        ts=kw.pop("ts", time.time()),
        self=own,
        seq=n,
        display=display or name,
        line=n,
        **kw,
    )


class Screen:
    """What the terminal shows: rows of text, and a cell's style."""

    def __init__(self, view: ChatView) -> None:
        self.view = view

    def _screen(self) -> Any:
        return self.view.app.renderer._last_screen

    def rows(self) -> list[str]:
        scr = self._screen()
        size = self.view.app.output.get_size()
        if scr is None:
            return []
        out = []
        for y in range(size.rows):
            row = scr.data_buffer[y]
            x, chars = 0, []
            while x < size.columns:
                ch = row[x].char
                chars.append(ch)
                x += max(get_cwidth(ch), 1)
            out.append("".join(chars).rstrip())
        return out

    def text(self) -> str:
        return "\n".join(self.rows())

    def style_at(self, needle: str, offset: int = 0) -> str:
        """The style of the first cell of ``needle`` (+ ``offset``) on screen."""
        scr = self._screen()
        for y, row in enumerate(self.rows()):
            x = row.find(needle)
            if x >= 0:
                return str(scr.data_buffer[y][x + offset].style)
        raise AssertionError(f"{needle!r} is not on screen:\n{self.text()}")

    def cursor(self) -> tuple[int, int]:
        scr = self._screen()
        pos = scr.get_cursor_position(self.view.app.layout.current_window)
        return pos.x, pos.y

    def wait(self, pred: Callable[[list[str]], bool], what: str) -> list[str]:
        deadline = time.monotonic() + WAIT_S
        while True:
            rows = self.rows()
            if rows and pred(rows):
                return rows
            if time.monotonic() > deadline:
                pytest.fail(f"the screen never showed {what}:\n" + "\n".join(rows))
            time.sleep(0.01)

    def wait_text(self, needle: str) -> list[str]:
        return self.wait(lambda rows: needle in "\n".join(rows), repr(needle))


@dataclass
class Running:
    view: ChatView
    node: FakeNode
    keys: PipeInput
    screen: Screen
    thread: threading.Thread
    terminal: io.StringIO

    def type(self, text: str) -> None:
        self.keys.send_text(text)

    def line_at(self, row: int) -> str:
        return self.screen.rows()[row]

    def on_loop(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the view's loop thread (as the node's events are)."""
        done = threading.Event()
        loop = self.view._loop
        assert loop is not None

        def call() -> None:
            fn()
            done.set()

        loop.call_soon_threadsafe(call)
        assert done.wait(WAIT_S)


@contextmanager
def running(
    node: FakeNode | None = None, cols: int = 80, rows: int = 24, **kw: Any
) -> Iterator[Running]:
    """The view of ``node`` running on a thread in a ``cols`` x ``rows``
    terminal; it is made to quit and joined at the end."""
    node = node or FakeNode()
    term = io.StringIO()
    with create_pipe_input() as keys:
        out = Vt100_Output(term, lambda: Size(rows=rows, columns=cols), term="xterm-256color")
        kw.setdefault("hint_after_s", 600.0)
        kw.setdefault("arrival", Arrival(time.monotonic(), settled=True))
        view = ChatView(
            node, history=kw.pop("history", InMemoryHistory()), input=keys, output=out, **kw
        )
        node.view = view
        view.show_start_context()
        thread = threading.Thread(target=view.run, name="test-tui-view")
        thread.start()
        run = Running(view, node, keys, Screen(view), thread, term)
        try:
            wait_for(lambda: view.app.is_running and view._loop is not None, WAIT_S, "the app")
            run.screen.wait(lambda r: r[-1].startswith(("alice>", "send ")), "the input line")
            yield run
        finally:
            view.request_exit()
            thread.join(WAIT_S)
            view.close()
            assert not thread.is_alive()


# -- layout ------------------------------------------------------------------------------


@pytest.mark.parametrize(("cols", "rows"), [(80, 24), (40, 10)])
def test_the_input_line_is_the_last_row_and_the_status_line_above_it(cols: int, rows: int) -> None:
    with running(cols=cols, rows=rows) as r:
        r.type("hello")
        screen = r.screen.wait(lambda s: s[-1] == "alice> hello", "the typed text")
        assert len(screen) == rows
        assert r.screen.cursor() == (len("alice> hello"), rows - 1)
        status = screen[-2]
        assert status.startswith(" [lobby]") and "1 member" in status and "0 links" in status
        assert "status" in r.screen.style_at("[lobby]")
        # Every other row is the chat area: a line from bob shows right at the top.
        r.view.on_event(message(BOB_ID, "bob", "hi"))
        screen = r.screen.wait(lambda s: "bob: hi" in s[0], "bob's line")
        assert screen[-1] == "alice> hello"


def test_a_private_room_shows_a_lock_and_the_member_list_toggles_with_f2() -> None:
    members = [
        MemberInfo(ALICE_ID, "alice", "alice#a1a1", False, True),
        MemberInfo(ALICE2_ID, "alice", "alice#c3c3", True, False),
        MemberInfo(BOB_ID, "bob", "bob", True, False),
    ]
    node = FakeNode(members=members, secret=b"s")
    with running(node) as r:
        status = r.screen.wait(lambda s: "3 members" in s[-2], "three members")[-2]
        assert "🔒" in status
        assert "members (3)" not in r.screen.text()
        r.type(F2)
        rows = r.screen.wait_text("members (3)")
        listed = [row.split("│")[1] for row in rows if "│" in row]
        assert listed[:4] == ["members (3)", "alice#a1a1 (you)", "alice#c3c3 *", "bob *"]
        assert rows[-1].startswith("alice>")
        r.type(F2)
        r.screen.wait(lambda s: "members (3)" not in "\n".join(s), "the list hidden again")


def test_away_members_are_marked_in_the_list_and_told_to_whoever_msgs_them() -> None:
    members = [
        MemberInfo(ALICE_ID, "alice", "alice", False, True),
        MemberInfo(BOB_ID, "bob", "bob", True, False),
        MemberInfo(CAROL_ID, "carol", "carol", False, False),
    ]
    node = FakeNode(members=members)
    with running(node) as r:
        r.type(F2)
        rows = r.screen.wait_text("members (3)")
        assert "bob * (away)" not in "\n".join(rows)
        members[1] = MemberInfo(BOB_ID, "bob", "bob", True, False, away="at lunch\x1b[2J")
        r.view.on_event(AwayEvent(origin=BOB_ID, name="bob", text="at lunch", display="bob"))
        rows = r.screen.wait_text("bob * (away)")
        listed = [row.split("│")[1] for row in rows if "│" in row]
        assert listed[:4] == ["members (3)", "alice (you)", "bob * (away)", "carol"]
        r.screen.wait_text("bob is away: at lunch")
        assert "system" in r.screen.style_at("bob is away: at lunch")
        r.type("/msg bob are you there?" + ENTER)
        r.screen.wait_text("[private to bob] alice: are you there?")
        # the away text as bob's presence gave it, cleaned: no escape reaches the terminal
        rows = r.screen.wait_text("bob is away: at lunch\ufffd[2J")
        assert "\x1b[2J" not in r.terminal.getvalue()
        r.type("/msg carol hi" + ENTER)
        r.screen.wait_text("[private to carol] alice: hi")
        assert "carol is away" not in r.screen.text()
        r.type("/away brb" + ENTER)
        r.screen.wait_text("you are away: brb")
        r.type("/away" + ENTER)
        r.screen.wait_text("you are back")
        assert node.sent[-2:] == ["away brb", "away "]


# -- lines: time, colours, styles ---------------------------------------------------------


def test_lines_have_a_time_and_a_colour_per_sender_and_own_and_system_lines_differ() -> None:
    styles = {sender_style(i) for i in (ALICE2_ID, BOB_ID, CAROL_ID)}
    assert len(styles) == 3, "pick ids of three different colours"
    with running(FakeNode(name="alice")) as r:
        r.view.on_event(message(ALICE2_ID, "alice", "first", display="alice#c3c3"))
        r.view.on_event(message(CAROL_ID, "alice", "second", display="alice#d4d4"))
        r.view.on_event(JoinEvent(origin=BOB_ID, name="bob"))
        r.type("mine" + ENTER)
        rows = r.screen.wait_text("alice: mine")
        chat = [row for row in rows[:-2] if row]
        assert all(CLOCK.match(row) for row in chat), chat
        assert any(row[6:] == "alice#c3c3: first" for row in chat)
        assert any(row[6:] == "alice#d4d4: second" for row in chat)
        assert any(row[6:] == "-!- bob joined" for row in chat)
        first = r.screen.style_at("alice#c3c3")
        second = r.screen.style_at("alice#d4d4")
        assert first != second
        assert sender_style(ALICE2_ID) in first and sender_style(CAROL_ID) in second
        own = r.screen.style_at("alice: mine")
        assert "own.name" in own and own not in (first, second)
        assert "own.text" in r.screen.style_at("alice: mine", offset=len("alice: "))
        assert "system.mark" in r.screen.style_at("-!- bob joined")
        assert "class:time" in r.screen.style_at(chat[0][:5])


def test_time_shows_seconds_or_the_date_for_every_line_on_demand() -> None:
    with running() as r:
        r.view.on_event(message(BOB_ID, "bob", "before"))
        r.screen.wait_text("bob: before")
        r.type("/time" + ENTER)  # the next format: seconds, lines shown already too
        rows = r.screen.wait_text("times shown as HH:MM:SS (/time seconds)")
        before = next(row for row in rows if row.endswith("bob: before"))
        assert re.match(r"^\d\d:\d\d:\d\d bob: before$", before), before
        r.type("/time date" + ENTER)
        rows = r.screen.wait_text("(/time date)")
        before = next(row for row in rows if row.endswith("bob: before"))
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d bob: before$", before), before
        assert before.startswith(time.strftime("%Y-"))
        r.view.on_event(message(BOB_ID, "bob", "after"))  # new lines too
        rows = r.screen.wait_text("bob: after")
        assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d ", row) for row in rows[:-2] if row)
        r.type("/time bogus" + ENTER)
        r.screen.wait_text("!! usage: /time [short|seconds|date]")
        r.type("/time" + ENTER)  # after date: back to HH:MM
        rows = r.screen.wait_text("(/time short)")
        assert all(CLOCK.match(row) and row[5] == " " for row in rows[:-2] if row), rows
        assert r.node.sent == []  # a local command: nothing went to the room
        r.type("/help" + ENTER)
        r.screen.wait_text("/time [short|seconds|date]")


def test_a_peer_cannot_fake_a_system_line_or_drive_the_terminal() -> None:
    with running() as r:
        hostile = "-!- bob left \x1b[2J\x07\u202eevil\u202c \x1b]0;title\x07 end"
        r.view.on_event(message(BOB_ID, "-!-", hostile))
        r.view.on_event(message(BOB_ID, "-!-", "waves", action=True))
        rows = r.screen.wait_text("end")
        line = next(row for row in rows if "end" in row)
        assert line[6:].startswith("-!-: -!- bob left \ufffd[2J\ufffd\ufffdevil\ufffd")
        # The name's "-!-" is in the sender's colour, the text plain: no system style.
        assert "system" not in r.screen.style_at("-!-: ")
        assert "system" not in r.screen.style_at("-!- bob left")
        assert "\x1b[2J" not in r.terminal.getvalue()
        assert "\x07" not in r.terminal.getvalue() and r.view.bells == 0
        assert "]0;title" not in r.terminal.getvalue().replace("\ufffd]0;title", "")
        assert rows[-1].startswith("alice>")


def test_a_long_line_wraps_at_blanks_with_a_hanging_indent_and_wide_characters() -> None:
    words = " ".join(f"w{i:02d}" for i in range(40)) + " 你好世界你好世界 end"
    line = ChatLine(time.time(), CHAT, words, who="bob", who_style="ansired bold")
    rows = line.rows(40)
    texts = ["".join(t for _, t in row) for row in rows]
    assert CLOCK.match(texts[0]) and texts[0][6:].startswith("bob: w00 w01")
    column = len("12:34 bob: ")
    for text in texts[1:]:
        assert text[:column] == " " * column and text[column] != " "
    assert all(sum(get_cwidth(c) for c in t) <= 40 for t in texts)
    assert " ".join(t.strip() for t in texts)[6 + 5 :] == words  # no word cut, none lost
    with running(cols=40, rows=10) as r:
        r.view.on_event(message(BOB_ID, "bob", words))
        r.screen.wait_text("end")
        shown = [row for row in r.screen.rows()[:-2] if row]
        assert shown[1:] and all(row.startswith(" " * column) for row in shown[1:])


# -- scrollback ---------------------------------------------------------------------------


def test_page_up_scrolls_back_new_lines_keep_the_view_and_a_marker_counts_them() -> None:
    with running(cols=60, rows=12) as r:
        for i in range(60):
            r.view.on_event(message(BOB_ID, "bob", f"line {i:02d}"))
        r.screen.wait_text("line 59")
        r.type(PAGE_UP)
        rows = r.screen.wait(lambda s: "line 59" not in "\n".join(s), "older lines")
        view_before = rows[:-3]
        assert "scrolled up" in rows[-2]
        r.view.on_event(message(BOB_ID, "bob", "news 1"))
        r.view.on_event(message(BOB_ID, "bob", "news 2"))
        rows = r.screen.wait_text("-- 2 new lines below --")
        assert rows[:-3] == view_before  # the view did not move
        assert "2 unread" in rows[-2]
        assert "unread" in r.screen.style_at("2 new lines below")
        r.type(PAGE_DOWN + PAGE_DOWN)
        rows = r.screen.wait_text("news 2")
        assert "new lines below" not in "\n".join(rows) and "unread" not in rows[-2]
        r.type("/clear" + ENTER)
        r.screen.wait(lambda s: not any(s[:-2]), "an empty chat area")
        assert r.node.sent == []


def test_the_mouse_wheel_scrolls() -> None:
    with running(cols=60, rows=12) as r:
        for i in range(40):
            r.view.on_event(message(BOB_ID, "bob", f"line {i:02d}"))
        r.screen.wait_text("line 39")
        r.type("\x1b[<64;5;3M")  # SGR mouse: wheel up at column 5, row 3
        r.screen.wait(lambda s: "line 39" not in "\n".join(s), "the view scrolled up")
        r.type("\x1b[<65;5;3M" * 2)
        r.screen.wait_text("line 39")


def test_the_chat_area_is_bounded() -> None:
    chat = ChatLog()
    for i in range(MAX_CHAT_LINES + 10):
        chat.add(ChatLine(0.0, SYSTEM, str(i)))
    assert len(chat.lines) == MAX_CHAT_LINES
    assert chat.lines[0].text == "10"


def test_scrolling_up_stops_at_the_first_line() -> None:
    chat = ChatLog()
    for i in range(300):
        chat.add(ChatLine(0.0, SYSTEM, f"line {i}"))
    for _ in range(100):
        chat.scroll(10, 20)
    top = chat.visible(80, 20)
    assert "".join(t for _, t in top[0]).endswith("-!- line 0")
    assert chat.offset == 300 - 20
    chat.scroll(-1000, 20)
    assert chat.offset == 0 and "line 299" in "".join(t for _, t in chat.visible(80, 20)[-1])


def test_a_catch_ups_earlier_lines_are_shown_in_the_rooms_order_when_it_is_over() -> None:
    with running(cols=100, rows=40) as r:
        for n in (3, 1, 2):
            ev = message(BOB_ID, "bob", f"missed {n}", history=True)
            r.view.on_event(dataclasses.replace(ev, hlc=n))
        rows = r.screen.wait_text("missed 3")
        at = next(i for i, row in enumerate(rows) if "3 earlier lines" in row)
        assert [row[6:] for row in rows[at + 1 : at + 4]] == [
            "bob: missed 1",
            "bob: missed 2",
            "bob: missed 3",
        ]
        assert "earlier" in r.screen.style_at("bob: missed 1")
        for n in range(60):
            r.view.on_event(message(CAROL_ID, "carol", f"old {n:02d}", history=True))
        r.view.on_event(message(CAROL_ID, "carol", "live now"))  # its earlier lines first
        r.screen.wait_text("live now")
        texts: list[str] = []
        r.on_loop(lambda: texts.extend(line.text for line in r.view.log.lines))
        header = "60 earlier lines came in; the latest 50 follow (/history 60 shows them all"
        at = texts.index(header + " in their place)")
        assert texts[at + 1 :] == [*(f"old {n:02d}" for n in range(10, 60)), "live now"]


def test_the_queue_to_the_screen_is_bounded_and_its_drops_are_told() -> None:
    node = FakeNode()
    view = ChatView(node, input=None, output=DummyOutput())
    for i in range(INBOX_MAX + 10):
        view.on_event(JoinEvent(origin=f"{i:016x}", name="x"))
    assert len(view._inbox) == INBOX_MAX and view.dropped == 10
    view._pump()
    assert view.log.lines[-1].text == "10 events were not shown: the screen fell behind"


# -- mentions, private lines, bell ----------------------------------------------------------


def test_mentions_and_private_lines_are_highlighted_with_a_bell() -> None:
    assert mentions("hey Alice, look", "alice") and mentions("@alice", "alice")
    assert not mentions("malice aforethought", "alice") and not mentions("alices", "alice")
    with running() as r:
        r.view.on_event(message(BOB_ID, "bob", "nothing for you"))
        r.screen.wait_text("nothing for you")
        assert r.view.bells == 0 and "\a" not in r.terminal.getvalue()
        r.view.on_event(message(BOB_ID, "bob", "alice: lunch?"))
        r.screen.wait_text("lunch?")
        wait_for(lambda: r.view.bells == 1, WAIT_S, "a bell")
        assert "\a" in r.terminal.getvalue()
        assert "mention" in r.screen.style_at("alice: lunch?")
        r.view.on_event(message(BOB_ID, "bob", "psst", private=True, to=ALICE_ID))
        r.screen.wait_text("[private] bob: psst")
        wait_for(lambda: r.view.bells == 2, WAIT_S, "a second bell")
        assert "private" in r.screen.style_at("psst")
        r.type("I am alice" + ENTER)  # our own line naming us: no bell
        r.screen.wait_text("alice: I am alice")
        assert r.view.bells == 2


def test_notify_shows_a_mention_and_a_private_line_on_the_desktop(tmp_path: Path) -> None:
    calls = fake_command(tmp_path)  # a notify-send that records its argv
    backend, _ = find_backend("linux", path=str(tmp_path))
    assert backend is not None
    notifier = Notifier(backend)
    with running(notifier=notifier) as r:
        r.view.on_event(message(BOB_ID, "bob", "nothing for you"))
        r.view.on_event(message(BOB_ID, "bob", "alice: lunch? \x1b]0;title\x07"))
        wait_for(lambda: len(read_calls(calls)) == 1, WAIT_S, "the mention's notification")
        assert read_calls(calls)[0]["argv"][-2:] == [
            "bob (in lobby)",
            "alice: lunch? \ufffd]0;title\ufffd",
        ]
        r.view.on_event(message(BOB_ID, "bob", "psst", private=True, to=ALICE_ID))
        wait_for(lambda: len(read_calls(calls)) == 2, WAIT_S, "the private line's notification")
        assert read_calls(calls)[1]["argv"][-2:] == ["bob (private)", "psst"]
        r.type("I am alice" + ENTER)  # our own line naming us: none
        r.screen.wait_text("alice: I am alice")
        r.type("/stats" + ENTER)
        r.screen.wait_text("desktop notifications: 2 shown, 0 folded into the next")
        assert len(read_calls(calls)) == 2 and r.view.bells == 2
    assert not notifier._thread.is_alive()  # the view closed it


# -- completion and input history ---------------------------------------------------------


def test_complete_offers_names_and_commands_by_place() -> None:
    nicks = ["bob", "Bea", "alice#c3c3"]
    cmds = ["/msg", "/me", "/who", "/whois"]
    assert complete("b", nicks, cmds) == (0, ["Bea: ", "bob: "])
    assert complete("hi bo", nicks, cmds) == (3, ["bob "])
    assert complete("/msg al", nicks, cmds) == (5, ["alice#c3c3 "])
    assert complete("/whois B", nicks, cmds) == (7, ["Bea ", "bob "])
    assert complete("/wh", nicks, cmds) == (0, ["/who ", "/whois "])
    assert complete("/msg bob hi a", nicks, cmds) == (12, ["alice#c3c3 "])
    assert complete("hi ", nicks, cmds) == (3, [])
    spaced = ["bob smith", "bobby"]
    assert complete("/msg bo", spaced, cmds) == (5, ['"bob smith" ', "bobby "])


def test_tab_completes_names_and_commands_in_the_input_line() -> None:
    members = [
        MemberInfo(ALICE_ID, "alice", "alice", False, True),
        MemberInfo(BOB_ID, "bob", "bob", True, False),
        MemberInfo(CAROL_ID, "carol", "carol", False, False),
    ]
    with running(FakeNode(members=members)) as r:
        r.type("b" + TAB)
        r.screen.wait(lambda s: s[-1] == "alice> bob:", "bob: at the line start")
        r.type("see c" + TAB + "now")
        r.screen.wait(lambda s: s[-1] == "alice> bob: see carol now", "carol inside")
        r.type(CTRL_C + "/msg c" + TAB + "hi" + ENTER)
        wait_for(lambda: r.node.sent == ["to carol: hi"], WAIT_S, "the /msg")
        r.type("/who" + TAB + TAB)
        r.screen.wait(lambda s: s[-1] == "alice> /whois", "/whois on the second Tab")
        r.type(CTRL_C + "/whois " + TAB)  # nothing typed yet: nothing offered
        r.screen.wait(lambda s: s[-1] == "alice> /whois", "no change")


def test_input_history_is_kept_across_runs_bounded_and_not_when_ephemeral(
    tmp_path: Path,
) -> None:
    assert isinstance(input_history(None), InMemoryHistory)
    hist = input_history(str(tmp_path))
    assert isinstance(hist, BoundedFileHistory)
    with running(history=hist) as r:
        r.type("first line" + ENTER + "second line" + ENTER)
        wait_for(lambda: len(r.node.sent) == 2, WAIT_S, "two lines sent")
    path = tmp_path / INPUT_HISTORY_FILE
    assert path.stat().st_mode & 0o077 == 0
    with running(history=input_history(str(tmp_path))) as r:
        r.type("\x1b[A")  # Up
        r.screen.wait(lambda s: s[-1] == "alice> second line", "the last run's line")
        r.type("\x1b[A")
        r.screen.wait(lambda s: s[-1] == "alice> first line", "the one before")
    small = BoundedFileHistory(str(tmp_path / "small"), max_entries=3)
    for i in range(10):
        small.store_string(f"entry {i}")
    again = BoundedFileHistory(str(tmp_path / "small"), max_entries=3)
    assert list(again.load_history_strings()) == ["entry 9", "entry 8", "entry 7"]


# -- keys: Ctrl+C, Ctrl+D, paste, long lines ------------------------------------------------


def test_ctrl_c_clears_a_typed_line_and_quits_on_an_empty_one() -> None:
    with running() as r:
        r.type("half a line")
        r.screen.wait(lambda s: s[-1] == "alice> half a line", "the draft")
        r.type(CTRL_C)
        r.screen.wait(lambda s: s[-1] == "alice>", "the line cleared")
        assert r.view.app.is_running and r.node.sent == []
        r.type(CTRL_C)
        r.thread.join(WAIT_S)
        assert not r.thread.is_alive()


def test_ctrl_d_and_quit_leave() -> None:
    with running() as r:
        r.type(CTRL_D)
        r.thread.join(WAIT_S)
        assert not r.thread.is_alive()
    with running() as r:
        r.type("/quit" + ENTER)
        r.thread.join(WAIT_S)
        assert not r.thread.is_alive()


def test_a_multi_line_paste_is_sent_line_by_line_after_a_yes_when_long() -> None:
    with running() as r:
        r.type(paste("one\ntwo\r\n\nthree\n"))
        wait_for(lambda: r.node.sent == ["one", "two", "three"], WAIT_S, "three lines")
        seven = "\n".join(f"p{i}" for i in range(7))
        r.type(paste(seven))
        r.screen.wait(lambda s: s[-1] == "send 7 pasted lines? (y/n)", "the question")
        r.type("n")
        r.screen.wait_text("the 7 pasted lines were not sent")
        assert r.node.sent == ["one", "two", "three"]
        r.type("draft " + paste(seven))
        r.screen.wait(lambda s: s[-1] == "send 7 pasted lines? (y/n)", "the question again")
        r.type("y")
        want = ["one", "two", "three", "draft p0", *(f"p{i}" for i in range(1, 7))]
        wait_for(lambda: r.node.sent == want, WAIT_S, "the seven lines, in order")
        r.screen.wait(lambda s: s[-1] == "alice>", "an empty input line")
        r.type(paste("just one line"))
        r.screen.wait(lambda s: s[-1] == "alice> just one line", "a one-line paste typed")


def test_a_line_over_the_limit_is_split_at_blanks() -> None:
    limit = wire.MAX_TEXT_CHARS
    words = [f"word{i}" for i in range(900)]
    text = " ".join(words)
    parts = split_long_line(text, limit)
    assert len(parts) > 1 and all(len(p) <= limit for p in parts)
    assert " ".join(parts).split() == words
    assert split_long_line("x" * (limit + 5), limit) == ["x" * limit, "xxxxx"]
    assert split_long_line("short", limit) == ["short"]
    with running() as r:
        r.view.submit(text)
        wait_for(lambda: len(r.node.sent) == len(parts), WAIT_S, "the parts sent")
        assert r.node.sent == parts
        r.node.sent.clear()
        body = "/" + "a" * (limit - 3) + " /b c c"  # a '/' line stays a chat line
        r.view.submit("/" + body)
        wait_for(lambda: len(r.node.sent) == 2, WAIT_S, "two parts")
        assert r.node.sent == ["/" + "a" * (limit - 3), "/b c c"]


# -- start ----------------------------------------------------------------------------------


def test_the_start_shows_the_rooms_last_lines_dimmed_under_a_separator() -> None:
    past = [message(BOB_ID, "bob", f"old {i:02d}", history=True) for i in range(25)]
    with running(FakeNode(past=past), cols=80, rows=30) as r:
        rows = r.screen.wait_text("old 24")
        assert "the last 20 lines of lobby" in rows[0] and rows[0].startswith("── ")
        assert "old 04" not in "\n".join(rows) and rows[1][6:] == "bob: old 05"
        assert "earlier" in r.screen.style_at("bob: old 05")
        assert rows[21].startswith("── now")


def test_a_hint_when_nobody_is_found() -> None:
    with running(hint_after_s=0.05) as r:
        r.screen.wait_text("nobody found yet")
        assert "--peer HOST" in r.screen.text()
        assert "Rooms seen" not in r.screen.text()
    # Other rooms on the LAN: named with their node counts, the busiest first; a peer's
    # room name is cleaned like any peer text.
    rooms = {"dev": 2, "games\x1b[2J": 5, "private": 1}
    with running(FakeNode(rooms=rooms), hint_after_s=0.05) as r:
        r.screen.wait_text("Rooms seen")
        text = " ".join(r.screen.text().split())
        assert "Rooms seen on this LAN: games" in text
        assert "dev (2), private (1); join one with --room NAME" in text
        assert "\x1b" not in r.screen.text()
    members = [
        MemberInfo(ALICE_ID, "alice", "alice", False, True),
        MemberInfo(BOB_ID, "bob", "bob", True, False),
    ]
    with running(FakeNode(members=members)) as r:
        r.on_loop(r.view._hint)  # the hint's time has come: with bob there, no hint
        r.view.on_event(message(BOB_ID, "bob", "marker"))
        r.screen.wait_text("marker")
        assert "nobody found" not in r.screen.text()


# -- arrival wording, link chatter, a taken name ------------------------------------------------

DAVE_ID = "e5" * 8


def quick_arrival(alone_s: float = 600.0) -> Arrival:
    """An arrival that ends 0.3 s after the first link (0.2 s after the last newcomer)."""
    return Arrival(time.monotonic(), alone_s=alone_s, settle_s=0.3, quiet_s=0.2, max_s=5.0)


def member(node: str, name: str, display: str = "", linked: bool = False) -> MemberInfo:
    return MemberInfo(node, name, display or name, linked, node == ALICE_ID)


def chat_rows(r: Running) -> list[str]:
    """The chat area's rows without their time."""
    return [row[6:] for row in r.screen.rows()[:-2] if row]


def test_our_arrival_is_one_line_of_who_is_there_and_later_arrivals_join() -> None:
    node = FakeNode(
        members=[member(ALICE_ID, "alice"), member(BOB_ID, "bob", linked=True)],
    )
    with running(node, arrival=quick_arrival(), links=False, cols=120) as r:
        r.view.on_event(Ready(node=ALICE_ID, name="alice", room="lobby", port=7420))
        r.view.on_event(PeerUp(peer=BOB_ID, address="10.88.0.2:7420", name="bob"))
        # bob was there; carol's presence comes, then carol leaves, dave renames: all
        # before our arrival is over, so none is news of its own.
        r.view.on_event(JoinEvent(origin=BOB_ID, name="bob", via="presence", display="bob"))
        r.view.on_event(JoinEvent(origin=CAROL_ID, name="carol", via="join", display="carol"))
        r.view.on_event(JoinEvent(origin=DAVE_ID, name="dave", via="presence", display="dave"))
        r.view.on_event(LeaveEvent(origin=CAROL_ID, name="carol", reason="quit"))
        r.view.on_event(NickEvent(origin=DAVE_ID, old="dave", new="dan", display="dan"))
        node.members.append(member(DAVE_ID, "dan"))
        r.screen.wait_text("-!- in lobby: bob, dan")
        r.view.on_event(JoinEvent(origin=CAROL_ID, name="carol", via="presence", display="carol"))
        r.view.on_event(PeerDown(peer=BOB_ID, address="10.88.0.2:7420", reason="reset"))
        r.view.on_event(message(BOB_ID, "bob", "marker"))
        r.screen.wait_text("bob: marker")
        rows = chat_rows(r)
        assert rows == [
            "-!- you are alice in room lobby, listening on port 7420 (/help for commands)",
            "-!- in lobby: bob, dan",
            "-!- carol joined",
            "bob: marker",
        ], rows


def test_away_members_are_marked_in_our_arrival_line_not_told_one_by_one() -> None:
    bob = MemberInfo(BOB_ID, "bob", "bob", True, False, away="lunch")
    node = FakeNode(members=[member(ALICE_ID, "alice"), bob])
    with running(node, arrival=quick_arrival(), links=False, cols=120) as r:
        r.view.on_event(Ready(node=ALICE_ID, name="alice", room="lobby", port=7420))
        r.view.on_event(PeerUp(peer=BOB_ID, address="10.88.0.2:7420", name="bob"))
        r.view.on_event(JoinEvent(origin=BOB_ID, name="bob", via="presence", display="bob"))
        r.view.on_event(AwayEvent(origin=BOB_ID, name="bob", text="lunch", display="bob"))
        r.screen.wait_text("-!- in lobby: bob (away)")
        r.view.on_event(AwayEvent(origin=BOB_ID, name="bob", text="", display="bob"))
        r.screen.wait_text("-!- bob is back")
        assert "bob is away" not in r.screen.text()


def test_a_node_that_was_alone_sees_the_newcomer_join() -> None:
    with running(arrival=quick_arrival(alone_s=0.1), links=False) as r:
        r.view.on_event(Ready(node=ALICE_ID, name="alice", room="lobby", port=7420))
        wait_for(lambda: r.view.arrival.settled, WAIT_S, "our arrival, alone, to be over")
        r.view.on_event(PeerUp(peer=CAROL_ID, address="10.88.0.3:7420", name="carol"))
        r.view.on_event(JoinEvent(origin=CAROL_ID, name="carol", via="presence", display="carol"))
        r.screen.wait_text("-!- carol joined")
        r.view.on_event(LeaveEvent(origin=CAROL_ID, name="carol", reason="quit"))
        r.screen.wait_text("-!- carol left")
        assert not any("in lobby" in row or "linked" in row for row in chat_rows(r))


def test_link_chatter_shows_only_at_log_level_info() -> None:
    up = PeerUp(peer=BOB_ID, address="10.88.0.2:7420", name="bob")
    down = PeerDown(peer=BOB_ID, address="10.88.0.2:7420", reason="keepalive timeout")
    with running(links=None) as r:  # the default: the log level decides
        r.view.on_event(up)
        r.view.on_event(down)
        r.view.on_event(message(BOB_ID, "bob", "marker"))
        r.screen.wait_text("bob: marker")
        assert chat_rows(r) == ["bob: marker"]
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.INFO)  # as --log-level info does
    try:
        with running(links=None) as r:
            r.view.on_event(up)
            r.view.on_event(down)
            r.screen.wait_text("-!- link to bob lost: keepalive timeout")
            assert chat_rows(r)[0] == "-!- linked to bob (10.88.0.2:7420)"
    finally:
        root.setLevel(old_level)


def test_a_newcomer_whose_name_is_taken_is_told_how_others_see_it() -> None:
    node = FakeNode(
        members=[member(ALICE_ID, "alice", "alice#a1a1"), member(ALICE2_ID, "alice", "alice#c3c3")]
    )
    with running(node, arrival=quick_arrival(), links=False, cols=120) as r:
        r.view.on_event(Ready(node=ALICE_ID, name="alice", room="lobby", port=7420))
        r.view.on_event(PeerUp(peer=ALICE2_ID, address="10.88.0.2:7420", name="alice"))
        r.view.on_event(
            JoinEvent(origin=ALICE2_ID, name="alice", via="presence", display="alice#c3c3")
        )
        r.screen.wait_text("taken here")
        assert chat_rows(r)[1:] == [
            "-!- in lobby: alice#c3c3",
            "-!- the name alice is taken here; others see you as alice#a1a1 "
            "(/nick NEWNAME to change)",
        ]
        # A member who renames itself onto our (new) name later: told too, with its #fp.
        r.view.on_event(NickEvent(origin=ALICE_ID, old="alice", new="bob", display="bob"))
        r.view.on_event(
            NickEvent(
                origin=CAROL_ID, old="carol", new="bob", display="bob#d4d4", old_display="carol"
            )
        )
        r.screen.wait_text("carol is now known as bob#d4d4")
        r.screen.wait_text("bob#d4d4 now has your name or one like it; others see you as bob#a1a1")


def test_with_the_real_core_the_newcomer_hears_who_is_there_and_how_it_is_seen() -> None:
    """Protocol cores in memory (tests/corenet.py), the newcomer's events through an
    Arrival on the virtual clock: its in-lobby line, and its taken name shown with the
    very #fp the others show it under; the old-timers see it join."""
    net = CoreNet(seed=11)
    alice, bob = net.add("alice"), net.add("bob")
    net.connect(alice, bob)
    net.tick_all(30.0)
    newcomer = net.add("bob2")
    net.rename(newcomer, "bob")  # before it links: its display name is bob too
    arrival = Arrival(net.now)
    shown: list[str] = []
    seen = 0

    def feed() -> None:
        nonlocal seen
        for ev in newcomer.events[seen:]:
            if isinstance(ev, PeerUp):
                arrival.note_link(net.now)
            show, after = arrival.feed(ev, net.now)
            assert not show or not isinstance(ev, JoinEvent), ev  # all held: we are arriving
            shown.extend(after)
        seen = len(newcomer.events)
        shown.extend(arrival.poll(net.now))

    feed()
    arrival.feed(Ready(node=newcomer.node_id, name="bob", room="lobby", port=0), net.now)
    net.connect(newcomer, alice)
    while not arrival.settled:
        net.tick_all(0.1)
        feed()
    (join,) = [e for e in alice.of(JoinEvent) if e.origin == newcomer.node_id]
    as_others_see = join.display
    assert as_others_see == f"bob#{newcomer.node_id[:4]}"
    assert Renderer(interactive=True).render(join) == f"* {as_others_see} joined"
    old_bob = f"bob#{bob.node_id[:4]}"
    assert shown == [
        f"-- in lobby: alice, {old_bob}",
        f"-- the name bob is taken here; others see you as {as_others_see} "
        "(/nick NEWNAME to change)",
    ]
    # The bob who was there first is told too, as the others now see it.
    settled = Arrival(net.now, settled=True)
    settled.feed(Ready(node=bob.node_id, name="bob", room="lobby", port=0), net.now)
    told = [line for ev in bob.events for line in settled.feed(ev, net.now)[1]]
    assert told == [
        f"-- {as_others_see} now has your name or one like it; others see you as {old_bob} "
        "while both are here (/nick NEWNAME to change)"
    ]


def test_msg_to_ourselves_is_answered_and_a_name_with_blanks_is_quoted() -> None:
    members = [member(ALICE_ID, "alice"), member(BOB_ID, "bob smith", linked=True)]
    with running(FakeNode(members=members), cols=120) as r:
        r.type("/msg alice hi me" + ENTER)
        r.screen.wait_text("alice is you: a private line goes to another member (/who lists them)")
        r.type("/msg alice#a1a1 hi me" + ENTER)
        r.screen.wait(lambda s: "\n".join(s).count(" is you: ") == 2, "the answer again")
        r.type('/msg "bob smith" hi there' + ENTER)
        wait_for(lambda: r.node.sent == ["to bob smith: hi there"], WAIT_S, "the quoted /msg")
        r.type('/msg "bob smith hi' + ENTER)
        r.screen.wait_text(
            'usage: /msg NAME TEXT (a name with blanks in quotes: /msg "bob smith" hi)'
        )
        r.type('/whois "bob smith"' + ENTER)
        wait_for(lambda: r.node.sent[-1] == "whois bob smith", WAIT_S, "the quoted /whois")
        assert r.node.sent == ["to bob smith: hi there", "whois bob smith"]


def test_nick_refuses_blanks_and_warns_before_taking_a_members_name() -> None:
    members = [member(ALICE_ID, "alice"), member(CAROL_ID, "carol", linked=True)]
    with running(FakeNode(members=members), cols=120) as r:
        r.type("/nick alice smith" + ENTER)
        r.screen.wait_text("cannot change name: name must not contain blanks (try 'alice_smith')")
        r.type("/nick Carol" + ENTER)
        warning = (
            "carol is in the room already: the others would see you as Carol#a1a1. "
            "/nick Carol again to take it anyway"
        )
        r.screen.wait_text(warning)
        r.type("hello" + ENTER + "/nick Carol" + ENTER)  # not the very next line: warned again
        r.screen.wait(lambda s: "\n".join(s).count(warning) == 2, "a second warning")
        assert r.node.sent == ["hello"] and r.node.name == "alice"
        r.type("/nick Carol" + ENTER)  # asked twice in a row: done
        wait_for(lambda: r.node.name == "Carol", WAIT_S, "the new name")
        r.type("/nick carla" + ENTER)  # nobody has it: at once
        wait_for(lambda: r.node.name == "carla", WAIT_S, "the next name")
        assert r.node.sent == ["hello", "nick Carol", "nick carla"]


def test_plain_mode_words_arrivals_alike_and_json_is_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = [
        Ready(node=ALICE_ID, name="alice", room="lobby", port=7420),
        PeerUp(peer=BOB_ID, address="10.88.0.2:7420", name="bob"),
        JoinEvent(origin=BOB_ID, name="bob", via="presence", display="bob"),
        JoinEvent(origin=CAROL_ID, name="carol", via="join", display="carol"),
    ]
    later = JoinEvent(origin=DAVE_ID, name="dave", via="presence", display="dave")
    term = io.StringIO()
    monkeypatch.setattr("sys.stdout", term)
    out = Output(json_mode=False, interactive=True, arrival=quick_arrival(), links=False)
    try:
        for ev in events:
            out.on_event(ev)
        wait_for(lambda: "-- in lobby: bob, carol" in term.getvalue(), WAIT_S, "the in-lobby line")
        out.on_event(later)
        out.drain(WAIT_S)
    finally:
        out.close()
    lines = term.getvalue().splitlines()
    assert lines[1:] == ["-- in lobby: bob, carol", "* dave joined"], lines
    json_term = io.StringIO()
    monkeypatch.setattr("sys.stdout", json_term)
    out = Output(json_mode=True)
    try:
        for ev in [*events, later]:
            out.on_event(ev)
    finally:
        out.close()
    got = [json.loads(line) for line in json_term.getvalue().splitlines()]
    assert got == [ev.as_dict() for ev in [*events, later]]
    assert [g.get("via") for g in got if g["event"] == "join"] == ["presence", "join", "presence"]


# -- the name prompt ------------------------------------------------------------------------


def test_the_last_name_is_kept_and_offered_at_the_name_prompt(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    assert tui.load_last_name(data) == "" and tui.load_last_name(None) == ""
    tui.save_last_name(None, "alice")  # --ephemeral: nothing kept
    assert not (tmp_path / "data").exists()
    tui.save_last_name(data, "alice")
    path = tmp_path / "data" / tui.LAST_NAME_FILE
    assert path.stat().st_mode & 0o077 == 0
    assert tui.load_last_name(data) == "alice"
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        keys.send_text(ENTER)  # Enter takes the name offered
        assert tui.ask_name(tui.load_last_name(data)) == "alice"
        keys.send_text("\x7f" * 5 + "bob" + ENTER)  # or erase it and type another
        assert tui.ask_name("alice") == "bob"
        keys.send_text("\x7f" * 5 + "bob smith" + ENTER + "\x7f" * 9 + "bob" + ENTER)
        assert tui.ask_name("alice") == "bob"  # a name with blanks: asked again
    path.write_text("not a name#1\n", encoding="utf-8")
    assert tui.load_last_name(data) == ""


# -- which view ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "term", "want"),
    [
        ([], "xterm-256color", "full"),
        (["--plain"], "xterm-256color", "plain"),
        ([], "dumb", "plain"),
    ],
)
def test_plain_and_term_dumb_keep_the_line_mode(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], term: str, want: str
) -> None:
    monkeypatch.setenv("TERM", term)
    chosen: list[str] = []

    def pick(which: str) -> Callable[[object], int]:
        def run(opts: object) -> int:
            chosen.append(which)
            return 0

        return run

    monkeypatch.setattr(tui, "run_plain", pick("plain"))
    monkeypatch.setattr(tui, "run_fullscreen", pick("full"))
    opts = parse_args(["--name", "x", "--ephemeral", *argv])
    assert tui.run_interactive(opts) == 0
    assert chosen == [want]


@pytest.mark.parametrize("has_command", [False, True])
def test_notify_says_once_when_the_desktop_has_none_and_stops_with_the_screen(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, has_command: bool
) -> None:
    if has_command:
        fake_command(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    shown: list[str] = []
    threads: list[str] = []

    def run(self: ChatView) -> None:  # the screen, as far as this test looks
        shown.extend(line.text for line in self.log.lines)
        threads.extend(t.name for t in threading.enumerate())

    monkeypatch.setattr(ChatView, "run", run)
    argv = ["--name", "alice", "--ephemeral", "--no-mdns", "--interface", "127.0.0.1"]
    opts = parse_args([*argv, "--port", "0", "--notify"])
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        assert tui.run_fullscreen(opts) == 0
    told = [text for text in shown if "--notify" in text]
    if has_command:
        assert told == [] and "p2pchat-cli-notify" in threads
    else:
        assert told == [
            "--notify: no desktop notifications here: notify-send is not on PATH "
            "(Debian and Ubuntu: the libnotify-bin package)"
        ]
        assert "p2pchat-cli-notify" not in threads
    assert not any(t.name == "p2pchat-cli-notify" for t in threading.enumerate())


# -- the room's topic (/topic) ----------------------------------------------------------


@pytest.mark.parametrize(("cols", "rows"), [(80, 24), (40, 10)])
def test_the_status_line_shows_the_topic_cut_to_the_width_left(cols: int, rows: int) -> None:
    with running(cols=cols, rows=rows) as r:
        before = r.screen.wait(lambda s: "0 links" in s[-2], "the status line")[-2]
        r.view.on_event(topic_event(BOB_ID, "bob", "release on friday " + "x" * 100))
        screen = r.screen.wait(lambda s: "topic:" in s[-2], "the topic in the status line")
        status = screen[-2]
        if cols == 80:
            assert status.startswith(before + " · topic: release on")
        else:  # members and links written short to make room
            assert status.startswith(" [lobby] · 1m 0l · topic: release on")
        assert status.endswith("…") and get_cwidth(status) <= cols
        assert screen[-1] == "alice>" and len(screen) == rows
        assert r.screen.cursor() == (len("alice> "), rows - 1)
        assert "status" in r.screen.style_at("· topic: release")
        line = next(row for row in screen if "set the topic" in row)
        assert line[6:].startswith("-!- bob set the topic: release on")
        assert "system" in r.screen.style_at("bob set the topic")
        # Cleared: gone from the status line, and said so.
        r.view.on_event(topic_event(BOB_ID, "bob", ""))
        screen = r.screen.wait(lambda s: "topic:" not in s[-2], "the topic gone")
        assert screen[-2] == before
        assert any(row[6:] == "-!- bob cleared the topic" for row in screen)


def test_a_hostile_topic_changes_nothing_else_on_screen() -> None:
    with running(cols=80, rows=24) as r:
        r.view.on_event(message(BOB_ID, "bob", "before"))
        screen = r.screen.wait_text("bob: before")
        before = screen[-2]
        hostile = "\x1b[2J\x07\u202eevil\u202c\r\n-!- carol left \x1b]0;t\x07" + "宽" * 400
        r.view.on_event(topic_event(BOB_ID, "bob", hostile))
        screen = r.screen.wait(lambda s: "topic:" in s[-2], "the topic in the status line")
        assert len(screen) == 24 and screen[-1] == "alice>"
        assert r.screen.cursor() == (len("alice> "), 23)
        status = screen[-2]
        assert status.startswith(before + " · topic: \ufffd[2J\ufffd\ufffdevil\ufffd")
        assert get_cwidth(status) <= 80 and status.endswith("…")
        assert "bob: before" in "\n".join(screen[:-2])
        line = next(row for row in screen if "set the topic" in row)
        assert line[6:].startswith("-!- bob set the topic: \ufffd[2J")
        # the peer's "-!- carol left" stays inside the topic's own line
        assert not any(
            row.startswith("-!- carol") or row[6:].startswith("-!- carol") for row in screen
        )
        out = r.terminal.getvalue()
        assert "\x1b[2J" not in out and "\x07" not in out and r.view.bells == 0
        assert "\u202e" not in out


def test_topic_command_sets_shows_and_clears_the_topic() -> None:
    with running() as r:
        r.type("/topic" + ENTER)
        r.screen.wait_text("-!- no topic")
        r.type("/topic   release on friday  " + ENTER)
        r.screen.wait(lambda s: "topic: release on friday" in s[-2], "the status line")
        r.screen.wait_text("you set the topic: release on friday")
        r.type("/topic" + ENTER)
        r.screen.wait_text("-!- topic: release on friday (set by you, ")
        r.type("/topic -" + ENTER)
        r.screen.wait_text("you cleared the topic")
        r.screen.wait(lambda s: "topic:" not in s[-2], "the topic gone")
        assert r.node.sent == ["topic release on friday", "topic "]  # stripped
        r.type("/topic " + "x" * 301 + ENTER)
        r.screen.wait_text("the topic is 301 characters; the limit is 300")


def test_an_older_topic_from_a_catch_up_leaves_the_current_one() -> None:
    with running() as r:
        r.view.on_event(topic_event(BOB_ID, "bob", "current", hlc=10_000))
        r.screen.wait(lambda s: "topic: current" in s[-2], "the topic")
        old = topic_event(CAROL_ID, "carol", "stale", hlc=5_000, history=True, ts=time.time() - 60)
        r.view.on_event(old)
        rows = r.screen.wait_text("carol set the topic: stale")  # when the catch-up is over
        assert "topic: current" in rows[-2]
        assert "system" in r.screen.style_at("carol set the topic: stale")


def test_the_start_shows_old_topics_as_system_lines_and_the_current_topic() -> None:
    when = time.time() - 120
    current = topic_event(BOB_ID, "bob", "release on friday", ts=when, history=True)
    past: list[MessageEvent | TopicEvent] = [
        message(BOB_ID, "bob", "old line", history=True),
        current,
        message(CAROL_ID, "carol", "later line", history=True),
    ]
    with running(FakeNode(past=past, current_topic=current)) as r:
        rows = r.screen.wait_text("later line")
        topic_row = next(row for row in rows if "set the topic" in row)
        assert topic_row[:5] == time.strftime("%H:%M", time.localtime(when))
        assert topic_row[6:] == "-!- bob set the topic: release on friday"
        assert "system" in r.screen.style_at("bob set the topic")
        assert not any("bob: release" in row for row in rows)
        now_at = next(i for i, row in enumerate(rows) if row.startswith("── now"))
        hhmm = time.strftime("%H:%M", time.localtime(when))
        assert rows[now_at + 1][6:] == f"-!- topic: release on friday (set by bob, {hhmm})"
        assert "topic: release on friday" in rows[-2]


def test_plain_mode_shows_topic_lines_as_system_lines() -> None:
    renderer = Renderer(interactive=True)
    ev = topic_event(BOB_ID, "bob", "release \x1b[2J  on\tfriday")
    assert renderer.render(ev) == "-- bob set the topic: release \ufffd[2J on friday"
    assert renderer.render(topic_event(BOB_ID, "bob", "")) == "-- bob cleared the topic"
    assert renderer.render(topic_event(BOB_ID, "bob", " \t ")) == "-- bob cleared the topic"
    mine = topic_event(ALICE_ID, "alice", "mine", own=True)
    assert renderer.render(mine) == "-- you set the topic: mine"
    old = topic_event(BOB_ID, "bob", "old", history=True, ts=time.time())
    assert renderer.render(old) == f"-- (earlier {time.strftime('%H:%M')}) bob set the topic: old"


def test_text_and_json_output_of_topic_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain and scripted text views hold a catch-up's topic line with its earlier
    lines, in the room's order; ``--json`` gives the topic event as it is."""
    old = topic_event(BOB_ID, "bob", "old topic", history=True, hlc=5, ts=time.time())
    older = dataclasses.replace(message(CAROL_ID, "carol", "older line", history=True), hlc=1)
    live = topic_event(BOB_ID, "bob", "new topic", hlc=10)
    term = io.StringIO()
    monkeypatch.setattr("sys.stdout", term)
    out = Output(json_mode=False, interactive=True)
    try:
        for ev in (old, older, live):
            out.on_event(ev)
        wait_for(lambda: "new topic" in term.getvalue(), WAIT_S, "the live topic line")
    finally:
        out.close()
    hhmm = time.strftime("%H:%M")
    assert term.getvalue().splitlines()[-3:] == [
        f"(earlier {hhmm}) carol: older line",
        f"-- (earlier {hhmm}) bob set the topic: old topic",
        "-- bob set the topic: new topic",
    ]
    json_term = io.StringIO()
    monkeypatch.setattr("sys.stdout", json_term)
    out = Output(json_mode=True)
    try:
        out.on_event(live)
    finally:
        out.close()
    (got,) = [json.loads(line) for line in json_term.getvalue().splitlines()]
    assert got == live.as_dict() and got["event"] == "topic" and got["room"] == "lobby"


# -- file transfers (/get) -------------------------------------------------------------


def test_a_download_shows_a_progress_bar_in_the_status_line_then_a_got_line() -> None:
    """``/get``: the status line shows the download (name, bar, percent,
    speed, time left) while it comes; at the end it is gone from there and
    ``got NAME (SIZE): PATH`` is a system line."""
    from p2pchat.events import FileDoneEvent, FileProgressEvent

    fid = "ab" * 32
    with running(cols=80, rows=24) as r:
        before = r.screen.wait(lambda s: "0 links" in s[-2], "the status line")[-2]
        r.view.on_event(
            FileProgressEvent(
                file=fid, name="report.pdf", done=1_000_000, size=2_400_000,
                speed=5_200_000, holders=3, eta=0.3,
            )
        )  # fmt: skip
        screen = r.screen.wait(lambda s: "report.pdf" in s[-2], "the progress")
        assert screen[-2] == before + " · report.pdf [####------] 41% 5.2 MB/s 0s left"
        assert "status" in r.screen.style_at("report.pdf [")
        r.view.on_event(
            FileDoneEvent(
                file=fid, name="report.pdf", path="/tmp/dl/report.pdf", size=2_400_000,
                sha256="cd" * 32,
            )
        )  # fmt: skip
        screen = r.screen.wait(lambda s: "report.pdf" not in s[-2], "the progress gone")
        assert screen[-2] == before
        line = next(row for row in screen if "got report.pdf" in row)
        assert line[6:].startswith("-!- got report.pdf (2.4 MB): /tmp/dl/report.pdf")
