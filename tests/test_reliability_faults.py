"""Peers that reset (RST) or half-close (FIN) at every phase of an exchange: during the
head, mid-body, mid-chunk, during the WebSocket handshake, and while the server is
blocked writing to a full socket.

Each time the damage stays with that connection: a bystander on its own kept-alive
connection is answered before, during and after; the server frees the connection
(``connection_count`` back to the bystander's alone); a channel's ``on_close`` fires
exactly once. A FIN counts as the peer leaving: the server cannot tell a half-close
from a close without writing (see docs/reliability.md).

tests/test_server_disconnect.py and tests/test_channel_close.py cover a plain close
mid-response, mid-body and for each channel transport.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import duplex
from _channel_support import CloseRecorder, Opened
from _reliability_support import UPGRADE, error_records, reset, wait_until
from _server_support import RawClient, request_bytes, serving

Fault = Callable[[RawClient], Awaitable[None]]


async def reset_connection(client: RawClient) -> None:
    assert isinstance(client.stream, trio.SocketStream)
    await reset(client.stream)


async def half_close(client: RawClient) -> None:
    await client.send_eof()


FAULTS = [pytest.param(reset_connection, id="reset"), pytest.param(half_close, id="half-close")]


class Exchanges:
    """A handler with one route per phase, noting what each saw of the fault."""

    def __init__(self) -> None:
        self.reading = trio.Event()
        self.read_errors: list[BaseException] = []
        self.read_broken = trio.Event()
        self.write_errors: list[BaseException] = []
        self.write_broken = trio.Event()
        self.opened = Opened()
        self.closes = CloseRecorder()

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        if request.target == "/ok":
            return duplex.Response(200, body=b"ok")
        if request.target == "/upload":
            return await self.upload(request)
        if request.target == "/stream":
            output = duplex.Writable()
            request.nursery.start_soon(self.produce, output)
            return duplex.Response(200, body=output)
        return duplex.channel(
            request,
            on_open=self.on_open,
            on_close=self.closes,
            ping_interval=None,
            heartbeat=None,
        )

    async def upload(self, request: duplex.Request) -> duplex.Response:
        self.reading.set()
        try:
            body = await request.body.join()
        except trio.BrokenResourceError as error:
            self.read_errors.append(error)
            self.read_broken.set()
            raise
        return duplex.Response(200, body=body)

    async def produce(self, output: duplex.Writable) -> None:
        try:
            while True:
                await output.write(b"s" * 65536)
        except trio.BrokenResourceError as error:
            self.write_errors.append(error)
            self.write_broken.set()

    async def on_open(self, channel: duplex.Channel) -> None:
        self.opened(channel)
        if channel.transport == "http":
            channel.request.nursery.start_soon(self.pump, channel)

    @staticmethod
    async def pump(channel: duplex.Channel) -> None:
        while await channel.send(b"c" * 65536):
            pass


@asynccontextmanager
async def bystander(server: duplex.Server) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A client on its own kept-alive connection; calling ``ask()`` asserts it is answered."""
    async with await RawClient.connect(server.port) as client:

        async def ask() -> None:
            with trio.fail_after(1):
                await client.send(request_bytes("/ok"))
                assert (await client.read_response()).body == b"ok"

        await ask()
        yield ask


async def only_the_bystander_left(server: duplex.Server) -> None:
    with trio.fail_after(1):
        await wait_until(lambda: server.connection_count == 1)


def small_receive_buffer(client: RawClient) -> None:
    """So that the server's writes block soon when we stop reading."""
    assert isinstance(client.stream, trio.SocketStream)
    client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)


# -- during the head --------------------------------------------------------------------


