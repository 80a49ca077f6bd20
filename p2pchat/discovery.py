"""Peer discovery over mDNS / DNS-SD (RFC 6762, RFC 6763), through python-zeroconf.

The only module that imports zeroconf.  A node registers one DNS-SD service
instance of type ``_p2pchat._tcp.local.`` whose SRV record carries its TCP port
and whose TXT record (RFC 6763 section 6) carries ``v`` (protocol version),
``id`` (node id), ``name`` and ``room``; it browses the same type and reports
every other instance it resolves.  Closing unregisters the instance, which
sends the goodbye (TTL 0, RFC 6762 section 10.1) so that peers learn at once.

A crashed node sends no goodbye and its records linger in caches (zeroconf
keeps PTR records for at least 1125 s), so liveness never comes from here:
the node detects dead peers by TCP keepalive.

The :class:`Discovery` protocol lets tests and embedders pass another
discovery (or none) to :class:`~p2pchat.node.Node`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # zeroconf is imported when mDNS starts: --no-mdns saves ~10 MB
    from zeroconf import ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from p2pchat.errors import StartupError

log = logging.getLogger(__name__)

SERVICE_TYPE = "_p2pchat._tcp.local."
"""The DNS-SD service type of p2pchat nodes (RFC 6763 section 7)."""

RESOLVE_TIMEOUT_S = 3.0
"""How long to wait for an instance's SRV/TXT/A records, in seconds."""

REGISTER_TIMEOUT_S = 5.0
"""How long closing waits for a registration still under way (it takes about
1.7 s: RFC 6762 section 8 probing and announcing), so the goodbye follows it."""


MAX_FOUND_ADDRESSES = 8
"""Most addresses (A and AAAA records) taken from one resolved instance."""


@dataclass(frozen=True)
class LocalService:
    """What this node announces.

    Attributes:
        node_id: 16 hex digits.
        name: display name.
        room: room name.
        port: TCP listening port.
        version: protocol version.
    """

    node_id: str
    name: str
    room: str
    port: int
    version: int


@dataclass(frozen=True)
class FoundPeer:
    """A resolved service instance of another node.

    Attributes:
        node_id: its node id (TXT ``id``).
        name: its display name (TXT ``name``).
        room: its room (TXT ``room``).
        version: its protocol version (TXT ``v``), or -1 if missing/garbled.
        addresses: its addresses (A and AAAA records, at most
            :data:`MAX_FOUND_ADDRESSES`): dotted quads, compressed IPv6, a
            link-local IPv6 one with the zone it was heard on (``fe80::1%2``).
        port: its TCP port (SRV record).
    """

    node_id: str
    name: str
    room: str
    version: int
    addresses: tuple[str, ...]
    port: int


class Discovery(Protocol):
    """Finds peers.  :class:`MdnsDiscovery` is the real one; a node can run
    without any (static peers only)."""

    def start(
        self,
        local: LocalService,
        on_found: Callable[[FoundPeer], None],
        on_lost: Callable[[str], None],
    ) -> None:
        """Announce ``local`` and start reporting peers.

        ``on_found(peer)`` and ``on_lost(node_id)`` are called on the
        discovery's own thread and must return quickly.

        Raises:
            StartupError: discovery could not start.
        """

    def close(self) -> None:
        """Withdraw the announcement (goodbye) and stop; idempotent."""


def local_ipv4_addresses() -> list[str]:
    """IPv4 addresses of this machine's interfaces, loopback last.

    Used for the A records when no ``--interface`` restricts them.
    """
    found: list[str] = []
    loopback: list[str] = []
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue
            (loopback if ip.ip.startswith("127.") else found).append(ip.ip)
    return found or loopback or ["127.0.0.1"]


def local_ipv6_addresses(link_local: bool = False) -> list[str]:
    """IPv6 addresses of this machine's interfaces (compressed text), ``::1``
    last, or an empty list on a machine without IPv6.

    Args:
        link_local: include ``fe80::/10`` addresses, each with its zone
            (``fe80::1%eth0``): for the AAAA records (a receiver reads them
            with the zone of the interface it heard them on), never for
            presences (a zone means nothing on another machine).
    """
    import ifaddr

    found: list[str] = []
    loopback: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                continue
            addr = ipaddress.IPv6Address(ip.ip[0].split("%")[0])
            if addr.is_link_local:
                if link_local:
                    found.append(f"{addr}%{adapter.name}")
                continue
            (loopback if addr.is_loopback else found).append(str(addr))
    return found + loopback


