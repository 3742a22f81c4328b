"""The access log: off by default; ``serve(..., access_log=True)``, ``Server(...,
access_log=True)`` and ``duplex serve --access-log`` log one line per exchange in the
common log format to the ``duplex.access`` logger, the size being the response body's
bytes sent, over HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import logging
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Literal

import pytest
import trio

import duplex
from _redis_support import duplex_process, http_get
from _server_support import RawClient, request_bytes
from test_run import running

TIMEOUT = 30.0
#: host ident user [day/month/year:hour:minute:second zone] "request line" status size
COMMON = re.compile(
    r'^(\S+) - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "([^"]*)" (\d{3}|-) (\d+|-)$'
)


class AccessLines(logging.Handler):
    """The lines the access log writes, and a way to wait for them."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._changed = trio.lowlevel.ParkingLot()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._changed.unpark_all()

    async def wait_for(self, count: int) -> list[str]:
        """The first ``count`` lines, once there are (the log is written as an exchange
        ends, which may be after its client has the whole response)."""
        while len(self.lines) < count:
            await self._changed.park()
        return self.lines[:count]


@pytest.fixture
def access() -> Iterator[AccessLines]:
    logger = logging.getLogger("duplex.access")
    lines = AccessLines()
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


async def handler(request: duplex.Request) -> duplex.Response:
    if request.path == "/stream":

        async def chunks() -> AsyncIterator[bytes]:
            yield b"ab"
            yield b"cde"

        return duplex.Response(200, body=chunks())
    if request.path == "/missing":
        return duplex.Response(404, body="no such thing\n")
    if request.path == "/fails":
        raise RuntimeError("a bug in the handler")
    if request.path == "/empty":
        return duplex.Response(204)
    return duplex.Response(200, body="hello")


@asynccontextmanager
async def serving(*, access_log: bool = True, how: str = "serve") -> AsyncIterator[duplex.Server]:
    start: Callable[..., Awaitable[object]]
    async with trio.open_nursery() as nursery:
        if how == "serve":
            start = partial(duplex.serve, handler, "127.0.0.1", 0, access_log=access_log)
        else:
            start = duplex.Server(handler, "127.0.0.1", 0, access_log=access_log).serve
        server: duplex.Server = await nursery.start(start)
        yield server
        nursery.cancel_scope.cancel()


def parse(line: str) -> tuple[str, str, str, str]:
    match = COMMON.match(line)
    assert match is not None, f"not in the common log format: {line!r}"
    host, request_line, status, size = match.groups()
    return host, request_line, status, size


@pytest.mark.parametrize("how", ["serve", "Server"])
async def test_each_http11_exchange_is_one_line_in_the_common_log_format(
    access: AccessLines, how: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(how=how) as server, await RawClient.connect(server.port) as client:
            for target in ["/hello?name=x", "/stream", "/missing", "/empty"]:
                await client.send(request_bytes(target))
                await client.read_response()
            lines = await access.wait_for(4)
    assert [parse(line) for line in lines] == [
        ("127.0.0.1", "GET /hello?name=x HTTP/1.1", "200", "5"),
        ("127.0.0.1", "GET /stream HTTP/1.1", "200", "5"),
        ("127.0.0.1", "GET /missing HTTP/1.1", "404", "14"),
        ("127.0.0.1", "GET /empty HTTP/1.1", "204", "-"),
    ]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "400",
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", "431"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "400"),
    ],
    ids=["smuggling", "too-large", "not-http"],
)
async def test_a_request_refused_before_it_is_read_whole_is_logged_without_a_request_line(
    access: AccessLines, data: bytes, status: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving() as server, await RawClient.connect(server.port) as client:
            await client.send(data)
            response = await client.read_response()
            (line,) = await access.wait_for(1)
    assert str(response.status) == status
    assert parse(line)[1:] == ("-", status, str(len(response.body)))


async def test_a_head_request_logs_no_body_bytes(access: AccessLines) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving() as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes("/", method="HEAD"))
            await client.read_response(method="HEAD")
            (line,) = await access.wait_for(1)
    assert parse(line)[1:] == ("HEAD / HTTP/1.1", "200", "-")


async def test_a_failing_handler_is_logged_with_its_500(access: AccessLines) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving() as server, await RawClient.connect(server.port) as client:
            await client.send(request_bytes("/fails"))
            response = await client.read_response()
            (line,) = await access.wait_for(1)
    assert response.status == 500
    assert parse(line)[1:] == ("GET /fails HTTP/1.1", "500", str(len(response.body)))


@pytest.mark.parametrize("http2", [True, "prior-knowledge"], ids=["http1.1", "h2c"])
async def test_the_client_library_exchanges_are_logged_over_either_protocol(
    access: AccessLines, http2: bool | Literal["prior-knowledge"]
) -> None:
    version = "HTTP/2.0" if http2 == "prior-knowledge" else "HTTP/1.1"
    with trio.fail_after(TIMEOUT):
        async with serving() as server, duplex.Client(http2=http2) as client:
            for path in ["/hello", "/stream", "/missing"]:
                response = await client.get(f"http://127.0.0.1:{server.port}{path}")
                await response.body.join()
            lines = await access.wait_for(3)
    assert [parse(line)[1:] for line in lines] == [
        (f"GET /hello {version}", "200", "5"),
        (f"GET /stream {version}", "200", "5"),
        (f"GET /missing {version}", "404", "14"),
    ]


async def test_a_websocket_over_http11_is_logged_as_switching_protocols(
    access: AccessLines,
) -> None:
    async def chat(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_receive=lambda channel, message: channel.send(message))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(duplex.serve, chat, "127.0.0.1", 0, access_log=True)
            )
            async with duplex.Client() as client:
                async with client.websocket(f"ws://127.0.0.1:{server.port}/chat") as websocket:
                    await websocket.send("hi")
                    assert await websocket.receive() == "hi"
                (line,) = await access.wait_for(1)
            nursery.cancel_scope.cancel()
    assert parse(line)[1:3] == ("GET /chat HTTP/1.1", "101")


@pytest.mark.parametrize(
    "http2",
    [False, "prior-knowledge"],
    ids=["http1.1", "h2c"],
)
async def test_a_long_poll_whose_client_left_before_any_answer_logs_no_status(
    access: AccessLines, http2: bool | Literal["prior-knowledge"]
) -> None:
    """No response went out, so none is logged: a 500 would count a client that left
    as a server error."""
    opened = trio.Event()
    closed: list[str] = []

    async def poll(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            on_open=lambda channel: opened.set(),
            on_close=lambda channel, status: closed.append(status.kind),
        )

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(duplex.serve, poll, "127.0.0.1", 0, access_log=True)
            )
            async with duplex.Client(http2=http2) as client, trio.open_nursery() as polling:
                polling.start_soon(client.get, f"http://127.0.0.1:{server.port}/poll")
                await opened.wait()
                polling.cancel_scope.cancel()
            (line,) = await access.wait_for(1)
            nursery.cancel_scope.cancel()
    version = "HTTP/2.0" if http2 else "HTTP/1.1"
    assert closed == ["gone"]
    assert parse(line)[1:] == (f"GET /poll {version}", "-", "-")


@pytest.fixture
def access_at_no_level() -> Iterator[AccessLines]:
    """The lines of ``duplex.access`` as an application's own logging set-up hears them:
    its handler on the logger, no level set there, the root logger at WARNING."""
    logger, root = logging.getLogger("duplex.access"), logging.getLogger()
    lines = AccessLines()
    levels = logger.level, root.level
    logger.setLevel(logging.NOTSET)
    root.setLevel(logging.WARNING)
    logger.addHandler(lines)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(levels[0])
        root.setLevel(levels[1])


async def test_access_log_true_is_heard_by_logging_left_at_warning(
    access_at_no_level: AccessLines,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving() as server:
            assert (await http_get(server.port)).status == 200
            (line,) = await access_at_no_level.wait_for(1)
    assert parse(line)[1:] == ("GET / HTTP/1.1", "200", "5")


def test_a_level_set_on_the_access_logger_is_kept(access_at_no_level: AccessLines) -> None:
    logging.getLogger("duplex.access").setLevel(logging.WARNING)

    async def serve_one() -> None:
        async with serving() as server:
            assert (await http_get(server.port)).status == 200
            await server.shutdown()

    trio.run(serve_one)
    assert access_at_no_level.lines == []
    assert logging.getLogger("duplex.access").level == logging.WARNING


async def test_the_access_log_is_off_by_default(access: AccessLines) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(access_log=False) as server:
            reply = await http_get(server.port)
            assert reply.status == 200
            await server.shutdown()
    assert access.lines == []


def test_a_request_line_that_would_break_the_format_is_escaped(access: AccessLines) -> None:
    server = duplex.Server(handler, access_log=True)
    request = duplex.Request("GET", '/a"b\\c\x7fé', duplex.Headers(), duplex.Buffered(b""))
    server.log_access(request, None, 0)
    assert parse(access.lines[0]) == ("-", "GET /a\\x22b\\x5cc\\x7f\\xe9 HTTP/1.1", "-", "-")


# -- the command line ----------------------------------------------------------------------

APP = """\
import duplex


async def handler(request):
    return duplex.Response(200, body="hello")
"""


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "workers"])
async def test_duplex_serve_dash_dash_access_log_writes_the_lines_to_standard_error(
    tmp_path: Path, workers: list[str]
) -> None:
    (tmp_path / "app.py").write_text(APP)
    arguments = ["serve", "app:handler", "--port", "0", "--access-log", *workers]
    with trio.fail_after(TIMEOUT):
        async with duplex_process(arguments, cwd=tmp_path, env={}) as server:
            assert (await http_get(server.port, "/logged")).body == b"hello"
            match, _ = await server.stderr.wait_for(r'"GET /logged HTTP/1.1"')
            server.signal(signal.SIGTERM)
            assert await server.wait() == 0
    assert parse(match.string.rstrip("\n"))[1:] == ("GET /logged HTTP/1.1", "200", "5")


async def test_run_with_access_log_writes_the_lines_to_standard_error(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP + "\nduplex.run(handler, port=0, access_log=True)\n")
    with trio.fail_after(TIMEOUT):
        async with running(["app.py"], tmp_path) as server:
            assert (await http_get(server.port, "/logged")).body == b"hello"
            match, _ = await server.stderr.wait_for(r'"GET /logged HTTP/1.1"')
            server.signal(signal.SIGINT)
            assert await server.wait() == 0
    assert parse(match.string.rstrip("\n"))[1:] == ("GET /logged HTTP/1.1", "200", "5")
