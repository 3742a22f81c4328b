"""Bodies: one-way sources of byte chunks.

``Readable`` is the reading contract every body keeps; ``Writable`` is a bounded pipe
(one task writes, one reads); ``Buffered`` replays bytes held in memory.
"""

from __future__ import annotations

import operator
from abc import abstractmethod
from collections import deque
from collections.abc import Iterable
from typing import TypeAlias

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

__all__ = ["Buffered", "BytesLike", "EmptyBody", "Readable", "Writable", "check_max_bytes"]

BytesLike: TypeAlias = bytes | bytearray | memoryview

DEFAULT_MAX_BUFFER_SIZE = 65536


def check_max_bytes(max_bytes: int | None) -> int | None:
    if max_bytes is None:
        return None
    max_bytes = operator.index(max_bytes)
    if max_bytes < 1:
        raise ValueError("max_bytes must be >= 1")
    return max_bytes


def _broken(message: str, cause: BaseException | None) -> trio.BrokenResourceError:
    error = trio.BrokenResourceError(message)
    error.__cause__ = cause
    return error


class Readable(trio.abc.ReceiveStream):
    """A one-way source of byte chunks, read by one task at a time.

    Subclasses implement ``_receive`` and ``aclose``; everything else follows from them.
    Every async method is a trio checkpoint, and a cancelled read takes nothing.
    """

    _reading = False
    # What a cancelled join() had read, given back to the next read.
    _pushback = b""

    @property
    def length(self) -> int | None:
        """The total number of bytes this body will produce, if known in advance."""
        return None

    @property
    def is_empty(self) -> bool:
        """True when no more data will come: the next read returns ``b""`` or raises."""
        return False

    @abstractmethod
    async def _receive(self, max_bytes: int | None) -> bytes:
        """The next chunk, or its first ``max_bytes`` (keeping the rest); ``b""`` at EOF."""

    async def read(self) -> bytes:
        """Return the next non-empty chunk, or ``b""`` at the end (and forever after).

        Raises ``trio.ClosedResourceError`` once this reader has closed the body,
        ``trio.BrokenResourceError`` if the producer failed (its error as ``__cause__``)
        and ``trio.BusyResourceError`` if another task is reading.
        """
        # (The guard is written out here and in receive_some rather than called: one
        # coroutine less between the reader and the body on every read.)
        if self._reading:
            raise trio.BusyResourceError("another task is already reading this body")
        self._reading = True
        try:
            if self._pushback:
                return await self._take_pushback(None)
            return await self._receive(None)
        finally:
            self._reading = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Like ``read``, but returns at most ``max_bytes``; the rest of a chunk waits."""
        if max_bytes is not None:
            max_bytes = check_max_bytes(max_bytes)
        if self._reading:
            raise trio.BusyResourceError("another task is already reading this body")
        self._reading = True
        try:
            if self._pushback:
                return await self._take_pushback(max_bytes)
            return await self._receive(max_bytes)
        finally:
            self._reading = False

    async def _take_pushback(self, max_bytes: int | None) -> bytes:
        await checkpoint_if_cancelled()
        data = self._pushback if max_bytes is None else self._pushback[:max_bytes]
        self._pushback = self._pushback[len(data) :]
        await cancel_shielded_checkpoint()
        return data

    async def __anext__(self) -> bytes:
        """``async for chunk in body``: the chunks of ``read()`` until the end."""
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def join(self) -> bytes:
        """Read to the end and return everything as one ``bytes``.

        If cancelled (or failing) partway, what it had read is given back: the next
        read returns it first, so nothing is lost.
        """
        chunks: list[bytes] = []
        try:
            async for chunk in self:
                chunks.append(chunk)
        except BaseException:
            self._pushback = b"".join(chunks) + self._pushback
            raise
        return b"".join(chunks)

    async def discard(self) -> None:
        """Read to the end, dropping the data."""
        async for _ in self:
            pass

    @abstractmethod
    async def aclose(self, error: BaseException | None = None) -> None:
        """The reader gives up: later reads raise ``trio.ClosedResourceError``.

        ``error`` tells the producer why (it becomes the ``__cause__`` of the
        ``trio.BrokenResourceError`` its next write raises). Idempotent, a checkpoint,
        and it closes even when cancelled.
        """


class EmptyBody(Readable):
    """A body of length 0, complete from the start (a request without a body): reads
    give ``b""`` until the reader closes it."""

    __slots__ = ("_closed",)

    def __init__(self) -> None:
        self._closed = False

    @property
    def length(self) -> int:
        return 0

    @property
    def is_empty(self) -> bool:
        return True

    async def _receive(self, max_bytes: int | None) -> bytes:
        await checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("this body was closed by its reader")
        await cancel_shielded_checkpoint()
        return b""

    def close_read_nowait(self, error: BaseException | None = None) -> None:
        """``aclose`` without the checkpoint, for synchronous teardown code."""
        self._closed = True

    def fail(self, error: BaseException) -> None:
        """Nothing: an empty body has nothing left to break."""

    async def aclose(self, error: BaseException | None = None) -> None:
        self._closed = True
        await checkpoint()


class Writable(Readable, trio.abc.SendStream):
    """A bounded pipe: one task writes chunks, one task reads them.

    ``write`` queues its data, then waits until at most ``max_buffer_size`` bytes remain
    queued (``0``: until the reader has taken everything). Each non-empty write comes out
    of ``read`` as one chunk. ``close_write`` ends the body for the reader; ``aclose``
    (inherited from ``Readable``) is the reader giving up.
    """

    def __init__(
        self, max_buffer_size: int = DEFAULT_MAX_BUFFER_SIZE, length: int | None = None
    ) -> None:
        if max_buffer_size < 0:
            raise ValueError("max_buffer_size must be >= 0")
        self.max_buffer_size = max_buffer_size
        self._length = length
        self._queue: deque[bytes] = deque()
        self._offset = 0  # bytes of the head chunk already read by receive_some
        self._queued = 0  # bytes in the queue not yet read
        self._writing = False
        self._write_closed = False
        self._write_error: BaseException | None = None
        self._read_closed = False
        self._read_error: BaseException | None = None
        self._reader_task: Task | None = None
        self._writer_task: Task | None = None

    def __repr__(self) -> str:
        return (
            f"<Writable queued={self._queued} max_buffer_size={self.max_buffer_size} "
            f"write_closed={self._write_closed} read_closed={self._read_closed}>"
        )

    @property
    def length(self) -> int | None:
        return self._length

    @property
    def is_empty(self) -> bool:
        return self._read_closed or (self._write_closed and not self._queue)

    @property
    def queued(self) -> int:
        """How many bytes are queued and not yet read."""
        return self._queued

    @property
    def write_closed(self) -> bool:
        """True once the producer has finished (``close_write``)."""
        return self._write_closed

    @property
    def read_closed(self) -> bool:
        """True once the reader has given up (``aclose``)."""
        return self._read_closed

    # -- parking: at most one reader and one writer-side task wait at any time --------

    async def _park(self, reader: bool) -> None:
        task = current_task()
        if reader:
            self._reader_task = task
        else:
            self._writer_task = task

        def abort(_: object) -> Abort:
            if reader:
                self._reader_task = None
            else:
                self._writer_task = None
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def _wake_reader(self) -> None:
        task = self._reader_task
        if task is not None:
            self._reader_task = None
            reschedule(task)

    def _wake_writer(self) -> None:
        task = self._writer_task
        if task is not None:
            self._writer_task = None
            reschedule(task)

    # -- the reader's side ------------------------------------------------------------

    async def _receive(self, max_bytes: int | None) -> bytes:
        await checkpoint_if_cancelled()
        blocked = False
        while True:
            if self._read_closed:
                raise trio.ClosedResourceError("this body was closed by its reader")
            if self._write_error is not None:
                raise _broken("the writer closed the body with an error", self._write_error)
            if self._queue:
                data = self._take(max_bytes)
                break
            if self._write_closed:
                data = b""
                break
            # A reader waiting on an empty queue is what wait_send_all_might_not_block
            # waits for.
            self._wake_writer()
            blocked = True
            await self._park(reader=True)
        if not blocked:
            await cancel_shielded_checkpoint()
        return data

    def _take_nowait(self) -> bytes | None:
        """The next chunk, if ``read()`` would return one now without waiting; else None
        (nothing queued, the body ended or failed, or another task reads: ``read()``
        says which). No checkpoint: for duplex's own senders, whose send is one."""
        if self._reading or self._pushback or self._read_closed or self._write_error:
            return None
        return self._take(None) if self._queue else None

    def _take(self, max_bytes: int | None) -> bytes:
        head = self._queue[0]
        start = self._offset
        end = len(head) if max_bytes is None else min(len(head), start + max_bytes)
        data = head if start == 0 and end == len(head) else bytes(memoryview(head)[start:end])
        if end == len(head):
            self._queue.popleft()
            self._offset = 0
        else:
            self._offset = end
        self._queued -= len(data)
        self._wake_writer()
        return data

    async def aclose(self, error: BaseException | None = None) -> None:
        self.close_read_nowait(error)
        await checkpoint()

    def close_read_nowait(self, error: BaseException | None = None) -> None:
        """``aclose`` without the checkpoint, for synchronous teardown code."""
        if self._read_closed:
            return
        self._read_closed = True
        self._read_error = error
        self._pushback = b""
        self._queue.clear()
        self._queued = 0
        self._offset = 0
        self._wake_reader()
        self._wake_writer()

    # -- the producer's side ----------------------------------------------------------

    def _enter_write_side(self) -> None:
        if self._writing:
            raise trio.BusyResourceError("another task is already writing to this body")
        self._writing = True

    def _check_writable(self) -> None:
        if self._write_closed:
            raise trio.ClosedResourceError("this body was closed for writing")
        if self._read_closed:
            raise _broken("the reader closed the body", self._read_error)

    async def write(self, data: BytesLike) -> None:
        """Queue ``data``, then wait until at most ``max_buffer_size`` bytes are queued.

        Raises ``trio.ClosedResourceError`` after ``close_write`` (even if the reader has
        closed too), ``trio.BrokenResourceError`` once the reader has closed (its error as
        ``__cause__``; also for a write blocked at that moment), and
        ``trio.BusyResourceError`` if another task is writing; these take precedence over
        a pending cancellation. If cancelled while waiting, the data stays queued.
        """
        self._enter_write_side()
        try:
            # A broken or closed body says so even to a cancelled writer: a task whose
            # peer went away learns why, not just that it was cancelled.
            self._check_writable()
            await checkpoint_if_cancelled()
            if data:
                chunk = data if type(data) is bytes else bytes(data)
                self._queue.append(chunk)
                self._queued += len(chunk)
                self._wake_reader()
            blocked = False
            while self._queued > self.max_buffer_size:
                blocked = True
                await self._park(reader=False)
                self._check_writable()
            if not blocked:
                await cancel_shielded_checkpoint()
        finally:
            self._writing = False

    send_all = write

    async def wait_send_all_might_not_block(self) -> None:
        """Return when fewer than ``max_buffer_size`` bytes are queued, a reader waits on
        an empty queue, or the reader has closed.

        Raises ``trio.ClosedResourceError`` after ``close_write``.
        """
        self._enter_write_side()
        try:
            await checkpoint_if_cancelled()
            if self._write_closed:
                raise trio.ClosedResourceError("this body was closed for writing")
            blocked = False
            while not (
                self._queued < self.max_buffer_size
                or self._reader_task is not None
                or self._read_closed
            ):
                blocked = True
                await self._park(reader=False)
                if self._write_closed:
                    raise trio.ClosedResourceError("this body was closed for writing")
            if not blocked:
                await cancel_shielded_checkpoint()
        finally:
            self._writing = False

    async def wait_reader(self) -> None:
        """Return once the reader waits on an empty queue or has closed.

        For producers that make data only on demand (an HTTP server sends
        ``100 Continue`` only when the handler starts reading the body). Raises
        ``trio.ClosedResourceError`` after ``close_write``.
        """
        self._enter_write_side()
        try:
            await checkpoint_if_cancelled()
            blocked = False
            while not (self._reader_task is not None and not self._queue) and not self._read_closed:
                if self._write_closed:
                    raise trio.ClosedResourceError("this body was closed for writing")
                blocked = True
                await self._park(reader=False)
            if not blocked:
                await cancel_shielded_checkpoint()
        finally:
            self._writing = False

    async def close_write(self, error: BaseException | None = None) -> None:
        """Finish the body: the reader drains what is queued, then reads ``b""``.

        With ``error``, queued data is discarded and the reader's next read raises
        ``trio.BrokenResourceError`` with ``error`` as its ``__cause__``; that form works
        from any task and wakes a blocked writer with ``trio.ClosedResourceError``.
        Without it, a write pending in another task raises ``trio.BusyResourceError``.
        Idempotent: only the first call has an effect. A checkpoint.
        """
        if error is None and self._writing:
            raise trio.BusyResourceError("another task is writing to this body")
        self.close_write_nowait(error)
        await checkpoint()

    async def send_eof(self) -> None:
        """trio's name for ``close_write()``."""
        await self.close_write()

    def close_write_nowait(self, error: BaseException | None = None) -> None:
        """Close for writing from any task, waking a blocked writer. No checkpoint."""
        if self._write_closed:
            return
        self._write_closed = True
        if error is not None:
            self._write_error = error
            self._queue.clear()
            self._queued = 0
            self._offset = 0
        self._wake_reader()
        self._wake_writer()


