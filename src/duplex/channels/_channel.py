"""Channels: one API over chunked HTTP, long-polling, Server-Sent Events and WebSocket.

A handler returns ``channel(request, ...)``; the request picks the transport. The
``Channel`` object has http-kit's contract (``send``/``close``/``on_receive``/
``on_close``) and rack-stream's lifecycle (``new → open → closed`` or ``errored``, with
``after_open``, ``before_chunk``, ``before_close`` and ``after_close`` hooks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal, TypedDict, Unpack

import trio

from ..http._models import Headers, HeadersLike, Request, Response
from ..http._takeover import Takeover
from ._hooks import Callback, HookArgument, Hooks
from ._lifecycle import PUBLIC, Lifecycle, PublicState, State
from ._messages import Message, Stamped, size_of
from ._queue import MessageQueue
from ._runner import Writer
from ._status import CloseStatus
from ._transports import TransportName, WebSocketTransport, transport_for
from ._websocket import COMPRESS_MIN_SIZE

__all__ = ["Channel", "channel"]

log = logging.getLogger("duplex.channel")

WhenFull = Literal["close", "drop-oldest"]

TOO_SLOW = CloseStatus("too-slow", 1008, "the client reads too slowly")


class _ChannelHeaders(Headers):
    """A channel's response headers: changing them once it opened is an illegal action.

    They hold the channel's lifecycle and writer, not the channel (which holds them)."""

    __slots__ = ("_life", "_writer")

    def __init__(self, life: Lifecycle, writer: Writer, headers: HeadersLike | None) -> None:
        self._life = life
        self._writer = writer
        super().__init__(headers)

    def _check(self, action: str) -> bool:
        if self._life.state is not State.NEW:
            self._writer.illegal(f"{action} after the channel opened")
            return False
        return True

    def add(self, name: str | bytes, value: str | bytes) -> None:
        if self._check(f"adding header {name!r}"):
            super().add(name, value)

    def __setitem__(self, name: str, value: str) -> None:
        if self._check(f"setting header {name!r}"):
            super().__setitem__(name, value)

    def __delitem__(self, name: str) -> None:
        if self._check(f"removing header {name!r}"):
            super().__delitem__(name)


