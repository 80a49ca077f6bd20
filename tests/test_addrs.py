"""IPv6 and the address policy: parsing and printing addresses of both families, which learnt
addresses a node dials (p2pchat/addrs.py), presences with IPv6 addresses on the wire, a
listener that reports IPv4-mapped peers as plain IPv4, two nodes chatting over ``::1``, and a
hostile peer whose presence names addresses no node may dial.

Network safety: every socket binds and connects on 127.0.0.0/8 or ``::1``; the addresses a
hostile presence names are refused by the node (multicast and broadcast ones could not be dialled
over TCP anyway: the kernel refuses the connect, nothing is sent).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import msgspec
import pytest
from conftest import LOOPBACK, Cluster, RawPeer, wait_for

from p2pchat import addrs, wire
from p2pchat.cli import args
from p2pchat.core.overlay import Overlay
from p2pchat.errors import RemoteProtocolError, UsageError
from p2pchat.identity import Identity
from p2pchat.peers import advertised_addresses
from p2pchat.transport import Listener, peer_host

DELIVERY_S = 10.0


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6_loopback = pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)"
)


# -- parsing and printing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("::ffff:a00:1", "10.0.0.1"),
        ("FD00:0:0::7", "fd00::7"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("bob.local", "bob.local"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert addrs.normalize(text) == expected


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [("10.0.0.1", 7420, "10.0.0.1:7420"), ("fd00::1", 7420, "[fd00::1]:7420")],
)
def test_hostport_round_trip(host: str, port: int, text: str) -> None:
    assert addrs.hostport(host, port) == text
    assert addrs.hostport_split(text) == (host, port)


def test_hostport_split_without_a_port() -> None:
    assert addrs.hostport_split("fd00::1") == ("fd00::1", 0)
    assert addrs.hostport_split("[fd00::1]") == ("fd00::1", 0)
    assert addrs.hostport_split("10.0.0.1:x") == ("10.0.0.1", 0)


def test_peer_host_reports_mapped_ipv4_as_ipv4() -> None:
    assert peer_host(("::ffff:192.0.2.7", 5000, 0, 0)) == "192.0.2.7"
    assert peer_host(("192.0.2.7", 5000)) == "192.0.2.7"
    assert peer_host(("fd00::7", 5000, 0, 0)) == "fd00::7"
    assert peer_host(("fe80::7", 5000, 0, 1)) == f"fe80::7%{socket.if_indextoname(1)}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[::1]:7421", ("::1", 7421)),
        ("[fd00::1]:7500", ("fd00::1", 7500)),
        ("[fe80::1%eth0]:7500", ("fe80::1%eth0", 7500)),
        ("fe80::1%eth0", ("fe80::1%eth0", 7420)),
    ],
)
def test_parse_peer_ipv6(text: str, expected: tuple[str, int]) -> None:
    assert args.parse_peer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("::1", ["::1"]), ("FD00::0:1", ["fd00::1"]), ("fe80::1%eth9", ["fe80::1%eth9"])],
)
def test_parse_interface_ipv6(text: str, expected: list[str]) -> None:
    assert args.parse_interface(text) == expected


def test_parse_interface_name_stands_for_its_addresses() -> None:
    import ifaddr

    (name,) = [a.name for a in ifaddr.get_adapters() if any(ip.ip == LOOPBACK for ip in a.ips)]
    found = args.parse_interface(name)  # lo, lo0, ...
    assert LOOPBACK in found
    with pytest.raises(UsageError, match="no interface named"):
        args.parse_interface("nosuch-if0")


def test_options_take_interface_names_and_ipv6() -> None:
    opts = args.parse_args(["--name", "a", "--interface", "::1", "--interface", "127.0.0.1"])
    assert opts.interfaces == ("::1", "127.0.0.1")


def test_advertised_addresses_leave_out_link_local_and_wildcards() -> None:
    from p2pchat.node import NodeConfig

    cfg = NodeConfig(name="a", interfaces=["fe80::1%lo", "::1", "FD00::0:1", "10.0.0.1"])
    assert advertised_addresses(cfg) == ["::1", "fd00::1", "10.0.0.1"]


# -- the address policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback_ok", "why"),
    [
        ("192.168.1.7", False, None),
        ("fd00::7", False, None),
        ("2001:db8::7", False, None),
        ("fe80::7%eth0", False, None),
        ("fe80::7", False, "link_local_no_zone"),
        ("0.0.0.0", True, "unspecified"),
        ("::", True, "unspecified"),
        ("224.0.0.251", True, "multicast"),
        ("239.1.2.3", True, "multicast"),
        ("ff02::fb", True, "multicast"),
        ("255.255.255.255", True, "broadcast"),
        ("127.0.0.1", False, "loopback"),
        ("127.9.9.9", False, "loopback"),
        ("::1", False, "loopback"),
        ("::ffff:127.0.0.1", False, "loopback"),
        ("::ffff:224.0.0.1", True, "multicast"),
        ("127.0.0.1", True, None),
        ("::1", True, None),
        ("bob.local", True, "not_ip"),
        ("", True, "not_ip"),
    ],
)
def test_refusal(host: str, loopback_ok: bool, why: str | None) -> None:
    assert addrs.refusal(host, loopback_ok) == why
    assert why is None or why in addrs.REFUSAL_REASONS


def test_loopback_only() -> None:
    assert addrs.loopback_only(["127.0.0.1"])
    assert addrs.loopback_only(["127.0.0.1", "::1"])
    assert not addrs.loopback_only(["127.0.0.1", "192.168.1.7"])
    assert not addrs.loopback_only([])  # a node that announces nothing is not "on loopback"


def test_screen_keeps_order_normalizes_and_counts() -> None:
    refused: dict[str, int] = {}
    kept = addrs.screen(
        ["::ffff:10.0.0.1", "224.0.0.1", "fd00::1", "10.0.0.1", "127.0.0.1", "0.0.0.0"],
        loopback_ok=False,
        refused=refused,
    )
    assert kept == ["10.0.0.1", "fd00::1"]
    assert refused == {"multicast": 1, "loopback": 1, "unspecified": 1}


def test_prefer_the_address_and_family_that_answered() -> None:
    hosts = ["10.0.0.1", "fd00::1", "10.0.0.2", "fd00::2"]
    assert addrs.prefer(hosts) == hosts
    assert addrs.prefer(hosts, fam=6) == ["fd00::1", "fd00::2", "10.0.0.1", "10.0.0.2"]
    assert addrs.prefer(hosts, "10.0.0.2", 6) == ["10.0.0.2", "fd00::1", "fd00::2", "10.0.0.1"]


def test_overlay_dials_the_answered_address_first() -> None:
    import random

    ov = Overlay("me", random.Random(1))
    ov.learn("p", ["10.0.0.1", "fd00::1"], 7420, 0.0)
    ov.learn("q", ["10.0.0.9", "fd00::9"], 7420, 0.0)
    assert ov.address("p") == (["10.0.0.1", "fd00::1"], 7420)
    ov.answered("p", "fd00::1")
    assert ov.address("p") == (["fd00::1", "10.0.0.1"], 7420)
    # the family that answered goes first for the others too
    assert ov.address("q") == (["fd00::9", "10.0.0.9"], 7420)
    # a new address list keeps the preference
    ov.learn("p", ["10.0.0.1", "fd00::1", "fd00::2"], 7420, 1.0)
    assert ov.address("p") == (["fd00::1", "fd00::2", "10.0.0.1"], 7420)


# -- presences on the wire -----------------------------------------------------------------------


def _presence(where: list[str]) -> wire.Presence:
    who = Identity.generate()
    msg = wire.Presence(
        id=wire.new_message_id(),
        origin=who.node_id,
        seq=1,
        name="alice",
        room="lobby",
        ts=wire.now_ts(),
        hops=0,
        addrs=where,
        port=7420,
    )
    return signed_as(who, msg)


def _body_with_addrs(where: list[str]) -> bytes:
    arr = msgspec.msgpack.decode(wire.encode_body(_presence(["10.0.0.1"])))
    arr[1 + wire.Presence.__struct_fields__.index("addrs")] = where
    return bytes(msgspec.msgpack.encode(arr))


def test_presence_carries_both_families() -> None:
    where = ["192.168.1.20", "fd00::7", "2001:db8:0:1::20"]
    back = wire.decode_body(wire.encode_body(_presence(where)))
    assert isinstance(back, wire.Presence)
    assert back.addrs == where


@pytest.mark.parametrize(
    "bad",
    [
        "FD00::7",  # not lowercase
        "fd00:0::7",  # not compressed
        "fe80::1%eth0",  # a zone
        "::ffff:a00:1",  # IPv4-mapped
        "1::2::3",
        "fd00:0:0:0:0:0:0:0:7",
        "010.0.0.1",
        "a" * 40,
    ],
)
def test_presence_with_a_bad_ipv6_address_is_invalid(bad: str) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        wire.decode_body(_body_with_addrs(["10.0.0.1", bad]))
    assert err.value.code == "invalid_fields"


def signed_as(who: Identity, msg: wire.F) -> wire.F:
    """``msg`` under ``who``'s node id, with its key and a valid signature of it."""
    msg = msgspec.structs.replace(msg, origin=who.node_id, key=who.key, sig="")
    return msgspec.structs.replace(msg, sig=who.sign(wire.signing_bytes(msg)))


