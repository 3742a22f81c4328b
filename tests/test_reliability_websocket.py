"""Hostile WebSocket peers, with frames built by hand on a raw socket: oversize messages,
protocol violations, invalid UTF-8, fragment and ping floods, compression nobody agreed
on, and handshakes the server refuses.

tests/test_channel_websocket.py covers a well-behaved client (the ``websockets``
package), including a small message over ``max_message_size``.
"""

from __future__ import annotations

import socket
import struct
import tracemalloc

import pytest
import trio
import trio.testing

import duplex
from _channel_support import CloseRecorder, Opened
from _reliability_support import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    UPGRADE,
    Frame,
    RawWebSocket,
    frame,
    wait_until,
)
from _server_support import RawClient, request_bytes, serving
from duplex.channels._websocket import FRAME_ALLOWANCE


def echo_channel(
    closes: CloseRecorder | None = None,
    opened: Opened | None = None,
    *,
    max_message_size: int = 1 << 20,
) -> duplex.Handler:
    """A WebSocket channel that echoes every message; it sends no pings of its own."""

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            on_open=opened,
            on_receive=lambda channel, message: channel.send(message),
            on_close=closes,
            max_message_size=max_message_size,
            ping_interval=None,
        )

    return handler


async def test_a_frame_announcing_more_than_max_message_size_closes_with_1009_early() -> None:
    closes = CloseRecorder()
    limit = 65536
    sent = 0
    with trio.fail_after(5):
        async with (
            serving(echo_channel(closes, max_message_size=limit)) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            header = frame(BINARY, b"")[:1] + b"\xff" + (100 << 20).to_bytes(8, "big")
            await ws.send(header + b"\x00\x00\x00\x00")  # the mask key: payload sent as is
            piece = b"x" * 16384
            try:
                while not ws.has_input():
                    await ws.send(piece)
                    sent += len(piece)
            except trio.BrokenResourceError:
                pass  # the server hung up with our bytes unread: a reset
            code = await ws.read_close_code()
            await closes.called.wait()
    assert code == 1009
    assert closes.statuses == [duplex.CloseStatus("error", 1009, closes.statuses[0].reason)]
    # The server gave up after about a message's worth, not after the 100 MiB announced.
    assert sent < 1 << 20


async def test_a_message_fragmented_past_max_message_size_closes_with_1009() -> None:
    closes = CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(echo_channel(closes, max_message_size=1000)) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            flood = frame(TEXT, b"a", fin=False) + frame(CONTINUATION, b"a", fin=False) * 1000
            await ws.send(flood)
            code = await ws.read_close_code()
            await closes.called.wait()
    assert code == 1009
    assert [status.code for status in closes.statuses] == [1009]


VIOLATIONS = {
    "unmasked-frame": frame(TEXT, b"hi", mask=False),
    "reserved-bit-without-extension": frame(TEXT, b"hi", rsv=0b100),
    "control-frame-over-125-bytes": frame(PING, b"p" * 126),
    "fragmented-control-frame": frame(PING, b"p", fin=False),
    "continuation-without-start": frame(CONTINUATION, b"x"),
    "reserved-opcode": frame(0x3, b"x"),
}


@pytest.mark.parametrize("violation", VIOLATIONS.values(), ids=VIOLATIONS.keys())
async def test_a_protocol_violation_closes_the_channel_with_1002_once(violation: bytes) -> None:
    closes = CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(echo_channel(closes)) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            await ws.send(violation)
            await closes.called.wait()
            await ws.read_close_code()  # the server hangs up
            await wait_until(lambda: server.connection_count == 0)
    assert [(status.kind, status.code) for status in closes.statuses] == [("error", 1002)]


INVALID_UTF8 = {
    "whole": [frame(TEXT, b"ok \xff\xfe")],
    "split-across-fragments": [
        frame(TEXT, b"ok \xe2\x82", fin=False),
        frame(CONTINUATION, b"\x28"),  # not a continuation byte
    ],
    "truncated-at-the-end": [frame(TEXT, b"ok \xe2\x82")],
}


@pytest.mark.parametrize("frames", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
async def test_invalid_utf8_in_a_text_message_closes_the_channel_with_1007(
    frames: list[bytes],
) -> None:
    closes = CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(echo_channel(closes)) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            await ws.send(b"".join(frames))
            await closes.called.wait()
    assert [(status.kind, status.code) for status in closes.statuses] == [("error", 1007)]


@pytest.mark.parametrize("violation", VIOLATIONS.values(), ids=VIOLATIONS.keys())
async def test_a_protocol_violation_gets_a_close_frame_with_1002(violation: bytes) -> None:
    with trio.fail_after(5):
        async with (
            serving(echo_channel()) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            await ws.send(violation)
            assert await ws.read_close_code() == 1002
            assert await ws.read_frame() is None  # then the server hangs up


@pytest.mark.parametrize("frames", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
async def test_invalid_utf8_gets_a_close_frame_with_1007(frames: list[bytes]) -> None:
    with trio.fail_after(5):
        async with (
            serving(echo_channel()) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            await ws.send(b"".join(frames))
            assert await ws.read_close_code() == 1007
            assert await ws.read_frame() is None  # then the server hangs up


async def test_a_flood_of_empty_fragments_keeps_memory_flat_and_the_message_whole() -> None:
    flood = frame(CONTINUATION, b"", fin=False) * 5_000
    with trio.fail_after(10):
        async with (
            serving(echo_channel()) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            await ws.send(frame(TEXT, b"first half, ", fin=False))
            await trio.testing.wait_all_tasks_blocked()
            tracemalloc.start()
            try:
                before, _ = tracemalloc.get_traced_memory()
                for _ in range(2):
                    await ws.send(flood)
                    await trio.testing.wait_all_tasks_blocked()
                after, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            await ws.send(frame(CONTINUATION, b"second half"))
            echoed = await ws.read_frame()
    # 10,000 fragments (within the allowance of a 1 MiB limit: 16,384): even a pointer
    # kept for each would be 80 KiB.
    assert after - before < 32 * 1024
    assert echoed is not None
    assert (echoed.opcode, echoed.payload) == (TEXT, b"first half, second half")


async def test_fragments_past_the_allowance_of_max_message_size_close_with_1009() -> None:
    closes = CloseRecorder()
    limit = 65536
    fragments = limit // FRAME_ALLOWANCE + 1  # each counts FRAME_ALLOWANCE bytes, empty or not
    with trio.fail_after(5):
        async with (
            serving(echo_channel(closes, max_message_size=limit)) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            await ws.send(frame(TEXT, b"", fin=False))
            await ws.send(frame(CONTINUATION, b"", fin=False) * fragments)
            code = await ws.read_close_code()
            await closes.called.wait()
    assert code == 1009
    assert [(status.kind, status.code) for status in closes.statuses] == [("error", 1009)]


MESSAGES = {
    # Cut inside "é" and inside "✓": the pieces are not valid UTF-8 on their own.
    "text": (TEXT, "héllo ✓ wörld".encode(), (2, 8)),
    "binary": (BINARY, bytes(range(256)) * 4, (1, 700)),
}


@pytest.mark.parametrize(("opcode", "payload", "cuts"), MESSAGES.values(), ids=MESSAGES.keys())
async def test_a_fragmented_message_sent_one_byte_at_a_time_arrives_whole(
    opcode: int, payload: bytes, cuts: tuple[int, int]
) -> None:
    first, second = cuts
    data = (
        frame(opcode, payload[:first], fin=False)
        + frame(CONTINUATION, payload[first:second], fin=False)
        + frame(CONTINUATION, payload[second:])
    )
    with trio.fail_after(10):
        async with (
            serving(echo_channel()) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            for index in range(len(data)):
                await ws.send(data[index : index + 1])
                await trio.testing.wait_all_tasks_blocked()  # the server reads each alone
            echoed = await ws.read_frame()
    assert echoed is not None
    assert (echoed.opcode, echoed.payload, echoed.fin) == (opcode, payload, True)


async def test_frames_sent_along_with_the_handshake_are_not_lost() -> None:
    with trio.fail_after(5):
        async with serving(echo_channel()) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                handshake = request_bytes("/ws", headers=UPGRADE)
                await stream.send_all(handshake + frame(TEXT, b"early") + frame(TEXT, b"bird"))
                data = b""
                while data.count(b"early") + data.count(b"bird") < 2:
                    more = await stream.receive_some(65536)
                    assert more, data
                    data += more
    head, _, frames = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert frames == frame(TEXT, b"early", mask=False) + frame(TEXT, b"bird", mask=False)


async def test_a_client_close_frame_is_answered_with_its_code_then_the_server_hangs_up() -> None:
    closes = CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(echo_channel(closes)) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            await ws.send(frame(CLOSE, struct.pack("!H", 4001) + b"bye"))
            answer = await ws.read_frame()
            assert await ws.read_frame() is None
            await closes.called.wait()
    assert answer == Frame(CLOSE, struct.pack("!H", 4001) + b"bye")
    assert closes.statuses == [duplex.CloseStatus("client", 4001, "bye")]


async def test_a_client_that_takes_nothing_for_the_write_timeout_is_closed_as_gone() -> None:
    closes = CloseRecorder()

    async def flood(channel: duplex.Channel) -> None:
        for _ in range(256):  # 16 MiB: more than any socket buffers
            await channel.send(b"x" * 65536)

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=flood, on_close=closes, ping_interval=None)

    with trio.fail_after(5):
        async with (
            serving(handler, limits=duplex.Limits(write_timeout=0.2)) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            ws.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await closes.called.wait()
    assert [(status.kind, status.code) for status in closes.statuses] == [("gone", 1006)]
    assert "the peer took less than" in closes.statuses[0].reason


async def test_a_ping_flood_from_a_peer_that_reads_nothing_is_pushed_back() -> None:
    batch = frame(PING, b"p" * 125) * 100
    sent = 0
    with trio.fail_after(10):
        async with (
            serving(echo_channel()) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            ws.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            ws.stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)

            async def flood() -> None:
                nonlocal sent
                while True:
                    await ws.send(batch)
                    sent += len(batch)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                # Every task blocked for a while: the server no longer reads our pings.
                await trio.testing.wait_all_tasks_blocked(cushion=0.3)
                nursery.cancel_scope.cancel()
    assert sent < 4 << 20


async def test_a_ping_flood_gets_every_pong_and_the_connection_keeps_working() -> None:
    batch = frame(PING, b"p" * 125) * 100
    batches = 50
    with trio.fail_after(10):
        async with (
            serving(echo_channel()) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ws.send, batch * batches)
                pongs = 0
                while pongs < batches * 100:
                    received = await ws.read_frame()
                    assert received is not None
                    assert (received.opcode, received.payload) == (PONG, b"p" * 125)
                    pongs += 1
            await ws.send(frame(TEXT, b"still here"))
            echoed = await ws.read_frame()
    assert echoed is not None
    assert echoed.payload == b"still here"


async def test_permessage_deflate_offered_by_the_client_is_not_negotiated() -> None:
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    with trio.fail_after(5):
        async with (
            serving(echo_channel()) as server,
            await RawWebSocket.connect(server.port, extra=offer) as ws,
        ):
            await ws.send(frame(TEXT, b"plain"))
            echoed = await ws.read_frame()
    assert ws.status == 101
    assert ws.header("sec-websocket-extensions") is None
    assert echoed is not None
    assert echoed.payload == b"plain"


REFUSED_HANDSHAKES = {
    "no-key": (request_bytes("/ws", headers=UPGRADE.replace("Sec-WebSocket-Key", "X-Key")), 400),
    "version-8": (
        request_bytes("/ws", headers=UPGRADE.replace("Version: 13", "Version: 8")),
        426,
    ),
    "no-connection-upgrade": (
        request_bytes("/ws", headers=UPGRADE.replace("Connection: Upgrade", "Connection: x")),
        400,
    ),
    "with-a-body": (request_bytes("/ws", method="POST", headers=UPGRADE, body=b"hello"), 400),
    # Refused by wsproto's own checks, which the request is replayed through:
    "upgrade-to-two-protocols": (
        request_bytes("/ws", headers=UPGRADE.replace("websocket", "websocket, h2c")),
        400,
    ),
    "http-1.0-without-host": (f"GET /ws HTTP/1.0\r\n{UPGRADE}\r\n".encode(), 400),
}


@pytest.mark.parametrize(
    ("data", "status"), REFUSED_HANDSHAKES.values(), ids=REFUSED_HANDSHAKES.keys()
)
async def test_a_handshake_the_server_refuses_gets_its_status_and_a_close(
    data: bytes, status: int
) -> None:
    with trio.fail_after(5):
        async with (
            serving(echo_channel()) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(data + request_bytes("/smuggled"))
            response = await client.read_response()
            await client.expect_closed()
    assert response.status == status


@pytest.mark.parametrize(
    ("data", "status"), REFUSED_HANDSHAKES.values(), ids=REFUSED_HANDSHAKES.keys()
)
async def test_a_handshake_the_server_refuses_ends_its_exchange_and_closes_the_channel(
    data: bytes, status: int
) -> None:
    closes = CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(echo_channel(closes)) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(data)
            assert (await client.read_response()).status == status
            await client.expect_closed()
            with trio.move_on_after(0.5):
                await wait_until(lambda: server.connection_count == 0)
            assert server.connection_count == 0
    assert len(closes.statuses) == 1
