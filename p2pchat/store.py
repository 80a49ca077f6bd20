"""The node's embedded store: its identity, counters and the rooms' lines.

One SQLite database (stdlib :mod:`sqlite3`) per data directory,
``<data_dir>/p2pchat.sqlite3`` (mode 0600, directory 0700), or an in-memory
database for an ephemeral node (``--ephemeral``).  It holds:

* ``meta``: the ceiling of the sequence numbers handed out, the highest
  hybrid-clock value of our own lines, and per room the number of our last
  own line;
* ``lines``: every chat line of the window, keyed by message id, with its
  room, origin, line number and hybrid logical clock, and the line itself as
  the JSON body it came in (so catch-up forwards it unchanged, signature
  and all);
* ``names``: for each display name, the first public key seen using it
  (trust on first use).

The node's key pair is kept next to the database (:mod:`p2pchat.identity`).

**The window.**  Lines older than ``max_age_s`` (by their clock) and lines
beyond the newest ``max_lines`` of their room are deleted by :meth:`prune`
and refused by :meth:`in_window`, so disk and memory stay bounded.

**Durability.**  Own lines are committed (WAL, ``synchronous=FULL``: fsync)
before :meth:`add_own` returns, that is before the line is sent.  Received
lines wait in memory and are written and committed in batches by
:meth:`flush`, which the node calls every 0.5 s (or after ``WRITE_EVERY``
lines): a crash may lose the last of those, and catch-up fetches them again.
Every query writes the waiting lines first, so it sees them.  One insert per
line cost about 85 µs on a node that wakes for each line (cold caches), a
quarter of its work; a batch costs a few µs a line.

**One node per directory.**  :meth:`Store.open` takes an exclusive lock on
``<data_dir>/p2pchat.lock`` (``flock``): a second node on the same directory
would share the node id.  A file that is not a p2pchat database, or that a
newer p2pchat made, or that is damaged, is refused with a
:class:`~p2pchat.errors.StoreError` and left untouched: never a silent reset.

Thread-safety: every method takes the store's lock; any thread may call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from p2pchat import history, wire
from p2pchat.core.history_store import newest_missing
from p2pchat.errors import LocalError, RemoteProtocolError, StoreError

log = logging.getLogger(__name__)

APPLICATION_ID = 0x70327063
"""``PRAGMA application_id`` of a p2pchat database ("p2pc")."""

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` this code writes and reads."""

DB_NAME = "p2pchat.sqlite3"
LOCK_NAME = "p2pchat.lock"
SEQ_BLOCK = 1000
"""Sequence numbers reserved on disk at a time (a restart skips the rest)."""
FLUSH_EVERY = 256
"""Received lines written after which the store commits by itself."""

WRITE_EVERY = 64
"""Received lines kept in memory before they are written, at most."""

MAX_NAMES = 10_000
"""Most names the first-key table (trust on first use) keeps; see
:meth:`Store.remember_name` for which go first."""

