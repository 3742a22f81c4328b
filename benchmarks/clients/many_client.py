"""Many streaming connections from one process: idle streams and broadcast fan-out.

A plain ``select.epoll`` loop over non-blocking sockets rather than trio: at 10,000
connections the load generator's own per-socket cost must stay far below the
server's, and this is the cheapest way Python has.

``idle``: opens ``--count`` connections in batches of ``--batch`` (each batch waits
until every connection in it has its response head), sending ``GET --path`` with
``Accept: text/event-stream``. Prints ``{"opened": n, "seconds": t}`` once all are
open, then holds them until a line arrives on stdin (or ``--hold`` seconds pass).

``broadcast``: for each value of ``--counts`` (ascending), opens subscribers up to that
many, then runs ``--rounds`` broadcasts (after one warm-up): ``POST /broadcast`` with a
100-byte message carrying the round number, timing from just before the request is
written until the last subscriber has read the message. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import resource
import select
import socket
import statistics
import sys
import time


class Opener:
    """Opens streaming connections and keeps them, in one epoll set."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.address = (host, port)
        self.request = (
            f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\naccept: text/event-stream\r\n\r\n"
        ).encode()
        self.epoll = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.heads: dict[int, bytearray] = {}

    def open_batch(self, count: int, timeout: float) -> None:
        pending: dict[int, socket.socket] = {}
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(self.address)
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                raise OSError(code, f"connect: {errno.errorcode.get(code, code)}")
            fd = sock.fileno()
            pending[fd] = sock
            self.heads[fd] = bytearray()
            self.epoll.register(fd, select.EPOLLOUT)
        deadline = time.perf_counter() + timeout
        waiting_head: set[int] = set()
        while pending:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"{len(pending)} connections of a batch did not open")
            for fd, _ in self.epoll.poll(min(left, 1.0)):
                if fd not in pending:
                    continue
                sock = pending[fd]
                if fd not in waiting_head:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise OSError(code, f"connect: {errno.errorcode.get(code, code)}")
                    sock.send(self.request)
                    waiting_head.add(fd)
                    self.epoll.modify(fd, select.EPOLLIN)
                    continue
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed a streaming connection")
                head = self.heads[fd]
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ConnectionError(f"unexpected response: {bytes(head[:40])!r}")
                del head[: end + 4]  # keep whatever body bytes followed
                del pending[fd]
                self.socks[fd] = sock
                self.epoll.modify(fd, 0)  # nothing to watch until a broadcast

    def open(self, count: int, batch: int, timeout: float) -> float:
        start = time.perf_counter()
        while len(self.socks) < count:
            self.open_batch(min(batch, count - len(self.socks)), timeout)
        return time.perf_counter() - start

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()
        self.epoll.close()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (the server's, when it runs here too)."""
    if pid is None:
        return math.nan
    with open(f"/proc/{pid}/stat") as file:
        stat = file.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broadcast_round(
    opener: Opener, marker: bytes, timeout: float, server_pid: int | None
) -> dict[str, float]:
    host, port = opener.address
    # A fresh admin connection each round: an idle one would meet keep-alive timeouts.
    admin = socket.create_connection((host, port), timeout=timeout)
    admin.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = marker + b"x" * (100 - len(marker))
    request = (
        f"POST /broadcast HTTP/1.1\r\nhost: {host}:{port}\r\n"
        f"content-type: text/plain\r\ncontent-length: {len(message)}\r\n\r\n"
    ).encode() + message
    epoll = opener.epoll
    waiting = set(opener.socks)
    for fd in waiting:
        epoll.modify(fd, select.EPOLLIN)
    buffers = opener.heads
    cpu0 = cpu_seconds(server_pid)
    start = time.perf_counter()
    admin.sendall(request)
    deadline = start + timeout
    first = last = 0.0
    while waiting:
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        events = epoll.poll(min(left, 1.0))
        now = time.perf_counter()
        for fd, _ in events:
            data = opener.socks[fd].recv(65536)
            if not data:
                raise ConnectionError("the server closed a subscriber")
            buffer = buffers[fd]
            buffer += data
            if marker in buffer:
                buffer.clear()
                waiting.discard(fd)
                epoll.modify(fd, 0)
                last = now
                if not first:
                    first = now
    with admin:
        reply = admin.recv(65536)  # the admin answer: how many members took it
    cpu = cpu_seconds(server_pid) - cpu0
    if not reply.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"broadcast failed: {reply[:60]!r}")
    for fd in waiting:
        epoll.modify(fd, 0)
    return {
        "missed": len(waiting),
        "first_ms": (first - start) * 1000,
        "last_ms": (last - start) * 1000 if not waiting else float("nan"),
        "server_cpu_ms": cpu * 1000,
    }


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["idle", "broadcast"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/idle")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0, help="per batch / per round")
    parser.add_argument("--hold", type=float, default=120.0)
    parser.add_argument(
        "--server-pid", type=int, help="read this process's CPU time around each broadcast"
    )
    args = parser.parse_args()
    if args.mode == "idle":
        raise_nofile(args.count + 64)
        opener = Opener(args.host, args.port, args.path)
        try:
            seconds = opener.open(args.count, args.batch, args.timeout)
            print(json.dumps({"opened": len(opener.socks), "seconds": seconds}), flush=True)
            readable, _, _ = select.select([sys.stdin], [], [], args.hold)
            if readable:
                sys.stdin.readline()
        finally:
            opener.close()
        return
    counts = sorted(int(n) for n in args.counts.split(","))
    raise_nofile(counts[-1] + 64)
    opener = Opener(args.host, args.port, args.path)
    results = []
    try:
        for count in counts:
            open_seconds = opener.open(count, args.batch, args.timeout)
            time.sleep(0.5)  # let the server settle: every channel joined its group
            rounds = []
            for number in range(args.rounds + 1):
                marker = f"round-{count}-{number}:".encode()
                outcome = broadcast_round(opener, marker, args.timeout, args.server_pid)
                if number:  # round 0 is a warm-up
                    rounds.append(outcome)
                time.sleep(0.2)
            lasts = [r["last_ms"] for r in rounds]
            results.append(
                {
                    "subscribers": count,
                    "open_seconds": open_seconds,
                    "rounds": rounds,
                    "median_last_ms": statistics.median(lasts),
                    "best_last_ms": min(lasts),
                    "worst_last_ms": max(lasts),
                    "median_first_ms": statistics.median(r["first_ms"] for r in rounds),
                    "mean_server_cpu_ms": statistics.fmean(r["server_cpu_ms"] for r in rounds),
                    "missed": sum(r["missed"] for r in rounds),
                }
            )
    finally:
        opener.close()
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
