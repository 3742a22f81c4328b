"""One HTTP/1.1 exchange on the client: the request going out (``RequestSender``) while
the response comes in (``ClientExchange``), each direction ending on its own, and the
connection given back to its pool only when both ended cleanly."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from math import inf
from typing import Any, Protocol, TypeAlias

import trio
from trio.lowlevel import TrioToken

from ..._body import Readable
from ..._errors import ProtocolError, Timeout
from .._limits import ClientLimits
from .._request_body import close_unsent, send_chunks
from ._client import HTTPConnection, client_error
from ._client_wire import EncodedRequest, ResponseHead

__all__ = ["ClientExchange", "Lease", "RequestContent"]

log = logging.getLogger("duplex.client")

#: What a request carries: bytes (sent with the head, or none at all), or a body
#: streamed from a task.
RequestContent: TypeAlias = "bytes | Readable | AsyncIterable[bytes] | None"

#: A request of at most this many bytes that cannot be written without waiting (TLS, or
#: the portable path) is written before the response is read: the socket buffers on both
#: sides hold it, so even a server that answers before it reads cannot deadlock with us.
#: A larger one goes out from a task while the response comes in.
_INLINE_SIZE = 65536

#: Response bytes read and dropped, once the request has gone out, before a response
#: its reader gave up is cut off: closing the socket at once, with response bytes
#: unread, would reset the connection and lose the end of the request on its way. This
#: much more than the request body carried: a server that echoes may still owe the echo
#: of all the request that the socket buffers on both sides held (Linux tunes them up to
#: several MiB each).
_LINGER_SIZE = 1 << 20

# Where the request is: going out, out whole, or cut short (the connection is not reused).
_SENDING, _SENT, _CUT = range(3)
# Where the response is: waiting for its head, in its body, ended, or given up by its
# reader while the request still goes out (read and dropped until the request ends).
_HEAD, _BODY, _ENDED, _DROPPED = range(4)


class Lease(Protocol):
    """The connection an exchange runs on, and the way to give it back."""

    @property
    def http(self) -> HTTPConnection: ...

    def release(self) -> None:
        """Both messages ended cleanly: the connection may carry another exchange."""

    def discard(self) -> None:
        """Close the connection: it must never be reused."""

    def detach(self) -> None:
        """Hold the connection outside the pool's count while the exchange lasts."""


