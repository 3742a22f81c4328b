"""Full duplex for real: the caller reads the echo of one chunk before it writes the next,
and a body of any type and size is echoed whole while it is still being sent.

Proven against duplex's own server (in process, and ``duplex echo``) and against two
servers that echo as they read: aiohttp (in a thread with its own asyncio loop) and
hypercorn's trio worker.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
import trio.testing

import duplex
from _client_support import (
    SUBPROCESS_TIMEOUT,
    TIMEOUT,
    FakeServer,
    aiohttp_echo,
    echo,
    echo_process,
    hypercorn_echo,
    start_duplex,
    url,
)


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


@pytest.mark.both_protocols
async def test_request_returns_with_the_head_before_any_body_is_written(
    nursery: trio.Nursery, protocol: str
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo)
        async with duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(url(server), body=output)
            assert response.status == 200
            assert response.http_version == {"h1": "1.1", "h2": "2"}[protocol]
            if protocol == "h1":
                assert response.headers["transfer-encoding"] == "chunked"
            await output.close_write()
            assert await response.read() == b""


@pytest.mark.both_protocols
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


@pytest.mark.both_protocols
async def test_closing_the_response_breaks_the_request_body_writer(
    nursery: trio.Nursery, protocol: str
) -> None:
    """Over HTTP/1.1 the connection closes; over HTTP/2 the stream is reset and the
    connection stays for the next request."""
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo)
        async with duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(url(server), body=output)
            await output.write(b"ping")
            assert await response.body.read() == b"ping"
            await response.aclose()
            assert client.pool.open_connections() == {"h1": 0, "h2": 1}[protocol]
            with pytest.raises(trio.BrokenResourceError):
                while True:  # the first writes may still be queued for the sender
                    await output.write(b"nobody reads this")


# -- full duplex for every body: a body of any type and size against an echo ----------

ECHOED = random.Random(8).randbytes(8 << 20)  # far more than the socket buffers hold


async def echoed_chunks() -> AsyncIterator[bytes]:
    for start in range(0, len(ECHOED), 65536):
        yield ECHOED[start : start + 65536]


def fed_writable(nursery: trio.Nursery) -> duplex.Writable:
    body = duplex.Writable()

    async def produce() -> None:
        async for chunk in echoed_chunks():
            await body.write(chunk)
        await body.close_write()

    nursery.start_soon(produce)
    return body


BODIES: dict[str, Callable[[trio.Nursery], duplex.http.RequestBody]] = {
    "bytes": lambda nursery: ECHOED,
    "bytearray": lambda nursery: bytearray(ECHOED),
    "buffered": lambda nursery: duplex.Buffered(ECHOED),
    "async_iterable": lambda nursery: echoed_chunks(),
    "writable": fed_writable,
}


@pytest.mark.parametrize("kind", BODIES)
async def test_a_body_of_any_type_is_echoed_whole_while_it_is_sent(
    nursery: trio.Nursery, kind: str
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo)
        async with duplex.Client() as client:
            response = await client.post(url(server), body=BODIES[kind](nursery))
            assert await response.read() == ECHOED
            assert client.pool.idle_connections() == 1


async def test_8_mib_of_bytes_posted_to_duplex_echo_come_back_byte_exact() -> None:
    with trio.fail_after(SUBPROCESS_TIMEOUT):
        async with echo_process() as address, duplex.Client() as client:
            response = await client.post(address, body=ECHOED)
            assert response.status == 200
            assert await response.read() == ECHOED


@pytest.mark.parametrize("peer", PEERS, ids=["duplex", "aiohttp", "hypercorn"])
async def test_a_large_bytes_body_is_echoed_by_servers_that_echo_as_they_read(
    peer: Callable[[], AbstractAsyncContextManager[str]],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with peer() as address, duplex.Client() as client:
            assert await (await client.post(address, body=ECHOED)).read() == ECHOED


async def test_closing_the_response_body_keeps_the_request_body_going(
    nursery: trio.Nursery,
) -> None:
    received: list[bytes] = []
    ended = trio.Event()

    async def record(request: duplex.Request) -> duplex.Response:
        async def copy(stream: duplex.Stream) -> None:
            async for chunk in stream:
                received.append(chunk)
                await stream.write(chunk)
            ended.set()

        return duplex.Response(200, body=duplex.Streamable(copy))

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, record)
        async with duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(url(server), body=output)
            async with duplex.Stream(response.body, output) as stream:
                await stream.write(b"before")
                assert await stream.readpartial() == b"before"
                await stream.close_read()
                for _ in range(64):  # echoed and dropped: the server is never held up
                    await stream.write(bytes(65536))
                await stream.write(b"after")
            await ended.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert client.pool.open_connections() == client.pool.idle_connections() == 1
        assert b"".join(received).endswith(b"after")


class TaskCounter(trio.abc.Instrument):
    """Counts the tasks spawned while it is installed."""

    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


async def answer_each_request(stream: trio.SocketStream) -> None:
    """Read each request whole (Content-Length only) and answer ``ok``."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(data) < length:
            data += await stream.receive_some(65536)
        data = data[length:]
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.parametrize(("size", "tasks"), [(0, 0), (4096, 0), (8 << 20, 1)])
async def test_only_a_body_the_socket_does_not_take_at_once_costs_a_task(
    nursery: trio.Nursery, size: int, tasks: int
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answer_each_request)
        async with duplex.Client() as client:
            assert await (await client.post(server.url, body=b"warm")).read() == b"ok"
            counter = TaskCounter()
            trio.lowlevel.add_instrument(counter)
            try:
                assert await (await client.post(server.url, body=bytes(size))).read() == b"ok"
            finally:
                trio.lowlevel.remove_instrument(counter)
            assert counter.spawned == tasks
