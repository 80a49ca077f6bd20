"""scripts/bench_files.py: its pure parts (options, medians and ratios, the table, the
JSON), and, in network namespaces, the baselines with a small file as a person runs it."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for
from netns_lab import netns_available

from p2pchat.harness import NodeProcess, WaitFailed, stop

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench_files.py"
sys.path.insert(0, str(BENCH.parent))
import bench_files as bf  # noqa: E402

# -- the pure parts ----------------------------------------------------------------------


def test_receivers_option() -> None:
    assert bf.parse_receivers("10,1,5,2") == [1, 2, 5, 10]
    assert bf.parse_receivers("3") == [3]
    for bad in ("", "1,,2", "a", "0", "11", "1,1", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            bf.parse_receivers(bad)


def test_rate_option_in_tc_units() -> None:
    assert bf.parse_rate("100mbit") == 100_000_000
    assert bf.parse_rate("1gbit") == 1_000_000_000
    assert bf.parse_rate("1.5MBIT") == 1_500_000
    assert bf.parse_rate("500kbit") == 500_000
    for bad in ("100", "100mbps", "fast", "0mbit", "999bit", "-1mbit"):
        with pytest.raises(argparse.ArgumentTypeError):
            bf.parse_rate(bad)
    for bits in (100_000_000, 1_000_000_000, 1_500_000, 7_000, 1234):
        assert bf.parse_rate(bf.tc_rate(bits)) == bits
    assert bf.tc_rate(100_000_000) == "100mbit"
    assert bf.wire_seconds(50_000_000, 100_000_000) == pytest.approx(4.0)


def test_command_line_defaults_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    args = bf.parse_args([])
    assert args.receivers == [1, 2, 5, 10]
    assert args.size == 50.0
    assert args.rate == 100_000_000
    assert args.runs == 1
    assert args.p2pchat is True
    assert args.interrupt_sender == 0
    assert bf.parse_args(["--no-p2pchat"]).p2pchat is False
    for bad in (
        ["--size", "0"],
        ["--size", "nan"],
        ["--runs", "0"],
        ["--receivers", "12"],
        ["--interrupt-sender", "-1"],
        ["--rate", "fast"],
    ):
        with pytest.raises(SystemExit) as exc:
            bf.parse_args(bad)
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_without_iproute2_it_says_how_to_install_it_and_exits_2(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # neither ip nor tc on it
    done = subprocess.run(
        [sys.executable, str(BENCH), "--no-p2pchat"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    assert "ip and tc not found: install iproute2" in done.stderr
    assert done.stdout == ""


def test_median_and_ratio_ignore_what_is_missing() -> None:
    assert bf.median([3.0, 1.0, 2.0]) == 2.0
    assert bf.median([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(bf.median([]))
    assert math.isnan(bf.median([math.nan]))
    assert bf.ratio(3.0, 2.0) == 1.5
    assert math.isnan(bf.ratio(math.nan, 2.0))
    assert math.isnan(bf.ratio(1.0, 0.0))


def _trials() -> list[bf.Trial]:
    """Two runs: the TCP copy, the server at 1 and 10, p2pchat at 1 and 10 (one
    receiver failing in the second run at 10)."""
    return [
        bf.Trial("tcp", 1, [4.0]),
        bf.Trial("tcp", 1, [4.4]),
        bf.Trial("server", 1, [4.2]),
        bf.Trial("server", 1, [4.6]),
        bf.Trial("server", 10, [40.0] * 9 + [42.0]),
        bf.Trial("server", 10, [41.0] * 9 + [44.0]),
        bf.Trial("p2pchat", 1, [4.5]),
        bf.Trial("p2pchat", 1, [4.9]),
        bf.Trial("p2pchat", 10, [9.0] * 10),
        bf.Trial("p2pchat", 10, [9.0] * 9 + [math.nan], ["receiver 10: failed: disk full"]),
    ]


def test_summary_takes_the_last_receiver_and_the_median_over_runs() -> None:
    summary = bf.summarize(_trials())
    assert summary["tcp"][1].completion_s == pytest.approx(4.2)
    assert summary["server"][10].completion_s == pytest.approx(43.0)
    assert summary["server"][10].complete == 2
    cell = summary["p2pchat"][10]
    assert (cell.runs, cell.complete) == (2, 1)
    assert cell.completion_s == pytest.approx(9.0)  # the failed run has no completion
    assert cell.failures == ["receiver 10: failed: disk full"]
    assert not bf.Trial("p2pchat", 2, [1.0]).all_done  # a receiver missing altogether
    r = bf.ratios(summary, [1, 10])
    assert r["p2pchat/tcp"] == pytest.approx(4.7 / 4.2)
    assert r["p2pchat(N)/p2pchat(1)"] == pytest.approx(9.0 / 4.7)
    assert r["server(N)/server(1)"] == pytest.approx(43.0 / 4.4)
    assert r["N"] == 10
    assert math.isnan(bf.ratios(summary, [1])["server(N)/server(1)"])


def _setup(**kw: object) -> bf.Setup:
    fields: dict[str, object] = {
        "size_bytes": 50_000_000,
        "rate_bps": 100_000_000,
        "runs": 2,
        "counts": [1, 10],
    }
    fields.update(kw)
    return bf.Setup(**fields)  # type: ignore[arg-type]


def test_table_shape() -> None:
    text = bf.format_table(_setup(), bf.summarize(_trials()))
    lines = text.splitlines()
    assert lines[0].startswith("files bench: 50 MB of random bytes, every uplink tbf 100mbit")
    assert "one copy 4.00 s" in lines[0]
    assert "median of 2 run(s)" in lines[0]
    header = next(line for line in lines if line.lstrip().startswith("receivers"))
    assert header.split() == ["receivers", "tcp", "copy", "server", "p2pchat"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line[:9].strip().isdigit()}
    assert rows["1"] == ["4.20", "4.40", "4.70"]
    assert rows["10"] == ["-", "43.00", "9.00", "(1/2)"]  # 1 of 2 runs complete
    assert "p2pchat / tcp copy, 1 receiver" in text and "1.12   (goal <= 1.15)" in text
    assert "p2pchat(10) / p2pchat(1)" in text and "1.91   (goal <= 2.5)" in text
    assert "server(10) / server(1)" in text and "9.77   (about 10 expected)" in text
    assert "p2pchat (10 receivers): receiver 10: failed: disk full" in text


def test_table_and_json_when_p2pchat_is_not_available() -> None:
    trials = [t for t in _trials() if t.system != "p2pchat"]
    setup = _setup(unavailable={"p2pchat": bf.UNAVAILABLE_NO_SEND}, interrupt_s=10.0)
    text = bf.format_table(setup, bf.summarize(trials))
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line[:9].strip()}
    assert rows["1"] == ["4.20", "4.40", "n/a"]
    assert "p2pchat: not available (no /send)" in text
    assert "sender stopped for 10 s in the server and p2pchat runs" in text
    assert "server    1 receiver(s): yes" in text
    out = bf.json_result(setup, bf.summarize(trials))
    json.dumps(out, allow_nan=False)  # plain JSON: no NaN
    assert out["systems"]["p2pchat"] == {"available": False, "why": "not available (no /send)"}
    assert out["systems"]["server"]["by_receivers"]["10"]["completion_s"] == 43.0
    assert out["ratios"]["p2pchat/tcp"] is None
    assert out["ratios"]["N"] == 10
    series = bf.plot_series(bf.summarize(trials))
    assert set(series) == {"tcp", "server"}  # nothing to draw for p2pchat
    assert series["server"][0] == [1, 10]
    assert series["server"][1] == pytest.approx([4.4, 43.0])


def test_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    trials = [t for t in _trials() if t.system != "p2pchat"]
    out = tmp_path / "files.png"
    bf.plot(str(out), _setup(), bf.summarize(trials))
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_progress_events_read_in_any_of_the_usual_shapes() -> None:
    size = 1000
    assert bf._progress_fraction({"fraction": 0.4}, size) == 0.4
    assert bf._progress_fraction({"percent": 30}, size) == 0.3
    assert bf._progress_fraction({"received": 500}, size) == 0.5
    assert bf._progress_fraction({"done_bytes": 250, "size": 1000, "speed_Bps": 9e6}, size) == 0.25
    assert bf._progress_fraction({"have": 100, "size": 200}, size) == 0.5
    assert bf._progress_fraction({"speed": 12}, size) == 0.0


class _FakeProc:
    def __init__(self, rc: int | None) -> None:
        self.rc = rc

    def poll(self) -> int | None:
        return self.rc


class _FakeNode:
    """What :func:`bf.files_stats` uses of a harness ``NodeProcess``: ``stats``
    None is a node that has exited (no answer)."""

    def __init__(self, label: str, stats: dict[str, object] | None) -> None:
        self.label = label
        self.stats = stats
        self.sent: list[str] = []
        self.proc = _FakeProc(None if stats is not None else 1)

    def send_line(self, text: str) -> None:
        self.sent.append(text)

    def wait_event(self, kind: str, /, *, timeout_s: float) -> dict[str, object]:
        if self.stats is None or kind != "stats" or self.sent != ["/stats"]:
            raise WaitFailed(f"{self.label}: no {kind} within {timeout_s} s")
        return {"event": "stats", **self.stats}


def test_files_stats_keeps_the_file_counters_and_refusals_of_each_node() -> None:
    """The bench's per-node evidence after a p2pchat run: ``/stats``'s ``files``
    counters and the file/data refusals, nonzero only; a node that does not
    answer is left out."""
    sender = _FakeNode(
        "s",
        {
            "files": {"chunks_served": 331, "served_bytes": 86_700_160, "files_done": 0},
            "frames_refused": {"bad_chunk": 0, "mac": 2, "data_reassembly": 1},
            "rate_limited": {"file_in_flight": 4, "origin": 9},
            "links_refused": {"data_busy": 3, "full": 1},
        },
    )
    gone = _FakeNode("r1", None)
    assert bf.files_stats([sender, gone]) == {
        "s": {
            "chunks_served": 331,
            "served_bytes": 86_700_160,
            "frames_refused.data_reassembly": 1,
            "rate_limited.file_in_flight": 4,
            "links_refused.data_busy": 3,
        }
    }
    assert sender.sent == ["/stats"] and gone.sent == []  # an exited node is not written to


def test_interrupter_stops_the_sender_then_continues_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stopper = bf.Interrupter(child.pid, 5.0, start=100.0, half_copy_s=2.0)
        stopper.check(100.5, 0.1)
        assert math.isnan(stopper.stopped_at)  # neither 30 % nor half a copy's time yet
        stopper.check(101.0, 0.3)
        assert stopper.stopped_at == 101.0
        _wait_state(child.pid, stopped=True)
        stopper.check(105.9, 0.9)
        assert _stopped(child.pid)
        stopper.check(106.0, 0.9)
        _wait_state(child.pid, stopped=False)
        trial = stopper.fill(bf.Trial("server", 1, [9.0]))
        assert (trial.stopped_at_s, trial.interrupted_s) == (1.0, 5.0)
        timed = bf.Interrupter(child.pid, 1.0, start=0.0, half_copy_s=2.0)
        timed.check(2.0, 0.0)  # no progress reported: half a copy's time is the trigger
        _wait_state(child.pid, stopped=True)
        timed.resume()  # on the way out, whatever the time
        _wait_state(child.pid, stopped=False)
    finally:
        os.kill(child.pid, signal.SIGCONT)  # should an assertion have failed while stopped
        child.kill()
        child.wait()


def test_interrupt_after_stops_at_that_time_whatever_the_progress() -> None:
    """``--interrupt-after 3``: the progress trigger is off, the time is 3 s after the
    start; the table's head and the JSON say so."""
    args = bf.parse_args(["--interrupt-sender", "10", "--interrupt-after", "3"])
    assert (args.interrupt_sender, args.interrupt_after) == (10.0, 3.0)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ctx = bf.Ctx(None, Path("x"), "", 50 * bf.MB, Path("."), 10**8, 10.0, 60.0)
        ctx.interrupt_after_s = 3.0
        stopper = ctx.stopper(child.pid, start=0.0)
        stopper.check(2.9, 0.99)  # nearly all there, but not yet 3 s
        assert math.isnan(stopper.stopped_at)
        stopper.check(3.0, 0.99)
        _wait_state(child.pid, stopped=True)
        stopper.resume()
        _wait_state(child.pid, stopped=False)
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.kill()
        child.wait()
    setup = _setup()
    setup.interrupt_s, setup.interrupt_after_s = 10.0, 3.0
    text = bf.format_table(setup, bf.summarize([]))
    assert "sender stopped for 10 s in the server and p2pchat runs (3 s after the start)" in text
    assert bf.json_result(setup, {})["interrupt_after_s"] == 3.0


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def _wait_state(pid: int, stopped: bool) -> None:
    wait_for(lambda: _stopped(pid) == stopped, 5.0, f"pid {pid} stopped={stopped}")


