"""File offers in the protocol core (issue 14, part 1): on nodes joined in memory.

A room offer is a numbered chat line with ``offer`` set: flooded, kept, caught up
and shown as a :class:`~p2pchat.events.FileOfferEvent` (never a chat line too).  A
one-member offer is sealed in a ``direct`` box.  Hostile peers send offers made by
hand (:class:`corenet.RawPeer`): each bad offer is dropped and counted by its reason.
"""

from __future__ import annotations

import io
from typing import Any

import msgspec
import pytest
from corenet import CoreNet, CoreNode, Link, RawPeer

from p2pchat import wire
from p2pchat.core import offers
from p2pchat.core.admission import REASONS as ADMISSION_REASONS
from p2pchat.core.direct import MAX_DIRECT_OFFERS
from p2pchat.errors import UsageError
from p2pchat.events import FileOfferEvent, MessageEvent
from p2pchat.files.manifest import Offer, file_id_of, hash_file, offer_for
from p2pchat.identity import seal

SETTLE_S = 2.0


def line_of(net: CoreNet, *names: str) -> list[CoreNode]:
    nodes = [net.add(n) for n in names]
    net.line(nodes)
    net.tick_all(SETTLE_S)
    return nodes


def an_offer(size: int = 300_000, name: str = "report.pdf") -> Offer:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    manifest, _ = hash_file(io.BytesIO(data))
    return offer_for(manifest, name)


def fields(offer: Offer, **change: Any) -> wire.FileOffer:
    return msgspec.structs.replace(offers.fields_of(offer), **change)


def offered(node: CoreNode) -> list[FileOfferEvent]:
    return node.of(FileOfferEvent)


def hostile_link(net: CoreNet, to: CoreNode) -> tuple[RawPeer, Link]:
    mallory = net.hostile("mallory")
    link = net.connect(mallory, to)
    assert isinstance(link, Link)
    net.tick_all(1.0)
    return mallory, link


def test_an_offer_reaches_every_member_once_as_an_offer_and_is_kept() -> None:
    net = CoreNet()
    alice, bob, carol = line_of(net, "alice", "bob", "carol")
    offer = an_offer()
    net.offer(bob, offer)
    net.tick_all(1.0)
    for node in (alice, carol):
        (ev,) = offered(node)
        assert (ev.origin, ev.display, ev.offer, ev.self, ev.history) == (
            bob.node_id,
            "bob",
            offer,
            False,
            False,
        )
        assert (ev.to_me, ev.private, ev.line) == (False, False, 1)
        assert node.messages() == []  # never a chat line too
        assert [e.file_hex for e in node.core.offers()] == [offer.file_id.hex()]
        assert node.core.offers()[0].history
        assert node.history() == [(bob.node_id, 1, ev.id, "")]  # kept in the history
    (mine,) = offered(bob)
    assert mine.self and mine.offer == offer and bob.messages() == []
    assert all(not n.stats()["frames_refused"] for n in (alice, bob, carol))


def test_a_node_that_comes_later_gets_the_offer_by_catch_up() -> None:
    net = CoreNet()
    alice, bob = line_of(net, "alice", "bob")
    net.say(alice, "before")
    offer = an_offer(name="slides.odp")
    net.offer(alice, offer)
    net.say(alice, "after")
    net.tick_all(1.0)
    carol = net.add("carol")
    net.line([bob, carol])
    net.tick_all(SETTLE_S)
    (ev,) = offered(carol)
    assert ev.history and ev.offer == offer and ev.origin == alice.node_id
    assert sorted(carol.texts()) == ["after", "before"]
    assert [e.offer for e in carol.core.offers()] == [offer]


def test_a_node_that_was_away_gets_the_offer_when_it_comes_back_and_sees_it_once() -> None:
    net = CoreNet()
    alice, bob, carol = line_of(net, "alice", "bob", "carol")
    net.cut(bob, carol)  # carol is away (a split, or her laptop asleep)
    offer = an_offer(name="minutes.md")
    net.offer(alice, offer)
    net.tick_all(1.0)
    assert [e.offer for e in offered(bob)] == [offer] and offered(carol) == []
    net.line([bob, carol])
    net.tick_all(SETTLE_S)
    (ev,) = offered(carol)  # once, by catch-up
    assert ev.history and ev.offer == offer and ev.origin == alice.node_id
    assert carol.stats()["catchup_in"] == 1
    net.tick_all(SETTLE_S)
    assert len(offered(carol)) == 1 and [e.offer for e in carol.core.offers()] == [offer]


