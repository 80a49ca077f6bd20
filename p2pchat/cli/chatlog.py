"""The full-screen view's chat area as data (no terminal, no event loop).

:class:`ChatLog` holds the lines shown, bounded to :data:`MAX_CHAT_LINES`,
and cuts them into screen rows of styled fragments for a given width: the
``HH:MM`` time, the sender in its colour, the text word-wrapped with a
hanging indent under the text column.  Every width is what the terminal
shows (prompt_toolkit's ``get_cwidth``: wide characters take two cells,
zero-width ones none).  A peer's name and text are cleaned of control and
bidi characters (:func:`p2pchat.cli.render.clean`) and kept as plain
fragments: nothing in them is ever read as style or markup.

Also here, pure too: a sender's colour (:func:`sender_style`), the split of
an over-long line (:func:`split_long_line`), mentions (:func:`mentions`) and
Tab completion (:func:`complete`).

Used by :mod:`p2pchat.cli.screen` on the event loop's thread only; nothing
here is thread-safe.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prompt_toolkit.utils import get_cwidth

from p2pchat.cli.render import clean

MAX_CHAT_LINES = 5_000
"""Lines the chat area keeps (the oldest go first); documented in docs/reliability.md."""

Fragment = tuple[str, str]
"""``(style, text)``: prompt_toolkit's styled text, one piece."""

Row = list[Fragment]
"""One screen row of fragments, at most the width it was cut for."""

SENDER_COLOURS = (
    "ansired",
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansibrightred",
    "ansibrightgreen",
    "ansibrightyellow",
    "ansibrightblue",
    "ansibrightmagenta",
    "#d78700",
    "#87afff",
    "#af87ff",
    "#5fd787",
    "#ff87af",
    "#d7d75f",
)
"""The colours of peers' names; none is the system lines' cyan or the own lines' style."""

_BLANKS_RE = re.compile(r"\s{2,}")
_WORD_CHARS_RE = re.compile(r"\w", re.UNICODE)

# Kinds of line: what the style of the whole line is.
CHAT = "chat"
OWN = "own"
SYSTEM = "system"
ERROR = "error"
EARLIER = "earlier"
SEPARATOR = "separator"

CLOCK_FORMATS = {
    "short": "%H:%M",
    "seconds": "%H:%M:%S",
    "date": "%Y-%m-%d %H:%M",
}
"""How ``/time`` shows every line's time: ``HH:MM`` (the default),
``HH:MM:SS``, or ``YYYY-MM-DD HH:MM`` (names in the order ``/time`` cycles)."""
DEFAULT_CLOCK = "short"


def sender_style(node_id: str) -> str:
    """The colour of a sender's name: one of :data:`SENDER_COLOURS`, picked by
    a hash of its node id (stable across runs and nodes; two members with one
    name but two keys usually differ, and their ``#fp`` always does).

    Args:
        node_id: the sender's node id (hex).

    Returns:
        A prompt_toolkit style string, e.g. ``"ansigreen bold"``.
    """
    digest = hashlib.sha256(node_id.encode("utf-8")).digest()
    return SENDER_COLOURS[digest[0] % len(SENDER_COLOURS)] + " bold"


def tidy(text: str) -> str:
    """A peer's text as shown: control and bidi characters cleaned, runs of
    blanks shown as one space."""
    return _BLANKS_RE.sub(" ", clean(text))


def mentions(text: str, name: str) -> bool:
    """True if ``text`` names ``name`` as a word (case-insensitive): ``hi bob``,
    ``bob: look``, ``@bob``; not ``bobby``.

    Args:
        text: a chat line's text.
        name: our display name.
    """
    if not name:
        return False
    low, key = text.casefold(), name.casefold()
    start = low.find(key)
    while start >= 0:
        end = start + len(key)
        before = low[start - 1] if start > 0 else " "
        after = low[end] if end < len(low) else " "
        if not _WORD_CHARS_RE.match(before) and not _WORD_CHARS_RE.match(after):
            return True
        start = low.find(key, start + 1)
    return False


