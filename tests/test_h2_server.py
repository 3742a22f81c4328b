"""The HTTP/2 server: the same handlers, bodies and channels as over HTTP/1.1, each
stream full duplex, flow control as back-pressure, and the clients people use (curl,
nghttp, h2load, httpx) served over h2c and over TLS."""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

import duplex
from _client_support import echo, echo_process
from _h2_support import H2Peer, serving_h2, tls_contexts
from _server_support import RawClient, Recorder, hello

TIMEOUT = 10

# Every test here runs on Linux's fast I/O path and on the portable one (tests/conftest.py).
pytestmark = pytest.mark.both_paths


async def streaming_echo(request: duplex.Request) -> duplex.Response:
    async def copy(stream: duplex.Stream) -> None:
        while chunk := await stream.readpartial(65536):
            await stream.write(chunk)

    return duplex.Response(
        200, {"content-type": "application/octet-stream"}, duplex.Streamable(copy)
    )


# -- protocol selection --------------------------------------------------------------


async def test_a_cleartext_connection_that_opens_with_the_preface_speaks_http2() -> None:
    async def version(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=f"{request.http_version} {request.scheme} {request.path}")

    with trio.fail_after(TIMEOUT):
        async with serving_h2(version) as server, H2Peer.connect(server.port) as peer:
            stream_id = await peer.request("GET", "/a%20b?x=1")
            state = await peer.response(stream_id)
            assert state.status == 200
            assert bytes(state.data) == b"2 http /a b"


async def test_the_request_carries_authority_as_host_and_the_client_address() -> None:
    seen: list[duplex.Request] = []

    async def record(request: duplex.Request) -> duplex.Response:
        seen.append(request)
        return duplex.Response(204)

    with trio.fail_after(TIMEOUT):
        async with serving_h2(record) as server, H2Peer.connect(server.port) as peer:
            await peer.response(await peer.request("GET", "/q?y=2", [("x-a", "b")]))
    (request,) = seen
    assert request.headers["host"] == "localhost"
    assert request.headers["x-a"] == "b"
    assert request.target == "/q?y=2" and request.query == "y=2"
    assert request.client is not None and request.client[0] == "127.0.0.1"


async def test_with_http2_off_the_preface_gets_505() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serving_h2(hello, http2=False) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            assert (await client.read_response()).status == 505


async def test_http11_is_served_as_before() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_h2(hello) as server, httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/")
    assert response.http_version == "HTTP/1.1"
    assert response.text == "hello"


async def test_the_settings_advertise_the_limits_and_extended_connect() -> None:
    limits = duplex.Limits(max_concurrent_streams=7, stream_window_size=1000)
    with trio.fail_after(TIMEOUT):
        async with (
            serving_h2(hello, limits=limits) as server,
            H2Peer.connect(server.port) as peer,
        ):
            await peer.until(lambda: bool(peer.remote_settings))
    assert peer.remote_settings[0x3] == 7  # MAX_CONCURRENT_STREAMS
    assert peer.remote_settings[0x4] == 1000  # INITIAL_WINDOW_SIZE
    assert peer.remote_settings[0x6] == limits.max_header_size  # MAX_HEADER_LIST_SIZE
    assert peer.remote_settings[0x8] == 1  # ENABLE_CONNECT_PROTOCOL


# -- full duplex and flow control ----------------------------------------------------


async def test_a_stream_is_full_duplex_chunk_by_chunk() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_h2(streaming_echo) as server, H2Peer.connect(server.port) as peer:
            stream_id = await peer.request("POST", "/echo", end=False)
            await peer.send(stream_id, b"chunk 1")
            assert await peer.take(stream_id, 7) == b"chunk 1"
            await peer.send(stream_id, b"chunk 2", end=True)
            assert await peer.take(stream_id) == b"chunk 2"
            assert peer.streams[stream_id].status == 200
            assert peer.streams[stream_id].ended


async def test_a_hundred_concurrent_streams_on_one_connection_each_arrive_intact() -> None:
    bodies = {index: bytes([index]) * (1000 + index * 997) for index in range(100)}
    with trio.fail_after(TIMEOUT):
        async with (
            serving_h2(streaming_echo) as server,
            H2Peer.connect(server.port) as peer,
            peer.reading(),
        ):
            ids = {}
            for index in bodies:
                ids[index] = await peer.request("POST", f"/{index}", end=False)
            for index, body in bodies.items():
                await peer.send(ids[index], body, end=True)
            results = {index: await peer.take(stream_id) for index, stream_id in ids.items()}
    assert results == bodies


