"""The demo's routes from plain clients: the streaming response a part at a time, the
chat room's shared history and its refusal of blank lines, and the browser's echo over
two requests paired by id."""

from __future__ import annotations

import json

import trio
import trio_websocket

import duplex
from _channel_support import RawHTTP, serving
from _reliability_support import wait_until
from duplex.demo import Demo

PARTS = b"part 1 of 3\npart 2 of 3\npart 3 of 3\nthe end (sent by the before_close hook)\n"


async def test_the_demo_stream_arrives_a_part_at_a_time() -> None:
    arrivals: list[tuple[float, bytes]] = []
    with trio.fail_after(10):
        async with serving(Demo().handler) as server, duplex.Client() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/stream")
            async for chunk in response.body:
                arrivals.append((trio.current_time(), chunk))
    assert b"".join(chunk for _, chunk in arrivals) == PARTS
    assert arrivals[0][1] == b"part 1 of 3\n"
    # Sent over 1.5 s (three pauses of 0.5 s): the first is there long before the last.
    assert arrivals[-1][0] - arrivals[0][0] >= 0.9


async def say(client: duplex.Client, port: int, text: bytes) -> int:
    response = await client.post(f"http://127.0.0.1:{port}/chat", body=text)
    await response.body.join()
    return response.status


async def test_a_websocket_joining_the_room_gets_the_lines_said_before_over_http() -> None:
    demo = Demo()
    with trio.fail_after(20):
        async with serving(demo.handler) as server, duplex.Client() as client:
            assert await say(client, server.port, b"first") == 204
            assert await say(client, server.port, b"  second  ") == 204
            url = f"ws://127.0.0.1:{server.port}/chat/ws"
            async with trio_websocket.open_websocket_url(url) as websocket:
                history = json.loads(await websocket.get_message())
                await websocket.send_message("third")
                said = json.loads(await websocket.get_message())
            poll = await client.get(f"http://127.0.0.1:{server.port}/chat/poll?since=0")
            polled = json.loads(await poll.body.join())
    assert [message["text"] for message in history] == ["first", "second"]
    assert [message["text"] for message in said] == ["third"]
    assert [message["text"] for message in polled] == ["first", "second", "third"]
    assert [message["id"] for message in polled] == [1, 2, 3]


async def test_a_blank_line_is_refused_over_http_and_dropped_over_websocket() -> None:
    demo = Demo()
    with trio.fail_after(20):
        async with serving(demo.handler) as server, duplex.Client() as client:
            assert await say(client, server.port, b"") == 400
            assert await say(client, server.port, b" \t\r\n ") == 400
            url = f"ws://127.0.0.1:{server.port}/chat/ws"
            async with trio_websocket.open_websocket_url(url) as websocket:
                assert json.loads(await websocket.get_message()) == []
                await websocket.send_message("   ")
                await websocket.send_message("said")
                said = json.loads(await websocket.get_message())
    assert [message["text"] for message in said] == ["said"]
    assert [message["text"] for message in demo.messages] == ["said"]


async def test_a_chat_line_too_long_is_refused_and_a_long_one_cut() -> None:
    demo = Demo()
    with trio.fail_after(20):
        async with serving(demo.handler) as server, duplex.Client() as client:
            assert await say(client, server.port, b"x" * 5000) == 413
            assert await say(client, server.port, b"y" * 600) == 204
    assert [message["text"] for message in demo.messages] == ["y" * 500]


async def test_a_poll_since_that_is_not_a_number_is_refused() -> None:
    with trio.fail_after(10):
        async with serving(Demo().handler) as server, duplex.Client() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/chat/poll?since=soon")
            body = await response.body.join()
    assert response.status == 400
    assert b"since" in body


