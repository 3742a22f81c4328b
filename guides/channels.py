"""One channel handler, three transports: the request decides which.

Run it: ``python guides/channels.py``. The same handler answers a plain HTTP client
(chunked streaming), an SSE client and a WebSocket client; each receives the same three
messages and then the close.
"""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

import duplex


async def countdown(request: duplex.Request) -> duplex.Response:
    async def on_open(channel: duplex.Channel) -> None:
        for number in (3, 2, 1):
            await channel.send(f"{number} ({channel.transport})")
        await channel.close()

    return duplex.channel(request, on_open=on_open)


async def over_http(url: str) -> list[str]:
    async with duplex.Client() as client:
        response = await client.get(url)
        return [chunk.decode() async for chunk in response.body]


async def over_sse(url: str) -> list[str]:
    async with duplex.Client() as client:
        events = duplex.sse.events(client, url, max_reconnects=0)
        return [event.data async for event in events]


async def over_websocket(url: str) -> list[str]:
    received = []
    async with open_websocket_url(url.replace("http", "ws", 1)) as websocket:
        try:
            while True:
                message = await websocket.get_message()
                received.append(message if isinstance(message, str) else message.decode())
        except ConnectionClosed:
            pass
    return received


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(duplex.serve, countdown, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.port}/countdown"
        for name, reader in (("http", over_http), ("sse", over_sse), ("websocket", over_websocket)):
            print(f"{name}: {await reader(url)}")
        await server.shutdown()


if __name__ == "__main__":
    trio.run(main)