def interface_addresses(name: str) -> list[str] | None:
    """The addresses of the interface called ``name`` (``eth0``), IPv4 then
    IPv6, a link-local one with its zone (``fe80::1%eth0``); None if this
    machine has no interface of that name."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        if adapter.name != name:
            continue
        v4 = [ip.ip for ip in adapter.ips if isinstance(ip.ip, str)]
        v6 = []
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                addr = ipaddress.IPv6Address(ip.ip[0].split("%")[0])
                v6.append(f"{addr}%{name}" if addr.is_link_local else str(addr))
        return v4 + v6
    return None


def local_addresses(link_local: bool = False) -> list[str]:
    """This machine's addresses of both families, IPv4 first, without
    loopback ones, or only the loopback ones when there is nothing else
    (``127.0.0.1`` at least).  ``link_local``: as in :func:`local_ipv6_addresses`."""
    v4 = [a for a in local_ipv4_addresses() if not a.startswith("127.")]
    v6 = [a for a in local_ipv6_addresses(link_local) if a != "::1"]
    return v4 + v6 or ["127.0.0.1"]


def zone_by_name(addr: str) -> str:
    """``addr`` with a numeric IPv6 zone (an interface index, ``fe80::1%2``)
    turned into the interface's name (``fe80::1%eth0``), as users type it and
    as the listener names link-local peers; anything else unchanged."""
    host, sep, zone = addr.partition("%")
    if not sep or not zone.isdigit():
        return addr
    try:
        return f"{host}%{socket.if_indextoname(int(zone))}"
    except (OSError, ValueError, OverflowError):
        return addr


def mdns_interfaces(interfaces: list[str] | None) -> tuple[list[str | int] | None, str]:
    """What to pass zeroconf for ``interfaces`` (``--interface`` addresses,
    or None for every interface): ``(interfaces, ip_version)``.

    None with ``"all"`` (A and AAAA on every interface of both families) when
    the machine has IPv6, else ``"v4"``.  A list is the addresses with
    their zones taken off (zeroconf maps an IPv6 address to its interface
    index itself), with ``"v4"``, ``"v6"`` or ``"all"`` for the families in
    it: a list of IPv4 addresses only (``127.0.0.1`` in tests) never opens
    an IPv6 socket, so nothing leaves on another interface.
    """
    if not interfaces:
        return None, "all" if socket.has_ipv6 else "v4"
    plain: list[str | int] = [a.split("%")[0] for a in interfaces]
    fams = {6 if ":" in str(a) else 4 for a in plain}
    return plain, "all" if fams == {4, 6} else ("v6" if fams == {6} else "v4")


def instance_prefix(name: str, max_bytes: int = 52) -> str:
    """``name`` cut to at most ``max_bytes`` UTF-8 bytes on a character
    boundary, so that ``"<name> [<8 hex>]"`` fits a DNS label (63 bytes,
    RFC 6763 section 4.1.1)."""
    cut = name.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    return cut.rstrip() or "p2pchat"


def _txt(props: dict[bytes, bytes | None], key: str) -> str:
    value = props.get(key.encode())
    if value is None:
        return ""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return ""


class MdnsDiscovery:
    """DNS-SD over multicast DNS with python-zeroconf.

    Args:
        interfaces: IPv4 or IPv6 addresses to run mDNS on, or None for every
            interface of both families (the right choice for users; tests
            pass ``["127.0.0.1"]``, which keeps mDNS on IPv4 loopback: see
            :func:`mdns_interfaces`).  The A and AAAA records announce these
            addresses (all of the machine's but loopback ones for None, link-local
            IPv6 ones included).
        service_type: the DNS-SD service type; tests use a unique one so that
            parallel runs never see each other.

    Threads: zeroconf's own loop thread and browser thread, plus
    ``p2pchat-mdns``, which resolves found instances (a browser handler only
    queues the name, as zeroconf asks), and ``p2pchat-mdns-register``, which
    registers ours and ends.  Registering takes about 1.5 s (RFC 6762 section
    8: probing, then announcing); resolving does not wait for it.
    """

    def __init__(
        self, interfaces: list[str] | None = None, service_type: str = SERVICE_TYPE
    ) -> None:
        self.interfaces = list(interfaces) if interfaces else None
        self.service_type = service_type
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._info: ServiceInfo | None = None
        self._registered = False
        self._queue: queue.Queue[tuple[str, ServiceStateChange] | None] = queue.Queue(maxsize=1024)
        self._names: dict[str, str] = {}  # instance name -> node id
        self._thread: threading.Thread | None = None
        self._register_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._on_found: Callable[[FoundPeer], None] = lambda peer: None
        self._on_lost: Callable[[str], None] = lambda node_id: None
        self._local: LocalService | None = None

    def start(
        self,
        local: LocalService,
        on_found: Callable[[FoundPeer], None],
        on_lost: Callable[[str], None],
    ) -> None:
        """Start mDNS: see :meth:`Discovery.start`.

        Raises:
            StartupError: zeroconf could not bind its sockets, or the service
                type is not valid.
        """
        import zeroconf

        self._on_found, self._on_lost, self._local = on_found, on_lost, local
        chosen, version = mdns_interfaces(self.interfaces)
        versions = {
            "all": zeroconf.IPVersion.All,
            "v4": zeroconf.IPVersion.V4Only,
            "v6": zeroconf.IPVersion.V6Only,
        }
        try:
            try:
                zc = zeroconf.Zeroconf(
                    interfaces=chosen or zeroconf.InterfaceChoice.All,
                    ip_version=versions[version],
                )
            except (OSError, RuntimeError) as exc:
                if chosen is not None or version != "all":
                    raise
                # No usable IPv6 (disabled in the kernel): A records only.
                log.info("mDNS without IPv6: %s", exc)
                zc = zeroconf.Zeroconf(
                    interfaces=zeroconf.InterfaceChoice.All, ip_version=zeroconf.IPVersion.V4Only
                )
                version = "v4"
        except (OSError, RuntimeError) as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise StartupError(f"cannot start mDNS: {text}") from None
        self._zc = zc
        if self.interfaces:
            addresses = [a for a in self.interfaces if a not in ("0.0.0.0", "::")]
        else:
            addresses = local_addresses(link_local=True)
            if version == "v4":
                addresses = [a for a in addresses if ":" not in a] or ["127.0.0.1"]
        addresses = [a.split("%")[0] for a in addresses] or ["127.0.0.1"]
        short = local.node_id[:8]
        # RFC 6763 section 4.1.1: the instance name is free UTF-8 text, up to
        # 63 octets; the node id part keeps two nodes of one name apart.
        label = f"{instance_prefix(local.name)} [{short}]"
        try:
            self._info = zeroconf.ServiceInfo(
                self.service_type,
                f"{label}.{self.service_type}",
                port=local.port,
                properties={
                    "v": str(local.version),
                    "id": local.node_id,
                    "name": local.name,
                    "room": local.room,
                },
                server=f"p2pchat-{local.node_id}.local.",
                parsed_addresses=addresses,
            )
            self._browser = zeroconf.ServiceBrowser(
                zc, self.service_type, handlers=[self._on_change]
            )
        except (zeroconf.BadTypeInNameException, ValueError, OSError) as exc:
            self.close()
            raise StartupError(f"cannot start mDNS discovery: {exc}") from None
        self._register_thread = threading.Thread(
            target=self._register, name="p2pchat-mdns-register", daemon=True
        )
        self._register_thread.start()
        self._thread = threading.Thread(target=self._loop, name="p2pchat-mdns", daemon=True)
        self._thread.start()

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        # Called by zeroconf on its browser thread, by keyword: note and return.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait((name, state_change))

    def _register(self) -> None:
        from zeroconf import NonUniqueNameException

        zc, info = self._zc, self._info
        assert zc is not None and info is not None
        try:
            zc.register_service(info, allow_name_change=True)
            self._registered = True
        except NonUniqueNameException:
            log.warning("mDNS: instance name %r is taken; not announcing", info.name)
        except Exception as exc:  # zeroconf closed under us, or an OS error
            if not self._stop.is_set():
                log.warning("mDNS: could not register our service: %s", exc)

    def _loop(self) -> None:
        zc = self._zc
        assert zc is not None
        while not self._stop.is_set():
            try:
                # close() queues None (or, with the queue full, the loop sees
                # _stop at once): the timeout is a safety net, not a poll.
                item = self._queue.get(timeout=5.0)
            except queue.Empty:
                continue
            if item is None:
                return
            name, change = item
            try:
                self._handle(zc, name, change)
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("mDNS: failed to handle %s", name)

    def _handle(self, zc: Zeroconf, name: str, change: ServiceStateChange) -> None:
        from zeroconf import ServiceStateChange

        if change is ServiceStateChange.Removed:
            node_id = self._names.pop(name, None)
            if node_id:
                log.info("mDNS: %s said goodbye", name)
                self._on_lost(node_id)
            return
        found = zc.get_service_info(self.service_type, name, timeout=int(RESOLVE_TIMEOUT_S * 1000))
        if found is None or found.port is None:
            log.debug("mDNS: could not resolve %s", name)
            return
        props = found.properties or {}
        node_id = _txt(props, "id")
        if not node_id or (self._local and node_id == self._local.node_id):
            return
        try:
            version = int(_txt(props, "v"))
        except ValueError:
            version = -1
        # Both families; a link-local IPv6 address with the zone it was heard
        # on (zeroconf gives its index, fe80::1%2; shown by name, fe80::1%eth0).
        addresses = tuple(
            zone_by_name(a) for a in found.parsed_scoped_addresses()[:MAX_FOUND_ADDRESSES]
        )
        if not addresses:
            return
        self._names[name] = node_id
        self._on_found(
            FoundPeer(
                node_id=node_id,
                name=_txt(props, "name"),
                room=_txt(props, "room"),
                version=version,
                addresses=addresses,
                port=found.port,
            )
        )

    def close(self) -> None:
        """Unregister (goodbye), stop browsing, close zeroconf; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(RESOLVE_TIMEOUT_S + 2.0)
        if self._register_thread is not None:
            self._register_thread.join(REGISTER_TIMEOUT_S)  # then the goodbye, if registered
        zc = self._zc
        if zc is None:
            return
        if self._browser is not None:
            with contextlib.suppress(Exception):
                self._browser.cancel()
        if self._registered and self._info is not None:
            with contextlib.suppress(Exception):
                zc.unregister_service(self._info)
        with contextlib.suppress(Exception):
            zc.close()
