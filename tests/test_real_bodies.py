"""One contract, every body (DESIGN §1): the shared suites on the bodies that cross a
real socket.

Every test of test_readable.py, test_stream.py and test_writable.py that takes a body,
a stream pair or a pipe from a fixture runs here too, on what duplex hands a user over
HTTP/1.1 on 127.0.0.1: the server's ``request.body``, the ``Stream`` a ``Streamable``
gets and its output, the client's request and response bodies, and a plain-HTTP channel
as its client sees it; and the client's bodies over HTTP/2 (h2c, one stream each: the
``h2_`` factories) with their peers on duplex's server. trio's stream checkers and
hypothesis properties run on the same ends. What the suites cannot say about a socket
(a peer learns of a close only later, a write blocks once the socket is full) has tests
of its own at the end.

A test that fails today because of a defect is marked xfail, strictly, from the
``KNOWN_FAILURES`` table, which says what is wrong.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Literal

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import duplex
import test_readable
import test_stream
import test_writable
from _real_body_support import (
    Expected,
    Handoff,
    HeadHeld,
    apply_expectations,
    deadlock_guard,
    open_exchange,
    raw_chunked_post,
    tasks,
    unused,
    url,
)
from _server_support import RawClient, serving
from duplex.http.h1 import _client_exchange
from duplex.testing import Cancellation, cancellations, chunkings
from helpers import TIMEOUT, Call, background, produce
from test_properties import Read, payloads, payloads_with_lines, reads
from test_readable import BodyFactory, Factory, Source, StreamReader
from test_stream import PairFactory
from test_writable import Pipe, PipeFactory

# -- the suites, run here ------------------------------------------------------------


def run_here(suite: ModuleType, fixture: str, prefix: str) -> None:
    """Run here every test of ``suite`` that takes ``fixture``, named ``prefix`` + its
    name: a test added to the suite later runs on the real bodies too."""
    for name, test in vars(suite).items():
        if name.startswith("test_") and fixture in inspect.signature(test).parameters:
            globals()[f"test_{prefix}_{name.removeprefix('test_')}"] = test


run_here(test_readable, "make", "body")
run_here(test_readable, "make_body", "body")
run_here(test_stream, "make_pair", "stream")
run_here(test_writable, "make_pipe", "pipe")


# -- known failures ------------------------------------------------------------------

# Every test here runs on Linux's fast I/O path and on the portable one (tests/conftest.py).
pytestmark = pytest.mark.both_paths

# Nothing fails today; a defect found later is listed here until it is fixed.
KNOWN_FAILURES: list[Expected] = []

NOT_APPLICABLE: list[Expected] = [
    Expected(
        test,
        ("client_and_channel",),
        "a channel has no event for the end of the request body: its side never reads b''",
    )
    for test in [
        "test_close_write_lets_the_peer_read_what_is_queued_then_empty_bytes",
        "test_close_write_is_idempotent",
        "test_aclose_is_idempotent",
        "test_trio_names_work_too",
    ]
]


@pytest.fixture(autouse=True)
def known_failures(request: pytest.FixtureRequest) -> None:
    apply_expectations(request, KNOWN_FAILURES, NOT_APPLICABLE)


# -- drip: one chunk per read ----------------------------------------------------------


async def drip(chunks: list[bytes], send: Callable[[bytes], Awaitable[object]]) -> None:
    """Send each chunk only once every task waits, so the reader has taken everything
    before: a reader takes whatever has arrived, so chunks sent at once could come out of
    one read, while each chunk sent to a reader waiting on an empty socket is one read."""
    for chunk in chunks:
        await trio.testing.wait_all_tasks_blocked()
        await send(chunk)


def content_length_post(length: int) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % length


# -- readable bodies -------------------------------------------------------------------


def hand_over_body(handoff: Handoff[duplex.Readable]) -> duplex.Handler:
    async def handler(request: duplex.Request) -> duplex.Response:
        await handoff.give(request.body)
        return duplex.Response(204)

    return handler


@asynccontextmanager
async def server_request_body(chunks: list[bytes]) -> AsyncIterator[duplex.Readable]:
    """``request.body`` of a chunked request whose frames a raw client sent at once."""
    handoff: Handoff[duplex.Readable] = Handoff()
    async with (
        deadlock_guard(),
        serving(hand_over_body(handoff)) as server,
        await raw_chunked_post(server.port, chunks),
        handoff.taken() as body,
    ):
        yield body


@asynccontextmanager
async def server_request_body_with_length(chunks: list[bytes]) -> AsyncIterator[duplex.Readable]:
    """``request.body`` of a request with Content-Length, one chunk per read."""
    handoff: Handoff[duplex.Readable] = Handoff()
    async with (
        deadlock_guard(),
        serving(hand_over_body(handoff)) as server,
        await RawClient.connect(server.port) as client,
        tasks() as nursery,
    ):
        await client.send(content_length_post(sum(map(len, chunks))))
        async with handoff.taken() as body:
            nursery.start_soon(drip, chunks, client.send)
            yield body


@asynccontextmanager
async def streamable_input(chunks: list[bytes]) -> AsyncIterator[Source]:
    """The reading side of a ``Streamable``'s stream, for a raw chunked request."""
    handoff: Handoff[duplex.Stream] = Handoff()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=duplex.Streamable(handoff.give))

    async with (
        deadlock_guard(),
        serving(handler) as server,
        await raw_chunked_post(server.port, chunks),
        handoff.taken() as stream,
    ):
        yield StreamReader(stream)