async def test_a_stalled_stream_does_not_stall_its_neighbour() -> None:
    big = b"x" * (1 << 20)

    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/big":
            return duplex.Response(200, body=big)
        return duplex.Response(200, body=b"small")

    with trio.fail_after(TIMEOUT):
        async with (
            serving_h2(handler) as server,
            H2Peer.connect(server.port, auto_ack=False) as peer,
        ):
            stalled = await peer.request("GET", "/big")
            # The peer never gives back the window of /big: it stalls at 65,535 bytes.
            await peer.until(lambda: len(peer.streams[stalled].data) >= 65535)
            neighbour = await peer.request("GET", "/small")
            state = await peer.response(neighbour)
            assert bytes(state.data) == b"small"
            assert not peer.streams[stalled].ended
            assert len(peer.streams[stalled].data) == 65535


async def test_the_window_grows_only_as_the_handler_reads() -> None:
    read_now = trio.Event()
    got: list[bytes] = []

    async def slow_reader(request: duplex.Request) -> duplex.Response:
        await read_now.wait()
        got.append(await request.body.join())
        return duplex.Response(200, body=b"done")

    limits = duplex.Limits(stream_window_size=16384)
    with trio.fail_after(TIMEOUT):
        async with (
            serving_h2(slow_reader, limits=limits) as server,
            H2Peer.connect(server.port) as peer,
        ):
            await peer.until(lambda: bool(peer.remote_settings))
            stream_id = await peer.request("POST", "/", end=False)
            await peer.send(stream_id, b"a" * 16384)
            assert peer.conn.local_flow_control_window(stream_id) == 0
            # The server holds the data unread: no window comes back meanwhile.
            with trio.move_on_after(0.2):
                await peer.until(lambda: peer.conn.local_flow_control_window(stream_id) > 0)
            assert peer.conn.local_flow_control_window(stream_id) == 0
            read_now.set()
            await peer.until(lambda: peer.conn.local_flow_control_window(stream_id) > 0)
            await peer.send(stream_id, b"b" * 100, end=True)
            state = await peer.response(stream_id)
    assert bytes(state.data) == b"done"
    assert got == [b"a" * 16384 + b"b" * 100]


async def test_every_byte_the_handler_reads_comes_back_as_window_exactly() -> None:
    # Each window's worth, read whole, is given back whole: the peer can send the same
    # again, round after round (a window given back short shrinks the stream for good).
    async def count(request: duplex.Request) -> duplex.Response:
        size = 0
        async for chunk in request.body:
            size += len(chunk)
        return duplex.Response(200, body=str(size).encode())

    window = 16384
    limits = duplex.Limits(stream_window_size=window)
    with trio.fail_after(TIMEOUT):
        async with serving_h2(count, limits=limits) as server, H2Peer.connect(server.port) as peer:
            await peer.until(lambda: bool(peer.remote_settings))
            stream_id = await peer.request("POST", "/", end=False)
            for round_ in range(4):
                assert peer.conn.local_flow_control_window(stream_id) == window
                await peer.send(stream_id, bytes([round_]) * window)
                assert peer.conn.local_flow_control_window(stream_id) == 0
                await peer.until(lambda: peer.conn.local_flow_control_window(stream_id) > 0)
            assert peer.conn.local_flow_control_window(stream_id) == window
            await peer.send(stream_id, b"", end=True)
            state = await peer.response(stream_id)
    assert bytes(state.data) == str(4 * window).encode()


async def test_a_streamables_close_write_ends_the_stream_while_it_still_reads() -> None:
    rest: list[bytes] = []
    read_all = trio.Event()

    async def handler(request: duplex.Request) -> duplex.Response:
        async def answer_then_read(stream: duplex.Stream) -> None:
            await stream.write(b"answered early")
            await stream.close_write()
            rest.append(await stream.read())
            read_all.set()

        return duplex.Response(200, body=duplex.Streamable(answer_then_read))

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            stream_id = await peer.request("POST", "/", body=b"first part", end=False)
            await peer.until(lambda: peer.streams[stream_id].ended)
            assert bytes(peer.streams[stream_id].data) == b"answered early"
            await peer.send(stream_id, b" and the rest", end=True)
            await read_all.wait()
    assert rest == [b"first part and the rest"]


