"""Two LANs of Linux network namespaces, a router and a two-homed host, for
multi-LAN tests (built on :mod:`netns_lab`'s helpers).

Layout of ``routed(n_a, n_b, router=True, bridge=False)``::

    <tagA>-h0 .. h{n_a-1}               <tagB>-h0 .. h{n_b-1}
      eth0 10.A.1.x/24                    eth0 10.B.2.x/24
         |                                   |
    <tagA>-sw: br0 ------ <tagR>-h0 ------ <tagB>-sw: br0
         |                eth0 10.A.1.254     |
         |                eth1 10.B.2.254     |
         |                ip_forward=1        |
         +------------- <tagT>-h0 -----------+
                          eth0 10.A.1.200
                          eth1 10.B.2.200      (``bridge=True``: two-homed, no forwarding)

* Each LAN is one bridge in its own switch namespace; every veth is made
  inside a lab namespace with its other end moved straight into another, so
  no interface ever exists in the main namespace.
* With ``router=True`` the router namespace forwards IPv4 between the LANs
  and every host has a default route through it.  Multicast is never
  forwarded (no multicast routing): mDNS stays on each LAN.
* The two-homed host (``bridge=True``) has one veth on each bridge, mDNS on
  both, and forwards nothing.
* Every namespace name is ``p2plab-<pid>-<hex>-sw`` or ``...-h<n>`` (one tag
  per LAN, per router, per two-homed host), so :func:`netns_lab.
  remove_stale_namespaces` recognises them after a crash; all are deleted on
  exit (processes stopped first), also when the body raised.

Needs root and iproute2 (:func:`netns_lab.netns_available`).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from netns_lab import PREFIX, Host, _ip, ns_popen, ns_run, remove_stale_namespaces, stop_procs

ROUTER_OCTET = 254
BRIDGE_OCTET = 200


def _tag() -> str:
    return f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Routed:
    """A running two-LAN lab; made by :func:`routed`.

    Attributes:
        lan_a, lan_b: the hosts of each LAN (``Host.addr`` is their address).
        router: the router's namespace ("" without one).
        bridge: the two-homed host (its ``addr`` on LAN A), or None.
        bridge_addr_b: the two-homed host's address on LAN B.
        namespaces: every namespace made, in order of creation.
        procs: the processes started by :meth:`popen`.
    """

    lan_a: list[Host] = field(default_factory=list)
    lan_b: list[Host] = field(default_factory=list)
    router: str = ""
    bridge: Host | None = None
    bridge_addr_b: str = ""
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside namespace ``ns`` (``ip netns exec``; the
        Popen's PID is the command's own).  Stopped when the lab is torn down."""
        return ns_popen(self.procs, ns, argv, **kw)

    def run(self, ns: str, argv: Sequence[str], timeout: float = 10.0) -> str:
        """Run ``argv`` in namespace ``ns`` to completion; return its stdout."""
        return ns_run(ns, argv, timeout)

    def stop_all(self) -> None:
        """Terminate every started process still running; kill it after 5 s."""
        stop_procs(self.procs)


def _netns(name: str, made: list[str]) -> str:
    _ip("netns", "add", name)
    made.append(name)
    _ip("-n", name, "link", "set", "lo", "up")
    return name


def _switch(tag: str, made: list[str]) -> str:
    sw = _netns(f"{tag}-sw", made)
    _ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
    _ip("-n", sw, "link", "set", "br0", "up")
    return sw


def _plug(sw: str, port: str, ns: str, ifname: str, addr: str) -> None:
    """A veth from bridge ``sw`` (its end ``port``) to ``ns`` (its end
    ``ifname``, address ``addr``/24, multicast on)."""
    _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns)
    _ip("-n", sw, "link", "set", port, "master", "br0")
    _ip("-n", sw, "link", "set", "dev", port, "multicast", "on")
    _ip("-n", sw, "link", "set", port, "up")
    _ip("-n", ns, "link", "set", "dev", ifname, "multicast", "on")
    _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
    _ip("-n", ns, "link", "set", ifname, "up")


def _sysctl(ns: str, key: str, value: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"],
        check=True,
        capture_output=True,
        timeout=10.0,
    )


def _lan(tag: str, net: str, n: int, router: bool, made: list[str]) -> list[Host]:
    sw = _switch(tag, made)
    hosts = []
    for i in range(n):
        ns = _netns(f"{tag}-h{i}", made)
        addr = f"{net}.{i + 1}"
        _plug(sw, f"v{i}", ns, "eth0", addr)
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        if router:
            _ip("-n", ns, "route", "add", "default", "via", f"{net}.{ROUTER_OCTET}")
        hosts.append(Host(index=i, ns=ns, addr=addr))
    return hosts


def _build(n_a: int, n_b: int, router: bool, bridge: bool, made: list[str], lab: Routed) -> None:
    x = random.randint(0, 255)
    net_a, net_b = f"10.{x}.1", f"10.{x}.2"
    tag_a, tag_b = _tag(), _tag()
    lab.lan_a = _lan(tag_a, net_a, n_a, router, made)
    lab.lan_b = _lan(tag_b, net_b, n_b, router, made)
    if router:
        r = lab.router = _netns(f"{_tag()}-h0", made)
        _plug(f"{tag_a}-sw", "vr", r, "eth0", f"{net_a}.{ROUTER_OCTET}")
        _plug(f"{tag_b}-sw", "vr", r, "eth1", f"{net_b}.{ROUTER_OCTET}")
        _sysctl(r, "net.ipv4.ip_forward", "1")
    if bridge:
        t = _netns(f"{_tag()}-h0", made)
        _plug(f"{tag_a}-sw", "vt", t, "eth0", f"{net_a}.{BRIDGE_OCTET}")
        _plug(f"{tag_b}-sw", "vt", t, "eth1", f"{net_b}.{BRIDGE_OCTET}")
        _ip("-n", t, "route", "add", "224.0.0.0/4", "dev", "eth0")
        _sysctl(t, "net.ipv4.ip_forward", "0")
        lab.bridge = Host(index=0, ns=t, addr=f"{net_a}.{BRIDGE_OCTET}")
        lab.bridge_addr_b = f"{net_b}.{BRIDGE_OCTET}"


@contextlib.contextmanager
def routed(n_a: int, n_b: int, *, router: bool = True, bridge: bool = False) -> Iterator[Routed]:
    """Build two LANs of ``n_a`` and ``n_b`` hosts, joined by a router
    (``router``) and/or a two-homed host (``bridge``); tear it all down on
    exit (processes first, then hosts, then switches).

    Raises:
        netns_lab.LabError: an ``ip`` command failed (what was built is removed).
        ValueError: a LAN of fewer than 1 or more than 100 hosts.
    """
    if not (1 <= n_a <= 100 and 1 <= n_b <= 100):
        raise ValueError("each LAN needs 1..100 hosts")
    remove_stale_namespaces()
    made: list[str] = []
    lab = Routed(namespaces=made)
    try:
        _build(n_a, n_b, router, bridge, made, lab)
        yield lab
    finally:
        lab.stop_all()
        # Hosts and router before the switches (deleting a namespace destroys its veths).
        for ns in sorted(made, key=lambda n: n.endswith("-sw")):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _ip("netns", "del", ns, check=False)
