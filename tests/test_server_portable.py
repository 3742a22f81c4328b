"""Where the platform lacks the fast path (no ``MSG_DONTWAIT``, ``select.poll`` or
``os.writev``, as on Windows), the server serves all the same: it accepts, keeps
connections alive, notices a peer that leaves mid-exchange, and closes an idle channel
whose client has gone — with no task failing on what the platform does not have."""

from __future__ import annotations

import os
import select
import socket

import pytest
import trio

import duplex
from _server_support import RawClient, request_bytes, serving
from duplex.http._platform import capabilities
from helpers import TIMEOUT

pytestmark = pytest.mark.usefixtures("no_fast_path")


@pytest.fixture
def no_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform without what the fast path needs (trio itself still runs on epoll)."""
    monkeypatch.delattr(socket, "MSG_DONTWAIT", raising=False)
    monkeypatch.delattr(select, "poll", raising=False)
    monkeypatch.delattr(os, "writev", raising=False)
    platform = capabilities()
    assert not platform.direct_io
    assert not platform.epoll  # parking needs the direct path too


async def test_requests_are_served_on_one_kept_alive_connection() -> None:
    async def hello(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=b"hello")

    with trio.fail_after(TIMEOUT):
        async with serving(hello) as server, await RawClient.connect(server.port) as client:
            for _ in range(3):
                await client.send(request_bytes("/"))
                response = await client.read_response()
                assert (response.status, response.body) == (200, b"hello")


async def test_a_peer_that_leaves_mid_exchange_cancels_it() -> None:
    cancelled = trio.Event()
    started = trio.Event()

    async def waits(request: duplex.Request) -> duplex.Response:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    with trio.fail_after(TIMEOUT):
        async with serving(waits) as server:
            client = await RawClient.connect(server.port)
            await client.send(request_bytes("/"))
            await started.wait()
            await client.stream.aclose()
            await cancelled.wait()
            assert server.connection_count <= 1


async def test_an_idle_channel_whose_client_leaves_closes() -> None:
    closed = trio.Event()
    opened = trio.Event()

    async def feed(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            on_open=lambda channel: opened.set(),
            on_close=lambda channel, status: closed.set(),
            heartbeat=None,
        )

    with trio.fail_after(TIMEOUT):
        async with serving(feed) as server:
            client = await RawClient.connect(server.port)
            await client.send(request_bytes("/", headers="Accept: text/event-stream\r\n"))
            await opened.wait()
            await client.stream.aclose()
            await closed.wait()
