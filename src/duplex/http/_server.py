"""The HTTP/1.1 server: full-duplex exchanges over h11, one task per connection.

Per exchange, the connection's task reads the request body from the socket into
``request.body`` (then watches for the peer leaving), while one more task runs the
handler and writes the response. Either may finish first.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from http import HTTPStatus
from math import inf
from typing import Any

import h11
import trio

from .._body import BytesLike, Readable, Writable, _empty_body
from .._errors import ProtocolError, Timeout
from .._stream import Stream
from ._connection import HTTPConnection
from ._limits import Limits
from ._models import ExchangeNursery, Headers, HeadersLike, Request, Response, Streamable
from ._takeover import Takeover

__all__ = ["Handler", "Server", "serve"]

log = logging.getLogger("duplex.server")

Handler = Callable[[Request], Awaitable[Response]]

# The first blank line ends a head; h11 also accepts a bare LF there, so look for both.
_HEAD_END = re.compile(rb"\n\r?\n")
#: How long an exchange runs before the watcher starts looking for its peer leaving.
WATCH_DELAY = 0.1
# Control characters other than HTAB: h11 lets all but NUL through in field values.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# h11 merges repeated identical Content-Length fields (and "1, 1" lists) into one; the
# raw head is checked for them so that duplex rejects what it cannot read one way only.
_CONTENT_LENGTH_FIELD = re.compile(rb"\ncontent-length[ \t]*:([^\r\n]*)", re.IGNORECASE)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")
_NO_BODY_STATUSES = frozenset({204, 304})
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
#: Connections accepted at most per wake-up of the accept loop.
_ACCEPT_BURST = 64
# As trio's SocketListener: out of descriptors or memory (wait, then try again), and a
# connection that failed before it was accepted (skip it).
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_IGNORED_ACCEPT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})


class PeerGone(trio.BrokenResourceError):
    """The peer closed or reset the connection while the exchange was in flight."""


class ResponseEnded(trio.BrokenResourceError):
    """The response ended before the request body was read."""


def _error_response(status: int, message: str) -> bytes:
    body = f"{status} {HTTPStatus(status).phrase}: {message}\n".encode()
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


class Server:
    """An HTTP/1.1 server that runs ``handler`` for every request.

    Start it with ``server = await nursery.start(server.serve)`` (or ``duplex.serve``);
    ``port`` is then the bound port. ``shutdown()`` stops it gracefully.
    """

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        limits: Limits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.handler = handler
        self.host = host
        self.requested_port = port
        self.limits = limits or Limits()
        self.ssl_context = ssl_context
        self.reuse_port = reuse_port
        self.listeners: list[trio.SocketListener] = []
        self.shutting_down = False
        self._connections: set[_ServerConnection] = set()
        self._connections_changed = trio.lowlevel.ParkingLot()
        self._accept_scope = trio.CancelScope()
        self._serve_scope = trio.CancelScope()
        self._stopped = trio.Event()
        #: Set when ``shutdown()`` starts; long-lived exchanges (channels) watch it.
        self.closing = trio.Event()
        # Exchanges to look at once they have lasted WATCH_DELAY, oldest first.
        self._watch_queue: deque[tuple[float, _ServerConnection, _Exchange]] = deque()
        self._watch_wakeup = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery  # the connections' (set by serve)

    @property
    def port(self) -> int:
        """The port the server listens on (useful after binding port 0)."""
        if not self.listeners:
            raise RuntimeError("the server is not listening yet")
        port: int = self.listeners[0].socket.getsockname()[1]
        return port

    @property
    def connection_count(self) -> int:
        """Connections open right now."""
        return len(self._connections)

    async def _listen(self) -> trio.SocketListener:
        infos = await trio.socket.getaddrinfo(
            self.host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, type_, proto, _, address = infos[0]
        sock = trio.socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            await sock.bind(address)
            sock.listen(1024)
        except BaseException:
            sock.close()
            raise
        return trio.SocketListener(sock)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until ``shutdown()`` finishes or the caller is cancelled.

        ``task_status.started`` receives this server once it is listening.
        """
        self.listeners = [await self._listen()]
        log.info("listening on %s:%d", self.host, self.port)
        with self._serve_scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._accept, nursery)
                nursery.start_soon(self._schedule_watchers)
                task_status.started(self)
        self._stopped.set()

    def _watch_later(self, connection: _ServerConnection, exchange: _Exchange) -> None:
        self._watch_queue.append((trio.current_time(), connection, exchange))
        if len(self._watch_queue) == 1:
            self._watch_wakeup.unpark()

    async def _schedule_watchers(self) -> None:
        """Start a watcher for each exchange that lasts ``WATCH_DELAY``.

        One task for the whole server, so that a quick exchange costs an append to a
        queue, not a task: it wakes at most every half ``WATCH_DELAY`` while exchanges
        run, and sleeps while there are none.
        """
        queue = self._watch_queue
        while True:
            if not queue:
                await self._watch_wakeup.park()
                continue
            # Wake for a batch: everything due within the next tenth of the delay.
            await trio.sleep_until(queue[0][0] + WATCH_DELAY * 1.1)
            due = trio.current_time() - WATCH_DELAY
            while queue and queue[0][0] <= due:
                _, connection, exchange = queue.popleft()
                connection._start_watching(exchange)

    async def _accept(self, nursery: trio.Nursery) -> None:
        with self._accept_scope:
            async with trio.open_nursery() as accepting:
                for listener in self.listeners:
                    accepting.start_soon(self._accept_from, listener.socket, nursery)

    async def _accept_from(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        """Accept connections in bursts of up to ``_ACCEPT_BURST`` per wake-up.

        Accepting one connection per trip through the scheduler (as a loop over
        ``listener.accept()`` does) falls behind a server busy with many connections,
        and the kernel's listen queue overflows; a burst empties it.
        """
        # A stdlib socket object over the listening descriptor, for accepting without a
        # checkpoint each; detached at the end so that it closes nothing.
        listening = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.fileno())
        try:
            while True:
                await trio.lowlevel.checkpoint_if_cancelled()
                accepted = 0
                while accepted < _ACCEPT_BURST:
                    try:
                        connection, _ = listening.accept()
                    except BlockingIOError:
                        break
                    except OSError as error:
                        if error.errno in _ACCEPT_CAPACITY_ERRNOS:
                            log.error("cannot accept more connections now: %s", error)
                            await trio.sleep(0.1)  # until some connection has closed
                            break
                        if error.errno in _IGNORED_ACCEPT_ERRNOS:
                            continue  # the peer gave up before we accepted it
                        raise
                    accepted += 1
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(connection))
                    nursery.start_soon(self._handle, stream)
                if accepted < _ACCEPT_BURST:
                    await trio.lowlevel.wait_readable(sock)
                else:
                    await trio.lowlevel.cancel_shielded_checkpoint()  # let them start
        finally:
            listening.detach()

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve_connection(stream)
        finally:
            await trio.aclose_forcefully(stream)  # closes even when cancelled

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        transport: trio.abc.Stream = stream
        if self.ssl_context is not None:
            transport = trio.SSLStream(
                stream, self.ssl_context, server_side=True, https_compatible=True
            )
        if len(self._connections) >= self.limits.max_connections:
            # Over TLS too: a plain-text answer would only break the client's handshake.
            await _answer_and_close(transport, 503, "too many connections")
            return
        try:
            client = stream.socket.getpeername()
        except OSError:
            client = None
        connection = _ServerConnection(self, transport, client)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            self._connections_changed.unpark_all()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let exchanges in flight finish within ``grace`` seconds
        (default ``limits.shutdown_grace``), then cancel what is left.

        Idle keep-alive connections close at once; busy ones close after their exchange.
        Returns once the server has stopped.
        """
        grace = self.limits.shutdown_grace if grace is None else grace
        self.shutting_down = True
        self.closing.set()
        self._accept_scope.cancel()
        # Close the listening sockets now, so the kernel stops queueing connections that
        # nobody will accept (with workers, a sibling takes them instead).
        for listener in self.listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()
        for connection in list(self._connections):
            connection.shutdown()
        with trio.move_on_after(grace):
            while self._connections:
                await self._connections_changed.park()
        self._serve_scope.cancel()
        await self._stopped.wait()


async def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    limits: Limits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``host``:``port`` until cancelled or shut down.

    ``server = await nursery.start(duplex.serve, handler, "127.0.0.1", 0)`` hands back
    the ``Server``, already listening.
    """
    server = Server(
        handler, host, port, limits=limits, ssl_context=ssl_context, reuse_port=reuse_port
    )
    await server.serve(task_status=task_status)