class Channel:
    """One client connection, whatever its transport, as an object you send to.

    ``send`` and ``close`` work from any task (and from threads through
    ``send_from_thread``); they never raise because the client left: they return False.
    Messages sent while the channel is ``new`` are queued and go out once it opens;
    later ones go out as they are sent, also while ``on_open`` and the hooks run.

    The queue holds at most ``max_queue`` messages and about ``max_queue_bytes`` bytes
    (one message larger than that is taken when nothing else is pending): ``send``
    waits for room, ``offer`` applies ``when_full``.
    """

    # Slots: a server may hold tens of thousands of channels.
    __slots__ = (
        "_headers",
        "_life",
        "_queue",
        "_status",
        "_transport",
        "_trio_token",
        "_writer",
        "compress",
        "compress_min_size",
        "heartbeat",
        "last_event_id",
        "max_message_size",
        "max_queue",
        "max_queue_bytes",
        "on_close",
        "on_open",
        "on_receive",
        "ping_interval",
        "request",
        "subprotocols",
        "when_full",
    )

    def __init__(
        self,
        request: Request,
        *,
        on_open: Callback | None = None,
        on_receive: Callback | None = None,
        on_close: Callback | None = None,
        after_open: HookArgument = None,
        before_chunk: HookArgument = None,
        before_close: HookArgument = None,
        after_close: HookArgument = None,
        status: int = 200,
        headers: HeadersLike | None = None,
        heartbeat: float | None = 15.0,
        max_queue: int = 1024,
        max_queue_bytes: int = 1 << 20,
        when_full: WhenFull = "close",
        max_message_size: int = 1 << 20,
        ping_interval: float | None = 20.0,
        subprotocols: Sequence[str] | None = None,
        compress: bool = False,
        compress_min_size: int = COMPRESS_MIN_SIZE,
    ) -> None:
        self.request = request
        self._life = Lifecycle()
        self.on_open = on_open
        self.on_receive = on_receive
        self.on_close = on_close
        self._status = status
        self.heartbeat = heartbeat
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.when_full = when_full
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        if isinstance(subprotocols, str):
            raise TypeError("subprotocols is a list of names, not one string")
        self.subprotocols: Sequence[str] = tuple(subprotocols or ())
        self.compress = compress
        self.compress_min_size = compress_min_size
        #: The ``Last-Event-ID`` an SSE client reconnected with, if any.
        self.last_event_id: str | None = request.headers.get("last-event-id")
        self._transport = transport_for(request)
        self._queue = MessageQueue()
        hooks = Hooks.of(after_open, before_chunk, before_close, after_close)
        self._writer = Writer(self, self._life, self._queue, self._transport, hooks)
        self._headers = _ChannelHeaders(self._life, self._writer, headers)
        self._trio_token = trio.lowlevel.current_trio_token()

    def __repr__(self) -> str:
        return f"<Channel {self.transport} {self.state} {self.request.target}>"

    # -- what it is -------------------------------------------------------------------

    @property
    def transport(self) -> TransportName:
        """``"http"``, ``"sse"`` or ``"websocket"``: what the request asked for."""
        return self._transport.name

    @property
    def state(self) -> PublicState:
        """``"new"``, ``"open"``, ``"closed"`` or ``"errored"``."""
        return PUBLIC[self._life.state]

    @property
    def is_open(self) -> bool:
        """True until the channel is closing or closed."""
        return self._life.is_open

    @property
    def is_websocket(self) -> bool:
        return self._transport.name == "websocket"

    @property
    def subprotocol(self) -> str | None:
        """The WebSocket subprotocol agreed with the client (set before ``on_open``
        runs); None if it offered none, and on other transports."""
        transport = self._transport
        return transport.subprotocol if isinstance(transport, WebSocketTransport) else None

    @property
    def close_status(self) -> CloseStatus | None:
        """Why the channel closed (or is closing), once it does."""
        return self._life.close_status

    @property
    def queued_messages(self) -> int:
        """How many messages wait to go out (what ``max_queue`` bounds)."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """How many bytes of messages the channel holds that have not gone out yet
        (what ``max_queue_bytes`` bounds)."""
        return self._queue.bytes

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        if self._life.state is not State.NEW:
            self._illegal(f"setting the status to {value} after the channel opened")
            return
        self._status = value

    @property
    def headers(self) -> Headers:
        """The response headers; changing them after the channel opened is illegal."""
        return self._headers

    @headers.setter
    def headers(self, value: HeadersLike) -> None:
        if self._life.state is not State.NEW:
            self._illegal("setting headers after the channel opened")
            return
        self._headers = _ChannelHeaders(self._life, self._writer, value)

    async def wait_closed(self) -> CloseStatus:
        """Wait until the channel has closed and ``on_close`` has run; return why."""
        await self._life.wait_done()
        assert self._life.close_status is not None
        return self._life.close_status

    def add_close_callback(self, callback: Callable[[Channel], object]) -> None:
        """Call ``callback(channel)``, a plain function, as soon as the channel closes
        (before ``after_close``): how a group's members leave it by themselves."""
        self._life.add_listener(callback)

    def remove_close_callback(self, callback: Callable[[Channel], object]) -> None:
        """Forget ``callback`` (nothing if it is not there)."""
        self._life.remove_listener(callback)

    # -- sending ----------------------------------------------------------------------

    async def send(self, data: Message, close: bool = False) -> bool:
        """Queue ``data`` for the client (then close, with ``close=True``).

        Waits while the queue is full (``max_queue`` messages, or ``max_queue_bytes``).
        Returns False, without raising, once the channel is closing or closed. ``data``
        is text or bytes; an ``sse.Event`` keeps its fields on SSE and sends its data
        elsewhere. Raises ``TypeError`` for anything else.
        """
        await trio.lowlevel.checkpoint()
        life = self._life
        if life.state is State.AFTER_CLOSE:
            self._illegal("sending from after_close")
            return False
        size = size_of(data)
        queue = self._queue
        while life.accepting and not queue.fits(size, self.max_queue, self.max_queue_bytes):
            await queue.wait_for_room()
        return self._enqueue(data, close, size)

    def offer(
        self,
        data: Message | Stamped,
        close: bool = False,
        *,
        max_queue: int | None = None,
        max_queue_bytes: int | None = None,
        when_full: WhenFull | None = None,
    ) -> bool:
        """Queue ``data`` without waiting (what groups use); False if not queued.

        If the queue is full (``max_queue`` messages or ``max_queue_bytes``, by default
        the channel's), the ``when_full`` policy applies: ``"close"`` closes the channel
        with status ``"too-slow"`` and returns False; ``"drop-oldest"`` drops the oldest
        queued messages to make room.
        """
        writer = self._writer
        if not close and writer.mode.direct:
            # Open, nothing queued, its task waiting: straight to the socket if it can.
            written = writer.write_now(data)
            if written is not None:
                return written
        if isinstance(data, Stamped):
            data = self._transport.view(data)
        life = self._life
        if life.state is State.AFTER_CLOSE:
            self._illegal("sending from after_close")
            return False
        size = size_of(data)
        if life.accepting:
            queue = self._queue
            messages = self.max_queue if max_queue is None else max_queue
            limit = self.max_queue_bytes if max_queue_bytes is None else max_queue_bytes
            if not queue.fits(size, messages, limit):
                if (when_full or self.when_full) == "close":
                    log.debug("%r: queue full, closing", self)
                    writer.close(TOO_SLOW)
                    return False
                while not queue.fits(size, messages, limit) and queue.drop_oldest():
                    pass
        return self._enqueue(data, close, size)

    def _enqueue(self, data: Message, close: bool, size: int) -> bool:
        if not self._life.accepting:
            return False
        writer, queue = self._writer, self._queue
        if not close and not queue and writer.mode.direct:
            written = writer.write_now(data)
            if written is not None:
                return written
        queue.append(data, size)
        if close:
            writer.close(CloseStatus("server"))
        writer.wake()
        return True

    def send_from_thread(self, data: Message, close: bool = False) -> bool:
        """``send`` from a thread that is not running trio (blocks that thread)."""
        return trio.from_thread.run(self.send, data, close, trio_token=self._trio_token)

    def close_from_thread(self) -> bool:
        """``close`` from a thread that is not running trio."""
        return trio.from_thread.run(self.close, trio_token=self._trio_token)

    async def close(self) -> bool:
        """Close the channel after what is queued (and ``before_close``) goes out.

        Returns True if this call closed it, False if it was already closing or closed.
        """
        await trio.lowlevel.checkpoint()
        return self._writer.close(CloseStatus("server"))

    def _illegal(self, action: str) -> None:
        self._writer.illegal(action)

    # -- running (the server calls this through Takeover) -----------------------------

    def response(self) -> Response:
        """The response that hands this channel to the server."""
        return Response(self._status, body=Takeover(self._writer.run))