def _bad(offer: Offer, reason: str) -> tuple[wire.FileOffer, str]:
    good = offers.fields_of(offer)
    if reason == "bad_file_name":
        return msgspec.structs.replace(good, fname="../etc/passwd"), reason
    if reason == "bad_chunk_size":
        chunk = 100_000  # not a power of two; the id made for it, so only the chunk is wrong
        fid = file_id_of(offer.size, chunk, offer.root).hex()
        return msgspec.structs.replace(good, chunk=chunk, file=fid), reason
    if reason == "bad_file_size":
        size = 1 << 40  # 1 TiB: above 256 GiB
        fid = file_id_of(size, offer.chunk_size, offer.root).hex()
        return msgspec.structs.replace(good, size=size, file=fid), reason
    return msgspec.structs.replace(good, size=offer.size + 1), reason  # the id no longer fits


REASONS = ["bad_file_name", "bad_chunk_size", "bad_file_size", "bad_file_hash"]
assert set(REASONS) == set(offers.OFFER_REASONS) <= set(ADMISSION_REASONS)


@pytest.mark.parametrize("reason", REASONS)
def test_a_hostile_offer_is_dropped_and_counted_by_its_reason_and_the_link_kept(
    reason: str,
) -> None:
    net = CoreNet()
    alice, bob = line_of(net, "alice", "bob")
    mallory, link = hostile_link(net, bob)
    bad, _ = _bad(an_offer(), reason)
    mallory.send(link.out, mallory.chat("", 1, offer=bad))
    net.tick_all(1.0)
    assert bob.stats()["frames_refused"] == {reason: 1}
    for node in (alice, bob):
        assert offered(node) == [] and node.messages() == [] and node.core.offers() == []
        assert node.history() == []
    assert mallory.name in net.linked(bob)  # dropped, the link kept
    # The same peer's next offer, a good one, is taken.
    good = an_offer(name="fine.txt")
    mallory.send(link.out, mallory.chat("", 1, offer=offers.fields_of(good)))
    net.tick_all(1.0)
    for node in (alice, bob):
        assert [e.offer for e in offered(node)] == [good]


@pytest.mark.parametrize(
    "change",
    [
        {"text": "look"},
        {"action": True},
        {"topic": True},
        {"line": 0},
    ],
    ids=["text", "action", "topic", "unnumbered"],
)
def test_an_offer_line_that_is_also_chat_is_a_protocol_error(change: dict[str, Any]) -> None:
    net = CoreNet()
    alice, bob = line_of(net, "alice", "bob")
    mallory, link = hostile_link(net, bob)
    line = change.pop("line", 1)
    text = change.pop("text", "")
    msg = mallory.chat(text, line, offer=offers.fields_of(an_offer()), **change)
    mallory.send(link.out, msg)
    net.tick_all(1.0)
    assert bob.stats()["frames_refused"] == {"invalid_fields": 1}
    assert mallory.name not in net.linked(bob)  # the link that brought it is closed
    assert offered(alice) == offered(bob) == []


def test_a_one_member_offer_is_read_by_its_recipient_only() -> None:
    net = CoreNet()
    alice, bob, carol = line_of(net, "alice", "bob", "carol")
    offer = an_offer(name="secret plan.txt")
    net.offer(alice, offer, to=carol.node_id)
    net.tick_all(1.0)
    (got,) = offered(carol)
    assert (got.origin, got.offer, got.to_me, got.private, got.self) == (
        alice.node_id,
        offer,
        True,
        True,
        False,
    )
    assert (got.hlc, got.line, got.history) == (0, 0, False)
    assert [e.offer for e in carol.core.offers()] == [offer]
    # bob carried it, sealed: he learns nothing, and shows nothing.
    assert offered(bob) == [] and bob.of(MessageEvent) == [] and bob.core.offers() == []
    assert "undecryptable" not in bob.stats()["frames_refused"]
    (mine,) = offered(alice)
    assert (mine.self, mine.to, mine.to_display, mine.private) == (
        True,
        carol.node_id,
        "carol",
        True,
    )
    assert [e.to for e in alice.core.offers()] == [carol.node_id]
    assert all(n.history() == [] for n in (alice, bob, carol))  # never kept


