"""Testing duplex handlers: an in-memory test client, and hypothesis strategies.

``TestClient(handler)`` serves ``handler`` with duplex's own server code and hands back
a ``duplex.Client`` whose connections are in-memory pipes rather than sockets: no port
is bound, nothing touches the network, and everything a real client gets (full duplex,
channels, limits, HTTP/2 with ``http2="prior-knowledge"``) works the same.

The strategies (``chunkings``, ``cancellations``) need hypothesis, which the
``duplex[testing]`` extra installs; ``TestClient`` does not.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import trio

from ._body import Writable
from ._stream import Stream
from .http._client import Client
from .http._limits import ClientLimits, Limits
from .http._models import HeadersLike
from .http._pool import HTTP2, Origin
from .http._server import Handler, Lifespan, Server

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "BASE_URL",
    "Cancellation",
    "ClientOptions",
    "MemoryStream",
    "TestClient",
    "cancellations",
    "chunkings",
    "memory_stream_pair",
]

#: Where a ``TestClient``'s relative URLs point (any other URL reaches the handler too).
BASE_URL = "http://testserver"

#: Bytes each direction of an in-memory connection holds before a writer waits, as a
#: socket's buffers would.
DEFAULT_BUFFER_SIZE = 65536


# -- in-memory connections ---------------------------------------------------------------


class MemoryStream(Stream):
    """One end of an in-memory, full-duplex connection (see ``memory_stream_pair``).

    A ``duplex.Stream`` over two bounded ``Writable`` bodies, so it keeps every rule of
    ``duplex.Stream``, plus ``close_nowait`` (the peer's reads see the end, its writes
    raise ``trio.BrokenResourceError``, as after a reset) and ``wait_peer_gone``.
    """

    def __init__(self, input: Writable, output: Writable, either_closed: trio.Event) -> None:
        super().__init__(input, output)
        self._either_closed = either_closed
        self._closed = trio.Event()

    def close_nowait(self) -> None:
        """Close both directions at once, from synchronous code; idempotent."""
        assert isinstance(self.input, Writable) and self.output is not None
        self._closed.set()
        self._either_closed.set()
        self.input.close_read_nowait()
        self.output.close_write_nowait()

    async def aclose(self) -> None:
        """Close both directions (the peer reads what is queued, then ``b""``);
        idempotent, and closes even if cancelled."""
        self._closed.set()
        self._either_closed.set()
        await super().aclose()

    async def wait_peer_gone(self) -> None:
        """Return once either end has closed."""
        await self._either_closed.wait()

    @property
    def closed(self) -> bool:
        """True once this end has closed."""
        return self._closed.is_set()


def memory_stream_pair(
    max_buffer_size: int = DEFAULT_BUFFER_SIZE,
) -> tuple[MemoryStream, MemoryStream]:
    """Two connected ends of an in-memory connection: what one writes, the other reads.

    Each direction buffers at most ``max_buffer_size`` bytes before its writer waits.
    The pair passes ``trio.testing.check_half_closeable_stream``.
    """
    there, back = Writable(max_buffer_size), Writable(max_buffer_size)
    closed = trio.Event()
    return MemoryStream(back, there, closed), MemoryStream(there, back, closed)


# -- the test client -----------------------------------------------------------------------


class ClientOptions(TypedDict, total=False):
    """What ``TestClient`` passes on to ``duplex.Client``."""

    headers: HeadersLike | None
    follow_redirects: bool
    max_redirects: int
    http2: HTTP2


class TestClient:
    """Serve ``handler`` in memory and hand back a ``duplex.Client`` that reaches it.

    ``async with TestClient(handler) as client:`` runs a ``duplex.Server`` that listens
    on no socket; each connection the client opens is an in-memory pipe that the server
    serves through its usual connection drivers (HTTP/1.1, and HTTP/2 when the client
    speaks it with ``http2="prior-knowledge"``). Relative URLs (``"/hello"``) go to
    ``base_url``; absolute ones reach the same handler, whatever their host.

    ``lifespan`` and a handler that is an async context manager are entered and exited
    as ``duplex.Server`` does: before the first request, and after the last exchange
    has ended. ``limits`` are the server's (``duplex.Limits``); ``client_options`` go
    to ``duplex.Client`` (``limits`` there is spelled ``client_limits``).

    Leaving the block shuts the server down, as at the end of a process: exchanges in
    flight are told (a channel's ``on_close`` gets ``kind == "shutdown"``), the
    client's connections close (responses left unread included, so none holds the
    shutdown for its grace period), and once the server has stopped its lifespan
    exits. The client going away mid-test is ``await response.aclose()``.

    Raises what entering the lifespan raises.
    """

    __test__ = False  # not a test class, whatever pytest makes of its name

    def __init__(
        self,
        handler: Handler,
        lifespan: Lifespan | None = None,
        *,
        limits: Limits | None = None,
        base_url: str = BASE_URL,
        client_limits: ClientLimits | None = None,
        max_buffer_size: int = DEFAULT_BUFFER_SIZE,
        **client_options: Unpack[ClientOptions],
    ) -> None:
        self.server = Server(handler, limits=limits, lifespan=lifespan)
        self.base_url = base_url
        self.max_buffer_size = max_buffer_size
        self._client_limits = client_limits
        self._client_options = client_options
        # The client's ends of its connections.
        self._streams: set[MemoryStream] = set()
        self._stack: AsyncExitStack | None = None
        #: How many connections the client has opened so far.
        self.connections_opened = 0

    async def __aenter__(self) -> Client:
        if self._stack is not None:
            raise RuntimeError("a TestClient is entered once")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(partial(self.server.serve, listen=False))
            client = Client(self.base_url, limits=self._client_limits, **self._client_options)
            await stack.enter_async_context(client)
            client.pool.connector = self._connect
            stack.push_async_callback(self._shutdown)
        except BaseException as error:
            await _exit(stack, error)
            raise
        self._stack = stack
        return client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        if exc_value is None:
            return await self._stack.__aexit__(None, None, None)
        await _exit(self._stack, exc_value)
        return None

    async def _connect(self, origin: Origin) -> MemoryStream:
        await trio.lowlevel.checkpoint()
        if self.server.shutting_down:
            raise ConnectionRefusedError(f"the test server for {origin[1]} is shutting down")
        client_end, server_end = memory_stream_pair(self.max_buffer_size)
        # Only the ends still open are kept, however many connections a test opens.
        self._streams = {stream for stream in self._streams if not stream.closed}
        self._streams.add(client_end)
        self.connections_opened += 1
        self.server.serve_stream(server_end)
        return client_end

    async def _shutdown(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._close_streams_once_closing)
            await self.server.shutdown()

    async def _close_streams_once_closing(self) -> None:
        # Every exchange has been told of the shutdown by the time ``closing`` wakes this
        # task (a channel's on_close says "shutdown" rather than "gone"); then the
        # client's connections end, so that a response nobody reads to its end (an
        # endless one, say) never holds the shutdown for its whole grace period.
        await self.server.closing.wait()
        for stream in self._streams:
            stream.close_nowait()
        self._streams.clear()


async def _exit(stack: AsyncExitStack, error: BaseException) -> None:
    """Exit ``stack`` as ``error`` leaves it; ``error`` then goes on as it was, not
    wrapped in the group the server's nursery makes of it."""
    try:
        await stack.__aexit__(type(error), error, error.__traceback__)
    except BaseExceptionGroup as group:
        if list(group.exceptions) != [error]:
            raise


