"""The server over TLS (``ssl_context``), with certificates from a throwaway CA."""

from __future__ import annotations

import ssl

import httpx
import pytest
import trio
import trustme

import duplex
from _server_support import RawClient, request_bytes, serving


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


async def tls_client(port: int, context: ssl.SSLContext) -> RawClient:
    """A raw client over TLS, checking the server's certificate for ``localhost``."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    return RawClient(trio.SSLStream(tcp, context, server_hostname="localhost"))


async def describe(request: duplex.Request) -> duplex.Response:
    body = await request.body.join()
    return duplex.Response(200, body=f"{request.scheme} {request.method} {body.decode()}")


async def test_httpx_gets_an_answer_over_https(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with trio.fail_after(5):
        async with (
            serving(describe, ssl_context=server_context) as server,
            httpx.AsyncClient(verify=client_context, trust_env=False) as client,
        ):
            response = await client.post(f"https://127.0.0.1:{server.port}/", content=b"secret")
    assert response.status_code == 200
    assert response.text == "https POST secret"


async def test_a_tls_stream_is_echoed_chunk_by_chunk(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def echo(request: duplex.Request) -> duplex.Response:
        async def copy(stream: duplex.Stream) -> None:
            while chunk := await stream.readpartial(1024):
                await stream.write(chunk)

        return duplex.Response(200, body=duplex.Streamable(copy))

    with trio.fail_after(5):
        async with (
            serving(echo, ssl_context=server_context) as server,
            await tls_client(server.port, client_context) as client,
        ):
            await client.send(
                b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nfirst\r\n"
            )
            assert (await client.read_head()).status == 200
            assert await client.read_chunk() == b"first"
            await client.send(b"6\r\nsecond\r\n0\r\n\r\n")
            assert await client.read_chunk() == b"second"
            assert await client.read_chunk() == b""


async def test_a_tls_connection_over_max_connections_gets_503_over_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    limits = duplex.Limits(max_connections=1)
    with trio.fail_after(5):
        async with (
            serving(describe, ssl_context=server_context, limits=limits) as server,
            await tls_client(server.port, client_context) as first,
        ):
            await first.send(request_bytes())
            assert (await first.read_response()).status == 200
            async with await tls_client(server.port, client_context) as second:
                await second.send(request_bytes())
                response = await second.read_response()
    assert response.status == 503


async def test_a_plain_http_request_to_a_tls_server_gets_no_answer(
    server_context: ssl.SSLContext,
) -> None:
    with trio.fail_after(5):
        async with (
            serving(describe, ssl_context=server_context) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes())
            assert b"HTTP/1.1" not in await client.read_until_eof()
