"""Chunking, the file id (with a test vector), hash-list pieces and offer validation."""

from __future__ import annotations

import hashlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.files import manifest as mf
from p2pchat.files.errors import BadOffer

VECTOR_DATA = bytes(i % 251 for i in range(3 * 65536 + 5))
"""The test vector of docs/files.md §2: 196,613 bytes, byte i = i mod 251, 64 KiB chunks."""
VECTOR_ROOT = "f98f159d4161fa471d7b8639a55d6eb43421a5ba1bfb82c29240ad379cc8cf6d"
VECTOR_ID = "69477b86bd005c9dc5ce2e83de2efea267a0560735807c2da4202ed64a4bfef5"
VECTOR_SHA256 = "9937582fc9d65ea246b1bf6c8cdb8951b0c260f394854366097033af709f86f7"


def test_the_file_id_vector_matches_an_independent_computation() -> None:
    manifest, sha = mf.hash_file(io.BytesIO(VECTOR_DATA), 65536)
    assert (manifest.root.hex(), manifest.file_id.hex(), sha) == (
        VECTOR_ROOT,
        VECTOR_ID,
        VECTOR_SHA256,
    )
    # The same, written out from docs/files.md with hashlib alone.
    leaves = [
        hashlib.sha256(VECTOR_DATA[i : i + 65536]).digest() for i in range(0, 4 * 65536, 65536)
    ]

    def node(a: bytes, b: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + a + b).digest()

    root = node(node(leaves[0], leaves[1]), node(leaves[2], leaves[3]))
    file_id = hashlib.sha256(
        b"p2pchat-file-v1\x00" + (196613).to_bytes(8, "big") + (65536).to_bytes(4, "big") + root
    ).digest()
    assert root.hex() == VECTOR_ROOT
    assert file_id.hex() == VECTOR_ID
    assert sha == hashlib.sha256(VECTOR_DATA).hexdigest()


def test_an_empty_file_is_one_empty_chunk() -> None:
    manifest, sha = mf.hash_file(io.BytesIO(b""), 65536)
    assert manifest.n_chunks == 1
    assert manifest.span(0) == (0, 0)
    assert manifest.root == hashlib.sha256(b"").digest()
    assert sha == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    ("size", "chunks"), [(0, 1), (1, 1), (65536, 1), (65537, 2), (4 * 65536, 4)]
)
def test_chunk_count_and_spans(size: int, chunks: int) -> None:
    assert mf.chunk_count(size, 65536) == chunks
    spans = [mf.chunk_span(size, 65536, i) for i in range(chunks)]
    assert sum(length for _, length in spans) == size
    assert [offset for offset, _ in spans] == [i * 65536 for i in range(chunks)]
    with pytest.raises(IndexError):
        mf.chunk_span(size, 65536, chunks)


def test_chunk_size_default_and_growth() -> None:
    assert mf.choose_chunk_size(10_000_000) == 128 * 1024
    assert mf.choose_chunk_size(8 * 2**30) == 128 * 1024
    assert mf.choose_chunk_size(8 * 2**30 + 1) == 256 * 1024
    assert mf.choose_chunk_size(16 * 2**30 + 1) == 512 * 1024
    assert mf.choose_chunk_size(mf.MAX_FILE_BYTES) == 2**20
    with pytest.raises(ValueError):
        mf.choose_chunk_size(mf.MAX_FILE_BYTES + 1)


def test_hash_file_picks_the_chunk_size_from_the_length() -> None:
    manifest, _ = mf.hash_file(io.BytesIO(bytes(300_000)))
    assert manifest.chunk_size == mf.DEFAULT_CHUNK_BYTES
    assert manifest.n_chunks == 3


def _manifest(n_chunks: int) -> mf.Manifest:
    leaves = tuple(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n_chunks))
    return mf.Manifest(n_chunks * 65536, 65536, leaves)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 2, 3, 1023, 1024, 1025, 2048, 3000, 5000]), st.data())
