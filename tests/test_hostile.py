"""A node under attack on a live link: it stays up, counts and logs each attack, and keeps
delivering between honest peers.

Every test builds an honest pair A-B (in-process nodes on 127.0.0.1, B dialled A) and attacks A
from raw TCP sockets on 127.0.0.1.  For each attack it checks that

(a) the attacking link is closed, or its frames are dropped;
(b) ``A.stats()`` counts the attack under its reason code (``p2pchat.events.Stats``), and,
    where the attack ends a link for a bad frame or a timeout or gets it rate limited, the
    reason is logged once for that link, not once per frame;
(c) a line from B still reaches A and a line from A still reaches B afterwards;
(d) what A had before is still there: B's earlier line, B as a linked member.

Network safety: every socket here connects to 127.0.0.1 only, and no frame we send names another
address (no presence with ``addrs``, which a node would dial).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from conftest import FAST_LINK, Cluster, RawPeer, Recorder, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchat import wire
from p2pchat.errors import RemoteProtocolError
from p2pchat.events import PeerDown
from p2pchat.node import Node
from p2pchat.transport import LinkConfig

DELIVERY_S = 10.0
"""Deadline for an honest line, or a counter, to show up."""


# -- raw hostile peers --------------------------------------------------------------------------


@pytest.fixture
def raw_peers() -> Iterator[Callable[..., RawPeer]]:
    """Make raw peers; every one is closed at the end of the test."""
    made: list[RawPeer] = []

    def make(port: int, rcvbuf: int | None = None) -> RawPeer:
        peer = RawPeer(port, rcvbuf)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


@pytest.fixture(autouse=True)
def _p2pchat_info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p2pchat")


def frame_of(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


def chat_body_with(msg: wire.Chat, key: str, value: object) -> bytes:
    """``msg``'s MessagePack body with field ``key`` set to ``value``."""
    arr: list[Any] = msgspec.msgpack.decode(wire.encode_body(msg))
    arr[1 + wire.Chat.__struct_fields__.index(key)] = value
    return msgspec.msgpack.encode(arr)


# -- the honest pair ----------------------------------------------------------------------------


@dataclass
class Pair:
    """Honest nodes A (attacked) and B, linked, with one line each way already delivered."""

    cluster: Cluster
    a: Node
    b: Node
    rec_a: Recorder
    rec_b: Recorder
    before_id: str

    @property
    def room(self) -> str:
        return self.cluster.room


def make_pair(
    cluster: Cluster,
    a_link: LinkConfig = FAST_LINK,
    a_overrides: Mapping[str, object] | None = None,
    b_overrides: Mapping[str, object] | None = None,
) -> Pair:
    """A (with ``a_link`` and ``a_overrides``) and B (dialling A), linked, one line sent."""
    a_settings: dict[str, Any] = dict(a_overrides or {})
    b_settings: dict[str, Any] = dict(b_overrides or {})
    a = cluster.add("alice", link=a_link, **a_settings)
    b = cluster.add("bob", peers=[a], link=FAST_LINK, **b_settings)
    cluster.wait_all_know_each_other()
    rec_a, rec_b = cluster.recorders[0], cluster.recorders[1]
    before = b.send("before the attack")
    wait_for(lambda: before.id in ids(rec_a), DELIVERY_S, "B's line before the attack")
    return Pair(cluster, a, b, rec_a, rec_b, before.id)


def ids(rec: Recorder) -> set[str]:
    return {m.id for m in rec.messages()}


def has_all(rec: Recorder, wanted: list[str]) -> Callable[[], bool]:
    """A predicate: ``rec`` has delivered every message id in ``wanted``."""
    return lambda: set(wanted) <= ids(rec)


def honest_lines_still_flow(pair: Pair, tag: str) -> None:
    """(c) a line each way after the attack; (d) A's earlier state is intact."""
    from_b = pair.b.send(f"B after {tag}")
    wait_for(lambda: from_b.id in ids(pair.rec_a), DELIVERY_S, f"B's line at A after {tag}")
    from_a = pair.a.send(f"A after {tag}")
    wait_for(lambda: from_a.id in ids(pair.rec_b), DELIVERY_S, f"A's line at B after {tag}")
    assert pair.before_id in ids(pair.rec_a)
    snap = pair.a.snapshot()
    assert pair.b.node_id in {m.node for m in snap.members}
    assert pair.b.node_id in {link.peer for link in snap.links}