async def _answer_and_close(stream: trio.abc.Stream, status: int, message: str) -> None:
    """Send an error response, then close so that the peer still reads it.

    Closing a socket with unread input makes the kernel send a reset, which can destroy
    the answer in flight; so the write side is shut first and a little input drained.
    """
    try:
        with trio.move_on_after(1.0):
            await stream.send_all(_error_response(status, message))
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            drained = 0
            while drained < 65536:
                data = await stream.receive_some(16384)
                if not data:
                    break
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def _check_line_ends(data: bytes | bytearray, start: int, end: int, what: str) -> None:
    """Refuse bare LF, bare CR and obs-fold in ``data[start:end]``, which h11 repairs."""
    crlf = data.count(b"\r\n", start, end)
    if data.count(b"\n", start, end) != crlf:
        raise ProtocolError(f"bare LF line ending in the {what}")
    if data.count(b"\r", start, end) != crlf:
        raise ProtocolError(f"bare CR in the {what}")
    if data.find(b"\n ", start, end) >= 0 or data.find(b"\n\t", start, end) >= 0:
        raise ProtocolError(f"obsolete line folding in the {what}")


def _check_field_values(fields: Iterable[tuple[bytes, bytes]], what: str) -> None:
    for name, value in fields:
        if _CONTROL.search(value):
            raise ProtocolError(f"control character in the {name.decode()} {what}")