@asynccontextmanager
async def client_response_body(chunks: list[bytes]) -> AsyncIterator[duplex.Readable]:
    """``response.body`` on the client, for a chunked response sent at once."""

    async def handler(request: duplex.Request) -> duplex.Response:
        async def each_chunk() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return duplex.Response(200, body=each_chunk())

    async with deadlock_guard(), serving(handler) as server, duplex.Client() as client:
        response = await client.get(url(server))
        yield response.body


@asynccontextmanager
async def client_response_body_with_length(
    chunks: list[bytes],
) -> AsyncIterator[duplex.Readable]:
    """``response.body`` on the client, for a response with Content-Length, one chunk
    per read."""

    async def handler(request: duplex.Request) -> duplex.Response:
        output = duplex.Writable(length=sum(map(len, chunks)))

        async def feed() -> None:
            await drip(chunks, output.write)
            await output.close_write()

        request.nursery.start_soon(feed)
        return duplex.Response(200, body=output)

    async with deadlock_guard(), serving(handler) as server, duplex.Client() as client:
        response = await client.get(url(server))
        yield response.body


@asynccontextmanager
async def client_stream_input(chunks: list[bytes]) -> AsyncIterator[Source]:
    """The reading side of the client's full-duplex ``Stream(response.body, output)``,
    for a ``Streamable`` that writes the chunks and returns."""

    async def handler(request: duplex.Request) -> duplex.Response:
        async def write_chunks(stream: duplex.Stream) -> None:
            for chunk in chunks:
                await stream.write(chunk)

        return duplex.Response(200, body=duplex.Streamable(write_chunks))

    async with deadlock_guard(), serving(handler) as server, duplex.Client() as client:
        output = duplex.Writable()
        response = await client.post(url(server), body=output)
        yield StreamReader(duplex.Stream(response.body, output))


@asynccontextmanager
async def channel_response_body(chunks: list[bytes]) -> AsyncIterator[duplex.Readable]:
    """``response.body`` of a plain-HTTP channel that sends the chunks and closes, to a
    client posting a streaming body."""
    handoff: Handoff[duplex.Channel] = Handoff()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=handoff.offer, on_receive=unused)

    async with (
        deadlock_guard(),
        serving(handler) as server,
        duplex.Client() as client,
        tasks() as nursery,
    ):
        responses: Handoff[duplex.ClientResponse] = Handoff()

        async def post() -> None:
            responses.offer(await client.post(url(server), body=duplex.Writable()))

        nursery.start_soon(post)
        channel = await handoff.take()
        for chunk in chunks:
            await channel.send(chunk)
        await channel.close()
        response = await responses.take()
        yield response.body


# The same client bodies over HTTP/2 (h2c with prior knowledge): one stream each.


@asynccontextmanager
async def h2_client_response_body(chunks: list[bytes]) -> AsyncIterator[duplex.Readable]:
    """``response.body`` of an HTTP/2 stream, for a response sent at once."""

    async def handler(request: duplex.Request) -> duplex.Response:
        async def each_chunk() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return duplex.Response(200, body=each_chunk())

    async with (
        deadlock_guard(),
        serving(handler) as server,
        duplex.Client(http2="prior-knowledge") as client,
    ):
        response = await client.get(url(server))
        assert response.http_version == "2"
        yield response.body


@asynccontextmanager
async def h2_client_response_body_with_length(
    chunks: list[bytes],
) -> AsyncIterator[duplex.Readable]:
    """``response.body`` of an HTTP/2 stream with Content-Length, one chunk per read."""

    async def handler(request: duplex.Request) -> duplex.Response:
        output = duplex.Writable(length=sum(map(len, chunks)))

        async def feed() -> None:
            await drip(chunks, output.write)
            await output.close_write()

        request.nursery.start_soon(feed)
        return duplex.Response(200, body=output)

    async with (
        deadlock_guard(),
        serving(handler) as server,
        duplex.Client(http2="prior-knowledge") as client,
    ):
        response = await client.get(url(server))
        assert response.http_version == "2"
        yield response.body


@asynccontextmanager
async def h2_client_stream_input(chunks: list[bytes]) -> AsyncIterator[Source]:
    """The reading side of the client's full-duplex ``Stream(response.body, output)``
    over one HTTP/2 stream, for a ``Streamable`` that writes the chunks and returns."""

    async def handler(request: duplex.Request) -> duplex.Response:
        async def write_chunks(stream: duplex.Stream) -> None:
            for chunk in chunks:
                await stream.write(chunk)

        return duplex.Response(200, body=duplex.Streamable(write_chunks))

    async with (
        deadlock_guard(),
        serving(handler) as server,
        duplex.Client(http2="prior-knowledge") as client,
    ):
        output = duplex.Writable()
        response = await client.post(url(server), body=output)
        yield StreamReader(duplex.Stream(response.body, output))


# The server's bodies over HTTP/2: a request body and a Streamable's input, the client
# (duplex's, h2c) writing one chunk per read.


@asynccontextmanager
async def _h2_post(
    handler: duplex.Handler, chunks: list[bytes], *, length: bool
) -> AsyncIterator[tuple[duplex.Server, trio.Nursery]]:
    """Serve ``handler``, and POST ``chunks`` to it over one HTTP/2 stream from a task:
    each chunk written only once every task waits (so that each is one read), then the
    end (with Content-Length when ``length``)."""
    async with (
        deadlock_guard(),
        serving(handler) as server,
        duplex.Client(http2="prior-knowledge") as client,
        tasks() as nursery,
    ):
        output = duplex.Writable(length=sum(map(len, chunks)) if length else None)

        async def post() -> None:
            response = await client.post(url(server), body=output)
            assert response.http_version == "2"
            await response.body.discard()

        async def write() -> None:
            await drip(chunks, output.write)
            await output.close_write()

        nursery.start_soon(post)
        nursery.start_soon(write)
        yield server, nursery


@asynccontextmanager
async def h2_server_request_body(chunks: list[bytes]) -> AsyncIterator[duplex.Readable]:
    """``request.body`` of an HTTP/2 stream of unknown length."""
    handoff: Handoff[duplex.Readable] = Handoff()
    async with (
        _h2_post(hand_over_body(handoff), chunks, length=False),
        handoff.taken() as body,
    ):
        yield body


@asynccontextmanager
async def h2_server_request_body_with_length(
    chunks: list[bytes],
) -> AsyncIterator[duplex.Readable]:
    """``request.body`` of an HTTP/2 stream with Content-Length."""
    handoff: Handoff[duplex.Readable] = Handoff()
    async with (
        _h2_post(hand_over_body(handoff), chunks, length=True),
        handoff.taken() as body,
    ):
        yield body


@asynccontextmanager
async def h2_streamable_input(chunks: list[bytes]) -> AsyncIterator[Source]:
    """The reading side of a ``Streamable``'s stream over one HTTP/2 stream."""
    handoff: Handoff[duplex.Stream] = Handoff()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=duplex.Streamable(handoff.give))

    async with _h2_post(handler, chunks, length=False), handoff.taken() as stream:
        yield StreamReader(stream)


READABLES: list[Factory] = [
    server_request_body,
    server_request_body_with_length,
    streamable_input,
    client_response_body,
    client_response_body_with_length,
    client_stream_input,
    channel_response_body,
    h2_client_response_body,
    h2_client_response_body_with_length,
    h2_client_stream_input,
    h2_server_request_body,
    h2_server_request_body_with_length,
    h2_streamable_input,
]
READABLES_WITH_LENGTH: list[BodyFactory] = [
    server_request_body_with_length,
    client_response_body_with_length,
    h2_client_response_body_with_length,
    h2_server_request_body_with_length,
]


@pytest.fixture(params=READABLES, ids=lambda factory: factory.__name__)
def make(request: pytest.FixtureRequest) -> Factory:
    factory: Factory = request.param
    return factory


