"""WebSocket through a channel: an echo that reports how each connection closed.

Run it: ``python guides/websocket.py``. A client (trio-websocket's) sends text and
bytes and reads the echoes, then closes with its own code; a second client sends a
message over the size limit and is closed with 1009.
"""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

import duplex

closed: list[duplex.CloseStatus] = []
both_closed = trio.Event()


async def echo(request: duplex.Request) -> duplex.Response:
    async def on_receive(channel: duplex.Channel, message: str | bytes) -> None:
        await channel.send(message)  # text stays text, bytes stay bytes

    def on_close(channel: duplex.Channel, status: duplex.CloseStatus) -> None:
        closed.append(status)
        if len(closed) == 2:
            both_closed.set()

    return duplex.channel(request, on_receive=on_receive, on_close=on_close, max_message_size=1024)


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(duplex.serve, echo, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}/chat"
        async with open_websocket_url(url) as websocket:
            for message in ("hello", b"\x00\x01 binary"):
                await websocket.send_message(message)
                print(f"sent {message!r}, echoed {await websocket.get_message()!r}")
            await websocket.aclose(code=4000, reason="done")
        async with open_websocket_url(url) as websocket:
            await websocket.send_message("x" * 2048)
            try:
                await websocket.get_message()
            except ConnectionClosed as error:
                assert error.reason is not None
                print(f"too big: closed with {error.reason.code}")
        await both_closed.wait()
        for status in closed:
            print(f"on_close: {status.kind} {status.code} {status.reason!r}")
        await server.shutdown()


if __name__ == "__main__":
    trio.run(main)
