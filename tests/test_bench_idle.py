"""``scripts/bench_idle.py``, small: 4 processes on 127.0.0.1 (``--no-mdns``,
static peers), a 2-second idle window; the figures it prints are there and
sane.  Its real runs are in ``docs/performance.md``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_idle.py"


def test_bench_idle_reports_frames_cpu_and_links() -> None:
    argv = [sys.executable, str(SCRIPT), "--nodes", "4", "--seconds", "2", "--settle", "1"]
    done = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 4 and result["mdns"] is False
    assert 1 <= result["links_median"] <= result["links_max"] <= 3
    assert result["frames_in_per_s"] > 0 and result["frames_out_per_s"] > 0
    assert 0 <= result["cpu_pct"] <= result["cpu_pct_max"] < 100
