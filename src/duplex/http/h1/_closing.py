"""How an HTTP/1.1 server connection closes without destroying its last answer.

Closing a socket with unread input makes the kernel send a reset, which can destroy the
response in flight; so the write side is shut first and what the peer still sends is
read and dropped, for a bounded time and size ("lingering close").
"""

from __future__ import annotations

import trio

from ..._errors import Timeout
from .._transport import Transport
from ._framing import error_response

__all__ = ["answer_and_close", "linger"]


async def linger(transport: Transport, *, seconds: float, max_size: int) -> None:
    """Shut the write side (once what is being sent has gone), then read and drop what
    the peer still sends, for ``seconds`` and ``max_size`` bytes at most, so that a
    client that writes its whole body before it reads (Python's ``http.client``)
    receives the response rather than a reset. The caller closes the transport."""
    with trio.move_on_after(seconds):
        try:
            await transport.send_eof()
            drained = 0
            while drained < max_size:
                data = await transport.read_some(max_bytes=65536)
                if not data:
                    break
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout):
            pass


async def answer_and_close(
    transport: Transport,
    status: int,
    message: str,
    *,
    seconds: float = 1.0,
    max_size: int = 65536,
) -> None:
    """Send an error response, then linger (``seconds``, ``max_size``) and close, so
    that the peer still reads it."""
    try:
        with trio.move_on_after(seconds):
            await transport.send_pieces([error_response(status, message)])
        await linger(transport, seconds=seconds, max_size=max_size)
    except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout):
        pass
    finally:
        await transport.aclose()