# -- responses -----------------------------------------------------------------------


async def test_bodies_of_every_kind_are_sent() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"it"
        yield b""
        yield b"erable"

    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/bytes":
            return duplex.Response(200, body=b"bytes")
        if request.path == "/str":
            return duplex.Response(200, body="str")
        if request.path == "/readable":
            return duplex.Response(200, body=duplex.Buffered([b"read", b"able"]))
        return duplex.Response(200, body=chunks())

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            results = {}
            for path in ("/bytes", "/str", "/readable", "/iterable"):
                state = await peer.response(await peer.request("GET", path))
                results[path] = (bytes(state.data), state.header(b"content-length"))
    assert results == {
        "/bytes": (b"bytes", b"5"),
        "/str": (b"str", b"3"),
        "/readable": (b"readable", b"8"),
        "/iterable": (b"iterable", None),
    }


async def test_trailers_follow_the_body() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=b"body", trailers={"x-checksum": "abc"})

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            state = await peer.response(await peer.request("GET", "/"))
    assert bytes(state.data) == b"body"
    assert state.trailers == [(b"x-checksum", b"abc")]


async def test_head_204_and_304_carry_no_body_and_drop_trailers() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        status = int(request.path[1:])
        return duplex.Response(status, body=b"never", trailers={"x-t": "1"})

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            for method, path in (("HEAD", "/200"), ("GET", "/204"), ("GET", "/304")):
                state = await peer.response(await peer.request(method, path))
                assert state.status == int(path[1:])
                assert bytes(state.data) == b""
                assert state.trailers == []
                assert state.ended


async def test_connection_specific_headers_are_stripped() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, {"connection": "close", "keep-alive": "5", "x-ok": "1"})

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            state = await peer.response(await peer.request("GET", "/"))
    names = [name for name, _ in state.headers]
    assert b"connection" not in names and b"keep-alive" not in names
    assert state.header(b"x-ok") == b"1"
    assert state.header(b"date") is not None


async def test_a_failing_handler_gets_500_and_the_other_streams_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/fail":
            raise RuntimeError("boom")
        return duplex.Response(200, body=b"fine")

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            failing = await peer.request("GET", "/fail")
            fine = await peer.request("GET", "/fine")
            assert (await peer.response(failing)).status == 500
            assert bytes((await peer.response(fine)).data) == b"fine"
    assert any("handler failed" in record.message for record in caplog.records)


async def test_a_body_over_max_body_size_gets_413() -> None:
    async def reader(request: duplex.Request) -> duplex.Response:
        await request.body.join()
        return duplex.Response(200)

    limits = duplex.Limits(max_body_size=1000)
    with trio.fail_after(TIMEOUT):
        async with serving_h2(reader, limits=limits) as server, H2Peer.connect(server.port) as peer:
            declared = await peer.request(
                "POST", "/", [("content-length", "5000")], body=b"x" * 100, end=False
            )
            assert (await peer.response(declared)).status == 413
            streamed = await peer.request("POST", "/", end=False)
            await peer.send(streamed, b"y" * 2000)
            assert (await peer.response(streamed)).status == 413


async def test_data_past_the_content_length_fails_the_stream_alone() -> None:
    async def reader(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=await request.body.join())

    with trio.fail_after(TIMEOUT):
        async with serving_h2(reader) as server, H2Peer.connect(server.port) as peer:
            neighbour = await peer.request("POST", "/", [("content-length", "3")], end=False)
            stream_id = await peer.request("POST", "/", [("content-length", "3")], end=False)
            await peer.send(stream_id, b"12345", end=True)
            state = await peer.response(stream_id)
            assert state.status == 400 or state.reset is not None
            await peer.send(neighbour, b"abc", end=True)
            assert bytes((await peer.response(neighbour)).data) == b"abc"


async def test_a_plain_connect_gets_501() -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        async with serving_h2(recorder) as server, H2Peer.connect(server.port) as peer:
            stream_id = peer.conn.get_next_available_stream_id()
            peer.conn.send_headers(
                stream_id, [(b":method", b"CONNECT"), (b":authority", b"elsewhere.example:443")]
            )
            await peer.flush()
            assert (await peer.response(stream_id)).status == 501
    assert recorder.targets == []


