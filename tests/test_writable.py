"""Writable: the bounded pipe between one producer task and one reader task.

What every readable body does is in test_readable.py; this is what a ``Writable`` adds:
chunking, back-pressure, closing from either side, and errors crossing between them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from duplex import Readable, Writable
from helpers import TIMEOUT, Method, background, each_method


class Oops(Exception):
    pass


@dataclass(frozen=True)
class Pipe:
    """A producer's ``Writable`` and the body its writes come out of, for one reader."""

    writer: Writable
    reader: Readable


PipeFactory = Callable[[], AbstractAsyncContextManager[Pipe]]


@asynccontextmanager
async def in_memory_pipe() -> AsyncIterator[Pipe]:
    body = Writable()
    yield Pipe(body, body)


# The producer's tests that hold for whatever carries the writes to the reader take the
# pipe from the ``make_pipe`` fixture, so that another module can import them and run
# them on other pipes (a request or response body over a real socket, say) by defining
# the fixture itself. The rest of this module is about the in-memory Writable alone.
PIPES: list[PipeFactory] = [in_memory_pipe]


@pytest.fixture(params=PIPES, ids=lambda factory: factory.__name__)
def make_pipe(request: pytest.FixtureRequest) -> PipeFactory:
    factory: PipeFactory = request.param
    return factory


async def test_each_write_is_read_as_one_chunk_never_merged(make_pipe: PipeFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe:
            for chunk in [b"a", b"bc", b"def"]:
                await pipe.writer.write(chunk)
            await pipe.writer.close_write()
            assert [await pipe.reader.read() for _ in range(4)] == [b"a", b"bc", b"def", b""]


async def test_writing_empty_bytes_queues_nothing(make_pipe: PipeFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe:
            await pipe.writer.write(b"")
            assert pipe.writer.queued == 0
            await pipe.writer.write(b"x")
            await pipe.writer.write(b"")
            await pipe.writer.close_write()
            assert [await pipe.reader.read() for _ in range(2)] == [b"x", b""]


async def test_send_all_and_send_eof_are_write_and_close_write(make_pipe: PipeFactory) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe:
            await pipe.writer.send_all(b"data")
            await pipe.writer.send_eof()
            assert pipe.writer.write_closed
            assert [await pipe.reader.read() for _ in range(2)] == [b"data", b""]


async def test_close_write_lets_the_reader_drain_the_queue_then_read_empty_bytes(
    make_pipe: PipeFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe:
            await pipe.writer.write(b"queued")
            await pipe.writer.close_write()
            assert await pipe.reader.read() == b"queued"
            assert await pipe.reader.read() == b""


async def test_close_write_is_idempotent_and_only_the_first_call_counts(
    make_pipe: PipeFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe:
            await pipe.writer.write(b"kept")
            await pipe.writer.close_write()
            await pipe.writer.close_write()
            await pipe.writer.close_write(Oops())
            assert [await pipe.reader.read() for _ in range(2)] == [b"kept", b""]


async def test_queued_counts_the_bytes_not_yet_read() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        await body.write(b"abc")
        await body.write(b"de")
        assert body.queued == 5
        await body.receive_some(2)
        assert body.queued == 3
        await body.read()
        assert body.queued == 2


async def test_length_is_what_the_producer_announced() -> None:
    assert Writable().length is None
    assert Writable(length=12).length == 12


def test_a_negative_max_buffer_size_is_refused() -> None:
    with pytest.raises(ValueError):
        Writable(max_buffer_size=-1)


# -- back-pressure -------------------------------------------------------------------


async def test_write_returns_while_at_most_max_buffer_size_is_queued() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=4)
        async with trio.open_nursery() as nursery:
            first = await background(nursery, body.write, b"ab")
            second = await background(nursery, body.write, b"cd")
            assert first.done
            assert second.done
            assert body.queued == 4


async def test_write_waits_while_more_than_max_buffer_size_is_queued() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=4)
        await body.write(b"abc")
        async with trio.open_nursery() as nursery:
            write = await background(nursery, body.write, b"de")
            assert write.blocked
            assert body.queued == 5
            assert await body.receive_some(1) == b"a"
            await trio.testing.wait_all_tasks_blocked()
            assert write.done
        assert [await body.read() for _ in range(2)] == [b"bc", b"de"]


async def test_an_unbuffered_write_waits_until_the_reader_has_taken_all_of_it() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=0)
        async with trio.open_nursery() as nursery:
            write = await background(nursery, body.write, b"xyz")
            assert write.blocked
            assert await body.receive_some(2) == b"xy"
            await trio.testing.wait_all_tasks_blocked()
            assert write.blocked
            assert await body.receive_some(2) == b"z"
            await trio.testing.wait_all_tasks_blocked()
            assert write.done


async def test_a_write_cancelled_while_waiting_leaves_the_body_usable() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=0)
        async with trio.open_nursery() as nursery:
            write = await background(nursery, body.write, b"first")
            assert write.blocked
            nursery.cancel_scope.cancel()
        expected = [b"first", b"second"] if body.queued else [b"second"]  # "may stay queued"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(body.write, b"second")
            received = [await body.read() for _ in expected]
        assert received == expected
        await body.close_write()
        assert await body.read() == b""


