"""A server that breaks HTTP or the connection gives ``duplex.ProtocolError`` (a
``trio.BrokenResourceError``, the parser's or the socket's error as ``__cause__``): never a
raw h11 exception, never a hang, and never a connection left to the pool."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Callable

import h11
import pytest
import trio

import duplex
from _client_support import TIMEOUT, FakeServer, Respond, read_head, start_duplex, url


def answering(*pieces: bytes) -> Respond:
    """A server that reads a request head, sends ``pieces`` and closes."""

    async def respond(stream: trio.SocketStream) -> None:
        await read_head(stream)
        for piece in pieces:
            await stream.send_all(piece)

    return respond


async def fetch(server: FakeServer) -> duplex.ProtocolError:
    """GET from ``server`` and read the body to its end; the error that came out."""
    async with duplex.Client() as client:
        with pytest.raises(duplex.ProtocolError) as caught:
            await (await client.get(server.url)).read()
        assert client.pool.open_connections() == 0
    return caught.value


async def test_a_server_closing_mid_content_length_body_raises_protocol_error(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
        server = await FakeServer.start(nursery, answering(head, b"only part"))
        async with duplex.Client() as client:
            response = await client.get(server.url)
            assert await response.body.read() == b"only part"
            with pytest.raises(duplex.ProtocolError) as caught:
                await response.body.read()
        assert isinstance(caught.value, trio.BrokenResourceError)
        assert caught.value.__cause__ is not None


async def test_a_server_closing_mid_chunked_body_raises_protocol_error(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        server = await FakeServer.start(nursery, answering(head, b"5\r\nhello\r\n"))
        error = await fetch(server)
        assert error.__cause__ is not None


async def test_a_server_closing_mid_head_raises_protocol_error(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answering(b"HTTP/1.1 200 OK\r\nContent-"))
        error = await fetch(server)
        assert error.__cause__ is not None


async def test_a_server_closing_before_answering_raises_protocol_error(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answering())
        error = await fetch(server)
        assert error.__cause__ is not None
        assert server.connections == 1  # a fresh connection is not retried


async def test_a_server_resetting_the_connection_raises_protocol_error(
    nursery: trio.Nursery,
) -> None:
    async def reset(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        # Linger on, for 0 s: closing sends a reset rather than a FIN.
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, reset)
        error = await fetch(server)
        assert error.__cause__ is not None


async def test_a_garbage_response_raises_protocol_error(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
        error = await fetch(server)
        assert isinstance(error.__cause__, h11.RemoteProtocolError)


async def test_a_bad_chunk_size_raises_protocol_error(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        server = await FakeServer.start(nursery, answering(head, b"zz\r\nhello\r\n0\r\n\r\n"))
        error = await fetch(server)
        # Bodies are parsed by duplex's wire (heads by h11 when not plainly well-formed).
        assert isinstance(error.__cause__, duplex.ProtocolError)
        assert "chunk size" in str(error.__cause__)


async def test_an_invalid_content_length_raises_protocol_error(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        head = b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n"
        server = await FakeServer.start(nursery, answering(head))
        await fetch(server)


async def test_a_response_head_over_the_limit_raises_protocol_error(
    nursery: trio.Nursery,
) -> None:
    limits = duplex.ClientLimits(max_response_header_size=4096)
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"x" * 8192 + b"\r\n\r\n"
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answering(head))
        async with duplex.Client(limits=limits) as client:
            with pytest.raises(duplex.ProtocolError):
                await client.get(server.url)
            assert client.pool.open_connections() == 0


async def test_a_response_head_that_never_ends_is_cut_at_the_limit(
    nursery: trio.Nursery,
) -> None:
    async def endless_head(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\n")
        while True:
            await stream.send_all(b"X-Padding: " + b"x" * 1000 + b"\r\n")

    limits = duplex.ClientLimits(max_response_header_size=16384)
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, endless_head)
        async with duplex.Client(limits=limits) as client:
            with pytest.raises(duplex.ProtocolError):
                await client.get(server.url)


@pytest.mark.parametrize("kind", [bytes, duplex.Buffered])
async def test_an_early_answer_to_a_body_the_server_refused_is_returned(
    nursery: trio.Nursery, kind: Callable[[bytes], duplex.http.RequestBody]
) -> None:
    async def never_called(request: duplex.Request) -> duplex.Response:
        raise AssertionError("a body over the limit reached the handler")

    limits = duplex.Limits(max_body_size=1000)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, never_called, limits=limits)
        async with duplex.Client() as client:
            response = await client.post(url(server), body=kind(bytes(8 << 20)))
            assert response.status == 413
            assert b"too large" in await response.read()


async def test_an_unreachable_server_raises_os_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        with trio.fail_after(TIMEOUT):
            async with duplex.Client() as client:
                with pytest.raises(OSError):
                    await client.get(f"http://127.0.0.1:{port}/")
                assert client.pool.open_connections() == 0


async def test_a_failing_request_body_cuts_the_connection(nursery: trio.Nursery) -> None:
    received: list[bytes] = []
    ended = trio.Event()

    async def record(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while data := await stream.receive_some(65536):
            received.append(data)
        ended.set()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"the first half"
        raise RuntimeError("the producer failed")

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, record)
        async with duplex.Client() as client:
            response = await client.post(server.url, body=chunks())
            with pytest.raises(duplex.ProtocolError):
                await response.read()
            await ended.wait()
            assert client.pool.open_connections() == 0
        sent = b"".join(received)
        assert b"the first half" in sent
        assert not sent.endswith(b"0\r\n\r\n")  # never a cut body framed as a whole one


async def test_a_broken_request_body_writer_sees_the_server_going_away(
    nursery: trio.Nursery,
) -> None:
    async def answer_then_close(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answer_then_close)
        async with duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(server.url, body=output)
            assert await response.read() == b"ok"
            with pytest.raises(trio.BrokenResourceError):
                while True:
                    await output.write(bytes(65536))
            assert client.pool.open_connections() == 0


async def test_interim_responses_before_the_final_one_are_skipped(nursery: trio.Nursery) -> None:
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\n" * 3 + b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    )
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answering(interim, head))
        async with duplex.Client() as client:
            response = await client.get(server.url)
            assert response.status == 200
            assert await response.read() == b"ok"


async def endless_interim_responses(stream: trio.SocketStream) -> None:
    await read_head(stream)
    while True:
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n" * 64)


@pytest.mark.parametrize("limit", [4096, None], ids=["small-limit", "default-limit"])
async def test_an_endless_stream_of_interim_responses_is_cut_at_the_head_limit(
    nursery: trio.Nursery, limit: int | None
) -> None:
    limits = (
        duplex.ClientLimits()
        if limit is None
        else duplex.ClientLimits(max_response_header_size=limit)
    )
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, endless_interim_responses)
        async with duplex.Client(limits=limits) as client:
            with pytest.raises(duplex.ProtocolError, match="response head"):
                await client.get(server.url)
            assert client.pool.open_connections() == 0


async def test_interim_responses_that_stall_meet_the_read_timeout(nursery: trio.Nursery) -> None:
    async def one_interim_then_nothing(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        await trio.sleep_forever()

    limits = duplex.ClientLimits(read_timeout=0.2)
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, one_interim_then_nothing)
        async with duplex.Client(limits=limits) as client:
            with pytest.raises(duplex.Timeout) as caught:
                await client.get(server.url)
            assert caught.value.phase == "read"
            assert client.pool.open_connections() == 0
