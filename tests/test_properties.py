"""Properties of bodies and streams that hold for any data, chunking and timing, in
memory and through the server and client (``duplex.testing.TestClient``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import duplex
from duplex import IncompleteRead, Stream, Writable
from duplex.testing import Cancellation, TestClient, cancellations, chunkings
from helpers import TIMEOUT, produce

# Each example runs on pytest-trio's autojump clock (shared by a test's examples, which is
# harmless: nothing here reads the time), so a deadlock fails at once instead of after
# TIMEOUT seconds of every example hypothesis tries while shrinking.
PROPERTY = settings(
    deadline=None, max_examples=75, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

payloads = st.binary(max_size=300)
read_sizes = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)
buffer_sizes = st.integers(min_value=0, max_value=64)
# At least one chunk, at most ten.
chunk_lists = chunkings(st.binary(min_size=1, max_size=400), max_chunks=10)


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
any_payloads = st.one_of(payloads, payloads_with_lines)


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
@given(
    chunks=chunkings(payloads),
    empty_writes=st.booleans(),
    sizes=read_sizes,
    max_buffer_size=buffer_sizes,
)
async def test_what_is_read_is_what_was_written_then_empty_bytes(
    chunks: list[bytes],
    empty_writes: bool,
    sizes: list[int],
    max_buffer_size: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    data = b"".join(chunks)
    if empty_writes:  # write(b"") queues nothing, wherever it comes
        chunks = [piece for chunk in chunks for piece in (b"", chunk)] + [b""]
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size)
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, body, chunks)
            step = 0
            while piece := await body.receive_some(sizes[step % len(sizes)]):
                assert len(piece) <= sizes[step % len(sizes)]
                received += piece
                step += 1
        assert received == data
        assert await body.read() == b""


@PROPERTY
@given(
    chunks=chunkings(any_payloads),
    plan=st.lists(reads, min_size=1, max_size=8),
    max_buffer_size=buffer_sizes,
)
async def test_any_mix_of_stream_reads_returns_what_was_written(
    chunks: list[bytes],
    plan: list[Read],
    max_buffer_size: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size)
        stream = Stream(body, None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, body, chunks)
            assert await read_to_eof(stream, plan) == b"".join(chunks)
        assert await stream.readpartial() == b""


@PROPERTY
@given(
    there=chunkings(payloads),
    back=chunkings(payloads),
    sizes=read_sizes,
    max_buffer_size=buffer_sizes,
)
async def test_a_stream_pair_carries_both_directions_at_once(
    there: list[bytes],
    back: list[bytes],
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
            nursery.start_soon(send, a, there)
            nursery.start_soon(send, b, back)
            nursery.start_soon(receive, "a", a)
            nursery.start_soon(receive, "b", b)
    assert received == {"a": b"".join(back), "b": b"".join(there)}


@PROPERTY
@given(
    chunks=chunkings(any_payloads),
    plan=st.lists(st.tuples(reads, cancellations(max_delay=6)), max_size=20),
    max_buffer_size=buffer_sizes,
)
async def test_a_cancelled_stream_read_loses_no_byte_and_duplicates_none(
    chunks: list[bytes],
    plan: list[tuple[Read, Cancellation]],
    max_buffer_size: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size)
        stream = Stream(body, None)
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, body, chunks)
            for read, cancellation in plan:
                with cancellation.around(nursery):
                    piece, _ = await read.on(stream)
                    received += piece
            received += await stream.read()
        assert received == b"".join(chunks)


@PROPERTY
@given(
    chunks=chunkings(payloads),
    plan=st.lists(
        st.tuples(st.integers(min_value=1, max_value=64), cancellations(max_delay=6)),
        max_size=20,
    ),
    max_buffer_size=buffer_sizes,
)
async def test_a_cancelled_body_read_takes_nothing_from_the_queue(
    chunks: list[bytes],
    plan: list[tuple[int, Cancellation]],
    max_buffer_size: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(TIMEOUT):
        body = Writable(max_buffer_size)
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, body, chunks)
            for max_bytes, cancellation in plan:
                with cancellation.around(nursery):
                    received += await body.receive_some(max_bytes)
            received += await body.join()
        assert received == b"".join(chunks)


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


# -- through the server and the client, in memory ------------------------------------------

# Each example starts a server and a client: fewer of them.
THROUGH_HTTP = settings(PROPERTY, max_examples=25)


async def echo(request: duplex.Request) -> duplex.Response:
    async def copy(stream: Stream) -> None:
        while chunk := await stream.readpartial(1024):
            await stream.write(chunk)
        await stream.close_write()

    return duplex.Response(200, body=duplex.Streamable(copy))


@pytest.mark.both_protocols
@THROUGH_HTTP
@given(chunks=chunkings(st.binary(max_size=20_000)))
async def test_an_echo_returns_each_chunk_before_the_next_is_written(chunks: list[bytes]) -> None:
    with trio.fail_after(TIMEOUT):
        async with TestClient(echo) as client:
            output = Writable()
            response = await client.post("/", body=output)
            stream = Stream(response.body, output)
            for chunk in chunks:
                await stream.write(chunk)
                assert await stream.read_exactly(len(chunk)) == chunk
            await stream.close_write()
            assert await stream.read() == b""


@pytest.mark.both_protocols
@THROUGH_HTTP
@given(
    chunks=chunkings(st.binary(max_size=20_000)),
    plan=st.lists(
        st.tuples(st.integers(min_value=1, max_value=4096), cancellations()), max_size=12
    ),
)
async def test_a_cancelled_response_read_loses_no_byte_and_duplicates_none(
    chunks: list[bytes], plan: list[tuple[int, Cancellation]]
) -> None:
    async def answer(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=duplex.Buffered(chunks))

    with trio.fail_after(TIMEOUT):
        async with TestClient(answer) as client, trio.open_nursery() as nursery:
            response = await client.get("/")
            received = bytearray()
            for max_bytes, cancellation in plan:
                with cancellation.around(nursery):
                    received += await response.body.receive_some(max_bytes)
            received += await response.body.join()
        assert received == b"".join(chunks)