def counter(node: Node, group: str, code: str) -> int:
    """``node.stats().<group>[code]`` (0 if absent)."""
    value: dict[str, int] = getattr(node.stats(), group)
    return value.get(code, 0)


def wait_counter(node: Node, group: str, code: str, at_least: int) -> None:
    wait_for(
        lambda: counter(node, group, code) >= at_least,
        DELIVERY_S,
        f"stats().{group}[{code!r}] >= {at_least} (now {counter(node, group, code)})",
    )


def logged_about(caplog: pytest.LogCaptureFixture, address: str) -> list[logging.LogRecord]:
    """p2pchat's log records that name this link's address."""
    return [r for r in caplog.records if r.name.startswith("p2pchat") and address in r.getMessage()]


def expect_protocol_error(
    pair: Pair,
    caplog: pytest.LogCaptureFixture,
    raw: RawPeer,
    address: str,
    code: str,
    before: tuple[int, int],
) -> None:
    """(a) and (b) for an attack that must end the link as a protocol error ``code``."""
    raw.wait_closed()
    wait_counter(pair.a, "frames_refused", code, before[0] + 1)
    wait_counter(pair.a, "links_refused", "protocol_error", before[1] + 1)
    records = logged_about(caplog, address)
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno >= logging.WARNING and "protocol error" in records[0].getMessage()


def refused_before(pair: Pair, code: str) -> tuple[int, int]:
    return counter(pair.a, "frames_refused", code), counter(
        pair.a, "links_refused", "protocol_error"
    )


# -- bad bytes after a valid hello --------------------------------------------------------------


@pytest.mark.parametrize("framed", [False, True], ids=["bare", "behind-a-fitting-prefix"])
def test_random_bytes_after_hello(
    cluster: Cluster,
    raw_peers: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    framed: bool,
) -> None:
    pair = make_pair(cluster)
    data = random.Random(20261122).randbytes(4096)
    if framed:
        data = frame_of(data)
    # The reason code the node must count is the one the decoder gives for these bytes.
    with pytest.raises(RemoteProtocolError) as refused:
        wire.FrameDecoder().feed(data)
    code = refused.value.code
    before = refused_before(pair, code)
    raw = raw_peers(pair.a.port)
    raw.hello(pair.room)
    wait_for(lambda: len(pair.a.snapshot().links) == 2, DELIVERY_S, "the raw link to come up")
    raw.send(data)
    expect_protocol_error(pair, caplog, raw, raw.address, code, before)
    honest_lines_still_flow(pair, "random bytes")