def _sealed_to(mallory: RawPeer, node: CoreNode, plain: bytes) -> wire.Direct:
    env = mallory.envelope()
    aad = f"{env['id']}:{mallory.node_id}:{node.node_id}".encode()
    eph, box = seal(node.core.s.identity.dh, plain, aad)
    return mallory.signed(wire.Direct(to=node.node_id, eph=eph, box=box, **env))


@pytest.mark.parametrize("reason", [*REASONS, "not_msgpack"])
def test_a_hostile_one_member_offer_is_counted_and_never_shown(reason: str) -> None:
    net = CoreNet()
    (bob,) = line_of(net, "bob")
    mallory, link = hostile_link(net, bob)
    if reason == "not_msgpack":
        plain, counted = bytes([offers.BOX_OFFER]) + b"\xc1 not an offer", "bad_file_hash"
    else:
        bad, counted = _bad(an_offer(), reason)
        array = [bytes.fromhex(bad.file), bad.fname, bad.size, bad.chunk, bytes.fromhex(bad.root)]
        plain = bytes([offers.BOX_OFFER]) + msgspec.msgpack.encode(array)
    mallory.send(link.out, _sealed_to(mallory, bob, plain))
    net.tick_all(1.0)
    assert bob.stats()["frames_refused"] == {counted: 1}
    assert offered(bob) == [] and bob.of(MessageEvent) == [] and bob.core.offers() == []


def test_a_receiver_that_knows_only_lines_finds_no_line_in_an_offers_box() -> None:
    """What a receiver of before does with a box (flag, then UTF-8 text): the
    offer's array never decodes as text, so it drops it as undecryptable."""
    plain = offers.box_plaintext(an_offer())
    assert plain[0] == offers.BOX_OFFER and plain[1] == 0x95
    with pytest.raises(UnicodeDecodeError):
        plain[1:].decode("utf-8")
    assert offers.open_box_offer(plain[1:]) == an_offer()


def test_one_member_offers_kept_for_a_run_are_bounded_and_the_oldest_go_first() -> None:
    """A peer that sends us offer after offer (valid ones) cannot grow the
    table: 256 are kept, the oldest forgotten and counted."""
    net = CoreNet()
    (bob,) = line_of(net, "bob")
    mallory, link = hostile_link(net, bob)
    sent = []
    for n in range(MAX_DIRECT_OFFERS + 10):
        offer = an_offer(size=1000 + n, name=f"f{n}.bin")
        sent.append(offer)
        mallory.send(link.out, _sealed_to(mallory, bob, offers.box_plaintext(offer)))
        if n % 50 == 49:
            net.tick_all(1.0)  # within the origin's burst
    net.tick_all(1.0)
    assert len(offered(bob)) == len(sent)  # each was shown
    kept = [e.offer for e in bob.core.offers()]
    assert kept == sent[-MAX_DIRECT_OFFERS:]
    assert bob.stats()["rate_limited"] == {"direct_offers_full": 10}
    assert bob.stats()["frames_refused"] == {}


def test_our_own_offer_is_checked_by_the_rules_receivers_apply() -> None:
    net = CoreNet()
    alice, bob = line_of(net, "alice", "bob")
    good = an_offer()
    bad_name = Offer(good.file_id, "a/b.txt", good.size, good.chunk_size, good.root)
    lying = Offer(bytes(32), good.name, good.size, good.chunk_size, good.root)
    for bad in (bad_name, lying):
        for to in (None, bob.node_id):
            with pytest.raises(UsageError, match="cannot offer"):
                net.offer(alice, bad, to=to)
    with pytest.raises(UsageError):
        alice.core.new_line("look", False, net.now, net.wall, offer=good)
    net.tick_all(1.0)
    assert offered(alice) == offered(bob) == [] and alice.history() == []
