"""Fuzzing at the parse boundary: whatever bytes arrive, whole or one byte at a time, the
server reaches the same outcome (the same statuses, the same requests served), and
every input is either served or refused with a documented status, then the close. The
client, likewise, reads any response the same whole or byte by byte.

One server runs per test; Hypothesis drives the examples from a worker thread, each
calling back into trio (as in tests/test_server_fuzz.py, which checks that arbitrary
bytes never crash the server). The atheris harness (tests/fuzz_server.py) runs the
same checks coverage-guided, when atheris is installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import duplex
from _client_support import FakeServer, read_head
from _reliability_support import error_records, wait_until
from _server_support import IncompleteResponse, RawClient, RawResponse, Recorder, serving

EXAMPLES = int(os.environ.get("DUPLEX_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LIMITS = duplex.Limits(
    header_timeout=2, keep_alive_timeout=2, read_timeout=2, max_body_size=4096,
    max_header_size=2048, max_request_line=512,
)  # fmt: skip

#: What the server may answer: the handler's 200, or a refusal (DESIGN.md §2).
DOCUMENTED = {200, 400, 413, 414, 431, 501, 505}

# -- inputs -------------------------------------------------------------------------------

TARGETS = ["/a", "/b?x=1", "/c/d"]


@st.composite
def request(draw: st.DrawFn) -> bytes:
    """One well-formed request: a GET, or a POST framed by Content-Length or chunked;
    any may ask for 100 Continue."""
    target = draw(st.sampled_from(TARGETS))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    head = f"{'GET' if framing == 'none' else 'POST'} {target} HTTP/1.1\r\nHost: x\r\n"
    if draw(st.booleans()):
        head += "Expect: 100-continue\r\n"
    if framing == "none":
        return head.encode() + b"\r\n"
    body = draw(st.binary(max_size=40))
    if framing == "length":
        return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body
    size = draw(st.integers(1, 16))
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    )
    return head.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


requests = st.lists(request(), min_size=1, max_size=3).map(b"".join)

SPECIAL = [b"\r", b"\n", b"\r\n", b"\x00", b"\t", b" ", b":", b",", b";", b"0", b"f", b"-",
           b"+", b"\x0b", b"\x7f", b"\xff", b"\r\n ", b"\r\n\r\n"]  # fmt: skip


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """Well-formed requests with a few bytes inserted, replaced or deleted."""
    data = draw(requests)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        special = draw(st.sampled_from(SPECIAL))
        operation = draw(st.sampled_from(["insert", "replace", "delete"]))
        if operation == "insert":
            data = data[:at] + special + data[at:]
        elif operation == "replace":
            data = data[:at] + special + data[at + len(special) :]
        else:
            data = data[:at] + data[at + 1 :]
    return data


PIECES = [
    b"GET /a HTTP/1.1\r\n", b"POST /b HTTP/1.1\r\n", b"GET /c HTTP/1.0\r\n", b"Host: x\r\n",
    b"Content-Length: 3\r\n", b"Content-Length: 3, 3\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, identity\r\n", b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding:\tchunked\r\n", b" folded\r\n", b"\r\n", b"\n", b"\r", b"abc",
    b"3\r\nabc\r\n", b"0\r\n\r\n", b"3;x=y\r\nabc\r\n", b"X-T: 1\r\n", b"Expect: 100-continue\r\n",
    b"Connection: close\r\n", b"GET * HTTP/1.1\r\n", b"GET http://h/a HTTP/1.1\r\n",
    b"CONNECT h:443 HTTP/1.1\r\n",
]  # fmt: skip

inputs = st.one_of(
    requests,
    mutated_requests(),
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=16).map(b"".join),
)

# -- outcomes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a connection got: the final responses, in order, and the requests served."""

    responses: tuple[tuple[int, bytes], ...]
    served: tuple[str, ...]
    cut: bool  # the connection ended in the middle of a response

    def essentials(self) -> tuple[object, ...]:
        """The outcome without the wording of refusals, which may name another fault
        first when the bytes arrive apart (a bare CR, then an illegal request line)."""
        answers = tuple((status, body if status < 400 else b"") for status, body in self.responses)
        return answers, self.served, self.cut


async def responses_until_close(client: RawClient) -> tuple[list[RawResponse], bool]:
    responses = []
    while True:
        try:
            responses.append(await client.read_response())
        except IncompleteResponse as error:
            return responses, bool(error.partial)


async def run(port: int, recorder: Recorder, data: bytes, *, bytewise: bool) -> Outcome:
    """Send ``data``, then our EOF, and read until the server closes."""
    seen = len(recorder.targets)
    with trio.fail_after(10):
        async with await RawClient.connect(port) as client:
            pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
            try:
                for piece in pieces:
                    await client.send(piece)
                    if bytewise:
                        await trio.testing.wait_all_tasks_blocked()
                await client.send_eof()
            except trio.BrokenResourceError:
                pass  # the server refused and closed before the end
            responses, cut = await responses_until_close(client)
    return Outcome(
        tuple((response.status, response.body) for response in responses),
        tuple(recorder.targets[seen:]),
        cut,
    )


async def run_examples(
    test: Callable[[int, Recorder], None], caplog: pytest.LogCaptureFixture
) -> None:
    """Run the Hypothesis ``test`` against one server, from a worker thread; nothing
    the server logs may be an error."""
    recorder = Recorder()
    with trio.fail_after(120):
        async with serving(recorder, limits=LIMITS) as server:
            await trio.to_thread.run_sync(test, server.port, recorder)
    assert error_records(caplog) == []


