#!/usr/bin/env python3
"""Fuzz the wire frame decoder: a long, seeded run outside the test suite.

Each case is one input byte string, made by a seeded :class:`random.Random`
(case ``i`` of seed ``s`` is always the same input, so any case can be
replayed with ``--seed s --case i``).  The mix:

* ``random``: random bytes, sometimes behind a length prefix that matches;
* ``jsonish``: random JSON-like text behind a matching length prefix;
* ``msgpackish``: a MessagePack array of a type name and random values;
* ``valid``: one to four valid frames (every message type, random fields);
* ``reformatted``: one valid message written another valid way, which must
  decode the same: a JSON ``hello``/``refuse`` with other key order,
  whitespace, ``\\u`` escapes, unknown keys; a MessagePack body with other
  integer, float, string, bin and array formats than the shortest, optional
  fields at the end left out, unknown elements added at the end;
* ``truncated``: valid frames cut at a random point;
* ``wrong_field``: a valid message with one field replaced by a value of the
  wrong type or out of range (bins of the wrong length, deeply nested
  arrays included), removed, or with an unknown type;
* ``body_mutation``: a valid body with trailing bytes or invalid UTF-8 in a
  string; a JSON one also with a byte-order mark, a repeated key or a lone
  surrogate in an unknown key; a MessagePack one with a wrong element count
  or a reserved byte;
* ``bad_prefix``: a length prefix of 0 or above ``MAX_FRAME_BYTES``;
* ``edge_size``: a valid message padded (an unknown key, or an unknown
  element at the end) to exactly ``MAX_FRAME_BYTES`` (must decode) or one
  byte more (must be refused from its prefix);
* ``flipped``: valid frames with one to four bytes changed;
* ``concat``: several frames of the kinds above, one after the other.

Each input goes to a fresh :class:`p2pchat.wire.FrameDecoder`, whole, in random
chunks, or one byte at a time.  The only allowed outcomes are messages
returned or :class:`~p2pchat.errors.RemoteProtocolError` raised.  Anything else
is a bug: another exception, a valid input that does not give back exactly its
messages, a bad length prefix not refused from its 4 bytes, a decoded message
that does not survive re-encoding, a decoder buffer over one frame, or
:func:`p2pchat.wire.hello_version` (run on every complete body, as the
handshake does) raising.  Bugs are printed with the input in hex and make the
exit status 1.

Separately, JSON inputs the decoder accepts although ``docs/protocol.md``
section 6 says they are protocol errors (invalid UTF-8, a lone surrogate
escape) are counted as *spec deviations*; they are reported, and fail the run
only with ``--strict``.

``--live`` fuzzes a running node instead (:func:`run_live`): a target node,
an honest node and a watcher, in this process on 127.0.0.1, the honest node
and the watcher linked to the target only; an attacker links to the target
from 127.0.0.x with its own keys and sends it valid *signed* frames of every
kind (chat, join, presence, nick, leave, direct, ihave, graft, prune, sync,
lines, ack), mutated: fields changed (id, origin, seq, line, hlc, hops, name,
text, key, sig, room, ts; re-signed half the time), bits flipped, truncated,
duplicated, reordered, spliced.  The honest node sends a line every 50 cases.
A bug is an honest line that does not reach the target and the watcher
exactly once, an ERROR logged by p2pchat (an internal error), an honest link
closed for a protocol error, or the target no longer reading.  The target's
rate limits are raised so that cases reach the checks behind them, and its
history window is small (``--window``, 20 lines) so that attacks on the
window show within a run.

Output: counts per outcome, per input kind, per error code and per error reason
(the first words of the message, numbers replaced by ``N``), and cases per
second.  ``--json`` prints one JSON object instead.  Examples::

    python scripts/fuzz.py                     # 100,000 cases, seed 1
    python scripts/fuzz.py --cases 1000000 --seed 7 --json
    python scripts/fuzz.py --seed 7 --case 4242  # replay one case, verbosely
    python scripts/fuzz.py --live --cases 100000  # mutated signed frames, live node
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import itertools
import json
import logging
import random
import re
import socket
import string
import struct
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import msgspec

from p2pchat import names, wire
from p2pchat.errors import RemoteProtocolError

FeedMode = Literal["whole", "chunks", "bytes"]

MAX_BYTEWISE: Final = 4096
"""Inputs longer than this are fed in chunks rather than one byte at a time."""

LABEL_CHARS: Final = (
    string.ascii_letters + string.digits + " -_.'äöüßéñ名前漢字🙂🎉\u0301\u200b\u00a0"
)
TEXT_CHARS: Final = LABEL_CHARS + '\t"\\/<>&{}[]:,\ufeff\U0001f600'
JSONISH_CHARS: Final = '{}[]":,0123456789.eE+-truefalsnl\\u \t\n'

# Values that are of the wrong JSON type for some field, out of range, or
# otherwise invalid, written as raw JSON text (some are not even valid JSON).
WRONG_VALUES: Final[tuple[bytes, ...]] = (
    b'"1"',
    b'"x"',
    b'""',
    b"1",
    b"-1",
    b"0",
    b"1.5",
    b"16.0",
    b"-0.0",
    b"1e400",
    b"-1e400",
    b"100000000001",
    b"9007199254740993",
    b"18446744073709551616",
    b"1" + b"0" * 400,
    b"true",
    b"false",
    b"null",
    b"[]",
    b"{}",
    b'[1,"a",null]',
    b'{"a":{"b":[1]}}',
    b'"\\u0000"',
    b'"a\\nb"',
    b'" x"',
    b'"x "',
    b'"\\ud800"',
    b'"\\udc00x"',
    b'"\\ud83d\\ude42"',
    b'"\xed\xa0\x80"',
    b'"\xc0\xaf"',
    b'"\xff"',
    b'"' + b"a" * 33 + b'"',
    b'"' + b"a" * 2001 + b'"',
    b'"\\u2028"',
    b'"\\u009b"',
    b'"0123456789ABCDEF"',
    b'"0123456789abcde"',
    b'"00112233445566778899AABBCCDDEEFF"',
    b"65536",
    b"NaN",
    b"Infinity",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b'"\\x41"',
    b"'x'",
    b'["1.2.3.4","999.999.999.999"]',
    b'["1.2.3.4","1.2.3.4","1.2.3.4","1.2.3.4","1.2.3.4","1.2.3.4","1.2.3.4","1.2.3.4","1"]',
)
WRONG_BIN_VALUES: Final[tuple[object, ...]] = (
    "1",
    "x",
    "",
    "00112233445566778899aabbccddeeff",  # hex, as version 1 sent ids
    1,
    -1,
    0,
    1.5,
    16.0,
    -0.0,
    1e300,
    float("inf"),
    float("nan"),
    100000000001,
    2**53 + 1,
    2**64 - 1,
    -(2**63),
    True,
    False,
    None,
    [],
    {},
    {"a": 1},
    [1, "a", None],
    b"",
    b"\0" * 7,
    b"\0" * 9,
    b"\0" * 15,
    b"\0" * 17,
    b"\0" * 31,
    b"\0" * 33,
    b"\0" * 63,
    b"\0" * 65,
    "a" * 33,
    "a" * 2001,
    "a\nb",
    " x",
    "x ",
    "\u2028",
    "\u009b",
    "\u200b",
    ["1.2.3.4", "999.999.999.999"],
    ["1.2.3.4"] * 9,
)
"""Values of the wrong MessagePack type for some field, out of range, or
otherwise invalid (docs/protocol.md section 5)."""

FIELDS: Final = (
    "type",
    "version",
    "node",
    "name",
    "room",
    "port",
    "code",
    "reason",
    "id",
    "origin",
    "seq",
    "ts",
    "hops",
    "text",
    "action",
    "old",
    "addrs",
)
PLACEHOLDER: Final = "@@fuzz-placeholder@@"


@dataclass
class Case:
    """One fuzz input and what is known about it.

    Attributes:
        kind: which generator made it.
        data: the bytes fed to the decoder.
        expected: messages the input certainly starts with (frames wholly
            before the first unknown byte).
        exact: True if the input is exactly the frames of ``expected``
            (perhaps followed by an incomplete frame): then no error is allowed
            and the decoder must return exactly ``expected``.
        oversized_at: offset of the last byte of a bad length prefix whose
            frames before it are all valid: the decoder must raise
            ``FrameTooLarge`` once that byte is in, and not before.
        whole: True if the input is exactly whole valid frames, nothing after.
    """

    kind: str
    data: bytes
    expected: list[wire.Message] = field(default_factory=list)
    exact: bool = False
    oversized_at: int | None = None
    whole: bool = False


@dataclass
class Result:
    """What the decoder did with one case.

    Attributes:
        messages: the messages it returned (over all feeds).
        error: the RemoteProtocolError it raised, if any.
        error_at: input offset just after the chunk that raised.
        bodies: complete frame bodies, split by a second decoder.
    """

    messages: list[wire.Message]
    error: RemoteProtocolError | None
    error_at: int | None
    bodies: list[bytes]


class Bug(Exception):
    """A fuzz case broke one of the decoder's promises."""


