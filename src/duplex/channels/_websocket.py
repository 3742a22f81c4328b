"""WebSocket (RFC 6455), server side: wsproto's framing, driven over a trio stream.

The opening handshake starts from the request the HTTP server already parsed
(``Handshake``); ``Handshake.accept`` answers 101 and returns the open ``WebSocket``, whose
reader task runs in a nursery the caller supplies. Over HTTP/2 (RFC 8441) the request is
an extended CONNECT that the server answers 200 itself: there is no handshake to replay,
and wsproto's handshake-less ``Connection`` frames the stream's DATA. No extension (so no
permessage-deflate) and no subprotocol is negotiated.

Every buffer has a bound:

- a message may take ``max_message_size`` bytes (inflated, when compressed: inflation
  stops there, so a deflate bomb costs no more), where each frame of a fragmented
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
import zlib
from collections.abc import Sequence
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
    RejectData,
    TextMessage,
)
from wsproto.events import Request as Upgrade
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.handshake import client_extensions_handshake, server_extensions_handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .._errors import ProtocolError, Timeout
from ..http._models import Request

__all__ = [
    "COMPRESS_MIN_SIZE",
    "FRAME_ALLOWANCE",
    "READ_SIZE",
    "REFUSAL_BODY_SIZE",
    "WRITE_SIZE",
    "BoundedDeflate",
    "ConnectionClosed",
    "Handshake",
    "HandshakeRefused",
    "Refusal",
    "WebSocket",
    "client_extensions",
    "extended_connect_block",
    "open_client",
    "open_client_over_http2",
]

#: What each frame of a fragmented message but the last counts against
#: ``max_message_size`` on top of its payload (about what keeping a fragment costs).
FRAME_ALLOWANCE = 64
#: Bytes asked of the socket in one read.
READ_SIZE = 65536
#: Bytes written under one ``write_timeout``: a longer frame gets one per piece.
WRITE_SIZE = 65536
#: Messages shorter than this go uncompressed, where permessage-deflate was agreed:
#: deflating them costs more time than it saves bytes.
COMPRESS_MIN_SIZE = 1024
#: What a client keeps of the body of a refused handshake.
REFUSAL_BODY_SIZE = 65536


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


class HandshakeRefused(Exception):
    """The server answered the WebSocket handshake with ``status`` rather than 101.

    ``headers`` are the response's (a ``Headers``-like list of pairs), ``body`` its
    first ``REFUSAL_BODY_SIZE`` bytes: a duplex server says there why it refused.
    """

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        text = body.decode("utf-8", errors="replace").strip()
        super().__init__(
            f"the server refused the WebSocket with {status}" + (f": {text}" if text else "")
        )
        self.status = status
        self.headers = headers
        self.body = body


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate (RFC 7692) whose inflation is bounded, on wsproto's.

    wsproto inflates whatever a frame holds; here a message inflates to at most
    ``max_message_size`` bytes (and one more, to tell), after which the connection
    fails with 1009: a deflate bomb never costs more memory than an honest message.
    Messages (sent whole) under ``min_size`` bytes go out uncompressed. Of a client's
    several offers, the first acceptable one is taken; an offer with a parameter RFC
    7692 does not define, or a window size out of range, is declined, never an error.
    """

    _PARAMETERS = frozenset(
        {
            "client_no_context_takeover",
            "server_no_context_takeover",
            "client_max_window_bits",
            "server_max_window_bits",
        }
    )

    def __init__(self, *, max_message_size: int, min_size: int = COMPRESS_MIN_SIZE) -> None:
        super().__init__()
        self.max_message_size = max_message_size
        self.min_size = min_size
        #: Bytes inflated so far of the message coming in.
        self._inflated = 0
        #: Whether the message going out is compressed (its first frame decided).
        self._compressing = False

    def accept(self, offer: str) -> bool | str | None:
        if self._enabled:
            return None  # the first acceptable offer is the one agreed
        names = [part.split("=", 1)[0].strip() for part in offer.split(";")[1:]]
        if any(name not in self._PARAMETERS for name in names) or len(set(names)) < len(names):
            return None
        # Tried on a fresh extension: wsproto's accept changes what it is called on
        # before it knows whether it accepts.
        trial = PerMessageDeflate()
        try:
            answer = trial.accept(offer)
        except ValueError:  # a window size that is not a number
            return None
        if answer is None:
            return None
        self.client_no_context_takeover = trial.client_no_context_takeover
        self.server_no_context_takeover = trial.server_no_context_takeover
        self.client_max_window_bits = trial.client_max_window_bits
        self.server_max_window_bits = trial.server_max_window_bits
        self._enabled = True
        return answer

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        """``data`` inflated, or 1009 once the message would pass ``max_message_size``."""
        assert self._decompressor is not None
        room = self.max_message_size - self._inflated
        try:
            # At most one byte more than there is room for: enough to know it is over.
            inflated = self._decompressor.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(inflated)
        if self._inflated > self.max_message_size or self._decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return inflated

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(bytes(data))

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not fin:
            return None
        compressed = self._inbound_compressed and self._inbound_is_compressible
        self._inbound_compressed = None
        if not compressed:
            return None
        # The end of a message: the 4 bytes RFC 7692 has the sender take off.
        inflated = self._inflate(b"\x00\x00\xff\xff")
        self._inflated = 0
        takeover_off = (
            self.server_no_context_takeover if proto.client else self.client_no_context_takeover
        )
        if takeover_off:
            self._decompressor = None
        return inflated

    def frame_outbound(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        data: bytes,
        fin: bool,
    ) -> tuple[RsvBits, bytes]:
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            self._compressing = not fin or len(data) >= self.min_size
        if not self._compressing and self._compressible_opcode(opcode):
            return (rsv, data)
        return super().frame_outbound(proto, opcode, rsv, data, fin)


