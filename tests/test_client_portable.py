"""Where the platform lacks the fast path (no ``MSG_DONTWAIT``, ``select.poll`` or
``os.writev``, as on Windows), the client still keeps its connections alive and still
never reuses one the server has closed."""

from __future__ import annotations

import os
import select
import socket

import pytest
import trio
import trio.testing

import duplex
from _client_support import TIMEOUT, FakeServer, read_head, start_duplex, url
from duplex.http._platform import capabilities

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def no_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform without what the fast path needs."""
    monkeypatch.delattr(socket, "MSG_DONTWAIT", raising=False)
    monkeypatch.delattr(select, "poll", raising=False)
    monkeypatch.delattr(os, "writev", raising=False)
    assert not capabilities().direct_io


async def client_port(request: duplex.Request) -> duplex.Response:
    assert request.client is not None
    return duplex.Response(200, body=str(request.client[1]))


@pytest.mark.usefixtures("no_fast_path")
async def test_requests_without_the_fast_path_share_one_kept_alive_connection(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, client_port)
        async with duplex.Client() as client:
            ports = {await (await client.get(url(server))).read() for _ in range(3)}
            assert len(ports) == 1
            assert client.pool.open_connections() == client.pool.idle_connections() == 1


@pytest.mark.usefixtures("no_fast_path")
async def test_a_connection_the_server_closed_is_not_reused_without_the_fast_path(
    nursery: trio.Nursery,
) -> None:
    closed = trio.Event()

    async def respond_once_then_close(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(OK)
        await stream.aclose()
        closed.set()

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, respond_once_then_close)
        async with duplex.Client() as client:
            assert await (await client.get(server.url)).read() == b"ok"
            await closed.wait()
            await trio.testing.wait_all_tasks_blocked()
            body = duplex.Writable()  # a streamed body: a request never sent again
            await body.close_write()
            assert await (await client.post(server.url, body=body)).read() == b"ok"
        assert server.connections == 2


@pytest.mark.usefixtures("no_fast_path")
async def test_a_large_bytes_body_is_echoed_without_the_fast_path(nursery: trio.Nursery) -> None:
    data = bytes(range(256)) * 16384

    async def echo(request: duplex.Request) -> duplex.Response:
        async def copy(stream: duplex.Stream) -> None:
            while chunk := await stream.readpartial(65536):
                await stream.write(chunk)

        return duplex.Response(200, body=duplex.Streamable(copy))

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo)
        async with duplex.Client() as client:
            assert await (await client.post(url(server), body=data)).read() == data
