"""The bodies of an HTTP/2 stream: the request body, fed by DATA frames and read by
whoever reads it, and a ``Streamable``'s output, sent as DATA from the writer's task.

Flow control is the request body's back-pressure: the bytes of a DATA frame are given
back to the peer's window (WINDOW_UPDATE) only once the handler has read them, so a
stream buffers at most its initial window. Both keep DESIGN §1 like every body.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import trio
from trio.lowlevel import (
    Abort,
    Task,
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from ..._body import BytesLike, Readable, Writable
from ..._errors import Timeout

if TYPE_CHECKING:
    from ._exchange import H2Exchange

__all__ = ["StreamBody", "StreamOutput"]

log = logging.getLogger("duplex.server")


class StreamBody(Readable):
    """``request.body`` of a stream: the DATA frames received and not read yet.

    A read waits at most ``timeout`` seconds for more (then the stream is answered 408,
    or reset); a stream the peer resets makes reads raise ``trio.BrokenResourceError``.
    """

    __slots__ = (
        "_chunks",
        "_closed",
        "_ended",
        "_error",
        "_exchange",
        "_length",
        "_reader",
        "timeout",
    )

    def __init__(self, exchange: H2Exchange | None, length: int | None, timeout: float | None):
        self._exchange = exchange
        self._length = length
        #: Longest wait for more of the body (None: no limit).
        self.timeout = timeout
        # (data, bytes of the frame's flow-controlled size not yet given back)
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._ended = False
        self._closed = False
        self._error: BaseException | None = None
        self._reader: Task | None = None

    def bind(self, exchange: H2Exchange) -> None:
        """Belong to ``exchange`` (made after its body)."""
        self._exchange = exchange

    def __repr__(self) -> str:
        return f"<stream body length={self._length} ended={self._ended}>"

    @property
    def length(self) -> int | None:
        return self._length

    @property
    def is_empty(self) -> bool:
        return self._closed or self._error is not None or (self._ended and not self._chunks)

    # -- the connection's side ----------------------------------------------------------

    def feed(self, data: bytes, flow_size: int) -> None:
        """DATA arrived (``flow_size``: its flow-controlled size, padding included)."""
        if self._closed or self._error is not None:
            self._give_back(flow_size)  # nobody reads it: the window stays open
            return
        if data:
            self._chunks.append((data, flow_size))
        else:
            self._give_back(flow_size)
        self._wake()

    def end(self) -> None:
        """The peer ended the stream (END_STREAM)."""
        self._ended = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """Later reads raise ``trio.BrokenResourceError`` from ``error``."""
        if self._error is None and not (self._ended and not self._chunks):
            self._error = error
            self._drop()
        self._wake()

    def close_read_nowait(self, error: BaseException | None = None) -> None:
        """The reader gives up: later reads raise ``trio.ClosedResourceError``, and what
        is queued (or comes later) goes back to the peer's window unread."""
        self._closed = True
        self._pushback = b""
        self._drop()
        self._wake()

    async def aclose(self, error: BaseException | None = None) -> None:
        self.close_read_nowait(error)
        await checkpoint()

    def _drop(self) -> None:
        size = sum(flow_size for _, flow_size in self._chunks)
        self._chunks.clear()
        self._give_back(size)

    def _give_back(self, size: int) -> None:
        if size and self._exchange is not None:
            self._exchange.connection.acknowledge(self._exchange, size)

    def _wake(self) -> None:
        task = self._reader
        if task is not None:
            self._reader = None
            reschedule(task)

    # -- the reader's side --------------------------------------------------------------

    async def _receive(self, max_bytes: int | None) -> bytes:
        await checkpoint_if_cancelled()
        blocked = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this body was closed by its reader")
            if self._error is not None:
                error = trio.BrokenResourceError("the request body broke")
                error.__cause__ = self._error
                raise error
            if self._chunks:
                data = self._take(max_bytes)
                break
            if self._ended:
                data = b""
                if self._exchange is not None and not self._exchange.request_complete:
                    self._exchange.complete_request()
                break
            blocked = True
            await self._wait()
        if not blocked:
            await cancel_shielded_checkpoint()
        return data

    def _take(self, max_bytes: int | None) -> bytes:
        data, flow_size = self._chunks[0]
        if max_bytes is None or max_bytes >= len(data):
            self._chunks.popleft()
            self._give_back(flow_size)  # the data and the frame's padding
            return data
        self._chunks[0] = (data[max_bytes:], flow_size - max_bytes)
        self._give_back(max_bytes)
        return data[:max_bytes]

    async def _wait(self) -> None:
        """Wait for news (DATA, the end, an error), at most ``timeout`` seconds."""
        self._reader = current_task()

        def abort(_: object) -> Abort:
            self._reader = None
            return Abort.SUCCEEDED

        timeout = self.timeout
        if timeout is None:
            await wait_task_rescheduled(abort)
            return
        with trio.move_on_after(timeout) as scope:
            await wait_task_rescheduled(abort)
        if scope.cancelled_caught and self._exchange is not None:
            log.debug("a request body timed out: %r", self._exchange)
            self._exchange.body_failed(Timeout("read", timeout))


class StreamOutput(Writable):
    """The output of a ``Streamable``'s stream (and of a stream taken over): each write
    goes out as DATA at once, in the writer's own task, as the peer's window allows,
    and returns once the socket took it. The queue of ``Writable`` stays empty.

    ``close_write()`` ends the stream (END_STREAM) at once while the handler may still
    read, and so does ``close_write_nowait()`` from any task; ``close_write(error)``
    resets the stream. A write waiting for the window is woken by a close from another
    task with ``trio.ClosedResourceError``.
    """

    def __init__(self, exchange: H2Exchange) -> None:
        super().__init__(0)
        self._exchange = exchange

    @property
    def error(self) -> BaseException | None:
        """The error the output was closed with, if any."""
        return self._write_error

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
                except trio.ClosedResourceError:
                    if not self._write_closed:
                        raise
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
