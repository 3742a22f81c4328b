"""Server-Sent Events: the event encoder, a parser, and a reconnecting client reader.

The wire format follows the HTML standard's ``text/event-stream``: an event is a block
of ``field: value`` lines ended by a blank line; lines end in CR, LF or CRLF; data may
span lines; ``id`` may not contain NUL; lines starting with ``:`` are comments (duplex
sends them as heartbeats).
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import trio

from ._errors import ProtocolError, Timeout
from .http import Client, Headers
from .http._models import HeadersLike

__all__ = ["Event", "EventParser", "comment", "events"]

log = logging.getLogger("duplex.sse")

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event.

    ``data`` may hold line breaks (CR, LF or CRLF; a reader sees them as LF). ``event``
    names the type (``"message"`` when absent); ``id`` becomes the client's last event
    id; ``retry`` (milliseconds) sets its reconnection delay. Construction raises
    ``ValueError`` for a field that would break the framing: a line break in ``event``
    or ``id``, NUL in ``id``, a negative ``retry``.
    """

    data: str = ""
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    def __post_init__(self) -> None:
        if self.event is not None and _LINE_BREAK.search(self.event):
            raise ValueError("an SSE event name cannot contain a line break")
        if self.id is not None and (_LINE_BREAK.search(self.id) or "\0" in self.id):
            raise ValueError("an SSE id cannot contain a line break or NUL")
        if self.retry is not None and self.retry < 0:
            raise ValueError("an SSE retry delay cannot be negative")

    def encode(self) -> bytes:
        """The event on the wire, UTF-8, ending in its blank line."""
        lines = []
        if self.event is not None:
            lines.append(f"event: {self.event}\n")
        if self.id is not None:
            lines.append(f"id: {self.id}\n")
        if self.retry is not None:
            lines.append(f"retry: {self.retry}\n")
        lines.extend(f"data: {line}\n" for line in _LINE_BREAK.split(self.data))
        lines.append("\n")
        return "".join(lines).encode()


def comment(text: str = "") -> bytes:
    """A comment block: readers ignore it; it keeps idle connections alive."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


class EventParser:
    """Turns a ``text/event-stream`` byte stream into ``Event`` objects, incrementally.

    ``feed(data)`` returns the events completed so far; ``last_event_id`` and ``retry``
    follow the stream as the HTML standard says (an id holding NUL is ignored; an
    event with no data is not dispatched).
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        self._trailing_cr = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[Event]:
        text = self._decoder.decode(data)
        if self._first and text:
            text = text.removeprefix("\ufeff")
            self._first = False
        if text:  # an empty feed (or half a character) changes nothing
            if self._trailing_cr and text.startswith("\n"):
                text = text[1:]  # the LF of a CRLF split across two feeds
            self._trailing_cr = text.endswith("\r")
        self._buffer += text
        return list(self._lines())

    def _lines(self) -> Iterator[Event]:
        while True:
            match = _LINE_BREAK.search(self._buffer)
            if match is None:
                return
            # A CR at the very end is taken as a line break now; feed() drops the LF
            # that may follow it in the next chunk.
            line = self._buffer[: match.start()]
            self._buffer = self._buffer[match.end() :]
            event = self._line(line)
            if event is not None:
                yield event

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        if self._id is not None:
            self.last_event_id = self._id
            self._id = None
        if not self._data:
            self._event = ""
            return None
        event = Event(
            data="\n".join(self._data),
            event=self._event or None,
            id=self.last_event_id or None,
        )
        self._data = []
        self._event = ""
        return event


async def events(
    client: Client,
    url: str,
    *,
    headers: HeadersLike | None = None,
    last_event_id: str | None = None,
    retry: float = 3.0,
    max_reconnects: int | None = None,
) -> AsyncIterator[Event]:
    """Read the SSE stream at ``url``, reconnecting as an ``EventSource`` does.

    After the stream ends or breaks, it waits ``retry`` seconds (or what the server set
    with ``retry:``) and reconnects with ``Last-Event-ID``. It stops on a response that
    is not ``200 text/event-stream`` (raising ``duplex.ProtocolError``), on a ``204``, or
    after ``max_reconnects`` reconnections.
    """
    delay = retry
    reconnects = 0
    while True:
        request_headers = Headers(headers)
        request_headers["accept"] = "text/event-stream"
        request_headers["cache-control"] = "no-cache"
        if last_event_id:
            request_headers["last-event-id"] = last_event_id
        parser = EventParser()
        # The id carries over: the server may keep it, replace it, or reset it to "".
        parser.last_event_id = last_event_id or ""
        try:
            response = await client.get(url, headers=request_headers)
        except (ProtocolError, Timeout, OSError) as error:
            log.debug("cannot reach event stream %s: %r", url, error)
        else:
            async with response:
                if response.status == 204:
                    return
                content_type = response.headers.get("content-type", "")
                if response.status != 200 or not content_type.startswith("text/event-stream"):
                    raise ProtocolError(
                        f"expected 200 text/event-stream, got {response.status} {content_type}"
                    )
                try:
                    async for chunk in response.body:
                        for event in parser.feed(chunk):
                            yield event
                except (ProtocolError, Timeout) as error:
                    log.debug("event stream %s broke: %r", url, error)
            last_event_id = parser.last_event_id
            if parser.retry is not None:
                delay = parser.retry / 1000
        if max_reconnects is not None and reconnects >= max_reconnects:
            return
        reconnects += 1
        await trio.sleep(delay)
