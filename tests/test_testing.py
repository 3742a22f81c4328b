"""duplex.testing: the in-memory TestClient and the hypothesis strategies."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import duplex
from _channel_support import CloseRecorder, Opened
from duplex.testing import (
    BASE_URL,
    Cancellation,
    TestClient,
    cancellations,
    chunkings,
    memory_stream_pair,
)
from helpers import TIMEOUT

# Each test runs over HTTP/1.1 and over HTTP/2 (h2c), unless it says otherwise.
pytestmark = pytest.mark.both_protocols


async def hello(request: duplex.Request) -> duplex.Response:
    return duplex.Response(200, body=f"hello {request.method} {request.target}")


async def echo(request: duplex.Request) -> duplex.Response:
    async def copy(stream: duplex.Stream) -> None:
        while chunk := await stream.readpartial(1024):
            await stream.write(chunk)
        await stream.close_write()

    return duplex.Response(200, body=duplex.Streamable(copy))


# -- reaching the handler ----------------------------------------------------------------


async def test_a_relative_url_reaches_the_handler() -> None:
    with trio.fail_after(TIMEOUT):
        async with TestClient(hello) as client:
            response = await client.get("/hello?x=1")
            assert response.status == 200
            assert await response.read() == b"hello GET /hello?x=1"


async def test_an_absolute_url_reaches_the_handler_whatever_its_host() -> None:
    with trio.fail_after(TIMEOUT):
        async with TestClient(hello) as client:
            for url in ("http://example.org/a", "https://other.test:8443/b", f"{BASE_URL}/c"):
                response = await client.post(url, body=b"ignored")
                assert await response.read() == f"hello POST /{url[-1]}".encode()


async def test_the_client_is_a_duplex_client_whose_requests_carry_headers() -> None:
    async def headers(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=request.headers.get("x-token", "none"))

    with trio.fail_after(TIMEOUT):
        async with TestClient(headers, headers={"x-token": "secret"}) as client:
            assert isinstance(client, duplex.Client)
            assert await (await client.get("/")).read() == b"secret"


@pytest.mark.both_protocols(False)
async def test_no_socket_is_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[tuple[Any, ...]] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise AssertionError("duplex.testing opened a socket")

    with trio.fail_after(TIMEOUT):
        monkeypatch.setattr(socket, "socket", refuse)
        monkeypatch.setattr(trio.socket, "socket", refuse)
        monkeypatch.setattr(trio.socket, "socketpair", refuse)
        async with TestClient(echo) as client, TestClient(hello, http2="prior-knowledge") as h2:
            response = await client.post("/", body=b"x" * 200_000)
            assert await response.read() == b"x" * 200_000
            assert await (await h2.get("/")).read() == b"hello GET /"
    assert attempts == []


# -- full duplex and channels ------------------------------------------------------------


async def test_the_echo_of_a_chunk_arrives_before_the_next_chunk_is_written() -> None:
    with trio.fail_after(TIMEOUT):
        async with TestClient(echo) as client:
            output = duplex.Writable()
            response = await client.post("/", body=output)
            stream = duplex.Stream(response.body, output)
            for chunk in (b"Hello, ", b"World", b"!"):
                await stream.write(chunk)
                assert await stream.read_exactly(len(chunk)) == chunk
            await stream.close_write()
            assert await stream.read() == b""


async def test_the_readmes_echo_conversation_runs_as_it_does_over_a_socket() -> None:
    async def readme_echo(request: duplex.Request) -> duplex.Response:
        async def copy(stream: duplex.Stream) -> None:
            while chunk := await stream.readpartial(1024):
                await stream.write(chunk)

        return duplex.Response(200, body=duplex.Streamable(copy))

    with trio.fail_after(TIMEOUT):
        async with TestClient(readme_echo) as client:
            output = duplex.Writable()
            response = await client.post("/", body=output)
            stream = duplex.Stream(response.body, output)
            await stream.write(b"Hello, ")
            assert await stream.readpartial() == b"Hello, "
            await stream.write(b"World!")
            await stream.close_write()
            assert await stream.read() == b"World!"


async def test_a_chunked_channel_sends_messages_as_they_come() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        async def on_open(channel: duplex.Channel) -> None:
            for word in (b"one", b"two", b"three"):
                await channel.send(word)
            await channel.close()

        return duplex.channel(request, on_open=on_open)

    with trio.fail_after(TIMEOUT):
        async with TestClient(handler) as client:
            response = await client.get("/")
            assert response.status == 200
            assert await response.read() == b"onetwothree"


async def test_a_long_poll_channel_answers_with_its_one_message() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        async def on_open(channel: duplex.Channel) -> None:
            await channel.send(b"news", close=True)

        return duplex.channel(request, on_open=on_open)

    with trio.fail_after(TIMEOUT):
        async with TestClient(handler) as client:
            response = await client.get("/poll")
            assert response.body.length == 4
            assert await response.read() == b"news"


async def test_an_sse_channel_sends_events() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        async def on_open(channel: duplex.Channel) -> None:
            for n in range(3):
                await channel.send(duplex.sse.Event(f"update {n}", id=str(n)))
            await channel.close()

        return duplex.channel(request, on_open=on_open)

    with trio.fail_after(TIMEOUT):
        async with TestClient(handler) as client:
            received = []
            async for event in duplex.sse.events(client, "/events", max_reconnects=0):
                received.append((event.id, event.data))
    assert received == [("0", "update 0"), ("1", "update 1"), ("2", "update 2")]


async def test_a_channel_receives_what_the_client_streams() -> None:
    received = bytearray()
    all_received = trio.Event()

    async def handler(request: duplex.Request) -> duplex.Response:
        def on_receive(channel: duplex.Channel, message: bytes | str) -> None:
            received.extend(message if isinstance(message, bytes) else message.encode())
            if received == b"abc":
                all_received.set()

        return duplex.channel(request, on_receive=on_receive)

    with trio.fail_after(TIMEOUT):
        async with TestClient(handler) as client:
            output = duplex.Writable()
            response = await client.post("/", body=output)
            for chunk in (b"a", b"b", b"c"):
                await output.write(chunk)
            await all_received.wait()
            await output.close_write()
            await response.aclose()


async def test_a_channel_hears_the_client_leave() -> None:
    closed = CloseRecorder()
    opened = Opened()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened, on_close=closed)

    with trio.fail_after(TIMEOUT):
        async with TestClient(handler) as client:
            response = await client.get("/events", headers={"accept": "text/event-stream"})
            await opened.one()
            await response.aclose()
            await closed.called.wait()
    assert [status.kind for status in closed.statuses] == ["gone"]


async def test_a_websocket_channel_echoes_what_the_client_sends() -> None:
    closed = CloseRecorder()

    async def handler(request: duplex.Request) -> duplex.Response:
        async def on_receive(channel: duplex.Channel, message: bytes | str) -> None:
            await channel.send(message)

        return duplex.channel(request, on_receive=on_receive, on_close=closed)

    with trio.fail_after(TIMEOUT):
        async with TestClient(handler) as client:
            async with client.websocket("/ws") as ws:
                await ws.send("hello")
                assert await ws.receive() == "hello"
                await ws.send(b"\x00\x01")
                assert await ws.receive() == b"\x00\x01"
            await closed.called.wait()
    assert [(status.kind, status.code) for status in closed.statuses] == [("client", 1000)]


# -- the server's rules hold -------------------------------------------------------------


async def test_many_requests_at_once_each_get_their_answer() -> None:
    answers: dict[int, bytes] = {}

    async def ask(client: duplex.Client, n: int) -> None:
        response = await client.post(f"/{n}", body=str(n).encode() * 1000)
        answers[n] = await response.read()

    with trio.fail_after(TIMEOUT * 3):
        async with TestClient(echo) as client, trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(ask, client, n)
    assert answers == {n: str(n).encode() * 1000 for n in range(50)}


@pytest.mark.both_protocols(False)
async def test_connections_are_kept_alive_between_requests() -> None:
    with trio.fail_after(TIMEOUT):
        test_client = TestClient(hello)
        async with test_client as client:
            for _ in range(5):
                await (await client.get("/")).read()
    assert test_client.connections_opened == 1


@pytest.mark.both_protocols(False)
async def test_the_clients_limits_hold_too() -> None:
    async def ask(client: duplex.Client) -> None:
        await (await client.get("/")).read()

    with trio.fail_after(TIMEOUT):
        limits = duplex.ClientLimits(max_connections_per_origin=1)
        test_client = TestClient(hello, client_limits=limits)
        async with test_client as client, trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(ask, client)
    assert test_client.connections_opened == 1


async def test_a_body_over_the_limit_is_refused_with_413() -> None:
    async def upload(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=b"%d" % len(await request.body.join()))

    with trio.fail_after(TIMEOUT):
        async with TestClient(upload, limits=duplex.Limits(max_body_size=1000)) as client:
            assert await (await client.post("/", body=b"x" * 1000)).read() == b"1000"
            response = await client.post("/", body=b"x" * 1001)
            assert response.status == 413


@pytest.mark.both_protocols(False)
async def test_a_head_over_the_limit_is_refused_with_431() -> None:
    with trio.fail_after(TIMEOUT):
        async with TestClient(hello, limits=duplex.Limits(max_header_size=1024)) as client:
            response = await client.get("/", headers={"x-big": "y" * 2000})
            assert response.status == 431


async def test_a_handler_that_raises_gives_500_and_the_next_request_is_served() -> None:
    async def broken(request: duplex.Request) -> duplex.Response:
        if request.path == "/boom":
            raise RuntimeError("boom")
        return duplex.Response(200, body=b"fine")

    with trio.fail_after(TIMEOUT):
        async with TestClient(broken) as client:
            assert (await client.get("/boom")).status == 500
            assert await (await client.get("/ok")).read() == b"fine"


async def test_a_response_the_client_gives_up_on_ends_the_exchange() -> None:
    ended = trio.Event()

    async def endless(request: duplex.Request) -> duplex.Response:
        async def forever(stream: duplex.Stream) -> None:
            try:
                while True:
                    await stream.write(b"x" * 1024)
            finally:
                ended.set()

        return duplex.Response(200, body=duplex.Streamable(forever))

    with trio.fail_after(TIMEOUT):
        async with TestClient(endless) as client:
            response = await client.get("/")
            assert await response.body.read()
            await response.aclose()
            await ended.wait()


async def test_a_handler_writing_to_a_client_that_does_not_read_waits() -> None:
    written = 0

    async def endless(request: duplex.Request) -> duplex.Response:
        async def forever(stream: duplex.Stream) -> None:
            nonlocal written
            while True:
                await stream.write(b"x" * 1024)
                written += 1024

        return duplex.Response(200, body=duplex.Streamable(forever))

    with trio.fail_after(TIMEOUT):
        async with TestClient(endless, max_buffer_size=4096) as client:
            response = await client.get("/")
            assert await response.body.read()
            await trio.testing.wait_all_tasks_blocked()
            # The pipe, the response's own buffer and the client's read: no more.
            assert written < 200_000


# -- lifespan and shutdown ---------------------------------------------------------------


async def test_a_handler_that_is_an_async_context_manager_is_entered_around_serving() -> None:
    class App:
        def __init__(self) -> None:
            self.events: list[str] = []

        async def __aenter__(self) -> App:
            self.events.append("enter")
            return self

        async def __aexit__(self, *exc_info: object) -> None:
            self.events.append("exit")

        async def __call__(self, request: duplex.Request) -> duplex.Response:
            self.events.append("request")
            return duplex.Response(200)

    app = App()
    with trio.fail_after(TIMEOUT):
        async with TestClient(app) as client:
            assert (await client.get("/")).status == 200
    assert app.events == ["enter", "request", "exit"]


async def test_a_lifespan_that_fails_to_start_raises_and_serves_nothing() -> None:
    @asynccontextmanager
    async def failing() -> AsyncIterator[None]:
        raise OSError("no database")
        yield

    served: list[str] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        served.append(request.path)
        return duplex.Response(200)

    with trio.fail_after(TIMEOUT), pytest.raises(OSError, match="no database"):
        async with TestClient(handler, lifespan=failing) as client:
            await client.get("/")
    assert served == []


async def test_the_lifespan_is_entered_before_the_first_request_and_exited_after_the_last() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        events.append("start")
        yield
        events.append("stop")

    async def handler(request: duplex.Request) -> duplex.Response:
        async def slow(stream: duplex.Stream) -> None:
            await trio.testing.wait_all_tasks_blocked()
            await stream.write(b"late")
            events.append("answered")

        events.append("request")
        return duplex.Response(200, body=duplex.Streamable(slow))

    with trio.fail_after(TIMEOUT):
        async with TestClient(handler, lifespan=lifespan) as client:
            assert events == ["start"]
            response = await client.get("/")
            assert await response.read() == b"late"
            assert events == ["start", "request", "answered"]
    assert events == ["start", "request", "answered", "stop"]


async def test_leaving_the_block_closes_open_channels_with_the_servers_status() -> None:
    closed = CloseRecorder()
    opened = Opened()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened, on_close=closed)

    with trio.fail_after(TIMEOUT):
        async with TestClient(handler) as client:
            response = await client.get("/events", headers={"accept": "text/event-stream"})
            assert response.status == 200
            await opened.one()
            assert closed.statuses == []
    assert [status.kind for status in closed.statuses] == ["shutdown"]


@pytest.mark.both_protocols
async def test_a_shutdown_inside_the_block_ends_channels_and_refuses_new_requests() -> None:
    closed = CloseRecorder()
    opened = Opened()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened, on_close=closed)

    with trio.fail_after(TIMEOUT):
        test_client = TestClient(handler)
        async with test_client as client:
            response = await client.get("/events", headers={"accept": "text/event-stream"})
            await opened.one()
            await test_client.server.shutdown()
            assert await response.body.join() == b""
            with pytest.raises(OSError):
                await client.get("/after")
    assert [status.kind for status in closed.statuses] == ["shutdown"]


async def test_leaving_the_block_ends_responses_left_unread() -> None:
    async def endless(request: duplex.Request) -> duplex.Response:
        async def forever(stream: duplex.Stream) -> None:
            while True:
                await stream.write(b"x" * 1024)

        return duplex.Response(200, body=duplex.Streamable(forever))

    test_client = TestClient(endless, limits=duplex.Limits(shutdown_grace=TIMEOUT * 10))
    with trio.fail_after(TIMEOUT):
        async with test_client as client:
            response = await client.get("/")
            assert await response.body.read()
    assert test_client.server.connection_count == 0


async def test_an_error_in_the_block_comes_out_as_it_is() -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(KeyError):
        async with TestClient(hello) as client:
            await (await client.get("/")).read()
            raise KeyError("mine")


# -- the in-memory connection ------------------------------------------------------------


@pytest.mark.both_protocols(False)
async def test_the_memory_stream_pair_is_a_half_closeable_stream() -> None:
    async def pair() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
        return memory_stream_pair()

    async def clogged() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
        return memory_stream_pair(max_buffer_size=0)

    with trio.fail_after(TIMEOUT):
        await trio.testing.check_half_closeable_stream(pair, clogged)


# -- strategies --------------------------------------------------------------------------


@pytest.mark.both_protocols(False)
@given(data=st.binary(max_size=200), chunks=st.data())
def test_chunkings_of_data_are_non_empty_and_join_to_it(data: bytes, chunks: st.DataObject) -> None:
    drawn = chunks.draw(chunkings(data))
    assert b"".join(drawn) == data
    assert all(drawn)


@pytest.mark.both_protocols(False)
@given(chunks=chunkings())
def test_chunkings_without_data_draw_it_too(chunks: list[bytes]) -> None:
    assert all(chunks)
    assert all(isinstance(chunk, bytes) for chunk in chunks)


@pytest.mark.both_protocols(False)
@given(chunks=chunkings(st.binary(min_size=1, max_size=50), max_chunks=3))
def test_chunkings_keep_to_max_chunks(chunks: list[bytes]) -> None:
    assert 1 <= len(chunks) <= 3
    assert all(chunks)


@pytest.mark.both_protocols(False)
@given(chunkings(b""))
def test_chunkings_of_empty_data_is_the_empty_list(chunks: list[bytes]) -> None:
    assert chunks == []


@pytest.mark.both_protocols(False)
def test_chunkings_find_every_way_to_cut_short_data() -> None:
    seen: set[tuple[bytes, ...]] = set()

    @given(chunkings(b"abc"))
    def collect(chunks: list[bytes]) -> None:
        seen.add(tuple(chunks))

    collect()
    assert seen == {(b"abc",), (b"a", b"bc"), (b"ab", b"c"), (b"a", b"b", b"c")}


@pytest.mark.both_protocols(False)
def test_the_strategies_say_how_to_get_hypothesis_when_it_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    with pytest.raises(ImportError, match=r"duplex\[testing\]"):
        chunkings(b"data")
    with pytest.raises(ImportError, match=r"duplex\[testing\]"):
        cancellations()


@pytest.mark.both_protocols(False)
def test_the_test_client_needs_no_hypothesis() -> None:
    script = """
import sys
sys.modules["hypothesis"] = None  # as if it were not installed
import trio, duplex
from duplex.testing import TestClient

async def hello(request):
    return duplex.Response(200, body=b"hello")

async def main():
    with trio.fail_after(30):
        async with TestClient(hello) as client:
            print((await (await client.get("/")).read()).decode())

trio.run(main)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"


@pytest.mark.both_protocols(False)
async def test_a_cancellation_cancels_after_its_delay_in_checkpoints() -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for delay in range(4):
                passed = 0
                with Cancellation(delay).around(nursery):
                    while passed < 100:
                        await trio.lowlevel.checkpoint()
                        passed += 1
                # The cancelling task may run just before or just after this one.
                assert delay <= passed <= delay + 1


@pytest.mark.both_protocols(False)
@given(cancellations(max_delay=5))
def test_cancellations_stay_within_max_delay(cancellation: Cancellation) -> None:
    assert 0 <= cancellation.delay <= 5
