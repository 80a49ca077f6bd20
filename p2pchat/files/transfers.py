"""The threaded shell of file transfers: data links, a file thread, dialling.

:class:`FileTransfers` carries out what the :class:`~p2pchat.files.engine.Engine`
decides.  Threads (all named, all joined by :meth:`FileTransfers.close`):

* ``p2pchat-files``: the file thread.  It owns the engine: every data-link
  message, link event and user call goes through its inbox (a bounded
  queue) and is handled here, with the hashing and the disk reads and
  writes; it ticks the engine every 50 ms and serves queued chunks on data
  links whose send queue is short (at most :data:`SERVE_QUEUE_FRAMES`
  frames waiting), so a peer that stops reading holds at most that much of
  our memory.
* ``p2pchat-files-dial-<node>``: one short-lived thread per dial (a TCP
  connect with ``link_timeout_s``, then the link is started).
* each data link's reader and writer (:class:`p2pchat.transport.Link`).
  A reader puts each message in the inbox, waiting up to the link timeout
  when it is full: a fast peer is slowed down through TCP, never queued
  without bound.

Data links are the node's own :class:`~p2pchat.transport.Link` with this
object as owner: outbound ones from the start, inbound ones handed over by
:class:`p2pchat.links.Links` (``Links.data_owner``) when the peer's hello
lists ``data``.  Each is sealed (:mod:`p2pchat.files.seal`).

``on_event`` gets :mod:`p2pchat.files.events` values on the file thread,
never under a lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

from p2pchat import identity as ident
from p2pchat import wire
from p2pchat.addrs import normalize
from p2pchat.core.config import LinkConfig
from p2pchat.errors import LocalError
from p2pchat.files import datawire
from p2pchat.files.engine import Close, Dial, Emit, Engine, EngineAction, Holder, Send
from p2pchat.files.errors import DamagedState, TransferError
from p2pchat.files.events import TransferStatus
from p2pchat.files.manifest import Offer, offer_for
from p2pchat.files.partial import PartialFile, WriterFactory, check_free_space, open_writer
from p2pchat.files.seal import data_link_cipher
from p2pchat.files.serve import ServeConfig
from p2pchat.files.source import SourceFile
from p2pchat.files.swarm import SwarmConfig
from p2pchat.identity import Identity
from p2pchat.privacy import RoomSecret
from p2pchat.transport import Link, dial, mark_bulk

log = logging.getLogger(__name__)

TICK_S: Final = 0.05
"""The engine is ticked every 50 ms (timeouts, requests, progress)."""

SERVE_QUEUE_FRAMES: Final = 32
"""A chunk is served on a data link only while fewer frames than this (about
2 MiB) wait in its send queue."""

INBOX_FRAMES: Final = 1024
"""Items the file thread's inbox holds; a link reader waits when it is full."""

INDEX_FILE: Final = "files.json"
"""The index in ``state_dir``: downloads (file id -> chunk map path) and our
offers (:meth:`SourceFile.record` with the offer's name and ``allowed``)."""

Holder = Holder  # re-exported: the node glue builds them


