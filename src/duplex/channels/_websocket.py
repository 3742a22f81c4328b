"""WebSocket (RFC 6455), server side: wsproto's framing, driven over a trio stream.

The opening handshake starts from the request the HTTP server already parsed
(``Handshake``); ``Handshake.accept`` answers 101 and returns the open ``WebSocket``, whose
reader task runs in a nursery the caller supplies. Over HTTP/2 (RFC 8441) the request is
an extended CONNECT that the server answers 200 itself: there is no handshake to replay,
and wsproto's handshake-less ``Connection`` frames the stream's DATA. No extension (so no
permessage-deflate) and no subprotocol is negotiated.

Every buffer has a bound:

- a message may take ``max_message_size`` bytes, where each frame of a fragmented
  message but the last counts ``FRAME_ALLOWANCE`` bytes on top of its payload, so that
  neither a big message nor an endless run of small or empty fragments can grow memory
  (or last for ever); beyond it, the connection fails with 1009;
- at most one message waits to be taken; while a second one, complete, waits for room,
  the socket is not read;
- a ping is answered by the reader before it reads on, so a peer that sends pings and
  reads no pongs stops being read once its socket is full;
- one writer at a time, each write of up to ``WRITE_SIZE`` bytes within
  ``write_timeout``.

A protocol violation by the peer (a frame wsproto cannot parse: 1002, invalid UTF-8:
1007) fails the connection: a close frame with the code goes out, then the transport
closes (RFC 6455 §7.1.7).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import os
from dataclasses import dataclass, field

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..http._models import Request

__all__ = [
    "FRAME_ALLOWANCE",
    "READ_SIZE",
    "WRITE_SIZE",
    "ConnectionClosed",
    "Handshake",
    "Refusal",
    "WebSocket",
]

#: What each frame of a fragmented message but the last counts against
#: ``max_message_size`` on top of its payload (about what keeping a fragment costs).
FRAME_ALLOWANCE = 64
#: Bytes asked of the socket in one read.
READ_SIZE = 65536
#: Bytes written under one ``write_timeout``: a longer frame gets one per piece.
WRITE_SIZE = 65536


class ConnectionClosed(Exception):
    """The WebSocket is closed or closing: nothing more can be sent, or received.

    ``code`` and ``reason`` are those of the close frame that began the closing
    handshake, whichever side sent it (1005 if the peer's had no code); 1006 means the
    connection ended without one: the transport broke, or the peer took less than
    ``WRITE_SIZE`` bytes within ``write_timeout``.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"the WebSocket closed with {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an upgrade request cannot open a WebSocket, as the HTTP answer it deserves."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


def _refusal(request: Request) -> Refusal | None:
    """What duplex requires beyond wsproto: a 16-byte key, no body."""
    headers = request.headers
    if request.method != "GET":
        return Refusal(400, "a WebSocket handshake is a GET")
    if "upgrade" not in headers.get_tokens("connection"):
        return Refusal(400, "a WebSocket handshake needs Connection: upgrade")
    if headers.get("sec-websocket-version", "").strip() != "13":
        return Refusal(
            426, "only WebSocket version 13 is spoken here", {"sec-websocket-version": "13"}
        )
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        valid_key = False
    if not valid_key:
        return Refusal(400, "a WebSocket handshake needs a Sec-WebSocket-Key of 16 bytes")
    if request.body.length != 0:
        return Refusal(400, "a WebSocket handshake has no body")
    return None


def _refusal_over_http2(request: Request) -> Refusal | None:
    """What RFC 8441 requires of an extended CONNECT (h2 checked ``:protocol``)."""
    if request.method != "CONNECT":
        return Refusal(400, "a WebSocket over HTTP/2 is an extended CONNECT")
    if request.headers.get("sec-websocket-version", "").strip() != "13":
        return Refusal(
            426, "only WebSocket version 13 is spoken here", {"sec-websocket-version": "13"}
        )
    return None


class Handshake:
    """The server's side of an opening handshake, from a request already parsed.

    ``refusal`` says why the request cannot open a WebSocket (answer it over HTTP then,
    before taking the connection over); if it is None, ``accept`` opens it.
    """

    def __init__(self, request: Request) -> None:
        self._connection: WSConnection | Connection
        self._accepted = False
        self.refusal: Refusal | None
        if request.http_version == "2":
            self._connection = Connection(ConnectionType.SERVER)
            self.refusal = _refusal_over_http2(request)
            return
        self._connection = WSConnection(ConnectionType.SERVER)
        self.refusal = _refusal(request) or self._replay(request)

    def _replay(self, request: Request) -> Refusal | None:
        """Feed the request to wsproto's handshake; its refusal, if it has one."""
        assert isinstance(self._connection, WSConnection)
        try:
            self._connection.initiate_upgrade_connection(
                request.headers.raw, request.target.encode("latin-1")
            )
        except RemoteProtocolError as error:
            hint = error.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            return Refusal(status, f"not a WebSocket handshake: {error}")
        except (h11.LocalProtocolError, UnicodeError) as error:
            # A request h11 will not replay (an HTTP/1.0 one without Host), or a target
            # that is not ASCII.
            return Refusal(400, f"not a WebSocket handshake: {error}")
        for _ in self._connection.events():
            pass  # the Request event: what it offers (extensions, subprotocols) is declined
        return None

    async def accept(
        self,
        nursery: trio.Nursery,
        stream: trio.abc.Stream,
        trailing: bytes = b"",
        *,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        max_message_size: int = 1 << 20,
        write_timeout: float | None = 60.0,
    ) -> WebSocket:
        """Answer 101 on ``stream`` (over HTTP/2: nothing, the stream's 200 is out) and
        return the open WebSocket, its reader started in ``nursery``.

        ``trailing`` holds what the server read after the request head (the client's
        first frames, if it did not wait). ``extra_headers`` go into the 101 after the
        handshake's own. Raises ``ConnectionClosed`` (1006) if the transport breaks or
        the 101 does not go out within ``write_timeout``, ``RuntimeError`` if the
        request was refused or is accepted twice.
        """
        if self.refusal is not None:
            raise RuntimeError(f"a refused handshake cannot be accepted: {self.refusal}")
        if self._accepted:
            raise RuntimeError("the handshake was accepted already")
        self._accepted = True
        response = b""
        if isinstance(self._connection, WSConnection):
            response = self._connection.send(AcceptConnection(extra_headers=extra_headers or []))
        websocket = WebSocket(
            stream,
            self._connection,
            max_message_size=max_message_size,
            write_timeout=write_timeout,
        )
        if response:
            async with websocket._send_lock:
                await websocket._write(response)
        self._connection.receive_data(trailing)
        nursery.start_soon(websocket._read)
        return websocket


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


class WebSocket:
    """An open WebSocket, server side, made by ``Handshake.accept``.

    A reader task reads frames, answers pings and queues messages for ``get_message``
    (one at most: the socket is not read while a second one waits). Sends are
    serialised (one writer at a time), each write of up to ``WRITE_SIZE`` bytes bounded
    by ``write_timeout``. Once the connection is closing, every method but ``aclose``
    raises ``ConnectionClosed`` (``get_message`` after the messages already received).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: WSConnection | Connection,
        *,
        max_message_size: int,
        write_timeout: float | None,
    ) -> None:
        self._stream = stream
        self._connection = connection
        self.max_message_size = max_message_size
        self.write_timeout = write_timeout
        self._send_lock = trio.Lock()
        #: Set once a write was cut short: a frame may be half sent, nothing may follow.
        self._broken = False
        self._queue, self._messages = trio.open_memory_channel[str | bytes](1)
        self._pings: dict[bytes, trio.Event] = {}
        #: The code and reason of the close frame that began the closing handshake.
        self._close: tuple[int, str] | None = None
        self._closed = trio.Event()
        # The message being received, when it comes in more than one piece.
        self._receiving = False
        self._parts = bytearray()
        self._cost = 0

    def __repr__(self) -> str:
        return f"<WebSocket {self._connection.state.name}>"

    def _error(self) -> ConnectionClosed:
        code, reason = self._close or (1006, "the connection ended without a close frame")
        return ConnectionClosed(code, reason)

    def _set_close(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)

    # -- what the user calls ----------------------------------------------------------

    async def get_message(self) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Messages received before the connection began closing are all delivered first;
        then it raises ``ConnectionClosed``.
        """
        try:
            return await self._messages.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._error() from None

    async def send_message(self, message: str | bytes) -> None:
        """Send ``message`` as one frame: text for ``str``, binary for ``bytes``.

        Raises ``ConnectionClosed`` if the connection is closing or closed, or closes
        while sending (1006 if the peer took less than ``WRITE_SIZE`` bytes within
        ``write_timeout``).
        """
        if isinstance(message, str):
            await self._send(TextMessage(data=message))
        else:
            await self._send(BytesMessage(data=message))

    async def ping(self, payload: bytes | None = None) -> None:
        """Send a ping and return once its pong arrives (a pong also answers every
        earlier ping still waiting). ``payload`` defaults to 4 random bytes.

        Raises ``ValueError`` if a ping with this payload already waits,
        ``ConnectionClosed`` if the connection closes first.
        """
        if payload is None:
            payload = os.urandom(4)
        if payload in self._pings:
            raise ValueError(f"a ping with payload {payload!r} already waits for its pong")
        answered = trio.Event()
        self._pings[payload] = answered
        try:
            await self._send(Ping(payload))
            await answered.wait()
            if payload in self._pings:  # woken by the close, not by a pong
                raise self._error()
        finally:
            if self._pings.get(payload) is answered:
                del self._pings[payload]

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close: send a close frame with ``code`` and ``reason``, wait for the peer's,
        then close the transport. Messages not taken yet are dropped.

        Idempotent: if the connection is closing already, it waits for that to end. Cancel
        it to stop waiting for the peer; the transport is closed either way.
        """
        begins = self._close is None
        self._set_close(code, reason)
        self._messages.close()  # the reader must never wait for a taker now
        try:
            if begins:
                with contextlib.suppress(ConnectionClosed):
                    await self._send(CloseConnection(code, reason))
            await self._closed.wait()
        finally:
            await trio.aclose_forcefully(self._stream)

    # -- sending ----------------------------------------------------------------------

    async def _send(self, event: Event) -> None:
        """Send ``event``'s frame, one writer at a time.

        Raises ``ConnectionClosed`` if the connection's state forbids it (closing or
        closed) or if the write fails.
        """
        async with self._send_lock:
            if self._broken:
                raise self._error()
            try:
                data = self._connection.send(event)
            except LocalProtocolError:
                raise self._error() from None
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        """Write ``data`` (the caller holds the send lock), ``WRITE_SIZE`` bytes at most
        per ``write_timeout``.

        Raises ``ConnectionClosed`` if the transport breaks or a piece does not go out in
        time; the connection is then closed (1006).
        """
        timeout = math.inf if self.write_timeout is None else self.write_timeout
        view = memoryview(data)
        try:
            for start in range(0, len(view), WRITE_SIZE):
                with trio.move_on_after(timeout) as scope:
                    await self._stream.send_all(view[start : start + WRITE_SIZE])
                if scope.cancelled_caught:
                    self._broken = True
                    why = f"the peer took less than {WRITE_SIZE} bytes in {timeout:g} s"
                    self._set_close(1006, why)
                    await trio.aclose_forcefully(self._stream)
                    raise self._error()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._broken = True
            self._set_close(1006, f"the connection broke: {error}")
            await trio.aclose_forcefully(self._stream)
            raise self._error() from error
        except trio.Cancelled:
            self._broken = True  # part of a frame may be out: nothing else can follow
            raise

    # -- receiving (the reader task) --------------------------------------------------

    async def _read(self) -> None:
        """Read and act on frames until the connection closes; then close the transport."""
        try:
            while True:
                for event in self._connection.events():
                    if not await self._handle(event):
                        return
                data = await self._stream.receive_some(READ_SIZE)
                if not data:
                    self._set_close(1006, "the connection ended without a close frame")
                    return
                self._connection.receive_data(data if type(data) is bytes else bytes(data))
                del data  # wsproto copied it: an idle connection holds no read buffer
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._set_close(1006, f"the connection broke: {error}")
        except ConnectionClosed:
            pass  # a pong or close frame could not go out; the close is recorded
        finally:
            self._set_close(1006, "the connection ended without a close frame")
            self._queue.close()
            for answered in self._pings.values():
                answered.set()
            self._closed.set()
            await trio.aclose_forcefully(self._stream)

    async def _handle(self, event: Event) -> bool:
        """Act on one event from the peer; False once there is nothing more to read."""
        if isinstance(event, TextMessage | BytesMessage):
            return await self._take_data(event)
        if isinstance(event, Ping):
            if self._connection.state is ConnectionState.OPEN:
                # Answered before reading on: pongs never pile up. (If a close frame
                # went out meanwhile, none is due.)
                with contextlib.suppress(ConnectionClosed):
                    await self._send(event.response())
        elif isinstance(event, Pong):
            self._take_pong(event.payload)
        elif isinstance(event, CloseConnection):
            await self._take_close(event)
            return False
        return True

    async def _take_data(self, event: TextMessage | BytesMessage) -> bool:
        data = event.data
        if not self._receiving and event.message_finished:
            # A whole message in one piece, the common case: nothing to gather.
            size = _utf8_size(data) if isinstance(data, str) else len(data)
            if size > self.max_message_size:
                await self._fail(1009, f"a message over {self.max_message_size} bytes")
                return False
            await self._deliver(data if isinstance(data, str | bytes) else bytes(data))
            return True
        piece = data.encode() if isinstance(data, str) else data
        self._receiving = True
        self._cost += len(piece)
        if event.frame_finished and not event.message_finished:
            self._cost += FRAME_ALLOWANCE
        if self._cost > self.max_message_size:
            await self._fail(
                1009,
                f"a message over {self.max_message_size} bytes "
                f"(each fragment counting {FRAME_ALLOWANCE} more)",
            )
            return False
        self._parts += piece
        if event.message_finished:
            whole, self._parts = self._parts, bytearray()
            self._receiving, self._cost = False, 0
            await self._deliver(whole.decode() if isinstance(data, str) else bytes(whole))
        return True

    async def _deliver(self, message: str | bytes) -> None:
        """Queue ``message``, waiting for room: the socket is not read meanwhile."""
        with contextlib.suppress(trio.BrokenResourceError):  # nobody takes them any more
            await self._queue.send(message)

    def _take_pong(self, payload: bytes) -> None:
        if payload not in self._pings:
            return  # unsolicited, or for a ping that gave up waiting
        while self._pings:
            key, answered = next(iter(self._pings.items()))
            del self._pings[key]
            answered.set()
            if key == payload:
                return

    async def _take_close(self, event: CloseConnection) -> None:
        state = self._connection.state
        if state is ConnectionState.REMOTE_CLOSING:  # the peer began: answer, hang up
            self._set_close(event.code, event.reason or "")
            with contextlib.suppress(ConnectionClosed):  # aclose may have answered it
                await self._send(event.response())
        elif state is not ConnectionState.CLOSED:
            # wsproto could not parse what the peer sent, and reports it as a close
            # event without a close frame having come in, or gone out.
            await self._fail(event.code, event.reason or "")

    async def _fail(self, code: int, reason: str) -> None:
        """Fail the connection: a close frame with ``code`` if none went out yet; the
        reader then closes the transport without waiting for the peer's."""
        self._set_close(code, reason)
        if self._connection.state is ConnectionState.OPEN:
            await self._send(CloseConnection(code, reason))
