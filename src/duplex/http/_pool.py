"""The client's connections: opened per origin (TCP, then TLS for https), kept alive
between exchanges, bounded in number, and never reused after an exchange that did not
finish cleanly.

With HTTP/2 on, requests to an origin share one connection as concurrent streams, up to
the server's ``SETTINGS_MAX_CONCURRENT_STREAMS``; beyond it another connection opens,
within ``max_connections_per_origin``, and beyond that a request waits for a free
stream (``pool_timeout``). A connection the server sent GOAWAY takes no new stream and
closes once its last one ends; a dead one leaves the pool at once.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from math import inf
from typing import Literal, TypeAlias

import trio
from trio.lowlevel import ParkingLot

from .._errors import ProtocolError, Timeout
from .._foreign import translate
from ._limits import ClientLimits
from .h1._client import HTTPConnection
from .h2client import H2ClientConnection

__all__ = [
    "HTTP2",
    "Connector",
    "Origin",
    "Pool",
    "PooledConnection",
    "open_connection",
    "open_stream",
]

#: Where a connection goes: (scheme, host, port).
Origin: TypeAlias = tuple[str, str, int]

#: Whether a client speaks HTTP/2: not at all, when the server picks it by ALPN (https
#: only), or from the first byte (h2c on http; h2 on https, never falling back).
HTTP2: TypeAlias = "bool | Literal['prior-knowledge']"

#: Opens the stream a new connection to an origin runs on, in place of TCP (and TLS):
#: see ``Pool.connector``.
Connector: TypeAlias = Callable[[Origin], Awaitable[trio.abc.Stream]]


async def open_connection(
    origin: Origin,
    *,
    limits: ClientLimits,
    ssl_context: ssl.SSLContext | None,
    direct_io: bool,
) -> HTTPConnection:
    """Connect to ``origin`` (with TLS for https) within ``connect_timeout``.

    Raises ``duplex.Timeout("connect")`` (its message names the TLS handshake when that
    is what took too long), ``OSError`` if the server cannot be reached, and
    ``duplex.ProtocolError`` naming the TLS handshake if that fails (the
    ``ssl.SSLError`` as ``__cause__``), or saying so when ``ssl_context`` offers h2 by
    ALPN and the server picked it.
    """
    stream = await open_stream(origin, limits=limits, ssl_context=ssl_context)
    if isinstance(stream, trio.SSLStream) and stream.selected_alpn_protocol() == "h2":
        # A context an HTTP/2 client offered h2 on, shared with this HTTP/1.1 client.
        await trio.aclose_forcefully(stream)
        raise ProtocolError(
            "the TLS context offers h2 by ALPN and the server picked it: use"
            " duplex.Client(http2=True), or a context of its own for this client"
        )
    return _http1(stream, limits, direct_io)


def _http1(stream: trio.abc.Stream, limits: ClientLimits, direct_io: bool) -> HTTPConnection:
    return HTTPConnection(
        stream,
        max_head_size=limits.max_response_header_size,
        read_size=limits.read_size,
        write_timeout=limits.write_timeout,
        direct_io=direct_io,
    )


async def open_stream(
    origin: Origin,
    *,
    limits: ClientLimits,
    ssl_context: ssl.SSLContext | None,
    alpn: list[str] | None = None,
) -> trio.abc.Stream:
    """The TCP (or, for https, TLS) stream to ``origin``, open within
    ``connect_timeout``; TLS offers the ``alpn`` protocols, if given. Raises as
    ``open_connection`` does."""
    scheme, host, port = origin
    timeout = limits.connect_timeout
    handshaking = False
    with trio.move_on_after(inf if timeout is None else timeout) as scope:
        tcp = await trio.open_tcp_stream(host, port)
        stream: trio.abc.Stream = tcp
        if scheme == "https":
            handshaking = True
            context = ssl_context or ssl.create_default_context()
            if alpn is not None:
                context.set_alpn_protocols(alpn)
            tls = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
            try:
                await tls.do_handshake()
            except BaseException as error:
                await trio.aclose_forcefully(tcp)
                if isinstance(error, trio.BrokenResourceError) and error.__cause__:
                    raise translate(error.__cause__) from error.__cause__
                raise
            stream = tls
    if scope.cancelled_caught:
        expired = Timeout("connect", timeout or 0.0)
        if handshaking:
            expired.args = (f"TLS handshake with {host}:{port} timed out after {timeout:g} s",)
        raise expired
    return stream


class PooledConnection:
    """A connection of the pool, leased to one exchange at a time."""

    __slots__ = ("_pool", "detached", "http", "idle_since", "origin", "reused")

    def __init__(self, pool: Pool, origin: Origin, http: HTTPConnection) -> None:
        self._pool = pool
        self.origin = origin
        self.http = http
        self.idle_since = 0.0
        #: True once the connection carries its second exchange or a later one.
        self.reused = False
        #: True while its exchange holds it outside the pool's count (see ``detach``).
        self.detached = False

    def release(self) -> None:
        """The exchange on it ended cleanly: keep it for the next one if it can carry
        one, else close it."""
        self._pool.release(self)

    def discard(self) -> None:
        """Close it; it is never reused (once; later calls do nothing)."""
        self._pool.discard(self)

    def detach(self) -> None:
        """Stop counting it against the pool's limits while its exchange lasts: its
        slot goes to the next request. Once the exchange ends it comes back if there
        is room, else it closes."""
        self._pool.detach(self)


class Pool:
    """Keep-alive connections per origin, bounded in number, busy and idle alike.

    ``direct_io`` is the platform's fast path (see ``_platform``), read once by the
    client that owns the pool.
    """

    def __init__(
        self,
        limits: ClientLimits,
        ssl_context: ssl.SSLContext | None,
        *,
        direct_io: bool,
        http2: HTTP2 = False,
    ) -> None:
        self.limits = limits
        self._ssl_context = ssl_context
        self._direct_io = direct_io
        self.http2 = http2
        #: Where HTTP/2 connections run their reader and writer (the client's nursery).
        self.nursery: trio.Nursery | None = None
        self._h2: dict[Origin, list[H2ClientConnection]] = {}
        self._h2_origins: dict[H2ClientConnection, Origin] = {}
        self._h1_only: set[Origin] = set()
        self._connecting: set[Origin] = set()
        self._idle: dict[Origin, list[PooledConnection]] = {}
        self._busy: set[PooledConnection] = set()
        self._detached: set[PooledConnection] = set()
        self._open: dict[Origin, int] = {}
        self._waiters: dict[Origin, ParkingLot] = {}
        self.closed = False
        #: When set, every new connection runs on the stream it returns for the origin
        #: rather than on a socket (``duplex.testing`` serves a handler in memory so);
        #: no TLS is added, and HTTP/2 is spoken as over h2c.
        self.connector: Connector | None = None

    def open_connections(self, origin: Origin | None = None) -> int:
        """Connections open (busy or idle), to ``origin`` or in all; not those
        detached (a response whose read was cancelled holds its own)."""
        if origin is None:
            return sum(self._open.values())
        return self._open.get(origin, 0)

    def http2_connections(self, origin: Origin | None = None) -> int:
        """HTTP/2 connections open, to ``origin`` or in all."""
        if origin is None:
            return sum(len(connections) for connections in self._h2.values())
        return len(self._h2.get(origin, ()))

    def speaks_http2(self, origin: Origin) -> bool:
        """Whether requests to ``origin`` try HTTP/2 (before ALPN may say otherwise)."""
        if not self.http2 or origin in self._h1_only:
            return False
        return origin[0] == "https" or self.http2 == "prior-knowledge"

    async def acquire_stream(self, origin: Origin) -> H2ClientConnection | PooledConnection:
        """A stream reserved on an HTTP/2 connection to ``origin`` (one under way with a
        free stream, else a new one), or an HTTP/1.1 connection if the server chose
        HTTP/1.1 by ALPN. Raises as ``acquire`` does, and ``duplex.ProtocolError`` when
        HTTP/2 was required (``"prior-knowledge"``) and the server chose otherwise."""
        limits = self.limits
        deadline = self._pool_deadline()
        await trio.lowlevel.checkpoint()
        while True:
            if self.closed:
                raise trio.ClosedResourceError("the client is closed")
            for connection in list(self._h2.get(origin, ())):
                if connection.reserve():
                    return connection
            if origin in self._h1_only:
                return await self.acquire(origin)
            # A connection whose SETTINGS have not come yet may take many more streams
            # once they do: wait for them rather than open another.
            if (
                origin not in self._connecting
                and all(connection.settled for connection in self._h2.get(origin, ()))
                and self._open.get(origin, 0) < limits.max_connections_per_origin
            ):
                return await self._connect_h2(origin)
            with trio.move_on_at(deadline) as scope:
                await self._waiters.setdefault(origin, ParkingLot()).park()
            if scope.cancelled_caught:
                raise Timeout("pool", limits.pool_timeout or 0.0)

    async def _connect_h2(self, origin: Origin) -> H2ClientConnection | PooledConnection:
        if self.nursery is None:
            raise RuntimeError("use the client as `async with duplex.Client() as client:`")
        prior_knowledge = self.http2 == "prior-knowledge"
        self._open[origin] = self._open.get(origin, 0) + 1
        self._connecting.add(origin)
        try:
            if self.connector is not None:
                stream = await self.connector(origin)
            else:
                stream = await open_stream(
                    origin,
                    limits=self.limits,
                    ssl_context=self._ssl_context,
                    alpn=["h2"] if prior_knowledge else ["h2", "http/1.1"],
                )
        except BaseException:
            self._connecting.discard(origin)
            self._forget(origin)
            raise
        self._connecting.discard(origin)
        if isinstance(stream, trio.SSLStream) and stream.selected_alpn_protocol() != "h2":
            if prior_knowledge:
                self._forget(origin)
                await trio.aclose_forcefully(stream)
                raise ProtocolError(f"{origin[1]}:{origin[2]} did not agree to HTTP/2 (ALPN)")
            self._h1_only.add(origin)
            self._wake_all(origin)  # each opens a connection of its own, as over HTTP/1.1
            pooled = PooledConnection(self, origin, _http1(stream, self.limits, self._direct_io))
            self._busy.add(pooled)
            return pooled
        connection = H2ClientConnection(
            stream,
            max_header_list_size=self.limits.max_response_header_size,
            read_size=self.limits.read_size,
            idle_expiry=self.limits.idle_expiry,
            on_change=self._h2_changed,
        )
        self._h2.setdefault(origin, []).append(connection)
        self._h2_origins[connection] = origin
        self.nursery.start_soon(connection.run)
        connection.reserve()
        self._wake_all(origin)  # every request waiting for it may share it
        return connection

    def _h2_changed(self, connection: H2ClientConnection) -> None:
        """An HTTP/2 connection freed a stream, or ended: wake who waits for one."""
        origin = self._h2_origins.get(connection)
        if origin is None:
            return
        if connection.closed:
            del self._h2_origins[connection]
            self._h2[origin].remove(connection)
            self._forget(origin)
        self._wake_all(origin)

    def idle_connections(self, origin: Origin | None = None) -> int:
        """Connections open and waiting for an exchange, to ``origin`` or in all."""
        if origin is None:
            return sum(len(idle) for idle in self._idle.values())
        return len(self._idle.get(origin, ()))

    def _pool_deadline(self) -> float:
        """When a wait for a free connection (or stream) that starts now times out."""
        timeout = self.limits.pool_timeout
        return trio.current_time() + (inf if timeout is None else timeout)

    async def acquire(self, origin: Origin) -> PooledConnection:
        """A connection to ``origin``: an idle one, a new one, or the first one freed.

        A checkpoint. Raises ``duplex.Timeout("pool")`` when none is free within
        ``pool_timeout``, ``trio.ClosedResourceError`` once the pool is closed, and what
        ``open_connection`` raises.
        """
        limits = self.limits
        # The pool timeout bounds the wait for a free slot, never a connect under way.
        deadline = self._pool_deadline()
        # Checkpoint first, so that an idle connection is checked for staleness and
        # handed over with no yield between: a connection taken then cancelled at a
        # checkpoint would be in no list, never closed; and the later the check, the
        # narrower the window in which the server may close it unseen.
        await trio.lowlevel.checkpoint()
        while True:
            if self.closed:
                raise trio.ClosedResourceError("the client is closed")
            connection = self._take_idle(origin)
            if connection is not None:
                self._busy.add(connection)
                return connection
            if self._open.get(origin, 0) < limits.max_connections_per_origin:
                self._open[origin] = self._open.get(origin, 0) + 1
                try:
                    http = await self._open_http1(origin)
                except BaseException:
                    self._forget(origin)
                    raise
                connection = PooledConnection(self, origin, http)
                self._busy.add(connection)
                return connection
            with trio.move_on_at(deadline) as scope:
                await self._waiters.setdefault(origin, ParkingLot()).park()
            if scope.cancelled_caught:
                raise Timeout("pool", limits.pool_timeout or 0.0)

    async def _open_http1(self, origin: Origin) -> HTTPConnection:
        if self.connector is not None:
            return _http1(await self.connector(origin), self.limits, self._direct_io)
        return await open_connection(
            origin, limits=self.limits, ssl_context=self._ssl_context, direct_io=self._direct_io
        )

    def _take_idle(self, origin: Origin) -> PooledConnection | None:
        idle = self._idle.get(origin)
        expiry = self.limits.idle_expiry
        now = trio.current_time()
        while idle:
            connection = idle.pop()
            if (
                expiry is not None and now - connection.idle_since > expiry
            ) or connection.http.is_stale():
                self.discard(connection)
                continue
            connection.reused = True
            return connection
        return None

    def release(self, connection: PooledConnection) -> None:
        """Take back a connection whose exchange finished cleanly; reuse it if we can."""
        origin = connection.origin
        if connection.detached:
            if self._open.get(origin, 0) >= self.limits.max_connections_per_origin:
                self.discard(connection)
                return
            self._detached.discard(connection)
            connection.detached = False
            self._open[origin] = self._open.get(origin, 0) + 1
        self._busy.discard(connection)
        idle = self._idle.setdefault(origin, [])
        if (
            not self.closed
            and len(idle) < self.limits.max_idle_connections
            and connection.http.next_cycle()
        ):
            connection.idle_since = trio.current_time()
            idle.append(connection)
            self._wake(origin)
        else:
            self.discard(connection)

    def discard(self, connection: PooledConnection) -> None:
        """Close a connection that must not be reused (once; later calls do nothing)."""
        self._busy.discard(connection)
        if connection.detached:
            self._detached.discard(connection)
            connection.http.close_nowait()
        elif not connection.http.closed:
            connection.http.close_nowait()
            self._forget(connection.origin)

    def detach(self, connection: PooledConnection) -> None:
        """Stop counting a busy connection (see ``PooledConnection.detach``)."""
        if connection in self._busy:
            self._busy.remove(connection)
            self._detached.add(connection)
            connection.detached = True
            self._forget(connection.origin)

    def _forget(self, origin: Origin) -> None:
        self._open[origin] -= 1
        self._wake(origin)

    def _wake(self, origin: Origin) -> None:
        waiters = self._waiters.get(origin)
        if waiters:
            waiters.unpark()

    def _wake_all(self, origin: Origin) -> None:
        waiters = self._waiters.get(origin)
        if waiters:
            waiters.unpark_all()

    async def say_goodbye(self) -> None:
        """Tell each HTTP/2 server that no stream more comes (GOAWAY), before ``close``:
        returns once the sockets took it. The caller bounds the wait. A checkpoint."""
        async with trio.open_nursery() as nursery:
            for h2_connection in [c for each in self._h2.values() for c in each]:
                nursery.start_soon(h2_connection.say_goodbye)

    def close(self) -> None:
        """Close every connection, idle or still in use: none outlives its client."""
        self.closed = True
        connections = [
            *self._busy,
            *self._detached,
            *(c for idle in self._idle.values() for c in idle),
        ]
        for idle in self._idle.values():
            idle.clear()
        for connection in connections:
            self.discard(connection)
        for h2_connection in [c for each in self._h2.values() for c in each]:
            h2_connection.close()
        for waiters in self._waiters.values():
            waiters.unpark_all()
