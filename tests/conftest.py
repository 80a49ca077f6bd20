"""Shared fixtures: no thread outlives its test; in-process nodes on loopback.

Network safety: every node made here listens on 127.0.0.1 only, and mDNS runs
on 127.0.0.1 only, with a service type unique to the test.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from p2pchat.discovery import MdnsDiscovery
from p2pchat.events import Event, JoinEvent, LeaveEvent, MessageEvent
from p2pchat.node import Node, NodeConfig
from p2pchat.transport import LinkConfig

LOOPBACK = "127.0.0.1"


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Fail a test that leaves a thread running (as python-zeroconf's suite does)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"threads left running: {[t.name for t in extra]}"


def unique_service_type() -> str:
    """A DNS-SD service type no other test run uses (label <= 15 chars)."""
    return f"_p2pt{os.urandom(4).hex()}._tcp.local."


def unique_room() -> str:
    return f"test-{os.urandom(3).hex()}"


@dataclass
class Recorder:
    """Collects one node's events (thread-safe enough: list.append is atomic)."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)

    def messages(self) -> list[MessageEvent]:
        return [e for e in self.events if isinstance(e, MessageEvent)]

    def texts(self) -> list[str]:
        return [m.text for m in self.messages()]

    def joined_names(self) -> set[str]:
        return {e.name for e in self.events if isinstance(e, JoinEvent)}

    def leaves(self) -> list[LeaveEvent]:
        return [e for e in self.events if isinstance(e, LeaveEvent)]


FAST_LINK = LinkConfig(
    handshake_timeout_s=2.0, keepalive_interval_s=0.3, link_timeout_s=1.5, send_queue_frames=1024
)


class Cluster:
    """In-process nodes on 127.0.0.1, closed at the end of the test."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.nodes: list[Node] = []
        self.recorders: list[Recorder] = []

    def add(
        self,
        name: str,
        peers: list[Node] | None = None,
        mdns_type: str | None = None,
        **overrides: object,
    ) -> Node:
        rec = Recorder()
        settings: dict[str, object] = {
            "room": self.room,
            "port": 0,
            "interfaces": [LOOPBACK],
            "peers": [(LOOPBACK, p.port) for p in (peers or [])],
            "redial_min_s": 0.1,
            "redial_max_s": 1.0,
        }
        settings.update(overrides)
        config = NodeConfig(name=name, **settings)  # type: ignore[arg-type]
        disc = MdnsDiscovery(interfaces=[LOOPBACK], service_type=mdns_type) if mdns_type else None
        node = Node(config, discovery=disc, on_event=rec)
        self.nodes.append(node)
        self.recorders.append(rec)
        node.start()
        return node

    def wait_all_know_each_other(self, timeout_s: float = 15.0) -> None:
        n = len(self.nodes)
        wait_for(
            lambda: all(len(node.snapshot().members) == n for node in self.nodes),
            timeout_s,
            f"all {n} nodes to see each other",
        )

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(unique_room())
    try:
        yield c
    finally:
        c.close()
