"""The node's file transfers: offers joined to the transfer engine (issue 14).

:class:`NodeFiles` sits between the node (offers are signed lines of the
core: :meth:`Node.send_offer <p2pchat.node.Node.send_offer>`) and the
threaded :class:`~p2pchat.files.transfers.FileTransfers`, which moves the
bytes over data links (``docs/files.md``).  It decides:

* **when the engine exists**: it is made at the first ``/send`` or ``/get``
  (or ``--accept-files`` taking an offer), or at start when the data
  directory's index (``files.json``) lists downloads to resume or offers to
  serve again.  Until then the node keeps no download directory and refuses
  data links (``busy``: "no file transfers here").
* **where to fetch**: an offer's holders start with its offerer, at the
  addresses its presences gave and at the address of a direct link to it;
  the engine learns the other holders from them (``fholders``).  Every
  :data:`HOLDERS_REFRESH_S` the offerers of unfinished downloads are given
  again (a restart resumes once the offerer is heard of).
* **what a user reads**: the engine's events become
  :class:`~p2pchat.events.FileProgressEvent`, :class:`~p2pchat.events.FileDoneEvent`
  and :class:`~p2pchat.events.FileFailedEvent`; a file that cannot be
  offered is a :class:`~p2pchat.events.Notice`.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final, Protocol, cast

from p2pchat import wire
from p2pchat.core.config import NodeConfig
from p2pchat.core.protocol import Protocol as Core
from p2pchat.errors import LocalError, UsageError
from p2pchat.events import (
    Event,
    FileDoneEvent,
    FileFailedEvent,
    FileOfferEvent,
    FileProgressEvent,
    Notice,
)
from p2pchat.files.engine import Holder
from p2pchat.files.events import FileDone, FileFailed, FileProgress, TransferStatus
from p2pchat.files.manifest import Offer
from p2pchat.files.transfers import INDEX_FILE, FileTransfers
from p2pchat.identity import Identity
from p2pchat.links import Links
from p2pchat.transport import Link

log = logging.getLogger(__name__)

HOLDERS_REFRESH_S: Final = 5.0
"""How often the offerers of unfinished downloads are given to the engine again."""

MAX_WANTED: Final = 256
"""Most downloads this node remembers the offerer of (each ``/get`` adds one)."""

CLOSE_TIMEOUT_S: Final = 5.0
"""How long closing waits for the transfers' threads."""


def default_download_dir() -> Path:
    """The user's downloads folder (``platformdirs``) with ``p2pchat/`` under it."""
    import platformdirs

    return Path(platformdirs.user_downloads_dir()) / "p2pchat"


class FilesHost(Protocol):
    """What :class:`NodeFiles` needs of its node (:class:`p2pchat.node.Node`)."""

    node_id: str
    config: NodeConfig
    links: Links

    @property
    def _lock(self) -> AbstractContextManager[Any]: ...
    @property
    def _core(self) -> Core: ...
    @property
    def _identity(self) -> Identity: ...
    def _emit(self, events: list[Event]) -> None: ...
    def send_offer(self, offer: Offer, to: str | None = None) -> FileOfferEvent: ...
    def offer(self, file_id: str) -> FileOfferEvent | None: ...


