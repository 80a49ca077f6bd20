"""scripts/bench_chat_during_transfer.py: its pure parts (options, tc commands,
percentiles, the table, the JSON), the reader's arrival stamps and the congestion
control shim on 127.0.0.1, and, in network namespaces, a short run as a person
makes it (the report's shape, not its figures)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netns_lab import netns_available

from p2pchat.harness import stop
from p2pchat.transport import BULK_TOS

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench_chat_during_transfer.py"
sys.path.insert(0, str(BENCH.parent))
import bench_chat_during_transfer as bc  # noqa: E402

# -- the pure parts ----------------------------------------------------------------------


def test_qdisc_option() -> None:
    assert bc.parse_qdiscs("fq_codel,fifo") == ["fifo", "fq_codel"]
    assert bc.parse_qdiscs("fq_htb") == ["fq_htb"]
    for bad in ("", "fifo,fifo", "red", "fifo,,fq_codel"):
        with pytest.raises(argparse.ArgumentTypeError):
            bc.parse_qdiscs(bad)


def test_tc_commands_put_the_queue_behind_the_token_bucket() -> None:
    tbf = "qdisc add dev eth0 root handle 1: tbf rate 100mbit burst 64kb latency 50ms"
    assert [" ".join(c) for c in bc.qdisc_commands("fifo", 100_000_000)] == [tbf]
    fq = [" ".join(c) for c in bc.qdisc_commands("fq_codel", 100_000_000)]
    assert fq == [tbf, "qdisc add dev eth0 parent 1:1 handle 10: fq_codel"]
    htb = [" ".join(c) for c in bc.qdisc_commands("fq_htb", 20_000_000, "v1")]
    assert htb[0] == tbf.replace("eth0", "v1").replace("100mbit", "20mbit")
    assert htb[1] == "qdisc add dev v1 parent 1:1 handle 10: htb"
    leaves = [c for c in htb if c.startswith("class add dev v1 parent 10:1 ")]
    assert len(leaves) == bc.FQ_HTB_CLASSES
    assert [c.split()[7] for c in leaves] == [f"10:{m:x}" for m in range(0x10, 0x50)]
    assert htb[-1].startswith("filter add dev v1 parent 10: protocol all prio 1 bpf bytecode")
    # The classifier's last two steps make class 10:10 .. 10:4f of the flow hash.
    steps = [tuple(int(x) for x in op.split()) for op in bc.FQ_HTB_FILTER.split(",")[1:]]
    assert steps[1] == (84, 0, 0, 63)  # and #63
    assert steps[2] == (68, 0, 0, 0x10 << 16 | 0x10)  # or #0x100010
    # dscp: CS1 (p2pchat's data links) in a class served after everything else.
    dscp = [" ".join(c) for c in bc.qdisc_commands("dscp", 100_000_000)]
    assert dscp[0] == tbf
    assert dscp[1] == "qdisc add dev eth0 parent 1:1 handle 10: htb default 10"
    assert "classid 10:10 htb prio 0 rate 100mbit" in dscp[3]
    assert "classid 10:20 htb prio 7" in dscp[4]
    assert dscp[5].endswith("u32 match ip dsfield 0x20 0xfc flowid 10:20")
    assert bc.CS1_TOS == BULK_TOS
    pf = [" ".join(c) for c in bc.qdisc_commands("pfifo_fast", 100_000_000)]
    assert pf == [tbf, "qdisc add dev eth0 parent 1:1 handle 10: pfifo_fast"]
    with pytest.raises(ValueError):
        bc.qdisc_commands("red", 100_000_000)


def test_percentile_is_an_observed_value() -> None:
    assert bc.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert bc.percentile([float(v) for v in range(1, 21)], 95) == 19.0
    assert bc.percentile([7.0], 95) == 7.0
    assert math.isnan(bc.percentile([], 50))


def _heard(text: str, ts: float, latency_ms: float) -> bc.Heard:
    return bc.Heard(text, ts, ts + latency_ms / 1000)


def test_collect_counts_each_line_once_per_listener_and_what_was_lost() -> None:
    texts = [bc.line_text("fifo", "idle", "s", k) for k in range(3)]
    a = [_heard(texts[0], 100.0, 2.0), _heard(texts[1], 100.05, 4.0)]
    b = [_heard(t, 100.0 + k * 0.05, 6.0) for k, t in enumerate(texts)]
    b.append(_heard("lat fifo idle r1 0", 100.0, 99.0))  # another direction's line
    stats = bc.collect(texts, [a, b])
    assert (stats.sent, stats.received, stats.lost) == (6, 5, 1)
    assert stats.p(50) == pytest.approx(6.0)
    assert stats.max_ms == pytest.approx(6.0)
    assert min(stats.latencies_ms) == pytest.approx(2.0)
    late = bc.collect(texts, [b], ts_max=100.06)  # the line made after it is left out
    assert (late.sent, late.received) == (2, 2)


def test_ratio_and_goal() -> None:
    idle = bc.Stats(10, [1.0] * 10)
    assert bc.latency_ratio(bc.Stats(10, [1.9] * 10), idle) == pytest.approx(1.9)
    assert bc.goal_met(1.9) is True
    assert bc.goal_met(2.01) is False
    assert bc.goal_met(math.nan) is None
    assert math.isnan(bc.latency_ratio(bc.Stats(10, []), idle))
    assert math.isnan(bc.latency_ratio(idle, bc.Stats(0, [])))


def _results() -> list[bc.QdiscResult]:
    def phases(idle: float, during: float) -> dict[str, bc.Stats]:
        return {"idle": bc.Stats(40, [idle] * 40), "transfer": bc.Stats(40, [during] * 39)}

    fifo = bc.QdiscResult(
        "fifo",
        {"from_sender": phases(1.2, 64.0), "from_receiver": phases(1.3, 1.1)},
        bc.Transfer(bytes_during=25_000_000, seconds=2.0),
    )
    fq = bc.QdiscResult(
        "fq_htb",
        {"from_sender": phases(1.2, 1.7), "from_receiver": phases(1.3, 1.2)},
        bc.Transfer(bytes_during=24_000_000, seconds=2.0, finished_early=True),
    )
    return [fifo, fq]


def _setup() -> bc.Setup:
    return bc.Setup(
        rate_bps=100_000_000,
        seconds=2.0,
        interval_ms=50.0,
        receivers=1,
        size_bytes=50_000_000,
        qdiscs=["fifo", "fq_codel", "fq_htb"],
        cc="cubic",
        load=[
            {"loadavg_1m": 0.5, "cpus": 2, "bench_files_running": False},
            {"loadavg_1m": 1.25, "cpus": 2, "bench_files_running": True},
        ],
        unavailable={"fq_codel": "not available on this kernel"},
    )


def test_table_shape() -> None:
    text = bc.format_table(_setup(), _results())
    lines = text.splitlines()
    assert lines[0].startswith("chat during a file transfer: every uplink tbf 100mbit")
    assert "TCP congestion control cubic" in lines[0]
    assert "one MSS per packet" in lines[0]
    assert lines[1] == (
        "machine: 2 CPU(s), load average (1 min) 0.50 .. 1.25 over 2 samples; "
        "bench_files.py running in 1 of them"
    )
    rows = [ln.split() for ln in lines if ln.split()[:1] in (["fifo"], ["fq_htb"])]
    assert ["fifo", "sender->", "transfer", "39/40", "64.0", "64.0", "64.0"] in rows
    assert ["fq_htb", "receiver->", "idle", "40/40", "1.3", "1.3", "1.3"] in rows
    assert "fifo      transfer: 100.0 Mbit/s to the receivers during the phase" in text
    assert "96.0 Mbit/s to the receivers during the phase (a receiver finished early)" in text
    verdicts = [ln for ln in lines if "goal met" in ln or "goal MISSED" in ln]
    assert len(verdicts) == 4
    assert "sender -> receivers" in verdicts[0] and verdicts[0].endswith("53.33   goal MISSED")
    assert verdicts[2].endswith("1.42   goal met")
    assert "fq_codel: not available on this kernel" in text


def test_json_is_plain_and_complete() -> None:
    setup = _setup()
    results = _results()
    results[1].stats["from_receiver"]["transfer"] = bc.Stats(0, [])
    out = bc.json_result(setup, results)
    json.dumps(out, allow_nan=False)  # plain JSON: no NaN
    assert out["unavailable"] == {"fq_codel": "not available on this kernel"}
    assert [x["bench_files_running"] for x in out["load"]] == [False, True]
    assert set(out["qdiscs"]) == {"fifo", "fq_htb"}
    fifo = out["qdiscs"]["fifo"]
    assert fifo["from_sender"]["transfer"] == {
        "sent": 40,
        "received": 39,
        "lost": 1,
        "p50_ms": 64.0,
        "p95_ms": 64.0,
        "max_ms": 64.0,
    }
    assert fifo["from_sender"]["ratio_p50"] == pytest.approx(53.333)
    assert fifo["from_sender"]["goal_met"] is False
    assert fifo["transfer"]["mbit_s"] == 100.0
    empty = out["qdiscs"]["fq_htb"]["from_receiver"]
    assert empty["transfer"]["p50_ms"] is None
    assert (empty["ratio_p50"], empty["goal_met"]) == (None, None)


def test_command_line_defaults_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    args = bc.parse_args([])
    assert args.qdisc == ["fifo", "fq_codel", "fq_htb", "dscp", "pfifo_fast"]
    assert (args.seconds, args.interval_ms, args.receivers) == (10.0, 50.0, 1)
    assert (args.rate, args.bottleneck, args.cc, args.gso) == (100_000_000, "host", "", False)
    assert bc.default_size(100_000_000, 10.0) == 250_000_000  # two phases at the rate
    assert bc.default_size(1_000_000, 1.0) == 1_000_000  # never under 1 MB
    for bad in (
        ["--seconds", "0"],
        ["--seconds", "nan"],
        ["--interval-ms", "1"],
        ["--receivers", "3"],
        ["--size", "-1"],
        ["--qdisc", "red"],
        ["--bottleneck", "router"],
    ):
        with pytest.raises(SystemExit) as exc:
            bc.parse_args(bad)
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_without_iproute2_it_says_how_to_install_it_and_exits_2(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # neither ip nor tc on it
    done = subprocess.run(
        [sys.executable, str(BENCH)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 2
    assert "ip and tc not found: install iproute2" in done.stderr
    assert done.stdout == ""


# -- on 127.0.0.1 ------------------------------------------------------------------------

_PRINT_MESSAGE = """
import json, sys, time
sys.stdin.readline()
for text in ("hello", "lat fifo idle s 0"):
    print(json.dumps({"event": "message", "text": text, "ts": time.time(), "self": False}))