# -- sockets -------------------------------------------------------------------------------------


@needs_ipv6_loopback
def test_a_v6_socket_reports_an_ipv4_peer_as_plain_ipv4() -> None:
    """A listener on an IPv6 socket (here bound to the IPv4-mapped loopback, what a dual-stack
    socket on ``::`` does for every IPv4 address) names an IPv4 peer by its dotted quad."""
    seen: list[tuple[str, int]] = []

    def on_accept(sock: socket.socket, remote: tuple[str, int]) -> None:
        seen.append(remote)
        sock.close()

    listener = Listener("::ffff:127.0.0.1", 0, on_accept)
    assert listener.sock.family == socket.AF_INET6
    listener.start()
    try:
        with socket.create_connection((LOOPBACK, listener.port), timeout=5):
            wait_for(lambda: bool(seen), 5.0, "the listener to accept")
    finally:
        listener.close()
        listener.join(5.0)
    assert seen[0][0] == LOOPBACK


@needs_ipv6_loopback
def test_two_nodes_chat_over_ipv6_loopback(cluster: Cluster) -> None:
    a = cluster.add("alice", interfaces=["::1"], peers=[])
    b = cluster.add("bob", interfaces=["::1"], peers=[])
    b.add_peer("::1", a.port)
    cluster.wait_all_know_each_other()
    line = b.send("over IPv6")
    wait_for(lambda: "over IPv6" in cluster.recorders[0].texts(), DELIVERY_S, "bob's line")
    back = a.send("and back")
    wait_for(lambda: "and back" in cluster.recorders[1].texts(), DELIVERY_S, "alice's line")
    assert cluster.recorders[0].texts().count("over IPv6") == 1
    assert cluster.recorders[1].texts().count("and back") == 1
    assert line.id != back.id
    (link,) = b.snapshot().links
    assert link.address == f"[::1]:{a.port}"
    (link,) = a.snapshot().links
    assert link.address.startswith("[::1]:")


