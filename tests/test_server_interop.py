"""Ordinary clients against the server: httpx (on trio) and aiohttp (asyncio, in a thread)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
import trio

import duplex
from _server_support import serving


async def app(request: duplex.Request) -> duplex.Response:
    """``/echo`` streams the body back; ``/stream`` sends chunks; anything else describes."""
    if request.path == "/echo":

        async def copy(stream: duplex.Stream) -> None:
            while chunk := await stream.readpartial():
                await stream.write(chunk)

        return duplex.Response(200, body=duplex.Streamable(copy))
    if request.path == "/stream":

        async def chunks() -> AsyncIterator[bytes]:
            for number in range(100):
                yield b"%d\n" % number

        return duplex.Response(200, {"x-kind": "stream"}, body=chunks())
    port = request.client[1] if request.client else 0
    return duplex.Response(
        200,
        {"x-client-port": str(port)},
        body=f"{request.method} {request.path} {request.query}",
    )


EXPECTED_STREAM = b"".join(b"%d\n" % number for number in range(100))


async def test_httpx_gets_a_response() -> None:
    with trio.fail_after(5):
        async with serving(app) as server, httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/a/b?c=d")
    assert response.status_code == 200
    assert response.text == "GET /a/b c=d"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


async def test_httpx_posts_a_body_and_reads_its_echo() -> None:
    # httpx sends the whole body before it reads: against an echo that answers as it
    # reads, the body must fit in the sockets' buffers (a larger one fills both
    # directions; duplex.Client reads while it sends, and has no such limit).
    payload = bytes(range(256)) * 256
    with trio.fail_after(5):
        async with serving(app) as server, httpx.AsyncClient(trust_env=False) as client:
            response = await client.post(f"http://127.0.0.1:{server.port}/echo", content=payload)
    assert response.content == payload
    assert response.headers["transfer-encoding"] == "chunked"


async def test_httpx_streams_a_chunked_response() -> None:
    with trio.fail_after(5):
        async with serving(app) as server, httpx.AsyncClient(trust_env=False) as client:
            url = f"http://127.0.0.1:{server.port}/stream"
            async with client.stream("GET", url) as response:
                received = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert received == EXPECTED_STREAM


async def test_httpx_reuses_one_connection_for_several_requests() -> None:
    with trio.fail_after(5):
        async with serving(app) as server, httpx.AsyncClient(trust_env=False) as client:
            url = f"http://127.0.0.1:{server.port}/"
            ports = {(await client.get(url)).headers["x-client-port"] for _ in range(5)}
    assert len(ports) == 1


async def test_httpx_head_gets_the_headers_without_a_body() -> None:
    with trio.fail_after(5):
        async with serving(app) as server, httpx.AsyncClient(trust_env=False) as client:
            response = await client.head(f"http://127.0.0.1:{server.port}/x")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len("HEAD /x "))
    assert response.content == b""


async def run_aiohttp(port: int) -> list[tuple[int, bytes, str]]:
    """A GET, a POST echoed back and a chunked stream, on one aiohttp session."""
    base = f"http://127.0.0.1:{port}"
    results = []
    timeout = aiohttp.ClientTimeout(total=5)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        async with session.get(f"{base}/a?b=c") as response:
            results.append(
                (response.status, await response.read(), response.headers["x-client-port"])
            )
        async with session.post(f"{base}/echo", data=b"x" * 100_000) as response:
            results.append((response.status, await response.read(), ""))
        async with session.get(f"{base}/stream") as response:
            results.append((response.status, await response.read(), response.headers["x-kind"]))
        async with session.get(f"{base}/again") as response:
            results.append(
                (response.status, await response.read(), response.headers["x-client-port"])
            )
    return results


async def test_aiohttp_gets_posts_and_streams_on_one_kept_alive_connection() -> None:
    with trio.fail_after(5):
        async with serving(app) as server:
            port = server.port
            results = await trio.to_thread.run_sync(
                lambda: asyncio.run(run_aiohttp(port)), abandon_on_cancel=True
            )
    first, echoed, streamed, again = results
    assert first[:2] == (200, b"GET /a b=c")
    assert echoed == (200, b"x" * 100_000, "")
    assert streamed == (200, EXPECTED_STREAM, "stream")
    assert again[:2] == (200, b"GET /again ")
    assert first[2] == again[2]  # the same client port: the connection was kept alive