def test_truncated_frame_then_close(cluster: Cluster, raw_peers: Callable[..., RawPeer]) -> None:
    pair = make_pair(cluster)
    raw = raw_peers(pair.a.port)
    raw.hello(pair.room)
    whole = raw.chat(pair.room, "a whole line")
    cut = raw.chat(pair.room, "a line cut in half")
    cut_frame = wire.encode_frame(cut)
    bytes_before = pair.a.stats().bytes_in
    refused = dict(pair.a.stats().frames_refused)
    raw.send(wire.encode_frame(whole) + cut_frame[: len(cut_frame) // 2])
    wait_for(lambda: whole.id in ids(pair.rec_a), DELIVERY_S, "the whole line at A")
    wait_for(lambda: whole.id in ids(pair.rec_b), DELIVERY_S, "the whole line forwarded to B")
    raw.close()
    # (a) the link ends at EOF; (b) it is not a protocol error (the stream just ended),
    # and the bytes were counted.
    wait_for(
        lambda: any(isinstance(e, PeerDown) and e.peer == raw.node_id for e in pair.rec_a.events),
        DELIVERY_S,
        "A to report the raw peer down",
    )
    wait_for(
        lambda: pair.a.stats().bytes_in >= bytes_before + len(cut_frame) // 2,
        DELIVERY_S,
        "the bytes to be counted",
    )
    assert pair.a.stats().frames_refused == refused
    (down,) = [e for e in pair.rec_a.events if isinstance(e, PeerDown) and e.peer == raw.node_id]
    assert "protocol error" not in down.reason  # EOF (or a reset), not a bad frame
    honest_lines_still_flow(pair, "a truncated frame")
    assert cut.id not in ids(pair.rec_a) | ids(pair.rec_b)


WRONG_FIELDS: list[tuple[str, object]] = [
    ("seq", "7"),
    ("hops", [16]),
    ("text", 42),
    ("action", "yes"),
    ("ts", 1e300),
    ("id", None),
    ("id", "00112233445566778899aabbccddeeff"),  # hex, as v1 sent it: v2 wants bin
    ("origin", {"node": 1}),
]


def test_wrong_field_types_after_hello(
    cluster: Cluster, raw_peers: Callable[..., RawPeer], caplog: pytest.LogCaptureFixture
) -> None:
    pair = make_pair(cluster)
    for key, value in WRONG_FIELDS:
        before = refused_before(pair, "invalid_fields")
        raw = raw_peers(pair.a.port)
        raw.hello(pair.room)
        body = chat_body_with(raw.chat(pair.room, f"bad {key}"), key, value)
        raw.send(frame_of(body))
        expect_protocol_error(pair, caplog, raw, raw.address, "invalid_fields", before)
    honest_lines_still_flow(pair, "wrong field types")
    assert not any(t.startswith("bad ") for t in pair.rec_a.texts() + pair.rec_b.texts())


@pytest.mark.parametrize(
    "prefix", [2**32 - 1, wire.MAX_FRAME_BYTES + 1, 0], ids=["4GiB", "65537", "zero"]
)
def test_bad_length_prefix_after_hello(
    cluster: Cluster,
    raw_peers: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    prefix: int,
) -> None:
    pair = make_pair(cluster)
    before = refused_before(pair, "oversized")
    raw = raw_peers(pair.a.port)
    raw.hello(pair.room)
    # Only the 4 prefix bytes: the node must refuse them without waiting for a body.
    raw.send(struct.pack("!I", prefix))
    expect_protocol_error(pair, caplog, raw, raw.address, "oversized", before)
    honest_lines_still_flow(pair, "a bad length prefix")


# -- handshakes that never complete -------------------------------------------------------------


def test_handshake_never_completes(
    cluster: Cluster, raw_peers: Callable[..., RawPeer], caplog: pytest.LogCaptureFixture
) -> None:
    timeout_s = 0.5
    link = LinkConfig(handshake_timeout_s=timeout_s, keepalive_interval_s=0.3, link_timeout_s=1.5)
    pair = make_pair(cluster, a_link=link)
    silent = raw_peers(pair.a.port)  # says nothing at all
    partial = raw_peers(pair.a.port)  # starts a hello and stops
    partial.send(partial.hello_frame(pair.room)[:10])
    before = counter(pair.a, "links_refused", "handshake_timeout")
    for raw in (silent, partial):
        took = raw.wait_closed(timeout_s=5.0)
        assert took < timeout_s + 1.5, f"closed after {took:.1f} s"
    wait_counter(pair.a, "links_refused", "handshake_timeout", before + 2)
    for raw in (silent, partial):
        records = logged_about(caplog, raw.address)
        assert len(records) == 1 and "handshake timeout" in records[0].getMessage()
    honest_lines_still_flow(pair, "stalled handshakes")


def test_slowloris_hello_is_cut_at_the_handshake_deadline(
    cluster: Cluster, raw_peers: Callable[..., RawPeer], caplog: pytest.LogCaptureFixture
) -> None:
    timeout_s = 1.0
    link = LinkConfig(handshake_timeout_s=timeout_s, keepalive_interval_s=0.3, link_timeout_s=1.5)
    pair = make_pair(cluster, a_link=link)
    before = counter(pair.a, "links_refused", "handshake_timeout")
    raw = raw_peers(pair.a.port)
    hello = raw.hello_frame(pair.room)
    start = time.monotonic()
    sent = 0
    closed = False
    # One byte every 0.1 s (a whole hello would take ~10 s); the deadline must end it.
    while not closed and sent < len(hello) and time.monotonic() - start < timeout_s + 4.0:
        try:
            raw.send(hello[sent : sent + 1])
        except OSError:
            break
        sent += 1
        readable, _, _ = select.select([raw.sock], [], [], 0.1)  # the deliberate pacing
        if readable:
            try:
                closed = raw.sock.recv(65536) == b""
            except OSError:
                closed = True
    took = time.monotonic() - start
    assert sent < len(hello), "the whole hello went through"
    assert took < timeout_s + 1.5, f"the trickling link lived {took:.1f} s"
    wait_counter(pair.a, "links_refused", "handshake_timeout", before + 1)
    records = logged_about(caplog, raw.address)
    assert len(records) == 1 and "handshake timeout" in records[0].getMessage()
    honest_lines_still_flow(pair, "a slowloris hello")


def test_slowloris_frame_after_hello_is_cut(
    cluster: Cluster, raw_peers: Callable[..., RawPeer], caplog: pytest.LogCaptureFixture
) -> None:
    # A frame must arrive whole within 2 link timeouts, however steadily its bytes trickle in.
    link_timeout_s = 1.0
    link = LinkConfig(
        handshake_timeout_s=2.0, keepalive_interval_s=0.3, link_timeout_s=link_timeout_s
    )
    pair = make_pair(cluster, a_link=link)
    before = refused_before(pair, "too_slow")
    raw = raw_peers(pair.a.port)
    raw.hello(pair.room)
    frame = wire.encode_frame(raw.chat(pair.room, "s" * 200))
    start = time.monotonic()
    sent = 0
    closed = False
    while not closed and sent < len(frame) and time.monotonic() - start < 8.0:
        try:
            raw.send(frame[sent : sent + 1])
        except OSError:
            break
        sent += 1
        readable, _, _ = select.select([raw.sock], [], [], 0.2)  # the deliberate pacing
        if readable:  # keepalives, or the end
            try:
                closed = raw.sock.recv(65536) == b""
            except OSError:
                closed = True
    took = time.monotonic() - start
    assert sent < len(frame), "the whole frame went through"
    assert took < 2 * link_timeout_s + 2.0, f"the trickling link lived {took:.1f} s"
    wait_counter(pair.a, "frames_refused", "too_slow", before[0] + 1)
    wait_counter(pair.a, "links_refused", "protocol_error", before[1] + 1)
    assert len(logged_about(caplog, raw.address)) == 1
    honest_lines_still_flow(pair, "a slowloris frame")


# -- floods of valid frames ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits",
    [{}, {"link_rate_per_s": 100.0, "link_burst": 100.0}],
    ids=["default-limits", "low-link-limit"],
)
def test_flood_of_one_duplicate_frame(
    cluster: Cluster,
    raw_peers: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    limits: dict[str, float],
) -> None:
    copies = 5000
    pair = make_pair(cluster, a_overrides=limits)
    stats0 = pair.a.stats()
    raw = raw_peers(pair.a.port)
    raw.hello(pair.room)
    line = raw.chat(pair.room, "the same line again and again")
    raw.send(wire.encode_frame(line) * copies)

    def dropped() -> int:
        s = pair.a.stats()
        return (
            s.duplicates_dropped
            - stats0.duplicates_dropped
            + s.rate_limited.get("link", 0)
            - stats0.rate_limited.get("link", 0)
        )

    # (a)+(b): every copy but the first is dropped, as a duplicate or by the link's rate limit.
    wait_for(lambda: dropped() >= copies - 1, DELIVERY_S, f"{copies - 1} copies dropped")
    wait_for(lambda: line.id in ids(pair.rec_b), DELIVERY_S, "the line forwarded to B")
    assert dropped() == copies - 1
    stats = pair.a.stats()
    limited = stats.rate_limited.get("link", 0) - stats0.rate_limited.get("link", 0)
    if limits:
        # At most the burst and what the rate refilled while the flood lasted get through.
        assert limited >= copies - 1000, stats
    assert stats.duplicates_dropped > stats0.duplicates_dropped
    assert [m.id for m in pair.rec_a.messages()].count(line.id) == 1
    assert [m.id for m in pair.rec_b.messages()].count(line.id) == 1
    # Logged once (and then once per thousand), not once per frame.
    assert len(logged_about(caplog, raw.address)) <= 1 + copies // 1000
    honest_lines_still_flow(pair, "a duplicate flood")


def test_one_origin_sending_too_fast(
    cluster: Cluster, raw_peers: Callable[..., RawPeer], caplog: pytest.LogCaptureFixture
) -> None:
    lines = 500
    pair = make_pair(cluster, a_overrides={"origin_rate_per_s": 20.0, "origin_burst": 20.0})
    before = counter(pair.a, "rate_limited", "origin")
    raw = raw_peers(pair.a.port)
    raw.hello(pair.room)
    flood = [raw.chat(pair.room, f"flood {i}") for i in range(lines)]
    start = time.monotonic()
    raw.send(b"".join(wire.encode_frame(m) for m in flood))
    # B's honest lines, sent while A works through the flood, all get through.
    honest = []
    for i in range(10):
        ev = pair.b.send(f"honest {i}")
        honest.append(ev.id)
        wait_for(has_all(pair.rec_a, [ev.id]), DELIVERY_S, f"honest line {i} at A")
    flood_ids = {m.id for m in flood}

    def accounted() -> int:
        delivered = len(flood_ids & ids(pair.rec_a))
        return delivered + counter(pair.a, "rate_limited", "origin") - before

    wait_for(lambda: accounted() >= lines, DELIVERY_S, "every flood line delivered or limited")
    elapsed = time.monotonic() - start
    limited = counter(pair.a, "rate_limited", "origin") - before
    delivered = len(flood_ids & ids(pair.rec_a))
    assert accounted() == lines
    # Receivers allow twice the burst, then the rate.
    assert delivered <= 2 * 20 + 20 * elapsed + 1, (delivered, elapsed)
    assert limited >= lines // 2, limited
    assert [i for i in honest if i not in ids(pair.rec_a)] == []
    # One log line for the first drop (then one per thousand), not one per line.
    assert (
        sum("rate limit (origin)" in r.getMessage() for r in caplog.records) <= 1 + limited // 1000
    )
    honest_lines_still_flow(pair, "an origin flood")


# -- too many links, a peer that stops reading --------------------------------------------------


def test_too_many_links_from_one_address(
    cluster: Cluster, raw_peers: Callable[..., RawPeer]
) -> None:
    # B's link is the first from 127.0.0.1, the first raw peer the second, the next one too many.
    pair = make_pair(cluster, a_overrides={"max_links_per_address": 2})
    before = counter(pair.a, "links_refused", "busy")
    first = raw_peers(pair.a.port)
    first.hello(pair.room)
    wait_for(lambda: len(pair.a.snapshot().links) == 2, DELIVERY_S, "the first raw link")
    extra = raw_peers(pair.a.port)
    extra.hello(pair.room)
    got = extra.read_until_closed(DELIVERY_S)  # with what hello() read ahead
    refusals = [m for m in got if isinstance(m, wire.Refuse)]
    assert refusals and refusals[0].code == "busy", got
    wait_counter(pair.a, "links_refused", "busy", before + 1)
    assert len(pair.a.snapshot().links) == 2  # B and the first raw peer stay
    honest_lines_still_flow(pair, "a refused extra link")


def test_peer_that_stops_reading_is_dropped(
    cluster: Cluster, raw_peers: Callable[..., RawPeer]
) -> None:
    fast = {"origin_rate_per_s": 1e5, "origin_burst": 1e5}  # A's lines are not paced here
    link = LinkConfig(
        handshake_timeout_s=2.0, keepalive_interval_s=0.3, link_timeout_s=5.0, send_queue_frames=16
    )
    pair = make_pair(cluster, a_link=link, a_overrides=fast, b_overrides=fast)
    stats0 = pair.a.stats()
    raw = raw_peers(pair.a.port, rcvbuf=4096)
    raw.hello(pair.room)
    wait_for(lambda: len(pair.a.snapshot().links) == 2, DELIVERY_S, "the raw link")
    keepalive = wire.encode_frame(wire.Keepalive())
    sent: list[str] = []
    text = "\U0001f600" * 1990  # 8 kB frames fill the socket buffers sooner
    deadline = time.monotonic() + 20.0
    # A sends in batches that B (which reads) keeps up with, so only the raw queue fills.
    while pair.a.stats().queue_drops == stats0.queue_drops:
        assert time.monotonic() < deadline, f"no queue drop after {len(sent)} lines"
        batch = [pair.a.send(f"{len(sent) + i} {text}").id for i in range(8)]
        sent += batch
        wait_for(has_all(pair.rec_b, batch), DELIVERY_S, "a batch at B")
        with contextlib.suppress(OSError):  # A may have dropped the link meanwhile
            raw.send(keepalive)  # alive, but never reading
    stats = pair.a.stats()
    assert stats.queue_drops == stats0.queue_drops + 1
    wait_counter(pair.a, "links_refused", "queue_full", 1)
    wait_for(
        lambda: any(
            isinstance(e, PeerDown) and e.peer == raw.node_id and e.reason == "send queue full"
            for e in pair.rec_a.events
        ),
        DELIVERY_S,
        "the raw peer reported down for its full queue",
    )
    for _ in range(3):  # B still gets everything (in batches its 16-frame queue takes)
        batch = [pair.a.send(f"after the drop {len(sent) + i}").id for i in range(8)]
        sent += batch
        wait_for(has_all(pair.rec_b, batch), DELIVERY_S, "a batch at B after the drop")
    missing = set(sent) - ids(pair.rec_b)
    assert not missing, f"{len(missing)} of {len(sent)} lines never reached B"
    assert len(pair.a.snapshot().links) == 1
    honest_lines_still_flow(pair, "a peer that stopped reading")


# -- deeply nested data: a counted protocol error, not a RecursionError ---------------------------

DEEP_JSON = b"[" * 5000 + b"]" * 5000
DEEP_MSGPACK = b"\x91" * 5000 + b"\x90"  # arrays of one array, 5000 deep


@pytest.mark.parametrize("where", ["unknown-element-after-hello", "first-frame"])
def test_deeply_nested_data_is_a_counted_protocol_error(
    cluster: Cluster,
    raw_peers: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    pair = make_pair(cluster)
    stats0 = pair.a.stats()
    raw = raw_peers(pair.a.port)
    if where == "first-frame":
        raw.send(frame_of(b'{"type":"hello","x":' + DEEP_JSON + b"}"))
    else:
        raw.hello(pair.room)
        body = wire.encode_body(raw.chat(pair.room, "deep"))
        # One more element in the chat's array (an array 16: its count is in
        # the two bytes after 0xdc), after the known fields: nested 5000 deep.
        assert body[0] == 0xDC
        count = int.from_bytes(body[1:3], "big") + 1
        raw.send(frame_of(b"\xdc" + count.to_bytes(2, "big") + body[3:] + DEEP_MSGPACK))
    raw.wait_closed()
    honest_lines_still_flow(pair, "deeply nested data")

    def refused() -> int:
        return sum(pair.a.stats().frames_refused.values()) - sum(stats0.frames_refused.values())

    # The link's reader shuts its socket before it reports the close, so the raw peer
    # can see EOF a moment before the node counts the bad frame.
    wait_for(lambda: refused() >= 1, DELIVERY_S, "the bad frame counted")
    records = logged_about(caplog, raw.address)
    assert not any(r.exc_info for r in records), "logged as an internal error, with a traceback"
    assert refused() == 1, pair.a.stats()


# -- hypothesis: arbitrary bytes after a valid hello ----------------------------------------------

# Never "addrs": a node dials the addresses a presence names.
FIELD_NAMES = "type id origin seq name room ts hops text action version node port code reason old"
JSON_TYPES = ["hello", "refuse", "bogus"]
BIN_TYPES = ["keepalive", "chat", "join", "leave", "nick", "presence", "proof", "sync", "bogus"]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(JSON_TYPES)},
    optional={k: json_values for k in FIELD_NAMES.split() if k != "type"},
).map(lambda obj: frame_of(json.dumps(obj).encode("utf-8", "surrogatepass")))
bin_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
    | st.binary(max_size=70)
    | st.sampled_from([b"\0" * 8, b"\0" * 16, b"\0" * 32, b"\0" * 64]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
bin_arrays = st.tuples(st.sampled_from(BIN_TYPES), st.lists(bin_values, max_size=15)).map(
    lambda t: frame_of(msgspec.msgpack.encode([t[0], *t[1]]))
)
frames = json_objects | bin_arrays
attack_bytes = st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=1, max_size=300).map(frame_of),
    frames,
    st.lists(frames, min_size=1, max_size=3).map(b"".join),
)


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=attack_bytes)
def test_arbitrary_bytes_after_hello_never_stop_delivery(
    live_pair: Pair, caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    raw = RawPeer(live_pair.a.port)
    try:
        raw.hello(live_pair.room)
        with contextlib.suppress(OSError):  # A may close the link before it has all of it
            raw.send(data)
            raw.sock.shutdown(socket.SHUT_WR)  # then A ends the link at EOF, if not before
        raw.wait_closed()
    finally:
        raw.close()
    line = live_pair.b.send("still here")
    wait_for(lambda: line.id in ids(live_pair.rec_a), DELIVERY_S, "an honest line after the bytes")
    internal = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not internal, f"a traceback in the log: {internal}"


@pytest.fixture
def live_pair(cluster: Cluster) -> Pair:
    """One pair for all the examples of a hypothesis test."""
    return make_pair(cluster)
