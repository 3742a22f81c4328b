"""An exchange as HTTP/2 carries it: one stream, its response sent as HEADERS and DATA
within the stream's flow-control window, ended by END_STREAM or cut by RST_STREAM."""

from __future__ import annotations

import logging
from math import inf
from typing import TYPE_CHECKING

import trio
from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from ..._body import Writable
from ..._errors import ProtocolError, Timeout
from ..._foreign import translate
from .._exchange import FAILED, HANDLING, RESPONDED, RESPONDING, Exchange, PeerGone
from .._models import Request
from ..h1._framing import http_date

if TYPE_CHECKING:
    from ..._body import EmptyBody
    from ._bodies import StreamBody
    from ._connection import H2ServerConnection

__all__ = ["CONNECTION_HEADERS", "H2Exchange"]

log = logging.getLogger("duplex.server")

#: Fields that speak of one HTTP/1.1 connection: never in an HTTP/2 response.
CONNECTION_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


class H2Exchange(Exchange):
    """One stream of an HTTP/2 connection and the exchange it carries.

    The sending methods raise ``PeerGone`` (a ``trio.BrokenResourceError``) once the
    stream or the connection is gone, ``duplex.Timeout`` when the peer opens no window
    within the write timeout (the stream is then reset), and ``ProtocolError`` (500)
    for a response HTTP/2 cannot carry.
    """

    __slots__ = (
        "clogged",
        "closed",
        "connection",
        "declared",
        "error_status",
        "out_ended",
        "received",
        "refused",
        "sending",
        "sent",
        "status",
        "stream_id",
        "trailers",
        "window",
    )

    def __init__(
        self,
        connection: H2ServerConnection,
        stream_id: int,
        request: Request,
        body: StreamBody | EmptyBody,
    ) -> None:
        super().__init__(request, body, trio.CancelScope(), connection.nursery)
        self.connection = connection
        self.stream_id = stream_id
        #: True once the stream is closed for sending: END_STREAM or RST_STREAM went out,
        #: or the peer reset it.
        self.out_ended = False
        #: True once the stream is gone (reset either way, or the connection closed).
        self.closed = False
        #: Request body bytes received so far (for ``max_body_size``).
        self.received = 0
        #: True once the request was refused from its head: its handler never runs.
        self.refused = False
        #: Response body bytes sent so far, and the Content-Length the response named.
        self.sent = 0
        self.declared: int | None = None
        #: The response's status once its head is queued (0 before).
        self.status = 0
        #: The status the stream is answered with if its request turns out bad before
        #: the response began (413, 408).
        self.error_status: int | None = None
        # Set when the peer opens the flow-control window (made by a sender that waits).
        self.window: trio.Event | None = None
        #: Set once ``wait_window`` said a send may block, until the window has room.
        self.clogged = False
        # The scope of a send under way, which ``interrupt`` cancels.
        self.sending: trio.CancelScope | None = None
        #: The trailers that end the response, if it has some.
        self.trailers: list[tuple[bytes, bytes]] | None = None

    # -- the peer's side ----------------------------------------------------------------

    def complete_request(self) -> None:
        """The request body has been read to its end."""
        self.request_complete = True

    def refuse(self, error: ProtocolError) -> None:
        """The request is refused from its head (413, 431, 501): its handler never runs,
        and the stream is answered with the error's status."""
        log.debug("request refused on stream %d: %s", self.stream_id, error)
        self.error_status = error.status
        self.refused = True
        self.fail(trio.BrokenResourceError(str(error)))

    def body_failed(self, error: ProtocolError | Timeout) -> None:
        """The request body turned out bad: the stream is answered with its status if
        the response has not begun (else cut). The body's reads raise from now on. A
        handler that has not begun its response learns of it from its next read, which
        then cancels the exchange, as over HTTP/1.1, where a read finds such a failure;
        one that never reads answers as it likes."""
        status = 408 if isinstance(error, Timeout) else error.status
        log.debug("bad request body on stream %d: %s", self.stream_id, error)
        if self.error_status is None:
            self.error_status = status
        broken = error if isinstance(error, Timeout) else trio.BrokenResourceError(str(error))
        if self.head_started:
            self.fail(broken)
            return
        if not self.ended:
            self.to(FAILED)
        self.request_body.fail(broken)

    def peer_reset(self, error: BaseException) -> None:
        """The stream is gone (the peer reset it, or the connection closed)."""
        self.closed = self.out_ended = True
        self.wake_sender()
        self.fail(error)

    def interrupt(self) -> None:
        """Make a send under way raise ``trio.ClosedResourceError`` (what it handed to
        the connection still goes out)."""
        if self.sending is not None:
            self.sending.cancel()

    def wake_sender(self) -> None:
        """Wake a sender waiting for the flow-control window."""
        window = self.window
        if window is not None:
            self.window = None
            window.set()

    # -- sending --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed or self.out_ended:
            raise PeerGone("the stream is closed")

    async def start(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        *,
        end: bool = False,
        flush: bool = True,
    ) -> None:
        """Send the response head (with END_STREAM when ``end``): ``headers`` are valid
        fields; those HTTP/2 forbids (connection-specific ones) are dropped. Without
        ``flush`` the head waits for what the caller sends next (one write for both)."""
        self.start_nowait(status, headers, end=end)
        if end:
            await self.connection.flush_end()
        elif flush:
            await self.connection.flush()
        else:
            await trio.lowlevel.checkpoint()

    def start_nowait(
        self, status: int, headers: list[tuple[bytes, bytes]], *, end: bool = False
    ) -> None:
        """Queue the response head as ``start`` does, for what is sent next to take it
        along (no wait: the caller sends, or flushes, next)."""
        if not 200 <= status <= 999:
            raise ProtocolError(f"cannot send this message: a response with {status}", 500)
        self._check_open()
        self.status = status
        fields = [(b":status", b"%d" % status)]
        dated = False
        for name, value in headers:
            if name == b"date":
                dated = True
            elif name == b"content-length" and not end:
                if not value.isdigit() or (
                    self.declared is not None and int(value) != self.declared
                ):
                    raise _cannot_send(f"malformed Content-Length: {value!r}")
                self.declared = int(value)
        if not dated:
            fields.append((b"date", http_date()))
        fields += [field for field in headers if field[0] not in CONNECTION_HEADERS]
        try:
            self.connection.send_head(self.stream_id, fields, end)
        except H2Error as error:
            raise translate(error) from error
        if self.state is HANDLING:
            self.to(RESPONDING)
        else:
            self.head_started = True  # (a failed exchange answered by the server)
        if end:
            self._ended()

    async def send(self, data: bytes, *, end: bool = False) -> None:
        """Send ``data`` as DATA frames as the peer's window allows (END_STREAM on the
        last when ``end``); each wait for the window is bounded by the write timeout.
        Raises ``trio.ClosedResourceError`` when ``interrupt``ed."""
        connection = self.connection
        if not end and self.send_nowait(data):
            # The window took all of it: a scope (for ``interrupt``) only if the socket
            # does not take it at once either.
            target = connection.flush_nowait()
            if not target:
                await connection.transport.spend()
                return
            send = connection.wait_sent(target)
        else:
            send = self._send(data, end)
        scope = self.sending = trio.CancelScope()
        try:
            with scope:
                await send
        finally:
            self.sending = None
        if scope.cancelled_caught:
            raise trio.ClosedResourceError("the send was interrupted")

    async def _send(self, data: bytes, end: bool) -> None:
        if self.clogged:
            await self._wait_room()
        connection = self.connection
        h2 = connection.h2
        stream_id = self.stream_id
        self.sent += len(data)
        if self.declared is not None and self.sent > self.declared:
            raise _cannot_send("too much data for declared Content-Length")
        view = memoryview(data)
        while True:
            self._check_open()
            window = self._window()
            if window <= 0 and view:
                await self._wait_window()
                continue
            # As many frames as the window takes, then one flush for them all.
            frame_size = h2.max_outbound_frame_size
            try:
                while True:
                    size = min(window, frame_size, len(view))
                    piece = data if size == len(data) else view[:size]
                    view = view[size:]
                    window -= size
                    last = end and not view
                    if size or last:
                        connection.send_data(stream_id, piece, last)
                    if not view or window <= 0:
                        break
            except H2Error as error:
                raise translate(error) from error
            if end and not view:
                self._ended()
                await connection.flush_end()
                return
            await connection.flush()
            if not view:
                return

    def send_nowait(self, data: bytes, *, end: bool = False) -> bool:
        """Queue ``data`` as ``send`` would if the window takes all of it now (then
        True: the caller flushes), else nothing (False: the caller ``send``s)."""
        self._check_open()
        h2 = self.connection.h2
        size = len(data)
        if self.clogged or not size or self._window() < size:
            return False
        self.sent += size
        if self.declared is not None and self.sent > self.declared:
            raise _cannot_send("too much data for declared Content-Length")
        frame_size = h2.max_outbound_frame_size
        view = memoryview(data)
        try:
            for start in range(0, size, frame_size):
                piece = data if size <= frame_size else view[start : start + frame_size]
                self.connection.send_data(self.stream_id, piece, end and start + frame_size >= size)
        except H2Error as error:
            raise translate(error) from error
        if end:
            self._ended()
        return True

    def _window(self) -> int:
        """How much DATA the peer takes on this stream now (its and the connection's
        flow-control windows)."""
        try:
            return self.connection.h2.local_flow_control_window(self.stream_id)
        except H2Error as error:
            raise translate(error) from error

    async def _wait_window(self) -> None:
        """Wait for the peer to open the window (send what is queued meanwhile)."""
        connection = self.connection
        # (Made before the flush: a WINDOW_UPDATE may come in while it sends.)
        window = self.window = trio.Event()
        await connection.flush()
        timeout = connection.limits.write_timeout
        with trio.move_on_after(inf if timeout is None else timeout) as scope:
            await window.wait()
        if scope.cancelled_caught:
            self.reset(ErrorCodes.CANCEL)
            raise Timeout("write", 0.0 if timeout is None else timeout)

    async def wait_window(self) -> None:
        """Return once the stream's window has room for a whole DATA frame (or all the
        peer's initial window allows), so that a write of that much goes out without
        waiting; once the stream is gone; or once ``interrupt``ed. Raises as ``send``'s
        waits do."""
        with trio.CancelScope() as self.sending:
            await self._wait_room()
        self.sending = None
        await trio.lowlevel.checkpoint()

    async def _wait_room(self) -> None:
        h2 = self.connection.h2
        while not (self.closed or self.out_ended):
            room = min(h2.max_outbound_frame_size, h2.remote_settings.initial_window_size)
            if self._window() >= room:
                break
            # Said to block: the next send waits for the room too (as a socket would).
            self.clogged = True
            await self._wait_window()
        self.clogged = False

    async def finish(self) -> None:
        """End the response: its ``trailers`` (if any) with END_STREAM, else an empty
        DATA frame with it. Once only; nothing for a stream already ended."""
        if self.out_ended:
            await trio.lowlevel.checkpoint()
            return
        self.end_nowait()
        await self.connection.flush_end()

    def end_nowait(self) -> None:
        """Queue the end of the response (sent by the next flush); from any task."""
        if self.out_ended:
            return
        h2 = self.connection.h2
        trailers = self.trailers
        if self.declared is not None and self.sent < self.declared:
            raise _cannot_send("too little data for declared Content-Length")
        try:
            if trailers:
                fields = [field for field in trailers if field[0] not in CONNECTION_HEADERS]
                h2.send_headers(self.stream_id, fields, end_stream=True)
            else:
                h2.end_stream(self.stream_id)
        except H2Error as error:
            raise translate(error) from error
        self._ended()

    def end_soon(self) -> None:
        """End the response now, from any task, without raising for a gone peer."""
        try:
            self.end_nowait()
        except trio.BrokenResourceError as error:
            log.debug("the end of a response could not be sent: %r", error)
            return
        self.connection.flush_soon()

    def _ended(self) -> None:
        self.out_ended = True
        if self.state is RESPONDING:
            self.to(RESPONDED)
        self.stop_request()

    def stop_request(self) -> None:
        """Once the response is complete and nobody will read the rest of the request
        body, tell the peer to stop sending it: RST_STREAM with NO_ERROR (RFC 9113
        §8.1), right after the response's end."""
        body = self.request_body
        if (
            self.out_ended
            and not self.closed
            and not self.request_complete
            and isinstance(body, Writable)
            and body.read_closed
            and not body.write_closed
        ):
            self.reset(ErrorCodes.NO_ERROR)

    def reset(self, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """Reset the stream (RST_STREAM with ``code``), from any task; sent soon."""
        if self.closed:
            return
        self.closed = self.out_ended = True
        self.wake_sender()
        try:
            self.connection.h2.reset_stream(self.stream_id, code)
        except Exception as error:  # the stream (or the connection) is gone already
            log.debug("stream %d could not be reset: %r", self.stream_id, error)
            return
        self.connection.flush_soon()


def _cannot_send(message: str) -> ProtocolError:
    """A response the handler built that HTTP cannot carry: its bug, answered with 500
    (or a reset stream) and logged, never blamed on the peer."""
    return ProtocolError(f"cannot send this message: {message}", 500)
