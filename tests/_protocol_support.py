"""A raw peer of either protocol, for the tests that run over both (conftest's
``both_protocols``): ``exchange(port, protocol)`` opens a connection and gives one
exchange on it with RawHTTP's reading interface (``request``, ``read_head``,
``read_chunk``, ``read_body``, ``read_until``, ``status``, ``headers``), plus ``start``,
``send`` and ``end`` for a request body that streams and ``leave`` for a client that
goes away mid-exchange.

Over HTTP/1.1 it is ``RawHTTP`` on a socket (a body goes chunked); over HTTP/2 it is one
stream of a raw h2 peer (``H2Peer``, h2c with prior knowledge), a chunk being what one
DATA frame carried. ``leave`` closes the socket over HTTP/1.1 and resets the stream
(RST_STREAM CANCEL, the connection staying up) over HTTP/2; leaving the ``async with``
closes the connection either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h2.events
import h2.exceptions
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Request,
    TextMessage,
)

from _channel_support import ConnectionEnded, RawHTTP
from _h2_support import H2Peer
from _server_support import RawClient, request_bytes

__all__ = [
    "Answer",
    "H1Exchange",
    "H2Exchange",
    "WebSocketClosed",
    "WebSocketPeer",
    "ask",
    "exchange",
]


def _fields(headers: str) -> list[tuple[str, str]]:
    """``Name: value\\r\\n`` lines as (lower-case name, value) pairs."""
    pairs = []
    for line in headers.split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            pairs.append((name.strip().lower(), value.strip()))
    return pairs


class H1Exchange(RawHTTP):
    """``RawHTTP`` that can also start a request whose body streams (chunked)."""

    chunked = False

    async def start(
        self, target: str = "/", *, method: str = "GET", headers: str = "", body: bool = False
    ) -> None:
        """Send the request head; ``body``: a body follows (``send``, ``end``), chunked
        unless ``headers`` give its Content-Length."""
        self.chunked = body and "content-length:" not in headers.lower()
        framing = "Transfer-Encoding: chunked\r\n" if self.chunked else ""
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}{headers}\r\n"
        await self.stream.send_all(head.encode())

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)

    async def end(self) -> None:
        if self.chunked:
            await self.stream.send_all(b"0\r\n\r\n")

    async def leave(self) -> None:
        """Go away mid-exchange: close the connection."""
        await trio.aclose_forcefully(self.stream)

    async def expect_closed(self) -> None:
        """Wait for the server to close the connection, which must send nothing more."""
        rest = bytes(self.buffer)
        while data := await self.stream.receive_some(65536):
            rest += data
        assert rest == b"", f"unexpected bytes before the close: {rest[:200]!r}"


class H2Exchange:
    """One stream of a raw HTTP/2 peer, read as ``RawHTTP`` reads a response."""

    def __init__(self, peer: H2Peer) -> None:
        self.peer = peer
        self.stream_id = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self._seen = 0  # events of the peer's that read_chunk has looked at

    async def start(
        self, target: str = "/", *, method: str = "GET", headers: str = "", body: bool = False
    ) -> None:
        """Open the stream with the request's HEADERS; ``body``: DATA follows."""
        self.stream_id = await self.peer.request(method, target, _fields(headers), end=not body)

    async def request(self, target: str = "/", *, headers: str = "") -> None:
        """Send a GET for ``target`` and read the response head."""
        await self.start(target, headers=headers)
        await self.read_head()

    async def _receive(self) -> None:
        try:
            await self.peer.receive()
        except EOFError:
            raise ConnectionEnded("the server closed the connection") from None

    async def read_head(self) -> None:
        state = self.peer.streams[self.stream_id]
        while state.status is None:
            if state.reset is not None:
                raise ConnectionEnded(f"the stream was reset ({state.reset})")
            await self._receive()
        self.status = state.status
        self.headers = {name.decode(): value.decode("latin-1") for name, value in state.headers}

    async def read_chunk(self) -> bytes:
        """What the next non-empty DATA frame carried; ``b""`` at the stream's end."""
        while True:
            while self._seen < len(self.peer.events):
                event = self.peer.events[self._seen]
                self._seen += 1
                if getattr(event, "stream_id", None) != self.stream_id:
                    continue
                if isinstance(event, h2.events.DataReceived) and event.data:
                    return bytes(event.data)
                if isinstance(event, h2.events.StreamEnded):
                    return b""
                if isinstance(event, h2.events.StreamReset):
                    raise ConnectionEnded(f"the stream was reset ({event.error_code})")
            await self._receive()

    async def read_body(self) -> bytes:
        """The rest of the body."""
        chunks = []
        while chunk := await self.read_chunk():
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_until(self, marker: bytes) -> bytes:
        """DATA (joined) up to and including the frame that completes ``marker``."""
        data = b""
        while marker not in data:
            chunk = await self.read_chunk()
            if not chunk:
                raise ConnectionEnded(data)
            data += chunk
        return data

    async def send(self, data: bytes) -> None:
        await self.peer.send(self.stream_id, data)

    async def end(self) -> None:
        await self.peer.end(self.stream_id)

    async def leave(self) -> None:
        """Go away mid-exchange: reset the stream (the connection stays up); nothing if
        it has ended already."""
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            await self.peer.reset(self.stream_id)

    async def expect_closed(self) -> None:
        """Wait for the server to close the connection, which it must announce with a
        GOAWAY (NO_ERROR)."""
        while not self.peer.closed:
            with contextlib.suppress(ConnectionEnded):
                await self._receive()
        assert self.peer.goaway is not None, "closed without a GOAWAY"
        assert self.peer.goaway.error_code == 0, self.peer.goaway

    def goaway_came_first(self) -> bool:
        """True if the server's GOAWAY came before this stream's end."""
        kinds = [
            type(event)
            for event in self.peer.events
            if getattr(event, "stream_id", self.stream_id) in (self.stream_id, 0)
        ]
        ending = kinds.index(h2.events.StreamEnded)
        return h2.events.ConnectionTerminated in kinds[:ending]