class _ChunkedFraming:
    """Follows h11 through a chunked body to check the raw bytes it would let through.

    h11 accepts CR and NUL in chunk extensions, and repairs bare LF line ends and
    obs-fold in trailers; duplex refuses them. ``check`` runs on the buffer before each
    ``next_event`` and ``advance`` after it. The buffer starts at a chunk-size line
    (perhaps behind the CRLF that ends the previous chunk), inside a chunk's data, or at
    the trailers.
    """

    LINE, DATA, TRAILERS = range(3)

    def __init__(self, max_trailer_size: int) -> None:
        self.state = self.LINE
        self.size: int | None = None  # of the complete chunk-size line just checked
        self.max_trailer_size = max_trailer_size

    def check(self, data: bytes | bytearray) -> None:
        self.size = None
        if self.state == self.DATA:
            return
        if self.state == self.TRAILERS:
            self._check_trailers(data, 0)
            return
        start = 2 if data[:2] == b"\r\n" else 1 if data[:1] == b"\n" else 0
        end = data.find(b"\r\n", start)
        if end < 0:
            return
        if data.find(b"\r", start, end) >= 0 or data.find(b"\x00", start, end) >= 0:
            raise ProtocolError("CR or NUL in a chunk extension")
        size = _CHUNK_SIZE.match(data, start, end)
        if size is not None:
            self.size = int(size[0], 16)
            if self.size == 0:
                self._check_trailers(data, end + 2)

    def _check_trailers(self, data: bytes | bytearray, start: int) -> None:
        """Check the trailer section at ``data[start:]``: its line ends, and its size
        against ``max_header_size`` however the bytes arrived (whole or in pieces)."""
        if data[start : start + 1] == b"\n":
            raise ProtocolError("bare LF line ending in the trailers")
        if data[start : start + 2] == b"\r\n":
            return  # no trailers
        match = _HEAD_END.search(data, start)
        end = len(data) if match is None else match.end()
        if end - start > self.max_trailer_size:
            raise ProtocolError("trailers too large", 431)
        if match is not None:
            _check_line_ends(data, start, end, "trailers")

    def advance(self, event: Any) -> None:
        if isinstance(event, h11.Data):
            self.state = self.LINE if event.chunk_end else self.DATA
        elif event is h11.NEED_DATA and self.size is not None:
            # h11 took the whole chunk-size line and waits for what follows it.
            self.state = self.TRAILERS if self.size == 0 else self.DATA


class _Exchange:
    """One request and its response, with what each side knows of the other."""

    __slots__ = (
        "detached",
        "expects_continue",
        "failed",
        "head_started",
        "keep_alive",
        "nursery",
        "on_server_closing",
        "over",
        "request",
        "request_body",
        "request_complete",
        "response_body",
        "response_done",
        "scope",
        "self_watching",
        "task_scopes",
        "tasks",
        "tasks_done",
        "watch_scope",
    )

    def __init__(
        self,
        request: Request,
        request_body: Writable,
        scope: trio.CancelScope,
        nursery: trio.Nursery | None = None,
    ) -> None:
        self.request = request
        self.request_body = request_body
        #: Cancels the handler and everything else of the exchange.
        self.scope = scope
        #: The exchange's own nursery; None for an exchange answered in the connection's
        #: task, whose ``request.nursery`` tasks run in the connection's nursery.
        self.nursery = nursery
        self.response_body: Readable | None = None
        self.head_started = False
        self.response_done = False
        self.failed = False
        self.keep_alive = True
        self.expects_continue = False
        self.detached = False
        self.request_complete = False
        self.over = False
        # Made by the connection's watcher when it starts watching this exchange.
        self.watch_scope: trio.CancelScope | None = None
        # Set when the exchange's own task watches for the peer leaving (a channel
        # waiting for news): no watcher task is started for it then.
        self.self_watching = False
        #: Called when the server starts shutting down while this exchange runs.
        self.on_server_closing: Callable[[], object] | None = None
        # Tasks of an inline exchange (see _InlineNursery): started, and their scopes.
        self.tasks = 0
        # (Made with the first task: most exchanges have none.)
        self.task_scopes: set[trio.CancelScope] | None = None
        self.tasks_done: trio.lowlevel.ParkingLot | None = None

    def stop_watching(self) -> None:
        if self.watch_scope is not None:
            self.watch_scope.cancel()
            self.watch_scope = None

    def cancel(self) -> None:
        """Cancel the handler and the exchange's tasks."""
        self.scope.cancel()
        for scope in self.task_scopes or ():
            scope.cancel()

    def end_tasks(self) -> None:
        """The exchange is over: cancel the tasks left in ``request.nursery``, if any
        (looking first, since cancelling costs more than looking)."""
        if self.nursery is not None:
            if self.nursery.child_tasks:
                self.scope.cancel()
        else:
            self.over = True
            for scope in self.task_scopes or ():
                scope.cancel()

    def fail(self, error: BaseException) -> None:
        """The connection cannot go on: wake both bodies with ``error`` and cancel."""
        self.failed = True
        self.keep_alive = False
        self.request_body.close_write_nowait(error)
        body = self.response_body
        if isinstance(body, Writable):
            body.close_read_nowait(error)
        self.cancel()


