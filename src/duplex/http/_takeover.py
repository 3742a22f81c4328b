"""Takeover: a response that drives its own exchange (what channels are built on)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from math import inf
from typing import TYPE_CHECKING, Protocol

import trio

from ._models import HeadersLike, Request

if TYPE_CHECKING:
    from ._exchange import Exchange
    from ._limits import Limits
    from ._server import Server

__all__ = ["ExchangeControl", "ResponseControl", "ServedConnection", "Takeover"]


class ResponseControl(Protocol):
    """What the server hands a ``Takeover`` function: the exchange, under its control.

    Either it sends a response (``start``, ``write`` as often as needed, ``end``), or it
    ``detach``es the connection to speak another protocol on it (a WebSocket).
    """

    @property
    def request(self) -> Request: ...

    @property
    def gone(self) -> bool:
        """True once the peer has gone away (the exchange is then cancelled)."""
        ...

    @property
    def server_closing(self) -> trio.Event:
        """Set when the server starts a graceful shutdown."""
        ...

    @property
    def server_restarting(self) -> bool:
        """True when that shutdown is a restart (``Server.shutdown(restart=True)``: a
        worker replaced by a rolling restart)."""
        ...

    async def start(self, status: int, headers: HeadersLike | None = None) -> None:
        """Send the response head: Content-Length framing if ``headers`` name a length,
        else chunked (close-delimited for HTTP/1.0)."""
        ...

    async def write(self, data: bytes) -> None:
        """Send part of the body (after ``start``)."""
        ...

    async def end(self) -> None:
        """Finish the response (after ``start``)."""
        ...

    async def reply(self, status: int, headers: HeadersLike | None, body: bytes) -> None:
        """The whole response at once, as ``start``, ``write`` and ``end`` send it, in
        one write where the protocol can (a long-poll's answer)."""
        ...

    def write_nowait(self, data: bytes) -> bool | None:
        """Send part of the body now if it can go out without waiting, for a sender that
        must not block (a broadcast): None, having sent nothing, when it cannot; True
        when the socket took all of it; False when part of it is still pending, to be
        sent by ``flush`` (which the caller must then await) or the next ``write``."""
        ...

    async def flush(self) -> None:
        """Send what ``write_nowait`` left pending."""
        ...

    @property
    def write_timeout(self) -> float | None:
        """The server's ``Limits.write_timeout``: how long the peer may take any of what
        is sent to it (for a protocol run on a detached connection)."""
        ...

    @property
    def can_watch(self) -> bool:
        """True when ``wait_peer_gone`` can tell that the peer left (the request has
        been read, and the transport is a plain socket)."""
        ...

    async def wait_peer_gone(self) -> None:
        """Return once the peer closes or resets the connection (waits forever where
        ``can_watch`` is False, or once the peer sent more). Reads nothing: the
        exchange's task watches the peer itself, and the server starts no watcher."""
        ...

    @property
    def can_park(self) -> bool:
        """True when ``park`` can hold the exchange without a task (``can_watch``, and
        a system whose server watches many sockets at once: Linux's epoll)."""
        ...

    def park(
        self, resume: Callable[[ResponseControl], Awaitable[object]], deadline: float = inf
    ) -> bool:
        """Ask the server to hold the exchange with no task while it waits: once the
        takeover function returns, the exchange stays open and costs only its objects.
        The server runs ``resume(control)`` (a new control) in a new task as the
        takeover function's sequel when ``wake()`` is called, when the peer leaves
        (``gone`` is then True and the task starts cancelled), once ``deadline`` (trio
        time) passes, and when the server stops (cancelled then too). Returns False,
        having done nothing, when the exchange cannot park (``can_park`` is False); the
        function must then wait in its own task."""
        ...

    def wake(self) -> None:
        """Resume a parked exchange soon (from any task; nothing if it is not parked)."""
        ...

    def on_server_closing(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when the server starts a graceful shutdown (at once if it
        has started already)."""
        ...

    async def detach(self) -> tuple[trio.abc.Stream, bytes]:
        """Take the connection over: the transport and the bytes that the server read
        after the request head. The server stops reading and watching it, never reuses
        it, and closes it when the ``Takeover`` function returns."""
        ...


class Takeover:
    """A response body that takes over the exchange: ``fn(control)`` runs once the
    handler returns and decides what is sent and when; the exchange ends when it
    returns."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[ResponseControl], Awaitable[object]]) -> None:
        self.fn = fn

    def __repr__(self) -> str:
        return f"Takeover({self.fn!r})"


class ServedConnection(Protocol):
    """What a control reads of its connection, whatever its protocol."""

    @property
    def closing(self) -> bool:
        """True once the connection is closing (it serves no more exchanges)."""
        ...

    @property
    def server(self) -> Server: ...

    @property
    def limits(self) -> Limits: ...


class ExchangeControl:
    """What every protocol's ``ResponseControl`` does alike: the exchange's request, its
    state, and the server's shutdown."""

    __slots__ = ("_connection", "_exchange")

    def __init__(self, connection: ServedConnection, exchange: Exchange) -> None:
        self._connection = connection
        self._exchange = exchange

    @property
    def request(self) -> Request:
        return self._exchange.request

    @property
    def gone(self) -> bool:
        return self._exchange.failed

    @property
    def server_closing(self) -> trio.Event:
        return self._connection.server.closing

    @property
    def server_restarting(self) -> bool:
        return self._connection.server.restarting

    @property
    def write_timeout(self) -> float | None:
        return self._connection.limits.write_timeout

    def on_server_closing(self, callback: Callable[[], object]) -> None:
        if self._connection.closing or self._connection.server.closing.is_set():
            callback()
        else:
            self._exchange.on_server_closing = callback
