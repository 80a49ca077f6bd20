"""The contract: ``docs/vectors.json`` and ``docs/protocol.md`` section 5 and
appendix A agree with the reference code (``p2pchat.wire``, ``identity``,
``history``), so that a node written from the document alone talks to ours.

* every flooded vector: the reference's signed bytes of the decoded body are
  the vector's (the message's JSON text, as in protocol version 1), signing
  them with the fixed seed gives the vector's signature (Ed25519 is
  deterministic), the signature checks, the body (MessagePack) decodes to
  the vector's fields and encodes back to the vector's frame;
* the proof, the direct message's sealing, the ``sync`` digest;
* section 5's field tables list, for every one of the 16 types, exactly the
  reference's fields, in the reference's order, with its defaults, whether
  required, and types (JSON for ``hello`` and ``refuse``, MessagePack for
  the others, ``bin`` with its length for ids, keys and signatures); the
  flooded ones with positions 1, 2, 3, ...;
* the document's complete examples decode (JSON, and MessagePack arrays
  written in diagnostic notation);
* ``scripts/make_vectors.py`` writes the file and appendix A as they are.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pchat import history, identity, wire
from p2pchat.identity import Identity

ROOT = Path(__file__).resolve().parent.parent
VECTORS_PATH = ROOT / "docs" / "vectors.json"
PROTOCOL_PATH = ROOT / "docs" / "protocol.md"
SCRIPT = ROOT / "scripts" / "make_vectors.py"

VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
FLOODED = VECTORS["flooded"]
LINK_LOCAL = {v["name"]: v for v in VECTORS["link_local"]}
DOC = PROTOCOL_PATH.read_text(encoding="utf-8")

TYPES: dict[str, type[msgspec.Struct]] = {
    "hello": wire.Hello,
    "refuse": wire.Refuse,
    "proof": wire.Proof,
    "keepalive": wire.Keepalive,
    "ihave": wire.IHave,
    "graft": wire.Graft,
    "prune": wire.Prune,
    "sync": wire.Sync,
    "lines": wire.Lines,
    "ack": wire.Ack,
    "chat": wire.Chat,
    "join": wire.Join,
    "leave": wire.Leave,
    "nick": wire.Nick,
    "presence": wire.Presence,
    "direct": wire.Direct,
}
FLOODED_TYPES = ("chat", "join", "leave", "nick", "presence", "direct")


def identity_of(seed_hex: str) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex)))


ALICE = identity_of(VECTORS["signers"]["alice"]["seed"])
BOB = identity_of(VECTORS["signers"]["bob"]["seed"])


# -- the vectors against the code ---------------------------------------------


def test_every_type_has_a_vector() -> None:
    flooded = {v["type"] for v in FLOODED}
    assert flooded == set(FLOODED_TYPES)
    assert {v["type"] for v in VECTORS["link_local"]} | flooded == set(TYPES)


@pytest.mark.parametrize("name", ["alice", "bob"])
def test_signer_keys_come_from_their_seeds(name: str) -> None:
    facts = VECTORS["signers"][name]
    ident = identity_of(facts["seed"])
    assert ident.key == facts["key"]
    assert identity.fingerprint(ident.key) == facts["fingerprint"]
    assert ident.node_id == facts["node_id"] == facts["fingerprint"][:16]
    assert ident.dh == facts["dh"]


def body_of(vec: dict[str, Any]) -> bytes:
    """A vector's frame body; its ``body`` text or ``array`` say the same."""
    body = bytes.fromhex(vec["body_hex"])
    assert bytes.fromhex(vec["frame_hex"]) == len(body).to_bytes(4, "big") + body
    if "body" in vec:
        assert vec["body"].encode("utf-8") == body
    else:
        assert from_diagnostic(vec["array"]) == msgspec.msgpack.decode(body)
    return body


def from_diagnostic(value: Any) -> Any:
    """The file's ``array`` back to MessagePack values: ``{"bin": hex}`` is bin."""
    if isinstance(value, dict):
        return bytes.fromhex(value["bin"])
    if isinstance(value, list):
        return [from_diagnostic(v) for v in value]
    return value