class NodeFiles:
    """One node's file transfers (see the module docstring).

    Args:
        host: the node.
        download_dir: where downloads go (created at the first one); None:
            :func:`default_download_dir`.
        accept_files: offers up to this many bytes are fetched without a
            ``/get`` (0: none).  Never beyond the disk's free space minus its
            margin (the engine checks).
    """

    def __init__(
        self,
        host: FilesHost,
        download_dir: str | None,
        accept_files: int,
        chunk_size: int | None = None,
    ) -> None:
        self.host = host
        self.download_dir = Path(download_dir) if download_dir else default_download_dir()
        self.accept_files = accept_files
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._transfers: FileTransfers | None = None
        self._closed = False
        self._wanted: dict[bytes, str] = {}  # file id -> the offerer, for holders
        self._fetched: dict[bytes, str] = {}  # file id -> where it landed (this run)
        self._next_refresh = 0.0

    # -- the engine -------------------------------------------------------------------

    @property
    def state_dir(self) -> Path | None:
        """The data directory (the engine's index lives there), or None (``--ephemeral``)."""
        data_dir = self.host.config.data_dir
        return Path(data_dir) if data_dir else None

    def start(self) -> None:
        """Node start: make the engine now if the index has work to resume
        (downloads, offers to serve again).  The caller's thread."""
        state = self.state_dir
        if state is not None and (state / INDEX_FILE).exists():
            try:
                self._engine()
            except OSError as exc:
                self.host._emit([Notice(text=f"file transfers not resumed: {exc}", level="error")])

    def _engine(self) -> FileTransfers:
        """The engine, made on first use.  Any thread.

        Raises:
            UsageError: the node is closing.
            OSError: the download directory cannot be created.
        """
        with self._lock:
            if self._closed:
                raise UsageError("the node is closed")
            if self._transfers is None:
                host = self.host
                core = host._core
                self._transfers = FileTransfers(
                    identity=host._identity,
                    room=host.config.room,
                    room_secret=core.secret,
                    hello=self._hello,
                    link_config=host.config.link,
                    download_dir=self.download_dir,
                    state_dir=self.state_dir,
                    on_event=self._on_event,
                    loopback_ok=core.s.loopback_ok,
                )
                host.links.data_owner = self._transfers.data_owner
            return self._transfers

    def _hello(self, nonce: str) -> wire.Hello:
        with self.host._lock:
            return self.host._core.hello(nonce)

    # -- what the node's user asks ----------------------------------------------------

    def send(self, path: Path, to: str | None) -> None:
        """``/send``: hash ``path`` on the file thread, serve it, then offer it
        to the room (``to`` None) or to the one member ``to`` (its node id:
        only it may fetch).  Any thread; never blocks.  A file that cannot be
        read or offered is reported as an error :class:`Notice`.

        Raises:
            UsageError: the node is closing.
            TransferError: the download directory cannot be made.
        """
        try:
            transfers = self._engine()
        except OSError as exc:
            raise LocalError(f"cannot use {self.download_dir}: {exc}") from None
        name = path.name

        def done(result: Offer | Exception) -> None:
            if isinstance(result, Exception):
                self._notice(f"cannot offer {name}: {result}")
                return
            try:
                self.host.send_offer(result, to=to)
            except (UsageError, LocalError) as exc:
                self._notice(f"{name} not offered: {exc}")

        allowed = frozenset({to}) if to is not None else None
        transfers.offer_path(path, allowed, done, self.chunk_size)

    def get(self, ev: FileOfferEvent) -> None:
        """``/get``: fetch the file of offer ``ev`` from its offerer (and the
        holders it names).  Any thread.

        Raises:
            NotEnoughSpace: the disk cannot hold it with the margin (nothing created).
            TransferError, LocalError: the download directory is not usable.
            UsageError: our own offer; fetched already in this run; the node
                is closing.
        """
        if ev.self:
            raise UsageError(f"{ev.offer.name} is your own offer")
        with self._lock:
            where = self._fetched.get(ev.offer.file_id)
        if where is not None:
            raise UsageError(f"already fetched: {where}")
        try:
            transfers = self._engine()
        except OSError as exc:
            raise LocalError(f"cannot use {self.download_dir}: {exc}") from None
        # A file offered to us alone is served to nobody from our copy.
        allowed = frozenset[str]() if ev.to_me else None
        transfers.get(ev.offer, self.holders_of(ev.origin), allowed=allowed)
        with self._lock:
            self._wanted.pop(ev.offer.file_id, None)
            self._wanted[ev.offer.file_id] = ev.origin
            while len(self._wanted) > MAX_WANTED:
                self._wanted.pop(next(iter(self._wanted)))

    def cancel(self, file_id: bytes) -> bool:
        """``/cancel``: stop a download; its part file stays (a later ``/get``
        resumes).  Any thread (waits up to 5 s for the file thread).

        Returns:
            Whether a download was stopped.
        """
        transfers = self._transfers
        if transfers is None:
            return False
        with self._lock:
            self._wanted.pop(file_id, None)
        return transfers.cancel(file_id)

    def status(self) -> list[TransferStatus]:
        """Every download and served offer of this run (empty before the
        first).  Any thread."""
        transfers = self._transfers
        return transfers.status() if transfers is not None else []

    def counts(self) -> dict[str, dict[str, int]]:
        """The transfers' counters by kind (``frames_refused``,
        ``rate_limited``, ``links_refused``, ``counters``), for ``/stats``."""
        transfers = self._transfers
        return transfers.counts() if transfers is not None else {}

    # -- what the node tells us -------------------------------------------------------

    def holders_of(self, origin: str) -> list[Holder]:
        """Where to dial node ``origin`` for a file: the address of a direct
        link to it first, then the addresses of its latest presence.  Any
        thread."""
        with self.host._lock:
            core = self.host._core
            addrs: list[str] = []
            port = 0
            link = cast("Link | None", core.links.get(origin))
            if link is not None and link.peer is not None and link.peer.port:
                addrs.append(link.remote[0])
                port = link.peer.port
            heard = core.members.addrs.get(origin)
            if heard is not None:
                where, heard_port = heard
                port = port or heard_port
                addrs.extend(a for a in where if a not in addrs and heard_port == port)
        return [Holder(origin, addrs, port)] if addrs and port else []

    def on_offer(self, ev: FileOfferEvent) -> None:
        """An offer arrived (the node's drain thread): with ``--accept-files``
        a live one small enough is fetched at once."""
        if ev.self or ev.history or not self.accept_files or ev.offer.size > self.accept_files:
            return
        try:
            self.get(ev)
        except (UsageError, LocalError) as exc:
            self._notice(f"{ev.offer.name} not fetched: {exc}")

    def tick(self, now: float) -> None:
        """The router's turn: give the offerers of unfinished downloads to the
        engine again every :data:`HOLDERS_REFRESH_S`.  The router thread."""
        transfers = self._transfers
        if transfers is None or now < self._next_refresh:
            return
        self._next_refresh = now + HOLDERS_REFRESH_S
        busy = {s.file for s in transfers.status() if s.state in ("hashes", "fetching", "waiting")}
        with self._lock:
            wanted = [(f, o) for f, o in self._wanted.items() if f in busy]
        for ev in self._resumed(busy - {f for f, _ in wanted}):
            wanted.append((ev.offer.file_id, ev.origin))
        for file_id, origin in wanted:
            holders = self.holders_of(origin)
            if holders:
                transfers.add_holders(file_id, holders)

    def _resumed(self, files: set[bytes]) -> list[FileOfferEvent]:
        """Offers of downloads resumed from the index (no ``/get`` this run)."""
        found: list[FileOfferEvent] = []
        for file_id in files:
            ev = self.host.offer(file_id.hex())
            if ev is not None:
                with self._lock:
                    if len(self._wanted) < MAX_WANTED:
                        self._wanted[file_id] = ev.origin
                found.append(ev)
        return found

    def close(self) -> None:
        """Stop the transfers (part files flushed, threads joined).  Idempotent."""
        with self._lock:
            self._closed = True
            transfers, self._transfers = self._transfers, None
        if transfers is not None:
            transfers.close(CLOSE_TIMEOUT_S)

    def _notice(self, text: str) -> None:
        self.host._emit([Notice(text=text, level="error")])

    def _on_event(self, ev: object) -> None:
        """The engine's events (its file thread), as the node's events."""
        out: Event | None = None
        if isinstance(ev, FileProgress):
            out = FileProgressEvent(
                file=ev.file.hex(),
                name=ev.name,
                done=ev.done_bytes,
                size=ev.size,
                speed=round(ev.speed_Bps),
                holders=ev.holders,
                eta=None if ev.eta_s is None else round(ev.eta_s, 1),
            )
        elif isinstance(ev, FileDone):
            with self._lock:
                self._wanted.pop(ev.file, None)
                self._fetched[ev.file] = str(ev.path)
                while len(self._fetched) > MAX_WANTED:
                    self._fetched.pop(next(iter(self._fetched)))
            out = FileDoneEvent(
                file=ev.file.hex(), name=ev.name, path=str(ev.path), size=ev.size, sha256=ev.sha256
            )
        elif isinstance(ev, FileFailed):
            out = FileFailedEvent(file=ev.file.hex(), name=ev.name, reason=ev.reason)
        if out is not None:
            self.host._emit([out])