_INSERT_LINE = (
    "INSERT OR IGNORE INTO lines (id, room, origin, line, hlc, body) VALUES (?, ?, ?, ?, ?, ?)"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lines (
    id TEXT PRIMARY KEY,
    room TEXT NOT NULL,
    origin TEXT NOT NULL,
    line INTEGER NOT NULL,
    hlc INTEGER NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lines_order ON lines (room, hlc, origin, line);
CREATE INDEX IF NOT EXISTS lines_origin ON lines (room, origin, line);
CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY, key TEXT NOT NULL);
"""


def _lock_dir(path: Path) -> IO[str] | None:
    """Take the directory's lock file, or raise StoreError if another
    process holds it.  Returns the open lock file (None where the platform
    has no ``flock``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    lock_path = path / LOCK_NAME
    f = open(lock_path, "a+", encoding="ascii")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read(32).strip()
        f.close()
        who = f" (pid {pid})" if pid.isdigit() else ""
        raise StoreError(
            f"the data directory {path} is in use by another p2pchat{who}; give each node "
            "on one machine its own --data-dir, or use --ephemeral"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


class Store:
    """The SQLite store of one node (see the module docstring).

    Build it with :meth:`open`; close it with :meth:`close` (idempotent).
    Clock values (``hlc``) are integers, microseconds since the Unix epoch;
    ``now_s`` arguments are wall-clock seconds (``time.time()``).
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path | None,
        lock: IO[str] | None,
        max_age_s: float,
        max_lines: int,
    ) -> None:
        self._db = db
        self._path = path
        self._lock_file = lock
        self.max_age_s = max_age_s
        self.max_lines = max_lines
        self._mutex = threading.Lock()
        self._pending = 0
        self._rows: list[tuple[str, str, str, int, int, bytes]] = []  # received, not written
        self._row_ids: set[str] = set()
        self._closed = False
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self._names: dict[str, str] = {}  # a cache of the names table
        self._name_count = int(db.execute("SELECT COUNT(*) FROM names").fetchone()[0])
        self._seq_ceiling = int(meta.get("seq_ceiling", "0"))
        self._seq = self._seq_ceiling
        self._last_hlc = int(meta.get("last_hlc", "0"))
        self._lines: dict[str, int] = {
            k[5:]: int(v) for k, v in meta.items() if k.startswith("line:")
        }
        # (room, origin) -> the highest line number held: answers "held?" for
        # the next live line of an origin without a query (see holds()).
        self._top: dict[tuple[str, str], int] = {}
        self._load_top()
        db.commit()

    def _load_top(self) -> None:
        self._top = {
            (str(room), str(origin)): int(top)
            for room, origin, top in self._db.execute(
                "SELECT room, origin, MAX(line) FROM lines WHERE line > 0 GROUP BY room, origin"
            )
        }

    @classmethod
    def open(
        cls, data_dir: str | None, max_age_s: float = 7 * 86400.0, max_lines: int = 10_000
    ) -> Store:
        """Open (or create) the store of ``data_dir``; None = in memory.

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
            mem = sqlite3.connect(":memory:", check_same_thread=False)
            mem.executescript(_SCHEMA)
            return cls(mem, None, None, max_age_s, max_lines)
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
            return cls(db, db_path, lock, max_age_s, max_lines)
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

    # -- counters ---------------------------------------------------------------------

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def next_seq(self) -> int:
        """The next sequence number of a flooded message of ours: strictly
        increasing across restarts (numbers are reserved on disk in blocks of
        :data:`SEQ_BLOCK`, so a restart may skip some)."""
        with self._mutex:
            self._seq += 1
            if self._seq > self._seq_ceiling:
                self._seq_ceiling = self._seq + SEQ_BLOCK
                try:
                    self._set_meta("seq_ceiling", str(self._seq_ceiling))
                    self._db.commit()
                    self._pending = 0
                except sqlite3.Error as exc:
                    log.error("could not save the sequence counter: %s", exc)
            return self._seq

    def next_line(self, room: str) -> int:
        """The number our next line in ``room`` will carry (not reserved)."""
        with self._mutex:
            return self._lines.get(room, 0) + 1

    # -- lines ------------------------------------------------------------------------

    @staticmethod
    def _row(msg: wire.Chat) -> tuple[str, str, str, int, int, bytes]:
        """The ``lines`` row of ``msg``, in :data:`_INSERT_LINE`'s order."""
        return (msg.id, msg.room, msg.origin, msg.line, msg.hlc, wire.encode_body(msg))

    def _insert(self, msg: wire.Chat) -> bool:
        cur = self._db.execute(_INSERT_LINE, self._row(msg))
        if cur.rowcount != 1:
            return False
        self._raise_top(msg)
        return True

    def _raise_top(self, msg: wire.Chat) -> None:
        key = (msg.room, msg.origin)
        if msg.line > self._top.get(key, 0):
            self._top[key] = msg.line

    def _write_rows(self) -> None:
        """Write the received lines waiting in memory (caller holds the mutex)."""
        if not self._rows or self._closed:
            return
        rows, self._rows = self._rows, []
        self._row_ids.clear()
        try:
            self._db.executemany(_INSERT_LINE, rows)
            self._pending += len(rows)
            if self._pending >= FLUSH_EVERY:
                self._db.commit()
                self._pending = 0
        except sqlite3.Error as exc:
            log.error("could not store %d received lines: %s", len(rows), exc)
            with contextlib.suppress(sqlite3.Error):
                self._load_top()  # the lines lost are fetched again by catch-up

    def add_own(self, msg: wire.Chat) -> None:
        """Store a line of ours and commit it to disk before returning.

        Raises:
            LocalError: the database could not be written (disk full,
                read-only); the line must not be sent.
        """
        with self._mutex:
            self._write_rows()
            try:
                self._insert(msg)
                self._set_meta(f"line:{msg.room}", str(msg.line))
                last = max(self._last_hlc, msg.hlc)
                self._set_meta("last_hlc", str(last))
                self._db.commit()
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.rollback()
                raise LocalError(f"could not save the line: {exc}") from None
            self._pending = 0
            self._lines[msg.room] = msg.line
            self._last_hlc = last

    def add(self, msg: wire.Chat) -> bool:
        """Store a received line (written and committed within
        :meth:`flush`'s period).

        Returns:
            True if the line was new.  A database error is logged, never
            raised: the network thread calling this must go on.
        """
        with self._mutex:
            try:
                if self._closed or msg.id in self._row_ids or self._holds(msg):
                    return False
            except sqlite3.Error as exc:
                log.error("could not store a line from %s: %s", msg.origin, exc)
                return False
            self._rows.append(self._row(msg))
            self._row_ids.add(msg.id)
            self._raise_top(msg)
            if len(self._rows) >= WRITE_EVERY:
                self._write_rows()
            return True

    def flush(self) -> None:
        """Write and commit the received lines not yet committed."""
        with self._mutex:
            self._write_rows()
            if self._pending and not self._closed:
                try:
                    self._db.commit()
                except sqlite3.Error as exc:
                    log.error("could not commit received lines: %s", exc)
                self._pending = 0

    def first_key(self, name: str) -> str | None:
        """The first public key (hex) this node saw using ``name``, or None."""
        with self._mutex:
            key = self._names.get(name)
            if key is None:
                row = self._db.execute("SELECT key FROM names WHERE name = ?", (name,)).fetchone()
                if row is None:
                    return None
                key = str(row[0])
                if len(self._names) >= 4096:
                    self._names.clear()
                self._names[name] = key
            return key

    def remember_name(
        self, name: str, key: str, keep: Callable[[], Collection[str]] | None = None
    ) -> None:
        """Keep ``key`` as the first key seen with ``name`` (trust on first
        use); a name already known keeps its first key.

        The table holds at most :data:`MAX_NAMES` names: past that, the
        names least recently remembered or touched (:meth:`touch_name`) go
        first, except those ``keep()`` returns (the names of the members
        present; asked only when the table is full),
        so a flood of fresh keys under fresh names cannot grow the disk
        without end, nor push out the names of the people in the room."""
        with self._mutex:
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO names (name, key) VALUES (?, ?)", (name, key)
                )
                self._pending += 1
                if cur.rowcount == 1:
                    self._name_count += 1
                    if self._name_count > MAX_NAMES:
                        self._evict_names({name, *(keep() if keep else ())})
            except sqlite3.Error as exc:
                log.error("could not remember the key of %r: %s", name, exc)

    def _evict_names(self, keep: set[str]) -> None:
        """Drop the oldest names beyond :data:`MAX_NAMES` (a tenth of it at
        a time, so eviction is rare); caller holds the mutex."""
        excess = self._name_count - MAX_NAMES + MAX_NAMES // 10
        victims = [
            str(r[0])
            for r in self._db.execute(
                "SELECT name FROM names ORDER BY rowid LIMIT ?", (excess + len(keep),)
            )
            if r[0] not in keep
        ][:excess]
        self._db.executemany("DELETE FROM names WHERE name = ?", [(v,) for v in victims])
        for v in victims:
            self._names.pop(v, None)
        self._name_count -= len(victims)

    def touch_name(self, name: str) -> None:
        """Mark ``name`` as recently used (its entry is evicted last)."""
        with self._mutex:
            try:
                self._db.execute(
                    "UPDATE names SET rowid = (SELECT MAX(rowid) FROM names) + 1 WHERE name = ?",
                    (name,),
                )
                self._pending += 1
            except sqlite3.Error as exc:
                log.error("could not touch the name %r: %s", name, exc)

    def name_count(self) -> int:
        """How many names the first-key table holds."""
        with self._mutex:
            return self._name_count

    def holds(self, msg: wire.Chat) -> bool:
        """True if ``msg`` (by its id) is held.  A numbered line above the
        highest line held of its origin is new without a query: the live
        path asks this for every line."""
        with self._mutex:
            return msg.id in self._row_ids or self._holds(msg)

    def _holds(self, msg: wire.Chat) -> bool:
        if msg.line > self._top.get((msg.room, msg.origin), 0):
            return False
        self._write_rows()
        row = self._db.execute("SELECT 1 FROM lines WHERE id = ?", (msg.id,)).fetchone()
        return row is not None

    def has_line(self, room: str, origin: str, line: int) -> bool:
        """True if line number ``line`` of ``origin`` in ``room`` is held."""
        with self._mutex:
            top = self._top.get((room, origin), 0)
            if line >= top:  # the highest held, or above it (answered without a query)
                return line == top and top > 0
            self._write_rows()
            row = self._db.execute(
                "SELECT 1 FROM lines WHERE room = ? AND origin = ? AND line = ?",
                (room, origin, line),
            ).fetchone()
            return row is not None

    def count(self, room: str) -> int:
        """How many lines of ``room`` are held."""
        with self._mutex:
            self._write_rows()
            return int(
                self._db.execute("SELECT COUNT(*) FROM lines WHERE room = ?", (room,)).fetchone()[0]
            )

    def _floor(self, room: str, now_s: float) -> int:
        self._write_rows()
        floor = max(0, int((now_s - self.max_age_s) * 1e6))
        # Only lines not in the future count: lines stamped ahead of our clock
        # (a peer's lying clock) must never lift the floor above the present,
        # or every honest line would fall below it.
        row = self._db.execute(
            "SELECT hlc FROM lines WHERE room = ? AND hlc <= ? "
            "ORDER BY hlc DESC, origin DESC, line DESC LIMIT 1 OFFSET ?",
            (room, int(now_s * 1e6), self.max_lines - 1),
        ).fetchone()
        if row is not None:
            floor = max(floor, int(row[0]))
        return floor

    def floor(self, room: str, now_s: float) -> int:
        """The lowest clock value the window of ``room`` still takes (µs):
        the age limit, or the clock of the oldest kept line once the room
        holds ``max_lines`` lines not in the future (``hlc`` at most
        ``now_s``).  It is therefore never above ``now_s``."""
        with self._mutex:
            return self._floor(room, now_s)

    def in_window(self, room: str, hlc: int, now_s: float) -> bool:
        """True if a line of ``room`` with clock ``hlc`` belongs in the window."""
        with self._mutex:
            return hlc >= self._floor(room, now_s)

    def summary(self, room: str, max_origins: int = wire.MAX_SYNC_ORIGINS) -> list[wire.Have]:
        """Our version vector of ``room`` for a ``sync``: per origin with
        numbered lines, the run ``lo..hi`` held from its lowest line on, with
        the :func:`run_digest` of that run's ids, most recently active origins
        first, at most ``max_origins``."""
        with self._mutex:
            self._write_rows()
            rows = self._db.execute(
                "SELECT origin, line, hlc, id FROM lines WHERE room = ? AND line > 0 "
                "ORDER BY origin, line",
                (room,),
            ).fetchall()
        # origin -> [lo, hi, hi_hlc, newest hlc, run still open (1/0)]
        runs: dict[str, list[int]] = {}
        run_ids: dict[str, list[str]] = {}  # origin -> the ids of its run lo..hi
        for origin, line, hlc, msg_id in rows:
            run = runs.get(origin)
            if run is None:
                runs[origin] = [line, line, hlc, hlc, 1]
                run_ids[origin] = [msg_id]
                continue
            if run[4] and line == run[1] + 1:
                run[1], run[2] = line, hlc
                run_ids[origin].append(msg_id)
            elif line != run[1]:  # a gap: the run from lo ends here
                run[4] = 0
            run[3] = max(run[3], hlc)
        return [
            wire.Have(origin, run[0], run[1], run[2], history.run_digest(run_ids[origin]))
            for origin, run in sorted(runs.items(), key=lambda kv: kv[1][3], reverse=True)[
                :max_origins
            ]
        ]

    def run_ids(self, room: str, origin: str, lo: int, hi: int) -> list[str] | None:
        """The ids of ``origin``'s lines ``lo..hi`` in ``room``, in line
        order, or None unless every one of them is held."""
        with self._mutex:
            self._write_rows()
            rows = self._db.execute(
                "SELECT line, id FROM lines WHERE room = ? AND origin = ? AND line BETWEEN ? AND ? "
                "ORDER BY line",
                (room, origin, lo, hi),
            ).fetchall()
        if len(rows) != hi - lo + 1 or any(r[0] != lo + i for i, r in enumerate(rows)):
            return None
        return [str(r[1]) for r in rows]

    def line_id(self, room: str, origin: str, line: int) -> str | None:
        """The id of the line numbered ``line`` of ``origin`` in ``room``,
        or None if none is held.  A number above the highest held of that
        origin is answered without a query (the live path asks for every
        line, to catch a sender that signs two lines with one number)."""
        with self._mutex:
            if line > self._top.get((room, origin), 0):
                return None
            self._write_rows()
            row = self._db.execute(
                "SELECT id FROM lines WHERE room = ? AND origin = ? AND line = ? ORDER BY id",
                (room, origin, line),
            ).fetchone()
            return None if row is None else str(row[0])

    def replace(self, old_id: str, msg: wire.Chat) -> None:
        """Keep ``msg`` instead of the line ``old_id`` (an equivocation was
        resolved in ``msg``'s favour); written within :meth:`flush`'s period."""
        with self._mutex:
            if self._closed:
                return
            try:
                self._write_rows()
                self._db.execute("DELETE FROM lines WHERE id = ?", (old_id,))
                self._pending += 1
            except sqlite3.Error as exc:
                log.error("could not replace line %s: %s", old_id, exc)
                return
            self._rows.append(self._row(msg))
            self._row_ids.add(msg.id)
            self._raise_top(msg)

    def missing(
        self, room: str, have: Mapping[str, tuple[int, int]], since_hlc: int, limit: int
    ) -> list[str]:
        """Ids of the numbered lines of ``room`` with clock >= ``since_hlc``
        that a peer with version vector ``have`` (origin -> (lo, hi)) may
        lack: the newest ``limit`` of them, oldest first."""
        with self._mutex:
            self._write_rows()
            rows = self._db.execute(
                "SELECT id, origin, line FROM lines WHERE room = ? AND line > 0 AND hlc >= ? "
                "ORDER BY hlc DESC, origin DESC, line DESC",
                (room, since_hlc),
            ).fetchall()
        return newest_missing(((str(i), str(o), int(n)) for i, o, n in rows), have, limit)

    def get(self, ids: Sequence[str]) -> list[wire.Chat]:
        """The lines with these ids, in the order given; unknown ids skipped."""
        bodies: dict[str, bytes] = {}
        with self._mutex:
            self._write_rows()
            for i in range(0, len(ids), 500):
                chunk = list(ids[i : i + 500])
                marks = ",".join("?" * len(chunk))
                for msg_id, body in self._db.execute(
                    f"SELECT id, body FROM lines WHERE id IN ({marks})", chunk
                ):
                    bodies[msg_id] = body
        return [m for m in (self._decode(bodies[i]) for i in ids if i in bodies) if m is not None]

    @staticmethod
    def _decode(body: Any) -> wire.Chat | None:
        try:
            msg = wire.decode_body(bytes(body))
        except RemoteProtocolError as exc:  # a damaged row: skip it, say so
            log.error("skipped a stored line that does not decode: %s", exc)
            return None
        return msg if isinstance(msg, wire.Chat) else None

    def recent(self, room: str, n: int) -> list[wire.Chat]:
        """The last ``n`` lines of ``room`` in the agreed order, oldest first."""
        with self._mutex:
            self._write_rows()
            rows = self._db.execute(
                "SELECT body FROM lines WHERE room = ? "
                "ORDER BY hlc DESC, origin DESC, line DESC LIMIT ?",
                (room, n),
            ).fetchall()
        out = [m for m in (self._decode(r[0]) for r in reversed(rows)) if m is not None]
        return out

    def prune(self, now_s: float) -> int:
        """Delete the lines outside the window, in every room, and the lines
        stamped more than :data:`~p2pchat.wire.MAX_CLOCK_SKEW_S` ahead of
        ``now_s`` (nodes refuse such lines; a store that took them before
        that rule is repaired by the first prune, which runs at start).

        Returns:
            How many lines were deleted.
        """
        with self._mutex:
            if self._closed:
                return 0
            self._write_rows()
            try:
                cutoff = int((now_s - self.max_age_s) * 1e6)
                ahead = int((now_s + wire.MAX_CLOCK_SKEW_S) * 1e6)
                deleted = self._db.execute(
                    "DELETE FROM lines WHERE hlc < ? OR hlc > ?", (cutoff, ahead)
                ).rowcount
                rooms = [
                    r[0]
                    for r in self._db.execute(
                        "SELECT room FROM lines GROUP BY room HAVING COUNT(*) > ?",
                        (self.max_lines,),
                    )
                ]
                for room in rooms:
                    deleted += self._db.execute(
                        "DELETE FROM lines WHERE id IN (SELECT id FROM lines WHERE room = ? "
                        "ORDER BY hlc DESC, origin DESC, line DESC LIMIT -1 OFFSET ?)",
                        (room, self.max_lines),
                    ).rowcount
                self._db.commit()
                self._pending = 0
                if deleted > 0:
                    self._load_top()
                return max(0, deleted)
            except sqlite3.Error as exc:
                log.error("could not prune the history: %s", exc)
                return 0

    def close(self) -> None:
        """Commit, close the database and release the directory.  Idempotent."""
        with self._mutex:
            if self._closed:
                return
            with contextlib.suppress(sqlite3.Error):
                self._write_rows()
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self._db.commit()
            self._db.close()
            if self._lock_file is not None:
                self._lock_file.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
