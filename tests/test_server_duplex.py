"""Full duplex for real: the response streams while the request body still arrives.

Each client here waits for the echo of one chunk before it sends the next, which only a
server that answers mid-request can satisfy. The echo handlers are the guide's two styles.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import trio

import duplex
from _server_support import RawClient, free_port, serving


async def echo_independent(request: duplex.Request) -> duplex.Response:
    """The guide's style 1: a Writable fed by a task in the exchange's nursery."""
    output = duplex.Writable()
    stream = duplex.Stream(request.body, output)

    async def copy() -> None:
        async with stream:
            while chunk := await stream.readpartial(1024):
                await stream.write(chunk)

    request.nursery.start_soon(copy)
    return duplex.Response(200, body=output)


async def echo_streamable(request: duplex.Request) -> duplex.Response:
    """The guide's style 2: a Streamable over the request body and the response output."""

    async def copy(stream: duplex.Stream) -> None:
        while chunk := await stream.readpartial(1024):
            await stream.write(chunk)

    return duplex.Response(200, body=duplex.Streamable(copy))


ECHOES = pytest.mark.parametrize("echo", [echo_independent, echo_streamable])
CHUNKED_POST = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


async def read_echo(client: RawClient, expected: bytes) -> None:
    """Read response chunks until they add up to ``expected``."""
    received = b""
    while len(received) < len(expected):
        received += await client.read_chunk()
    assert received == expected


@ECHOES
async def test_each_chunk_is_echoed_before_the_next_one_is_sent(echo: duplex.Handler) -> None:
    with trio.fail_after(5):
        async with serving(echo) as server, await RawClient.connect(server.port) as client:
            await client.send(CHUNKED_POST + b"7\r\nHello, \r\n")
            head = await client.read_head()
            assert head.status == 200
            assert head.chunked
            await read_echo(client, b"Hello, ")
            await client.send(b"6\r\nWorld!\r\n")
            await read_echo(client, b"World!")
            await client.send(b"0\r\n\r\n")
            assert await client.read_chunk() == b""
            assert await client.read_trailers() == []


@ECHOES
async def test_an_echo_ends_cleanly_and_the_connection_serves_the_next_request(
    echo: duplex.Handler,
) -> None:
    with trio.fail_after(5):
        async with serving(echo) as server, await RawClient.connect(server.port) as client:
            for payload in (b"first", b"second"):
                await client.send(CHUNKED_POST + b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
                response = await client.read_response()
                assert response.body == payload


@ECHOES
async def test_a_large_body_streams_through_the_echo_in_both_directions_at_once(
    echo: duplex.Handler,
) -> None:
    payload = os.urandom(2_000_000)
    received = bytearray()

    async def send_all_chunks(client: RawClient) -> None:
        for start in range(0, len(payload), 50_000):
            piece = payload[start : start + 50_000]
            await client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        await client.send(b"0\r\n\r\n")

    with trio.fail_after(5):
        async with serving(echo) as server, await RawClient.connect(server.port) as client:
            await client.send(CHUNKED_POST)
            async with trio.open_nursery() as nursery:
                # The upload goes on while its echo is read, in one exchange.
                nursery.start_soon(send_all_chunks, client)
                head = await client.read_head()
                while chunk := await client.read_chunk():
                    received += chunk
    assert head.chunked
    assert received == payload


# -- over both protocols (conftest's both_protocols): duplex's client, over HTTP/1.1 or
# -- one h2c stream


@ECHOES
@pytest.mark.both_protocols
async def test_each_chunk_comes_back_before_the_next_is_sent_over_either_protocol(
    echo: duplex.Handler, protocol: str
) -> None:
    with trio.fail_after(5):
        async with serving(echo) as server, duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(f"http://127.0.0.1:{server.port}/", body=output)
            assert response.http_version == {"h1": "1.1", "h2": "2"}[protocol]
            stream = duplex.Stream(response.body, output)
            for chunk in (b"Hello, ", b"World!"):
                await stream.write(chunk)
                assert await stream.read_exactly(len(chunk)) == chunk
            await stream.close_write()
            assert await stream.read() == b""


@ECHOES
@pytest.mark.both_protocols
async def test_a_large_body_streams_through_the_echo_both_ways_at_once_over_either_protocol(
    echo: duplex.Handler,
) -> None:
    # Eight times an HTTP/2 stream's window: the echo must be read while it is sent.
    payload = os.urandom(8 * 65_536)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 50_000):
            yield payload[start : start + 50_000]

    with trio.fail_after(5):
        async with serving(echo) as server, duplex.Client() as client:
            # The upload goes on while its echo is read, in one exchange.
            response = await client.post(f"http://127.0.0.1:{server.port}/", body=pieces())
            received = await response.read()
    assert received == payload


async def wait_for_serving_line(process: trio.Process) -> None:
    assert process.stdout is not None
    output = b""
    while b"serving on" not in output:
        data = await process.stdout.receive_some(4096)
        assert data, f"duplex echo exited before serving: {output!r}"
        output += data


async def test_curl_streams_a_file_through_the_duplex_echo_command() -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    port = free_port()
    payload = os.urandom(3_000_000)
    with trio.fail_after(10):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "duplex", "echo", "--port", str(port)],
            stdout=subprocess.PIPE,
        )
        try:
            await wait_for_serving_line(process)
            result = await trio.run_process(
                [
                    curl,
                    "-sN",
                    "-T",
                    "-",
                    "-H",
                    "Transfer-Encoding: chunked",
                    f"http://127.0.0.1:{port}/",
                ],
                stdin=payload,
                capture_stdout=True,
            )
            assert result.stdout == payload
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
        finally:
            process.kill()  # a no-op once it has exited
            with trio.CancelScope(shield=True):
                await process.wait()
