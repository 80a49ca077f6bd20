"""The full-screen terminal view of ``p2pchat`` (a prompt_toolkit ``Application``).

The chat area on top (:class:`~p2pchat.cli.chatlog.ChatLog`), a member list
on the right (F2), one status line, and the input line on the last row.

Threads: the node calls :meth:`ChatView.on_event` on its own threads; the
event is queued and handled on the event loop's thread, which alone touches
the chat log and the screen.  Typed lines go, in order, to one sender thread
(``p2pchat-cli-send``), so that a command or a rate-limited line never
freezes the screen; its replies come back through the same queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO, cast

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import (
    ConditionalContainer,
    FormattedTextControl,
    HSplit,
    Layout,
    VSplit,
    Window,
)
from prompt_toolkit.layout.controls import BufferControl, UIContent, UIControl
from prompt_toolkit.layout.processors import BeforeInput
from prompt_toolkit.mouse_events import MouseEvent, MouseEventType
from prompt_toolkit.output import Output as PtOutput
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth

from p2pchat import wire
from p2pchat.cli.arrival import Arrival
from p2pchat.cli.chatlog import (
    CHAT,
    CLOCK_FORMATS,
    EARLIER,
    ERROR,
    OWN,
    SEPARATOR,
    SYSTEM,
    ChatLine,
    ChatLog,
    complete,
    fit_cells,
    mentions,
    sender_style,
    split_long_line,
    tidy,
)
from p2pchat.cli.commands import COMMANDS, CommandState, handle_line
from p2pchat.cli.notify import NOTIFY_INTERVAL_S, Notifier
from p2pchat.cli.offers import TABLE as OFFERS
from p2pchat.cli.offers import format_size
from p2pchat.cli.render import (
    Renderer,
    clean,
    format_current_topic,
    format_eta,
    format_offer,
    format_topic,
    progress_bar,
)
from p2pchat.events import (
    AwayEvent,
    Event,
    FileDoneEvent,
    FileFailedEvent,
    FileOfferEvent,
    FileProgressEvent,
    JoinEvent,
    LeaveEvent,
    LineEvent,
    MemberInfo,
    MessageEvent,
    NickEvent,
    Notice,
    PeerDown,
    PeerUp,
    Ready,
    TopicEvent,
)

log = logging.getLogger(__name__)

START_CONTEXT_LINES = 20
"""Stored lines of the room shown, dimmed, when the view starts."""
PASTE_CONFIRM_OVER = 5
"""A paste of more lines than this is sent only after a yes."""
HINT_AFTER_S = 5.0
"""With nobody found after this long, a hint says how to find peers."""
INPUT_HISTORY_MAX = 1_000
"""Typed lines kept in the data directory's input history (documented in docs/reliability.md)."""
INPUT_HISTORY_FILE = "input_history"
EARLIER_SHOWN = 50
"""Of one catch-up, the latest this many earlier lines are shown."""
EARLIER_QUIET_S = 1.0
"""A catch-up is over after this long without an earlier line."""
INBOX_MAX = 100_000
"""Events queued for the screen at most; beyond, events are dropped (a frozen screen)."""
MEMBERS_WIDTH = 22
"""Columns of the member list (F2)."""
STATUS_FILE_NAME_CELLS = 16
"""Cells of a download's name the status line shows at most."""

STATUS_TOPIC_LABEL = " · topic: "
STATUS_TOPIC_MIN = 12
"""Cells of topic text the status line shows at least (members and links are
written short, ``3m 2l``, to make room for them); with fewer, no topic."""

LOCAL_COMMANDS = ("/clear", "/time")
LOCAL_HELP = (
    "  /clear       empty the chat area",
    "  /time [short|seconds|date]  times as HH:MM, HH:MM:SS or YYYY-MM-DD HH:MM",
    "               (no word: the next of the three)",
    "keys: PageUp/PageDown or the mouse wheel scroll, F2 shows the members, Tab completes",
    "  names and commands, Up/Down recall typed lines, Ctrl+C clears the line (quits when",
    "  empty), Ctrl+D quits",
)

STYLE = Style.from_dict(
    {
        "time": "#8a8a8a",
        "text": "",
        "system": "ansicyan",
        "system.mark": "ansicyan bold",
        "error": "ansired",
        "error.mark": "ansired bold",
        "own.name": "bold underline",
        "own.text": "#a8a8a8",
        "earlier": "#767676",
        "separator": "#767676",
        "mention": "bold bg:ansiyellow ansiblack",
        "private": "ansimagenta",
        "private.mark": "ansimagenta bold",
        "unread": "reverse bold",
        "status": "reverse",
        "status.lock": "reverse bold",
        "status.unread": "reverse bold",
        "status.topic": "reverse",
        "status.files": "reverse bold",
        "prompt": "bold",
        "confirm": "bold ansiyellow",
        "members.head": "bold underline",
        "members.you": "bold",
        "border": "#585858",
    }
)


