"""A corpus of request-smuggling and malformed-framing vectors, one test each.

Each vector is a request for ``/vector`` with ``/smuggled`` pipelined behind it. A vector
duplex refuses gets its status, then the close, and the handler never sees
``/smuggled``. A vector duplex accepts is framed exactly one way, asserted here, with
the reason in docs/reliability.md. The same corpus, turned round, checks the client:
a malformed response is read one way or refused, and whatever follows it on the
connection is never handed to the next request.

Vectors already covered by tests/test_server_hardening.py (CL+TE, two different
Content-Lengths, obs-fold and control characters in an ordinary header, bare LF and CR,
CR/LF/NUL in a chunk extension, malformed trailers) are not repeated here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio
import trio.testing

import duplex
from _client_support import FakeServer, read_head
from _reliability_support import BodyRecorder, error_records
from _server_support import RawClient, Recorder, request_bytes, serving

SMUGGLED = request_bytes("/smuggled")


def post(headers: bytes, body: bytes = b"", *, version: bytes = b"1.1") -> bytes:
    """A request for /vector: ``headers`` as raw lines (each ending in CRLF), then ``body``."""
    return b"POST /vector HTTP/" + version + b"\r\nHost: x\r\n" + headers + b"\r\n" + body


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked\r\n", body)


@dataclass(frozen=True)
class Refused:
    """A vector duplex refuses: the statuses it answers (the last one refuses), and the
    targets the handler sees on the way."""

    name: str
    data: bytes
    statuses: tuple[int, ...]
    served: tuple[str, ...] = ()


HEAD_VECTORS = [
    # CL.TE and TE.CL: a front end framing by the other header would smuggle "G".
    Refused(
        "cl-te-prefix",
        post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"),
        (400,),
    ),
    Refused(
        "te-cl",
        post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"5c\r\nGPOST / HTTP/1.1\r\n"),
        (400,),
    ),
    Refused(
        "te-cl-http-1.0",
        post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n", version=b"1.0"),
        (400,),
    ),
    # Transfer-Encoding obfuscations.
    Refused("te-chunked-identity", post(b"Transfer-Encoding: chunked, identity\r\n"), (501,)),
    Refused("te-identity-chunked", post(b"Transfer-Encoding: identity, chunked\r\n"), (501,)),
    Refused("te-xchunked", post(b"Transfer-Encoding: xchunked\r\n"), (501,)),
    Refused("te-quoted", post(b'Transfer-Encoding: "chunked"\r\n'), (501,)),
    Refused(
        "te-duplicate",
        post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        (501,),
    ),
    Refused(
        "te-duplicate-identity",
        post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", b"0\r\n\r\n"),
        (501,),
    ),
    Refused("te-space-before-colon", post(b"Transfer-Encoding : chunked\r\n"), (400,)),
    Refused("te-vertical-tab-value", post(b"Transfer-Encoding:\x0bchunked\r\n"), (400,)),
    Refused("te-vertical-tab-name", post(b"Transfer-Encoding\x0b: chunked\r\n"), (400,)),
    Refused("te-obs-fold", post(b"Transfer-Encoding:\r\n chunked\r\n"), (400,)),
    Refused("te-line-starting-with-space", post(b" Transfer-Encoding: chunked\r\n"), (400,)),
    # Not a framing header at all: the chunked body is read as the next request.
    Refused(
        "te-underscore",
        post(b"Transfer_Encoding: chunked\r\n", b"0\r\n\r\n"),
        (200, 400),
        ("/vector",),
    ),
    # Content-Length.
    Refused("cl-list-conflicting", post(b"Content-Length: 1, 2\r\n", b"ab"), (400,)),
    Refused("cl-negative", post(b"Content-Length: -1\r\n", b"a"), (400,)),
    Refused("cl-plus", post(b"Content-Length: +1\r\n", b"a"), (400,)),
    Refused("cl-hex", post(b"Content-Length: 0x1\r\n", b"a"), (400,)),
    Refused("cl-inner-space", post(b"Content-Length: 1 1\r\n", b"a"), (400,)),
    Refused("cl-empty", post(b"Content-Length: \r\n", b"a"), (400,)),
    Refused("cl-26-digits", post(b"Content-Length: " + b"9" * 26 + b"\r\n", b"a"), (400,)),
    Refused("cl-space-before-colon", post(b"Content-Length : 1\r\n", b"a"), (400,)),
    Refused("cl-obs-fold", post(b"Content-Length:\r\n 1\r\n", b"a"), (400,)),
    # h11 would merge these into one Content-Length: duplex checks the raw head.
    Refused(
        "cl-duplicate-identical", post(b"Content-Length: 1\r\nContent-Length: 1\r\n", b"a"), (400,)
    ),
    Refused("cl-list-identical", post(b"Content-Length: 1, 1\r\n", b"a"), (400,)),
    # Line folding, line ends, control characters.
    Refused("obs-fold-tab", post(b"X-A: one\r\n\ttwo\r\n"), (400,)),
    Refused("bare-lf-request-line", b"GET /vector HTTP/1.1\nHost: x\r\n\r\n", (400,)),
    Refused("bare-lf-end-of-head", b"GET /vector HTTP/1.1\r\nHost: x\r\n\n", (400,)),
    Refused("bare-cr-request-line", b"GET /vector HTTP/1.1\rHost: x\r\n\r\n", (400,)),
    Refused("bare-cr-end-of-head", b"GET /vector HTTP/1.1\r\nHost: x\r\n\r\r\n", (400,)),
    Refused("nul-in-header-name", b"GET /vector HTTP/1.1\r\nHost: x\r\nX\x00A: b\r\n\r\n", (400,)),
    Refused("nul-in-host", b"GET /vector HTTP/1.1\r\nHost: x\x00y\r\n\r\n", (400,)),
    Refused("space-in-header-name", b"GET /vector HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n", (400,)),
    Refused("space-in-target", b"GET /vec tor HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
    Refused("two-hosts", b"GET /vector HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", (400,)),
    Refused("no-host", b"GET /vector HTTP/1.1\r\n\r\n", (400,)),
    # Versions.
    Refused("http-9.9", b"GET /vector HTTP/9.9\r\nHost: x\r\n\r\n", (505,)),
    Refused("http-1.2", b"GET /vector HTTP/1.2\r\nHost: x\r\n\r\n", (505,)),
    Refused("http-0.9-explicit", b"GET /vector HTTP/0.9\r\n\r\n", (505,)),
    Refused("http-0.9-simple-request", b"GET /vector\r\n\r\n", (400,)),
    Refused("http-lowercase", b"GET /vector http/1.1\r\nHost: x\r\n\r\n", (400,)),
    Refused("http-01.1", b"GET /vector HTTP/01.1\r\nHost: x\r\n\r\n", (400,)),
    # (The HTTP/2 preface opens an HTTP/2 connection: tests/test_h2_server.py.)
    # RFC 9112 §2.2 lets a server ignore one leading empty line; duplex (and h11) refuse it.
    Refused("leading-crlf", b"\r\nGET /vector HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
    Refused("leading-lf", b"\nGET /vector HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
    # Answered 2xx, CONNECT would make the connection a tunnel: duplex is no proxy.
    Refused(
        "connect",
        b"CONNECT elsewhere.example:443 HTTP/1.1\r\nHost: elsewhere.example:443\r\n\r\n",
        (501,),
    ),
]

BODY_VECTORS = [
    Refused("chunk-size-21-hex-digits", chunked(b"f" * 21 + b"\r\n"), (400,), ("/vector",)),
    Refused("chunk-size-plus", chunked(b"+3\r\nabc\r\n0\r\n\r\n"), (400,), ("/vector",)),
    Refused("chunk-size-0x", chunked(b"0x3\r\nabc\r\n0\r\n\r\n"), (400,), ("/vector",)),
    Refused("chunk-size-negative", chunked(b"-3\r\nabc\r\n0\r\n\r\n"), (400,), ("/vector",)),
    Refused("chunk-size-leading-space", chunked(b" 3\r\nabc\r\n0\r\n\r\n"), (400,), ("/vector",)),
    Refused("chunk-size-bare-lf", chunked(b"3\nabc\r\n0\r\n\r\n"), (400,), ("/vector",)),
    Refused("chunk-data-bare-lf", chunked(b"3\r\nabc\n0\r\n\r\n"), (400,), ("/vector",)),
    Refused("last-chunk-bare-lf", chunked(b"3\r\nabc\r\n0\n\r\n"), (400,), ("/vector",)),
    Refused(
        "last-chunk-extension-cr", chunked(b"3\r\nabc\r\n0;a\rb\r\n\r\n"), (400,), ("/vector",)
    ),
]


async def refusal(vector: Refused, handler: Recorder) -> list[int]:
    """Send ``vector`` with /smuggled behind it; the statuses answered before the close
    (as soon as one differs from the vector's, without waiting for the close)."""
    statuses: list[int] = []
    async with serving(handler) as server, await RawClient.connect(server.port) as client:
        await client.send(vector.data + SMUGGLED)
        for expected in vector.statuses:
            statuses.append((await client.read_response()).status)
            if statuses[-1] != expected:
                return statuses
        await client.expect_closed()
    return statuses


@pytest.mark.parametrize("vector", HEAD_VECTORS, ids=[vector.name for vector in HEAD_VECTORS])
async def test_a_malformed_head_is_refused_then_closed_and_nothing_behind_it_served(
    vector: Refused, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    with trio.fail_after(5):
        assert await refusal(vector, recorder) == list(vector.statuses)
    assert recorder.targets == list(vector.served)
    assert error_records(caplog) == []


@pytest.mark.parametrize("vector", BODY_VECTORS, ids=[vector.name for vector in BODY_VECTORS])
async def test_a_malformed_chunked_body_is_refused_then_closed_and_nothing_behind_it_served(
    vector: Refused, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    with trio.fail_after(5):
        assert await refusal(vector, recorder) == list(vector.statuses)
    assert recorder.targets == list(vector.served)
    assert error_records(caplog) == []


# -- what duplex accepts, and exactly how it reads it ------------------------------------


@dataclass(frozen=True)
class Accepted:
    """A vector duplex accepts: what the handler sees (target, body) and whether the
    connection stays open for ``/smuggled`` (then a legitimate pipelined request)."""

    name: str
    data: bytes
    seen: tuple[tuple[str, bytes], ...]
    keeps_alive: bool = True


ACCEPTED = [
    # OWS before and after a field value may be SP or HTAB (RFC 9110 §5.6.3).
    Accepted(
        "te-tab-before-value",
        post(b"Transfer-Encoding:\tchunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        (("/vector", b"abc"),),
    ),
    Accepted(
        "te-tab-after-value",
        post(b"Transfer-Encoding: chunked\t\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        (("/vector", b"abc"),),
    ),
    # Transfer coding names are case-insensitive (RFC 9112 §7).
    Accepted(
        "te-uppercase",
        post(b"Transfer-Encoding: CHUNKED\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        (("/vector", b"abc"),),
    ),
    # 1*DIGIT: leading zeros are part of the grammar.
    Accepted("cl-leading-zeros", post(b"Content-Length: 003\r\n", b"abc"), (("/vector", b"abc"),)),
    # Framing fields in the trailers are never merged into the head.
    Accepted(
        "framing-fields-in-trailers",
        chunked(b"3\r\nabc\r\n0\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (("/vector", b"abc"),),
    ),
    # obs-text is allowed in field values (RFC 9110 §5.5).
    Accepted(
        "obs-text-in-value",
        b"GET /vector HTTP/1.1\r\nHost: x\r\nX-A: caf\xe9\xff\r\n\r\n",
        (("/vector", b""),),
    ),
    # RFC 9112 §6.1: chunked in HTTP/1.0 is faulty framing; the server must close after.
    Accepted(
        "te-in-http-1.0",
        post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n", version=b"1.0"),
        (("/vector", b"abc"),),
        keeps_alive=False,
    ),
    # RFC 9112 §3.2.2: a server MUST accept the absolute form; duplex hands it on verbatim.
    Accepted(
        "absolute-form",
        b"GET http://elsewhere.example/vector?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        (("http://elsewhere.example/vector?q=1", b""),),
    ),
    Accepted(
        "authority-form-without-connect",
        b"GET elsewhere.example:80 HTTP/1.1\r\nHost: x\r\n\r\n",
        (("elsewhere.example:80", b""),),
    ),
    Accepted("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", (("*", b""),)),
    Accepted("asterisk-form-not-options", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", (("*", b""),)),
    # An upgrade duplex does not speak is ignored: the request is plain HTTP/1.1.
    Accepted(
        "upgrade-h2c",
        b"GET /vector HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        (("/vector", b""),),
    ),
]


@pytest.mark.parametrize("vector", ACCEPTED, ids=[vector.name for vector in ACCEPTED])
async def test_an_accepted_vector_is_framed_one_way_only(vector: Accepted) -> None:
    handler = BodyRecorder()
    with trio.fail_after(5):
        async with serving(handler) as server, await RawClient.connect(server.port) as client:
            await client.send(vector.data + SMUGGLED)
            first = await client.read_response()
            if vector.keeps_alive:
                second = await client.read_response()
                assert second.status == 200
            else:
                await client.expect_closed()
    assert first.status == 200
    expected = list(vector.seen) + ([("/smuggled", b"")] if vector.keeps_alive else [])
    assert handler.requests == expected


# -- sizes that only the data can reveal ----------------------------------------------


async def test_a_chunk_size_over_max_body_size_gets_413_at_once() -> None:
    recorder = Recorder()
    limits = duplex.Limits(max_body_size=1024, read_timeout=3)
    with trio.fail_after(1):
        async with (
            serving(recorder, limits=limits) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(chunked(b"f" * 20 + b"\r\n") + SMUGGLED)
            response = await client.read_response()
            await client.expect_closed()
    assert response.status == 413


TRAILER_LIMIT = 2048
BIG_TRAILERS = b"X-Big: " + b"t" * (4 * TRAILER_LIMIT) + b"\r\n\r\n"


async def send_oversized_trailers(*, piece_size: int) -> int:
    """Send a chunked request whose trailers exceed max_header_size, in pieces of
    ``piece_size`` bytes, each taken by the server before the next; the status answered
    (then, for a 431, the close)."""
    handler_reading = trio.Event()

    async def reader(request: duplex.Request) -> duplex.Response:
        handler_reading.set()
        return duplex.Response(200, body=await request.body.join())

    limits = duplex.Limits(max_header_size=TRAILER_LIMIT)
    async with (
        serving(reader, limits=limits) as server,
        await RawClient.connect(server.port) as client,
    ):
        await client.send(chunked(b"3\r\nabc\r\n"))
        await handler_reading.wait()
        await trio.testing.wait_all_tasks_blocked()
        rest = b"0\r\n" + BIG_TRAILERS
        for start in range(0, len(rest), piece_size):
            if client.has_input():
                break  # answered already
            await client.send(rest[start : start + piece_size])
            await trio.testing.wait_all_tasks_blocked()
        response = await client.read_response()
        if response.status == 431:
            await client.expect_closed()
    return response.status


async def test_trailers_over_max_header_size_arriving_in_pieces_get_431() -> None:
    with trio.fail_after(5):
        assert await send_oversized_trailers(piece_size=512) == 431


async def test_trailers_over_max_header_size_arriving_in_one_read_get_431() -> None:
    with trio.fail_after(5):
        assert await send_oversized_trailers(piece_size=len(BIG_TRAILERS) + 3) == 431


# -- the client: hostile responses ------------------------------------------------------


SPLIT = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
"""A second response sent right behind the first, answering no request."""


@dataclass(frozen=True)
class HostileResponse:
    """A malformed response, and what the client makes of it: the body it reads, or
    None for a ``duplex.ProtocolError``."""

    name: str
    data: bytes
    body: bytes | None


def response(headers: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n" + body


CHUNKED_ABC = b"3\r\nabc\r\n0\r\n\r\n"

HOSTILE_RESPONSES = [
    HostileResponse("ok", response(b"Content-Length: 3\r\n", b"abc"), b"abc"),
    # Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
    HostileResponse(
        "cl-te",
        response(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", CHUNKED_ABC),
        b"abc",
    ),
    HostileResponse(
        "te-cl",
        response(b"Transfer-Encoding: chunked\r\nContent-Length: 99\r\n", CHUNKED_ABC),
        b"abc",
    ),
    HostileResponse(
        "cl-conflicting", response(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abc"), None
    ),
    HostileResponse("te-xchunked", response(b"Transfer-Encoding: xchunked\r\n", b"abc"), None),
    HostileResponse(
        "te-chunked-identity", response(b"Transfer-Encoding: chunked, identity\r\n", b"abc"), None
    ),
    HostileResponse("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc", b"abc"),
    HostileResponse("bare-cr", response(b"X-A: a\rb\r\nContent-Length: 3\r\n", b"abc"), None),
    HostileResponse("obs-fold", response(b"X-A: a\r\n b\r\nContent-Length: 3\r\n", b"abc"), b"abc"),
    HostileResponse(
        "nul-in-value", response(b"X-A: a\x00b\r\nContent-Length: 3\r\n", b"abc"), None
    ),
    HostileResponse(
        "control-in-value", response(b"X-A: a\x01b\r\nContent-Length: 3\r\n", b"abc"), b"abc"
    ),
    # Refused, as the server refuses it in a request (h11 lets it through).
    HostileResponse(
        "chunk-extension-cr",
        response(b"Transfer-Encoding: chunked\r\n", b"3;a\rb" + CHUNKED_ABC[1:]),
        None,
    ),
    HostileResponse(
        "chunk-size-plus", response(b"Transfer-Encoding: chunked\r\n", b"+" + CHUNKED_ABC), None
    ),
    HostileResponse(
        "chunk-size-21-hex-digits",
        response(b"Transfer-Encoding: chunked\r\n", b"f" * 21 + b"\r\nabc"),
        None,
    ),
    HostileResponse("http-9.9", b"HTTP/9.9 200 OK\r\nContent-Length: 3\r\n\r\nabc", b"abc"),
    HostileResponse("status-1000", b"HTTP/1.1 1000 OK\r\nContent-Length: 3\r\n\r\nabc", None),
    HostileResponse("leading-crlf", b"\r\n" + response(b"Content-Length: 3\r\n", b"abc"), None),
    HostileResponse(
        "unrequested-101",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nabc",
        None,
    ),
]


@pytest.mark.parametrize(
    "hostile", HOSTILE_RESPONSES, ids=[hostile.name for hostile in HOSTILE_RESPONSES]
)
async def test_a_response_smuggled_behind_a_hostile_one_never_answers_the_next_request(
    hostile: HostileResponse, nursery: trio.Nursery
) -> None:
    async def respond(stream: trio.SocketStream) -> None:
        await read_head(stream)
        first = server.connections == 1
        await stream.send_all(
            hostile.data + SPLIT if first else response(b"Content-Length: 4\r\n", b"next")
        )
        while await stream.receive_some(65536):
            pass

    with trio.fail_after(5):
        server = await FakeServer.start(nursery, respond)
        async with duplex.Client() as client:
            try:
                outcome: bytes | None = await (await client.get(server.url)).read()
            except duplex.ProtocolError:
                outcome = None
            assert client.pool.open_connections() == 0
            follow_up = await (await client.get(server.url)).read()
    assert outcome == hostile.body
    assert follow_up == b"next"
    assert server.connections == 2
