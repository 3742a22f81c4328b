"""https through ``ssl_context``, against duplex's server with TLS (certificates from
trustme); https to a server that does not speak TLS fails at once, and says so."""

from __future__ import annotations

import ssl

import pytest
import trio
import trustme

import duplex
from _client_support import TIMEOUT, FakeServer, aiohttp_echo, echo, start_duplex, url


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_https_streams_full_duplex(
    nursery: trio.Nursery, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo, ssl_context=server_context)
        async with duplex.Client(ssl_context=client_context) as client:
            output = duplex.Writable()
            response = await client.post(url(server, scheme="https"), body=output)
            for chunk in (b"over ", b"tls"):
                await output.write(chunk)
                assert await response.body.read() == chunk
            await output.close_write()
            assert await response.body.read() == b""


async def client_port(request: duplex.Request) -> duplex.Response:
    """Answer with the client's port: one port for every request on one connection."""
    assert request.client is not None
    return duplex.Response(200, body=str(request.client[1]))


async def test_https_reuses_its_connection(
    nursery: trio.Nursery, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, client_port, ssl_context=server_context)
        async with duplex.Client(ssl_context=client_context) as client:
            first = await (await client.get(url(server, scheme="https"))).read()
            second = await (await client.get(url(server, scheme="https"))).read()
            assert first == second
            assert client.pool.idle_connections() == 1


async def test_https_refuses_a_certificate_it_does_not_trust(
    nursery: trio.Nursery, server_context: ssl.SSLContext
) -> None:
    untrusting = ssl.create_default_context()
    trustme.CA().configure_trust(untrusting)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo, ssl_context=server_context)
        async with duplex.Client(ssl_context=untrusting) as client:
            with pytest.raises(trio.BrokenResourceError) as caught:
                await client.get(url(server, scheme="https"))
            assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
            assert client.pool.open_connections() == 0


# -- https to a server that does not speak TLS -----------------------------------------


def assert_names_the_tls_handshake(error: trio.BrokenResourceError) -> None:
    assert "TLS handshake failed" in str(error)
    assert isinstance(error.__cause__, ssl.SSLError)


async def test_https_to_a_plain_http_server_fails_at_once_naming_the_tls_handshake() -> None:
    with trio.fail_after(TIMEOUT):
        async with aiohttp_echo() as address, duplex.Client() as client:
            port = int(address.rsplit(":", 1)[1].strip("/"))
            with pytest.raises(trio.BrokenResourceError) as caught:
                await client.get(f"https://127.0.0.1:{port}/")
            assert_names_the_tls_handshake(caught.value)
            assert client.pool.open_connections() == 0


async def test_https_to_a_server_that_hangs_up_fails_at_once_naming_the_tls_handshake(
    nursery: trio.Nursery,
) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, hang_up)
        async with duplex.Client() as client:
            with pytest.raises(trio.BrokenResourceError) as caught:
                await client.get(f"https://127.0.0.1:{server.port}/")
            assert_names_the_tls_handshake(caught.value)
            assert client.pool.open_connections() == 0


async def test_https_to_duplex_serving_plain_http_fails_at_once_naming_the_tls_handshake(
    nursery: trio.Nursery,
) -> None:
    limits = duplex.ClientLimits(connect_timeout=TIMEOUT / 4)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo)
        async with duplex.Client(limits=limits) as client:
            with pytest.raises(trio.BrokenResourceError) as caught:
                await client.get(url(server, scheme="https"))
            assert_names_the_tls_handshake(caught.value)


async def test_https_echoes_a_large_bytes_body_whole(
    nursery: trio.Nursery, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    data = bytes(range(256)) * 16384  # 4 MiB: more than the socket buffers hold
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo, ssl_context=server_context)
        async with duplex.Client(ssl_context=client_context) as client:
            response = await client.post(url(server, scheme="https"), body=data)
            assert await response.read() == data
