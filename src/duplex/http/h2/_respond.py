"""How an HTTP/2 stream is answered: the handler's ``Response`` (every body kind
HTTP/1.1 sends, through the shared ``http._respond``) or a ``Takeover`` that drives the
stream itself (``H2Control``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from math import inf
from typing import TYPE_CHECKING

import trio

from ..._body import Readable
from ..._stream import Stream
from .._exchange import DETACHED
from .._models import Headers, HeadersLike, Response
from .._respond import (
    NO_BODY_STATUSES,
    content_length,
    finish_takeover,
    handler_response,
    send_body,
    why_failed,
)
from .._takeover import ExchangeControl, ResponseControl, Takeover
from ._bodies import StreamBody, StreamOutput
from ._exchange import H2Exchange

if TYPE_CHECKING:
    from ._connection import H2ServerConnection

__all__ = ["H2Control", "respond"]

log = logging.getLogger("duplex.server")


async def respond(exchange: H2Exchange) -> None:
    """Run the handler and send its response on the exchange's stream."""
    connection = exchange.connection
    try:
        response, _ = await handler_response(connection.server.handler, exchange)
        if response is not None:
            await _send_response(exchange, response)
    except Exception as error:
        exchange.fail(why_failed(error, exchange, connection.client))


async def _send_response(exchange: H2Exchange, response: Response) -> None:
    body = response.body
    if isinstance(body, Takeover):
        await _run_takeover(exchange, body.fn)
        return
    request = exchange.request
    status = response.status
    headers = list(response.headers.raw)
    content_length(response, headers)
    no_body = request.method == "HEAD" or status in NO_BODY_STATUSES
    trailers = response.trailers.raw if response.trailers and not no_body else None
    # An exchange that failed meanwhile is cancelled here, before any byte goes out,
    # so that the connection may still answer it with its own status.
    await trio.lowlevel.checkpoint_if_cancelled()
    if isinstance(body, Readable):
        exchange.response_body = body
    exchange.trailers = trailers
    if isinstance(body, bytes):
        ends = no_body or not (body or trailers)
        if ends:
            await exchange.start(status, headers, end=True)
            return
        # The head goes out with the body, in one flush (and one checkpoint).
        exchange.start_nowait(status, headers)
        if not trailers and exchange.send_nowait(body, end=True):
            await exchange.connection.flush_end()
            return
        await exchange.send(body, end=not trailers)
        if trailers:
            await exchange.finish()
        return
    await exchange.start(status, headers, end=no_body)
    await send_body(exchange, body, exchange.send, lambda: StreamOutput(exchange), no_body=no_body)
    await exchange.finish()


async def _run_takeover(
    exchange: H2Exchange, fn: Callable[[ResponseControl], Awaitable[object]]
) -> None:
    control = H2Control(exchange)
    await fn(control)
    if not exchange.detached:
        await finish_takeover(control, exchange, ended=exchange.out_ended)


class H2Control(ExchangeControl):
    """The server's side of a ``Takeover`` (a ``ResponseControl``) on an HTTP/2 stream.

    It cannot park (a stream's exchange keeps its task), and watching for the peer
    leaving needs no task: the connection's reader sees the stream reset or the
    connection close, and cancels the exchange. It writes without waiting
    (``write_nowait``) what the stream's window and the socket take at once.
    """

    __slots__ = ()
    _connection: H2ServerConnection
    _exchange: H2Exchange

    def __init__(self, exchange: H2Exchange) -> None:
        super().__init__(exchange.connection, exchange)

    @property
    def gone(self) -> bool:
        # (A stream taken over is DETACHED, never FAILED: its reset says it.)
        return self._exchange.failed or self._exchange.closed

    async def start(self, status: int, headers: HeadersLike | None = None) -> None:
        exchange = self._exchange
        if exchange.head_started:
            raise RuntimeError("the response has already started")
        ends = exchange.request.method == "HEAD" or status in NO_BODY_STATUSES
        await exchange.start(status, list(Headers(headers).raw), end=ends)

    async def write(self, data: bytes) -> None:
        if data and self._exchange.request.method != "HEAD":
            await self._exchange.send(data)
        else:
            await trio.lowlevel.checkpoint()

    async def end(self) -> None:
        await self._exchange.finish()

    async def reply(self, status: int, headers: HeadersLike | None, body: bytes) -> None:
        await self.start(status, headers)
        await self.write(body)
        await self.end()

    def write_nowait(self, data: bytes) -> bool | None:
        # DATA the window takes at once goes out from the caller's task; a socket that
        # takes only part leaves the rest to the connection's sender (False: the caller
        # flushes, and so waits for it). Nothing is queued behind bytes still waiting to
        # go out, so that a client that does not read holds back only its broadcasts.
        exchange = self._exchange
        if exchange.request.method == "HEAD" or not data:
            return True
        connection = self._connection
        if not connection.output_idle or not exchange.send_nowait(data):
            return None
        return connection.write_queued()

    async def flush(self) -> None:
        await self._connection.flush()

    @property
    def can_watch(self) -> bool:
        return False

    async def wait_peer_gone(self) -> None:
        await trio.sleep_forever()

    @property
    def can_park(self) -> bool:
        return False

    def park(
        self, resume: Callable[[ResponseControl], Awaitable[object]], deadline: float = inf
    ) -> bool:
        return False

    def wake(self) -> None:
        pass

    async def detach(self) -> tuple[trio.abc.Stream, bytes]:
        """The stream itself as a ``trio.abc.HalfCloseableStream``: its request body in,
        DATA out (answered ``200`` first unless a head went out already). Reads wait
        for the peer without a read timeout from then on."""
        exchange = self._exchange
        if not exchange.head_started:
            await exchange.start(200, [])
        exchange.to(DETACHED)
        body = exchange.request.body
        if isinstance(body, StreamBody):
            body.timeout = None
        output = StreamOutput(exchange)
        exchange.response_body = output
        return Stream(body, output), b""
