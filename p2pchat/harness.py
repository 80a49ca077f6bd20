"""Drive p2pchat processes in scripted ``--json`` mode: used by scripts/demo.py
and the tests; no network of its own.

A :class:`NodeProcess` wraps one ``p2pchat`` process whose stdin, stdout and
stderr are text pipes.  Two named daemon threads read stdout and stderr (at
most :data:`MAX_LINES` lines each, :data:`MAX_LINE_CHARS` characters a line);
the caller's thread moves what they read into :attr:`NodeProcess.events`
with :meth:`NodeProcess.pump`, or waits for something with
:meth:`NodeProcess.wait_event`, :meth:`NodeProcess.wait_line` or the
module-level :func:`wait_until`.  Every wait has a deadline, and
:func:`stop` ends the processes (terminate, wait, kill) and joins the reader
threads, so nothing outlives it.

Example::

    node = NodeProcess.spawn([sys.executable, "-m", "p2pchat", "--ephemeral", "--name", "a",
                              "--json", "--no-mdns", "--interface", "127.0.0.1",
                              "--port", "0"], "a")
    try:
        port = node.wait_event("ready")["port"]
        node.send_line("hello")
        node.wait_event("message", text="hello")
    finally:
        stop([node])

This module starts processes only; the addresses they bind are whatever the
caller puts in ``argv``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, TypeVar

__all__ = [
    "MAX_LINES",
    "MAX_LINE_CHARS",
    "POLL_S",
    "NodeProcess",
    "PopenFactory",
    "WaitFailed",
    "pump_for",
    "stop",
    "wait_exit",
    "wait_until",
]

MAX_LINES = 100_000
"""Lines read from each of a process's stdout and stderr; the rest are left unread."""
MAX_LINE_CHARS = 1_000_000
"""Longer lines are read in pieces of this many characters."""
POLL_S = 0.05
"""How long one round of a wait blocks for output before checking again."""
DEFAULT_TIMEOUT_S = 20.0
"""Deadline of :meth:`NodeProcess.wait_event` and :meth:`NodeProcess.wait_line`."""
STOP_TIMEOUT_S = 5.0
"""Default of :func:`stop`: how long to wait after terminate, and again after kill."""
SETTLE_S = 0.2
"""Output collected after a failed wait, so the report shows the latest lines."""
_MAX_ROUNDS = 10_000_000
"""Safety bound on the rounds of any wait loop; the deadlines end them far sooner."""

T = TypeVar("T")

Event = dict[str, Any]
"""One ``--json`` output line: a JSON object with an ``"event"`` key."""

PopenFactory = Callable[..., "subprocess.Popen[str]"]
"""Starts a process like :class:`subprocess.Popen` (argv first, then Popen's
keyword arguments), e.g. ``functools.partial(lan.popen, i)``."""


class WaitFailed(AssertionError):
    """A wait ended without its condition: the deadline passed, or a process it
    needed exited.  The message says which and shows the recent output.

    An :class:`AssertionError`, so an unhandled one fails a test like a failed
    ``assert``."""


