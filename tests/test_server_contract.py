"""What users of the server meet first (issue 13), each against real sockets: raw ones
where the bytes on the wire matter, and the real peers the issue names (Python's
``http.client``, curl, ``duplex.Client`` and ``duplex echo``).
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing

import duplex
from _client_support import echo_process
from _real_body_support import Expected, Handoff, apply_expectations, deadlock_guard, url
from _reliability_support import error_records, reset
from _server_support import (
    IncompleteResponse,
    RawClient,
    hello,
    request_bytes,
    serving,
)
from helpers import TIMEOUT, background

# Every test here runs on Linux's fast I/O path and on the portable one (tests/conftest.py).
pytestmark = pytest.mark.both_paths

KNOWN_FAILURES: list[Expected] = []


@pytest.fixture(autouse=True)
def known_failures(request: pytest.FixtureRequest) -> None:
    apply_expectations(request, KNOWN_FAILURES, [])


class Oops(Exception):
    pass


BIG = bytes(range(256)) * (1 << 15)  # 8 MiB: more than the socket buffers on both ends
AFTER = b"after"

NOTICE_BOUND = 2.0
"""Seconds within which the server must notice a peer that left (it checks every tenth
of a second or so; a stuck server never would)."""


async def slow_reader(port: int) -> RawClient:
    """A raw client whose receive window is tiny, so that a big response soon blocks."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    return RawClient(trio.SocketStream(sock))


def streamable(fn: Callable[[duplex.Stream], Awaitable[object]]) -> duplex.Handler:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=duplex.Streamable(fn))

    return handler


async def echo(stream: duplex.Stream) -> None:
    while chunk := await stream.readpartial(65536):
        await stream.write(chunk)


async def read_chunks_until_the_end(client: RawClient) -> tuple[bytes, bool]:
    """The chunked body's data, and True if it ended with its last chunk (False if the
    connection ended first). Framing the parser cannot read fails the test."""
    received = bytearray()
    try:
        while chunk := await client.read_chunk():
            received += chunk
    except IncompleteResponse as cut:
        return bytes(received + cut.partial), False
    await client.read_trailers()
    return bytes(received), True


# -- a write cancelled part-way ------------------------------------------------------


async def test_a_write_cancelled_part_way_never_leaves_a_half_chunk_before_new_frames() -> None:
    scopes: Handoff[trio.CancelScope] = Handoff()
    big_written = False

    async def cancelled_then_more(stream: duplex.Stream) -> None:
        nonlocal big_written
        with trio.CancelScope() as scope:
            scopes.offer(scope)
            await stream.write(BIG)
            big_written = True
        for _ in range(3):
            await stream.write(AFTER)

    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(streamable(cancelled_then_more)) as server,
            await slow_reader(server.port) as client,
        ):
            await client.send(request_bytes())
            head = await client.read_head()
            assert head.chunked
            scope = await scopes.take()
            await trio.testing.wait_all_tasks_blocked()
            assert not big_written, "the write did not block: nothing was cancelled"
            scope.cancel()
            received, ended = await read_chunks_until_the_end(client)
    whole = BIG + AFTER * 3
    if ended:
        assert received == whole, "the response ended cleanly with bytes missing or wrong"
    else:
        assert whole.startswith(received), "the client received bytes that were never written"


# -- a Streamable's stream -----------------------------------------------------------


async def test_close_write_ends_the_response_at_once_while_the_handler_reads_the_upload() -> None:
    uploads: list[bytes] = []

    async def reply_then_read(stream: duplex.Stream) -> None:
        await stream.write(b"reply")
        await stream.close_write()
        uploads.append(await stream.read())

    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(streamable(reply_then_read)) as server,
            duplex.Client() as client,
        ):
            output = duplex.Writable()
            response = await client.post(url(server), body=output)
            assert await response.body.join() == b"reply"
            await output.write(b"upload")
            await output.close_write()
            await trio.testing.wait_all_tasks_blocked()
    assert uploads == [b"upload"]


async def test_wait_send_all_might_not_block_returns_while_the_socket_has_room() -> None:
    async def wait_then_write(stream: duplex.Stream) -> None:
        await stream.wait_send_all_might_not_block()
        await stream.write(b"ready")

    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(streamable(wait_then_write)) as server,
            duplex.Client() as client,
        ):
            response = await client.get(url(server))
            assert await response.body.join() == b"ready"


