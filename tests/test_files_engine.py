"""The transfer engine alone, sans sockets: links are ints, time is passed in."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from files_net import make_file

from p2pchat.files import datawire as dw
from p2pchat.files.engine import MAX_INTERESTED_PER_FILE, Engine, Send
from p2pchat.files.manifest import offer_for
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
