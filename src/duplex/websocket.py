"""The WebSocket client: ``async with client.websocket(url) as ws``.

``Client.websocket`` opens a WebSocket to a ws:// or wss:// URL (http:// and https://
work too), through the client's TLS context, its ``connect_timeout``, ``read_timeout``
(for the handshake's answer), ``write_timeout`` (each write) and
``max_response_header_size``. Where the client speaks HTTP/2 to the origin and the
server takes extended CONNECT (RFC 8441), it is a stream of the shared connection;
otherwise HTTP/1.1's Upgrade on a connection of its own (never a pooled one; an
``http2=True`` client offers only ``http/1.1`` by ALPN for it). The open WebSocket is
a ``ClientWebSocket``; a reader task answers pings and holds at most one message that
nobody has taken yet, so a server that sends faster than the caller receives is held
back (by TCP, or by HTTP/2's flow control).
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Literal, TypeAlias

import trio

from .channels._status import CloseStatus
from .channels._websocket import (
    COMPRESS_MIN_SIZE,
    ConnectionClosed,
    HandshakeRefused,
    WebSocket,
    client_extensions,
    extended_connect_block,
    open_client,
    open_client_over_http2,
)
from .http._limits import ClientLimits
from .http._models import Headers, HeadersLike
from .http._pool import HTTP2, Connector, Origin, open_stream

__all__ = ["ClientWebSocket", "ConnectionClosed", "HandshakeRefused", "connect"]

#: How the client opens an HTTP/2 stream with an extended CONNECT header block: the
#: answer's status and fields and the stream, or None where HTTP/2 is not spoken.
ExtendedConnect: TypeAlias = Callable[
    [Origin, list[tuple[bytes, bytes]]],
    Awaitable[tuple[int, list[tuple[bytes, bytes]], trio.abc.Stream] | None],
]

#: Close codes that say the conversation broke rather than ended (RFC 6455 §7.4.1).
_ERROR_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010, 1011})

_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}

#: Fields of the Upgrade request that the handshake writes itself.
_HANDSHAKE_FIELDS = frozenset(
    {
        b"host",
        b"connection",
        b"upgrade",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"content-length",
        b"transfer-encoding",
    }
)


class ClientWebSocket:
    """An open WebSocket, client side (see ``Client.websocket``).

    ``send`` and ``receive`` raise ``ConnectionClosed`` (with the close ``code`` and
    ``reason``) once the connection is closing or closed; messages that arrived before
    are received first. ``async for message in ws`` ends when the connection closes
    cleanly and raises ``ConnectionClosed`` when it fails (a code such as 1006, 1009 or
    1011). ``close_status`` says why, once it is closing.
    """

    def __init__(self, websocket: WebSocket, close_timeout: float | None) -> None:
        self._websocket = websocket
        self._close_timeout = close_timeout
        self._closed_here = False

    def __repr__(self) -> str:
        status = self.close_status
        return f"<ClientWebSocket {'open' if status is None else f'closed {status.code}'}>"

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server agreed to, or None."""
        return self._websocket.subprotocol

    @property
    def compressed(self) -> bool:
        """True when permessage-deflate was agreed."""
        return self._websocket.compressed

    @property
    def close_status(self) -> CloseStatus | None:
        """Why the WebSocket closed (or is closing); None while it is open.

        ``kind`` names who closed, as for a channel: ``"client"`` (this side called
        ``close``), ``"server"``, ``"shutdown"`` (the server said 1001 or 1012),
        ``"gone"`` (no close frame: 1006), ``"error"`` (a code that says the
        conversation broke, whichever side sent it).
        """
        close = self._websocket.closing
        if close is None:
            return None
        code, reason = close
        kind: Literal["server", "client", "gone", "shutdown", "error"]
        if code == 1006:
            kind = "gone"
        elif code in _ERROR_CODES:
            kind = "error"
        elif self._closed_here:
            kind = "client"
        elif code in (1001, 1012):
            kind = "shutdown"
        else:
            kind = "server"
        return CloseStatus(kind, code, reason)

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send ``message``: a text message for ``str``, a binary one for bytes (or a
        bytearray or memoryview, copied).

        Raises ``ConnectionClosed`` if the connection is closing or closed, or breaks
        (1006, also when the server takes nothing within ``write_timeout``), and
        ``TypeError`` for anything else.
        """
        if not isinstance(message, str | bytes | bytearray | memoryview):
            raise TypeError(f"a WebSocket message is str or bytes, not {type(message).__name__}")
        if not isinstance(message, str | bytes):
            message = bytes(message)
        await self._websocket.send_message(message)

    async def receive(self) -> str | bytes:
        """The next message: ``str`` for a text one, ``bytes`` for a binary one.

        Waits as long as it takes (wrap it in ``trio.move_on_after`` to bound it).
        Raises ``ConnectionClosed`` once the connection is closing or closed and every
        message that arrived before has been received.
        """
        return await self._websocket.get_message()

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        while True:
            try:
                message = await self.receive()
            except ConnectionClosed:
                status = self.close_status
                if status is not None and status.clean:
                    return
                raise
            yield message

    async def ping(self, payload: bytes | None = None) -> None:
        """Send a ping and return when its pong arrives; raises ``ConnectionClosed`` if
        the connection closes first (see ``trio.move_on_after`` to bound the wait)."""
        await self._websocket.ping(payload)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason``: send the close frame, wait for the
        server's (at most the client's ``read_timeout``), then close the connection.
        Messages not received yet are dropped. Idempotent; if the server began the
        closing, this waits for it to end. Raises ``ValueError`` for a code a close
        frame may not carry (1000-1003, 1007-1014 and 3000-4999 may) or a reason over
        123 bytes."""
        if not (code in range(1000, 1004) or code in range(1007, 1015) or 3000 <= code <= 4999):
            raise ValueError(f"{code} is not a close code an endpoint may send")
        if len(reason.encode()) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
        if self._websocket.closing is None:
            self._closed_here = True
        timeout = math.inf if self._close_timeout is None else self._close_timeout
        with trio.move_on_after(timeout):  # aclose closes the connection either way
            await self._websocket.aclose(code, reason)