class Buffered(Readable):
    """A body over bytes held in memory: one chunk, or a list of chunks kept as given.

    Its length is known, and ``rewind()`` starts it over (and reopens it), so it can be
    sent more than once.
    """

    def __init__(self, data: BytesLike | Iterable[BytesLike] = b"") -> None:
        if isinstance(data, bytes | bytearray | memoryview):
            chunks = [bytes(data)]
        else:
            chunks = [bytes(chunk) for chunk in data]
        self._chunks = [chunk for chunk in chunks if chunk]
        self._length = sum(len(chunk) for chunk in self._chunks)
        self._index = 0
        self._offset = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"<Buffered length={self._length} chunks={len(self._chunks)}>"

    @property
    def chunks(self) -> list[bytes]:
        """The chunks this body holds, without the empty ones."""
        return list(self._chunks)

    @property
    def length(self) -> int:
        return self._length

    @property
    def is_empty(self) -> bool:
        return self._closed or self._index >= len(self._chunks)

    def rewind(self) -> None:
        """Start over from the first byte, reopening the body if its reader closed it."""
        self._index = 0
        self._offset = 0
        self._closed = False
        self._pushback = b""

    async def _receive(self, max_bytes: int | None) -> bytes:
        await checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("this body was closed by its reader")
        data = b""
        if self._index < len(self._chunks):
            chunk = self._chunks[self._index]
            start = self._offset
            end = len(chunk) if max_bytes is None else min(len(chunk), start + max_bytes)
            data = chunk if start == 0 and end == len(chunk) else chunk[start:end]
            if end == len(chunk):
                self._index += 1
                self._offset = 0
            else:
                self._offset = end
        await cancel_shielded_checkpoint()
        return data

    async def aclose(self, error: BaseException | None = None) -> None:
        self._closed = True
        self._pushback = b""
        await checkpoint()
