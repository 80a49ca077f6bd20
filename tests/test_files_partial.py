"""A download on disk: written after each hash checks, resumable after a crash, checked
whole before its rename, and a full disk loses nothing already written."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchat.files.errors import (
    ChunksFailedCheck,
    DamagedState,
    DiskFull,
    NotEnoughSpace,
)
from p2pchat.files.manifest import Manifest, Offer, hash_file, offer_for
from p2pchat.files.partial import (
    MAP_SUFFIX,
    PART_SUFFIX,
    ChunkWriter,
    PartialFile,
    open_writer,
)

CHUNK = 65536
PLENTY = (10**12, 0, 10**12)


def _file(n_bytes: int = 5 * CHUNK + 123, seed: int = 1) -> tuple[bytes, Manifest, Offer]:
    data = random.Random(seed).randbytes(n_bytes)
    manifest, _ = hash_file(io.BytesIO(data), CHUNK)
    return data, manifest, offer_for(manifest, "report.pdf")


def _chunk(data: bytes, manifest: Manifest, index: int) -> bytes:
    offset, length = manifest.span(index)
    return data[offset : offset + length]


def _create(directory: Path, offer: Offer, manifest: Manifest, **kwargs: object) -> PartialFile:
    return PartialFile.create(
        directory,
        offer,
        manifest.leaves,
        disk_usage=lambda _: PLENTY,
        **kwargs,  # type: ignore[arg-type]
    )


def test_chunks_in_any_order_then_a_checked_file_under_its_name(tmp_path: Path) -> None:
    data, manifest, offer = _file()
    part = _create(tmp_path, offer, manifest)
    assert part.part_path == tmp_path / ("report.pdf" + PART_SUFFIX)
    order = list(range(manifest.n_chunks))
    random.Random(3).shuffle(order)
    for now, index in enumerate(order):
        wrong = bytearray(_chunk(data, manifest, index))
        wrong[0] ^= 1
        assert part.write_chunk(index, bytes(wrong), float(now)) is False  # refused, not written
        assert not part.is_done(index)
        assert part.write_chunk(index, _chunk(data, manifest, index), float(now)) is True
    assert part.missing() == []
    path, sha = part.finish()
    assert path == tmp_path / "report.pdf"
    assert path.read_bytes() == data
    assert sha == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf"]


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    data, manifest, offer = _file()
    (tmp_path / "report.pdf").write_text("my own report")
    part = _create(tmp_path, offer, manifest)
    assert part.part_path.name == "report (1).pdf" + PART_SUFFIX
    (tmp_path / "report (1).pdf").write_text("made meanwhile")
    for index in range(manifest.n_chunks):
        part.write_chunk(index, _chunk(data, manifest, index), 0.0)
    path, _ = part.finish()
    assert path.name == "report (2).pdf"
    assert (tmp_path / "report.pdf").read_text() == "my own report"
    assert (tmp_path / "report (1).pdf").read_text() == "made meanwhile"
    assert path.read_bytes() == data


def test_resume_after_a_crash_keeps_what_the_map_had_written(tmp_path: Path) -> None:
    data, manifest, offer = _file()
    part = _create(tmp_path, offer, manifest)
    part.write_chunk(4, _chunk(data, manifest, 4), 10.0)  # map written (first write)
    part.write_chunk(1, _chunk(data, manifest, 1), 10.5)  # within the second: not yet
    part.write_chunk(2, _chunk(data, manifest, 2), 11.0)  # a second later: map written
    part.write_chunk(0, _chunk(data, manifest, 0), 11.2)  # lost in the crash
    part._close_files()  # kill -9: no flush
    again = PartialFile.resume(part.map_path)
    assert again.offer == offer
    assert again.leaves == manifest.leaves
    assert again.missing() == [0, 3, 5]
    assert again.read_chunk(2) == _chunk(data, manifest, 2)
    assert again.read_chunk(3) is None
    for index in again.missing():
        again.write_chunk(index, _chunk(data, manifest, index), 20.0)
    path, sha = again.finish()
    assert path.read_bytes() == data and sha == hashlib.sha256(data).hexdigest()


def test_a_torn_map_write_falls_back_to_the_other_slot(tmp_path: Path) -> None:
    data, manifest, offer = _file()
    part = _create(tmp_path, offer, manifest)
    part.write_chunk(0, _chunk(data, manifest, 0), 0.0)  # slot 1, seq 1
    part.write_chunk(1, _chunk(data, manifest, 1), 5.0)  # slot 0, seq 2
    part.close()
    raw = bytearray(part.map_path.read_bytes())
    slot_len = 8 + 1 + 32
    slot0 = len(raw) - 2 * slot_len
    raw[slot0 + 8] ^= 0xFF  # the newest slot is damaged (a write cut by a crash)
    part.map_path.write_bytes(bytes(raw))
    again = PartialFile.resume(part.map_path)
    assert again.missing() == [1, 2, 3, 4, 5]
    again.close()


@pytest.mark.parametrize("damage", ["magic", "header", "cut", "both_slots"])
def test_a_damaged_map_is_refused_and_left_alone(tmp_path: Path, damage: str) -> None:
    _, manifest, offer = _file()
    part = _create(tmp_path, offer, manifest)
    part.close()
    raw = bytearray(part.map_path.read_bytes())
    if damage == "magic":
        raw[0:8] = b"notours!"
    elif damage == "header":
        raw[40] ^= 1
    elif damage == "cut":
        raw = raw[:100]
    else:
        raw[-1] ^= 1
        raw[-42] ^= 1
    part.map_path.write_bytes(bytes(raw))
    with pytest.raises(DamagedState):
        PartialFile.resume(part.map_path)
    assert part.map_path.read_bytes() == bytes(raw)


def test_a_chunk_changed_on_disk_is_found_by_the_final_check_and_fetched_again(
    tmp_path: Path,
) -> None:
    data, manifest, offer = _file()
    part = _create(tmp_path, offer, manifest)
    for index in range(manifest.n_chunks):
        part.write_chunk(index, _chunk(data, manifest, index), 0.0)
    with open(part.part_path, "r+b") as raw:
        raw.seek(3 * CHUNK + 7)
        raw.write(b"\x00\x01")
    with pytest.raises(ChunksFailedCheck) as failed:
        part.finish()
    assert failed.value.indices == [3]
    assert part.missing() == [3]
    assert part.write_chunk(3, _chunk(data, manifest, 3), 1.0)
    path, sha = part.finish()
    assert path.read_bytes() == data and sha == hashlib.sha256(data).hexdigest()


class FillingDisk:
    """A writer on a real file whose disk is full after ``room`` bytes of chunks."""

    def __init__(self, inner: ChunkWriter, room: int) -> None:
        self.inner = inner
        self.room = room

    def allocate(self, size: int) -> None:
        pass  # the file system cannot preallocate

    def pwrite(self, data: bytes, offset: int) -> None:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        self.inner.pwrite(data, offset)

    def pread(self, length: int, offset: int) -> bytes:
        return self.inner.pread(length, offset)

    def fsync(self) -> None:
        self.inner.fsync()

    def close(self) -> None:
        self.inner.close()


def test_a_full_disk_fails_clearly_and_keeps_every_chunk_written(tmp_path: Path) -> None:
    data, manifest, offer = _file()

    def filling(path: Path, create: bool) -> ChunkWriter:
        writer = open_writer(path, create)
        return FillingDisk(writer, 3 * CHUNK) if path.name.endswith(PART_SUFFIX) else writer

    part = _create(tmp_path, offer, manifest, open_file=filling)
    for index in range(3):
        assert part.write_chunk(index, _chunk(data, manifest, index), 0.1 * index)
    with pytest.raises(DiskFull) as full:
        part.write_chunk(3, _chunk(data, manifest, 3), 0.4)
    message = str(full.value)
    assert "disk is full" in message and "3 of 6 chunks" in message
    assert str(part.part_path) in message
    # Later, with space again: the three chunks are there, on disk and in the map.
    again = PartialFile.resume(part.map_path)
    assert again.missing() == [3, 4, 5]
    for index in range(3):
        assert again.read_chunk(index) == _chunk(data, manifest, index)
    for index in again.missing():
        again.write_chunk(index, _chunk(data, manifest, index), 1.0)
    path, _ = again.finish()
    assert path.read_bytes() == data


def test_no_download_starts_without_the_space_and_its_margin(tmp_path: Path) -> None:
    _, manifest, offer = _file()
    with pytest.raises(NotEnoughSpace) as refused:
        PartialFile.create(
            tmp_path,
            offer,
            manifest.leaves,
            margin_bytes=1000,
            disk_usage=lambda _: (10**9, 10**9, offer.size + 999),
        )
    assert "not enough space" in str(refused.value)
    assert list(tmp_path.iterdir()) == []
    # exactly enough is enough
    PartialFile.create(
        tmp_path,
        offer,
        manifest.leaves,
        margin_bytes=1000,
        disk_usage=lambda _: (10**9, 10**9, offer.size + 1000),
    ).discard()
    assert list(tmp_path.iterdir()) == []


def test_preallocation_that_hits_a_full_disk_leaves_nothing(tmp_path: Path) -> None:
    _, manifest, offer = _file()

    class NoRoom(FillingDisk):
        def allocate(self, size: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    def no_room(path: Path, create: bool) -> ChunkWriter:
        return NoRoom(open_writer(path, create), 0)

    with pytest.raises(NotEnoughSpace):
        _create(tmp_path, offer, manifest, open_file=no_room)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_file_downloads(tmp_path: Path) -> None:
    manifest, _ = hash_file(io.BytesIO(b""), CHUNK)
    part = _create(tmp_path, offer_for(manifest, "empty"), manifest)
    assert part.write_chunk(0, b"", 0.0)
    path, sha = part.finish()
    assert path.read_bytes() == b"" and sha == hashlib.sha256(b"").hexdigest()


def test_a_map_is_named_beside_its_part(tmp_path: Path) -> None:
    _, manifest, offer = _file()
    part = _create(tmp_path, offer, manifest)
    assert part.map_path == tmp_path / ("report.pdf" + MAP_SUFFIX)
    assert part.have_map() == bytes(1)
    part.discard()
    assert list(tmp_path.iterdir()) == []


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_any_order_of_writes_and_crashes_ends_with_the_file(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Chunks (good or corrupt) in any order, the node killed at any point (no flush):
    after each resume every chunk the map marks done reads back right, nothing flushed
    is lost, and the file completes with its hash."""
    directory = tmp_path_factory.mktemp("downloads")
    content, manifest, offer = _file(data.draw(st.integers(1, 6 * CHUNK)), seed=2)
    n = manifest.n_chunks
    part = _create(directory, offer, manifest)
    now = 0.0
    flushed: set[int] = set()
    for _ in range(data.draw(st.integers(0, 3 * n + 3))):
        now += data.draw(st.sampled_from([0.0, 0.3, 1.0, 2.5]))
        action = data.draw(st.sampled_from(["good", "good", "bad", "crash"]))
        if action == "crash":
            part._close_files()  # kill -9: no flush
            part = PartialFile.resume(part.map_path)
            done = set(range(n)) - set(part.missing())
            assert flushed <= done
            flushed = set(done)
            for index in done:
                assert part.read_chunk(index) == _chunk(content, manifest, index)
            continue
        index = data.draw(st.integers(0, n - 1))
        chunk = _chunk(content, manifest, index)
        if action == "bad":
            assert part.write_chunk(index, chunk + b"x", now) is (part.is_done(index))
        else:
            before = part._seq
            assert part.write_chunk(index, chunk, now)
            if part._seq != before:  # the map was written: everything done so far is durable
                flushed = set(range(n)) - set(part.missing())
    for index in part.missing():
        part.write_chunk(index, _chunk(content, manifest, index), now)
    path, sha = part.finish()
    assert path.read_bytes() == content and sha == hashlib.sha256(content).hexdigest()
    assert sorted(p.name for p in directory.iterdir()) == ["report.pdf"]
