"""A node written from ``docs/protocol.md`` alone is accepted by ours.

An independent client once had its ``join`` and every ``presence`` dropped
as bad signatures: the document's tables left out fields the reference
signs (``dh``, ``every``) and did not say that ``ts`` and ``every`` are
signed as floats, so the client was timed out of the roster 10 s after it
joined.  Here an "outsider" does what that client did, from the document
only: the field order, defaults and types come from the tables of section 5
(parsed from the file), the frames' encoding from section 3 (JSON hellos,
MessagePack arrays for the rest: ``msgspec.msgpack`` serves as a generic
MessagePack codec, fed plain lists, bytes and numbers), the signed bytes
from section 5.18, the handshake from section 4; keys and signatures from
``cryptography``.  Nothing of ``p2pchat`` builds or reads its frames; the
node it talks to is ours, in-process on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import socket
import struct
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import LOOPBACK, Cluster, wait_for
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2pchat.events import FileOfferEvent, JoinEvent, LeaveEvent, MessageEvent, TopicEvent

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
VERSION = int(re.search(r"\*\*Protocol version\*\* is the integer `(\d+)`", DOC).group(1))  # type: ignore[union-attr]

# -- section 5, read from the document -----------------------------------------


def doc_table(kind: str) -> list[tuple[str, str, str]]:
    """``(field, type, default)`` of a flooded type, in order: the rows of
    section 5.4, then those of the type's section (``### 5.N `kind```), by
    their *Pos*.  The default is as JSON text (``empty`` for a bin); a
    required field's is ``—``."""

    def rows(heading: re.Pattern[str]) -> list[tuple[int, str, str, str]]:
        lines = DOC[DOC.index("## 5. Message reference") : DOC.index("## 6. Error")].splitlines()
        start = next(i for i, line in enumerate(lines) if heading.match(line))
        out = []
        for line in lines[start + 1 :]:
            if line.startswith("#"):
                break
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("|") and cells[0].isdigit():
                out.append((int(cells[0]), cells[1].strip("`"), cells[2], cells[4].strip("`")))
        return out

    common = rows(re.compile(r"^### 5\.\d+ Common fields"))
    own = rows(re.compile(rf"^### 5\.\d+ `{kind}`"))
    table = sorted(common + own)
    assert [pos for pos, *_ in table] == list(range(1, len(table) + 1))
    return [(name, type_, default) for _, name, type_, default in table]


# -- section 5.18, by hand ------------------------------------------------------


def doc_float(x: float) -> str:
    """A float as section 5.18 writes it: the shortest round-trip digits
    (Python's repr gives them), positional from 0.00001 to below 10^16 with
    at least one digit after the point, else ``2.5e-7`` style."""
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    shortest = Decimal(repr(abs(x)))  # only its digits and exponent are used
    digits = "".join(map(str, shortest.as_tuple().digits)).rstrip("0") or "0"
    first = shortest.adjusted()  # decimal exponent of the first digit
    if 1e-5 <= abs(x) < 1e16:
        if first >= 0:
            whole = digits[: first + 1].ljust(first + 1, "0")
            return f"{sign}{whole}.{digits[first + 1 :] or '0'}"
        return f"{sign}0.{'0' * (-first - 1)}{digits}"
    rest = f".{digits[1:]}" if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{rest}e{first}"


def doc_string(s: str) -> str:
    """A string as section 5.18 writes it."""
    return json.dumps(s, ensure_ascii=False)


def doc_value(type_: str, value: Any) -> str:
    """A value in the signed bytes (section 5.18); bins are given, and
    written, as hex."""
    if type_ == "float 64":
        return doc_float(float(value))
    if type_ == "int":
        return str(int(value))
    if type_ == "bool":
        return "true" if value else "false"
    if type_ in ("str", "bin"):
        return doc_string(value)
    if type_ == "array of str":
        return "[" + ",".join(doc_string(v) for v in value) + "]"
    if type_ == "array of [bin, int]":  # presence.gone: [node id, seq] pairs, ids as hex
        return "[" + ",".join(f"[{doc_string(n)},{int(q)}]" for n, q in value) + "]"
    if type_ == "array or nil":  # chat.offer: [file, fname, size, chunk, root] (§5.19)
        if value is None:
            return "null"
        file, fname, size, chunk, root = value
        hashes = doc_string(file), doc_string(root)
        return f"[{hashes[0]},{doc_string(fname)},{int(size)},{int(chunk)},{hashes[1]}]"
    raise AssertionError(f"no rule for {type_}")


def doc_default(default: str) -> Any:
    return "" if default == "empty" else json.loads(default)


