"""One HTTP/2 exchange on the client: a stream whose request goes out (from a task the
client owns, as the server's window allows) while its response comes in, read by
whoever reads ``H2ResponseBody``; each direction ends on its own, and the stream is
given back to its connection once both have."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterable
from math import inf
from typing import TypeAlias

import h2.errors
import trio
from trio.lowlevel import (
    ParkingLot,
    TrioToken,
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
)

from ..._body import Readable
from ..._errors import ProtocolError, Timeout
from .._request_body import close_unsent, send_chunks
from ._connection import H2ClientConnection, StreamRefused

__all__ = ["H2Exchange", "H2ResponseBody", "RequestContent", "StreamReset"]

log = logging.getLogger("duplex.client")

#: What a request carries: bytes, or a body streamed from a task.
RequestContent: TypeAlias = "bytes | Readable | AsyncIterable[bytes] | None"

#: Response bytes dropped, once the request has gone out, before a response its reader
#: gave up is cut off (reset), beyond what the request body carried: see
#: ``_start_linger``. An echo owes at most the request body; one stream window more.
_LINGER_SIZE = 65536

#: Bytes read from a stream before its window is given back in one WINDOW_UPDATE (all
#: of it at once when the reader has taken everything that arrived).
_GIVE_BACK_SIZE = 16384

# Where the request is: going out, out whole, or cut short.
_SENDING, _SENT, _CUT = range(3)
# Where the response is: waiting for its head, in its body, ended, given up by its
# reader (read and dropped while the request still goes out), or broken.
_HEAD, _BODY, _ENDED, _DROPPED, _BROKEN = range(5)

_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM


class StreamReset(Exception):
    """The server reset the stream (RST_STREAM): ``code`` is the HTTP/2 error code.
    The ``__cause__`` of the ``duplex.ProtocolError`` a reset body raises."""

    def __init__(self, code: int) -> None:
        super().__init__(f"RST_STREAM {_code_name(code)}")
        self.code = code


class H2Exchange:
    """One request and its response on a stream of a shared connection.

    The request goes out from a task in the client's nursery while the caller reads the
    response: neither direction waits for the other. A response given up by its reader
    is dropped (its window given back as it arrives) while the request goes on; an
    exchange aborted (an error, the caller's ``ClientResponse.aclose``) resets the
    stream. Other streams of the connection never notice either.
    """

    def __init__(
        self,
        connection: H2ClientConnection,
        token: TrioToken,
        *,
        write_timeout: float | None,
        read_timeout: float | None,
    ) -> None:
        self.connection = connection
        self._token = token
        self._write_timeout = write_timeout
        self._read_timeout = read_timeout
        self._nursery: trio.Nursery | None = None
        self._linger: trio.CancelScope | None = None
        self._linger_left = 0
        self._received_before = 0
        self._announced: int | None = None
        self.stream_id = 0
        self._request = _SENDING
        self._response = _HEAD
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        #: The response's trailers, once they came.
        self.trailers: list[tuple[bytes, bytes]] = []
        self._chunks: deque[bytes] = deque()
        self._read_unacked = 0
        self._reader = ParkingLot()
        self._window = ParkingLot()
        self._sender: trio.CancelScope | None = None
        #: Bytes of request body handed to the connection so far.
        self.size = 0
        #: Why the exchange broke, once it has.
        self.error: BaseException | None = None
        self.finished = False

    # -- the request ------------------------------------------------------------------

    async def send_request(
        self, headers: list[tuple[bytes, bytes]], body: RequestContent, nursery: trio.Nursery
    ) -> None:
        """Open the stream with ``headers`` and start the body: what the window takes
        at once goes out now, the rest (and every streamed body) from a task. A
        checkpoint. Raises ``ProtocolError`` (500) for headers HTTP/2 refuses,
        ``StreamRefused`` if the connection takes no new stream, and
        ``trio.BrokenResourceError`` if it has ended."""
        await checkpoint_if_cancelled()
        self._nursery = nursery
        self._announced = _content_length(headers)
        if isinstance(body, bytes) and self._announced not in (None, len(body)):
            raise self._misframed(len(body))
        connection = self.connection
        empty = body is None or (isinstance(body, bytes) and not body)
        self._received_before = connection.bytes_received
        self.stream_id = connection.open_stream(self, headers, end=empty)
        if empty:
            self._request = _SENT
        elif isinstance(body, bytes):
            sent = self._send_nowait(body)
            if sent == len(body):
                self._end_request()
            else:
                self._start(nursery, body[sent:])
        elif body is not None:
            self._start(nursery, body)
        await cancel_shielded_checkpoint()

    def _send_nowait(self, data: bytes) -> int:
        """Send what the windows allow of ``data`` without waiting; how much."""
        sent = 0
        with contextlib.suppress(trio.BrokenResourceError):
            while sent < len(data):
                window = self._window_now()
                if window <= 0:
                    break
                self._send_frame(data[sent : sent + window])
                sent += window
        return min(sent, len(data))

    def _start(self, nursery: trio.Nursery, body: bytes | Readable | AsyncIterable[bytes]) -> None:
        self._sender = trio.CancelScope()
        nursery.start_soon(self._send_body, body)

    async def _send_body(self, body: bytes | Readable | AsyncIterable[bytes]) -> None:
        """Send the request body as the server's window allows; runs in the client's
        nursery and never raises into it. A body that fails (its producer raised) resets
        the stream, so that the server never takes a cut body for a whole one; a
        ``Readable`` body not sent whole is closed, the reason as its writer's
        ``__cause__``."""
        assert self._sender is not None
        failure: BaseException | None = None

        async def send(chunk: bytes) -> None:
            if self._announced is not None and self.size + len(chunk) > self._announced:
                raise self._misframed(self.size + len(chunk))
            await self._send_data(chunk)

        with self._sender:
            try:
                if isinstance(body, bytes):
                    await self._send_data(body)
                else:
                    produced = await send_chunks(body, send)
                    if produced is not None:
                        broken = ProtocolError(f"the request body failed: {produced}")
                        broken.__cause__ = produced
                        self.abort(broken)
                        return
                if self._announced is not None and self.size != self._announced:
                    raise self._misframed(self.size)
                self._end_request()
            except _Misframed as error:
                failure = error
                self.abort(error)
            except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
                failure = error
                self._request_failed(error)
        await close_unsent(body, failure, self._sender.cancel_called, self.error)

    async def _send_data(self, data: bytes) -> None:
        sent = 0
        while sent < len(data):
            window = await self._wait_window()
            self._send_frame(data[sent : sent + window])
            sent += window
            await self.connection.drain(self._write_timeout)

    def _send_frame(self, data: bytes) -> None:
        self.connection.send_data(self.stream_id, data)
        self.size += len(data)

    def _window_now(self) -> int:
        if self._request != _SENDING or self.error is not None:
            raise self._request_broken(self.error)
        return self.connection.window(self.stream_id)

    async def _wait_window(self) -> int:
        """The bytes the next frame may carry, once the server's windows allow any.
        Raises ``duplex.Timeout("write")`` after ``write_timeout`` without, and
        ``trio.BrokenResourceError`` once the stream cannot carry more."""
        timeout = self._write_timeout
        with trio.move_on_after(inf if timeout is None else timeout) as scope:
            while (window := self._window_now()) <= 0:
                await self._window.park()
            return window
        assert scope.cancelled_caught
        raise Timeout("write", timeout or 0.0)

    def _misframed(self, size: int) -> _Misframed:
        if size > (self._announced or 0):
            return _Misframed(
                f"the request body goes over the {self._announced} bytes its"
                " Content-Length announced",
                500,
            )
        return _Misframed(
            f"the request body ended after {size} of the {self._announced} bytes its"
            " Content-Length announced",
            500,
        )

    def _request_broken(self, cause: BaseException | None) -> trio.BrokenResourceError:
        broken = trio.BrokenResourceError("the stream cannot carry more of the request")
        broken.__cause__ = cause
        return broken

    def _end_request(self) -> None:
        if self._request != _SENDING:
            return
        self.connection.send_data(self.stream_id, b"", end=True)
        self._request = _SENT
        self._maybe_finish()

    def _request_failed(self, error: BaseException) -> None:
        """The request could not go out whole: the server reset the stream (it may have
        answered already), the connection ended, or the window stayed shut for
        ``write_timeout``."""
        log.debug("request not sent in full: %r", error)
        if isinstance(error, Timeout):
            self.abort(error)
            return
        self._request = _CUT
        if self._response not in (_ENDED, _BROKEN):
            self.connection.reset(self.stream_id)
            self._response_broken(error)
        self._maybe_finish()

    # -- the response, as the connection's reader hands it over ------------------------

    def on_head(self, headers: list[tuple[bytes, bytes]]) -> None:
        fields = []
        status = 0
        for name, value in headers:
            if name == b":status":
                status = int(value) if len(value) == 3 and value.isdigit() else 0
            elif not name.startswith(b":"):
                fields.append((name, value))
        if not 200 <= status <= 999:
            self.connection.reset(self.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self._fail_all(ProtocolError(f"the server sent a response with :status {status}"))
            return
        self._status = status
        self._headers = fields
        if self._response == _HEAD:
            self._response = _BODY
        self._reader.unpark_all()

    def on_data(self, data: bytes, flow_controlled_length: int) -> None:
        padding = flow_controlled_length - len(data)
        if self._response == _DROPPED or self._response == _BROKEN:
            self.connection.give_back(self.stream_id, flow_controlled_length)
            if self._linger is not None:
                self._linger_left -= len(data)
                if self._linger_left < 0:
                    self._linger.cancel()
            return
        if padding:
            self.connection.give_back(self.stream_id, padding)
        if data:
            self._chunks.append(data)
            self._reader.unpark_all()

    def on_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = list(headers)

    def on_end(self) -> None:
        if self._response in (_HEAD, _BODY, _DROPPED):
            if self._response == _HEAD:
                self._response_broken(
                    ProtocolError("the server ended the stream before its response")
                )
            elif self._response == _DROPPED:
                self._response = _ENDED
                self._chunks.clear()
                if self._linger is not None:
                    self._linger.cancel()
            else:
                self._response = _ENDED
        self._reader.unpark_all()
        self._maybe_finish()

    def on_reset(self, code: int) -> None:
        """The server reset the stream: after a whole response (NO_ERROR), it wants no
        more of the request; else the exchange breaks."""
        self._window.unpark_all()
        if self._sender is not None:
            self._sender.cancel()
        if self._request == _SENDING:
            self._request = _CUT
        if self._response == _ENDED and code == _NO_ERROR:
            self._maybe_finish()
            return
        if code == _REFUSED and self._response == _HEAD:
            self.on_refused()
            return
        reset = ProtocolError(f"the server reset the stream ({_code_name(code)})")
        reset.__cause__ = StreamReset(code)
        self._response_broken(reset)
        self._maybe_finish()

    def on_refused(self) -> None:
        """The server never processed this stream (GOAWAY, REFUSED_STREAM)."""
        self.connection.reset(self.stream_id)
        self._fail_all(StreamRefused("the server did not process this request (GOAWAY)"))

    def on_window(self) -> None:
        self._window.unpark_all()

    def on_connection_error(self, error: BaseException) -> None:
        connection = self.connection
        if (
            self._response == _HEAD
            and connection.cut_off
            and connection.streams_opened > 1
            and connection.bytes_received == self._received_before
        ):
            # A connection kept from earlier streams that the server closed as this one
            # opened, with no byte since: as over HTTP/1.1, the request may go again.
            refused = StreamRefused("the server closed the connection before it answered")
            refused.__cause__ = error
            self._fail_all(refused)
            return
        if isinstance(error, ProtocolError | Timeout):
            mapped = error
        else:
            mapped = ProtocolError(f"the HTTP/2 connection broke: {error}")
            mapped.__cause__ = error
        self._fail_all(mapped)

    def _fail_all(self, error: BaseException) -> None:
        if self._sender is not None:
            self._sender.cancel()
        if self._request == _SENDING:
            self._request = _CUT
        if self._response != _ENDED:
            self._response_broken(error)
        self._window.unpark_all()
        self._maybe_finish()

    def _response_broken(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        if self._response != _ENDED:
            self._response = _BROKEN
        self._chunks.clear()
        self._reader.unpark_all()

    # -- the response, as its reader takes it --------------------------------------------

    async def receive_response(
        self, timeout: float | None
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Wait for the final response head, within ``timeout``: its status and fields.

        Raises ``ProtocolError`` (the server reset the stream or broke the connection),
        ``StreamRefused`` (the request may go again elsewhere) or ``duplex.Timeout``;
        any exception resets the stream."""
        try:
            with trio.move_on_after(inf if timeout is None else timeout) as scope:
                while self._response == _HEAD:
                    await self._reader.park()
            if scope.cancelled_caught:
                raise Timeout("read", timeout or 0.0)
            if self._response == _BROKEN and not self._status:
                assert self.error is not None
                raise self.error
        except BaseException as error:
            self.abort(error if isinstance(error, Exception) else None)
            raise
        return self._status, self._headers

    async def receive_body(self, timeout: float | None, max_bytes: int | None) -> bytes:
        """The next piece of the response body (at most ``max_bytes``), ``b""`` at its
        end. Waits within ``timeout`` only when nothing has arrived; a cancelled call
        takes nothing. Raises ``ProtocolError`` (a reset stream, a broken connection) or
        ``duplex.Timeout("read")`` (the stream is then reset)."""
        chunks = self._chunks
        if not chunks and self._response == _BODY:
            with trio.move_on_after(inf if timeout is None else timeout) as scope:
                while not chunks and self._response == _BODY:
                    await self._reader.park()
            if scope.cancelled_caught:
                expired = Timeout("read", timeout or 0.0)
                self.abort(expired)
                raise expired
        if chunks:
            data = chunks.popleft()
            if max_bytes is not None and len(data) > max_bytes:
                chunks.appendleft(data[max_bytes:])
                data = data[:max_bytes]
            self._read_unacked += len(data)
            if self._read_unacked >= _GIVE_BACK_SIZE or not chunks:
                self.connection.give_back(self.stream_id, self._read_unacked)
                self._read_unacked = 0
            return data
        if self._response == _BROKEN:
            assert self.error is not None
            raise self.error
        if self._response == _ENDED:
            return b""
        raise trio.ClosedResourceError("the response was given up")

    @property
    def response_done(self) -> bool:
        return self._response == _ENDED and not self._chunks

    def drop_response(self, error: BaseException | None = None) -> None:
        """The response's reader gives up before its end: what arrived and what comes
        is dropped (its window given back) while the request goes on; then the stream is
        reset, unless it ended by then."""
        if self._response in (_ENDED, _BROKEN, _DROPPED):
            self._chunks.clear()
            return
        self._response = _DROPPED
        dropped = sum(map(len, self._chunks)) + self._read_unacked
        self._chunks.clear()
        self._read_unacked = 0
        self.connection.give_back(self.stream_id, dropped)
        self._reader.unpark_all()
        self._maybe_finish()

    def drop_response_soon(self) -> None:
        """``drop_response`` from anywhere (a finalizer): it runs in the trio run soon
        after, or not at all once the run is over."""
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self.drop_response)

    # -- the end ----------------------------------------------------------------------

    def _maybe_finish(self) -> None:
        if self.finished or self._request == _SENDING:
            return
        if self._response == _DROPPED:
            if self._linger is None:
                self._start_linger()
            return
        if self._response in (_HEAD, _BODY):
            return  # the response may still come whole
        self.finished = True
        if self._linger is not None:
            self._linger.cancel()
        self.connection.stream_done(self.stream_id)

    def _start_linger(self) -> None:
        """The request has gone out and the response's reader gave up: drop the rest of
        the response until its end (a server that echoes may still owe the echo of what
        it read), for at most ``read_timeout`` and ``_LINGER_SIZE`` bytes more than the
        request carried; then the stream is reset. Resetting at once could cut the
        request's end before the server read it."""
        self._linger = trio.CancelScope()
        self._linger_left = _LINGER_SIZE + self.size
        if self._nursery is None or self._request == _CUT:
            self._end_linger()
            return
        try:
            self._nursery.start_soon(self._linger_on)
        except RuntimeError:  # the client is closing
            self._end_linger()

    async def _linger_on(self) -> None:
        assert self._linger is not None
        timeout = self._read_timeout
        with self._linger:
            self._linger.deadline = trio.current_time() + (inf if timeout is None else timeout)
            await trio.sleep_forever()
        self._end_linger()

    def _end_linger(self) -> None:
        if self.finished:
            return
        if self._response == _DROPPED:
            self.connection.reset(self.stream_id)
            self._response = _ENDED
        self.finished = True
        self.connection.stream_done(self.stream_id)

    def abort(self, error: BaseException | None = None) -> None:
        """End the exchange now: reset the stream, stop its request body (a
        ``Readable`` body breaks with ``error``), and break its response."""
        if self._sender is not None:
            self._sender.cancel()
        if self.stream_id:
            self.connection.reset(self.stream_id)
        if self._request == _SENDING:
            self._request = _CUT
        if self._response != _ENDED:
            self._response_broken(error or trio.ClosedResourceError("the exchange was closed"))
        self._window.unpark_all()
        if self.stream_id:
            self._maybe_finish()


