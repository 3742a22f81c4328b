"""RedisChannelGroup: a broadcast reaches the members of every process, in publish order;
Redis going away makes broadcasts fail fast, and its return heals the group; an SSE
client that moves to another process resumes from the shared history.

Processes are ``duplex serve room:room`` servers on ports of their own, each with its
``RedisChannelGroup``: a subscriber's process is the one it connects to. Groups in this
test process, with clients of their own, stand in for processes where a test needs to
reach inside (a function broadcast, the history).
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TypeAlias
from uuid import uuid4

import pytest
import trio
import trio_websocket

import duplex
from _channel_support import RawHTTP, request_bytes
from _redis_support import (
    ROOM_APP,
    ROOT,
    DuplexProcess,
    RedisServer,
    Subscriber,
    duplex_process,
    http_post,
    redis_command,
    wait_subscribers,
)

#: Seconds a test may take: two process starts (about a second each) and no more.
TIMEOUT = 20.0
#: What a group in this process waits for Redis before a broadcast fails.
BROADCAST_TIMEOUT = 1.0


def start_redis() -> RedisServer:
    if not RedisServer.available():
        pytest.skip("redis-server is not on PATH")
    server = RedisServer()
    server.start()
    return server


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A Redis server the tests of this module share (each uses rooms of its own)."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis server for one test, which may stop it, pause it or restart it."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def room() -> str:
    """A room name no other test uses."""
    return f"room-{uuid4().hex}"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "room.py").write_text(ROOM_APP)
    return tmp_path


@asynccontextmanager
async def rooms(
    app_dir: Path, redis: RedisServer, room: str, *, history: int = 0
) -> AsyncIterator[list[DuplexProcess]]:
    """Two room servers, each a process of its own, started side by side."""
    env = {"REDIS_URL": redis.url, "ROOM": room, "HISTORY": str(history)}
    async with AsyncExitStack() as stack:
        processes = [
            await stack.enter_async_context(
                duplex_process(
                    ["serve", "room:room", "--port", "0"], cwd=app_dir, env=env, ready=False
                )
            )
            for _ in range(2)
        ]
        for process in processes:
            await process.serving()
        yield processes


@asynccontextmanager
async def subscribers(ports: list[int]) -> AsyncIterator[list[Subscriber]]:
    """One joined SSE subscriber per port in ``ports``."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Subscriber(port)) for port in ports]


async def say(process: DuplexProcess, text: str) -> int:
    """Broadcast ``text`` from ``process``; how many processes received it."""
    reply = await http_post(process.port, "/say", text.encode())
    assert reply.status == 200, reply
    return int(reply.body)


# -- across processes --------------------------------------------------------------------


async def test_a_broadcast_from_either_process_reaches_the_subscribers_of_both(
    redis: RedisServer, app_dir: Path, room: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            rooms(app_dir, redis, room) as (a, b),
            subscribers([a.port, a.port, b.port, b.port]) as everyone,
        ):
            assert await say(a, "from a") == 2
            assert [(await s.next()).data for s in everyone] == ["from a"] * 4
            assert await say(b, "from b") == 2
            assert [(await s.next()).data for s in everyone] == ["from b"] * 4


async def test_broadcasts_reach_every_subscriber_in_publish_order(
    redis: RedisServer, app_dir: Path, room: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            rooms(app_dir, redis, room) as (a, b),
            subscribers([a.port, a.port, b.port, b.port]) as everyone,
        ):
            for number in range(20):
                await say((a, b)[number % 2], str(number))
            for subscriber in everyone:
                assert await subscriber.data(20) == [str(number) for number in range(20)]


async def test_after_a_redis_restart_the_group_recovers_and_later_broadcasts_arrive(
    own_redis: RedisServer, app_dir: Path, room: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            rooms(app_dir, own_redis, room) as (a, b),
            subscribers([a.port, b.port]) as everyone,
        ):
            await say(a, "before")
            assert [(await s.next()).data for s in everyone] == ["before"] * 2
            own_redis.stop()
            own_redis.start()
            await wait_subscribers(own_redis.port, room, 2)
            assert await say(b, "after") == 2
            assert [(await s.next()).data for s in everyone] == ["after"] * 2


