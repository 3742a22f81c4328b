"""Channels: one API over chunked HTTP, long-polling, Server-Sent Events and WebSocket.

A handler returns ``channel(request, ...)``; the request picks the transport. The
``Channel`` object has http-kit's contract (``send``/``close``/``on_receive``/
``on_close``) and rack-stream's lifecycle (``new → open → closed`` or ``errored``, with
``after_open``, ``before_chunk``, ``before_close`` and ``after_close`` hooks).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from math import inf
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import trio

from ._websocket import ConnectionClosed, Handshake, WebSocket
from .http._models import Headers, HeadersLike, Request, Response
from .http._takeover import ResponseControl, Takeover
from .sse import Event, comment

if TYPE_CHECKING:
    from ._group import ChannelGroup

__all__ = ["Channel", "CloseStatus", "Message", "channel"]

log = logging.getLogger("duplex.channel")

Message: TypeAlias = "str | bytes | Event"
State: TypeAlias = Literal["new", "open", "closed", "errored"]
Transport: TypeAlias = Literal["http", "sse", "websocket"]
Callback: TypeAlias = Callable[..., Any]

#: WebSocket close codes that mean the conversation broke: protocol error, unsupported
#: or invalid data, policy violation, message too big, missing extension, server error.
_WEBSOCKET_ERRORS = frozenset({1002, 1003, 1007, 1008, 1009, 1010, 1011})

#: How long a WebSocket handshake may take once the connection is handed over.
_HANDSHAKE_SECONDS = 10.0

#: How long ``on_close`` and ``after_close`` may run once the exchange is cancelled.
_CLEANUP_SECONDS = 5.0

#: The hooks of a channel that has none (shared, never changed).
_NO_HOOKS: dict[str, tuple[Callback, ...]] = {
    "after_open": (),
    "before_chunk": (),
    "before_close": (),
    "after_close": (),
}

#: The queue of a channel that has queued nothing yet (never appended to).
_NO_MESSAGES: deque[tuple[Message, bool]] = deque(maxlen=0)

# The message encoded last, for which transport, and its bytes (see Channel._encode).
_last_encoded: tuple[object, str, bytes] = (None, "", b"")

#: How long a WebSocket client may take to answer our close frame before we hang up.
_CLOSE_HANDSHAKE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class CloseStatus:
    """Why a channel closed, as ``on_close`` receives it.

    ``kind`` is one of:

    - ``"server"``: this side called ``close()`` (or sent with ``close=True``);
    - ``"client"``: the client closed cleanly (a WebSocket close frame);
    - ``"gone"``: the client vanished without closing (reset, EOF, WebSocket 1006);
    - ``"shutdown"``: the server is shutting down;
    - ``"too-slow"``: a group closed it because its queue was full;
    - ``"error"``: an illegal action or a failure of the channel itself.

    ``code`` is the WebSocket close code where there is one; ``reason`` explains.
    """

    kind: Literal["server", "client", "gone", "shutdown", "too-slow", "error"]
    code: int | None = None
    reason: str = ""

    @property
    def clean(self) -> bool:
        """True when an endpoint closed on purpose rather than the connection failing."""
        return self.kind in ("server", "client", "shutdown")


async def _call(callback: Callback | None, *args: Any) -> Any:
    """Run a plain or async callback; return what it returned."""
    if callback is None:
        return None
    result = callback(*args)
    if inspect.isawaitable(result):
        return await result
    return result


def _transport_for(request: Request) -> Transport:
    if "websocket" in request.headers.get_tokens("upgrade"):
        return "websocket"
    accept = request.headers.get("accept", "")
    if "text/event-stream" in accept:
        return "sse"
    return "http"


class _ChannelHeaders(Headers):
    """A channel's response headers: changing them once it opened is an illegal action."""

    __slots__ = ("_channel",)

    def __init__(self, channel: Channel, headers: HeadersLike | None) -> None:
        self._channel = channel
        super().__init__(headers)

    def _check(self, action: str) -> bool:
        if self._channel.state != "new":
            self._channel._illegal(f"{action} after the channel opened")
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


