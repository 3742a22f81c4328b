"""Stream: two independent bodies merged into one IO-like, full-duplex object."""

from __future__ import annotations

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from ._body import BytesLike, Readable, Writable, check_max_bytes
from ._errors import IncompleteRead

__all__ = ["Stream"]

DEFAULT_READ_SIZE = 65536


class Stream(trio.abc.HalfCloseableStream):
    """Reads from ``input`` and writes to ``output``, like a socket.

    ``Stream(a, b)`` and ``Stream(b, a)`` over two ``Writable`` bodies are the two ends
    of an in-memory full-duplex pipe. ``input=None`` reads as an empty body;
    ``output=None`` makes writes raise ``trio.ClosedResourceError``.

    Bytes left over from a chunk stay buffered here for the next read, and a read of any
    kind that is cancelled loses none of them. Every async method is a checkpoint.
    """

    def __init__(self, input: Readable | None = None, output: Writable | None = None) -> None:
        self.input = input
        self.output = output
        self._buffer = bytearray()
        self._reading = False
        self._read_closed = False

    def __repr__(self) -> str:
        return f"<Stream input={self.input!r} output={self.output!r}>"

    # -- reading ----------------------------------------------------------------------

    def _enter_read(self) -> None:
        if self._reading:
            raise trio.BusyResourceError("another task is already reading this stream")
        if self._read_closed:
            raise trio.ClosedResourceError("this stream was closed for reading")
        self._reading = True

    async def _fill(self, max_bytes: int | None) -> bool:
        """Append the next chunk of input to the buffer; False at EOF."""
        if self.input is None:
            await checkpoint()
            return False
        chunk = await self.input.receive_some(max_bytes)
        self._buffer += chunk
        return bool(chunk)

    async def _take_buffered(self, n: int) -> bytes:
        await checkpoint_if_cancelled()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        await cancel_shielded_checkpoint()
        return data

    async def readpartial(self, max_bytes: int = DEFAULT_READ_SIZE) -> bytes:
        """Return between 1 and ``max_bytes`` bytes, or ``b""`` at EOF.

        Raises ``ValueError`` if ``max_bytes`` < 1, ``trio.ClosedResourceError`` after
        ``close_read``/``aclose``, and whatever the input raises (see ``Readable.read``).
        """
        # (receive_some's body, with _enter_read and _readpartial written out rather than
        # called: one coroutine less between the reader and its input on every read.)
        checked = check_max_bytes(max_bytes)
        if self._reading:
            raise trio.BusyResourceError("another task is already reading this stream")
        if self._read_closed:
            raise trio.ClosedResourceError("this stream was closed for reading")
        self._reading = True
        try:
            if self._buffer:
                return await self._take_buffered(len(self._buffer) if checked is None else checked)
            if self.input is None:
                await checkpoint()
                return b""
            return await self.input.receive_some(checked)
        finally:
            self._reading = False

    async def _readpartial(self, max_bytes: int | None) -> bytes:
        if self._buffer:
            return await self._take_buffered(len(self._buffer) if max_bytes is None else max_bytes)
        if self.input is None:
            await checkpoint()
            return b""
        return await self.input.receive_some(max_bytes)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """trio's name for ``readpartial``; ``None`` returns a whole chunk, unsplit."""
        checked = check_max_bytes(max_bytes)
        self._enter_read()
        try:
            return await self._readpartial(checked)
        finally:
            self._reading = False

    async def read(self, n: int = -1) -> bytes:
        """Return ``n`` bytes (fewer only at EOF); with ``n=-1``, everything up to EOF."""
        self._enter_read()
        try:
            if n < 0:
                while await self._fill(None):
                    pass
                return await self._take_buffered(len(self._buffer))
            while len(self._buffer) < n and await self._fill(n - len(self._buffer)):
                pass
            return await self._take_buffered(n)
        finally:
            self._reading = False

    async def read_exactly(self, n: int) -> bytes:
        """Return exactly ``n`` bytes.

        Raises ``duplex.IncompleteRead`` (an ``EOFError``) if the input ends first; its
        ``partial`` holds what arrived, which is no longer buffered.
        """
        data = await self.read(n)
        if len(data) < n:
            raise IncompleteRead(data, n)
        return data

    async def readline(self, limit: int = DEFAULT_READ_SIZE) -> bytes:
        """Return the next line, including its ``b"\\n"``; at EOF, what is left.

        Raises ``ValueError`` if no newline comes within ``limit`` bytes; the bytes stay
        buffered.
        """
        self._enter_read()
        try:
            searched = 0
            while True:
                index = self._buffer.find(b"\n", searched, limit)
                if index >= 0:
                    return await self._take_buffered(index + 1)
                if len(self._buffer) >= limit:
                    raise ValueError(f"no newline within {limit} bytes")
                searched = len(self._buffer)
                if not await self._fill(None):
                    return await self._take_buffered(len(self._buffer))
        finally:
            self._reading = False

    async def __anext__(self) -> bytes:
        """``async for chunk in stream``: ``readpartial()`` until EOF."""
        chunk = await self.readpartial()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    # -- writing ----------------------------------------------------------------------

    def _writable(self) -> Writable:
        if self.output is None:
            raise trio.ClosedResourceError("this stream has no output")
        return self.output

    async def write(self, data: BytesLike) -> None:
        """Write ``data`` to the output (see ``Writable.write`` for waiting and errors)."""
        output = self.output
        if output is None:
            await checkpoint()
            raise trio.ClosedResourceError("this stream has no output")
        await output.write(data)

    send_all = write

    async def flush(self) -> None:
        """A checkpoint that raises if the output is closed or broken.

        It does not wait for the reader: a ``Writable`` has no buffer of its own to push.
        """
        await checkpoint()
        output = self._writable()
        if output.write_closed:
            raise trio.ClosedResourceError("this stream was closed for writing")
        if output.read_closed:
            raise trio.BrokenResourceError("the reader closed the output")

    async def wait_send_all_might_not_block(self) -> None:
        """Return when a write might not block (see ``Writable``)."""
        if self.output is None:
            await checkpoint()
        await self._writable().wait_send_all_might_not_block()

    async def close_write(self) -> None:
        """Finish the output: the peer reads what is queued, then ``b""``. Idempotent."""
        if self.output is None:
            await checkpoint()
            return
        await self.output.close_write()

    async def send_eof(self) -> None:
        """trio's name for ``close_write``."""
        await self.close_write()

    # -- closing ----------------------------------------------------------------------

    async def close_read(self) -> None:
        """Give up reading: the input is closed as its reader, buffered bytes dropped."""
        self._read_closed = True
        self._buffer.clear()
        if self.input is None:
            await checkpoint()
        else:
            await self.input.aclose()

    async def aclose(self) -> None:
        """Close the input as its reader and end the output cleanly.

        The peer reads what is queued, then ``b""``; a write blocked in another task
        raises ``trio.ClosedResourceError``. Idempotent; closes both even if cancelled.
        """
        try:
            await self.close_read()
        finally:
            if self.output is not None:
                self.output.close_write_nowait()
