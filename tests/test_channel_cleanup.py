"""``on_close`` runs exactly once, and ``wait_closed()`` returns, whatever the
``after_close`` hooks before it do: fail, take long, or never return (they get
``CLEANUP_SECONDS``, shortened here)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import trio

import duplex
import duplex.channels._runner
from _channel_support import CloseRecorder, Opened, serving
from _protocol_support import exchange

CLEANUP_SECONDS = 0.2


@pytest.fixture(autouse=True)
def short_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duplex.channels._runner, "CLEANUP_SECONDS", CLEANUP_SECONDS)


async def close_with_hooks(
    after_close: list[Callable[[duplex.Channel], Any]], closes: CloseRecorder, protocol: str
) -> duplex.CloseStatus:
    """Open a channel with ``after_close`` hooks, close it from the server, and return
    what ``wait_closed()`` returns."""
    opened = Opened()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened, after_close=after_close, on_close=closes)

    async with serving(handler) as server, exchange(server.port, protocol) as client:
        await client.request("/", headers="Accept: text/event-stream\r\n")
        channel = await opened.one()
        await channel.close()
        with trio.fail_after(2):
            return await channel.wait_closed()


@pytest.mark.both_protocols
async def test_on_close_runs_once_after_an_after_close_hook_that_never_returns(
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    closes = CloseRecorder()

    async def hang(channel: duplex.Channel) -> None:
        await trio.sleep_forever()

    with trio.fail_after(5):
        status = await close_with_hooks([hang], closes, protocol)
    assert status == duplex.CloseStatus("server")
    assert closes.statuses == [status]
    [error] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert "after_close took more than" in error.getMessage()


@pytest.mark.both_protocols
async def test_on_close_runs_once_after_after_close_hooks_longer_than_the_bound(
    protocol: str,
) -> None:
    closes = CloseRecorder()
    finished: list[str] = []

    async def slow(channel: duplex.Channel) -> None:
        try:
            await trio.sleep(CLEANUP_SECONDS * 10)
        finally:
            finished.append("slow")

    with trio.fail_after(5):
        status = await close_with_hooks([slow, slow], closes, protocol)
    assert closes.statuses == [status]
    assert finished == ["slow"]  # the first was cut short; the second never began


@pytest.mark.both_protocols
async def test_a_failing_after_close_hook_stops_neither_the_next_nor_on_close(
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    closes = CloseRecorder()
    calls: list[str] = []

    def fail(channel: duplex.Channel) -> None:
        calls.append("fail")
        raise RuntimeError("cleanup failed")

    with trio.fail_after(5):
        status = await close_with_hooks(
            [fail, lambda channel: calls.append("next")], closes, protocol
        )
    assert calls == ["fail", "next"]
    assert closes.statuses == [status]
    assert any("cleanup failed" in record.exc_text for record in caplog.records if record.exc_text)


@pytest.mark.both_protocols
async def test_an_on_close_that_never_returns_still_lets_wait_closed_return(
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    opened = Opened()
    started = trio.Event()

    async def on_close(channel: duplex.Channel, status: duplex.CloseStatus) -> None:
        started.set()
        await trio.sleep_forever()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened, on_close=on_close)

    with trio.fail_after(5):
        async with serving(handler) as server, exchange(server.port, protocol) as client:
            await client.request("/", headers="Accept: text/event-stream\r\n")
            channel = await opened.one()
            await channel.close()
            with trio.fail_after(2):
                status = await channel.wait_closed()
    assert started.is_set()
    assert status == duplex.CloseStatus("server")
    assert any("on_close took more than" in record.getMessage() for record in caplog.records)