@pytest.fixture(params=READABLES_WITH_LENGTH, ids=lambda factory: factory.__name__)
def make_body(request: pytest.FixtureRequest) -> BodyFactory:
    factory: BodyFactory = request.param
    return factory


# -- stream pairs ----------------------------------------------------------------------


@asynccontextmanager
async def streamable_and_client() -> AsyncIterator[tuple[duplex.Stream, duplex.Stream]]:
    """A ``Streamable``'s stream, and the client's full-duplex stream as its peer."""
    async with deadlock_guard(), open_exchange() as exchange:
        yield exchange.server_stream, exchange.client_stream


@asynccontextmanager
async def client_and_streamable() -> AsyncIterator[tuple[duplex.Stream, duplex.Stream]]:
    """The client's full-duplex stream, and a ``Streamable``'s stream as its peer."""
    async with deadlock_guard(), open_exchange() as exchange:
        yield exchange.client_stream, exchange.server_stream


@asynccontextmanager
async def client_and_channel() -> AsyncIterator[tuple[duplex.Stream, duplex.Stream]]:
    """The client's full-duplex stream to a plain-HTTP channel, and as its peer a stream
    over the channel: what it writes the channel sends, what the channel receives it
    reads (the end of the request body is not an event a channel has)."""
    handoff: Handoff[duplex.Channel] = Handoff()
    received = duplex.Writable()

    async def receive(channel: duplex.Channel, message: bytes) -> None:
        await received.write(message)

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=handoff.offer, on_receive=receive)

    async def forward(sent: duplex.Writable, channel: duplex.Channel) -> None:
        async for chunk in sent:
            await channel.send(chunk)
        await channel.close()

    async with (
        deadlock_guard(),
        serving(handler) as server,
        duplex.Client() as client,
        tasks() as nursery,
    ):
        output = duplex.Writable()
        responses: Handoff[duplex.ClientResponse] = Handoff()

        async def post() -> None:
            responses.offer(await client.post(url(server), body=output))

        nursery.start_soon(post)
        channel = await handoff.take()
        await trio.testing.wait_all_tasks_blocked()
        try:
            response = responses.take_nowait()
        except trio.WouldBlock:
            raise HeadHeld(
                "the channel holds its response head until its first message,"
                " while the client waits for the head before it writes"
            ) from None
        sent = duplex.Writable()
        nursery.start_soon(forward, sent, channel)
        yield duplex.Stream(response.body, output), duplex.Stream(received, sent)


@asynccontextmanager
async def h2_client_and_streamable() -> AsyncIterator[tuple[duplex.Stream, duplex.Stream]]:
    """The client's full-duplex stream over one HTTP/2 stream, and a ``Streamable``'s
    stream as its peer."""
    async with deadlock_guard(), open_exchange(http2="prior-knowledge") as exchange:
        yield exchange.client_stream, exchange.server_stream


@asynccontextmanager
async def h2_streamable_and_client() -> AsyncIterator[tuple[duplex.Stream, duplex.Stream]]:
    """A ``Streamable``'s stream, and the client's full-duplex stream over one HTTP/2
    stream as its peer."""
    async with deadlock_guard(), open_exchange(http2="prior-knowledge") as exchange:
        yield exchange.server_stream, exchange.client_stream


PAIRS: list[PairFactory] = [
    streamable_and_client,
    client_and_streamable,
    client_and_channel,
    h2_client_and_streamable,
    h2_streamable_and_client,
]


@pytest.fixture(params=PAIRS, ids=lambda factory: factory.__name__)
def make_pair(request: pytest.FixtureRequest) -> PairFactory:
    factory: PairFactory = request.param
    return factory


# -- pipes -----------------------------------------------------------------------------


@asynccontextmanager
async def client_request_body() -> AsyncIterator[Pipe]:
    """A ``Writable`` the client sends as a request body, read as ``request.body``."""
    handoff: Handoff[duplex.Readable] = Handoff()
    async with (
        deadlock_guard(),
        serving(hand_over_body(handoff)) as server,
        duplex.Client() as client,
        tasks() as nursery,
    ):
        body = duplex.Writable()

        async def post() -> None:
            with contextlib.suppress(duplex.ProtocolError):  # a test may break the body
                await client.post(url(server), body=body)

        nursery.start_soon(post)
        async with handoff.taken() as request_body:
            yield Pipe(body, request_body)


@asynccontextmanager
async def streamable_output() -> AsyncIterator[Pipe]:
    """A ``Streamable``'s output, read by the client as ``response.body``."""
    async with deadlock_guard(), open_exchange() as exchange:
        assert exchange.server_stream.output is not None
        yield Pipe(exchange.server_stream.output, exchange.response.body)