class BoundedFileHistory(FileHistory):
    """prompt_toolkit's ``FileHistory`` kept to the newest ``max_entries``
    lines: trimmed when opened and whenever a run has added as many again.
    The file is created readable by its owner only (it holds what was typed).

    Args:
        path: the history file.
        max_entries: lines kept.
    """

    def __init__(self, path: str, max_entries: int = INPUT_HISTORY_MAX) -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        super().__init__(path)
        self.path = path
        self.max_entries = max_entries
        self._added = 0
        self._trim()

    def store_string(self, string: str) -> None:
        """Append a line to the file (trimming it now and then)."""
        super().store_string(string)
        self._added += 1
        if self._added >= self.max_entries:
            self._added = 0
            self._trim()

    def _trim(self) -> None:
        try:
            newest_first = list(self.load_history_strings())
        except OSError:
            return
        if len(newest_first) <= self.max_entries:
            return
        keep = reversed(newest_first[: self.max_entries])
        tmp = f"{self.path}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            # newline="\n": no "\r\n" on Windows (FileHistory reads bytes, splits at "\n")
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                for entry in keep:
                    f.write("\n# trimmed\n")
                    for line in entry.split("\n"):
                        f.write(f"+{line}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.info("could not trim the input history: %s", exc)


def input_history(data_dir: str | None) -> History:
    """The input line's history: kept in ``data_dir`` across runs, in
    memory only without one (``--ephemeral``)."""
    if data_dir is None:
        return InMemoryHistory()
    return BoundedFileHistory(os.path.join(data_dir, INPUT_HISTORY_FILE))


class _Replies:
    """The ``out`` of :func:`~p2pchat.cli.commands.handle_line` in the full
    screen: reply lines become system lines (any thread)."""

    json_mode = False

    def __init__(self, post: Callable[[object], None]) -> None:
        self._post = post

    def text(self, *lines: str) -> None:
        """Show reply lines: ``-- x`` as a system line, ``!! x`` as an error."""
        self._post([_reply_line(line) for line in lines])

    def error(self, text: str) -> None:
        """Show a problem with what was typed."""
        self._post([ChatLine(time.time(), ERROR, text)])

    def obj(self, kind: str, **fields: Any) -> None:
        """JSON replies: never asked for in the full screen."""


def _reply_line(line: str) -> ChatLine:
    if line.startswith("!! "):
        return ChatLine(time.time(), ERROR, line[3:])
    if line.startswith(("-- ", "* ")):
        return ChatLine(time.time(), SYSTEM, line.split(" ", 1)[1])
    return ChatLine(time.time(), SYSTEM, line)


def _cells(frags: StyleAndTextTuples) -> int:
    """Terminal cells the fragments' text takes."""
    return sum(max(get_cwidth(ch), 0) for f in frags for ch in f[1])


class _StderrToView:
    """``sys.stderr`` while the screen is up: each whole line written (a
    warning logged by the node, say) becomes an error line in the chat area
    instead of being written over the screen.  Any thread."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, post: Callable[[object], None]) -> None:
        self._post = post
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        """Queue the whole lines of ``text``; keep a partial one for later."""
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
        shown = [ChatLine(time.time(), ERROR, tidy(line)) for line in lines if line.strip()]
        if shown:
            self._post(shown)
        return len(text)

    def flush(self) -> None:
        """Nothing to flush: lines are queued as they come."""

    def isatty(self) -> bool:
        """Not a terminal (so nothing writes escape sequences here)."""
        return False


class _ChatControl(UIControl):
    """The chat area: the log's visible rows; the mouse wheel scrolls it."""

    def __init__(self, view: ChatView) -> None:
        self.view = view
        self.height = 20

    def create_content(self, width: int, height: int) -> UIContent:
        """The rows for a ``width`` x ``height`` area (loop thread)."""
        self.height = height
        rows = self.view.log.visible(width, height)
        return UIContent(
            get_line=lambda i: cast(StyleAndTextTuples, rows[i] if i < len(rows) else []),
            line_count=len(rows),
            show_cursor=False,
        )

    def mouse_handler(self, mouse_event: MouseEvent) -> Any:
        """Wheel up and down scroll three rows."""
        if mouse_event.event_type == MouseEventType.SCROLL_UP:
            self.view.scroll(3)
            return None
        if mouse_event.event_type == MouseEventType.SCROLL_DOWN:
            self.view.scroll(-3)
            return None
        return NotImplemented

    def is_focusable(self) -> bool:
        """The input line keeps the focus."""
        return False


class ChatView:
    """The full-screen view of one node.

    Build it, then :meth:`run` (blocks until the user quits), then
    :meth:`close`.  Any thread may call :meth:`on_event` and :meth:`request_exit`.

    Args:
        node: the node (a :class:`~p2pchat.node.Node` or a stand-in with
            its public methods): ``name``, ``room``, ``node_id``, ``config``,
            ``send``, ``send_direct``, ``snapshot``, ``history`` and the
            others ``/commands`` use.
        history: the input line's history (:func:`input_history`).
        input: prompt_toolkit input (None: the terminal).
        output: prompt_toolkit output (None: the terminal).
        hint_after_s: when to say that nobody was found, in seconds.
        arrival: how membership news is worded (None: a new
            :class:`~p2pchat.cli.arrival.Arrival` from now).
        links: show links coming up and going down as chat-area lines
            (None: only with ``--log-level info`` or more verbose).
        notifier: desktop notifications of mentions and private lines
            (``--notify``), or None; :meth:`close` closes it.
    """

    def __init__(
        self,
        node: Any,
        history: History | None = None,
        input: Input | None = None,
        output: PtOutput | None = None,
        hint_after_s: float = HINT_AFTER_S,
        arrival: Arrival | None = None,
        links: bool | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.node = node
        self.notifier = notifier
        self.log = ChatLog()
        if links is None:
            links = logging.getLogger().isEnabledFor(logging.INFO)
        self.renderer = Renderer(interactive=True, links=links)
        self.arrival = arrival or Arrival(time.monotonic())
        self._arrival_timer: asyncio.TimerHandle | None = None
        self.members: list[MemberInfo] = []
        self.topic: TopicEvent | None = None  # the room's current topic line
        self.progress: dict[str, FileProgressEvent] = {}  # downloads under way, by file id
        self.links = 0
        self.show_members = False
        self.confirm: list[str] | None = None  # pasted lines waiting for y/n
        self.hint_after_s = hint_after_s
        self.bells = 0
        self.dropped = 0  # events not shown: the queue to the screen was full
        self._dropped_told = 0
        self._inbox: deque[object] = deque()
        self._inbox_lock = threading.Lock()
        self._pump_due = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._earlier: list[tuple[tuple[int, str, int], ChatLine]] = []
        self._earlier_count = 0
        self._earlier_timer: asyncio.TimerHandle | None = None
        # The last Tab's result: text, cursor, index of the candidate, candidates.
        self._tab: tuple[str, int, int, list[str]] | None = None
        self._tab_base = ""  # the input left of the word being completed
        self._tab_after = ""  # and right of the cursor
        self._outgoing: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._closing = False
        self.replies = _Replies(self._post)
        self.commands = CommandState()  # the sender thread's
        self.buffer = Buffer(
            multiline=False,
            history=history or InMemoryHistory(),
            accept_handler=self._accept,
        )
        self.chat = _ChatControl(self)
        self.app: Application[None] = Application(
            layout=Layout(self._container(), focused_element=self.buffer),
            key_bindings=self._bindings(),
            style=STYLE,
            full_screen=True,
            mouse_support=True,
            input=input,
            output=output,
        )

    # -- layout ----------------------------------------------------------------------

    def _container(self) -> HSplit:
        members = ConditionalContainer(
            VSplit(
                [
                    Window(width=1, char="│", style="class:border"),
                    Window(
                        FormattedTextControl(self._member_fragments),
                        width=MEMBERS_WIDTH,
                        wrap_lines=False,
                    ),
                ]
            ),
            filter=Condition(lambda: self.show_members),
        )
        prompt = BeforeInput(self._prompt)
        return HSplit(
            [
                VSplit([Window(self.chat, wrap_lines=False), members]),
                Window(
                    FormattedTextControl(self._status_fragments),
                    height=1,
                    style="class:status",
                    wrap_lines=False,
                ),
                Window(
                    BufferControl(self.buffer, input_processors=[prompt]),
                    height=1,
                    wrap_lines=False,
                ),
            ]
        )

    def _prompt(self) -> StyleAndTextTuples:
        if self.confirm is not None:
            return [("class:confirm", f"send {len(self.confirm)} pasted lines? (y/n) ")]
        return [("class:prompt", f"{clean(self.node.name)}> ")]

    def _status_fragments(self) -> StyleAndTextTuples:
        topic = self.topic
        text = tidy(topic.text).strip() if topic is not None else ""
        frags = self._status_counts(compact=False)
        if not text:
            return frags
        # The topic comes last, cut to the cells left, after its label: it
        # never moves the rest, and nothing in it can pass for a counter.
        # Where the counters leave it too little room, they are written short.
        columns = self.app.output.get_size().columns
        left = columns - _cells(frags) - len(STATUS_TOPIC_LABEL)
        if left < STATUS_TOPIC_MIN:
            frags = self._status_counts(compact=True)
            left = columns - _cells(frags) - len(STATUS_TOPIC_LABEL)
        if left >= STATUS_TOPIC_MIN:
            frags.append(("class:status.topic", STATUS_TOPIC_LABEL + fit_cells(text, left)))
        return frags

    def _status_counts(self, compact: bool) -> StyleAndTextTuples:
        """The status line but the topic: the room, the lock, members and
        links (``3 members · 2 links``, or ``3m 2l`` when ``compact``), unread."""
        frags: StyleAndTextTuples = [("", f" [{clean(self.node.room)}]")]
        if getattr(self.node.config, "secret", None):
            frags.append(("class:status.lock", " 🔒private"))
        n = len(self.members)
        if compact:
            frags.append(("", f" · {n}m {self.links}l"))
        else:
            frags.append(("", f" · {n} member{'s' if n != 1 else ''}"))
            frags.append(("", f" · {self.links} link{'s' if self.links != 1 else ''}"))
        frags.extend(self._progress_fragments(compact))
        if self.log.offset and self.log.unread:
            frags.append(("class:status.unread", f" · {self.log.unread} unread"))
        elif self.log.offset:
            frags.append(("", " · scrolled up"))
        return frags

    def _progress_fragments(self, compact: bool) -> StyleAndTextTuples:
        """Downloads under way: one as ``report.pdf [####------] 41% 5.2 MB/s
        1s left`` (the name cut to 16 cells; ``41% 1s`` when ``compact``),
        several as ``3 files 41%`` (bytes done of all)."""
        if not self.progress:
            return []
        if len(self.progress) > 1:
            done = sum(p.done for p in self.progress.values())
            size = sum(p.size for p in self.progress.values()) or 1
            return [("class:status.files", f" · {len(self.progress)} files {done * 100 // size}%")]
        (p,) = self.progress.values()
        pct = 100 if p.size <= 0 else p.done * 100 // p.size
        if compact:
            return [("class:status.files", f" · ⇣{pct}% {format_eta(p.eta)}")]
        name = fit_cells(tidy(p.name).strip(), STATUS_FILE_NAME_CELLS)
        return [
            (
                "class:status.files",
                f" · {name} {progress_bar(p.done, p.size)} {pct}% "
                f"{format_size(p.speed)}/s {format_eta(p.eta)} left",
            )
        ]

    def _member_fragments(self) -> StyleAndTextTuples:
        rows = sorted(self.members, key=lambda m: (not m.self, m.display.casefold(), m.node))
        frags: StyleAndTextTuples = [("class:members.head", f"members ({len(rows)})"), ("", "\n")]
        for m in rows:
            label = clean(m.display or m.name)
            if m.self:
                frags.append(("class:members.you", f"{label} (you)"))
            else:
                frags.append((sender_style(m.node), label))
                if m.linked:
                    frags.append(("", " *"))
            if m.away:
                frags.append(("class:time", " (away)"))
            frags.append(("", "\n"))
        if any(m.linked and not m.self for m in rows):
            frags.append(("class:time", "* linked directly"))
        return frags

    # -- keys ------------------------------------------------------------------------

    def _bindings(self) -> KeyBindings:
        kb = KeyBindings()
        confirming = Condition(lambda: self.confirm is not None)

        @kb.add("pageup")
        def _page_up(event: KeyPressEvent) -> None:
            self.scroll(max(1, self.chat.height - 1))

        @kb.add("pagedown")
        def _page_down(event: KeyPressEvent) -> None:
            self.scroll(-max(1, self.chat.height - 1))

        @kb.add("f2")
        def _members(event: KeyPressEvent) -> None:
            self.show_members = not self.show_members
            self._refresh_members()

        @kb.add("c-c")
        def _ctrl_c(event: KeyPressEvent) -> None:
            if self.confirm is not None:
                self._answer(False)
            elif self.buffer.text:
                self.buffer.reset()
            else:
                event.app.exit()

        @kb.add("c-d")
        def _ctrl_d(event: KeyPressEvent) -> None:
            if self.confirm is not None:
                self._answer(False)
            elif self.buffer.text:
                self.buffer.delete()
            else:
                event.app.exit()

        @kb.add("tab")
        def _tab(event: KeyPressEvent) -> None:
            self.complete()

        @kb.add(Keys.BracketedPaste)
        def _paste(event: KeyPressEvent) -> None:
            self.paste(event.data)

        @kb.add("y", filter=confirming, eager=True)
        @kb.add("Y", filter=confirming, eager=True)
        def _yes(event: KeyPressEvent) -> None:
            self._answer(True)

        @kb.add(Keys.Any, filter=confirming, eager=True)
        @kb.add("enter", filter=confirming, eager=True)
        @kb.add("escape", filter=confirming, eager=True)
        def _no(event: KeyPressEvent) -> None:
            self._answer(False)

        return kb

    def scroll(self, rows: int) -> None:
        """Scroll the chat area up (``rows`` > 0) or down.  Loop thread."""
        self.log.scroll(rows, self.chat.height)
        self.app.invalidate()

    def complete(self) -> None:
        """Tab: replace the word left of the cursor by the next completion
        (:func:`~p2pchat.cli.chatlog.complete`); Tab again cycles.  Loop thread."""
        doc = self.buffer.document
        tab = self._tab
        if tab is not None and tab[0] == doc.text and tab[1] == doc.cursor_position:
            _, _, index, names = tab
            index = (index + 1) % len(names)
            before = self._tab_base + names[index]
        else:
            nicks = [clean(m.display or m.name) for m in self.members if not m.self]
            start, names = complete(doc.text_before_cursor, nicks, (*COMMANDS, *LOCAL_COMMANDS))
            if not names:
                self._tab = None
                return
            index = 0
            self._tab_base = doc.text_before_cursor[:start]
            self._tab_after = doc.text_after_cursor
            before = self._tab_base + names[0]
        text = before + self._tab_after
        self.buffer.document = Document(text, len(before))
        self._tab = (text, len(before), index, names)

    def paste(self, data: str) -> None:
        """A bracketed paste: one line goes into the input line; several are
        sent as separate lines, in order (after a yes when more than
        :data:`PASTE_CONFIRM_OVER`).  Loop thread."""
        data = data.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
        if "\n" not in data.strip("\n"):
            self.buffer.insert_text(data.strip("\n"))
            return
        doc = self.buffer.document
        full = doc.text_before_cursor + data + doc.text_after_cursor
        lines = [line for line in full.split("\n") if line.strip()]
        self.buffer.reset()
        if len(lines) > PASTE_CONFIRM_OVER:
            self.confirm = lines
        else:
            for line in lines:
                self.submit(line)
        self.app.invalidate()

    def _answer(self, yes: bool) -> None:
        lines, self.confirm = self.confirm or [], None
        if yes:
            for line in lines:
                self.submit(line)
        else:
            self.add(ChatLine(time.time(), SYSTEM, f"the {len(lines)} pasted lines were not sent"))
        self.app.invalidate()

    # -- input -----------------------------------------------------------------------

    def _accept(self, buffer: Buffer) -> bool:
        self._tab = None
        self.submit(buffer.text)
        return False  # clear the input line

    def submit(self, text: str) -> None:
        """Act on one typed line: ``/clear`` here, anything else in order on
        the sender thread; a chat line longer than ``wire.MAX_TEXT_CHARS`` is
        sent as several lines cut at blanks.  Loop thread."""
        if not text.strip():
            return
        if text.startswith("/") and not text.startswith("//"):
            if text.split()[0].lower() == "/clear":
                self.log.clear()
                self.app.invalidate()
                return
            if text.split()[0].lower() == "/time":
                self.set_clock(text.split()[1:])
                return
            self._outgoing.put(text)
            return
        body = text[1:] if text.startswith("//") else text
        for chunk in split_long_line(body, wire.MAX_TEXT_CHARS):
            self._outgoing.put("/" + chunk if chunk.startswith("/") else chunk)

    def set_clock(self, args: list[str]) -> None:
        """``/time [short|seconds|date]``: how every line's time is shown,
        lines already shown too (no word: the next of :data:`CLOCK_FORMATS`
        in turn).  Loop thread."""
        names = list(CLOCK_FORMATS)
        if not args:
            name = names[(names.index(self.log.clock) + 1) % len(names)]
        elif len(args) == 1 and args[0].lower() in CLOCK_FORMATS:
            name = args[0].lower()
        else:
            self.add(ChatLine(time.time(), ERROR, "usage: /time [short|seconds|date]"))
            self.app.invalidate()
            return
        self.log.set_clock(name)
        shown = CLOCK_FORMATS[name].replace("%H", "HH").replace("%M", "MM").replace("%S", "SS")
        shown = shown.replace("%Y", "YYYY").replace("%m", "MM").replace("%d", "DD")
        self.add(ChatLine(time.time(), SYSTEM, f"times shown as {shown} (/time {name})"))
        self.app.invalidate()

    def _send_loop(self) -> None:
        """The sender thread: typed lines, in order, to the node."""
        while True:
            line = self._outgoing.get()
            if line is None:
                return
            if self._closing:
                continue
            try:
                if not handle_line(self.node, self.replies, line, self.commands):
                    self.request_exit()
                elif line.split()[0].lower() == "/help":
                    self._post([ChatLine(time.time(), SYSTEM, t) for t in LOCAL_HELP])
                elif line.split()[0].lower() == "/stats" and self.notifier is not None:
                    n = self.notifier
                    told = (
                        f"desktop notifications: {n.shown} shown, {n.folded} folded into the "
                        f"next (at most 1 per {NOTIFY_INTERVAL_S:g} s), {n.failed} failed"
                    )
                    self._post([ChatLine(time.time(), SYSTEM, told)])
            except Exception:
                log.exception("could not act on a typed line")

    # -- events (any thread) -----------------------------------------------------------

    def on_event(self, ev: Event) -> None:
        """The node's ``on_event``: queue the event for the loop thread.  Any thread."""
        self._post(ev)

    def _post(self, item: object) -> None:
        with self._inbox_lock:
            if len(self._inbox) >= INBOX_MAX:
                self.dropped += 1
                return
            self._inbox.append(item)
            if self._pump_due or self._loop is None:
                return
            self._pump_due = True
            loop = self._loop
        with contextlib.suppress(RuntimeError):  # the loop just closed
            loop.call_soon_threadsafe(self._pump)

    def request_exit(self) -> None:
        """Make :meth:`run` return (``/quit``, a signal).  Any thread."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._exit)

    def _exit(self) -> None:
        if self.app.is_running and self.app.future is not None and not self.app.future.done():
            self.app.exit()

    # -- the loop thread -------------------------------------------------------------------

    def _pump(self) -> None:
        with self._inbox_lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._pump_due = False
        bell = False
        for item in items:
            try:
                if isinstance(item, Event):
                    bell |= self._on_event_here(item)
                elif isinstance(item, list):
                    for line in item:
                        self.add(line)
            except Exception:
                log.exception("could not show %r", item)
        if self.dropped > self._dropped_told:
            n, self._dropped_told = self.dropped - self._dropped_told, self.dropped
            told = f"{n} events were not shown: the screen fell behind"
            self.add(ChatLine(time.time(), ERROR, told))
        if bell:
            self.bells += 1
            self.app.output.bell()
        self.app.invalidate()

    def add(self, line: ChatLine) -> None:
        """Append a line to the chat area.  Loop thread."""
        self.log.add(line)

    def _on_event_here(self, ev: Event) -> bool:
        """Show one event; True if it deserves a bell."""
        if isinstance(ev, MessageEvent):
            if ev.history:
                self._hold_earlier(ev)
                return False
            if any(key[1] == ev.origin for key, _ in self._earlier):
                self._flush_earlier()
            line = self._message_line(ev)
            self.add(line)
            bell = not ev.self and (line.mention or ev.private)
            if bell and self.notifier is not None:
                where = "private" if ev.private else f"in {self.node.room}"
                body = f"* {line.who} {ev.text}" if ev.action else ev.text
                self.notifier.notify(f"{line.who} ({where})", body)
            return bell
        if isinstance(ev, TopicEvent):
            self._on_topic(ev)
            return False
        if isinstance(ev, FileProgressEvent):
            self.progress[ev.file] = ev  # the status line shows it
            return False
        if isinstance(ev, (FileDoneEvent, FileFailedEvent)):
            self.progress.pop(ev.file, None)
        if isinstance(ev, FileOfferEvent):
            if ev.history:
                self._hold_earlier(ev)
                return False
            if any(key[1] == ev.origin for key, _ in self._earlier):
                self._flush_earlier()
            self.add(self._offer_line(ev))
            return ev.to_me  # a file offered to us alone: as a private line
        if isinstance(ev, (JoinEvent, LeaveEvent, NickEvent, AwayEvent, PeerUp, PeerDown, Ready)):
            self._refresh_members()
        if isinstance(ev, PeerDown) and self._closing:
            return False
        now = time.monotonic()
        if isinstance(ev, PeerUp):
            self.arrival.note_link(now)
        show, after = self.arrival.feed(ev, now)
        self._schedule_arrival()
        text = self.renderer.render(ev) if show else None
        if text is not None:
            error = isinstance(ev, Notice) and ev.level in ("warning", "error")
            self._add_text(text, ERROR if error else SYSTEM)
        for text_after in after:
            self._add_text(text_after, SYSTEM)
        return False

    def _add_text(self, text: str, kind: str) -> None:
        """Add a rendered line (``-- x``, ``* x``, ``!! x``) as a system or
        error line, without its mark (the chat area draws its own)."""
        for mark in ("* ", "-- ", "!! "):
            if text.startswith(mark):
                text = text[len(mark) :]
                break
        self.add(ChatLine(time.time(), kind, text))

    def _schedule_arrival(self) -> None:
        """Wake :meth:`_arrival_poll` when our arrival may end.  Loop thread."""
        due = self.arrival.due()
        if self._arrival_timer is not None:
            self._arrival_timer.cancel()
            self._arrival_timer = None
        if due is not None and self._loop is not None:
            delay = max(0.0, due - time.monotonic())
            self._arrival_timer = self._loop.call_later(delay, self._arrival_poll)

    def _arrival_poll(self) -> None:
        """Our arrival may be over: show who is in the room, as one line."""
        self._arrival_timer = None
        try:
            members: list[MemberInfo] | None = list(self.node.snapshot().members)
        except Exception:
            log.debug("no snapshot", exc_info=True)
            members = None
        for text in self.arrival.poll(time.monotonic(), members):
            self._add_text(text, SYSTEM)
        self._schedule_arrival()
        self.app.invalidate()

    def _on_topic(self, ev: TopicEvent) -> None:
        """A topic line: the status line's topic if it sorts after the one
        shown (a catch-up may bring older ones), and a system line (held
        with a catch-up's earlier lines when it is one)."""
        if self.topic is None or ev.order() > self.topic.order():
            self.topic = ev
        if ev.history:
            self._hold_earlier(ev)
            return
        if any(key[1] == ev.origin for key, _ in self._earlier):
            self._flush_earlier()
        self.add(self._topic_line(ev))

    def _topic_line(self, ev: TopicEvent, earlier: bool = False) -> ChatLine:
        """``bob set the topic: ...`` as a system line (at its own time if earlier)."""
        who = tidy(ev.display or ev.name)
        return ChatLine(ev.ts if earlier else time.time(), SYSTEM, format_topic(ev, who))

    def _offer_line(self, ev: FileOfferEvent, earlier: bool = False) -> ChatLine:
        """``bob offers report.pdf (2.4 MB) - /get 3`` as a system line (the
        name cleaned; numbered in the process's one table)."""
        who = tidy(ev.display or ev.name)
        text = format_offer(ev, who, OFFERS.number(ev))
        return ChatLine(ev.ts if earlier else time.time(), SYSTEM, text)

    def _line_of(self, ev: LineEvent, earlier: bool = False) -> ChatLine:
        """The chat-area line of a history line of any kind."""
        if isinstance(ev, TopicEvent):
            return self._topic_line(ev, earlier)
        if isinstance(ev, FileOfferEvent):
            return self._offer_line(ev, earlier)
        return self._message_line(ev, earlier)

    def _message_line(self, ev: MessageEvent, earlier: bool = False) -> ChatLine:
        kind = EARLIER if earlier else OWN if ev.self else CHAT
        return ChatLine(
            ts=ev.ts if earlier else time.time(),
            kind=kind,
            text=tidy(ev.text),
            who=tidy(ev.display or ev.name),
            who_style=sender_style(ev.origin),
            action=ev.action,
            private=ev.private,
            to=tidy(ev.to_display),
            mention=not earlier and not ev.self and mentions(ev.text, self.node.name),
        )

    def _hold_earlier(self, ev: LineEvent) -> None:
        """Hold a catch-up's earlier line until the catch-up is quiet for
        :data:`EARLIER_QUIET_S`; then the latest :data:`EARLIER_SHOWN` are
        shown in the room's order."""
        line = self._line_of(ev, earlier=True)
        heapq.heappush(self._earlier, ((ev.hlc, ev.origin, ev.line), line))
        if len(self._earlier) > EARLIER_SHOWN:
            heapq.heappop(self._earlier)
        self._earlier_count += 1
        if self._earlier_timer is not None:
            self._earlier_timer.cancel()
        if self._loop is not None:
            self._earlier_timer = self._loop.call_later(EARLIER_QUIET_S, self._flush_earlier)

    def _flush_earlier(self) -> None:
        if self._earlier_timer is not None:
            self._earlier_timer.cancel()
            self._earlier_timer = None
        held = [line for _, line in sorted(self._earlier, key=lambda kv: kv[0])]
        count = self._earlier_count
        self._earlier, self._earlier_count = [], 0
        if not held:
            return
        if count > len(held):
            self.add(
                ChatLine(
                    time.time(),
                    SYSTEM,
                    f"{count} earlier lines came in; the latest {len(held)} follow "
                    f"(/history {count} shows them all in their place)",
                )
            )
        else:
            n = len(held)
            self.add(ChatLine(time.time(), SEPARATOR, f"{n} earlier line{'s' if n != 1 else ''}"))
        for line in held:
            self.add(line)
        self.app.invalidate()

    def _refresh_members(self) -> None:
        try:
            snap = self.node.snapshot()
        except Exception:
            log.debug("no snapshot", exc_info=True)
            return
        self.members = list(snap.members)
        self.links = len(snap.links)

    def show_start_context(self) -> None:
        """The room's last :data:`START_CONTEXT_LINES` stored lines, dimmed,
        under a separator (topic lines as system lines), then the room's
        current topic (before the node starts)."""
        try:
            lines = self.node.history(START_CONTEXT_LINES)
            self.topic = self.node.topic()
        except Exception:
            log.debug("no history", exc_info=True)
            return
        if lines:
            n = len(lines)
            room = clean(self.node.room)
            head = f"the last {n} line{'s' if n != 1 else ''} of {room}"
            self.add(ChatLine(time.time(), SEPARATOR, head))
            for ev in lines:
                self.add(self._line_of(ev, earlier=True))
            self.add(ChatLine(time.time(), SEPARATOR, "now"))
        if self.topic is not None and self.topic.text.strip():
            self._add_text(format_current_topic(self.topic), SYSTEM)

    def _hint(self) -> None:
        self._refresh_members()
        if self.links == 0 and not any(not m.self for m in self.members):
            rooms = sorted(self.node.rooms_seen().items(), key=lambda kv: (-kv[1], kv[0]))
            seen = ""
            if rooms:
                listed = ", ".join(f"{clean(room)} ({n})" for room, n in rooms[:6])
                more = f" and {len(rooms) - 6} more" if len(rooms) > 6 else ""
                seen = f" Rooms seen on this LAN: {listed}{more}; join one with --room NAME."
            self.add(
                ChatLine(
                    time.time(),
                    SYSTEM,
                    f"nobody found yet in {clean(self.node.room)}.{seen} On another network, or "
                    "where multicast does not get through, start with --peer HOST (a peer's "
                    "address)",
                )
            )
            self.app.invalidate()

    def _pre_run(self) -> None:
        loop = asyncio.get_running_loop()
        with self._inbox_lock:
            self._loop = loop
        self._refresh_members()
        self._pump()
        self._schedule_arrival()
        loop.call_later(self.hint_after_s, self._hint)

    # -- running ---------------------------------------------------------------------------

    def run(self) -> None:
        """Show the screen until the user quits (Ctrl+D, Ctrl+C on an empty
        line, ``/quit``) or :meth:`request_exit`.  Main thread (or a test's).

        Meanwhile ``sys.stderr`` is the chat area: diagnostics (``--log-level``
        without ``--log-file``) show there as error lines.

        Raises:
            EOFError: a signal made the screen end (see
                :class:`~p2pchat.cli.session.Stopper`).
        """
        self._sender = threading.Thread(target=self._send_loop, name="p2pchat-cli-send")
        self._sender.daemon = True
        self._sender.start()
        old_stderr = sys.stderr
        sys.stderr = cast(TextIO, _StderrToView(self._post))
        try:
            self.app.run(pre_run=self._pre_run, handle_sigint=False)
        finally:
            sys.stderr = old_stderr
            with self._inbox_lock:
                self._loop = None

    def close(self) -> None:
        """Stop the sender thread (typed lines not yet sent are dropped) and
        the notifier.  After :meth:`run`; idempotent."""
        self._closing = True
        self._outgoing.put(None)
        if self._sender is not None:
            self._sender.join()
            self._sender = None
        if self.notifier is not None:
            self.notifier.close()
