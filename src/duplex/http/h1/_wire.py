"""The server's side of one HTTP/1.1 connection: what goes over the wire, and how.

h11 decides what every request head means (a fresh ``h11.Connection`` per request, fed
exactly the head); a common well-formed head takes ``_head``'s fast path, which gives
what h11 gives or declines. Bodies are framed here, both ways: h11 copies each body
byte two or three times on the way in and re-validates every response header on the way
out, which made it the larger part of what a request cost. Framing a body is a small,
strict state machine; duplex refuses what h11 would repair, and rejects rather than
guesses (see docs/reliability.md).

Input is kept as one ``bytes`` and a position in it, so that a socket read whose bytes
are all body data is handed to the reader as it is, without a copy.
"""

from __future__ import annotations

import re
from math import inf
from typing import NamedTuple

import h11

from ..._errors import ProtocolError
from ..._foreign import translate
from ._head import RequestHead, parse_common_head

__all__ = [
    "CHUNKED",
    "CLOSE",
    "CONTINUE",
    "LENGTH",
    "NONE",
    "RequestFraming",
    "ServerWire",
    "check_line_ends",
    "check_request",
    "comma_tokens",
    "request_framing",
]

# The first blank line ends a head; h11 also accepts a bare LF there, so look for both.
HEAD_END = re.compile(rb"\n\r?\n")
# h11 merges repeated identical Content-Length fields (and "1, 1" lists) into one; the
# raw head is checked for them so that duplex rejects what it cannot read one way only.
_CONTENT_LENGTH_FIELD = re.compile(rb"\ncontent-length[ \t]*:([^\r\n]*)", re.IGNORECASE)
# Control characters that may not appear anywhere in a request head (CR and LF are
# checked as line ends, HTAB is allowed in values).
_HEAD_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The request method: a token (RFC 9110 §9.1), which the request line starts with.
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
# A chunk-size line without its CRLF: as h11's grammar (at most 20 hex digits, optional
# whitespace), with extensions that hold no CR or NUL (h11 lets those through).
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\x00]*)?[ \t]*")
# A trailer field line without its CRLF: a token, a colon, a value without controls but
# HTAB (h11 accepts more controls, and the trailers are not handed to anyone).
_TRAILER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*")
#: The interim response that asks a client waiting for it to send the body.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Body framing, in and out.
NONE, LENGTH, CHUNKED, CLOSE = range(4)
# Where a chunked request body is: before a size line, in data, before the CRLF that
# ends the data, in the trailers, done.
_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)

# Control characters other than HTAB: h11 lets all but NUL through in field values.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def check_request(head: RequestHead, head_has_controls: bool) -> None:
    """Check a request h11 accepted beyond what h11 checks.

    Raises ``ProtocolError`` with the status to answer: 505 for an HTTP version other
    than 1.0 and 1.1, 501 for CONNECT, 400 for control characters in a field value or
    the target, and for both Content-Length and Transfer-Encoding.
    """
    if head.http_version not in (b"1.1", b"1.0"):
        raise ProtocolError(f"HTTP/{head.http_version.decode()} is not supported", 505)
    if head.method == b"CONNECT":
        # A 2xx would turn the connection into a tunnel: duplex is not a proxy.
        raise ProtocolError("CONNECT is not supported", 501)
    fields = head.fields
    if head_has_controls:
        for name, value in fields:
            if _CONTROL.search(value):
                raise ProtocolError(f"control character in the {name.decode()} header")
        if _CONTROL.search(head.target):
            raise ProtocolError("control character in the request target")
    names = [name for name, _ in fields]
    if b"transfer-encoding" in names and b"content-length" in names:
        raise ProtocolError("both Content-Length and Transfer-Encoding")


class RequestFraming(NamedTuple):
    """What a request's (checked) fields say of its body and its connection."""

    #: The body's length: 0 without one, None when chunked.
    length: int | None
    #: ``Connection: close``.
    closes: bool
    #: ``Expect: 100-continue``.
    expects_continue: bool


# The fields ``request_framing`` reads; a request rarely has more than one of them.
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"expect"})