async def test_two_tasks_writing_to_a_streamables_stream_at_once_raise_busy_resource_error() -> (
    None
):
    streams: Handoff[duplex.Stream] = Handoff()
    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(streamable(streams.give)) as server,
            await slow_reader(server.port) as client,
            trio.open_nursery() as nursery,
        ):
            await client.send(request_bytes())
            await client.read_head()
            async with streams.taken() as stream:
                first = await background(nursery, stream.write, BIG)
                assert first.blocked
                with pytest.raises(trio.BusyResourceError):
                    await stream.write(b"second")
                received, _ = await read_chunks_until(client, len(BIG))
                assert received == BIG
                await trio.testing.wait_all_tasks_blocked()
                assert first.done


async def read_chunks_until(client: RawClient, size: int) -> tuple[bytes, bool]:
    """Chunk data until ``size`` bytes came; True if the body ended first."""
    received = bytearray()
    while len(received) < size:
        chunk = await client.read_chunk()
        if not chunk:
            return bytes(received), True
        received += chunk
    return bytes(received), False


# -- request.body ----------------------------------------------------------------------


def streamable_handing_over_its_body(bodies: Handoff[duplex.Readable]) -> duplex.Handler:
    """A ``Streamable`` whose function hands ``request.body`` to the test: the body its
    stream reads, from the socket, in the reader's own task."""

    async def handler(request: duplex.Request) -> duplex.Response:
        async def hand_over(stream: duplex.Stream) -> None:
            await bodies.give(request.body)

        return duplex.Response(200, body=duplex.Streamable(hand_over))

    return handler


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_a_request_body_read_is_a_checkpoint_when_the_bytes_came_with_the_head() -> None:
    bodies: Handoff[duplex.Readable] = Handoff()
    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(streamable_handing_over_its_body(bodies)) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(CHUNKED_HEAD + b"5\r\nfirst\r\n")
            async with bodies.taken() as body:
                with trio.testing.assert_checkpoints():
                    assert await body.read() == b"first"


async def test_a_request_body_read_is_a_checkpoint_when_the_bytes_wait_in_the_socket() -> None:
    bodies: Handoff[duplex.Readable] = Handoff()
    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(streamable_handing_over_its_body(bodies)) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(CHUNKED_HEAD)
            async with bodies.taken() as body:
                await client.send(b"5\r\nlater\r\n")
                await trio.testing.wait_all_tasks_blocked()
                with trio.testing.assert_checkpoints():
                    assert await body.read() == b"later"


# -- a peer that sends a byte more, then leaves ------------------------------------------
# The byte comes once the exchange is under way, so that it waits in the server's socket
# ahead of the end of the connection.


async def send_a_byte_and_leave(client: RawClient) -> None:
    await trio.testing.wait_all_tasks_blocked()
    await client.send(b"G")
    await trio.testing.wait_all_tasks_blocked()
    await client.stream.aclose()


async def test_a_peer_that_sends_a_byte_after_its_request_and_leaves_cancels_the_exchange() -> None:
    gone = trio.Event()

    async def endless(request: duplex.Request) -> duplex.Response:
        async def until_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                gone.set()

        request.nursery.start_soon(until_cancelled)
        return duplex.Response(200, body=duplex.Writable())

    with trio.fail_after(TIMEOUT):
        async with deadlock_guard(), serving(endless) as server:
            client = await RawClient.connect(server.port)
            await client.send(request_bytes())
            assert (await client.read_head()).status == 200
            await send_a_byte_and_leave(client)
            with trio.fail_after(NOTICE_BOUND):
                await gone.wait()


async def test_a_peer_that_sends_a_byte_after_its_request_and_leaves_closes_its_channel() -> None:
    statuses: list[duplex.CloseStatus] = []
    closed = trio.Event()

    async def say_hello(channel: duplex.Channel) -> None:
        await channel.send(b"hello")

    def on_close(channel: duplex.Channel, status: duplex.CloseStatus) -> None:
        statuses.append(status)
        closed.set()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, after_open=say_hello, on_close=on_close)

    with trio.fail_after(TIMEOUT):
        async with deadlock_guard(), serving(handler) as server:
            client = await RawClient.connect(server.port)
            await client.send(request_bytes())
            await client.read_head()
            assert await client.read_chunk() == b"hello"
            await send_a_byte_and_leave(client)
            with trio.fail_after(NOTICE_BOUND):
                await closed.wait()
    assert [status.kind for status in statuses] == ["gone"]


