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
from typing import TYPE_CHECKING

import trio

from ..._errors import ProtocolError, Timeout
from .._exchange import OVER, Exchange
from .._transport import Transport
from ._bodies import PeerGone, RequestBody
from ._closing import answer_and_close, linger
from ._exchange import H1Exchange
from ._framing import CountingFramer, ResponseFramer, error_body
from ._head import RequestHead
from ._respond import Responder
from ._wire import ServerWire

if TYPE_CHECKING:
    from .._server import Server

__all__ = ["ServerConnection"]

log = logging.getLogger("duplex.server")


class ServerConnection:
    """One HTTP/1.1 connection of a ``Server``: serves requests until it ends or parks."""

    __slots__ = (
        "cancel_scope",
        "client",
        "closing",
        "ending",
        "failed_exchange",
        "framer",
        "handover",
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
        # (Only the access log needs the status and the bytes sent counted.)
        self.framer = CountingFramer() if server.access_log else ResponseFramer()
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
        #: What the peer sent, when it opened with the HTTP/2 preface: the server then
        #: speaks HTTP/2 on the transport (h2c with prior knowledge).
        self.handover: bytes | None = None
        self.responder = Responder()
        #: Set once the end of a response handed to a server task (``Streamable``
        #: output closed while the socket could not take it at once) has gone out.
        self.ending: trio.Event | None = None

    def __repr__(self) -> str:
        return f"<connection from {self.client}>"

    @property
    def busy(self) -> bool:
        """True while an exchange is in flight (between requests, False)."""
        return self.in_flight is not None

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
        transport = self.transport
        if transport.direct:
            # The socket may have it already: no coroutine more than that needs.
            await trio.lowlevel.checkpoint_if_cancelled()
            data = transport.read_nowait(self.wire.fill_size)
            if data is not None:
                self.wire.feed(data)
                await transport.spend()
                return bool(data)
            # Found empty: wait before reading again.
            data = await transport.read_when_ready(
                timeout, phase, deadline=deadline, max_bytes=self.wire.fill_size
            )
            self.wire.feed(data)
            return bool(data)
        data = await transport.read_some(
            timeout, phase, deadline=deadline, max_bytes=self.wire.fill_size
        )
        self.wire.feed(data)
        return bool(data)

    async def end_response(self, exchange: H1Exchange) -> None:
        """End the response on the wire now (a ``Streamable`` closing its output)."""
        await self.responder.end(exchange)

    # -- the connection's life ------------------------------------------------------------

    def shutdown(self) -> None:
        self.closing = True
        # Only between requests: a connection yet to read its first request (accepted
        # just before, its client about to send it) still has that answered, as does
        # one whose next request has begun to arrive.
        if self.idle and self.served and not self.wire.buffered:
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
            await self._wait_ending()
            if self.parked is not None:
                self.server.parking.park(self)
                return
            exchange = self.failed_exchange
            if exchange is not None and exchange.error_status and not exchange.head_started:
                status = exchange.error_status
                await answer_and_close(
                    self.transport,
                    status,
                    HTTPStatus(status).phrase,
                    seconds=self.limits.linger_timeout,
                    max_size=self.limits.max_linger_size,
                )
            elif lingering:
                limits = self.limits
                await linger(
                    self.transport, seconds=limits.linger_timeout, max_size=limits.max_linger_size
                )
        finally:
            if self.parked is None:
                if self.handover is None:
                    await self.transport.aclose()
                self.server.connection_closed(self)

    async def _wait_ending(self) -> None:
        """Let the end of a response that a server task is sending go out before the
        connection closes (bounded: that send has the write timeout; cancelled with
        the server)."""
        ending = self.ending
        if ending is not None and not ending.is_set():
            timeout = self.limits.write_timeout
            with trio.move_on_after(inf if timeout is None else timeout):
                await ending.wait()

    async def _run(self, resumed: Exchange | None) -> bool:
        """Serve; True if the connection should linger before it closes (a request
        body was left unread)."""
        try:
            try:
                return await self._serve(resumed)
            except ProtocolError as error:
                log.debug("bad request from %s: %s", self.client, error)
                if self.server.access_log:
                    # (Refused before it was read whole: no request line to log.)
                    size = len(error_body(error.status, str(error)))
                    self.server.log_refused(self.client, error.status, size)
                await answer_and_close(
                    self.transport,
                    error.status,
                    str(error),
                    seconds=self.limits.linger_timeout,
                    max_size=self.limits.max_linger_size,
                )
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
            self.framer.response_ended = False
        started = trio.current_time()
        while not self.closing:
            self.idle = True
            preface = not self.served and self.server.http2
            head = await self._read_head(started, first=self.served == 0, preface=preface)
            if head is None:
                return False
            if preface and head.method == b"PRI":
                # The HTTP/2 preface's first part: the rest of the connection is HTTP/2's.
                self.handover = b"PRI * HTTP/2.0\r\n\r\n" + self.wire.leftover()
                return False
            self.idle = False
            self.served += 1
            last = (
                limits.max_requests_per_connection is not None
                and self.served >= limits.max_requests_per_connection
            )
            exchange = H1Exchange.from_head(self, head, last)
            self.watch_later()
            if not await self._run_exchange(exchange):
                return self._unread(exchange)
            if self.parked:
                return False
            started = trio.current_time()
            self.wire.next_request()
            self.framer.response_ended = False
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

    # -- the request head -------------------------------------------------------------

    async def _read_head(self, started: float, *, first: bool, preface: bool) -> RequestHead | None:
        """The next request's head, checked, or None when the peer closes or idles out;
        with ``preface``, the HTTP/2 preface's ``PRI`` request as it is.

        Raises ``ProtocolError`` with the status to answer (400, 408, 414, 431, 501, 505).
        """
        limits = self.limits
        wire = self.wire
        head_deadline = inf if limits.header_timeout is None else started + limits.header_timeout
        idle_deadline = head_deadline
        if not first and limits.keep_alive_timeout is not None:
            idle_deadline = min(head_deadline, started + limits.keep_alive_timeout)
        while True:
            if wire.buffered:
                head = wire.parse_head(preface=preface)
                if head is not None:
                    return head
            pending = wire.buffered > 0
            if wire.eof:
                if pending:
                    raise ProtocolError("the peer closed the connection mid-head")
                return None
            if not pending and self.transport.direct:
                if not await self._fill_idle(idle_deadline):
                    return None
                continue
            try:
                await self.fill(deadline=head_deadline if pending else idle_deadline)
            except Timeout:
                if pending:
                    raise ProtocolError("the request head did not arrive in time", 408) from None
                return None

    async def _fill_idle(self, deadline: float) -> bool:
        """``fill`` between requests, on the fast path: False once ``deadline`` passes
        with nothing read, and the connection's scope is then cancelled (it ends).

        A keep-alive connection waits here once a request: rather than a cancel scope
        of its own each time, the wait takes the connection's scope, with ``deadline``
        for as long as it waits. If the deadline passes as the bytes arrive, the
        connection ends all the same, as it would have a moment later.
        """
        transport = self.transport
        await trio.lowlevel.checkpoint_if_cancelled()
        data = transport.read_nowait(self.wire.fill_size)
        if data is not None:
            self.wire.feed(data)
            await transport.spend()
            return True
        scope = self.cancel_scope
        scope.deadline = deadline
        try:
            data = await transport.read_when_ready(max_bytes=self.wire.fill_size)
        finally:
            scope.deadline = inf
        if scope.cancel_called:
            return False
        self.wire.feed(data)
        return True

    # -- one exchange -----------------------------------------------------------------

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
                if exchange.draining is not None:
                    await exchange.draining.wait()
                else:
                    await exchange.drain()
        finally:
            if self.parked is None:
                self.in_flight = None
                exchange.end()
                body = exchange.request_body
                if isinstance(body, RequestBody):
                    body.unbind()
                if exchange.tasks is not None:
                    await exchange.tasks.wait()
                if self.server.access_log:
                    self._log_access(exchange)
        return (
            exchange.keep_alive
            and exchange.request_complete
            and self.framer.response_ended
            and exchange.state is OVER
            and not self.transport.broken
        )

    def _log_access(self, exchange: H1Exchange) -> None:
        framer = self.framer
        assert isinstance(framer, CountingFramer)
        if exchange.head_started:
            self.server.log_access(exchange.request, framer.status, framer.sent)
        else:
            # Handed over (a WebSocket answers 101 itself), or answered by the connection.
            status = 101 if exchange.detached else exchange.error_status
            self.server.log_access(exchange.request, status, 0)

    # -- watching for the peer leaving ----------------------------------------------------

    def watch_later(self) -> None:
        """Have the server look at the exchange in flight once it has lasted a while."""
        self.server.watchers.watch_later(self)

    def stash(self, data: bytes) -> int:
        """Keep bytes a watcher read (the portable path: what the peer sent after its
        request); how many more it may keep (``max_header_size`` buffered at most).
        ``b""`` only asks."""
        if data:
            self.wire.feed(data)
        return self.limits.max_header_size - self.wire.buffered

    def peer_left(self, exchange: Exchange) -> None:
        exchange.fail(PeerGone("the peer closed the connection"))
