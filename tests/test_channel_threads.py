"""Sending to a channel from a thread that does not run trio."""

from __future__ import annotations

import pytest
import trio

import duplex
from _channel_support import Opened, serving
from _protocol_support import exchange


@pytest.mark.both_protocols
async def test_send_from_thread_reaches_the_client(protocol: str) -> None:
    opened = Opened()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened)

    with trio.fail_after(5):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.start()
            channel = await opened.one()
            sent = await trio.to_thread.run_sync(channel.send_from_thread, "from a thread")
            assert sent
            await client.read_head()
            assert await client.read_chunk() == b"from a thread"


@pytest.mark.both_protocols
async def test_close_from_thread_closes_the_channel(protocol: str) -> None:
    opened = Opened()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened)

    with trio.fail_after(5):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.start()
            channel = await opened.one()

            def work() -> tuple[bool, bool, bool]:
                first = channel.send_from_thread(b"last words")
                closed = channel.close_from_thread()
                after = channel.send_from_thread(b"ignored")
                return first, closed, after

            assert await trio.to_thread.run_sync(work) == (True, True, False)
            await client.read_head()
            assert await client.read_body() == b"last words"
            status = await channel.wait_closed()
    assert status.kind == "server"
