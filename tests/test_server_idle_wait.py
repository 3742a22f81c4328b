"""Between requests a kept-alive connection waits under its own cancel scope, with the
keep-alive deadline set only for as long as it waits: the exchange that follows runs
with no deadline of the wait's, however long it takes."""

from __future__ import annotations

import trio

import duplex
from _server_support import RawClient, request_bytes, serving

KEEP_ALIVE = 0.2


async def slow(request: duplex.Request) -> duplex.Response:
    if request.target == "/slow":
        await trio.sleep(3 * KEEP_ALIVE)
    return duplex.Response(200, body=request.target)


async def test_a_request_slower_than_keep_alive_timeout_is_answered_after_a_wait() -> None:
    limits = duplex.Limits(keep_alive_timeout=KEEP_ALIVE)
    with trio.fail_after(10):
        async with (
            serving(slow, limits=limits) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes("/first"))
            first = await client.read_response()
            await trio.sleep(KEEP_ALIVE / 2)  # the connection waits for the next one
            await client.send(request_bytes("/slow"))
            second = await client.read_response()
            await client.send(request_bytes("/third"))
            third = await client.read_response()
    assert [first.body, second.body, third.body] == [b"/first", b"/slow", b"/third"]


async def test_a_kept_alive_connection_still_closes_once_idle_past_keep_alive_timeout() -> None:
    limits = duplex.Limits(keep_alive_timeout=KEEP_ALIVE)
    with trio.fail_after(10):
        async with (
            serving(slow, limits=limits) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes("/slow"))
            assert (await client.read_response()).body == b"/slow"
            idle_since = trio.current_time()
            await client.expect_closed()
            assert trio.current_time() - idle_since >= KEEP_ALIVE
