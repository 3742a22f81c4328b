"""The client's side of an HTTP/1.1 connection, sans I/O: request heads and bodies out,
response heads and bodies in.

h11 is the reference for what goes out and what a response head means. Going through
an ``h11.Connection`` (header normalisation on every request, its state machine on
every event) cost more than the rest of a small exchange together, so the common case
is done here: a request whose every field is plainly well-formed is encoded by hand,
byte for byte as h11 writes it, and anything else is encoded by h11 itself (refused as
h11 refuses it); a response head that is plainly well-formed is read in two regular
expression passes, and any other (obs-fold, bare LF, repeated Content-Length, an
incomplete head, ...) by a fresh ``h11.Connection``, which decides as before. Response
bodies are framed by ``ServerWire``'s body state machine, as the server frames request
bodies. ``tests/test_client_wire.py`` holds both fast paths to h11 on arbitrary input.
"""

from __future__ import annotations

import re

import h11

from ..._errors import ProtocolError
from ..._foreign import translate
from ._wire import ServerWire

__all__ = [
    "ClientWire",
    "EncodedRequest",
    "ResponseHead",
    "encode_request",
    "encode_request_h11",
    "parse_common_response_head",
    "parse_response_head_h11",
]

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_TARGET = re.compile(rb"[\x21-\x7e]+")
# A field value h11 writes as it is: visible characters and obs-text, spaces and tabs
# only between them (h11 refuses leading or trailing whitespace), or nothing.
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_OUT_VALUE = re.compile(rb"(?:" + _VCHAR + rb"+(?:[ \t]+" + _VCHAR + rb"+)*)?")
_DIGITS = re.compile(rb"[0-9]{1,20}")
# Request fields the fast path must look at, and whose other forms it leaves to h11.
_SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})

# A response head as the fast path reads it: a status line of HTTP/1.1 or HTTP/1.0
# with a three-digit status from 100 (but 101) and a reason of visible characters, spaces and
# tabs, then field lines as ``_head`` reads request fields, CRLF line ends only.
_VALUE = _VCHAR + rb"(?:[\t\x20-\x7e\x80-\xff]*" + _VCHAR + rb")?"
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n")
_FIELDS = re.compile(rb"(?:" + _TOKEN + rb":[ \t]*(?:" + _VALUE + rb")?[ \t]*\r\n)*\r\n")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")?[ \t]*\r\n")
_VERSIONS = {b"0": b"1.0", b"1": b"1.1"}
_RESPONSE_FRAMING = frozenset({b"content-length", b"transfer-encoding"})

# How a response body is framed: none, Content-Length, chunked, up to the close.
_NONE, _LENGTH, _CHUNKED, _CLOSE = range(4)


def _lists(value: bytes, token: bytes) -> bool:
    return any(part.strip().lower() == token for part in value.split(b","))


# -- requests --------------------------------------------------------------------------


class EncodedRequest:
    """A request head as it goes on the wire, and what it says of the exchange: the
    method, the body's framing (its length; None when chunked) and whether it asks for
    the connection to close. Encoded once, sent on any connection (a retry)."""

    __slots__ = ("closes", "data", "length", "method")

    def __init__(self, method: bytes, data: bytes, length: int | None, closes: bool) -> None:
        self.method = method
        self.data = data
        self.length = length
        self.closes = closes


def encode_request(method: str, target: str, fields: list[tuple[bytes, bytes]]) -> EncodedRequest:
    """The request head h11 would write for ``method``, ``target`` and ``fields``
    (HTTP/1.1, Host first, names as given): encoded here when every part is plainly
    well-formed — a token method other than CONNECT, a target of visible ASCII, one
    Host, token names, values h11 writes as they are, at most one Content-Length of
    digits or one ``Transfer-Encoding: chunked``, not both — by h11 otherwise.

    Raises ``ProtocolError`` (500) for a request h11 refuses to send.
    """
    encoded = _encode_common(method, target, fields)
    return encode_request_h11(method, target, fields) if encoded is None else encoded


def _encode_common(
    method: str, target: str, fields: list[tuple[bytes, bytes]]
) -> EncodedRequest | None:
    """``encode_request``'s fast path: the request, or None when h11 must decide."""
    if not (method.isascii() and target.isascii()):
        return None
    raw_method = method.encode("ascii")
    raw_target = target.encode("ascii")
    if (
        _TOKEN_RE.fullmatch(raw_method) is None
        or raw_method == b"CONNECT"
        or _TARGET.fullmatch(raw_target) is None
    ):
        return None
    host: bytes | None = None
    lines = [b"%s %s HTTP/1.1\r\n" % (raw_method, raw_target)]
    length: int | None = 0
    framed = closes = False
    for name, value in fields:
        if _TOKEN_RE.fullmatch(name) is None or _OUT_VALUE.fullmatch(value) is None:
            return None
        lower = name.lower()
        if lower in _SPECIAL:
            if lower == b"host":
                if host is not None:
                    return None
                host = b"%s: %s\r\n" % (name, value)
                continue
            if lower == b"connection":
                closes = closes or _lists(value, b"close")
            elif framed:
                return None  # a second Content-Length, or both: h11 decides
            elif lower == b"content-length":
                if _DIGITS.fullmatch(value) is None:
                    return None
                framed = True
                length = int(value)
            else:
                if value != b"chunked":
                    return None
                framed = True
                length = None
        lines.append(b"%s: %s\r\n" % (name, value))
    if host is None:
        return None
    lines.insert(1, host)
    lines.append(b"\r\n")
    return EncodedRequest(raw_method, b"".join(lines), length, closes)


