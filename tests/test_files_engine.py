"""The transfer engine alone, sans sockets: links are ints, time is passed in."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from files_net import make_file

from p2pchat.files import datawire as dw
from p2pchat.files.engine import MAX_INTERESTED_PER_FILE, Engine, Send
from p2pchat.files.manifest import DEFAULT_CHUNK_BYTES, offer_for
from p2pchat.files.source import SourceFile


def _sent(actions: Sequence[object]) -> list[object]:
    return [dw._decoder.decode(a.frame[4:]) for a in actions if isinstance(a, Send)]


def test_a_holder_remembers_at_most_256_peers_per_file(tmp_path: Path) -> None:
    make_file(tmp_path / "f", 100_000)
    source, _ = SourceFile.hash(tmp_path / "f")
    offer = offer_for(source.manifest, "f")
    engine = Engine("a" * 16, tmp_path, loopback_ok=True)
    engine.offer(offer, source, None)
    for link in range(MAX_INTERESTED_PER_FILE + 44):
        node = os.urandom(8).hex()
        engine.link_up(link, node, "127.0.0.1", 4000 + link, 0.0)
        out = _sent(engine.receive(link, dw.FHave(file=offer.file_id, map=b"\x00"), 0.0))
        assert isinstance(out[0], dw.FHave) and out[0].map == b"\x80"
        holders = next(m for m in out if isinstance(m, dw.FHolders))
        assert len(holders.holders) <= dw.MAX_HOLDERS
    assert len(engine.served[offer.file_id].interested) == MAX_INTERESTED_PER_FILE
    assert engine.counts()["counters"]["file_interested_forgotten"] == 44


def test_an_unknown_file_is_answered_no(tmp_path: Path) -> None:
    engine = Engine("a" * 16, tmp_path, loopback_ok=True)
    engine.link_up(1, "b" * 16, "127.0.0.1", 4000, 0.0)
    out = _sent(engine.receive(1, dw.FHave(file=bytes(32), map=b""), 0.0))
    assert out == [dw.FNo(file=bytes(32), idx=dw.WHOLE_FILE)]
    out = _sent(engine.receive(1, dw.FPieceGet(file=bytes(32), piece=0), 0.0))
    assert out == [dw.FNo(file=bytes(32), idx=dw.WHOLE_FILE)]
    assert engine.counts()["frames_refused"]["file_unknown"] == 2


def test_a_seed_serves_chunks_it_never_sent_before_ones_it_sent(tmp_path: Path) -> None:
    """Two receivers ask the offerer: b for chunk 0 (served), then c for 0 and 2
    in that order while the offerer's link has room for one chunk only: it sends
    c chunk 2 first (never sent, so the swarm gets it soonest), then chunk 0.
    Pieces of the hash list go before any chunk."""
    make_file(tmp_path / "f", 4 * DEFAULT_CHUNK_BYTES)
    source, _ = SourceFile.hash(tmp_path / "f")
    offer = offer_for(source.manifest, "f")
    fid = offer.file_id
    engine = Engine("a" * 16, tmp_path, loopback_ok=True)
    engine.offer(offer, source, None)
    for link, node in ((1, "b" * 16), (2, "c" * 16)):
        engine.link_up(link, node, "127.0.0.1", 4000 + link, 0.0)
    assert engine.receive(1, dw.FGet(file=fid, idx=0), 0.0) == []
    served = _sent(engine.pump(lambda link: True, 0.0))
    assert {(m.idx, m.off) for m in served if isinstance(m, dw.FChunk)} >= {(0, 0)}
    engine.receive(2, dw.FGet(file=fid, idx=0), 0.1)
    engine.receive(2, dw.FGet(file=fid, idx=2), 0.1)
    engine.receive(2, dw.FPieceGet(file=fid, piece=0), 0.1)

    def one_job() -> Callable[[int], bool]:
        left = [1]

        def room(link: int) -> bool:
            left[0] -= 1
            return left[0] >= 0

        return room

    first = _sent(engine.pump(one_job(), 0.2))
    assert [type(m) for m in first] == [dw.FPiece]
    second = _sent(engine.pump(one_job(), 0.2))
    assert {m.idx for m in second if isinstance(m, dw.FChunk)} == {2}
    third = _sent(engine.pump(one_job(), 0.2))
    assert {m.idx for m in third if isinstance(m, dw.FChunk)} == {0}
    assert engine.served[fid].times_sent(0) == 2 and engine.served[fid].times_sent(2) == 1
