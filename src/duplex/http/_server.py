"""The server: listen, accept, and shut down gracefully.

Each accepted connection is served by its protocol's driver: HTTP/1.1 (``h1``), or
HTTP/2 (``h2``) when TLS's ALPN selects ``h2`` or a cleartext connection opens with the
HTTP/2 preface (which the HTTP/1.1 driver notices as it reads its first head, and hands
over). An HTTP/1.1 exchange that lasts is watched for its peer leaving, and one with
nothing to do may park (``_parking``). What the fast Linux path may use is asked of
``_platform`` when the server starts.

Around the serving: the application's lifespan (and a handler that is an async context
manager) is entered before the server listens and exited once it has stopped; ``run``
(and the command line) serves a process until SIGINT or SIGTERM.
"""

from __future__ import annotations

import errno
import logging
import math
import signal
import socket
import ssl
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from functools import partial
from types import TracebackType
from typing import Any, Protocol, TypedDict, Unpack

import trio

from ._limits import Limits
from ._models import Request, Response
from ._parking import Parking, Watchers
from ._platform import capabilities
from ._transport import Transport, raw_socket
from .h1._bodies import PeerGone
from .h1._closing import answer_and_close
from .h1._connection import ServerConnection
from .h2._connection import H2ServerConnection

__all__ = [
    "Handler",
    "Lifespan",
    "PeerGone",
    "Server",
    "enter_application",
    "run",
    "serve",
    "serve_process",
    "serve_until_signal",
    "show_access_log",
]

log = logging.getLogger("duplex.server")
#: Where ``access_log=True`` writes one line per exchange (INFO, the common log format).
access_log = logging.getLogger("duplex.access")

Handler = Callable[[Request], Awaitable[Response]]
#: What ``lifespan=`` takes: called with no arguments, it returns an async context
#: manager that the server enters before it listens and exits once it has stopped.
Lifespan = Callable[[], AbstractAsyncContextManager[object]]

#: Connections accepted at most per wake-up of the accept loop.
_ACCEPT_BURST = 64
# As trio's SocketListener: out of descriptors or memory (wait, then try again), and a
# connection that failed before it was accepted (skip it).
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_IGNORED_ACCEPT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})


class Connection(Protocol):
    """A connection as the server sees it, whatever its protocol."""

    @property
    def busy(self) -> bool:
        """True while an exchange is in flight (a shutdown waits for it)."""

    def shutdown(self) -> None:
        """Begin a graceful close (HTTP/2: GOAWAY); idle, close at once."""