@pytest.mark.parametrize("vec", FLOODED, ids=[v["name"] for v in FLOODED])
def test_flooded_vector_matches_the_reference(vec: dict[str, Any]) -> None:
    signed = bytes.fromhex(vec["signed_hex"])
    assert vec["signed_text"].encode("utf-8") == signed
    msg = wire.decode_body(body_of(vec))
    assert isinstance(msg, wire.Flooded)
    assert wire.kind(msg) == vec["type"]
    assert msgspec.to_builtins(msg) == vec["fields"]
    assert list(vec["fields"]) == ["type", *type(msg).__struct_fields__]
    assert wire.signing_bytes(msg) == signed
    assert msg.key == ALICE.key and msg.origin == ALICE.node_id
    assert ALICE.sign(signed) == vec["sig"] == msg.sig
    assert identity.verify(msg.key, msg.sig, signed)
    frame = bytes.fromhex(vec["frame_hex"])
    assert wire.FrameDecoder().feed(frame) == [msg]
    if vec["name"] != "presence_defaults":  # its body is a minimal sender's, not ours
        assert wire.encode_body(msg) == body_of(vec)
        assert wire.encode_frame(msg) == frame
    # The signed bytes are the message's JSON text with hops 0 and no signature.
    bare = msgspec.structs.replace(msg, hops=0, sig="")
    assert wire.encode_json(bare) == signed
    assert json.loads(signed) == {**vec["fields"], "hops": 0, "sig": ""}


def test_a_changed_field_breaks_the_signature() -> None:
    vec = next(v for v in FLOODED if v["name"] == "presence")
    msg = wire.decode_body(body_of(vec))
    assert isinstance(msg, wire.Presence)
    for changed in (
        msgspec.structs.replace(msg, every=7.0),
        msgspec.structs.replace(msg, dh=""),
        msgspec.structs.replace(msg, port=7421),
    ):
        assert not identity.verify(msg.key, msg.sig, wire.signing_bytes(changed))
    # ... but hops is not signed: relays lower it.
    relayed = msgspec.structs.replace(msg, hops=3)
    assert identity.verify(msg.key, msg.sig, wire.signing_bytes(relayed))


def test_the_signature_does_not_depend_on_how_the_body_was_written() -> None:
    """An integer ts, optional fields left out, elements after the known
    ones, another hops, or the message as a version-1 JSON object (as the
    store keeps it) do not change the signed bytes: they come from the
    decoded values."""
    vec = next(v for v in FLOODED if v["name"] == "join")
    array = msgspec.msgpack.decode(body_of(vec))
    array[6] = int(array[6])  # ts
    array[7] = 3  # hops
    msg = wire.decode_body(msgspec.msgpack.encode([*array, {"future": [1, 2]}, b"x"]))
    assert isinstance(msg, wire.Join)
    assert wire.signing_bytes(msg) == bytes.fromhex(vec["signed_hex"])
    assert identity.verify(msg.key, msg.sig, wire.signing_bytes(msg))
    fields = dict(reversed(list(vec["fields"].items())))  # type last, dh first
    fields["ts"] = int(fields["ts"])
    text = json.dumps(fields, ensure_ascii=True, indent=1).replace('"alice"', '"\\u0061lice"')
    stored = wire.decode_json(text.encode())
    assert isinstance(stored, wire.Join)
    assert wire.signing_bytes(stored) == bytes.fromhex(vec["signed_hex"])


def test_proof_vector() -> None:
    vec = LINK_LOCAL["proof"]
    data = wire.proof_bytes(vec["nonce"], vec["prover"], vec["verifier"], vec["room"])
    assert data == vec["signed_text"].encode() == bytes.fromhex(vec["signed_hex"])
    assert vec["prover"] == ALICE.node_id and vec["verifier"] == BOB.node_id
    assert vec["nonce"] == LINK_LOCAL["hello_bob"]["fields"]["nonce"]
    assert ALICE.sign(data) == vec["sig"]
    assert identity.verify(ALICE.key, vec["sig"], data)
    assert wire.decode_body(body_of(vec)) == wire.Proof(sig=vec["sig"])


