"""An exchange as HTTP/1.1 frames it: keep-alive, ``Expect: 100-continue``, and what
is left of a request body when the response ends."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ..._body import EmptyBody
from ..._errors import ProtocolError, Timeout
from .._exchange import WATCH_READER, Exchange
from .._models import Headers, Request
from ._bodies import PeerGone, RequestBody
from ._closing import linger
from ._head import RequestHead
from ._wire import CONTINUE, request_framing

if TYPE_CHECKING:
    from ._connection import ServerConnection

__all__ = ["H1Exchange"]

log = logging.getLogger("duplex.server")


class H1Exchange(Exchange):
    """An exchange as HTTP/1.1 frames it."""

    __slots__ = (
        "abandoned",
        "connection",
        "continue_sent",
        "draining",
        "error_status",
        "expects_continue",
        "http_10",
        "keep_alive",
    )

    def __init__(
        self,
        connection: ServerConnection,
        request: Request,
        body: RequestBody | EmptyBody,
        scope: trio.CancelScope,
        nursery: trio.Nursery,
    ) -> None:
        super().__init__(request, body, scope, nursery)
        self.connection = connection
        #: Whether the connection may serve another request after this one.
        self.keep_alive = True
        self.http_10 = False
        self.expects_continue = False
        self.continue_sent = False
        #: The status the connection answers with if the request turns out bad before
        #: the response began (its body too large, malformed, too slow).
        self.error_status: int | None = None
        #: True once the handler closed ``request.body`` itself (it reads no more).
        self.abandoned = False
        #: Set once a drain started by ``drain_soon`` has finished.
        self.draining: trio.Event | None = None

    def fail(self, error: BaseException) -> None:
        self.keep_alive = False
        super().fail(error)

    def task_failed(self) -> None:
        if self.running:
            self.keep_alive = False
        super().task_failed()

    @classmethod
    def from_head(
        cls,
        connection: ServerConnection,
        head: RequestHead,
        last: bool,
    ) -> H1Exchange:
        """The exchange for a request head ``connection`` just read (``last``: the
        connection serves no more after it)."""
        fields = head.fields
        length, closes, expects_continue = request_framing(fields, connection.limits.max_body_size)
        body: RequestBody | EmptyBody
        if length == 0:
            body = EmptyBody()
        else:
            body = RequestBody(connection, length)
            connection.wire.begin_body(length)
        http_10 = head.http_version == b"1.0"
        request = Request(
            head.method.decode("ascii"),
            head.target.decode("latin-1"),
            Headers.from_fields(fields),
            body,
            http_version="1.0" if http_10 else "1.1",
            client=connection.client,
            scheme=connection.scheme,
        )
        # A failed exchange ends its connection: the connection's scope is its scope.
        exchange = cls(connection, request, body, connection.cancel_scope, connection.nursery)
        exchange.http_10 = http_10
        exchange.keep_alive = not (last or http_10 or closes)
        if length == 0:
            exchange.request_complete = True
        else:
            assert isinstance(body, RequestBody)
            body.exchange = exchange
            exchange.expects_continue = expects_continue and not http_10
        return exchange

    def drain_soon(self) -> None:
        """Once the response has ended and the handler has given up the request body
        while the exchange goes on (a ``Streamable`` still running), drop what is left
        of the body from a task of the server's, so that the client is not held with
        its body unread for as long as the exchange lasts: up to ``max_drain_size``,
        then (the client cannot be told to stop but by closing) linger and close."""
        connection = self.connection
        if (
            self.abandoned
            and connection.framer.response_ended
            and self.draining is None
            and not self.request_complete
            and not self.ended
        ):
            self.draining = trio.Event()
            connection.nursery.start_soon(self._drain_in_background, self.draining)

    async def _drain_in_background(self, done: trio.Event) -> None:
        connection = self.connection
        self.stop_watching()  # a watcher must not wait on the socket with us
        self.watch = WATCH_READER
        try:
            await self.drain()
            if not self.request_complete:
                limits = connection.limits
                await linger(
                    connection.transport,
                    seconds=limits.linger_timeout,
                    max_size=limits.max_linger_size,
                )
                await connection.transport.aclose()
        finally:
            done.set()

    async def drain(self) -> None:
        """Read and drop what the response left of the request body, up to
        ``max_drain_size``; past it, or on any error, the connection will close."""
        wire = self.connection.wire
        if self.expects_continue and not self.continue_sent and not wire.buffered:
            # The client waits for a 100 Continue that will not come now: it may or may
            # not send the body, so the connection cannot be read reliably any more.
            self.keep_alive = False
            return
        drained = 0
        try:
            while True:
                data = wire.take_body()
                if data is None:
                    await self.connection.fill(self.connection.limits.read_timeout, "read")
                    continue
                if not data:
                    self.request_complete = True
                    return
                drained += len(data)
                if drained > self.connection.limits.max_drain_size:
                    self.keep_alive = False
                    return
        except (ProtocolError, Timeout, trio.BrokenResourceError) as error:
            log.debug("draining the request body of %s: %r", self.connection.client, error)
            self.keep_alive = False

    async def send_continue(self) -> bool:
        """Send ``100 Continue`` if the client waits for it before it sends the body
        (once the handler asks for the body, as RFC 9110 intends); False if the peer
        went away meanwhile."""
        if not self.expects_continue or self.continue_sent:
            return True
        self.continue_sent = True
        wire = self.connection.wire
        if self.head_started or wire.body_received or wire.buffered:
            return True
        try:
            await self.connection.transport.send_pieces([CONTINUE])
        except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout):
            self.fail(PeerGone("the peer went away"))
            return False
        return True

    def complete_request(self) -> None:
        """The request body has been read to its end."""
        self.request_complete = True
        self.connection.watch_later()  # the socket is free to watch now

    def body_failed(self, error: ProtocolError | Timeout) -> None:
        """The request body turned out bad: answer with its status if still possible."""
        status = 408 if isinstance(error, Timeout) else error.status
        log.debug("bad request body from %s: %s", self.connection.client, error)
        if self.error_status is None:
            self.error_status = status
            self.connection.failed_exchange = self
        if isinstance(error, Timeout):
            self.fail(error)
        else:
            self.fail(trio.BrokenResourceError(f"bad request body: {error}"))
