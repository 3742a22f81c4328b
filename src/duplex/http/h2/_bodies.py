"""The bodies of an HTTP/2 stream: the request body, fed by DATA frames and read by
whoever reads it, and a ``Streamable``'s output, sent as DATA from the writer's task.

Flow control is the request body's back-pressure: the bytes of a DATA frame are given
back to the peer's window (WINDOW_UPDATE) only once the handler has read them, so a
stream buffers at most its initial window. Both keep DESIGN §1 like every body.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from ..._body import BytesLike, Writable
from ..._errors import Timeout
from .._respond import DirectOutput

if TYPE_CHECKING:
    from ._exchange import H2Exchange

__all__ = ["StreamBody", "StreamOutput"]

log = logging.getLogger("duplex.server")


class StreamBody(Writable):
    """``request.body`` of a stream: a ``Writable`` the connection feeds with the DATA
    frames it receives (without waiting: the flow-control window bounds it), read by
    whoever reads it.

    What the reader takes goes back to the peer's window, and so does what it will
    never take (the body closed or broken). A read waits at most ``timeout`` seconds for
    more (then the stream is answered 408, or reset); a stream the peer resets makes
    reads raise ``trio.BrokenResourceError``.
    """

    def __init__(self, length: int | None, timeout: float | None) -> None:
        super().__init__(0, length)
        #: Longest wait for more of the body (None: no limit).
        self.timeout = timeout
        self._exchange: H2Exchange | None = None

    def bind(self, exchange: H2Exchange) -> None:
        """Belong to ``exchange`` (made after its body)."""
        self._exchange = exchange

    def unbind(self) -> None:
        """The stream is gone (nothing more is fed to the body): let go of its exchange,
        which holds the body. A body read to its end has let go already; one that was
        not (a stream handed over to a WebSocket, a body left unread) would otherwise
        stay with its exchange in a cycle until the garbage collector undid it."""
        self._exchange = None

    def __repr__(self) -> str:
        return f"<stream body length={self.length} queued={self.queued}>"

    # -- the connection's side ----------------------------------------------------------

    def feed(self, data: bytes, flow_size: int) -> None:
        """DATA arrived (``flow_size``: its flow-controlled size, padding included)."""
        if self._read_closed or self._write_error is not None:
            self._give_back(flow_size)  # nobody reads it: the window stays open
            return
        self._give_back(flow_size - len(data))  # the padding, at once
        if data:
            self._queue.append(data)
            self._queued += len(data)
            self._wake_reader()

    def fail(self, error: BaseException) -> None:
        """Later reads raise ``trio.BrokenResourceError`` from ``error`` (unless the
        body had ended)."""
        self._give_back(self._queued if not self._write_closed else 0)
        self.close_write_nowait(error)

    def close_read_nowait(self, error: BaseException | None = None) -> None:
        """The reader gives up: later reads raise ``trio.ClosedResourceError``, and what
        is queued (or comes later) goes back to the peer's window unread."""
        self._give_back(self._queued)
        super().close_read_nowait(error)
        if self._exchange is not None:
            self._exchange.stop_request()

    def _give_back(self, size: int) -> None:
        if size > 0 and self._exchange is not None:
            self._exchange.connection.acknowledge(self._exchange, size)

    # -- the reader's side --------------------------------------------------------------

    async def _receive(self, max_bytes: int | None) -> bytes:
        exchange = self._exchange
        try:
            data = await super()._receive(max_bytes)
        except trio.BrokenResourceError:
            if exchange is not None and exchange.failed:
                # The reader learns of the failure first, then its exchange ends (as
                # over HTTP/1.1, where a read finds it): the server answers it.
                exchange.cancel()
            raise
        if not data and exchange is not None:
            if not exchange.request_complete:
                exchange.complete_request()
            # (Read whole, the body needs its exchange no more; the exchange holds it:
            # a cycle, left to the garbage collector, otherwise.)
            self._exchange = None
        return data

    def _take(self, max_bytes: int | None) -> bytes:
        data = super()._take(max_bytes)
        self._give_back(len(data))
        return data

    async def _park(self, reader: bool) -> None:
        timeout = self.timeout
        if not reader or timeout is None:
            await super()._park(reader)
            return
        with trio.move_on_after(timeout) as scope:
            await super()._park(reader)
        if scope.cancelled_caught and self._exchange is not None:
            log.debug("a request body timed out: %r", self._exchange)
            self._exchange.body_failed(Timeout("read", timeout))


class StreamOutput(DirectOutput):
    """The output of a ``Streamable``'s stream (and of a stream taken over): each write
    goes out as DATA at once, in the writer's own task, as the peer's window allows,
    and returns once the socket took it. The queue of ``Writable`` stays empty.

    ``close_write()`` ends the stream (END_STREAM) at once while the handler may still
    read, and so does ``close_write_nowait()`` from any task; ``close_write(error)``
    resets the stream. A write waiting for the window is woken by a close from another
    task with ``trio.ClosedResourceError``.
    """

    def __init__(self, exchange: H2Exchange) -> None:
        super().__init__()
        self._exchange = exchange

    async def write(self, data: BytesLike) -> None:
        """Send ``data`` as the stream's next DATA; a checkpoint.

        Raises ``trio.ClosedResourceError`` after ``close_write`` (also for a write it
        interrupted), ``trio.BrokenResourceError`` once the stream or the connection is
        gone, ``duplex.Timeout`` if the peer opens no window within the write timeout,
        and ``trio.BusyResourceError`` if another task writes.
        """
        self._enter_write_side()
        try:
            self._check_writable()
            await checkpoint_if_cancelled()
            if data:
                try:
                    await self._exchange.send(data if type(data) is bytes else bytes(data))
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    if not self._write_closed:
                        raise  # (closed from another task: said below)
                if self._write_closed:
                    # Closed from another task while this waited or went out.
                    if self._write_error is None:
                        self._exchange.end_soon()
                    raise trio.ClosedResourceError("the response was closed while being written")
            await cancel_shielded_checkpoint()
        finally:
            self._writing = False

    send_all = write

    async def wait_send_all_might_not_block(self) -> None:
        """Return when the stream's window has room; a checkpoint.

        Raises ``trio.ClosedResourceError`` after ``close_write``."""
        self._enter_write_side()
        try:
            await checkpoint_if_cancelled()
            if self._write_closed:
                raise trio.ClosedResourceError("this body was closed for writing")
            if not self._read_closed:
                await self._exchange.wait_window()
            if self._write_closed:
                if self._write_error is None:
                    self._exchange.end_soon()  # closed from another task while this waited
                raise trio.ClosedResourceError("this body was closed for writing")
        finally:
            self._writing = False

    async def close_write(self, error: BaseException | None = None) -> None:
        """End the stream at once (with ``error``: reset it). Idempotent; a checkpoint.
        Raises ``trio.BusyResourceError`` (without ``error``) while another task writes."""
        if error is None and self._writing and not self._write_closed:
            raise trio.BusyResourceError("another task is writing to this body")
        self.close_write_nowait(error)
        await checkpoint()

    def close_write_nowait(self, error: BaseException | None = None) -> None:
        """Close for writing from any task: the stream ends now (a write under way
        ends it once its DATA is out), or with ``error`` it is reset."""
        if self._write_closed:
            return
        super().close_write_nowait(error)
        exchange = self._exchange
        if error is not None:
            exchange.reset()
        elif self._writing:
            exchange.interrupt()  # the writer ends the stream
        else:
            exchange.end_soon()
