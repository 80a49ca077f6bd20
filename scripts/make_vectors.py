#!/usr/bin/env python3
"""Write ``docs/vectors.json``: worked examples of the wire protocol, made
with fixed keys, for anyone who writes a p2pchat node from
``docs/protocol.md`` (appendix A describes the file).

Everything in the file is deterministic: the keys come from fixed seeds,
ids and clocks are fixed, Ed25519 signatures are deterministic (RFC 8032)
and the one-time key of the direct message has a fixed seed too.  So the
file is the same on every run, and ``tests/test_vectors.py`` checks that
this script still writes it byte for byte, and that the reference code
(``p2pchat.wire``, ``p2pchat.identity``, ``p2pchat.history``) agrees with
every value in it.

Usage::

    python scripts/make_vectors.py            # rewrite docs/vectors.json
    python scripts/make_vectors.py --stdout   # print it instead
    python scripts/make_vectors.py --appendix # print Appendix A of docs/protocol.md
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pchat import history, identity, wire
from p2pchat.files.manifest import hash_file
from p2pchat.identity import Identity

OUT = Path(__file__).resolve().parent.parent / "docs" / "vectors.json"

ALICE_SEED = bytes(range(0, 32))
"""Ed25519 seed (private key) of the signer of every vector: bytes 0..31."""
BOB_SEED = bytes(range(32, 64))
"""The peer: verifier of the proof, recipient of the direct message."""
EPH_SEED = bytes(range(64, 96))
"""The one-time X25519 private key of the direct message."""

BY_TYPE: dict[str, type[msgspec.Struct]] = {
    c.__struct_config__.tag: c  # type: ignore[misc]
    for c in (*wire.JSON_KINDS, *wire.BINARY_KINDS)
}
"""Every message type by its tag."""

ROOM = "lobby"
ALICE_NONCE = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
BOB_NONCE = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"


def identity_of(seed: bytes) -> Identity:
    """The node identity of a fixed 32-byte Ed25519 seed."""
    return Identity(Ed25519PrivateKey.from_private_bytes(seed))


def signer(seed: bytes, ident: Identity, name: str) -> dict[str, Any]:
    """The public facts of one fixed identity, for the file."""
    return {
        "name": name,
        "seed": seed.hex(),
        "key": ident.key,
        "fingerprint": identity.fingerprint(ident.key),
        "node_id": ident.node_id,
        "dh": ident.dh,
    }


def seal_fixed(recipient_dh: str, plaintext: bytes, aad: bytes) -> tuple[str, str]:
    """``identity.seal`` with the fixed one-time key :data:`EPH_SEED`
    (docs/protocol.md §7.4), so that the direct vector is reproducible."""
    eph_private = X25519PrivateKey.from_private_bytes(EPH_SEED)
    eph = eph_private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    recipient = bytes.fromhex(recipient_dh)
    shared = eph_private.exchange(X25519PublicKey.from_public_bytes(recipient))
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=eph + recipient, info=b"p2pchat direct v1"
    ).derive(shared)
    return eph.hex(), ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, aad).hex()


def body_fields(body: bytes) -> dict[str, Any]:
    """How the file shows a frame body: ``body`` (the text) for a JSON
    body, ``array`` (the MessagePack array, bin as ``{"bin": hex}``) for a
    MessagePack one; ``body_hex`` and ``frame_hex`` for both."""
    out: dict[str, Any] = {}
    if body[:1] == b"{":
        out["body"] = body.decode("utf-8")
    else:
        out["array"] = diagnostic(msgspec.msgpack.decode(body))
    out["body_hex"] = body.hex()
    out["frame_hex"] = (wire.HEADER.pack(len(body)) + body).hex()
    return out


def diagnostic(value: Any) -> Any:
    """A decoded MessagePack value as JSON can show it: bin as ``{"bin": hex}``."""
    if isinstance(value, bytes):
        return {"bin": value.hex()}
    if isinstance(value, list):
        return [diagnostic(v) for v in value]
    return value


def signed_vector(label: str, msg: wire.FloodMessage, ident: Identity, note: str) -> dict[str, Any]:
    """One flooded message, signed by ``ident``, as the file shows it."""
    msg = msgspec.structs.replace(msg, key=ident.key, sig="")
    data = wire.signing_bytes(msg)
    msg = msgspec.structs.replace(msg, sig=ident.sign(data))
    return {
        "name": label,
        "type": wire.kind(msg),
        "note": note,
        "fields": msgspec.to_builtins(msg),
        "signed_text": data.decode("utf-8"),
        "signed_hex": data.hex(),
        "sig": msg.sig,
        **body_fields(wire.encode_body(msg)),
    }


def frame_vector(label: str, msg: wire.Message, note: str) -> dict[str, Any]:
    """One link-local frame, as the file shows it."""
    return {
        "name": label,
        "type": wire.kind(msg),
        "note": note,
        "fields": msgspec.to_builtins(msg),
        **body_fields(wire.encode_body(msg)),
    }


def build() -> dict[str, Any]:
    """The whole file's content (a JSON object)."""
    alice, bob = identity_of(ALICE_SEED), identity_of(BOB_SEED)

    def env(msg_id: str, seq: int, ts: float, name: str = "alice") -> dict[str, Any]:
        return {
            "id": msg_id,
            "origin": alice.node_id,
            "seq": seq,
            "name": name,
            "room": ROOM,
            "ts": ts,
            "hops": wire.DEFAULT_HOP_LIMIT,
        }

    flooded: list[dict[str, Any]] = []
    flooded.append(
        signed_vector(
            "join",
            wire.Join(dh=alice.dh, **env("10000000000000000000000000000001", 1, 1732245100.0)),
            alice,
            "A whole `ts` is signed as `1732245100.0`, never `1732245100`; `dh` is signed.",
        )
    )
    flooded.append(
        signed_vector(
            "presence",
            wire.Presence(
                addrs=["192.168.1.20"],
                port=7420,
                dh=alice.dh,
                every=6.0,
                gone=[wire.Lost(node="0123456789abcdef", seq=41)],
                away="at lunch ☕",
                **env("10000000000000000000000000000002", 2, 1732245100.25),
            ),
            alice,
            "`addrs`, `port`, `dh`, `every`, `gone`, `away`, in that order after the common "
            "fields; `every` is a float; each `gone` entry is an array `[node, seq]`.",
        )
    )
    chats = [
        wire.Chat(
            text=text,
            action=action,
            line=n,
            hlc=hlc,
            **env(msg_id, seq, ts),
        )
        for n, (msg_id, seq, ts, hlc, text, action) in enumerate(
            [
                (
                    "10000000000000000000000000000003",
                    3,
                    1732245123.457,
                    1732245123457000,
                    'say "hi"\tto wörld 👋',
                    False,
                ),
                (
                    "10000000000000000000000000000004",
                    4,
                    1732245124.5,
                    1732245124500000,
                    "waves",
                    True,
                ),
                (
                    "10000000000000000000000000000005",
                    5,
                    1732245125.0,
                    1732245125000000,
                    "bye",
                    False,
                ),
            ],
            start=1,
        )
    ]
    flooded.append(
        signed_vector(
            "chat",
            chats[0],
            alice,
            "Strings escape the quote, the backslash and TAB (`\\t`), and are written "
            "as raw UTF-8 otherwise.",
        )
    )
    flooded.append(
        signed_vector(
            "chat_topic",
            wire.Chat(
                text="release on friday",
                line=len(chats) + 1,
                hlc=1732245600000000,
                topic=True,
                **env("1000000000000000000000000000000a", 10, 1732245600.0, "alicja"),
            ),
            alice,
            "A room topic: a numbered line with `topic` true (never with `action`); "
            '`text` `""` would clear the topic.',
        )
    )
    report = bytes(range(256)) * 9375  # a made-up file of 2,400,000 bytes
    manifest, _ = hash_file(io.BytesIO(report), 1 << 18)  # fixed: vectors outlive defaults
    flooded.append(
        signed_vector(
            "chat_offer",
            wire.Chat(
                text="",
                line=len(chats) + 2,
                hlc=1732245700000000,
                offer=wire.FileOffer(
                    file=manifest.file_id.hex(),
                    fname="report.pdf",
                    size=manifest.size,
                    chunk=manifest.chunk_size,
                    root=manifest.root.hex(),
                ),
                **env("1000000000000000000000000000000b", 11, 1732245700.0, "alicja"),
            ),
            alice,
            'A file offered to the room: a numbered line with `text` `""` and `offer` '
            "`[file, fname, size, chunk, root]` (a file of 2,400,000 bytes, the bytes 0..255 "
            "repeated, in chunks of 262,144 bytes: 10 chunks); `file` is the id of `size`, "
            "`chunk` and `root`.",
        )
    )
    flooded.append(
        signed_vector(
            "nick",
            wire.Nick(
                old="alice", **env("10000000000000000000000000000006", 6, 1732245200.5, "alicja")
            ),
            alice,
            "`name` is the new name, `old` the previous one.",
        )
    )
    direct_id = "10000000000000000000000000000007"
    plaintext = b"\x00" + b"psst, bob"
    aad = f"{direct_id}:{alice.node_id}:{bob.node_id}".encode()
    eph, box = seal_fixed(bob.dh, plaintext, aad)
    direct = signed_vector(
        "direct",
        wire.Direct(
            to=bob.node_id,
            eph=eph,
            box=box,
            **env(direct_id, 7, 1732245300.125, "alicja"),
        ),
        alice,
        "Sealed to bob's `dh` with a one-time key of fixed seed (section 7.4).",
    )
    direct["sealed"] = {
        "recipient_dh": bob.dh,
        "eph_seed": EPH_SEED.hex(),
        "plaintext_hex": plaintext.hex(),
        "action": False,
        "text": "psst, bob",
        "aad": aad.decode(),
    }
    flooded.append(direct)
    flooded.append(
        signed_vector(
            "leave",
            wire.Leave(
                reason="quit", **env("10000000000000000000000000000008", 8, 1732245400.75, "alicja")
            ),
            alice,
            "`reason` is signed.",
        )
    )
    # A presence as a minimal sender may write it: optional fields left out.
    # They are signed with their defaults all the same.
    minimal = signed_vector(
        "presence_defaults",
        wire.Presence(**env("10000000000000000000000000000009", 9, 1732245500.0, "alicja")),
        alice,
        "Optional fields left out of the body are still signed, with their defaults "
        '(`addrs` `[]`, `port` `0`, `dh` `""`, `every` `0.0`, `gone` `[]`, '
        '`away` `""`); '
        "the body's integer `ts` is signed as a float.",
    )
    # The array stops after sig, and ts is an integer: decoded as 1732245500.0.
    full = msgspec.msgpack.decode(bytes.fromhex(minimal["body_hex"]))
    short = [*full[: 1 + len(wire.Flooded.__struct_fields__)]]
    short[1 + wire.Flooded.__struct_fields__.index("ts")] = int(minimal["fields"]["ts"])
    minimal.update(body_fields(msgspec.msgpack.encode(short)))
    flooded.append(minimal)

    proof_data = wire.proof_bytes(BOB_NONCE, alice.node_id, bob.node_id, ROOM)
    proof = wire.Proof(sig=alice.sign(proof_data))
    proof_vec = frame_vector(
        "proof",
        proof,
        "alice proves her key to bob: she signs bob's hello nonce, her id, his id and the room.",
    )
    proof_vec.update(
        {
            "nonce": BOB_NONCE,
            "prover": alice.node_id,
            "verifier": bob.node_id,
            "room": ROOM,
            "signed_text": proof_data.decode(),
            "signed_hex": proof_data.hex(),
            "sig": proof.sig,
        }
    )

    line_ids = [c.id for c in chats]
    have = wire.Have(
        origin=alice.node_id,
        lo=1,
        hi=3,
        hi_hlc=chats[-1].hlc,
        digest=history.run_digest(line_ids),
    )
    sync_vec = frame_vector(
        "sync",
        wire.Sync(room=ROOM, since=1731640323457000, have=[have]),
        "One have entry [origin, lo, hi, hi_hlc, digest]; digest = the first 16 hex digits "
        "of SHA-256 of the ids of lines lo..hi concatenated.",
    )
    sync_vec["line_ids"] = line_ids
    sync_vec["digest"] = have.digest

    def signed_chat(c: wire.Chat) -> wire.Chat:
        c = msgspec.structs.replace(c, key=alice.key, sig="")
        return msgspec.structs.replace(c, sig=alice.sign(wire.signing_bytes(c)))

    hello_common: dict[str, Any] = {"version": wire.PROTOCOL_VERSION, "room": ROOM, "port": 7420}
    link_local = [
        frame_vector(
            "hello",
            wire.Hello(
                node=alice.node_id,
                name="alice",
                features=["history", "tree"],
                nonce=ALICE_NONCE,
                key=alice.key,
                **hello_common,
            ),
            "alice's hello; node is the first 16 hex digits of SHA-256 of key.",
        ),
        frame_vector(
            "hello_bob",
            wire.Hello(
                node=bob.node_id,
                name="bob",
                features=["history", "tree"],
                nonce=BOB_NONCE,
                key=bob.key,
                **hello_common,
            ),
            "bob's hello: its nonce is the one alice's proof signs.",
        ),
        proof_vec,
        frame_vector(
            "refuse",
            wire.Refuse(code="room", reason="this node is in room 'games', not 'lobby'"),
            "",
        ),
        frame_vector("keepalive", wire.Keepalive(), ""),
        frame_vector("ihave", wire.IHave(ids=[chats[0].id], hops=[15]), ""),
        frame_vector("graft", wire.Graft(ids=[chats[0].id]), ""),
        frame_vector("prune", wire.Prune(), ""),
        sync_vec,
        frame_vector(
            "lines",
            wire.Lines(batch=1, lines=[signed_chat(c) for c in chats]),
            "Lines 1..3 of the sync entry above, each exactly as signed by its origin.",
        ),
        frame_vector("ack", wire.Ack(batch=1), ""),
    ]
    return {
        "about": (
            "Worked examples of p2pchat wire protocol version 2 (docs/protocol.md, appendix A). "
            "Made by scripts/make_vectors.py; checked against the reference code by "
            "tests/test_vectors.py. Every text field is the exact UTF-8 text of the bytes; "
            "*_hex fields are the same bytes in hex. frame_hex is the 4-byte length prefix "
            "and the body. body is a JSON body's text (hello, refuse); array is a MessagePack "
            'body\'s array, bin shown as {"bin": hex}.'
        ),
        "protocol_version": wire.PROTOCOL_VERSION,
        "signers": {
            "alice": signer(ALICE_SEED, alice, "alice"),
            "bob": signer(BOB_SEED, bob, "bob"),
        },
        "flooded": flooded,
        "link_local": link_local,
    }


