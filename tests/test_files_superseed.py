"""Super-seeding (``docs/files.md`` §6): the offerer sends every chunk once
before it sends any twice, so that once one copy is out the receivers can
finish from each other.  Engines joined in memory on a virtual clock: links
are pairs of ints, frames are delivered at once, dials always succeed."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from files_net import MemNet, make_file

from p2pchat.files import datawire as dw
from p2pchat.files.engine import Close, Engine, Holder, Send
from p2pchat.files.manifest import offer_for
from p2pchat.files.source import SourceFile

CHUNK = 64 * 1024


def _swarm(tmp_path: Path, receivers: int) -> tuple[MemNet, bytes, str]:
    data = make_file(tmp_path / "report.bin", 40 * CHUNK + 123)
    source, _ = SourceFile.hash(tmp_path / "report.bin", CHUNK)
    offer = offer_for(source.manifest, "report.bin")
    net = MemNet()
    offerer = "0" * 16
    net.engines[offerer] = Engine(offerer, tmp_path, loopback_ok=True, rng=random.Random(1))
    net.engines[offerer].offer(offer, source, None)
    for r in range(1, receivers + 1):
        node = f"{r:016x}"
        (tmp_path / node).mkdir()
        net.engines[node] = Engine(node, tmp_path / node, loopback_ok=True, rng=random.Random(r))
    for node, engine in net.engines.items():
        if node != offerer:
            net.run(node, engine.get(offer, [Holder(offerer, ["127.0.0.1"], 1)], net.now))
    return net, data, offerer


def _chunks_from(net: MemNet, node: str) -> list[int]:
    """The chunks ``node`` sent, in order (one entry per chunk, not per slice)."""
    return [
        m.idx for src, _, m in net.sent if src == node and isinstance(m, dw.FChunk) and m.off == 0
    ]


def test_the_offerer_sends_every_chunk_once_before_any_twice(tmp_path: Path) -> None:
    """Three receivers at once: the offerer's first 41 chunks sent are the
    41 chunks of the file, each once (requests for a chunk already out are
    answered ``finstead`` with one not out yet); everyone ends with the file."""
    net, data, offerer = _swarm(tmp_path, 3)
    while len(net.done) < 3 and net.now < 60.0:
        net.step()
    assert len(net.done) == 3
    for done in net.done.values():
        assert done.sha256 == hashlib.sha256(data).hexdigest()
        assert done.path.read_bytes() == data
    first = _chunks_from(net, offerer)[:41]
    assert sorted(first) == list(range(41))
    assert net.engines[offerer].counts()["counters"]["chunks_instead"] > 0
    assert any(isinstance(m, dw.FInstead) for _, _, m in net.sent)


def test_once_every_chunk_is_out_the_receivers_finish_without_the_offerer(
    tmp_path: Path,
) -> None:
    """The offerer vanishes the moment it has sent each chunk once: the
    receivers, none of them whole yet, fetch the rest from each other."""
    net, data, offerer = _swarm(tmp_path, 4)
    while len(set(_chunks_from(net, offerer))) < 41 and net.now < 60.0:
        net.step()
    assert len(net.done) < 4
    net.stop(offerer)
    while len(net.done) < 4 and net.now < 120.0:
        net.step()
    assert sorted(net.done) == sorted(n for n in net.engines if n != offerer)
    for done in net.done.values():
        assert done.path.read_bytes() == data


def test_a_receiver_refuses_a_chunk_it_has_in_place_of_one_it_asked_for(tmp_path: Path) -> None:
    """A ``finstead`` naming a chunk the receiver has is answered ``fcancel``
    (counted as a substitution); a ``finstead`` past the end ends the link."""
    net, _, offerer = _swarm(tmp_path, 1)
    receiver = "0" * 15 + "1"
    while not _chunks_from(net, offerer) and net.now < 10.0:
        net.step()
    engine = net.engines[receiver]
    fid = next(iter(engine.downloads))
    d = engine.downloads[fid]
    assert d.swarm is not None
    had = next(i for i in range(41) if d.partial is not None and d.partial.is_done(i))
    link = next(lk for (n, lk) in net.peer_of if n == receiver)
    asked = next(iter(d.swarm._holders[offerer].in_flight))
    out = engine.receive(link, dw.FInstead(file=fid, idx=asked, instead=had), net.now)
    sent = [dw.decode_body(a.frame[4:]) for a in out if isinstance(a, Send)]
    assert dw.FCancel(file=fid, idx=had) in sent
    assert d.swarm.counts["substituted"] == 1
    out = engine.receive(link, dw.FInstead(file=fid, idx=0, instead=41), net.now)
    assert [type(a) for a in out] == [Close]
    assert engine.counts()["frames_refused"]["data_invalid_fields"] == 1
