"""Plain-HTTP channels and request bodies: a request that streams a body is a full-duplex
stream whose response head goes out when the channel opens (the client may wait for it
before it sends more); a request without one keeps the long-poll reply."""

from __future__ import annotations

import pytest
import trio

import duplex
from _channel_support import Opened, RawHTTP, serving
from _protocol_support import exchange


def echoing(opened: Opened | None = None) -> duplex.Handler:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request, on_open=opened, on_receive=lambda channel, chunk: channel.send(chunk)
        )

    return handler


@pytest.mark.both_protocols
async def test_a_client_posting_a_writable_exchanges_messages_with_the_channel(
    protocol: str,
) -> None:
    with trio.fail_after(5):
        async with serving(echoing()) as server, duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(f"http://127.0.0.1:{server.port}/room", body=output)
            assert response.status == 200
            assert response.http_version == {"h1": "1.1", "h2": "2"}[protocol]
            if protocol == "h1":
                assert response.headers["transfer-encoding"] == "chunked"
            stream = duplex.Stream(response.body, output)
            await stream.write(b"one")
            assert await stream.readpartial() == b"one"
            await stream.write(b"two")
            assert await stream.readpartial() == b"two"
            await stream.close_write()


@pytest.mark.both_protocols
async def test_a_streaming_request_gets_the_head_before_any_message(protocol: str) -> None:
    opened = Opened()
    with trio.fail_after(5):
        async with serving(echoing(opened)) as server, exchange(server.port, protocol) as raw:
            await raw.start("/", method="POST", body=True)
            await raw.read_head()
            assert raw.status == 200
            if protocol == "h1":
                assert raw.headers["transfer-encoding"] == "chunked"
            await raw.send(b"hello")
            assert await raw.read_chunk() == b"hello"
            channel = await opened.one()
            assert channel.is_open


async def test_a_content_length_body_still_arriving_gets_the_head_before_any_message() -> None:
    with trio.fail_after(5):
        async with serving(echoing()) as server, await RawHTTP.connect(server.port) as raw:
            await raw.stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            await raw.read_head()
            assert raw.headers["transfer-encoding"] == "chunked"
            await raw.stream.send_all(b"0123456789")
            assert await raw.read_until(b"0123456789") == b"0123456789"


@pytest.mark.both_protocols
async def test_a_request_whose_body_the_handler_read_gets_a_long_poll_reply() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        question = await request.body.join()
        return duplex.channel(
            request, after_open=lambda channel: channel.send(b"re: " + question, close=True)
        )

    with trio.fail_after(5):
        async with serving(handler) as server, duplex.Client() as client:
            response = await client.post(f"http://127.0.0.1:{server.port}/", body=b"news?")
            assert response.headers["content-length"] == "9"
            assert await response.read() == b"re: news?"


@pytest.mark.both_protocols
async def test_a_room_that_waits_for_the_client_hears_a_client_that_waits_for_the_head() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        said = trio.Event()
        heard: list[bytes] = []

        async def on_open(channel: duplex.Channel) -> None:
            await said.wait()  # the room speaks once the client has
            await channel.send(b"welcome, " + heard[0])

        def on_receive(channel: duplex.Channel, chunk: bytes) -> None:
            heard.append(chunk)
            said.set()

        return duplex.channel(request, on_open=on_open, on_receive=on_receive)

    with trio.fail_after(5):
        async with serving(handler) as server, duplex.Client() as client:
            output = duplex.Writable()
            response = await client.post(f"http://127.0.0.1:{server.port}/", body=output)
            await output.write(b"ada")
            assert await response.body.read() == b"welcome, ada"
            await output.close_write()