async def test_an_sse_client_moved_to_another_process_resumes_without_gap_or_repeat(
    redis: RedisServer, app_dir: Path, room: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with rooms(app_dir, redis, room, history=100) as (a, b):
            async with Subscriber(a.port) as on_a:
                for number in range(1, 6):
                    await say((a, b)[number % 2], str(number))
                seen = [await on_a.next() for _ in range(5)]
            assert [event.data for event in seen] == ["1", "2", "3", "4", "5"]
            for number in range(6, 9):  # while it is away
                await say((a, b)[number % 2], str(number))
            async with Subscriber(b.port, last_event_id=seen[-1].id) as on_b:
                for number in range(9, 11):  # as it catches up
                    await say((a, b)[number % 2], str(number))
                resumed = [await on_b.next() for _ in range(5)]
                assert [event.data for event in resumed] == ["6", "7", "8", "9", "10"]
                ids = [event.id for event in seen + resumed]
                assert None not in ids and len(set(ids)) == 10
                await say(a, "11")
                assert (await on_b.next()).data == "11"


# -- when Redis is away ------------------------------------------------------------------


@asynccontextmanager
async def group_in_this_process(
    redis: RedisServer, room: str
) -> AsyncIterator[duplex.RedisChannelGroup]:
    async with duplex.RedisChannelGroup(redis.url, room, timeout=BROADCAST_TIMEOUT) as group:
        yield group


async def test_a_broadcast_while_redis_is_down_raises_broadcast_error_within_its_timeout(
    own_redis: RedisServer, room: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with group_in_this_process(own_redis, room) as group:
            own_redis.stop()
            with trio.fail_after(BROADCAST_TIMEOUT + 0.5), pytest.raises(duplex.BroadcastError):
                await group.broadcast("lost")


async def test_a_broadcast_to_a_redis_that_does_not_answer_fails_within_its_timeout(
    own_redis: RedisServer, room: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with group_in_this_process(own_redis, room) as group:
            own_redis.pause()
            try:
                with (
                    trio.fail_after(BROADCAST_TIMEOUT + 0.5),
                    pytest.raises(duplex.BroadcastError, match="did not answer"),
                ):
                    await group.broadcast("lost")
            finally:
                own_redis.resume()
            assert await group.broadcast("heard") == 1


# -- groups in one process, each with its own client ---------------------------------------


class Members:
    """A server whose channels join a group picked by path: /one or /two."""

    def __init__(self, groups: dict[str, duplex.RedisChannelGroup]) -> None:
        self.groups = groups

    async def handler(self, request: duplex.Request) -> duplex.Response:
        name = request.path.strip("/")

        def join(channel: duplex.Channel) -> None:
            self.groups[name].add(channel, name)
            channel.offer(duplex.sse.Event("joined", event="joined"))

        return duplex.channel(request, on_open=join)


Groups: TypeAlias = tuple[duplex.RedisChannelGroup, duplex.RedisChannelGroup, int]


@asynccontextmanager
async def two_groups(
    redis: RedisServer, room: str, histories: tuple[int, int] = (0, 0)
) -> AsyncIterator[Groups]:
    """Two groups on one room, as two processes would hold them, and the port of a
    server whose channels join the first on /one, the second on /two."""
    url, timeout = redis.url, BROADCAST_TIMEOUT
    async with (
        duplex.RedisChannelGroup(url, room, history=histories[0], timeout=timeout) as one,
        duplex.RedisChannelGroup(url, room, history=histories[1], timeout=timeout) as two,
        trio.open_nursery() as nursery,
    ):
        members = Members({"one": one, "two": two})
        server = await nursery.start(partial(duplex.serve, members.handler, "127.0.0.1", 0))
        yield one, two, server.port
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def members_of_both(port: int) -> AsyncIterator[tuple[Subscriber, Subscriber]]:
    async with Subscriber(port, "/one") as one, Subscriber(port, "/two") as two:
        yield one, two


async def test_a_function_broadcast_reaches_local_members_only(
    redis: RedisServer, room: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with two_groups(redis, room) as (one, _, port), members_of_both(port) as members:
            local, remote = members
            assert await one.broadcast(lambda channel, name: f"only for {name}") == 1
            await one.broadcast("everyone")
            assert await local.data(2) == ["only for one", "everyone"]
            # Had the function's message travelled, it would have come first.
            assert await remote.data(1) == ["everyone"]


async def test_a_broadcast_with_close_closes_the_members_of_every_group_after_the_message(
    redis: RedisServer, room: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with two_groups(redis, room) as (one, _, port), members_of_both(port) as members:
            await one.broadcast("bye", close=True)
            for subscriber in members:
                assert await subscriber.data(1) == ["bye"]
                await subscriber.wait_ended()


async def test_history_keeps_the_last_n_broadcasts(redis: RedisServer, room: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with two_groups(redis, room, (3, 3)) as (one, two, port):
            async with Subscriber(port, "/one") as early:
                for number in range(10):
                    await one.broadcast(str(number))
                events = [await early.next() for _ in range(10)]
            async with Subscriber(port, "/two", last_event_id=events[0].id) as late:
                assert [await late.next() for _ in range(3)] == events[-3:]
                await two.broadcast("live")
                assert await late.data(1) == ["live"]


@pytest.mark.parametrize("history", [0, 5], ids=["without-history", "with-history"])
async def test_a_binary_broadcast_reaches_websocket_and_http_members_byte_exact(
    redis: RedisServer, room: str, history: int
) -> None:
    payload = bytes(range(256))  # not UTF-8: no text decoding could carry it
    with trio.fail_after(TIMEOUT):
        async with (
            two_groups(redis, room, (history, history)) as (one, _, port),
            trio.open_nursery() as nursery,
        ):
            url = f"ws://127.0.0.1:{port}/two"
            websocket = await trio_websocket.connect_websocket_url(nursery, url)
            assert await websocket.get_message() == "joined"
            async with await RawHTTP.connect(port) as http:
                await http.stream.send_all(request_bytes("/two"))
                await http.read_head()
                assert await http.read_chunk() == b"joined"
                await one.broadcast(payload)
                await one.broadcast("text")
                assert await http.read_chunk() == payload
                assert await http.read_chunk() == b"text"
            assert await websocket.get_message() == payload
            assert await websocket.get_message() == "text"
            await websocket.aclose()
            nursery.cancel_scope.cancel()


async def test_a_reconnecting_sse_client_is_replayed_binary_broadcasts_with_their_ids(
    redis: RedisServer, room: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with two_groups(redis, room, (5, 5)) as (one, _, port):
            async with Subscriber(port, "/one") as early:
                await one.broadcast("first")
                first = await early.next()
            await one.broadcast(b"second")
            await one.broadcast("third")
            async with Subscriber(port, "/two", last_event_id=first.id) as late:
                replayed = [await late.next() for _ in range(2)]
    assert [event.data for event in replayed] == ["second", "third"]
    assert None not in [event.id for event in replayed]


async def test_groups_with_and_without_history_on_one_room_hear_each_other(
    redis: RedisServer, room: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            two_groups(redis, room, (5, 0)) as (one, two, port),
            members_of_both(port) as members,
        ):
            await one.broadcast("with history")
            await two.broadcast("without")
            for subscriber in members:
                assert await subscriber.data(2) == ["with history", "without"]


async def test_a_message_that_is_not_a_broadcast_is_skipped_and_later_broadcasts_arrive(
    redis: RedisServer, room: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with two_groups(redis, room) as (one, _, port), members_of_both(port) as members:
            await redis_command(redis.port, "PUBLISH", f"duplex:group:{room}", "not a broadcast")
            await one.broadcast("after")
            for subscriber in members:
                assert await subscriber.data(1) == ["after"]


# -- the guide ---------------------------------------------------------------------------


async def test_the_scaling_guide_example_runs_and_prints_what_its_guide_shows() -> None:
    if not RedisServer.available():
        pytest.skip("redis-server is not on PATH")
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "guides/scaling.py"],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
        )
    said, received = result.stdout.decode().splitlines()
    assert said == "said to one worker: sent to 2 workers"
    # The kernel picks a worker per connection: all eight may land on one (1 in 128).
    assert re.fullmatch(r"8 subscribers on [12] workers received \{'hello, all'\}", received)
