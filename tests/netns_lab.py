"""A throwaway LAN made of Linux network namespaces, for multi-host tests.

Layout of ``lan(n)``::

    namespace <prefix>-sw          namespace <prefix>-h0 ... <prefix>-h{n-1}
    +---------------------+        +-----------------------------+
    | br0 (bridge)        |        | lo    127.0.0.1             |
    |  +- v0 ------ veth ---------->  eth0  10.X.Y.1/24          |
    |  +- v1 ------ veth ---------->  ...   10.X.Y.2/24 (next ns) |
    +---------------------+        +-----------------------------+

* The bridge lives in its own "switch" namespace, never in the main one, and
  each veth is created directly inside the namespaces (``ip -n``), so no
  interface of the lab ever exists in the main namespace and nothing the hosts
  send (mDNS included) can reach a real network.
* ``10.X.Y.0/24`` is picked at random per run; multicast is on for every veth
  and each host has a route for ``224.0.0.0/4`` on its ``eth0``.
* Each host's address family is ``"v4"`` (the default: IPv6 disabled on
  ``eth0``, not even a link-local address), ``"v6"`` (no IPv4 address on
  ``eth0`` at all) or ``"both"`` (``lan(n, families=[...])``).  IPv6
  addresses are ``<prefix>::<i+1>/64`` in a ``fd00::/8`` /64 (a unique local
  prefix, RFC 4193) picked at random per run, added with ``nodad`` (and
  DAD is off on ``eth0``, so the link-local address works at once too);
  ``ff00::/8`` is routed on ``eth0`` (the kernel's multicast route, made
  sure of).
* Namespace names carry the creating PID (``p2plab-<pid>-<hex>-...``); stale
  namespaces of dead runs are removed before a new lab is built, those of
  live runs are left alone.
* Processes started with :meth:`Lan.popen` are stopped on exit (terminate,
  wait, kill), then the namespaces are deleted, also when the body raised.

Needs root and iproute2; :func:`netns_available` says whether it can work.

Example::

    with lan(3) as net:
        proc = net.popen(0, ["ping", "-c1", net.hosts[1].addr], stdout=subprocess.PIPE)
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFIX = "p2plab-"
"""Every namespace of the lab starts with this."""

_NAME_RE = re.compile(r"^p2plab-(\d+)-[0-9a-f]+-(?:sw|h\d+)$")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}-$")
_CMD_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
MAX_HOSTS = 200


class LabError(RuntimeError):
    """An ``ip`` command of the lab failed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip <args>`` with a timeout; raise :class:`LabError` on failure."""
    proc = subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        timeout=_CMD_TIMEOUT_S,
        check=False,
    )
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def _sysctl(ns: str, setting: str) -> None:
    """Set ``key=value`` with ``sysctl`` inside namespace ``ns`` (a missing
    key, e.g. a kernel without IPv6, is no error)."""
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-q", "-e", "-w", setting],
        capture_output=True,
        timeout=_CMD_TIMEOUT_S,
        check=False,
    )


def _list_namespaces() -> list[str]:
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _name_re(prefix: str) -> re.Pattern[str]:
    if prefix == PREFIX:
        return _NAME_RE
    return re.compile(rf"^{re.escape(prefix)}(\d+)-[0-9a-f]+-(?:sw|h\d+)$")


def stale_namespaces(prefix: str = PREFIX) -> list[str]:
    """The lab namespaces named with ``prefix`` whose creating process is gone."""
    pattern = _name_re(prefix)
    stale = []
    for name in _list_namespaces():
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            stale.append(name)
    return stale


def remove_stale_namespaces(prefix: str = PREFIX) -> list[str]:
    """Delete lab namespaces (named with ``prefix``) whose creating process is
    gone; return their names."""
    removed = []
    for name in stale_namespaces(prefix):
        _ip("netns", "del", name, check=False)
        removed.append(name)
    return removed


def netns_available() -> tuple[bool, str]:
    """Whether a lab can be built here: ``(True, "")`` or ``(False, reason)``.

    Checks for root, the ``ip`` tool and that a namespace can really be made
    (containers often forbid it)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return False, "network namespaces need Linux"
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    if shutil.which("ip") is None:
        return False, "iproute2 (`ip`) is not installed"
    probe = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}-h0"
    try:
        res = _ip("netns", "add", probe, check=False)
        if res.returncode != 0:
            return False, f"cannot create a network namespace: {res.stderr.strip()}"
        res = _ip("-n", probe, "link", "set", "lo", "up", check=False)
        if res.returncode != 0:
            return False, f"cannot configure a network namespace: {res.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"cannot run ip: {exc}"
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _ip("netns", "del", probe, check=False)
    return True, ""


