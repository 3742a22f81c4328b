"""Long-polling with a channel store: http-kit's ChannelStore example, in duplex.

Run it: ``python guides/long_polling.py``. Two clients wait on group "news" with the
timestamp of the last message each has seen; an event broadcasts to the group, and
each client gets, in one reply, what is newer than its own timestamp.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import trio

import duplex


class ChannelStore:
    """Groups of waiting channels, each with the ``since_ts`` its client sent."""

    def __init__(self) -> None:
        self.groups: dict[str, duplex.ChannelGroup] = {}

    def add_to_group(self, group: str, channel: duplex.Channel, attachment: float) -> None:
        self.groups.setdefault(group, duplex.ChannelGroup()).add(channel, attachment)

    async def broadcast(
        self, group: str, message_for: Callable[[duplex.Channel, Any], str | None]
    ) -> int:
        members = self.groups.get(group)
        if members is None:
            return 0
        # A long-poll reply is one whole response: send it and close (close=True).
        return await members.broadcast(message_for, close=True)


store = ChannelStore()
messages: list[dict[str, Any]] = []
both_waiting = trio.Event()


async def handler(request: duplex.Request) -> duplex.Response:
    params = parse_qs(request.query)
    group = params.get("group", ["news"])[0]
    since_ts = float(params.get("since_ts", ["0"])[0])
    # Closed channels leave their group by themselves: no on_close bookkeeping needed.
    return duplex.channel(
        request,
        headers={"content-type": "application/json; charset=utf-8"},
        on_open=lambda channel: join(group, channel, since_ts),
    )


def join(group: str, channel: duplex.Channel, since_ts: float) -> None:
    store.add_to_group(group, channel, since_ts)
    if len(store.groups[group]) == 2:
        both_waiting.set()  # only for this example's timing


def newer_than(channel: duplex.Channel, since_ts: float) -> str | None:
    """The since_ts pattern: each waiting client gets what it has not seen yet."""
    newer = [message for message in messages if message["ts"] > since_ts]
    return json.dumps(newer) if newer else None


async def wait_for_news(client: duplex.Client, url: str, since_ts: float, name: str) -> None:
    response = await client.get(f"{url}?group=news&since_ts={since_ts}")
    news = json.loads(await response.read())
    print(f"{name} (since {since_ts}) got {[message['text'] for message in news]}")


async def main() -> None:
    messages.append({"ts": 1.0, "text": "old news"})
    async with trio.open_nursery() as nursery:
        server = await nursery.start(duplex.serve, handler, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.port}/poll"
        async with duplex.Client() as client, trio.open_nursery() as clients:
            clients.start_soon(wait_for_news, client, url, 0.0, "first client")
            clients.start_soon(wait_for_news, client, url, 1.0, "second client")
            await both_waiting.wait()
            messages.append({"ts": 2.0, "text": "breaking news"})
            delivered = await store.broadcast("news", newer_than)
            print(f"broadcast answered {delivered} waiting clients")
        await server.shutdown()


if __name__ == "__main__":
    trio.run(main)