class H2ResponseBody(Readable):
    """A response body read from its HTTP/2 stream as its reader reads it.

    ``read()`` returns each DATA frame's bytes as they arrived, then ``b""`` at the end
    and forever after. Raises ``duplex.ProtocolError`` (a ``trio.BrokenResourceError``)
    if the server resets the stream or the connection breaks, ``duplex.Timeout("read")``
    when nothing arrives within ``read_timeout`` (the stream is reset; later reads raise
    ``trio.BrokenResourceError`` with it as ``__cause__``), ``trio.ClosedResourceError``
    once closed. Every read is a checkpoint and a cancelled read loses nothing. The
    server may send only as much as the reader has taken (plus one window).
    """

    def __init__(
        self, exchange: H2Exchange, read_timeout: float | None, length: int | None
    ) -> None:
        self._exchange = exchange
        self._read_timeout = read_timeout
        self._length = length
        self._closed = False
        self._error: BaseException | None = None

    def __del__(self) -> None:
        if not (self._closed or self._exchange.finished or self._exchange.response_done):
            self._exchange.drop_response_soon()

    @property
    def length(self) -> int | None:
        return self._length

    @property
    def is_empty(self) -> bool:
        return self._closed or (self._exchange.response_done and not self._pushback)

    @property
    def trailers(self) -> list[tuple[bytes, bytes]]:
        """The response's trailer fields, once the body has been read to its end."""
        return self._exchange.trailers

    async def _receive(self, max_bytes: int | None) -> bytes:
        await checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("this response body was closed by its reader")
        if self._error is not None:
            broken = trio.BrokenResourceError("the response body broke earlier")
            broken.__cause__ = self._error
            raise broken
        try:
            data = await self._exchange.receive_body(self._read_timeout, max_bytes)
        except (trio.BrokenResourceError, Timeout) as error:
            self._error = error
            raise
        except trio.ClosedResourceError:
            if self._closed:
                raise trio.ClosedResourceError("this response body was closed") from None
            raise
        await cancel_shielded_checkpoint()
        return data

    async def aclose(self, error: BaseException | None = None) -> None:
        """Stop reading: what arrives is dropped while the request goes on, then the
        stream ends. Idempotent, and a checkpoint."""
        self.close_read_nowait(error)
        await checkpoint()

    def close_read_nowait(self, error: BaseException | None = None) -> None:
        """``aclose`` without the checkpoint, for synchronous teardown code."""
        if self._closed:
            return
        self._closed = True
        self._pushback = b""
        self._exchange.drop_response(error)

    def close_exchange_nowait(self) -> None:
        """Close the body and end the whole exchange now: the stream is reset and a
        request body still streaming breaks."""
        self.close_read_nowait()
        if not self._exchange.finished:
            self._exchange.abort()


class _Misframed(ProtocolError):
    """A request body that does not match its Content-Length: the stream is reset, so
    that the server never takes a cut body for a whole one."""


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def _code_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"