async def test_a_request_body_that_stops_coming_gets_408() -> None:
    async def reader(request: duplex.Request) -> duplex.Response:
        await request.body.join()
        return duplex.Response(200)

    limits = duplex.Limits(read_timeout=0.2)
    with trio.fail_after(TIMEOUT):
        async with serving_h2(reader, limits=limits) as server, H2Peer.connect(server.port) as peer:
            stream_id = await peer.request("POST", "/", body=b"part", end=False)
            assert (await peer.response(stream_id)).status == 408


# -- the exchange's life -------------------------------------------------------------


async def test_request_nursery_tasks_end_with_the_exchange() -> None:
    ended = trio.Event()

    async def background() -> None:
        try:
            await trio.sleep_forever()
        finally:
            ended.set()

    async def handler(request: duplex.Request) -> duplex.Response:
        request.nursery.start_soon(background)
        return duplex.Response(200, body=b"ok")

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            assert bytes((await peer.response(await peer.request("GET", "/"))).data) == b"ok"
            await ended.wait()


async def test_a_peer_that_resets_its_stream_breaks_the_handlers_read_and_cancels_it() -> None:
    reading = trio.Event()
    outcome: list[str] = []
    cancelled = trio.Event()

    async def handler(request: duplex.Request) -> duplex.Response:
        async def watch() -> None:
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()

        request.nursery.start_soon(watch)
        reading.set()
        try:
            await request.body.read()
            await request.body.read()
        except trio.BrokenResourceError:
            outcome.append("broken")
            raise
        return duplex.Response(200)

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            stream_id = await peer.request("POST", "/", body=b"first", end=False)
            await reading.wait()
            await peer.reset(stream_id)
            await cancelled.wait()
            # The connection serves on.
            other = await peer.request("GET", "/", body=None)
            assert (await peer.response(other)).status == 200
    assert outcome in ([], ["broken"])


async def test_the_connection_closing_fails_the_exchanges_in_flight() -> None:
    cancelled = trio.Event()
    started = trio.Event()

    async def handler(request: duplex.Request) -> duplex.Response:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server:
            async with H2Peer.connect(server.port) as peer:
                await peer.request("GET", "/")
                await started.wait()
            await cancelled.wait()


async def test_a_connection_reset_under_an_unread_body_leaves_the_server_serving() -> None:
    started = trio.Event()
    gone = trio.Event()

    async def until_gone() -> None:
        try:
            await trio.sleep_forever()
        finally:
            gone.set()

    async def unread(request: duplex.Request) -> duplex.Response:
        if request.path == "/next":
            return duplex.Response(200)
        request.nursery.start_soon(until_gone)
        started.set()
        await trio.sleep_forever()
        raise AssertionError("not reached")

    with trio.fail_after(TIMEOUT):
        async with serving_h2(unread) as server:
            async with H2Peer.connect(server.port) as peer:
                stream_id = await peer.request("POST", "/", end=False)
                await peer.send(stream_id, b"x" * 60000)
                await started.wait()
                # Reset, not closed: the window the server gives back as the stream's
                # unread body is dropped finds a dead socket.
                assert isinstance(peer.stream, trio.SocketStream)
                sock = peer.stream.socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await gone.wait()
            async with H2Peer.connect(server.port) as peer:
                assert (await peer.response(await peer.request("GET", "/next"))).status == 200


async def test_shutdown_sends_goaway_first_and_lets_streams_in_flight_finish() -> None:
    release = trio.Event()
    started = trio.Event()

    async def handler(request: duplex.Request) -> duplex.Response:
        started.set()
        await release.wait()
        return duplex.Response(200, body=b"finished")

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            stream_id = await peer.request("GET", "/")
            await started.wait()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown, 5)
                await peer.until(lambda: peer.goaway is not None)
                assert peer.goaway is not None
                assert peer.goaway.last_stream_id == stream_id
                release.set()
                state = await peer.response(stream_id)
                assert bytes(state.data) == b"finished"
            assert server.connection_count == 0


