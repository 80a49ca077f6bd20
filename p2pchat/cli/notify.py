"""Desktop notifications for ``--notify`` (off by default): a line that
names you, or a private line, pops up where the desktop offers it.

* Linux and other Unix desktops: ``notify-send`` if it is on ``PATH``;
* macOS: ``osascript`` (``display notification``);
* elsewhere (Windows), or without the command: nothing, and
  :func:`find_backend` says why, once, for the screen to show.

A peer's name and text reach the command only as argv items (never through
a shell, never inside the AppleScript source, after ``--`` for
``notify-send`` so they cannot be read as options), cleaned of control and
bidi characters (shown as ``�``, as on the screen) and of invisible ones,
cut to :data:`NOTIFY_TEXT_MAX`, and with ``<``, ``>``, ``&`` escaped for
``notify-send`` (whose servers read a little markup: no link or image can
be slipped in).

The command runs on a thread of its own (``p2pchat-cli-notify``), never on
the screen's: at most one notification per :data:`NOTIFY_INTERVAL_S`;
what comes meanwhile is folded into the next one (the latest line and
``(+N more)``), so the queue is one notification deep whatever a peer
sends.  A command that does not end within :data:`NOTIFY_TIMEOUT_S` is
killed.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass

from p2pchat.cli.render import clean

log = logging.getLogger(__name__)

NOTIFY_INTERVAL_S = 1.0
"""At most one desktop notification this often (documented in docs/reliability.md)."""
NOTIFY_TIMEOUT_S = 5.0
"""A notification command still running after this long is killed."""
NOTIFY_TEXT_MAX = 200
"""Code points of a line's text shown in a notification (more ends in ``…``)."""
NOTIFY_TITLE_MAX = 80
"""Code points of a notification's title."""


@dataclass(frozen=True)
class Backend:
    """A desktop's notification command.

    Attributes:
        kind: ``"notify-send"`` or ``"osascript"``.
        exe: the command's path.
    """

    kind: str
    exe: str

    def argv(self, title: str, body: str) -> list[str]:
        """The command line that shows one notification.

        Args:
            title: the title, already cleaned (:func:`safe_text`).
            body: the text, already cleaned.

        Returns:
            argv items; ``title`` and ``body`` are whole items of their own.
        """
        if self.kind == "osascript":
            return [
                self.exe,
                "-e",
                "on run argv",
                "-e",
                "display notification (item 2 of argv) with title (item 1 of argv)",
                "-e",
                "end run",
                title,
                body,
            ]
        return [
            self.exe,
            "--app-name=p2pchat",
            "--expire-time=10000",
            "--",
            _markup_escape(title),
            _markup_escape(body),
        ]


def find_backend(
    platform: str | None = None, path: str | None = None
) -> tuple[Backend | None, str]:
    """The notification command of this desktop.

    Args:
        platform: ``sys.platform`` (None: this machine's).
        path: the directories searched, as ``PATH`` (None: ``PATH``).

    Returns:
        ``(backend, "")``, or ``(None, why)`` where ``why`` is one sentence
        for the user (``--notify`` is not available here).
    """
    platform = sys.platform if platform is None else platform
    if platform == "win32" or platform == "cygwin":
        return None, "--notify: desktop notifications are not available on Windows"
    name = "osascript" if platform == "darwin" else "notify-send"
    exe = shutil.which(name, path=path)
    if exe is None:
        hint = "" if platform == "darwin" else " (Debian and Ubuntu: the libnotify-bin package)"
        return None, f"--notify: no desktop notifications here: {name} is not on PATH{hint}"
    return Backend(name, exe), ""


def safe_text(text: str, limit: int) -> str:
    """A peer's text made fit for a notification: tabs and line breaks as
    blanks, other control characters shown as ``�``
    (:func:`~p2pchat.cli.render.clean`; bidi controls too, as on the
    screen), other format characters (zero width) dropped, blanks run
    together, at most ``limit`` code points.

    Args:
        text: as received.
        limit: the most code points kept (at least 1).

    Returns:
        One line of text.
    """
    shown = clean(text.replace("\t", " ").replace("\r", " ").replace("\n", " "))
    shown = "".join(ch for ch in shown if unicodedata.category(ch) not in ("Cf", "Co", "Cs"))
    shown = " ".join(shown.split())
    if len(shown) > limit:
        shown = shown[: max(limit - 1, 0)] + "…"
    return shown


def _markup_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Notifier:
    """Shows desktop notifications on a thread of its own, at most one per
    ``interval_s``; what comes in between is folded into the next one.

    :meth:`notify` never blocks (the screen's thread calls it); :meth:`close`
    ends the thread (and kills a command still running).

    Attributes:
        shown: notifications shown (commands started).
        folded: notifications folded into a later one by the rate limit.
        failed: commands that could not start, failed or timed out.

    Args:
        backend: the command (:func:`find_backend`).
        interval_s: at least this long between two notifications, in seconds.
        timeout_s: a command running longer is killed, in seconds.
    """

    def __init__(
        self,
        backend: Backend,
        interval_s: float = NOTIFY_INTERVAL_S,
        timeout_s: float = NOTIFY_TIMEOUT_S,
    ) -> None:
        self.backend = backend
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.shown = 0
        self.folded = 0
        self.failed = 0
        self._cond = threading.Condition()
        self._pending: tuple[str, str] | None = None
        self._more = 0  # notifications folded into the pending one
        self._closed = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="p2pchat-cli-notify", daemon=True)
        self._thread.start()

    def notify(self, title: str, body: str) -> None:
        """Queue a notification (cleaned here).  If one is waiting already,
        this one takes its place and the count of folded ones grows.  Any
        thread; never blocks.

        Args:
            title: e.g. ``"bob in lobby"`` (a peer's name in it is cleaned).
            body: the line's text.
        """
        item = (safe_text(title, NOTIFY_TITLE_MAX), safe_text(body, NOTIFY_TEXT_MAX))
        with self._cond:
            if self._closed:
                return
            if self._pending is not None:
                self._more += 1
                self.folded += 1
            self._pending = item
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread; a notification waiting is dropped, a command
        running is killed.  Idempotent.  Any thread but the notifier's."""
        with self._cond:
            self._closed = True
            self._pending = None
            proc = self._proc
            self._cond.notify()
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._thread.join()

    def _run(self) -> None:
        next_at = 0.0
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                assert self._pending is not None
                (title, body), more = self._pending, self._more
                self._pending, self._more = None, 0
            if more:
                body = f"{body} (+{more} more)"
            next_at = time.monotonic() + self.interval_s
            self._show(title, body)

    def _show(self, title: str, body: str) -> None:
        try:
            proc = subprocess.Popen(
                self.backend.argv(title, body),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            self.failed += 1
            log.info("could not run %s: %s", self.backend.kind, exc)
            return
        self.shown += 1
        with self._cond:
            self._proc = proc
            closed = self._closed
        if closed:
            proc.kill()
        try:
            status = proc.wait(self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = -1
            log.info("%s took more than %g s: killed", self.backend.kind, self.timeout_s)
        with self._cond:
            self._proc = None
        if status != 0:
            self.failed += 1
