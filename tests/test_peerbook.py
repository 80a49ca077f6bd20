"""Remembered peers (p2pchat/peerbook.py): the file, its bounds, and nodes
that re-join from it on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path

import pytest
from conftest import LOOPBACK, Cluster, HandDiscovery, wait_for

from p2pchat import peers as peers_module
from p2pchat import wire
from p2pchat.cli.commands import handle_line
from p2pchat.discovery import FoundPeer
from p2pchat.events import Notice
from p2pchat.node import Node, NodeConfig
from p2pchat.peerbook import FILE_NAME, MAX_AGE_S, MAX_ENTRIES, MAX_FILE_BYTES, PeerBook

NODE_A = "0123456789abcdef"
NODE_B = "fedcba9876543210"
DAY = 86400.0


def write_book(data_dir: Path, peers: object) -> Path:
    path = data_dir / FILE_NAME
    path.write_text(json.dumps({"version": 1, "peers": peers}), encoding="utf-8")
    return path


def entry(
    host: str, port: int = 7420, node: str = NODE_A, answered: float = 0.0
) -> dict[str, object]:
    return {
        "host": host,
        "port": port,
        "node": node,
        "source": "learnt",
        "answered": answered,
        "failures": 0,
    }


# -- the file ----------------------------------------------------------------------


def test_an_answered_peer_is_written_0600_and_read_back(tmp_path: Path) -> None:
    now = time.time()
    book = PeerBook(str(tmp_path), now)
    book.answered("10.1.0.5", 7420, NODE_A, "typed", now)
    book.answered("fd00::5", 7421, NODE_B, "learnt", now + 1)
    path = tmp_path / FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp")), "the temp file was left behind"

    again = PeerBook(str(tmp_path), now + 2)
    got = [(e.host, e.port, e.node, e.source) for e in again.entries()]
    assert got == [("fd00::5", 7421, NODE_B, "learnt"), ("10.1.0.5", 7420, NODE_A, "typed")]
    assert again.peers() == [(NODE_B, ["fd00::5"], 7421), (NODE_A, ["10.1.0.5"], 7420)]
    assert again.warning == ""


def test_a_typed_peer_stays_typed_and_failures_reset_when_it_answers(tmp_path: Path) -> None:
    now = time.time()
    book = PeerBook(str(tmp_path), now)
    book.answered("10.1.0.5", 7420, NODE_A, "typed", now)
    book.failed(NODE_A, ["10.1.0.5"], 7420)
    book.failed(NODE_A, ["10.1.0.5"], 7420)
    assert book.entries()[0].failures == 2
    book.answered("10.1.0.5", 7420, NODE_A, "learnt", now + 5)
    (e,) = book.entries()
    assert (e.source, e.failures, e.answered) == ("typed", 0, now + 5)


def test_ephemeral_keeps_nothing(tmp_path: Path) -> None:
    book = PeerBook(None, time.time())
    book.answered("10.1.0.5", 7420, NODE_A, "typed", time.time())
    book.save(time.time())
    assert book.entries() == []
    assert not book.enabled


def test_at_most_max_entries_the_longest_unanswered_evicted(tmp_path: Path) -> None:
    """Bound: MAX_ENTRIES addresses; one more evicts the one that answered
    longest ago (remembered_full)."""
    now = time.time()
    book = PeerBook(str(tmp_path), now)
    n = MAX_ENTRIES + 6
    for i in range(n):
        book.answered(f"10.2.0.{i + 1}", 7420, NODE_A, "learnt", now - n + i)
    hosts = {e.host for e in book.entries()}
    assert len(hosts) == MAX_ENTRIES
    assert hosts == {f"10.2.0.{i + 1}" for i in range(6, n)}
    assert book.counts["remembered_full"] == 6
    assert len(json.loads((tmp_path / FILE_NAME).read_text())["peers"]) == MAX_ENTRIES


def test_a_hostile_file_of_thousands_of_entries_is_cut_to_the_bound(tmp_path: Path) -> None:
    """The data directory is untrusted input: a file (under the byte cap)
    naming 1500 addresses yields only the MAX_ENTRIES that answered last."""
    now = time.time()
    peers = [entry(f"10.3.{i // 250}.{i % 250 + 1}", answered=now - 3600 + i) for i in range(1500)]
    write_book(tmp_path, peers)
    assert (tmp_path / FILE_NAME).stat().st_size < MAX_FILE_BYTES
    book = PeerBook(str(tmp_path), now)
    got = book.entries()
    assert len(got) == MAX_ENTRIES
    assert got[0].answered == now - 3600 + 1499
    assert book.counts["remembered_full"] == 1500 - MAX_ENTRIES
    (node, hosts, _port) = book.peers()[0]
    assert node == NODE_A and len(hosts) <= 8


def test_entries_unanswered_for_30_days_are_forgotten(tmp_path: Path) -> None:
    now = time.time()
    write_book(
        tmp_path,
        [
            entry("10.4.0.1", answered=now - MAX_AGE_S - DAY),
            entry("10.4.0.2", answered=now - MAX_AGE_S + DAY),
        ],
    )
    book = PeerBook(str(tmp_path), now)
    assert [e.host for e in book.entries()] == ["10.4.0.2"]
    assert book.counts == {"remembered_expired": 1}
    # ... and one that ages out while the node runs is dropped at the next write.
    book.save(now + 2 * DAY)
    assert book.entries() == []
    assert book.counts["remembered_expired"] == 2


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff not json",
        b'{"peers": 5}',
        b"[1, 2, 3]",
        b"[" * 100_000,
        b'{"peers": []}' + b" " * (MAX_FILE_BYTES + 1),
    ],
    ids=["garbage", "peers-not-a-list", "not-an-object", "deep-nesting", "too-big"],
)
def test_an_unreadable_file_is_ignored_with_a_warning(tmp_path: Path, content: bytes) -> None:
    (tmp_path / FILE_NAME).write_bytes(content)
    now = time.time()
    book = PeerBook(str(tmp_path), now)
    assert book.entries() == []
    assert book.warning.startswith("remembered peers ignored: ")
    assert book.counts == {"remembered_unreadable": 1}
    book.answered("10.5.0.1", 7420, NODE_A, "learnt", now)  # rewritten whole
    assert PeerBook(str(tmp_path), now).warning == ""


def test_malformed_entries_are_skipped(tmp_path: Path) -> None:
    now = time.time()
    good = entry("10.6.0.1", answered=now)
    bad = [
        5,
        {**good, "host": "a b"},
        {**good, "host": "x" * 300},
        {**good, "host": "bad\x1b[2J"},
        {**good, "port": 0},
        {**good, "port": True},
        {**good, "port": "7420"},
        {**good, "node": "NOT-AN-ID"},
        {**good, "source": "mdns"},
        {**good, "answered": "yesterday"},
        {**good, "failures": -1},
    ]
    write_book(tmp_path, [*bad, good])
    book = PeerBook(str(tmp_path), now)
    assert [e.host for e in book.entries()] == ["10.6.0.1"]
    assert book.counts == {"remembered_bad_entry": len(bad)}
    # An answered time in the future (a clock set back) counts as now, not as forever.
    write_book(tmp_path, [{**good, "answered": now + 1000 * DAY}])
    assert PeerBook(str(tmp_path), now).entries()[0].answered == now


def test_forget_by_host_or_by_address(tmp_path: Path) -> None:
    now = time.time()
    book = PeerBook(str(tmp_path), now)
    book.answered("10.7.0.1", 7420, NODE_A, "learnt", now)
    book.answered("10.7.0.1", 7421, NODE_A, "learnt", now)
    book.answered("10.7.0.2", 7420, NODE_B, "learnt", now)
    assert [e.port for e in book.forget("10.7.0.1", 7421, now)] == [7421]
    assert book.forget("10.7.0.9", None, now) == []
    assert sorted(e.port for e in book.forget("10.7.0.1", None, now)) == [7420]
    assert [e.host for e in PeerBook(str(tmp_path), now).entries()] == ["10.7.0.2"]


# -- nodes on 127.0.0.1 ----------------------------------------------------------------


class Lines:
    """A Replies collecting text lines (line mode)."""

    json_mode = False

    def __init__(self) -> None:
        self.lines: list[str] = []

    def text(self, *lines: str) -> None:
        self.lines.extend(lines)

    def error(self, text: str) -> None:
        self.lines.append(f"!! {text}")

    def obj(self, kind: str, **fields: object) -> None:
        raise AssertionError("not in JSON mode")


def test_a_node_restarted_without_peer_rejoins_from_remembered(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A typed peer and a peer learnt from its presence are remembered; the
    node restarted with no --peer and no mDNS links to them again; /peers
    shows them; /forget removes one for good."""
    b = cluster.add("bob", data_dir=str(tmp_path / "b"))
    c = cluster.add("carol", peers=[b], data_dir=str(tmp_path / "c"))
    a_dir = str(tmp_path / "a")
    a = cluster.add("alice", peers=[b], data_dir=a_dir)
    cluster.wait_all_know_each_other()

    def remembered(node: object) -> dict[str, str]:
        return {f"{e.host}:{e.port}": e.source for e in a.remembered()}

    want = {f"127.0.0.1:{b.port}": "typed", f"127.0.0.1:{c.port}": "learnt"}
    # alice learns carol's address from her presence and dials her (the overlay's target is 5)
    wait_for(lambda: remembered(a) == want, 15.0, "alice to remember bob (typed), carol (learnt)")
    assert stat.S_IMODE(os.stat(Path(a_dir) / FILE_NAME).st_mode) == 0o600
    a.close()

    a2 = cluster.add("alice", data_dir=a_dir)  # no --peer, no discovery
    assert a2.node_id == a.node_id
    wait_for(
        lambda: {b.node_id, c.node_id} <= {li.peer for li in a2.snapshot().links},
        15.0,
        "alice to link to bob and carol again from her remembered peers",
    )
    out = Lines()
    handle_line(a2, out, "/peers")
    text = "\n".join(out.lines)
    assert f"127.0.0.1:{b.port}  typed  last answered" in text
    assert f"127.0.0.1:{c.port}  learnt  last answered" in text
    assert "2 remembered peers:" in text

    out = Lines()
    handle_line(a2, out, f"/forget 127.0.0.1:{c.port}")
    assert out.lines == [f"-- forgot 127.0.0.1:{c.port}"]
    handle_line(a2, out, "/forget 10.9.9.9")
    assert out.lines[-1] == "-- 10.9.9.9 is not remembered (/peers lists the remembered peers)"
    assert [f"{e.host}:{e.port}" for e in a2.remembered()] == [f"127.0.0.1:{b.port}"]


