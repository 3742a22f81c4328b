"""When an exchange ends badly: a peer that vanishes, a handler that fails.

Either way the damage stays inside one exchange: bodies raise
``trio.BrokenResourceError``, ``request.nursery`` is cancelled, a partial response is
never mistaken for a whole one, and the listener goes on serving.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import trio

import duplex
from _channel_support import ConnectionEnded
from _protocol_support import H2Exchange, exchange
from _server_support import RawClient, request_bytes, serving

pytestmark = pytest.mark.both_protocols


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.ERROR]


async def status_of(server: duplex.Server, target: str = "/") -> int:
    """The status of a GET on a client of the test's protocol."""
    async with duplex.Client() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}{target}")
        await response.aclose()
        return response.status


class Streaming:
    """A handler streaming an endless response that a producer task writes.

    The producer runs in ``producers``, a nursery of the test's: inside
    ``request.nursery`` it would see the nursery's cancellation before the broken body.
    It notes what the producer's write raised and whether the exchange's nursery was
    cancelled, and answers ``/next`` plainly.
    """

    def __init__(self, producers: trio.Nursery) -> None:
        self.producers = producers
        self.write_error: BaseException | None = None
        self.nursery_cancelled = trio.Event()
        self.streaming = trio.Event()
        self.stopped = trio.Event()

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        if request.target == "/next":
            return duplex.Response(200, body=b"next")
        output = duplex.Writable()
        self.producers.start_soon(self.produce, output)
        request.nursery.start_soon(self.watch)
        return duplex.Response(200, body=output)

    async def produce(self, output: duplex.Writable) -> None:
        try:
            while True:
                await output.write(b"tick\n" * 1000)
                self.streaming.set()
        except trio.BrokenResourceError as error:
            self.write_error = error
            self.stopped.set()

    async def watch(self) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.nursery_cancelled.set()
            raise


async def test_a_client_vanishing_mid_response_breaks_the_writer_and_cancels_the_nursery(
    caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    """Over HTTP/2 the client resets its stream (the connection stays up)."""
    caplog.set_level(logging.DEBUG, logger="duplex")
    with trio.fail_after(5):
        async with trio.open_nursery() as producers:
            handler = Streaming(producers)
            async with serving(handler) as server:
                async with exchange(server.port, protocol) as client:
                    await client.request("/")
                    await client.read_chunk()
                    await handler.streaming.wait()
                    await client.leave()
                    with trio.fail_after(1):
                        await handler.stopped.wait()
                        await handler.nursery_cancelled.wait()
                assert isinstance(handler.write_error, trio.BrokenResourceError)
                assert await status_of(server, "/next") == 200
    assert errors(caplog) == []
    assert any(record.levelno == logging.DEBUG for record in caplog.records)


async def test_a_client_vanishing_mid_request_body_breaks_the_handlers_read(
    protocol: str,
) -> None:
    """Over HTTP/2 the client closes the connection (its stream with it)."""
    outcome: list[BaseException] = []
    first_chunk = trio.Event()
    broken = trio.Event()

    async def reader(request: duplex.Request) -> duplex.Response:
        assert await request.body.read() == b"start"
        first_chunk.set()
        try:
            await request.body.read()
        except trio.BrokenResourceError as error:
            outcome.append(error)
            broken.set()
        return duplex.Response(200)

    with trio.fail_after(5):
        async with serving(reader) as server:
            async with exchange(server.port, protocol) as client:
                await client.start("/", method="POST", headers="Content-Length: 100\r\n", body=True)
                await client.send(b"start")
                await first_chunk.wait()
            with trio.fail_after(1):
                await broken.wait()
    assert isinstance(outcome[0], trio.BrokenResourceError)


async def test_a_request_body_ending_short_of_its_content_length_breaks_the_handlers_read(
    protocol: str,
) -> None:
    """The body never reads as whole, nor is answered as one. Over HTTP/1.1 the client
    half-closes its connection; over HTTP/2 it ends its stream, and a neighbour stream
    goes on."""
    outcome: list[str] = []

    async def reader(request: duplex.Request) -> duplex.Response:
        try:
            body = await request.body.join()
        except trio.BrokenResourceError:
            outcome.append("broken")
            raise
        outcome.append(f"whole: {body!r}")
        return duplex.Response(200, body=body)

    with trio.fail_after(5):
        async with serving(reader) as server, exchange(server.port, protocol) as client:
            neighbour = None
            if isinstance(client, H2Exchange):
                neighbour = await client.peer.request(
                    "POST", "/", [("content-length", "6")], body=b"abc", end=False
                )
            await client.start("/", method="POST", headers="Content-Length: 10\r\n", body=True)
            await client.send(b"12345")
            if isinstance(client, H2Exchange):
                await client.end()
            else:
                await client.stream.send_eof()
            with contextlib.suppress(ConnectionEnded):  # a 4xx, or the stream cut: no 200
                await client.read_head()
            assert client.status != 200, client.status
            if isinstance(client, H2Exchange):
                assert neighbour is not None
                await client.peer.send(neighbour, b"def", end=True)
                assert bytes((await client.peer.response(neighbour)).data) == b"abcdef"
    assert outcome[0] == "broken"


async def test_a_handler_stopped_by_a_vanished_client_is_not_logged_as_an_error(
    caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    reading = trio.Event()
    done = trio.Event()

    async def careless(request: duplex.Request) -> duplex.Response:
        reading.set()
        try:
            return duplex.Response(200, body=await request.body.join())
        finally:
            done.set()

    with trio.fail_after(5):
        async with serving(careless) as server:
            async with exchange(server.port, protocol) as client:
                await client.start("/", method="POST", headers="Content-Length: 100\r\n", body=True)
                await reading.wait()
                await client.leave()
                await done.wait()
            assert await status_of(server) == 200
    assert errors(caplog) == []


async def test_a_handler_that_raises_before_answering_gets_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing(request: duplex.Request) -> duplex.Response:
        if request.target == "/next":
            return duplex.Response(200)
        raise RuntimeError("boom")

    with trio.fail_after(5):
        async with serving(failing) as server, duplex.Client() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/")
            body = await response.read()
            assert await status_of(server, "/next") == 200
    assert response.status == 500
    assert b"boom" not in body
    assert [record.exc_info[0] for record in errors(caplog) if record.exc_info] == [RuntimeError]


@pytest.mark.both_protocols(False)
async def test_after_a_500_for_a_raising_handler_the_connection_closes() -> None:
    async def failing(request: duplex.Request) -> duplex.Response:
        raise RuntimeError("boom")

    with trio.fail_after(5):
        async with serving(failing) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes())
            response = await client.read_response()
            await client.expect_closed()
    assert response.status == 500


async def test_a_handler_that_returns_something_else_than_a_response_gets_500() -> None:
    async def confused(request: duplex.Request) -> duplex.Response:
        return "not a response"  # type: ignore[return-value]

    with trio.fail_after(5):
        async with serving(confused) as server:
            assert await status_of(server) == 500


async def failing_chunks() -> AsyncIterator[bytes]:
    yield b"partial"
    raise RuntimeError("failed mid-body")


async def failing_streamable(stream: duplex.Stream) -> None:
    await stream.write(b"partial")
    await stream.flush()
    raise RuntimeError("failed mid-body")


async def failing_writable(request: duplex.Request) -> duplex.Response:
    if request.target == "/next":
        return duplex.Response(200)
    output = duplex.Writable(max_buffer_size=0)

    async def produce() -> None:
        await output.write(b"partial")  # returns once the server has taken it
        await output.close_write(RuntimeError("failed mid-body"))

    request.nursery.start_soon(produce)
    return duplex.Response(200, body=output)


def respond_with(make: Callable[[], AsyncIterator[bytes] | duplex.Streamable]) -> duplex.Handler:
    """A handler whose response body is made anew for each request."""

    async def handler(request: duplex.Request) -> duplex.Response:
        if request.target == "/next":
            return duplex.Response(200)
        return duplex.Response(200, body=make())

    return handler


@pytest.mark.parametrize(
    "handler",
    [
        respond_with(failing_chunks),
        respond_with(lambda: duplex.Streamable(failing_streamable)),
        failing_writable,
    ],
    ids=["async-iterable", "streamable", "writable"],
)
async def test_a_body_failing_after_the_head_cuts_the_exchange_mid_body(
    handler: duplex.Handler, protocol: str
) -> None:
    """Over HTTP/1.1 the connection is cut, over HTTP/2 the stream is reset."""
    with trio.fail_after(5):
        async with serving(handler) as server:
            async with exchange(server.port, protocol) as client:
                await client.request("/")
                assert await client.read_chunk() == b"partial"
                with pytest.raises(ConnectionEnded):
                    await client.read_body()
            assert await status_of(server, "/next") == 200


async def test_a_response_longer_than_its_content_length_is_cut_and_logged_as_an_error(
    caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    async def inconsistent(request: duplex.Request) -> duplex.Response:
        if request.target == "/next":
            return duplex.Response(200)
        return duplex.Response(200, {"content-length": "3"}, body=b"hello")

    with trio.fail_after(5):
        async with serving(inconsistent) as server:
            async with exchange(server.port, protocol) as client:
                with pytest.raises(ConnectionEnded):
                    await client.request("/")
                    await client.read_body()
            assert await status_of(server, "/next") == 200
    assert len(errors(caplog)) == 1