@asynccontextmanager
async def exchange(port: int, protocol: str) -> AsyncIterator[H1Exchange | H2Exchange]:
    """A connection to ``port`` speaking ``protocol`` (``"h1"`` or ``"h2"``) and an
    exchange on it; the connection closes on the way out."""
    if protocol == "h1":
        client = H1Exchange(await trio.open_tcp_stream("127.0.0.1", port))
        async with client:
            yield client
    else:
        assert protocol == "h2", protocol
        async with H2Peer.connect(port) as peer:
            yield H2Exchange(peer)


class WebSocketClosed(Exception):
    """The WebSocket closed; ``code`` is the close code received (1006: none)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the WebSocket closed with {code}")
        self.code = code


class WebSocketPeer:
    """A WebSocket client (wsproto) on an exchange of either protocol: the HTTP/1.1
    Upgrade, or an extended CONNECT (RFC 8441) over an h2c stream."""

    def __init__(self, raw: H1Exchange | H2Exchange) -> None:
        self.raw = raw
        self.ws: WSConnection | Connection = WSConnection(ConnectionType.CLIENT)
        self.close_code: int | None = None
        #: Answer the server's pings (or leave them unanswered); how many came.
        self.answer_pings = True
        self.pings = 0
        self._messages: list[str | bytes] = []
        self._parts: list[str | bytes] = []

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, port: int, protocol: str, path: str = "/ws"
    ) -> AsyncIterator[WebSocketPeer]:
        async with exchange(port, protocol) as raw:
            peer = cls(raw)
            await peer._open(path)
            yield peer

    async def _open(self, path: str) -> None:
        if isinstance(self.raw, H1Exchange):
            assert isinstance(self.ws, WSConnection)
            await self.raw.stream.send_all(self.ws.send(Request(host="127.0.0.1", target=path)))
            while not any(isinstance(event, AcceptConnection) for event in await self._events()):
                pass
            return
        h2_peer = self.raw.peer
        await h2_peer.until(lambda: bool(h2_peer.remote_settings))
        self.raw.stream_id = await h2_peer.request(
            "CONNECT",
            path,
            [("sec-websocket-version", "13")],
            end=False,
            extra=[(b":protocol", b"websocket")],
        )
        await self.raw.read_head()
        assert self.raw.status == 200, self.raw.status
        self.ws = Connection(ConnectionType.CLIENT)

    async def _send(self, event: Event) -> None:
        data = self.ws.send(event)
        if isinstance(self.raw, H1Exchange):
            await self.raw.stream.send_all(data)
        else:
            await self.raw.send(data)

    async def _events(self) -> list[Event]:
        """Read once; the events that came (a ping answered, a close noted and answered)."""
        if isinstance(self.raw, H1Exchange):
            try:
                data = await self.raw.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
        else:
            try:
                data = await self.raw.read_chunk()
            except ConnectionEnded:
                data = b""
        self.ws.receive_data(data or None)
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, Ping):
                self.pings += 1
                if self.answer_pings:
                    await self._send(event.response())
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    # (Over HTTP/2 the server may have reset the stream once its close
                    # went out, its request being unfinished: no answer is owed then.)
                    with contextlib.suppress(h2.exceptions.StreamClosedError):
                        await self._send(event.response())
            elif isinstance(event, Message):
                self._parts.append(event.data)
                if event.message_finished:
                    joined = "" if isinstance(event, TextMessage) else b""
                    self._messages.append(joined.join(self._parts))  # type: ignore[arg-type]
                    self._parts = []
        if not data and self.close_code is None:
            self.close_code = 1006
        return events

    async def send(self, message: str | bytes) -> None:
        event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        await self._send(event)

    async def receive(self) -> str | bytes:
        """The next message; ``WebSocketClosed`` once the WebSocket has closed."""
        while not self._messages:
            if self.close_code is not None:
                raise WebSocketClosed(self.close_code)
            await self._events()
        return self._messages.pop(0)

    async def next_ping(self) -> None:
        """Read until the server's next ping has come (and been answered, or not)."""
        pings = self.pings
        while self.pings == pings:
            if self.close_code is not None:
                raise WebSocketClosed(self.close_code)
            await self._events()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close, and wait for the server's close frame."""
        await self._send(CloseConnection(code, reason))
        while self.close_code is None:
            await self._events()

    async def drop(self) -> None:
        """Go away without a close frame: the socket closes over HTTP/1.1, the stream is
        reset over HTTP/2."""
        await self.raw.leave()


@dataclass
class Answer:
    """A whole response as either protocol framed it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    trailers: list[tuple[bytes, bytes]]
    #: HTTP/1.1's ``Transfer-Encoding: chunked`` (never over HTTP/2).
    chunked: bool

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (case-insensitive), or None."""
        key = name.lower().encode()
        return next((value.decode() for field, value in self.headers if field == key), None)


async def ask(
    port: int,
    protocol: str,
    target: str = "/",
    *,
    method: str = "GET",
    headers: str = "",
    body: bytes = b"",
) -> Answer:
    """One request on a fresh connection of ``protocol``, its body (if any) sent whole
    (with its Content-Length over HTTP/1.1); the whole response."""
    if protocol == "h1":
        async with await RawClient.connect(port) as client:
            await client.send(request_bytes(target, method=method, headers=headers, body=body))
            response = await client.read_response(method=method)
        return Answer(
            response.status,
            response.headers,
            response.body,
            response.trailers,
            response.chunked,
        )
    async with H2Peer.connect(port) as peer:
        stream_id = await peer.request(method, target, _fields(headers), body=body or None)
        state = await peer.response(stream_id)
    assert state.status is not None and state.reset is None, state
    return Answer(state.status, state.headers, bytes(state.data), state.trailers, False)
