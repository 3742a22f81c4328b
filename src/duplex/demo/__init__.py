"""``duplex demo``: every transport of duplex on one page, all in-process.

- ``/`` the page; ``/favicon.ico`` its icon (an SVG);
- ``/events`` an SSE feed (a tick each ``tick_interval``, with history for resume);
  ``POST /events/drop`` closes every SSE connection, so browsers resume;
- one chat room over two transports: ``/chat/ws`` a WebSocket, ``/chat/poll`` a
  long-poll (http-kit's group + ``since`` pattern), ``POST /chat`` says a line; a new
  member gets the last ``history`` lines on either transport;
- ``/echo`` the full-duplex echo: a WebSocket (each message back), or any other request
  whose body streams back chunk by chunk while it is still being sent; a browser, which
  reads no response before its request has ended, echoes over HTTP/2 with two requests
  on its one connection: ``POST /echo/up?id=K`` streams up (``fetch`` with a stream
  body) and ``GET /echo/down?id=K`` streams the same bytes back;
- ``/stream`` a chunked response, a part at a time;
- ``/upload`` a browser's streaming upload (HTTP/2 only: ``fetch`` with a stream body);
- ``/live`` an SSE feed of ``stats`` events (open connections per transport, messages
  received per second, once a tick) and ``upload`` events (each upload chunk as read).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from functools import partial
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

import trio

from .._stream import Stream
from ..channels import Channel, ChannelGroup, channel
from ..http import Request, Response, Streamable
from ..sse import Event

__all__ = ["Demo"]

_PAGE = files(__package__).joinpath("index.html").read_bytes()
_ICON = files(__package__).joinpath("favicon.svg").read_bytes()
# The page is checked on every load (no-cache) and comes back as a 304 when unchanged.
_PAGE_TAG = '"' + hashlib.sha256(_PAGE).hexdigest()[:16] + '"'
#: The longest chat line kept; a longer one is cut to this many characters.
_MAX_LINE = 500
#: The largest ``POST /chat`` body read; a larger one is refused with 413.
_MAX_CHAT_BODY = 4096
#: The browser echoes over HTTP/2 open at once, and the chunks each holds in transit.
_MAX_PIPES = 64
_PIPE_CHUNKS = 16
_PIPE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_HTML = {"content-type": "text/html; charset=utf-8", "cache-control": "no-cache", "etag": _PAGE_TAG}
_JSON = {"content-type": "application/json", "cache-control": "no-store"}
_TEXT = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}
# A response the page reads as a stream says no-cache, not no-store: Chromium reports a
# no-store response read to its end with a stream reader as aborted.
_STREAMED_TEXT = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-cache"}
_STREAMED_BYTES = {"content-type": "application/octet-stream", "cache-control": "no-cache"}


class Demo:
    """The demo application: ``handler`` serves it; ``run`` drives its ticker.

    Everything it keeps is bounded: the chat's last ``history`` lines, the SSE feed's
    last ``history`` ticks, and the channels open now (each leaves when it closes).
    """

    def __init__(self, *, tick_interval: float = 1.0, history: int = 100) -> None:
        self.tick_interval = tick_interval
        self.feed = ChannelGroup(history=history, when_full="drop-oldest")
        self.chatters = ChannelGroup()
        self.pollers = ChannelGroup()
        self.live = ChannelGroup(when_full="drop-oldest")
        self.messages: deque[dict[str, Any]] = deque(maxlen=history)
        self.ticks = 0
        self.received = 0
        self._last_id = 0
        self._open: set[Channel] = set()
        self._http_bodies = 0
        self._pipes: dict[str, _Pipe] = {}

    async def run(self) -> None:
        """Every ``tick_interval`` seconds: a tick on the SSE feed, and the connection
        and message counts on ``/live``. Runs until cancelled."""
        received = self.received
        while True:
            await trio.sleep(self.tick_interval)
            self.ticks += 1
            await self.feed.broadcast(Event(f"tick {self.ticks} at {time.strftime('%H:%M:%S')}"))
            rate = (self.received - received) / self.tick_interval
            received = self.received
            stats = {"tick": self.ticks, "connections": self.connections(), "rate": rate}
            await self.live.broadcast(Event(json.dumps(stats), event="stats"))

    def connections(self) -> dict[str, int]:
        """The connections open now, by transport: ``websocket``, ``sse`` and ``http``
        (long-polls waiting, chunked streams, echoes and uploads)."""
        counts = Counter(member.transport for member in self._open)
        return {
            "websocket": counts["websocket"],
            "sse": counts["sse"],
            "http": counts["http"] + self._http_bodies,
        }

    async def handler(self, request: Request) -> Response:
        path, method = request.path, request.method
        # A WebSocket over HTTP/2 is an extended CONNECT (RFC 8441), over HTTP/1.1 a GET.
        opening = method in ("GET", "CONNECT")
        if path == "/" and method in ("GET", "HEAD"):
            tags = request.headers.get("if-none-match", "")
            if _PAGE_TAG in (tag.strip() for tag in tags.split(",")) or tags.strip() == "*":
                return Response(304, {"etag": _PAGE_TAG, "cache-control": "no-cache"})
            return Response(200, _HTML, _PAGE)
        if path == "/favicon.ico" and method in ("GET", "HEAD"):
            return Response(
                200, {"content-type": "image/svg+xml", "cache-control": "max-age=86400"}, _ICON
            )
        if path == "/events" and opening:
            return channel(request, on_open=self._joining(self.feed), heartbeat=15.0)
        if path == "/events/drop" and method == "POST":
            # Close every SSE stream, so browsers reconnect with Last-Event-ID.
            for member in self.feed:
                await member.close()
            return Response(204)
        if path == "/chat/ws" and opening:
            return channel(request, on_open=self._chatting, on_receive=self._said)
        if path == "/chat/poll" and opening:
            return self._poll(request)
        if path == "/chat" and method == "POST":
            return await self._chat(request)
        if path == "/stream" and opening:
            return channel(
                request,
                headers=_STREAMED_TEXT,
                on_open=self._track,
                after_open=_parts,
                before_close=_last_part,
            )
        if path == "/live" and opening:
            return channel(request, on_open=self._joining(self.live), heartbeat=15.0)
        if path == "/upload" and method == "POST":
            return await self._upload(request)
        if path in ("/echo/up", "/echo/down"):
            return await self._echo_half(request)
        if path == "/echo":
            if "websocket" in request.headers.get_tokens("upgrade") or method == "CONNECT":
                return channel(request, on_open=self._track, on_receive=self._echo_message)
            return Response(200, _STREAMED_BYTES, Streamable(self._echo))
        if path in _ALLOWED:
            return Response(
                405, {**_TEXT, "allow": _ALLOWED[path]}, f"{path} takes {_ALLOWED[path]}\n"
            )
        return Response(404, _TEXT, "not found\n")

    def _track(self, member: Channel) -> None:
        """Count ``member`` among the open connections until it closes."""
        self._open.add(member)
        member.add_close_callback(self._open.discard)

    def _joining(self, group: ChannelGroup) -> Callable[[Channel], None]:
        """An ``on_open`` that counts the channel and adds it to ``group``."""

        def join(member: Channel) -> None:
            self._track(member)
            group.add(member)

        return join

    def _chatting(self, member: Channel) -> None:
        """A WebSocket joins the room: the recent lines first (one JSON list, as every
        message on it), then each line as it is said."""
        self._track(member)
        self.chatters.add(member)
        self.chatters.offer(member, json.dumps(list(self.messages)))

    async def _said(self, _: Channel, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        self.received += 1
        # A blank line says nothing: it is dropped rather than shown to the room.
        await self._say(text)

    async def _chat(self, request: Request) -> Response:
        """``POST /chat``: the body is a line for the room (400 if blank, 413 if over
        ``_MAX_CHAT_BODY`` bytes)."""
        body = b""
        async for chunk in request.body:
            body += chunk
            if len(body) > _MAX_CHAT_BODY:
                return Response(413, _TEXT, f"a chat line is at most {_MAX_CHAT_BODY} bytes\n")
        self.received += 1
        if not await self._say(body.decode("utf-8", errors="replace")):
            return Response(400, _TEXT, "a chat line cannot be empty\n")
        return Response(204)

    async def _say(self, text: str) -> bool:
        """Give the room ``text`` (stripped, cut to ``_MAX_LINE``); False if blank."""
        text = text.strip()[:_MAX_LINE]
        if not text:
            return False
        self._last_id += 1
        message = {"id": self._last_id, "ts": time.time(), "text": text}
        self.messages.append(message)
        await self.chatters.broadcast(json.dumps([message]))
        await self.pollers.broadcast(self._since, close=True)
        return True

    def _since(self, _: Channel | None, since: int) -> str | None:
        """The lines after id ``since`` as JSON, or None (http-kit's since_ts)."""
        newer = [message for message in self.messages if message["id"] > since]
        return json.dumps(newer) if newer else None

    def _poll(self, request: Request) -> Response:
        """``GET /chat/poll?since=ID``: the lines after ``ID`` at once, else a wait for
        the next one (400 if ``since`` is not a whole number)."""
        values = parse_qs(request.target.partition("?")[2]).get("since", ["0"])
        try:
            since = int(values[0])
        except ValueError:
            return Response(400, _TEXT, "since must be a whole number (the last id seen)\n")
        if since > self._last_id:
            # An id this server never gave (it restarted): the client gets the history.
            since = 0
        newer = self._since(None, since)
        if newer is not None:
            return Response(200, _JSON, newer)

        def join(poller: Channel) -> None:
            self._track(poller)
            self.pollers.add(poller, since)

        return channel(request, headers=_JSON, on_open=join)

    async def _upload(self, request: Request) -> Response:
        """Read a streaming upload chunk by chunk, telling every ``/live`` subscriber of
        each chunk as it arrives; answer with the totals at its end."""
        chunks = size = 0
        self._http_bodies += 1
        try:
            async for chunk in request.body:
                chunks += 1
                size += len(chunk)
                self.received += 1
                text = chunk[:60].decode("utf-8", "replace")
                await self.live.broadcast(
                    Event(
                        f"chunk {chunks} over HTTP/{request.http_version}: {text!r}",
                        event="upload",
                    )
                )
        finally:
            self._http_bodies -= 1
        body = json.dumps({"chunks": chunks, "bytes": size, "http": request.http_version})
        return Response(200, _JSON, body)

    async def _echo_half(self, request: Request) -> Response:
        """One half of a browser's echo over HTTP/2, paired with the other by ``id``:
        ``POST /echo/up`` (204 once its body has ended) and ``GET /echo/down`` (the up
        body's bytes, chunked, ending when it ends). 400 for a bad id, 503 when
        ``_MAX_PIPES`` are open already."""
        up = request.path == "/echo/up"
        if request.method != ("POST" if up else "GET"):
            allowed = "POST" if up else "GET"
            return Response(405, {**_TEXT, "allow": allowed}, f"{request.path} takes {allowed}\n")
        key = parse_qs(request.target.partition("?")[2]).get("id", [""])[0]
        if not _PIPE_ID.fullmatch(key):
            return Response(400, _TEXT, "id must be 1-64 letters, digits or dashes\n")
        pipe = self._pipes.get(key)
        if pipe is None and len(self._pipes) >= _MAX_PIPES:
            return Response(503, {**_TEXT, "retry-after": "5"}, "too many echoes open\n")
        if pipe is not None and pipe.taken[up]:
            return Response(409, _TEXT, f"{request.path}?id={key} is open already\n")
        if not up:
            # Taken only once the response runs: its finally is what gives it back.
            return Response(
                200,
                _STREAMED_BYTES,
                Streamable(partial(self._down, key)),
            )
        pipe = self._take(key, up=True)
        if pipe is None:
            return Response(409, _TEXT, f"{request.path}?id={key} is open already\n")
        self._http_bodies += 1
        try:
            async for chunk in request.body:
                self.received += 1
                await pipe.send.send(chunk)
        except trio.BrokenResourceError:
            pass  # the download has gone: nobody is left to echo to
        finally:
            self._http_bodies -= 1
            pipe.send.close()
            self._release(key, pipe)
        return Response(204)

    async def _down(self, key: str, stream: Stream) -> None:
        pipe = self._take(key, up=False)
        if pipe is None:
            return  # another download of this id won the race
        self._http_bodies += 1
        try:
            async for chunk in pipe.receive:
                await stream.write(chunk)
        finally:
            self._http_bodies -= 1
            pipe.receive.close()
            self._release(key, pipe)

    def _take(self, key: str, *, up: bool) -> _Pipe | None:
        """Open one half of the pipe ``key`` (made if new); None if that half is open
        already or ``_MAX_PIPES`` are open."""
        pipe = self._pipes.get(key)
        if pipe is None:
            if len(self._pipes) >= _MAX_PIPES:
                return None
            pipe = self._pipes[key] = _Pipe()
        if pipe.taken[up]:
            return None
        pipe.taken[up] = True
        pipe.users += 1
        return pipe

    def _release(self, key: str, pipe: _Pipe) -> None:
        pipe.users -= 1
        if pipe.users == 0 and self._pipes.get(key) is pipe:
            del self._pipes[key]

    async def _echo_message(self, member: Channel, message: str | bytes) -> None:
        self.received += 1
        await member.send(message)

    async def _echo(self, stream: Stream) -> None:
        self._http_bodies += 1
        try:
            while chunk := await stream.readpartial(65536):
                self.received += 1
                await stream.write(chunk)
        finally:
            self._http_bodies -= 1


class _Pipe:
    """The bytes of one browser echo over HTTP/2, from its upload to its download
    (``_PIPE_CHUNKS`` in transit at most: a full pipe holds the upload back)."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](_PIPE_CHUNKS)
        self.users = 0
        #: Whether the upload (True) and the download (False) are open.
        self.taken = {True: False, False: False}


#: The methods of each route that takes only some (a WebSocket may come as an HTTP/2
#: CONNECT too, but nobody should be told to send one).
_ALLOWED = {
    "/": "GET, HEAD",
    "/favicon.ico": "GET, HEAD",
    "/events": "GET",
    "/events/drop": "POST",
    "/chat/ws": "GET",
    "/chat/poll": "GET",
    "/chat": "POST",
    "/stream": "GET",
    "/live": "GET",
    "/upload": "POST",
}

#: What ``/stream`` sends: a part every half second, so each shows up on its own.
_PARTS = 3


async def _parts(stream: Channel) -> None:
    for count in range(1, _PARTS + 1):
        await stream.send(f"part {count} of {_PARTS}\n")
        await trio.sleep(0.5)
    await stream.close()


async def _last_part(stream: Channel) -> None:
    # before_close: a hook's last word goes out before the stream ends.
    await stream.send("the end (sent by the before_close hook)\n")
