"""What the client tests share: peers to talk to, each on 127.0.0.1 and a port of its own.

- ``start_duplex`` serves a duplex handler (``echo`` streams every request body back);
  ``echo_process`` runs ``duplex echo`` in a subprocess.
- ``aiohttp_echo`` and ``hypercorn_echo`` are other servers that echo as they read.
- ``stdlib_server`` is the standard library's ``http.server`` in a thread.
- ``FakeServer`` is a bare TCP listener whose test writes the bytes on the wire itself.
"""

from __future__ import annotations

import asyncio
import http.server
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any, TypeAlias

import hypercorn.config
import hypercorn.trio
import trio
from aiohttp import web

import duplex

__all__ = [
    "DUPLEX",
    "SUBPROCESS_TIMEOUT",
    "TIMEOUT",
    "FakeServer",
    "Respond",
    "StdlibServer",
    "aiohttp_echo",
    "echo",
    "echo_process",
    "hypercorn_echo",
    "read_head",
    "start_duplex",
    "stdlib_server",
    "url",
]

TIMEOUT = 5.0
"""Seconds any one client test may take: only a hang ever comes close."""

DUPLEX = [sys.executable, "-m", "duplex"]
SUBPROCESS_TIMEOUT = 4 * TIMEOUT
"""Seconds for a test that starts Python processes, which a busy machine can make slow."""


# -- duplex's own server -------------------------------------------------------------


async def echo(request: duplex.Request) -> duplex.Response:
    """Stream the request body back, each chunk as soon as it arrives."""

    async def copy(stream: duplex.Stream) -> None:
        while chunk := await stream.readpartial(65536):
            await stream.write(chunk)

    return duplex.Response(200, body=duplex.Streamable(copy))


async def start_duplex(
    nursery: trio.Nursery, handler: duplex.Handler, **kwargs: Any
) -> duplex.Server:
    """Serve ``handler`` on a free port until ``nursery`` is cancelled."""
    server: duplex.Server = await nursery.start(
        partial(duplex.serve, handler, "127.0.0.1", 0, **kwargs)
    )
    return server


def url(server: duplex.Server, path: str = "/", scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.port}{path}"


@asynccontextmanager
async def echo_process() -> AsyncIterator[str]:
    """``duplex echo`` in a subprocess on a free port; its URL once it serves.

    SIGINT stops it at the end (it is killed if it has not stopped when cancelled).
    """
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, [*DUPLEX, "echo", "--port", "0"], stdout=subprocess.PIPE)
        )
        assert process.stdout is not None
        async with process.stdout:
            try:
                output = b""
                while b"\n" not in output:
                    chunk = await process.stdout.receive_some(4096)
                    assert chunk, f"duplex echo exited before serving: {output!r}"
                    output += chunk
                line = output.decode().splitlines()[0]
                assert "serving on " in line, line
                yield line.split("serving on ", 1)[1].strip()
            finally:
                process.send_signal(signal.SIGINT)


# -- aiohttp, in a thread with its own asyncio loop ------------------------------------


async def _aiohttp_echo_handler(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    async for chunk in request.content.iter_any():
        await response.write(chunk)
    await response.write_eof()
    return response


class _AiohttpThread:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Future[None] | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/", _aiohttp_echo_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self.loop = asyncio.get_running_loop()
            self.stop = self.loop.create_future()
            self.ready.set()
            await self.stop
        finally:
            await runner.cleanup()

    def request_stop(self) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set_result, None)


@asynccontextmanager
async def aiohttp_echo() -> AsyncIterator[str]:
    """An aiohttp server that writes each request chunk back as it reads it; its URL."""
    server = _AiohttpThread()
    server.thread.start()
    try:
        await trio.to_thread.run_sync(server.ready.wait, TIMEOUT)
        assert server.ready.is_set(), "aiohttp did not start"
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        server.request_stop()
        await trio.to_thread.run_sync(server.thread.join, TIMEOUT)


# -- hypercorn, with its trio worker ---------------------------------------------------


async def _asgi_echo(scope: Any, receive: Any, send: Any) -> None:
    """Send each request chunk back as a response chunk as soon as it arrives."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        if message["body"]:
            await send({"type": "http.response.body", "body": message["body"], "more_body": True})
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@asynccontextmanager
async def hypercorn_echo() -> AsyncIterator[str]:
    """Hypercorn's trio worker serving an ASGI echo app; its URL.

    ``serve`` reports the addresses it bound through ``task_status``, so port 0 works.
    """
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(hypercorn.trio.serve, _asgi_echo, config, shutdown_trigger=stop.wait)
        )
        try:
            yield f"{binds[0]}/"
        finally:
            stop.set()


# -- the standard library's http.server, in a thread -----------------------------------


class StdlibServer(http.server.ThreadingHTTPServer):
    """``ThreadingHTTPServer`` that remembers the address of every connection it took."""

    daemon_threads = True

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.peers: list[tuple[str, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@asynccontextmanager
async def stdlib_server(
    handler: type[http.server.BaseHTTPRequestHandler],
) -> AsyncIterator[StdlibServer]:
    """Serve ``handler`` from a thread until the block ends."""
    server = StdlibServer(handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        await trio.to_thread.run_sync(server.shutdown)
        server.server_close()


# -- a bare TCP listener ---------------------------------------------------------------


Respond: TypeAlias = Callable[[trio.SocketStream], Awaitable[object]]
"""What a ``FakeServer`` does with each connection it accepts."""


class FakeServer:
    """A TCP listener that runs ``respond(stream)`` for every connection it accepts."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.connections = 0
        self.port = 0

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        respond: Respond,
    ) -> FakeServer:
        server = cls(respond)
        listeners: list[trio.SocketListener] = await nursery.start(
            partial(trio.serve_tcp, server._handle, 0, host="127.0.0.1")
        )
        server.port = listeners[0].socket.getsockname()[1]
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.respond(stream)


async def read_head(stream: trio.abc.ReceiveStream) -> bytes:
    """Read up to the end of a request head (``b""`` if the peer closed first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return b""
        data += chunk
    return data
