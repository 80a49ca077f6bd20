"""Desktop notifications (``--notify``, issue 13): a fake ``notify-send`` (or
``osascript``) on a temporary PATH records its argv; no desktop is needed.

The view's side (a mention or a private line notifies, /stats counts) is in
tests/test_tui.py (``test_notify_...``).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from p2pchat.cli.args import parse_args
from p2pchat.cli.notify import (
    NOTIFY_INTERVAL_S,
    NOTIFY_TEXT_MAX,
    Backend,
    Notifier,
    find_backend,
    safe_text,
)

WAIT_S = 10.0
HOSTILE = (
    "--help -u critical $(touch /tmp/notify-pwned) `id`; rm -rf ~ \"' "
    "<a href='http://evil'>click</a> <img src='file:///etc/passwd'/> & "
    "\x1b[2J\x07\u202eevil\u202c\u200b\n-i /etc/passwd"
)


def fake_command(bindir: Path, name: str = "notify-send", sleep_s: float = 0.0) -> Path:
    """A stand-in for ``name`` in ``bindir``: appends its argv, its pid and
    when it ran (``time.monotonic``) as one JSON line to ``bindir/calls``."""
    calls = bindir / "calls"
    script = bindir / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys, time\n"
        f"with open({str(calls)!r}, 'a') as f:\n"
        "    rec = {'argv': sys.argv[1:], 'pid': os.getpid(), 't': time.monotonic()}\n"
        "    f.write(json.dumps(rec) + '\\n')\n"
        f"time.sleep({sleep_s!r})\n"
    )
    script.chmod(0o755)
    return calls


def reaped(calls: Path) -> bool:
    """True once every recorded fake command has exited and been reaped by the
    notifier (its pid gone): closing earlier kills it, which counts as failed."""
    got = read_calls(calls)
    return bool(got) and not any(os.path.exists(f"/proc/{c['pid']}") for c in got)


def read_calls(calls: Path) -> list[dict[str, Any]]:
    if not calls.exists():
        return []
    return [json.loads(line) for line in calls.read_text().splitlines() if line.endswith("}")]


def test_find_backend_picks_the_desktops_command_or_says_why_not(tmp_path: Path) -> None:
    backend, why = find_backend("linux", path=str(tmp_path))
    assert backend is None and "notify-send is not on PATH" in why and why.startswith("--notify")
    backend, why = find_backend("win32", path=str(tmp_path))
    assert backend is None and "not available on Windows" in why
    fake_command(tmp_path, "notify-send")
    fake_command(tmp_path, "osascript")
    assert find_backend("linux", path=str(tmp_path)) == (
        Backend("notify-send", str(tmp_path / "notify-send")),
        "",
    )
    assert find_backend("darwin", path=str(tmp_path))[0] == Backend(
        "osascript", str(tmp_path / "osascript")
    )
    assert not parse_args([]).notify and parse_args(["--notify"]).notify


def notify_once(tmp_path: Path, platform: str, title: str, text: str) -> tuple[Notifier, list[str]]:
    """One notification through the fake command of ``platform``'s desktop;
    the notifier (closed, once the command ended) and the command's argv."""
    calls = fake_command(tmp_path, "osascript" if platform == "darwin" else "notify-send")
    backend, _ = find_backend(platform, path=str(tmp_path))
    assert backend is not None
    notifier = Notifier(backend)
    try:
        notifier.notify(title, text)
        wait_for(lambda: len(read_calls(calls)) == 1, WAIT_S, "the notification")
        wait_for(lambda: reaped(calls), WAIT_S, "the notification command to end")
    finally:
        notifier.close()
    return notifier, read_calls(calls)[0]["argv"]


