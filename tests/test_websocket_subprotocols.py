"""WebSocket subprotocols (DESIGN §6): a channel agrees to the first of the client's
offers, in the client's order, that it supports; ``channel.subprotocol`` says which,
already in ``on_open``; a client that offers none opens with None; one that offers only
others gets 400 naming the supported ones. Over HTTP/1.1 and HTTP/2 (RFC 8441), with
the ``websockets`` package, duplex's client and Chromium as clients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pytest
import trio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import duplex
from _channel_support import Opened, in_asyncio_thread, serving
from _h2_support import tls_contexts
from _websocket_support import handshake, in_chromium, needs_chromium
from helpers import TIMEOUT

if TYPE_CHECKING:
    from playwright.sync_api import Page

SUPPORTED = ["graphql-transport-ws", "chat"]


def speaking(
    subprotocols: Sequence[str] | None = SUPPORTED, opened: Opened | None = None
) -> duplex.Handler:
    """A channel that speaks ``subprotocols``, echoing each message with the
    subprotocol it agreed to."""

    async def echo(channel: duplex.Channel, message: str | bytes) -> None:
        await channel.send(f"{channel.subprotocol}: {message!s}")

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, subprotocols=subprotocols, on_open=opened, on_receive=echo)

    return handler


def client(port: int, subprotocols: list[str] | None) -> connect:
    return connect(
        f"ws://127.0.0.1:{port}/ws",
        proxy=None,
        subprotocols=subprotocols,  # type: ignore[arg-type]
    )


# -- the websockets package as the client ------------------------------------------------


async def test_the_first_offer_in_the_clients_order_that_the_channel_speaks_is_agreed() -> None:
    opened = Opened()
    with trio.fail_after(TIMEOUT):
        async with serving(speaking(SUPPORTED, opened)) as server:

            async def talk() -> tuple[str | None, str | bytes]:
                async with client(server.port, ["mqtt", "chat", "graphql-transport-ws"]) as ws:
                    await ws.send("hi")
                    return ws.subprotocol, await ws.recv()

            agreed, reply = await in_asyncio_thread(talk)
            channel = await opened.one()
    assert agreed == "chat"
    assert reply == "chat: hi"
    assert channel.subprotocol == "chat"


async def test_the_subprotocol_is_known_in_on_open() -> None:
    seen: list[str | None] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            subprotocols=["chat"],
            on_open=lambda channel: seen.append(channel.subprotocol),
            on_receive=lambda channel, message: channel.send(message),
        )

    with trio.fail_after(TIMEOUT):
        async with serving(handler) as server:

            async def talk() -> str | bytes:
                async with client(server.port, ["chat"]) as ws:
                    await ws.send("x")
                    return await ws.recv()

            assert await in_asyncio_thread(talk) == "x"
    assert seen == ["chat"]


async def test_a_client_that_offers_none_opens_with_none() -> None:
    opened = Opened()
    with trio.fail_after(TIMEOUT):
        async with serving(speaking(SUPPORTED, opened)) as server:

            async def talk() -> tuple[str | None, str | bytes]:
                async with client(server.port, None) as ws:
                    await ws.send("hi")
                    return ws.subprotocol, await ws.recv()

            assert await in_asyncio_thread(talk) == (None, "None: hi")
            assert (await opened.one()).subprotocol is None


async def test_only_unsupported_offers_get_400_naming_the_supported_ones() -> None:
    opened = Opened()
    with trio.fail_after(TIMEOUT):
        async with serving(speaking(SUPPORTED, opened)) as server:

            async def talk() -> tuple[int, bytes]:
                try:
                    async with client(server.port, ["mqtt", "wamp"]):
                        pass
                except InvalidStatus as refused:
                    return refused.response.status_code, bytes(refused.response.body)
                raise AssertionError("the WebSocket opened")

            status, body = await in_asyncio_thread(talk)
    assert status == 400
    assert b"graphql-transport-ws" in body and b"chat" in body
    assert b"mqtt" in body
    assert opened.channels == []


async def test_a_channel_without_subprotocols_refuses_a_client_that_needs_one() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(speaking(None)) as server:

            async def talk() -> int:
                try:
                    async with client(server.port, ["chat"]):
                        pass
                except InvalidStatus as refused:
                    return refused.response.status_code
                raise AssertionError("the WebSocket opened")

            assert await in_asyncio_thread(talk) == 400


def test_a_single_string_is_not_taken_for_a_list_of_subprotocols() -> None:
    request = duplex.Request("GET", "/", duplex.Headers(), duplex.Buffered(b""))
    with pytest.raises(TypeError, match="list of names"):
        duplex.channel(request, subprotocols="chat")


# -- raw handshakes over both protocols ---------------------------------------------------


@pytest.mark.both_protocols
async def test_the_answer_names_the_agreed_subprotocol(protocol: str) -> None:
    opened = Opened()
    with trio.fail_after(TIMEOUT):
        async with (
            serving(speaking(SUPPORTED, opened)) as server,
            handshake(
                server.port, protocol, [("Sec-WebSocket-Protocol", "mqtt, graphql-transport-ws")]
            ) as answer,
        ):
            assert answer.opened, (answer.status, answer.body)
            assert answer.headers["sec-websocket-protocol"] == "graphql-transport-ws"
            assert (await opened.one()).subprotocol == "graphql-transport-ws"


@pytest.mark.both_protocols
async def test_offers_in_several_fields_are_read_in_order(protocol: str) -> None:
    fields = [("Sec-WebSocket-Protocol", "mqtt"), ("Sec-WebSocket-Protocol", "chat, wamp")]
    with trio.fail_after(TIMEOUT):
        async with (
            serving(speaking(SUPPORTED)) as server,
            handshake(server.port, protocol, fields) as answer,
        ):
            assert answer.opened, (answer.status, answer.body)
            assert answer.headers["sec-websocket-protocol"] == "chat"


@pytest.mark.both_protocols
async def test_no_offer_gets_no_subprotocol_in_the_answer(protocol: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serving(speaking(SUPPORTED)) as server,
            handshake(server.port, protocol, []) as answer,
        ):
            assert answer.opened, (answer.status, answer.body)
            assert "sec-websocket-protocol" not in answer.headers


@pytest.mark.both_protocols
async def test_unsupported_offers_are_refused_with_400_over_either_protocol(protocol: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serving(speaking(SUPPORTED)) as server,
            handshake(server.port, protocol, [("Sec-WebSocket-Protocol", "mqtt")]) as answer,
        ):
            assert answer.status == 400
            assert "sec-websocket-protocol" not in answer.headers
            assert b"supported: graphql-transport-ws, chat" in answer.body


# -- duplex's own client -----------------------------------------------------------------


async def test_duplex_client_and_server_agree_on_a_subprotocol() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(speaking(SUPPORTED)) as server, duplex.Client() as http:
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with http.websocket(url, subprotocols=["mqtt", "chat"]) as ws:
                await ws.send("hi")
                assert await ws.receive() == "chat: hi"
            assert ws.subprotocol == "chat"


async def test_duplex_client_learns_why_its_offers_were_refused() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(speaking(SUPPORTED)) as server, duplex.Client() as http:
            url = f"ws://127.0.0.1:{server.port}/ws"
            with pytest.raises(duplex.websocket.HandshakeRefused) as refused:
                async with http.websocket(url, subprotocols=["mqtt"]):
                    pass
    assert refused.value.status == 400
    assert b"supported: graphql-transport-ws, chat" in refused.value.body
    assert "supported: graphql-transport-ws, chat" in str(refused.value)


# -- Chromium ----------------------------------------------------------------------------

PAGE = b"<!doctype html><title>subprotocols</title><p>ready</p>"

# The page opens `new WebSocket(url, ["chat"])`, sends one message and resolves with
# the subprotocol the browser saw and the reply.
OPEN_CHAT = """(path) => new Promise((resolve, reject) => {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}${path}`, ['chat']);
    socket.onopen = () => socket.send('hello');
    socket.onmessage = (event) => {
        resolve({protocol: socket.protocol, reply: event.data});
        socket.close();
    };
    socket.onerror = () => reject('websocket error');
})"""


def page_or_channel(versions: dict[str, str]) -> duplex.Handler:
    channel_handler = speaking(SUPPORTED)

    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/":
            return duplex.Response(200, {"content-type": "text/html"}, PAGE)
        versions[request.path] = request.http_version
        return await channel_handler(request)

    return handler


@needs_chromium
@pytest.mark.parametrize("over", ["http/1.1", "h2"])
async def test_chromium_opens_a_websocket_with_the_chat_subprotocol(over: str) -> None:
    versions: dict[str, str] = {}
    context = tls_contexts()[1] if over == "h2" else None

    def script(page: Page) -> dict[str, str]:
        result: dict[str, str] = page.evaluate(OPEN_CHAT, "/ws")
        return result

    with trio.fail_after(60):
        result = await in_chromium(script, page_or_channel(versions), context)
    assert result == {"protocol": "chat", "reply": "chat: hello"}
    assert versions["/ws"] == ("2" if over == "h2" else "1.1")
