"""What every protocol's responder shares: running the handler, the body kinds of a
``Response`` as a sequence of chunks, and whose fault a failed response is (the peer's,
logged at DEBUG, or the handler's, logged as an error).

The protocols differ only in how a chunk goes on the wire (HTTP/1.1 frames it on the
connection, HTTP/2 sends it as DATA on its stream): that is the ``send`` they pass.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

import trio

from .._body import Readable, Writable
from .._errors import ProtocolError, Timeout
from .._stream import Stream
from ._exchange import PeerGone
from ._models import Request, Response, Streamable

if TYPE_CHECKING:
    from ._exchange import Exchange
    from ._takeover import ResponseControl

__all__ = [
    "NO_BODY_STATUSES",
    "PEER_ERRORS",
    "REASONS",
    "DirectOutput",
    "ResponseBodyFailed",
    "body_error",
    "body_length",
    "content_length",
    "finish_takeover",
    "handler_response",
    "run_streamable",
    "send_body",
    "send_iterable",
    "send_readable",
    "why_failed",
]

log = logging.getLogger("duplex.server")

#: Statuses whose responses carry no body.
NO_BODY_STATUSES = frozenset({204, 304})
#: The reason phrase of every status Python knows.
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
#: What the peer's own leaving (or slowness) looks like from a send: logged at DEBUG.
PEER_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, Timeout)


class DirectOutput(Writable):
    """A ``Streamable``'s output whose writes go to the wire from the writer's own task,
    as its protocol sends them: the queue of ``Writable`` stays empty."""

    def __init__(self) -> None:
        super().__init__(0)

    @property
    def error(self) -> BaseException | None:
        """The error the output was closed with, if any."""
        return self._write_error


class ResponseBodyFailed(Exception):
    """The response body's producer failed (not the peer): the response is cut."""


async def handler_response(
    handler: Callable[[Request], Awaitable[object]], exchange: Exchange
) -> tuple[Response | None, bool]:
    """Run ``handler`` for the exchange's request: its response and False; a 500 and
    True if the handler failed (logged); None when the exchange broke under the
    handler (the peer's doing, which the connection answers)."""
    request = exchange.request
    try:
        response = await handler(request)
        if not isinstance(response, Response):
            raise TypeError(f"the handler returned {response!r}, not a duplex.Response")
    except Exception as error:
        if exchange.failed:
            log.debug("handler for %s stopped: %r", request.target, error)
            return None, False
        log.exception("handler failed for %s %s", request.method, request.target)
        return Response(500, body="Internal Server Error"), True
    return response, False


def why_failed(error: Exception, exchange: Exchange, client: object) -> BaseException:
    """Log a response that could not be finished, and return what the exchange fails
    with: the peer's leaving at DEBUG (``PeerGone``), the handler's or its body's
    failure as an error."""
    request = exchange.request
    if isinstance(error, ResponseBodyFailed):
        log.error(
            "the response body of %s %s failed: %r",
            request.method,
            request.target,
            error.__cause__,
            exc_info=error.__cause__,
        )
        return error
    if isinstance(error, PEER_ERRORS) and not (
        isinstance(error, ProtocolError) and error.status == 500
    ):
        log.debug("could not finish the response to %s: %r", client, error)
        return PeerGone("the peer went away")
    # (A response HTTP cannot carry, a body longer than its Content-Length, say, is a
    # ProtocolError with status 500: the handler's bug, not the peer leaving.)
    log.exception("response to %s %s failed", request.method, request.target, exc_info=error)
    return error


def body_length(response: Response) -> int | None:
    """The length of the response's body, for its head to announce: None when it is not
    known, for 204 and 304 (no body), and when trailers need a body of unknown length."""
    if response.status in NO_BODY_STATUSES or response.trailers:
        return None
    body = response.body
    if isinstance(body, bytes):
        return len(body)
    if isinstance(body, Readable):
        return body.length
    return None


def content_length(response: Response, headers: list[tuple[bytes, bytes]]) -> None:
    """Add the Content-Length of a body whose length is known (``body_length``) to
    ``headers``, unless they name one."""
    length = body_length(response)
    if length is not None and not any(name == b"content-length" for name, _ in headers):
        headers.append((b"content-length", b"%d" % length))


