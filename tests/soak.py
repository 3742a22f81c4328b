"""A bounded soak: concurrent mixed clients against one duplex server in a subprocess.

    python tests/soak.py --clients 2000 --duration 60 --pause 10

Each client loops until the time is up, pausing a random time up to ``--pause`` seconds
between exchanges and picking each at random: a plain request, a full-duplex streaming
echo, a Server-Sent Events stream, a WebSocket conversation, a long-poll, or a
disconnect (a reset or a close at a random point of any of those).
Every byte of every completed exchange is checked. Once the load ends, the server must
be back where it started: no connection, as many live trio tasks and file descriptors
as before the load, resident memory near its starting level, no ERROR in its log and a
clean exit. The same goes for this process's tasks and descriptors (the client side).

Everything is bounded: each exchange by ``--exchange-timeout``, the drain after the load
by ``--settle-timeout``; everything runs on 127.0.0.1. The exit status is 0 when every
check holds; ``--json`` prints the figures. tests/test_reliability_soak.py runs a short
version (200 clients for 5 s, no pause); ``nox -s soak`` the long one above. Without
pauses, 2,000 clients overload one server process on two CPUs: docs/reliability.md
describes what then fails, and why.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import random
import resource
import socket
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import trio
import trio_websocket

import duplex
from duplex.sse import Event, EventParser

MIB = 1 << 20

SERVER_LIMITS = duplex.Limits(shutdown_grace=5)
#: The clients drop idle connections well before the server does. With the defaults
#: (30 s against 5 s) a client may reuse a connection just as the server's keep-alive
#: timeout closes it, and a request whose body streams cannot be retried: under this
#: load that failed a few hundred echo exchanges (see docs/reliability.md).
CLIENT_LIMITS = duplex.ClientLimits(idle_expiry=(SERVER_LIMITS.keep_alive_timeout or 5) / 2)

# -- the server (in the subprocess) ------------------------------------------------------


def payload(seed: int, size: int) -> bytes:
    """The body a plain request for ``seed`` and ``size`` gets; the client recomputes it."""
    return random.Random(seed).randbytes(size)


def sse_data(seed: int, index: int) -> str:
    return f"event {index} of {seed}\nsecond line"


def _query(request: duplex.Request) -> dict[str, int]:
    return {key: int(values[0]) for key, values in parse_qs(request.query).items()}


class SoakApp:
    """Every route the soak exercises, plus ``/_stats`` for the figures."""

    def __init__(self) -> None:
        self.server: duplex.Server | None = None

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        route = request.path
        query = _query(request)
        if route == "/plain":
            return duplex.Response(200, body=payload(query["seed"], query["size"]))
        if route == "/echo":
            return duplex.Response(200, body=duplex.Streamable(_echo))
        if route == "/sse":
            return duplex.channel(request, on_open=partial(_send_events, query), heartbeat=None)
        if route == "/poll":
            return duplex.channel(request, on_open=partial(_answer_poll, query))
        if route == "/ws":
            return duplex.channel(request, on_receive=_echo_message, ping_interval=None)
        if route == "/_stats":
            return duplex.Response(200, body=json.dumps(self.stats(trim="trim" in query)))
        return duplex.Response(404, body=b"no such route")

    def stats(self, *, trim: bool) -> dict[str, int]:
        if trim:
            gc.collect()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        assert self.server is not None
        return {
            "pid": os.getpid(),
            "tasks": trio.lowlevel.current_statistics().tasks_living,
            "connections": self.server.connection_count,
        }


async def _echo(stream: duplex.Stream) -> None:
    while chunk := await stream.readpartial(65536):
        await stream.write(chunk)


async def _send_events(query: dict[str, int], channel: duplex.Channel) -> None:
    for index in range(query["count"]):
        await channel.send(Event(sse_data(query["seed"], index), id=str(index)))
    await channel.close()


async def _answer_poll(query: dict[str, int], channel: duplex.Channel) -> None:
    await trio.sleep(query["delay_ms"] / 1000)  # a long-poll waits for its news
    await channel.send(f"news for {query['seed']}", close=True)


async def _echo_message(channel: duplex.Channel, message: str | bytes) -> None:
    await channel.send(message)


async def run_server() -> None:
    """Serve until stdin closes, then shut down gracefully; the port goes to stdout."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    app = SoakApp()
    async with trio.open_nursery() as nursery:
        server: duplex.Server = await nursery.start(
            partial(duplex.serve, app, "127.0.0.1", 0, limits=SERVER_LIMITS)
        )
        app.server = server
        print(json.dumps({"port": server.port}), flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some():
            pass
        await stdin.aclose()
        await server.shutdown()


# -- the clients (in this process) -------------------------------------------------------


class Mismatch(AssertionError):
    """A completed exchange did not carry the bytes it should have."""


@dataclass
class Tally:
    """What the clients did."""

    exchanges: Counter[str] = field(default_factory=Counter)
    verified_bytes: Counter[str] = field(default_factory=Counter)
    disconnects: Counter[str] = field(default_factory=Counter)
    durations: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    failure_count: int = 0
    failure_kinds: Counter[str] = field(default_factory=Counter)

    mismatches: int = 0

    def fail(self, kind: str, error: BaseException) -> None:
        self.failure_count += 1
        self.mismatches += isinstance(_innermost(error), Mismatch)
        self.failure_kinds[f"{kind}: {_innermost(error)!r}"] += 1
        if len(self.failures) < 20:
            self.failures.append(f"{kind}: {error!r}")


def _innermost(error: BaseException) -> BaseException:
    """The first leaf exception of a group (the group itself is no explanation)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class Load:
    """The mixed clients of one soak."""

    def __init__(
        self,
        port: int,
        tally: Tally,
        exchange_timeout: float,
        *,
        ramp_up: float = 1.0,
        pause: float = 0.0,
        client_limits: duplex.ClientLimits = CLIENT_LIMITS,
    ) -> None:
        self.port = port
        self.ramp_up = ramp_up
        self.pause = pause
        self.client_limits = client_limits
        self.base = f"http://127.0.0.1:{port}"
        self.tally = tally
        self.exchange_timeout = exchange_timeout

    async def client(self, number: int, deadline: float, seed: int) -> None:
        rng = random.Random(seed * 100_003 + number)
        kinds: list[tuple[str, Callable[[duplex.Client, random.Random], Awaitable[int]]]] = [
            ("plain", self.plain),
            ("echo", self.echo),
            ("sse", self.sse),
            ("websocket", self.websocket),
            ("long-poll", self.long_poll),
            ("disconnect", self.disconnect),
        ]
        weights = [30, 20, 15, 15, 10, 10]
        # Clients arrive over the ramp-up, and each pauses between its exchanges: paced
        # peers, as real ones are.
        await trio.sleep(rng.random() * self.ramp_up)
        async with duplex.Client(limits=self.client_limits) as client:
            while trio.current_time() < deadline:
                if self.pause:
                    await trio.sleep(rng.random() * self.pause)
                kind, run = rng.choices(kinds, weights)[0]
                started = trio.current_time()
                try:
                    with trio.fail_after(self.exchange_timeout):
                        verified = await run(client, rng)
                except Exception as error:
                    self.tally.fail(kind, error)
                    continue
                if kind != "disconnect":
                    self.tally.exchanges[kind] += 1
                    self.tally.verified_bytes[kind] += verified
                    elapsed = trio.current_time() - started
                    self.tally.durations.setdefault(kind, []).append(elapsed)

    async def plain(self, client: duplex.Client, rng: random.Random) -> int:
        seed, size = rng.randrange(1 << 30), rng.choice([0, 10, 1000, 20_000, 100_000])
        response = await client.get(f"{self.base}/plain?seed={seed}&size={size}")
        body = await response.read()
        if response.status != 200 or body != payload(seed, size):
            raise Mismatch(f"plain {seed} {size}: {response.status}, {len(body)} bytes")
        return len(body)

    async def echo(self, client: duplex.Client, rng: random.Random) -> int:
        chunks = [
            rng.randbytes(rng.choice([1, 100, 5000, 30_000])) for _ in range(rng.randint(1, 6))
        ]
        sent = b"".join(chunks)
        body = duplex.Writable()

        async def write() -> None:
            for chunk in chunks:
                await body.write(chunk)
            await body.close_write()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            response = await client.post(f"{self.base}/echo", body=body)
            echoed = await response.read()
        if response.status != 200 or echoed != sent:
            raise Mismatch(f"echo: {response.status}, {len(echoed)} of {len(sent)} bytes")
        return len(echoed)

    async def sse(self, client: duplex.Client, rng: random.Random) -> int:
        seed, count = rng.randrange(1 << 30), rng.randint(1, 20)
        response = await client.get(
            f"{self.base}/sse?seed={seed}&count={count}", headers={"accept": "text/event-stream"}
        )
        parser = EventParser()
        received = [event async for chunk in response.body for event in parser.feed(chunk)]
        expected = [Event(sse_data(seed, index), id=str(index)) for index in range(count)]
        if received != expected:
            raise Mismatch(f"sse {seed}: {len(received)} of {count} events, or altered")
        return sum(len(event.data) for event in received)

    async def websocket(self, client: duplex.Client, rng: random.Random) -> int:
        messages: list[str | bytes] = [
            rng.randbytes(rng.choice([1, 200, 20_000]))
            if rng.random() < 0.5
            else "text " * rng.randint(1, 200)
            for _ in range(rng.randint(1, 10))
        ]
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{self.port}/ws", connect_timeout=self.exchange_timeout
        ) as ws:
            for message in messages:
                await ws.send_message(message)
                if await ws.get_message() != message:
                    raise Mismatch("websocket: an echo differs from its message")
        return sum(len(message) for message in messages)

    async def long_poll(self, client: duplex.Client, rng: random.Random) -> int:
        seed, delay = rng.randrange(1 << 30), rng.randint(0, 200)
        response = await client.get(f"{self.base}/poll?seed={seed}&delay_ms={delay}")
        body = await response.read()
        if response.status != 200 or body != f"news for {seed}".encode():
            raise Mismatch(f"long-poll {seed}: {response.status} {body[:100]!r}")
        return len(body)

    async def disconnect(self, client: duplex.Client, rng: random.Random) -> int:
        """Start an exchange of any kind on a raw socket and leave at a random point."""
        request = rng.choice(
            [
                b"GET /plain?seed=1&size=1000000 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"e" * 5000,
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"1000\r\n" + b"c" * 2000,
                b"GET /sse?seed=1&count=500 HTTP/1.1\r\nHost: x\r\n"
                b"Accept: text/event-stream\r\n\r\n",
                b"GET /poll?seed=1&delay_ms=1000 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: c29hay1kaXNjb25uZWN0IQ==\r\nSec-WebSocket-Version: 13\r\n"
                b"\r\n\x81\xfe\x10\x00abcd" + b"w" * 100,
            ]
        )
        cut = rng.randint(1, len(request))
        how = "reset" if rng.random() < 0.5 else "close"
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        try:
            await stream.send_all(request[:cut])
            if cut == len(request) and rng.random() < 0.7:
                with trio.move_on_after(rng.random() * 0.2):
                    await stream.receive_some(rng.choice([1, 1000, 100_000]))
        except trio.BrokenResourceError:
            pass
        finally:
            if how == "reset":
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await trio.aclose_forcefully(stream)
        self.tally.disconnects[how] += 1
        return 0


# -- the run ---------------------------------------------------------------------------


@dataclass
class Figures:
    """A process's resources at one moment."""

    tasks: int
    fds: int
    rss: int


@dataclass
class SoakReport:
    clients: int
    duration: float
    seed: int
    pause: float
    ramp_up: float
    wall_time: float = 0.0
    exchanges: dict[str, int] = field(default_factory=dict)
    verified_bytes: dict[str, int] = field(default_factory=dict)
    disconnects: dict[str, int] = field(default_factory=dict)
    #: Seconds per completed exchange of each kind: median, 99th percentile, longest.
    latency: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    failure_count: int = 0
    mismatches: int = 0
    failures: list[str] = field(default_factory=list)
    failure_kinds: dict[str, int] = field(default_factory=dict)
    server_before: Figures | None = None
    server_after: Figures | None = None
    server_peak_rss: int = 0
    server_peak_connections: int = 0
    server_connections_after: int = -1
    server_log_errors: list[str] = field(default_factory=list)
    server_log_warnings: int = 0
    server_exit_code: int | None = None
    client_before: Figures | None = None
    client_after: Figures | None = None

    def problems(self, rss_margin: int) -> list[str]:
        """Every check that does not hold (empty when the soak passed)."""
        found = []
        if self.mismatches:
            found.append(f"{self.mismatches} exchanges carried the wrong bytes")
        if self.failure_count:
            found.append(f"{self.failure_count} exchanges failed: {self.failure_kinds}")
        if self.server_log_errors:
            found.append(f"the server logged errors: {self.server_log_errors[:5]}")
        if self.server_exit_code != 0:
            found.append(f"the server exited with {self.server_exit_code}")
        if self.server_connections_after != 1:  # the /_stats request's own
            found.append(f"{self.server_connections_after} connections left open")
        for side, before, after in [
            ("server", self.server_before, self.server_after),
            ("client", self.client_before, self.client_after),
        ]:
            assert before is not None and after is not None
            if after.tasks != before.tasks:
                found.append(f"{side} tasks: {before.tasks} before, {after.tasks} after")
            if after.fds != before.fds:
                found.append(f"{side} file descriptors: {before.fds} before, {after.fds} after")
        assert self.server_before is not None and self.server_after is not None
        if self.server_after.rss > self.server_before.rss + rss_margin:
            found.append(
                f"server RSS {self.server_after.rss / MIB:.1f} MiB after, "
                f"{self.server_before.rss / MIB:.1f} MiB before"
            )
        if sum(self.exchanges.values()) == 0:
            found.append("no exchange completed")
        return found


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _proc(pid: int | str, name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(name)


def _fds(pid: int | str) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _own_figures() -> Figures:
    """This process's (the clients') figures."""
    gc.collect()
    return Figures(
        trio.lowlevel.current_statistics().tasks_living, _fds("self"), _proc("self", "VmRSS")
    )


async def _server_stats(client: duplex.Client, port: int, *, trim: bool = False) -> dict[str, int]:
    """The server's own figures, asked on ``client``'s kept-alive connection: a new
    connection each time would leave the previous one closing, a task still alive."""
    response = await client.get(f"http://127.0.0.1:{port}/_stats" + ("?trim=1" if trim else ""))
    stats: dict[str, int] = json.loads(await response.read())
    return stats


async def _steady_stats(
    port: int, timeout: float, tasks: int | None = None
) -> tuple[dict[str, int], Figures]:
    """The server's figures (after a garbage collection and a ``malloc_trim``), once only
    our /_stats connection is left and its task count holds still, or equals ``tasks``;
    as they are after ``timeout`` otherwise."""
    async with duplex.Client() as client:
        history: list[int] = []
        with trio.move_on_after(timeout):
            while True:
                stats = await _server_stats(client, port)
                history.append(stats["tasks"] if stats["connections"] == 1 else -1)
                if tasks is None:
                    settled = history[-3:] == [history[-1]] * 3 and history[-1] >= 0
                else:
                    settled = history[-1] == tasks
                if settled:
                    break
                await trio.sleep(0.1)  # nothing in another process can signal us
        stats = await _server_stats(client, port, trim=True)
        return stats, Figures(stats["tasks"], _fds(stats["pid"]), _proc(stats["pid"], "VmRSS"))


async def _sample_connections(port: int, report: SoakReport, scope: trio.CancelScope) -> None:
    """Note the most connections the server had open at once, once a second."""
    with scope:
        async with duplex.Client() as client:
            while True:
                stats = await _server_stats(client, port)
                connections = stats["connections"] - 1  # not ours
                report.server_peak_connections = max(report.server_peak_connections, connections)
                await trio.sleep(1)  # a sample rate, in another process


async def _warm_up(load: Load) -> None:
    """One exchange of each kind, so that imports and caches count in the baseline."""
    rng = random.Random(0)
    async with duplex.Client() as client:
        for run in (load.plain, load.echo, load.sse, load.websocket, load.long_poll):
            await run(client, rng)


async def run_soak(
    clients: int,
    duration: float,
    *,
    seed: int = 1,
    pause: float = 0.0,
    ramp_up: float | None = None,
    exchange_timeout: float = 30.0,
    settle_timeout: float = 30.0,
) -> SoakReport:
    """Run the soak; the figures (see ``SoakReport.problems`` for the verdict).

    Clients arrive over ``ramp_up`` seconds (by default at 200 a second) and pause up
    to ``pause`` seconds between exchanges.
    """
    raise_fd_limit()
    ramp_up = clients / 200 if ramp_up is None else ramp_up
    report = SoakReport(clients, duration, seed, pause, ramp_up)
    started = trio.current_time()
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    log = bytearray()

    async def collect_log() -> None:
        assert process.stderr is not None
        while data := await process.stderr.receive_some():
            log.extend(data)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_log)
            with trio.fail_after(30):
                line = b""
                while not line.endswith(b"\n"):
                    more = await process.stdout.receive_some()
                    if not more:
                        raise RuntimeError(f"the server did not start: {bytes(log)!r}")
                    line += more
            port = json.loads(line)["port"]
            tally = Tally()
            load = Load(port, tally, exchange_timeout, ramp_up=ramp_up, pause=pause)
            with trio.fail_after(settle_timeout + 60):
                await _warm_up(load)
                _, report.server_before = await _steady_stats(port, settle_timeout)
            report.client_before = _own_figures()

            deadline = trio.current_time() + duration
            with trio.fail_after(duration + exchange_timeout + 10):
                async with trio.open_nursery() as clients_nursery:
                    for number in range(clients):
                        clients_nursery.start_soon(load.client, number, deadline, seed)
                    sampling = trio.CancelScope()
                    nursery.start_soon(_sample_connections, port, report, sampling)
                sampling.cancel()

            with trio.fail_after(settle_timeout + 30):
                stats, report.server_after = await _steady_stats(
                    port, settle_timeout, report.server_before.tasks
                )
            report.server_connections_after = stats["connections"]
            report.server_peak_rss = _proc(process.pid, "VmHWM")
            report.client_after = _own_figures()

            await process.stdin.aclose()
            with trio.fail_after(20):
                report.server_exit_code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()  # our own child, by its handle
            with trio.CancelScope(shield=True):
                await process.wait()
    report.wall_time = trio.current_time() - started
    report.exchanges = dict(tally.exchanges)
    report.verified_bytes = dict(tally.verified_bytes)
    report.disconnects = dict(tally.disconnects)
    for kind, durations in sorted(tally.durations.items()):
        durations.sort()
        middle, high = durations[len(durations) // 2], durations[len(durations) * 99 // 100]
        report.latency[kind] = (round(middle, 3), round(high, 3), round(durations[-1], 3))
    report.failure_count = tally.failure_count
    report.mismatches = tally.mismatches
    report.failures = tally.failures
    report.failure_kinds = dict(tally.failure_kinds.most_common())
    lines = bytes(log).decode("utf-8", "replace").splitlines()
    report.server_log_errors = [
        line for line in lines if line.startswith(("ERROR", "CRITICAL", "Traceback"))
    ]
    report.server_log_warnings = sum(line.startswith("WARNING") for line in lines)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--pause", type=float, default=0.0, help="most seconds a client pauses between exchanges"
    )
    parser.add_argument(
        "--ramp-up", type=float, default=None, help="seconds over which the clients arrive"
    )
    parser.add_argument("--exchange-timeout", type=float, default=30.0)
    parser.add_argument("--settle-timeout", type=float, default=30.0)
    parser.add_argument("--rss-margin-mib", type=float, default=64.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:
        trio.run(run_server)
        return
    report = trio.run(
        partial(
            run_soak,
            arguments.clients,
            arguments.duration,
            seed=arguments.seed,
            pause=arguments.pause,
            ramp_up=arguments.ramp_up,
            exchange_timeout=arguments.exchange_timeout,
            settle_timeout=arguments.settle_timeout,
        )
    )
    problems = report.problems(int(arguments.rss_margin_mib * MIB))
    summary: dict[str, Any] = asdict(report) | {"problems": problems}
    print(json.dumps(summary, indent=2) if arguments.json else _describe(report, problems))
    sys.exit(1 if problems else 0)


def _describe(report: SoakReport, problems: list[str]) -> str:
    assert report.server_before is not None and report.server_after is not None
    assert report.client_before is not None and report.client_after is not None
    lines = [
        f"{report.clients} clients for {report.duration:g} s (seed {report.seed}, arriving "
        f"over {report.ramp_up:g} s, pausing up to {report.pause:g} s), "
        f"{report.wall_time:.1f} s in all",
        f"exchanges completed and verified: {sum(report.exchanges.values())} "
        + str(dict(sorted(report.exchanges.items()))),
        f"bytes verified: {sum(report.verified_bytes.values())}",
        f"seconds per exchange (median, p99, max): {report.latency}",
        f"disconnects: {dict(sorted(report.disconnects.items()))}",
        f"failed exchanges: {report.failure_count} {report.failure_kinds}, "
        f"of which with wrong bytes: {report.mismatches}",
        f"server connections at most {report.server_peak_connections} at once; "
        f"tasks {report.server_before.tasks} -> {report.server_after.tasks}, "
        f"fds {report.server_before.fds} -> {report.server_after.fds}, "
        f"RSS {report.server_before.rss / MIB:.1f} -> peak {report.server_peak_rss / MIB:.1f} "
        f"-> {report.server_after.rss / MIB:.1f} MiB",
        f"client tasks {report.client_before.tasks} -> {report.client_after.tasks}, "
        f"fds {report.client_before.fds} -> {report.client_after.fds}",
        f"server log: {len(report.server_log_errors)} errors, "
        f"{report.server_log_warnings} warnings; exit code {report.server_exit_code}",
        "PASS" if not problems else "FAIL:\n  " + "\n  ".join(problems),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