async def test_max_requests_per_connection_goes_away_after_the_last_one() -> None:
    limits = duplex.Limits(max_requests_per_connection=2)
    with trio.fail_after(TIMEOUT):
        async with serving_h2(hello, limits=limits) as server, H2Peer.connect(server.port) as peer:
            first = await peer.request("GET", "/")
            second = await peer.request("GET", "/")
            assert (await peer.response(first)).status == 200
            assert (await peer.response(second)).status == 200
            await peer.until(lambda: peer.goaway is not None)
            assert peer.goaway is not None and peer.goaway.last_stream_id == second


async def test_a_clients_graceful_goaway_lets_its_streams_in_flight_finish() -> None:
    release = trio.Event()
    started = trio.Event()

    async def handler(request: duplex.Request) -> duplex.Response:
        started.set()
        await release.wait()
        return duplex.Response(200, body=b"still answered")

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            stream_id = await peer.request("GET", "/")
            await started.wait()
            peer.conn.close_connection()  # GOAWAY, NO_ERROR
            await peer.flush()
            await trio.testing.wait_all_tasks_blocked()
            release.set()
            state = await peer.response(stream_id)
            assert bytes(state.data) == b"still answered"
            with pytest.raises(EOFError):
                await peer.until(lambda: False)  # then the server closes


async def test_an_idle_connection_is_closed_with_goaway() -> None:
    limits = duplex.Limits(keep_alive_timeout=0.1)
    with trio.fail_after(TIMEOUT):
        async with serving_h2(hello, limits=limits) as server, H2Peer.connect(server.port) as peer:
            await peer.response(await peer.request("GET", "/"))
            with pytest.raises(EOFError):
                await peer.until(lambda: False)
    assert peer.goaway is not None


async def test_a_connection_that_sends_no_request_in_time_is_closed_with_goaway() -> None:
    limits = duplex.Limits(header_timeout=0.2)
    with trio.fail_after(TIMEOUT):
        async with serving_h2(hello, limits=limits) as server, H2Peer.connect(server.port) as peer:
            with pytest.raises(EOFError):
                await peer.until(lambda: False)
    assert peer.goaway is not None


async def test_a_protocol_error_gets_goaway_and_the_server_goes_on() -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        async with serving_h2(recorder) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET / HTTP/1.1\r\n\r\n")
                received = b""
                while chunk := await stream.receive_some(65536):
                    received += chunk
            # SETTINGS, then GOAWAY (type 7) with PROTOCOL_ERROR (1), then the close.
            assert received[3] == 0x4
            assert received[-17 + 3] == 0x7 and received[-4:] == b"\x00\x00\x00\x01"
            assert recorder.targets == []  # the request behind the preface is never served
            async with H2Peer.connect(server.port) as peer:
                assert (await peer.response(await peer.request("GET", "/"))).status == 200


# -- channels over HTTP/2 -------------------------------------------------------------


async def test_an_sse_channel_streams_events_over_a_stream() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        async def on_open(channel: duplex.Channel) -> None:
            await channel.send("one")
            await channel.send("two", close=True)

        return duplex.channel(request, on_open=on_open)

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            stream_id = await peer.request("GET", "/", [("accept", "text/event-stream")])
            state = await peer.response(stream_id)
    assert state.status == 200
    assert (
        state.header(
            b"content-type",
        )
        == b"text/event-stream; charset=utf-8"
    )
    assert bytes(state.data) == b"data: one\n\ndata: two\n\n"


async def test_a_chunked_channel_streams_messages_and_hears_the_peer() -> None:
    received: list[bytes] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        async def on_receive(channel: duplex.Channel, message: str | bytes) -> None:
            received.append(message if isinstance(message, bytes) else message.encode())
            await channel.send(b"echo:" + received[-1])

        return duplex.channel(request, on_receive=on_receive)

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            stream_id = await peer.request("POST", "/", end=False)
            await peer.send(stream_id, b"hi")
            assert await peer.take(stream_id, 7) == b"echo:hi"
            await peer.send(stream_id, b"there")
            assert await peer.take(stream_id, 10) == b"echo:there"
    assert received == [b"hi", b"there"]


async def test_a_websocket_request_without_version_13_is_refused_over_http() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request)

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            await peer.until(lambda: bool(peer.remote_settings))
            stream_id = await peer.request(
                "CONNECT", "/chat", end=False, extra=[(b":protocol", b"websocket")]
            )
            state = await peer.response(stream_id)
    assert state.status == 426
    assert state.header(b"sec-websocket-version") == b"13"


