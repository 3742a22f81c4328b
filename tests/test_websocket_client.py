"""duplex's WebSocket client (DESIGN §6): ``async with client.websocket(url) as ws``,
against the ``websockets`` package's server (ws:// and wss:// with a trustme
certificate) and against duplex's own: send, receive, iteration, close codes both
ways, subprotocols, compression, the client's timeouts and limits."""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import h2.settings
import pytest
import trio
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed as WebSocketsClosed

import duplex
from _channel_support import CloseRecorder, Opened, serving
from _h2_support import serving_h2, tls_contexts
from _websocket_support import websockets_server
from duplex.websocket import ConnectionClosed, HandshakeRefused
from helpers import TIMEOUT


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


# -- against the websockets package -------------------------------------------------------


async def test_text_comes_back_as_text_and_bytes_as_bytes() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            websockets_server(echo) as port,
            duplex.Client() as http,
            http.websocket(f"ws://127.0.0.1:{port}/") as ws,
        ):
            await ws.send("hello")
            assert await ws.receive() == "hello"
            await ws.send(b"\x00\xff")
            assert await ws.receive() == b"\x00\xff"
            await ws.send(bytearray(b"array"))
            assert await ws.receive() == b"array"


async def test_anything_but_text_or_bytes_is_refused() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            websockets_server(echo) as port,
            duplex.Client() as http,
            http.websocket(f"ws://127.0.0.1:{port}/") as ws,
        ):
            with pytest.raises(TypeError, match="str or bytes"):
                await ws.send(42)  # type: ignore[arg-type]


async def test_iteration_takes_every_message_and_ends_at_a_clean_close() -> None:
    async def count_then_close(ws: ServerConnection) -> None:
        for number in range(20):
            await ws.send(str(number))
        await ws.close(1000, "that is all")

    with trio.fail_after(TIMEOUT):
        async with (
            websockets_server(count_then_close) as port,
            duplex.Client() as http,
            http.websocket(f"ws://127.0.0.1:{port}/") as ws,
        ):
            received = [message async for message in ws]
    assert received == [str(number) for number in range(20)]
    assert ws.close_status == duplex.CloseStatus("server", 1000, "that is all")


async def test_the_servers_close_code_and_reason_reach_receive_and_close_status() -> None:
    async def close_4000(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(4000, "bye now")

    with trio.fail_after(TIMEOUT):
        async with (
            websockets_server(close_4000) as port,
            duplex.Client() as http,
            http.websocket(f"ws://127.0.0.1:{port}/") as ws,
        ):
            assert ws.close_status is None
            await ws.send("x")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.receive()
            with pytest.raises(ConnectionClosed):
                await ws.send("too late")
    assert (closed.value.code, closed.value.reason) == (4000, "bye now")
    assert ws.close_status == duplex.CloseStatus("server", 4000, "bye now")


async def test_iteration_raises_when_the_server_fails_the_connection() -> None:
    async def fail(ws: ServerConnection) -> None:
        await ws.send("one")
        await ws.close(1011, "it broke")

    with trio.fail_after(TIMEOUT):
        async with (
            websockets_server(fail) as port,
            duplex.Client() as http,
            http.websocket(f"ws://127.0.0.1:{port}/") as ws,
        ):
            received = []
            with pytest.raises(ConnectionClosed) as closed:
                async for message in ws:
                    received.append(message)
    assert received == ["one"]
    assert closed.value.code == 1011
    assert ws.close_status == duplex.CloseStatus("error", 1011, "it broke")


async def test_the_clients_close_code_and_reason_reach_the_server() -> None:
    seen: list[tuple[int | None, str | None]] = []

    async def record(ws: ServerConnection) -> None:
        with contextlib.suppress(WebSocketsClosed):
            await ws.recv()
        seen.append((ws.close_code, ws.close_reason))

    with trio.fail_after(TIMEOUT):
        async with (
            websockets_server(record) as port,
            duplex.Client() as http,
            http.websocket(f"ws://127.0.0.1:{port}/") as ws,
        ):
            await ws.close(4001, "done here")
            assert ws.close_status == duplex.CloseStatus("client", 4001, "done here")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.receive()
            await ws.close()  # idempotent
    assert closed.value.code == 4001
    assert seen == [(4001, "done here")]


async def test_leaving_the_block_closes_with_1000() -> None:
    seen: list[int | None] = []

    async def record(ws: ServerConnection) -> None:
        async for _ in ws:
            pass
        seen.append(ws.close_code)

    with trio.fail_after(TIMEOUT):
        async with (
            websockets_server(record) as port,
            duplex.Client() as http,
            http.websocket(f"ws://127.0.0.1:{port}/") as ws,
        ):
            await ws.send("x")
            assert ws.close_status is None
        assert ws.close_status == duplex.CloseStatus("client", 1000, "")
    assert seen == [1000]  # the server's handlers have ended with it


async def test_an_exception_in_the_block_comes_out_as_it_was() -> None:
    with trio.fail_after(TIMEOUT):
        async with websockets_server(echo) as port, duplex.Client() as http:
            with pytest.raises(KeyError, match="mine"):
                async with http.websocket(f"ws://127.0.0.1:{port}/") as ws:
                    await ws.send("x")
                    raise KeyError("mine")
    status = ws.close_status
    assert status is not None and status.code == 1006


async def test_a_close_code_no_endpoint_may_send_is_refused() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            websockets_server(echo) as port,
            duplex.Client() as http,
            http.websocket(f"ws://127.0.0.1:{port}/") as ws,
        ):
            with pytest.raises(ValueError, match="1006"):
                await ws.close(1006)
            with pytest.raises(ValueError, match="123 bytes"):
                await ws.close(1000, "x" * 124)
            await ws.send("still open")
            assert await ws.receive() == "still open"


