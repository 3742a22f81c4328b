"""Properties of bodies and streams that hold for any data, chunking and timing."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duplex import IncompleteRead, Stream, Writable
from helpers import TIMEOUT, produce, split

# Each example runs on pytest-trio's autojump clock (shared by a test's examples, which is
# harmless: nothing here reads the time), so a deadlock fails at once instead of after
# TIMEOUT seconds of every example hypothesis tries while shrinking.
PROPERTY = settings(
    deadline=None, max_examples=75, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

payloads = st.binary(max_size=300)
cuts = st.lists(st.integers(min_value=0, max_value=300), max_size=12)
read_sizes = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)
buffer_sizes = st.integers(min_value=0, max_value=64)
chunk_lists = st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=10)


class Oops(Exception):
    pass


@dataclass(frozen=True)
class Read:
    """One call on a ``Stream``'s reading side."""

    kind: str
    size: int

    async def on(self, stream: Stream) -> tuple[bytes, bool]:
        """The bytes this read returned, and whether it saw the end of the input."""
        if self.kind == "readpartial":
            data = await stream.readpartial(self.size)
            return data, not data
        if self.kind == "read":
            data = await stream.read(self.size)
            return data, len(data) < self.size
        if self.kind == "read_exactly":
            try:
                return await stream.read_exactly(self.size), False
            except IncompleteRead as short:
                return short.partial, True
        try:
            line = await stream.readline(self.size)
        except ValueError:  # no newline within the limit: the bytes are still there
            data = await stream.read(self.size)
            return data, len(data) < self.size
        return line, not line.endswith(b"\n")


reads = st.builds(
    Read,
    st.sampled_from(["readpartial", "read", "read_exactly", "readline"]),
    st.integers(min_value=1, max_value=64),
)
payloads_with_lines = st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\n\n", b"xyz"])).map(b"".join)


async def read_to_eof(stream: Stream, plan: list[Read]) -> bytes:
    """Follow ``plan`` (round and round) until a read sees the end; return all bytes read."""
    received = bytearray()
    step = 0
    while True:
        data, at_eof = await plan[step % len(plan)].on(stream)
        received += data
        step += 1
        if at_eof:
            return bytes(received)


@PROPERTY
@given(data=payloads, cut_at=cuts, sizes=read_sizes, max_buffer_size=buffer_sizes)
async def test_what_is_read_is_what_was_written_then_empty_bytes(
    data: bytes,
    cut_at: list[int],
    sizes: list[int],
    max_buffer_size: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size)
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, body, split(data, cut_at))
            step = 0
            while piece := await body.receive_some(sizes[step % len(sizes)]):
                assert len(piece) <= sizes[step % len(sizes)]
                received += piece
                step += 1
        assert received == data
        assert await body.read() == b""


@PROPERTY
@given(
    data=st.one_of(payloads, payloads_with_lines),
    cut_at=cuts,
    plan=st.lists(reads, min_size=1, max_size=8),
    max_buffer_size=buffer_sizes,
)
async def test_any_mix_of_stream_reads_returns_what_was_written(
    data: bytes,
    cut_at: list[int],
    plan: list[Read],
    max_buffer_size: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size)
        stream = Stream(body, None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, body, split(data, cut_at))
            assert await read_to_eof(stream, plan) == data
        assert await stream.readpartial() == b""


@PROPERTY
@given(
    there=payloads,
    back=payloads,
    cut_there=cuts,
    cut_back=cuts,
    sizes=read_sizes,
    max_buffer_size=buffer_sizes,
)
async def test_a_stream_pair_carries_both_directions_at_once(
    there: bytes,
    back: bytes,
    cut_there: list[int],
    cut_back: list[int],
    sizes: list[int],
    max_buffer_size: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    a_to_b, b_to_a = Writable(max_buffer_size), Writable(max_buffer_size)
    a, b = Stream(b_to_a, a_to_b), Stream(a_to_b, b_to_a)
    received: dict[str, bytes] = {}

    async def send(stream: Stream, chunks: list[bytes]) -> None:
        for chunk in chunks:
            await stream.write(chunk)
        await stream.close_write()

    async def receive(name: str, stream: Stream) -> None:
        plan = [Read("readpartial", size) for size in sizes]
        received[name] = await read_to_eof(stream, plan)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, a, split(there, cut_there))
            nursery.start_soon(send, b, split(back, cut_back))
            nursery.start_soon(receive, "a", a)
            nursery.start_soon(receive, "b", b)
    assert received == {"a": back, "b": there}


