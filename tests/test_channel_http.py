"""Channels over plain HTTP: chunked streaming to ``curl -N`` and raw sockets, and the
long-poll reply (one ``send(data, close=True)``) to duplex's own client."""

from __future__ import annotations

import shutil

import pytest
import trio

import duplex
from _channel_support import CloseRecorder, Opened, serving
from _protocol_support import exchange

CURL = shutil.which("curl")


@pytest.mark.both_protocols
async def test_curl_receives_chunky_chunks_then_monkey_from_before_close(protocol: str) -> None:
    async def chunky(channel: duplex.Channel) -> None:
        for count in range(3):
            await channel.send(f"chunky {count}\n")
        await channel.close()

    async def monkey(channel: duplex.Channel) -> None:
        await channel.send("monkey!\n")

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            headers={"content-type": "text/plain"},
            after_open=chunky,
            before_close=monkey,
        )

    if CURL is None:
        pytest.skip("curl is not installed")
    with trio.fail_after(10):
        async with serving(handler) as server:
            over_h2 = ["--http2-prior-knowledge"] if protocol == "h2" else []
            result = await trio.run_process(
                [CURL, "-sS", "-N", "-i", *over_h2, f"http://127.0.0.1:{server.port}/"],
                capture_stdout=True,
            )
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith({"h1": b"HTTP/1.1 200 ", "h2": b"HTTP/2 200"}[protocol])
    assert b"\r\ncontent-type: text/plain" in head.lower()
    if protocol == "h1":
        assert b"\r\ntransfer-encoding: chunked" in head.lower()
    assert body == b"chunky 0\nchunky 1\nchunky 2\nmonkey!\n"


@pytest.mark.both_protocols
async def test_chunks_reach_the_client_while_the_channel_stays_open(protocol: str) -> None:
    opened = Opened()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened)

    with trio.fail_after(5):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.start("/")
            channel = await opened.one()
            assert await channel.send(b"first")
            await client.read_head()
            if protocol == "h1":
                assert client.headers["transfer-encoding"] == "chunked"
            assert await client.read_chunk() == b"first"
            assert await channel.send("second")
            assert await client.read_chunk() == b"second"
            assert channel.is_open
            await channel.close()
            assert await client.read_chunk() == b""


@pytest.mark.both_protocols
async def test_a_long_poll_reply_is_one_response_with_content_length() -> None:
    opened = Opened()
    closes = CloseRecorder()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request, headers={"content-type": "application/json"}, on_open=opened, on_close=closes
        )

    with trio.fail_after(5):
        async with serving(handler) as server, duplex.Client() as client:
            async with trio.open_nursery() as nursery:
                responses: list[duplex.ClientResponse] = []

                async def poll() -> None:
                    responses.append(await client.get(f"http://127.0.0.1:{server.port}/poll"))

                nursery.start_soon(poll)
                channel = await opened.one()
                assert await channel.send(b'{"news": 1}', close=True)
            [response] = responses
            assert response.status == 200
            assert response.headers["content-length"] == "11"
            assert "transfer-encoding" not in response.headers
            assert response.headers["content-type"] == "application/json"
            assert await response.read() == b'{"news": 1}'
            status = await channel.wait_closed()
    assert status.kind == "server"
    assert closes.statuses == [status]
    assert channel.state == "closed"
    assert not channel.is_open
    assert not await channel.send(b"more")


@pytest.mark.both_protocols
async def test_a_long_poll_channel_closed_without_data_answers_an_empty_reply() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, after_open=lambda channel: channel.close())

    with trio.fail_after(5):
        async with serving(handler) as server, duplex.Client() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/")
            assert response.status == 200
            assert response.headers["content-length"] == "0"
            assert await response.read() == b""


@pytest.mark.both_protocols
async def test_a_channel_answers_with_its_status_and_headers() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            status=202,
            headers={"x-channel": "yes"},
            after_open=lambda channel: channel.send("accepted", close=True),
        )

    with trio.fail_after(5):
        async with serving(handler) as server, duplex.Client() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/")
            assert response.status == 202
            assert response.headers["x-channel"] == "yes"
            assert await response.read() == b"accepted"


@pytest.mark.both_protocols
async def test_an_http_channel_is_not_a_websocket() -> None:
    seen: list[tuple[str, bool]] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        def note(channel: duplex.Channel) -> None:
            seen.append((channel.transport, channel.is_websocket))

        return duplex.channel(request, on_open=note, after_open=lambda ch: ch.send("", True))

    with trio.fail_after(5):
        async with serving(handler) as server, duplex.Client() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/")
            await response.read()
    assert seen == [("http", False)]


@pytest.mark.both_protocols
async def test_on_receive_gets_the_request_body_in_order(protocol: str) -> None:
    received: list[bytes] = []
    done = trio.Event()

    async def handler(request: duplex.Request) -> duplex.Response:
        async def on_receive(channel: duplex.Channel, chunk: bytes) -> None:
            received.append(chunk)
            if b"".join(received) == b"onetwothree":
                done.set()
                await channel.send(b"".join(received), close=True)

        return duplex.channel(request, on_receive=on_receive)

    with trio.fail_after(5):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.start("/", method="POST", body=True)
            for chunk in (b"one", b"two", b"three"):
                await client.send(chunk)
            await client.end()
            await client.read_head()
            assert await client.read_body() == b"onetwothree"
    assert done.is_set()
