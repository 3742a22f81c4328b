"""Server-Sent Events: the wire format a channel sends (to a raw socket), the encoder and
parser (round trips, whole and byte by byte), and the reconnecting ``events()`` reader."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import cast

import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

import duplex
from _channel_support import Opened, serving
from _protocol_support import exchange
from duplex.sse import Event, EventParser, comment, events

SSE_HEADERS = "Accept: text/event-stream\r\n"


def sse_channel(opened: Opened, heartbeat: float | None = 15.0) -> duplex.Handler:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened, heartbeat=heartbeat)

    return handler


# -- on the wire ----------------------------------------------------------------------


@pytest.mark.both_protocols
async def test_an_sse_channel_answers_200_event_stream_without_caching(protocol: str) -> None:
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(sse_channel(opened)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/events", headers=SSE_HEADERS)
            channel = await opened.one()
    assert client.status == 200
    assert client.headers["content-type"].startswith("text/event-stream")
    assert client.headers["cache-control"] == "no-cache"
    if protocol == "h1":
        assert client.headers["transfer-encoding"] == "chunked"
    assert channel.transport == "sse"
    assert not channel.is_websocket


@pytest.mark.both_protocols
async def test_an_event_goes_out_as_event_id_and_data_lines(protocol: str) -> None:
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(sse_channel(opened)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/events", headers=SSE_HEADERS)
            channel = await opened.one()
            await channel.send(Event("hello", event="greeting", id="7"))
            data = await client.read_until(b"\n\n")
    assert data == b"event: greeting\nid: 7\ndata: hello\n\n"


@pytest.mark.both_protocols
async def test_multi_line_data_goes_out_as_one_data_line_per_line(protocol: str) -> None:
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(sse_channel(opened)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/events", headers=SSE_HEADERS)
            channel = await opened.one()
            await channel.send(Event("one\ntwo\r\nthree\rfour"))
            data = await client.read_until(b"\n\n")
    assert data == b"data: one\ndata: two\ndata: three\ndata: four\n\n"


@pytest.mark.both_protocols
async def test_plain_text_sent_on_sse_becomes_a_data_only_event(protocol: str) -> None:
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(sse_channel(opened)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/events", headers=SSE_HEADERS)
            channel = await opened.one()
            await channel.send("plain")
            await channel.send(b"bytes")
            data = await client.read_until(b"data: bytes\n\n")
    assert data == b"data: plain\n\ndata: bytes\n\n"


@pytest.mark.both_protocols
async def test_an_idle_sse_channel_sends_comment_heartbeats(protocol: str) -> None:
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(sse_channel(opened, heartbeat=0.05)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/events", headers=SSE_HEADERS)
            await opened.one()
            data = await client.read_until(b"\n\n")
            data += await client.read_until(b"\n\n")
    assert data == comment() * 2
    assert re.fullmatch(rb"(:[^\n]*\n)+\n", comment())


@pytest.mark.both_protocols
async def test_the_last_event_id_header_is_on_the_channel(protocol: str) -> None:
    opened = Opened()
    with trio.fail_after(5):
        async with (
            serving(sse_channel(opened)) as server,
            exchange(server.port, protocol) as client,
        ):
            await client.request("/events", headers=SSE_HEADERS + "Last-Event-ID: 41\r\n")
            channel = await opened.one()
    assert channel.last_event_id == "41"


# -- encoder and parser ---------------------------------------------------------------

# Text for event names and ids: anything but what the format cannot carry there.
_LINE_BREAKS = "\r\n"
field_text = st.text(st.characters(codec="utf-8", blacklist_characters=_LINE_BREAKS + "\0"))
# Data: any text, line breaks and empty lines included (NUL is fine in data).
data_text = st.lists(st.text() | st.sampled_from(["\r", "\n", "\r\n", "\0"])).map("".join)


def parse(data: bytes, *, bytewise: bool) -> list[Event]:
    parser = EventParser()
    if not bytewise:
        return parser.feed(data)
    parsed = []
    for index in range(len(data)):
        parsed += parser.feed(data[index : index + 1])
    return parsed


def normalised(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@settings(deadline=None)
@given(data=data_text, event=st.none() | field_text, id=st.none() | field_text)
@example(data="", event=None, id=None)
@example(data="a\r\nb\rc\nd", event="x", id="1")
@example(data="\n\n", event=None, id=None)
@example(data="ends in CR\r", event=None, id=None)
@example(data=" leading space", event=" spaced", id=" 1")
def test_an_encoded_event_parses_back_to_its_fields(
    data: str, event: str | None, id: str | None
) -> None:
    encoded = Event(data, event=event, id=id).encode()
    for bytewise in (False, True):
        [parsed] = parse(encoded, bytewise=bytewise)
        assert parsed.data == normalised(data)
        assert parsed.event == (event or None)
        assert parsed.id == (id or None)


@settings(deadline=None)
@given(st.lists(st.tuples(data_text, st.none() | field_text), max_size=5), st.data())
def test_a_stream_of_events_parses_the_same_whole_and_in_any_pieces(
    fields: list[tuple[str, str | None]], draw: st.DataObject
) -> None:
    stream = b"".join(Event(data, id=id).encode() + comment("beat") for data, id in fields)
    whole = EventParser().feed(stream)
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    pieces = [
        stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)
    ]
    parser = EventParser()
    split = [parsed for piece in pieces for parsed in parser.feed(piece)]
    assert split == whole == parse(stream, bytewise=True)
    assert [parsed.data for parsed in whole] == [normalised(data) for data, _ in fields]


line_end = st.sampled_from(["\r", "\n", "\r\n"])
data_line = st.text(st.characters(codec="utf-8", blacklist_characters=_LINE_BREAKS))


@settings(deadline=None)
@given(st.lists(st.lists(data_line, min_size=1), min_size=1), line_end)
@example([["a", "b"]], "\r")
@example([["a", "b"]], "\r\n")
def test_a_stream_with_any_line_ends_parses_the_same_fed_whole_bytewise_or_with_empty_feeds(
    events: list[list[str]], end: str
) -> None:
    stream = "".join("".join(f"data:{line}{end}" for line in event) + end for event in events)
    expected = ["\n".join(line.removeprefix(" ") for line in event) for event in events]
    stream_bytes = stream.encode()
    with_empty_feeds = EventParser()
    parsed = []
    for index in range(len(stream_bytes)):
        parsed += with_empty_feeds.feed(stream_bytes[index : index + 1])
        parsed += with_empty_feeds.feed(b"")
    assert [event.data for event in parse(stream_bytes, bytewise=False)] == expected
    assert [event.data for event in parse(stream_bytes, bytewise=True)] == expected
    assert [event.data for event in parsed] == expected


@settings(deadline=None)
@given(st.text(), st.sampled_from(["\r", "\n", "\r\n"]), st.text())
def test_an_event_name_with_a_line_break_is_rejected(
    before: str, line_break: str, after: str
) -> None:
    with pytest.raises(ValueError):
        Event("data", event=before + line_break + after)


@settings(deadline=None)
@given(st.text(), st.sampled_from(["\r", "\n", "\r\n", "\0"]), st.text())
def test_an_id_with_a_line_break_or_nul_is_rejected(
    before: str, forbidden: str, after: str
) -> None:
    with pytest.raises(ValueError):
        Event("data", id=before + forbidden + after)


def test_a_negative_retry_is_rejected() -> None:
    with pytest.raises(ValueError):
        Event("data", retry=-1)


def test_the_parser_takes_retry_and_keeps_the_last_event_id() -> None:
    parser = EventParser()
    parsed = parser.feed(Event("a", id="1", retry=250).encode() + b"data: b\n\n")
    assert [(event.data, event.id) for event in parsed] == [("a", "1"), ("b", "1")]
    assert parser.retry == 250
    assert parser.last_event_id == "1"


# -- the reconnecting reader ----------------------------------------------------------


@pytest.mark.both_protocols
async def test_events_reconnects_honouring_retry_and_last_event_id_and_gets_what_it_missed() -> (
    None
):
    group = duplex.ChannelGroup(history=10)
    seen_ids: list[str | None] = []
    opened = Opened()

    async def join(channel: duplex.Channel) -> None:
        group.add(channel)
        opened(channel)
        if len(opened.channels) == 1:
            # The server asks for a short reconnection delay: the reader's own is 30 s.
            await group.broadcast(Event("one", retry=50))

    async def handler(request: duplex.Request) -> duplex.Response:
        seen_ids.append(request.headers.get("last-event-id"))
        return duplex.channel(request, on_open=join)

    received: list[Event] = []
    with trio.fail_after(10):
        async with serving(handler) as server, duplex.Client() as client:
            url = f"http://127.0.0.1:{server.port}/events"
            reader = cast(AsyncGenerator[Event, None], events(client, url, retry=30.0))
            async with aclosing(reader):
                async for event in reader:
                    received.append(event)
                    if event.data == "one":
                        await opened.channels[0].close()
                        await group.broadcast("two")
                        await group.broadcast("three")
                    elif event.data == "three":
                        break
    assert [(event.data, event.id) for event in received] == [
        ("one", "1"),
        ("two", "2"),
        ("three", "3"),
    ]
    assert seen_ids == [None, "1"]


@pytest.mark.both_protocols
async def test_events_stops_sending_last_event_id_once_the_server_resets_it() -> None:
    seen_ids: list[str | None] = []
    replies = [Event("a", id="5", retry=10), Event("b", id=""), Event("c")]

    async def handler(request: duplex.Request) -> duplex.Response:
        seen_ids.append(request.headers.get("last-event-id"))
        reply = replies[len(seen_ids) - 1]
        return duplex.channel(request, after_open=lambda channel: channel.send(reply, True))

    received: list[Event] = []
    with trio.fail_after(10):
        async with serving(handler) as server, duplex.Client() as client:
            url = f"http://127.0.0.1:{server.port}/events"
            reader = cast(AsyncGenerator[Event, None], events(client, url, retry=30.0))
            async with aclosing(reader):
                async for event in reader:
                    received.append(event)
                    if event.data == "c":
                        break
    assert [(event.data, event.id) for event in received] == [
        ("a", "5"),
        ("b", None),
        ("c", None),
    ]
    assert seen_ids == [None, "5", None]