async def test_a_request_with_trailers_is_read_to_its_end() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=await request.body.join())

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            stream_id = await peer.request("POST", "/", body=b"body", end=False)
            peer.conn.send_headers(stream_id, [(b"x-checksum", b"abc")], end_stream=True)
            await peer.flush()
            state = await peer.response(stream_id)
    assert bytes(state.data) == b"body"


async def test_a_long_poll_reply_has_a_content_length() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        async def on_open(channel: duplex.Channel) -> None:
            await channel.send(b"the reply", close=True)

        return duplex.channel(request, on_open=on_open)

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            state = await peer.response(await peer.request("GET", "/"))
    assert bytes(state.data) == b"the reply"
    assert state.header(b"content-length") == b"9"


async def test_a_websocket_runs_over_an_extended_connect() -> None:
    from wsproto import ConnectionType
    from wsproto.connection import Connection
    from wsproto.events import BytesMessage, CloseConnection, TextMessage

    closed: list[duplex.CloseStatus] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        async def on_receive(channel: duplex.Channel, message: str | bytes) -> None:
            await channel.send(message)

        async def on_close(channel: duplex.Channel, status: duplex.CloseStatus) -> None:
            closed.append(status)

        return duplex.channel(request, on_receive=on_receive, on_close=on_close)

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            await peer.until(lambda: bool(peer.remote_settings))
            stream_id = await peer.request(
                "CONNECT",
                "/chat",
                [("sec-websocket-version", "13")],
                end=False,
                extra=[(b":protocol", b"websocket")],
            )
            await peer.until(lambda: peer.streams[stream_id].status is not None)
            assert peer.streams[stream_id].status == 200
            ws = Connection(ConnectionType.CLIENT)
            await peer.send(stream_id, ws.send(TextMessage("hello")))
            await peer.send(stream_id, ws.send(BytesMessage(b"\x00\x01")))
            messages: list[str | bytes] = []
            while len(messages) < 2:
                ws.receive_data(await peer.take(stream_id, len(peer.streams[stream_id].data) or 1))
                for event in ws.events():
                    if isinstance(event, TextMessage | BytesMessage):
                        messages.append(
                            bytes(event.data) if isinstance(event.data, bytearray) else event.data
                        )
            assert messages == ["hello", b"\x00\x01"]
            await peer.send(stream_id, ws.send(CloseConnection(1000, "bye")))
            await peer.until(lambda: peer.streams[stream_id].ended)
            ws.receive_data(bytes(peer.streams[stream_id].data))
            assert any(isinstance(event, CloseConnection) for event in ws.events())
    assert [status.code for status in closed] == [1000]


# -- real clients ---------------------------------------------------------------------


needs = pytest.mark.skipif