# -- the workers, on 127.0.0.1 -----------------------------------------------------------


def _worker(mode: str, *args: str) -> NodeProcess:
    argv = [sys.executable, str(BENCH), f"--worker-{mode}", *args]
    return NodeProcess.spawn(argv, mode)


def test_http_server_worker_and_the_urllib_client(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    data = os.urandom(300_000)
    (tmp_path / "src" / "f.bin").write_bytes(data)
    server = _worker("http", "--addr", "127.0.0.1", "--path", str(tmp_path / "src"))
    try:
        port = server.wait_event("ready")["port"]
        url = f"http://127.0.0.1:{port}/f.bin"
        argv = [sys.executable, str(BENCH), "--worker-get", "--url", url]
        got = subprocess.run([*argv, "--path", str(tmp_path / "out")], timeout=60, check=False)
        assert got.returncode == 0
        assert (tmp_path / "out").read_bytes() == data
        server.close_stdin()  # the server ends when its stdin does
        assert server.wait(timeout_s=20) == 0
    finally:
        stop([server])


def test_tcp_copy_workers(tmp_path: Path) -> None:
    data = os.urandom(500_000)
    (tmp_path / "src").write_bytes(data)
    recv = _worker("tcp-recv", "--addr", "127.0.0.1", "--path", str(tmp_path / "out"))
    procs = [recv]
    try:
        port = recv.wait_event("ready")["port"]
        send = _worker(
            "tcp-send", "--addr", "127.0.0.1", "--port", str(port), "--path", str(tmp_path / "src")
        )
        procs.append(send)
        send.wait_event("ready")
        send.send_line("go")
        done = recv.wait_event("done")
        start = send.wait_event("sent")["start"]
        assert done["bytes"] == len(data)
        assert 0 < done["end"] - start < 30  # one monotonic clock for both processes
        assert (tmp_path / "out").read_bytes() == data
    finally:
        stop(procs)


# -- in network namespaces ---------------------------------------------------------------


def _lab_or_skip() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.skip(why)
    if shutil.which("tc") is None:
        pytest.skip("tc (iproute2) is not installed")


@pytest.mark.netns
@pytest.mark.timeout(240)
def test_baselines_in_namespaces_small_file() -> None:
    _lab_or_skip()
    argv = [sys.executable, str(BENCH), "--size", "2", "--receivers", "1,2", "--json"]
    argv += ["--interrupt-sender", "0.5"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=220)
    finally:
        if proc.poll() is None:  # it tears its lab down on SIGTERM
            proc.terminate()
            proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    lines = stdout.strip().splitlines()
    result = json.loads(lines[-1])
    text = "\n".join(lines[:-1])
    assert text.startswith("files bench: 2 MB of random bytes, every uplink tbf 100mbit")
    header = next(line for line in lines if line.lstrip().startswith("receivers"))
    assert header.split() == ["receivers", "tcp", "copy", "server", "p2pchat"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[:-1] if ln[:9].strip().isdigit()}
    assert set(rows) == {"1", "2"}
    assert rows["2"][0] == "-"  # the TCP copy goes to one receiver only
    assert "server(2) / server(1)" in text
    systems = result["systems"]
    wire_s = 2 * 8 / 100  # 2 MB at 100 Mbit/s
    tcp = systems["tcp"]["by_receivers"]["1"]
    assert tcp["complete_runs"] == 1, tcp["failures"]
    # The token bucket is on: the copy cannot beat the rate (loopback-fast would be ~10 ms).
    assert tcp["completion_s"] >= 0.8 * wire_s
    for n in ("1", "2"):
        cell = systems["server"]["by_receivers"][n]
        assert cell["complete_runs"] == 1, cell["failures"]
        # Stopped for 0.5 s, and every client still finished.  (What the kernel already
        # holds in the socket buffers still flows meanwhile: 2 MB may all be there.)
        assert cell["interrupted"]
        assert cell["completion_s"] >= int(n) * 0.8 * wire_s
    assert "server    2 receiver(s): yes" in text
    if not systems["p2pchat"]["available"]:  # the transfer has not landed (wholly) yet
        why = systems["p2pchat"]["why"]
        assert why in ("not available (no /send)", "not available (no /get)")
        assert f"p2pchat: {why}" in text
        assert rows["1"][-1] == "n/a"
    else:  # once the transfer has landed: every receiver holds a verified copy
        for n in ("1", "2"):
            cell = systems["p2pchat"]["by_receivers"][n]
            assert cell["complete_runs"] == 1, cell["failures"]
    assert not _bench_namespaces(proc.pid), "namespaces left behind"


@pytest.mark.netns
def test_cleanup_removes_namespaces_of_dead_runs_only() -> None:
    _lab_or_skip()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = f"bf-{dead.pid}-abc123-h0", f"bf-{os.getpid()}-abc123-h0"
    for ns in (stale, live):
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        done = subprocess.run(
            [sys.executable, str(BENCH), "--cleanup"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert stale in done.stdout
        names = _bench_namespaces()
        assert stale not in names
        assert live in names  # its run (this test) is alive
    finally:
        for ns in (stale, live):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _bench_namespaces(pid: int | None = None) -> list[str]:
    """The bench's namespaces (those of the run with PID ``pid`` only, when given)."""
    prefix = "bf-" if pid is None else f"bf-{pid}-"
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]


def test_a_run_counts_as_without_the_sender_only_if_all_finished_while_it_was_stopped() -> None:
    """Stopped at 5 s for 10 s: receivers done by 14 s finished from each
    other; one at 15.5 s waited for the sender; an unstopped run never counts."""
    early = bf.Trial("p2pchat", 2, [7.0, 14.0], interrupted_s=10.0, stopped_at_s=5.0)
    late = bf.Trial("p2pchat", 2, [7.0, 15.5], interrupted_s=10.0, stopped_at_s=5.0)
    plain = bf.Trial("p2pchat", 2, [7.0, 8.0])
    assert (early.without_sender, late.without_sender, plain.without_sender) == (True, False, False)
    setup = _setup(interrupt_s=10.0, counts=[2])
    summary = bf.summarize([early, late])
    assert "p2pchat   2 receiver(s): yes (1/2 before)" in bf.format_table(setup, summary)
    by_n = bf.json_result(setup, summary)["systems"]["p2pchat"]["by_receivers"]["2"]
    assert by_n["finished_without_sender_runs"] == 1
