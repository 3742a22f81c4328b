"""Parked channels: a channel with nothing to do holds no task (the server holds it,
watching its socket and its deadline), and everything that needs it resumes it: a
message the socket cannot take at once, a close, the heartbeat, the client leaving,
a request pipelined behind it, the server stopping."""

from __future__ import annotations

from contextlib import suppress

import pytest
import trio
import trio.testing

import duplex
from _channel_support import CloseRecorder, ConnectionEnded, Opened, RawHTTP, serving
from duplex.http._platform import capabilities

SSE_HEADERS = "Accept: text/event-stream\r\n"
HEARTBEAT = duplex.sse.comment()


@pytest.fixture
def parking() -> None:
    """Skip a test that counts tasks where channels cannot park (the portable path, where
    each channel keeps its task: the other tests here hold there too)."""
    if not capabilities().epoll:
        pytest.skip("parking needs epoll; the portable path keeps a task per channel")


def tasks_living() -> int:
    return trio.lowlevel.current_statistics().tasks_living


def channel_handler(
    opened: Opened, closes: CloseRecorder | None = None, **options: object
) -> duplex.Handler:
    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/plain":
            return duplex.Response(200, body=b"plain")
        return duplex.channel(request, on_open=opened, on_close=closes, **options)  # type: ignore[arg-type]

    return handler


@pytest.mark.usefixtures("parking")
async def test_idle_channels_hold_no_task_and_a_broadcast_wakes_none() -> None:
    opened = Opened()
    group = duplex.ChannelGroup()

    async def on_open(channel: duplex.Channel) -> None:
        group.add(channel)
        opened(channel)

    async def subscribing(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=on_open, heartbeat=None)

    count = 20
    with trio.fail_after(10):
        async with serving(subscribing) as server:
            await trio.testing.wait_all_tasks_blocked()
            before = tasks_living()
            clients = [await RawHTTP.connect(server.port) for _ in range(count)]
            for client in clients:
                await client.request("/events", headers=SSE_HEADERS)
            await opened.wait(count)
            await trio.testing.wait_all_tasks_blocked()
            parked = tasks_living()
            assert await group.broadcast("news") == count
            await trio.testing.wait_all_tasks_blocked()
            after_broadcast = tasks_living()
            for client in clients:
                assert await client.read_chunk() == b"data: news\n\n"
                await trio.aclose_forcefully(client.stream)
    # A connection and a channel cost no task while idle (the server's few helpers,
    # started with the first exchange, aside), and a broadcast starts none.
    assert parked - before <= 3, (before, parked)
    assert after_broadcast == parked


async def test_a_parked_channel_resumes_to_close_and_calls_on_close_once() -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(channel_handler(opened, closes, heartbeat=None)) as server,
            await RawHTTP.connect(server.port) as client,
        ):
            await client.request("/events", headers=SSE_HEADERS)
            channel = await opened.one()
            await trio.testing.wait_all_tasks_blocked()
            assert await channel.send("last")
            assert await channel.close()
            assert await client.read_body() == b"data: last\n\n"
            status = await channel.wait_closed()
    assert status == duplex.CloseStatus("server")
    assert closes.statuses == [status]


@pytest.mark.usefixtures("parking")
async def test_a_parked_channel_sends_its_heartbeat_at_its_deadline_and_parks_again() -> None:
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(channel_handler(opened, heartbeat=0.2)) as server,
            await RawHTTP.connect(server.port) as client,
        ):
            await client.request("/events", headers=SSE_HEADERS)
            await opened.one()
            await trio.testing.wait_all_tasks_blocked()
            parked = tasks_living()
            start = trio.current_time()
            assert await client.read_chunk() == HEARTBEAT
            assert await client.read_chunk() == HEARTBEAT
            elapsed = trio.current_time() - start
            await trio.testing.wait_all_tasks_blocked()
            assert tasks_living() == parked
    assert 0.3 <= elapsed < 1.5


async def test_a_client_leaving_one_parked_channel_closes_that_one_only() -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(channel_handler(opened, closes, heartbeat=None)) as server,
            await RawHTTP.connect(server.port) as staying,
        ):
            leaving = await RawHTTP.connect(server.port)
            await staying.request("/events", headers=SSE_HEADERS)
            await leaving.request("/events", headers=SSE_HEADERS)
            first, second = await opened.wait(2)
            await trio.testing.wait_all_tasks_blocked()
            await trio.aclose_forcefully(leaving.stream)
            with trio.fail_after(1):
                status = await second.wait_closed()
            assert first.is_open
            assert await first.send("still here")
            assert await staying.read_chunk() == b"data: still here\n\n"
    assert status.kind == "gone"
    assert closes.statuses[0] is status


async def test_messages_the_socket_cannot_take_at_once_all_arrive_in_order() -> None:
    opened = Opened()
    message = "x" * 60_000
    count = 40  # far more than the socket buffers hold
    with trio.fail_after(10):
        async with (
            serving(channel_handler(opened, heartbeat=None)) as server,
            await RawHTTP.connect(server.port) as client,
        ):
            await client.request("/events", headers=SSE_HEADERS)
            channel = await opened.one()
            await trio.testing.wait_all_tasks_blocked()

            async def send_all() -> None:
                for number in range(count):
                    assert await channel.send(f"{number} {message}")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                received = b""
                for number in range(count):
                    expected = f"data: {number} {message}\n\n".encode()
                    while len(received) < len(expected):
                        received += await client.read_chunk()
                    assert received[: len(expected)] == expected
                    received = received[len(expected) :]
            assert channel.is_open


async def test_a_request_pipelined_behind_a_parked_channel_is_served_after_it() -> None:
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(channel_handler(opened, heartbeat=None)) as server,
            await RawHTTP.connect(server.port) as client,
        ):
            await client.stream.send_all(
                b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
                b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            await client.read_head()
            channel = await opened.one()
            await trio.testing.wait_all_tasks_blocked()
            assert channel.is_open  # unread bytes are no reason to think the client left
            assert await channel.send("one")
            assert await channel.close()
            assert await client.read_body() == b"data: one\n\n"
            client.headers.clear()
            await client.read_head()
            assert await client.read_body() == b"plain"


async def test_a_server_cancelled_with_parked_channels_still_calls_their_on_close() -> None:
    opened, closes = Opened(), CloseRecorder()
    with trio.fail_after(5):
        async with serving(channel_handler(opened, closes, heartbeat=None)) as server:
            client = await RawHTTP.connect(server.port)
            await client.request("/events", headers=SSE_HEADERS)
            await opened.one()
            await trio.testing.wait_all_tasks_blocked()
        # serving() cancelled the server: the parked channel ended in its own task.
        with suppress(ConnectionEnded):
            await client.read_body()
        await trio.aclose_forcefully(client.stream)
    assert [status.kind for status in closes.statuses] == ["shutdown"]
