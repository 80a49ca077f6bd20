"""The terminal front end: the ``p2pchat`` command.

Two modes, picked by where stdin and stdout go:

* **Interactive** (stdin and stdout are terminals, no ``--json``, in :mod:`p2pchat.cli.tui`): a
  full screen (:mod:`p2pchat.cli.screen`: chat area, status line, input line
  on the last row); with ``--plain`` or ``TERM=dumb``, a prompt_toolkit input
  line at the bottom with incoming lines printed above it (through
  ``patch_stdout``).  Without ``--name`` it asks for one.
* **Scripted** (anything else): each stdin line is a chat line or a command;
  events go to stdout one per line, as text or, with ``--json``, as one JSON
  object each (:meth:`p2pchat.events.Event.as_dict`).  Diagnostics go to
  stderr only.

Both modes leave gracefully (the room sees ``* alice left``) on ``/quit``,
end of input (Ctrl+D), Ctrl+C and SIGTERM, and then exit with status 0.

Exit statuses are decided in one place, :func:`main`: 2 for bad usage
(:class:`~p2pchat.errors.UsageError`), 1 when the node cannot start
(:class:`~p2pchat.errors.StartupError`: a port taken, an address not on this
machine, mDNS failing) or on an unexpected error, 0 otherwise.

The modules, one concern each; imports flow one way, down this list (the
no-cycle test, ``tests/test_no_cycles.py``, checks it):

* this package: :func:`main`, wiring the rest (imports ``tui`` only on a terminal);
* ``tui``: the interactive views; ``screen``: the full screen; ``scripted``: stdin lines in,
  events out;
* ``session``: what both modes share: building the node, signals, closing;
* ``commands``: the ``/commands`` and chat lines typed;
* ``output``: events to stdout (text or JSON lines), diagnostics to stderr;
* ``chatlog``: the full screen's chat area as data (lines, wrap, scroll, completion);
* ``render``: events and replies as text lines, cleaning, wrapping;
* ``args``: the command line, its checks and :class:`~p2pchat.cli.args.Options`.
"""

from __future__ import annotations

import contextlib
import sys
import traceback

from p2pchat.cli.args import PROG, parse_args
from p2pchat.cli.output import logging_to_stderr
from p2pchat.cli.scripted import run_scripted
from p2pchat.errors import P2PChatError, StartupError, UsageError

__all__ = ["main"]


def _interactive_terminal() -> bool:
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Run p2pchat: the console script ``p2pchat`` and ``python -m p2pchat``.

    The only place where errors become exit statuses and messages.

    Args:
        argv: the arguments without the program name; None for ``sys.argv[1:]``.

    Returns:
        The exit status: 0 after a graceful leave (or ``--help``), 1 when the
        node could not start or on an unexpected error, 2 for bad usage.
    """
    level = "warning"
    try:
        try:
            opts = parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        level = opts.log_level
        with logging_to_stderr(level, opts.log_file):
            if opts.json or not _interactive_terminal():
                return run_scripted(opts)
            from p2pchat.cli.tui import run_interactive  # scripted runs start faster without it

            return run_interactive(opts)
    except UsageError as exc:
        _say(str(exc))
        return 2
    except StartupError as exc:
        _say(_sentence(str(exc)))
        return 1
    except P2PChatError as exc:
        _say(_sentence(str(exc)))
        return 1
    except KeyboardInterrupt:
        return 130  # a second Ctrl+C while leaving
    except Exception as exc:
        _say(f"unexpected error: {type(exc).__name__}: {exc}")
        if level == "debug":
            traceback.print_exc(file=sys.stderr)
        else:
            _say("(run with --log-level debug for the details)")
        return 1


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _say(text: str) -> None:
    """One line on stderr, prefixed with the program name."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{PROG}: {text}\n")
        sys.stderr.flush()
