"""The interactive terminal of the ``p2pchat`` command (see :mod:`p2pchat.cli`).

Two views: the full screen (:mod:`p2pchat.cli.screen`: chat area, status
line, input line on the last row), and, with ``--plain`` or ``TERM=dumb``,
the line mode: a prompt_toolkit input line at the bottom, incoming lines
printed above it through ``patch_stdout``, so they never garble what is being
typed.  Imported only when stdin and stdout are terminals: prompt_toolkit
takes about 0.1 s of CPU to import, which scripted nodes (and ten of them
starting at once on one machine) do without.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.shortcuts import prompt as pt_prompt

from p2pchat.cli.args import Options, validate_name
from p2pchat.cli.arrival import Arrival
from p2pchat.cli.chatlog import SYSTEM, ChatLine
from p2pchat.cli.commands import COMMANDS, CommandState, handle_line
from p2pchat.cli.notify import Notifier, find_backend
from p2pchat.cli.output import Output
from p2pchat.cli.render import format_current_topic
from p2pchat.cli.screen import ChatView, input_history
from p2pchat.cli.session import Stopper, close, make_node
from p2pchat.errors import UsageError

log = logging.getLogger(__name__)


class _CommandCompleter(Completer):
    """Completes command names when the line starts with '/'."""

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        """Yield the commands that start with the text typed so far.

        Args:
            document: the input line.
            complete_event: how completion was triggered.

        Yields:
            Completions.
        """
        text = document.text_before_cursor
        if not text.startswith("/") or text.startswith("//") or " " in text:
            return
        for cmd in COMMANDS:
            if cmd.startswith(text.lower()):
                yield Completion(cmd, start_position=-len(text))


LAST_NAME_FILE = "last_name"
"""In the data directory: the name of the last interactive run, offered at the name prompt."""


def load_last_name(data_dir: str | None) -> str:
    """The name the last interactive run used in ``data_dir``, or "" (none
    kept, ``--ephemeral``, or not a valid name)."""
    if data_dir is None:
        return ""
    try:
        with open(os.path.join(data_dir, LAST_NAME_FILE), encoding="utf-8") as f:
            return validate_name(f.read(512).strip())
    except (OSError, UnicodeDecodeError, UsageError):
        return ""


def save_last_name(data_dir: str | None, name: str) -> None:
    """Keep ``name`` in ``data_dir`` for the next run's name prompt
    (readable by its owner only); nothing with ``--ephemeral``.  A disk
    error is logged, not raised.  Main thread."""
    if data_dir is None:
        return
    path = os.path.join(data_dir, LAST_NAME_FILE)
    tmp = f"{path}.tmp"
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(name + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.info("could not keep the name for the next run: %s", exc)


def ask_name(default: str = "") -> str | None:
    """Ask for a display name on the terminal until a valid one is typed.

    Args:
        default: offered in the answer (the last run's name): Enter takes it.

    Returns:
        The name, or None if the user pressed Ctrl+C or Ctrl+D.
    """
    while True:
        try:
            answer = pt_prompt("Your name: ", default=default)
        except (KeyboardInterrupt, EOFError):
            return None
        try:
            return validate_name(answer.strip())
        except UsageError as exc:
            print(f"!! {exc}; try again (Ctrl+D to give up)")


def run_interactive(opts: Options) -> int:
    """Interactive mode: the full screen, or the line mode with ``--plain``
    or ``TERM=dumb``.  Main thread.

    Args:
        opts: the command line.

    Returns:
        0 after leaving the room (or when no name was given).

    Raises:
        StartupError: the node could not start.
    """
    if opts.plain or os.environ.get("TERM", "") in ("dumb", ""):
        return run_plain(opts)
    return run_fullscreen(opts)


def run_fullscreen(opts: Options) -> int:
    """The full-screen view (:class:`~p2pchat.cli.screen.ChatView`) of a
    node: the room's last lines, then live ones, until the user quits.
    Main thread.

    Args:
        opts: the command line.

    Returns:
        0 after leaving the room (or when no name was given).

    Raises:
        StartupError: the node could not start (before the screen is drawn).
    """
    name = opts.name or ask_name(load_last_name(opts.data_dir))
    if name is None:
        return 0
    view: ChatView | None = None
    notifier: Notifier | None = None
    node = make_node(opts, name, lambda ev: view.on_event(ev) if view is not None else None)
    stopper = Stopper()
    try:
        why = ""
        if opts.notify:
            backend, why = find_backend()
            notifier = Notifier(backend) if backend is not None else None
        view = ChatView(node, history=input_history(opts.data_dir), notifier=notifier)
        stopper.app = view.app
        if why:
            view.add(ChatLine(time.time(), SYSTEM, why))
        view.show_start_context()
        with stopper.installed(sigint=False):
            node.start()
            save_last_name(opts.data_dir, node.name)
            with contextlib.suppress(EOFError, KeyboardInterrupt):  # a signal: leave
                view.run()
            save_last_name(opts.data_dir, node.name)  # after a /nick, the new one
    finally:
        stopper.closing = True
        try:
            node.close()
        finally:
            if view is not None:
                view.close()  # and the notifier
            elif notifier is not None:
                notifier.close()
    return 0


def run_plain(opts: Options) -> int:
    """The line mode: an input line at the bottom, the chat above it.

    Args:
        opts: the command line.

    Returns:
        0 after leaving the room (or when no name was given).

    Raises:
        StartupError: the node could not start.
    """
    name = opts.name or ask_name(load_last_name(opts.data_dir))
    if name is None:
        return 0
    session: PromptSession[str] = PromptSession(
        erase_when_done=True,  # our own line comes back as a message event
        completer=_CommandCompleter(),
        complete_while_typing=True,
    )
    stopper = Stopper()
    stopper.app = session.app
    if opts.notify:
        print("-- --notify: desktop notifications are shown in the full screen only")
    with patch_stdout(raw=True):
        out = Output(
            json_mode=False,
            interactive=True,
            arrival=Arrival(time.monotonic()),
            links=logging.getLogger().isEnabledFor(logging.INFO),
        )
        try:
            node = make_node(opts, name, out.on_event)
            with stopper.installed(sigint=False):
                try:
                    node.start()
                    save_last_name(opts.data_dir, node.name)
                    topic = node.topic()
                    if topic is not None and topic.text.strip():
                        out.text(format_current_topic(topic))
                    commands = CommandState()
                    while not stopper.requested:
                        try:
                            line = session.prompt(
                                lambda: f"[{node.room}] {node.name}> ",
                                pre_run=stopper.exit_app,
                            )
                        except (EOFError, KeyboardInterrupt):
                            break
                        if not handle_line(node, out, line, commands):
                            break
                        out.drain(0.5)
                except KeyboardInterrupt:
                    pass  # Ctrl+C outside the prompt (while starting, say): leave too
                finally:
                    close(node, stopper, out)
                    save_last_name(opts.data_dir, node.name)  # after a /nick, the new one
        finally:
            out.close()
    return 0
