"""How a channel's messages reach the client: one small strategy per transport.

- ``HTTPTransport``: plain HTTP. A request that streams a body is a full-duplex stream
  whose head goes out when the channel opens; otherwise the head waits for the first
  message, so that a lone ``send(data, close=True)`` is a whole long-poll reply with
  Content-Length. Messages go out as chunks.
- ``SSETransport``: ``text/event-stream``, an event per message, comment heartbeats.
- ``WebSocketTransport``: the handshake replayed from the parsed request (over HTTP/2,
  the extended CONNECT answered 200), a frame per message, pings, and the closing
  handshake.

The strategy decides what goes on the wire; the channel's ``Runner`` decides when.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import ClassVar, Literal, Protocol, TypeAlias

import trio

from ..http._models import Headers, Request
from ..http._takeover import ResponseControl
from ..sse import Event, comment
from ._messages import Message, Stamped, not_a_message
from ._status import GONE, CloseStatus, status_for
from ._websocket import ConnectionClosed, Handshake, WebSocket

__all__ = [
    "CLOSE_HANDSHAKE_SECONDS",
    "HANDSHAKE_SECONDS",
    "ChannelHead",
    "Deliver",
    "HTTPTransport",
    "Refused",
    "SSETransport",
    "Transport",
    "TransportName",
    "WebSocketTransport",
    "transport_for",
]

TransportName: TypeAlias = Literal["http", "sse", "websocket"]
#: What a transport hands each message the client sends to.
Deliver: TypeAlias = Callable[[str | bytes], Awaitable[object]]

#: How long a WebSocket handshake may take once the connection is handed over.
HANDSHAKE_SECONDS = 10.0

#: How long a WebSocket client may take to answer our close frame before we hang up.
CLOSE_HANDSHAKE_SECONDS = 5.0

# The message encoded last, for which transport, and its bytes: a broadcast hands the
# same message to every member, and it is encoded once.
_last_encoded: tuple[object, str, bytes] = (None, "", b"")


class ChannelHead(Protocol):
    """What a transport reads of its channel."""

    request: Request
    max_message_size: int
    ping_interval: float | None
    subprotocols: Sequence[str]
    compress: bool
    compress_min_size: int

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Headers: ...


class Refused(Exception):
    """The request asked for a WebSocket it cannot have; it was answered over HTTP."""


class Transport:
    """One way of carrying a channel's messages; subclasses fill it in."""

    __slots__ = ()

    name: ClassVar[TransportName]
    #: Takes a broadcast's ``Stamped`` message as its event (with the history id).
    takes_events: ClassVar[bool] = False
    #: What goes out while the channel is idle for a heartbeat, if anything.
    heartbeat: ClassVar[bytes | None] = None
    #: Receives from the client whatever the request (else only with ``on_receive`` or a
    #: request body to drain).
    always_receives: ClassVar[bool] = False

    @property
    def direct(self) -> bool:
        """True when a message may go out as ``control.write`` of ``encode(message)``
        (the head has gone out): a sender's task may then write it while the channel
        waits."""
        return False

    @property
    def holds_head(self) -> bool:
        """True while the head waits for the first message (see ``HTTPTransport``)."""
        return False

    async def open(
        self,
        channel: ChannelHead,
        control: ResponseControl,
        nursery: trio.Nursery | None,
        close: Callable[[CloseStatus], object],
    ) -> None:
        """Open the channel on ``control`` (``close(status)`` ends it from a task of the
        transport's own, started in ``nursery``). Raises ``Refused`` when the request is
        answered over HTTP instead."""

    def view(self, stamped: Stamped) -> Message:
        """What this transport sends of a numbered broadcast message: the event (with
        its id) on SSE, the message as it was given elsewhere."""
        return stamped.event if self.takes_events else stamped.message

    def encode(self, message: Message | Stamped) -> bytes:
        """``message`` as bytes of the response body."""
        global _last_encoded
        last = _last_encoded
        if message is last[0] and self.name == last[1]:
            return last[2]
        encoded = self._encode(self.view(message) if isinstance(message, Stamped) else message)
        _last_encoded = (message, self.name, encoded)
        return encoded

    def _encode(self, message: Message) -> bytes:
        if isinstance(message, bytes):
            return message
        if isinstance(message, str):
            return message.encode()
        if isinstance(message, Event):
            return message.data.encode()
        raise not_a_message(message)

    async def send(
        self, channel: ChannelHead, control: ResponseControl, chunks: Iterable[Message], last: bool
    ) -> bool:
        """Send ``chunks``; ``last`` when nothing can follow them but the end. False when
        that made the whole reply (nothing more goes out, not even the end)."""
        for chunk in chunks:
            await control.write(self.encode(chunk))
        return True

    async def end(
        self, channel: ChannelHead, control: ResponseControl, status: CloseStatus
    ) -> None:
        """Finish what the client receives, for the reason ``status``."""
        await control.end()

    async def abort(self, control: ResponseControl) -> None:
        """End after an illegal action: an unfinished response, which the server cuts."""

    async def receive(self, channel: ChannelHead, deliver: Deliver | None) -> CloseStatus | None:
        """Hand what the client sends to ``deliver``, in order, until it stops; why it
        stopped, or None when it finished sending and the channel stays open. Without
        ``deliver`` what the client sends is dropped (a request body is still read, so
        that the server notices the client leaving)."""
        body = channel.request.body
        try:
            if deliver is None:
                with contextlib.suppress(trio.ClosedResourceError):  # the handler closed it
                    await body.discard()
            else:
                async for chunk in body:
                    await deliver(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return GONE
        return None


class HTTPTransport(Transport):
    """Plain HTTP: chunks, or one long-poll reply with Content-Length."""

    __slots__ = ("head_sent",)
    name = "http"

    def __init__(self) -> None:
        self.head_sent = False

    @property
    def direct(self) -> bool:
        return self.head_sent

    @property
    def holds_head(self) -> bool:
        return not self.head_sent

    async def open(
        self,
        channel: ChannelHead,
        control: ResponseControl,
        nursery: trio.Nursery | None,
        close: Callable[[CloseStatus], object],
    ) -> None:
        body = channel.request.body
        if body.length != 0 and not body.is_empty:
            # The request streams a body: the client may wait for the head before it
            # sends more, so the head cannot wait for the first message.
            await control.start(channel.status, channel.headers)
            self.head_sent = True

    async def send(
        self, channel: ChannelHead, control: ResponseControl, chunks: Iterable[Message], last: bool
    ) -> bool:
        if not self.head_sent:
            chunks = list(chunks)
            if last and len(chunks) == 1:
                # A lone last message is a whole reply: the long-poll answer.
                body = self.encode(chunks[0])
                headers = channel.headers.copy()
                headers["content-length"] = str(len(body))
                await control.reply(channel.status, headers, body)
                return False
            await control.start(channel.status, channel.headers)
            self.head_sent = True
        return await super().send(channel, control, chunks, last)

    async def end(
        self, channel: ChannelHead, control: ResponseControl, status: CloseStatus
    ) -> None:
        if not self.head_sent:
            headers = channel.headers.copy()
            headers["content-length"] = "0"
            await control.start(channel.status, headers)
        await control.end()


class SSETransport(Transport):
    """Server-Sent Events: the head at open, an event per message. Holds no state: one
    instance serves every SSE channel."""

    __slots__ = ()
    name = "sse"
    takes_events = True
    heartbeat = comment()

    @property
    def direct(self) -> bool:
        return True

    async def open(
        self,
        channel: ChannelHead,
        control: ResponseControl,
        nursery: trio.Nursery | None,
        close: Callable[[CloseStatus], object],
    ) -> None:
        headers = channel.headers.copy()
        headers["content-type"] = "text/event-stream; charset=utf-8"
        headers["cache-control"] = "no-cache"
        await control.start(channel.status, headers)

    def _encode(self, message: Message) -> bytes:
        if isinstance(message, Event):
            return message.encode()
        if isinstance(message, str):
            return Event(message).encode()
        if isinstance(message, bytes):
            # SSE carries text: bytes that are not UTF-8 cannot cross it unchanged.
            return Event(message.decode("utf-8", errors="replace")).encode()
        raise not_a_message(message)


class WebSocketTransport(Transport):
    """WebSocket: a frame per message (text for str, binary for bytes), pings, and the
    closing handshake with the close status's code."""

    __slots__ = ("subprotocol", "websocket")
    name = "websocket"
    always_receives = True

    def __init__(self) -> None:
        self.websocket: WebSocket | None = None
        #: The subprotocol agreed with the client, once the handshake is read.
        self.subprotocol: str | None = None

    async def open(
        self,
        channel: ChannelHead,
        control: ResponseControl,
        nursery: trio.Nursery | None,
        close: Callable[[CloseStatus], object],
    ) -> None:
        assert nursery is not None  # a WebSocket always has its receiving task
        handshake = Handshake(
            channel.request,
            subprotocols=channel.subprotocols,
            compress=channel.compress,
            compress_min_size=channel.compress_min_size,
            max_message_size=channel.max_message_size,
        )
        refusal = handshake.refusal
        if refusal is not None:
            # Answered over HTTP, before the connection is taken over.
            answer = refusal.headers | {"content-type": "text/plain", "connection": "close"}
            await control.start(refusal.status, answer)
            await control.write(f"{refusal.reason}\n".encode())
            await control.end()
            raise Refused(refusal.reason)
        self.subprotocol = handshake.subprotocol
        if channel.request.http_version == "2":
            # An extended CONNECT (RFC 8441) is answered 200, then the stream carries it.
            headers = channel.headers.copy()
            for name, value in handshake.fields:
                headers[name.decode()] = value.decode()
            await control.start(200, headers)
        stream, rest = await control.detach()
        try:
            with trio.fail_after(HANDSHAKE_SECONDS):
                self.websocket = await handshake.accept(
                    nursery,
                    stream,
                    rest,
                    extra_headers=channel.headers.raw,
                    max_message_size=channel.max_message_size,
                    write_timeout=control.write_timeout,
                )
        except trio.TooSlowError:
            raise ConnectionClosed(1006, "the WebSocket handshake did not finish") from None
        if channel.ping_interval is not None:
            nursery.start_soon(_ping, self.websocket, channel.ping_interval, close)

    async def send(
        self, channel: ChannelHead, control: ResponseControl, chunks: Iterable[Message], last: bool
    ) -> bool:
        assert self.websocket is not None
        for chunk in chunks:
            await self.websocket.send_message(chunk.data if isinstance(chunk, Event) else chunk)
        return True

    async def end(
        self, channel: ChannelHead, control: ResponseControl, status: CloseStatus
    ) -> None:
        assert self.websocket is not None
        code = status.code if status.code is not None else 1000
        # A client that never answers the close frame must not hold the channel open.
        with trio.move_on_after(CLOSE_HANDSHAKE_SECONDS):
            await self.websocket.aclose(code, status.reason)

    async def abort(self, control: ResponseControl) -> None:
        if self.websocket is not None:
            with trio.move_on_after(CLOSE_HANDSHAKE_SECONDS):
                await self.websocket.aclose(1011, "illegal action")

    async def receive(self, channel: ChannelHead, deliver: Deliver | None) -> CloseStatus | None:
        assert self.websocket is not None
        try:
            while True:
                message = await self.websocket.get_message()
                if deliver is not None:
                    await deliver(message)
        except ConnectionClosed as error:
            return status_for(error, None)


async def _ping(
    websocket: WebSocket, interval: float, close: Callable[[CloseStatus], object]
) -> None:
    """Ping every ``interval`` seconds; a client that does not answer within the next
    interval is gone."""
    while True:
        await trio.sleep(interval)
        with trio.move_on_after(interval) as scope:
            try:
                await websocket.ping()
            except ConnectionClosed:
                return
        if scope.cancelled_caught:
            close(CloseStatus("gone", 1006, "no answer to ping"))
            return


#: The one SSE strategy (it holds no state).
_SSE = SSETransport()


def transport_for(request: Request) -> Transport:
    """The transport ``request`` asks for: WebSocket for ``Upgrade: websocket``, SSE for
    ``Accept: text/event-stream``, plain HTTP otherwise."""
    if "websocket" in request.headers.get_tokens("upgrade"):
        return WebSocketTransport()
    if "text/event-stream" in request.headers.get("accept", ""):
        return _SSE
    return HTTPTransport()