def request_framing(fields: list[tuple[bytes, bytes]], max_body_size: int | None) -> RequestFraming:
    """What the request's checked fields say, in one pass. Raises ``ProtocolError``
    (413) for a Content-Length over ``max_body_size``."""
    length: int | None = 0
    closes = expects_continue = False
    for name, value in fields:
        if name not in _FRAMING_FIELDS:
            continue
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            length = None  # chunked: h11 accepts no other coding
        elif name == b"connection":
            closes = closes or _lists(value, b"close")
        else:
            expects_continue = expects_continue or _lists(value, b"100-continue")
    if length and max_body_size is not None and length > max_body_size:
        raise ProtocolError("request body too large", 413)
    return RequestFraming(length, closes, expects_continue)


def _lists(value: bytes, token: bytes) -> bool:
    """Whether the comma-separated ``value`` holds ``token`` (lower-case), in any case."""
    return any(part.strip().lower() == token for part in value.split(b","))


def comma_tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """The comma-separated tokens of every ``name`` field, lower-cased, empty ones
    left out."""
    return [
        token.strip().lower()
        for field, value in headers
        if field == name
        for token in value.split(b",")
        if token.strip()
    ]


class ServerWire:
    """One server connection's input, sans I/O: request heads and request bodies. One
    request at a time; ``next_request()`` starts the next.

    The driver feeds what it reads from the socket (``feed``), asking ``fill_size`` how
    much to read; heads come out of ``parse_head``, body data out of ``take_body``. The
    output is ``ResponseFramer``'s (``_framing``).
    """

    __slots__ = (
        "_chunk_left",
        "_chunk_size",
        "_chunk_state",
        "_chunked_read_size",
        "_data",
        "_in_mode",
        "_pos",
        "body_received",
        "eof",
        "max_body_size",
        "max_header_size",
        "max_request_line",
        "read_size",
    )

    def __init__(
        self,
        *,
        max_header_size: int,
        max_request_line: int,
        max_body_size: int | None,
        read_size: int,
    ) -> None:
        self.max_header_size = max_header_size
        self.max_request_line = max_request_line
        self.max_body_size = inf if max_body_size is None else max_body_size
        self.read_size = read_size
        # The size of the last chunk of a chunked body, and what to read between chunks
        # while the peer goes on sending chunks of that size (read_size until it sends).
        self._chunk_size = read_size
        self._chunked_read_size = self._whole_chunks(read_size)
        # Received and not yet consumed: self._data[self._pos:].
        self._data = b""
        self._pos = 0
        #: True once the peer has closed its side (EOF read).
        self.eof = False
        self._in_mode = NONE
        self._chunk_state = _SIZE
        self._chunk_left = 0  # body bytes to come: of the chunk, or of Content-Length
        #: Request body bytes received so far.
        self.body_received = 0

    # -- input ------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._data) - self._pos

    def leftover(self) -> bytes:
        """Take what was received and not consumed (for a protocol taking over)."""
        data = self._data[self._pos :]
        self._data, self._pos = b"", 0
        return data

    def feed(self, data: bytes) -> None:
        """Append bytes read from the socket (``b""``: the peer closed its side)."""
        if not data:
            self.eof = True
        elif self._pos == len(self._data):
            self._data = data
            self._pos = 0
        else:
            self._data = self._data[self._pos :] + data
            self._pos = 0

    @property
    def fill_size(self) -> int | None:
        """How much to read from the socket next (None: the transport's read size)."""
        if self._pos == len(self._data) and (
            self._in_mode == LENGTH or (self._in_mode == CHUNKED and self._chunk_state == _DATA)
        ):
            # Only body data: it reaches the reader as the very bytes read, uncopied.
            return min(self.read_size, self._chunk_left)
        if self._in_mode == CHUNKED:
            return self._chunked_read_size
        return None

    def _whole_chunks(self, size: int) -> int:
        """What to read between chunks of ``size`` bytes: as many whole chunks with their
        framing (the CRLF that ends the chunk before, the size line, the data) as fit in
        ``read_size``, at least one; of a larger chunk, its framing and ``read_size`` of
        its data. A byte more would take the next chunk's first bytes, which would then
        reach the reader (and an echo) as a short chunk of their own."""
        framing = len(b"%x" % size) + 4
        if size >= self.read_size:
            return self.read_size + framing
        return max(1, self.read_size // (size + framing)) * (size + framing)

    # -- request heads ----------------------------------------------------------------

    def parse_head(self, *, preface: bool = False) -> RequestHead | None:
        """The request whose head is buffered whole, checked, or None until it is.

        A common well-formed head is read by ``parse_common_head``; any other goes to
        ``parse_head_h11``, which decides what it means and raises as it says. With
        ``preface``, a ``PRI`` request (the HTTP/2 preface) is returned unchecked.
        """
        parsed = parse_common_head(
            self._data,
            self._pos,
            max_request_line=self.max_request_line,
            max_header_size=self.max_header_size,
        )
        if parsed is None:
            return self.parse_head_h11(preface=preface)
        head, self._pos = parsed
        return head

    def parse_head_h11(self, *, preface: bool = False) -> RequestHead | None:
        """``parse_head`` through h11 alone: the reference for what a head means.

        Refuses, from the raw bytes, heads that h11 would accept or repair: the size
        limits count the whole head however it arrives, and obs-fold, bare CR and bare
        LF line ends are refused rather than repaired (each is a smuggling vector when
        a proxy in front reads the head differently); then ``check_request``. Raises
        ``ProtocolError`` with the status to answer (400, 414, 431, 501, 505).
        """
        data, pos = self._data, self._pos
        method_end = _METHOD.match(data, pos).end()  # type: ignore[union-attr]
        if method_end < len(data) and data[method_end] != 0x20:
            # Not HTTP at all (a TLS handshake on a plain port, say): said at once, not
            # once a whole line or the header timeout has gone by.
            raise ProtocolError("not an HTTP request: the method is not a token")
        max_line = self.max_request_line
        line_end = data.find(b"\n", pos, pos + max_line + 2)
        if line_end < 0:
            if len(data) - pos > max_line + 1:
                raise ProtocolError("request line too long", 414)
            return None
        if line_end - pos - (data[line_end - 1 : line_end] == b"\r") > max_line:
            raise ProtocolError("request line too long", 414)
        match = HEAD_END.search(data, line_end - 1 if line_end > pos else pos)
        if match is None:
            if len(data) - pos > self.max_header_size:
                raise ProtocolError("request head too large", 431)
            return None
        end = match.end()
        if end - pos > self.max_header_size:
            raise ProtocolError("request head too large", 431)
        lengths = _CONTENT_LENGTH_FIELD.findall(data, pos, end)
        if len(lengths) > 1 or (lengths and b"," in lengths[0]):
            raise ProtocolError("repeated Content-Length")
        check_line_ends(data, pos, end, "request head")
        has_controls = _HEAD_CONTROL.search(data, pos, end) is not None
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_size)
        try:
            parser.receive_data(data[pos:end])
            event = parser.next_event()
        except h11.RemoteProtocolError as error:
            raise translate(error) from error
        if type(event) is not h11.Request:
            raise ProtocolError(f"unexpected {type(event).__name__} before a request")
        self._pos = end
        head = RequestHead(event.method, event.target, event.http_version, list(event.headers))
        if not (preface and head.method == b"PRI"):
            check_request(head, has_controls)
        return head

    def next_request(self) -> None:
        """Forget the last exchange's framing: the buffer now starts the next request."""
        self._in_mode = NONE
        self.body_received = 0

    # -- request bodies ---------------------------------------------------------------

    def begin_body(self, length: int | None) -> None:
        """Frame the request body: ``length`` bytes, or chunked when None."""
        self.body_received = 0
        if length is None:
            self._in_mode = CHUNKED
            self._chunk_state = _SIZE
        elif length:
            self._in_mode = LENGTH
            self._chunk_left = length
        else:
            self._in_mode = NONE

    @property
    def body_complete(self) -> bool:
        """True once the whole request body has been taken."""
        return self._in_mode == NONE or (self._in_mode == CHUNKED and self._chunk_state == _DONE)

    def take_body(self, max_bytes: int | None = None) -> bytes | None:
        """The next piece of the request body from the buffer: ``b""`` at its end, None
        when more must be read first (``fill``).

        Raises ``ProtocolError`` for a malformed chunked body (400), trailers over
        ``max_header_size`` (431), a body over ``max_body_size`` (413), and a peer that
        closed mid-body (400).
        """
        mode = self._in_mode
        if mode == NONE:
            return b""
        if mode == LENGTH:
            data = self._take_data(max_bytes)
            if data is not None:
                self.body_received += len(data)
                if not self._chunk_left:
                    self._in_mode = NONE
            return data
        while True:
            state = self._chunk_state
            if state == _DATA:
                data = self._take_data(max_bytes)
                if data is not None and not self._chunk_left:
                    self._chunk_state = _DATA_END
                return data
            if state == _DONE:
                return b""
            progressed = (
                self._chunk_size_line()
                if state == _SIZE
                else self._chunk_data_end()
                if state == _DATA_END
                else self._trailers()
            )
            if not progressed:
                if self.eof:
                    raise ProtocolError("the peer closed the connection mid-body")
                return None

    def _take_data(self, max_bytes: int | None) -> bytes | None:
        data, pos = self._data, self._pos
        available = len(data) - pos
        if not available:
            if self.eof:
                raise ProtocolError("the peer closed the connection mid-body")
            return None
        size = min(available, self._chunk_left)
        if max_bytes is not None and max_bytes < size:
            size = max_bytes
        if pos == 0 and size == len(data):
            piece = data
            self._data, self._pos = b"", 0
        else:
            piece = data[pos : pos + size]
            self._pos = pos + size
        self._chunk_left -= size
        return piece

    def _chunk_size_line(self) -> bool:
        data, pos = self._data, self._pos
        limit = self.max_header_size
        end = data.find(b"\n", pos, pos + limit + 1)
        if end < 0:
            if len(data) - pos > limit:
                raise ProtocolError("chunk size line too long", 431)
            return False
        if end == pos or data[end - 1] != 0x0D:
            raise ProtocolError("bare LF line ending in a chunk size line")
        line = data[pos : end - 1]
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            if b"\r" in line or b"\x00" in line:
                raise ProtocolError("CR or NUL in a chunk extension")
            raise ProtocolError(f"illegal chunk size line: {line[:40]!r}")
        size = int(match[1], 16)
        if self.body_received + size > self.max_body_size:
            # A chunk announced past the limit is refused now, not once it arrived.
            raise ProtocolError("request body too large", 413)
        self.body_received += size
        self._pos = end + 1
        if size:
            self._chunk_state = _DATA
            self._chunk_left = size
            if size != self._chunk_size:
                self._chunk_size = size
                self._chunked_read_size = self._whole_chunks(size)
        else:
            self._chunk_state = _TRAILERS
        return True

    def _chunk_data_end(self) -> bool:
        data, pos = self._data, self._pos
        got = data[pos : pos + 2]
        if got != b"\r\n"[: len(got)]:
            raise ProtocolError("chunk data not followed by CRLF")
        if len(got) < 2:
            return False
        self._pos = pos + 2
        self._chunk_state = _SIZE
        return True

    def _trailers(self) -> bool:
        data, pos = self._data, self._pos
        if data[pos : pos + 1] == b"\n":
            raise ProtocolError("bare LF line ending in the trailers")
        if len(data) - pos < 2:
            return False
        if data[pos : pos + 2] == b"\r\n":
            end = pos + 2  # no trailers
        else:
            # Held to max_header_size however the bytes arrive, whole or in pieces.
            match = HEAD_END.search(data, pos)
            end = len(data) if match is None else match.end()
            if end - pos > self.max_header_size:
                raise ProtocolError("trailers too large", 431)
            if match is None:
                return False
            check_line_ends(data, pos, end, "trailers")
            for line in data[pos : end - 4].split(b"\r\n"):
                if _TRAILER_LINE.fullmatch(line) is None:
                    raise ProtocolError("malformed trailer field")
        self._pos = end
        self._chunk_state = _DONE
        return True


def check_line_ends(data: bytes, start: int, end: int, what: str) -> None:
    """Refuse bare LF, bare CR and obs-fold in ``data[start:end]``, which h11 repairs."""
    crlf = data.count(b"\r\n", start, end)
    if data.count(b"\n", start, end) != crlf:
        raise ProtocolError(f"bare LF line ending in the {what}")
    if data.count(b"\r", start, end) != crlf:
        raise ProtocolError(f"bare CR in the {what}")
    if data.find(b"\n ", start, end) >= 0 or data.find(b"\n\t", start, end) >= 0:
        raise ProtocolError(f"obsolete line folding in the {what}")
