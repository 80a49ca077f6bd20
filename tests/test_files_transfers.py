"""File transfers between FileTransfers objects over real data links on 127.0.0.1.

Each peer is a :class:`files_net.FilePeer`: its inbound sockets go through
the real ``Links`` (admission, then the hand-off of a ``data`` hello), its
outbound ones are dialled by ``FileTransfers`` itself.  Hostile holders are
:class:`files_net.HostilePeer`: real sealed links saying what the test wants.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from files_net import LOOPBACK, FilePeer, HostilePeer, make_file, send

from p2pchat.files import datawire as dw
from p2pchat.files import transfers as transfers_module
from p2pchat.files.engine import Holder
from p2pchat.files.errors import NotEnoughSpace
from p2pchat.files.events import FileDone
from p2pchat.files.manifest import Manifest, Offer
from p2pchat.files.partial import (
    FREE_SPACE_MARGIN_BYTES,
    ChunkWriter,
    FileWriter,
    check_free_space,
    open_writer,
)
from p2pchat.files.serve import ServeConfig
from p2pchat.identity import Identity
from p2pchat.transport import BULK_TOS, Link

Make = Callable[..., FilePeer]
SLOW = ServeConfig(rate_bytes_per_s=1024 * 1024, burst_bytes=256 * 1024)
"""An offerer that sends at most 1 MiB/s to each peer (receivers then also
fetch from each other, and a test can act mid-way)."""


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Make]:
    made: list[FilePeer] = []

    def make(name: str, **kw: Any) -> FilePeer:
        peer = FilePeer(tmp_path / name, **kw)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def done_file(peer: FilePeer, offer: Offer) -> FileDone:
    done = peer.done(offer.file_id)
    assert done is not None
    return done


def state(peer: FilePeer, offer: Offer) -> str:
    return next((s.state for s in peer.transfers.status() if s.file == offer.file_id), "")


def done_bytes(peer: FilePeer, offer: Offer) -> int:
    return next((s.done_bytes for s in peer.transfers.status() if s.file == offer.file_id), 0)


def test_offer_get_done_with_the_hash_checked(tmp_path: Path, peers: Make) -> None:
    alice, bob = peers("alice"), peers("bob")
    data = make_file(tmp_path / "report.pdf", 700_000)
    offer = alice.offer(tmp_path / "report.pdf")
    assert offer.name == "report.pdf" and offer.size == 700_000
    bob.transfers.get(offer, [alice.holder()])
    wait_for(lambda: bob.done(offer.file_id) is not None, 20, "bob's file_done")
    done = done_file(bob, offer)
    assert done.path == (tmp_path / "bob" / "dl" / "report.pdf").resolve()
    assert done.path.read_bytes() == data
    assert done.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in (tmp_path / "bob" / "dl").iterdir()) == ["report.pdf"]
    assert bob.progress() and bob.progress()[-1].done_bytes == 700_000
    assert state(bob, offer) == "done" and state(alice, offer) == "offered"
    # The data link's packets are marked bulk (DSCP CS1) at both ends.
    for peer in (alice, bob):
        with peer.transfers._lock:
            socks = [link.sock for link in peer.transfers._links.values()]
        assert socks and all(
            s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == BULK_TOS for s in socks
        )


def test_an_empty_file(tmp_path: Path, peers: Make) -> None:
    alice, bob = peers("alice"), peers("bob")
    (tmp_path / "empty").write_bytes(b"")
    offer = alice.offer(tmp_path / "empty")
    bob.transfers.get(offer, [alice.holder()])
    wait_for(lambda: bob.done(offer.file_id) is not None, 20, "bob's file_done")
    assert done_file(bob, offer).path.read_bytes() == b""


def test_three_receivers_fetch_from_each_other(tmp_path: Path, peers: Make) -> None:
    alice = peers("alice", serve_config=SLOW)
    receivers = [peers(name) for name in ("bob", "carol", "dave")]
    data = make_file(tmp_path / "movie.mkv", 4 * 1024 * 1024)
    offer = alice.offer(tmp_path / "movie.mkv")
    for r in receivers:
        r.transfers.get(offer, [alice.holder()])
    wait_for(
        lambda: all(r.done(offer.file_id) for r in receivers), 60, "three receivers' file_done"
    )
    for r in receivers:
        assert done_file(r, offer).path.read_bytes() == data
    served_by_receivers = sum(
        r.transfers.counts()["counters"].get("chunks_served", 0) for r in receivers
    )
    assert served_by_receivers > 0, "every chunk came from the offerer"
    served_by_alice = alice.transfers.counts()["counters"].get("chunks_served", 0)
    assert served_by_alice < 3 * offer.n_chunks


def test_receivers_finish_after_the_offerer_leaves(tmp_path: Path, peers: Make) -> None:
    """Interrupting the sender: carol fetched the whole file earlier; bob and
    dave know only alice, who tells them of carol (fholders) and of each
    other, then leaves after a few chunks."""
    alice = peers("alice", serve_config=SLOW)
    carol = peers("carol")
    data = make_file(tmp_path / "talk.mp4", 3 * 1024 * 1024)
    offer = alice.offer(tmp_path / "talk.mp4")
    carol.transfers.get(offer, [alice.holder()])
    wait_for(lambda: carol.done(offer.file_id) is not None, 30, "carol's file_done")
    bob, dave = peers("bob"), peers("dave")
    bob.transfers.get(offer, [alice.holder()])
    dave.transfers.get(offer, [alice.holder()])
    wait_for(
        lambda: done_bytes(bob, offer) > 0 and done_bytes(dave, offer) > 0,
        30,
        "a first chunk at bob and dave",
    )
    alice.close()
    wait_for(
        lambda: bob.done(offer.file_id) is not None and dave.done(offer.file_id) is not None,
        60,
        "bob and dave to finish without alice",
    )
    assert done_file(bob, offer).path.read_bytes() == data
    assert done_file(dave, offer).path.read_bytes() == data
    assert carol.transfers.counts()["counters"].get("chunks_served", 0) > 0


class _Liar:
    """A holder that has every chunk, sends a true hash list, and zeros for data."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def __call__(self, peer: HostilePeer, link: Link, msg: Any) -> None:
        m = self.manifest
        if isinstance(msg, dw.FHave):
            send(link, dw.FHave(file=msg.file, map=b"\xff" * ((m.n_chunks + 7) // 8)))
        elif isinstance(msg, dw.FPieceGet):
            hashes, proof = m.piece(msg.piece)
            send(
                link,
                dw.FPiece(
                    file=msg.file, piece=msg.piece, hashes=b"".join(hashes), proof=b"".join(proof)
                ),
            )
        elif isinstance(msg, dw.FGet):
            length = m.span(msg.idx)[1]
            for off in range(0, length, dw.MAX_SLICE_BYTES):
                size = min(dw.MAX_SLICE_BYTES, length - off)
                send(link, dw.FChunk(file=msg.file, idx=msg.idx, off=off, data=bytes(size)))


def _manifest(path: Path) -> Manifest:
    from p2pchat.files.manifest import hash_file

    with open(path, "rb") as f:
        return hash_file(f)[0]


def test_corrupt_chunks_are_fetched_elsewhere_and_the_liar_is_banned(
    tmp_path: Path, peers: Make
) -> None:
    alice, bob = peers("alice", serve_config=SLOW), peers("bob")
    data = make_file(tmp_path / "f.bin", 4 * 1024 * 1024)
    offer = alice.offer(tmp_path / "f.bin")
    liar = HostilePeer(_Liar(_manifest(tmp_path / "f.bin")))
    try:
        bob.transfers.get(offer, [liar.holder(), alice.holder()])
        wait_for(lambda: bob.done(offer.file_id) is not None, 60, "bob's file_done")
    finally:
        liar.close()
    assert done_file(bob, offer).path.read_bytes() == data
    counts = bob.transfers.counts()
    assert counts["frames_refused"]["bad_chunk"] == 3
    assert counts["counters"]["swarm_holders_banned"] == 1


def test_a_path_traversal_name_lands_inside_the_download_dir(tmp_path: Path, peers: Make) -> None:
    alice, bob = peers("alice"), peers("bob")
    data = make_file(tmp_path / "x", 100_000)
    offer = alice.offer(tmp_path / "x")
    # A name no valid offer has (make_offer refuses it): the receiver still copes.
    evil = dataclasses.replace(offer, name="../../../tmp/xfer-evil\u202etxt.exe")
    bob.transfers.get(evil, [alice.holder()])
    wait_for(lambda: bob.done(offer.file_id) is not None, 20, "bob's file_done")
    path = done_file(bob, offer).path
    assert path.parent == (tmp_path / "bob" / "dl").resolve()
    assert "/" not in path.name and "\u202e" not in path.name and not path.name.startswith(".")
    assert path.read_bytes() == data
    assert not (tmp_path / "tmp").exists()


def _part_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "p2pchat-" in p.name)


def test_resume_after_the_receiver_is_killed(tmp_path: Path, peers: Make) -> None:
    alice = peers("alice", serve_config=SLOW)
    data = make_file(tmp_path / "big.iso", 4 * 1024 * 1024)
    offer = alice.offer(tmp_path / "big.iso")
    bob = FilePeer(tmp_path / "bob")
    bob.transfers.get(offer, [alice.holder()])
    wait_for(lambda: done_bytes(bob, offer) >= 2 * 1024 * 1024, 30, "half the file at bob")
    # Past the once-a-second map write: some chunks are marked on disk.
    wait_for(lambda: _marked(tmp_path / "bob" / "dl") > 0, 10, "a chunk map slot written")
    bob.abort()  # as kill -9: nothing flushed, links cut
    assert _part_files(tmp_path / "bob" / "dl") == ["big.iso.p2pchat-map", "big.iso.p2pchat-part"]
    kept = _marked(tmp_path / "bob" / "dl")
    bob2 = peers("bob", identity=bob.identity)
    assert state(bob2, offer) == "waiting"  # re-opened from the index, no holder yet
    bob2.transfers.add_holders(offer.file_id, [alice.holder()])
    wait_for(lambda: bob2.done(offer.file_id) is not None, 30, "bob's file_done after restart")
    assert done_file(bob2, offer).path.read_bytes() == data
    fetched = bob2.transfers.counts()["counters"]["swarm_accepted"]
    assert fetched == offer.n_chunks - kept


def _marked(directory: Path) -> int:
    from p2pchat.files.partial import PartialFile

    maps = [p for p in directory.iterdir() if p.name.endswith(".p2pchat-map")]
    if not maps:
        return 0
    partial = PartialFile.resume(maps[0])
    try:
        return partial.done_count
    finally:
        partial._close_files()


def test_resume_after_the_offerer_restarts(tmp_path: Path, peers: Make) -> None:
    alice = FilePeer(tmp_path / "alice", serve_config=SLOW)
    data = make_file(tmp_path / "doc.pdf", 3 * 1024 * 1024)
    offer = alice.offer(tmp_path / "doc.pdf")
    bob = peers("bob")
    bob.transfers.get(offer, [alice.holder()])
    wait_for(lambda: done_bytes(bob, offer) > 0, 30, "a first chunk at bob")
    port = alice.port
    alice.abort()
    alice2 = peers("alice", identity=alice.identity, port=port)
    assert state(alice2, offer) == "offered"  # from its index, the file unchanged
    wait_for(lambda: bob.done(offer.file_id) is not None, 60, "bob's file_done")
    assert done_file(bob, offer).path.read_bytes() == data


def test_a_changed_offer_is_not_served_after_a_restart(tmp_path: Path, peers: Make) -> None:
    alice = FilePeer(tmp_path / "alice")
    make_file(tmp_path / "doc.pdf", 100_000)
    offer = alice.offer(tmp_path / "doc.pdf")
    alice.close()
    make_file(tmp_path / "doc.pdf", 100_001, seed=2)
    alice2 = peers("alice", identity=alice.identity)
    assert state(alice2, offer) == ""


def test_a_one_member_file_cannot_be_fetched_by_another(tmp_path: Path, peers: Make) -> None:
    alice, bob, carol = peers("alice"), peers("bob"), peers("carol")
    data = make_file(tmp_path / "secret.txt", 300_000)
    offer = alice.offer(tmp_path / "secret.txt", allowed=frozenset({bob.node_id}))
    unknown = dataclasses.replace(offer, file_id=bytes(32))
    carol.transfers.get(offer, [alice.holder()])
    carol.transfers.get(unknown, [alice.holder()])
    bob.transfers.get(offer, [alice.holder()])
    wait_for(lambda: bob.done(offer.file_id) is not None, 20, "bob's file_done")
    assert done_file(bob, offer).path.read_bytes() == data
    wait_for(
        lambda: alice.transfers.counts()["frames_refused"].get("file_unknown", 0) >= 2,
        10,
        "alice to refuse carol twice",
    )
    assert carol.done(offer.file_id) is None
    assert done_bytes(carol, offer) == 0
    assert state(carol, offer) == state(carol, unknown) == "hashes"
    assert _part_files(tmp_path / "carol" / "dl") == []


class _Tap:
    """A TCP proxy on 127.0.0.1 that keeps every byte it relays."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.server = socket.create_server((LOOPBACK, 0))
        self.port = self.server.getsockname()[1]
        self.captured = bytearray()
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, name="tap-accept")
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        try:
            while True:
                a, _ = self.server.accept()
                b = socket.create_connection((LOOPBACK, self.target))
                self.socks += [a, b]
                for src, dst in ((a, b), (b, a)):
                    t = threading.Thread(target=self._pipe, args=(src, dst), name="tap-pipe")
                    t.start()
                    self.threads.append(t)
        except OSError:
            return

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(5.0)
        for s in self.socks:
            s.close()


@pytest.mark.parametrize("secret", [None, b"room secret"], ids=["public", "private"])
def test_a_capture_of_a_transfer_holds_no_plaintext(
    tmp_path: Path, peers: Make, secret: bytes | None
) -> None:
    alice, bob = peers("alice", secret=secret), peers("bob", secret=secret)
    data = make_file(tmp_path / "plain.txt", 600_000)
    offer = alice.offer(tmp_path / "plain.txt")
    tap = _Tap(alice.port)
    try:
        bob.transfers.get(offer, [Holder(alice.node_id, [LOOPBACK], tap.port)])
        wait_for(lambda: bob.done(offer.file_id) is not None, 20, "bob's file_done via the tap")
    finally:
        tap.close()
    assert done_file(bob, offer).path.read_bytes() == data
    captured = bytes(tap.captured)
    assert len(captured) > len(data)  # the whole file went through the tap
    for at in range(0, len(data) - 16, 4099):
        assert data[at : at + 16] not in captured
    assert offer.file_id not in captured  # nor which file it was
    assert offer.root not in captured


def test_peers_of_another_secret_cannot_open_a_data_link(tmp_path: Path, peers: Make) -> None:
    alice, bob = peers("alice", secret=b"one"), peers("bob", secret=b"two")
    make_file(tmp_path / "f", 100_000)
    offer = alice.offer(tmp_path / "f")
    bob.transfers.get(offer, [alice.holder()])
    wait_for(
        lambda: bob.transfers.counts()["counters"].get("data_dial_failed", 0) >= 1,
        15,
        "bob's data link to be refused",
    )
    assert done_bytes(bob, offer) == 0


class _FullDisk:
    """Part-file writers that fail with ENOSPC after ``chunks`` chunk writes."""

    def __init__(self, chunks: int) -> None:
        self.left = chunks

    def __call__(self, path: Path, create: bool) -> ChunkWriter:
        writer = open_writer(path, create)
        if not path.name.endswith(".p2pchat-part"):
            return writer
        outer = self

        class Full(FileWriter):
            def pwrite(self, data: bytes, offset: int) -> None:
                if outer.left <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                outer.left -= 1
                super().pwrite(data, offset)

        assert isinstance(writer, FileWriter)
        full = Full(writer._fd)
        writer._fd = -1
        return full


def test_a_full_disk_fails_with_the_reason_and_keeps_the_chunks(
    tmp_path: Path, peers: Make
) -> None:
    alice = peers("alice")
    data = make_file(tmp_path / "f.bin", 2 * 1024 * 1024)
    offer = alice.offer(tmp_path / "f.bin")
    bob = FilePeer(tmp_path / "bob", open_file=_FullDisk(3))
    try:
        bob.transfers.get(offer, [alice.holder()])
        wait_for(lambda: bob.failed(offer.file_id) is not None, 20, "bob's file_failed")
        failed = bob.failed(offer.file_id)
        assert failed is not None
        assert "disk is full" in failed.reason and "3 of 16 chunks" in failed.reason
        assert "f.bin.p2pchat-part" in failed.reason
        assert state(bob, offer) == "failed"
    finally:
        bob.close()
    assert _marked(tmp_path / "bob" / "dl") == 3
    bob2 = peers("bob", identity=bob.identity)
    bob2.transfers.get(offer, [alice.holder()])
    wait_for(lambda: bob2.done(offer.file_id) is not None, 20, "bob's file_done")
    assert done_file(bob2, offer).path.read_bytes() == data
    assert bob2.transfers.counts()["counters"]["swarm_accepted"] == offer.n_chunks - 3


def test_cancel_keeps_the_part_file_and_get_resumes(
    tmp_path: Path, peers: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = peers("alice", serve_config=SLOW), peers("bob")
    data = make_file(tmp_path / "f.bin", 3 * 1024 * 1024)
    offer = alice.offer(tmp_path / "f.bin")
    bob.transfers.get(offer, [alice.holder()])
    wait_for(lambda: done_bytes(bob, offer) > 0, 20, "a first chunk")
    assert bob.transfers.cancel(offer.file_id)
    assert not bob.transfers.cancel(offer.file_id)
    wait_for(lambda: state(bob, offer) == "cancelled", 5, "the cancelled state")
    assert _part_files(tmp_path / "bob" / "dl") == ["f.bin.p2pchat-map", "f.bin.p2pchat-part"]
    # Resuming needs room for what is missing only: a disk with exactly that
    # (and the margin) free takes it, one byte less refuses it.
    had = done_bytes(bob, offer)
    free = [FREE_SPACE_MARGIN_BYTES + offer.size - had - 1]
    real = check_free_space

    def with_free(directory: Path, needed: int) -> None:
        real(directory, needed, disk_usage=lambda _: (10**12, 0, free[0]))

    monkeypatch.setattr(transfers_module, "check_free_space", with_free)
    with pytest.raises(NotEnoughSpace):
        bob.transfers.get(offer, [alice.holder()])
    free[0] += 1
    bob.transfers.get(offer, [alice.holder()])
    wait_for(lambda: bob.done(offer.file_id) is not None, 30, "bob's file_done")
    assert done_file(bob, offer).path.read_bytes() == data


def _child(*args: str) -> subprocess.Popen[str]:
    here = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=str(here.parent))
    return subprocess.Popen(
        [sys.executable, str(here / "files_child.py"), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGKILL")
def test_resume_after_kill_9_of_the_receiver(tmp_path: Path, peers: Make) -> None:
    alice = peers("alice", serve_config=SLOW)
    data = make_file(tmp_path / "big.iso", 4 * 1024 * 1024)
    offer = alice.offer(tmp_path / "big.iso")
    fields = [offer.file_id.hex(), offer.name, offer.size, offer.chunk_size, offer.root.hex()]
    holder = {"node": alice.node_id, "port": alice.port}
    child = _child("get", str(tmp_path / "bob"), json.dumps(fields), json.dumps(holder))
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        wait_for(lambda: _marked(tmp_path / "bob" / "dl") >= 4, 30, "4 chunks marked at bob")
    finally:
        _kill(child)
    kept = _marked(tmp_path / "bob" / "dl")
    assert 4 <= kept < offer.n_chunks
    bob = peers("bob", identity=Identity.load_or_create(str(tmp_path / "bob" / "state")))
    assert state(bob, offer) == "waiting"
    bob.transfers.get(offer, [alice.holder()])
    wait_for(lambda: bob.done(offer.file_id) is not None, 30, "bob's file_done after kill -9")
    assert done_file(bob, offer).path.read_bytes() == data
    assert bob.transfers.counts()["counters"]["swarm_accepted"] == offer.n_chunks - kept


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGKILL")
def test_resume_after_kill_9_of_the_sender(tmp_path: Path, peers: Make) -> None:
    data = make_file(tmp_path / "big.iso", 3 * 1024 * 1024)
    child = _child("offer", str(tmp_path / "alice"), "0", str(tmp_path / "big.iso"))
    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        f = info["offer"]
        offer = Offer(bytes.fromhex(f[0]), f[1], f[2], f[3], bytes.fromhex(f[4]))
        bob = peers("bob")
        bob.transfers.get(offer, [Holder(info["node"], [LOOPBACK], info["port"])])
        wait_for(lambda: done_bytes(bob, offer) > 0, 30, "a first chunk at bob")
    finally:
        _kill(child)
    assert bob.done(offer.file_id) is None
    again = _child("offer", str(tmp_path / "alice"), str(info["port"]), "-")
    try:
        assert again.stdout is not None and json.loads(again.stdout.readline())["port"]
        wait_for(lambda: bob.done(offer.file_id) is not None, 60, "bob's file_done")
        assert done_file(bob, offer).path.read_bytes() == data
    finally:
        assert again.stdin is not None
        again.stdin.close()
        again.wait(20)
        assert again.stdout is not None
        again.stdout.close()