def test_direct_vector_opens_for_the_recipient_only() -> None:
    vec = next(v for v in FLOODED if v["type"] == "direct")
    msg = wire.decode_body(body_of(vec))
    assert isinstance(msg, wire.Direct)
    sealed = vec["sealed"]
    assert msg.to == BOB.node_id and sealed["recipient_dh"] == BOB.dh
    aad = f"{msg.id}:{msg.origin}:{msg.to}".encode()
    assert sealed["aad"].encode() == aad
    plaintext = bytes.fromhex(sealed["plaintext_hex"])
    assert plaintext == bytes([int(sealed["action"])]) + sealed["text"].encode()
    assert BOB.open(msg.eph, msg.box, aad) == plaintext
    assert ALICE.open(msg.eph, msg.box, aad) is None


def test_sync_vector_digest() -> None:
    vec = LINK_LOCAL["sync"]
    msg = wire.decode_body(body_of(vec))
    assert isinstance(msg, wire.Sync)
    (have,) = msg.have
    assert have.digest == vec["digest"] == history.run_digest(vec["line_ids"])
    lines = wire.decode_body(body_of(LINK_LOCAL["lines"]))
    assert isinstance(lines, wire.Lines)
    assert [c.id for c in lines.lines] == vec["line_ids"]
    assert [c.line for c in lines.lines] == list(range(have.lo, have.hi + 1))
    assert lines.lines[-1].hlc == have.hi_hlc
    for line in lines.lines:
        assert identity.verify(line.key, line.sig, wire.signing_bytes(line))


@pytest.mark.parametrize("name", list(LINK_LOCAL))
def test_link_local_vector_matches_the_reference(name: str) -> None:
    vec = LINK_LOCAL[name]
    msg = wire.decode_body(body_of(vec))
    assert wire.kind(msg) == vec["type"]
    assert msgspec.to_builtins(msg) == vec["fields"]
    assert wire.encode_frame(msg).hex() == vec["frame_hex"]


def test_the_hellos_carry_the_key_of_their_node_id() -> None:
    for name, ident in (("hello", ALICE), ("hello_bob", BOB)):
        fields = LINK_LOCAL[name]["fields"]
        assert fields["key"] == ident.key
        assert fields["node"] == identity.node_id_of(fields["key"])


# -- the document's tables against the code -----------------------------------


def doc_sections() -> dict[str, list[list[str]]]:
    """The rows of the field tables of section 5, by message type (headings
    ``### 5.N `type```), plus ``common`` (5.4) and ``have`` (the ``sync``
    entry table, headed ``Index``): each row's cells, stripped."""
    start = DOC.index("## 5. Message reference")
    end = DOC.index("## 6. Error handling")
    out: dict[str, list[list[str]]] = {}
    current: str | None = None
    for line in DOC[start:end].splitlines():
        heading = re.match(r"^###\s+5\.\d+\s+(.*)$", line)
        if heading:
            title = heading.group(1)
            found = re.match(r"^`(\w+)`", title)
            current = found.group(1) if found else ("common" if "Common" in title else None)
            continue
        if current is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("Pos", "Field", "Index"):
            if cells[0] == "Index":
                current = "have"
            continue
        if set(cells[0]) <= set("-"):
            continue
        out.setdefault(current, []).append(cells)
    return out


SECTIONS = doc_sections()


def doc_rows(kind: str) -> list[tuple[int | None, str, list[str]]]:
    """``(position, field, the other cells)`` of one type's table, common
    fields included for flooded types (position None for link-local)."""
    rows: list[tuple[int | None, str, list[str]]] = []
    for cells in SECTIONS.get(kind, []):
        if cells[1] == "*common*":
            rows += doc_rows("common")
            continue
        if kind in (*FLOODED_TYPES, "common", "have"):
            rows.append((int(cells[0]), cells[1].strip("`"), cells[2:]))
        else:
            rows.append((None, cells[0].strip("`"), cells[1:]))
    return rows


def expected_fields(cls: type[msgspec.Struct], tagged: bool = True) -> list[tuple[str, Any]]:
    """``(field, default)`` of a wire struct in encoding order, ``type``
    first; the default is :data:`msgspec.NODEFAULT` for required fields."""
    names = cls.__struct_fields__
    defaults = cls.__struct_defaults__
    out: list[tuple[str, Any]] = [("type", msgspec.NODEFAULT)] if tagged else []
    first_default = len(names) - len(defaults)
    for i, name in enumerate(names):
        default: Any = msgspec.NODEFAULT
        if i >= first_default:
            default = defaults[i - first_default]
            if isinstance(default, msgspec._core.Factory):
                default = default.factory()
        out.append((name, default))
    return out


