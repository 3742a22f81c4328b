"""Any sequence of actions on a channel, on a real exchange of every transport, keeps the
lifecycle legal: ``new → open → closed``, ``errored`` only after an illegal action,
``on_close`` at most once, and exactly once when the channel has finished."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import trio
import trio.testing
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import duplex
from _channel_support import Opened, RawHTTP, request_bytes, serving

Transport = Literal["http", "sse", "websocket"]
RANK = {"new": 0, "open": 1, "closed": 2, "errored": 3}

WHILE_NEW = ["send", "send-close", "offer", "close", "set-status", "set-headers"]
ANY_TIME = [*WHILE_NEW, "disconnect", "settle"]


class Model:
    """What the actions so far allow the channel to be."""

    def __init__(self, channel: duplex.Channel) -> None:
        self.channel = channel
        self.states = [channel.state]
        self.closing = False  # the server asked the channel to close
        self.left = False  # the client went away (the server notices a little later)
        self.illegal = False  # an illegal action happened

    def check(self) -> None:
        state = self.channel.state
        assert state in RANK
        assert RANK[state] >= RANK[self.states[-1]], (self.states, state)
        if state == "closed":
            assert self.closing or self.left
        if state == "errored":
            assert self.illegal
        if self.closing:
            assert not self.channel.is_open
        self.states.append(state)


class Peer:
    """The client end of the exchange, whatever the transport."""

    def __init__(self, transport: Transport, port: int, nursery: trio.Nursery) -> None:
        self.transport = transport
        self.port = port
        self.nursery = nursery
        self.raw: RawHTTP | None = None
        self.websocket: trio_websocket.WebSocketConnection | None = None

    async def connect(self) -> None:
        if self.transport == "websocket":
            self.websocket = await trio_websocket.connect_websocket_url(
                self.nursery, f"ws://127.0.0.1:{self.port}/"
            )
            self.nursery.start_soon(self._drain, self.websocket)
            return
        self.raw = await RawHTTP.connect(self.port)
        accept = "Accept: text/event-stream\r\n" if self.transport == "sse" else ""
        await self.raw.stream.send_all(request_bytes(headers=accept))

    @staticmethod
    async def _drain(websocket: trio_websocket.WebSocketConnection) -> None:
        """Take every message, so that the client answers a close frame."""
        try:
            while True:
                await websocket.get_message()
        except trio_websocket.ConnectionClosed:
            pass

    async def disconnect(self) -> None:
        """Go away without a goodbye."""
        if self.raw is not None:
            await trio.aclose_forcefully(self.raw.stream)
        if self.websocket is not None:
            await trio.aclose_forcefully(self.websocket._stream)


@asynccontextmanager
async def exchange(
    transport: Transport, before: list[str], calls: list[duplex.CloseStatus]
) -> AsyncIterator[tuple[duplex.Channel, Peer, Model]]:
    """A channel on a real exchange, with ``before`` applied while it is new."""
    opened = Opened()
    models: list[Model] = []

    async def handler(request: duplex.Request) -> duplex.Response:
        channel = duplex.Channel(
            request, on_open=opened, on_close=lambda _, status: calls.append(status)
        )
        model = Model(channel)
        models.append(model)
        for action in before:
            await act(channel, model, action, peer=None)
        return channel.response()

    async with serving(handler) as server, trio.open_nursery() as nursery:
        peer = Peer(transport, server.port, nursery)
        await peer.connect()
        channel = await opened.one()
        yield channel, peer, models[0]
        await peer.disconnect()
        nursery.cancel_scope.cancel()


async def act(channel: duplex.Channel, model: Model, action: str, peer: Peer | None) -> None:
    was_new = channel.state == "new"
    if action == "send":
        sent = await channel.send("message")
        if model.closing:
            assert not sent
    elif action == "send-close":
        if await channel.send("last", close=True):
            model.closing = True
    elif action == "offer":
        offered = channel.offer(b"offered")
        if model.closing:
            assert not offered
    elif action == "close":
        model.closing = True
        await channel.close()
    elif action in ("set-status", "set-headers"):
        if action == "set-status":
            channel.status = 203
        else:
            channel.headers = {"x-set": "yes"}
        if was_new:
            assert channel.state == "new"
        else:
            model.illegal = model.closing = True
            assert channel.state == "errored"
    elif action == "disconnect":
        assert peer is not None
        model.left = True
        await peer.disconnect()
    elif action == "settle":
        await trio.testing.wait_all_tasks_blocked()
    model.check()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    transport=st.sampled_from(["http", "sse", "websocket"]),
    before=st.lists(st.sampled_from(WHILE_NEW), max_size=5),
    after=st.lists(st.sampled_from(ANY_TIME), max_size=8),
)
async def test_any_sequence_of_actions_keeps_the_lifecycle_legal(
    transport: Transport, before: list[str], after: list[str]
) -> None:
    calls: list[duplex.CloseStatus] = []
    with trio.fail_after(5):
        async with exchange(transport, before, calls) as (channel, peer, model):
            model.check()
            for action in after:
                await act(channel, model, action, peer)
                assert len(calls) <= 1
            await channel.close()
            model.closing = True
            with trio.fail_after(2):
                status = await channel.wait_closed()
            model.check()
            await trio.testing.wait_all_tasks_blocked()
    assert calls == [status]
    assert channel.state in ("closed", "errored")
    assert (channel.state == "errored") == model.illegal
