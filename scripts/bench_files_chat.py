"""Chat latency behind bulk file data: one TCP connection or two (issue 14, docs/files.md §8).

Everything on 127.0.0.1, in one process, so send and receive times share one clock.
Loopback is not a slow link, so the receiver *reads* the bulk connection at a fixed rate
(``--rate-mbit``, default 100 Mbit/s): the bytes waiting behind that bottleneck are
the ones a real link would hold.  A chat frame (a few dozen bytes) is sent every
``--every-ms`` while a sender writes file data as fast as TCP lets it; each chat frame
carries its send time and the receiver records how long it took to be read.

Modes:

* ``idle``: chat alone (the baseline).
* ``one-fifo``: chat and data on one connection, data written as 1 MiB frames
  (a chat frame waits behind the frame being written and everything in the kernel's
  buffers);
* ``one-priority``: one connection, one writer with two queues, chat first, data in
  16 KiB frames (the chat frame jumps the program's queue, not the kernel's buffers);
* ``one-priority-64k``: the same with the kernel's send and receive buffers cut to
  64 KiB (what priorities on one link would need; on a link whose bandwidth-delay
  product is above 64 KiB it also caps the data rate);
* ``two``: data on one connection, chat on another.  The receiver reads the chat
  connection at once: what fq_codel (Linux's default qdisc) or a Wi-Fi AQM does for a
  sparse flow sharing a bottleneck with a bulk one.  On a plain FIFO bottleneck the
  chat would also wait for that queue (tens of ms with a sane qdisc), never for the
  megabytes in the sender's socket buffer.

Run: ``python scripts/bench_files_chat.py [--seconds 4] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import socket
import statistics
import struct
import threading
import time

HEADER = struct.Struct("!IB")  # length of what follows the header, kind (0 chat, 1 data)
CHAT, DATA = 0, 1


def _pair(buffer_bytes: int = 0) -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1 (client side, server side); with
    ``buffer_bytes``, SO_SNDBUF and SO_RCVBUF set on both ends before connecting."""
    with socket.socket() as listener:
        client = socket.socket()
        for s in (listener, client):
            if buffer_bytes:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def _chat_frame() -> bytes:
    body = struct.pack("!d", time.perf_counter())
    return HEADER.pack(len(body), CHAT) + body


def _reader(sock: socket.socket, rate_bytes_s: float | None, latencies: list[float]) -> None:
    """Read frames, at most ``rate_bytes_s`` (None: at once); record chat latencies."""
    buf = bytearray()
    start = time.perf_counter()
    total = 0
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        now = time.perf_counter()
        buf += data
        while len(buf) >= HEADER.size:
            length, kind = HEADER.unpack_from(buf)
            if len(buf) < HEADER.size + length:
                break
            if kind == CHAT:
                (sent,) = struct.unpack_from("!d", buf, HEADER.size)
                latencies.append(now - sent)
            del buf[: HEADER.size + length]
        total += len(data)
        if rate_bytes_s:
            wait = start + total / rate_bytes_s - time.perf_counter()
            if wait > 0:
                time.sleep(wait)


def run(mode: str, seconds: float, rate_bytes_s: float, every_s: float) -> dict[str, float]:
    """One mode; returns chat latency figures in milliseconds and the data rate."""
    stop = threading.Event()
    latencies: list[float] = []
    data_sent = [0]
    threads: list[threading.Thread] = []
    bulk_c, bulk_s = _pair(64 * 1024 if mode == "one-priority-64k" else 0)
    chat_c, chat_s = _pair() if mode == "two" else (bulk_c, bulk_s)
    lock = threading.Lock()
    chat_q: queue.Queue[bytes] = queue.Queue()

    def bulk_fifo() -> None:
        frame = HEADER.pack(1 << 20, DATA) + bytes(1 << 20)
        while not stop.is_set():
            with lock:
                try:
                    bulk_c.sendall(frame)
                except OSError:
                    return
            data_sent[0] += len(frame)

    def writer_priority() -> None:
        frame = HEADER.pack(16384, DATA) + bytes(16384)
        while not stop.is_set():
            try:
                chat = chat_q.get_nowait()
            except queue.Empty:
                chat = None
            try:
                if chat is not None:
                    bulk_c.sendall(chat)
                else:
                    bulk_c.sendall(frame)
                    data_sent[0] += len(frame)
            except OSError:
                return

    if mode != "idle":
        threads.append(threading.Thread(target=_reader, args=(bulk_s, rate_bytes_s, latencies)))
    if mode in ("two", "idle"):
        threads.append(threading.Thread(target=_reader, args=(chat_s, None, latencies)))
    if mode in ("one-fifo", "two"):
        threads.append(threading.Thread(target=bulk_fifo))
    if mode.startswith("one-priority"):
        threads.append(threading.Thread(target=writer_priority))
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    time.sleep(0.5)  # let the data fill the buffers first
    sent = 0
    while time.perf_counter() - started < seconds:
        frame = _chat_frame()  # stamped when the user sends the line
        if mode.startswith("one-priority"):
            chat_q.put(frame)
        else:
            with lock if mode == "one-fifo" else _NoLock():
                chat_c.sendall(frame)
        sent += 1
        time.sleep(every_s)
    elapsed = time.perf_counter() - started
    stop.set()
    for s in {bulk_c, bulk_s, chat_c, chat_s}:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
    for thread in threads:
        thread.join(10)
    ms = sorted(x * 1000 for x in latencies)
    return {
        "chat_sent": sent,
        "chat_received": len(ms),
        "p50_ms": round(statistics.median(ms), 3) if ms else float("nan"),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 3) if ms else float("nan"),
        "max_ms": round(ms[-1], 3) if ms else float("nan"),
        "data_mbit_s": round(data_sent[0] * 8 / elapsed / 1e6, 1),
    }


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    """Run every mode and print a table (or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    parser.add_argument("--every-ms", type=float, default=50.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {
        mode: run(mode, args.seconds, args.rate_mbit * 1e6 / 8, args.every_ms / 1000)
        for mode in ("idle", "one-fifo", "one-priority", "one-priority-64k", "two")
    }
    if args.json:
        print(json.dumps(results))
        return
    print(f"chat every {args.every_ms:g} ms, data read at {args.rate_mbit:g} Mbit/s, 127.0.0.1")
    print(f"{'mode':17} {'chat p50':>10} {'p95':>10} {'max':>10} {'received':>9} {'data':>12}")
    for mode, r in results.items():
        print(
            f"{mode:17} {r['p50_ms']:>8.2f}ms {r['p95_ms']:>8.2f}ms {r['max_ms']:>8.2f}ms "
            f"{r['chat_received']:>4}/{r['chat_sent']:<4} {r['data_mbit_s']:>7.1f}Mbit/s"
        )


if __name__ == "__main__":
    main()