async def test_a_reset_during_the_head_frees_the_connection_without_an_answer() -> None:
    handler = Exchanges()
    with trio.fail_after(5):
        async with serving(handler) as server, bystander(server) as ask:
            client = await RawClient.connect(server.port)
            await client.send(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Partial: ")
            await reset_connection(client)
            await only_the_bystander_left(server)
            await ask()


async def test_a_half_close_during_the_head_gets_400_and_frees_the_connection() -> None:
    handler = Exchanges()
    with trio.fail_after(5):
        async with serving(handler) as server, bystander(server) as ask:
            async with await RawClient.connect(server.port) as client:
                await client.send(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Partial: ")
                await half_close(client)
                response = await client.read_response()
                await client.expect_closed()
            await only_the_bystander_left(server)
            await ask()
    assert response.status == 400


# -- mid-body and mid-chunk -------------------------------------------------------------

BODIES = [
    pytest.param(
        request_bytes("/upload", method="POST", headers="Content-Length: 100\r\n") + b"0123456789",
        id="mid-body",
    ),
    pytest.param(
        request_bytes("/upload", method="POST", headers="Transfer-Encoding: chunked\r\n")
        + b"a\r\n01234",
        id="mid-chunk",
    ),
]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("partial_request", BODIES)
async def test_a_peer_leaving_mid_body_breaks_the_handlers_read_and_frees_the_connection(
    partial_request: bytes, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    handler = Exchanges()
    with trio.fail_after(5):
        async with serving(handler) as server, bystander(server) as ask:
            async with await RawClient.connect(server.port) as client:
                await client.send(partial_request)
                await handler.reading.wait()
                await fault(client)
                with trio.fail_after(1):
                    await handler.read_broken.wait()
            await only_the_bystander_left(server)
            await ask()
    assert len(handler.read_errors) == 1
    assert error_records(caplog) == []


# -- during the WebSocket handshake ------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_peer_leaving_during_the_websocket_handshake_closes_the_channel_once(
    fault: Fault,
) -> None:
    handler = Exchanges()
    with trio.fail_after(5):
        async with serving(handler) as server, bystander(server) as ask:
            async with await RawClient.connect(server.port) as client:
                await client.send(request_bytes("/ws", headers=UPGRADE))
                await fault(client)
                with trio.fail_after(1):
                    await handler.closes.called.wait()
            await only_the_bystander_left(server)
            await ask()
    assert [status.kind for status in handler.closes.statuses] == ["gone"]


# -- while the server is blocked writing to a full socket --------------------------------


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_peer_leaving_while_the_server_is_blocked_writing_breaks_the_writer(
    fault: Fault,
) -> None:
    handler = Exchanges()
    with trio.fail_after(5):
        async with serving(handler) as server, bystander(server) as ask:
            async with await RawClient.connect(server.port) as client:
                small_receive_buffer(client)
                await client.send(request_bytes("/stream"))
                await client.read_head()
                # Every task blocked a while: the server's writes to us no longer complete.
                await trio.testing.wait_all_tasks_blocked(cushion=0.2)
                await ask()
                await fault(client)
                with trio.fail_after(1):
                    await handler.write_broken.wait()
            await only_the_bystander_left(server)
            await ask()
    assert len(handler.write_errors) == 1


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_peer_leaving_a_channel_blocked_writing_to_it_closes_it_once_as_gone(
    fault: Fault,
) -> None:
    handler = Exchanges()
    with trio.fail_after(5):
        async with serving(handler) as server, bystander(server) as ask:
            async with await RawClient.connect(server.port) as client:
                small_receive_buffer(client)
                await client.send(request_bytes("/channel"))
                await client.read_head()
                await handler.opened.one()
                await trio.testing.wait_all_tasks_blocked(cushion=0.2)
                await ask()
                await fault(client)
                with trio.fail_after(1):
                    await handler.closes.called.wait()
            await only_the_bystander_left(server)
            await ask()
    assert [status.kind for status in handler.closes.statuses] == ["gone"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_peer_leaving_an_open_websocket_closes_the_channel_once_as_gone(
    fault: Fault,
) -> None:
    handler = Exchanges()
    with trio.fail_after(5):
        async with serving(handler) as server, bystander(server) as ask:
            async with await RawClient.connect(server.port) as client:
                await client.send(request_bytes("/ws", headers=UPGRADE))
                assert (await client.read_head()).status == 101
                await handler.opened.one()
                await fault(client)
                with trio.fail_after(1):
                    await handler.closes.called.wait()
            await only_the_bystander_left(server)
            await ask()
    assert [(status.kind, status.code) for status in handler.closes.statuses] == [("gone", 1006)]


# -- between requests --------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_peer_leaving_an_idle_kept_alive_connection_frees_it(fault: Fault) -> None:
    handler = Exchanges()
    with trio.fail_after(5):
        async with serving(handler) as server, bystander(server) as ask:
            async with await RawClient.connect(server.port) as client:
                await client.send(request_bytes("/ok"))
                await client.read_response()
                await fault(client)
                await only_the_bystander_left(server)
            await ask()
