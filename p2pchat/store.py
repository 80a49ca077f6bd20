"""The node's embedded store: its identity, counters and the rooms' lines.

One SQLite database (stdlib :mod:`sqlite3`) per data directory,
``<data_dir>/p2pchat.sqlite3`` (mode 0600, directory 0700), or nothing on
disk for an ephemeral node (``--ephemeral``).  It holds:

* ``meta``: the ceiling of the sequence numbers handed out, the highest
  hybrid-clock value of our own lines, and per room the number of our last
  own line;
* ``lines``: every chat line of the window, keyed by message id, with its
  room, origin, line number, hybrid logical clock, whether it is a room
  topic (``topic``, 0 or 1: the index finds the current topic without
  reading bodies; added to a table made before it) and whether it offers a
  file (``offer``, 0 or 1, likewise), and the line itself as
  its JSON text (``wire.encode_json``: the encoding of protocol version 1,
  kept whatever the frames' encoding, so stores outlive a protocol change;
  catch-up forwards the line unchanged, signature and all);
* ``names``: for each display name, the first public key seen using it
  (trust on first use).

The node's key pair is kept next to the database (:mod:`p2pchat.identity`).

**Memory first, disk behind.**  Every query is answered from memory: an
index of the window's lines (id, room, origin, number, clock, topic or not) in a
:class:`~p2pchat.core.history_store.MemoryStore` (the same code the core's
tests and the simulator use; loaded by :meth:`Store.open`: about 0.5 KB a
line, 5 MB and 0.15 s for a full room of 10,000 lines), and the names table
and the counters in plain dicts.  Only :meth:`get`, :meth:`recent` and
:meth:`topic` read the lines' bodies: those not yet committed from memory, the others from
disk on a connection of their own (in WAL mode a read never waits for the
writer).  The database is written by one thread only: **the writer**
(``p2pchat-store-writer``, started by :meth:`Store.open` for an on-disk
store), on its own connection.  An ephemeral store keeps whole lines in
its index and has no database and no writer.

**The writer.**  Every change (a line added, replaced or pruned, a name
remembered or touched, a counter) is applied in memory at once under
``Store._mutex`` and appended, in order, to a list of operations that
:meth:`flush` (or :meth:`add`, every :data:`WRITE_EVERY` operations)
hands to the writer as one batch through a queue of at most
:data:`WRITER_QUEUE` batches.  The writer runs each batch (or all the batches
waiting, together) in one transaction and commits it (WAL,
``synchronous=FULL``: an fsync) without holding ``Store._mutex``: no caller
of a query, of :meth:`add` or of :meth:`flush` waits on the disk.  If the
disk falls so far behind that the queue is full, :meth:`flush` waits for a
place up to :data:`FLUSH_WAIT_S` (logged), then keeps the operations in
memory for the next flush.

**The window.**  Lines older than ``max_age_s`` (by their clock) and lines
beyond the newest ``max_lines`` of their room are deleted by :meth:`prune`
and refused by :meth:`in_window`, so disk and memory stay bounded.  The
writer replays a prune on disk with the same rule, in its place in the
order of operations.

**Durability.**  Own lines are committed (fsync) before :meth:`add_own`
returns, that is before the line is sent: :meth:`add_own` hands everything
waiting to the writer, the received lines before it first, and waits (not
holding ``Store._mutex``; the node calls it outside its own lock) until the
batch holding its line is committed.  Sequence numbers are reserved on disk
a block ahead (:data:`SEQ_BLOCK`), so :meth:`next_seq` waits only if the
writer is 500 numbers behind.  Received lines are committed by the writer
soon after the flush that follows them (the node flushes every 0.5 s): a
crash may lose those not yet committed, and catch-up fetches them again.  A
batch the disk refuses (disk full, read-only) is logged and dropped; its
lines stay in memory, so the running node still serves them, and after a
restart catch-up fetches them again.  :meth:`close` hands over the rest,
waits until the writer has committed everything (at most
:data:`CLOSE_WAIT_S`) and joins it.

**One node per directory.**  :meth:`Store.open` takes an exclusive lock on
``<data_dir>/p2pchat.lock`` (``flock``; ``msvcrt.locking`` on Windows): a
second node on the same directory would share the node id.  A file that is
not a p2pchat database, or that a newer p2pchat made, or that is damaged, is
refused with a
:class:`~p2pchat.errors.StoreError` and left untouched: never a silent reset.

Thread-safety: every method takes ``Store._mutex`` (held for work in
memory and for the reads of :meth:`get`, :meth:`recent` and :meth:`topic`,
never for a write or a commit); any thread may call.  Lock order: ``_Writer._handoff``
(the hand-over of batches, held while waiting for a place in the queue)
before ``Store._mutex``; the writer thread takes only ``Store._mutex``,
briefly, after a commit.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

from p2pchat import wire
from p2pchat.core.history_store import MemoryStore
from p2pchat.errors import LocalError, RemoteProtocolError, StoreError

log = logging.getLogger(__name__)

APPLICATION_ID = 0x70327063
"""``PRAGMA application_id`` of a p2pchat database ("p2pc")."""

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` this code writes and reads."""

