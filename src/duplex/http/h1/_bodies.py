"""The bodies of an HTTP/1.1 server exchange that touch the socket: the request body,
read by whoever reads it, and a ``Streamable``'s output, written from the writer's task.

Both keep DESIGN §1 like every other body: every async method is a checkpoint, two
tasks on one side raise ``trio.BusyResourceError``, a cancelled read loses nothing, and a
write cancelled part-way cuts the connection rather than leave half a chunk behind.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from ..._body import BytesLike, Readable
from ..._errors import ProtocolError, Timeout
from .._exchange import NO_WATCH, WATCH_READER, PeerGone
from .._respond import DirectOutput

if TYPE_CHECKING:
    from ._connection import ServerConnection
    from ._exchange import H1Exchange

__all__ = ["PeerGone", "RequestBody", "ResponseOutput"]

log = logging.getLogger("duplex.server")


class RequestBody(Readable):
    """``request.body`` of a request with a body, read from the connection by whichever
    task reads it: no task and no queue stand between the socket and the reader.

    It reads only while someone reads it (so the peer is held back by TCP itself), sends
    ``100 Continue`` when first read if the client waits for it, and fails the exchange
    when the body turns out bad (the connection then answers 400, 408, 413 or 431 if the
    response has not begun). Bytes read from the socket are in the connection's buffer
    before any wait ends, so a cancelled read loses none of them.
    """

    __slots__ = ("_closed", "_connection", "_ended", "_error", "_length", "_wait", "exchange")

    def __init__(self, connection: ServerConnection, length: int | None) -> None:
        self._connection = connection
        #: The exchange this body belongs to (set once it exists).
        self.exchange: H1Exchange | None = None
        self._length = length
        self._ended = False
        self._closed = False
        self._error: BaseException | None = None
        # Cancels the reader's wait for the socket (the body closed or failed meanwhile).
        self._wait: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<request body length={self._length} ended={self._ended}>"

    def unbind(self) -> None:
        """The exchange is over (the body closed, what was left of it drained): let go of
        the exchange, which holds the body. A body read to its end has let go already;
        one left unread would otherwise stay with its exchange in a cycle until the
        garbage collector undid it."""
        self.exchange = None

    @property
    def length(self) -> int | None:
        return self._length

    @property
    def is_empty(self) -> bool:
        return self._closed or self._ended or self._error is not None

    def fail(self, error: BaseException) -> None:
        """Later reads raise ``trio.BrokenResourceError`` from ``error``."""
        if self._error is None and not self._ended:
            self._error = error
        self._wake()

    def close_read_nowait(self, error: BaseException | None = None) -> None:
        """The reader gives up (or the response ended): later reads raise
        ``trio.ClosedResourceError``; the connection drains what is left."""
        self._closed = True
        self._pushback = b""
        self._wake()

    def _wake(self) -> None:
        if self._wait is not None:
            self._wait.cancel()

    async def aclose(self, error: BaseException | None = None) -> None:
        """The reader gives up: later reads raise ``trio.ClosedResourceError``, and the
        rest of the body is dropped by the server (see ``H1Exchange.drain_soon``)."""
        self.close_read_nowait(error)
        exchange = self.exchange
        if exchange is not None and not self._ended:
            exchange.abandoned = True
            exchange.drain_soon()
        await checkpoint()

    async def _receive(self, max_bytes: int | None) -> bytes:
        await checkpoint_if_cancelled()
        connection = self._connection
        yields = connection.transport.yields
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this body was closed by its reader")
            if self._error is not None:
                error = trio.BrokenResourceError("the request body broke")
                error.__cause__ = self._error
                raise error
            if self._ended:
                data = b""
                break
            exchange = self.exchange
            assert exchange is not None
            try:
                piece = connection.wire.take_body(max_bytes)
            except ProtocolError as error:
                exchange.body_failed(error)
                continue
            if piece is not None:
                data = piece
                if not data:
                    self._ended = True
                    # (Read whole, the body needs its exchange no more; the exchange
                    # holds it: a cycle, left to the garbage collector, otherwise.)
                    self.exchange = None
                    exchange.complete_request()
                break
            await self._fill(exchange)
        if connection.transport.yields == yields:
            await cancel_shielded_checkpoint()  # every read is a checkpoint
        return data

    async def _fill(self, exchange: H1Exchange) -> None:
        """Read more of the body from the socket (in the reader's own task)."""
        connection = self._connection
        if exchange.expects_continue and not await exchange.send_continue():
            return
        try:
            if connection.fill_nowait() is not None:
                # No budget spent here: the read this serves ends with a checkpoint of
                # its own, the one trip through the scheduler it owes.
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.debug("the peer left mid-body: %r", error)
            exchange.fail(PeerGone("the peer closed the connection mid-body"))
            return
        # Nothing to read yet: wait for it, in a scope that closing the body cancels.
        exchange.stop_watching()  # a watcher must not wait on the socket with us
        exchange.watch = WATCH_READER
        self._wait = trio.CancelScope()
        try:
            with self._wait:
                if connection.transport.direct:
                    # Only the wait: the read is the next fill_nowait's, rather than a
                    # second and third look at a socket just found empty.
                    await connection.transport.wait_readable(connection.limits.read_timeout)
                else:
                    await connection.fill(connection.limits.read_timeout, "read")
        except Timeout as error:
            log.debug("a request body timed out: %r", exchange)
            exchange.body_failed(error)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.debug("the peer left mid-body: %r", error)
            exchange.fail(PeerGone("the peer closed the connection mid-body"))
        finally:
            self._wait = None
            if exchange.watch is WATCH_READER:
                exchange.watch = NO_WATCH
                connection.watch_later()


class ResponseOutput(DirectOutput):
    """The output of a ``Streamable``'s stream: each write goes to the connection at
    once, framed as the response body, in the writer's own task, and returns once the
    socket took the bytes. The queue of ``Writable`` stays empty; its rules hold:

    ``close_write()`` ends the response on the wire at once (the handler may still read
    the request body), and so does ``close_write_nowait()`` from any task (a write
    blocked meanwhile raises ``trio.ClosedResourceError``); ``close_write(error)`` cuts
    the response at once. A write cancelled part-way (or timed out) cuts the connection:
    the next write raises ``trio.BrokenResourceError``.
    """

    def __init__(self, connection: ServerConnection, exchange: H1Exchange) -> None:
        super().__init__()
        self._connection = connection
        self._exchange = exchange

    async def write(self, data: BytesLike) -> None:
        """Send ``data`` as the next piece of the response body; a checkpoint.

        Raises ``trio.ClosedResourceError`` after ``close_write`` (also for a write it
        interrupted), ``trio.BrokenResourceError`` once the exchange failed, the peer
        left or a write was cut part-way, ``duplex.Timeout`` if the peer takes nothing
        within the write timeout, and ``trio.BusyResourceError`` if another task writes.
        """
        # (Writable's _enter_write_side and _check_writable, inlined: this runs once a
        # chunk.)
        if self._writing:
            raise trio.BusyResourceError("another task is already writing to this body")
        self._writing = True
        try:
            if self._write_closed or self._read_closed:
                self._check_writable()
            if not data:
                await checkpoint()
                return
            chunk = data if type(data) is bytes else bytes(data)
            connection = self._connection
            yields = connection.transport.yields
            try:
                await connection.transport.send_pieces(connection.framer.frame(chunk))
            except trio.ClosedResourceError:
                if not self._write_closed:
                    raise
                # Closed from another task while the socket was full.
                if self._write_error is None:
                    self._end_soon()
                raise trio.ClosedResourceError(
                    "the response was closed while being written"
                ) from None
            if self._write_closed and self._write_error is None:
                self._end_soon()  # closed from another task while this went out
            elif connection.transport.yields == yields:
                await cancel_shielded_checkpoint()  # every write is a checkpoint
        finally:
            self._writing = False

    send_all = write

    async def wait_send_all_might_not_block(self) -> None:
        """Return when the socket has room for more; a checkpoint.

        Raises ``trio.ClosedResourceError`` after ``close_write`` and
        ``trio.BusyResourceError`` while another task writes."""
        self._enter_write_side()
        try:
            await checkpoint_if_cancelled()
            if self._write_closed:
                raise trio.ClosedResourceError("this body was closed for writing")
            if self._read_closed:
                await cancel_shielded_checkpoint()
                return
            with contextlib.suppress(trio.ClosedResourceError):
                await self._connection.transport.wait_writable()
            if self._write_closed:
                if self._write_error is None:
                    self._end_soon()  # closed from another task while this waited
                raise trio.ClosedResourceError("this body was closed for writing")
        finally:
            self._writing = False

    async def close_write(self, error: BaseException | None = None) -> None:
        """End the response at once: on the wire, or (with ``error``) by cutting it.

        Idempotent; a checkpoint. Raises ``trio.BusyResourceError`` (without ``error``)
        while another task writes."""
        if error is not None or self._write_closed:
            self.close_write_nowait(error)
            await checkpoint()
            return
        if self._writing:
            raise trio.BusyResourceError("another task is writing to this body")
        self._writing = True
        try:
            self._write_closed = True
            await checkpoint_if_cancelled()
            yields = self._connection.transport.yields
            await self._end()
            if self._connection.transport.yields == yields:
                await cancel_shielded_checkpoint()
        finally:
            self._writing = False

    def close_write_nowait(self, error: BaseException | None = None) -> None:
        """Close for writing from any task: with ``error`` the response is cut now;
        without, it is ended now if the socket takes the end at once, else as soon as
        it can be sent. A write blocked meanwhile raises ``trio.ClosedResourceError``."""
        if self._write_closed:
            return
        super().close_write_nowait(error)
        connection = self._connection
        if error is not None:
            connection.transport.cut()
        if self._writing:
            connection.transport.abort_send()  # the writer ends (or has cut) the response
        elif error is None:
            self._end_soon()

    def _end_soon(self) -> None:
        """End the response now if the socket takes its end at once, else from a task
        of the server's as soon as it can (nothing, if a cut write broke it)."""
        connection = self._connection
        if connection.transport.broken or connection.framer.response_ended:
            return
        pieces = connection.responder.ending(connection.framer)
        try:
            sent = connection.transport.write_nowait(pieces)
            if not sent:
                # (None: nothing went out yet; False: part of it is pending.)
                rest = pieces if sent is None else []
                done = connection.ending = trio.Event()
                connection.nursery.start_soon(_send_quietly, connection, rest, done)
        except (trio.BrokenResourceError, RuntimeError) as error:
            # The peer has gone, or the server is closing (its nursery takes no task):
            # closing never raises for that.
            log.debug("the end of a response could not be sent: %r", error)
            return
        self._exchange.drain_soon()

    async def _end(self) -> None:
        # Closing never raises for a peer that has gone (as an in-memory Writable's
        # close_write does not): the exchange learns of it anyway.
        try:
            await self._connection.end_response(self._exchange)
        except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
            log.debug("the end of a response could not be sent: %r", error)


async def _send_quietly(
    connection: ServerConnection, pieces: list[bytes], done: trio.Event
) -> None:
    """Send ``pieces`` (and what is pending) from a task of the server's, then set
    ``done`` (the connection waits for it before it closes): a peer that is gone by
    then is the exchange's business, not the server's."""
    try:
        await connection.transport.send_pieces(pieces)
    except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
        log.debug("the end of a response could not be sent: %r", error)
    finally:
        done.set()
