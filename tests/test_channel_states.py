"""Any sequence of actions on a channel, on a real exchange of every transport, keeps the
lifecycle legal: ``new → open → closed``, ``errored`` only after an illegal action,
``on_close`` at most once, and exactly once when the channel has finished. The client
speaks HTTP/1.1 or HTTP/2 (h2c; a WebSocket by an extended CONNECT), drawn with the rest
rather than doubling the examples."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Literal

import trio
import trio.testing
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import duplex
from _channel_support import ConnectionEnded, Opened, RawHTTP, request_bytes, serving
from _protocol_support import H1Exchange, H2Exchange, WebSocketClosed, WebSocketPeer
from _protocol_support import exchange as raw_exchange

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

    def __init__(
        self, transport: Transport, port: int, nursery: trio.Nursery, protocol: str = "h1"
    ) -> None:
        self.transport = transport
        self.port = port
        self.nursery = nursery
        self.protocol = protocol
        self.raw: RawHTTP | None = None
        self.websocket: trio_websocket.WebSocketConnection | None = None
        #: Over HTTP/2: the stream (or the WebSocket on one), open until ``aclose``.
        self.h2: H1Exchange | H2Exchange | WebSocketPeer | None = None
        self._stack = AsyncExitStack()

    async def connect(self) -> None:
        if self.protocol == "h2":
            if self.transport == "websocket":
                ws = WebSocketPeer.connect(self.port, "h2", "/")
                self.h2 = await self._stack.enter_async_context(ws)
                self.nursery.start_soon(self._drain_h2, self.h2)
                return
            self.h2 = await self._stack.enter_async_context(raw_exchange(self.port, "h2"))
            accept = "Accept: text/event-stream\r\n" if self.transport == "sse" else ""
            await self.h2.start("/", headers=accept)
            return
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

    @staticmethod
    async def _drain_h2(websocket: WebSocketPeer) -> None:
        """Take every message, so that the client answers a close frame."""
        try:
            while True:
                await websocket.receive()
        except (WebSocketClosed, ConnectionEnded, trio.BrokenResourceError):
            pass

    async def disconnect(self) -> None:
        """Go away without a goodbye (over HTTP/2: reset the stream)."""
        if isinstance(self.h2, WebSocketPeer):
            await self.h2.drop()
        elif self.h2 is not None:
            await self.h2.leave()
        if self.raw is not None:
            await trio.aclose_forcefully(self.raw.stream)
        if self.websocket is not None:
            await trio.aclose_forcefully(self.websocket._stream)


@asynccontextmanager
async def exchange(
    transport: Transport, before: list[str], calls: list[duplex.CloseStatus], protocol: str
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
        peer = Peer(transport, server.port, nursery, protocol)
        async with peer._stack:
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
    protocol=st.sampled_from(["h1", "h2"]),
    transport=st.sampled_from(["http", "sse", "websocket"]),
    before=st.lists(st.sampled_from(WHILE_NEW), max_size=5),
    after=st.lists(st.sampled_from(ANY_TIME), max_size=8),
)
async def test_any_sequence_of_actions_keeps_the_lifecycle_legal(
    protocol: str, transport: Transport, before: list[str], after: list[str]
) -> None:
    calls: list[duplex.CloseStatus] = []
    with trio.fail_after(5):
        async with exchange(transport, before, calls, protocol) as (channel, peer, model):
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