class _Refused(Exception):
    """The request asked for a WebSocket it cannot have; it was answered over HTTP."""


class Channel:
    """One client connection, whatever its transport, as an object you send to.

    ``send`` and ``close`` work from any task (and from threads through
    ``send_from_thread``); they never raise because the client left: they return False.
    Messages sent while the channel is ``new`` are queued and go out once it opens.
    """

    # Slots: a server may hold tens of thousands of channels.
    __slots__ = (
        "_close_status",
        "_closed_event",
        "_control",
        "_deadline",
        "_groups",
        "_head_sent",
        "_headers",
        "_hooks",
        "_idle",
        "_in_after_close",
        "_in_before_close",
        "_needs_flush",
        "_on_close_called",
        "_parked",
        "_queue",
        "_solo",
        "_space",
        "_state",
        "_status",
        "_trio_token",
        "_wait_scope",
        "_wakeup",
        "_websocket",
        "_woken",
        "_write_scope",
        "heartbeat",
        "last_event_id",
        "max_message_size",
        "max_queue",
        "on_close",
        "on_open",
        "on_receive",
        "ping_interval",
        "request",
        "transport",
        "when_full",
    )

    def __init__(
        self,
        request: Request,
        *,
        on_open: Callback | None = None,
        on_receive: Callback | None = None,
        on_close: Callback | None = None,
        after_open: Callback | Iterable[Callback] | None = None,
        before_chunk: Callback | Iterable[Callback] | None = None,
        before_close: Callback | Iterable[Callback] | None = None,
        after_close: Callback | Iterable[Callback] | None = None,
        status: int = 200,
        headers: HeadersLike | None = None,
        heartbeat: float | None = 15.0,
        max_queue: int = 1024,
        when_full: Literal["close", "drop-oldest"] = "close",
        max_message_size: int = 1 << 20,
        ping_interval: float | None = 20.0,
    ) -> None:
        self.request = request
        self.transport: Transport = _transport_for(request)
        self.on_open = on_open
        self.on_receive = on_receive
        self.on_close = on_close
        hooks = (after_open, before_chunk, before_close, after_close)
        self._hooks: dict[str, tuple[Callback, ...]] = (
            _NO_HOOKS
            if hooks == (None, None, None, None)
            else {
                "after_open": _hook_list(after_open),
                "before_chunk": _hook_list(before_chunk),
                "before_close": _hook_list(before_close),
                "after_close": _hook_list(after_close),
            }
        )
        self._state: State = "new"
        self._status = status
        self._headers = _ChannelHeaders(self, headers)
        self.heartbeat = heartbeat
        self.max_queue = max_queue
        self.when_full = when_full
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        #: The ``Last-Event-ID`` an SSE client reconnected with, if any.
        self.last_event_id: str | None = request.headers.get("last-event-id")
        # The queue, and the lots where the channel's task waits for news and senders
        # for room, are made when first needed: an idle channel has none of them.
        self._queue: deque[tuple[Message, bool]] = _NO_MESSAGES
        self._wakeup: trio.lowlevel.ParkingLot | None = None
        self._space: trio.lowlevel.ParkingLot | None = None
        # While the channel's task waits for news (``_wait_for_work``): the scope that
        # ``_wake`` cancels, whether it did, and whether a message may be written at
        # once from ``send``/``offer`` instead of being queued for that task.
        self._control: ResponseControl | None = None
        self._head_sent = False
        self._wait_scope: trio.CancelScope | None = None
        self._woken = False
        self._idle = False
        self._needs_flush = False
        self._close_status: CloseStatus | None = None
        self._closed_event: trio.Event | None = None  # made when someone waits
        self._in_after_close = False
        self._in_before_close = False
        self._on_close_called = False
        self._groups: set[ChannelGroup] = set()
        self._websocket: WebSocket | None = None
        #: Wraps the writing, so that a client that takes nothing more can be cut off
        #: even while a write to it is blocked (made by each task that writes).
        self._write_scope: trio.CancelScope | None = None
        # Parked (the server holds the channel with no task), and until when.
        self._parked = False
        self._solo = False
        self._deadline = inf
        self._trio_token = trio.lowlevel.current_trio_token()

    def __repr__(self) -> str:
        return f"<Channel {self.transport} {self._state} {self.request.target}>"

    # -- what it is -------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``"new"``, ``"open"``, ``"closed"`` or ``"errored"``."""
        return self._state

    @property
    def is_open(self) -> bool:
        """True until the channel is closing or closed."""
        return self._state in ("new", "open") and self._close_status is None

    @property
    def is_websocket(self) -> bool:
        return self.transport == "websocket"

    @property
    def close_status(self) -> CloseStatus | None:
        """Why the channel closed (or is closing), once it does."""
        return self._close_status

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        if self._state != "new":
            self._illegal(f"setting the status to {value} after the channel opened")
            return
        self._status = value

    @property
    def headers(self) -> Headers:
        """The response headers; changing them after the channel opened is illegal."""
        return self._headers

    @headers.setter
    def headers(self, value: HeadersLike) -> None:
        if self._state != "new":
            self._illegal("setting headers after the channel opened")
            return
        self._headers = _ChannelHeaders(self, value)

    async def wait_closed(self) -> CloseStatus:
        """Wait until the channel has closed; return why."""
        if not self._on_close_called:
            if self._closed_event is None:
                self._closed_event = trio.Event()
            await self._closed_event.wait()
        else:
            await trio.lowlevel.checkpoint()
        assert self._close_status is not None
        return self._close_status

    # -- sending ----------------------------------------------------------------------

    async def send(self, data: Message, close: bool = False) -> bool:
        """Queue ``data`` for the client (then close, with ``close=True``).

        Waits while ``max_queue`` messages are already queued. Returns False, without
        raising, once the channel is closing or closed. ``data`` is text or bytes; an
        ``sse.Event`` keeps its fields on SSE and sends its data elsewhere.
        """
        await trio.lowlevel.checkpoint()
        if self._in_after_close:
            self._illegal("sending from after_close")
            return False
        while self.is_open and len(self._queue) >= self.max_queue:
            if self._space is None:
                self._space = trio.lowlevel.ParkingLot()
            await self._space.park()
        return self._enqueue(data, close)

    def _accepting(self) -> bool:
        return self.is_open or (self._in_before_close and self._state == "open")

    def offer(
        self,
        data: Message,
        close: bool = False,
        *,
        max_queue: int | None = None,
        when_full: Literal["close", "drop-oldest"] | None = None,
    ) -> bool:
        """Queue ``data`` without waiting (what groups use); False if not queued.

        If ``max_queue`` messages (default: the channel's) are already queued, the
        ``when_full`` policy applies: ``"close"`` closes the channel with status
        ``"too-slow"`` and returns False; ``"drop-oldest"`` drops the oldest queued
        message to make room.
        """
        if self._idle and not close:
            # Open, nothing queued, its task waiting: straight to the socket if it can.
            written = self._write_now(data)
            if written is not None:
                return written
        if self._in_after_close:
            self._illegal("sending from after_close")
            return False
        limit = self.max_queue if max_queue is None else max_queue
        if self.is_open and len(self._queue) >= limit:
            if (when_full or self.when_full) == "close":
                log.debug("%r: queue full, closing", self)
                self._request_close(CloseStatus("too-slow", 1008, "the client reads too slowly"))
                return False
            self._queue.popleft()
        return self._enqueue(data, close)

    def _enqueue(self, data: Message, close: bool) -> bool:
        if not self._accepting():
            return False
        if not isinstance(data, str | bytes | Event):
            raise TypeError(f"a channel sends str, bytes or sse.Event, not {type(data).__name__}")
        if self._idle and not close and not self._queue:
            written = self._write_now(data)
            if written is not None:
                return written
        if self._queue is _NO_MESSAGES:
            self._queue = deque()
        self._queue.append((data, close))
        if close:
            self._close_status = CloseStatus("server")
        self._wake()
        return True

    def _write_now(self, data: Message) -> bool | None:
        """Write ``data`` from the sender's task while the channel's task is idle, if
        the socket takes it without waiting (a broadcast then wakes no task at all); None
        when it must be queued instead."""
        control = self._control
        assert control is not None
        try:
            written = control.write_nowait(self._encode(data))
        except trio.BrokenResourceError:
            self._request_close(CloseStatus("gone", 1006, "the client went away"))
            return False
        if written is None:
            return None
        if not written:
            # The socket took part of it: the channel's task sends the rest.
            self._needs_flush = True
            self._wake()
        return True

    def _wake(self) -> None:
        """Wake the channel's task if it waits for news."""
        self._idle = False  # what comes next waits for the task, in order
        if self._wakeup is not None:
            self._wakeup.unpark_all()
        scope = self._wait_scope
        if scope is not None and not self._woken:
            self._woken = True
            scope.cancel()
        elif self._parked and not self._woken:
            self._woken = True
            assert self._control is not None
            self._control.wake()

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
        return self._request_close(CloseStatus("server"))

    def _request_close(self, status: CloseStatus) -> bool:
        if not self.is_open:
            return False
        self._close_status = status
        if status.kind in ("gone", "too-slow") and self._write_scope is not None:
            # Nothing more reaches this client: a write blocked on it would hold the
            # close (and on_close) until the write timeout.
            self._write_scope.cancel()
        self._wake()
        if self._space is not None:
            self._space.unpark_all()
        return True

    def _illegal(self, action: str) -> None:
        log.error("%r: illegal action: %s; the channel is closed", self, action)
        self._state = "errored"
        if self._close_status is None:
            self._close_status = CloseStatus("error", 1011, f"illegal action: {action}")
        self._wake()
        if self._space is not None:
            self._space.unpark_all()

    # -- running (the server calls this through Takeover) -----------------------------

    def response(self) -> Response:
        """The response that hands this channel to the server."""
        return Response(self._status, body=Takeover(self._run))

    async def _run(self, control: ResponseControl) -> None:
        await self._drive(control, resumed=False)

    async def _resume(self, control: ResponseControl) -> None:
        """Go on after the server held the channel parked (``_wait_for_work``)."""
        await self._drive(control, resumed=True)

    async def _drive(self, control: ResponseControl, *, resumed: bool) -> None:
        status: CloseStatus | None = None
        self._parked = False
        try:
            if (
                self.transport == "websocket"
                or self.on_receive is not None
                or self.request.body.length != 0
            ):
                async with trio.open_nursery() as nursery:
                    status = await self._serve(control, nursery, resumed)
                    nursery.cancel_scope.cancel()
            else:
                # Nothing to receive, no WebSocket: the channel is this task alone, and
                # while it waits for news, not even that (it parks).
                status = await self._serve(control, None, resumed)
        finally:
            # Parked, the server holds the channel, and _resume goes on with it.
            if not self._parked:
                if status is None:  # cancelled: the client went away, or the server stopped
                    status = (
                        CloseStatus("gone", 1006, "the client went away")
                        if control.gone
                        else CloseStatus("shutdown", 1001, "the server stopped")
                    )
                with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_SECONDS):
                    await self._finish(status)

    async def _serve(
        self, control: ResponseControl, nursery: trio.Nursery | None, resumed: bool = False
    ) -> CloseStatus | None:
        """Open the channel (unless ``resumed``) and run it until it closes or parks;
        return why it closed (None when it parked)."""
        try:
            self._control = control
            self._solo = nursery is None  # a task receiving too would stop it parking
            if resumed:
                await self._after_wait(control, heartbeat_due=self._heartbeat_due())
            else:
                await self._open(control, nursery)
                control.on_server_closing(self._server_closing)
                if nursery is not None:
                    nursery.start_soon(self._receive)
                await _call(self.on_open, self)
                for hook in self._hooks["after_open"]:
                    await _call(hook, self)
                self._head_sent = self.transport != "http"
            self._write_scope = trio.CancelScope()
            with self._write_scope:
                await self._write_loop(control)
            self._write_scope = None
            if self._parked:
                return None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.debug("%r: the transport broke: %r", self, error)
            return self._close_status or CloseStatus("gone", 1006, str(error))
        except ConnectionClosed as error:
            return self._status_from_websocket(error)
        except _Refused as error:
            log.debug("%r: refused: %s", self, error)
            return CloseStatus("error", None, str(error))
        except trio.TooSlowError:
            log.debug("%r: the WebSocket handshake did not finish in time", self)
            return CloseStatus("gone", 1006, "the WebSocket handshake did not finish")
        except Exception as error:
            log.exception("%r failed", self)
            self._state = "errored"
            return self._close_status or CloseStatus("error", 1011, repr(error))
        return self._close_status or CloseStatus("server")

    async def _open(self, control: ResponseControl, nursery: trio.Nursery | None) -> None:
        if self._state == "errored":
            raise trio.ClosedResourceError("the channel errored before it opened")
        if self.transport == "sse":
            headers = self._headers.copy()
            headers["content-type"] = "text/event-stream; charset=utf-8"
            headers["cache-control"] = "no-cache"
            await control.start(self._status, headers)
        elif self.transport == "websocket":
            assert nursery is not None  # _run opens one for a WebSocket
            # A bad handshake is answered here, over HTTP, before the connection is
            # taken over.
            handshake = Handshake(self.request)
            refusal = handshake.refusal
            if refusal is not None:
                answer = refusal.headers | {"content-type": "text/plain", "connection": "close"}
                await control.start(refusal.status, answer)
                await control.write(f"{refusal.reason}\n".encode())
                await control.end()
                raise _Refused(refusal.reason)
            stream, rest = await control.detach()
            with trio.fail_after(_HANDSHAKE_SECONDS):
                self._websocket = await handshake.accept(
                    nursery,
                    stream,
                    rest,
                    extra_headers=self._headers.raw,
                    max_message_size=self.max_message_size,
                    write_timeout=control.write_timeout,
                )
            if self.ping_interval is not None:
                nursery.start_soon(self._ping, self._websocket, self.ping_interval)
        self._state = "open"

    def _server_closing(self) -> None:
        self._request_close(CloseStatus("shutdown", 1001, "the server is shutting down"))

    async def _ping(self, websocket: WebSocket, interval: float) -> None:
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
                self._request_close(CloseStatus("gone", 1006, "no answer to ping"))
                return

    async def _receive(self) -> None:
        """Deliver what the client sends to ``on_receive``, in order."""
        try:
            if self._websocket is not None:
                while True:
                    message = await self._websocket.get_message()
                    await _call(self.on_receive, self, message)
            elif self.on_receive is not None:
                async for chunk in self.request.body:
                    await _call(self.on_receive, self, chunk)
            else:
                # Unread, the body would stop the server reading the socket, and so
                # from noticing the client leave. (The handler may have closed it.)
                with contextlib.suppress(trio.ClosedResourceError):
                    await self.request.body.discard()
        except ConnectionClosed as error:
            self._request_close(self._status_from_websocket(error))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._request_close(CloseStatus("gone", 1006, "the client went away"))
        except Exception as error:
            log.exception("%r: on_receive failed", self)
            self._request_close(CloseStatus("error", 1011, repr(error)))

    def _status_from_websocket(self, closed: ConnectionClosed) -> CloseStatus:
        if closed.code == 1006:
            return CloseStatus("gone", 1006, closed.reason)
        if self._close_status is not None and self._close_status.kind != "gone":
            return self._close_status
        # These codes report a broken conversation (a protocol error, bad data, a message
        # over the limit), whichever side noticed, not a choice to leave.
        kind: Literal["client", "error"] = "error" if closed.code in _WEBSOCKET_ERRORS else "client"
        return CloseStatus(kind, closed.code, closed.reason)

    async def _write_loop(self, control: ResponseControl) -> None:
        before_close_done = False
        while True:
            status = self._close_status
            if self._state == "errored":
                if self._websocket is not None:
                    with trio.move_on_after(_CLOSE_HANDSHAKE_SECONDS):
                        await self._websocket.aclose(1011, "illegal action")
                return  # an unfinished response: the server cuts the connection
            if status is not None and status.kind in ("gone", "client", "error"):
                return  # nothing more can, or should, go out
            if status is not None and status.kind == "too-slow":
                self._queue.clear()
                break
            if self._queue:
                flushed = await self._flush(control, self._head_sent)
                if flushed is None:
                    return
                self._head_sent = flushed
                continue
            if status is None:
                if await self._wait_for_work(control):
                    return  # parked
                continue
            if before_close_done:
                break
            before_close_done = True
            # before_close may still send: its chunks go out before the end.
            self._in_before_close = True
            try:
                for hook in self._hooks["before_close"]:
                    await _call(hook, self)
            finally:
                self._in_before_close = False
        await self._end(control, self._head_sent)

    async def _flush(self, control: ResponseControl, head_sent: bool) -> bool | None:
        """Send everything queued; the new ``head_sent``, or None if the reply is done."""
        batch = list(self._queue)
        self._queue.clear()
        if self._space is not None:
            self._space.unpark_all()
        chunks = [data for data, _ in batch]
        for hook in self._hooks["before_chunk"]:
            chunks = list(await _call(hook, chunks))
        if not head_sent:
            final = (
                self._close_status is not None
                and not self._queue
                and not self._hooks["before_close"]
                and len(chunks) == 1
            )
            if final:
                # A lone last message is a whole reply with Content-Length: the
                # long-poll answer.
                body = self._encode(chunks[0])
                headers = self._headers.copy()
                headers["content-length"] = str(len(body))
                await control.start(self._status, headers)
                await control.write(body)
                await control.end()
                return None
            await control.start(self._status, self._headers)
        for chunk in chunks:
            await self._deliver(control, chunk)
        return True

    async def _wait_for_work(self, control: ResponseControl) -> bool:
        """Wait until there is something to do (``_wake``), the heartbeat is due, or the
        client leaves; True if the channel parked instead (the caller returns, and the
        server resumes it in a new task for any of these).

        Messages go out from the sender's task meanwhile. Where the server can, it holds
        the channel with no task at all while it waits (``ResponseControl.park``);
        otherwise this task watches for the client leaving itself.
        """
        websocket = self._websocket is not None
        self._woken = False
        idle = not websocket and self._head_sent and not self._hooks["before_chunk"]
        if idle and self._solo:
            deadline = inf
            if self.transport == "sse" and self.heartbeat is not None:
                deadline = trio.current_time() + self.heartbeat
            if control.park(self._resume, deadline):
                self._parked = True
                self._idle = True
                self._deadline = deadline
                return True
        with trio.CancelScope() as scope:
            if self.transport == "sse" and self.heartbeat is not None:
                scope.deadline = trio.current_time() + self.heartbeat
            self._wait_scope = scope
            self._idle = not websocket and self._head_sent and not self._hooks["before_chunk"]
            try:
                if not websocket and control.can_watch:
                    await control.wait_peer_gone()
                    self._request_close(CloseStatus("gone", 1006, "the client went away"))
                else:
                    if self._wakeup is None:
                        self._wakeup = trio.lowlevel.ParkingLot()
                    await self._wakeup.park()
            finally:
                self._idle = False
                self._wait_scope = None
        await self._after_wait(control, heartbeat_due=scope.cancelled_caught)
        return False

    def _heartbeat_due(self) -> bool:
        return trio.current_time() >= self._deadline

    async def _after_wait(self, control: ResponseControl, *, heartbeat_due: bool) -> None:
        """What follows a wait for news: the rest of a message the socket took only in
        part, and the heartbeat if that is what ended the wait."""
        self._idle = False
        if self._needs_flush:
            self._needs_flush = False
            await control.flush()
        if heartbeat_due and not self._woken:
            await control.write(comment())  # the heartbeat is due

    def _encode(self, data: Message) -> bytes:
        global _last_encoded
        # A broadcast hands the same message to every member: encode it once.
        last = _last_encoded
        if data is last[0] and self.transport == last[1]:
            return last[2]
        if not isinstance(data, str | bytes | Event):
            raise TypeError(f"a channel sends str, bytes or sse.Event, not {type(data).__name__}")
        if self.transport == "sse":
            if isinstance(data, Event):
                encoded = data.encode()
            else:
                text = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
                encoded = Event(text).encode()
        elif isinstance(data, Event):
            encoded = data.data.encode()
        else:
            encoded = data.encode() if isinstance(data, str) else data
        _last_encoded = (data, self.transport, encoded)
        return encoded

    async def _deliver(self, control: ResponseControl, data: Message) -> None:
        if self._websocket is not None:
            message: str | bytes = data.data if isinstance(data, Event) else data
            await self._websocket.send_message(message)
        else:
            await control.write(self._encode(data))

    async def _end(self, control: ResponseControl, head_sent: bool) -> None:
        if self._websocket is not None:
            status = self._close_status
            code = status.code if status is not None and status.code is not None else 1000
            # A client that never answers the close frame must not hold the channel open.
            with trio.move_on_after(_CLOSE_HANDSHAKE_SECONDS):
                await self._websocket.aclose(code, status.reason if status is not None else "")
            return
        if not head_sent:
            headers = self._headers.copy()
            headers["content-length"] = "0"
            await control.start(self._status, headers)
        await control.end()

    async def _finish(self, status: CloseStatus) -> None:
        """Close for good: leave groups, run after_close, call on_close exactly once."""
        self._close_status = self._close_status or status
        if self._state != "errored":
            self._state = "closed"
        self._queue.clear()
        self._wake()
        if self._space is not None:
            self._space.unpark_all()
        for group in list(self._groups):
            group.discard(self)
        self._in_after_close = True
        try:
            for hook in self._hooks["after_close"]:
                await _call(hook, self)
        except Exception:
            log.exception("%r: after_close failed", self)
        finally:
            self._in_after_close = False
        if not self._on_close_called:
            self._on_close_called = True
            try:
                await _call(self.on_close, self, self._close_status)
            except Exception:
                log.exception("%r: on_close failed", self)
        if self._closed_event is not None:
            self._closed_event.set()