def _offered(request: Request, name: str) -> list[str]:
    """The comma-separated items of every ``name`` field, in order."""
    return [
        item.strip()
        for value in request.headers.get_all(name)
        for item in value.split(",")
        if item.strip()
    ]


def _choose_subprotocol(offered: list[str], supported: Sequence[str]) -> str | Refusal | None:
    """The first of ``offered`` that is ``supported``, None if none is offered, and a
    refusal if only others are."""
    chosen = next((name for name in offered if name in supported), None)
    if chosen is not None or not offered:
        return chosen
    spoken = ", ".join(supported) if supported else "none"
    return Refusal(
        400,
        f"none of the offered WebSocket subprotocols ({', '.join(offered)}) is spoken here;"
        f" supported: {spoken}",
    )


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
    ``subprotocol`` is the one agreed (None if the client offered none). ``fields`` are
    what the answer carries of the negotiation: ``Sec-WebSocket-Protocol`` and, over
    HTTP/2, ``Sec-WebSocket-Extensions`` (over HTTP/1.1 wsproto writes that one into
    the 101), for the caller to put into HTTP/2's 200.
    """

    def __init__(
        self,
        request: Request,
        *,
        subprotocols: Sequence[str] = (),
        compress: bool = False,
        compress_min_size: int = COMPRESS_MIN_SIZE,
        max_message_size: int = 1 << 20,
    ) -> None:
        self._connection: WSConnection | Connection
        self._accepted = False
        self.refusal: Refusal | None
        self.subprotocol: str | None = None
        self.fields: list[tuple[bytes, bytes]] = []
        self._extensions: list[Extension] = []
        if compress:
            self._extensions.append(
                BoundedDeflate(max_message_size=max_message_size, min_size=compress_min_size)
            )
        if request.http_version == "2":
            self.refusal = _refusal_over_http2(request) or self._negotiate(request, subprotocols)
            if self.refusal is None:
                agreed = server_extensions_handshake(
                    _offered(request, "sec-websocket-extensions"), self._extensions
                )
                if agreed is not None:
                    self.fields.append((b"sec-websocket-extensions", agreed))
            extensions = [extension for extension in self._extensions if extension.enabled()]
            self._connection = Connection(ConnectionType.SERVER, extensions)
            return
        self._connection = WSConnection(ConnectionType.SERVER)
        self.refusal = (
            _refusal(request) or self._negotiate(request, subprotocols) or self._replay(request)
        )

    def _negotiate(self, request: Request, subprotocols: Sequence[str]) -> Refusal | None:
        chosen = _choose_subprotocol(_offered(request, "sec-websocket-protocol"), subprotocols)
        if isinstance(chosen, Refusal):
            return chosen
        self.subprotocol = chosen
        if chosen is not None:
            self.fields.append((b"sec-websocket-protocol", chosen.encode()))
        return None

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
            pass  # the Request event: what it offers was read from the request itself
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
            # The subprotocol goes in as a header: wsproto would check it against its
            # own reading of the offers, which keeps only the last of several fields.
            headers = [field for field in self.fields if field[0] == b"sec-websocket-protocol"]
            response = self._connection.send(
                AcceptConnection(
                    extensions=self._extensions,
                    extra_headers=headers + (extra_headers or []),
                )
            )
        websocket = WebSocket(
            stream,
            self._connection,
            max_message_size=max_message_size,
            write_timeout=write_timeout,
            subprotocol=self.subprotocol,
        )
        websocket.compressed = any(extension.enabled() for extension in self._extensions)
        if response:
            async with websocket._send_lock:
                await websocket._write(response)
        self._connection.receive_data(trailing)
        nursery.start_soon(websocket._read)
        return websocket


def client_extensions(
    compress: bool, compress_min_size: int, max_message_size: int
) -> list[Extension]:
    """What a client offers: permessage-deflate, bounded, if ``compress``."""
    if not compress:
        return []
    return [BoundedDeflate(max_message_size=max_message_size, min_size=compress_min_size)]


def extended_connect_block(
    *,
    scheme: str,
    authority: str,
    target: str,
    subprotocols: Sequence[str] = (),
    extensions: Sequence[Extension] = (),
    headers: list[tuple[bytes, bytes]] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header block of a client's extended CONNECT (RFC 8441) offering
    ``subprotocols`` and ``extensions``; ``headers`` follow, less those HTTP/2 forbids."""
    block = [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", scheme.encode("ascii")),
        (b":authority", authority.encode("idna" if not authority.isascii() else "ascii")),
        (b":path", target.encode("ascii")),
        (b"sec-websocket-version", b"13"),
    ]
    if subprotocols:
        block.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode("ascii")))
    offers = [f"{extension.name}; {extension.offer()}" for extension in extensions]
    if offers:
        block.append((b"sec-websocket-extensions", ", ".join(offers).encode("ascii")))
    for name, value in headers or []:
        name = name.lower()
        if name not in _NOT_OVER_HTTP2:
            block.append((name, value))
    return block