async def test_the_server_picks_among_the_offered_subprotocols() -> None:
    async def named(ws: ServerConnection) -> None:
        await ws.send(ws.subprotocol or "none")

    with trio.fail_after(TIMEOUT):
        async with (
            websockets_server(named, subprotocols=["chat", "v2"]) as port,
            duplex.Client() as http,
        ):
            url = f"ws://127.0.0.1:{port}/"
            async with http.websocket(url, subprotocols=["mqtt", "v2"]) as ws:
                assert ws.subprotocol == "v2"
                assert await ws.receive() == "v2"


async def test_compress_is_agreed_with_websockets_and_off_without_it() -> None:
    agreed: list[list[str]] = []

    async def note(ws: ServerConnection) -> None:
        agreed.append([extension.name for extension in ws.protocol.extensions])
        await echo(ws)

    text = "squeeze me " * 5000
    with trio.fail_after(TIMEOUT):
        async with websockets_server(note) as port, duplex.Client() as http:
            url = f"ws://127.0.0.1:{port}/"
            async with http.websocket(url, compress=True) as ws:
                assert ws.compressed
                await ws.send(text)
                assert await ws.receive() == text
            async with http.websocket(url) as ws:
                assert not ws.compressed
                await ws.send(text)
                assert await ws.receive() == text
    assert agreed == [["permessage-deflate"], []]


async def test_a_compressed_message_over_max_message_size_closes_with_1009() -> None:
    async def bomb(ws: ServerConnection) -> None:
        await ws.send(bytes(16 << 20))
        await ws.wait_closed()

    with trio.fail_after(TIMEOUT * 3):
        async with websockets_server(bomb) as port, duplex.Client() as http:
            url = f"ws://127.0.0.1:{port}/"
            async with http.websocket(url, compress=True, max_message_size=1 << 20) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.receive()
    assert closed.value.code == 1009
    status = ws.close_status
    assert status is not None and (status.kind, status.code) == ("error", 1009)


async def test_headers_reach_the_server() -> None:
    async def tell(ws: ServerConnection) -> None:
        assert ws.request is not None
        await ws.send(f"{ws.request.headers['x-token']} {ws.request.headers['user-agent']}")

    with trio.fail_after(TIMEOUT):
        async with websockets_server(tell) as port, duplex.Client() as http:
            url = f"ws://127.0.0.1:{port}/"
            async with http.websocket(url, headers={"x-token": "t0k3n"}) as ws:
                assert await ws.receive() == f"t0k3n duplex/{duplex.__version__}"


async def test_wss_through_the_clients_tls_context() -> None:
    ca, server_context = tls_contexts()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with trio.fail_after(TIMEOUT):
        async with (
            websockets_server(echo, ssl=server_context) as port,
            duplex.Client(ssl_context=client_context) as http,
        ):
            url = f"wss://localhost:{port}/"
            async with http.websocket(url) as ws:
                await ws.send("over TLS")
                assert await ws.receive() == "over TLS"


async def test_wss_refuses_a_certificate_it_does_not_trust() -> None:
    _, server_context = tls_contexts()
    with trio.fail_after(TIMEOUT):
        async with websockets_server(echo, ssl=server_context) as port, duplex.Client() as http:
            with pytest.raises(duplex.ProtocolError, match="TLS"):
                async with http.websocket(f"wss://localhost:{port}/"):
                    pass


async def test_wss_from_an_http2_client_to_a_server_without_http2_is_an_upgrade() -> None:
    ca, server_context = tls_contexts()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with trio.fail_after(TIMEOUT):
        async with (
            websockets_server(echo, ssl=server_context) as port,
            duplex.Client(ssl_context=client_context, http2=True) as http,
        ):
            url = f"wss://localhost:{port}/"
            async with http.websocket(url) as ws:
                await ws.send("over HTTP/1.1")
                assert await ws.receive() == "over HTTP/1.1"


