"""Files between network-namespace hosts that found each other over mDNS.

Three hosts on one bridge (:mod:`netns_lab`, namespaces ``fn-<pid>-<hex>-*``,
addresses in ``10.78.0.0/16``), each running ``p2pchat --json`` bound to its
own address (``--interface``) with real mDNS and no ``--peer``.  Host 0
offers a 5 MB file to the room and hosts 1 and 2 fetch it; then host 0
offers another file to host 1 alone, which host 2 can neither see nor fetch.

Needs root and iproute2; skipped (with the reason) where namespaces cannot
be made.  Run alone with ``pytest -m netns tests/test_netns_files.py``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_lab import Lan, lan, netns_available

from p2pchat.harness import NodeProcess, env_with_path, pump_for, stop, wait_exit, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parent.parent
NS_PREFIX = "fn-"
"""This test's namespaces (the bench's are ``bf-``, the other tests' ``p2plab-``)."""
N_HOSTS = 3
FILE_BYTES = 5_000_000
MESH_DEADLINE_S = 15.0
TRANSFER_DEADLINE_S = 15.0
"""5 MB over an unshaped veth takes well under a second; the bound covers a busy machine."""
OFFER_DEADLINE_S = 10.0
EXIT_DEADLINE_S = 10.0
QUIET_S = 1.0
"""How long host 2 is watched, after host 1 holds the one-member file, for an
offer or a transfer it must never see."""


@pytest.fixture(scope="module", autouse=True)
def _need_netns() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.skip(why)


@contextlib.contextmanager
def files_lan(tmp: Path) -> Iterator[tuple[Lan, list[NodeProcess]]]:
    """The lab of :data:`N_HOSTS` hosts in ``10.78.Y.0/24`` (Y random), each
    running ``p2pchat --json --interface <its address>`` with mDNS on that
    address only and a download directory ``tmp/host<i>``; processes stopped
    and namespaces deleted on exit."""
    room = f"lab-{secrets.token_hex(4)}"
    service_type = f"_p2pt{secrets.token_hex(4)}._tcp.local."
    env = env_with_path(REPO)
    with lan(N_HOSTS, prefix=NS_PREFIX, net24=(78, random.randint(0, 255))) as net:
        nodes: list[NodeProcess] = []
        try:
            for i, host in enumerate(net.hosts):
                argv = [sys.executable, "-m", "p2pchat", "--ephemeral", "--json"]
                argv += ["--name", f"host{i}", "--room", room, "--service-type", service_type]
                argv += ["--interface", host.addr, "--download-dir", str(tmp / f"host{i}")]
                popen = functools.partial(net.popen, i)
                nodes.append(
                    NodeProcess.spawn(argv, f"host{i}", cwd=str(REPO), env=env, popen=popen)
                )
            yield net, nodes
        finally:
            stop(nodes)


def wait_mesh(nodes: list[NodeProcess]) -> None:
    """Every node ready, and a join and a link for every other (found over mDNS)."""

    def meshed() -> bool:
        ids = [n.node_id for n in nodes]
        if None in ids:
            return False
        return all({i for i in ids if i != n.node_id} <= (n.joined() & n.linked()) for n in nodes)

    took = wait_until(meshed, MESH_DEADLINE_S, "every host to join and link to all others", nodes)
    print(f"mesh of {len(nodes)} hosts over mDNS in {took:.1f} s")


