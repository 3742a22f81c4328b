"""What one exchange makes is freed as soon as the exchange is over, by reference counting
alone: no request, exchange, body or stream is left in a reference cycle for the garbage
collector.

Objects left in cycles are freed only by a collection, which runs every few hundred of
them and walks every young object (and, every so often, every object of the process): a
per-request cycle cost a small request about a tenth of its server CPU. Each test runs
requests of one kind, server and client in this process, with the collector off and told
to keep what it finds (``gc.DEBUG_SAVEALL``), then counts duplex's objects among it.
"""

from __future__ import annotations

import collections
import gc
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager

import pytest
import trio

import duplex
from _server_support import serving

pytestmark = pytest.mark.both_protocols

ROUNDS = 40

#: The per-exchange objects of duplex (and h2's streams) that must not outlive it.
PER_EXCHANGE = {
    "ClientExchange",
    "EmptyBody",
    "H1Exchange",
    "H2Exchange",
    "H2Stream",
    "Request",
    "RequestBody",
    "RequestSender",
    "ResponseOutput",
    "StreamBody",
    "StreamOutput",
    "_Stream",
}


#: What one connection makes, on either side, over either protocol.
PER_CONNECTION = {
    # The server's, over either protocol, and h2's own (duplex's subclass of it)
    "ServerConnection",
    "Responder",
    "ServerWire",
    "H2ServerConnection",
    "_H2Connection",
    "H2Connection",
    "Transport",
    "SocketStream",
    # the client's
    "HTTPConnection",
    "PooledConnection",
    "Pool",
    "H2ClientConnection",
    "Client",
}


#: What a channel makes, whatever its transport (the WebSocket's over either protocol).
PER_CHANNEL = {
    "Channel",
    "_ChannelHeaders",
    "Writer",
    "Runner",
    "Lifecycle",
    "MessageQueue",
    "HTTPTransport",
    "SSETransport",
    "WebSocketTransport",
    "WebSocket",
    "WSConnection",
    "ClientWebSocket",
}


@contextmanager
def garbage_kept() -> Iterator[collections.Counter[str]]:
    """Count, by type name, what the collector finds unreachable within the block."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    counts: collections.Counter[str] = collections.Counter()
    try:
        yield counts
        gc.collect()
        counts.update(type(thing).__name__ for thing in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        if enabled:
            gc.enable()


async def handler(request: duplex.Request) -> duplex.Response:
    if request.path == "/echo":

        async def echo(stream: duplex.Stream) -> None:
            while chunk := await stream.readpartial(65536):
                await stream.write(chunk)

        return duplex.Response(200, {}, duplex.Streamable(echo))
    if request.path == "/join":
        return duplex.Response(200, {}, await request.body.join())
    return duplex.Response(200, {"content-type": "text/plain"}, b"Hello, world!")


async def left_in_cycles(
    once: Callable[[], Awaitable[None]], names: Collection[str]
) -> dict[str, int]:
    """Run ``once`` a few times (the connection, and whatever a first use makes once),
    then ``ROUNDS`` times counting: how many objects of each of ``names`` the collector
    found. (One may be in flight as the count ends: at most one of each is allowed.)"""
    for _ in range(3):
        await once()
    with garbage_kept() as counts:
        for _ in range(ROUNDS):
            await once()
    return {name: count for name, count in counts.items() if name in names and count > 1}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/", None),
        ("POST", "/join", b"x" * 300),
        ("POST", "/echo", b"x" * 100_000),
        ("POST", "/", b"x" * 5_000),
    ],
    ids=["get", "small-post", "streamed-echo", "body-left-unread"],
)
async def test_an_exchange_leaves_no_cycle_behind(
    method: str, path: str, body: bytes | None
) -> None:
    with trio.fail_after(30):
        async with serving(handler) as server, duplex.Client() as client:
            address = f"http://127.0.0.1:{server.port}{path}"

            async def one_request() -> None:
                response = await client.request(method, address, body=body)
                expected = body if path != "/" else b"Hello, world!"
                assert await response.read() == expected

            assert await left_in_cycles(one_request, PER_EXCHANGE) == {}


async def test_a_connection_that_closes_leaves_no_cycle_behind() -> None:
    """Each round a client of its own: a connection per request, on both sides."""
    with trio.fail_after(30):
        async with serving(handler) as server:
            address = f"http://127.0.0.1:{server.port}/"

            async def one_request() -> None:
                async with duplex.Client() as client:
                    response = await client.get(address)
                    assert await response.read() == b"Hello, world!"

            left = await left_in_cycles(one_request, PER_CONNECTION)
    assert left == {}


async def test_a_channel_whose_client_leaves_leaves_no_cycle() -> None:
    """A channel (a server-sent event stream here) whose client goes away: it, its
    exchange and its connection are freed as it ends."""
    closed = trio.Semaphore(0)

    async def on_close(channel: duplex.Channel, status: duplex.CloseStatus) -> None:
        closed.release()

    async def events(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_close=on_close, heartbeat=None)

    with trio.fail_after(30):
        async with serving(events) as server:
            address = f"http://127.0.0.1:{server.port}/"

            async def one_channel() -> None:
                async with duplex.Client() as client:
                    response = await client.get(address, headers={"accept": "text/event-stream"})
                    assert response.status == 200
                await closed.acquire()  # (the client gone, the channel closes)

            left = await left_in_cycles(one_channel, PER_EXCHANGE | PER_CONNECTION | PER_CHANNEL)
    assert left == {}


async def test_a_long_poll_answered_leaves_no_cycle() -> None:
    """A long-poll: a channel answered with one message, then closed (``close=True``),
    a request after another on one connection."""

    async def on_open(channel: duplex.Channel) -> None:
        await channel.send("news", close=True)

    async def poll(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=on_open, heartbeat=None)

    with trio.fail_after(30):
        async with serving(poll) as server, duplex.Client() as client:
            address = f"http://127.0.0.1:{server.port}/poll"

            async def one_poll() -> None:
                response = await client.get(address)
                assert (response.status, await response.body.join()) == (200, b"news")

            left = await left_in_cycles(one_poll, PER_EXCHANGE | PER_CONNECTION | PER_CHANNEL)
    assert left == {}


async def test_a_websocket_session_leaves_no_cycle() -> None:
    """A WebSocket channel (an HTTP/1.1 Upgrade, or an extended CONNECT over HTTP/2) that
    echoes a message, closed by the client: the handed-over exchange, the channel and
    both ends' WebSocket objects are freed as the session ends."""
    closed = trio.Semaphore(0)

    async def on_receive(channel: duplex.Channel, message: str | bytes) -> None:
        await channel.send(message)

    async def on_close(channel: duplex.Channel, status: duplex.CloseStatus) -> None:
        closed.release()

    async def sockets(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_receive=on_receive, on_close=on_close)

    with trio.fail_after(30):
        async with serving(sockets) as server, duplex.Client() as client:
            address = f"ws://127.0.0.1:{server.port}/ws"

            async def one_session() -> None:
                async with client.websocket(address) as socket:
                    await socket.send("hello")
                    assert await socket.receive() == "hello"
                await closed.acquire()

            left = await left_in_cycles(one_session, PER_EXCHANGE | PER_CONNECTION | PER_CHANNEL)
    assert left == {}