DB_NAME = "p2pchat.sqlite3"
LOCK_NAME = "p2pchat.lock"
_WIN_LOCK_OFFSET = 1 << 20
"""Where the Windows lock byte sits in the lock file (past the pid; a lock may lie past the end)."""
SEQ_BLOCK = 1000
"""Sequence numbers reserved on disk at a time (a restart skips the rest); the
next block is asked for when half of this one is used."""

WRITE_EVERY = 64
"""Operations (mostly received lines) waiting in memory after which :meth:`Store.add`
hands them to the writer without waiting for the next :meth:`Store.flush`."""

WRITER_QUEUE = 16
"""Batches handed to the writer and not yet taken by it, at most."""

FLUSH_WAIT_S = 1.0
"""How long :meth:`Store.flush` waits for a place in a full writer queue before
it logs and keeps the operations in memory for the next flush, seconds."""

OWN_WAIT_S = 30.0
"""How long :meth:`Store.add_own` waits for its line to be committed, seconds."""

CLOSE_WAIT_S = 10.0
"""How long :meth:`Store.close` waits for the writer to commit the rest, seconds."""

MAX_NAMES = 10_000
"""Most names the first-key table (trust on first use) keeps; see
:meth:`Store.remember_name` for which go first."""

WRITER_THREAD = "p2pchat-store-writer"
"""The name of the writer thread."""

_INSERT_LINE = (
    "INSERT OR IGNORE INTO lines (id, room, origin, line, hlc, body, topic, offer) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lines (
    id TEXT PRIMARY KEY,
    room TEXT NOT NULL,
    origin TEXT NOT NULL,
    line INTEGER NOT NULL,
    hlc INTEGER NOT NULL,
    body BLOB NOT NULL,
    topic INTEGER NOT NULL DEFAULT 0,
    offer INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lines_order ON lines (room, hlc, origin, line);
CREATE INDEX IF NOT EXISTS lines_origin ON lines (room, origin, line);
CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY, key TEXT NOT NULL);
"""

_Op = tuple[str, Any]
"""One change for the writer: ``("line", Chat)``, ``("del", id)``, ``("meta", (key,
value))``, ``("name", (name, key))``, ``("touch", name)``, ``("unname", name)`` or
``("prune", (now_s, max_age_s, max_lines))``."""


def _lock_dir(path: Path) -> IO[bytes]:
    """Take the directory's lock file, or raise StoreError if another
    process holds it.  Returns the open lock file, which holds the lock
    until it is closed (or the process ends).

    POSIX: ``flock`` on the whole file.  Windows: ``msvcrt.locking`` on one
    byte at :data:`_WIN_LOCK_OFFSET`, past the pid the file holds, since a
    Windows lock is mandatory and the pid must stay readable to the
    refused process.
    """
    lock_path = path / LOCK_NAME
    f = open(lock_path, "a+b")  # noqa: SIM115 - held until close()
    try:
        if sys.platform == "win32":  # no fcntl (a check mypy --platform win32 understands)
            import msvcrt

            f.seek(_WIN_LOCK_OFFSET)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        try:
            pid = f.read(32).decode("ascii", "replace").strip()
        except OSError:  # Windows: the byte range is locked by the holder
            pid = ""
        f.close()
        who = f" (pid {pid})" if pid.isdigit() else ""
        raise StoreError(
            f"the data directory {path} is in use by another p2pchat{who}; give each node "
            "on one machine its own --data-dir, or use --ephemeral"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()).encode("ascii"))
    f.flush()
    return f


_SLIM_OFFER: Final = wire.FileOffer(file="0" * 64, fname="", size=0, chunk=0, root="0" * 64)
"""What the index keeps of a line's file offer: only that it has one."""


def _slim(
    msg_id: str,
    room: str,
    origin: str,
    line: int,
    hlc: int,
    topic: bool = False,
    offer: bool = False,
) -> wire.Chat:
    """What the in-memory index keeps of a line on disk: its id, room, origin,
    number, clock, whether it is a topic and whether it offers a file
    (:data:`_SLIM_OFFER`) (with the index, about 0.5 KB a line, against 1.2
    KB with whole lines); the rest stays on disk.  Rooms and origins are
    shared strings."""
    return wire.Chat(
        id=msg_id,
        origin=sys.intern(origin),
        seq=0,
        name="",
        room=sys.intern(room),
        ts=0.0,
        hops=0,
        text="",
        line=line,
        hlc=hlc,
        topic=topic,
        offer=_SLIM_OFFER if offer else None,
    )


