"""What the worker and Redis tests share: real processes on 127.0.0.1 and peers for them.

- ``RedisServer`` runs a ``redis-server`` of its own on a free port (no persistence).
- ``duplex_process`` runs ``python -m duplex ...``: a ``DuplexProcess`` whose output is
  collected line by line, so a test can wait for what it (or its workers) print.
- ``http_get`` and ``http_post`` speak HTTP/1.1 over a fresh socket each time, so that
  each request is a new connection the kernel may hand to any worker.
- ``Subscriber`` is an SSE client that knows when its server has added it to the group.
- ``WORKER_APP`` and ``ROOM_APP`` are the applications the processes serve.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import trio

import duplex

__all__ = [
    "ROOM_APP",
    "ROOT",
    "WORKER_APP",
    "DuplexProcess",
    "Output",
    "RedisServer",
    "Reply",
    "Subscriber",
    "duplex_process",
    "free_port",
    "http_get",
    "http_post",
    "is_alive",
    "parse_reply",
    "redis_command",
    "wait_subscribers",
]

ROOT = Path(__file__).resolve().parent.parent

WORKER_APP = '''\
"""Answers with its pid; /slow streams until the client ends its request body.

In workers (``--worker``), APP_STARTS_SLOWLY_IN_WORKERS makes the import print
"starting in PID" then block; APP_FAILS_IN_WORKERS makes it fail, and so does a file
named "broken" beside this module (a release that breaks, for a rolling restart).
"""

import os
import sys
import time

import duplex

PID = str(os.getpid())

if "--worker" in sys.argv and os.environ.get("APP_STARTS_SLOWLY_IN_WORKERS"):
    # One write, so that two workers' lines never interleave (print makes two when
    # Python runs unbuffered, as PYTHONUNBUFFERED asks).
    os.write(2, f"starting in {PID}\\n".encode())
    time.sleep(60)


async def slow(stream):
    await stream.write(b"started " + PID.encode() + b"\\n")
    rest = await stream.read()
    await stream.write(b"done " + rest)


def watch(request):
    """An SSE channel; it ends when this worker starts shutting down."""
    joined = duplex.sse.Event("joined", event="joined")
    return duplex.channel(request, headers={"x-pid": PID}, on_open=lambda ch: ch.offer(joined))


class Handler:
    """Entered once in each worker: records that in files beside this module."""

    def __init__(self):
        self.entered = False

    async def __aenter__(self):
        self.entered = True
        record("entered")
        return self

    async def __aexit__(self, *exc_info):
        record("exited")

    async def __call__(self, request):
        if request.path == "/slow":
            return duplex.Response(200, {"x-pid": PID}, duplex.Streamable(slow))
        if request.path == "/watch":
            return watch(request)
        body = f"{PID} entered={self.entered}\\n"
        return duplex.Response(200, {"x-pid": PID}, body=body)


def record(what):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{what}-{PID}")
    with open(path, "w"):
        pass


handler = Handler()

if "--worker" in sys.argv and os.environ.get("APP_FAILS_IN_WORKERS"):
    raise ImportError("this module imports in the supervisor only")

if "--worker" in sys.argv and os.path.exists(os.path.join(os.path.dirname(__file__), "broken")):
    raise ImportError("a broken release: a file named 'broken' lies beside this module")
'''
"""A handler app: ``app:handler``. Each worker answers with its pid."""

ROOM_APP = '''\
"""A room shared through Redis, as in guides/scaling_app.py.