@asynccontextmanager
async def h2_client_request_body() -> AsyncIterator[Pipe]:
    """A ``Writable`` the client sends as the request body of an HTTP/2 stream, read as
    ``request.body``."""
    handoff: Handoff[duplex.Readable] = Handoff()
    async with (
        deadlock_guard(),
        serving(hand_over_body(handoff)) as server,
        duplex.Client(http2="prior-knowledge") as client,
        tasks() as nursery,
    ):
        body = duplex.Writable()

        async def post() -> None:
            with contextlib.suppress(duplex.ProtocolError):  # a test may break the body
                await client.post(url(server), body=body)

        nursery.start_soon(post)
        async with handoff.taken() as request_body:
            yield Pipe(body, request_body)


@asynccontextmanager
async def h2_streamable_output() -> AsyncIterator[Pipe]:
    """A ``Streamable``'s output, read by the client as ``response.body`` of an HTTP/2
    stream."""
    async with deadlock_guard(), open_exchange(http2="prior-knowledge") as exchange:
        assert exchange.server_stream.output is not None
        yield Pipe(exchange.server_stream.output, exchange.response.body)


PIPES: list[PipeFactory] = [
    client_request_body,
    streamable_output,
    h2_client_request_body,
    h2_streamable_output,
]


@pytest.fixture(params=PIPES, ids=lambda factory: factory.__name__)
def make_pipe(request: pytest.FixtureRequest) -> PipeFactory:
    factory: PipeFactory = request.param
    return factory


# -- what a socket adds: writes that block until the peer reads ------------------------


class Oops(Exception):
    pass


def numbered(index: int, size: int = 16384) -> bytes:
    """A chunk whose bytes say where it belongs, so that a reordering shows."""
    return bytes([index % 251]) * size


async def clog_with_a_write(
    nursery: trio.Nursery, writer: duplex.Writable
) -> tuple[Call[None], bytes]:
    """Write numbered chunks until one blocks because the peer reads nothing: that
    write, still blocked, and every byte written (the blocked chunk's too)."""
    written = bytearray()
    for index in range(100_000):
        chunk = numbered(index)
        written += chunk
        write = await background(nursery, writer.write, chunk)
        if write.blocked:
            return write, bytes(written)
        assert write.error is None, f"a write raised {write.error!r}"
    raise AssertionError("no write ever blocked")


async def clog_with_a_wait(
    nursery: trio.Nursery, writer: duplex.Writable
) -> tuple[Call[None], bytes]:
    """Write numbered chunks, each once ``wait_send_all_might_not_block`` returned, until
    that wait blocks: the wait, still blocked, and every byte written."""
    written = bytearray()
    for index in range(100_000):
        wait = await background(nursery, writer.wait_send_all_might_not_block)
        if wait.blocked:
            return wait, bytes(written)
        chunk = numbered(index)
        written += chunk
        write = await background(nursery, writer.write, chunk)
        assert write.done, "wait_send_all_might_not_block returned, yet the next write blocked"
    raise AssertionError("wait_send_all_might_not_block never blocked")


async def read_bytes(reader: duplex.Readable, size: int) -> bytes:
    """Read until ``size`` bytes have come (fewer only at the end)."""
    received = bytearray()
    while len(received) < size and (chunk := await reader.read()):
        received += chunk
    return bytes(received)