# -- Date ------------------------------------------------------------------------------

IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" \d{4} \d\d:\d\d:\d\d GMT"
)


async def each_part(request: duplex.Request) -> duplex.Response:
    async def parts() -> AsyncIterator[bytes]:
        yield b"one"
        yield b"two"

    return duplex.Response(200, body=parts())


ANSWERS: dict[str, tuple[bytes, duplex.Handler]] = {
    "bytes": (request_bytes(), hello),
    "streaming": (request_bytes(), each_part),
    "server_error": (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", hello),
    "head": (request_bytes(method="HEAD"), each_part),
}


@pytest.mark.parametrize("kind", list(ANSWERS))
async def test_every_response_has_a_date_header_in_rfc_9110_format(kind: str) -> None:
    request, handler = ANSWERS[kind]
    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(handler) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request)
            response = await client.read_head()
    date = response.header("date")
    assert date is not None, f"no Date in the {response.status} response"
    assert IMF_FIXDATE.fullmatch(date), date
    sent = email.utils.parsedate_to_datetime(date)
    assert abs((datetime.now(UTC) - sent).total_seconds()) < 60


# -- lingering close -------------------------------------------------------------------

UPLOAD = bytes(4 << 20)


async def answers_413_unread(request: duplex.Request) -> duplex.Response:
    return duplex.Response(413, body=b"too large\n")


def post_with_http_client(port: int, body: bytes) -> tuple[int, str | None, bytes]:
    """POST with the standard library, which writes the whole body before it reads."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("POST", "/", body=body)
        response = connection.getresponse()
        return response.status, response.getheader("connection"), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("handler", "limits"),
    [
        (answers_413_unread, None),
        (echo_handler := streamable(echo), duplex.Limits(max_body_size=1024)),
    ],
    ids=["handler_answers_early", "max_body_size"],
)
async def test_http_client_posting_a_large_body_receives_the_early_413_not_a_reset(
    handler: duplex.Handler, limits: duplex.Limits | None
) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(handler, limits=limits) as server:
            status, connection, _ = await trio.to_thread.run_sync(
                post_with_http_client, server.port, UPLOAD, abandon_on_cancel=True
            )
    assert status == 413
    assert connection is not None
    assert connection.lower() == "close"


# -- Expect: 100-continue --------------------------------------------------------------


def expecting(length: int, method: str = "POST") -> bytes:
    return (
        f"{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()


async def test_a_body_the_handler_reads_is_asked_for_with_100_continue_before_the_answer() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(streamable(echo)) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(expecting(5))
            interim = await client.read_head()
            assert interim.status == 100, f"{interim.status} came before 100 Continue"
            await client.send(b"hello")
            response = await client.read_response()
    assert response.status == 200
    assert response.body == b"hello"


async def test_curl_uploads_to_an_echo_at_once_without_waiting_for_its_expect_timeout(
    tmp_path: Path,
) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(bytes(range(256)) * 4096)
    with trio.fail_after(TIMEOUT):
        async with serving(streamable(echo)) as server:
            result = await trio.run_process(
                [
                    "curl", "-sS", "-T", str(upload), "-H", "Expect: 100-continue",
                    "--expect100-timeout", "2", "-o", "-", "-w", "\n%{time_total}",
                    url(server),
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body, _, seconds = result.stdout.rpartition(b"\n")
    assert body == upload.read_bytes()
    assert float(seconds) < 1.5, f"curl took {float(seconds)} s: it waited for 100 Continue"


async def test_an_early_answer_to_an_expect_request_says_close_unless_it_keeps_serving() -> None:
    async def refuse(request: duplex.Request) -> duplex.Response:
        return duplex.Response(403, body=b"no\n")

    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(refuse) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(expecting(1000))
            response = await client.read_response()
            assert response.status == 403
            if not response.closes:
                # Kept alive: the body it announced, then the next request, are served.
                await client.send(bytes(1000) + request_bytes("/next"))
                assert (await client.read_response()).status == 403


# -- trailers where they cannot go -----------------------------------------------------


async def with_trailers(request: duplex.Request) -> duplex.Response:
    async def parts() -> AsyncIterator[bytes]:
        yield b"one"
        yield b"two"

    status = 204 if request.path == "/nothing" else 200
    return duplex.Response(status, body=parts(), trailers={"x-checksum": "abc"})


@pytest.mark.parametrize(("method", "target"), [("HEAD", "/"), ("GET", "/nothing")])
async def test_trailers_on_a_response_without_a_body_are_dropped_and_the_connection_kept(
    caplog: pytest.LogCaptureFixture, method: str, target: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(with_trailers) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes(target, method=method))
            first = await client.read_response(method=method)
            assert not first.closes
            await client.send(request_bytes())
            second = await client.read_response()
    assert second.body == b"onetwo"
    assert second.trailers == [(b"x-checksum", b"abc")]
    assert error_records(caplog) == []


async def test_trailers_on_a_response_to_http_1_0_are_dropped_and_the_body_arrives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(with_trailers) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            response = await client.read_response()
    assert response.status == 200
    assert response.body == b"onetwo"
    assert error_records(caplog) == []


# -- a slow or vanished client is the peer's doing ---------------------------------------


def tracebacks_above_debug(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno > logging.DEBUG and r.exc_info is not None]


async def test_a_client_too_slow_to_read_a_streamable_is_logged_at_debug_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="duplex")
    ended = trio.Event()

    async def write_big(stream: duplex.Stream) -> None:
        try:
            await stream.write(BIG)
        finally:
            ended.set()

    limits = duplex.Limits(write_timeout=0.05)
    with trio.fail_after(TIMEOUT):
        async with (
            serving(streamable(write_big), limits=limits) as server,
            await slow_reader(server.port) as client,
        ):
            await client.send(request_bytes())
            await ended.wait()
            await client.read_until_eof()
    assert error_records(caplog) == []
    assert tracebacks_above_debug(caplog) == []


async def test_a_client_that_vanishes_from_a_streamable_is_logged_at_debug_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="duplex")
    ended = trio.Event()

    async def write_forever(stream: duplex.Stream) -> None:
        try:
            while True:
                await stream.write(BIG[:65536])
        finally:
            ended.set()

    with trio.fail_after(TIMEOUT):
        async with deadlock_guard(), serving(streamable(write_forever)) as server:
            client = await slow_reader(server.port)
            await client.send(request_bytes())
            await client.read_head()
            await trio.testing.wait_all_tasks_blocked()
            assert isinstance(client.stream, trio.SocketStream)
            await reset(client.stream)
            await ended.wait()
            await trio.testing.wait_all_tasks_blocked()
    assert error_records(caplog) == []
    assert tracebacks_above_debug(caplog) == []


# -- a producer that fails -------------------------------------------------------------


def caused_by(record: logging.LogRecord, kind: type[BaseException]) -> bool:
    """True if the record's exception is a ``kind`` or was caused by one."""
    error = record.exc_info[1] if record.exc_info else None
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


async def test_a_response_body_closed_with_an_error_cuts_the_response_and_logs_the_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing_producer(request: duplex.Request) -> duplex.Response:
        output = duplex.Writable()

        async def produce() -> None:
            await output.write(b"partial")
            await output.close_write(Oops("the producer failed"))

        request.nursery.start_soon(produce)
        return duplex.Response(200, body=output)

    with trio.fail_after(TIMEOUT):
        async with (
            deadlock_guard(),
            serving(failing_producer) as server,
            await RawClient.connect(server.port) as client,
        ):
            await client.send(request_bytes())
            with pytest.raises(IncompleteResponse) as cut:
                await client.read_response()
            await trio.testing.wait_all_tasks_blocked()
    assert b"partial".startswith(cut.value.partial)
    failures = [r for r in error_records(caplog) if caused_by(r, Oops)]
    assert failures, "the producer's failure was not logged as an error"


# -- duplex.Client and duplex echo -------------------------------------------------------


async def test_a_client_posting_8_mib_of_bytes_to_duplex_echo_gets_the_whole_echo() -> None:
    data = bytes(range(256)) * (1 << 15)
    limits = duplex.ClientLimits(read_timeout=2.0, write_timeout=2.0)
    with trio.fail_after(4 * TIMEOUT):
        async with echo_process() as address, duplex.Client(limits=limits) as client:
            started = time.monotonic()
            response = await client.post(address, body=data)
            echoed = await response.body.join()
    assert len(echoed) == len(data)
    assert echoed == data, f"the echo differs (after {time.monotonic() - started:.1f} s)"
