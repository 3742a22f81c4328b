"""Output cannot be made to inject a line: for arbitrary text, a header name or value, a
trailer, a reason phrase, a client's URL or header, or a server-sent event's fields,
either refuse with ``ValueError`` or go out as exactly the one field (or event) given.

tests/test_server_hardening.py checks a few fixed injections on the server;
tests/test_sse.py checks that well-formed events round-trip. Here the inputs are
arbitrary, and the wire is parsed back by a strict parser.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import h11
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import duplex
from _server_support import RawClient, request_bytes, serving
from duplex.sse import Event, EventParser, comment

PROPERTY = settings(max_examples=200, deadline=None)
WIRE = settings(max_examples=60, deadline=None)

#: What no field may carry: line breaks and NUL, and the other controls but HTAB.
FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# Text drawn from everywhere, with the characters that matter made likely.
DANGEROUS = st.sampled_from(["\r", "\n", "\r\n", "\0", "\t", " ", ":", "\x0b", "\x85", "\u2028"])
texts = st.lists(st.text(max_size=8) | DANGEROUS, max_size=8).map("".join)
raw_values = st.lists(
    st.binary(max_size=8) | DANGEROUS.map(lambda text: text.encode("utf-8")), max_size=8
).map(b"".join)


def parse_response_head(data: bytes) -> h11.Response:
    """The response head on the wire, parsed by h11 as a strict client would."""
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(data)
    event = connection.next_event()
    assert isinstance(event, h11.Response), event
    return event


# -- header values, names, reason phrases: the objects refuse -----------------------------


@PROPERTY
@given(value=texts | raw_values)
def test_a_header_value_is_refused_or_holds_no_line_break_nul_or_control(
    value: str | bytes,
) -> None:
    try:
        headers = duplex.Headers([("x-value", value)])
    except ValueError:
        return
    [(_, raw)] = headers.raw
    assert FORBIDDEN.search(raw) is None


@PROPERTY
@given(name=texts)
def test_a_header_name_is_refused_or_is_a_token(name: str) -> None:
    try:
        headers = duplex.Headers({name: "v"})
    except ValueError:
        return
    [(raw, _)] = headers.raw
    assert re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9a-z]+", raw)


@PROPERTY
@given(reason=texts | raw_values)
def test_a_reason_phrase_is_refused_or_holds_no_line_break_nul_or_control(
    reason: str | bytes,
) -> None:
    try:
        response = duplex.Response(200, reason=reason)
    except ValueError:
        return
    assert FORBIDDEN.search(response.reason) is None


# -- the same, on the wire ------------------------------------------------------------------


@dataclass
class Scripted:
    """A handler answering with the response the running example sets."""

    make: Callable[[], duplex.Response] = field(default=lambda: duplex.Response(204))

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        return self.make()


async def fetch_raw(port: int) -> bytes:
    """One GET on a fresh connection; the raw response, up to the server's close."""
    with trio.fail_after(5):
        async with await RawClient.connect(port) as client:
            await client.send(request_bytes(headers="Connection: close\r\n"))
            return await client.read_until_eof()


async def run_on_wire(test: Callable[[int, Scripted], None]) -> None:
    handler = Scripted()
    with trio.fail_after(60):
        async with serving(handler) as server:
            await trio.to_thread.run_sync(test, server.port, handler)


async def test_a_header_value_goes_on_the_wire_as_exactly_that_one_field() -> None:
    @WIRE
    @given(value=texts)
    def example(port: int, handler: Scripted, value: str) -> None:
        try:
            duplex.Headers({"x-value": value})
        except ValueError:
            return
        handler.make = lambda: duplex.Response(200, {"x-value": value}, body=b"ok")
        head = parse_response_head(trio.from_thread.run(fetch_raw, port))
        names = sorted(name for name, _ in head.headers)
        assert names == [b"connection", b"content-length", b"date", b"x-value"]
        assert dict(head.headers)[b"x-value"] == value.encode("latin-1").strip(b" \t")

    await run_on_wire(example)


async def test_a_reason_phrase_goes_on_the_wire_as_exactly_the_status_line() -> None:
    @WIRE
    @given(reason=texts)
    def example(port: int, handler: Scripted, reason: str) -> None:
        try:
            duplex.Response(200, reason=reason)
        except ValueError:
            return
        handler.make = lambda: duplex.Response(200, reason=reason, body=b"ok")
        head = parse_response_head(trio.from_thread.run(fetch_raw, port))
        assert head.status_code == 200
        assert head.reason == (reason.encode("latin-1") or b"OK")
        assert sorted(name for name, _ in head.headers) == [
            b"connection",
            b"content-length",
            b"date",
        ]

    await run_on_wire(example)


