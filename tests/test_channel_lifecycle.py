"""rack-stream's lifecycle on a channel: ``new → open → closed`` or ``errored``; chunks
queued while new; ``after_open``, ``before_chunk``, ``before_close`` and ``after_close``
hooks (plain or async); illegal actions error the channel, close it and say why."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio

import duplex
from _channel_support import CloseRecorder, Opened, serving
from _protocol_support import exchange


@dataclass
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes


async def fetch(handler: duplex.Handler, protocol: str, target: str = "/") -> Fetched:
    """Serve ``handler``, GET ``target`` with a raw peer of ``protocol``; the response."""
    async with serving(handler) as server, exchange(server.port, protocol) as client:
        await client.request(target)
        return Fetched(client.status, client.headers, await client.read_body())


@pytest.mark.both_protocols
async def test_chunks_sent_while_new_are_queued_and_flushed_once_open(protocol: str) -> None:
    states: list[str] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        channel = duplex.Channel(request, after_open=lambda channel: channel.close())
        assert await channel.send("queued ")
        assert await channel.send(b"while new")
        states.append(channel.state)
        return channel.response()

    with trio.fail_after(5):
        client = await fetch(handler, protocol)
    assert states == ["new"]
    assert client.body == b"queued while new"


@pytest.mark.both_protocols
async def test_the_channel_is_open_when_on_open_and_after_open_run(protocol: str) -> None:
    states: list[str] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            on_open=lambda channel: states.append(channel.state),
            after_open=[lambda channel: states.append(channel.state), lambda ch: ch.close()],
        )

    with trio.fail_after(5):
        await fetch(handler, protocol)
    assert states == ["open", "open"]


@pytest.mark.both_protocols
async def test_before_chunk_transforms_chunks_queued_together_upcased_and_reversed(
    protocol: str,
) -> None:
    async def after_open(channel: duplex.Channel) -> None:
        # rack-stream's ``chunk "chunky", "monkey"``: queued together, one batch.
        channel.offer("chunky")
        channel.offer("monkey")
        await channel.close()

    def upcase_and_reverse(chunks: list[str]) -> list[str]:
        return [chunk.upper() for chunk in reversed(chunks)]

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, after_open=after_open, before_chunk=upcase_and_reverse)

    with trio.fail_after(5):
        client = await fetch(handler, protocol)
    assert client.body == b"MONKEYCHUNKY"


@pytest.mark.both_protocols
async def test_before_close_may_still_send_after_close_was_called(protocol: str) -> None:
    async def goodbye(channel: duplex.Channel) -> None:
        assert not channel.is_open
        assert await channel.send("goodbye!")

    async def hello(channel: duplex.Channel) -> None:
        await channel.send("hello, ")
        assert await channel.close()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, after_open=hello, before_close=goodbye)

    with trio.fail_after(5):
        client = await fetch(handler, protocol)
    assert client.body == b"hello, goodbye!"


@pytest.mark.both_protocols
async def test_sending_from_after_close_errors_the_channel_and_logs(
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    results: list[bool] = []
    states: list[str] = []
    closes = CloseRecorder()

    async def late(channel: duplex.Channel) -> None:
        states.append(channel.state)
        results.append(await channel.send("too late"))
        results.append(channel.offer("too late"))
        states.append(channel.state)

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            after_open=lambda channel: channel.send("done", close=True),
            after_close=late,
            on_close=closes,
        )

    with trio.fail_after(5):
        client = await fetch(handler, protocol)
        await closes.called.wait()
    assert client.body == b"done"
    assert states == ["closed", "errored"]
    assert results == [False, False]
    [status] = closes.statuses
    assert status.kind == "server"
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert errors
    assert "after_close" in errors[0].getMessage()


@pytest.mark.both_protocols
async def test_after_close_sees_the_channel_closed_before_on_close_runs(protocol: str) -> None:
    order: list[str] = []
    channels: list[duplex.Channel] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        channels.append(
            duplex.Channel(
                request,
                after_open=lambda channel: channel.close(),
                after_close=lambda channel: order.append(f"after_close {channel.state}"),
                on_close=lambda channel, status: order.append(f"on_close {status.kind}"),
            )
        )
        return channels[0].response()

    with trio.fail_after(5):
        await fetch(handler, protocol)
        await channels[0].wait_closed()
    assert order == ["after_close closed", "on_close server"]


def _set_status(channel: duplex.Channel) -> None:
    channel.status = 404


def _replace_headers(channel: duplex.Channel) -> None:
    channel.headers = {"x-late": "1"}


def _add_header(channel: duplex.Channel) -> None:
    channel.headers["x-late"] = "1"


@pytest.mark.parametrize(
    ("action", "words"),
    [
        (_set_status, "status"),
        (_replace_headers, "headers"),
        (_add_header, "header 'x-late'"),
    ],
    ids=["status", "headers", "one-header"],
)
@pytest.mark.both_protocols
async def test_changing_the_head_after_open_errors_and_closes_the_channel(
    caplog: pytest.LogCaptureFixture,
    action: Callable[[duplex.Channel], None],
    words: str,
    protocol: str,
) -> None:
    opened, closes = Opened(), CloseRecorder()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened, on_close=closes)

    with trio.fail_after(5):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.start()
            channel = await opened.one()
            await channel.send("streaming")
            await client.read_head()
            assert await client.read_chunk() == b"streaming"
            action(channel)
            assert channel.state == "errored"
            assert not channel.is_open
            status = await channel.wait_closed()
            assert not await channel.send("more")
    assert channel.state == "errored"
    assert status.kind == "error"
    assert "illegal action" in status.reason
    assert closes.statuses == [status]
    assert "x-late" not in channel.headers
    assert channel.status == 200
    [error] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert "illegal action" in error.getMessage()
    assert words in error.getMessage()
    assert "after the channel opened" in error.getMessage()


@pytest.mark.both_protocols
async def test_status_and_headers_may_change_while_new(protocol: str) -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        channel = duplex.Channel(request, after_open=lambda channel: channel.send("ok", True))
        channel.status = 201
        channel.headers["x-one"] = "1"
        channel.headers = {"x-two": "2"}
        assert channel.state == "new"
        return channel.response()

    with trio.fail_after(5):
        client = await fetch(handler, protocol)
    assert client.status == 201
    assert client.headers["x-two"] == "2"
    assert "x-one" not in client.headers


def by_name(*callbacks: Callable[..., Any]) -> dict[str, Any]:
    return {callback.__name__: callback for callback in callbacks}


def plain_hooks(calls: list[str]) -> dict[str, Any]:
    def on_open(channel: duplex.Channel) -> None:
        calls.append("on_open")
        channel.offer("chunky ")

    def after_open(channel: duplex.Channel) -> None:
        calls.append("after_open")

    def before_chunk(chunks: list[str]) -> list[str]:
        calls.append("before_chunk")
        return [chunk.upper() for chunk in chunks]

    def before_close(channel: duplex.Channel) -> None:
        calls.append("before_close")
        channel.offer("monkey")

    def after_close(channel: duplex.Channel) -> None:
        calls.append("after_close")

    def on_close(channel: duplex.Channel, status: duplex.CloseStatus) -> None:
        calls.append("on_close")

    return by_name(on_open, after_open, before_chunk, before_close, after_close, on_close)


def async_hooks(calls: list[str]) -> dict[str, Any]:
    async def on_open(channel: duplex.Channel) -> None:
        calls.append("on_open")
        await channel.send("chunky ")

    async def after_open(channel: duplex.Channel) -> None:
        await trio.lowlevel.checkpoint()
        calls.append("after_open")

    async def before_chunk(chunks: list[str]) -> list[str]:
        await trio.lowlevel.checkpoint()
        calls.append("before_chunk")
        return [chunk.upper() for chunk in chunks]

    async def before_close(channel: duplex.Channel) -> None:
        calls.append("before_close")
        await channel.send("monkey")

    async def after_close(channel: duplex.Channel) -> None:
        await trio.lowlevel.checkpoint()
        calls.append("after_close")

    async def on_close(channel: duplex.Channel, status: duplex.CloseStatus) -> None:
        await trio.lowlevel.checkpoint()
        calls.append("on_close")

    return by_name(on_open, after_open, before_chunk, before_close, after_close, on_close)


@pytest.mark.parametrize("hooks", [plain_hooks, async_hooks], ids=["plain", "async"])
@pytest.mark.both_protocols
async def test_hooks_may_be_plain_or_async_functions(
    hooks: Callable[[list[str]], dict[str, Any]],
    protocol: str,
) -> None:
    calls: list[str] = []
    channels: list[duplex.Channel] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        channels.append(duplex.Channel(request, **hooks(calls)))
        return channels[0].response()

    with trio.fail_after(5):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.request()
            assert await client.read_chunk() == b"CHUNKY "
            await channels[0].close()
            assert await client.read_body() == b"MONKEY"
            await channels[0].wait_closed()
    assert calls[0] == "on_open"
    # What on_open sent goes out while after_open runs: in either order.
    assert sorted(calls[1:3]) == ["after_open", "before_chunk"]
    assert calls[3:] == ["before_close", "before_chunk", "after_close", "on_close"]


@pytest.mark.both_protocols
async def test_an_illegal_action_in_before_close_errors_the_channel_and_on_close_runs_once(
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    closes = CloseRecorder()
    channels: list[duplex.Channel] = []

    async def before_close(channel: duplex.Channel) -> None:
        await channel.send("last words")
        channel.status = 500

    async def handler(request: duplex.Request) -> duplex.Response:
        channels.append(
            duplex.Channel(
                request,
                after_open=lambda channel: channel.send("hello", close=True),
                before_close=before_close,
                on_close=closes,
            )
        )
        return channels[0].response()

    with trio.fail_after(5):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.request()
            assert await client.read_chunk() == b"hello"
            status = await channels[0].wait_closed()
    assert channels[0].state == "errored"
    assert closes.statuses == [status]
    assert status.kind == "server"  # the close was asked before the illegal action
    assert any("illegal action" in record.getMessage() for record in caplog.records)
