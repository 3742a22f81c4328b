"""``duplex demo``: every transport of duplex on one page, all in-process.

- ``/`` the page; ``/events`` an SSE feed (a tick a second, with history for resume);
- ``/ws`` a WebSocket chat; ``/poll`` and ``/chat`` a long-poll chat (http-kit's
  group + ``since_ts`` pattern); ``/stream`` a chunked stream (rack-stream's chunky
  monkey); ``/echo`` the full-duplex echo;
- ``/upload`` a browser's streaming upload (HTTP/2 only: ``fetch`` with a stream
  body), each chunk reported on ``/upload/events`` (SSE) as it arrives.
"""

from __future__ import annotations

import json
import time
from collections import deque
from importlib.resources import files
from typing import Any

import trio

from .._stream import Stream
from ..channels import Channel, ChannelGroup, channel
from ..http import Request, Response, Streamable
from ..sse import Event

__all__ = ["Demo"]

_PAGE = files(__package__).joinpath("index.html").read_bytes()


class Demo:
    """The demo application: ``handler`` serves it; ``run`` drives its ticker."""

    def __init__(self, *, tick_interval: float = 1.0, history: int = 100) -> None:
        self.tick_interval = tick_interval
        self.feed = ChannelGroup(history=history, when_full="drop-oldest")
        self.websockets = ChannelGroup()
        self.pollers = ChannelGroup()
        self.uploads = ChannelGroup()
        self.messages: deque[dict[str, Any]] = deque(maxlen=100)
        self.ticks = 0

    async def run(self) -> None:
        """Broadcast a tick on the SSE feed every ``tick_interval`` seconds."""
        while True:
            await trio.sleep(self.tick_interval)
            self.ticks += 1
            await self.feed.broadcast(Event(f"tick {self.ticks} at {time.strftime('%H:%M:%S')}"))

    async def handler(self, request: Request) -> Response:
        route = (request.method, request.path)
        if route == ("GET", "/"):
            return Response(200, {"content-type": "text/html; charset=utf-8"}, _PAGE)
        if route == ("GET", "/events"):
            return channel(request, on_open=self.feed.add, heartbeat=15.0)
        if route == ("POST", "/events/drop"):
            # Close every SSE stream, so browsers reconnect with Last-Event-ID.
            for member in self.feed:
                await member.close()
            return Response(204)
        if route == ("GET", "/ws"):
            return channel(request, on_open=self.websockets.add, on_receive=self._said)
        if route == ("GET", "/poll"):
            return self._poll(request)
        if route == ("POST", "/chat"):
            text = (await request.body.join()).decode("utf-8", errors="replace")
            await self._say(text[:500])
            return Response(204)
        if route == ("GET", "/stream"):
            return channel(
                request,
                headers={"content-type": "text/plain; charset=utf-8"},
                after_open=self._chunky,
                before_close=_monkey,
            )
        if route == ("GET", "/upload/events"):
            return channel(request, on_open=self.uploads.add, heartbeat=15.0)
        if route == ("POST", "/upload"):
            return await self._upload(request)
        if request.path == "/echo":
            return Response(200, {"content-type": "application/octet-stream"}, Streamable(_echo))
        return Response(404, body="not found\n")

    async def _upload(self, request: Request) -> Response:
        """Read a streaming upload chunk by chunk, telling every ``/upload/events``
        subscriber of each chunk as it arrives; answer with the totals at its end."""
        chunks = size = 0
        async for chunk in request.body:
            chunks += 1
            size += len(chunk)
            text = chunk[:60].decode("utf-8", "replace")
            await self.uploads.broadcast(
                Event(f"chunk {chunks} over HTTP/{request.http_version}: {text!r}")
            )
        body = json.dumps({"chunks": chunks, "bytes": size, "http": request.http_version})
        return Response(200, {"content-type": "application/json"}, body)

    async def _chunky(self, stream: Channel) -> None:
        for count in range(3):
            await stream.send(f"chunky {count}\n")
            await trio.sleep(0.5)
        await stream.close()

    async def _said(self, _: Channel, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        await self._say(text[:500])

    async def _say(self, text: str) -> None:
        message = {"ts": time.time(), "text": text}
        self.messages.append(message)
        await self.websockets.broadcast(json.dumps(message))
        await self.pollers.broadcast(self._since, close=True)

    def _since(self, _: Channel | None, since: float) -> str | None:
        """The messages newer than ``since`` as JSON, or None (http-kit's since_ts)."""
        newer = [message for message in self.messages if message["ts"] > since]
        return json.dumps(newer) if newer else None

    def _poll(self, request: Request) -> Response:
        try:
            since = float(request.query.partition("since=")[2].split("&")[0] or 0)
        except ValueError:
            return Response(400, body="since must be a number\n")
        newer = self._since(None, since)
        if newer is not None:
            return Response(200, {"content-type": "application/json"}, newer)

        def join(poller: Channel) -> None:
            self.pollers.add(poller, since)

        return channel(request, headers={"content-type": "application/json"}, on_open=join)


async def _monkey(stream: Channel) -> None:
    await stream.send("monkey!\n")


async def _echo(stream: Stream) -> None:
    while chunk := await stream.readpartial(65536):
        await stream.write(chunk)
