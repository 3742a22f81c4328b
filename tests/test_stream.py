"""Stream: an input body and an output body merged into one IO-like, full-duplex object."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
import trio.testing

from duplex import IncompleteRead, Stream, Writable
from helpers import TIMEOUT, Method, background, each_method


class Oops(Exception):
    pass


async def reading(*chunks: bytes, output: Writable | None = None) -> Stream:
    """A stream whose input holds ``chunks`` and then ends."""
    body = Writable()
    for chunk in chunks:
        await body.write(chunk)
    await body.close_write()
    return Stream(body, output)


def pair() -> tuple[Stream, Stream]:
    """The two ends of an in-memory full-duplex pipe."""
    a, b = Writable(), Writable()
    return Stream(a, b), Stream(b, a)


PairFactory = Callable[[], AbstractAsyncContextManager[tuple[Stream, Stream]]]
"""Opens two connected streams: ``(stream, peer)``, what one writes the other reads."""


@asynccontextmanager
async def in_memory_pair() -> AsyncIterator[tuple[Stream, Stream]]:
    yield pair()


# The tests that hold for any two connected streams take them from the ``make_pair``
# fixture, so that another module can import them and run them on other streams (over
# real sockets, say) by defining the fixture itself.
PAIRS: list[PairFactory] = [in_memory_pair]


@pytest.fixture(params=PAIRS, ids=lambda factory: factory.__name__)
def make_pair(request: pytest.FixtureRequest) -> PairFactory:
    factory: PairFactory = request.param
    return factory


async def send(peer: Stream, *chunks: bytes) -> None:
    """Write each chunk from ``peer``, then close its writing side."""
    for chunk in chunks:
        await peer.write(chunk)
    await peer.close_write()


# -- readpartial -----------------------------------------------------------------------


async def test_readpartial_returns_at_most_max_bytes_and_keeps_the_rest(
    make_pair: PairFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"hello world", b"!")
            assert await stream.readpartial(5) == b"hello"
            assert await stream.readpartial(100) == b" world"
            assert await stream.readpartial(100) == b"!"


async def test_readpartial_returns_at_most_64_kib_by_default() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=100_000)
        await body.write(bytes(70_000))
        stream = Stream(body, None)
        assert len(await stream.readpartial()) == 65536
        assert len(await stream.readpartial()) == 70_000 - 65536


async def test_readpartial_waits_for_at_least_one_byte(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer), trio.open_nursery() as nursery:
            read = await background(nursery, stream.readpartial, 10)
            assert read.blocked
            await peer.write(b"x")
            await trio.testing.wait_all_tasks_blocked()
            assert read.value == b"x"


async def test_readpartial_returns_empty_bytes_at_eof_and_forever(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"x")
            assert [await stream.readpartial() for _ in range(3)] == [b"x", b"", b""]


@pytest.mark.parametrize("max_bytes", [0, -1])
async def test_readpartial_rejects_max_bytes_below_one(
    make_pair: PairFactory, max_bytes: int
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"x")
            with pytest.raises(ValueError):
                await stream.readpartial(max_bytes)
            assert await stream.readpartial() == b"x"


# -- read ------------------------------------------------------------------------------


async def test_read_n_collects_n_bytes_across_chunk_boundaries(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"ab", b"cd", b"ef")
            assert await stream.read(3) == b"abc"
            assert await stream.read(2) == b"de"


async def test_read_n_returns_fewer_bytes_only_at_eof(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"ab", b"c")
            assert await stream.read(5) == b"abc"
            assert await stream.read(5) == b""


async def test_read_n_waits_until_n_bytes_have_arrived(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await peer.write(b"ab")
            async with trio.open_nursery() as nursery:
                read = await background(nursery, stream.read, 4)
                assert read.blocked
                await peer.write(b"cdef")
                await trio.testing.wait_all_tasks_blocked()
                assert read.value == b"abcd"
            assert await stream.readpartial() == b"ef"


async def test_read_without_n_reads_to_eof(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"ab", b"cd")
            assert await stream.readpartial(1) == b"a"
            assert await stream.read() == b"bcd"
            assert await stream.read(-1) == b""


async def test_read_zero_bytes_returns_empty_bytes(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"ab")
            assert await stream.read(0) == b""
            assert await stream.read() == b"ab"


# -- read_exactly ----------------------------------------------------------------------


async def test_read_exactly_collects_n_bytes_across_chunk_boundaries(
    make_pair: PairFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"ab", b"cd", b"ef")
            assert await stream.read_exactly(5) == b"abcde"
            assert await stream.read_exactly(1) == b"f"


async def test_read_exactly_raises_incomplete_read_holding_what_arrived(
    make_pair: PairFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"ab", b"c")
            with pytest.raises(IncompleteRead) as raised:
                await stream.read_exactly(5)
            assert raised.value.partial == b"abc"
            assert raised.value.expected == 5


def test_incomplete_read_is_an_eof_error() -> None:
    assert issubclass(IncompleteRead, EOFError)


# -- readline --------------------------------------------------------------------------


async def test_readline_joins_chunks_up_to_and_including_the_newline(
    make_pair: PairFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"fir", b"st\nsec", b"ond\n")
            assert await stream.readline() == b"first\n"
            assert await stream.readline() == b"second\n"
            assert await stream.readline() == b""


async def test_readline_returns_what_is_left_at_eof(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"line\nta", b"il")
            assert await stream.readline() == b"line\n"
            assert await stream.readline() == b"tail"
            assert await stream.readline() == b""


async def test_readline_accepts_a_line_of_exactly_limit_bytes(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"ab", b"c\n")
            assert await stream.readline(limit=4) == b"abc\n"


async def test_readline_raises_value_error_past_limit_and_keeps_the_bytes(
    make_pair: PairFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"ab", b"cd", b"e\n")
            with pytest.raises(ValueError):
                await stream.readline(limit=4)
            assert await stream.read() == b"abcde\n"


# -- reads in general ------------------------------------------------------------------


async def test_async_for_yields_every_byte_until_eof(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"ab", b"cd")
            assert b"".join([chunk async for chunk in stream]) == b"abcd"


async def test_every_kind_of_read_shares_the_leftover_bytes(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"one\ntwo", b"\nthree four")
            assert await stream.read(2) == b"on"
            assert await stream.readline() == b"e\n"
            assert await stream.readpartial(2) == b"tw"
            assert await stream.read_exactly(7) == b"o\nthree"
            assert await stream.receive_some() == b" four"


async def test_two_concurrent_reads_raise_busy_resource_error(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await peer.write(b"line\nleftover")
            assert await stream.readline() == b"line\n"
            async with trio.open_nursery() as nursery:
                waiting = await background(nursery, stream.read, 100)
                assert waiting.blocked
                with pytest.raises(trio.BusyResourceError):
                    await stream.readpartial()
                await peer.close_write()
            assert waiting.value == b"leftover"


async def test_an_input_closed_with_an_error_breaks_reads_with_that_cause() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        error = Oops()
        await body.close_write(error)
        with pytest.raises(trio.BrokenResourceError) as raised:
            await Stream(body, None).readpartial()
        assert raised.value.__cause__ is error


# -- cancellation ----------------------------------------------------------------------


async def read_ten(stream: Stream) -> bytes:
    return await stream.read(10)


async def read_all(stream: Stream) -> bytes:
    return await stream.read()


async def read_exactly_ten(stream: Stream) -> bytes:
    return await stream.read_exactly(10)


async def readline(stream: Stream) -> bytes:
    return await stream.readline()


async def readpartial(stream: Stream) -> bytes:
    return await stream.readpartial()


WAITING_READS = [read_ten, read_all, read_exactly_ten, readline]
EVERY_READ = [*WAITING_READS, readpartial]


@pytest.mark.parametrize("read", WAITING_READS, ids=lambda read: read.__name__)
async def test_leftover_bytes_survive_a_read_cancelled_while_waiting(
    make_pair: PairFactory, read: Callable[[Stream], Awaitable[bytes]]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await peer.write(b"first\nsecond")
            assert await stream.readline() == b"first\n"
            async with trio.open_nursery() as nursery:
                call = await background(nursery, read, stream)
                await peer.write(b"ab")
                await trio.testing.wait_all_tasks_blocked()
                assert call.blocked
                nursery.cancel_scope.cancel()
            await send(peer, b"!\n")
            assert await stream.read() == b"secondab!\n"


@pytest.mark.parametrize("read", EVERY_READ, ids=lambda read: read.__name__)
async def test_a_read_cancelled_before_it_starts_loses_nothing(
    make_pair: PairFactory, read: Callable[[Stream], Awaitable[bytes]]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"first\nsec", b"ond\n")
            assert await stream.readline() == b"first\n"
            with trio.CancelScope() as scope:
                scope.cancel()
                await read(stream)
            assert scope.cancelled_caught
            assert await stream.read() == b"second\n"


# -- writing ---------------------------------------------------------------------------


async def test_write_sends_each_write_to_the_output_as_one_chunk(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await stream.write(b"one")
            await stream.write(bytearray(b"two"))
            assert [await peer.receive_some() for _ in range(2)] == [b"one", b"two"]


async def test_flush_is_a_checkpoint_that_does_not_wait_for_the_reader() -> None:
    with trio.fail_after(TIMEOUT):
        output = Writable()
        stream = Stream(None, output)
        await stream.write(b"unread")
        with trio.testing.assert_checkpoints():
            await stream.flush()
        assert output.queued == len(b"unread")


async def test_flush_raises_closed_resource_error_after_close_write(
    make_pair: PairFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, _):
            await stream.close_write()
            with pytest.raises(trio.ClosedResourceError):
                await stream.flush()


async def test_flush_raises_broken_resource_error_once_the_reader_closed() -> None:
    with trio.fail_after(TIMEOUT):
        output = Writable()
        stream = Stream(None, output)
        await output.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await stream.flush()


async def test_close_write_lets_the_peer_read_what_is_queued_then_empty_bytes(
    make_pair: PairFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (a, b):
            await a.write(b"queued")
            await a.close_write()
            assert await b.readpartial() == b"queued"
            assert await b.readpartial() == b""


async def test_close_write_is_idempotent(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (a, b):
            await a.close_write()
            await a.close_write()
            assert await b.read() == b""


async def test_write_after_close_write_raises_closed_resource_error(
    make_pair: PairFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (a, _):
            await a.close_write()
            with pytest.raises(trio.ClosedResourceError):
                await a.write(b"x")


async def test_close_write_keeps_the_reading_side_open(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (a, b):
            await a.close_write()
            await b.write(b"reply")
            assert await a.readpartial() == b"reply"


# -- closing ---------------------------------------------------------------------------


async def test_close_read_makes_reads_raise_closed_and_the_peers_writes_break() -> None:
    with trio.fail_after(TIMEOUT):
        a, b = pair()
        await b.write(b"unread")
        await a.close_read()
        with pytest.raises(trio.ClosedResourceError):
            await a.readpartial()
        with pytest.raises(trio.BrokenResourceError):
            await b.write(b"x")


async def test_close_read_keeps_the_writing_side_open(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (a, b):
            await a.close_read()
            await a.write(b"still")
            assert await b.readpartial() == b"still"


async def test_aclose_closes_the_input_and_ends_the_output_cleanly() -> None:
    with trio.fail_after(TIMEOUT):
        a, b = pair()
        await a.write(b"queued")
        await a.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await a.readpartial()
        assert await b.readpartial() == b"queued"
        assert await b.readpartial() == b""
        with pytest.raises(trio.BrokenResourceError):
            await b.write(b"x")


async def test_aclose_is_idempotent(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (a, b):
            await a.aclose()
            await a.aclose()
            assert await b.readpartial() == b""


async def test_aclose_still_closes_both_sides_when_cancelled() -> None:
    with trio.fail_after(TIMEOUT):
        incoming, outgoing = Writable(), Writable()
        stream = Stream(incoming, outgoing)
        with trio.CancelScope() as scope:
            scope.cancel()
            await stream.aclose()
        assert incoming.read_closed
        assert outgoing.write_closed


async def test_aclose_from_another_task_wakes_a_blocked_writer_with_closed() -> None:
    with trio.fail_after(TIMEOUT):
        output = Writable(max_buffer_size=0)
        stream = Stream(None, output)
        async with trio.open_nursery() as nursery:
            write = await background(nursery, stream.write, b"x")
            assert write.blocked
            await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            write.raised(trio.ClosedResourceError)


async def test_async_with_closes_both_sides_on_exit() -> None:
    with trio.fail_after(TIMEOUT):
        incoming, outgoing = Writable(), Writable()
        async with Stream(incoming, outgoing):
            pass
        assert incoming.read_closed
        assert outgoing.write_closed


# -- missing sides ---------------------------------------------------------------------


async def test_a_stream_without_input_reads_empty_bytes() -> None:
    with trio.fail_after(TIMEOUT):
        stream = Stream(None, Writable())
        assert await stream.readpartial() == b""
        assert await stream.read() == b""
        assert await stream.read(5) == b""
        assert await stream.readline() == b""
        assert await stream.receive_some() == b""
        with pytest.raises(IncompleteRead) as raised:
            await stream.read_exactly(1)
        assert raised.value.partial == b""


async def test_a_stream_without_output_refuses_writes_with_closed_resource_error() -> None:
    with trio.fail_after(TIMEOUT):
        stream = await reading(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await stream.write(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await stream.flush()
        with pytest.raises(trio.ClosedResourceError):
            await stream.wait_send_all_might_not_block()


async def test_a_stream_without_either_side_closes_quietly() -> None:
    with trio.fail_after(TIMEOUT):
        stream = Stream()
        await stream.close_write()
        await stream.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await stream.readpartial()


# -- trio's names ----------------------------------------------------------------------


async def test_trio_names_work_too(make_pair: PairFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (a, b):
            await a.wait_send_all_might_not_block()
            await a.send_all(b"hi")
            await a.send_eof()
            assert await b.receive_some() == b"hi"
            assert await b.receive_some() == b""


# -- checkpoints -----------------------------------------------------------------------


STREAM_METHODS: list[Method[Stream]] = [
    Method("readpartial", lambda stream: stream.readpartial()),
    Method(
        "readpartial_from_leftovers",
        lambda stream: stream.readpartial(1),
        prepare=lambda stream: stream.readline(),
    ),
    Method("receive_some", lambda stream: stream.receive_some()),
    Method("read_n", lambda stream: stream.read(3)),
    Method("read_to_eof", lambda stream: stream.read()),
    Method("read_at_eof", lambda stream: stream.read(), prepare=lambda stream: stream.read()),
    Method("read_exactly", lambda stream: stream.read_exactly(3)),
    Method("readline", lambda stream: stream.readline()),
    Method("anext", lambda stream: anext(aiter(stream))),
    Method("write", lambda stream: stream.write(b"x")),
    Method("flush", lambda stream: stream.flush()),
    Method("wait_send_all_might_not_block", lambda stream: stream.wait_send_all_might_not_block()),
    Method("close_write", lambda stream: stream.close_write()),
    Method("close_read", lambda stream: stream.close_read()),
    Method("aclose", lambda stream: stream.aclose()),
    Method("aclose_again", lambda stream: stream.aclose(), prepare=lambda stream: stream.aclose()),
]


@each_method(STREAM_METHODS)
async def test_every_async_method_is_a_checkpoint_even_when_it_does_not_block(
    make_pair: PairFactory, method: Method[Stream]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            # A line and more waiting on its input, and room on its output.
            await send(peer, b"line\nmore")
            await method.ready(stream)
            with trio.testing.assert_checkpoints():
                await method.call(stream)


@each_method(STREAM_METHODS)
async def test_every_async_method_raises_cancelled_when_called_cancelled(
    make_pair: PairFactory, method: Method[Stream]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pair() as (stream, peer):
            await send(peer, b"line\nmore")
            await method.ready(stream)
            with trio.CancelScope() as scope:
                scope.cancel()
                await method.call(stream)
            assert scope.cancelled_caught