async def test_a_write_waits_while_the_peer_reads_nothing_and_ends_once_it_reads(
    make_pipe: PipeFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe, trio.open_nursery() as nursery:
            write, written = await clog_with_a_write(nursery, pipe.writer)
            assert await read_bytes(pipe.reader, len(written)) == written
            await trio.testing.wait_all_tasks_blocked()
            assert write.done
            assert write.error is None


async def test_two_writes_at_once_raise_busy_resource_error_while_one_waits(
    make_pipe: PipeFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe, trio.open_nursery() as nursery:
            write, written = await clog_with_a_write(nursery, pipe.writer)
            with pytest.raises(trio.BusyResourceError):
                await pipe.writer.write(b"second")
            assert await read_bytes(pipe.reader, len(written)) == written
            await trio.testing.wait_all_tasks_blocked()
            assert write.done


async def test_a_write_and_a_wait_at_once_raise_busy_resource_error_while_one_waits(
    make_pipe: PipeFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe, trio.open_nursery() as nursery:
            _, written = await clog_with_a_write(nursery, pipe.writer)
            with pytest.raises(trio.BusyResourceError):
                await pipe.writer.wait_send_all_might_not_block()
            assert await read_bytes(pipe.reader, len(written)) == written


async def test_close_write_while_a_write_waits_raises_busy_resource_error(
    make_pipe: PipeFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe, trio.open_nursery() as nursery:
            _, written = await clog_with_a_write(nursery, pipe.writer)
            with pytest.raises(trio.BusyResourceError):
                await pipe.writer.close_write()
            assert not pipe.writer.write_closed
            assert await read_bytes(pipe.reader, len(written)) == written


async def test_close_write_with_an_error_wakes_a_waiting_writer_and_breaks_the_reader(
    make_pipe: PipeFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe, trio.open_nursery() as nursery:
            write, written = await clog_with_a_write(nursery, pipe.writer)
            await pipe.writer.close_write(Oops())
            await trio.testing.wait_all_tasks_blocked()
            write.raised(trio.ClosedResourceError)
            received = bytearray()
            with pytest.raises(trio.BrokenResourceError) as raised:
                while chunk := await pipe.reader.read():
                    received += chunk
            assert raised.value.__cause__ is not None
            assert written.startswith(received)


async def test_wait_send_all_might_not_block_waits_while_the_peer_reads_nothing(
    make_pipe: PipeFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe, trio.open_nursery() as nursery:
            wait, written = await clog_with_a_wait(nursery, pipe.writer)
            assert written, "the wait blocked before anything was written"
            received = bytearray()
            while wait.blocked:
                received += await pipe.reader.read()
                await trio.testing.wait_all_tasks_blocked()
            assert wait.value is None
            assert written.startswith(received)


async def test_close_write_with_an_error_breaks_the_reader_with_a_cause(
    make_pipe: PipeFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe:
            await pipe.writer.write(b"partial")
            await pipe.writer.close_write(Oops())
            received = bytearray()
            with pytest.raises(trio.BrokenResourceError) as raised:
                while chunk := await pipe.reader.read():
                    received += chunk
            assert raised.value.__cause__ is not None
            assert b"partial".startswith(received)


async def test_writes_to_a_finished_requests_response_soon_break_once_its_reader_closed() -> None:
    with trio.fail_after(TIMEOUT):
        async with deadlock_guard(), open_exchange() as exchange:
            await exchange.client_stream.close_write()
            assert await exchange.server_stream.read() == b""
            await exchange.response.body.aclose()
            with pytest.raises(trio.BrokenResourceError) as raised:
                for index in range(1000):  # 16 MiB: more than any socket buffers
                    await exchange.server_stream.write(numbered(index))
            assert raised.value.__cause__ is not None


EXCHANGE_ENDS = pytest.mark.parametrize(
    "open_ends", [streamable_and_client, client_and_streamable], ids=lambda f: f.__name__
)


@EXCHANGE_ENDS
async def test_a_streams_aclose_from_another_task_wakes_a_waiting_writer_with_closed(
    open_ends: PairFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_ends() as (stream, peer), trio.open_nursery() as nursery:
            assert stream.output is not None
            write, written = await clog_with_a_write(nursery, stream.output)
            await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            write.raised(trio.ClosedResourceError)
            received = bytearray()
            with contextlib.suppress(trio.BrokenResourceError):
                while chunk := await peer.receive_some():
                    received += chunk
            assert written.startswith(received), "the peer received bytes never written"


async def test_a_request_body_cut_mid_chunk_breaks_the_servers_read_with_a_cause() -> None:
    handoff: Handoff[duplex.Readable] = Handoff()
    with trio.fail_after(TIMEOUT):
        async with deadlock_guard(), serving(hand_over_body(handoff)) as server:
            client = await raw_chunked_post(server.port, [b"whole"], last=False)
            async with handoff.taken() as body:
                assert await body.read() == b"whole"
                await client.send(b"10\r\nhalf a")
                await client.stream.aclose()
                with pytest.raises(trio.BrokenResourceError) as raised:
                    while await body.read():
                        pass
                assert raised.value.__cause__ is not None


async def test_a_response_cut_mid_body_breaks_the_clients_read_with_a_cause() -> None:
    async def cut_short(stream: duplex.Stream) -> None:
        await stream.write(b"whole")
        raise Oops("the handler fails mid-response")

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=duplex.Streamable(cut_short))

    with trio.fail_after(TIMEOUT):
        async with deadlock_guard(), serving(handler) as server, duplex.Client() as client:
            response = await client.get(url(server))
            assert await response.body.read() == b"whole"
            with pytest.raises(trio.BrokenResourceError) as raised:
                await response.body.read()
            assert raised.value.__cause__ is not None


# -- trio's checkers, over real sockets --------------------------------------------------


@asynccontextmanager
async def exchanges(
    *,
    clogged: bool = False,
    upload: bool = True,
    http2: bool | Literal["prior-knowledge"] = False,
) -> AsyncIterator[Callable[[], Awaitable[tuple[duplex.Stream, duplex.Stream]]]]:
    """A stream maker for trio's checkers: each call opens a new exchange and returns
    ``(the Streamable's stream, the client's stream)``; all end with the block.

    The client posts a ``Writable`` (full duplex), or (not ``upload``) sends a GET, whose
    stream has only the response to read. ``clogged``: each direction is full before
    the maker returns, so that a write blocks until the other end reads. The client
    sends from a ``Writable(0)`` written until a write blocks (then cancelled, which an
    in-memory write allows); the server's stream is written while
    ``wait_send_all_might_not_block`` says it may. ``http2`` as the client takes it
    (``"prior-knowledge"``: each exchange is a stream of one HTTP/2 connection).
    """
    streams: trio.MemorySendChannel[duplex.Stream]
    streams, taken = trio.open_memory_channel[duplex.Stream](100)
    finished = trio.Event()

    async def hand_over(stream: duplex.Stream) -> None:
        streams.send_nowait(stream)
        await finished.wait()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=duplex.Streamable(hand_over))

    # Each exchange on a connection of its own: a Streamable here lasts until the block
    # ends, so a connection whose exchange is complete on the wire still serves nothing
    # else until then.
    limits = duplex.ClientLimits(max_connections_per_origin=1000, max_idle_connections=0)
    # The checks close one end and write to the other, 100 bytes a write, until it
    # breaks: a server whose handler gave up an upload drops what comes for
    # linger_timeout, then closes; a client whose reader gave up a response drops up to
    # _LINGER_SIZE (1 MiB) of it, then closes. 1 MiB takes 10,000 writes, two CPU
    # seconds for the checks on the portable path, and a loaded machine made that more
    # than TIMEOUT: 64 KiB checks the same rule.
    server_limits = duplex.Limits(linger_timeout=0.2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_client_exchange, "_LINGER_SIZE", 65536)
        async with (
            serving(handler, limits=server_limits) as server,
            duplex.Client(limits=limits, http2=http2) as client,
        ):

            async def make() -> tuple[duplex.Stream, duplex.Stream]:
                output = duplex.Writable(0 if clogged else 65536) if upload else None
                response = await client.post(url(server), body=output)
                server_stream = await taken.receive()
                if clogged:
                    assert server_stream.output is not None
                    async with tasks() as clogging:  # the clogging calls still waiting end here
                        await clog_with_a_wait(clogging, server_stream.output)
                        if output is not None:
                            await clog_with_a_write(clogging, output)
                return server_stream, duplex.Stream(response.body, output)

            try:
                yield make
            finally:
                finished.set()


async def test_a_streamable_and_a_client_exchange_pass_trios_half_closeable_stream_check() -> None:
    with trio.fail_after(TIMEOUT):
        async with deadlock_guard(), exchanges() as make:
            await trio.testing.check_half_closeable_stream(make, None)


async def test_clogged_exchanges_pass_trios_half_closeable_stream_check() -> None:
    with trio.fail_after(TIMEOUT):
        async with deadlock_guard(), exchanges() as make, exchanges(clogged=True) as clogged:
            await trio.testing.check_half_closeable_stream(make, clogged)


async def test_a_streamable_and_a_client_h2_stream_pass_trios_half_closeable_stream_check() -> None:
    with trio.fail_after(TIMEOUT):
        async with deadlock_guard(), exchanges(http2="prior-knowledge") as make:
            await trio.testing.check_half_closeable_stream(make, None)


async def test_clogged_h2_streams_pass_trios_half_closeable_stream_check() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            exchanges(http2="prior-knowledge") as make,
            exchanges(http2="prior-knowledge", clogged=True) as clogged,
        ):
            await trio.testing.check_half_closeable_stream(make, clogged)


async def test_a_streamables_output_and_the_response_body_pass_trios_one_way_stream_check() -> None:
    def one_way(
        make: Callable[[], Awaitable[tuple[duplex.Stream, duplex.Stream]]],
    ) -> Callable[[], Awaitable[tuple[duplex.Stream, duplex.Readable]]]:
        async def make_one_way() -> tuple[duplex.Stream, duplex.Readable]:
            server_stream, client_stream = await make()
            assert client_stream.input is not None
            return duplex.Stream(None, server_stream.output), client_stream.input

        return make_one_way

    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            exchanges(upload=False) as make,
            exchanges(upload=False, clogged=True) as clogged,
        ):
            await trio.testing.check_one_way_stream(one_way(make), one_way(clogged))


# -- properties over a real echo ---------------------------------------------------------

# A few dozen examples each: every one starts a server and crosses real sockets.
cancelled_reads = st.lists(st.tuples(reads, cancellations(max_delay=6)), max_size=20)
cancelled_sizes = st.lists(
    st.tuples(st.integers(min_value=1, max_value=64), cancellations(max_delay=6)), max_size=20
)
REAL_PROPERTY = settings(
    deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


async def echo(stream: duplex.Stream) -> None:
    while chunk := await stream.readpartial(1024):
        await stream.write(chunk)


def echo_reading_by(
    plan: list[tuple[Read, Cancellation]],
) -> Callable[[duplex.Stream], Awaitable[None]]:
    """A ``Streamable`` that reads by ``plan`` (each read cancelled where its
    ``Cancellation`` falls), writes back what each read returned, then echoes the rest."""

    async def reading_by_plan(stream: duplex.Stream) -> None:
        async with trio.open_nursery() as nursery:
            for read, cancellation in plan:
                piece = b""
                with cancellation.around(nursery):
                    piece, _ = await read.on(stream)
                await stream.write(piece)
        await echo(stream)

    return reading_by_plan


async def post_and_read_the_echo(
    fn: Callable[[duplex.Stream], Awaitable[None]],
    chunks: list[bytes],
    receive: Callable[[duplex.Readable], Awaitable[bytes]] | None = None,
    http2: bool | Literal["prior-knowledge"] = False,
) -> bytes:
    """Post ``chunks`` from a ``Writable`` to a ``Streamable(fn)`` and read the response
    at the same time (by ``receive``, else to the end); ``http2`` as the client takes
    it."""

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=duplex.Streamable(fn))

    async with (
        deadlock_guard(),
        serving(handler) as server,
        duplex.Client(http2=http2) as client,
    ):
        output = duplex.Writable()
        response = await client.post(url(server), body=output)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, output, chunks)
            received = await (receive or duplex.Readable.join)(response.body)
        return received


@REAL_PROPERTY
@given(
    chunks=chunkings(st.one_of(payloads, payloads_with_lines), max_chunks=13), plan=cancelled_reads
)
async def test_an_echo_whose_reads_are_cancelled_anywhere_returns_every_byte_once_in_order(
    chunks: list[bytes], plan: list[tuple[Read, Cancellation]]
) -> None:
    with trio.fail_after(TIMEOUT):
        echoed = await post_and_read_the_echo(echo_reading_by(plan), chunks)
        assert echoed == b"".join(chunks)


@REAL_PROPERTY
@given(chunks=chunkings(payloads, max_chunks=13), plan=cancelled_sizes)
async def test_a_response_read_cancelled_anywhere_loses_no_byte_and_repeats_none(
    chunks: list[bytes], plan: list[tuple[int, Cancellation]]
) -> None:
    async def receive_by_plan(body: duplex.Readable) -> bytes:
        received = bytearray()
        async with trio.open_nursery() as nursery:
            for max_bytes, cancellation in plan:
                with cancellation.around(nursery):
                    received += await body.receive_some(max_bytes)
        return bytes(received + await body.join())

    with trio.fail_after(TIMEOUT):
        echoed = await post_and_read_the_echo(echo, chunks, receive_by_plan)
        assert echoed == b"".join(chunks)


@REAL_PROPERTY
@given(chunks=chunkings(payloads, max_chunks=13), plan=cancelled_sizes)
async def test_an_h2_response_read_cancelled_anywhere_loses_no_byte_and_repeats_none(
    chunks: list[bytes], plan: list[tuple[int, Cancellation]]
) -> None:
    async def receive_by_plan(body: duplex.Readable) -> bytes:
        received = bytearray()
        async with trio.open_nursery() as nursery:
            for max_bytes, cancellation in plan:
                with cancellation.around(nursery):
                    received += await body.receive_some(max_bytes)
        return bytes(received + await body.join())

    with trio.fail_after(TIMEOUT):
        echoed = await post_and_read_the_echo(echo, chunks, receive_by_plan, "prior-knowledge")
        assert echoed == b"".join(chunks)
