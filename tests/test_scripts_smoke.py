"""The scripts people run by hand, run as they run them, small: each script
in a subprocess with a deadline, its exit status and the result it prints
checked.  Everything stays on 127.0.0.1 (``--no-mdns`` or static peers).

* ``scripts/fuzz.py``: 3,000 decoder cases, then 3,000 live cases of mutated
  signed frames against a node while an honest node chats through it, with
  the default window (20 lines) and with a window of 2 (where a few lines
  with future clocks would take the window over);
* ``scripts/demo.py``: three nodes in a line chat, every line once everywhere;
* ``scripts/chaos.py``: the ``garbage`` and ``flood`` scenarios, scaled down.

The long runs (100,000 fuzz cases, the full chaos table) are in
``docs/reliability.md``; these keep the scripts working and their verdicts
honest between those runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_script(name: str, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/<name>`` with this Python; the child is killed at ``timeout_s``."""
    argv = [sys.executable, str(SCRIPTS / name), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)


def last_json(out: str) -> Any:
    """The JSON object a script prints last on stdout."""
    return json.loads(out.strip().splitlines()[-1])


def test_fuzz_decoder_few_thousand_cases() -> None:
    done = run_script("fuzz.py", "--cases", "3000", "--seed", "11", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = last_json(done.stdout)
    assert result["ok"] and result["bugs"] == 0 and result["cases"] == 3000
    assert result["valid_inputs_verified"] > 0  # valid frames were among them, and decoded back


def test_fuzz_live_node_keeps_every_honest_line() -> None:
    done = run_script("fuzz.py", "--live", "--cases", "3000", "--seed", "11", "--json")
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    result = last_json(done.stdout)
    assert result["ok"] and result["cases"] == 3000
    assert result["internal_errors"] == [] and result["problems"] == []
    assert result["honest_lost_count"] == 0 and result["duplicates_shown"] == 0
    assert result["honest_sent"] == result["honest_at_target"] == result["honest_at_watcher"]
    assert result["honest_sent"] >= 3000 // 50
    # The mutations reached the checks behind the decoder, not only the decoder.
    refused = result["target_stats"]["target frames_refused"]
    for reason in ("bad_signature", "wrong_key", "invalid_fields", "replayed"):
        assert refused.get(reason, 0) > 0, (reason, refused)


def test_fuzz_live_tiny_window_keeps_every_honest_line() -> None:
    # A window of 2 lines: the few lines with future clocks that 3,000 cases
    # make are enough to take it over if the floor trusts them.
    done = run_script(
        "fuzz.py", "--live", "--cases", "3000", "--seed", "11", "--window", "2", "--json"
    )
    result = last_json(done.stdout)
    assert result["internal_errors"] == [] and result["problems"] == []
    assert result["honest_lost_count"] == 0, result["honest_lost"]
    assert done.returncode == 0 and result["ok"]


def test_demo_three_nodes_in_a_line() -> None:
    done = run_script("demo.py", "-n", "3", "--topology", "line", "--deadline", "20")
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    last = done.stdout.strip().splitlines()[-1]
    assert last == "PASS: every node got every line exactly once (3 nodes, 7 lines)"


def test_chaos_garbage_and_flood_scenarios() -> None:
    done = run_script(
        "chaos.py",
        "--only",
        "garbage",
        "--only",
        "flood",
        "--garbage-conns",
        "100",
        "--flood-frames",
        "300",
        "--strict",
        "--json",
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    result = last_json(done.stdout)
    assert result["passed"]
    rows = result["rows"]
    assert {r["scenario"] for r in rows} == {"garbage", "flood"}
    assert rows and all(r["result"] == "PASS" for r in rows), rows