# -- valid messages -------------------------------------------------------------------------


def _label(rng: random.Random, max_chars: int) -> str:
    n = rng.randint(1, max_chars) if rng.random() < 0.3 else rng.randint(1, 8)
    return "".join(rng.choices(LABEL_CHARS, k=n)).strip() or "x"


def _name(rng: random.Random) -> str:
    """A valid display name: a label without what the name rules refuse
    (zero width space, a leading combining mark; docs/protocol.md section 5)."""
    name = _label(rng, wire.MAX_NAME_CHARS).replace("\u200b", "").lstrip("\u0301").strip()
    try:
        names.check_name(name)
    except names.BadName:
        return "x"
    return name


def _text(rng: random.Random, max_chars: int) -> str:
    r = rng.random()
    n = rng.randint(0, max_chars) if r < 0.05 else rng.randint(0, min(60, max_chars))
    return "".join(rng.choices(TEXT_CHARS, k=n))


def _common(rng: random.Random) -> dict[str, Any]:
    return {
        "id": f"{rng.getrandbits(128):032x}",
        "origin": f"{rng.getrandbits(64):016x}",
        "seq": rng.choice((0, 1, 2**53, rng.randint(0, 1000), rng.randint(0, 2**53))),
        "name": _name(rng),
        "room": _label(rng, wire.MAX_ROOM_CHARS),
        "ts": rng.choice((0.0, 1e11, rng.uniform(0, 1e11), 1.7e9 + rng.random())),
        "hops": rng.randint(0, wire.MAX_HOP_LIMIT),
    }


def random_message(rng: random.Random) -> wire.Message:
    """A random valid message of any type."""
    kind = rng.randrange(8)
    if kind == 0:
        return wire.Hello(
            version=rng.choice((1, 1, 1, 2, 0, -5)),
            node=f"{rng.getrandbits(64):016x}",
            name=_name(rng),
            room=_label(rng, wire.MAX_ROOM_CHARS),
            port=rng.randint(0, 65535),
        )
    if kind == 1:
        return wire.Refuse(code=_text(rng, 32), reason=_text(rng, 200))
    if kind == 2:
        return wire.Keepalive()
    common = _common(rng)
    if kind == 3:
        return wire.Chat(text=_text(rng, wire.MAX_TEXT_CHARS), action=rng.random() < 0.2, **common)
    if kind == 4:
        return wire.Join(**common)
    if kind == 5:
        return wire.Leave(reason=_text(rng, 32), **common)
    if kind == 6:
        return wire.Nick(old=_name(rng), **common)
    addrs = [_address(rng) for _ in range(rng.randint(0, 8))]
    return wire.Presence(addrs=addrs, port=rng.randint(0, 65535), **common)


def _address(rng: random.Random) -> str:
    """A valid presence address: a dotted quad, or an IPv6 address in RFC 5952
    form (never an IPv4-mapped one, which a presence may not carry)."""
    if rng.random() < 0.5:
        return ".".join(str(rng.randint(0, 255)) for _ in range(4))
    # a few zero groups, so that "::" compression shows up
    groups = [rng.choice((0, 0, rng.getrandbits(16))) for _ in range(8)]
    groups[0] = groups[0] or 0xFD00
    addr = ipaddress.IPv6Address(sum(g << (16 * (7 - i)) for i, g in enumerate(groups)))
    return str(addr)


def frame_of(body: bytes) -> bytes:
    """Put a length prefix (of the body's real length) in front of ``body``."""
    return struct.pack("!I", len(body)) + body


def _valid_frames(rng: random.Random, count: int) -> tuple[list[wire.Message], bytes]:
    msgs = [random_message(rng) for _ in range(count)]
    return msgs, b"".join(wire.encode_frame(m) for m in msgs)


# -- generators -----------------------------------------------------------------------------


def gen_random(rng: random.Random) -> Case:
    """Random bytes; a third of the time behind a length prefix that fits."""
    body = rng.randbytes(rng.randint(0, 256))
    if body and rng.random() < 0.35:
        return Case("random", frame_of(body))
    return Case("random", body)


def gen_jsonish(rng: random.Random) -> Case:
    """Random JSON-looking text behind a fitting length prefix."""
    text = "".join(rng.choices(JSONISH_CHARS, k=rng.randint(1, 200)))
    if rng.random() < 0.5:
        text = '{"type":' + text
    return Case("jsonish", frame_of(text.encode()))


KINDS: Final = [*get_args(wire.MessageKind), "bogus"]
"""Type names for MessagePack cases: every kind the wire knows, in order, and one it does not."""


def gen_msgpackish(rng: random.Random) -> Case:
    """A MessagePack array of a type name and random values."""
    values = [rng.choice(WRONG_BIN_VALUES) for _ in range(rng.randint(0, 16))]
    for i in range(len(values)):
        if rng.random() < 0.3:
            values[i] = rng.randbytes(rng.choice((8, 16, 32, 64)))
    return Case("msgpackish", frame_of(msgspec.msgpack.encode([rng.choice(KINDS), *values])))


def _defaults(msg: wire.Message) -> list[object]:
    """Each field's default in memory (hex strings), NODEFAULT if required."""
    out: list[object] = []
    for f in msgspec.structs.fields(type(msg)):
        if f.default_factory is not msgspec.NODEFAULT:
            out.append(f.default_factory())
        else:
            out.append(f.default)
    return out