# -- hypothesis strategies -----------------------------------------------------------------


def _strategies() -> Any:
    try:
        from hypothesis import strategies
    except ImportError as error:
        raise ImportError(
            "duplex.testing's strategies need hypothesis: install duplex[testing]"
        ) from error
    return strategies


def chunkings(
    data: bytes | SearchStrategy[bytes] | None = None, *, max_chunks: int | None = None
) -> SearchStrategy[list[bytes]]:
    """A strategy of lists of non-empty chunks that join to ``data``.

    ``data`` may be bytes, a strategy of bytes, or None for ``binary()``: the data is
    drawn too, and ``b"".join(chunks)`` is what was drawn. ``b""`` has one chunking, the
    empty list. At most ``max_chunks`` chunks, if given (at least 1). Shrinks towards
    fewer, longer chunks.

    Raises ``ImportError`` if hypothesis is not installed.
    """
    st = _strategies()
    if max_chunks is not None and max_chunks < 1:
        raise ValueError("max_chunks must be at least 1")
    if isinstance(data, bytes | bytearray | memoryview):
        return _cut(st, bytes(data), max_chunks)
    source = st.binary() if data is None else data
    strategy: SearchStrategy[list[bytes]] = source.flatmap(
        lambda drawn: _cut(st, drawn, max_chunks)
    )
    return strategy


def _cut(st: Any, data: bytes, max_chunks: int | None) -> SearchStrategy[list[bytes]]:
    if not data:
        empty: SearchStrategy[list[bytes]] = st.just([])
        return empty
    if len(data) == 1:
        whole: SearchStrategy[list[bytes]] = st.just([data])
        return whole
    cuts = st.sets(
        st.integers(min_value=1, max_value=len(data) - 1),
        max_size=None if max_chunks is None else max_chunks - 1,
    )

    def pieces(at: set[int]) -> list[bytes]:
        bounds = [0, *sorted(at), len(data)]
        return [data[start:end] for start, end in pairwise(bounds)]

    strategy: SearchStrategy[list[bytes]] = cuts.map(pieces)
    return strategy


@dataclass(frozen=True)
class Cancellation:
    """Where a cancellation falls: after ``delay`` trips through trio's scheduler.

    ``with cancellation.around(nursery) as scope:`` opens a cancel scope that a task of
    ``nursery`` cancels once it has passed ``delay`` checkpoints (0: before the code in
    the block gets past its first one); if the block ends first, nothing happens to it.
    """

    delay: int

    def around(self, nursery: trio.Nursery) -> trio.CancelScope:
        scope = trio.CancelScope()
        nursery.start_soon(self._cancel_later, scope)
        return scope

    async def _cancel_later(self, scope: trio.CancelScope) -> None:
        for _ in range(self.delay):
            await trio.lowlevel.checkpoint()
        scope.cancel()


def cancellations(max_delay: int = 8) -> SearchStrategy[Cancellation]:
    """A strategy of ``Cancellation`` points, ``delay`` from 0 to ``max_delay``
    scheduler trips; shrinks towards the earliest. Raises ``ImportError`` if
    hypothesis is not installed."""
    st = _strategies()
    strategy: SearchStrategy[Cancellation] = st.builds(
        Cancellation, st.integers(min_value=0, max_value=max_delay)
    )
    return strategy