APPENDIX_INTRO = """## Appendix A. Test vectors

`docs/vectors.json` holds worked examples of every message type, made with fixed keys by
`scripts/make_vectors.py`. `tests/test_vectors.py` checks each of them against the reference code
(the signed bytes, the signature, the decoded fields, the frame, the digest, the direct message's
sealing), checks that the field tables of section 5 list the reference's fields in its order with
its defaults, and checks that the file, and this appendix, are what the script writes.
`tests/test_outsider.py` is a client written from this document alone: it builds frames and
signed bytes without the reference encoder, and a node accepts them.

The file is one JSON object: `signers` (the two fixed identities), `flooded` (one signed message
per flooded type, and `presence_defaults`, a presence whose array stops after `sig` and has an
integer `ts`) and `link_local` (one frame of every other type). Each entry has `name`, `type`,
`fields` (the decoded values, `type` first, as a JSON object: ids, keys and signatures as hex
strings, as the signed bytes write them), `body_hex` (the frame body) and `frame_hex` (length
prefix and body), and also `body` (a JSON body's text: `hello`, `refuse`) or `array` (a
MessagePack body's array, each bin as `{"bin": "<hex>"}`); a flooded entry also has `signed_text`
and `signed_hex` (the signed bytes, as UTF-8 text and as hex) and `sig`.

**Keys.** Ed25519 private keys are 32-byte seeds (RFC 8032). The public key, its fingerprint
(SHA-256 of the 32 raw bytes), the node id (the fingerprint's first 16 hex digits) and the X25519
key for direct messages (section 7.4) of each:
"""


