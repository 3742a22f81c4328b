"""The output side of an HTTP/1.1 server connection, sans I/O: response heads with the
framing headers HTTP/1.1 needs (as h11 would set them), body pieces framed for the wire,
and what ends a response.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import h11

from ..._errors import ProtocolError
from ._wire import CHUNKED, CLOSE, LENGTH, NONE, comma_tokens

__all__ = ["CountingFramer", "ResponseFramer", "error_response", "frame_chunk", "http_date"]

_last_chunk: tuple[bytes, bytes] = (b"", b"")
_date: tuple[int, bytes, bytes] = (0, b"", b"")
# The fields a response head is framed, dated or kept alive by: a head whose handler
# names none of them is built in one join.
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"date", b"connection"})
_END_KEEP_ALIVE = b"\r\n"
_END_CLOSE = b"connection: close\r\n\r\n"
# Status lines made so far, by status and reason (a server sends a few dozen at most;
# emptied if a handler invents reasons without end).
_status_lines: dict[tuple[int, bytes], bytes] = {}
_MAX_STATUS_LINES = 256


def http_date() -> bytes:
    """Now, as a ``Date`` header value (RFC 9110's IMF-fixdate); made once a second."""
    return _dated()[1]


def _date_line() -> bytes:
    """The ``Date`` field of a response head sent now, with its CRLF."""
    return _dated()[2]


def _dated() -> tuple[int, bytes, bytes]:
    global _date
    now = int(time.time())
    if now != _date[0]:
        value = formatdate(now, usegmt=True).encode("ascii")
        _date = (now, value, b"date: %s\r\n" % value)
    return _date


def _status_line(status: int, reason: bytes) -> bytes:
    line = _status_lines.get((status, reason))
    if line is None:
        if len(_status_lines) >= _MAX_STATUS_LINES:
            _status_lines.clear()
        line = _status_lines[status, reason] = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    return line


def error_body(status: int, message: str) -> bytes:
    """The body of ``error_response``."""
    return f"{status} {HTTPStatus(status).phrase}: {message}\n".encode()


def error_response(status: int, message: str) -> bytes:
    """A whole response that answers a request the server refuses, and closes."""
    phrase = HTTPStatus(status).phrase
    body = error_body(status, message)
    return (
        b"HTTP/1.1 %d %s\r\ndate: %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n"
        % (status, phrase.encode(), http_date(), len(body))
    ) + body


def frame_chunk(data: bytes) -> bytes:
    """``data`` framed as one chunk of a chunked body; the last one is remembered, since
    a broadcast frames the same bytes for every member."""
    global _last_chunk
    if data is _last_chunk[0]:
        return _last_chunk[1]
    framed = b"%x\r\n%b\r\n" % (len(data), data)
    _last_chunk = (data, framed)
    return framed


def _local_error(message: str) -> ProtocolError:
    """A response the handler built that HTTP cannot carry: its bug, answered with 500
    (or a cut connection) and logged, never blamed on the peer."""
    error = ProtocolError(f"cannot send this message: {message}", 500)
    error.__cause__ = h11.LocalProtocolError(message)
    return error


class ResponseFramer:
    """One connection's responses, one at a time: ``response_head`` starts one (and
    resets the framing), ``frame`` frames its body's pieces, ``end`` ends it."""

    __slots__ = ("_out_left", "_out_mode", "response_ended")

    def __init__(self) -> None:
        self._out_mode = NONE
        self._out_left = 0  # of the response's Content-Length
        #: True once the response has ended (``end`` was called).
        self.response_ended = False

    def response_head(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        head: bool,
        http_10: bool,
        keep_alive: bool,
        length: int | None = None,
    ) -> tuple[bytes, bool]:
        """The response head for ``headers`` (valid already), with the framing headers
        HTTP/1.1 needs, as h11 would set them; and whether the connection must close
        after it.

        Content-Length when the headers name one, or else when ``length`` (the body's,
        when known) is given; otherwise chunked for an HTTP/1.1 peer, and a body
        delimited by closing the connection for an HTTP/1.0 one. HEAD responses, 204
        and 304 carry no body. Raises ``ProtocolError`` (500) for what cannot be sent:
        a status under 200, a transfer coding other than chunked, a malformed
        Content-Length.
        """
        if not 200 <= status <= 999:
            raise _local_error(f"a response cannot have status {status}")
        for name, _ in headers:
            if name in _FRAMING_FIELDS:
                break
        else:
            # The common case, in one join: no field of the handler's says how the
            # response is framed, dated, or whether the connection closes.
            no_body = status == 204 or status == 304
            if no_body:
                framed_by = b""
            elif length is not None:
                framed_by = b"content-length: %d\r\n" % length
            elif http_10:
                framed_by = b""
            else:
                framed_by = b"transfer-encoding: chunked\r\n"
            if no_body or head:
                self._out_mode, self._out_left = LENGTH, 0
            elif length is not None:
                self._out_mode, self._out_left = LENGTH, length
            else:
                self._out_mode, self._out_left = (CLOSE if http_10 else CHUNKED), 0
            self.response_ended = False
            keep_alive = keep_alive and not http_10
            lines = [_status_line(status, reason), _date_line()]
            lines += [b"%s: %s\r\n" % item for item in headers]
            lines.append(framed_by + (_END_KEEP_ALIVE if keep_alive else _END_CLOSE))
            return b"".join(lines), not keep_alive
        if length is not None and not any(name == b"content-length" for name, _ in headers):
            headers = [*headers, (b"content-length", b"%d" % length)]
        framing = LENGTH
        length = 0
        lengths: list[bytes] = []
        codings: list[bytes] = []
        dated = False
        for name, value in headers:
            if name == b"content-length":
                lengths += [part.strip() for part in value.split(b",")]
            elif name == b"transfer-encoding":
                codings += [part.strip().lower() for part in value.split(b",")]
            elif name == b"date":
                dated = True
        if status not in (204, 304):
            if codings:
                if codings != [b"chunked"]:
                    raise _local_error("only Transfer-Encoding: chunked is supported")
                framing = CHUNKED
            elif lengths:
                if not all(part.isdigit() for part in lengths) or len(set(lengths)) > 1:
                    raise _local_error(f"malformed Content-Length: {lengths!r}")
                length = int(lengths[0])
            else:
                framing = CHUNKED
            if framing == CHUNKED:
                headers = [item for item in headers if item[0] != b"content-length"]
                if http_10:
                    # HTTP/1.0 knows no chunks: the end of the body is the connection's.
                    headers = [item for item in headers if item[0] != b"transfer-encoding"]
                    framing = CLOSE
                elif not codings:
                    headers.append((b"transfer-encoding", b"chunked"))
        tokens = set(comma_tokens(headers, b"connection"))
        if http_10 or b"close" in tokens:
            keep_alive = False  # as h11: no keep-alive for HTTP/1.0
        if not keep_alive:
            tokens.discard(b"keep-alive")
            tokens.add(b"close")
            headers = [item for item in headers if item[0] != b"connection"]
            headers.append((b"connection", b", ".join(sorted(tokens))))
        if head or status in (204, 304):
            framing, length = LENGTH, 0
        self._out_mode = framing
        self._out_left = length
        self.response_ended = False
        lines = [_status_line(status, reason)]
        if not dated:
            lines.append(_date_line())
        lines += [b"%s: %s\r\n" % item for item in headers]
        lines.append(b"\r\n")
        return b"".join(lines), not keep_alive

    def frame(self, data: bytes) -> list[Any]:
        """``data`` as the response body's next bytes on the wire.

        Raises ``ProtocolError`` (500) past the response's Content-Length.
        """
        mode = self._out_mode
        if mode == CHUNKED:
            if len(data) < 4096:
                return [frame_chunk(data)]
            return [b"%x\r\n" % len(data), data, b"\r\n"]
        if mode == LENGTH:
            if len(data) > self._out_left:
                raise _local_error("too much data for declared Content-Length")
            self._out_left -= len(data)
        return [data]

    @property
    def carries_trailers(self) -> bool:
        """True when the response's framing has room for trailers (chunked)."""
        return self._out_mode == CHUNKED

    def end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> list[Any]:
        """What ends the response body on the wire; ``trailers`` go out only where the
        framing carries them (``carries_trailers``) and are dropped elsewhere (a HEAD
        response, HTTP/1.0, 204, 304, a Content-Length body), as HTTP allows.

        Raises ``ProtocolError`` (500) if a Content-Length is not reached.
        """
        mode = self._out_mode
        self.response_ended = True
        if mode == CHUNKED:
            if not trailers:
                return [b"0\r\n\r\n"]
            lines = [b"0\r\n"] + [b"%s: %s\r\n" % item for item in trailers] + [b"\r\n"]
            return [b"".join(lines)]
        if mode == LENGTH and self._out_left:
            raise _local_error("too little data for declared Content-Length")
        return []


class CountingFramer(ResponseFramer):
    """A ``ResponseFramer`` that also keeps the status of the response under way and how
    many body bytes it has framed (for the access log)."""

    __slots__ = ("sent", "status")

    def __init__(self) -> None:
        super().__init__()
        self.status = 0
        self.sent = 0

    def response_head(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        head: bool,
        http_10: bool,
        keep_alive: bool,
        length: int | None = None,
    ) -> tuple[bytes, bool]:
        framed = super().response_head(
            status,
            reason,
            headers,
            head=head,
            http_10=http_10,
            keep_alive=keep_alive,
            length=length,
        )
        self.status = status
        self.sent = 0
        return framed

    def frame(self, data: bytes) -> list[Any]:
        framed = super().frame(data)
        self.sent += len(data)
        return framed