# -- the handshake's errors and bounds ---------------------------------------------------


async def test_a_url_that_is_not_websocket_is_refused() -> None:
    async with duplex.Client() as http:
        with pytest.raises(ValueError, match="ftp"):
            async with http.websocket("ftp://127.0.0.1/"):
                pass


async def test_a_refusal_carries_its_status_and_body() -> None:
    async def plain(request: duplex.Request) -> duplex.Response:
        return duplex.Response(403, body=b"no WebSockets for you")

    with trio.fail_after(TIMEOUT):
        async with serving(plain) as server, duplex.Client() as http:
            with pytest.raises(HandshakeRefused) as refused:
                async with http.websocket(f"ws://127.0.0.1:{server.port}/"):
                    pass
    assert refused.value.status == 403
    assert refused.value.body == b"no WebSockets for you"


async def test_a_server_that_never_answers_the_handshake_times_out() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    limits = duplex.ClientLimits(read_timeout=0.5)
    with trio.fail_after(TIMEOUT):
        async with listeners[0], duplex.Client(limits=limits) as http:
            with pytest.raises(duplex.Timeout) as expired:
                async with http.websocket(f"ws://127.0.0.1:{port}/"):
                    pass
    assert expired.value.phase == "read"


async def test_an_endless_answer_head_is_cut_at_max_response_header_size() -> None:
    async def endless(stream: trio.SocketStream) -> None:
        await stream.receive_some()  # the request: unread, it would make the close a reset
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\n")
            for _ in range(1000):
                await stream.send_all(b"X-Filler: " + b"a" * 1000 + b"\r\n")
            await trio.sleep_forever()

    limits = duplex.ClientLimits(max_response_header_size=16384)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, endless, 0)
            port = listeners[0].socket.getsockname()[1]
            async with duplex.Client(limits=limits) as http:
                with pytest.raises(duplex.ProtocolError, match="16384"):
                    async with http.websocket(f"ws://127.0.0.1:{port}/"):
                        pass
            nursery.cancel_scope.cancel()


# -- against duplex's own server ---------------------------------------------------------


async def test_duplex_client_and_channel_talk_and_close() -> None:
    opened = Opened()
    closes = CloseRecorder()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            on_open=opened,
            on_receive=lambda channel, message: channel.send(message),
            on_close=closes,
        )

    with trio.fail_after(TIMEOUT):
        async with (
            serving(handler) as server,
            duplex.Client(base_url=f"http://127.0.0.1:{server.port}") as http,
        ):
            async with http.websocket("/ws") as ws:
                for number in range(10):
                    await ws.send(str(number))
                assert [await ws.receive() for _ in range(10)] == [str(n) for n in range(10)]
                await ws.send(b"bytes")
                assert await ws.receive() == b"bytes"
                await ws.close(4002, "finished")
            await closes.called.wait()
    assert closes.statuses == [duplex.CloseStatus("client", 4002, "finished")]


async def test_a_channel_closing_ends_the_clients_iteration() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        async def greet(channel: duplex.Channel) -> None:
            await channel.send("one")
            await channel.send("two", close=True)

        return duplex.channel(request, on_open=greet)

    with trio.fail_after(TIMEOUT):
        async with (
            serving(handler) as server,
            duplex.Client() as http,
            http.websocket(f"ws://127.0.0.1:{server.port}/") as ws,
        ):
            assert [message async for message in ws] == ["one", "two"]
    assert ws.close_status == duplex.CloseStatus("server", 1000, "")


async def test_a_server_shutdown_reaches_the_client_as_1001() -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_receive=lambda channel, message: channel.send(message))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server: duplex.Server = await nursery.start(duplex.serve, handler, "127.0.0.1", 0)
            async with (
                duplex.Client() as http,
                http.websocket(f"ws://127.0.0.1:{server.port}/") as ws,
            ):
                await ws.send("x")
                assert await ws.receive() == "x"
                nursery.start_soon(server.shutdown, 5)
                with pytest.raises(ConnectionClosed):
                    await ws.receive()
    status = ws.close_status
    assert status is not None and (status.kind, status.code) == ("shutdown", 1001)


async def test_pings_from_the_server_are_answered() -> None:
    opened = Opened()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened, ping_interval=0.05)

    with trio.fail_after(TIMEOUT):
        async with (
            serving(handler) as server,
            duplex.Client() as http,
            http.websocket(f"ws://127.0.0.1:{server.port}/") as ws,
        ):
            channel = await opened.one()
            # Several ping intervals pass; an unanswered ping would close the channel.
            with trio.move_on_after(0.5):
                await ws.receive()
            assert channel.is_open
            await ws.ping()


