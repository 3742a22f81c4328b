"""What the WebSocket negotiation and client tests share: a raw opening handshake over
either protocol (the HTTP/1.1 Upgrade, or an extended CONNECT over h2c) that shows the
answer as it is, raw frames (a deflate bomb among them), and a ``websockets`` server
run in a thread with its own asyncio loop.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import pytest
import trio
from websockets.asyncio.server import ServerConnection, serve
from wsproto.frame_protocol import XorMaskerSimple

import duplex
from _protocol_support import H1Exchange, H2Exchange, exchange
from test_demo_browser import CHROMIUM, CHROMIUM_ARGS

__all__ = [
    "Handshake",
    "compressed_payload",
    "frame",
    "handshake",
    "in_chromium",
    "needs_chromium",
    "read_frame",
    "websockets_server",
]

T = TypeVar("T")

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium")


@dataclass
class Handshake:
    """The server's answer to a raw opening handshake, and the exchange it came on."""

    raw: H1Exchange | H2Exchange
    status: int
    headers: dict[str, str]
    #: The body of a refusal (empty once the WebSocket opened).
    body: bytes

    @property
    def opened(self) -> bool:
        return self.status == (101 if isinstance(self.raw, H1Exchange) else 200)

    async def send(self, data: bytes) -> None:
        """Raw bytes on the WebSocket: on the socket, or as the stream's DATA."""
        if isinstance(self.raw, H1Exchange):
            await self.raw.stream.send_all(data)
        else:
            await self.raw.send(data)

    async def receive(self) -> bytes:
        """What came next (``b""`` at the end): buffered bytes first over HTTP/1.1."""
        if isinstance(self.raw, H2Exchange):
            return await self.raw.read_chunk()
        if self.raw.buffer:
            data = bytes(self.raw.buffer)
            self.raw.buffer.clear()
            return data
        try:
            return await self.raw.stream.receive_some(65536)
        except trio.BrokenResourceError:
            return b""


@asynccontextmanager
async def handshake(
    port: int, protocol: str, fields: list[tuple[str, str]], path: str = "/ws"
) -> AsyncIterator[Handshake]:
    """Open a WebSocket on ``port`` over ``protocol`` ("h1" or "h2") with the extra
    request ``fields``; the answer, whether it opened or not."""
    async with exchange(port, protocol) as raw:
        if isinstance(raw, H1Exchange):
            key = base64.b64encode(os.urandom(16)).decode()
            lines = "".join(f"{name}: {value}\r\n" for name, value in fields)
            await raw.start(
                path,
                headers=(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{lines}"
                ),
            )
            await raw.read_head()
            body = b"" if raw.status == 101 else await raw.read_body()
            yield Handshake(raw, raw.status, raw.headers, body)
            return
        peer = raw.peer
        await peer.until(lambda: bool(peer.remote_settings))
        raw.stream_id = await peer.request(
            "CONNECT",
            path,
            [("sec-websocket-version", "13"), *fields],
            end=False,
            extra=[(b":protocol", b"websocket")],
        )
        await raw.read_head()
        body = b"" if raw.status == 200 else await raw.read_body()
        yield Handshake(raw, raw.status, raw.headers, body)


def compressed_payload(data_size: int, *, piece: bytes = b"\0" * 65536) -> bytes:
    """A permessage-deflate payload of ``data_size`` bytes of ``piece`` repeated: the
    raw deflate stream, sync-flushed, without its last 4 bytes (RFC 7692 §7.2.1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [compressor.compress(piece) for _ in range(data_size // len(piece))]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


def frame(opcode: int, payload: bytes, *, rsv1: bool = False, fin: bool = True) -> bytes:
    """One masked client frame, byte by byte (the test sends what no library would)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        head = bytes([first, 0x80 | length])
    elif length < 1 << 16:
        head = bytes([first, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + length.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + XorMaskerSimple(mask).process(bytearray(payload))


def read_frame(data: bytes) -> tuple[int, bool, bytes, bytes]:
    """The first (unmasked, server) frame of ``data``: opcode, RSV1, payload, rest;
    ``data`` must hold it whole."""
    opcode, rsv1 = data[0] & 0x0F, bool(data[0] & 0x40)
    length, start = data[1] & 0x7F, 2
    if length == 126:
        length, start = int.from_bytes(data[2:4], "big"), 4
    elif length == 127:
        length, start = int.from_bytes(data[2:10], "big"), 10
    assert len(data) >= start + length, "the frame is not whole"
    return opcode, rsv1, data[start : start + length], data[start + length :]


@asynccontextmanager
async def websockets_server(
    handler: Callable[[ServerConnection], Awaitable[None]], **options: Any
) -> AsyncIterator[int]:
    """Run a ``websockets`` server with ``handler`` on 127.0.0.1 and a free port, in a
    thread with its own asyncio loop (for at most a minute); yield the port and stop
    it on the way out."""
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        box["stop"] = partial(loop.call_soon_threadsafe, stop.set)
        async with asyncio.timeout(60):
            async with serve(handler, "127.0.0.1", 0, **options) as server:
                box["port"] = server.sockets[0].getsockname()[1]
                trio.from_thread.run_sync(started.set, trio_token=token)
                await stop.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(trio.to_thread.run_sync, lambda: asyncio.run(main()), abandon_on_cancel=True)
        )
        await started.wait()
        try:
            yield box["port"]
        finally:
            box["stop"]()


async def in_chromium(
    script: Callable[[Any], T], handler: duplex.Handler, ssl_context: ssl.SSLContext | None
) -> T:
    """Serve ``handler`` (over TLS, and so HTTP/2, with ``ssl_context``), open its page
    in Chromium and run ``script`` on the page (a Playwright ``Page``)."""
    from playwright.sync_api import sync_playwright

    async with trio.open_nursery() as nursery:
        server: duplex.Server = await nursery.start(
            lambda task_status: duplex.serve(
                handler, "127.0.0.1", 0, ssl_context=ssl_context, task_status=task_status
            )
        )
        scheme = "https" if ssl_context is not None else "http"

        def browse() -> T:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = browser.new_context(ignore_https_errors=True).new_page()
                    page.set_default_timeout(15_000)
                    page.goto(f"{scheme}://127.0.0.1:{server.port}/")
                    return script(page)
                finally:
                    browser.close()

        result = await trio.to_thread.run_sync(browse, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    return result
