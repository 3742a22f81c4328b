"""Slow peers and idle peers: a connection that makes progress is never cut, however long
it takes, and one that stalls is cut at the documented timeout with the documented
status — 408 for a head (``header_timeout``) or a body (``read_timeout``) while no
response has started, a silent close for an idle kept-alive connection
(``keep_alive_timeout``).

The slow reader takes ``DUPLEX_SLOW_READER_MIB`` MiB (default 4) at 1 MiB/s; ``nox -s
soak`` runs it with 20. tests/test_server_limits.py covers each timeout's status once.
"""

from __future__ import annotations

import hashlib
import os
import socket

import trio

import duplex
from _server_support import RawClient, hello, request_bytes, serving

MIB = 1 << 20
SLOW_READER_BYTES = int(os.environ.get("DUPLEX_SLOW_READER_MIB", "4")) * MIB
SLOW_READER_RATE = MIB  # bytes per second
CHUNK = 65536
BUFFER = 65536


def pattern(index: int) -> bytes:
    """Chunk ``index`` of the slow reader's body: its number, over and over."""
    return index.to_bytes(8, "big") * (CHUNK // 8)


async def test_a_slow_reader_gets_every_byte_while_the_server_queues_at_most_a_buffer_and_a_chunk(
    nursery: trio.Nursery,
) -> None:
    written = hashlib.sha256()
    samples: list[int] = []
    chunks = SLOW_READER_BYTES // CHUNK

    async def produce(output: duplex.Writable) -> None:
        for index in range(chunks):
            chunk = pattern(index)
            written.update(chunk)
            await output.write(chunk)
        await output.close_write()

    async def sample(output: duplex.Writable) -> None:
        while not output.is_empty:  # a sampler: nothing signals each size
            samples.append(output.queued)
            await trio.sleep(0.005)

    async def slow_body(request: duplex.Request) -> duplex.Response:
        output = duplex.Writable(max_buffer_size=BUFFER, length=SLOW_READER_BYTES)
        request.nursery.start_soon(produce, output)
        nursery.start_soon(sample, output)
        return duplex.Response(200, body=output)

    # A write timeout far below the whole transfer: only a lack of progress may cut it.
    limits = duplex.Limits(write_timeout=1.0)
    received = hashlib.sha256()
    total = 0
    duration = SLOW_READER_BYTES / SLOW_READER_RATE
    with trio.fail_after(duration * 2 + 10):
        async with (
            serving(slow_body, limits=limits) as server,
            await RawClient.connect(server.port) as client,
        ):
            assert isinstance(client.stream, trio.SocketStream)
            client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
            await client.send(request_bytes())
            head = await client.read_head()
            start = trio.current_time()
            data = bytes(client.buffer)
            while True:
                received.update(data)
                total += len(data)
                if total >= SLOW_READER_BYTES:
                    break
                # Hold the rate: the next read waits until the bytes so far are due.
                await trio.sleep_until(start + total / SLOW_READER_RATE)
                data = await client.stream.receive_some(CHUNK)
                assert data, f"the server closed after {total} bytes"
            elapsed = trio.current_time() - start
    assert head.status == 200
    assert total == SLOW_READER_BYTES
    assert received.digest() == written.digest()
    assert elapsed > duration * 0.9
    assert max(samples) <= BUFFER + CHUNK


async def test_a_slow_writer_that_keeps_making_progress_is_not_cut_by_read_timeout() -> None:
    size, rate, piece = 512 * 1024, 512 * 1024, 16384
    body = os.urandom(size)

    async def digest(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=hashlib.sha256(await request.body.join()).hexdigest())

    limits = duplex.Limits(read_timeout=0.3)
    with trio.fail_after(10):
        async with (
            serving(digest, limits=limits) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes(method="POST", headers=f"Content-Length: {size}\r\n"))
            start = trio.current_time()
            for offset in range(0, size, piece):
                await trio.sleep_until(start + offset / rate)
                await client.send(body[offset : offset + piece])
            response = await client.read_response()
            elapsed = trio.current_time() - start
    assert response.body == hashlib.sha256(body).hexdigest().encode()
    assert elapsed > 3 * limits.read_timeout  # type: ignore[operator]


async def echo(request: duplex.Request) -> duplex.Response:
    async def copy(stream: duplex.Stream) -> None:
        while chunk := await stream.readpartial():
            await stream.write(chunk)

    return duplex.Response(200, body=duplex.Streamable(copy))


async def test_a_body_stalling_past_read_timeout_gets_408_counted_from_its_last_progress() -> None:
    limits = duplex.Limits(read_timeout=0.5)

    async def join_body(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=await request.body.join())

    with trio.fail_after(5):
        async with (
            serving(join_body, limits=limits) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes(method="POST", headers="Content-Length: 10\r\n"))
            await client.send(b"12")
            await trio.sleep(0.3)  # a pause shorter than read_timeout: progress resumes
            await client.send(b"34")
            last_progress = trio.current_time()
            response = await client.read_response()
            waited = trio.current_time() - last_progress
            await client.expect_closed()
    assert response.status == 408
    assert 0.5 <= waited < 1.0


async def test_a_body_stalling_past_read_timeout_after_the_response_began_is_cut_without_408() -> (
    None
):
    limits = duplex.Limits(read_timeout=0.3)
    with trio.fail_after(5):
        async with (
            serving(echo, limits=limits) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(
                request_bytes(method="POST", headers="Transfer-Encoding: chunked\r\n")
                + b"5\r\nhello\r\n"
            )
            head = await client.read_head()
            assert await client.read_chunk() == b"hello"
            stalled_at = trio.current_time()
            rest = await client.read_until_eof()
            waited = trio.current_time() - stalled_at
    assert head.status == 200
    assert b"408" not in rest
    assert not rest.endswith(b"0\r\n\r\n")  # the response was cut, not ended
    assert 0.3 <= waited < 0.8


async def test_an_idle_kept_alive_connection_closes_silently_at_keep_alive_timeout() -> None:
    limits = duplex.Limits(keep_alive_timeout=0.3, header_timeout=5)
    with trio.fail_after(5):
        async with (
            serving(hello, limits=limits) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes())
            # The server's wait starts once it has sent the response, so after this
            # point: measured from here, the idle time is never under the timeout.
            idle_since = trio.current_time()
            await client.read_response()
            await client.expect_closed()
            idled = trio.current_time() - idle_since
    assert 0.3 <= idled < 0.8


async def test_a_new_connection_idles_until_header_timeout_not_keep_alive_timeout() -> None:
    limits = duplex.Limits(keep_alive_timeout=0.1, header_timeout=0.6)
    with trio.fail_after(5):
        async with (
            serving(hello, limits=limits) as server,
            await RawClient.connect(server.port) as client,
        ):
            connected = trio.current_time()
            await client.expect_closed()
            idled = trio.current_time() - connected
    assert 0.6 <= idled < 1.1


async def test_a_head_begun_on_a_kept_alive_connection_gets_408_at_header_timeout() -> None:
    limits = duplex.Limits(keep_alive_timeout=0.3, header_timeout=0.8)
    with trio.fail_after(5):
        async with (
            serving(hello, limits=limits) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes())
            await client.read_response()
            answered = trio.current_time()
            await trio.sleep(0.1)  # a client pausing before its next request
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
            response = await client.read_response()
            waited = trio.current_time() - answered
            await client.expect_closed()
    assert response.status == 408
    # The head's deadline runs from the previous response, and keep_alive_timeout no
    # longer applies once the head has begun.
    assert 0.8 <= waited < 1.3