def split_long_line(text: str, limit: int) -> list[str]:
    """Cut a line of more than ``limit`` code points into lines of at most
    ``limit``, at the last blank that fits (mid-word only when a word is
    longer than ``limit``).  Blanks at a cut are dropped.

    Args:
        text: the line.
        limit: the most code points per line (the wire's ``MAX_TEXT_CHARS``), at least 1.

    Returns:
        The lines, in order; ``[text]`` when it fits.
    """
    out: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind(" ", 0, limit + 1)
        if cut <= 0:
            out.append(rest[:limit])
            rest = rest[limit:]
        else:
            out.append(rest[:cut].rstrip(" "))
            rest = rest[cut + 1 :]
        rest = rest.lstrip(" ")
    if rest or not out:
        out.append(rest)
    return [line for line in out if line]


@dataclass
class ChatLine:
    """One line of the chat area.

    Attributes:
        ts: its time (seconds since the epoch; shown as local ``HH:MM``).
        kind: :data:`CHAT`, :data:`OWN`, :data:`SYSTEM`, :data:`ERROR`,
            :data:`EARLIER` or :data:`SEPARATOR`.
        text: the text after the name (already cleaned).
        who: the sender as shown (cleaned), "" for system lines.
        who_style: the sender's colour (:func:`sender_style`).
        action: a ``/me`` line: ``* who text``.
        private: a direct message (``/msg``); ``to`` names the recipient of
            our own ones.
        mention: it names us: highlighted.
    """

    ts: float
    kind: str
    text: str
    who: str = ""
    who_style: str = ""
    action: bool = False
    private: bool = False
    to: str = ""
    mention: bool = False
    _cache: tuple[int, str, list[Row]] | None = field(default=None, repr=False, compare=False)

    def head(self, clock_format: str = CLOCK_FORMATS[DEFAULT_CLOCK]) -> tuple[list[Fragment], str]:
        """The fragments before the text and the text's style.

        Args:
            clock_format: a ``time.strftime`` format for the time (one of
                :data:`CLOCK_FORMATS`' values).
        """
        clock = time.strftime(clock_format, time.localtime(self.ts))
        frags: list[Fragment] = [("class:time", clock + " ")]
        if self.kind == SEPARATOR:
            return [], "class:separator"
        if self.kind in (SYSTEM, ERROR):
            mark = "!!" if self.kind == ERROR else "-!-"
            frags.append((f"class:{self.kind}.mark", mark + " "))
            return frags, f"class:{self.kind}"
        text_style = "class:text"
        if self.kind == EARLIER:
            frags = [("class:earlier", clock + " ")]
            text_style = "class:earlier"
        if self.private:
            label = f"[private to {self.to}] " if self.kind == OWN and self.to else "[private] "
            frags.append(("class:private.mark", label))
            text_style = "class:private"
        if self.mention:
            text_style = "class:mention"
        name_style = self.who_style
        if self.kind == OWN:
            name_style = "class:own.name"
            if not self.private and not self.mention:
                text_style = "class:own.text"
        if self.kind == EARLIER:
            name_style = "class:earlier"
        if self.action:
            frags += [(text_style, "* "), (name_style, self.who), (text_style, " ")]
        else:
            frags += [(name_style, self.who), ("class:text", ": ")]
        return frags, text_style

    def rows(self, width: int, clock_format: str = CLOCK_FORMATS[DEFAULT_CLOCK]) -> list[Row]:
        """The line cut into rows of at most ``width`` cells (cached per
        width and clock format).

        Rows after the first are indented to the text column (a hanging
        indent), or by the time's width when the text column is past half
        the width.  Breaks at the last blank that fits, mid-word only for a
        word wider than the row.

        Args:
            width: the chat area's width in cells (at least 10 is used).
            clock_format: how the time is shown (:meth:`head`).

        Returns:
            The rows.
        """
        width = max(width, 10)
        if self._cache is not None and self._cache[:2] == (width, clock_format):
            return self._cache[2]
        head, style = self.head(clock_format)
        if self.kind == SEPARATOR:
            rule = f"── {self.text} "
            pad = max(0, width - _cwidth(rule))
            rows: list[Row] = [[(style, _fit(rule + "─" * pad, width))]]
            self._cache = (width, clock_format, rows)
            return rows
        head_w = sum(_cwidth(t) for _, t in head)
        indent = head_w if head_w <= width // 2 else 6
        if head_w >= width:  # a long name in a narrow view: the head gets a row of its own
            head_rows = _wrap([(s, ch) for s, t in head for ch in t], width, width)
            rows = [[*r] for r in head_rows]
            body = _wrap([(style, ch) for ch in self.text], width - indent, width - indent)
            rows += [[("", " " * indent), *r] for r in body if r]
        else:
            body = _wrap([(style, ch) for ch in self.text], width - head_w, width - indent)
            rows = [[*head, *body[0]]]
            rows += [[("", " " * indent), *r] for r in body[1:]]
        self._cache = (width, clock_format, rows)
        return rows


