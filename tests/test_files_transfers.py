"""File transfers between FileTransfers objects over real data links on 127.0.0.1.

Each peer is a :class:`tests.files_net.FilePeer`: its inbound sockets go
through the real ``Links`` (admission, then the hand-off of a ``data``
hello), its outbound ones are dialled by ``FileTransfers`` itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from p2pchat.files.events import FileDone
from tests.conftest import wait_for
from tests.files_net import FilePeer, make_file

CHUNK = 64 * 1024


@pytest.fixture
def peers(tmp_path: Path):
    made: list[FilePeer] = []

    def make(name: str, **kw) -> FilePeer:
        peer = FilePeer(tmp_path / name, **kw)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def test_offer_get_done_with_the_hash_checked(tmp_path: Path, peers) -> None:
    alice, bob = peers("alice"), peers("bob")
    data = make_file(tmp_path / "report.pdf", 700_000)
    offer = alice.offer(tmp_path / "report.pdf")
    assert offer.name == "report.pdf" and offer.size == 700_000
    bob.transfers.get(offer, [alice.holder()])
    wait_for(lambda: bob.done(offer.file_id) is not None, 20, "bob's file_done")
    done = bob.done(offer.file_id)
    assert isinstance(done, FileDone)
    assert done.path == (tmp_path / "bob" / "dl" / "report.pdf").resolve()
    assert done.path.read_bytes() == data
    assert done.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in (tmp_path / "bob" / "dl").iterdir()) == ["report.pdf"]
    assert bob.progress() and bob.progress()[-1].done_bytes == 700_000
