"""The keep-alive pool: a connection is reused only after an exchange that finished
cleanly; anything else (a body left unread, an error, a cancellation) closes it, and the
pool stays healthy for the next request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

import duplex
from _client_support import TIMEOUT, FakeServer, read_head, start_duplex, url

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Peers:
    """A duplex handler that answers ``ok`` and remembers each client port it served."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    @property
    def connections(self) -> int:
        return len(set(self.ports))

    async def handler(self, request: duplex.Request) -> duplex.Response:
        assert request.client is not None
        self.ports.append(request.client[1])
        return duplex.Response(200, body=b"ok")


async def forever(request: duplex.Request) -> duplex.Response:
    """A body that never ends: one chunk, then nothing more."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        await trio.sleep_forever()

    return duplex.Response(200, body=chunks())


async def test_sequential_requests_reuse_one_connection(nursery: trio.Nursery) -> None:
    peers = Peers()
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, peers.handler)
        async with duplex.Client() as client:
            for _ in range(3):
                assert await (await client.get(url(server))).read() == b"ok"
                assert client.pool.open_connections() == 1
                assert client.pool.idle_connections() == 1
        assert len(peers.ports) == 3
        assert peers.connections == 1


async def test_a_response_closed_before_its_end_closes_its_connection(
    nursery: trio.Nursery,
) -> None:
    peers = Peers()

    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/forever":
            return await forever(request)
        return await peers.handler(request)

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, handler)
        async with duplex.Client() as client:
            assert await (await client.get(url(server))).read() == b"ok"
            response = await client.get(url(server, "/forever"))
            assert await response.body.read() == b"first"
            await response.aclose()
            assert client.pool.open_connections() == 0
            assert await (await client.get(url(server))).read() == b"ok"
            assert client.pool.open_connections() == 1
        assert peers.connections == 2


async def test_a_response_broken_mid_body_closes_its_connection(nursery: trio.Nursery) -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("the handler failed mid-body")

        if request.path == "/broken":
            return duplex.Response(200, body=chunks())
        return duplex.Response(200, body=b"ok")

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, handler)
        async with duplex.Client() as client:
            response = await client.get(url(server, "/broken"))
            with pytest.raises(duplex.ProtocolError):
                await response.read()
            assert client.pool.open_connections() == 0
            assert await (await client.get(url(server))).read() == b"ok"
            assert client.pool.open_connections() == 1


@pytest.fixture
def first_connect_hangs(monkeypatch: pytest.MonkeyPatch) -> trio.Event:
    """Make the next ``trio.open_tcp_stream`` hang; the event is set once it does."""
    connecting = trio.Event()
    real_open_tcp_stream = trio.open_tcp_stream

    async def hang_once(*args: Any, **kwargs: Any) -> trio.SocketStream:
        if not connecting.is_set():
            connecting.set()
            await trio.sleep_forever()
        return await real_open_tcp_stream(*args, **kwargs)

    monkeypatch.setattr(trio, "open_tcp_stream", hang_once)
    return connecting


async def test_a_request_cancelled_while_connecting_leaves_no_connection(
    nursery: trio.Nursery, first_connect_hangs: trio.Event
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, Peers().handler)
        async with duplex.Client() as client:
            async with trio.open_nursery() as requests:
                requests.start_soon(client.get, url(server))
                await first_connect_hangs.wait()
                assert client.pool.open_connections() == 1
                requests.cancel_scope.cancel()
            assert client.pool.open_connections() == 0


async def test_the_pool_serves_the_next_request_after_a_cancelled_connect(
    nursery: trio.Nursery, first_connect_hangs: trio.Event
) -> None:
    limits = duplex.ClientLimits(max_connections_per_origin=1, pool_timeout=1.0)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, Peers().handler)
        async with duplex.Client(limits=limits) as client:
            async with trio.open_nursery() as requests:
                requests.start_soon(client.get, url(server))
                await first_connect_hangs.wait()
                requests.cancel_scope.cancel()
            assert await (await client.get(url(server))).read() == b"ok"
            assert client.pool.open_connections() == 1


async def test_a_request_cancelled_while_waiting_for_the_head_closes_its_connection(
    nursery: trio.Nursery,
) -> None:
    peers = Peers()
    arrived = trio.Event()
    gone = trio.Event()

    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path != "/slow":
            return await peers.handler(request)
        arrived.set()
        try:
            await trio.sleep_forever()
        finally:
            gone.set()

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, handler)
        async with duplex.Client() as client:
            async with trio.open_nursery() as requests:
                requests.start_soon(client.get, url(server, "/slow"))
                await arrived.wait()
                requests.cancel_scope.cancel()
            assert client.pool.open_connections() == 0
            await gone.wait()  # the server saw the connection close
            assert await (await client.get(url(server))).read() == b"ok"
            assert client.pool.open_connections() == 1


async def test_a_request_cancelled_mid_body_closes_its_connection(
    nursery: trio.Nursery,
) -> None:
    peers = Peers()

    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/forever":
            return await forever(request)
        return await peers.handler(request)

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, handler)
        async with duplex.Client() as client:
            with trio.CancelScope() as scope:
                async with await client.get(url(server, "/forever")) as response:
                    assert await response.body.read() == b"first"

                    async def cancel_once_blocked() -> None:
                        await trio.testing.wait_all_tasks_blocked()
                        scope.cancel()

                    nursery.start_soon(cancel_once_blocked)
                    await response.body.read()
            assert scope.cancelled_caught
            assert client.pool.open_connections() == 0
            assert await (await client.get(url(server))).read() == b"ok"
            assert client.pool.open_connections() == 1
        assert peers.connections == 1


async def test_a_cancelled_body_read_loses_nothing(nursery: trio.Nursery) -> None:
    output = duplex.Writable()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=output)

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, handler)
        async with duplex.Client() as client:
            response = await client.get(url(server))
            with trio.CancelScope() as scope:
                nursery.start_soon(_cancel_once_blocked, scope)
                await response.body.read()
            assert scope.cancelled_caught
            await output.write(b"after the cancel")
            await output.close_write()
            assert await response.read() == b"after the cancel"
            assert client.pool.idle_connections() == 1


async def _cancel_once_blocked(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()


class Pending:
    """A request running in the background."""

    def __init__(self) -> None:
        self.response: duplex.ClientResponse | None = None
        self.done = trio.Event()

    @property
    def blocked(self) -> bool:
        return not self.done.is_set()

    async def wait(self) -> duplex.ClientResponse:
        await self.done.wait()
        assert self.response is not None
        return self.response


async def waiting_request(nursery: trio.Nursery, client: duplex.Client, address: str) -> Pending:
    """Start a GET in ``nursery``; return once every task is blocked."""
    pending = Pending()

    async def request() -> None:
        pending.response = await client.get(address)
        pending.done.set()

    nursery.start_soon(request)
    await trio.testing.wait_all_tasks_blocked()
    return pending


async def test_a_request_waits_for_a_free_connection_at_the_per_origin_maximum(
    nursery: trio.Nursery,
) -> None:
    peers = Peers()
    limits = duplex.ClientLimits(max_connections_per_origin=1)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, peers.handler)
        async with duplex.Client(limits=limits) as client:
            first = await client.get(url(server))
            second = await waiting_request(nursery, client, url(server))
            assert second.blocked
            assert await first.read() == b"ok"
            assert await (await second.wait()).read() == b"ok"
        assert peers.connections == 1


async def test_a_request_waiting_for_a_free_connection_gets_one_when_a_response_is_closed(
    nursery: trio.Nursery,
) -> None:
    limits = duplex.ClientLimits(max_connections_per_origin=1)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, forever)
        async with duplex.Client(limits=limits) as client:
            first = await client.get(url(server))
            second = await waiting_request(nursery, client, url(server))
            assert second.blocked
            await first.aclose()
            async with await second.wait() as response:
                assert await response.body.read() == b"first"


async def test_concurrent_requests_share_the_connections_the_limit_allows(
    nursery: trio.Nursery,
) -> None:
    peers = Peers()
    limits = duplex.ClientLimits(max_connections_per_origin=2)
    bodies: list[bytes] = []
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, peers.handler)
        async with duplex.Client(limits=limits) as client:

            async def request() -> None:
                bodies.append(await (await client.get(url(server))).read())

            async with trio.open_nursery() as requests:
                for _ in range(10):
                    requests.start_soon(request)
            assert client.pool.open_connections() == 2
        assert bodies == [b"ok"] * 10
        assert peers.connections == 2


async def test_idle_connections_beyond_the_maximum_are_closed(nursery: trio.Nursery) -> None:
    limits = duplex.ClientLimits(max_idle_connections=1)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, Peers().handler)
        async with duplex.Client(limits=limits) as client:
            first = await client.get(url(server))
            second = await client.get(url(server))
            assert client.pool.open_connections() == 2
            assert await first.read() == b"ok"
            assert await second.read() == b"ok"
            assert client.pool.idle_connections() == 1
            assert client.pool.open_connections() == 1


async def test_an_idle_connection_past_its_expiry_is_not_reused(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.rate = 1.0  # real time flows; jump() adds to it
    peers = Peers()
    limits = duplex.ClientLimits(idle_expiry=1.0)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, peers.handler)
        async with duplex.Client(limits=limits) as client:
            assert await (await client.get(url(server))).read() == b"ok"
            mock_clock.jump(1.5)
            assert await (await client.get(url(server))).read() == b"ok"
            assert client.pool.open_connections() == 1
        assert peers.connections == 2


async def test_an_idle_connection_within_its_expiry_is_reused(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.rate = 1.0
    peers = Peers()
    limits = duplex.ClientLimits(idle_expiry=2.0)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, peers.handler)
        async with duplex.Client(limits=limits) as client:
            assert await (await client.get(url(server))).read() == b"ok"
            mock_clock.jump(1.0)
            assert await (await client.get(url(server))).read() == b"ok"
        assert peers.connections == 1


async def test_a_kept_alive_connection_the_server_closed_is_not_reused(
    nursery: trio.Nursery,
) -> None:
    closed = trio.Event()

    async def respond_once_then_close(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(OK)
        await stream.aclose()
        closed.set()

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, respond_once_then_close)
        async with duplex.Client() as client:
            assert await (await client.get(server.url)).read() == b"ok"
            await closed.wait()
            assert await (await client.get(server.url)).read() == b"ok"
            assert client.pool.open_connections() == 1
        assert server.connections == 2


async def hang_up_on_the_second_request(stream: trio.SocketStream) -> None:
    """Answer one request, then close without answering the next one."""
    await read_head(stream)
    await stream.send_all(OK)
    await read_head(stream)


async def test_a_request_the_server_hung_up_on_is_retried_on_a_new_connection(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, hang_up_on_the_second_request)
        async with duplex.Client() as client:
            assert await (await client.get(server.url)).read() == b"ok"
            assert await (await client.get(server.url)).read() == b"ok"
        assert server.connections == 2


async def test_a_streamed_request_the_server_hung_up_on_is_not_retried(
    nursery: trio.Nursery,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"cannot be sent twice"

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, hang_up_on_the_second_request)
        async with duplex.Client() as client:
            assert await (await client.get(server.url)).read() == b"ok"
            with pytest.raises(duplex.ProtocolError):
                await client.post(server.url, body=chunks())
            assert client.pool.open_connections() == 0
        assert server.connections == 1


async def test_unsolicited_bytes_after_a_response_keep_its_connection_from_reuse(
    nursery: trio.Nursery,
) -> None:
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"

    async def respond_twice(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(OK + smuggled)
        while await read_head(stream):
            await stream.send_all(OK)

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, respond_twice)
        async with duplex.Client() as client:
            assert await (await client.get(server.url)).read() == b"ok"
            assert await (await client.get(server.url)).read() == b"ok"


async def test_leaving_the_client_closes_connections_still_in_use(nursery: trio.Nursery) -> None:
    closed = trio.Event()

    async def respond_then_wait_for_close(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        while await stream.receive_some(65536):
            pass
        closed.set()

    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, respond_then_wait_for_close)
        async with duplex.Client() as client:
            response = await client.get(server.url)
            assert await response.body.read() == b"half"
        await closed.wait()
        assert client.pool.open_connections() == 0


async def test_a_request_cancelled_before_it_starts_leaves_its_idle_connection_pooled(
    nursery: trio.Nursery,
) -> None:
    peers = Peers()
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, peers.handler)
        async with duplex.Client() as client:
            assert await (await client.get(url(server))).read() == b"ok"
            for _ in range(3):
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await client.get(url(server))
                assert scope.cancelled_caught
                # Nothing busy: the connection is idle again or closed, never lost.
                assert client.pool.open_connections() == client.pool.idle_connections()
            assert await (await client.get(url(server))).read() == b"ok"
            assert client.pool.open_connections() == client.pool.idle_connections() == 1


# -- a connection is never held by a response nobody reads -----------------------------

ONE_CONNECTION = duplex.ClientLimits(max_connections_per_origin=1, pool_timeout=TIMEOUT / 4)
"""A pool whose only connection must come back for the next request to go out."""


async def test_a_response_dropped_after_a_cancelled_read_frees_its_connection(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, forever)
        async with duplex.Client(limits=ONE_CONNECTION) as client:
            response = await client.get(url(server))
            assert await response.body.read() == b"first"
            with trio.CancelScope() as scope:
                nursery.start_soon(_cancel_once_blocked, scope)
                await response.body.read()
            assert scope.cancelled_caught
            del response
            async with await client.get(url(server)) as second:
                assert await second.body.read() == b"first"


async def test_a_response_dropped_unread_frees_its_connection(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, forever)
        async with duplex.Client(limits=ONE_CONNECTION) as client:
            await client.get(url(server))  # the response is dropped at once
            async with await client.get(url(server)) as second:
                assert await second.body.read() == b"first"


async def test_a_body_closed_after_a_cancelled_read_frees_its_connection(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, forever)
        async with duplex.Client(limits=ONE_CONNECTION) as client:
            response = await client.get(url(server))
            with trio.CancelScope() as scope:
                scope.cancel()
                await response.read()
            await response.body.aclose()
            assert client.pool.open_connections() == 0


async def bodiless(request: duplex.Request) -> duplex.Response:
    """``/204`` and ``/304`` answer that status; anything else an empty 200 (to HEAD,
    with the Content-Length a GET would get)."""
    if request.path in ("/204", "/304"):
        return duplex.Response(int(request.path[1:]))
    if request.method == "HEAD":
        return duplex.Response(200, {"content-length": "1234"})
    return duplex.Response(200, body=b"")


@pytest.mark.parametrize(
    ("method", "path"),
    [("HEAD", "/"), ("GET", "/204"), ("GET", "/304"), ("GET", "/content-length-0")],
    ids=["head", "204", "304", "content-length-0"],
)
async def test_a_response_without_a_body_frees_its_connection_unread(
    nursery: trio.Nursery, method: str, path: str
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, bodiless)
        async with duplex.Client(limits=ONE_CONNECTION) as client:
            responses = [await client.request(method, url(server, path)) for _ in range(3)]
            assert client.pool.open_connections() == client.pool.idle_connections() == 1
            assert [response.body.is_empty for response in responses] == [True] * 3
            assert [await response.read() for response in responses] == [b""] * 3


async def test_the_101st_unread_head_request_goes_out_at_once(nursery: trio.Nursery) -> None:
    limits = duplex.ClientLimits(pool_timeout=TIMEOUT / 4)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, bodiless)
        async with duplex.Client(limits=limits) as client:
            for _ in range(101):
                await client.head(url(server))
            assert client.pool.open_connections() == 1


async def test_a_body_of_known_length_read_whole_frees_its_connection_before_its_end_is_read(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, Peers().handler)
        async with duplex.Client(limits=ONE_CONNECTION) as client:
            response = await client.get(url(server))
            assert await response.body.read() == b"ok"
            assert client.pool.idle_connections() == 1
            assert await (await client.get(url(server))).read() == b"ok"
            assert await response.body.read() == b""


async def test_a_cancelled_body_read_frees_its_pool_slot_and_loses_nothing(
    nursery: trio.Nursery,
) -> None:
    output = duplex.Writable()

    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/held":
            return duplex.Response(200, body=output)
        return duplex.Response(200, body=b"ok")

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, handler)
        async with duplex.Client(limits=ONE_CONNECTION) as client:
            held = await client.get(url(server, "/held"))
            with trio.CancelScope() as scope:
                nursery.start_soon(_cancel_once_blocked, scope)
                await held.body.read()
            assert scope.cancelled_caught
            assert client.pool.open_connections() == 0
            assert await (await client.get(url(server))).read() == b"ok"
            await output.write(b"after the cancel")
            await output.close_write()
            assert await held.read() == b"after the cancel"
            assert client.pool.open_connections() == 1  # the pool was full: it closed
