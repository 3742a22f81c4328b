"""permessage-deflate (RFC 7692, DESIGN §6): off by default; ``compress=True`` accepts
the client's offer; messages under ``compress_min_size`` go uncompressed; inflation
stops at ``max_message_size``, so a deflate bomb closes with 1009 having cost no more
memory than an honest message. With the ``websockets`` package, raw frames over both
protocols, and duplex's client."""

from __future__ import annotations

import tracemalloc
import zlib
from typing import TYPE_CHECKING

import pytest
import trio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import duplex
from _channel_support import CloseRecorder, in_asyncio_thread, serving
from _h2_support import tls_contexts
from _websocket_support import (
    compressed_payload,
    frame,
    handshake,
    in_chromium,
    needs_chromium,
    read_frame,
)
from helpers import TIMEOUT

if TYPE_CHECKING:
    from playwright.sync_api import Page

DEFLATE = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")
LIMIT = 1 << 20


def echoing(
    *,
    compress: bool = True,
    max_message_size: int = LIMIT,
    compress_min_size: int = 1024,
    closes: CloseRecorder | None = None,
    greeting: list[str] | None = None,
) -> duplex.Handler:
    """A channel that echoes, after sending each of ``greeting`` when it opens."""

    async def greet(channel: duplex.Channel) -> None:
        for message in greeting or []:
            await channel.send(message)

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            compress=compress,
            compress_min_size=compress_min_size,
            max_message_size=max_message_size,
            on_open=greet,
            on_receive=lambda channel, message: channel.send(message),
            on_close=closes,
        )

    return handler


def client(port: int, **options: object) -> connect:
    return connect(f"ws://127.0.0.1:{port}/ws", proxy=None, **options)  # type: ignore[arg-type]


# -- negotiation, with the websockets package -------------------------------------------


async def test_compress_accepts_the_clients_offer_and_messages_come_back_whole() -> None:
    text = "duplex " * 10_000
    with trio.fail_after(TIMEOUT):
        async with serving(echoing()) as server:

            async def talk() -> tuple[list[str], list[str | bytes]]:
                async with client(server.port, compression="deflate") as ws:
                    replies = []
                    for message in (text, b"\x00\xff" * 5000, "short"):
                        await ws.send(message)
                        replies.append(await ws.recv())
                    return [extension.name for extension in ws.protocol.extensions], replies

            extensions, replies = await in_asyncio_thread(talk)
    assert extensions == ["permessage-deflate"]
    assert replies == [text, b"\x00\xff" * 5000, "short"]


async def test_compression_is_off_by_default() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(echoing(compress=False)) as server:

            async def talk() -> tuple[list[object], str | bytes]:
                async with client(server.port, compression="deflate") as ws:
                    await ws.send("x" * 5000)
                    return list(ws.protocol.extensions), await ws.recv()

            assert await in_asyncio_thread(talk) == ([], "x" * 5000)


async def test_a_client_that_offers_nothing_talks_uncompressed() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(echoing()) as server:

            async def talk() -> tuple[list[object], str | bytes]:
                async with client(server.port, compression=None) as ws:
                    await ws.send("y" * 5000)
                    return list(ws.protocol.extensions), await ws.recv()

            assert await in_asyncio_thread(talk) == ([], "y" * 5000)


@pytest.mark.both_protocols
async def test_the_answer_agrees_to_the_first_acceptable_offer(protocol: str) -> None:
    offers = (
        "permessage-deflate; server_max_window_bits=7, "  # out of range: declined
        "permessage-deflate; made_up_parameter, "  # unknown: declined
        "permessage-deflate; server_no_context_takeover, "
        "permessage-deflate"
    )
    with trio.fail_after(TIMEOUT):
        async with (
            serving(echoing()) as server,
            handshake(server.port, protocol, [("Sec-WebSocket-Extensions", offers)]) as answer,
        ):
            assert answer.opened, (answer.status, answer.body)
            agreed = answer.headers["sec-websocket-extensions"]
    assert agreed == "permessage-deflate; server_no_context_takeover"


@pytest.mark.both_protocols
async def test_an_offer_with_a_bad_window_size_is_declined_not_an_error(protocol: str) -> None:
    offer = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits=ten")
    with trio.fail_after(TIMEOUT):
        async with (
            serving(echoing()) as server,
            handshake(server.port, protocol, [offer]) as answer,
        ):
            assert answer.opened, (answer.status, answer.body)
            assert "sec-websocket-extensions" not in answer.headers


