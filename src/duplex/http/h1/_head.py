"""Request heads, sans I/O: what a head means, and the fast path for common ones.

h11 is the reference for what a request head means. Parsing one through h11 (a fresh
``h11.Connection``, its state machine and its event validation) cost about as much as
the rest of a small request together, so a head that is plainly well-formed is read
here in two regular-expression passes instead: the request line, then every field line.
That path is strict: it accepts only heads whose every byte it understands — a token
method other than CONNECT, a target of visible ASCII, HTTP/1.1 or HTTP/1.0, CRLF
line ends, field values of visible characters, spaces and tabs, one Host (HTTP/1.1
requires it), at most one Content-Length of digits, at most one
``Transfer-Encoding: chunked`` and not both — and it hands anything else to h11 and
duplex's own checks (``ServerWire.parse_head_h11``), which decide as before. So for any
bytes the fast path either declines or gives the request h11 gives
(``tests/test_head_parser.py`` checks it on arbitrary heads and on the smuggling
corpus).
"""

from __future__ import annotations

import re

__all__ = ["RequestHead", "parse_common_head"]

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# A field value as h11 reads it (its OWS stripped), over the characters the fast path
# accepts: no control character but HTAB, which duplex would refuse anyway.
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_VALUE = _VCHAR + rb"(?:[\t\x20-\x7e\x80-\xff]*" + _VCHAR + rb")?"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])\r\n")
# Every field line and the blank line that ends them: checked in one pass, then read
# field by field in another.
_FIELDS = re.compile(rb"(?:" + _TOKEN + rb":[ \t]*(?:" + _VALUE + rb")?[ \t]*\r\n)*\r\n")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")?[ \t]*\r\n")
_DIGITS = re.compile(rb"[0-9]{1,20}")
_VERSIONS = {b"0": b"1.0", b"1": b"1.1"}
# Names whose fields the fast path must look at, and whose other forms it leaves to h11.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})


class RequestHead:
    """A request head, checked: the method, the target and the HTTP version (``b"1.1"``
    or ``b"1.0"``; ``b"2.0"`` only for the HTTP/2 preface) as sent, and the fields as
    ``(lower-case name, value)`` pairs, as h11 gives them."""

    __slots__ = ("fields", "http_version", "method", "target")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        http_version: bytes,
        fields: list[tuple[bytes, bytes]],
    ) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.fields = fields

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestHead):
            return NotImplemented
        return (self.method, self.target, self.http_version, self.fields) == (
            other.method,
            other.target,
            other.http_version,
            other.fields,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<RequestHead {self.method!r} {self.target!r} HTTP/{self.http_version.decode()}>"


def parse_common_head(
    data: bytes, pos: int, *, max_request_line: int, max_header_size: int
) -> tuple[RequestHead, int] | None:
    """The head that starts at ``data[pos]`` and where it ends, if it is whole and one
    the fast path accepts (see the module's docstring); None otherwise, when h11 must
    decide (the head may also be incomplete, or bad). Raises nothing."""
    end = data.find(b"\r\n\r\n", pos, pos + max_header_size)
    if end < 0:
        return None
    end += 4
    line = _REQUEST_LINE.match(data, pos, end)
    if line is None:
        return None
    fields_start = line.end()
    if fields_start - pos - 2 > max_request_line:
        return None
    method = line[1]
    if method == b"CONNECT":
        return None
    block = _FIELDS.match(data, fields_start, end)
    if block is None or block.end() != end:
        return None
    fields = [(name.lower(), value) for name, value in _FIELD.findall(data, fields_start, end)]
    version = _VERSIONS[line[3]]
    hosts = 0
    length = coding = False
    for index, (name, value) in enumerate(fields):
        if name not in _FRAMING:
            continue
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            if length or _DIGITS.fullmatch(value) is None:
                return None
            length = True
        else:
            if coding or value.lower() != b"chunked":
                return None
            coding = True
            fields[index] = (name, b"chunked")
    if hosts > 1 or (hosts == 0 and version == b"1.1") or (length and coding):
        return None
    return RequestHead(method, line[2], version, fields), end
