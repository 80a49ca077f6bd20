"""The transfer engine alone, sans sockets: links are ints, time is passed in."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from files_net import MemNet, make_file

from p2pchat.files import datawire as dw
from p2pchat.files.engine import MAX_INTERESTED_PER_FILE, Dial, Engine, Holder, Send
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


def test_a_copy_of_a_file_for_one_member_is_served_to_nobody(tmp_path: Path) -> None:
    """bob offers a file to alice alone; alice fetches it (her copy served
    to nobody: ``allowed`` empty).  mallory, a member who learnt the file id,
    asks alice and bob for it while alice fetches, and eve once alice is
    done: "no" to the whole file from both, and not a chunk or a piece of
    the hash list reaches either."""
    make_file(tmp_path / "plan.txt", 40 * 64 * 1024 + 7)
    source, _ = SourceFile.hash(tmp_path / "plan.txt", 64 * 1024)
    offer = offer_for(source.manifest, "plan.txt")
    bob, alice, mallory, eve = "b" * 16, "a" * 16, "c" * 16, "e" * 16
    net = MemNet()
    for node in (bob, alice, mallory, eve):
        (tmp_path / node).mkdir()
        net.engines[node] = Engine(node, tmp_path / node, loopback_ok=True)
    net.engines[bob].offer(offer, source, frozenset({alice}))
    net.run(alice, net.engines[alice].get(offer, [Holder(bob, ["127.0.0.1"], 1)], 0.0, frozenset()))
    d = net.engines[alice].downloads[offer.file_id]
    while (d.partial is None or not d.partial.done_count) and net.now < 10.0:
        net.step()
    assert alice not in net.done  # mid-way: she holds some chunks, not all
    wanted = [Holder(alice, ["127.0.0.1"], 1), Holder(bob, ["127.0.0.1"], 1)]
    net.run(mallory, net.engines[mallory].get(offer, wanted, net.now))
    while alice not in net.done and net.now < 30.0:
        net.step()
    assert net.done[alice].path.read_bytes() == (tmp_path / "plan.txt").read_bytes()
    net.run(eve, net.engines[eve].get(offer, wanted, net.now))
    start = net.now
    while net.now < start + 5.0:
        net.step()
    for thief in (mallory, eve):
        refusals = [(src, m) for src, dst, m in net.sent if dst == thief and isinstance(m, dw.FNo)]
        assert {src for src, _ in refusals} == {alice, bob}
        assert all(m.idx == dw.WHOLE_FILE for _, m in refusals)
        assert not any(
            dst == thief and isinstance(m, dw.FChunk | dw.FPiece) for _, dst, m in net.sent
        )
        assert thief not in net.done
    assert net.engines[alice].counts()["frames_refused"]["file_unknown"] >= 2


def test_of_two_receivers_told_of_each_other_the_lower_node_id_dials(tmp_path: Path) -> None:
    """``fholders`` names a lower and a higher node id than ours: we dial the
    higher at once and wait 0.5 s for the lower to dial us (one data link per
    pair, not two); it did not, so we dial it then."""
    make_file(tmp_path / "f", 300_000)
    source, _ = SourceFile.hash(tmp_path / "f")
    offer = offer_for(source.manifest, "f")
    offerer, low, me, high = "0" * 16, "1" * 16, "5" * 16, "9" * 16
    engine = Engine(me, tmp_path, loopback_ok=True)
    dials = engine.get(offer, [Holder(offerer, ["127.0.0.1"], 1)], 0.0)
    assert [a.holder.node for a in dials if isinstance(a, Dial)] == [offerer]
    engine.link_up(1, offerer, "127.0.0.1", 1, 0.0)
    entries = [dw.HolderEntry(node=n, addrs=["127.0.0.2"], port=2) for n in (low, high)]
    out = engine.receive(1, dw.FHolders(file=offer.file_id, holders=entries), 0.1)
    assert [a.holder.node for a in out if isinstance(a, Dial)] == [high]
    assert not [a for a in engine.tick(0.4) if isinstance(a, Dial)]
    assert [a.holder.node for a in engine.tick(0.7) if isinstance(a, Dial)] == [low]
