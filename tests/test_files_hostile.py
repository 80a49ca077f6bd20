"""Hostile peers on data links: every bound of the file transfers, with the
counter it moves.  Each test fails when its bound is removed (tried: see the
report of the ``xfer`` branch)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from files_net import LOOPBACK, FilePeer, HostilePeer, make_file, send

from p2pchat import wire
from p2pchat.files import datawire as dw
from p2pchat.files.manifest import Manifest, hash_file
from p2pchat.transport import Link


@pytest.fixture
def alice(tmp_path: Path) -> Iterator[FilePeer]:
    peer = FilePeer(tmp_path / "alice")
    yield peer
    peer.close()


@pytest.fixture
def bob(tmp_path: Path) -> Iterator[FilePeer]:
    peer = FilePeer(tmp_path / "bob")
    yield peer
    peer.close()


def _nothing(peer: HostilePeer, link: Link, msg: Any) -> None:
    pass


def _manifest(path: Path) -> Manifest:
    with open(path, "rb") as f:
        return hash_file(f)[0]


class _Holder:
    """A holder that answers have and piece requests truly and chunk
    requests with ``on_get(link, msg)``."""

    def __init__(self, manifest: Manifest, on_get: Any) -> None:
        self.manifest = manifest
        self.on_get = on_get

    def __call__(self, peer: HostilePeer, link: Link, msg: Any) -> None:
        m = self.manifest
        if isinstance(msg, dw.FHave):
            full = bytearray(b"\xff" * ((m.n_chunks + 7) // 8))
            if m.n_chunks % 8:
                full[-1] = (0xFF00 >> (m.n_chunks % 8)) & 0xFF
            send(link, dw.FHave(file=msg.file, map=bytes(full)))
        elif isinstance(msg, dw.FPieceGet):
            hashes, proof = m.piece(msg.piece)
            piece = dw.FPiece(
                file=msg.file, piece=msg.piece, hashes=b"".join(hashes), proof=b"".join(proof)
            )
            send(link, piece)
        elif isinstance(msg, dw.FGet):
            self.on_get(link, msg)


def test_at_most_max_data_links(tmp_path: Path) -> None:
    bob = FilePeer(tmp_path / "bob", max_data_links=2)
    evil = HostilePeer(_nothing)
    try:
        links = [evil.dial(bob.port, source=f"127.0.0.{i}") for i in (2, 3, 4)]
        wait_for(lambda: sum(k.up_at is not None for k in links) == 2, 10, "two links up")
        wait_for(lambda: any(k.done.is_set() for k in links), 10, "one link refused")
        refused = [k for k in links if k.done.is_set()]  # whichever came third
        assert len(refused) == 1 and refused[0].up_at is None
        assert refused[0].refused is not None and refused[0].refused.code == "busy"
        wait_for(
            lambda: bob.transfers.counts()["links_refused"].get("data_busy", 0) == 1,
            5,
            "the refusal counted",
        )
    finally:
        evil.close()
        bob.close()


def test_a_node_without_file_transfers_refuses_data_links(bob: FilePeer) -> None:
    bob.links.data_owner = None
    evil = HostilePeer(_nothing)
    try:
        link = evil.dial(bob.port)
        wait_for(lambda: link.done.is_set(), 10, "the link refused")
        assert link.refused is not None and link.refused.code == "busy"
        assert link.refused.reason == "no file transfers here"
    finally:
        evil.close()


def test_a_malformed_frame_ends_that_data_link_only(
    tmp_path: Path, alice: FilePeer, bob: FilePeer
) -> None:
    data = make_file(tmp_path / "f", 2 * 1024 * 1024)
    offer = alice.offer(tmp_path / "f")
    evil = HostilePeer(_nothing)
    try:
        link = evil.dial(alice.port)
        wait_for(lambda: link.up_at is not None, 10, "the hostile data link up")
        bob.transfers.get(offer, [alice.holder()])
        link.send(wire.encode_frame(wire.Keepalive()))  # fine on a data link
        link.send(wire.HEADER.pack(3) + b"\x93\xa4chat")  # a chat frame: not a data message
        wait_for(lambda: link.done.is_set(), 10, "alice to end the hostile link")
        wait_for(lambda: bob.done(offer.file_id) is not None, 20, "bob's file_done")
        assert bob.done(offer.file_id).path.read_bytes() == data  # type: ignore[union-attr]
        wait_for(
            lambda: alice.transfers.counts()["frames_refused"].get("data_malformed") == 1,
            5,
            "the frame counted",
        )
    finally:
        evil.close()


def test_fholders_over_32_is_malformed(tmp_path: Path, alice: FilePeer) -> None:
    evil = HostilePeer(_nothing)
    try:
        link = evil.dial(alice.port)
        wait_for(lambda: link.up_at is not None, 10, "the hostile data link up")
        entry = dw.HolderEntry(node="0" * 16, addrs=[LOOPBACK], port=1)
        body = dw._encoder.encode(dw.FHolders(file=bytes(32), holders=[entry] * 33))
        link.send(wire.HEADER.pack(len(body)) + body)
        wait_for(lambda: link.done.is_set(), 10, "alice to end the hostile link")
        wait_for(
            lambda: alice.transfers.counts()["frames_refused"].get("data_malformed") == 1,
            5,
            "the frame counted",
        )
    finally:
        evil.close()


def test_at_most_64_holders_per_download(tmp_path: Path, alice: FilePeer, bob: FilePeer) -> None:
    make_file(tmp_path / "f", 100_000)
    offer = alice.offer(tmp_path / "f")
    # Holders that do not answer (port 9 on 127.0.0.2..: nothing listens): bob
    # remembers 64 of the 100 offered, the rest are counted and dropped.
    fake = [
        dw.HolderEntry(node=os.urandom(8).hex(), addrs=[f"127.0.1.{i}"], port=9) for i in range(100)
    ]

    def tell(peer: HostilePeer, link: Link, msg: Any) -> None:
        if isinstance(msg, dw.FHave):
            for at in range(0, 100, 32):
                send(link, dw.FHolders(file=msg.file, holders=fake[at : at + 32]))

    evil = HostilePeer(tell)
    try:
        bob.transfers.get(offer, [evil.holder()])
        wait_for(
            lambda: bob.transfers.counts()["rate_limited"].get("file_holders", 0) == 37,
            10,
            "36 + 1 holders over the bound (the hostile one is the first)",
        )
    finally:
        evil.close()


def test_at_most_4_chunks_reassembled_per_link(tmp_path: Path, bob: FilePeer) -> None:
    make_file(tmp_path / "f", 2 * 1024 * 1024)
    manifest = _manifest(tmp_path / "f")
    from p2pchat.files.manifest import offer_for

    offer = offer_for(manifest, "f")

    def first_slices(link: Link, msg: dw.FGet) -> None:
        for idx in range(5):  # the beginnings of 5 chunks, none finished
            send(link, dw.FChunk(file=msg.file, idx=idx, off=0, data=bytes(dw.MAX_SLICE_BYTES)))

    evil = HostilePeer(_Holder(manifest, first_slices))
    try:
        bob.transfers.get(offer, [evil.holder()])
        wait_for(
            lambda: bob.transfers.counts()["frames_refused"].get("data_reassembly", 0) >= 1,
            10,
            "bob to refuse a fifth chunk at once",
        )
        wait_for(lambda: all(k.done.is_set() for k in evil.links), 10, "the link closed")
    finally:
        evil.close()


def test_slices_out_of_order_end_the_link(tmp_path: Path, bob: FilePeer) -> None:
    make_file(tmp_path / "f", 1024 * 1024)
    manifest = _manifest(tmp_path / "f")
    from p2pchat.files.manifest import offer_for

    offer = offer_for(manifest, "f")

    def skip_ahead(link: Link, msg: dw.FGet) -> None:
        send(link, dw.FChunk(file=msg.file, idx=msg.idx, off=0, data=bytes(dw.MAX_SLICE_BYTES)))
        send(link, dw.FChunk(file=msg.file, idx=msg.idx, off=2 * dw.MAX_SLICE_BYTES, data=b"x"))

    evil = HostilePeer(_Holder(manifest, skip_ahead))
    bob.transfers._engine.dial_backoff_s = 0.1  # 5 s after an ordinary close
    try:
        bob.transfers.get(offer, [evil.holder()])
        wait_for(
            lambda: bob.transfers.counts()["frames_refused"].get("data_slices", 0) >= 1,
            10,
            "bob to refuse the slice",
        )
        time.sleep(1.0)  # a negative: nothing to wait for; not redialled within 60 s
        assert bob.transfers.counts()["counters"]["data_links"] == 1
    finally:
        evil.close()


def test_piece_requests_waiting_per_link_are_bounded(tmp_path: Path, alice: FilePeer) -> None:
    with open(tmp_path / "f", "wb") as f:  # 1024 chunks (sparse): a piece of 32 KiB
        f.truncate(256 * 1024 * 1024)
    offer = alice.offer(tmp_path / "f")
    stall = threading.Event()

    def stop_reading(peer: HostilePeer, link: Link, msg: Any) -> None:
        stall.wait(20.0)  # this reader reads no more: alice's send queue fills

    evil = HostilePeer(stop_reading)
    try:
        link = evil.dial(alice.port)
        wait_for(lambda: link.up_at is not None, 10, "the hostile data link up")
        send(link, dw.FHave(file=offer.file_id, map=bytes((offer.n_chunks + 7) // 8)))
        for _ in range(800):
            send(link, dw.FPieceGet(file=offer.file_id, piece=0))
        wait_for(
            lambda: alice.transfers.counts()["rate_limited"].get("file_piece", 0) > 0,
            15,
            "alice to drop piece requests over the bound",
        )
    finally:
        stall.set()
        evil.close()


def test_an_idle_data_link_is_closed(tmp_path: Path, alice: FilePeer) -> None:
    alice.transfers._engine.idle_close_s = 0.5  # 30 s by default
    evil = HostilePeer(_nothing)
    try:
        link = evil.dial(alice.port)
        wait_for(lambda: link.up_at is not None, 10, "the hostile data link up")
        start = time.monotonic()
        wait_for(lambda: link.done.is_set(), 10, "alice to close the idle link")
        assert time.monotonic() - start >= 0.4  # keepalives do not count as use
    finally:
        evil.close()


def test_a_data_link_needs_the_room_secret_not_only_its_tag(tmp_path: Path) -> None:
    """The room's tag is public (hellos, mDNS); a peer that shows it without
    the secret cannot derive the data link's keys: alice's proof does not
    open for it, its own does not open for alice."""
    alice = FilePeer(tmp_path / "alice", secret=b"members only")
    evil = HostilePeer(_nothing, room=alice.wire_room)
    try:
        link = evil.dial(alice.port)
        wait_for(lambda: link.done.is_set(), 10, "the link to fail")
        assert link.up_at is None
        # Each end fails to open the other's proof; whichever fails first closes,
        # so alice counts wrong_secret or sees the link end in its handshake.
        wait_for(lambda: not alice.transfers._links, 10, "alice to drop the link")
        alice.transfers.cancel(bytes(32))  # a round trip through its file thread
        assert alice.transfers.counts()["counters"].get("data_links", 0) == 0
    finally:
        evil.close()
        alice.close()


def test_a_have_map_with_bits_past_the_end_ends_the_link(tmp_path: Path, bob: FilePeer) -> None:
    make_file(tmp_path / "f", 512 * 1024)  # 4 chunks: a map of one byte, 4 bits used
    manifest = _manifest(tmp_path / "f")
    from p2pchat.files.manifest import offer_for

    offer = offer_for(manifest, "f")

    def bad_map(peer: HostilePeer, link: Link, msg: Any) -> None:
        if isinstance(msg, dw.FHave):
            send(link, dw.FHave(file=msg.file, map=b"\xff"))

    evil = HostilePeer(bad_map)
    try:
        bob.transfers.get(offer, [evil.holder()])
        wait_for(
            lambda: bob.transfers.counts()["frames_refused"].get("data_bad_map", 0) == 1,
            10,
            "bob to refuse the map",
        )
        wait_for(lambda: all(k.done.is_set() for k in evil.links), 10, "the link closed")
    finally:
        evil.close()