def test_every_piece_of_the_hash_list_verifies_and_a_changed_one_does_not(
    n_chunks: int, data: st.DataObject
) -> None:
    manifest = _manifest(n_chunks)
    assert mf.merkle_root(list(manifest.leaves)) == manifest.root
    pieces = mf.piece_count(n_chunks)
    rebuilt: list[bytes] = []
    for index in range(pieces):
        hashes, proof = manifest.piece(index)
        mf.verify_piece(manifest.root, n_chunks, index, hashes, proof)
        rebuilt.extend(hashes)
    assert tuple(rebuilt) == manifest.leaves
    index = data.draw(st.integers(0, pieces - 1))
    hashes, proof = manifest.piece(index)
    spot = data.draw(st.integers(0, len(hashes) + len(proof) - 1))
    bad_hashes, bad_proof = list(hashes), list(proof)
    if spot < len(hashes):
        bad_hashes[spot] = bytes(32)
    else:
        bad_proof[spot - len(hashes)] = bytes(32)
    with pytest.raises(BadOffer) as refused:
        mf.verify_piece(manifest.root, n_chunks, index, bad_hashes, bad_proof)
    assert refused.value.code == "bad_file_hash"


def test_a_piece_of_the_wrong_shape_is_refused() -> None:
    manifest = _manifest(3000)
    hashes, proof = manifest.piece(1)
    for bad in (
        (1, hashes[:-1], proof),
        (1, hashes, proof[:-1]),
        (1, hashes, [*proof, bytes(32)]),
        (3, hashes, proof),
        (1, [h[:31] for h in hashes], proof),
        (2, hashes, proof),  # right hashes, claimed at another place
    ):
        with pytest.raises(BadOffer):
            mf.verify_piece(manifest.root, 3000, *bad)


def _fields(**change: object) -> dict[str, object]:
    manifest, _ = mf.hash_file(io.BytesIO(VECTOR_DATA), 65536)
    fields: dict[str, object] = {
        "file_id": manifest.file_id,
        "name": "report.pdf",
        "size": manifest.size,
        "chunk_size": manifest.chunk_size,
        "root": manifest.root,
    }
    fields.update(change)
    return fields


def test_a_valid_offer_is_taken() -> None:
    offer = mf.make_offer(**_fields())  # type: ignore[arg-type]
    assert offer.n_chunks == 4
    assert offer.file_id.hex() == VECTOR_ID


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"name": ""}, "bad_file_name"),
        ({"name": ".."}, "bad_file_name"),
        ({"name": "."}, "bad_file_name"),
        ({"name": "../../.bashrc"}, "bad_file_name"),
        ({"name": "a/b"}, "bad_file_name"),
        ({"name": "a\\b"}, "bad_file_name"),
        ({"name": "a\x00b"}, "bad_file_name"),
        ({"name": "a\nb"}, "bad_file_name"),
        ({"name": "invoice\u202efdp.exe"}, "bad_file_name"),  # right-to-left override
        ({"name": "zero\u200bwidth"}, "bad_file_name"),
        ({"name": "lone\ud800"}, "bad_file_name"),
        ({"name": " x"}, "bad_file_name"),
        ({"name": "é" * 128}, "bad_file_name"),  # 256 bytes of UTF-8
        ({"name": 7}, "bad_file_name"),
        ({"chunk_size": 65536 * 3}, "bad_chunk_size"),
        ({"chunk_size": 32768}, "bad_chunk_size"),
        ({"chunk_size": 2 * 2**20}, "bad_chunk_size"),
        ({"chunk_size": True}, "bad_chunk_size"),
        ({"size": -1}, "bad_file_size"),
        ({"size": mf.MAX_FILE_BYTES + 1}, "bad_file_size"),
        ({"size": mf.MAX_CHUNKS * 65536 + 1}, "bad_file_size"),  # too many chunks
        ({"size": 196614}, "bad_file_hash"),  # id no longer matches
        ({"root": bytes(32)}, "bad_file_hash"),
        ({"root": bytes(31)}, "bad_file_hash"),
        ({"file_id": bytes(32)}, "bad_file_hash"),
    ],
)
def test_bad_offers_are_refused_with_a_reason(change: dict[str, object], code: str) -> None:
    with pytest.raises(BadOffer) as refused:
        mf.make_offer(**_fields(**change))  # type: ignore[arg-type]
    assert refused.value.code == code


def test_the_largest_file_is_accepted_and_one_byte_more_is_not() -> None:
    root = bytes(32)
    size = mf.MAX_CHUNKS * 65536
    mf.make_offer(mf.file_id_of(size, 65536, root), "big.iso", size, 65536, root)
    with pytest.raises(BadOffer):
        mf.make_offer(mf.file_id_of(size + 1, 65536, root), "big.iso", size + 1, 65536, root)


def test_names_of_other_scripts_and_emoji_are_fine() -> None:
    for name in ("отчёт.pdf", "報告 2026.docx", "notes 📎.txt", "CON.txt", ".hidden"):
        mf.check_offer_name(name)
