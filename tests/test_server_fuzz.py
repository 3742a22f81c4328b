"""Any bytes at all: the server never crashes, and the next client is served normally.

One server runs per test; Hypothesis drives the examples from a worker thread and each
example calls back into the trio loop (``trio.from_thread.run``) to talk to the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import duplex
from _server_support import RawClient, get, serving

FUZZ = settings(max_examples=50, deadline=None)

LIMITS = duplex.Limits(
    header_timeout=1, keep_alive_timeout=1, read_timeout=1, write_timeout=1, max_body_size=4096
)


async def echo(request: duplex.Request) -> duplex.Response:
    if request.target == "/probe":
        return duplex.Response(200, body=b"ok")

    async def copy(stream: duplex.Stream) -> None:
        while chunk := await stream.readpartial():
            await stream.write(chunk)

    return duplex.Response(200, body=duplex.Streamable(copy))


PIECES = [
    b"GET ", b"POST ", b"HEAD ", b"/", b"/x?y=z", b" HTTP/1.1", b" HTTP/1.0", b" HTTP/2.0",
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"Host: x", b"Content-Length: 5", b"Content-Length: -1",
    b"Content-Length: 99999999999", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip",
    b"Expect: 100-continue", b"Connection: close", b": ", b" ", b"\t", b"\x00", b"\x7f",
    b"0\r\n\r\n", b"5\r\nhello\r\n", b"5;x=\x00\r\n", b"ffffffffffffffffffff\r\n", b"hello",
]  # fmt: skip

garbage = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from(PIECES), max_size=30).map(b"".join),
)


@st.composite
def valid_requests(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(max_size=200))
    if draw(st.booleans()):
        return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    sizes = draw(st.lists(st.integers(1, 50), max_size=6))
    chunks: list[bytes] = []
    rest = body
    for size in sizes:
        piece, rest = rest[:size], rest[size:]
        if piece:
            chunks.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    return (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(chunks)
        + b"0\r\n\r\n"
    )


async def send_then_close(port: int, data: bytes) -> None:
    """Send ``data``, end the request side, and read whatever comes until the close."""
    with trio.fail_after(5):
        async with await RawClient.connect(port) as client:
            try:
                await client.send(data)
                await client.send_eof()
            except trio.BrokenResourceError:
                pass  # the server refused it and closed first
            await client.read_until_eof()
        assert (await get(port, "/probe")).body == b"ok"


async def run_examples(test: Callable[[int], None], caplog: pytest.LogCaptureFixture) -> None:
    """Run the Hypothesis ``test`` against one server, from a worker thread.

    Nothing the server logs may be an error: a crash caught and logged is still a crash.
    """
    with trio.fail_after(30):
        async with serving(echo, limits=LIMITS) as server:
            port = server.port
            await trio.to_thread.run_sync(test, port)
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


async def test_arbitrary_bytes_never_crash_the_server(caplog: pytest.LogCaptureFixture) -> None:
    @FUZZ
    @given(data=garbage)
    def example(port: int, data: bytes) -> None:
        trio.from_thread.run(send_then_close, port, data)

    await run_examples(example, caplog)


async def test_valid_requests_cut_anywhere_never_crash_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @FUZZ
    @given(request=valid_requests(), cut=st.integers(min_value=0))
    def example(port: int, request: bytes, cut: int) -> None:
        trio.from_thread.run(send_then_close, port, request[: cut % (len(request) + 1)])

    await run_examples(example, caplog)


async def exchange_in_pieces(port: int, request: bytes, cuts: list[int]) -> bytes:
    with trio.fail_after(5):
        async with await RawClient.connect(port) as client:
            bounds = sorted({cut % (len(request) + 1) for cut in cuts})
            for start, end in zip([0, *bounds], [*bounds, len(request)], strict=True):
                await client.send(request[start:end])
            return (await client.read_response()).body


async def test_a_valid_request_sent_in_any_pieces_is_served_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @FUZZ
    @given(
        body=st.binary(max_size=300),
        sizes=st.lists(st.integers(1, 64), min_size=1, max_size=8),
        extension=st.sampled_from([b"", b";name", b";name=value", b';n="quoted v"']),
        cuts=st.lists(st.integers(min_value=0), max_size=10),
    )
    def example(
        port: int, body: bytes, sizes: list[int], extension: bytes, cuts: list[int]
    ) -> None:
        chunks: list[bytes] = []
        rest = body
        while rest:
            size = sizes[len(chunks) % len(sizes)]
            piece, rest = rest[:size], rest[size:]
            chunks.append(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece))
        request = (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(chunks)
            + b"0\r\nX-Trailer: yes\r\n\r\n"
        )
        assert trio.from_thread.run(exchange_in_pieces, port, request, cuts) == body

    await run_examples(example, caplog)