# -- over HTTP/2 (RFC 8441) --------------------------------------------------------------


def versioned(**options: Any) -> duplex.Handler:
    """A channel that echoes each message behind the HTTP version and subprotocol."""

    async def handler(request: duplex.Request) -> duplex.Response:
        version = request.http_version

        async def echo_version(channel: duplex.Channel, message: str | bytes) -> None:
            await channel.send(f"{version} {channel.subprotocol}: {message!s}")

        if request.path != "/ws":
            return duplex.Response(200, body=b"plain")
        return duplex.channel(request, on_receive=echo_version, **options)

    return handler


async def test_an_http2_client_opens_its_websocket_as_a_stream_over_tls() -> None:
    ca, server_context = tls_contexts()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with trio.fail_after(TIMEOUT):
        async with (
            serving_h2(versioned(), ssl_context=server_context) as server,
            duplex.Client(ssl_context=client_context, http2=True) as http,
        ):
            response = await http.get(f"https://localhost:{server.port}/")
            assert await response.read() == b"plain"
            async with http.websocket(f"wss://localhost:{server.port}/ws") as ws:
                await ws.send("hi")
                assert await ws.receive() == "2 None: hi"
            assert http.pool.http2_connections() == 1


async def test_over_h2c_subprotocol_compression_and_close_codes_hold() -> None:
    closes = CloseRecorder()
    handler = versioned(subprotocols=["chat"], compress=True, on_close=closes)
    text = "over HTTP/2 " * 2000
    with trio.fail_after(TIMEOUT):
        async with (
            serving(handler) as server,
            duplex.Client(http2="prior-knowledge") as http,
        ):
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with http.websocket(url, subprotocols=["mqtt", "chat"], compress=True) as ws:
                assert (ws.subprotocol, ws.compressed) == ("chat", True)
                await ws.send(text)
                assert await ws.receive() == f"2 chat: {text}"
                await ws.close(4003, "enough")
            await closes.called.wait()
    assert ws.close_status == duplex.CloseStatus("client", 4003, "enough")
    assert closes.statuses == [duplex.CloseStatus("client", 4003, "enough")]


async def test_websockets_over_one_http2_connection_do_not_wait_for_each_other() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serving(versioned()) as server,
            duplex.Client(http2="prior-knowledge") as http,
        ):
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with http.websocket(url) as first, http.websocket(url) as second:
                await second.send("b")
                assert await second.receive() == "2 None: b"
                await first.send("a")
                assert await first.receive() == "2 None: a"
            assert http.pool.http2_connections() == 1


async def test_a_refusal_over_http2_carries_its_status_and_body() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serving(versioned(subprotocols=["chat"])) as server,
            duplex.Client(http2="prior-knowledge") as http,
        ):
            url = f"ws://127.0.0.1:{server.port}/ws"
            with pytest.raises(HandshakeRefused) as refused:
                async with http.websocket(url, subprotocols=["mqtt"]):
                    pass
            # The connection stays up for others.
            async with http.websocket(url) as ws:
                await ws.send("still")
                assert await ws.receive() == "2 None: still"
    assert refused.value.status == 400
    assert b"supported: chat" in refused.value.body


async def test_a_message_over_max_message_size_over_http2_closes_with_1009() -> None:
    async def bomber(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            compress=True,
            max_message_size=64 << 20,
            on_open=lambda channel: channel.send(bytes(16 << 20)),
        )

    with trio.fail_after(TIMEOUT * 3):
        async with (
            serving(bomber) as server,
            duplex.Client(http2="prior-knowledge") as http,
        ):
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with http.websocket(url, compress=True, max_message_size=1 << 20) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.receive()
    assert closed.value.code == 1009


async def test_without_extended_connect_an_http2_client_falls_back_to_an_upgrade(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server whose SETTINGS do not enable extended CONNECT gets HTTP/1.1's Upgrade on
    a connection of its own; the HTTP/2 connection stays for requests."""

    class WithoutExtendedConnect(h2.settings.Settings):
        def __init__(self, client: bool = True, initial_values: Any = None) -> None:
            if not client and initial_values:
                code = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
                initial_values = {
                    key: value for key, value in initial_values.items() if key != code
                }
            super().__init__(client, initial_values)

    monkeypatch.setattr(h2.settings, "Settings", WithoutExtendedConnect)
    with trio.fail_after(TIMEOUT):
        async with (
            serving(versioned()) as server,
            duplex.Client(http2="prior-knowledge") as http,
        ):
            response = await http.get(f"http://127.0.0.1:{server.port}/")
            assert response.http_version == "2"
            await response.read()
            async with http.websocket(f"ws://127.0.0.1:{server.port}/ws") as ws:
                await ws.send("hi")
                assert await ws.receive() == "1.1 None: hi"
            assert http.pool.http2_connections() == 1