def test_a_peers_text_reaches_notify_send_as_one_cleaned_argument(tmp_path: Path) -> None:
    notifier, argv = notify_once(tmp_path, "linux", "-u critical\x1b[31m (private)", HOSTILE)
    # Our options, then "--", then exactly two items: the peer's text can add none.
    assert argv[:3] == ["--app-name=p2pchat", "--expire-time=10000", "--"] and len(argv) == 5
    title, body = argv[3:]
    assert title == "-u critical\ufffd[31m (private)"
    for item in (title, body):
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in item)
        assert "\u202e" not in item and "\u200b" not in item
    assert "<" not in body and ">" not in body  # no markup: no link, no image
    assert "&lt;a href='http://evil'&gt;click&lt;/a&gt;" in body and " &amp; " in body
    assert body.startswith("--help -u critical $(touch /tmp/notify-pwned) `id`;")
    assert not os.path.exists("/tmp/notify-pwned")  # nothing ran it through a shell
    assert (notifier.shown, notifier.folded, notifier.failed) == (1, 0, 0)


def test_osascript_gets_the_text_as_arguments_not_as_script(tmp_path: Path) -> None:
    _, argv = notify_once(tmp_path, "darwin", 'bob" & do shell script "id', HOSTILE)
    script = [argv[i + 1] for i, a in enumerate(argv[:-2]) if a == "-e"]
    assert script == [
        "on run argv",
        "display notification (item 2 of argv) with title (item 1 of argv)",
        "end run",
    ]
    assert argv[-2] == 'bob" & do shell script "id'
    assert argv[-1] == safe_text(HOSTILE, NOTIFY_TEXT_MAX)
    assert "<a href" in argv[-1]  # macOS shows text as text: nothing to escape


def test_a_flood_of_mentions_gives_at_most_one_notification_a_second(tmp_path: Path) -> None:
    """A peer naming us 12 times over 1.2 s: a notification at once, then at
    most one a second, each later one with the latest line and how many it
    stands for.  With the rate limit removed there are about 12 and this fails."""
    calls = fake_command(tmp_path)
    backend, _ = find_backend("linux", path=str(tmp_path))
    assert backend is not None
    notifier = Notifier(backend)
    try:
        for i in range(12):
            notifier.notify("bob (in lobby)", f"alice: ping {i}")
            time.sleep(0.1)  # the peer's pace, not a wait for a result
        wait_for(
            lambda: (
                notifier.shown + notifier.folded == 12 and len(read_calls(calls)) == notifier.shown
            ),
            WAIT_S,
            "every ping shown or folded",
        )
    finally:
        notifier.close()
    got = read_calls(calls)
    assert 2 <= len(got) <= 3, [c["argv"][-1] for c in got]
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(got)]
    assert all(gap >= NOTIFY_INTERVAL_S - 0.2 for gap in gaps), gaps
    bodies = [c["argv"][-1] for c in got]
    assert bodies[0] == "alice: ping 0"
    assert bodies[-1].startswith("alice: ping 11")
    more = [int(b.rsplit("(+", 1)[1].split()[0]) if "(+" in b else 0 for b in bodies]
    assert len(bodies) + sum(more) == 12 and notifier.folded == sum(more)


def test_a_hung_command_is_killed_and_close_does_not_wait_for_it(tmp_path: Path) -> None:
    calls = fake_command(tmp_path, sleep_s=60.0)
    backend, _ = find_backend("linux", path=str(tmp_path))
    assert backend is not None
    notifier = Notifier(backend, timeout_s=0.5)
    try:
        notifier.notify("bob (private)", "one")
        wait_for(lambda: notifier.failed == 1, WAIT_S, "the hung command killed")
    finally:
        notifier.close()
    notifier = Notifier(backend, interval_s=0.0)
    started = time.monotonic()
    try:
        notifier.notify("bob (private)", "two")
        wait_for(lambda: len(read_calls(calls)) == 2, WAIT_S, "the second command")
    finally:
        notifier.close()
    assert time.monotonic() - started < 5.0
    for call in read_calls(calls):
        with pytest.raises(ProcessLookupError):
            os.kill(call["pid"], 0)  # killed and reaped
    notifier.notify("bob", "after close")  # ignored, no error
    assert notifier.shown == 1


def test_safe_text_cuts_long_lines_and_drops_invisible_characters() -> None:
    # Bidi controls show as the screen shows them; zero-width ones go.
    assert safe_text("a\u200bb\u2066c\u2069  \t\n d", 50) == "ab\ufffdc\ufffd d"
    long = safe_text("x" * 500, NOTIFY_TEXT_MAX)
    assert len(long) == NOTIFY_TEXT_MAX and long.endswith("…")
