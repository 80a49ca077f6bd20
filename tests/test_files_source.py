"""An offered file is served from where it lies while it is unchanged, and never once
it changed; after a restart its record serves it again."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from p2pchat.files.errors import TransferError
from p2pchat.files.source import SourceFile

CHUNK = 65536


def _offered(tmp_path: Path) -> tuple[Path, bytes, SourceFile]:
    data = random.Random(4).randbytes(3 * CHUNK + 10)
    path = tmp_path / "song.flac"
    path.write_bytes(data)
    source, sha = SourceFile.hash(path, CHUNK)
    assert sha == hashlib.sha256(data).hexdigest()
    return path, data, source


def test_chunks_are_read_and_checked(tmp_path: Path) -> None:
    _, data, source = _offered(tmp_path)
    assert source.manifest.n_chunks == 4
    assert source.read_chunk(3) == data[3 * CHUNK :]
    assert source.read_chunk(0) == data[:CHUNK]


def test_a_changed_file_is_no_longer_served(tmp_path: Path) -> None:
    path, data, source = _offered(tmp_path)
    with open(path, "r+b") as f:  # same size, new content
        f.seek(5)
        f.write(b"edited")
    assert source.read_chunk(0) is None
    assert not source.unchanged()
    # Even with the old mtime put back, the chunk's own hash catches it.
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, source.mtime_ns))
    assert source.unchanged()
    assert source.read_chunk(0) is None
    assert source.read_chunk(1) == data[CHUNK : 2 * CHUNK]
    path.unlink()
    assert source.read_chunk(1) is None


def test_a_record_serves_the_offer_after_a_restart(tmp_path: Path) -> None:
    _, data, source = _offered(tmp_path)
    again = SourceFile.from_record(json.loads(json.dumps(source.record())))
    assert again == source
    assert again.read_chunk(2) == data[2 * CHUNK : 3 * CHUNK]
    with pytest.raises(TransferError):
        SourceFile.from_record({"path": "x"})
    bad = source.record() | {"size": 1}
    with pytest.raises(TransferError):
        SourceFile.from_record(bad)


def test_only_regular_files_are_offered(tmp_path: Path) -> None:
    with pytest.raises(TransferError):
        SourceFile.hash(tmp_path)
