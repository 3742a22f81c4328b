"""The behaviour every readable body shares, run against each implementation.

Each factory opens a body that produces the given chunks and then ends: a ``Writable``
fed by a producer task (with a roomy buffer, and with none), a ``Buffered``, and a
``Writable`` read through a ``Stream``. A ``Stream`` is not a ``Readable`` (its
``read(n)`` reads bytes, not chunks), so it takes part through ``StreamReader``, which
maps each ``Readable`` method onto the ``Stream`` method that keeps the same promise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Protocol

import pytest
import trio
import trio.testing

from duplex import Buffered, Readable, Stream, Writable
from helpers import TIMEOUT, Method, each_method, produce

CHUNKS = [b"hello", b", ", b"world!"]


class Source(Protocol):
    """The reading contract of ``Readable``, as the shared suite uses it."""

    async def read(self) -> bytes: ...
    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...
    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def join(self) -> bytes: ...
    async def discard(self) -> None: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> object: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class StreamReader:
    """A ``Stream``'s reading side, spelled as the ``Readable`` API."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    async def read(self) -> bytes:
        return await self.stream.receive_some(None)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.stream.receive_some(max_bytes)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return aiter(self.stream)

    async def join(self) -> bytes:
        return await self.stream.read()

    async def discard(self) -> None:
        await self.stream.read()

    async def aclose(self) -> None:
        await self.stream.close_read()

    async def __aenter__(self) -> StreamReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stream.__aexit__(exc_type, exc_value, traceback)