async def cancel_after(scope: trio.CancelScope, checkpoints: int) -> None:
    for _ in range(checkpoints):
        await trio.lowlevel.checkpoint()
    scope.cancel()


@PROPERTY
@given(
    data=st.one_of(payloads, payloads_with_lines),
    cut_at=cuts,
    plan=st.lists(st.tuples(reads, st.integers(min_value=0, max_value=6)), max_size=20),
    max_buffer_size=buffer_sizes,
)
async def test_a_cancelled_stream_read_loses_no_byte_and_duplicates_none(
    data: bytes,
    cut_at: list[int],
    plan: list[tuple[Read, int]],
    max_buffer_size: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size)
        stream = Stream(body, None)
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, body, split(data, cut_at))
            for read, checkpoints in plan:
                with trio.CancelScope() as scope:
                    nursery.start_soon(cancel_after, scope, checkpoints)
                    piece, _ = await read.on(stream)
                    received += piece
            received += await stream.read()
        assert received == data


@PROPERTY
@given(
    data=payloads,
    cut_at=cuts,
    plan=st.lists(
        st.tuples(st.integers(min_value=1, max_value=64), st.integers(min_value=0, max_value=6)),
        max_size=20,
    ),
    max_buffer_size=buffer_sizes,
)
async def test_a_cancelled_body_read_takes_nothing_from_the_queue(
    data: bytes,
    cut_at: list[int],
    plan: list[tuple[int, int]],
    max_buffer_size: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size)
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, body, split(data, cut_at))
            for max_bytes, checkpoints in plan:
                with trio.CancelScope() as scope:
                    nursery.start_soon(cancel_after, scope, checkpoints)
                    received += await body.receive_some(max_bytes)
            received += await body.join()
        assert received == data


@PROPERTY
@given(chunks=chunk_lists, max_buffer_size=buffer_sizes)
async def test_a_writer_facing_an_idle_reader_queues_at_most_the_limit_and_one_chunk(
    chunks: list[bytes], max_buffer_size: int, autojump_clock: trio.testing.MockClock
) -> None:
    body = Writable(max_buffer_size)
    written: list[bytes] = []

    async def write_all() -> None:
        for chunk in chunks:
            written.append(chunk)
            await body.write(chunk)
            assert body.queued <= max_buffer_size

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_all)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert body.queued == sum(map(len, written))
    assert body.queued <= max_buffer_size + len(written[-1])


@PROPERTY
@given(chunks=chunk_lists, taken=st.integers(min_value=0, max_value=10), reader_waits=st.booleans())
async def test_close_write_with_an_error_reaches_every_later_read_as_its_cause(
    chunks: list[bytes], taken: int, reader_waits: bool, autojump_clock: trio.testing.MockClock
) -> None:
    body = Writable()
    error = Oops()

    async def read_twice_into_the_error() -> None:
        for _ in range(2):
            with pytest.raises(trio.BrokenResourceError) as raised:
                await body.read()
            assert raised.value.__cause__ is error

    with trio.fail_after(TIMEOUT):
        for chunk in chunks:
            await body.write(chunk)
        for _ in range(len(chunks) if reader_waits else min(taken, len(chunks))):
            await body.read()
        async with trio.open_nursery() as nursery:
            if reader_waits:
                nursery.start_soon(read_twice_into_the_error)
                await trio.testing.wait_all_tasks_blocked()
            await body.close_write(error)
            if not reader_waits:
                await read_twice_into_the_error()


@PROPERTY
@given(
    chunks=chunk_lists, taken=st.integers(min_value=0, max_value=10), max_buffer_size=buffer_sizes
)
async def test_the_readers_error_reaches_the_writer_as_its_cause(
    chunks: list[bytes], taken: int, max_buffer_size: int, autojump_clock: trio.testing.MockClock
) -> None:
    body = Writable(max_buffer_size)
    error = Oops()
    outcome: list[BaseException] = []

    async def write_forever() -> None:
        try:
            while True:
                for chunk in chunks:
                    await body.write(chunk)
        except trio.BrokenResourceError as broken:
            outcome.append(broken)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_forever)
            for _ in range(taken):
                await body.read()
            await body.aclose(error)
    assert len(outcome) == 1
    assert outcome[0].__cause__ is error