@pytest.mark.both_protocols
async def test_messages_under_compress_min_size_go_uncompressed(protocol: str) -> None:
    small, large = "s" * 100, "L" * 5000
    with trio.fail_after(TIMEOUT):
        async with (
            serving(echoing(compress_min_size=1024, greeting=[small, large])) as server,
            handshake(server.port, protocol, [DEFLATE]) as answer,
        ):
            assert answer.headers["sec-websocket-extensions"].startswith("permessage-deflate")
            data = b""
            frames: list[tuple[int, bool, bytes]] = []
            while len(frames) < 2:
                chunk = await answer.receive()
                assert chunk, "the connection ended"
                data += chunk
                try:
                    opcode, rsv1, payload, rest = read_frame(data)
                except (AssertionError, IndexError):
                    continue  # not whole yet
                frames.append((opcode, rsv1, payload))
                data = rest
    (_, small_rsv1, small_payload), (_, large_rsv1, large_payload) = frames
    assert not small_rsv1 and small_payload == small.encode()
    assert large_rsv1 and len(large_payload) < 100


# -- the bound on inflation --------------------------------------------------------------


@pytest.mark.both_protocols
async def test_a_raw_deflate_bomb_closes_with_1009_and_never_inflates_past_the_limit(
    protocol: str,
) -> None:
    """64 MiB of zeros compressed to about 64 KiB, in one frame: inflated, it would be
    64 times the limit; the server stops at the limit and fails the connection."""
    bomb = frame(0x2, compressed_payload(64 << 20), rsv1=True)
    assert len(bomb) < 128 << 10
    closes = CloseRecorder()
    with trio.fail_after(TIMEOUT * 3):
        async with (
            serving(echoing(max_message_size=LIMIT, closes=closes)) as server,
            handshake(server.port, protocol, [DEFLATE]) as answer,
        ):
            assert answer.headers["sec-websocket-extensions"].startswith("permessage-deflate")
            tracemalloc.start()
            try:
                await answer.send(bomb)
                data = b""
                while not data or len(data) < 2 + (data[1] & 0x7F):
                    chunk = await answer.receive()
                    assert chunk, "the connection ended without a close frame"
                    data += chunk
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            opcode, _, payload, _ = read_frame(data)
            await closes.called.wait()
    assert peak < 8 * LIMIT, f"{peak} bytes at the peak"
    assert opcode == 0x8
    assert int.from_bytes(payload[:2], "big") == 1009
    assert b"once inflated" in payload
    assert closes.statuses[0].code == 1009
    assert closes.statuses[0].kind == "error"


async def test_a_compressed_message_over_the_limit_from_websockets_closes_with_1009() -> None:
    """The websockets package compresses 16 MiB of zeros into a small frame."""
    closes = CloseRecorder()
    with trio.fail_after(TIMEOUT * 3):
        async with serving(echoing(max_message_size=LIMIT, closes=closes)) as server:

            async def talk() -> int | None:
                async with client(server.port, compression="deflate", max_size=None) as ws:
                    await ws.send(bytes(16 << 20))
                    try:
                        await ws.recv()
                    except ConnectionClosed as closed:
                        return closed.rcvd.code if closed.rcvd else None
                raise AssertionError("the message came back")

            assert await in_asyncio_thread(talk, timeout=TIMEOUT * 3) == 1009
            await closes.called.wait()
    assert closes.statuses[0].code == 1009


@pytest.mark.both_protocols
async def test_a_bomb_spread_over_fragments_is_bounded_per_message(protocol: str) -> None:
    payload = compressed_payload(4 << 20)
    third = len(payload) // 3
    pieces = [payload[:third], payload[third : 2 * third], payload[2 * third :]]
    fragments = (
        frame(0x2, pieces[0], rsv1=True, fin=False)
        + frame(0x0, pieces[1], fin=False)
        + frame(0x0, pieces[2])
    )
    with trio.fail_after(TIMEOUT):
        async with (
            serving(echoing(max_message_size=LIMIT)) as server,
            handshake(server.port, protocol, [DEFLATE]) as answer,
        ):
            await answer.send(fragments)
            data = b""
            while not data or len(data) < 2 + (data[1] & 0x7F):
                chunk = await answer.receive()
                assert chunk, "the connection ended without a close frame"
                data += chunk
            opcode, _, close_payload, _ = read_frame(data)
    assert opcode == 0x8
    assert int.from_bytes(close_payload[:2], "big") == 1009