JSON_TYPES = {
    msgspec.inspect.StrType: "string",
    msgspec.inspect.IntType: "integer",
    msgspec.inspect.FloatType: "number",
    msgspec.inspect.BoolType: "boolean",
    msgspec.inspect.ListType: "array",
    msgspec.inspect.LiteralType: "string",
}
MSGPACK_TYPES = {
    msgspec.inspect.StrType: "str",
    msgspec.inspect.IntType: "int",
    msgspec.inspect.FloatType: "float 64",
    msgspec.inspect.BoolType: "bool",
    msgspec.inspect.ListType: "array",
    msgspec.inspect.UnionType: "array or nil",  # chat.offer: a FileOffer array, or nil
}
JSON_KINDS = ("hello", "refuse")


def bin_sizes(cls: type[msgspec.Struct]) -> dict[str, str]:
    """The fields of ``cls`` that travel as bin (or arrays of bin), each
    with its size as the tables write it: ``16 bytes``, ``0 or 32 bytes``,
    ``0..8064 bytes``."""
    out: dict[str, str] = {}
    for f in msgspec.structs.fields(cls):
        annotation = f.type
        if typing.get_origin(getattr(annotation, "__origin__", annotation)) is list:
            annotation = typing.get_args(annotation.__origin__)[0]
        found = wire.hex_bytes(annotation)
        if found is not None:
            kind, n = found
            out[f.name] = [f"{n} bytes", f"0 or {n} bytes", f"0..{n} bytes"][kind]
    return out


def doc_types(kind: str, cls: type[msgspec.Struct]) -> dict[str, str]:
    """What the tables write in the type column of each field."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    if kind in JSON_KINDS:
        return {f.name: JSON_TYPES[type(f.type)] for f in info.fields}
    out = {f.name: MSGPACK_TYPES[type(f.type)] for f in info.fields}
    for name in bin_sizes(cls):
        out[name] = "array of bin" if out[name] == "array" else "bin"
    return out


@pytest.mark.parametrize("kind", list(TYPES))
def test_doc_table_lists_the_reference_fields_in_order(kind: str) -> None:
    cls = TYPES[kind]
    rows = doc_rows(kind)
    assert rows, f"docs/protocol.md section 5 has no field table for {kind}"
    expected = expected_fields(cls)
    assert [name for _, name, _ in rows] == [name for name, _ in expected]
    if kind in FLOODED_TYPES:
        assert [pos for pos, _, _ in rows] == list(range(1, len(rows) + 1))
    types = doc_types(kind, cls)
    binary = {} if kind in JSON_KINDS else bin_sizes(cls)
    for (_, name, cells), (_, default) in zip(rows, expected, strict=True):
        doc_type, required, doc_default = cells[0], cells[1], cells[2]
        if name == "type":
            assert doc_type == ("string" if kind in JSON_KINDS else "str") and required == "yes"
            continue
        assert doc_type.startswith(types[name]), (kind, name, doc_type)
        if default is msgspec.NODEFAULT:
            assert required == "yes" and doc_default == "—", (kind, name)
        else:
            assert required.startswith("no"), (kind, name, required)
            want = "empty" if name in binary else f"`{msgspec.json.encode(default).decode()}`"
            assert doc_default == want, (kind, name)


def test_doc_table_of_a_file_offer() -> None:
    """Section 5.19 lists ``wire.FileOffer``'s elements in order, the two
    hashes as bin of 32 bytes."""
    text = DOC[DOC.index("### 5.19 File offers") : DOC.index("## 6. Error handling")]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| `")
    ]
    assert [r[0].strip("`") for r in rows] == list(wire.FileOffer.__struct_fields__)
    types = {r[0].strip("`"): r[1] for r in rows}
    assert types == {"file": "bin", "fname": "str", "size": "int", "chunk": "int", "root": "bin"}
    assert bin_sizes(wire.FileOffer) == {"file": "32 bytes", "root": "32 bytes"}
    assert all(r[2].startswith("32 bytes") for r in rows if r[1] == "bin")


def test_doc_table_of_a_sync_entry() -> None:
    rows = doc_rows("have")
    expected = expected_fields(wire.Have, tagged=False)
    assert [(pos, name) for pos, name, _ in rows] == [
        (i, name) for i, (name, _) in enumerate(expected)
    ]
    binary = bin_sizes(wire.Have)
    for (_, name, cells), (_, default) in zip(rows, expected, strict=True):
        if default is msgspec.NODEFAULT:
            assert cells[1] == "yes", name
        else:
            want = "empty" if name in binary else f"`{msgspec.json.encode(default).decode()}`"
            assert cells[2] == want, name


def test_doc_patterns_are_the_reference_patterns() -> None:
    """Every string pattern the reference checks is written, as is, in the
    field's row of the document; for a field that travels as bin, its size."""
    kinds: list[tuple[str, type[msgspec.Struct]]] = [*TYPES.items(), ("have", wire.Have)]
    for kind, cls in kinds:
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        cells = {name: " | ".join(rest) for _, name, rest in doc_rows(kind)}
        binary = {} if kind in JSON_KINDS else bin_sizes(cls)
        for f in info.fields:
            if f.name in binary:
                assert binary[f.name] in cells[f.name], (kind, f.name, binary[f.name])
                continue
            t = f.type
            if isinstance(t, msgspec.inspect.ListType):
                t = t.item_type
            pattern = getattr(t, "pattern", None)
            if pattern is None or f.name == "addrs":  # addrs: described in words
                continue
            assert f"`{pattern}`" in cells[f.name], (kind, f.name, pattern)