def _pack_loose(value: object, rng: random.Random) -> bytes:
    """``value`` in MessagePack, in a format picked at random among those that
    hold it (not always the shortest): every one of them must decode the same."""
    if value is None:
        return b"\xc0"
    if value is True or value is False:
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        forms: list[bytes] = []
        if 0 <= value < 128:
            forms.append(bytes([value]))
        if -32 <= value < 0:
            forms.append(struct.pack("b", value))
        for code, fmt in ((0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q")):
            with contextlib.suppress(struct.error):
                forms.append(bytes([code]) + struct.pack(fmt, value))
        for code, fmt in ((0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")):
            with contextlib.suppress(struct.error):
                forms.append(bytes([code]) + struct.pack(fmt, value))
        return rng.choice(forms)
    if isinstance(value, float):
        forms = [b"\xcb" + struct.pack(">d", value)]
        if struct.unpack(">f", struct.pack(">f", value))[0] == value:
            forms.append(b"\xca" + struct.pack(">f", value))
        if value.is_integer() and 0 <= value <= 2**53:
            forms.append(_pack_loose(int(value), rng))
        return rng.choice(forms)
    if isinstance(value, str | bytes):
        data = value.encode("utf-8") if isinstance(value, str) else value
        n = len(data)
        if isinstance(value, str):
            heads = [bytes([0xD9, n])] if n < 256 else []
            heads += [b"\xda" + struct.pack(">H", n), b"\xdb" + struct.pack(">I", n)]
            if n < 32:
                heads.append(bytes([0xA0 | n]))
        else:
            heads = [bytes([0xC4, n])] if n < 256 else []
            heads += [b"\xc5" + struct.pack(">H", n), b"\xc6" + struct.pack(">I", n)]
        return rng.choice(heads) + data
    if isinstance(value, dict):  # only in ignored elements
        return msgspec.msgpack.encode(value)
    assert isinstance(value, list), value
    n = len(value)
    heads = [b"\xdc" + struct.pack(">H", n), b"\xdd" + struct.pack(">I", n)]
    if n < 16:
        heads.append(bytes([0x90 | n]))
    return rng.choice(heads) + b"".join(_pack_loose(v, rng) for v in value)


def _reformat_msgpack(msg: wire.Message, rng: random.Random) -> bytes:
    array: list[Any] = msgspec.msgpack.decode(wire.encode_body(msg))
    if rng.random() < 0.5:  # unknown elements after the last field
        extras: tuple[object, ...] = (None, 1, -2.5, "s", [1, [2, {}]], {"a": "b"}, True, b"\0")
        array += [rng.choice(extras) for _ in range(rng.randint(1, 3))]
    elif rng.random() < 0.6:  # else optional fields at the end left out, if they hold the default
        values = list(msgspec.structs.astuple(msg))
        defaults = _defaults(msg)
        keep = len(values)
        while keep > 0 and defaults[keep - 1] is not msgspec.NODEFAULT:
            if values[keep - 1] != defaults[keep - 1] or rng.random() < 0.3:
                break
            keep -= 1
        array = array[: 1 + keep]
    return _pack_loose(array, rng)


def gen_valid(rng: random.Random) -> Case:
    """One to four valid frames."""
    msgs, data = _valid_frames(rng, rng.randint(1, 4))
    return Case("valid", data, msgs, exact=True, whole=True)


def gen_reformatted(rng: random.Random) -> Case:
    """A valid message written another valid way: must decode the same."""
    msg = random_message(rng)
    if not isinstance(msg, wire.JSON_KINDS):
        body = _reformat_msgpack(msg, rng)
        return Case("reformatted", frame_of(body), [msg], exact=True, whole=True)
    obj: dict[str, Any] = msgspec.to_builtins(msg)
    items = list(obj.items())
    if rng.random() < 0.5:
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(("x", "extra", "future_field", "ünknown", "id2"))
            value = rng.choice((None, 1, -2.5, "s", [1, [2, {}]], {"a": "b"}, True, "é\t"))
            items.append((key, value))
    rng.shuffle(items)
    # "type" first is what our sender does; receivers must not care.
    text = json.dumps(
        dict(items),
        ensure_ascii=rng.random() < 0.5,
        indent=rng.choice((None, None, 0, 2, "\t")),
        separators=rng.choice(((",", ":"), (", ", ": "), (" ,", " : "))),
    )
    pad = rng.choice(("", " ", "\r\n", "\t \n"))
    body = (rng.choice(("", " ", "\n")) + text + pad).encode()
    if rng.random() < 0.3:
        body = body.replace(b"/", b"\\/")  # an allowed escape
    return Case("reformatted", frame_of(body), [msg], exact=True, whole=True)


def gen_truncated(rng: random.Random) -> Case:
    """Valid frames cut at a random point: only the whole frames come out."""
    msgs, data = _valid_frames(rng, rng.randint(1, 3))
    cut = rng.randint(0, len(data) - 1)
    done: list[wire.Message] = []
    end = ends = 0
    for m in msgs:
        end += len(wire.encode_frame(m))
        if end <= cut:
            done.append(m)
            ends = end
    return Case("truncated", data[:cut], done, exact=True, whole=ends == cut)


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice((rng.randint(50, 900), rng.randint(900, 1200), rng.randint(1200, 20000)))
    opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
    return opener * depth + b"1" + closer * depth


def gen_wrong_field(rng: random.Random) -> Case:
    """A valid message with one field replaced, removed, or an unknown type."""
    msg = random_message(rng)
    if not isinstance(msg, wire.JSON_KINDS):
        array: list[Any] = msgspec.msgpack.decode(wire.encode_body(msg))
        r = rng.random()
        if r < 0.08 and len(array) > 1:
            del array[rng.randrange(1, len(array))]
        elif r < 0.12:
            array[0] = rng.choice(("bogus", "Chat", "", "chat ", "keepalive\u0000", "hello", 3))
        else:
            i = rng.randrange(len(array))
            if rng.random() < 0.08:  # deeply nested arrays in its place
                depth = rng.choice((rng.randint(50, 900), rng.randint(900, 20000)))
                head = msgspec.msgpack.encode(array[:i])
                tail = msgspec.msgpack.encode(array[i + 1 :])
                # Both encodings carry their own array header: splice the
                # elements under one header of the whole count.
                body = (
                    _array_head(len(array))
                    + head[len(_array_head(i)) :]
                    + b"\x91" * depth
                    + b"\x90"
                    + tail[len(_array_head(len(array) - i - 1)) :]
                )
                return Case("wrong_field", frame_of(body))
            array[i] = rng.choice(WRONG_BIN_VALUES)
        return Case("wrong_field", frame_of(msgspec.msgpack.encode(array)))
    obj: dict[str, Any] = msgspec.to_builtins(msg)
    r = rng.random()
    key = rng.choice(list(obj)) if r < 0.7 else rng.choice(FIELDS)
    if r < 0.08 and key != "type":
        del obj[key]
        value = None
    elif r < 0.12:
        obj["type"] = rng.choice(("bogus", "Chat", "", "hello ", "keepalive\u0000"))
        value = None
    else:
        obj[key] = PLACEHOLDER
        value = _deep(rng) if rng.random() < 0.08 else rng.choice(WRONG_VALUES)
    body = json.dumps(obj, ensure_ascii=False).encode()
    if value is not None:
        body = body.replace(json.dumps(PLACEHOLDER).encode(), value)
    return Case("wrong_field", frame_of(body))


def _array_head(n: int) -> bytes:
    """The shortest MessagePack header of an array of ``n`` elements."""
    if n < 16:
        return bytes([0x90 | n])
    return b"\xdc" + struct.pack(">H", n)


def gen_body_mutation(rng: random.Random) -> Case:
    """A valid body with a BOM, trailing bytes, a repeated key, or bad UTF-8;
    a MessagePack one with trailing bytes, bad UTF-8 in a string, a wrong
    element count or a reserved byte."""
    msg = random_message(rng)
    body = wire.encode_body(msg)
    if not isinstance(msg, wire.JSON_KINDS):
        array: list[Any] = msgspec.msgpack.decode(body)
        r = rng.randrange(4)
        if r == 0:
            body += rng.choice((b"x", b"\x90", b"\xc0", b"\x00", b"\xc1"))
        elif r == 1:  # the element count one off (too many: the body ends early)
            n = len(array) + rng.choice((-1, 1))
            body = _array_head(n) + body[len(_array_head(len(array))) :]
        elif r == 2:  # invalid UTF-8 in the type tag, or in an unknown string at the end
            junk = rng.choice((b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff"))
            if rng.random() < 0.5:
                tag = msgspec.msgpack.encode(array[0])
                body = body.replace(tag, bytes([0xA0 | len(junk)]) + junk, 1)
            else:
                extra = msgspec.msgpack.encode([*array, "XX"])
                body = extra.replace(b"\xa2XX", bytes([0xA0 | len(junk)]) + junk)
        else:  # a reserved byte somewhere
            i = rng.randrange(len(body))
            body = body[:i] + b"\xc1" + body[i + 1 :]
        return Case("body_mutation", frame_of(body))
    r = rng.randrange(6)
    if r == 0:
        body = b"\xef\xbb\xbf" + body
    elif r == 1:
        body += rng.choice((b"x", b"{}", b",", b"\x00", b" 1", b"}"))
    elif r == 2:
        first_key = body[1 : body.index(b":")]
        body = body[:-1] + b"," + first_key + b':"x"}'
    elif r == 3:
        body = body[:-1] + b',"type":' + json.dumps(wire.kind(msg)).encode() + b"}"
    elif r == 4:
        junk = rng.choice((b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff", b"\xf4\x90\x80\x80"))
        body = body[:-1] + b',"x":"' + junk + b'"}'
    else:
        body = body[:-1] + b',"x":"' + rng.choice((b"\\ud800", b"\\udfff", b"a\\ud83d")) + b'"}'
    return Case("body_mutation", frame_of(body))


def gen_bad_prefix(rng: random.Random) -> Case:
    """Valid frames, then a length prefix of 0 or above MAX_FRAME_BYTES."""
    msgs, data = _valid_frames(rng, rng.randint(0, 2))
    n = rng.choice(
        (
            0,
            wire.MAX_FRAME_BYTES + 1,
            2**32 - 1,
            2**31,
            rng.randint(wire.MAX_FRAME_BYTES + 1, 2**32 - 1),
        )
    )
    tail = rng.randbytes(rng.randint(0, 64))
    return Case(
        "bad_prefix",
        data + struct.pack("!I", n) + tail,
        msgs,
        exact=False,
        oversized_at=len(data) + 3,
    )


def gen_edge_size(rng: random.Random) -> Case:
    """A message padded with an unknown key (JSON) or an unknown element at
    the end (MessagePack) to exactly MAX_FRAME_BYTES, or one more."""
    msg = random_message(rng)
    body = wire.encode_body(msg)
    over = rng.random() < 0.5
    target = wire.MAX_FRAME_BYTES + (1 if over else 0)
    if isinstance(msg, wire.JSON_KINDS):
        pad = target - len(body) - len(b',"pad":""')
        body = body[:-1] + b',"pad":"' + b"p" * pad + b'"}'
    else:
        array: list[Any] = msgspec.msgpack.decode(body)
        base = len(msgspec.msgpack.encode([*array, b""]))  # with a bin 8 header of 2 bytes
        body = msgspec.msgpack.encode([*array, b"p" * (target - base - 1)])  # bin 16: 3 bytes
    assert len(body) == target
    if over:
        return Case("edge_size", frame_of(body), [], exact=False, oversized_at=3)
    return Case("edge_size", frame_of(body), [msg], exact=True, whole=True)


def gen_flipped(rng: random.Random) -> Case:
    """Valid frames with one to four bytes changed."""
    msgs, data = _valid_frames(rng, rng.randint(1, 3))
    buf = bytearray(data)
    positions = [rng.randrange(len(buf)) for _ in range(rng.randint(1, 4))]
    for pos in positions:
        buf[pos] = buf[pos] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
    first = min(positions)
    before: list[wire.Message] = []
    end = 0
    for m in msgs:
        end += len(wire.encode_frame(m))
        if end <= first:
            before.append(m)
    if bytes(buf) == data:
        return Case("flipped", data, msgs, exact=True, whole=True)
    return Case("flipped", bytes(buf), before)


SIMPLE_GENERATORS: Final[tuple[tuple[Callable[[random.Random], Case], float], ...]] = (
    (gen_random, 0.12),
    (gen_jsonish, 0.03),
    (gen_msgpackish, 0.05),
    (gen_valid, 0.10),
    (gen_reformatted, 0.08),
    (gen_truncated, 0.10),
    (gen_wrong_field, 0.20),
    (gen_body_mutation, 0.08),
    (gen_bad_prefix, 0.05),
    (gen_edge_size, 0.01),
    (gen_flipped, 0.12),
)


def _pick(rng: random.Random) -> Callable[[random.Random], Case]:
    gens = [g for g, _ in SIMPLE_GENERATORS]
    weights = [w for _, w in SIMPLE_GENERATORS]
    return rng.choices(gens, weights)[0]


def gen_concat(rng: random.Random) -> Case:
    """Two to five cases of the other kinds, one after the other."""
    parts = [_pick(rng)(rng) for _ in range(rng.randint(2, 5))]
    expected: list[wire.Message] = []
    exact = True
    oversized_at: int | None = None
    offset = 0
    for n, part in enumerate(parts):
        expected += part.expected
        if not part.whole:
            # What follows a part that is not whole valid frames is unknown (a
            # truncated frame swallows the next part as its body), except
            # when that part is the last one.
            if part.oversized_at is not None:
                oversized_at = offset + part.oversized_at
            exact = part.exact and n == len(parts) - 1
            break
        offset += len(part.data)
    data = b"".join(p.data for p in parts)
    return Case("concat", data, expected, exact=exact, oversized_at=oversized_at)


def generate(seed: int, index: int) -> tuple[Case, FeedMode, list[int]]:
    """Case ``index`` of run ``seed``, with how to feed it (mode and cut points)."""
    rng = random.Random(seed * 1_000_003 + index)
    gen = gen_concat if rng.random() < 0.08 else _pick(rng)
    case = gen(rng)
    r = rng.random()
    mode: FeedMode = "whole" if r < 0.45 else "chunks" if r < 0.85 else "bytes"
    if mode == "bytes" and len(case.data) > MAX_BYTEWISE:
        mode = "chunks"
    cuts: list[int] = []
    if mode == "chunks" and case.data:
        cuts = sorted(rng.randrange(len(case.data) + 1) for _ in range(rng.randint(1, 8)))
    return case, mode, cuts


# -- running one case -----------------------------------------------------------------------


def _chunks(data: bytes, mode: FeedMode, cuts: list[int]) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def run_case(case: Case, mode: FeedMode, cuts: list[int]) -> Result:
    """Feed one case to a fresh decoder and check every promise.

    Raises:
        Bug: a promise was broken (the message says which).
    """
    decoder = wire.FrameDecoder()
    messages: list[wire.Message] = []
    error: RemoteProtocolError | None = None
    error_at: int | None = None
    offset = 0
    try:
        for chunk in _chunks(case.data, mode, cuts):
            offset += len(chunk)
            messages += decoder.feed(chunk)
            if decoder.buffered > wire.MAX_FRAME_BYTES:
                raise Bug(f"decoder holds {decoder.buffered} bytes after a feed")
    except RemoteProtocolError as exc:
        error, error_at = exc, offset
    except Bug:
        raise
    except BaseException as exc:  # any other exception is a bug
        raise Bug(f"decoder raised {type(exc).__name__}: {exc}") from exc

    # Complete bodies, as the link reader sees them, for the other checks.
    splitter = wire.FrameDecoder()
    bodies: list[bytes] = []
    try:
        bodies = splitter.feed_bodies(case.data)
    except RemoteProtocolError as exc:
        bodies = _bodies_before_error(case.data)
        del exc
    for body in bodies:
        try:
            version = wire.hello_version(body)
        except BaseException as exc:
            raise Bug(f"hello_version raised {type(exc).__name__}: {exc}") from exc
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise Bug(f"hello_version returned {version!r}")

    if case.exact:
        if error is not None:
            raise Bug(f"a valid input was refused: {error}")
        if messages != case.expected:
            raise Bug(f"valid input gave {len(messages)} messages, not {len(case.expected)} equal")
    else:
        n = min(len(messages), len(case.expected))
        if messages[:n] != case.expected[:n]:
            raise Bug("the messages before the first bad byte came out changed")
    if case.oversized_at is not None:
        if error is None or error.code != "oversized":
            raise Bug(f"bad length prefix not refused as oversized: {error!r}")
        if mode == "bytes" and error_at != case.oversized_at + 1:
            raise Bug(f"bad length prefix refused at byte {error_at}, not {case.oversized_at + 1}")
    for msg in messages:
        try:
            again = wire.decode_body(wire.encode_body(msg))
        except BaseException as exc:
            raise Bug(f"decoded {wire.kind(msg)} does not re-encode: {exc!r}") from exc
        if again != msg:
            raise Bug(f"decoded {wire.kind(msg)} changes on re-encoding")
    return Result(messages, error, error_at, bodies)


def _bodies_before_error(data: bytes) -> list[bytes]:
    splitter = wire.FrameDecoder()
    out: list[bytes] = []
    for i in range(0, len(data), 4):
        try:
            out += splitter.feed_bodies(data[i : i + 4])
        except RemoteProtocolError:
            break
    return out


# -- spec oracle ----------------------------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # docs/protocol.md lets a receiver take the last of repeated keys, as
    # msgspec does: the oracle does the same (dict keeps the last).
    return dict(pairs)


class _Deviation(Exception):
    pass


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, dict):
            stack += item.keys()
            stack += item.values()
    return False


def spec_deviation(body: bytes) -> str | None:
    """Why ``docs/protocol.md`` section 6 would refuse this accepted JSON
    body, or None (and None for a MessagePack body: msgspec checks its
    strings' UTF-8 itself, and the tests check that)."""
    if body.lstrip(b" \t\r\n")[:1] != b"{":
        return None
    if body.startswith(b"\xef\xbb\xbf"):
        return "byte-order mark accepted"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid UTF-8 accepted"
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicates)
    except _Deviation as exc:
        return str(exc)
    except (ValueError, RecursionError):
        return None  # Python's json cannot judge it; no opinion
    if _has_lone_surrogate(obj):
        return "lone surrogate escape accepted"
    return None


# -- live: mutated signed frames against a running node --------------------------------------

LIVE_KINDS: Final = (
    "chat",
    "chat",
    "chat",
    "join",
    "presence",
    "nick",
    "leave",
    "direct",
    "ihave",
    "graft",
    "prune",
    "sync",
    "lines",
    "lines",
    "ack",
    "keepalive",
)
"""The frames a live case starts from (chat lines weighted up: they are stored)."""

LIVE_FLOODED_FIELDS: Final = (
    "id",
    "origin",
    "seq",
    "line",
    "hlc",
    "hops",
    "name",
    "text",
    "key",
    "sig",
    "room",
    "ts",
    "every",
    "dh",
    "old",
    "to",
    "topic",
    "offer",
)

HONEST_EVERY: Final = 50
"""The honest node sends one line every this many live cases."""

SOURCE_ADDRESSES: Final = tuple(f"127.0.0.{n}" for n in range(2, 34))
"""Where the attacker's links come from (127.0.0.0/8 only): one address at a
time, moving on at every new link, so that per-address limits meet a fresh
address (the honest nodes use 127.0.0.1)."""


def _fuzz_offers() -> tuple[Any, ...]:
    """``chat.offer`` values for the live fuzz: none, a valid offer, and one
    bad by each offer rule (name, chunk size, size, id)."""
    from p2pchat.files.manifest import file_id_of

    root = bytes(range(32))

    def offer(fname: str, size: int, chunk: int, fid: bytes | None = None) -> Any:
        file = fid if fid is not None else file_id_of(size, chunk, root)
        return wire.FileOffer(file=file.hex(), fname=fname, size=size, chunk=chunk, root=root.hex())

    return (
        None,
        offer("report.pdf", 2_400_000, 1 << 18),
        offer("../etc/passwd", 10, 1 << 16),
        offer("a\u202eb.txt", 10, 1 << 16),
        offer("x.bin", 10, 100_000),
        offer("big.iso", 1 << 40, 1 << 20),
        offer("lie.txt", 10, 1 << 16, bytes(32)),
    )


_FUZZ_OFFERS: Final = _fuzz_offers()


@dataclass
class _Sender:
    """An origin the attacker signs for: its key and counters."""

    identity: Any  # p2pchat.identity.Identity (imported lazily)
    seq: int = 0
    line: int = 0


@dataclass
class LiveTally:
    """Counts over a live run."""

    cases: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    links_opened: int = 0
    links_closed_by_node: int = 0
    links_refused: int = 0
    honest_sent: int = 0
    honest_at_target: int = 0
    honest_at_watcher: int = 0
    honest_lost: list[str] = field(default_factory=list)
    duplicates_shown: int = 0
    internal_errors: list[str] = field(default_factory=list)
    honest_links_dropped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    target_stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class _ErrorLog(logging.Handler):
    """Keeps every ERROR (or worse) record of the ``p2pchat`` loggers: an
    internal error of the node under attack (an exception in a link's reader
    or the router) is logged there, and is a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self.records.append(f"{record.name}: {text}")


class _AttackLink:
    """The attacker's end of one link to the target: a raw socket from a
    127.0.0.x address, the handshake done by hand with its own key, and a
    thread that drains (and keeps the last flooded messages of) what the
    target sends.  Not thread-safe for sending: the fuzz loop alone sends."""

    def __init__(self, target: Any, room: str, source: str, identity: Any) -> None:
        self.identity = identity
        port = target.port
        self.seen: list[wire.FloodMessage] = []  # the target's last flooded messages
        self.closed = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(5.0)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        nonce = f"{random.getrandbits(128):032x}"
        hello = wire.Hello(
            version=wire.PROTOCOL_VERSION,
            node=identity.node_id,
            name="fuzz",
            room=room,
            port=0,
            features=["history", "tree"],
            nonce=nonce,
            key=identity.key,
        )
        self.sock.sendall(wire.encode_frame(hello))
        decoder = wire.FrameDecoder()
        theirs: wire.Message | None = None
        early: list[wire.Message] = []
        while theirs is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the target closed the link in the handshake")
            for m in decoder.feed(data):
                if theirs is None and isinstance(m, wire.Hello | wire.Refuse):
                    theirs = m
                else:
                    early.append(m)
        if isinstance(theirs, wire.Refuse):
            raise ConnectionError(f"refused: {theirs.code}")
        assert isinstance(theirs, wire.Hello)
        proof = identity.sign(wire.proof_bytes(theirs.nonce, identity.node_id, theirs.node, room))
        self.sock.sendall(wire.encode_frame(wire.Proof(sig=proof)))
        self._decoder = decoder
        self._keep(early)
        # (the 5 s timeout serves both the drain and the sends: close() wakes the drain)
        self._reader = threading.Thread(target=self._drain, name="fuzz-drain", daemon=True)
        self._reader.start()
        # The target's end of this link: its frame counter tells when the
        # target has taken what we sent (a frame is handled on the link's
        # reader thread before the next one is read).
        deadline = time.monotonic() + 5.0
        while (remote := target._core.links.get(identity.node_id)) is None:
            if self.closed.is_set() or time.monotonic() > deadline:
                self.close()
                raise ConnectionError("the target did not bring the link up")
            time.sleep(0.001)
        self.remote = remote
        self.expected: int = remote.frames_in

    def settle(self, timeout_s: float = 5.0) -> bool:
        """Wait until the target has read every frame sent, or closed the
        link; False if it did neither within ``timeout_s`` (it stopped reading)."""
        remote = self.remote
        deadline = time.monotonic() + timeout_s
        spins = 0
        while remote.frames_in < self.expected:
            if remote._close_reason is not None or remote.done.is_set() or self.closed.is_set():
                self.closed.set()
                return True
            spins += 1
            if spins > 20 and time.monotonic() > deadline:
                return False
            time.sleep(0.0001 if spins < 1000 else 0.001)
        return True

    def _keep(self, msgs: list[wire.Message]) -> None:
        for m in msgs:
            if isinstance(m, wire.Chat | wire.Join | wire.Presence | wire.Nick | wire.Leave):
                self.seen.append(m)
            elif isinstance(m, wire.Lines):
                self.seen += m.lines[:4]
        if len(self.seen) > 64:
            del self.seen[:-64]

    def _drain(self) -> None:
        try:
            while not self.closed.is_set():
                try:
                    data = self.sock.recv(262144)
                except TimeoutError:
                    continue
                if not data:
                    break
                try:
                    self._keep(self._decoder.feed(data))
                except RemoteProtocolError:
                    self._decoder = wire.FrameDecoder()  # our own junk echoed? never: resync
        except OSError:
            pass
        self.closed.set()

    def send(self, data: bytes, frames: int) -> bool:
        """Send ``data``, holding ``frames`` whole frames; False if the
        target has closed the link."""
        if self.closed.is_set():
            return False
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise
        except OSError:
            self.closed.set()
            return False
        self.expected += frames
        return True

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(2.0)


class LiveFuzz:
    """One live run: a target node, an honest node and a watcher linked to
    it (all in this process, on 127.0.0.1), and an attacker sending mutated
    signed frames to the target over raw links.

    Args:
        seed: the run's seed (case ``i`` is generated from ``seed`` and ``i``;
            what the target does with it also depends on what came before).
        window: the target's history window in lines (small, so that attacks
            on the window show within a short run).
    """

    def __init__(self, seed: int, window: int) -> None:
        from p2pchat import identity as identity_mod
        from p2pchat.events import MessageEvent, PeerDown
        from p2pchat.node import Node, NodeConfig

        self._identity_mod = identity_mod
        self._MessageEvent = MessageEvent
        self._PeerDown = PeerDown
        self.seed = seed
        self.room = f"fuzz-{seed}-{random.getrandbits(24):06x}"
        self.tally = LiveTally()
        self.errors = _ErrorLog()
        logging.getLogger("p2pchat").addHandler(self.errors)
        self._events: dict[str, list[Any]] = {"target": [], "honest": [], "watcher": []}
        common: dict[str, Any] = {
            "room": self.room,
            "port": 0,
            "interfaces": ["127.0.0.1"],
            "redial_min_s": 0.1,
            "redial_max_s": 1.0,
            # The topology under test stays as built (the honest node and the watcher
            # linked to the target only): no overlay dials to presence addresses.
            "active_target": 0,
        }
        # The target's rate limits are raised so that cases reach the checks
        # behind them (the limits have tests of their own).
        self.target = Node(
            NodeConfig(
                name="target",
                link_rate_per_s=1e6,
                link_burst=1e6,
                origin_rate_per_s=1e6,
                origin_burst=1e6,
                history_max_lines=window,
                **common,
            ),
            on_event=self._events["target"].append,
        )
        self.target.start()
        peer = [("127.0.0.1", self.target.port)]
        self.honest = Node(
            NodeConfig(name="honest", peers=peer, **common),
            on_event=self._events["honest"].append,
        )
        self.watcher = Node(
            NodeConfig(name="watcher", peers=peer, **common),
            on_event=self._events["watcher"].append,
        )
        self.honest.start()
        self.watcher.start()
        self._nodes = [self.target, self.honest, self.watcher]
        self.honest_ids: list[str] = []
        self.senders = [_Sender(identity_mod.Identity.generate()) for _ in range(6)]
        self._link: _AttackLink | None = None
        self._source = 0
        self._sent_ids: list[str] = []

    # -- set-up and tear-down

    def wait_linked(self, timeout_s: float = 15.0) -> None:
        """Wait until the honest node and the watcher are linked to the target."""
        deadline = time.monotonic() + timeout_s
        while not (
            self.target.has_link(self.honest.node_id) and self.target.has_link(self.watcher.node_id)
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the honest node and the watcher did not link to the target")
            time.sleep(0.02)

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
        for node in self._nodes:
            node.close()
        logging.getLogger("p2pchat").removeHandler(self.errors)

    def _attack_link(self) -> _AttackLink | None:
        link = self._link
        if link is not None and not link.closed.is_set():
            return link
        if link is not None:
            link.close()
            self.tally.links_closed_by_node += 1
            self._link = None
        for _ in range(len(SOURCE_ADDRESSES)):
            source = SOURCE_ADDRESSES[self._source % len(SOURCE_ADDRESSES)]
            self._source += 1
            try:
                ident = self._identity_mod.Identity.generate()
                self._link = _AttackLink(self.target, self.room, source, ident)
            except (OSError, ConnectionError) as exc:
                self.tally.links_refused += 1
                if self.tally.links_refused <= 3:
                    print(f"attacker link from {source} refused: {exc}", file=sys.stderr)
                continue
            self.tally.links_opened += 1
            return self._link
        return None

    # -- making valid signed frames

    def _now_us(self) -> int:
        return int(time.time() * 1e6)

    def _envelope(self, rng: random.Random, sender: _Sender) -> dict[str, Any]:
        sender.seq += 1
        return {
            "id": f"{rng.getrandbits(128):032x}",
            "origin": sender.identity.node_id,
            "seq": sender.seq,
            "name": rng.choice(("mallory", "eve", "honest", "target", "watcher", _label(rng, 16))),
            "room": self.room,
            "ts": time.time(),
            "hops": rng.randint(1, wire.DEFAULT_HOP_LIMIT),
        }

    def _sign(self, msg: wire.F, ident: Any) -> wire.F:
        msg = msgspec.structs.replace(msg, key=ident.key)
        return msgspec.structs.replace(msg, sig=ident.sign(wire.signing_bytes(msg)))

    def _chat(self, rng: random.Random, sender: _Sender) -> wire.Chat:
        sender.line += 1
        line = sender.line if rng.random() < 0.9 else 0
        return self._sign(
            wire.Chat(
                text=_text(rng, 200) or "x",
                action=rng.random() < 0.1,
                line=line,
                hlc=self._now_us() - rng.randint(0, 5_000_000),
                **self._envelope(rng, sender),
            ),
            sender.identity,
        )

    def _flooded(self, rng: random.Random, kind: str, sender: _Sender) -> wire.FloodMessage:
        env = self._envelope(rng, sender)
        ident = sender.identity
        if kind == "chat":
            sender.seq -= 1
            return self._chat(rng, sender)
        if kind == "join":
            return self._sign(wire.Join(dh=ident.dh, **env), ident)
        if kind == "presence":
            return self._sign(
                wire.Presence(
                    addrs=["127.0.0.1"],
                    port=rng.choice((0, 1, 65535, self.target.port)),
                    dh=ident.dh,
                    every=rng.choice((0.0, 1.0, 3.0, 30.0, 600.0, 3600.0)),
                    **env,
                ),
                ident,
            )
        if kind == "nick":
            return self._sign(wire.Nick(old=_label(rng, 16), **env), ident)
        if kind == "leave":
            return self._sign(wire.Leave(**env), ident)
        # A direct message to the target, sealed for real or junk inside.
        aad = f"{env['id']}:{env['origin']}:{self.target.node_id}".encode()
        plain = rng.choice(
            (
                b"\x00" + _text(rng, 100).encode(),
                b"\x01hi",
                b"",
                b"\x00\xff\xfe",
                b"\x00a\x1b[2Jb",
                b"\x00" + b"x" * 2001,
            )
        )
        eph, box = self._identity_mod.seal(self.target._identity.dh, plain, aad)
        return self._sign(wire.Direct(to=self.target.node_id, eph=eph, box=box, **env), ident)

    def _known_ids(self, rng: random.Random) -> list[str]:
        pool = self.honest_ids[-20:] + self._sent_ids[-20:]
        if not pool or rng.random() < 0.2:
            return [f"{rng.getrandbits(128):032x}" for _ in range(rng.randint(1, 4))]
        return [rng.choice(pool) for _ in range(rng.randint(1, 4))]

    def _base(self, rng: random.Random, kind: str, seen: list[wire.FloodMessage]) -> Any:
        """A valid message of ``kind`` (signed where it is signed)."""
        sender = rng.choice(self.senders)
        if kind in ("chat", "join", "presence", "nick", "leave", "direct"):
            if seen and rng.random() < 0.25:
                return rng.choice(seen)  # a message the target relayed to us (honest or not)
            return self._flooded(rng, kind, sender)
        if kind == "ihave":
            ids = self._known_ids(rng)
            hops = [rng.randint(0, 64) for _ in ids] if rng.random() < 0.7 else []
            return wire.IHave(ids=ids, hops=hops)
        if kind == "graft":
            return wire.Graft(ids=self._known_ids(rng))
        if kind == "prune":
            return wire.Prune()
        if kind == "sync":
            have = [
                wire.Have(
                    rng.choice([*self.senders, sender]).identity.node_id
                    if rng.random() < 0.7
                    else self.honest.node_id,
                    rng.randint(0, 5),
                    rng.randint(0, 50),
                    rng.choice((0, self._now_us(), 2**53)),
                )
                for _ in range(rng.randint(0, 4))
            ]
            since = rng.choice((0, self._now_us() - 10**9, self._now_us(), 2**53))
            return wire.Sync(room=self.room, since=since, have=have)
        if kind == "lines":
            lines: list[wire.Chat] = [
                self._chat(rng, rng.choice(self.senders)) for _ in range(rng.randint(1, 4))
            ]
            chats = [m for m in seen if isinstance(m, wire.Chat)]
            if chats and rng.random() < 0.3:
                lines.append(rng.choice(chats))
            return wire.Lines(batch=rng.randint(1, 5), lines=lines)
        if kind == "ack":
            return wire.Ack(batch=rng.choice((1, 2, 3, rng.randint(1, 2**53))))
        return wire.Keepalive()

    # -- mutations

    def _mutate_field(self, rng: random.Random, msg: Any) -> tuple[Any, str]:
        """One field of a flooded message changed; re-signed half the time
        (by the key of the origin it now claims, when the attacker has it)."""
        names = [f for f in LIVE_FLOODED_FIELDS if f in type(msg).__struct_fields__]
        name = rng.choice(names)
        now = self._now_us()
        other = rng.choice(self.senders)
        value: Any
        if name == "id":
            value = rng.choice([*self._known_ids(rng), f"{rng.getrandbits(128):032x}"])
        elif name == "origin":
            value = rng.choice(
                (
                    other.identity.node_id,
                    self.target.node_id,
                    self.honest.node_id,
                    self.watcher.node_id,
                    f"{rng.getrandbits(64):016x}",
                )
            )
        elif name == "seq":
            value = rng.choice((0, 1, msg.seq - 100, msg.seq + 1000, 2**53, 2**53 + 1, -1))
        elif name == "line":
            value = rng.choice((0, 1, max(0, msg.line - 1), msg.line + 1000, 2**53, -1))
        elif name == "hlc":
            value = rng.choice(
                (
                    0,
                    1,
                    now + 3_600 * 10**6,  # an hour ahead
                    now + 200 * 365 * 86_400 * 10**6,  # the year 2225
                    now - 8 * 86_400 * 10**6,  # outside the age limit
                    2**53,
                    2**53 + 1,
                )
            )
        elif name == "hops":
            value = rng.choice((0, 1, 2, wire.MAX_HOP_LIMIT, wire.MAX_HOP_LIMIT + 1, 255, -1))
        elif name in ("name", "old"):
            value = rng.choice(
                (
                    "",
                    "honest",
                    "h\u043enest",  # Cyrillic o
                    "honest\u200b",
                    "\u202ehonest",
                    f"honest#{self.honest.node_id[:4]}",
                    "a\nb",
                    "x" * 33,
                    " lead",
                )
            )
        elif name == "text":
            value = rng.choice(
                ("", "changed", "x" * 2001, "t" * 301, "a\x1b[2Jb", "\u202e", "ok" + " " * 80)
            )
        elif name == "key":
            value = rng.choice((other.identity.key, "", "0" * 64, "ab", msg.key[:-2]))
        elif name == "sig":
            sig = msg.sig or "0" * 128
            flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
            value = rng.choice((flipped, "", "0" * 128, "0" * 126))
        elif name == "room":
            value = rng.choice(("other", "", self.room + " ", "x" * 49))
        elif name == "ts":
            value = rng.choice((0.0, -1.0, 1e11, 1e12, float("nan"), time.time() + 86400))
        elif name == "every":
            value = rng.choice((0.0, 0.001, 3600.0, 1e9, -1.0))
        elif name == "dh":
            value = rng.choice(("", "0" * 64, other.identity.dh, "ab"))
        elif name == "topic":  # a line made a topic: over 300 code points or an action is refused
            value = rng.choice((True, False))
        elif name == "offer":  # a line made a file offer (valid, bad by each rule), or not one
            value = rng.choice(_FUZZ_OFFERS)
        else:  # "to"
            value = rng.choice((self.honest.node_id, f"{rng.getrandbits(64):016x}", "ab"))
        try:
            out = msgspec.structs.replace(msg, **{name: value})
        except (TypeError, ValueError):
            return msg, "field_unchanged"
        if rng.random() < 0.5:
            claimed = next(
                (s.identity for s in self.senders if s.identity.node_id == out.origin), None
            )
            if claimed is not None and name not in ("key", "sig"):
                return self._sign(out, claimed), f"field_{name}_resigned"
        return out, f"field_{name}"

    def _body(self, msg: Any) -> bytes | None:
        try:
            return wire.encode_body(msg)
        except (TypeError, ValueError, msgspec.EncodeError, OverflowError):
            return None

    def case(self, index: int) -> tuple[list[bytes], bool]:
        """The frames of live case ``index`` (one to four, maybe spliced), and
        whether the last one is cut short (then the attacker hangs up after it)."""
        rng = random.Random(self.seed * 1_000_003 + index)
        link = self._link
        seen = list(link.seen) if link is not None else []
        kind = rng.choice(LIVE_KINDS)
        self.tally.kinds[kind] += 1
        msg = self._base(rng, kind, seen)
        r = rng.random()
        op = "valid"
        flooded = isinstance(msg, wire.Chat | wire.Join | wire.Leave | wire.Nick | wire.Presence)
        flooded = flooded or isinstance(msg, wire.Direct)
        if flooded and r < 0.45:
            msg, op = self._mutate_field(rng, msg)
            if flooded and rng.random() < 0.2:
                msg, op2 = self._mutate_field(rng, msg)
                op = f"{op}+{op2.split('_', 1)[1]}"
        elif isinstance(msg, wire.Lines) and r < 0.45:
            i = rng.randrange(len(msg.lines))
            changed, op = self._mutate_field(rng, msg.lines[i])
            lines = list(msg.lines)
            lines[i] = changed
            msg, op = msgspec.structs.replace(msg, lines=lines), f"lines_{op}"
        body = self._body(msg)
        if body is None:
            self.tally.ops["unencodable"] += 1
            return [], False
        if isinstance(msg, wire.Chat | wire.Join | wire.Leave | wire.Nick | wire.Presence):
            self._sent_ids.append(msg.id)
            del self._sent_ids[:-64]
        frames = [frame_of(body)]
        r = rng.random()
        if r < 0.10:  # bits flipped in the body; the prefix still fits
            buf = bytearray(body)
            for _ in range(rng.randint(1, 3)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            frames, op = [frame_of(bytes(buf))], f"{op}+bitflip"
        elif r < 0.14:  # a byte of a bin field changed in place: the frame still parses
            buf = bytearray(body)
            sig = bytes.fromhex(getattr(msg, "sig", "") or "")
            where = body.find(sig) if sig else -1
            if where >= 0:
                buf[where + rng.randrange(len(sig))] ^= 1 << rng.randrange(8)
            frames, op = [frame_of(bytes(buf))], f"{op}+sigbyte"
        elif r < 0.17:  # truncated: the prefix promises more than comes
            cut = rng.randrange(1, len(frames[0]))
            frames, op = [frames[0][:cut]], f"{op}+truncated"
        elif r < 0.22:  # sent twice
            frames, op = frames * 2, f"{op}+duplicated"
        elif r < 0.28:  # with another valid frame, in either order
            extra = self._body(self._base(rng, rng.choice(LIVE_KINDS), seen))
            if extra is not None:
                frames.append(frame_of(extra))
                rng.shuffle(frames)
                op = f"{op}+reordered"
        elif r < 0.31:  # spliced: the head of one body on the tail of another
            extra = self._body(self._base(rng, rng.choice(LIVE_KINDS), seen))
            if extra is not None:
                spliced = body[: rng.randrange(1, len(body))] + extra[rng.randrange(len(extra)) :]
                frames, op = [frame_of(spliced)], f"{op}+spliced"
        self.tally.ops[op.split("+")[0] if op.startswith("field_") else op] += 1
        return frames, op.endswith("+truncated")

    # -- the run

    def send_honest(self, n: int) -> None:
        ev = self.honest.send(f"honest line {n}")
        self.honest_ids.append(ev.id)
        self.tally.honest_sent += 1

    def run(self, cases: int, progress: bool) -> LiveTally:
        """Run ``cases`` live cases; then check the honest lines and the target."""
        tally = self.tally
        start = time.perf_counter()
        honest_n = 0
        for i in range(cases):
            if i % HONEST_EVERY == 0:
                self.send_honest(honest_n)
                honest_n += 1
            frames, cut = self.case(i)
            tally.cases += 1
            if not frames:
                continue
            link = self._attack_link()
            if link is None:
                tally.problems.append(f"case {i}: no attacker link could be made")
                break
            data = b"".join(frames)
            try:
                sent = link.send(data, 0 if cut else len(frames))
            except TimeoutError:
                sent = False
                tally.problems.append(f"case {i}: the target stopped reading (5 s)")
                link.closed.set()
            if sent:
                tally.frames_sent += len(frames)
                tally.bytes_sent += len(data)
                if cut:
                    link.closed.set()  # hang up mid-frame
                elif not link.settle():
                    tally.problems.append(
                        f"case {i}: the target took none of it in 5 s: {data[:300].hex()}"
                    )
                    link.closed.set()
            if len(self.errors.records) > len(tally.internal_errors):
                for rec in self.errors.records[len(tally.internal_errors) :]:
                    tally.internal_errors.append(
                        f"after case {i} (seed {self.seed}): {rec}; sent {data[:400].hex()}"
                    )
            if progress and i and i % 10_000 == 0:
                rate = i / (time.perf_counter() - start)
                print(f"  {i} live cases, {rate:,.0f}/s", file=sys.stderr)
        self.send_honest(honest_n)
        tally.seconds = time.perf_counter() - start
        self._check_honest()
        for rec in self.errors.records[len(tally.internal_errors) :]:
            tally.internal_errors.append(f"at the end: {rec}")
        self._check_links()
        for who, node in (("target", self.target), ("watcher", self.watcher)):
            stats = node.stats()
            tally.target_stats.update(
                {
                    f"{who} frames_refused": dict(stats.frames_refused),
                    f"{who} links_refused": dict(stats.links_refused),
                    f"{who} rate_limited": dict(stats.rate_limited),
                }
            )
        return tally

    def _shown(self, who: str) -> Counter[str]:
        return Counter(e.id for e in list(self._events[who]) if isinstance(e, self._MessageEvent))

    def _check_honest(self, timeout_s: float = 20.0, stalled_s: float = 3.0) -> None:
        """Wait for every honest line at the target and the watcher: at most
        ``timeout_s``, and no longer than ``stalled_s`` without a new one."""
        wanted = set(self.honest_ids)
        deadline = time.monotonic() + timeout_s
        got, moved = -1, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - moved < stalled_s:
            at_t, at_w = self._shown("target"), self._shown("watcher")
            if wanted <= set(at_t) and wanted <= set(at_w):
                break
            if len(at_t) + len(at_w) != got:
                got, moved = len(at_t) + len(at_w), time.monotonic()
            time.sleep(0.05)
        at_t, at_w = self._shown("target"), self._shown("watcher")
        t = self.tally
        t.honest_at_target = len(wanted & set(at_t))
        t.honest_at_watcher = len(wanted & set(at_w))
        t.honest_lost = [
            f"{who}: honest line {self.honest_ids.index(i)}"
            for who, got in (("target", at_t), ("watcher", at_w))
            for i in self.honest_ids
            if i not in got
        ]
        t.duplicates_shown = sum(
            n - 1 for got in (at_t, at_w) for i, n in got.items() if i in wanted and n > 1
        )

    def _check_links(self) -> None:
        for who in ("honest", "watcher"):
            for e in list(self._events[who]):
                if isinstance(e, self._PeerDown) and "protocol error" in e.reason:
                    self.tally.honest_links_dropped.append(f"{who}: {e.reason}")
        if self.target._router is None or not self.target._router.is_alive():
            self.tally.problems.append("the target's router thread is dead")


def live_failed(t: LiveTally) -> bool:
    """True if the live run found a bug (see :func:`run_live`)."""
    return bool(
        t.honest_lost
        or t.duplicates_shown
        or t.internal_errors
        or t.honest_links_dropped
        or t.problems
    )


def run_live(seed: int, cases: int, window: int, progress: bool = False) -> LiveTally:
    """Run ``cases`` cases of mutated signed frames against a live node.

    The attacker starts each case from a valid frame: a chat, join,
    presence, nick, leave or direct message signed with one of its own keys
    (or one the target relayed to it: honest lines included), an ihave,
    graft, prune, sync, lines or ack.  It then changes fields (id, origin,
    seq, line, hlc, hops, name, text, key, sig, room, ts, ...; re-signed half
    the time, so that semantic attacks carry a valid signature), flips bits,
    truncates, duplicates, reorders or splices frames.  Meanwhile the honest
    node sends a line every :data:`HONEST_EVERY` cases.

    A bug is: an honest line that does not reach the target and, through
    it, the watcher (exactly once each), an ERROR logged by p2pchat (an
    internal error), a link between honest nodes closed for a protocol
    error, the target no longer reading or its router dead.
    """
    fuzz = LiveFuzz(seed, window)
    try:
        fuzz.wait_linked()
        return fuzz.run(cases, progress)
    finally:
        fuzz.close()


def print_live(seed: int, t: LiveTally, as_json: bool) -> None:
    """Print a live run's result: a few lines, or one JSON object."""
    rate = t.cases / t.seconds if t.seconds > 0 else 0.0
    ok = not live_failed(t)
    if as_json:
        out = dataclasses.asdict(t)
        out.update(
            mode="live",
            seed=seed,
            seconds=round(t.seconds, 2),
            cases_per_s=round(rate),
            honest_lost=t.honest_lost[:20],
            internal_errors=t.internal_errors[:20],
            problems=t.problems[:20],
            honest_lost_count=len(t.honest_lost),
            ops=dict(t.ops.most_common()),
            kinds=dict(t.kinds.most_common()),
            ok=ok,
        )
        print(json.dumps(out, ensure_ascii=False))
        return
    print(
        f"{t.cases} live cases (seed {seed}) in {t.seconds:.1f} s: {rate:,.0f} cases/s, "
        f"{t.frames_sent:,} frames ({t.bytes_sent:,} bytes) sent to the target"
    )
    print(
        f"attacker links: {t.links_opened} opened, {t.links_closed_by_node} closed by the target, "
        f"{t.links_refused} refused"
    )
    print("kinds:        " + ", ".join(f"{k} {v}" for k, v in t.kinds.most_common()))
    print("ops:          " + ", ".join(f"{k} {v}" for k, v in t.ops.most_common(30)))
    for group, counts in t.target_stats.items():
        print(f"{group}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(
        f"honest lines: {t.honest_sent} sent, {t.honest_at_target} at the target, "
        f"{t.honest_at_watcher} at the watcher (through the target), "
        f"{len(t.honest_lost)} lost, {t.duplicates_shown} shown twice"
    )
    for line in t.honest_lost[:10]:
        print(f"  LOST {line}")
    print(f"internal errors logged: {len(t.internal_errors)}")
    for line in t.internal_errors[:10]:
        print(f"  {line}")
    for line in t.honest_links_dropped[:10] + t.problems[:10]:
        print(f"  PROBLEM {line}")
    print(f"bugs: {'none' if ok else 'FOUND  -> FAILED'}")


# -- the run --------------------------------------------------------------------------------

_NUMBER_RE: Final = re.compile(r"(?<![\w\-\[{,])\d+(?![\w\]},])")


def reason_of(exc: RemoteProtocolError) -> str:
    """The first words of an error message, numbers replaced by ``N``."""
    text = _NUMBER_RE.sub("N", str(exc))
    for stop in (" - at ", " (byte", " (allowed"):
        text = text.split(stop)[0]
    return " ".join(text.split()[:7])


@dataclass
class Tally:
    """Counts over a run."""

    cases: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    deviations: Counter[str] = field(default_factory=Counter)
    bug_reasons: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    exact_verified: int = 0
    bytes_fed: int = 0
    bugs: int = 0
    deviation_examples: dict[str, str] = field(default_factory=dict)


def _hex(data: bytes, limit: int = 512) -> str:
    if len(data) <= limit:
        return data.hex()
    return f"{data[:limit].hex()}... ({len(data)} bytes in all)"


def run(seed: int, cases: int, max_reports: int, verbose_case: int | None = None) -> Tally:
    """Run ``cases`` cases of ``seed`` (or only ``verbose_case``) and count what happened."""
    tally = Tally()
    indices = range(cases) if verbose_case is None else [verbose_case]
    for i in indices:
        case, mode, cuts = generate(seed, i)
        tally.cases += 1
        tally.kinds[case.kind] += 1
        tally.modes[mode] += 1
        tally.bytes_fed += len(case.data)
        try:
            result = run_case(case, mode, cuts)
        except Bug as exc:
            tally.bugs += 1
            tally.outcomes["bug"] += 1
            tally.bug_reasons[" ".join(_NUMBER_RE.sub("N", str(exc)).split()[:6])] += 1
            if tally.bugs <= max_reports or verbose_case is not None:
                print(
                    f"BUG in case {i} (seed {seed}, kind {case.kind}, fed {mode}): {exc}\n"
                    f"  input hex: {_hex(case.data)}\n"
                    f"  replay:    python scripts/fuzz.py --seed {seed} --case {i}",
                    file=sys.stderr,
                )
                if verbose_case is not None and exc.__cause__ is not None:
                    traceback.print_exception(exc.__cause__, file=sys.stderr)
            continue
        tally.messages += len(result.messages)
        tally.exact_verified += case.exact
        if result.error is not None:
            tally.outcomes["protocol_error"] += 1
            tally.codes[result.error.code] += 1
            tally.reasons[reason_of(result.error)] += 1
        elif result.messages:
            tally.outcomes["messages"] += 1
        else:
            tally.outcomes["incomplete"] += 1
        accepted = result.bodies[: _accepted_bodies(result)]
        for body in accepted:
            why = spec_deviation(body)
            if why is not None:
                tally.deviations[why] += 1
                tally.deviation_examples.setdefault(why, f"case {i}: {_hex(body, 160)}")
        if verbose_case is not None:
            print(
                f"case {i}: kind {case.kind}, fed {mode} {cuts}, {len(case.data)} bytes\n"
                f"  input hex: {_hex(case.data, 4096)}\n"
                f"  messages:  {result.messages}\n"
                f"  error:     {result.error!r}"
            )
    return tally


def _accepted_bodies(result: Result) -> int:
    # Messages come out one per body, in order, until the first refused body.
    return len(result.messages)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the fuzz cases and report; the exit status."""
    parser = argparse.ArgumentParser(
        description="Fuzz p2pchat's frame decoder with seeded random inputs "
        "(or, with --live, a running node with mutated signed frames).",
        epilog="Exit status: 0 if no bug was found, 1 otherwise.",
    )
    parser.add_argument("--cases", type=int, default=100_000, help="inputs to try (100000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--case", type=int, help="replay only this case index, verbosely")
    parser.add_argument(
        "--max-reports", type=int, default=5, help="bugs to print in full (5; all are counted)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="spec deviations fail the run too (exit 1)"
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="mutate valid signed frames against a live node (127.0.0.1) while an honest "
        "node chats through it, instead of fuzzing the decoder alone",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=20,
        help="with --live: the target's history window, in lines (20: small, so that "
        "attacks on the window show within a run)",
    )
    args = parser.parse_args(argv)
    if args.cases < 0:
        parser.error("--cases must be >= 0")
    if args.live:
        if args.case is not None or args.strict:
            parser.error("--case and --strict are for the decoder fuzz, not --live")
        if args.window < 1:
            parser.error("--window must be >= 1")
        live = run_live(args.seed, args.cases, args.window, progress=not args.json)
        print_live(args.seed, live, args.json)
        return 1 if live_failed(live) else 0

    start = time.perf_counter()
    tally = run(args.seed, args.cases, args.max_reports, verbose_case=args.case)
    seconds = time.perf_counter() - start
    rate = tally.cases / seconds if seconds > 0 else 0.0
    failed = tally.bugs > 0 or (args.strict and sum(tally.deviations.values()) > 0)

    if args.json:
        print(
            json.dumps(
                {
                    "seed": args.seed,
                    "cases": tally.cases,
                    "seconds": round(seconds, 2),
                    "cases_per_s": round(rate),
                    "bytes_fed": tally.bytes_fed,
                    "messages_decoded": tally.messages,
                    "valid_inputs_verified": tally.exact_verified,
                    "outcomes": dict(tally.outcomes),
                    "kinds": dict(tally.kinds),
                    "feed_modes": dict(tally.modes),
                    "error_codes": dict(tally.codes.most_common()),
                    "error_reasons": dict(tally.reasons.most_common()),
                    "bugs": tally.bugs,
                    "bug_reasons": dict(tally.bug_reasons.most_common()),
                    "spec_deviations": dict(tally.deviations),
                    "spec_deviation_examples": tally.deviation_examples,
                    "ok": not failed,
                },
                ensure_ascii=False,
            )
        )
        return 1 if failed else 0

    print(
        f"{tally.cases} cases (seed {args.seed}) in {seconds:.1f} s: {rate:,.0f} cases/s, "
        f"{tally.bytes_fed:,} bytes fed, {tally.messages:,} messages decoded"
    )
    print(
        f"valid inputs decoded back to exactly their messages: {tally.exact_verified} "
        "(every decoded message also re-encoded and decoded again)"
    )
    print("outcomes:    " + ", ".join(f"{k} {v}" for k, v in tally.outcomes.most_common()))
    print("kinds:       " + ", ".join(f"{k} {v}" for k, v in tally.kinds.most_common()))
    print("fed:         " + ", ".join(f"{k} {v}" for k, v in tally.modes.most_common()))
    print("error codes: " + ", ".join(f"{k} {v}" for k, v in tally.codes.most_common()))
    print("error reasons:")
    for reason, n in tally.reasons.most_common(25):
        print(f"  {n:7d}  {reason}")
    if len(tally.reasons) > 25:
        print(f"  ... and {len(tally.reasons) - 25} more")
    if tally.deviations:
        print("spec deviations (accepted, but docs/protocol.md section 6 says refuse):")
        for why, n in tally.deviations.most_common():
            print(f"  {n:7d}  {why}   e.g. {tally.deviation_examples[why]}")
    print(f"bugs: {tally.bugs}" + ("" if not failed else "  -> FAILED"))
    for why, n in tally.bug_reasons.most_common():
        print(f"  {n:7d}  {why}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