FAMILIES = ("v4", "v6", "both")
"""The address families a host of the lab may have on its ``eth0``."""


@dataclass(frozen=True)
class Host:
    """One host of the lab: its namespace name, IPv4 address (no prefix
    length; "" on an IPv6-only host) and IPv6 address ("" on an IPv4-only one)."""

    index: int
    ns: str
    addr: str
    ifname: str = "eth0"
    addr6: str = ""
    family: str = "v4"


@dataclass
class Lan:
    """A running lab; made by :func:`lan`.  ``hosts[i].ns`` / ``hosts[i].addr``."""

    switch_ns: str
    subnet: str
    hosts: list[Host]
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    prefix6: str = ""

    def popen(self, i: int, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside host ``i``'s namespace (``ip netns exec``).

        Keyword arguments go to :class:`subprocess.Popen`.  ``ip netns exec``
        execs the command in place, so the Popen's PID is the command's own.
        The process is stopped when the lab is torn down."""
        return ns_popen(self.procs, self.hosts[i].ns, argv, **kw)

    def run(self, i: int, argv: Sequence[str], timeout: float = 10.0) -> str:
        """Run ``argv`` in host ``i`` to completion and return its stdout."""
        return ns_run(self.hosts[i].ns, argv, timeout)

    def stop_all(self) -> None:
        """Terminate every started process still running; kill it after a timeout."""
        stop_procs(self.procs)


def ns_popen(
    procs: list[subprocess.Popen[Any]], ns: str, argv: Sequence[str], **kw: Any
) -> subprocess.Popen[Any]:
    """Start ``argv`` inside namespace ``ns`` (``ip netns exec`` execs it in
    place: the Popen's PID is the command's own) and add it to ``procs``.
    Keyword arguments go to :class:`subprocess.Popen`."""
    proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
    procs.append(proc)
    return proc


def ns_run(ns: str, argv: Sequence[str], timeout: float = 10.0) -> str:
    """Run ``argv`` in namespace ``ns`` to completion and return its stdout.

    Raises:
        subprocess.CalledProcessError: it exited non-zero.
        subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds.
    """
    res = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return res.stdout


def stop_procs(procs: list[subprocess.Popen[Any]]) -> None:
    """Terminate every process of ``procs`` still running, kill it after
    :data:`_STOP_TIMEOUT_S`, and close its pipes."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_STOP_TIMEOUT_S)
    for proc in procs:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()


def _build(
    tag: str,
    n_hosts: int,
    created: list[str],
    families: Sequence[str],
    net24: tuple[int, int] | None,
) -> Lan:
    x, y = net24 if net24 is not None else (random.randint(0, 255), random.randint(0, 255))
    subnet = f"10.{x}.{y}.0/24"
    words = [random.randint(0, 0xFFFF) for _ in range(3)]
    prefix6 = f"fd{random.randint(0, 255):02x}:" + ":".join(f"{w:x}" for w in words)
    sw = f"{tag}-sw"
    _ip("netns", "add", sw)
    created.append(sw)
    _ip("-n", sw, "link", "set", "lo", "up")
    _ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
    _ip("-n", sw, "link", "set", "br0", "up")
    hosts = []
    for i in range(n_hosts):
        ns = f"{tag}-h{i}"
        family = families[i]
        v4, v6 = family in ("v4", "both"), family in ("v6", "both")
        addr = f"10.{x}.{y}.{i + 1}" if v4 else ""
        addr6 = f"{prefix6}::{i + 1:x}" if v6 else ""
        _ip("netns", "add", ns)
        created.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        # Created inside the switch namespace, peer end moved straight into
        # the host namespace: the pair never appears in the main namespace.
        port = f"v{i}"
        _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", sw, "link", "set", port, "master", "br0")
        _ip("-n", sw, "link", "set", "dev", port, "multicast", "on")
        _ip("-n", sw, "link", "set", port, "up")
        _ip("-n", ns, "link", "set", "dev", "eth0", "multicast", "on")
        if not v6:  # an IPv4-only host: not even a link-local IPv6 address on eth0
            _sysctl(ns, "net.ipv6.conf.eth0.disable_ipv6=1")
        else:  # no duplicate address detection: the link-local address works at once too
            _sysctl(ns, "net.ipv6.conf.eth0.accept_dad=0")
        if v4:
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        if v6:
            _ip("-n", ns, "-6", "addr", "add", f"{addr6}/64", "dev", "eth0", "nodad")
        _ip("-n", ns, "link", "set", "eth0", "up")
        if v4:
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        if v6:
            # The kernel adds this route when eth0 comes up; add it if it did not.
            table = ("-6", "route", "show", "table", "local", "ff00::/8", "dev", "eth0")
            if not _ip("-n", ns, *table).stdout.strip():
                _ip(
                    "-n",
                    ns,
                    "-6",
                    "route",
                    "add",
                    "multicast",
                    "ff00::/8",
                    "dev",
                    "eth0",
                    "table",
                    "local",
                )
        hosts.append(Host(index=i, ns=ns, addr=addr, addr6=addr6, family=family))
    return Lan(switch_ns=sw, subnet=subnet, hosts=hosts, prefix6=f"{prefix6}::/64")


@contextlib.contextmanager
def lan(
    n_hosts: int,
    families: Sequence[str] | None = None,
    *,
    prefix: str = PREFIX,
    net24: tuple[int, int] | None = None,
) -> Iterator[Lan]:
    """Build a LAN of ``n_hosts`` namespaces on one bridge; tear it down on exit.

    ``families``: each host's address family (:data:`FAMILIES`), IPv4 only
    for all when None.  ``prefix``: what every namespace name starts with
    (default :data:`PREFIX`; another tool's own, e.g. ``"bf-"``, keeps its
    namespaces apart: 1-8 lower-case letters or digits and a ``-``).
    ``net24``: ``(X, Y)`` for the subnet ``10.X.Y.0/24`` (default: random);
    host ``i`` is ``10.X.Y.{i+1}``.

    Raises :class:`LabError` if an ``ip`` command fails (what was built so far
    is removed)."""
    if not 1 <= n_hosts <= MAX_HOSTS:
        raise ValueError(f"n_hosts must be 1..{MAX_HOSTS}")
    families = list(families) if families is not None else ["v4"] * n_hosts
    if len(families) != n_hosts or not set(families) <= set(FAMILIES):
        raise ValueError(f"families must be {n_hosts} of {FAMILIES}")
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"prefix {prefix!r}: 1-8 lower-case letters or digits and a '-'")
    if net24 is not None and not all(0 <= part <= 255 for part in net24):
        raise ValueError("net24 must be two octets (0-255)")
    remove_stale_namespaces(prefix)
    tag = f"{prefix}{os.getpid()}-{secrets.token_hex(3)}"
    created: list[str] = []
    net: Lan | None = None
    try:
        net = _build(tag, n_hosts, created, families, net24)
        yield net
    finally:
        if net is not None:
            net.stop_all()
        # Hosts first, then the switch: deleting a namespace destroys its veths.
        for ns in reversed(created):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _ip("netns", "del", ns, check=False)
