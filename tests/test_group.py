"""ChannelGroup: broadcasts reach every member whatever its transport; a member that
never reads neither delays the others nor grows memory; per-member messages (the
``since_ts`` pattern); members leave when they close; history replayed on reconnect."""

from __future__ import annotations

import json
import resource
import socket
from collections import Counter
from typing import Literal

import pytest
import trio
import trio_websocket

import duplex
from _channel_support import ConnectionEnded, Opened, RawHTTP, request_bytes, serving
from _protocol_support import exchange

SSE_HEADERS = "Accept: text/event-stream\r\n"
MESSAGE_SIZE = 65536


def raise_fd_limit(needed: int) -> None:
    """Raise the soft limit on open files towards the hard limit if ``needed`` is more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def joining(group: duplex.ChannelGroup, opened: Opened, **options: object) -> duplex.Handler:
    """A handler whose channels join ``group`` once open."""

    def join(channel: duplex.Channel) -> None:
        group.add(channel)
        opened(channel)

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=join, **options)  # type: ignore[arg-type]

    return handler


async def test_a_broadcast_reaches_a_thousand_members_of_every_transport() -> None:
    members = 1000
    raise_fd_limit(2 * members + 256)
    group = duplex.ChannelGroup()
    opened = Opened()
    received: Counter[str] = Counter()
    connect_limit = trio.CapacityLimiter(64)

    async def sse_member(port: int) -> None:
        async with connect_limit:
            client = await RawHTTP.connect(port)
            await client.request("/", headers=SSE_HEADERS)
        async with client:
            assert await client.read_until(b"\n\n") == b"data: hello\n\n"
            received["sse"] += 1

    async def http_member(port: int) -> None:
        async with connect_limit:
            client = await RawHTTP.connect(port)
            await client.stream.send_all(request_bytes())
        async with client:
            await client.read_head()
            assert await client.read_chunk() == b"hello"
            received["http"] += 1

    async def websocket_member(port: int) -> None:
        async with trio.open_nursery() as nursery:
            async with connect_limit:
                ws = await trio_websocket.connect_websocket_url(nursery, f"ws://127.0.0.1:{port}/")
            assert await ws.get_message() == "hello"
            received["websocket"] += 1
            await ws.aclose()

    with trio.fail_after(15):
        async with serving(joining(group, opened)) as server, trio.open_nursery() as nursery:
            for index in range(members):
                member = (sse_member, http_member, websocket_member)[index % 3]
                nursery.start_soon(member, server.port)
            await opened.wait(members)
            assert len(group) == members
            assert await group.broadcast("hello") == members
    assert received == {"sse": 334, "http": 333, "websocket": 333}


class _SlowMemberScenario:
    """Two members that read everything and one that never reads, on one group."""

    def __init__(self, when_full: Literal["close", "drop-oldest"], max_queue: int = 8) -> None:
        # The byte bound well above max_queue messages: these tests are about the count.
        self.group = duplex.ChannelGroup(
            max_queue=max_queue, max_queue_bytes=64 * MESSAGE_SIZE, when_full=when_full
        )
        self.max_queue = max_queue
        self.fast = Opened()
        self.slow = Opened()
        self.fast_received: list[list[int]] = [[], []]
        self.progress = trio.Event()
        self.largest_slow_queue = 0

    async def handler(self, request: duplex.Request) -> duplex.Response:
        opened = self.slow if request.path == "/slow" else self.fast

        def join(channel: duplex.Channel) -> None:
            self.group.add(channel)
            opened(channel)

        return duplex.channel(request, on_open=join)

    async def fast_reader(self, port: int, received: list[int]) -> None:
        async with await RawHTTP.connect(port) as client:
            await client.stream.send_all(request_bytes("/fast"))
            await client.read_head()
            try:
                while chunk := await client.read_chunk():
                    received.append(int(chunk[:8]))
                    self.progress.set()
                    self.progress = trio.Event()
            except ConnectionEnded:
                pass

    async def connect_slow(self, port: int) -> trio.SocketStream:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        await stream.send_all(request_bytes("/slow"))
        return stream

    async def broadcast(self, number: int) -> None:
        """Broadcast message ``number`` and wait until both fast members have it."""
        message = f"{number:08d}".encode() + b"x" * (MESSAGE_SIZE - 8)
        await self.group.broadcast(message)
        slow = self.slow.channels[0]
        self.largest_slow_queue = max(self.largest_slow_queue, slow.queued_messages)
        while any(len(received) <= number for received in self.fast_received):
            await self.progress.wait()


async def test_a_member_that_never_reads_does_not_delay_the_others() -> None:
    scenario = _SlowMemberScenario("drop-oldest")
    with trio.fail_after(20):
        async with serving(scenario.handler) as server, trio.open_nursery() as nursery:
            for received in scenario.fast_received:
                nursery.start_soon(scenario.fast_reader, server.port, received)
            slow_stream = await scenario.connect_slow(server.port)
            await scenario.fast.wait(2)
            slow = await scenario.slow.one()
            for number in range(200):
                await scenario.broadcast(number)
            assert scenario.fast_received == [list(range(200))] * 2
            # All along, the slow member was stuck with a full queue.
            assert slow.queued_messages == scenario.max_queue
            assert slow in scenario.group
            nursery.cancel_scope.cancel()
            await slow_stream.aclose()


async def test_a_member_that_never_reads_is_closed_as_too_slow_with_a_bounded_queue() -> None:
    scenario = _SlowMemberScenario("close")
    with trio.fail_after(20):
        async with serving(scenario.handler) as server, trio.open_nursery() as nursery:
            for received in scenario.fast_received:
                nursery.start_soon(scenario.fast_reader, server.port, received)
            slow_stream = await scenario.connect_slow(server.port)
            await scenario.fast.wait(2)
            slow = await scenario.slow.one()
            number = 0
            while slow.is_open and number < 2000:
                await scenario.broadcast(number)
                number += 1
            with trio.fail_after(1):
                status = await slow.wait_closed()
            assert slow not in scenario.group
            assert len(scenario.group) == 2
            nursery.cancel_scope.cancel()
            await slow_stream.aclose()
    assert status.kind == "too-slow"
    assert scenario.largest_slow_queue == scenario.max_queue


async def test_with_drop_oldest_a_member_that_never_reads_keeps_the_newest_max_queue() -> None:
    scenario = _SlowMemberScenario("drop-oldest")
    with trio.fail_after(20):
        async with serving(scenario.handler) as server, trio.open_nursery() as nursery:
            for received in scenario.fast_received:
                nursery.start_soon(scenario.fast_reader, server.port, received)
            slow_stream = await scenario.connect_slow(server.port)
            await scenario.fast.wait(2)
            slow = await scenario.slow.one()
            number = 0
            while slow.queued_messages < scenario.max_queue and number < 2000:
                await scenario.broadcast(number)
                number += 1
            for _ in range(20):
                await scenario.broadcast(number)
                number += 1
                assert slow.queued_messages == scenario.max_queue
            assert slow.is_open
            assert slow in scenario.group
            await slow.close()
            async with RawHTTP(slow_stream) as slow_client:
                await slow_client.read_head()
                body = await slow_client.read_body()
            nursery.cancel_scope.cancel()
    numbers = [int(body[start : start + 8]) for start in range(0, len(body), MESSAGE_SIZE)]
    assert numbers[-scenario.max_queue :] == list(range(number - scenario.max_queue, number))
    assert numbers == sorted(numbers)
    assert len(numbers) <= number - 20  # at least the 20 pushed out are gone
    assert scenario.largest_slow_queue == scenario.max_queue


async def test_a_broadcast_function_gets_each_member_and_its_attachment() -> None:
    group = duplex.ChannelGroup()
    opened = Opened()
    news = [(1, "old"), (5, "new"), (9, "newest")]

    async def handler(request: duplex.Request) -> duplex.Response:
        since = int(request.query.removeprefix("since="))

        def join(channel: duplex.Channel) -> None:
            group.add(channel, since)
            opened(channel)

        return duplex.channel(request, on_open=join)

    def since_ts(channel: duplex.Channel, since: int) -> str | None:
        newer = [{"ts": ts, "text": text} for ts, text in news if ts > since]
        return json.dumps(newer) if newer else None

    with trio.fail_after(5):
        async with serving(handler) as server:
            clients = [await RawHTTP.connect(server.port) for _ in range(3)]
            for client, since in zip(clients, (0, 5, 9), strict=True):
                await client.stream.send_all(request_bytes(f"/poll?since={since}"))
            channels = await opened.wait(3)
            assert await group.broadcast(since_ts, close=True) == 2
            replies = []
            for client in clients[:2]:
                await client.read_head()
                assert "content-length" in client.headers
                replies.append(json.loads(await client.read_body()))
            assert channels[2].is_open
            assert channels[2] in group
            for client in clients:
                await client.stream.aclose()
    assert [[item["text"] for item in reply] for reply in replies] == [
        ["old", "new", "newest"],
        ["newest"],
    ]


@pytest.mark.both_protocols
async def test_an_async_broadcast_function_works_too(protocol: str) -> None:
    group = duplex.ChannelGroup()
    opened = Opened()

    async def personal(channel: duplex.Channel, name: str) -> str:
        await trio.lowlevel.checkpoint()
        return f"hello, {name}"

    async def handler(request: duplex.Request) -> duplex.Response:
        def join(channel: duplex.Channel) -> None:
            group.add(channel, request.query)
            opened(channel)

        return duplex.channel(request, on_open=join)

    with trio.fail_after(5):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.start("/?ada")
            await opened.one()
            assert await group.broadcast(personal, close=True) == 1
            await client.read_head()
            assert await client.read_body() == b"hello, ada"


@pytest.mark.both_protocols
async def test_a_member_whose_client_leaves_leaves_the_group(protocol: str) -> None:
    group = duplex.ChannelGroup()
    opened = Opened()
    with trio.fail_after(5):
        async with serving(joining(group, opened)) as server:
            async with exchange(server.port, protocol) as client:
                await client.request("/", headers=SSE_HEADERS)
                channel = await opened.one()
                assert channel in group
            await channel.wait_closed()
    assert channel not in group
    assert len(group) == 0


@pytest.mark.both_protocols
async def test_a_member_closed_by_the_server_leaves_the_group(protocol: str) -> None:
    group = duplex.ChannelGroup()
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(joining(group, opened)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/", headers=SSE_HEADERS)
            channel = await opened.one()
            await channel.close()
            await channel.wait_closed()
            assert len(group) == 0
            assert await group.broadcast("nobody") == 0


BINARY = bytes(range(256))  # not UTF-8: no text decoding could carry it


@pytest.mark.parametrize("history", [0, 10], ids=["without-history", "with-history"])
@pytest.mark.both_protocols
async def test_a_binary_broadcast_reaches_http_and_websocket_members_byte_exact(
    history: int,
    protocol: str,
) -> None:
    group = duplex.ChannelGroup(history=history)
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(joining(group, opened)) as server,
            exchange(server.port, protocol) as http,
            trio.open_nursery() as nursery,
        ):
            await http.start()
            url = f"ws://127.0.0.1:{server.port}/"
            websocket = await trio_websocket.connect_websocket_url(nursery, url)
            await opened.wait(2)
            assert await group.broadcast(BINARY) == 2
            assert await group.broadcast("text") == 2
            await http.read_head()
            assert await http.read_chunk() == BINARY
            assert await http.read_chunk() == b"text"
            assert await websocket.get_message() == BINARY
            assert await websocket.get_message() == "text"
            await websocket.aclose()


@pytest.mark.both_protocols
async def test_with_history_an_sse_member_gets_a_binary_broadcast_as_an_event_with_its_id(
    protocol: str,
) -> None:
    group = duplex.ChannelGroup(history=10)
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(joining(group, opened)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/", headers=SSE_HEADERS)
            await opened.one()
            await group.broadcast("caf\u00e9".encode())
            assert await client.read_until(b"\n\n") == "id: 1\ndata: caf\u00e9\n\n".encode()
    assert [(event.id, event.data) for event in group.history] == [("1", "caf\u00e9")]


@pytest.mark.both_protocols
async def test_a_reconnecting_sse_client_gets_the_history_after_its_last_event_id(
    protocol: str,
) -> None:
    group = duplex.ChannelGroup(history=5)
    opened = Opened()
    for number in range(1, 8):
        await group.broadcast(f"event {number}")
    assert [event.id for event in group.history] == ["3", "4", "5", "6", "7"]
    with trio.fail_after(5):
        async with (
            serving(joining(group, opened)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/", headers=SSE_HEADERS + "Last-Event-ID: 5\r\n")
            await opened.one()
            await group.broadcast("event 8")
            data = await client.read_until(b"data: event 8\n\n")
    assert data == (b"id: 6\ndata: event 6\n\nid: 7\ndata: event 7\n\nid: 8\ndata: event 8\n\n")


@pytest.mark.both_protocols
async def test_a_last_event_id_older_than_the_history_replays_all_of_it(protocol: str) -> None:
    group = duplex.ChannelGroup(history=2)
    opened = Opened()
    for number in range(1, 5):
        await group.broadcast(f"event {number}")
    with trio.fail_after(5):
        async with (
            serving(joining(group, opened)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/", headers=SSE_HEADERS + "Last-Event-ID: 1\r\n")
            await opened.one()
            data = await client.read_until(b"data: event 4\n\n")
    assert data == b"id: 3\ndata: event 3\n\nid: 4\ndata: event 4\n\n"


@pytest.mark.both_protocols
async def test_a_replay_longer_than_max_queue_reaches_the_reconnecting_client(
    protocol: str,
) -> None:
    group = duplex.ChannelGroup(history=20, max_queue=4)
    opened = Opened()
    for number in range(1, 11):
        await group.broadcast(f"event {number}")
    with trio.fail_after(5):
        async with (
            serving(joining(group, opened)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/", headers=SSE_HEADERS + "Last-Event-ID: 2\r\n")
            channel = await opened.one()
            data = await client.read_until(b"data: event 10\n\n")
            assert channel.is_open
    assert data == b"".join(
        f"id: {number}\ndata: event {number}\n\n".encode() for number in range(3, 11)
    )
