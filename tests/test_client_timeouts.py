"""Every client timeout raises ``duplex.Timeout`` (a ``trio.TooSlowError``) naming its
phase — connect, read, write, pool — and leaves no connection behind."""

from __future__ import annotations

import socket
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.testing
import trustme

import duplex
from _client_support import TIMEOUT, FakeServer, read_head

SHORT = 0.2


@contextmanager
def unaccepting_listener() -> Iterator[int]:
    """A listening port whose accept queue is full, so a new connect never completes.

    With a backlog of 0 Linux queues one connection and then drops further SYNs.
    """
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield listener.getsockname()[1]
    finally:
        filler.close()
        listener.close()


async def never_answer(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def answer_nothing_until_closed(stream: trio.SocketStream) -> None:
    await read_head(stream)
    while await stream.receive_some(65536):
        pass


linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="relies on Linux dropping SYNs to a full accept queue"
)


@linux_only
async def test_connect_timeout_when_the_server_never_accepts() -> None:
    limits = duplex.ClientLimits(connect_timeout=SHORT)
    with trio.fail_after(TIMEOUT), unaccepting_listener() as port:
        async with duplex.Client(limits=limits) as client:
            with pytest.raises(duplex.Timeout) as caught:
                await client.get(f"http://127.0.0.1:{port}/")
            assert caught.value.phase == "connect"
            assert isinstance(caught.value, trio.TooSlowError)
            assert client.pool.open_connections() == 0


@linux_only
async def test_pool_timeout_does_not_cut_a_connect_short() -> None:
    limits = duplex.ClientLimits(connect_timeout=SHORT, pool_timeout=SHORT / 4)
    with trio.fail_after(TIMEOUT), unaccepting_listener() as port:
        async with duplex.Client(limits=limits) as client:
            with pytest.raises(duplex.Timeout) as caught:
                await client.get(f"http://127.0.0.1:{port}/")
            assert caught.value.phase == "connect"


async def test_connect_timeout_covers_the_tls_handshake(nursery: trio.Nursery) -> None:
    ssl_context = ssl.create_default_context()
    trustme.CA().configure_trust(ssl_context)
    limits = duplex.ClientLimits(connect_timeout=SHORT)
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, never_answer)
        async with duplex.Client(limits=limits, ssl_context=ssl_context) as client:
            with pytest.raises(duplex.Timeout) as caught:
                await client.get(f"https://127.0.0.1:{server.port}/")
            assert caught.value.phase == "connect"
            assert f"TLS handshake with 127.0.0.1:{server.port} timed out" in str(caught.value)
            assert client.pool.open_connections() == 0


async def test_read_timeout_when_the_server_never_answers(nursery: trio.Nursery) -> None:
    limits = duplex.ClientLimits(read_timeout=SHORT)
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answer_nothing_until_closed)
        async with duplex.Client(limits=limits) as client:
            with pytest.raises(duplex.Timeout) as caught:
                await client.get(server.url)
            assert caught.value.phase == "read"
            assert client.pool.open_connections() == 0


async def test_read_timeout_when_the_body_stalls(nursery: trio.Nursery) -> None:
    async def stall_mid_body(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await trio.sleep_forever()

    limits = duplex.ClientLimits(read_timeout=SHORT)
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, stall_mid_body)
        async with duplex.Client(limits=limits) as client:
            response = await client.get(server.url)
            assert await response.body.read() == b"half"
            with pytest.raises(duplex.Timeout) as caught:
                await response.body.read()
            assert caught.value.phase == "read"
            assert client.pool.open_connections() == 0


async def test_read_timeout_bounds_each_read_not_the_whole_body(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def dribble(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            await trio.sleep(SHORT / 2)  # virtual time: the autojump clock skips it
            await stream.send_all(b"1\r\nx\r\n")
        await stream.send_all(b"0\r\n\r\n")

    limits = duplex.ClientLimits(read_timeout=SHORT)
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, dribble)
        async with duplex.Client(limits=limits) as client:
            started = trio.current_time()
            assert await (await client.get(server.url)).read() == b"xxxxx"
            assert trio.current_time() - started > SHORT


async def test_write_timeout_when_the_server_never_reads_the_body(
    nursery: trio.Nursery,
) -> None:
    limits = duplex.ClientLimits(write_timeout=SHORT)
    body = bytes(32 << 20)  # far more than the socket buffers on both sides hold
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, never_answer)
        async with duplex.Client(limits=limits) as client:
            with pytest.raises(duplex.Timeout) as caught:
                await client.post(server.url, body=body)
            assert caught.value.phase == "write"
            assert client.pool.open_connections() == 0


async def test_write_timeout_on_a_streamed_body_breaks_its_writer(
    nursery: trio.Nursery,
) -> None:
    async def answer_without_reading(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await trio.sleep_forever()

    limits = duplex.ClientLimits(write_timeout=SHORT)
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answer_without_reading)
        async with duplex.Client(limits=limits) as client:
            output = duplex.Writable()
            response = await client.post(server.url, body=output)
            assert response.status == 200
            with pytest.raises(trio.BrokenResourceError) as caught:
                while True:
                    await output.write(bytes(65536))
            cause = caught.value.__cause__
            assert isinstance(cause, duplex.Timeout)
            assert cause.phase == "write"


async def test_pool_timeout_when_the_origin_is_at_its_maximum(nursery: trio.Nursery) -> None:
    async def answer_each(stream: trio.SocketStream) -> None:
        while await read_head(stream):
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    limits = duplex.ClientLimits(max_connections_per_origin=1, pool_timeout=SHORT)
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answer_each)
        async with duplex.Client(limits=limits) as client:
            held = await client.get(server.url)
            with pytest.raises(duplex.Timeout) as caught:
                await client.get(server.url)
            assert caught.value.phase == "pool"
            assert await held.read() == b"ok"
            assert await (await client.get(server.url)).read() == b"ok"
        assert server.connections == 1