async def send_body(
    exchange: Exchange,
    body: Readable | AsyncIterable[bytes] | Streamable,
    send: Callable[[bytes], Awaitable[None]],
    output: Callable[[], Writable],
    *,
    no_body: bool,
) -> None:
    """Send a response body that streams, once its head is out: each chunk of a
    ``Readable`` or an async iterable with ``send``; a ``Streamable`` runs with
    ``Stream(request.body, output())``. With ``no_body`` (HEAD, 204, 304) nothing is
    sent, and a ``Readable`` is closed."""
    if isinstance(body, Readable):
        if no_body:
            await body.aclose()
        else:
            await send_readable(body, send)
    elif isinstance(body, Streamable):
        if not no_body:
            # The stream writes from this task, and reads the request body itself:
            # an echo is one task.
            stream_output = output()
            exchange.response_body = stream_output
            await run_streamable(body, Stream(exchange.request.body, stream_output))
    elif not no_body:
        await send_iterable(body, send)


async def send_readable(body: Readable, send: Callable[[bytes], Awaitable[None]]) -> None:
    """Send ``body``'s chunks with ``send`` until its end; the body is closed after."""
    try:
        while True:
            try:
                chunk = await body.read()
            except Exception as error:
                raise body_error(error)  # noqa: B904 (the cause is set there)
            if not chunk:
                break
            await send(chunk)
    finally:
        with trio.CancelScope(shield=True):
            await body.aclose()


async def send_iterable(
    body: AsyncIterable[bytes], send: Callable[[bytes], Awaitable[None]]
) -> None:
    """Send the chunks of an async iterable with ``send`` (empty ones are skipped)."""
    iterator = aiter(body)
    while True:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            break
        except Exception as error:
            raise body_error(error)  # noqa: B904 (the cause is set there)
        if chunk:
            await send(chunk)


def body_error(error: Exception) -> Exception:
    """What a response body's failure means: the peer's doing when the producer failed
    because the peer left (its error is one of trio's resource errors, or a timeout),
    else the handler's (``ResponseBodyFailed``, logged as an error)."""
    cause = error.__cause__ if isinstance(error, trio.BrokenResourceError) else error
    if isinstance(cause, PEER_ERRORS) or (cause is None and isinstance(error, PEER_ERRORS)):
        return error
    failed = ResponseBodyFailed("the response body failed")
    failed.__cause__ = cause
    return failed


async def run_streamable(body: Streamable, stream: Stream) -> None:
    """Run the user's ``fn(stream)``; the response ends when it returns. If it raises
    (logged here: at DEBUG when the peer's leaving made it fail), the output is closed
    with its error, and so is the stream's output if that closed with one: raises what
    the response fails with."""
    output = stream.output
    try:
        await body.fn(stream)
    except Exception as error:
        if isinstance(error, PEER_ERRORS):
            log.debug("streamable %r stopped: %r", body.fn, error)  # the peer, not a bug
        else:
            log.exception("streamable %r failed", body.fn)
        if output is not None:
            output.close_write_nowait(error)
        await stream.close_read()
        raise trio.BrokenResourceError("the streamable failed") from error
    await stream.aclose()
    closed_with = output.error if isinstance(output, DirectOutput) else None
    if closed_with is not None:
        # Its output closed with an error: whose, it says.
        raise body_error(
            closed_with if isinstance(closed_with, Exception) else Exception(closed_with)
        )


async def finish_takeover(control: ResponseControl, exchange: Exchange, *, ended: bool) -> None:
    """What follows a ``Takeover`` function that returned without detaching: a response
    it never began is answered 500; one it left unfinished (not ``ended``) is cut
    (``trio.BrokenResourceError``), as is one whose exchange failed before it began
    (its peer left: nobody is there to answer)."""
    if not exchange.head_started:
        if exchange.failed:
            raise trio.BrokenResourceError("the exchange failed before its response began")
        await control.start(500, {"content-type": "text/plain; charset=utf-8"})
        await control.write(b"the response ended before it began\n")
        await control.end()
    elif not ended:
        raise trio.BrokenResourceError("the response was left unfinished")
