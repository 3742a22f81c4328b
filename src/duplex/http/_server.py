"""The HTTP/1.1 server: full-duplex exchanges over h11, one task per connection.

The connection's task reads each request head, then runs the handler and sends the
response. Whoever reads ``request.body`` reads it from the socket, so the request may
stream in while the response streams out, with no task or queue between them. A
watcher task notices the peer leaving an exchange that lasts.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import logging
import math
import re
import select
import socket
import ssl
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from http import HTTPStatus
from math import inf
from typing import Any

import h11
import trio

from .._body import BytesLike, Readable, Writable, _Empty
from .._errors import ProtocolError, Timeout
from .._stream import Stream
from ._limits import Limits
from ._models import ExchangeNursery, Headers, HeadersLike, Request, Response, Streamable
from ._takeover import ResponseControl, Takeover
from ._transport import peek_gone
from .h1._wire import CONTINUE, ServerWire, comma_tokens

__all__ = ["Handler", "Server", "serve"]

log = logging.getLogger("duplex.server")

Handler = Callable[[Request], Awaitable[Response]]

#: How long an exchange runs before the watcher starts looking for its peer leaving.
WATCH_DELAY = 0.1
# Control characters other than HTAB: h11 lets all but NUL through in field values.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY_STATUSES = frozenset({204, 304})
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
#: Parked exchanges' deadlines are kept in buckets of 1/_TICKS s (fired at or after).
_TICKS = 4
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
        # Connections whose exchange in flight is to be looked at once it has lasted
        # WATCH_DELAY.
        self._watching: set[_ServerConnection] = set()
        self._watch_wakeup = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery  # the connections' (set by serve)
        # Parked exchanges (see ResponseControl.park): their connections by descriptor,
        # watched through one epoll set by one task; and their deadlines, in buckets.
        self._park_epoll: Any = None
        self._parked: dict[int, _ServerConnection] = {}
        self._timers: dict[int, set[_ServerConnection]] = {}
        self._timer_keys: list[int] = []
        self._park_scope: trio.CancelScope | None = None
        # Set once the server stops holding parked exchanges (it is stopping).
        self._parking_over = False

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
        if hasattr(select, "epoll"):
            self._park_epoll = select.epoll()
        try:
            with self._serve_scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._accept, nursery)
                    nursery.start_soon(self._schedule_watchers)
                    if self._park_epoll is not None:
                        nursery.start_soon(self._watch_parked)
                    task_status.started(self)
        finally:
            if self._park_epoll is not None:
                self._park_epoll.close()
        self._stopped.set()

    def _watch_later(self, connection: _ServerConnection) -> None:
        if not self._watching:
            self._watch_wakeup.unpark()
        self._watching.add(connection)

    async def _schedule_watchers(self) -> None:
        """Start a watcher for each exchange that lasts ``WATCH_DELAY``.

        One task for the whole server, so that a quick exchange costs no task and keeps
        nothing alive: the set holds connections (each once), and each look reads the
        exchange in flight. It wakes every half ``WATCH_DELAY`` while exchanges run,
        and sleeps while there are none.
        """
        watching = self._watching
        while True:
            if not watching:
                await self._watch_wakeup.park()
                continue
            await trio.sleep(WATCH_DELAY / 2)
            due = trio.current_time() - WATCH_DELAY
            for connection in list(watching):
                exchange = connection.in_flight
                if exchange is None:
                    watching.discard(connection)
                elif exchange.started <= due:
                    watching.discard(connection)
                    connection._start_watching(exchange)

    # -- parked exchanges ---------------------------------------------------------------

    def _park(self, connection: _ServerConnection) -> None:
        """Keep ``connection`` open with no task: its socket is watched here, and its
        exchange resumed (in a new task) when woken, when the peer leaves, at its
        deadline, or when the server stops."""
        exchange = connection.parked
        assert exchange is not None
        if exchange.wake_pending or exchange.failed or self._parking_over:
            self._resume(connection)
            return
        fd = connection.wire.fileno()
        self._park_epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self._parked[fd] = connection
        connection.park_fd = fd
        if exchange.park_deadline < inf:
            key = math.ceil(exchange.park_deadline * _TICKS)
            bucket = self._timers.get(key)
            if bucket is None:
                bucket = self._timers[key] = set()
                heapq.heappush(self._timer_keys, key)
                scope = self._park_scope
                if scope is not None and key / _TICKS < scope.deadline:
                    scope.deadline = key / _TICKS
            bucket.add(connection)
            connection.timer_key = key

    def _resume(self, connection: _ServerConnection) -> None:
        """Go on with ``connection``'s parked exchange in a new task (once)."""
        exchange = connection.parked
        if exchange is None:
            return
        connection.parked = None
        fd = connection.park_fd
        if fd is not None:
            connection.park_fd = None
            if self._parked.pop(fd, None) is not None:
                # (Not watched any more if data arrived, or the set is closed.)
                with contextlib.suppress(OSError, ValueError):
                    self._park_epoll.unregister(fd)
        key = connection.timer_key
        if key is not None:
            connection.timer_key = None
            bucket = self._timers.get(key)
            if bucket is not None:
                bucket.discard(connection)
                if not bucket:
                    del self._timers[key]
        self._nursery.start_soon(connection.run, exchange)

    def _wake(self, connection: _ServerConnection, exchange: _Exchange) -> None:
        if connection.parked is not exchange:
            return
        if connection.park_fd is None and connection.timer_key is None:
            exchange.wake_pending = True  # still on its way out of its task
        else:
            self._resume(connection)

    async def _watch_parked(self) -> None:
        """The one task behind every parked exchange: it waits for their sockets (one
        epoll set, itself watched by trio) and their deadlines."""
        epoll = self._park_epoll
        try:
            while True:
                keys = self._timer_keys
                while keys and keys[0] not in self._timers:
                    heapq.heappop(keys)
                with trio.CancelScope(deadline=keys[0] / _TICKS if keys else inf) as scope:
                    self._park_scope = scope
                    await trio.lowlevel.wait_readable(epoll.fileno())
                self._park_scope = None
                now = trio.current_time()
                while keys and keys[0] / _TICKS <= now:
                    for connection in list(self._timers.pop(heapq.heappop(keys), ())):
                        self._resume(connection)
                for fd, _ in epoll.poll(0):
                    parked = self._parked.get(fd)
                    if parked is None:
                        continue
                    connection = parked
                    gone = peek_gone(connection.wire.socket())
                    if gone is None:
                        continue  # nothing after all
                    if not gone:
                        # Data waits unread (a pipelined request): whether the peer is
                        # still there cannot be told any more; stop looking.
                        epoll.unregister(fd)
                        self._parked.pop(fd, None)
                        continue
                    exchange = connection.parked
                    if exchange is not None:
                        log.debug("peer %s left a parked exchange", connection.client)
                        exchange.fail(PeerGone("the peer closed the connection"))
                    self._resume(connection)
        finally:
            # Stopping (or cancelled): every parked exchange ends in its own task, which
            # starts cancelled, so that its cleanup (a channel's on_close) still runs.
            self._parking_over = True
            self._park_scope = None
            for connection in list(self._parked.values()):
                self._resume(connection)
            for bucket in list(self._timers.values()):
                for connection in list(bucket):
                    self._resume(connection)

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
        await connection.run()

    def _connection_closed(self, connection: _ServerConnection) -> None:
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


