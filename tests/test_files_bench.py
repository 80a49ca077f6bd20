"""scripts/bench_files_chat.py runs, and its verdict holds: chat on its own connection
is not delayed by file data, chat behind file data on one connection is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_files_chat.py"


def test_chat_latency_one_connection_or_two() -> None:
    argv = [sys.executable, str(SCRIPT), "--seconds", "1.5", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == {"idle", "one-fifo", "one-priority", "one-priority-64k", "two"}
    assert result["two"]["chat_received"] >= result["two"]["chat_sent"] - 1
    assert result["two"]["data_mbit_s"] > 50  # the data did flow meanwhile
    # Behind the data on one connection, chat waits for the buffers to drain: 100+ ms
    # at 100 Mbit/s; on its own connection it stays far below that.
    assert result["one-fifo"]["p50_ms"] > 100
    assert result["two"]["p50_ms"] < 20