class Server:
    """An HTTP/1.1 and HTTP/2 server that runs ``handler`` for every request.

    Start it with ``server = await nursery.start(server.serve)`` (or ``duplex.serve``);
    ``port`` is then the bound port. ``shutdown()`` stops it gracefully.

    ``http2`` (on by default) serves HTTP/2: over TLS it offers ALPN ``h2`` and
    ``http/1.1`` on ``ssl_context`` (setting them on the context given), and a cleartext
    connection that opens with the HTTP/2 preface speaks h2c (prior knowledge;
    ``Upgrade: h2c`` is ignored).

    ``sock``, a socket already bound and listening, is served instead of binding
    ``host``:``port`` (each worker of ``duplex serve --workers`` serves one that its
    supervisor holds).

    ``lifespan`` (called with no arguments) returns an async context manager, entered
    once before the server listens and exited after the last exchange has ended at
    shutdown; a ``handler`` that is itself an async context manager is entered the same
    way (after the lifespan, and exited before it).

    ``access_log`` logs one line per exchange in the common log format to the
    ``duplex.access`` logger at INFO (which it sets to INFO when it serves, unless the
    logger has a level of its own: asked for, the lines must not fall below the root's
    WARNING); the size is the response body's bytes sent (``-`` for none, as for the
    status of an exchange that sent no response).
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
        sock: socket.socket | None = None,
        http2: bool = True,
        lifespan: Lifespan | None = None,
        access_log: bool = False,
    ) -> None:
        self.handler = handler
        self.lifespan = lifespan
        self.access_log = access_log
        self.host = host
        self.requested_port = port
        self.limits = limits or Limits()
        self.ssl_context = ssl_context
        self.reuse_port = reuse_port
        self.sock = sock
        self.http2 = http2
        if ssl_context is not None and http2:
            ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        self.listeners: list[trio.SocketListener] = []
        self.shutting_down = False
        #: True once ``shutdown(restart=True)`` starts: WebSocket channels then close
        #: with 1012 (service restart) rather than 1001.
        self.restarting = False
        self._connections: set[Connection] = set()
        self._connections_changed = trio.lowlevel.ParkingLot()
        self._accept_scope = trio.CancelScope()
        self._serve_scope = trio.CancelScope()
        self._stopped = trio.Event()
        # The grace period of a shutdown under way (a second call may shorten it).
        self._grace: trio.CancelScope | None = None
        #: Set when ``shutdown()`` starts; long-lived exchanges (channels) watch it.
        self.closing = trio.Event()
        #: Starts a watcher task for each exchange that lasts.
        self.watchers = Watchers()
        #: Holds parked exchanges (made by ``serve``).
        self.parking: Parking
        #: Where connections and their helper tasks run (made by ``serve``).
        self.nursery: trio.Nursery
        self._direct_io = True
        #: What the application's own code raised while the lifespan (or the handler)
        #: was entered or exited, if it did: ``serve_process`` reports it as such.
        self.application_failure: ApplicationFailure | None = None

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

    @property
    def busy_connections(self) -> int:
        """Connections with an exchange in flight right now (idle keep-alive ones are
        not: a shutdown closes those at once)."""
        return sum(1 for connection in self._connections if connection.busy)

    async def _listen(self) -> trio.SocketListener:
        if self.sock is not None:
            return trio.SocketListener(trio.socket.from_stdlib_socket(self.sock))
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

    async def serve(
        self, *, task_status: Any = trio.TASK_STATUS_IGNORED, listen: bool = True
    ) -> None:
        """Enter the lifespan (and the handler, if it is an async context manager),
        listen, and serve until ``shutdown()`` finishes or the caller is cancelled; then
        exit them.

        ``task_status.started`` receives this server once it is listening. With
        ``listen=False`` it opens no socket and serves only the streams given to
        ``serve_stream`` (``duplex.testing`` does so). Raises what entering the lifespan
        raises (before listening), and ``OSError`` if it cannot listen.
        """
        platform = capabilities()
        self._direct_io = platform.direct_io
        if self.access_log and access_log.level == logging.NOTSET:
            access_log.setLevel(logging.INFO)
        try:
            async with AsyncExitStack() as application:
                await enter_application(application, self.handler, self.lifespan, self)
                if listen:
                    self.listeners = [await self._listen()]
                    log.info("listening on %s:%d", self.host, self.port)
                try:
                    with self._serve_scope:
                        async with trio.open_nursery() as nursery:
                            self.nursery = self.watchers.nursery = nursery
                            self.parking = Parking(nursery, enabled=platform.epoll)
                            nursery.start_soon(self._accept, nursery)
                            nursery.start_soon(self.watchers.run)
                            nursery.start_soon(self.parking.run)
                            task_status.started(self)
                finally:
                    if hasattr(self, "parking"):
                        self.parking.close()
        finally:
            self._stopped.set()

    async def _accept(self, nursery: trio.Nursery) -> None:
        with self._accept_scope:
            async with trio.open_nursery() as accepting:
                for listener in self.listeners:
                    if self._direct_io:
                        accepting.start_soon(self._accept_bursts, listener.socket, nursery)
                    else:
                        accepting.start_soon(self._accept_each, listener, nursery)

    async def _accept_each(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept connections with trio alone (the portable path)."""
        # (A shutdown that came before this task ran has closed the listener.)
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            stream = await listener.accept()
            nursery.start_soon(self._handle, stream)

    async def _accept_bursts(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        """Accept connections in bursts of up to ``_ACCEPT_BURST`` per wake-up.

        Accepting one connection per trip through the scheduler (as a loop over
        ``listener.accept()`` does) falls behind a server busy with many connections,
        and the kernel's listen queue overflows; a burst empties it.
        """
        # (A shutdown that came before this task ran has closed the listener.)
        await trio.lowlevel.checkpoint_if_cancelled()
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

    def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve ``stream`` as a connection just accepted (an in-memory one, say), in the
        server's nursery; the server must be serving."""
        self.nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        transport: trio.abc.Stream = stream
        if self.ssl_context is not None:
            transport = trio.SSLStream(
                stream, self.ssl_context, server_side=True, https_compatible=True
            )
        if len(self._connections) >= self.limits.max_connections:
            # Over TLS too: a plain-text answer would only break the client's handshake.
            await answer_and_close(Transport(transport), 503, "too many connections")
            return
        sock = raw_socket(stream)
        try:
            client = None if sock is None else sock.getpeername()
        except OSError:
            client = None
        if isinstance(transport, trio.SSLStream) and self.http2:
            if not await self._handshake(transport):
                return
            if transport.selected_alpn_protocol() == "h2":
                await self._serve_h2(self._transport(transport), client)
                return
        connection = ServerConnection(self, transport, client, direct_io=self._direct_io)
        self._connections.add(connection)
        await connection.run()
        if connection.handover is not None:
            await self._serve_h2(connection.transport, client, connection.handover)

    def _transport(self, stream: trio.abc.Stream) -> Transport:
        limits = self.limits
        return Transport(
            stream,
            read_size=limits.read_size,
            write_timeout=limits.write_timeout,
            direct_io=self._direct_io,
        )

    async def _handshake(self, stream: trio.SSLStream[trio.SocketStream]) -> bool:
        """Complete the TLS handshake (within ``header_timeout``), so that ALPN has
        chosen the protocol; False, having closed the stream, if it failed."""
        timeout = self.limits.header_timeout
        with trio.move_on_after(math.inf if timeout is None else timeout):
            try:
                await stream.do_handshake()
                return True
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                log.debug("TLS handshake failed: %r", error)
        await trio.aclose_forcefully(stream)
        return False

    async def _serve_h2(
        self, transport: Transport, client: tuple[str, int] | None, received: bytes = b""
    ) -> None:
        connection = H2ServerConnection(self, transport, client, received)
        self._connections.add(connection)
        await connection.run()

    def connection_closed(self, connection: Connection) -> None:
        """A connection has closed (its driver says so, once)."""
        self._connections.discard(connection)
        self._connections_changed.unpark_all()

    async def shutdown(self, grace: float | None = None, *, restart: bool = False) -> None:
        """Stop accepting, let exchanges in flight finish within ``grace`` seconds
        (default ``limits.shutdown_grace``), then cancel what is left.

        Idle keep-alive connections close at once; busy ones close after their exchange.
        A new connection still has its first request answered (HTTP/1.1: its client
        may have sent it already). With ``restart`` (a worker replaced by a rolling
        restart), WebSocket channels close with 1012 (service restart) rather than 1001.
        Returns once the server has stopped and its lifespan has exited. Called again
        while a shutdown waits, it shortens the grace (``shutdown(0)`` cancels what is
        left now).
        """
        grace = self.limits.shutdown_grace if grace is None else grace
        deadline = trio.current_time() + grace
        if self._grace is not None:
            self._grace.deadline = min(self._grace.deadline, deadline)
            await self._stopped.wait()
            return
        self._grace = trio.CancelScope(deadline=deadline)
        self.shutting_down = True
        self.restarting = restart
        self.closing.set()
        self._accept_scope.cancel()
        # Close the listening sockets now, so the kernel stops queueing connections that
        # nobody will accept (with workers, a sibling takes them instead).
        for listener in self.listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()
        for connection in list(self._connections):
            connection.shutdown()
        with self._grace:
            while self._connections:
                await self._connections_changed.park()
        self._serve_scope.cancel()
        await self._stopped.wait()

    def log_access(self, request: Request, status: int | None, size: int) -> None:
        """Log one exchange in the common log format (``access_log=True``): the client,
        now (the exchange has just ended), the request line, the status (``-`` when no
        response went out) and the response body's bytes sent (``-`` for none)."""
        version = "2.0" if request.http_version == "2" else request.http_version
        line = _escape(f"{request.method} {request.target} HTTP/{version}")
        _log_line(request.client, line, status, size)

    def log_refused(self, client: tuple[str, int] | None, status: int, size: int) -> None:
        """Log a request refused before it was read whole (a malformed or oversized
        head, ``access_log=True``): its request line is ``-``."""
        _log_line(client, "-", status, size)


def _log_line(client: tuple[str, int] | None, line: str, status: int | None, size: int) -> None:
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
    host = client[0] if client else "-"
    access_log.info('%s - - [%s] "%s" %s %s', host, when, line, status or "-", size or "-")


def _escape(text: str) -> str:
    r"""``text`` with quotes, backslashes and anything not printable ASCII as ``\xHH``, so that
    each exchange stays one line that a log parser splits at its quotes."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(
        char
        if char.isascii() and char.isprintable() and char not in '"\\'
        else f"\\x{ord(char):02x}"
        for char in text
    )


async def enter_application(
    stack: AsyncExitStack, handler: object, lifespan: Lifespan | None, server: Server
) -> None:
    """Enter ``lifespan()``, then ``handler`` if it is an async context manager, on
    ``stack`` (which exits them in the reverse order). Raises ``TypeError`` if
    ``lifespan()`` returns anything but an async context manager, and what entering
    raises; what they raise entering or exiting is also kept in
    ``server.application_failure``."""
    if lifespan is not None:
        if isinstance(lifespan, AbstractAsyncContextManager) or not callable(lifespan):
            # (An @asynccontextmanager's result is callable too, as a decorator.)
            raise _mistake(
                server,
                f"lifespan= takes a function that returns an async context manager "
                f"(lifespan=fn, not lifespan=fn()), not {lifespan!r}",
            )
        manager = lifespan()
        if not isinstance(manager, AbstractAsyncContextManager):
            raise _mistake(
                server,
                f"the lifespan {lifespan!r} returned {manager!r}, not an async context "
                "manager (write it with @contextlib.asynccontextmanager)",
            )
        await stack.enter_async_context(_Watched(manager, "the lifespan", server))
    if isinstance(handler, AbstractAsyncContextManager):
        await stack.enter_async_context(_Watched(handler, "the handler", server))


def _mistake(server: Server, text: str) -> TypeError:
    """A ``TypeError`` for a lifespan given wrong, kept as ``server``'s failure: a mistake
    of the command line's kind, which one line says all of."""
    error = TypeError(text)
    server.application_failure = {"error": error, "message": f"duplex: {text}", "traceback": ""}
    return error


class ApplicationFailure(TypedDict):
    """What the lifespan or the handler raised entering or exiting (``Exception`` only: a
    cancellation is no failure), with its traceback from the application's code down."""

    error: Exception
    message: str
    traceback: str


class _Watched(AbstractAsyncContextManager[object]):
    """``manager``, whose failures are kept in ``server.application_failure``, so that
    ``serve_process`` tells them from the server's own (a lifespan that cannot reach its
    database raises an ``OSError`` too, and must not read as "cannot listen")."""

    def __init__(self, manager: AbstractAsyncContextManager[object], what: str, server: Server):
        self.manager = manager
        self.what = what
        self.server = server

    async def __aenter__(self) -> object:
        try:
            return await self.manager.__aenter__()
        except Exception as error:
            self._failed(error, "failed to start")
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            return await self.manager.__aexit__(exc_type, exc, tb)
        except Exception as error:
            if error is not exc:
                self._failed(error, "failed as the server stopped")
            raise

    def _failed(self, error: Exception, stage: str) -> None:
        # Its traceback from here down is the application's: the server's frames above
        # would only bury it.
        below = error.__traceback__.tb_next if error.__traceback__ else None
        text = "".join(traceback.format_exception(type(error), error, below))
        summary = traceback.format_exception_only(type(error), error)[-1].strip()
        message = f"duplex: {self.what} {stage}: {summary}"
        self.server.application_failure = {"error": error, "message": message, "traceback": text}


class ServerOptions(TypedDict, total=False):
    """The options ``serve`` passes on to ``Server``."""

    limits: Limits | None
    ssl_context: ssl.SSLContext | None
    reuse_port: bool
    http2: bool
    lifespan: Lifespan | None
    access_log: bool


async def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    **options: Unpack[ServerOptions],
) -> None:
    """Serve ``handler`` on ``host``:``port`` until cancelled or shut down; ``options``
    are ``Server``'s (``limits``, ``ssl_context``, ``reuse_port``, ``http2``,
    ``lifespan``, ``access_log``).

    ``server = await nursery.start(duplex.serve, handler, "127.0.0.1", 0)`` hands back
    the ``Server``, already listening.
    """
    await Server(handler, host, port, **options).serve(task_status=task_status)


