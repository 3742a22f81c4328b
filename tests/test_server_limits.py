"""Every limit and timeout of ``duplex.Limits``: the right status, then a close.

Limits are set small so that each test trips one on purpose. Timeouts are short real
times (the sockets are real, so trio's autojump clock cannot stand in for them), each
test bounded well above them by ``fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import duplex
from _protocol_support import exchange
from _server_support import RawClient, Recorder, hello, request_bytes, serving


async def answer_to(
    data: bytes, limits: duplex.Limits, handler: duplex.Handler | None = None
) -> int:
    """Send ``data`` on one connection and return the status answered before the close."""
    async with (
        serving(handler or Recorder(), limits=limits) as server,
        await RawClient.connect(server.port) as client,
    ):
        await client.send(data)
        response = await client.read_response()
        await client.expect_closed()
    return response.status


async def echo_body(request: duplex.Request) -> duplex.Response:
    return duplex.Response(200, body=await request.body.join())


async def test_a_head_over_max_header_size_arriving_in_one_read_gets_431() -> None:
    head = request_bytes(headers="X-Big: " + "a" * 2000 + "\r\n")
    with trio.fail_after(5):
        assert await answer_to(head, duplex.Limits(max_header_size=1024)) == 431


async def test_a_head_over_max_header_size_arriving_line_by_line_gets_431() -> None:
    recorder = Recorder()
    with trio.fail_after(5):
        async with (
            serving(recorder, limits=duplex.Limits(max_header_size=1024)) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
            for number in range(100):
                try:
                    await client.send(b"X-Header-%d: %s\r\n" % (number, b"v" * 50))
                except trio.BrokenResourceError:
                    break
            response = await client.read_response()
            await client.expect_closed()
    assert response.status == 431
    assert recorder.targets == []


async def test_a_head_just_within_max_header_size_is_served() -> None:
    head = request_bytes()
    padding = 1024 - len(head) - len("X-Pad: \r\n")
    head = request_bytes(headers="X-Pad: " + "p" * padding + "\r\n")
    assert len(head) == 1024
    with trio.fail_after(5):
        async with (
            serving(hello, limits=duplex.Limits(max_header_size=1024)) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(head)
            response = await client.read_response()
    assert response.status == 200


async def test_a_request_line_over_max_request_line_gets_414() -> None:
    data = request_bytes("/" + "a" * 200)
    with trio.fail_after(5):
        assert await answer_to(data, duplex.Limits(max_request_line=100)) == 414


async def test_a_content_length_over_max_body_size_gets_413_before_the_handler_runs() -> None:
    recorder = Recorder()
    data = request_bytes(method="POST", headers="Content-Length: 1000\r\n")
    with trio.fail_after(5):
        assert await answer_to(data, duplex.Limits(max_body_size=100), recorder) == 413
    assert recorder.targets == []


async def test_a_chunked_body_growing_over_max_body_size_gets_413() -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"64\r\n" + b"x" * 100 + b"\r\n"
        + b"64\r\n" + b"x" * 100 + b"\r\n"
    )  # fmt: skip
    with trio.fail_after(5):
        assert await answer_to(data, duplex.Limits(max_body_size=150), echo_body) == 413


@pytest.mark.both_protocols
async def test_413_is_answered_even_if_the_handler_answers_its_broken_body_itself(
    protocol: str,
) -> None:
    first_chunk_read = trio.Event()

    async def forgiving(request: duplex.Request) -> duplex.Response:
        await request.body.read()
        first_chunk_read.set()
        try:
            await request.body.discard()
        except trio.BrokenResourceError:
            return duplex.Response(200, body=b"never mind")
        return duplex.Response(204)

    with trio.fail_after(5):
        async with (
            serving(forgiving, limits=duplex.Limits(max_body_size=150)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.start("/", method="POST", body=True)  # chunked over HTTP/1.1
            await client.send(b"x" * 100)
            await first_chunk_read.wait()
            await client.send(b"x" * 100)
            await client.read_head()
            await client.read_body()
            if protocol == "h1":
                await client.expect_closed()
    assert client.status == 413


async def test_a_head_dribbled_slower_than_header_timeout_gets_408() -> None:
    head = request_bytes()
    with trio.fail_after(3):
        async with (
            serving(hello, limits=duplex.Limits(header_timeout=0.5)) as server,
            await RawClient.connect(server.port) as client,
        ):
            start = trio.current_time()
            # Steady progress, one byte at a time, must not extend the deadline.
            for byte in head[:-2]:
                if client.has_input():
                    break
                await client.send(bytes([byte]))
                await trio.sleep(0.05)
            response = await client.read_response()
            answered_after = trio.current_time() - start
            await client.expect_closed()
    assert response.status == 408
    assert 0.5 <= answered_after < 1


@pytest.mark.both_protocols
async def test_a_connection_that_sends_no_request_is_closed_after_header_timeout(
    protocol: str,
) -> None:
    """Over HTTP/2 the client sends its preface and SETTINGS, then no stream; the
    server says GOAWAY before it closes."""
    with trio.fail_after(3):
        async with (
            serving(hello, limits=duplex.Limits(header_timeout=0.3)) as server,
            exchange(server.port, protocol) as client,
        ):
            start = trio.current_time()
            await client.expect_closed()
    assert 0.3 <= trio.current_time() - start < 2


async def test_a_request_line_that_is_not_http_gets_400() -> None:
    with trio.fail_after(5):
        assert await answer_to(b"HELLO THERE\r\n\r\n", duplex.Limits()) == 400


async def test_an_unknown_transfer_coding_gets_501() -> None:
    data = request_bytes(method="POST", headers="Transfer-Encoding: gzip\r\n")
    with trio.fail_after(5):
        assert await answer_to(data, duplex.Limits()) == 501


async def test_an_unsupported_http_version_gets_505() -> None:
    with trio.fail_after(5):
        assert await answer_to(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", duplex.Limits()) == 505


@pytest.mark.both_protocols
async def test_an_idle_kept_alive_connection_closes_after_keep_alive_timeout(
    protocol: str,
) -> None:
    limits = duplex.Limits(keep_alive_timeout=0.3, header_timeout=10)
    with trio.fail_after(3):
        async with (
            serving(hello, limits=limits) as server,
            exchange(server.port, protocol) as client,
        ):
            # (Timed from the request: the server's idle time starts once it has sent
            # the response, which may be before the client has read it.)
            asked = trio.current_time()
            await client.request("/")
            assert await client.read_body() == b"hello"
            assert "connection" not in client.headers
            await client.expect_closed()
    assert 0.3 <= trio.current_time() - asked < 2


async def test_a_request_body_that_stalls_longer_than_read_timeout_gets_408() -> None:
    data = request_bytes(method="POST", headers="Content-Length: 10\r\n") + b"12345"
    with trio.fail_after(3):
        assert await answer_to(data, duplex.Limits(read_timeout=0.3), echo_body) == 408


async def test_a_client_that_never_reads_a_streaming_response_is_cut_after_write_timeout() -> None:
    outcome: list[BaseException] = []
    cut = trio.Event()

    async def endless(request: duplex.Request) -> duplex.Response:
        output = duplex.Writable()

        async def produce() -> None:
            try:
                while True:
                    await output.write(b"x" * 65536)
            except trio.BrokenResourceError as error:
                outcome.append(error)
                cut.set()

        request.nursery.start_soon(produce)
        return duplex.Response(200, body=output)

    with trio.fail_after(4):
        async with (
            serving(endless, limits=duplex.Limits(write_timeout=0.3)) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes())
            await cut.wait()
            rest = await client.read_until_eof()
    assert isinstance(outcome[0], trio.BrokenResourceError)
    assert not rest.endswith(b"0\r\n\r\n")


async def test_max_requests_per_connection_closes_after_the_last_request() -> None:
    recorder = Recorder()
    with trio.fail_after(5):
        async with (
            serving(recorder, limits=duplex.Limits(max_requests_per_connection=2)) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes("/1") + request_bytes("/2") + request_bytes("/3"))
            first = await client.read_response()
            second = await client.read_response()
            await client.expect_closed()
    assert not first.closes
    assert second.closes
    assert recorder.targets == ["/1", "/2"]


async def test_a_connection_over_max_connections_gets_503() -> None:
    with trio.fail_after(5):
        async with serving(hello, limits=duplex.Limits(max_connections=1)) as server:
            async with await RawClient.connect(server.port) as first:
                await first.send(request_bytes())
                assert (await first.read_response()).status == 200
                async with await RawClient.connect(server.port) as second:
                    await second.send(request_bytes())
                    response = await second.read_response()
                    await second.expect_closed()
                assert response.status == 503
            # Once the first connection has gone, a new one is served again.
            await trio.testing.wait_all_tasks_blocked()
            assert server.connection_count == 0
            async with await RawClient.connect(server.port) as third:
                await third.send(request_bytes())
                assert (await third.read_response()).status == 200


# -- over both protocols (conftest's both_protocols): the limits as a client meets them


def url(server: duplex.Server, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


@pytest.mark.both_protocols
async def test_a_declared_body_over_max_body_size_gets_413_before_the_handler_runs() -> None:
    recorder = Recorder()
    with trio.fail_after(5):
        async with (
            serving(recorder, limits=duplex.Limits(max_body_size=100)) as server,
            duplex.Client() as client,
        ):
            response = await client.post(url(server), body=b"x" * 1000)
            await response.aclose()
    assert response.status == 413
    assert recorder.targets == []


@pytest.mark.both_protocols
async def test_a_streamed_body_growing_over_max_body_size_gets_413() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 100

    with trio.fail_after(5):
        async with (
            serving(echo_body, limits=duplex.Limits(max_body_size=150)) as server,
            duplex.Client() as client,
        ):
            response = await client.post(url(server), body=chunks())
            await response.aclose()
    assert response.status == 413


@pytest.mark.both_protocols
async def test_a_head_over_max_header_size_gets_431() -> None:
    recorder = Recorder()
    with trio.fail_after(5):
        async with (
            serving(recorder, limits=duplex.Limits(max_header_size=1024)) as server,
            duplex.Client() as client,
        ):
            response = await client.get(url(server), headers={"x-big": "a" * 2000})
            await response.aclose()
            # The connection (or, over HTTP/2, the next stream) is served again.
            assert (await client.get(url(server, "/next"))).status == 200
    assert response.status == 431
    assert recorder.targets == ["/next"]


@pytest.mark.both_protocols
async def test_a_streamed_body_that_stalls_longer_than_read_timeout_gets_408() -> None:
    with trio.fail_after(3):
        async with (
            serving(echo_body, limits=duplex.Limits(read_timeout=0.3)) as server,
            duplex.Client() as client,
        ):
            output = duplex.Writable()
            await output.write(b"12345")
            start = trio.current_time()
            response = await client.post(url(server), body=output)
            answered_after = trio.current_time() - start
            await response.aclose()
    assert response.status == 408
    assert 0.3 <= answered_after < 2


@pytest.mark.both_protocols
async def test_a_client_that_never_reads_a_streaming_response_is_cut_after_write_timeout_too() -> (
    None
):
    outcome: list[BaseException] = []
    cut = trio.Event()

    async def endless(request: duplex.Request) -> duplex.Response:
        output = duplex.Writable()

        async def produce() -> None:
            try:
                while True:
                    await output.write(b"x" * 65536)
            except trio.BrokenResourceError as error:
                outcome.append(error)
                cut.set()

        request.nursery.start_soon(produce)
        return duplex.Response(200, body=output)

    with trio.fail_after(4):
        async with (
            serving(endless, limits=duplex.Limits(write_timeout=0.3)) as server,
            duplex.Client() as client,
        ):
            response = await client.get(url(server))
            await cut.wait()
            with pytest.raises(trio.BrokenResourceError):
                while await response.body.read():
                    pass
    assert isinstance(outcome[0], trio.BrokenResourceError)