GET (SSE) joins the room; POST /say broadcasts the body and answers how many processes
received it. REDIS_URL, ROOM and HISTORY come from the environment.
"""

import os

import duplex

JOINED = duplex.sse.Event("joined", event="joined")


class Room:
    def __init__(self):
        self.group = duplex.RedisChannelGroup(
            os.environ["REDIS_URL"],
            os.environ["ROOM"],
            history=int(os.environ.get("HISTORY", "0")),
            timeout=2.0,
        )

    async def __aenter__(self):
        await self.group.__aenter__()
        return self

    async def __aexit__(self, *exc_info):
        await self.group.__aexit__(*exc_info)

    def join(self, channel):
        self.group.add(channel)
        # Sent once the channel is a member: the client knows broadcasts reach it now.
        channel.offer(JOINED)

    async def __call__(self, request):
        if request.method == "POST" and request.path == "/say":
            text = (await request.body.join()).decode()
            processes = await self.group.broadcast(text)
            return duplex.Response(200, body=str(processes))
        return duplex.channel(request, headers={"x-pid": str(os.getpid())}, on_open=self.join)


room = Room()
'''
"""A room app: ``room:room``, one ``RedisChannelGroup`` per process."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, already dead, counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


# -- Redis -------------------------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 that this test run starts, stops and restarts."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self, timeout: float = 10.0) -> None:
        """Start it; return once it answers PING."""
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.01)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate it (by its pid) and wait until it has exited."""
        if self.process is None:
            return
        process, self.process = self.process, None
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """Stop it answering without closing its connections (SIGSTOP)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


async def redis_command(port: int, *arguments: str) -> bytes:
    """Send one command in RESP to the Redis on ``port``; return its raw reply."""
    request = f"*{len(arguments)}\r\n".encode()
    for argument in arguments:
        data = argument.encode()
        request += b"$%d\r\n%s\r\n" % (len(data), data)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        return bytes(await stream.receive_some(65536))


async def wait_subscribers(port: int, group: str, count: int) -> None:
    """Wait until ``count`` processes subscribe to the group named ``group``: after a
    Redis restart only Redis can tell, so this polls PUBSUB NUMSUB."""
    channel = f"duplex:group:{group}"
    while True:
        reply = await redis_command(port, "PUBSUB", "NUMSUB", channel)
        match = re.search(rb":(\d+)\r\n$", reply)
        if match is not None and int(match[1]) == count:
            return
        await trio.sleep(0.05)


# -- processes ---------------------------------------------------------------------------