def run(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 8000,
    **options: Unpack[ServerOptions],
) -> None:
    """Serve ``handler`` on ``host``:``port`` in this process until SIGINT (Ctrl-C) or
    SIGTERM: the entry point of a script. ``options`` are ``Server``'s.

    Prints where it serves (``duplex: serving on http://127.0.0.1:8000/``). The first
    signal shuts the server down gracefully (saying so on standard error when exchanges
    are still in flight); a second one cuts the grace short. Neither prints a
    traceback. With ``access_log=True`` and logging not configured, the access log goes
    to standard error. If the server cannot listen (the port is in use), says so in one
    line and raises ``SystemExit(1)``.
    """
    server = Server(handler, host, port, **options)
    if server.access_log and not logging.getLogger().handlers:
        show_access_log()
    status = serve_process(server)
    if status:
        raise SystemExit(status)


def show_access_log() -> None:
    """Send the ``duplex.access`` log to standard error, one plain line per exchange,
    whatever the level of the other logs."""
    if not access_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


#: What stops a server that runs alone: Ctrl-C, SIGTERM, and SIGHUP (its terminal
#: closed, or a restart asked of a process that has no supervisor to restart it: the
#: default action would kill it with its exchanges in flight).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def serve_process(
    server: Server,
    background: Callable[[], Awaitable[object]] | None = None,
    *,
    signals: Sequence[int] = STOP_SIGNALS,
    supervised: bool = False,
) -> int:
    """Run ``serve_until_signal`` in a new trio run (``supervised``: a worker of
    ``duplex serve --workers``, which its supervisor signals): the exit status, 0; or 1, saying why
    on standard error, when the server cannot listen (the port is in use, the address
    does not resolve: one line) or when the lifespan (or the handler) raises as it is
    entered or exited (its traceback from the application's code down, then one line
    naming it)."""
    try:
        trio.run(partial(serve_until_signal, server, background, signals, supervised=supervised))
    except Exception as error:
        cause = _only_error(error)
        failure = server.application_failure
        if failure is not None and cause is failure["error"]:
            print(failure["traceback"], end="", file=sys.stderr)
            print(failure["message"], file=sys.stderr)
            return 1
        if failure is not None or not isinstance(cause, OSError):
            raise
        reason = cause.strerror or str(cause)
        where = f"{server.host}:{server.requested_port}"
        print(f"duplex: cannot listen on {where}: {reason}", file=sys.stderr)
        return 1
    return 0


