"""The trio driver of one HTTP/1.1 server connection: request heads in, one exchange
at a time, the response out, and what is left of a request body drained.

The connection's task reads each request head, then runs the handler and sends the
response (``_respond``). Whoever reads ``request.body`` reads it from the socket, so the
request may stream in while the response streams out, with no task or queue between
them. The grammar is ``_wire``'s; sockets are ``Transport``'s.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from math import inf
from typing import TYPE_CHECKING, Any

import h11
import trio

from ..._body import EmptyBody
from ..._errors import ProtocolError, Timeout
from .._exchange import Exchange, ExchangeTasks, State, Watch
from .._models import Headers, Request
from .._transport import Transport
from ._bodies import PeerGone, RequestBody
from ._respond import Responder
from ._wire import (
    CONTINUE,
    ServerWire,
    check_request,
    comma_tokens,
    error_response,
    request_body_length,
)

if TYPE_CHECKING:
    from .._server import Server

__all__ = ["H1Exchange", "ServerConnection", "answer_and_close"]

log = logging.getLogger("duplex.server")


class H1Exchange(Exchange):
    """An exchange as HTTP/1.1 frames it."""

    __slots__ = ("continue_sent", "error_status", "expects_continue", "http_10", "keep_alive")

    def __init__(self, request: Request, body: RequestBody | EmptyBody, scope: trio.CancelScope):
        super().__init__(request, body, scope)
        #: Whether the connection may serve another request after this one.
        self.keep_alive = True
        self.http_10 = False
        self.expects_continue = False
        self.continue_sent = False
        #: The status the connection answers with if the request turns out bad before
        #: the response began (its body too large, malformed, too slow).
        self.error_status: int | None = None

    def fail(self, error: BaseException) -> None:
        self.keep_alive = False
        super().fail(error)


class ServerConnection:
    """One HTTP/1.1 connection of a ``Server``: serves requests until it ends or parks."""

    __slots__ = (
        "cancel_scope",
        "client",
        "closing",
        "failed_exchange",
        "idle",
        "in_flight",
        "limits",
        "parked",
        "responder",
        "scheme",
        "served",
        "server",
        "transport",
        "wire",
    )

    def __init__(
        self,
        server: Server,
        stream: trio.abc.Stream,
        client: tuple[str, int] | None,
        *,
        direct_io: bool,
    ) -> None:
        self.server = server
        self.limits = limits = server.limits
        self.transport = Transport(
            stream,
            read_size=limits.read_size,
            write_timeout=limits.write_timeout,
            direct_io=direct_io,
        )
        self.wire = ServerWire(
            max_header_size=limits.max_header_size,
            max_request_line=limits.max_request_line,
            max_body_size=limits.max_body_size,
            read_size=limits.read_size,
        )
        self.client = client
        self.scheme = "https" if server.ssl_context is not None else "http"
        self.idle = True
        self.closing = False
        self.cancel_scope = trio.CancelScope()
        #: The exchange in flight, for the watcher; None between requests.
        self.in_flight: H1Exchange | None = None
        #: The exchange whose request turned out bad, answered (if it can still be)
        #: once the connection's task has stopped.
        self.failed_exchange: H1Exchange | None = None
        #: Requests read so far.
        self.served = 0
        #: The exchange parked (ResponseControl.park): the connection then has no task.
        self.parked: Exchange | None = None
        self.responder = Responder(self)

    def __repr__(self) -> str:
        return f"<connection from {self.client}>"

    @property
    def nursery(self) -> trio.Nursery:
        """Where the connection's helper tasks run (a watcher, the tasks of
        ``request.nursery``): the server's, so that a connection needs no nursery."""
        return self.server.nursery

    # -- socket I/O ---------------------------------------------------------------------

    def fill_nowait(self) -> bool | None:
        """Read once more into the wire if that needs no wait: True, False at EOF, None
        if it would block (or the fast path is off). Raises as ``Transport.read_nowait``."""
        data = self.transport.read_nowait(self.wire.fill_size)
        if data is None:
            return None
        self.wire.feed(data)
        return bool(data)

    async def fill(
        self, timeout: float | None = None, phase: str = "read", *, deadline: float = inf
    ) -> bool:
        """Read once more into the wire; False at EOF. The bytes are in the wire before
        this yields, so a cancelled fill loses nothing. Raises as ``read_some``."""
        data = await self.transport.read_some(
            timeout, phase, deadline=deadline, max_bytes=self.wire.fill_size
        )
        self.wire.feed(data)
        return bool(data)

    async def send(self, pieces: list[Any]) -> None:
        """Write ``pieces`` (a write stopped part-way cuts the connection: see
        ``Transport.broken``)."""
        await self.transport.send_pieces(pieces)

    async def end_response(self, exchange: Exchange) -> None:
        """End the response on the wire now (a ``Streamable`` closing its output)."""
        await self.responder.end(exchange)

    # -- the connection's life ------------------------------------------------------------

    def shutdown(self) -> None:
        self.closing = True
        if self.idle:
            self.cancel_scope.cancel()
            return
        exchange = self.in_flight
        if exchange is not None and exchange.on_server_closing is not None:
            exchange.on_server_closing()

    async def resume(self, exchange: Exchange) -> None:
        """Go on with a parked exchange, in a new task."""
        await self.run(exchange)

    async def run(self, resumed: Exchange | None = None) -> None:
        """Serve the connection until it ends or parks; with ``resumed``, go on with
        that parked exchange first (in a new task)."""
        if resumed is not None:
            # A scope is good for one task: the exchange gets the new task's.
            self.cancel_scope = resumed.scope = trio.CancelScope()
            resumed.wake_pending = False
            if resumed.failed or not self.server.parking.available:
                self.cancel_scope.cancel()
        lingering = False
        try:
            with self.cancel_scope:
                lingering = await self._run(resumed)
            if self.parked is not None:
                self.server.parking.park(self)
                return
            exchange = self.failed_exchange
            if exchange is not None and exchange.error_status and not exchange.head_started:
                status = exchange.error_status
                await self._answer_and_close(status, HTTPStatus(status).phrase)
            elif lingering:
                await self._linger()
        finally:
            if self.parked is None:
                await self.transport.aclose()
                self.server.connection_closed(self)

    async def _run(self, resumed: Exchange | None) -> bool:
        """Serve; True if the connection should linger before it closes (a request
        body was left unread)."""
        try:
            try:
                return await self._serve(resumed)
            except ProtocolError as error:
                log.debug("bad request from %s: %s", self.client, error)
                await self._answer_and_close(error.status, str(error))
            except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
                log.debug("connection from %s ended: %r", self.client, error)
        except Exception:
            log.exception("unexpected error serving %s", self.client)
        return False

    async def _serve(self, resumed: Exchange | None) -> bool:
        limits = self.limits
        if resumed is not None:
            assert isinstance(resumed, H1Exchange)
            if not await self._run_exchange(resumed):
                return self._unread(resumed)
            if self.parked:
                return False
            self.wire.next_request()
        started = trio.current_time()
        while not self.closing:
            self.idle = True
            event = await self._read_head(started, first=self.served == 0)
            if event is None:
                return False
            self.idle = False
            self.served += 1
            fields = check_request(event, self.wire.head_has_controls)
            last = (
                limits.max_requests_per_connection is not None
                and self.served >= limits.max_requests_per_connection
            )
            exchange = self._exchange(event, fields, last)
            if not await self._run_exchange(exchange):
                return self._unread(exchange)
            if self.parked:
                return False
            started = trio.current_time()
            self.wire.next_request()
        return False

    def _unread(self, exchange: H1Exchange) -> bool:
        """Whether ``exchange`` ended with its request body unread (and the peer
        perhaps still sending it): then the connection lingers before it closes."""
        return (
            self.parked is None
            and not exchange.request_complete
            and not exchange.detached
            and not self.transport.broken
            and not self.wire.eof
        )

    async def _answer_and_close(self, status: int, message: str) -> None:
        limits = self.limits
        await answer_and_close(
            self.transport.stream,
            status,
            message,
            linger=limits.linger_timeout,
            max_drain=limits.max_linger_size,
        )

    async def _linger(self) -> None:
        """Close without destroying the response: shut the write side, then read and
        drop what the peer still sends, for ``linger_timeout`` and ``max_linger_size``
        at most, so that a client that writes its whole body before it reads (Python's
        ``http.client``) receives the response rather than a reset."""
        limits = self.limits
        stream = self.transport.stream
        with trio.move_on_after(limits.linger_timeout):
            try:
                if isinstance(stream, trio.abc.HalfCloseableStream):
                    await stream.send_eof()
                drained = 0
                while drained < limits.max_linger_size:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    drained += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    # -- the request head -------------------------------------------------------------

    async def _read_head(self, started: float, *, first: bool) -> h11.Request | None:
        """The next request's head, or None when the peer closes or idles out.

        Raises ``ProtocolError`` with the status to answer (400, 408, 414, 431, 501).
        """
        limits = self.limits
        wire = self.wire
        head_deadline = inf if limits.header_timeout is None else started + limits.header_timeout
        idle_deadline = head_deadline
        if not first and limits.keep_alive_timeout is not None:
            idle_deadline = min(head_deadline, started + limits.keep_alive_timeout)
        while True:
            if wire.buffered:
                event = wire.parse_head()
                if event is not None:
                    return event
            pending = wire.buffered > 0
            if wire.eof:
                if pending:
                    raise ProtocolError("the peer closed the connection mid-head")
                return None
            try:
                await self.fill(deadline=head_deadline if pending else idle_deadline)
            except Timeout:
                if pending:
                    raise ProtocolError("the request head did not arrive in time", 408) from None
                return None

    # -- one exchange -----------------------------------------------------------------

    def _exchange(
        self, event: h11.Request, fields: list[tuple[bytes, bytes]], last: bool
    ) -> H1Exchange:
        """The exchange for a request head just read."""
        length = request_body_length(fields, self.limits.max_body_size)
        body: RequestBody | EmptyBody
        if length == 0:
            body = EmptyBody()
        else:
            body = RequestBody(self, length)
            self.wire.begin_body(length)
        http_10 = event.http_version == b"1.0"
        request = Request(
            event.method.decode("ascii"),
            event.target.decode("latin-1"),
            Headers.from_fields(fields),
            body,
            http_version="1.0" if http_10 else "1.1",
            client=self.client,
            scheme=self.scheme,
        )
        # A failed exchange ends its connection: the connection's scope is its scope.
        exchange = H1Exchange(request, body, self.cancel_scope)
        exchange.http_10 = http_10
        closes = b"close" in comma_tokens(fields, b"connection")
        exchange.keep_alive = not (last or http_10 or closes)
        if length == 0:
            exchange.request_complete = True
        else:
            assert isinstance(body, RequestBody)
            body.exchange = exchange
            exchange.expects_continue = not http_10 and b"100-continue" in comma_tokens(
                fields, b"expect"
            )
        request.set_nursery(ExchangeTasks(exchange, self.nursery, _task_failed))
        self.watch_later()
        return exchange

    async def _run_exchange(self, exchange: H1Exchange) -> bool:
        """Answer ``exchange`` (or go on with it once parked); True if the connection
        may serve another request. Returns False, leaving everything as it is, when the
        exchange parks."""
        self.in_flight = exchange
        try:
            await self.responder.respond(exchange)
            if self.parked is not None:
                return False
            if not (exchange.request_complete or exchange.failed or exchange.detached):
                await self._drain(exchange)
        finally:
            if self.parked is None:
                self.in_flight = None
                exchange.end()
                if exchange.tasks is not None:
                    await exchange.tasks.wait()
        return (
            exchange.keep_alive
            and exchange.request_complete
            and self.wire.response_ended
            and exchange.state is State.OVER
            and not self.transport.broken
        )

    async def _drain(self, exchange: H1Exchange) -> None:
        """Read and drop what the response left of the request body, up to
        ``max_drain_size``; past it, or on any error, the connection will close."""
        wire = self.wire
        if exchange.expects_continue and not exchange.continue_sent and not wire.buffered:
            # The client waits for a 100 Continue that will not come now: it may or may
            # not send the body, so the connection cannot be read reliably any more.
            exchange.keep_alive = False
            return
        drained = 0
        try:
            while True:
                data = wire.take_body()
                if data is None:
                    await self.fill(self.limits.read_timeout, "read")
                    continue
                if not data:
                    exchange.request_complete = True
                    return
                drained += len(data)
                if drained > self.limits.max_drain_size:
                    exchange.keep_alive = False
                    return
        except (ProtocolError, Timeout, trio.BrokenResourceError) as error:
            log.debug("draining the request body of %s: %r", self.client, error)
            exchange.keep_alive = False

    async def send_continue(self, exchange: Exchange) -> bool:
        """Send ``100 Continue`` if the client waits for it before it sends the body
        (once the handler asks for the body, as RFC 9110 intends); False if the peer
        went away meanwhile."""
        assert isinstance(exchange, H1Exchange)
        if not exchange.expects_continue or exchange.continue_sent:
            return True
        exchange.continue_sent = True
        wire = self.wire
        if exchange.head_started or wire.body_received or wire.buffered:
            return True
        try:
            await self.send([CONTINUE])
        except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout):
            exchange.fail(PeerGone("the peer went away"))
            return False
        return True

    def request_complete(self, exchange: Exchange) -> None:
        exchange.request_complete = True
        self.watch_later()  # the socket is free to watch now

    def body_failed(self, exchange: Exchange, error: ProtocolError | Timeout) -> None:
        """The request body turned out bad: answer with its status if still possible."""
        assert isinstance(exchange, H1Exchange)
        status = 408 if isinstance(error, Timeout) else error.status
        log.debug("bad request body from %s: %s", self.client, error)
        if exchange.error_status is None:
            exchange.error_status = status
            self.failed_exchange = exchange
        if isinstance(error, Timeout):
            exchange.fail(error)
        else:
            exchange.fail(trio.BrokenResourceError(f"bad request body: {error}"))

    # -- watching for the peer leaving ----------------------------------------------------

    def watch_later(self) -> None:
        """Have the server look at the exchange in flight once it has lasted a while."""
        self.server.watchers.watch_later(self)

    def start_watching(self, exchange: Exchange) -> None:
        """Start a task that notices the peer leaving mid-exchange, if still useful.

        Only while no one else waits on the socket (a reader of the request body, or the
        exchange's own task), and only for an exchange still running. The task peeks at
        the socket, reading nothing, and fails the exchange when the peer closes or
        resets the connection.
        """
        if (
            exchange is not self.in_flight
            or not exchange.running
            or exchange.watch is not Watch.NONE
        ):
            return
        exchange.watch = Watch.TASK
        exchange.watch_scope = scope = trio.CancelScope()
        self.nursery.start_soon(self._watch, exchange, scope)

    async def _watch(self, exchange: Exchange, scope: trio.CancelScope) -> None:
        with scope:
            if exchange is not self.in_flight or not exchange.running:
                return
            await self.transport.wait_peer_gone()
            log.debug("peer %s went away mid-exchange", self.client)
            self.peer_left(exchange)

    def peer_left(self, exchange: Exchange) -> None:
        exchange.fail(PeerGone("the peer closed the connection"))


def _task_failed(exchange: Exchange) -> None:
    """A task in ``request.nursery`` raised: an unfinished response cannot go on."""
    if exchange.running and isinstance(exchange, H1Exchange):
        exchange.keep_alive = False
        exchange.to(State.FAILED)


async def answer_and_close(
    stream: trio.abc.Stream,
    status: int,
    message: str,
    *,
    linger: float = 1.0,
    max_drain: int = 65536,
) -> None:
    """Send an error response, then close so that the peer still reads it.

    Closing a socket with unread input makes the kernel send a reset, which can destroy
    the answer in flight; so the write side is shut first and what the peer still sends
    is drained, for ``linger`` seconds and ``max_drain`` bytes at most.
    """
    try:
        with trio.move_on_after(linger):
            await stream.send_all(error_response(status, message))
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            drained = 0
            while drained < max_drain:
                data = await stream.receive_some(16384)
                if not data:
                    break
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)
