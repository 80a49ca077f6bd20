"""``/send``, ``/get``, ``/files``, ``/cancel`` between p2pchat processes on
127.0.0.1, as a user runs them (``--json`` and the line mode)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import unique_room, wait_for
from test_cli import LOOPBACK, NO_MDNS, _clean_exit, _pair, spawn  # noqa: F401 - the fixture

from p2pchat.cli.args import parse_args, parse_chunk_size, parse_size
from p2pchat.errors import UsageError
from p2pchat.files.errors import DamagedState
from p2pchat.files.partial import MAP_SUFFIX, PART_SUFFIX, PartialFile
from p2pchat.harness import NodeProcess


def test_size_options_read_decimal_units() -> None:
    assert [parse_size(t) for t in ("0", "1500", "20M", "1.5G", "64k", "2MB", "3MiB")] == [
        0,
        1500,
        20_000_000,
        1_500_000_000,
        64_000,
        2_000_000,
        3_000_000,
    ]
    opts = parse_args(["--name", "a", "--accept-files", "20M", "--download-dir", "/tmp/x"])
    assert (opts.accept_files, opts.download_dir, opts.chunk_size) == (20_000_000, "/tmp/x", None)


def test_chunk_size_is_a_power_of_two_from_64k_to_1m() -> None:
    """``--chunk-size`` reads K and M as binary units (a chunk is a power of two)."""
    sizes = [parse_chunk_size(t) for t in ("64K", "128k", "256KiB", "512K", "1M", "65536")]
    assert sizes == [65536, 131072, 262144, 524288, 1048576, 65536]
    for bad in ("32K", "2M", "100K", "1.5M", "big", "0"):
        with pytest.raises(UsageError, match="64K, 128K, 256K, 512K or 1M"):
            parse_chunk_size(bad)
    assert parse_args(["--name", "a", "--chunk-size", "1M"]).chunk_size == 1 << 20


def test_send_then_get_lands_the_checked_file_in_the_download_dir(
    spawn: Callable[..., NodeProcess],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """bob offers a 3 MB file; alice ``/get 1``s it: ``file_progress`` while
    it comes, ``file_done`` with the path and a SHA-256 equal to the
    source's, the bytes in her download directory under the offered name,
    nothing else left there; ``/files`` lists the transfer as done; a
    second ``/get`` says it is fetched already."""
    room = unique_room()
    downloads = tmp_path / "alice downloads"
    alice = spawn(
        "--name", "alice", "--room", room, "--json", *NO_MDNS, "--download-dir", str(downloads)
    )
    ra = alice.wait_event("ready")
    bob = spawn(
        "--name", "bob", "--room", room, "--json", *NO_MDNS, "--peer", f"{LOOPBACK}:{ra['port']}",
        "--chunk-size", "64K",
    )  # fmt: skip
    rb = bob.wait_event("ready")
    alice.wait_event("join", origin=rb["node"])
    source = tmp_path / "report.bin"
    data = os.urandom(3_000_000)
    source.write_bytes(data)
    bob.send_line(f"/send {source}")
    offer = alice.wait_event("file_offer", name="report.bin")
    assert offer["chunk_size"] == 65536  # bob's --chunk-size
    alice.send_line(f"/get {offer['number']}")
    assert alice.wait_event("get")["file"] == offer["file"]
    done = alice.wait_event("file_done", file=offer["file"], timeout_s=30.0)
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert (done["size"], Path(done["path"])) == (3_000_000, downloads / "report.bin")
    assert (downloads / "report.bin").read_bytes() == data
    assert sorted(p.name for p in downloads.iterdir()) == ["report.bin"]
    alice.send_line("/files")
    (row,) = alice.wait_event("files")["transfers"]
    assert (row["file"], row["state"], row["done"]) == (offer["file"], "done", 3_000_000)
    # Fetched already: said so, not fetched twice.
    alice.send_line(f"/get {offer['file'][:12]}")
    assert "already fetched" in alice.wait_event("error")["text"]
    for node in (alice, bob):
        node.send_line("/quit")
        _clean_exit(node)


def test_get_in_the_line_mode_says_fetching_then_got(
    spawn: Callable[..., NodeProcess],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """The line mode: ``bob offers notes.txt (12 B) - /get 1``, then
    ``-- fetching notes.txt`` and ``-- got notes.txt (12 B): PATH``;
    ``/get 9`` of no offer says so."""
    room = unique_room()
    alice, bob, _, _ = _pair(spawn, room)
    port = alice.wait_event("ready")["port"]
    downloads = tmp_path / "carol"
    carol = spawn(
        "--name", "carol", "--room", room, *NO_MDNS, "--peer", f"{LOOPBACK}:{port}",
        "--download-dir", str(downloads), json_mode=False,
    )  # fmt: skip
    carol.wait_line(lambda s: "bob" in s and ("joined" in s or "is here" in s), "bob")
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"hello, carol")
    bob.send_line(f"/send {notes}")
    carol.wait_line(lambda s: s.endswith("bob offers notes.txt (12 B) - /get 1"), "the offer")
    carol.send_line("/get 9")
    carol.wait_line(lambda s: s.startswith("!! no offer 9"), "no such offer")
    carol.send_line("/get 1")
    carol.wait_line(lambda s: s.startswith("-- fetching notes.txt (12 B) into"), "fetching")
    carol.wait_line(lambda s: s.startswith("-- got notes.txt (12 B):"), "got", timeout_s=30.0)
    assert (downloads / "notes.txt").read_bytes() == b"hello, carol"
    for node in (carol, alice, bob):
        node.send_line("/quit")
        _clean_exit(node)


def test_accept_files_fetches_small_offers_without_get(
    spawn: Callable[..., NodeProcess],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """``--accept-files 1k``: a 100-byte offer is fetched at once, a 2 kB one
    waits for ``/get``."""
    room = unique_room()
    downloads = tmp_path / "auto"
    alice = spawn(
        "--name", "alice", "--room", room, "--json", *NO_MDNS, "--accept-files", "1k",
        "--download-dir", str(downloads),
    )  # fmt: skip
    ra = alice.wait_event("ready")
    bob = spawn(
        "--name", "bob", "--room", room, "--json", *NO_MDNS, "--peer", f"{LOOPBACK}:{ra['port']}"
    )
    alice.wait_event("join", origin=bob.wait_event("ready")["node"])
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(b"b" * 2000)
    small.write_bytes(b"s" * 100)
    bob.send_line(f"/send {big}")
    alice.wait_event("file_offer", name="big.bin")
    bob.send_line(f"/send {small}")
    alice.wait_event("file_done", name="small.bin", timeout_s=30.0)
    assert (downloads / "small.bin").read_bytes() == b"s" * 100
    assert not (downloads / "big.bin").exists() and not any(
        e.get("name") == "big.bin" for e in alice.of("file_progress")
    )
    for node in (alice, bob):
        node.send_line("/quit")
        _clean_exit(node)


def _bytes_in_map(chunk_map: Path, scratch: Path) -> int:
    """How many bytes the chunk map on disk marks done, read as a restart
    would (:meth:`PartialFile.resume`) from a copy, so the running node's
    files stay untouched."""
    scratch.mkdir(exist_ok=True)
    copy = scratch / chunk_map.name
    copy.write_bytes(chunk_map.read_bytes())
    copy.with_name(copy.name[: -len(MAP_SUFFIX)] + PART_SUFFIX).touch()
    try:
        partial = PartialFile.resume(copy)
    except DamagedState:  # caught between two writes: not yet
        return 0
    try:
        return sum(partial.span(i)[1] for i in range(len(partial.leaves)) if partial.is_done(i))
    finally:
        partial.close()


def _files_row(node: NodeProcess, file_id: str) -> dict[str, Any]:
    """The transfer ``file_id`` in a fresh ``/files`` answer of ``node`` ({} if none)."""
    before = len(node.of("files"))
    node.send_line("/files")
    node.wait_event_where(lambda e: len(node.of("files")) > before, "/files")
    got = node.of("files")[before]
    return next((t for t in got["transfers"] if t["file"] == file_id), {})


def test_a_download_resumes_after_kill_9_of_the_receiver_and_of_the_sender(
    spawn: Callable[..., NodeProcess],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """alice fetches a 16 MB file from bob, its only holder, and cannot get
    all of it: bob's copy of the last chunk changed on disk (same size and
    time, other bytes), so bob serves what still checks until he reads that
    chunk, and then no more. Both are killed with SIGKILL; the file is put
    back; both start again on their data directories and nobody types
    anything: bob serves his offer again, alice resumes where she stopped
    (her first progress counts every chunk she had) and ends with the file
    whole and checked, nothing else left in her download directory."""
    room = unique_room()
    downloads = tmp_path / "alice downloads"
    a_args = ("--name", "alice", "--room", room, "--json", *NO_MDNS,
              "--data-dir", str(tmp_path / "alice"), "--download-dir", str(downloads))  # fmt: skip
    alice = spawn(*a_args, ephemeral=False)
    port = alice.wait_event("ready")["port"]
    b_args = ("--name", "bob", "--room", room, "--json", *NO_MDNS,
              "--data-dir", str(tmp_path / "bob"))  # fmt: skip
    bob = spawn(*b_args, "--peer", f"{LOOPBACK}:{port}", ephemeral=False)
    alice.wait_event("join", origin=bob.wait_event("ready")["node"])
    source = tmp_path / "big.bin"
    data = os.urandom(16 * 1024 * 1024)
    source.write_bytes(data)
    bob.send_line(f"/send {source}")
    offer = alice.wait_event("file_offer", name="big.bin")
    fid = offer["file"]
    kept = os.stat(source)
    with source.open("r+b") as f:  # the last chunk changes under bob
        f.seek(len(data) - 1000)
        f.write(os.urandom(1000))
    os.utime(source, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    alice.send_line(f"/get {offer['number']}")
    wait_for(lambda: _files_row(alice, fid).get("state") == "waiting", 30.0, "alice out of holders")
    had = _files_row(alice, fid)["done"]
    assert had < len(data) and not alice.of("file_done")
    chunk_map = downloads / "big.bin.p2pchat-map"
    if had:  # (bob may have read the changed chunk first: then alice has nothing)
        wait_for(lambda: _bytes_in_map(chunk_map, tmp_path / "peek") >= had, 5.0,
                 "the chunk map to hold every chunk received")  # fmt: skip
    for node in (alice, bob):
        node.proc.kill()
        node.wait()
    source.write_bytes(data)
    os.utime(source, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    bob = spawn(*b_args, ephemeral=False)
    b_port = bob.wait_event("ready")["port"]
    alice = spawn(*a_args, "--peer", f"{LOOPBACK}:{b_port}", ephemeral=False)
    again = alice.wait_event("file_progress", file=fid, timeout_s=30.0)
    assert again["done"] >= had  # resumed, not started over
    done = alice.wait_event("file_done", file=fid, timeout_s=60.0)
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert (downloads / "big.bin").read_bytes() == data
    assert sorted(p.name for p in downloads.iterdir()) == ["big.bin"]
    for node in (alice, bob):
        node.send_line("/quit")
        _clean_exit(node)


def test_in_a_private_room_a_file_for_one_member_reaches_her_alone(
    spawn: Callable[..., NodeProcess],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """A private room (``--secret-file``): bob ``/send alice PATH``; alice
    fetches it (data links sealed with the room's key too); carol, in the
    room, never sees the offer, and ``/get`` with its file id tells her
    there is no such offer; a room offer in the same room she fetches."""
    secret = tmp_path / "secret"
    secret.write_text("a long shared secret for the three of us\n")
    room = unique_room()
    common = ["--room", room, "--json", *NO_MDNS, "--secret-file", str(secret)]
    alice = spawn("--name", "alice", *common, "--download-dir", str(tmp_path / "a"))
    port = alice.wait_event("ready")["port"]
    bob = spawn("--name", "bob", *common, "--peer", f"{LOOPBACK}:{port}")
    carol = spawn("--name", "carol", *common, "--peer", f"{LOOPBACK}:{port}",
                  "--download-dir", str(tmp_path / "c"))  # fmt: skip
    b_id = bob.wait_event("ready")["node"]
    for node in (alice, carol):
        node.wait_event("join", origin=b_id)
    bob.wait_event("join", origin=alice.wait_event("ready")["node"])
    plan = tmp_path / "plan.txt"
    plan.write_bytes(b"for alice only\n" * 1000)
    bob.send_line(f"/send alice {plan}")
    offer = alice.wait_event("file_offer", name="plan.txt")
    assert offer["private"] is True
    alice.send_line(f"/get {offer['number']}")
    done = alice.wait_event("file_done", file=offer["file"], timeout_s=30.0)
    assert (tmp_path / "a" / "plan.txt").read_bytes() == plan.read_bytes()
    assert done["sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    carol.send_line(f"/get {offer['file']}")
    assert carol.wait_event("error")["text"].startswith("no offer ")
    # A room offer: carol fetches it (her data link to bob sealed as alice's was).
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"for everyone\n")
    bob.send_line(f"/send {notes}")
    room_offer = carol.wait_event("file_offer", name="notes.txt")
    carol.send_line(f"/get {room_offer['number']}")
    carol.wait_event("file_done", file=room_offer["file"], timeout_s=30.0)
    assert (tmp_path / "c" / "notes.txt").read_bytes() == b"for everyone\n"
    assert all(e["name"] != "plan.txt" for e in carol.of("file_offer"))
    assert not (tmp_path / "c" / "plan.txt").exists()
    for node in (alice, bob, carol):
        node.send_line("/quit")
        _clean_exit(node)
