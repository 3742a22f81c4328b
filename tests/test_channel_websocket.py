"""Channels over WebSocket, with the ``websockets`` package (asyncio, in a thread) as the
client: echo, close codes both ways, the message size limit, and ``on_close``."""

from __future__ import annotations

from contextlib import suppress

import pytest
import trio
import trio.testing
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import duplex
from _channel_support import CloseRecorder, Opened, RawHTTP, in_asyncio_thread, serving
from _protocol_support import WebSocketClosed, WebSocketPeer


def echo(channel: duplex.Channel, message: str | bytes) -> object:
    return channel.send(message)


def websocket_channel(
    opened: Opened | None = None,
    closes: CloseRecorder | None = None,
    *,
    max_message_size: int = 1 << 20,
) -> duplex.Handler:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            on_open=opened,
            on_receive=echo,
            on_close=closes,
            max_message_size=max_message_size,
        )

    return handler


def client(port: int, **options: object) -> connect:
    return connect(f"ws://127.0.0.1:{port}/ws", proxy=None, **options)  # type: ignore[arg-type]


async def test_a_text_message_comes_back_as_text() -> None:
    with trio.fail_after(10):
        async with serving(websocket_channel()) as server:

            async def talk() -> str | bytes:
                async with client(server.port) as ws:
                    await ws.send("hello, channel")
                    return await ws.recv()

            assert await in_asyncio_thread(talk) == "hello, channel"


async def test_a_binary_message_comes_back_as_binary() -> None:
    with trio.fail_after(10):
        async with serving(websocket_channel()) as server:

            async def talk() -> str | bytes:
                async with client(server.port) as ws:
                    await ws.send(b"\x00\xffbinary")
                    return await ws.recv()

            assert await in_asyncio_thread(talk) == b"\x00\xffbinary"


async def test_messages_reach_on_receive_in_order() -> None:
    with trio.fail_after(10):
        async with serving(websocket_channel()) as server:

            async def talk() -> list[str | bytes]:
                async with client(server.port) as ws:
                    for number in range(50):
                        await ws.send(str(number))
                    return [await ws.recv() for _ in range(50)]

            assert await in_asyncio_thread(talk) == [str(number) for number in range(50)]


async def test_a_websocket_channel_says_it_is_one() -> None:
    opened = Opened()
    with trio.fail_after(10):
        async with serving(websocket_channel(opened)) as server:

            async def talk() -> None:
                async with client(server.port) as ws:
                    await ws.send("x")
                    await ws.recv()

            await in_asyncio_thread(talk)
            channel = await opened.one()
    assert channel.transport == "websocket"
    assert channel.is_websocket


async def test_the_client_close_code_and_reason_reach_on_close() -> None:
    opened = Opened()
    closes = CloseRecorder()
    with trio.fail_after(10):
        async with serving(websocket_channel(opened, closes)) as server:

            async def talk() -> None:
                async with client(server.port) as ws:
                    await ws.send("x")
                    await ws.recv()
                    await ws.close(4001, "done here")

            await in_asyncio_thread(talk)
            channel = await opened.one()
            with trio.fail_after(1):
                status = await channel.wait_closed()
    assert status == duplex.CloseStatus("client", 4001, "done here")
    assert closes.statuses == [status]


async def test_a_server_close_reaches_the_client_as_1000() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_receive=lambda channel, _: channel.close())

    with trio.fail_after(10):
        async with serving(handler) as server:

            async def talk() -> int | None:
                async with client(server.port) as ws:
                    await ws.send("close, please")
                    with suppress(ConnectionClosed):
                        await ws.recv()
                    return ws.close_code

            assert await in_asyncio_thread(talk) == 1000


async def test_a_message_over_max_message_size_closes_with_1009() -> None:
    opened = Opened()
    closes = CloseRecorder()
    with trio.fail_after(10):
        async with serving(websocket_channel(opened, closes, max_message_size=100)) as server:

            async def talk() -> int | None:
                async with client(server.port) as ws:
                    await ws.send("small")
                    assert await ws.recv() == "small"
                    await ws.send("x" * 101)
                    with suppress(ConnectionClosed):
                        await ws.recv()
                    return ws.close_code

            assert await in_asyncio_thread(talk) == 1009
            channel = await opened.one()
            with trio.fail_after(1):
                status = await channel.wait_closed()
    assert status.code == 1009
    assert status.kind == "error"
    assert closes.statuses == [status]


async def test_a_dropped_websocket_closes_the_channel_as_gone_1006_within_a_second() -> None:
    opened = Opened()
    closes = CloseRecorder()
    with trio.fail_after(10):
        async with serving(websocket_channel(opened, closes)) as server:

            async def drop() -> None:
                ws: ClientConnection = await client(server.port)
                await ws.send("x")
                await ws.recv()
                ws.transport.abort()

            await in_asyncio_thread(drop)
            channel = await opened.one()
            with trio.fail_after(1):
                status = await channel.wait_closed()
    assert (status.kind, status.code) == ("gone", 1006)
    assert closes.statuses == [status]


async def test_a_clean_websocket_close_closes_the_channel_as_client_within_a_second() -> None:
    opened = Opened()
    closes = CloseRecorder()
    with trio.fail_after(10):
        async with serving(websocket_channel(opened, closes)) as server:

            async def talk() -> None:
                async with client(server.port) as ws:
                    await ws.send("x")
                    await ws.recv()

            await in_asyncio_thread(talk)
            channel = await opened.one()
            with trio.fail_after(1):
                status = await channel.wait_closed()
    assert (status.kind, status.code) == ("client", 1000)
    assert closes.statuses == [status]