class _Batch:
    """Operations handed to the writer together, and how their commit went
    (``done`` is set once the writer has committed them, or given up with
    ``error``)."""

    __slots__ = ("done", "error", "ops")

    def __init__(self) -> None:
        self.ops: list[_Op] = []
        self.done = threading.Event()
        self.error: str | None = None


def _row(msg: wire.Chat) -> tuple[str, str, str, int, int, bytes, int, int]:
    """The ``lines`` row of ``msg``, in :data:`_INSERT_LINE`'s order."""
    body = wire.encode_json(msg)
    offer = int(msg.offer is not None)
    return (msg.id, msg.room, msg.origin, msg.line, msg.hlc, body, int(msg.topic), offer)


class _Writer:
    """The writer thread of an on-disk store (``p2pchat-store-writer``) and
    the queue of batches that feeds it.

    Args:
        db: the connection it alone writes on (closed when it stops).
        commit: commits ``db`` (the fsync; :meth:`Store._commit`).
        committed: called on the writer thread after each transaction with
            its operations and the error that refused it (None: committed).
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        commit: Callable[[sqlite3.Connection], None],
        committed: Callable[[list[_Op], str | None], None],
    ) -> None:
        self._db = db
        self._commit = commit
        self._committed = committed
        self._queue: queue.Queue[_Batch | None] = queue.Queue(WRITER_QUEUE)
        self._handoff = threading.Lock()  # hands batches to the queue one thread at a time
        self._overflow: list[_Batch] = []  # taken, not yet queued: the queue was full
        self._stopping = False  # told to stop (under _handoff)
        self.stalls = 0
        """How many hand-overs gave up waiting for a place in the full queue."""
        self._thread = threading.Thread(target=self._loop, name=WRITER_THREAD, daemon=True)
        self._thread.start()

    def hand_over(self, take: Callable[[], _Batch | None], wait: float, stop: bool = False) -> bool:
        """Queue the batch ``take()`` returns (called under the hand-over
        lock, so batches are queued in the order they were taken) behind
        those taken before (any thread; the caller holds no lock of the
        store's).

        Args:
            take: gives the changes waiting in the store, or None.
            wait: seconds to wait for the hand-over lock and for a place in a
                full queue; 0 = do not wait.
            stop: then tell the thread to stop.

        Returns:
            True if everything was queued; False if the queue stayed full
            (logged when ``wait`` > 0: the batches wait for the next call),
            another thread held the hand-over with ``wait`` = 0, or the
            writer was stopped.
        """
        deadline = time.monotonic() + wait
        got = self._handoff.acquire(timeout=wait) if wait > 0 else self._handoff.acquire(False)
        if not got:
            return False
        try:
            if self._stopping:
                return False
            batch = take()
            if batch is not None:
                self._overflow.append(batch)
            while self._overflow:
                try:
                    left = deadline - time.monotonic()
                    if left > 0:
                        self._queue.put(self._overflow[0], timeout=left)
                    else:
                        self._queue.put_nowait(self._overflow[0])
                except queue.Full:
                    if wait > 0:
                        self.stalls += 1
                        log.warning(
                            "the store's writer is behind (%d batches queued, %d waiting); "
                            "waited %.1f s, the lines stay in memory until the next flush",
                            self._queue.qsize(),
                            len(self._overflow),
                            wait,
                        )
                    return False
                self._overflow.pop(0)
            if stop:
                self._stopping = True
                self._queue.put(None, timeout=max(0.001, deadline - time.monotonic()))
            return True
        except queue.Full:
            log.error("could not tell the store's writer to stop: its queue stays full")
            return False
        finally:
            self._handoff.release()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end (after ``hand_over(..., stop=True)``);
        True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        """The thread: commit the batches as they come, all those waiting in
        one transaction, until told to stop; then close the connection."""
        stop = False
        while not stop:
            batches = [self._queue.get()]
            while batches[-1] is not None:
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batches[-1] is None
            work = [b for b in batches if b is not None]
            if work:
                self._write(work)
        self._db.close()

    def _write(self, batches: list[_Batch]) -> None:
        """Run ``batches`` in one transaction and commit it.  An error is
        logged and the transaction rolled back: those changes reach only
        memory (the batches carry the error)."""
        db = self._db
        ops = [op for b in batches for op in b.ops]
        error: str | None = None
        try:
            for kind, group in itertools.groupby(ops, key=lambda op: op[0]):
                self._run(kind, [op[1] for op in group])
            self._commit(db)
        except Exception as exc:  # disk full, read-only, I/O: never kill the writer
            error = str(exc) or type(exc).__name__
            lines = sum(1 for op in ops if op[0] == "line")
            log.error(
                "could not write %d lines (%d changes) to the store: %s", lines, len(ops), error
            )
            with contextlib.suppress(sqlite3.Error):
                db.rollback()
        self._committed(ops, error)
        for b in batches:
            b.error = error
            b.done.set()

    def _run(self, kind: str, args: list[Any]) -> None:
        """Apply a run of operations of one ``kind`` (see :data:`_Op`)."""
        db = self._db
        if kind == "line":
            db.executemany(_INSERT_LINE, [_row(m) for m in args])
        elif kind == "del":
            db.executemany("DELETE FROM lines WHERE id = ?", [(i,) for i in args])
        elif kind == "meta":
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", args)
        elif kind == "name":
            db.executemany("INSERT OR IGNORE INTO names (name, key) VALUES (?, ?)", args)
        elif kind == "touch":
            db.executemany(
                "UPDATE names SET rowid = (SELECT MAX(rowid) FROM names) + 1 WHERE name = ?",
                [(n,) for n in args],
            )
        elif kind == "unname":
            db.executemany("DELETE FROM names WHERE name = ?", [(n,) for n in args])
        elif kind == "prune":
            for now_s, max_age_s, max_lines in args:
                self._prune(now_s, max_age_s, max_lines)
        else:  # pragma: no cover - a bug
            raise AssertionError(f"unknown store operation {kind!r}")

    def _prune(self, now_s: float, max_age_s: float, max_lines: int) -> None:
        """The rule of :meth:`MemoryStore.prune` on disk (ties broken by id, as there)."""
        db = self._db
        cutoff = int((now_s - max_age_s) * 1e6)
        ahead = int((now_s + wire.MAX_CLOCK_SKEW_S) * 1e6)
        db.execute("DELETE FROM lines WHERE hlc < ? OR hlc > ?", (cutoff, ahead))
        rooms = [
            r[0]
            for r in db.execute(
                "SELECT room FROM lines GROUP BY room HAVING COUNT(*) > ?", (max_lines,)
            )
        ]
        for room in rooms:
            db.execute(
                "DELETE FROM lines WHERE id IN (SELECT id FROM lines WHERE room = ? "
                "ORDER BY hlc DESC, origin DESC, line DESC, id DESC LIMIT -1 OFFSET ?)",
                (room, max_lines),
            )


class Store:
    """The store of one node: an index in memory, SQLite behind it, written by
    the writer thread (see the module docstring).

    Build it with :meth:`open`; close it with :meth:`close` (idempotent; it
    stops the writer thread, so every store opened must be closed).
    Clock values (``hlc``) are integers, microseconds since the Unix epoch;
    ``now_s`` arguments are wall-clock seconds (``time.time()``).
    """

    def __init__(
        self,
        db: sqlite3.Connection | None,
        path: Path | None,
        lock: IO[bytes] | None,
        max_age_s: float,
        max_lines: int,
    ) -> None:
        self._path = path
        self._lock_file = lock
        # The window's lines, for every query: on disk, only their ids, rooms,
        # origins, numbers and clocks (see _slim); the whole lines when ephemeral.
        self._mem = MemoryStore(max_age_s, max_lines)
        self._bodies: dict[str, wire.Chat] = {}  # id -> a line not yet committed
        self._on_disk = db is not None
        self._reader: sqlite3.Connection | None = None  # reads bodies (under _mutex)
        self._mutex = threading.Lock()
        self._written = threading.Condition(self._mutex)  # the writer committed a batch
        self._next = _Batch()  # operations not yet handed to the writer (under _mutex)
        self._closed = False
        self._names: OrderedDict[str, str] = OrderedDict()  # least recently used first
        self._seq = 0
        self._seq_durable = 0  # the ceiling committed on disk
        self._seq_asked = 0  # the ceiling handed to the writer
        self._last_hlc = 0
        self._lines: dict[str, int] = {}  # room -> the number of our last own line
        self._writer: _Writer | None = None
        if db is not None and path is not None:
            self._load(db)
            self._reader = sqlite3.connect(str(path), check_same_thread=False, timeout=5.0)
            self._reader.execute("PRAGMA query_only = ON")
            self._writer = _Writer(db, lambda db: self._commit(db), self._committed)

    def _load(self, db: sqlite3.Connection) -> None:
        """Read the database into memory and reserve a block of sequence
        numbers (committed before the writer starts)."""
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self._seq = int(meta.get("seq_ceiling", "0"))
        self._last_hlc = int(meta.get("last_hlc", "0"))
        self._lines = {k[5:]: int(v) for k, v in meta.items() if k.startswith("line:")}
        for name, key in db.execute("SELECT name, key FROM names ORDER BY rowid"):
            self._names[str(name)] = str(key)
        # In the order of the window, so that each line lands at the end of its room's list.
        for msg_id, room, origin, line, hlc, topic, offer in db.execute(
            "SELECT id, room, origin, line, hlc, topic, offer FROM lines "
            "ORDER BY room, hlc, origin, line, id"
        ):
            slim = _slim(
                str(msg_id), str(room), str(origin), int(line), int(hlc), bool(topic), bool(offer)
            )
            self._mem.add(slim)
        self._seq_durable = self._seq_asked = self._seq + SEQ_BLOCK
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('seq_ceiling', ?)",
            (str(self._seq_durable),),
        )
        db.commit()

    @classmethod
    def open(
        cls, data_dir: str | None, max_age_s: float = 7 * 86400.0, max_lines: int = 10_000
    ) -> Store:
        """Open (or create) the store of ``data_dir``; None = in memory.

        Reads the whole window into memory and, for a directory, starts the
        writer thread (:meth:`close` stops it).

        Args:
            data_dir: the node's data directory (created, mode 0700), or None
                for an ephemeral node (nothing on disk, a new id each time).
            max_age_s: the window's age limit, seconds.
            max_lines: the window's size limit, lines per room.

        Raises:
            StoreError: the directory is locked by another running node, or
                cannot be created; the database file is not a p2pchat
                database, was made by a newer p2pchat, or is damaged.  The
                file is left as it was.
        """
        if data_dir is None:
            return cls(None, None, None, max_age_s, max_lines)
        path = Path(data_dir).expanduser()
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data directory {path}: {exc}") from None
        lock = _lock_dir(path)
        db_path = path / DB_NAME
        db: sqlite3.Connection | None = None
        try:
            fresh = not db_path.exists()
            db = sqlite3.connect(str(db_path), check_same_thread=False, timeout=5.0)
            cls._check(db, db_path, fresh)
            if fresh:
                os.chmod(db_path, 0o600)
            try:
                return cls(db, db_path, lock, max_age_s, max_lines)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot use {db_path}: {exc}") from None
        except BaseException:
            if db is not None:
                db.close()
            if lock is not None:
                lock.close()
            raise

    @staticmethod
    def _check(db: sqlite3.Connection, db_path: Path, fresh: bool) -> None:
        """Refuse a foreign, newer or damaged file; set up a new one."""
        not_ours = (
            f"{db_path} is not a p2pchat database ({{}}). Move it away or choose another "
            "--data-dir; nothing was changed."
        )
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.DatabaseError as exc:
            raise StoreError(not_ours.format(exc)) from None
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise StoreError(not_ours.format(f"application id {app_id:#x}"))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{db_path} was made by a newer p2pchat (schema {version}, this one reads "
                f"{SCHEMA_VERSION}); upgrade p2pchat or choose another --data-dir"
            )
        try:
            if not fresh and tables:
                check = db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise StoreError(
                        f"{db_path} is damaged ({check}). Move it away to start afresh, "
                        "or choose another --data-dir; nothing was changed."
                    )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            if app_id == 0:
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.executescript(_SCHEMA)
            columns = {r[1] for r in db.execute("PRAGMA table_info(lines)")}
            if "topic" not in columns:  # a table made before topics: none of its lines is one
                db.execute("ALTER TABLE lines ADD COLUMN topic INTEGER NOT NULL DEFAULT 0")
            if "offer" not in columns:  # made before file offers: none of its lines is one
                db.execute("ALTER TABLE lines ADD COLUMN offer INTEGER NOT NULL DEFAULT 0")
            db.commit()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot use {db_path}: {exc}") from None

    # -- properties -------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        """The database file, or None for an ephemeral store."""
        return self._path

    @property
    def ephemeral(self) -> bool:
        """True if nothing is kept on disk."""
        return self._path is None

    @property
    def last_hlc(self) -> int:
        """The highest clock value of our own lines so far (µs), 0 at first."""
        return self._last_hlc

    @property
    def max_age_s(self) -> float:
        """The window's age limit, seconds."""
        return self._mem.max_age_s

    @max_age_s.setter
    def max_age_s(self, value: float) -> None:
        with self._mutex:
            self._mem.max_age_s = value

    @property
    def max_lines(self) -> int:
        """The window's size limit, lines per room."""
        return self._mem.max_lines

    @max_lines.setter
    def max_lines(self, value: int) -> None:
        with self._mutex:
            self._mem.max_lines = value

    # -- counters ---------------------------------------------------------------------

    def _op(self, op: _Op) -> None:
        """Queue a change for the writer (caller holds the mutex)."""
        if self._on_disk:
            self._next.ops.append(op)

    def _indexed(self, msg: wire.Chat) -> wire.Chat:
        """What the index keeps of ``msg``: the whole line for an ephemeral store."""
        if not self._on_disk:
            return msg
        return _slim(
            msg.id, msg.room, msg.origin, msg.line, msg.hlc, msg.topic, msg.offer is not None
        )

    def next_seq(self) -> int:
        """The next sequence number of a flooded message of ours: strictly
        increasing across restarts (numbers are reserved on disk in blocks of
        :data:`SEQ_BLOCK`, so a restart may skip some).  Does not wait on the
        disk unless the writer is half a block behind; then waits for it up to
        :data:`FLUSH_WAIT_S` (logged)."""
        with self._mutex:
            self._seq += 1
            seq = self._seq
            if not self._on_disk or self._closed:
                return seq
            ask = self._seq_asked - seq < SEQ_BLOCK // 2
            if ask:
                self._seq_asked = seq + SEQ_BLOCK
                self._op(("meta", ("seq_ceiling", str(self._seq_asked))))
            durable = seq <= self._seq_durable
        if durable:
            if ask:
                self._hand_over(0)
            return seq
        self._hand_over(FLUSH_WAIT_S)
        with self._written:
            if not self._written.wait_for(lambda: self._seq_durable >= seq, FLUSH_WAIT_S):
                log.error("the store's writer did not save the sequence counter in time")
        return seq

    def next_line(self, room: str) -> int:
        """The number our next line in ``room`` will carry (not reserved)."""
        with self._mutex:
            return self._lines.get(room, 0) + 1

    # -- lines ------------------------------------------------------------------------

    def add_own(self, msg: wire.Chat) -> None:
        """Store a line of ours and wait until it is committed to disk (the
        received lines added before it first).  Called outside the node's
        lock: it waits on the disk, not holding the store's mutex.

        Raises:
            LocalError: the database could not be written (disk full,
                read-only), or the writer did not commit within
                :data:`OWN_WAIT_S`, or the store is closed; the line must not
                be sent.
        """
        with self._mutex:
            if self._closed:
                raise LocalError("could not save the line: the store is closed")
            last = max(self._last_hlc, msg.hlc)
            if not self._on_disk:
                self._mem.add(msg)
                self._lines[msg.room] = msg.line
                self._last_hlc = last
                return
            self._op(("line", msg))
            self._op(("meta", (f"line:{msg.room}", str(msg.line))))
            self._op(("meta", ("last_hlc", str(last))))
            batch = self._next
        deadline = time.monotonic() + OWN_WAIT_S
        self._hand_over(OWN_WAIT_S)
        if not batch.done.wait(max(0.0, deadline - time.monotonic())):
            # It may still be committed later: never give its number to another line.
            with self._mutex:
                self._lines[msg.room] = max(self._lines.get(msg.room, 0), msg.line)
            raise LocalError(
                f"could not save the line: the disk did not answer in {OWN_WAIT_S:g} s"
            )
        if batch.error is not None:
            raise LocalError(f"could not save the line: {batch.error}")
        with self._mutex:
            self._mem.add(self._indexed(msg))  # committed: its body is read from disk
            self._lines[msg.room] = max(self._lines.get(msg.room, 0), msg.line)
            self._last_hlc = max(self._last_hlc, msg.hlc)

    def add(self, msg: wire.Chat) -> bool:
        """Store a received line: in memory at once, on disk by the writer
        after the next :meth:`flush` (or sooner).  Never waits on the disk.

        Returns:
            True if the line was new (False after :meth:`close`).
        """
        with self._mutex:
            if self._closed or not self._mem.add(self._indexed(msg)):
                return False
            if self._on_disk:
                self._bodies[msg.id] = msg
            self._op(("line", msg))
            full = len(self._next.ops) >= WRITE_EVERY
        if full:
            self._hand_over(0)
        return True

    def flush(self) -> None:
        """Hand the changes waiting in memory to the writer, which commits
        them soon after.  Does not wait on the disk unless the writer's queue
        is full (:data:`WRITER_QUEUE` batches): then waits for a place up to
        :data:`FLUSH_WAIT_S`, logs a warning and keeps the changes for the
        next flush."""
        self._hand_over(FLUSH_WAIT_S)

    def holds(self, msg: wire.Chat) -> bool:
        """True if ``msg`` (by its id) is held."""
        with self._mutex:
            return self._mem.holds(msg)

    def has_line(self, room: str, origin: str, line: int) -> bool:
        """True if line number ``line`` of ``origin`` in ``room`` is held."""
        with self._mutex:
            return self._mem.has_line(room, origin, line)

    def count(self, room: str) -> int:
        """How many lines of ``room`` are held."""
        with self._mutex:
            return self._mem.count(room)

    def floor(self, room: str, now_s: float) -> int:
        """The lowest clock value the window of ``room`` still takes (µs):
        the age limit, or the clock of the oldest kept line once the room
        holds ``max_lines`` lines not in the future (``hlc`` at most
        ``now_s``).  It is therefore never above ``now_s``."""
        with self._mutex:
            return self._mem.floor(room, now_s)

    def in_window(self, room: str, hlc: int, now_s: float) -> bool:
        """True if a line of ``room`` with clock ``hlc`` belongs in the window."""
        with self._mutex:
            return self._mem.in_window(room, hlc, now_s)

    def top_lines(self, room: str) -> dict[str, int]:
        """Per origin with numbered lines in ``room``, the highest line number held."""
        with self._mutex:
            return self._mem.top_lines(room)

    def summary(self, room: str, max_origins: int = wire.MAX_SYNC_ORIGINS) -> list[wire.Have]:
        """Our version vector of ``room`` for a ``sync``: per origin with
        numbered lines, the run ``lo..hi`` held from its lowest line on, with
        the :func:`~p2pchat.history.run_digest` of that run's ids, most
        recently active origins first, at most ``max_origins``."""
        with self._mutex:
            return self._mem.summary(room, max_origins)

    def run_ids(self, room: str, origin: str, lo: int, hi: int) -> list[str] | None:
        """The ids of ``origin``'s lines ``lo..hi`` in ``room``, in line
        order, or None unless every one of them is held."""
        with self._mutex:
            return self._mem.run_ids(room, origin, lo, hi)

    def line_id(self, room: str, origin: str, line: int) -> str | None:
        """The (lowest) id of the line numbered ``line`` of ``origin`` in
        ``room``, or None if none is held."""
        with self._mutex:
            return self._mem.line_id(room, origin, line)

    def replace(self, old_id: str, msg: wire.Chat) -> None:
        """Keep ``msg`` instead of the line ``old_id`` (an equivocation was
        resolved in ``msg``'s favour); on disk by the writer, in order."""
        with self._mutex:
            if self._closed:
                return
            self._mem.replace(old_id, self._indexed(msg))
            if self._on_disk:
                self._bodies.pop(old_id, None)
                self._bodies[msg.id] = msg
            self._op(("del", old_id))
            self._op(("line", msg))

    def missing(
        self, room: str, have: Mapping[str, tuple[int, int]], since_hlc: int, limit: int
    ) -> list[str]:
        """Ids of the numbered lines of ``room`` with clock >= ``since_hlc``
        that a peer with version vector ``have`` (origin -> (lo, hi)) may
        lack: the newest ``limit`` of them, oldest first."""
        with self._mutex:
            return self._mem.missing(room, have, since_hlc, limit)

    def get(self, ids: Sequence[str]) -> list[wire.Chat]:
        """The lines with these ids, in the order given; unknown ids skipped."""
        with self._mutex:
            return self._whole(self._mem.get(ids))

    def recent(self, room: str, n: int) -> list[wire.Chat]:
        """The last ``n`` lines of ``room`` in the agreed order, oldest first."""
        with self._mutex:
            return self._whole(self._mem.recent(room, n))

    def topic(self, room: str) -> wire.Chat | None:
        """The topic line of ``room`` that sorts last by ``(hlc, origin,
        line)``: the room's current topic (its text "" if it cleared it), or
        None if no topic line is held.  Found in the index; one body read."""
        with self._mutex:
            held = self._mem.topic(room)
            whole = self._whole([held]) if held is not None else []
            return whole[0] if whole else None

    def offers(self, room: str, n: int) -> list[wire.Chat]:
        """The last ``n`` lines of ``room`` that offer a file, in the agreed
        order, oldest first.  Found in the index; ``n`` body reads at most."""
        with self._mutex:
            return self._whole(self._mem.offers(room, n))

    def _whole(self, held: list[wire.Chat]) -> list[wire.Chat]:
        """The whole lines of ``held`` (from the index), in its order: those not
        yet committed from memory, the others read from disk, a row that does
        not decode skipped (caller holds the mutex; a read never waits for the
        writer: WAL)."""
        if not self._on_disk:
            return held
        found = {m.id: m for m in (self._bodies.get(h.id) for h in held) if m is not None}
        need = [h.id for h in held if h.id not in found] if self._reader is not None else []
        for i in range(0, len(need), 500):
            assert self._reader is not None
            chunk = need[i : i + 500]
            marks = ",".join("?" * len(chunk))
            try:
                rows = self._reader.execute(
                    f"SELECT id, body FROM lines WHERE id IN ({marks})", chunk
                ).fetchall()
            except sqlite3.Error as exc:
                log.error("could not read %d stored lines: %s", len(chunk), exc)
                continue
            for msg_id, body in rows:
                msg = self._decode(body)
                if msg is not None:
                    found[str(msg_id)] = msg
        return [found[h.id] for h in held if h.id in found]

    @staticmethod
    def _decode(body: Any) -> wire.Chat | None:
        try:
            msg = wire.decode_json(bytes(body))
        except RemoteProtocolError as exc:  # a damaged row: skip it, say so
            log.error("skipped a stored line that does not decode: %s", exc)
            return None
        return msg if isinstance(msg, wire.Chat) else None

    def prune(self, now_s: float) -> int:
        """Delete the lines outside the window, in every room, and the lines
        stamped more than :data:`~p2pchat.wire.MAX_CLOCK_SKEW_S` ahead of
        ``now_s`` (nodes refuse such lines; a store that took them before
        that rule is repaired by the first prune, which runs at start).  In
        memory at once; the writer deletes the same lines on disk.

        Returns:
            How many lines were deleted.
        """
        with self._mutex:
            if self._closed:
                return 0
            deleted = self._mem.prune(now_s)
            if deleted:
                for msg in [m for m in self._bodies.values() if not self._mem.holds(m)]:
                    del self._bodies[msg.id]
                self._op(("prune", (now_s, self._mem.max_age_s, self._mem.max_lines)))
            return deleted

    # -- names ------------------------------------------------------------------------

    def first_key(self, name: str) -> str | None:
        """The first public key (hex) this node saw using ``name``, or None."""
        with self._mutex:
            return self._names.get(name)

    def remember_name(
        self, name: str, key: str, keep: Callable[[], Collection[str]] | None = None
    ) -> None:
        """Keep ``key`` as the first key seen with ``name`` (trust on first
        use); a name already known keeps its first key.

        The table holds at most :data:`MAX_NAMES` names: past that, the
        names least recently remembered or touched (:meth:`touch_name`) go
        first (a tenth of the table at a time), except those ``keep()``
        returns (the names of the members present; asked only when the table
        is full), so a flood of fresh keys under fresh names cannot grow the
        disk without end, nor push out the names of the people in the room."""
        with self._mutex:
            if self._closed or name in self._names:
                return
            self._names[name] = key
            self._op(("name", (name, key)))
            if len(self._names) > MAX_NAMES:
                kept = {name, *(keep() if keep else ())}
                excess = len(self._names) - MAX_NAMES + MAX_NAMES // 10
                victims = list(itertools.islice((n for n in self._names if n not in kept), excess))
                for victim in victims:
                    del self._names[victim]
                    self._op(("unname", victim))

    def touch_name(self, name: str) -> None:
        """Mark ``name`` as recently used (its entry is evicted last)."""
        with self._mutex:
            if self._closed or name not in self._names:
                return
            self._names.move_to_end(name)
            self._op(("touch", name))

    def name_count(self) -> int:
        """How many names the first-key table holds."""
        with self._mutex:
            return len(self._names)

    # -- the writer -------------------------------------------------------------------

    def _hand_over(self, wait: float, stop: bool = False) -> bool:
        """Give the changes waiting in memory to the writer as one batch
        (see :meth:`_Writer.hand_over`); True at once for an ephemeral store."""
        if self._writer is None:
            return True
        return self._writer.hand_over(self._take, wait, stop)

    def _take(self) -> _Batch | None:
        """The batch of changes waiting, replaced by an empty one, or None."""
        with self._mutex:
            if not self._next.ops:
                return None
            batch, self._next = self._next, _Batch()
            return batch

    def _committed(self, ops: list[_Op], error: str | None) -> None:
        """After the writer's transaction of ``ops`` (writer thread): what is
        on disk now is read from there (a refused batch stays in memory)."""
        ceiling = max(
            (int(p[1]) for k, p in ops if k == "meta" and p[0] == "seq_ceiling"), default=0
        )
        with self._written:
            if error is None:
                self._seq_durable = max(self._seq_durable, ceiling)
                for msg_id, line in ((a.id, a) for kind, a in ops if kind == "line"):
                    if self._bodies.get(msg_id) is line:  # not added again since
                        del self._bodies[msg_id]
            self._written.notify_all()

    def _commit(self, db: sqlite3.Connection) -> None:
        """Commit the writer's transaction (the fsync; tests slow it down)."""
        db.commit()

    @property
    def writer_stalls(self) -> int:
        """How many times a hand-over to the writer (:meth:`flush`,
        :meth:`add_own`, :meth:`close`) gave up waiting for a place in its full
        queue: the disk is too slow (logged each time).  For ``/stats``; any
        thread."""
        return 0 if self._writer is None else self._writer.stalls

    def close(self) -> None:
        """Hand over what waits, let the writer commit everything (at most
        :data:`CLOSE_WAIT_S`, else logged: the rest is lost, as in a crash),
        join it, and release the directory.  Idempotent.  Queries still
        answer from memory afterwards; changes are ignored."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._mem.close()
        if self._writer is not None:
            deadline = time.monotonic() + CLOSE_WAIT_S
            if not self._hand_over(CLOSE_WAIT_S, stop=True):
                log.error("could not hand the last changes to the store's writer")
            if not self._writer.join(max(0.0, deadline - time.monotonic())):
                log.error("the store's writer did not finish within %g s", CLOSE_WAIT_S)
        with self._mutex:
            if self._reader is not None:
                self._reader.close()
                self._reader = None  # from now on, get and recent give only what is in memory
        if self._lock_file is not None:
            self._lock_file.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