async def test_a_waiting_poll_gets_the_next_line_and_a_stale_since_gets_the_history() -> None:
    demo = Demo()
    with trio.fail_after(20):
        async with serving(demo.handler) as server, duplex.Client() as client:
            base = f"http://127.0.0.1:{server.port}"
            async with RawHTTP(await trio.open_tcp_stream("127.0.0.1", server.port)) as poll:
                await poll.stream.send_all(
                    b"GET /chat/poll?since=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                )
                # The poll waits (it is a member of the pollers) before the line is said.
                await wait_until(lambda: len(demo.pollers) == 1)
                assert await say(client, server.port, b"news") == 204
                await poll.read_head()
                waited = json.loads(await poll.read_body())
            # An id this server never gave out (say it restarted): all the history.
            stale = await client.get(f"{base}/chat/poll?since=99")
            history = json.loads(await stale.body.join())
    assert [message["text"] for message in waited] == ["news"]
    assert [message["text"] for message in history] == ["news"]


async def test_the_echo_halves_pair_by_id_and_echo_each_chunk_while_the_upload_goes_on() -> None:
    demo = Demo()
    with trio.fail_after(20):
        async with serving(demo.handler) as server:
            up = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with RawHTTP(await trio.open_tcp_stream("127.0.0.1", server.port)) as down:
                await down.request("/echo/down?id=k-1")
                assert down.status == 200
                await up.send_all(
                    b"POST /echo/up?id=k-1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                )
                assert await down.read_chunk() == b"hello"
                assert demo.connections()["http"] == 2
                await up.send_all(b"6\r\n again\r\n0\r\n\r\n")
                assert await down.read_chunk() == b" again"
                assert await down.read_chunk() == b""
            answer = await up.receive_some(65536)
            await up.aclose()
    assert answer.startswith(b"HTTP/1.1 204 ")
    assert demo.received == 2


async def test_an_echo_half_with_a_bad_id_or_open_twice_is_refused() -> None:
    demo = Demo()
    with trio.fail_after(20):
        async with serving(demo.handler) as server, duplex.Client() as client:
            base = f"http://127.0.0.1:{server.port}"
            bad = await client.get(f"{base}/echo/down?id=no/such")
            await bad.body.join()
            wrong_method = await client.get(f"{base}/echo/up?id=k")
            await wrong_method.body.join()
            async with RawHTTP(await trio.open_tcp_stream("127.0.0.1", server.port)) as first:
                await first.request("/echo/down?id=k")
                # The download takes its half once its response runs, after the head.
                await wait_until(lambda: demo.connections()["http"] == 1)
                second = await client.get(f"{base}/echo/down?id=k")
                await second.body.join()
    assert bad.status == 400
    assert wrong_method.status == 405
    assert wrong_method.headers.get("allow") == "POST"
    assert second.status == 409


async def test_the_favicon_is_an_svg_and_a_wrong_method_gets_405_with_allow() -> None:
    with trio.fail_after(10):
        async with serving(Demo().handler) as server, duplex.Client() as client:
            base = f"http://127.0.0.1:{server.port}"
            icon = await client.get(f"{base}/favicon.ico")
            svg = await icon.body.join()
            post = await client.post(f"{base}/", body=b"")
            await post.body.join()
            poll = await client.post(f"{base}/chat/poll", body=b"")
            await poll.body.join()
    assert icon.status == 200
    assert icon.headers.get("content-type") == "image/svg+xml"
    assert svg.startswith(b"<svg")
    assert post.status == 405
    assert post.headers.get("allow") == "GET, HEAD"
    assert poll.status == 405
    assert poll.headers.get("allow") == "GET"


async def test_the_page_comes_back_as_304_when_the_browser_has_it() -> None:
    with trio.fail_after(10):
        async with serving(Demo().handler) as server, duplex.Client() as client:
            base = f"http://127.0.0.1:{server.port}"
            page = await client.get(f"{base}/")
            html = await page.body.join()
            tag = page.headers.get("etag")
            assert tag is not None
            again = await client.get(f"{base}/", headers={"if-none-match": tag})
            empty = await again.body.join()
    assert page.status == 200
    assert html.startswith(b"<!doctype html>")
    assert again.status == 304
    assert again.headers.get("etag") == tag
    assert empty == b""