async def test_a_client_that_never_answers_the_close_frame_is_hung_up_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(duplex.channels._transports, "CLOSE_HANDSHAKE_SECONDS", 0.2)
    opened = Opened()
    closes = CloseRecorder()
    upgrade = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    with trio.fail_after(5):
        async with (
            serving(websocket_channel(opened, closes)) as server,
            await RawHTTP.connect(server.port) as mute,
        ):
            await mute.request("/ws", headers=upgrade)
            assert mute.status == 101
            channel = await opened.one()
            await channel.close()
            with trio.fail_after(1):
                status = await channel.wait_closed()
            assert await mute.stream.receive_some(2) == b"\x88\x02"  # the close frame
    assert status.kind == "server"
    assert closes.statuses == [status]


# -- over both protocols: wsproto as the client, by the HTTP/1.1 Upgrade or by an
# -- extended CONNECT over HTTP/2 (RFC 8441); conftest's both_protocols


@pytest.mark.both_protocols
async def test_messages_come_back_as_they_went_in_order(protocol: str) -> None:
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(websocket_channel(opened)) as server,
            WebSocketPeer.connect(server.port, protocol) as ws,
        ):
            await ws.send("hello, channel")
            await ws.send(b"\x00\xffbinary")
            for number in range(20):
                await ws.send(str(number))
            received = [await ws.receive() for _ in range(22)]
            channel = await opened.one()
            await ws.close()
    assert received == ["hello, channel", b"\x00\xffbinary", *(str(n) for n in range(20))]
    assert channel.transport == "websocket"
    assert channel.is_websocket


@pytest.mark.both_protocols
async def test_the_client_close_code_and_reason_reach_on_close_once(protocol: str) -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with serving(websocket_channel(opened, closes)) as server:
            async with WebSocketPeer.connect(server.port, protocol) as ws:
                await ws.send("x")
                await ws.receive()
                await ws.close(4001, "done here")
            channel = await opened.one()
            with trio.fail_after(1):
                status = await channel.wait_closed()
            await trio.testing.wait_all_tasks_blocked()
    assert status == duplex.CloseStatus("client", 4001, "done here")
    assert closes.statuses == [status]


@pytest.mark.both_protocols
async def test_a_server_close_reaches_a_client_of_either_protocol_as_1000(
    protocol: str,
) -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_receive=lambda channel, _: channel.close())

    with trio.fail_after(5):
        async with serving(handler) as server, WebSocketPeer.connect(server.port, protocol) as ws:
            await ws.send("close, please")
            with pytest.raises(WebSocketClosed) as closed:
                await ws.receive()
    assert closed.value.code == 1000


@pytest.mark.both_protocols
async def test_a_message_over_max_message_size_closes_with_1009_once(protocol: str) -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with serving(websocket_channel(opened, closes, max_message_size=100)) as server:
            async with WebSocketPeer.connect(server.port, protocol) as ws:
                await ws.send("small")
                assert await ws.receive() == "small"
                await ws.send("x" * 101)
                with pytest.raises(WebSocketClosed) as closed:
                    await ws.receive()
            channel = await opened.one()
            with trio.fail_after(1):
                status = await channel.wait_closed()
            await trio.testing.wait_all_tasks_blocked()
    assert closed.value.code == 1009
    assert (status.kind, status.code) == ("error", 1009)
    assert closes.statuses == [status]


@pytest.mark.both_protocols
async def test_a_dropped_websocket_closes_the_channel_as_gone_1006_once(protocol: str) -> None:
    """Over HTTP/2 the client resets its stream; the connection stays up."""
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(websocket_channel(opened, closes)) as server,
            WebSocketPeer.connect(server.port, protocol) as ws,
        ):
            await ws.send("x")
            await ws.receive()
            await ws.drop()
            channel = await opened.one()
            with trio.fail_after(1):
                status = await channel.wait_closed()
            await trio.testing.wait_all_tasks_blocked()
    assert (status.kind, status.code) == ("gone", 1006)
    assert closes.statuses == [status]


@pytest.mark.both_protocols
async def test_a_websocket_whose_connection_closes_closes_the_channel_as_gone_once(
    protocol: str,
) -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with serving(websocket_channel(opened, closes)) as server:
            async with WebSocketPeer.connect(server.port, protocol) as ws:
                await ws.send("x")
                await ws.receive()
            channel = await opened.one()
            with trio.fail_after(1):
                status = await channel.wait_closed()
            await trio.testing.wait_all_tasks_blocked()
    assert (status.kind, status.code) == ("gone", 1006)
    assert closes.statuses == [status]


@pytest.mark.both_protocols
async def test_server_shutdown_closes_a_websocket_with_1001_once(protocol: str) -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(websocket_channel(opened, closes)) as server,
            WebSocketPeer.connect(server.port, protocol) as ws,
        ):
            channel = await opened.one()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown, 2)
                with pytest.raises(WebSocketClosed) as closed:
                    await ws.receive()
            status = await channel.wait_closed()
    assert closed.value.code == 1001
    assert (status.kind, status.code) == ("shutdown", 1001)
    assert closes.statuses == [status]