def _check_field_values(fields: Iterable[tuple[bytes, bytes]], what: str) -> None:
    for name, value in fields:
        if _CONTROL.search(value):
            raise ProtocolError(f"control character in the {name.decode()} {what}")


class _Exchange:
    """One request and its response, with what each side knows of the other."""

    __slots__ = (
        "body_waiting",
        "continue_sent",
        "detached",
        "error_status",
        "expects_continue",
        "failed",
        "head_started",
        "http_10",
        "keep_alive",
        "on_server_closing",
        "over",
        "park_deadline",
        "request",
        "request_body",
        "request_complete",
        "response_body",
        "response_done",
        "resume",
        "scope",
        "self_watching",
        "started",
        "task_scopes",
        "tasks",
        "tasks_done",
        "wake_pending",
        "watch_scope",
        "watch_wanted",
    )

    def __init__(
        self, request: Request, body: _RequestBody | _Empty, scope: trio.CancelScope
    ) -> None:
        self.request = request
        self.request_body = body
        self.started = trio.current_time()
        #: Cancels the handler and everything else of the exchange.
        self.scope = scope
        self.response_body: Readable | None = None
        self.head_started = False
        self.response_done = False
        self.failed = False
        self.keep_alive = True
        self.http_10 = False
        self.expects_continue = False
        self.continue_sent = False
        self.detached = False
        self.request_complete = False
        self.over = False
        #: The status the connection answers with if the request turns out bad before
        #: the response began (its body too large, malformed, too slow).
        self.error_status: int | None = None
        # Made by the connection's watcher when it starts watching this exchange.
        self.watch_scope: trio.CancelScope | None = None
        # Set when the exchange's own task watches for the peer leaving (a channel
        # waiting for news): no watcher task is started for it then.
        self.self_watching = False
        # Set while a reader of the request body waits on the socket (a watcher must not
        # wait on it too), and when a watcher is wanted once it stops.
        self.body_waiting = False
        self.watch_wanted = False
        #: Called when the server starts shutting down while this exchange runs.
        self.on_server_closing: Callable[[], object] | None = None
        # Parking (ResponseControl.park): what to run when resumed, when at the latest,
        # and whether a wake came while the exchange was still leaving its task.
        self.resume: Callable[[ResponseControl], Awaitable[object]] | None = None
        self.park_deadline = inf
        self.wake_pending = False
        # Tasks in request.nursery (see _InlineNursery): started, and their scopes.
        self.tasks = 0
        # (Made with the first task: most exchanges have none.)
        self.task_scopes: set[trio.CancelScope] | None = None
        self.tasks_done: trio.lowlevel.ParkingLot | None = None

    def stop_watching(self) -> None:
        if self.watch_scope is not None:
            self.watch_scope.cancel()
            self.watch_scope = None
            self.watch_wanted = True

    def cancel(self) -> None:
        """Cancel the handler and the exchange's tasks."""
        self.scope.cancel()
        for scope in self.task_scopes or ():
            scope.cancel()

    def end_tasks(self) -> None:
        """The exchange is over: cancel the tasks left in ``request.nursery``, if any."""
        self.over = True
        for scope in self.task_scopes or ():
            scope.cancel()

    def close_request_body(self, error: BaseException) -> None:
        """The response has ended: the request body's reader stops, without data lost
        for the connection (which drains what is left)."""
        self.request_body.close_read_nowait(error)

    def fail(self, error: BaseException) -> None:
        """The exchange cannot go on: wake both bodies with ``error`` and cancel."""
        self.failed = True
        self.keep_alive = False
        if isinstance(self.request_body, _RequestBody):
            self.request_body.fail(error)
        response_body = self.response_body
        if isinstance(response_body, Writable):
            response_body.close_read_nowait(error)
        self.cancel()