async def test_any_input_has_the_same_outcome_whole_and_one_byte_at_a_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @FUZZ
    @given(data=inputs)
    def example(port: int, recorder: Recorder, data: bytes) -> None:
        whole = trio.from_thread.run(lambda: run(port, recorder, data, bytewise=False))
        bytewise = trio.from_thread.run(lambda: run(port, recorder, data, bytewise=True))
        assert whole.essentials() == bytewise.essentials()

    await run_examples(example, caplog)


def is_refusal(status: int, body: bytes) -> bool:
    return body.startswith(f"{status} {HTTPStatus(status).phrase}: ".encode())


async def test_any_input_is_served_or_refused_with_a_documented_status_then_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @settings(FUZZ, max_examples=EXAMPLES * 2)
    @given(data=inputs)
    def example(port: int, recorder: Recorder, data: bytes) -> None:
        outcome = trio.from_thread.run(lambda: run(port, recorder, data, bytewise=False))
        statuses = [status for status, _ in outcome.responses]
        assert set(statuses) <= DOCUMENTED
        refusals = [index for index, (status, _) in enumerate(outcome.responses) if status >= 400]
        # At most one refusal, and the last word: nothing is answered behind it.
        assert refusals in ([], [len(statuses) - 1])
        for status, body in outcome.responses[len(statuses) - len(refusals) :]:
            assert is_refusal(status, body)
        assert not outcome.cut
        # Each request served was answered, in order, with its own target.
        served = [body.decode() for status, body in outcome.responses if status == 200]
        assert served == list(outcome.served)[: len(served)]

    await run_examples(example, caplog)


# -- the client ----------------------------------------------------------------------------


@st.composite
def response(draw: st.DrawFn) -> bytes:
    """One response: framed by Content-Length, chunked (perhaps with trailers), by the
    close (HTTP/1.0), bodiless, or behind a 100 Continue."""
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "chunked", "close", "204", "continue"]))
    if framing == "length":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    if framing == "chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7])
                          for i in range(0, len(body), 7))  # fmt: skip
        trailers = draw(st.sampled_from([b"", b"X-T: 1\r\n"]))
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        return head + chunks + b"0\r\n" + trailers + b"\r\n"
    if framing == "close":
        return b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n" + body
    if framing == "204":
        return b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n"
    return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@st.composite
def mutated_response(draw: st.DrawFn) -> bytes:
    data = draw(response())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(SPECIAL)) + data[at + draw(st.integers(0, 1)) :]
    return data


class Replies:
    """A fake server's script: the reply to send, whole or one byte at a time."""

    reply = b""
    bytewise = False

    async def respond(self, stream: trio.SocketStream) -> None:
        await read_head(stream)
        pieces = [self.reply[i : i + 1] for i in range(len(self.reply))]
        for piece in pieces if self.bytewise else [self.reply]:
            await stream.send_all(piece)
            if self.bytewise:
                await trio.testing.wait_all_tasks_blocked()


async def fetch(url: str) -> tuple[str, object]:
    """GET and read the whole body: ("body", bytes) or ("error", the error's type)."""
    with trio.fail_after(5):
        async with duplex.Client(limits=duplex.ClientLimits(read_timeout=2)) as client:
            try:
                return "body", await (await client.get(url)).read()
            except (duplex.ProtocolError, duplex.Timeout) as error:
                return "error", type(error)


async def test_any_response_reads_the_same_for_the_client_whole_and_one_byte_at_a_time(
    nursery: trio.Nursery,
) -> None:
    replies = Replies()
    server = await FakeServer.start(nursery, replies.respond)

    @FUZZ
    @given(reply=response() | mutated_response())
    def example(reply: bytes) -> None:
        outcomes = []
        for bytewise in (False, True):
            replies.reply, replies.bytewise = reply, bytewise
            outcomes.append(trio.from_thread.run(fetch, server.url))
        assert outcomes[0] == outcomes[1]

    with trio.fail_after(120):
        await trio.to_thread.run_sync(example)


# -- what fuzzing found (fixed in 91b3d67) ----------------------------------------------------


async def test_a_bodiless_request_expecting_100_continue_is_answered() -> None:
    recorder = Recorder()
    with trio.fail_after(2):
        async with serving(recorder) as server, await RawClient.connect(server.port) as client:
            await client.send(b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n")
            response = await client.read_response()
    assert response.status == 200
    assert recorder.targets == ["/a"]


async def test_a_client_leaving_a_bodiless_request_expecting_100_continue_frees_it() -> None:
    with trio.fail_after(5):
        async with serving(Recorder()) as server:
            async with await RawClient.connect(server.port) as client:
                await client.send(b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n")
                await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(1):
                await wait_until(lambda: server.connection_count == 0)
            assert server.connection_count == 0


# -- atheris ------------------------------------------------------------------------------

HARNESS = Path(__file__).with_name("fuzz_server.py")


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_coverage_guided_fuzzing_finds_no_input_that_breaks_the_rules(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for number, seed in enumerate(PIECES):
        (corpus / f"seed-{number}").write_bytes(seed)
    runs = int(os.environ.get("DUPLEX_ATHERIS_RUNS", "3000"))
    finished = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-runs={runs}",
            "-max_total_time=60",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
