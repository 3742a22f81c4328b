"""WebSocket through a channel, and duplex's WebSocket client.

Run it: ``python guides/websocket.py``. A channel that speaks two subprotocols and
compresses echoes each message; duplex's client offers a subprotocol and sends text
and bytes, then closes with its own code; a client that offers only a subprotocol the
channel does not speak is refused with 400; a compressed client sends a long message;
a last one sends a message over the size limit and is closed with 1009.
"""

from __future__ import annotations

import trio

import duplex
from duplex.websocket import ConnectionClosed, HandshakeRefused

closed: list[duplex.CloseStatus] = []
all_closed = trio.Event()


async def echo(request: duplex.Request) -> duplex.Response:
    async def on_receive(channel: duplex.Channel, message: str | bytes) -> None:
        await channel.send(message)  # text stays text, bytes stay bytes

    def on_close(channel: duplex.Channel, status: duplex.CloseStatus) -> None:
        closed.append(status)
        if len(closed) == 4:
            all_closed.set()

    return duplex.channel(
        request,
        subprotocols=["graphql-transport-ws", "chat"],
        compress=True,
        on_open=lambda channel: print(f"on_open: subprotocol {channel.subprotocol}"),
        on_receive=on_receive,
        on_close=on_close,
        max_message_size=16384,
    )


async def main() -> None:
    async with trio.open_nursery() as nursery, duplex.Client() as client:
        server = await nursery.start(duplex.serve, echo, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}/chat"

        async with client.websocket(url, subprotocols=["mqtt", "chat"]) as ws:
            print(f"subprotocol: {ws.subprotocol}")
            for message in ("hello", b"\x00\x01 binary"):
                await ws.send(message)
                print(f"sent {message!r}, echoed {await ws.receive()!r}")
            await ws.close(code=4000, reason="done")

        try:
            async with client.websocket(url, subprotocols=["mqtt"]):
                pass
        except HandshakeRefused as refused:
            print(f"refused: {refused.status} {refused.body.decode().strip()}")

        async with client.websocket(url, compress=True) as ws:
            text = "compressible " * 1000
            await ws.send(text)
            echoed = await ws.receive()
            print(f"compressed: {ws.compressed}, {len(echoed)} characters echoed")

        async with client.websocket(url) as ws:
            await ws.send("x" * 20000)
            try:
                await ws.receive()
            except ConnectionClosed as error:
                print(f"too big: closed with {error.code}")

        await all_closed.wait()
        for status in closed:
            print(f"on_close: {status.kind} {status.code} {status.reason!r}")
        await server.shutdown()


if __name__ == "__main__":
    trio.run(main)
