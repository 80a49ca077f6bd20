"""scripts/bench.py as a person runs it: a small mesh with a node killed halfway, and the
relay baseline with p2pchat's duties (signed lines, checked before they count)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_bench_measures_each_node_count_in_turn() -> None:
    argv = [sys.executable, str(BENCH), "--nodes", "2,3", "--topology", "line", "--lines", "10"]
    argv += ["--rate", "40", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "p2pchat bench: 2 nodes" in done.stdout and "p2pchat bench: 3 nodes" in done.stdout
    last_two = [json.loads(line) for line in done.stdout.strip().splitlines()[-2:]]
    assert [r["nodes"] for r in last_two] == [2, 3]
    for result in last_two:
        for system in ("p2pchat", "relay"):
            assert set(result[system]) == KEYS
            assert result[system]["delivered_fraction"] == 1.0, (system, result)


def test_node_counts_on_the_command_line() -> None:
    assert bench.parse_args(["--nodes", "5,10,30"]).nodes == [5, 10, 30]
    assert bench.parse_args([]).nodes == [5]
    for bad in ("1", "5,5", "ten", str(bench.MAX_NODES + 1)):
        with pytest.raises(SystemExit):
            bench.parse_args(["--nodes", bad])


def test_plot_series_are_medians_by_ascending_node_count() -> None:
    def medians(p50: float, cpu: float) -> dict[str, float]:
        return {
            "latency_last_p50_ms": p50,
            "latency_last_p99_ms": 2 * p50,
            "cpu_ms_per_delivery": cpu,
        }

    by_n = {
        30: {"p2pchat": medians(8.0, 0.8), "relay": medians(2.0, 0.1)},
        10: {"p2pchat": medians(3.0, 0.7), "relay": medians(0.8, 0.15)},
    }
    series = bench.plot_series(by_n)
    assert series["p2pchat"] == {
        "nodes": [10.0, 30.0],
        "p50_ms": [3.0, 8.0],
        "p99_ms": [6.0, 16.0],
        "cpu_ms": [0.7, 0.8],
    }
    assert series["relay"]["cpu_ms"] == [0.15, 0.1]


def test_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (not a test dependency)")
    opts = bench.Options(
        nodes=10,
        topology="random",
        k=2,
        seed=1,
        lines=300,
        size=100,
        rate=20.0,
        runs=1,
        mesh_timeout_s=30.0,
        drain_timeout_s=10.0,
        json=False,
        plot=str(tmp_path / "bench.png"),
    )
    row = {key: 1.0 for key in bench.METRICS}
    bench.plot(
        str(tmp_path / "bench.png"),
        opts,
        {5: {s: row for s in bench.SYSTEMS}, 10: {s: row for s in bench.SYSTEMS}},
    )
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_chat_prefix_the_bench_counts_is_how_a_chat_frame_starts() -> None:
    from p2pchat import wire

    chat = wire.Chat(
        id="00" * 16, origin="11" * 8, seq=1, name="a", room="r", ts=1.0, hops=16, text="x"
    )
    frame = wire.encode_frame(chat)
    assert frame.startswith(bench.CHAT_PREFIX, bench.FRAME_HEADER.size)
    assert not wire.encode_frame(wire.Lines(batch=1, lines=[chat])).startswith(
        bench.CHAT_PREFIX, bench.FRAME_HEADER.size
    )