def doc_number(n: float) -> str:
    """A bound as the tables write it: ``2^53``, ``1e11``, ``3600``."""
    if n == 2**53:
        return "2^53"
    return f"{n:g}".replace("e+", "e")


def test_doc_ranges_are_the_reference_ranges() -> None:
    """Every numeric range and length limit the reference checks is written
    in the field's row (``lo..hi``; the largest length as a number)."""
    for kind, cls in TYPES.items():
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        cells = {name: " | ".join(rest).replace(",", "") for _, name, rest in doc_rows(kind)}
        binary = {} if kind in JSON_KINDS else bin_sizes(cls)
        for f in info.fields:
            want: list[str] = []
            t = f.type
            if isinstance(t, msgspec.inspect.ListType):
                want.append(str(t.max_length))
                t = t.item_type
            if isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType):
                if t.ge is not None and t.le is not None:
                    want.append(f"{doc_number(t.ge)}..{doc_number(t.le)}")
            elif (
                isinstance(t, msgspec.inspect.StrType)
                and t.max_length is not None
                and f.name not in binary  # its size in bytes: the pattern test
            ):
                want.append(str(t.max_length))
            for text in want:
                assert text in cells[f.name], (kind, f.name, text, cells[f.name])


def test_doc_complete_examples_decode() -> None:
    """Every one-line example of the document that has no ``…`` in it is a
    valid frame body: the JSON ones as they are, the MessagePack ones
    (``msgpack`` blocks, in diagnostic notation: JSON, with ``h'…'`` for bin)
    once encoded."""
    checked = 0
    for lang, block in re.findall(r"```(json|msgpack)\n(.*?)```", DOC, flags=re.S):
        for line in block.splitlines():
            if not line.startswith(("{", "[")) or "…" in line:
                continue
            if lang == "json":
                body = line.encode("utf-8")
            else:
                text = re.sub(r"h'([0-9a-f]*)'", r'{"bin": "\1"}', line)
                body = msgspec.msgpack.encode(from_diagnostic(json.loads(text)))
            wire.decode_body(body)
            checked += 1
    assert checked >= 8


# -- the files are what the script writes --------------------------------------


def run_script(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=True,
    )
    return done.stdout


def test_vectors_file_is_what_the_script_writes() -> None:
    assert run_script("--stdout") == VECTORS_PATH.read_text(encoding="utf-8")


def test_doc_appendix_is_what_the_script_writes() -> None:
    appendix = run_script("--appendix")
    assert appendix.startswith("## Appendix A.")
    start = DOC.index("## Appendix A.")
    end = DOC.find("\n## ", start + 1)
    assert DOC[start : end if end != -1 else len(DOC)].rstrip("\n") == appendix.rstrip("\n")


def test_doc_appendix_quotes_every_signed_example() -> None:
    for vec in FLOODED:
        assert vec["signed_text"] in DOC and vec["sig"] in DOC, vec["name"]