@pytest.mark.both_protocols
async def test_messages_just_under_the_limit_inflate_one_after_another(protocol: str) -> None:
    """The bound is per message: many compressed messages of nearly the limit each, with
    the compression context kept between them, all pass."""
    limit = 64 << 10
    texts = [bytes([65 + number]) * (limit - 10) for number in range(5)]
    with trio.fail_after(TIMEOUT):
        async with (
            serving(echoing(max_message_size=limit, compress_min_size=1 << 30)) as server,
            handshake(server.port, protocol, [DEFLATE]) as answer,
        ):
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            for text in texts:
                deflated = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
                await answer.send(frame(0x1, deflated[:-4], rsv1=True))
            echoed: list[bytes] = []
            data = b""
            while len(echoed) < len(texts):
                chunk = await answer.receive()
                assert chunk, "the connection ended"
                data += chunk
                while True:
                    try:
                        opcode, _, payload, data = read_frame(data)
                    except (AssertionError, IndexError):
                        break
                    assert opcode == 0x1, (opcode, payload[:50])
                    echoed.append(payload)
    assert echoed == texts


# -- duplex's client on both sides -------------------------------------------------------


async def test_duplex_client_and_server_both_compress() -> None:
    text = "compressible " * 20_000
    with trio.fail_after(TIMEOUT):
        async with serving(echoing()) as server, duplex.Client() as http:
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with http.websocket(url, compress=True) as ws:
                assert ws.compressed
                await ws.send(text)
                assert await ws.receive() == text
                await ws.send(b"tiny")
                assert await ws.receive() == b"tiny"


async def test_duplex_client_without_compress_offers_nothing() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(echoing()) as server, duplex.Client() as http:
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with http.websocket(url) as ws:
                assert not ws.compressed
                await ws.send("plain " * 1000)
                assert await ws.receive() == "plain " * 1000


async def test_a_bomb_from_the_server_closes_duplex_client_with_1009() -> None:
    async def bomber(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            compress=True,
            max_message_size=64 << 20,
            on_open=lambda channel: channel.send(bytes(32 << 20)),
        )

    with trio.fail_after(TIMEOUT * 3):
        async with serving(bomber) as server, duplex.Client() as http:
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with http.websocket(url, compress=True, max_message_size=LIMIT) as ws:
                with pytest.raises(duplex.websocket.ConnectionClosed) as closed:
                    await ws.receive()
    assert closed.value.code == 1009
    assert ws.close_status == duplex.CloseStatus("error", 1009, closed.value.reason)


# -- Chromium ----------------------------------------------------------------------------

# The page opens a WebSocket, sends a long and a short message and resolves with the
# extensions the browser agreed to and the lengths of the echoes.
ECHO_TWO = """(path) => new Promise((resolve, reject) => {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}${path}`);
    const lengths = [];
    socket.onopen = () => { socket.send('chromium '.repeat(5000)); socket.send('hi'); };
    socket.onmessage = (event) => {
        lengths.push(event.data.length);
        if (lengths.length === 2) {
            resolve({extensions: socket.extensions, lengths});
            socket.close();
        }
    };
    socket.onerror = () => reject('websocket error');
})"""


@needs_chromium
@pytest.mark.parametrize("over", ["http/1.1", "h2"])
async def test_chromium_agrees_to_compression_and_gets_its_messages_back(over: str) -> None:
    page = b"<!doctype html><title>deflate</title><p>ready</p>"
    channel = echoing()

    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/":
            return duplex.Response(200, {"content-type": "text/html"}, page)
        return await channel(request)

    def script(page: Page) -> dict[str, object]:
        result: dict[str, object] = page.evaluate(ECHO_TWO, "/ws")
        return result

    context = tls_contexts()[1] if over == "h2" else None
    with trio.fail_after(60):
        result = await in_chromium(script, handler, context)
    assert str(result["extensions"]).startswith("permessage-deflate")
    assert result["lengths"] == [len("chromium ") * 5000, 2]