def doc_encode(kind: str, fields: dict[str, Any], hops: int, sig: str) -> bytes:
    """The signed bytes of the message ``kind`` with ``fields`` (``type``,
    ``hops`` and ``sig`` aside; optional ones may be left out), as section
    5.18 writes them."""
    values = dict(fields, type=kind, hops=hops, sig=sig)
    parts = []
    for name, type_, default in doc_table(kind):
        if name in values:
            value = values[name]
        else:
            assert default != "—", f"{kind}.{name} is required"
            value = doc_default(default)
        parts.append(f"{doc_string(name)}:{doc_value(type_, value)}")
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def doc_pack(kind: str, fields: dict[str, Any], hops: int, sig: str) -> bytes:
    """The frame body of the message (section 3): a MessagePack array, the
    type first, then the fields by position; bins as bytes; the optional
    fields left out of ``fields`` at the end are left out of the array."""
    values = dict(fields, type=kind, hops=hops, sig=sig)
    table = doc_table(kind)
    last = max(i for i, (name, _, _) in enumerate(table) if name in values)
    out: list[Any] = []
    for name, type_, default in table[: last + 1]:
        value = values[name] if name in values else doc_default(default)
        if type_ == "array or nil" and value is not None:  # chat.offer, §5.19: bins as bytes
            value = [bytes.fromhex(value[0]), *value[1:4], bytes.fromhex(value[4])]
        out.append(bytes.fromhex(value) if type_ == "bin" else value)
    return msgspec.msgpack.encode(out)


class Outsider:
    """A peer made from the document: its own keys, its own frames."""

    def __init__(self, port: int, room: str) -> None:
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key = raw.hex()
        self.node_id = hashlib.sha256(raw).hexdigest()[:16]
        self.dh = (
            X25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            .hex()
        )
        self.room = room
        self.seq = 0
        self.buf = b""
        self.sock = socket.create_connection((LOOPBACK, port), timeout=5.0)

    def send_body(self, body: bytes) -> None:
        self.sock.sendall(struct.pack("!I", len(body)) + body)

    def read_frame(self, timeout_s: float = 5.0) -> Any:
        """The node's next frame body, decoded: a dict (JSON, ``{`` first)
        or a list (MessagePack)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack("!I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
                    if body[:1] == b"{":
                        return json.loads(body)
                    return msgspec.msgpack.decode(body)
            if time.monotonic() > deadline:
                pytest.fail("no frame from the node")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                pytest.fail("the node closed the link")
            self.buf += data

    def drain(self) -> None:
        """Read and drop what the node sent meanwhile (keepalives, presences)."""
        self.sock.settimeout(0.0)
        try:
            while self.sock.recv(65536):
                pass
        except BlockingIOError:
            pass

    def handshake(self) -> dict[str, Any]:
        """Section 4: both hellos, both proofs; checks the node's proof."""
        nonce = os.urandom(16).hex()
        hello = {
            "type": "hello",
            "version": VERSION,
            "node": self.node_id,
            "name": "outsider",
            "room": self.room,
            "port": 0,
            "features": [],
            "nonce": nonce,
            "key": self.key,
        }
        self.send_body(json.dumps(hello, separators=(",", ":")).encode())
        theirs = self.read_frame()
        assert theirs["type"] == "hello", theirs
        assert hashlib.sha256(bytes.fromhex(theirs["key"])).hexdigest()[:16] == theirs["node"]
        mine = f"p2pchat link proof v1\n{theirs['nonce']}\n{self.node_id}\n{theirs['node']}\n"
        sig = self.private.sign((mine + self.room).encode())
        self.send_body(msgspec.msgpack.encode(["proof", sig]))
        proof = self.read_frame()
        assert proof[0] == "proof", proof
        signed = f"p2pchat link proof v1\n{nonce}\n{theirs['node']}\n{self.node_id}\n{self.room}"
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(theirs["key"])).verify(
            proof[1], signed.encode()
        )
        assert isinstance(theirs, dict)
        return theirs

    def flood(self, kind: str, ts: float, **own: Any) -> None:
        """Sign and send a new flooded message, as section 5.18 says."""
        self.seq += 1
        fields = {
            "id": os.urandom(16).hex(),
            "origin": self.node_id,
            "seq": self.seq,
            "name": "outsider",
            "room": self.room,
            "ts": ts,
            "key": self.key,
            **own,
        }
        sig = self.private.sign(doc_encode(kind, fields, hops=0, sig="")).hex()
        self.send_body(doc_pack(kind, fields, hops=16, sig=sig))

    def keepalive(self) -> None:
        self.send_body(msgspec.msgpack.encode(["keepalive"]))

    def close(self) -> None:
        self.sock.close()


# -- tests ----------------------------------------------------------------------


