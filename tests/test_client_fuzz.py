"""Whatever a server answers — arbitrary bytes, or a valid response cut anywhere — a GET and
a read of its body either succeed or raise ``duplex.ProtocolError`` / ``duplex.Timeout``:
never another exception, never a hang.

Each test runs one fake server in its trio run and drives Hypothesis from a worker thread,
each example going back into trio through ``trio.from_thread.run``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import duplex
from _client_support import TIMEOUT, FakeServer, read_head

EXAMPLES = settings(max_examples=50, deadline=None, database=None)
EXAMPLE_TIMEOUT = 2.0
"""Seconds one example may take; a hang fails that example rather than the whole run."""

PREFIXES = [
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
]

replies = st.one_of(
    st.binary(max_size=400),
    st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(PREFIXES), st.binary()),
)

# (the whole response, the body it carries, whether the body ends only when the server
# closes, so that a cut body is a shorter body rather than an error)
TEMPLATES: list[tuple[bytes, bytes, bool]] = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", b"hello world", False),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n",
        b"hello world",
        False,
    ),
    (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"ok",
        False,
    ),
    (b"HTTP/1.1 204 No Content\r\nX-Empty: yes\r\n\r\n", b"", False),
    (b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nuntil the close", b"until the close", True),
]


class Script:
    """What the fake server sends to the next connection, in pieces."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.hold = False

    async def respond(self, stream: trio.SocketStream) -> None:
        await read_head(stream)
        for piece in self.pieces:
            await stream.send_all(piece)
            await trio.testing.wait_all_tasks_blocked()  # the client takes each piece alone
        if self.hold:
            while await stream.receive_some(65536):
                pass


Outcome = bytes | duplex.ProtocolError | duplex.Timeout


async def fetch(server: FakeServer, limits: duplex.ClientLimits) -> Outcome:
    """GET from the fake server and read the whole body; the body or the error."""
    with trio.fail_after(EXAMPLE_TIMEOUT):
        async with duplex.Client(limits=limits) as client:
            try:
                response = await client.get(server.url)
                return await response.read()
            except (duplex.ProtocolError, duplex.Timeout) as error:
                return error


async def run_examples(test: Callable[[], None]) -> None:
    """Run a Hypothesis test in a worker thread, bounded like every client test."""
    with trio.fail_after(TIMEOUT * 4):
        await trio.to_thread.run_sync(test)


def in_trio(function: Callable[[], Awaitable[Outcome]]) -> Outcome:
    return trio.from_thread.run(function)


async def test_any_reply_gives_a_body_or_a_protocol_error_or_a_timeout(
    nursery: trio.Nursery,
) -> None:
    script = Script()
    server = await FakeServer.start(nursery, script.respond)
    limits = duplex.ClientLimits(read_timeout=0.05)

    @EXAMPLES
    @given(reply=replies, hold=st.booleans())
    def check(reply: bytes, hold: bool) -> None:
        script.pieces, script.hold = [reply], hold
        outcome = in_trio(lambda: fetch(server, limits))
        assert isinstance(outcome, bytes | duplex.ProtocolError | duplex.Timeout)

    await run_examples(check)


async def test_a_response_cut_anywhere_gives_its_body_a_prefix_or_a_protocol_error(
    nursery: trio.Nursery,
) -> None:
    script = Script()
    server = await FakeServer.start(nursery, script.respond)
    limits = duplex.ClientLimits(read_timeout=TIMEOUT)

    @EXAMPLES
    @given(template=st.sampled_from(TEMPLATES), data=st.data())
    def check(template: tuple[bytes, bytes, bool], data: st.DataObject) -> None:
        whole, body, close_delimited = template
        end = data.draw(st.integers(0, len(whole)), label="end")
        cuts = sorted(data.draw(st.lists(st.integers(0, end), max_size=4), label="cuts"))
        script.pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, end], strict=True)]
        script.hold = False
        outcome = in_trio(lambda: fetch(server, limits))
        if end == len(whole):
            assert outcome == body
        elif close_delimited and isinstance(outcome, bytes):
            assert body.startswith(outcome)
        else:
            assert isinstance(outcome, duplex.ProtocolError)

    await run_examples(check)