class FileTransfers:
    """File transfers of one node (module docstring).

    Args:
        identity: the node's key pair (data links are proven and sealed with it).
        room: the room's name (for the log; links carry the wire room of
            our own hello).
        room_secret: the private room's :class:`~p2pchat.privacy.RoomSecret`,
            None in a public room (its ``data_salt`` is mixed into every
            data link's keys).
        hello: makes our hello for a new link from a nonce (32 hex digits);
            the ``data`` feature is added to it.
        link_config: timeouts and queue sizes of data links.
        download_dir: where downloads are written (created if missing).
        state_dir: where the index is kept (None: nothing is resumed after
            a restart).
        on_event: gets every event (file thread).
        loopback_ok: loopback addresses from peers may be dialled.
        max_data_links: data links at most, in and out.
        swarm_config, serve_config, rng, open_file: limits, randomness and
            the part files' writer (tests).

    Raises:
        OSError: the download directory cannot be created.
    """

    def __init__(
        self,
        *,
        identity: Identity,
        room: str,
        room_secret: RoomSecret | None,
        hello: Callable[[str], wire.Hello],
        link_config: LinkConfig,
        download_dir: Path,
        state_dir: Path | None,
        on_event: Callable[[object], None],
        loopback_ok: bool,
        max_data_links: int = 16,
        swarm_config: SwarmConfig | None = None,
        serve_config: ServeConfig | None = None,
        rng: random.Random | None = None,
        open_file: WriterFactory = open_writer,
    ) -> None:
        self.identity = identity
        self.room = room
        self._room_salt = room_secret.data_salt() if room_secret is not None else None
        self._hello = hello
        self.link_config = link_config
        self.download_dir = Path(download_dir)
        self.download_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        self._on_event = on_event
        self._lock = threading.Lock()
        self._links: dict[int, Link] = {}  # every data link not closed (node lock-free)
        self._diallers: set[threading.Thread] = set()
        self._closed = False
        self._links_refused: dict[str, int] = {}
        self._frame_errors: dict[str, int] = {}
        self._dialled: dict[int, str] = {}  # outbound link number -> the holder dialled
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue(INBOX_FRAMES)
        self._engine = Engine(
            identity.node_id,
            self.download_dir,
            loopback_ok=loopback_ok,
            max_links=max_data_links,
            rng=rng,
            swarm_config=swarm_config,
            serve_config=serve_config,
            on_index=self._save_index,
            open_file=open_file,
        )
        self._offers_meta: dict[bytes, dict[str, Any]] = {}
        self._counts_cache: dict[str, dict[str, int]] = {
            "frames_refused": {},
            "rate_limited": {},
            "counters": {},
        }
        self._status_cache: list[TransferStatus] = []
        self._load_index()
        self._thread = threading.Thread(target=self._run, name="p2pchat-files", daemon=True)
        self._thread.start()

    # -- the public API (any thread) ------------------------------------------------

    @property
    def data_owner(self) -> FileTransfers:
        """The :class:`~p2pchat.transport.LinkOwner` of data links, for
        ``Links.data_owner``."""
        return self

    def offer_path(
        self,
        path: Path,
        allowed: frozenset[str] | None,
        done: Callable[[Offer | Exception], None],
        chunk_size: int | None = None,
    ) -> None:
        """Offer the file at ``path``: it is hashed on the file thread (in
        chunks of ``chunk_size`` bytes; None: the default for its size), then
        served from where it lies (to ``allowed`` node ids only, or None: the
        room); ``done`` gets the :class:`Offer` to flood, or the exception
        (``TransferError``, ``OSError``, ``BadOffer`` for a name or a chunk
        size that cannot be offered), on the file thread.  Any thread; never
        blocks."""
        self._put(("offer", (Path(path), allowed, done, chunk_size)))

    def get(
        self,
        offer: Offer,
        holders: list[Holder],
        start_now: bool = True,
        allowed: frozenset[str] | None = None,
    ) -> None:
        """Download ``offer`` from ``holders`` (more come with
        :meth:`add_holders` and from holders themselves).  A part file of an
        earlier attempt (in the index) is resumed.  Any thread.

        Args:
            offer: a validated offer.
            holders: where to fetch it.
            start_now: False to only check the space now (the caller starts
                it later with another ``get``).
            allowed: who may fetch our copy (:meth:`Engine.get`: ``None``
                the room, an empty set nobody: a file offered to us alone).

        Raises:
            NotEnoughSpace: the disk cannot hold what is still to fetch with
                the margin to spare (nothing is created).
            TransferError: the download directory is not usable.
        """
        # A download resumed needs room for the chunks it lacks only (the part
        # file holds the rest; where posix_fallocate worked, it holds them all).
        ours = [t for t in self.status() if t.file == offer.file_id and t.state != "offered"]
        had = ours[0].done_bytes if ours else 0
        try:
            check_free_space(self.download_dir, offer.size - had)
        except OSError as exc:
            raise TransferError(f"cannot use {self.download_dir}: {exc}") from None
        if start_now:
            self._put(("get", (offer, list(holders), allowed)))

    def add_holders(self, file_id: bytes, holders: list[Holder]) -> None:
        """More holders of ``file_id`` (from presences); a download waiting
        for holders (resumed after a restart) starts.  Any thread."""
        self._put(("holders", (file_id, list(holders))))

    def cancel(self, file_id: bytes) -> bool:
        """Stop downloading ``file_id``.  The part file and its chunk map are
        KEPT: a later :meth:`get` of the same offer resumes where it stopped.
        Any thread; waits for the file thread (up to 5 s).

        Returns:
            Whether a download was stopped.
        """
        answer: queue.Queue[bool] = queue.Queue(1)
        self._put(("cancel", (file_id, answer)))
        try:
            return answer.get(timeout=5.0)
        except queue.Empty:
            return False

    def status(self) -> list[TransferStatus]:
        """Every download and offer, as of the last tick (50 ms).  Any thread."""
        with self._lock:
            return list(self._status_cache)

    def counts(self) -> dict[str, dict[str, int]]:
        """``frames_refused``, ``rate_limited``, ``links_refused`` and
        ``counters`` of the file transfers (merge into ``/stats``), as of the
        last tick.  Any thread."""
        with self._lock:
            out = {k: dict(v) for k, v in self._counts_cache.items()}
            out["links_refused"] = dict(self._links_refused)
            refused = out.setdefault("frames_refused", {})
            for code, n in self._frame_errors.items():
                refused[code] = refused.get(code, 0) + n
        return out

    def close(self, timeout_s: float) -> None:
        """Stop: part files flushed (their maps written), every data link
        closed, every thread joined within ``timeout_s``.  Idempotent; any
        thread but the file thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            links = list(self._links.values())
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):
            self._inbox.put(("stop", None), timeout=max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._drain()  # a reader waiting on a full inbox goes on, and ends
        for link in links:
            link.close("closing")
        for link in links:
            link.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            diallers = list(self._diallers)
        for t in diallers:
            t.join(max(0.0, deadline - time.monotonic()))

    def abort(self) -> None:
        """Tests: stop as a killed process would: links cut, nothing flushed
        (the part files' maps stay as last written).  Then :meth:`close`."""
        with self._lock:
            self._closed = True
            links = list(self._links.values())
        self._put(("abort", None))
        self._thread.join(10.0)
        self._drain()
        for link in links:
            link.close("aborted")
            link.join(5.0)
        with self._lock:
            diallers = list(self._diallers)
        for t in diallers:
            t.join(5.0)

    def _drain(self) -> None:
        """Empty the inbox once the file thread is gone (nothing will read it)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._inbox.get_nowait()

    # -- LinkOwner (reader threads) ------------------------------------------------------

    def check_hello(self, link: Link, hello: wire.Hello) -> wire.Refuse | None:
        """A data link's peer hello: ourselves, a key not of its node id,
        another room, or one link too many are refused; else the link is
        sealed (:func:`~p2pchat.files.seal.data_link_cipher`) and its
        packets marked as bulk data (:func:`~p2pchat.transport.mark_bulk`)."""
        link.decode_body = datawire.decode_body
        if hello.node == self.identity.node_id:
            return wire.Refuse(code="self", reason="this is a link to myself")
        if not hello.key or not hello.nonce or ident.node_id_of(hello.key) != hello.node:
            return wire.Refuse(code="identity", reason="a hello needs a nonce and its node's key")
        if hello.room != link.hello.room:
            return wire.Refuse(code="room", reason="another room")
        with self._lock:
            if self._closed:
                return wire.Refuse(code="busy", reason="closing")
            if link.direction == "in":
                if len(self._links) >= self._engine.max_links:
                    self._links_refused["data_busy"] = self._links_refused.get("data_busy", 0) + 1
                    return wire.Refuse(code="busy", reason="too many file transfers")
                self._links[link.number] = link
        mark_bulk(link.sock)  # file data queues behind chat where the network honours DSCP
        try:
            link.cipher = data_link_cipher(
                self.identity,
                hello.key,
                link.hello.nonce,
                hello.nonce,
                link.direction == "out",
                self._room_salt,
            )
        except Exception as exc:  # RemoteProtocolError: a bad key
            return wire.Refuse(code="identity", reason=str(exc)[:200])
        return None

    def prove(self, link: Link, hello: wire.Hello) -> wire.Proof:
        """Sign the peer's nonce (as on chat links)."""
        data = wire.proof_bytes(hello.nonce, self.identity.node_id, hello.node, link.hello.room)
        return wire.Proof(sig=self.identity.sign(data))

    def check_proof(self, link: Link, hello: wire.Hello, proof: wire.Proof) -> bool:
        """The peer signed our nonce with the key of its hello."""
        data = wire.proof_bytes(link.hello.nonce, hello.node, self.identity.node_id, hello.room)
        return ident.verify(hello.key, proof.sig, data)

    def on_link_up(self, link: Link) -> None:
        """Handshake done: the engine may use the link."""
        peer = link.peer
        if peer is None:
            link.close("no hello")
            return
        self._put(("up", (link.number, peer.node, normalize(link.remote[0]), peer.port)))

    def on_message(self, link: Link, msg: Any) -> None:
        """A data-link message: to the file thread (waits while its inbox is full)."""
        if self._closed:
            return
        try:
            self._inbox.put(("msg", (link.number, msg)), timeout=self.link_config.link_timeout_s)
        except queue.Full:
            link.close("file thread too slow")

    def on_link_closed(self, link: Link, reason: str, was_up: bool) -> None:
        """The link ended: counted, and the engine told."""
        with self._lock:
            self._links.pop(link.number, None)
            if link.frame_error:  # a malformed frame ended it (datawire)
                code = link.frame_error
                self._frame_errors[code] = self._frame_errors.get(code, 0) + 1
        with self._lock:
            dialled = self._dialled.pop(link.number, None)
        self._put(("down", (link.number, was_up, dialled)))

    # -- the file thread ------------------------------------------------------------------

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._inbox.put(item, timeout=5.0)
        except queue.Full:
            log.warning("file transfers: inbox full, %s dropped", item[0])

    def _run(self) -> None:
        engine = self._engine
        next_tick = time.monotonic()
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                kind, arg = self._inbox.get(timeout=timeout)
            except queue.Empty:
                kind, arg = "tick", None
            now = time.monotonic()
            if kind == "stop":
                engine.close(now)
                return
            if kind == "abort":
                return
            ticked = now >= next_tick
            if ticked:
                next_tick = now + TICK_S
            try:
                actions = self._handle(kind, arg, now)
                if ticked:
                    actions += engine.tick(now)
                actions += engine.pump(self._room, now)
                if ticked or kind != "msg" or any(isinstance(a, Emit) for a in actions):
                    self._refresh(now)  # before the events: status() agrees with them
            except Exception:  # a bug of ours: this input is lost, the rest goes on
                log.exception("file transfers: internal error on %s", kind)
                continue
            self._execute(actions)

    def _handle(self, kind: str, arg: Any, now: float) -> list[EngineAction]:
        engine = self._engine
        if kind == "msg":
            link_id, msg = arg
            return engine.receive(link_id, msg, now)
        if kind == "up":
            link_id, node, host, port = arg
            with self._lock:
                link = self._links.get(link_id)
            if link is None:
                return []
            return engine.link_up(link_id, node, host, port, now)
        if kind == "down":
            link_id, was_up, dialled = arg
            out = engine.link_down(link_id, now)
            if dialled is not None and not was_up:
                out += engine.dial_failed(dialled, now)
            elif dialled is not None:
                engine.dialling.discard(dialled)
            return out
        if kind == "dial_failed":
            return engine.dial_failed(arg, now)
        if kind == "get":
            offer, holders, allowed = arg
            return engine.get(offer, holders, now, allowed)
        if kind == "holders":
            file_id, holders = arg
            return engine.add_holders(file_id, holders, now)
        if kind == "cancel":
            file_id, answer = arg
            answer.put(engine.cancel(file_id, now))
            return []
        if kind == "offer":
            self._offer(*arg)
        return []

    def _offer(
        self,
        path: Path,
        allowed: frozenset[str] | None,
        done: Callable[[Offer | Exception], None],
        chunk_size: int | None,
    ) -> None:
        try:
            source, _sha = SourceFile.hash(path, chunk_size)
            offer = offer_for(source.manifest, source.path.name)
        except (LocalError, OSError, ValueError) as exc:
            done(exc)
            return
        self._offers_meta[offer.file_id] = {
            "record": source.record(),
            "name": offer.name,
            "allowed": _listed(allowed),
        }
        self._engine.offer(offer, source, allowed)
        done(offer)

    def _room(self, link_id: int) -> bool:
        link = self._links.get(link_id)
        return link is not None and link.queued() < SERVE_QUEUE_FRAMES

    def _execute(self, actions: list[EngineAction]) -> None:
        for action in actions:
            if isinstance(action, Send):
                link = self._links.get(action.link)
                if link is not None:
                    link.send(action.frame)
            elif isinstance(action, Emit):
                try:
                    self._on_event(action.event)
                except Exception:
                    log.exception("file transfers: on_event failed")
            elif isinstance(action, Close):
                link = self._links.get(action.link)
                if link is not None:
                    link.close(action.reason)
            elif isinstance(action, Dial):
                self._dial(action.holder)

    def _refresh(self, now: float) -> None:
        status = self._engine.status(now)
        counts = self._engine.counts()
        with self._lock:
            self._engine.handshaking = sum(1 for k in self._links if k not in self._engine.links)
            self._status_cache = status
            self._counts_cache = counts

    # -- dialling ---------------------------------------------------------------------------

    def _dial(self, holder: Holder) -> None:
        with self._lock:
            if self._closed:
                return
            t = threading.Thread(
                target=self._dial_run,
                args=(holder,),
                name=f"p2pchat-files-dial-{holder.node}",
                daemon=True,
            )
            self._diallers.add(t)
        t.start()

    def _dial_run(self, holder: Holder) -> None:
        try:
            try:
                sock, host = dial(list(holder.addrs), holder.port, self.link_config.link_timeout_s)
            except OSError:
                self._put(("dial_failed", holder.node))
                return
            nonce = os.urandom(16).hex()
            hello = self._hello(nonce)
            if "data" not in hello.features:
                hello = msgspec.structs.replace(hello, features=[*hello.features, "data"])
            link = Link(sock, "out", (host, holder.port), self, hello, self.link_config)
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                self._links[link.number] = link
                self._dialled[link.number] = holder.node
            link.start()
        finally:
            with self._lock:
                self._diallers.discard(threading.current_thread())

    # -- the index ------------------------------------------------------------------------

    def _index_path(self) -> Path | None:
        return self.state_dir / INDEX_FILE if self.state_dir is not None else None

    def _save_index(self) -> None:
        """File thread: write the index (atomically: a temporary file renamed)."""
        path = self._index_path()
        if path is None:
            return
        data = {
            "downloads": {
                fid.hex(): {"map": str(p), "allowed": _listed(self._engine.allowed_of(fid))}
                for fid, p in self._engine.index.items()
            },
            "offers": {fid.hex(): meta for fid, meta in self._offers_meta.items()},
        }
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)

    def _load_index(self) -> None:
        """At start: serve our offers again while unchanged; re-open the
        downloads in progress (waiting for holders)."""
        path = self._index_path()
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            offers = dict(data.get("offers", {}))
            downloads = dict(data.get("downloads", {}))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("cannot read %s: %s", path, exc)
            return
        for meta in offers.values():
            try:
                source = SourceFile.from_record(meta["record"])
                offer = offer_for(source.manifest, str(meta["name"]))
                raw = meta.get("allowed")
                allowed = frozenset(str(a) for a in raw) if raw is not None else None
            except (LocalError, KeyError, TypeError, ValueError):
                continue
            if source.unchanged():
                self._offers_meta[offer.file_id] = meta
                self._engine.offer(offer, source, allowed)
        for entry in downloads.values():
            try:
                if isinstance(entry, str):  # the index of a session-7 build: a room file
                    entry = {"map": entry, "allowed": None}
                raw = entry["allowed"]
                allowed = frozenset(str(a) for a in raw) if raw is not None else None
                partial = PartialFile.resume(Path(entry["map"]), open_file=self._engine.open_file)
            except (DamagedState, OSError, KeyError, TypeError):
                continue
            self._engine.adopt_resumed(partial, allowed)


def _listed(allowed: frozenset[str] | None) -> list[str] | None:
    """``allowed`` as the index's JSON keeps it (sorted; None: the room)."""
    return sorted(allowed) if allowed is not None else None