def test_room_offer_fetched_by_two_hosts_and_one_member_offer_by_its_member_only(
    tmp_path: Path,
) -> None:
    """Host 0 ``/send``s 5 MB to the room: hosts 1 and 2 ``/get`` it, each
    gets ``file_done`` with the source's SHA-256 and the bytes in its
    ``--download-dir``.  Then ``/send host1 PATH``: host 1 is offered it
    (``private``) and fetches it; host 2 is offered nothing, its ``/get`` of
    the file id says "no offer", and ``/files`` there lists neither the offer
    nor a transfer of it, nor does a copy land in its download directory."""
    src = tmp_path / "src"
    src.mkdir()
    shared, secret = src / "shared.bin", src / "secret.bin"
    data, secret_data = os.urandom(FILE_BYTES), os.urandom(100_000)
    shared.write_bytes(data)
    secret.write_bytes(secret_data)
    digest = hashlib.sha256(data).hexdigest()

    with files_lan(tmp_path) as (_net, nodes):
        wait_mesh(nodes)
        sender, receivers = nodes[0], nodes[1:]

        # -- the room offer: both receivers fetch it -----------------------------------
        sender.send_line(f"/send {shared}")
        offers = [r.wait_event("file_offer", name="shared.bin") for r in receivers]
        file_id = str(offers[0]["file"])
        for r, offer in zip(receivers, offers, strict=True):
            assert (offer["file"], offer["size"], offer["private"]) == (file_id, FILE_BYTES, False)
            assert offer["origin"] == sender.node_id, r.describe()
            r.send_line(f"/get {offer['number']}")
        for r in receivers:
            assert r.wait_event("get")["file"] == file_id, r.describe()

        def both_done() -> bool:
            return all(
                any(e.get("file") == file_id for e in r.of("file_done")) for r in receivers
            ) or any(r.of("file_failed") for r in receivers)

        took = wait_until(both_done, TRANSFER_DEADLINE_S, "file_done at hosts 1 and 2", nodes)
        print(f"5 MB at two receivers in {took:.1f} s")
        for r in receivers:
            assert not r.of("file_failed"), r.describe()
            (done,) = [e for e in r.of("file_done") if e.get("file") == file_id]
            where = tmp_path / r.label / "shared.bin"
            assert (done["sha256"], done["size"]) == (digest, FILE_BYTES), r.describe()
            assert Path(str(done["path"])) == where, r.describe()
            assert where.read_bytes() == data
            assert sorted(p.name for p in where.parent.iterdir()) == ["shared.bin"]

        # -- the one-member offer: host 1 fetches it, host 2 sees nothing ---------------
        member, outsider = receivers
        sender.send_line(f"/send {member.label} {secret}")
        private = member.wait_event("file_offer", name="secret.bin", timeout_s=OFFER_DEADLINE_S)
        secret_id = str(private["file"])
        assert private["private"] is True and secret_id != file_id, member.describe()
        member.send_line(f"/get {private['number']}")
        got = member.wait_event("file_done", file=secret_id, timeout_s=TRANSFER_DEADLINE_S)
        assert got["sha256"] == hashlib.sha256(secret_data).hexdigest()
        assert (tmp_path / member.label / "secret.bin").read_bytes() == secret_data

        outsider.send_line(f"/get {secret_id}")
        refused = outsider.wait_event("error", timeout_s=OFFER_DEADLINE_S)
        assert refused["text"] == f"no offer {secret_id} (/files lists them)", refused
        outsider.send_line("/files")
        listed = outsider.wait_event("files", timeout_s=OFFER_DEADLINE_S)
        assert [o["file"] for o in listed["offers"]] == [file_id], listed
        assert [t["file"] for t in listed["transfers"]] == [file_id], listed
        pump_for(nodes, QUIET_S)  # anything late about the secret would show now
        about_secret = [e for e in outsider.events if e.get("file") == secret_id]
        assert about_secret == [], outsider.describe()
        assert not any(e.get("name") == "secret.bin" for e in outsider.events), outsider.describe()
        assert sorted(p.name for p in (tmp_path / outsider.label).iterdir()) == ["shared.bin"]

        for n in nodes:
            assert not n.junk, f"{n.label}: non-JSON lines on stdout with --json: {n.junk}"
            n.send_line("/quit")
        codes = wait_exit(nodes, EXIT_DEADLINE_S)
        assert codes == {n.label: 0 for n in nodes}, "\n".join(n.describe() for n in nodes)