FLOATS = [
    0.0,
    3.0,
    0.1,
    6.0,
    1732245123.457,
    1732245100.0,
    1e11,
    0.00001,
    9.99e-6,
    1e-6,
    2.5e-7,
    1e16,
    9999999999999998.0,
    1.5e16,
    0.30000000000000004,
    123456.789e-10,
    -0.0,
]


def test_doc_float_rule_is_the_reference_encoders() -> None:
    rng = random.Random(12)
    values = list(FLOATS)
    for _ in range(20000):
        values.append(rng.random() * 10 ** rng.randint(-12, 22))
        values.append(round(rng.random() * 1e11, rng.randint(0, 6)))
        values.append(float(rng.randint(0, 10**12)))
    for x in values:
        assert doc_float(x) == msgspec.json.encode(x).decode(), x


def test_doc_string_rule_is_the_reference_encoders() -> None:
    rng = random.Random(13)
    pool = [chr(c) for c in range(0x30)] + list('"\\/\x7f\x80\x9f\u2028\u2029éß€👋\ufeff')
    for _ in range(5000):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        assert doc_string(s).encode() == msgspec.json.encode(s), repr(s)


def test_doc_tables_give_every_signed_field() -> None:
    """The fields the independent client missed are in the tables, in
    order, with their types and defaults."""
    join = doc_table("join")
    assert join[-1] == ("dh", "bin", "empty")
    presence = [row[0] for row in doc_table("presence")]
    assert presence[-6:] == ["addrs", "port", "dh", "every", "gone", "away"]
    assert doc_table("presence")[-3] == ("every", "float 64", "0.0")
    assert doc_table("presence")[-2] == ("gone", "array of [bin, int]", "[]")
    assert doc_table("presence")[-1] == ("away", "str", '""')
    assert doc_table("chat")[-3:] == [
        ("hlc", "int", "0"),
        ("topic", "bool", "false"),
        ("offer", "array or nil", "null"),
    ]
    assert ("ts", "float 64", "—") in join


def test_outsider_join_and_presences_are_accepted(cluster: Cluster) -> None:
    """The outsider joins and then sends only presences: it becomes a member
    and is never timed out (member timeout 2 s, watched for 4.5 s)."""
    node = cluster.add("host", member_timeout_s=2.0)
    outsider = Outsider(node.port, cluster.room)
    try:
        outsider.handshake()
        # A whole ts: signed as 1732245100.0-style, never as an integer.
        outsider.flood("join", float(int(time.time())), dh=outsider.dh)
        wait_for(
            lambda: any(m.node == outsider.node_id for m in node.snapshot().members),
            5.0,
            "the outsider to become a member",
        )
        end = time.monotonic() + 4.5
        n = 0
        while time.monotonic() < end:
            n += 1
            ts = time.time() if n % 2 else float(int(time.time()))
            if n % 3 == 0:  # optional fields left out: signed with their defaults
                outsider.flood("presence", ts)
            else:
                outsider.flood("presence", ts, addrs=[], port=0, dh=outsider.dh, every=0.25)
            outsider.keepalive()
            outsider.drain()
            time.sleep(0.25)  # the outsider's presence interval
        stats = node.stats()
        refused = {k: v for k, v in stats.frames_refused.items() if v}
        assert refused == {}
        assert any(m.node == outsider.node_id for m in node.snapshot().members)
        rec = cluster.recorders[0]
        joins = [e for e in rec.events if isinstance(e, JoinEvent) and e.origin == outsider.node_id]
        leaves = [
            e for e in rec.events if isinstance(e, LeaveEvent) and e.origin == outsider.node_id
        ]
        assert [e.via for e in joins] == ["join"] and leaves == []
    finally:
        outsider.close()


def test_outsider_away_text_is_shown(cluster: Cluster) -> None:
    """A presence signed as the tables say, with an ``away`` text: the node
    shows the outsider away in ``/who``; a later presence without it (the
    default "") clears it."""
    node = cluster.add("host")
    outsider = Outsider(node.port, cluster.room)
    try:
        outsider.handshake()
        outsider.flood("join", time.time(), dh=outsider.dh)
        outsider.flood("presence", time.time(), away="at lunch ☕")

        def away() -> str | None:
            found = [m.away for m in node.snapshot().members if m.node == outsider.node_id]
            return found[0] if found else None

        wait_for(lambda: away() == "at lunch ☕", 5.0, "the outsider shown away")
        outsider.flood("presence", time.time())
        wait_for(lambda: away() == "", 5.0, "the outsider shown back")
        assert not node.stats().frames_refused
    finally:
        outsider.close()


