"""The uploader's admission of chunk requests: only what we hold, a bucket and a bound
in flight per peer, each refusal counted."""

from __future__ import annotations

from p2pchat.files.serve import Action, ServeConfig, Server

FILE = bytes(range(32))
OTHER = bytes(32)
CHUNK = 256 * 1024
SIZE = 10 * CHUNK + 5  # 11 chunks


def test_an_offered_file_is_served_and_its_slot_freed_when_sent() -> None:
    server = Server()
    server.offer(FILE, SIZE, CHUNK)
    verdict = server.request("alice", FILE, 10, 0.0)
    assert (verdict.action, verdict.offset, verdict.length) == (Action.SERVE, 10 * CHUNK, 5)
    assert server.in_flight("alice") == 1
    server.sent("alice", FILE, 10)
    assert server.in_flight("alice") == 0
    assert server.counts["served"] == 1


def test_only_files_we_serve_and_chunks_we_verified() -> None:
    server = Server()
    server.hold(FILE, SIZE, CHUNK)
    assert server.request("alice", OTHER, 0, 0.0).reason == "file_unknown"
    assert server.request("alice", FILE, 3, 0.0).reason == "file_not_held"
    assert server.request("alice", FILE, 11, 0.0).reason == "file_bad_index"
    assert server.request("alice", FILE, -1, 0.0).reason == "file_bad_index"
    server.add_chunk(FILE, 3)
    assert server.request("alice", FILE, 3, 0.0).action is Action.SERVE
    server.withdraw(FILE)
    assert server.request("alice", FILE, 4, 0.0).reason == "file_unknown"
    assert server.counts == {
        "file_unknown": 2,
        "file_not_held": 1,
        "file_bad_index": 2,
        "served": 1,
        "served_bytes": CHUNK,
    }


def test_a_file_offered_to_one_member_is_unknown_to_everyone_else() -> None:
    server = Server()
    server.offer(FILE, SIZE, CHUNK, allowed=frozenset({"bob"}))
    assert server.request("bob", FILE, 0, 0.0).action is Action.SERVE
    eve = server.request("eve", FILE, 0, 0.0)
    assert (eve.action, eve.reason) == (Action.DECLINE, "file_unknown")  # as if never offered


def test_a_peer_flooding_requests_gets_at_most_the_bound_in_flight() -> None:
    """A raw peer asks for every chunk again and again without waiting: at most 8 are
    being served at once; the rest are dropped and counted (fails without the bound)."""
    server = Server()
    server.offer(FILE, SIZE, CHUNK)
    verdicts = [server.request("mallory", FILE, i % 11, 0.0) for i in range(1000)]
    served = [v for v in verdicts if v.action is Action.SERVE]
    assert len(served) == 8
    assert server.in_flight("mallory") == 8
    assert server.counts["file_in_flight"] == 992
    # Another peer is not affected.
    assert server.request("alice", FILE, 0, 0.0).action is Action.SERVE


def test_a_peer_is_held_to_its_rate_and_told_busy() -> None:
    """A raw peer that frees each slot at once and asks again: over one virtual second it
    gets the burst plus one second of rate, no more (fails without the bucket)."""
    config = ServeConfig(rate_bytes_per_s=4 * CHUNK, burst_bytes=8 * CHUNK)
    server = Server(config)
    server.offer(FILE, 100 * CHUNK, CHUNK)
    served_bytes = 0
    busy = 0
    for step in range(1001):
        now = step / 1000
        verdict = server.request("mallory", FILE, step % 100, now)
        if verdict.action is Action.SERVE:
            served_bytes += verdict.length
            server.sent("mallory", FILE, step % 100)
        else:
            assert verdict.busy
            busy += 1
    assert served_bytes <= 8 * CHUNK + 4 * CHUNK
    assert served_bytes >= 11 * CHUNK
    assert server.counts["file_rate"] == busy > 900
    # An honest peer at a steady pace within the rate is never refused.
    honest = Server(config)
    honest.offer(FILE, 100 * CHUNK, CHUNK)
    for step in range(100):
        verdict = honest.request("alice", FILE, step, step * 0.25)
        assert verdict.action is Action.SERVE
        honest.sent("alice", FILE, step)


def test_refused_requests_cost_tokens_too() -> None:
    config = ServeConfig(
        rate_bytes_per_s=0.0, burst_bytes=64 * 1024, min_request_cost_bytes=16 * 1024
    )
    server = Server(config)
    reasons = [server.request("mallory", OTHER, 0, 0.0).reason for _ in range(6)]
    assert reasons == ["file_unknown"] * 4 + ["file_rate"] * 2


def test_cancel_and_departure_free_the_slots() -> None:
    server = Server()
    server.offer(FILE, SIZE, CHUNK)
    for i in range(3):
        server.request("bob", FILE, i, 0.0)
    assert server.cancel("bob", FILE, 1) is True
    assert server.cancel("bob", FILE, 1) is False
    assert server.in_flight("bob") == 2
    server.peer_gone("bob")
    assert server.in_flight("bob") == 0


def test_the_same_chunk_twice_at_once_is_served_once() -> None:
    server = Server()
    server.offer(FILE, SIZE, CHUNK)
    assert server.request("bob", FILE, 2, 0.0).action is Action.SERVE
    assert server.request("bob", FILE, 2, 0.0).action is Action.DROP