#: Fields a client's header list never carries over HTTP/2 (RFC 9113 §8.2.2), and those
#: the extended CONNECT sets itself.
_NOT_OVER_HTTP2 = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"sec-websocket-key",
    }
)


async def open_client_over_http2(
    stream: trio.abc.Stream,
    status: int,
    fields: list[tuple[bytes, bytes]],
    *,
    subprotocols: Sequence[str] = (),
    extensions: Sequence[Extension] = (),
    max_message_size: int = 1 << 20,
    read_timeout: float | None = 60.0,
    write_timeout: float | None = 60.0,
) -> WebSocket:
    """The WebSocket on an HTTP/2 stream that an extended CONNECT (offering
    ``subprotocols`` and ``extensions``) opened, given the answer's ``status`` and
    ``fields``; the caller then ``start``s its reader.

    Raises ``HandshakeRefused`` for a status other than 200 (with what the body holds
    within ``read_timeout``), ``duplex.ProtocolError`` for a subprotocol or extension
    that was not offered.
    """
    if status != 200:
        body = bytearray()
        timeout = math.inf if read_timeout is None else read_timeout
        with trio.move_on_after(timeout), contextlib.suppress(trio.BrokenResourceError):
            while len(body) < REFUSAL_BODY_SIZE:
                data = await stream.receive_some(REFUSAL_BODY_SIZE - len(body))
                if not data:
                    break
                body += data
        raise HandshakeRefused(status, fields, bytes(body))
    subprotocol: str | None = None
    accepts: list[str] = []
    for name, value in fields:
        if name == b"sec-websocket-protocol":
            subprotocol = value.decode("latin-1").strip()
        elif name == b"sec-websocket-extensions":
            accepts += [item.strip() for item in value.decode("latin-1").split(",")]
    if subprotocol is not None and subprotocol not in subprotocols:
        raise ProtocolError(f"the server agreed to a subprotocol not offered: {subprotocol!r}")
    try:
        agreed = client_extensions_handshake(accepts, list(extensions))
    except (RemoteProtocolError, ValueError) as error:
        raise ProtocolError(f"the server's WebSocket handshake is not valid: {error}") from error
    websocket = WebSocket(
        stream,
        Connection(ConnectionType.CLIENT, agreed),
        max_message_size=max_message_size,
        write_timeout=write_timeout,
        subprotocol=subprotocol,
    )
    websocket.compressed = bool(agreed)
    return websocket


