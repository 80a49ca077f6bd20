"""The pieces joined in memory on a virtual clock, as the node will join them: an offerer,
two receivers that also serve what they verified, and a holder that lies.  The offerer
leaves midway; both receivers still end with the file, checked whole, under its name."""

from __future__ import annotations

import hashlib
import heapq
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from p2pchat.files.manifest import Manifest, hash_file, make_offer, offer_for, verify_piece
from p2pchat.files.partial import PartialFile
from p2pchat.files.serve import Action, Server
from p2pchat.files.swarm import Cancel, Outcome, Request, Swarm, SwarmConfig

CHUNK = 65536
RATE = 50e6 / 8  # bytes/s each uploader sends
PLENTY = (10**12, 0, 10**12)


@dataclass(frozen=True)
class Msg:
    """A message between two simulated nodes: ``get``, ``chunk``, ``no``, ``leave``."""

    kind: str
    src: str
    dst: str
    index: int
    payload: bytes = b""


@dataclass
class Receiver:
    partial: PartialFile
    swarm: Swarm
    server: Server = field(default_factory=Server)
    done: tuple[Path, str] | None = None


def _bitfield(n: int, chunks: range) -> bytes:
    out = bytearray((n + 7) // 8)
    for i in chunks:
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def test_an_offer_fetched_by_two_receivers_from_the_offerer_each_other_and_a_liar(
    tmp_path: Path,
) -> None:
    data = random.Random(7).randbytes(40 * CHUNK + 999)
    manifest, sha = hash_file(io.BytesIO(data), CHUNK)
    sent_offer = offer_for(manifest, "holiday photos.tar")
    # What a receiver does with the offer's fields off the wire, then the hash list.
    offer = make_offer(
        sent_offer.file_id, sent_offer.name, sent_offer.size, sent_offer.chunk_size, sent_offer.root
    )
    hashes, proof = manifest.piece(0)
    verify_piece(offer.root, offer.n_chunks, 0, hashes, proof)
    n = offer.n_chunks
    offerer = Server()
    offerer.offer(offer.file_id, offer.size, offer.chunk_size)
    receivers: dict[str, Receiver] = {}
    for i, name in enumerate(("r1", "r2")):
        directory = tmp_path / name
        directory.mkdir()
        partial = PartialFile.create(directory, offer, tuple(hashes), disk_usage=lambda _: PLENTY)
        swarm = Swarm(n, random.Random(i), config=SwarmConfig(request_timeout_s=2.0))
        swarm.holder_map("offerer", _bitfield(n, range(n)))
        swarm.holder_map("liar", _bitfield(n, range(n)))
        swarm.holder_map("r2" if name == "r1" else "r1", bytes((n + 7) // 8))
        receivers[name] = Receiver(partial, swarm)
        receivers[name].server.hold(offer.file_id, offer.size, offer.chunk_size)

    events: list[tuple[float, int, Msg]] = []
    seq = 0
    busy_until: dict[str, float] = {}  # each uploader sends one chunk after another

    def later(at: float, kind: str, src: str, dst: str, index: int, payload: bytes = b"") -> None:
        nonlocal seq
        heapq.heappush(events, (at, seq, Msg(kind, src, dst, index, payload)))
        seq += 1

    def chunk_bytes(index: int) -> bytes:
        offset, length = manifest.span(index)
        return data[offset : offset + length]

    gone: set[str] = set()
    missing_at_leave: list[int] = []
    now = 0.0
    served_by: dict[str, int] = {"offerer": 0, "r1": 0, "r2": 0, "liar": 0}
    while now < 60.0 and not all(r.done for r in receivers.values()):
        for name, receiver in receivers.items():
            if receiver.done:
                continue
            for action in receiver.swarm.poll(now):
                if isinstance(action, Request):
                    later(now + 0.001, "get", name, action.holder, action.index)
                else:
                    assert isinstance(action, Cancel)
            if receiver.swarm.complete:
                receiver.done = receiver.partial.finish()
        deadlines = [r.swarm.next_deadline() for r in receivers.values() if not r.done]
        times = [d for d in deadlines if d is not None] + ([events[0][0]] if events else [])
        if not times:
            break
        now = max(now, min(times))
        while events and events[0][0] <= now:
            _, _, message = heapq.heappop(events)
            kind = message.kind
            if kind == "leave":
                gone.add("offerer")
                for receiver in receivers.values():
                    receiver.swarm.holder_gone("offerer")
                continue
            if kind == "get":
                asker, holder, index = message.src, message.dst, message.index
                if holder in gone:
                    continue
                if holder == "liar":
                    payload = bytes(len(chunk_bytes(index)))  # zeros: fails its hash
                else:
                    server = offerer if holder == "offerer" else receivers[holder].server
                    verdict = server.request(asker, offer.file_id, index, now)
                    if verdict.action is not Action.SERVE:
                        later(now + 0.001, "no", holder, asker, index)
                        continue
                    if holder == "offerer":
                        payload = chunk_bytes(index)
                    elif (finished := receivers[holder].done) is not None:  # from the file
                        offset, length = manifest.span(index)
                        payload = finished[0].read_bytes()[offset : offset + length]
                    else:
                        read = receivers[holder].partial.read_chunk(index)
                        assert read is not None
                        payload = read
                    server.sent(asker, offer.file_id, index)
                start = max(now, busy_until.get(holder, 0.0))
                busy_until[holder] = start + len(payload) / RATE
                served_by[holder] += 1
                later(busy_until[holder], "chunk", holder, asker, index, payload)
            elif kind == "no":
                receivers[message.dst].swarm.declined(message.src, message.index, now)
            elif kind == "chunk":
                holder, asker, index = message.src, message.dst, message.index
                payload = message.payload
                if holder in gone:
                    continue
                receiver = receivers[asker]
                if not receiver.swarm.expects(holder, index):
                    continue
                ok = receiver.partial.write_chunk(index, payload, now)
                if receiver.swarm.received(holder, index, ok, now) is Outcome.ACCEPTED:
                    receiver.server.add_chunk(offer.file_id, index)
                    for other_name, other in receivers.items():
                        if other_name != asker:
                            other.swarm.holder_has(asker, index)
                    # The offerer quits as soon as the receivers hold every chunk between them.
                    held = set().union(
                        *(set(range(n)) - set(r.partial.missing()) for r in receivers.values())
                    )
                    if len(held) == n and "offerer" not in gone:
                        missing_at_leave.extend(
                            len(r.partial.missing()) for r in receivers.values()
                        )
                        later(now, "leave", "offerer", "", -1)

    for name, receiver in receivers.items():
        assert receiver.done is not None, (name, receiver.swarm.missing_count)
        path, digest = receiver.done
        assert path == tmp_path / name / "holiday photos.tar"
        assert path.read_bytes() == data
        assert digest == sha == hashlib.sha256(data).hexdigest()
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["holiday photos.tar"]
        assert receiver.swarm.holders()["liar"]["banned"] is True
        assert receiver.swarm.counts["bad"] <= 3
    # The offerer left midway: the receivers fed each other the rest.
    assert "offerer" in gone
    assert max(missing_at_leave) > 0  # one receiver still lacked chunks: it got them from the other
    assert 0 < served_by["offerer"] < 2 * n
    assert served_by["r1"] > 0 and served_by["r2"] > 0


def test_manifest_of_a_partial_download_matches_the_offer(tmp_path: Path) -> None:
    """The leaves a receiver keeps in its map are the offerer's: a resumed receiver can
    serve hash-list pieces itself."""
    data = random.Random(8).randbytes(3 * CHUNK)
    manifest, _ = hash_file(io.BytesIO(data), CHUNK)
    offer = offer_for(manifest, "a.bin")
    partial = PartialFile.create(tmp_path, offer, manifest.leaves, disk_usage=lambda _: PLENTY)
    partial.close()
    resumed = PartialFile.resume(partial.map_path)
    assert Manifest(offer.size, offer.chunk_size, resumed.leaves).piece(0) == manifest.piece(0)
    resumed.discard()
