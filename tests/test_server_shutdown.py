"""Graceful shutdown: stop accepting, let exchanges in flight finish within the grace
period, close idle connections at once (a new connection still has its first request
answered), then cancel what is left.

Over both protocols (conftest's ``both_protocols``): over HTTP/2 the server says GOAWAY
first, then lets the streams in flight finish on the same connection.
"""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing

import duplex
from _channel_support import ConnectionEnded
from _protocol_support import H1Exchange, H2Exchange, exchange
from _server_support import RawClient, get, hello, request_bytes, serving

pytestmark = pytest.mark.both_protocols


class Slow:
    """A handler that answers once released, noting whether it was cancelled instead."""

    def __init__(self) -> None:
        self.running = trio.Event()
        self.release = trio.Event()
        self.cancelled = False

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        self.running.set()
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled = True
            raise
        return duplex.Response(200, body=b"finished")


async def test_an_exchange_in_flight_finishes_within_the_grace_period(protocol: str) -> None:
    slow = Slow()
    with trio.fail_after(5):
        async with serving(slow) as server, exchange(server.port, protocol) as client:
            await client.start("/")
            await slow.running.wait()
            # fail_after(5) < grace: shutdown returns as soon as the exchange ends.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown, 10)
                await trio.testing.wait_all_tasks_blocked()
                slow.release.set()
                await client.read_head()
                body = await client.read_body()
                await client.expect_closed()
    assert body == b"finished"
    assert not slow.cancelled
    if isinstance(client, H1Exchange):
        assert client.headers["connection"] == "close"
    else:
        assert client.goaway_came_first()


async def test_an_idle_kept_alive_connection_is_closed_at_once(protocol: str) -> None:
    async def hello(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=b"hello")

    with trio.fail_after(5):
        async with serving(hello) as server, exchange(server.port, protocol) as client:
            await client.request("/")
            assert await client.read_body() == b"hello"
            assert "connection" not in client.headers
            start = trio.current_time()
            await server.shutdown(grace=10)
            assert trio.current_time() - start < 2
            await client.expect_closed()


async def test_an_exchange_still_running_after_the_grace_period_is_cancelled(
    protocol: str,
) -> None:
    slow = Slow()
    with trio.fail_after(5):
        async with serving(slow) as server, exchange(server.port, protocol) as client:
            await client.start("/")
            await slow.running.wait()
            start = trio.current_time()
            await server.shutdown(grace=0.3)
            assert 0.3 <= trio.current_time() - start < 2
            assert slow.cancelled
            # Cut before its head: the connection closes (over HTTP/2 after GOAWAY, the
            # stream reset or left unanswered).
            with pytest.raises(ConnectionEnded) as cut:
                await client.read_head()
    if isinstance(client, H2Exchange):
        assert client.peer.goaway is not None
    else:
        assert cut.value.args == (b"",)


async def test_new_connections_are_refused_once_shutdown_starts(protocol: str) -> None:
    slow = Slow()
    with trio.fail_after(5):
        async with serving(slow) as server, exchange(server.port, protocol) as client:
            await client.start("/")
            await slow.running.wait()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown, 10)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(OSError):
                    await get(server.port)
                slow.release.set()
            await client.read_head()
            assert await client.read_body() == b"finished"


async def test_shutdown_uses_the_grace_period_of_the_limits_by_default(protocol: str) -> None:
    slow = Slow()
    with trio.fail_after(5):
        async with (
            serving(slow, limits=duplex.Limits(shutdown_grace=0.3)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.start("/")
            await slow.running.wait()
            await server.shutdown()
    assert slow.cancelled


async def echo(request: duplex.Request) -> duplex.Response:
    async def copy(stream: duplex.Stream) -> None:
        while chunk := await stream.readpartial(65536):
            await stream.write(chunk)

    return duplex.Response(200, body=duplex.Streamable(copy))


async def test_an_exchange_whose_request_body_still_streams_finishes_within_the_grace_period(
    protocol: str,
) -> None:
    """Over HTTP/2 the stream's DATA (and the window it needs) keeps flowing after the
    GOAWAY."""
    late = bytes(range(256)) * 1200  # several HTTP/2 stream windows
    with trio.fail_after(5):
        async with serving(echo) as server, exchange(server.port, protocol) as client:
            await client.start("/", method="POST", body=True)
            await client.send(b"before")
            await client.read_head()
            assert await client.read_until(b"before") == b"before"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown, 10)
                await trio.testing.wait_all_tasks_blocked()
                if isinstance(client, H2Exchange):
                    # (h2 drops the DATA it has queued when a GOAWAY comes in.)
                    await client.peer.until(lambda: client.peer.goaway is not None)

                async def send_the_rest() -> None:
                    await client.send(late)
                    await client.end()

                async with contextlib.AsyncExitStack() as reading:
                    if isinstance(client, H2Exchange):  # the sender waits for window
                        await reading.enter_async_context(client.peer.reading())
                    nursery.start_soon(send_the_rest)
                    received = await client.read_body()
            await client.expect_closed()
    assert len(received) == len(late)
    assert received == late


@pytest.mark.both_protocols(False)
async def test_a_new_connection_has_its_first_request_answered_once_shutdown_starts() -> None:
    # Accepted just before the shutdown, its client may be sending the request already:
    # closing it would lose that request (a rolling restart of workers must not).
    with trio.fail_after(5):
        async with serving(hello) as server, await RawClient.connect(server.port) as client:
            while server.connection_count == 0:
                await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown, 10)
                await trio.testing.wait_all_tasks_blocked()
                await client.send(request_bytes())
                response = await client.read_response()
                await client.expect_closed()
    assert (response.status, response.body, response.closes) == (200, b"hello", True)


@pytest.mark.both_protocols(False)
async def test_a_request_whose_head_has_begun_to_arrive_is_answered_once_shutdown_starts() -> None:
    with trio.fail_after(5):
        async with serving(hello) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes())
            assert not (await client.read_response()).closes
            second = request_bytes("/second")
            await client.send(second[:10])
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown, 10)
                await trio.testing.wait_all_tasks_blocked()
                await client.send(second[10:])
                response = await client.read_response()
                await client.expect_closed()
    assert (response.status, response.closes) == (200, True)