def test_a_bad_file_warns_and_the_node_starts(cluster: Cluster, tmp_path: Path) -> None:
    data = tmp_path / "a"
    data.mkdir(mode=0o700)
    (data / FILE_NAME).write_bytes(b"{ this is not json")
    a = cluster.add("alice", data_dir=str(data))
    notices = [e.text for e in cluster.recorders[-1].events if isinstance(e, Notice)]
    assert any(t.startswith("remembered peers ignored: ") for t in notices), notices
    assert a.stats().rate_limited.get("remembered_unreadable") == 1


def test_an_ephemeral_node_writes_no_book(cluster: Cluster, tmp_path: Path) -> None:
    b = cluster.add("bob")
    a = cluster.add("alice", peers=[b])  # data_dir None: --ephemeral
    cluster.wait_all_know_each_other()
    assert a.remembered() == []


def test_a_peer_found_by_mdns_is_not_remembered(cluster: Cluster, tmp_path: Path) -> None:
    """mDNS finds LAN peers again by itself: a link to an address it gave is
    not remembered (the book is for routed and VPN peers)."""
    b = cluster.add("bob")
    disc = HandDiscovery()
    config = NodeConfig(
        name="alice", room=cluster.room, port=0, interfaces=[LOOPBACK], data_dir=str(tmp_path / "a")
    )
    with Node(config, discovery=disc) as a:  # type: ignore[arg-type]
        a.start()
        assert disc.found is not None
        found = FoundPeer(
            b.node_id, "bob", cluster.room, wire.PROTOCOL_VERSION, (LOOPBACK,), b.port
        )
        disc.found(found)
        wait_for(lambda: b.node_id in {li.peer for li in a.snapshot().links}, 10.0, "the link")
        a.close()
        assert a.remembered() == []
    assert not (tmp_path / "a" / FILE_NAME).exists()