class ChannelOptions(TypedDict, total=False):
    """What ``channel()`` passes on to ``Channel`` (see there for each)."""

    on_open: Callback | None
    on_receive: Callback | None
    on_close: Callback | None
    after_open: HookArgument
    before_chunk: HookArgument
    before_close: HookArgument
    after_close: HookArgument
    status: int
    headers: HeadersLike | None
    heartbeat: float | None
    max_queue: int
    max_queue_bytes: int
    when_full: WhenFull
    max_message_size: int
    ping_interval: float | None
    subprotocols: Sequence[str] | None
    compress: bool
    compress_min_size: int


def channel(request: Request, **options: Unpack[ChannelOptions]) -> Response:
    """Answer ``request`` with a channel; return the response for the handler to return.

    The transport follows the request: ``Upgrade: websocket`` → WebSocket; ``Accept:
    text/event-stream`` → Server-Sent Events; anything else → plain HTTP. On plain HTTP a
    request that streams a body (chunked, or a Content-Length body the handler has not
    read) gets its response head at once — a full-duplex stream; any other request gets
    it with the first message, so that a first ``send(data, close=True)`` is a whole
    long-poll reply with Content-Length, while ``send(data)`` streams chunks.

    Callbacks may be plain or async: ``on_open(channel)``, ``on_receive(channel,
    message)``, ``on_close(channel, status)``; hooks take the channel (``before_chunk``
    takes and returns the list of chunks). ``max_queue`` and ``max_queue_bytes`` bound
    the queue; ``when_full`` says what ``offer`` does when it is full.

    WebSocket only: ``subprotocols`` lists the subprotocols the channel speaks; the
    first of the client's offers (in its order) that is listed is agreed
    (``channel.subprotocol``), a client that offers none gets None, and one that offers
    only others is answered 400 naming the supported ones. ``compress=True`` accepts
    the client's permessage-deflate offer (RFC 7692); messages under
    ``compress_min_size`` bytes then go uncompressed, and a message the client sends
    may inflate to ``max_message_size`` bytes at most (beyond it: close code 1009).
    """
    return Channel(request, **options).response()