class Output:
    """The lines a process prints, collected as they come."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._changed = trio.lowlevel.ParkingLot()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    async def collect(self, stream: trio.abc.ReceiveStream) -> None:
        pending = b""
        async for chunk in stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines += [line.decode(errors="replace") + "\n" for line in complete]
            self._changed.unpark_all()
        if pending:
            self.lines.append(pending.decode(errors="replace"))
        self.ended = True
        self._changed.unpark_all()

    async def wait_for(self, pattern: str, start: int = 0) -> tuple[re.Match[str], int]:
        """The first line from index ``start`` on that matches ``pattern``, and the index
        after it. Raises ``AssertionError`` if the output ends without one."""
        index = start
        while True:
            while index < len(self.lines):
                match = re.search(pattern, self.lines[index])
                index += 1
                if match is not None:
                    return match, index
            if self.ended:
                raise AssertionError(f"no line matched {pattern!r} in:\n{self.text}")
            await self._changed.park()


@dataclass
class DuplexProcess:
    """A ``python -m duplex`` process with what it prints."""

    process: trio.Process
    stdout: Output
    stderr: Output
    port: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait(self) -> int:
        return await self.process.wait()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def serving(self) -> int:
        """Wait until it prints ``serving on``; return (and remember) its port."""
        match, _ = await self.stdout.wait_for(r"serving on http://[^:]+:(\d+)/")
        self.port = int(match[1])
        return self.port


def _environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


@asynccontextmanager
async def duplex_process(
    arguments: list[str], *, cwd: Path, env: Mapping[str, str], ready: bool = True
) -> AsyncIterator[DuplexProcess]:
    """Run ``python -m duplex ARGUMENTS`` in ``cwd`` (also its PYTHONPATH).

    With ``ready``, return once it prints ``serving on``, with ``port`` set. On the way
    out a process still running gets SIGTERM, then SIGKILL if it does not stop.
    """
    command = [sys.executable, "-m", "duplex", "--log-level", "info", *arguments]
    process = await trio.lowlevel.open_process(
        command,
        cwd=cwd,
        env=_environment({"PYTHONPATH": str(cwd), **env}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    running = DuplexProcess(process, Output(), Output())
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None and process.stderr is not None
            nursery.start_soon(running.stdout.collect, process.stdout)
            nursery.start_soon(running.stderr.collect, process.stderr)
            if ready:
                await running.serving()
            yield running
            await _stop(process)
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process)


async def _stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(20):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


# -- HTTP --------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def http_get(port: int, path: str = "/") -> Reply:
    """GET over a new connection (``Connection: close``); the whole reply."""
    return await http_post(port, path, None)


async def http_post(port: int, path: str, body: bytes | None) -> Reply:
    """A request over a new connection (``Connection: close``); the whole reply."""
    method = "GET" if body is None else "POST"
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head.encode() + b"\r\n" + (body or b""))
        received = b""
        async for chunk in stream:
            received += chunk
    return parse_reply(received)


def parse_reply(data: bytes) -> Reply:
    """A whole HTTP/1.1 reply read until the server closed the connection."""
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        raise AssertionError(f"an incomplete reply: {data!r}")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return Reply(int(status_line.split()[1]), headers, body)


def dechunk(data: bytes) -> bytes:
    """The payload of a whole chunked body (which must end with its last chunk)."""
    payload = b""
    while True:
        size_line, separator, data = data.partition(b"\r\n")
        if not separator:
            raise AssertionError("a chunked body cut short")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return payload
        payload += data[:size]
        data = data[size + 2 :]


# -- SSE ---------------------------------------------------------------------------------


class Subscriber:
    """An SSE client of one process, ready once the server says it ``joined``.

    ``async with Subscriber(port) as subscriber``; then ``await subscriber.next()``. The
    server sends an event named ``joined`` once it has added the channel to its group.
    """

    def __init__(self, port: int, path: str = "/", *, last_event_id: str | None = None) -> None:
        self.port = port
        self.path = path
        self.last_event_id = last_event_id
        self._client = duplex.Client()
        self._parser = duplex.sse.EventParser()
        self._pending: list[duplex.sse.Event] = []
        self._response: duplex.ClientResponse | None = None
        self.ended = False

    async def __aenter__(self) -> Subscriber:
        await self._client.__aenter__()
        headers = {"accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["last-event-id"] = self.last_event_id
        try:
            self._response = await self._client.get(
                f"http://127.0.0.1:{self.port}{self.path}", headers=headers
            )
            assert self._response.status == 200, self._response.status
            joined = await self.next()
            assert joined.event == "joined", joined
        except BaseException as error:
            await self._client.__aexit__(type(error), error, error.__traceback__)
            raise
        return self

    @property
    def pid(self) -> int:
        """The pid of the process that serves this subscriber."""
        assert self._response is not None
        return int(self._response.headers["x-pid"])

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._client.__aexit__(exc_type, exc_value, traceback)

    async def next(self) -> duplex.sse.Event:
        """The next event; ``AssertionError`` if the stream ends first."""
        while not self._pending:
            assert self._response is not None
            chunk = await self._response.body.read()
            if not chunk:
                self.ended = True
                raise AssertionError("the event stream ended")
            self._pending += self._parser.feed(chunk)
        return self._pending.pop(0)

    async def data(self, count: int) -> list[str]:
        """The data of the next ``count`` events."""
        return [(await self.next()).data for _ in range(count)]

    async def wait_ended(self) -> None:
        """Read until the stream ends; fails if an event comes first."""
        assert not self._pending, f"expected the end of the stream, got {self._pending}"
        assert self._response is not None
        while chunk := await self._response.body.read():
            events = self._parser.feed(chunk)
            assert not events, f"expected the end of the stream, got {events}"
        self.ended = True