class RequestSender:
    """The request side of an exchange: the head, and a body the socket takes at once,
    go out before the response is read; the rest of a larger body, and every streamed
    one, from a task. It tells its exchange how the request ended."""

    __slots__ = ("http", "length", "nursery", "scope", "size", "state")

    def __init__(self, exchange: ClientExchange) -> None:
        # (Not the exchange itself, which holds its sender: a task that sends is given
        # it, so that an exchange and its sender are no cycle for the garbage collector.)
        self.http = exchange.http
        #: Where the request is: going out, out whole, or cut short.
        self.state = _SENDING
        #: The sending task's scope, once there is one.
        self.scope: trio.CancelScope | None = None
        #: Where that task runs.
        self.nursery: trio.Nursery | None = None
        #: Bytes of request body handed to the connection so far.
        self.size = 0
        #: The request body's length as its head frames it; None when chunked.
        self.length: int | None = 0

    async def send(
        self,
        exchange: ClientExchange,
        request: EncodedRequest,
        body: RequestContent,
        nursery: trio.Nursery,
    ) -> None:
        """Send the request, or start sending it: returns once the response may be read.

        A request whose bytes the socket takes at once costs no task. Raises
        ``ProtocolError`` (500) for a body its head cannot frame (a Content-Length it
        does not match), and ``duplex.Timeout("write")`` for a small request the server
        never takes.
        """
        http = self.http
        self.length = request.length
        if body is not None and not isinstance(body, bytes):
            await http.send_pieces([request.data])
            self._start(nursery, self._send_body, exchange, body)
            return
        pieces = [request.data]
        size = len(body) if body else 0
        if self.length is None:
            if body:
                pieces += (b"%x\r\n" % size, body, b"\r\n")
            pieces.append(_LAST_CHUNK)
        elif size != self.length:
            raise _length_error(size, self.length)
        elif body:
            pieces.append(body)
        self.size = size
        sent = http.write_nowait(pieces)
        if sent:
            self.state = _SENT
        elif sent is None and (body is None or len(body) <= _INLINE_SIZE):
            await self._send_inline(pieces)
        else:
            # What the socket did not take goes out from a task while the caller reads
            # the response: a server that echoes as it reads never waits on us.
            self._start(nursery, self._send_rest, exchange, [] if sent is False else pieces)

    async def _send_inline(self, pieces: list[Any]) -> None:
        try:
            await self.http.send_pieces(pieces)
        except trio.BrokenResourceError as error:
            # The server may have answered early and stopped reading (a 413, say): its
            # response is still there to read; the connection is not reused.
            log.debug("request not sent in full: %r", error)
            self.state = _CUT
        else:
            self.state = _SENT

    def _start(
        self,
        nursery: trio.Nursery,
        task: Callable[[ClientExchange, Any], Awaitable[None]],
        exchange: ClientExchange,
        what: object,
    ) -> None:
        self.scope = trio.CancelScope()
        self.nursery = nursery
        nursery.start_soon(task, exchange, what)

    async def _send_rest(self, exchange: ClientExchange, pieces: list[Any]) -> None:
        """Send what the socket did not take at once; runs in the client's nursery and
        never raises into it."""
        assert self.scope is not None
        with self.scope:
            try:
                await self.http.send_pieces(pieces)
            except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
                exchange.request_failed(error)
            else:
                exchange.request_ended(_SENT)

    async def _send_body(
        self, exchange: ClientExchange, body: Readable | AsyncIterable[bytes]
    ) -> None:
        """Stream a request body; runs in the client's nursery and never raises into it.

        A body that fails (its producer raised) or cannot be framed as announced cuts
        the connection, so that the server never takes a cut body for a whole one. A
        ``Readable`` body that was not sent whole is closed, with the reason as its
        writer's ``__cause__``.
        """
        assert self.scope is not None
        http = self.http
        failure: BaseException | None = None

        length = self.length

        async def send(chunk: bytes) -> None:
            size = len(chunk)
            if length is None:
                if not size:
                    return
                self.size += size
                await http.send_pieces([b"%x\r\n" % size, chunk, b"\r\n"])
                return
            if self.size + size > length:
                raise _length_error(self.size + size, length)
            self.size += size
            await http.send_pieces([chunk])

        with self.scope:
            try:
                produced = await send_chunks(body, send)
                if produced is not None:
                    exchange.abort(produced)
                    return
                if length is None:
                    await http.send_pieces([_LAST_CHUNK])
                elif self.size != length:
                    raise _length_error(self.size, length)
                exchange.request_ended(_SENT)
            except ProtocolError as error:
                failure = error
                exchange.abort(error)
            except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
                failure = error
                exchange.request_failed(error)
        await close_unsent(body, failure, self.scope.cancel_called, exchange.error)