def _hook_list(hooks: Callback | Iterable[Callback] | None) -> tuple[Callback, ...]:
    if hooks is None:
        return ()
    if callable(hooks):
        return (hooks,)
    return tuple(hooks)


def channel(
    request: Request,
    *,
    on_open: Callback | None = None,
    on_receive: Callback | None = None,
    on_close: Callback | None = None,
    after_open: Callback | Iterable[Callback] | None = None,
    before_chunk: Callback | Iterable[Callback] | None = None,
    before_close: Callback | Iterable[Callback] | None = None,
    after_close: Callback | Iterable[Callback] | None = None,
    status: int = 200,
    headers: HeadersLike | None = None,
    heartbeat: float | None = 15.0,
    max_queue: int = 1024,
    when_full: Literal["close", "drop-oldest"] = "close",
    max_message_size: int = 1 << 20,
    ping_interval: float | None = 20.0,
) -> Response:
    """Answer ``request`` with a channel; return the response for the handler to return.

    The transport follows the request: ``Upgrade: websocket`` → WebSocket; ``Accept:
    text/event-stream`` → Server-Sent Events; anything else → plain HTTP, where a first
    ``send(data, close=True)`` is a whole long-poll reply and ``send(data)`` streams
    chunks. Callbacks may be plain or async: ``on_open(channel)``,
    ``on_receive(channel, message)``, ``on_close(channel, status)``; hooks take the
    channel (``before_chunk`` takes and returns the list of chunks).
    """
    return Channel(
        request,
        on_open=on_open,
        on_receive=on_receive,
        on_close=on_close,
        after_open=after_open,
        before_chunk=before_chunk,
        before_close=before_close,
        after_close=after_close,
        status=status,
        headers=headers,
        heartbeat=heartbeat,
        max_queue=max_queue,
        when_full=when_full,
        max_message_size=max_message_size,
        ping_interval=ping_interval,
    ).response()