def _as_http(url: str) -> str:
    """``url`` with its scheme as the HTTP client knows it (http or https); raises
    ``ValueError`` for a scheme that is not ws, wss, http or https."""
    scheme, colon, rest = url.partition(":")
    if not colon or scheme.lower() not in _SCHEMES:
        raise ValueError(f"unsupported WebSocket URL {url!r} (ws:// and wss:// are)")
    return f"{_SCHEMES[scheme.lower()]}:{rest}"


@asynccontextmanager
async def connect(
    url: str,
    *,
    limits: ClientLimits,
    ssl_context: ssl.SSLContext | None = None,
    http2: HTTP2 = False,
    subprotocols: Sequence[str] | None = None,
    compress: bool = False,
    headers: HeadersLike | None = None,
    max_message_size: int = 1 << 20,
    compress_min_size: int = COMPRESS_MIN_SIZE,
    connector: Connector | None = None,
    extended_connect: ExtendedConnect | None = None,
) -> AsyncIterator[ClientWebSocket]:
    """What ``Client.websocket`` does (see there), given the client's ``limits``,
    ``ssl_context``, ``http2`` setting and ``headers`` (its own and the call's), its
    pool's ``connector``, which opens the stream in place of TCP (and TLS) if given,
    and its way of opening an HTTP/2 stream with an extended CONNECT, tried first."""
    from .http._client import _host_header, _split_url  # the client's own URL rules

    if isinstance(subprotocols, str):
        raise TypeError("subprotocols is a list of names, not one string")
    origin, target, authorization = _split_url(_as_http(url))
    fields = Headers(headers)
    extra = [(name, value) for name, value in fields.raw if name not in _HANDSHAKE_FIELDS]
    if authorization is not None and b"authorization" not in {name for name, _ in extra}:
        extra.append((b"authorization", authorization))
    host = fields.get("host") or _host_header(origin).decode("ascii")
    offered = tuple(subprotocols or ())
    extensions = client_extensions(compress, compress_min_size, max_message_size)
    tunnel = None
    if extended_connect is not None:
        block = extended_connect_block(
            scheme=origin[0],
            authority=host,
            target=target,
            subprotocols=offered,
            extensions=extensions,
            headers=extra,
        )
        tunnel = await extended_connect(origin, block)
    if tunnel is not None:
        status, answer, stream = tunnel
    elif connector is not None:
        stream = await connector(origin)
    else:
        stream = await open_stream(
            origin,
            limits=limits,
            ssl_context=ssl_context,
            # An HTTP/2 client's context offers h2; the Upgrade is HTTP/1.1's.
            alpn=["http/1.1"] if http2 and origin[0] == "https" else None,
        )
    raised: BaseException | None = None
    try:
        if tunnel is not None:
            websocket = await open_client_over_http2(
                stream,
                status,
                answer,
                subprotocols=offered,
                extensions=extensions,
                max_message_size=max_message_size,
                read_timeout=limits.read_timeout,
                write_timeout=limits.write_timeout,
            )
        else:
            websocket = await open_client(
                stream,
                host=host,
                target=target,
                subprotocols=offered,
                compress=compress,
                compress_min_size=compress_min_size,
                headers=extra,
                max_message_size=max_message_size,
                max_head_size=limits.max_response_header_size,
                read_timeout=limits.read_timeout,
                write_timeout=limits.write_timeout,
            )
        ws = ClientWebSocket(websocket, limits.read_timeout)
        async with trio.open_nursery() as nursery:
            websocket.start(nursery)
            try:
                yield ws
            except BaseException as error:
                raised = error
                await websocket.abort("the client gave up")
                raise
            await ws.close()
    except BaseExceptionGroup as group:
        # The reader never raises: a group holding just what left the `async with`
        # block is that exception, given back to the caller as it was.
        if raised is not None and list(group.exceptions) == [raised]:
            raise raised from raised.__cause__
        raise
    finally:
        await trio.aclose_forcefully(stream)