class ClientExchange:
    """One request and its response on a leased connection.

    The request goes out (see ``RequestSender``) while the response is read, so neither
    side waits for the other. The connection goes back to its pool only when both
    messages have ended cleanly; anything else (an error, a cancellation, a body left
    unread) closes it. The two directions end apart: a response whose reader gives up
    while the request still streams is read and dropped until the request has gone out.
    """

    __slots__ = (
        "_dropper",
        "_lease",
        "_linger_until",
        "_read_timeout",
        "_reader",
        "_reader_gone",
        "_received",
        "_response",
        "_sender",
        "_token",
        "error",
        "finished",
        "http",
        "response_length",
    )

    def __init__(self, lease: Lease, token: TrioToken) -> None:
        self._lease = lease
        self.http = lease.http
        self._token = token
        self._sender = RequestSender(self)
        self._response = _HEAD
        self._dropper: trio.CancelScope | None = None
        # The scope of a body read waiting on the socket, if one is: a close from
        # another task cancels it, and the dropper waits until it has left (two tasks
        # never wait on one socket).
        self._reader: trio.CancelScope | None = None
        self._reader_gone: trio.Event | None = None
        #: The response body's length, when its head says it (Content-Length).
        self.response_length: int | None = None
        self._received = 0
        self._read_timeout: float | None = None
        self._linger_until = inf
        #: True once the connection has been given back or closed.
        self.finished = False
        #: Why the exchange was aborted, if it was for a reason.
        self.error: BaseException | None = None

    # -- the request ------------------------------------------------------------------

    async def send_request(
        self, request: EncodedRequest, body: RequestContent, nursery: trio.Nursery
    ) -> None:
        """Send the request, or start sending it (see ``RequestSender.send``)."""
        await self._sender.send(self, request, body, nursery)

    def request_ended(self, state: int) -> None:
        """The request went out whole, or was cut short (``state``)."""
        self._sender.state = state
        self._maybe_finish()

    def request_failed(self, error: BaseException) -> None:
        """The request could not go out whole: the server stopped reading (an early
        answer), went away, or took nothing for ``write_timeout``."""
        log.debug("request not sent in full: %r", error)
        if self._response == _HEAD and isinstance(error, Timeout):
            # No answer and no progress either way: the caller waiting for the head
            # learns why from the reader's side.
            self.abort(error)
        else:
            self.request_ended(_CUT)

    # -- the response -----------------------------------------------------------------

    async def receive_response(self, request: EncodedRequest, limits: ClientLimits) -> ResponseHead:
        """Read up to the final response head (skipping interim 1xx ones).

        The heads together are bounded by ``max_response_header_size`` and each read by
        ``read_timeout``. Raises ``ProtocolError`` (the server broke HTTP or the
        connection) or ``duplex.Timeout``; on any exception the connection is closed.
        A response that cannot have a body (to HEAD, 204, 304, ``Content-Length: 0``)
        has ended when this returns, and the connection is free.
        """
        http = self.http
        wire = http.wire
        self._read_timeout = limits.read_timeout
        head_size = 0
        try:
            while True:
                parsed = wire.next_head()
                if parsed is None:
                    await http.receive_data(limits.read_timeout, "read")
                    continue
                # A head that arrived whole is not bounded by the wire, nor are 1xx
                # heads together: counted here.
                head, size = parsed
                head_size += size
                if head_size > limits.max_response_header_size:
                    raise ProtocolError(f"response head of over {head_size} bytes", 431)
                if head.status_code >= 200:
                    break
            self._response = _BODY
            self.response_length = wire.begin_body(request.method, request.closes, head)
            if wire.body_complete:
                self.response_ended()
        except BaseException as error:
            raise self._fail(error, "before the response arrived")  # noqa: B904
        return head

    async def receive_body(self, timeout: float | None) -> bytes:
        """The next piece of the response body as it arrives; ``b""`` at its end (the
        exchange may then give its connection back).

        Waits, within ``timeout`` per read, only when nothing is buffered; a cancelled
        call takes nothing. Raises ``ProtocolError`` if the server breaks HTTP or the
        connection, ``duplex.Timeout("read")``; either closes the connection.
        """
        http = self.http
        wire = http.wire
        try:
            while True:
                data = wire.take_body()
                if data is None:
                    if http.receive_data_nowait() is None:
                        await self._read_more(timeout)
                    continue
                if data:
                    self._received += len(data)
                    if wire.body_complete:
                        # A body of known length read whole: the connection is free
                        # before the reader asks for the b"" that follows.
                        self.response_ended()
                    return data
                self.response_ended()
                return b""
        except _ReaderClosed:
            raise
        except (
            ProtocolError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            Timeout,
        ) as error:
            raise self._fail(error, "in the middle of the response")  # noqa: B904

    def take_whole_body(self) -> bytes | None:
        """The whole response body, when none of it has been taken yet, its length is
        known and all of it has arrived: the response has then ended. None otherwise,
        having taken nothing. Never waits, never raises."""
        length = self.response_length
        wire = self.http.wire
        if self._response != _BODY or not length or self._received or wire.buffered < length:
            return None
        data = wire.take_body()
        assert data is not None and len(data) == length and wire.body_complete
        self._received = length
        self.response_ended()
        return data

    async def _read_more(self, timeout: float | None) -> None:
        """Wait for the socket and read once for the body's reader, in a scope that a
        close of the body from another task cancels (then raises
        ``trio.ClosedResourceError``, having taken nothing). Only a read that must wait
        pays for the scope: see ``receive_body``."""
        scope = self._reader = trio.CancelScope()
        try:
            with scope:
                await self.http.receive_data(timeout, "read", found_empty=True)
        finally:
            self._reader = None
            if self._reader_gone is not None:
                self._reader_gone.set()
        if scope.cancelled_caught:
            raise _ReaderClosed("the response body was closed while it was read")

    @property
    def response_done(self) -> bool:
        """True once the response has ended (read to its end)."""
        return self._response == _ENDED

    def response_ended(self) -> None:
        self._response = _ENDED
        self._maybe_finish()

    def response_read_cancelled(self) -> None:
        """A read of the response body was cancelled: the body stays whole for a later
        read, but no longer holds a pool slot (its connection leaves the pool's count
        until the exchange ends)."""
        if not self.finished:
            self._lease.detach()

    def drop_response(self, error: BaseException | None = None) -> None:
        """The response's reader gives up before its end. While the request still goes
        out, the rest of the response is read and dropped (a task) so that the server
        is never held up by it; once the request has ended, the connection closes.
        ``error`` is why, for a request body that breaks."""
        if self.finished or self._response in (_ENDED, _DROPPED):
            return
        if self._reader is not None:
            # A read waits on the socket in another task: it raises ClosedResourceError,
            # and whatever reads on (the dropper) waits for it to leave.
            self._reader_gone = trio.Event()
            self._reader.cancel()
        nursery = self._sender.nursery
        if self._sender.state != _SENDING or nursery is None or self.http.closed:
            self.abort(error)
            return
        self._response = _DROPPED
        self._dropper = trio.CancelScope()
        try:
            nursery.start_soon(self._drop_rest)
        except RuntimeError:  # the client is closing: nothing more goes out anyway
            self.abort(error)

    def drop_response_soon(self) -> None:
        """``drop_response`` from anywhere (a finalizer, another thread): it runs in the
        trio run soon after, or not at all once the run is over."""
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self.drop_response)

    async def _drop_rest(self) -> None:
        """Read the response to its end, dropping it; runs in the client's nursery and
        never raises into it. Once the request has gone out, this goes on for at most
        ``read_timeout`` and ``_LINGER_SIZE`` bytes more than the request body carried;
        then the connection closes."""
        assert self._dropper is not None
        http = self.http
        with self._dropper:
            try:
                while self._reader is not None:
                    assert self._reader_gone is not None
                    await self._reader_gone.wait()
                while http.bytes_received <= self._linger_until:
                    data = http.wire.take_body()
                    if data == b"":
                        self.response_ended()
                        return
                    if data is None:
                        await http.receive_data(None, "read")
            except (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
                log.debug("response not read to its end: %r", error)
        self.abort()  # too long, too much, or broken (nothing to do once it was given back)

    # -- the end ----------------------------------------------------------------------

    def _maybe_finish(self) -> None:
        if self.finished:
            return
        if self._response == _ENDED:
            if self._sender.state == _SENT:
                self.finished = True
                self._lease.release()
            elif self._sender.state == _CUT:
                self.finished = True
                self._lease.discard()
        elif self._response == _DROPPED and self._sender.state == _CUT:
            self.abort()
        elif self._response == _DROPPED and self._sender.state == _SENT:
            # Read on to the response's end (then the connection is free), within
            # bounds: see _drop_rest.
            self._linger_until = self.http.bytes_received + _LINGER_SIZE + self._sender.size
            if self._dropper is not None and self._read_timeout is not None:
                self._dropper.deadline = trio.current_time() + self._read_timeout

    def abort(self, error: BaseException | None = None) -> None:
        """The exchange cannot finish: stop its tasks and close the connection (unless
        it has been given back already). ``error`` is why, for a reader that wakes up
        and a request body that breaks."""
        if self._sender.scope is not None:
            self._sender.scope.cancel()
        if self._dropper is not None:
            self._dropper.cancel()
        if not self.finished:
            self.finished = True
            self.error = error
            self._lease.discard()

    def _fail(self, error: BaseException, during: str) -> BaseException:
        """Abort the exchange over ``error`` (raised in the reader's task ``during`` a
        part of it); what that reader raises."""
        why = self.error
        self.abort(error if isinstance(error, Exception) else None)
        if why is None or not isinstance(
            error, trio.BrokenResourceError | trio.ClosedResourceError
        ):
            return client_error(error, during)
        # The sender aborted the exchange, closing the socket under this reader.
        if isinstance(why, ProtocolError | Timeout):
            return why
        mapped = ProtocolError(f"the request body failed: {why}")
        mapped.__cause__ = why
        return mapped


class _ReaderClosed(trio.ClosedResourceError):
    """A body read waiting on the socket was woken by a close of the body: the
    connection is fine, the reader's part in it over."""


#: The chunk that ends a chunked body, with no trailers (as h11 writes it).
_LAST_CHUNK = b"0\r\n\r\n"


def _length_error(size: int, length: int) -> ProtocolError:
    """What a request body of ``size`` bytes raises when its head says ``length``."""
    what = "over" if size > length else f"of {size} bytes under"
    return ProtocolError(f"cannot send this message: a body {what} Content-Length: {length}", 500)