# -- a hostile presence --------------------------------------------------------------------------


class Trap:
    """A TCP listener on ``host`` that records who connects (and closes them)."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-trap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.sock.close()


@pytest.fixture
def traps() -> Iterator[Callable[..., Trap]]:
    made: list[Trap] = []

    def make(host: str, port: int = 0) -> Trap:
        trap = Trap(host, port)
        made.append(trap)
        return trap

    yield make
    for trap in made:
        trap.close()


def test_a_presence_naming_forbidden_addresses_is_not_dialled(
    cluster: Cluster, traps: Callable[..., Trap]
) -> None:
    """A raw peer floods the presence of a made-up member whose ``addrs`` list unspecified,
    multicast and broadcast addresses before a good one.  The node dials only the good one
    (``0.0.0.0`` would have reached this machine's own 127.0.0.1: a peer could make nodes knock
    on any local port) and counts each refused address in ``/stats``."""
    a = cluster.add("alice", active_target=3)
    forbidden = traps(LOOPBACK)  # where a dial of 0.0.0.0 lands
    good = traps("127.0.0.2", forbidden.port)
    raw = RawPeer(a.port)
    try:
        raw.hello(cluster.room)
        wait_for(lambda: a.has_link(raw.node_id), DELIVERY_S, "the raw peer's link")
        fake = Identity.generate()
        presence = wire.Presence(
            id=wire.new_message_id(),
            origin=fake.node_id,
            seq=1,
            name="mallory",
            room=cluster.room,
            ts=wire.now_ts(),
            hops=16,
            addrs=["0.0.0.0", "::", "224.0.0.251", "ff02::1", "255.255.255.255", "127.0.0.2"],
            port=forbidden.port,
        )
        raw.send(wire.encode_frame(signed_as(fake, presence)))
        wait_for(lambda: good.hits + forbidden.hits > 0, DELIVERY_S, "a dial of the member")
        assert forbidden.hits == 0, "the node dialled 0.0.0.0 (this machine)"
        assert good.hits > 0
        assert a.stats().addrs_refused == {"unspecified": 2, "multicast": 2, "broadcast": 1}
    finally:
        raw.close()


def test_discovery_results_pass_the_same_policy(traps: Callable[..., Trap]) -> None:
    """What mDNS reports goes through the same policy as presences: a node found with a
    multicast and an unspecified address before a good one is dialled at the good one only."""
    from conftest import HandDiscovery, unique_room

    from p2pchat.discovery import FoundPeer
    from p2pchat.node import Node, NodeConfig

    forbidden = traps(LOOPBACK)
    good = traps("127.0.0.2", forbidden.port)
    disc = HandDiscovery()
    room = unique_room()
    cfg = NodeConfig(name="alice", room=room, port=0, interfaces=[LOOPBACK])
    with Node(cfg, discovery=disc) as node:  # type: ignore[arg-type]
        node.start()
        assert disc.found is not None
        disc.found(
            FoundPeer(
                node_id=Identity.generate().node_id,
                name="bob",
                room=room,
                version=wire.PROTOCOL_VERSION,
                addresses=("0.0.0.0", "ff02::fb", "127.0.0.2"),
                port=forbidden.port,
            )
        )
        wait_for(lambda: good.hits + forbidden.hits > 0, DELIVERY_S, "a dial of the peer")
        assert forbidden.hits == 0, "the node dialled 0.0.0.0 (this machine)"
        assert node.stats().addrs_refused == {"unspecified": 1, "multicast": 1}


def test_mdns_stays_on_ipv4_loopback_when_told_to() -> None:
    """``--interface 127.0.0.1`` (every test) gives zeroconf that address and IPv4 only: no IPv6
    socket is opened, so nothing is sent on another interface; every interface means both
    families."""
    from p2pchat.discovery import mdns_interfaces

    assert mdns_interfaces(["127.0.0.1"]) == (["127.0.0.1"], "v4")
    assert mdns_interfaces(["::1"]) == (["::1"], "v6")
    assert mdns_interfaces(["127.0.0.1", "fe80::1%lo"]) == (["127.0.0.1", "fe80::1"], "all")
    assert mdns_interfaces(None) == (None, "all" if socket.has_ipv6 else "v4")


def test_local_addresses_of_both_families() -> None:
    from p2pchat.discovery import local_addresses, local_ipv6_addresses

    found = local_addresses(link_local=True)
    assert found
    assert all(addrs.parse(a) is not None for a in found)
    assert all(addrs.normalize(a) == a for a in found)
    six = local_ipv6_addresses(link_local=True)
    assert all("%" in a for a in six if addrs.is_link_local_v6(a))
    assert not any(addrs.is_link_local_v6(a) for a in local_ipv6_addresses())


def test_every_refusal_reason_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "reliability.md").read_text()
    missing = [r for r in addrs.REFUSAL_REASONS if f"`{r}`" not in doc]
    assert not missing, f"docs/reliability.md does not list {missing}"


def test_a_numeric_zone_is_shown_by_name() -> None:
    from p2pchat.discovery import zone_by_name

    lo = socket.if_indextoname(1)
    assert zone_by_name("fe80::1%1") == f"fe80::1%{lo}"
    assert zone_by_name("fe80::1%eth0") == "fe80::1%eth0"
    assert zone_by_name("fd00::1") == "fd00::1"
    assert zone_by_name("fe80::1%999999") == "fe80::1%999999"  # no such interface: as it came