def encode_request_h11(
    method: str, target: str, fields: list[tuple[bytes, bytes]]
) -> EncodedRequest:
    """``encode_request`` through h11 alone: the reference. Raises ``ProtocolError``
    (500) for a request h11 refuses to send."""
    try:
        request = h11.Request(method=method, target=target, headers=fields)
        data = h11.Connection(h11.CLIENT).send(request)
    except h11.LocalProtocolError as error:
        raise translate(error) from error
    assert data is not None
    length: int | None = 0
    closes = False
    for name, value in request.headers:
        if name == b"transfer-encoding":
            length = None
        elif name == b"content-length" and length is not None:
            length = int(value)
        elif name == b"connection":
            closes = closes or _lists(value, b"close")
    return EncodedRequest(request.method, data, length, closes)


# -- responses -------------------------------------------------------------------------


class ResponseHead:
    """A response head as h11 reads it: the status, the reason and the HTTP version as
    sent, and the fields as ``(lower-case name, value)`` pairs (a repeated identical
    Content-Length merged into one, Transfer-Encoding lower-cased)."""

    __slots__ = ("headers", "http_version", "reason", "status_code")

    def __init__(
        self,
        status_code: int,
        reason: bytes,
        http_version: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.status_code = status_code
        self.reason = reason
        self.http_version = http_version
        self.headers = headers

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResponseHead):
            return NotImplemented
        return (self.status_code, self.reason, self.http_version, self.headers) == (
            other.status_code,
            other.reason,
            other.http_version,
            other.headers,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status_code} HTTP/{self.http_version.decode()}>"


def parse_common_response_head(
    data: bytes, pos: int, max_size: int
) -> tuple[ResponseHead, int] | None:
    """The response head that starts at ``data[pos]`` and where it ends, if it is whole,
    within ``max_size`` bytes, and one the fast path accepts (see the module's
    docstring); None otherwise, when h11 must decide. Raises nothing."""
    end = data.find(b"\r\n\r\n", pos, pos + max_size)
    if end < 0:
        return None
    end += 4
    line = _STATUS_LINE.match(data, pos, end)
    if line is None:
        return None
    block = _FIELDS.match(data, line.end(), end)
    if block is None or block.end() != end:
        return None
    fields = [(name.lower(), value) for name, value in _FIELD.findall(data, line.end(), end)]
    framed = False
    for index, (name, value) in enumerate(fields):
        if name not in _RESPONSE_FRAMING:
            continue
        if framed:
            return None
        framed = True
        if name == b"content-length":
            if _DIGITS.fullmatch(value) is None:
                return None
        else:
            if value.lower() != b"chunked":
                return None
            fields[index] = (name, b"chunked")
    status = int(line[2])
    if status == 101:
        return None  # h11 refuses it, since the client never asks to switch protocols
    reason = line[3] if line[3] is not None else b""
    return ResponseHead(status, reason, _VERSIONS[line[1]], fields), end


def parse_response_head_h11(
    data: bytes, pos: int, max_size: int, *, eof: bool = False
) -> tuple[ResponseHead, int] | None:
    """The response head at ``data[pos]`` as a fresh ``h11.Connection`` reads it, and
    where it ends; None while it is incomplete. ``eof``: the server has closed its side.

    Raises ``ProtocolError`` for a head h11 refuses, one over ``max_size`` bytes (431),
    and at ``eof`` before a whole head (400).
    """
    received = data[pos:]
    if not received and not eof:
        return None  # to h11, receiving nothing means the end of the input
    parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_size)
    parser.send(h11.Request(method="GET", target="/", headers=[("host", "h")]))
    parser.send(h11.EndOfMessage())
    try:
        parser.receive_data(received)
        if eof:
            parser.receive_data(b"")
        event = parser.next_event()
    except h11.RemoteProtocolError as error:
        raise translate(error) from error
    if event is h11.NEED_DATA:
        return None
    if type(event) is h11.ConnectionClosed:
        raise ProtocolError("the server closed the connection before its response")
    assert type(event) is h11.Response or type(event) is h11.InformationalResponse
    end = pos + len(received) - len(parser.trailing_data[0])
    return ResponseHead(
        event.status_code, event.reason, event.http_version, list(event.headers)
    ), end