def test_a_typed_host_name_is_remembered_as_typed(cluster: Cluster, tmp_path: Path) -> None:
    """--peer by name (a MagicDNS name, say): the name is kept, and dialled
    by name (resolved again) at the next start."""
    b = cluster.add("bob")
    a_dir = str(tmp_path / "a")
    a = cluster.add("alice", data_dir=a_dir)
    a.add_peer("localhost", b.port)  # as --peer localhost:PORT
    wait_for(lambda: bool(a.remembered()), 10.0, "alice to remember bob")
    assert [(e.host, e.port, e.source) for e in a.remembered()] == [("localhost", b.port, "typed")]
    a.close()
    a2 = cluster.add("alice", data_dir=a_dir)
    wait_for(lambda: b.node_id in {li.peer for li in a2.snapshot().links}, 10.0, "the link again")


def test_remembered_peers_are_offered_again_after_the_overlay_gave_up(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node started while its remembered peer is down (a VPN not up yet):
    its overlay gives up on the peer, but the remembered peers are offered
    again later, so it links once the peer is back."""
    monkeypatch.setattr(peers_module, "RECALL_FIRST_S", 0.5)
    b_dir, a_dir = str(tmp_path / "b"), str(tmp_path / "a")
    b = cluster.add("bob", data_dir=b_dir)
    a = cluster.add("alice", peers=[b], data_dir=a_dir)
    wait_for(lambda: bool(a.remembered()), 10.0, "alice to remember bob")
    a.close()
    b_id, b_port = b.node_id, b.port
    b.close()

    config = NodeConfig(
        name="alice", room=cluster.room, port=0, interfaces=[LOOPBACK], data_dir=a_dir
    )
    with Node(config) as a2:
        a2._core.overlay.max_failures = 1  # gives up on bob at his first failed dial
        a2.start()
        wait_for(
            lambda: a2.stats().links == 0 and b_id not in a2._core.overlay.passive,
            10.0,
            "alice's overlay to give up on bob",
        )
        b2 = cluster.add("bob", data_dir=b_dir, port=b_port)
        assert b2.node_id == b_id
        wait_for(
            lambda: b_id in {li.peer for li in a2.snapshot().links},
            15.0,
            "alice to link to bob from her remembered peers, offered again",
        )


class Objs:
    """A Replies collecting JSON replies (scripted mode)."""

    json_mode = True

    def __init__(self) -> None:
        self.objs: list[dict[str, object]] = []
        self.errors: list[str] = []

    def text(self, *lines: str) -> None:
        raise AssertionError("not in line mode")

    def error(self, text: str) -> None:
        self.errors.append(text)

    def obj(self, kind: str, **fields: object) -> None:
        self.objs.append({"event": kind, **fields})


def test_peers_and_forget_in_json_and_ipv6_form(cluster: Cluster, tmp_path: Path) -> None:
    a = cluster.add("alice", data_dir=str(tmp_path / "a"))
    now = time.time()
    a.peers.book.answered("fd00::5", 7421, NODE_B, "typed", now - 90)
    a.peers.book.answered("10.8.0.1", 7420, NODE_A, "learnt", now - 30)
    out = Objs()
    handle_line(a, out, "/peers")
    (peers,) = out.objs
    assert [(e["host"], e["port"], e["source"]) for e in peers["remembered"]] == [  # type: ignore[attr-defined]
        ("10.8.0.1", 7420, "learnt"),
        ("fd00::5", 7421, "typed"),
    ]
    handle_line(a, out, "/forget [fd00::5]:7421")
    assert out.objs[-1]["event"] == "forget"
    assert [e["host"] for e in out.objs[-1]["forgotten"]] == ["fd00::5"]  # type: ignore[attr-defined]
    handle_line(a, out, "/forget 10.8.0.1:99999")
    handle_line(a, out, "/forget")
    assert out.errors[0].startswith("cannot forget: ")
    assert out.errors[1].startswith("usage: /forget HOST")
    lines = Lines()
    handle_line(a, lines, "/peers")
    assert lines.lines[-2] == "-- 1 remembered peer:"
    assert re.fullmatch(r"--   10\.8\.0\.1:7420  learnt  last answered 3\ds ago", lines.lines[-1])
