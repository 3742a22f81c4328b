"""Broadcast latency through Redis to SSE subscribers spread over worker processes.

Run it: ``python benchmarks/broadcast_redis.py`` (it needs ``redis-server`` on the PATH;
it starts its own on a free port, and stops everything by itself). It serves a room
(a ``RedisChannelGroup`` per worker) from ``--workers`` processes on one port, connects
subscribers as raw sockets that speak SSE, and broadcasts from this process. The
latency of a round is the time from the broadcast call until the last subscriber has
read the message; the table also shows when the first and the median subscriber had it,
for each number of subscribers.

The subscribers all live in this one process, so their reading is part of what is
measured: the figures are an upper bound for the server side.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path

import trio

import duplex

APP = """\
import os

import duplex

JOINED = duplex.sse.Event("joined", event="joined")


class Room:
    def __init__(self):
        self.group = duplex.RedisChannelGroup(os.environ["REDIS_URL"], "benchmark")

    async def __aenter__(self):
        await self.group.__aenter__()
        return self

    async def __aexit__(self, *exc_info):
        await self.group.__aexit__(*exc_info)

    def join(self, channel):
        self.group.add(channel)
        channel.offer(JOINED)

    async def __call__(self, request):
        headers = {"x-pid": str(os.getpid())}
        return duplex.channel(request, headers=headers, on_open=self.join, heartbeat=None)


room = Room()
"""

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        sys.exit(f"needs {needed} open files, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def start_redis(port: int) -> subprocess.Popen[bytes]:
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process
        except OSError:
            time.sleep(0.02)
    process.terminate()
    sys.exit("redis-server did not start")


class Rounds:
    """What every subscriber has read so far, and when the current round completes."""

    def __init__(self) -> None:
        self.subscribers = 0
        self.marker = b""
        self.arrivals: list[float] = []
        self.complete = trio.Event()
        self.workers: Counter[str] = Counter()

    def start(self, number: int) -> None:
        self.marker = b"data: round-%d\n" % number
        self.arrivals = []
        self.complete = trio.Event()

    def arrived(self) -> None:
        self.arrivals.append(trio.current_time())
        if len(self.arrivals) == self.subscribers:
            self.complete.set()


async def subscriber(port: int, rounds: Rounds, joined: trio.Event) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(REQUEST)
        received = b""
        while b"event: joined" not in received:
            received += await stream.receive_some(65536)
        pid = received.split(b"x-pid: ", 1)[1].split(b"\r\n", 1)[0]
        rounds.workers[pid.decode()] += 1
        rounds.subscribers += 1
        joined.set()
        received = b""
        seen = b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            received = received[-64:] + data
            if rounds.marker and rounds.marker != seen and rounds.marker in received:
                seen = rounds.marker
                rounds.arrived()


#: Per subscriber count: latencies (seconds) of the first, median and last subscriber.
Results = list[tuple[int, list[float], list[float], list[float]]]


async def measure(args: argparse.Namespace) -> tuple[Results, Counter[str]]:
    redis_port = free_port()
    redis = start_redis(redis_port)
    app_dir = Path(tempfile.mkdtemp(prefix="duplex-benchmark-"))
    (app_dir / "benchmark_app.py").write_text(APP)
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
    os.environ["PYTHONPATH"] = str(app_dir)
    results: Results = []
    rounds = Rounds()
    try:
        with trio.fail_after(args.time_limit):
            async with trio.open_nursery() as nursery:
                serve = partial(
                    duplex.serve_workers,
                    "benchmark_app:room",
                    "127.0.0.1",
                    0,
                    workers=args.workers,
                )
                port = await nursery.start(serve)
                group = duplex.RedisChannelGroup(os.environ["REDIS_URL"], "benchmark")
                async with group, trio.open_nursery() as subscribers:
                    connecting = trio.CapacityLimiter(256)
                    number = 0
                    for size in args.subscribers:
                        await connect(subscribers, port, rounds, connecting, size)
                        first, middle, last = [], [], []
                        for measured in range(-1, args.rounds):  # one round to warm up
                            number += 1
                            rounds.start(number)
                            started = trio.current_time()
                            await group.broadcast(f"round-{number}")
                            await rounds.complete.wait()
                            if measured >= 0:
                                first.append(min(rounds.arrivals) - started)
                                middle.append(statistics.median(rounds.arrivals) - started)
                                last.append(max(rounds.arrivals) - started)
                        results.append((size, first, middle, last))
                    subscribers.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(app_dir, ignore_errors=True)
    return results, rounds.workers


async def connect(
    nursery: trio.Nursery, port: int, rounds: Rounds, limiter: trio.CapacityLimiter, size: int
) -> None:
    """Add subscribers until there are ``size``, each joined before the next connects
    more than ``limiter`` at a time."""

    async def one() -> None:
        joined = trio.Event()
        async with limiter:
            nursery.start_soon(subscriber, port, rounds, joined)
            await joined.wait()

    async with trio.open_nursery() as connecting:
        for _ in range(size - rounds.subscribers):
            connecting.start_soon(one)


def milliseconds(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return " ".join(
        f"{1000 * value:8.1f}"
        for value in (ordered[0], statistics.median(ordered), p90, ordered[-1])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--subscribers",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1000, 10000],
        help="subscriber counts to measure, ascending (1000,10000)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--rounds", type=int, default=10, help="broadcasts per count (10)")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds in all (300)")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("this benchmark needs redis-server on the PATH")
    raise_fd_limit(max(args.subscribers) + 1024)
    results, workers = trio.run(measure, args)
    print(
        f"broadcast latency through Redis, {args.workers} workers, {args.rounds} rounds each "
        f"(python {platform.python_version()}, {os.cpu_count()} CPUs)"
    )
    print(
        f"{'subscribers':>12} {'who has it':>11}{'min':>8} {'median':>8} {'p90':>8} {'max':>8}   ms"
    )
    for size, first, middle, last in results:
        print(f"{size:>12} {'first':>11}{milliseconds(first)}")
        print(f"{'':>12} {'median':>11}{milliseconds(middle)}")
        print(f"{'':>12} {'last':>11}{milliseconds(last)}")
    print("subscribers per worker pid:", ", ".join(f"{pid}: {n}" for pid, n in workers.items()))


if __name__ == "__main__":
    main()