class ClientWire:
    """One client connection's input, sans I/O: response heads and bodies, one exchange
    at a time. The driver feeds what it reads (``feed``); heads come out of
    ``next_head``, body data out of ``take_body``.
    """

    __slots__ = ("_body", "_mode", "keep_alive", "max_head_size")

    def __init__(self, *, max_head_size: int, read_size: int) -> None:
        self.max_head_size = max_head_size
        # Holds every byte received; frames Content-Length and chunked bodies.
        self._body = ServerWire(
            max_header_size=max_head_size,
            max_request_line=max_head_size,
            max_body_size=None,
            read_size=read_size,
        )
        self._mode = _NONE
        #: False once a message said the connection closes after this exchange.
        self.keep_alive = True

    def feed(self, data: bytes) -> None:
        """Append bytes read from the socket (``b""``: the server closed its side)."""
        self._body.feed(data)

    @property
    def eof(self) -> bool:
        """True once the server has closed its side."""
        return self._body.eof

    @property
    def fill_size(self) -> int | None:
        """How much to read from the socket next (None: the transport's read size): in a
        chunked body, whole chunks, so that each read gives its reader one piece."""
        return None if self._mode == _CLOSE else self._body.fill_size

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return self._body.buffered

    def next_head(self) -> tuple[ResponseHead, int] | None:
        """The next response head (an interim 1xx one too) and its size in bytes, or
        None until it is whole. Raises ``ProtocolError`` as
        ``parse_response_head_h11`` does."""
        wire = self._body
        if not wire.buffered and not wire.eof:
            return None
        data = wire.leftover()
        parsed = parse_common_response_head(data, 0, self.max_head_size)
        if parsed is None:
            # Raises for a bad head: the connection is closed then, its input dropped.
            parsed = parse_response_head_h11(data, 0, self.max_head_size, eof=wire.eof)
        if parsed is None:
            if data:
                wire.feed(data)
            return None
        head, end = parsed
        if end < len(data):
            wire.feed(data[end:])
        return head, end

    def begin_body(self, method: bytes, closes: bool, head: ResponseHead) -> int | None:
        """Frame the body of the final response ``head`` to a ``method`` request
        (``closes``: the request asked to close); its length, None when unknown (chunked
        or up to the close). Raises ``ProtocolError`` for a tunnel (a 2xx to CONNECT)."""
        status = head.status_code
        length: int | None
        if method == b"CONNECT" and 200 <= status < 300:
            raise ProtocolError("a tunnel (2xx to CONNECT) is not supported")
        self.keep_alive = not closes and head.http_version >= b"1.1"
        if method == b"HEAD" or status in (204, 304):
            length, self._mode = 0, _NONE
            self._body.begin_body(0)
        else:
            length = None
            self._mode = _CLOSE
            for name, value in head.headers:
                if name == b"transfer-encoding":
                    self._mode = _CHUNKED
                    break
                if name == b"content-length":
                    length = int(value)
                    self._mode = _LENGTH
            if self._mode == _CHUNKED:
                length = None
                self._body.begin_body(None)
            elif self._mode == _LENGTH:
                assert length is not None
                self._body.begin_body(length)
                if not length:
                    self._mode = _NONE
            else:
                self.keep_alive = False
        if self.keep_alive:
            for name, value in head.headers:
                if name == b"connection" and _lists(value, b"close"):
                    self.keep_alive = False
        return length

    def take_body(self) -> bytes | None:
        """The next piece of the response body from the buffer: ``b""`` at its end,
        None when more must be read first.

        Raises ``ProtocolError`` for a malformed chunked body, and for a server that
        closed its side before a body of known length or framing ended (the body
        parser's error as its ``__cause__``).
        """
        if self._mode == _CLOSE:
            data = self._body.leftover()
            if data:
                return data
            return b"" if self._body.eof else None
        try:
            return self._body.take_body()
        except ProtocolError as error:
            # The parser's reading as the cause, as for a head h11 refuses.
            if self._body.eof:
                # The body cut short, or malformed where it was cut: either way, the end.
                raise ProtocolError(
                    "the server closed the connection before the end of the response body"
                ) from error
            raise ProtocolError(f"malformed response body: {error}") from error

    @property
    def body_complete(self) -> bool:
        """True once the whole response body has been taken."""
        return self._mode != _CLOSE and self._body.body_complete

    def reusable(self) -> bool:
        """True when the exchange ended cleanly for the wire: the body taken whole, no
        close asked for or implied, and no byte received beyond the response."""
        return self.keep_alive and self.body_complete and not self.buffered and not self.eof

    def next_exchange(self) -> None:
        """Forget the last exchange's framing."""
        self._mode = _NONE
        self._body.next_request()
