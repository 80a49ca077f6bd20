"""scripts/bench.py as a person runs it: a small mesh with a node killed halfway, and the
relay baseline with p2pchat's duties (signed lines, checked before they count)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
sys.path.insert(0, str(BENCH.parent))
import bench  # noqa: E402

KEYS = {
    "delivered_fraction",
    "latency_last_p50_ms",
    "latency_last_p99_ms",
    "lines_per_s",
    "frames_per_line",
    "duplicates_per_node_per_line",
    "cpu_ms_per_delivery",
    "rss_mb_per_node",
}


def test_bench_kill_loses_no_line_and_reports_both_systems() -> None:
    # A ring of 4: the killed node (node 1) leaves the other three linked.
    argv = [sys.executable, str(BENCH), "--nodes", "4", "--topology", "ring", "--lines", "30"]
    argv += ["--rate", "30", "--kill", "--json"]
    # The bench reaps its own workers on every path; the timeout bounds the run.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert "node 1 killed halfway" in done.stdout
    result = json.loads(lines[-1])
    assert set(result) == {"p2pchat", "relay"}
    for system in ("p2pchat", "relay"):
        assert set(result[system]) == KEYS
        assert result[system]["delivered_fraction"] == 1.0, (system, result[system])


def test_bench_relay_signed_checks_every_line() -> None:
    argv = [sys.executable, str(BENCH), "--nodes", "3", "--topology", "line", "--lines", "20"]
    argv += ["--rate", "40", "--relay-signed", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "relay clients sign and check lines" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for system in ("p2pchat", "relay"):
        assert result[system]["delivered_fraction"] == 1.0, (system, result[system])


def test_signed_relay_line_is_counted_only_if_it_checks() -> None:
    sender, receiver = bench._SignedLines(), bench._SignedLines()
    frame = sender.frame(7, bench.line_text(7, 100))
    body = frame[bench.FRAME_HEADER.size :]
    assert receiver.index(body) == 7
    forged = body.replace(b"00000007", b"00000008")  # another line under the sender's key
    assert receiver.index(forged) == -1
    assert receiver.index(b'{"type":"chat"') == -1  # not even JSON
    assert receiver.rejected == 2
