"""How an HTTP/1.1 server connection closes without destroying its last answer.

Closing a socket with unread input makes the kernel send a reset, which can destroy the
response in flight; so the write side is shut first and what the peer still sends is
read and dropped, for a bounded time and size ("lingering close").
"""

from __future__ import annotations

import trio

from .._limits import Limits
from ._framing import error_response

__all__ = ["answer_and_close", "linger"]


async def linger(stream: trio.abc.Stream, limits: Limits) -> None:
    """Shut the write side, then read and drop what the peer still sends, for
    ``linger_timeout`` and ``max_linger_size`` at most, so that a client that writes its
    whole body before it reads (Python's ``http.client``) receives the response rather
    than a reset. The caller closes the stream."""
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
