"""Tests of the terminal front end, the p2pchat/cli/ package.

* Argument parsing and validation, rendering, and command handling against a
  fake node, all in-process.
* ``python -m p2pchat`` subprocesses in scripted mode (``--json`` and plain
  text), talking to each other over 127.0.0.1.
* An interactive smoke test in a private tmux server (skipped without tmux).

Network safety: every process binds 127.0.0.1 only (``--interface
127.0.0.1``) and uses ``--no-mdns`` or mDNS on 127.0.0.1 with a service type
unique to the test.  Waits are on conditions with deadlines, never bare sleeps;
every process started is killed and reaped at the end of its test.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import RawPeer, unique_room, unique_service_type

from p2pchat import cli, wire
from p2pchat.cli import args, output, render, scripted, session
from p2pchat.discovery import MdnsDiscovery
from p2pchat.errors import LineTooLong, UsageError
from p2pchat.events import (
    AwayEvent,
    Event,
    JoinEvent,
    LeaveEvent,
    LinkInfo,
    MemberInfo,
    MessageEvent,
    NickEvent,
    Notice,
    PeerDown,
    PeerUp,
    Ready,
    Snapshot,
)
from p2pchat.harness import NodeProcess, env_with_path, stop
from p2pchat.node import DEFAULT_PORT, NodeConfig, check_label, check_name

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
WAIT_S = 20.0
PYTHON_M_P2PCHAT = [sys.executable, "-m", "p2pchat"]
NO_MDNS = ["--no-mdns", "--interface", LOOPBACK, "--port", "0"]

# Text that must survive the trip unchanged: Cyrillic, CJK, emoji with a skin
# tone modifier and a ZWJ sequence, a combining accent.
UNICODE_TEXT = "Привет, мир! 你好，世界 🎉👍🏽 👩‍💻 café"  # noqa: RUF001


# -- argument parsing -------------------------------------------------------------------


def test_defaults() -> None:
    opts = args.parse_args(["--name", "alice"])
    assert opts.name == "alice"
    assert opts.room == "lobby"
    assert opts.port == DEFAULT_PORT
    assert opts.port_fallback is True
    assert opts.interfaces == ()
    assert opts.peers == ()
    assert opts.mdns is True
    assert opts.json is False
    assert opts.service_type == "_p2pchat._tcp.local."
    assert opts.log_level == "warning"


def test_explicit_port_means_no_fallback() -> None:
    assert args.parse_args(["--port", str(DEFAULT_PORT)]).port_fallback is False
    opts = args.parse_args(["--port", "0"])
    assert (opts.port, opts.port_fallback) == (0, False)


def test_options() -> None:
    opts = args.parse_args(
        [
            "--name=Борис",
            "--room",
            "dev 🚀",
            "--interface",
            "127.0.0.1",
            "--interface",
            "127.0.0.1",
            "--peer",
            "10.0.0.2",
            "--peer",
            "host.local:7421",
            "--no-mdns",
            "--json",
            "--service-type",
            "_p2pt0a1b2c3d._tcp.local.",
            "--log-level",
            "DEBUG",
        ]
    )
    assert opts.name == "Борис"
    assert opts.room == "dev 🚀"
    assert opts.interfaces == ("127.0.0.1",)  # duplicates dropped
    assert opts.peers == (("10.0.0.2", DEFAULT_PORT), ("host.local", 7421))
    assert opts.mdns is False
    assert opts.json is True
    assert opts.service_type == "_p2pt0a1b2c3d._tcp.local."
    assert opts.log_level == "debug"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.2", ("10.0.0.2", DEFAULT_PORT)),
        ("10.0.0.2:7500", ("10.0.0.2", 7500)),
        ("bob.local", ("bob.local", DEFAULT_PORT)),
        ("bob.local:1", ("bob.local", 1)),
        ("[::1]:7421", ("::1", 7421)),
        ("[fe80::1]", ("fe80::1", DEFAULT_PORT)),
        ("fe80::1", ("fe80::1", DEFAULT_PORT)),
        (" 10.0.0.2:65535 ", ("10.0.0.2", 65535)),
    ],
)
def test_parse_peer(text: str, expected: tuple[str, int]) -> None:
    assert args.parse_peer(text) == expected


@pytest.mark.parametrize(
    "text", ["", ":7420", "host:", "host:0", "host:65536", "host:x", "host:-1", "[::1", "[::1]x"]
)
def test_parse_peer_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        args.parse_peer(text)


@pytest.mark.parametrize(
    "text", ["nope", "10.0.0", "0.0.0.0", "::", "300.1.1.1", "fe80::1", "ff02::fb", "a b"]
)
def test_parse_interface_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        args.parse_interface(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["--name", ""],
        ["--name", " alice"],
        ["--name", "alice "],
        ["--name", "a" * 33],
        ["--name", "al\x07ice"],
        ["--name", "al\u2028ice"],  # a line separator, refused like wire.py
        ["--name", "alice", "--room", "r" * 65],
        ["--name", "alice", "--room", "\tlobby"],
        ["--name", "alice", "--port", "65536"],
        ["--name", "alice", "--port", "seven"],
        ["--name", "alice", "--peer", "h:0"],
        ["--name", "alice", "--interface", "nosuch-if0"],
        ["--name", "alice", "--log-level", "loud"],
        ["--name", "alice", "--service-type", "p2pchat.local"],
        ["--name", "alice", "--bogus"],
        ["--name"],
    ],
)
def test_bad_usage_exits_2_with_one_line(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Safe settings first (the arguments under test override them): should the
    # usage unexpectedly pass, the node binds 127.0.0.1 only and stdin is empty.
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli.main([*NO_MDNS, *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("p2pchat: ")


def test_names_at_the_limits_are_fine() -> None:
    assert args.parse_args(["--name", "a" * 32, "--room", "r" * 48]).name == "a" * 32
    assert args.validate_name("x") == "x"
    assert args.validate_name("👩‍💻dev") == "👩‍💻dev"  # ZWJ sequences are fine (like wire.py)
    # Our own name has no blanks (a front-end rule: /msg NAME and Tab need one word) ...
    for blank in ["bob smith", "bob\u00a0smith", "bob\u3000smith"]:
        with pytest.raises(UsageError, match=r"must not contain blanks.*'bob_smith'"):
            args.validate_name(blank)
    # ... though the wire and the node still take others' names with blanks.
    assert check_name("bob smith") == "bob smith"
    # The CLI refuses exactly what the node (and the wire) refuse.
    for bad in ["", " x", "x\n", "a" * 33, "a\x00b"]:
        with pytest.raises(UsageError):
            check_label(bad, "name", 32)
        with pytest.raises(UsageError):
            args.validate_name(bad)
    # Names only: no '#', nothing invisible (docs/protocol.md section 5).
    for bad in ["alice#2d96", "alice\u200b", "\u202ealice"]:
        with pytest.raises(UsageError):
            args.validate_name(bad)
    assert args.validate_name("jose\u0301") == "jos\u00e9"


def test_scripted_mode_needs_a_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    assert cli.main(["--no-mdns", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "p2pchat: --name is required when stdin is not a terminal\n"


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ["--name", "--room", "--port", "--interface", "--peer", "--no-mdns", "--json"]:
        assert option in out
    assert "--service-type" in out and "--log-level" in out and "exit status" in out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("p2pchat 0.")


# -- rendering --------------------------------------------------------------------------

A_ID = "aaaaaaaaaaaaaaaa"
B_ID = "bbbbbbbbbbbbbbbb"


def _msg(text: str, action: bool = False, display: str = "", mine: bool = False) -> MessageEvent:
    return MessageEvent(
        id="0" * 32,
        origin=A_ID,
        name="alice",
        text=text,
        ts=1.0,
        self=mine,
        seq=1,
        action=action,
        display=display,
    )


def test_render_events() -> None:
    r = render.Renderer()
    assert r.render(_msg("hello")) == "alice: hello"
    assert r.render(_msg("hello", mine=True)) == "alice: hello"
    # An action starts one column right: "* " at column 0 is this node's own news.
    assert r.render(_msg("waves", action=True)) == " * alice waves"
    assert r.render(_msg("hi", display="alice#3f2a")) == "alice#3f2a: hi"
    assert r.render(JoinEvent(origin=B_ID, name="bob", display="bob")) == "* bob joined"
    assert r.render(JoinEvent(origin=B_ID, name="bob", via="presence")) == "* bob is here"
    assert r.render(LeaveEvent(origin=B_ID, name="bob", reason="quit")) == "* bob left"
    assert r.render(LeaveEvent(origin=B_ID, name="bob", reason="timeout")) == "* bob timed out"
    up = PeerUp(peer=B_ID, address="10.0.0.2:7420", name="bob")
    assert r.render(up) == "-- linked to bob (10.0.0.2:7420)"
    assert r.render(NickEvent(origin=B_ID, old="bob", new="robert")) == (
        "* bob is now known as robert"
    )
    shared = NickEvent(origin=B_ID, old="bob", new="alice", display="alice#b0b0", old_display="bob")
    assert (
        render.Renderer().render(shared) == "* bob is now known as alice#b0b0"
    )  # the #fp others see
    # The interactive views: every arrival is a join; link chatter only when asked for.
    quiet = render.Renderer(interactive=True, links=False)
    assert quiet.render(JoinEvent(origin=B_ID, name="bob", via="presence")) == "* bob joined"
    assert quiet.render(PeerUp(peer=B_ID, address="10.0.0.2:7420", name="bob")) is None
    assert quiet.render(PeerDown(peer=B_ID, address="10.0.0.2:7420", reason="x")) is None
    # PeerDown carries no name: the renderer remembers it (here: the nick).
    down = PeerDown(peer=B_ID, address="10.0.0.2:7420", reason="keepalive timeout")
    assert r.render(down) == "-- link to robert lost: keepalive timeout"
    unknown = PeerDown(peer="c" * 16, address="10.0.0.3:7420", reason="")
    assert r.render(unknown) == "-- link to cccccccc lost"
    assert r.render(Notice(text="port 7420 is taken", level="warning")) == "!! port 7420 is taken"
    ready = r.render(Ready(node=A_ID, name="alice", room="lobby", port=7420))
    assert ready is not None and "alice" in ready and "lobby" in ready and "7420" in ready


def test_render_cleans_control_characters() -> None:
    r = render.Renderer()
    line = r.render(_msg("evil \x1b[2J\x1b]0;title\x07 text\x9b1m\ttab"))
    assert line is not None
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line)
    assert line == "alice: evil \ufffd[2J\ufffd]0;title\ufffd text\ufffd1m tab"
    assert r.render(_msg(UNICODE_TEXT)) == f"alice: {UNICODE_TEXT}"


def test_format_who_and_peers() -> None:
    members = [
        MemberInfo(node=B_ID, name="bob", display="bob", linked=True, self=False),
        MemberInfo(node="c" * 16, name="carol", display="carol", linked=False, self=False),
        MemberInfo(node=A_ID, name="alice", display="alice", linked=False, self=True),
    ]
    line = render.format_who("lobby", members)
    assert line.startswith("-- 3 in lobby: alice (you), bob*, carol")
    assert "linked directly" in line
    members[0] = MemberInfo(B_ID, "bob", "bob", linked=True, self=False, away="lunch\x1b[2J")
    line = render.format_who("lobby", members)
    assert "bob* (away: lunch\ufffd[2J), carol" in line
    r = render.Renderer()
    away = AwayEvent(origin=B_ID, name="bob", text="out\x07", display="bob")
    assert r.render(away) == "-- bob is away: out\ufffd"
    assert r.render(AwayEvent(origin=B_ID, name="bob", text="", display="bob")) == "-- bob is back"
    assert r.render(AwayEvent(A_ID, "alice", "brb", "alice", self=True)) == "-- you are away: brb"
    assert render.format_peers([]) == ["-- no direct links"]
    links = [LinkInfo(peer=B_ID, name="bob", address="10.0.0.2:7420", direction="in", uptime_s=75)]
    out = render.format_peers(links)
    assert len(out) == 2 and "bob" in out[1] and "10.0.0.2:7420" in out[1] and "in" in out[1]
    assert "1m15s" in out[1]
    assert [render.format_duration(s) for s in (0, 59.9, 60, 3599, 3600, 7322)] == [
        "0s",
        "59s",
        "1m00s",
        "59m59s",
        "1h00m",
        "2h02m",
    ]


# -- command handling against a fake node ------------------------------------------------


class FakeNode:
    """Just enough of p2pchat.node.Node for the CLI, without sockets."""

    instances: list[FakeNode] = []  # noqa: RUF012

    def __init__(
        self,
        config: NodeConfig,
        discovery: object = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.config = config
        self.discovery = discovery
        self.on_event = on_event or (lambda ev: None)
        self.node_id = A_ID
        self._name = config.name
        self.port = 0
        self.sent: list[tuple[str, bool]] = []
        self.closed = 0
        self.history_asked: list[int] = []
        FakeNode.instances.append(self)

    @property
    def name(self) -> str:
        return self._name

    @property
    def room(self) -> str:
        return self.config.room

    def start(self) -> None:
        self.port = 45678
        self.on_event(Ready(node=A_ID, name=self._name, room=self.room, port=self.port))

    def send(self, text: str, action: bool = False) -> MessageEvent:
        if len(text) > 2000:
            raise LineTooLong(f"line is {len(text)} characters; the limit is 2000.")
        if not text.strip() or "\n" in text:
            raise UsageError("bad line")
        self.sent.append((text, action))
        ev = MessageEvent(
            id="1" * 32,
            origin=A_ID,
            name=self._name,
            text=text,
            ts=1.0,
            self=True,
            seq=len(self.sent),
            action=action,
            display=self._name,
        )
        self.on_event(ev)
        return ev

    def set_name(self, name: str) -> None:
        check_label(name, "name", 32)
        old, self._name = self._name, name
        self.on_event(NickEvent(origin=A_ID, old=old, new=name))

    def snapshot(self) -> Snapshot:
        return Snapshot(
            members=[
                MemberInfo(node=A_ID, name=self._name, display=self._name, linked=False, self=True),
                MemberInfo(node=B_ID, name="bob", display="bob", linked=True, self=False),
            ],
            links=[
                LinkInfo(
                    peer=B_ID, name="bob", address="127.0.0.1:7421", direction="out", uptime_s=3.2
                )
            ],
        )

    def history(self, n: int = 20) -> list[MessageEvent]:
        self.history_asked.append(n)
        return [
            MessageEvent(
                id=f"{i:032x}",
                origin=B_ID,
                name="bob",
                text=f"old {i}",
                ts=1.0,
                self=False,
                seq=i,
                history=True,
                line=i,
                hlc=i,
                display="bob",
            )
            for i in range(1, min(n, 2) + 1)
        ]

    def remembered(self) -> list[object]:
        return []

    def close(self) -> None:
        self.closed += 1


def _run_fake(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stdin: str,
    *extra: str,
) -> tuple[int, FakeNode, list[str], str]:
    FakeNode.instances = []
    monkeypatch.setattr(session, "Node", FakeNode)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = cli.main(["--name", "alice", "--no-mdns", "--port", "0", *extra])
    captured = capsys.readouterr()
    assert len(FakeNode.instances) == 1
    return status, FakeNode.instances[0], captured.out.splitlines(), captured.err


SCRIPT = "\n".join(
    [
        "hello",
        "",
        "   ",
        "/who",
        "/peers",
        "/help",
        "/nick",
        "/nick bad\x07name",
        "/nick  robert ",
        "/me",
        "/me dances",
        "/bogus",
        "x" * 2001,
        "x" * 2000,
        "//not a command",
        UNICODE_TEXT,
        "with CRLF\r",
        "/QUIT",
        "after quit: never sent",
    ]
)


def test_scripted_json_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, node, lines, err = _run_fake(monkeypatch, capsys, SCRIPT + "\n", "--json")
    assert status == 0
    assert err == ""
    assert node.closed == 1
    assert node.sent == [
        ("hello", False),
        ("dances", True),
        ("x" * 2000, False),
        ("/not a command", False),
        (UNICODE_TEXT, False),
        ("with CRLF", False),
    ]
    assert node.name == "robert"
    objs = [json.loads(line) for line in lines]  # every line is one JSON object
    kinds = [o["event"] for o in objs]
    assert kinds[0] == "ready"
    (who,) = [o for o in objs if o["event"] == "who"]
    assert who["members"] == [
        {"node": A_ID, "name": "alice", "display": "alice", "linked": False, "self": True},
        {"node": B_ID, "name": "bob", "display": "bob", "linked": True, "self": False},
    ]
    (peers,) = [o for o in objs if o["event"] == "peers"]
    assert peers["links"][0]["address"] == "127.0.0.1:7421"
    assert peers["links"][0]["direction"] == "out"
    assert peers["remembered"] == []
    (help_,) = [o for o in objs if o["event"] == "help"]
    assert "/nick NEW" in help_["text"]
    errors = [o["text"] for o in objs if o["event"] == "error"]
    assert len(errors) == 5, errors  # /nick, bad name, /me, /bogus, too long
    assert any("/bogus" in e for e in errors)
    assert any("2001" in e and "2000" in e for e in errors)
    (nick,) = [o for o in objs if o["event"] == "nick"]
    assert (nick["old"], nick["new"]) == ("alice", "robert")
    texts = [o["text"] for o in objs if o["event"] == "message"]
    assert UNICODE_TEXT in texts
    assert UNICODE_TEXT in "\n".join(lines)  # ensure_ascii=False: UTF-8, not \u escapes


def test_scripted_text_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, node, lines, err = _run_fake(monkeypatch, capsys, SCRIPT)  # no final newline
    assert status == 0 and err == "" and node.closed == 1
    assert "alice: hello" in lines
    assert "-- 2 in lobby: alice (you), bob*   (* = linked directly)" in lines
    assert any(line.startswith("--   bob  127.0.0.1:7421  out") for line in lines)
    assert "* alice is now known as robert" in lines
    assert " * robert dances" in lines
    assert "robert: /not a command" in lines
    assert "!! usage: /nick NEW" in lines
    assert "!! usage: /me ACTION" in lines
    assert any(line.startswith("!! unknown command /bogus") for line in lines)
    assert any(line.startswith("!! line is 2001 characters") for line in lines)
    assert f"robert: {UNICODE_TEXT}" in lines
    assert not any("never sent" in line for line in lines)


def test_node_is_built_from_the_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeNode.instances = []
    monkeypatch.setattr(session, "Node", FakeNode)  # never binds anything
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    stype = unique_service_type()
    argv = ["--name", "a", "--room", "r", "--interface", LOOPBACK, "--peer", "10.0.0.2"]
    assert cli.main([*argv, "--service-type", stype]) == 0
    assert cli.main([*argv, "--no-mdns", "--port", "7421"]) == 0
    capsys.readouterr()
    with_mdns, without = FakeNode.instances
    cfg = with_mdns.config
    assert (cfg.name, cfg.room, cfg.port, cfg.port_fallback) == ("a", "r", DEFAULT_PORT, True)
    assert cfg.interfaces == [LOOPBACK]
    assert cfg.peers == [("10.0.0.2", DEFAULT_PORT)]
    assert isinstance(with_mdns.discovery, MdnsDiscovery)
    assert with_mdns.discovery.interfaces == [LOOPBACK]
    assert with_mdns.discovery.service_type == stype
    assert (without.config.port, without.config.port_fallback) == (7421, False)
    assert without.discovery is None
    assert with_mdns.closed == without.closed == 1


class BrokenNode(FakeNode):
    def start(self) -> None:
        raise RuntimeError("boom")


@pytest.mark.parametrize("level", ["warning", "debug"])
def test_unexpected_error_exits_1(
    level: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(session, "Node", BrokenNode)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli.main(["--name", "x", *NO_MDNS, "--log-level", level]) == 1
    err = capsys.readouterr().err
    assert err.startswith("p2pchat: unexpected error: RuntimeError: boom\n")
    assert ("Traceback" in err) == (level == "debug")


def test_scripted_with_a_real_node_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{UNICODE_TEXT}\n/who\n"))
    room = unique_room()
    assert cli.main(["--name", "solo", "--room", room, "--json", *NO_MDNS]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert objs[0]["event"] == "ready" and objs[0]["room"] == room and objs[0]["port"] > 0
    (who,) = [o for o in objs if o["event"] == "who"]
    assert [(m["name"], m["self"]) for m in who["members"]] == [("solo", True)]
    (msg,) = [o for o in objs if o["event"] == "message"]
    assert msg["text"] == UNICODE_TEXT and msg["self"] is True


def test_startup_error_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        port = s.getsockname()[1]
        argv = ["--name", "x", "--no-mdns", "--interface", LOOPBACK, "--port", str(port)]
        assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("p2pchat: ") and str(port) in err and len(err.splitlines()) == 1


# -- subprocesses -----------------------------------------------------------------------


@pytest.fixture
def spawn() -> Iterator[Callable[..., NodeProcess]]:
    """Start ``python -m p2pchat`` processes in scripted mode (stdout and stderr
    read by threads, so every wait has a deadline); every one is stopped and
    reaped, and its reader threads joined, at the end."""
    env = env_with_path(REPO)
    env.pop("PYTHONWARNINGS", None)
    started: list[NodeProcess] = []
    scratch: list[str] = []

    def start(*argv: str, json_mode: bool = True, ephemeral: bool = True) -> NodeProcess:
        downloads: list[str] = []
        if "--download-dir" not in argv:  # never the user's downloads folder
            scratch.append(tempfile.mkdtemp(prefix="p2pchat-downloads-"))
            downloads = ["--download-dir", scratch[-1]]
        chat = NodeProcess.spawn(
            [*PYTHON_M_P2PCHAT, *(["--ephemeral"] if ephemeral else []), *downloads, *argv],
            shlex.join(argv),
            json_mode=json_mode,
            cwd=str(REPO),
            env=env,
            errors="strict",
        )
        started.append(chat)
        return chat

    try:
        yield start
    finally:
        stop(started)
        for where in scratch:
            shutil.rmtree(where, ignore_errors=True)


def _clean_exit(chat: NodeProcess) -> None:
    assert chat.wait() == 0, chat.stderr
    assert not any("Traceback" in line for line in chat.stderr), chat.stderr
    assert not chat.junk, chat.junk


def _pair(
    spawn: Callable[..., NodeProcess], room: str
) -> tuple[NodeProcess, NodeProcess, str, str]:
    """alice, then bob dialling her; both linked and knowing each other."""
    alice = spawn("--name", "alice", "--room", room, "--json", *NO_MDNS)
    ra = alice.wait_event("ready")
    bob = spawn(
        "--name", "bob", "--room", room, "--json", *NO_MDNS, "--peer", f"{LOOPBACK}:{ra['port']}"
    )
    rb = bob.wait_event("ready")
    a_id, b_id = ra["node"], rb["node"]
    alice.wait_event("peer_up", peer=b_id)
    bob.wait_event("peer_up", peer=a_id)
    alice.wait_event("join", origin=b_id)
    bob.wait_event("join", origin=a_id)
    return alice, bob, a_id, b_id


def test_two_processes_chat(spawn: Callable[..., NodeProcess]) -> None:
    alice, bob, a_id, b_id = _pair(spawn, unique_room())

    alice.send_line(UNICODE_TEXT)
    bob.send_line("hi alice ✓ — ok")
    mine = alice.wait_event("message", text=UNICODE_TEXT)
    assert mine["self"] is True and mine["origin"] == a_id and mine["name"] == "alice"
    theirs = bob.wait_event("message", text=UNICODE_TEXT)
    assert theirs["self"] is False and theirs["origin"] == a_id and theirs["id"] == mine["id"]
    assert alice.wait_event("message", text="hi alice ✓ — ok")["self"] is False
    assert bob.wait_event("message", text="hi alice ✓ — ok")["self"] is True

    bob.send_line("/who")
    who = bob.wait_event("who")
    members = {m["node"]: m for m in who["members"]}
    assert set(members) == {a_id, b_id}
    assert members[b_id]["self"] is True and members[b_id]["name"] == "bob"
    assert members[a_id] == {
        "node": a_id,
        "name": "alice",
        "display": "alice",
        "linked": True,
        "self": False,
    }
    bob.send_line("/peers")
    (link,) = bob.wait_event("peers")["links"]
    assert link["peer"] == a_id and link["direction"] == "out"

    bob.send_line("/nick robert")
    alice.wait_event("nick", origin=b_id, old="bob", new="robert")
    bob.wait_event("nick", origin=b_id, old="bob", new="robert")

    bob.send_line("/me waves 👋")
    action = alice.wait_event("message", text="waves 👋")
    assert action["action"] is True

    bob.send_line("y" * 2001)
    assert "2000" in bob.wait_event("error")["text"]

    bob.close_stdin()  # end of input: leave gracefully
    _clean_exit(bob)
    leave = alice.wait_event("leave", origin=b_id)
    assert leave["reason"] == "quit"
    alice.wait_event("peer_down", peer=b_id)

    alice.send_line("/quit")
    _clean_exit(alice)
    assert not any(ev["event"] == "error" for ev in alice.events)


def test_sigterm_leaves_gracefully(spawn: Callable[..., NodeProcess]) -> None:
    alice, bob, _a_id, b_id = _pair(spawn, unique_room())
    bob.proc.send_signal(signal.SIGTERM)
    _clean_exit(bob)
    assert alice.wait_event("leave", origin=b_id)["reason"] == "quit"
    alice.proc.send_signal(signal.SIGINT)  # Ctrl+C in scripted mode: also graceful
    _clean_exit(alice)


def test_plain_text_mode(spawn: Callable[..., NodeProcess]) -> None:
    room = unique_room()
    alice = spawn("--name", "alice", "--room", room, *NO_MDNS, json_mode=False)
    ready = alice.wait_line(lambda line: "listening on port" in line, "the ready line")
    port = int(re.findall(r"port (\d+)", ready)[0])
    bob = spawn("--name", "bob", "--room", room, "--json", *NO_MDNS, "--peer", f"{LOOPBACK}:{port}")
    b_id = bob.wait_event("ready")["node"]
    alice.wait_line(lambda line: line == "* bob joined", "join line")
    alice.wait_line(lambda line: line.startswith("-- linked to bob (127.0.0.1:"), "link line")
    bob.wait_event("join")
    bob.send_line(f"hello {UNICODE_TEXT}")
    alice.wait_line(lambda line: line == f"bob: hello {UNICODE_TEXT}", "bob's line")
    alice.send_line("/me waves")
    assert bob.wait_event("message", text="waves")["action"] is True
    alice.wait_line(lambda line: line == " * alice waves", "our own action line")
    alice.send_line("/who")
    alice.wait_line(lambda line: line.startswith("-- 2 in "), "the /who reply")
    bob.send_line("/quit")
    _clean_exit(bob)
    alice.wait_line(lambda line: line == "* bob left", "leave line")
    alice.wait_line(lambda line: line.startswith("-- link to bob lost"), "link down line")
    alice.close_stdin()
    _clean_exit(alice)
    assert b_id


def test_away_between_processes(spawn: Callable[..., NodeProcess]) -> None:
    """``/away TEXT`` reaches the room at once (well before the next 3 s
    presence would), shows in ``/who`` and to whoever ``/msg``s the member;
    ``/away`` alone clears it.  The ``away`` event in ``--json``."""
    room = unique_room()
    alice = spawn("--name", "alice", "--room", room, *NO_MDNS, json_mode=False)
    ready = alice.wait_line(lambda line: "listening on port" in line, "the ready line")
    port = int(re.findall(r"port (\d+)", ready)[0])
    bob = spawn("--name", "bob", "--room", room, "--json", *NO_MDNS, "--peer", f"{LOOPBACK}:{port}")
    b_id = bob.wait_event("ready")["node"]
    alice.wait_line(lambda line: line == "* bob joined", "join line")
    a_id = bob.wait_event("join")["origin"]
    bob.send_line("/away at lunch ☕")
    mine = bob.wait_event("away")
    assert (mine["origin"], mine["text"], mine["self"]) == (b_id, "at lunch ☕", True)
    alice.wait_line(lambda line: line == "-- bob is away: at lunch ☕", "bob away")
    alice.send_line("/who")
    who = alice.wait_line(lambda line: line.startswith("-- 2 in "), "the /who reply")
    assert "bob* (away: at lunch ☕)" in who
    alice.send_line("/msg bob are you there?")
    alice.wait_line(lambda line: line.endswith("alice: are you there?"), "our private line")
    alice.wait_line(lambda line: line == "-- bob is away: at lunch ☕", "the away answer")
    bob.send_line("/away")
    alice.wait_line(lambda line: line == "-- bob is back", "bob back")
    alice.send_line("/away")  # not away: nothing changes, nothing is said
    alice.send_line("/away " + "x" * 201)
    alice.wait_line(lambda line: line.startswith("!! cannot set away:") and "200" in line, "no")
    alice.send_line("/away brb")
    ev = bob.wait_event("away", origin=a_id)
    assert (ev["name"], ev["text"], ev["display"], ev["self"]) == ("alice", "brb", "alice", False)
    bob.send_line("/quit")
    _clean_exit(bob)
    alice.close_stdin()
    _clean_exit(alice)


def test_topic_between_processes(spawn: Callable[..., NodeProcess]) -> None:
    """``/topic TEXT`` sets the room's topic: a ``topic`` event in ``--json``
    (never a ``message`` too), ``-- bob set the topic: TEXT`` in text;
    ``/topic`` alone shows it, ``/topic -`` clears it; ``/history`` keeps
    it; a node that comes later learns it by catch-up."""
    room = unique_room()
    alice = spawn("--name", "alice", "--room", room, *NO_MDNS, json_mode=False)
    ready = alice.wait_line(lambda line: "listening on port" in line, "the ready line")
    port = int(re.findall(r"port (\d+)", ready)[0])
    peer = ("--peer", f"{LOOPBACK}:{port}")
    bob = spawn("--name", "bob", "--room", room, "--json", *NO_MDNS, *peer)
    b_id = bob.wait_event("ready")["node"]
    alice.wait_line(lambda line: line == "* bob joined", "join line")
    a_id = bob.wait_event("join")["origin"]
    bob.send_line("/topic  release on friday ☕ ")
    mine = bob.wait_event("topic", text="release on friday ☕")
    assert set(mine) == {
        "event", "id", "room", "origin", "name", "text", "ts", "self", "seq", "display",
        "history", "hlc", "line",
    }  # fmt: skip
    assert (mine["room"], mine["origin"], mine["self"], mine["history"]) == (
        room,
        b_id,
        True,
        False,
    )
    assert mine["line"] == 1 and mine["hlc"] > 0
    alice.wait_line(lambda line: line == "-- bob set the topic: release on friday ☕", "topic")
    alice.send_line("/topic")
    shown = alice.wait_line(lambda line: line.startswith("-- topic: "), "the /topic reply")
    assert re.fullmatch(r"-- topic: release on friday ☕ \(set by bob, \d\d:\d\d\)", shown)
    alice.send_line("/topic " + "x" * 301)
    alice.wait_line(lambda line: line.startswith("!! the topic is 301 characters"), "refused")
    alice.send_line("/topic -")
    theirs = bob.wait_event("topic", origin=a_id)
    assert (theirs["name"], theirs["text"], theirs["self"]) == ("alice", "", False)
    alice.wait_line(lambda line: line == "-- you cleared the topic", "cleared")
    alice.send_line("/topic the second one")
    bob.wait_event("topic", text="the second one")
    bob.send_line("hi")
    bob.wait_event("message", text="hi")
    assert [e["text"] for e in bob.of("message")] == ["hi"]  # no topic as a line
    bob.send_line("/topic")
    current = bob.wait_event("current_topic")["topic"]
    assert (current["text"], current["origin"]) == ("the second one", a_id)
    bob.send_line("/history")
    lines = bob.wait_event("history")["lines"]
    assert [(m.get("event", "message"), m["text"]) for m in lines] == [
        ("topic", "release on friday ☕"),
        ("topic", ""),
        ("topic", "the second one"),
        ("message", "hi"),
    ]
    carol = spawn("--name", "carol", "--room", room, "--json", *NO_MDNS, *peer)
    late = carol.wait_event("topic", text="the second one")
    assert late["history"] is True and late["origin"] == a_id
    carol.send_line("/topic")
    assert carol.wait_event("current_topic")["topic"]["text"] == "the second one"
    for node in (bob, carol):
        node.send_line("/quit")
        _clean_exit(node)
    alice.close_stdin()
    _clean_exit(alice)


def test_mdns_discovery_on_loopback(spawn: Callable[..., NodeProcess]) -> None:
    room, stype = unique_room(), unique_service_type()
    common = ["--room", room, "--json", "--interface", LOOPBACK, "--port", "0"]
    alice = spawn("--name", "alice", *common, "--service-type", stype)
    bob = spawn("--name", "bob", *common, "--service-type", stype)
    a_id, b_id = alice.wait_event("ready")["node"], bob.wait_event("ready")["node"]
    alice.wait_event("peer_up", peer=b_id)
    bob.wait_event("peer_up", peer=a_id)
    alice.wait_event("join", origin=b_id)
    bob.send_line("found you")
    alice.wait_event("message", text="found you")
    bob.close_stdin()
    _clean_exit(bob)
    assert alice.wait_event("leave", origin=b_id)["reason"] == "quit"
    alice.close_stdin()
    _clean_exit(alice)


def test_port_taken_exits_1(spawn: Callable[..., NodeProcess]) -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        port = s.getsockname()[1]
        chat = spawn(
            "--name", "x", "--json", "--no-mdns", "--interface", LOOPBACK, "--port", str(port)
        )
        assert chat.wait() == 1
    assert len(chat.stderr) == 1, chat.stderr
    assert chat.stderr[0].startswith("p2pchat: ") and str(port) in chat.stderr[0]
    assert chat.stderr[0].endswith(".")
    assert chat.lines == []


def test_interface_not_on_this_machine_exits_1(spawn: Callable[..., NodeProcess]) -> None:
    chat = spawn("--name", "x", "--json", "--no-mdns", "--interface", "10.255.255.1", "--port", "0")
    assert chat.wait() == 1
    assert len(chat.stderr) == 1, chat.stderr
    assert chat.stderr[0].startswith("p2pchat: ") and "10.255.255.1" in chat.stderr[0]
    assert chat.lines == []


def test_usage_errors_exit_2(spawn: Callable[..., NodeProcess]) -> None:
    no_name = spawn("--json", *NO_MDNS)
    bad_name = spawn("--name", "x" * 40, *NO_MDNS)
    for chat in (no_name, bad_name):
        assert chat.wait() == 2
        assert len(chat.stderr) == 1 and chat.stderr[0].startswith("p2pchat: "), chat.stderr
    assert "--name" in no_name.stderr[0]
    assert "32" in bad_name.stderr[0]


def test_stdout_gone_leaves_gracefully(spawn: Callable[..., NodeProcess], tmp_path: Path) -> None:
    """Like ``p2pchat ... | head -1``: once stdout is gone, leave instead of running on."""
    room = unique_room()
    alice = spawn("--name", "alice", "--room", room, "--json", *NO_MDNS)
    port = alice.wait_event("ready")["port"]
    peer = ["--peer", f"{LOOPBACK}:{port}"]
    read_end, write_end = os.pipe()  # bob's stdout; nobody ever reads it
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("w") as stderr:
        bob = subprocess.Popen(
            [*PYTHON_M_P2PCHAT, "--name", "bob", "--room", room, "--json", *NO_MDNS, *peer],
            stdin=subprocess.PIPE,
            stdout=write_end,
            stderr=stderr,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    os.close(write_end)
    try:
        b_id = alice.wait_event("join", name="bob")["origin"]
        os.close(read_end)  # now bob's next line to stdout fails with EPIPE
        read_end = -1
        assert bob.stdin is not None
        # Bob's next event (at the latest, the echo of this line) cannot be
        # printed.  Whether the line itself still goes out depends on which
        # event came first, so only the leave is asserted.
        with contextlib.suppress(OSError):
            bob.stdin.write(b"one more line\n")
            bob.stdin.flush()
        assert alice.wait_event("leave", origin=b_id)["reason"] == "quit"
        assert bob.wait(WAIT_S) == 0
        assert "Traceback" not in stderr_path.read_text()
    finally:
        if read_end >= 0:
            os.close(read_end)
        if bob.stdin is not None:
            with contextlib.suppress(OSError):
                bob.stdin.close()
        if bob.poll() is None:
            bob.kill()
        bob.wait(10)


# -- interactive ------------------------------------------------------------------------


class TmuxPane:
    """A p2pchat command in the pane ``t`` of a private tmux server (a socket of
    this test's own), with its exit status written to ``status_file``."""

    def __init__(self, argv: list[str], status_file: Path, env: str = "") -> None:
        tmux = shutil.which("tmux")
        assert tmux is not None
        self.tmux = tmux
        self.sock = f"p2pchat-test-{os.getpid()}-{os.urandom(3).hex()}"
        self.status_file = status_file
        self.command = (
            f"cd {shlex.quote(str(REPO))} && {env}PYTHONPATH={shlex.quote(str(REPO))} "
            f"{shlex.join(argv)}; echo $? > {shlex.quote(str(status_file))}; sleep 60"
        )

    def tm(self, *args: str) -> str:
        """Run one tmux command on our server; its output."""
        done = subprocess.run(
            [self.tmux, "-L", self.sock, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout

    def start(self, width: int, height: int) -> None:
        """The pane, ``width`` x ``height``, running the command."""
        self.tm("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), self.command)

    def screen(self) -> list[str]:
        """The pane's rows, trailing blanks cut."""
        return [line.rstrip() for line in self.tm("capture-pane", "-p", "-t", "t").splitlines()]

    def wait_screen(self, pred: Callable[[list[str]], bool], what: str) -> list[str]:
        """The rows once ``pred`` holds of them; fails after ``WAIT_S``."""
        deadline = time.monotonic() + WAIT_S
        while True:
            lines = self.screen()
            if pred(lines):
                return lines
            if time.monotonic() > deadline:
                pytest.fail(f"screen never showed {what}:\n" + "\n".join(lines))
            time.sleep(0.05)  # polling the screen, with a deadline

    def cursor(self) -> tuple[int, int]:
        """The cursor's column and row."""
        x, y = self.tm("display-message", "-p", "-t", "t", "#{cursor_x} #{cursor_y}").split()
        return int(x), int(y)

    def exit_status(self, what: str) -> str:
        """The command's exit status, once it has ended (fails after ``WAIT_S``)."""
        deadline = time.monotonic() + WAIT_S
        while not self.status_file.exists() or not self.status_file.read_text().strip():
            assert time.monotonic() < deadline, f"the {what} did not exit"
            time.sleep(0.05)
        return self.status_file.read_text().strip()

    def close(self) -> None:
        """End the tmux server and what runs in it."""
        subprocess.run([self.tmux, "-L", self.sock, "kill-server"], capture_output=True, timeout=10)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_plain_line_mode_in_tmux(spawn: Callable[..., NodeProcess], tmp_path: Path) -> None:
    room = unique_room()
    argv = [sys.executable, "-m", "p2pchat", "--ephemeral", "--plain", "--room", room, *NO_MDNS]
    pane = TmuxPane(argv, tmp_path / "status")
    tm, screen, wait_screen = pane.tm, pane.screen, pane.wait_screen
    try:
        pane.start(100, 30)
        wait_screen(lambda s: any(line.startswith("Your name:") for line in s), "the name prompt")
        tm("send-keys", "-t", "t", "x" * 40, "Enter")
        wait_screen(lambda s: any("longer than 32" in line for line in s), "the re-ask")
        tm("send-keys", "-t", "t", "alice", "Enter")
        lines = wait_screen(
            lambda s: (
                any("listening on port" in line for line in s)
                and any(line.startswith(f"[{room}] alice>") for line in s)
            ),
            "the ready line and the prompt",
        )
        port = int(re.findall(r"listening on port (\d+)", "\n".join(lines))[0])

        bob = spawn(
            "--name", "bob", "--room", room, "--json", *NO_MDNS, "--peer", f"{LOOPBACK}:{port}"
        )
        bob.wait_event("join")
        # Alone for 3 s, alice saw bob join; else bob was there when she arrived.
        wait_screen(lambda s: "* bob joined" in s or f"-- in {room}: bob" in s, "bob joining")
        assert not any(line.startswith("-- linked") for line in screen())  # not by default

        # A half-typed line stays intact while bob's lines are printed above it.
        tm("send-keys", "-t", "t", "-l", "draft ✓ 你好")
        bob.send_line("line from bob")
        # The line is printed, then the prompt drawn again below it: wait for both (a
        # capture between the two, on a busy machine, showed the prompt not yet redrawn).
        prompt = f"[{room}] alice> draft ✓ 你好"
        wait_screen(
            lambda s: "bob: line from bob" in s and [line for line in s if line][-1] == prompt,
            "bob's line above the half-typed one",
        )
        tm("send-keys", "-t", "t", "Enter")
        assert bob.wait_event("message", text="draft ✓ 你好")["self"] is False
        wait_screen(lambda s: "alice: draft ✓ 你好" in s, "our own line")

        tm("send-keys", "-t", "t", "/who", "Enter")
        wait_screen(lambda s: any(line.startswith("-- 2 in ") for line in s), "the /who reply")
        tm("send-keys", "-t", "t", "/nosuch", "Enter")
        wait_screen(lambda s: any(line.startswith("!! unknown command") for line in s), "error")

        # SIGTERM to the interactive process: the prompt ends, the node leaves.
        pane_pid = int(tm("display-message", "-p", "-t", "t", "#{pane_pid}").strip())
        children = subprocess.run(
            ["pgrep", "-P", str(pane_pid)], capture_output=True, text=True, timeout=10
        ).stdout.split()
        assert len(children) == 1, children
        os.kill(int(children[0]), signal.SIGTERM)
        assert bob.wait_event("leave")["reason"] == "quit"
        assert pane.exit_status("interactive p2pchat") == "0"
        assert not any("Traceback" in line for line in screen())
    finally:
        pane.close()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_fullscreen_in_tmux(spawn: Callable[..., NodeProcess], tmp_path: Path) -> None:
    """The real p2pchat, full screen, in tmux at 80x24: the input line on the
    last row, a peer's line with its time and name, and a raw peer's line
    full of escape, bell and bidi characters that changes nothing else."""
    room = unique_room()
    argv = [sys.executable, "-m", "p2pchat", "--ephemeral", "--name", "alice"]
    argv += ["--room", room, *NO_MDNS]
    pane = TmuxPane(argv, tmp_path / "status", env="TERM=xterm-256color ")
    tm, screen, wait_screen, cursor = pane.tm, pane.screen, pane.wait_screen, pane.cursor
    raw: RawPeer | None = None
    try:
        pane.start(80, 24)
        lines = wait_screen(
            lambda s: (
                len(s) == 24
                and any("listening on port" in line for line in s)
                and s[-1].startswith("alice>")
            ),
            "the ready line and the input line on the last row",
        )
        assert cursor() == (len("alice> "), 23)
        assert lines[-2].startswith(f" [{room}]") and "1 member" in lines[-2]
        port = int(re.findall(r"listening on port (\d+)", "\n".join(lines))[0])

        bob = spawn(
            "--name", "bob", "--room", room, "--json", *NO_MDNS, "--peer", f"{LOOPBACK}:{port}"
        )
        bob.wait_event("join")
        wait_screen(
            lambda s: any(line.endswith((" -!- bob joined", f" -!- in {room}: bob")) for line in s),
            "bob joined (or in the room when alice arrived)",
        )
        assert not any(" -!- linked" in line for line in screen())  # not by default
        tm("send-keys", "-t", "t", "-l", "draft ✓ 你好")
        bob.send_line("line from bob")
        lines = wait_screen(lambda s: any("bob: line from bob" in line for line in s), "bob")
        (row,) = [line for line in lines if "bob: line from bob" in line]
        assert re.fullmatch(r"\d\d:\d\d bob: line from bob", row), row
        assert lines[-1] == "alice> draft ✓ 你好" and cursor()[1] == 23
        tm("send-keys", "-t", "t", "Enter")
        assert bob.wait_event("message", text="draft ✓ 你好")["self"] is False

        # A raw peer.  The wire refuses control characters, so a raw peer's line can still
        # carry bidi overrides and isolates, a tab, wide, combining and
        # zero-width characters; and a name that looks like a system mark.
        raw = RawPeer(port)
        raw.hello(room, name="-!-")
        raw.send(wire.encode_frame(raw.message(wire.Join, room, name="-!-")))
        before = wait_screen(lambda s: "3 members" in s[-2], "the raw peer in the status line")
        title = tm("display-message", "-p", "-t", "t", "#{pane_title}")
        evil = "\u202eevil\u202c\t\u2067rtl\u2069 你好 e\u0301\u0301\u0301 \u200b end-of-evil"
        raw.send(wire.encode_frame(raw.message(wire.Chat, room, name="-!-", text=evil)))
        after = wait_screen(lambda s: any("end-of-evil" in line for line in s), "the line")
        (row,) = [line for line in after if "end-of-evil" in line]
        shown = r"\d\d:\d\d -!-: \ufffdevil\ufffd \ufffdrtl\ufffd 你好 .*end-of-evil"
        assert re.fullmatch(shown, row), row
        changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert changed == [after.index(row)], (before, after)
        assert cursor() == (len("alice> "), 23)
        assert tm("display-message", "-p", "-t", "t", "#{pane_title}") == title

        # Ctrl+C on an empty line: the node leaves the room, the program exits 0.
        tm("send-keys", "-t", "t", "C-c")
        assert bob.wait_event("leave")["reason"] == "quit"
        assert pane.exit_status("full-screen p2pchat") == "0"
        assert not any("Traceback" in line for line in screen())
    finally:
        if raw is not None:
            raw.close()
        pane.close()


# -- history (issue 4) ------------------------------------------------------------------


def test_data_dir_options(tmp_path: Path) -> None:
    opts = args.parse_args(["--name", "a"])
    assert opts.data_dir == args.default_data_dir()
    assert opts.data_dir.startswith(os.environ["XDG_DATA_HOME"])  # conftest keeps tests out
    assert (opts.history_days, opts.history_lines) == (7.0, 10_000)
    assert args.parse_args(["--name", "a", "--ephemeral"]).data_dir is None
    opts = args.parse_args(
        [
            "--name",
            "a",
            "--data-dir",
            str(tmp_path),
            "--history-days",
            "0.5",
            "--history-lines",
            "50",
        ]
    )
    assert (opts.data_dir, opts.history_days, opts.history_lines) == (str(tmp_path), 0.5, 50)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--ephemeral", "--data-dir", "x"], "not allowed with"),
        (["--history-days", "0"], "above 0"),
        (["--history-days", "soon"], "a number"),
        (["--history-lines", "0"], "1 to 1000000"),
        (["--history-lines", "many"], "whole number"),
    ],
)
def test_bad_history_options(argv: list[str], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        args.parse_args(["--name", "a", *argv])


def test_history_command_with_a_fake_node(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = "/history\n/history 2\n/history 0\n/history x\n/history 99999999\n"
    status, node, lines, _err = _run_fake(monkeypatch, capsys, script, "--json", "--ephemeral")
    assert status == 0
    events = [json.loads(line) for line in lines]
    hist = [e for e in events if e["event"] == "history"]
    assert [len(h["lines"]) for h in hist] == [2, 2, 2]
    assert hist[0]["lines"][0]["text"] == "old 1" and hist[0]["lines"][0]["history"] is True
    assert node.history_asked == [20, 2, 10_000]  # capped at the window
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 2 and all("/history [N]" in e["text"] for e in errors)


def test_history_is_shown_with_times_and_earlier_lines_are_marked() -> None:
    ts = time.mktime((2026, 11, 24, 14, 2, 0, 0, 0, -1))
    old = MessageEvent(
        id="0" * 32, origin=B_ID, name="bob", text="hi", ts=ts, self=False, seq=1, history=True
    )
    assert render.Renderer().render(old) == f"(earlier {render.format_clock(ts)}) bob: hi"
    assert render.format_clock(ts).startswith("14:02")
    assert render.format_history("lobby", []) == ["-- no lines yet in lobby"]
    shown = render.format_history("lobby", [old, _msg("waves", action=True)])
    assert shown[0] == "-- the last 2 lines of lobby:"
    assert shown[1].endswith("bob: hi") and shown[2].endswith("* alice waves")


def test_a_node_that_comes_back_sees_what_it_missed_once_in_order(
    spawn: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    room = unique_room()
    bob_dir = str(tmp_path / "bob")
    alice = spawn("--name", "alice", "--room", room, "--json", *NO_MDNS)
    port = alice.wait_event("ready")["port"]
    bob_argv = ["--name", "bob", "--room", room, "--json", *NO_MDNS, "--data-dir", bob_dir]
    bob_argv += ["--peer", f"{LOOPBACK}:{port}"]
    bob = spawn(*bob_argv, ephemeral=False)
    bob_id = bob.wait_event("ready")["node"]
    alice.wait_event("join", origin=bob_id)
    alice.send_line("before you left")
    bob.wait_event("message", text="before you left")

    # A second node on bob's data directory is refused, clearly.
    twin = spawn(*bob_argv, ephemeral=False)
    assert twin.wait() == 1
    assert any("in use by another p2pchat" in line for line in twin.stderr), twin.stderr

    bob.close_stdin()
    _clean_exit(bob)
    alice.wait_event("leave", origin=bob_id)
    missed = ["while you were away 1", "while you were away 2"]
    for text in missed:
        alice.send_line(text)
        alice.wait_event("message", text=text)

    back = spawn(*bob_argv, ephemeral=False)
    assert back.wait_event("ready")["node"] == bob_id  # the same identity
    for text in missed:
        assert back.wait_event("message", text=text)["history"] is True
    alice.send_line("welcome back")
    assert back.wait_event("message", text="welcome back")["history"] is False
    back.send_line("/history 10")
    listed = [m["text"] for m in back.wait_event("history")["lines"]]
    assert listed == ["before you left", *missed, "welcome back"]
    alice.send_line("/history 10")
    assert [m["text"] for m in alice.wait_event("history")["lines"]] == listed
    assert "before you left" not in back.texts(), "lines seen before are not shown again"
    assert all(back.texts().count(t) == 1 for t in [*missed, "welcome back"])


# -- identity, private rooms, direct messages (issue 5) ---------------------------------


def test_private_room_direct_message_and_whois_between_processes(
    spawn: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a long shared secret for the two of us\n")
    room = unique_room()
    common = ["--room", room, "--json", *NO_MDNS, "--secret-file", str(secret)]
    alice = spawn("--name", "alice", *common)
    ra = alice.wait_event("ready")
    assert ra["room"] == room  # shown by name locally; the network sees a tag
    bob = spawn("--name", "bob", *common, "--peer", f"{LOOPBACK}:{ra['port']}")
    b_id = bob.wait_event("ready")["node"]
    alice.wait_event("join", origin=b_id)
    bob.wait_event("join", origin=ra["node"])
    alice.send_line("hello in private")
    assert bob.wait_event("message", text="hello in private")["private"] is False

    alice.send_line("/msg bob just between us")  # bob's join carried his key
    ev = alice.wait_event("message", text="just between us")
    got = bob.wait_event("message", text="just between us")
    assert got["private"] is True and got["origin"] == ra["node"]
    assert ev["private"] is True and ev["to"] == b_id

    bob.send_line("/whois alice")
    keys = bob.wait_event("whois")["keys"]
    assert len(keys) == 1 and keys[0]["fingerprint"].startswith(ra["node"])
    assert keys[0]["first"] is True
    for chat in (alice, bob):
        chat.close_stdin()
        _clean_exit(chat)


def test_scripted_input_lines_from_a_pipe() -> None:
    """The scripted mode's reader: whole lines only, a wait that ends, the end of input."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        reader = scripted._LineReader(stream)
        assert reader.readline(0.05) is None  # nothing yet: the wait ends
        os.write(write_fd, b"one\ntw")
        assert reader.readline(1.0) == "one\n"
        assert reader.readline(0.05) is None  # half a line is not a line
        os.write(write_fd, "o\nthré".encode() + b"\xff")
        assert reader.readline(1.0) == "two\n"
        os.close(write_fd)
        last = reader.readline(1.0)
        assert last is not None and last.startswith("thré")  # the last line needs no newline
        assert reader.readline(1.0) == ""  # the end of input


def test_a_long_catch_up_shows_only_its_latest_earlier_lines_in_order(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = output.Output(json_mode=False)
    printed = ""
    try:
        order = list(range(1, 121))
        random.Random(5).shuffle(order)  # from several links: out of order
        for n in order:
            out.on_event(
                MessageEvent(
                    id=f"{n:032x}",
                    origin=B_ID,
                    name="bob",
                    text=f"old {n}",
                    ts=1_700_000_000.0 + n,
                    self=False,
                    seq=n,
                    history=True,
                    hlc=1_700_000_000_000_000 + n,
                    line=n,
                )
            )
        out.on_event(_msg("live while catching up"))
        # The catch-up is over once no earlier line came for a second.
        deadline = time.monotonic() + 10
        while "bob: old 120" not in printed and time.monotonic() < deadline:
            printed += capsys.readouterr().out
            time.sleep(0.05)
    finally:
        out.close()
    printed += capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0] == "alice: live while catching up"  # live lines do not wait
    assert lines[1:3] == [  # wrapped at 80 columns, the rest indented
        "-- 120 earlier lines came in; the latest 50 follow (/history 120 shows them",
        "    all in their place)",
    ]
    assert [line.split(") ", 1)[1] for line in lines[3:]] == [
        f"bob: old {n}" for n in range(71, 121)
    ]


def test_an_origins_earlier_lines_are_printed_before_its_next_live_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node that links while erin speaks gets erin's first line by catch-up
    # and the next one live a moment later: the terminal shows them in order.
    monkeypatch.setenv("COLUMNS", "80")
    out = output.Output(json_mode=False)
    printed = ""

    def erin(n: int, text: str, history: bool) -> MessageEvent:
        return MessageEvent(
            id=f"{n:032x}",
            origin=B_ID,
            name="erin",
            text=text,
            ts=1_700_000_000.0 + n,
            self=False,
            seq=n,
            history=history,
            hlc=1_700_000_000_000_000 + n,
            line=n,
        )

    try:
        out.on_event(erin(1, "one", True))
        out.on_event(_msg("alice is not erin"))  # another origin's live line does not wait
        out.on_event(erin(2, "two", False))
        deadline = time.monotonic() + 5
        while "erin: two" not in printed and time.monotonic() < deadline:
            printed += capsys.readouterr().out
            time.sleep(0.02)
    finally:
        out.close()
    printed += capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0] == "alice: alice is not erin"
    assert lines[1].startswith("(earlier ") and lines[1].endswith(") erin: one")
    assert lines[2] == "erin: two"
