"""What ``on_open``, ``after_open`` and ``before_close`` send goes out as it is sent —
rack-stream's chunk-a-second example reaches the client a chunk at a time — and a hook
that sends more than the queue holds is held back by the client, never deadlocked."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import duplex
from _channel_support import serving
from _protocol_support import H1Exchange, H2Exchange, exchange

COUNT = 2000  # more than the 1,024 messages a channel queues


@pytest.mark.both_protocols
async def test_a_chunk_sent_from_after_open_arrives_before_the_hook_sends_the_next(
    protocol: str,
) -> None:
    seen_first = trio.Event()

    async def after_open(channel: duplex.Channel) -> None:
        await channel.send("chunky 0\n")
        await seen_first.wait()  # the client has it while the hook still runs
        await channel.send("chunky 1\n")
        await channel.close()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, after_open=after_open)

    with trio.fail_after(5):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.request()
            assert await client.read_chunk() == b"chunky 0\n"
            seen_first.set()
            assert await client.read_body() == b"chunky 1\n"


@pytest.mark.both_protocols
async def test_a_chunk_sent_from_on_open_arrives_while_on_open_still_runs(protocol: str) -> None:
    seen_first = trio.Event()

    async def on_open(channel: duplex.Channel) -> None:
        await channel.send("data")
        await seen_first.wait()
        await channel.close()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=on_open)

    with trio.fail_after(5):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.request("/", headers="Accept: text/event-stream\r\n")
            assert await client.read_chunk() == b"data: data\n\n"
            seen_first.set()
            assert await client.read_body() == b""


async def read_numbers(client: H1Exchange | H2Exchange) -> list[int]:
    body = await client.read_body()
    return [int(line) for line in body.split()]


@pytest.mark.both_protocols
async def test_an_after_open_hook_may_send_more_messages_than_the_queue_holds(
    protocol: str,
) -> None:
    async def after_open(channel: duplex.Channel) -> None:
        for number in range(COUNT):
            assert await channel.send(f"{number}\n")
        await channel.close()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, after_open=after_open)

    with trio.fail_after(10):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.request()
            assert await read_numbers(client) == list(range(COUNT))


@pytest.mark.both_protocols
async def test_a_before_close_hook_may_send_more_messages_than_the_queue_holds(
    protocol: str,
) -> None:
    queued: list[int] = []

    async def before_close(channel: duplex.Channel) -> None:
        for number in range(COUNT):
            assert await channel.send(f"{number}\n")
            queued.append(channel.queued_messages)

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            on_open=lambda channel: channel.close(),
            before_close=before_close,
        )

    with trio.fail_after(10):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.request()
            assert await read_numbers(client) == list(range(COUNT))
    assert max(queued) <= 1024  # it went out as it was sent, within the queue's bound


@pytest.mark.both_protocols
async def test_a_hook_sending_to_a_client_that_reads_slowly_is_held_back_not_queued(
    protocol: str,
) -> None:
    sent: list[int] = []
    message = b"x" * 65536

    async def after_open(channel: duplex.Channel) -> None:
        for number in range(COUNT):
            if not await channel.send(message):
                return
            sent.append(number)

    opened: list[duplex.Channel] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        channel = duplex.Channel(request, after_open=after_open)
        opened.append(channel)
        return channel.response()

    with trio.fail_after(10):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.request()
            await trio.testing.wait_all_tasks_blocked()
            # The hook waits for room: what the channel holds stays within its bounds.
            assert len(sent) < COUNT
            assert opened[0].queued_bytes <= opened[0].max_queue_bytes
            await opened[0].close()