# -- the reader gives up -------------------------------------------------------------


async def test_after_the_reader_closes_the_next_write_raises_broken_with_its_error() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        error = Oops()
        await body.aclose(error)
        with pytest.raises(trio.BrokenResourceError) as raised:
            await body.write(b"x")
        assert raised.value.__cause__ is error


async def test_the_reader_closing_breaks_a_blocked_write_with_its_error() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=0)
        error = Oops()
        async with trio.open_nursery() as nursery:
            write = await background(nursery, body.write, b"x")
            assert write.blocked
            await body.aclose(error)
            await trio.testing.wait_all_tasks_blocked()
            assert write.raised(trio.BrokenResourceError).__cause__ is error


async def test_the_reader_closing_without_an_error_breaks_writes_without_a_cause() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        await body.aclose()
        with pytest.raises(trio.BrokenResourceError) as raised:
            await body.write(b"x")
        assert raised.value.__cause__ is None


async def test_the_reader_closing_discards_what_is_queued() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        await body.write(b"never read")
        await body.aclose()
        assert body.queued == 0


async def test_the_reader_closing_wakes_a_blocked_read_with_closed_resource_error() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        async with trio.open_nursery() as nursery:
            read = await background(nursery, body.read)
            assert read.blocked
            await body.aclose()
            await trio.testing.wait_all_tasks_blocked()
            read.raised(trio.ClosedResourceError)


# -- the producer finishes -----------------------------------------------------------


async def test_write_after_close_write_raises_closed_resource_error(
    make_pipe: PipeFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe:
            await pipe.writer.close_write()
            with pytest.raises(trio.ClosedResourceError):
                await pipe.writer.write(b"x")
            with pytest.raises(trio.ClosedResourceError):
                await pipe.writer.write(b"")


async def test_write_after_close_write_raises_closed_even_if_the_reader_closed() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        await body.close_write()
        await body.aclose(Oops())
        with pytest.raises(trio.ClosedResourceError):
            await body.write(b"x")


async def test_close_write_with_an_error_discards_the_queue_and_breaks_every_read() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        error = Oops()
        await body.write(b"lost")
        await body.close_write(error)
        assert body.queued == 0
        for _ in range(2):
            with pytest.raises(trio.BrokenResourceError) as raised:
                await body.read()
            assert raised.value.__cause__ is error


async def test_close_write_with_an_error_breaks_a_blocked_read() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        error = Oops()
        async with trio.open_nursery() as nursery:
            read = await background(nursery, body.read)
            assert read.blocked
            await body.close_write(error)
            await trio.testing.wait_all_tasks_blocked()
            assert read.raised(trio.BrokenResourceError).__cause__ is error


async def test_close_write_with_an_error_from_another_task_wakes_a_blocked_writer() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=0)
        async with trio.open_nursery() as nursery:
            write = await background(nursery, body.write, b"x")
            assert write.blocked
            await body.close_write(Oops())
            await trio.testing.wait_all_tasks_blocked()
            write.raised(trio.ClosedResourceError)


async def test_close_write_while_a_write_is_pending_raises_busy_resource_error() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=0)
        async with trio.open_nursery() as nursery:
            write = await background(nursery, body.write, b"x")
            with pytest.raises(trio.BusyResourceError):
                await body.close_write()
            assert not body.write_closed
            assert await body.read() == b"x"
            await trio.testing.wait_all_tasks_blocked()
            assert write.done


# -- one task per side ---------------------------------------------------------------


async def test_two_writes_at_once_raise_busy_resource_error() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=0)
        async with trio.open_nursery() as nursery:
            await background(nursery, body.write, b"first")
            with pytest.raises(trio.BusyResourceError):
                await body.write(b"second")
            assert await body.read() == b"first"
        assert body.queued == 0


async def test_a_write_and_a_wait_at_once_raise_busy_resource_error() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=0)
        async with trio.open_nursery() as nursery:
            await background(nursery, body.write, b"first")
            with pytest.raises(trio.BusyResourceError):
                await body.wait_send_all_might_not_block()
            await body.read()


# -- wait_send_all_might_not_block ---------------------------------------------------


async def test_wait_send_all_might_not_block_returns_while_less_than_max_is_queued() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=4)
        await body.write(b"abc")
        with trio.testing.assert_checkpoints():
            await body.wait_send_all_might_not_block()


async def test_wait_send_all_might_not_block_waits_until_the_queue_drops_below_max() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=4)
        await body.write(b"abcd")
        async with trio.open_nursery() as nursery:
            wait = await background(nursery, body.wait_send_all_might_not_block)
            assert wait.blocked
            await body.receive_some(1)
            await trio.testing.wait_all_tasks_blocked()
            assert wait.done


async def test_wait_send_all_might_not_block_returns_when_a_reader_waits_on_empty() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=0)
        async with trio.open_nursery() as nursery:
            wait = await background(nursery, body.wait_send_all_might_not_block)
            assert wait.blocked
            read = await background(nursery, body.read)
            assert wait.done
            await body.write(b"x")
            await trio.testing.wait_all_tasks_blocked()
            assert read.value == b"x"