class _InlineNursery(ExchangeNursery):
    """``request.nursery``: its tasks run in the server's nursery, each in a scope the
    exchange cancels at its end (the connection's task runs the handler, so an exchange
    needs no nursery of its own)."""

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


class _RequestBody(Readable):
    """``request.body`` of a request with a body, read from the connection by whichever
    task reads it: no task and no queue stand between the socket and the reader.

    It reads only while someone reads it (so the peer is held back by TCP itself), sends
    ``100 Continue`` when first read if the client waits for it, and fails the exchange
    when the body turns out bad (the connection then answers 400, 408, 413 or 431 if the
    response has not begun). Bytes read from the socket are in the connection's buffer
    before any wait ends, so a cancelled read loses none of them.
    """

    __slots__ = ("_closed", "_connection", "_ended", "_error", "_exchange", "_length", "_wait")

    def __init__(self, connection: _ServerConnection, length: int | None) -> None:
        self._connection = connection
        self._exchange: _Exchange | None = None  # set once the exchange exists
        self._length = length
        self._ended = False
        self._closed = False
        self._error: BaseException | None = None
        # Cancels the reader's wait for the socket (the body closed or failed meanwhile).
        self._wait: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<request body length={self._length} ended={self._ended}>"

    @property
    def length(self) -> int | None:
        return self._length

    @property
    def is_empty(self) -> bool:
        return self._closed or self._ended or self._error is not None

    def fail(self, error: BaseException) -> None:
        """Later reads raise ``trio.BrokenResourceError`` from ``error``."""
        if self._error is None and not self._ended:
            self._error = error
        self._wake()

    def close_read_nowait(self, error: BaseException | None = None) -> None:
        """The reader gives up (or the response ended): later reads raise
        ``trio.ClosedResourceError``."""
        self._closed = True
        self._pushback = b""
        self._wake()

    def _wake(self) -> None:
        if self._wait is not None:
            self._wait.cancel()

    async def aclose(self, error: BaseException | None = None) -> None:
        self.close_read_nowait(error)
        await trio.lowlevel.checkpoint()

    async def _receive(self, max_bytes: int | None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        connection = self._connection
        exchange = self._exchange
        assert exchange is not None
        waited = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this body was closed by its reader")
            if self._error is not None:
                error = trio.BrokenResourceError("the request body broke")
                error.__cause__ = self._error
                raise error
            if self._ended:
                data = b""
                break
            try:
                piece = connection.wire.take_body(max_bytes)
            except ProtocolError as error:
                connection._body_failed(exchange, error)
                continue
            if piece is not None:
                data = piece
                if not data:
                    self._ended = True
                    connection._request_complete(exchange)
                break
            waited = True
            await self._fill(exchange)
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def _fill(self, exchange: _Exchange) -> None:
        """Read more of the body from the socket (in the reader's own task)."""
        connection = self._connection
        wire = connection.wire
        if exchange.expects_continue and not exchange.continue_sent:
            # 100 Continue only once the handler asks for the body, as RFC 9110 intends.
            exchange.continue_sent = True
            if not exchange.head_started and not wire.body_received and not wire.buffered:
                try:
                    await wire.send_raw(CONTINUE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout):
                    exchange.fail(PeerGone("the peer went away"))
                    return
        try:
            if wire.fill_nowait() is not None:
                await wire.spend()
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.debug("peer %s went away mid-body: %r", connection.client, error)
            exchange.fail(PeerGone("the peer closed the connection mid-body"))
            return
        # Nothing to read yet: wait for it, in a scope that closing the body cancels.
        exchange.stop_watching()  # a watcher must not wait on the socket with us
        exchange.body_waiting = True
        self._wait = trio.CancelScope()
        try:
            with self._wait:
                await wire.fill(connection.limits.read_timeout, "read")
        except Timeout as error:
            log.debug("request body from %s timed out", connection.client)
            connection._body_failed(exchange, error)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.debug("peer %s went away mid-body: %r", connection.client, error)
            exchange.fail(PeerGone("the peer closed the connection mid-body"))
        finally:
            self._wait = None
            exchange.body_waiting = False
            if exchange.watch_wanted:
                exchange.watch_wanted = False
                connection._watch_later(exchange)


class _ServerConnection:
    __slots__ = (
        "cancel_scope",
        "client",
        "closing",
        "failed_exchange",
        "idle",
        "in_flight",
        "limits",
        "park_fd",
        "parked",
        "scheme",
        "served",
        "server",
        "timer_key",
        "wire",
    )

    def __init__(
        self, server: Server, stream: trio.abc.Stream, client: tuple[str, int] | None
    ) -> None:
        self.server = server
        self.limits = limits = server.limits
        self.wire = ServerWire(
            stream,
            max_header_size=limits.max_header_size,
            max_request_line=limits.max_request_line,
            max_body_size=limits.max_body_size,
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
        #: The exchange whose request turned out bad, answered (if it can still be)
        #: once the connection's task has stopped.
        self.failed_exchange: _Exchange | None = None
        #: Requests read so far.
        self.served = 0
        #: The exchange parked (ResponseControl.park): the connection then has no task.
        self.parked: _Exchange | None = None
        # Where the server watches a parked exchange: its descriptor, its deadline's
        # bucket.
        self.park_fd: int | None = None
        self.timer_key: int | None = None

    @property
    def nursery(self) -> trio.Nursery:
        """Where the connection's helper tasks run (a watcher, the tasks of
        ``request.nursery``): the server's, so that a connection needs no nursery."""
        return self.server._nursery

    def shutdown(self) -> None:
        self.closing = True
        if self.idle:
            self.cancel_scope.cancel()
            return
        exchange = self.in_flight
        if exchange is not None and exchange.on_server_closing is not None:
            exchange.on_server_closing()

    async def run(self, resumed: _Exchange | None = None) -> None:
        """Serve the connection until it ends or parks; with ``resumed``, go on with
        that parked exchange first (in a new task)."""
        if resumed is not None:
            # A scope is good for one task: the exchange gets the new task's.
            self.cancel_scope = resumed.scope = trio.CancelScope()
            resumed.wake_pending = False
            if resumed.failed or self.server._parking_over:
                self.cancel_scope.cancel()
        try:
            with self.cancel_scope:
                await self._run(resumed)
            if self.parked is not None:
                self.server._park(self)
                return
            exchange = self.failed_exchange
            if exchange is not None and exchange.error_status and not exchange.head_started:
                status = exchange.error_status
                await _answer_and_close(self.wire.stream, status, HTTPStatus(status).phrase)
        finally:
            if self.parked is None:
                await self.wire.aclose()
                self.server._connection_closed(self)

    def _watch_later(self, exchange: _Exchange) -> None:
        """Have the server look at ``exchange`` once it has lasted ``WATCH_DELAY``."""
        self.server._watch_later(self)

    def _start_watching(self, exchange: _Exchange) -> None:
        """Start a task that notices the peer leaving mid-exchange, if still useful.

        Only while no one else waits on the socket (a reader of the request body, or the
        exchange's own task), and only for an exchange still running. The task peeks at
        the socket, reading nothing, and fails the exchange when the peer closes or
        resets the connection.
        """
        if (
            exchange is not self.in_flight
            or exchange.response_done
            or exchange.detached
            or exchange.failed
            or exchange.self_watching
            or exchange.watch_scope is not None
        ):
            return
        if exchange.body_waiting:
            exchange.watch_wanted = True  # the reader asks again once it stops waiting
            return
        exchange.watch_scope = trio.CancelScope()
        self.nursery.start_soon(self._watch, exchange, exchange.watch_scope)

    async def _watch(self, exchange: _Exchange, scope: trio.CancelScope) -> None:
        with scope:
            if (
                exchange is not self.in_flight
                or exchange.response_done
                or exchange.detached
                or exchange.self_watching
                or exchange.body_waiting
            ):
                return
            await self.wire.wait_peer_gone()
            log.debug("peer %s went away mid-exchange", self.client)
            exchange.fail(PeerGone("the peer closed the connection"))

    async def _run(self, resumed: _Exchange | None) -> None:
        try:
            try:
                await self._serve(resumed)
            except ProtocolError as error:
                log.debug("bad request from %s: %s", self.client, error)
                await _answer_and_close(self.wire.stream, error.status, str(error))
            except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
                log.debug("connection from %s ended: %r", self.client, error)
        except Exception:
            log.exception("unexpected error serving %s", self.client)

    async def _serve(self, resumed: _Exchange | None) -> None:
        limits = self.limits
        if resumed is not None:
            assert resumed.resume is not None
            if not await self._run_exchange(resumed, resumed.resume) or self.parked:
                return
            self.wire.next_request()
        started = trio.current_time()
        while not self.closing:
            self.idle = True
            event = await self._read_head(started, first=self.served == 0)
            if event is None:
                return
            self.idle = False
            self.served += 1
            fields = self._check_request(event)
            last = (
                limits.max_requests_per_connection is not None
                and self.served >= limits.max_requests_per_connection
            )
            if not await self._exchange(event, fields, last) or self.parked:
                return
            started = trio.current_time()
            self.wire.next_request()

    # -- the request head -------------------------------------------------------------

    async def _read_head(self, started: float, *, first: bool) -> h11.Request | None:
        """The next request's head, or None when the peer closes or idles out.

        Raises ``ProtocolError`` with the status to answer (400, 408, 414, 431, 501).
        """
        limits = self.limits
        wire = self.wire
        head_deadline = inf if limits.header_timeout is None else started + limits.header_timeout
        idle_deadline = head_deadline
        if not first and limits.keep_alive_timeout is not None:
            idle_deadline = min(head_deadline, started + limits.keep_alive_timeout)
        while True:
            if wire.buffered:
                event = wire.parse_head()
                if event is not None:
                    return event
            pending = wire.buffered > 0
            if wire.eof:
                if pending:
                    raise ProtocolError("the peer closed the connection mid-head")
                return None
            try:
                await wire.fill(deadline=head_deadline if pending else idle_deadline)
            except Timeout:
                if pending:
                    raise ProtocolError("the request head did not arrive in time", 408) from None
                return None

    def _check_request(self, event: h11.Request) -> list[tuple[bytes, bytes]]:
        """The request's header fields, once checked beyond what h11 checks."""
        if event.http_version not in (b"1.1", b"1.0"):
            raise ProtocolError(f"HTTP/{event.http_version.decode()} is not supported", 505)
        if event.method == b"CONNECT":
            # A 2xx would turn the connection into a tunnel: duplex is not a proxy.
            raise ProtocolError("CONNECT is not supported", 501)
        fields = list(event.headers)
        if self.wire.head_has_controls:
            _check_field_values(fields, "header")
            if _CONTROL.search(event.target):
                raise ProtocolError("control character in the request target")
        names = [name for name, _ in fields]
        if b"transfer-encoding" in names and b"content-length" in names:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        return fields

    # -- one exchange -----------------------------------------------------------------

    async def _exchange(
        self, event: h11.Request, raw_headers: list[tuple[bytes, bytes]], last: bool
    ) -> bool:
        """Serve one request in this task; True if the connection may serve another.

        The handler runs here; whoever reads the request body reads it from the socket.
        What the response leaves unread is drained here afterwards.
        """
        wire = self.wire
        length: int | None = 0  # no framing header: no body
        for name, value in raw_headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                length = None  # chunked: h11 accepts no other coding
        max_body = self.limits.max_body_size
        if length and max_body is not None and length > max_body:
            raise ProtocolError("request body too large", 413)
        body: _RequestBody | _Empty
        if length == 0:
            body = _Empty()
        else:
            body = _RequestBody(self, length)
            wire.begin_body(length)
        request = Request(
            event.method.decode("ascii"),
            event.target.decode("latin-1"),
            Headers._from_h11(raw_headers),
            body,
            http_version=event.http_version.decode("ascii"),
            client=self.client,
            scheme=self.scheme,
        )
        # A failed exchange ends its connection: the connection's scope is its scope.
        exchange = _Exchange(request, body, self.cancel_scope)
        http_10 = event.http_version == b"1.0"
        exchange.http_10 = http_10
        closes = b"close" in comma_tokens(raw_headers, b"connection")
        exchange.keep_alive = not (last or http_10 or closes)
        if length == 0:
            exchange.request_complete = True
        else:
            assert isinstance(body, _RequestBody)
            body._exchange = exchange
            exchange.expects_continue = not http_10 and b"100-continue" in comma_tokens(
                raw_headers, b"expect"
            )
        request._nursery = _InlineNursery(self, exchange)
        self._watch_later(exchange)
        return await self._run_exchange(exchange)

    async def _run_exchange(
        self,
        exchange: _Exchange,
        resume: Callable[[ResponseControl], Awaitable[object]] | None = None,
    ) -> bool:
        """Answer ``exchange`` (or, with ``resume``, go on with it once parked); True if
        the connection may serve another request. Returns False, leaving everything
        as it is, when the exchange parks."""
        wire = self.wire
        self.in_flight = exchange
        try:
            await self._respond(exchange, resume)
            if self.parked is not None:
                return False
            if not (exchange.request_complete or exchange.failed or exchange.detached):
                await self._drain(exchange)
        finally:
            if self.parked is None:
                self.in_flight = None
                exchange.end_tasks()
                if exchange.tasks:
                    with trio.CancelScope(shield=True):
                        exchange.tasks_done = trio.lowlevel.ParkingLot()
                        while exchange.tasks:
                            await exchange.tasks_done.park()
        return (
            exchange.keep_alive
            and exchange.request_complete
            and wire.response_ended
            and not (exchange.failed or exchange.detached)
        )

    async def _drain(self, exchange: _Exchange) -> None:
        """Read and drop what the response left of the request body, up to
        ``max_drain_size``; past it, or on any error, the connection will close."""
        wire = self.wire
        if exchange.expects_continue and not exchange.continue_sent and not wire.buffered:
            # The client waits for a 100 Continue that will not come now: it may or may
            # not send the body, so the connection cannot be read reliably any more.
            exchange.keep_alive = False
            return
        drained = 0
        try:
            while True:
                data = wire.take_body()
                if data is None:
                    await wire.fill(self.limits.read_timeout, "read")
                    continue
                if not data:
                    exchange.request_complete = True
                    return
                drained += len(data)
                if drained > self.limits.max_drain_size:
                    exchange.keep_alive = False
                    return
        except (ProtocolError, Timeout, trio.BrokenResourceError) as error:
            log.debug("draining the request body of %s: %r", self.client, error)
            exchange.keep_alive = False

    def _request_complete(self, exchange: _Exchange) -> None:
        exchange.request_complete = True
        self._watch_later(exchange)  # the socket is free to watch now

    def _body_failed(self, exchange: _Exchange, error: ProtocolError | Timeout) -> None:
        """The request body turned out bad: answer with its status if still possible."""
        status = 408 if isinstance(error, Timeout) else error.status
        log.debug("bad request body from %s: %s", self.client, error)
        if exchange.error_status is None:
            exchange.error_status = status
            self.failed_exchange = exchange
        if isinstance(error, Timeout):
            exchange.fail(error)
        else:
            exchange.fail(trio.BrokenResourceError(f"bad request body: {error}"))

    @staticmethod
    def _task_failed(exchange: _Exchange | None) -> None:
        """A task in ``request.nursery`` raised: an unfinished response cannot go on."""
        if exchange is not None and not exchange.response_done:
            exchange.failed = True
            exchange.keep_alive = False

    async def _respond(
        self,
        exchange: _Exchange,
        resume: Callable[[ResponseControl], Awaitable[object]] | None = None,
    ) -> None:
        request = exchange.request
        try:
            if resume is not None:
                # A parked exchange goes on where it left off.
                exchange.self_watching = False
                await self._run_takeover(exchange, resume)
                return
            try:
                response = await self.server.handler(request)
                if not isinstance(response, Response):
                    raise TypeError(f"the handler returned {response!r}, not a duplex.Response")
            except Exception as error:
                if exchange.failed:
                    # The handler saw the exchange break under it (a request body cut or
                    # timed out): the peer's doing, answered by the connection.
                    log.debug("handler for %s stopped: %r", request.target, error)
                    return
                log.exception("handler failed for %s %s", request.method, request.target)
                exchange.keep_alive = False
                response = Response(500, body="Internal Server Error")
            await self._send_response(exchange, response)
        except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
            if isinstance(error.__cause__, h11.LocalProtocolError):
                # A response HTTP cannot carry (a body longer than its Content-Length,
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
            if self.parked is None:
                exchange.response_done = True
                exchange.stop_watching()
                exchange.close_request_body(ResponseEnded("the response has ended"))
                if exchange.request_complete and not exchange.detached:
                    exchange.end_tasks()

    def _head(
        self, exchange: _Exchange, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        """The response head; the exchange learns whether the connection closes after."""
        keep_alive = exchange.keep_alive and not (self.closing or self.server.shutting_down)
        head, closes = self.wire.response_head(
            status,
            reason,
            headers,
            head=exchange.request.method == "HEAD",
            http_10=exchange.http_10,
            keep_alive=keep_alive,
        )
        if closes:
            exchange.keep_alive = False
        exchange.head_started = True
        return head

    async def _send_response(self, exchange: _Exchange, response: Response) -> None:
        if isinstance(response.body, Takeover):
            await self._run_takeover(exchange, response.body.fn)
            return
        wire = self.wire
        request = exchange.request
        headers = list(response.headers.raw)
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
                headers.append((b"content-length", b"%d" % length))
        # An exchange that failed meanwhile is cancelled here, before any byte goes out,
        # so that the connection may still answer it with its own status.
        await trio.lowlevel.checkpoint_if_cancelled()
        head = self._head(exchange, status, response.reason or _REASONS.get(status, b""), headers)
        if isinstance(body, bytes):
            pieces = [head]
            if body and not no_body:
                pieces += wire.frame(body)
            pieces += wire.end()
            await wire.send_pieces(pieces)
            return
        if isinstance(body, Readable):
            exchange.response_body = body
            await wire.send_raw(head)
            if no_body:
                await body.aclose()
            else:
                await self._send_readable(body)
        elif isinstance(body, Streamable):
            await wire.send_raw(head)
            if not no_body:
                # The stream writes straight to the connection from this task, and
                # reads the request body straight from it: an echo is one task.
                output = _DirectOutput(wire)
                exchange.response_body = output
                await _run_streamable(body, Stream(request.body, output))
                if output.error is not None:
                    raise trio.BrokenResourceError("the response's stream failed") from (
                        output.error
                    )
        else:
            await wire.send_raw(head)
            if not no_body:
                await self._send_iterable(body)
        trailers = response.trailers.raw if response.trailers is not None else None
        await wire.send_pieces(wire.end(trailers))

    async def _run_takeover(
        self, exchange: _Exchange, fn: Callable[[ResponseControl], Awaitable[object]]
    ) -> None:
        control = _Control(self, exchange)
        await fn(control)
        if control.parking:
            self.parked = exchange  # the stack unwinds; run() hands it to the server
            return
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
        wire = self.wire
        try:
            while chunk := await body.read():
                await wire.send_pieces(wire.frame(chunk))
        finally:
            with trio.CancelScope(shield=True):
                await body.aclose()

    async def _send_iterable(self, body: AsyncIterable[bytes]) -> None:
        wire = self.wire
        async for chunk in body:
            if chunk:
                await wire.send_pieces(wire.frame(chunk))


class _Control:
    """The server's side of a ``Takeover``: the exchange, handed to its function."""

    __slots__ = ("_connection", "_exchange", "detached", "ended", "parking")

    def __init__(self, connection: _ServerConnection, exchange: _Exchange) -> None:
        self._connection = connection
        self._exchange = exchange
        self.detached = False
        self.ended = False
        self.parking = False

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
        head = self._connection._head(
            self._exchange, status, _REASONS.get(status, b""), list(response.headers.raw)
        )
        await self._connection.wire.send_raw(head)

    async def write(self, data: bytes) -> None:
        if data and self._exchange.request.method != "HEAD":
            wire = self._connection.wire
            await wire.send_pieces(wire.frame(data))

    async def end(self) -> None:
        if not self.ended:
            self.ended = True
            wire = self._connection.wire
            await wire.send_pieces(wire.end())

    def write_nowait(self, data: bytes) -> bool | None:
        if self._exchange.request.method == "HEAD" or not data:
            return True
        wire = self._connection.wire
        if not wire.can_write_nowait:
            return None
        return wire.write_nowait(wire.frame(data))

    async def flush(self) -> None:
        await self._connection.wire.flush()

    @property
    def write_timeout(self) -> float | None:
        return self._connection.limits.write_timeout

    @property
    def can_watch(self) -> bool:
        exchange = self._exchange
        return (
            self._connection.wire.direct
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
        exchange.watch_wanted = False
        try:
            await self._connection.wire.wait_peer_gone()
        finally:
            # Busy again (writing, say): a watcher task looks after it meanwhile.
            exchange.self_watching = False
            self._connection._watch_later(exchange)

    @property
    def can_park(self) -> bool:
        server = self._connection.server
        return self.can_watch and server._park_epoll is not None and not server._parking_over

    def park(
        self, resume: Callable[[ResponseControl], Awaitable[object]], deadline: float = inf
    ) -> bool:
        if not self.can_park or self.parking:
            return False
        exchange = self._exchange
        exchange.resume = resume
        exchange.park_deadline = deadline
        exchange.wake_pending = False
        # The server watches a parked exchange itself: no watcher task for it.
        exchange.self_watching = True
        exchange.stop_watching()
        exchange.watch_wanted = False
        self.parking = True
        return True

    def wake(self) -> None:
        self._connection.server._wake(self._connection, self._exchange)

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
        wire = self._connection.wire
        return wire.stream, wire.leftover()


class _DirectOutput(Writable):
    """The output of a ``Streamable``'s stream: each write goes to the connection at
    once, framed as the response body, in the writer's own task; it returns once the
    socket took the bytes. The queue of ``Writable`` stays empty; its closing rules hold.
    """

    def __init__(self, wire: ServerWire) -> None:
        super().__init__(0)
        self._wire = wire

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
        wire = self._wire
        await wire.send_pieces(wire.frame(chunk))

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