@asynccontextmanager
async def fed_writable(chunks: list[bytes], max_buffer_size: int) -> AsyncIterator[Writable]:
    body = Writable(max_buffer_size, length=sum(map(len, chunks)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce, body, chunks)
        yield body
        nursery.cancel_scope.cancel()


def writable(chunks: list[bytes]) -> AbstractAsyncContextManager[Readable]:
    return fed_writable(chunks, max_buffer_size=65536)


def unbuffered_writable(chunks: list[bytes]) -> AbstractAsyncContextManager[Readable]:
    return fed_writable(chunks, max_buffer_size=0)


@asynccontextmanager
async def buffered(chunks: list[bytes]) -> AsyncIterator[Readable]:
    yield Buffered(chunks)


@asynccontextmanager
async def stream_input(chunks: list[bytes]) -> AsyncIterator[Source]:
    async with fed_writable(chunks, max_buffer_size=65536) as body:
        yield StreamReader(Stream(body, None))


Factory = Callable[[list[bytes]], AbstractAsyncContextManager[Source]]
BodyFactory = Callable[[list[bytes]], AbstractAsyncContextManager[Readable]]

BODIES: list[BodyFactory] = [writable, unbuffered_writable, buffered]
SOURCES: list[Factory] = [*BODIES, stream_input]


# The suite's tests take their factory from the ``make`` fixture (every ``Source``) or the
# ``make_body`` fixture (every ``Readable`` with a known length), so that another module
# can import them and run them on other bodies by defining these fixtures itself.


@pytest.fixture(params=SOURCES, ids=lambda factory: factory.__name__)
def make(request: pytest.FixtureRequest) -> Factory:
    factory: Factory = request.param
    return factory


@pytest.fixture(params=BODIES, ids=lambda factory: factory.__name__)
def make_body(request: pytest.FixtureRequest) -> BodyFactory:
    factory: BodyFactory = request.param
    return factory


async def test_read_returns_each_chunk_then_empty_bytes_forever(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            assert [await body.read() for _ in CHUNKS] == CHUNKS
            assert [await body.read() for _ in range(3)] == [b"", b"", b""]


async def test_an_empty_body_reads_empty_bytes_at_once(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make([]) as body:
            assert await body.read() == b""
            assert await body.read() == b""


async def test_async_for_yields_each_chunk(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            assert [chunk async for chunk in body] == CHUNKS


async def test_join_returns_everything_as_one_bytes(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            assert await body.join() == b"hello, world!"
            assert await body.read() == b""


async def test_discard_reads_to_the_end(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            assert await body.read() == b"hello"
            await body.discard()
            assert await body.read() == b""


async def test_receive_some_without_max_bytes_returns_whole_chunks(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            assert [await body.receive_some() for _ in range(4)] == [*CHUNKS, b""]


async def test_receive_some_splits_chunks_at_max_bytes_and_never_merges_them(
    make: Factory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            pieces = [await body.receive_some(2) for _ in range(8)]
            assert pieces == [b"he", b"ll", b"o", b", ", b"wo", b"rl", b"d!", b""]


async def test_receive_some_keeps_the_rest_of_a_chunk_for_read(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            assert await body.receive_some(1) == b"h"
            assert await body.read() == b"ello"
            assert await body.read() == b", "


@pytest.mark.parametrize("max_bytes", [0, -1])
async def test_receive_some_rejects_max_bytes_below_one(make: Factory, max_bytes: int) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            with pytest.raises(ValueError):
                await body.receive_some(max_bytes)
            assert await body.read() == b"hello"


async def test_receive_some_rejects_a_max_bytes_that_is_not_an_integer(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            with pytest.raises(TypeError):
                await body.receive_some(1.5)  # type: ignore[arg-type]
            assert await body.read() == b"hello"


async def test_read_after_aclose_raises_closed_resource_error(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            await body.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await body.read()
            with pytest.raises(trio.ClosedResourceError):
                await body.receive_some(1)


async def test_aclose_is_idempotent(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            await body.aclose()
            await body.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await body.read()


async def test_async_with_closes_the_body_on_exit(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            async with body:
                assert await body.read() == b"hello"
            with pytest.raises(trio.ClosedResourceError):
                await body.read()


async def test_two_concurrent_reads_raise_busy_resource_error(make: Factory) -> None:
    outcomes: list[bytes | str] = []

    async def read(body: Source) -> None:
        try:
            outcomes.append(await body.read())
        except trio.BusyResourceError:
            outcomes.append("busy")

    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, body)
                nursery.start_soon(read, body)
            assert len(outcomes) == 2
            assert set(outcomes) == {b"hello", "busy"}
            assert await body.read() == b", "


METHODS: list[Method[Source]] = [
    Method("read", lambda body: body.read()),
    Method("read_at_the_end", lambda body: body.read(), prepare=lambda body: body.discard()),
    Method("receive_some", lambda body: body.receive_some(2)),
    Method("anext", lambda body: anext(aiter(body))),
    Method("join", lambda body: body.join()),
    Method("discard", lambda body: body.discard()),
    Method("aclose", lambda body: body.aclose()),
    Method("aclose_again", lambda body: body.aclose(), prepare=lambda body: body.aclose()),
]


@each_method(METHODS)
async def test_every_async_method_is_a_checkpoint_even_when_it_does_not_block(
    make: Factory, method: Method[Source]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            await method.ready(body)
            with trio.testing.assert_checkpoints():
                await method.call(body)


@each_method(METHODS)
async def test_every_async_method_raises_cancelled_when_called_cancelled(
    make: Factory, method: Method[Source]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            await method.ready(body)
            with trio.CancelScope() as scope:
                scope.cancel()
                await method.call(body)
            assert scope.cancelled_caught


async def test_a_read_called_cancelled_takes_nothing(make: Factory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make(CHUNKS) as body:
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                await body.receive_some(1)
            assert await body.read() == b"hello"


async def test_length_is_the_known_total(make_body: BodyFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_body(CHUNKS) as body:
            assert body.length == len(b"hello, world!")


async def test_is_empty_only_once_the_end_is_reached(make_body: BodyFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_body(CHUNKS) as body:
            for chunk in CHUNKS:
                assert not body.is_empty
                assert await body.read() == chunk
            assert await body.read() == b""
            assert body.is_empty


async def test_is_empty_once_the_reader_has_closed(make_body: BodyFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_body(CHUNKS) as body:
            await body.aclose()
            assert body.is_empty
