"""The fast path for request heads against h11, the reference for what a head means.

For any bytes, ``parse_common_head`` either declines (None) or gives exactly the head,
and the end of it, that h11 and duplex's checks give (``ServerWire.parse_head_h11``):
never a head they refuse, never a different reading. Checked on arbitrary bytes, on
heads built from a grammar that mixes the valid with the hostile, on every prefix of
them, and on the whole smuggling corpus; and the heads that clients send every day do
take the fast path.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from duplex._errors import ProtocolError
from duplex.http.h1._head import RequestHead, parse_common_head
from duplex.http.h1._wire import ServerWire
from test_reliability_smuggling import ACCEPTED, BODY_VECTORS, HEAD_VECTORS, SMUGGLED

MAX_HEADER_SIZE = 512
MAX_REQUEST_LINE = 128


def wire_with(data: bytes) -> ServerWire:
    wire = ServerWire(
        max_header_size=MAX_HEADER_SIZE,
        max_request_line=MAX_REQUEST_LINE,
        max_body_size=None,
        read_size=65536,
    )
    wire.feed(data)
    return wire


def reference(data: bytes, *, preface: bool = False) -> tuple[Any, ...]:
    """What h11 and duplex's checks make of ``data``: a head and where it ends, an error
    status, or nothing yet."""
    wire = wire_with(data)
    try:
        head = wire.parse_head_h11(preface=preface)
    except ProtocolError as error:
        return ("refused", error.status)
    if head is None:
        return ("incomplete",)
    return ("head", head, len(data) - wire.buffered)


def fast(data: bytes) -> tuple[RequestHead, int] | None:
    return parse_common_head(
        data, 0, max_request_line=MAX_REQUEST_LINE, max_header_size=MAX_HEADER_SIZE
    )


def assert_fast_agrees(data: bytes) -> None:
    """The fast path declines ``data`` or reads it as the reference does; and so
    ``parse_head``, which tries it first, decides as the reference, whatever it is
    (also where the HTTP/2 preface may come)."""
    got = fast(data)
    if got is not None:
        assert reference(data) == ("head", *got)
    for preface in (False, True):
        expected = reference(data, preface=preface)
        wire = wire_with(data)
        try:
            head = wire.parse_head(preface=preface)
        except ProtocolError as error:
            assert expected == ("refused", error.status)
        else:
            if head is None:
                assert expected == ("incomplete",)
            else:
                assert expected == ("head", head, len(data) - wire.buffered)


# -- heads from a grammar that mixes the valid and the hostile ---------------------------

# Each part of a head: what clients send, and now and then what a head may not hold.
METHODS = ([b"GET", b"POST", b"HEAD", b"PUT"], [b"CONNECT", b"PRI", b"get", b"G@T", b"", b"M-1"])
TARGETS = ([b"/", b"/a?b=c", b"*", b"http://x/y"], [b"/caf\xe9", b"/a b", b"/\x7f", b"/\x01"])
VERSIONS = (
    [b"HTTP/1.1", b"HTTP/1.0"],
    [b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/11", b"HTTP/1.1 ", b""],
)
LINE_ENDS = ([b"\r\n"], [b"\n", b"\r", b"\r\n ", b"\r\n\t", b"\n\r"])
SEPARATORS = ([b": ", b":"], [b":\t", b" : ", b": \t ", b"\t:"])
NAMES = (
    [b"X-A", b"Accept", b"Connection", b"Expect", b"Content-Length", b"Transfer-Encoding"],
    [b"Host", b"HOST", b"content-length", b"Content-Length ", b" Host", b"X\x00", b""],
)
# Value bytes: mostly what common values hold, sometimes one that a head may not carry.
SAFE = b'chunked05, \tACHUNKEDidentity\xe9"-'
HOSTILE = b"\r\n\x00\x01\x08\x0b\x0c\x1f\x7f"


@st.composite
def values(draw: st.DrawFn) -> bytes:
    fixed = [b"x", b"5", b"005", b"chunked", b"CHUNKED", b" chunked\t", b"1, 1", b""]
    if draw(st.booleans()):
        value = draw(st.sampled_from(fixed))
    else:
        value = bytes(draw(st.lists(st.sampled_from(SAFE), max_size=10)))
    if draw(st.integers(0, 5)) == 5:
        at = draw(st.integers(0, len(value)))
        value = value[:at] + bytes([draw(st.sampled_from(HOSTILE))]) + value[at:]
    return value


def pick(draw: st.DrawFn, choices: tuple[list[bytes], list[bytes]]) -> bytes:
    """One of the usual choices, or one time in six one of the odd ones."""
    usual, odd = choices
    return draw(st.sampled_from(odd if draw(st.integers(0, 5)) == 5 else usual))


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    parts = [
        pick(draw, METHODS),
        b" ",
        pick(draw, TARGETS),
        b" ",
        pick(draw, VERSIONS),
        pick(draw, LINE_ENDS),
    ]
    if draw(st.integers(0, 5)) != 5:
        parts += [b"Host: x", pick(draw, LINE_ENDS)]
    for _ in range(draw(st.integers(0, 4))):
        parts += [pick(draw, NAMES), pick(draw, SEPARATORS), draw(values()), pick(draw, LINE_ENDS)]
    parts.append(draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b""])))
    parts.append(draw(st.sampled_from([b"", b"body", SMUGGLED])))
    return b"".join(parts)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads())
@example(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
@example(b"GET / HTTP/1.0\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: x\r\nX-A:\x1f\r\n\r\n")
@example(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n")
@example(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked \r\n\r\n")
def test_the_fast_path_reads_a_built_head_as_h11_does_or_declines(data: bytes) -> None:
    assert_fast_agrees(data)


@settings(max_examples=200, deadline=None)
@given(heads(), st.data())
def test_the_fast_path_reads_every_prefix_of_a_head_as_h11_does_or_declines(
    data: bytes, draw: st.DataObject
) -> None:
    cut = draw.draw(st.integers(0, len(data)))
    assert_fast_agrees(data[:cut])


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_the_fast_path_reads_arbitrary_bytes_as_h11_does_or_declines(data: bytes) -> None:
    assert_fast_agrees(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=8), st.integers(0, 200), heads())
def test_the_fast_path_reads_a_corrupted_head_as_h11_does_or_declines(
    noise: bytes, at: int, data: bytes
) -> None:
    at = min(at, len(data))
    assert_fast_agrees(data[:at] + noise + data[at:])


# -- the smuggling corpus ---------------------------------------------------------------

CORPUS = (
    [(vector.name, vector.data) for vector in HEAD_VECTORS]
    + [(vector.name, vector.data) for vector in BODY_VECTORS]
    + [(vector.name, vector.data) for vector in ACCEPTED]
)


@pytest.mark.parametrize("data", [data for _, data in CORPUS], ids=[name for name, _ in CORPUS])
def test_the_fast_path_reads_each_smuggling_vector_as_h11_does_or_declines(data: bytes) -> None:
    assert_fast_agrees(data + SMUGGLED)
    for cut in range(len(data)):
        assert_fast_agrees(data[:cut])


# -- what the fast path is for ------------------------------------------------------------

COMMON = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n",
    b"GET /index.html HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nabc",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    b"GET /a?b=c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nAccept-Language: fr-CH, fr;q=0.9, en;q=0.8\r\n"
    b"Cookie: a=b; c=d\r\nX-Empty:\r\n\r\n",
]


@pytest.mark.parametrize("data", COMMON)
def test_common_heads_take_the_fast_path(data: bytes) -> None:
    got = fast(data)

    assert got is not None
    assert reference(data) == ("head", *got)


def test_the_fast_path_gives_lower_case_names_and_values_without_their_whitespace() -> None:
    data = b"PUT /x HTTP/1.1\r\nHOST:  h \r\nX-List: a, b\t\r\nTransfer-Encoding: Chunked\r\n\r\n"
    got = fast(data + b"next")

    assert got is not None
    head, end = got
    assert (head.method, head.target, head.http_version) == (b"PUT", b"/x", b"1.1")
    assert head.fields == [
        (b"host", b"h"),
        (b"x-list", b"a, b"),
        (b"transfer-encoding", b"chunked"),
    ]
    assert end == len(data)


def sized(line: int, head: int) -> bytes:
    """A request whose request line is ``line`` bytes long and whose head is ``head``."""
    request_line = b"GET /" + b"a" * (line - len(b"GET / HTTP/1.1")) + b" HTTP/1.1\r\n"
    padding = head - len(request_line) - len(b"Host: x\r\nX: \r\n\r\n")
    return request_line + b"Host: x\r\nX: " + b"b" * padding + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "taken"),
    [
        (sized(MAX_REQUEST_LINE, MAX_HEADER_SIZE), True),
        (sized(MAX_REQUEST_LINE + 1, MAX_HEADER_SIZE), False),
        (sized(MAX_REQUEST_LINE, MAX_HEADER_SIZE + 1), False),
    ],
)
def test_the_fast_path_keeps_the_size_limits_to_the_byte(data: bytes, taken: bool) -> None:
    assert (fast(data) is not None) is taken
    assert_fast_agrees(data)


@pytest.mark.parametrize(
    "data",
    [
        b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7f\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_HEADER_SIZE + b"\r\n\r\n",
    ],
)
def test_the_fast_path_declines_what_it_does_not_read_itself(data: bytes) -> None:
    assert fast(data) is None
    assert_fast_agrees(data)