def _only_error(error: BaseException) -> BaseException:
    """The one exception that ``error`` is, or is all of (through exception groups)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def serve_until_signal(
    server: Server,
    background: Callable[[], Awaitable[object]] | None = None,
    signals: Sequence[int] = STOP_SIGNALS,
    *,
    supervised: bool = False,
) -> None:
    """Serve until one of ``signals``, then shut down gracefully; a second signal cuts
    the grace short, and one that comes while the server starts (its lifespan still
    entering) stops it at once. Prints ``duplex: serving on ORIGIN/`` once it serves.
    ``supervised``: the signals come from the supervisor of ``--workers``, which passes
    on a user's Ctrl-C as SIGTERM (what it prints says so).

    ``background`` runs beside the server and is cancelled once it has stopped.
    Returns once the server has stopped; raises what ``Server.serve`` raises.
    """
    with trio.open_signal_receiver(*signals) as received:
        async with trio.open_nursery() as nursery:
            if background is not None:
                nursery.start_soon(background)
            serving = _Serving(server)
            stop = partial(_stop_on_signals, server, received, serving, nursery, supervised)
            nursery.start_soon(stop)
            await server.serve(task_status=serving)
            nursery.cancel_scope.cancel()


class _Serving:
    """The ``task_status`` of a server that a signal stops: says where it serves."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.event = trio.Event()

    def started(self, value: object = None) -> None:
        server = self.server
        scheme = "https" if server.ssl_context is not None else "http"
        host = f"[{server.host}]" if ":" in server.host else server.host
        print(f"duplex: serving on {scheme}://{host}:{server.port}/", flush=True)
        self.event.set()