@needs(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_streams_4_mib_back_byte_exact_over_h2c_through_duplex_echo(
    tmp_path: pytest.TempPathFactory,
) -> None:
    data = bytes(range(256)) * (4 * 4096)
    upload = tmp_path / "up.bin"  # type: ignore[operator]
    upload.write_bytes(data)
    with trio.fail_after(30):
        async with echo_process() as base:
            result = await trio.run_process(
                [
                    "curl",
                    "-sS",
                    "--http2-prior-knowledge",
                    "--data-binary",
                    f"@{upload}",
                    "-w",
                    "%{http_version}",
                    "-o",
                    "-",
                    base + "/echo",
                ],
                capture_stdout=True,
            )
    assert result.stdout[:-1] == data
    assert result.stdout[-1:] == b"2"


@needs(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_negotiates_h2_by_alpn_over_tls(tmp_path: pytest.TempPathFactory) -> None:
    ca, context = tls_contexts()
    cafile = tmp_path / "ca.pem"  # type: ignore[operator]
    ca.cert_pem.write_to_path(str(cafile))
    data = bytes(range(256)) * (4 * 4096)
    upload = tmp_path / "up.bin"  # type: ignore[operator]
    upload.write_bytes(data)
    with trio.fail_after(30):
        async with serving_h2(echo, ssl_context=context) as server:
            result = await trio.run_process(
                [
                    "curl",
                    "-sS",
                    "--http2",
                    "--cacert",
                    str(cafile),
                    "--data-binary",
                    f"@{upload}",
                    "-w",
                    "%{http_version}",
                    "-o",
                    "-",
                    f"https://localhost:{server.port}/echo",
                ],
                capture_stdout=True,
            )
    assert result.stdout[:-1] == data
    assert result.stdout[-1:] == b"2"


@needs(shutil.which("nghttp") is None, reason="nghttp is not installed")
async def test_nghttp_sees_the_settings_and_succeeds() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_h2(hello) as server:
            result = await trio.run_process(
                ["nghttp", "-v", f"http://127.0.0.1:{server.port}/"], capture_stdout=True
            )
    output = result.stdout.decode()
    assert "SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100" in output
    assert "SETTINGS_ENABLE_CONNECT_PROTOCOL(0x08):1" in output
    assert ":status: 200" in output
    assert output.rstrip().endswith("hello") or "hello" in output


@needs(shutil.which("h2load") is None, reason="h2load is not installed")
async def test_h2load_completes_a_thousand_requests_without_an_error() -> None:
    with trio.fail_after(30):
        async with serving_h2(hello) as server:
            result = await trio.run_process(
                [
                    "h2load",
                    "-n",
                    "1000",
                    "-c",
                    "10",
                    "-m",
                    "10",
                    f"http://127.0.0.1:{server.port}/",
                ],
                capture_stdout=True,
            )
    output = result.stdout.decode()
    assert "1000 succeeded, 0 failed, 0 errored, 0 timeout" in output


async def test_httpx_speaks_http2_over_tls() -> None:
    ca, context = tls_contexts()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/echo":
            return await echo(request)
        return duplex.Response(200, body=f"hello over {request.http_version}")

    async def chunks() -> AsyncIterator[bytes]:
        for index in range(20):
            yield b"%d," % index

    with trio.fail_after(TIMEOUT):
        async with (
            serving_h2(handler, ssl_context=context) as server,
            httpx.AsyncClient(http2=True, verify=client_context) as client,
        ):
            base = f"https://localhost:{server.port}"
            response = await client.get(base + "/")
            assert response.http_version == "HTTP/2"
            assert response.text == "hello over 2"
            response = await client.post(base + "/echo", content=b"x" * 300_000)
            assert response.content == b"x" * 300_000
            async with client.stream("POST", base + "/echo", content=chunks()) as streamed:
                body = b"".join([chunk async for chunk in streamed.aiter_bytes()])
            assert body == b"".join(b"%d," % index for index in range(20))


async def test_http2_connections_count_toward_max_connections() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_h2(hello) as server, H2Peer.connect(server.port) as peer:
            await peer.response(await peer.request("GET", "/"))
            assert server.connection_count == 1


async def test_a_broadcast_goes_out_from_the_broadcasters_task_not_the_channels(
    io_path: str,
) -> None:
    # A channel over HTTP/2 waiting for news wakes no task per message: the group's
    # broadcast writes the stream's DATA itself when its window and the socket take it
    # (on the fast path: the portable one writes from the connection's sender task).
    if io_path == "portable":
        pytest.skip("the portable path writes from a task")
    group = duplex.ChannelGroup()
    joined = trio.Event()

    async def handler(request: duplex.Request) -> duplex.Response:
        async def on_open(channel: duplex.Channel) -> None:
            group.add(channel)
            joined.set()

        return duplex.channel(request, on_open=on_open, heartbeat=None)

    class Scheduled(trio.abc.Instrument):
        def __init__(self) -> None:
            self.tasks: set[trio.lowlevel.Task] = set()

        def task_scheduled(self, task: trio.lowlevel.Task) -> None:
            self.tasks.add(task)

    with trio.fail_after(TIMEOUT):
        async with serving_h2(handler) as server, H2Peer.connect(server.port) as peer:
            stream_id = await peer.request("GET", "/", [("accept", "text/event-stream")])
            await joined.wait()
            await trio.testing.wait_all_tasks_blocked()
            scheduled = Scheduled()
            trio.lowlevel.add_instrument(scheduled)
            try:
                for number in range(20):
                    assert await group.broadcast(f"news {number}") == 1
            finally:
                trio.lowlevel.remove_instrument(scheduled)
            assert scheduled.tasks <= {trio.lowlevel.current_task()}
            expected = b"".join(b"data: news %d\n\n" % number for number in range(20))
            assert await peer.take(stream_id, len(expected)) == expected
