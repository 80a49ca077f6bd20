"""What both modes share: building the node, leaving on signals, closing."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from p2pchat.cli.args import Options
from p2pchat.cli.output import Output
from p2pchat.discovery import MdnsDiscovery
from p2pchat.events import Event
from p2pchat.node import Node, NodeConfig

if TYPE_CHECKING:  # prompt_toolkit is imported only for the interactive mode (p2pchat.cli.tui)
    from prompt_toolkit.application import Application


class Terminate(BaseException):
    """SIGTERM (or SIGHUP, or Ctrl+C in scripted mode) asked us to leave.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception``
    on the way swallows it.
    """


class Stopper:
    """What SIGTERM and SIGHUP (and, when scripted, SIGINT) do: leave the room.

    The handler runs on the main thread.  It never raises into arbitrary
    code: it raises :class:`Terminate` only while the main thread is blocked
    reading stdin (scripted mode), makes a running prompt exit (interactive
    mode), and otherwise just sets :attr:`requested`, which the main loop
    checks before it waits for input again.  Once closing has begun, further
    signals are ignored, except a second Ctrl+C, which aborts.
    """

    def __init__(self) -> None:
        self.requested = False
        self.closing = False
        self.reading = False
        self.active = False  # our SIGTERM handler is installed
        self.app: Application[Any] | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler.

        Args:
            signum: the signal.
            frame: unused.

        Raises:
            Terminate: the main thread is blocked reading stdin.
            KeyboardInterrupt: Ctrl+C while closing.
        """
        if self.closing:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        app = self.app
        if app is not None and app.is_running:
            loop = app.loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop just closed
                    loop.call_soon_threadsafe(self.exit_app)
        if self.reading:
            raise Terminate

    def exit_app(self) -> None:
        """Make the running prompt return (as if Ctrl+D was pressed), if asked to."""
        app = self.app
        if (
            self.requested
            and app is not None
            and app.is_running
            and app.future is not None
            and not app.future.done()
        ):
            app.exit(exception=EOFError())

    def request_stop(self) -> None:
        """Leave as on SIGTERM; for other threads (the stdout writer, when
        stdout is gone).

        The signal goes to the main thread, so that a blocking read of stdin
        is interrupted and the handler runs at once.
        """
        main_id = threading.main_thread().ident
        if not self.active or self.closing or self.requested or main_id is None:
            return
        if sys.platform == "win32":
            # No pthread_kill.  The scripted loop waits for stdin in steps of
            # 0.5 s and then sees `requested`; a running prompt is told to exit.
            self.requested = True
            app = self.app
            loop = app.loop if app is not None and app.is_running else None
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop just closed
                    loop.call_soon_threadsafe(self.exit_app)
            return
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_kill(main_id, signal.SIGTERM)

    @contextlib.contextmanager
    def installed(self, sigint: bool) -> Iterator[None]:
        """Install the handler for SIGTERM, SIGHUP (and SIGINT) for the duration.

        Args:
            sigint: also handle SIGINT (scripted mode; interactive mode leaves
                Ctrl+C to prompt_toolkit, which reports it as KeyboardInterrupt).
        """
        signums: list[int] = [signal.SIGTERM]
        if hasattr(signal, "SIGHUP"):
            signums.append(signal.SIGHUP)
        if sigint:
            signums.append(signal.SIGINT)
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for s in signums:
                if s != signal.SIGTERM and signal.getsignal(s) == signal.SIG_IGN:
                    continue  # nohup, or a background job of a script: keep ignoring
                old[s] = signal.signal(s, self.handle)
            self.active = True
        try:
            yield
        finally:
            self.active = False
            for s, handler in old.items():
                signal.signal(s, handler)


def make_node(opts: Options, name: str, on_event: Callable[[Event], None]) -> Node:
    """Build (not start) the node the options describe.

    Args:
        opts: the command line.
        name: the display name.
        on_event: the event callback.

    Returns:
        The node.

    Raises:
        UsageError: an invalid name or room.
    """
    config = NodeConfig(
        name=name,
        room=opts.room,
        port=opts.port,
        interfaces=list(opts.interfaces),
        peers=list(opts.peers),
        port_fallback=opts.port_fallback,
        broadcast=opts.broadcast,
        data_dir=opts.data_dir,
        history_max_age_s=opts.history_days * 86400.0,
        history_max_lines=opts.history_lines,
        secret=opts.secret,
        download_dir=opts.download_dir,
        accept_files=opts.accept_files,
        chunk_size=opts.chunk_size,
    )
    discovery = (
        MdnsDiscovery(interfaces=list(opts.interfaces) or None, service_type=opts.service_type)
        if opts.mdns
        else None
    )
    return Node(config, discovery=discovery, on_event=on_event)


def close(node: Node, stopper: Stopper, out: Output) -> None:
    """Leave the room: from now on signals are ignored (a second Ctrl+C
    aborts) and our own links going down are not printed; then close the node.

    Main thread, once, at the end of either mode; ``out`` is closed by the caller.

    Args:
        node: the node (started or not).
        stopper: the mode's signal handler.
        out: the mode's output.
    """
    stopper.closing = True
    out.leaving = True
    node.close()
