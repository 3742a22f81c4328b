"""A channel's queue is bounded in bytes as well as in messages: a client that never
reads holds about a megabyte by default (``max_queue_bytes``), then ``send`` waits and
``offer`` applies ``when_full``."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import duplex
from _channel_support import Opened, RawHTTP, request_bytes, serving
from _h2_support import H2Peer
from _protocol_support import exchange

MEGABYTE = 1 << 20
MESSAGE = b"x" * (128 << 10)


def channel_handler(opened: Opened, **options: Any) -> duplex.Handler:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened, **options)

    return handler


async def connect_reading_nothing(port: int) -> trio.SocketStream:
    """A client that asks for a channel and reads nothing of the answer."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(request_bytes())
    return stream


@asynccontextmanager
async def reading_nothing(port: int, protocol: str) -> AsyncIterator[None]:
    """A client of ``protocol`` that asks for a channel and reads nothing of the answer
    (over HTTP/2 it opens no window beyond the stream's first 64 KiB); it leaves on the
    way out."""
    if protocol == "h1":
        async with await connect_reading_nothing(port):
            yield
        return
    async with H2Peer.connect(port, auto_ack=False) as peer:
        await peer.request("GET", "/")
        yield


async def offer_until_refused(channel: duplex.Channel, most: int) -> tuple[int, int]:
    """Offer ``MESSAGE`` until the channel refuses one (or ``most`` went in), letting it
    write what the socket takes in between; how many it took, and the most it held."""
    taken = largest = 0
    while taken < most and channel.offer(MESSAGE):
        taken += 1
        largest = max(largest, channel.queued_bytes)
        await trio.testing.wait_all_tasks_blocked()
    return taken, largest


@pytest.mark.both_protocols
async def test_a_client_that_never_reads_is_closed_as_too_slow_after_about_a_megabyte(
    protocol: str,
) -> None:
    opened = Opened()
    with trio.fail_after(10):
        async with (
            serving(channel_handler(opened)) as server,
            reading_nothing(server.port, protocol),
        ):
            channel = await opened.one()
            taken, largest = await offer_until_refused(channel, 1024)
            status = await channel.wait_closed()
    assert status.kind == "too-slow"
    assert largest <= MEGABYTE
    # About a megabyte queued, and what the sockets buffer, not 1,024 messages (128 MiB).
    assert taken < 100


@pytest.mark.both_protocols
async def test_with_drop_oldest_a_client_that_never_reads_holds_about_a_megabyte(
    protocol: str,
) -> None:
    opened = Opened()
    with trio.fail_after(10):
        async with (
            serving(channel_handler(opened, when_full="drop-oldest")) as server,
            reading_nothing(server.port, protocol),
        ):
            channel = await opened.one()
            taken, largest = await offer_until_refused(channel, 200)
            assert channel.is_open
    assert taken == 200
    assert largest <= MEGABYTE


@pytest.mark.both_protocols
async def test_max_queue_bytes_sets_the_bound(
    protocol: str,
) -> None:
    opened = Opened()
    bound = 3 * len(MESSAGE)
    with trio.fail_after(10):
        async with (
            serving(channel_handler(opened, max_queue_bytes=bound)) as server,
            reading_nothing(server.port, protocol),
        ):
            channel = await opened.one()
            _, largest = await offer_until_refused(channel, 1024)
    assert channel.close_status is not None and channel.close_status.kind == "too-slow"
    assert largest <= bound


async def test_send_waits_while_the_queue_holds_a_megabyte_then_everything_arrives() -> None:
    opened = Opened()
    sent: list[int] = []

    async def sender(channel: duplex.Channel) -> None:
        for number in range(100):
            assert await channel.send(f"{number:08d}".encode() + MESSAGE[8:])
            sent.append(number)
        await channel.close()

    with trio.fail_after(10):
        async with serving(channel_handler(opened)) as server, trio.open_nursery() as nursery:
            stream = await connect_reading_nothing(server.port)
            channel = await opened.one()
            nursery.start_soon(sender, channel)
            await trio.testing.wait_all_tasks_blocked()
            assert len(sent) < 100  # held back by the client
            assert channel.queued_bytes <= MEGABYTE
            async with RawHTTP(stream) as client:
                await client.read_head()
                body = await client.read_body()
    size = len(MESSAGE)
    numbers = [int(body[start : start + 8]) for start in range(0, len(body), size)]
    assert numbers == list(range(100))


@pytest.mark.both_protocols
async def test_a_message_larger_than_the_bound_goes_out_when_nothing_else_is_pending(
    protocol: str,
) -> None:
    opened = Opened()
    big = b"y" * (2 * MEGABYTE)
    with trio.fail_after(10):
        async with (
            serving(channel_handler(opened)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.start()
            channel = await opened.one()
            assert await channel.send(big, close=True)
            await client.read_head()
            assert await client.read_body() == big
