"""The client's bodies keep DESIGN §1 over a real socket, where a connection outlives
one exchange and a server can break, stall or stop reading: a response body stays
``b""`` once ended (whatever its connection carries next), breaks for good once broken,
has one reader at a time; a request body's writer learns when its bytes can no longer
reach the server, and a body that cannot be sent whole never reaches it as one.

(The shared behaviour suites run on these bodies in test_real_bodies.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import duplex
from _client_support import TIMEOUT, FakeServer, read_head, start_duplex, url

HALF = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"


async def answer_with_path(request: duplex.Request) -> duplex.Response:
    return duplex.Response(200, body=request.path.encode())


async def test_an_ended_response_body_reads_empty_while_its_connection_carries_the_next(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, answer_with_path)
        async with duplex.Client() as client:
            first = await client.get(url(server, "/first"))
            assert await first.read() == b"/first"
            second = await client.get(url(server, "/second"))
            assert client.pool.open_connections() == 1
            assert await first.body.read() == b""
            assert await second.read() == b"/second"
            assert await first.body.read() == b""


async def test_every_read_after_a_broken_response_raises_broken_resource_error(
    nursery: trio.Nursery,
) -> None:
    async def half_then_close(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(HALF)

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, half_then_close)
        async with duplex.Client() as client:
            response = await client.get(server.url)
            assert await response.body.read() == b"half"
            with pytest.raises(duplex.ProtocolError) as first:
                await response.body.read()
            for _ in range(2):
                with pytest.raises(trio.BrokenResourceError) as later:
                    await response.body.read()
                assert later.value.__cause__ is first.value


async def test_a_read_after_a_read_timeout_raises_broken_resource_error(
    nursery: trio.Nursery,
) -> None:
    async def half_then_stall(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(HALF)
        await trio.sleep_forever()

    limits = duplex.ClientLimits(read_timeout=0.2)
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, half_then_stall)
        async with duplex.Client(limits=limits) as client:
            response = await client.get(server.url)
            assert await response.body.read() == b"half"
            with pytest.raises(duplex.Timeout) as timeout:
                await response.body.read()
            with pytest.raises(trio.BrokenResourceError) as later:
                await response.body.read()
            assert later.value.__cause__ is timeout.value


async def test_a_second_reader_of_a_response_body_waiting_on_the_socket_is_busy(
    nursery: trio.Nursery,
) -> None:
    output = duplex.Writable()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=output)

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, handler)
        async with duplex.Client() as client:
            response = await client.get(url(server))
            got: list[bytes] = []

            async def first_reader() -> None:
                got.append(await response.body.read())

            nursery.start_soon(first_reader)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await response.body.read()
            await output.write(b"for the first reader")
            await output.close_write()
            await trio.testing.wait_all_tasks_blocked()
            assert got == [b"for the first reader"]
            assert await response.read() == b""


async def test_a_response_body_closed_from_another_task_wakes_its_reader_with_closed(
    nursery: trio.Nursery,
) -> None:
    async def never_ends(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(HALF)
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, never_ends)
        async with duplex.Client() as client:
            response = await client.get(server.url)
            assert await response.body.read() == b"half"
            raised: list[BaseException] = []

            async def reader() -> None:
                try:
                    await response.body.read()
                except trio.ClosedResourceError as error:
                    raised.append(error)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await response.body.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert len(raised) == 1
            assert client.pool.open_connections() == 0


async def test_a_request_body_closed_with_an_error_never_reaches_the_server_whole(
    nursery: trio.Nursery,
) -> None:
    received: list[bytes] = []
    ended = trio.Event()

    async def record(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while data := await stream.receive_some(65536):
            received.append(data)
        ended.set()

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, record)
        async with duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(server.url, body=output)
            await output.write(b"the first half")
            failure = RuntimeError("the producer gave up")
            await output.close_write(failure)
            with pytest.raises(duplex.ProtocolError) as caught:
                await response.read()
            assert caught.value.__cause__ is not None
            assert caught.value.__cause__.__cause__ is failure
            await ended.wait()
        assert not b"".join(received).endswith(b"0\r\n\r\n")


async def test_a_request_body_longer_than_its_length_breaks_its_writer_and_the_exchange(
    nursery: trio.Nursery,
) -> None:
    async def wait_for_the_body(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=await request.body.join())

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, wait_for_the_body)
        async with duplex.Client() as client:
            output = duplex.Writable(length=3)
            posted: list[duplex.ProtocolError] = []

            async def post() -> None:
                with pytest.raises(duplex.ProtocolError) as caught:
                    await client.post(url(server), body=output)
                posted.append(caught.value)

            nursery.start_soon(post)
            with pytest.raises(trio.BrokenResourceError) as broken:
                while True:
                    await output.write(b"more than three bytes")
            assert isinstance(broken.value.__cause__, duplex.ProtocolError)
            await trio.testing.wait_all_tasks_blocked()
            assert posted == [broken.value.__cause__]
            assert client.pool.open_connections() == 0


async def test_a_request_body_whose_server_answered_and_left_breaks_its_writer(
    nursery: trio.Nursery,
) -> None:
    async def answer_then_close(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answer_then_close)
        async with duplex.Client() as client:

            async def endless() -> AsyncIterator[bytes]:
                while True:
                    yield bytes(65536)

            output = duplex.Writable()
            response = await client.post(server.url, body=output)
            assert await response.read() == b"ok"
            with pytest.raises(trio.BrokenResourceError):
                async for chunk in endless():
                    await output.write(chunk)
            with pytest.raises(trio.ClosedResourceError):
                await output.close_write()
                await output.write(b"after close_write")
            assert client.pool.open_connections() == 0


class UploadThenHold:
    """A server that answers at once with one chunk, reads the request body to its
    end, then either keeps silent or streams without end, until the client closes."""

    def __init__(self, endless: bool) -> None:
        self.endless = endless
        self.request_ended = trio.Event()
        self.client_closed = trio.Event()

    async def respond(self, stream: trio.SocketStream) -> None:
        received = await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n")
        try:
            while not received.endswith(b"0\r\n\r\n"):
                received += await stream.receive_some(65536)
            self.request_ended.set()
            while True:
                if self.endless:
                    await stream.send_all(b"10000\r\n" + bytes(65536) + b"\r\n")
                elif not await stream.receive_some(65536):
                    return
        finally:
            self.client_closed.set()


@pytest.mark.parametrize("endless", [False, True], ids=["silent", "endless"])
async def test_a_response_given_up_is_cut_off_soon_after_its_request_has_gone_out(
    nursery: trio.Nursery, endless: bool
) -> None:
    server = UploadThenHold(endless)
    limits = duplex.ClientLimits(read_timeout=0.2)
    with trio.fail_after(TIMEOUT):
        fake = await FakeServer.start(nursery, server.respond)
        async with duplex.Client(limits=limits) as client:
            output = duplex.Writable()
            response = await client.post(fake.url, body=output)
            assert await response.body.read() == b"half"
            await response.body.aclose()
            await output.write(b"still going up")
            await output.close_write()
            await server.request_ended.wait()
            await server.client_closed.wait()
            assert client.pool.open_connections() == 0


async def test_a_response_body_closed_while_read_and_its_request_streams_hands_the_socket_over(
    nursery: trio.Nursery,
) -> None:
    # The reader waits on the socket when another task closes the body while the request
    # still streams: the reader wakes with ClosedResourceError, and only then does the
    # task that drops the rest of the response wait on the socket (two waiters on one
    # socket raise trio.BusyResourceError, which would crash the client's nursery).
    request_ended = trio.Event()

    async def answer_after_the_request(stream: trio.SocketStream) -> None:
        received = await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while not received.endswith(b"0\r\n\r\n"):
            received += await stream.receive_some(65536)
        request_ended.set()
        await stream.send_all(b"5\r\nafter\r\n0\r\n\r\n")
        await read_head(stream)  # until the client closes or sends another request

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, answer_after_the_request)
        async with duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(server.url, body=output)
            raised: list[BaseException] = []

            async def reader() -> None:
                try:
                    await response.body.read()
                except trio.ClosedResourceError as error:
                    raised.append(error)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await response.body.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert len(raised) == 1
            await output.write(b"still going up")
            await output.close_write()
            await request_ended.wait()
            await trio.testing.wait_all_tasks_blocked()
            # The rest was dropped and the exchange ended cleanly: the connection is kept.
            assert client.pool.idle_connections() == 1


async def test_a_response_given_up_is_read_to_its_end_when_its_server_still_owes_an_echo(
    nursery: trio.Nursery,
) -> None:
    # Once the request has gone out, an echoing server may still owe the echo of all
    # that the socket buffers on both sides held of it (several MiB on Linux): the client
    # reads and drops as much as the request carried rather than reset the connection
    # (which would lose the end of the request on its way), and keeps the connection.
    size = 4 << 20
    echoed = trio.Event()

    async def echo_once_read(stream: trio.SocketStream) -> None:
        received = bytearray(await read_head(stream))
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n")
        while not received.endswith(b"0\r\n\r\n"):
            received += await stream.receive_some(65536)
        for _ in range(size // 65536):
            await stream.send_all(b"10000\r\n" + bytes(65536) + b"\r\n")
        await stream.send_all(b"0\r\n\r\n")
        echoed.set()
        await read_head(stream)  # until the client closes or sends another request

    with trio.fail_after(TIMEOUT):
        fake = await FakeServer.start(nursery, echo_once_read)
        async with duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(fake.url, body=output)
            assert await response.body.read() == b"half"
            await response.body.aclose()
            for _ in range(size // 65536):
                await output.write(bytes(65536))
            await output.close_write()
            await echoed.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert client.pool.open_connections() == client.pool.idle_connections() == 1
