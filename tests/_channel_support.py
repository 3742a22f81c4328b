"""What the channel tests share: a running server, raw HTTP peers, a WebSocket client
run in a thread, and a recorder for ``on_close``.

The raw peers speak HTTP over a plain socket with their own small parser, so the tests
see exactly what the server put on the wire (framing, SSE lines, heartbeats).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import trio

import duplex

__all__ = [
    "CloseRecorder",
    "ConnectionEnded",
    "Opened",
    "RawHTTP",
    "in_asyncio_thread",
    "request_bytes",
    "serving",
]

T = TypeVar("T")


@asynccontextmanager
async def serving(
    handler: duplex.Handler, *, limits: duplex.Limits | None = None
) -> AsyncIterator[duplex.Server]:
    """Run ``handler`` on 127.0.0.1 and a free port; stop the server on the way out."""
    async with trio.open_nursery() as nursery:
        server: duplex.Server = await nursery.start(
            partial(duplex.serve, handler, "127.0.0.1", 0, limits=limits)
        )
        yield server
        nursery.cancel_scope.cancel()


def request_bytes(target: str = "/", *, method: str = "GET", headers: str = "") -> bytes:
    """A bodiless HTTP/1.1 request; ``headers`` are extra ``Name: value\\r\\n`` lines."""
    return f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()


class ConnectionEnded(Exception):
    """The server closed the connection before what the test waited for arrived."""


@dataclass
class RawHTTP:
    """One client connection that reads a response head and its body incrementally."""

    stream: trio.SocketStream
    buffer: bytearray = field(default_factory=bytearray)
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def connect(cls, port: int) -> RawHTTP:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def __aenter__(self) -> RawHTTP:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await trio.aclose_forcefully(self.stream)

    async def request(self, target: str = "/", *, headers: str = "") -> None:
        """Send a GET for ``target`` and read the response head."""
        await self.stream.send_all(request_bytes(target, headers=headers))
        await self.read_head()

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            raise ConnectionEnded(bytes(self.buffer))
        self.buffer += data

    async def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            await self._fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_head(self) -> None:
        status_line = await self._line()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        self.status = int(status_line.split()[1])
        while line := await self._line():
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()

    async def read_chunk(self) -> bytes:
        """The next chunk of a chunked body; ``b""`` for the last one."""
        assert self.headers.get("transfer-encoding") == "chunked", self.headers
        size = int((await self._line()).partition(b";")[0], 16)
        if size == 0:
            await self._line()
            return b""
        data = await self._exactly(size)
        assert await self._line() == b""
        return data

    async def read_body(self) -> bytes:
        """The whole body, however the head framed it."""
        if "content-length" in self.headers:
            return await self._exactly(int(self.headers["content-length"]))
        chunks = []
        while chunk := await self.read_chunk():
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_until(self, marker: bytes) -> bytes:
        """Chunk data (joined) up to and including the chunk that completes ``marker``."""
        data = b""
        while marker not in data:
            chunk = await self.read_chunk()
            if not chunk:
                raise ConnectionEnded(data)
            data += chunk
        return data


@dataclass
class CloseRecorder:
    """An ``on_close`` callback that remembers every call."""

    statuses: list[duplex.CloseStatus] = field(default_factory=list)
    called: trio.Event = field(default_factory=trio.Event)

    def __call__(self, channel: duplex.Channel, status: duplex.CloseStatus) -> None:
        self.statuses.append(status)
        self.called.set()


class Opened:
    """An ``on_open`` callback that collects channels and lets a test wait for them."""

    def __init__(self) -> None:
        self.channels: list[duplex.Channel] = []
        self._changed = trio.Event()

    def __call__(self, channel: duplex.Channel) -> None:
        self.channels.append(channel)
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, count: int = 1) -> list[duplex.Channel]:
        """The channels opened so far, once there are at least ``count``."""
        while len(self.channels) < count:
            await self._changed.wait()
        return list(self.channels)

    async def one(self) -> duplex.Channel:
        """The first channel, once it has opened."""
        return (await self.wait(1))[0]


async def in_asyncio_thread(fn: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    """Run the asyncio coroutine function ``fn`` in a thread with its own event loop.

    The thread gives up after ``timeout`` seconds; a trio cancellation abandons it.
    """

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await fn()

    return await trio.to_thread.run_sync(lambda: asyncio.run(bounded()), abandon_on_cancel=True)
