"""Buffered: a body over bytes already in memory (its reading contract is in test_readable.py)."""

from __future__ import annotations

import trio

from duplex import Buffered
from helpers import TIMEOUT


async def test_bytes_are_read_as_one_chunk() -> None:
    with trio.fail_after(TIMEOUT):
        body = Buffered(b"hello")
        assert [await body.read() for _ in range(2)] == [b"hello", b""]


async def test_a_list_of_chunks_is_read_as_given_without_the_empty_ones() -> None:
    with trio.fail_after(TIMEOUT):
        body = Buffered([b"a", b"", bytearray(b"bc"), memoryview(b"def")])
        assert body.chunks == [b"a", b"bc", b"def"]
        assert [await body.read() for _ in range(4)] == [b"a", b"bc", b"def", b""]


def test_length_is_known_from_the_start() -> None:
    assert Buffered([b"ab", b"cde"]).length == 5
    assert Buffered().length == 0


def test_an_empty_body_is_empty_from_the_start() -> None:
    assert Buffered().is_empty
    assert Buffered([b"", b""]).is_empty
    assert not Buffered(b"x").is_empty


async def test_rewind_starts_the_body_over() -> None:
    with trio.fail_after(TIMEOUT):
        body = Buffered([b"ab", b"cd"])
        assert await body.receive_some(1) == b"a"
        assert await body.read() == b"b"
        body.rewind()
        assert await body.join() == b"abcd"


async def test_rewind_reopens_a_body_its_reader_closed() -> None:
    with trio.fail_after(TIMEOUT):
        body = Buffered(b"again")
        await body.aclose()
        body.rewind()
        assert await body.read() == b"again"


async def test_the_callers_buffer_is_copied() -> None:
    with trio.fail_after(TIMEOUT):
        source = bytearray(b"before")
        body = Buffered(source)
        source[:] = b"AFTER!"
        assert await body.read() == b"before"
