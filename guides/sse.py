"""Server-Sent Events: a feed with history, and a client that resumes without a gap.

Run it: ``python guides/sse.py``. The server broadcasts numbered events to a group that
keeps the last 50; after the third, it drops every stream and publishes two more while
nobody listens. The client reconnects with ``Last-Event-ID`` and receives the two it
missed from the history, then the rest.
"""

from __future__ import annotations

import trio

import duplex
from duplex.sse import Event

feed = duplex.ChannelGroup(history=50)
listening = trio.Event()  # only for this example's timing


async def handler(request: duplex.Request) -> duplex.Response:
    # A reconnecting EventSource sends Last-Event-ID; the group replays what came after.
    return duplex.channel(request, on_open=join, heartbeat=15.0)


def join(channel: duplex.Channel) -> None:
    feed.add(channel)
    listening.set()


async def wait_for_listener() -> None:
    global listening
    await listening.wait()
    listening = trio.Event()


async def publish() -> None:
    await wait_for_listener()
    for number in range(1, 7):
        # retry: tells clients to reconnect after 100 ms instead of the usual seconds.
        await feed.broadcast(Event(f"update {number}", event="update", retry=100))
        if number == 3:
            for channel in feed:
                await channel.close()  # updates 4 and 5 go out while nobody listens
        if number == 5:
            await wait_for_listener()


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(duplex.serve, handler, "127.0.0.1", 0)
        nursery.start_soon(publish)
        async with duplex.Client() as client:
            url = f"http://127.0.0.1:{server.port}/events"
            async for event in duplex.sse.events(client, url):
                print(f"id {event.id}: {event.event} {event.data}")
                if event.data == "update 6":
                    break
        await server.shutdown()


if __name__ == "__main__":
    trio.run(main)