def _cwidth(text: str) -> int:
    return sum(max(get_cwidth(ch), 0) for ch in text)


def fit_cells(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` terminal cells (as the terminal
    shows them: wide characters take two), ending in ``…`` when cut.

    Args:
        text: already cleaned text (no control characters).
        width: the cells available, at least 1.
    """
    if _cwidth(text) <= width:
        return text
    return _fit(text, max(width - 1, 0)) + "…"


def _fit(text: str, width: int) -> str:
    out, used = [], 0
    for ch in text:
        w = max(get_cwidth(ch), 0)
        if used + w > width:
            break
        out.append(ch)
        used += w
    return "".join(out)


def _merge(chars: Sequence[tuple[str, str]]) -> Row:
    """Per-character fragments back into runs of one style."""
    row: Row = []
    for style, ch in chars:
        if row and row[-1][0] == style:
            row[-1] = (style, row[-1][1] + ch)
        else:
            row.append((style, ch))
    return row


def _wrap(chars: list[tuple[str, str]], first: int, rest: int) -> list[Row]:
    """Word-wrap styled characters: the first row ``first`` cells wide, the
    others ``rest``.  Always at least one (maybe empty) row."""
    rows: list[Row] = []
    i, room = 0, max(first, 1)
    n = len(chars)
    while i < n:
        used, j, blank = 0, i, -1
        while j < n:
            w = max(get_cwidth(chars[j][1]), 0)
            if used + w > room:
                break
            if chars[j][1] == " ":
                blank = j
            used += w
            j += 1
        if j >= n:
            rows.append(_merge(chars[i:]))
            break
        if blank > i:
            rows.append(_merge(chars[i:blank]))
            j = blank + 1
        elif j == i:  # a character wider than the row
            j = i + 1
            rows.append(_merge(chars[i:j]))
        else:
            rows.append(_merge(chars[i:j]))
        while j < n and chars[j][1] == " ":
            j += 1
        i = j
        room = max(rest, 1)
    return rows or [[]]


class ChatLog:
    """The chat area's lines and where it is scrolled to.

    ``offset`` counts rows scrolled up from the bottom (0: following the
    newest line).  While scrolled up, new lines do not move the view and
    :attr:`unread` counts them.  :attr:`clock` names how every line's time
    is shown (a key of :data:`CLOCK_FORMATS`; :meth:`set_clock`).

    Args:
        max_lines: lines kept (the oldest are dropped).
    """

    def __init__(self, max_lines: int = MAX_CHAT_LINES) -> None:
        self.lines: deque[ChatLine] = deque(maxlen=max_lines)
        self.offset = 0
        self.unread = 0
        self.width = 80  # of the last render: the rows new lines add while scrolled up
        self.clock = DEFAULT_CLOCK

    def set_clock(self, name: str) -> None:
        """Show every line's time (those shown already too) as ``name`` says.

        Args:
            name: a key of :data:`CLOCK_FORMATS`.

        Raises:
            KeyError: an unknown name.
        """
        if name not in CLOCK_FORMATS:
            raise KeyError(name)
        self.clock = name
        self.offset = 0  # rows change width: back to the newest line
        self.unread = 0

    def _rows(self, line: ChatLine, width: int) -> list[Row]:
        return line.rows(width, CLOCK_FORMATS[self.clock])

    def add(self, line: ChatLine) -> None:
        """Append a line; if scrolled up, keep the view where it is."""
        self.lines.append(line)
        if self.offset:
            self.offset += len(self._rows(line, self.width))
            self.unread += 1

    def clear(self) -> None:
        """Empty the chat area (``/clear``)."""
        self.lines.clear()
        self.offset = 0
        self.unread = 0

    def scroll(self, rows: int, height: int) -> None:
        """Scroll up (``rows`` > 0) or down; back at the bottom, nothing is unread.

        Args:
            rows: how far.
            height: the chat area's height (the top is as far as one can go).
        """
        want = max(0, self.offset + rows)
        if rows > 0:  # wrap only the lines up to where the view goes (not all 5,000)
            total = 0
            for line in reversed(self.lines):
                total += len(self._rows(line, self.width))
                if total >= want + height:
                    break
            want = max(0, min(want, total - height))
        self.offset = want
        if self.offset == 0:
            self.unread = 0

    def visible(self, width: int, height: int) -> list[Row]:
        """The rows the chat area shows, top first: at most ``height``.

        The newest rows, or ``offset`` rows above them; while lines below are
        unread, the last row is the marker ``-- N new lines below --``.

        Args:
            width: the area's width in cells.
            height: its height in rows.
        """
        self.width = width
        want = self.offset + height
        rows: list[Row] = []
        for line in reversed(self.lines):
            rows[:0] = self._rows(line, width)
            if len(rows) >= want:
                break
        if self.offset > len(rows) - height:  # fewer rows now (cleared, resized)
            self.offset = max(0, len(rows) - height)
        end = len(rows) - self.offset
        shown = rows[max(0, end - height) : end]
        if self.offset and self.unread and shown:
            n = self.unread
            marker = f"-- {n} new line{'s' if n != 1 else ''} below --"
            shown[-1] = [("class:unread", _fit(marker.center(width), width))]
        elif self.offset and shown:
            shown[-1] = [("class:unread", _fit("-- more below --".center(width), width))]
        return shown


# -- Tab completion ---------------------------------------------------------------------

NICK_COMMANDS = ("/msg", "/whois")
"""Commands whose first argument is a member's name."""


def complete(before: str, nicks: Iterable[str], commands: Iterable[str]) -> tuple[int, list[str]]:
    """What Tab offers for the text left of the cursor.

    * ``/w`` (a command being typed): the commands that start so, with a blank;
    * ``/msg al``, ``/whois al``: members' names, with a blank (a name
      with blanks in double quotes: ``/msg "bob smith" ``);
    * ``al`` as the line's first word: ``alice: ``;
    * ``al`` anywhere else: ``alice ``.

    Names match case-insensitively from their start; ``nicks`` are members
    as shown (``alice#3f2a`` when two share a name).

    Args:
        before: the input line left of the cursor.
        nicks: the names to offer (not our own).
        commands: the command names, with their ``/``.

    Returns:
        ``(start, candidates)``: the word to replace begins at ``start``
        (an index into ``before``); candidates sorted, possibly none.
    """
    start = before.rfind(" ") + 1
    word = before[start:]
    if start == 0 and word.startswith("/") and not word.startswith("//"):
        low = word.lower()
        return 0, [c + " " for c in commands if c.startswith(low)]
    if not word:
        return start, []
    key = word.casefold()
    names = sorted({n for n in nicks if n.casefold().startswith(key)}, key=str.casefold)
    head = before[:start].split()
    if head and head[0].lower() in NICK_COMMANDS and len(head) == 1:
        return start, [(f'"{n}"' if " " in n else n) + " " for n in names]
    if start == 0:
        return 0, [n + ": " for n in names]
    return start, [n + " " for n in names]