class _InlineNursery(ExchangeNursery):
    """``request.nursery`` of an exchange answered in the connection's task: its tasks
    run in the connection's nursery, each in a scope the exchange cancels at its end."""

    __slots__ = ("_connection", "_exchange")

    def __init__(self, connection: _ServerConnection, exchange: _Exchange) -> None:
        self._connection = connection
        self._exchange = exchange

    @property
    def cancel_scope(self) -> trio.CancelScope:
        return self._exchange.scope

    def start_soon(
        self, async_fn: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> None:
        self._exchange.tasks += 1
        nursery = self._connection.nursery
        nursery.start_soon(self._run, async_fn, args, name=name or async_fn)

    async def start(
        self, async_fn: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> Any:
        self._exchange.tasks += 1
        nursery = self._connection.nursery
        return await nursery.start(self._run, async_fn, args, name=name or async_fn)

    async def _run(
        self,
        async_fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        exchange = self._exchange
        scope = trio.CancelScope()
        if exchange.task_scopes is None:
            exchange.task_scopes = set()
        exchange.task_scopes.add(scope)
        try:
            with scope:
                if exchange.over or exchange.failed:
                    scope.cancel()
                if task_status is trio.TASK_STATUS_IGNORED:
                    await async_fn(*args)
                else:
                    await async_fn(*args, task_status=task_status)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.debug("a task of the exchange stopped: %r", error)
        except Exception:
            log.exception("a task of the exchange with %s failed", self._connection.client)
            self._connection._task_failed(exchange)
            exchange.cancel()
        finally:
            exchange.task_scopes.discard(scope)
            exchange.tasks -= 1
            if not exchange.tasks and exchange.tasks_done is not None:
                exchange.tasks_done.unpark_all()


class _ServerConnection:
    __slots__ = (
        "cancel_scope",
        "client",
        "closing",
        "http",
        "idle",
        "in_flight",
        "limits",
        "scheme",
        "server",
    )

    def __init__(
        self, server: Server, stream: trio.abc.Stream, client: tuple[str, int] | None
    ) -> None:
        self.server = server
        self.limits = limits = server.limits
        self.http = HTTPConnection(
            stream,
            h11.SERVER,
            max_incomplete_event_size=limits.max_header_size,
            read_size=limits.read_size,
            write_timeout=limits.write_timeout,
        )
        self.client = client
        self.scheme = "https" if server.ssl_context is not None else "http"
        self.idle = True
        self.closing = False
        self.cancel_scope = trio.CancelScope()
        #: The exchange in flight, for the watcher; None between requests.
        self.in_flight: _Exchange | None = None

    @property
    def nursery(self) -> trio.Nursery:
        """Where the connection's helper tasks run (a watcher, tasks of an inline
        exchange): the server's, so that a connection needs no nursery of its own."""
        return self.server._nursery

    def shutdown(self) -> None:
        self.closing = True
        if self.idle:
            self.cancel_scope.cancel()
            return
        exchange = self.in_flight
        if exchange is not None and exchange.on_server_closing is not None:
            exchange.on_server_closing()

    async def run(self) -> None:
        with self.cancel_scope:
            await self._run()
        await self.http.aclose()

    def _watch_later(self, exchange: _Exchange) -> None:
        """Have the server look at ``exchange`` once it has lasted ``WATCH_DELAY``."""
        self.server._watch_later(self, exchange)

    def _start_watching(self, exchange: _Exchange) -> None:
        """Start a task that notices the peer leaving mid-exchange, if still useful.

        Only once the request has been read (until then the connection's task reads the
        socket and sees the peer leave itself), and only for an exchange still running
        that no one else watches. The task peeks at the socket, reading nothing, and
        fails the exchange when the peer closes or resets the connection.
        """
        if (
            exchange is self.in_flight
            and exchange.request_complete
            and not (exchange.response_done or exchange.detached or exchange.failed)
            and not (exchange.self_watching or exchange.watch_scope is not None)
        ):
            exchange.watch_scope = trio.CancelScope()
            self.nursery.start_soon(self._watch, exchange, exchange.watch_scope)

    async def _watch(self, exchange: _Exchange, scope: trio.CancelScope) -> None:
        with scope:
            if (
                exchange is not self.in_flight
                or exchange.response_done
                or exchange.detached
                or exchange.self_watching
            ):
                return
            await self.http.wait_peer_gone()
            log.debug("peer %s went away mid-exchange", self.client)
            exchange.fail(PeerGone("the peer closed the connection"))

    async def _run(self) -> None:
        try:
            try:
                await self._serve()
            except ProtocolError as error:
                log.debug("bad request from %s: %s", self.client, error)
                await _answer_and_close(self.http.stream, error.status, str(error))
            except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
                log.debug("connection from %s ended: %r", self.client, error)
        except Exception:
            log.exception("unexpected error serving %s", self.client)

    async def _serve(self) -> None:
        limits = self.limits
        served = 0
        started = trio.current_time()
        while not self.closing:
            self.idle = True
            event = await self._read_head(started, first=served == 0)
            if event is None:
                return
            self.idle = False
            served += 1
            self._check_request(event)
            last = (
                limits.max_requests_per_connection is not None
                and served >= limits.max_requests_per_connection
            )
            if not await self._exchange(event, last):
                return
            started = trio.current_time()
            self.http.h11.start_next_cycle()

    # -- the request head -------------------------------------------------------------

    async def _read_head(self, started: float, *, first: bool) -> Any:
        """The next ``h11.Request``, or None when the peer closes or idles out.

        Raises ``ProtocolError`` with the status to answer (400, 408, 414, 431, 501).
        """
        limits = self.limits
        head_deadline = inf if limits.header_timeout is None else started + limits.header_timeout
        idle_deadline = head_deadline
        if not first and limits.keep_alive_timeout is not None:
            idle_deadline = min(head_deadline, started + limits.keep_alive_timeout)
        while True:
            self._check_head_bytes()
            event = self.http.next_event()
            if isinstance(event, h11.Request):
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            if event is not h11.NEED_DATA:
                raise ProtocolError(f"unexpected {type(event).__name__} before a request")
            pending = len(self.http.buffered())
            try:
                got_data = await self.http.receive_data(
                    deadline=head_deadline if pending else idle_deadline
                )
            except Timeout:
                if pending:
                    raise ProtocolError("the request head did not arrive in time", 408) from None
                return None
            if not got_data and not pending:
                return None

    def _check_head_bytes(self) -> None:
        """Reject, from the raw bytes, heads that h11 would accept or repair.

        The size limits count the whole head however it arrives, and obs-fold, bare CR
        and bare LF line ends are refused rather than repaired: each is a smuggling
        vector when a proxy in front reads the head differently.
        """
        limits = self.limits
        data = self.http.buffered()
        line_end = data.find(b"\n", 0, limits.max_request_line + 2)
        if line_end < 0:
            if len(data) > limits.max_request_line + 1:
                raise ProtocolError("request line too long", 414)
            return
        if line_end - (data[line_end - 1 : line_end] == b"\r") > limits.max_request_line:
            raise ProtocolError("request line too long", 414)
        match = _HEAD_END.search(data, line_end - 1 if line_end else 0)
        if match is None:
            if len(data) > limits.max_header_size:
                raise ProtocolError("request head too large", 431)
            return
        end = match.end()
        if end > limits.max_header_size:
            raise ProtocolError("request head too large", 431)
        lengths = _CONTENT_LENGTH_FIELD.findall(data, 0, end)
        if len(lengths) > 1 or (lengths and b"," in lengths[0]):
            raise ProtocolError("repeated Content-Length")
        _check_line_ends(data, 0, end, "request head")

    def _check_request(self, event: h11.Request) -> None:
        if event.http_version not in (b"1.1", b"1.0"):
            raise ProtocolError(f"HTTP/{event.http_version.decode()} is not supported", 505)
        if event.method == b"CONNECT":
            # A 2xx would turn the connection into a tunnel: duplex is not a proxy.
            raise ProtocolError("CONNECT is not supported", 501)
        _check_field_values(event.headers, "header")
        if _CONTROL.search(event.target):
            raise ProtocolError("control character in the request target")
        names = [name for name, _ in event.headers]
        if b"transfer-encoding" in names and b"content-length" in names:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        max_body = self.limits.max_body_size
        if max_body is not None and b"content-length" in names:
            length = int(dict(event.headers)[b"content-length"])
            if length > max_body:
                raise ProtocolError("request body too large", 413)

    # -- one exchange -----------------------------------------------------------------

    async def _exchange(self, event: h11.Request, last: bool) -> bool:
        """Serve one request; True if the connection may serve another."""
        http = self.http
        raw_headers = list(event.headers)
        headers = Headers._from_h11(raw_headers)
        length: int | None = 0  # no framing header: no body
        for name, value in raw_headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                length = None
        if length == 0:
            body = _empty_body(self.limits.body_buffer_size)
        else:
            body = Writable(self.limits.body_buffer_size, length=length)
        request = Request(
            event.method.decode("ascii"),
            event.target.decode("latin-1"),
            headers,
            body,
            http_version=event.http_version.decode("ascii"),
            client=self.client,
            scheme=self.scheme,
        )
        if length == 0:
            exchange = await self._inline_exchange(request, body, last)
        else:
            exchange = await self._nursery_exchange(request, body, length, last)
        if exchange is None:
            return False
        if exchange.failed or exchange.detached or not exchange.keep_alive:
            return False
        return http.h11.our_state is h11.DONE and http.h11.their_state is h11.DONE

    async def _inline_exchange(
        self, request: Request, body: Writable, last: bool
    ) -> _Exchange | None:
        """Answer a request without a body in the connection's own task: no nursery and
        no second task (``request.nursery`` lends the connection's nursery)."""
        event = self.http.next_event()  # a request without a body ends with its head
        if not isinstance(event, h11.EndOfMessage):
            raise ProtocolError(f"unexpected {type(event).__name__} in a request")
        exchange = _Exchange(request, body, trio.CancelScope())
        exchange.keep_alive = not last
        exchange.request_complete = True
        request._nursery = _InlineNursery(self, exchange)
        self.in_flight = exchange
        self._watch_later(exchange)
        try:
            with exchange.scope:
                await self._respond(exchange)
        finally:
            self.in_flight = None
            exchange.end_tasks()
            if exchange.tasks:
                with trio.CancelScope(shield=True):
                    exchange.tasks_done = trio.lowlevel.ParkingLot()
                    while exchange.tasks:
                        await exchange.tasks_done.park()
        return exchange

    async def _nursery_exchange(
        self, request: Request, body: Writable, length: int | None, last: bool
    ) -> _Exchange | None:
        """Serve a request with a body: this task reads it while another answers."""
        http = self.http
        error_status: int | None = None
        exchange: _Exchange | None = None
        try:
            async with trio.open_nursery() as nursery:
                request._nursery = ExchangeNursery(nursery)
                exchange = _Exchange(request, body, nursery.cancel_scope, nursery)
                exchange.keep_alive = not last
                exchange.expects_continue = http.h11.they_are_waiting_for_100_continue
                self.in_flight = exchange
                error_status = await self._run_exchange(exchange, length)
        except* (trio.BrokenResourceError, trio.ClosedResourceError) as group:
            # A task of the exchange met the peer leaving (or a body it closed itself).
            log.debug("a task of the exchange with %s stopped: %r", self.client, group)
            self._task_failed(exchange)
        except* Exception as group:
            log.error("a task of the exchange with %s failed", self.client, exc_info=group)
            self._task_failed(exchange)
        finally:
            self.in_flight = None
        assert exchange is not None
        if error_status is not None and not exchange.head_started:
            await _answer_and_close(http.stream, error_status, HTTPStatus(error_status).phrase)
            return None
        return exchange

    def _request_complete(self, exchange: _Exchange) -> None:
        exchange.request_complete = True
        self._watch_later(exchange)  # the socket is free to watch now

    @staticmethod
    def _task_failed(exchange: _Exchange | None) -> None:
        """A task in ``request.nursery`` raised: an unfinished response cannot go on."""
        if exchange is not None and not exchange.response_done:
            exchange.failed = True
            exchange.keep_alive = False

    async def _run_exchange(self, exchange: _Exchange, length: int | None) -> int | None:
        """Read the request and send the response, at once when the request has a body;
        the status to answer with if the request turned out bad."""
        nursery = exchange.nursery
        assert nursery is not None
        try:
            nursery.start_soon(self._respond, exchange)
            if not await self._pump_body(exchange):
                exchange.keep_alive = False
            self._request_complete(exchange)
        except ProtocolError as error:
            log.debug("bad request body from %s: %s", self.client, error)
            exchange.fail(trio.BrokenResourceError(f"bad request body: {error}"))
            return error.status
        except Timeout as error:
            log.debug("request body from %s timed out", self.client)
            exchange.fail(error)
            return 408
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.debug("peer %s went away mid-body: %r", self.client, error)
            exchange.fail(PeerGone("the peer closed the connection mid-body"))
        # The exchange is over once both messages are: leftover tasks stop then. A
        # detached connection is another protocol's now, and ends with its task.
        if exchange.response_done and not exchange.detached:
            exchange.end_tasks()
        return None

    async def _pump_body(self, exchange: _Exchange) -> bool:
        """Read the request body from the socket into ``request.body``.

        Returns True once the body has ended, False if the response ended first and
        more than ``max_drain_size`` bytes remained.
        """
        http, limits, body = self.http, self.limits, exchange.request_body
        if exchange.expects_continue:
            # 100 Continue only once the handler asks for the body, as RFC 9110 intends.
            await body.wait_reader()
            if http.h11.they_are_waiting_for_100_continue and not body.read_closed:
                await http.send(h11.InformationalResponse(status_code=100, headers=[]))
        received = 0
        drained = 0
        chunks = _ChunkedFraming(limits.max_header_size) if body.length is None else None
        while True:
            if chunks is not None:
                chunks.check(http.buffered())
            event = http.next_event()
            if (
                chunks is not None
                and chunks.size is not None
                and limits.max_body_size is not None
                and received + chunks.size > limits.max_body_size
            ):
                # A chunk announced past the limit is refused now, not once it arrived.
                raise ProtocolError("request body too large", 413)
            if chunks is not None:
                chunks.advance(event)
            if event is h11.NEED_DATA:
                await http.receive_data(limits.read_timeout, "read")
                continue
            if isinstance(event, h11.Data):
                received += len(event.data)
                if limits.max_body_size is not None and received > limits.max_body_size:
                    raise ProtocolError("request body too large", 413)
                if not body.read_closed:
                    try:
                        await body.write(event.data)
                        continue
                    except trio.BrokenResourceError:
                        pass
                drained += len(event.data)
                if drained > limits.max_drain_size:
                    return False
            elif isinstance(event, h11.EndOfMessage):
                _check_field_values(event.headers, "trailer")
                body.close_write_nowait()
                return True
            else:
                raise trio.BrokenResourceError("the peer closed the connection mid-body")

    async def _respond(self, exchange: _Exchange) -> None:
        request = exchange.request
        try:
            try:
                response = await self.server.handler(request)
                if not isinstance(response, Response):
                    raise TypeError(f"the handler returned {response!r}, not a duplex.Response")
            except Exception as error:
                if exchange.failed:
                    # The handler saw the exchange break under it (a request body cut or
                    # timed out): the peer's doing, answered by the connection task.
                    log.debug("handler for %s stopped: %r", request.target, error)
                    return
                log.exception("handler failed for %s %s", request.method, request.target)
                exchange.keep_alive = False
                response = Response(500, body="Internal Server Error")
            await self._send_response(exchange, response)
        except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
            if isinstance(error.__cause__, h11.LocalProtocolError):
                # h11 refused a message of ours (a body longer than its Content-Length,
                # say): the handler's bug, not the peer leaving.
                log.exception("response to %s %s failed", request.method, request.target)
                exchange.fail(error)
            else:
                log.debug("could not finish the response to %s: %r", self.client, error)
                exchange.fail(PeerGone("the peer went away"))
        except Exception as error:
            log.exception("response to %s %s failed", request.method, request.target)
            exchange.fail(error)
        finally:
            exchange.response_done = True
            exchange.stop_watching()
            exchange.request_body.close_read_nowait(ResponseEnded("the response has ended"))
            if exchange.request_complete and not exchange.detached:
                exchange.end_tasks()

    async def _send_response(self, exchange: _Exchange, response: Response) -> None:
        if isinstance(response.body, Takeover):
            await self._run_takeover(exchange, response.body)
            return
        http = self.http
        request = exchange.request
        headers = list(response.headers.raw)
        if self.closing or self.server.shutting_down or not exchange.keep_alive:
            headers.append((b"connection", b"close"))
        body = response.body
        status = response.status
        no_body = request.method == "HEAD" or status in _NO_BODY_STATUSES
        if status not in _NO_BODY_STATUSES and not any(
            name == b"content-length" for name, _ in headers
        ):
            length = len(body) if isinstance(body, bytes) else None
            if isinstance(body, Readable):
                length = body.length
            if length is not None:
                headers.append((b"content-length", str(length).encode()))
        # Response() validated every header and the reason already: h11 need not again.
        head = h11.Response(
            status_code=status,
            headers=headers,
            reason=response.reason or _REASONS.get(status, b""),
            _parsed=True,
        )
        # An exchange that failed meanwhile is cancelled here, before any byte goes out,
        # so that the connection task may still answer it with its own status.
        await trio.lowlevel.checkpoint_if_cancelled()
        exchange.head_started = True
        if isinstance(body, bytes):
            events: list[Any] = [head]
            if body and not no_body:
                events.append(h11.Data(data=body))
            events.append(h11.EndOfMessage())
            await http.send(*events)
            return
        if isinstance(body, Readable):
            exchange.response_body = body
            await http.send(head)
            if no_body:
                await body.aclose()
            else:
                await self._send_readable(body)
        elif isinstance(body, Streamable):
            await http.send(head)
            if not no_body:
                # The stream writes straight to the connection from this task: an echo
                # is the connection's task and this one, with no queue between them
                # and the socket.
                output = _DirectOutput(http)
                exchange.response_body = output
                await _run_streamable(body, Stream(request.body, output))
                if output.error is not None:
                    raise trio.BrokenResourceError("the response's stream failed") from (
                        output.error
                    )
        else:
            await http.send(head)
            if not no_body:
                await self._send_iterable(body)
        trailers = response.trailers.raw if response.trailers is not None else []
        await http.send(h11.EndOfMessage(headers=trailers))

    async def _run_takeover(self, exchange: _Exchange, takeover: Takeover) -> None:
        control = _Control(self, exchange)
        await takeover.fn(control)
        if control.detached:
            return
        if not exchange.head_started:
            exchange.keep_alive = False
            await control.start(500, {"content-type": "text/plain; charset=utf-8"})
            await control.write(b"the response ended before it began\n")
            await control.end()
        elif not control.ended:
            raise trio.BrokenResourceError("the response was left unfinished")

    async def _send_readable(self, body: Readable) -> None:
        send = self.http.send
        try:
            while chunk := await body.read():
                await send(h11.Data(data=chunk))
        finally:
            with trio.CancelScope(shield=True):
                await body.aclose()

    async def _send_iterable(self, body: AsyncIterable[bytes]) -> None:
        send = self.http.send
        async for chunk in body:
            if chunk:
                await send(h11.Data(data=chunk))


class _Control:
    """The server's side of a ``Takeover``: the exchange, handed to its function."""

    __slots__ = ("_connection", "_exchange", "detached", "ended")

    def __init__(self, connection: _ServerConnection, exchange: _Exchange) -> None:
        self._connection = connection
        self._exchange = exchange
        self.detached = False
        self.ended = False

    @property
    def request(self) -> Request:
        return self._exchange.request

    @property
    def gone(self) -> bool:
        return self._exchange.failed

    @property
    def server_closing(self) -> trio.Event:
        return self._connection.server.closing

    async def start(self, status: int, headers: HeadersLike | None = None) -> None:
        if self._exchange.head_started or self.detached:
            raise RuntimeError("the response has already started")
        response = Response(status, headers)
        raw = list(response.headers.raw)
        connection = self._connection
        if connection.closing or connection.server.shutting_down:
            raw.append((b"connection", b"close"))
        reason = _REASONS.get(status, b"")
        self._exchange.head_started = True
        await connection.http.send(h11.Response(status_code=status, headers=raw, reason=reason))

    async def write(self, data: bytes) -> None:
        if data and self._exchange.request.method != "HEAD":
            await self._connection.http.send(h11.Data(data=data))

    async def end(self) -> None:
        if not self.ended:
            self.ended = True
            await self._connection.http.send(h11.EndOfMessage())

    def write_nowait(self, data: bytes) -> bool | None:
        if self._exchange.request.method == "HEAD" or not data:
            return True
        return self._connection.http.write_nowait(data)

    async def flush(self) -> None:
        await self._connection.http.flush()

    @property
    def write_timeout(self) -> float | None:
        return self._connection.limits.write_timeout

    @property
    def can_watch(self) -> bool:
        exchange = self._exchange
        return (
            self._connection.http.direct
            and exchange.request_complete
            and not exchange.detached
            and not exchange.failed
        )

    async def wait_peer_gone(self) -> None:
        if not self.can_watch:
            await trio.sleep_forever()
        exchange = self._exchange
        exchange.self_watching = True
        exchange.stop_watching()  # a watcher task may be peeking already
        try:
            await self._connection.http.wait_peer_gone()
        finally:
            # Busy again (writing, say): a watcher task looks after it meanwhile.
            exchange.self_watching = False
            self._connection._watch_later(exchange)

    def on_server_closing(self, callback: Callable[[], object]) -> None:
        if self._connection.closing or self._connection.server.shutting_down:
            callback()
        else:
            self._exchange.on_server_closing = callback

    async def detach(self) -> tuple[trio.abc.Stream, bytes]:
        if self._exchange.head_started:
            raise RuntimeError("cannot detach once the response has started")
        exchange = self._exchange
        exchange.detached = self.detached = True
        exchange.keep_alive = False
        # The connection's watcher peeks at the socket for the peer leaving; it must
        # stop before the new protocol reads from it.
        exchange.stop_watching()
        await trio.lowlevel.checkpoint()
        http = self._connection.http
        return http.stream, http.h11.trailing_data[0]


class _DirectOutput(Writable):
    """The output of a ``Streamable``'s stream: each write goes to the connection at
    once, as an h11 ``Data`` event, in the writer's own task; it returns once the socket
    took the bytes. The queue of ``Writable`` stays empty; its closing rules hold.
    """

    def __init__(self, http: HTTPConnection) -> None:
        super().__init__(0)
        self._http = http

    @property
    def error(self) -> BaseException | None:
        """The error the output was closed with, if any."""
        return self._write_error

    async def write(self, data: BytesLike) -> None:
        """Send ``data`` as the next piece of the response body.

        Raises ``trio.ClosedResourceError`` after ``close_write``,
        ``trio.BrokenResourceError`` once the exchange failed or the peer left,
        ``duplex.Timeout`` if the peer takes nothing within the write timeout.
        """
        self._check_writable()
        if not data:
            await trio.lowlevel.checkpoint()
            return
        chunk = data if type(data) is bytes else bytes(data)
        await self._http.send(h11.Data(data=chunk))

    send_all = write


async def _run_streamable(body: Streamable, stream: Stream) -> None:
    """Run the user's ``fn(stream)``; the response ends when it returns."""
    try:
        await body.fn(stream)
    except Exception as error:
        if isinstance(error, trio.BrokenResourceError | trio.ClosedResourceError):
            log.debug("streamable %r stopped: %r", body.fn, error)  # the peer, not a bug
        else:
            log.exception("streamable %r failed", body.fn)
        if stream.output is not None:
            stream.output.close_write_nowait(error)
        await stream.close_read()
    else:
        await stream.aclose()
