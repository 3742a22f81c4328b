"""A channel whose client leaves before any answer closes as ``gone``, quietly: nobody
is there to answer, so the server neither tries a 500 nor logs an error."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

import duplex
from _server_support import RawClient, request_bytes, serving
from helpers import TIMEOUT


async def test_a_long_poll_whose_client_leaves_before_any_answer_closes_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    opened, closed = trio.Event(), trio.Event()
    statuses: list[str] = []

    def on_close(channel: duplex.Channel, status: duplex.CloseStatus) -> None:
        statuses.append(status.kind)
        closed.set()

    async def poll(request: duplex.Request) -> duplex.Response:
        return duplex.channel(
            request,
            on_open=lambda channel: opened.set(),
            # A hook keeps the channel from parking: its own task waits for the client
            # to leave, and then returns rather than being cancelled.
            before_chunk=lambda channel, chunks: chunks,
            on_close=on_close,
        )

    with trio.fail_after(TIMEOUT):
        async with serving(poll) as server:
            client = await RawClient.connect(server.port)
            await client.send(request_bytes("/poll"))
            await opened.wait()
            await trio.testing.wait_all_tasks_blocked()
            await client.stream.aclose()
            await closed.wait()
            # The exchange's task goes on after on_close: let it end.
            await trio.testing.wait_all_tasks_blocked()
    assert statuses == ["gone"]
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []
