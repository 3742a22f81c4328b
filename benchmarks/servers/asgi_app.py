"""The ASGI app that hypercorn (trio worker) and uvicorn serve.

- ``GET /``: the 13-byte body;
- ``POST /echo``: sends the response head at once, then each ``http.request`` body
  message back as it arrives;
- ``GET /idle``: an SSE response head (flushed with an empty body message), then
  nothing until ``http.disconnect``.

Run: ``hypercorn --worker-class trio --workers 0 asgi_app:app`` or
``uvicorn --http h11 asgi_app:app`` (with this directory on the path).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b"Hello, world!"
SMALL_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
STREAM_HEADERS = [(b"content-type", b"application/octet-stream")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/echo":
        await echo(receive, send)
    elif path == "/idle":
        await idle(receive, send)
    else:
        await send({"type": "http.response.start", "status": 200, "headers": SMALL_HEADERS})
        await send({"type": "http.response.body", "body": BODY})


async def echo(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        if body:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.body", "body": b""})


async def idle(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    await send({"type": "http.response.body", "body": b"", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass
