"""Lint for HTTP: every route of ``duplex demo`` and ``duplex echo``, fetched over a real
socket, has its raw response parsed (thor, as httplint's own command line does) and
checked by httplint, with no note at the error level ("bad").

A stream that never ends (an SSE feed) is linted on its head and first event, as a
response cut short."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import trio
from httplint import HttpRequestLinter, HttpResponseLinter, levels
from thor.http.common import HttpMessageHandler, States, no_body_status
from thor.http.error import HttpError

import duplex
from _channel_support import serving
from duplex._cli import echo
from duplex.demo import Demo


@dataclass
class Exchange:
    """One request to lint the response of: its raw bytes, and when to stop reading
    (``until`` in the body: a response that does not end by itself)."""

    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    until: bytes | None = None

    def raw(self) -> bytes:
        headers = {"host": "127.0.0.1", "connection": "close", **self.headers}
        if self.body or self.method == "POST":
            headers.setdefault("content-length", str(len(self.body)))
        lines = [f"{self.method} {self.target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


class ResponseLint(HttpMessageHandler):
    """httplint's response linter fed by thor's parser, as ``httplint`` on the command
    line does, with the request it answers (its method decides whether a body follows)."""

    default_state = States.WAITING

    def __init__(self, exchange: Exchange) -> None:
        super().__init__()
        self.request = HttpRequestLinter()
        self.request.process_request_topline(
            exchange.method.encode(), exchange.target.encode(), b"1.1"
        )
        self.request.process_headers(
            [(name.encode(), value.encode()) for name, value in exchange.headers.items()]
        )
        self.linter = HttpResponseLinter()
        self.linter.request = self.request
        self.parse_errors: list[str] = []
        self.ended = False

    def input_start(
        self,
        top_line: bytes,
        hdr_tuples: list[tuple[bytes, bytes]],
        conn_tokens: list[bytes],
        transfer_codes: list[bytes],
        content_length: int | None,
    ) -> tuple[bool, bool]:
        version, _, rest = top_line.partition(b" ")
        status, _, phrase = rest.partition(b" ")
        self.linter.process_response_topline(version.rpartition(b"/")[2], status, phrase)
        self.linter.is_head_response = self.request.method == "HEAD"
        self.linter.process_headers(hdr_tuples)
        final = not status.startswith(b"1")
        allows_body = final and status not in no_body_status and not self.linter.is_head_response
        return allows_body, final

    def input_body(self, chunk: bytes) -> None:
        self.linter.feed_content(chunk)

    def input_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.linter.finish_content(True, trailers)
        self.ended = True
        # Nothing may follow the one response asked for.
        self._input_state = States.ERROR

    def input_error(self, err: HttpError, close: bool = True) -> None:
        self.parse_errors.append(f"{err.desc}: {err.detail}")

    def output(self, data: bytes) -> None:
        """Nothing is sent: the parser only reads."""

    def output_done(self) -> None:
        """Nothing is sent: the parser only reads."""

    def bad_notes(self) -> list[str]:
        """The notes at the error level, the response's and its fields' (subnotes)."""
        found = []
        for note in self.linter.notes:
            for each in [note, *note.subnotes]:
                if each.level == levels.BAD:
                    found.append(f"{type(each).__name__}: {each.summary}")
        return found


async def lint(port: int, exchange: Exchange) -> ResponseLint:
    """Send ``exchange`` to 127.0.0.1:``port`` and lint what comes back: up to the
    connection's end, or (``until``) the first body bytes holding it, linted as a
    response cut short."""
    linted = ResponseLint(exchange)
    received = b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(exchange.raw())
        for _ in range(10_000):
            data = await stream.receive_some(65536)
            if not data:
                break
            received += data
            _, ended, body = received.partition(b"\r\n\r\n")
            if exchange.until is not None and ended and exchange.until in body:
                break
    linted.handle_input(received)
    if not linted.ended:
        assert exchange.until is not None, f"the response did not end: {received[:300]!r}"
        linted.linter.finish_content(False)
    return linted


def lint_report(linted: ResponseLint) -> list[str]:
    return linted.parse_errors + linted.bad_notes()


SSE = {"accept": "text/event-stream"}

DEMO_ROUTES = [
    Exchange("GET", "/"),
    Exchange("HEAD", "/"),
    Exchange("GET", "/", {"if-none-match": "*"}),
    Exchange("GET", "/favicon.ico"),
    Exchange("GET", "/events", SSE, until=b"\n\n"),
    Exchange("GET", "/live", SSE, until=b"\n\n"),
    Exchange("POST", "/events/drop"),
    Exchange("POST", "/chat", {"content-type": "text/plain"}, b"hello"),
    Exchange("POST", "/chat", {"content-type": "text/plain"}, b"   "),
    Exchange("GET", "/chat/poll?since=0"),
    Exchange("GET", "/chat/poll?since=soon"),
    Exchange(
        "GET",
        "/chat/ws",
        {
            "upgrade": "websocket",
            "connection": "Upgrade",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            "sec-websocket-version": "13",
        },
        until=b"",
    ),
    Exchange("GET", "/stream"),
    Exchange("POST", "/upload", {"content-type": "text/plain"}, b"one line\n"),
    Exchange("POST", "/echo", {"content-type": "text/plain"}, b"echo me\n"),
    Exchange("POST", "/echo/up?id=lint", {"content-type": "text/plain"}, b"up\n"),
    Exchange("GET", "/echo/down?id=no/such"),
    Exchange("POST", "/"),
    Exchange("POST", "/chat/poll"),
    Exchange("GET", "/no/such/page"),
]


@pytest.mark.parametrize(
    "exchange", DEMO_ROUTES, ids=lambda exchange: f"{exchange.method} {exchange.target}"
)
async def test_a_demo_route_has_no_error_level_lint(exchange: Exchange) -> None:
    demo = Demo(tick_interval=0.05)
    with trio.fail_after(20):
        async with serving(demo.handler) as server, trio.open_nursery() as nursery:
            nursery.start_soon(demo.run)
            if exchange.target.startswith("/chat/poll"):
                # A line in the room, so that the poll answers at once.
                async with duplex.Client() as client:
                    said = await client.post(f"http://127.0.0.1:{server.port}/chat", body=b"hi")
                    await said.body.join()
            linted = await lint(server.port, exchange)
            nursery.cancel_scope.cancel()
    assert linted.linter.status_code is not None
    assert lint_report(linted) == []


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
async def test_duplex_echo_has_no_error_level_lint(method: str) -> None:
    body = b"echo me\n" if method == "POST" else b""
    exchange = Exchange(method, "/", {"content-type": "text/plain"} if body else {}, body)
    with trio.fail_after(20):
        async with serving(echo) as server:
            linted = await lint(server.port, exchange)
    assert linted.linter.status_code == 200
    assert lint_report(linted) == []


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_duplex_echo_says_no_cache_may_keep_its_response(method: str) -> None:
    """Without Cache-Control, httplint warns that caches may make up a freshness
    lifetime (FRESHNESS_HEURISTIC) for an echo that answers one request only."""
    with trio.fail_after(20):
        async with serving(echo) as server:
            linted = await lint(server.port, Exchange(method, "/"))
    warned = [type(note).__name__ for note in linted.linter.notes if note.level == levels.WARN]
    assert warned == []
    assert linted.linter.headers.parsed["cache-control"] == [("no-store", None)]


def test_the_harness_reports_what_httplint_finds_wrong() -> None:
    """A response with a wrong Content-Length and a bad date, fed raw: both reported."""
    linted = ResponseLint(Exchange("GET", "/"))
    linted.handle_input(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nExpires: tomorrow\r\n"
        b"Content-Length: 5\r\n\r\nab"
    )
    linted.linter.finish_content(False)
    report = lint_report(linted)
    assert any(line.startswith("CL_INCORRECT") for line in report), report
    assert any(line.startswith("BAD_DATE_SYNTAX") for line in report), report
