"""What the server tests share: a running server, a raw HTTP/1.1 client, handlers.

The raw client speaks HTTP over a plain socket with its own small parser, so the tests
see exactly what the server put on the wire (framing, interim responses, trailers, a
truncated body) rather than what a forgiving client library makes of it.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import trio
import trio.testing

import duplex

__all__ = [
    "IncompleteResponse",
    "RawClient",
    "RawResponse",
    "Recorder",
    "free_port",
    "get",
    "hello",
    "request_bytes",
    "serving",
]


@asynccontextmanager
async def serving(
    handler: duplex.Handler,
    *,
    limits: duplex.Limits | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[duplex.Server]:
    """Run ``handler`` on 127.0.0.1 and a free port; stop the server on the way out."""
    async with trio.open_nursery() as nursery:
        server: duplex.Server = await nursery.start(
            partial(duplex.serve, handler, "127.0.0.1", 0, limits=limits, ssl_context=ssl_context)
        )
        yield server
        nursery.cancel_scope.cancel()


def free_port() -> int:
    """A port nobody listens on right now (bound to port 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def hello(request: duplex.Request) -> duplex.Response:
    """Answer every request with ``hello``."""
    return duplex.Response(200, body=b"hello")


class Recorder:
    """A handler that notes every request it sees and answers with its target."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        self.targets.append(request.target)
        await request.body.discard()
        return duplex.Response(200, body=request.target)


def request_bytes(
    target: str = "/", *, method: str = "GET", headers: str = "", body: bytes = b""
) -> bytes:
    """A well-formed HTTP/1.1 request; ``headers`` are extra ``Name: value\\r\\n`` lines."""
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n{length}{headers}\r\n"
    return head.encode() + body


class IncompleteResponse(Exception):
    """The connection ended before the response did; ``partial`` is what arrived."""

    def __init__(self, partial: bytes) -> None:
        super().__init__(f"the connection ended mid-response after {partial[:200]!r}")
        self.partial = partial


@dataclass
class RawResponse:
    """A response as it was framed on the wire."""

    http_version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (case-insensitive), or None."""
        key = name.lower().encode()
        for raw_name, value in self.headers:
            if raw_name == key:
                return value.decode("latin-1")
        return None

    @property
    def chunked(self) -> bool:
        return (self.header("transfer-encoding") or "").lower().endswith("chunked")

    @property
    def closes(self) -> bool:
        """True if the server said it closes the connection after this response."""
        connection = (self.header("connection") or "").lower()
        if self.http_version == b"1.0":
            return "keep-alive" not in connection
        return "close" in connection


class RawClient:
    """One client connection over a trio stream, parsing responses itself."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await trio.aclose_forcefully(self.stream)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_eof(self) -> None:
        """Close our sending side; the server still reads what was sent, then EOF."""
        assert isinstance(self.stream, trio.abc.HalfCloseableStream)
        await self.stream.send_eof()

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            raise IncompleteResponse(bytes(self.buffer))
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

    async def _fields(self) -> list[tuple[bytes, bytes]]:
        fields = []
        while line := await self._line():
            name, _, value = line.partition(b":")
            fields.append((name.strip().lower(), value.strip()))
        return fields

    async def read_head(self) -> RawResponse:
        """The next response head (an interim 1xx one included), without its body."""
        version, _, rest = (await self._line()).partition(b" ")
        status, _, reason = rest.partition(b" ")
        assert version.startswith(b"HTTP/"), f"not a status line: {version + rest!r}"
        return RawResponse(version[5:], int(status), reason, await self._fields())

    async def read_chunk(self) -> bytes:
        """The next chunk of a chunked body; ``b""`` for the last one (trailers left)."""
        size_line = await self._line()
        size = int(size_line.partition(b";")[0], 16)
        if size == 0:
            return b""
        data = await self._exactly(size)
        assert await self._line() == b"", "chunk data not followed by CRLF"
        return data

    async def read_trailers(self) -> list[tuple[bytes, bytes]]:
        """The trailer fields after the last chunk (consumes the final blank line)."""
        return await self._fields()

    async def read_body(self, response: RawResponse) -> None:
        """Read the body that follows ``response``'s head as the head frames it."""
        if response.chunked:
            chunks = []
            try:
                while chunk := await self.read_chunk():
                    chunks.append(chunk)
            except IncompleteResponse as error:
                raise IncompleteResponse(b"".join(chunks) + error.partial) from None
            response.body = b"".join(chunks)
            response.trailers = await self.read_trailers()
        elif (length := response.header("content-length")) is not None:
            response.body = await self._exactly(int(length))
        else:
            response.body = await self.read_until_eof()

    async def read_response(self, *, method: str = "GET") -> RawResponse:
        """The next final response with its body; interim (1xx) responses are skipped."""
        while True:
            response = await self.read_head()
            if response.status >= 200:
                break
        if method != "HEAD" and response.status not in (204, 304):
            await self.read_body(response)
        return response

    async def read_until_eof(self) -> bytes:
        """Everything left until the server closes (a reset counts as a close)."""
        data = bytes(self.buffer)
        self.buffer.clear()
        while True:
            try:
                more = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return data
            if not more:
                return data
            data += more

    async def nothing_pending(self) -> bool:
        """Once every task is blocked, True if no byte waits to be read.

        On loopback a byte the server sent is in our socket as soon as its send returns,
        so this tells whether the server has sent anything, without waiting for it.
        """
        await trio.testing.wait_all_tasks_blocked()
        return not self.has_input()

    def has_input(self) -> bool:
        """True if bytes from the server wait to be read, right now (no waiting)."""
        if self.buffer:
            return True
        assert isinstance(self.stream, trio.SocketStream)
        readable, _, _ = select.select([self.stream.socket.fileno()], [], [], 0)
        return bool(readable)

    async def expect_closed(self) -> None:
        """Assert that the server closes the connection without sending anything more."""
        rest = await self.read_until_eof()
        assert rest == b"", f"unexpected bytes after the response: {rest[:200]!r}"


async def get(port: int, target: str = "/") -> RawResponse:
    """One GET on a fresh connection."""
    async with await RawClient.connect(port) as client:
        await client.send(request_bytes(target))
        return await client.read_response()
