"""IP addresses of both families: parsing, printing, and which learnt ones a node dials.

Pure functions (no sockets, no clock); any thread.  Addresses travel as text:
IPv4 as dotted quads (``192.168.1.7``), IPv6 in the compressed form of RFC
5952 (``fd00::7``), a link-local IPv6 address with its zone (RFC 4007
section 11: ``fe80::1%eth0`` or ``fe80::1%2``) where the zone is this
machine's.  An IPv4-mapped IPv6 address (``::ffff:192.168.1.7``, what a
dual-stack listener reports for an IPv4 peer) is the IPv4 address: see
:func:`normalize`.

**The address policy** (:func:`refusal`, :func:`screen`): an address a node
learns from others (a presence's ``addrs``, mDNS, remembered peers) is
dialled only if it is a unicast address another host can own:

* never unspecified (``0.0.0.0``, ``::``), multicast (``224.0.0.0/4``,
  ``ff00::/8``) or the IPv4 limited broadcast ``255.255.255.255``;
* never loopback (``127.0.0.0/8``, ``::1``), unless this node runs on
  loopback only (every address it announces is a loopback one, as in tests):
  only then are its peers on this machine, and their loopback addresses
  theirs.  A peer elsewhere that names a loopback address names one of ours:
  dialling it would make nodes knock on their own services;
* an IPv6 link-local address (``fe80::/10``) only with a zone: without one
  it cannot be dialled (a zone names an interface of the machine that holds
  it, so presences never carry link-local addresses; mDNS gives them with
  ours);
* text that is no IP address at all (a host name) is refused: a peer could
  make every node resolve a name of its choice.

``--peer`` addresses typed by the user are not screened: the user chose them.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REFUSAL_REASONS = (
    "not_ip",
    "unspecified",
    "multicast",
    "broadcast",
    "loopback",
    "link_local_no_zone",
)
"""Every reason :func:`refusal` gives (the keys of ``Stats.addrs_refused``)."""

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def parse(text: str) -> IPAddress | None:
    """``text`` as an IP address of either family (an IPv6 zone kept, an
    IPv4-mapped IPv6 address turned into its IPv4 address), or None if it is
    not one (a host name, garbage)."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@functools.lru_cache(maxsize=4096)
def normalize(host: str) -> str:
    """The text form of ``host`` this project prints and compares: IPv4
    dotted quad, IPv6 compressed (zone kept), ``::ffff:a.b.c.d`` as
    ``a.b.c.d``; a host name unchanged.

    >>> normalize("::ffff:10.0.0.1"), normalize("FD00:0::1"), normalize("example")
    ('10.0.0.1', 'fd00::1', 'example')
    """
    addr = parse(host)
    return host if addr is None else str(addr)


def family(host: str) -> int:
    """4 or 6 for an IP address (an IPv4-mapped one is 4), 0 for anything else."""
    addr = parse(host)
    return 0 if addr is None else addr.version


def hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (RFC 3986 section
    3.2.2): ``[fd00::1]:7420``, ``10.0.0.1:7420``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hostport_split(text: str) -> tuple[str, int]:
    """The inverse of :func:`hostport`: ``"[fd00::1]:7420"`` -> ``("fd00::1",
    7420)``, ``"10.0.0.1:7420"`` -> ``("10.0.0.1", 7420)``; a text without a
    port gives port 0.  Never raises (a bad port is 0)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    return host, int(port_text) if port_text.isdigit() and len(port_text) <= 5 else 0


def is_loopback(host: str) -> bool:
    """True for an address of ``127.0.0.0/8`` or ``::1`` (mapped ones too)."""
    addr = parse(host)
    return addr is not None and addr.is_loopback


def is_link_local_v6(host: str) -> bool:
    """True for an IPv6 link-local address (``fe80::/10``), zone or not."""
    addr = parse(host)
    return isinstance(addr, ipaddress.IPv6Address) and addr.is_link_local


def loopback_only(own: Iterable[str]) -> bool:
    """True when ``own`` (what this node announces) holds addresses and
    every one is a loopback one: the node runs on loopback only, and
    :func:`refusal` lets loopback addresses through."""
    own = list(own)
    return bool(own) and all(is_loopback(a) for a in own)


@functools.lru_cache(maxsize=4096)  # presences repeat their addresses every few seconds
def refusal(host: str, loopback_ok: bool) -> str | None:
    """Why a learnt address must not be dialled (one of
    :data:`REFUSAL_REASONS`), or None to dial it.  See the module docstring.

    Args:
        host: the address as learnt (text).
        loopback_ok: this node runs on loopback only (:func:`loopback_only`).
    """
    addr = parse(host)
    if addr is None:
        return "not_ip"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_multicast:
        return "multicast"
    if addr == _BROADCAST:
        return "broadcast"
    if addr.is_loopback and not loopback_ok:
        return "loopback"
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_link_local and not addr.scope_id:
        return "link_local_no_zone"
    return None


def screen(hosts: Iterable[str], loopback_ok: bool, refused: dict[str, int]) -> list[str]:
    """The learnt addresses a node may dial, normalized, in order, each once;
    every refused one counted in ``refused`` by reason (``refused`` is
    updated in place: the node's ``addrs_refused`` counters)."""
    kept: list[str] = []
    for host in hosts:
        why = refusal(host, loopback_ok)
        if why is not None:
            refused[why] = refused.get(why, 0) + 1
            continue
        text = normalize(host)
        if text not in kept:
            kept.append(text)
    return kept


def prefer(hosts: Iterable[str], answered: str = "", fam: int = 0) -> list[str]:
    """``hosts`` reordered for dialling: ``answered`` (the address that
    answered last) first, then the addresses of family ``fam`` (4 or 6: the
    family that answered last), then the rest, each group in its order."""
    hosts = list(hosts)
    first = [h for h in hosts if h == answered]
    rest = [h for h in hosts if h != answered]
    same = [h for h in rest if fam and family(h) == fam]
    other = [h for h in rest if not (fam and family(h) == fam)]
    return first + same + other
