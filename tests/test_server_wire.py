"""How the server reads a chunked request body off the socket: a peer that sends chunks
of one size has each one reach the reader whole (or in pieces of ``read_size``, when it
is larger), so that a streaming echo answers one chunk with one chunk rather than with a
chunk and a few bytes of the next."""

from __future__ import annotations

import pytest

from duplex.http.h1._wire import ServerWire

READ_SIZE = 65536


def chunked(chunks: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


def read_body(wire: ServerWire, sent: bytes) -> list[bytes]:
    """The pieces ``take_body`` hands out when every read from the socket gets all that
    was asked of it (a peer that is ahead of the server)."""
    pieces = []
    while (piece := wire.take_body()) != b"":
        if piece is None:
            size = wire.fill_size
            assert size is not None
            wire.feed(sent[:size])
            sent = sent[size:]
        else:
            pieces.append(piece)
    return pieces


def test_chunks_of_read_size_are_read_one_whole_chunk_at_a_time() -> None:
    wire = ServerWire(
        max_header_size=16384, max_request_line=8192, max_body_size=None, read_size=READ_SIZE
    )
    wire.begin_body(None)
    chunks = [bytes([n]) * READ_SIZE for n in range(5)]

    assert read_body(wire, chunked(chunks)) == chunks


def test_a_body_that_starts_mid_chunk_is_read_whole_chunks_from_the_next_one_on() -> None:
    wire = ServerWire(
        max_header_size=16384, max_request_line=8192, max_body_size=None, read_size=READ_SIZE
    )
    wire.begin_body(None)
    sent = chunked([bytes([n]) * READ_SIZE for n in range(4)])
    wire.feed(sent[:1000])  # what came with the head

    pieces = read_body(wire, sent[1000:])

    assert [len(piece) for piece in pieces] == [1000 - 7, READ_SIZE - 993] + [READ_SIZE] * 3


@pytest.mark.parametrize("size", [1000, 16384, 32768, 50000, 65536, 100000, 131072])
def test_chunks_of_one_size_are_read_whole_once_the_first_has_come(size: int) -> None:
    wire = ServerWire(
        max_header_size=16384, max_request_line=8192, max_body_size=None, read_size=READ_SIZE
    )
    wire.begin_body(None)
    chunks = [bytes([n]) * size for n in range(12)]

    pieces = read_body(wire, chunked(chunks))

    assert b"".join(pieces) == b"".join(chunks)
    # One chunk comes in two pieces at most, while the server learns the peer's size.
    assert len(pieces) <= len(chunks) * -(-size // READ_SIZE) + 1