async def _stop_on_signals(
    server: Server, received: Any, serving: _Serving, nursery: trio.Nursery, supervised: bool
) -> None:
    stopping = False
    async for signum in received:
        name = signal.Signals(signum).name
        if not serving.event.is_set():
            log.info("received %s while starting, stopping", name)
            nursery.cancel_scope.cancel()
            return
        if stopping:
            again = "stopping now" if supervised else f"received {name} again, stopping now"
            print(f"duplex: {again}", file=sys.stderr, flush=True)
            nursery.start_soon(server.shutdown, 0)
            return
        stopping = True
        # SIGHUP to a worker: its supervisor's rolling restart replaces it.
        restart = supervised and signum == signal.SIGHUP
        log.info("received %s, %s", name, "restarting" if restart else "shutting down")
        busy = server.busy_connections
        if busy:
            grace = server.limits.shutdown_grace
            if supervised:
                again = "press Ctrl-C or send SIGTERM again"
            elif signum == signal.SIGINT:
                again = "press Ctrl-C again"
            else:
                again = f"send {name} again"
            print(
                f"duplex: shutting down: waiting up to {grace:g} s for {busy} connection"
                f"{'s' if busy > 1 else ''} to finish ({again} to stop now)",
                file=sys.stderr,
                flush=True,
            )
        nursery.start_soon(partial(server.shutdown, restart=restart))