async def test_wait_send_all_might_not_block_returns_when_the_reader_has_closed() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=0)
        async with trio.open_nursery() as nursery:
            wait = await background(nursery, body.wait_send_all_might_not_block)
            assert wait.blocked
            await body.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert wait.value is None
        await body.wait_send_all_might_not_block()


async def test_wait_send_all_might_not_block_after_close_write_raises_closed() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        await body.close_write()
        with pytest.raises(trio.ClosedResourceError):
            await body.wait_send_all_might_not_block()


async def test_close_write_with_an_error_wakes_a_blocked_wait_with_closed() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size=0)
        async with trio.open_nursery() as nursery:
            wait = await background(nursery, body.wait_send_all_might_not_block)
            assert wait.blocked
            await body.close_write(Oops())
            await trio.testing.wait_all_tasks_blocked()
            wait.raised(trio.ClosedResourceError)


# -- cancellation and checkpoints ----------------------------------------------------


async def test_a_read_cancelled_before_it_starts_takes_nothing() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        await body.write(b"abc")
        with trio.CancelScope() as scope:
            scope.cancel()
            await body.receive_some(1)
        assert scope.cancelled_caught
        assert body.queued == 3
        assert await body.read() == b"abc"


async def test_a_read_cancelled_while_waiting_takes_nothing() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(body.read)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        await body.write(b"abc")
        await body.close_write()
        assert [await body.read() for _ in range(2)] == [b"abc", b""]


PRODUCER_METHODS: list[Method[Writable]] = [
    Method("write", lambda body: body.write(b"x")),
    Method("write_nothing", lambda body: body.write(b"")),
    Method("send_all", lambda body: body.send_all(b"x")),
    Method("wait_send_all_might_not_block", lambda body: body.wait_send_all_might_not_block()),
    Method("close_write", lambda body: body.close_write()),
    Method("close_write_with_an_error", lambda body: body.close_write(Oops())),
    Method(
        "close_write_again",
        lambda body: body.close_write(),
        prepare=lambda body: body.close_write(),
    ),
    Method("send_eof", lambda body: body.send_eof()),
]


@each_method(PRODUCER_METHODS)
async def test_every_producer_method_is_a_checkpoint_even_when_it_does_not_block(
    make_pipe: PipeFactory, method: Method[Writable]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe:
            await method.ready(pipe.writer)
            with trio.testing.assert_checkpoints():
                await method.call(pipe.writer)


@each_method(PRODUCER_METHODS)
async def test_every_producer_method_raises_cancelled_when_called_cancelled(
    make_pipe: PipeFactory, method: Method[Writable]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe:
            await method.ready(pipe.writer)
            with trio.CancelScope() as scope:
                scope.cancel()
                await method.call(pipe.writer)
            assert scope.cancelled_caught


# -- what is written is copied -------------------------------------------------------


@pytest.mark.parametrize("kind", [bytearray, memoryview], ids=lambda kind: kind.__name__)
async def test_a_written_buffer_is_copied(
    make_pipe: PipeFactory, kind: Callable[[bytearray], bytearray | memoryview]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with make_pipe() as pipe:
            source = bytearray(b"before")
            await pipe.writer.write(kind(source))
            source[:] = b"AFTER!"
            chunk = await pipe.reader.read()
            assert type(chunk) is bytes
            assert chunk == b"before"


async def test_a_cancelled_join_gives_back_what_it_had_read() -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable()
        await body.write(b"first ")
        await body.write(b"second ")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(body.join)  # takes both chunks, then waits for more
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        await body.write(b"third")
        await body.close_write()
        assert await body.join() == b"first second third"


async def test_a_queued_chunk_is_taken_without_a_wait_and_the_writer_woken() -> None:
    # What duplex's own senders use: a whole chunk when read() would return one at
    # once, else None, and read() then says why.
    body = Writable(max_buffer_size=0)
    assert body._take_nowait() is None  # nothing queued
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            wrote = trio.Event()

            async def write() -> None:
                await body.write(b"one")  # blocks until the chunk is taken
                wrote.set()

            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()
            assert not wrote.is_set()
            assert body._take_nowait() == b"one"
            await wrote.wait()
    await body.close_write()
    assert body._take_nowait() is None  # ended: read() returns b""
    assert await body.read() == b""


async def test_taking_without_a_wait_leaves_failures_and_pushback_to_read() -> None:
    failed = Writable()
    await failed.write(b"queued")
    await failed.close_write(Oops("producer failed"))
    assert failed._take_nowait() is None
    with pytest.raises(trio.BrokenResourceError):
        await failed.read()

    closed = Writable()
    await closed.write(b"queued")
    await closed.aclose()
    assert closed._take_nowait() is None
    with pytest.raises(trio.ClosedResourceError):
        await closed.read()

    pushed = Writable()
    await pushed.write(b"second")
    pushed._pushback = b"first"  # as join() leaves what a cancelled join had read
    assert pushed._take_nowait() is None
    assert await pushed.read() == b"first"
    assert pushed._take_nowait() == b"second"
