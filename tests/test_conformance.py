"""duplex's streams checked against trio's own stream contracts.

A bare ``Writable`` is not checked as a ``trio.abc.SendStream``: its ``aclose`` is the
*reader* giving up, so a producer closes it with ``close_write`` (or through a ``Stream``).
"""

from __future__ import annotations

import trio
import trio.testing

from duplex import Stream, Writable
from helpers import TIMEOUT


async def duplex_pair(max_buffer_size: int = 65536) -> tuple[Stream, Stream]:
    a, b = Writable(max_buffer_size), Writable(max_buffer_size)
    return Stream(a, b), Stream(b, a)


async def clogged_duplex_pair() -> tuple[Stream, Stream]:
    return await duplex_pair(max_buffer_size=0)


async def one_way(max_buffer_size: int = 65536) -> tuple[Stream, Writable]:
    body = Writable(max_buffer_size)
    return Stream(None, body), body


async def clogged_one_way() -> tuple[Stream, Writable]:
    return await one_way(max_buffer_size=0)


async def one_way_through_streams(max_buffer_size: int = 65536) -> tuple[Stream, Stream]:
    body = Writable(max_buffer_size)
    return Stream(None, body), Stream(body, None)


async def clogged_one_way_through_streams() -> tuple[Stream, Stream]:
    return await one_way_through_streams(max_buffer_size=0)


async def test_a_pair_of_streams_over_two_writables_is_a_half_closeable_stream() -> None:
    with trio.fail_after(TIMEOUT):
        await trio.testing.check_half_closeable_stream(duplex_pair, clogged_duplex_pair)


async def test_a_stream_writing_to_a_writable_is_a_one_way_stream() -> None:
    with trio.fail_after(TIMEOUT):
        await trio.testing.check_one_way_stream(one_way, clogged_one_way)


async def test_a_writable_between_two_streams_is_a_one_way_stream() -> None:
    with trio.fail_after(TIMEOUT):
        await trio.testing.check_one_way_stream(
            one_way_through_streams, clogged_one_way_through_streams
        )
