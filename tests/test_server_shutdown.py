"""Graceful shutdown: stop accepting, let exchanges in flight finish within the grace
period, close idle connections at once, then cancel what is left."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import duplex
from _server_support import RawClient, get, request_bytes, serving


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


async def test_an_exchange_in_flight_finishes_within_the_grace_period() -> None:
    slow = Slow()
    with trio.fail_after(5):
        async with serving(slow) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes())
            await slow.running.wait()
            # fail_after(5) < grace: shutdown returns as soon as the exchange ends.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown, 10)
                await trio.testing.wait_all_tasks_blocked()
                slow.release.set()
                response = await client.read_response()
                await client.expect_closed()
    assert response.body == b"finished"
    assert response.closes
    assert not slow.cancelled


async def test_an_idle_kept_alive_connection_is_closed_at_once() -> None:
    async def hello(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=b"hello")

    with trio.fail_after(5):
        async with serving(hello) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes())
            assert not (await client.read_response()).closes
            start = trio.current_time()
            await server.shutdown(grace=10)
            assert trio.current_time() - start < 2
            await client.expect_closed()


async def test_an_exchange_still_running_after_the_grace_period_is_cancelled() -> None:
    slow = Slow()
    with trio.fail_after(5):
        async with serving(slow) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes())
            await slow.running.wait()
            start = trio.current_time()
            await server.shutdown(grace=0.3)
            assert 0.3 <= trio.current_time() - start < 2
            assert slow.cancelled
            assert await client.read_until_eof() == b""


async def test_new_connections_are_refused_once_shutdown_starts() -> None:
    slow = Slow()
    with trio.fail_after(5):
        async with serving(slow) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes())
            await slow.running.wait()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown, 10)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(OSError):
                    await get(server.port)
                slow.release.set()
            assert (await client.read_response()).body == b"finished"


async def test_shutdown_uses_the_grace_period_of_the_limits_by_default() -> None:
    slow = Slow()
    with trio.fail_after(5):
        async with (
            serving(slow, limits=duplex.Limits(shutdown_grace=0.3)) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes())
            await slow.running.wait()
            await server.shutdown()
    assert slow.cancelled