def diagnostic_text(value: Any) -> str:
    """A MessagePack value in the document's diagnostic notation: JSON, with
    bin written ``h'<hex>'``."""
    if isinstance(value, bytes):
        return f"h'{value.hex()}'"
    if isinstance(value, list):
        return "[" + ", ".join(diagnostic_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def annotated_frame(vec: dict[str, Any]) -> str:
    """A MessagePack frame of the file, byte by byte: each element's bytes
    (hex) beside its field name and value."""
    body = bytes.fromhex(vec["body_hex"])
    array = msgspec.msgpack.decode(body)
    names = ["type", *BY_TYPE[vec["type"]].__struct_fields__]
    pieces = [msgspec.msgpack.encode(v) for v in array]
    head = body[: len(body) - sum(len(p) for p in pieces)]
    assert head + b"".join(pieces) == body
    rows = [
        (f"{len(body):08x}", f"length prefix: {len(body)} bytes"),
        (head.hex(), f"array of {len(array)}"),
    ]
    for name, value, piece in zip(names, array, pieces, strict=True):
        shown = diagnostic_text(value)
        if len(shown) > 24:
            shown = shown[:21] + "…"
        rows.append((piece.hex(), f"{name}: {shown}"))
    out = []
    for hex_text, note in rows:
        spaced = " ".join(hex_text[i : i + 2] for i in range(0, len(hex_text), 2))
        chunks = [spaced[i : i + 48] for i in range(0, len(spaced), 48)] or [""]
        out.append(f"{chunks[0]:<48} {note}")
        out += [chunk.rstrip() for chunk in chunks[1:]]
    return "\n".join(out)


def appendix(data: dict[str, Any]) -> str:
    """Appendix A of docs/protocol.md (Markdown) for the vectors ``data``
    (what :func:`build` returns): the keys, the signed bytes and signature
    of every flooded example, the proof and a ``sync`` entry."""
    alice, bob = data["signers"]["alice"], data["signers"]["bob"]
    out = [APPENDIX_INTRO, "| | alice | bob |", "|---|---|---|"]
    out += [
        f"| {k} | `{alice[k]}` | `{bob[k]}` |"
        for k in ("seed", "key", "fingerprint", "node_id", "dh")
    ]
    out.append(
        "\n**Signed bytes.** alice signs one message of each flooded type. For each, the signed"
        " bytes\n(exactly, as UTF-8 text: the message's JSON text, section 5.18) and the"
        " signature. The frame\ncarries the same values as a MessagePack array (section 3), with"
        " `hops` 16 and the\nsignature in `sig` (`array` and `body_hex` in the file).\n"
    )
    for v in data["flooded"]:
        if v["name"] == "presence_defaults":
            array = msgspec.msgpack.decode(bytes.fromhex(v["body_hex"]))
            out.append(f"*`presence`, optional fields left out.* {v['note']} The body as sent:\n")
            out.append(f"```msgpack\n{diagnostic_text(array)}\n```\n\nIts signed bytes:\n")
        else:
            out.append(f"*`{v['name']}`.* {v['note']}\n")
        out.append(f"```\n{v['signed_text']}\n```\n\n`sig` = `{v['sig']}`\n")
        if "sealed" in v:
            sealed = v["sealed"]
            out.append(
                f"The box: the one-time X25519 private key is `{sealed['eph_seed']}`; the"
                f" plaintext is the flag byte and the text, `{sealed['plaintext_hex']}`"
                f" (`0x00`, then `{sealed['text']}` in UTF-8); the associated data is"
                f" `{sealed['aad']}`. bob opens it with his X25519 key.\n"
            )
    chat = next(v for v in data["flooded"] if v["name"] == "chat")
    out.append(
        "**A whole frame.** The `chat` above as alice sends it (`hops` 16), byte by byte: the"
        " length\nprefix, the array header, then each element (MessagePack, section 3).\n"
    )
    out.append(f"```\n{annotated_frame(chat)}\n```\n")
    link = {v["name"]: v for v in data["link_local"]}
    proof, sync = link["proof"], link["sync"]
    out.append(
        f"**Proof.** alice's proof to bob signs bob's hello nonce `{proof['nonce']}`, her id, his"
        " id and the room, one per line after the label (no final newline):\n"
    )
    out.append(f"```\n{proof['signed_text']}\n```\n\n`sig` = `{proof['sig']}`, sent as:\n")
    proof_array = msgspec.msgpack.decode(bytes.fromhex(proof["body_hex"]))
    out.append(f"```msgpack\n{diagnostic_text(proof_array)}\n```\n")
    ids = ", ".join(f"`{i}`" for i in sync["line_ids"])
    out.append(
        "**A `sync` entry.** alice's lines 1..3 (the `chat` above and two more) have the ids"
        f" {ids}."
        " The digest is the first 16 hex digits of the SHA-256 of the three ids concatenated"
        f" (96 ASCII characters): `{sync['digest']}`.\n"
    )
    sync_array = msgspec.msgpack.decode(bytes.fromhex(sync["body_hex"]))
    out.append(f"```msgpack\n{diagnostic_text(sync_array)}\n```")
    return "\n".join(out) + "\n"


def render() -> str:
    """The file's text: JSON, two-space indent, non-ASCII as is, one final newline."""
    return json.dumps(build(), ensure_ascii=False, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or print) the vectors; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stdout", action="store_true", help="print instead of writing the file")
    parser.add_argument(
        "--appendix", action="store_true", help="print Appendix A of docs/protocol.md instead"
    )
    args = parser.parse_args(argv)
    if args.appendix:
        sys.stdout.write(appendix(build()))
        return 0
    text = render()
    if args.stdout:
        sys.stdout.write(text)
    else:
        OUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
