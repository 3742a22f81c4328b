"""rack-stream's lifecycle in duplex: chunks from after_open, one more from before_close.

Run it: ``python guides/lifecycle.py``. It serves the example, reads it with duplex's
client, and prints what arrived, chunk by chunk.
"""

from __future__ import annotations

import trio

import duplex


async def chunky_monkey(request: duplex.Request) -> duplex.Response:
    async def after_open(channel: duplex.Channel) -> None:
        for count in range(3):
            await channel.send(f"chunky {count}\n")
            await trio.sleep(0.1)
        await channel.close()  # a channel stays open until someone closes it

    async def before_close(channel: duplex.Channel) -> None:
        await channel.send("monkey!\n")  # still allowed: the end has not gone out yet

    return duplex.channel(
        request,
        headers={"content-type": "text/plain"},
        after_open=after_open,
        before_close=before_close,
    )


async def shouting(request: duplex.Request) -> duplex.Response:
    def before_chunk(chunks: list[str]) -> list[str]:
        return [chunk.upper() for chunk in reversed(chunks)]

    async def after_open(channel: duplex.Channel) -> None:
        # Queued together, so before_chunk sees both at once.
        channel.offer("chunky")
        channel.offer("monkey")
        await channel.close()

    return duplex.channel(request, after_open=after_open, before_chunk=before_chunk)


async def main() -> None:
    async with trio.open_nursery() as nursery:
        for handler in (chunky_monkey, shouting):
            server = await nursery.start(duplex.serve, handler, "127.0.0.1", 0)
            async with duplex.Client() as client:
                response = await client.get(f"http://127.0.0.1:{server.port}/")
                framing = response.headers["transfer-encoding"]
                print(f"{handler.__name__}: {response.status} {framing}")
                async for chunk in response.body:
                    print(chunk.decode(), end="" if chunk.endswith(b"\n") else "\n")
            await server.shutdown()


if __name__ == "__main__":
    trio.run(main)
