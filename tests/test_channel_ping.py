"""WebSocket keep-alive: duplex pings, and a client that stops answering is gone."""

from __future__ import annotations

import pytest
import trio

import duplex
from _channel_support import CloseRecorder, serving
from _protocol_support import WebSocketPeer
from _reliability_support import PING, PONG, RawWebSocket, frame

INTERVAL = 0.1


def pinging(closes: CloseRecorder) -> duplex.Handler:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_close=closes, ping_interval=INTERVAL)

    return handler


async def test_the_server_pings_and_a_client_that_answers_stays_open() -> None:
    closes = CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(pinging(closes)) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            assert ws.status == 101
            for _ in range(3):
                ping = await ws.read_frame()
                assert ping is not None and ping.opcode == PING
                await ws.send(frame(PONG, ping.payload))
            assert closes.statuses == []  # three intervals answered: still open


async def test_a_client_that_stops_answering_pings_is_closed_as_gone() -> None:
    closes = CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(pinging(closes)) as server,
            await RawWebSocket.connect(server.port) as ws,
        ):
            ping = await ws.read_frame()
            assert ping is not None and ping.opcode == PING  # and never answered
            await closes.called.wait()
    assert [status.kind for status in closes.statuses] == ["gone"]
    assert closes.statuses[0].reason == "no answer to ping"


# -- over both protocols (conftest's both_protocols): wsproto as the client, over the
# -- HTTP/1.1 Upgrade or an extended CONNECT over h2c


@pytest.mark.both_protocols
async def test_a_client_of_either_protocol_that_answers_pings_stays_open(protocol: str) -> None:
    closes = CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(pinging(closes)) as server,
            WebSocketPeer.connect(server.port, protocol) as ws,
        ):
            for _ in range(3):
                await ws.next_ping()
            assert closes.statuses == []  # three intervals answered: still open


@pytest.mark.both_protocols
async def test_a_client_of_either_protocol_that_stops_answering_pings_is_gone(
    protocol: str,
) -> None:
    closes = CloseRecorder()
    with trio.fail_after(5):
        async with (
            serving(pinging(closes)) as server,
            WebSocketPeer.connect(server.port, protocol) as ws,
        ):
            ws.answer_pings = False
            await ws.next_ping()
            await closes.called.wait()
    assert [status.kind for status in closes.statuses] == ["gone"]
    assert closes.statuses[0].reason == "no answer to ping"
