"""Full duplex for real: the caller reads the echo of one chunk before it writes the next.

Proven against duplex's own server and against two servers that echo as they read:
aiohttp (in a thread with its own asyncio loop) and hypercorn's trio worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio

import duplex
from _client_support import TIMEOUT, aiohttp_echo, echo, hypercorn_echo, start_duplex, url


@asynccontextmanager
async def duplex_echo() -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        server = await start_duplex(nursery, echo)
        yield url(server)
        nursery.cancel_scope.cancel()


PEERS: list[Callable[[], AbstractAsyncContextManager[str]]] = [
    duplex_echo,
    aiohttp_echo,
    hypercorn_echo,
]


async def read_at_least(body: duplex.Readable, size: int) -> bytes:
    """Read chunks until ``size`` bytes have come (a peer may split or merge chunks)."""
    received = b""
    while len(received) < size:
        chunk = await body.read()
        assert chunk, f"the body ended after {received!r}"
        received += chunk
    return received


@pytest.mark.parametrize("peer", PEERS, ids=["duplex", "aiohttp", "hypercorn"])
async def test_reads_each_echo_before_writing_the_next_chunk(
    peer: Callable[[], AbstractAsyncContextManager[str]],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with peer() as address, duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(address, body=output)
            assert response.status == 200
            await output.write(b"chunk one")
            assert await read_at_least(response.body, 9) == b"chunk one"
            await output.write(b"chunk two")
            assert await read_at_least(response.body, 9) == b"chunk two"
            await output.close_write()
            assert await response.body.read() == b""


@pytest.mark.parametrize("peer", PEERS, ids=["duplex", "aiohttp", "hypercorn"])
async def test_a_full_duplex_exchange_leaves_its_connection_reusable(
    peer: Callable[[], AbstractAsyncContextManager[str]],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with peer() as address, duplex.Client() as client:
            for line in (b"first", b"second"):
                output = duplex.Writable()
                response = await client.post(address, body=output)
                await output.write(line)
                assert await read_at_least(response.body, len(line)) == line
                await output.close_write()
                assert await response.body.read() == b""
                assert client.pool.open_connections() == 1


async def test_request_returns_with_the_head_before_any_body_is_written(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo)
        async with duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(url(server), body=output)
            assert response.status == 200
            assert response.headers["transfer-encoding"] == "chunked"
            await output.close_write()
            assert await response.read() == b""


async def test_a_stream_over_the_response_and_the_request_body_echoes_line_by_line(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo)
        async with duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(url(server), body=output)
            async with duplex.Stream(response.body, output) as stream:
                for line in (b"one\n", b"two\n", b"three\n"):
                    await stream.write(line)
                    assert await stream.readline() == line
                await stream.close_write()
                assert await stream.read() == b""


async def test_a_large_body_streams_both_ways_at_once(nursery: trio.Nursery) -> None:
    data = bytes(range(256)) * 16384  # 4 MiB: far more than the socket buffers hold
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo)
        async with duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(url(server), body=output)

            async def produce() -> None:
                for start in range(0, len(data), 65536):
                    await output.write(data[start : start + 65536])
                await output.close_write()

            nursery.start_soon(produce)
            assert await response.read() == data


async def test_closing_the_response_breaks_the_request_body_writer(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo)
        async with duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(url(server), body=output)
            await output.write(b"ping")
            assert await response.body.read() == b"ping"
            await response.aclose()
            assert client.pool.open_connections() == 0
            with pytest.raises(trio.BrokenResourceError):
                while True:  # the first writes may still be queued for the sender
                    await output.write(b"nobody reads this")
