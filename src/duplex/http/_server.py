"""The server: listen, accept, and shut down gracefully.

Each accepted connection is served by its protocol's driver: HTTP/1.1 (``h1``), or
HTTP/2 (``h2``) when TLS's ALPN selects ``h2`` or a cleartext connection opens with the
HTTP/2 preface (which the HTTP/1.1 driver notices as it reads its first head, and hands
over). An HTTP/1.1 exchange that lasts is watched for its peer leaving, and one with
nothing to do may park (``_parking``). What the fast Linux path may use is asked of
``_platform`` when the server starts.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import ssl
from collections.abc import Awaitable, Callable
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

__all__ = ["Handler", "PeerGone", "Server", "serve"]

log = logging.getLogger("duplex.server")

Handler = Callable[[Request], Awaitable[Response]]

#: Connections accepted at most per wake-up of the accept loop.
_ACCEPT_BURST = 64
# As trio's SocketListener: out of descriptors or memory (wait, then try again), and a
# connection that failed before it was accepted (skip it).
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_IGNORED_ACCEPT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})


class Connection(Protocol):
    """A connection as the server sees it, whatever its protocol."""

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
        http2: bool = True,
    ) -> None:
        self.handler = handler
        self.host = host
        self.requested_port = port
        self.limits = limits or Limits()
        self.ssl_context = ssl_context
        self.reuse_port = reuse_port
        self.http2 = http2
        if ssl_context is not None and http2:
            ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        self.listeners: list[trio.SocketListener] = []
        self.shutting_down = False
        self._connections: set[Connection] = set()
        self._connections_changed = trio.lowlevel.ParkingLot()
        self._accept_scope = trio.CancelScope()
        self._serve_scope = trio.CancelScope()
        self._stopped = trio.Event()
        #: Set when ``shutdown()`` starts; long-lived exchanges (channels) watch it.
        self.closing = trio.Event()
        #: Starts a watcher task for each exchange that lasts.
        self.watchers = Watchers()
        #: Holds parked exchanges (made by ``serve``).
        self.parking: Parking
        #: Where connections and their helper tasks run (made by ``serve``).
        self.nursery: trio.Nursery
        self._direct_io = True

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

    async def serve(
        self, *, task_status: Any = trio.TASK_STATUS_IGNORED, listen: bool = True
    ) -> None:
        """Listen and serve until ``shutdown()`` finishes or the caller is cancelled.

        ``task_status.started`` receives this server once it is listening. With
        ``listen=False`` it opens no socket and serves only the streams given to
        ``serve_stream`` (``duplex.testing`` does so).
        """
        platform = capabilities()
        self._direct_io = platform.direct_io
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
        while True:
            stream = await listener.accept()
            nursery.start_soon(self._handle, stream)

    async def _accept_bursts(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
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


class ServerOptions(TypedDict, total=False):
    """The options ``serve`` passes on to ``Server``."""

    limits: Limits | None
    ssl_context: ssl.SSLContext | None
    reuse_port: bool
    http2: bool


async def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    **options: Unpack[ServerOptions],
) -> None:
    """Serve ``handler`` on ``host``:``port`` until cancelled or shut down; ``options``
    are ``Server``'s (``limits``, ``ssl_context``, ``reuse_port``, ``http2``).

    ``server = await nursery.start(duplex.serve, handler, "127.0.0.1", 0)`` hands back
    the ``Server``, already listening.
    """
    await Server(handler, host, port, **options).serve(task_status=task_status)