async def test_a_trailer_value_goes_on_the_wire_as_exactly_that_one_trailer() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"body"

    @WIRE
    @given(value=texts)
    def example(port: int, handler: Scripted, value: str) -> None:
        try:
            duplex.Headers({"x-trailer": value})
        except ValueError:
            return
        handler.make = lambda: duplex.Response(200, body=chunks(), trailers={"x-trailer": value})
        connection = h11.Connection(h11.CLIENT)
        connection.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        connection.send(h11.EndOfMessage())
        connection.receive_data(trio.from_thread.run(fetch_raw, port))
        events = []
        while (event := connection.next_event()) is not h11.NEED_DATA:
            events.append(event)
            if isinstance(event, h11.EndOfMessage):
                break
        end = events[-1]
        assert isinstance(end, h11.EndOfMessage)
        assert list(end.headers) == [(b"x-trailer", value.encode("latin-1").strip(b" \t"))]

    await run_on_wire(example)


# -- the client: URLs and request headers ----------------------------------------------------


@dataclass
class SeenHeads:
    """A handler noting the target and header names of every request it sees."""

    seen: list[tuple[str, list[bytes]]] = field(default_factory=list)

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        self.seen.append((request.target, [name for name, _ in request.headers.raw]))
        return duplex.Response(204)


async def test_no_client_url_or_header_value_makes_the_server_see_another_field_or_request() -> (
    None
):
    handler = SeenHeads()

    async def send(port: int, path: str, value: str) -> None:
        async with duplex.Client() as client:
            try:
                response = await client.get(
                    f"http://127.0.0.1:{port}/{path}", headers={"x-value": value}
                )
            except ValueError:
                return
            await response.aclose()

    @WIRE
    @given(path=texts, value=texts)
    def example(port: int, path: str, value: str) -> None:
        seen = len(handler.seen)
        trio.from_thread.run(send, port, path, value)
        requests = handler.seen[seen:]
        assert len(requests) <= 1
        for target, names in requests:
            assert target.startswith("/")
            assert sorted(names) == [b"host", b"user-agent", b"x-value"]

    with trio.fail_after(60):
        async with serving(handler) as server:
            await trio.to_thread.run_sync(example, server.port)


# (A space is percent-encoded, as browsers and httpx do: tests/test_client_urls.py.)
@pytest.mark.parametrize("path", ["a\r\nX-Injected: 1", "a\nb", "a\x00b"])
async def test_a_url_with_a_line_break_or_nul_is_refused_with_value_error(
    path: str,
) -> None:
    handler = SeenHeads()
    with trio.fail_after(5):
        async with serving(handler) as server, duplex.Client() as client:
            with pytest.raises(ValueError):
                await client.get(f"http://127.0.0.1:{server.port}/{path}")
    assert handler.seen == []


# -- server-sent events ----------------------------------------------------------------------


@PROPERTY
@given(data=texts, event=st.none() | texts, id=st.none() | texts)
def test_an_sse_event_is_refused_or_parses_back_as_exactly_that_one_event(
    data: str, event: str | None, id: str | None
) -> None:
    try:
        encoded = Event(data, event=event, id=id).encode()
    except ValueError:
        return
    [parsed] = EventParser().feed(encoded)
    assert parsed.data == data.replace("\r\n", "\n").replace("\r", "\n")
    assert parsed.event == (event or None)
    assert parsed.id == (id or None)


@PROPERTY
@given(text=texts)
def test_an_sse_comment_of_any_text_is_only_comment_lines(text: str) -> None:
    encoded = comment(text)
    parser = EventParser()
    assert parser.feed(encoded + b"data: after\n\n") == [Event("after")]
    assert parser.last_event_id == ""


async def test_any_text_sent_on_an_sse_channel_arrives_as_exactly_one_event_each() -> None:
    sent: list[str] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        async def on_open(channel: duplex.Channel) -> None:
            for message in sent:
                await channel.send(message)
            await channel.close()

        return duplex.channel(request, on_open=on_open, heartbeat=None)

    async def receive(port: int) -> list[Event]:
        with trio.fail_after(5):
            async with duplex.Client() as client:
                response = await client.get(
                    f"http://127.0.0.1:{port}/", headers={"accept": "text/event-stream"}
                )
                parser = EventParser()
                return [parsed async for chunk in response.body for parsed in parser.feed(chunk)]

    @WIRE
    @given(messages=st.lists(texts, min_size=1, max_size=5))
    def example(port: int, messages: list[str]) -> None:
        sent[:] = messages
        received = trio.from_thread.run(receive, port)
        assert [parsed.data for parsed in received] == [
            message.replace("\r\n", "\n").replace("\r", "\n") for message in messages
        ]

    with trio.fail_after(60):
        async with serving(handler) as server:
            await trio.to_thread.run_sync(example, server.port)