print(json.dumps({"event": "message", "text": "lat fifo idle r1 0", "ts": 1.0, "self": True}))
sys.stdout.flush()
sys.stdin.readline()
"""


def test_the_reader_stamps_each_measured_line_when_it_reads_it() -> None:
    node = bc.StampedNode.spawn([sys.executable, "-c", _PRINT_MESSAGE], "printer")
    assert isinstance(node, bc.StampedNode)
    try:
        before = time.time()
        node.send_line("go")
        node.wait_event("message")
        node.wait_event_where(lambda ev: ev.get("self") is True, "our own line")
        heard = list(node.heard)
        assert [h.text for h in heard] == ["lat fifo idle s 0"]  # not ours, not another's
        assert before <= heard[0].ts <= heard[0].arrival <= time.time()
        node.close_stdin()
        assert node.wait(timeout_s=20) == 0
    finally:
        stop([node])


_CC_CHECK = """
import socket
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
cli = socket.socket()
cli.connect(srv.getsockname())
conn, _ = srv.accept()
for s in (srv, cli, conn):
    print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\\0").decode())
"""


@pytest.mark.skipif(not hasattr(socket, "TCP_CONGESTION"), reason="TCP_CONGESTION is Linux's")
def test_congestion_control_shim_sets_every_tcp_socket(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(bc.CC_SHIM)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), **{bc.CC_ENV: "reno"})  # always built in
    done = subprocess.run(
        [sys.executable, "-c", _CC_CHECK], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["reno", "reno", "reno"]  # listener, dialler, accepted


# -- in network namespaces ---------------------------------------------------------------


def _lab_or_skip() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.skip(why)
    if shutil.which("tc") is None:
        pytest.skip("tc (iproute2) is not installed")


def _bench_namespaces(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [ln.split()[0] for ln in out.stdout.splitlines() if ln.startswith(f"bc-{pid}-")]


@pytest.mark.netns
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "extra",
    [[], ["--bottleneck", "switch", "--qdisc", "fifo", "--cc", "reno"]],
    ids=["uplinks-every-qdisc", "switch-fifo-reno"],
)
def test_short_run_in_namespaces_reports_both_directions_and_phases(extra: list[str]) -> None:
    _lab_or_skip()
    argv = [sys.executable, str(BENCH), "--seconds", "2", "--rate", "20mbit", "--size", "8"]
    argv += ["--json", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=280)
    finally:
        if proc.poll() is None:  # it tears its lab down on SIGTERM
            proc.terminate()
            proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    lines = stdout.strip().splitlines()
    result = json.loads(lines[-1])
    text = "\n".join(lines[:-1])
    where = "every switch port" if extra else "every uplink"
    assert text.startswith(f"chat during a file transfer: {where} tbf 20mbit")
    assert "chat p50 during the transfer / idle (goal <= 2)" in text
    # Every qdisc asked for is measured, or said to be missing from this kernel.
    asked = {"fifo"} if extra else set(bc.QDISCS)
    assert set(result["qdiscs"]) | set(result["unavailable"]) == asked
    assert {"fifo", "fq_htb"} & asked <= set(result["qdiscs"])  # in any kernel with tbf
    assert result["cc"] == "reno" if extra else result["cc"].endswith("(the kernel's default)")
    for qdisc, entry in result["qdiscs"].items():
        assert entry["transfer"]["failures"] == [], (qdisc, entry["transfer"])
        assert entry["transfer"]["mbit_s"] > 1  # the file flowed during the phase
        for direction in bc.DIRECTIONS:
            for phase in bc.PHASES:
                s = entry[direction][phase]
                assert s["sent"] >= 10, (qdisc, direction, phase, s)  # 2 s / 50 ms, less if early
                assert s["received"] >= s["sent"] - 2, (qdisc, direction, phase, s)
                assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["max_ms"]
            assert entry[direction]["ratio_p50"] > 0
            assert isinstance(entry[direction]["goal_met"], bool)
        assert f"{qdisc:<9} sender->       transfer" in text
    assert not _bench_namespaces(proc.pid), "namespaces left behind"