class NodeProcess:
    """One running ``p2pchat`` process, its output read by two threads.

    What has been read is moved into the lists below only by :meth:`pump` (and
    the waits that call it), in the thread that drives the process; the
    reader threads only fill a queue and :attr:`stderr`.

    Attributes:
        proc: the :class:`subprocess.Popen`.
        label: a short name for messages (the demo's and the tests' node name).
        argv: the command line, for messages.
        json_mode: whether stdout lines are parsed as JSON events.
        lines: every stdout line taken so far, without its line end.
        events: the JSON objects with an ``"event"`` key among :attr:`lines`
            (``json_mode`` only), in order.
        junk: the other stdout lines (``json_mode`` only).  With ``--json``,
            p2pchat prints nothing else, so this should stay empty.
        stderr: the stderr lines read so far, without their line ends.
    """

    def __init__(
        self,
        proc: subprocess.Popen[str],
        label: str,
        argv: Sequence[str] | None = None,
        *,
        json_mode: bool = True,
    ) -> None:
        """Wrap ``proc``, already started with text-mode pipes (at least stdout;
        stdin for :meth:`send_line`, stderr for :attr:`stderr`), e.g. by
        :meth:`netns_lab.Lan.popen`; start reading its output at once.

        :meth:`spawn` starts the process and wraps it in one go."""
        self.proc = proc
        self.label = label
        self.argv = list(argv) if argv is not None else _argv_of(proc)
        self.json_mode = json_mode
        self.lines: list[str] = []
        self.events: list[Event] = []
        self.junk: list[str] = []
        self.stderr: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._stdout_done = False
        self._readers: list[threading.Thread] = []
        if proc.stdout is not None:
            self._start_reader("stdout", proc.stdout, self._q.put, end=lambda: self._q.put(None))
        else:
            self._stdout_done = True
        if proc.stderr is not None:
            self._start_reader("stderr", proc.stderr, self.stderr.append, end=lambda: None)

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        label: str,
        *,
        json_mode: bool = True,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
        errors: str = "replace",
        popen: PopenFactory = subprocess.Popen,
    ) -> NodeProcess:
        """Start ``argv`` with stdin, stdout and stderr as UTF-8 text pipes
        (line-buffered) and wrap it.

        Args:
            argv: the whole command line, e.g. ``[sys.executable, "-m",
                "p2pchat", "--json", ...]``.
            label: see :attr:`label`.
            json_mode: see :attr:`json_mode`.
            cwd, env: as for :class:`subprocess.Popen`.
            new_session: start it in a session of its own, so a Ctrl+C at the
                terminal reaches only the caller (which then stops it).
            errors: how undecodable output is treated (``"strict"`` ends the
                reading at the first bad byte).
            popen: what starts the process; the default is
                :class:`subprocess.Popen`, ``functools.partial(lan.popen, i)``
                starts it in host ``i`` of a :mod:`netns_lab` LAN.
        """
        proc = popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors=errors,
            bufsize=1,
            cwd=cwd,
            env=env,
            start_new_session=new_session,
        )
        return cls(proc, label, argv, json_mode=json_mode)

    # -- reading ------------------------------------------------------------------------

    def _start_reader(
        self,
        name: str,
        stream: IO[str],
        put: Callable[[str], None],
        end: Callable[[], None],
    ) -> None:
        def read() -> None:
            try:
                with contextlib.suppress(OSError, ValueError):
                    for _ in range(MAX_LINES):
                        line = stream.readline(MAX_LINE_CHARS)
                        if not line:
                            break
                        put(line.rstrip("\n"))
            finally:
                end()

        t = threading.Thread(target=read, name=f"harness-{self.label}-{name}", daemon=True)
        self._readers.append(t)
        t.start()

    def pump(self, timeout: float = 0.0) -> bool:
        """Move the stdout lines read so far into :attr:`lines` (and
        :attr:`events` or :attr:`junk`); wait up to ``timeout`` seconds for the
        first one (also once stdout has ended, so this can pace a polling loop).

        Returns whether any line was taken."""
        block = timeout > 0
        took = False
        for _ in range(MAX_LINES + 1):
            try:
                line = self._q.get(True, timeout) if block else self._q.get_nowait()
            except queue.Empty:
                break
            block = False
            if line is None:
                self._stdout_done = True
                continue
            took = True
            self._take(line)
        return took

    def _take(self, line: str) -> None:
        self.lines.append(line)
        if not self.json_mode:
            return
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "event" in obj:
            self.events.append(obj)
        else:
            self.junk.append(line)

    @property
    def stdout_done(self) -> bool:
        """Whether stdout has ended (or hit :data:`MAX_LINES`) and every line
        read from it has been taken by :meth:`pump`."""
        return self._stdout_done and self._q.empty()

    def _join_readers(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s`` in all) for the reader threads to end; they
        end when the process and everything sharing its pipes have exited."""
        end = time.monotonic() + timeout_s
        for t in self._readers:
            t.join(max(0.0, end - time.monotonic()))

    @property
    def readers_alive(self) -> bool:
        """Whether a reader thread is still running."""
        return any(t.is_alive() for t in self._readers)

    # -- views on the events ------------------------------------------------------------

    def of(self, kind: str) -> list[Event]:
        """The events of ``kind`` taken so far, in order."""
        return [e for e in self.events if e.get("event") == kind]

    @property
    def ready_event(self) -> Event | None:
        """The ``ready`` event, once taken."""
        ready = self.of("ready")
        return ready[0] if ready else None

    @property
    def node_id(self) -> str | None:
        """This node's id, from its ``ready`` event."""
        ready = self.ready_event
        return str(ready["node"]) if ready else None

    @property
    def port(self) -> int | None:
        """The TCP port this node listens on, from its ``ready`` event."""
        ready = self.ready_event
        return int(ready["port"]) if ready else None

    def joined(self) -> set[str]:
        """The ids of the members this node has seen join."""
        return {str(e.get("origin")) for e in self.of("join")}

    def members(self) -> set[str]:
        """The ids of the members this node shows now: its ``join`` and
        ``leave`` events replayed in order."""
        current: set[str] = set()
        for e in self.events:
            if e.get("event") == "join":
                current.add(str(e.get("origin")))
            elif e.get("event") == "leave":
                current.discard(str(e.get("origin")))
        return current

    def links_now(self) -> set[str]:
        """The ids of the peers this node has a link to now: its ``peer_up``
        and ``peer_down`` events replayed in order."""
        up: set[str] = set()
        for e in self.events:
            if e.get("event") == "peer_up":
                up.add(str(e.get("peer")))
            elif e.get("event") == "peer_down":
                up.discard(str(e.get("peer")))
        return up

    def linked(self) -> set[str]:
        """The ids of the peers this node has had a direct link with."""
        return {str(e.get("peer")) for e in self.of("peer_up")}

    def leaves(self, origin: str) -> list[Event]:
        """The ``leave`` events of member ``origin``."""
        return [e for e in self.of("leave") if e.get("origin") == origin]

    def texts(self) -> list[str]:
        """The texts of the ``message`` events, in order."""
        return [str(m.get("text")) for m in self.of("message")]

    # -- waiting ------------------------------------------------------------------------

    def wait_event(
        self, kind: str, /, *, timeout_s: float = DEFAULT_TIMEOUT_S, **fields: Any
    ) -> Event:
        """The first event (taken already or later) of ``kind`` whose fields
        include ``fields``; :class:`WaitFailed` after ``timeout_s`` or once the
        process has exited and all its output is taken."""

        def match(ev: Event) -> bool:
            return ev.get("event") == kind and all(ev.get(k) == v for k, v in fields.items())

        return self._wait_first(self.events, match, f"{kind} {fields}", timeout_s)

    def wait_event_where(
        self, pred: Callable[[Event], bool], what: str, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> Event:
        """The first event (taken already or later) for which ``pred`` is
        true; :class:`WaitFailed` as for :meth:`wait_event`."""
        return self._wait_first(self.events, pred, what, timeout_s)

    def wait_line(
        self, pred: Callable[[str], bool], what: str, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> str:
        """The first stdout line (taken already or later) that matches ``pred``;
        :class:`WaitFailed` as for :meth:`wait_event`."""
        return self._wait_first(self.lines, pred, what, timeout_s)

    def _wait_first(
        self, items: list[T], pred: Callable[[T], bool], what: str, timeout_s: float
    ) -> T:
        deadline = time.monotonic() + timeout_s
        seen = 0
        for _ in range(_MAX_ROUNDS):
            for item in items[seen:]:
                if pred(item):
                    return item
            seen = len(items)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self.stdout_done:
                if self.proc.poll() is not None:
                    break  # nothing more will come
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(min(remaining, POLL_S))
            else:
                self.pump(remaining)
        raise WaitFailed(f"{self.label}: no {what} within {timeout_s} s; got {items}")

    def wait(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
        """Wait for the process to exit (:class:`subprocess.TimeoutExpired`
        after ``timeout_s``), then for the readers to finish (up to
        ``timeout_s`` more); take all output; return the exit status."""
        status = self.proc.wait(timeout_s)
        self._join_readers(timeout_s)
        self.pump()
        return status

    # -- input and the end --------------------------------------------------------------

    def send_line(self, text: str) -> None:
        """Write ``text`` and a newline to the process's stdin."""
        assert self.proc.stdin is not None, f"{self.label}: stdin is not a pipe"
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        """End of input: in scripted mode, p2pchat leaves and exits."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """End the process if it still runs (terminate; kill after
        ``timeout_s``), join the reader threads, take the last output and
        close the pipes."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=timeout_s)
        self._join_readers(timeout_s)
        self.pump()
        self.close_stdin()
        if not self.readers_alive:  # closing a stream a thread still reads could block
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()

    def describe(self) -> str:
        """Recent output, for a failure report: events, junk and stderr."""
        self.pump()
        lines = [f"--- {self.label} (pid {self.proc.pid}, rc {self.proc.poll()})"]
        lines += [f"  out: {json.dumps(e, ensure_ascii=False)}" for e in self.events[-60:]]
        if not self.json_mode:
            lines += [f"  out: {line}" for line in self.lines[-60:]]
        lines += [f"  junk: {j}" for j in self.junk[-10:]]
        lines += [f"  err: {e}" for e in self.stderr[-30:]]
        return "\n".join(lines)


def env_with_path(path: str | os.PathLike[str]) -> dict[str, str]:
    """This process's environment with ``path`` first on ``PYTHONPATH``, so
    that a child ``python -m p2pchat`` runs the code under ``path`` (a
    checkout) whether or not p2pchat is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    return env


def _argv_of(proc: subprocess.Popen[str]) -> list[str]:
    args = proc.args
    if isinstance(args, str | bytes | os.PathLike):
        return [os.fsdecode(args)]
    return [os.fsdecode(a) for a in args]


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    procs: Sequence[NodeProcess],
    *,
    must_run: Iterable[NodeProcess] | None = None,
    settle_s: float = SETTLE_S,
) -> float:
    """Pump the output of ``procs`` until ``predicate()`` holds; return the
    seconds it took.

    Raises :class:`WaitFailed` (with every process's recent output) after
    ``timeout_s``, or at once when one of ``must_run`` (default: ``procs``)
    has exited.  Before raising, output is collected for ``settle_s`` more
    (0: just what has been read), for the report and for a caller that
    catches it and looks again."""
    if not procs:
        raise ValueError("wait_until needs at least one process")
    must_run = list(procs if must_run is None else must_run)
    start = time.monotonic()
    end = start + timeout_s
    why = f"timed out after {timeout_s:.1f} s"
    for _ in range(_MAX_ROUNDS):
        for p in procs:
            p.pump()
        if predicate():
            return time.monotonic() - start
        dead = [p.label for p in must_run if p.proc.poll() is not None]
        if dead:
            why = f"{', '.join(dead)} exited"
            break
        if time.monotonic() >= end:
            break
        procs[0].pump(POLL_S)  # waits for output instead of sleeping blindly
    pump_for(procs, settle_s)
    raise WaitFailed(f"{why} waiting for {what}\n" + "\n".join(p.describe() for p in procs))


def pump_for(procs: Sequence[NodeProcess], seconds: float) -> None:
    """Keep taking the output of ``procs`` for ``seconds`` (to catch late lines)."""
    end = time.monotonic() + seconds
    for _ in range(_MAX_ROUNDS):
        if time.monotonic() >= end:
            break
        for p in procs:
            p.pump()
        if procs:
            procs[0].pump(POLL_S)
        else:
            time.sleep(min(POLL_S, max(0.0, end - time.monotonic())))
    for p in procs:
        p.pump()


def wait_exit(procs: Sequence[NodeProcess], timeout_s: float) -> dict[str, int | None]:
    """Wait up to ``timeout_s`` in all for the processes to exit; return
    ``label -> exit status`` (``None``: still running).  Labels should be
    unique."""
    end = time.monotonic() + timeout_s
    codes: dict[str, int | None] = {}
    for p in procs:
        try:
            codes[p.label] = p.proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[p.label] = None
    for p in procs:
        if p.proc.poll() is not None:
            p._join_readers(SETTLE_S)  # the rest of its output, up to its end
        p.pump()
    return codes


def stop(procs: Iterable[NodeProcess], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """:meth:`NodeProcess.stop` each process in turn: when this returns, none
    runs (short of one that survives SIGKILL) and their reader threads have
    ended."""
    for p in procs:
        p.stop(timeout_s)