def test_presence_signed_without_dh_and_every_is_refused(cluster: Cluster) -> None:
    """What the independent client did: signed bytes that leave out the
    fields the document once forgot.  The node drops it as a bad signature
    (the check that the test above passes for a reason)."""
    node = cluster.add("host")
    outsider = Outsider(node.port, cluster.room)
    try:
        outsider.handshake()
        outsider.seq += 1
        fields: dict[str, Any] = {
            "type": "presence",
            "id": os.urandom(16).hex(),
            "origin": outsider.node_id,
            "seq": outsider.seq,
            "name": "outsider",
            "room": cluster.room,
            "ts": int(time.time()),
            "hops": 0,
            "key": outsider.key,
            "sig": "",
            "addrs": [],
            "port": 0,
        }
        signed = json.dumps(fields, separators=(",", ":")).encode()
        fields.update(hops=16, sig=outsider.private.sign(signed).hex())
        # The array stops after port: dh and every take their defaults,
        # with which the node builds the signed bytes.
        binary = ("id", "origin", "key", "sig")
        outsider.send_body(
            msgspec.msgpack.encode(
                [bytes.fromhex(v) if k in binary else v for k, v in fields.items()]
            )
        )
        wait_for(
            lambda: node.stats().frames_refused.get("bad_signature", 0) == 1,
            5.0,
            "the node to refuse the presence as a bad signature",
        )
        assert not any(m.node == outsider.node_id for m in node.snapshot().members)
    finally:
        outsider.close()


def test_outsider_topic_line_sets_the_rooms_topic(cluster: Cluster) -> None:
    """A numbered chat line with ``topic`` true, signed as the tables say: the
    node takes it as the room's topic (a ``topic`` event, never a
    ``message``); a later line with ``topic`` left out (default false) is
    chat, and the topic stays."""
    node = cluster.add("host")
    outsider = Outsider(node.port, cluster.room)
    try:
        outsider.handshake()
        outsider.flood("join", time.time(), dh=outsider.dh)
        now = time.time()
        hlc = int(now * 1e6)
        outsider.flood("chat", now, text="release on friday", line=1, hlc=hlc, topic=True)
        outsider.flood("chat", now, text="hi all", line=2, hlc=hlc + 1)
        rec = cluster.recorders[0]

        def mine(kind: type[MessageEvent | TopicEvent]) -> list[Any]:
            return [
                e
                for e in rec.events
                if isinstance(e, kind) and getattr(e, "origin", "") == outsider.node_id
            ]

        wait_for(lambda: bool(mine(MessageEvent)), 5.0, "the outsider's chat line")
        assert [e.text for e in mine(TopicEvent)] == ["release on friday"]
        assert [e.text for e in mine(MessageEvent)] == ["hi all"]
        current = node.topic()
        assert current is not None and current.text == "release on friday"
        assert current.origin == outsider.node_id
        assert not node.stats().frames_refused
    finally:
        outsider.close()


def test_outsider_file_offer_is_taken_and_a_lying_one_is_counted(cluster: Cluster) -> None:
    """A chat line with ``offer`` set (section 5.19), its file id computed as
    the document says: the node shows a ``file_offer`` (never a ``message``)
    and lists it; an offer whose id does not match is dropped as
    ``bad_file_hash``, the link kept (the next line arrives)."""
    node = cluster.add("host")
    outsider = Outsider(node.port, cluster.room)
    try:
        outsider.handshake()
        outsider.flood("join", time.time(), dh=outsider.dh)
        now = time.time()
        hlc = int(now * 1e6)
        size, chunk, root = 2_400_000, 262_144, hashlib.sha256(b"any root").digest()
        file_id = hashlib.sha256(
            b"p2pchat-file-v1\x00" + size.to_bytes(8, "big") + chunk.to_bytes(4, "big") + root
        ).hexdigest()
        offer = [file_id, "report.pdf", size, chunk, root.hex()]
        outsider.flood("chat", now, text="", line=1, hlc=hlc, offer=offer)
        lying = [file_id, "report.pdf", size + 1, chunk, root.hex()]
        outsider.flood("chat", now, text="", line=2, hlc=hlc + 1, offer=lying)
        outsider.flood("chat", now, text="still linked", line=3, hlc=hlc + 2)
        rec = cluster.recorders[0]

        def mine(kind: type[MessageEvent | FileOfferEvent]) -> list[Any]:
            return [
                e
                for e in rec.events
                if isinstance(e, kind) and getattr(e, "origin", "") == outsider.node_id
            ]

        wait_for(lambda: bool(mine(MessageEvent)), 5.0, "the outsider's chat line")
        (got,) = mine(FileOfferEvent)
        assert (got.file_hex, got.offer.name, got.offer.size) == (file_id, "report.pdf", size)
        assert [e.text for e in mine(MessageEvent)] == ["still linked"]
        assert node.offer(file_id) is not None and len(node.offers()) == 1
        assert node.stats().frames_refused == {"bad_file_hash": 1}
    finally:
        outsider.close()
