"""What the command prints: events and replies on stdout (text or JSON
lines, one writer thread), diagnostics on stderr."""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from p2pchat.cli.args import PROG
from p2pchat.cli.arrival import Arrival
from p2pchat.cli.offers import TABLE as OFFERS
from p2pchat.cli.offers import offer_json
from p2pchat.cli.render import Renderer, terminal_width, wrap_rows
from p2pchat.errors import StartupError
from p2pchat.events import (
    Event,
    FileOfferEvent,
    LineEvent,
    MessageEvent,
    PeerDown,
    PeerUp,
    Ready,
    TopicEvent,
)

log = logging.getLogger(__name__)

# Lines queued for stdout at most; beyond that a stalled reader of our stdout
# loses lines rather than stalling the node's router thread.
_OUTPUT_QUEUE_MAX = 100_000
_EARLIER_SHOWN = 50
"""Text views show at most this many earlier lines of one catch-up: the latest."""
_EARLIER_QUIET_S = 1.0
"""A catch-up is over (and its earlier lines are printed) after this long without one."""
_WAKE = object()  # Output's writer: look at the earlier lines now
_OUTPUT_DRAIN_S = 10.0


class Output:
    """Everything we print to stdout goes through here, one whole line at a time.

    ``on_event`` (called on the node's threads) only formats the event and
    queues the line; one writer thread prints the lines in order and flushes
    after each, so lines from different threads never interleave and a slow
    reader of our stdout never stalls the node.  The writer resolves
    ``sys.stdout`` at each write, so under ``patch_stdout`` lines are printed
    above the input line.

    Args:
        json_mode: one JSON object per line instead of text.
        interactive: text meant for a person at a terminal.
        on_broken_pipe: called (once, on the writer thread) when stdout is
            gone, e.g. to leave the room.
        arrival: word membership news for who arrived (the plain line
            mode: :class:`~p2pchat.cli.arrival.Arrival`); None to print each
            event as it comes (the scripted modes).
        links: print links coming up and going down (see
            :class:`~p2pchat.cli.render.Renderer`).
    """

    def __init__(
        self,
        json_mode: bool,
        interactive: bool = False,
        on_broken_pipe: Callable[[], None] | None = None,
        arrival: Arrival | None = None,
        links: bool = True,
    ) -> None:
        self.json_mode = json_mode
        self.renderer = Renderer(interactive=interactive, links=links)
        self.arrival = arrival
        self._lock = threading.Lock()  # guards the renderer and the queue order
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_OUTPUT_QUEUE_MAX)
        # Earlier lines (catch-up) in a text view: the latest _EARLIER_SHOWN
        # in the room's order (a min-heap on hlc, origin, line), how many came,
        # and when the catch-up counts as over.
        self._earlier: list[tuple[tuple[int, str, int], str]] = []
        self._earlier_count = 0
        self._earlier_due: float | None = None
        self._on_broken_pipe = on_broken_pipe
        self._after: list[str] = []  # lines to print after the event being printed
        self._dropped = 0
        self._broken = False
        self.leaving = False  # set when we leave the room
        self._thread = threading.Thread(target=self._write_loop, name="p2pchat-cli-out")
        self._thread.daemon = True
        self._thread.start()

    # Producers: any thread.

    def on_event(self, ev: Event) -> None:
        """The node's ``on_event`` callback: format and queue, never block.

        Args:
            ev: the event.
        """
        try:
            with self._lock:
                if self.json_mode:
                    obj = ev.as_dict()
                    if isinstance(ev, FileOfferEvent):  # numbered as the text views number it
                        obj = offer_json(ev, OFFERS.number(ev))
                    line: str | None = _json_line(obj)
                elif self.leaving and isinstance(ev, PeerDown):
                    line = None  # our own leave takes every link down: not news
                elif self.arrival is not None and not self._arrival_news(ev):
                    return
                else:
                    line = self.renderer.render(ev)
                    lines = (MessageEvent, TopicEvent, FileOfferEvent)
                    if line is not None and isinstance(ev, lines) and ev.history:
                        self._hold_earlier(ev, line)
                        return
                    if isinstance(ev, lines) and any(
                        key[1] == ev.origin for key, _ in self._earlier
                    ):
                        # A live line of an origin whose earlier lines wait for
                        # the end of their catch-up: those first, so that its
                        # lines are printed in the order it said them.
                        for held in self._take_earlier_locked(force=True):
                            self._put(held)
                if line is not None:
                    self._put(line)
                for extra in self._after:
                    self._put(extra)
                self._after = []
        except Exception:
            log.exception("could not print %r", ev)

    def _arrival_news(self, ev: Event) -> bool:
        """Pass ``ev`` through :attr:`arrival` (caller holds ``_lock``): False
        if it is held back; lines to print after it go to ``_after``."""
        assert self.arrival is not None
        now = time.monotonic()
        if isinstance(ev, PeerUp):
            self.arrival.note_link(now)
        show, self._after = self.arrival.feed(ev, now)
        if isinstance(ev, Ready):
            self._put(_WAKE)  # the writer waits for the arrival's end from now on
        return show

    def obj(self, kind: str, **fields: Any) -> None:
        """Print a command reply in JSON mode: ``{"event": kind, **fields}``.

        Args:
            kind: the ``event`` value.
            **fields: the other keys.
        """
        with self._lock:
            self._put(_json_line({"event": kind, **fields}))

    def text(self, *lines: str) -> None:
        """Print text lines (kept together).

        Args:
            *lines: the lines, without newlines.
        """
        with self._lock:
            for line in lines:
                self._put(line)

    def error(self, text: str) -> None:
        """Report a problem with what the user typed (never fatal).

        Args:
            text: one sentence.
        """
        if self.json_mode:
            self.obj("error", text=text)
        else:
            self.text(f"!! {text}")

    def _hold_earlier(self, ev: LineEvent, line: str) -> None:
        """Keep an earlier line until its catch-up is over (caller holds
        ``_lock``): a catch-up of 10,000 lines prints only the latest
        ``_EARLIER_SHOWN``, in order, under a line that says how many came."""
        heapq.heappush(self._earlier, ((ev.hlc, ev.origin, ev.line), line))
        if len(self._earlier) > _EARLIER_SHOWN:
            heapq.heappop(self._earlier)
        self._earlier_count += 1
        first = self._earlier_due is None
        self._earlier_due = time.monotonic() + _EARLIER_QUIET_S
        if first:
            self._put(_WAKE)

    def _take_earlier(self, force: bool) -> list[str]:
        """The earlier lines to print now (the catch-up is over, or ``force``),
        and the end of our arrival if it has come."""
        with self._lock:
            lines = self._take_earlier_locked(force)
            if self.arrival is not None:
                lines += self.arrival.poll(time.monotonic())
            return lines

    def _due(self) -> float | None:
        """When the writer must look at the earlier lines or our arrival
        (monotonic s); read without the lock: at worst one late wake."""
        due = self._earlier_due
        arrival = self.arrival.due() if self.arrival is not None else None
        if due is None or (arrival is not None and arrival < due):
            return arrival
        return due

    def _take_earlier_locked(self, force: bool) -> list[str]:
        """:meth:`_take_earlier` with ``_lock`` held by the caller."""
        due = self._earlier_due
        if due is None or (not force and time.monotonic() < due):
            return []
        held = sorted(self._earlier)
        count = self._earlier_count
        self._earlier, self._earlier_count, self._earlier_due = [], 0, None
        lines = [line for _, line in held]
        if count > len(lines):
            lines.insert(
                0,
                f"-- {count} earlier lines came in; the latest {len(lines)} follow "
                f"(/history {count} shows them all in their place)",
            )
        return lines

    def _put(self, line: object) -> None:
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self._dropped += 1
            if self._dropped == 1:
                log.warning("stdout is not being read; dropping output lines")

    # The writer thread.

    def _write_loop(self) -> None:
        while True:
            due = self._due()
            try:
                item = self._queue.get(
                    timeout=None if due is None else max(0.0, due - time.monotonic())
                )
            except queue.Empty:  # a catch-up may be over
                self._write_all(self._take_earlier(force=False))
                continue
            try:
                if item is None:
                    self._write_all(self._take_earlier(force=True))
                    return
                if item is _WAKE:
                    self._write_all(self._take_earlier(force=False))
                elif isinstance(item, str):
                    self._write_all([item])
            finally:
                self._queue.task_done()

    def _write_all(self, lines: list[str]) -> None:
        for line in lines:
            if self._broken:
                return
            self._write(line)

    def _write(self, line: str) -> None:
        if not self.json_mode:
            line = "\n".join(wrap_rows(line, terminal_width()))
        try:
            out = sys.stdout
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError) as exc:  # EPIPE; stdout closed
            self._broken = True
            log.info("stdout is gone (%s); no more output", exc)
            _silence_stdout()
            if self._on_broken_pipe is not None:
                self._on_broken_pipe()

    def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds until every queued line is printed.

        The interactive loop calls this before it draws the next prompt, so
        that a command's reply is not printed while the prompt is being set
        up (which could leave a stray prompt on the reply's line).
        """
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        """Print what is queued (waiting at most a few seconds) and stop the writer."""
        deadline = time.monotonic() + _OUTPUT_DRAIN_S
        while True:
            try:
                self._queue.put(None, timeout=0.2)
                break
            except queue.Full:  # pragma: no cover - a reader of stdout that stalled
                if time.monotonic() > deadline:
                    return  # the writer is a daemon thread: it dies with the process
        self._thread.join(max(0.0, deadline - time.monotonic()))


def _json_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so that the interpreter's final flush of a
    broken stdout does not print 'Exception ignored ... BrokenPipeError'."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
        os.close(devnull)


class _StderrHandler(logging.Handler):
    """A logging handler that writes to whatever ``sys.stderr`` is at emit time.

    Under ``patch_stdout`` that is prompt_toolkit's proxy, so log lines are
    printed above the input line instead of through it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record to the current ``sys.stderr``.

        Args:
            record: the record.
        """
        try:
            msg = self.format(record)
            stream = sys.stderr
            stream.write(msg + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def logging_to_stderr(level_name: str, log_file: str | None = None) -> Iterator[None]:
    """Send log records of ``level_name`` and above to stderr (or to
    ``log_file``, appended, with timestamps), for the duration.

    Raises:
        StartupError: the log file cannot be opened.
    """
    level = getattr(logging, level_name.upper())
    handler: logging.Handler
    fmt = "%(asctime)s %(threadName)s %(name)s %(levelname)s: %(message)s"
    if log_file:
        try:
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise StartupError(f"cannot open log file {log_file}: {exc.strerror}") from None
        handler.setLevel(level)
    else:
        handler = _StderrHandler(level)
        if level > logging.DEBUG:
            fmt = f"{PROG}: %(levelname)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
