"""The server's ordinary HTTP/1.1: requests as handlers see them, framing chosen by the
body's type, keep-alive, pipelining, HEAD, bodiless statuses, trailers, HTTP/1.0 and
``Expect: 100-continue``. What holds over HTTP/2 as well (the request as the handler sees
it, the body kinds, Content-Length where the length is known, trailers) runs over both
(conftest's ``both_protocols``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio

import duplex
from _protocol_support import ask
from _server_support import RawClient, Recorder, hello, request_bytes, serving


@pytest.mark.both_protocols
async def test_the_handler_sees_method_target_path_query_and_headers(protocol: str) -> None:
    seen: list[duplex.Request] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        seen.append(request)
        return duplex.Response(200)

    with trio.fail_after(5):
        async with serving(handler) as server:
            await ask(
                server.port,
                protocol,
                "/a%20b/c?x=1&y=2",
                method="DELETE",
                headers="X-Thing: One\r\n",
            )
    [request] = seen
    assert (request.method, request.target) == ("DELETE", "/a%20b/c?x=1&y=2")
    assert (request.path, request.query) == ("/a b/c", "x=1&y=2")
    assert request.headers["x-thing"] == "One"
    assert request.headers["HOST"] == "localhost"
    assert request.http_version == {"h1": "1.1", "h2": "2"}[protocol]


@pytest.mark.both_protocols
async def test_a_content_length_request_body_reaches_the_handler(protocol: str) -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        body = await request.body.join()
        return duplex.Response(200, body=b"got " + body)

    with trio.fail_after(5):
        async with serving(handler) as server:
            response = await ask(server.port, protocol, method="POST", body=b"some data")
    assert response.body == b"got some data"


async def test_a_chunked_request_body_reaches_the_handler_with_an_unknown_length() -> None:
    lengths: list[int | None] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        lengths.append(request.body.length)
        return duplex.Response(200, body=await request.body.join())

    with trio.fail_after(5):
        async with serving(handler) as server, await RawClient.connect(server.port) as client:
            await client.send(
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
            )
            response = await client.read_response()
    assert response.body == b"abcdefg"
    assert lengths == [None]


@pytest.mark.both_protocols
async def test_a_bytes_body_is_sent_with_content_length(protocol: str) -> None:
    with trio.fail_after(5):
        async with serving(hello) as server:
            response = await ask(server.port, protocol)
    assert response.status == 200
    assert response.header("content-length") == "5"
    assert not response.chunked
    assert response.body == b"hello"


@pytest.mark.both_protocols
async def test_a_str_body_is_sent_as_utf8_text_with_content_length(protocol: str) -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body="héllo")

    with trio.fail_after(5):
        async with serving(handler) as server:
            response = await ask(server.port, protocol)
    assert response.body == "héllo".encode()
    assert response.header("content-length") == str(len("héllo".encode()))
    assert response.header("content-type") == "text/plain; charset=utf-8"


@pytest.mark.both_protocols
async def test_a_readable_with_a_known_length_is_sent_with_content_length(protocol: str) -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=duplex.Buffered([b"ab", b"cd", b"e"]))

    with trio.fail_after(5):
        async with serving(handler) as server:
            response = await ask(server.port, protocol)
    assert response.header("content-length") == "5"
    assert not response.chunked
    assert response.body == b"abcde"


@pytest.mark.both_protocols
async def test_a_readable_without_a_length_is_sent_chunked_or_as_data(protocol: str) -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        output = duplex.Writable()

        async def fill() -> None:
            await output.write(b"one ")
            await output.write(b"two")
            await output.close_write()

        request.nursery.start_soon(fill)
        return duplex.Response(200, body=output)

    with trio.fail_after(5):
        async with serving(handler) as server:
            response = await ask(server.port, protocol)
    assert response.chunked == (protocol == "h1")
    assert response.header("content-length") is None
    assert response.body == b"one two"


@pytest.mark.both_protocols
async def test_an_async_iterable_body_is_sent_chunked_or_as_data(protocol: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"a", b"", b"bc"):
            yield chunk

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=chunks())

    with trio.fail_after(5):
        async with serving(handler) as server:
            response = await ask(server.port, protocol)
    assert response.chunked == (protocol == "h1")
    assert response.body == b"abc"


@pytest.mark.both_protocols
async def test_a_streamable_body_is_sent_chunked_or_as_data(protocol: str) -> None:
    async def write(stream: duplex.Stream) -> None:
        await stream.write(b"streamed")

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=duplex.Streamable(write))

    with trio.fail_after(5):
        async with serving(handler) as server:
            response = await ask(server.port, protocol)
    assert response.chunked == (protocol == "h1")
    assert response.body == b"streamed"


@pytest.mark.both_protocols
async def test_trailers_follow_a_streamed_body(protocol: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"data"

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=chunks(), trailers={"x-checksum": "abc123"})

    with trio.fail_after(5):
        async with serving(handler) as server:
            response = await ask(server.port, protocol)
    assert response.chunked == (protocol == "h1")
    assert response.body == b"data"
    assert response.trailers == [(b"x-checksum", b"abc123")]


async def test_several_requests_are_served_on_one_kept_alive_connection() -> None:
    recorder = Recorder()
    with trio.fail_after(5):
        async with serving(recorder) as server, await RawClient.connect(server.port) as client:
            for target in ("/1", "/2", "/3"):
                await client.send(request_bytes(target))
                response = await client.read_response()
                assert response.body == target.encode()
                assert not response.closes
    assert recorder.targets == ["/1", "/2", "/3"]


async def test_pipelined_requests_are_answered_in_order() -> None:
    recorder = Recorder()
    with trio.fail_after(5):
        async with serving(recorder) as server, await RawClient.connect(server.port) as client:
            await client.send(
                request_bytes("/1")
                + request_bytes("/2", method="POST", body=b"body")
                + request_bytes("/3")
            )
            bodies = [(await client.read_response()).body for _ in range(3)]
    assert bodies == [b"/1", b"/2", b"/3"]


async def test_head_sends_no_body_but_the_length_of_the_body_it_would_send() -> None:
    recorder = Recorder()
    with trio.fail_after(5):
        async with serving(recorder) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes("/abc", method="HEAD") + request_bytes("/next"))
            head = await client.read_response(method="HEAD")
            following = await client.read_response()
    assert head.status == 200
    assert head.header("content-length") == "4"
    # Had the HEAD response carried a body, it would have been read as the next response.
    assert following.body == b"/next"


async def test_head_of_a_readable_with_a_known_length_sends_that_length_and_no_body() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=duplex.Buffered(b"abcde"))

    with trio.fail_after(5):
        async with serving(handler) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes(method="HEAD") + request_bytes(method="HEAD"))
            head = await client.read_response(method="HEAD")
            again = await client.read_response(method="HEAD")
    assert head.header("content-length") == again.header("content-length") == "5"
    assert not head.chunked


async def test_head_of_a_streaming_body_sends_no_body() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        output = duplex.Writable()
        request.nursery.start_soon(output.write, b"never sent")
        return duplex.Response(200, body=output)

    with trio.fail_after(5):
        async with serving(handler) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes(method="HEAD"))
            head = await client.read_response(method="HEAD")
            await client.send(request_bytes(method="HEAD"))
            again = await client.read_response(method="HEAD")
    assert head.status == again.status == 200


@pytest.mark.parametrize("status", [204, 304])
async def test_a_bodiless_status_is_sent_without_a_body_or_length(status: int) -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        if request.target == "/next":
            return duplex.Response(200, body=b"next")
        return duplex.Response(status)

    with trio.fail_after(5):
        async with serving(handler) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes("/") + request_bytes("/next"))
            first = await client.read_response()
            following = await client.read_response()
    assert first.status == status
    assert first.header("content-length") is None
    assert not first.chunked
    assert following.body == b"next"


async def test_an_http_1_0_request_gets_a_content_length_response_then_a_close() -> None:
    with trio.fail_after(5):
        async with serving(hello) as server, await RawClient.connect(server.port) as client:
            await client.send(b"GET / HTTP/1.0\r\n\r\n")
            response = await client.read_response()
            await client.expect_closed()
    assert response.header("content-length") == "5"
    assert response.body == b"hello"


async def test_an_http_1_0_streaming_response_is_delimited_by_the_close() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"streamed "
        yield b"until close"

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=chunks())

    with trio.fail_after(5):
        async with serving(handler) as server, await RawClient.connect(server.port) as client:
            await client.send(b"GET / HTTP/1.0\r\n\r\n")
            head = await client.read_head()
            body = await client.read_until_eof()
    assert not head.chunked
    assert head.header("content-length") is None
    assert body == b"streamed until close"


async def test_100_continue_is_sent_only_once_the_handler_reads_the_body() -> None:
    may_read = trio.Event()

    async def handler(request: duplex.Request) -> duplex.Response:
        await may_read.wait()
        return duplex.Response(200, body=await request.body.join())

    with trio.fail_after(5):
        async with serving(handler) as server, await RawClient.connect(server.port) as client:
            await client.send(
                request_bytes(
                    method="POST", headers="Content-Length: 4\r\nExpect: 100-continue\r\n"
                )
            )
            assert await client.nothing_pending()
            may_read.set()
            interim = await client.read_head()
            assert interim.status == 100
            await client.send(b"data")
            response = await client.read_response()
    assert response.body == b"data"


async def test_a_handler_that_answers_without_reading_the_body_sends_no_100_continue() -> None:
    with trio.fail_after(5):
        async with serving(hello) as server, await RawClient.connect(server.port) as client:
            await client.send(
                request_bytes(
                    method="POST", headers="Content-Length: 4\r\nExpect: 100-continue\r\n"
                )
            )
            response = await client.read_head()
    assert response.status == 200


async def test_a_client_asking_to_close_gets_its_response_then_the_close() -> None:
    with trio.fail_after(5):
        async with serving(hello) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes(headers="Connection: close\r\n"))
            response = await client.read_response()
            await client.expect_closed()
    assert response.body == b"hello"
    assert response.closes


async def test_a_handler_asking_to_close_gets_the_connection_closed_after_its_response() -> None:
    recorder = Recorder()

    async def closing(request: duplex.Request) -> duplex.Response:
        await recorder(request)
        return duplex.Response(200, {"connection": "close"}, body=b"bye")

    with trio.fail_after(5):
        async with serving(closing) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes("/1") + request_bytes("/2"))
            response = await client.read_response()
            await client.expect_closed()
    assert response.body == b"bye"
    assert recorder.targets == ["/1"]


async def test_a_request_body_the_handler_left_unread_is_drained_before_the_next_request() -> None:
    recorder = Recorder()

    async def ignore_body(request: duplex.Request) -> duplex.Response:
        recorder.targets.append(request.target)
        return duplex.Response(200, body=request.target)

    with trio.fail_after(5):
        async with serving(ignore_body) as server, await RawClient.connect(server.port) as client:
            await client.send(
                request_bytes("/1", method="POST", body=request_bytes("/inside") * 20)
                + request_bytes("/2")
            )
            first = await client.read_response()
            second = await client.read_response()
    assert (first.body, second.body) == (b"/1", b"/2")
    assert recorder.targets == ["/1", "/2"]


async def test_an_unread_request_body_over_max_drain_size_closes_the_connection() -> None:
    recorder = Recorder()

    async def ignore_body(request: duplex.Request) -> duplex.Response:
        recorder.targets.append(request.target)
        return duplex.Response(200, body=b"early answer")

    inside = request_bytes("/smuggled") * 200
    limits = duplex.Limits(max_drain_size=1000)
    with trio.fail_after(5):
        async with (
            serving(ignore_body, limits=limits) as server,
            await RawClient.connect(server.port) as client,
        ):
            head = request_bytes("/1", method="POST", headers=f"Content-Length: {len(inside)}\r\n")
            await client.send(head)
            response = await client.read_response()
            with contextlib.suppress(trio.BrokenResourceError):  # the server may close first
                await client.send(inside)
            await client.read_until_eof()
    assert response.body == b"early answer"
    assert recorder.targets == ["/1"]
