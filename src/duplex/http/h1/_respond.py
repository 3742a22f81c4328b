"""How an HTTP/1.1 server connection answers one exchange: the handler's ``Response``
(bytes, a ``Readable``, an async iterable, a ``Streamable``) or a ``Takeover`` that
drives the exchange itself (``Control``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from math import inf
from typing import TYPE_CHECKING, Any

import trio

from ..._body import Readable
from .._exchange import DETACHED, NO_WATCH, OVER, RESPONDED, RESPONDING, WATCH_SELF
from .._models import HeadersLike, Response
from .._respond import (
    NO_BODY_STATUSES,
    REASONS,
    body_length,
    finish_takeover,
    handler_response,
    send_body,
    why_failed,
)
from .._takeover import ExchangeControl, ResponseControl, Takeover
from ._bodies import ResponseOutput
from ._wire import CONTINUE

if TYPE_CHECKING:
    from ._connection import ServerConnection
    from ._exchange import H1Exchange
    from ._framing import ResponseFramer

__all__ = ["Control", "Responder"]

log = logging.getLogger("duplex.server")

#: A body up to this size goes out joined to its head, in one buffer (copying it costs
#: less than the kernel's walk over a vector of small pieces).
_JOIN_AT_MOST = 16384


def _one_write(pieces: list[Any], body: bytes) -> list[Any]:
    """The pieces of a whole response, as one buffer if its ``body`` is small."""
    return [b"".join(pieces)] if len(pieces) > 1 and len(body) <= _JOIN_AT_MOST else pieces


class Responder:
    """Sends the responses of one connection."""

    # (It keeps no reference to its connection, which holds it: each method finds the
    # connection through its exchange, and a connection that closes is no cycle left to
    # the garbage collector.)
    __slots__ = ("_trailers",)

    def __init__(self) -> None:
        # The trailers of the response being sent, for whoever ends it.
        self._trailers: list[tuple[bytes, bytes]] | None = None

    async def respond(self, exchange: H1Exchange) -> None:
        """Run the handler (or a parked exchange's sequel) and send its response."""
        connection = exchange.connection
        resume = exchange.resume
        try:
            if resume is not None:
                # A parked exchange goes on where it left off.
                exchange.resume = None
                exchange.watch = NO_WATCH
                await self._run_takeover(exchange, resume)
                return
            response, handler_failed = await handler_response(connection.server.handler, exchange)
            if response is None:
                return
            if handler_failed:
                exchange.keep_alive = False
            await self._send_response(exchange, response)
        except Exception as error:
            exchange.fail(why_failed(error, exchange, connection.client))
        finally:
            if connection.parked is None:
                if exchange.state is RESPONDING and connection.framer.response_ended:
                    exchange.to(OVER if exchange.request_complete else RESPONDED)
                if exchange.watch_scope is not None:
                    exchange.stop_watching()
                exchange.request_body.close_read_nowait()
                if exchange.request_complete and exchange.state is RESPONDED:
                    exchange.end()

    def head(
        self,
        exchange: H1Exchange,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        may_read: bool,
        length: int | None = None,
    ) -> bytes:
        """The response head (``length``: the body's, when known), with ``100 Continue``
        before it when the client waits for one and the response ``may_read`` the body
        as it streams; the exchange learns whether the connection closes after it."""
        connection = exchange.connection
        wire = connection.wire
        keep_alive = exchange.keep_alive and not (
            connection.closing or connection.server.shutting_down
        )
        interim = b""
        if (
            exchange.expects_continue
            and not exchange.continue_sent
            and not exchange.request_complete
        ):
            if wire.body_received or wire.buffered:
                exchange.continue_sent = True  # the client did not wait for it
            elif may_read:
                # A streaming response may read the body: let the client send it now
                # rather than wait for its expect timeout.
                exchange.continue_sent = True
                interim = CONTINUE
            else:
                keep_alive = False  # the body will not be read: say that we close
        if keep_alive and not may_read and not exchange.request_complete:
            request_length = exchange.request_body.length
            if (
                request_length is not None
                and request_length - wire.body_received > connection.limits.max_drain_size
            ):
                keep_alive = False  # more left unread than the connection would drain
        head, closes = connection.framer.response_head(
            status,
            reason,
            headers,
            head=exchange.request.method == "HEAD",
            http_10=exchange.http_10,
            keep_alive=keep_alive,
            length=length,
        )
        if closes:
            exchange.keep_alive = False
        exchange.to(RESPONDING)
        return interim + head if interim else head

    async def _send_response(self, exchange: H1Exchange, response: Response) -> None:
        body = response.body
        if isinstance(body, Takeover):
            await self._run_takeover(exchange, body.fn)
            return
        connection = exchange.connection
        status = response.status
        trailers = response.trailers
        length = body_length(response)
        # An exchange that failed meanwhile is cancelled here, before any byte goes out,
        # so that the connection may still answer it with its own status.
        await trio.lowlevel.checkpoint_if_cancelled()
        reason = response.reason or REASONS.get(status, b"")
        self._trailers = trailers.raw if trailers else None
        no_body = status in NO_BODY_STATUSES or exchange.request.method == "HEAD"
        if isinstance(body, bytes):
            head = self.head(
                exchange, status, reason, response.headers.raw, may_read=False, length=length
            )
            # The whole response in one write.
            pieces = [head, *connection.framer.frame(body)] if body and not no_body else [head]
            pieces += self.ending(connection.framer)
            await connection.transport.send_pieces(_one_write(pieces, body))
            return
        if isinstance(body, Readable):
            exchange.response_body = body
        head = self.head(
            exchange, status, reason, response.headers.raw, may_read=True, length=length
        )
        await connection.transport.send_pieces([head])
        await send_body(
            exchange,
            body,
            partial(self._send_chunk, connection),
            lambda: ResponseOutput(connection, exchange),
            no_body=no_body,
        )
        await self.end(exchange)

    async def _send_chunk(self, connection: ServerConnection, chunk: bytes) -> None:
        await connection.transport.send_pieces(connection.framer.frame(chunk))

    def ending(self, framer: ResponseFramer) -> list[Any]:
        """What ends the response on the wire (as ``framer`` frames it), its trailers
        where the framing carries them (elsewhere they are dropped, as HTTP allows)."""
        trailers, self._trailers = self._trailers, None
        if trailers and not framer.carries_trailers:
            log.debug("trailers dropped: this response cannot carry them")
        return framer.end(trailers)

    async def end(self, exchange: H1Exchange) -> None:
        """End the response on the wire (once)."""
        connection = exchange.connection
        if not connection.framer.response_ended:
            await connection.transport.send_pieces(self.ending(connection.framer))
        if exchange.state is RESPONDING:
            exchange.to(RESPONDED)
        exchange.drain_soon()

    async def _run_takeover(
        self, exchange: H1Exchange, fn: Callable[[ResponseControl], Awaitable[object]]
    ) -> None:
        connection = exchange.connection
        control = Control(connection, exchange)
        await fn(control)
        if control.parking:
            connection.parked = exchange  # the stack unwinds; run() hands it to the server
            return
        if exchange.detached:
            return
        if not exchange.head_started:
            exchange.keep_alive = False
        await finish_takeover(control, exchange, ended=connection.framer.response_ended)


class Control(ExchangeControl):
    """The server's side of a ``Takeover`` (a ``ResponseControl``): the exchange, handed
    to its function."""

    __slots__ = ("parking",)
    _connection: ServerConnection
    _exchange: H1Exchange

    def __init__(self, connection: ServerConnection, exchange: H1Exchange) -> None:
        super().__init__(connection, exchange)
        self.parking = False

    async def start(self, status: int, headers: HeadersLike | None = None) -> None:
        await self._connection.transport.send_pieces([self._head(status, headers)])

    def _head(self, status: int, headers: HeadersLike | None) -> bytes:
        exchange = self._exchange
        if exchange.head_started:
            raise RuntimeError("the response has already started")
        response = Response(status, headers)
        # A takeover reads the request body as it likes (a channel's on_receive).
        return self._connection.responder.head(
            exchange, status, REASONS.get(status, b""), list(response.headers.raw), may_read=True
        )

    async def write(self, data: bytes) -> None:
        if data and self._exchange.request.method != "HEAD":
            connection = self._connection
            await connection.transport.send_pieces(connection.framer.frame(data))

    async def end(self) -> None:
        await self._connection.responder.end(self._exchange)

    async def reply(self, status: int, headers: HeadersLike | None, body: bytes) -> None:
        head = self._head(status, headers)
        exchange, connection = self._exchange, self._connection
        responder, framer = connection.responder, connection.framer
        sends_body = body and exchange.request.method != "HEAD"
        pieces = [head, *framer.frame(body)] if sends_body else [head]
        pieces += responder.ending(framer)
        await connection.transport.send_pieces(_one_write(pieces, body))
        await responder.end(exchange)  # (the bytes are out: what is left of ending it)

    @property
    def ended(self) -> bool:
        return self._connection.framer.response_ended

    def write_nowait(self, data: bytes) -> bool | None:
        if self._exchange.request.method == "HEAD" or not data:
            return True
        connection = self._connection
        return connection.transport.write_nowait(connection.framer.frame(data))

    async def flush(self) -> None:
        await self._connection.transport.flush()

    @property
    def can_watch(self) -> bool:
        exchange = self._exchange
        return (
            self._connection.transport.direct
            and exchange.request_complete
            and exchange.running
            and not self._connection.transport.broken
        )

    async def wait_peer_gone(self) -> None:
        if not self.can_watch:
            await trio.sleep_forever()
        exchange = self._exchange
        exchange.stop_watching()  # a watcher task may be peeking already
        exchange.watch = WATCH_SELF
        try:
            await self._connection.transport.wait_peer_gone()
        finally:
            # Busy again (writing, say): a watcher task looks after it meanwhile.
            exchange.watch = NO_WATCH
            self._connection.watch_later()
        # The peer left: the exchange failed (as a watcher or parking would say), so that
        # no answer goes to nobody (nor is logged as the server's error).
        self._connection.peer_left(exchange)

    @property
    def can_park(self) -> bool:
        return self.can_watch and self._connection.server.parking.available

    def park(
        self, resume: Callable[[ResponseControl], Awaitable[object]], deadline: float = inf
    ) -> bool:
        if not self.can_park or self.parking:
            return False
        exchange = self._exchange
        exchange.resume = resume
        exchange.park_deadline = deadline
        exchange.wake_pending = False
        # The server watches a parked exchange itself: no watcher task for it.
        exchange.stop_watching()
        exchange.watch = WATCH_SELF
        self.parking = True
        return True

    def wake(self) -> None:
        self._connection.server.parking.wake(self._connection, self._exchange)

    async def detach(self) -> tuple[trio.abc.Stream, bytes]:
        exchange = self._exchange
        if exchange.head_started:
            raise RuntimeError("cannot detach once the response has started")
        exchange.keep_alive = False
        # The connection's watcher peeks at the socket for the peer leaving; it must
        # stop before the new protocol reads from it.
        exchange.stop_watching()
        exchange.to(DETACHED)
        await trio.lowlevel.checkpoint()
        return self._connection.transport.stream, self._connection.wire.leftover()