async def open_client(
    stream: trio.abc.Stream,
    *,
    host: str,
    target: str,
    subprotocols: Sequence[str] = (),
    compress: bool = False,
    compress_min_size: int = COMPRESS_MIN_SIZE,
    headers: list[tuple[bytes, bytes]] | None = None,
    max_message_size: int = 1 << 20,
    max_head_size: int = 65536,
    read_timeout: float | None = 60.0,
    write_timeout: float | None = 60.0,
) -> WebSocket:
    """The client's side of an opening handshake over HTTP/1.1 on ``stream``: send the
    Upgrade request, read the 101, and return the open WebSocket, whose reader the
    caller then ``start``s.

    Raises ``HandshakeRefused`` when the server answers another status,
    ``duplex.ProtocolError`` when its answer is not a valid handshake (a wrong accept
    token, a subprotocol or extension not offered, a head over ``max_head_size``
    bytes, the connection closed), ``duplex.Timeout`` when it sends nothing for
    ``read_timeout`` seconds, and ``ConnectionClosed`` (1006) when the request does not
    go out. The stream is the caller's to close if it raises.
    """
    connection = WSConnection(ConnectionType.CLIENT)
    extensions = client_extensions(compress, compress_min_size, max_message_size)
    request = connection.send(
        Upgrade(
            host=host,
            target=target,
            extensions=extensions,
            subprotocols=list(subprotocols),
            extra_headers=headers or [],
        )
    )
    websocket = WebSocket(
        stream, connection, max_message_size=max_message_size, write_timeout=write_timeout
    )
    async with websocket._send_lock:
        await websocket._write(request)
    received = 0
    refused: RejectConnection | None = None
    body = bytearray()
    timeout = math.inf if read_timeout is None else read_timeout
    try:
        while True:
            for event in connection.events():
                if isinstance(event, AcceptConnection):
                    websocket.subprotocol = event.subprotocol
                    websocket.compressed = bool(event.extensions)
                    return websocket
                if isinstance(event, RejectConnection):
                    refused = event
                    if not event.has_body:
                        raise HandshakeRefused(event.status_code, event.headers, b"")
                elif isinstance(event, RejectData):
                    body += event.data[: REFUSAL_BODY_SIZE - len(body)]
                    if event.body_finished or len(body) >= REFUSAL_BODY_SIZE:
                        assert refused is not None
                        raise HandshakeRefused(refused.status_code, refused.headers, bytes(body))
            data: bytes | bytearray = b""
            with trio.move_on_after(timeout) as scope:
                # Never more than the head may still take: frames after the 101 stay in
                # the socket for the reader.
                data = await stream.receive_some(min(READ_SIZE, max_head_size - received + 1))
            if scope.cancelled_caught:
                raise Timeout("read", timeout)
            if not data:
                if refused is not None:
                    raise HandshakeRefused(refused.status_code, refused.headers, bytes(body))
                raise ProtocolError(
                    "the server closed the connection during the WebSocket handshake"
                )
            received += len(data)
            if refused is None and received > max_head_size:
                raise ProtocolError(
                    f"the server's answer to the WebSocket handshake is over {max_head_size} bytes"
                )
            connection.receive_data(bytes(data))
    except (RemoteProtocolError, ValueError) as error:
        raise ProtocolError(f"the server's WebSocket handshake is not valid: {error}") from error
    except ProtocolError:
        raise  # (a BrokenResourceError too) raised here, with its reason
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        raise ProtocolError("the connection broke during the WebSocket handshake") from error


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


class WebSocket:
    """An open WebSocket, made by ``Handshake.accept`` (server) or ``open_client``.

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
        subprotocol: str | None = None,
    ) -> None:
        self._stream = stream
        self._connection = connection
        #: The subprotocol agreed in the handshake, if any.
        self.subprotocol = subprotocol
        #: Whether permessage-deflate was agreed.
        self.compressed = False
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

    def start(self, nursery: trio.Nursery) -> None:
        """Start the reader task in ``nursery`` (``open_client`` leaves it to the caller)."""
        nursery.start_soon(self._read)

    @property
    def closing(self) -> tuple[int, str] | None:
        """The code and reason of the close frame that began the closing handshake
        (1006 when the connection ended without one); None while the WebSocket is open."""
        return self._close

    async def abort(self, reason: str) -> None:
        """End at once, without a closing handshake (the peer sees the connection end:
        1006). Idempotent."""
        self._set_close(1006, reason)
        self._messages.close()
        await trio.aclose_forcefully(self._stream)

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
            # wsproto could not parse what the peer sent (or inflated past the bound),
            # and reports it as a close event without a close frame having come in.
            reason = event.reason or ""
            if event.code == CloseReason.MESSAGE_TOO_BIG:
                reason = f"a message over {self.max_message_size} bytes once inflated"
            await self._fail(event.code, reason)

    async def _fail(self, code: int, reason: str) -> None:
        """Fail the connection: a close frame with ``code`` if none went out yet; the
        reader then closes the transport without waiting for the peer's."""
        self._set_close(code, reason)
        if self._connection.state is ConnectionState.OPEN:
            await self._send(CloseConnection(code, reason))
