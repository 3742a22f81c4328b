"""Hardening beyond h11: what a hostile or broken peer gets, and what it never gets.

duplex rejects, never repairs: every head a proxy in front could read differently is
answered with 400 and a close, and nothing pipelined behind a rejected request is served.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

import duplex
from _server_support import RawClient, Recorder, request_bytes, serving


async def rejected(data: bytes, recorder: Recorder | None = None) -> int:
    """Send ``data`` and a pipelined request behind it; the status answered before the close.

    Asserts that the pipelined request ``/smuggled`` never reached the handler.
    """
    recorder = recorder or Recorder()
    async with serving(recorder) as server, await RawClient.connect(server.port) as client:
        await client.send(data + request_bytes("/smuggled"))
        response = await client.read_response()
        await client.expect_closed()
    assert "/smuggled" not in recorder.targets
    return response.status


async def test_content_length_with_transfer_encoding_is_rejected_and_nothing_behind_served() -> (
    None
):
    data = (
        b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    recorder = Recorder()
    with trio.fail_after(5):
        assert await rejected(data, recorder) == 400
    assert recorder.targets == []


async def test_two_different_content_lengths_are_rejected() -> None:
    data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"
    with trio.fail_after(5):
        assert await rejected(data) == 400


async def test_obsolete_line_folding_is_rejected() -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: one\r\n two\r\n\r\n"
    with trio.fail_after(5):
        assert await rejected(data) == 400


async def test_a_bare_lf_line_ending_is_rejected() -> None:
    with trio.fail_after(5):
        assert await rejected(b"GET / HTTP/1.1\nHost: x\n\n") == 400


async def test_a_bare_cr_in_a_header_value_is_rejected() -> None:
    with trio.fail_after(5):
        assert await rejected(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: one\rtwo\r\n\r\n") == 400


@pytest.mark.parametrize("control", [b"\x00", b"\x01", b"\x0b", b"\x0c", b"\x1b", b"\x7f"])
async def test_a_control_character_in_a_header_value_is_rejected(control: bytes) -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: one" + control + b"two\r\n\r\n"
    with trio.fail_after(5):
        assert await rejected(data) == 400


async def test_a_tab_in_a_header_value_is_accepted() -> None:
    seen: list[str] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        seen.append(request.headers["x-a"])
        return duplex.Response(204)

    with trio.fail_after(5):
        async with serving(handler) as server, await RawClient.connect(server.port) as client:
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: one\ttwo\r\n\r\n")
            response = await client.read_response()
    assert response.status == 204
    assert seen == ["one\ttwo"]


@pytest.mark.parametrize("extension", [b";a=\x00", b";a=b\rc", b";a\nb"])
async def test_cr_lf_or_nul_in_a_chunk_extension_is_rejected(extension: bytes) -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3" + extension + b"\r\nabc\r\n0\r\n\r\n"
    )
    with trio.fail_after(5):
        async with serving(read_body) as server, await RawClient.connect(server.port) as client:
            await client.send(data + request_bytes("/smuggled"))
            response = await client.read_response()
            await client.expect_closed()
    assert response.status == 400


async def read_body(request: duplex.Request) -> duplex.Response:
    return duplex.Response(200, body=await request.body.join())


def chunked_with_trailers(trailers: bytes) -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n" + trailers
    )


async def test_well_formed_trailers_on_a_request_are_accepted() -> None:
    with trio.fail_after(5):
        async with serving(read_body) as server, await RawClient.connect(server.port) as client:
            await client.send(chunked_with_trailers(b"X-Sum: 1\r\nX-Other: two\r\n\r\n"))
            response = await client.read_response()
    assert response.body == b"abc"


@pytest.mark.parametrize(
    "trailers",
    [
        b"X-Sum: 1\r\n two\r\n\r\n",
        b"X-Sum: 1\n\n",
        b"\n",
        b"X-Sum: 1\rtwo\r\n\r\n",
        b"X-Sum: 1\x01\r\n\r\n",
    ],
    ids=["obs-fold", "bare-lf", "bare-lf-end", "bare-cr", "control"],
)
async def test_malformed_request_trailers_are_rejected(trailers: bytes) -> None:
    with trio.fail_after(5):
        async with serving(read_body) as server, await RawClient.connect(server.port) as client:
            await client.send(chunked_with_trailers(trailers) + request_bytes("/smuggled"))
            response = await client.read_response()
            await client.expect_closed()
    assert response.status == 400


async def test_a_request_pipelined_behind_a_rejected_one_is_never_served() -> None:
    recorder = Recorder()
    with trio.fail_after(5):
        async with serving(recorder) as server, await RawClient.connect(server.port) as client:
            await client.send(
                request_bytes("/ok") + b"NOT HTTP AT ALL\r\n\r\n" + request_bytes("/smuggled")
            )
            served = await client.read_response()
            refused = await client.read_response()
            await client.expect_closed()
    assert (served.status, refused.status) == (200, 400)
    assert recorder.targets == ["/ok"]


@pytest.mark.parametrize("control", [b"\x01", b"\x7f", b"\x1b"])
async def test_a_control_character_in_the_request_target_is_rejected(control: bytes) -> None:
    with trio.fail_after(5):
        assert await rejected(b"GET /a" + control + b"b HTTP/1.1\r\nHost: x\r\n\r\n") == 400


async def test_pipelined_requests_a_client_never_reads_are_not_buffered_by_the_server() -> None:
    recorder = Recorder()
    response_body = b"r" * 65536
    flood = request_bytes() * (10_000_000 // len(request_bytes()))
    sent = 0

    async def handler(request: duplex.Request) -> duplex.Response:
        await recorder(request)
        return duplex.Response(200, body=response_body)

    async def send_flood(client: RawClient) -> None:
        nonlocal sent
        for start in range(0, len(flood), 65536):
            await client.send(flood[start : start + 65536])
            sent += 65536

    with trio.fail_after(5):
        async with serving(handler) as server, await RawClient.connect(server.port) as client:
            assert isinstance(client.stream, trio.SocketStream)
            client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_flood, client)
                # Everyone blocked for a while: the server no longer reads, so the
                # client's sends no longer complete.
                await trio.testing.wait_all_tasks_blocked(cushion=0.3)
                nursery.cancel_scope.cancel()
    assert sent < len(flood) // 10
    # Each answered request took a 64 KiB response the client never read: a handful at most.
    assert len(recorder.targets) < 200


async def test_a_request_body_the_handler_does_not_read_is_not_buffered_by_the_server() -> None:
    handler_running = trio.Event()
    sent = 0

    async def ignore_body(request: duplex.Request) -> duplex.Response:
        handler_running.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def upload(client: RawClient) -> None:
        nonlocal sent
        await client.send(request_bytes(method="POST", headers="Content-Length: 100000000\r\n"))
        while True:
            await client.send(b"b" * 65536)
            sent += 65536

    with trio.fail_after(5):
        async with serving(ignore_body) as server, await RawClient.connect(server.port) as client:
            assert isinstance(client.stream, trio.SocketStream)
            client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload, client)
                await handler_running.wait()
                await trio.testing.wait_all_tasks_blocked(cushion=0.3)
                nursery.cancel_scope.cancel()
    assert sent < 1_000_000


@pytest.mark.parametrize("value", ["a\r\nb", "a\nb", "a\rb", "a\x00b"])
def test_a_response_header_value_with_cr_lf_or_nul_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="header value"):
        duplex.Response(200, {"x-injected": value})


@pytest.mark.parametrize("reason", ["OK\r\nX-Injected: 1", "OK\n", "O\rK", "OK\x00"])
def test_a_reason_phrase_with_cr_lf_or_nul_is_refused(reason: str) -> None:
    with pytest.raises(ValueError, match="reason phrase"):
        duplex.Response(200, reason=reason)


def test_a_trailer_value_with_cr_lf_or_nul_is_refused() -> None:
    with pytest.raises(ValueError, match="header value"):
        duplex.Response(200, body=b"", trailers={"x-checksum": "a\r\nb"})


async def test_a_handler_that_builds_an_injecting_response_gets_500() -> None:
    async def injecting(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, {"set-cookie": "a=1\r\nX-Injected: yes"})

    with trio.fail_after(5):
        async with serving(injecting) as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes())
            response = await client.read_response()
            await client.expect_closed()
    assert response.status == 500
    assert response.header("x-injected") is None


async def test_bytes_that_cannot_start_a_request_get_400_before_any_line_ends() -> None:
    # A TLS ClientHello on a plain port: no line end comes, so only the first bytes tell.
    with trio.fail_after(5):
        async with serving(read_body) as server, await RawClient.connect(server.port) as client:
            await client.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            response = await client.read_response()
            await client.expect_closed()
    assert response.status == 400
