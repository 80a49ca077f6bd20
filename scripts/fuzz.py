#!/usr/bin/env python3
"""Fuzz the wire frame decoder: a long, seeded run outside the test suite.

Each case is one input byte string, made by a seeded :class:`random.Random`
(case ``i`` of seed ``s`` is always the same input, so any case can be
replayed with ``--seed s --case i``).  The mix:

* ``random``: random bytes, sometimes behind a length prefix that matches;
* ``jsonish``: random JSON-like text behind a matching length prefix;
* ``valid``: one to four valid frames (every message type, random fields);
* ``reformatted``: one valid message written as other valid JSON (key order,
  whitespace, ``\\u`` escapes, unknown keys), which must decode the same;
* ``truncated``: valid frames cut at a random point;
* ``wrong_field``: a valid message with one field replaced by a value of the
  wrong JSON type or out of range (deeply nested arrays included), removed,
  or with an unknown ``type``;
* ``body_mutation``: a valid body with a byte-order mark, trailing bytes, a
  repeated key, or invalid UTF-8 / a lone surrogate in an unknown key;
* ``bad_prefix``: a length prefix of 0 or above ``MAX_FRAME_BYTES``;
* ``edge_size``: a valid message padded to exactly ``MAX_FRAME_BYTES`` (must
  decode) or one byte more (must be refused from its prefix);
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

Separately, inputs the decoder accepts although ``docs/protocol.md`` section 6
says they are protocol errors (invalid UTF-8, a lone surrogate escape) are
counted as *spec deviations*; they are reported, and fail the run only with
``--strict``.

Output: counts per outcome, per input kind, per error code and per error reason
(the first words of the message, numbers replaced by ``N``), and cases per
second.  ``--json`` prints one JSON object instead.  Examples::

    python scripts/fuzz.py                     # 100,000 cases, seed 1
    python scripts/fuzz.py --cases 1000000 --seed 7 --json
    python scripts/fuzz.py --seed 7 --case 4242  # replay one case, verbosely
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import string
import struct
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

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
    addrs = [".".join(str(rng.randint(0, 255)) for _ in range(4)) for _ in range(rng.randint(0, 8))]
    return wire.Presence(addrs=addrs, port=rng.randint(0, 65535), **common)


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


def gen_valid(rng: random.Random) -> Case:
    """One to four valid frames."""
    msgs, data = _valid_frames(rng, rng.randint(1, 4))
    return Case("valid", data, msgs, exact=True, whole=True)


def gen_reformatted(rng: random.Random) -> Case:
    """A valid message written as other valid JSON: must decode the same."""
    msg = random_message(rng)
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


def gen_body_mutation(rng: random.Random) -> Case:
    """A valid body with a BOM, trailing bytes, a repeated key, or bad UTF-8."""
    msg = random_message(rng)
    body = wire.encode_body(msg)
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
    """A message padded with an unknown key to exactly MAX_FRAME_BYTES, or one more."""
    msg = random_message(rng)
    body = wire.encode_body(msg)
    over = rng.random() < 0.5
    target = wire.MAX_FRAME_BYTES + (1 if over else 0)
    pad = target - len(body) - len(b',"pad":""')
    body = body[:-1] + b',"pad":"' + b"p" * pad + b'"}'
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
    (gen_jsonish, 0.06),
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
    """Why ``docs/protocol.md`` section 6 would refuse this accepted body, or None."""
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
        description="Fuzz p2pchat's frame decoder with seeded random inputs.",
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
    args = parser.parse_args(argv)
    if args.cases < 0:
        parser.error("--cases must be >= 0")

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
