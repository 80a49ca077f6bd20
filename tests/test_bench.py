"""scripts/bench.py as a person runs it: a small mesh with a node killed halfway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
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
