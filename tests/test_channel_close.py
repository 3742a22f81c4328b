"""``on_close`` runs exactly once, within a second, with a status that says who closed:
the client leaving each transport, the server closing, the server shutting down."""

from __future__ import annotations

from contextlib import suppress

import pytest
import trio
import trio.testing
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import duplex
from _channel_support import CloseRecorder, Opened, in_asyncio_thread, serving
from _protocol_support import exchange

SSE_HEADERS = "Accept: text/event-stream\r\n"


def recording_channel(opened: Opened, closes: CloseRecorder) -> duplex.Handler:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened, on_close=closes)

    return handler


@pytest.mark.both_protocols
async def test_a_client_leaving_an_http_stream_closes_the_channel_as_gone(protocol: str) -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with serving(recording_channel(opened, closes)) as server:
            async with exchange(server.port, protocol) as client:
                await client.start("/")
                channel = await opened.one()
                await channel.send("a chunk")
                await client.read_head()
                assert await client.read_chunk() == b"a chunk"
                await client.leave()
                with trio.fail_after(1):
                    status = await channel.wait_closed()
            await trio.testing.wait_all_tasks_blocked()
    assert status.kind == "gone"
    assert closes.statuses == [status]
    assert channel.state == "closed"


@pytest.mark.both_protocols
async def test_a_client_leaving_a_waiting_long_poll_closes_the_channel_as_gone(
    protocol: str,
) -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with serving(recording_channel(opened, closes)) as server:
            async with exchange(server.port, protocol) as client:
                await client.start("/poll")
                channel = await opened.one()
                await client.leave()
                with trio.fail_after(1):
                    status = await channel.wait_closed()
            await trio.testing.wait_all_tasks_blocked()
    assert status.kind == "gone"
    assert closes.statuses == [status]
    assert not await channel.send("too late", close=True)


@pytest.mark.both_protocols
async def test_a_client_leaving_an_sse_stream_closes_the_channel_as_gone(protocol: str) -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with serving(recording_channel(opened, closes)) as server:
            async with exchange(server.port, protocol) as client:
                await client.request("/events", headers=SSE_HEADERS)
                channel = await opened.one()
                await client.leave()
                with trio.fail_after(1):
                    status = await channel.wait_closed()
            await trio.testing.wait_all_tasks_blocked()
    assert status.kind == "gone"
    assert closes.statuses == [status]


@pytest.mark.both_protocols
async def test_closing_from_the_server_calls_on_close_once_with_kind_server(
    protocol: str,
) -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(recording_channel(opened, closes)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/events", headers=SSE_HEADERS)
            channel = await opened.one()
            assert await channel.close()
            assert not await channel.close()
            assert await client.read_body() == b""
            status = await channel.wait_closed()
            assert not await channel.close()
    assert status == duplex.CloseStatus("server")
    assert closes.statuses == [status]


@pytest.mark.both_protocols
async def test_server_shutdown_closes_streaming_channels_as_shutdown(protocol: str) -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with serving(recording_channel(opened, closes)) as server:
            async with (
                exchange(server.port, protocol) as sse,
                exchange(server.port, protocol) as http,
            ):
                await sse.request("/events", headers=SSE_HEADERS)
                await http.start("/")
                channels = await opened.wait(2)
                await server.shutdown(grace=2)
                assert await sse.read_body() == b""
                await http.read_head()
                assert await http.read_body() == b""
            statuses = [await channel.wait_closed() for channel in channels]
    assert [status.kind for status in statuses] == ["shutdown", "shutdown"]
    assert sorted(closes.statuses, key=id) == sorted(statuses, key=id)
    assert len(closes.statuses) == 2


async def test_server_shutdown_closes_a_websocket_with_1001() -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(10):
        async with serving(recording_channel(opened, closes)) as server:

            async def wait_for_close() -> int | None:
                async with connect(f"ws://127.0.0.1:{server.port}/", proxy=None) as ws:
                    with suppress(ConnectionClosed):
                        await ws.recv()
                    return ws.close_code

            async with trio.open_nursery() as nursery:
                codes: list[int | None] = []

                async def client() -> None:
                    codes.append(await in_asyncio_thread(wait_for_close))

                nursery.start_soon(client)
                channel = await opened.one()
                await server.shutdown(grace=2)
            status = await channel.wait_closed()
    assert codes == [1001]
    assert (status.kind, status.code) == ("shutdown", 1001)
    assert closes.statuses == [status]


@pytest.mark.both_protocols
async def test_a_client_leaving_with_its_request_body_unread_closes_the_channel_as_gone(
    protocol: str,
) -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with serving(recording_channel(opened, closes)) as server:
            async with exchange(server.port, protocol) as client:
                await client.start("/", method="POST", body=True)
                channel = await opened.one()
                if protocol == "h1":
                    for _ in range(16):  # more than the server buffers for an unread body
                        await client.send(b"x" * 0x4000)
                else:  # the window of an unread body: the server buffers no more
                    await client.send(b"x" * 65535)
                await client.leave()
                with trio.fail_after(1):
                    status = await channel.wait_closed()
            await trio.testing.wait_all_tasks_blocked()
    assert status.kind == "gone"
    assert closes.statuses == [status]
