"""A client's request body as HTTP/1.1's and HTTP/2's senders both stream it: chunk by
chunk from a ``Readable`` or an async iterable, a producer's failure told apart from
the connection's, and a ``Readable`` not sent whole closed with the reason."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

import trio

from .._body import Readable, Writable

__all__ = ["close_unsent", "send_chunks"]

log = logging.getLogger("duplex.client")


async def _chunks(body: Readable | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if type(body) is Writable:
        # What another task has queued is taken without a checkpoint of its own (the
        # send that follows is one): a chunk costs no extra pass through the scheduler.
        while (chunk := body._take_nowait()) or (chunk := await body.read()):
            yield chunk
    elif isinstance(body, Readable):
        while chunk := await body.read():
            yield chunk
    else:
        async for chunk in body:
            if chunk:
                yield bytes(chunk)


async def send_chunks(
    body: Readable | AsyncIterable[bytes], send: Callable[[bytes], Awaitable[None]]
) -> Exception | None:
    """Send every chunk of ``body`` with ``send``, to its end: None. If the body's
    producer raises, the exception it raised (logged at DEBUG), having sent no more.
    What ``send`` raises propagates."""
    chunks = _chunks(body)
    while True:
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return None
        except Exception as error:
            log.debug("request body failed: %r", error)
            return error
        await send(chunk)


async def close_unsent(
    body: object, failure: BaseException | None, cancelled: bool, error: BaseException | None
) -> None:
    """Close a ``Readable`` body that was not sent whole (``failure``, or the sender
    ``cancelled``), with ``failure`` (else the exchange's ``error``) as its writer's
    ``__cause__``; shielded, so that a cancelled sender still closes it."""
    if isinstance(body, Readable) and (failure is not None or cancelled):
        with trio.CancelScope(shield=True):
            await body.aclose(failure or error)
